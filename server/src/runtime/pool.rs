//! A pool at run time: its queue, its replicas with their health and load,
//! and the observed service time behind every wait prediction.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use contracts::config::{Fairness, PoolConfig, TimeoutConfig};
use tokio::sync::Notify;

use crate::engines::{Engine, EngineProperties, Health, Speed};
use crate::placement::{self, ReplicaLoad};
use crate::queue::{self, PoolQueue, ServiceForecast};
use crate::store::TaskKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaHealth {
    Starting,
    Ready,
    Down,
}

#[derive(Debug)]
pub struct ReplicaState {
    pub health: ReplicaHealth,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

pub struct Replica {
    pub id: String,
    pub engine: Arc<dyn Engine>,
    state: Mutex<ReplicaState>,
    /// Tasks running on this replica's engine slots. A reload's successor of
    /// the same replica shares the counter: the engine's slots are the same
    /// slots, whichever replica object started the task (ORCH-6023).
    active: Arc<AtomicU32>,
    /// Replaced by a reload: its health monitor stops, nothing new lands on it.
    pub retired: AtomicBool,
    /// When its health monitor probes next (epoch ms): the earliest it can
    /// turn Ready, behind the hint of an unready pool (ORCH-2003).
    next_probe_ms: AtomicU64,
}

impl Replica {
    pub fn new(id: String, engine: Arc<dyn Engine>) -> Self {
        Self::with_slots_in_use(id, engine, Arc::new(AtomicU32::new(0)))
    }

    /// The replica a reload puts in this one's place: same id, new engine
    /// handle, the same count of slots in use.
    pub fn successor(&self, engine: Arc<dyn Engine>) -> Self {
        Self::with_slots_in_use(self.id.clone(), engine, Arc::clone(&self.active))
    }

    fn with_slots_in_use(id: String, engine: Arc<dyn Engine>, active: Arc<AtomicU32>) -> Self {
        Self {
            id,
            engine,
            state: Mutex::new(ReplicaState {
                health: ReplicaHealth::Starting,
                last_error: None,
                consecutive_failures: 0,
            }),
            active,
            retired: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
        }
    }

    pub fn set_next_probe_ms(&self, at_ms: u64) {
        self.next_probe_ms.store(at_ms, Ordering::SeqCst);
    }

    pub fn next_probe_ms(&self) -> u64 {
        self.next_probe_ms.load(Ordering::SeqCst)
    }

    /// Tasks running on the replica's slots.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> MutexGuard<'_, ReplicaState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take the replica out of placement after a failure; the health monitor
    /// brings it back (ORCH-4013, ORCH-5003).
    pub fn mark_down(&self, reason: &str) {
        let mut state = self.state();
        state.health = ReplicaHealth::Down;
        state.last_error = Some(reason.to_owned());
        tracing::warn!(replica = %self.id, reason, "replica marked down");
    }

    /// Apply one health probe; returns whether the replica just became Ready
    /// and how many probes in a row have now failed.
    pub fn record_health(&self, health: Health) -> (bool, u32) {
        let mut state = self.state();
        let was_ready = state.health == ReplicaHealth::Ready;
        match health {
            Health::Ready => {
                state.health = ReplicaHealth::Ready;
                state.consecutive_failures = 0;
            }
            Health::Starting(reason) => {
                state.health = ReplicaHealth::Starting;
                state.last_error = Some(reason);
                state.consecutive_failures = 0;
            }
            Health::Down(reason) | Health::Refused(reason) => {
                state.health = ReplicaHealth::Down;
                state.last_error = Some(reason);
                state.consecutive_failures += 1;
            }
        }
        let became_ready = !was_ready && state.health == ReplicaHealth::Ready;
        (became_ready, state.consecutive_failures)
    }
}

/// What every replica of a set must share (ORCH-4003): the first replica
/// found Ready fixes it; until a reload, a replica reporting another build or
/// model stays out of placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetIdentity {
    engine_version: String,
    model_ref: String,
    model_digest: String,
}

impl SetIdentity {
    fn of(properties: &EngineProperties) -> Self {
        Self {
            engine_version: properties.engine_version.clone(),
            model_ref: properties.model_ref.clone(),
            model_digest: properties.model_digest.clone(),
        }
    }
}

