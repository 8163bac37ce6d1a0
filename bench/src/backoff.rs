//! `orch-bench backoff`: how well the `429` backoff hint predicts (ORCH-2003,
//! ORCH-3012), at a pinned overload.
//!
//! A real `orchestratord` (in process, builtin replicas, a `reject` queue)
//! first runs a calibration batch that fills every slot, which gives the
//! pool's service rate. Then clients arrive as a Poisson process at `--load`
//! times that rate for `--seconds`; each submits one task with its own
//! `task_id`, and on `429` sleeps exactly `X-Backoff-Ms` and resubmits, until
//! admitted or `MAX_ATTEMPTS` refusals. Two runs on fresh servers, same
//! arrival rate:
//!
//! - **hint**: the retry line on (the default);
//! - **baseline**: `queue.retry_line: false`, the behaviour before ORCH-3012:
//!   no place is held and the hint is the wait for one place, about one
//!   completion, as if nobody else were waiting to retry.
//!
//! Figures per run: the share of retries admitted, the pool's utilisation
//! while the queue was overloaded, and the hint against the wait actually
//! needed — the earliest moment after the refusal when the client's retry
//! would have been admitted: when the queued tasks plus the places held for
//! clients refused before it (those not yet admitted then) left room for it,
//! replayed from the tasks' own start times on the server's clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use contracts::config::{
    BuiltinEngineConfig, Config, EngineConfig, FullPolicy, PoolConfig, QueueConfig, ReplicaConfig,
};
use serde_json::{Value, json};

use crate::{http_client, percentile};

#[derive(Debug, Clone, clap::Args)]
pub struct BackoffArgs {
    /// How long clients keep arriving.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Arrival rate as a multiple of the pool's measured service rate.
    #[arg(long, default_value_t = 1.5)]
    load: f64,
    /// Builtin replicas of the pool.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// Slots per replica.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Tokens per task.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Engine speed, tokens per second per slot.
    #[arg(long, default_value_t = 100.0)]
    tokens_per_s: f64,
    /// Queue capacity of the pool (policy `reject`).
    #[arg(long, default_value_t = 32)]
    capacity: u32,
    /// Seed of the arrival process.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Exit 1 unless the hint run meets the bar: at least 90% of retries
    /// admitted, at least 95% utilised, median hint at most 2x the wait needed.
    #[arg(long)]
    check: bool,
}

/// A client gives up after this many refusals, which bounds the request
/// rate of a run whose hints do not predict.
const MAX_ATTEMPTS: usize = 20;

/// One client's submissions: refusals `(sent at, hint)` and when it was admitted.
#[derive(Debug, Clone, Default)]
struct ClientLog {
    id: String,
    refusals: Vec<(u64, u64)>,
    admitted: bool,
    errors: usize,
}

/// What the server recorded of an admitted task.
#[derive(Debug, Clone)]
struct TaskTimes {
    task_id: String,
    submitted_ms: u64,
    started_ms: u64,
    finished_ms: u64,
}

#[derive(Debug, Clone)]
struct RunFigures {
    name: String,
    clients: usize,
    admitted: usize,
    retries: usize,
    retries_admitted: usize,
    errors: usize,
    utilisation: f64,
    /// Per retry: (hint, wait needed), ms.
    hint_and_needed: Vec<(u64, u64)>,
    elapsed: Duration,
}

impl RunFigures {
    fn admitted_share(&self) -> f64 {
        self.retries_admitted as f64 / self.retries.max(1) as f64
    }

    fn median_hint_ms(&self) -> u64 {
        median(self.hint_and_needed.iter().map(|(h, _)| *h))
    }

    fn median_needed_ms(&self) -> u64 {
        median(self.hint_and_needed.iter().map(|(_, n)| *n))
    }

