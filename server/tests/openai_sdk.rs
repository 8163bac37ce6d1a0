//! The official `openai` Python SDK against the real server (ORCH-8011): the
//! scenarios of `openai_sdk/check.py`, run with the SDK from the venv that
//! `scripts/tools/setup.sh` makes, each answer read back as a task through the real
//! `orchctl` client.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestServer, config_with, eventually, openai_python, text};
use contracts::config::{BuiltinEngineConfig, BuiltinFaults, Config, Role, TenantConfig};
use contracts::{TaskRequest, TaskState};
use orchctl::Client;
use serde_json::Value;

/// Run one scenario of `check.py` against `url`; its JSON result.
async fn scenario(url: &str, name: &str, api_key: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk/check.py");
    let output = tokio::process::Command::new(openai_python())
        .arg(&script)
        .arg(name)
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .env("OPENAI_API_KEY", api_key)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check.py {name} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line")
}

// covers: ORCH-8011, ORCH-8001, ORCH-8006
#[tokio::test]
async fn the_sdk_chats_and_completes_streaming_and_not_and_each_answer_is_a_task() {
    let server = TestServer::default().await;
    let result = scenario(&server.url(), "basic", "unused").await;
    let client = Client::new(server.url());
    for (task, answer) in [
        ("chat_task", "chat_text"),
        ("completion_task", "completion_text"),
    ] {
        let task_id = result[task].as_str().unwrap();
        assert_eq!(
            client.status(task_id).await.unwrap().state,
            TaskState::Completed
        );
        let events = client.collect(task_id).await.unwrap();
        assert_eq!(text(&events), result[answer].as_str().unwrap());
    }
}

fn pool(id: &str, faults: BuiltinFaults) -> contracts::config::PoolConfig {
    let mut config = config_with(
        1,
        BuiltinEngineConfig {
            faults,
            slots: 1,
            ..BuiltinEngineConfig::default()
        },
        |pool| pool.queue.capacity = 1,
    );
    let mut pool = config.pools.remove(0);
    pool.id = id.into();
    pool.replicas[0].id = format!("{id}-r0");
    pool
}

// covers: ORCH-8011, ORCH-8008, ORCH-8007
#[tokio::test]
async fn the_sdk_raises_each_kind_of_error_and_retries_none_that_cannot_help() {
    let config = Config {
        tenants: vec![TenantConfig {
            weight: 1,
            token_rate_limit: None,
            id: "app".into(),
            role: Role::Client,
            api_key_sha256: vec![orchestratord::runtime::key_hash("sk-test")],
            max_concurrent: None,
            rate_limit: None,
        }],
        pools: vec![
            pool("default", BuiltinFaults::default()),
            pool("open", BuiltinFaults::default()),
            pool(
                "down",
                BuiltinFaults {
                    fail_health: true,
                    ..BuiltinFaults::default()
                },
            ),
            pool(
                "crashy",
                BuiltinFaults {
                    crash_after_tokens: Some(2),
                    ..BuiltinFaults::default()
                },
            ),
        ],
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    // `default` holds one queued task, its capacity: the next is refused.
    server.handle().hold_dispatch("default", true);
    let client = Client::new(server.url()).with_api_key("sk-test");
    client
        .submit(common::task("fills the queue", 1))
        .await
        .unwrap();
    let result = scenario(&server.url(), "errors", "sk-test").await;
    eprintln!("errors the SDK raised: {result}");
    for (kind, code) in [
        ("400", "INVALID_PARAMS"),
        ("401", "UNAUTHORIZED"),
        ("404", "model_not_found"),
        ("409", "CONFLICT"),
        ("429", "ADMISSION_REJECT"),
        ("stream", "WORKER_RESET"),
    ] {
        assert_eq!(result[kind], code, "{kind}");
    }
    assert!(result["503"].is_string());
}

// covers: ORCH-8011, ORCH-8008, ORCH-2003
#[tokio::test]
async fn the_sdks_own_retry_of_a_429_waits_the_servers_hint_not_its_default() {
    let server = TestServer::start(config_with(
        1,
        BuiltinEngineConfig {
            slots: 1,
            tokens_per_s: 20.0,
            ..BuiltinEngineConfig::default()
        },
        |pool| pool.queue.capacity = 1,
    ))
    .await;
    let client = server.client();
    // One task runs for about two seconds, one waits: the queue is full until the
    // first ends and the second starts.
    let running = client
        .submit(TaskRequest {
            task_id: Some("running".into()),
            ..common::task("a long answer", 40)
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the first task runs", async || {
        client
            .status(&running.task_id)
            .await
            .is_ok_and(|s| s.state == TaskState::Running)
    })
    .await;
    client.submit(common::task("waits", 1)).await.unwrap();

    let result = scenario(&server.url(), "retry", "unused").await;
    let attempts = result["attempts"].as_array().unwrap();
    eprintln!("the SDK's attempts: {attempts:?}");
    assert_eq!(attempts[0]["status"], 429);
    let hint_ms: f64 = attempts[0]["retry_after_ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let gap_ms = (attempts[1]["t"].as_f64().unwrap() - attempts[0]["t"].as_f64().unwrap()) * 1e3;
    eprintln!("hint {hint_ms} ms, the SDK waited {gap_ms:.0} ms");
    // The SDK's own first backoff is 0.375-0.5 s: a hint of over a second, waited,
    // is the hint followed.
    assert!(
        hint_ms >= 1_000.0,
        "the hint is long enough to tell apart: {hint_ms}"
    );
    assert!(
        gap_ms >= hint_ms - 20.0 && gap_ms <= hint_ms + 500.0,
        "the SDK waited {gap_ms:.0} ms for a hint of {hint_ms} ms"
    );
    assert_eq!(attempts.last().unwrap()["status"], 200);
}
