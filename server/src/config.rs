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
}

/// Parse a config file; errors name the path inside the document.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let config = parse(&text).map_err(|(at, message)| ConfigError::Parse {
        path: path.display().to_string(),
        at,
        message,
    })?;
    validate(&config)?;
    Ok(config)
}

pub fn parse(text: &str) -> Result<Config, (String, String)> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer)
        .map_err(|error| (error.path().to_string(), error.inner().to_string()))
}

/// Checks the schema cannot express: unique ids, non-empty pools, and one
/// engine version per replica set.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let mut pool_ids = HashSet::new();
    for pool in &config.pools {
        if !pool_ids.insert(&pool.id) {
            return Err(ConfigError::Invalid(format!(
                "pools: duplicate pool id {:?}",
                pool.id
            )));
        }
        if pool.replicas.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "pools.{}: needs at least one replica",
                pool.id
            )));
        }
        if pool.queue.capacity == 0 {
            return Err(ConfigError::Invalid(format!(
                "pools.{}.queue.capacity: must be at least 1",
                pool.id
            )));
        }
        let mut replica_ids = HashSet::new();
        let mut versions: Vec<(&str, String)> = Vec::new();
        for replica in &pool.replicas {
            if !replica_ids.insert(&replica.id) {
                return Err(ConfigError::Invalid(format!(
                    "pools.{}.replicas: duplicate replica id {:?}",
                    pool.id, replica.id
                )));
            }
            check_engine(&pool.id, &replica.id, &replica.engine)?;
            versions.push((&replica.id, engine_version_key(&replica.engine)));
        }
        if let Some((first_id, first_version)) = versions.first()
            && let Some((other_id, other_version)) =
                versions.iter().find(|(_, v)| v != first_version)
        {
            return Err(ConfigError::Invalid(format!(
                "pools.{}: a replica set must not mix engine versions: {first_id} runs {first_version:?}, {other_id} runs {other_version:?}",
                pool.id
            )));
        }
    }
    Ok(())
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
pub fn check_bind(addr: &SocketAddr) -> Result<(), ConfigError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "refusing to listen on {addr}: no API keys are configured, so the server binds loopback only; \
         use --bind 127.0.0.1:PORT (or put a reverse proxy with authentication in front)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-7201
    #[test]
    fn unknown_fields_name_their_path() {
        let (at, message) = parse("pools:\n  - id: a\n    queue:\n      capacty: 3\n").unwrap_err();
        assert_eq!(at, "pools[0].queue");
        assert!(message.contains("capacty"), "{message}");
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
