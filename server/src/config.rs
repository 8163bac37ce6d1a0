//! Loading and checking the YAML config (ORCH-7201, ORCH-7202, ORCH-4003).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use contracts::config::{Config, EngineConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: at `{at}`: {message}")]
    Parse {
        path: String,
        at: String,
        message: String,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("{file}: invalid config ({} error(s)):{}", issues.len(), Issues(issues))]
    Issues {
        file: String,
        issues: Vec<ConfigIssue>,
    },
}

/// The config's JSON Schema, embedded from the very file `cargo xtask
/// regen-schema` writes, so the binary and the published schema cannot
/// differ (ORCH-7203).
pub const SCHEMA: &str = include_str!("../../contracts/schemas/config.schema.json");

/// One problem of a config file: where (`pools[0].queue.capacity`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl ConfigIssue {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every issue, one per line, under a head line naming the source.
pub struct Issues<'a>(pub &'a [ConfigIssue]);

impl std::fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for issue in self.0 {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

/// Parse and check a config file; on failure every problem is reported,
/// each with its path (ORCH-7201, ORCH-7203).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    check_text(&text).map_err(|issues| ConfigError::Issues {
        file: path.display().to_string(),
        issues,
    })
}

/// The whole check of a config document: YAML syntax, then the JSON Schema
/// (all its errors at once), then the typed parse, then the checks the
/// schema cannot express (`semantic_issues`).
pub fn check_text(text: &str) -> Result<Config, Vec<ConfigIssue>> {
    let document: serde_json::Value = match serde_yaml::from_str(text) {
        Ok(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Ok(document) => document,
        Err(error) => return Err(vec![ConfigIssue::new("(yaml)", error.to_string())]),
    };
    let issues = schema_issues(&document);
    if !issues.is_empty() {
        return Err(issues);
    }
    let config: Config = serde_path_to_error::deserialize(document).map_err(|error| {
        vec![ConfigIssue::new(
            error.path().to_string(),
            error.inner().to_string(),
        )]
    })?;
    let issues = semantic_issues(&config);
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(issues)
    }
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: std::sync::LazyLock<jsonschema::Validator> = std::sync::LazyLock::new(|| {
        let schema: serde_json::Value =
            serde_json::from_str(SCHEMA).expect("the embedded config schema is JSON");
        jsonschema::validator_for(&schema).expect("the embedded config schema is a valid schema")
    });
    &VALIDATOR
}

/// Every schema violation of `document`, each at the path of the offending
/// value (an unknown field at its own path).
pub fn schema_issues(document: &serde_json::Value) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for error in validator().iter_errors(document) {
        push_schema_issue(&error, &mut issues);
    }
    issues
}

fn push_schema_issue(error: &jsonschema::ValidationError<'_>, issues: &mut Vec<ConfigIssue>) {
    use jsonschema::error::ValidationErrorKind as Kind;
    let at = pointer_to_path(error.instance_path().as_str());
    match error.kind() {
        Kind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                issues.push(ConfigIssue::new(join(&at, name), "unknown field"));
            }
        }
        // Engines are a union tagged by `kind`: report the errors of the
        // variant the document names, or the kinds there are.
        Kind::OneOfNotValid { context } => {
            let constant = |e: &jsonschema::ValidationError<'_>| match e.kind() {
                Kind::Constant { expected_value } => Some(expected_value.to_string()),
                _ => None,
            };
            // An enum (one constant per variant): name the allowed values.
            let allowed: Vec<String> = context
                .iter()
                .filter_map(|branch| match branch.as_slice() {
                    [only] if only.instance_path() == error.instance_path() => constant(only),
                    _ => None,
                })
                .collect();
            if !allowed.is_empty() && allowed.len() == context.len() {
                issues.push(ConfigIssue::new(
                    at,
                    format!("{} is not one of {}", error.instance(), allowed.join(", ")),
                ));
                return;
            }
            // A union tagged by `kind` (engines): report the errors of the
            // variant the document names, or the kinds there are.
            let is_kind_error = |e: &jsonschema::ValidationError<'_>| {
                e.instance_path().as_str().ends_with("/kind")
                    || matches!(e.kind(), Kind::Required { property } if property == "kind")
            };
            let tagged = context.iter().flatten().any(is_kind_error);
            if tagged
                && let Some(branch) = context
                    .iter()
                    .find(|branch| !branch.iter().any(is_kind_error))
            {
                for inner in branch {
                    push_schema_issue(inner, issues);
                }
                return;
            }
            let kinds: Vec<String> = context
                .iter()
                .flatten()
                .filter(|e| is_kind_error(e))
                .filter_map(constant)
                .collect();
            if kinds.is_empty() {
                issues.push(ConfigIssue::new(at, error.to_string()));
            } else {
                let given = error.instance().get("kind").map(ToString::to_string);
                issues.push(ConfigIssue::new(
                    join(&at, "kind"),
                    format!(
                        "unknown or missing engine kind {}; expected one of {}",
                        given.as_deref().unwrap_or("(none)"),
                        kinds.join(", ")
                    ),
                ));
            }
        }
        _ => issues.push(ConfigIssue::new(at, error.to_string())),
    }
}

