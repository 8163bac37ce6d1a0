//! Pure per-pool queue logic (ORCH-3001..ORCH-3007, ORCH-3012, ORCH-3015):
//! bounded capacity, interactive first with a batch-starvation bound, tenants
//! sharing each priority by the tokens they were served over their weight
//! (FIFO within a tenant), the three full policies, the retry line of places
//! promised to refused tasks, and the forecast behind every backoff hint
//! (ORCH-2003). No I/O, no clocks: the runtime drives it under a lock and
//! passes the time in.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};

use hashbrown::HashTable;

use contracts::config::{Fairness, FullPolicy};
use contracts::{ErrorCode, Priority, RejectPolicy};

/// What the queue needs of a key: the tenant whose line it waits in.
pub trait QueueKey: Clone + Eq + Hash {
    type Tenant: Clone + Eq + Hash;
    fn tenant(&self) -> &Self::Tenant;
}

/// Keys of a queue with one tenant.
impl QueueKey for u32 {
    type Tenant = ();
    fn tenant(&self) -> &() {
        &()
    }
}

/// What a task costs its tenant's share of a priority (ORCH-3015): its
/// tokens (prompt + `max_tokens`) and the tenant's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub cost: u64,
    pub weight: u32,
}

/// Virtual time is counted in 1/65536 of a token per unit of weight.
const VIRTUAL_UNIT_BITS: u32 = 16;

impl Share {
    /// One token at weight 1: a queue whose tasks all cost the same.
    pub const UNIT: Share = Share { cost: 1, weight: 1 };

    /// The virtual time a dispatch adds to its tenant: cost / weight,
    /// rounded up, so it is never 0 and a tenant's tags strictly increase.
    fn charge(self) -> u64 {
        (self.cost.clamp(1, 1 << 40) << VIRTUAL_UNIT_BITS).div_ceil(u64::from(self.weight.max(1)))
    }

    /// The virtual time a refund of `cost` unused tokens gives back:
    /// rounded down, so a refund never exceeds its charge.
    fn refund(self) -> u64 {
        (self.cost.min(1 << 40) << VIRTUAL_UNIT_BITS) / u64::from(self.weight.max(1))
    }
}

/// A queue that keeps `n` tasks does every admission, dispatch, cancel and
/// position in O(log n) (issue 14), times the tenants with tasks queued in
/// its priority for a dispatch and a position. Each key is stored once, in
/// `entries`; a hash index finds a key's entry; each tenant's line orders
/// its entries by a number handed out at the back (counting up) or the front
/// (counting down); Fenwick trees over a line's numbers count the keys and
/// sum the charges ahead of one. Nothing walks or copies the whole queue but
/// `dispatch_order`, which lists it.
#[derive(Debug, Clone)]
struct Entry<K> {
    key: K,
    priority: Priority,
    /// The tenant's line in its priority's class.
    line: u32,
    order: i64,
    /// Admission order, kept across requeues so drop-lru finds the oldest;
    /// it also breaks ties between two tenants' tags.
    seq: u64,
    /// The virtual time its dispatch adds to its tenant ([`Share::charge`]).
    charge: u64,
}

/// Where the queued keys are: a slab of entries and the index of their keys.
#[derive(Debug, Clone)]
struct Entries<K> {
    slots: Vec<Option<Entry<K>>>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: RandomState,
}

impl<K> Entries<K> {
    fn get(&self, slot: u32) -> &Entry<K> {
        self.slots[slot as usize]
            .as_ref()
            .expect("the lanes and the index name live slots")
    }
}

impl<K: Eq + Hash> Entries<K> {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn find(&self, key: &K) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(key), |&slot| {
                slots[slot as usize].as_ref().is_some_and(|e| &e.key == key)
            })
            .copied()
    }

    fn insert(&mut self, entry: Entry<K>) -> u32 {
        let hash = self.hasher.hash_one(&entry.key);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            hasher.hash_one(&slots[s as usize].as_ref().expect("live slot").key)
        });
        slot
    }

    fn remove(&mut self, key: &K) -> Option<Entry<K>> {
        let slots = &self.slots;
        let found = self
            .index
            .find_entry(self.hasher.hash_one(key), |&slot| {
                slots[slot as usize].as_ref().is_some_and(|e| &e.key == key)
            })
            .ok()?;
        let (slot, _) = found.remove();
        self.free.push(slot);
        self.slots[slot as usize].take()
    }
}

/// One line of keys in dispatch order: slots of `Entries`, each at its
/// number in `at`. Removing one leaves a hole; `front` and `back` move past
/// holes at the ends, so the first and the last key are found at once, and a
/// renumbering closes the holes between.
#[derive(Debug, Clone)]
struct Lane {
    /// The slot holding each number, or `HOLE`.
    at: Vec<u32>,
    /// Smallest number in use; a requeue at the front takes `front - 1`.
    front: i64,
    /// One past the largest number in use: the next number for the back.
    back: i64,
    len: usize,
    /// The keys (0 or 1) and the charge at each number.
    sums: Fenwick,
}

const HOLE: u32 = u32::MAX;

