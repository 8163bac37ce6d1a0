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
//! - chat direct: llama-server's own `POST /v1/chat/completions` (`stream: true`);
//! - chat orchestrated: orchestratord's `POST /v1/chat/completions` (the OpenAI
//!   surface, ORCH-8001) on the same replica: the messages formatted with the
//!   model's template (`/apply-template`), then `/completion`, relayed as chunks;
//!   both without the prompt cache (orchestratord's `strict` default, ORCH-4032)
//!   and with it (`X-Orch-Determinism: best_effort`; llama-server's default).
//!
//! Each request streams to its end before the next starts; prompts differ
//! per request (same length) so neither side profits from the prompt cache. Besides
//! the time to first token, each side's decode rate: tokens after the first over
//! the time from the first to the last.
//!
//! `--peers`: the same llama-server behind vLLM's and SGLang's routers and
//! orchestratord, side by side (see `peers`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use contracts::config::{Config, EngineConfig, LlamaCppEngineConfig, PoolConfig, ReplicaConfig};
use futures::StreamExt;
use serde_json::json;

mod peers;

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
    /// Instead: orchestratord beside vllm-router and smg, `--requests` rounds
    /// (the routers from `bash scripts/bench/peers-setup.sh`).
    #[arg(long)]
    peers: bool,
    /// The venv holding the routers (default: where the setup script puts it).
    #[arg(long)]
    peers_venv: Option<PathBuf>,
    /// Streams at once through each side, after the rounds (`--peers`): each
    /// count in turn.
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    concurrent: Vec<usize>,
}

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
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

async fn start_llama(http: &reqwest::Client) -> anyhow::Result<(Process, String)> {
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
    let llama = Process(child);
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

/// One streamed answer: time to its first token, and its decode rate.
struct Timing {
    ttft: Duration,
    tokens_per_s: f64,
}

/// Read an SSE body to its end; `is_token` says which events carry a token.
async fn read_stream(
    response: reqwest::Response,
    started: Instant,
    is_token: impl Fn(&str) -> bool,
) -> anyhow::Result<Timing> {
    let mut body = response.bytes_stream();
    let mut pending = String::new();
    let (mut first, mut last, mut tokens) = (None, None, 0u32);
    while let Some(chunk) = body.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if is_token(&event) {
                let now = started.elapsed();
                first.get_or_insert(now);
                last = Some(now);
                tokens += 1;
            }
        }
    }
    let ttft = first.context("the stream carried no token")?;
    let decode = last.unwrap_or(ttft).saturating_sub(ttft).as_secs_f64();
    let tokens_per_s = if tokens > 1 && decode > 0.0 {
        f64::from(tokens - 1) / decode
    } else {
        0.0
    };
    Ok(Timing { ttft, tokens_per_s })
}

/// An OpenAI chat chunk with text in it.
fn is_chat_token(event: &str) -> bool {
    event.contains("\"content\":\"") && !event.contains("\"content\":\"\"")
}

/// How a chat request may use the engine's prompt cache: llama-server reuses the
/// cached prefix (the template's system prompt) by default; orchestratord lets it
/// only under `best_effort` determinism (ORCH-4032).
#[derive(Clone, Copy)]
enum Cache {
    Reused,
    Off,
}

async fn chat(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    cache: Cache,
    i: usize,
    n: u32,
) -> anyhow::Result<Timing> {
    let started = Instant::now();
    let mut body = json!({
        "model": model, "max_tokens": n, "seed": i, "stream": true,
        "messages": [{"role": "user", "content": format!("Write a haiku about the number {i:05}.")}],
    });
    let mut request = http.post(format!("{base}/v1/chat/completions"));
    match (cache, model) {
        // llama-server's own knob; orchestratord's is the determinism header.
        (Cache::Off, "any") => body["cache_prompt"] = json!(false),
        (Cache::Reused, "default") => request = request.header("x-orch-determinism", "best_effort"),
        _ => {}
    }
    let response = request.json(&body).send().await?.error_for_status()?;
    read_stream(response, started, is_chat_token).await
}

async fn direct(http: &reqwest::Client, llama: &str, i: usize, n: u32) -> anyhow::Result<Timing> {
    let started = Instant::now();
    let response = http
        .post(format!("{llama}/completion"))
        .json(
            &json!({"prompt": format!("direct {i:05}"), "n_predict": n, "seed": i, "stream": true}),
        )
        .send()
        .await?
        .error_for_status()?;
    read_stream(response, started, is_chat_token).await
}

