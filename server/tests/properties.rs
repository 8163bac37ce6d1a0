//! Property tests of the pure queue and placement logic, and of the cancel
//! linearization in `LiveTask` (BRIEF §6, priority 3): random operation
//! sequences checked against small reference models.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use contracts::config::FullPolicy;
use contracts::{ErrorCode, FinishReason, Priority, RejectPolicy, StartedEvent, StreamEvent};
use orchestratord::engines::GenerateRequest;
use orchestratord::placement::{ReplicaLoad, choose};
use orchestratord::queue::{Admission, PoolQueue};
use orchestratord::runtime::{LiveTask, Outcome};
use orchestratord::store::TaskKey;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Admit(Priority),
    Pop,
    /// Cancel of a queued task: the n-th (mod len) key still queued.
    Remove(usize),
    /// A retry put back at the head of its lane.
    RequeueFront(Priority),
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![Just(Priority::Interactive), Just(Priority::Batch)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => priority().prop_map(Op::Admit),
        3 => Just(Op::Pop),
        1 => any::<usize>().prop_map(Op::Remove),
    ]
}

fn op_with_requeue() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => priority().prop_map(Op::Admit),
        3 => Just(Op::Pop),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => priority().prop_map(Op::RequeueFront),
    ]
}

fn policy() -> impl Strategy<Value = FullPolicy> {
    prop_oneof![
        Just(FullPolicy::Reject),
        Just(FullPolicy::DropLru),
        Just(FullPolicy::ShedLowPriority),
    ]
}

/// Keys still queued, in admission order, with their priority.
type Queued = Vec<(u32, Priority)>;

