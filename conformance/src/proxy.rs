//! A loopback proxy in front of a test server: it forwards every request
//! unchanged, streams every answer back unchanged (SSE frames as they come),
//! and judges each exchange against the documents once its body has passed.
//! Nothing in the server knows it is there.

use std::sync::{Arc, Mutex};
use std::task::Poll;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::{Documents, Exchange};

/// Headers of one hop that must not be forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
];

struct Inner {
    upstream: String,
    http: reqwest::Client,
    documents: Arc<Documents>,
    problems: Mutex<Vec<String>>,
}

impl Inner {
    fn judge(&self, exchange: &Exchange) {
        let problems = self.documents.check(exchange);
        if !problems.is_empty() {
            self.problems.lock().expect("problems").extend(problems);
        }
    }
}

pub struct Proxy {
    url: String,
    inner: Arc<Inner>,
    assert_on_drop: bool,
}

impl Proxy {
    /// Listen on an ephemeral loopback port, forwarding to `upstream`
    /// (`http://host:port`), on the current tokio runtime.
    pub async fn start(upstream: &str, documents: Arc<Documents>) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            documents,
            problems: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Router::new().fallback(forward).with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            inner,
            assert_on_drop: false,
        })
    }

    /// Make dropping the proxy [`assert_conformant`](Self::assert_conformant)
    /// (unless the thread is already panicking), so a test fixture holding
    /// it fails the test that provoked a departure.
    pub fn asserting_on_drop(mut self) -> Self {
        self.assert_on_drop = true;
        self
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The problems found so far, taken (a second call sees only new ones).
    pub fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.problems.lock().expect("problems"))
    }

    /// Panic naming every exchange that departed from the documents.
    pub fn assert_conformant(&self) {
        let problems = self.take_problems();
        assert!(
            problems.is_empty(),
            "responses that depart from contracts/openapi (ORCH-9020):\n  {}",
            problems.join("\n  ")
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.assert_on_drop && !std::thread::panicking() {
            self.assert_conformant();
        }
    }
}

async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut outgoing = inner
        .http
        .request(parts.method.clone(), format!("{}{target}", inner.upstream))
        .body(request_body.clone());
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("proxy: upstream: {e}")).into_response();
        }
    };
    let exchange = Exchange {
        method: parts.method.to_string(),
        target,
        request_content_type: parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        request_body: request_body.to_vec(),
        status: answer.status().as_u16(),
        response_headers: answer
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect(),
        response_body: Vec::new(),
        // Until the upstream body ends.
        body_truncated: true,
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response = response.header(HeaderName::from(name), value);
        }
    }
    // The body passes through as it arrives; the guard keeps a copy and
    // judges the exchange when the body is done or the client drops it.
    let mut guard = Judged {
        inner: inner.clone(),
        exchange: Some(exchange),
    };
    let mut upstream = answer.bytes_stream();
    let stream = futures::stream::poll_fn(move |cx| {
        let next = upstream.poll_next_unpin(cx);
        if let Some(exchange) = guard.exchange.as_mut() {
            match &next {
                Poll::Ready(Some(Ok(bytes))) => exchange.response_body.extend_from_slice(bytes),
                Poll::Ready(None) => exchange.body_truncated = false,
                _ => {}
            }
        }
        next
    });
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response())
}

struct Judged {
    inner: Arc<Inner>,
    exchange: Option<Exchange>,
}

impl Drop for Judged {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            self.inner.judge(&exchange);
        }
    }
}
