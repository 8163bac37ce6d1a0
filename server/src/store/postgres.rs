//! PostgreSQL (ORCH-7006). Each operation is one statement (one transaction) on a
//! pooled connection, prepared once per connection; PostgreSQL's own group commit
//! batches the fsyncs of concurrent commits, so there is no writer thread here. A
//! task's log write updates its row first in the same statement, so the row lock
//! orders a flush and the terminal write that race.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use contracts::{StreamEvent, TaskState};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    Finish, Inserted, ListFilter, LogTail, StoreError, TaskKey, TaskRecord, TaskStore, WriteSwitch,
    enum_from, enum_str, json_text, migrations_to_run,
};

/// Schema migrations, version `i + 1` at index `i`; the applied version is the one
/// row of `orchqueue_schema`.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE tasks (
    seq BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    task_id TEXT NOT NULL,
    pool_id TEXT NOT NULL,
    priority TEXT NOT NULL,
    request TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    seed BIGINT NOT NULL,
    state TEXT NOT NULL,
    replica_id TEXT,
    submitted_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    finished_at_ms BIGINT,
    first_token BOOLEAN NOT NULL DEFAULT FALSE,
    tokens_out BIGINT NOT NULL DEFAULT 0,
    finish_reason TEXT,
    error TEXT,
    UNIQUE (tenant, scope, task_id)
);
CREATE INDEX tasks_by_state ON tasks (state, seq);
CREATE INDEX tasks_by_finish ON tasks (finished_at_ms) WHERE finished_at_ms IS NOT NULL;
CREATE TABLE task_events (
    task_seq BIGINT NOT NULL REFERENCES tasks (seq) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (task_seq, idx)
);
",
    "
CREATE TABLE orchqueue_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT,
    address TEXT,
    epoch BIGINT NOT NULL,
    renewals BIGINT NOT NULL
);
INSERT INTO orchqueue_lease VALUES (1, NULL, NULL, 0, 0);
CREATE TABLE orchqueue_config (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    hash TEXT NOT NULL,
    config TEXT NOT NULL
);
",
    // The lease epoch a task's writes belong to (ORCH-7013, `TaskStore::fence`).
    "
ALTER TABLE tasks ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
",
];

/// Daemons starting together take this advisory lock to migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6f72_6368_7175_6575; // "orchqueu"

/// Connections per daemon: admission, streaming reads and the runners' writes
/// share them; PostgreSQL's default `max_connections` (100) allows several daemons.
const POOL_SIZE: usize = 16;

const COLUMNS: &str = "seq, tenant, scope, task_id, pool_id, priority, request, body_hash, seed, \
    state, replica_id, submitted_at_ms, started_at_ms, finished_at_ms, first_token, tokens_out, \
    finish_reason, error";

const BY_KEY: &str = "tenant = $1 AND scope = $2 AND task_id = $3";

pub struct PostgresStore {
    pool: Pool,
    refuse_writes: WriteSwitch,
    /// The lease epoch this store writes under ([`TaskStore::fence`]); 0 = unfenced.
    epoch: AtomicI64,
}

/// The URL with its password (in the user info or as `password=`) replaced, for
/// messages.
pub(super) fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((user_info, host)) => {
                    let user = user_info.split(':').next().unwrap_or_default();
                    let hidden = if user_info.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}{tail}")
                }
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => param.to_owned(),
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// tokio-postgres says only "db error" of a server's error: the server's own
/// message (and its detail) is what an operator needs.
fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Backend(match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
            None => format!("{}: {}", db.code().code(), db.message()),
        }),
        None => backend(e),
    }
}