/// `/pools/0/queue` → `pools[0].queue`; the document root is `.`.
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        path = join(&path, &segment);
    }
    if path.is_empty() { ".".into() } else { path }
}

fn join(path: &str, segment: &str) -> String {
    if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}[{segment}]", if path == "." { "" } else { path })
    } else if path.is_empty() || path == "." {
        segment.to_owned()
    } else {
        format!("{path}.{segment}")
    }
}

pub fn parse(text: &str) -> Result<Config, (String, String)> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer)
        .map_err(|error| (error.path().to_string(), error.inner().to_string()))
}

/// Checks the schema cannot express, all of them: unique ids, non-empty
/// pools, engine settings, and one engine version per replica set.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let issues = semantic_issues(config);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Issues {
            file: "config".into(),
            issues,
        })
    }
}

/// Session bounds of the spec (ORCH-5010, ORCH-5012).
const SESSION_TTL_MAX_MS: u64 = 600_000;
const SESSION_TURNS_MAX: u32 = 8;
/// SSE keep-alive comments: often enough for proxies, rare enough to cost nothing.
const KEEPALIVE_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// The dispatcher lease (ORCH-7013): long enough for a renewal round trip under
/// load, short enough that a failover is not a long outage.
const LEASE_MS: std::ops::RangeInclusive<u64> = 300..=600_000;

/// Longest pool alias: model names such as `HuggingFaceTB/SmolLM2-135M-Instruct`.
const ALIAS_MAX_LEN: usize = 256;

/// A pool's aliases are `model` names of the OpenAI surface (ORCH-8002): each must
/// name one pool only, and be printable.
fn alias_issues<'a>(
    at: &str,
    pool: &'a contracts::config::PoolConfig,
    model_names: &mut std::collections::HashMap<&'a str, String>,
    issues: &mut Vec<ConfigIssue>,
) {
    for (a, alias) in pool.aliases.iter().enumerate() {
        let path = format!("{at}.aliases[{a}]");
        if alias.trim().is_empty()
            || alias.len() > ALIAS_MAX_LEN
            || alias.chars().any(char::is_control)
        {
            issues.push(ConfigIssue::new(
                path,
                format!(
                    "alias {alias:?} must be 1-{ALIAS_MAX_LEN} bytes of printable text, not only white space"
                ),
            ));
            continue;
        }
        if let Some(first) = model_names.get(alias.as_str()) {
            issues.push(ConfigIssue::new(
                path,
                format!("alias {alias:?} is already the model name at {first}; a model name must name one pool"),
            ));
            continue;
        }
        model_names.insert(alias, path);
    }
}

