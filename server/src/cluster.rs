//! Several daemons on one PostgreSQL store acting as one orchestrator
//! (ORCH-7012..ORCH-7014).
//!
//! One daemon at a time dispatches: the holder of the lease, one row of the store
//! (holder, epoch, renewals). It runs the whole orchestrator of today's single daemon
//! — queues, placement, engine slots, quotas, rate limits, cancel — built from the
//! store the way recovery builds it after a restart, so every guarantee of one daemon
//! holds for the cluster because there is only one place that decides. The others
//! are front doors: they forward each request to the dispatcher (`api::front`) and
//! watch the lease. A follower that sees the lease unrenewed for `lease_ms` of its own
//! clock takes it with a new epoch (a compare-and-set on what it saw, so one daemon
//! wins) and becomes the dispatcher; a dispatcher whose renewals have not succeeded
//! for two thirds of the lease steps down before any follower may take over.
//!
//! The pure rules — when a lease has expired, when a dispatcher must step down, how
//! two configurations differ — are the functions at the top, tested below.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::runtime::Orchestrator;
use crate::store::{ClusterTable, LeaseRow, StoreError};

/// How often a daemon reads or renews the lease (a renewal is sent only when due).
fn tick(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 10).clamp(20, 500))
}

/// What a follower concludes from one reading of the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A dispatcher holds it and renewed it within the lease.
    Held,
    /// Nobody holds it: the last dispatcher stopped cleanly.
    Vacant,
    /// Unrenewed for a whole lease by this daemon's clock: its holder is gone.
    Expired,
}

/// A follower's view of the lease: expiry is measured from when this daemon last saw
/// the row change, on its own clock, so the daemons' clocks need not agree — only
/// run at about the same rate.
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    lease_ms: u64,
    seen: Option<(i64, i64)>,
    changed_at_ms: u64,
}

impl LeaseWatch {
    pub fn new(lease_ms: u64) -> Self {
        Self {
            lease_ms,
            seen: None,
            changed_at_ms: 0,
        }
    }

    pub fn observe(&mut self, row: &LeaseRow, now_ms: u64) -> Verdict {
        if row.holder.is_none() {
            return Verdict::Vacant;
        }
        let mark = (row.epoch, row.renewals);
        if self.seen != Some(mark) {
            self.seen = Some(mark);
            self.changed_at_ms = now_ms;
            return Verdict::Held;
        }
        if now_ms.saturating_sub(self.changed_at_ms) >= self.lease_ms {
            Verdict::Expired
        } else {
            Verdict::Held
        }
    }
}

/// A dispatcher renews every third of the lease ...
pub fn renewal_due(last_sent_ms: u64, now_ms: u64, lease_ms: u64) -> bool {
    now_ms.saturating_sub(last_sent_ms) >= lease_ms / 3
}

/// ... and steps down once its last successful renewal was sent two thirds of a lease
/// ago: a follower waits a whole lease from the moment it saw that renewal, which
/// is later, so the two never dispatch at once.
pub fn must_step_down(last_confirmed_sent_ms: u64, now_ms: u64, lease_ms: u64) -> bool {
    now_ms.saturating_sub(last_confirmed_sent_ms) >= lease_ms * 2 / 3
}

/// The part of a configuration the daemons of a cluster share: all of it but what
/// names one daemon (`bind`, `store`, `instance`).
pub fn shared_config(config: &contracts::config::Config) -> Value {
    let mut value = serde_json::to_value(config).expect("config serializes");
    if let Some(fields) = value.as_object_mut() {
        for own in ["bind", "store", "instance"] {
            fields.remove(own);
        }
    }
    value
}

pub fn config_hash(shared: &Value) -> String {
    hex::encode(Sha256::digest(shared.to_string().as_bytes()))
}

/// Each path where `mine` differs from the cluster's, with both values.
pub fn config_differences(cluster: &Value, mine: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_at("", cluster, mine, &mut out);
    out
}

