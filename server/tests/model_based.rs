//! Model-based test: random sequences of submit / cancel / stream / status /
//! drain across two scopes against a real server of its own (one per case),
//! every answer checked against a small reference model of what the server
//! must say. Bounded: 30 cases of up to 25 operations.

mod common;

use std::collections::HashMap;

use common::{TestServer, config_with};
use contracts::config::BuiltinEngineConfig;
use contracts::{ErrorCode, FinishReason, StreamEvent, TaskRequest, TaskState};
use orchctl::{Client, ClientError};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

const SCOPES: u8 = 2;
const IDS: u8 = 4;

#[derive(Debug, Clone)]
enum Op {
    /// `variant` picks one of two bodies for the same task id.
    Submit {
        scope: u8,
        id: u8,
        variant: bool,
    },
    Cancel {
        scope: u8,
        id: u8,
    },
    Stream {
        scope: u8,
        id: u8,
    },
    Status {
        scope: u8,
        id: u8,
    },
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    let at = || (0..SCOPES, 0..IDS);
    prop_oneof![
        6 => (at(), any::<bool>()).prop_map(|((scope, id), variant)| Op::Submit { scope, id, variant }),
        3 => at().prop_map(|(scope, id)| Op::Cancel { scope, id }),
        3 => at().prop_map(|(scope, id)| Op::Stream { scope, id }),
        2 => at().prop_map(|(scope, id)| Op::Status { scope, id }),
        1 => Just(Op::Drain),
    ]
}

/// What the model knows of one task.
#[derive(Debug, Default)]
struct Task {
    variant: bool,
    cancel_acked: bool,
    /// The whole log, once a reader has seen it end: frozen from then on.
    log: Option<Vec<StreamEvent>>,
}

impl Task {
    fn final_state(&self) -> Option<TaskState> {
        match self.log.as_ref()?.last()? {
            StreamEvent::End(end) if end.finish_reason == FinishReason::Canceled => {
                Some(TaskState::Canceled)
            }
            StreamEvent::End(_) => Some(TaskState::Completed),
            _ => Some(TaskState::Failed),
        }
    }
}

#[derive(Default)]
struct Model {
    tasks: HashMap<(u8, u8), Task>,
    drained: bool,
}

fn max_tokens(id: u8) -> u32 {
    3 + u32::from(id) * 4
}

fn request(id: u8, variant: bool) -> TaskRequest {
    TaskRequest {
        task_id: Some(format!("job-{id}")),
        prompt: format!("model-based prompt {}", if variant { "B" } else { "A" }),
        max_tokens: max_tokens(id),
        ..TaskRequest::default()
    }
}

fn code(error: &ClientError) -> Option<ErrorCode> {
    error.envelope().and_then(|e| e.code.known())
}

fn expect_not_found<T: std::fmt::Debug>(
    what: &str,
    answer: Result<T, ClientError>,
) -> Result<(), String> {
    match answer {
        Err(e) if e.status() == Some(404) && code(&e) == Some(ErrorCode::NotFound) => Ok(()),
        other => Err(format!("{what}: expected 404 NOT_FOUND, got {other:?}")),
    }
}

/// Where a case runs: one daemon on SQLite or PostgreSQL, or three daemons of one
/// cluster on PostgreSQL, each step sent through the next daemon (ORCH-7012).
#[derive(Debug, Clone, Copy)]
enum Setup {
    Sqlite,
    Postgres,
    ThreeDaemons,
}

async fn run_case(ops: Vec<Op>, setup: Setup) -> Result<(), String> {
    let mut config = config_with(
        2,
        BuiltinEngineConfig {
            tokens_per_s: 600.0,
            ttft_ms: 2,
            slots: 2,
            ..Default::default()
        },
        |pool| pool.queue.capacity = 64,
    );
    config.shutdown_grace_ms = 200;
    let servers = match setup {
        Setup::Sqlite => vec![TestServer::start(config).await],
        Setup::Postgres => vec![TestServer::start_on_postgres(config).await],
        Setup::ThreeDaemons => {
            let database = common::fresh_postgres_database().await;
            let mut servers = Vec::new();
            for _ in 0..3 {
                servers.push(TestServer::start_on_database(config.clone(), &database).await);
            }
            servers
        }
    };
    let result = check(&servers, ops).await;
    for server in servers {
        server.server.shutdown().await;
    }
    result
}

