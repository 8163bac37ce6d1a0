//! Pure placement (ORCH-4001, ORCH-4002): the least-loaded Ready replica with
//! a free slot; ties go to the lowest replica id so placement is stable.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLoad<'a> {
    pub id: &'a str,
    pub ready: bool,
    pub active: u32,
    pub slots: u32,
}

/// Index of the chosen replica, or `None` when no Ready replica has a free
/// slot. `prefer` (a session's warm replica, ORCH-4004) wins whenever it can
/// take the task; `avoid` (the replica that just failed the task) is skipped
/// unless it is the only choice.
pub fn choose(
    replicas: &[ReplicaLoad<'_>],
    prefer: Option<&str>,
    avoid: Option<&str>,
) -> Option<usize> {
    let candidates = || {
        replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.ready && r.active < r.slots)
    };
    let best = |skip: Option<&str>| {
        candidates()
            .filter(|(_, r)| Some(r.id) != skip)
            .min_by(|(_, a), (_, b)| {
                // Compare active/slots without floats.
                (u64::from(a.active) * u64::from(b.slots))
                    .cmp(&(u64::from(b.active) * u64::from(a.slots)))
                    .then_with(|| a.id.cmp(b.id))
            })
            .map(|(index, _)| index)
    };
    if let Some((index, _)) = candidates().find(|(_, r)| Some(r.id) == prefer) {
        return Some(index);
    }
    best(avoid).or_else(|| best(None))
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn load(id: &str, ready: bool, active: u32, slots: u32) -> ReplicaLoad<'_> {
        ReplicaLoad {
            id,
            ready,
            active,
            slots,
        }
    }

    // covers: ORCH-4001, ORCH-4002
    #[test]
    fn least_loaded_ready_replica_wins() {
        let replicas = [
            load("a", true, 2, 4),
            load("b", true, 1, 4),
            load("c", false, 0, 4),
        ];
        assert_eq!(choose(&replicas, None, None), Some(1));
        assert_eq!(choose(&replicas, None, Some("b")), Some(0));
        assert_eq!(
            choose(&replicas, Some("a"), None),
            Some(0),
            "a warm replica wins"
        );
        assert_eq!(
            choose(&replicas, Some("c"), None),
            Some(1),
            "unless it is not Ready"
        );
        let full = [load("a", true, 4, 4), load("c", false, 0, 4)];
        assert_eq!(choose(&full, None, None), None);
    }
}
