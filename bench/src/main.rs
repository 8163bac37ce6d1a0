//! `orch-bench`: a load generator that measures, in one run on one machine,
//!
//! 1. **durable admission** — `POST /v1/tasks` against the real
//!    `orchestratord` (in process, temp SQLite store in WAL mode, dispatch
//!    held so tasks only queue): every `202` was committed to SQLite before
//!    it was answered; with `--postgres URL`, the same run again on a fresh database of that
//!    PostgreSQL server (ORCH-7006), so the two stores are compared in one run;
//! 2. **baseline** — the same load against a bare axum handler in the same
//!    process that parses the same JSON body and answers `202`;
//! 3. **SSE relay** — K tasks of T tokens on fast builtin replicas, every
//!    stream read concurrently by a real SSE parser: tokens/s and bytes/s
//!    relayed, and time to first token (each token past the first is relayed
//!    before it is stored; the first waits for its commit, ORCH-7009), also on
//!    PostgreSQL with `--postgres URL`.
//!
//! Server and clients share the process and its cores (loopback HTTP), so the
//! figures are a lower bound of what the daemon does with the machine to itself.
//!
//! `cargo run --release -p orch-bench -- --help`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;
use contracts::TaskRequest;
use contracts::config::{
    BuiltinEngineConfig, Config, EngineConfig, PoolConfig, QueueConfig, ReplicaConfig,
};
use futures::StreamExt;
use orchestratord::store::{PostgresStore, StoreLocation};
use serde_json::{Value, json};

mod backoff;
mod cluster;
mod fairness;
mod instructions;
mod scale;

#[derive(Debug, Parser)]
#[command(about = "Load generator for orchestratord (durable admission, baseline, SSE relay)")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Admission requests per target (after a warm-up of requests/10, at most 500).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Concurrent keep-alive clients for the admission runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Tasks streamed concurrently in the SSE run.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Tokens per task in the SSE run (≤ 4000).
    #[arg(long, default_value_t = 2000)]
    tokens: u32,
    /// Also measure admission and the SSE relay on PostgreSQL: a server URL
    /// (`postgres://user@host:port/db`; each run creates a fresh database on it),
    /// e.g. the one `bash scripts/postgres/setup.sh` prints.
    #[arg(long, env = "ORCH_BENCH_POSTGRES_URL")]
    postgres: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// How well the 429 backoff hint predicts, at a pinned overload (ORCH-2003, ORCH-3012).
    Backoff(backoff::BackoffArgs),
    /// Admission and time to first token for 1, 2 and 3 daemons on one PostgreSQL
    /// database, next to one daemon on SQLite (ORCH-7012).
    Cluster(cluster::ClusterArgs),
    /// A light tenant's wait under a flood from two others, with and without
    /// fair share, beside the stated bound; Jain's index (ORCH-3015, ORCH-3016).
    Fairness(fairness::FairnessArgs),
    /// Instructions per queue and placement operation at 10 to 100k queued tasks,
    /// counted by valgrind's callgrind (the flat-cost figure of issue 14).
    Instructions(instructions::InstructionsArgs),
    /// Admission and dispatch cost at 10 to 100k queued tasks; restart time and
    /// memory per queued task at the deepest (issue 14).
    Scale(scale::ScaleArgs),
}

#[derive(Debug, Clone)]
struct LoadFigures {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    /// Per-request latencies in microseconds, sorted.
    latencies_us: Vec<u64>,
}

impl LoadFigures {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn pct_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "req_per_s": self.rps(),
            "latency_ms": {
                "p50": self.pct_ms(50.0),
                "p90": self.pct_ms(90.0),
                "p99": self.pct_ms(99.0),
                "max": self.max_ms(),
            },
        })
    }
}

#[derive(Debug, Clone)]
struct SseFigures {
    tasks: usize,
    tokens: u64,
    bytes: u64,
    elapsed: Duration,
    ttft_us: Vec<u64>,
}

impl SseFigures {
    fn to_json(&self) -> Value {
        let secs = self.elapsed.as_secs_f64();
        json!({
            "tasks": self.tasks,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "elapsed_s": secs,
            "tokens_per_s": self.tokens as f64 / secs,
            "bytes_per_s": self.bytes as f64 / secs,
            "ttft_ms": {
                "p50": percentile(&self.ttft_us, 50.0) as f64 / 1000.0,
                "p99": percentile(&self.ttft_us, 99.0) as f64 / 1000.0,
            },
        })
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4)
        .timeout(Duration::from_secs(60))
        .build()?)
}

