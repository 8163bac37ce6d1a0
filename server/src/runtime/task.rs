//! A task while the daemon holds it: its state and event log. All state
//! changes go through the log's lock, which is what makes cancel race-free
//! (ORCH-1021): a token is appended only while the task is not terminal, and
//! a terminal event is appended exactly once.

use crate::queue::Share;
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use contracts::{
    EndEvent, ErrorEnvelope, FinishReason, Priority, StartedEvent, StreamEvent, TaskRequest,
    TaskState, TaskStatus, TokenEvent,
};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::sessions::SessionKey;
use crate::store::{Finish, LogTail, TaskKey};

#[derive(Debug)]
pub struct LiveTask {
    pub key: TaskKey,
    /// Shared with its pool's other tasks.
    pub pool_id: Arc<str>,
    pub priority: Priority,
    pub request: TaskRequest,
    /// The SHA-256 of the request body, as bytes (half the hex).
    body_digest: Option<[u8; 32]>,
    /// The seed the engine samples with (the request's, or the default).
    pub seed: u32,
    pub submitted_at_ms: u64,
    /// Start deadline from `deadline_ms` (ORCH-3008).
    pub start_deadline_ms: Option<u64>,
    /// Boxed: most tasks have none.
    pub session: Option<Box<SessionKey>>,
    /// What its dispatch costs its tenant's share of the queue (ORCH-3015).
    pub share: Share,
    inner: Mutex<Inner>,
    /// Wakes the readers waiting for the log to change (a `Notify` costs
    /// no allocation, unlike a watch channel: ORCH-3014's memory per task).
    changed: Notify,
    /// Wakes the runner when someone else ended the task (cancel, eviction,
    /// drain deadline).
    stopped: Notify,
}

#[derive(Debug)]
struct Inner {
    state: TaskState,
    events: Vec<StreamEvent>,
    tokens_out: u32,
    replica_id: Option<String>,
    started_at_ms: Option<u64>,
    decode_started_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    finish_reason: Option<FinishReason>,
    /// Boxed: only a failed task has one.
    error: Option<Box<ErrorEnvelope>>,
    attempts: u32,
    /// Events already in the store.
    persisted: usize,
    /// Queue position and predicted wait at admission, echoed in `started`.
    admitted: (u32, u64),
    /// Replica to avoid on the retry after a failure (ORCH-4014).
    avoid_replica: Option<String>,
    /// Set when a shutdown's grace ran out with the task still running: no
    /// reader gets another event, so the log written then is all they saw
    /// (ORCH-7007).
    frozen: bool,
    /// Set by a shutdown on every task: readers' streams end, as no event comes
    /// from this process any more; a queued task stays queued (and cancelable).
    readers_closed: bool,
}

impl Inner {
    fn is_streaming(&self) -> bool {
        self.state == TaskState::Running && !self.frozen
    }
}

/// How a terminal transition ended the task.
pub enum Outcome {
    End(FinishReason),
    Error(ErrorEnvelope),
}

