//! Operational surface and cross-cutting rules: health and readiness, the
//! served OpenAPI documents, the store's journal mode, metrics events, error
//! envelopes that leak nothing, test hooks that are not routes.

mod common;

use std::time::Duration;

use common::{TestServer, config_with, eventually, task, tokens};
use contracts::config::{BuiltinEngineConfig, BuiltinFaults};
use contracts::{Determinism, ErrorCode, ErrorEnvelope, StreamEvent, TaskRequest};

// covers: ORCH-7103
#[tokio::test]
async fn healthz_and_readyz_follow_the_replicas() {
    let server = TestServer::start(config_with(1, BuiltinEngineConfig::default(), |p| {
        p.health_interval_ms = 20
    }))
    .await;
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), server.url());
        async move {
            http.get(format!("{url}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/healthz").await, 200);
    assert_eq!(get("/readyz").await, 200);
    server.handle().set_faults(
        "default",
        "r0",
        BuiltinFaults {
            fail_health: true,
            ..Default::default()
        },
    );
    eventually(
        Duration::from_secs(3),
        "readyz 503 with no Ready replica",
        async || get("/readyz").await == 503,
    )
    .await;
    assert_eq!(get("/healthz").await, 200, "the process still serves");
    server
        .handle()
        .set_faults("default", "r0", BuiltinFaults::default());
    eventually(Duration::from_secs(5), "readyz 200 again", async || {
        get("/readyz").await == 200
    })
    .await;
}

// covers: ORCH-7104
#[tokio::test]
async fn the_served_openapi_documents_equal_the_committed_contracts() {
    let server = TestServer::default().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for plane in conformance::DOCUMENT_NAMES {
        let served: serde_json::Value =
            reqwest::get(format!("{}/openapi/{plane}.json", server.url()))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let text =
            std::fs::read_to_string(root.join(format!("contracts/openapi/{plane}.yaml"))).unwrap();
        let committed: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            served, committed,
            "{plane}: run `cargo xtask regen-openapi`"
        );
    }
}

// covers: ORCH-7005
#[tokio::test]
async fn the_embedded_store_is_sqlite_in_wal_mode() {
    let server = TestServer::default().await;
    let client = server.client();
    let id = client.submit(task("persist me", 2)).await.unwrap().task_id;
    client.collect(&id).await.unwrap();
    let store = rusqlite::Connection::open(server.dir.path().join("store.db")).unwrap();
    let mode: String = store
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let rows: i64 = store
        .query_row(
            "SELECT COUNT(*) FROM tasks WHERE task_id = ?1",
            [&id],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1);
}

// covers: ORCH-1106
#[tokio::test]
async fn metrics_events_follow_the_pool_interval_and_zero_turns_them_off() {
    let slow = BuiltinEngineConfig {
        tokens_per_s: 100.0,
        ..Default::default()
    };
    for (interval, expect_metrics) in [(20, true), (0, false)] {
        let server = TestServer::start(config_with(1, slow.clone(), |p| {
            p.metrics_interval_ms = interval
        }))
        .await;
        let client = server.client();
        let id = client.submit(task("measure me", 20)).await.unwrap().task_id;
        let events = client.collect(&id).await.unwrap();
        let metrics: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Metrics(_)))
            .collect();
        assert_eq!(
            !metrics.is_empty(),
            expect_metrics,
            "interval {interval}: {events:?}"
        );
        if let Some(StreamEvent::Metrics(m)) = metrics.last() {
            assert!(m.tokens_out <= 20 && m.elapsed_ms > 0);
        }
    }
}

// covers: ORCH-2007, ORCH-6011
#[tokio::test]
async fn a_foreign_id_is_answered_exactly_like_a_missing_one() {
    let server = TestServer::default().await;
    let (owner, stranger) = (server.client(), server.client());
    let before = stranger.status("shared-name").await.unwrap_err();
    owner
        .submit(TaskRequest {
            task_id: Some("shared-name".into()),
            ..task("mine", 2)
        })
        .await
        .unwrap();
    let after = stranger.status("shared-name").await.unwrap_err();
    let (before, after) = (before.envelope().unwrap(), after.envelope().unwrap());
    assert_eq!(
        (&before.code, &before.message, before.retriable),
        (&after.code, &after.message, after.retriable)
    );
    assert_eq!(after.code, ErrorCode::NotFound);
    assert!(
        !after.message.contains(owner.scope().unwrap()),
        "{}",
        after.message
    );
}

// covers: ORCH-4032
#[tokio::test]
async fn strict_and_best_effort_are_accepted_and_the_builtin_engine_is_exact_under_both() {
    let server = TestServer::default().await;
    let client = server.client();
    let mut streams = Vec::new();
    for determinism in [
        None,
        Some(Determinism::Strict),
        Some(Determinism::BestEffort),
    ] {
        let request = TaskRequest {
            determinism,
            seed: Some(11),
            ..task("same words", 8)
        };
        let id = client.submit(request).await.unwrap().task_id;
        streams.push(tokens(&client.collect(&id).await.unwrap()));
    }
    assert_eq!(streams[0], streams[1], "strict is the default");
    assert_eq!(
        streams[1], streams[2],
        "the builtin engine applies no output-changing optimisation"
    );
}

