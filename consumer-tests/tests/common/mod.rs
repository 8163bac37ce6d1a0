//! Shared pieces of the consumer tests: the pact builder, the mock-server run
//! around the real `orchctl::Client`, and response shapes built from the wire
//! types (never hand-written JSON).

#![allow(dead_code)]

use contracts::{ErrorCode, ErrorEnvelope, RejectPolicy, StreamEvent, TaskRequest};
use orchctl::Client;
use pact_consumer::builders::{InteractionBuilder, PactBuilder};
use pact_consumer::patterns::{EachLike, JsonPattern, Like, StringPattern, Term, build_regex};
use pact_consumer::prelude::*;
use serde::Serialize;
use serde_json::Value;

pub const CONSUMER: &str = "orchctl";
pub const PROVIDER: &str = "orchestratord";
/// The scope every data-plane interaction runs in.
pub const SCOPE: &str = "pact";
/// The key of the client-role tenant of the auth interactions.
pub const CLIENT_KEY: &str = "pact-client-key";

pub fn pact() -> PactBuilder {
    pact_of(CONSUMER)
}

/// The pact builder of one consumer of orchestratord: `contracts/pacts/<consumer>-orchestratord.json`.
pub fn pact_of(consumer: &str) -> PactBuilder {
    let mut pact = PactBuilder::new_v4(consumer, PROVIDER);
    if let Ok(dir) = std::env::var("PACT_OUTPUT_DIR") {
        pact.with_output_dir(dir);
    }
    pact
}

/// One interaction of its own pact builder (the pact files of all tests merge
/// into one file, sorted by description).
pub fn interaction(
    description: &str,
    build: impl FnOnce(InteractionBuilder) -> InteractionBuilder,
) -> PactBuilder {
    let mut pact = pact();
    pact.interaction(description, "", build);
    pact
}

/// Start the mock server, run `body` with its URL, then drop the server,
/// which checks every expectation matched and writes the pact.
pub fn run(pact: &PactBuilder, body: impl AsyncFnOnce(String)) {
    unsafe_env();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = pact.start_mock_server(None, None);
    let url = server.url().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(body(url));
    drop(runtime);
    drop(server);
}

fn unsafe_env() {
    // The pact crates would otherwise send usage telemetry. Set before any
    // thread of theirs reads it; harmless when already set.
    if std::env::var_os("PACT_DO_NOT_TRACK").is_none() {
        // SAFETY: set once at test start, before the mock server threads.
        unsafe { std::env::set_var("PACT_DO_NOT_TRACK", "true") };
    }
}

/// The data-plane client of the interactions: scope `pact`, no key.
pub fn client(url: &str) -> Client {
    Client::new(url).with_scope(SCOPE)
}

pub fn admin(url: &str) -> Client {
    Client::new(url)
}

/// A task request as the client sends it (the client fills `scope`).
pub fn task(prompt: &str, max_tokens: u32) -> TaskRequest {
    TaskRequest {
        prompt: prompt.into(),
        max_tokens,
        ..TaskRequest::default()
    }
}

/// The body `client` puts on the wire for `request`.
pub fn wire(request: &TaskRequest) -> Value {
    let mut request = request.clone();
    if request.scope.is_none() {
        request.scope = Some(SCOPE.into());
    }
    serde_json::to_value(request).expect("a task request serializes")
}

pub fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("wire types serialize")
}

/// A response shape from an example wire value: every leaf matched by type,
/// except the paths in `exact` (equal) and in `regex` (string regex).
/// Arrays match each element like their first one (at least one).
pub fn shape(value: &Value, exact: &[&str], regex: &[(&str, &str)]) -> JsonPattern {
    walk(value, "", exact, regex)
}

fn walk(value: &Value, path: &str, exact: &[&str], regex: &[(&str, &str)]) -> JsonPattern {
    if exact.contains(&path) {
        return JsonPattern::Json(value.clone());
    }
    if let Some((_, re)) = regex.iter().find(|(p, _)| *p == path) {
        let example = value.as_str().expect("regex paths hold strings");
        assert!(
            build_regex(re).is_match(example),
            "{re} must match {example}"
        );
        return Term::<JsonPattern>::new(build_regex(re), example).into();
    }
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Object(map) => JsonPattern::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), walk(v, &child(k), exact, regex)))
                .collect(),
        ),
        Value::Array(items) if !items.is_empty() => {
            EachLike::new(walk(&items[0], &child("[]"), exact, regex))
                .with_min_len(1)
                .into()
        }
        other => Like::new(JsonPattern::Json(other.clone())).into(),
    }
}

/// The envelope of `code`, as an example.
pub fn envelope(code: ErrorCode, policy: Option<RejectPolicy>, message: &str) -> ErrorEnvelope {
    ErrorEnvelope {
        code: code.into(),
        message: message.into(),
        retriable: code.retriable(),
        retry_after_ms: matches!(code.http_status(), 429 | 503).then_some(50),
        policy: policy.map(Into::into),
        engine: None,
        correlation_id: "c0ffee00-0000-4000-8000-000000000000".into(),
    }
}

