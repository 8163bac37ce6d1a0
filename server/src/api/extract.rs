//! Extractors whose rejections are `400 INVALID_PARAMS` envelopes naming the
//! offending field (ORCH-1002), instead of axum's plain-text rejections.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::OrchError;

/// JSON body parsed with the path of the failing field in the message.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, OrchError> {
    // serde reads a struct from a JSON array too, field by position; every body
    // the documents declare is an object, so an array is refused unread.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(OrchError::invalid(
            "body",
            "must be a JSON object, not an array",
        ));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let inner = error.inner();
        // A syntax error has no field (serde_path_to_error says `?`): name the body
        // and where it breaks; serde_json's message carries the line and column.
        if inner.is_syntax() || inner.is_eof() {
            return OrchError::invalid("body", format!("is not valid JSON: {inner}"));
        }
        let path = error.path().to_string();
        let field = if path == "." { "body" } else { path.as_str() };
        OrchError::invalid(field, inner)
    })
}

/// A JSON value read into `T`, the failing field named as by [`parse_json`].
pub fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, OrchError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "body" } else { path.as_str() };
        OrchError::invalid(field, error.inner())
    })
}

/// Query string parsed into `T`; errors name the parameter.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = OrchError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|error| {
                let path = error.path().to_string();
                let field = if path == "." { "query" } else { path.as_str() };
                OrchError::invalid(field, error.inner())
            })
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}
