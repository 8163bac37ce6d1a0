//! The OpenAI-compatible surface (ORCH-8001..ORCH-8009): every completion request
//! is a task admitted like `POST /v1/tasks`, answered in OpenAI's shapes from the
//! task's event log. Errors keep OpenAI's shape through `OpenAiFailure`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use contracts::openai::{
    self as oa, AssistantMessage, AssistantRole, ChatChoice, ChatChunkChoice, ChatCompletion,
    ChatCompletionChunk, ChatCompletionChunkObject, ChatCompletionObject, ChatCompletionRequest,
    ChatDelta, CompletionRequest, ListObject, Model, ModelList, ModelObject, OpenAiError,
    OpenAiErrorBody, OpenAiErrorType, OpenAiFinishReason, PromptInput, Sampling, TextChoice,
    TextCompletion, TextCompletionObject, Usage,
};
use contracts::{
    ChatMessage, Determinism, ErrorCode, ErrorEnvelope, FinishReason, Priority, StreamEvent,
    TaskRequest,
};
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};

use super::AppState;
use super::auth::Caller;
use super::extract::{parse_json, parse_value};
use crate::admission::{check_id, check_session_id};
use crate::error::OrchError;
use crate::runtime::{Orchestrator, Resume};
use crate::store::TaskKey;

/// `max_tokens` when a request names none, bounded by the pool's limit (ORCH-8004).
const DEFAULT_MAX_TOKENS: u32 = 256;
const OWNED_BY: &str = "orchqueue";

/// An error of this surface: OpenAI's shape, OrchQueue's code (ORCH-8008).
pub struct OpenAiFailure {
    error: Box<OrchError>,
    /// `code` when it is not OrchQueue's (`model_not_found`).
    code: Option<&'static str>,
    task_id: Option<String>,
}

impl From<OrchError> for OpenAiFailure {
    fn from(error: OrchError) -> Self {
        Self {
            error: Box::new(error),
            code: None,
            task_id: None,
        }
    }
}

impl OpenAiFailure {
    fn for_task(mut self, task_id: &str) -> Self {
        self.task_id = Some(task_id.to_owned());
        self
    }
}

/// OpenAI's error kind for a status.
fn error_type(status: u16) -> OpenAiErrorType {
    match status {
        401 => OpenAiErrorType::AuthenticationError,
        403 => OpenAiErrorType::PermissionError,
        429 => OpenAiErrorType::RateLimitError,
        s if s >= 500 => OpenAiErrorType::ServerError,
        _ => OpenAiErrorType::InvalidRequestError,
    }
}

/// The error object of an envelope (an answer, or a stream's error chunk).
fn error_body(
    envelope: &ErrorEnvelope,
    param: Option<String>,
    code: Option<&str>,
) -> OpenAiErrorBody {
    let status = envelope.code.known().map_or(500, |c| c.http_status());
    OpenAiErrorBody {
        error: OpenAiError {
            message: envelope.message.clone(),
            kind: error_type(status),
            param,
            code: code.map_or_else(|| envelope.code.to_string(), str::to_owned),
        },
    }
}

impl IntoResponse for OpenAiFailure {
    fn into_response(self) -> Response {
        let param = self.error.param.clone();
        let wire = super::error::WireError::from(*self.error);
        let body = error_body(&wire.envelope, param, self.code);
        let mut response = (wire.status, Json(body)).into_response();
        wire.write_headers(response.headers_mut());
        let headers = response.headers_mut();
        if let Some((backoff_ms, _)) = wire.hint {
            headers.insert(oa::headers::RETRY_AFTER_MS, HeaderValue::from(backoff_ms));
        }
        let retriable = wire.envelope.retriable;
        headers.insert(
            oa::headers::SHOULD_RETRY,
            HeaderValue::from_static(if retriable { "true" } else { "false" }),
        );
        if let Some(id) = self.task_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            headers.insert(oa::headers::TASK_ID, id);
        }
        response
    }
}

