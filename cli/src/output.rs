//! Everything `orchctl` prints. Data goes to stdout (tokens as they arrive,
//! or JSON lines with `--json`); notes, summaries, errors and hints go to
//! stderr, so `orchctl ... > out.txt` keeps only the data.

use std::io::{self, Write};

use orchctl::ClientError;
use orchctl::contracts::{ErrorCode, ErrorEnvelope};
use serde::Serialize;

use crate::exit::Failure;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// One compact JSON document on its own stdout line.
    pub fn json_line(&self, value: &impl Serialize) -> io::Result<()> {
        let text = serde_json::to_string(value).map_err(io::Error::other)?;
        self.line(&text)
    }

    /// A line of data on stdout.
    pub fn line(&self, text: &str) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{text}")?;
        stdout.flush()
    }

    /// Text on stdout with no newline, flushed at once (streamed tokens).
    pub fn raw(&self, text: &str) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()
    }

    /// A human note on stderr (never printed with `--json`).
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }
}

/// The wire spelling of a unit enum (`interactive`, `length`, …).
pub fn enum_str(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Rows as columns aligned on the widest cell, two spaces apart, with no
/// trailing blanks. The header is the first line.
pub fn table<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> Vec<String> {
    let header = header.map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(header)
        .chain(rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// `key:` padded to `width`, then the value (the `status` and `session get`
/// layout).
pub fn field(key: &str, value: &str, width: usize) -> String {
    format!("{:<width$}{value}", format!("{key}:"))
}

/// An engine and its version, without repeating the engine's name when the
/// version already starts with it (`builtin-1.0.0`, not `builtin builtin-1.0.0`).
pub fn engine_str(engine: &str, version: &str) -> String {
    if version.starts_with(engine) {
        version.to_owned()
    } else {
        format!("{engine} {version}")
    }
}

/// What the failing command addresses, so a hint can name the right thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A task (submit, stream, status, ls, cancel).
    Task,
    /// A session of the scope.
    Session,
    /// A whole scope.
    Scope,
    /// A pool or the control plane as a whole.
    Pool,
    /// A tenant's usage.
    Tenant,
    /// Nothing on the server (completions).
    Local,
}

/// Where the failing call went, for the hints.
pub struct Context<'a> {
    pub url: &'a str,
    pub scope: Option<&'a str>,
    pub subject: Subject,
    /// `--retries` applies to this command (only `submit` retries).
    pub retries_apply: bool,
}

/// Print a failure: `error: CODE: message`, the correlation id, and a hint
/// saying what to do about it. With `--json`, an error answer is printed as
/// `{"status": N, "error": <envelope>}` on stderr instead.
pub fn report(failure: &Failure, json: bool, context: &Context) {
    match failure {
        Failure::Client(error) => report_client(error, json, context),
        Failure::TaskFailed(envelope) => {
            // With --json the error event or status body already says it all.
            if json {
                return;
            }
            print_envelope(envelope);
            let hint = if envelope.retriable {
                "the task failed but may succeed if submitted again"
            } else {
                "the task failed; submitting it again unchanged will not help"
            };
            eprintln!("hint: {hint}");
        }
        Failure::Usage(message) => {
            eprintln!("error: {message}");
            eprintln!("hint: see orchctl --help");
        }
        Failure::Io(error) => eprintln!("error: {error}"),
    }
}

fn report_client(error: &ClientError, json: bool, context: &Context) {
    match error {
        ClientError::Api {
            status, envelope, ..
        } => {
            if json {
                // A struct, not `json!`, so the envelope keeps its wire field order.
                #[derive(Serialize)]
                struct ErrorLine<'a> {
                    status: u16,
                    error: &'a ErrorEnvelope,
                }
                let line = ErrorLine {
                    status: *status,
                    error: envelope,
                };
                eprintln!("{}", serde_json::to_string(&line).unwrap_or_default());
                return;
            }
            print_envelope(envelope);
            eprintln!("hint: {}", api_hint(error, *status, envelope, context));
        }
        ClientError::Transport(message) => {
            eprintln!(
                "error: cannot reach the server at {}: {message}",
                context.url
            );
            eprintln!("hint: is orchestratord running there? Set --url or ORCH_URL");
        }
        ClientError::Protocol(message) => {
            eprintln!("error: unexpected answer from the server: {message}");
            eprintln!(
                "hint: check that --url ({}) points at orchestratord",
                context.url
            );
        }
    }
}

fn print_envelope(envelope: &ErrorEnvelope) {
    eprintln!("error: {}: {}", envelope.code, envelope.message);
    eprintln!("correlation id: {}", envelope.correlation_id);
}

fn api_hint(
    error: &ClientError,
    status: u16,
    envelope: &ErrorEnvelope,
    context: &Context,
) -> String {
    let scope_note = match context.scope {
        Some(scope) => format!("this call used scope {scope:?}"),
        None => "this call used no scope, so it sees only unscoped tasks and sessions".into(),
    };
    match (status, envelope.code.known()) {
        (404, _) => match context.subject {
            Subject::Session => format!("check the session id and --scope ({scope_note})"),
            Subject::Pool => "check the pool id; `orchctl pools` lists the pools".into(),
            Subject::Tenant => {
                "check --tenant; `orchctl usage` with an admin key lists every tenant".into()
            }
            _ => format!("check the task id and --scope ({scope_note})"),
        },
        (500, _) | (_, Some(ErrorCode::Internal)) => {
            "the server failed unexpectedly; quote the correlation id when reporting it".into()
        }
        (_, Some(ErrorCode::PoolUnready)) if context.subject == Subject::Pool => {
            "the new replicas were still loading and the old ones keep serving; allow more time \
             with --ready-timeout-ms"
                .into()
        }
        (_, Some(ErrorCode::InvalidParams))
            if context.subject == Subject::Pool && envelope.message.starts_with("model_ref:") =>
        {
            "the replicas cannot serve that model and the old ones keep serving; check \
             --model-ref (`orchctl replicasets` shows what each pool serves)"
                .into()
        }
        (_, Some(ErrorCode::PoolUnavailable)) => {
            "the pool is draining, shutting down, or has every replica down (the message says \
             which); a drained pool admits again after a successful `orchctl pool reload`"
                .into()
        }
        _ if envelope.retriable => match (error.backoff(), context.retries_apply) {
            (Some(wait), true) => format!(
                "retriable: the server asks to wait {} ms before retrying; --retries N does that automatically",
                wait.as_millis()
            ),
            (Some(wait), false) => format!(
                "retriable: the server asks to wait {} ms before retrying",
                wait.as_millis()
            ),
            (None, true) => "retriable: try again later; --retries N retries automatically".into(),
            (None, false) => "retriable: try again later".into(),
        },
        (_, Some(ErrorCode::InvalidParams)) => {
            "fix the field named in the message; `orchctl help <command>` lists the options".into()
        }
        (_, Some(ErrorCode::Conflict)) => {
            "this --task-id is already used in this scope with a different request; \
             choose another id, or resend the identical request"
                .into()
        }
        (_, Some(ErrorCode::Unauthorized)) => {
            "pass a valid key with --api-key or ORCH_API_KEY".into()
        }
        (_, Some(ErrorCode::Forbidden)) if context.subject == Subject::Tenant => {
            "a client key reads only its own tenant's usage: drop --tenant, or use an admin key"
                .into()
        }
        (_, Some(ErrorCode::Forbidden)) => {
            "this API key's tenant lacks the role the operation needs: \
             the control plane (pools, pool, replicasets, capabilities) needs an admin key"
                .into()
        }
        _ => format!("the server answered HTTP {status}"),
    }
}
