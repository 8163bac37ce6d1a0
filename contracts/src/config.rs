//! The daemon's YAML config (ORCH-7201, ORCH-7202). Unknown fields are an
//! error; every field has a default so an empty file is a valid config.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address; `--bind` overrides it.
    pub bind: String,
    /// Where tasks are stored: a SQLite file, or a PostgreSQL URL
    /// (`postgres://…`) that several daemons share; `--store` overrides it.
    pub store: String,
    /// This daemon's name: the `daemon` label of its metrics and how the cluster
    /// names its dispatcher (ORCH-7014). Defaults to the address it listens on.
    /// Like `bind` and `store` it may differ between the daemons of one cluster.
    pub instance: Option<String>,
    /// Several daemons on one PostgreSQL store (ORCH-7012, ORCH-7013).
    pub cluster: ClusterConfig,
    /// How long terminal tasks and their event logs stay readable (ORCH-7004).
    pub retention_ms: u64,
    /// On SIGTERM, how long in-flight work may run before it is persisted and
    /// the daemon exits (ORCH-7007).
    pub shutdown_grace_ms: u64,
    /// Interval of SSE keep-alive comments (ORCH-1105).
    pub keepalive_ms: u64,
    /// Largest request body the server reads; a larger one is `413` with the error
    /// envelope (ORCH-2024).
    pub max_body_bytes: u64,
    pub sessions: SessionConfig,
    /// API keys and quotas. With none, every caller is the admin tenant
    /// `default` and the server binds loopback only (ORCH-6004).
    pub tenants: Vec<TenantConfig>,
    pub pools: Vec<PoolConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            store: "orchqueue.db".into(),
            instance: None,
            cluster: ClusterConfig::default(),
            retention_ms: 24 * 3600 * 1000,
            shutdown_grace_ms: 10_000,
            keepalive_ms: 5_000,
            max_body_bytes: crate::limits::MAX_BODY_BYTES_DEFAULT,
            sessions: SessionConfig::default(),
            tenants: Vec::new(),
            pools: vec![PoolConfig {
                id: "default".into(),
                replicas: vec![ReplicaConfig::builtin("r0"), ReplicaConfig::builtin("r1")],
                ..PoolConfig::default()
            }],
        }
    }
}

/// The dispatcher lease of a cluster (ORCH-7013).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// How long the dispatching daemon's lease lasts without a renewal before
    /// another daemon takes over; renewed every third of it. A shorter lease fails
    /// over sooner and costs more writes.
    pub lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { lease_ms: 5_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// 429 `ADMISSION_REJECT` to the newcomer (ORCH-3004).
    #[default]
    Reject,
    /// Evict the oldest queued task, admit the newcomer (ORCH-3005).
    DropLru,
    /// Interactive newcomers evict the newest queued batch task (ORCH-3006).
    ShedLowPriority,
}

/// How a pool's queue shares a priority between tenants (ORCH-3015).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Fairness {
    /// Each tenant in turn by the tokens it was served over its weight; FIFO
    /// within a tenant.
    #[default]
    Weighted,
    /// One line in admission order, whoever the tenant.
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Queued (not running) tasks the pool holds (ORCH-3001).
    pub capacity: u32,
    pub full_policy: FullPolicy,
    /// Consecutive interactive dispatches after which a waiting batch task
    /// goes next (ORCH-3003).
    pub batch_starvation_bound: u32,
    /// Under `reject`, hold a place for a refused task's retry (ORCH-3012).
    /// Off, a refusal holds none and its hint is the wait for one place.
    pub retry_line: bool,
    /// How tenants share each priority (ORCH-3015).
    pub fairness: Fairness,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 256,
            full_policy: FullPolicy::Reject,
            batch_starvation_bound: 4,
            retry_line: true,
            fairness: Fairness::Weighted,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Wall watchdog: a running task longer than this ends `DECODE_TIMEOUT` (ORCH-5001).
    pub wall_ms: u64,
    /// Idle watchdog: no token for this long ends `DECODE_TIMEOUT` (ORCH-5002).
    pub idle_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            wall_ms: 300_000,
            idle_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub id: String,
    /// Other names of the pool as the OpenAI surface's `model` (ORCH-8002):
    /// e.g. the model's own name, so programs that send it work unchanged.
    pub aliases: Vec<String>,
    pub queue: QueueConfig,
    pub timeouts: TimeoutConfig,
    /// Period of `metrics` stream events; 0 turns them off (ORCH-1106).
    pub metrics_interval_ms: u64,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: u32,
    /// Largest prompt in bytes.
    pub max_prompt_bytes: u32,
    /// Sampler profile of the pool's replica set (ORCH-1009).
    pub sampler_profile_version: String,
    /// Health probe period of each replica (ORCH-4013).
    pub health_interval_ms: u64,
    /// Longest wait between probes of a down replica: the wait doubles from
    /// `health_interval_ms` with each failed probe, up to this (ORCH-4013).
    pub health_backoff_cap_ms: u64,
    pub replicas: Vec<ReplicaConfig>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            id: "default".into(),
            aliases: Vec::new(),
            queue: QueueConfig::default(),
            timeouts: TimeoutConfig::default(),
            metrics_interval_ms: 1_000,
            max_tokens_limit: 4_096,
            max_prompt_bytes: 1 << 20,
            sampler_profile_version: "sp-1".into(),
            health_interval_ms: 250,
            health_backoff_cap_ms: 5_000,
            replicas: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    pub id: String,
    pub engine: EngineConfig,
}

