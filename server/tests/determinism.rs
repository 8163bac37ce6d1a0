//! Determinism suite (ORCH-4011, ORCH-4030, ORCH-4031): every committed seed
//! runs on both replicas of one replica set with byte-exact token streams;
//! output depends on the seed and on the prompt; the default seed is the
//! hash of the task id; and a committed snapshot per engine makes any change
//! of output a reviewed diff (`ORCH_UPDATE_DETERMINISM=1` rewrites it).

mod common;

use std::path::PathBuf;

use common::{TestServer, config_with, task};
use contracts::config::BuiltinEngineConfig;
use contracts::{StreamEvent, TaskRequest};
use orchctl::Client;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const PROMPT: &str = "the determinism suite asks for a stream";
const TOKENS: u32 = 32;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/determinism")
}

fn seeds() -> Vec<u32> {
    let text = std::fs::read_to_string(fixtures().join("seeds.txt")).expect("seeds.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("seeds.txt: {l:?} is not a u32"))
        })
        .collect()
}

/// Two replicas of one replica set, one slot each, fast: two tasks released
/// together land one on each replica.
async fn server() -> TestServer {
    TestServer::start(config_with(
        2,
        BuiltinEngineConfig {
            tokens_per_s: 20_000.0,
            ttft_ms: 0,
            slots: 1,
            ..Default::default()
        },
        |_| {},
    ))
    .await
}

/// A task's stream as the wire carries it: the raw SSE text.
async fn raw_stream(client: &Client, task_id: &str) -> String {
    reqwest::get(format!(
        "{}/v1/tasks/{task_id}/stream?scope={}",
        client.base_url(),
        client.scope().unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

/// The SSE blocks of one kind, byte for byte.
fn blocks<'a>(raw: &'a str, event: &str) -> Vec<&'a str> {
    let head = format!("event: {event}\n");
    raw.split("\n\n").filter(|b| b.starts_with(&head)).collect()
}

/// The `end` event without its one timing field (`decode_ms`), which no
/// engine can make identical across runs.
fn end_without_timing(raw: &str) -> Value {
    let end = blocks(raw, "end");
    assert_eq!(end.len(), 1, "one end event: {raw}");
    let data = end[0].split_once("data: ").expect("end data").1;
    let mut end: Value = serde_json::from_str(data).unwrap();
    end.as_object_mut().unwrap().remove("decode_ms");
    end
}

fn started(raw: &str) -> Value {
    let started = blocks(raw, "started");
    assert_eq!(started.len(), 1, "one started event: {raw}");
    serde_json::from_str(started[0].split_once("data: ").unwrap().1).unwrap()
}

struct Run {
    replica: String,
    raw: String,
}

/// Submit `requests` while dispatch is held, release, and read each stream.
async fn run_together(
    server: &TestServer,
    client: &Client,
    requests: Vec<TaskRequest>,
) -> Vec<Run> {
    let handle = server.handle();
    handle.hold_dispatch("default", true);
    let mut ids = Vec::new();
    for request in requests {
        ids.push(client.submit(request).await.unwrap().task_id);
    }
    handle.hold_dispatch("default", false);
    let mut runs = Vec::new();
    for id in ids {
        let raw = raw_stream(client, &id).await;
        let replica = started(&raw)["replica_id"].as_str().unwrap().to_owned();
        runs.push(Run { replica, raw });
    }
    runs
}

fn request(id: String, prompt: &str, seed: Option<u32>) -> TaskRequest {
    TaskRequest {
        task_id: Some(id),
        seed,
        ..task(prompt, TOKENS)
    }
}

// covers: ORCH-4030, ORCH-4011
#[tokio::test]
async fn every_committed_seed_streams_byte_identically_on_both_replicas() {
    let seeds = seeds();
    assert_eq!(seeds.len(), 64, "seeds.txt holds 64 seeds");
    let server = server().await;
    let client = server.client();
    let mut streams = Vec::new();
    for seed in &seeds {
        let [a, b]: [Run; 2] = run_together(
            &server,
            &client,
            vec![
                request(format!("seed-{seed}-a"), PROMPT, Some(*seed)),
                request(format!("seed-{seed}-b"), PROMPT, Some(*seed)),
            ],
        )
        .await
        .try_into()
        .ok()
        .unwrap();
        assert_ne!(
            a.replica, b.replica,
            "seed {seed}: both replicas of the set ran it"
        );
        let (tokens_a, tokens_b) = (blocks(&a.raw, "token"), blocks(&b.raw, "token"));
        assert_eq!(tokens_a.len(), TOKENS as usize, "seed {seed}: {}", a.raw);
        assert_eq!(
            tokens_a, tokens_b,
            "seed {seed}: token events differ across replicas"
        );
        assert_eq!(
            end_without_timing(&a.raw),
            end_without_timing(&b.raw),
            "seed {seed}: end events differ across replicas"
        );
        assert_eq!(
            started(&a.raw)["seed"],
            json!(seed),
            "started reports the seed used"
        );
        streams.push(tokens_a.join("\n\n"));
    }
    // The output really depends on the seed: 64 seeds, 64 different streams.
    let mut distinct = streams.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        streams.len(),
        "two seeds gave the same stream"
    );
}

