//! One module per command: its clap `Args` and its `run`. A new command is
//! one more module, one variant of [`Command`] and one arm of
//! [`Command::run`] (and of [`Command::subject`]).

use std::time::Duration;

use clap::{Args, Subcommand};
use orchctl::{Client, RetryPolicy};

use crate::exit::Failure;
use crate::output::{Context, Output, Subject};

pub mod cancel;
pub mod capabilities;
pub mod completions;
pub mod ls;
pub mod pool;
pub mod pools;
pub mod replicasets;
pub mod scope;
pub mod session;
pub mod status;
pub mod stream;
pub mod submit;
pub mod usage;

/// Longest wait between two retries, whatever the server suggests.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Options of every command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Base URL of orchestratord.
    #[arg(
        long,
        env = "ORCH_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,

    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "ORCH_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,

    /// Scope (namespace) of every call: tasks submitted in a scope are seen
    /// only by calls with the same scope. Without it, only unscoped tasks.
    #[arg(long, env = "ORCH_SCOPE", hide_env_values = true, global = true)]
    pub scope: Option<String>,

    /// Machine-readable output: each answer body as one JSON line; streams
    /// as one `{"event": ..., "data": ...}` line per event. Errors go to
    /// stderr as `{"status": N, "error": <envelope>}`.
    #[arg(long, global = true)]
    pub json: bool,

    /// Retry a submission refused with a retriable 429/503 up to N more
    /// times, waiting as long as the server asks (at most 30 s a wait).
    /// The same task id is resent, so a retry never admits a task twice.
    #[arg(long, value_name = "N", default_value_t = 0, global = true)]
    pub retries: u32,
}

/// What a command runs with.
pub struct Ctx {
    pub client: Client,
    pub out: Output,
    pub url: String,
    pub scope: Option<String>,
}

impl Ctx {
    pub fn new(global: &Global) -> Self {
        let mut client = Client::new(&global.url);
        if let Some(scope) = &global.scope {
            client = client.with_scope(scope);
        }
        if let Some(key) = &global.api_key {
            client = client.with_api_key(key);
        }
        if global.retries > 0 {
            client = client.with_retries(RetryPolicy {
                max_attempts: global.retries.saturating_add(1),
                max_wait: MAX_RETRY_WAIT,
            });
        }
        Self {
            client,
            out: Output { json: global.json },
            url: global.url.clone(),
            scope: global.scope.clone(),
        }
    }

    pub fn context(&self, command: &Command) -> Context<'_> {
        Context {
            url: &self.url,
            scope: self.scope.as_deref(),
            subject: command.subject(),
            retries_apply: matches!(command, Command::Submit(_)),
        }
    }
}

/// An id that goes into a URL path must be in the id charset of the spec
/// (ORCH-6014), so that none can turn into a query (`?`), a fragment (`#`)
/// or a dot segment and silently address another resource.
fn id_arg(value: &str, what: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if value.is_empty() || value.len() > 128 || !value.chars().all(allowed) {
        return Err(format!(
            "{what} is 1 to 128 characters from [A-Za-z0-9._:-]"
        ));
    }
    if value.chars().all(|c| c == '.') {
        return Err(format!(
            "{what} cannot be dots only (a URL path drops `.` and `..`)"
        ));
    }
    Ok(value.to_owned())
}

/// Parser of a task id argument (see [`id_arg`]).
pub fn task_id_arg(value: &str) -> Result<String, String> {
    id_arg(value, "a task id")
}

/// Parser of a session id argument (see [`id_arg`]).
pub fn session_id_arg(value: &str) -> Result<String, String> {
    id_arg(value, "a session id")
}

/// Parser of a scope argument (see [`id_arg`]).
pub fn scope_arg(value: &str) -> Result<String, String> {
    id_arg(value, "a scope")
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Submit(submit::SubmitArgs),
    Stream(stream::StreamArgs),
    Status(status::StatusArgs),
    Ls(ls::LsArgs),
    Cancel(cancel::CancelArgs),
    Session(session::SessionArgs),
    Scope(scope::ScopeArgs),
    Pools(pools::PoolsArgs),
    Pool(pool::PoolArgs),
    #[command(name = "replicasets")]
    ReplicaSets(replicasets::ReplicaSetsArgs),
    Capabilities(capabilities::CapabilitiesArgs),
    Usage(usage::UsageArgs),
    Completions(completions::CompletionsArgs),
}

impl Command {
    pub async fn run(self, ctx: &Ctx) -> Result<(), Failure> {
        match self {
            Self::Submit(args) => submit::run(ctx, args).await,
            Self::Stream(args) => stream::run(ctx, args).await,
            Self::Status(args) => status::run(ctx, args).await,
            Self::Ls(args) => ls::run(ctx, args).await,
            Self::Cancel(args) => cancel::run(ctx, args).await,
            Self::Session(args) => session::run(ctx, args).await,
            Self::Scope(args) => scope::run(ctx, args).await,
            Self::Pools(args) => pools::run(ctx, args).await,
            Self::Pool(args) => pool::run(ctx, args).await,
            Self::ReplicaSets(args) => replicasets::run(ctx, args).await,
            Self::Capabilities(args) => capabilities::run(ctx, args).await,
            Self::Usage(args) => usage::run(ctx, args).await,
            Self::Completions(args) => completions::run(args),
        }
    }

    /// What the command addresses, for the hints of its errors.
    pub fn subject(&self) -> Subject {
        match self {
            Self::Submit(_) | Self::Stream(_) | Self::Status(_) | Self::Ls(_) | Self::Cancel(_) => {
                Subject::Task
            }
            Self::Session(_) => Subject::Session,
            Self::Scope(_) => Subject::Scope,
            Self::Usage(_) => Subject::Tenant,
            Self::Pools(_) | Self::Pool(_) | Self::ReplicaSets(_) | Self::Capabilities(_) => {
                Subject::Pool
            }
            Self::Completions(_) => Subject::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{scope_arg, session_id_arg, task_id_arg};

    #[test]
    fn ids_that_would_change_the_url_are_refused() {
        for parse in [task_id_arg, session_id_arg, scope_arg] {
            for ok in ["t-1", "job.2:a_b", "A", ".a", "..b"] {
                assert_eq!(parse(ok).as_deref(), Ok(ok));
            }
            for bad in ["", "a?b", "a#b", "a/b", "a b", "..", ".", "...", "é"] {
                assert!(parse(bad).is_err(), "{bad:?}");
            }
            assert!(parse(&"x".repeat(129)).is_err());
        }
    }
}
