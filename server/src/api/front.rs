//! The front door of a cluster member (ORCH-7012): the dispatcher serves a request
//! itself; a follower forwards it, whole, to the dispatcher and relays the answer.
//! A task's stream that breaks because the dispatcher died is resumed from the new
//! one with `Last-Event-ID`, so a client streaming through a follower reads on to the
//! task's outcome. Only `/metrics`, `/healthz` and `/readyz` are always this
//! daemon's own.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tower::ServiceExt;

use crate::cluster::{Member, Role};
use crate::error::OrchError;

#[derive(Clone)]
struct Front {
    member: Arc<Member>,
    client: reqwest::Client,
    max_body_bytes: usize,
}

pub fn router(member: Arc<Member>, max_body_bytes: u64) -> axum::Router {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client without TLS builds");
    axum::Router::new().fallback(serve).with_state(Front {
        member,
        client,
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
    })
}

async fn serve(State(front): State<Front>, request: Request) -> Response {
    if let Some(local) = front.member.local() {
        return match local.router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    let path = request.uri().path().to_owned();
    if front.member.has_left() {
        // A connection that outlived this daemon's stop: it forwards nothing more.
        return failure(
            &path,
            OrchError::new(
                contracts::ErrorCode::PoolUnavailable,
                "this daemon has stopped; send the request to another daemon of the cluster",
            )
            .with_backoff(100),
        );
    }
    match path.as_str() {
        "/healthz" => return "ok".into_response(),
        "/readyz" => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: this daemon does not dispatch; it forwards to the daemon that does",
            )
                .into_response();
        }
        "/metrics" => {
            return (
                [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                front.member.encode_metrics(),
            )
                .into_response();
        }
        _ => {}
    }
    front.member.metrics.forwarded.inc();
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, front.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            let mut response = failure(
                &path,
                OrchError::invalid(
                    "body",
                    "is larger than the server's limit (max_body_bytes in the config)",
                ),
            );
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
    };
    let resumable = parts.method == Method::GET && path.ends_with("/stream");
    let upstream = match front.send(&parts, body.clone(), None).await {
        Ok(upstream) => upstream,
        Err(error) => return failure(&path, error),
    };
    let status = upstream.status();
    let headers = relayed_headers(upstream.headers());
    let body = if resumable && status == StatusCode::OK {
        Body::from_stream(resumed_stream(front, parts, upstream))
    } else {
        Body::from_stream(upstream.bytes_stream())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

impl Front {
    /// Sends the request to the dispatcher, waiting out a takeover (at most two
    /// leases) when there is none or it cannot be reached. Only a request that never
    /// reached a dispatcher is sent again, so none is applied twice.
    async fn send(
        &self,
        parts: &axum::http::request::Parts,
        body: Bytes,
        last_event_id: Option<u32>,
    ) -> Result<reqwest::Response, OrchError> {
        let patience = Duration::from_millis(self.member.lease_ms() * 2);
        let deadline = tokio::time::Instant::now() + patience;
        let mut roles = self.member.roles();
        loop {
            // Once this daemon dispatches, a resumed stream is read from itself.
            let address = match roles.borrow_and_update().clone() {
                Role::Follower {
                    dispatcher: Some(address),
                } => Some(address),
                Role::Dispatcher { ready: true, .. } => Some(self.member.address().to_owned()),
                _ => None,
            };
            if let Some(address) = address {
                let url = format!(
                    "{address}{}",
                    parts.uri.path_and_query().map_or("/", |p| p.as_str())
                );
                let mut headers = parts.headers.clone();
                headers.remove(header::HOST);
                if let Some(id) = last_event_id {
                    headers.insert(
                        HeaderName::from_static("last-event-id"),
                        HeaderValue::from(id),
                    );
                }
                let sent = self
                    .client
                    .request(parts.method.clone(), url)
                    .headers(headers)
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) => return Ok(response),
                    // A read (GET) is safe to send again; anything else is only sent
                    // again when it never reached the dispatcher.
                    Err(e) if !e.is_connect() && parts.method != Method::GET => {
                        return Err(OrchError::new(
                            contracts::ErrorCode::PoolUnavailable,
                            "the dispatching daemon failed while answering; retry the \
                             request (a create with the same task_id is idempotent)",
                        )
                        .with_backoff(self.member.lease_ms())
                        .with_log_detail(e.to_string()));
                    }
                    Err(_) => {}
                }
            }
            let waited = tokio::time::timeout_at(deadline, roles.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return Err(OrchError::new(
                    contracts::ErrorCode::PoolUnavailable,
                    "no daemon of the cluster dispatches right now (its lease is being \
                     taken over); retry in a moment",
                )
                .with_backoff(self.member.lease_ms()));
            }
        }
    }
}

