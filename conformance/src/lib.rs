//! Every real answer of the server checked against the committed OpenAPI
//! documents (ORCH-9020): the path, method and status are declared for the
//! operation, declared headers are present and valid, the body has a declared
//! media type and validates against its schema, and each SSE frame is one of
//! the declared frames with a payload that validates.
//!
//! [`Documents::check`] judges one [`Exchange`]; [`Proxy`] sits in front of
//! a test server on loopback and judges all of its traffic, so the
//! end-to-end suites validate every response they provoke, not only the pact
//! examples. An error code must come on a channel the spec's table marks for
//! it (ORCH-2026).

pub mod channels;
pub mod deploy;
mod proxy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

pub use channels::{Channel, CodeChannels};
pub use proxy::Proxy;

/// Paths served beside the API documents, with the media type each answers
/// in: probes, the Prometheus scrape and the documents themselves.
const OPERATIONAL_PATHS: &[(&str, &str)] = &[
    ("/healthz", "text/plain"),
    ("/readyz", "text/plain"),
    ("/metrics", "application/openmetrics-text"),
    ("/openapi/data.json", "application/json"),
    ("/openapi/control.json", "application/json"),
    ("/openapi/openai.json", "application/json"),
];

/// One HTTP exchange as seen on the wire.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub method: String,
    /// Path with its query string, as requested.
    pub target: String,
    pub request_content_type: Option<String>,
    pub request_body: Vec<u8>,
    pub status: u16,
    /// Response headers, names in lowercase.
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    /// The client went away before the body ended: only complete SSE
    /// frames of it are judged.
    pub body_truncated: bool,
}

impl Exchange {
    fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn response_media_type(&self) -> Option<String> {
        self.response_header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }
}

/// The contract documents, `contracts/openapi/<name>.yaml`.
pub const DOCUMENT_NAMES: [&str; 3] = ["data", "control", "openai"];

