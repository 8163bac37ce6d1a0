//! Property test of the cancel linearization in `LiveTask` (BRIEF §6,
//! priority 3). The queue's and placement's property tests are unit tests
//! beside their code (`server/src/queue/properties.rs`,
//! `server/src/placement/properties.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use contracts::{FinishReason, Priority, StartedEvent, StreamEvent};
use orchestratord::queue::Share;
use orchestratord::runtime::{LiveTask, Outcome};
use orchestratord::store::TaskKey;
use proptest::prelude::*;

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
        1,
        0,
        Share::UNIT,
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
