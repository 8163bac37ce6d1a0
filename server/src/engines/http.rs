//! What the HTTP adapters (llamacpp, openai, tgi) share: the client, the
//! Server-Sent-Events reader, error classification and the conservative
//! token estimate (ORCH-4023, ORCH-4024, ORCH-4025).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};

use contracts::FinishReason;

use super::{EngineError, EngineEvent, EngineProperties, TokenStream};

/// An HTTP client for one replica.
///
/// Connections are NOT pooled (ORCH-4023): llama-server closes the
/// connection after each streamed response, and a pooled connection the
/// engine closed while it sat idle fails the next request sent on it. Rather
/// than detecting staleness before sending, every request opens a fresh
/// connection (a loopback or LAN connect costs well under a millisecond,
/// measured by `engine-bench`), so no request fails because of a stale
/// connection and none is silently retried. Dropping a streaming response
/// closes its connection, which is how a generation is canceled.
/// What a remote engine reported at its first successful probe, and
/// whether it was re-checked since its last failed probe (a restarted engine
/// may run another build or model, and a replica set must not mix them,
/// ORCH-4003). Until discovery, `properties()` is the configured fallback.
pub struct Discovery {
    fallback: EngineProperties,
    discovered: OnceLock<EngineProperties>,
    verified: AtomicBool,
}

impl Discovery {
    pub fn new(fallback: EngineProperties) -> Self {
        Self {
            fallback,
            discovered: OnceLock::new(),
            verified: AtomicBool::new(false),
        }
    }

    pub fn properties(&self) -> &EngineProperties {
        self.discovered.get().unwrap_or(&self.fallback)
    }

    /// Whether the engine was checked since it last failed a probe.
    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::SeqCst)
    }

    /// A probe failed: check the engine again when it comes back.
    pub fn invalidate(&self) {
        self.verified.store(false, Ordering::SeqCst);
    }

    /// Record what a probe found: the first finding is kept, a later one
    /// must equal it, else the reason the replica stays out.
    pub fn confirm(&self, engine: &str, found: EngineProperties) -> Result<(), String> {
        let known = self.discovered.get_or_init(|| found.clone());
        if known != &found {
            return Err(format!(
                "{engine} changed since it was first seen (was {known:?}, now {found:?}); \
                 a replica set must not mix engine versions or models: restart or reload the pool"
            ));
        }
        self.verified.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// One parsed event of an engine's generation stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub token: Option<String>,
    pub finish: Option<FinishReason>,
    /// The engine's last event (its final chunk, or `[DONE]`).
    pub end: bool,
}

/// Send `request` when first polled and turn the engine's SSE answer into
/// tokens and one `Finished`, with `parse` reading each event's data. A
/// stream that ends without a finish reason means the engine went away.
pub fn generation(
    request: reqwest::RequestBuilder,
    context: String,
    mut parse: impl FnMut(&str) -> Result<Parsed, EngineError> + Send + 'static,
) -> TokenStream {
    Box::pin(async_stream::stream! {
        // Sent on first poll, so the runtime's watchdogs also cover the wait
        // for the response headers.
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                yield Err(lost(&context, &error));
                return;
            }
        };
        if !response.status().is_success() {
            yield Err(response_error(&context, response).await);
            return;
        }
        let mut events = std::pin::pin!(sse_events(response, format!("{context} stream")));
        let mut finished = None;
        while let Some(event) = events.next().await {
            match event.and_then(|event| parse(&event.data)) {
                Ok(parsed) => {
                    if let Some(token) = parsed.token {
                        yield Ok(EngineEvent::Token(token));
                    }
                    finished = parsed.finish.or(finished);
                    if parsed.end {
                        break;
                    }
                }
                Err(error) => {
                    yield Err(error);
                    return;
                }
            }
        }
        match finished {
            Some(reason) => yield Ok(EngineEvent::Finished(reason)),
            None => yield Err(EngineError::Lost(format!(
                "{context}: the stream ended without a finish reason (the engine went away)"
            ))),
        }
    })
}

pub fn client(connect_timeout_ms: u64) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_millis(connect_timeout_ms))
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .expect("a plain HTTP client builds")
}