// covers: ORCH-9012
#[tokio::test]
async fn test_hooks_are_not_reachable_over_http() {
    let server = TestServer::default().await;
    let http = reqwest::Client::new();
    let mut paths = Vec::new();
    for plane in conformance::DOCUMENT_NAMES {
        let doc: serde_json::Value = http
            .get(format!("{}/openapi/{plane}.json", server.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        paths.extend(doc["paths"].as_object().unwrap().keys().cloned());
    }
    let public = [
        "/v1/tasks",
        "/v1/sessions/",
        "/v1/scopes/",
        "/v1/pools",
        "/v1/replicasets",
        "/v1/capabilities",
        "/v1/usage",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
    ];
    for path in &paths {
        assert!(
            public.iter().any(|p| path.starts_with(p)),
            "unexpected route {path}"
        );
    }
    for probe in [
        "/test",
        "/v1/test/faults",
        "/hooks",
        "/v1/faults",
        "/v1/clock",
        "/debug/store",
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let status = http
                .request(method, format!("{}{probe}", server.url()))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 404, "{probe}");
        }
    }
    // The hooks exist, in process: hold dispatch and see the task wait.
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let id = client.submit(task("held", 1)).await.unwrap().task_id;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        client.status(&id).await.unwrap().state,
        contracts::TaskState::Queued
    );
}

// covers: ORCH-2001, ORCH-2024
#[tokio::test]
async fn every_non_2xx_answer_carries_the_envelope() {
    let mut config = config_with(1, BuiltinEngineConfig::default(), |p| {
        p.max_prompt_bytes = 1024
    });
    config.max_body_bytes = 4096;
    let server = TestServer::start(config).await;
    let http = reqwest::Client::new();
    let url = server.url();
    async fn envelope(
        response: reqwest::Response,
    ) -> (u16, reqwest::header::HeaderMap, ErrorEnvelope) {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        let envelope = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{status} without the envelope ({e}): {body:?}"));
        (status, headers, envelope)
    }

    let (status, _, e) =
        envelope(http.get(format!("{url}/v1/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, e.code.known()), (404, Some(ErrorCode::NotFound)));
    assert!(e.message.contains("/v1/nowhere"), "{}", e.message);

    let (status, headers, e) =
        envelope(http.delete(format!("{url}/v1/tasks")).send().await.unwrap()).await;
    assert_eq!(
        (status, e.code.known()),
        (405, Some(ErrorCode::InvalidParams))
    );
    let allow = headers
        .get("allow")
        .expect("405 keeps Allow")
        .to_str()
        .unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert!(
        e.message.starts_with("method: DELETE is not allowed"),
        "{}",
        e.message
    );

    // Not UTF-8 once percent-decoded: axum's path rejection, now in the envelope.
    let (status, _, e) = envelope(
        http.get(format!("{url}/v1/tasks/%FF"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, e.code.known()),
        (400, Some(ErrorCode::InvalidParams))
    );
    assert!(e.message.starts_with("path: "), "{}", e.message);

    let big = serde_json::json!({"prompt": "x".repeat(8192), "max_tokens": 1});
    let (status, _, e) = envelope(
        http.post(format!("{url}/v1/tasks"))
            .json(&big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, e.code.known()),
        (413, Some(ErrorCode::InvalidParams))
    );
    assert!(e.message.contains("max_body_bytes"), "{}", e.message);

    let (status, _, e) = envelope(
        http.post(format!("{url}/v1/tasks"))
            .header("content-type", "application/json")
            .body("{\"prompt\": \"p\",\n \"max_tokens\": }")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, e.code.known()),
        (400, Some(ErrorCode::InvalidParams))
    );
    assert!(
        e.message.starts_with("body: is not valid JSON") && e.message.contains("line 2 column"),
        "{}",
        e.message
    );
}

// covers: ORCH-3013
#[tokio::test]
async fn an_idle_daemon_never_wakes_its_dispatcher_and_a_task_wakes_it() {
    // A fast health probe: replicas are watched, but health that does not
    // change is no reason to dispatch.
    let server = TestServer::start(config_with(2, BuiltinEngineConfig::default(), |p| {
        p.health_interval_ms = 10
    }))
    .await;
    let handle = server.handle();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handle.dispatch_wakeups("default"),
        0,
        "nothing queued, running or due: the dispatcher sleeps"
    );
    let client = server.client();
    let id = client.submit(task("wake up", 3)).await.unwrap().task_id;
    assert_eq!(tokens(&client.collect(&id).await.unwrap()).len(), 3);
    let woken = handle.dispatch_wakeups("default");
    assert!(woken >= 1, "the admission woke the dispatcher");
    // The task's end frees its slot (one more wake-up, maybe still to come);
    // after that, idle again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let settled = handle.dispatch_wakeups("default");
    assert!(settled <= woken + 2, "{settled} wake-ups for one task");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handle.dispatch_wakeups("default"), settled, "idle again");
}