impl PostgresStore {
    /// Connects and applies the migrations the database lacks.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url)?;
        store.migrate(MIGRATIONS.len() as u32).await?;
        // Every connection opened now, not by the first burst of work: a new
        // connection is a new PostgreSQL backend process, milliseconds that the
        // first tokens of that burst would otherwise wait for.
        let warm = futures::future::try_join_all((0..POOL_SIZE).map(|_| store.client())).await?;
        drop(warm);
        Ok(store)
    }

    /// A database migrated only up to schema `version`: how tests make an older store
    /// to show that opening it migrates it.
    pub async fn open_at_version(url: &str, version: u32) -> Result<(), StoreError> {
        Self::connect(url)?.migrate(version).await
    }

    /// Creates a new, empty database on the server of `url` (whose database is only
    /// used to connect) and returns its URL: one per test or benchmark run.
    pub async fn create_database(url: &str) -> Result<String, StoreError> {
        let name = format!("orchqueue_{}", uuid::Uuid::new_v4().simple());
        let store = Self::connect(url)?;
        store
            .client()
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(pg)?;
        let (server, query) = match url.split_once('?') {
            Some((server, query)) => (server, format!("?{query}")),
            None => (url, String::new()),
        };
        let (scheme, rest) = server.split_once("://").unwrap_or(("postgres", server));
        let authority = rest.split('/').next().unwrap_or(rest);
        Ok(format!("{scheme}://{authority}/{name}{query}"))
    }

    fn connect(url: &str) -> Result<Self, StoreError> {
        let where_ = redact(url);
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("{where_}: not a PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Backend(format!("{where_}: {e}")))?;
        Ok(Self {
            pool,
            refuse_writes: WriteSwitch::default(),
            epoch: AtomicI64::new(0),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| backend(format!("no connection: {e}")))
    }

    async fn migrate(&self, target: u32) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS orchqueue_schema (version INTEGER NOT NULL)")
            .await
            .map_err(pg)?;
        let current = tx
            .query_opt("SELECT version FROM orchqueue_schema", &[])
            .await
            .map_err(pg)?
            .map_or(0, |row| row.get::<_, i32>(0) as u32);
        let pending = migrations_to_run(current, MIGRATIONS.len() as u32)?;
        let mut reached = current;
        for version in pending.filter(|v| *v <= target) {
            tx.batch_execute(MIGRATIONS[version as usize - 1])
                .await
                .map_err(|e| StoreError::Backend(format!("migration {version}: {}", pg(e))))?;
            reached = version;
        }
        if reached != current {
            tx.execute("DELETE FROM orchqueue_schema", &[])
                .await
                .map_err(pg)?;
            tx.execute(
                "INSERT INTO orchqueue_schema (version) VALUES ($1)",
                &[&(reached as i32)],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }
}

fn read_record(row: &Row) -> Result<TaskRecord, StoreError> {
    let decode = |column: &str, e: serde_json::Error| backend(format!("column {column}: {e}"));
    let ms = |index: usize| row.get::<_, Option<i64>>(index).map(|v| v as u64);
    Ok(TaskRecord {
        seq: row.get(0),
        key: TaskKey::new(
            row.get::<_, &str>(1),
            row.get::<_, &str>(2),
            row.get::<_, &str>(3),
        ),
        pool_id: row.get(4),
        priority: enum_from(row.get(5)).map_err(|e| decode("priority", e))?,
        request: serde_json::from_str(row.get(6)).map_err(|e| decode("request", e))?,
        body_hash: row.get(7),
        seed: row.get::<_, i64>(8) as u32,
        state: enum_from(row.get(9)).map_err(|e| decode("state", e))?,
        replica_id: row.get(10),
        submitted_at_ms: row.get::<_, i64>(11) as u64,
        started_at_ms: ms(12),
        finished_at_ms: ms(13),
        first_token: row.get(14),
        tokens_out: row.get::<_, i64>(15) as u32,
        finish_reason: row
            .get::<_, Option<&str>>(16)
            .map(enum_from)
            .transpose()
            .map_err(|e| decode("finish_reason", e))?,
        error: row
            .get::<_, Option<&str>>(17)
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| decode("error", e))?,
    })
}

/// Statements are prepared once per connection (deadpool's statement cache), so each
/// is one round trip after the first, not a parse and an execute.
async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(pg)?;
    client.execute(&statement, params).await.map_err(pg)
}

