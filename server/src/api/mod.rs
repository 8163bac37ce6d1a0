//! HTTP surface. Routes and their OpenAPI documentation come from the same
//! utoipa-axum routers, so the served API and `contracts/openapi/*.yaml`
//! cannot diverge (ORCH-9003).

mod auth;
mod control;
mod error;
mod extract;
mod sessions;
mod tasks;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::{StatusCode, header};
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
    pub max_body_bytes: usize,
}

impl std::ops::Deref for AppState {
    type Target = Orchestrator;
    fn deref(&self) -> &Orchestrator {
        &self.0.orchestrator
    }
}

impl AppState {
    pub fn new(orchestrator: Arc<Orchestrator>, keepalive_ms: u64, max_body_bytes: u64) -> Self {
        Self(Arc::new(Served {
            orchestrator,
            keepalive_ms,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        }))
    }

    pub(crate) fn keepalive(&self) -> u64 {
        self.0.keepalive_ms
    }

    pub(crate) fn orchestrator(&self) -> Arc<Orchestrator> {
        Arc::clone(&self.0.orchestrator)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OrchQueue data plane",
        version = "see contracts::versions",
        description = "Admit generation tasks, read their status, stream their tokens, cancel them. Normative text: specs/orchestrator-spec.md."
    ),
    tags(
        (name = "tasks", description = "Task admission, status, streaming and cancel."),
        (name = "sessions", description = "Short-lived sessions with replica affinity."),
        (name = "scopes", description = "Namespaces within a tenant, purged as a whole."),
    ),
    components(schemas(StreamEvent))
)]
struct DataApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OrchQueue control plane",
        version = "see contracts::versions",
        description = "Pool and replica administration; every operation needs the admin role. Normative text: specs/orchestrator-spec.md."
    ),
    tags((name = "pools", description = "Pools, replicas, drain, reload, capabilities."))
)]
struct ControlApi;

fn data_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(DataApi::openapi())
        .routes(routes!(tasks::create_task, tasks::list_tasks))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::stream_task))
        .routes(routes!(tasks::cancel_task))
        .routes(routes!(sessions::get_session, sessions::delete_session))
        .routes(routes!(sessions::purge_scope))
}

fn control_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ControlApi::openapi())
        .routes(routes!(control::list_pools))
        .routes(routes!(control::pool_health))
        .routes(routes!(control::drain_pool))
        .routes(routes!(control::reload_pool))
        .routes(routes!(control::replica_sets))
        .routes(routes!(control::capabilities))
}

/// API keys are optional per deployment: a bearer key, or none when the
/// server has no keys configured (ORCH-6001).
fn with_bearer_auth(mut doc: OpenApiDoc) -> OpenApiDoc {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    doc.security = Some(vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::default(),
    ]);
    doc
}

fn split(routes: OpenApiRouter<AppState>) -> (Router<AppState>, OpenApiDoc) {
    let (router, doc) = routes.split_for_parts();
    (router, with_bearer_auth(doc))
}

/// The two contract documents, exactly as the server serves them.
pub struct ApiDocuments {
    pub data: serde_json::Value,
    pub control: serde_json::Value,
}

/// The document of the routes with the input bounds of `contracts::limits` written in,
/// so what the document allows is what validation accepts (ORCH-9013).
fn bounded(doc: &OpenApiDoc, version: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(doc).expect("OpenAPI documents serialize");
    value["info"]["version"] = version.into();
    contracts::limits::apply_to_openapi(&mut value);
    describe_sse_frames(&mut value);
    value
}

/// Every `text/event-stream` response is a sequence of SSE frames: one frame per
/// `StreamEvent` variant, its `data:` line the JSON of that variant's payload
/// (`contentSchema`), and `id:` set only by `token` frames (ORCH-1101, ORCH-1102). Built
/// from the `StreamEvent` component, so the frames and the events cannot differ.
fn describe_sse_frames(doc: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let Some(variants) = doc
        .pointer("/components/schemas/StreamEvent/oneOf")
        .and_then(Value::as_array)
    else {
        return;
    };
    let frames: Vec<Value> = variants
        .iter()
        .filter_map(|v| {
            let name = v.pointer("/properties/event/enum/0")?.as_str()?;
            let payload = v.pointer("/properties/data")?.clone();
            let mut properties = json!({
                "event": {"type": "string", "enum": [name]},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": payload
                }
            });
            // SSE readers keep the last `id:` until another one comes, so frames
            // after a token carry its id too; only a token frame sets it.
            properties["id"] = json!({"type": "string", "pattern": "^[0-9]+$"});
            let mut required = vec!["event", "data"];
            if name == "token" {
                required.push("id");
            }
            Some(json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false
            }))
        })
        .collect();
    let frame = json!({
        "description": "One SSE frame: `event:` names the StreamEvent variant, `data:` is its payload as JSON.",
        "oneOf": frames
    });
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for response in responses.values_mut() {
            if let Some(media) = response.pointer_mut("/content/text~1event-stream") {
                media["schema"] = frame.clone();
            }
        }
    }
}

pub fn openapi_documents() -> ApiDocuments {
    let (_, data) = split(data_routes());
    let (_, control) = split(control_routes());
    let docs = ApiDocuments {
        data: bounded(&data, contracts::versions::DATA_API),
        control: bounded(&control, contracts::versions::CONTROL_API),
    };
    let unmatched = contracts::limits::unmatched_bounds(&[&docs.data, &docs.control]);
    assert!(
        unmatched.is_empty(),
        "contracts::limits names fields and parameters no document has: {unmatched:?}"
    );
    docs
}

pub fn router(state: AppState) -> Router {
    let (data, _) = split(data_routes());
    let (control, _) = split(control_routes());
    let ApiDocuments {
        data: data_doc,
        control: control_doc,
    } = openapi_documents();
    let body_limit = state.0.max_body_bytes;
    let readiness = state.clone();
    let scrape = state.clone();
    Router::new()
        .merge(data)
        .merge(control)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                let ready = readiness.is_accepting()
                    && readiness
                        .pools
                        .values()
                        .all(|p| p.capacity().ready_replicas > 0);
                if ready {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: shutting down, or a pool has no Ready replica",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                let text = scrape.metrics.encode(&scrape);
                ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
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
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(error::envelope_for_bare_errors))
        .layer(CatchPanicLayer::custom(error::panic_response))
}
