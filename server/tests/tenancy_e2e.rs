//! Tenants end to end: API keys, roles, rate limits, concurrency quotas,
//! and the loopback-only rule without keys.

mod common;

use std::time::Duration;

use common::{TestServer, config_with, eventually, task};
use contracts::config::{
    BuiltinEngineConfig, Config, RateLimitConfig, Role, TenantConfig, TokenRateLimitConfig,
};
use contracts::{ErrorCode, RejectPolicy, TaskState};
use orchctl::Client;
use orchestratord::runtime::key_hash;

fn tenant(id: &str, key: &str, role: Role) -> TenantConfig {
    TenantConfig {
        weight: 1,
        token_rate_limit: None,
        id: id.into(),
        role,
        api_key_sha256: vec![key_hash(key)],
        max_concurrent: None,
        rate_limit: None,
    }
}

fn keyed(tenants: Vec<TenantConfig>) -> Config {
    Config {
        tenants,
        ..config_with(1, BuiltinEngineConfig::default(), |_| {})
    }
}

// covers: ORCH-6001, ORCH-6002, ORCH-6003, ORCH-2019, ORCH-2020
#[tokio::test]
async fn keys_map_to_tenants_and_the_control_plane_needs_admin() {
    let server = TestServer::start(keyed(vec![
        tenant("ops", "admin-key", Role::Admin),
        tenant("app", "app-key", Role::Client),
    ]))
    .await;
    let anonymous = Client::new(server.url());
    let wrong = Client::new(server.url()).with_api_key("guess");
    let app = Client::new(server.url()).with_api_key("app-key");
    let ops = Client::new(server.url()).with_api_key("admin-key");
    for error in [
        anonymous.submit(task("p", 1)).await.unwrap_err(),
        wrong.status("x").await.unwrap_err(),
        anonymous.pools().await.unwrap_err(),
    ] {
        assert_eq!(error.status(), Some(401));
        assert_eq!(error.envelope().unwrap().code, ErrorCode::Unauthorized);
    }
    let id = app.submit(task("mine", 2)).await.unwrap().task_id;
    app.collect(&id).await.unwrap();
    let forbidden = app.pools().await.unwrap_err();
    assert_eq!(forbidden.status(), Some(403));
    assert_eq!(forbidden.envelope().unwrap().code, ErrorCode::Forbidden);
    ops.pools().await.unwrap();
    ops.capabilities().await.unwrap();
    assert_eq!(
        ops.status(&id).await.unwrap_err().status(),
        Some(404),
        "tenants are namespaces too"
    );
}