impl Lane {
    fn new() -> Self {
        Self {
            at: Vec::new(),
            front: 0,
            back: 0,
            len: 0,
            sums: Fenwick::default(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The number of a new key at the back (or the front), renumbering the
    /// lane first when it falls outside the numbers it has room for.
    fn next_order<K>(&mut self, at_front: bool, entries: &mut Entries<K>) -> i64 {
        let wanted = if at_front { self.front - 1 } else { self.back };
        if !(0..self.at.len() as i64).contains(&wanted) {
            self.renumber(entries);
        }
        if at_front {
            self.front -= 1;
            self.front
        } else {
            self.back += 1;
            self.back - 1
        }
    }

    fn insert(&mut self, order: i64, slot: u32, charge: u64) {
        self.sums.add(order, Sums::key(charge));
        self.at[order as usize] = slot;
        self.len += 1;
    }

    fn remove(&mut self, order: i64, charge: u64) {
        if self.at[order as usize] == HOLE {
            return;
        }
        self.at[order as usize] = HOLE;
        self.sums.sub(order, Sums::key(charge));
        self.len -= 1;
        while self.front < self.back && self.at[self.front as usize] == HOLE {
            self.front += 1;
        }
        while self.back > self.front && self.at[self.back as usize - 1] == HOLE {
            self.back -= 1;
        }
    }

    /// The slots in dispatch order.
    fn slots(&self) -> impl DoubleEndedIterator<Item = u32> + '_ {
        self.at[self.front as usize..self.back as usize]
            .iter()
            .copied()
            .filter(|&slot| slot != HOLE)
    }

    /// The first number in use after `number`.
    fn next_after(&self, number: i64) -> Option<i64> {
        (number + 1..self.back).find(|&n| self.at[n as usize] != HOLE)
    }

    /// The number of the key with `index` keys ahead of it in this line.
    fn number_of(&self, index: u64) -> i64 {
        self.sums.longest_below(index + 1, |s| s.keys).0 as i64
    }

    /// Give the keys the numbers `slack..slack + len`, with room for `slack`
    /// more at either end: O(len), once per `slack` pushes at the most, so
    /// O(1) per push amortised.
    fn renumber<K>(&mut self, entries: &mut Entries<K>) {
        let slack = (self.len / 2).max(32);
        let mut at = vec![HOLE; self.len + 2 * slack];
        let mut sums = vec![Sums::default(); at.len()];
        for (i, slot) in self.slots().enumerate() {
            let order = slack + i;
            if let Some(entry) = entries.slots[slot as usize].as_mut() {
                entry.order = order as i64;
                sums[order] = Sums::key(entry.charge);
            }
            at[order] = slot;
        }
        self.sums = Fenwick::build(sums);
        self.at = at;
        self.front = slack as i64;
        self.back = (slack + self.len) as i64;
    }
}

/// What a Fenwick node sums over its numbers: keys, and their charges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    keys: u64,
    charges: u64,
}

impl Sums {
    fn key(charge: u64) -> Self {
        Self {
            keys: 1,
            charges: charge,
        }
    }
}

/// A Fenwick tree of the keys and charges at each number of a lane: one
/// walk reads both.
#[derive(Debug, Clone, Default)]
struct Fenwick {
    tree: Vec<Sums>,
}

impl Fenwick {
    /// The tree of the sums at numbers 0, 1, …, built in O(len): each
    /// node adds itself to its parent.
    fn build(mut tree: Vec<Sums>) -> Self {
        for i in 1..=tree.len() {
            let parent = i + (i & i.wrapping_neg());
            if parent <= tree.len() {
                tree[parent - 1].keys += tree[i - 1].keys;
                tree[parent - 1].charges += tree[i - 1].charges;
            }
        }
        Self { tree }
    }

    fn add(&mut self, order: i64, delta: Sums) {
        let mut i = order as usize + 1;
        while i <= self.tree.len() {
            self.tree[i - 1].keys += delta.keys;
            self.tree[i - 1].charges += delta.charges;
            i += i & i.wrapping_neg();
        }
    }

    fn sub(&mut self, order: i64, delta: Sums) {
        let mut i = order as usize + 1;
        while i <= self.tree.len() {
            self.tree[i - 1].keys -= delta.keys;
            self.tree[i - 1].charges -= delta.charges;
            i += i & i.wrapping_neg();
        }
    }

    /// The sums at numbers below `order`.
    fn before(&self, order: i64) -> Sums {
        let mut i = order as usize;
        let mut sum = Sums::default();
        while i > 0 {
            sum.keys += self.tree[i - 1].keys;
            sum.charges += self.tree[i - 1].charges;
            i -= i & i.wrapping_neg();
        }
        sum
    }

