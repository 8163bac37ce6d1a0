//! Server-Sent Events of `GET /v1/tasks/{id}/stream` (ORCH-1101..ORCH-1107).
//!
//! On the wire each event is `event: <name>`, then `id: <i>` for tokens only,
//! then `data: <compact JSON of the payload>`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::OpenEnum;
use crate::error::ErrorEnvelope;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct StartedEvent {
    pub queue_position: u32,
    pub predicted_start_ms: u64,
    pub queue_time_ms: u64,
    pub replica_id: String,
    pub engine: String,
    pub engine_version: String,
    pub seed: u32,
    pub sampler_profile_version: String,
    /// True when the task runs on the replica that holds its session's KV cache.
    pub kv_warmth: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct TokenEvent {
    /// Token text.
    pub t: String,
    /// 0-based index; also the SSE `id:`.
    pub i: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct MetricsEvent {
    pub tokens_out: u32,
    pub elapsed_ms: u64,
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The engine emitted its end-of-sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Canceled by the client (ORCH-1023).
    Canceled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct EndEvent {
    pub tokens_out: u32,
    pub decode_ms: u64,
    #[schema(value_type = FinishReason)]
    #[schemars(with = "FinishReason")]
    pub finish_reason: OpenEnum<FinishReason>,
}

/// One event of a task's stream: `event` is the SSE event name, `data` its
/// JSON payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum StreamEvent {
    Started(StartedEvent),
    Token(TokenEvent),
    Metrics(MetricsEvent),
    End(EndEvent),
    Error(ErrorEnvelope),
}

impl StreamEvent {
    /// Every event name, as [`name`](Self::name) spells it.
    pub const NAMES: [&'static str; 5] = ["started", "token", "metrics", "end", "error"];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Started(_) => "started",
            Self::Token(_) => "token",
            Self::Metrics(_) => "metrics",
            Self::End(_) => "end",
            Self::Error(_) => "error",
        }
    }

    /// The SSE `id:`; only tokens carry one (ORCH-1102).
    pub fn sse_id(&self) -> Option<u32> {
        match self {
            Self::Token(token) => Some(token.i),
            _ => None,
        }
    }

    /// Compact JSON of the payload alone, as sent in `data:`.
    pub fn data_json(&self) -> String {
        let value = match self {
            Self::Started(e) => serde_json::to_string(e),
            Self::Token(e) => serde_json::to_string(e),
            Self::Metrics(e) => serde_json::to_string(e),
            Self::End(e) => serde_json::to_string(e),
            Self::Error(e) => serde_json::to_string(e),
        };
        value.expect("wire types always serialize")
    }

    /// Rebuild an event from its SSE name and `data:` payload.
    pub fn from_sse(name: &str, data: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(data)?;
        serde_json::from_value(serde_json::json!({ "event": name, "data": value }))
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::End(_) | Self::Error(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-9015
    #[test]
    fn the_event_names_are_the_variants_of_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(StreamEvent)).unwrap();
        let mut names: Vec<String> = schema["oneOf"]
            .as_array()
            .expect("StreamEvent is a oneOf")
            .iter()
            .filter_map(|v| {
                v["properties"]["event"]["const"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        let mut expected: Vec<String> = StreamEvent::NAMES.map(str::to_owned).to_vec();
        expected.sort();
        assert_eq!(names, expected);
    }
}
