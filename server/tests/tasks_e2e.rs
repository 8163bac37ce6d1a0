//! Task lifecycle end to end: submit, stream, status, list, idempotency,
//! validation, resume and cancel, against the real server through the real
//! client.

mod common;

use std::time::Duration;

use common::{TestServer, config_with, eventually, shared_client, shared_url, task, text, tokens};
use contracts::config::BuiltinEngineConfig;
use contracts::{EndEvent, ErrorCode, FinishReason, Priority, StreamEvent, TaskRequest, TaskState};
use futures::StreamExt;
use orchctl::{ClientError, ListOptions};

fn api_code(error: &ClientError) -> contracts::OpenEnum<ErrorCode> {
    error.envelope().expect("an error envelope").code.clone()
}

// covers: ORCH-1101, ORCH-1102, ORCH-4030
#[tokio::test]
async fn a_task_streams_started_tokens_and_end_identically_on_both_replicas() {
    let server = TestServer::default().await;
    let client = server.client();
    let request = |id: &str, seed| TaskRequest {
        task_id: Some(id.into()),
        seed: Some(seed),
        ..task("tell me about queues", 24)
    };
    // Submitted together, the two tasks land on the two replicas.
    let a = client.submit(request("same-a", 42)).await.unwrap();
    let b = client.submit(request("same-b", 42)).await.unwrap();
    let other = client.submit(request("other-seed", 43)).await.unwrap();
    let (a, b, other) = (
        client.collect(&a.task_id).await.unwrap(),
        client.collect(&b.task_id).await.unwrap(),
        client.collect(&other.task_id).await.unwrap(),
    );
    let replica = |events: &[StreamEvent]| match &events[0] {
        StreamEvent::Started(s) => s.replica_id.clone(),
        e => panic!("first event is not started: {e:?}"),
    };
    assert_ne!(
        replica(&a),
        replica(&b),
        "the two tasks ran on different replicas"
    );
    assert_eq!(tokens(&a).len(), 24);
    assert_eq!(tokens(&a), tokens(&b), "same inputs, byte-identical tokens");
    let end_without_timing = |events: &[StreamEvent]| match events.last() {
        Some(StreamEvent::End(end)) => EndEvent {
            decode_ms: 0,
            ..end.clone()
        },
        e => panic!("stream did not end with `end`: {e:?}"),
    };
    assert_eq!(
        end_without_timing(&a),
        end_without_timing(&b),
        "the same end event but for its timing"
    );
    assert_ne!(text(&a), text(&other), "another seed gives another stream");
    for (i, token) in tokens(&a).iter().enumerate() {
        assert_eq!(token.i as usize, i, "token indexes count from 0");
    }
    match a.last().unwrap() {
        StreamEvent::End(end) => {
            assert_eq!(end.tokens_out, 24);
            assert_eq!(end.finish_reason, FinishReason::Length);
        }
        e => panic!("stream did not end with `end`: {e:?}"),
    }
}

