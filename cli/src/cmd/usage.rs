//! `orchctl usage`: `GET /v1/usage`.

use clap::Args;
use orchctl::contracts::UsageReport;

use super::Ctx;
use crate::exit::Failure;
use crate::output::table;

const AFTER_HELP: &str = "\
One row per tenant and pool: tasks queued and running, tokens served (prompt
and generated, since the dispatcher started), the share of the pool's served
tokens that is, and the share fair queuing entitles the tenant to while it
has work (its weight over the weights of the tenants with work in the pool;
\"-\" when the pool's fairness is fifo). Below the table, each tenant's weight,
concurrency quota and token bucket.

Any key may read its own tenant's usage; only an admin key sees every tenant
or may name another one with --tenant (a client key naming another tenant
exits 6 with FORBIDDEN).

Examples:
  orchctl usage
  orchctl usage --tenant team-a
  orchctl --json usage | jq '.tenants[] | {tenant, pools: [.pools[] | {pool_id, served_share, entitled_share}]}'";

/// Show each tenant's queued and running tasks, served tokens and fair share.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct UsageArgs {
    /// Only this tenant (another tenant than the key's needs an admin key).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
}

pub async fn run(ctx: &Ctx, args: UsageArgs) -> Result<(), Failure> {
    let usage = ctx.client.usage(args.tenant.as_deref()).await?;
    if ctx.out.json {
        ctx.out.json_line(&usage)?;
        return Ok(());
    }
    for line in rows(&usage) {
        ctx.out.line(&line)?;
    }
    for tenant in &usage.tenants {
        ctx.out.line(&limits_line(tenant))?;
    }
    Ok(())
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn rows(usage: &UsageReport) -> Vec<String> {
    table(
        [
            "TENANT", "POOL", "QUEUED", "RUNNING", "SERVED", "SHARE", "ENTITLED",
        ],
        usage
            .tenants
            .iter()
            .flat_map(|tenant| {
                tenant.pools.iter().map(|pool| {
                    [
                        tenant.tenant.clone(),
                        pool.pool_id.clone(),
                        pool.queued.to_string(),
                        pool.running.to_string(),
                        pool.served_tokens.to_string(),
                        percent(pool.served_share),
                        pool.entitled_share.map_or("-".into(), percent),
                    ]
                })
            })
            .collect(),
    )
}

fn limits_line(tenant: &orchctl::contracts::control::TenantUsage) -> String {
    let quota = tenant.max_concurrent.map_or("no quota".into(), |max| {
        format!("{}/{max} running", tenant.running)
    });
    let bucket = match (tenant.tokens_available, tenant.token_burst) {
        (Some(available), Some(burst)) => format!("{available}/{burst} tokens in its bucket"),
        _ => "no token rate limit".into(),
    };
    format!(
        "{}: weight {}, {quota}, {bucket}",
        tenant.tenant, tenant.weight
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchctl::contracts::control::{PoolUsage, TenantUsage};

    #[test]
    fn a_row_per_tenant_and_pool_and_a_dash_for_no_entitlement() {
        let usage = UsageReport {
            tenants: vec![TenantUsage {
                tenant: "team-a".into(),
                weight: 2,
                running: 1,
                max_concurrent: Some(4),
                tokens_available: Some(900),
                token_burst: Some(1000),
                pools: vec![
                    PoolUsage {
                        pool_id: "default".into(),
                        queued: 3,
                        running: 1,
                        served_tokens: 120,
                        served_share: 0.25,
                        entitled_share: Some(2.0 / 3.0),
                    },
                    PoolUsage {
                        pool_id: "fifo".into(),
                        queued: 0,
                        running: 0,
                        served_tokens: 0,
                        served_share: 0.0,
                        entitled_share: None,
                    },
                ],
            }],
        };
        let rows = rows(&usage);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert!(
            rows[1].contains("team-a") && rows[1].contains("25.0%") && rows[1].contains("66.7%")
        );
        assert!(rows[2].trim_end().ends_with('-'), "{}", rows[2]);
        assert_eq!(
            limits_line(&usage.tenants[0]),
            "team-a: weight 2, 1/4 running, 900/1000 tokens in its bucket"
        );
    }
}
