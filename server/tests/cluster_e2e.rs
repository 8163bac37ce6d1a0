//! Several daemons on one PostgreSQL database as one orchestrator, end to end
//! (ORCH-7012..ORCH-7014): three in-process daemons on loopback, each behind the
//! conformance proxy, driven through real `orchctl` clients. The lease is counted on
//! the test clock: a failover happens because the survivors' clocks moved a lease
//! past the last renewal they saw, and not before.

mod common;

use std::time::Duration;

use common::{
    TestServer, config_with, eventually, fresh_postgres_database, journal, task, unique_scope,
};
use contracts::config::{BuiltinEngineConfig, Config, FullPolicy};
use contracts::{ErrorCode, FinishReason, StreamEvent, TaskRequest, TaskState};
use orchctl::{Client, ListOptions};
use orchestratord::cluster::Role;

/// Long enough that only the test clock ever expires it.
const TEST_CLOCK_LEASE_MS: u64 = 600_000;

fn cluster_config(engine: BuiltinEngineConfig, lease_ms: u64) -> Config {
    let mut config = config_with(1, engine, |pool| {
        pool.queue.capacity = 4;
        pool.queue.full_policy = FullPolicy::Reject;
    });
    config.cluster.lease_ms = lease_ms;
    config
}

async fn three_daemons(config: &Config) -> (String, Vec<TestServer>) {
    daemons(config, 3).await
}

async fn daemons(config: &Config, count: usize) -> (String, Vec<TestServer>) {
    let database = fresh_postgres_database().await;
    let mut daemons = Vec::new();
    for n in 0..count {
        let mut own = config.clone();
        own.instance = Some(format!("d{n}"));
        daemons.push(TestServer::start_on_database(own, &database).await);
    }
    (database, daemons)
}

fn dispatching(daemons: &[TestServer]) -> Vec<usize> {
    daemons
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            matches!(
                d.server.member().expect("a cluster member").role(),
                Role::Dispatcher { ready: true, .. }
            )
        })
        .map(|(n, _)| n)
        .collect()
}

fn counter(
    daemon: &TestServer,
    read: impl Fn(&orchestratord::cluster::ClusterMetrics) -> u64,
) -> u64 {
    read(&daemon.server.member().expect("a cluster member").metrics)
}

fn client_of(daemon: &TestServer, scope: &str) -> Client {
    Client::new(daemon.url()).with_scope(scope)
}

