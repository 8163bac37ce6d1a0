//! The `tgi` adapter (ORCH-4022) against recorded TGI transcripts served by
//! a small local server, with no TGI to run here: verified against TGI's
//! wire format only. The transcripts (server/tests/fixtures/tgi/) are
//! checked against an independent reference of that format — TGI's own
//! Python client, PyPI `text-generation` — by scripts/llama/check_tgi_wire.py,
//! which talks to the same fake server and also validates every request
//! body the adapter sent.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::{TestServer, eventually, text, tokens};
use contracts::config::{Config, EngineConfig, PoolConfig, ReplicaConfig, TgiEngineConfig};
use contracts::{ErrorCode, FinishReason, StreamEvent, TaskRequest};
use orchestratord::engines::EngineError;
use orchestratord::engines::http::SseParser;
use orchestratord::engines::tgi::parse_event;
use orchestratord::runtime::ReplicaHealth;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tgi")
}

fn transcript(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(format!("stream_{name}.sse")))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

type Mapped = Result<(Option<String>, Option<FinishReason>), EngineError>;

/// What the adapter makes of a transcript, event by event.
fn adapter_events(name: &str) -> Vec<Mapped> {
    let mut parser = SseParser::default();
    let mut events = parser.push(transcript(name).as_bytes());
    events.extend(parser.finish());
    events.iter().map(|e| parse_event(&e.data)).collect()
}

// covers: ORCH-4022
#[test]
fn every_transcript_event_maps_to_a_token_a_finish_or_a_typed_error() {
    let texts = |name| {
        adapter_events(name)
            .into_iter()
            .filter_map(|e| e.unwrap().0)
            .collect::<Vec<_>>()
    };
    assert_eq!(texts("length"), [" The", " queue", " holds", " é", "."]);
    assert_eq!(
        adapter_events("length").last().unwrap().as_ref().unwrap().1,
        Some(FinishReason::Length)
    );
    // The special `</s>` carries no text of the answer.
    assert_eq!(texts("eos"), [" Hello", "!"]);
    assert_eq!(
        adapter_events("eos").last().unwrap().as_ref().unwrap().1,
        Some(FinishReason::Stop)
    );
    let last_error = |name| adapter_events(name).pop().unwrap().unwrap_err();
    assert!(matches!(
        last_error("validation_error"),
        EngineError::InvalidRequest(_)
    ));
    assert!(matches!(
        last_error("generation_error"),
        EngineError::Lost(_)
    ));
    assert!(matches!(last_error("overloaded"), EngineError::Refused(_)));
}

/// A fake TGI: `/health`, `/info`, `/tokenize`, and `/generate_stream` (and
/// `/` with `stream: true`, as TGI's client calls it) answering with the
/// transcript the prompt names, always HTTP 200 like TGI. Records bodies.
#[derive(Clone, Default)]
struct FakeTgi {
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn generate_stream(
    State(fake): State<FakeTgi>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let prompt = body["inputs"].as_str().unwrap_or_default().to_owned();
    fake.bodies.lock().unwrap().push(body);
    let name = ["length", "eos", "validation", "generation", "overloaded"]
        .into_iter()
        .find(|name| prompt.starts_with(name))
        .unwrap_or("length");
    let file = match name {
        "validation" => "validation_error",
        "generation" => "generation_error",
        other => other,
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        transcript(file),
    )
}

async fn start_fake_tgi() -> (String, FakeTgi) {
    start_fake_tgi_reporting("2.4.1").await
}

/// A fake TGI whose `/info` reports `version` (the recorded one is 2.4.1).
async fn start_fake_tgi_reporting(version: &'static str) -> (String, FakeTgi) {
    let fake = FakeTgi::default();
    let app = axum::Router::new()
        .route("/health", get(|| async { "" }))
        .route(
            "/info",
            get(move || async move {
                let info = std::fs::read_to_string(fixtures().join("info.json"))
                    .unwrap()
                    .replace(
                        "\"version\":\"2.4.1\"",
                        &format!("\"version\":\"{version}\""),
                    );
                ([(header::CONTENT_TYPE, "application/json")], info)
            }),
        )
        .route(
            "/tokenize",
            post(|Json(body): Json<Value>| async move {
                let words = body["inputs"]
                    .as_str()
                    .unwrap_or_default()
                    .split_whitespace();
                let tokens: Vec<_> = words
                    .enumerate()
                    .map(|(i, w)| json!({"id": i, "text": w, "start": 0, "stop": 0}))
                    .collect();
                Json(Value::Array(tokens))
            }),
        )
        .route("/generate_stream", post(generate_stream))
        .route("/", post(generate_stream))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, fake)
}