/// The pool a `model` names: its id or one of its aliases (ORCH-8002).
fn pool_of_model(app: &Orchestrator, model: &str) -> Result<String, OpenAiFailure> {
    let found = app
        .pools
        .values()
        .find(|pool| pool.id() == model || pool.config.aliases.iter().any(|alias| alias == model));
    match found {
        Some(pool) => Ok(pool.id().to_owned()),
        None => Err(OpenAiFailure {
            error: Box::new(OrchError {
                param: Some("model".into()),
                ..OrchError::new(
                    ErrorCode::NotFound,
                    format!(
                        "model {model:?} does not exist on this server; GET /v1/models lists the models (pools and their aliases)"
                    ),
                )
            }),
            code: Some("model_not_found"),
            task_id: None,
        }),
    }
}

/// The body as a JSON object, with the fields of `oa::UNSUPPORTED` checked and
/// taken out with those of `oa::IGNORED`, and no field the request type does not
/// read (ORCH-8004).
fn request_fields(
    body: &[u8],
    reads: impl Iterator<Item = &'static str>,
) -> Result<Map<String, Value>, OrchError> {
    let mut fields: Map<String, Value> = parse_json(body)?;
    for (name, only) in oa::UNSUPPORTED {
        if let Some(value) = fields.remove(*name)
            && !only.accepts(&value)
        {
            return Err(OrchError::invalid(
                name,
                format!("{} on this server, got {value}", only.describe()),
            ));
        }
    }
    for name in oa::IGNORED {
        fields.remove(*name);
    }
    let reads: Vec<&str> = reads.collect();
    if let Some(unknown) = fields.keys().find(|k| !reads.contains(&k.as_str())) {
        return Err(OrchError::invalid(
            unknown,
            format!(
                "unknown field; this operation reads {}, and accepts and ignores {}",
                reads.join(", "),
                oa::IGNORED.join(", ")
            ),
        ));
    }
    Ok(fields)
}

/// The body as `T`, by [`request_fields`]; a refusal is counted like one of
/// `POST /v1/tasks` (no pool yet).
fn read_request<T: serde::de::DeserializeOwned>(
    app: &AppState,
    body: &[u8],
    reads: impl Iterator<Item = &'static str>,
) -> Result<T, OrchError> {
    request_fields(body, reads)
        .and_then(|fields| parse_value(Value::Object(fields)))
        .inspect_err(|e| app.metrics.rejected(None, e))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, OrchError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| OrchError::invalid(name, "must be visible ASCII"))
        })
        .transpose()
}

/// The orchestrator knobs of the request headers (ORCH-8003), each invalid value
/// named by its header.
fn knobs(headers: &HeaderMap, task: &mut TaskRequest) -> Result<(), OrchError> {
    use oa::headers as h;
    if let Some(value) = header(headers, h::PRIORITY)? {
        task.priority = Some(match value {
            "interactive" => Priority::Interactive,
            "batch" => Priority::Batch,
            other => {
                return Err(OrchError::invalid(
                    "X-Orch-Priority",
                    format!("must be interactive or batch, got {other:?}"),
                ));
            }
        });
    }
    if let Some(value) = header(headers, h::DETERMINISM)? {
        task.determinism = Some(match value {
            "strict" => Determinism::Strict,
            "best_effort" => Determinism::BestEffort,
            other => {
                return Err(OrchError::invalid(
                    "X-Orch-Determinism",
                    format!("must be strict or best_effort, got {other:?}"),
                ));
            }
        });
    }
    if let Some(value) = header(headers, h::SCOPE)? {
        check_id("X-Orch-Scope", value)?;
        task.scope = Some(value.to_owned());
    }
    if let Some(value) = header(headers, h::SESSION_ID)? {
        check_session_id(value).map_err(|e| rename_param(e, "X-Orch-Session-Id"))?;
        task.session_id = Some(value.to_owned());
    }
    if let Some(value) = header(headers, h::TASK_ID)? {
        check_id("X-Orch-Task-Id", value)?;
        task.task_id = Some(value.to_owned());
    }
    if let Some(value) = header(headers, h::DEADLINE_MS)? {
        let max = contracts::limits::DEADLINE_MAX_MS;
        task.deadline_ms = Some(
            value
                .parse::<u64>()
                .ok()
                .filter(|d| (1..=max).contains(d))
                .ok_or_else(|| {
                    OrchError::invalid(
                        "X-Orch-Deadline-Ms",
                        format!("must be an integer between 1 and {max}, got {value:?}"),
                    )
                })?,
        );
    }
    Ok(())
}

