//! `orchctl pools`: `GET /v1/pools`.

use clap::Args;
use orchctl::contracts::PoolList;

use super::Ctx;
use crate::exit::Failure;
use crate::output::table;

const AFTER_HELP: &str = "\
A control-plane command: when the server has API keys, it needs an admin key
(a client key exits 6 with FORBIDDEN).

Examples:
  orchctl pools
  orchctl --json pools | jq -r '.pools[] | select(.draining) | .pool_id'";

/// List the pools: engine, model, ready replicas, queue and drain state.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct PoolsArgs {}

pub async fn run(ctx: &Ctx, _args: PoolsArgs) -> Result<(), Failure> {
    let pools = ctx.client.pools().await?;
    if ctx.out.json {
        ctx.out.json_line(&pools)?;
        return Ok(());
    }
    if pools.pools.is_empty() {
        ctx.out.note("no pools configured");
    }
    for line in rows(&pools) {
        ctx.out.line(&line)?;
    }
    Ok(())
}

fn rows(pools: &PoolList) -> Vec<String> {
    table(
        ["POOL", "ENGINE", "MODEL", "READY", "QUEUE", "ADMISSION"],
        pools
            .pools
            .iter()
            .map(|pool| {
                [
                    pool.pool_id.clone(),
                    pool.engine.clone(),
                    pool.model_ref.clone(),
                    format!("{}/{}", pool.ready_replicas, pool.replicas),
                    format!("{}/{}", pool.queue_depth, pool.queue_capacity),
                    if pool.draining { "draining" } else { "open" }.to_owned(),
                ]
            })
            .collect(),
    )
}
