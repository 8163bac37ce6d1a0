//! `orchctl status`: `GET /v1/tasks/{id}`.

use clap::Args;
use orchctl::contracts::{TaskState, TaskStatus};

use super::Ctx;
use crate::exit::Failure;
use crate::output::enum_str;

const AFTER_HELP: &str = "\
Exits 5 when the task failed (its error is printed), 4 when no task has this
id in this --scope.

Examples:
  orchctl status t-4f1c2a
  orchctl --scope ci-42 --json status job-1 | jq -r .state";

/// Show a task's state, queue position, replica, token count and outcome.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct StatusArgs {
    /// The task id.
    #[arg(value_parser = super::task_id_arg)]
    pub task_id: String,
}

pub async fn run(ctx: &Ctx, args: StatusArgs) -> Result<(), Failure> {
    let status = ctx.client.status(&args.task_id).await?;
    if ctx.out.json {
        ctx.out.json_line(&status)?;
    } else {
        for (key, value) in fields(&status) {
            ctx.out.line(&format!("{:<10}{value}", format!("{key}:")))?;
        }
    }
    match (status.state.known(), status.error) {
        (Some(TaskState::Failed), Some(envelope)) => Err(Failure::TaskFailed(Box::new(envelope))),
        _ => Ok(()),
    }
}

fn fields(status: &TaskStatus) -> Vec<(&'static str, String)> {
    let mut fields = vec![("task", status.task_id.clone())];
    if let Some(scope) = &status.scope {
        fields.push(("scope", scope.clone()));
    }
    fields.push(("state", status.state.to_string()));
    fields.push(("pool", status.pool_id.clone()));
    fields.push(("priority", status.priority.to_string()));
    if let Some(position) = status.queue_position {
        fields.push(("position", position.to_string()));
    }
    if let Some(replica) = &status.replica_id {
        fields.push(("replica", replica.clone()));
    }
    fields.push(("tokens", status.tokens_out.to_string()));
    if let Some(reason) = &status.finish_reason {
        fields.push(("finish", enum_str(reason)));
    }
    if let Some(started) = status.started_at_ms {
        let waited = started.saturating_sub(status.submitted_at_ms);
        fields.push(("waited", format!("{waited} ms")));
        if let Some(finished) = status.finished_at_ms {
            let ran = finished.saturating_sub(started);
            fields.push(("ran", format!("{ran} ms")));
        }
    }
    fields
}