/// The contract documents, with compiled schemas cached by their place in the
/// document.
pub struct Documents {
    docs: Vec<(String, Value)>,
    channels: CodeChannels,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Documents {
    /// The committed documents of this repository.
    pub fn committed() -> Result<Self> {
        Self::load(&repo_root())
    }

    pub fn load(root: &Path) -> Result<Self> {
        let mut docs = Vec::new();
        for name in DOCUMENT_NAMES {
            let path = root.join(format!("contracts/openapi/{name}.yaml"));
            let text =
                std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            let doc: Value =
                serde_yaml::from_str(&text).with_context(|| path.display().to_string())?;
            if !doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
            {
                bail!("{}: not an OpenAPI 3.1 document", path.display());
            }
            docs.push((name.to_owned(), doc));
        }
        Ok(Self {
            docs,
            channels: CodeChannels::load(root)?,
            validators: Mutex::new(HashMap::new()),
        })
    }

    /// Every way the exchange departs from the documents; empty when it
    /// conforms.
    pub fn check(&self, exchange: &Exchange) -> Vec<String> {
        let what = format!(
            "{} {} -> {}",
            exchange.method, exchange.target, exchange.status
        );
        match self.check_inner(exchange) {
            Ok(problems) => problems
                .into_iter()
                .map(|p| format!("{what}: {p}"))
                .collect(),
            Err(e) => vec![format!("{what}: {e}")],
        }
    }

    fn check_inner(&self, exchange: &Exchange) -> Result<Vec<String>> {
        let path = exchange.path();
        if let Some((_, media_type)) = OPERATIONAL_PATHS.iter().find(|(p, _)| *p == path) {
            return Ok(self.check_operational(exchange, media_type));
        }
        let has_empty_segment = path.split('/').skip(1).any(str::is_empty);
        if has_empty_segment && exchange.status == 404 {
            // An empty id may not reach any route at all (`/v1/scopes/`).
            return Ok(self.check_envelope(exchange));
        }
        let Some((doc_index, template, item)) = self.path_item(path) else {
            // No document declares the path: the server's answer is the
            // 404 envelope (ORCH-2024).
            return self.check_undeclared(exchange, 404, "no document declares this path");
        };
        let method = exchange.method.to_ascii_lowercase();
        let Some(operation) = item.get(&method) else {
            return self.check_undeclared(
                exchange,
                405,
                &format!("{template} declares no {}", exchange.method),
            );
        };
        let pointer = format!(
            "/paths/{}/{method}",
            template.replace('~', "~0").replace('/', "~1")
        );
        let mut problems = Vec::new();
        let Some(declared) = operation["responses"].get(exchange.status.to_string()) else {
            bail!(
                "status {} is not declared for this operation",
                exchange.status
            );
        };
        let responses = format!("{pointer}/responses/{}", exchange.status);

        if exchange.status < 300 && !exchange.request_body.is_empty() {
            problems.extend(self.check_request_body(doc_index, operation, &pointer, exchange));
        }
        for (name, header) in declared["headers"].as_object().into_iter().flatten() {
            let schema_pointer = format!("{responses}/headers/{name}/schema");
            match exchange.response_header(name) {
                None => problems.push(format!("declared header {name} is missing")),
                Some(value) => {
                    let instance = header_instance(&header["schema"], value);
                    problems.extend(self.validate(
                        doc_index,
                        &schema_pointer,
                        &instance,
                        &format!("header {name}"),
                    ));
                }
            }
        }
        problems.extend(self.check_response_body(doc_index, declared, &responses, exchange));
        problems.extend(self.check_channel(exchange));
        Ok(problems)
    }

    /// The code of an error answer, or of a task status's `error`, must be one
    /// the table marks for that channel (ORCH-2026).
    fn check_channel(&self, exchange: &Exchange) -> Vec<String> {
        if exchange.body_truncated
            || exchange.response_media_type().as_deref() != Some("application/json")
        {
            return vec![];
        }
        let Ok(body) = serde_json::from_slice::<Value>(&exchange.response_body) else {
            return vec![];
        };
        if exchange.status >= 400 {
            body["code"]
                .as_str()
                .map_or_else(Vec::new, |code| self.allowed(code, Channel::Http))
        } else {
            body["error"]["code"]
                .as_str()
                .map_or_else(Vec::new, |code| self.allowed(code, Channel::Sse))
        }
    }

    fn allowed(&self, code: &str, channel: Channel) -> Vec<String> {
        if self.channels.get(code).is_some_and(|c| c.allows(channel)) {
            vec![]
        } else {
            vec![format!(
                "{code} reached the client over {channel}, which the spec's table of channels (ORCH-2026) does not mark"
            )]
        }
    }

    fn check_operational(&self, exchange: &Exchange, media_type: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if exchange.method != "GET" && exchange.status != 405 {
            problems.push("an operational path answers GET only".to_owned());
        }
        if exchange.status == 200
            && exchange
                .response_media_type()
                .is_none_or(|m| m != media_type)
        {
            problems.push(format!(
                "content type {:?}, not {media_type}",
                exchange.response_header("content-type")
            ));
        }
        problems
    }

    /// A path or method no document declares must be answered with
    /// `expected` and the error envelope.
    fn check_undeclared(
        &self,
        exchange: &Exchange,
        expected: u16,
        why: &str,
    ) -> Result<Vec<String>> {
        if exchange.status != expected {
            bail!("{why}; only a {expected} with the error envelope may answer it");
        }
        Ok(self.check_envelope(exchange))
    }

    fn check_envelope(&self, exchange: &Exchange) -> Vec<String> {
        match serde_json::from_slice::<Value>(&exchange.response_body) {
            Ok(body) => self.validate(0, "/components/schemas/ErrorEnvelope", &body, "body"),
            Err(e) => vec![format!("the body is not the JSON error envelope: {e}")],
        }
    }

    fn check_request_body(
        &self,
        doc_index: usize,
        operation: &Value,
        pointer: &str,
        exchange: &Exchange,
    ) -> Vec<String> {
        let is_json = exchange
            .request_content_type
            .as_deref()
            .is_some_and(|c| c.contains("json"));
        if !is_json {
            return vec![];
        }
        if operation["requestBody"]["content"]["application/json"]["schema"].is_null() {
            return vec!["a JSON request body the operation does not declare was accepted".into()];
        }
        match serde_json::from_slice::<Value>(&exchange.request_body) {
            Ok(body) => self.validate(
                doc_index,
                &format!("{pointer}/requestBody/content/application~1json/schema"),
                &body,
                "accepted request body",
            ),
            Err(e) => vec![format!("a request body that is not JSON was accepted: {e}")],
        }
    }

    fn check_response_body(
        &self,
        doc_index: usize,
        declared: &Value,
        responses: &str,
        exchange: &Exchange,
    ) -> Vec<String> {
        let content = declared["content"].as_object();
        let Some(media_type) = exchange.response_media_type() else {
            return match content {
                Some(c) if !c.is_empty() && !exchange.response_body.is_empty() => {
                    vec!["a body without a content type".into()]
                }
                Some(c) if !c.is_empty() => vec!["the document declares a body; none came".into()],
                _ => vec![],
            };
        };
        let Some(entry) = content.and_then(|c| c.get(&media_type)) else {
            return vec![format!(
                "media type {media_type} is not declared for this status"
            )];
        };
        let schema_pointer = format!(
            "{responses}/content/{}/schema",
            media_type.replace('/', "~1")
        );
        if media_type == "text/event-stream" {
            let text = String::from_utf8_lossy(&exchange.response_body);
            return self.check_sse(doc_index, &entry["schema"], &schema_pointer, &text);
        }
        if exchange.body_truncated {
            return vec![];
        }
        match serde_json::from_slice::<Value>(&exchange.response_body) {
            Ok(body) => self.validate(doc_index, &schema_pointer, &body, "body"),
            Err(e) => vec![format!("the {media_type} body is not JSON: {e}")],
        }
    }

    /// Each complete frame of a stream against the declared frames: its
    /// fields against the frame variant named by `event:`, its `data:`
    /// against that variant's `contentSchema`.
    fn check_sse(
        &self,
        doc_index: usize,
        frame_schema: &Value,
        pointer: &str,
        text: &str,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let variants = frame_schema["oneOf"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (n, frame) in sse_frames(text).into_iter().enumerate() {
            // A frame without `event:` is a `message` (the SSE default): it matches
            // the declared frames that name no event (the OpenAI surface's).
            let name = frame
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or("message")
                .to_owned();
            let what = format!("SSE frame {n} ({name:?})");
            let candidates: Vec<usize> = (0..variants.len())
                .filter(
                    |&i| match variants[i]["properties"]["event"]["enum"].as_array() {
                        Some(names) => names.iter().any(|x| x == name.as_str()),
                        None => name == "message",
                    },
                )
                .collect();
            if candidates.is_empty() {
                problems.push(format!("{what}: no declared frame has this event name"));
                continue;
            }
            // The frame conforms when one declared frame takes it; else the
            // problems against the first are the report.
            let mut reports = candidates.iter().map(|&index| {
                self.check_frame(
                    doc_index,
                    &format!("{pointer}/oneOf/{index}"),
                    &variants[index],
                    &frame,
                    &name,
                    &what,
                )
            });
            let first = reports.next().unwrap_or_default();
            if !first.is_empty() && !reports.any(|r| r.is_empty()) {
                problems.extend(first);
            }
        }
        problems
    }

    /// One frame against one declared frame: its fields, and its `data:` against
    /// the `contentSchema` when the declared frame has one.
    fn check_frame(
        &self,
        doc_index: usize,
        variant: &str,
        declared: &Value,
        frame: &Value,
        name: &str,
        what: &str,
    ) -> Vec<String> {
        let mut problems = self.validate(doc_index, variant, frame, what);
        if declared.pointer("/properties/data/contentSchema").is_none() {
            return problems;
        }
        let data = frame.get("data").and_then(Value::as_str).unwrap_or("");
        match serde_json::from_str::<Value>(data) {
            Ok(payload) => {
                problems.extend(self.validate(
                    doc_index,
                    &format!("{variant}/properties/data/contentSchema"),
                    &payload,
                    &format!("{what} data"),
                ));
                if name == "error"
                    && let Some(code) = payload["code"].as_str()
                {
                    problems.extend(
                        self.allowed(code, Channel::Sse)
                            .into_iter()
                            .map(|p| format!("{what}: {p}")),
                    );
                }
            }
            Err(e) => problems.push(format!("{what}: data is not JSON: {e}")),
        }
        problems
    }

    /// `(document index, template, path item)` of the template matching a
    /// concrete path.
    fn path_item(&self, path: &str) -> Option<(usize, &str, &Value)> {
        self.docs.iter().enumerate().find_map(|(i, (_, doc))| {
            doc["paths"]
                .as_object()?
                .iter()
                .find(|(template, _)| template_matches(template, path))
                .map(|(template, item)| (i, template.as_str(), item))
        })
    }

    fn validate(
        &self,
        doc_index: usize,
        pointer: &str,
        instance: &Value,
        what: &str,
    ) -> Vec<String> {
        let validator = match self.validator(doc_index, pointer) {
            Ok(v) => v,
            Err(e) => return vec![format!("{what}: {e}")],
        };
        validator
            .iter_errors(instance)
            .map(|e| format!("{what} at {:?}: {e}", e.instance_path().to_string()))
            .collect()
    }

    fn validator(&self, doc_index: usize, pointer: &str) -> Result<Arc<jsonschema::Validator>> {
        let key = format!("{doc_index}{pointer}");
        if let Some(v) = self.validators.lock().expect("validator cache").get(&key) {
            return Ok(v.clone());
        }
        let doc = &self.docs[doc_index].1;
        let schema = doc
            .pointer(pointer)
            .ok_or_else(|| anyhow!("the document has no schema at {pointer}"))?;
        let schema = resolve(doc, schema, 0)?;
        let validator = jsonschema::draft202012::new(&schema)
            .map_err(|e| anyhow!("the schema at {pointer} does not compile: {e}"))?;
        let validator = Arc::new(validator);
        self.validators
            .lock()
            .expect("validator cache")
            .insert(key, validator.clone());
        Ok(validator)
    }
}

/// The committed documents, loaded once per process and shared by every proxy.
pub fn committed_documents() -> Arc<Documents> {
    static DOCUMENTS: std::sync::OnceLock<Arc<Documents>> = std::sync::OnceLock::new();
    DOCUMENTS
        .get_or_init(|| Arc::new(Documents::committed().expect("contracts/openapi loads")))
        .clone()
}

/// The workspace root (this crate lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the conformance crate sits in the workspace")
        .to_path_buf()
}

/// Whether a concrete path is an instance of a template. An empty segment
/// matches a parameter too: the request names the operation with an empty id,
/// which the operation must refuse with a status it declares.
fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<_> = template.split('/').collect();
    let p: Vec<_> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}')) || t == p)
}