/// A probe's verdict once the set is considered: a Ready replica that
/// reports another identity than the set's is down, saying why.
pub fn vet_identity(
    identity: &mut Option<(String, SetIdentity)>,
    replica_id: &str,
    properties: &EngineProperties,
    health: Health,
) -> Health {
    if health != Health::Ready {
        return health;
    }
    let found = SetIdentity::of(properties);
    match identity {
        None => {
            *identity = Some((replica_id.to_owned(), found));
            Health::Ready
        }
        Some((first, known)) if *known == found || first == replica_id => Health::Ready,
        Some((first, known)) => Health::Down(format!(
            "reports {} {} with model {} ({}), but its replica set runs {} with model {} ({}) as \
             {first} reports; a replica set must not mix engine versions or models: run the same \
             build and model on every replica, then reload the pool",
            properties.engine,
            found.engine_version,
            found.model_ref,
            found.model_digest,
            known.engine_version,
            known.model_ref,
            known.model_digest,
        )),
    }
}

/// The wait before the next health probe (ORCH-4013): the interval while the
/// replica answers, doubled for each failed probe in a row up to `cap`.
pub fn probe_delay(interval: Duration, cap: Duration, consecutive_failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(consecutive_failures);
    interval.saturating_mul(factor).min(cap.max(interval))
}

/// One completed task, for the SLO snapshot of `GET /v1/replicasets`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion {
    pub ttft_ms: u64,
    pub tokens: u32,
    pub decode_ms: u64,
}

const RECENT_COMPLETIONS: usize = 256;

/// Completion intervals averaged for the pool's pace (ORCH-2003): recent
/// enough to follow a change of workload, enough to smooth the phase of slots.
const PACE_WINDOW: usize = 64;
/// Below this many, the pace is the mean service time / Ready slots.
const PACE_MIN_SAMPLES: usize = 8;

/// The pool's observed pace: the intervals between slot releases that each
/// found a task waiting, so that every slot was busy in between.
#[derive(Debug, Default)]
struct Pace {
    last_release: Option<(u64, bool)>,
    intervals: VecDeque<u64>,
    sum_ms: u64,
}

impl Pace {
    fn release(&mut self, at_ms: u64, task_waiting: bool) {
        if let Some((last_ms, last_waiting)) = self.last_release
            && last_waiting
            && task_waiting
        {
            if self.intervals.len() == PACE_WINDOW {
                self.sum_ms -= self.intervals.pop_front().unwrap_or(0);
            }
            let interval = at_ms.saturating_sub(last_ms);
            self.intervals.push_back(interval);
            self.sum_ms += interval;
        }
        self.last_release = Some((at_ms, task_waiting));
    }

    fn completion_interval_ms(&self) -> Option<f64> {
        (self.intervals.len() >= PACE_MIN_SAMPLES)
            .then(|| self.sum_ms as f64 / self.intervals.len() as f64)
    }
}

/// A task's hold on a slot from its start (ORCH-2003 forecasts its end).
#[derive(Debug)]
pub struct Service {
    ticket: u64,
}

/// A drain in progress: admission is closed; at `deadline_ms` whatever is
/// left ends with `POOL_UNAVAILABLE` (ORCH-6022).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub deadline_ms: u64,
}

pub struct Pool {
    pub config: PoolConfig,
    /// `config.id`, shared by the pool's live tasks.
    shared_id: Arc<str>,
    replicas: RwLock<Vec<Arc<Replica>>>,
    drain: Mutex<Option<Drain>>,
    /// The drain's deadline passed and what was left was ended: no more
    /// reason to wake for it.
    pub drain_ended: AtomicBool,
    recent: Mutex<VecDeque<Completion>>,
    /// Start deadlines of queued tasks (ORCH-3008), soonest first: the
    /// dispatch loop sleeps until the first.
    deadlines: Mutex<BinaryHeap<Reverse<(u64, TaskKey)>>>,
    /// Serializes reloads of this pool.
    pub reloading: tokio::sync::Mutex<()>,
    /// The replica that first reported the set's identity, and that identity.
    identity: Mutex<Option<(String, SetIdentity)>>,
    pub sampler_profile_version: String,
    queue: Mutex<PoolQueue<TaskKey>>,
    pub wake: Notify,
    /// Times the dispatch loop woke up (the test handle reads it: an idle
    /// pool wakes never).
    pub wakeups: AtomicU64,
    /// EWMA of observed task service time (ORCH-3007).
    mean_service_ms: Mutex<f64>,
    /// Start times of the tasks on this pool's slots, by ticket.
    running: Mutex<Vec<(u64, u64)>>,
    next_ticket: AtomicU64,
    pace: Mutex<Pace>,
    timeouts: Mutex<TimeoutConfig>,
    /// Test hook: hold dispatch so a queue can be filled deterministically.
    pub held: AtomicBool,
    /// Each tenant's tasks on this pool's slots and the tokens they were
    /// served (ORCH-6027); at most one entry per configured tenant.
    tenant_usage: Mutex<HashMap<String, TenantTally>>,
}