    /// The largest `p` whose `field` of `before(p)` is below `x` (`x` > 0),
    /// and `before(p)`.
    fn longest_below(&self, x: u64, field: impl Fn(&Sums) -> u64) -> (usize, Sums) {
        let (mut p, mut sum) = (0, Sums::default());
        let mut step = self.tree.len().next_power_of_two();
        while step > 0 {
            if p + step <= self.tree.len() {
                let node = self.tree[p + step - 1];
                if field(&sum) + field(&node) < x {
                    p += step;
                    sum.keys += node.keys;
                    sum.charges += node.charges;
                }
            }
            step >>= 1;
        }
        (p, sum)
    }
}

/// One tenant's line in a priority (ORCH-3015).
#[derive(Debug, Clone)]
struct Line {
    lane: Lane,
    /// The virtual time of the line's head: what its tenant was served,
    /// over its weight, since it last caught up with the class.
    virtual_time: u64,
    weight: u32,
}

impl Line {
    /// The head's tag: a tenant never starts behind the class, so one that
    /// was idle, or held back by its own concurrency quota, banks no credit.
    fn start(&self, now: u64) -> u64 {
        self.virtual_time.max(now)
    }
}

/// One priority of a queue: a line per tenant (one line under FIFO).
#[derive(Debug, Clone)]
struct Class<T> {
    lines: Vec<Line>,
    by_tenant: HashMap<Option<T>, u32>,
    len: usize,
    /// The tag of the last dispatch: it never goes back.
    now: u64,
}

impl<T: Clone + Eq + Hash> Class<T> {
    fn new() -> Self {
        Self {
            lines: Vec::new(),
            by_tenant: HashMap::new(),
            len: 0,
            now: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn line_of(&mut self, tenant: Option<T>) -> u32 {
        let lines = &mut self.lines;
        *self.by_tenant.entry(tenant).or_insert_with(|| {
            lines.push(Line {
                lane: Lane::new(),
                virtual_time: 0,
                weight: 1,
            });
            (lines.len() - 1) as u32
        })
    }

    /// A dispatch from `line` of a key that costs `charge`.
    fn dispatched(&mut self, line: u32, charge: u64) {
        let line = &mut self.lines[line as usize];
        let start = line.start(self.now);
        self.now = start;
        line.virtual_time = start + charge;
    }

    /// Give `line` back `charge` of what it was charged, never behind the class.
    fn give_back(&mut self, line: u32, charge: u64) {
        let line = &mut self.lines[line as usize];
        line.virtual_time = line.virtual_time.saturating_sub(charge).max(self.now);
    }

    /// The tag of the key at `order` of `line`.
    fn tag(&self, line: u32, order: i64) -> u64 {
        let line = &self.lines[line as usize];
        line.start(self.now) + line.lane.sums.before(order).charges
    }

    /// Keys of this class dispatched before `entry`: those of its line
    /// ahead of it, and of every other line those whose (tag, seq) is less.
    fn rank<K>(&self, entry: &Entry<K>, entries: &Entries<K>) -> usize {
        let own = &self.lines[entry.line as usize];
        let before = own.lane.sums.before(entry.order);
        let tag = own.start(self.now) + before.charges;
        let mut rank = before.keys as usize;
        for (i, line) in self.lines.iter().enumerate() {
            if i == entry.line as usize || line.lane.len() == 0 {
                continue;
            }
            let start = line.start(self.now);
            let below = tag.saturating_sub(start);
            // That line's keys whose tag is below `tag` go first, a prefix of
            // it. The longest run of numbers whose charges sum below `below`
            // ends just before one of them (charges are never 0), or at the
            // lane's end: `through` sums the charges of the keys ahead.
            let (ahead, through) = if below == 0 {
                (0, 0)
            } else {
                let (p, sums) = line.lane.sums.longest_below(below, |s| s.charges);
                match line.lane.at.get(p) {
                    Some(&slot) => (sums.keys + 1, sums.charges + entries.get(slot).charge),
                    None => (sums.keys, sums.charges),
                }
            };
            rank += ahead as usize;
            // The next key of that line ties when its tag is the same; the
            // earlier admission goes first.
            if start + through == tag && (ahead as usize) < line.lane.len() {
                let number = line.lane.number_of(ahead);
                if entries.get(line.lane.at[number as usize]).seq < entry.seq {
                    rank += 1;
                }
            }
        }
        rank
    }

    /// The slot dispatched last of this class: the greatest (tag, seq) of
    /// the lines' last keys.
    fn last<K>(&self, entries: &Entries<K>) -> Option<u32> {
        (0..self.lines.len() as u32)
            .filter(|&line| self.lines[line as usize].lane.len() > 0)
            .map(|line| {
                let lane = &self.lines[line as usize].lane;
                let slot = lane.at[lane.back as usize - 1];
                ((self.tag(line, lane.back - 1), entries.get(slot).seq), slot)
            })
            .max()
            .map(|(_, slot)| slot)
    }

    /// This class's keys in dispatch order, lazily: the lines' heads merged
    /// by (tag, seq), in the heap `buffer` (cleared first) gives room for.
    fn merge<'a, K>(&'a self, entries: &'a Entries<K>, mut buffer: Vec<Head>) -> Merge<'a, T, K> {
        buffer.clear();
        buffer.extend(
            (0..self.lines.len() as u32)
                .filter(|&line| self.lines[line as usize].lane.len() > 0)
                .map(|line| {
                    let line_ = &self.lines[line as usize];
                    let number = line_.lane.front;
                    let seq = entries.get(line_.lane.at[number as usize]).seq;
                    Reverse((line_.start(self.now), seq, line, number))
                }),
        );
        Merge {
            class: self,
            entries,
            heads: BinaryHeap::from(buffer),
            skipped: Vec::new(),
        }
    }
}

/// A line's next key in a merge: (tag, seq, line, number), least first.
type Head = Reverse<(u64, u64, u32, i64)>;

/// A class's keys in dispatch order (see [`Class::merge`]).
struct Merge<'a, T, K> {
    class: &'a Class<T>,
    entries: &'a Entries<K>,
    heads: BinaryHeap<Head>,
    /// Lines left out: their tenant may not start now.
    skipped: Vec<u32>,
}

impl<T, K> Merge<'_, T, K> {
    fn drop_skipped(&mut self) {
        while let Some(Reverse((_, _, line, _))) = self.heads.peek() {
            if !self.skipped.contains(line) {
                break;
            }
            self.heads.pop();
        }
    }

    fn is_empty(&mut self) -> bool {
        self.drop_skipped();
        self.heads.is_empty()
    }

    /// The next key: its line and slot.
    fn next(&mut self) -> Option<(u32, u32)> {
        self.drop_skipped();
        let Reverse((tag, _, line, number)) = self.heads.pop()?;
        let lane = &self.class.lines[line as usize].lane;
        let slot = lane.at[number as usize];
        if let Some(next) = lane.next_after(number) {
            let seq = self.entries.get(lane.at[next as usize]).seq;
            let tag = tag + self.entries.get(slot).charge;
            self.heads.push(Reverse((tag, seq, line, next)));
        }
        Some((line, slot))
    }
}

/// A queued task pushed out to make room; its stream ends with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction<K> {
    pub key: K,
    pub code: ErrorCode,
    pub policy: RejectPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<K> {
    Admitted {
        position: u32,
        evicted: Option<Eviction<K>>,
    },
    Rejected {
        policy: RejectPolicy,
    },
}

/// A place promised to a task refused on a full `reject` queue, kept for its
/// retry until `expires_ms` (ORCH-3012).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold<K> {
    key: K,
    expires_ms: u64,
}

/// The most places a pool's retry line holds; a refusal beyond it still gets
/// its hint, without a place (ORCH-3012).
pub const RETRY_LINE_MAX: usize = 16_384;

#[derive(Debug, Clone)]
pub struct PoolQueue<K: QueueKey> {
    capacity: usize,
    policy: FullPolicy,
    starvation_bound: u32,
    fairness: Fairness,
    entries: Entries<K>,
    interactive: Class<K::Tenant>,
    batch: Class<K::Tenant>,
    /// Queued entries by admission order, under drop-lru, whose victim is
    /// the first.
    by_age: BTreeMap<u64, u32>,
    /// Interactive dispatches in a row while a batch task was waiting.
    streak: u32,
    next_seq: u64,
    /// Places promised to refused tasks, oldest refusal first: under
    /// `reject` they come before any arrival that holds none.
    retry_line: VecDeque<Hold<K>>,
    keeps_retry_line: bool,
    /// The heaps of the last dispatch's merges, kept so a dispatch allocates
    /// none.
    merge_buffers: [Vec<Head>; 2],
}

impl<K: QueueKey> PoolQueue<K> {
    pub fn new(capacity: u32, policy: FullPolicy, starvation_bound: u32) -> Self {
        Self {
            capacity: capacity as usize,
            policy,
            starvation_bound,
            fairness: Fairness::Weighted,
            entries: Entries::new(),
            interactive: Class::new(),
            batch: Class::new(),
            by_age: BTreeMap::new(),
            streak: 0,
            next_seq: 0,
            retry_line: VecDeque::new(),
            keeps_retry_line: true,
            merge_buffers: Default::default(),
        }
    }