fn rename_param(error: OrchError, param: &str) -> OrchError {
    match error.param.as_deref() {
        Some(old) => OrchError {
            message: error.message.replacen(old, param, 1),
            param: Some(param.to_owned()),
            ..error
        },
        None => error,
    }
}

/// The knob headers as the document declares them (one declaration for both
/// endpoints); `knobs` reads them from the request, so no field is read here.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct Knobs {
    /// `interactive` (default) or `batch` (ORCH-8003).
    #[param(rename = "X-Orch-Priority")]
    priority: Option<Priority>,
    /// The task's scope; omitted: the default scope.
    #[param(rename = "X-Orch-Scope")]
    scope: Option<String>,
    /// A session for replica affinity (ORCH-5010).
    #[param(rename = "X-Orch-Session-Id")]
    session_id: Option<String>,
    /// Milliseconds after admission by which the task must start (ORCH-3008).
    #[param(rename = "X-Orch-Deadline-Ms")]
    deadline_ms: Option<u64>,
    /// `strict` (default) or `best_effort` (ORCH-4032).
    #[param(rename = "X-Orch-Determinism")]
    determinism: Option<Determinism>,
    /// The task's id: an idempotency key (ORCH-1005).
    #[param(rename = "X-Orch-Task-Id")]
    task_id: Option<String>,
}

/// What both endpoints share once the body is read.
struct Completion {
    model: String,
    task: TaskRequest,
    stream: bool,
    include_usage: bool,
    /// The body's name for `max_tokens` (`max_completion_tokens` when it used that).
    max_tokens_field: &'static str,
}

fn completion(
    app: &Orchestrator,
    headers: &HeaderMap,
    model: String,
    sampling: Sampling,
    max_completion_tokens: Option<u32>,
) -> Result<Completion, OpenAiFailure> {
    let pool_id = pool_of_model(app, &model)?;
    let pool_limit = app
        .pool(&pool_id)
        .map_or(DEFAULT_MAX_TOKENS, |p| p.config.max_tokens_limit);
    let max_tokens_field = match max_completion_tokens {
        Some(_) => "max_completion_tokens",
        None => "max_tokens",
    };
    let mut task = TaskRequest {
        max_tokens: max_completion_tokens
            .or(sampling.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS.min(pool_limit)),
        pool_id: Some(pool_id),
        seed: sampling.seed,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        stop: sampling.stop.map(oa::StopSequences::into_vec),
        ..TaskRequest::default()
    };
    knobs(headers, &mut task)?;
    Ok(Completion {
        model,
        task,
        stream: sampling.stream.unwrap_or(false),
        include_usage: sampling
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        max_tokens_field,
    })
}

/// Cancels the task when the client goes away before its answer ends (ORCH-8009):
/// dropped with the response body or the handler's future while armed. A shutdown
/// drops connections too, and must leave the tasks to recovery.
struct CancelOnDrop {
    orchestrator: Arc<Orchestrator>,
    key: Option<TaskKey>,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.key = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take()
            && self.orchestrator.is_accepting()
        {
            let orchestrator = Arc::clone(&self.orchestrator);
            tokio::spawn(async move {
                if let Err(error) = orchestrator.cancel(&key).await {
                    tracing::warn!(task_id = %key.task_id, %error, "cancel after the client went away failed");
                }
            });
        }
    }
}

fn finish_reason(reason: Option<FinishReason>) -> OpenAiFinishReason {
    match reason {
        Some(FinishReason::Length) => OpenAiFinishReason::Length,
        Some(FinishReason::Canceled) => OpenAiFinishReason::Abort,
        Some(FinishReason::Stop) | None => OpenAiFinishReason::Stop,
    }
}

/// Which answer shape: chat or text completion.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Chat,
    Text,
}

/// The fixed parts of every chunk and answer of one request.
#[derive(Clone)]
struct Answer {
    shape: Shape,
    task_id: String,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u32,
}

