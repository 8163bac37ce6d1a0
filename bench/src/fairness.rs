//! `orch-bench fairness`: a light tenant's queue wait under a flood from
//! two others, with weighted fair share (ORCH-3015) and without it
//! (`queue.fairness: fifo`), beside the bound the spec states (ORCH-3016),
//! and Jain's index of the flooding tenants' served tokens.
//!
//! A real `orchestratord` in process, one builtin replica. Two flooding
//! tenants admit their backlogs in turns before dispatch opens: `heavy`
//! tasks of `--heavy-tokens`, `many` tasks of `--many-tokens`. The light
//! tenant then submits one task every `--every-ms` for `--seconds`. Its
//! waits are start − admission on the server's clock; the served tokens are
//! the costs of the tasks each flooding tenant started while the light
//! tenant submitted, a window in which both stay backlogged (the run fails
//! if either runs out).

use std::time::Duration;

use anyhow::{Context, ensure};
use contracts::config::{
    BuiltinEngineConfig, Config, EngineConfig, Fairness, PoolConfig, QueueConfig, ReplicaConfig,
    Role, TenantConfig,
};
use serde_json::{Value, json};

use crate::{http_client, percentile};

#[derive(Debug, Clone, clap::Args)]
pub struct FairnessArgs {
    /// How long the light tenant keeps submitting.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The light tenant's interval between submissions.
    #[arg(long, default_value_t = 200)]
    every_ms: u64,
    /// Slots of the one replica.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Engine speed, tokens per second per slot.
    #[arg(long, default_value_t = 400.0)]
    tokens_per_s: f64,
    /// `max_tokens` of the heavy flood's tasks.
    #[arg(long, default_value_t = 64)]
    heavy_tokens: u32,
    /// `max_tokens` of the other flood's tasks.
    #[arg(long, default_value_t = 16)]
    many_tokens: u32,
    /// `max_tokens` of the light tenant's tasks.
    #[arg(long, default_value_t = 16)]
    light_tokens: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

const TENANTS: [&str; 3] = ["heavy", "many", "light"];

/// Words of every prompt, which the builtin engine counts as its tokens.
fn prompt(tenant: &str, n: usize) -> String {
    format!("{tenant} task {n}")
}

const PROMPT_TOKENS: u64 = 3;

fn config(args: &FairnessArgs, fairness: Fairness) -> Config {
    Config {
        pools: vec![PoolConfig {
            id: "default".into(),
            replicas: vec![ReplicaConfig {
                id: "r0".into(),
                engine: EngineConfig::Builtin(BuiltinEngineConfig {
                    slots: args.slots,
                    tokens_per_s: args.tokens_per_s,
                    ttft_ms: 0,
                    ..BuiltinEngineConfig::default()
                }),
            }],
            queue: QueueConfig {
                capacity: 100_000,
                fairness,
                ..QueueConfig::default()
            },
            ..PoolConfig::default()
        }],
        tenants: TENANTS
            .iter()
            .map(|id| TenantConfig {
                id: (*id).into(),
                role: Role::Client,
                api_key_sha256: vec![orchestratord::runtime::key_hash(&key(id))],
                max_concurrent: None,
                rate_limit: None,
                token_rate_limit: None,
                weight: 1,
            })
            .collect(),
        ..Config::default()
    }
}

fn key(tenant: &str) -> String {
    format!("{tenant}-bench-key")
}

struct Figures {
    light_waits_ms: Vec<u64>,
    /// Tokens started per flooding tenant in the light tenant's window.
    served: [u64; 2],
}

impl Figures {
    fn jain(&self) -> f64 {
        let x = self.served.map(|v| v as f64);
        let sum: f64 = x.iter().sum();
        sum * sum / (x.len() as f64 * x.iter().map(|v| v * v).sum::<f64>())
    }
}

async fn run(args: &FairnessArgs, fairness: Fairness) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let server = orchestratord::start(
        config(args, fairness),
        "127.0.0.1:0",
        &dir.path().join("f.db"),
    )
    .await?;
    let base = server.url();
    let http = http_client()?;
    let submit = |tenant: &'static str, n: usize, max_tokens: u32| {
        let http = http.clone();
        let url = format!("{base}/v1/tasks");
        async move {
            let answer: Value = http
                .post(url)
                .bearer_auth(key(tenant))
                .json(&json!({ "prompt": prompt(tenant, n), "max_tokens": max_tokens }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(answer)
        }
    };
    // Enough backlog for the lighter-tasked flood to outlast the window
    // with a fair half of the slots, and a fifth more.
    let rate = f64::from(args.slots) * args.tokens_per_s;
    let window_tokens = rate * args.seconds as f64;
    let backlog =
        (0.6 * window_tokens / (PROMPT_TOKENS as f64 + f64::from(args.many_tokens))) as usize + 16;
    server.test_handle().hold_dispatch("default", true);
    for n in 0..backlog {
        submit("heavy", n, args.heavy_tokens).await?;
        submit("many", n, args.many_tokens).await?;
    }
    server.test_handle().hold_dispatch("default", false);
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        submit("light", n, args.light_tokens).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(args.every_ms)).await;
    }
    // Every light task started: its wait is known.
    let light = loop {
        let tasks = list(&http, &base, "light").await?;
        if tasks.len() == n && tasks.iter().all(|t| t["started_at_ms"].is_u64()) {
            break tasks;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let at = |t: &Value, field: &str| t[field].as_u64().unwrap_or(u64::MAX);
    let window = (
        light
            .iter()
            .map(|t| at(t, "submitted_at_ms"))
            .min()
            .context("light tasks")?,
        light
            .iter()
            .map(|t| at(t, "submitted_at_ms"))
            .max()
            .context("light tasks")?,
    );
    let mut waits: Vec<u64> = light
        .iter()
        .map(|t| at(t, "started_at_ms") - at(t, "submitted_at_ms"))
        .collect();
    waits.sort_unstable();
    let mut served = [0; 2];
    for (i, (tenant, max_tokens)) in [("heavy", args.heavy_tokens), ("many", args.many_tokens)]
        .into_iter()
        .enumerate()
    {
        let tasks = list(&http, &base, tenant).await?;
        ensure!(
            tasks.iter().any(|t| at(t, "started_at_ms") >= window.1),
            "{tenant} ran out of backlog in the window; raise the backlog"
        );
        served[i] = tasks
            .iter()
            .filter(|t| (window.0..window.1).contains(&at(t, "started_at_ms")))
            .count() as u64
            * (PROMPT_TOKENS + u64::from(max_tokens));
    }
    server.shutdown().await;
    Ok(Figures {
        light_waits_ms: waits,
        served,
    })
}

async fn list(http: &reqwest::Client, base: &str, tenant: &str) -> anyhow::Result<Vec<Value>> {
    let mut tasks = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = http
            .get(format!("{base}/v1/tasks"))
            .bearer_auth(key(tenant))
            .query(&[("limit", "500")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: Value = request.send().await?.error_for_status()?.json().await?;
        tasks.extend(page["items"].as_array().context("items")?.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(tasks),
        }
    }
}

pub async fn main(args: FairnessArgs) -> anyhow::Result<()> {
    let fair = run(&args, Fairness::Weighted).await?;
    let fifo = run(&args, Fairness::Fifo).await?;
    // ORCH-3016 with equal weights and nothing of the light tenant's queued
    // (S = 0): each of the 2 others is served at most 2 C ahead; the s slots
    // hold at most s C of residual; at r tokens/s per slot.
    let largest = PROMPT_TOKENS + u64::from(args.heavy_tokens.max(args.many_tokens));
    let ahead = 2 * 2 * largest;
    let residual = u64::from(args.slots) * largest;
    let bound_ms =
        ((ahead + residual) as f64 * 1000.0 / (f64::from(args.slots) * args.tokens_per_s)).ceil();
    let row = |f: &Figures| {
        json!({
            "light_wait_ms": {
                "p50": percentile(&f.light_waits_ms, 50.0),
                "p99": percentile(&f.light_waits_ms, 99.0),
                "max": f.light_waits_ms.last().copied().unwrap_or(0),
                "tasks": f.light_waits_ms.len(),
            },
            "served_tokens": { "heavy": f.served[0], "many": f.served[1] },
            "jain": (f.jain() * 1000.0).round() / 1000.0,
        })
    };
    let figures = json!({
        "weighted": row(&fair),
        "fifo": row(&fifo),
        "bound": {
            "work_ahead_tokens": ahead,
            "residual_tokens": residual,
            "wait_ms": bound_ms,
        },
    });
    if args.json {
        println!("{figures}");
        return Ok(());
    }
    println!(
        "light tenant every {} ms for {} s; floods of {}- and {}-token tasks; {} slots at {} tokens/s",
        args.every_ms,
        args.seconds,
        args.heavy_tokens,
        args.many_tokens,
        args.slots,
        args.tokens_per_s
    );
    println!(
        "stated bound (ORCH-3016): {} tokens ahead + {} running = {} ms",
        ahead, residual, bound_ms
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>14} {:>14} {:>7}",
        "fairness", "wait p50", "wait p99", "wait max", "heavy served", "many served", "Jain"
    );
    for (name, f) in [("weighted", &fair), ("fifo", &fifo)] {
        println!(
            "{:<10} {:>6} ms {:>6} ms {:>6} ms {:>14} {:>14} {:>7.3}",
            name,
            percentile(&f.light_waits_ms, 50.0),
            percentile(&f.light_waits_ms, 99.0),
            f.light_waits_ms.last().copied().unwrap_or(0),
            f.served[0],
            f.served[1],
            f.jain()
        );
    }
    Ok(())
}