impl ReplicaConfig {
    pub fn builtin(id: &str) -> Self {
        Self {
            id: id.into(),
            engine: EngineConfig::Builtin(BuiltinEngineConfig::default()),
        }
    }
}

/// Which adapter drives the replica (ORCH-4010).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EngineConfig {
    Builtin(BuiltinEngineConfig),
    /// llama.cpp's `llama-server`, through its native HTTP API (ORCH-4020).
    Llamacpp(LlamaCppEngineConfig),
    /// Any OpenAI-compatible server: vLLM, llama.cpp `/v1`, SGLang, Ollama (ORCH-4021).
    Openai(OpenAiEngineConfig),
    /// Text Generation Inference (ORCH-4022).
    Tgi(TgiEngineConfig),
}

impl EngineConfig {
    /// The adapter name, as reported in `started` events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Builtin(_) => "builtin",
            Self::Llamacpp(_) => "llamacpp",
            Self::Openai(_) => "openai",
            Self::Tgi(_) => "tgi",
        }
    }

    /// The engine version the config pins, if any: always for builtin; for
    /// remote engines only when `engine_version` is set, else it is
    /// discovered from the engine (ORCH-4003, ORCH-4026).
    pub fn pinned_engine_version(&self) -> Option<&str> {
        match self {
            Self::Builtin(c) => Some(&c.engine_version),
            Self::Llamacpp(c) => c.engine_version.as_deref(),
            Self::Openai(c) => c.engine_version.as_deref(),
            Self::Tgi(c) => c.engine_version.as_deref(),
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

/// A `llama-server` replica (ORCH-4020). Slots, context and model come from
/// its `/props` and `/slots` unless overridden here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlamaCppEngineConfig {
    /// e.g. `http://127.0.0.1:8081` (no trailing path).
    pub base_url: String,
    /// Overrides the slot count the engine reports (`total_slots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Overrides the per-slot context the engine reports (`n_ctx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_limit: Option<u32>,
    /// When set, the engine's `build_info` must equal it or the replica
    /// stays unready (ORCH-4026).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    /// The model's digest, e.g. `sha256:…` of the GGUF file; when unset, a
    /// fingerprint of the model metadata the engine reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Bound of every non-streaming call (health, props, tokenize).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl LlamaCppEngineConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            slots: None,
            ctx_limit: None,
            engine_version: None,
            model_digest: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

/// Which OpenAI endpoint generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpenAiApi {
    /// `POST /v1/completions` with the prompt as is.
    #[default]
    Completions,
    /// `POST /v1/chat/completions` with the prompt as one user message.
    Chat,
}

/// An OpenAI-compatible replica (ORCH-4021).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiEngineConfig {
    /// e.g. `http://127.0.0.1:8000` (the adapter appends `/v1/...`).
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The model to ask for; default: the first one `/v1/models` lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub api: OpenAiApi,
    /// Concurrent generations to place on the replica (the API does not say).
    #[serde(default = "default_openai_slots")]
    pub slots: u32,
    /// Context limit; default: what `/v1/models` reports (`max_model_len`
    /// or `meta.n_ctx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_openai_slots() -> u32 {
    4
}

impl OpenAiEngineConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: None,
            api: OpenAiApi::Completions,
            slots: default_openai_slots(),
            ctx_limit: None,
            engine_version: None,
            model_digest: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