// covers: ORCH-1001, ORCH-1107
#[tokio::test]
async fn admission_headers_and_sse_framing_are_exact() {
    let client = shared_client();
    let scope = client.scope_name();
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/v1/tasks", shared_url()))
        .body(format!(
            r#"{{"prompt":"frame me","max_tokens":2,"task_id":"framing","seed":1,"scope":"{scope}"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let position = response.headers()["x-queue-position"]
        .to_str()
        .unwrap()
        .to_owned();
    let eta = response.headers()["x-queue-eta-ms"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["queue_position"].to_string(), position);
    assert_eq!(body["predicted_start_ms"].to_string(), eta);
    let raw = http
        .get(format!(
            "{}/v1/tasks/framing/stream?scope={scope}",
            shared_url()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let blocks: Vec<&str> = raw.split("\n\n").filter(|b| !b.is_empty()).collect();
    assert!(blocks[0].starts_with("event: started\ndata: {"), "{raw}");
    assert!(
        blocks[1].starts_with("event: token\nid: 0\ndata: {\"t\":"),
        "{raw}"
    );
    assert!(
        blocks[2].starts_with("event: token\nid: 1\ndata: {\"t\":"),
        "{raw}"
    );
    assert!(
        blocks
            .last()
            .unwrap()
            .starts_with("event: end\ndata: {\"tokens_out\":2,"),
        "{raw}"
    );
}

// covers: ORCH-1010, ORCH-1011, ORCH-1013
#[tokio::test]
async fn status_and_paged_list_within_a_scope() {
    let client = shared_client();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            client
                .submit(task(&format!("prompt {n}"), 3))
                .await
                .unwrap()
                .task_id,
        );
    }
    for id in &ids {
        client.collect(id).await.unwrap();
    }
    let status = client.status(&ids[0]).await.unwrap();
    assert_eq!(status.state, TaskState::Completed);
    assert_eq!(status.tokens_out, 3);
    assert_eq!(status.scope.as_deref(), client.scope());
    assert!(status.started_at_ms.is_some() && status.finished_at_ms.is_some());

    let mut seen = Vec::new();
    let mut options = ListOptions {
        limit: Some(2),
        ..ListOptions::default()
    };
    loop {
        let page = client.list(&options).await.unwrap();
        seen.extend(page.items.into_iter().map(|s| s.task_id));
        match page.next_cursor {
            Some(cursor) => options.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages cover every task once, oldest first");

    // The cursor is opaque and bound to its listing (ORCH-1013).
    let first = client
        .list(&ListOptions {
            limit: Some(2),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    let cursor = first.next_cursor.expect("a second page");
    assert!(
        cursor.parse::<i64>().is_err(),
        "no global sequence: {cursor}"
    );
    let stranger = client.stranger();
    let misuse: [(&orchctl::Client, Option<TaskState>, String, &str); 3] = [
        (
            &stranger,
            None,
            cursor.clone(),
            "belongs to another listing",
        ),
        (
            &client,
            Some(TaskState::Completed),
            cursor.clone(),
            "belongs to another listing",
        ),
        (
            &client,
            None,
            "7".to_string(),
            "is not a cursor this server issued",
        ),
    ];
    for (who, state, cursor, why) in misuse {
        let error = who
            .list(&ListOptions {
                cursor: Some(cursor),
                state,
                ..ListOptions::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(400));
        let envelope = error.envelope().unwrap();
        assert!(
            envelope.message.starts_with("cursor: ") && envelope.message.contains(why),
            "{}",
            envelope.message
        );
    }
    let completed = client
        .list(&ListOptions {
            state: Some(TaskState::Completed),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(completed.items.len(), 5);
    let queued = client
        .list(&ListOptions {
            state: Some(TaskState::Queued),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert!(queued.items.is_empty());
    let other_scope = client
        .stranger()
        .list(&ListOptions::default())
        .await
        .unwrap();
    assert!(other_scope.items.is_empty(), "another scope sees nothing");
}

// covers: ORCH-1005, ORCH-1006, ORCH-1007, ORCH-2022, ORCH-6012
#[tokio::test]
async fn resubmission_is_idempotent_and_a_changed_body_conflicts() {
    let client = shared_client();
    let request = TaskRequest {
        task_id: Some("idem-1".into()),
        ..task("same body", 4)
    };
    let first = client.submit(request.clone()).await.unwrap();
    let again = client.submit(request.clone()).await.unwrap();
    assert_eq!(first.task_id, "idem-1");
    assert_eq!(again.task_id, "idem-1");
    client.collect("idem-1").await.unwrap();
    let after_completion = client.submit(request.clone()).await.unwrap();
    assert_eq!(after_completion.task_id, "idem-1");
    // Three identical submissions, one task: nothing was enqueued twice.
    let listed = client.list(&ListOptions::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1, "{listed:?}");
    assert_eq!(listed.items[0].tokens_out, 4, "the one task ran once");

    let changed = TaskRequest {
        max_tokens: 5,
        ..request.clone()
    };
    let error = client.submit(changed).await.unwrap_err();
    assert_eq!(error.status(), Some(409));
    assert_eq!(api_code(&error), ErrorCode::Conflict);

    // The same client id in another scope is simply another task.
    let elsewhere = client.stranger().submit(request).await.unwrap();
    assert_eq!(elsewhere.task_id, "idem-1");

    let generated = client.submit(task("no id", 1)).await.unwrap();
    let another = client.submit(task("no id", 1)).await.unwrap();
    assert!(generated.task_id.starts_with("t-"));
    assert_ne!(
        generated.task_id, another.task_id,
        "generated ids are unique"
    );
}

// covers: ORCH-1002, ORCH-1003, ORCH-1004, ORCH-1008, ORCH-1009, ORCH-2012, ORCH-1015, ORCH-1025
#[tokio::test]
async fn every_validated_field_is_named_with_its_limit() {
    let client = shared_client();
    let http = reqwest::Client::new();
    let long_prompt = "word ".repeat(4_095);
    let huge_prompt = "x".repeat((1 << 20) + 1);
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "colour": "red"}),
            "colour",
            "unknown field",
        ),
        (
            serde_json::json!({"max_tokens": 1}),
            "prompt",
            "send `messages` instead",
        ),
        (
            serde_json::json!({"prompt": "p", "messages": [{"role": "user", "content": "p"}], "max_tokens": 1}),
            "messages",
            "not both",
        ),
        (
            serde_json::json!({"messages": [], "max_tokens": 1}),
            "messages",
            "1-1024 messages",
        ),
        (
            serde_json::json!({"messages": [{"role": "tool", "content": "p"}], "max_tokens": 1}),
            "messages[0].role",
            "unknown variant",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
            "at most 4",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "stop": [""]}),
            "stop",
            "1-64 characters",
        ),
        (
            serde_json::json!(["positional", "p", 1]),
            "body",
            "must be a JSON object, not an array",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 0}),
            "max_tokens",
            "at least 1",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 5000}),
            "max_tokens",
            "4096",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 5000}),
            "max_tokens",
            "4096",
        ),
        (
            serde_json::json!({"prompt": long_prompt, "max_tokens": 10}),
            "max_tokens",
            "context of 4096",
        ),
        (
            serde_json::json!({"prompt": huge_prompt, "max_tokens": 1}),
            "prompt",
            "bytes",
        ),
        (
            serde_json::json!({"prompt": "  ", "max_tokens": 1}),
            "prompt",
            "empty",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "pool_id": "nope"}),
            "pool_id",
            "known pools: default",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "priority": "urgent"}),
            "priority",
            "interactive",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "determinism": "maybe"}),
            "determinism",
            "strict",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "temperature": 2.5}),
            "temperature",
            "0.0-2.0",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "top_p": 0.0}),
            "top_p",
            "(0.0, 1.0]",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "top_k": 5000}),
            "top_k",
            "1000",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "seed": -1}),
            "seed",
            "u32",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "deadline_ms": 0}),
            "deadline_ms",
            "between 1 and",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "task_id": "a/b"}),
            "task_id",
            "[A-Za-z0-9._:-]",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "scope": "has space"}),
            "scope",
            "[A-Za-z0-9._:-]",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "session_id": "s 1"}),
            "session_id",
            "[A-Za-z0-9._:-]",
        ),
        (
            serde_json::json!({"prompt": "p", "max_tokens": 1, "sampler_profile_version": "sp-9"}),
            "sampler_profile_version",
            "sp-1",
        ),
    ];
    for (mut body, field, detail) in cases {
        // Every valid-looking body stays in this test's scope.
        if body.is_object() && body.get("scope").is_none() {
            body["scope"] = client.scope_name().into();
        }
        let response = http
            .post(format!("{}/v1/tasks", shared_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{field}");
        let envelope: contracts::ErrorEnvelope = response.json().await.unwrap();
        assert_eq!(envelope.code, ErrorCode::InvalidParams);
        assert!(!envelope.retriable);
        assert!(
            envelope.message.starts_with(&format!("{field}:")) && envelope.message.contains(detail),
            "{field}: {}",
            envelope.message
        );
    }
    // Nothing invalid was stored.
    let list = client.list(&ListOptions::default()).await.unwrap();
    assert!(list.items.is_empty());
    // A valid batch request with every optional field is admitted.
    let full = TaskRequest {
        priority: Some(Priority::Batch),
        determinism: Some(contracts::Determinism::BestEffort),
        sampler_profile_version: Some("sp-1".into()),
        temperature: Some(0.0),
        top_p: Some(0.9),
        top_k: Some(10),
        deadline_ms: Some(60_000),
        seed: Some(9),
        ..task("all fields", 2)
    };
    client.submit(full).await.unwrap();
}

// covers: ORCH-1012, ORCH-2021, ORCH-6011
#[tokio::test]
async fn unknown_and_foreign_ids_are_not_found() {
    let owner = shared_client();
    let id = owner.submit(task("mine", 2)).await.unwrap().task_id;
    let stranger = owner.stranger();
    for error in [
        stranger.status(&id).await.unwrap_err(),
        stranger.cancel(&id).await.unwrap_err(),
        stranger.stream(&id).await.err().unwrap(),
        owner.status("never-submitted").await.unwrap_err(),
        owner.cancel("never-submitted").await.unwrap_err(),
    ] {
        assert_eq!(error.status(), Some(404));
        assert_eq!(api_code(&error), ErrorCode::NotFound);
    }
    owner.status(&id).await.unwrap();
}

// covers: ORCH-1103, ORCH-1104
#[tokio::test]
async fn readers_share_one_sequence_and_resume_without_loss_or_duplicate() {
    let config = config_with(
        1,
        BuiltinEngineConfig {
            tokens_per_s: 400.0,
            ..Default::default()
        },
        |pool| {
            pool.metrics_interval_ms = 10;
        },
    );
    let server = TestServer::start(config).await;
    let client = server.client();
    let id = client.submit(task("resume me", 30)).await.unwrap().task_id;
    let (live_a, live_b) = tokio::join!(client.collect(&id), client.collect(&id));
    let (live_a, live_b) = (live_a.unwrap(), live_b.unwrap());
    let late = client.collect(&id).await.unwrap();
    assert_eq!(live_a, live_b, "concurrent readers see the same sequence");
    assert_eq!(
        live_a, late,
        "a late reader gets the whole log from the start"
    );
    assert!(
        live_a.iter().any(|e| matches!(e, StreamEvent::Metrics(_))),
        "metrics events are in the log"
    );

    let resumed: Vec<StreamEvent> = client
        .stream_after(&id, Some(9))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let after_nine = live_a
        .iter()
        .skip_while(|e| !matches!(e, StreamEvent::Token(t) if t.i == 9))
        .skip(1)
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(resumed, after_nine, "resume starts right after token 9");
    assert_eq!(tokens(&resumed).first().unwrap().i, 10);
}

// covers: ORCH-1105
#[tokio::test]
async fn a_waiting_stream_gets_keep_alive_comments() {
    let mut config = config_with(1, BuiltinEngineConfig::default(), |_| {});
    config.keepalive_ms = 100;
    let server = TestServer::start(config).await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let id = client.submit(task("wait", 1)).await.unwrap().task_id;
    let mut response = reqwest::Client::new()
        .get(format!(
            "{}/v1/tasks/{id}/stream?scope={}",
            server.url(),
            client.scope().unwrap()
        ))
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(2), response.chunk())
        .await
        .expect("a keep-alive within 2 s")
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..], b": keep-alive\n\n");
}

