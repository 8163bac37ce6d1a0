//! Control-plane operations (ORCH-6020..ORCH-6027): pool listing and health,
//! drain with a deadline, atomic reload, replica sets, capabilities and each
//! tenant's usage and share.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use contracts::config::{Fairness, Role};
use contracts::control::{
    PoolCapability, PoolSummary, PoolUsage, ReplicaSet, ReplicaSetLoad, ReplicaState,
    ReplicaStatus, SloSnapshot, TenantUsage,
};
use contracts::{
    Capabilities, ErrorCode, PoolActionResponse, PoolHealth, PoolList, ReplicaSetList, UsageReport,
};

use contracts::limits::{DEADLINE_MAX_MS, READY_TIMEOUT_MAX_MS};

use super::pool::{self, Drain, ReplicaHealth, TenantTally};
use super::{Orchestrator, Pool, Replica, Tenant, health_loop};
use crate::engines;
use crate::engines::Health;
use crate::error::OrchError;
use crate::queue;

const DEFAULT_READY_TIMEOUT_MS: u64 = 30_000;

fn replica_status(replica: &Replica) -> ReplicaStatus {
    let properties = replica.engine.properties();
    let state = replica.state();
    ReplicaStatus {
        replica_id: replica.id.clone(),
        state: match state.health {
            ReplicaHealth::Starting => ReplicaState::Starting,
            ReplicaHealth::Ready => ReplicaState::Ready,
            ReplicaHealth::Down => ReplicaState::Down,
        }
        .into(),
        engine: properties.engine.clone(),
        engine_version: properties.engine_version.clone(),
        model_ref: properties.model_ref.clone(),
        active: replica.active(),
        slots: properties.slots,
        last_error: state.last_error.clone(),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Orchestrator {
    fn known_pool(&self, pool_id: &str) -> Result<&Arc<Pool>, OrchError> {
        self.pools
            .get(pool_id)
            .ok_or_else(|| OrchError::not_found(format!("pool {pool_id:?}")))
    }

    /// `GET /v1/pools` (ORCH-6020).
    pub fn pool_list(&self) -> PoolList {
        let pools = self
            .pools
            .values()
            .map(|pool| {
                let replicas = pool.replicas();
                let first = replicas.first().map(|r| r.engine.properties().clone());
                PoolSummary {
                    pool_id: pool.id().to_owned(),
                    engine: first.as_ref().map(|p| p.engine.clone()).unwrap_or_default(),
                    model_ref: first.map(|p| p.model_ref).unwrap_or_default(),
                    replicas: replicas.len() as u32,
                    ready_replicas: pool.capacity().ready_replicas,
                    queue_depth: pool.queue().len() as u32,
                    queue_capacity: pool.config.queue.capacity,
                    draining: pool.drain().is_some(),
                }
            })
            .collect();
        PoolList { pools }
    }

    /// `GET /v1/pools/{id}/health` (ORCH-6021).
    pub fn pool_health(&self, pool_id: &str) -> Result<PoolHealth, OrchError> {
        let pool = self.known_pool(pool_id)?;
        let draining = pool.drain().is_some();
        let replicas: Vec<_> = pool.replicas().iter().map(|r| replica_status(r)).collect();
        Ok(PoolHealth {
            pool_id: pool_id.to_owned(),
            live: !self.is_stopped(),
            ready: !draining && replicas.iter().any(|r| r.state == ReplicaState::Ready),
            draining,
            queue_depth: pool.queue().len() as u32,
            replicas,
        })
    }

    fn pool_action(&self, pool: &Pool) -> PoolActionResponse {
        let replicas = pool.replicas();
        PoolActionResponse {
            pool_id: pool.id().to_owned(),
            draining: pool.drain().is_some(),
            model_ref: replicas
                .first()
                .map(|r| r.engine.properties().model_ref.clone())
                .unwrap_or_default(),
            replicas: replicas.iter().map(|r| r.id.clone()).collect(),
        }
    }

    /// `POST /v1/pools/{id}/drain` (ORCH-6022): admission closes now; queued
    /// and running work continues until `deadline_ms`, then ends with
    /// `POOL_UNAVAILABLE`.
    pub fn drain_pool(
        &self,
        pool_id: &str,
        deadline_ms: u64,
    ) -> Result<PoolActionResponse, OrchError> {
        let pool = self.known_pool(pool_id)?;
        if deadline_ms > DEADLINE_MAX_MS {
            return Err(OrchError::invalid(
                "deadline_ms",
                format!("must be at most {DEADLINE_MAX_MS} (24 h), got {deadline_ms}"),
            ));
        }
        pool.set_drain(Some(Drain {
            deadline_ms: self.clock.now_ms().saturating_add(deadline_ms),
        }));
        pool.wake.notify_one();
        tracing::info!(pool = %pool_id, deadline_ms, "pool draining");
        Ok(self.pool_action(pool))
    }

    /// `POST /v1/pools/{id}/reload` (ORCH-6023): start a new replica set on
    /// `model_ref`; swap it in only when every new replica is Ready, else
    /// keep the old one serving and answer `503 POOL_UNREADY` saying why.
    pub async fn reload_pool(
        self: &Arc<Self>,
        pool_id: &str,
        model_ref: &str,
        ready_timeout_ms: Option<u64>,
    ) -> Result<PoolActionResponse, OrchError> {
        let pool = Arc::clone(self.known_pool(pool_id)?);
        if !contracts::limits::is_non_blank(model_ref) {
            return Err(OrchError::invalid("model_ref", "must not be empty"));
        }
        let _one_at_a_time = pool.reloading.lock().await;
        let current = pool.replicas();
        let fresh: Vec<Arc<Replica>> = pool
            .config
            .replicas
            .iter()
            .map(|config| {
                let engine = engines::build(&config.engine.with_model_ref(model_ref));
                let replica = match current.iter().find(|r| r.id == config.id) {
                    Some(old) => old.successor(engine),
                    None => Replica::new(config.id.clone(), engine),
                };
                Arc::new(replica)
            })
            .collect();
        let ready_timeout_ms = ready_timeout_ms.unwrap_or(DEFAULT_READY_TIMEOUT_MS);
        if ready_timeout_ms > READY_TIMEOUT_MAX_MS {
            return Err(OrchError::invalid(
                "ready_timeout_ms",
                format!("must be at most {READY_TIMEOUT_MAX_MS} (10 min), got {ready_timeout_ms}"),
            ));
        }
        let timeout = Duration::from_millis(ready_timeout_ms);
        let interval = Duration::from_millis(pool.config.health_interval_ms.max(10));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut identity = None;
        loop {
            let mut not_ready = Vec::new();
            let mut refused = Vec::new();
            for replica in &fresh {
                let health = replica.engine.health().await;
                if let Health::Refused(why) = &health {
                    refused.push(format!("{}: {why}", replica.id));
                }
                let properties = replica.engine.properties();
                replica.record_health(pool::vet_identity(
                    &mut identity,
                    &replica.id,
                    properties,
                    health,
                ));
                let state = replica.state();
                if state.health != ReplicaHealth::Ready {
                    let why = state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "not Ready".into());
                    not_ready.push(format!("{}: {why}", replica.id));
                }
            }
            if not_ready.is_empty() {
                // llama.cpp and TGI serve the model they were started with: a reload
                // re-probes them and accepts only that model (ORCH-6023).
                let serving_another: Vec<String> = fresh
                    .iter()
                    .filter(|r| r.engine.properties().model_ref != model_ref)
                    .map(|r| format!("{} serves {:?}", r.id, r.engine.properties().model_ref))
                    .collect();
                if !serving_another.is_empty() {
                    return Err(OrchError::invalid(
                        "model_ref",
                        format!(
                            "pool {pool_id} cannot switch to {model_ref:?}, the old replicas keep serving: {}; \
                             a llamacpp or tgi engine's model is the one it was started with (llama-server -m, \
                             TGI --model-id): restart the engine with the new model, then reload to re-probe it",
                            serving_another.join("; ")
                        ),
                    ));
                }
                break;
            }
            if !refused.is_empty() {
                // Permanent: waiting out the timeout would change nothing.
                return Err(OrchError::invalid(
                    "model_ref",
                    format!(
                        "pool {pool_id} cannot serve {model_ref:?}, the old replicas keep serving: {}",
                        refused.join("; ")
                    ),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OrchError::new(
                    ErrorCode::PoolUnready,
                    format!(
                        "reload of pool {pool_id} to {model_ref:?} failed, the old replicas keep serving: {}",
                        not_ready.join("; ")
                    ),
                )
                .with_backoff(queue::backoff_hint(timeout.as_millis() as u64).0));
            }
            tokio::time::sleep(interval).await;
        }
        pool.replace_replicas(fresh.clone());
        pool.set_identity(identity);
        pool.set_drain(None);
        for replica in fresh {
            tokio::spawn(health_loop(Arc::clone(self), Arc::clone(&pool), replica));
        }
        pool.wake.notify_one();
        tracing::info!(pool = %pool_id, model_ref, "pool reloaded");
        Ok(self.pool_action(&pool))
    }

    /// `GET /v1/replicasets` (ORCH-6024): one entry per pool replica set,
    /// with its load and the service levels of its last completed tasks.
    pub fn replica_sets(&self) -> ReplicaSetList {
        let replica_sets = self
            .pools
            .values()
            .filter_map(|pool| {
                let replicas = pool.replicas();
                let properties = replicas.first()?.engine.properties().clone();
                let (active, slots) = replicas.iter().fold((0, 0), |(a, s), r| {
                    (a + r.active(), s + r.engine.properties().slots)
                });
                let recent = pool.recent_completions();
                let mut ttfts: Vec<u64> = recent.iter().map(|c| c.ttft_ms).collect();
                ttfts.sort_unstable();
                let tokens: u64 = recent.iter().map(|c| u64::from(c.tokens)).sum();
                let decode_ms: u64 = recent.iter().map(|c| c.decode_ms).sum();
                Some(ReplicaSet {
                    pool_id: pool.id().to_owned(),
                    engine: properties.engine,
                    engine_version: properties.engine_version,
                    model_ref: properties.model_ref,
                    model_digest: properties.model_digest,
                    sampler_profile_version: pool.sampler_profile_version.clone(),
                    replicas: replicas.iter().map(|r| r.id.clone()).collect(),
                    load: ReplicaSetLoad {
                        active,
                        slots,
                        queue_depth: pool.queue().len() as u32,
                    },
                    slo: SloSnapshot {
                        completed: recent.len() as u32,
                        ttft_p50_ms: percentile(&ttfts, 0.5),
                        ttft_p99_ms: percentile(&ttfts, 0.99),
                        tokens_per_s: if decode_ms == 0 {
                            0.0
                        } else {
                            (tokens as f64 * 1000.0 / decode_ms as f64 * 10.0).round() / 10.0
                        },
                    },
                })
            })
            .collect();
        ReplicaSetList { replica_sets }
    }

    /// `GET /v1/capabilities` (ORCH-6025).
    pub fn capabilities(&self) -> Capabilities {
        let mut engines: Vec<String> = Vec::new();
        let pools = self
            .pools
            .values()
            .map(|pool| {
                let replicas = pool.replicas();
                let engine = replicas
                    .first()
                    .map(|r| r.engine.properties().engine.clone())
                    .unwrap_or_default();
                if !engines.contains(&engine) {
                    engines.push(engine.clone());
                }
                PoolCapability {
                    pool_id: pool.id().to_owned(),
                    engine,
                    ctx_limit: replicas
                        .iter()
                        .map(|r| r.engine.properties().ctx_limit)
                        .min()
                        .unwrap_or(0),
                    max_tokens_limit: pool.config.max_tokens_limit,
                    slots: replicas.iter().map(|r| r.engine.properties().slots).sum(),
                }
            })
            .collect();
        let features = [
            "sse",
            "last-event-id",
            "idempotent-task-id",
            "priorities",
            "full-policies",
            "sessions",
            "scopes",
            "drain",
            "reload",
            "rate-limits",
            "token-rate-limits",
            "fair-share",
            "usage",
        ];
        Capabilities {
            api_version: env!("CARGO_PKG_VERSION").into(),
            engines,
            pools,
            features: features.map(String::from).to_vec(),
        }
    }

    /// `GET /v1/usage` (ORCH-6027): the caller's own usage; an admin's is
    /// every tenant's, or `tenant`'s.
    pub fn usage(&self, caller: &Tenant, tenant: Option<&str>) -> Result<UsageReport, OrchError> {
        let mut ids: Vec<&str> = match tenant {
            Some(id) if id != caller.id && caller.role != Role::Admin => {
                return Err(OrchError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "tenant {} may see only its own usage: drop `tenant={id}`, or call with an admin key",
                        caller.id
                    ),
                ));
            }
            Some(id) if self.tenants.get(id).is_none() => {
                return Err(OrchError::not_found(format!("tenant {id:?}")));
            }
            Some(id) => vec![id],
            None if caller.role == Role::Admin => self.tenants.ids().collect(),
            None => vec![caller.id.as_str()],
        };
        ids.sort_unstable();
        let pools: Vec<PoolShares> = self
            .pools
            .values()
            .map(|pool| PoolShares::of(pool, |id| self.weight_of(id)))
            .collect();
        let now = self.clock.now_ms();
        let tenants = ids
            .into_iter()
            .filter_map(|id| self.tenants.get(id))
            .map(|tenant| TenantUsage {
                tenant: tenant.id.clone(),
                weight: tenant.weight,
                running: tenant.running(),
                max_concurrent: tenant.max_concurrent,
                tokens_available: tenant.tokens_available(now),
                token_burst: tenant.token_burst(),
                pools: pools.iter().map(|p| p.of_tenant(tenant)).collect(),
            })
            .collect();
        Ok(UsageReport { tenants })
    }

    fn weight_of(&self, tenant: &str) -> u32 {
        self.tenants.get(tenant).map_or(1, |t| t.weight)
    }
}

