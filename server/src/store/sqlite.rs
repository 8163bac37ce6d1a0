//! SQLite in WAL mode (ORCH-7005). One thread owns the connection and commits
//! every job waiting in its channel as one transaction (group commit), so
//! admission stays durable without one fsync per request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use async_trait::async_trait;
use contracts::{ErrorEnvelope, FinishReason, Priority, StreamEvent, TaskRequest, TaskState};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};
use tokio::sync::oneshot;

use super::{
    Finish, Inserted, ListFilter, LogTail, StoreError, TaskKey, TaskRecord, TaskStore, WriteSwitch,
    enum_from, enum_str, json_text, migrations_to_run,
};

/// Schema migrations, version `i + 1` at index `i`; the version is the database's
/// `user_version`. The first is written with `IF NOT EXISTS` so a store made before
/// versioning (tables present, version 0) adopts it unchanged.
const MIGRATIONS: &[&str] = &["
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    task_id TEXT NOT NULL,
    pool_id TEXT NOT NULL,
    priority TEXT NOT NULL,
    request TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    state TEXT NOT NULL,
    replica_id TEXT,
    submitted_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    first_token INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    finish_reason TEXT,
    error TEXT,
    UNIQUE (tenant, scope, task_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, seq);
CREATE TABLE IF NOT EXISTS task_events (
    task_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (task_seq, idx)
) WITHOUT ROWID;
"];

const COLUMNS: &str = "seq, tenant, scope, task_id, pool_id, priority, request, body_hash, seed, \
    state, replica_id, submitted_at_ms, started_at_ms, finished_at_ms, first_token, tokens_out, \
    finish_reason, error";

trait Job: Send {
    fn run(&mut self, tx: &Transaction<'_>);
    fn complete(self: Box<Self>, commit: Result<(), String>);
}

struct CallJob<T, F> {
    work: Option<F>,
    result: Option<rusqlite::Result<T>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for CallJob<T, F>
where
    T: Send,
    F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, tx: &Transaction<'_>) {
        let work = self.work.take().expect("a job runs once");
        // A savepoint per job: a failing job leaves no partial writes while
        // the rest of the batch still commits.
        let outcome = tx.execute_batch("SAVEPOINT job").and_then(|()| {
            let result = work(tx);
            let end = if result.is_ok() {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            tx.execute_batch(end)?;
            result
        });
        self.result = Some(outcome);
    }

    fn complete(self: Box<Self>, commit: Result<(), String>) {
        let result = match (commit, self.result) {
            (Err(e), _) => Err(StoreError::Backend(format!("commit failed: {e}"))),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Ok(()), Some(Err(e))) => Err(StoreError::Backend(e.to_string())),
            (Ok(()), None) => Err(StoreError::Backend("job did not run".into())),
        };
        let _ = self.reply.send(result);
    }
}

pub struct SqliteStore {
    /// Writes, committed in batches by the one writer thread.
    jobs: mpsc::Sender<Box<dyn Job>>,
    /// Reads, on a connection and thread of their own: WAL lets them read the
    /// last commit while a batch is being written, so a status or a stream's
    /// catch-up never waits behind one (issue 14).
    reads: mpsc::Sender<Box<dyn Job>>,
    refuse_writes: WriteSwitch,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let backend = |e: rusqlite::Error| StoreError::Backend(format!("{}: {e}", path.display()));
        let mut conn = Connection::open(path).map_err(backend)?;
        // WAL + NORMAL: a commit survives a process crash (the OS holds the
        // WAL pages); `FULL` would also survive power loss at one fsync per batch.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.pragma_update(None, "busy_timeout", 5_000)
            .map_err(backend)?;
        migrate(&mut conn, MIGRATIONS.len() as u32).map_err(|e| match e {
            MigrateError::Sqlite(e) => backend(e),
            MigrateError::Store(e) => e,
        })?;
        let mut reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        reader
            .pragma_update(None, "busy_timeout", 5_000)
            .map_err(backend)?;
        // Its own page cache would start cold and stay small: reads go through
        // the OS's cache of the file instead, which the writer keeps warm.
        reader
            .pragma_update(None, "mmap_size", 1i64 << 30)
            .map_err(backend)?;
        let (jobs, inbox) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("sqlite-store".into())
            .spawn(move || writer_loop(&mut conn, &inbox))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let (reads, read_inbox) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("sqlite-reader".into())
            .spawn(move || reader_loop(&mut reader, &read_inbox))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Self {
            jobs,
            reads,
            refuse_writes: WriteSwitch::default(),
        })
    }

    /// A store migrated only up to schema `version`: how tests make an older store
    /// to show that opening it migrates it.
    pub fn open_at_version(path: &Path, version: u32) -> Result<(), StoreError> {
        let mut conn = Connection::open(path).map_err(|e| StoreError::Backend(e.to_string()))?;
        migrate(&mut conn, version).map_err(|e| match e {
            MigrateError::Sqlite(e) => StoreError::Backend(e.to_string()),
            MigrateError::Store(e) => e,
        })
    }

    async fn call<T, F>(&self, write: bool, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        if write {
            self.refuse_writes.check()?;
        }
        let (reply, answer) = oneshot::channel();
        let job = CallJob {
            work: Some(work),
            result: None,
            reply,
        };
        let queue = if write { &self.jobs } else { &self.reads };
        queue
            .send(Box::new(job))
            .map_err(|_| StoreError::Backend("store thread stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("store thread dropped the job".into()))?
    }
}

enum MigrateError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// Applies the migrations after the database's `user_version` up to `target`, each
/// with its version bump in one transaction.
fn migrate(conn: &mut Connection, target: u32) -> Result<(), MigrateError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let pending =
        migrations_to_run(current, MIGRATIONS.len() as u32).map_err(MigrateError::Store)?;
    for version in pending.filter(|v| *v <= target) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(MIGRATIONS[version as usize - 1])?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

fn writer_loop(conn: &mut Connection, inbox: &mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        batch.extend(inbox.try_iter().take(1_000));
        // IMMEDIATE: the write lock is taken up front, so another process on the
        // same file waits (busy_timeout) instead of failing when a read would
        // have to upgrade to a write.
        let commit = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => {
                for job in &mut batch {
                    job.run(&tx);
                }
                tx.commit().map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        for job in batch {
            job.complete(commit.clone());
        }
    }
}

/// Each read in a transaction of its own: one snapshot of the last commit.
fn reader_loop(conn: &mut Connection, inbox: &mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(mut job) = inbox.recv() {
        let done = match conn.transaction() {
            Ok(tx) => {
                job.run(&tx);
                tx.commit().map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        job.complete(done);
    }
}

fn json_col<T: serde::de::DeserializeOwned>(index: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| conversion_failure(index, e))
}

fn enum_col<T: serde::de::DeserializeOwned>(index: usize, text: &str) -> rusqlite::Result<T> {
    enum_from(text).map_err(|e| conversion_failure(index, e))
}

fn conversion_failure(index: usize, e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
}

fn read_record(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let request: String = row.get(6)?;
    let priority: String = row.get(5)?;
    let state: String = row.get(9)?;
    let finish_reason: Option<String> = row.get(16)?;
    let error: Option<String> = row.get(17)?;
    Ok(TaskRecord {
        seq: row.get(0)?,
        key: TaskKey::new(
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
        ),
        pool_id: row.get(4)?,
        priority: enum_col::<Priority>(5, &priority)?,
        request: json_col::<TaskRequest>(6, &request)?,
        body_hash: row.get(7)?,
        seed: row.get(8)?,
        state: enum_col::<TaskState>(9, &state)?,
        replica_id: row.get(10)?,
        submitted_at_ms: row.get(11)?,
        started_at_ms: row.get(12)?,
        finished_at_ms: row.get(13)?,
        first_token: row.get(14)?,
        tokens_out: row.get(15)?,
        finish_reason: finish_reason
            .map(|f| enum_col::<FinishReason>(16, &f))
            .transpose()?,
        error: error
            .map(|e| json_col::<ErrorEnvelope>(17, &e))
            .transpose()?,
    })
}

fn get_record(tx: &Transaction<'_>, key: &TaskKey) -> rusqlite::Result<Option<TaskRecord>> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM tasks WHERE tenant = ?1 AND scope = ?2 AND task_id = ?3"),
        params![key.tenant, key.scope, key.task_id],
        read_record,
    )
    .optional()
}

fn update(
    tx: &Transaction<'_>,
    key: &TaskKey,
    set: &str,
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<()> {
    let mut all: Vec<&dyn rusqlite::ToSql> = vec![&key.tenant, &key.scope, &key.task_id];
    all.extend_from_slice(values);
    tx.execute(
        &format!("UPDATE tasks SET {set} WHERE tenant = ?1 AND scope = ?2 AND task_id = ?3"),
        all.as_slice(),
    )?;
    Ok(())
}

/// Upsert events by index: the terminal write rewrites any index a racing
/// flush wrote before it, and a flush arriving after it changes nothing.
fn write_tail(tx: &Transaction<'_>, key: &TaskKey, tail: &LogTail) -> rusqlite::Result<()> {
    let Some(record) = get_record(tx, key)? else {
        return Ok(());
    };
    update(
        tx,
        key,
        "tokens_out = ?4, first_token = first_token OR ?4 > 0",
        &[&tail.tokens_out],
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO task_events (task_seq, idx, event) VALUES (?1, ?2, ?3)",
    )?;
    for (offset, event) in tail.events.iter().enumerate() {
        insert.execute(params![
            record.seq,
            (tail.events_from + offset) as i64,
            json_text(event)
        ])?;
    }
    Ok(())
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn insert(&self, record: TaskRecord) -> Result<Inserted, StoreError> {
        self.call(true, move |tx| {
            if let Some(existing) = get_record(tx, &record.key)? {
                return Ok(Inserted::Existing(Box::new(existing)));
            }
            let request = json_text(&record.request);
            tx.execute(
                "INSERT INTO tasks (tenant, scope, task_id, pool_id, priority, request, body_hash, \
                 seed, state, submitted_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    record.key.tenant,
                    record.key.scope,
                    record.key.task_id,
                    record.pool_id,
                    enum_str(&record.priority),
                    request,
                    record.body_hash,
                    record.seed,
                    TaskState::Queued.as_str(),
                    record.submitted_at_ms,
                ],
            )?;
            Ok(Inserted::New {
                seq: tx.last_insert_rowid(),
            })
        })
        .await
    }

    async fn delete(&self, key: &TaskKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.call(true, move |tx| {
            tx.execute(
                "DELETE FROM tasks WHERE tenant = ?1 AND scope = ?2 AND task_id = ?3",
                params![key.tenant, key.scope, key.task_id],
            )
            .map(drop)
        })
        .await
    }

    async fn mark_started(
        &self,
        key: &TaskKey,
        replica_id: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let (key, replica) = (key.clone(), replica_id.to_owned());
        self.call(true, move |tx| {
            update(
                tx,
                &key,
                "state = 'running', replica_id = ?4, started_at_ms = ?5",
                &[&replica, &at_ms],
            )
        })
        .await
    }

    async fn mark_requeued(&self, key: &TaskKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.call(true, move |tx| {
            update(
                tx,
                &key,
                "state = 'queued', replica_id = NULL, started_at_ms = NULL",
                &[],
            )
        })
        .await
    }

    async fn append_events(&self, key: &TaskKey, tail: LogTail) -> Result<(), StoreError> {
        let key = key.clone();
        self.call(true, move |tx| match get_record(tx, &key)? {
            Some(record) if !record.state.is_terminal() => write_tail(tx, &key, &tail),
            _ => Ok(()),
        })
        .await
    }

    async fn finish(&self, key: &TaskKey, finish: Finish) -> Result<(), StoreError> {
        let key = key.clone();
        self.call(true, move |tx| {
            let finish_reason = finish.finish_reason.as_ref().map(enum_str);
            let error = finish.error.as_ref().map(json_text);
            update(
                tx,
                &key,
                "state = ?4, finished_at_ms = ?5, finish_reason = ?6, error = ?7",
                &[
                    &finish.state.as_str(),
                    &finish.finished_at_ms,
                    &finish_reason,
                    &error,
                ],
            )?;
            write_tail(tx, &key, &finish.tail)
        })
        .await
    }

    async fn get(&self, key: &TaskKey) -> Result<Option<TaskRecord>, StoreError> {
        let key = key.clone();
        self.call(false, move |tx| get_record(tx, &key)).await
    }

    async fn events(&self, key: &TaskKey) -> Result<Vec<StreamEvent>, StoreError> {
        let key = key.clone();
        self.call(false, move |tx| {
            let mut query = tx.prepare_cached(
                "SELECT e.event FROM task_events e JOIN tasks t ON t.seq = e.task_seq \
                 WHERE t.tenant = ?1 AND t.scope = ?2 AND t.task_id = ?3 ORDER BY e.idx",
            )?;
            let rows = query.query_map(params![key.tenant, key.scope, key.task_id], |row| {
                let text: String = row.get(0)?;
                json_col::<StreamEvent>(0, &text)
            })?;
            rows.collect()
        })
        .await
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<TaskRecord>, StoreError> {
        self.call(false, move |tx| {
            let mut query = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE tenant = ?1 AND scope = ?2 \
                 AND (?3 IS NULL OR state = ?3) AND seq > ?4 ORDER BY seq LIMIT ?5"
            ))?;
            let rows = query.query_map(
                params![
                    filter.tenant,
                    filter.scope,
                    filter.state.map(TaskState::as_str),
                    filter.after_seq.unwrap_or(0),
                    filter.limit,
                ],
                read_record,
            )?;
            rows.collect()
        })
        .await
    }

    async fn unfinished(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.call(false, |tx| {
            let mut query = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE state IN ('queued', 'running') ORDER BY seq"
            ))?;
            let rows = query.query_map([], read_record)?;
            rows.collect()
        })
        .await
    }

    async fn unfinished_events(&self) -> Result<HashMap<i64, Vec<StreamEvent>>, StoreError> {
        self.call(false, |tx| {
            let mut query = tx.prepare_cached(
                "SELECT e.task_seq, e.event FROM task_events e JOIN tasks t ON t.seq = e.task_seq \
                 WHERE t.state IN ('queued', 'running') ORDER BY e.task_seq, e.idx",
            )?;
            let mut logs: HashMap<i64, Vec<StreamEvent>> = HashMap::new();
            let mut rows = query.query([])?;
            while let Some(row) = rows.next()? {
                let text: String = row.get(1)?;
                logs.entry(row.get(0)?)
                    .or_default()
                    .push(json_col::<StreamEvent>(1, &text)?);
            }
            Ok(logs)
        })
        .await
    }

    async fn purge_finished_before(&self, at_ms: u64) -> Result<u64, StoreError> {
        self.call(true, move |tx| {
            tx.execute(
                "DELETE FROM task_events WHERE task_seq IN \
                 (SELECT seq FROM tasks WHERE finished_at_ms IS NOT NULL AND finished_at_ms < ?1)",
                [at_ms],
            )?;
            let purged = tx.execute(
                "DELETE FROM tasks WHERE finished_at_ms IS NOT NULL AND finished_at_ms < ?1",
                [at_ms],
            )?;
            Ok(purged as u64)
        })
        .await
    }

    async fn purge_scope(&self, tenant: &str, scope: &str) -> Result<u64, StoreError> {
        let (tenant, scope) = (tenant.to_owned(), scope.to_owned());
        self.call(true, move |tx| {
            tx.execute(
                "DELETE FROM task_events WHERE task_seq IN \
                 (SELECT seq FROM tasks WHERE tenant = ?1 AND scope = ?2)",
                params![tenant, scope],
            )?;
            let purged = tx.execute(
                "DELETE FROM tasks WHERE tenant = ?1 AND scope = ?2",
                params![tenant, scope],
            )?;
            Ok(purged as u64)
        })
        .await
    }

    fn refuse_writes(&self, refuse: bool) {
        self.refuse_writes.set(refuse);
    }
}