// covers: ORCH-1020, ORCH-1022
#[tokio::test]
async fn a_canceled_queued_task_never_starts() {
    let server = TestServer::default().await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let id = client.submit(task("never run", 5)).await.unwrap().task_id;
    client.cancel(&id).await.unwrap();
    client.cancel(&id).await.unwrap();
    server.handle().hold_dispatch("default", false);
    let events = client.collect(&id).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        matches!(&events[0], StreamEvent::End(end) if end.finish_reason == FinishReason::Canceled && end.tokens_out == 0)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = client.status(&id).await.unwrap();
    assert_eq!(status.state, TaskState::Canceled);
    assert!(status.started_at_ms.is_none());
    assert_eq!(server.handle().queue_len("default"), 0);
}

// covers: ORCH-1021, ORCH-1023
#[tokio::test]
async fn no_token_follows_an_acknowledged_cancel() {
    let config = config_with(
        2,
        BuiltinEngineConfig {
            tokens_per_s: 500.0,
            ttft_ms: 5,
            slots: 8,
            ..Default::default()
        },
        |_| {},
    );
    let server = TestServer::start(config).await;
    let client = server.client();
    let mut runs = Vec::new();
    for n in 0..24u64 {
        let client = client.clone();
        runs.push(tokio::spawn(async move {
            let id = client
                .submit(task(&format!("cancel me {n}"), 400))
                .await
                .unwrap()
                .task_id;
            let mut stream = Box::pin(client.stream(&id).await.unwrap());
            // Cancel after a pseudo-random number of tokens (0..40).
            let cancel_after = (n * 7919 % 41) as u32;
            let mut seen = Vec::new();
            let mut acked = None;
            while let Some(event) = stream.next().await {
                let event = event.unwrap();
                if let StreamEvent::Token(token) = &event {
                    assert!(acked.is_none() || seen.len() < 400, "stream continues");
                    if token.i + 1 >= cancel_after && acked.is_none() {
                        client.cancel(&id).await.unwrap();
                        // What the server reports right after the 204 is final.
                        acked = Some(client.status(&id).await.unwrap().tokens_out);
                    }
                }
                seen.push(event);
            }
            (id, seen, acked)
        }));
    }
    for run in runs {
        let (id, seen, acked) = run.await.unwrap();
        let end = seen.last().unwrap();
        let StreamEvent::End(end) = end else {
            panic!("{id}: ended with {end:?}")
        };
        assert_eq!(end.finish_reason, FinishReason::Canceled, "{id}");
        let streamed = tokens(&seen).len() as u32;
        assert_eq!(
            end.tokens_out, streamed,
            "{id}: end counts exactly the tokens delivered"
        );
        if let Some(acked) = acked {
            assert_eq!(
                streamed, acked,
                "{id}: no token after the acknowledged cancel"
            );
        }
        assert_eq!(client.status(&id).await.unwrap().tokens_out, streamed);
        assert_eq!(
            client.collect(&id).await.unwrap(),
            seen,
            "{id}: the log is frozen"
        );
    }
    let handle = server.handle();
    eventually(Duration::from_secs(2), "slots freed", async || {
        handle.replica_active("default", "r0") + handle.replica_active("default", "r1") == 0
    })
    .await;
}

/// A client that gives up while its task is being admitted — after the insert
/// commits, before the task is queued — loses nothing: the admission finishes without
/// it, and the task runs (it was left stored as queued and never dispatched).
// covers: ORCH-7001
#[tokio::test]
async fn a_client_that_gives_up_mid_admission_leaves_a_task_that_runs() {
    let server = TestServer::default().await;
    server.handle().pause_admissions_after_insert(400);
    let client = server.client();
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/v1/tasks", server.url()))
        .json(&serde_json::json!({
            "task_id": "impatient",
            "scope": client.scope().unwrap(),
            "prompt": "given up on",
            "max_tokens": 3,
        }))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out: {gave_up:?}");
    server.handle().pause_admissions_after_insert(0);
    let events = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.collect("impatient"),
    )
    .await
    .expect("the task admitted without its client runs to its end")
    .unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::End(_))),
        "{events:?}"
    );
}
