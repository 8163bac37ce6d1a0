//! `orch-bench cluster`: admission throughput and latency, and time to first token,
//! for one, two and three daemons on one PostgreSQL database next to one daemon on
//! SQLite, in one run (ORCH-7012). Clients spread over the daemons round robin, so
//! with n daemons (n-1)/n of the requests take the follower's hop to the dispatcher.
//! Two cores cannot show a speed-up: read the ratios.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use contracts::config::{BuiltinEngineConfig, Config, QueueConfig};
use futures::StreamExt;
use orchestratord::RunningServer;
use orchestratord::cluster::Role;
use orchestratord::store::{PostgresStore, StoreLocation};
use serde_json::json;

use crate::{LoadFigures, SseParser, http_client, percentile, post_load, warmup_of};

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The PostgreSQL server (`postgres://user@host:port/db`); each setup gets a fresh
    /// database on it.
    #[arg(long, env = "ORCH_BENCH_POSTGRES_URL")]
    postgres: String,
    /// Admission requests per setup (after a warm-up of requests/10).
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Concurrent keep-alive clients for admission.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Tasks of the time-to-first-token run per setup (8 at a time).
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// The cluster sizes on PostgreSQL to run, beside one daemon on SQLite and one on
    /// PostgreSQL (the baselines of the ratios); e.g. `--daemons 3` to profile one.
    #[arg(long, value_delimiter = ',', default_values_t = [2, 3])]
    daemons: Vec<usize>,
}

struct Setup {
    name: String,
    admission: LoadFigures,
    ttft_us: Vec<u64>,
}

fn config() -> Config {
    let mut config = Config::default();
    config.pools[0].queue = QueueConfig {
        capacity: 100_000,
        ..QueueConfig::default()
    };
    for replica in &mut config.pools[0].replicas {
        replica.engine = contracts::config::EngineConfig::Builtin(BuiltinEngineConfig {
            tokens_per_s: 10_000.0,
            ttft_ms: 0,
            slots: 16,
            ..BuiltinEngineConfig::default()
        });
    }
    config
}

/// `daemons` daemons on one fresh store: SQLite when `postgres` is `None`.
async fn start(
    daemons: usize,
    postgres: Option<&str>,
) -> anyhow::Result<(tempfile::TempDir, Vec<RunningServer>)> {
    let dir = tempfile::tempdir()?;
    let store = match postgres {
        Some(server) => StoreLocation::Postgres(PostgresStore::create_database(server).await?),
        None => StoreLocation::Sqlite(dir.path().join("bench.db")),
    };
    let mut servers = Vec::new();
    for _ in 0..daemons {
        servers.push(orchestratord::start(config(), "127.0.0.1:0", store.clone()).await?);
    }
    Ok((dir, servers))
}

fn dispatcher(servers: &[RunningServer]) -> anyhow::Result<&RunningServer> {
    servers
        .iter()
        .find(|s| {
            s.member()
                .is_none_or(|m| matches!(m.role(), Role::Dispatcher { ready: true, .. }))
        })
        .context("no daemon dispatches")
}

async fn admission(
    args: &ClusterArgs,
    daemons: usize,
    postgres: Option<&str>,
) -> anyhow::Result<LoadFigures> {
    let (_dir, servers) = start(daemons, postgres).await?;
    dispatcher(&servers)?
        .test_handle()
        .hold_dispatch("default", true);
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("{}/v1/tasks", s.url()))
        .collect();
    let warmup = warmup_of(args.requests);
    post_load(&urls, warmup, args.concurrency, 0).await?;
    let figures = post_load(&urls, args.requests, args.concurrency, warmup).await?;
    ensure!(figures.errors == 0, "{} admissions failed", figures.errors);
    for server in servers {
        server.shutdown().await;
    }
    Ok(figures)
}

/// Each task submitted through one daemon and streamed through the next: from the
/// POST to the first token event.
async fn time_to_first_token(
    args: &ClusterArgs,
    daemons: usize,
    postgres: Option<&str>,
) -> anyhow::Result<Vec<u64>> {
    let (_dir, servers) = start(daemons, postgres).await?;
    let urls: Vec<String> = servers.iter().map(RunningServer::url).collect();
    let mut ttft_us = Vec::with_capacity(args.tasks);
    let client = http_client()?;
    for batch in (0..args.tasks).collect::<Vec<_>>().chunks(8) {
        let runs = batch.iter().map(|&n| {
            let (client, submit, read) = (
                client.clone(),
                urls[n % urls.len()].clone(),
                urls[(n + 1) % urls.len()].clone(),
            );
            async move {
                let sent = Instant::now();
                client
                    .post(format!("{submit}/v1/tasks"))
                    .json(&json!({"task_id": format!("ttft-{n}"), "prompt": format!("first token {n}"), "max_tokens": 4}))
                    .send()
                    .await?
                    .error_for_status()?;
                let mut body = client
                    .get(format!("{read}/v1/tasks/ttft-{n}/stream"))
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes_stream();
                let (mut parser, mut events) = (SseParser::default(), Vec::new());
                while let Some(chunk) = body.next().await {
                    parser.feed(&chunk?, &mut events);
                    if events.iter().any(|(event, _)| event == "token") {
                        return anyhow::Ok(sent.elapsed().as_micros() as u64);
                    }
                }
                anyhow::bail!("stream of ttft-{n} ended without a token")
            }
        });
        for first in futures::future::join_all(runs).await {
            ttft_us.push(first?);
        }
    }
    ttft_us.sort_unstable();
    for server in servers {
        server.shutdown().await;
    }
    Ok(ttft_us)
}

pub async fn main(args: ClusterArgs) -> anyhow::Result<()> {
    let mut setups: Vec<(String, usize, Option<&str>)> = vec![
        ("1 daemon, SQLite".into(), 1, None),
        ("1 daemon, PostgreSQL".into(), 1, Some(&args.postgres)),
    ];
    for &n in args.daemons.iter().filter(|n| **n > 1) {
        setups.push((format!("{n} daemons, PostgreSQL"), n, Some(&args.postgres)));
    }
    let mut results = Vec::new();
    for (name, daemons, postgres) in setups {
        let admission = admission(&args, daemons, postgres)
            .await
            .with_context(|| format!("admission, {name}"))?;
        let ttft_us = time_to_first_token(&args, daemons, postgres)
            .await
            .with_context(|| format!("time to first token, {name}"))?;
        results.push(Setup {
            name,
            admission,
            ttft_us,
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "orch-bench cluster: {} admissions x {} clients per setup, {} tasks for time to first token, {} cores, all in one process",
        args.requests,
        args.concurrency,
        args.tasks,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<24} {:>9} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9}",
        "setup", "req/s", "p50 ms", "p99 ms", "vs SQLite", "vs 1 PG", "TTFT p50", "TTFT p99"
    );
    let sqlite = results[0].admission.rps();
    let one_pg = results[1].admission.rps();
    for setup in &results {
        println!(
            "{:<24} {:>9.0} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>9.2} {:>9.2}",
            setup.name,
            setup.admission.rps(),
            setup.admission.pct_ms(50.0),
            setup.admission.pct_ms(99.0),
            setup.admission.rps() / sqlite,
            setup.admission.rps() / one_pg,
            percentile(&setup.ttft_us, 50.0) as f64 / 1000.0,
            percentile(&setup.ttft_us, 99.0) as f64 / 1000.0,
        );
    }
    Ok(())
}
