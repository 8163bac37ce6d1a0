//! The end-to-end fixture: the real daemon in-process on an ephemeral port
//! with a temp SQLite store, and real `orchctl` clients, each bound to a
//! fresh scope so tests sharing a server never see each other's tasks.
//!
//! Two ways to get a server (BRIEF §7):
//! - [`shared_client`]: tests that only submit and read share one server per
//!   test binary (per process: under `cargo nextest` that is one per test,
//!   started in milliseconds), each with a client bound to a fresh scope that
//!   is purged when the client is dropped;
//! - [`TestServer::start`]: tests that change pool-wide state (drain, reload,
//!   faults, a held or full queue, timeouts) get a server of their own.

#![allow(dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use contracts::config::{BuiltinEngineConfig, Config, EngineConfig, PoolConfig, ReplicaConfig};
use contracts::{StreamEvent, TaskRequest, TokenEvent};
use orchctl::Client;
use orchestratord::store::StoreLocation;
use orchestratord::{RunningServer, TestHandle};
use tempfile::TempDir;

pub struct TestServer {
    pub server: RunningServer,
    pub dir: TempDir,
    /// Every request of the test goes through it and every answer is
    /// checked against contracts/openapi (ORCH-9020).
    proxy: conformance::Proxy,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StoreLocation::Sqlite(dir.path().join("store.db"));
        Self::start_on(config, dir, store).await
    }

    /// A server on a fresh database of the test PostgreSQL cluster (ORCH-7006).
    pub async fn start_on_postgres(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StoreLocation::Postgres(fresh_postgres_database().await);
        Self::start_on(config, dir, store).await
    }

    /// A daemon on the PostgreSQL database `url`, which others may share (ORCH-7012).
    pub async fn start_on_database(config: Config, url: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_on(config, dir, StoreLocation::Postgres(url.to_owned())).await
    }

    async fn start_on(config: Config, dir: TempDir, store: StoreLocation) -> Self {
        let server = orchestratord::start(config, "127.0.0.1:0", store)
            .await
            .expect("server starts");
        let proxy = conformance::Proxy::start(&server.url(), conformance::committed_documents())
            .await
            .expect("conformance proxy starts")
            .asserting_on_drop();
        Self { server, dir, proxy }
    }

    pub async fn default() -> Self {
        Self::start(Config::default()).await
    }

    /// The server's address, behind the conformance proxy.
    pub fn url(&self) -> String {
        self.proxy.url()
    }

    /// A client in a scope of its own.
    pub fn client(&self) -> Client {
        Client::new(self.url()).with_scope(unique_scope())
    }

    pub fn handle(&self) -> TestHandle {
        self.server.test_handle()
    }
}

/// The prompts a builtin engine's journal recorded, in the order it
/// generated them.
pub fn journal(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).expect("a journal line");
            entry["prompt"].as_str().expect("prompt").to_owned()
        })
        .collect()
}

pub fn unique_scope() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// One pool `default` of `replicas` builtin replicas shaped by `engine`.
pub fn config_with(
    replicas: usize,
    engine: BuiltinEngineConfig,
    pool: impl FnOnce(&mut PoolConfig),
) -> Config {
    let mut pool_config = PoolConfig {
        id: "default".into(),
        replicas: (0..replicas)
            .map(|i| ReplicaConfig {
                id: format!("r{i}"),
                engine: EngineConfig::Builtin(engine.clone()),
            })
            .collect(),
        ..PoolConfig::default()
    };
    pool(&mut pool_config);
    Config {
        pools: vec![pool_config],
        ..Config::default()
    }
}

pub fn task(prompt: &str, max_tokens: u32) -> TaskRequest {
    TaskRequest {
        prompt: prompt.into(),
        max_tokens,
        ..TaskRequest::default()
    }
}

pub fn tokens(events: &[StreamEvent]) -> Vec<TokenEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Token(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

pub fn text(events: &[StreamEvent]) -> String {
    tokens(events).into_iter().map(|t| t.t).collect()
}

/// Poll `check` until it holds, failing the test after `within`.
pub async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

/// The server shared by every test of this binary. It runs on a runtime of its
/// own in a background thread, so it outlives each `#[tokio::test]` runtime.
struct Shared {
    /// The conformance proxy's address in front of the shared server.
    url: String,
    runtime: tokio::runtime::Handle,
    proxy: conformance::Proxy,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shared-orchestratord".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("shared runtime");
                let dir = shared_store_dir();
                let server = runtime
                    .block_on(orchestratord::start(
                        Config::default(),
                        "127.0.0.1:0",
                        &dir.join("store.db"),
                    ))
                    .expect("shared server starts");
                let proxy = runtime
                    .block_on(conformance::Proxy::start(
                        &server.url(),
                        conformance::committed_documents(),
                    ))
                    .expect("conformance proxy starts");
                ready
                    .send(Shared {
                        url: proxy.url(),
                        runtime: runtime.handle().clone(),
                        proxy,
                    })
                    .expect("test thread waits");
                // Serve until the process exits; the server is never dropped.
                runtime.block_on(std::future::pending::<()>());
                drop(server);
            })
            .expect("spawn the shared server thread");
        started.recv().expect("the shared server started")
    })
}

