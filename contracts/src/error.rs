//! The one error envelope of every non-2xx answer and every SSE `error`
//! event (ORCH-2001), and its codes (ORCH-2010..ORCH-2022).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::OpenEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    AdmissionReject,
    QueueFullDropLru,
    InvalidParams,
    PoolUnready,
    PoolUnavailable,
    ReplicaExhausted,
    DecodeTimeout,
    WorkerReset,
    Internal,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
}

impl ErrorCode {
    /// HTTP status when the code answers a request (stream-only codes map to
    /// the status they would have as an answer).
    pub fn http_status(self) -> u16 {
        match self {
            Self::AdmissionReject | Self::QueueFullDropLru => 429,
            Self::InvalidParams => 400,
            Self::PoolUnready | Self::PoolUnavailable | Self::ReplicaExhausted => 503,
            Self::DecodeTimeout => 504,
            Self::WorkerReset => 502,
            Self::Internal => 500,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn retriable(self) -> bool {
        matches!(
            self,
            Self::AdmissionReject
                | Self::QueueFullDropLru
                | Self::PoolUnready
                | Self::PoolUnavailable
                | Self::ReplicaExhausted
                | Self::DecodeTimeout
                | Self::WorkerReset
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AdmissionReject => "ADMISSION_REJECT",
            Self::QueueFullDropLru => "QUEUE_FULL_DROP_LRU",
            Self::InvalidParams => "INVALID_PARAMS",
            Self::PoolUnready => "POOL_UNREADY",
            Self::PoolUnavailable => "POOL_UNAVAILABLE",
            Self::ReplicaExhausted => "REPLICA_EXHAUSTED",
            Self::DecodeTimeout => "DECODE_TIMEOUT",
            Self::WorkerReset => "WORKER_RESET",
            Self::Internal => "INTERNAL",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which admission policy produced an `ADMISSION_REJECT` (ORCH-2010).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RejectPolicy {
    Reject,
    RateLimit,
    ShedLowPriority,
    DropLru,
}

/// The body of every non-2xx answer and of every SSE `error` event (ORCH-2001); which
/// codes come on which channel is the spec's table (ORCH-2026).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
pub struct ErrorEnvelope {
    #[schema(value_type = ErrorCode)]
    #[schemars(with = "ErrorCode")]
    pub code: OpenEnum<ErrorCode>,
    /// Human-readable; names the offending field and the limit where there is one.
    pub message: String,
    pub retriable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RejectPolicy>)]
    #[schemars(with = "Option<RejectPolicy>")]
    pub policy: Option<OpenEnum<RejectPolicy>>,
    /// The engine involved, for engine-side failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Unique per error; the same id is in the server log (ORCH-2002).
    pub correlation_id: String,
}

impl ErrorEnvelope {
    /// The policy, when there is one and this build knows it.
    pub fn known_policy(&self) -> Option<RejectPolicy> {
        self.policy.as_ref().and_then(OpenEnum::known)
    }
}

impl std::fmt::Display for ErrorEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode::*;

    // covers: ORCH-2006
    #[test]
    fn retriable_exactly_for_the_codes_the_spec_lists() {
        let retriable = [
            AdmissionReject,
            QueueFullDropLru,
            PoolUnready,
            PoolUnavailable,
            ReplicaExhausted,
            DecodeTimeout,
            WorkerReset,
        ];
        let not = [
            InvalidParams,
            Internal,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
        ];
        assert!(retriable.iter().all(|c| c.retriable()));
        assert!(not.iter().all(|c| !c.retriable()));
    }
}
