//! The bounds the server enforces on its input, in one place (ORCH-9013).
//!
//! `orchestratord` validates requests with these constants and functions, and the
//! OpenAPI documents get their `pattern` / `minLength` / `maximum` / … keywords from
//! [`BODY_BOUNDS`] and [`PARAM_BOUNDS`], so the document and the validation cannot
//! differ. Bounds that depend on the configuration (a pool's `max_tokens_limit`,
//! `max_prompt_bytes`) are documented as their default in an `x-` extension, never as a
//! schema bound, because another deployment may allow more.

use serde_json::{Value, json};

/// Longest task id, session id or scope name.
pub const ID_MAX_LEN: usize = 128;
/// Ids and scopes: 1–128 of `[A-Za-z0-9._:-]`, not only dots (`.` and `..` are
/// collapsed out of URL paths by clients). Anchored, ECMA-262 and Rust `regex` alike.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]*[A-Za-z0-9_:-][A-Za-z0-9._:-]*$";
/// A text that is not empty and not only white space (the prompt, `model_ref`).
pub const NON_BLANK_PATTERN: &str = "\\S";

/// Default of the configured request-body limit (`max_body_bytes`); the documents give
/// it as `x-max-body-bytes-default` on every request body.
pub const MAX_BODY_BYTES_DEFAULT: u64 = 2 << 20;
/// `Last-Event-ID`: the server reads any `u32`; the document promises 9 digits.
pub const TOKEN_INDEX_PATTERN: &str = "^[0-9]{1,9}$";
pub const TEMPERATURE_MAX: f64 = 2.0;
/// `top_p` is in (0, 1] and travels as an `f32`: the smallest positive `f32` is the
/// smallest value that does not round to 0 (found by the document-driven fuzzer).
pub const TOP_P_MIN: f64 = 1.401_298_464_324_817e-45;
pub const TOP_K_MAX: u64 = 1_000;
/// Start deadline of a task and drain deadline of a pool.
pub const DEADLINE_MAX_MS: u64 = 24 * 3600 * 1000;
pub const READY_TIMEOUT_MAX_MS: u64 = 600_000;
pub const LIST_LIMIT_MAX: u64 = 500;
pub const LIST_LIMIT_DEFAULT: u64 = 100;
/// Messages of one conversation (ORCH-8005).
pub const MESSAGES_MAX: u64 = 1_024;
/// Stop sequences of one request, and the characters of each (ORCH-1025).
pub const STOP_MAX: u64 = 4;
pub const STOP_MAX_CHARS: u64 = 64;

/// Whether `value` is a valid id or scope name (same language as [`ID_PATTERN`]
/// with `maxLength` [`ID_MAX_LEN`]).
pub fn is_id(value: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    !value.is_empty()
        && value.len() <= ID_MAX_LEN
        && value.chars().all(allowed)
        && value.chars().any(|c| c != '.')
}

/// Whether `value` has a character that is not white space ([`NON_BLANK_PATTERN`]).
pub fn is_non_blank(value: &str) -> bool {
    value.chars().any(|c| !c.is_whitespace())
}

/// One constraint, as the document states it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// [`ID_PATTERN`], 1..=[`ID_MAX_LEN`] characters.
    Id,
    /// [`NON_BLANK_PATTERN`].
    NonBlank,
    /// [`NON_BLANK_PATTERN`], and a byte length whose ceiling is configured per pool:
    /// `x-max-bytes-default` gives the default.
    NonBlankConfiguredMaxBytes { default: u64 },
    /// An integer within `min..=max`.
    Int { min: u64, max: u64 },
    /// An integer ≥ `min` whose ceiling is configured per pool: `x-maximum-default`
    /// gives the default.
    IntConfiguredMax { min: u64, default: u64 },
    /// A number within `min..=max`, `min` excluded when `min_exclusive`.
    Number {
        min: f64,
        min_exclusive: bool,
        max: f64,
    },
    /// An opaque string the server issued (a cursor): no syntax is promised.
    Opaque,
    /// The decimal index of a token event (`Last-Event-ID`), at most 9 digits.
    TokenIndex,
    /// An array of `min..=max` items.
    Items { min: u64, max: u64 },
    /// At most [`STOP_MAX`] stop sequences of 1..=[`STOP_MAX_CHARS`] characters.
    StopSequences,
}