fn task(prompt: &str) -> TaskRequest {
    TaskRequest {
        prompt: prompt.into(),
        max_tokens: 5,
        seed: Some(42),
        ..TaskRequest::default()
    }
}

/// A config with one pool whose replicas `r0`, `r1`, … are TGI engines at `urls`.
fn tgi_pool(urls: &[&str]) -> Config {
    let pool = PoolConfig {
        id: "default".into(),
        health_interval_ms: 50,
        metrics_interval_ms: 0,
        replicas: urls
            .iter()
            .enumerate()
            .map(|(i, url)| ReplicaConfig {
                id: format!("r{i}"),
                engine: EngineConfig::Tgi(TgiEngineConfig::new(*url)),
            })
            .collect(),
        ..PoolConfig::default()
    };
    Config {
        pools: vec![pool],
        ..Config::default()
    }
}

/// A server whose one replica is the TGI at `url`, once that replica is Ready.
async fn serving_tgi(url: &str) -> TestServer {
    let server = TestServer::start(tgi_pool(&[url])).await;
    let handle = server.handle();
    let ready = async || handle.replica_health("default", "r0") == ReplicaHealth::Ready;
    eventually(Duration::from_secs(5), "the TGI replica is Ready", ready).await;
    server
}

fn last(events: &[StreamEvent]) -> &StreamEvent {
    events.last().expect("events")
}

// covers: ORCH-4022, ORCH-4025
#[tokio::test]
async fn the_tgi_adapter_streams_a_transcript_end_to_end_and_maps_its_error_events() {
    let (url, fake) = start_fake_tgi().await;
    let server = serving_tgi(&url).await;
    let client = server.client();

    let run = async |prompt: &str| {
        let admitted = client.submit(task(prompt)).await.unwrap();
        client.collect(&admitted.task_id).await.unwrap()
    };
    let events = run("length: tell me").await;
    match &events[0] {
        StreamEvent::Started(s) => {
            assert_eq!(s.engine, "tgi");
            assert_eq!(s.engine_version, "2.4.1", "from /info");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(text(&events), " The queue holds é.");
    assert_eq!(tokens(&events).len(), 5);
    assert!(
        matches!(last(&events), StreamEvent::End(e) if e.finish_reason == FinishReason::Length)
    );

    let events = run("eos: greet").await;
    assert_eq!(text(&events), " Hello!");
    assert!(matches!(last(&events), StreamEvent::End(e) if e.finish_reason == FinishReason::Stop));

    // TGI's HTTP 200 with a validation error event: the task's stream ends
    // with INVALID_PARAMS.
    let events = run("validation: too long").await;
    assert!(
        matches!(last(&events), StreamEvent::Error(e) if e.code == ErrorCode::InvalidParams),
        "{events:?}"
    );

    // A generation error after two tokens: WORKER_RESET.
    let events = run("generation: fail midway").await;
    assert_eq!(tokens(&events).len(), 2);
    assert!(
        matches!(last(&events), StreamEvent::Error(e) if e.code == ErrorCode::WorkerReset),
        "{events:?}"
    );

    // The bodies the adapter sent are TGI requests: parameters mapped.
    let bodies = fake.bodies.lock().unwrap().clone();
    let params = &bodies[0]["parameters"];
    assert_eq!(params["max_new_tokens"], 5);
    assert_eq!(params["seed"], 42);
    assert_eq!(params["details"], true);
    assert!(
        params.get("top_p").is_none(),
        "top_p 1.0 is left out (TGI needs it inside (0, 1))"
    );

    // The independent reference: TGI's own Python client.
    check_with_tgi_client(&url, &bodies).await;
}

fn python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("ORCH_LLAMA_PYTHON") {
        return Some(PathBuf::from(python));
    }
    let cache = match std::env::var_os("ORCH_LLAMA_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/orchqueue/llama"),
    };
    let venv = cache.join("venv/bin/python");
    venv.is_file().then_some(venv)
}

