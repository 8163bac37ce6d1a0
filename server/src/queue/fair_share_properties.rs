//! Property tests of weighted fair sharing between tenants (ORCH-3015):
//! every dispatch checked against a reference model that scans every line,
//! and the stated bound on the work served ahead of a task checked on every
//! dispatch of random traces.

use std::collections::{BTreeMap, HashMap, VecDeque};

use contracts::Priority;
use contracts::config::FullPolicy;
use proptest::prelude::*;

use super::{PoolQueue, QueueKey, Share};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Task {
    id: u32,
    tenant: u8,
}

impl QueueKey for Task {
    type Tenant = u8;
    fn tenant(&self) -> &u8 {
        &self.tenant
    }
}

const TENANTS: u8 = 4;

/// Tenant `t`'s weight in a trace: `weights[t]`.
fn weights() -> impl Strategy<Value = [u32; TENANTS as usize]> {
    [1u32..=4, 1u32..=4, 1u32..=4, 1u32..=4]
}

#[derive(Debug, Clone)]
enum Op {
    Admit {
        tenant: u8,
        cost: u64,
        batch: bool,
    },
    /// A dispatch while the tenants in the mask are at their quota.
    Pop {
        at_quota: u8,
    },
    /// Cancel of the n-th (mod len) queued task.
    Remove(usize),
    /// The n-th dispatched task ends having used `used` of every 8 of its cost.
    Refund {
        n: usize,
        used: u64,
    },
    /// The n-th dispatched task is put back for a retry.
    RequeueFront(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..TENANTS, 1u64..=64, any::<bool>()).prop_map(|(tenant, cost, batch)| Op::Admit { tenant, cost, batch }),
        4 => (0u8..16).prop_map(|m| Op::Pop { at_quota: if m < 10 { 0 } else { m } }),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => (any::<usize>(), 0u64..=8).prop_map(|(n, used)| Op::Refund { n, used }),
        1 => any::<usize>().prop_map(Op::RequeueFront),
    ]
}

/// The policy written naively: per priority, a FIFO per tenant and its
/// virtual time; a dispatch scans every line for the least (tag, seq).
#[derive(Debug, Default)]
struct Model {
    classes: [ModelClass; 2],
    next_seq: u64,
}

#[derive(Debug, Default)]
struct ModelClass {
    lines: BTreeMap<u8, ModelLine>,
    now: u64,
}

#[derive(Debug, Default)]
struct ModelLine {
    queue: VecDeque<(Task, Share, u64)>,
    virtual_time: u64,
}