/// The answer's headers, less what describes the hop rather than the answer.
fn relayed_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    for hop in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(hop);
    }
    headers
}

/// What a relay has passed on of a task's SSE stream: the last token id and the
/// events since it, so a resumed stream repeats none of them.
#[derive(Debug, Default)]
struct Relayed {
    last_token: Option<u32>,
    events_since: usize,
    ended: bool,
    /// Bytes of an event not complete yet: a chunk may end inside an event, even
    /// inside a character.
    partial: Vec<u8>,
}

impl Relayed {
    /// Reads `chunk` (complete events end with a blank line) and returns the text to
    /// relay: everything, except the first `skip` events of a resumed stream.
    fn feed(&mut self, chunk: &[u8], skip: &mut usize) -> String {
        self.partial.extend_from_slice(chunk);
        let mut out = String::new();
        while let Some(end) = self.partial.windows(2).position(|w| w == b"\n\n") {
            let bytes: Vec<u8> = self.partial.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&bytes).into_owned();
            let name = event
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(str::trim);
            let Some(name) = name else {
                out.push_str(&event); // a keep-alive comment
                continue;
            };
            if *skip > 0 {
                *skip -= 1;
                continue;
            }
            let id = event
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .and_then(|v| v.trim().parse().ok());
            match (name, id) {
                ("token", Some(id)) => {
                    self.last_token = Some(id);
                    self.events_since = 0;
                }
                _ => self.events_since += 1,
            }
            self.ended |= name == "end" || name == "error";
            out.push_str(&event);
        }
        out
    }
}

fn resumed_stream(
    front: Front,
    parts: axum::http::request::Parts,
    first: reqwest::Response,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    async_stream::stream! {
        let mut relayed = Relayed::default();
        let mut upstream = first.bytes_stream();
        let mut skip = 0;
        loop {
            while let Some(chunk) = upstream.next().await {
                let Ok(chunk) = chunk else { break };
                let text = relayed.feed(&chunk, &mut skip);
                if !text.is_empty() {
                    yield Ok(Bytes::from(text));
                }
            }
            if relayed.ended {
                return;
            }
            // The dispatcher went away mid-stream: resume from its successor after
            // the last token relayed, skipping the events already passed on.
            // A dead dispatcher's last connections may still answer, or fail, until
            // the lease moves: try again, within two leases.
            relayed.partial.clear();
            skip = relayed.events_since;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(front.member.lease_ms() * 2);
            loop {
                match front.send(&parts, Bytes::new(), relayed.last_token).await {
                    Ok(next) if next.status() == StatusCode::OK => {
                        upstream = next.bytes_stream();
                        break;
                    }
                    _ if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => return,
                }
            }
        }
    }
}

/// This daemon's own error answer, in the shape of the path's surface.
fn failure(path: &str, error: OrchError) -> Response {
    if super::is_openai_path(path) {
        super::openai::OpenAiFailure::from(error).into_response()
    } else {
        error.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::Relayed;

    // covers: ORCH-7012
    #[test]
    fn a_resumed_stream_repeats_no_event_the_relay_passed_on() {
        let mut relayed = Relayed::default();
        let mut skip = 0;
        let first = relayed.feed(
            b"event: started\ndata: {}\n\nevent: token\nid: 0\ndata: {}\n\n: keep-alive\n\nevent: metrics\nid: 0\ndata: {}\n\nevent: tok",
            &mut skip,
        );
        assert_eq!(first.matches("event:").count(), 3);
        assert_eq!((relayed.last_token, relayed.events_since), (Some(0), 1));
        assert!(!relayed.ended);
        // The successor replays what follows token 0: the metrics event again, then more.
        relayed.partial.clear();
        skip = relayed.events_since;
        let second = relayed.feed(
            b"event: metrics\nid: 0\ndata: {}\n\nevent: token\nid: 1\ndata: {}\n\nevent: end\nid: 1\ndata: {}\n\n",
            &mut skip,
        );
        assert_eq!(second.matches("event:").count(), 2, "{second}");
        assert!(second.starts_with("event: token\nid: 1"));
        assert!(relayed.ended);
    }

    // covers: ORCH-7012
    #[test]
    fn a_character_split_between_chunks_is_relayed_whole() {
        let event = "event: token\nid: 0\ndata: {\"t\":\" caf\u{e9} \u{1f600}\",\"i\":0}\n\n";
        let bytes = event.as_bytes();
        let mut skip = 0;
        for cut in 1..bytes.len() {
            let mut relayed = Relayed::default();
            let mut out = relayed.feed(&bytes[..cut], &mut skip);
            out.push_str(&relayed.feed(&bytes[cut..], &mut skip));
            assert_eq!(out, event, "cut at byte {cut}");
        }
    }
}
