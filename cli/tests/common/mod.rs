//! The CLI's end-to-end fixture: the real daemon in-process on an ephemeral
//! port with a temp SQLite store (as in `server/tests/common`), and the real
//! `orchctl` binary run against it in a scope of its own.

#![allow(dead_code)]

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use orchctl::contracts::config::{
    BuiltinEngineConfig, Config, EngineConfig, PoolConfig, ReplicaConfig,
};
use orchestratord::{RunningServer, TestHandle};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

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
        let server = orchestratord::start(config, "127.0.0.1:0", &dir.path().join("store.db"))
            .await
            .expect("server starts");
        let proxy = conformance::Proxy::start(&server.url(), conformance::committed_documents())
            .await
            .expect("conformance proxy starts")
            .asserting_on_drop();
        Self { server, dir, proxy }
    }

    /// One fast replica and no `metrics` events, so the output of a run
    /// depends only on its inputs (timings aside).
    pub async fn quiet() -> Self {
        Self::start(quiet_config(|_| {})).await
    }

    /// The server's address, behind the conformance proxy.
    pub fn url(&self) -> String {
        self.proxy.url()
    }

    pub fn handle(&self) -> TestHandle {
        self.server.test_handle()
    }

    /// `orchctl` against this server, in a scope of its own.
    pub fn orchctl(&self) -> Orchctl {
        Orchctl {
            url: self.url(),
            scope: Some(unique_scope()),
            api_key: None,
        }
    }
}

/// Scopes look like `cli-<pid>-<n>`; the snapshot filters replace them.
pub fn unique_scope() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "cli-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// One pool `default` with one fast builtin replica `r0`, metrics off.
pub fn quiet_config(pool: impl FnOnce(&mut PoolConfig)) -> Config {
    let engine = BuiltinEngineConfig {
        tokens_per_s: 1_000.0,
        ttft_ms: 5,
        ..BuiltinEngineConfig::default()
    };
    let mut pool_config = PoolConfig {
        id: "default".into(),
        metrics_interval_ms: 0,
        replicas: vec![ReplicaConfig {
            id: "r0".into(),
            engine: EngineConfig::Builtin(engine),
        }],
        ..PoolConfig::default()
    };
    pool(&mut pool_config);
    Config {
        pools: vec![pool_config],
        ..Config::default()
    }
}

/// The `orchctl` binary with `--url`, `--scope` and `--api-key` set.
#[derive(Clone)]
pub struct Orchctl {
    pub url: String,
    pub scope: Option<String>,
    pub api_key: Option<String>,
}

/// One finished run of `orchctl`.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The run as a reviewer reads it: command, exit code, stdout, stderr.
    pub fn transcript(&self) -> String {
        format!(
            "$ orchctl {}\n[exit {}]\n--- stdout\n{}--- stderr\n{}",
            self.args
                .iter()
                .map(|arg| if arg.contains(' ') || arg.is_empty() {
                    format!("'{arg}'")
                } else {
                    arg.clone()
                })
                .collect::<Vec<_>>()
                .join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// stdout's lines parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
            .collect()
    }

    #[track_caller]
    pub fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "{}", self.transcript());
        self
    }
}

impl Orchctl {
    /// `orchctl` against `url` with no scope and no key.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            scope: None,
            api_key: None,
        }
    }

    pub fn in_scope(&self, scope: Option<&str>) -> Self {
        Self {
            scope: scope.map(str::to_owned),
            ..self.clone()
        }
    }

    /// The same, passing `--api-key key`.
    pub fn with_api_key(&self, key: Option<&str>) -> Self {
        Self {
            api_key: key.map(str::to_owned),
            ..self.clone()
        }
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None).await
    }

    pub async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchctl"));
        command.arg("--url").arg(&self.url);
        if let Some(scope) = &self.scope {
            command.arg("--scope").arg(scope);
        }
        if let Some(key) = &self.api_key {
            command.arg("--api-key").arg(key);
        }
        command
            .args(args)
            .env_remove("ORCH_URL")
            .env_remove("ORCH_API_KEY")
            .env_remove("ORCH_SCOPE")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("orchctl starts");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("orchctl {args:?} did not finish within 60 s"))
            .expect("orchctl runs");
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: output.status.code().expect("orchctl exits normally"),
            stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
        }
    }
}

/// Replace what varies from run to run: scopes, ids, ports and timings.
pub fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"cli-\d+-\d+", "[SCOPE]"),
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[UUID]",
        ),
        (r"\bt-[0-9a-f]{32}\b", "[TASK_ID]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"\b\d+ ms\b", "[N] ms"),
        (r"\b\d+(\.\d+)? tok/s", "[RATE] tok/s"),
        (
            r#""(queue_time_ms|predicted_start_ms|decode_ms|elapsed_ms|backoff_ms|retry_after_ms|submitted_at_ms|started_at_ms|finished_at_ms|tokens_per_s|ttl_ms_remaining|ttft_p50_ms|ttft_p99_ms)":[0-9.]+"#,
            r#""$1":"[N]""#,
        ),
    ]
}

/// Assert a snapshot of `value` with [`filters`] applied.
#[macro_export]
macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({ filters => $crate::common::filters() }, {
            insta::assert_snapshot!($name, $value);
        });
    };
}
