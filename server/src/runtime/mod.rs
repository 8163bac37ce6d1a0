//! The orchestrator at run time: admission, dispatch, the task runner, cancel,
//! reads, recovery and shutdown. Pure decisions are delegated to `queue`,
//! `placement` and `admission`; durable state to `store`.

mod control;
mod pool;
mod runner;
mod sessions;
mod task;
mod tenants;

pub use pool::{Capacity, Pool, Replica, ReplicaHealth};
pub use sessions::{SessionKey, Sessions};
use task::LiveTasks;
pub use task::{LiveTask, Outcome};
pub use tenants::{Auth, DEFAULT_TENANT, Tenant, Tenants, key_hash};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contracts::config::Config;
use contracts::{
    AdmissionResponse, ErrorCode, RejectPolicy, StreamEvent, TaskList, TaskRequest, TaskState,
    TaskStatus,
};
use futures::Stream;

use crate::admission;
use crate::clock::Clock;
use crate::engines;
use crate::error::OrchError;
use crate::queue::{self, Admission, Share};
use crate::store::{Inserted, ListFilter, TaskKey, TaskRecord, TaskStore};

pub struct Orchestrator {
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub store: Arc<dyn TaskStore>,
    pub clock: Clock,
    live: Mutex<LiveTasks>,
    pub tenants: Tenants,
    sessions: Mutex<Sessions>,
    accepting: AtomicBool,
    stopped: AtomicBool,
    /// When a shutdown's grace ends (epoch ms), once one began.
    grace_ends_ms: AtomicU64,
    retention_ms: u64,
    /// This server's Prometheus registry (ORCH-7101).
    pub metrics: crate::metrics::Metrics,
    /// Test hook: how long an admission waits between its insert and the queue.
    pub(crate) admission_pause_ms: AtomicU64,
}

/// Who this daemon is: its name in metrics, and the cluster counters they include.
#[derive(Debug, Clone, Default)]
pub struct Daemon {
    pub instance: String,
    pub cluster: crate::cluster::ClusterMetrics,
}

/// Where a stream reader resumes (ORCH-1104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    FromStart,
    AfterToken(u32),
}

/// An admitted task, and its prompt's length in the engine's tokens (the
/// OpenAI surface's `usage`).
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub response: AdmissionResponse,
    pub prompt_tokens: u32,
}

impl Orchestrator {
    /// Build pools and replicas from config; replicas start `Starting` and
    /// are probed once before this returns.
    pub async fn new(
        config: &Config,
        store: Arc<dyn TaskStore>,
        clock: Clock,
        daemon: &Daemon,
    ) -> Arc<Self> {
        let pools = config
            .pools
            .iter()
            .map(|pool_config| {
                let replicas = pool_config
                    .replicas
                    .iter()
                    .map(|replica| {
                        let engine = engines::build(&replica.engine);
                        Arc::new(Replica::new(replica.id.clone(), engine))
                    })
                    .collect();
                let pool = Arc::new(Pool::new(pool_config.clone(), replicas));
                (pool_config.id.clone(), pool)
            })
            .collect();
        let orchestrator = Arc::new(Self {
            pools,
            store,
            clock,
            live: Mutex::new(LiveTasks::default()),
            tenants: Tenants::new(&config.tenants),
            sessions: Mutex::new(Sessions::new(config.sessions.clone())),
            accepting: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            grace_ends_ms: AtomicU64::new(0),
            retention_ms: config.retention_ms,
            admission_pause_ms: AtomicU64::new(0),
            metrics: crate::metrics::Metrics::new(
                &daemon.instance,
                config.pools.iter().map(|p| p.id.as_str()),
                &daemon.cluster,
            ),
        });
        for pool in orchestrator.pools.values() {
            for replica in pool.replicas() {
                let health = replica.engine.health().await;
                replica.record_health(pool.vet(&replica, health));
            }
        }
        orchestrator
    }

    /// Start the background loops: one dispatcher per pool, one health
    /// monitor per replica, the retention sweeper.
    pub fn spawn_workers(self: &Arc<Self>) {
        for pool in self.pools.values() {
            tokio::spawn(runner::dispatch_loop(Arc::clone(self), Arc::clone(pool)));
            for replica in pool.replicas() {
                tokio::spawn(health_loop(Arc::clone(self), Arc::clone(pool), replica));
            }
        }
        tokio::spawn(retention_loop(Arc::clone(self)));
    }

