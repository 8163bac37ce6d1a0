//! Request validation before enqueue (ORCH-1002..ORCH-1009): every check
//! names the field and the limit. Pure: the prompt's token count comes in.

use contracts::TaskRequest;
use contracts::config::PoolConfig;
use contracts::limits::{
    self, DEADLINE_MAX_MS, ID_MAX_LEN, MESSAGES_MAX, STOP_MAX, STOP_MAX_CHARS, TEMPERATURE_MAX,
    TOP_K_MAX,
};
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

/// Exactly one of `prompt` and `messages` (ORCH-1015, ORCH-8005), and the stop
/// sequences (ORCH-1025).
fn check_input(request: &TaskRequest) -> Result<(), OrchError> {
    match &request.messages {
        None if !limits::is_non_blank(&request.prompt) => {
            return Err(OrchError::invalid(
                "prompt",
                "must not be empty (or send `messages` instead)",
            ));
        }
        None => {}
        Some(_) if !request.prompt.is_empty() => {
            return Err(OrchError::invalid(
                "messages",
                "a request has either `prompt` or `messages`, not both",
            ));
        }
        Some(messages) if messages.is_empty() || messages.len() as u64 > MESSAGES_MAX => {
            return Err(OrchError::invalid(
                "messages",
                format!(
                    "must hold 1-{MESSAGES_MAX} messages, got {}",
                    messages.len()
                ),
            ));
        }
        Some(_) => {}
    }
    let stops = request.stop.as_deref().unwrap_or_default();
    if stops.len() as u64 > STOP_MAX {
        return Err(OrchError::invalid(
            "stop",
            format!("at most {STOP_MAX} stop sequences, got {}", stops.len()),
        ));
    }
    if let Some(bad) = stops
        .iter()
        .find(|s| s.is_empty() || s.chars().count() as u64 > STOP_MAX_CHARS)
    {
        return Err(OrchError::invalid(
            "stop",
            format!("each stop sequence must be 1-{STOP_MAX_CHARS} characters, got {bad:?}"),
        ));
    }
    Ok(())
}

/// The request field that holds the task's input.
pub fn input_field(request: &TaskRequest) -> &'static str {
    match request.messages {
        Some(_) => "messages",
        None => "prompt",
    }
}

