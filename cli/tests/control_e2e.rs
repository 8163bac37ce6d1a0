//! `orchctl` end to end for sessions, scope purge and the control plane:
//! the real binary against the real daemon started in-process. Snapshots
//! (insta, under `cli/tests/snapshots/`) keep the human and `--json` output
//! reviewed; ids, scopes, ports and timings are filtered.

mod common;

use common::{Orchctl, Run, TestServer, quiet_config};
use orchctl::contracts::config::{Role, TenantConfig};
use orchctl::contracts::{PoolHealth, SessionInfo};

const PROMPT: &str = "the quick brown fox";

/// `submit` of a small seeded task, optionally followed to its end.
async fn submit(orchctl: &Orchctl, task_id: &str, extra: &[&str]) -> Run {
    let args = [
        &[
            "submit",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "4",
            "--seed",
            "7",
            "--task-id",
            task_id,
        ][..],
        extra,
    ]
    .concat();
    orchctl.run(&args).await
}

/// Several runs as one reviewed transcript.
fn transcripts(runs: &[&Run]) -> String {
    runs.iter().map(|run| run.transcript()).collect()
}

// covers: ORCH-5010, ORCH-5013, ORCH-5014
#[tokio::test]
async fn session_get_shows_the_turns_and_rm_ends_the_session() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    for (id, flag) in [("turn-1", "--session"), ("turn-2", "--session-id")] {
        submit(&orchctl, id, &[flag, "chat-1", "--follow"])
            .await
            .assert_exit(0);
    }

    let get = orchctl.run(&["session", "get", "chat-1"]).await;
    get.assert_exit(0);
    assert!(get.stdout.contains("turns:    2\n"), "{}", get.transcript());
    assert!(
        get.stdout.contains("replica:  r0\n"),
        "{}",
        get.transcript()
    );
    snapshot!("session_get", get.transcript());

    let json = orchctl.run(&["--json", "session", "get", "chat-1"]).await;
    json.assert_exit(0);
    assert_eq!(json.stderr, "");
    let info: SessionInfo = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!((info.session_id.as_str(), info.turns), ("chat-1", 2));
    assert!(info.kv_warmth && info.kv_bytes > 0, "{info:?}");
    snapshot!("session_get_json", json.transcript());

    // Another scope does not see the session.
    orchctl
        .in_scope(Some("cli-elsewhere"))
        .run(&["session", "get", "chat-1"])
        .await
        .assert_exit(4);

    let rm = orchctl.run(&["session", "rm", "chat-1"]).await;
    rm.assert_exit(0);
    assert_eq!(rm.stdout, "ended session chat-1\n");
    let gone = orchctl.run(&["session", "get", "chat-1"]).await;
    gone.assert_exit(4);
    assert!(
        gone.stderr
            .contains("hint: check the session id and --scope"),
        "{}",
        gone.transcript()
    );
    let again = orchctl.run(&["session", "rm", "chat-1"]).await;
    again.assert_exit(4);
    snapshot!("session_rm", transcripts(&[&rm, &gone, &again]));

    submit(&orchctl, "turn-3", &["--session", "chat-2", "--follow"])
        .await
        .assert_exit(0);
    let rm_json = orchctl.run(&["--json", "session", "rm", "chat-2"]).await;
    rm_json.assert_exit(0);
    assert_eq!(
        rm_json.stdout,
        "{\"session_id\":\"chat-2\",\"ended\":true}\n"
    );
    let gone_json = orchctl.run(&["--json", "session", "get", "chat-2"]).await;
    gone_json.assert_exit(4);
    let body: serde_json::Value = serde_json::from_str(gone_json.stderr.trim()).unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    // A session id that would change the URL never leaves the client.
    orchctl.run(&["session", "get", "a?b"]).await.assert_exit(2);
    submit(&orchctl, "bad-session", &["--session", ".."])
        .await
        .assert_exit(2);
}