/// One tenant's use of one pool since the dispatcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantTally {
    pub running: u32,
    pub served_tokens: u64,
}

/// What admission needs to know about a pool's replicas right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub ready_replicas: u32,
    pub starting_replicas: u32,
    pub total_slots: u32,
    pub free_slots: u32,
}

impl Pool {
    pub fn new(config: PoolConfig, replicas: Vec<Arc<Replica>>) -> Self {
        let mut queue = PoolQueue::new(
            config.queue.capacity,
            config.queue.full_policy,
            config.queue.batch_starvation_bound,
        );
        if !config.queue.retry_line {
            queue = queue.without_retry_line();
        }
        if config.queue.fairness == Fairness::Fifo {
            queue = queue.fifo_between_tenants();
        }
        // Before anything completes, assume a task generates half of a typical
        // budget (at most 256 tokens) at the speed the engine states.
        let speed = replicas
            .first()
            .and_then(|r| r.engine.expected_speed())
            .unwrap_or(Speed::UNKNOWN);
        let initial_service_ms = speed.service_ms(config.max_tokens_limit.min(256) / 2);
        Self {
            sampler_profile_version: config.sampler_profile_version.clone(),
            shared_id: Arc::from(config.id.as_str()),
            timeouts: Mutex::new(config.timeouts.clone()),
            config,
            replicas: RwLock::new(replicas),
            drain: Mutex::new(None),
            drain_ended: AtomicBool::new(false),
            recent: Mutex::new(VecDeque::new()),
            deadlines: Mutex::new(BinaryHeap::new()),
            reloading: tokio::sync::Mutex::new(()),
            queue: Mutex::new(queue),
            wake: Notify::new(),
            wakeups: AtomicU64::new(0),
            mean_service_ms: Mutex::new(initial_service_ms),
            running: Mutex::new(Vec::new()),
            next_ticket: AtomicU64::new(0),
            pace: Mutex::new(Pace::default()),
            held: AtomicBool::new(false),
            identity: Mutex::new(None),
            tenant_usage: Mutex::new(HashMap::new()),
        }
    }

    /// A task of `tenant` started on one of this pool's slots.
    pub fn tenant_began(&self, tenant: &str) {
        let mut usage = self.tenant_usage.lock().unwrap();
        usage.entry(tenant.to_owned()).or_default().running += 1;
    }

    /// A task of `tenant` left its slot, `served` tokens when it ended (none
    /// when it is to be retried).
    pub fn tenant_ended(&self, tenant: &str, served: Option<u64>) {
        let mut usage = self.tenant_usage.lock().unwrap();
        let tally = usage.entry(tenant.to_owned()).or_default();
        tally.running = tally.running.saturating_sub(1);
        tally.served_tokens += served.unwrap_or(0);
    }

    /// Every tenant's tally that ever ran a task here.
    pub fn tenant_tallies(&self) -> HashMap<String, TenantTally> {
        self.tenant_usage.lock().unwrap().clone()
    }

    /// [`vet_identity`] against this set.
    pub fn vet(&self, replica: &Replica, health: Health) -> Health {
        let mut identity = self.identity.lock().unwrap();
        vet_identity(
            &mut identity,
            &replica.id,
            replica.engine.properties(),
            health,
        )
    }

    /// A reload's new set brings its own identity.
    pub fn set_identity(&self, identity: Option<(String, SetIdentity)>) {
        *self.identity.lock().unwrap() = identity;
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn shared_id(&self) -> Arc<str> {
        Arc::clone(&self.shared_id)
    }

    pub fn queue(&self) -> MutexGuard<'_, PoolQueue<TaskKey>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn timeouts(&self) -> TimeoutConfig {
        self.timeouts.lock().unwrap().clone()
    }

    pub fn set_timeouts(&self, timeouts: TimeoutConfig) {
        *self.timeouts.lock().unwrap() = timeouts;
    }