/// The base URL without a trailing slash.
pub fn base(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// A transport failure: the replica is unreachable or went away.
pub fn lost(context: &str, error: &reqwest::Error) -> EngineError {
    let kind = if error.is_connect() {
        "cannot connect"
    } else if error.is_timeout() {
        "timed out"
    } else {
        "connection failed"
    };
    EngineError::Lost(format!("{context}: {kind}: {error}"))
}

/// Prompt tokens when the engine offers no tokenizer (ORCH-4024): one token
/// per UTF-8 byte plus 4 for special tokens (BOS/EOS, SentencePiece's dummy
/// prefix). No tokenizer in use emits more: byte-level BPE and byte-fallback
/// SentencePiece both bottom out at one token per byte. It over-counts
/// ordinary text about fourfold, so admission can refuse a prompt that
/// would have fit; it never admits one that cannot.
pub fn estimate_tokens(prompt: &str) -> u32 {
    u32::try_from(prompt.len())
        .unwrap_or(u32::MAX)
        .saturating_add(4)
}

/// One SSE event of a response body: its `event:` name (if any) and the
/// joined `data:` lines.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Read a `text/event-stream` body into events. A transport error ends the
/// stream with `Lost`; a body that simply ends yields no more events (the
/// adapter decides whether that was premature).
pub fn sse_events(
    response: reqwest::Response,
    context: String,
) -> impl Stream<Item = Result<SseEvent, EngineError>> + Send + 'static {
    let mut body = response.bytes_stream();
    async_stream::stream! {
        let mut parser = SseParser::default();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    for event in parser.push(&bytes) {
                        yield Ok(event);
                    }
                }
                Err(error) => {
                    yield Err(lost(&context, &error));
                    return;
                }
            }
        }
        if let Some(event) = parser.finish() {
            yield Ok(event);
        }
    }
}

/// Incremental SSE framing (the WHATWG rules the engines use: `data:` with
/// or without one space, `\n` or `\r\n` line ends, blank line dispatches,
/// `:` comments ignored).
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=newline).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(event) = self.line(&line) {
                out.push(event);
            }
        }
        out
    }

    /// A final event not followed by a blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            let line = String::from_utf8_lossy(&rest).into_owned();
            if let Some(event) = self.line(&line) {
                return Some(event);
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if self.data.is_empty() {
            self.event = None;
            return None;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        Some(SseEvent {
            event: self.event.take(),
            data,
        })
    }
}

/// The message of an error body: `{"error": {"message": …}}` (llama.cpp,
/// OpenAI), `{"error": "…"}` (TGI), or the raw text.
pub fn error_message(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.chars().take(500).collect();
    };
    let error = json.get("error").unwrap_or(&json);
    let message = error
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| error.as_str())
        .or_else(|| json.get("message").and_then(|m| m.as_str()))
        .or_else(|| json.get("detail").and_then(|m| m.as_str()));
    match message {
        Some(message) => message.to_owned(),
        None => body.chars().take(500).collect(),
    }
}

/// The `type` of an error body (`exceed_context_size_error`, …).
pub fn error_type(body: &str) -> Option<String> {
    let json = serde_json::from_str::<serde_json::Value>(body).ok()?;
    let error = json.get("error")?;
    error
        .get("type")
        .or_else(|| json.get("error_type"))
        .and_then(|t| t.as_str())
        .map(str::to_owned)
}

/// Map a non-2xx answer to a generation request (ORCH-4025): the request
/// itself is at fault (400, 413, 422: context overflow and other invalid
/// parameters) → `InvalidRequest`; everything else (401/403 misconfigured
/// key, 404 wrong model, 429/503 overloaded or loading, 5xx) → `Refused`,
/// which takes the replica out of placement and lets the task run elsewhere.
pub fn status_error(context: &str, status: reqwest::StatusCode, body: &str) -> EngineError {
    let message = error_message(body);
    let kind = error_type(body)
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    let text = format!("{context}: HTTP {}{kind}: {message}", status.as_u16());
    match status.as_u16() {
        400 | 413 | 422 => EngineError::InvalidRequest(text),
        _ => EngineError::Refused(text),
    }
}

/// Read a non-2xx response into an engine error.
pub async fn response_error(context: &str, response: reqwest::Response) -> EngineError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    status_error(context, status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_crlf_and_comments() {
        let mut parser = SseParser::default();
        let mut events = parser.push(b": ping\r\n\r\ndata: {\"a\"");
        assert!(events.is_empty());
        events.extend(parser.push(b":1}\r\n\r\ndata:{\"b\":2}\n\nevent: x\ndata: [DONE]\n"));
        events.extend(parser.finish());
        let data: Vec<_> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, [r#"{"a":1}"#, r#"{"b":2}"#, "[DONE]"]);
        assert_eq!(events[2].event.as_deref(), Some("x"));
    }

    // covers: ORCH-4024
    #[test]
    fn the_estimate_never_undercounts_bytes() {
        assert_eq!(estimate_tokens(""), 4);
        assert_eq!(estimate_tokens("héllo"), 6 + 4);
    }

    // covers: ORCH-4025
    #[test]
    fn context_errors_are_invalid_requests_and_overload_is_refusal() {
        let body = r#"{"error":{"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error"}}"#;
        match status_error("llamacpp", reqwest::StatusCode::BAD_REQUEST, body) {
            EngineError::InvalidRequest(m) => {
                assert!(m.contains("exceed_context_size_error"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            status_error(
                "tgi",
                reqwest::StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"Model is overloaded","error_type":"overloaded"}"#
            ),
            EngineError::Refused(_)
        ));
    }
}