async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(pg)?;
    client.query(&statement, params).await.map_err(pg)
}

async fn query_opt(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(pg)?;
    client.query_opt(&statement, params).await.map_err(pg)
}

async fn get_record(
    client: &impl GenericClient,
    key: &TaskKey,
    lock: &str,
) -> Result<Option<TaskRecord>, StoreError> {
    let row = query_opt(
        client,
        &format!("SELECT {COLUMNS} FROM tasks WHERE {BY_KEY} {lock}"),
        &[&&*key.tenant, &&*key.scope, &&*key.task_id],
    )
    .await?;
    row.as_ref().map(read_record).transpose()
}

/// A task's new tokens and events in one statement, so one round trip: the CTE
/// updates (and row-locks) the task, and the events are upserted by index only when
/// it matched, as the SQLite store does — the terminal write (`finish`: more
/// columns in `set`) rewrites any index a racing flush wrote before it, and a flush
/// after the end (`live_only`) matches no row and writes nothing. Parameters `$1..$6`
/// are the key and the tail; `set` uses `$7` and on for `values`; the fence comes last.
async fn write_tail(
    client: &impl GenericClient,
    key: &TaskKey,
    tail: &LogTail,
    set: &str,
    values: &[&(dyn ToSql + Sync)],
    live_only: bool,
    epoch: i64,
) -> Result<(), StoreError> {
    let live = if live_only {
        "AND state IN ('queued', 'running')"
    } else {
        ""
    };
    let indexes: Vec<i32> = (0..tail.events.len())
        .map(|offset| (tail.events_from + offset) as i32)
        .collect();
    let events: Vec<String> = tail.events.iter().map(json_text).collect();
    let tokens_out = i64::from(tail.tokens_out);
    let (tenant, scope, task_id) = (&*key.tenant, &*key.scope, &*key.task_id);
    let mut params: Vec<&(dyn ToSql + Sync)> =
        vec![&tenant, &scope, &task_id, &tokens_out, &indexes, &events];
    params.extend_from_slice(values);
    params.push(&epoch);
    let fence = params.len();
    let written = execute(
        client,
        &format!(
            "WITH task AS (UPDATE tasks SET tokens_out = $4::BIGINT, \
             first_token = first_token OR $4::BIGINT > 0 {set} WHERE {BY_KEY} {live} \
             AND epoch <= ${fence} RETURNING seq) \
             INSERT INTO task_events (task_seq, idx, event) \
             SELECT task.seq, e.idx, e.event \
             FROM task, UNNEST($5::INTEGER[], $6::TEXT[]) AS e (idx, event) \
             ON CONFLICT (task_seq, idx) DO UPDATE SET event = EXCLUDED.event"
        ),
        &params,
    )
    .await?;
    if written == 0 {
        check_fence(client, key, epoch).await?;
    }
    Ok(())
}

/// A write that matched no row: refused if the task now belongs to a later epoch
/// (another daemon dispatches it, ORCH-7013), else it was a no-op (a flush after the
/// end).
async fn check_fence(
    client: &impl GenericClient,
    key: &TaskKey,
    epoch: i64,
) -> Result<(), StoreError> {
    let row = query_opt(
        client,
        &format!("SELECT epoch FROM tasks WHERE {BY_KEY}"),
        &[&&*key.tenant, &&*key.scope, &&*key.task_id],
    )
    .await?;
    match row.map(|row| row.get::<_, i64>(0)) {
        Some(owner) if owner > epoch => Err(fenced(owner, epoch)),
        _ => Ok(()),
    }
}