    /// The current replica set (a snapshot: a reload may replace it).
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swap in a new replica set; the old replicas finish what they run.
    pub fn replace_replicas(&self, replicas: Vec<Arc<Replica>>) -> Vec<Arc<Replica>> {
        let mut current = self.replicas.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *current, replicas);
        for replica in &old {
            replica.retired.store(true, Ordering::SeqCst);
        }
        old
    }

    pub fn replica(&self, id: &str) -> Option<Arc<Replica>> {
        self.replicas().into_iter().find(|r| r.id == id)
    }

    pub fn drain(&self) -> Option<Drain> {
        *self.drain.lock().unwrap()
    }

    pub fn set_drain(&self, drain: Option<Drain>) {
        self.drain_ended.store(false, Ordering::SeqCst);
        *self.drain.lock().unwrap() = drain;
    }

    pub fn record_completion(&self, completion: Completion) {
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == RECENT_COMPLETIONS {
            recent.pop_front();
        }
        recent.push_back(completion);
    }

    /// Watch a queued task's start deadline; the caller wakes the dispatch
    /// loop so it sleeps until the new soonest.
    pub fn watch_deadline(&self, at_ms: u64, key: TaskKey) {
        self.deadlines.lock().unwrap().push(Reverse((at_ms, key)));
    }

    /// Keys whose start deadline is due; they leave the watch list. A key
    /// that started or ended since stays in it until its deadline, then is
    /// skipped by the caller.
    pub fn due_deadlines(&self, now_ms: u64) -> Vec<TaskKey> {
        let mut deadlines = self.deadlines.lock().unwrap();
        let mut due = Vec::new();
        while deadlines
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now_ms)
        {
            if let Some(Reverse((_, key))) = deadlines.pop() {
                due.push(key);
            }
        }
        due
    }

    /// When the dispatch loop must look at the pool without being woken:
    /// the soonest start deadline, or a drain's.
    pub fn next_due_ms(&self) -> Option<u64> {
        let deadline = self
            .deadlines
            .lock()
            .unwrap()
            .peek()
            .map(|Reverse((at, _))| *at);
        let drain = self
            .drain()
            .filter(|_| !self.drain_ended.load(Ordering::SeqCst))
            .map(|d| d.deadline_ms);
        deadline.into_iter().chain(drain).min()
    }

    pub fn recent_completions(&self) -> Vec<Completion> {
        self.recent.lock().unwrap().iter().copied().collect()
    }

    pub fn capacity(&self) -> Capacity {
        let mut capacity = Capacity {
            ready_replicas: 0,
            starting_replicas: 0,
            total_slots: 0,
            free_slots: 0,
        };
        for replica in self.replicas() {
            let state = replica.state();
            let slots = replica.engine.properties().slots;
            match state.health {
                ReplicaHealth::Ready => {
                    capacity.ready_replicas += 1;
                    capacity.total_slots += slots;
                    capacity.free_slots += slots.saturating_sub(replica.active());
                }
                ReplicaHealth::Starting => capacity.starting_replicas += 1,
                ReplicaHealth::Down => {}
            }
        }
        capacity
    }

    pub fn mean_service_ms(&self) -> f64 {
        *self.mean_service_ms.lock().unwrap()
    }

    pub fn observe_service(&self, ms: u64) {
        let mut mean = self.mean_service_ms.lock().unwrap();
        *mean = 0.8 * *mean + 0.2 * ms as f64;
    }

    /// Predicted wait of the task at `position` (ORCH-3007).
    pub fn predicted_start_ms(&self, position: u32) -> u64 {
        let capacity = self.capacity();
        queue::predicted_start_ms(
            position,
            capacity.free_slots,
            capacity.total_slots,
            self.mean_service_ms(),
        )
    }

    /// Reserve a slot on the replica placement picks: `prefer` if it can
    /// take the task, `avoid` last (ORCH-4001, ORCH-4002, ORCH-4004, ORCH-4014).
    pub fn reserve_slot(&self, prefer: Option<&str>, avoid: Option<&str>) -> Option<Arc<Replica>> {
        let replicas = self.replicas();
        let states: Vec<_> = replicas.iter().map(|r| r.state()).collect();
        let loads: Vec<ReplicaLoad<'_>> = replicas
            .iter()
            .zip(&states)
            .map(|(replica, state)| ReplicaLoad {
                id: &replica.id,
                ready: state.health == ReplicaHealth::Ready,
                active: replica.active(),
                slots: replica.engine.properties().slots,
            })
            .collect();
        let chosen = placement::choose(&loads, prefer, avoid)?;
        // The dispatcher is the only one adding; releases only subtract.
        replicas[chosen].active.fetch_add(1, Ordering::SeqCst);
        drop(states);
        Some(Arc::clone(&replicas[chosen]))
    }

    /// A task began its service at `started_ms` on a reserved slot.
    pub fn begin_service(&self, started_ms: u64) -> Service {
        let ticket = self.next_ticket.fetch_add(1, Ordering::SeqCst);
        self.running.lock().unwrap().push((ticket, started_ms));
        Service { ticket }
    }

    /// The task's slot is free again at `now_ms`.
    pub fn release_slot(&self, replica: &Replica, service: Service, now_ms: u64) {
        let _ = replica
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.running
            .lock()
            .unwrap()
            .retain(|(ticket, _)| *ticket != service.ticket);
        let task_waiting = !self.queue().is_empty();
        self.pace.lock().unwrap().release(now_ms, task_waiting);
        self.wake.notify_one();
    }

    /// The live state behind the wait for queue places (ORCH-2003).
    pub fn forecast(&self, now_ms: u64) -> ServiceForecast {
        let capacity = self.capacity();
        let mean_ms = self.mean_service_ms();
        let remaining_ms = self
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(_, started)| {
                (mean_ms - now_ms.saturating_sub(*started) as f64)
                    .max(0.0)
                    .ceil() as u64
            })
            .collect();
        let completion_interval_ms = self
            .pace
            .lock()
            .unwrap()
            .completion_interval_ms()
            .unwrap_or(mean_ms / f64::from(capacity.total_slots.max(1)));
        ServiceForecast {
            remaining_ms,
            free_slots: capacity.free_slots,
            completion_interval_ms,
        }
    }

    /// Until the earliest next health probe of a replica that is not Ready:
    /// no sooner can the pool take work (ORCH-2003).
    pub fn until_next_probe_ms(&self, now_ms: u64) -> u64 {
        self.replicas()
            .iter()
            .filter(|r| r.state().health != ReplicaHealth::Ready)
            .map(|r| r.next_probe_ms().saturating_sub(now_ms))
            .min()
            .unwrap_or(self.config.health_interval_ms)
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(version: &str, model: &str) -> EngineProperties {
        EngineProperties {
            engine: "llamacpp".into(),
            engine_version: version.into(),
            model_ref: model.into(),
            model_digest: format!("sha256:{model}"),
            ctx_limit: 4096,
            slots: 4,
        }
    }

    // covers: ORCH-4003
    #[test]
    fn the_first_ready_replica_fixes_the_sets_identity() {
        let mut identity = None;
        let b1 = properties("b1", "m");
        assert_eq!(
            vet_identity(&mut identity, "r0", &b1, Health::Starting("loading".into())),
            Health::Starting("loading".into())
        );
        assert!(
            identity.is_none(),
            "only a Ready replica speaks for the set"
        );
        assert_eq!(
            vet_identity(&mut identity, "r1", &b1, Health::Ready),
            Health::Ready
        );
        assert_eq!(
            vet_identity(&mut identity, "r0", &b1, Health::Ready),
            Health::Ready
        );
        let Health::Down(why) =
            vet_identity(&mut identity, "r0", &properties("b2", "m"), Health::Ready)
        else {
            panic!("another build must stay out")
        };
        assert!(
            why.contains("b2") && why.contains("b1") && why.contains("as r1 reports"),
            "{why}"
        );
        assert!(matches!(
            vet_identity(
                &mut identity,
                "r2",
                &properties("b1", "other"),
                Health::Ready
            ),
            Health::Down(_)
        ));
        assert_eq!(
            vet_identity(&mut identity, "r1", &properties("b9", "x"), Health::Ready),
            Health::Ready,
            "the first replica's own changes are its discovery's to judge (ORCH-4026)"
        );
    }

    // covers: ORCH-4013
    #[test]
    fn the_probe_delay_doubles_per_failed_probe_up_to_the_cap() {
        let ms = Duration::from_millis;
        let delays: Vec<u64> = (0..8)
            .map(|failures| probe_delay(ms(100), ms(1_000), failures).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000, 1_000, 1_000]);
        assert_eq!(probe_delay(ms(100), ms(1_000), u32::MAX), ms(1_000));
        assert_eq!(
            probe_delay(ms(300), ms(100), 3),
            ms(300),
            "a cap below the interval never shortens it"
        );
    }

    // covers: ORCH-2003
    #[test]
    fn the_pace_counts_only_intervals_in_which_a_task_was_waiting() {
        let mut pace = Pace::default();
        pace.release(0, true);
        for at in 1..PACE_MIN_SAMPLES as u64 {
            pace.release(at * 30, true);
        }
        assert_eq!(pace.completion_interval_ms(), None, "too few intervals yet");
        // An idle gap (nothing waiting at one end) is not the pool's pace.
        pace.release(10_000, false);
        pace.release(10_030, true);
        assert_eq!(pace.completion_interval_ms(), None);
        pace.release(10_090, true);
        assert_eq!(
            pace.completion_interval_ms(),
            Some((7.0 * 30.0 + 60.0) / 8.0)
        );
        for at in 0..=PACE_WINDOW as u64 {
            pace.release(20_000 + at * 10, true);
        }
        assert_eq!(
            pace.completion_interval_ms(),
            Some(10.0),
            "only the last {PACE_WINDOW} intervals count"
        );
    }
}
