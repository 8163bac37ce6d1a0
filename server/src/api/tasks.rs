//! Data-plane task operations (ORCH-1001..ORCH-1107).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use contracts::limits::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX};
use contracts::{
    AdmissionResponse, ErrorEnvelope, TaskList, TaskRequest, TaskState, TaskStatus, headers,
};
use futures::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::auth::Caller;
use super::extract::{Query, parse_json};
use crate::admission::{check_scope, check_task_id};
use crate::error::OrchError;
use crate::runtime::{Resume, Tenant};
use crate::store::{ListFilter, TaskKey};
use std::sync::Arc;

/// The namespace of a call (ORCH-6010): omitted means the default scope.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ScopeQuery {
    /// Scope the task was created in; omit for the default scope.
    pub scope: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Scope to list; omit for the default scope.
    pub scope: Option<String>,
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Page size, 1-500 (default 100).
    #[serde(default, deserialize_with = "contracts::json_int::optional")]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: opaque, valid only for the same scope and
    /// state filter.
    pub cursor: Option<String>,
}

fn task_key(tenant: &Tenant, task_id: String, scope: Option<String>) -> Result<TaskKey, OrchError> {
    check_task_id(&task_id)?;
    check_scope(scope.as_deref())?;
    Ok(TaskKey::new(
        Arc::clone(&tenant.shared_id),
        scope.unwrap_or_default(),
        task_id,
    ))
}

/// Admit a task into its pool's queue.
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    operation_id = "createTask",
    request_body = TaskRequest,
    responses(
        (status = 202, description = "Admitted and durably stored; `queue_position` is 0-based.", body = AdmissionResponse,
            headers(
                ("X-Queue-Position" = u32, description = "Same as `queue_position`."),
                ("X-Queue-ETA-Ms" = u64, description = "Same as `predicted_start_ms`."),
            ),
            extensions(("x-req-id" = json!(["ORCH-1001", "ORCH-1005", "ORCH-1007", "ORCH-1018", "ORCH-7001"])))),
        (status = 400, description = "`INVALID_PARAMS`: a field is malformed or over its limit; the message names it.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-1002", "ORCH-1003", "ORCH-1004", "ORCH-1009", "ORCH-1015", "ORCH-2012", "ORCH-5012"])))),
        (status = 404, description = "`NOT_FOUND`: the request names a `session_id` whose session expired.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-5011", "ORCH-2021"])))),
        (status = 409, description = "`CONFLICT`: the `task_id` exists in this scope with a different body.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-1006", "ORCH-2022"])))),
        (status = 429, description = "`ADMISSION_REJECT`: the queue is full under its policy (`policy`: `reject` or `shed-low-priority`), or the tenant is over its rate limit (`policy`: `rate-limit`). Under `reject`, a request that names its `task_id` keeps a place in the retry line: resubmitted after `X-Backoff-Ms`, it is admitted before anyone refused after it.", body = ErrorEnvelope,
            headers(
                ("Retry-After" = u64, description = "Seconds: ceil(X-Backoff-Ms / 1000)."),
                ("X-Backoff-Ms" = u64, description = "Milliseconds until the queue places this task needs are forecast to be free (ORCH-2003)."),
            ),
            extensions(("x-req-id" = json!(["ORCH-2010", "ORCH-2003", "ORCH-3004", "ORCH-3006", "ORCH-3010", "ORCH-3012"])))),
        (status = 401, description = "`UNAUTHORIZED`: API keys are configured and the call has none, or an invalid one.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 500, description = "`INTERNAL`: an unexpected failure, e.g. the store refused the write.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2018", "ORCH-2002"])))),
        (status = 503, description = "`POOL_UNREADY` (replicas starting, none Ready) or `POOL_UNAVAILABLE` (draining, shutting down, or every replica down).", body = ErrorEnvelope,
            headers(
                ("Retry-After" = u64, description = "Seconds: ceil(X-Backoff-Ms / 1000)."),
                ("X-Backoff-Ms" = u64, description = "Milliseconds until the answer may change: the next health probe, the drain's deadline, or the end of a shutdown (ORCH-2003)."),
            ),
            extensions(("x-req-id" = json!(["ORCH-2013", "ORCH-2014", "ORCH-2003"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-1001", "ORCH-1002", "ORCH-1005", "ORCH-1006", "ORCH-7001"]))),
)]
pub async fn create_task(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    body: Bytes,
) -> Result<Response, OrchError> {
    let request: TaskRequest = parse_json(&body).inspect_err(|e| app.metrics.rejected(None, e))?;
    let pool = request.pool_id.clone().unwrap_or_else(|| "default".into());
    let admission = (app.orchestrator().submit(&tenant, request).await)
        .inspect_err(|e| app.metrics.rejected(Some(&pool), e))?
        .response;
    let mut response = (StatusCode::ACCEPTED, Json(&admission)).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(
        headers::QUEUE_POSITION,
        HeaderValue::from(admission.queue_position),
    );
    response_headers.insert(
        headers::QUEUE_ETA_MS,
        HeaderValue::from(admission.predicted_start_ms),
    );
    Ok(response)
}

/// Status of one task.
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}",
    tag = "tasks",
    operation_id = "getTask",
    params(("task_id" = String, Path, description = "The task's id."), ScopeQuery),
    responses(
        (status = 200, description = "The task's state, position while queued, timestamps and outcome.", body = TaskStatus,
            extensions(("x-req-id" = json!(["ORCH-1010", "ORCH-2005"])))),
        (status = 400, description = "`INVALID_PARAMS`: malformed id or scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 404, description = "`NOT_FOUND`: no such task in this scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-1012", "ORCH-2021", "ORCH-6011"])))),
        (status = 401, description = "`UNAUTHORIZED`: API keys are configured and the call has none, or an invalid one.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 500, description = "`INTERNAL`.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2018"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-1010", "ORCH-1012", "ORCH-6011"]))),
)]
pub async fn get_task(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(task_id): Path<String>,
    Query(query): Query<ScopeQuery>,
) -> Result<Json<TaskStatus>, OrchError> {
    let key = task_key(&tenant, task_id, query.scope)?;
    Ok(Json(app.status(&key).await?))
}

