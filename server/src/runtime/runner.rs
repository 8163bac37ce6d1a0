//! Dispatch and the life of a running task: claim a slot, stream the engine's
//! tokens into the event log, enforce the watchdogs (ORCH-5001, ORCH-5002),
//! and turn engine failures into retries or typed errors (ORCH-4014, ORCH-5003).

use std::sync::Arc;

use contracts::{ErrorCode, FinishReason, StartedEvent};
use futures::StreamExt;

use super::pool::Completion;
use super::{LiveTask, Orchestrator, Outcome, Pool, Replica};
use crate::engines::{EngineError, EngineEvent, GenerateRequest};
use crate::error::OrchError;

/// How often a running task's new events are written to the store: what a crash
/// may lose (ORCH-7010).
const FLUSH_EVERY_MS: u64 = 200;

/// Dispatch wakes on events only (issue 14): an admission, a freed slot, a
/// replica Ready again, a tenant under its quota again, a drain, a hold, a
/// stop — each notifies `pool.wake` — or the soonest deadline. An idle pool
/// sleeps without a timer.
pub(super) async fn dispatch_loop(orchestrator: Arc<Orchestrator>, pool: Arc<Pool>) {
    while !orchestrator.is_stopped() {
        tokio::select! {
            () = pool.wake.notified() => {}
            () = orchestrator.clock.sleep_until(pool.next_due_ms()) => {}
        }
        pool.wakeups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if orchestrator.is_stopped() {
            break;
        }
        expire_deadlines(&orchestrator, &pool).await;
        end_drain(&orchestrator, &pool).await;
        if pool.is_held() {
            continue;
        }
        while !orchestrator.is_stopped() {
            let Some((task, replica, kv_warmth)) = next_placement(&orchestrator, &pool) else {
                break;
            };
            tokio::spawn(run_task(
                Arc::clone(&orchestrator),
                Arc::clone(&pool),
                replica,
                task,
                kv_warmth,
            ));
        }
    }
}

/// Pop the next task that may start and reserve a slot for it, or `None`
/// when the queue has nothing startable or no Ready replica has a free slot.
/// A tenant at its concurrency quota keeps its place (ORCH-3011); a session's
/// task goes to its warm replica when it can (ORCH-4004).
fn next_placement(
    orchestrator: &Orchestrator,
    pool: &Pool,
) -> Option<(Arc<LiveTask>, Arc<Replica>, bool)> {
    loop {
        let mut queue = pool.queue();
        if pool.capacity().free_slots == 0 {
            return None;
        }
        let key = queue.pop_next_where(|key| orchestrator.tenant_may_start(&key.tenant))?;
        drop(queue);
        let Some(task) = orchestrator.live_task(&key) else {
            continue;
        };
        let warm = task
            .session
            .as_ref()
            .and_then(|s| orchestrator.sessions().warm_replica(s));
        let avoid = task.avoid_replica();
        let Some(replica) = pool.reserve_slot(warm.as_deref(), avoid.as_deref()) else {
            pool.queue().requeue_front(key, task.priority, task.share);
            return None;
        };
        let kv_warmth = warm.as_deref() == Some(replica.id.as_str());
        orchestrator.tenant_started(&key.tenant);
        return Some((task, replica, kv_warmth));
    }
}

/// Past a drain's deadline, whatever the pool still holds ends with
/// `POOL_UNAVAILABLE` (ORCH-6022).
async fn end_drain(orchestrator: &Orchestrator, pool: &Pool) {
    let Some(drain) = pool.drain() else {
        return;
    };
    if orchestrator.clock.now_ms() < drain.deadline_ms {
        return;
    }
    pool.drain_ended
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let queued = pool.queue().dispatch_order();
    for key in &queued {
        pool.queue().remove(key);
    }
    let leftovers = orchestrator.pool_tasks(pool.id());
    for task in leftovers {
        let envelope = OrchError::new(
            ErrorCode::PoolUnavailable,
            format!("pool {} was drained and its deadline passed", pool.id()),
        )
        .envelope();
        orchestrator.finish(&task, Outcome::Error(envelope)).await;
    }
}

