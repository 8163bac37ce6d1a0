//! Property tests of the queue (BRIEF §6, priority 3): random operation
//! sequences checked against a small reference model. They live beside the
//! code, as unit tests, so `cargo xtask mutants` judges each mutant of the
//! queue with one rebuild of the library.

use contracts::config::FullPolicy;
use contracts::{ErrorCode, Priority, RejectPolicy};
use proptest::prelude::*;

use super::{Admission, PoolQueue, Share};

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
    // No regression files: under `cargo xtask mutants` they would record the
    // failures of mutants, in place, in the source tree.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

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
                    q.admit(next, p, Share::UNIT);
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
                    q.admit(next, p, Share::UNIT);
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
                    prop_assert_eq!(q.would_reject(&key, p), expected.err(), "would_reject agrees with admit");
                    let before = q.dispatch_order();
                    match q.admit(key, p, Share::UNIT) {
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
                    let Admission::Admitted { position, .. } = q.admit(next, p, Share::UNIT) else {
                        panic!("room for everyone")
                    };
                    prop_assert_eq!(Some(position), q.position(&next), "admission reports the position");
                    queued.push(next);
                    next += 1;
                }
                Op::RequeueFront(p) => {
                    q.requeue_front(next, p, Share::UNIT);
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

    // covers: ORCH-3012, ORCH-3001, ORCH-3004
    #[test]
    fn the_retry_line_admits_holders_in_refusal_order_and_no_one_past_them(
        capacity in 1u32..6,
        ops in proptest::collection::vec(line_op(), 1..80),
    ) {
        let mut q = PoolQueue::new(capacity, FullPolicy::Reject, 2);
        // Reference model: queue length, and the line of (key, expiry).
        let mut queued = 0usize;
        let mut line: Vec<(u32, u64)> = Vec::new();
        let (mut next, mut now) = (0u32, 0u64);
        for op in ops {
            let arrival = match op {
                LineOp::Fresh => { next += 1; Some(next) }
                LineOp::Retry(n) if !line.is_empty() => Some(line[n % line.len()].0),
                LineOp::Retry(_) => None,
                LineOp::Pop => {
                    if q.pop_next().is_some() { queued -= 1; }
                    None
                }
                LineOp::Tick(ms) => {
                    now += ms;
                    q.expire_holds(now);
                    line.retain(|(_, expires)| *expires > now);
                    None
                }
            };
            if let Some(key) = arrival {
                let ahead = line.iter().position(|(k, _)| *k == key).unwrap_or(line.len());
                let needed = (queued + ahead + 1).saturating_sub(capacity as usize) as u32;
                prop_assert_eq!(q.places_needed(&key), needed);
                prop_assert_eq!(q.would_reject(&key, Priority::Interactive).is_some(), needed > 0);
                match q.admit(key, Priority::Interactive, Share::UNIT) {
                    Admission::Admitted { .. } => {
                        prop_assert_eq!(needed, 0, "admitted past {} places held ahead", ahead);
                        queued += 1;
                        line.retain(|(k, _)| *k != key);
                    }
                    Admission::Rejected { policy } => {
                        prop_assert_eq!(policy, RejectPolicy::Reject);
                        prop_assert!(needed > 0, "refused with a place free for it");
                        prop_assert!(q.hold(key, now + 10));
                        match line.iter_mut().find(|(k, _)| *k == key) {
                            Some(hold) => hold.1 = now + 10,
                            None => line.push((key, now + 10)),
                        }
                    }
                }
            }
            prop_assert!(q.len() <= capacity as usize, "the queue never exceeds its capacity");
            prop_assert_eq!(q.len(), queued);
            prop_assert_eq!(q.holds(), line.len());
        }
    }
}

#[derive(Debug, Clone)]
enum LineOp {
    /// An arrival holding no place.
    Fresh,
    /// The retry of the n-th (mod len) task holding a place.
    Retry(usize),
    Pop,
    /// Time passes: holds expire 10 ms after their refusal.
    Tick(u64),
}

fn line_op() -> impl Strategy<Value = LineOp> {
    prop_oneof![
        3 => Just(LineOp::Fresh),
        3 => any::<usize>().prop_map(LineOp::Retry),
        3 => Just(LineOp::Pop),
        1 => (1u64..8).prop_map(LineOp::Tick),
    ]
}