    fn live(&self) -> std::sync::MutexGuard<'_, LiveTasks> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live_task(&self, key: &TaskKey) -> Option<Arc<LiveTask>> {
        self.live().get(key).cloned()
    }

    pub fn pool(&self, pool_id: &str) -> Option<&Arc<Pool>> {
        self.pools.get(pool_id)
    }

    /// Whether admission is open (not shutting down).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub fn running_tasks(&self) -> usize {
        self.live()
            .values()
            .filter(|t| t.state() == TaskState::Running)
            .count()
    }

    /// `POST /v1/tasks` (ORCH-1001..ORCH-1009, ORCH-3004..ORCH-3006,
    /// ORCH-3010, ORCH-5010, ORCH-7001). The admission runs to its end in a task of
    /// its own: were it dropped with a client that goes away (a timeout, a killed
    /// follower of a cluster), the insert could have committed and the task never
    /// reached the queue, stored as queued and never dispatched.
    pub async fn submit(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        request: TaskRequest,
    ) -> Result<Admitted, OrchError> {
        let (orchestrator, tenant) = (Arc::clone(self), Arc::clone(tenant));
        tokio::spawn(async move { orchestrator.validate_and_admit(&tenant, request).await })
            .await
            .unwrap_or_else(|e| Err(OrchError::internal(format!("the admission failed: {e}"))))
    }

    async fn validate_and_admit(
        &self,
        tenant: &Tenant,
        request: TaskRequest,
    ) -> Result<Admitted, OrchError> {
        admission::validate_syntax(&request)?;
        let pool_id = request.pool_id.clone().unwrap_or_else(|| "default".into());
        let pool = self.pools.get(&pool_id).cloned().ok_or_else(|| {
            let known: Vec<_> = self.pools.keys().map(String::as_str).collect();
            OrchError::invalid(
                "pool_id",
                format!(
                    "unknown pool {pool_id:?}; known pools: {}",
                    known.join(", ")
                ),
            )
        })?;
        admission::validate_for_pool(&request, &pool.config)?;
        let replicas = pool.replicas();
        let counter = replicas.first().ok_or_else(|| {
            OrchError::new(
                ErrorCode::PoolUnavailable,
                format!("pool {pool_id} has no replicas"),
            )
        })?;
        let prompt_tokens = match &request.messages {
            None => counter.engine.count_tokens(&request.prompt).await,
            Some(messages) => match counter.engine.chat_prompt(messages).await {
                Ok(prompt) => counter.engine.count_tokens(&prompt).await,
                Err(e) => Err(e),
            },
        }
        .map_err(|e| OrchError::invalid(admission::input_field(&request), e))?;
        let ctx_limit = replicas
            .iter()
            .map(|r| r.engine.properties().ctx_limit)
            .min()
            .unwrap_or(0);
        admission::check_context(prompt_tokens, request.max_tokens, ctx_limit)?;
        let response = self
            .admit(tenant, request, &pool, counter, prompt_tokens)
            .await?;
        Ok(Admitted {
            response,
            prompt_tokens,
        })
    }

    /// [`Self::submit`] past validation and the token budget.
    async fn admit(
        &self,
        tenant: &Tenant,
        request: TaskRequest,
        pool: &Arc<Pool>,
        counter: &Arc<Replica>,
        prompt_tokens: u32,
    ) -> Result<AdmissionResponse, OrchError> {
        let pool_id = pool.id().to_owned();

        let key = TaskKey::new(
            Arc::clone(&tenant.shared_id),
            request.scope.as_deref().unwrap_or_default(),
            request
                .task_id
                .clone()
                .unwrap_or_else(|| format!("t-{}", uuid::Uuid::new_v4().simple())),
        );
        let body_hash = admission::body_hash(&request);

        // An idempotent resubmission answers before any capacity check.
        if request.task_id.is_some()
            && let Some(existing) = self.existing_admission(&key, &body_hash).await?
        {
            return Ok(existing);
        }
        let cost = u64::from(prompt_tokens) + u64::from(request.max_tokens);
        if let Some(burst) = tenant.token_burst()
            && cost > burst
        {
            return Err(OrchError::invalid(
                "max_tokens",
                format!(
                    "the task costs {cost} tokens ({prompt_tokens} of prompt + max_tokens {}), more than tenant {}'s token_rate_limit ever holds ({burst}); lower max_tokens or shorten the prompt",
                    request.max_tokens, tenant.id
                ),
            ));
        }
        self.check_pool_available(pool)?;
        let priority = request.priority.unwrap_or_default();
        let refused = {
            let mut queue = pool.queue();
            queue.expire_holds(self.clock.now_ms());
            queue.would_reject(&key, priority)
        };
        if let Some(policy) = refused {
            return Err(self.rejection(pool, &key, request.task_id.is_some(), policy));
        }
        if let Err(wait_ms) = tenant.admit(self.clock.now_ms()) {
            return Err(rate_limited(
                format!(
                    "tenant {} is over its admission rate limit; retry later",
                    tenant.id
                ),
                wait_ms,
            ));
        }
        if let Err(wait_ms) = tenant.take_tokens(cost, self.clock.now_ms()) {
            return Err(rate_limited(
                format!(
                    "tenant {} is over its token rate limit: the task costs {cost} tokens and its bucket holds them again in {wait_ms} ms",
                    tenant.id
                ),
                wait_ms,
            ));
        }
        let session = request.session_id.clone().map(|session_id| SessionKey {
            tenant: key.tenant.to_string(),
            scope: key.scope.to_string(),
            session_id,
        });
        if let Some(session) = &session {
            self.sessions().begin_turn(session, self.clock.now_ms())?;
        }
        let share = Share {
            cost,
            weight: tenant.weight,
        };
        let admitted = self
            .enqueue(pool, key, request, body_hash, priority, share)
            .await;
        if admitted.is_ok() {
            self.metrics
                .enqueued(&pool_id, counter.engine.properties(), prompt_tokens);
        }
        if admitted.is_err() {
            tenant.give_back_tokens(cost, self.clock.now_ms());
            if let Some(session) = &session {
                self.sessions().cancel_turn(session);
            }
        }
        admitted
    }

    /// Store, then queue: the task is durable before it can be dispatched
    /// and before its `202` (ORCH-7001).
    async fn enqueue(
        &self,
        pool: &Arc<Pool>,
        key: TaskKey,
        request: TaskRequest,
        body_hash: String,
        priority: contracts::Priority,
        share: Share,
    ) -> Result<AdmissionResponse, OrchError> {
        let seed = request
            .seed
            .unwrap_or_else(|| admission::default_seed(&key.task_id));
        let record = TaskRecord {
            seq: 0,
            key: key.clone(),
            pool_id: pool.id().to_owned(),
            priority,
            request,
            body_hash: body_hash.clone(),
            seed,
            state: TaskState::Queued,
            replica_id: None,
            submitted_at_ms: self.clock.now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            first_token: false,
            tokens_out: 0,
            finish_reason: None,
            error: None,
        };
        match self.store.insert(record.clone()).await? {
            Inserted::New { .. } => {}
            Inserted::Existing(existing) => return self.resubmission(&existing, &body_hash),
        }
        let pause = self.admission_pause_ms.load(Ordering::SeqCst);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let task = Arc::new(self.live_task_from(&record, share, Vec::new()));
        self.live().insert(Arc::clone(&task));

        let admitted = pool.queue().admit(key.clone(), priority, share);
        let position = match admitted {
            Admission::Rejected { policy } => {
                self.live().remove(&key);
                self.store.delete(&key).await?;
                return Err(self.rejection(pool, &key, record.request.task_id.is_some(), policy));
            }
            Admission::Admitted { position, evicted } => {
                if let Some(eviction) = evicted {
                    self.evict(eviction).await;
                }
                position
            }
        };
        if let Some(at) = task.start_deadline_ms {
            pool.watch_deadline(at, key.clone());
        }
        let answer = self.admission_answer(pool, &key, position);
        task.set_admission(position, answer.predicted_start_ms);
        pool.wake.notify_one();
        tracing::info!(task_id = %key.task_id, scope = %key.scope, pool = %pool.id(), position, "task admitted");
        Ok(answer)
    }

    fn admission_answer(&self, pool: &Pool, key: &TaskKey, position: u32) -> AdmissionResponse {
        let predicted_start_ms = pool.predicted_start_ms(position);
        AdmissionResponse {
            task_id: key.task_id.to_string(),
            queue_position: position,
            predicted_start_ms,
            backoff_ms: queue::backoff_hint(predicted_start_ms).0,
        }
    }

    async fn existing_admission(
        &self,
        key: &TaskKey,
        body_hash: &str,
    ) -> Result<Option<AdmissionResponse>, OrchError> {
        if let Some(task) = self.live_task(key) {
            if !task.has_body(body_hash) {
                return Err(conflict(key));
            }
            let pool = self
                .pools
                .get(&*task.pool_id)
                .expect("live tasks name known pools");
            let position = pool.queue().position(key).unwrap_or(0);
            return Ok(Some(self.admission_answer(pool, key, position)));
        }
        match self.store.get(key).await? {
            Some(record) => self.resubmission(&record, body_hash).map(Some),
            None => Ok(None),
        }
    }

    fn resubmission(
        &self,
        record: &TaskRecord,
        body_hash: &str,
    ) -> Result<AdmissionResponse, OrchError> {
        if record.body_hash != body_hash {
            return Err(conflict(&record.key));
        }
        let position = self
            .pools
            .get(&record.pool_id)
            .and_then(|pool| pool.queue().position(&record.key));
        let pool = self.pools.get(&record.pool_id);
        Ok(match (pool, position) {
            (Some(pool), Some(position)) => self.admission_answer(pool, &record.key, position),
            _ => AdmissionResponse {
                task_id: record.key.task_id.to_string(),
                queue_position: 0,
                predicted_start_ms: 0,
                backoff_ms: queue::backoff_hint(0).0,
            },
        })
    }

    /// `503` when no replica can take work (ORCH-2013, ORCH-2014, ORCH-7007),
    /// each with the wait until that may change (ORCH-2003): a stopping
    /// server until it has stopped (its running tasks done, at most the
    /// grace), a draining pool until its deadline, an unready pool until the
    /// next health probe of a replica that is not Ready.
    fn check_pool_available(&self, pool: &Pool) -> Result<(), OrchError> {
        let now = self.clock.now_ms();
        if !self.accepting.load(Ordering::SeqCst) {
            let grace_left = self
                .grace_ends_ms
                .load(Ordering::SeqCst)
                .saturating_sub(now);
            let running_left = self
                .pools
                .values()
                .map(|p| p.forecast(now).until_idle_ms())
                .max()
                .unwrap_or(0);
            return Err(OrchError::new(
                ErrorCode::PoolUnavailable,
                "the server is shutting down and admits no new tasks",
            )
            .with_backoff(queue::backoff_hint(grace_left.min(running_left)).0));
        }
        if let Some(drain) = pool.drain() {
            return Err(OrchError::new(
                ErrorCode::PoolUnavailable,
                format!("pool {} is draining and admits no new tasks", pool.id()),
            )
            .with_backoff(queue::backoff_hint(drain.deadline_ms.saturating_sub(now)).0));
        }
        let capacity = pool.capacity();
        if capacity.ready_replicas > 0 {
            return Ok(());
        }
        let wait = queue::backoff_hint(pool.until_next_probe_ms(now)).0;
        if capacity.starting_replicas > 0 {
            return Err(OrchError::new(
                ErrorCode::PoolUnready,
                format!(
                    "pool {}: {} replica(s) starting, none Ready yet",
                    pool.id(),
                    capacity.starting_replicas
                ),
            )
            .with_backoff(wait));
        }
        let reasons: Vec<String> = pool
            .replicas()
            .iter()
            .map(|r| {
                let state = r.state();
                format!(
                    "{}: {}",
                    r.id,
                    state.last_error.as_deref().unwrap_or("down")
                )
            })
            .collect();
        Err(OrchError::new(
            ErrorCode::PoolUnavailable,
            format!(
                "pool {}: every replica is down ({})",
                pool.id(),
                reasons.join("; ")
            ),
        )
        .with_backoff(wait))
    }

    /// `429 ADMISSION_REJECT` whose backoff is the forecast wait for the queue
    /// places this task needs (ORCH-2003, ORCH-2010); under `reject`, a task
    /// that names its `task_id` keeps a place in the retry line (ORCH-3012).
    fn rejection(
        &self,
        pool: &Pool,
        key: &TaskKey,
        names_its_id: bool,
        policy: RejectPolicy,
    ) -> OrchError {
        let now = self.clock.now_ms();
        let forecast = pool.forecast(now);
        let mut queue = pool.queue();
        let places = queue.places_needed(key);
        let (wait_ms, _) = queue::backoff_hint(forecast.wait_for_places_ms(places));
        let held_for_ms = wait_ms + queue::hold_grace_ms(wait_ms);
        let held = names_its_id && queue.hold(key.clone(), now + held_for_ms);
        drop(queue);
        let policy_name = serde_json::to_value(policy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let place = match (policy, held, names_its_id) {
            (RejectPolicy::Reject, true, _) => format!(
                "{places} queue place(s) must free first; a place is held for task_id {} for {held_for_ms} ms: resubmit it after X-Backoff-Ms",
                key.task_id
            ),
            (RejectPolicy::Reject, false, true) => format!(
                "{places} queue place(s) must free first; the retry line is full, no place is held"
            ),
            (RejectPolicy::Reject, false, false) => format!(
                "{places} queue place(s) must free first; send a task_id to have a place held for the retry"
            ),
            _ => "retry later".to_owned(),
        };
        OrchError::new(
            ErrorCode::AdmissionReject,
            format!(
                "pool {} queue is full ({} tasks, policy {policy_name}); {place}",
                pool.id(),
                pool.config.queue.capacity,
            ),
        )
        .with_policy(policy)
        .with_backoff(wait_ms)
    }

    async fn evict(&self, eviction: queue::Eviction<TaskKey>) {
        let Some(task) = self.live_task(&eviction.key) else {
            return;
        };
        self.metrics.evicted(&task.pool_id, eviction.policy);
        let message = match eviction.policy {
            RejectPolicy::DropLru => {
                "evicted from a full queue to admit a newer task (policy drop-lru)"
            }
            _ => "shed from a full queue to admit an interactive task (policy shed-low-priority)",
        };
        let envelope = OrchError::new(eviction.code, message)
            .with_policy(eviction.policy)
            .envelope();
        self.finish(&task, Outcome::Error(envelope)).await;
    }

    /// Apply a terminal outcome once and persist it; the live entry is
    /// dropped afterwards and readers move to the store.
    pub async fn finish(&self, task: &Arc<LiveTask>, outcome: Outcome) -> bool {
        let Some(finish) = task.finish(outcome, self.clock.now_ms()) else {
            return false;
        };
        self.give_back_unused_tokens(task);
        if let Err(error) = self.store.finish(&task.key, finish).await {
            // The outcome is in memory and on the stream; the row stays
            // non-terminal and recovery settles it on the next start.
            tracing::error!(task_id = %task.key.task_id, %error, "could not persist a terminal task");
            return true;
        }
        self.live().remove(&task.key);
        true
    }

    /// An ended task's tokens it reserved and did not use go back to its
    /// tenant's token bucket (ORCH-3017): `max_tokens` less what it
    /// generated, or its whole cost if it never started.
    fn give_back_unused_tokens(&self, task: &LiveTask) {
        let Some(tenant) = self.tenants.get(&task.key.tenant) else {
            return;
        };
        let unused = match task.started_ms() {
            Some(_) => u64::from(task.request.max_tokens.saturating_sub(task.tokens_out())),
            None => task.share.cost,
        };
        tenant.give_back_tokens(unused, self.clock.now_ms());
    }

    /// Write a running task's new events; a failure is logged and retried
    /// with the next flush or the terminal write.
    pub async fn flush_events(&self, task: &LiveTask) {
        let Some(tail) = task.unpersisted() else {
            return;
        };
        let upto = tail.events_from + tail.events.len();
        match self.store.append_events(&task.key, tail).await {
            Ok(()) => task.mark_persisted(upto),
            Err(error) => {
                tracing::warn!(task_id = %task.key.task_id, %error, "could not persist streamed events")
            }
        }
    }

    /// `POST /v1/tasks/{id}/cancel` (ORCH-1020..ORCH-1023).
    pub async fn cancel(&self, key: &TaskKey) -> Result<(), OrchError> {
        if let Some(task) = self.live_task(key) {
            if let Some(pool) = self.pools.get(&*task.pool_id) {
                pool.queue().remove(key);
            }
            let Some(finish) = task.finish(
                Outcome::End(contracts::FinishReason::Canceled),
                self.clock.now_ms(),
            ) else {
                return Ok(());
            };
            self.give_back_unused_tokens(&task);
            self.store.finish(key, finish).await?;
            self.live().remove(key);
            self.metrics.canceled(&task.pool_id);
            tracing::info!(task_id = %key.task_id, scope = %key.scope, "task canceled");
            return Ok(());
        }
        match self.store.get(key).await? {
            Some(_) => Ok(()),
            None => Err(not_found(key)),
        }
    }

    /// `GET /v1/tasks/{id}` (ORCH-1010, ORCH-1012).
    pub async fn status(&self, key: &TaskKey) -> Result<TaskStatus, OrchError> {
        if let Some(task) = self.live_task(key) {
            let position = self
                .pools
                .get(&*task.pool_id)
                .and_then(|p| p.queue().position(key));
            return Ok(task.status(position));
        }
        let record = self.store.get(key).await?.ok_or_else(|| not_found(key))?;
        Ok(status_from_record(&record))
    }

    /// `GET /v1/tasks` (ORCH-1011): the store's rows, with live state
    /// overlaid for tasks still in memory.
    /// `after_task` (from the cursor, ORCH-1013) is the last task of the previous page.
    pub async fn list(
        &self,
        filter: ListFilter,
        after_task: Option<String>,
    ) -> Result<TaskList, OrchError> {
        let limit = filter.limit as usize;
        let after_seq = match after_task {
            None => None,
            Some(task_id) => {
                let key = TaskKey::new(filter.tenant.as_str(), filter.scope.as_str(), task_id);
                let record = self.store.get(&key).await?.ok_or_else(|| {
                    OrchError::invalid(
                        "cursor",
                        format!(
                            "continues after task {:?}, which no longer exists (purged or past retention); list again without a cursor",
                            key.task_id
                        ),
                    )
                })?;
                Some(record.seq)
            }
        };
        let listing_scope = filter.scope.clone();
        let listing_state = filter.state;
        let mut records = self
            .store
            .list(ListFilter {
                limit: filter.limit + 1,
                after_seq,
                ..filter.clone()
            })
            .await?;
        let next_cursor = (records.len() > limit).then(|| {
            records.truncate(limit);
            let listing = crate::cursor::Listing {
                tenant: &filter.tenant,
                scope: &listing_scope,
                state: listing_state,
            };
            records
                .last()
                .map(|r| crate::cursor::encode(&listing, &r.key.task_id))
                .unwrap_or_default()
        });
        let items = records
            .iter()
            .map(|record| match self.live_task(&record.key) {
                Some(task) => {
                    let position = self
                        .pools
                        .get(&*task.pool_id)
                        .and_then(|p| p.queue().position(&record.key));
                    task.status(position)
                }
                None => status_from_record(record),
            })
            .collect();
        Ok(TaskList { items, next_cursor })
    }

    /// The task's events from `resume` on, ending after the terminal event
    /// (ORCH-1101..ORCH-1104).
    pub async fn events(
        &self,
        key: &TaskKey,
        resume: Resume,
    ) -> Result<impl Stream<Item = StreamEvent> + Send + use<>, OrchError> {
        let source = match self.live_task(key) {
            Some(task) => EventSource::Live(task),
            None => {
                if self.store.get(key).await?.is_none() {
                    return Err(not_found(key));
                }
                EventSource::Stored(self.store.events(key).await?)
            }
        };
        let mut skip_through = match resume {
            Resume::FromStart => None,
            Resume::AfterToken(i) => Some(i),
        };
        let mut keep = move |event: &StreamEvent| match (skip_through, event) {
            (None, _) => true,
            (Some(last), StreamEvent::Token(token)) if token.i >= last => {
                skip_through = None;
                token.i > last
            }
            (Some(_), event) => event.is_terminal(),
        };
        Ok(async_stream::stream! {
            match source {
                EventSource::Stored(events) => {
                    for event in events {
                        if keep(&event) {
                            yield event;
                        }
                    }
                }
                EventSource::Live(task) => {
                    let mut cursor = 0;
                    loop {
                        let changed = task.changed();
                        tokio::pin!(changed);
                        changed.as_mut().enable();
                        let (events, done) = task.events_from(cursor);
                        cursor += events.len();
                        for event in events {
                            if keep(&event) {
                                yield event;
                            }
                        }
                        if done {
                            break;
                        }
                        changed.await;
                    }
                }
            }
        })
    }

    /// Requeue what the store says was admitted but not finished
    /// (ORCH-7002, ORCH-7003).
    pub async fn recover(&self) -> Result<(usize, usize), OrchError> {
        let (mut requeued, mut reset) = (0, 0);
        let mut logs = self.store.unfinished_events().await?;
        for mut record in self.store.unfinished().await? {
            // Its key shares the tenant's id, as an admitted task's does.
            if let Some(tenant) = self.tenants.get(&record.key.tenant) {
                record.key.tenant = Arc::clone(&tenant.shared_id);
            }
            let Some(pool) = self.pools.get(&record.pool_id).cloned() else {
                tracing::warn!(task_id = %record.key.task_id, pool = %record.pool_id, "recovered task names an unknown pool");
                continue;
            };
            let events = logs.remove(&record.seq).unwrap_or_default();
            let share = self.recovered_share(&record);
            let task = Arc::new(self.live_task_from(&record, share, events));
            self.live().insert(Arc::clone(&task));
            if record.state == TaskState::Running && record.first_token {
                // A reader who saw more than this resumes onto this error
                // and learns where the durable log ends (ORCH-7010).
                let durable = task.tokens_out();
                let envelope = OrchError::new(
                    ErrorCode::WorkerReset,
                    format!(
                        "the daemon stopped while the task was streaming; its first {durable} \
                         token(s) (ids 0 to {}) are durable, any later one was lost: resubmit \
                         to generate the rest",
                        durable.saturating_sub(1)
                    ),
                )
                .envelope();
                self.finish(&task, Outcome::Error(envelope)).await;
                reset += 1;
                continue;
            }
            if record.state == TaskState::Running {
                self.store.mark_requeued(&record.key).await?;
            }
            pool.queue()
                .restore(record.key.clone(), record.priority, share);
            if let Some(at) = task.start_deadline_ms {
                pool.watch_deadline(at, record.key.clone());
            }
            requeued += 1;
            pool.wake.notify_one();
        }
        Ok((requeued, reset))
    }

    /// A recovered task's share (ORCH-3015): its prompt counted as at
    /// admission is not stored, so ~4 bytes a token stands in for it.
    fn recovered_share(&self, record: &TaskRecord) -> Share {
        let prompt_tokens = admission::input_bytes(&record.request).div_ceil(4) as u64;
        Share {
            cost: prompt_tokens + u64::from(record.request.max_tokens),
            weight: self
                .tenants
                .get(&record.key.tenant)
                .map_or(1, |tenant| tenant.weight),
        }
    }

    fn live_task_from(
        &self,
        record: &TaskRecord,
        share: Share,
        events: Vec<StreamEvent>,
    ) -> LiveTask {
        let request = &record.request;
        let pool_id = match self.pools.get(&record.pool_id) {
            Some(pool) => pool.shared_id(),
            None => Arc::from(record.pool_id.as_str()),
        };
        LiveTask::new(
            record.key.clone(),
            pool_id,
            record.priority,
            request.clone(),
            record.body_hash.clone(),
            record.seed,
            record.submitted_at_ms,
            share,
            events,
        )
    }

    /// Stop admitting, let running tasks finish within `grace`, and stop
    /// dispatching; queued tasks stay queued in the store. A task still
    /// running when the grace ends is frozen and its whole log written, so a
    /// restart ends it after exactly the events its readers saw (ORCH-7007).
    pub async fn shutdown(&self, grace: Duration) {
        self.grace_ends_ms.store(
            self.clock.now_ms().saturating_add(grace.as_millis() as u64),
            Ordering::SeqCst,
        );
        self.accepting.store(false, Ordering::SeqCst);
        self.stopped.store(true, Ordering::SeqCst);
        for pool in self.pools.values() {
            pool.wake.notify_one();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.running_tasks() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let live: Vec<Arc<LiveTask>> = self.live().values().cloned().collect();
        let mut frozen = 0;
        for task in live.iter().filter(|t| t.freeze()) {
            self.flush_events(task).await;
            frozen += 1;
        }
        tracing::info!(
            frozen,
            "shutdown: admission stopped; finished work settled, the rest persisted as far as it streamed"
        );
    }

    /// Stops at once, writing nothing more: what a dispatcher that lost its lease
    /// does, since the daemon that holds it now owns these tasks (ORCH-7013).
    pub fn halt(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.stopped.store(true, Ordering::SeqCst);
        for task in self.live().values() {
            task.freeze();
        }
        for pool in self.pools.values() {
            pool.wake.notify_one();
        }
    }

    pub fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn tenant_may_start(&self, tenant: &str) -> bool {
        self.tenants.get(tenant).is_none_or(|t| t.may_start())
    }

    pub fn tenant_started(&self, tenant: &str) {
        if let Some(t) = self.tenants.get(tenant) {
            t.started();
        }
    }

    /// A task of `tenant` left its slot: its tasks waiting in any pool on
    /// its concurrency quota may start (ORCH-3011).
    pub fn tenant_stopped(&self, tenant: &str) {
        if let Some(t) = self.tenants.get(tenant) {
            t.stopped();
            for pool in self.pools.values() {
                pool.wake.notify_one();
            }
        }
    }

    /// Live (queued or running) tasks of a pool.
    pub fn pool_tasks(&self, pool_id: &str) -> Vec<Arc<LiveTask>> {
        self.live()
            .values()
            .filter(|t| &*t.pool_id == pool_id)
            .cloned()
            .collect()
    }

    /// Live tasks of a namespace.
    fn namespace_tasks(&self, tenant: &str, scope: &str) -> Vec<Arc<LiveTask>> {
        self.live()
            .values()
            .filter(|t| &*t.key.tenant == tenant && &*t.key.scope == scope)
            .cloned()
            .collect()
    }

    /// `GET /v1/sessions/{id}` (ORCH-5013).
    pub fn session_info(&self, key: &SessionKey) -> Result<contracts::SessionInfo, OrchError> {
        self.sessions().info(key, self.clock.now_ms())
    }

    /// `DELETE /v1/sessions/{id}` (ORCH-5014).
    pub fn end_session(&self, key: &SessionKey) -> Result<(), OrchError> {
        self.sessions().remove(key, self.clock.now_ms())
    }

    /// `DELETE /v1/scopes/{scope}` (ORCH-6013): cancel what runs or waits,
    /// then purge every task and session of the namespace.
    pub async fn purge_scope(
        &self,
        tenant: &str,
        scope: &str,
    ) -> Result<contracts::ScopePurge, OrchError> {
        let mut tasks_canceled = 0;
        for task in self.namespace_tasks(tenant, scope) {
            if let Some(pool) = self.pools.get(&*task.pool_id) {
                pool.queue().remove(&task.key);
            }
            if task
                .finish(
                    Outcome::End(contracts::FinishReason::Canceled),
                    self.clock.now_ms(),
                )
                .is_some()
            {
                self.give_back_unused_tokens(&task);
                tasks_canceled += 1;
            }
            self.live().remove(&task.key);
        }
        let tasks_purged = self.store.purge_scope(tenant, scope).await? as u32;
        let sessions_purged = self.sessions().purge_scope(tenant, scope);
        tracing::info!(
            tenant,
            scope,
            tasks_canceled,
            tasks_purged,
            sessions_purged,
            "scope purged"
        );
        Ok(contracts::ScopePurge {
            scope: scope.to_owned(),
            tasks_canceled,
            tasks_purged,
            sessions_purged,
        })
    }

    pub fn retention_ms(&self) -> u64 {
        self.retention_ms
    }
}

enum EventSource {
    Live(Arc<LiveTask>),
    Stored(Vec<StreamEvent>),
}

fn not_found(key: &TaskKey) -> OrchError {
    OrchError::not_found(format!("task {:?}", key.task_id))
}

fn conflict(key: &TaskKey) -> OrchError {
    OrchError::new(
        ErrorCode::Conflict,
        format!(
            "task_id {:?} was already submitted with a different body; use a new task_id",
            key.task_id
        ),
    )
}

pub fn status_from_record(record: &TaskRecord) -> TaskStatus {
    TaskStatus {
        task_id: record.key.task_id.to_string(),
        scope: (!record.key.scope.is_empty()).then(|| record.key.scope.to_string()),
        pool_id: record.pool_id.clone(),
        priority: record.priority.into(),
        state: record.state.into(),
        queue_position: None,
        replica_id: record.replica_id.clone(),
        submitted_at_ms: record.submitted_at_ms,
        started_at_ms: record.started_at_ms,
        finished_at_ms: record.finished_at_ms,
        tokens_out: record.tokens_out,
        finish_reason: record.finish_reason.map(Into::into),
        error: record.error.clone(),
    }
}

/// Probe one replica forever, with backoff while it is not Ready (ORCH-4013).
pub(super) async fn health_loop(
    orchestrator: Arc<Orchestrator>,
    pool: Arc<Pool>,
    replica: Arc<Replica>,
) {
    let interval = Duration::from_millis(pool.config.health_interval_ms.max(10));
    let cap = Duration::from_millis(pool.config.health_backoff_cap_ms);
    let mut next = interval;
    while !orchestrator.is_stopped() && !replica.retired.load(Ordering::SeqCst) {
        replica.set_next_probe_ms(orchestrator.clock.now_ms() + next.as_millis() as u64);
        tokio::time::sleep(next).await;
        let health = pool.vet(&replica, replica.engine.health().await);
        let (became_ready, failures) = replica.record_health(health);
        next = pool::probe_delay(interval, cap, failures);
        if became_ready {
            tracing::info!(pool = %pool.id(), replica = %replica.id, "replica Ready");
            pool.wake.notify_one();
        }
    }
}

/// Purge terminal tasks past the retention window (ORCH-7004).
async fn retention_loop(orchestrator: Arc<Orchestrator>) {
    while !orchestrator.is_stopped() {
        let cutoff = orchestrator
            .clock
            .now_ms()
            .saturating_sub(orchestrator.retention_ms());
        if let Err(error) = orchestrator.store.purge_finished_before(cutoff).await {
            tracing::warn!(%error, "retention sweep failed");
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// A `429` of a tenant's bucket (ORCH-3010, ORCH-3017): retry in `wait_ms`.
fn rate_limited(message: String, wait_ms: u64) -> OrchError {
    OrchError::new(ErrorCode::AdmissionReject, message)
        .with_policy(RejectPolicy::RateLimit)
        .with_backoff(queue::backoff_hint(wait_ms).0)
}