impl Answer {
    fn usage(&self, completion_tokens: u32) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens.saturating_add(completion_tokens),
        }
    }

    /// One chunk of a stream: `text` and/or the finish, or only `usage`.
    fn chunk(
        &self,
        role: bool,
        text: Option<String>,
        finish: Option<OpenAiFinishReason>,
        usage: Option<Usage>,
    ) -> Value {
        let value = match self.shape {
            Shape::Chat => serde_json::to_value(ChatCompletionChunk {
                id: self.id.clone(),
                object: ChatCompletionChunkObject::ChatCompletionChunk,
                created: self.created,
                model: self.model.clone(),
                choices: match usage {
                    Some(_) => vec![],
                    None => vec![ChatChunkChoice {
                        index: 0,
                        delta: ChatDelta {
                            role: role.then_some(AssistantRole::Assistant),
                            content: text,
                        },
                        finish_reason: finish,
                    }],
                },
                usage,
            }),
            Shape::Text => serde_json::to_value(TextCompletion {
                id: self.id.clone(),
                object: TextCompletionObject::TextCompletion,
                created: self.created,
                model: self.model.clone(),
                choices: match usage {
                    Some(_) => vec![],
                    None => vec![TextChoice {
                        index: 0,
                        text: text.unwrap_or_default(),
                        finish_reason: finish,
                    }],
                },
                usage,
            }),
        };
        value.expect("chunks serialize")
    }

    fn whole(&self, text: String, finish: OpenAiFinishReason, completion_tokens: u32) -> Value {
        let usage = self.usage(completion_tokens);
        let value = match self.shape {
            Shape::Chat => serde_json::to_value(ChatCompletion {
                id: self.id.clone(),
                object: ChatCompletionObject::ChatCompletion,
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: AssistantRole::Assistant,
                        content: text,
                    },
                    finish_reason: finish,
                }],
                usage,
            }),
            Shape::Text => serde_json::to_value(TextCompletion {
                id: self.id.clone(),
                object: TextCompletionObject::TextCompletion,
                created: self.created,
                model: self.model.clone(),
                choices: vec![TextChoice {
                    index: 0,
                    text,
                    finish_reason: Some(finish),
                }],
                usage: Some(usage),
            }),
        };
        value.expect("answers serialize")
    }
}

/// Admit the task and answer from its events, streaming or whole.
async fn run(
    app: AppState,
    tenant: Arc<crate::runtime::Tenant>,
    request: Completion,
    shape: Shape,
) -> Result<Response, OpenAiFailure> {
    let pool = request.task.pool_id.clone().unwrap_or_default();
    let scope = request.task.scope.clone().unwrap_or_default();
    let admitted = app
        .orchestrator()
        .submit(&tenant, request.task)
        .await
        .inspect_err(|e| app.metrics.rejected(Some(&pool), e))
        .map_err(|e| match request.max_tokens_field {
            "max_tokens" => e,
            field if e.param.as_deref() == Some("max_tokens") => rename_param(e, field),
            _ => e,
        })?;
    let task_id = admitted.response.task_id.clone();
    let key = TaskKey::new(tenant.id.as_str(), scope, task_id.as_str());
    let created = app.clock.now_ms() / 1_000;
    let answer = Answer {
        shape,
        task_id: task_id.clone(),
        id: match shape {
            Shape::Chat => format!("chatcmpl-{task_id}"),
            Shape::Text => format!("cmpl-{task_id}"),
        },
        created,
        model: request.model,
        prompt_tokens: admitted.prompt_tokens,
    };
    let mut guard = CancelOnDrop {
        orchestrator: app.orchestrator(),
        key: Some(key.clone()),
    };
    let events = app
        .events(&key, Resume::FromStart)
        .await
        .map_err(|e| OpenAiFailure::from(e).for_task(&task_id))?;
    let mut response = if request.stream {
        let frames = stream_frames(answer, events, request.include_usage, guard);
        let keepalive = Duration::from_millis(app.keepalive().max(100));
        Sse::new(frames.map(Ok::<_, Infallible>))
            .keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive"))
            .into_response()
    } else {
        let whole = collect(&answer, events).await;
        guard.disarm();
        match whole {
            Ok(body) => Json(body).into_response(),
            Err(envelope) => {
                return Err(OpenAiFailure::from(error_of(&envelope)).for_task(&task_id));
            }
        }
    };
    if let Ok(value) = HeaderValue::from_str(&task_id) {
        response.headers_mut().insert(oa::headers::TASK_ID, value);
    }
    Ok(response)
}

