//! The metrics contract: a real workload against its own server, `/metrics`
//! scraped and checked against `ci/metrics.lint.json` (names, types, labels,
//! label budgets) and against the workload itself (every counter moved by
//! exactly what the test caused).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TestServer, config_with, eventually, task, tokens};
use contracts::config::{BuiltinEngineConfig, FullPolicy, SessionConfig};
use contracts::{StreamEvent, TaskRequest, TaskState};
use futures::StreamExt;
use serde::Deserialize;

// ---------------------------------------------------------------- contract

#[derive(Debug, Deserialize)]
struct Contract {
    label_budgets: BTreeMap<String, usize>,
    metrics: Vec<MetricSpec>,
}

#[derive(Debug, Deserialize)]
struct MetricSpec {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    labels: Vec<String>,
    #[serde(default)]
    label_values: BTreeMap<String, Vec<String>>,
}

fn contract() -> Contract {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/metrics.lint.json");
    let text = std::fs::read_to_string(path).expect("ci/metrics.lint.json is readable");
    serde_json::from_str(&text).expect("ci/metrics.lint.json parses")
}

// ------------------------------------------------------ exposition parsing

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

/// Families by the name a user queries: counters as `X_total`.
#[derive(Debug, Default)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
                let name = if kind == "counter" && !name.ends_with("_total") {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                families.entry(name.clone()).or_default().kind = kind.to_owned();
                current = Some(name);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line);
            let family = current
                .clone()
                .unwrap_or_else(|| panic!("sample before any TYPE line: {line}"));
            families.get_mut(&family).unwrap().samples.push(sample);
        }
        Self { families }
    }

    /// Sum of the samples named `sample` whose labels include `with`.
    fn value(&self, sample: &str, with: &[(&str, &str)]) -> f64 {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == sample)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.value)
            .sum()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open..]),
        None => line.split_at(line.find(' ').expect("sample has a value")),
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let key = key.trim_start_matches(',').trim().to_owned();
            if key.is_empty() {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "label value quoted in {line}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => panic!("dangling escape in {line}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
            match chars.next() {
                Some(',') => {
                    if chars.peek() == Some(&'}') {
                        chars.next();
                        break;
                    }
                }
                Some('}') => break,
                other => panic!("unexpected {other:?} in {line}"),
            }
        }
    }
    let rest: String = chars.collect();
    let value = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no value in {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

// ------------------------------------------------------------------- lint

/// Every way the exposition breaks the contract, one line each.
fn lint(contract: &Contract, exposition: &Exposition) -> Vec<String> {
    let mut violations = Vec::new();
    let specified: BTreeSet<&str> = contract.metrics.iter().map(|m| m.name.as_str()).collect();
    for name in exposition.families.keys() {
        if !specified.contains(name.as_str()) {
            violations.push(format!(
                "{name}: exposed but not in ci/metrics.lint.json (add it there and to the spec)"
            ));
        }
    }
    for spec in &contract.metrics {
        let Some(family) = exposition.families.get(&spec.name) else {
            violations.push(format!("{}: missing", spec.name));
            continue;
        };
        if family.kind != spec.kind {
            violations.push(format!(
                "{}: type {} but the contract says {}",
                spec.name, family.kind, spec.kind
            ));
        }
        let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for sample in &family.samples {
            for label in &spec.labels {
                match sample.labels.get(label) {
                    Some(value) => {
                        values.entry(label).or_default().insert(value);
                    }
                    None => violations.push(format!(
                        "{}: sample {} lacks label {label}",
                        spec.name, sample.name
                    )),
                }
            }
        }
        for (label, seen) in &values {
            let budget = contract.label_budgets.get(*label).copied().unwrap_or(1);
            if seen.len() > budget {
                violations.push(format!(
                    "{}: label {label} has {} values, over its budget of {budget}",
                    spec.name,
                    seen.len()
                ));
            }
            if let Some(allowed) = spec.label_values.get(*label) {
                for value in seen {
                    if !allowed.iter().any(|a| a == value) {
                        violations.push(format!(
                            "{}: label {label}={value:?} is not one of {allowed:?}",
                            spec.name
                        ));
                    }
                }
            }
        }
    }
    violations.dedup();
    violations
}

async fn scrape(url: &str) -> Exposition {
    let response = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.contains("text"), "{content_type}");
    Exposition::parse(&response.text().await.unwrap())
}

