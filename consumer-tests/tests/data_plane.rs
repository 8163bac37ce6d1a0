//! Pact consumer tests of the data plane: every lifecycle and error case of
//! `contracts/openapi/data.yaml`, each driven through the real
//! `orchctl::Client` against the Pact mock server.

mod common;

use common::*;
use contracts::{
    AdmissionResponse, EndEvent, ErrorCode, FinishReason, Priority, RejectPolicy, ScopePurge,
    SessionInfo, StartedEvent, StreamEvent, TaskList, TaskRequest, TaskState, TaskStatus,
    TokenEvent,
};
use futures::StreamExt;
use orchctl::{Client, ListOptions};
use pact_consumer::builders::HttpPartBuilder;
use pact_consumer::prelude::*;
use pact_models::expression_parser::DataType;
use pact_models::generators::{Generator, GeneratorCategory};
use pact_models::path_exp::DocPath;
use serde_json::json;

/// The token text of the builtin engine for prompt "tell me a story",
/// seed 7, 4 tokens (deterministic, ORCH-4030).
const STORY_TOKENS: [&str; 4] = [" lantern", " tokens", " pixel", " pixel"];
const STORY_PROMPT: &str = "tell me a story";
const STORY_SEED: u32 = 7;

fn admission_example(task_id: &str) -> AdmissionResponse {
    AdmissionResponse {
        task_id: task_id.into(),
        queue_position: 0,
        predicted_start_ms: 0,
        backoff_ms: 50,
    }
}

fn submit_expectation(i: &mut pact_consumer::builders::InteractionBuilder, request: &TaskRequest) {
    i.request
        .post()
        .path("/v1/tasks")
        .header("content-type", "application/json")
        .json_body(wire(request));
}

fn status_example(task_id: &str, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: task_id.into(),
        scope: Some(SCOPE.into()),
        pool_id: "default".into(),
        priority: Priority::Interactive.into(),
        state: state.into(),
        queue_position: None,
        replica_id: Some("r0".into()),
        submitted_at_ms: 1_700_000_000_000,
        started_at_ms: Some(1_700_000_000_010),
        finished_at_ms: Some(1_700_000_000_050),
        tokens_out: 4,
        finish_reason: Some(FinishReason::Length.into()),
        error: None,
    }
}

// ---------------------------------------------------------------- admission

// covers: ORCH-1001, ORCH-1007
#[test]
fn submit_accepted() {
    let request = task("hello world", 4);
    let pact = interaction("submit accepted [ORCH-1001, ORCH-1007]", |mut i| {
        i.given_with_params(
            "pool {pool} has free Ready slots",
            &json!({"pool": "default"}),
        );
        submit_expectation(&mut i, &request);
        i.response
            .status(202)
            .header("content-type", "application/json")
            .header("x-queue-position", term!("^[0-9]+$", "0"))
            .header("x-queue-eta-ms", term!("^[0-9]+$", "0"))
            .json_body(shape(
                &json(&admission_example("t-0b9a4e1c")),
                &[],
                &[("task_id", "^[A-Za-z0-9._:-]{1,128}$")],
            ));
        i
    });
    run(&pact, async |url| {
        let admitted = client(&url).submit(request.clone()).await.unwrap();
        assert_eq!(admitted.task_id, "t-0b9a4e1c");
        assert_eq!(admitted.queue_position, 0);
    });
}

// covers: ORCH-1005
#[test]
fn idempotent_resubmit() {
    let request = TaskRequest {
        task_id: Some("job-1".into()),
        ..task("hello again", 3)
    };
    let pact = interaction(
        "resubmit of the same body answers the original admission [ORCH-1005]",
        |mut i| {
            i.given_with_params(
                "task {task_id} was admitted in scope {scope} with prompt {prompt} and max_tokens {max_tokens}",
                &json!({"task_id": "job-1", "scope": SCOPE, "prompt": "hello again", "max_tokens": 3}),
            );
            submit_expectation(&mut i, &request);
            i.response
                .status(202)
                .header("content-type", "application/json")
                .header("x-queue-position", term!("^[0-9]+$", "0"))
                .header("x-queue-eta-ms", term!("^[0-9]+$", "0"))
                .json_body(shape(&json(&admission_example("job-1")), &["task_id"], &[]));
            i
        },
    );
    run(&pact, async |url| {
        let admitted = client(&url).submit(request.clone()).await.unwrap();
        assert_eq!(admitted.task_id, "job-1");
    });
}

// covers: ORCH-1006, ORCH-2022
#[test]
fn conflicting_resubmit() {
    let request = TaskRequest {
        task_id: Some("job-1".into()),
        ..task("a different prompt", 3)
    };
    let pact = interaction(
        "resubmit of a task id with a different body conflicts [ORCH-1006, ORCH-2022]",
        |mut i| {
            i.given_with_params(
                "task {task_id} was admitted in scope {scope} with prompt {prompt} and max_tokens {max_tokens}",
                &json!({"task_id": "job-1", "scope": SCOPE, "prompt": "hello again", "max_tokens": 3}),
            );
            submit_expectation(&mut i, &request);
            error_response(
                &mut i,
                409,
                &envelope(
                    ErrorCode::Conflict,
                    None,
                    "task_id job-1 exists with a different body",
                ),
                "^[\\s\\S]*job-1[\\s\\S]*$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            client(&url).submit(request.clone()).await,
            409,
            ErrorCode::Conflict,
        );
    });
}

/// One `400 INVALID_PARAMS` interaction for a typed request.
fn invalid_submit(
    description: &str,
    request: TaskRequest,
    field: &str,
    state: Option<(&str, serde_json::Value)>,
) {
    let body = wire(&request);
    invalid_submit_json(description, body, field, state, Some(request));
}

