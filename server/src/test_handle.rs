//! In-process test hooks (BRIEF §7): never HTTP routes. Tests use them to
//! create real situations — engine faults, a held queue, a failing store,
//! time moved forward — and then observe the server over HTTP.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use contracts::config::{BuiltinFaults, TimeoutConfig};

use crate::runtime::{Orchestrator, Pool, ReplicaHealth};

#[derive(Clone)]
pub struct TestHandle {
    orchestrator: Arc<Orchestrator>,
}

impl TestHandle {
    pub(crate) fn new(orchestrator: Arc<Orchestrator>) -> Self {
        Self { orchestrator }
    }

    fn pool(&self, pool: &str) -> &Arc<Pool> {
        self.orchestrator
            .pool(pool)
            .unwrap_or_else(|| panic!("test handle: no pool {pool:?}"))
    }

    /// Replace the fault switches of a builtin replica.
    pub fn set_faults(&self, pool: &str, replica: &str, faults: BuiltinFaults) {
        let replica = self
            .pool(pool)
            .replica(replica)
            .unwrap_or_else(|| panic!("test handle: no replica {replica:?}"));
        replica
            .engine
            .faults()
            .expect("fault injection needs a builtin replica")
            .set(faults);
    }

    /// Make every store write fail (reaches `INTERNAL` for real).
    pub fn refuse_store_writes(&self, refuse: bool) {
        self.orchestrator.store.refuse_writes(refuse);
    }

    /// Move the clock of watchdogs, deadlines and retention forward.
    pub fn advance_clock(&self, ms: u64) {
        self.orchestrator.clock.advance(ms);
    }

    pub fn set_timeouts(&self, pool: &str, timeouts: TimeoutConfig) {
        self.pool(pool).set_timeouts(timeouts);
    }

    /// Stop (or resume) dispatch so a queue can be filled deterministically.
    pub fn hold_dispatch(&self, pool: &str, held: bool) {
        let pool = self.pool(pool);
        pool.held.store(held, Ordering::SeqCst);
        pool.wake.notify_one();
    }

    pub fn replica_health(&self, pool: &str, replica: &str) -> ReplicaHealth {
        self.pool(pool)
            .replica(replica)
            .expect("known replica")
            .state()
            .health
    }

    pub fn replica_active(&self, pool: &str, replica: &str) -> u32 {
        self.pool(pool)
            .replica(replica)
            .expect("known replica")
            .active()
    }

    /// Make every admission wait `ms` after its insert commits, before the queue:
    /// the window in which a client can give up on a task already stored.
    pub fn pause_admissions_after_insert(&self, ms: u64) {
        self.orchestrator
            .admission_pause_ms
            .store(ms, Ordering::SeqCst);
    }

    pub fn queue_len(&self, pool: &str) -> usize {
        self.pool(pool).queue().len()
    }

    /// The task id the pool would dispatch next.
    pub fn queue_head(&self, pool: &str) -> Option<String> {
        let queue = self.pool(pool).queue();
        queue
            .dispatch_order()
            .first()
            .map(|key| key.task_id.to_string())
    }

    /// How many times the pool's dispatch loop has woken up.
    pub fn dispatch_wakeups(&self, pool: &str) -> u64 {
        self.pool(pool).wakeups.load(Ordering::Relaxed)
    }
}
