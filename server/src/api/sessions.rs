//! Sessions (ORCH-5013, ORCH-5014) and scope purge (ORCH-6013).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use contracts::{ErrorEnvelope, ScopePurge, SessionInfo};

use super::AppState;
use super::auth::Caller;
use super::extract::Query;
use super::tasks::ScopeQuery;
use crate::admission::{check_scope, check_session_id};
use crate::error::OrchError;
use crate::runtime::{SessionKey, Tenant};

fn session_key(
    tenant: &Tenant,
    session_id: String,
    scope: Option<String>,
) -> Result<SessionKey, OrchError> {
    check_session_id(&session_id)?;
    check_scope(scope.as_deref())?;
    Ok(SessionKey {
        tenant: tenant.id.clone(),
        scope: scope.unwrap_or_default(),
        session_id,
    })
}

/// A session's remaining TTL, turns, KV estimate and replica.
#[utoipa::path(
    get,
    path = "/v1/sessions/{session_id}",
    tag = "sessions",
    operation_id = "getSession",
    params(("session_id" = String, Path, description = "The session's id."), ScopeQuery),
    responses(
        (status = 200, description = "The session.", body = SessionInfo,
            extensions(("x-req-id" = json!(["ORCH-5013"])))),
        (status = 400, description = "`INVALID_PARAMS`: malformed id or scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 404, description = "`NOT_FOUND`: no such session in this scope, or it expired.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-5011", "ORCH-2021", "ORCH-6011"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-5013", "ORCH-5011"]))),
)]
pub async fn get_session(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(session_id): Path<String>,
    Query(query): Query<ScopeQuery>,
) -> Result<Json<SessionInfo>, OrchError> {
    let key = session_key(&tenant, session_id, query.scope)?;
    Ok(Json(app.session_info(&key)?))
}

/// End a session and evict its KV.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{session_id}",
    tag = "sessions",
    operation_id = "deleteSession",
    params(("session_id" = String, Path, description = "The session's id."), ScopeQuery),
    responses(
        (status = 204, description = "Ended.",
            extensions(("x-req-id" = json!(["ORCH-5014"])))),
        (status = 400, description = "`INVALID_PARAMS`: malformed id or scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 404, description = "`NOT_FOUND`: no such session in this scope, or it expired.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2021", "ORCH-6011"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-5014"]))),
)]
pub async fn delete_session(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(session_id): Path<String>,
    Query(query): Query<ScopeQuery>,
) -> Result<StatusCode, OrchError> {
    let key = session_key(&tenant, session_id, query.scope)?;
    app.end_session(&key)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel and purge every task and session of a scope, within the caller's tenant.
#[utoipa::path(
    delete,
    path = "/v1/scopes/{scope}",
    tag = "scopes",
    operation_id = "purgeScope",
    params(("scope" = String, Path, description = "The scope to purge.")),
    responses(
        (status = 200, description = "What was canceled and purged.", body = ScopePurge,
            extensions(("x-req-id" = json!(["ORCH-6013"])))),
        (status = 400, description = "`INVALID_PARAMS`: malformed scope.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 500, description = "`INTERNAL`: the store refused the purge.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2018"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-6013", "ORCH-6010"]))),
)]
pub async fn purge_scope(
    State(app): State<AppState>,
    Caller(tenant): Caller,
    Path(scope): Path<String>,
) -> Result<Json<ScopePurge>, OrchError> {
    check_scope(Some(&scope))?;
    Ok(Json(app.purge_scope(&tenant.id, &scope).await?))
}