// covers: ORCH-6013, ORCH-6010
#[tokio::test]
async fn scope_purge_cancels_and_deletes_everything_in_the_scope() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    submit(&orchctl, "done", &["--follow"]).await.assert_exit(0);
    server.handle().hold_dispatch("default", true);
    submit(&orchctl, "waiting-1", &["--session", "s-1"])
        .await
        .assert_exit(0);
    submit(&orchctl, "waiting-2", &[]).await.assert_exit(0);
    // Another scope keeps its task.
    let other = orchctl.in_scope(Some(&common::unique_scope()));
    submit(&other, "kept", &[]).await.assert_exit(0);

    // Without an argument, the --scope of the call is purged.
    let purge = orchctl.run(&["scope", "purge"]).await;
    purge.assert_exit(0);
    assert!(
        purge
            .stdout
            .ends_with(": tasks canceled 2, tasks deleted 3, sessions deleted 1\n"),
        "{}",
        purge.transcript()
    );
    snapshot!("scope_purge", purge.transcript());

    for args in [
        &["status", "waiting-1"][..],
        &["status", "done"],
        &["session", "get", "s-1"],
    ] {
        orchctl.run(args).await.assert_exit(4);
    }
    let ls = orchctl.run(&["ls"]).await;
    ls.assert_exit(0);
    assert_eq!(ls.stdout, "");
    other.run(&["status", "kept"]).await.assert_exit(0);

    // Named explicitly, with --json: the answer's body. Nothing is left.
    let scope = orchctl.scope.clone().unwrap();
    let json = Orchctl::at(server.url())
        .run(&["--json", "scope", "purge", &scope])
        .await;
    json.assert_exit(0);
    let body = &json.json_lines()[0];
    assert_eq!(body["scope"], scope.as_str());
    assert_eq!(body["tasks_purged"], 0);
    snapshot!("scope_purge_json", json.transcript());

    // No scope at all is a usage error, found before any call.
    let none = Orchctl::at(server.url()).run(&["scope", "purge"]).await;
    none.assert_exit(2);
    assert!(
        none.stderr.starts_with("error: no scope to purge"),
        "{}",
        none.transcript()
    );
    server.handle().hold_dispatch("default", false);
    other.run(&["stream", "kept"]).await.assert_exit(0);
}

// covers: ORCH-6020, ORCH-6021, ORCH-6024, ORCH-6025
#[tokio::test]
async fn pools_health_replicasets_and_capabilities_describe_the_server() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    submit(&orchctl, "warm-up", &["--follow"])
        .await
        .assert_exit(0);

    let pools = orchctl.run(&["pools"]).await;
    pools.assert_exit(0);
    assert!(pools.stdout.starts_with("POOL "), "{}", pools.transcript());
    let pools_json = orchctl.run(&["--json", "pools"]).await;
    pools_json.assert_exit(0);
    assert_eq!(pools_json.json_lines()[0]["pools"][0]["pool_id"], "default");
    snapshot!("pools", transcripts(&[&pools, &pools_json]));

    let health = orchctl.run(&["pool", "health", "default"]).await;
    health.assert_exit(0);
    assert!(
        health
            .stdout
            .starts_with("pool default: live, ready, queue 0\n"),
        "{}",
        health.transcript()
    );
    let health_json = orchctl.run(&["--json", "pool", "health", "default"]).await;
    health_json.assert_exit(0);
    let body: PoolHealth = serde_json::from_str(health_json.stdout.trim()).unwrap();
    assert!(body.live && body.ready && !body.draining);
    snapshot!("pool_health", transcripts(&[&health, &health_json]));

    let unknown = orchctl.run(&["pool", "health", "nope"]).await;
    unknown.assert_exit(4);
    assert!(
        unknown.stderr.contains("`orchctl pools` lists the pools"),
        "{}",
        unknown.transcript()
    );
    snapshot!("pool_unknown", unknown.transcript());

    let sets = orchctl.run(&["replicasets"]).await;
    sets.assert_exit(0);
    assert!(
        sets.stdout.contains("  slo       1 completed, ttft p50 "),
        "{}",
        sets.transcript()
    );
    let sets_json = orchctl.run(&["--json", "replicasets"]).await;
    sets_json.assert_exit(0);
    assert_eq!(
        sets_json.json_lines()[0]["replica_sets"][0]["slo"]["completed"],
        1
    );
    snapshot!("replicasets", transcripts(&[&sets, &sets_json]));

    let capabilities = orchctl.run(&["capabilities"]).await;
    capabilities.assert_exit(0);
    let capabilities_json = orchctl.run(&["--json", "capabilities"]).await;
    capabilities_json.assert_exit(0);
    let body = &capabilities_json.json_lines()[0];
    assert!(
        body["features"]
            .as_array()
            .unwrap()
            .contains(&"sessions".into())
    );
    snapshot!(
        "capabilities",
        transcripts(&[&capabilities, &capabilities_json])
    );
}