fn diff_at(path: &str, cluster: &Value, mine: &Value, out: &mut Vec<String>) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (cluster, mine) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff_at(
                    &child(key),
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_at(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if cluster == mine => {}
        _ => out.push(format!(
            "{}: {mine} in this daemon's config, {cluster} in the cluster's",
            if path.is_empty() { "(root)" } else { path }
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "this daemon's config differs from the one the cluster runs (ORCH-7014): {}; \
         give every daemon of the cluster the same config (bind, store and instance may \
         differ), or stop every daemon and start them with the new one",
        .0.join("; ")
    )]
    ConfigDiffers(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The counters of the cluster, in every daemon's metrics.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    pub dispatching: Gauge,
    pub expiries: Counter,
    pub takeovers: Counter,
    pub step_downs: Counter,
    pub forwarded: Counter,
}

impl ClusterMetrics {
    /// A registry of these alone: what a follower serves at `/metrics`.
    fn registry(&self, instance: &str) -> Registry {
        let mut registry = crate::metrics::daemon_registry(instance);
        self.register(&mut registry);
        registry
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_dispatching",
            "1 while this daemon holds the dispatcher lease, else 0",
            self.dispatching.clone(),
        );
        registry.register(
            "cluster_lease_expiries",
            "Times this daemon found the dispatcher lease unrenewed for a whole lease",
            self.expiries.clone(),
        );
        registry.register(
            "cluster_lease_takeovers",
            "Times this daemon took the dispatcher lease",
            self.takeovers.clone(),
        );
        registry.register(
            "cluster_step_downs",
            "Times this daemon stopped dispatching because it could not renew its lease",
            self.step_downs.clone(),
        );
        registry.register(
            "cluster_requests_forwarded",
            "Requests this daemon forwarded to the dispatcher",
            self.forwarded.clone(),
        );
    }
}

/// The dispatcher of this daemon: its orchestrator and the router that serves it.
#[derive(Clone)]
pub struct Local {
    pub orchestrator: Arc<Orchestrator>,
    pub router: Router,
}

/// Builds the dispatcher when this daemon takes the lease of an epoch: the store
/// fenced at that epoch, then recovery.
pub type Dispatcher = Arc<dyn Fn(i64) -> BoxFuture<'static, anyhow::Result<Local>> + Send + Sync>;

/// Who dispatches, as this daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Another daemon (its address), or nobody known yet.
    Follower { dispatcher: Option<String> },
    /// This daemon, in lease `epoch`; `ready` once its orchestrator serves.
    Dispatcher { epoch: i64, ready: bool },
}

/// One daemon's membership of the cluster.
pub struct Member {
    /// The `daemon` label of this daemon's metrics.
    pub instance: String,
    /// Unique per process run: the lease's `holder`.
    holder: String,
    address: String,
    lease_ms: u64,
    clock: Clock,
    table: ClusterTable,
    role: watch::Sender<Role>,
    local: RwLock<Option<Local>>,
    dispatcher: Dispatcher,
    pub metrics: ClusterMetrics,
    registry: Mutex<Registry>,
    /// Test hook: a dispatcher that stops renewing, as a hung process would.
    renewals_paused: AtomicBool,
    stopped: AtomicBool,
}

