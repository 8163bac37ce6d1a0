//! `orch-bench scale`: what a deep queue costs (issue 14). At each depth
//! (10, 1k, 10k, 100k queued tasks with 64-byte prompts, SQLite store):
//!
//! - **admission**: 500 `POST /v1/tasks` one after another at that depth,
//!   latency p50/p99;
//! - **dispatch**: 500 more tasks dispatched and run to their end by fast
//!   builtin replicas (`max_tokens: 1`) while the rest stay queued: time per
//!   task.
//!
//! Then a **restart** at the deepest: the daemon binary (`orchestratord`,
//! next to this one) started on that store, time until `/readyz` answers
//! 200, its anonymous resident memory (heap, not the store file's mapped
//! pages) less that of the same daemon on an empty store (per queued task),
//! the queue positions it reports against those before the restart, and
//! which task it dispatches first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use contracts::config::{BuiltinEngineConfig, Config, EngineConfig, QueueConfig, ReplicaConfig};
use orchestratord::store::StoreLocation;
use serde_json::{Value, json};

use crate::{http_client, percentile};

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Queue depths to measure at; the restart is measured at the last.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000,100000")]
    depths: Vec<usize>,
    /// Admissions timed, and tasks dispatched, at each depth.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// A 64-byte prompt, as the memory figure asks.
fn body(n: usize, task_id: Option<&str>) -> Value {
    let prompt = format!("{:<64}", format!("scale benchmark prompt {n}"));
    let mut body = json!({
        "prompt": &prompt[..64],
        "max_tokens": 1,
        "priority": if n.is_multiple_of(4) { "batch" } else { "interactive" },
    });
    if let Some(id) = task_id {
        body["task_id"] = json!(id);
    }
    body
}

fn config(capacity: usize, slots: u32, ttft_ms: u64) -> Config {
    let mut config = Config::default();
    let pool = &mut config.pools[0];
    pool.queue = QueueConfig {
        capacity: capacity as u32,
        ..QueueConfig::default()
    };
    pool.replicas = vec![ReplicaConfig {
        id: "r0".into(),
        engine: EngineConfig::Builtin(BuiltinEngineConfig {
            tokens_per_s: 1_000_000.0,
            ttft_ms,
            slots,
            ..BuiltinEngineConfig::default()
        }),
    }];
    config
}

struct DepthFigures {
    depth: usize,
    admit_us: Vec<u64>,
    dispatch_us_per_task: f64,
}

pub async fn main(args: &ScaleArgs) -> anyhow::Result<()> {
    ensure!(!args.depths.is_empty(), "--depths is empty");
    let client = http_client()?;
    let mut rows = Vec::new();
    let mut restart = None;
    for (i, &depth) in args.depths.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("scale.db");
        let capacity = depth + 2 * args.samples + 100;
        let server = orchestratord::start(
            config(capacity, 8, 0),
            "127.0.0.1:0",
            StoreLocation::Sqlite(store.clone()),
        )
        .await?;
        let handle = server.test_handle();
        handle.hold_dispatch("default", true);
        let tasks = format!("{}/v1/tasks", server.url());
        eprintln!("[scale] filling the queue to {depth}");
        fill(&tasks, depth).await?;
        // Admission at this depth, one request at a time.
        let mut admit_us = Vec::with_capacity(args.samples);
        let mut samples = Vec::new();
        for n in 0..args.samples {
            let id = format!("sample-{n}");
            let sent = Instant::now();
            let answer = client
                .post(&tasks)
                .json(&body(depth + n, Some(&id)))
                .send()
                .await?;
            ensure!(
                answer.status() == 202,
                "admission answered {}",
                answer.status()
            );
            answer.bytes().await?;
            admit_us.push(sent.elapsed().as_micros() as u64);
            if n % (args.samples / 5).max(1) == 0 {
                samples.push(id);
            }
        }
        admit_us.sort_unstable();
        let mut server = server;
        if i + 1 == args.depths.len() {
            // The restart, before any dispatch: the positions read now are
            // what the restarted daemon must report, less the one task it starts.
            let before = positions(&client, &server.url(), &samples).await?;
            let head = server.test_handle().queue_head("default");
            server.shutdown().await;
            restart = Some(
                measure_restart(
                    &client,
                    &store,
                    capacity,
                    &samples,
                    &before,
                    head,
                    depth + args.samples,
                )
                .await?,
            );
            server = orchestratord::start(
                config(capacity, 8, 0),
                "127.0.0.1:0",
                StoreLocation::Sqlite(store.clone()),
            )
            .await?;
        }
        let handle = server.test_handle();
        handle.hold_dispatch("default", true);
        // Dispatch `samples` tasks of the queue; the rest stay.
        let queued = handle.queue_len("default");
        let started = Instant::now();
        handle.hold_dispatch("default", false);
        while handle.queue_len("default") + args.samples > queued {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        handle.hold_dispatch("default", true);
        let dispatch_us_per_task = started.elapsed().as_micros() as f64 / args.samples as f64;
        rows.push(DepthFigures {
            depth,
            admit_us,
            dispatch_us_per_task,
        });
        server.shutdown().await;
    }
    let restart = restart.context("no restart measured")?;
    if args.json {
        let depths: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "queued": r.depth,
                    "admission_ms": {"p50": percentile(&r.admit_us, 50.0) as f64 / 1e3, "p99": percentile(&r.admit_us, 99.0) as f64 / 1e3},
                    "dispatch_us_per_task": r.dispatch_us_per_task,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"depths": depths, "restart": restart}))?
        );
        return Ok(());
    }
    let base = &rows[0];
    println!(
        "queue depth | admission p50 | admission p99 | dispatch per task (ratio to {} queued)",
        base.depth
    );
    for r in &rows {
        println!(
            "{:>11} | {:>10.2} ms | {:>10.2} ms | {:>9.1} µs ({:.2}×)",
            r.depth,
            percentile(&r.admit_us, 50.0) as f64 / 1e3,
            percentile(&r.admit_us, 99.0) as f64 / 1e3,
            r.dispatch_us_per_task,
            r.dispatch_us_per_task / base.dispatch_us_per_task,
        );
    }
    println!(
        "restart with {} queued: ready in {:.2} s; {:.0} bytes per queued task ({} MB anonymous memory, {} MB on an empty store); positions {}; first dispatch {}",
        restart["queued"],
        restart["ready_s"].as_f64().unwrap_or_default(),
        restart["bytes_per_task"].as_f64().unwrap_or_default(),
        restart["rss_mb"],
        restart["rss_empty_mb"],
        if restart["positions_right"] == json!(true) {
            "right"
        } else {
            "WRONG"
        },
        if restart["first_dispatch_in_order"] == json!(true) {
            "in order"
        } else {
            "OUT OF ORDER"
        },
    );
    Ok(())
}

