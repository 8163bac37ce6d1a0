//! The `TaskStore` contract, one suite run against both backends (ORCH-7001,
//! ORCH-7002, ORCH-7006): each case is written once, as a function of a fresh store,
//! and `store_suite!` instantiates every case for SQLite (a temp file) and for
//! PostgreSQL (a fresh database of the throwaway cluster that
//! `scripts/postgres/setup.sh` starts).
//!
//! Run one backend: `cargo nextest run -p orchestratord --test store_suite postgres::`.

mod common;

use std::sync::Arc;

use contracts::{
    EndEvent, ErrorCode, ErrorEnvelope, FinishReason, Priority, StreamEvent, TaskRequest,
    TaskState, TokenEvent,
};
use orchestratord::store::{
    Finish, Inserted, ListFilter, LogTail, PostgresStore, SqliteStore, StoreError, StoreLocation,
    TaskKey, TaskRecord, TaskStore,
};
use tempfile::TempDir;

/// A fresh, empty store location of one backend, and the raw access the schema
/// cases need.
enum Fixture {
    Sqlite(TempDir),
    Postgres(String),
}

impl Fixture {
    async fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    async fn postgres() -> Self {
        Self::Postgres(common::fresh_postgres_database().await)
    }

    fn location(&self) -> StoreLocation {
        match self {
            Self::Sqlite(dir) => StoreLocation::Sqlite(dir.path().join("store.db")),
            Self::Postgres(url) => StoreLocation::Postgres(url.clone()),
        }
    }

    async fn open(&self) -> Arc<dyn TaskStore> {
        self.location().open().await.expect("the store opens")
    }

    /// Migrates an empty location only up to `version`.
    async fn make_at_version(&self, version: u32) {
        match self.location() {
            StoreLocation::Sqlite(path) => SqliteStore::open_at_version(&path, version),
            StoreLocation::Postgres(url) => PostgresStore::open_at_version(&url, version).await,
        }
        .expect("migrated to the older version");
    }

    /// Writes a schema version, as a newer orchestratord would have.
    async fn write_schema_version(&self, version: u32) {
        match self {
            Self::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
                conn.pragma_update(None, "user_version", version).unwrap();
            }
            Self::Postgres(url) => {
                let client = common::postgres_client(url).await;
                client
                    .execute(
                        "UPDATE orchqueue_schema SET version = $1",
                        &[&(version as i32)],
                    )
                    .await
                    .unwrap();
            }
        }
    }
}

fn key(scope: &str, task_id: &str) -> TaskKey {
    TaskKey {
        tenant: "default".into(),
        scope: scope.into(),
        task_id: task_id.into(),
    }
}

fn record(key: &TaskKey, prompt: &str) -> TaskRecord {
    TaskRecord {
        seq: 0,
        key: key.clone(),
        pool_id: "default".into(),
        priority: Priority::Batch,
        request: TaskRequest {
            task_id: Some(key.task_id.to_string()),
            prompt: prompt.into(),
            max_tokens: 8,
            stop: Some(vec!["\n\n".into()]),
            ..TaskRequest::default()
        },
        body_hash: format!("hash-of-{prompt}"),
        seed: u32::MAX,
        state: TaskState::Queued,
        replica_id: None,
        submitted_at_ms: 1_700_000_000_123,
        started_at_ms: None,
        finished_at_ms: None,
        first_token: false,
        tokens_out: 0,
        finish_reason: None,
        error: None,
    }
}

fn token(i: u32) -> StreamEvent {
    StreamEvent::Token(TokenEvent {
        t: format!("t{i}"),
        i,
    })
}

fn end(tokens_out: u32) -> StreamEvent {
    StreamEvent::End(EndEvent {
        tokens_out,
        decode_ms: 5,
        finish_reason: FinishReason::Length.into(),
    })
}