/// The shared server's store lives under `$TMPDIR/orchqueue-shared/<pid>`.
/// The process exits without running destructors, so each start removes the
/// directories of processes that are gone.
fn shared_store_dir() -> PathBuf {
    let root = std::env::temp_dir().join("orchqueue-shared");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
            let gone = pid.is_some_and(|pid| {
                cfg!(target_os = "linux") && !PathBuf::from(format!("/proc/{pid}")).exists()
            });
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).expect("shared store dir");
    dir
}

/// The shared server's base URL (for raw HTTP; pass your scope explicitly).
pub fn shared_url() -> String {
    shared().url.clone()
}

/// A client of the shared server bound to a fresh scope; the scope (its
/// tasks, running ones canceled, and its sessions) is purged on drop.
pub fn shared_client() -> ScopedClient {
    let shared = shared();
    ScopedClient {
        client: Client::new(shared.url.clone()).with_scope(unique_scope()),
    }
}

pub struct ScopedClient {
    client: Client,
}

impl ScopedClient {
    pub fn scope_name(&self) -> &str {
        self.client.scope().expect("a scoped client")
    }

    /// Another client of the same server in another fresh scope.
    pub fn stranger(&self) -> ScopedClient {
        shared_client()
    }
}

impl Deref for ScopedClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for ScopedClient {
    fn drop(&mut self) {
        let shared = shared();
        let purge = Client::new(shared.url.clone());
        let scope = self.scope_name().to_owned();
        let (done, wait) = std::sync::mpsc::channel();
        // The purge runs on the shared runtime: the test's own runtime may
        // be shutting down (or unwinding from a panic) right now.
        shared.runtime.spawn(async move {
            let result = purge.purge_scope(Some(&scope)).await;
            let _ = done.send(result.map(|_| ()));
        });
        match wait.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) if !std::thread::panicking() => {
                panic!("purging scope {}: {error}", self.scope_name())
            }
            _ => {}
        }
        if !std::thread::panicking() {
            shared.proxy.assert_conformant();
        }
    }
}

/// The Python of the venv with the official `openai` SDK: `ORCH_OPENAI_PYTHON`,
/// else where `scripts/tools/setup.sh` puts it.
pub fn openai_python() -> PathBuf {
    let python = std::env::var_os("ORCH_OPENAI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/orchqueue/tools/openai-venv/bin/python")
        });
    assert!(
        python.is_file(),
        "{} is missing: run `bash scripts/tools/setup.sh` (it installs the openai SDK) or set ORCH_OPENAI_PYTHON",
        python.display()
    );
    python
}

/// The fenced block after `<!-- snippet: NAME -->` in the README, verbatim.
pub fn readme_snippet(name: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let marker = format!("<!-- snippet: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let block = after
        .split_once("```")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("no fenced block after {marker}"))
        .0;
    block.to_owned()
}

/// Run a README snippet (`python` or `sh`) with the SDK's environment pointed at
/// `url`; its standard output.
pub async fn run_snippet(name: &str, url: &str) -> String {
    let snippet = readme_snippet(name);
    let mut command = if snippet.contains("from openai import") {
        let mut python = tokio::process::Command::new(openai_python());
        python.arg("-c").arg(&snippet);
        python
    } else {
        let mut sh = tokio::process::Command::new("bash");
        sh.arg("-euo").arg("pipefail").arg("-c").arg(&snippet);
        sh
    };
    let output = command
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .env("OPENAI_API_KEY", "unused")
        .output()
        .await
        .expect("the snippet runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "README snippet {name} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The throwaway PostgreSQL cluster of `scripts/postgres/setup.sh`:
/// `ORCH_TEST_POSTGRES_URL`, else the URL the script wrote. A test without it fails
/// naming the setup: returning early would pass without proving anything (ORCH-9019).
pub fn postgres_url() -> String {
    if let Some(url) = std::env::var_os("ORCH_TEST_POSTGRES_URL") {
        return url.to_string_lossy().into_owned();
    }
    let dir = std::env::var_os("ORCH_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("orchqueue-postgres"));
    match std::fs::read_to_string(dir.join("url")) {
        Ok(url) => url.trim().to_owned(),
        Err(_) => panic!(
            "no PostgreSQL for the suite: run `bash scripts/postgres/setup.sh` (it starts a \
             throwaway cluster on loopback) or set ORCH_TEST_POSTGRES_URL"
        ),
    }
}

/// A connected client of `url`; its connection runs on the caller's runtime.
pub async fn postgres_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// A new, empty database of the test cluster, for one test: its URL.
pub async fn fresh_postgres_database() -> String {
    let admin = postgres_url();
    orchestratord::store::PostgresStore::create_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("a fresh database on {admin}: {e}"))
}