// covers: ORCH-6022, ORCH-2014, ORCH-6023
#[tokio::test]
async fn a_drained_pool_refuses_submissions_with_exit_3_until_a_reload() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    let drain = orchctl
        .run(&["pool", "drain", "default", "--deadline-ms", "60000"])
        .await;
    drain.assert_exit(0);
    assert!(
        drain.stdout.starts_with("pool default is draining"),
        "{}",
        drain.transcript()
    );
    let drain_json = orchctl
        .run(&[
            "--json",
            "pool",
            "drain",
            "default",
            "--deadline-ms",
            "60000",
        ])
        .await;
    drain_json.assert_exit(0);
    assert_eq!(drain_json.json_lines()[0]["draining"], true);
    snapshot!("pool_drain", transcripts(&[&drain, &drain_json]));

    let refused = submit(&orchctl, "late", &[]).await;
    refused.assert_exit(3);
    assert!(
        refused.stderr.starts_with("error: POOL_UNAVAILABLE: "),
        "{}",
        refused.transcript()
    );
    snapshot!("submit_draining", refused.transcript());
    let refused_json = submit(&orchctl, "late", &["--json"]).await;
    refused_json.assert_exit(3);
    let body: serde_json::Value = serde_json::from_str(refused_json.stderr.trim()).unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(body["error"]["code"], "POOL_UNAVAILABLE");

    let health = orchctl.run(&["pool", "health", "default"]).await;
    health.assert_exit(0);
    assert!(
        health
            .stdout
            .starts_with("pool default: live, not ready, draining, queue 0\n"),
        "{}",
        health.transcript()
    );
    let pools = orchctl.run(&["pools"]).await;
    assert!(pools.stdout.contains("draining"), "{}", pools.transcript());

    // A successful reload reopens the pool.
    let reload = orchctl
        .run(&[
            "pool",
            "reload",
            "default",
            "--model-ref",
            "builtin:tiny-words",
        ])
        .await;
    reload.assert_exit(0);
    assert!(
        reload.stdout.ends_with(", admission open\n"),
        "{}",
        reload.transcript()
    );
    submit(&orchctl, "late", &["--follow"]).await.assert_exit(0);
}

// covers: ORCH-6023, ORCH-2012
#[tokio::test]
async fn a_reload_to_a_model_the_replicas_cannot_serve_exits_6_and_the_old_replicas_keep_serving() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    let args = ["pool", "reload", "default", "--model-ref", "gguf:missing"];
    let failed = orchctl.run(&args).await;
    failed.assert_exit(6);
    assert!(
        failed.stderr.contains("error: INVALID_PARAMS: model_ref: ")
            && failed.stderr.contains("old replicas keep serving")
            && failed
                .stderr
                .contains("hint: the replicas cannot serve that model"),
        "{}",
        failed.transcript()
    );
    snapshot!("pool_reload_refused", failed.transcript());
    let failed_json = orchctl.run(&[&["--json"][..], &args].concat()).await;
    failed_json.assert_exit(6);
    let body: serde_json::Value = serde_json::from_str(failed_json.stderr.trim()).unwrap();
    assert_eq!(body["status"], 400);
    assert_eq!(body["error"]["code"], "INVALID_PARAMS");
    assert_eq!(body["error"]["retriable"], false);

    let health = orchctl.run(&["--json", "pool", "health", "default"]).await;
    let body: PoolHealth = serde_json::from_str(health.stdout.trim()).unwrap();
    assert!(body.ready);
    assert!(
        body.replicas
            .iter()
            .all(|r| r.model_ref == "builtin:tiny-words")
    );
    submit(&orchctl, "still-served", &["--follow"])
        .await
        .assert_exit(0);

    let reload = orchctl
        .run(&[
            "pool",
            "reload",
            "default",
            "--model-ref",
            "builtin:other-model",
            "--ready-timeout-ms",
            "5000",
        ])
        .await;
    reload.assert_exit(0);
    let reload_json = orchctl
        .run(&[
            "--json",
            "pool",
            "reload",
            "default",
            "--model-ref",
            "builtin:other-model",
        ])
        .await;
    reload_json.assert_exit(0);
    assert_eq!(
        reload_json.json_lines()[0]["model_ref"],
        "builtin:other-model"
    );
    snapshot!("pool_reload", transcripts(&[&reload, &reload_json]));
    submit(&orchctl, "on-the-new-set", &["--follow"])
        .await
        .assert_exit(0);
}

