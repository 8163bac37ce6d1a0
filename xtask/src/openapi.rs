//! `regen-openapi`: the OpenAPI documents from the server's utoipa annotations.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use crate::drift::Generated;
use crate::spec;

pub const FIX: &str = "cargo xtask regen-openapi";
/// (document name, committed path)
pub const DOCUMENTS: [(&str, &str); 3] = [
    ("data", "contracts/openapi/data.yaml"),
    ("control", "contracts/openapi/control.yaml"),
    ("openai", "contracts/openapi/openai.yaml"),
];
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The documents as JSON values, straight from the server library.
pub fn documents() -> Result<Vec<(&'static str, &'static str, Value)>> {
    let docs = orchestratord::api::openapi_documents();
    DOCUMENTS
        .iter()
        .map(|&(name, path)| {
            let doc = docs
                .get(name)
                .with_context(|| format!("the server has no document {name}"))?;
            Ok((name, path, doc.clone()))
        })
        .collect()
}

/// Recursively sort object keys (utoipa keeps extensions in a HashMap).
pub fn sort_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k.clone(), sort_keys(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}

/// IDs in an `x-req-id` value: a string (IDs separated by commas/spaces) or an array.
pub fn req_ids(v: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    match v {
        Some(Value::String(s)) => out.extend(
            s.split([',', ' ', ';'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        ),
        Some(Value::Array(a)) => {
            for item in a {
                out.extend(req_ids(Some(item)));
            }
        }
        _ => {}
    }
    out
}

/// One operation of a document with the IDs it cites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub method: String,
    pub path: String,
    /// `x-req-id` of the operation itself.
    pub ids: Vec<String>,
    /// (status, `x-req-id`) of each response.
    pub responses: Vec<(String, Vec<String>)>,
}

impl Operation {
    /// `METHOD path`, e.g. `POST /v1/tasks`.
    pub fn label(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    /// Every ID cited by the operation or one of its responses.
    pub fn all_ids(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.ids.iter().cloned().collect();
        for (_, ids) in &self.responses {
            s.extend(ids.iter().cloned());
        }
        s
    }
}

/// Operations of a document, sorted by path then method.
pub fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return ops;
    };
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let mut responses = Vec::new();
            if let Some(rs) = op.get("responses").and_then(Value::as_object) {
                for (status, r) in rs {
                    responses.push((status.clone(), req_ids(r.get("x-req-id"))));
                }
            }
            responses.sort();
            ops.push(Operation {
                method: method.to_string(),
                path: path.clone(),
                ids: req_ids(op.get("x-req-id")),
                responses,
            });
        }
    }
    ops.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    ops
}

fn is_error_status(status: &str) -> bool {
    // "4XX"/"5XX"/"default" ranges count as errors too.
    match status.parse::<u16>() {
        Ok(n) => n >= 400,
        Err(_) => status.starts_with('4') || status.starts_with('5') || status == "default",
    }
}

/// Every violation of the x-req-id rules, as `document: METHOD path: message`.
pub fn validate(name: &str, doc: &Value, known: &BTreeSet<String>) -> Vec<String> {
    let mut errors = Vec::new();
    let ops = operations(doc);
    for op in &ops {
        let label = op.label();
        if op.ids.is_empty() {
            errors.push(format!("{name}: {label}: operation has no x-req-id"));
        }
        for id in &op.ids {
            if !known.contains(id) {
                errors.push(format!(
                    "{name}: {label}: x-req-id {id} is not in {}",
                    spec::INDEX_PATH
                ));
            }
        }
        for (status, ids) in &op.responses {
            if is_error_status(status) && ids.is_empty() {
                errors.push(format!(
                    "{name}: {label}: error response {status} has no x-req-id"
                ));
            }
            for id in ids {
                if !known.contains(id) {
                    errors.push(format!(
                        "{name}: {label}: response {status}: x-req-id {id} is not in {}",
                        spec::INDEX_PATH
                    ));
                }
            }
        }
    }
    errors
}

/// Render one document as the committed YAML file.
pub fn render(name: &str, doc: &Value) -> Result<String> {
    let sorted = sort_keys(doc);
    let body = serde_yaml::to_string(&sorted).context("serializing YAML")?;
    Ok(format!(
        "# GENERATED by `cargo xtask regen-openapi` from the utoipa annotations of orchestratord ({name} plane) — do not edit by hand\n{body}"
    ))
}

/// The generator: validated, rendered documents.
pub fn generate(root: &Path) -> Result<Vec<Generated>> {
    let known: BTreeSet<String> = spec::load_index(root)?.into_iter().map(|r| r.id).collect();
    let docs = documents()?;
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for (name, path, doc) in &docs {
        errors.extend(validate(name, doc, &known));
        files.push(Generated::new(*path, render(name, doc)?));
    }
    if !errors.is_empty() {
        bail!(
            "{}\nregen-openapi: {} error(s); annotate the operations in server/src/api with x-req-id",
            errors.join("\n"),
            errors.len()
        );
    }
    Ok(files)
}

/// Operations of the committed documents (for compliance and dod); missing files are empty.
pub fn committed_operations(root: &Path) -> Result<Vec<Operation>> {
    let mut out = Vec::new();
    for (_, path) in DOCUMENTS {
        let full = root.join(path);
        let Ok(text) = std::fs::read_to_string(&full) else {
            continue;
        };
        let doc: Value = serde_yaml::from_str(&text).with_context(|| format!("parsing {path}"))?;
        out.extend(operations(&doc));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "openapi": "3.1.0",
            "paths": {
                "/v1/tasks": {
                    "post": {
                        "x-req-id": ["ORCH-1001", "ORCH-1002"],
                        "responses": {
                            "202": {"description": "ok"},
                            "400": {"description": "bad", "x-req-id": "ORCH-2012"},
                            "429": {"description": "full"}
                        }
                    },
                    "get": {"responses": {"200": {"description": "ok"}}}
                }
            }
        })
    }

    // covers: ORCH-9003
    #[test]
    fn validation_names_path_method_and_id() {
        let known: BTreeSet<String> = ["ORCH-1001", "ORCH-2012"].map(String::from).into();
        let errors = validate("data", &doc(), &known);
        assert_eq!(
            errors,
            [
                "data: GET /v1/tasks: operation has no x-req-id",
                "data: POST /v1/tasks: x-req-id ORCH-1002 is not in requirements/index.yaml",
                "data: POST /v1/tasks: error response 429 has no x-req-id",
            ]
        );
    }

    // covers: ORCH-9003
    #[test]
    fn rendering_sorts_keys_and_names_the_command() {
        let mut m = Map::new();
        m.insert("zeta".into(), json!(1));
        m.insert("alpha".into(), json!({"y": 1, "b": 2}));
        let out = render("data", &Value::Object(m)).unwrap();
        assert!(out.starts_with("# GENERATED by `cargo xtask regen-openapi`"));
        let body: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(body, ["alpha:", "  b: 2", "  y: 1", "zeta: 1"]);
    }
}