fn class_index(priority: Priority) -> usize {
    match priority {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

impl Model {
    fn push(&mut self, task: Task, priority: Priority, share: Share, at_front: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let line = self.classes[class_index(priority)]
            .lines
            .entry(task.tenant)
            .or_default();
        if at_front {
            line.queue.push_front((task, share, seq));
        } else {
            line.queue.push_back((task, share, seq));
        }
    }

    /// The task the policy dispatches next from `priority`.
    fn next(&self, priority: Priority, at_quota: u8) -> Option<Task> {
        let class = &self.classes[class_index(priority)];
        class
            .lines
            .iter()
            .filter(|(tenant, line)| at_quota & (1 << **tenant) == 0 && !line.queue.is_empty())
            .map(|(_, line)| {
                let (task, _, seq) = line.queue[0];
                ((line.virtual_time.max(class.now), seq), task)
            })
            .min()
            .map(|(_, task)| task)
    }

    fn dispatch(&mut self, priority: Priority, task: Task) {
        let class = &mut self.classes[class_index(priority)];
        let line = class.lines.get_mut(&task.tenant).unwrap();
        let (head, share, _) = line.queue.pop_front().unwrap();
        assert_eq!(head, task);
        let start = line.virtual_time.max(class.now);
        class.now = start;
        line.virtual_time = start + share.charge();
    }

    fn refund(&mut self, priority: Priority, tenant: u8, share: Share) {
        let class = &mut self.classes[class_index(priority)];
        if let Some(line) = class.lines.get_mut(&tenant) {
            line.virtual_time = line
                .virtual_time
                .saturating_sub(share.refund())
                .max(class.now);
        }
    }

    fn remove(&mut self, task: Task) {
        for class in &mut self.classes {
            for line in class.lines.values_mut() {
                line.queue.retain(|(t, _, _)| *t != task);
            }
        }
    }

    fn queued(&self) -> Vec<Task> {
        let mut all: Vec<(u64, Task)> = self
            .classes
            .iter()
            .flat_map(|c| c.lines.values())
            .flat_map(|l| l.queue.iter().map(|(t, _, seq)| (*seq, *t)))
            .collect();
        all.sort();
        all.into_iter().map(|(_, t)| t).collect()
    }
}

fn priority_of(batch: bool) -> Priority {
    if batch {
        Priority::Batch
    } else {
        Priority::Interactive
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    // covers: ORCH-3015, ORCH-3011
    #[test]
    fn every_dispatch_is_the_reference_models(
        weights in weights(),
        bound in 0u32..4,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut q = PoolQueue::new(1_000, FullPolicy::Reject, bound);
        let mut model = Model::default();
        let mut dispatched: Vec<(Task, Priority, Share)> = Vec::new();
        let mut next = 0u32;
        for op in ops {
            match op {
                Op::Admit { tenant, cost, batch } => {
                    let task = Task { id: next, tenant };
                    next += 1;
                    let share = Share { cost, weight: weights[tenant as usize] };
                    q.admit(task, priority_of(batch), share);
                    model.push(task, priority_of(batch), share, false);
                }
                Op::Pop { at_quota } => {
                    let popped = q.pop_next_where(|t| at_quota & (1 << t.tenant) == 0);
                    match popped {
                        Some(task) => {
                            let priority = if model.classes[0].lines.get(&task.tenant)
                                .is_some_and(|l| l.queue.iter().any(|(t, _, _)| *t == task)) {
                                Priority::Interactive
                            } else {
                                Priority::Batch
                            };
                            prop_assert_eq!(Some(task), model.next(priority, at_quota),
                                "the queue dispatched {:?}, the model another", task);
                            let share = model.classes[class_index(priority)].lines[&task.tenant].queue[0].1;
                            model.dispatch(priority, task);
                            dispatched.push((task, priority, share));
                        }
                        None => {
                            prop_assert_eq!(model.next(Priority::Interactive, at_quota), None);
                            prop_assert_eq!(model.next(Priority::Batch, at_quota), None);
                        }
                    }
                }
                Op::Remove(n) => {
                    let queued = model.queued();
                    if !queued.is_empty() {
                        let task = queued[n % queued.len()];
                        prop_assert!(q.remove(&task));
                        model.remove(task);
                    }
                }
                Op::Refund { n, used } if !dispatched.is_empty() => {
                    let (task, priority, share) = dispatched.remove(n % dispatched.len());
                    let unused = Share { cost: share.cost - share.cost * used / 8, weight: share.weight };
                    q.refund(&task, priority, unused.cost);
                    model.refund(priority, task.tenant, unused);
                }
                Op::RequeueFront(n) if !dispatched.is_empty() => {
                    let (task, priority, share) = dispatched.remove(n % dispatched.len());
                    q.requeue_front(task, priority, share);
                    model.refund(priority, task.tenant, share);
                    model.push(task, priority, share, true);
                }
                _ => {}
            }
            // The listing, each position and the pops that would empty the
            // queue all tell the same order.
            let order = q.dispatch_order();
            let mut emptied = q.clone();
            let popped: Vec<Task> = std::iter::from_fn(|| emptied.pop_next()).collect();
            prop_assert_eq!(&order, &popped);
            for (index, task) in order.iter().enumerate() {
                prop_assert_eq!(q.position(task), Some(index as u32), "position of {:?}", task);
            }
            prop_assert_eq!(order.len(), model.queued().len());
            let mut by_tenant = HashMap::new();
            for task in model.queued() {
                *by_tenant.entry(task.tenant).or_insert(0u32) += 1;
            }
            prop_assert_eq!(q.queued_by_tenant(), by_tenant);
        }
    }

    // covers: ORCH-3016
    #[test]
    fn no_tenant_is_served_ahead_of_a_task_more_than_the_bound(
        weights in weights(),
        ops in proptest::collection::vec(
            prop_oneof![
                3 => (0..TENANTS, 1u64..=64).prop_map(|(tenant, cost)| Some((tenant, cost))),
                2 => Just(None),
            ],
            1..200,
        ),
    ) {
        let mut q = PoolQueue::new(1_000, FullPolicy::Reject, 4);
        // Per queued task: its tenant's work queued ahead of it at its
        // admission, and each tenant's work dispatched since.
        let mut waiting: Vec<(Task, u64, [u64; TENANTS as usize])> = Vec::new();
        let mut costs = BTreeMap::new();
        let mut largest = 0;
        let mut next = 0u32;
        for op in ops {
            match op {
                Some((tenant, cost)) => {
                    let task = Task { id: next, tenant };
                    next += 1;
                    let ahead: u64 = waiting.iter().filter(|(t, _, _)| t.tenant == tenant).map(|(t, _, _)| costs[&t.id]).sum();
                    costs.insert(task.id, cost);
                    largest = largest.max(cost);
                    q.admit(task, Priority::Interactive, Share { cost, weight: weights[tenant as usize] });
                    waiting.push((task, ahead, [0; TENANTS as usize]));
                }
                None => {
                    let Some(task) = q.pop_next() else { continue };
                    let at = waiting.iter().position(|(t, _, _)| *t == task).unwrap();
                    let (_, own_ahead, served) = waiting.remove(at);
                    let own = task.tenant as usize;
                    for other in 0..TENANTS as usize {
                        if other == own {
                            continue;
                        }
                        // W_j ≤ w_j / w_L × (C + S_L) + C, in whole numbers.
                        let bound = weights[other] as u64 * (largest + own_ahead) + largest * weights[own] as u64;
                        prop_assert!(
                            served[other] * weights[own] as u64 <= bound,
                            "tenant {} was served {} tokens ahead of {:?} (weights {:?}, C {}, S {})",
                            other, served[other], task, weights, largest, own_ahead
                        );
                    }
                    let cost = costs[&task.id];
                    for (_, _, served) in &mut waiting {
                        served[own] += cost;
                    }
                }
            }
        }
    }
}

#[test]
fn queued_by_tenant_counts_each_tenants_waiting_keys_under_both_fairness_modes() {
    for fifo in [false, true] {
        let mut q = PoolQueue::new(100, FullPolicy::Reject, 2);
        if fifo {
            q = q.fifo_between_tenants();
        }
        for (id, tenant, batch) in [(0, 1, false), (1, 2, true), (2, 1, true), (3, 1, false)] {
            q.admit(Task { id, tenant }, priority_of(batch), Share::UNIT);
        }
        q.remove(&Task { id: 3, tenant: 1 });
        assert_eq!(
            q.queued_by_tenant(),
            HashMap::from([(1, 2), (2, 1)]),
            "fifo: {fifo}"
        );
        while q.pop_next().is_some() {}
        assert_eq!(q.queued_by_tenant(), HashMap::new(), "fifo: {fifo}");
    }
}
