//! Prometheus metrics (ORCH-7101, ORCH-7106..ORCH-7110): one registry per
//! `Orchestrator`, never a process-global, so several servers in one process
//! (the tests) each count only their own work.
//!
//! Counters and histograms are updated where the event happens (admission,
//! start, token, end, cancel, rejection, eviction); gauges (`queue_depth`,
//! `replica_ready`, `kv_cache_utilization`) are sampled from the live state
//! at scrape time, so they can never drift from it. The names, types, labels
//! and label budgets are the contract of `ci/metrics.lint.json`.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use contracts::config::FullPolicy;
use contracts::{ErrorCode, RejectPolicy};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engines::EngineProperties;
use crate::error::OrchError;
use crate::runtime::{Orchestrator, ReplicaHealth};

/// `Content-Type` of `GET /metrics` (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `pool` label of a rejection whose request named no configured pool:
/// user input never becomes a label value (cardinality budget).
pub const UNKNOWN_POOL: &str = "_unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

/// A tenant's series: tenants come from the configuration (ORCH-7106).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    pool: String,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    pool: String,
    engine: String,
    engine_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    pool: String,
    replica: String,
    engine: String,
    engine_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    pool: String,
    reason: &'static str,
}

type GaugeF64 = Gauge<f64, AtomicU64>;