/// The terminal write of a task that completed with one token.
fn completed_at(finished_at_ms: u64) -> Finish {
    Finish {
        state: TaskState::Completed,
        finished_at_ms,
        finish_reason: Some(FinishReason::Length),
        error: None,
        tail: LogTail {
            events_from: 0,
            events: vec![token(0), end(1)],
            tokens_out: 1,
        },
    }
}

async fn insert_new(store: &dyn TaskStore, record: TaskRecord) -> i64 {
    match store.insert(record).await.expect("insert") {
        Inserted::New { seq } => seq,
        Inserted::Existing(existing) => panic!("expected a new task, found {existing:?}"),
    }
}

fn all_of(scope: &str) -> ListFilter {
    ListFilter {
        tenant: "default".into(),
        scope: scope.into(),
        state: None,
        after_seq: None,
        limit: 100,
    }
}

/// Every field comes back as written; the same key again is the existing row, the
/// same id in another scope a new task (ORCH-1005, ORCH-6012).
async fn a_task_reads_back_as_written_and_its_key_is_unique(fixture: Fixture) {
    let store = fixture.open().await;
    let first = key("s1", "t-1");
    let seq = insert_new(&*store, record(&first, "hello")).await;
    let read = store.get(&first).await.unwrap().expect("stored");
    assert_eq!(
        read,
        TaskRecord {
            seq,
            ..record(&first, "hello")
        }
    );
    match store.insert(record(&first, "other")).await.unwrap() {
        Inserted::Existing(existing) => assert_eq!(*existing, read),
        Inserted::New { .. } => panic!("a second row with the same key"),
    }
    let elsewhere = insert_new(&*store, record(&key("s2", "t-1"), "hello")).await;
    assert!(elsewhere > seq, "seq grows in admission order");
    assert_eq!(store.get(&key("s3", "t-1")).await.unwrap(), None);
}

/// A task's life in the store: claimed, given back, claimed again, its log flushed
/// in parts and then finished; a flush after the end changes nothing (ORCH-7003,
/// ORCH-7009).
async fn a_task_moves_through_its_states_and_keeps_its_log(fixture: Fixture) {
    let store = fixture.open().await;
    let k = key("life", "t");
    insert_new(&*store, record(&k, "p")).await;
    store.mark_started(&k, "r0", 10).await.unwrap();
    let running = store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (
            running.state,
            running.replica_id.as_deref(),
            running.started_at_ms
        ),
        (TaskState::Running, Some("r0"), Some(10))
    );
    store.mark_requeued(&k).await.unwrap();
    let requeued = store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (requeued.state, requeued.replica_id, requeued.started_at_ms),
        (TaskState::Queued, None, None)
    );
    store.mark_started(&k, "r1", 20).await.unwrap();
    store
        .append_events(
            &k,
            LogTail {
                events_from: 0,
                events: vec![token(0), token(1)],
                tokens_out: 2,
            },
        )
        .await
        .unwrap();
    let flushed = store.get(&k).await.unwrap().unwrap();
    assert!(flushed.first_token);
    assert_eq!(flushed.tokens_out, 2);
    // The terminal write rewrites index 1 and adds the rest.
    let error = ErrorEnvelope {
        code: ErrorCode::WorkerReset.into(),
        message: "replica r1 failed after 3 tokens".into(),
        retriable: true,
        retry_after_ms: Some(250),
        policy: None,
        engine: Some("builtin".into()),
        correlation_id: "c-1".into(),
    };
    store
        .finish(
            &k,
            Finish {
                state: TaskState::Failed,
                finished_at_ms: 30,
                finish_reason: None,
                error: Some(error.clone()),
                tail: LogTail {
                    events_from: 1,
                    events: vec![token(1), token(2), StreamEvent::Error(error.clone())],
                    tokens_out: 3,
                },
            },
        )
        .await
        .unwrap();
    store
        .append_events(
            &k,
            LogTail {
                events_from: 3,
                events: vec![token(3)],
                tokens_out: 4,
            },
        )
        .await
        .unwrap();
    let done = store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.finished_at_ms, done.tokens_out),
        (TaskState::Failed, Some(30), 3)
    );
    assert_eq!(done.error, Some(error.clone()));
    assert_eq!(
        store.events(&k).await.unwrap(),
        vec![token(0), token(1), token(2), StreamEvent::Error(error)]
    );
}