pub fn semantic_issues(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    server_issues(config, &mut issues);
    tenant_issues(config, &mut issues);
    let mut pool_ids = HashSet::new();
    let mut replica_pools = std::collections::HashMap::new();
    let mut model_names: std::collections::HashMap<&str, String> = config
        .pools
        .iter()
        .enumerate()
        .map(|(p, pool)| (pool.id.as_str(), format!("pools[{p}].id")))
        .collect();
    for (p, pool) in config.pools.iter().enumerate() {
        let at = format!("pools[{p}]");
        // Pool ids appear in URL paths and in the documented `pool_id` syntax.
        if !contracts::limits::is_id(&pool.id) {
            issues.push(ConfigIssue::new(
                format!("{at}.id"),
                format!(
                    "pool id {:?} must be 1-{} characters of [A-Za-z0-9._:-], not only dots",
                    pool.id,
                    contracts::limits::ID_MAX_LEN
                ),
            ));
        }
        if !pool_ids.insert(&pool.id) {
            issues.push(ConfigIssue::new(
                format!("{at}.id"),
                format!("duplicate pool id {:?}", pool.id),
            ));
        }
        alias_issues(&at, pool, &mut model_names, &mut issues);
        if pool.replicas.is_empty() {
            issues.push(ConfigIssue::new(
                format!("{at}.replicas"),
                format!("pool {:?} needs at least one replica", pool.id),
            ));
        }
        if pool.queue.batch_starvation_bound == 0 {
            issues.push(ConfigIssue::new(
                format!("{at}.queue.batch_starvation_bound"),
                "must be at least 1 (interactive tasks dispatched before a waiting batch task)",
            ));
        }
        for (field, value) in [
            ("wall_ms", pool.timeouts.wall_ms),
            ("idle_ms", pool.timeouts.idle_ms),
        ] {
            if value == 0 {
                issues.push(ConfigIssue::new(
                    format!("{at}.timeouts.{field}"),
                    "must be at least 1 ms: a watchdog of 0 would end every task at once",
                ));
            }
        }
        if pool.health_backoff_cap_ms < pool.health_interval_ms {
            issues.push(ConfigIssue::new(
                format!("{at}.health_backoff_cap_ms"),
                format!(
                    "must be at least health_interval_ms ({}): the wait between probes only grows",
                    pool.health_interval_ms
                ),
            ));
        }
        if pool.queue.capacity == 0 {
            issues.push(ConfigIssue::new(
                format!("{at}.queue.capacity"),
                "must be at least 1",
            ));
        }
        let mut versions: Vec<(&str, String)> = Vec::new();
        for (r, replica) in pool.replicas.iter().enumerate() {
            // Replica ids name a replica server-wide (sessions, metrics).
            if let Some(first_pool) = replica_pools.insert(&replica.id, &pool.id) {
                issues.push(ConfigIssue::new(
                    format!("{at}.replicas[{r}].id"),
                    format!(
                        "duplicate replica id {:?} (pool {:?}, and pool {first_pool:?} before it); replica ids must be unique across pools",
                        replica.id, pool.id
                    ),
                ));
            }
            if let Err(error) = check_engine(&pool.id, &replica.id, &replica.engine) {
                let message = match error {
                    ConfigError::Invalid(message) => message,
                    other => other.to_string(),
                };
                issues.push(ConfigIssue::new(
                    format!("{at}.replicas[{r}].engine"),
                    message,
                ));
            }
            versions.push((&replica.id, engine_version_key(&replica.engine)));
        }
        let mut distinct: Vec<&String> = versions.iter().map(|(_, v)| v).collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > 1 {
            let runs: Vec<String> = versions
                .iter()
                .map(|(id, version)| format!("{id} runs {version:?}"))
                .collect();
            issues.push(ConfigIssue::new(
                format!("{at}.replicas"),
                format!(
                    "pool {:?}: a replica set must not mix engines or engine versions (ORCH-4003): {}; \
                     give every replica of the pool the same engine and engine_version, or split them into pools",
                    pool.id,
                    runs.join(", ")
                ),
            ));
        }
    }
    issues
}