fn invalid_submit_json(
    description: &str,
    body: serde_json::Value,
    field: &str,
    state: Option<(&str, serde_json::Value)>,
    typed: Option<TaskRequest>,
) {
    let message_regex = format!("^[\\s\\S]*{field}[\\s\\S]*$");
    let pact = interaction(description, |mut i| {
        match &state {
            Some((name, params)) => i.given_with_params(*name, params),
            None => i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            ),
        };
        i.request
            .post()
            .path("/v1/tasks")
            .header("content-type", "application/json")
            .json_body(body.clone());
        error_response(
            &mut i,
            400,
            &envelope(ErrorCode::InvalidParams, None, &format!("{field}: invalid")),
            &message_regex,
        );
        i
    });
    run(&pact, async |url| {
        let client = client(&url);
        let result = match typed {
            Some(request) => client.submit(request).await,
            None => client.submit_json(&body).await,
        };
        let error = assert_api_error(result, 400, ErrorCode::InvalidParams);
        assert!(error.envelope().unwrap().message.contains(field), "{error}");
    });
}

// covers: ORCH-2024
#[test]
fn submit_body_over_the_servers_limit() {
    let request = task(&"word ".repeat(300), 2);
    let body = wire(&request);
    let pact = interaction(
        "submit whose body is over the server's max_body_bytes is 413 INVALID_PARAMS naming body [ORCH-2024]",
        |mut i| {
            body_over_the_limit(&mut i);
            i.request
                .post()
                .path("/v1/tasks")
                .header("content-type", "application/json")
                .json_body(body.clone());
            body_over_the_limit_response(&mut i);
            i
        },
    );
    run(&pact, async |url| {
        let result = client(&url).submit(request.clone()).await;
        let error = assert_api_error(result, 413, ErrorCode::InvalidParams);
        assert!(
            error.envelope().unwrap().message.starts_with("body:"),
            "{error}"
        );
    });
}

// covers: ORCH-1002, ORCH-2012
#[test]
fn submit_unknown_field() {
    let mut body = wire(&task("hello", 2));
    body["colour"] = json!("blue");
    invalid_submit_json(
        "submit with an unknown field is INVALID_PARAMS naming it [ORCH-1002, ORCH-2012]",
        body,
        "colour",
        None,
        None,
    );
}

// covers: ORCH-1002, ORCH-1015
#[test]
fn submit_max_tokens_over_limit() {
    invalid_submit(
        "submit with max_tokens over the pool limit is INVALID_PARAMS [ORCH-1002, ORCH-1015]",
        task("hello", 5_000),
        "max_tokens",
        Some((
            "pool {pool} allows at most {max_tokens_limit} tokens per task",
            json!({"pool": "default", "max_tokens_limit": 4096}),
        )),
    );
}

// covers: ORCH-1003
#[test]
fn submit_context_overflow() {
    invalid_submit(
        "submit whose prompt and max_tokens overflow the model context is INVALID_PARAMS [ORCH-1003]",
        task("one two three four five six seven eight nine ten", 4_090),
        "max_tokens",
        Some((
            "pool {pool} serves a model with a context of {ctx_limit} tokens",
            json!({"pool": "default", "ctx_limit": 4096}),
        )),
    );
}

// covers: ORCH-1004
#[test]
fn submit_unknown_pool() {
    invalid_submit(
        "submit to an unknown pool is INVALID_PARAMS naming pool_id [ORCH-1004]",
        TaskRequest {
            pool_id: Some("nowhere".into()),
            ..task("hello", 2)
        },
        "pool_id",
        Some(("pool {pool} does not exist", json!({"pool": "nowhere"}))),
    );
}

// covers: ORCH-1016
#[test]
fn submit_bad_enum() {
    let mut body = wire(&task("hello", 2));
    body["priority"] = json!("urgent");
    invalid_submit_json(
        "submit with a priority outside its enumeration is INVALID_PARAMS [ORCH-1016]",
        body,
        "priority",
        None,
        None,
    );
}

// covers: ORCH-6014
#[test]
fn submit_bad_task_id() {
    invalid_submit(
        "submit with a malformed task_id is INVALID_PARAMS naming task_id [ORCH-6014]",
        TaskRequest {
            task_id: Some("no spaces allowed".into()),
            ..task("hello", 2)
        },
        "task_id",
        None,
    );
}

// covers: ORCH-1015
#[test]
fn submit_temperature_out_of_range() {
    invalid_submit(
        "submit with temperature out of range is INVALID_PARAMS naming temperature [ORCH-1015]",
        TaskRequest {
            temperature: Some(3.0),
            ..task("hello", 2)
        },
        "temperature",
        None,
    );
}

// covers: ORCH-1009
#[test]
fn submit_sampler_profile_mismatch() {
    invalid_submit(
        "submit with another sampler profile version is INVALID_PARAMS [ORCH-1009]",
        TaskRequest {
            sampler_profile_version: Some("sp-9".into()),
            ..task("hello", 2)
        },
        "sampler_profile_version",
        Some((
            "pool {pool} runs sampler profile {sampler_profile_version}",
            json!({"pool": "default", "sampler_profile_version": "sp-1"}),
        )),
    );
}

/// One `429`/`503` admission interaction.
#[allow(clippy::too_many_arguments)]
fn refused_submit(
    description: &str,
    state: &str,
    params: serde_json::Value,
    request: TaskRequest,
    status: u16,
    code: ErrorCode,
    policy: Option<RejectPolicy>,
    key: Option<&str>,
) {
    let pact = interaction(description, |mut i| {
        i.given_with_params(state, &params);
        submit_expectation(&mut i, &request);
        if let Some(key) = key {
            i.request.header("authorization", format!("Bearer {key}"));
        }
        error_response(
            &mut i,
            status,
            &envelope(code, policy, "refused"),
            "^[\\s\\S]+$",
        );
        i
    });
    run(&pact, async |url| {
        let mut client = client(&url);
        if let Some(key) = key {
            client = client.with_api_key(key);
        }
        let error = assert_api_error(client.submit(request.clone()).await, status, code);
        let orchctl::ClientError::Api {
            envelope,
            retry_after_s,
            backoff_ms,
            ..
        } = error
        else {
            unreachable!()
        };
        assert_eq!(envelope.policy, policy.map(Into::into));
        assert!(retry_after_s.is_some_and(|s| s >= 1));
        assert!(backoff_ms.is_some());
    });
}

// covers: ORCH-3004, ORCH-2010, ORCH-2003
#[test]
fn submit_rejected_on_full_queue() {
    refused_submit(
        "submit on a full queue with policy reject is 429 ADMISSION_REJECT with backoff headers [ORCH-3004, ORCH-2010, ORCH-2003]",
        "pool {pool} is full with policy {policy}",
        json!({"pool": "default", "policy": "reject", "capacity": 2}),
        task("one more", 2),
        429,
        ErrorCode::AdmissionReject,
        Some(RejectPolicy::Reject),
        None,
    );
}

