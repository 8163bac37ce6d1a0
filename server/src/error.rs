//! The domain error: a code of the spec plus what the envelope needs. The one
//! mapping to the wire lives in `api::error`.

use contracts::{ErrorCode, ErrorEnvelope, RejectPolicy};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct OrchError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field (or header) at fault, for `INVALID_PARAMS`.
    pub param: Option<String>,
    pub policy: Option<RejectPolicy>,
    pub engine: Option<String>,
    /// Predicted wait behind `Retry-After` / `X-Backoff-Ms` (ORCH-2003).
    pub backoff_ms: Option<u64>,
    /// What only the log gets, under the envelope's correlation id (a panic's text).
    pub log_detail: Option<String>,
}

impl OrchError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
            policy: None,
            engine: None,
            backoff_ms: None,
            log_detail: None,
        }
    }

    /// `400 INVALID_PARAMS` naming the field (ORCH-1002).
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self {
            param: Some(field.to_owned()),
            ..Self::new(ErrorCode::InvalidParams, format!("{field}: {problem}"))
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn internal(problem: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, problem.to_string())
    }

    /// Keep `detail` out of the answer and in the log (ORCH-2004).
    pub fn with_log_detail(mut self, detail: impl Into<String>) -> Self {
        self.log_detail = Some(detail.into());
        self
    }

    pub fn with_policy(mut self, policy: RejectPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    pub fn with_engine(mut self, engine: &str) -> Self {
        self.engine = Some(engine.to_owned());
        self
    }

    pub fn with_backoff(mut self, backoff_ms: u64) -> Self {
        self.backoff_ms = Some(backoff_ms);
        self
    }

    /// The envelope, with a fresh correlation id that is logged with the
    /// error so an operator can find it (ORCH-2002).
    pub fn envelope(&self) -> ErrorEnvelope {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        if self.code == ErrorCode::Internal {
            let detail = self.log_detail.as_deref().unwrap_or("");
            tracing::error!(%correlation_id, code = %self.code, message = %self.message, detail, "internal error");
        } else {
            tracing::info!(%correlation_id, code = %self.code, message = %self.message, "error answered");
        }
        ErrorEnvelope {
            code: self.code.into(),
            message: self.message.clone(),
            retriable: self.code.retriable(),
            retry_after_ms: self.backoff_ms,
            policy: self.policy.map(Into::into),
            engine: self.engine.clone(),
            correlation_id,
        }
    }
}

impl From<crate::store::StoreError> for OrchError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::internal(error)
    }
}