/// Tasks of a scope, oldest first, cursor-paged.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    operation_id = "listTasks",
    params(ListQuery),
    responses(
        (status = 200, description = "One page; `next_cursor` is absent on the last one.", body = TaskList,
            extensions(("x-req-id" = json!(["ORCH-1011"])))),
        (status = 400, description = "`INVALID_PARAMS`: bad state, limit, cursor or scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 401, description = "`UNAUTHORIZED`: API keys are configured and the call has none, or an invalid one.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 500, description = "`INTERNAL`.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2018"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-1011", "ORCH-1013", "ORCH-6010"]))),
)]
pub async fn list_tasks(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<TaskList>, OrchError> {
    check_scope(query.scope.as_deref())?;
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT as u32);
    if limit == 0 || u64::from(limit) > LIST_LIMIT_MAX {
        return Err(OrchError::invalid(
            "limit",
            format!("must be between 1 and {LIST_LIMIT_MAX}, got {limit}"),
        ));
    }
    let scope = query.scope.unwrap_or_default();
    let listing = crate::cursor::Listing {
        tenant: &tenant.id,
        scope: &scope,
        state: query.state,
    };
    let after_task = query
        .cursor
        .map(|cursor| crate::cursor::decode(&listing, &cursor))
        .transpose()?;
    let filter = ListFilter {
        tenant: tenant.id.clone(),
        scope,
        state: query.state,
        after_seq: None,
        limit,
    };
    Ok(Json(app.list(filter, after_task).await?))
}

/// The task's events as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}/stream",
    tag = "tasks",
    operation_id = "streamTask",
    params(
        ("task_id" = String, Path, description = "The task's id."),
        ScopeQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume right after the token with this index."),
    ),
    responses(
        (status = 200, description = "`text/event-stream` of `started` (one per placement: a retry before the first token adds a second, ORCH-4014), `token` (`id:` = index), `metrics`, then `end` or `error`; each `data:` is the JSON of `StreamEvent.data` (see `contracts/schemas/sse-event.schema.json`).",
            content_type = "text/event-stream", body = String,
            extensions(("x-req-id" = json!(["ORCH-1101", "ORCH-1102", "ORCH-1103", "ORCH-1104", "ORCH-1107", "ORCH-2005", "ORCH-2011", "ORCH-2015", "ORCH-2016", "ORCH-2017", "ORCH-2026"])))),
        (status = 400, description = "`INVALID_PARAMS`: malformed id, scope or `Last-Event-ID`.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 404, description = "`NOT_FOUND`: no such task in this scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-1012", "ORCH-2021", "ORCH-6011"])))),
        (status = 401, description = "`UNAUTHORIZED`: API keys are configured and the call has none, or an invalid one.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 500, description = "`INTERNAL`.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2018"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-1101", "ORCH-1102", "ORCH-1103", "ORCH-1104", "ORCH-1105"]))),
)]
pub async fn stream_task(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(task_id): Path<String>,
    Query(query): Query<ScopeQuery>,
    request_headers: HeaderMap,
) -> Result<impl IntoResponse, OrchError> {
    let key = task_key(&tenant, task_id, query.scope)?;
    let resume = match request_headers.get(headers::LAST_EVENT_ID) {
        None => Resume::FromStart,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map(Resume::AfterToken)
            .ok_or_else(|| {
                OrchError::invalid("Last-Event-ID", "must be the integer id of a token event")
            })?,
    };
    let events = app.events(&key, resume).await?;
    let sse_events = events.map(|event| {
        let mut sse = Event::default().event(event.name());
        if let Some(id) = event.sse_id() {
            sse = sse.id(id.to_string());
        }
        Ok::<_, Infallible>(sse.data(event.data_json()))
    });
    let keepalive = Duration::from_millis(app.keepalive().max(100));
    Ok(Sse::new(sse_events).keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive")))
}

/// Cancel a task; idempotent.
#[utoipa::path(
    post,
    path = "/v1/tasks/{task_id}/cancel",
    tag = "tasks",
    operation_id = "cancelTask",
    params(("task_id" = String, Path, description = "The task's id."), ScopeQuery),
    responses(
        (status = 204, description = "Canceled (or already terminal). No token follows this answer on any stream of the task.",
            extensions(("x-req-id" = json!(["ORCH-1020", "ORCH-1021", "ORCH-1022", "ORCH-1023"])))),
        (status = 400, description = "`INVALID_PARAMS`: malformed id or scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 404, description = "`NOT_FOUND`: no such task in this scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-1012", "ORCH-2021", "ORCH-6011"])))),
        (status = 401, description = "`UNAUTHORIZED`: API keys are configured and the call has none, or an invalid one.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 500, description = "`INTERNAL`: the cancel could not be persisted.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2018"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-1020", "ORCH-1021", "ORCH-1022", "ORCH-1023"]))),
)]
pub async fn cancel_task(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(task_id): Path<String>,
    Query(query): Query<ScopeQuery>,
) -> Result<StatusCode, OrchError> {
    let key = task_key(&tenant, task_id, query.scope)?;
    app.cancel(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}
