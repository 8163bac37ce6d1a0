//! The daemon on the PostgreSQL store (ORCH-7006) end to end, beyond what the store
//! suite, the model-based test and the crash test run on it: one database is one
//! daemon's until several daemons are one orchestrator (ORCH-7012, planned).

mod common;

use common::{fresh_postgres_database, task};
use contracts::config::Config;
use orchestratord::store::StoreLocation;

// covers: ORCH-7006, ORCH-7001
#[tokio::test]
async fn a_second_daemon_on_one_database_is_refused_and_the_next_one_finds_the_tasks() {
    let database = fresh_postgres_database().await;
    let store = || StoreLocation::Postgres(database.clone());
    let first = orchestratord::start(Config::default(), "127.0.0.1:0", store())
        .await
        .expect("the first daemon starts");
    first.test_handle().hold_dispatch("default", true);
    let client = orchctl::Client::new(first.url()).with_scope(common::unique_scope());
    let accepted = client
        .submit(task("kept across daemons", 4))
        .await
        .expect("202");

    let refused = orchestratord::start(Config::default(), "127.0.0.1:0", store())
        .await
        .err()
        .expect("a second daemon on the same database is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("another orchestratord already serves this store")
            && message.contains("ORCH-7012"),
        "{message}"
    );

    first.shutdown().await;
    let next = orchestratord::start(Config::default(), "127.0.0.1:0", store())
        .await
        .expect("once the first daemon is gone, the next one starts");
    let scope = client.scope().expect("scoped").to_owned();
    let client = orchctl::Client::new(next.url()).with_scope(scope);
    let events = client
        .collect(&accepted.task_id)
        .await
        .expect("the task admitted by the first daemon runs on the next");
    assert!(
        matches!(events.last(), Some(contracts::StreamEvent::End(_))),
        "{events:?}"
    );
    next.shutdown().await;
}