fn server_issues(config: &Config, issues: &mut Vec<ConfigIssue>) {
    if !LEASE_MS.contains(&config.cluster.lease_ms) {
        issues.push(ConfigIssue::new(
            "cluster.lease_ms",
            format!(
                "must be between {} and {} (a lease renewed every third of it), got {}",
                LEASE_MS.start(),
                LEASE_MS.end(),
                config.cluster.lease_ms
            ),
        ));
    }
    if let Some(instance) = &config.instance
        && !contracts::limits::is_id(instance)
    {
        issues.push(ConfigIssue::new(
            "instance",
            format!(
                "instance {instance:?} must be 1-{} characters of [A-Za-z0-9._:-] (it is a metrics label)",
                contracts::limits::ID_MAX_LEN
            ),
        ));
    }
    if config.sessions.ttl_ms == 0 || config.sessions.ttl_ms > SESSION_TTL_MAX_MS {
        issues.push(ConfigIssue::new(
            "sessions.ttl_ms",
            format!(
                "must be between 1 and {SESSION_TTL_MAX_MS} (10 min), got {}",
                config.sessions.ttl_ms
            ),
        ));
    }
    if config.sessions.max_turns == 0 || config.sessions.max_turns > SESSION_TURNS_MAX {
        issues.push(ConfigIssue::new(
            "sessions.max_turns",
            format!(
                "must be between 1 and {SESSION_TURNS_MAX}, got {}",
                config.sessions.max_turns
            ),
        ));
    }
    let largest_prompt = config
        .pools
        .iter()
        .map(|p| u64::from(p.max_prompt_bytes))
        .max()
        .unwrap_or(0);
    if config.max_body_bytes < 1024 || config.max_body_bytes < largest_prompt {
        issues.push(ConfigIssue::new(
            "max_body_bytes",
            format!(
                "must be at least 1024 and at least the largest max_prompt_bytes of a pool ({largest_prompt}), got {}",
                config.max_body_bytes
            ),
        ));
    }
    if !KEEPALIVE_MS.contains(&config.keepalive_ms) {
        issues.push(ConfigIssue::new(
            "keepalive_ms",
            format!(
                "must be between {} and {} ms, got {}",
                KEEPALIVE_MS.start(),
                KEEPALIVE_MS.end(),
                config.keepalive_ms
            ),
        ));
    }
}

/// Tenants the server can serve: unique ids, each with at least one key, every key a
/// SHA-256 in hex and held by one tenant only (a key under two tenants would make the
/// tenant of a call ambiguous).
/// The `tenant` label's budget in `ci/metrics.lint.json` (ORCH-7106).
const MAX_TENANTS: usize = 256;

fn tenant_issues(config: &Config, issues: &mut Vec<ConfigIssue>) {
    if config.tenants.len() > MAX_TENANTS {
        issues.push(ConfigIssue::new(
            "tenants",
            format!(
                "{} tenants configured, at most {MAX_TENANTS}: each is a value of the metrics' tenant label; give tenants that share a quota one id",
                config.tenants.len()
            ),
        ));
    }
    let mut ids = std::collections::HashMap::new();
    let mut keys: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for (t, tenant) in config.tenants.iter().enumerate() {
        let at = format!("tenants[{t}]");
        if let Some(first) = ids.insert(tenant.id.as_str(), t) {
            issues.push(ConfigIssue::new(
                format!("{at}.id"),
                format!(
                    "duplicate tenant id {:?} (also tenants[{first}])",
                    tenant.id
                ),
            ));
        }
        if tenant.api_key_sha256.is_empty() {
            issues.push(ConfigIssue::new(
                format!("{at}.api_key_sha256"),
                format!(
                    "tenant {:?} has no key, so no call could act as it; add the hex SHA-256 of its key (e.g. `printf %s \"$KEY\" | sha256sum`), or remove the tenant",
                    tenant.id
                ),
            ));
        }
        for (k, hash) in tenant.api_key_sha256.iter().enumerate() {
            let at = format!("{at}.api_key_sha256[{k}]");
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                issues.push(ConfigIssue::new(
                    at,
                    format!(
                        "must be a SHA-256 as 64 hex digits (`printf %s \"$KEY\" | sha256sum`), got {} characters",
                        hash.len()
                    ),
                ));
                continue;
            }
            if let Some(other) = keys.insert(hash.to_ascii_lowercase(), &tenant.id)
                && other != tenant.id
            {
                issues.push(ConfigIssue::new(
                    at,
                    format!(
                        "this key is also a key of tenant {other:?}; a key must identify one tenant"
                    ),
                ));
            }
        }
    }
}

/// What a replica set must agree on (ORCH-4003): the adapter kind and the
/// pinned engine version. A remote engine without a pin is checked against
/// its configured pin only when one is given; its discovered version is
/// reported in every `started` event.
fn engine_version_key(engine: &EngineConfig) -> String {
    match engine.pinned_engine_version() {
        Some(version) => format!("{}:{version}", engine.kind()),
        None => format!("{} (version discovered from the engine)", engine.kind()),
    }
}