// covers: ORCH-3010, ORCH-2010
#[test]
fn submit_rate_limited() {
    refused_submit(
        "submit over the tenant rate limit is 429 ADMISSION_REJECT policy rate-limit [ORCH-3010, ORCH-2010]",
        "tenant {tenant} with key {api_key} has used its rate limit of {burst} admissions",
        json!({"tenant": "pact", "api_key": CLIENT_KEY, "burst": 1}),
        task("too fast", 2),
        429,
        ErrorCode::AdmissionReject,
        Some(RejectPolicy::RateLimit),
        Some(CLIENT_KEY),
    );
}

// covers: ORCH-3006, ORCH-2010
#[test]
fn submit_batch_on_full_shed_queue() {
    refused_submit(
        "batch submit on a full queue with policy shed-low-priority is 429 [ORCH-3006, ORCH-2010]",
        "pool {pool} is full with policy {policy}",
        json!({"pool": "default", "policy": "shed-low-priority", "capacity": 2}),
        TaskRequest {
            priority: Some(Priority::Batch),
            ..task("batch work", 2)
        },
        429,
        ErrorCode::AdmissionReject,
        Some(RejectPolicy::ShedLowPriority),
        None,
    );
}

// covers: ORCH-2013, ORCH-2003
#[test]
fn submit_pool_unready() {
    refused_submit(
        "submit while every replica of the pool is starting is 503 POOL_UNREADY [ORCH-2013, ORCH-2003]",
        "every replica of pool {pool} is starting",
        json!({"pool": "default"}),
        task("too early", 2),
        503,
        ErrorCode::PoolUnready,
        None,
        None,
    );
}

// covers: ORCH-2014, ORCH-6022
#[test]
fn submit_pool_draining() {
    refused_submit(
        "submit to a draining pool is 503 POOL_UNAVAILABLE [ORCH-2014, ORCH-6022]",
        "pool {pool} is draining",
        json!({"pool": "default"}),
        task("too late", 2),
        503,
        ErrorCode::PoolUnavailable,
        None,
        None,
    );
}

// covers: ORCH-2018
#[test]
fn submit_store_refuses_write() {
    let request = task("not stored", 2);
    let pact = interaction(
        "submit while the store refuses writes is 500 INTERNAL [ORCH-2018]",
        |mut i| {
            i.given("the store refuses writes");
            submit_expectation(&mut i, &request);
            error_response(
                &mut i,
                500,
                &envelope(ErrorCode::Internal, None, "store"),
                "^[\\s\\S]+$",
            );
            i
        },
    );
    run(&pact, async |url| {
        let error = assert_api_error(
            client(&url).submit(request.clone()).await,
            500,
            ErrorCode::Internal,
        );
        assert!(!error.envelope().unwrap().retriable);
    });
}

// covers: ORCH-5011, ORCH-2021
#[test]
fn submit_on_expired_session() {
    let request = TaskRequest {
        session_id: Some("chat-1".into()),
        ..task("are you there", 2)
    };
    let pact = interaction(
        "submit on an expired session is 404 NOT_FOUND [ORCH-5011, ORCH-2021]",
        |mut i| {
            i.given_with_params(
                "session {session_id} in scope {scope} has expired",
                &json!({"session_id": "chat-1", "scope": SCOPE}),
            );
            submit_expectation(&mut i, &request);
            error_response(
                &mut i,
                404,
                &envelope(ErrorCode::NotFound, None, "session"),
                "^[\\s\\S]*session[\\s\\S]*$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            client(&url).submit(request.clone()).await,
            404,
            ErrorCode::NotFound,
        );
    });
}

/// An admitted submit of `request` in the provider state `given`.
fn submit_admitted(description: &str, given: (&str, serde_json::Value), request: TaskRequest) {
    let pact = interaction(description, |mut i| {
        i.given_with_params(given.0, &given.1);
        submit_expectation(&mut i, &request);
        i.response
            .status(202)
            .header("content-type", "application/json")
            .header("x-queue-position", term!("^[0-9]+$", "0"))
            .header("x-queue-eta-ms", term!("^[0-9]+$", "0"))
            .json_body(shape(
                &json(&admission_example("t-0b9a4e1c")),
                &[],
                &[("task_id", "^[A-Za-z0-9._:-]{1,128}$")],
            ));
        i
    });
    run(&pact, async |url| {
        client(&url).submit(request.clone()).await.unwrap();
    });
}

// covers: ORCH-4032, ORCH-1009
#[test]
fn submit_with_every_determinism_knob() {
    submit_admitted(
        "submit with seed, sampler_profile_version and determinism is admitted [ORCH-4032, ORCH-1009]",
        (
            "pool {pool} runs sampler profile {sampler_profile_version}",
            json!({"pool": "default", "sampler_profile_version": "sp-1"}),
        ),
        TaskRequest {
            seed: Some(7),
            sampler_profile_version: Some("sp-1".into()),
            determinism: Some(contracts::Determinism::Strict),
            ..task("the same words", 4)
        },
    );
}

// covers: ORCH-5010, ORCH-5012
#[test]
fn submit_second_session_turn() {
    submit_admitted(
        "submit of a second turn of a session is admitted [ORCH-5010, ORCH-5012]",
        (
            "session {session_id} in scope {scope} has {turns} completed turn",
            json!({"session_id": "chat-1", "scope": SCOPE, "turns": 1}),
        ),
        TaskRequest {
            session_id: Some("chat-1".into()),
            ..task("and then", 2)
        },
    );
}

// covers: ORCH-6002, ORCH-2019
#[test]
fn data_plane_unauthorized() {
    let request = task("who am i", 2);
    let pact = interaction(
        "data plane: submit without an API key is 401 UNAUTHORIZED [ORCH-6002, ORCH-2019]",
        |mut i| {
            i.given_with_params(
                "tenant {tenant} holds key {api_key} with role {role}",
                &json!({"tenant": "pact", "api_key": CLIENT_KEY, "role": "client"}),
            );
            submit_expectation(&mut i, &request);
            error_response(
                &mut i,
                401,
                &envelope(ErrorCode::Unauthorized, None, "key"),
                "^[\\s\\S]+$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            client(&url).submit(request.clone()).await,
            401,
            ErrorCode::Unauthorized,
        );
    });
}

