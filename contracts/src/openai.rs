//! The OpenAI-compatible surface (ORCH-8001..ORCH-8009): request and answer bodies
//! of `/v1/chat/completions`, `/v1/completions` and `/v1/models`, in OpenAI's own
//! shapes, so programs written for the OpenAI API work unchanged.
//!
//! Requests name every field OpenAI defines that this surface reads, supports only
//! at its default, or ignores (the lists of ORCH-8004); any other field is refused.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::task::ChatRole;

/// `stop`: one sequence or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

impl StopSequences {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(stop) => vec![stop],
            Self::Many(stops) => stops,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` before `data: [DONE]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// One part of a message's content; only text parts exist on this surface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextPart {
    #[serde(rename = "type")]
    pub kind: TextPartKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextPartKind {
    Text,
}

/// A message's content: a string, or text parts that are joined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<TextPart>),
}

impl MessageContent {
    pub fn into_text(self) -> String {
        match self {
            Self::Text(text) => text,
            Self::Parts(parts) => parts.into_iter().map(|p| p.text).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMessage {
    pub role: ChatRole,
    pub content: MessageContent,
    /// Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Body of `POST /v1/chat/completions` (ORCH-8004). The fields of [`UNSUPPORTED`]
/// and [`IGNORED`] are taken out before it is read, and added to its schema in the
/// document; any field not in [`chat_fields`] is refused (serde's
/// `deny_unknown_fields` does not combine with `flatten`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A pool id or one of its aliases (`GET /v1/models`).
    pub model: String,
    pub messages: Vec<RequestMessage>,
    /// Takes precedence over `max_tokens`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::json_int::optional"
    )]
    pub max_completion_tokens: Option<u32>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Body of `POST /v1/completions` (ORCH-8004); its fields are [`completion_fields`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// A pool id or one of its aliases (`GET /v1/models`).
    pub model: String,
    /// One prompt (a list of exactly one is accepted too).
    pub prompt: PromptInput,
    #[serde(flatten)]
    pub sampling: Sampling,
}
/// The fields both completion requests share.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Sampling {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::json_int::optional"
    )]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::json_int::optional"
    )]
    pub seed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

const SAMPLING_FIELDS: [&str; 7] = [
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
];

/// The fields [`ChatCompletionRequest`] reads.
pub fn chat_fields() -> impl Iterator<Item = &'static str> {
    ["model", "messages", "max_completion_tokens"]
        .into_iter()
        .chain(SAMPLING_FIELDS)
}

/// The fields [`CompletionRequest`] reads.
pub fn completion_fields() -> impl Iterator<Item = &'static str> {
    ["model", "prompt"].into_iter().chain(SAMPLING_FIELDS)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    One(String),
    Many(Vec<String>),
}

/// The one value (besides absent or `null`) a field of [`UNSUPPORTED`] may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlyDefault {
    /// Absent or `null` only.
    Absent,
    /// `false` or `0`.
    Off,
    /// This integer.
    Int(i64),
    /// This string.
    Str(&'static str),
    /// An empty array, object or string.
    Empty,
    /// `{"type": "text"}`.
    TextFormat,
    /// `["text"]`.
    TextOnly,
}

impl OnlyDefault {
    /// Whether `value` is the default, which changes nothing.
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Self::Off, Value::Bool(b)) => !b,
            (Self::Off, Value::Number(n)) => n.as_f64() == Some(0.0),
            (Self::Int(i), Value::Number(n)) => n.as_f64() == Some(i as f64),
            (Self::Str(s), Value::String(v)) => v == s,
            (Self::Empty, Value::Array(a)) => a.is_empty(),
            (Self::Empty, Value::Object(o)) => o.is_empty(),
            (Self::Empty, Value::String(v)) => v.is_empty(),
            (Self::TextFormat, Value::Object(o)) => {
                o.len() == 1 && o.get("type") == Some(&Value::from("text"))
            }
            (Self::TextOnly, Value::Array(a)) => a == &[Value::from("text")],
            _ => false,
        }
    }

    /// What the field accepts, for the error message.
    pub fn describe(self) -> String {
        match self {
            Self::Absent => "is not supported; leave it out".into(),
            Self::Off => "is supported only as false or 0".into(),
            Self::Int(i) => format!("is supported only as {i}"),
            Self::Str(s) => format!("is supported only as {s:?}"),
            Self::Empty => "is supported only empty".into(),
            Self::TextFormat => "is supported only as {\"type\": \"text\"}".into(),
            Self::TextOnly => "is supported only as [\"text\"]".into(),
        }
    }

    /// The JSON Schema of the accepted values, for the document.
    pub fn schema(self) -> Value {
        use serde_json::json;
        match self {
            Self::Absent => json!({"type": "null"}),
            Self::Off => json!({"enum": [false, 0, null]}),
            Self::Int(i) => json!({"enum": [i, null]}),
            Self::Str(s) => json!({"enum": [s, null]}),
            Self::Empty => json!({
                "type": ["array", "object", "string", "null"],
                "maxItems": 0, "maxProperties": 0, "maxLength": 0
            }),
            Self::TextFormat => json!({
                "type": ["object", "null"],
                "properties": {"type": {"const": "text"}},
                "required": ["type"],
                "additionalProperties": false
            }),
            Self::TextOnly => json!({"enum": [["text"], null]}),
        }
    }
}

