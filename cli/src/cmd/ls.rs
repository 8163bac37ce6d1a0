//! `orchctl ls`: `GET /v1/tasks`, one page or (`--all`) every page.

use clap::{Args, ValueEnum};
use orchctl::ListOptions;
use orchctl::contracts::{TaskList, TaskState, TaskStatus};

use super::Ctx;
use crate::exit::Failure;
use crate::output::table;

const AFTER_HELP: &str = "\
Lists the tasks of this --scope in admission order. Without --all one page
is printed, and a note on stderr gives the cursor of the next one.

Examples:
  orchctl --scope ci-42 ls
  orchctl ls --state running
  orchctl ls --all --limit 500 --json | jq -r '.items[].task_id'";

/// List the tasks of the scope, oldest first.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct LsArgs {
    /// Only tasks in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,

    /// Page size, 1–500 (the server's default is 100).
    #[arg(long)]
    pub limit: Option<u32>,

    /// Follow the cursors and list every page.
    #[arg(long, short)]
    pub all: bool,

    /// Start at this page (a `next_cursor` of an earlier listing).
    #[arg(long, conflicts_with = "all")]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Queued,
    Running,
    Completed,
    Failed,
    Canceled,
}

impl From<StateArg> for TaskState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Queued => TaskState::Queued,
            StateArg::Running => TaskState::Running,
            StateArg::Completed => TaskState::Completed,
            StateArg::Failed => TaskState::Failed,
            StateArg::Canceled => TaskState::Canceled,
        }
    }
}

pub async fn run(ctx: &Ctx, args: LsArgs) -> Result<(), Failure> {
    let mut options = ListOptions {
        state: args.state.map(TaskState::from),
        limit: args.limit,
        cursor: args.cursor,
    };
    let mut page = ctx.client.list(&options).await?;
    if args.all {
        let mut items = std::mem::take(&mut page.items);
        while let Some(cursor) = page.next_cursor.take() {
            options.cursor = Some(cursor);
            page = ctx.client.list(&options).await?;
            items.append(&mut page.items);
        }
        page = TaskList {
            items,
            next_cursor: None,
        };
    }
    if ctx.out.json {
        ctx.out.json_line(&page)?;
        return Ok(());
    }
    if page.items.is_empty() {
        ctx.out.note("no tasks in this scope");
    } else {
        for line in rows(&page.items) {
            ctx.out.line(&line)?;
        }
    }
    if let Some(cursor) = &page.next_cursor {
        ctx.out.note(&format!(
            "-- more tasks: add --all, or --cursor {cursor} for the next page"
        ));
    }
    Ok(())
}

fn rows(items: &[TaskStatus]) -> Vec<String> {
    let rows = items
        .iter()
        .map(|task| {
            let detail = match task.state.known() {
                Some(TaskState::Queued) => task
                    .queue_position
                    .map(|p| format!("position {p}"))
                    .unwrap_or_default(),
                Some(TaskState::Running) => task
                    .replica_id
                    .as_ref()
                    .map(|r| format!("on {r}"))
                    .unwrap_or_default(),
                Some(TaskState::Failed) => task
                    .error
                    .as_ref()
                    .map(|e| e.code.to_string())
                    .unwrap_or_default(),
                Some(TaskState::Completed | TaskState::Canceled) => task
                    .finish_reason
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                // A state this orchctl does not know (ORCH-9015): no detail.
                None => String::new(),
            };
            [
                task.task_id.clone(),
                task.state.to_string(),
                task.pool_id.clone(),
                task.priority.to_string(),
                task.tokens_out.to_string(),
                detail,
            ]
        })
        .collect();
    table(
        ["TASK", "STATE", "POOL", "PRIORITY", "TOKENS", "DETAIL"],
        rows,
    )
}