fn task_body(n: usize, max_tokens: u32) -> Value {
    json!({
        "prompt": format!("benchmark prompt number {n}: summarise the queue"),
        "max_tokens": max_tokens,
        "priority": if n.is_multiple_of(4) { "batch" } else { "interactive" },
    })
}

/// `total` POSTs of `task_body` from `concurrency` clients, each with its own
/// keep-alive connection, client `i` to `urls[i % urls.len()]`.
async fn post_load(
    urls: &[String],
    total: usize,
    concurrency: usize,
    offset: usize,
) -> anyhow::Result<LoadFigures> {
    post_load_with(urls, total, concurrency, offset, |n| task_body(n, 16)).await
}

/// [`post_load`] with the `n`-th request's body from `body`.
async fn post_load_with(
    urls: &[String],
    total: usize,
    concurrency: usize,
    offset: usize,
    body: impl Fn(usize) -> Value + Copy + Send + 'static,
) -> anyhow::Result<LoadFigures> {
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<reqwest::Client> = (0..concurrency)
        .map(|_| http_client())
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let next = Arc::clone(&next);
            let url = urls[i % urls.len()].clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(total / concurrency + 1);
                let mut errors = 0usize;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let body = serde_json::to_vec(&body(offset + n)).expect("json");
                    let sent = Instant::now();
                    let result = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match result {
                        Ok(response) => {
                            let ok = response.status() == StatusCode::ACCEPTED;
                            let answer = response.bytes().await;
                            latencies.push(sent.elapsed().as_micros() as u64);
                            if !ok || answer.is_err() {
                                errors += 1;
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies_us = Vec::with_capacity(total);
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies_us.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Ok(LoadFigures {
        requests: total,
        errors,
        elapsed,
        latencies_us,
    })
}

fn warmup_of(requests: usize) -> usize {
    (requests / 10).min(500)
}

/// A fresh store for one run: a database on the PostgreSQL server `postgres`, else a
/// SQLite file in `dir`.
async fn fresh_store(
    dir: &tempfile::TempDir,
    postgres: Option<&str>,
) -> anyhow::Result<StoreLocation> {
    Ok(match postgres {
        Some(server) => StoreLocation::Postgres(PostgresStore::create_database(server).await?),
        None => StoreLocation::Sqlite(dir.path().join("bench.db")),
    })
}

async fn admission_run(args: &Args, postgres: Option<&str>) -> anyhow::Result<LoadFigures> {
    let dir = tempfile::tempdir()?;
    let store = fresh_store(&dir, postgres).await?;
    let warmup = warmup_of(args.requests);
    let mut config = Config::default();
    config.pools[0].queue = QueueConfig {
        capacity: (args.requests + warmup + 1000) as u32,
        ..QueueConfig::default()
    };
    let server = orchestratord::start(config, "127.0.0.1:0", store).await?;
    // Replicas held: tasks only queue, so the run measures admission alone.
    server.test_handle().hold_dispatch("default", true);
    let url = [format!("{}/v1/tasks", server.url())];
    post_load(&url, warmup, args.concurrency, 0).await?;
    let figures = post_load(&url, args.requests, args.concurrency, warmup).await?;
    let queued = server.test_handle().queue_len("default");
    ensure!(
        figures.errors > 0 || queued == warmup + args.requests,
        "the queue holds {queued} tasks after {} admissions",
        warmup + args.requests
    );
    server.shutdown().await;
    Ok(figures)
}

async fn baseline_handler(Json(request): Json<TaskRequest>) -> (StatusCode, Json<Value>) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let answer = json!({
        "task_id": format!("t-{n:032x}"),
        "queue_position": n,
        "predicted_start_ms": request.max_tokens as u64,
        "backoff_ms": 250,
    });
    (StatusCode::ACCEPTED, Json(answer))
}

async fn baseline_run(args: &Args) -> anyhow::Result<LoadFigures> {
    let app = axum::Router::new().route("/v1/tasks", post(baseline_handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let serve = tokio::spawn(async move { axum::serve(listener, app).await });
    let url = [format!("http://{addr}/v1/tasks")];
    post_load(&url, warmup_of(args.requests), args.concurrency, 0).await?;
    let figures = post_load(&url, args.requests, args.concurrency, 0).await?;
    serve.abort();
    Ok(figures)
}

/// Incremental SSE parser: feed bytes, get `(event, data)` pairs.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: String,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<(String, String)>) {
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let line = &self.buffer[start..start + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            start += end + 1;
            if line.is_empty() {
                if let Some(event) = self.event.take() {
                    out.push((event, std::mem::take(&mut self.data)));
                }
                self.data.clear();
            } else if line.starts_with(':') {
                // comment (keep-alive)
            } else if let Some(value) = field(&line, "event") {
                self.event = Some(value.to_owned());
            } else if let Some(value) = field(&line, "data") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            // `id:` needs no handling: token data carries `i` too.
        }
        self.buffer.drain(..start);
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

async fn sse_run(args: &Args, postgres: Option<&str>) -> anyhow::Result<SseFigures> {
    ensure!(
        args.tokens >= 1 && args.tokens <= 4000,
        "--tokens must be 1..=4000"
    );
    let dir = tempfile::tempdir()?;
    let slots_per_replica = 16u32;
    let replicas = args.tasks.div_ceil(slots_per_replica as usize).max(1);
    let fast = BuiltinEngineConfig {
        tokens_per_s: 1_000_000.0,
        ttft_ms: 0,
        slots: slots_per_replica,
        ctx_limit: 8192,
        ..BuiltinEngineConfig::default()
    };
    let config = Config {
        pools: vec![PoolConfig {
            id: "default".into(),
            queue: QueueConfig {
                capacity: (args.tasks + 16) as u32,
                ..QueueConfig::default()
            },
            max_tokens_limit: 8192,
            replicas: (0..replicas)
                .map(|r| ReplicaConfig {
                    id: format!("r{r}"),
                    engine: EngineConfig::Builtin(fast.clone()),
                })
                .collect(),
            ..PoolConfig::default()
        }],
        ..Config::default()
    };
    let server =
        orchestratord::start(config, "127.0.0.1:0", fresh_store(&dir, postgres).await?).await?;
    let handle = server.test_handle();
    let base = server.url();

    // Queue every task and open every stream first, then release dispatch:
    // the clock measures relay, not the client's connection set-up.
    handle.hold_dispatch("default", true);
    let client = http_client()?;
    let mut streams = Vec::with_capacity(args.tasks);
    for n in 0..args.tasks {
        let answer: Value = client
            .post(format!("{base}/v1/tasks"))
            .json(&json!({
                "task_id": format!("sse-{n}"),
                "prompt": format!("stream benchmark {n}"),
                "max_tokens": args.tokens,
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let task_id = answer["task_id"].as_str().context("task_id")?.to_owned();
        // One connection per stream, as separate SSE consumers would have.
        let reader = http_client()?;
        let response = reader
            .get(format!("{base}/v1/tasks/{task_id}/stream"))
            .send()
            .await?
            .error_for_status()?;
        streams.push(response);
    }

    let released = Instant::now();
    let expected_tokens = args.tokens;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|response| {
            tokio::spawn(async move {
                let mut parser = SseParser::default();
                let mut events = Vec::new();
                let mut body = response.bytes_stream();
                let (mut tokens, mut bytes, mut first_token) = (0u64, 0u64, None);
                let mut ended = false;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    bytes += chunk.len() as u64;
                    parser.feed(&chunk, &mut events);
                    for (event, data) in events.drain(..) {
                        match event.as_str() {
                            "token" => {
                                let token: Value = serde_json::from_str(&data)?;
                                let i = token["i"].as_u64().context("token without i")?;
                                ensure!(i == tokens, "token {i} arrived where {tokens} was due");
                                ensure!(token["t"].is_string(), "token without t");
                                if first_token.is_none() {
                                    first_token = Some(released.elapsed());
                                }
                                tokens += 1;
                            }
                            "end" => ended = true,
                            "error" => bail!("stream ended with an error: {data}"),
                            _ => {}
                        }
                    }
                    if ended {
                        break;
                    }
                }
                ensure!(ended, "stream closed without `end`");
                ensure!(
                    tokens == u64::from(expected_tokens),
                    "{tokens} tokens, {expected_tokens} expected"
                );
                anyhow::Ok((
                    tokens,
                    bytes,
                    first_token.unwrap_or_default(),
                    released.elapsed(),
                ))
            })
        })
        .collect();
    handle.hold_dispatch("default", false);

    let (mut tokens, mut bytes, mut ttft_us, mut last_end) = (0, 0, Vec::new(), Duration::ZERO);
    for reader in readers {
        let (t, b, first, end) = reader.await??;
        tokens += t;
        bytes += b;
        ttft_us.push(first.as_micros() as u64);
        last_end = last_end.max(end);
    }
    ttft_us.sort_unstable();
    server.shutdown().await;
    Ok(SseFigures {
        tasks: args.tasks,
        tokens,
        bytes,
        elapsed: last_end,
        ttft_us,
    })
}

fn print_table(
    args: &Args,
    admission: &LoadFigures,
    on_postgres: Option<&LoadFigures>,
    baseline: &LoadFigures,
    sse: &SseFigures,
) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "orch-bench: {} requests x {} clients (plus {} warm-up), {} cores, server and clients in one process",
        args.requests,
        args.concurrency,
        warmup_of(args.requests),
        cpus
    );
    println!();
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "POST /v1/tasks", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
    );
    let rows = [
        Some(("orchestratord (durable, SQLite)", admission)),
        on_postgres.map(|f| ("orchestratord (durable, PostgreSQL)", f)),
        Some(("bare axum baseline (parse + 202)", baseline)),
    ];
    for (name, f) in rows.into_iter().flatten() {
        println!(
            "{:<34} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            name,
            f.rps(),
            f.pct_ms(50.0),
            f.pct_ms(90.0),
            f.pct_ms(99.0),
            f.max_ms(),
            f.errors
        );
    }
    println!(
        "{:<34} {:>10.2} {:>9.2} {:>9.2} {:>9.2}",
        "ratio orchestratord / baseline",
        admission.rps() / baseline.rps(),
        admission.pct_ms(50.0) / baseline.pct_ms(50.0),
        admission.pct_ms(90.0) / baseline.pct_ms(90.0),
        admission.pct_ms(99.0) / baseline.pct_ms(99.0),
    );
    if let Some(pg) = on_postgres {
        println!(
            "{:<34} {:>10.2} {:>9.2} {:>9.2} {:>9.2}",
            "ratio PostgreSQL / SQLite",
            pg.rps() / admission.rps(),
            pg.pct_ms(50.0) / admission.pct_ms(50.0),
            pg.pct_ms(90.0) / admission.pct_ms(90.0),
            pg.pct_ms(99.0) / admission.pct_ms(99.0),
        );
    }
    println!();
    print_sse("SSE relay", args, sse);
}

fn print_sse(title: &str, args: &Args, sse: &SseFigures) {
    let secs = sse.elapsed.as_secs_f64();
    println!(
        "{title}: {} streams x {} tokens = {} tokens in {:.3} s",
        sse.tasks, args.tokens, sse.tokens, secs
    );
    println!(
        "  {:.0} tokens/s, {:.1} MB/s ({} bytes), time to first token p50 {:.2} ms, p99 {:.2} ms",
        sse.tokens as f64 / secs,
        sse.bytes as f64 / secs / 1e6,
        sse.bytes,
        percentile(&sse.ttft_us, 50.0) as f64 / 1000.0,
        percentile(&sse.ttft_us, 99.0) as f64 / 1000.0,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::Backoff(backoff)) => return backoff::main(backoff).await,
        Some(Command::Cluster(cluster)) => return cluster::main(cluster).await,
        Some(Command::Fairness(fairness)) => return fairness::main(fairness).await,
        Some(Command::Instructions(instructions)) => return instructions::run(&instructions),
        Some(Command::Scale(scale)) => return scale::main(&scale).await,
        None => {}
    }
    ensure!(
        args.requests > 0 && args.concurrency > 0 && args.tasks > 0,
        "counts must be > 0"
    );
    let admission = admission_run(&args, None).await.context("admission run")?;
    let on_postgres = match &args.postgres {
        Some(url) => Some(
            admission_run(&args, Some(url))
                .await
                .context("admission run on PostgreSQL")?,
        ),
        None => None,
    };
    let baseline = baseline_run(&args).await.context("baseline run")?;
    let sse = sse_run(&args, None).await.context("SSE run")?;
    let sse_on_postgres = match &args.postgres {
        Some(url) => Some(
            sse_run(&args, Some(url))
                .await
                .context("SSE run on PostgreSQL")?,
        ),
        None => None,
    };
    if args.json {
        let out = json!({
            "requests": args.requests,
            "concurrency": args.concurrency,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "profile": if cfg!(debug_assertions) { "dev" } else { "release" },
            "admission": admission.to_json(),
            "admission_postgres": on_postgres.as_ref().map(LoadFigures::to_json),
            "baseline": baseline.to_json(),
            "admission_over_baseline": {
                "req_per_s": admission.rps() / baseline.rps(),
                "p50": admission.pct_ms(50.0) / baseline.pct_ms(50.0),
                "p99": admission.pct_ms(99.0) / baseline.pct_ms(99.0),
            },
            "sse": sse.to_json(),
            "sse_postgres": sse_on_postgres.as_ref().map(SseFigures::to_json),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&args, &admission, on_postgres.as_ref(), &baseline, &sse);
        if let Some(pg) = &sse_on_postgres {
            print_sse("SSE relay on PostgreSQL", &args, pg);
        }
    }
    Ok(())
}