    /// A queue that holds no place for a refused task's retry (ORCH-3012).
    pub fn without_retry_line(mut self) -> Self {
        self.keeps_retry_line = false;
        self
    }

    /// A queue whose priorities are one line each, whoever the tenant
    /// (`fairness: fifo`, ORCH-3015).
    pub fn fifo_between_tenants(mut self) -> Self {
        self.fairness = Fairness::Fifo;
        self
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Places in the retry line ahead of `key`: all of them when it holds none.
    fn holds_ahead(&self, key: &K) -> usize {
        self.retry_line
            .iter()
            .position(|hold| &hold.key == key)
            .unwrap_or(self.retry_line.len())
    }

    /// Queue places that must free before `key` is admitted (0: now). Under
    /// `reject` the places held for earlier refusals come first (ORCH-3012);
    /// the other policies make room by evicting, so one place is the most an
    /// arrival they refuse waits for.
    pub fn places_needed(&self, key: &K) -> u32 {
        let ahead = match self.policy {
            FullPolicy::Reject => self.holds_ahead(key),
            FullPolicy::DropLru | FullPolicy::ShedLowPriority => 0,
        };
        (self.len() + ahead + 1).saturating_sub(self.capacity) as u32
    }

    /// Keep a place in the retry line for `key`'s retry until `expires_ms`:
    /// its own place if it holds one, else the back of the line. Only the
    /// `reject` policy keeps a line, unless turned off, and at most
    /// [`RETRY_LINE_MAX`] places.
    pub fn hold(&mut self, key: K, expires_ms: u64) -> bool {
        if self.policy != FullPolicy::Reject || !self.keeps_retry_line {
            return false;
        }
        if let Some(hold) = self.retry_line.iter_mut().find(|hold| hold.key == key) {
            hold.expires_ms = expires_ms;
            return true;
        }
        if self.retry_line.len() >= RETRY_LINE_MAX {
            return false;
        }
        self.retry_line.push_back(Hold { key, expires_ms });
        true
    }

    /// Give up the places whose retry did not come by their expiry.
    pub fn expire_holds(&mut self, now_ms: u64) {
        if !self.retry_line.is_empty() {
            self.retry_line.retain(|hold| hold.expires_ms > now_ms);
        }
    }

    pub fn holds(&self) -> usize {
        self.retry_line.len()
    }

    fn class(&self, priority: Priority) -> &Class<K::Tenant> {
        match priority {
            Priority::Interactive => &self.interactive,
            Priority::Batch => &self.batch,
        }
    }

    fn class_mut(&mut self, priority: Priority) -> &mut Class<K::Tenant> {
        match priority {
            Priority::Interactive => &mut self.interactive,
            Priority::Batch => &mut self.batch,
        }
    }

    /// The line `key` waits in: its tenant's, or the one line under FIFO.
    fn line_key(&self, key: &K) -> Option<K::Tenant> {
        (self.fairness == Fairness::Weighted).then(|| key.tenant().clone())
    }

    /// Queue `key` at the back (or the front) of its tenant's line, as the
    /// newest admission (drop-lru's order).
    fn push(&mut self, key: K, priority: Priority, at_front: bool, share: Share) {
        let tenant = self.line_key(&key);
        let class = match priority {
            Priority::Interactive => &mut self.interactive,
            Priority::Batch => &mut self.batch,
        };
        let line = class.line_of(tenant);
        let lane = &mut class.lines[line as usize];
        lane.weight = share.weight;
        let order = lane.lane.next_order(at_front, &mut self.entries);
        let seq = self.next_seq;
        self.next_seq += 1;
        let charge = share.charge();
        let slot = self.entries.insert(Entry {
            key,
            priority,
            line,
            order,
            seq,
            charge,
        });
        lane.lane.insert(order, slot, charge);
        class.len += 1;
        if self.policy == FullPolicy::DropLru {
            self.by_age.insert(seq, slot);
        }
    }

    /// Admit `key` at the back of its tenant's line in its priority,
    /// applying the full policy; under `reject`, a place held for `key` is
    /// redeemed and the places held ahead of it count as taken (ORCH-3012).
    pub fn admit(&mut self, key: K, priority: Priority, share: Share) -> Admission<K> {
        let mut evicted = None;
        match self.policy {
            FullPolicy::Reject => {
                if self.places_needed(&key) > 0 {
                    return Admission::Rejected {
                        policy: RejectPolicy::Reject,
                    };
                }
                if !self.retry_line.is_empty() {
                    self.retry_line.retain(|hold| hold.key != key);
                }
            }
            _ if !self.is_full() => {}
            FullPolicy::DropLru => match self.pop_oldest() {
                Some(victim) => {
                    evicted = Some(Eviction {
                        key: victim,
                        code: ErrorCode::QueueFullDropLru,
                        policy: RejectPolicy::DropLru,
                    })
                }
                None => {
                    return Admission::Rejected {
                        policy: RejectPolicy::DropLru,
                    };
                }
            },
            FullPolicy::ShedLowPriority => {
                let victim = match priority {
                    Priority::Interactive => self
                        .batch
                        .last(&self.entries)
                        .map(|slot| self.entries.get(slot).key.clone()),
                    Priority::Batch => None,
                };
                match victim {
                    Some(victim) => {
                        self.remove(&victim);
                        evicted = Some(Eviction {
                            key: victim,
                            code: ErrorCode::AdmissionReject,
                            policy: RejectPolicy::ShedLowPriority,
                        })
                    }
                    None => {
                        return Admission::Rejected {
                            policy: RejectPolicy::ShedLowPriority,
                        };
                    }
                }
            }
        }
        self.push(key.clone(), priority, false, share);
        let position = self.position(&key).expect("just queued");
        Admission::Admitted { position, evicted }
    }

    /// The policy that would refuse `key` arriving at `priority` right now,
    /// checked before the task is written to the store.
    pub fn would_reject(&self, key: &K, priority: Priority) -> Option<RejectPolicy> {
        match self.policy {
            FullPolicy::Reject => (self.places_needed(key) > 0).then_some(RejectPolicy::Reject),
            _ if !self.is_full() => None,
            FullPolicy::DropLru => self.is_empty().then_some(RejectPolicy::DropLru),
            FullPolicy::ShedLowPriority => (priority == Priority::Batch || self.batch.len() == 0)
                .then_some(RejectPolicy::ShedLowPriority),
        }
    }

    /// Append a recovered task in its original order, regardless of
    /// capacity: it was admitted before the restart (ORCH-7002).
    pub fn restore(&mut self, key: K, priority: Priority, share: Share) {
        self.push(key, priority, false, share);
    }

    /// Put a task back at the head of its line after its dispatch (a retry
    /// after a replica failure, or no slot after all), regardless of
    /// capacity: it was admitted before. Its tenant is given back what the
    /// dispatch charged it.
    pub fn requeue_front(&mut self, key: K, priority: Priority, share: Share) {
        self.refund(&key, priority, share.cost);
        self.push(key, priority, true, share);
    }

    /// Give `key`'s tenant back `unused` tokens of a dispatched task's cost
    /// (ORCH-3015): what it reserved for `max_tokens` and did not generate.
    /// Its line never goes back behind the class's virtual time, so a refund
    /// is never a credit against tenants that waited.
    pub fn refund(&mut self, key: &K, priority: Priority, unused: u64) {
        let Some(tenant) = self.line_key(key) else {
            return;
        };
        let class = self.class_mut(priority);
        if let Some(&line) = class.by_tenant.get(&Some(tenant)) {
            let weight = class.lines[line as usize].weight;
            class.give_back(
                line,
                Share {
                    cost: unused,
                    weight,
                }
                .refund(),
            );
        }
    }

    /// Next task to dispatch (ORCH-3002, ORCH-3003).
    pub fn pop_next(&mut self) -> Option<K> {
        self.pop_next_where(|_| true)
    }

    /// Next task to dispatch among those `eligible` says may start now (a
    /// tenant at its concurrency quota waits, ORCH-3011); the others keep
    /// their place. Walks the dispatch order only as far as the first
    /// eligible task; eligibility is the tenant's, so under weighted
    /// fairness a refused head leaves its whole line out.
    pub fn pop_next_where(&mut self, mut eligible: impl FnMut(&K) -> bool) -> Option<K> {
        let buffers = std::mem::take(&mut self.merge_buffers);
        let (found, buffers) = {
            let mut order = self.in_dispatch_order(buffers);
            let found = loop {
                let Some((priority, line, slot)) = order.next() else {
                    break None;
                };
                if eligible(&self.entries.get(slot).key) {
                    break Some((priority, line, slot));
                }
                if self.fairness == Fairness::Weighted {
                    order.skip(priority, line);
                }
            };
            (found, order.into_buffers())
        };
        self.merge_buffers = buffers;
        let (priority, line, slot) = found?;
        let entry = self.entries.get(slot);
        let (key, charge) = (entry.key.clone(), entry.charge);
        self.remove(&key);
        self.class_mut(priority).dispatched(line, charge);
        self.streak = if priority == Priority::Batch || self.batch.len() == 0 {
            0
        } else {
            self.streak + 1
        };
        Some(key)
    }

    /// The queued keys in the order they would be dispatched, lazily: the
    /// pops that would empty the queue, simulated.
    fn in_dispatch_order(&self, [interactive, batch]: [Vec<Head>; 2]) -> DispatchOrder<'_, K> {
        DispatchOrder {
            interactive: self.interactive.merge(&self.entries, interactive),
            batch: self.batch.merge(&self.entries, batch),
            streak: self.streak,
            bound: self.starvation_bound,
        }
    }