/// Recovery reads unfinished tasks in admission order; lists page by `seq` and
/// filter by state, within one namespace (ORCH-7002, ORCH-1201).
async fn unfinished_tasks_and_lists_come_in_admission_order(fixture: Fixture) {
    let store = fixture.open().await;
    let keys: Vec<TaskKey> = (0..5).map(|i| key("order", &format!("t{i}"))).collect();
    let mut seqs = Vec::new();
    for k in &keys {
        seqs.push(insert_new(&*store, record(k, "p")).await);
    }
    insert_new(&*store, record(&key("other", "t0"), "p")).await;
    store.mark_started(&keys[1], "r0", 1).await.unwrap();
    store.finish(&keys[2], completed_at(2)).await.unwrap();
    let unfinished: Vec<(String, TaskState)> = store
        .unfinished()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| &*r.key.scope == "order")
        .map(|r| (r.key.task_id.to_string(), r.state))
        .collect();
    assert_eq!(
        unfinished,
        vec![
            ("t0".into(), TaskState::Queued),
            ("t1".into(), TaskState::Running),
            ("t3".into(), TaskState::Queued),
            ("t4".into(), TaskState::Queued),
        ]
    );
    // Their logs come in one read, by seq: the running task's, and none
    // for a finished one or a task without events.
    let log = vec![token(0), token(1)];
    for k in [&keys[1], &keys[2]] {
        store
            .append_events(
                k,
                LogTail {
                    events_from: 0,
                    events: log.clone(),
                    tokens_out: 2,
                },
            )
            .await
            .unwrap();
    }
    let logs = store.unfinished_events().await.unwrap();
    assert_eq!(logs.get(&seqs[1]), Some(&log));
    assert!(!logs.contains_key(&seqs[2]), "t2 is finished");
    assert!(!logs.contains_key(&seqs[0]), "t0 has no events");
    let ids = |records: Vec<TaskRecord>| -> Vec<String> {
        records
            .into_iter()
            .map(|r| r.key.task_id.to_string())
            .collect()
    };
    let page = store
        .list(ListFilter {
            after_seq: Some(seqs[0]),
            limit: 2,
            ..all_of("order")
        })
        .await
        .unwrap();
    assert_eq!(ids(page), ["t1", "t2"]);
    let queued = store
        .list(ListFilter {
            state: Some(TaskState::Queued),
            ..all_of("order")
        })
        .await
        .unwrap();
    assert_eq!(ids(queued), ["t0", "t3", "t4"]);
    let completed = store.get(&keys[2]).await.unwrap().unwrap();
    assert_eq!(completed.finish_reason, Some(FinishReason::Length));
}

/// Retention and scope purge delete tasks with their logs, and nothing else
/// (ORCH-7004, ORCH-6013).
async fn purges_delete_tasks_with_their_logs(fixture: Fixture) {
    let store = fixture.open().await;
    let old = key("purge", "old");
    let fresh = key("purge", "fresh");
    let other = key("kept", "t");
    for k in [&old, &fresh, &other] {
        insert_new(&*store, record(k, "p")).await;
    }
    for (k, at) in [(&old, 100), (&fresh, 300)] {
        store.finish(k, completed_at(at)).await.unwrap();
    }
    assert_eq!(store.purge_finished_before(200).await.unwrap(), 1);
    assert_eq!(store.get(&old).await.unwrap(), None);
    assert_eq!(store.events(&old).await.unwrap(), vec![]);
    assert_eq!(store.events(&fresh).await.unwrap().len(), 2);
    assert_eq!(store.purge_scope("default", "purge").await.unwrap(), 1);
    assert_eq!(store.get(&fresh).await.unwrap(), None);
    assert!(store.get(&other).await.unwrap().is_some());
    // A task deleted before admission (the queue refused it) leaves no row.
    store.delete(&other).await.unwrap();
    assert_eq!(store.get(&other).await.unwrap(), None);
}