fn forget(queued: &mut Queued, key: u32) {
    queued.retain(|(k, _)| *k != key);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // covers: ORCH-3002
    #[test]
    fn fifo_within_a_priority(
        bound in 0u32..6,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut q = PoolQueue::new(1_000, FullPolicy::Reject, bound);
        let mut queued: Queued = Vec::new();
        let mut next = 0u32;
        for op in ops {
            match op {
                Op::Admit(p) => {
                    q.admit(next, p);
                    queued.push((next, p));
                    next += 1;
                }
                Op::Pop => {
                    if let Some(key) = q.pop_next() {
                        let (_, p) = *queued.iter().find(|(k, _)| *k == key).expect("a queued key");
                        let oldest_of_priority = queued.iter().find(|(_, q)| *q == p).unwrap().0;
                        prop_assert_eq!(key, oldest_of_priority, "{:?} dispatched out of admission order", p);
                        forget(&mut queued, key);
                    } else {
                        prop_assert!(queued.is_empty());
                    }
                }
                Op::Remove(n) if !queued.is_empty() => {
                    let key = queued[n % queued.len()].0;
                    prop_assert!(q.remove(&key));
                    forget(&mut queued, key);
                }
                _ => {}
            }
            prop_assert_eq!(q.len(), queued.len());
        }
    }

    // covers: ORCH-3003
    #[test]
    fn no_batch_task_at_the_head_waits_more_than_the_bound(
        bound in 0u32..6,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut q = PoolQueue::new(1_000, FullPolicy::Reject, bound);
        let mut queued: Queued = Vec::new();
        let mut next = 0u32;
        // The batch task at the head of its lane, and the interactive
        // dispatches it has watched go by.
        let mut head: Option<(u32, u32)> = None;
        for op in ops {
            match op {
                Op::Admit(p) => {
                    q.admit(next, p);
                    queued.push((next, p));
                    next += 1;
                }
                Op::Pop => {
                    if let Some(key) = q.pop_next() {
                        let p = queued.iter().find(|(k, _)| *k == key).unwrap().1;
                        forget(&mut queued, key);
                        if p == Priority::Interactive && let Some((_, waited)) = head.as_mut() {
                            *waited += 1;
                            prop_assert!(
                                *waited <= bound,
                                "a batch task at the head waited {} interactive dispatches (bound {})",
                                waited, bound
                            );
                        }
                    }
                }
                Op::Remove(n) if !queued.is_empty() => {
                    let key = queued[n % queued.len()].0;
                    q.remove(&key);
                    forget(&mut queued, key);
                }
                _ => {}
            }
            let batch_head = queued.iter().find(|(_, p)| *p == Priority::Batch).map(|(k, _)| *k);
            head = match (head, batch_head) {
                (Some((k, waited)), Some(h)) if k == h => Some((k, waited)),
                (_, Some(h)) => Some((h, 0)),
                (_, None) => None,
            };
            // And the interactive lane is never starved either: with no
            // batch task waiting, an interactive task goes first.
            if batch_head.is_none() && let Some((first, _)) = queued.first() {
                prop_assert_eq!(q.dispatch_order().first().copied(), Some(*first));
            }
        }
    }

    // covers: ORCH-3001, ORCH-3004, ORCH-3005, ORCH-3006
    #[test]
    fn full_policies_decide_like_the_reference_model(
        capacity in 0u32..6,
        policy in policy(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut q = PoolQueue::new(capacity, policy, 2);
        // Reference model: queued keys in admission order.
        let mut queued: Queued = Vec::new();
        let mut next = 0u32;
        for op in ops {
            match op {
                Op::Admit(p) => {
                    let key = next;
                    next += 1;
                    let full = queued.len() >= capacity as usize;
                    let expected = if !full {
                        Ok(None)
                    } else {
                        match policy {
                            FullPolicy::Reject => Err(RejectPolicy::Reject),
                            FullPolicy::DropLru => match queued.first() {
                                Some((oldest, _)) => Ok(Some((*oldest, ErrorCode::QueueFullDropLru, RejectPolicy::DropLru))),
                                None => Err(RejectPolicy::DropLru),
                            },
                            FullPolicy::ShedLowPriority => {
                                let newest_batch = queued.iter().rev().find(|(_, q)| *q == Priority::Batch);
                                match (p, newest_batch) {
                                    (Priority::Interactive, Some((victim, _))) => Ok(Some((*victim, ErrorCode::AdmissionReject, RejectPolicy::ShedLowPriority))),
                                    _ => Err(RejectPolicy::ShedLowPriority),
                                }
                            }
                        }
                    };
                    prop_assert_eq!(q.would_reject(p), expected.err(), "would_reject agrees with admit");
                    let before = q.dispatch_order();
                    match q.admit(key, p) {
                        Admission::Admitted { evicted, .. } => {
                            let evicted = evicted.map(|e| (e.key, e.code, e.policy));
                            prop_assert_eq!(Ok(evicted), expected);
                            if let Some((victim, _, _)) = evicted {
                                forget(&mut queued, victim);
                            }
                            queued.push((key, p));
                        }
                        Admission::Rejected { policy: got } => {
                            prop_assert_eq!(Err(got), expected);
                            prop_assert_eq!(q.dispatch_order(), before, "a rejection leaves the queue unchanged");
                        }
                    }
                    // Rejections and shed victims are 429 ADMISSION_REJECT,
                    // drop-lru victims QUEUE_FULL_DROP_LRU (also a 429).
                    prop_assert_eq!(ErrorCode::AdmissionReject.http_status(), 429);
                    prop_assert_eq!(ErrorCode::QueueFullDropLru.http_status(), 429);
                }
                Op::Pop => {
                    if let Some(key) = q.pop_next() {
                        forget(&mut queued, key);
                    }
                }
                Op::Remove(n) if !queued.is_empty() => {
                    let key = queued[n % queued.len()].0;
                    q.remove(&key);
                    forget(&mut queued, key);
                }
                _ => {}
            }
            prop_assert!(q.len() <= capacity as usize, "the queue never exceeds its capacity");
            prop_assert_eq!(q.len(), queued.len());
        }
    }

    // covers: ORCH-3003, ORCH-3007
    #[test]
    fn position_is_the_index_in_the_dispatch_order(
        bound in 0u32..6,
        ops in proptest::collection::vec(op_with_requeue(), 1..80),
    ) {
        let mut q = PoolQueue::new(1_000, FullPolicy::Reject, bound);
        let mut queued: Vec<u32> = Vec::new();
        let mut next = 0u32;
        for op in ops {
            match op {
                Op::Admit(p) => {
                    let Admission::Admitted { position, .. } = q.admit(next, p) else {
                        panic!("room for everyone")
                    };
                    prop_assert_eq!(Some(position), q.position(&next), "admission reports the position");
                    queued.push(next);
                    next += 1;
                }
                Op::RequeueFront(p) => {
                    q.requeue_front(next, p);
                    queued.push(next);
                    next += 1;
                }
                Op::Pop => {
                    if let Some(key) = q.pop_next() {
                        queued.retain(|k| *k != key);
                    }
                }
                Op::Remove(n) if !queued.is_empty() => {
                    let key = queued.remove(n % queued.len());
                    q.remove(&key);
                }
                Op::Remove(_) => {}
            }
            let order = q.dispatch_order();
            prop_assert_eq!(order.len(), queued.len());
            for (index, key) in order.iter().enumerate() {
                prop_assert_eq!(q.position(key), Some(index as u32), "key {}", key);
            }
            // The simulated order is what popping really does.
            let mut copy = q.clone();
            let popped: Vec<u32> = std::iter::from_fn(|| copy.pop_next()).collect();
            prop_assert_eq!(popped, order);
        }
    }

    // covers: ORCH-4001, ORCH-4002
    #[test]
    fn placement_picks_a_ready_replica_with_a_free_slot_of_minimal_load(
        replicas in proptest::collection::vec((any::<bool>(), 0u32..5, 0u32..5), 0..7),
        prefer in proptest::option::of(0usize..8),
        avoid in proptest::option::of(0usize..8),
    ) {
        let ids: Vec<String> = (0..replicas.len()).map(|i| format!("r{i}")).collect();
        let loads: Vec<ReplicaLoad<'_>> = replicas
            .iter()
            .zip(&ids)
            .map(|(&(ready, active, slots), id)| ReplicaLoad { id, ready, active: active.min(slots), slots })
            .collect();
        let free = |r: &ReplicaLoad<'_>| r.ready && r.active < r.slots;
        let load = |r: &ReplicaLoad<'_>| f64::from(r.active) / f64::from(r.slots);
        let name = |i: Option<usize>| i.map(|i| format!("r{i}"));
        let (prefer, avoid) = (name(prefer), name(avoid));

        let plain = choose(&loads, None, None);
        match plain {
            None => prop_assert!(!loads.iter().any(free), "a free Ready replica was left out"),
            Some(i) => {
                let chosen = &loads[i];
                prop_assert!(free(chosen), "placed on {:?}", chosen);
                for other in loads.iter().filter(|r| free(r)) {
                    prop_assert!(load(chosen) <= load(other), "{:?} is less loaded than {:?}", other, chosen);
                    if load(chosen) == load(other) {
                        prop_assert!(chosen.id <= other.id, "ties go to the lowest id");
                    }
                }
            }
        }
        let steered = choose(&loads, prefer.as_deref(), avoid.as_deref());
        prop_assert_eq!(steered.is_some(), plain.is_some(), "steering never loses or invents a slot");
        if let Some(i) = steered {
            prop_assert!(free(&loads[i]));
            let preferred = loads.iter().position(|r| Some(r.id) == prefer.as_deref() && free(r));
            if let Some(p) = preferred {
                prop_assert_eq!(i, p, "a warm replica that can take the task wins");
            } else if loads.iter().any(|r| free(r) && Some(r.id) != avoid.as_deref()) {
                prop_assert_ne!(Some(loads[i].id), avoid.as_deref(), "the failed replica is avoided");
            }
        }
    }
}

fn live_task() -> LiveTask {
    let task = LiveTask::new(
        TaskKey {
            tenant: "default".into(),
            scope: "props".into(),
            task_id: "race".into(),
        },
        "default".into(),
        Priority::Interactive,
        contracts::TaskRequest::default(),
        "hash".into(),
        GenerateRequest {
            prompt: "p".into(),
            max_tokens: 10_000,
            seed: 1,
            temperature: 0.8,
            top_p: 1.0,
            top_k: 0,
        },
        0,
        Vec::new(),
    );
    let started = StartedEvent {
        queue_position: 0,
        predicted_start_ms: 0,
        queue_time_ms: 0,
        replica_id: "r0".into(),
        engine: "builtin".into(),
        engine_version: "builtin-1.0.0".into(),
        seed: 1,
        sampler_profile_version: "sp-1".into(),
        kv_warmth: false,
    };
    assert!(task.start(started, 0));
    task
}

fn spin(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    // covers: ORCH-1021
    #[test]
    fn no_token_after_a_cancel_is_acknowledged(
        pushers in proptest::collection::vec((1u32..200, 0u32..2_000), 1..4),
        cancel_delay in 0u32..50_000,
        other_finisher in any::<bool>(),
    ) {
        let task = Arc::new(live_task());
        let acked = Arc::new(AtomicBool::new(false));
        let threads = pushers.len() + 1 + usize::from(other_finisher);
        let barrier = Arc::new(Barrier::new(threads));
        let mut handles = Vec::new();
        for (tokens, pace) in pushers {
            let (task, acked, barrier) = (task.clone(), acked.clone(), barrier.clone());
            handles.push(std::thread::spawn(move || {
                barrier.wait();
                for n in 0..tokens {
                    let after_ack = acked.load(Ordering::SeqCst);
                    let pushed = task.push_token(format!(" w{n}"));
                    if after_ack {
                        assert_eq!(pushed, None, "a token was accepted after the cancel was acknowledged");
                    }
                    spin(pace);
                }
            }));
        }
        let canceler = {
            let (task, acked, barrier) = (task.clone(), acked.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                spin(cancel_delay);
                let finish = task.finish(Outcome::End(FinishReason::Canceled), 1);
                if finish.is_some() {
                    acked.store(true, Ordering::SeqCst);
                    assert_eq!(task.push_token("late".into()), None);
                }
                finish.is_some()
            })
        };
        // A racing natural end: exactly one terminal event wins.
        let finisher = other_finisher.then(|| {
            let (task, barrier) = (task.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                spin(cancel_delay / 2);
                task.finish(Outcome::End(FinishReason::Stop), 1).is_some()
            })
        });
        for handle in handles {
            handle.join().expect("pusher");
        }
        let canceled = canceler.join().expect("canceler");
        let stopped = finisher.map(|f| f.join().expect("finisher")).unwrap_or(false);
        prop_assert!(canceled ^ stopped, "exactly one finish wins");

        let (events, complete) = task.events_from(0);
        prop_assert!(complete);
        prop_assert!(matches!(events.first(), Some(StreamEvent::Started(_))));
        let terminal: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, StreamEvent::End(_) | StreamEvent::Error(_)))
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(terminal, vec![events.len() - 1], "one terminal event, last in the log");
        let indexes: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Token(t) => Some(t.i),
                _ => None,
            })
            .collect();
        prop_assert_eq!(&indexes, &(0..indexes.len() as u32).collect::<Vec<_>>(), "token indexes are dense");
        let StreamEvent::End(end) = events.last().unwrap() else { unreachable!() };
        prop_assert_eq!(end.tokens_out as usize, indexes.len(), "end counts exactly the tokens in the log");
        prop_assert_eq!(task.tokens_out() as usize, indexes.len());
        prop_assert_eq!(task.push_token("after".into()), None);
    }
}