    /// The `p`-th percentile over retries of hint / needed (needed at least 1 ms).
    fn ratio_pct(&self, p: f64) -> f64 {
        let mut ratios: Vec<f64> = self
            .hint_and_needed
            .iter()
            .map(|(h, n)| *h as f64 / (*n).max(1) as f64)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * ratios.len() as f64) as usize;
        ratios
            .get(rank.min(ratios.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    }

    fn median_ratio(&self) -> f64 {
        self.ratio_pct(50.0)
    }

    fn meets_the_bar(&self) -> bool {
        self.admitted_share() >= 0.90
            && self.utilisation >= 0.95
            && self.median_hint_ms() as f64 <= 2.0 * self.median_needed_ms() as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "clients": self.clients,
            "admitted": self.admitted,
            "retries": self.retries,
            "retries_admitted": self.retries_admitted,
            "admitted_share": self.admitted_share(),
            "utilisation": self.utilisation,
            "median_hint_ms": self.median_hint_ms(),
            "median_needed_ms": self.median_needed_ms(),
            "median_hint_over_needed": self.median_ratio(),
            "hint_over_needed_p5": self.ratio_pct(5.0),
            "hint_over_needed_p10": self.ratio_pct(10.0),
            "hint_over_needed_p90": self.ratio_pct(90.0),
            "errors": self.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "meets_the_bar": self.meets_the_bar(),
        })
    }
}