// covers: ORCH-7012, ORCH-6010, ORCH-6012, ORCH-6021, ORCH-6022
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_serve_one_queue_and_any_of_them_answers_for_every_task() {
    let journal_dir = tempfile::tempdir().unwrap();
    let engine = BuiltinEngineConfig {
        slots: 1,
        tokens_per_s: 400.0,
        ttft_ms: 1,
        journal: Some(journal_dir.path().join("journal").display().to_string()),
        ..BuiltinEngineConfig::default()
    };
    let (_database, daemons) = three_daemons(&cluster_config(engine, 5_000)).await;
    let dispatchers = dispatching(&daemons);
    assert_eq!(dispatchers.len(), 1, "exactly one daemon dispatches");
    let dispatcher = &daemons[dispatchers[0]];
    dispatcher
        .server
        .test_handle()
        .hold_dispatch("default", true);

    // Admitted through every daemon into the one queue, whose capacity (4) and
    // full policy hold across daemons.
    let scope = unique_scope();
    let mut ids = Vec::new();
    for n in 0..4 {
        let via = client_of(&daemons[n % 3], &scope);
        let accepted = via
            .submit(task(&format!("cluster task {n}"), 3))
            .await
            .unwrap();
        assert_eq!(accepted.queue_position, n as u32, "one global queue");
        ids.push(accepted.task_id);
    }
    let full = client_of(&daemons[1], &scope)
        .submit(task("one too many", 3))
        .await
        .unwrap_err();
    assert_eq!(full.envelope().unwrap().code, ErrorCode::AdmissionReject);

    // Any daemon lists and reads every task, in admission order.
    for daemon in &daemons {
        let client = client_of(daemon, &scope);
        let listed: Vec<String> = client
            .list(&ListOptions::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|s| s.task_id)
            .collect();
        assert_eq!(listed, ids, "list through {}", daemon.url());
        for id in &ids {
            assert_eq!(client.status(id).await.unwrap().state, TaskState::Queued);
        }
    }
    // Scope isolation holds across daemons: another scope sees nothing, and the same
    // id there is another task.
    let stranger = client_of(&daemons[2], &unique_scope());
    assert!(
        stranger
            .list(&ListOptions::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        stranger.status(&ids[0]).await.unwrap_err().status(),
        Some(404)
    );

    // Cancel through a daemon that does not dispatch.
    let follower = (dispatchers[0] + 1) % 3;
    client_of(&daemons[follower], &scope)
        .cancel(&ids[2])
        .await
        .unwrap();
    let canceled = client_of(&daemons[(follower + 1) % 3], &scope)
        .status(&ids[2])
        .await
        .unwrap();
    assert_eq!(canceled.state, TaskState::Canceled);

    dispatcher
        .server
        .test_handle()
        .hold_dispatch("default", false);
    for (n, id) in ids.iter().enumerate() {
        let events = client_of(&daemons[(n + 1) % 3], &scope)
            .collect(id)
            .await
            .unwrap();
        let last = events.last().expect("a terminal event");
        let reason = match last {
            StreamEvent::End(end) => end.finish_reason.clone(),
            other => panic!("{id} ended with {other:?}"),
        };
        assert_eq!(reason == FinishReason::Canceled, n == 2, "{id}: {events:?}");
    }
    // The engine ran each task once, in the order the dispatcher admitted them.
    let expected: Vec<String> = [0, 1, 3]
        .iter()
        .map(|n| format!("cluster task {n}"))
        .collect();
    assert_eq!(journal(&journal_dir.path().join("journal")), expected);
    // The control plane acts on the pool for the whole cluster: pool health and the
    // replica sets read the same through every daemon, and a drain through a follower
    // closes admission through the others.
    let health = client_of(&daemons[0], &scope)
        .pool_health("default")
        .await
        .unwrap();
    let sets = client_of(&daemons[0], &scope).replica_sets().await.unwrap();
    for daemon in &daemons[1..] {
        let client = client_of(daemon, &scope);
        assert_eq!(client.pool_health("default").await.unwrap(), health);
        assert_eq!(
            client.replica_sets().await.unwrap().replica_sets.len(),
            sets.replica_sets.len()
        );
    }
    client_of(&daemons[follower], &scope)
        .drain_pool("default", 60_000)
        .await
        .unwrap();
    for daemon in &daemons {
        let client = client_of(daemon, &scope);
        assert!(client.pool_health("default").await.unwrap().draining);
        let closed = client.submit(task("after the drain", 2)).await.unwrap_err();
        assert_eq!(
            (closed.status(), closed.envelope().unwrap().code.known()),
            (Some(503), Some(ErrorCode::PoolUnavailable))
        );
    }
    // Each daemon's metrics carry its instance; only the dispatcher says it dispatches.
    for (n, daemon) in daemons.iter().enumerate() {
        let text = reqwest::get(format!("{}/metrics", daemon.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let flag = if n == dispatchers[0] { 1 } else { 0 };
        assert!(
            text.contains(&format!("cluster_dispatching{{daemon=\"d{n}\"}} {flag}")),
            "{text}"
        );
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .all(|l| l.contains(&format!("daemon=\"d{n}\""))),
            "{text}"
        );
    }
    for daemon in daemons {
        daemon.server.shutdown().await;
    }
}

// covers: ORCH-7013, ORCH-7003, ORCH-7012
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_dispatcher_dies_another_takes_over_after_one_lease_of_the_test_clock() {
    // One slow slot: one task streams, the next waits.
    let engine = BuiltinEngineConfig {
        slots: 1,
        tokens_per_s: 20.0,
        ttft_ms: 1,
        ..BuiltinEngineConfig::default()
    };
    let (_database, mut daemons) =
        three_daemons(&cluster_config(engine, TEST_CLOCK_LEASE_MS)).await;
    let dead = dispatching(&daemons)[0];
    let (reader_at, other) = ((dead + 1) % 3, (dead + 2) % 3);
    let scope = unique_scope();
    let via_reader = client_of(&daemons[reader_at], &scope);
    let streaming = via_reader
        .submit(task("streams through the failover", 60))
        .await
        .unwrap();
    let waiting = via_reader
        .submit(task("waits through the failover", 3))
        .await
        .unwrap();

    // A raw reader through a follower, so that no client-side resume is involved.
    let url = format!(
        "{}/v1/tasks/{}/stream?scope={scope}",
        daemons[reader_at].url(),
        streaming.task_id
    );
    let mut response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    while !seen.contains("event: token") {
        let chunk = response.chunk().await.unwrap().expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let reader = tokio::spawn(async move {
        while let Some(chunk) = response.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        seen
    });

    // Let the first token reach the store, then kill the dispatcher.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let TestServer { server, .. } = daemons.remove(dead);
    server.crash();
    let survivors = daemons;
    let takeovers = |d: &[TestServer]| {
        d.iter()
            .map(|s| counter(s, |m| m.takeovers.get()))
            .sum::<u64>()
    };
    let expiries = |d: &[TestServer]| {
        d.iter()
            .map(|s| counter(s, |m| m.expiries.get()))
            .sum::<u64>()
    };

    // Most of a lease passes on the survivors' clocks: nobody takes over.
    // (The margin is far more than this test's real time since the last renewal.)
    for survivor in &survivors {
        survivor.server.advance_clock(TEST_CLOCK_LEASE_MS - 60_000);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!((expiries(&survivors), takeovers(&survivors)), (0, 0));

    // The rest of it: exactly one survivor takes the lease.
    for survivor in &survivors {
        survivor.server.advance_clock(60_000);
    }
    eventually(
        Duration::from_secs(10),
        "a survivor dispatches",
        async || dispatching(&survivors).len() == 1,
    )
    .await;
    assert_eq!(takeovers(&survivors), 1);
    let expired = expiries(&survivors);
    assert!(
        (1..=2).contains(&expired),
        "each survivor counts the expiry it saw: {expired}"
    );

    // The reader, still on the same connection through its follower, sees the
    // outcome ORCH-7003 gives a task that had streamed: WORKER_RESET, after the
    // tokens it already had, none twice.
    let text = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the follower's stream reaches the outcome")
        .unwrap();
    assert!(
        text.contains("event: error") && text.contains("WORKER_RESET"),
        "{text}"
    );
    let ids: Vec<&str> = text
        .lines()
        .zip(text.lines().skip(1))
        .filter(|(event, _)| *event == "event: token")
        .filter_map(|(_, id)| id.strip_prefix("id: "))
        .collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "a token relayed twice");

    // The queued task was not lost: it runs on the new dispatcher.
    let via_other = client_of(&survivors[other.min(survivors.len() - 1)], &scope);
    let events = via_other.collect(&waiting.task_id).await.unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::End(_))),
        "{events:?}"
    );
    for survivor in survivors {
        survivor.server.shutdown().await;
    }
}

