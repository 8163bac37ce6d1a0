//! The end-to-end fixture: the real daemon in-process on an ephemeral port
//! with a temp SQLite store, and real `orchctl` clients, each bound to a
//! fresh scope so tests sharing a server never see each other's tasks.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use contracts::config::{BuiltinEngineConfig, Config, EngineConfig, PoolConfig, ReplicaConfig};
use contracts::{StreamEvent, TaskRequest, TokenEvent};
use orchctl::Client;
use orchestratord::{RunningServer, TestHandle};
use tempfile::TempDir;

pub struct TestServer {
    pub server: RunningServer,
    pub dir: TempDir,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = orchestratord::start(config, "127.0.0.1:0", &dir.path().join("store.db"))
            .await
            .expect("server starts");
        Self { server, dir }
    }

    pub async fn default() -> Self {
        Self::start(Config::default()).await
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A client in a scope of its own.
    pub fn client(&self) -> Client {
        Client::new(self.url()).with_scope(unique_scope())
    }

    pub fn handle(&self) -> TestHandle {
        self.server.test_handle()
    }
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