async fn orchestrated(
    http: &reqwest::Client,
    orch: &str,
    i: usize,
    n: u32,
) -> anyhow::Result<(Duration, Timing)> {
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
    let timing = read_stream(response, started, |e| e.contains("event: token")).await?;
    Ok((admission, timing))
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
    if args.peers {
        let venv = args.peers_venv.clone().unwrap_or_else(peers::default_venv);
        let run = peers::run(
            &venv,
            &llama_url,
            &orch,
            args.requests,
            args.max_tokens,
            &args.concurrent,
        );
        let outcome = run.await;
        server.shutdown().await;
        return outcome;
    }
    let mut direct_times = Vec::new();
    let mut orch_times = Vec::new();
    let mut admission_times = Vec::new();
    let mut chat_direct = Vec::new();
    let mut chat_orch = Vec::new();
    let mut cached_direct = Vec::new();
    let mut cached_orch = Vec::new();
    for i in 0..args.warmup + args.requests {
        let d = direct(&http, &llama_url, i, args.max_tokens).await?;
        let (a, o) = orchestrated(&http, &orch, i, args.max_tokens).await?;
        let cd = chat(&http, &llama_url, "any", Cache::Off, i, args.max_tokens).await?;
        let co = chat(&http, &orch, "default", Cache::Off, i, args.max_tokens).await?;
        let rd = chat(&http, &llama_url, "any", Cache::Reused, i, args.max_tokens).await?;
        let ro = chat(&http, &orch, "default", Cache::Reused, i, args.max_tokens).await?;
        if i >= args.warmup {
            admission_times.push(a);
            direct_times.push(d);
            orch_times.push(o);
            chat_direct.push(cd);
            chat_orch.push(co);
            cached_direct.push(rd);
            cached_orch.push(ro);
        }
    }
    let (_, model) = llama_files()?;
    println!(
        "engine-bench: {} requests per side, {} tokens each, one llama-server ({}, -t 1) on loopback",
        args.requests,
        args.max_tokens,
        model.file_name().unwrap_or_default().to_string_lossy()
    );
    let ttfts = |timings: &[Timing]| timings.iter().map(|t| t.ttft).collect::<Vec<_>>();
    let added = |orch: &[Timing], direct: &[Timing]| {
        orch.iter()
            .zip(direct)
            .map(|(o, d)| o.ttft.saturating_sub(d.ttft))
            .collect::<Vec<_>>()
    };
    for (name, mut times) in [
        ("direct llama-server /completion", ttfts(&direct_times)),
        ("orchestratord /v1/tasks + stream", ttfts(&orch_times)),
        (
            "added by orchestratord (pairwise)",
            added(&orch_times, &direct_times),
        ),
        ("of which admission (until the 202)", admission_times),
        ("direct /v1/chat, no prompt cache", ttfts(&chat_direct)),
        ("orchestratord /v1/chat, strict", ttfts(&chat_orch)),
        (
            "added on the OpenAI surface",
            added(&chat_orch, &chat_direct),
        ),
        ("direct /v1/chat, prompt cache", ttfts(&cached_direct)),
        ("orchestratord /v1/chat, best_effort", ttfts(&cached_orch)),
        (
            "added, the prompt cache reused",
            added(&cached_orch, &cached_direct),
        ),
    ] {
        times.sort();
        println!(
            "{name:>36} TTFT: p50 {:7.2} ms  p90 {:7.2} ms  max {:7.2} ms",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.9)),
            ms(*times.last().expect("requests > 0"))
        );
    }
    for (name, timings) in [
        ("direct llama-server /completion", &direct_times),
        ("orchestratord /v1/tasks + stream", &orch_times),
        ("direct /v1/chat, no prompt cache", &chat_direct),
        ("orchestratord /v1/chat, strict", &chat_orch),
        ("direct /v1/chat, prompt cache", &cached_direct),
        ("orchestratord /v1/chat, best_effort", &cached_orch),
    ] {
        let mut rates: Vec<f64> = timings.iter().map(|t| t.tokens_per_s).collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "{name:>36} decode: median {:6.1} tokens/s",
            rates[rates.len() / 2]
        );
    }
    server.shutdown().await;
    Ok(())
}
