//! Pact interactions checked against the OpenAPI documents: the path, method
//! and status must be declared, request and response bodies must validate
//! against the declared schemas (`$ref`s resolved here), declared response
//! headers must be present, and `429`/`503` carry numeric `Retry-After` and
//! `X-Backoff-Ms`.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

pub struct Documents {
    docs: Vec<(String, Value)>,
}

impl Documents {
    pub fn load(root: &Path) -> Result<Self> {
        let mut docs = Vec::new();
        for name in ["data", "control"] {
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
        Ok(Self { docs })
    }

    fn operation(&self, method: &str, path: &str) -> Result<(&Value, &Value)> {
        let path = path.split('?').next().unwrap_or(path);
        for (_, doc) in &self.docs {
            for (template, item) in doc["paths"].as_object().into_iter().flatten() {
                if template_matches(template, path) {
                    let op = item.get(method.to_lowercase()).ok_or_else(|| {
                        anyhow!("{method} {path}: the contract declares no {method} on {template}")
                    })?;
                    return Ok((doc, op));
                }
            }
        }
        bail!("{method} {path}: no OpenAPI document declares this path")
    }

    /// Every problem of one pact interaction, empty when it conforms.
    pub fn check(&self, interaction: &Value) -> Vec<String> {
        match self.check_inner(interaction) {
            Ok(problems) => problems,
            Err(e) => vec![e.to_string()],
        }
    }

    fn check_inner(&self, interaction: &Value) -> Result<Vec<String>> {
        let request = &interaction["request"];
        let response = &interaction["response"];
        let method = request["method"]
            .as_str()
            .context("request.method")?
            .to_uppercase();
        let path = request["path"].as_str().context("request.path")?;
        let status = response["status"].as_u64().context("response.status")?;
        let (doc, op) = self.operation(&method, path)?;
        let mut problems = Vec::new();
        let declared = op["responses"].get(status.to_string()).ok_or_else(|| {
            anyhow!("{method} {path}: status {status} is not declared by the contract")
        })?;

        // Request body: a request the server accepted must conform; one it
        // refused with 400 may break the schema on purpose (an unknown field,
        // a value outside an enumeration), but must still be declared JSON.
        if let Some(body) = json_body(request).filter(|_| status < 300) {
            match op["requestBody"]["content"]["application/json"].get("schema") {
                Some(schema) => problems.extend(validate(doc, schema, &body, "request body")),
                None => problems.push(format!(
                    "{method} {path}: a JSON request body the contract does not declare"
                )),
            }
        }

        // Response headers the contract declares.
        let headers = header_map(response);
        for name in declared["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            match headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                Some((_, value)) if value.parse::<u64>().is_ok() => {}
                Some((_, value)) => {
                    problems.push(format!("header {name}: {value:?} is not numeric"))
                }
                None => problems.push(format!("declared response header {name} is missing")),
            }
        }
        if matches!(status, 429 | 503) {
            for name in ["retry-after", "x-backoff-ms"] {
                let numeric = headers
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case(name) && v.parse::<u64>().is_ok());
                let matched = interaction["response"]["matchingRules"]["header"]
                    .as_object()
                    .is_some_and(|m| m.keys().any(|k| k.eq_ignore_ascii_case(name)));
                if !numeric || !matched {
                    problems.push(format!(
                        "a {status} must carry a numeric {name} with a matcher"
                    ));
                }
            }
        }

        // Response body.
        let content = &declared["content"];
        if let Some(body) = json_body(response) {
            match content["application/json"].get("schema") {
                Some(schema) => problems.extend(validate(doc, schema, &body, "response body")),
                None => problems.push(format!(
                    "{status}: a JSON response body the contract does not declare"
                )),
            }
        } else if let Some(text) = text_body(response) {
            if content.get("text/event-stream").is_none() {
                problems.push(format!(
                    "{status}: a text body the contract does not declare"
                ));
            } else if let Some(schema) = doc["components"]["schemas"].get("StreamEvent") {
                for (name, data) in sse_events(&text) {
                    let data: Value = match serde_json::from_str(&data) {
                        Ok(v) => v,
                        Err(e) => {
                            problems.push(format!("event {name}: data is not JSON: {e}"));
                            continue;
                        }
                    };
                    let event = serde_json::json!({"event": name, "data": data});
                    problems.extend(validate(doc, schema, &event, &format!("SSE event {name}")));
                }
            }
        } else if content.as_object().is_some_and(|c| !c.is_empty()) {
            problems.push(format!(
                "{status}: the contract declares a body, the pact has none"
            ));
        }
        Ok(problems)
    }
}

fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<_> = template.split('/').collect();
    let p: Vec<_> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

fn header_map(part: &Value) -> Vec<(String, String)> {
    part["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let value = match v {
                Value::Array(items) => items
                    .first()
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                other => other.as_str().unwrap_or("").to_owned(),
            };
            (k.clone(), value)
        })
        .collect()
}

fn content_type(part: &Value) -> String {
    part["body"]["contentType"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            header_map(part)
                .into_iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v)
        })
        .unwrap_or_default()
}

fn json_body(part: &Value) -> Option<Value> {
    let body = part.get("body")?;
    if !content_type(part).contains("json") {
        return None;
    }
    match &body["content"] {
        Value::String(text) => serde_json::from_str(text).ok(),
        Value::Null => None,
        other => Some(other.clone()),
    }
}

fn text_body(part: &Value) -> Option<String> {
    part.get("body")?["content"].as_str().map(str::to_owned)
}

fn sse_events(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(v.to_owned());
            }
        }
        if let (Some(name), Some(data)) = (name, data) {
            out.push((name, data));
        }
    }
    out
}

/// Inline every `#/components/...` `$ref` of `schema`.
pub fn resolve(doc: &Value, schema: &Value, depth: usize) -> Result<Value> {
    if depth > 32 {
        bail!("$ref nesting deeper than 32");
    }
    Ok(match schema {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
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

fn validate(doc: &Value, schema: &Value, instance: &Value, what: &str) -> Vec<String> {
    let schema = match resolve(doc, schema, 0) {
        Ok(s) => s,
        Err(e) => return vec![format!("{what}: {e}")],
    };
    let validator = match jsonschema::draft202012::new(&schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "{what}: the contract's schema does not compile: {e}"
            )];
        }
    };
    validator
        .iter_errors(instance)
        .map(|e| format!("{what} at {}: {e}", e.instance_path()))
        .collect()
}