// covers: ORCH-7013
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_that_cannot_renew_steps_down_before_a_follower_may_take_over() {
    let (_database, daemons) = three_daemons(&cluster_config(
        BuiltinEngineConfig::default(),
        TEST_CLOCK_LEASE_MS,
    ))
    .await;
    let first = dispatching(&daemons)[0];
    let member = daemons[first].server.member().unwrap();
    member.pause_renewals(true);
    // Two thirds of a lease on its own clock: it stops dispatching ...
    daemons[first]
        .server
        .advance_clock(TEST_CLOCK_LEASE_MS * 2 / 3);
    eventually(
        Duration::from_secs(5),
        "the dispatcher steps down",
        async || counter(&daemons[first], |m| m.step_downs.get()) == 1,
    )
    .await;
    assert!(dispatching(&daemons).is_empty());
    // ... while the followers, whose clocks did not move, have not taken over.
    assert_eq!(
        daemons
            .iter()
            .map(|d| counter(d, |m| m.takeovers.get()))
            .sum::<u64>(),
        1
    );
    // A lease later on theirs, one does; the old dispatcher now forwards to it.
    for (n, daemon) in daemons.iter().enumerate() {
        if n != first {
            daemon.server.advance_clock(TEST_CLOCK_LEASE_MS);
        }
    }
    eventually(
        Duration::from_secs(10),
        "a follower takes over",
        async || dispatching(&daemons).len() == 1,
    )
    .await;
    assert_ne!(dispatching(&daemons)[0], first);
    let scope = unique_scope();
    let accepted = client_of(&daemons[first], &scope)
        .submit(task("after the step-down", 2))
        .await;
    let events = client_of(&daemons[first], &scope)
        .collect(&accepted.unwrap().task_id)
        .await
        .unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::End(_))),
        "{events:?}"
    );
    for daemon in daemons {
        daemon.server.shutdown().await;
    }
}

