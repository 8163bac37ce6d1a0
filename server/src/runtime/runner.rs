//! Dispatch and the life of a running task: claim a slot, stream the engine's
//! tokens into the event log, enforce the watchdogs (ORCH-5001, ORCH-5002),
//! and turn engine failures into retries or typed errors (ORCH-4014, ORCH-5003).

use std::sync::Arc;
use std::time::Duration;

use contracts::{ErrorCode, StartedEvent};
use futures::StreamExt;

use super::{LiveTask, Orchestrator, Outcome, Pool, Replica};
use crate::engines::{EngineError, EngineEvent};
use crate::error::OrchError;

/// How often a running task checks its watchdogs and metrics timer.
const TICK: Duration = Duration::from_millis(20);

pub(super) async fn dispatch_loop(orchestrator: Arc<Orchestrator>, pool: Arc<Pool>) {
    while !orchestrator.is_stopped() {
        let _ = tokio::time::timeout(Duration::from_millis(25), pool.wake.notified()).await;
        expire_deadlines(&orchestrator, &pool).await;
        if pool.is_held() {
            continue;
        }
        while !orchestrator.is_stopped() {
            let Some((task, replica)) = next_placement(&orchestrator, &pool) else {
                break;
            };
            tokio::spawn(run_task(
                Arc::clone(&orchestrator),
                Arc::clone(&pool),
                replica,
                task,
            ));
        }
    }
}

/// Pop the next task and reserve a slot for it, or `None` when either the
/// queue is empty or no Ready replica has a free slot.
fn next_placement(
    orchestrator: &Orchestrator,
    pool: &Pool,
) -> Option<(Arc<LiveTask>, Arc<Replica>)> {
    loop {
        let mut queue = pool.queue();
        if pool.capacity().free_slots == 0 {
            return None;
        }
        let key = queue.pop_next()?;
        drop(queue);
        let Some(task) = orchestrator.live_task(&key) else {
            continue;
        };
        let avoid = task.avoid_replica();
        let Some(replica) = pool.reserve_slot(avoid.as_deref()) else {
            pool.queue().requeue_front(key, task.priority);
            return None;
        };
        return Some((task, replica));
    }
}

/// End queued tasks whose start deadline passed (ORCH-3008).
async fn expire_deadlines(orchestrator: &Orchestrator, pool: &Pool) {
    let now = orchestrator.clock.now_ms();
    let expired: Vec<_> = pool
        .queue()
        .dispatch_order()
        .into_iter()
        .filter_map(|key| orchestrator.live_task(&key))
        .filter(|task| task.start_deadline_ms.is_some_and(|d| d <= now))
        .collect();
    for task in expired {
        pool.queue().remove(&task.key);
        let deadline = task.request.deadline_ms.unwrap_or_default();
        let envelope = OrchError::new(
            ErrorCode::ReplicaExhausted,
            format!(
                "no replica of pool {} could start the task within its deadline_ms of {deadline}",
                pool.id()
            ),
        )
        .envelope();
        orchestrator.finish(&task, Outcome::Error(envelope)).await;
    }
}

async fn run_task(
    orchestrator: Arc<Orchestrator>,
    pool: Arc<Pool>,
    replica: Arc<Replica>,
    task: Arc<LiveTask>,
) {
    let started_ms = orchestrator.clock.now_ms();
    let outcome = drive(&orchestrator, &pool, &replica, &task).await;
    pool.release_slot(&replica);
    match outcome {
        Step::Done(outcome) => {
            if orchestrator.finish(&task, outcome).await {
                pool.observe_service(orchestrator.clock.now_ms().saturating_sub(started_ms));
            }
        }
        Step::Retry => {
            if let Err(error) = orchestrator.store.mark_requeued(&task.key).await {
                tracing::error!(task_id = %task.key.task_id, %error, "could not requeue a task for retry");
            }
            pool.queue().requeue_front(task.key.clone(), task.priority);
            pool.wake.notify_one();
        }
        Step::Stop => {}
    }
}

enum Step {
    Done(Outcome),
    /// The replica failed before any token: try once more elsewhere.
    Retry,
    /// Someone else ended the task (cancel) or it never started.
    Stop,
}

