//! Request validation before enqueue (ORCH-1002..ORCH-1009): every check
//! names the field and the limit. Pure: the prompt's token count comes in.

use contracts::TaskRequest;
use contracts::config::PoolConfig;
use contracts::limits::{self, DEADLINE_MAX_MS, ID_MAX_LEN, TEMPERATURE_MAX, TOP_K_MAX};
use sha2::{Digest, Sha256};

use crate::error::OrchError;

/// Ids, scopes and pool ids share one syntax (`contracts::limits::ID_PATTERN`).
pub fn check_id(field: &str, value: &str) -> Result<(), OrchError> {
    if limits::is_id(value) {
        return Ok(());
    }
    Err(OrchError::invalid(
        field,
        format!(
            "must be 1-{ID_MAX_LEN} characters of [A-Za-z0-9._:-], not only dots, got {value:?}"
        ),
    ))
}

/// `None` is the default scope.
pub fn check_scope(scope: Option<&str>) -> Result<(), OrchError> {
    scope.map_or(Ok(()), |s| check_id("scope", s))
}

pub fn check_task_id(task_id: &str) -> Result<(), OrchError> {
    check_id("task_id", task_id)
}

pub fn check_session_id(session_id: &str) -> Result<(), OrchError> {
    check_id("session_id", session_id)
}

/// The state-independent checks, everything the OpenAPI document states (ORCH-9013).
/// They run before the pool is even looked up, so a request with a fault of each kind
/// is told the one it can fix whatever the server's configuration.
pub fn validate_syntax(request: &TaskRequest) -> Result<(), OrchError> {
    if let Some(task_id) = &request.task_id {
        check_task_id(task_id)?;
    }
    check_scope(request.scope.as_deref())?;
    if let Some(session_id) = &request.session_id {
        check_session_id(session_id)?;
    }
    if let Some(pool_id) = &request.pool_id {
        check_id("pool_id", pool_id)?;
    }
    if !limits::is_non_blank(&request.prompt) {
        return Err(OrchError::invalid("prompt", "must not be empty"));
    }
    if request.max_tokens == 0 {
        return Err(OrchError::invalid(
            "max_tokens",
            "must be at least 1, got 0",
        ));
    }
    if let Some(t) = request.temperature
        && !(t.is_finite() && (0.0..=TEMPERATURE_MAX).contains(&f64::from(t)))
    {
        return Err(OrchError::invalid(
            "temperature",
            format!("must be within 0.0-{TEMPERATURE_MAX:.1}, got {t}"),
        ));
    }
    if let Some(p) = request.top_p
        && !(p.is_finite() && p > 0.0 && p <= 1.0)
    {
        return Err(OrchError::invalid(
            "top_p",
            format!("must be within (0.0, 1.0], got {p}"),
        ));
    }
    if let Some(k) = request.top_k
        && u64::from(k) > TOP_K_MAX
    {
        return Err(OrchError::invalid(
            "top_k",
            format!("must be at most {TOP_K_MAX}, got {k}"),
        ));
    }
    if let Some(d) = request.deadline_ms
        && (d == 0 || d > DEADLINE_MAX_MS)
    {
        return Err(OrchError::invalid(
            "deadline_ms",
            format!("must be between 1 and {DEADLINE_MAX_MS}, got {d}"),
        ));
    }
    Ok(())
}

/// The checks that depend on the pool's configuration (after [`validate_syntax`]).
pub fn validate_for_pool(request: &TaskRequest, pool: &PoolConfig) -> Result<(), OrchError> {
    if request.prompt.len() > pool.max_prompt_bytes as usize {
        return Err(OrchError::invalid(
            "prompt",
            format!(
                "is {} bytes, the limit of pool {} is {} bytes",
                request.prompt.len(),
                pool.id,
                pool.max_prompt_bytes
            ),
        ));
    }
    if request.max_tokens > pool.max_tokens_limit {
        return Err(OrchError::invalid(
            "max_tokens",
            format!(
                "must be between 1 and {} for pool {}, got {}",
                pool.max_tokens_limit, pool.id, request.max_tokens
            ),
        ));
    }
    if let Some(version) = &request.sampler_profile_version
        && version != &pool.sampler_profile_version
    {
        return Err(OrchError::invalid(
            "sampler_profile_version",
            format!(
                "pool {} runs sampler profile {:?}, the request asks for {version:?}",
                pool.id, pool.sampler_profile_version
            ),
        ));
    }
    Ok(())
}

/// The token budget (ORCH-1003): prompt plus completion fit the context.
pub fn check_context(prompt_tokens: u32, max_tokens: u32, ctx_limit: u32) -> Result<(), OrchError> {
    let needed = u64::from(prompt_tokens) + u64::from(max_tokens);
    if needed > u64::from(ctx_limit) {
        return Err(OrchError::invalid(
            "max_tokens",
            format!(
                "prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = {needed} exceeds the model context of {ctx_limit} tokens"
            ),
        ));
    }
    Ok(())
}

/// Default seed: the first 4 bytes of SHA-256(task_id), big-endian (ORCH-4031).
pub fn default_seed(task_id: &str) -> u32 {
    let digest = Sha256::digest(task_id.as_bytes());
    u32::from_be_bytes(digest[..4].try_into().expect("4 bytes"))
}

/// Idempotency fingerprint of a request body (ORCH-1005).
pub fn body_hash(request: &TaskRequest) -> String {
    let canonical = serde_json::to_vec(request).expect("wire types serialize");
    hex::encode(Sha256::digest(canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TaskRequest {
        TaskRequest {
            prompt: "hello world".into(),
            max_tokens: 8,
            ..TaskRequest::default()
        }
    }

    // covers: ORCH-1002, ORCH-1003
    #[test]
    fn errors_name_the_field_and_limit() {
        let pool = PoolConfig::default();
        let mut bad = request();
        bad.max_tokens = 0;
        let err = validate_syntax(&bad).unwrap_err();
        assert!(err.message.starts_with("max_tokens:"));
        bad.max_tokens = 5000;
        let err = validate_for_pool(&bad, &pool).unwrap_err();
        assert!(err.message.starts_with("max_tokens:") && err.message.contains("4096"));
        let mut bad = request();
        bad.top_p = Some(0.0);
        assert!(
            validate_syntax(&bad)
                .unwrap_err()
                .message
                .starts_with("top_p:")
        );
        let err = check_context(10, 4090, 4096).unwrap_err();
        assert!(err.message.contains("4100") && err.message.contains("4096"));
        assert!(validate_syntax(&request()).is_ok());
        assert!(validate_for_pool(&request(), &pool).is_ok());
    }

    // covers: ORCH-4031
    #[test]
    fn default_seed_is_a_stable_hash_of_the_task_id() {
        assert_eq!(default_seed("abc"), 0xba78_16bf);
        assert_ne!(default_seed("abc"), default_seed("abd"));
    }
}