/// The bytes of the input: the prompt, or the contents of the messages.
pub fn input_bytes(request: &TaskRequest) -> usize {
    match &request.messages {
        Some(messages) => messages.iter().map(|m| m.content.len()).sum(),
        None => request.prompt.len(),
    }
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
    check_input(request)?;
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
    let bytes = input_bytes(request);
    if bytes > pool.max_prompt_bytes as usize {
        return Err(OrchError::invalid(
            input_field(request),
            format!(
                "is {bytes} bytes, the limit of pool {} is {} bytes",
                pool.id, pool.max_prompt_bytes
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

    /// `Ok` or the field the error names.
    fn verdict(result: Result<(), OrchError>) -> Result<(), String> {
        result.map_err(|e| {
            assert_eq!(e.code, contracts::ErrorCode::InvalidParams);
            e.message.split(':').next().unwrap_or_default().to_owned()
        })
    }

    // covers: ORCH-1002, ORCH-1015
    #[test]
    fn each_syntax_bound_accepts_its_edge_and_refuses_one_past_it() {
        let long_id = "a".repeat(ID_MAX_LEN);
        let too_long_id = "a".repeat(ID_MAX_LEN + 1);
        type Edit = Box<dyn Fn(&mut TaskRequest)>;
        let cases: Vec<(&str, Edit, Result<(), &str>)> = vec![
            (
                "task_id at its length",
                Box::new(move |r| r.task_id = Some(long_id.clone())),
                Ok(()),
            ),
            (
                "task_id too long",
                Box::new(move |r| r.task_id = Some(too_long_id.clone())),
                Err("task_id"),
            ),
            (
                "task_id empty",
                Box::new(|r| r.task_id = Some(String::new())),
                Err("task_id"),
            ),
            (
                "task_id only dots",
                Box::new(|r| r.task_id = Some("..".into())),
                Err("task_id"),
            ),
            (
                "task_id with a slash",
                Box::new(|r| r.task_id = Some("a/b".into())),
                Err("task_id"),
            ),
            (
                "scope valid",
                Box::new(|r| r.scope = Some("team-a:1".into())),
                Ok(()),
            ),
            (
                "scope empty",
                Box::new(|r| r.scope = Some(String::new())),
                Err("scope"),
            ),
            (
                "scope non-ASCII",
                Box::new(|r| r.scope = Some("é".into())),
                Err("scope"),
            ),
            (
                "session_id valid",
                Box::new(|r| r.session_id = Some("s.1".into())),
                Ok(()),
            ),
            (
                "session_id blank",
                Box::new(|r| r.session_id = Some(" ".into())),
                Err("session_id"),
            ),
            (
                "pool_id valid",
                Box::new(|r| r.pool_id = Some("gpu_1".into())),
                Ok(()),
            ),
            (
                "pool_id invalid",
                Box::new(|r| r.pool_id = Some("a b".into())),
                Err("pool_id"),
            ),
            (
                "prompt empty",
                Box::new(|r| r.prompt = String::new()),
                Err("prompt"),
            ),
            (
                "prompt blank",
                Box::new(|r| r.prompt = " \n\t".into()),
                Err("prompt"),
            ),
            (
                "prompt padded",
                Box::new(|r| r.prompt = " a ".into()),
                Ok(()),
            ),
            (
                "max_tokens 0",
                Box::new(|r| r.max_tokens = 0),
                Err("max_tokens"),
            ),
            ("max_tokens 1", Box::new(|r| r.max_tokens = 1), Ok(())),
            (
                "temperature 0",
                Box::new(|r| r.temperature = Some(0.0)),
                Ok(()),
            ),
            (
                "temperature max",
                Box::new(|r| r.temperature = Some(TEMPERATURE_MAX as f32)),
                Ok(()),
            ),
            (
                "temperature over",
                Box::new(|r| r.temperature = Some(2.01)),
                Err("temperature"),
            ),
            (
                "temperature negative",
                Box::new(|r| r.temperature = Some(-0.01)),
                Err("temperature"),
            ),
            (
                "temperature NaN",
                Box::new(|r| r.temperature = Some(f32::NAN)),
                Err("temperature"),
            ),
            ("top_p 0", Box::new(|r| r.top_p = Some(0.0)), Err("top_p")),
            (
                "top_p smallest",
                Box::new(|r| r.top_p = Some(f32::from_bits(1))),
                Ok(()),
            ),
            ("top_p 1", Box::new(|r| r.top_p = Some(1.0)), Ok(())),
            (
                "top_p over 1",
                Box::new(|r| r.top_p = Some(1.001)),
                Err("top_p"),
            ),
            (
                "top_p NaN",
                Box::new(|r| r.top_p = Some(f32::NAN)),
                Err("top_p"),
            ),
            (
                "top_k max",
                Box::new(|r| r.top_k = Some(TOP_K_MAX as u32)),
                Ok(()),
            ),
            (
                "top_k over",
                Box::new(|r| r.top_k = Some(TOP_K_MAX as u32 + 1)),
                Err("top_k"),
            ),
            (
                "deadline 0",
                Box::new(|r| r.deadline_ms = Some(0)),
                Err("deadline_ms"),
            ),
            ("deadline 1", Box::new(|r| r.deadline_ms = Some(1)), Ok(())),
            (
                "deadline max",
                Box::new(|r| r.deadline_ms = Some(DEADLINE_MAX_MS)),
                Ok(()),
            ),
            (
                "deadline over",
                Box::new(|r| r.deadline_ms = Some(DEADLINE_MAX_MS + 1)),
                Err("deadline_ms"),
            ),
        ];
        for (what, edit, expected) in cases {
            let mut r = request();
            edit(&mut r);
            let expected = expected.map_err(str::to_owned);
            assert_eq!(verdict(validate_syntax(&r)), expected, "{what}");
        }
    }

    // covers: ORCH-1002, ORCH-1003, ORCH-1009
    #[test]
    fn each_pool_bound_accepts_its_edge_and_refuses_one_past_it() {
        let pool = PoolConfig {
            max_prompt_bytes: 5,
            max_tokens_limit: 10,
            ..PoolConfig::default()
        };
        let with = |prompt: &str, max_tokens: u32, version: Option<&str>| TaskRequest {
            prompt: prompt.into(),
            max_tokens,
            sampler_profile_version: version.map(str::to_owned),
            ..TaskRequest::default()
        };
        let own = pool.sampler_profile_version.clone();
        assert_eq!(
            verdict(validate_for_pool(&with("12345", 10, Some(&own)), &pool)),
            Ok(())
        );
        assert_eq!(
            verdict(validate_for_pool(&with("123456", 10, None), &pool)),
            Err("prompt".into())
        );
        assert_eq!(
            verdict(validate_for_pool(&with("1", 11, None), &pool)),
            Err("max_tokens".into())
        );
        assert_eq!(
            verdict(validate_for_pool(&with("1", 1, Some("other")), &pool)),
            Err("sampler_profile_version".into())
        );
        assert_eq!(verdict(check_context(6, 10, 16)), Ok(()));
        assert_eq!(verdict(check_context(7, 10, 16)), Err("max_tokens".into()));
        assert_eq!(verdict(check_scope(None)), Ok(()));
    }

    fn said(role: contracts::ChatRole, content: &str) -> contracts::ChatMessage {
        contracts::ChatMessage {
            role,
            content: content.into(),
        }
    }

    // covers: ORCH-1015, ORCH-1025, ORCH-8005
    #[test]
    fn the_input_is_a_prompt_or_messages_and_stop_sequences_are_bounded() {
        use contracts::ChatRole::{Assistant, User};
        let chat = |messages: Vec<contracts::ChatMessage>| TaskRequest {
            prompt: String::new(),
            messages: Some(messages),
            ..request()
        };
        let one = || vec![said(User, "hi")];
        assert_eq!(verdict(validate_syntax(&chat(one()))), Ok(()));
        assert_eq!(
            verdict(validate_syntax(&chat(vec![]))),
            Err("messages".into())
        );
        let most = vec![said(User, ""); MESSAGES_MAX as usize];
        assert_eq!(verdict(validate_syntax(&chat(most.clone()))), Ok(()));
        let mut over = most;
        over.push(said(Assistant, ""));
        assert_eq!(
            verdict(validate_syntax(&chat(over))),
            Err("messages".into())
        );
        let both = TaskRequest {
            messages: Some(one()),
            ..request()
        };
        assert_eq!(verdict(validate_syntax(&both)), Err("messages".into()));

        let stops = |stop: Vec<String>| TaskRequest {
            stop: Some(stop),
            ..request()
        };
        let edge = "x".repeat(STOP_MAX_CHARS as usize);
        let four = vec![edge.clone(); STOP_MAX as usize];
        assert_eq!(verdict(validate_syntax(&stops(four.clone()))), Ok(()));
        let mut five = four;
        five.push("y".into());
        assert_eq!(verdict(validate_syntax(&stops(five))), Err("stop".into()));
        assert_eq!(
            verdict(validate_syntax(&stops(vec![String::new()]))),
            Err("stop".into())
        );
        assert_eq!(
            verdict(validate_syntax(&stops(vec![format!("{edge}y")]))),
            Err("stop".into())
        );
        // Characters, not bytes: 64 two-byte characters are one sequence's limit.
        let wide = "é".repeat(STOP_MAX_CHARS as usize);
        assert_eq!(verdict(validate_syntax(&stops(vec![wide]))), Ok(()));

        // The pool's byte limit counts the messages' contents, and names `messages`.
        let pool = PoolConfig {
            max_prompt_bytes: 5,
            ..PoolConfig::default()
        };
        let sized = |a: &str, b: &str| chat(vec![said(User, a), said(Assistant, b)]);
        assert_eq!(input_bytes(&sized("12", "345")), 5);
        assert_eq!(
            verdict(validate_for_pool(&sized("12", "345"), &pool)),
            Ok(())
        );
        assert_eq!(
            verdict(validate_for_pool(&sized("12", "3456"), &pool)),
            Err("messages".into())
        );
        assert_eq!(input_field(&request()), "prompt");
        assert_eq!(input_bytes(&request()), "hello world".len());
    }

    // covers: ORCH-1005
    #[test]
    fn the_body_hash_tells_bodies_apart_and_only_them() {
        let a = request();
        let mut b = request();
        assert_eq!(body_hash(&a), body_hash(&b));
        b.max_tokens += 1;
        assert_ne!(body_hash(&a), body_hash(&b));
        assert_eq!(body_hash(&a).len(), 64);
    }

    // covers: ORCH-4031
    #[test]
    fn default_seed_is_a_stable_hash_of_the_task_id() {
        assert_eq!(default_seed("abc"), 0xba78_16bf);
        assert_ne!(default_seed("abc"), default_seed("abd"));
    }
}
