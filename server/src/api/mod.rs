//! HTTP surface. Routes and their OpenAPI documentation come from the same
//! utoipa-axum routers, so the served API and `contracts/openapi/*.yaml`
//! cannot diverge (ORCH-9003).

mod error;
mod extract;
mod tasks;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use contracts::StreamEvent;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::runtime::Orchestrator;

/// Handler state: the orchestrator plus HTTP-only settings.
#[derive(Clone)]
pub struct AppState(Arc<Served>);

pub struct Served {
    pub orchestrator: Arc<Orchestrator>,
    pub keepalive_ms: u64,
}

impl std::ops::Deref for AppState {
    type Target = Orchestrator;
    fn deref(&self) -> &Orchestrator {
        &self.0.orchestrator
    }
}

impl AppState {
    pub fn new(orchestrator: Arc<Orchestrator>, keepalive_ms: u64) -> Self {
        Self(Arc::new(Served {
            orchestrator,
            keepalive_ms,
        }))
    }

    pub(crate) fn keepalive(&self) -> u64 {
        self.0.keepalive_ms
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OrchQueue data plane",
        version = "1.0.0",
        description = "Admit generation tasks, read their status, stream their tokens, cancel them. Normative text: specs/orchestrator-spec.md."
    ),
    tags((name = "tasks", description = "Task admission, status, streaming and cancel.")),
    components(schemas(StreamEvent))
)]
struct DataApi;

#[derive(OpenApi)]
#[openapi(info(
    title = "OrchQueue control plane",
    version = "1.0.0",
    description = "Pool and replica administration. Normative text: specs/orchestrator-spec.md."
))]
struct ControlApi;

fn data_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(DataApi::openapi())
        .routes(routes!(tasks::create_task, tasks::list_tasks))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::stream_task))
        .routes(routes!(tasks::cancel_task))
}

fn control_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ControlApi::openapi())
}

/// The two contract documents, exactly as the server serves them.
pub struct ApiDocuments {
    pub data: OpenApiDoc,
    pub control: OpenApiDoc,
}

pub fn openapi_documents() -> ApiDocuments {
    let (_, data) = data_routes().split_for_parts();
    let (_, control) = control_routes().split_for_parts();
    ApiDocuments { data, control }
}

pub fn router(state: AppState) -> Router {
    let (data, data_doc) = data_routes().split_for_parts();
    let (control, control_doc) = control_routes().split_for_parts();
    let readiness = state.clone();
    Router::new()
        .merge(data)
        .merge(control)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                let ready = readiness
                    .pools
                    .values()
                    .all(|p| p.capacity().ready_replicas > 0);
                if ready {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: a pool has no Ready replica",
                    )
                }
            }),
        )
        .route(
            "/openapi/data.json",
            get(move || async move { Json(data_doc) }),
        )
        .route(
            "/openapi/control.json",
            get(move || async move { Json(control_doc) }),
        )
        .with_state(state)
        .layer(CatchPanicLayer::custom(error::panic_response))
}