fn fenced(owner: i64, epoch: i64) -> StoreError {
    StoreError::WriteRefused(format!(
        "this daemon dispatched under lease epoch {epoch}, and the dispatcher of epoch \
         {owner} owns the task now (ORCH-7013)"
    ))
}

impl PostgresStore {
    async fn update(
        &self,
        key: &TaskKey,
        set: &str,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<(), StoreError> {
        self.refuse_writes.check()?;
        let epoch = self.epoch();
        let (tenant, scope, task_id) = (&*key.tenant, &*key.scope, &*key.task_id);
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![&tenant, &scope, &task_id];
        all.extend_from_slice(values);
        all.push(&epoch);
        let client = self.client().await?;
        let updated = execute(
            &client,
            &format!(
                "UPDATE tasks SET {set} WHERE {BY_KEY} AND epoch <= ${}",
                all.len()
            ),
            &all,
        )
        .await?;
        if updated == 0 {
            check_fence(&client, key, epoch).await?;
        }
        Ok(())
    }

    fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn insert(&self, record: TaskRecord) -> Result<Inserted, StoreError> {
        self.refuse_writes.check()?;
        let epoch = self.epoch();
        let client = self.client().await?;
        let key = &record.key;
        let inserted = query_opt(
            &client,
            "INSERT INTO tasks (tenant, scope, task_id, pool_id, priority, request, \
                 body_hash, seed, state, submitted_at_ms, epoch) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::BIGINT \
                 WHERE $11::BIGINT = 0 OR $11::BIGINT = (SELECT epoch FROM orchqueue_lease WHERE id = 1) \
                 ON CONFLICT (tenant, scope, task_id) DO NOTHING RETURNING seq",
            &[
                &&*key.tenant,
                &&*key.scope,
                &&*key.task_id,
                &record.pool_id,
                &enum_str(&record.priority),
                &json_text(&record.request),
                &record.body_hash,
                &i64::from(record.seed),
                &TaskState::Queued.as_str(),
                &(record.submitted_at_ms as i64),
                &epoch,
            ],
        )
        .await?;
        if let Some(row) = inserted {
            return Ok(Inserted::New { seq: row.get(0) });
        }
        match get_record(&client, key, "").await? {
            Some(existing) => Ok(Inserted::Existing(Box::new(existing))),
            None if epoch != 0 => {
                let lease = query_opt(
                    &client,
                    "SELECT epoch FROM orchqueue_lease WHERE id = 1",
                    &[],
                )
                .await?
                .map_or(0, |row| row.get::<_, i64>(0));
                Err(fenced(lease, epoch))
            }
            // Deleted between the conflict and the read: a purge raced the resubmission.
            None => Err(backend("the task was deleted while it was resubmitted")),
        }
    }

    async fn delete(&self, key: &TaskKey) -> Result<(), StoreError> {
        self.refuse_writes.check()?;
        execute(
            &self.client().await?,
            &format!("DELETE FROM tasks WHERE {BY_KEY} AND epoch <= $4"),
            &[&&*key.tenant, &&*key.scope, &&*key.task_id, &self.epoch()],
        )
        .await?;
        Ok(())
    }

    async fn mark_started(
        &self,
        key: &TaskKey,
        replica_id: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.update(
            key,
            "state = 'running', replica_id = $4, started_at_ms = $5",
            &[&replica_id, &(at_ms as i64)],
        )
        .await
    }

    async fn mark_requeued(&self, key: &TaskKey) -> Result<(), StoreError> {
        self.update(
            key,
            "state = 'queued', replica_id = NULL, started_at_ms = NULL",
            &[],
        )
        .await
    }

    async fn append_events(&self, key: &TaskKey, tail: LogTail) -> Result<(), StoreError> {
        self.refuse_writes.check()?;
        write_tail(
            &self.client().await?,
            key,
            &tail,
            "",
            &[],
            true,
            self.epoch(),
        )
        .await
    }

    async fn finish(&self, key: &TaskKey, finish: Finish) -> Result<(), StoreError> {
        self.refuse_writes.check()?;
        let finish_reason = finish.finish_reason.as_ref().map(enum_str);
        let error = finish.error.as_ref().map(json_text);
        let finished_at_ms = finish.finished_at_ms as i64;
        write_tail(
            &self.client().await?,
            key,
            &finish.tail,
            ", state = $7, finished_at_ms = $8, finish_reason = $9, error = $10",
            &[
                &finish.state.as_str(),
                &finished_at_ms,
                &finish_reason,
                &error,
            ],
            false,
            self.epoch(),
        )
        .await
    }

    async fn get(&self, key: &TaskKey) -> Result<Option<TaskRecord>, StoreError> {
        get_record(&self.client().await?, key, "").await
    }

    async fn events(&self, key: &TaskKey) -> Result<Vec<StreamEvent>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT e.event FROM task_events e JOIN tasks t ON t.seq = e.task_seq \
                 WHERE t.tenant = $1 AND t.scope = $2 AND t.task_id = $3 ORDER BY e.idx",
            &[&&*key.tenant, &&*key.scope, &&*key.task_id],
        )
        .await?;
        rows.iter()
            .map(|row| serde_json::from_str(row.get(0)).map_err(|e| backend(format!("event: {e}"))))
            .collect()
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = query(
            &self.client().await?,
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE tenant = $1 AND scope = $2 \
                     AND ($3::TEXT IS NULL OR state = $3) AND seq > $4 ORDER BY seq LIMIT $5"
            ),
            &[
                &filter.tenant,
                &filter.scope,
                &filter.state.map(TaskState::as_str),
                &filter.after_seq.unwrap_or(0),
                &i64::from(filter.limit),
            ],
        )
        .await?;
        rows.iter().map(read_record).collect()
    }

    async fn unfinished(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = query(
            &self.client().await?,
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE state IN ('queued', 'running') ORDER BY seq"
            ),
            &[],
        )
        .await?;
        rows.iter().map(read_record).collect()
    }

    async fn unfinished_events(&self) -> Result<HashMap<i64, Vec<StreamEvent>>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT e.task_seq, e.event FROM task_events e JOIN tasks t ON t.seq = e.task_seq \
                 WHERE t.state IN ('queued', 'running') ORDER BY e.task_seq, e.idx",
            &[],
        )
        .await?;
        let mut logs: HashMap<i64, Vec<StreamEvent>> = HashMap::new();
        for row in &rows {
            let event =
                serde_json::from_str(row.get(1)).map_err(|e| backend(format!("event: {e}")))?;
            logs.entry(row.get(0)).or_default().push(event);
        }
        Ok(logs)
    }

    async fn purge_finished_before(&self, at_ms: u64) -> Result<u64, StoreError> {
        self.refuse_writes.check()?;
        execute(
            &self.client().await?,
            "DELETE FROM tasks WHERE finished_at_ms IS NOT NULL AND finished_at_ms < $1",
            &[&(at_ms as i64)],
        )
        .await
    }

    async fn purge_scope(&self, tenant: &str, scope: &str) -> Result<u64, StoreError> {
        self.refuse_writes.check()?;
        execute(
            &self.client().await?,
            "DELETE FROM tasks WHERE tenant = $1 AND scope = $2 AND epoch <= $3",
            &[&tenant, &scope, &self.epoch()],
        )
        .await
    }

    async fn fence(&self, epoch: i64) -> Result<(), StoreError> {
        // The unfinished tasks are this epoch's from now on: a write of an earlier
        // dispatcher to any of them matches no row.
        execute(
            &self.client().await?,
            "UPDATE tasks SET epoch = $1 WHERE state IN ('queued', 'running') AND epoch < $1",
            &[&epoch],
        )
        .await?;
        self.epoch.store(epoch, Ordering::SeqCst);
        Ok(())
    }

    fn refuse_writes(&self, refuse: bool) {
        self.refuse_writes.set(refuse);
    }
}