// ---------------------------------------------------------------- streams

fn started(seed: u32) -> StreamEvent {
    StreamEvent::Started(StartedEvent {
        queue_position: 999_001,
        predicted_start_ms: 999_002,
        queue_time_ms: 999_003,
        replica_id: "SENTINELREPLICA".into(),
        engine: "builtin".into(),
        engine_version: "builtin-1.0.0".into(),
        seed,
        sampler_profile_version: "sp-1".into(),
        kv_warmth: false,
    })
}

fn token(i: u32, t: &str) -> StreamEvent {
    StreamEvent::Token(TokenEvent { t: t.into(), i })
}

fn any_token(i: u32) -> StreamEvent {
    token(i, "SENTINELTOKEN")
}

const TIMING: [Vary; 5] = [
    Vary {
        sentinel: "999001",
        example: "0",
        regex: NUM,
    },
    Vary {
        sentinel: "999002",
        example: "0",
        regex: NUM,
    },
    Vary {
        sentinel: "999003",
        example: "1",
        regex: NUM,
    },
    Vary {
        sentinel: "999004",
        example: "25",
        regex: NUM,
    },
    Vary {
        sentinel: "SENTINELREPLICA",
        example: "r0",
        regex: "r[0-9]+",
    },
];

fn vary_all() -> Vec<Vary> {
    let mut all: Vec<Vary> = TIMING.into_iter().collect();
    all.extend([
        Vary {
            sentinel: "SENTINELTOKEN",
            example: " word",
            regex: JSON_TEXT,
        },
        Vary {
            sentinel: "SENTINELMESSAGE",
            example: "failed",
            regex: JSON_TEXT,
        },
        Vary {
            sentinel: "SENTINELCID",
            example: "c0ffee00-0000-4000-8000-000000000000",
            regex: JSON_TEXT,
        },
        Vary {
            sentinel: ",\"retry_after_ms\":999005",
            example: "",
            regex: "(?:,\"retry_after_ms\":[0-9]+)?",
        },
        Vary {
            sentinel: ",\"engine\":\"SENTINELENGINE\"",
            example: ",\"engine\":\"builtin/r0\"",
            regex: "(?:,\"engine\":\"(?:[^\"\\\\\\n]|\\\\.)*\")?",
        },
    ]);
    all
}

fn end(tokens_out: u32, reason: FinishReason) -> StreamEvent {
    StreamEvent::End(EndEvent {
        tokens_out,
        decode_ms: 999_004,
        finish_reason: reason.into(),
    })
}

fn stream_error(code: ErrorCode, policy: Option<RejectPolicy>) -> StreamEvent {
    StreamEvent::Error(contracts::ErrorEnvelope {
        code: code.into(),
        message: "SENTINELMESSAGE".into(),
        retriable: code.retriable(),
        retry_after_ms: Some(999_005),
        policy: policy.map(Into::into),
        engine: Some("SENTINELENGINE".into()),
        correlation_id: "SENTINELCID".into(),
    })
}

/// A stream interaction on a task the provider state creates (its id
/// injected from the state).
fn stream_interaction(
    description: &str,
    state: &str,
    params: serde_json::Value,
    last_event_id: Option<u32>,
    events: &[StreamEvent],
    check: impl FnOnce(Vec<StreamEvent>),
) {
    let body = sse_body(events, &vary_all());
    let pact = interaction(description, |mut i| {
        i.given_with_params(state, &params);
        i.request
            .get()
            .path_from_provider_state("/v1/tasks/${task_id}/stream", "/v1/tasks/t-stream/stream")
            .query_param("scope", SCOPE)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            i.request.header("last-event-id", id.to_string());
        }
        stream_response(&mut i, body);
        i
    });
    run(&pact, async |url| {
        let client = client(&url);
        let stream = client
            .stream_after("t-stream", last_event_id)
            .await
            .unwrap();
        let events: Vec<StreamEvent> = stream.map(|e| e.unwrap()).collect().await;
        check(events);
    });
}

fn story_events() -> Vec<StreamEvent> {
    let mut events = vec![started(STORY_SEED)];
    events.extend(
        STORY_TOKENS
            .iter()
            .enumerate()
            .map(|(i, t)| token(i as u32, t)),
    );
    events.push(end(4, FinishReason::Length));
    events
}

fn story_params() -> serde_json::Value {
    json!({"scope": SCOPE, "prompt": STORY_PROMPT, "max_tokens": 4, "seed": STORY_SEED})
}