/// A header's text as the JSON instance its schema describes.
fn header_instance(schema: &Value, value: &str) -> Value {
    match schema["type"].as_str() {
        Some("integer") | Some("number") => serde_json::from_str(value)
            .ok()
            .filter(Value::is_number)
            .unwrap_or_else(|| Value::String(value.to_owned())),
        _ => Value::String(value.to_owned()),
    }
}

/// The complete frames of an SSE text as `{event, data, id}` objects;
/// comment lines (keep-alives) and a trailing partial frame are skipped.
pub fn sse_frames(text: &str) -> Vec<Value> {
    let normalized = text.replace("\r\n", "\n");
    let mut blocks: Vec<&str> = normalized.split("\n\n").collect();
    // What follows the last blank line has not ended yet.
    blocks.pop();
    blocks
        .into_iter()
        .filter_map(|block| {
            let mut frame = serde_json::Map::new();
            for line in block.lines().filter(|l| !l.starts_with(':')) {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                let entry = frame
                    .entry(field.to_owned())
                    .or_insert_with(|| Value::String(String::new()));
                if let Value::String(existing) = entry {
                    // Repeated `data:` lines join with a newline.
                    if !existing.is_empty() {
                        existing.push('\n');
                    }
                    existing.push_str(value);
                }
            }
            (!frame.is_empty()).then_some(Value::Object(frame))
        })
        .collect()
}

/// Inline every `#/...` `$ref` of `schema` from `doc`.
pub fn resolve(doc: &Value, schema: &Value, depth: usize) -> Result<Value> {
    if depth > 64 {
        bail!("$ref nesting deeper than 64");
    }
    Ok(match schema {
        Value::Object(map) => {
            if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                let pointer = reference
                    .strip_prefix('#')
                    .ok_or_else(|| anyhow!("non-local $ref {reference}"))?;
                let target = doc
                    .pointer(pointer)
                    .ok_or_else(|| anyhow!("unresolved $ref {reference}"))?;
                let mut resolved = resolve(doc, target, depth + 1)?;
                // Siblings of $ref (3.1 allows them) apply too.
                if let Value::Object(out) = &mut resolved {
                    for (k, v) in map {
                        if k != "$ref" {
                            out.insert(k.clone(), resolve(doc, v, depth + 1)?);
                        }
                    }
                }
                resolved
            } else {
                Value::Object(
                    map.iter()
                        .map(|(k, v)| Ok((k.clone(), resolve(doc, v, depth + 1)?)))
                        .collect::<Result<_>>()?,
                )
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve(doc, v, depth + 1))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}