impl Member {
    /// Joins the cluster of `table`'s store: refuses a config that differs from the
    /// cluster's while another daemon may be dispatching; replaces it when none is.
    pub async fn join(
        table: ClusterTable,
        config: &contracts::config::Config,
        instance: String,
        address: String,
        clock: Clock,
        dispatcher: Dispatcher,
        metrics: ClusterMetrics,
    ) -> Result<Arc<Self>, JoinError> {
        let lease_ms = config.cluster.lease_ms;
        let shared = shared_config(config);
        let hash = config_hash(&shared);
        let text = shared.to_string();
        let stored = table.config_or_store(&hash, &text).await?;
        let mut watch = LeaseWatch::new(lease_ms);
        if stored != text {
            let cluster: Value = serde_json::from_str(&stored).unwrap_or(Value::Null);
            let differences = config_differences(&cluster, &shared);
            if !no_dispatcher_within_a_lease(&table, &mut watch, &clock).await? {
                return Err(JoinError::ConfigDiffers(differences));
            }
            tracing::warn!(
                differences = %differences.join("; "),
                "no daemon dispatches: this daemon's config becomes the cluster's"
            );
            table.replace_config(&hash, &text).await?;
        }
        let registry = metrics.registry(&instance);
        let member = Arc::new(Self {
            holder: format!("{instance}#{}", uuid::Uuid::new_v4().simple()),
            instance,
            address,
            lease_ms,
            clock,
            table,
            role: watch::Sender::new(Role::Follower { dispatcher: None }),
            local: RwLock::new(None),
            dispatcher,
            metrics,
            registry: Mutex::new(registry),
            renewals_paused: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        // A lease found expired above is taken at once, not watched for another one.
        tokio::spawn(Arc::clone(&member).run(watch));
        member.settled().await;
        Ok(member)
    }

    /// Waits (a bounded time) until this daemon knows its role: dispatching and
    /// ready, or following a known dispatcher.
    async fn settled(&self) {
        let mut roles = self.roles();
        let patience = Duration::from_millis(self.lease_ms * 2) + Duration::from_secs(10);
        let _ = tokio::time::timeout(
            patience,
            roles.wait_for(|role| {
                matches!(
                    role,
                    Role::Dispatcher { ready: true, .. }
                        | Role::Follower {
                            dispatcher: Some(_)
                        }
                )
            }),
        )
        .await;
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn roles(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// The dispatcher's router, when this daemon dispatches and is ready.
    pub fn local(&self) -> Option<Local> {
        self.local.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where this daemon listens, as the others reach it.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// The metrics of a follower (a dispatcher's are its orchestrator's).
    pub fn encode_metrics(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String");
        text
    }

    /// Whether this daemon has left the cluster (stopped, or crashed in a test).
    pub fn has_left(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub fn pause_renewals(&self, paused: bool) {
        self.renewals_paused.store(paused, Ordering::SeqCst);
    }

    /// Leaves the cluster: a dispatcher settles its work within `grace` and gives
    /// the lease up, so a follower takes over at once.
    pub async fn leave(&self, grace: Duration) {
        self.stopped.store(true, Ordering::SeqCst);
        let local = self.local.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(local) = local {
            local.orchestrator.shutdown(grace).await;
        }
        if let Role::Dispatcher { epoch, .. } = self.role()
            && let Err(e) = self.table.release(epoch, &self.holder).await
        {
            tracing::warn!(error = %e, "could not release the dispatcher lease");
        }
        self.role.send_replace(Role::Follower { dispatcher: None });
    }

    /// Stops like `kill -9` would, for in-process tests: no renewal, no release, the
    /// orchestrator halted without a last write.
    pub fn crash(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let local = self.local.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(local) = local {
            local.orchestrator.halt();
        }
    }

    async fn run(self: Arc<Self>, mut watch: LeaseWatch) {
        let mut last_sent = 0;
        let mut last_confirmed = 0;
        while !self.stopped.load(Ordering::SeqCst) {
            let now = self.clock.now_ms();
            match self.role() {
                Role::Dispatcher { epoch, .. } => {
                    let paused = self.renewals_paused.load(Ordering::SeqCst);
                    if !paused && renewal_due(last_sent, now, self.lease_ms) {
                        last_sent = now;
                        match self.table.renew(epoch, &self.holder).await {
                            Ok(true) => last_confirmed = now,
                            Ok(false) => {
                                tracing::error!(epoch, "another daemon took the dispatcher lease");
                                self.step_down();
                                continue;
                            }
                            Err(e) => tracing::warn!(error = %e, "renewing the dispatcher lease"),
                        }
                    }
                    if must_step_down(last_confirmed, self.clock.now_ms(), self.lease_ms) {
                        tracing::error!(epoch, "the dispatcher lease could not be renewed in time");
                        self.step_down();
                    }
                }
                Role::Follower { .. } => match self.table.lease().await {
                    Ok(row) => {
                        let verdict = watch.observe(&row, now);
                        if verdict == Verdict::Expired {
                            self.metrics.expiries.inc();
                            tracing::warn!(holder = ?row.holder, epoch = row.epoch, "the dispatcher lease expired");
                        }
                        if verdict == Verdict::Held {
                            self.role.send_if_modified(|role| {
                                // Its own lease, left after a step-down, is no dispatcher
                                // to forward to: that would be a loop to itself.
                                let own = row.holder.as_deref() == Some(self.holder.as_str());
                                let known = Role::Follower {
                                    dispatcher: row.address.clone().filter(|_| !own),
                                };
                                let changed = *role != known;
                                *role = known;
                                changed
                            });
                        } else if let Some(epoch) = self.take(&row).await {
                            last_sent = self.clock.now_ms();
                            last_confirmed = last_sent;
                            tracing::info!(epoch, "this daemon dispatches now");
                            self.spawn_dispatcher(epoch);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the dispatcher lease"),
                },
            }
            tokio::time::sleep(tick(self.lease_ms)).await;
        }
    }

    async fn take(&self, seen: &LeaseRow) -> Option<i64> {
        match self.table.take(seen, &self.holder, &self.address).await {
            Ok(Some(epoch)) => {
                self.metrics.takeovers.inc();
                self.metrics.dispatching.set(1);
                self.role.send_replace(Role::Dispatcher {
                    epoch,
                    ready: false,
                });
                Some(epoch)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "taking the dispatcher lease");
                None
            }
        }
    }

    /// Recovery runs beside the lease loop, which keeps renewing meanwhile.
    fn spawn_dispatcher(self: &Arc<Self>, epoch: i64) {
        let member = Arc::clone(self);
        tokio::spawn(async move {
            match (member.dispatcher)(epoch).await {
                Ok(local) => {
                    let still_ours = member.role()
                        == Role::Dispatcher {
                            epoch,
                            ready: false,
                        };
                    if !still_ours || member.stopped.load(Ordering::SeqCst) {
                        local.orchestrator.halt();
                        return;
                    }
                    *member.local.write().unwrap_or_else(|p| p.into_inner()) = Some(local);
                    member
                        .role
                        .send_replace(Role::Dispatcher { epoch, ready: true });
                }
                Err(e) => {
                    tracing::error!(error = %e, "this daemon took the lease but cannot dispatch");
                    member.step_down();
                }
            }
        });
    }

    fn step_down(&self) {
        self.metrics.step_downs.inc();
        self.metrics.dispatching.set(0);
        let local = self.local.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(local) = local {
            local.orchestrator.halt();
        }
        self.role.send_replace(Role::Follower { dispatcher: None });
    }
}

/// Whether no daemon dispatches: the lease is vacant, or stays unrenewed for a whole
/// lease. A renewal seen meanwhile answers no at once.
async fn no_dispatcher_within_a_lease(
    table: &ClusterTable,
    watch: &mut LeaseWatch,
    clock: &Clock,
) -> Result<bool, StoreError> {
    let first = table.lease().await?;
    if watch.observe(&first, clock.now_ms()) == Verdict::Vacant {
        return Ok(true);
    }
    loop {
        tokio::time::sleep(tick(watch.lease_ms)).await;
        let row = table.lease().await?;
        if (row.epoch, row.renewals) != (first.epoch, first.renewals) {
            return Ok(row.holder.is_none());
        }
        if watch.observe(&row, clock.now_ms()) == Verdict::Expired {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(holder: Option<&str>, epoch: i64, renewals: i64) -> LeaseRow {
        LeaseRow {
            holder: holder.map(str::to_owned),
            address: None,
            epoch,
            renewals,
        }
    }

    // covers: ORCH-7013
    #[test]
    fn a_lease_expires_only_after_a_whole_lease_without_a_change() {
        let mut watch = LeaseWatch::new(3_000);
        assert_eq!(watch.observe(&row(Some("a"), 1, 0), 10_000), Verdict::Held);
        assert_eq!(watch.observe(&row(Some("a"), 1, 0), 12_999), Verdict::Held);
        // A renewal restarts the count, whatever the clocks say.
        assert_eq!(watch.observe(&row(Some("a"), 1, 1), 12_999), Verdict::Held);
        assert_eq!(watch.observe(&row(Some("a"), 1, 1), 15_998), Verdict::Held);
        assert_eq!(
            watch.observe(&row(Some("a"), 1, 1), 15_999),
            Verdict::Expired
        );
        // A takeover is a change too.
        assert_eq!(watch.observe(&row(Some("b"), 2, 0), 16_000), Verdict::Held);
        assert_eq!(watch.observe(&row(None, 2, 1), 16_001), Verdict::Vacant);
    }

    // covers: ORCH-7013
    #[test]
    fn a_dispatcher_steps_down_before_any_follower_may_take_over() {
        let lease = 3_000;
        for sent in [0u64, 1, 999, 5_000] {
            // A follower sees the renewal no earlier than it was sent, and waits a lease.
            let earliest_takeover = sent + lease;
            let step_down = (sent..)
                .find(|now| must_step_down(sent, *now, lease))
                .unwrap();
            assert!(step_down < earliest_takeover, "sent at {sent}");
            assert!(!renewal_due(sent, sent + lease / 3 - 1, lease));
            assert!(renewal_due(sent, sent + lease / 3, lease));
            // Two renewals fit before stepping down: one lost write is not a failover.
            assert!(sent + 2 * (lease / 3) <= step_down);
        }
    }

    // covers: ORCH-7014
    #[test]
    fn config_differences_name_each_path_and_both_values() {
        let mut mine = contracts::config::Config::default();
        let cluster = shared_config(&mine);
        mine.bind = "127.0.0.1:9".into();
        mine.instance = Some("b".into());
        assert!(config_differences(&cluster, &shared_config(&mine)).is_empty());
        mine.pools[0].queue.capacity = 7;
        mine.retention_ms = 5;
        let found = config_differences(&cluster, &shared_config(&mine));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("pools[0].queue.capacity: 7 in this daemon's config, "));
        assert!(found[1].starts_with("retention_ms: 5 in this daemon's config, 86400000"));
        assert_ne!(config_hash(&cluster), config_hash(&shared_config(&mine)));
    }
}