/// End queued tasks whose start deadline passed (ORCH-3008).
async fn expire_deadlines(orchestrator: &Orchestrator, pool: &Pool) {
    for key in pool.due_deadlines(orchestrator.clock.now_ms()) {
        let Some(task) = orchestrator.live_task(&key) else {
            continue;
        };
        if !pool.queue().remove(&key) {
            continue; // already started, canceled or evicted
        }
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
    kv_warmth: bool,
) {
    let started_ms = orchestrator.clock.now_ms();
    orchestrator.metrics.queue_waited(
        pool.id(),
        &task.key.tenant,
        started_ms.saturating_sub(task.submitted_at_ms),
    );
    let service = pool.begin_service(started_ms);
    pool.tenant_began(&task.key.tenant);
    let run = drive(&orchestrator, &pool, &replica, &task, kv_warmth).await;
    let now = orchestrator.clock.now_ms();
    pool.release_slot(&replica, service, now);
    orchestrator.tenant_stopped(&task.key.tenant);
    let served = (!matches!(run.step, Step::Retry)).then(|| {
        // Ended, by itself or by a cancel, an eviction or a drain: what was
        // reserved for `max_tokens` and not generated goes back to the
        // tenant's share (ORCH-3015); a retry is given back all of it.
        let unused = task.request.max_tokens.saturating_sub(task.tokens_out());
        pool.queue()
            .refund(&task.key, task.priority, u64::from(unused));
        let served = task.share.cost.saturating_sub(u64::from(unused));
        orchestrator
            .metrics
            .served(pool.id(), &task.key.tenant, served);
        served
    });
    pool.tenant_ended(&task.key.tenant, served);
    match run.step {
        Step::Done(outcome) => {
            let completed =
                matches!(outcome, Outcome::End(reason) if reason != FinishReason::Canceled);
            if let Some(session) = &task.session {
                let mut sessions = orchestrator.sessions();
                if completed {
                    // KV estimate: ~4 bytes of prompt per token, plus the output.
                    let tokens = crate::admission::input_bytes(&task.request).div_ceil(4) as u64
                        + u64::from(task.tokens_out());
                    sessions.complete_turn(session, &replica.id, tokens, now);
                } else {
                    sessions.lose_kv(session);
                }
            }
            let decode_ms = now.saturating_sub(task.started_ms().unwrap_or(started_ms));
            if completed {
                // Recorded before `end` is published: whoever has read the
                // end of a stream also sees it in metrics and SLO snapshots.
                orchestrator
                    .metrics
                    .completed(pool.id(), replica.engine.properties(), decode_ms);
                let service_ms = now.saturating_sub(started_ms);
                pool.observe_service(service_ms);
                pool.record_completion(Completion {
                    ttft_ms: run.ttft_ms.unwrap_or(service_ms),
                    tokens: task.tokens_out(),
                    decode_ms: service_ms,
                });
            }
            if orchestrator.finish(&task, outcome).await {
                log_end(&task, pool.id(), &replica, decode_ms, run.ttft_ms);
            }
        }
        Step::Retry => {
            if let Err(error) = orchestrator.store.mark_requeued(&task.key).await {
                tracing::error!(task_id = %task.key.task_id, %error, "could not requeue a task for retry");
            }
            pool.queue()
                .requeue_front(task.key.clone(), task.priority, task.share);
            pool.wake.notify_one();
        }
        Step::Stop => {}
    }
}

struct Run {
    step: Step,
    /// Time from start to the first token, when there was one.
    ttft_ms: Option<u64>,
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
    kv_warmth: bool,
) -> Run {
    let mut ttft_ms = None;
    let step = decode(orchestrator, pool, replica, task, kv_warmth, &mut ttft_ms).await;
    Run { step, ttft_ms }
}

async fn decode(
    orchestrator: &Orchestrator,
    pool: &Pool,
    replica: &Replica,
    task: &Arc<LiveTask>,
    kv_warmth: bool,
    ttft_ms: &mut Option<u64>,
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
        seed: task.seed,
        sampler_profile_version: pool.sampler_profile_version.clone(),
        kv_warmth,
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
    let metered = orchestrator.metrics.task(pool.id(), &properties, now);
    metered.started();

    let failure = |error: EngineError, tokens: u32| -> Step {
        let lost = matches!(error, EngineError::Lost(_) | EngineError::Refused(_));
        if lost {
            replica.mark_down(&error.to_string());
        }
        if let EngineError::InvalidRequest(message) = &error {
            let envelope =
                OrchError::invalid(crate::admission::input_field(&task.request), message)
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

    let mut stream = match replica
        .engine
        .generate(GenerateRequest::of_task(&task.request, task.seed))
        .await
    {
        Ok(stream) => stream,
        Err(error) => return failure(error, 0),
    };
    let timeouts = pool.timeouts();
    let metrics_every = pool.config.metrics_interval_ms;
    let started_ms = task.started_ms().unwrap_or(now);
    let mut last_progress = now;
    let mut next_metrics = (metrics_every > 0).then_some(now + metrics_every);
    // Set while some event is not yet in the store: when it must be.
    let mut flush_due: Option<u64> = None;
    // One timer per running task, for the soonest of its watchdogs, its
    // metrics event and its flush; a token moves the idle watchdog later
    // without touching it: when it rings early, the checks find nothing due
    // and it is set again.
    let alarm_at = |last_progress: u64, next_metrics: Option<u64>, flush_due: Option<u64>| {
        [
            Some(started_ms.saturating_add(timeouts.wall_ms)),
            Some(last_progress.saturating_add(timeouts.idle_ms)),
            next_metrics,
            flush_due,
        ]
        .into_iter()
        .flatten()
        .min()
    };
    let mut alarm_ms = alarm_at(last_progress, next_metrics, flush_due);
    let mut alarm = Box::pin(orchestrator.clock.sleep_until(alarm_ms.map(|at| at + 1)));
    loop {
        tokio::select! {
            biased;
            () = task.stopped() => return Step::Stop,
            item = stream.next() => match item {
                Some(Ok(EngineEvent::Token(text))) => {
                    // The first token is stored (with the log so far) before
                    // any reader can see it: a restart then knows a token was
                    // delivered (ORCH-7003).
                    let mut stored_upto = None;
                    if task.tokens_out() == 0
                        && let Some(tail) = task.tail_with_next_token(&text)
                    {
                        let upto = tail.events_from + tail.events.len();
                        if let Err(error) = orchestrator.store.append_events(&task.key, tail).await {
                            return Step::Done(Outcome::Error(OrchError::from(error).envelope()));
                        }
                        stored_upto = Some(upto);
                    }
                    let Some(i) = task.push_token(text) else {
                        return Step::Stop;
                    };
                    last_progress = orchestrator.clock.now_ms();
                    if let Some(upto) = stored_upto {
                        task.mark_persisted(upto);
                    } else if flush_due.is_none() {
                        flush_due = Some(last_progress + FLUSH_EVERY_MS);
                        if alarm_ms.is_none_or(|at| at > last_progress + FLUSH_EVERY_MS) {
                            alarm_ms = flush_due;
                            alarm = Box::pin(orchestrator.clock.sleep_until(alarm_ms.map(|at| at + 1)));
                        }
                    }
                    metered.token(i, last_progress);
                    ttft_ms.get_or_insert(last_progress.saturating_sub(now));
                    // Checked here too, not only on the alarm: a backlog of ready
                    // tokens must not starve the flush (the crash bound, ORCH-7010).
                    if flush_due.is_some_and(|due| last_progress >= due) {
                        orchestrator.flush_events(task).await;
                        flush_due = None;
                    }
                }
                Some(Ok(EngineEvent::Finished(reason))) => return Step::Done(Outcome::End(reason)),
                Some(Err(error)) => return failure(error, task.tokens_out()),
                None => return failure(EngineError::Lost("the engine closed the stream without finishing".into()), task.tokens_out()),
            },
            () = &mut alarm => {
                let now = orchestrator.clock.now_ms();
                let watchdog = if now.saturating_sub(started_ms) > timeouts.wall_ms {
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
                if next_metrics.is_some_and(|at| now >= at) {
                    task.push_metrics(now);
                    next_metrics = Some(now + metrics_every);
                    flush_due.get_or_insert(now + FLUSH_EVERY_MS);
                }
                if flush_due.is_some_and(|due| now >= due) {
                    orchestrator.flush_events(task).await;
                    flush_due = None;
                }
                alarm_ms = alarm_at(last_progress, next_metrics, flush_due);
                alarm = Box::pin(orchestrator.clock.sleep_until(alarm_ms.map(|at| at + 1)));
            }
        }
    }
}

/// The one log line of a task the runner ended (ORCH-7102, ORCH-7105):
/// `info` when it completed, `warn` with the code when it failed.
fn log_end(task: &LiveTask, pool: &str, replica: &Replica, decode_ms: u64, ttft_ms: Option<u64>) {
    let properties = replica.engine.properties();
    let status = task.status(None);
    let session = task.session.as_ref().map(|s| s.session_id.as_str());
    let wire = |value: serde_json::Value| value.as_str().map(str::to_owned);
    let state = wire(serde_json::json!(status.state));
    if let Some(error) = &status.error {
        let code = wire(serde_json::json!(error.code));
        tracing::warn!(task_id = %task.key.task_id, scope = %task.key.scope, session, pool, replica = %replica.id, engine = %properties.engine, engine_version = %properties.engine_version, state, code, tokens_out = status.tokens_out, decode_ms, ttft_ms, "task failed");
    } else {
        let finish_reason = status
            .finish_reason
            .and_then(|r| wire(serde_json::json!(r)));
        tracing::info!(task_id = %task.key.task_id, scope = %task.key.scope, session, pool, replica = %replica.id, engine = %properties.engine, engine_version = %properties.engine_version, state, finish_reason, tokens_out = status.tokens_out, decode_ms, ttft_ms, "task ended");
    }
}
