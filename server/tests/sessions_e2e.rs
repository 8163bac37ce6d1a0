//! Sessions end to end: affinity, failover, TTL, turn limit, KV budget.

mod common;

use std::time::Duration;

use common::{TestServer, config_with, eventually, task};
use contracts::config::{BuiltinEngineConfig, BuiltinFaults, Config, SessionConfig};
use contracts::{ErrorCode, StreamEvent, TaskRequest};
use orchctl::Client;
use orchestratord::runtime::ReplicaHealth;

fn turn(session: &str, prompt: &str) -> TaskRequest {
    TaskRequest {
        session_id: Some(session.into()),
        ..task(prompt, 3)
    }
}

/// Run one turn; returns (replica, kv_warmth) of its `started` event.
async fn run_turn(client: &Client, session: &str, prompt: &str) -> (String, bool) {
    let id = client.submit(turn(session, prompt)).await.unwrap().task_id;
    let events = client.collect(&id).await.unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::End(_))),
        "{events:?}"
    );
    let started: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Started(s) => Some((s.replica_id.clone(), s.kv_warmth)),
            _ => None,
        })
        .collect();
    started.last().cloned().unwrap()
}

// covers: ORCH-4004, ORCH-5010, ORCH-5013, ORCH-5015
#[tokio::test]
async fn a_session_sticks_to_its_warm_replica_and_fails_over_cold() {
    let server = TestServer::start(config_with(2, BuiltinEngineConfig::default(), |p| {
        p.health_interval_ms = 20
    }))
    .await;
    let client = server.client();
    let (first, warm) = run_turn(&client, "chat", "hello").await;
    assert!(!warm, "the first turn has no KV yet");
    for n in 0..3 {
        // Load the other replica too: affinity must still win.
        client
            .submit(task(&format!("noise {n}"), 50))
            .await
            .unwrap();
        let (replica, warm) = run_turn(&client, "chat", "and again").await;
        assert_eq!((replica.as_str(), warm), (first.as_str(), true));
    }
    let info = client.session("chat").await.unwrap();
    assert_eq!(info.turns, 4);
    assert!(info.kv_warmth && info.kv_bytes > 0);
    assert_eq!(info.replica_id.as_deref(), Some(first.as_str()));
    assert!(info.ttl_ms_remaining > 590_000);

    let handle = server.handle();
    handle.set_faults(
        "default",
        &first,
        BuiltinFaults {
            fail_health: true,
            ..Default::default()
        },
    );
    eventually(Duration::from_secs(3), "warm replica down", async || {
        handle.replica_health("default", &first) == ReplicaHealth::Down
    })
    .await;
    let (other, warm) = run_turn(&client, "chat", "failover").await;
    assert_ne!(other, first);
    assert!(!warm, "failover runs cold and the started event says so");
    let info = client.session("chat").await.unwrap();
    assert_eq!(
        info.replica_id.as_deref(),
        Some(other.as_str()),
        "the last good replica"
    );
}

// covers: ORCH-5011, ORCH-5012, ORCH-5014
#[tokio::test]
async fn sessions_expire_have_a_turn_limit_and_can_be_ended() {
    let config = Config {
        sessions: SessionConfig {
            max_turns: 2,
            ttl_ms: 60_000,
            ..Default::default()
        },
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let client = server.client();
    run_turn(&client, "short", "one").await;
    run_turn(&client, "short", "two").await;
    let limit = client.submit(turn("short", "three")).await.unwrap_err();
    assert_eq!(limit.status(), Some(400));
    let envelope = limit.envelope().unwrap();
    assert_eq!(envelope.code, ErrorCode::InvalidParams);
    assert!(
        envelope.message.starts_with("session_id:") && envelope.message.contains("2 turns"),
        "{}",
        envelope.message
    );

    run_turn(&client, "idle", "one").await;
    server.handle().advance_clock(61_000);
    for error in [
        client.session("idle").await.unwrap_err(),
        client.submit(turn("idle", "late")).await.unwrap_err(),
    ] {
        assert_eq!(error.status(), Some(404));
        assert_eq!(error.envelope().unwrap().code, ErrorCode::NotFound);
    }

    run_turn(&client, "bye", "one").await;
    client.end_session("bye").await.unwrap();
    assert_eq!(client.session("bye").await.unwrap_err().status(), Some(404));
    assert_eq!(
        client.end_session("never").await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        server.client().session("short").await.unwrap_err().status(),
        Some(404),
        "sessions are scoped"
    );
}

// covers: ORCH-5016
#[tokio::test]
async fn the_per_replica_kv_budget_evicts_the_least_recently_used_session() {
    let config = Config {
        sessions: SessionConfig {
            kv_bytes_per_token: 1_000,
            kv_budget_bytes_per_replica: 20_000,
            ..Default::default()
        },
        ..config_with(1, BuiltinEngineConfig::default(), |_| {})
    };
    let server = TestServer::start(config).await;
    let client = server.client();
    run_turn(&client, "old", "a prompt of some length here").await;
    assert!(client.session("old").await.unwrap().kv_warmth);
    run_turn(&client, "new", "another prompt of some length here").await;
    let old = client.session("old").await.unwrap();
    assert!(!old.kv_warmth && old.kv_bytes == 0, "{old:?}");
    assert!(client.session("new").await.unwrap().kv_warmth);
    let (_, warm) = run_turn(&client, "old", "back again").await;
    assert!(!warm, "an evicted session runs cold");
}