/// The dispatcher lease as one daemon read it (ORCH-7013): who holds it, where
/// that daemon listens, the epoch of its tenure and how often it renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub holder: Option<String>,
    pub address: Option<String>,
    pub epoch: i64,
    pub renewals: i64,
}

/// The rows several daemons share beyond the tasks: the lease and the cluster's
/// configuration. Its own connection, so a renewal never waits behind the task
/// traffic of the pool.
pub struct ClusterTable {
    client: tokio_postgres::Client,
}

impl ClusterTable {
    /// Connects to a store [`PostgresStore::open`] has migrated.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the cluster connection ended");
            }
        });
        Ok(Self { client })
    }

    pub async fn lease(&self) -> Result<LeaseRow, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT holder, address, epoch, renewals FROM orchqueue_lease WHERE id = 1",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(LeaseRow {
            holder: row.get(0),
            address: row.get(1),
            epoch: row.get(2),
            renewals: row.get(3),
        })
    }

    /// Takes the lease if it is still as `seen` (nobody renewed or took it since):
    /// the new epoch, or `None` when another daemon moved first.
    pub async fn take(
        &self,
        seen: &LeaseRow,
        holder: &str,
        address: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = self
            .client
            .query_opt(
                "UPDATE orchqueue_lease SET holder = $1, address = $2, epoch = epoch + 1, \
                 renewals = 0 WHERE id = 1 AND epoch = $3 AND renewals = $4 RETURNING epoch",
                &[&holder, &address, &seen.epoch, &seen.renewals],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Renews the lease of `epoch`; false when it is no longer this daemon's.
    pub async fn renew(&self, epoch: i64, holder: &str) -> Result<bool, StoreError> {
        let renewed = self
            .client
            .execute(
                "UPDATE orchqueue_lease SET renewals = renewals + 1 \
                 WHERE id = 1 AND epoch = $1 AND holder = $2",
                &[&epoch, &holder],
            )
            .await
            .map_err(pg)?;
        Ok(renewed == 1)
    }

    /// Gives the lease up at a clean stop, so a follower takes over at once.
    pub async fn release(&self, epoch: i64, holder: &str) -> Result<(), StoreError> {
        self.client
            .execute(
                "UPDATE orchqueue_lease SET holder = NULL, address = NULL, \
                 renewals = renewals + 1 WHERE id = 1 AND epoch = $1 AND holder = $2",
                &[&epoch, &holder],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// The cluster's configuration: stores `config` when there is none yet and
    /// returns the one stored.
    pub async fn config_or_store(&self, hash: &str, config: &str) -> Result<String, StoreError> {
        self.client
            .execute(
                "INSERT INTO orchqueue_config (id, hash, config) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO NOTHING",
                &[&hash, &config],
            )
            .await
            .map_err(pg)?;
        let row = self
            .client
            .query_one("SELECT config FROM orchqueue_config WHERE id = 1", &[])
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    /// Replaces the cluster's configuration: only when no daemon dispatches.
    pub async fn replace_config(&self, hash: &str, config: &str) -> Result<(), StoreError> {
        self.client
            .execute(
                "UPDATE orchqueue_config SET hash = $1, config = $2 WHERE id = 1",
                &[&hash, &config],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redact("postgres://orch:s3cret@127.0.0.1:5432/db"),
            "postgres://orch:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact("postgres://orch@127.0.0.1/db"),
            "postgres://orch@127.0.0.1/db"
        );
        assert_eq!(
            redact("postgresql://localhost/db"),
            "postgresql://localhost/db"
        );
        assert_eq!(
            redact("postgres://localhost/db?user=orch&password=s3cret&sslmode=disable"),
            "postgres://localhost/db?user=orch&password=***&sslmode=disable"
        );
    }
}
