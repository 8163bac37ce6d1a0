//! The daemon's YAML config (ORCH-7201, ORCH-7202). Unknown fields are an
//! error; every field has a default so an empty file is a valid config.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address; `--bind` overrides it.
    pub bind: String,
    /// SQLite file; `--store` overrides it.
    pub store: String,
    /// How long terminal tasks and their event logs stay readable (ORCH-7004).
    pub retention_ms: u64,
    /// On SIGTERM, how long in-flight work may run before it is persisted and
    /// the daemon exits (ORCH-7007).
    pub shutdown_grace_ms: u64,
    /// Interval of SSE keep-alive comments (ORCH-1105).
    pub keepalive_ms: u64,
    pub pools: Vec<PoolConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            store: "orchqueue.db".into(),
            retention_ms: 24 * 3600 * 1000,
            shutdown_grace_ms: 10_000,
            keepalive_ms: 5_000,
            pools: vec![PoolConfig {
                id: "default".into(),
                replicas: vec![ReplicaConfig::builtin("r0"), ReplicaConfig::builtin("r1")],
                ..PoolConfig::default()
            }],
        }
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Queued (not running) tasks the pool holds (ORCH-3001).
    pub capacity: u32,
    pub full_policy: FullPolicy,
    /// Consecutive interactive dispatches after which a waiting batch task
    /// goes next (ORCH-3003).
    pub batch_starvation_bound: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 256,
            full_policy: FullPolicy::Reject,
            batch_starvation_bound: 4,
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
    pub replicas: Vec<ReplicaConfig>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            id: "default".into(),
            queue: QueueConfig::default(),
            timeouts: TimeoutConfig::default(),
            metrics_interval_ms: 1_000,
            max_tokens_limit: 4_096,
            max_prompt_bytes: 1 << 20,
            sampler_profile_version: "sp-1".into(),
            health_interval_ms: 250,
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
    /// Health probes fail.
    pub fail_health: bool,
}