impl LiveTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: TaskKey,
        pool_id: Arc<str>,
        priority: Priority,
        request: TaskRequest,
        body_hash: String,
        seed: u32,
        submitted_at_ms: u64,
        share: Share,
        events: Vec<StreamEvent>,
    ) -> Self {
        let start_deadline_ms = request.deadline_ms.map(|d| submitted_at_ms + d);
        let session = request.session_id.clone().map(|session_id| {
            Box::new(SessionKey {
                tenant: key.tenant.to_string(),
                scope: key.scope.to_string(),
                session_id,
            })
        });
        // A task restored from the store resumes its log where it stopped.
        let persisted = events.len();
        let tokens_out = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Token(_)))
            .count() as u32;
        Self {
            key,
            pool_id,
            priority,
            request,
            body_digest: digest_of(&body_hash),
            seed,
            submitted_at_ms,
            start_deadline_ms,
            session,
            share,
            inner: Mutex::new(Inner {
                state: TaskState::Queued,
                events,
                tokens_out,
                replica_id: None,
                started_at_ms: None,
                decode_started_ms: None,
                finished_at_ms: None,
                finish_reason: None,
                error: None,
                attempts: 0,
                persisted,
                admitted: (0, 0),
                avoid_replica: None,
                frozen: false,
                readers_closed: false,
            }),
            changed: Notify::new(),
            stopped: Notify::new(),
        }
    }

    /// Whether `body_hash` (hex) is this task's request body's.
    pub fn has_body(&self, body_hash: &str) -> bool {
        self.body_digest.is_some() && digest_of(body_hash) == self.body_digest
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, inner: &mut Inner, event: StreamEvent) {
        inner.events.push(event);
        self.changed.notify_waiters();
    }

    pub fn state(&self) -> TaskState {
        self.lock().state
    }

    pub fn tokens_out(&self) -> u32 {
        self.lock().tokens_out
    }

    pub fn avoid_replica(&self) -> Option<String> {
        self.lock().avoid_replica.clone()
    }

    pub fn attempts(&self) -> u32 {
        self.lock().attempts
    }

    /// Queued → running on `replica`; false when the task is no longer queued
    /// (canceled or evicted meanwhile), in which case it must not start.
    pub fn set_admission(&self, queue_position: u32, predicted_start_ms: u64) {
        self.lock().admitted = (queue_position, predicted_start_ms);
    }

    pub fn start(&self, mut started: StartedEvent, now_ms: u64) -> bool {
        let mut inner = self.lock();
        if inner.state != TaskState::Queued {
            return false;
        }
        (started.queue_position, started.predicted_start_ms) = inner.admitted;
        inner.state = TaskState::Running;
        inner.replica_id = Some(started.replica_id.clone());
        inner.started_at_ms.get_or_insert(now_ms);
        inner.decode_started_ms = Some(now_ms);
        inner.attempts += 1;
        self.push(&mut inner, StreamEvent::Started(started));
        true
    }

    /// Running → queued again for one retry elsewhere; false if terminal.
    pub fn requeue(&self, avoid_replica: &str) -> bool {
        let mut inner = self.lock();
        if inner.state != TaskState::Running {
            return false;
        }
        inner.state = TaskState::Queued;
        inner.avoid_replica = Some(avoid_replica.to_owned());
        true
    }

    /// Append the next token; `None` once the task is terminal, so nothing
    /// follows an acknowledged cancel.
    pub fn push_token(&self, text: String) -> Option<u32> {
        let mut inner = self.lock();
        if !inner.is_streaming() {
            return None;
        }
        let i = inner.tokens_out;
        inner.tokens_out += 1;
        self.push(&mut inner, StreamEvent::Token(TokenEvent { t: text, i }));
        Some(i)
    }

    pub fn push_metrics(&self, now_ms: u64) {
        let mut inner = self.lock();
        if !inner.is_streaming() {
            return;
        }
        let elapsed_ms = now_ms.saturating_sub(inner.decode_started_ms.unwrap_or(now_ms));
        let tokens_out = inner.tokens_out;
        let tokens_per_s = if elapsed_ms == 0 {
            0.0
        } else {
            (f64::from(tokens_out) * 1000.0 / elapsed_ms as f64 * 10.0).round() / 10.0
        };
        self.push(
            &mut inner,
            StreamEvent::Metrics(contracts::MetricsEvent {
                tokens_out,
                elapsed_ms,
                tokens_per_s,
            }),
        );
    }

    /// The single terminal transition. Returns what to persist, or `None` if
    /// the task had already ended (the first terminal event wins).
    pub fn finish(&self, outcome: Outcome, now_ms: u64) -> Option<Finish> {
        let mut inner = self.lock();
        if inner.state.is_terminal() || inner.frozen {
            return None;
        }
        let decode_ms = now_ms.saturating_sub(inner.decode_started_ms.unwrap_or(now_ms));
        let (state, event) = match outcome {
            Outcome::End(reason) => {
                inner.finish_reason = Some(reason);
                let state = if reason == FinishReason::Canceled {
                    TaskState::Canceled
                } else {
                    TaskState::Completed
                };
                let end = EndEvent {
                    tokens_out: inner.tokens_out,
                    decode_ms,
                    finish_reason: reason.into(),
                };
                (state, StreamEvent::End(end))
            }
            Outcome::Error(envelope) => {
                inner.error = Some(Box::new(envelope.clone()));
                (TaskState::Failed, StreamEvent::Error(envelope))
            }
        };
        inner.state = state;
        inner.finished_at_ms = Some(now_ms);
        self.push(&mut inner, event);
        self.stopped.notify_one();
        Some(Finish {
            state,
            finished_at_ms: now_ms,
            finish_reason: inner.finish_reason,
            error: inner.error.as_deref().cloned(),
            tail: Self::tail(&inner),
        })
    }

    fn tail(inner: &Inner) -> LogTail {
        LogTail {
            events_from: inner.persisted,
            events: inner.events[inner.persisted..].to_vec(),
            tokens_out: inner.tokens_out,
        }
    }

    /// The tail plus the token about to be appended, so the first token can
    /// be stored before any reader sees it; `None` once the task stopped.
    pub fn tail_with_next_token(&self, text: &str) -> Option<LogTail> {
        let inner = self.lock();
        if !inner.is_streaming() {
            return None;
        }
        let mut tail = Self::tail(&inner);
        tail.events.push(StreamEvent::Token(TokenEvent {
            t: text.to_owned(),
            i: inner.tokens_out,
        }));
        tail.tokens_out += 1;
        Some(tail)
    }

    /// Stop the stream where it is, for a shutdown whose grace ran out, and end
    /// every reader's stream; true when the task was running.
    pub fn freeze(&self) -> bool {
        let mut inner = self.lock();
        let running = inner.state == TaskState::Running;
        inner.frozen |= running;
        inner.readers_closed = true;
        // Wake the readers: their streams end here.
        self.changed.notify_waiters();
        running
    }

    /// What the store does not have yet, if anything.
    pub fn unpersisted(&self) -> Option<LogTail> {
        let inner = self.lock();
        (inner.persisted < inner.events.len()).then(|| Self::tail(&inner))
    }

    pub fn mark_persisted(&self, upto: usize) {
        let mut inner = self.lock();
        inner.persisted = inner.persisted.max(upto);
    }

    /// Resolves once the task ended while running (the runner then stops
    /// the engine).
    pub async fn stopped(&self) {
        self.stopped.notified().await;
    }

    /// Events from `cursor` on, and whether the log is complete (or frozen by
    /// a shutdown: nothing more will come).
    pub fn events_from(&self, cursor: usize) -> (Vec<StreamEvent>, bool) {
        let inner = self.lock();
        let events = inner.events.get(cursor..).unwrap_or_default().to_vec();
        let complete = inner.state.is_terminal() || inner.frozen || inner.readers_closed;
        (events, complete)
    }

    /// Resolves at the log's next change; enable it before reading the
    /// log, so no change between the read and the wait is missed.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    pub fn status(&self, queue_position: Option<u32>) -> TaskStatus {
        let inner = self.lock();
        TaskStatus {
            task_id: self.key.task_id.to_string(),
            scope: (!self.key.scope.is_empty()).then(|| self.key.scope.to_string()),
            pool_id: self.pool_id.to_string(),
            priority: self.priority.into(),
            state: inner.state.into(),
            queue_position: queue_position.filter(|_| inner.state == TaskState::Queued),
            replica_id: inner.replica_id.clone(),
            submitted_at_ms: self.submitted_at_ms,
            started_at_ms: inner.started_at_ms,
            finished_at_ms: inner.finished_at_ms,
            tokens_out: inner.tokens_out,
            finish_reason: inner.finish_reason.map(Into::into),
            error: inner.error.as_deref().cloned(),
        }
    }

    pub fn started_ms(&self) -> Option<u64> {
        self.lock().decode_started_ms
    }
}