    /// Keys in the order they would be dispatched.
    pub fn dispatch_order(&self) -> Vec<K> {
        let mut order = self.in_dispatch_order(Default::default());
        std::iter::from_fn(|| order.next())
            .map(|(_, _, slot)| self.entries.get(slot).key.clone())
            .collect()
    }

    /// How many keys each tenant has queued: from its lines, or under
    /// FIFO, whose one line mixes tenants, by a walk of the queue.
    pub fn queued_by_tenant(&self) -> HashMap<K::Tenant, u32> {
        let mut counts = HashMap::new();
        if self.fairness == Fairness::Weighted {
            for class in [&self.interactive, &self.batch] {
                for (tenant, &line) in &class.by_tenant {
                    let queued = class.lines[line as usize].lane.len() as u32;
                    if let Some(tenant) = tenant.as_ref().filter(|_| queued > 0) {
                        *counts.entry(tenant.clone()).or_default() += queued;
                    }
                }
            }
        } else {
            for entry in self.entries.slots.iter().flatten() {
                *counts.entry(entry.key.tenant().clone()).or_default() += 1;
            }
        }
        counts
    }

    fn pop_oldest(&mut self) -> Option<K> {
        let slot = *self.by_age.values().next()?;
        let key = self.entries.get(slot).key.clone();
        self.remove(&key);
        Some(key)
    }

    pub fn remove(&mut self, key: &K) -> bool {
        let Some(entry) = self.entries.remove(key) else {
            return false;
        };
        self.by_age.remove(&entry.seq);
        let class = self.class_mut(entry.priority);
        class.lines[entry.line as usize]
            .lane
            .remove(entry.order, entry.charge);
        class.len -= 1;
        true
    }

    /// 0-based dispatch position of `key`, computed from its rank in its
    /// priority without simulating: with streak `s` and bound `b`, batch
    /// picks happen once `c1 = b - s` interactive picks are done, then after
    /// every `b`.
    pub fn position(&self, key: &K) -> Option<u32> {
        let entry = self.entries.get(self.entries.find(key)?);
        let index = self.class(entry.priority).rank(entry, &self.entries);
        Some(match entry.priority {
            Priority::Interactive => self.interactive_position(index),
            Priority::Batch => self.batch_position(index),
        })
    }

    fn first_batch_turn(&self) -> usize {
        self.starvation_bound.saturating_sub(self.streak) as usize
    }

    fn interactive_position(&self, i: usize) -> u32 {
        let bound = self.starvation_bound as usize;
        let batch_before = if bound == 0 {
            self.batch.len()
        } else if i >= self.first_batch_turn() {
            ((i - self.first_batch_turn()) / bound + 1).min(self.batch.len())
        } else {
            0
        };
        (i + batch_before) as u32
    }

    fn batch_position(&self, j: usize) -> u32 {
        let interactive_before = (self.first_batch_turn() + j * self.starvation_bound as usize)
            .min(self.interactive.len());
        (j + interactive_before) as u32
    }
}