fn check_engine(pool: &str, replica: &str, engine: &EngineConfig) -> Result<(), ConfigError> {
    let at = format!("pools.{pool}.replicas.{replica}.engine");
    let (base_url, slots, ctx_limit, timeouts) = match engine {
        EngineConfig::Builtin(builtin) => {
            if builtin.slots == 0 || builtin.tokens_per_s <= 0.0 {
                return Err(ConfigError::Invalid(format!(
                    "pools.{pool}.replicas.{replica}: slots and tokens_per_s must be positive"
                )));
            }
            return Ok(());
        }
        EngineConfig::Llamacpp(c) => (
            &c.base_url,
            c.slots,
            c.ctx_limit,
            [c.connect_timeout_ms, c.request_timeout_ms],
        ),
        EngineConfig::Openai(c) => (
            &c.base_url,
            Some(c.slots),
            c.ctx_limit,
            [c.connect_timeout_ms, c.request_timeout_ms],
        ),
        EngineConfig::Tgi(c) => (
            &c.base_url,
            c.slots,
            c.ctx_limit,
            [c.connect_timeout_ms, c.request_timeout_ms],
        ),
    };
    let scheme_ok = base_url.starts_with("http://") && base_url.len() > "http://".len();
    if !scheme_ok {
        return Err(ConfigError::Invalid(format!(
            "{at}.base_url: {base_url:?} must be an http:// URL (no TLS stack is built in; \
             put a local TLS-terminating proxy in front of a remote engine)"
        )));
    }
    if slots == Some(0) || ctx_limit == Some(0) {
        return Err(ConfigError::Invalid(format!(
            "{at}: slots and ctx_limit must be positive when given"
        )));
    }
    if timeouts.contains(&0) {
        return Err(ConfigError::Invalid(format!(
            "{at}: connect_timeout_ms and request_timeout_ms must be positive"
        )));
    }
    Ok(())
}

/// With no API keys configured the server serves loopback only (ORCH-6004).
pub fn check_bind(addr: &SocketAddr, config: &Config) -> Result<(), ConfigError> {
    let has_keys = config.tenants.iter().any(|t| !t.api_key_sha256.is_empty());
    if addr.ip().is_loopback() || has_keys {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "refusing to listen on {addr}: no API keys are configured, so the server binds loopback only; \
         use --bind 127.0.0.1:PORT, or add tenants with api_key_sha256 to the config"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-7201
    #[test]
    fn unknown_fields_name_their_path() {
        let text = "pools:\n  - id: a\n    queue:\n      capacty: 3\n";
        let issues = check_text(text).unwrap_err();
        assert_eq!(
            issues,
            vec![ConfigIssue::new("pools[0].queue.capacty", "unknown field")]
        );
        let (at, message) = parse(text).unwrap_err();
        assert!(at.starts_with("pools[0].queue"), "{at}");
        assert!(message.contains("capacty"), "{message}");
    }

    // covers: ORCH-7201
    #[test]
    fn replica_ids_are_unique_across_pools() {
        let text = "pools:\n  - id: a\n    replicas:\n      - id: r0\n        engine: {kind: builtin}\n  - id: b\n    replicas:\n      - id: r0\n        engine: {kind: builtin}\n";
        let config = parse(text).unwrap();
        let issues = semantic_issues(&config);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(format!("{issues:?}").contains("unique across pools"));
    }

    // covers: ORCH-4003
    #[test]
    fn mixed_engine_versions_are_rejected_naming_replicas() {
        let text = "pools:\n  - id: p\n    replicas:\n      - id: a\n        engine: {kind: builtin}\n      - id: b\n        engine: {kind: builtin, engine_version: other}\n";
        let config = parse(text).unwrap();
        let error = validate(&config).unwrap_err().to_string();
        assert!(
            error.contains("a runs") && error.contains("b runs"),
            "{error}"
        );
    }

    // covers: ORCH-7202
    #[test]
    fn default_config_is_one_pool_of_two_builtin_replicas() {
        let config = Config::default();
        validate(&config).unwrap();
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools[0].id, "default");
        assert_eq!(config.pools[0].replicas.len(), 2);
        assert!(config.bind.starts_with("127.0.0.1:"));
    }
}
