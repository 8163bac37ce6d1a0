//! The OrchQueue client library (the SDK): a typed async client for the data
//! plane, with the scope and API key set once and applied to every call, SSE
//! parsed into typed events with transparent `Last-Event-ID` resume, and
//! opt-in retries that honour the server's backoff hints.

mod sse;

use std::time::Duration;

use contracts::{
    AdmissionResponse, Capabilities, DrainRequest, ErrorEnvelope, PoolActionResponse, PoolHealth,
    PoolList, ReloadRequest, ReplicaSetList, ScopePurge, SessionInfo, StreamEvent, TaskList,
    TaskRequest, TaskState, TaskStatus, UsageReport, headers,
};
use futures::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

pub use contracts;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with the error envelope.
    #[error("{status} {envelope}")]
    Api {
        status: u16,
        envelope: ErrorEnvelope,
        /// `Retry-After`, seconds.
        retry_after_s: Option<u64>,
        /// `X-Backoff-Ms`.
        backoff_ms: Option<u64>,
    },
    #[error("cannot reach the server: {0}")]
    Transport(String),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn envelope(&self) -> Option<&ErrorEnvelope> {
        match self {
            Self::Api { envelope, .. } => Some(envelope),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's suggested wait, preferring the millisecond header.
    pub fn backoff(&self) -> Option<Duration> {
        match self {
            Self::Api {
                backoff_ms,
                retry_after_s,
                ..
            } => backoff_ms
                .map(Duration::from_millis)
                .or(retry_after_s.map(Duration::from_secs)),
            _ => None,
        }
    }
}

/// Opt-in retries of retriable admission errors (`429`, `503`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Upper bound of one wait, whatever the server suggests.
    pub max_wait: Duration,
}

/// Filters of `GET /v1/tasks`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub state: Option<TaskState>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Client {
    base_url: String,
    http: reqwest::Client,
    scope: Option<String>,
    api_key: Option<String>,
    retry: Option<RetryPolicy>,
}