// covers: ORCH-6001, ORCH-6002, ORCH-6003, ORCH-6026
#[tokio::test]
async fn control_plane_commands_need_an_admin_key_and_exit_6_without_one() {
    let tenant = |id: &str, role: Role, key: &str| TenantConfig {
        weight: 1,
        token_rate_limit: None,
        id: id.into(),
        role,
        api_key_sha256: vec![orchestratord::runtime::key_hash(key)],
        max_concurrent: None,
        rate_limit: None,
    };
    let mut config = quiet_config(|_| {});
    config.tenants = vec![
        tenant("app", Role::Client, "client-key"),
        tenant("ops", Role::Admin, "admin-key"),
    ];
    let server = TestServer::start(config).await;
    let orchctl = server.orchctl();
    let client = orchctl.with_api_key(Some("client-key"));
    let admin = orchctl.with_api_key(Some("admin-key"));

    let commands: [&[&str]; 6] = [
        &["pools"],
        &["pool", "health", "default"],
        &["pool", "drain", "default", "--deadline-ms", "1000"],
        &["pool", "reload", "default", "--model-ref", "builtin:x"],
        &["replicasets"],
        &["capabilities"],
    ];
    for args in commands {
        let run = client.run(args).await;
        run.assert_exit(6);
        assert!(
            run.stderr.contains("error: FORBIDDEN: "),
            "{}",
            run.transcript()
        );
    }
    let forbidden = client.run(&["pools"]).await;
    let forbidden_json = client.run(&["--json", "pool", "health", "default"]).await;
    forbidden_json.assert_exit(6);
    let body: serde_json::Value = serde_json::from_str(forbidden_json.stderr.trim()).unwrap();
    assert_eq!(body["status"], 403);
    assert_eq!(body["error"]["code"], "FORBIDDEN");
    snapshot!("forbidden", transcripts(&[&forbidden, &forbidden_json]));

    // No key, or an unknown one: 401, exit 6.
    let missing = orchctl.run(&["pools"]).await;
    missing.assert_exit(6);
    assert!(
        missing.stderr.starts_with("error: UNAUTHORIZED: "),
        "{}",
        missing.transcript()
    );
    orchctl
        .with_api_key(Some("wrong-key"))
        .run(&["status", "any"])
        .await
        .assert_exit(6);
    snapshot!("unauthorized", missing.transcript());

    // The client key keeps the data plane; the admin key has both.
    submit(&client, "mine", &["--follow"]).await.assert_exit(0);
    client.run(&["status", "mine"]).await.assert_exit(0);
    // (The drain is undone by the reload that follows it.)
    for args in commands {
        admin.run(args).await.assert_exit(0);
    }
    submit(&admin, "after-reload", &["--follow"])
        .await
        .assert_exit(0);
}

// covers: ORCH-6027, ORCH-6026
#[tokio::test]
async fn usage_shows_a_client_its_own_tenant_and_an_admin_every_tenant() {
    let tenant = |id: &str, role: Role, key: &str, weight: u32| TenantConfig {
        weight,
        token_rate_limit: None,
        id: id.into(),
        role,
        api_key_sha256: vec![orchestratord::runtime::key_hash(key)],
        max_concurrent: Some(4),
        rate_limit: None,
    };
    let mut config = quiet_config(|_| {});
    config.tenants = vec![
        tenant("app", Role::Client, "client-key", 3),
        tenant("ops", Role::Admin, "admin-key", 1),
    ];
    let server = TestServer::start(config).await;
    let orchctl = server.orchctl();
    let client = orchctl.with_api_key(Some("client-key"));
    let admin = orchctl.with_api_key(Some("admin-key"));
    submit(&client, "mine", &["--follow"]).await.assert_exit(0);

    let own = client.run(&["usage"]).await;
    own.assert_exit(0);
    assert!(!own.stdout.contains("ops"), "{}", own.transcript());
    let own_json = client.run(&["--json", "usage"]).await;
    own_json.assert_exit(0);
    let body = &own_json.json_lines()[0];
    assert_eq!(body["tenants"].as_array().unwrap().len(), 1);
    // 4 words of prompt and 4 tokens generated.
    assert_eq!(body["tenants"][0]["pools"][0]["served_tokens"], 8);
    assert_eq!(body["tenants"][0]["pools"][0]["served_share"], 1.0);

    let everyone = admin.run(&["usage"]).await;
    everyone.assert_exit(0);
    let other = client.run(&["usage", "--tenant", "ops"]).await;
    other.assert_exit(6);
    assert!(
        other.stderr.contains("drop --tenant"),
        "{}",
        other.transcript()
    );
    let unknown = admin.run(&["usage", "--tenant", "nobody"]).await;
    unknown.assert_exit(4);
    snapshot!(
        "usage",
        transcripts(&[&own, &own_json, &everyone, &other, &unknown])
    );
}
