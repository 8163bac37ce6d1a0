//! Control plane end to end: pools, health, drain, reload, replica sets,
//! capabilities.

mod common;

use std::time::Duration;

use common::{TestServer, config_with, eventually, task, tokens};
use contracts::config::{BuiltinEngineConfig, EngineConfig, ReplicaConfig};
use contracts::control::ReplicaState;
use contracts::{ErrorCode, ReloadRequest, StreamEvent, TaskState};

// covers: ORCH-6020, ORCH-6021, ORCH-6024, ORCH-6025
#[tokio::test]
async fn pools_health_replica_sets_and_capabilities_describe_the_real_server() {
    let server = TestServer::default().await;
    let client = server.client();
    let id = client.submit(task("warm up", 4)).await.unwrap().task_id;
    client.collect(&id).await.unwrap();

    let pools = client.pools().await.unwrap().pools;
    assert_eq!(pools.len(), 1);
    assert_eq!(
        (
            pools[0].pool_id.as_str(),
            pools[0].replicas,
            pools[0].ready_replicas
        ),
        ("default", 2, 2)
    );
    assert_eq!(pools[0].engine, "builtin");

    let health = client.pool_health("default").await.unwrap();
    assert!(health.live && health.ready && !health.draining);
    assert_eq!(health.replicas.len(), 2);
    assert!(
        health
            .replicas
            .iter()
            .all(|r| r.state == ReplicaState::Ready && r.slots == 4)
    );

    let sets = client.replica_sets().await.unwrap().replica_sets;
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].replicas, ["r0", "r1"]);
    assert_eq!(sets[0].sampler_profile_version, "sp-1");
    assert!(sets[0].model_digest.starts_with("sha256:"));
    assert!(sets[0].slo.completed >= 1 && sets[0].slo.tokens_per_s > 0.0);
    assert_eq!(sets[0].load.slots, 8);

    let capabilities = client.capabilities().await.unwrap();
    assert_eq!(capabilities.engines, ["builtin"]);
    assert_eq!(capabilities.pools[0].ctx_limit, 4096);
    assert!(capabilities.features.iter().any(|f| f == "sessions"));

    let missing = client.pool_health("nope").await.unwrap_err();
    assert_eq!(missing.envelope().unwrap().code, ErrorCode::NotFound);
}

// covers: ORCH-6022, ORCH-2014
#[tokio::test]
async fn drain_closes_admission_lets_work_finish_and_ends_the_rest_at_the_deadline() {
    let engine = BuiltinEngineConfig {
        slots: 1,
        tokens_per_s: 100.0,
        ..Default::default()
    };
    let server = TestServer::start(config_with(1, engine, |_| {})).await;
    let client = server.client();
    let running = client
        .submit(task("finishes in time", 10))
        .await
        .unwrap()
        .task_id;
    let queued = client
        .submit(task("also in time", 5))
        .await
        .unwrap()
        .task_id;
    let absurd = client.drain_pool("default", u64::MAX).await.unwrap_err();
    assert_eq!(absurd.envelope().unwrap().code, ErrorCode::InvalidParams);
    assert!(
        absurd
            .envelope()
            .unwrap()
            .message
            .starts_with("deadline_ms:")
    );
    // A positional body is not a drain request, however serde would read it.
    let positional = reqwest::Client::new()
        .post(format!("{}/v1/pools/default/drain", server.url()))
        .json(&serde_json::json!([1000]))
        .send()
        .await
        .unwrap();
    assert_eq!(positional.status(), 400);
    let envelope: contracts::ErrorEnvelope = positional.json().await.unwrap();
    assert!(
        envelope.message.starts_with("body: must be a JSON object"),
        "{}",
        envelope.message
    );
    let drained = client.drain_pool("default", 60_000).await.unwrap();
    assert!(drained.draining);
    let refused = client.submit(task("too late", 1)).await.unwrap_err();
    assert_eq!(refused.status(), Some(503));
    assert_eq!(refused.envelope().unwrap().code, ErrorCode::PoolUnavailable);
    assert!(refused.backoff().is_some());
    for id in [&running, &queued] {
        let events = client.collect(id).await.unwrap();
        assert!(
            matches!(events.last(), Some(StreamEvent::End(_))),
            "{id}: {events:?}"
        );
    }
    assert!(client.pool_health("default").await.unwrap().draining);

    // A second pool state: long work still running when the deadline passes.
    let server = TestServer::start(config_with(
        1,
        BuiltinEngineConfig {
            slots: 1,
            tokens_per_s: 20.0,
            ..Default::default()
        },
        |_| {},
    ))
    .await;
    let client = server.client();
    let long = client.submit(task("long", 500)).await.unwrap().task_id;
    let waiting = client.submit(task("waiting", 5)).await.unwrap().task_id;
    eventually(Duration::from_secs(2), "long task running", async || {
        client.status(&long).await.unwrap().state == TaskState::Running
    })
    .await;
    client.drain_pool("default", 10_000).await.unwrap();
    server.handle().advance_clock(11_000);
    for id in [&long, &waiting] {
        let events = client.collect(id).await.unwrap();
        let Some(StreamEvent::Error(error)) = events.last() else {
            panic!("{id}: {events:?}")
        };
        assert_eq!(error.code, ErrorCode::PoolUnavailable);
    }
}

