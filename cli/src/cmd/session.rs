//! `orchctl session get|rm`: `GET` and `DELETE /v1/sessions/{id}`.

use clap::{Args, Subcommand};
use orchctl::contracts::SessionInfo;

use super::Ctx;
use crate::exit::Failure;
use crate::output::field;

const AFTER_HELP: &str = "\
A session is created by the first task submitted with `--session ID`; its
later turns prefer the replica that still holds its KV cache. Sessions live
in the --scope they were created in, and expire after the server's TTL.

Examples:
  orchctl submit --session chat-1 --prompt 'Hello' --follow
  orchctl session get chat-1
  orchctl --json session get chat-1 | jq .kv_warmth
  orchctl session rm chat-1";

/// Inspect or end a multi-turn session.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct SessionArgs {
    #[command(subcommand)]
    pub command: SessionCommand,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Show a session's turns, remaining TTL, KV cache and replica.
    #[command(after_help = "\
Exits 4 when no live session has this id in this --scope.

Examples:
  orchctl session get chat-1
  orchctl --scope ci-42 --json session get chat-1")]
    Get {
        /// The session id.
        #[arg(value_parser = super::session_id_arg)]
        session_id: String,
    },
    /// End a session and evict its KV cache.
    #[command(after_help = "\
Exits 4 when no live session has this id in this --scope (also when it
already ended or expired). Tasks already admitted in the session still run.

Examples:
  orchctl session rm chat-1
  orchctl --scope ci-42 --json session rm chat-1")]
    Rm {
        /// The session id.
        #[arg(value_parser = super::session_id_arg)]
        session_id: String,
    },
}

pub async fn run(ctx: &Ctx, args: SessionArgs) -> Result<(), Failure> {
    match args.command {
        SessionCommand::Get { session_id } => {
            let info = ctx.client.session(&session_id).await?;
            if ctx.out.json {
                ctx.out.json_line(&info)?;
            } else {
                for (key, value) in fields(&info) {
                    ctx.out.line(&field(key, &value, 10))?;
                }
            }
        }
        SessionCommand::Rm { session_id } => {
            ctx.client.end_session(&session_id).await?;
            if ctx.out.json {
                #[derive(serde::Serialize)]
                struct Ended<'a> {
                    session_id: &'a str,
                    ended: bool,
                }
                ctx.out.json_line(&Ended {
                    session_id: &session_id,
                    ended: true,
                })?;
            } else {
                ctx.out.line(&format!("ended session {session_id}"))?;
            }
        }
    }
    Ok(())
}

fn fields(info: &SessionInfo) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("session", info.session_id.clone()),
        ("turns", info.turns.to_string()),
        ("ttl", format!("{} ms remaining", info.ttl_ms_remaining)),
        (
            "kv",
            format!(
                "{} bytes, {}",
                info.kv_bytes,
                if info.kv_warmth { "warm" } else { "cold" }
            ),
        ),
    ];
    if let Some(replica) = &info.replica_id {
        fields.push(("replica", replica.clone()));
    }
    fields
}