impl Bound {
    /// The schema keywords of this bound.
    pub fn keywords(self) -> Value {
        match self {
            Bound::Id => json!({"pattern": ID_PATTERN, "minLength": 1, "maxLength": ID_MAX_LEN}),
            Bound::NonBlank => json!({"pattern": NON_BLANK_PATTERN, "minLength": 1}),
            Bound::NonBlankConfiguredMaxBytes { default } => json!({
                "pattern": NON_BLANK_PATTERN, "minLength": 1, "x-max-bytes-default": default
            }),
            Bound::Int { min, max } => json!({"minimum": min, "maximum": max}),
            Bound::IntConfiguredMax { min, default } => {
                json!({"minimum": min, "x-maximum-default": default})
            }
            Bound::Number {
                min,
                min_exclusive: false,
                max,
            } => json!({"minimum": min, "maximum": max}),
            Bound::Number {
                min,
                min_exclusive: true,
                max,
            } => json!({"exclusiveMinimum": min, "maximum": max}),
            Bound::Opaque => json!({"x-opaque": true}),
            Bound::TokenIndex => json!({"type": "string", "pattern": TOKEN_INDEX_PATTERN}),
            Bound::Items { min, max } => json!({"minItems": min, "maxItems": max}),
            Bound::StopSequences => json!({
                "maxItems": STOP_MAX,
                "items": {"type": "string", "minLength": 1, "maxLength": STOP_MAX_CHARS},
            }),
        }
    }
}

const TEMPERATURE: Bound = Bound::Number {
    min: 0.0,
    min_exclusive: false,
    max: TEMPERATURE_MAX,
};
const TOP_P: Bound = Bound::Number {
    min: TOP_P_MIN,
    min_exclusive: false,
    max: 1.0,
};

/// (component schema, property, bound) of request bodies.
pub const BODY_BOUNDS: &[(&str, &str, Bound)] = &[
    ("TaskRequest", "task_id", Bound::Id),
    ("TaskRequest", "scope", Bound::Id),
    ("TaskRequest", "session_id", Bound::Id),
    ("TaskRequest", "pool_id", Bound::Id),
    (
        "TaskRequest",
        "prompt",
        Bound::NonBlankConfiguredMaxBytes { default: 1 << 20 },
    ),
    (
        "TaskRequest",
        "messages",
        Bound::Items {
            min: 1,
            max: MESSAGES_MAX,
        },
    ),
    ("TaskRequest", "stop", Bound::StopSequences),
    (
        "TaskRequest",
        "max_tokens",
        Bound::IntConfiguredMax {
            min: 1,
            default: 4096,
        },
    ),
    ("TaskRequest", "temperature", TEMPERATURE),
    ("TaskRequest", "top_p", TOP_P),
    (
        "TaskRequest",
        "top_k",
        Bound::Int {
            min: 0,
            max: TOP_K_MAX,
        },
    ),
    (
        "TaskRequest",
        "deadline_ms",
        Bound::Int {
            min: 1,
            max: DEADLINE_MAX_MS,
        },
    ),
    (
        "ChatCompletionRequest",
        "messages",
        Bound::Items {
            min: 1,
            max: MESSAGES_MAX,
        },
    ),
    (
        "ChatCompletionRequest",
        "max_completion_tokens",
        Bound::IntConfiguredMax {
            min: 1,
            default: 4096,
        },
    ),
    (
        "ChatCompletionRequest",
        "max_tokens",
        Bound::IntConfiguredMax {
            min: 1,
            default: 4096,
        },
    ),
    (
        "CompletionRequest",
        "max_tokens",
        Bound::IntConfiguredMax {
            min: 1,
            default: 4096,
        },
    ),
    ("ChatCompletionRequest", "temperature", TEMPERATURE),
    ("CompletionRequest", "temperature", TEMPERATURE),
    ("ChatCompletionRequest", "top_p", TOP_P),
    ("CompletionRequest", "top_p", TOP_P),
    ("ChatCompletionRequest", "stop", Bound::StopSequences),
    ("CompletionRequest", "stop", Bound::StopSequences),
    (
        "DrainRequest",
        "deadline_ms",
        Bound::Int {
            min: 0,
            max: DEADLINE_MAX_MS,
        },
    ),
    ("ReloadRequest", "model_ref", Bound::NonBlank),
    (
        "ReloadRequest",
        "ready_timeout_ms",
        Bound::Int {
            min: 0,
            max: READY_TIMEOUT_MAX_MS,
        },
    ),
];

/// (parameter name, bound) of path and query parameters, wherever they appear.
pub const PARAM_BOUNDS: &[(&str, Bound)] = &[
    ("task_id", Bound::Id),
    ("session_id", Bound::Id),
    ("scope", Bound::Id),
    ("pool_id", Bound::Id),
    (
        "limit",
        Bound::Int {
            min: 1,
            max: LIST_LIMIT_MAX,
        },
    ),
    ("cursor", Bound::Opaque),
    // The knobs of the OpenAI surface (ORCH-8003).
    ("X-Orch-Scope", Bound::Id),
    ("X-Orch-Session-Id", Bound::Id),
    ("X-Orch-Task-Id", Bound::Id),
    (
        "X-Orch-Deadline-Ms",
        Bound::Int {
            min: 1,
            max: DEADLINE_MAX_MS,
        },
    ),
    ("Last-Event-ID", Bound::TokenIndex),
];

