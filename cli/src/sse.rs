//! A small Server-Sent Events reader: bytes in, typed events out. Comment
//! lines (keep-alives) and events of a kind this build does not know (a newer
//! server's, ORCH-9015) are skipped; a malformed event is a protocol error.

use bytes::BytesMut;
use contracts::StreamEvent;
use futures::{Stream, StreamExt};
use reqwest::Response;

use crate::ClientError;

/// Parse one SSE block (the lines between blank lines).
pub fn parse_block(block: &str) -> Option<Result<StreamEvent, ClientError>> {
    let mut name = None;
    let mut data = String::new();
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = Some(value.to_owned()),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    let name = name.filter(|n| StreamEvent::NAMES.contains(&n.as_str()))?;
    Some(
        StreamEvent::from_sse(&name, &data)
            .map_err(|e| ClientError::Protocol(format!("bad `{name}` event {data:?}: {e}"))),
    )
}

/// The events of an SSE response body, in order. Ends when the body ends.
pub fn events(response: Response) -> impl Stream<Item = Result<StreamEvent, ClientError>> + Send {
    async_stream::stream! {
        let mut body = response.bytes_stream();
        let mut buffer = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                // A dropped connection ends the body; the caller resumes.
                return;
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = find_blank_line(&buffer) {
                let block = buffer.split_to(end.0);
                let _ = buffer.split_to(end.1);
                let text = String::from_utf8_lossy(&block).replace("\r\n", "\n");
                if let Some(event) = parse_block(&text) {
                    yield event;
                }
            }
        }
    }
}

/// (block length, separator length) of the first event terminator.
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_block_parses_with_its_index() {
        let event = parse_block("event: token\nid: 3\ndata: {\"t\":\" x\",\"i\":3}")
            .unwrap()
            .unwrap();
        assert_eq!(event.sse_id(), Some(3));
        assert!(parse_block(": keep-alive").is_none());
    }

    // covers: ORCH-9015
    #[test]
    fn an_event_kind_of_a_newer_server_is_skipped_and_a_bad_known_one_is_not() {
        assert!(parse_block("event: progress\ndata: {\"percent\":40}").is_none());
        assert!(matches!(
            parse_block("event: token\ndata: {\"text\":\"x\"}"),
            Some(Err(ClientError::Protocol(_)))
        ));
    }
}