// covers: ORCH-1101, ORCH-1102, ORCH-1107
#[test]
fn stream_happy_path() {
    stream_interaction(
        "stream of a completed task: started, exact tokens, end [ORCH-1101, ORCH-1102, ORCH-1107]",
        "task {task_id} completed in scope {scope} with prompt {prompt}, max_tokens {max_tokens} and seed {seed}",
        story_params(),
        None,
        &story_events(),
        |events| {
            let text: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    StreamEvent::Token(t) => Some(t.t.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(text, STORY_TOKENS);
            assert!(
                matches!(events.last(), Some(StreamEvent::End(e)) if e.finish_reason == FinishReason::Length)
            );
        },
    );
}

// covers: ORCH-1104, ORCH-1103
#[test]
fn stream_resumed_after_last_event_id() {
    let events = story_events();
    stream_interaction(
        "stream resumed with Last-Event-ID continues after that token [ORCH-1104, ORCH-1103]",
        "task {task_id} completed in scope {scope} with prompt {prompt}, max_tokens {max_tokens} and seed {seed}",
        story_params(),
        Some(1),
        &events[3..],
        |events| {
            assert!(
                matches!(&events[0], StreamEvent::Token(t) if t.i == 2),
                "{events:?}"
            );
            assert!(matches!(events.last(), Some(StreamEvent::End(_))));
        },
    );
}

// covers: ORCH-1101, ORCH-1103
#[test]
fn stream_with_metrics_events() {
    let metrics = StreamEvent::Metrics(contracts::MetricsEvent {
        tokens_out: 0,
        elapsed_ms: 999_003,
        // Before the first token the rate is exactly zero.
        tokens_per_s: 0.0,
    });
    let vary = vary_all();
    let events = [
        started(STORY_SEED),
        metrics,
        any_token(0),
        any_token(1),
        any_token(2),
        end(3, FinishReason::Length),
    ];
    let body = sse_body(&events, &vary);
    let pact = interaction(
        "stream with progress: a metrics event while the first token is awaited [ORCH-1101, ORCH-1103]",
        |mut i| {
            i.given_with_params(
                "task {task_id} completed in scope {scope} with seed {seed} and a metrics event every {metrics_interval_ms} ms",
                &json!({"scope": SCOPE, "seed": STORY_SEED, "metrics_interval_ms": 20}),
            );
            i.request
                .get()
                .path_from_provider_state(
                    "/v1/tasks/${task_id}/stream",
                    "/v1/tasks/t-stream/stream",
                )
                .query_param("scope", SCOPE)
                .header("accept", "text/event-stream");
            stream_response(&mut i, body);
            i
        },
    );
    run(&pact, async |url| {
        let events: Vec<StreamEvent> = client(&url)
            .stream("t-stream")
            .await
            .unwrap()
            .map(|e| e.unwrap())
            .collect()
            .await;
        assert!(
            events.iter().any(|e| matches!(e, StreamEvent::Metrics(_))),
            "{events:?}"
        );
    });
}

// covers: ORCH-2017, ORCH-5003
#[test]
fn stream_worker_reset() {
    stream_interaction(
        "stream of a task whose replica crashed mid-stream ends WORKER_RESET [ORCH-2017, ORCH-5003]",
        "task {task_id} in scope {scope} lost its replica after {tokens} tokens",
        json!({"scope": SCOPE, "tokens": 2}),
        None,
        &[
            started(STORY_SEED),
            any_token(0),
            any_token(1),
            stream_error(ErrorCode::WorkerReset, None),
        ],
        |events| {
            assert!(
                matches!(events.last(), Some(StreamEvent::Error(e)) if e.code == ErrorCode::WorkerReset)
            );
        },
    );
}

// covers: ORCH-2016, ORCH-5002
#[test]
fn stream_decode_timeout() {
    stream_interaction(
        "stream of a task whose engine hung ends DECODE_TIMEOUT [ORCH-2016, ORCH-5002]",
        "task {task_id} in scope {scope} tripped the idle watchdog",
        json!({"scope": SCOPE}),
        None,
        &[
            started(STORY_SEED),
            stream_error(ErrorCode::DecodeTimeout, None),
        ],
        |events| {
            assert!(
                matches!(events.last(), Some(StreamEvent::Error(e)) if e.code == ErrorCode::DecodeTimeout)
            );
        },
    );
}

// covers: ORCH-4025, ORCH-2026
#[test]
fn stream_rejected_by_the_engine() {
    stream_interaction(
        "stream of a task its engine rejected after admission ends INVALID_PARAMS [ORCH-4025, ORCH-2026]",
        "task {task_id} in scope {scope} was rejected by its engine as invalid",
        json!({"scope": SCOPE}),
        None,
        &[
            started(STORY_SEED),
            stream_error(ErrorCode::InvalidParams, None),
        ],
        |events| {
            assert!(
                matches!(events.last(), Some(StreamEvent::Error(e)) if e.code == ErrorCode::InvalidParams && !e.retriable)
            );
        },
    );
}

// covers: ORCH-2018, ORCH-2026
#[test]
fn stream_internal_failure() {
    stream_interaction(
        "stream of a task whose start the store refused to record ends INTERNAL [ORCH-2018, ORCH-2026]",
        "task {task_id} in scope {scope} failed because the store refused to record its start",
        json!({"scope": SCOPE}),
        None,
        &[started(STORY_SEED), stream_error(ErrorCode::Internal, None)],
        |events| {
            assert!(
                matches!(events.last(), Some(StreamEvent::Error(e)) if e.code == ErrorCode::Internal && !e.retriable)
            );
        },
    );
}

// covers: ORCH-3005, ORCH-2011
#[test]
fn stream_drop_lru_victim() {
    stream_interaction(
        "stream of the task evicted by drop-lru ends QUEUE_FULL_DROP_LRU [ORCH-3005, ORCH-2011]",
        "task {task_id} in scope {scope} was evicted from pool {pool} by policy drop-lru",
        json!({"scope": SCOPE, "pool": "default"}),
        None,
        &[stream_error(
            ErrorCode::QueueFullDropLru,
            Some(RejectPolicy::DropLru),
        )],
        |events| {
            assert!(
                matches!(&events[..], [StreamEvent::Error(e)] if e.code == ErrorCode::QueueFullDropLru)
            );
        },
    );
}

// covers: ORCH-3006, ORCH-2010
#[test]
fn stream_shed_victim() {
    stream_interaction(
        "stream of the batch task shed for an interactive one ends ADMISSION_REJECT [ORCH-3006, ORCH-2010]",
        "batch task {task_id} in scope {scope} was shed from pool {pool} by an interactive arrival",
        json!({"scope": SCOPE, "pool": "default"}),
        None,
        &[stream_error(
            ErrorCode::AdmissionReject,
            Some(RejectPolicy::ShedLowPriority),
        )],
        |events| {
            assert!(
                matches!(&events[..], [StreamEvent::Error(e)] if e.policy == Some(RejectPolicy::ShedLowPriority.into()))
            );
        },
    );
}

// covers: ORCH-2015, ORCH-3008
#[test]
fn stream_replica_exhausted() {
    stream_interaction(
        "stream of a task queued past its deadline ends REPLICA_EXHAUSTED [ORCH-2015, ORCH-3008]",
        "task {task_id} in scope {scope} was still queued at its deadline of {deadline_ms} ms",
        json!({"scope": SCOPE, "deadline_ms": 5000}),
        None,
        &[stream_error(ErrorCode::ReplicaExhausted, None)],
        |events| {
            assert!(
                matches!(&events[..], [StreamEvent::Error(e)] if e.code == ErrorCode::ReplicaExhausted)
            );
        },
    );
}

// covers: ORCH-6022, ORCH-2014
#[test]
fn stream_drain_deadline_passed() {
    stream_interaction(
        "stream of a task still queued when the drain deadline passed ends POOL_UNAVAILABLE [ORCH-6022, ORCH-2014]",
        "task {task_id} in scope {scope} was queued in pool {pool} when its drain deadline passed",
        json!({"scope": SCOPE, "pool": "default"}),
        None,
        &[stream_error(ErrorCode::PoolUnavailable, None)],
        |events| {
            assert!(
                matches!(&events[..], [StreamEvent::Error(e)] if e.code == ErrorCode::PoolUnavailable)
            );
        },
    );
}

// covers: ORCH-1023
#[test]
fn stream_of_canceled_running_task() {
    stream_interaction(
        "stream of a running task canceled ends with end finish_reason canceled [ORCH-1023, ORCH-1021]",
        "task {task_id} in scope {scope} was canceled after {tokens} tokens",
        json!({"scope": SCOPE, "tokens": 1}),
        None,
        &[
            started(STORY_SEED),
            any_token(0),
            end(1, FinishReason::Canceled),
        ],
        |events| {
            assert!(
                matches!(events.last(), Some(StreamEvent::End(e)) if e.finish_reason == FinishReason::Canceled)
            );
        },
    );
}

/// A per-task operation on an id that is unknown, or malformed.
fn per_task_error(
    description: &str,
    method: &str,
    suffix: &str,
    task_id: &str,
    status: u16,
    code: ErrorCode,
) {
    let encoded: String = task_id.replace(' ', "%20");
    let path = format!("/v1/tasks/{encoded}{suffix}");
    let pact = interaction(description, |mut i| {
        if status == 404 {
            i.given_with_params(
                "task {task_id} exists only in scope {other_scope}",
                &json!({"task_id": task_id, "other_scope": "elsewhere"}),
            );
        } else {
            i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            );
        }
        i.request
            .method(method)
            .path(path.clone())
            .query_param("scope", SCOPE);
        if suffix == "/stream" {
            i.request.header("accept", "text/event-stream");
        }
        error_response(&mut i, status, &envelope(code, None, "task"), "^[\\s\\S]+$");
        i
    });
    let suffix = suffix.to_owned();
    run(&pact, async |url| {
        let client = client(&url);
        let result: Result<(), orchctl::ClientError> = match suffix.as_str() {
            "" => client.status(task_id).await.map(|_| ()),
            "/cancel" => client.cancel(task_id).await,
            "/stream" => client.stream(task_id).await.map(|_| ()),
            _ => unreachable!(),
        };
        assert_api_error(result, status, code);
    });
}

