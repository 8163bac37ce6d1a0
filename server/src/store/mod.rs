//! Durable task store (ORCH-7001..ORCH-7006). Callers see only this trait:
//! row-level operations with clear claim semantics (a task is `queued` until
//! `mark_started` claims it), implemented by SQLite (embedded, the default) and
//! PostgreSQL (several daemons on one database). Each backend keeps a schema
//! version and applies its numbered migrations at open; a store whose schema is
//! newer than the binary knows is refused ([`migrations_to_run`]).

mod postgres;
mod sqlite;

pub use postgres::{ClusterTable, LeaseRow, PostgresStore};
pub use sqlite::SqliteStore;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use std::collections::HashMap;

use contracts::{ErrorEnvelope, FinishReason, Priority, StreamEvent, TaskRequest, TaskState};

/// A task's identity: ids are unique per (tenant, scope) namespace (ORCH-6012).
/// The default scope is the empty string. Its parts are shared strings: the
/// queue's copy of a key, and a tenant's tasks, share them (memory per
/// queued task, issue 14).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub tenant: Arc<str>,
    pub scope: Arc<str>,
    pub task_id: Arc<str>,
}

impl TaskKey {
    pub fn new(
        tenant: impl Into<Arc<str>>,
        scope: impl AsRef<str>,
        task_id: impl Into<Arc<str>>,
    ) -> Self {
        // The default scope, which most tasks are in, is one shared string.
        static DEFAULT_SCOPE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        let scope = match scope.as_ref() {
            "" => Arc::clone(DEFAULT_SCOPE.get_or_init(|| Arc::from(""))),
            scope => Arc::from(scope),
        };
        Self {
            tenant: tenant.into(),
            scope,
            task_id: task_id.into(),
        }
    }
}

/// A task waits in its tenant's line of a pool's queue (ORCH-3015).
impl crate::queue::QueueKey for TaskKey {
    type Tenant = Arc<str>;
    fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// Store-assigned admission order; the list cursor and recovery order.
    pub seq: i64,
    pub key: TaskKey,
    pub pool_id: String,
    pub priority: Priority,
    pub request: TaskRequest,
    /// SHA-256 of the canonical request body, for idempotency (ORCH-1005).
    pub body_hash: String,
    pub seed: u32,
    pub state: TaskState,
    pub replica_id: Option<String>,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Whether a token was ever delivered: decides retry vs `WORKER_RESET`.
    pub first_token: bool,
    pub tokens_out: u32,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<ErrorEnvelope>,
}

/// Events `events_from..` of a task's log, not yet in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct LogTail {
    pub events_from: usize,
    pub events: Vec<StreamEvent>,
    pub tokens_out: u32,
}

/// The terminal write of a task: its outcome and the rest of its event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub state: TaskState,
    pub finished_at_ms: u64,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<ErrorEnvelope>,
    pub tail: LogTail,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    New {
        seq: i64,
    },
    /// A task with this key already exists; nothing was written.
    Existing(Box<TaskRecord>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub tenant: String,
    pub scope: String,
    pub state: Option<TaskState>,
    /// Only tasks with `seq` greater than this.
    pub after_seq: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store refused the write: {0}")]
    WriteRefused(String),
    #[error("store failure: {0}")]
    Backend(String),
    #[error(
        "the store's schema is version {found}, newer than this orchestratord knows \
         (up to {known}): run the orchestratord release that wrote it, or point --store \
         at another store"
    )]
    SchemaTooNew { found: u32, known: u32 },
}

/// Where the tasks live: `postgres://…` (or `postgresql://…`) is a PostgreSQL
/// database, anything else a SQLite file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreLocation {
    pub fn parse(text: &str) -> Self {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Self::Postgres(text.to_owned())
        } else {
            Self::Sqlite(PathBuf::from(text))
        }
    }

    /// Opens the store, applying the migrations it lacks.
    pub async fn open(&self) -> Result<Arc<dyn TaskStore>, StoreError> {
        Ok(match self {
            Self::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
            Self::Postgres(url) => Arc::new(PostgresStore::open(url).await?),
        })
    }
}