async fn check_with_tgi_client(url: &str, bodies: &[Value]) {
    let Some(python) = python() else {
        let message = "no Python with PyPI `text-generation` (run `bash scripts/llama/setup.sh` \
                       or set ORCH_LLAMA_PYTHON)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and the TGI wire check cannot run: {message}");
        }
        eprintln!("\n!!! SKIPPING the TGI wire-format check: {message}\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bodies_file = dir.path().join("bodies.json");
    std::fs::write(&bodies_file, serde_json::to_vec(bodies).unwrap()).unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama/check_tgi_wire.py");
    let url = url.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .arg(&url)
            .arg(&bodies_file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "TGI's own client rejects the transcript or the adapter's requests:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("tgi wire check passed"), "{stdout}");
}

// covers: ORCH-4026, ORCH-4003
#[tokio::test]
async fn a_replica_whose_engine_reports_another_version_than_the_pin_stays_out() {
    let (url, _fake) = start_fake_tgi().await;
    let replica = |id: &str, pin: &str| ReplicaConfig {
        id: id.into(),
        engine: EngineConfig::Tgi(TgiEngineConfig {
            engine_version: Some(pin.into()),
            slots: Some(3),
            ..TgiEngineConfig::new(&url)
        }),
    };
    let pool = PoolConfig {
        id: "default".into(),
        health_interval_ms: 50,
        replicas: vec![replica("r0", "2.4.1"), replica("r1", "2.4.1")],
        ..PoolConfig::default()
    };
    let mut config = Config {
        pools: vec![pool],
        ..Config::default()
    };
    let server = TestServer::start(config.clone()).await;
    let handle = server.handle();
    let ready = async || handle.replica_health("default", "r0") == ReplicaHealth::Ready;
    eventually(Duration::from_secs(5), "the pinned version matches", ready).await;
    let events = {
        let client = server.client();
        let admitted = client.submit(task("length: pinned")).await.unwrap();
        client.collect(&admitted.task_id).await.unwrap()
    };
    assert!(matches!(last(&events), StreamEvent::End(_)), "{events:?}");

    // A config pinning another version than TGI's /info reports: the
    // replica never becomes Ready.
    config.pools[0].replicas = vec![replica("r0", "9.9.9"), replica("r1", "9.9.9")];
    let server = TestServer::start(config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.handle().replica_health("default", "r0"),
        ReplicaHealth::Down
    );
}

// TGI serves the model it was started with (`--model-id`): a reload to it
// re-probes, a reload to another is refused at once naming what it serves.
// covers: ORCH-6023, ORCH-4022
#[tokio::test]
async fn a_tgi_reload_accepts_only_the_model_tgi_reports() {
    let (url, _fake) = start_fake_tgi().await;
    let server = serving_tgi(&url).await;
    let client = server.client();
    let served = client.pool_health("default").await.unwrap().replicas[0]
        .model_ref
        .clone();
    let reload = |model_ref: &str| contracts::ReloadRequest {
        model_ref: model_ref.into(),
        ready_timeout_ms: Some(30_000),
    };
    let again = client
        .reload_pool("default", &reload(&served))
        .await
        .unwrap();
    assert_eq!(again.model_ref, served);
    let refused = client
        .reload_pool("default", &reload("another/model"))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(400));
    let message = refused.envelope().unwrap().message.clone();
    assert!(
        message.contains(&format!("r0 serves {served:?}")) && message.contains("TGI --model-id"),
        "{message}"
    );
}

// Two unpinned replicas of one set whose engines report different builds: the
// first one Ready fixes the set, the other stays out saying why, and every task
// runs on the first.
// covers: ORCH-4003, ORCH-4026
#[tokio::test]
async fn unpinned_replicas_reporting_different_builds_are_not_both_admitted() {
    let (old, _old_fake) = start_fake_tgi_reporting("2.4.1").await;
    let (new, _new_fake) = start_fake_tgi_reporting("3.0.0").await;
    let server = TestServer::start(tgi_pool(&[&old, &new])).await;
    let handle = server.handle();
    let one_ready = async || {
        [
            handle.replica_health("default", "r0"),
            handle.replica_health("default", "r1"),
        ]
        .iter()
        .filter(|h| **h == ReplicaHealth::Ready)
        .count()
            == 1
    };
    eventually(
        Duration::from_secs(5),
        "exactly one replica Ready",
        one_ready,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(one_ready().await, "the other stays out, probe after probe");
    let client = server.client();
    let health = client.pool_health("default").await.unwrap();
    let ready = health
        .replicas
        .iter()
        .find(|r| r.state == contracts::control::ReplicaState::Ready)
        .unwrap();
    let out = health
        .replicas
        .iter()
        .find(|r| r.replica_id != ready.replica_id)
        .unwrap();
    let why = out.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("2.4.1") && why.contains("3.0.0") && why.contains("must not mix"),
        "{why}"
    );
    for n in 0..4 {
        let admitted = client.submit(task(&format!("length: {n}"))).await.unwrap();
        let events = client.collect(&admitted.task_id).await.unwrap();
        let StreamEvent::Started(started) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(started.replica_id, ready.replica_id);
    }
}