// covers: ORCH-1012, ORCH-6011
#[test]
fn stream_unknown_task() {
    per_task_error(
        "stream of a task of another scope is 404 NOT_FOUND [ORCH-1012, ORCH-6011]",
        "GET",
        "/stream",
        "other-1",
        404,
        ErrorCode::NotFound,
    );
}

// covers: ORCH-6014
#[test]
fn stream_malformed_task_id() {
    per_task_error(
        "stream of a malformed task id is 400 INVALID_PARAMS [ORCH-6014]",
        "GET",
        "/stream",
        "bad id",
        400,
        ErrorCode::InvalidParams,
    );
}

// ---------------------------------------------------------------- cancel

fn cancel_interaction(description: &str, state: &str, params: serde_json::Value) {
    let pact = interaction(description, |mut i| {
        i.given_with_params(state, &params);
        i.request
            .post()
            .path_from_provider_state("/v1/tasks/${task_id}/cancel", "/v1/tasks/t-cancel/cancel")
            .query_param("scope", SCOPE);
        i.response.status(204);
        i
    });
    run(&pact, async |url| {
        client(&url).cancel("t-cancel").await.unwrap();
    });
}

// covers: ORCH-1022, ORCH-1020
#[test]
fn cancel_queued() {
    cancel_interaction(
        "cancel of a queued task is 204 [ORCH-1022, ORCH-1020]",
        "task {task_id} is queued in scope {scope} while dispatch of pool {pool} is held",
        json!({"scope": SCOPE, "pool": "default"}),
    );
}

// covers: ORCH-1023, ORCH-1021
#[test]
fn cancel_running() {
    cancel_interaction(
        "cancel of a running task is 204 [ORCH-1023, ORCH-1021]",
        "task {task_id} is running in scope {scope} on replica {replica}",
        json!({"scope": SCOPE, "replica": "r0"}),
    );
}

// covers: ORCH-1012
#[test]
fn cancel_unknown() {
    per_task_error(
        "cancel of a task of another scope is 404 NOT_FOUND [ORCH-1012, ORCH-6011]",
        "POST",
        "/cancel",
        "other-1",
        404,
        ErrorCode::NotFound,
    );
}

// covers: ORCH-6014
#[test]
fn cancel_malformed() {
    per_task_error(
        "cancel of a malformed task id is 400 INVALID_PARAMS [ORCH-6014]",
        "POST",
        "/cancel",
        "bad id",
        400,
        ErrorCode::InvalidParams,
    );
}

// ---------------------------------------------------------------- reads

// covers: ORCH-1010
#[test]
fn status_of_completed_task() {
    let example = status_example("t-status", TaskState::Completed);
    let pact = interaction("status of a completed task [ORCH-1010]", |mut i| {
        i.given_with_params(
            "task {task_id} completed in scope {scope} with prompt {prompt}, max_tokens {max_tokens} and seed {seed}",
            &story_params(),
        );
        i.request
            .get()
            .path_from_provider_state("/v1/tasks/${task_id}", "/v1/tasks/t-status")
            .query_param("scope", SCOPE);
        i.response
            .status(200)
            .header("content-type", "application/json")
            .json_body(shape(
                &json(&example),
                &[
                    "state",
                    "scope",
                    "pool_id",
                    "priority",
                    "tokens_out",
                    "finish_reason",
                ],
                &[],
            ));
        i
    });
    run(&pact, async |url| {
        let status = client(&url).status("t-status").await.unwrap();
        assert_eq!(status.state, TaskState::Completed);
        assert_eq!(status.tokens_out, 4);
    });
}