/// The test handle's switch makes writes fail with a typed error and leaves reads
/// working (ORCH-7001's `500 INTERNAL` path).
async fn refused_writes_fail_typed_and_reads_go_on(fixture: Fixture) {
    let store = fixture.open().await;
    let k = key("refuse", "t");
    insert_new(&*store, record(&k, "p")).await;
    store.refuse_writes(true);
    let refused = store.insert(record(&key("refuse", "u"), "p")).await;
    assert!(
        matches!(refused, Err(StoreError::WriteRefused(_))),
        "{refused:?}"
    );
    assert!(matches!(
        store.mark_started(&k, "r0", 1).await,
        Err(StoreError::WriteRefused(_))
    ));
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().state,
        TaskState::Queued
    );
    store.refuse_writes(false);
    insert_new(&*store, record(&key("refuse", "u"), "p")).await;
}

/// What was committed is there after the store is closed and opened again
/// (ORCH-7001).
async fn a_reopened_store_has_every_committed_task(fixture: Fixture) {
    let k = key("reopen", "t");
    {
        let store = fixture.open().await;
        insert_new(&*store, record(&k, "p")).await;
    }
    let store = fixture.open().await;
    assert_eq!(
        store.get(&k).await.unwrap().map(|r| r.request.prompt),
        Some("p".into())
    );
}

/// An older store is migrated at open and keeps its tasks; a store whose schema is
/// newer than this binary knows is refused, naming both versions.
async fn an_old_schema_is_migrated_and_a_newer_one_refused(fixture: Fixture) {
    fixture.make_at_version(0).await;
    let k = key("schema", "t");
    {
        let store = fixture.open().await;
        insert_new(&*store, record(&k, "p")).await;
    }
    fixture.write_schema_version(99).await;
    let refused = fixture.location().open().await.err().expect("refused");
    assert!(
        matches!(refused, StoreError::SchemaTooNew { found: 99, .. }),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(
        message.contains("version 99") && message.contains("newer"),
        "{message}"
    );
}

/// Daemons that start together on one database migrate it once between them, and a
/// key submitted through both at once is one task (ORCH-7006).
async fn stores_opened_together_share_one_schema_and_one_row_per_key(fixture: Fixture) {
    let location = fixture.location();
    let opens = (0..3).map(|_| location.open());
    let stores: Vec<Arc<dyn TaskStore>> = futures::future::join_all(opens)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every store opens");
    let k = key("race", "t");
    let inserts = stores.iter().map(|store| store.insert(record(&k, "p")));
    let outcomes = futures::future::join_all(inserts).await;
    let new = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Inserted::New { .. })))
        .count();
    let existing = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Inserted::Existing(_))))
        .count();
    assert_eq!((new, existing), (1, 2), "{outcomes:?}");
}

// Each case once per backend: the cases above are the suite, these its two runs.
mod sqlite {
    use super::*;

    #[tokio::test]
    async fn a_task_reads_back_as_written_and_its_key_is_unique() {
        super::a_task_reads_back_as_written_and_its_key_is_unique(Fixture::sqlite().await).await;
    }

    #[tokio::test]
    async fn a_task_moves_through_its_states_and_keeps_its_log() {
        super::a_task_moves_through_its_states_and_keeps_its_log(Fixture::sqlite().await).await;
    }

    // covers: ORCH-7002
    #[tokio::test]
    async fn unfinished_tasks_and_lists_come_in_admission_order() {
        super::unfinished_tasks_and_lists_come_in_admission_order(Fixture::sqlite().await).await;
    }

    // covers: ORCH-7004, ORCH-6013
    #[tokio::test]
    async fn purges_delete_tasks_with_their_logs() {
        super::purges_delete_tasks_with_their_logs(Fixture::sqlite().await).await;
    }