/// A Text Generation Inference replica (ORCH-4022). Slots and context come
/// from `/info` unless overridden here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TgiEngineConfig {
    pub base_url: String,
    /// Overrides `max_concurrent_requests` from `/info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Overrides `max_total_tokens` from `/info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl TgiEngineConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            slots: None,
            ctx_limit: None,
            engine_version: None,
            model_digest: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

impl EngineConfig {
    /// The same engine asked to serve another model (a pool reload,
    /// ORCH-6023). Engines that load their model at process start (llama.cpp,
    /// TGI) keep their config: the reload reconnects and re-reads what they
    /// report.
    pub fn with_model_ref(&self, model_ref: &str) -> Self {
        let mut config = self.clone();
        match &mut config {
            Self::Builtin(builtin) => builtin.model_ref = model_ref.to_owned(),
            Self::Openai(openai) => openai.model = Some(model_ref.to_owned()),
            Self::Llamacpp(_) | Self::Tgi(_) => {}
        }
        config
    }
}

/// The in-process deterministic engine (ORCH-4011, ORCH-4012).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinEngineConfig {
    pub tokens_per_s: f64,
    pub ttft_ms: u64,
    pub slots: u32,
    pub ctx_limit: u32,
    pub engine_version: String,
    pub model_ref: String,
    /// The replica reports Unready for this long after start (model preload).
    pub start_unready_ms: u64,
    pub faults: BuiltinFaults,
    /// Test aid: a file to which every generation appends one line (its prompt and
    /// this process's id), so a test counts the generations of a task across
    /// daemons on the engine side (ORCH-7012).
    pub journal: Option<String>,
}

impl Default for BuiltinEngineConfig {
    fn default() -> Self {
        Self {
            tokens_per_s: 200.0,
            ttft_ms: 20,
            slots: 4,
            ctx_limit: 4_096,
            engine_version: "builtin-1.0.0".into(),
            model_ref: "builtin:tiny-words".into(),
            start_unready_ms: 0,
            faults: BuiltinFaults::default(),
            journal: None,
        }
    }
}

/// Faults a builtin replica injects; also settable at run time through the
/// server's test handle.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinFaults {
    /// The replica crashes after emitting this many tokens of a generation.
    pub crash_after_tokens: Option<u32>,
    /// Generations start but never emit a token.
    pub hang: bool,
    /// Every token takes this many times longer.
    pub slow_factor: Option<f64>,
    /// Generations are refused at start.
    pub refuse: bool,
    /// Generations are rejected as invalid requests, as a remote engine rejects a
    /// prompt it counts longer than the pool's context allows.
    pub reject_as_invalid: bool,
    /// Health probes fail.
    pub fail_health: bool,
}

/// Session limits (ORCH-5010..ORCH-5015).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Idle time after which a session expires; at most 600000 (10 min).
    pub ttl_ms: u64,
    /// Tasks per session; at most 8.
    pub max_turns: u32,
    /// Estimated KV bytes per token (prompt and output) of a session.
    pub kv_bytes_per_token: u64,
    /// KV bytes a replica holds for sessions before evicting the least
    /// recently used.
    pub kv_budget_bytes_per_replica: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 600_000,
            max_turns: 8,
            kv_bytes_per_token: 2_048,
            kv_budget_bytes_per_replica: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Data plane only.
    #[default]
    Client,
    /// Data and control plane.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    #[serde(default)]
    pub role: Role,
    /// Hex SHA-256 of each API key; the keys themselves are never stored.
    pub api_key_sha256: Vec<String>,
    /// Running tasks at once; the excess waits queued (ORCH-3011).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Token bucket on admissions (ORCH-3010).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Bucket of tokens (prompt + `max_tokens`) on admissions (ORCH-3017).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rate_limit: Option<TokenRateLimitConfig>,
    /// Share of each queue this tenant gets when others want more
    /// (ORCH-3015): served tokens are divided by it. Default 1.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Tokens a tenant's admissions may cost (ORCH-3017).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRateLimitConfig {
    /// Sustained tokens per minute.
    #[schemars(range(min = 1))]
    pub per_minute: u64,
    /// Bucket size: tokens allowed in a burst, and the most one task may
    /// cost. Default: `per_minute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained admissions per second.
    pub per_second: f64,
    /// Bucket size: admissions allowed in a burst.
    pub burst: u32,
}