// covers: ORCH-6023, ORCH-2012
#[tokio::test]
async fn a_reload_to_a_model_no_replica_serves_is_refused_at_once() {
    let server = TestServer::default().await;
    let client = server.client();
    // A 10-minute ready timeout: the test would hang if the refusal waited for it.
    let refused = client
        .reload_pool(
            "default",
            &ReloadRequest {
                model_ref: "gguf:missing.gguf".into(),
                ready_timeout_ms: Some(600_000),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(400));
    let envelope = refused.envelope().unwrap();
    assert_eq!(envelope.code, ErrorCode::InvalidParams);
    assert!(!envelope.retriable);
    assert!(
        envelope.message.starts_with("model_ref: ")
            && envelope.message.contains("cannot load model")
            && envelope.message.contains("old replicas keep serving"),
        "{}",
        envelope.message
    );
    let health = client.pool_health("default").await.unwrap();
    assert!(
        health
            .replicas
            .iter()
            .all(|r| r.model_ref == "builtin:tiny-words" && r.state == ReplicaState::Ready)
    );
}

// covers: ORCH-6023, ORCH-2013
#[tokio::test]
async fn a_reload_whose_replicas_are_still_loading_is_pool_unready_and_the_old_ones_serve() {
    // Every replica of this pool takes 60 s to load its model, so the new ones of a
    // reload with a 300 ms ready timeout are still loading when it expires.
    let server = TestServer::start(config_with(
        2,
        BuiltinEngineConfig {
            start_unready_ms: 60_000,
            ..BuiltinEngineConfig::default()
        },
        |_| {},
    ))
    .await;
    let client = server.client();
    let failed = client
        .reload_pool(
            "default",
            &ReloadRequest {
                model_ref: "builtin:other-model".into(),
                ready_timeout_ms: Some(300),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(failed.status(), Some(503));
    let envelope = failed.envelope().unwrap();
    assert_eq!(envelope.code, ErrorCode::PoolUnready);
    assert!(envelope.retriable);
    assert!(
        envelope.message.contains("loading model")
            && envelope.message.contains("old replicas keep serving"),
        "{}",
        envelope.message
    );
    let health = client.pool_health("default").await.unwrap();
    assert!(
        health
            .replicas
            .iter()
            .all(|r| r.model_ref == "builtin:tiny-words"),
        "{health:?}"
    );
}

// covers: ORCH-6023
#[tokio::test]
async fn a_reload_swaps_the_whole_replica_set_at_once() {
    let server = TestServer::default().await;
    let client = server.client();
    let health = client.pool_health("default").await.unwrap();
    assert!(
        health
            .replicas
            .iter()
            .all(|r| r.model_ref == "builtin:tiny-words" && r.state == ReplicaState::Ready)
    );
    let id = client
        .submit(task("still served", 3))
        .await
        .unwrap()
        .task_id;
    assert_eq!(tokens(&client.collect(&id).await.unwrap()).len(), 3);

    let reloaded = client
        .reload_pool(
            "default",
            &ReloadRequest {
                model_ref: "builtin:other-model".into(),
                ready_timeout_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(reloaded.model_ref, "builtin:other-model");
    let health = client.pool_health("default").await.unwrap();
    assert!(
        health
            .replicas
            .iter()
            .all(|r| r.model_ref == "builtin:other-model")
    );
    let id = client
        .submit(task("on the new set", 3))
        .await
        .unwrap()
        .task_id;
    assert_eq!(tokens(&client.collect(&id).await.unwrap()).len(), 3);
}

// covers: ORCH-4003
#[tokio::test]
async fn a_replica_set_mixing_engine_versions_is_refused_at_start() {
    let mut config = config_with(1, BuiltinEngineConfig::default(), |_| {});
    config.pools[0].replicas.push(ReplicaConfig {
        id: "odd".into(),
        engine: EngineConfig::Builtin(BuiltinEngineConfig {
            engine_version: "builtin-2.0.0".into(),
            ..Default::default()
        }),
    });
    let dir = tempfile::tempdir().unwrap();
    let error = orchestratord::start(config, "127.0.0.1:0", &dir.path().join("s.db"))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains("r0") && message.contains("odd"),
        "{message}"
    );
}

// The adapter's properties are what the API reports, and a canceled task's
// generation ends when the runner drops the adapter's stream: the slot frees
// long before the 1 000 tokens at 20 tokens/s would have.
// covers: ORCH-4010
#[tokio::test]
async fn the_adapters_properties_reach_the_api_and_dropping_its_stream_ends_the_generation() {
    let engine = BuiltinEngineConfig {
        engine_version: "builtin-9.9.9".into(),
        model_ref: "builtin:other-model".into(),
        ctx_limit: 2_048,
        slots: 3,
        tokens_per_s: 20.0,
        ..Default::default()
    };
    let server = TestServer::start(config_with(1, engine, |_| {})).await;
    let client = server.client();
    let sets = client.replica_sets().await.unwrap().replica_sets;
    let set = &sets[0];
    assert_eq!(
        (
            set.engine.as_str(),
            set.engine_version.as_str(),
            set.model_ref.as_str()
        ),
        ("builtin", "builtin-9.9.9", "builtin:other-model")
    );
    assert!(
        set.model_digest.starts_with("sha256:"),
        "{}",
        set.model_digest
    );
    assert_eq!(set.load.slots, 3);
    let capabilities = client.capabilities().await.unwrap();
    assert_eq!(
        (capabilities.pools[0].ctx_limit, capabilities.pools[0].slots),
        (2_048, 3)
    );

    let id = client
        .submit(task("a long story", 1_000))
        .await
        .unwrap()
        .task_id;
    let handle = server.handle();
    eventually(Duration::from_secs(2), "the generation runs", async || {
        handle.replica_active("default", "r0") == 1
    })
    .await;
    client.cancel(&id).await.unwrap();
    eventually(Duration::from_secs(2), "the slot is free", async || {
        handle.replica_active("default", "r0") == 0
    })
    .await;
}

// A task started before a reload still holds its engine slot afterwards: the
// new replica set counts it, so a one-slot replica takes nothing else until it
// ends (issue: a reload used to count every slot a second time).
// covers: ORCH-6023
#[tokio::test]
async fn a_reload_counts_the_slots_its_predecessors_tasks_still_hold() {
    let engine = BuiltinEngineConfig {
        slots: 1,
        tokens_per_s: 20.0,
        ..Default::default()
    };
    let server = TestServer::start(config_with(1, engine, |_| {})).await;
    let client = server.client();
    let handle = server.handle();
    let long = client
        .submit(task("a long story", 1_000))
        .await
        .unwrap()
        .task_id;
    eventually(Duration::from_secs(2), "the long task runs", async || {
        client.status(&long).await.unwrap().state == TaskState::Running
    })
    .await;
    client
        .reload_pool(
            "default",
            &ReloadRequest {
                model_ref: "builtin:other-model".into(),
                ready_timeout_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        handle.replica_active("default", "r0"),
        1,
        "the running task holds the slot"
    );
    let next = client.submit(task("after the reload", 2)).await.unwrap();
    assert_eq!(next.queue_position, 0);
    assert!(next.predicted_start_ms > 0, "no free slot: {next:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.status(&next.task_id).await.unwrap().state,
        TaskState::Queued
    );
    client.cancel(&long).await.unwrap();
    let events = client.collect(&next.task_id).await.unwrap();
    assert_eq!(tokens(&events).len(), 2);
    eventually(
        Duration::from_secs(2),
        "the slot is free again",
        async || handle.replica_active("default", "r0") == 0,
    )
    .await;
}
