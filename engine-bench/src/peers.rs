//! `engine-bench --peers`: orchestratord beside the routers of its field, in
//! one run, in front of one llama-server (issue 14). The routers come from
//! PyPI (`scripts/bench/peers-setup.sh` installs them in a venv):
//! vllm-router (vLLM's) and smg (SGLang's gateway, package `sglang-router`).
//!
//! Sides, each request on a fresh connection, 64 tokens by default:
//! - direct: llama-server's `POST /v1/completions` (`stream: true`);
//! - vllm-router and smg: the same request through each router;
//! - orchestratord, OpenAI surface: its `POST /v1/completions`;
//! - orchestratord, task API: `POST /v1/tasks`, then `GET …/stream`.
//!
//! One request per side per round, the sides' order rotated every round, so
//! a slow moment of the machine does not fall on one side. Then, for each
//! count of `concurrent` streams, that many at once through each side: how
//! many failed, the retries the router's own metrics admit (a retried
//! request is a silent one to a client), and the median decode rate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{Process, Timing, ms, percentile, read_stream};

/// A router process, killed when dropped.
struct Router {
    name: &'static str,
    url: String,
    metrics: Option<String>,
    _process: Process,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Start one router (`program`, then `subcommand` if it has one) on a port
/// of its own, in front of llama-server alone, round robin, with its
/// Prometheus metrics on another port.
fn start_router(
    name: &'static str,
    program: &Path,
    subcommand: Option<&str>,
    llama: &str,
) -> anyhow::Result<Router> {
    let (port, metrics) = (free_port()?, free_port()?);
    let child = Command::new(program)
        .args(subcommand)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--worker-urls", llama, "--policy", "round_robin"])
        .args(["--prometheus-port", &metrics.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {}; fix: bash scripts/bench/peers-setup.sh",
                program.display()
            )
        })?;
    Ok(Router {
        name,
        url: format!("http://127.0.0.1:{port}"),
        metrics: Some(format!("http://127.0.0.1:{metrics}/metrics")),
        _process: Process(child),
    })
}

/// Both routers. smg keeps its default backend: its `openai` one does not
/// relay `/v1/completions`.
fn start_routers(venv: &Path, llama: &str) -> anyhow::Result<Vec<Router>> {
    Ok(vec![
        start_router("vllm-router", &venv.join("bin/vllm-router"), None, llama)?,
        start_router("smg", &venv.join("bin/smg"), Some("launch"), llama)?,
    ])
}

