//! Full queues, unready and unavailable pools, start deadlines: every code of
//! the admission path produced by its real trigger.

mod common;

use std::time::Duration;

use common::{TestServer, config_with, task};
use contracts::config::{BuiltinEngineConfig, BuiltinFaults, FullPolicy};
use contracts::{ErrorCode, Priority, RejectPolicy, StreamEvent, TaskRequest, TaskState};

fn queue_of(capacity: u32, policy: FullPolicy) -> contracts::config::Config {
    config_with(1, BuiltinEngineConfig::default(), |pool| {
        pool.queue.capacity = capacity;
        pool.queue.full_policy = policy;
    })
}

fn batch(prompt: &str) -> TaskRequest {
    TaskRequest {
        priority: Some(Priority::Batch),
        ..task(prompt, 2)
    }
}

/// Status, headers and envelope of a raw submission.
async fn raw_submit(
    url: &str,
    body: serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, contracts::ErrorEnvelope) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap())
}

fn numeric_header(headers: &reqwest::header::HeaderMap, name: &str) -> u64 {
    headers[name]
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is numeric"))
}

// covers: ORCH-2003, ORCH-2010, ORCH-3001, ORCH-3004
#[tokio::test]
async fn a_full_reject_queue_answers_429_with_backoff_from_the_predicted_wait() {
    let server = TestServer::start(queue_of(2, FullPolicy::Reject)).await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let first = client.submit(task("one", 2)).await.unwrap();
    let second = client.submit(task("two", 2)).await.unwrap();
    assert_eq!((first.queue_position, second.queue_position), (0, 1));
    assert!(second.predicted_start_ms >= first.predicted_start_ms);

    let (status, headers, envelope) = raw_submit(
        &server.url(),
        serde_json::json!({"prompt": "three", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(envelope.code, ErrorCode::AdmissionReject);
    assert_eq!(envelope.known_policy(), Some(RejectPolicy::Reject));
    assert!(envelope.retriable);
    let backoff_ms = numeric_header(&headers, "x-backoff-ms");
    let retry_after = numeric_header(&headers, "retry-after");
    assert!(backoff_ms >= 50);
    assert_eq!(retry_after, backoff_ms.div_ceil(1000).max(1));
    assert_eq!(envelope.retry_after_ms, Some(backoff_ms));

    // Released, the admitted tasks run to completion.
    server.handle().hold_dispatch("default", false);
    client.collect(&second.task_id).await.unwrap();
}

/// A pool of one slot held by a 10 s task, with a queue of one.
async fn one_busy_slot_and_a_full_queue() -> (TestServer, orchctl::Client, String) {
    let engine = BuiltinEngineConfig {
        slots: 1,
        tokens_per_s: 10.0,
        ..Default::default()
    };
    let server = TestServer::start(config_with(1, engine, |pool| {
        pool.queue.capacity = 1;
    }))
    .await;
    let client = server.client();
    let running = client.submit(task("runs ten seconds", 100)).await.unwrap();
    common::eventually(Duration::from_secs(5), "the first task runs", async || {
        client.status(&running.task_id).await.unwrap().state == TaskState::Running
    })
    .await;
    let queued = client.submit(task("waits", 2)).await.unwrap().task_id;
    (server, client, queued)
}

fn task_with_id(id: &str) -> TaskRequest {
    TaskRequest {
        task_id: Some(id.into()),
        ..task(id, 2)
    }
}

fn with_id(id: &str) -> serde_json::Value {
    serde_json::json!({"task_id": id, "prompt": id, "max_tokens": 2})
}

// covers: ORCH-3012, ORCH-2003, ORCH-3004
#[tokio::test]
async fn a_refused_task_keeps_its_place_for_its_retry_and_nobody_overtakes_it() {
    let (server, client, queued) = one_busy_slot_and_a_full_queue().await;
    let url = server.url();
    let scoped = |mut body: serde_json::Value| {
        body["scope"] = serde_json::json!(client.scope().unwrap());
        body
    };

    let (status, first_headers, first) = raw_submit(&url, scoped(with_id("first"))).await;
    assert_eq!(
        (status, first.known_policy()),
        (429, Some(RejectPolicy::Reject))
    );
    assert!(
        first.message.contains("1 queue place(s) must free first")
            && first.message.contains("a place is held for task_id first"),
        "{}",
        first.message
    );
    let (_, second_headers, second) = raw_submit(&url, scoped(with_id("second"))).await;
    assert!(
        second.message.contains("2 queue place(s)"),
        "{}",
        second.message
    );
    // The second waits for a cycle of the slot more than the first.
    let (first_ms, second_ms) = (
        numeric_header(&first_headers, "x-backoff-ms"),
        numeric_header(&second_headers, "x-backoff-ms"),
    );
    assert!(second_ms > first_ms, "{second_ms} ms after {first_ms} ms");
    let (_, _, anonymous) = raw_submit(
        &url,
        scoped(serde_json::json!({"prompt": "no id", "max_tokens": 2})),
    )
    .await;
    assert!(
        anonymous
            .message
            .contains("send a task_id to have a place held"),
        "{}",
        anonymous.message
    );

    // A place frees: it is the first refusal's, not a newcomer's, not the second's.
    client.cancel(&queued).await.unwrap();
    let (status, _, overtaking) = raw_submit(&url, scoped(with_id("newcomer"))).await;
    assert_eq!(status, 429, "a newcomer queues behind the held places");
    assert!(
        overtaking.message.contains("2 queue place(s)"),
        "{}",
        overtaking.message
    );
    let (status, _, _) = raw_submit(&url, scoped(with_id("second"))).await;
    assert_eq!(status, 429, "the second's place comes after the first's");
    let first = client.submit(task_with_id("first")).await;
    assert!(
        first.is_ok(),
        "the first refusal's retry takes the place held for it: {first:?}"
    );
    client.cancel("first").await.unwrap();
    let second = client.submit(task_with_id("second")).await;
    assert!(second.is_ok(), "then the second's: {second:?}");
}

// covers: ORCH-2003, ORCH-6022
#[tokio::test]
async fn a_draining_pool_hints_the_wait_until_its_deadline() {
    let server = TestServer::start(queue_of(4, FullPolicy::Reject)).await;
    server.client().drain_pool("default", 60_000).await.unwrap();
    let (status, headers, envelope) = raw_submit(
        &server.url(),
        serde_json::json!({"prompt": "late", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(envelope.code, ErrorCode::PoolUnavailable);
    let backoff_ms = numeric_header(&headers, "x-backoff-ms");
    assert!((55_000..=60_000).contains(&backoff_ms), "{backoff_ms}");
    assert_eq!(
        numeric_header(&headers, "retry-after"),
        backoff_ms.div_ceil(1000)
    );
}

// covers: ORCH-2003, ORCH-7007
#[tokio::test]
async fn a_stopping_server_hints_the_wait_until_its_running_work_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(
        1,
        BuiltinEngineConfig {
            tokens_per_s: 50.0,
            ttft_ms: 0,
            ..Default::default()
        },
        |_| {},
    );
    config.shutdown_grace_ms = 10_000;
    let server = orchestratord::start(config, "127.0.0.1:0", &dir.path().join("s.db"))
        .await
        .unwrap();
    let url = server.url();
    let client = orchctl::Client::new(url.clone());
    // Before any completion the pool expects 128 tokens at 50/s: 2 560 ms.
    let id = client
        .submit(task("two seconds", 100))
        .await
        .unwrap()
        .task_id;
    common::eventually(Duration::from_secs(5), "the task runs", async || {
        client.status(&id).await.unwrap().state == TaskState::Running
    })
    .await;
    let stopping = tokio::spawn(server.shutdown());
    let mut refused = None;
    for _ in 0..200 {
        let (status, headers, envelope) =
            raw_submit(&url, serde_json::json!({"prompt": "late", "max_tokens": 1})).await;
        if status == 503 {
            refused = Some((headers, envelope));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (headers, envelope) = refused.expect("admission closes at once");
    assert!(
        envelope.message.contains("shutting down"),
        "{}",
        envelope.message
    );
    let backoff_ms = numeric_header(&headers, "x-backoff-ms");
    assert!(
        (1_000..=2_560).contains(&backoff_ms),
        "the running task's expected rest, not the 10 s grace: {backoff_ms}"
    );
    stopping.await.unwrap();
}

// covers: ORCH-2011, ORCH-3005
#[tokio::test]
async fn drop_lru_evicts_the_oldest_queued_task_onto_its_stream() {
    let server = TestServer::start(queue_of(2, FullPolicy::DropLru)).await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let oldest = client.submit(task("oldest", 2)).await.unwrap().task_id;
    let middle = client.submit(batch("middle")).await.unwrap().task_id;
    let newest = client.submit(task("newest", 2)).await.unwrap();
    let events = client.collect(&oldest).await.unwrap();
    let [StreamEvent::Error(error)] = events.as_slice() else {
        panic!("evicted stream: {events:?}")
    };
    assert_eq!(error.code, ErrorCode::QueueFullDropLru);
    assert_eq!(
        client.status(&oldest).await.unwrap().state,
        TaskState::Failed
    );
    server.handle().hold_dispatch("default", false);
    for id in [&middle, &newest.task_id] {
        let events = client.collect(id).await.unwrap();
        assert!(
            matches!(events.last(), Some(StreamEvent::End(_))),
            "{id} completes"
        );
    }
}

// covers: ORCH-2010, ORCH-3006
#[tokio::test]
async fn shed_low_priority_evicts_the_newest_batch_task_for_an_interactive_one() {
    let server = TestServer::start(queue_of(3, FullPolicy::ShedLowPriority)).await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let older_batch = client.submit(batch("b1")).await.unwrap().task_id;
    let newer_batch = client.submit(batch("b2")).await.unwrap().task_id;
    client.submit(task("i1", 2)).await.unwrap();

    let refused = client.submit(batch("b3")).await.unwrap_err();
    assert_eq!(refused.status(), Some(429));
    let envelope = refused.envelope().unwrap();
    assert_eq!(
        (envelope.code.known(), envelope.known_policy()),
        (
            Some(ErrorCode::AdmissionReject),
            Some(RejectPolicy::ShedLowPriority)
        )
    );

    client.submit(task("i2", 2)).await.unwrap();
    let events = client.collect(&newer_batch).await.unwrap();
    let [StreamEvent::Error(shed)] = events.as_slice() else {
        panic!("shed stream: {events:?}")
    };
    assert_eq!(
        (shed.code.known(), shed.known_policy()),
        (
            Some(ErrorCode::AdmissionReject),
            Some(RejectPolicy::ShedLowPriority)
        )
    );
    assert_eq!(
        client.status(&older_batch).await.unwrap().state,
        TaskState::Queued
    );

    // With no batch task left to shed, an interactive arrival is refused too.
    client.submit(task("i3", 2)).await.unwrap();
    client.submit(task("i4", 2)).await.unwrap_err();
}

// covers: ORCH-2003, ORCH-2013, ORCH-4012, ORCH-4015
#[tokio::test]
async fn starting_replicas_make_the_pool_unready() {
    let engine = BuiltinEngineConfig {
        start_unready_ms: 60_000,
        ..Default::default()
    };
    let server = TestServer::start(config_with(2, engine, |pool| {
        pool.health_interval_ms = 5_000;
    }))
    .await;
    let early = serde_json::json!({"prompt": "early", "max_tokens": 1});
    let (status, headers, envelope) = raw_submit(&server.url(), early.clone()).await;
    assert_eq!(status, 503);
    assert_eq!(envelope.code, ErrorCode::PoolUnready);
    assert!(
        envelope.message.contains("starting"),
        "{}",
        envelope.message
    );
    // The hint is the time left until the next probe, which can find a
    // replica Ready: it shrinks as that probe comes nearer.
    let first_ms = numeric_header(&headers, "x-backoff-ms");
    assert!((50..=5_000).contains(&first_ms), "{first_ms}");
    assert_eq!(
        numeric_header(&headers, "retry-after"),
        first_ms.div_ceil(1000)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, headers, _) = raw_submit(&server.url(), early).await;
    let later_ms = numeric_header(&headers, "x-backoff-ms");
    assert!(
        later_ms + 300 <= first_ms,
        "{later_ms} ms, 400 ms after {first_ms} ms"
    );
    let health = server.client().pool_health("default").await.unwrap();
    assert!(
        health
            .replicas
            .iter()
            .all(|r| r.state == contracts::control::ReplicaState::Starting)
    );
    assert!(!health.ready);
}

// covers: ORCH-2014, ORCH-4012, ORCH-4015
#[tokio::test]
async fn a_pool_whose_replicas_are_all_down_is_unavailable_until_one_recovers() {
    let engine = BuiltinEngineConfig {
        faults: BuiltinFaults {
            fail_health: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let server =
        TestServer::start(config_with(2, engine, |pool| pool.health_interval_ms = 20)).await;
    let (status, headers, envelope) = raw_submit(
        &server.url(),
        serde_json::json!({"prompt": "down", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(envelope.code, ErrorCode::PoolUnavailable);
    assert!(
        envelope.message.contains("health checks fail"),
        "{}",
        envelope.message
    );
    assert!(numeric_header(&headers, "x-backoff-ms") >= 50);

    let health = server.client().pool_health("default").await.unwrap();
    assert!(
        health
            .replicas
            .iter()
            .all(|r| r.state == contracts::control::ReplicaState::Down)
    );
    server
        .handle()
        .set_faults("default", "r1", BuiltinFaults::default());
    let client = server.client();
    common::eventually(Duration::from_secs(5), "r1 back to Ready", async || {
        client.submit(task("up again", 1)).await.is_ok()
    })
    .await;
}

// covers: ORCH-2015, ORCH-3008
#[tokio::test]
async fn a_task_still_queued_at_its_deadline_ends_replica_exhausted() {
    let server = TestServer::default().await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let request = TaskRequest {
        deadline_ms: Some(5_000),
        ..task("in a hurry", 2)
    };
    let id = client.submit(request).await.unwrap().task_id;
    let patient = client.submit(task("patient", 2)).await.unwrap().task_id;
    server.handle().advance_clock(6_000);
    let events = client.collect(&id).await.unwrap();
    let [StreamEvent::Error(error)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(error.code, ErrorCode::ReplicaExhausted);
    assert!(error.message.contains("5000"), "{}", error.message);
    assert_eq!(
        client.status(&patient).await.unwrap().state,
        TaskState::Queued
    );
}

// The admission's backoff_ms is the hint a 429 would give for the task's own
// depth ahead: its predicted start, never below 50 ms, growing with the queue.
// covers: ORCH-1018
#[tokio::test]
async fn the_admission_backoff_is_the_predicted_wait_of_the_tasks_own_position() {
    let engine = BuiltinEngineConfig {
        slots: 1,
        ..Default::default()
    };
    let server = TestServer::start(config_with(1, engine, |_| {})).await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let mut admissions = Vec::new();
    for n in 0..4 {
        admissions.push(client.submit(task(&format!("wait {n}"), 2)).await.unwrap());
    }
    for a in &admissions {
        assert_eq!(a.backoff_ms, a.predicted_start_ms.max(50), "{a:?}");
    }
    assert_eq!(
        admissions[0].backoff_ms, 50,
        "a free slot is left: only the floor"
    );
    assert!(
        admissions
            .windows(2)
            .all(|w| w[0].backoff_ms < w[1].backoff_ms),
        "one more task ahead, a longer wait: {admissions:?}"
    );
}

// Before any task completes, the wait prediction comes from the engine's own
// speed: a 10 tokens/s builtin replica takes 20 ms + 128 tokens × 100 ms for the
// half-budget task the estimate assumes (the old constant said 690 ms whatever
// the engine).
// covers: ORCH-3007
#[tokio::test]
async fn the_first_wait_prediction_comes_from_the_engines_speed() {
    let engine = BuiltinEngineConfig {
        slots: 1,
        tokens_per_s: 10.0,
        ttft_ms: 20,
        ..Default::default()
    };
    let server = TestServer::start(config_with(1, engine, |_| {})).await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let first = client.submit(task("first", 2)).await.unwrap();
    let second = client.submit(task("second", 2)).await.unwrap();
    assert_eq!(first.predicted_start_ms, 0, "a free slot is left for it");
    assert_eq!(second.predicted_start_ms, 20 + 128 * 100, "{second:?}");
}
