//! Control-plane bodies (ORCH-6020..ORCH-6027), sessions (ORCH-5013) and
//! scope purge (ORCH-6013).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Loading; not placed on yet.
    Starting,
    Ready,
    /// Failed health checks or lost; the monitor retries with backoff.
    Down,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct ReplicaStatus {
    pub replica_id: String,
    #[schema(value_type = ReplicaState)]
    #[schemars(with = "ReplicaState")]
    pub state: crate::OpenEnum<ReplicaState>,
    pub engine: String,
    pub engine_version: String,
    pub model_ref: String,
    /// Running tasks.
    pub active: u32,
    pub slots: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `GET /v1/pools/{id}/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct PoolHealth {
    pub pool_id: String,
    /// The pool's dispatcher runs.
    pub live: bool,
    /// At least one replica is Ready and the pool is not draining.
    pub ready: bool,
    pub draining: bool,
    pub queue_depth: u32,
    pub replicas: Vec<ReplicaStatus>,
}

/// An item of `GET /v1/pools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct PoolSummary {
    pub pool_id: String,
    pub engine: String,
    pub model_ref: String,
    pub replicas: u32,
    pub ready_replicas: u32,
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct PoolList {
    pub pools: Vec<PoolSummary>,
}

/// Body of `POST /v1/pools/{id}/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// After this many ms, tasks still queued or running end with `POOL_UNAVAILABLE`.
    #[serde(deserialize_with = "crate::json_int::unsigned")]
    pub deadline_ms: u64,
}

/// Answer of drain and reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct PoolActionResponse {
    pub pool_id: String,
    pub draining: bool,
    pub model_ref: String,
    pub replicas: Vec<String>,
}

/// Body of `POST /v1/pools/{id}/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    pub model_ref: String,
    /// How long the new replicas may take to become Ready (default 30000).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::json_int::optional"
    )]
    pub ready_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct ReplicaSetLoad {
    pub active: u32,
    pub slots: u32,
    pub queue_depth: u32,
}

/// Recent service levels of a replica set (the last completed tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct SloSnapshot {
    pub completed: u32,
    pub ttft_p50_ms: u64,
    pub ttft_p99_ms: u64,
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct ReplicaSet {
    pub pool_id: String,
    pub engine: String,
    pub engine_version: String,
    pub model_ref: String,
    pub model_digest: String,
    pub sampler_profile_version: String,
    pub replicas: Vec<String>,
    pub load: ReplicaSetLoad,
    pub slo: SloSnapshot,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct ReplicaSetList {
    pub replica_sets: Vec<ReplicaSet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct PoolCapability {
    pub pool_id: String,
    pub engine: String,
    pub ctx_limit: u32,
    pub max_tokens_limit: u32,
    pub slots: u32,
}

/// `GET /v1/capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct Capabilities {
    pub api_version: String,
    pub engines: Vec<String>,
    pub pools: Vec<PoolCapability>,
    pub features: Vec<String>,
}

/// One tenant's part of one pool (ORCH-6027).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct PoolUsage {
    pub pool_id: String,
    /// Its tasks waiting in the pool's queue.
    pub queued: u32,
    /// Its tasks on the pool's replicas now.
    pub running: u32,
    /// Prompt and generated tokens of its tasks that ran in this pool since
    /// the dispatcher started.
    pub served_tokens: u64,
    /// Its fraction of the tokens the pool served in that time (0 when the
    /// pool served none).
    pub served_share: f64,
    /// The fraction of the pool that fair share gives it while it has work:
    /// its weight over the weights of the tenants with queued or running
    /// tasks in the pool, itself counted (ORCH-3015). Absent under
    /// `fairness: fifo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entitled_share: Option<f64>,
}

/// One tenant's usage and share (ORCH-6027).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct TenantUsage {
    pub tenant: String,
    /// Its weight in every pool's fair share (ORCH-3015).
    pub weight: u32,
    /// Its tasks running now, over every pool.
    pub running: u32,
    /// Its concurrency quota (ORCH-3011), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Tokens its token bucket holds now (ORCH-3017), if it has a token
    /// rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_available: Option<u64>,
    /// The most tokens that bucket holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_burst: Option<u64>,
    /// One entry per configured pool.
    pub pools: Vec<PoolUsage>,
}

/// `GET /v1/usage` (ORCH-6027).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct UsageReport {
    /// By tenant id.
    pub tenants: Vec<TenantUsage>,
}

/// `GET /v1/sessions/{id}` (ORCH-5012).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct SessionInfo {
    pub session_id: String,
    pub ttl_ms_remaining: u64,
    pub turns: u32,
    /// Estimated KV cache held for the session on its replica.
    pub kv_bytes: u64,
    /// Whether that KV cache is still resident.
    pub kv_warmth: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
}

/// Answer of `DELETE /v1/scopes/{scope}` (ORCH-6013).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct ScopePurge {
    pub scope: String,
    /// Tasks that were queued or running and were canceled.
    pub tasks_canceled: u32,
    /// Tasks removed from the store.
    pub tasks_purged: u32,
    pub sessions_purged: u32,
}