async fn raw_submit(url: &str, body: serde_json::Value) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn words(prompt: &str) -> f64 {
    prompt.split_whitespace().count() as f64
}

// ------------------------------------------------------------------ tests

// covers: ORCH-7101, ORCH-7106, ORCH-7107, ORCH-7108, ORCH-7109
#[tokio::test]
async fn metrics_follow_the_contract_and_agree_with_a_real_workload() {
    let contract = contract();
    let config = config_with(2, BuiltinEngineConfig::default(), |pool| {
        pool.queue.capacity = 2;
        pool.queue.full_policy = FullPolicy::Reject;
    });
    let server = TestServer::start(config).await;
    let url = server.url();
    let client = server.client();
    let before = scrape(&url).await;
    assert_eq!(lint(&contract, &before), Vec::<String>::new());
    assert_eq!(
        before.value("replica_ready", &[("pool", "default"), ("replica", "r0")]),
        1.0
    );

    let mut admitted_prompts: Vec<String> = Vec::new();
    let mut task_ids: Vec<String> = Vec::new();

    // Three tasks run to completion.
    for n in 0..3 {
        let prompt = format!("complete me please {n}");
        let id = client.submit(task(&prompt, 5 + n)).await.unwrap().task_id;
        admitted_prompts.push(prompt);
        task_ids.push(id);
    }
    // One long task canceled while it streams.
    let prompt = "a long one to cancel".to_owned();
    let canceled = client.submit(task(&prompt, 4_000)).await.unwrap().task_id;
    admitted_prompts.push(prompt);
    task_ids.push(canceled.clone());
    let mut stream = Box::pin(client.stream(&canceled).await.unwrap());
    while let Some(event) = stream.next().await {
        if matches!(event.unwrap(), StreamEvent::Token(_)) {
            break;
        }
    }
    drop(stream);
    client.cancel(&canceled).await.unwrap();

    // A held full queue (capacity 2, policy reject) refuses three more.
    server.handle().hold_dispatch("default", true);
    for n in 0..2 {
        let prompt = format!("queued while held {n}");
        let id = client.submit(task(&prompt, 3)).await.unwrap().task_id;
        admitted_prompts.push(prompt);
        task_ids.push(id);
    }
    for n in 0..3 {
        let refused = client.submit(task(&format!("refused {n}"), 3)).await;
        assert_eq!(refused.unwrap_err().status(), Some(429));
    }
    let held = scrape(&url).await;
    assert_eq!(held.value("queue_depth", &[("pool", "default")]), 2.0);
    server.handle().hold_dispatch("default", false);

    // Invalid requests: over the token limit, an unknown field, an unknown pool.
    let over_limit = serde_json::json!({"prompt": "too long", "max_tokens": 1_000_000});
    assert_eq!(raw_submit(&url, over_limit).await, 400);
    let unknown_field = serde_json::json!({"prompt": "x", "max_tokens": 1, "colour": "red"});
    assert_eq!(raw_submit(&url, unknown_field).await, 400);
    let unknown_pool = serde_json::json!({"prompt": "x", "max_tokens": 1, "pool_id": "nope-123"});
    assert_eq!(raw_submit(&url, unknown_pool).await, 400);

    // Every admitted task reaches its end; count what was really streamed.
    let (mut streamed, mut with_tokens, mut completed) = (0usize, 0usize, 0usize);
    for id in &task_ids {
        let events = client.collect(id).await.unwrap();
        let n = tokens(&events).len();
        streamed += n;
        with_tokens += usize::from(n > 0);
        let state = client.status(id).await.unwrap().state;
        completed += usize::from(state == TaskState::Completed);
    }
    assert_eq!(
        completed,
        task_ids.len() - 1,
        "all but the canceled one complete"
    );
    // Completions are recorded before `end` is published, so a scrape right
    // after the last stream already counts them.
    let after = scrape(&url).await;
    let violations = lint(&contract, &after);
    assert!(
        violations.is_empty(),
        "metrics lint:\n{}",
        violations.join("\n")
    );

    let grew =
        |name: &str, with: &[(&str, &str)]| after.value(name, with) - before.value(name, with);
    let pool = [("pool", "default")];
    assert_eq!(grew("tasks_enqueued_total", &pool), task_ids.len() as f64);
    assert_eq!(grew("tasks_started_total", &pool), task_ids.len() as f64);
    assert_eq!(grew("tasks_canceled_total", &pool), 1.0);
    assert_eq!(grew("tokens_out_total", &pool), streamed as f64);
    let prompt_tokens: f64 = admitted_prompts.iter().map(|p| words(p)).sum();
    assert_eq!(grew("tokens_in_total", &pool), prompt_tokens);
    // Every admitted task ran: its tenant was served its prompt and its
    // tokens, and waited once per start (ORCH-3015).
    let tenant = [("pool", "default"), ("tenant", "default")];
    assert_eq!(
        grew("tenant_served_tokens_total", &tenant),
        prompt_tokens + streamed as f64
    );
    assert_eq!(
        grew("tenant_queue_wait_ms_count", &tenant),
        task_ids.len() as f64
    );
    let rejected = |reason: &str, pool: &str| {
        grew(
            "tasks_rejected_total",
            &[("pool", pool), ("reason", reason)],
        )
    };
    assert_eq!(rejected("reject", "default"), 3.0);
    assert_eq!(rejected("invalid-params", "default"), 1.0);
    assert_eq!(rejected("invalid-params", "_unknown"), 2.0);
    assert_eq!(
        grew("tasks_rejected_total", &[]),
        6.0,
        "no other rejection counted"
    );
    assert_eq!(
        grew("latency_first_token_ms_count", &pool),
        with_tokens as f64
    );
    assert_eq!(grew("latency_decode_ms_count", &pool), completed as f64);
    assert!(after.value("latency_decode_ms_sum", &pool) > 0.0);
    assert_eq!(after.value("queue_depth", &pool), 0.0);
    for replica in ["r0", "r1"] {
        let labels = [
            ("pool", "default"),
            ("replica", replica),
            ("engine", "builtin"),
            ("engine_version", "builtin-1.0.0"),
        ];
        assert_eq!(after.value("replica_ready", &labels), 1.0);
    }
}