/// The response shape of an error envelope: `code`, `retriable` and `policy`
/// exact, the message by a regex naming what it must name.
pub fn error_shape(envelope: &ErrorEnvelope, message_regex: &str) -> JsonPattern {
    shape(
        &json(envelope),
        &["code", "retriable", "policy"],
        &[("message", message_regex)],
    )
}

/// Set a status-code error response: the envelope, and on `429`/`503` the
/// numeric backoff headers.
/// A server whose body limit is 1 KiB, and its `413` for a body over it
/// (ORCH-2024): the state and the answer of the body-limit interactions.
pub fn body_over_the_limit(i: &mut InteractionBuilder) {
    i.given_with_params(
        "the server accepts request bodies of at most {max_body_bytes} bytes",
        &serde_json::json!({"max_body_bytes": 1024}),
    );
}

pub fn body_over_the_limit_response(i: &mut InteractionBuilder) {
    error_response(
        i,
        413,
        &envelope(
            ErrorCode::InvalidParams,
            None,
            "body: is larger than the server's limit (max_body_bytes in the config)",
        ),
        "^body: [\\s\\S]*$",
    );
}

pub fn error_response(
    i: &mut InteractionBuilder,
    status: u16,
    envelope: &ErrorEnvelope,
    message_regex: &str,
) {
    i.response
        .status(status)
        .header("content-type", "application/json")
        .json_body(error_shape(envelope, message_regex));
    if matches!(status, 429 | 503) {
        i.response
            .header("retry-after", term!("^[1-9][0-9]*$", "1"))
            .header("x-backoff-ms", term!("^[0-9]+$", "50"));
    }
}

/// Assert the client surfaced `status` with `code`.
pub fn assert_api_error<T: std::fmt::Debug>(
    result: Result<T, orchctl::ClientError>,
    status: u16,
    code: ErrorCode,
) -> orchctl::ClientError {
    let error = result.expect_err("an error answer");
    assert_eq!(error.status(), Some(status), "{error:?}");
    assert_eq!(
        error.envelope().and_then(|e| e.code.known()),
        Some(code),
        "{error:?}"
    );
    error
}

/// Frame events exactly as the server does (ORCH-1107).
pub fn frame(events: &[StreamEvent]) -> String {
    let mut out = String::new();
    for event in events {
        out.push_str(&format!("event: {}\n", event.name()));
        if let Some(id) = event.sse_id() {
            out.push_str(&format!("id: {id}\n"));
        }
        out.push_str(&format!("data: {}\n\n", event.data_json()));
    }
    out
}

/// Run-to-run varying values inside stream examples: a sentinel put into the
/// typed event, the example value that replaces it, and the regex that
/// matches it.
pub struct Vary {
    pub sentinel: &'static str,
    pub example: &'static str,
    pub regex: &'static str,
}

pub const NUM: &str = "[0-9]+";
pub const FLOAT: &str = "[0-9]+(?:\\.[0-9]+)?(?:[eE][-+]?[0-9]+)?";
pub const JSON_TEXT: &str = "(?:[^\"\\\\\\n]|\\\\.)*";

/// Events `events` framed as an SSE body: the example text and an anchored
/// regex in which the `vary` sentinels match their regex, and keep-alive
/// comments and `metrics` events may appear between any two events.
pub fn sse_body(events: &[StreamEvent], vary: &[Vary]) -> Term<StringPattern> {
    let filler = "(?::[^\\n]*\\n\\n|event: metrics\\ndata: \\{[^\\n]*\\}\\n\\n)*";
    let mut example = String::new();
    let mut regex = String::from("^");
    for event in events {
        let text = frame(std::slice::from_ref(event));
        let mut escaped = regex_escape(&text);
        let mut shown = text;
        for v in vary {
            escaped = escaped.replace(v.sentinel, v.regex);
            shown = shown.replace(v.sentinel, v.example);
        }
        regex.push_str(filler);
        regex.push_str(&escaped);
        example.push_str(&shown);
    }
    regex.push_str(filler);
    regex.push('$');
    let compiled = build_regex(&regex);
    assert!(
        compiled.is_match(&example),
        "the stream regex must match its own example:\n{regex}\n{example}"
    );
    Term::new(compiled, example)
}

pub fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        match c {
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Parse a stream example back through the client's own types, as a check
/// that the expectation is something the client understands.
pub fn stream_response(i: &mut InteractionBuilder, body: Term<StringPattern>) {
    i.response
        .status(200)
        .header(
            "content-type",
            term!("^text/event-stream.*$", "text/event-stream"),
        )
        .body_matching2(body, "text/event-stream");
}
