//! `orchctl cancel`: `POST /v1/tasks/{id}/cancel`.

use clap::Args;

use super::Ctx;
use crate::exit::Failure;

const AFTER_HELP: &str = "\
Once this returns, no further token of the task is delivered; a queued task
never starts. Its stream ends with `finish: canceled`. Canceling a task that
already ended changes nothing and succeeds.

Examples:
  orchctl cancel t-4f1c2a
  orchctl --scope ci-42 --json cancel job-1";

/// Cancel a queued or running task (idempotent).
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct CancelArgs {
    /// The task id.
    #[arg(value_parser = super::task_id_arg)]
    pub task_id: String,
}

pub async fn run(ctx: &Ctx, args: CancelArgs) -> Result<(), Failure> {
    ctx.client.cancel(&args.task_id).await?;
    if ctx.out.json {
        #[derive(serde::Serialize)]
        struct Canceled<'a> {
            task_id: &'a str,
            canceled: bool,
        }
        ctx.out.json_line(&Canceled {
            task_id: &args.task_id,
            canceled: true,
        })?;
    } else {
        ctx.out.line(&format!("canceled {}", args.task_id))?;
    }
    Ok(())
}
