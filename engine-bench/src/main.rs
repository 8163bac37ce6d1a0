//! `cargo run -p engine-bench -- --requests 100`: the time to first token
//! that orchestratord adds in front of a real llama-server (ORCH-4020).
//!
//! One llama-server (from `scripts/llama/setup.sh`'s cache, or
//! `ORCH_LLAMA_SERVER` / `ORCH_LLAMA_MODEL`, e.g. the real model at
//! `ORCH_LLAMA_REAL_MODEL`) on loopback, and orchestratord
//! in-process with a pool of one `llamacpp` replica on it. Alternately, with
//! the engine otherwise idle:
//! - direct: `POST /completion` (`stream: true`) → first non-empty `content`;
//! - orchestrated: `POST /v1/tasks` → `GET /v1/tasks/{id}/stream` → first
//!   `token` event, i.e. admission (with the engine's `/tokenize`), the
//!   durable store write, queueing, placement, the engine call and the SSE
//!   relay.
//!
//! Each request streams to its end before the next starts; prompts differ
//! per request (same length) so neither side profits from the prompt cache.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use contracts::config::{Config, EngineConfig, LlamaCppEngineConfig, PoolConfig, ReplicaConfig};
use futures::StreamExt;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Measured requests per side (after the warm-up).
    #[arg(long, default_value_t = 50)]
    requests: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Tokens per request.
    #[arg(long, default_value_t = 8)]
    max_tokens: u32,
}

struct Llama(Child);

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn llama_files() -> anyhow::Result<(PathBuf, PathBuf)> {
    let cache = std::env::var_os("ORCH_LLAMA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/orchqueue/llama")
        });
    let server = std::env::var_os("ORCH_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("bin/llama-server"));
    let model = std::env::var_os("ORCH_LLAMA_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("models/tiny-llama-2l-64.gguf"));
    if !server.is_file() || !model.is_file() {
        bail!(
            "no llama-server ({}) or model ({}): run `bash scripts/llama/setup.sh`",
            server.display(),
            model.display()
        );
    }
    Ok((server, model))
}

async fn start_llama(http: &reqwest::Client) -> anyhow::Result<(Llama, String)> {
    let (server, model) = llama_files()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(&server)
        .args(["-m", &model.display().to_string(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "-c", "8192", "--parallel", "2"])
        .args(["-t", "1", "--seed", "42", "--no-webui"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", server.display()))?;
    let llama = Llama(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{url}/health")).send().await
            && r.status().is_success()
        {
            return Ok((llama, url));
        }
        if Instant::now() > deadline {
            bail!("llama-server did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Read an SSE body to its end; the time at which `first` first matched.
async fn time_to_first(
    response: reqwest::Response,
    started: Instant,
    first: impl Fn(&str) -> bool,
) -> anyhow::Result<Duration> {
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let mut at = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if at.is_none() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if first(&seen) {
                at = Some(started.elapsed());
            }
        }
    }
    at.context("the stream carried no token")
}

async fn direct(http: &reqwest::Client, llama: &str, i: usize, n: u32) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = http
        .post(format!("{llama}/completion"))
        .json(
            &json!({"prompt": format!("direct {i:05}"), "n_predict": n, "seed": i, "stream": true}),
        )
        .send()
        .await?
        .error_for_status()?;
    time_to_first(response, started, |s| {
        s.split("\n\n")
            .any(|event| event.contains("\"content\":\"") && !event.contains("\"content\":\"\""))
    })
    .await
}

async fn orchestrated(
    http: &reqwest::Client,
    orch: &str,
    i: usize,
    n: u32,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let admitted: serde_json::Value = http
        .post(format!("{orch}/v1/tasks"))
        .json(&json!({"prompt": format!("orches {i:05}"), "max_tokens": n, "seed": i}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let admission = started.elapsed();
    let id = admitted["task_id"].as_str().context("task_id")?;
    let response = http
        .get(format!("{orch}/v1/tasks/{id}/stream"))
        .send()
        .await?
        .error_for_status()?;
    let ttft = time_to_first(response, started, |s| s.contains("event: token")).await?;
    Ok((admission, ttft))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let (_llama, llama_url) = start_llama(&http).await?;
    let store = tempfile::tempdir()?;
    let config = Config {
        pools: vec![PoolConfig {
            id: "default".into(),
            metrics_interval_ms: 0,
            replicas: vec![ReplicaConfig {
                id: "r0".into(),
                engine: EngineConfig::Llamacpp(LlamaCppEngineConfig::new(&llama_url)),
            }],
            ..PoolConfig::default()
        }],
        ..Config::default()
    };
    let server =
        orchestratord::start(config, "127.0.0.1:0", &store.path().join("bench.db")).await?;
    let orch = server.url();
    let mut direct_times = Vec::new();
    let mut orch_times = Vec::new();
    let mut admission_times = Vec::new();
    for i in 0..args.warmup + args.requests {
        let d = direct(&http, &llama_url, i, args.max_tokens).await?;
        let (a, o) = orchestrated(&http, &orch, i, args.max_tokens).await?;
        if i >= args.warmup {
            admission_times.push(a);
            direct_times.push(d);
            orch_times.push(o);
        }
    }
    let mut added: Vec<Duration> = orch_times
        .iter()
        .zip(&direct_times)
        .map(|(o, d)| o.saturating_sub(*d))
        .collect();
    direct_times.sort();
    orch_times.sort();
    added.sort();
    admission_times.sort();
    let (_, model) = llama_files()?;
    println!(
        "engine-bench: {} requests per side, {} tokens each, one llama-server ({}, -t 1) on loopback",
        args.requests,
        args.max_tokens,
        model.file_name().unwrap_or_default().to_string_lossy()
    );
    for (name, times) in [
        ("direct llama-server TTFT", &direct_times),
        ("through orchestratord TTFT", &orch_times),
        ("added by orchestratord (pairwise)", &added),
        ("of which admission (until the 202)", &admission_times),
    ] {
        println!(
            "{name:>34}: p50 {:7.2} ms  p90 {:7.2} ms  max {:7.2} ms",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.9)),
            ms(*times.last().expect("requests > 0"))
        );
    }
    server.shutdown().await;
    Ok(())
}
