//! Fair share between tenants end to end (ORCH-3015, ORCH-3016): a flood
//! from one tenant and a light tenant's tasks, dispatched by builtin engines
//! whose journal records the order of generations.

mod common;

use std::path::Path;

use std::time::Duration;

use common::{TestServer, config_with, eventually, journal, task, unique_scope};
use contracts::config::{BuiltinEngineConfig, Config, Fairness, Role, TenantConfig};
use orchctl::Client;
use orchestratord::runtime::key_hash;

fn tenant(id: &str, weight: u32) -> TenantConfig {
    TenantConfig {
        weight,
        token_rate_limit: None,
        id: id.into(),
        role: Role::Client,
        api_key_sha256: vec![key_hash(&format!("{id}-key"))],
        max_concurrent: None,
        rate_limit: None,
    }
}

/// One pool of one fast builtin replica with `slots` slots that journals
/// each generation's prompt.
fn config(journal: &Path, slots: u32, fairness: Fairness, tenants: Vec<TenantConfig>) -> Config {
    let engine = BuiltinEngineConfig {
        slots,
        tokens_per_s: 20_000.0,
        ttft_ms: 0,
        journal: Some(journal.display().to_string()),
        ..BuiltinEngineConfig::default()
    };
    Config {
        tenants,
        ..config_with(1, engine, |pool| {
            pool.queue.capacity = 1_000;
            pool.queue.fairness = fairness;
        })
    }
}

fn client(server: &TestServer, tenant: &str, scope: &str) -> Client {
    Client::new(server.url())
        .with_api_key(format!("{tenant}-key"))
        .with_scope(scope)
}

/// The builtin engine counts a prompt's words as its tokens.
fn cost(prompt: &str, max_tokens: u32) -> u64 {
    prompt.split_whitespace().count() as u64 + u64::from(max_tokens)
}

/// A server whose tenants `flood` and `light` have equal weights, and the
/// directory of its engine's journal.
async fn flood_and_light(slots: u32, fairness: Fairness) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(
        &dir.path().join("journal"),
        slots,
        fairness,
        vec![tenant("flood", 1), tenant("light", 1)],
    ))
    .await;
    (dir, server)
}

/// Per light task: the flood's tasks generated between its admission and
/// its own generation, as the journal tells, and its queue position.
async fn light_tenant_under_a_flood(fairness: Fairness) -> Vec<(usize, u32)> {
    let (dir, server) = flood_and_light(2, fairness).await;
    let path = dir.path().join("journal");
    let handle = server.handle();
    let scope = unique_scope();
    let flood = client(&server, "flood", &scope);
    let light = client(&server, "light", &scope);
    handle.hold_dispatch("default", true);
    for n in 0..80 {
        flood.submit(task(&format!("flood {n}"), 48)).await.unwrap();
    }
    handle.hold_dispatch("default", false);
    let mut seen = Vec::new();
    for n in 0..4 {
        // Dispatch held while the light task is admitted, so the journal's
        // length then is exactly what was dispatched before it.
        handle.hold_dispatch("default", true);
        let before = journal(&path).len();
        let prompt = format!("light {n}");
        let admitted = light.submit(task(&prompt, 48)).await.unwrap();
        handle.hold_dispatch("default", false);
        light.collect(&admitted.task_id).await.unwrap();
        let order = journal(&path);
        let at = order
            .iter()
            .position(|p| *p == prompt)
            .expect("the light task ran");
        seen.push((at - before, admitted.queue_position));
    }
    seen
}

// covers: ORCH-3015, ORCH-3016
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_tenant_waits_within_the_bound_behind_a_flood_and_the_whole_flood_without_fairness()
{
    // Every task costs C = 2 + 48 tokens; with equal weights and nothing of
    // its own queued, the bound lets the flood be served at most 2 C ahead:
    // two of its tasks.
    let c = cost("flood 0", 48);
    let bound_tasks = ((c + c) / c) as usize;
    for (ahead, position) in light_tenant_under_a_flood(Fairness::Weighted).await {
        assert!(
            ahead <= bound_tasks,
            "{ahead} flood tasks were dispatched ahead of a light task (bound {bound_tasks})"
        );
        assert!(
            position as usize <= bound_tasks,
            "admitted at position {position}"
        );
    }
    // The same flood under FIFO: the light task waits for the whole backlog.
    let fifo = light_tenant_under_a_flood(Fairness::Fifo).await;
    assert!(
        fifo[0].0 > 40,
        "without fair sharing the first light task waited behind {} flood tasks",
        fifo[0].0
    );
}

/// Jain's index of `x`: 1 when all are equal, 1/n when one has everything.
fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    sum * sum / (x.len() as f64 * squares)
}