// covers: ORCH-7109
#[tokio::test]
async fn kv_cache_utilization_follows_the_sessions_kv_on_each_replica() {
    let server = TestServer::start(config_with(2, BuiltinEngineConfig::default(), |_| {})).await;
    let url = server.url();
    let client = server.client();
    let before = scrape(&url).await;
    assert_eq!(before.value("kv_cache_utilization", &[]), 0.0);

    let request = TaskRequest {
        session_id: Some("kv-session".into()),
        ..task("remember these few words", 8)
    };
    let id = client.submit(request).await.unwrap().task_id;
    client.collect(&id).await.unwrap();
    let mut info = client.session("kv-session").await.unwrap();
    eventually(Duration::from_secs(5), "the turn holds KV", async || {
        info = client.session("kv-session").await.unwrap();
        info.kv_bytes > 0
    })
    .await;
    let warm = info.replica_id.clone().expect("the session has a replica");
    let budget = SessionConfig::default().kv_budget_bytes_per_replica as f64;
    let after = scrape(&url).await;
    for replica in ["r0", "r1"] {
        let value = after.value(
            "kv_cache_utilization",
            &[("pool", "default"), ("replica", replica)],
        );
        let expected = if replica == warm {
            info.kv_bytes as f64 / budget
        } else {
            0.0
        };
        assert!(
            (value - expected).abs() < 1e-12,
            "{replica}: {value} vs {expected}"
        );
    }
    assert!(lint(&contract(), &after).is_empty());
}