/// The domain error an error event carries, so a failed task answers like a
/// refused request.
fn error_of(envelope: &ErrorEnvelope) -> OrchError {
    let mut error = OrchError::new(
        envelope.code.known().unwrap_or(ErrorCode::Internal),
        envelope.message.clone(),
    );
    error.backoff_ms = envelope.retry_after_ms;
    error
}

/// The whole answer once the task ends, or the error it ended with.
async fn collect(
    answer: &Answer,
    events: impl Stream<Item = StreamEvent>,
) -> Result<Value, ErrorEnvelope> {
    let mut text = String::new();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            StreamEvent::Token(token) => text.push_str(&token.t),
            StreamEvent::End(end) => {
                let reason = finish_reason(end.finish_reason.known());
                return Ok(answer.whole(text, reason, end.tokens_out));
            }
            StreamEvent::Error(envelope) => return Err(envelope),
            StreamEvent::Started(_) | StreamEvent::Metrics(_) => {}
        }
    }
    Err(shutting_down(answer).envelope())
}

/// A task's events end without its end only when the server shuts down: the task
/// stays in the store and runs after the restart (ORCH-8009).
fn shutting_down(answer: &Answer) -> OrchError {
    OrchError::new(
        ErrorCode::PoolUnavailable,
        format!(
            "the server is shutting down; the task stays queued and runs after the restart: read it with GET /v1/tasks/{}",
            answer.task_id
        ),
    )
}

/// The SSE frames of a streaming answer (ORCH-8006, ORCH-8007): a role chunk, one
/// chunk per token, the finish chunk, the usage chunk when asked, `[DONE]`; an
/// error ends the stream with one error chunk and `[DONE]`.
fn stream_frames(
    answer: Answer,
    events: impl Stream<Item = StreamEvent> + Send + 'static,
    include_usage: bool,
    mut guard: CancelOnDrop,
) -> impl Stream<Item = Event> + Send + 'static {
    let json = |value: Value| Event::default().data(value.to_string());
    async_stream::stream! {
        if answer.shape == Shape::Chat {
            yield json(answer.chunk(true, Some(String::new()), None, None));
        }
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                StreamEvent::Token(token) => yield json(answer.chunk(false, Some(token.t), None, None)),
                StreamEvent::End(end) => {
                    guard.disarm();
                    let reason = finish_reason(end.finish_reason.known());
                    let text = (answer.shape == Shape::Text).then(String::new);
                    yield json(answer.chunk(false, text, Some(reason), None));
                    if include_usage {
                        yield json(answer.chunk(false, None, None, Some(answer.usage(end.tokens_out))));
                    }
                    break;
                }
                StreamEvent::Error(envelope) => {
                    guard.disarm();
                    let body = error_body(&envelope, None, None);
                    yield json(serde_json::to_value(body).expect("errors serialize"));
                    break;
                }
                StreamEvent::Started(_) | StreamEvent::Metrics(_) => {}
            }
        }
        if guard.key.is_some() {
            let body = error_body(&shutting_down(&answer).envelope(), None, None);
            yield json(serde_json::to_value(body).expect("errors serialize"));
        }
        yield Event::default().data("[DONE]");
    }
}

fn tenant_of(
    caller: Result<Caller, OrchError>,
) -> Result<Arc<crate::runtime::Tenant>, OpenAiFailure> {
    Ok(caller?.0)
}

