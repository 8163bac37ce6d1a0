//! Watchdogs, replica failures, internal errors, restart and shutdown.

mod common;

use std::time::Duration;

use common::{TestServer, config_with, eventually, task, tokens};
use contracts::config::{BuiltinEngineConfig, BuiltinFaults, Config, TimeoutConfig};
use contracts::{ErrorCode, FinishReason, StreamEvent, TaskState};
use orchestratord::runtime::ReplicaHealth;

fn faults(f: impl FnOnce(&mut BuiltinFaults)) -> BuiltinFaults {
    let mut faults = BuiltinFaults::default();
    f(&mut faults);
    faults
}

// covers: ORCH-2016, ORCH-5002, ORCH-4012
#[tokio::test]
async fn a_hung_engine_trips_the_idle_watchdog_and_frees_the_slot() {
    let server = TestServer::start(config_with(1, BuiltinEngineConfig::default(), |_| {})).await;
    let handle = server.handle();
    handle.set_faults("default", "r0", faults(|f| f.hang = true));
    handle.set_timeouts(
        "default",
        TimeoutConfig {
            wall_ms: 60_000,
            idle_ms: 150,
        },
    );
    let client = server.client();
    let id = client.submit(task("hang", 5)).await.unwrap().task_id;
    let events = client.collect(&id).await.unwrap();
    let Some(StreamEvent::Error(error)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(error.code, ErrorCode::DecodeTimeout);
    assert!(error.message.contains("idle"), "{}", error.message);
    assert_eq!(error.engine.as_deref(), Some("builtin"));
    eventually(Duration::from_secs(2), "slot freed", async || {
        handle.replica_active("default", "r0") == 0
    })
    .await;
}

// covers: ORCH-2016, ORCH-5001
#[tokio::test]
async fn the_wall_watchdog_ends_a_long_generation() {
    let engine = BuiltinEngineConfig {
        tokens_per_s: 50.0,
        ..Default::default()
    };
    let server = TestServer::start(config_with(1, engine, |_| {})).await;
    let handle = server.handle();
    handle.set_timeouts(
        "default",
        TimeoutConfig {
            wall_ms: 10_000,
            idle_ms: 10_000,
        },
    );
    let client = server.client();
    let id = client.submit(task("long", 1_000)).await.unwrap().task_id;
    eventually(Duration::from_secs(2), "task running", async || {
        client.status(&id).await.unwrap().tokens_out > 0
    })
    .await;
    handle.advance_clock(11_000);
    let events = client.collect(&id).await.unwrap();
    let Some(StreamEvent::Error(error)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(error.code, ErrorCode::DecodeTimeout);
    assert!(error.message.contains("wall"), "{}", error.message);
    eventually(Duration::from_secs(2), "slot freed", async || {
        handle.replica_active("default", "r0") == 0
    })
    .await;
}

// covers: ORCH-2017, ORCH-5003, ORCH-4012, ORCH-4015
#[tokio::test]
async fn a_replica_lost_mid_stream_gives_worker_reset_and_comes_back() {
    let engine = BuiltinEngineConfig {
        faults: faults(|f| f.crash_after_tokens = Some(3)),
        ..Default::default()
    };
    let server =
        TestServer::start(config_with(1, engine, |pool| pool.health_interval_ms = 20)).await;
    let handle = server.handle();
    let client = server.client();
    let id = client.submit(task("crash", 10)).await.unwrap().task_id;
    let events = client.collect(&id).await.unwrap();
    assert_eq!(tokens(&events).len(), 3, "tokens before the crash are kept");
    let Some(StreamEvent::Error(error)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(error.code, ErrorCode::WorkerReset);
    assert!(error.retriable);
    assert_eq!(handle.replica_health("default", "r0"), ReplicaHealth::Down);
    eventually(Duration::from_secs(5), "replica Ready again", async || {
        handle.replica_health("default", "r0") == ReplicaHealth::Ready
    })
    .await;
    handle.set_faults("default", "r0", BuiltinFaults::default());
    let again = client
        .submit(task("after recovery", 3))
        .await
        .unwrap()
        .task_id;
    assert!(matches!(
        client.collect(&again).await.unwrap().last(),
        Some(StreamEvent::End(_))
    ));
}

// covers: ORCH-4014
#[tokio::test]
async fn a_failure_before_the_first_token_is_retried_once_on_another_replica() {
    let server = TestServer::default().await;
    let handle = server.handle();
    handle.set_faults("default", "r0", faults(|f| f.crash_after_tokens = Some(0)));
    let client = server.client();
    let id = client.submit(task("retry me", 4)).await.unwrap().task_id;
    let events = client.collect(&id).await.unwrap();
    let started: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Started(s) => Some(s.replica_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["r0", "r1"], "{events:?}");
    assert_eq!(tokens(&events).len(), 4);
    assert!(
        matches!(events.last(), Some(StreamEvent::End(end)) if end.finish_reason == FinishReason::Length)
    );
}

// covers: ORCH-2018, ORCH-2001, ORCH-7001
#[tokio::test]
async fn a_store_refusing_writes_answers_internal_with_a_correlation_id() {
    let server = TestServer::default().await;
    server.handle().hold_dispatch("default", true);
    server.handle().refuse_store_writes(true);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/tasks", server.url()))
        .json(&serde_json::json!({"prompt": "p", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let header = response.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let envelope: contracts::ErrorEnvelope = response.json().await.unwrap();
    assert_eq!(envelope.code, ErrorCode::Internal);
    assert_eq!(envelope.correlation_id, header);
    assert!(!envelope.retriable, "INTERNAL is not retriable");
    assert!(
        envelope.message.contains("store refused the write"),
        "{}",
        envelope.message
    );
    assert_eq!(
        server.handle().queue_len("default"),
        0,
        "a task the store refused is not queued"
    );
    server.handle().refuse_store_writes(false);
    let listed = server.client().list(&Default::default()).await.unwrap();
    assert!(listed.items.is_empty(), "{listed:?}");
    server.client().submit(task("p", 1)).await.unwrap();
    assert_eq!(server.handle().queue_len("default"), 1);
}

// covers: ORCH-7002, ORCH-7004, ORCH-7007
#[tokio::test]
async fn a_restart_requeues_queued_tasks_in_order_and_keeps_finished_logs() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.db");
    let config = config_with(
        1,
        BuiltinEngineConfig {
            slots: 1,
            ..Default::default()
        },
        |_| {},
    );
    let first = orchestratord::start(config.clone(), "127.0.0.1:0", &store)
        .await
        .unwrap();
    let client = orchctl::Client::new(first.url()).with_scope("restart");
    let done = client
        .submit(task("finished before", 3))
        .await
        .unwrap()
        .task_id;
    let done_events = client.collect(&done).await.unwrap();
    first.test_handle().hold_dispatch("default", true);
    let mut queued = Vec::new();
    for n in 0..4 {
        queued.push(
            client
                .submit(task(&format!("queued {n}"), 2))
                .await
                .unwrap()
                .task_id,
        );
    }
    first.shutdown().await;

    let second = orchestratord::start(config, "127.0.0.1:0", &store)
        .await
        .unwrap();
    let client = orchctl::Client::new(second.url()).with_scope("restart");
    assert_eq!(
        client.collect(&done).await.unwrap(),
        done_events,
        "finished logs survive"
    );
    let mut started_at = Vec::new();
    for id in &queued {
        client.collect(id).await.unwrap();
        let status = client.status(id).await.unwrap();
        assert_eq!(status.state, TaskState::Completed);
        started_at.push(status.started_at_ms.unwrap());
    }
    assert!(
        started_at.windows(2).all(|w| w[0] <= w[1]),
        "original order kept: {started_at:?}"
    );
    second.shutdown().await;
}

// covers: ORCH-7007
#[tokio::test]
async fn shutdown_stops_admission_and_lets_running_work_finish() {
    let server = TestServer::start(Config::default()).await;
    let client = server.client();
    let id = client.submit(task("finish me", 20)).await.unwrap().task_id;
    let reader = tokio::spawn({
        let client = client.clone();
        async move { client.collect(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let url = server.url();
    let TestServer {
        server, dir: _dir, ..
    } = server;
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = orchctl::Client::new(url).submit(task("too late", 1)).await;
    if let Err(error) = &late {
        // Either the listener is already closed or admission answers 503.
        if let Some(envelope) = error.envelope() {
            assert_eq!(envelope.code, ErrorCode::PoolUnavailable);
        }
    } else {
        panic!("admission must close at shutdown");
    }
    let events = reader.await.unwrap().unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::End(_))),
        "{events:?}"
    );
    stopping.await.unwrap();
}

// covers: ORCH-2018, ORCH-2005
#[tokio::test]
async fn a_task_whose_start_cannot_be_stored_ends_internal_on_its_stream() {
    let server = TestServer::default().await;
    let handle = server.handle();
    let client = server.client();
    handle.hold_dispatch("default", true);
    let id = client.submit(task("unrecorded", 2)).await.unwrap().task_id;
    handle.refuse_store_writes(true);
    handle.hold_dispatch("default", false);
    eventually(Duration::from_secs(5), "the task failed", async || {
        client.status(&id).await.unwrap().state == TaskState::Failed
    })
    .await;
    handle.refuse_store_writes(false);
    let events = client.collect(&id).await.unwrap();
    let Some(StreamEvent::Error(error)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(error.code, ErrorCode::Internal, "{error:?}");
    assert!(!error.retriable);
    assert!(tokens(&events).is_empty(), "{events:?}");
    let status = client.status(&id).await.unwrap();
    assert_eq!(
        status.error.as_ref(),
        Some(error),
        "status and stream carry one envelope"
    );
}

// covers: ORCH-4025, ORCH-2005
#[tokio::test]
async fn a_request_the_engine_rejects_ends_invalid_params_on_its_stream_without_a_retry() {
    let server = TestServer::start(config_with(2, BuiltinEngineConfig::default(), |_| {})).await;
    let handle = server.handle();
    for replica in ["r0", "r1"] {
        handle.set_faults("default", replica, faults(|f| f.reject_as_invalid = true));
    }
    let client = server.client();
    let id = client.submit(task("too long", 2)).await.unwrap().task_id;
    let events = client.collect(&id).await.unwrap();
    let started = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Started(_)))
        .count();
    assert_eq!(
        started, 1,
        "an invalid request is not retried elsewhere: {events:?}"
    );
    let Some(StreamEvent::Error(error)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(error.code, ErrorCode::InvalidParams, "{error:?}");
    assert!(error.message.starts_with("prompt:"), "{}", error.message);
    assert!(!error.retriable);
    assert_eq!(error.engine.as_deref(), Some("builtin"));
    let status = client.status(&id).await.unwrap();
    assert_eq!(status.state, TaskState::Failed);
    assert_eq!(status.error.as_ref(), Some(error));
    assert_eq!(
        handle.replica_health("default", "r0"),
        ReplicaHealth::Ready,
        "the replica stays in placement"
    );
}

// A down replica is probed ever less often, but never less often than the
// configured cap: after 3.5 s down, the default cap (5 s) would leave the next
// probe almost 3 s away; a cap of 200 ms sees the recovery within a second.
// covers: ORCH-4013
#[tokio::test]
async fn a_down_replica_is_probed_with_backoff_up_to_the_configured_cap() {
    let server = TestServer::start(config_with(1, BuiltinEngineConfig::default(), |pool| {
        pool.health_interval_ms = 100;
        pool.health_backoff_cap_ms = 200;
    }))
    .await;
    let handle = server.handle();
    handle.set_faults("default", "r0", faults(|f| f.fail_health = true));
    eventually(Duration::from_secs(2), "replica down", async || {
        handle.replica_health("default", "r0") == ReplicaHealth::Down
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    handle.set_faults("default", "r0", BuiltinFaults::default());
    eventually(
        Duration::from_secs(1),
        "replica Ready within a second of recovering",
        async || handle.replica_health("default", "r0") == ReplicaHealth::Ready,
    )
    .await;
}

// A shutdown whose grace ends with a task still streaming: readers' streams
// end there, the store gets every event they saw, and after the restart the
// task ends WORKER_RESET saying how many tokens are durable; a reader who
// resumes beyond them gets that error at once.
// covers: ORCH-7007, ORCH-7010, ORCH-7003
#[tokio::test]
async fn a_shutdown_past_its_grace_persists_exactly_what_readers_saw() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.db");
    let mut config = config_with(
        1,
        BuiltinEngineConfig {
            tokens_per_s: 100.0,
            ..Default::default()
        },
        |_| {},
    );
    config.shutdown_grace_ms = 150;
    let first = orchestratord::start(config.clone(), "127.0.0.1:0", &store)
        .await
        .unwrap();
    let client = orchctl::Client::new(first.url()).with_scope("grace");
    let id = client
        .submit(task("a long story", 2_000))
        .await
        .unwrap()
        .task_id;
    let reader = tokio::spawn({
        let (client, id) = (client.clone(), id.clone());
        async move {
            let mut seen = Vec::new();
            let mut stream = Box::pin(client.stream(&id).await.unwrap());
            while let Some(Ok(event)) = futures::StreamExt::next(&mut stream).await {
                seen.push(event);
            }
            seen
        }
    });
    eventually(
        Duration::from_secs(2),
        "a few tokens streamed",
        async || client.status(&id).await.unwrap().tokens_out >= 5,
    )
    .await;
    let stopping = tokio::time::Instant::now();
    first.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "the frozen stream does not hold the shutdown: {:?}",
        stopping.elapsed()
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the reader's stream ends with the shutdown")
        .unwrap();
    let seen_tokens = tokens(&seen);
    assert!(seen_tokens.len() >= 5, "{seen:?}");

    let second = orchestratord::start(config, "127.0.0.1:0", &store)
        .await
        .unwrap();
    let client = orchctl::Client::new(second.url()).with_scope("grace");
    let after = client.collect(&id).await.unwrap();
    assert_eq!(
        tokens(&after),
        seen_tokens,
        "the store has every token a reader saw, and no other"
    );
    let Some(StreamEvent::Error(error)) = after.last() else {
        panic!("{after:?}")
    };
    assert_eq!(error.code, ErrorCode::WorkerReset);
    let durable = seen_tokens.len();
    assert!(
        error
            .message
            .contains(&format!("its first {durable} token(s)")),
        "{}",
        error.message
    );
    let resumed = async {
        let stream = client
            .stream_after(&id, Some(durable as u32 + 10))
            .await
            .unwrap();
        futures::StreamExt::collect::<Vec<_>>(stream).await
    };
    let beyond: Vec<StreamEvent> = tokio::time::timeout(Duration::from_secs(5), resumed)
        .await
        .expect("no hang past the durable log")
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        beyond,
        [StreamEvent::Error(error.clone())],
        "only the terminal outcome"
    );
    second.shutdown().await;
}