async fn check(servers: &[TestServer], ops: Vec<Op>) -> Result<(), String> {
    let scopes: Vec<String> = (0..SCOPES).map(|_| common::unique_scope()).collect();
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        let context = format!("step {step}: {op:?}");
        let through = &servers[step % servers.len()];
        let clients: Vec<Client> = scopes
            .iter()
            .map(|scope| Client::new(through.url()).with_scope(scope))
            .collect();
        match op {
            Op::Submit { scope, id, variant } => {
                let answer = clients[scope as usize].submit(request(id, variant)).await;
                match (model.tasks.get(&(scope, id)), answer) {
                    (Some(task), Ok(admission)) if task.variant == variant => {
                        if admission.task_id != format!("job-{id}") {
                            return Err(format!("{context}: idempotent answer for another id"));
                        }
                    }
                    (Some(_), Err(e))
                        if e.status() == Some(409) && code(&e) == Some(ErrorCode::Conflict) => {}
                    (None, Err(e))
                        if model.drained
                            && e.status() == Some(503)
                            && code(&e) == Some(ErrorCode::PoolUnavailable)
                            && e.backoff().is_some() => {}
                    (None, Ok(admission)) if !model.drained => {
                        if admission.task_id != format!("job-{id}") {
                            return Err(format!("{context}: admitted as {}", admission.task_id));
                        }
                        model.tasks.insert(
                            (scope, id),
                            Task {
                                variant,
                                ..Task::default()
                            },
                        );
                    }
                    (task, answer) => {
                        return Err(format!(
                            "{context}: model has {task:?} (drained: {}), server answered {answer:?}",
                            model.drained
                        ));
                    }
                }
            }
            Op::Cancel { scope, id } => {
                let client = &clients[scope as usize];
                let answer = client.cancel(&format!("job-{id}")).await;
                let Some(task) = model.tasks.get_mut(&(scope, id)) else {
                    expect_not_found(&context, answer)?;
                    continue;
                };
                answer.map_err(|e| format!("{context}: {e}"))?;
                task.cancel_acked = true;
                // An acknowledged cancel is final: the task is terminal now.
                let status = client
                    .status(&format!("job-{id}"))
                    .await
                    .map_err(|e| format!("{context}: status after cancel: {e}"))?;
                let allowed = match task.final_state() {
                    Some(state) => vec![state],
                    None => vec![TaskState::Canceled, TaskState::Completed],
                };
                if !allowed.iter().any(|s| status.state == *s) {
                    return Err(format!(
                        "{context}: state {:?} after an acknowledged cancel, expected one of {allowed:?}",
                        status.state
                    ));
                }
            }
            Op::Stream { scope, id } => {
                let answer = clients[scope as usize].collect(&format!("job-{id}")).await;
                let Some(task) = model.tasks.get_mut(&(scope, id)) else {
                    expect_not_found(&context, answer)?;
                    continue;
                };
                let events = answer.map_err(|e| format!("{context}: {e}"))?;
                if let Some(log) = &task.log {
                    if &events != log {
                        return Err(format!("{context}: a finished log changed"));
                    }
                    continue;
                }
                let tokens = events
                    .iter()
                    .filter(|e| matches!(e, StreamEvent::Token(_)))
                    .count() as u32;
                match events.last() {
                    Some(StreamEvent::End(end))
                        if end.finish_reason == FinishReason::Length
                            && tokens == max_tokens(id)
                            && end.tokens_out == tokens => {}
                    Some(StreamEvent::End(end))
                        if task.cancel_acked
                            && end.finish_reason == FinishReason::Canceled
                            && end.tokens_out == tokens
                            && tokens < max_tokens(id) => {}
                    other => {
                        return Err(format!(
                            "{context}: stream ended with {other:?} after {tokens} tokens (cancel acked: {})",
                            task.cancel_acked
                        ));
                    }
                }
                task.log = Some(events);
            }
            Op::Status { scope, id } => {
                let answer = clients[scope as usize].status(&format!("job-{id}")).await;
                let Some(task) = model.tasks.get(&(scope, id)) else {
                    expect_not_found(&context, answer)?;
                    continue;
                };
                let status = answer.map_err(|e| format!("{context}: {e}"))?;
                let allowed = match (task.final_state(), task.cancel_acked) {
                    (Some(state), _) => vec![state],
                    (None, true) => vec![TaskState::Canceled, TaskState::Completed],
                    (None, false) => {
                        vec![TaskState::Queued, TaskState::Running, TaskState::Completed]
                    }
                };
                if !allowed.iter().any(|s| status.state == *s)
                    || status.scope.as_deref() != clients[scope as usize].scope()
                {
                    return Err(format!(
                        "{context}: status {status:?}, expected a state in {allowed:?}"
                    ));
                }
            }
            Op::Drain => {
                clients[0]
                    .drain_pool("default", 60_000)
                    .await
                    .map_err(|e| format!("{context}: {e}"))?;
                model.drained = true;
            }
        }
    }
    Ok(())
}

// covers: ORCH-1005, ORCH-1006, ORCH-1012, ORCH-1020, ORCH-1021, ORCH-6011, ORCH-6012, ORCH-6022
#[test]
fn the_server_answers_like_the_reference_model() {
    check_against_the_model(30, Setup::Sqlite);
}

// The same model with the PostgreSQL store: fewer cases, each on a fresh database.
// covers: ORCH-7006
#[test]
fn the_server_on_postgres_answers_like_the_reference_model() {
    check_against_the_model(12, Setup::Postgres);
}

// Three daemons of one cluster answer like one: each step through the next daemon, a
// drain through one holds for the others.
// covers: ORCH-7012, ORCH-6022
#[test]
fn three_daemons_on_one_database_answer_like_the_reference_model() {
    check_against_the_model(10, Setup::ThreeDaemons);
}

fn check_against_the_model(cases: u32, setup: Setup) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..=25), |ops| {
        runtime
            .block_on(run_case(ops, setup))
            .map_err(TestCaseError::fail)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
