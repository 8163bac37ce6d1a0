//! `orchctl capabilities`: `GET /v1/capabilities`.

use clap::Args;
use orchctl::contracts::Capabilities;

use super::Ctx;
use crate::exit::Failure;
use crate::output::{field, table};

const AFTER_HELP: &str = "\
A control-plane command: with API keys, it needs an admin key.

Examples:
  orchctl capabilities
  orchctl --json capabilities | jq -e '.features | index(\"sessions\")'";

/// Show the API version, engines, features and each pool's limits.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct CapabilitiesArgs {}

pub async fn run(ctx: &Ctx, _args: CapabilitiesArgs) -> Result<(), Failure> {
    let capabilities = ctx.client.capabilities().await?;
    if ctx.out.json {
        ctx.out.json_line(&capabilities)?;
    } else {
        for line in lines(&capabilities) {
            ctx.out.line(&line)?;
        }
    }
    Ok(())
}

fn lines(capabilities: &Capabilities) -> Vec<String> {
    let mut lines = vec![
        field("api", &capabilities.api_version, 10),
        field("engines", &capabilities.engines.join(", "), 10),
        field("features", &capabilities.features.join(", "), 10),
    ];
    lines.extend(table(
        ["POOL", "ENGINE", "CONTEXT", "MAX TOKENS", "SLOTS"],
        capabilities
            .pools
            .iter()
            .map(|pool| {
                [
                    pool.pool_id.clone(),
                    pool.engine.clone(),
                    pool.ctx_limit.to_string(),
                    pool.max_tokens_limit.to_string(),
                    pool.slots.to_string(),
                ]
            })
            .collect(),
    ));
    lines
}