// covers: ORCH-3010, ORCH-2010, ORCH-2003
#[tokio::test]
async fn the_rate_limit_answers_429_with_a_retry_after_from_the_bucket() {
    let mut limited = tenant("app", "app-key", Role::Client);
    limited.rate_limit = Some(RateLimitConfig {
        per_second: 0.5,
        burst: 2,
    });
    let server = TestServer::start(keyed(vec![limited])).await;
    let app = Client::new(server.url()).with_api_key("app-key");
    app.submit(task("one", 1)).await.unwrap();
    app.submit(task("two", 1)).await.unwrap();
    let error = app.submit(task("three", 1)).await.unwrap_err();
    let orchctl::ClientError::Api {
        status,
        envelope,
        retry_after_s,
        backoff_ms,
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(*status, 429);
    assert_eq!(
        (envelope.code.known(), envelope.known_policy()),
        (
            Some(ErrorCode::AdmissionReject),
            Some(RejectPolicy::RateLimit)
        )
    );
    let backoff_ms = backoff_ms.unwrap();
    assert!(
        (1_500..=2_000).contains(&backoff_ms),
        "one token refills in 2 s: {backoff_ms}"
    );
    assert_eq!(*retry_after_s, Some(2));
}

// covers: ORCH-3017, ORCH-2010
#[tokio::test]
async fn a_token_rate_limit_takes_each_tasks_cost_and_refuses_one_it_could_never_hold() {
    let mut limited = tenant("app", "app-key", Role::Client);
    // 10 tokens a second, 100 at once.
    limited.token_rate_limit = Some(TokenRateLimitConfig {
        per_minute: 600,
        burst: Some(100),
    });
    let server = TestServer::start(keyed(vec![limited])).await;
    server.handle().hold_dispatch("default", true);
    let app = Client::new(server.url()).with_api_key("app-key");
    // Each costs its 2 words of prompt + 40 tokens: 84 of 100 taken.
    app.submit(task("one two", 40)).await.unwrap();
    let second = app.submit(task("three four", 40)).await.unwrap();
    let error = app.submit(task("five six", 40)).await.unwrap_err();
    let orchctl::ClientError::Api {
        status,
        envelope,
        retry_after_s,
        backoff_ms,
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(*status, 429);
    assert_eq!(envelope.known_policy(), Some(RejectPolicy::RateLimit));
    assert!(
        envelope.message.contains("42 tokens"),
        "{}",
        envelope.message
    );
    // 26 tokens short at 10 a second.
    let backoff_ms = backoff_ms.unwrap();
    assert!((2_000..=2_600).contains(&backoff_ms), "{backoff_ms}");
    assert_eq!(*retry_after_s, Some(3));
    // More than the bucket ever holds: a 400 naming the field, not a 429 forever.
    let never = app.submit(task("seven", 100)).await.unwrap_err();
    assert_eq!(never.status(), Some(400));
    let envelope = never.envelope().unwrap();
    assert_eq!(envelope.code, ErrorCode::InvalidParams);
    assert!(
        envelope.message.starts_with("max_tokens:") && envelope.message.contains("(100)"),
        "{}",
        envelope.message
    );
    // A queued task canceled gives its whole cost back at once.
    app.cancel(&second.task_id).await.unwrap();
    app.submit(task("five six", 40)).await.unwrap();
}

// covers: ORCH-3011
#[tokio::test]
async fn a_concurrency_quota_keeps_the_excess_queued_without_an_error() {
    let mut capped = tenant("app", "app-key", Role::Client);
    capped.max_concurrent = Some(1);
    let mut config = keyed(vec![capped, tenant("other", "other-key", Role::Client)]);
    config.pools[0].replicas[0].engine =
        contracts::config::EngineConfig::Builtin(BuiltinEngineConfig {
            tokens_per_s: 50.0,
            ..Default::default()
        });
    let server = TestServer::start(config).await;
    let app = Client::new(server.url()).with_api_key("app-key");
    let other = Client::new(server.url()).with_api_key("other-key");
    let first = app.submit(task("first", 20)).await.unwrap().task_id;
    let second = app.submit(task("second", 2)).await.unwrap().task_id;
    let third_party = other.submit(task("other tenant", 2)).await.unwrap().task_id;
    eventually(Duration::from_secs(2), "first running", async || {
        app.status(&first).await.unwrap().state == TaskState::Running
    })
    .await;
    other.collect(&third_party).await.unwrap();
    assert_eq!(
        app.status(&second).await.unwrap().state,
        TaskState::Queued,
        "over quota: waits, no error"
    );
    app.collect(&first).await.unwrap();
    app.collect(&second).await.unwrap();
    assert_eq!(
        app.status(&second).await.unwrap().state,
        TaskState::Completed
    );
}

// covers: ORCH-6027, ORCH-6026, ORCH-2020, ORCH-2021
#[tokio::test]
async fn usage_shows_each_tenants_queue_served_tokens_and_share_to_itself_and_to_an_admin() {
    let mut app = tenant("app", "app-key", Role::Client);
    app.weight = 3;
    app.max_concurrent = Some(2);
    // One token a second refills: the figures below hold for the test's span.
    app.token_rate_limit = Some(TokenRateLimitConfig {
        per_minute: 60,
        burst: Some(1_000),
    });
    let server = TestServer::start(keyed(vec![
        tenant("ops", "admin-key", Role::Admin),
        app,
        tenant("other", "other-key", Role::Client),
    ]))
    .await;
    server.handle().hold_dispatch("default", true);
    let ops = Client::new(server.url()).with_api_key("admin-key");
    let app = Client::new(server.url()).with_api_key("app-key");
    let other = Client::new(server.url()).with_api_key("other-key");
    let mut ids = Vec::new();
    for prompt in ["one two", "three four", "five six"] {
        ids.push(app.submit(task(prompt, 4)).await.unwrap().task_id);
    }
    let theirs = other.submit(task("seven", 4)).await.unwrap().task_id;

    // A client sees itself: 3 queued, weight 3 of the 4 with work.
    let own = app.usage(None).await.unwrap();
    assert_eq!(own.tenants.len(), 1, "{own:?}");
    let me = &own.tenants[0];
    assert_eq!((me.tenant.as_str(), me.weight, me.running), ("app", 3, 0));
    assert_eq!(me.max_concurrent, Some(2));
    assert_eq!(me.token_burst, Some(1_000));
    // Each task took its 2 words of prompt + 4 tokens.
    let available = me.tokens_available.unwrap();
    assert!((982..=990).contains(&available), "{available}");
    let pool = &me.pools[0];
    assert_eq!(
        (pool.pool_id.as_str(), pool.queued, pool.running),
        ("default", 3, 0)
    );
    assert_eq!((pool.served_tokens, pool.served_share), (0, 0.0));
    assert_eq!(pool.entitled_share, Some(0.75));

    // An admin sees every tenant by id; an idle one is told its share once it has work.
    let all = ops.usage(None).await.unwrap();
    let names: Vec<_> = all.tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(names, ["app", "ops", "other"]);
    assert_eq!(all.tenants[1].pools[0].entitled_share, Some(0.2));
    assert_eq!(all.tenants[1].tokens_available, None);
    assert_eq!(all.tenants[2].pools[0].queued, 1);
    assert_eq!(all.tenants[2].pools[0].entitled_share, Some(0.25));
    assert_eq!(
        ops.usage(Some("other")).await.unwrap().tenants,
        all.tenants[2..]
    );

    // Naming another tenant needs the admin role; an unknown one is a 404.
    let forbidden = app.usage(Some("other")).await.unwrap_err();
    assert_eq!(forbidden.status(), Some(403));
    assert_eq!(forbidden.envelope().unwrap().code, ErrorCode::Forbidden);
    assert!(
        app.usage(Some("app")).await.is_ok(),
        "naming itself is fine"
    );
    let unknown = ops.usage(Some("nobody")).await.unwrap_err();
    assert_eq!(unknown.status(), Some(404));
    let empty = ops.usage(Some("")).await.unwrap_err();
    assert!(
        empty.envelope().unwrap().message.starts_with("tenant:"),
        "{empty}"
    );

    // Once run, each task was served its prompt and its 4 tokens.
    server.handle().hold_dispatch("default", false);
    for id in &ids {
        app.collect(id).await.unwrap();
    }
    other.collect(&theirs).await.unwrap();
    let after = ops.usage(None).await.unwrap();
    let served: Vec<_> = after
        .tenants
        .iter()
        .map(|t| (t.pools[0].served_tokens, t.pools[0].queued, t.running))
        .collect();
    assert_eq!(served, [(18, 0, 0), (0, 0, 0), (5, 0, 0)]);
    let share = after.tenants[0].pools[0].served_share;
    assert!((share - 18.0 / 23.0).abs() < 1e-9, "{share}");
    // With no work anywhere, each would get its weight over its own: all of it.
    assert_eq!(after.tenants[2].pools[0].entitled_share, Some(1.0));
    let available = app.usage(None).await.unwrap().tenants[0]
        .tokens_available
        .unwrap();
    assert!(
        available >= 982,
        "nothing generated was left unused: {available}"
    );
}

// covers: ORCH-6004
#[tokio::test]
async fn without_keys_the_server_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let error = orchestratord::start(Config::default(), "0.0.0.0:0", &dir.path().join("s.db"))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains("loopback") && message.contains("--bind 127.0.0.1"),
        "{message}"
    );
    let with_keys = keyed(vec![tenant("ops", "k", Role::Admin)]);
    let server = orchestratord::start(with_keys, "0.0.0.0:0", &dir.path().join("t.db"))
        .await
        .unwrap();
    server.shutdown().await;
}