/// Create a chat completion: the messages become a task (ORCH-8005).
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    operation_id = "createChatCompletion",
    request_body = ChatCompletionRequest,
    params(Knobs),
    responses(
        (status = 200, description = "`stream` false: the whole `chat.completion`; true: `text/event-stream` of `chat.completion.chunk` frames, then `data: [DONE]`.",
            headers(("X-Orch-Task-Id" = String, description = "The task this request is; readable with `GET /v1/tasks/{id}`.")),
            content(
                (ChatCompletion = "application/json"),
                (String = "text/event-stream"),
            ),
            extensions(("x-req-id" = json!(["ORCH-8001", "ORCH-8005", "ORCH-8006", "ORCH-8007"])))),
        (status = 400, description = "`INVALID_PARAMS`: a field or header is malformed, over its limit, unsupported or unknown; `param` names it.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8003", "ORCH-8004", "ORCH-8008"])))),
        (status = 401, description = "`UNAUTHORIZED`.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-8008"])))),
        (status = 404, description = "`model_not_found`: no pool has this id or alias; or `NOT_FOUND`: the session expired.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8002", "ORCH-8008"])))),
        (status = 409, description = "`CONFLICT`: `X-Orch-Task-Id` exists with a different body.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-1006", "ORCH-8008"])))),
        (status = 429, description = "`ADMISSION_REJECT`: queue full or over the rate limit; or `QUEUE_FULL_DROP_LRU`: a non-streaming task evicted from a full queue.", body = OpenAiErrorBody,
            headers(
                ("Retry-After" = u64, description = "Seconds."),
                ("retry-after-ms" = u64, description = "Milliseconds, as `X-Backoff-Ms`; what OpenAI's SDKs wait."),
                ("X-Backoff-Ms" = u64, description = "Milliseconds (ORCH-2003)."),
            ),
            extensions(("x-req-id" = json!(["ORCH-2003", "ORCH-8008"])))),
        (status = 500, description = "`INTERNAL`.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8007", "ORCH-8008"])))),
        (status = 502, description = "`WORKER_RESET`: a non-streaming task whose replica was lost after its first token.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8007", "ORCH-8008"])))),
        (status = 504, description = "`DECODE_TIMEOUT`: a non-streaming task stopped by a watchdog.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8007", "ORCH-8008"])))),
        (status = 503, description = "`POOL_UNREADY` or `POOL_UNAVAILABLE`, or a non-streaming task that ended with `REPLICA_EXHAUSTED` or `POOL_UNAVAILABLE` (a drain) before its answer.", body = OpenAiErrorBody,
            headers(
                ("Retry-After" = u64, description = "Seconds."),
                ("retry-after-ms" = u64, description = "Milliseconds."),
                ("X-Backoff-Ms" = u64, description = "Milliseconds (ORCH-2003)."),
            ),
            extensions(("x-req-id" = json!(["ORCH-2003", "ORCH-8008"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-8001", "ORCH-8002", "ORCH-8003", "ORCH-8004", "ORCH-8005", "ORCH-8009"]))),
)]
pub async fn chat_completions(
    State(app): State<AppState>,
    caller: Result<Caller, OrchError>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiFailure> {
    let tenant = tenant_of(caller)?;
    let request: ChatCompletionRequest = read_request(&app, &body, oa::chat_fields())?;
    let mut completion = completion(
        &app,
        &headers,
        request.model,
        request.sampling,
        request.max_completion_tokens,
    )?;
    completion.task.messages = Some(
        request
            .messages
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content.into_text(),
            })
            .collect(),
    );
    run(app, tenant, completion, Shape::Chat).await
}

/// Create a text completion: the prompt becomes a task.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    operation_id = "createCompletion",
    request_body = CompletionRequest,
    params(Knobs),
    responses(
        (status = 200, description = "`stream` false: the whole `text_completion`; true: `text/event-stream` of `text_completion` chunks, then `data: [DONE]`.",
            headers(("X-Orch-Task-Id" = String, description = "The task this request is; readable with `GET /v1/tasks/{id}`.")),
            content(
                (TextCompletion = "application/json"),
                (String = "text/event-stream"),
            ),
            extensions(("x-req-id" = json!(["ORCH-8001", "ORCH-8006", "ORCH-8007"])))),
        (status = 400, description = "`INVALID_PARAMS`: a field or header is malformed, over its limit, unsupported or unknown; `param` names it.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8003", "ORCH-8004", "ORCH-8008"])))),
        (status = 401, description = "`UNAUTHORIZED`.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-8008"])))),
        (status = 404, description = "`model_not_found`: no pool has this id or alias; or `NOT_FOUND`: the session expired.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8002", "ORCH-8008"])))),
        (status = 409, description = "`CONFLICT`: `X-Orch-Task-Id` exists with a different body.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-1006", "ORCH-8008"])))),
        (status = 429, description = "`ADMISSION_REJECT`: queue full or over the rate limit; or `QUEUE_FULL_DROP_LRU`: a non-streaming task evicted from a full queue.", body = OpenAiErrorBody,
            headers(
                ("Retry-After" = u64, description = "Seconds."),
                ("retry-after-ms" = u64, description = "Milliseconds, as `X-Backoff-Ms`; what OpenAI's SDKs wait."),
                ("X-Backoff-Ms" = u64, description = "Milliseconds (ORCH-2003)."),
            ),
            extensions(("x-req-id" = json!(["ORCH-2003", "ORCH-8008"])))),
        (status = 500, description = "`INTERNAL`.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8007", "ORCH-8008"])))),
        (status = 502, description = "`WORKER_RESET`: a non-streaming task whose replica was lost after its first token.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8007", "ORCH-8008"])))),
        (status = 504, description = "`DECODE_TIMEOUT`: a non-streaming task stopped by a watchdog.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-8007", "ORCH-8008"])))),
        (status = 503, description = "`POOL_UNREADY` or `POOL_UNAVAILABLE`, or a non-streaming task that ended with `REPLICA_EXHAUSTED` or `POOL_UNAVAILABLE` (a drain) before its answer.", body = OpenAiErrorBody,
            headers(
                ("Retry-After" = u64, description = "Seconds."),
                ("retry-after-ms" = u64, description = "Milliseconds."),
                ("X-Backoff-Ms" = u64, description = "Milliseconds (ORCH-2003)."),
            ),
            extensions(("x-req-id" = json!(["ORCH-2003", "ORCH-8008"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-8001", "ORCH-8002", "ORCH-8003", "ORCH-8004", "ORCH-8009"]))),
)]
pub async fn completions(
    State(app): State<AppState>,
    caller: Result<Caller, OrchError>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiFailure> {
    let tenant = tenant_of(caller)?;
    let request: CompletionRequest = read_request(&app, &body, oa::completion_fields())?;
    let prompt = match request.prompt {
        PromptInput::One(prompt) => prompt,
        PromptInput::Many(mut prompts) if prompts.len() == 1 => prompts.remove(0),
        PromptInput::Many(prompts) => {
            return Err(OrchError::invalid(
                "prompt",
                format!(
                    "a list of {} prompts is a batch this server does not take: send one prompt per request",
                    prompts.len()
                ),
            )
            .into());
        }
    };
    let mut completion = completion(&app, &headers, request.model, request.sampling, None)?;
    completion.task.prompt = prompt;
    run(app, tenant, completion, Shape::Text).await
}

/// The models: every pool id and alias (ORCH-8002).
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    operation_id = "listModels",
    responses(
        (status = 200, description = "Every pool id and alias, as models.", body = ModelList,
            extensions(("x-req-id" = json!(["ORCH-8002"])))),
        (status = 401, description = "`UNAUTHORIZED`.", body = OpenAiErrorBody,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-8008"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-8001", "ORCH-8002"]))),
)]
pub async fn list_models(
    State(app): State<AppState>,
    caller: Result<Caller, OrchError>,
) -> Result<Json<ModelList>, OpenAiFailure> {
    tenant_of(caller)?;
    let created = app.started_at_s();
    let model = |id: &str| Model {
        id: id.to_owned(),
        object: ModelObject::Model,
        created,
        owned_by: OWNED_BY.into(),
    };
    let data = app
        .pools
        .values()
        .flat_map(|pool| {
            std::iter::once(model(pool.id())).chain(pool.config.aliases.iter().map(|a| model(a)))
        })
        .collect();
    Ok(Json(ModelList {
        object: ListObject::List,
        data,
    }))
}