// covers: ORCH-7107
#[tokio::test]
async fn evictions_count_as_rejections_by_policy() {
    let config = config_with(1, BuiltinEngineConfig::default(), |pool| {
        pool.queue.capacity = 1;
        pool.queue.full_policy = FullPolicy::DropLru;
    });
    let server = TestServer::start(config).await;
    server.handle().hold_dispatch("default", true);
    let client = server.client();
    let before = scrape(&server.url()).await;
    let evicted = client.submit(task("old", 2)).await.unwrap().task_id;
    let kept = client.submit(task("new", 2)).await.unwrap().task_id;
    let events = client.collect(&evicted).await.unwrap();
    assert!(
        matches!(events.as_slice(), [StreamEvent::Error(_)]),
        "{events:?}"
    );
    let after = scrape(&server.url()).await;
    let labels = [("pool", "default"), ("reason", "drop-lru")];
    assert_eq!(
        after.value("tasks_rejected_total", &labels)
            - before.value("tasks_rejected_total", &labels),
        1.0
    );
    assert_eq!(
        after.value("tasks_enqueued_total", &[]) - before.value("tasks_enqueued_total", &[]),
        2.0
    );
    server.handle().hold_dispatch("default", false);
    client.collect(&kept).await.unwrap();
}

// covers: ORCH-7101
#[test]
fn the_lint_fails_on_a_missing_metric_a_wrong_type_a_missing_label_and_a_label_over_budget() {
    let contract = Contract {
        label_budgets: BTreeMap::from([("pool".into(), 2), ("reason".into(), 3)]),
        metrics: vec![
            MetricSpec {
                name: "a_total".into(),
                kind: "counter".into(),
                labels: vec!["pool".into()],
                label_values: BTreeMap::new(),
            },
            MetricSpec {
                name: "b".into(),
                kind: "gauge".into(),
                labels: vec!["pool".into(), "reason".into()],
                label_values: BTreeMap::from([("reason".into(), vec!["x".into(), "y".into()])]),
            },
            MetricSpec {
                name: "c_ms".into(),
                kind: "histogram".into(),
                labels: vec![],
                label_values: BTreeMap::new(),
            },
        ],
    };
    let good = "# TYPE a counter\na_total{pool=\"p\"} 1\n# TYPE b gauge\nb{pool=\"p\",reason=\"x\"} 2\n# TYPE c_ms histogram\nc_ms_count 0\n# EOF\n";
    assert_eq!(
        lint(&contract, &Exposition::parse(good)),
        Vec::<String>::new()
    );

    let cases = [
        (
            "# TYPE b gauge\nb{pool=\"p\",reason=\"x\"} 2\n# TYPE c_ms histogram\n",
            "a_total: missing",
        ),
        (
            "# TYPE a_total gauge\na_total{pool=\"p\"} 1\n# TYPE b gauge\n# TYPE c_ms histogram\n",
            "a_total: type gauge",
        ),
        (
            "# TYPE a counter\na_total 1\n# TYPE b gauge\n# TYPE c_ms histogram\n",
            "lacks label pool",
        ),
        (
            "# TYPE a counter\na_total{pool=\"p\"} 1\na_total{pool=\"q\"} 1\na_total{pool=\"r\"} 1\n# TYPE b gauge\n# TYPE c_ms histogram\n",
            "label pool has 3 values, over its budget of 2",
        ),
        (
            "# TYPE a counter\n# TYPE b gauge\nb{pool=\"p\",reason=\"z\\\"q\"} 1\n# TYPE c_ms histogram\n",
            "reason=\"z\\\"q\" is not one of",
        ),
        (
            "# TYPE a counter\n# TYPE b gauge\n# TYPE c_ms histogram\n# TYPE d gauge\n",
            "d: exposed but not in",
        ),
    ];
    for (text, expected) in cases {
        let violations = lint(&contract, &Exposition::parse(text));
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "expected {expected:?} in {violations:?} for\n{text}"
        );
    }
}

// ------------------------------------------------------------------- logs

/// Every log line of this test binary, as JSON (one global subscriber).
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Writer(logs))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

struct Writer(&'static std::sync::Mutex<Vec<u8>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines(task_id: &str) -> Vec<serde_json::Value> {
    let logs = captured_logs().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["task_id"] == task_id)
        .collect()
}