impl Client {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("a plain HTTP client builds"),
            scope: None,
            api_key: None,
            retry: None,
        }
    }

    /// Every call of this client lives in `scope` (ORCH-6010).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    pub fn with_retries(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        request
    }

    fn scoped(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.scope {
            Some(scope) => request.query(&[("scope", scope)]),
            None => request,
        }
    }

    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response).await)
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        response
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST /v1/tasks`. The client's scope fills `scope` when the request
    /// has none. With retries on, a missing `task_id` is generated so a
    /// retried submission stays idempotent.
    pub async fn submit(&self, mut task: TaskRequest) -> Result<AdmissionResponse, ClientError> {
        if task.scope.is_none() {
            task.scope = self.scope.clone();
        }
        let Some(policy) = self.retry else {
            return self
                .json(self.request(Method::POST, "/v1/tasks").json(&task))
                .await;
        };
        if task.task_id.is_none() {
            task.task_id = Some(format!("c-{}", uuid::Uuid::new_v4().simple()));
        }
        let mut attempt = 1;
        loop {
            let result = self
                .json(self.request(Method::POST, "/v1/tasks").json(&task))
                .await;
            match result {
                Err(error) if attempt < policy.max_attempts && is_retriable(&error) => {
                    let wait = error.backoff().unwrap_or(Duration::from_millis(100));
                    tokio::time::sleep(wait.min(policy.max_wait)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// `POST /v1/tasks` with a body the caller built, sent as it is (no scope
    /// filled in, no retries): for fields newer than this client's types, and
    /// for checking how the server answers a body the typed request cannot
    /// express (an unknown field, a value outside an enumeration).
    pub async fn submit_json(
        &self,
        body: &serde_json::Value,
    ) -> Result<AdmissionResponse, ClientError> {
        self.json(self.request(Method::POST, "/v1/tasks").json(body))
            .await
    }

    /// `GET /v1/tasks/{id}`.
    pub async fn status(&self, task_id: &str) -> Result<TaskStatus, ClientError> {
        let path = format!("/v1/tasks/{}", encode(task_id));
        self.json(self.scoped(self.request(Method::GET, &path)))
            .await
    }

    /// `GET /v1/tasks`: one page.
    pub async fn list(&self, options: &ListOptions) -> Result<TaskList, ClientError> {
        let mut request = self.scoped(self.request(Method::GET, "/v1/tasks"));
        if let Some(state) = options.state {
            request = request.query(&[("state", state.as_str())]);
        }
        if let Some(limit) = options.limit {
            request = request.query(&[("limit", limit)]);
        }
        if let Some(cursor) = &options.cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        self.json(request).await
    }

    /// `POST /v1/tasks/{id}/cancel`.
    pub async fn cancel(&self, task_id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/tasks/{}/cancel", encode(task_id));
        self.no_content(self.scoped(self.request(Method::POST, &path)), "cancel")
            .await
    }

    /// `GET /v1/tasks/{id}/stream` from the start.
    pub async fn stream(
        &self,
        task_id: &str,
    ) -> Result<impl Stream<Item = Result<StreamEvent, ClientError>> + Send + use<>, ClientError>
    {
        self.stream_after(task_id, None).await
    }

    /// The stream resuming right after token `last_event_id` (ORCH-1104).
    /// A dropped connection is resumed with `Last-Event-ID`, skipping what
    /// was already delivered, so the caller sees every event exactly once.
    pub async fn stream_after(
        &self,
        task_id: &str,
        last_event_id: Option<u32>,
    ) -> Result<impl Stream<Item = Result<StreamEvent, ClientError>> + Send + use<>, ClientError>
    {
        let first = self.open_stream(task_id, last_event_id).await?;
        let client = self.clone();
        let task_id = task_id.to_owned();
        Ok(async_stream::stream! {
            let mut body = first;
            let mut last_token = last_event_id;
            // Events seen since the last token: skipped again after a resume.
            let mut since_token = 0usize;
            let mut reconnects = 0u32;
            loop {
                let mut skip = 0usize;
                let mut ended = false;
                let mut events = std::pin::pin!(sse::events(body));
                while let Some(item) = events.next().await {
                    match item {
                        Ok(event) => {
                            if skip < since_token {
                                skip += 1;
                                continue;
                            }
                            if let StreamEvent::Token(token) = &event {
                                last_token = Some(token.i);
                                since_token = 0;
                            } else {
                                since_token += 1;
                            }
                            skip = since_token;
                            reconnects = 0;
                            ended = event.is_terminal();
                            yield Ok(event);
                            if ended {
                                break;
                            }
                        }
                        Err(error) => {
                            yield Err(error);
                            return;
                        }
                    }
                }
                if ended {
                    return;
                }
                reconnects += 1;
                if reconnects > 5 {
                    yield Err(ClientError::Transport("the stream dropped and could not be resumed".into()));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(reconnects))).await;
                match client.open_stream(&task_id, last_token).await {
                    Ok(next) => body = next,
                    Err(error) => {
                        yield Err(error);
                        return;
                    }
                }
            }
        })
    }

    async fn open_stream(
        &self,
        task_id: &str,
        last_event_id: Option<u32>,
    ) -> Result<Response, ClientError> {
        let path = format!("/v1/tasks/{}/stream", encode(task_id));
        let mut request = self
            .scoped(self.request(Method::GET, &path))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header(headers::LAST_EVENT_ID, id.to_string());
        }
        self.send(request).await
    }

    async fn no_content(&self, request: RequestBuilder, what: &str) -> Result<(), ClientError> {
        let response = self.send(request).await?;
        if response.status() != StatusCode::NO_CONTENT {
            return Err(ClientError::Protocol(format!(
                "{what} answered {} instead of 204",
                response.status()
            )));
        }
        Ok(())
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn session(&self, session_id: &str) -> Result<SessionInfo, ClientError> {
        let path = format!("/v1/sessions/{}", encode(session_id));
        self.json(self.scoped(self.request(Method::GET, &path)))
            .await
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn end_session(&self, session_id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/sessions/{}", encode(session_id));
        self.no_content(
            self.scoped(self.request(Method::DELETE, &path)),
            "session delete",
        )
        .await
    }

    /// `DELETE /v1/scopes/{scope}`: cancel and purge everything in `scope`
    /// (the client's own scope when `None`).
    pub async fn purge_scope(&self, scope: Option<&str>) -> Result<ScopePurge, ClientError> {
        let scope = scope.or(self.scope.as_deref()).ok_or_else(|| {
            ClientError::Protocol("purge_scope needs a scope: the client has none".into())
        })?;
        let path = format!("/v1/scopes/{}", encode(scope));
        self.json(self.request(Method::DELETE, &path)).await
    }

    /// `GET /v1/pools`.
    pub async fn pools(&self) -> Result<PoolList, ClientError> {
        self.json(self.request(Method::GET, "/v1/pools")).await
    }

    /// `GET /v1/pools/{id}/health`.
    pub async fn pool_health(&self, pool_id: &str) -> Result<PoolHealth, ClientError> {
        let path = format!("/v1/pools/{}/health", encode(pool_id));
        self.json(self.request(Method::GET, &path)).await
    }

    /// `POST /v1/pools/{id}/drain`.
    pub async fn drain_pool(
        &self,
        pool_id: &str,
        deadline_ms: u64,
    ) -> Result<PoolActionResponse, ClientError> {
        let path = format!("/v1/pools/{}/drain", encode(pool_id));
        let body = DrainRequest { deadline_ms };
        self.json(self.request(Method::POST, &path).json(&body))
            .await
    }

    /// `POST /v1/pools/{id}/reload`.
    pub async fn reload_pool(
        &self,
        pool_id: &str,
        request: &ReloadRequest,
    ) -> Result<PoolActionResponse, ClientError> {
        let path = format!("/v1/pools/{}/reload", encode(pool_id));
        self.json(self.request(Method::POST, &path).json(request))
            .await
    }

    /// `GET /v1/replicasets`.
    pub async fn replica_sets(&self) -> Result<ReplicaSetList, ClientError> {
        self.json(self.request(Method::GET, "/v1/replicasets"))
            .await
    }

    /// `GET /v1/capabilities`.
    pub async fn capabilities(&self) -> Result<Capabilities, ClientError> {
        self.json(self.request(Method::GET, "/v1/capabilities"))
            .await
    }

    /// `GET /v1/usage`: the key's own tenant, or with an admin key every
    /// tenant (`None`) or the one named.
    pub async fn usage(&self, tenant: Option<&str>) -> Result<UsageReport, ClientError> {
        let mut request = self.request(Method::GET, "/v1/usage");
        if let Some(tenant) = tenant {
            request = request.query(&[("tenant", tenant)]);
        }
        self.json(request).await
    }

    /// Read a task's whole stream, up to and including its terminal event.
    pub async fn collect(&self, task_id: &str) -> Result<Vec<StreamEvent>, ClientError> {
        let stream = self.stream(task_id).await?;
        let mut stream = std::pin::pin!(stream);
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            events.push(event?);
        }
        Ok(events)
    }
}

fn is_retriable(error: &ClientError) -> bool {
    matches!(error, ClientError::Api { status: 429 | 503, envelope, .. } if envelope.retriable)
}

/// Percent-encode one path segment, so an id can never change the path or
/// the query (`?`, `#`, `/`): the server then rejects a malformed id with a
/// clear `INVALID_PARAMS` instead of silently reaching another task.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b':' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn api_error(response: Response) -> ClientError {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let retry_after_s = header(headers::RETRY_AFTER);
    let backoff_ms = header(headers::BACKOFF_MS);
    let body = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorEnvelope>(&body) {
        Ok(envelope) => ClientError::Api {
            status,
            envelope,
            retry_after_s,
            backoff_ms,
        },
        Err(_) => ClientError::Protocol(format!("HTTP {status} without an error envelope: {body}")),
    }
}