/// Fields OpenAI defines that this surface supports only at their default: any
/// other value is a `400` naming the field (ORCH-8004).
pub const UNSUPPORTED: &[(&str, OnlyDefault)] = &[
    ("n", OnlyDefault::Int(1)),
    ("best_of", OnlyDefault::Int(1)),
    ("logprobs", OnlyDefault::Off),
    ("echo", OnlyDefault::Off),
    ("top_logprobs", OnlyDefault::Absent),
    ("tools", OnlyDefault::Empty),
    ("tool_choice", OnlyDefault::Str("none")),
    ("functions", OnlyDefault::Empty),
    ("function_call", OnlyDefault::Str("none")),
    ("response_format", OnlyDefault::TextFormat),
    ("logit_bias", OnlyDefault::Empty),
    ("presence_penalty", OnlyDefault::Off),
    ("frequency_penalty", OnlyDefault::Off),
    ("audio", OnlyDefault::Absent),
    ("modalities", OnlyDefault::TextOnly),
    ("prediction", OnlyDefault::Absent),
    ("suffix", OnlyDefault::Empty),
    ("web_search_options", OnlyDefault::Absent),
    ("reasoning_effort", OnlyDefault::Absent),
];

/// Fields that change nothing for the answer: accepted and ignored (ORCH-8004).
pub const IGNORED: &[&str] = &[
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "parallel_tool_calls",
];

/// Why a choice ended (ORCH-8007): `abort` is a task canceled by another caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpenAiFinishReason {
    Stop,
    Length,
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ChatCompletionObject {
    #[serde(rename = "chat.completion")]
    ChatCompletion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ChatCompletionChunkObject {
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum TextCompletionObject {
    #[serde(rename = "text_completion")]
    TextCompletion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssistantRole {
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    pub role: AssistantRole,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: OpenAiFinishReason,
}

/// The answer of a non-streaming `POST /v1/chat/completions` (ORCH-8006).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-<task_id>`.
    pub id: String,
    pub object: ChatCompletionObject,
    /// Unix seconds of the task's admission.
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct ChatDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<AssistantRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub finish_reason: Option<OpenAiFinishReason>,
}

/// One chunk of a streaming `POST /v1/chat/completions` (ORCH-8006).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// `chatcmpl-<task_id>`, the same on every chunk.
    pub id: String,
    pub object: ChatCompletionChunkObject,
    pub created: u64,
    pub model: String,
    /// Empty on the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Only on the usage chunk, when `stream_options.include_usage` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    /// `null` on a streamed chunk before the last.
    pub finish_reason: Option<OpenAiFinishReason>,
}

/// The answer of `POST /v1/completions`, and each chunk of its stream (ORCH-8006).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextCompletion {
    /// `cmpl-<task_id>`.
    pub id: String,
    pub object: TextCompletionObject,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    /// Always on a non-streaming answer; on a stream, only the usage chunk has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelObject {
    Model,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListObject {
    List,
}

/// A pool, by its id or an alias (ORCH-8002).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub object: ModelObject,
    /// Unix seconds the server started.
    pub created: u64,
    /// Always `orchqueue`.
    pub owned_by: String,
}

/// The answer of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub object: ListObject,
    pub data: Vec<Model>,
}

/// OpenAI's error kinds, by status (ORCH-8008).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpenAiErrorType {
    InvalidRequestError,
    AuthenticationError,
    PermissionError,
    RateLimitError,
    ServerError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OpenAiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: OpenAiErrorType,
    /// The request field or header at fault, when there is one.
    pub param: Option<String>,
    /// OrchQueue's error code (`ErrorCode`), or `model_not_found`.
    pub code: String,
}

/// Every error answer of the surface, and the error chunk of a stream that fails
/// after its first token (ORCH-8007, ORCH-8008).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiError,
}

/// Request headers that carry orchestrator knobs (ORCH-8003).
pub mod headers {
    pub const PRIORITY: &str = "x-orch-priority";
    pub const SCOPE: &str = "x-orch-scope";
    pub const SESSION_ID: &str = "x-orch-session-id";
    pub const DEADLINE_MS: &str = "x-orch-deadline-ms";
    pub const DETERMINISM: &str = "x-orch-determinism";
    /// In a request: the idempotency key; in every answer: the task's id.
    pub const TASK_ID: &str = "x-orch-task-id";
    pub const RETRY_AFTER_MS: &str = "retry-after-ms";
    pub const SHOULD_RETRY: &str = "x-should-retry";
}
