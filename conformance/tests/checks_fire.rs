//! Each check of the conformance proxy fires (ORCH-9020): a fake upstream
//! answers what the real server must never answer, and the proxy in front of
//! it must name the departure. One conformant answer of each kind proves the
//! checks do not fire on everything.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use conformance::{Documents, Proxy};

const STATUS: &str = r#"{"task_id":"t1","pool_id":"default","priority":"interactive","state":"queued","tokens_out":0,"submitted_at_ms":1}"#;
const ENVELOPE: &str =
    r#"{"code":"NOT_FOUND","message":"no task t1","retriable":false,"correlation_id":"c1"}"#;

fn json(status: StatusCode, body: &'static str) -> impl IntoResponse {
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

fn sse(body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/event-stream")], body)
}

/// What the fake answers, by task id.
async fn task(axum::extract::Path(id): axum::extract::Path<String>) -> axum::response::Response {
    match id.as_str() {
        "good" => json(StatusCode::OK, STATUS).into_response(),
        "gone" => json(StatusCode::NOT_FOUND, ENVELOPE).into_response(),
        "teapot" => json(StatusCode::IM_A_TEAPOT, ENVELOPE).into_response(),
        "renamed" => json(
            StatusCode::OK,
            r#"{"id":"t1","pool_id":"default","priority":"interactive","state":"queued","tokens_out":0,"submitted_at_ms":1}"#,
        )
        .into_response(),
        "bad-state" => json(
            StatusCode::OK,
            r#"{"task_id":"t1","pool_id":"default","priority":"interactive","state":"paused","tokens_out":0,"submitted_at_ms":1}"#,
        )
        .into_response(),
        "plain" => (StatusCode::OK, "queued").into_response(),
        // QUEUE_FULL_DROP_LRU only ever ends a stream (ORCH-2026).
        "lru-over-http" => json(
            StatusCode::NOT_FOUND,
            r#"{"code":"QUEUE_FULL_DROP_LRU","message":"full","retriable":true,"correlation_id":"c1"}"#,
        )
        .into_response(),
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn stream(axum::extract::Path(id): axum::extract::Path<String>) -> axum::response::Response {
    match id.as_str() {
        "good" => sse(
            "event: started\ndata: {\"queue_position\":0,\"predicted_start_ms\":0,\"queue_time_ms\":0,\"replica_id\":\"r0\",\"engine\":\"builtin\",\"engine_version\":\"1\",\"seed\":1,\"sampler_profile_version\":\"v1\",\"kv_warmth\":false}\n\n\
             : keep-alive\n\n\
             id: 0\nevent: token\ndata: {\"t\":\"hi\",\"i\":0}\n\n",
        )
        .into_response(),
        "bogus-event" => sse("event: bogus\ndata: {}\n\n").into_response(),
        "conflict-on-stream" => sse(
            "event: error\ndata: {\"code\":\"CONFLICT\",\"message\":\"x\",\"retriable\":false,\"correlation_id\":\"c1\"}\n\n",
        )
        .into_response(),
        "token-without-id" => sse("event: token\ndata: {\"t\":\"hi\",\"i\":0}\n\n").into_response(),
        _ => sse("id: 0\nevent: token\ndata: {\"text\":\"hi\"}\n\n").into_response(),
    }
}

/// An admission whose `X-Queue-ETA-Ms` is missing and `X-Queue-Position` is
/// not a number, whatever the body.
async fn admit() -> impl IntoResponse {
    (
        StatusCode::ACCEPTED,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("x-queue-position"), "first"),
        ],
        r#"{"task_id":"t1","queue_position":0,"predicted_start_ms":0,"backoff_ms":0}"#,
    )
}

async fn fake_upstream() -> String {
    let app = Router::new()
        .route("/v1/tasks/{task_id}", get(task).put(|| async { "put" }))
        .route("/v1/tasks/{task_id}/stream", get(stream))
        .route("/v1/tasks", axum::routing::post(admit))
        .route("/v1/nowhere", get(|| async { json(StatusCode::OK, "{}") }))
        .fallback(|| async { json(StatusCode::NOT_FOUND, ENVELOPE) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The problems the proxy records for one request.
async fn problems_of(method: reqwest::Method, path: &str) -> Vec<String> {
    problems_of_request(method, path, None).await
}

async fn problems_of_request(
    method: reqwest::Method,
    path: &str,
    json_body: Option<&'static str>,
) -> Vec<String> {
    let documents = Arc::new(Documents::committed().expect("documents load"));
    let proxy = Proxy::start(&fake_upstream().await, documents)
        .await
        .unwrap();
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", proxy.url()));
    if let Some(body) = json_body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let answer = request.send().await.unwrap();
    let _ = answer.bytes().await.unwrap();
    // The copy is judged when the proxied body ends; give it a moment.
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let problems = proxy.take_problems();
        if !problems.is_empty() {
            return problems;
        }
    }
    vec![]
}

async fn assert_fires(method: reqwest::Method, path: &str, expected: &str) {
    let problems = problems_of(method.clone(), path).await;
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "{method} {path}: expected a problem containing {expected:?}, got {problems:?}"
    );
}

// covers: ORCH-9020
#[tokio::test]
async fn conformant_answers_raise_nothing() {
    for path in [
        "/v1/tasks/good",
        "/v1/tasks/gone",
        "/v1/tasks/good/stream",
        "/v1/unknown-path",
    ] {
        let problems = problems_of(reqwest::Method::GET, path).await;
        assert!(problems.is_empty(), "GET {path}: {problems:?}");
    }
}

// covers: ORCH-9020
#[tokio::test]
async fn a_path_no_document_declares_is_named() {
    assert_fires(
        reqwest::Method::GET,
        "/v1/nowhere",
        "no document declares this path",
    )
    .await;
}

// covers: ORCH-9020
#[tokio::test]
async fn an_undeclared_method_is_named() {
    assert_fires(reqwest::Method::PUT, "/v1/tasks/good", "declares no PUT").await;
}

// covers: ORCH-9020
#[tokio::test]
async fn an_undeclared_status_is_named() {
    assert_fires(
        reqwest::Method::GET,
        "/v1/tasks/teapot",
        "status 418 is not declared",
    )
    .await;
}

// covers: ORCH-9020
#[tokio::test]
async fn a_wrong_body_field_is_named() {
    assert_fires(
        reqwest::Method::GET,
        "/v1/tasks/renamed",
        "\"task_id\" is a required property",
    )
    .await;
    assert_fires(reqwest::Method::GET, "/v1/tasks/bad-state", "\"paused\"").await;
}

// covers: ORCH-9020
#[tokio::test]
async fn an_undeclared_media_type_is_named() {
    assert_fires(
        reqwest::Method::GET,
        "/v1/tasks/plain",
        "media type text/plain is not declared",
    )
    .await;
}

// covers: ORCH-9020
#[tokio::test]
async fn a_wrong_sse_event_is_named() {
    assert_fires(
        reqwest::Method::GET,
        "/v1/tasks/bogus-event/stream",
        "no declared frame has this event name",
    )
    .await;
    assert_fires(
        reqwest::Method::GET,
        "/v1/tasks/token-without-id/stream",
        "\"id\" is a required property",
    )
    .await;
    assert_fires(
        reqwest::Method::GET,
        "/v1/tasks/wrong-payload/stream",
        "data at",
    )
    .await;
}

// covers: ORCH-9020
#[tokio::test]
async fn a_missing_or_invalid_declared_header_is_named() {
    let body = r#"{"task_id":"t1","prompt":"hi","max_tokens":1}"#;
    let problems = problems_of_request(reqwest::Method::POST, "/v1/tasks", Some(body)).await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("declared header X-Queue-ETA-Ms is missing")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("header X-Queue-Position") && p.contains("\"first\"")),
        "{problems:?}"
    );
}

// covers: ORCH-9020
#[tokio::test]
async fn an_accepted_request_body_the_document_refuses_is_named() {
    let body = r#"{"task_id":"t1","prompt":"hi","max_tokens":1,"colour":"red"}"#;
    let problems = problems_of_request(reqwest::Method::POST, "/v1/tasks", Some(body)).await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("accepted request body") && p.contains("colour")),
        "{problems:?}"
    );
}

// covers: ORCH-2026, ORCH-9020
#[tokio::test]
async fn a_code_on_a_channel_the_spec_does_not_mark_is_named() {
    assert_fires(
        reqwest::Method::GET,
        "/v1/tasks/lru-over-http",
        "QUEUE_FULL_DROP_LRU reached the client over HTTP",
    )
    .await;
    assert_fires(
        reqwest::Method::GET,
        "/v1/tasks/conflict-on-stream/stream",
        "CONFLICT reached the client over SSE",
    )
    .await;
}
