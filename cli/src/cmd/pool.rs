//! `orchctl pool health|drain|reload`: `GET /v1/pools/{id}/health`,
//! `POST /v1/pools/{id}/drain` and `POST /v1/pools/{id}/reload`.

use clap::{Args, Subcommand};
use orchctl::contracts::{PoolActionResponse, PoolHealth, ReloadRequest};

use super::Ctx;
use crate::exit::Failure;
use crate::output::{engine_str, enum_str, table};

const AFTER_HELP: &str = "\
Control-plane commands: when the server has API keys, they need an admin key
(a client key exits 6 with FORBIDDEN). An unknown pool exits 4.

Examples:
  orchctl pool health default
  orchctl pool drain default --deadline-ms 30000
  orchctl pool reload default --model-ref gguf:/models/qwen2.5-0.5b-q4.gguf";

/// Inspect, drain or reload one pool.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct PoolArgs {
    #[command(subcommand)]
    pub command: PoolCommand,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Show the pool's state and one line per replica.
    ///
    /// Whether the pool is live, ready and draining, its queue depth, and per
    /// replica: state, running tasks / slots, engine, model, last error.
    #[command(after_help = "\
Exits 0 whatever the pool's state; for a script, test the JSON:

Examples:
  orchctl pool health default
  orchctl --json pool health default | jq -e .ready")]
    Health {
        /// The pool id.
        pool_id: String,
    },
    /// Close the pool's admission now, end what it holds after a deadline.
    #[command(after_help = "\
New submissions to the pool are refused at once (503 POOL_UNAVAILABLE, exit 3).
Queued and running tasks continue until the deadline; those still queued or
running then end with POOL_UNAVAILABLE. The pool stays draining until a
successful `orchctl pool reload`.

Examples:
  orchctl pool drain default --deadline-ms 30000
  orchctl pool drain default --deadline-ms 0      # end everything now")]
    Drain {
        /// The pool id.
        pool_id: String,

        /// How long queued and running tasks may still take, in ms.
        #[arg(long, value_name = "MS")]
        deadline_ms: u64,
    },
    /// Swap the pool onto another model, atomically.
    ///
    /// The new replicas take over only when all of them are ready; else the
    /// old ones keep serving.
    #[command(after_help = "\
Waits until every new replica is ready (at most --ready-timeout-ms), then
swaps them in and reopens a drained pool. When one is not ready in time the
call fails with POOL_UNREADY (exit 3) saying why, and nothing changes: the old
replicas keep serving. Tasks running on the old replicas finish there.

Examples:
  orchctl pool reload default --model-ref gguf:/models/qwen2.5-0.5b-q4.gguf
  orchctl pool reload default --model-ref builtin:tiny-words --ready-timeout-ms 5000")]
    Reload {
        /// The pool id.
        pool_id: String,

        /// The model to load, in the engine's notation (e.g. `gguf:PATH`).
        #[arg(long, value_name = "REF")]
        model_ref: String,

        /// How long the new replicas may take to become ready (the server's
        /// default is 30000).
        #[arg(long, value_name = "MS")]
        ready_timeout_ms: Option<u64>,
    },
}

pub async fn run(ctx: &Ctx, args: PoolArgs) -> Result<(), Failure> {
    match args.command {
        PoolCommand::Health { pool_id } => {
            let health = ctx.client.pool_health(&pool_id).await?;
            if ctx.out.json {
                ctx.out.json_line(&health)?;
            } else {
                for line in health_lines(&health) {
                    ctx.out.line(&line)?;
                }
            }
        }
        PoolCommand::Drain {
            pool_id,
            deadline_ms,
        } => {
            let action = ctx.client.drain_pool(&pool_id, deadline_ms).await?;
            if ctx.out.json {
                ctx.out.json_line(&action)?;
            } else {
                ctx.out.line(&format!(
                    "pool {} is draining: admission closed; tasks it still holds in {deadline_ms} ms end with POOL_UNAVAILABLE",
                    action.pool_id
                ))?;
                ctx.out.note(&format!(
                    "reopen it with: orchctl pool reload {} --model-ref {}",
                    action.pool_id, action.model_ref
                ));
            }
        }
        PoolCommand::Reload {
            pool_id,
            model_ref,
            ready_timeout_ms,
        } => {
            ctx.out.note(&format!(
                "reloading pool {pool_id} onto {model_ref}; waiting for the new replicas to be ready"
            ));
            let request = ReloadRequest {
                model_ref,
                ready_timeout_ms,
            };
            let action = ctx.client.reload_pool(&pool_id, &request).await?;
            if ctx.out.json {
                ctx.out.json_line(&action)?;
            } else {
                ctx.out.line(&reloaded(&action))?;
            }
        }
    }
    Ok(())
}

fn health_lines(health: &PoolHealth) -> Vec<String> {
    let yes_no = |value: bool, yes: &str, no: &str| if value { yes } else { no }.to_owned();
    let mut states = vec![
        yes_no(health.live, "live", "not live"),
        yes_no(health.ready, "ready", "not ready"),
    ];
    if health.draining {
        states.push("draining".into());
    }
    states.push(format!("queue {}", health.queue_depth));
    let mut lines = vec![format!("pool {}: {}", health.pool_id, states.join(", "))];
    lines.extend(table(
        [
            "REPLICA",
            "STATE",
            "ACTIVE",
            "ENGINE",
            "MODEL",
            "LAST ERROR",
        ],
        health
            .replicas
            .iter()
            .map(|replica| {
                [
                    replica.replica_id.clone(),
                    enum_str(&replica.state),
                    format!("{}/{}", replica.active, replica.slots),
                    engine_str(&replica.engine, &replica.engine_version),
                    replica.model_ref.clone(),
                    replica.last_error.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    ));
    lines
}

fn reloaded(action: &PoolActionResponse) -> String {
    format!(
        "pool {} reloaded onto {} (replicas {}){}",
        action.pool_id,
        action.model_ref,
        action.replicas.join(", "),
        if action.draining {
            ", still draining"
        } else {
            ", admission open"
        }
    )
}
