//! Provider states: each one creates the real situation its name describes,
//! in two parts — what the server's config must be (applied before the
//! interaction's fresh server starts) and what to do on the running server
//! (through the real client and the in-process `TestHandle`).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use contracts::config::{
    BuiltinFaults, Config, EngineConfig, FullPolicy, RateLimitConfig, Role, TenantConfig,
    TimeoutConfig,
};
use contracts::{Priority, StreamEvent, TaskRequest, TaskState};
use orchctl::Client;
use orchestratord::TestHandle;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Every provider state this server knows, by name.
pub const KNOWN: &[&str] = &[
    "pool {pool} has free Ready slots",
    "pool {pool} has {replicas} Ready builtin replicas",
    "pool {pool} does not exist",
    "pool {pool} allows at most {max_tokens_limit} tokens per task",
    "pool {pool} serves a model with a context of {ctx_limit} tokens",
    "pool {pool} runs sampler profile {sampler_profile_version}",
    "pool {pool} is full with policy {policy}",
    "pool {pool} is draining",
    "every replica of pool {pool} is starting",
    "replicas of pool {pool} take {load_ms} ms to load a model",
    "the store refuses writes",
    "the server accepts request bodies of at most {max_body_bytes} bytes",
    "tenant {tenant} holds key {api_key} with role {role}",
    "tenant {tenant} with key {api_key} has used its rate limit of {burst} admissions",
    "task {task_id} was admitted in scope {scope} with prompt {prompt} and max_tokens {max_tokens}",
    "task {task_id} completed in scope {scope} with prompt {prompt}, max_tokens {max_tokens} and seed {seed}",
    "task {task_id} in scope {scope} lost its replica after {tokens} tokens",
    "task {task_id} completed in scope {scope} with seed {seed} and a metrics event every {metrics_interval_ms} ms",
    "task {task_id} in scope {scope} tripped the idle watchdog",
    "task {task_id} in scope {scope} was rejected by its engine as invalid",
    "task {task_id} in scope {scope} failed because the store refused to record its start",
    "task {task_id} in scope {scope} was evicted from pool {pool} by policy drop-lru",
    "batch task {task_id} in scope {scope} was shed from pool {pool} by an interactive arrival",
    "task {task_id} in scope {scope} was still queued at its deadline of {deadline_ms} ms",
    "task {task_id} in scope {scope} was queued in pool {pool} when its drain deadline passed",
    "task {task_id} in scope {scope} was canceled after {tokens} tokens",
    "task {task_id} is queued in scope {scope} while dispatch of pool {pool} is held",
    "task {task_id} is running in scope {scope} on replica {replica}",
    "task {task_id} exists only in scope {other_scope}",
    "{count} tasks completed in scope {scope}",
    "session {session_id} in scope {scope} has {turns} completed turn",
    "session {session_id} in scope {scope} has expired",
    "scope {scope} holds {queued} queued and {completed} completed task",
];

/// The parameters of one provider state, remembering which ones the state read:
/// a state that ignores a parameter it was given fails naming it.
#[derive(Debug, Default)]
pub struct Params {
    values: HashMap<String, Value>,
    read: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Params {
    pub fn new(values: HashMap<String, Value>) -> Self {
        Self {
            values,
            read: Default::default(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.read.lock().unwrap().insert(key.to_owned());
        self.values.get(key)
    }

    pub fn read(&self) -> std::collections::BTreeSet<String> {
        self.read.lock().unwrap().clone()
    }

    /// The parameters neither this nor the `also_read` of another phase read.
    pub fn ignored(&self, also_read: &std::collections::BTreeSet<String>) -> Vec<String> {
        let read = self.read();
        self.values
            .keys()
            .filter(|k| !read.contains(*k) && !also_read.contains(*k))
            .cloned()
            .collect()
    }
}

fn s<'a>(params: &'a Params, key: &str) -> Result<&'a str> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("provider state parameter {key:?} (a string) is missing"))
}

fn n(params: &Params, key: &str) -> Result<u64> {
    params
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("provider state parameter {key:?} (a number) is missing"))
}