/// Tokens served per tenant over the window in which every tenant still had
/// tasks queued: the journal's order until the first tenant's last task.
fn served_while_all_backlogged(order: &[String], tenants: &[(&str, u32, u32)]) -> Vec<f64> {
    let last_of = |name: &str| {
        order
            .iter()
            .rposition(|p| p.starts_with(name))
            .expect("every tenant ran")
    };
    let window = tenants
        .iter()
        .map(|(name, _, _)| last_of(name))
        .min()
        .unwrap();
    tenants
        .iter()
        .map(|(name, weight, max_tokens)| {
            let served: u64 = order[..window]
                .iter()
                .filter(|p| p.starts_with(name))
                .map(|p| cost(p, *max_tokens))
                .sum();
            served as f64 / f64::from(*weight)
        })
        .collect()
}

/// Three tenants' backlogs, admitted in turns, run to the end; each tenant's
/// served tokens over its weight while all were backlogged.
async fn three_backlogs(fairness: Fairness, tenants: &[(&str, u32, u32)]) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let server = TestServer::start(config(
        &path,
        1,
        fairness,
        tenants
            .iter()
            .map(|(name, weight, _)| tenant(name, *weight))
            .collect(),
    ))
    .await;
    let handle = server.handle();
    let scope = unique_scope();
    handle.hold_dispatch("default", true);
    let mut last = Vec::new();
    for n in 0..40 {
        for (name, _, max_tokens) in tenants {
            let admitted = client(&server, name, &scope)
                .submit(task(&format!("{name} {n}"), *max_tokens))
                .await
                .unwrap();
            if n == 39 {
                last.push((name, admitted.task_id));
            }
        }
    }
    handle.hold_dispatch("default", false);
    for (name, id) in last {
        client(&server, name, &scope).collect(&id).await.unwrap();
    }
    served_while_all_backlogged(&journal(&path), tenants)
}

// covers: ORCH-3015
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogged_tenants_are_served_tokens_in_proportion_to_their_weights() {
    // Tasks of 8, 32 and 16 tokens: equal turns would serve the second
    // tenant four times the first's tokens.
    let tenants = [("small", 1, 6), ("large", 1, 30), ("medium", 1, 14)];
    let fair = three_backlogs(Fairness::Weighted, &tenants).await;
    assert!(
        jain(&fair) >= 0.9,
        "Jain's index {} of {fair:?}",
        jain(&fair)
    );
    let fifo = three_backlogs(Fairness::Fifo, &tenants).await;
    assert!(
        jain(&fifo) < 0.9,
        "FIFO's Jain's index {} of {fifo:?}",
        jain(&fifo)
    );
    // Weights 1, 2 and 3: served tokens over weight are even again.
    let weighted = [("one", 1, 14), ("two", 2, 14), ("three", 3, 14)];
    let shares = three_backlogs(Fairness::Weighted, &weighted).await;
    assert!(
        jain(&shares) >= 0.9,
        "Jain's index {} of {shares:?}",
        jain(&shares)
    );
}

/// How many flood tasks ran before a light tenant's completion request on
/// the OpenAI surface, which waits in the same queue as the task API's.
async fn flood_ahead_of_an_openai_completion(fairness: Fairness) -> usize {
    let (dir, server) = flood_and_light(1, fairness).await;
    let path = dir.path().join("journal");
    let handle = server.handle();
    let scope = unique_scope();
    handle.hold_dispatch("default", true);
    let flood = client(&server, "flood", &scope);
    for n in 0..30 {
        flood.submit(task(&format!("flood {n}"), 16)).await.unwrap();
    }
    let url = format!("{}/v1/completions", server.url());
    let completion = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth("light-key")
            .json(&serde_json::json!({
                "model": "default",
                "prompt": "light openai",
                "max_tokens": 16,
            }))
            .send()
            .await
            .unwrap()
    });
    let light = client(&server, "light", &scope);
    eventually(
        Duration::from_secs(5),
        "the completion is queued",
        async || light.usage(None).await.unwrap().tenants[0].pools[0].queued == 1,
    )
    .await;
    handle.hold_dispatch("default", false);
    let answer = completion.await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(body["choices"][0]["text"].is_string(), "{body}");
    journal(&path)
        .iter()
        .position(|p| p == "light openai")
        .expect("the completion ran")
}

// covers: ORCH-3015, ORCH-8001
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_on_the_openai_surface_gets_the_same_fair_share_as_a_task() {
    // Equal weights and costs: the flood is served at most 2 C ahead.
    let ahead = flood_ahead_of_an_openai_completion(Fairness::Weighted).await;
    assert!(
        ahead <= 2,
        "{ahead} flood tasks ran ahead of the completion"
    );
    let fifo = flood_ahead_of_an_openai_completion(Fairness::Fifo).await;
    assert_eq!(
        fifo, 30,
        "without fair share it waits behind the whole flood"
    );
}