/// A queue's keys in dispatch order: the two classes' merges, interleaved
/// by the batch-starvation bound (ORCH-3003).
struct DispatchOrder<'a, K: QueueKey> {
    interactive: Merge<'a, K::Tenant, K>,
    batch: Merge<'a, K::Tenant, K>,
    streak: u32,
    bound: u32,
}

impl<K: QueueKey> DispatchOrder<'_, K> {
    /// The next key: its priority, line and slot.
    fn next(&mut self) -> Option<(Priority, u32, u32)> {
        if !self.batch.is_empty() && (self.interactive.is_empty() || self.streak >= self.bound) {
            self.streak = 0;
            return self
                .batch
                .next()
                .map(|(line, slot)| (Priority::Batch, line, slot));
        }
        let (line, slot) = self.interactive.next()?;
        self.streak = if self.batch.is_empty() {
            0
        } else {
            self.streak + 1
        };
        Some((Priority::Interactive, line, slot))
    }

    /// The merges' heaps, to reuse.
    fn into_buffers(self) -> [Vec<Head>; 2] {
        [
            self.interactive.heads.into_vec(),
            self.batch.heads.into_vec(),
        ]
    }

    /// Leave `line` of `priority` out of the rest of the order.
    fn skip(&mut self, priority: Priority, line: u32) {
        match priority {
            Priority::Interactive => self.interactive.skipped.push(line),
            Priority::Batch => self.batch.skipped.push(line),
        }
    }
}

/// Predicted wait before the task at `position` starts (ORCH-3007): it starts
/// at once if a free slot is left for it, otherwise after
/// `position - free + 1` completions, which arrive `slots / mean_service_ms`
/// per millisecond.
pub fn predicted_start_ms(
    position: u32,
    free_slots: u32,
    total_slots: u32,
    mean_service_ms: f64,
) -> u64 {
    if position < free_slots {
        return 0;
    }
    let waits_for = f64::from(position - free_slots + 1);
    (waits_for * mean_service_ms / f64::from(total_slots.max(1))).ceil() as u64
}

/// What the wait for queue places is forecast from (ORCH-2003): the live
/// state of the pool's slots and its observed pace.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceForecast {
    /// Expected remaining service of each running task: the observed mean
    /// service time less what it has run, at least 0.
    pub remaining_ms: Vec<u64>,
    /// Ready slots with no task on them.
    pub free_slots: u32,
    /// Observed time between two completions while tasks were waiting (so
    /// every slot was busy), or the mean service time / Ready slots before
    /// enough were seen.
    pub completion_interval_ms: f64,
}

impl ServiceForecast {
    /// Time until the `n`-th dispatch from now (n ≥ 1), each of which frees a
    /// queue place: free slots take a task at once; then each running task's
    /// slot frees at its expected end, and again every cycle after that (a
    /// cycle: busy slots × the completion interval).
    pub fn nth_dispatch_ms(&self, n: u32) -> u64 {
        if n <= self.free_slots {
            return 0;
        }
        let completions = (n - self.free_slots) as usize;
        let mut remaining = self.remaining_ms.clone();
        remaining.sort_unstable();
        if remaining.is_empty() {
            return (completions as f64 * self.completion_interval_ms).ceil() as u64;
        }
        let rounds = (completions - 1) / remaining.len();
        let first = remaining[(completions - 1) % remaining.len()];
        let cycle_ms = remaining.len() as f64 * self.completion_interval_ms;
        first + (rounds as f64 * cycle_ms).ceil() as u64
    }

    /// The wait for a task that needs `places` queue places to free
    /// (ORCH-2003): until the last of them frees, plus a margin for the
    /// retry's round trip and the forecast's error, which grows with its
    /// horizon: one completion interval and 1% of the forecast.
    pub fn wait_for_places_ms(&self, places: u32) -> u64 {
        let forecast_ms = self.nth_dispatch_ms(places.max(1));
        forecast_ms + forecast_ms / 100 + self.completion_interval_ms.ceil() as u64
    }

    /// Until every running task is expected to be done.
    pub fn until_idle_ms(&self) -> u64 {
        self.remaining_ms.iter().copied().max().unwrap_or(0)
    }
}

/// How long past its hint a refused task's place stays held (ORCH-3012):
/// the second that rounding `Retry-After` up may add, and a tenth of the
/// hint for a client's timer and round trip. No longer: a place whose
/// client went away stays empty that long.
pub fn hold_grace_ms(backoff_ms: u64) -> u64 {
    1_000 + backoff_ms / 10
}

/// Client backoff derived from a predicted wait (ORCH-2003): never below
/// 50 ms, and `Retry-After` is the same wait in whole seconds, at least 1.
pub fn backoff_hint(predicted_wait_ms: u64) -> (u64, u64) {
    let backoff_ms = predicted_wait_ms.max(50);
    (backoff_ms, backoff_ms.div_ceil(1000).max(1))
}