fn pool_mut<'a>(
    config: &'a mut Config,
    params: &Params,
) -> Result<&'a mut contracts::config::PoolConfig> {
    let pool = s(params, "pool")?;
    config
        .pools
        .iter_mut()
        .find(|p| p.id == pool)
        .ok_or_else(|| anyhow!("no pool {pool:?} in the provider config"))
}

fn builtins(config: &mut Config, mut f: impl FnMut(&mut contracts::config::BuiltinEngineConfig)) {
    for pool in &mut config.pools {
        for replica in &mut pool.replicas {
            if let EngineConfig::Builtin(engine) = &mut replica.engine {
                f(engine);
            }
        }
    }
}

fn tenant(id: &str, key: &str, role: Role) -> TenantConfig {
    TenantConfig {
        weight: 1,
        token_rate_limit: None,
        id: id.into(),
        role,
        api_key_sha256: vec![hex::encode(Sha256::digest(key.as_bytes()))],
        max_concurrent: None,
        rate_limit: None,
    }
}

/// Shape the config of the interaction's fresh server for `state`. Fails
/// loudly, naming it, on a state this provider does not know.
pub fn configure(config: &mut Config, state: &str, params: &Params) -> Result<()> {
    if !KNOWN.contains(&state) {
        bail!("unknown provider state {state:?} (known: {KNOWN:#?})");
    }
    match state {
        "the server accepts request bodies of at most {max_body_bytes} bytes" => {
            let limit = n(params, "max_body_bytes")?;
            config.max_body_bytes = limit;
            // A prompt limit above the body limit is a config the server refuses.
            for pool in &mut config.pools {
                pool.max_prompt_bytes = pool.max_prompt_bytes.min(limit as u32);
            }
        }
        "task {task_id} completed in scope {scope} with seed {seed} and a metrics event every {metrics_interval_ms} ms" =>
        {
            let every = n(params, "metrics_interval_ms")?;
            for pool in &mut config.pools {
                pool.metrics_interval_ms = every;
            }
            // The first token comes after several intervals, so the stream has a
            // `metrics` event before it.
            builtins(config, |e| e.ttft_ms = every * 5);
        }
        "pool {pool} has {replicas} Ready builtin replicas" => {
            let count = n(params, "replicas")? as usize;
            let pool = pool_mut(config, params)?;
            let template = pool
                .replicas
                .first()
                .cloned()
                .ok_or_else(|| anyhow!("pool {:?} has no replica to copy", pool.id))?;
            pool.replicas = (0..count)
                .map(|i| contracts::config::ReplicaConfig {
                    id: format!("r{i}"),
                    ..template.clone()
                })
                .collect();
        }
        "pool {pool} does not exist" => {
            let pool = s(params, "pool")?;
            if config.pools.iter().any(|p| p.id == pool) {
                bail!("pool {pool:?} exists");
            }
        }
        "pool {pool} allows at most {max_tokens_limit} tokens per task" => {
            let limit = n(params, "max_tokens_limit")? as u32;
            pool_mut(config, params)?.max_tokens_limit = limit;
        }
        "pool {pool} serves a model with a context of {ctx_limit} tokens" => {
            let ctx = n(params, "ctx_limit")? as u32;
            builtins(config, |e| e.ctx_limit = ctx);
        }
        "replicas of pool {pool} take {load_ms} ms to load a model" => {
            let load_ms = n(params, "load_ms")?;
            for replica in &mut pool_mut(config, params)?.replicas {
                if let EngineConfig::Builtin(engine) = &mut replica.engine {
                    engine.start_unready_ms = load_ms;
                }
            }
        }
        "pool {pool} runs sampler profile {sampler_profile_version}" => {
            let version = s(params, "sampler_profile_version")?.to_owned();
            pool_mut(config, params)?.sampler_profile_version = version;
        }
        "pool {pool} is full with policy {policy}" => {
            let policy = match s(params, "policy")? {
                "reject" => FullPolicy::Reject,
                "drop-lru" => FullPolicy::DropLru,
                "shed-low-priority" => FullPolicy::ShedLowPriority,
                other => bail!("unknown policy {other:?}"),
            };
            let capacity = n(params, "capacity")? as u32;
            let pool = pool_mut(config, params)?;
            pool.queue.full_policy = policy;
            pool.queue.capacity = capacity;
        }
        "task {task_id} in scope {scope} was evicted from pool {pool} by policy drop-lru" => {
            let pool = pool_mut(config, params)?;
            pool.queue.full_policy = FullPolicy::DropLru;
            pool.queue.capacity = 1;
        }
        "batch task {task_id} in scope {scope} was shed from pool {pool} by an interactive arrival" =>
        {
            let pool = pool_mut(config, params)?;
            pool.queue.full_policy = FullPolicy::ShedLowPriority;
            pool.queue.capacity = 1;
        }
        "every replica of pool {pool} is starting" => {
            builtins(config, |e| e.start_unready_ms = 600_000);
        }
        "tenant {tenant} holds key {api_key} with role {role}" => {
            let role = match s(params, "role")? {
                "admin" => Role::Admin,
                _ => Role::Client,
            };
            config
                .tenants
                .push(tenant(s(params, "tenant")?, s(params, "api_key")?, role));
        }
        "tenant {tenant} with key {api_key} has used its rate limit of {burst} admissions" => {
            let mut t = tenant(s(params, "tenant")?, s(params, "api_key")?, Role::Client);
            t.rate_limit = Some(RateLimitConfig {
                per_second: 0.01,
                burst: n(params, "burst")? as u32,
            });
            config.tenants.push(t);
        }
        "task {task_id} in scope {scope} lost its replica after {tokens} tokens" => {
            let tokens = n(params, "tokens")? as u32;
            builtins(config, |e| {
                e.faults = BuiltinFaults {
                    crash_after_tokens: Some(tokens),
                    ..Default::default()
                }
            });
        }
        "task {task_id} in scope {scope} tripped the idle watchdog" => {
            builtins(config, |e| {
                e.faults = BuiltinFaults {
                    hang: true,
                    ..Default::default()
                }
            });
        }
        "task {task_id} in scope {scope} was rejected by its engine as invalid" => {
            builtins(config, |e| {
                e.faults = BuiltinFaults {
                    reject_as_invalid: true,
                    ..Default::default()
                }
            });
        }
        "task {task_id} in scope {scope} was canceled after {tokens} tokens" => {
            builtins(config, |e| e.tokens_per_s = 2.0);
        }
        "task {task_id} is running in scope {scope} on replica {replica}" => {
            let replica = s(params, "replica")?.to_owned();
            for pool in &mut config.pools {
                pool.replicas.retain(|r| r.id == replica);
            }
            builtins(config, |e| e.tokens_per_s = 2.0);
        }
        _ => {}
    }
    Ok(())
}