/// What one pool's usage answer is computed from, read once per call.
struct PoolShares {
    pool_id: String,
    fairness: Fairness,
    queued: HashMap<Arc<str>, u32>,
    tallies: HashMap<String, TenantTally>,
    served_total: u64,
    /// The weights of the tenants with queued or running tasks.
    active_weight: u64,
}

impl PoolShares {
    fn of(pool: &Pool, weight_of: impl Fn(&str) -> u32) -> Self {
        let queued = pool.queue().queued_by_tenant();
        let tallies = pool.tenant_tallies();
        let active_weight = queued
            .keys()
            .map(|id| &**id)
            .chain(
                tallies
                    .iter()
                    .filter(|(_, t)| t.running > 0)
                    .map(|(id, _)| id.as_str()),
            )
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|id| u64::from(weight_of(id)))
            .sum();
        Self {
            pool_id: pool.id().to_owned(),
            fairness: pool.config.queue.fairness,
            served_total: tallies.values().map(|t| t.served_tokens).sum(),
            queued,
            tallies,
            active_weight,
        }
    }

    fn of_tenant(&self, tenant: &Tenant) -> PoolUsage {
        let queued = self.queued.get(tenant.id.as_str()).copied().unwrap_or(0);
        let tally = self.tallies.get(&tenant.id).copied().unwrap_or_default();
        let active = queued > 0 || tally.running > 0;
        let weight = u64::from(tenant.weight);
        // An idle tenant is told what it would get once it had work.
        let weights = self.active_weight + if active { 0 } else { weight };
        PoolUsage {
            pool_id: self.pool_id.clone(),
            queued,
            running: tally.running,
            served_tokens: tally.served_tokens,
            served_share: share(tally.served_tokens, self.served_total),
            entitled_share: (self.fairness == Fairness::Weighted).then(|| share(weight, weights)),
        }
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