    #[tokio::test]
    async fn refused_writes_fail_typed_and_reads_go_on() {
        super::refused_writes_fail_typed_and_reads_go_on(Fixture::sqlite().await).await;
    }

    // covers: ORCH-7001
    #[tokio::test]
    async fn a_reopened_store_has_every_committed_task() {
        super::a_reopened_store_has_every_committed_task(Fixture::sqlite().await).await;
    }

    // covers: ORCH-7011
    #[tokio::test]
    async fn an_old_schema_is_migrated_and_a_newer_one_refused() {
        super::an_old_schema_is_migrated_and_a_newer_one_refused(Fixture::sqlite().await).await;
    }

    // covers: ORCH-7011
    #[tokio::test]
    async fn stores_opened_together_share_one_schema_and_one_row_per_key() {
        super::stores_opened_together_share_one_schema_and_one_row_per_key(Fixture::sqlite().await)
            .await;
    }
}

/// The schema SQLite stores had before schema versions (version 0, tables present), as
/// the releases before them wrote it.
const UNVERSIONED_SQLITE_SCHEMA: &str = "
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, scope TEXT NOT NULL,
    task_id TEXT NOT NULL, pool_id TEXT NOT NULL, priority TEXT NOT NULL, request TEXT NOT NULL,
    body_hash TEXT NOT NULL, seed INTEGER NOT NULL, state TEXT NOT NULL, replica_id TEXT,
    submitted_at_ms INTEGER NOT NULL, started_at_ms INTEGER, finished_at_ms INTEGER,
    first_token INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0,
    finish_reason TEXT, error TEXT, UNIQUE (tenant, scope, task_id)
);
CREATE INDEX tasks_by_state ON tasks (state, seq);
CREATE TABLE task_events (
    task_seq INTEGER NOT NULL, idx INTEGER NOT NULL, event TEXT NOT NULL,
    PRIMARY KEY (task_seq, idx)
) WITHOUT ROWID;
INSERT INTO tasks (tenant, scope, task_id, pool_id, priority, request, body_hash, seed, state,
    submitted_at_ms) VALUES ('default', 'legacy', 't', 'default', 'batch',
    '{\"prompt\":\"from before\",\"max_tokens\":4}', 'h', 7, 'queued', 1);
";

/// A store written before schema versions existed opens, is stamped with the
/// current version, and keeps its queued task for recovery.
// covers: ORCH-7011, ORCH-7002
#[tokio::test]
async fn an_unversioned_sqlite_store_opens_with_its_tasks() {
    let fixture = Fixture::sqlite().await;
    let StoreLocation::Sqlite(path) = fixture.location() else {
        unreachable!()
    };
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(UNVERSIONED_SQLITE_SCHEMA)
        .unwrap();
    let store = fixture.open().await;
    let unfinished = store.unfinished().await.unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].request.prompt, "from before");
    let version: u32 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert!(version >= 1, "stamped with its schema version");
}

mod postgres {
    use super::*;

    // covers: ORCH-7006
    #[tokio::test]
    async fn a_task_reads_back_as_written_and_its_key_is_unique() {
        super::a_task_reads_back_as_written_and_its_key_is_unique(Fixture::postgres().await).await;
    }

    // covers: ORCH-7006
    #[tokio::test]
    async fn a_task_moves_through_its_states_and_keeps_its_log() {
        super::a_task_moves_through_its_states_and_keeps_its_log(Fixture::postgres().await).await;
    }

    // covers: ORCH-7002, ORCH-7006
    #[tokio::test]
    async fn unfinished_tasks_and_lists_come_in_admission_order() {
        super::unfinished_tasks_and_lists_come_in_admission_order(Fixture::postgres().await).await;
    }

    // covers: ORCH-7004, ORCH-6013, ORCH-7006
    #[tokio::test]
    async fn purges_delete_tasks_with_their_logs() {
        super::purges_delete_tasks_with_their_logs(Fixture::postgres().await).await;
    }