fn median(values: impl Iterator<Item = u64>) -> u64 {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    percentile(&values, 50.0)
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seeded exponential inter-arrival times (xorshift64*; no dependency).
struct Arrivals {
    state: u64,
    mean_gap_s: f64,
}

impl Arrivals {
    fn next_gap(&mut self) -> Duration {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let uniform = (bits as f64 + 0.5) / (1u64 << 53) as f64;
        Duration::from_secs_f64(-uniform.ln() * self.mean_gap_s)
    }
}

fn config(args: &BackoffArgs, retry_line: bool) -> Config {
    let engine = BuiltinEngineConfig {
        tokens_per_s: args.tokens_per_s,
        slots: args.slots,
        ..BuiltinEngineConfig::default()
    };
    Config {
        pools: vec![PoolConfig {
            id: "default".into(),
            queue: QueueConfig {
                capacity: args.capacity,
                full_policy: FullPolicy::Reject,
                retry_line,
                ..QueueConfig::default()
            },
            replicas: (0..args.replicas)
                .map(|r| ReplicaConfig {
                    id: format!("r{r}"),
                    engine: EngineConfig::Builtin(engine.clone()),
                })
                .collect(),
            ..PoolConfig::default()
        }],
        ..Config::default()
    }
}

fn body(id: &str, scope: &str, tokens: u32) -> Value {
    json!({"task_id": id, "scope": scope, "prompt": format!("backoff benchmark {id}"), "max_tokens": tokens})
}

/// Every task of `scope`, from the server's list.
async fn task_times(
    client: &reqwest::Client,
    base: &str,
    scope: &str,
) -> anyhow::Result<Vec<TaskTimes>> {
    let mut times = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client
            .get(format!("{base}/v1/tasks"))
            .query(&[("scope", scope), ("limit", "500")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: Value = request.send().await?.error_for_status()?.json().await?;
        for item in page["items"].as_array().context("items")? {
            let at = |field: &str| item[field].as_u64();
            if let (Some(submitted_ms), Some(started_ms), Some(finished_ms)) = (
                at("submitted_at_ms"),
                at("started_at_ms"),
                at("finished_at_ms"),
            ) {
                times.push(TaskTimes {
                    task_id: item["task_id"].as_str().unwrap_or_default().to_owned(),
                    submitted_ms,
                    started_ms,
                    finished_ms,
                });
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(times),
        }
    }
}

/// Submit `count` tasks at once and wait for them all: the pool's service
/// rate in completions per second, from the server's start and end times.
async fn calibrate(
    client: &reqwest::Client,
    base: &str,
    args: &BackoffArgs,
    count: usize,
) -> anyhow::Result<f64> {
    let scope = "calibration";
    for n in 0..count {
        client
            .post(format!("{base}/v1/tasks"))
            .json(&body(&format!("cal-{n}"), scope, args.tokens))
            .send()
            .await?
            .error_for_status()
            .context("calibration submit (is --capacity at least 4 x the slots?)")?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let times = task_times(client, base, scope).await?;
        if times.len() == count {
            let first = times.iter().map(|t| t.started_ms).min().unwrap_or(0);
            let last = times.iter().map(|t| t.finished_ms).max().unwrap_or(0);
            ensure!(last > first, "calibration took no time");
            return Ok(count as f64 * 1000.0 / (last - first) as f64);
        }
        ensure!(Instant::now() < deadline, "calibration did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One client: submit until admitted.
async fn client_loop(client: reqwest::Client, url: String, body: Value) -> ClientLog {
    let mut log = ClientLog {
        id: body["task_id"].as_str().unwrap_or_default().to_owned(),
        ..ClientLog::default()
    };
    loop {
        let sent_ms = epoch_ms();
        let response = match client.post(&url).json(&body).send().await {
            Ok(response) => response,
            Err(_) => {
                log.errors += 1;
                return log;
            }
        };
        match response.status().as_u16() {
            202 => {
                log.admitted = true;
                return log;
            }
            429 => {
                let hint_ms = response
                    .headers()
                    .get("x-backoff-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                log.refusals.push((sent_ms, hint_ms));
                if log.refusals.len() >= MAX_ATTEMPTS {
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(hint_ms)).await;
            }
            _ => {
                log.errors += 1;
                return log;
            }
        }
    }
}

async fn run(
    name: &str,
    args: &BackoffArgs,
    retry_line: bool,
    arrivals_per_s: Option<f64>,
) -> anyhow::Result<(RunFigures, f64)> {
    let dir = tempfile::tempdir()?;
    let server = orchestratord::start(
        config(args, retry_line),
        "127.0.0.1:0",
        &dir.path().join("b.db"),
    )
    .await?;
    let base = server.url();
    let http = http_client()?;
    let slots = args.replicas * args.slots;
    let service_rate = calibrate(&http, &base, args, (4 * slots) as usize).await?;
    let rate = arrivals_per_s.unwrap_or(args.load * service_rate);

    let scope = "load";
    let url = format!("{base}/v1/tasks");
    let mut arrivals = Arrivals {
        state: args.seed.max(1),
        mean_gap_s: 1.0 / rate,
    };
    let started = Instant::now();
    let window_start_ms = epoch_ms();
    let window = Duration::from_secs(args.seconds);
    let mut next_at = Duration::ZERO;
    let mut clients = Vec::new();
    let mut n = 0usize;
    while next_at < window {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + next_at)).await;
        let body = body(&format!("load-{n}"), scope, args.tokens);
        clients.push(tokio::spawn(client_loop(http.clone(), url.clone(), body)));
        n += 1;
        next_at += arrivals.next_gap();
    }
    let window_end_ms = epoch_ms();
    let mut logs = Vec::with_capacity(clients.len());
    for client in clients {
        logs.push(client.await?);
    }
    // Let the admitted tasks finish, then read their times.
    let admitted = logs.iter().filter(|l| l.admitted).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    let times = loop {
        let times = task_times(&http, &base, scope).await?;
        if times.len() >= admitted || Instant::now() > deadline {
            break times;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    server.shutdown().await;
    let figures = judge(
        name,
        args,
        &logs,
        &times,
        (window_start_ms, window_end_ms),
        retry_line,
        elapsed,
    );
    Ok((figures, rate))
}

/// Replay the run: utilisation while refusals were happening, and for each
/// retry the hint it followed against the wait its retry needed.
fn judge(
    name: &str,
    args: &BackoffArgs,
    logs: &[ClientLog],
    times: &[TaskTimes],
    (window_start_ms, window_end_ms): (u64, u64),
    retry_line: bool,
    elapsed: Duration,
) -> RunFigures {
    let slots = u64::from(args.replicas * args.slots);
    let capacity = args.capacity as usize;
    // Utilisation from the first refusal (the queue full) to the end of arrivals.
    let overloaded_from = logs
        .iter()
        .filter_map(|l| l.refusals.first().map(|r| r.0))
        .min()
        .unwrap_or(window_start_ms);
    let span = window_end_ms.saturating_sub(overloaded_from).max(1);
    let busy: u64 = times
        .iter()
        .map(|t| {
            t.finished_ms
                .min(window_end_ms)
                .saturating_sub(t.started_ms.max(overloaded_from))
        })
        .sum();
    let utilisation = busy as f64 / (slots * span) as f64;

    // Queue length at t: submitted at or before t, not yet started.
    let mut submitted: Vec<u64> = times.iter().map(|t| t.submitted_ms).collect();
    let mut starts: Vec<u64> = times.iter().map(|t| t.started_ms).collect();
    submitted.sort_unstable();
    starts.sort_unstable();
    let queued_at =
        |t: u64| submitted.partition_point(|s| *s <= t) - starts.partition_point(|s| *s <= t);
    // The line: clients by first refusal, each with when its place was
    // released: its admission, or the expiry of its hold (ORCH-3012).
    let admitted_at: std::collections::HashMap<&str, u64> = times
        .iter()
        .map(|t| (t.task_id.as_str(), t.submitted_ms))
        .collect();
    let mut line: Vec<(u64, u64)> = logs
        .iter()
        .filter_map(|l| {
            let first = l.refusals.first()?.0;
            let (last, hint) = *l.refusals.last()?;
            let left = match admitted_at.get(l.id.as_str()) {
                Some(at) => *at,
                None => last + hint + 1_000 + hint / 4,
            };
            Some((first, left))
        })
        .collect();
    line.sort_unstable();

    let (mut retries, mut retries_admitted) = (0, 0);
    let mut hint_and_needed = Vec::new();
    for log in logs {
        let Some(&(first, _)) = log.refusals.first() else {
            continue;
        };
        for (i, &(refused_ms, hint_ms)) in log.refusals.iter().enumerate() {
            let retried = i + 1 < log.refusals.len() || log.admitted;
            if !retried {
                continue;
            }
            retries += 1;
            if i + 1 == log.refusals.len() {
                retries_admitted += 1;
            }
            // Without the line nobody holds a place: a retry needs only room.
            let ahead_at = |t: u64| {
                line.iter()
                    .take_while(|(f, _)| retry_line && *f < first)
                    .filter(|(_, left)| *left > t)
                    .count()
            };
            let fits = |t: u64| queued_at(t) + ahead_at(t) < capacity;
            let candidates = std::iter::once(refused_ms)
                .chain(starts.iter().copied().filter(|s| *s > refused_ms));
            let needed = candidates
                .filter(|t| fits(*t))
                .map(|t| t - refused_ms)
                .next()
                .unwrap_or(hint_ms);
            hint_and_needed.push((hint_ms, needed));
        }
    }
    RunFigures {
        name: name.to_owned(),
        clients: logs.len(),
        admitted: logs.iter().filter(|l| l.admitted).count(),
        retries,
        retries_admitted,
        errors: logs.iter().map(|l| l.errors).sum(),
        utilisation,
        hint_and_needed,
        elapsed,
    }
}

pub async fn main(args: BackoffArgs) -> anyhow::Result<()> {
    ensure!(
        args.seconds > 0 && args.load > 0.0,
        "--seconds and --load must be > 0"
    );
    ensure!(
        args.capacity >= 4 * args.replicas * args.slots,
        "--capacity must be at least 4 x the pool's slots, for the calibration batch"
    );
    let (hint, rate) = run("hint", &args, true, None).await?;
    let (baseline, _) = run("baseline", &args, false, Some(rate)).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "seconds": args.seconds,
                "load": args.load,
                "arrivals_per_s": rate,
                "slots": args.replicas * args.slots,
                "capacity": args.capacity,
                "profile": if cfg!(debug_assertions) { "dev" } else { "release" },
                "hint": hint.to_json(),
                "baseline": baseline.to_json(),
            }))?
        );
    } else {
        println!(
            "orch-bench backoff: arrivals {rate:.1}/s ({}x the measured service rate) for {} s, {} slots, queue {} (reject)",
            args.load,
            args.seconds,
            args.replicas * args.slots,
            args.capacity
        );
        println!();
        println!(
            "{:<10} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>11} {:>7}",
            "client",
            "tasks",
            "retries",
            "admitted",
            "utilised",
            "hint p50",
            "needed p50",
            "hint/need",
            "elapsed s",
            "errors"
        );
        for f in [&hint, &baseline] {
            println!(
                "{:<10} {:>8} {:>8} {:>8.1}% {:>9.1}% {:>8} ms {:>8} ms {:>10.2} {:>11.1} {:>7}",
                f.name,
                f.clients,
                f.retries,
                100.0 * f.admitted_share(),
                100.0 * f.utilisation,
                f.median_hint_ms(),
                f.median_needed_ms(),
                f.median_ratio(),
                f.elapsed.as_secs_f64(),
                f.errors
            );
        }
        println!();
        println!(
            "bar (>= 90% of retries admitted at the hint, >= 95% utilised, median hint <= 2x needed): {}",
            if hint.meets_the_bar() {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    ensure!(
        !args.check || hint.meets_the_bar(),
        "the hint run does not meet the bar"
    );
    Ok(())
}