impl std::fmt::Display for StoreLocation {
    /// A PostgreSQL URL without its password, fit for logs and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

impl From<&Path> for StoreLocation {
    fn from(path: &Path) -> Self {
        Self::Sqlite(path.to_owned())
    }
}

impl From<&PathBuf> for StoreLocation {
    fn from(path: &PathBuf) -> Self {
        Self::Sqlite(path.clone())
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(path: PathBuf) -> Self {
        Self::Sqlite(path)
    }
}

/// The migrations (numbered from 1) that bring a store at schema version `current`
/// to `known`, the number this binary has; a newer store is refused rather than
/// written by code that does not know its shape.
pub fn migrations_to_run(current: u32, known: u32) -> Result<Range<u32>, StoreError> {
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    Ok(current + 1..known + 1)
}

/// The test handle's switch that makes every write fail (`TaskStore::refuse_writes`).
#[derive(Debug, Default)]
struct WriteSwitch(AtomicBool);

impl WriteSwitch {
    fn set(&self, refuse: bool) {
        self.0.store(refuse, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.0.load(Ordering::SeqCst) {
            return Err(StoreError::WriteRefused(
                "writes are disabled by the test handle".into(),
            ));
        }
        Ok(())
    }
}

/// Column codecs both backends share: enums as their wire string, requests,
/// errors and events as JSON text.
fn enum_str<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("unit enum serializes to a string")
}

fn enum_from<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializable")
}

#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Commit a new queued task; returns the existing row instead when the
    /// key is taken (idempotent resubmission).
    async fn insert(&self, record: TaskRecord) -> Result<Inserted, StoreError>;
    /// Remove a task that was never admitted (the queue refused it after insert).
    async fn delete(&self, key: &TaskKey) -> Result<(), StoreError>;
    /// Claim a queued task for a replica.
    async fn mark_started(
        &self,
        key: &TaskKey,
        replica_id: &str,
        at_ms: u64,
    ) -> Result<(), StoreError>;
    /// Give a claimed task back to the queue (retry on another replica).
    async fn mark_requeued(&self, key: &TaskKey) -> Result<(), StoreError>;
    /// Persist more of a running task's event log, so a restart keeps what
    /// was streamed (ORCH-7003); a task with a token in the store counts as
    /// having delivered one. No effect once the task is terminal.
    async fn append_events(&self, key: &TaskKey, tail: LogTail) -> Result<(), StoreError>;
    async fn finish(&self, key: &TaskKey, finish: Finish) -> Result<(), StoreError>;
    async fn get(&self, key: &TaskKey) -> Result<Option<TaskRecord>, StoreError>;
    async fn events(&self, key: &TaskKey) -> Result<Vec<StreamEvent>, StoreError>;
    async fn list(&self, filter: ListFilter) -> Result<Vec<TaskRecord>, StoreError>;
    /// Every queued or running task, in admission order (recovery, ORCH-7002).
    async fn unfinished(&self) -> Result<Vec<TaskRecord>, StoreError>;
    /// The event logs of every queued or running task that has one, by
    /// `seq`, in one read: what recovery resumes them from.
    async fn unfinished_events(&self) -> Result<HashMap<i64, Vec<StreamEvent>>, StoreError>;
    /// Drop terminal tasks finished before `at_ms` (retention, ORCH-7004).
    async fn purge_finished_before(&self, at_ms: u64) -> Result<u64, StoreError>;
    /// Delete every task of a namespace and its event log (ORCH-6013).
    async fn purge_scope(&self, tenant: &str, scope: &str) -> Result<u64, StoreError>;
    /// Writes from now on under lease `epoch` (ORCH-7013): the unfinished tasks become
    /// this epoch's, and a write of a dispatcher of an earlier epoch (a daemon that
    /// was paused past its lease) is refused with [`StoreError::WriteRefused`] instead
    /// of overwriting them. SQLite has one daemon and nothing to fence.
    async fn fence(&self, _epoch: i64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Test hook: make every write fail, to reach `INTERNAL` for real.
    fn refuse_writes(&self, refuse: bool);
}