/// A status read of a task the provider state put in `state`; `example` is
/// what the client reads, matched by type except the `exact` fields.
fn status_read(
    description: &str,
    provider_state: &str,
    params: serde_json::Value,
    example: TaskStatus,
    exact: &[&str],
) {
    let expected = example.state.clone();
    let pact = interaction(description, |mut i| {
        i.given_with_params(provider_state, &params);
        i.request
            .get()
            .path_from_provider_state(
                "/v1/tasks/${task_id}",
                format!("/v1/tasks/{}", example.task_id),
            )
            .query_param("scope", SCOPE);
        i.response
            .status(200)
            .header("content-type", "application/json")
            .json_body(shape(&json(&example), exact, &[]));
        i
    });
    let task_id = example.task_id.clone();
    run(&pact, async |url| {
        let status = client(&url).status(&task_id).await.unwrap();
        assert_eq!(status.state, expected);
    });
}

// covers: ORCH-1010
#[test]
fn status_of_queued_task() {
    status_read(
        "status of a queued task shows its queue position [ORCH-1010]",
        "task {task_id} is queued in scope {scope} while dispatch of pool {pool} is held",
        json!({"scope": SCOPE, "pool": "default"}),
        TaskStatus {
            queue_position: Some(0),
            replica_id: None,
            started_at_ms: None,
            finished_at_ms: None,
            tokens_out: 0,
            finish_reason: None,
            ..status_example("t-queued", TaskState::Queued)
        },
        &["state", "queue_position"],
    );
}

// covers: ORCH-1010
#[test]
fn status_of_running_task() {
    status_read(
        "status of a running task names its replica [ORCH-1010]",
        "task {task_id} is running in scope {scope} on replica {replica}",
        json!({"scope": SCOPE, "replica": "r0"}),
        TaskStatus {
            finished_at_ms: None,
            finish_reason: None,
            ..status_example("t-running", TaskState::Running)
        },
        &["state", "replica_id"],
    );
}

// covers: ORCH-1010, ORCH-2017
#[test]
fn status_of_failed_task() {
    status_read(
        "status of a failed task carries its error [ORCH-1010, ORCH-2017]",
        "task {task_id} in scope {scope} lost its replica after {tokens} tokens",
        json!({"scope": SCOPE, "tokens": 2}),
        TaskStatus {
            finish_reason: None,
            tokens_out: 2,
            error: Some(envelope(
                ErrorCode::WorkerReset,
                None,
                "r0 was lost after 2 tokens",
            )),
            ..status_example("t-failed", TaskState::Failed)
        },
        &["state", "error.code"],
    );
}

// covers: ORCH-1010, ORCH-1023
#[test]
fn status_of_canceled_task() {
    status_read(
        "status of a task canceled while running [ORCH-1010, ORCH-1023]",
        "task {task_id} in scope {scope} was canceled after {tokens} tokens",
        json!({"scope": SCOPE, "tokens": 1}),
        TaskStatus {
            tokens_out: 1,
            finish_reason: Some(FinishReason::Canceled.into()),
            ..status_example("t-canceled", TaskState::Canceled)
        },
        &["state", "finish_reason"],
    );
}

// covers: ORCH-1012, ORCH-6011
#[test]
fn status_unknown() {
    per_task_error(
        "status of a task of another scope is 404 NOT_FOUND [ORCH-1012, ORCH-6011]",
        "GET",
        "",
        "other-1",
        404,
        ErrorCode::NotFound,
    );
}

// covers: ORCH-6014
#[test]
fn status_malformed() {
    per_task_error(
        "status of a malformed task id is 400 INVALID_PARAMS [ORCH-6014]",
        "GET",
        "",
        "bad id",
        400,
        ErrorCode::InvalidParams,
    );
}

// covers: ORCH-1011, ORCH-6010
#[test]
fn list_tasks() {
    let list = TaskList {
        items: vec![status_example("t-list", TaskState::Completed)],
        next_cursor: None,
    };
    let pact = interaction(
        "list of the tasks of a scope, filtered by state [ORCH-1011, ORCH-6010]",
        |mut i| {
            i.given_with_params(
                "{count} tasks completed in scope {scope}",
                &json!({"count": 2, "scope": SCOPE}),
            );
            i.request
                .get()
                .path("/v1/tasks")
                .query_param("scope", SCOPE)
                .query_param("state", "completed")
                .query_param("limit", "10");
            i.response
                .status(200)
                .header("content-type", "application/json")
                .json_body(shape(
                    &json(&list),
                    &["items[].state", "items[].scope"],
                    &[],
                ));
            i
        },
    );
    run(&pact, async |url| {
        let options = ListOptions {
            state: Some(TaskState::Completed),
            limit: Some(10),
            cursor: None,
        };
        let list = client(&url).list(&options).await.unwrap();
        assert_eq!(list.items[0].state, TaskState::Completed);
    });
}

// covers: ORCH-1011, ORCH-1013
#[test]
fn list_followed_through_its_cursor() {
    // What the client sends back is the cursor the first page gave it.
    let cursor = "c1.t-list.0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";
    let list = TaskList {
        items: vec![status_example("t-list", TaskState::Completed)],
        next_cursor: None,
    };
    let pact = interaction(
        "the second page of a list, asked with the first page's cursor [ORCH-1011, ORCH-1013]",
        |mut i| {
            i.given_with_params(
                "{count} tasks completed in scope {scope}",
                &json!({"count": 2, "scope": SCOPE}),
            );
            i.request
                .get()
                .path("/v1/tasks")
                .query_param("scope", SCOPE)
                .query_param("limit", "1")
                .query_param("cursor", cursor);
            // The provider replays the cursor its own first page gave.
            let mut query = DocPath::root();
            query.push_field("cursor");
            i.request.generators().add_generator_with_subcategory(
                &GeneratorCategory::QUERY,
                query,
                Generator::ProviderStateGenerator("${cursor}".into(), Some(DataType::STRING)),
            );
            i.response
                .status(200)
                .header("content-type", "application/json")
                .json_body(shape(&json(&list), &["items[].scope"], &[]));
            i
        },
    );
    run(&pact, async |url| {
        let options = ListOptions {
            state: None,
            limit: Some(1),
            cursor: Some(cursor.into()),
        };
        let page = client(&url).list(&options).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next_cursor, None, "the last page has no cursor");
    });
}