// covers: ORCH-4011, ORCH-4030
#[tokio::test]
async fn output_depends_on_the_prompt_and_the_seed_and_nothing_else() {
    let server = server().await;
    let client = server.client();
    let texts = |runs: &[Run]| -> Vec<String> {
        runs.iter()
            .map(|r| blocks(&r.raw, "token").join("\n\n"))
            .collect()
    };
    let runs = run_together(
        &server,
        &client,
        vec![
            request("base".into(), PROMPT, Some(7)),
            request(
                "other-prompt".into(),
                "a different prompt entirely",
                Some(7),
            ),
        ],
    )
    .await;
    let [base, other_prompt] = <[String; 2]>::try_from(texts(&runs)).unwrap();
    assert_ne!(
        base, other_prompt,
        "same seed, another prompt, another stream"
    );
    let runs = run_together(
        &server,
        &client,
        vec![
            request("other-seed".into(), PROMPT, Some(8)),
            // Another task id, scope and priority do not change the output.
            TaskRequest {
                priority: Some(contracts::Priority::Batch),
                ..request("same-again".into(), PROMPT, Some(7))
            },
        ],
    )
    .await;
    let [other_seed, same_again] = <[String; 2]>::try_from(texts(&runs)).unwrap();
    assert_ne!(
        base, other_seed,
        "same prompt, another seed, another stream"
    );
    assert_eq!(base, same_again, "same prompt and seed, same stream");
    let elsewhere = server.client();
    let id = elsewhere
        .submit(request("base".into(), PROMPT, Some(7)))
        .await
        .unwrap()
        .task_id;
    let raw = raw_stream(&elsewhere, &id).await;
    assert_eq!(
        blocks(&raw, "token").join("\n\n"),
        base,
        "another scope, same stream"
    );
}

// covers: ORCH-4031
#[tokio::test]
async fn the_default_seed_is_the_hash_of_the_task_id() {
    let server = server().await;
    let client = server.client();
    let task_id = "seedless-task";
    let digest = Sha256::digest(task_id.as_bytes());
    let expected = u32::from_be_bytes(digest[..4].try_into().unwrap());
    let runs = run_together(
        &server,
        &client,
        vec![
            request(task_id.into(), PROMPT, None),
            request("explicit".into(), PROMPT, Some(expected)),
        ],
    )
    .await;
    assert_eq!(started(&runs[0].raw)["seed"], json!(expected));
    assert_eq!(
        blocks(&runs[0].raw, "token"),
        blocks(&runs[1].raw, "token"),
        "the default seed behaves exactly like the same seed given explicitly"
    );
}

// covers: ORCH-4011, ORCH-4030
#[tokio::test]
async fn builtin_output_matches_its_committed_snapshot() {
    let seed = seeds()[3];
    let server = server().await;
    let client = server.client();
    let runs = run_together(
        &server,
        &client,
        vec![request("snapshot".into(), PROMPT, Some(seed))],
    )
    .await;
    let started = started(&runs[0].raw);
    let tokens: Vec<String> = client
        .collect("snapshot")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            StreamEvent::Token(t) => Some(t.t),
            _ => None,
        })
        .take(32)
        .collect();
    let snapshot = json!({
        "engine": started["engine"],
        "engine_version": started["engine_version"],
        "prompt": PROMPT,
        "seed": seed,
        "tokens": tokens,
    });
    let engine = started["engine"].as_str().unwrap();
    let path = fixtures().join(format!("{engine}.json"));
    let rendered = serde_json::to_string_pretty(&snapshot).unwrap() + "\n";
    if std::env::var_os("ORCH_UPDATE_DETERMINISM").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run `ORCH_UPDATE_DETERMINISM=1 cargo test -p orchestratord --test determinism` and commit it",
            path.display()
        )
    });
    assert_eq!(
        committed,
        rendered,
        "the {engine} engine's output changed; if that is intended, rewrite {} with \
         `ORCH_UPDATE_DETERMINISM=1 cargo test -p orchestratord --test determinism` and have the diff reviewed",
        path.display()
    );
}
