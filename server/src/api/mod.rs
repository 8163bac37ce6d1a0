//! HTTP surface. Routes and their OpenAPI documentation come from the same
//! utoipa-axum routers, so the served API and `contracts/openapi/*.yaml`
//! cannot diverge (ORCH-9003).

mod auth;
mod control;
mod error;
mod extract;
pub mod front;
mod openai;
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
    /// Unix seconds the server started: the `created` of `GET /v1/models`.
    pub started_at_s: u64,
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
            started_at_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }))
    }

    pub(crate) fn started_at_s(&self) -> u64 {
        self.0.started_at_s
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
        description = "Pool and replica administration, and each tenant's usage; every operation needs the admin role but usage, which any tenant reads of itself. Normative text: specs/orchestrator-spec.md."
    ),
    tags(
        (name = "pools", description = "Pools, replicas, drain, reload, capabilities."),
        (name = "tenants", description = "Each tenant's usage and fair share."),
    )
)]
struct ControlApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OrchQueue OpenAI-compatible surface",
        version = "see contracts::versions",
        description = "OpenAI's chat completions, completions and models, each completion a task of the data plane. Normative text: specs/orchestrator-spec.md section 8."
    ),
    tags((name = "openai", description = "OpenAI-compatible endpoints.")),
    components(schemas(
        contracts::openai::ChatCompletionChunk,
        contracts::openai::OpenAiErrorBody,
        contracts::Priority,
        contracts::Determinism
    ))
)]
struct OpenAiApi;

/// The paths of the OpenAI surface, whose errors take OpenAI's shape (ORCH-8008).
pub(crate) fn is_openai_path(path: &str) -> bool {
    matches!(
        path,
        "/v1/chat/completions" | "/v1/completions" | "/v1/models"
    )
}

fn openai_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(OpenAiApi::openapi())
        .routes(routes!(openai::chat_completions))
        .routes(routes!(openai::completions))
        .routes(routes!(openai::list_models))
}

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
        .routes(routes!(control::usage))
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

/// The contract documents, exactly as the server serves them, by name:
/// `data`, `control`, `openai` (`contracts/openapi/<name>.yaml`).
pub struct ApiDocuments(pub Vec<(&'static str, serde_json::Value)>);

impl ApiDocuments {
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, doc)| doc)
    }
}

/// The document of the routes with the input bounds of `contracts::limits` written in,
/// so what the document allows is what validation accepts (ORCH-9013).
fn bounded(name: &str, doc: &OpenApiDoc, version: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(doc).expect("OpenAPI documents serialize");
    value["info"]["version"] = version.into();
    if name == "openai" {
        openai_requests(&mut value);
    }
    contracts::limits::apply_to_openapi(&mut value);
    describe_sse_frames(&mut value);
    if name == "openai" {
        openai_answers(&mut value);
    }
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

/// The routers of the documents, by name.
fn document_routes() -> [(&'static str, OpenApiRouter<AppState>, &'static str); 3] {
    [
        ("data", data_routes(), contracts::versions::DATA_API),
        (
            "control",
            control_routes(),
            contracts::versions::CONTROL_API,
        ),
        ("openai", openai_routes(), contracts::versions::OPENAI_API),
    ]
}

pub fn openapi_documents() -> ApiDocuments {
    let docs = ApiDocuments(
        document_routes()
            .into_iter()
            .map(|(name, routes, version)| {
                let (_, doc) = split(routes);
                (name, bounded(name, &doc, version))
            })
            .collect(),
    );
    let all: Vec<&serde_json::Value> = docs.0.iter().map(|(_, doc)| doc).collect();
    let unmatched = contracts::limits::unmatched_bounds(&all);
    assert!(
        unmatched.is_empty(),
        "contracts::limits names fields and parameters no document has: {unmatched:?}"
    );
    docs
}

/// The OpenAI requests as one object each (utoipa renders the shared `Sampling`
/// fields as an `allOf`), with the fields they accept only at their default and
/// those they ignore (ORCH-8004), and no other.
fn openai_requests(doc: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let schemas = &mut doc["components"]["schemas"];
    let shared = schemas
        .as_object_mut()
        .and_then(|s| s.remove("Sampling"))
        .unwrap_or_default();
    for schema in ["ChatCompletionRequest", "CompletionRequest"] {
        let request = &mut schemas[schema];
        let mut properties = serde_json::Map::new();
        let mut required: Vec<Value> = Vec::new();
        let parts = request["allOf"].as_array().cloned().unwrap_or_default();
        for part in parts
            .iter()
            .map(|p| if p.get("$ref").is_some() { &shared } else { p })
        {
            properties.extend(part["properties"].as_object().cloned().unwrap_or_default());
            required.extend(part["required"].as_array().cloned().unwrap_or_default());
        }
        for (name, only) in contracts::openai::UNSUPPORTED {
            let mut accepted = only.schema();
            accepted["description"] = json!(format!("This field {}.", only.describe()));
            properties.insert((*name).into(), accepted);
        }
        for name in contracts::openai::IGNORED {
            properties.insert(
                (*name).into(),
                json!({"description": "Accepted and ignored: it changes nothing for the answer."}),
            );
        }
        *request = json!({
            "description": request["description"],
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        });
    }
}

/// The answers of the OpenAI document: errors in OpenAI's shape (the 413 that
/// `apply_to_openapi` adds too), and the frames of its streams (ORCH-8006):
/// `data:` lines without an event name, each a chunk or an error object, then
/// `data: [DONE]`.
fn openai_answers(doc: &mut serde_json::Value) {
    use serde_json::json;
    let Some(paths) = doc
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        for operation in item
            .as_object_mut()
            .into_iter()
            .flat_map(|i| i.values_mut())
        {
            if let Some(too_large) =
                operation.pointer_mut("/responses/413/content/application~1json/schema")
            {
                *too_large = json!({"$ref": "#/components/schemas/OpenAiErrorBody"});
            }
            let chunk = match path.as_str() {
                "/v1/chat/completions" => "ChatCompletionChunk",
                "/v1/completions" => "TextCompletion",
                _ => continue,
            };
            if let Some(media) = operation.pointer_mut("/responses/200/content/text~1event-stream")
            {
                media["schema"] = json!({
                    "description": "SSE frames without an event name: chunks (or one error object), then `[DONE]`.",
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": {
                                "data": {
                                    "type": "string",
                                    "contentMediaType": "application/json",
                                    "contentSchema": {"oneOf": [
                                        {"$ref": format!("#/components/schemas/{chunk}")},
                                        {"$ref": "#/components/schemas/OpenAiErrorBody"}
                                    ]}
                                }
                            },
                            "required": ["data"],
                            "additionalProperties": false
                        },
                        {
                            "type": "object",
                            "properties": {"data": {"const": "[DONE]"}},
                            "required": ["data"],
                            "additionalProperties": false
                        }
                    ]
                });
            }
        }
    }
}

pub fn router(state: AppState) -> Router {
    let documents = openapi_documents();
    let mut router = Router::new();
    for (name, routes, _) in document_routes() {
        let (routes, _) = split(routes);
        let doc = documents.get(name).cloned().unwrap_or_default();
        router = router.merge(routes).route(
            &format!("/openapi/{name}.json"),
            get(move || async move { Json(doc) }),
        );
    }
    let body_limit = state.0.max_body_bytes;
    let readiness = state.clone();
    let scrape = state.clone();
    router
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
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(error::envelope_for_bare_errors))
        .layer(CatchPanicLayer::custom(error::panic_response))
}