// covers: ORCH-1024
#[test]
fn list_with_bad_limit() {
    let pact = interaction(
        "list with a limit over 500 is 400 INVALID_PARAMS naming limit [ORCH-1024]",
        |mut i| {
            i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            );
            i.request
                .get()
                .path("/v1/tasks")
                .query_param("scope", SCOPE)
                .query_param("limit", "501");
            error_response(
                &mut i,
                400,
                &envelope(ErrorCode::InvalidParams, None, "limit"),
                "^[\\s\\S]*limit[\\s\\S]*$",
            );
            i
        },
    );
    run(&pact, async |url| {
        let options = ListOptions {
            limit: Some(501),
            ..ListOptions::default()
        };
        assert_api_error(
            client(&url).list(&options).await,
            400,
            ErrorCode::InvalidParams,
        );
    });
}

// ---------------------------------------------------------------- sessions

fn session_state(i: &mut pact_consumer::builders::InteractionBuilder) {
    i.given_with_params(
        "session {session_id} in scope {scope} has {turns} completed turn",
        &json!({"session_id": "chat-1", "scope": SCOPE, "turns": 1}),
    );
}

// covers: ORCH-5013, ORCH-5010
#[test]
fn session_get() {
    let info = SessionInfo {
        session_id: "chat-1".into(),
        ttl_ms_remaining: 600_000,
        turns: 1,
        kv_bytes: 40_960,
        kv_warmth: true,
        replica_id: Some("r0".into()),
    };
    let pact = interaction("session get [ORCH-5013, ORCH-5010]", |mut i| {
        session_state(&mut i);
        i.request
            .get()
            .path("/v1/sessions/chat-1")
            .query_param("scope", SCOPE);
        i.response
            .status(200)
            .header("content-type", "application/json")
            .json_body(shape(
                &json(&info),
                &["session_id", "turns"],
                &[("replica_id", "^r[0-9]+$")],
            ));
        i
    });
    run(&pact, async |url| {
        let info = client(&url).session("chat-1").await.unwrap();
        assert_eq!(info.turns, 1);
    });
}

// covers: ORCH-5014
#[test]
fn session_delete() {
    let pact = interaction("session delete is 204 [ORCH-5014]", |mut i| {
        session_state(&mut i);
        i.request
            .delete()
            .path("/v1/sessions/chat-1")
            .query_param("scope", SCOPE);
        i.response.status(204);
        i
    });
    run(&pact, async |url| {
        client(&url).end_session("chat-1").await.unwrap()
    });
}

fn session_error(description: &str, method: &str, session_id: &str, status: u16, code: ErrorCode) {
    let encoded = session_id.replace(' ', "%20");
    let pact = interaction(description, |mut i| {
        i.given_with_params(
            "pool {pool} has free Ready slots",
            &json!({"pool": "default"}),
        );
        i.request
            .method(method)
            .path(format!("/v1/sessions/{encoded}"))
            .query_param("scope", SCOPE);
        error_response(
            &mut i,
            status,
            &envelope(code, None, "session"),
            "^[\\s\\S]*session[\\s\\S]*$",
        );
        i
    });
    let method = method.to_owned();
    run(&pact, async |url| {
        let client = client(&url);
        let result = if method == "GET" {
            client.session(session_id).await.map(|_| ())
        } else {
            client.end_session(session_id).await
        };
        assert_api_error(result, status, code);
    });
}

// covers: ORCH-5013, ORCH-2021
#[test]
fn session_get_unknown() {
    session_error(
        "session get of an unknown session is 404 NOT_FOUND [ORCH-5013, ORCH-2021]",
        "GET",
        "nobody",
        404,
        ErrorCode::NotFound,
    );
}

// covers: ORCH-5014, ORCH-2021
#[test]
fn session_delete_unknown() {
    session_error(
        "session delete of an unknown session is 404 NOT_FOUND [ORCH-5014, ORCH-2021]",
        "DELETE",
        "nobody",
        404,
        ErrorCode::NotFound,
    );
}

// covers: ORCH-6014
#[test]
fn session_get_malformed() {
    session_error(
        "session get of a malformed session id is 400 INVALID_PARAMS [ORCH-6014]",
        "GET",
        "bad id",
        400,
        ErrorCode::InvalidParams,
    );
}

// covers: ORCH-6014
#[test]
fn session_delete_malformed() {
    session_error(
        "session delete of a malformed session id is 400 INVALID_PARAMS [ORCH-6014]",
        "DELETE",
        "bad id",
        400,
        ErrorCode::InvalidParams,
    );
}

// ---------------------------------------------------------------- scope

// covers: ORCH-6013
#[test]
fn scope_purge() {
    let purge = ScopePurge {
        scope: SCOPE.into(),
        tasks_canceled: 1,
        tasks_purged: 2,
        sessions_purged: 0,
    };
    let pact = interaction(
        "scope purge cancels and purges everything in the scope [ORCH-6013]",
        |mut i| {
            i.given_with_params(
                "scope {scope} holds {queued} queued and {completed} completed task",
                &json!({"scope": SCOPE, "queued": 1, "completed": 1}),
            );
            i.request.delete().path(format!("/v1/scopes/{SCOPE}"));
            i.response
                .status(200)
                .header("content-type", "application/json")
                .json_body(shape(
                    &json(&purge),
                    &["scope", "tasks_canceled", "tasks_purged"],
                    &[],
                ));
            i
        },
    );
    run(&pact, async |url| {
        let purged = client(&url).purge_scope(None).await.unwrap();
        assert_eq!(purged.tasks_purged, 2);
    });
}

// covers: ORCH-6014
#[test]
fn scope_purge_malformed() {
    let pact = interaction(
        "scope purge of a malformed scope is 400 INVALID_PARAMS [ORCH-6014]",
        |mut i| {
            i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            );
            i.request.delete().path("/v1/scopes/bad%20scope");
            error_response(
                &mut i,
                400,
                &envelope(ErrorCode::InvalidParams, None, "scope"),
                "^[\\s\\S]*scope[\\s\\S]*$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            Client::new(url).purge_scope(Some("bad scope")).await,
            400,
            ErrorCode::InvalidParams,
        );
    });
}