/// Write the bounds into an OpenAPI document: [`BODY_BOUNDS`] into the component
/// schemas, [`PARAM_BOUNDS`] into every parameter of that name, and the width of
/// unsigned integers (`format: int32` / `int64` with `minimum: 0`, as utoipa renders
/// `u32` / `u64`) as their `maximum`. [`unmatched_bounds`] says which entries matched
/// nothing, so a renamed field cannot silently lose its bound.
pub fn apply_to_openapi(doc: &mut Value) {
    unsigned_widths(doc);
    // A task's input is its prompt or its messages, never both (ORCH-1015).
    if let Some(task) = doc.pointer_mut("/components/schemas/TaskRequest") {
        task["oneOf"] = json!([
            {"required": ["prompt"], "properties": {"messages": {"type": "null"}}},
            {
                "required": ["messages"],
                "properties": {"messages": {"type": "array"}},
                "not": {"required": ["prompt"]}
            }
        ]);
    }
    for (schema, property, bound) in BODY_BOUNDS {
        let pointer = format!("/components/schemas/{schema}/properties/{property}");
        if let Some(target) = doc.pointer_mut(&pointer) {
            merge(target, bound.keywords());
        }
    }
    for op in operations_mut(doc) {
        let Some(body) = op.get_mut("requestBody") else {
            continue;
        };
        body["x-max-body-bytes-default"] = Value::from(MAX_BODY_BYTES_DEFAULT);
        // The limit is enforced below the handler (ORCH-2024), so no handler
        // declares its answer: every operation with a body gets it here.
        if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
            responses.entry("413").or_insert_with(|| {
                serde_json::json!({
                    "description": "`INVALID_PARAMS` naming `body`: the body is larger than the \
                        configured `max_body_bytes` (default in `x-max-body-bytes-default` of the \
                        request body).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
                    "x-req-id": ["ORCH-2024"],
                })
            });
        }
    }
    for param in parameters_mut(doc) {
        let name = param
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some((_, bound)) = PARAM_BOUNDS.iter().find(|(n, _)| *n == name)
            && let Some(schema) = param.get_mut("schema")
        {
            merge(schema, bound.keywords());
        }
    }
}

/// Every operation object of a document (`paths.<path>.<method>`).
fn operations_mut(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    doc.get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
}

fn parameters_mut(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    operations_mut(doc)
        .filter_map(|op| op.get_mut("parameters").and_then(Value::as_array_mut))
        .flatten()
}

/// Entries of [`BODY_BOUNDS`] and [`PARAM_BOUNDS`] that no document of `docs` has.
pub fn unmatched_bounds(docs: &[&Value]) -> Vec<String> {
    let has_param = |name: &str| {
        docs.iter().any(|doc| {
            doc.get("paths")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|paths| paths.values())
                .filter_map(Value::as_object)
                .flat_map(|item| item.values())
                .filter_map(|op| op.get("parameters").and_then(Value::as_array))
                .flatten()
                .any(|p| p.get("name").and_then(Value::as_str) == Some(name))
        })
    };
    let bodies = BODY_BOUNDS
        .iter()
        .filter(|(schema, property, _)| {
            let pointer = format!("/components/schemas/{schema}/properties/{property}");
            !docs.iter().any(|doc| doc.pointer(&pointer).is_some())
        })
        .map(|(schema, property, _)| format!("{schema}.{property}"));
    let params = PARAM_BOUNDS
        .iter()
        .filter(|(name, _)| !has_param(name))
        .map(|(name, _)| format!("parameter {name}"));
    bodies.chain(params).collect()
}

fn merge(target: &mut Value, keywords: Value) {
    if let (Some(target), Value::Object(keywords)) = (target.as_object_mut(), keywords) {
        target.extend(keywords);
    }
}

fn unsigned_widths(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let unsigned = map.get("minimum").and_then(Value::as_u64) == Some(0)
                && !map.contains_key("maximum");
            let max = match map.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => Some(u64::from(u32::MAX)),
                Some("int64") if unsigned => Some(u64::MAX),
                _ => None,
            };
            if let Some(max) = max {
                map.insert("maximum".into(), Value::from(max));
            }
            map.values_mut().for_each(unsigned_widths);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_widths),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern_accepts(pattern: &str, value: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(value)
    }

    proptest! {
        // The document's pattern and the server's check are one language.
        // covers: ORCH-9013
        #[test]
        fn id_check_and_id_pattern_agree(value in "[A-Za-z0-9._:/ é-]{0,130}") {
            let documented = pattern_accepts(ID_PATTERN, &value)
                && !value.is_empty()
                && value.chars().count() <= ID_MAX_LEN;
            prop_assert_eq!(is_id(&value), documented, "{:?}", value);
        }

        // covers: ORCH-9013
        #[test]
        fn non_blank_check_and_pattern_agree(value in "[ \t\n\u{a0}\u{2003}a.]{0,8}") {
            prop_assert_eq!(is_non_blank(&value), pattern_accepts(NON_BLANK_PATTERN, &value));
        }
    }

    #[test]
    fn dots_only_is_not_an_id() {
        assert!(!is_id("."));
        assert!(!is_id(".."));
        assert!(is_id(".a"));
        assert!(!is_id(&"a".repeat(ID_MAX_LEN + 1)));
    }
}
