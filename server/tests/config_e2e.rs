//! The config file end to end: the examples in `examples/` validate, a file
//! with several errors reports all of them with their paths, the real
//! binary's `--check-config` exits accordingly, a replica set mixing engine
//! versions is refused naming its replicas, and a non-loopback bind without
//! API keys refuses to start, saying how to fix it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use contracts::config::{BuiltinEngineConfig, Config, EngineConfig, PoolConfig, ReplicaConfig};
use orchestratord::config::{self, ConfigIssue};

const BINARY: &str = env!("CARGO_BIN_EXE_orchestratord");

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Run the real binary with `args`, killing it if it outlives `within`.
fn run(args: &[&str], within: Duration) -> (i32, String, String) {
    let mut child = Command::new(BINARY)
        .args(args)
        .env_remove("ORCH_CONFIG")
        .env_remove("ORCH_BIND")
        .env_remove("ORCH_STORE")
        .env("ORCH_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("orchestratord runs");
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("orchestratord {args:?} still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn paths(issues: &[ConfigIssue]) -> Vec<&str> {
    issues.iter().map(|i| i.path.as_str()).collect()
}

// covers: ORCH-7203, ORCH-7204, ORCH-7205
#[test]
fn every_example_config_validates_and_check_config_accepts_it() {
    let files = examples();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["single-machine.yaml", "llamacpp.yaml", "mixed.yaml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "examples/{expected} exists: {names:?}"
        );
    }
    for file in &files {
        let loaded = config::load(file).unwrap_or_else(|e| panic!("{e}"));
        assert!(!loaded.pools.is_empty(), "{}", file.display());
        let (code, stdout, stderr) = run(
            &["--check-config", file.to_str().unwrap()],
            Duration::from_secs(20),
        );
        assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
        assert!(stdout.contains("valid"), "{stdout}");
    }
    let llama =
        config::load(&files[names.iter().position(|n| n == "llamacpp.yaml").unwrap()]).unwrap();
    assert!(
        llama.pools[0]
            .replicas
            .iter()
            .all(|r| matches!(r.engine, EngineConfig::Llamacpp(_))),
        "llamacpp.yaml is a pool of llamacpp replicas"
    );
}

const BROKEN: &str = "\
colour: blue
pools:
  - id: a
    queue:
      capacty: 3
      full_policy: sometimes
    max_tokens_limit: many
    replicas:
      - id: r0
        engine: {kind: builtin, slots: -1, turbo: true}
      - id: r1
        engine: {kind: quantum}
";

// covers: ORCH-7201, ORCH-7203
#[test]
fn a_file_with_several_errors_reports_every_one_with_its_path() {
    let issues = config::check_text(BROKEN).unwrap_err();
    let found = paths(&issues);
    for expected in [
        "colour",
        "pools[0].queue.capacty",
        "pools[0].queue.full_policy",
        "pools[0].max_tokens_limit",
        "pools[0].replicas[0].engine.slots",
        "pools[0].replicas[0].engine.turbo",
        "pools[0].replicas[1].engine.kind",
    ] {
        assert!(found.contains(&expected), "{expected} in {issues:#?}");
    }
    let unknown = issues.iter().find(|i| i.path == "colour").unwrap();
    assert!(unknown.message.contains("unknown field"), "{unknown}");
    let kind = issues
        .iter()
        .find(|i| i.path == "pools[0].replicas[1].engine.kind")
        .unwrap();
    assert!(
        kind.message.contains("builtin"),
        "names the known kinds: {kind}"
    );
    let policy = issues
        .iter()
        .find(|i| i.path == "pools[0].queue.full_policy")
        .unwrap();
    assert!(
        policy.message.contains("drop-lru"),
        "names the policies: {policy}"
    );

    // The binary prints the same list and exits non-zero.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let (code, stdout, stderr) = run(
        &["--check-config", file.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("valid"), "{stdout}");
    for issue in &issues {
        assert!(stderr.contains(&issue.to_string()), "{issue} in:\n{stderr}");
    }
    assert!(
        stderr.contains(&format!("{} error(s)", issues.len())),
        "{stderr}"
    );
}

// covers: ORCH-7201
#[test]
fn check_config_exits_zero_on_a_valid_file_and_non_zero_on_a_missing_or_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let (code, stdout, _) = run(
        &["--check-config", empty.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "an empty file is the default config: {stdout}");

    let missing = dir.path().join("nope.yaml");
    let (code, _, stderr) = run(
        &["--check-config", missing.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("nope.yaml"), "{stderr}");

    let syntax = dir.path().join("syntax.yaml");
    std::fs::write(&syntax, "pools: [\n").unwrap();
    let (code, _, stderr) = run(
        &["--check-config", syntax.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("(yaml)"), "{stderr}");

    // Started with an invalid file, the daemon refuses to start.
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(&invalid, "pools:\n  - id: a\n    queue: {capacty: 3}\n").unwrap();
    let store = dir.path().join("store.db");
    let (code, _, stderr) = run(
        &[
            "--config",
            invalid.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--store",
            store.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("pools[0].queue.capacty"), "{stderr}");
}

fn builtin(id: &str, engine_version: &str) -> ReplicaConfig {
    ReplicaConfig {
        id: id.into(),
        engine: EngineConfig::Builtin(BuiltinEngineConfig {
            engine_version: engine_version.into(),
            ..BuiltinEngineConfig::default()
        }),
    }
}

// covers: ORCH-4003, ORCH-7203
#[tokio::test]
async fn a_pool_mixing_engine_versions_is_refused_naming_both_replicas() {
    let text = "\
pools:
  - id: p
    replicas:
      - id: old-replica
        engine: {kind: builtin, engine_version: builtin-1.0.0}
      - id: new-replica
        engine: {kind: builtin, engine_version: builtin-2.0.0}
";
    let issues = config::check_text(text).unwrap_err();
    let [issue] = issues.as_slice() else {
        panic!("{issues:#?}")
    };
    assert_eq!(issue.path, "pools[0].replicas");
    for needle in [
        "old-replica",
        "new-replica",
        "builtin-1.0.0",
        "builtin-2.0.0",
    ] {
        assert!(issue.message.contains(needle), "{needle} in {issue}");
    }

    // The same set given as a value refuses to start.
    let config = Config {
        pools: vec![PoolConfig {
            id: "p".into(),
            replicas: vec![builtin("old-replica", "v1"), builtin("new-replica", "v2")],
            ..PoolConfig::default()
        }],
        ..Config::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let error = orchestratord::start(config, "127.0.0.1:0", &dir.path().join("s.db"))
        .await
        .err()
        .expect("a mixed replica set does not start")
        .to_string();
    assert!(
        error.contains("old-replica") && error.contains("new-replica"),
        "{error}"
    );
}

// covers: ORCH-6004
#[tokio::test]
async fn binding_beyond_loopback_without_api_keys_refuses_to_start_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let error = orchestratord::start(Config::default(), "0.0.0.0:0", &dir.path().join("s.db"))
        .await
        .err()
        .expect("no keys, no public bind")
        .to_string();
    assert!(error.contains("0.0.0.0"), "{error}");
    assert!(
        error.contains("127.0.0.1"),
        "names the loopback fix: {error}"
    );

    let store = dir.path().join("bin.db");
    let (code, _, stderr) = run(
        &["--bind", "0.0.0.0:0", "--store", store.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
}

/// Valid against the schema, but nothing the server could serve.
const UNSERVABLE: &str = "\
keepalive_ms: 0
sessions: {ttl_ms: 3600000, max_turns: 20}
tenants:
  - {id: ops, api_key_sha256: []}
  - {id: ops, api_key_sha256: [abc]}
  - {id: dev, api_key_sha256: [2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae]}
  - {id: qa, api_key_sha256: [2C26B46B68FFC68FF99B453C1D30413413422D706483BFA0F98A5E886266E7AE]}
pools:
  - id: a
    queue: {batch_starvation_bound: 0}
    timeouts: {wall_ms: 0, idle_ms: 0}
    replicas:
      - {id: r0, engine: {kind: builtin}}
  - id: 'has space'
    health_interval_ms: 500
    health_backoff_cap_ms: 100
    replicas:
      - {id: r1, engine: {kind: builtin}}
";

// covers: ORCH-7206, ORCH-7203
#[test]
fn a_config_the_server_cannot_serve_is_refused_with_every_path() {
    let issues = config::check_text(UNSERVABLE).unwrap_err();
    let found = paths(&issues);
    for expected in [
        "keepalive_ms",
        "sessions.ttl_ms",
        "sessions.max_turns",
        "tenants[0].api_key_sha256",
        "tenants[1].id",
        "tenants[1].api_key_sha256[0]",
        "tenants[3].api_key_sha256[0]",
        "pools[0].queue.batch_starvation_bound",
        "pools[0].timeouts.wall_ms",
        "pools[0].timeouts.idle_ms",
        "pools[1].id",
        "pools[1].health_backoff_cap_ms",
    ] {
        assert!(found.contains(&expected), "{expected} in {issues:#?}");
    }
    let keyless = issues
        .iter()
        .find(|i| i.path == "tenants[0].api_key_sha256")
        .unwrap();
    assert!(keyless.message.contains("has no key"), "{keyless}");
    let shared = issues
        .iter()
        .find(|i| i.path == "tenants[3].api_key_sha256[0]")
        .unwrap();
    assert!(
        shared.message.contains("also a key of tenant \"dev\""),
        "{shared}"
    );

    // The real binary refuses it too, printing every path, before serving anything.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unservable.yaml");
    std::fs::write(&file, UNSERVABLE).unwrap();
    let (code, stdout, stderr) = run(
        &["--check-config", file.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0, "{stdout}{stderr}");
    for expected in [
        "tenants[0].api_key_sha256",
        "sessions.max_turns",
        "pools[1].id",
    ] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
    let (code, _, stderr) = run(
        &["--config", file.to_str().unwrap(), "--bind", "127.0.0.1:0"],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0, "the daemon must not start: {stderr}");
    assert!(stderr.contains("tenants[0].api_key_sha256"), "{stderr}");
}
