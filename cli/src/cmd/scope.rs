//! `orchctl scope purge`: `DELETE /v1/scopes/{scope}`.

use clap::{Args, Subcommand};

use super::Ctx;
use crate::exit::Failure;

const AFTER_HELP: &str = "\
Examples:
  orchctl --scope ci-42 scope purge
  orchctl scope purge ci-42
  orchctl --json scope purge ci-42 | jq .tasks_canceled";

/// Manage a scope (the namespace of tasks and sessions).
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ScopeArgs {
    #[command(subcommand)]
    pub command: ScopeCommand,
}

#[derive(Debug, Subcommand)]
pub enum ScopeCommand {
    /// Cancel and delete everything in a scope (test teardown).
    ///
    /// Cancels every queued or running task of the scope, then deletes its
    /// tasks, their streams and its sessions.
    #[command(after_help = "\
Running and queued tasks end with `finish: canceled`; then nothing of the
scope is left: `status`, `stream` and `session get` answer not found (exit 4).
Purging a scope that holds nothing succeeds with zero counts. Only the
scope of your own tenant (API key) is touched.

Examples:
  orchctl --scope ci-42 scope purge
  orchctl scope purge ci-42
  orchctl --json scope purge ci-42")]
    Purge {
        /// The scope to purge; defaults to --scope / ORCH_SCOPE.
        #[arg(value_parser = super::scope_arg)]
        scope: Option<String>,
    },
}

pub async fn run(ctx: &Ctx, args: ScopeArgs) -> Result<(), Failure> {
    match args.command {
        ScopeCommand::Purge { scope } => {
            let Some(scope) = scope.or_else(|| ctx.scope.clone()) else {
                return Err(Failure::Usage(
                    "no scope to purge: name it (`orchctl scope purge SCOPE`) or set --scope"
                        .into(),
                ));
            };
            let purge = ctx.client.purge_scope(Some(&scope)).await?;
            if ctx.out.json {
                ctx.out.json_line(&purge)?;
            } else {
                ctx.out.line(&format!(
                    "purged scope {}: tasks canceled {}, tasks deleted {}, sessions deleted {}",
                    purge.scope, purge.tasks_canceled, purge.tasks_purged, purge.sessions_purged
                ))?;
            }
        }
    }
    Ok(())
}