/// `depth` admissions from 32 clients.
async fn fill(tasks: &str, depth: usize) -> anyhow::Result<()> {
    let urls = [tasks.to_owned()];
    let figures = crate::post_load_with(&urls, depth, 32, 0, |n| body(n, None)).await?;
    ensure!(
        figures.errors == 0,
        "{} admissions failed while filling",
        figures.errors
    );
    Ok(())
}

async fn positions(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
) -> anyhow::Result<Vec<(String, Option<u64>)>> {
    let mut out = Vec::new();
    for id in ids {
        let status: Value = client
            .get(format!("{base}/v1/tasks/{id}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        out.push((id.clone(), status["queue_position"].as_u64()));
    }
    Ok(out)
}

/// The daemon binary beside this one, started on `store`, ready or failed.
struct Daemon {
    child: Child,
    url: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("orchestratord");
    ensure!(
        path.exists(),
        "{} is missing: build it (`cargo build --release -p orchestratord`)",
        path.display()
    );
    Ok(path)
}

async fn start_daemon(
    client: &reqwest::Client,
    store: &Path,
    capacity: usize,
) -> anyhow::Result<(Daemon, Duration)> {
    let dir = store.parent().context("store has a directory")?;
    let config_path = dir.join("scale-config.json");
    // One slot and a first token a minute away: exactly one task starts,
    // and it must be the first in dispatch order.
    std::fs::write(
        &config_path,
        serde_json::to_vec(&config(capacity, 1, 60_000))?,
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let started = Instant::now();
    let child = Command::new(daemon_binary()?)
        .arg("--config")
        .arg(&config_path)
        .arg("--store")
        .arg(store)
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let daemon = Daemon {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    loop {
        if let Ok(answer) = client.get(format!("{}/readyz", daemon.url)).send().await
            && answer.status() == 200
        {
            return Ok((daemon, started.elapsed()));
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the daemon was not ready within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn rss_bytes(daemon: &Daemon) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .context("no RssAnon")?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

async fn measure_restart(
    client: &reqwest::Client,
    store: &Path,
    capacity: usize,
    samples: &[String],
    before: &[(String, Option<u64>)],
    head: Option<String>,
    before_depth: usize,
) -> anyhow::Result<Value> {
    let empty_dir = tempfile::tempdir()?;
    let (empty, _) = start_daemon(client, &empty_dir.path().join("empty.db"), capacity).await?;
    let rss_empty = rss_bytes(&empty)?;
    drop(empty);
    let (daemon, ready) = start_daemon(client, store, capacity).await?;
    // Let the one slot take its task.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss = rss_bytes(&daemon)?;
    let queued = before_depth;
    let after = positions(client, &daemon.url, samples).await?;
    // One task started: every sample moved up by exactly one place.
    let positions_right = before
        .iter()
        .zip(&after)
        .all(|((_, b), (_, a))| matches!((b, a), (Some(b), Some(a)) if *a + 1 == *b));
    // The first dispatch is the task that was at the head of the queue.
    let first = first_running(client, &daemon.url).await?;
    Ok(json!({
        "queued": queued,
        "ready_s": ready.as_secs_f64(),
        "rss_mb": rss / (1 << 20),
        "rss_empty_mb": rss_empty / (1 << 20),
        "bytes_per_task": rss.saturating_sub(rss_empty) as f64 / queued as f64,
        "positions_before": before,
        "positions_after": after,
        "positions_right": positions_right,
        "first_dispatch": first,
        "first_dispatch_in_order": first.is_some() && first == head,
    }))
}

/// The one running task, by the task list.
async fn first_running(client: &reqwest::Client, base: &str) -> anyhow::Result<Option<String>> {
    let list: Value = client
        .get(format!("{base}/v1/tasks?state=running&limit=10"))
        .send()
        .await?
        .json()
        .await?;
    Ok(list["items"][0]["task_id"].as_str().map(str::to_owned))
}