// covers: ORCH-7102, ORCH-7110
#[tokio::test]
async fn a_task_end_is_logged_once_with_its_timing_fields() {
    captured_logs();
    let server = TestServer::default().await;
    let client = server.client();
    let request = TaskRequest {
        session_id: Some("logged-session".into()),
        ..task("log my end", 6)
    };
    let id = client.submit(request).await.unwrap().task_id;
    let events = client.collect(&id).await.unwrap();
    let streamed = tokens(&events).len();
    let mut ends = Vec::new();
    eventually(Duration::from_secs(5), "the end is logged", async || {
        ends = log_lines(&id)
            .into_iter()
            .filter(|line| line["fields"]["message"] == "task ended")
            .collect();
        !ends.is_empty()
    })
    .await;
    let [end] = ends.as_slice() else {
        panic!("one end line: {ends:#?}")
    };
    let fields = &end["fields"];
    assert_eq!(end["level"], "INFO");
    assert_eq!(fields["pool"], "default");
    assert_eq!(fields["engine"], "builtin");
    assert_eq!(fields["session"], "logged-session");
    assert_eq!(fields["state"], "completed");
    assert_eq!(fields["tokens_out"], streamed as u64);
    assert!(fields["replica"].is_string(), "{fields}");
    assert!(fields["decode_ms"].is_u64(), "{fields}");
    assert!(fields["ttft_ms"].is_u64(), "{fields}");
    let started: Vec<_> = log_lines(&id)
        .into_iter()
        .filter(|line| line["fields"]["message"] == "task started")
        .collect();
    assert_eq!(started.len(), 1, "{started:#?}");
    assert!(started[0]["fields"]["queue_time_ms"].is_u64());
}

// covers: ORCH-2002
#[tokio::test]
async fn every_error_answer_has_its_own_correlation_id_and_a_log_record_under_it() {
    captured_logs();
    let server = TestServer::default().await;
    let client = server.client();
    let invalid = || client.submit(task("", 1));
    let (first, second) = (invalid().await.unwrap_err(), invalid().await.unwrap_err());
    server.handle().refuse_store_writes(true);
    let internal = client.submit(task("p", 1)).await.unwrap_err();
    server.handle().refuse_store_writes(false);
    let envelopes: Vec<_> = [first, second, internal]
        .iter()
        .map(|e| e.envelope().expect("an envelope").clone())
        .collect();
    let ids: BTreeSet<_> = envelopes.iter().map(|e| &e.correlation_id).collect();
    assert_eq!(
        ids.len(),
        3,
        "one correlation id per occurrence: {envelopes:?}"
    );
    let logs = captured_logs().lock().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&logs)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    for envelope in &envelopes {
        let logged: Vec<_> = lines
            .iter()
            .filter(|l| l["fields"]["correlation_id"] == envelope.correlation_id.as_str())
            .collect();
        let [line] = logged.as_slice() else {
            panic!("one log record for {envelope:?}: {logged:#?}")
        };
        assert_eq!(line["fields"]["code"], envelope.code.to_string(), "{line}");
        let level = if envelope.code == contracts::ErrorCode::Internal {
            "ERROR"
        } else {
            "INFO"
        };
        assert_eq!(line["level"], level, "{line}");
    }
}

// covers: ORCH-8001, ORCH-7101
#[tokio::test]
async fn requests_of_the_openai_surface_are_counted_like_tasks() {
    let server = TestServer::default().await;
    let url = server.url();
    let before = scrape(&url).await;
    let http = reqwest::Client::new();
    let chat = serde_json::json!({
        "model": "default", "max_tokens": 3, "seed": 1,
        "messages": [{"role": "user", "content": "count me"}],
    });
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let mut body = chat.clone();
        if path == "/v1/completions" {
            body = serde_json::json!({"model": "default", "max_tokens": 3, "prompt": "count me"});
        }
        let answer = http
            .post(format!("{url}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let mut refused = body.clone();
        refused["n"] = 2.into();
        let answer = http
            .post(format!("{url}{path}"))
            .json(&refused)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400);
    }
    let after = scrape(&url).await;
    let grew =
        |name: &str, with: &[(&str, &str)]| after.value(name, with) - before.value(name, with);
    let pool = [("pool", "default")];
    assert_eq!(grew("tasks_enqueued_total", &pool), 2.0);
    assert_eq!(grew("tokens_out_total", &pool), 6.0);
    assert_eq!(
        grew(
            "tasks_rejected_total",
            &[("pool", "_unknown"), ("reason", "invalid-params")]
        ),
        2.0
    );
}
