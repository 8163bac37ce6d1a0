//! Property test of placement (BRIEF §6, priority 3), beside the code so
//! `cargo xtask mutants` judges each mutant with one rebuild of the library.

use proptest::prelude::*;

use super::{ReplicaLoad, choose};

proptest! {
    // No regression files: under `cargo xtask mutants` they would record the
    // failures of mutants, in place, in the source tree.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

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
