//! `orchctl stream`: read a task's event stream (and the streaming half of
//! `submit --follow`).

use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use orchctl::contracts::{EndEvent, StreamEvent, TaskState};

use super::Ctx;
use crate::exit::Failure;
use crate::output::enum_str;

/// How often a task that has not started yet is polled for its position.
const POSITION_POLL: Duration = Duration::from_secs(1);

const AFTER_HELP: &str = "\
Prints tokens on stdout as they arrive, then on stderr a summary:
  -- 24 tokens, ttft 31 ms, 412.3 tok/s, finish: length (replica r1)
ttft is measured here, from the request to the first token; tok/s is the
server's decode rate. While the task waits in the queue its position is shown.
With --json, each event is one line: {\"event\":\"token\",\"data\":{\"t\":\" x\",\"i\":3}}.

A stream can be read again, from the start, for as long as the task is
retained; a dropped connection is resumed without loss or duplicates.

Examples:
  orchctl stream t-4f1c2a
  orchctl stream t-4f1c2a --last-event-id 9     # the tokens after token 9
  orchctl --json stream t-4f1c2a | jq -r 'select(.event==\"token\").data.t'";

/// Stream a task's tokens (from the start, or after a token index).
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct StreamArgs {
    /// The task id (as printed by `orchctl submit`).
    #[arg(value_parser = super::task_id_arg)]
    pub task_id: String,

    /// Resume after this token index (as the SSE `Last-Event-ID`).
    #[arg(long, value_name = "N")]
    pub last_event_id: Option<u32>,
}

pub async fn run(ctx: &Ctx, args: StreamArgs) -> Result<(), Failure> {
    follow(ctx, &args.task_id, args.last_event_id, Instant::now(), None).await
}

/// What the summary line reports.
struct Summary {
    since: Instant,
    first_token: Option<Duration>,
    tokens: u32,
    replica: Option<String>,
}

impl Summary {
    fn line(&self, outcome: &str, end: Option<&EndEvent>) -> String {
        let tokens = end.map_or(self.tokens, |e| e.tokens_out);
        let mut parts = vec![format!("{tokens} tokens")];
        match self.first_token {
            Some(ttft) => parts.push(format!("ttft {} ms", ttft.as_millis())),
            None => parts.push("ttft -".into()),
        }
        if let Some(end) = end.filter(|e| e.decode_ms > 0 && e.tokens_out > 0) {
            let rate = f64::from(end.tokens_out) * 1000.0 / end.decode_ms as f64;
            parts.push(format!("{rate:.1} tok/s"));
        }
        parts.push(outcome.to_owned());
        let mut line = format!("-- {}", parts.join(", "));
        if let Some(replica) = &self.replica {
            line.push_str(&format!(" (replica {replica})"));
        }
        line
    }
}

/// Print a task's stream until its terminal event. `since` is when the user
/// asked (for ttft); `position` the queue position already shown, if any.
pub async fn follow(
    ctx: &Ctx,
    task_id: &str,
    last_event_id: Option<u32>,
    since: Instant,
    mut position: Option<u32>,
) -> Result<(), Failure> {
    let stream = ctx.client.stream_after(task_id, last_event_id).await?;
    let mut stream = std::pin::pin!(stream);
    let mut summary = Summary {
        since,
        first_token: None,
        tokens: 0,
        replica: None,
    };
    let mut started = false;
    let mut poll =
        tokio::time::interval_at(tokio::time::Instant::now() + POSITION_POLL, POSITION_POLL);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = poll.tick(), if !started && !ctx.out.json => {
                show_position(ctx, task_id, &mut position).await;
                continue;
            }
        };
        let event = match event {
            Some(event) => event?,
            None => {
                return Err(Failure::from(orchctl::ClientError::Protocol(
                    "the stream ended without an `end` or `error` event".into(),
                )));
            }
        };
        if ctx.out.json {
            ctx.out.json_line(&event)?;
        }
        match event {
            StreamEvent::Started(s) => {
                started = true;
                summary.replica = Some(s.replica_id);
            }
            StreamEvent::Token(token) => {
                started = true;
                summary.tokens += 1;
                summary
                    .first_token
                    .get_or_insert_with(|| summary.since.elapsed());
                if !ctx.out.json {
                    ctx.out.raw(&token.t)?;
                }
            }
            StreamEvent::Metrics(_) => {}
            StreamEvent::End(end) => {
                finish_tokens(ctx, &summary)?;
                let outcome = format!("finish: {}", enum_str(&end.finish_reason));
                ctx.out.note(&summary.line(&outcome, Some(&end)));
                return Ok(());
            }
            StreamEvent::Error(envelope) => {
                finish_tokens(ctx, &summary)?;
                ctx.out
                    .note(&summary.line(&format!("failed: {}", envelope.code), None));
                return Err(Failure::TaskFailed(Box::new(envelope)));
            }
        }
    }
}

/// End the token line so the summary and the shell prompt start on their own.
fn finish_tokens(ctx: &Ctx, summary: &Summary) -> std::io::Result<()> {
    if !ctx.out.json && summary.tokens > 0 {
        ctx.out.raw("\n")?;
    }
    Ok(())
}

/// While the stream has not started, show the queue position when it moves.
async fn show_position(ctx: &Ctx, task_id: &str, shown: &mut Option<u32>) {
    let Ok(status) = ctx.client.status(task_id).await else {
        return;
    };
    if status.state != TaskState::Queued {
        return;
    }
    if let Some(position) = status.queue_position
        && *shown != Some(position)
    {
        ctx.out.note(&format!("queued at position {position}"));
        *shown = Some(position);
    }
}
