//! `orchctl replicasets`: `GET /v1/replicasets`.

use clap::Args;
use orchctl::contracts::control::ReplicaSet;

use super::Ctx;
use crate::exit::Failure;
use crate::output::engine_str;

const AFTER_HELP: &str = "\
One block per pool's replica set: engine and version, model and digest,
sampler profile, replicas, current load, and the service levels of its last
completed tasks (time to first token p50/p99, tokens per second).
A control-plane command: with API keys, it needs an admin key.

Examples:
  orchctl replicasets
  orchctl --json replicasets | jq '.replica_sets[] | {pool_id, slo}'";

/// Show each replica set's versions, load and recent service levels.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ReplicaSetsArgs {}

pub async fn run(ctx: &Ctx, _args: ReplicaSetsArgs) -> Result<(), Failure> {
    let sets = ctx.client.replica_sets().await?;
    if ctx.out.json {
        ctx.out.json_line(&sets)?;
        return Ok(());
    }
    if sets.replica_sets.is_empty() {
        ctx.out.note("no replica sets");
    }
    for set in &sets.replica_sets {
        for line in block(set) {
            ctx.out.line(&line)?;
        }
    }
    Ok(())
}

fn block(set: &ReplicaSet) -> Vec<String> {
    let slo = &set.slo;
    let slo_line = if slo.completed == 0 {
        "no completed tasks yet".to_owned()
    } else {
        format!(
            "{} completed, ttft p50 {} ms, p99 {} ms, {:.1} tok/s",
            slo.completed, slo.ttft_p50_ms, slo.ttft_p99_ms, slo.tokens_per_s
        )
    };
    vec![
        format!(
            "{}  {}  {}",
            set.pool_id,
            engine_str(&set.engine, &set.engine_version),
            set.model_ref
        ),
        format!("  digest    {}", set.model_digest),
        format!("  sampler   {}", set.sampler_profile_version),
        format!("  replicas  {}", set.replicas.join(", ")),
        format!(
            "  load      {}/{} active, queue {}",
            set.load.active, set.load.slots, set.load.queue_depth
        ),
        format!("  slo       {slo_line}"),
    ]
}