/// The running server of one interaction.
pub struct Running {
    pub url: String,
    pub handle: TestHandle,
}

impl Running {
    fn client(&self, scope: &str) -> Client {
        Client::new(&self.url).with_scope(scope)
    }

    async fn until(
        &self,
        client: &Client,
        id: &str,
        what: &str,
        check: impl Fn(TaskState) -> bool,
    ) -> Result<()> {
        for _ in 0..500 {
            if client.status(id).await?.state.known().is_some_and(&check) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("task {id} never became {what}")
    }
}

fn request(prompt: &str, max_tokens: u32) -> TaskRequest {
    TaskRequest {
        prompt: prompt.into(),
        max_tokens,
        ..TaskRequest::default()
    }
}

async fn finish(client: &Client, id: &str) -> Result<Vec<StreamEvent>> {
    let events = tokio::time::timeout(Duration::from_secs(10), client.collect(id))
        .await
        .context("the task's stream did not end in 10 s")??;
    Ok(events)
}

fn injected(task_id: &str) -> HashMap<String, Value> {
    HashMap::from([("task_id".to_owned(), json!(task_id))])
}

/// Create the situation of `state` on the running server; the returned
/// values are injected into the interaction's request.
pub async fn set_up(
    server: &Running,
    state: &str,
    params: &Params,
) -> Result<HashMap<String, Value>> {
    let none = HashMap::new();
    let scope = params
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or("pact");
    let client = server.client(scope);
    let admin = Client::new(&server.url);
    let pool = params
        .get("pool")
        .and_then(Value::as_str)
        .unwrap_or("default");
    match state {
        "pool {pool} is full with policy {policy}" => {
            server.handle.hold_dispatch(pool, true);
            for i in 0..n(params, "capacity")? {
                client.submit(request(&format!("filler {i}"), 2)).await?;
            }
            Ok(none)
        }
        "pool {pool} is draining" => {
            admin.drain_pool(pool, 600_000).await?;
            Ok(none)
        }
        "the store refuses writes" => {
            server.handle.refuse_store_writes(true);
            Ok(none)
        }
        "tenant {tenant} with key {api_key} has used its rate limit of {burst} admissions" => {
            let keyed = client.clone().with_api_key(s(params, "api_key")?);
            for i in 0..n(params, "burst")? {
                keyed.submit(request(&format!("burst {i}"), 1)).await?;
            }
            Ok(none)
        }
        "task {task_id} was admitted in scope {scope} with prompt {prompt} and max_tokens {max_tokens}" =>
        {
            let admitted = client
                .submit(TaskRequest {
                    task_id: Some(s(params, "task_id")?.into()),
                    ..request(s(params, "prompt")?, n(params, "max_tokens")? as u32)
                })
                .await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} completed in scope {scope} with prompt {prompt}, max_tokens {max_tokens} and seed {seed}" =>
        {
            let admitted = client
                .submit(TaskRequest {
                    seed: Some(n(params, "seed")? as u32),
                    ..request(s(params, "prompt")?, n(params, "max_tokens")? as u32)
                })
                .await?;
            finish(&client, &admitted.task_id).await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} completed in scope {scope} with seed {seed} and a metrics event every {metrics_interval_ms} ms" =>
        {
            let admitted = client
                .submit(TaskRequest {
                    seed: Some(n(params, "seed")? as u32),
                    ..request("a slow story", 3)
                })
                .await?;
            finish(&client, &admitted.task_id).await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} in scope {scope} lost its replica after {tokens} tokens" => {
            let admitted = client
                .submit(TaskRequest {
                    seed: Some(7),
                    ..request("tell me a story", 8)
                })
                .await?;
            finish(&client, &admitted.task_id).await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} in scope {scope} was rejected by its engine as invalid" => {
            let admitted = client
                .submit(TaskRequest {
                    seed: Some(7),
                    ..request("a prompt the engine counts longer", 4)
                })
                .await?;
            finish(&client, &admitted.task_id).await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} in scope {scope} failed because the store refused to record its start" => {
            server.handle.hold_dispatch(pool, true);
            let admitted = client
                .submit(TaskRequest {
                    seed: Some(7),
                    ..request("unrecorded", 2)
                })
                .await?;
            server.handle.refuse_store_writes(true);
            server.handle.hold_dispatch(pool, false);
            let failed = server
                .until(&client, &admitted.task_id, "failed", |s| {
                    s == TaskState::Failed
                })
                .await;
            server.handle.refuse_store_writes(false);
            failed?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} in scope {scope} tripped the idle watchdog" => {
            server.handle.set_timeouts(
                pool,
                TimeoutConfig {
                    wall_ms: 60_000,
                    idle_ms: 150,
                },
            );
            let admitted = client
                .submit(TaskRequest {
                    seed: Some(7),
                    ..request("hang", 4)
                })
                .await?;
            finish(&client, &admitted.task_id).await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} in scope {scope} was evicted from pool {pool} by policy drop-lru"
        | "batch task {task_id} in scope {scope} was shed from pool {pool} by an interactive arrival" =>
        {
            server.handle.hold_dispatch(pool, true);
            let victim = client
                .submit(TaskRequest {
                    priority: Some(Priority::Batch),
                    ..request("victim", 2)
                })
                .await?;
            client.submit(request("newcomer", 2)).await?;
            server
                .until(&client, &victim.task_id, "failed", |s| {
                    s == TaskState::Failed
                })
                .await?;
            Ok(injected(&victim.task_id))
        }
        "task {task_id} in scope {scope} was still queued at its deadline of {deadline_ms} ms" => {
            server.handle.hold_dispatch(pool, true);
            let deadline = n(params, "deadline_ms")?;
            let admitted = client
                .submit(TaskRequest {
                    deadline_ms: Some(deadline),
                    ..request("in a hurry", 2)
                })
                .await?;
            server.handle.advance_clock(deadline + 1_000);
            server
                .until(&client, &admitted.task_id, "failed", |s| {
                    s == TaskState::Failed
                })
                .await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} in scope {scope} was queued in pool {pool} when its drain deadline passed" =>
        {
            server.handle.hold_dispatch(pool, true);
            let admitted = client.submit(request("waiting", 2)).await?;
            admin.drain_pool(pool, 1_000).await?;
            server.handle.advance_clock(2_000);
            server
                .until(&client, &admitted.task_id, "failed", |s| {
                    s == TaskState::Failed
                })
                .await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} in scope {scope} was canceled after {tokens} tokens" => {
            let tokens = n(params, "tokens")? as u32;
            let admitted = client
                .submit(TaskRequest {
                    seed: Some(7),
                    ..request("cancel me", 100)
                })
                .await?;
            for _ in 0..500 {
                if client.status(&admitted.task_id).await?.tokens_out >= tokens {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.cancel(&admitted.task_id).await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} is queued in scope {scope} while dispatch of pool {pool} is held" => {
            server.handle.hold_dispatch(pool, true);
            let admitted = client.submit(request("queued", 2)).await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} is running in scope {scope} on replica {replica}" => {
            let admitted = client.submit(request("running", 100)).await?;
            server
                .until(&client, &admitted.task_id, "running", |s| {
                    s == TaskState::Running
                })
                .await?;
            Ok(injected(&admitted.task_id))
        }
        "task {task_id} exists only in scope {other_scope}" => {
            let other = server.client(s(params, "other_scope")?);
            other
                .submit(TaskRequest {
                    task_id: Some(s(params, "task_id")?.into()),
                    ..request("elsewhere", 1)
                })
                .await?;
            Ok(none)
        }
        "{count} tasks completed in scope {scope}" => {
            for i in 0..n(params, "count")? {
                let admitted = client.submit(request(&format!("listed {i}"), 2)).await?;
                finish(&client, &admitted.task_id).await?;
            }
            // The cursor a client holds after reading the first page of one.
            let first = client
                .list(&orchctl::ListOptions {
                    limit: Some(1),
                    ..orchctl::ListOptions::default()
                })
                .await?;
            Ok(first
                .next_cursor
                .map(|cursor| HashMap::from([("cursor".to_owned(), Value::from(cursor))]))
                .unwrap_or_default())
        }
        "session {session_id} in scope {scope} has {turns} completed turn" => {
            for i in 0..n(params, "turns")? {
                let admitted = client
                    .submit(TaskRequest {
                        session_id: Some(s(params, "session_id")?.into()),
                        ..request(&format!("turn {i}"), 2)
                    })
                    .await?;
                finish(&client, &admitted.task_id).await?;
            }
            Ok(none)
        }
        "session {session_id} in scope {scope} has expired" => {
            let admitted = client
                .submit(TaskRequest {
                    session_id: Some(s(params, "session_id")?.into()),
                    ..request("first turn", 2)
                })
                .await?;
            finish(&client, &admitted.task_id).await?;
            server
                .handle
                .advance_clock(contracts::config::SessionConfig::default().ttl_ms + 1_000);
            Ok(none)
        }
        "scope {scope} holds {queued} queued and {completed} completed task" => {
            for i in 0..n(params, "completed")? {
                let admitted = client.submit(request(&format!("done {i}"), 2)).await?;
                finish(&client, &admitted.task_id).await?;
            }
            server.handle.hold_dispatch(pool, true);
            for i in 0..n(params, "queued")? {
                client.submit(request(&format!("waiting {i}"), 2)).await?;
            }
            Ok(none)
        }
        _ => Ok(none),
    }
}