// covers: ORCH-7014
#[tokio::test]
async fn a_daemon_whose_config_differs_is_refused_naming_the_difference() {
    let database = fresh_postgres_database().await;
    let config = cluster_config(BuiltinEngineConfig::default(), 5_000);
    let first = TestServer::start_on_database(config.clone(), &database).await;
    let mut other = config.clone();
    other.pools[0].queue.capacity = 9;
    other.instance = Some("other".into());
    let refused = orchestratord::start(
        other,
        "127.0.0.1:0",
        orchestratord::store::StoreLocation::Postgres(database.clone()),
    )
    .await
    .err()
    .expect("a daemon with another config is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("ORCH-7014")
            && message
                .contains("pools[0].queue.capacity: 9 in this daemon's config, 4 in the cluster's"),
        "{message}"
    );
    // bind and instance may differ: such a daemon joins.
    let mut same = config.clone();
    same.instance = Some("second".into());
    let second = TestServer::start_on_database(same, &database).await;
    assert!(matches!(
        second.server.member().unwrap().role(),
        Role::Follower {
            dispatcher: Some(_)
        }
    ));
    // Once every daemon has stopped, a new config becomes the cluster's.
    second.server.shutdown().await;
    first.server.shutdown().await;
    let mut changed = config.clone();
    changed.pools[0].queue.capacity = 9;
    let next = TestServer::start_on_database(changed, &database).await;
    let request = TaskRequest {
        ..task("after the change", 2)
    };
    let client = next.client();
    let accepted = client.submit(request).await.unwrap();
    client.collect(&accepted.task_id).await.unwrap();
    next.server.shutdown().await;
}

// A tenant's rate limit and concurrency quota are counted once for the cluster, not
// once per daemon.
// covers: ORCH-7012, ORCH-3010, ORCH-3011
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_rate_limit_and_quota_hold_across_daemons() {
    use contracts::config::{RateLimitConfig, Role as TenantRole, TenantConfig};
    let engine = BuiltinEngineConfig {
        slots: 4,
        tokens_per_s: 20.0,
        ..BuiltinEngineConfig::default()
    };
    let mut config = cluster_config(engine, 5_000);
    config.tenants = vec![TenantConfig {
        weight: 1,
        token_rate_limit: None,
        id: "app".into(),
        role: TenantRole::Client,
        api_key_sha256: vec![orchestratord::runtime::key_hash("app-key")],
        max_concurrent: Some(1),
        rate_limit: Some(RateLimitConfig {
            per_second: 0.1,
            burst: 2,
        }),
    }];
    let (_database, daemons) = three_daemons(&config).await;
    let through = |n: usize| Client::new(daemons[n].url()).with_api_key("app-key");
    // Two admissions through two daemons spend the burst of 2 ...
    let first = through(0).submit(task("first", 40)).await.unwrap();
    let second = through(1).submit(task("second", 2)).await.unwrap();
    // ... so the third, through the third daemon, is over the tenant's rate.
    let limited = through(2).submit(task("third", 2)).await.unwrap_err();
    assert_eq!(limited.status(), Some(429));
    assert_eq!(
        limited.envelope().unwrap().known_policy(),
        Some(contracts::RejectPolicy::RateLimit)
    );
    // One task at a time for the tenant, whichever daemon is asked: the second waits
    // while the first runs, though the replica has free slots.
    eventually(Duration::from_secs(5), "the first task runs", async || {
        through(2).status(&first.task_id).await.unwrap().state == TaskState::Running
    })
    .await;
    for n in 0..3 {
        assert_eq!(
            through(n).status(&second.task_id).await.unwrap().state,
            TaskState::Queued,
            "through daemon {n}"
        );
    }
    through(1).cancel(&first.task_id).await.unwrap();
    let events = through(2).collect(&second.task_id).await.unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::End(_))),
        "{events:?}"
    );
    for daemon in daemons {
        daemon.server.shutdown().await;
    }
}