#[cfg(test)]
mod fair_share_properties;
#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: u32, policy: FullPolicy) -> PoolQueue<u32> {
        PoolQueue::new(capacity, policy, 2)
    }

    // covers: ORCH-3015
    #[test]
    fn a_charge_is_cost_over_weight_rounded_up_and_a_refund_rounded_down() {
        let share = |cost, weight| Share { cost, weight };
        assert_eq!(share(3, 1).charge(), 3 << 16);
        assert_eq!(share(1, 3).charge(), 21_846, "65536 / 3, rounded up");
        assert_eq!(share(0, 1).charge(), 1 << 16, "never 0");
        assert_eq!(share(1, 3).refund(), 21_845, "65536 / 3, rounded down");
        assert_eq!(share(10, 4).refund(), 163_840);
        assert_eq!(share(0, 1).refund(), 0);
    }

    // covers: ORCH-3002, ORCH-3003
    #[test]
    fn interactive_first_with_starvation_bound() {
        let mut q = queue(10, FullPolicy::Reject);
        q.admit(100, Priority::Batch, Share::UNIT);
        for k in 0..4 {
            q.admit(k, Priority::Interactive, Share::UNIT);
        }
        assert_eq!(q.dispatch_order(), vec![0, 1, 100, 2, 3]);
        assert_eq!(q.position(&100), Some(2));
    }

    // covers: ORCH-3004, ORCH-3005, ORCH-3006
    #[test]
    fn full_policies_pick_their_victims() {
        let mut q = queue(2, FullPolicy::Reject);
        q.admit(1, Priority::Batch, Share::UNIT);
        q.admit(2, Priority::Interactive, Share::UNIT);
        assert_eq!(
            q.admit(3, Priority::Interactive, Share::UNIT),
            Admission::Rejected {
                policy: RejectPolicy::Reject
            }
        );

        let mut q = queue(2, FullPolicy::DropLru);
        q.admit(1, Priority::Interactive, Share::UNIT);
        q.admit(2, Priority::Batch, Share::UNIT);
        let Admission::Admitted { evicted, .. } = q.admit(3, Priority::Batch, Share::UNIT) else {
            panic!("drop-lru admits")
        };
        assert_eq!(evicted.unwrap().key, 1);

        let mut q = queue(3, FullPolicy::ShedLowPriority);
        q.admit(1, Priority::Batch, Share::UNIT);
        q.admit(2, Priority::Batch, Share::UNIT);
        q.admit(3, Priority::Interactive, Share::UNIT);
        assert!(matches!(
            q.admit(4, Priority::Batch, Share::UNIT),
            Admission::Rejected { .. }
        ));
        let Admission::Admitted { evicted, .. } = q.admit(5, Priority::Interactive, Share::UNIT)
        else {
            panic!("shed admits interactive")
        };
        let evicted = evicted.unwrap();
        assert_eq!((evicted.key, evicted.code), (2, ErrorCode::AdmissionReject));
    }

    // covers: ORCH-3003
    #[test]
    fn position_agrees_with_the_simulated_dispatch_order() {
        for bound in 0..4 {
            let mut q = PoolQueue::new(64, FullPolicy::Reject, bound);
            for k in 0..20u32 {
                let priority = if k % 3 == 0 {
                    Priority::Batch
                } else {
                    Priority::Interactive
                };
                q.admit(k, priority, Share::UNIT);
                if k % 5 == 4 {
                    q.pop_next();
                }
                let order = q.dispatch_order();
                for (index, key) in order.iter().enumerate() {
                    assert_eq!(
                        q.position(key),
                        Some(index as u32),
                        "bound {bound}, key {key}"
                    );
                }
            }
        }
    }

    // covers: ORCH-3002, ORCH-3003
    #[test]
    fn positions_stay_right_through_renumbering_at_both_ends() {
        // Far more pushes at either end than one numbering has room for.
        let mut q = PoolQueue::new(10_000, FullPolicy::Reject, 3);
        let mut next = 0u32;
        for round in 0..400u32 {
            let priority = if round % 3 == 0 {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            q.admit(next, priority, Share::UNIT);
            next += 1;
            if round % 2 == 0 {
                let key = q.pop_next().expect("queued");
                q.requeue_front(key, priority, Share::UNIT);
            }
            if round % 5 == 4 {
                q.pop_next();
            }
            if round % 7 == 0 {
                q.remove(&(next / 2));
            }
            let order = q.dispatch_order();
            assert_eq!(order.len(), q.len());
            for (index, key) in order.iter().enumerate() {
                assert_eq!(
                    q.position(key),
                    Some(index as u32),
                    "round {round}, key {key}"
                );
            }
        }
    }

    // covers: ORCH-3014
    #[test]
    fn a_lane_keeps_its_ends_at_live_keys_and_room_in_proportion() {
        let mut q = queue(10_000, FullPolicy::Reject);
        for key in 0..1000 {
            q.admit(key, Priority::Interactive, Share::UNIT);
        }
        let number = |q: &PoolQueue<u32>, key: u32| {
            q.entries.get(q.entries.find(&key).expect("queued")).order
        };
        // Holes at either end are stepped over at once: the ends stay at live
        // keys, so the first and the last are found without a walk.
        q.pop_next();
        q.remove(&1);
        assert_eq!(q.interactive.lines[0].lane.front, number(&q, 2));
        q.remove(&999);
        q.remove(&998);
        assert_eq!(q.interactive.lines[0].lane.back, number(&q, 997) + 1);
        // A renumbering leaves room for half the lane again at either end, so
        // it comes once per that many pushes (O(1) amortised).
        q.interactive.lines[0].lane.renumber(&mut q.entries);
        assert_eq!(q.interactive.lines[0].lane.front, 498);
        assert_eq!(q.interactive.lines[0].lane.at.len(), 996 + 2 * 498);
        assert_eq!(q.dispatch_order(), (2..998).collect::<Vec<_>>());
        // Long runs at the front alone, then at the back alone, each past the
        // room one numbering has.
        let mut q = queue(10_000, FullPolicy::Reject);
        for key in 0..200 {
            q.requeue_front(key, Priority::Interactive, Share::UNIT);
        }
        for key in 200..400 {
            q.restore(key, Priority::Interactive, Share::UNIT);
        }
        let expected: Vec<u32> = (0..200).rev().chain(200..400).collect();
        assert_eq!(q.dispatch_order(), expected);
        for (index, key) in expected.iter().enumerate() {
            assert_eq!(q.position(key), Some(index as u32));
        }
    }

    // covers: ORCH-3014, ORCH-3011
    #[test]
    fn a_dispatch_looks_only_as_far_as_the_first_task_that_may_start() {
        // One line for every key: the predicate is asked key by key.
        let mut q = PoolQueue::new(200_000, FullPolicy::Reject, 4).fifo_between_tenants();
        for k in 0..100_000u32 {
            let priority = if k % 4 == 0 {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            q.admit(k, priority, Share::UNIT);
        }
        let mut looked = 0;
        assert_eq!(
            q.pop_next_where(|_| {
                looked += 1;
                true
            }),
            Some(1)
        );
        assert_eq!(looked, 1, "the head may start: nothing else is looked at");
        // Tasks 2 and 3 wait on their tenant's quota: two skipped, then 5.
        looked = 0;
        assert_eq!(
            q.pop_next_where(|k| {
                looked += 1;
                ![2, 3].contains(k)
            }),
            Some(5)
        );
        assert_eq!(looked, 3);
        assert_eq!(q.position(&2), Some(0), "the skipped keep their places");
        let order = q.dispatch_order();
        let last = order.iter().position(|k| *k == 99_999).unwrap() as u32;
        assert_eq!(q.position(&99_999), Some(last));
    }

    /// Evict the least recently queued task of a full drop-lru queue by
    /// admitting `arrival`; the victim's key.
    fn lru_victim(q: &mut PoolQueue<u32>, arrival: u32, priority: Priority) -> u32 {
        let Admission::Admitted { evicted, .. } = q.admit(arrival, priority, Share::UNIT) else {
            panic!("drop-lru admits")
        };
        evicted.expect("a full queue evicts").key
    }

    // covers: ORCH-7002
    #[test]
    fn restored_tasks_keep_their_order_and_age_even_over_capacity() {
        let mut q = queue(2, FullPolicy::DropLru);
        q.restore(1, Priority::Interactive, Share::UNIT);
        q.restore(2, Priority::Batch, Share::UNIT);
        q.restore(3, Priority::Interactive, Share::UNIT);
        assert_eq!(
            q.len(),
            3,
            "a restored task was admitted before: capacity does not apply"
        );
        assert_eq!(q.dispatch_order(), vec![1, 3, 2]);
        // Restored in age order: the oldest goes first, whatever its lane.
        assert_eq!(lru_victim(&mut q, 4, Priority::Interactive), 1);
        assert_eq!(lru_victim(&mut q, 5, Priority::Interactive), 2);
    }

    // covers: ORCH-3005
    #[test]
    fn a_requeued_task_counts_as_queued_at_its_requeue() {
        let mut q = queue(2, FullPolicy::DropLru);
        q.admit(1, Priority::Interactive, Share::UNIT);
        q.requeue_front(2, Priority::Interactive, Share::UNIT);
        assert_eq!(
            q.dispatch_order(),
            vec![2, 1],
            "a retry goes to the head of its lane"
        );
        assert_eq!(lru_victim(&mut q, 3, Priority::Batch), 1);
        // 2 was requeued before 3 arrived: it is the older of the two.
        assert_eq!(lru_victim(&mut q, 4, Priority::Interactive), 2);
    }

    // covers: ORCH-3003
    #[test]
    fn a_streak_left_by_a_canceled_batch_task_does_not_invent_a_batch_turn() {
        let mut q = queue(10, FullPolicy::Reject);
        q.admit(100, Priority::Batch, Share::UNIT);
        for k in 0..3 {
            q.admit(k, Priority::Interactive, Share::UNIT);
        }
        assert_eq!(q.pop_next(), Some(0));
        assert_eq!(q.pop_next(), Some(1));
        // The batch task's turn is next, but it is canceled.
        assert!(q.remove(&100));
        assert_eq!(q.dispatch_order(), vec![2]);
        assert_eq!(q.position(&2), Some(0));
        assert_eq!(q.pop_next(), Some(2));
        assert!(!q.remove(&100));
    }

    // covers: ORCH-3007
    #[test]
    fn predicted_start_counts_completions_ahead() {
        assert_eq!(predicted_start_ms(0, 1, 4, 400.0), 0);
        assert_eq!(predicted_start_ms(0, 0, 4, 400.0), 100);
        assert_eq!(predicted_start_ms(7, 0, 4, 400.0), 800);
        // Free slots take the first positions: position 3 with 2 free waits for 2 ends.
        assert_eq!(predicted_start_ms(3, 2, 4, 400.0), 200);
        assert_eq!(predicted_start_ms(1, 2, 4, 400.0), 0);
        assert_eq!(backoff_hint(0), (50, 1));
        assert_eq!(backoff_hint(2_500), (2_500, 3));
    }

    // covers: ORCH-2003
    #[test]
    fn the_forecast_walks_each_busy_slot_through_its_cycles() {
        let forecast = ServiceForecast {
            remaining_ms: vec![300, 100],
            free_slots: 1,
            completion_interval_ms: 250.0,
        };
        // The free slot takes the first dispatch at once; then the running
        // tasks end in order, then every cycle of 2 × 250 ms after.
        let dispatches: Vec<u64> = (1..=6).map(|n| forecast.nth_dispatch_ms(n)).collect();
        assert_eq!(dispatches, vec![0, 100, 300, 600, 800, 1_100]);
        let three = ServiceForecast {
            remaining_ms: vec![50, 10, 30],
            free_slots: 0,
            completion_interval_ms: 100.0,
        };
        let dispatches: Vec<u64> = (1..=4).map(|n| three.nth_dispatch_ms(n)).collect();
        assert_eq!(
            dispatches,
            vec![10, 30, 50, 310],
            "slot by slot, then a cycle of 3 × 100 ms"
        );
        assert_eq!(forecast.wait_for_places_ms(3), 553);
        assert_eq!(forecast.wait_for_places_ms(6), 1_100 + 11 + 250);
        assert_eq!(
            forecast.wait_for_places_ms(0),
            250,
            "at least the first place"
        );
        assert_eq!(forecast.until_idle_ms(), 300);
        let idle = ServiceForecast {
            remaining_ms: vec![],
            free_slots: 0,
            completion_interval_ms: 40.5,
        };
        assert_eq!(idle.nth_dispatch_ms(2), 81);
        assert_eq!(idle.until_idle_ms(), 0);
        assert_eq!(hold_grace_ms(4_000), 1_400);
    }

    // covers: ORCH-3012
    #[test]
    fn only_reject_keeps_a_retry_line_and_it_is_bounded() {
        let mut q = queue(1, FullPolicy::DropLru);
        assert!(!q.hold(7, 100), "drop-lru makes room by evicting");
        assert_eq!(q.holds(), 0);
        let mut q = queue(1, FullPolicy::Reject).without_retry_line();
        assert!(!q.hold(7, 100), "the line is turned off");
        assert_eq!(q.places_needed(&8), 0);
        let mut q = queue(1, FullPolicy::Reject);
        q.admit(0, Priority::Interactive, Share::UNIT);
        for key in 1..=RETRY_LINE_MAX as u32 {
            assert!(q.hold(key, 100));
        }
        assert!(!q.hold(u32::MAX, 100), "the line is full");
        assert!(q.hold(1, 200), "a holder renews its own place");
        assert_eq!(q.places_needed(&1), 1);
        assert_eq!(q.places_needed(&2), 2);
        assert_eq!(q.places_needed(&u32::MAX), RETRY_LINE_MAX as u32 + 1);
        q.expire_holds(100);
        assert_eq!(q.holds(), 1, "only the renewed place is left");
    }
}