/// A body hash's bytes, if it is 64 hex digits (as `admission::body_hash`
/// makes it).
fn digest_of(body_hash: &str) -> Option<[u8; 32]> {
    let mut digest = [0; 32];
    hex::decode_to_slice(body_hash, &mut digest).ok()?;
    Some(digest)
}

/// The live tasks, found by key. Each key is stored once, in its task: a map
/// would keep a second copy of every key (memory per queued task, issue 14).
#[derive(Debug, Default)]
pub struct LiveTasks(HashSet<ByKey>);

#[derive(Debug)]
struct ByKey(Arc<LiveTask>);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

/// As its key hashes, so a `&TaskKey` finds it.
impl Hash for ByKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl Borrow<TaskKey> for ByKey {
    fn borrow(&self) -> &TaskKey {
        &self.0.key
    }
}

impl LiveTasks {
    pub fn get(&self, key: &TaskKey) -> Option<&Arc<LiveTask>> {
        self.0.get(key).map(|task| &task.0)
    }

    /// Add `task`, in place of a task of the same key.
    pub fn insert(&mut self, task: Arc<LiveTask>) {
        self.0.replace(ByKey(task));
    }

    pub fn remove(&mut self, key: &TaskKey) -> Option<Arc<LiveTask>> {
        self.0.take(key).map(|task| task.0)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<LiveTask>> {
        self.0.iter().map(|task| &task.0)
    }
}