    // covers: ORCH-7006
    #[tokio::test]
    async fn refused_writes_fail_typed_and_reads_go_on() {
        super::refused_writes_fail_typed_and_reads_go_on(Fixture::postgres().await).await;
    }

    // covers: ORCH-7001, ORCH-7006
    #[tokio::test]
    async fn a_reopened_store_has_every_committed_task() {
        super::a_reopened_store_has_every_committed_task(Fixture::postgres().await).await;
    }

    // covers: ORCH-7011, ORCH-7006
    #[tokio::test]
    async fn an_old_schema_is_migrated_and_a_newer_one_refused() {
        super::an_old_schema_is_migrated_and_a_newer_one_refused(Fixture::postgres().await).await;
    }

    // covers: ORCH-7011, ORCH-7006
    #[tokio::test]
    async fn stores_opened_together_share_one_schema_and_one_row_per_key() {
        super::stores_opened_together_share_one_schema_and_one_row_per_key(
            Fixture::postgres().await,
        )
        .await;
    }
}

/// Two daemons' stores on one PostgreSQL database, one dispatching after the other
/// took the lease (ORCH-7013): the earlier dispatcher, paused past its lease, wakes
/// and writes; every write is refused and the new dispatcher's rows stay as it wrote
/// them.
// covers: ORCH-7013
#[tokio::test]
async fn a_dispatcher_of_an_earlier_epoch_writes_nothing_after_a_takeover() {
    use orchestratord::store::ClusterTable;
    let url = common::fresh_postgres_database().await;
    let location = StoreLocation::Postgres(url.clone());
    let (old, new) = (
        location.open().await.unwrap(),
        location.open().await.unwrap(),
    );
    let table = ClusterTable::connect(&url).await.unwrap();
    let first = table
        .take(&table.lease().await.unwrap(), "old", "http://old")
        .await
        .unwrap();
    old.fence(first.unwrap()).await.unwrap();
    let (running, queued) = (key("fence", "running"), key("fence", "queued"));
    insert_new(
        old.as_ref(),
        record(&running, "running under the old epoch"),
    )
    .await;
    insert_new(old.as_ref(), record(&queued, "queued under the old epoch")).await;
    old.mark_started(&running, "r0", 10).await.unwrap();

    // The takeover: a new epoch, and the store fenced at it before recovery.
    let second = table
        .take(&table.lease().await.unwrap(), "new", "http://new")
        .await
        .unwrap();
    new.fence(second.unwrap()).await.unwrap();
    new.mark_requeued(&running).await.unwrap();

    let refused = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::WriteRefused(message)) => {
            assert!(message.contains("ORCH-7013"), "{what}: {message}")
        }
        other => panic!("{what}: the old dispatcher's write was not refused: {other:?}"),
    };
    refused(old.mark_started(&queued, "r1", 20).await, "mark_started");
    refused(
        old.append_events(
            &running,
            LogTail {
                events_from: 0,
                events: vec![token(0)],
                tokens_out: 1,
            },
        )
        .await,
        "append_events",
    );
    refused(old.finish(&running, completed_at(30)).await, "finish");
    match old
        .insert(record(&key("fence", "late"), "admitted too late"))
        .await
    {
        Err(StoreError::WriteRefused(message)) => assert!(message.contains("ORCH-7013")),
        other => panic!("insert: {other:?}"),
    }
    old.delete(&queued).await.unwrap();

    // The new dispatcher's view is intact: both tasks queued, no event, nothing late.
    for task in [&running, &queued] {
        let stored = new.get(task).await.unwrap().expect("still there");
        assert_eq!(stored.state, TaskState::Queued, "{task:?}");
        assert!(new.events(task).await.unwrap().is_empty());
    }
    assert!(new.get(&key("fence", "late")).await.unwrap().is_none());
    // And it writes as usual.
    new.mark_started(&queued, "r0", 40).await.unwrap();
    new.finish(&queued, completed_at(50)).await.unwrap();
    assert_eq!(
        new.get(&queued).await.unwrap().unwrap().state,
        TaskState::Completed
    );
}
