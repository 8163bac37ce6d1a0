//! Control-plane operations (ORCH-6020..ORCH-6027); every one needs the
//! admin role (ORCH-6003) but usage, which any tenant may read of itself.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use contracts::{
    Capabilities, DrainRequest, ErrorEnvelope, PoolActionResponse, PoolHealth, PoolList,
    ReloadRequest, ReplicaSetList, UsageReport,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::auth::{Admin, Caller};
use super::extract::{Query, parse_json};
use crate::error::OrchError;

/// Every pool with its replica and queue summary.
#[utoipa::path(
    get,
    path = "/v1/pools",
    tag = "pools",
    operation_id = "listPools",
    responses(
        (status = 200, description = "The configured pools.", body = PoolList,
            extensions(("x-req-id" = json!(["ORCH-6020"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 403, description = "`FORBIDDEN`: the tenant lacks the admin role.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6003", "ORCH-2020"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-6020", "ORCH-6003"]))),
)]
pub async fn list_pools(State(app): State<AppState>, _admin: Admin) -> Json<PoolList> {
    Json(app.pool_list())
}

/// Liveness, readiness, drain state, replicas and queue depth of a pool.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool_id}/health",
    tag = "pools",
    operation_id = "getPoolHealth",
    params(("pool_id" = String, Path, description = "The pool's id.")),
    responses(
        (status = 200, description = "The pool's health.", body = PoolHealth,
            extensions(("x-req-id" = json!(["ORCH-6021"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 403, description = "`FORBIDDEN`: the tenant lacks the admin role.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6003", "ORCH-2020"])))),
        (status = 404, description = "`NOT_FOUND`: no such pool.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2021"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-6021", "ORCH-6003"]))),
)]
pub async fn pool_health(
    State(app): State<AppState>,
    _admin: Admin,
    Path(pool_id): Path<String>,
) -> Result<Json<PoolHealth>, OrchError> {
    Ok(Json(app.pool_health(&pool_id)?))
}

/// Close admission to a pool; what is queued or running may finish until the deadline.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool_id}/drain",
    tag = "pools",
    operation_id = "drainPool",
    params(("pool_id" = String, Path, description = "The pool's id.")),
    request_body = DrainRequest,
    responses(
        (status = 202, description = "Draining: admission answers `POOL_UNAVAILABLE`; past `deadline_ms` the rest ends with `POOL_UNAVAILABLE`.", body = PoolActionResponse,
            extensions(("x-req-id" = json!(["ORCH-6022"])))),
        (status = 400, description = "`INVALID_PARAMS`: malformed body, or `deadline_ms` over 24 h.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 403, description = "`FORBIDDEN`: the tenant lacks the admin role.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6003", "ORCH-2020"])))),
        (status = 404, description = "`NOT_FOUND`: no such pool.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2021"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-6022", "ORCH-2014", "ORCH-6003"]))),
)]
pub async fn drain_pool(
    State(app): State<AppState>,
    _admin: Admin,
    Path(pool_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<PoolActionResponse>), OrchError> {
    let request: DrainRequest = parse_json(&body)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(app.drain_pool(&pool_id, request.deadline_ms)?),
    ))
}

/// Replace a pool's replicas with a new set on `model_ref`, atomically.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool_id}/reload",
    tag = "pools",
    operation_id = "reloadPool",
    params(("pool_id" = String, Path, description = "The pool's id.")),
    request_body = ReloadRequest,
    responses(
        (status = 200, description = "The new replica set is Ready and serving; the old one finishes what it runs.", body = PoolActionResponse,
            extensions(("x-req-id" = json!(["ORCH-6023"])))),
        (status = 400, description = "`INVALID_PARAMS`: malformed body.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 403, description = "`FORBIDDEN`: the tenant lacks the admin role.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6003", "ORCH-2020"])))),
        (status = 404, description = "`NOT_FOUND`: no such pool.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2021"])))),
        (status = 503, description = "`POOL_UNREADY`: the new replicas did not become Ready; the message says why and the old replicas keep serving.", body = ErrorEnvelope,
            headers(
                ("Retry-After" = u64, description = "Seconds, from the predicted wait."),
                ("X-Backoff-Ms" = u64, description = "Milliseconds, from the predicted wait."),
            ),
            extensions(("x-req-id" = json!(["ORCH-6023", "ORCH-2013", "ORCH-2003"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-6023", "ORCH-6003"]))),
)]
pub async fn reload_pool(
    State(app): State<AppState>,
    _admin: Admin,
    Path(pool_id): Path<String>,
    body: Bytes,
) -> Result<Json<PoolActionResponse>, OrchError> {
    let request: ReloadRequest = parse_json(&body)?;
    let orchestrator = app.orchestrator();
    Ok(Json(
        orchestrator
            .reload_pool(&pool_id, &request.model_ref, request.ready_timeout_ms)
            .await?,
    ))
}

/// Replica sets grouped by engine, model and versions, with load and SLO snapshot.
#[utoipa::path(
    get,
    path = "/v1/replicasets",
    tag = "pools",
    operation_id = "listReplicaSets",
    responses(
        (status = 200, description = "One entry per replica set.", body = ReplicaSetList,
            extensions(("x-req-id" = json!(["ORCH-6024"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 403, description = "`FORBIDDEN`: the tenant lacks the admin role.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6003", "ORCH-2020"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-6024", "ORCH-6003"]))),
)]
pub async fn replica_sets(State(app): State<AppState>, _admin: Admin) -> Json<ReplicaSetList> {
    Json(app.replica_sets())
}

/// API version, engines, context limits and features.
#[utoipa::path(
    get,
    path = "/v1/capabilities",
    tag = "pools",
    operation_id = "getCapabilities",
    responses(
        (status = 200, description = "What this server offers.", body = Capabilities,
            extensions(("x-req-id" = json!(["ORCH-6025"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 403, description = "`FORBIDDEN`: the tenant lacks the admin role.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6003", "ORCH-2020"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-6025", "ORCH-6003"]))),
)]
pub async fn capabilities(State(app): State<AppState>, _admin: Admin) -> Json<Capabilities> {
    Json(app.capabilities())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// One tenant's usage; omit for the caller's own (an admin's: every
    /// tenant's). Only an admin may name another tenant.
    #[param(min_length = 1)]
    pub tenant: Option<String>,
}

/// Each tenant's running and queued tasks, served tokens and fair share per pool.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "tenants",
    operation_id = "getUsage",
    params(UsageQuery),
    responses(
        (status = 200, description = "The caller's usage, or as an admin every tenant's (or the one named).", body = UsageReport,
            extensions(("x-req-id" = json!(["ORCH-6027"])))),
        (status = 400, description = "`INVALID_PARAMS`: an unknown query parameter, or an empty `tenant`.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-2012"])))),
        (status = 401, description = "`UNAUTHORIZED`: missing or invalid API key.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6002", "ORCH-2019"])))),
        (status = 403, description = "`FORBIDDEN`: a tenant without the admin role named another tenant.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6027", "ORCH-2020"])))),
        (status = 404, description = "`NOT_FOUND`: no such tenant.", body = ErrorEnvelope,
            extensions(("x-req-id" = json!(["ORCH-6027", "ORCH-2021"])))),
    ),
    extensions(("x-req-id" = json!(["ORCH-6027", "ORCH-6026"]))),
)]
pub async fn usage(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageReport>, OrchError> {
    if query.tenant.as_deref() == Some("") {
        return Err(OrchError::invalid(
            "tenant",
            "must name a tenant; omit it for the caller's own usage",
        ));
    }
    Ok(Json(app.usage(&caller, query.tenant.as_deref())?))
}