/// A registry whose every series carries `daemon="<instance>"` (ORCH-7014), so the
/// daemons of a cluster are told apart without the scraper's own `instance`.
pub fn daemon_registry(instance: &str) -> Registry {
    Registry::with_labels(
        [(
            std::borrow::Cow::Borrowed("daemon"),
            std::borrow::Cow::Owned(instance.to_owned()),
        )]
        .into_iter(),
    )
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    /// Configured pool ids: the only values the `pool` label takes.
    pools: BTreeSet<String>,
    tasks_enqueued: Family<PoolLabels, Counter>,
    tasks_started: Family<EngineLabels, Counter>,
    tasks_canceled: Family<PoolLabels, Counter>,
    tasks_rejected: Family<RejectLabels, Counter>,
    tokens_in: Family<EngineLabels, Counter>,
    tokens_out: Family<EngineLabels, Counter>,
    latency_first_token_ms: Family<EngineLabels, Histogram>,
    latency_decode_ms: Family<EngineLabels, Histogram>,
    queue_depth: Family<PoolLabels, Gauge>,
    replica_ready: Family<ReplicaLabels, Gauge>,
    kv_cache_utilization: Family<ReplicaLabels, GaugeF64>,
    tenant_queue_wait_ms: Family<TenantLabels, Histogram>,
    tenant_served_tokens: Family<TenantLabels, Counter>,
    /// Serializes scrapes: gauges are cleared and re-sampled per scrape.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new<'a>(
        instance: &str,
        pool_ids: impl IntoIterator<Item = &'a str>,
        cluster: &crate::cluster::ClusterMetrics,
    ) -> Self {
        let mut registry = daemon_registry(instance);
        cluster.register(&mut registry);
        let this = Self {
            pools: pool_ids.into_iter().map(str::to_owned).collect(),
            tasks_enqueued: Family::default(),
            tasks_started: Family::default(),
            tasks_canceled: Family::default(),
            tasks_rejected: Family::default(),
            tokens_in: Family::default(),
            tokens_out: Family::default(),
            latency_first_token_ms: Family::new_with_constructor(latency_histogram),
            latency_decode_ms: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            replica_ready: Family::default(),
            kv_cache_utilization: Family::default(),
            tenant_queue_wait_ms: Family::new_with_constructor(latency_histogram),
            tenant_served_tokens: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "tasks_enqueued",
            "Tasks admitted into a pool queue (202 for a new task)",
            this.tasks_enqueued.clone(),
        );
        registry.register(
            "tasks_started",
            "Starts of a task on a replica (a retry elsewhere starts again)",
            this.tasks_started.clone(),
        );
        registry.register(
            "tasks_canceled",
            "Tasks canceled by a client while queued or running",
            this.tasks_canceled.clone(),
        );
        registry.register(
            "tasks_rejected",
            "Tasks refused at admission or evicted from a full queue, by reason",
            this.tasks_rejected.clone(),
        );
        registry.register(
            "tokens_in",
            "Prompt tokens of admitted tasks, in the pool engine's tokens",
            this.tokens_in.clone(),
        );
        registry.register(
            "tokens_out",
            "Tokens streamed to clients",
            this.tokens_out.clone(),
        );
        registry.register(
            "latency_first_token_ms",
            "From a task's start on a replica to its first token, in milliseconds",
            this.latency_first_token_ms.clone(),
        );
        registry.register(
            "latency_decode_ms",
            "From a task's start on a replica to its end, for completed tasks, in milliseconds",
            this.latency_decode_ms.clone(),
        );
        registry.register(
            "queue_depth",
            "Tasks waiting in the pool queue",
            this.queue_depth.clone(),
        );
        registry.register(
            "replica_ready",
            "1 when the replica is Ready for placement, else 0",
            this.replica_ready.clone(),
        );
        registry.register(
            "kv_cache_utilization",
            "KV-cache pressure of a replica, 0..1: the sessions' estimated KV bytes on it over its KV budget",
            this.kv_cache_utilization.clone(),
        );
        registry.register(
            "tenant_queue_wait_ms",
            "From a task's admission to each start on a replica, per tenant, in milliseconds",
            this.tenant_queue_wait_ms.clone(),
        );
        registry.register(
            "tenant_served_tokens",
            "Tokens served to a tenant's tasks that ran: prompt and generated (ORCH-3015)",
            this.tenant_served_tokens.clone(),
        );
        Self { registry, ..this }
    }

    fn tenant_labels(&self, pool: &str, tenant: &str) -> TenantLabels {
        TenantLabels {
            pool: self.pool_label(Some(pool)),
            tenant: tenant.to_owned(),
        }
    }

    /// A task of `tenant` started on a replica `wait_ms` after its admission.
    pub fn queue_waited(&self, pool: &str, tenant: &str, wait_ms: u64) {
        self.tenant_queue_wait_ms
            .get_or_create(&self.tenant_labels(pool, tenant))
            .observe(wait_ms as f64);
    }

    /// A task of `tenant` that ran ended having been served `tokens`.
    pub fn served(&self, pool: &str, tenant: &str, tokens: u64) {
        self.tenant_served_tokens
            .get_or_create(&self.tenant_labels(pool, tenant))
            .inc_by(tokens);
    }

    fn pool_label(&self, pool: Option<&str>) -> String {
        match pool {
            Some(pool) if self.pools.contains(pool) => pool.to_owned(),
            _ => UNKNOWN_POOL.to_owned(),
        }
    }

    /// A new task entered the queue of `pool`, with its prompt's token count.
    pub fn enqueued(&self, pool: &str, engine: &EngineProperties, prompt_tokens: u32) {
        let pool = self.pool_label(Some(pool));
        self.tasks_enqueued
            .get_or_create(&PoolLabels { pool: pool.clone() })
            .inc();
        self.tokens_in
            .get_or_create(&engine_labels(&pool, engine))
            .inc_by(u64::from(prompt_tokens));
    }

    /// A create request was refused; `pool` is the pool the request asked
    /// for (`None` when the body could not even be parsed).
    pub fn rejected(&self, pool: Option<&str>, error: &OrchError) {
        let Some(reason) = reject_reason(error) else {
            return;
        };
        self.tasks_rejected
            .get_or_create(&RejectLabels {
                pool: self.pool_label(pool),
                reason,
            })
            .inc();
    }

    /// A queued task was evicted to admit another (drop-lru, shed-low-priority).
    pub fn evicted(&self, pool: &str, policy: RejectPolicy) {
        self.tasks_rejected
            .get_or_create(&RejectLabels {
                pool: self.pool_label(Some(pool)),
                reason: policy_reason(policy),
            })
            .inc();
    }

    pub fn canceled(&self, pool: &str) {
        self.tasks_canceled
            .get_or_create(&PoolLabels {
                pool: self.pool_label(Some(pool)),
            })
            .inc();
    }

    /// The counters of one run of a task on one replica.
    pub fn task(&self, pool: &str, engine: &EngineProperties, started_ms: u64) -> TaskMetrics {
        let labels = engine_labels(&self.pool_label(Some(pool)), engine);
        TaskMetrics {
            started: self.tasks_started.get_or_create_owned(&labels),
            tokens_out: self.tokens_out.get_or_create_owned(&labels),
            first_token: self.latency_first_token_ms.get_or_create_owned(&labels),
            started_ms,
        }
    }

    /// A task completed on its replica after `decode_ms` (start to end).
    pub fn completed(&self, pool: &str, engine: &EngineProperties, decode_ms: u64) {
        self.latency_decode_ms
            .get_or_create(&engine_labels(&self.pool_label(Some(pool)), engine))
            .observe(decode_ms as f64);
    }

    /// Prometheus text (OpenMetrics) of this server, gauges sampled now.
    pub fn encode(&self, orchestrator: &Orchestrator) -> String {
        let _one_scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.queue_depth.clear();
        self.replica_ready.clear();
        self.kv_cache_utilization.clear();
        for pool in orchestrator.pools.values() {
            // Every series a pool will have exists from the first scrape, at 0.
            let pool_labels = PoolLabels {
                pool: pool.id().to_owned(),
            };
            let _ = self.tasks_enqueued.get_or_create(&pool_labels);
            let _ = self.tasks_canceled.get_or_create(&pool_labels);
            for tenant in orchestrator.tenants.ids() {
                let labels = self.tenant_labels(pool.id(), tenant);
                let _ = self.tenant_queue_wait_ms.get_or_create(&labels);
                let _ = self.tenant_served_tokens.get_or_create(&labels);
            }
            let _ = self.tasks_rejected.get_or_create(&RejectLabels {
                pool: pool.id().to_owned(),
                reason: policy_reason(match pool.config.queue.full_policy {
                    FullPolicy::Reject => RejectPolicy::Reject,
                    FullPolicy::DropLru => RejectPolicy::DropLru,
                    FullPolicy::ShedLowPriority => RejectPolicy::ShedLowPriority,
                }),
            });
            for replica in pool.replicas() {
                let labels = engine_labels(pool.id(), replica.engine.properties());
                let _ = self.tasks_started.get_or_create(&labels);
                let _ = self.tokens_in.get_or_create(&labels);
                let _ = self.tokens_out.get_or_create(&labels);
                let _ = self.latency_first_token_ms.get_or_create(&labels);
                let _ = self.latency_decode_ms.get_or_create(&labels);
            }
            let depth = pool.queue().len();
            self.queue_depth
                .get_or_create(&PoolLabels {
                    pool: pool.id().to_owned(),
                })
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
            for replica in pool.replicas() {
                let properties = replica.engine.properties();
                let labels = ReplicaLabels {
                    pool: pool.id().to_owned(),
                    replica: replica.id.clone(),
                    engine: properties.engine.clone(),
                    engine_version: properties.engine_version.clone(),
                };
                let state = replica.state();
                let ready = state.health == ReplicaHealth::Ready;
                drop(state);
                self.replica_ready
                    .get_or_create(&labels)
                    .set(i64::from(ready));
                // Sessions' estimated KV on the replica over its KV budget.
                let (kv_bytes, budget) = orchestrator.sessions().kv_usage(&replica.id);
                self.kv_cache_utilization
                    .get_or_create(&labels)
                    .set((kv_bytes as f64 / budget.max(1) as f64).min(1.0));
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn engine_labels(pool: &str, engine: &EngineProperties) -> EngineLabels {
    EngineLabels {
        pool: pool.to_owned(),
        engine: engine.engine.clone(),
        engine_version: engine.engine_version.clone(),
    }
}

fn policy_reason(policy: RejectPolicy) -> &'static str {
    match policy {
        RejectPolicy::Reject => "reject",
        RejectPolicy::RateLimit => "rate-limit",
        RejectPolicy::ShedLowPriority => "shed-low-priority",
        RejectPolicy::DropLru => "drop-lru",
    }
}

/// The `reason` label of a refused create; `None` for answers that are not
/// a refusal of the task (auth, not found).
fn reject_reason(error: &OrchError) -> Option<&'static str> {
    Some(match error.code {
        ErrorCode::AdmissionReject | ErrorCode::QueueFullDropLru => {
            policy_reason(error.policy.unwrap_or(RejectPolicy::Reject))
        }
        ErrorCode::InvalidParams => "invalid-params",
        ErrorCode::PoolUnready => "pool-unready",
        ErrorCode::PoolUnavailable => "pool-unavailable",
        ErrorCode::Conflict => "conflict",
        ErrorCode::Internal => "internal",
        ErrorCode::ReplicaExhausted
        | ErrorCode::DecodeTimeout
        | ErrorCode::WorkerReset
        | ErrorCode::Unauthorized
        | ErrorCode::Forbidden
        | ErrorCode::NotFound => return None,
    })
}

/// Metric handles of one task's run on one replica, taken once at start so
/// the per-token path does no label lookup.
pub struct TaskMetrics {
    started: Counter,
    tokens_out: Counter,
    first_token: Histogram,
    started_ms: u64,
}

impl TaskMetrics {
    /// The task was claimed and started on the replica.
    pub fn started(&self) {
        self.started.inc();
    }

    /// Token `i` was appended to the task's event log.
    pub fn token(&self, i: u32, now_ms: u64) {
        self.tokens_out.inc();
        if i == 0 {
            self.first_token
                .observe(now_ms.saturating_sub(self.started_ms) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> EngineProperties {
        EngineProperties {
            engine: "builtin".into(),
            engine_version: "v1".into(),
            model_ref: "m".into(),
            model_digest: "d".into(),
            ctx_limit: 10,
            slots: 1,
        }
    }

    // covers: ORCH-7106
    #[test]
    fn user_supplied_pool_names_never_become_label_values() {
        let metrics = Metrics::new("d", ["default"], &Default::default());
        let error = OrchError::invalid("pool_id", "unknown pool");
        metrics.rejected(Some("made-up-pool-1"), &error);
        metrics.rejected(Some("made-up-pool-2"), &error);
        metrics.enqueued("default", &engine(), 3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(!text.contains("made-up-pool"), "{text}");
        assert!(
            text.contains(
                r#"tasks_rejected_total{daemon="d",pool="_unknown",reason="invalid-params"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains("tokens_in_total{"), "{text}");
    }
}
