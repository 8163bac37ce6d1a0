//! Pact interactions checked against the OpenAPI documents with the same
//! checks the end-to-end suites apply to every real answer (the
//! `conformance` crate), plus what only a pact can get wrong: a `429`/`503`
//! must pin numeric `Retry-After` and `X-Backoff-Ms` with a matcher.

use conformance::{Documents, Exchange};
use serde_json::Value;

/// Every problem of one pact interaction, empty when it conforms.
pub fn check(documents: &Documents, interaction: &Value) -> Vec<String> {
    let exchange = exchange(interaction);
    let mut problems = documents.check(&exchange);
    if matches!(exchange.status, 429 | 503) {
        for name in ["retry-after", "x-backoff-ms"] {
            let numeric = exchange
                .response_headers
                .iter()
                .any(|(k, v)| k == name && v.parse::<u64>().is_ok());
            let matched = interaction["response"]["matchingRules"]["header"]
                .as_object()
                .is_some_and(|m| m.keys().any(|k| k.eq_ignore_ascii_case(name)));
            if !numeric || !matched {
                problems.push(format!(
                    "a {} must carry a numeric {name} with a matcher",
                    exchange.status
                ));
            }
        }
    }
    problems
}

/// The exchange a pact interaction describes.
fn exchange(interaction: &Value) -> Exchange {
    let request = &interaction["request"];
    let response = &interaction["response"];
    let mut target = request["path"].as_str().unwrap_or("/").to_owned();
    if let Some(query) = request["query"].as_object().filter(|q| !q.is_empty()) {
        let pairs: Vec<String> = query
            .iter()
            .flat_map(|(k, v)| {
                let values = match v {
                    Value::Array(items) => items.clone(),
                    other => vec![other.clone()],
                };
                values
                    .into_iter()
                    .map(move |v| format!("{k}={}", v.as_str().unwrap_or_default()))
            })
            .collect();
        target = format!("{target}?{}", pairs.join("&"));
    }
    Exchange {
        method: request["method"].as_str().unwrap_or("GET").to_uppercase(),
        target,
        request_content_type: Some(content_type(request)).filter(|c| !c.is_empty()),
        request_body: body(request),
        status: response["status"].as_u64().unwrap_or(0) as u16,
        response_headers: headers(response),
        response_body: body(response),
        body_truncated: false,
    }
}

fn headers(part: &Value) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = part["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let value = match v {
                Value::Array(items) => items.first().and_then(Value::as_str).unwrap_or(""),
                other => other.as_str().unwrap_or(""),
            };
            (k.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    let declared = part["body"]["contentType"].as_str();
    if let Some(content_type) =
        declared.filter(|_| !headers.iter().any(|(k, _)| k == "content-type"))
    {
        headers.push(("content-type".into(), content_type.to_owned()));
    }
    headers
}

fn content_type(part: &Value) -> String {
    headers(part)
        .into_iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// The body's bytes: pact stores JSON bodies as JSON and text as a string.
fn body(part: &Value) -> Vec<u8> {
    match &part["body"]["content"] {
        Value::Null => Vec::new(),
        Value::String(text) => text.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}
