//! The one mapping from domain errors to the wire (ORCH-2001, ORCH-2003):
//! status from the code, the envelope as the body, backpressure headers on
//! `429` and `503`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use contracts::headers;

use crate::error::OrchError;
use crate::queue::backoff_hint;

/// An error as it goes on the wire: the status of its code, its envelope, and the
/// backoff hint `(ms, Retry-After seconds)` of a `429` or `503` (ORCH-2003). Both
/// surfaces answer from it: the envelope here, OpenAI's shape in `api::openai`.
pub struct WireError {
    pub status: StatusCode,
    pub envelope: contracts::ErrorEnvelope,
    pub hint: Option<(u64, u64)>,
}

impl From<OrchError> for WireError {
    fn from(mut error: OrchError) -> Self {
        let status = StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let backpressure = matches!(status.as_u16(), 429 | 503);
        let hint = backpressure.then(|| backoff_hint(error.backoff_ms.unwrap_or(0)));
        if let Some((backoff_ms, _)) = hint {
            error.backoff_ms = Some(backoff_ms);
        }
        Self {
            status,
            envelope: error.envelope(),
            hint,
        }
    }
}

impl WireError {
    /// `Retry-After` and `X-Backoff-Ms` when there is a hint, and the correlation id.
    pub fn write_headers(&self, response_headers: &mut axum::http::HeaderMap) {
        if let Some((backoff_ms, retry_after_s)) = self.hint {
            response_headers.insert(headers::RETRY_AFTER, HeaderValue::from(retry_after_s));
            response_headers.insert(headers::BACKOFF_MS, HeaderValue::from(backoff_ms));
        }
        if let Ok(value) = HeaderValue::from_str(&self.envelope.correlation_id) {
            response_headers.insert(headers::CORRELATION_ID, value);
        }
    }
}

impl IntoResponse for OrchError {
    fn into_response(self) -> Response {
        let wire = WireError::from(self);
        let mut response = (wire.status, Json(&wire.envelope)).into_response();
        wire.write_headers(response.headers_mut());
        response
    }
}

/// Answers that axum or hyper produce on their own — no route (404), a method the
/// route does not serve (405, `Allow` kept), a path segment that does not parse, a body
/// over the limit (413), a missing length (411), a media type (415), an unprocessable
/// body (422) — get the error envelope too (ORCH-2001). They keep their status; the
/// code is `NOT_FOUND` for 404 and `INVALID_PARAMS` for the other client errors.
pub async fn envelope_for_bare_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let detail = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = match status.as_u16() {
        404 => OrchError::new(
            contracts::ErrorCode::NotFound,
            format!(
                "no operation at {path}; the operations are listed in /openapi/data.json and /openapi/control.json"
            ),
        ),
        405 => {
            let allow = parts
                .headers
                .get(axum::http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            OrchError::invalid(
                "method",
                format!("{method} is not allowed on {path}; allowed: {allow}"),
            )
        }
        413 => OrchError::invalid(
            "body",
            format!("is larger than the server's limit (max_body_bytes in the config): {detail}"),
        ),
        400 => OrchError::invalid("path", detail),
        503 => OrchError::new(contracts::ErrorCode::PoolUnavailable, detail),
        411 | 415 | 422 => OrchError::invalid("body", detail),
        s if s >= 500 => OrchError::internal(format!("HTTP {status}: {detail}")),
        _ => OrchError::invalid("request", format!("HTTP {status}: {detail}")),
    };
    let mut answer = if super::is_openai_path(&path) {
        super::openai::OpenAiFailure::from(error).into_response()
    } else {
        error.into_response()
    };
    *answer.status_mut() = status;
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        answer
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow.clone());
    }
    answer
}

/// A panic in a handler becomes `500 INTERNAL`, never a dropped connection
/// (ORCH-2004).
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    OrchError::internal(
        "the server failed unexpectedly; its log has the details under this correlation id",
    )
    .with_log_detail(format!("panic: {detail}"))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-2004
    #[tokio::test]
    async fn a_caught_panic_becomes_500_internal_with_the_envelope() {
        let response = panic_response(Box::new("index out of bounds"));
        assert_eq!(response.status(), 500);
        assert!(
            response
                .headers()
                .contains_key(contracts::headers::CORRELATION_ID)
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let envelope: contracts::ErrorEnvelope = serde_json::from_slice(&body).unwrap();
        assert_eq!(envelope.code, contracts::ErrorCode::Internal);
        assert!(
            !envelope.message.contains("index out of bounds"),
            "the panic text stays in the log: {}",
            envelope.message
        );
        assert!(envelope.message.contains("correlation id"));
        assert!(!envelope.retriable);
    }
}