async fn drive(
    orchestrator: &Orchestrator,
    pool: &Pool,
    replica: &Replica,
    task: &Arc<LiveTask>,
) -> Step {
    let properties = replica.engine.properties().clone();
    let position_wait = orchestrator
        .clock
        .now_ms()
        .saturating_sub(task.submitted_at_ms);
    let started = StartedEvent {
        queue_position: 0,
        predicted_start_ms: 0,
        queue_time_ms: position_wait,
        replica_id: replica.id.clone(),
        engine: properties.engine.clone(),
        engine_version: properties.engine_version.clone(),
        seed: task.generate.seed,
        sampler_profile_version: pool.sampler_profile_version.clone(),
        kv_warmth: false,
    };
    let now = orchestrator.clock.now_ms();
    if !task.start(started, now) {
        return Step::Stop;
    }
    if let Err(error) = orchestrator
        .store
        .mark_started(&task.key, &replica.id, now)
        .await
    {
        return Step::Done(Outcome::Error(OrchError::from(error).envelope()));
    }
    tracing::info!(task_id = %task.key.task_id, pool = %pool.id(), replica = %replica.id, engine = %properties.engine, queue_time_ms = position_wait, "task started");

    let failure = |error: EngineError, tokens: u32| -> Step {
        let lost = matches!(error, EngineError::Lost(_) | EngineError::Refused(_));
        if lost {
            replica.mark_down(&error.to_string());
        }
        if let EngineError::InvalidRequest(message) = &error {
            let envelope = OrchError::invalid("prompt", message)
                .with_engine(&properties.engine)
                .envelope();
            return Step::Done(Outcome::Error(envelope));
        }
        if tokens == 0 && task.attempts() < 2 && task.requeue(&replica.id) {
            tracing::warn!(task_id = %task.key.task_id, replica = %replica.id, %error, "replica failed before the first token; retrying elsewhere");
            return Step::Retry;
        }
        let envelope = OrchError::new(
            ErrorCode::WorkerReset,
            format!(
                "replica {} failed after {tokens} token(s): {error}",
                replica.id
            ),
        )
        .with_engine(&properties.engine)
        .envelope();
        Step::Done(Outcome::Error(envelope))
    };

    let mut stream = match replica.engine.generate(task.generate.clone()).await {
        Ok(stream) => stream,
        Err(error) => return failure(error, 0),
    };
    let timeouts = pool.timeouts();
    let metrics_every = pool.config.metrics_interval_ms;
    let mut last_progress = now;
    let mut next_metrics = now + metrics_every;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = task.canceled() => return Step::Stop,
            item = stream.next() => match item {
                Some(Ok(EngineEvent::Token(text))) => {
                    if task.tokens_out() == 0
                        && let Err(error) = orchestrator.store.mark_first_token(&task.key).await
                    {
                        return Step::Done(Outcome::Error(OrchError::from(error).envelope()));
                    }
                    if task.push_token(text).is_none() {
                        return Step::Stop;
                    }
                    last_progress = orchestrator.clock.now_ms();
                }
                Some(Ok(EngineEvent::Finished(reason))) => return Step::Done(Outcome::End(reason)),
                Some(Err(error)) => return failure(error, task.tokens_out()),
                None => return failure(EngineError::Lost("the engine closed the stream without finishing".into()), task.tokens_out()),
            },
            _ = ticker.tick() => {
                let now = orchestrator.clock.now_ms();
                let started = task.started_ms().unwrap_or(now);
                let watchdog = if now.saturating_sub(started) > timeouts.wall_ms {
                    Some(format!("wall watchdog: running for more than {} ms", timeouts.wall_ms))
                } else if now.saturating_sub(last_progress) > timeouts.idle_ms {
                    Some(format!("idle watchdog: no token for more than {} ms", timeouts.idle_ms))
                } else {
                    None
                };
                if let Some(message) = watchdog {
                    let envelope = OrchError::new(ErrorCode::DecodeTimeout, message)
                        .with_engine(&properties.engine)
                        .envelope();
                    return Step::Done(Outcome::Error(envelope));
                }
                if metrics_every > 0 && now >= next_metrics {
                    task.push_metrics(now);
                    next_metrics = now + metrics_every;
                }
            }
        }
    }
}