/// One request of `side`, on a connection of its own.
async fn one(side: &Side, i: usize, n: u32) -> anyhow::Result<Timing> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let started = Instant::now();
    let prompt = format!("peer {i:05}");
    if side.task_api {
        let admitted: serde_json::Value = http
            .post(format!("{}/v1/tasks", side.url))
            .json(&json!({"prompt": prompt, "max_tokens": n, "seed": i}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = admitted["task_id"].as_str().context("task_id")?;
        let response = http
            .get(format!("{}/v1/tasks/{id}/stream", side.url))
            .send()
            .await?
            .error_for_status()?;
        return read_stream(response, started, |e| e.contains("event: token")).await;
    }
    let response = http
        .post(format!("{}/v1/completions", side.url))
        .json(&json!({"model": side.model, "prompt": prompt, "max_tokens": n, "seed": i, "stream": true}))
        .send()
        .await?
        .error_for_status()?;
    read_stream(response, started, |e| {
        e.contains("\"text\":\"") && !e.contains("\"text\":\"\"")
    })
    .await
}

struct Side {
    name: String,
    url: String,
    model: &'static str,
    task_api: bool,
    metrics: Option<String>,
}

/// Wait until a side streams an answer (the routers find their worker first).
async fn until_serving(side: &Side) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match one(side, 0, 2).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("{} did not serve within 60 s: {e:#}", side.name)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The median decode rate of `timings`.
fn median_rate(timings: &[Timing]) -> f64 {
    let mut rates: Vec<f64> = timings.iter().map(|t| t.tokens_per_s).collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// The sum of the samples of every metric whose name speaks of retries.
async fn retries(metrics: &Option<String>) -> Option<f64> {
    let text = reqwest::get(metrics.as_ref()?)
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains("retr"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

pub async fn run(
    venv: &Path,
    llama: &str,
    orch: &str,
    rounds: usize,
    max_tokens: u32,
    concurrent: &[usize],
) -> anyhow::Result<()> {
    let routers = start_routers(venv, llama)?;
    let mut sides = vec![Side {
        name: "llama-server direct".into(),
        url: llama.into(),
        model: "any",
        task_api: false,
        metrics: None,
    }];
    for router in &routers {
        sides.push(Side {
            name: format!("{} in front", router.name),
            url: router.url.clone(),
            model: "any",
            task_api: false,
            metrics: router.metrics.clone(),
        });
    }
    sides.push(Side {
        name: "orchestratord /v1/completions".into(),
        url: orch.into(),
        model: "default",
        task_api: false,
        metrics: None,
    });
    sides.push(Side {
        name: "orchestratord /v1/tasks + stream".into(),
        url: orch.into(),
        model: "default",
        task_api: true,
        metrics: None,
    });
    for side in &sides {
        until_serving(side).await?;
    }
    let mut timings: Vec<Vec<Timing>> = sides.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..sides.len() {
            let s = (round + k) % sides.len();
            timings[s].push(one(&sides[s], round * sides.len() + k + 1, max_tokens).await?);
        }
    }
    println!(
        "peers: {rounds} rounds, {max_tokens} tokens per request, a fresh connection each, order rotated; one llama-server on loopback"
    );
    println!(
        "{:>34} | {:>9} | {:>9} | {:>9} | {:>10} | {:>15}",
        "path", "TTFT p50", "p90", "p99", "added p50", "tokens/s"
    );
    let ttfts = |timing: &[Timing]| {
        let mut t: Vec<Duration> = timing.iter().map(|t| t.ttft).collect();
        t.sort();
        t
    };
    let direct_ttft = percentile(&ttfts(&timings[0]), 0.5);
    let direct_rate = median_rate(&timings[0]);
    for (side, timing) in sides.iter().zip(&timings) {
        let t = ttfts(timing);
        let p50 = percentile(&t, 0.5);
        let rate = median_rate(timing);
        println!(
            "{:>34} | {:>6.2} ms | {:>6.2} ms | {:>6.2} ms | {:>+7.2} ms | {:>6.1} ({:>4.0}%)",
            side.name,
            ms(p50),
            ms(percentile(&t, 0.9)),
            ms(percentile(&t, 0.99)),
            ms(p50) - ms(direct_ttft),
            rate,
            100.0 * rate / direct_rate,
        );
    }
    for &streams in concurrent {
        println!("{streams} streams at once through each side:");
        println!(
            "{:>34} | {:>6} | {:>14} | {:>15}",
            "path", "failed", "router retries", "tokens/s"
        );
        let mut direct_rate = None;
        for side in &sides {
            let before = retries(&side.metrics).await;
            let requests = (0..streams).map(|c| one(side, 100_000 + c, max_tokens));
            let (done, failed): (Vec<_>, Vec<_>) = futures::future::join_all(requests)
                .await
                .into_iter()
                .partition(Result::is_ok);
            let after = retries(&side.metrics).await;
            let retried = match (before, after) {
                (Some(b), Some(a)) => format!("{}", a - b),
                _ if side.metrics.is_some() => "metrics unread".into(),
                _ => "-".into(),
            };
            let done: Vec<Timing> = done.into_iter().flatten().collect();
            let rate = if done.is_empty() {
                0.0
            } else {
                median_rate(&done)
            };
            let base = *direct_rate.get_or_insert(rate);
            println!(
                "{:>34} | {:>6} | {:>14} | {:>6.1} ({:>4.0}%)",
                side.name,
                failed.len(),
                retried,
                rate,
                100.0 * rate / base,
            );
        }
    }
    Ok(())
}

/// The venv `scripts/bench/peers-setup.sh` installs the routers in.
pub fn default_venv() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/orchqueue/peers-venv")
}