// The dispatcher's queue is the cluster's, so fair share holds whichever daemon each
// tenant's requests come through, and any daemon reports the same usage.
// covers: ORCH-7012, ORCH-3015, ORCH-6027
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_pool_fairly_between_tenants_and_report_the_same_usage() {
    use contracts::config::{Role as TenantRole, TenantConfig};
    let journal_dir = tempfile::tempdir().unwrap();
    let journal_path = journal_dir.path().join("journal");
    let engine = BuiltinEngineConfig {
        slots: 1,
        tokens_per_s: 20_000.0,
        ttft_ms: 0,
        journal: Some(journal_path.display().to_string()),
        ..BuiltinEngineConfig::default()
    };
    let mut config = cluster_config(engine, 5_000);
    config.pools[0].queue.capacity = 64;
    config.tenants = ["flood", "light"]
        .map(|id| TenantConfig {
            weight: 1,
            token_rate_limit: None,
            id: id.into(),
            role: TenantRole::Client,
            api_key_sha256: vec![orchestratord::runtime::key_hash(&format!("{id}-key"))],
            max_concurrent: None,
            rate_limit: None,
        })
        .to_vec();
    let (_database, daemons) = daemons(&config, 2).await;
    let dispatchers = dispatching(&daemons);
    assert_eq!(dispatchers.len(), 1, "exactly one daemon dispatches");
    let (dispatcher, follower) = (dispatchers[0], 1 - dispatchers[0]);
    let handle = daemons[dispatcher].server.test_handle();
    let scope = unique_scope();
    let as_tenant = |n: usize, tenant: &str| {
        Client::new(daemons[n].url())
            .with_api_key(format!("{tenant}-key"))
            .with_scope(&scope)
    };
    // The flood comes through the follower, the light tenant through the dispatcher.
    handle.hold_dispatch("default", true);
    let mut flood = Vec::new();
    for n in 0..24 {
        let accepted = as_tenant(follower, "flood")
            .submit(task(&format!("flood {n}"), 16))
            .await
            .unwrap();
        flood.push(accepted.task_id);
    }
    let light = as_tenant(dispatcher, "light")
        .submit(task("light 0", 16))
        .await
        .unwrap();
    // Equal weights and costs: behind at most the flood's head, not its 24 tasks.
    assert_eq!(light.queue_position, 1, "{light:?}");
    let usage = as_tenant(follower, "light").usage(None).await.unwrap();
    assert_eq!(usage.tenants[0].pools[0].queued, 1);
    assert_eq!(usage.tenants[0].pools[0].entitled_share, Some(0.5));
    handle.hold_dispatch("default", false);
    as_tenant(follower, "light")
        .collect(&light.task_id)
        .await
        .unwrap();
    for id in &flood {
        as_tenant(dispatcher, "flood").collect(id).await.unwrap();
    }
    let order = journal(&journal_path);
    assert_eq!(order.len(), 25, "{order:?}");
    assert_eq!(order[..2], ["flood 0", "light 0"], "{order:?}");
    // Either daemon answers with the dispatcher's figures: 2 + 16 tokens per task.
    let admin_view: Vec<_> = (0..2)
        .map(|n| async move {
            let usage = as_tenant(n, "flood").usage(None).await.unwrap();
            usage.tenants[0].pools[0].served_tokens
        })
        .collect();
    for served in futures::future::join_all(admin_view).await {
        assert_eq!(served, 24 * 18);
    }
    for daemon in daemons {
        daemon.server.shutdown().await;
    }
}
