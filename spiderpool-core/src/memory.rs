//! The in-memory allocation state: what tests, benchmarks and embedding programs use, and the
//! reference the property tests hold other implementations to.

use std::collections::hash_map::Entry as HashEntry;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use crate::range::{IpRange, IpVersion, address_value};
use crate::state::{AllocationState, Change, HeldAddress, Holder, OwnerKey};

/// Allocation state held in memory.
///
/// Memory grows with allocations, never with pool size: per pool, a hash map of held addresses,
/// a B-tree of maximal runs of held addresses (so the next unheld address is found in
/// O(log n) however full the pool is), one packed [`Holder`] per held address, and one owner
/// index for all pools.
///
/// ```
/// use spiderpool_core::{AllocationState, Change, Holder, InMemoryState, OwnerKey};
/// let mut state = InMemoryState::new();
/// let holder = Holder::new(&OwnerKey::Container("c1".into()), "eth0", None, "c1");
/// let address = "10.6.168.60".parse().unwrap();
/// state.apply(&[Change::Allocate { pool: "p".into(), address, holder: holder.clone() }]).unwrap();
/// assert_eq!(state.holder("p", address), Ok(Some(holder.clone())));
/// assert_eq!(state.first_unheld_from("p", address), Ok(Some("10.6.168.61".parse().unwrap())));
/// // Allocating a held address is a conflict, and changes nothing.
/// let again = state.apply(&[Change::Allocate { pool: "p".into(), address, holder }]);
/// assert!(again.is_err());
/// // In memory a query cannot fail (its error is `Infallible`), so `Ok` is the only pattern.
/// let Ok(allocated) = state.allocated_count("p");
/// assert_eq!(allocated, 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryState {
    ids: BTreeMap<String, u32>,
    pools: Vec<PoolLedger>,
    owners: OwnerIndex,
}

#[derive(Debug, Clone)]
struct PoolLedger {
    name: String,
    /// Fixed by the first allocation; a pool holds addresses of one family.
    version: Option<IpVersion>,
    held: HashMap<u128, Holder, BuildHasherDefault<AddressHasher>>,
    runs: Runs,
    cursor: Option<u128>,
}

/// A change could not be applied; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The address is already held.
    #[error("{address} in pool {pool} is already held by {holder}; reload the state and plan again")]
    AlreadyHeld {
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
        /// Its current holder.
        holder: Box<Holder>,
    },
    /// The address to release is not held by the holder named.
    #[error("{address} in pool {pool} is not held by {expected}; reload the state and plan again")]
    NotHeldBy {
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
        /// The holder the change names.
        expected: Box<Holder>,
    },
    /// The address is of the other family than the pool's allocations.
    #[error("{address} is not of the family of the addresses already held in pool {pool}")]
    WrongFamily {
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
    },
}

impl InMemoryState {
    /// An empty state.
    pub fn new() -> InMemoryState {
        InMemoryState::default()
    }

    fn ledger(&self, pool: &str) -> Option<&PoolLedger> {
        self.ids.get(pool).map(|&id| &self.pools[id as usize])
    }

    /// Whether `address` in `pool` is held (by `holder`, when given) in the stored state.
    fn stored_is_held(&self, pool: &str, address: IpAddr, holder: Option<&Holder>) -> bool {
        let Some(ledger) = self
            .ledger(pool)
            .filter(|l| l.version == Some(IpVersion::of(address)))
        else {
            return false;
        };
        match (ledger.held.get(&address_value(address)), holder) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(stored), Some(holder)) => stored == holder,
        }
    }

    /// Applies changes atomically: every change is checked against the state left by the ones
    /// before it, and if any fails, nothing is changed.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), ApplyError> {
        if let [change] = changes {
            // A single change is checked as it is applied.
            return self.apply_one(change);
        }
        self.check_batch(changes)?;
        for change in changes {
            self.apply_one(change)
                .expect("every change of a checked batch applies");
        }
        Ok(())
    }

    /// Checks every change of a batch against the stored state and the changes before it.
    fn check_batch(&self, changes: &[Change]) -> Result<(), ApplyError> {
        // The latest earlier change of the batch to an address decides its state. Plans are a
        // few changes long and scanned; bulk batches (a GC sweep) get an index.
        let indexed = changes.len() > 16;
        let mut latest: BTreeMap<(&str, IpAddr), &Change> = BTreeMap::new();
        let mut new_pools: Vec<(&str, IpVersion)> = Vec::new();
        for (index, change) in changes.iter().enumerate() {
            let (pool, address) = (change.pool(), change.address());
            let earlier = if indexed {
                latest.insert((pool, address), change)
            } else {
                changes[..index]
                    .iter()
                    .rev()
                    .find(|c| c.pool() == pool && c.address() == address)
            };
            // Whether the address is held (by `expected`, when given) after the earlier changes.
            let held_by = |expected: Option<&Holder>| match earlier {
                Some(earlier) => match (earlier.holder_after(), expected) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(holder), Some(expected)) => holder == expected,
                },
                None => self.stored_is_held(pool, address, expected),
            };
            match change.holder_before() {
                None => {
                    if held_by(None) {
                        let holder = match earlier.and_then(Change::holder_after) {
                            Some(holder) => holder.clone(),
                            None => {
                                let Ok(holder) = self.holder(pool, address);
                                holder.expect("a held address has a holder")
                            }
                        };
                        return Err(ApplyError::AlreadyHeld {
                            pool: pool.into(),
                            address,
                            holder: Box::new(holder),
                        });
                    }
                    // A pool's family is fixed by its first allocation, stored or in this batch.
                    let version = match self.ledger(pool).and_then(|l| l.version) {
                        Some(version) => version,
                        None => match new_pools.iter().find(|(name, _)| *name == pool) {
                            Some(&(_, version)) => version,
                            None => {
                                new_pools.push((pool, IpVersion::of(address)));
                                IpVersion::of(address)
                            }
                        },
                    };
                    if version != IpVersion::of(address) {
                        return Err(ApplyError::WrongFamily {
                            pool: pool.into(),
                            address,
                        });
                    }
                }
                Some(expected) => {
                    if !held_by(Some(expected)) {
                        return Err(ApplyError::NotHeldBy {
                            pool: pool.into(),
                            address,
                            expected: Box::new(expected.clone()),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies one change after checking it against the stored state.
    fn apply_one(&mut self, change: &Change) -> Result<(), ApplyError> {
        let (pool, address) = (change.pool(), change.address());
        let (version, value) = (IpVersion::of(address), address_value(address));
        match change {
            Change::Allocate { holder, .. } => {
                let id = self.ledger_for(pool, address)?;
                let ledger = &mut self.pools[id as usize];
                match ledger.held.entry(value) {
                    HashEntry::Occupied(current) => {
                        return Err(ApplyError::AlreadyHeld {
                            pool: pool.into(),
                            address,
                            holder: Box::new(current.get().clone()),
                        });
                    }
                    HashEntry::Vacant(slot) => {
                        slot.insert(holder.clone());
                    }
                }
                ledger.version = Some(version);
                ledger.runs.insert(value);
                ledger.cursor = Some(value);
                self.owners.insert(owner_hash(holder.owner_prefix()), id, value);
            }
            Change::Release { holder, .. } => {
                let not_held = || ApplyError::NotHeldBy {
                    pool: pool.into(),
                    address,
                    expected: Box::new(holder.clone()),
                };
                let Some(&id) = self.ids.get(pool) else {
                    return Err(not_held());
                };
                let ledger = &mut self.pools[id as usize];
                if ledger.version != Some(version) {
                    return Err(not_held());
                }
                match ledger.held.entry(value) {
                    HashEntry::Occupied(current) if current.get() == holder => {
                        current.remove();
                    }
                    _ => return Err(not_held()),
                }
                ledger.runs.remove(value);
                self.owners.remove(owner_hash(holder.owner_prefix()), id, value);
            }
            Change::Transfer { from, to, .. } => {
                let not_held = || ApplyError::NotHeldBy {
                    pool: pool.into(),
                    address,
                    expected: Box::new(from.clone()),
                };
                let Some(&id) = self.ids.get(pool) else {
                    return Err(not_held());
                };
                let ledger = &mut self.pools[id as usize];
                match ledger.held.get_mut(&value) {
                    Some(current) if current == from && ledger.version == Some(version) => {
                        *current = to.clone();
                    }
                    _ => return Err(not_held()),
                }
                if from.owner_prefix() != to.owner_prefix() {
                    self.owners.remove(owner_hash(from.owner_prefix()), id, value);
                    self.owners.insert(owner_hash(to.owner_prefix()), id, value);
                }
            }
        }
        Ok(())
    }

    /// Makes the next search of `pool` start after `address`, as a cursor stored elsewhere
    /// (a pool's `status.lastAllocatedIP`) says.
    ///
    /// ```
    /// use spiderpool_core::{AllocationState, InMemoryState};
    /// let mut state = InMemoryState::new();
    /// let last = "10.6.168.64".parse().unwrap();
    /// state.set_cursor("p", last).unwrap();
    /// assert_eq!(state.cursor("p"), Ok(Some(last)));
    /// ```
    pub fn set_cursor(&mut self, pool: &str, address: IpAddr) -> Result<(), ApplyError> {
        let id = self.ledger_for(pool, address)?;
        let ledger = &mut self.pools[id as usize];
        ledger.version = Some(IpVersion::of(address));
        ledger.cursor = Some(address_value(address));
        Ok(())
    }

    /// The ledger of `pool`, created when new, if `address` is of its family.
    fn ledger_for(&mut self, pool: &str, address: IpAddr) -> Result<u32, ApplyError> {
        let id = match self.ids.get(pool) {
            Some(&id) => id,
            None => self.add_ledger(pool),
        };
        if self.pools[id as usize]
            .version
            .is_some_and(|v| v != IpVersion::of(address))
        {
            return Err(ApplyError::WrongFamily {
                pool: pool.into(),
                address,
            });
        }
        Ok(id)
    }

    fn add_ledger(&mut self, pool: &str) -> u32 {
        let id = u32::try_from(self.pools.len()).expect("fewer than 2^32 pools");
        self.ids.insert(pool.to_owned(), id);
        self.pools.push(PoolLedger {
            name: pool.to_owned(),
            version: None,
            held: HashMap::default(),
            runs: Runs::default(),
            cursor: None,
        });
        id
    }
}

impl AllocationState for InMemoryState {
    type Error = Infallible;

    fn holder(&self, pool: &str, address: IpAddr) -> Result<Option<Holder>, Infallible> {
        let Some(ledger) = self.ledger(pool) else {
            return Ok(None);
        };
        if ledger.version != Some(IpVersion::of(address)) {
            return Ok(None);
        }
        Ok(ledger.held.get(&address_value(address)).cloned())
    }

    fn first_unheld_from(&self, pool: &str, from: IpAddr) -> Result<Option<IpAddr>, Infallible> {
        let version = IpVersion::of(from);
        let Some(ledger) = self.ledger(pool).filter(|l| l.version == Some(version)) else {
            return Ok(Some(from));
        };
        Ok(ledger
            .runs
            .first_unheld_from(address_value(from))
            .filter(|&value| value <= version.max_value())
            .map(|value| version.address(value)))
    }

    fn allocated_count(&self, pool: &str) -> Result<u64, Infallible> {
        Ok(self.ledger(pool).map_or(0, |ledger| ledger.held.len() as u64))
    }

    fn held_count_in(&self, pool: &str, range: IpRange) -> Result<u128, Infallible> {
        Ok(match self.ledger(pool) {
            Some(ledger) if ledger.version == Some(range.version()) => {
                let (start, end) = range.bounds();
                ledger.runs.count_in(start, end)
            }
            _ => 0,
        })
    }

    fn cursor(&self, pool: &str) -> Result<Option<IpAddr>, Infallible> {
        Ok(self
            .ledger(pool)
            .and_then(|ledger| Some(ledger.version?.address(ledger.cursor?))))
    }

    fn held_by(&self, owner: &OwnerKey) -> Result<Vec<HeldAddress>, Infallible> {
        let packed_owner = Holder::packed_owner(owner);
        let mut found: Vec<HeldAddress> = self
            .owners
            .get(owner_hash(&packed_owner))
            .filter_map(|(id, value)| {
                let ledger = &self.pools[id as usize];
                let holder = ledger.held.get(&value)?;
                // Hashes may collide: keep only this owner's records.
                let version = ledger.version?;
                (holder.owner_prefix() == packed_owner).then(|| HeldAddress {
                    pool: ledger.name.clone(),
                    address: version.address(value),
                    holder: holder.clone(),
                })
            })
            .collect();
        found.sort_by(|a, b| (&a.pool, a.address).cmp(&(&b.pool, b.address)));
        Ok(found)
    }

    fn held_by_container(&self, container_id: &str) -> Result<Vec<HeldAddress>, Infallible> {
        let mut found: Vec<HeldAddress> = self
            .pools
            .iter()
            .flat_map(|ledger| {
                ledger
                    .held
                    .iter()
                    .filter(move |(_, holder)| holder.container_id() == container_id)
                    .map(move |(&value, holder)| HeldAddress {
                        pool: ledger.name.clone(),
                        address: ledger
                            .version
                            .expect("a ledger with holders has a family")
                            .address(value),
                        holder: holder.clone(),
                    })
            })
            .collect();
        found.sort_by(|a, b| (&a.pool, a.address).cmp(&(&b.pool, b.address)));
        Ok(found)
    }

    fn allocations(&self, pool: &str) -> Result<Vec<(IpAddr, Holder)>, Infallible> {
        let Some(ledger) = self.ledger(pool) else {
            return Ok(Vec::new());
        };
        let Some(version) = ledger.version else {
            return Ok(Vec::new());
        };
        let mut allocations: Vec<(u128, &Holder)> = ledger
            .held
            .iter()
            .map(|(&value, holder)| (value, holder))
            .collect();
        allocations.sort_unstable_by_key(|&(value, _)| value);
        Ok(allocations
            .into_iter()
            .map(|(value, holder)| (version.address(value), holder.clone()))
            .collect())
    }
}

/// A deterministic hash of a packed owner (FxHash's mixing, 8 bytes a step); collisions are
/// resolved by comparing the stored holder.
fn owner_hash(packed_owner: &[u8]) -> u64 {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mix = |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    packed_owner
        .chunks(8)
        .fold(packed_owner.len() as u64, |hash, chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            mix(hash, u64::from_le_bytes(word))
        })
}

/// The addresses held under each owner hash, as (pool id, address). A hash map, so a change
/// costs one probe wherever the owner's key falls, not a walk down a tree.
#[derive(Debug, Clone, Default)]
struct OwnerIndex(HashMap<u64, Owned, BuildHasherDefault<PassThrough>>);

/// Most owners hold one address per hash; dual-stack and multi-interface owners a few more.
/// Addresses are big-endian bytes and the few are a boxed slice, which keeps an entry at 24
/// bytes (a u128 would align it to 48).
#[derive(Debug, Clone)]
enum Owned {
    One((u32, [u8; 16])),
    Many(Box<[(u32, [u8; 16])]>),
}

impl OwnerIndex {
    fn insert(&mut self, hash: u64, pool: u32, value: u128) {
        let entry = (pool, value.to_be_bytes());
        match self.0.entry(hash) {
            HashEntry::Vacant(slot) => {
                slot.insert(Owned::One(entry));
            }
            HashEntry::Occupied(mut slot) => match slot.get_mut() {
                Owned::One(first) => {
                    let first = *first;
                    slot.insert(Owned::Many(Box::new([first, entry])));
                }
                Owned::Many(entries) => {
                    let grown: Box<[_]> = entries.iter().copied().chain([entry]).collect();
                    *entries = grown;
                }
            },
        }
    }

    fn remove(&mut self, hash: u64, pool: u32, value: u128) {
        let entry = (pool, value.to_be_bytes());
        let HashEntry::Occupied(mut slot) = self.0.entry(hash) else {
            return;
        };
        match slot.get_mut() {
            Owned::One(only) if *only == entry => {
                slot.remove();
            }
            Owned::One(_) => {}
            Owned::Many(entries) => {
                let kept: Box<[_]> = entries.iter().copied().filter(|e| *e != entry).collect();
                match kept[..] {
                    [last] => {
                        slot.insert(Owned::One(last));
                    }
                    _ => *entries = kept,
                }
            }
        }
    }

    fn get(&self, hash: u64) -> impl Iterator<Item = (u32, u128)> + '_ {
        let entries: &[(u32, [u8; 16])] = match self.0.get(&hash) {
            None => &[],
            Some(Owned::One(only)) => std::slice::from_ref(only),
            Some(Owned::Many(entries)) => entries,
        };
        entries
            .iter()
            .map(|&(pool, address)| (pool, u128::from_be_bytes(address)))
    }
}

/// Spreads addresses over a hash map's buckets (murmur3's 64-bit finalizer over both halves):
/// fixed and deterministic, and every bit of the address reaches the low bits the map uses, so
/// addresses spaced by a power of two do not collide.
#[derive(Debug, Clone, Copy, Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = owner_hash(bytes);
    }

    fn write_u128(&mut self, value: u128) {
        let mut x = (value as u64) ^ ((value >> 64) as u64).rotate_left(29);
        x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        self.0 = x ^ (x >> 33);
    }
}

/// The owner index's keys are already mixed hashes: the map uses them as they are.
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = owner_hash(bytes);
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Maximal runs of consecutive held addresses: start to end, inclusive.
#[derive(Debug, Clone, Default)]
struct Runs(BTreeMap<u128, u128>);

impl Runs {
    /// The run holding `value`, if any.
    fn containing(&self, value: u128) -> Option<(u128, u128)> {
        self.0
            .range(..=value)
            .next_back()
            .filter(|&(_, &end)| end >= value)
            .map(|(&start, &end)| (start, end))
    }

    fn insert(&mut self, value: u128) {
        debug_assert!(self.containing(value).is_none());
        // One search finds both neighbours: the last run starting at or before value + 1,
        // and the run before it.
        let next = value.checked_add(1);
        let mut runs = self.0.range_mut(..=next.unwrap_or(value));
        let extends = |run: Option<(&u128, &mut u128)>, new_end: u128| match run {
            Some((_, end)) if end.checked_add(1) == Some(value) => {
                *end = new_end;
                true
            }
            _ => false,
        };
        match runs.next_back() {
            Some((&start, &mut end)) if Some(start) == next => {
                // A run starts right after `value`: absorb it.
                let extended = extends(runs.next_back(), end);
                self.0.remove(&start);
                if !extended {
                    self.0.insert(value, end);
                }
            }
            last => {
                if !extends(last, value) {
                    self.0.insert(value, value);
                }
            }
        }
    }

    fn remove(&mut self, value: u128) {
        let Some((&start, end)) = self.0.range_mut(..=value).next_back() else {
            return;
        };
        let old_end = *end;
        if old_end < value {
            return;
        }
        if start < value {
            *end = value - 1;
        } else {
            self.0.remove(&start);
        }
        if value < old_end {
            self.0.insert(value + 1, old_end);
        }
    }

    /// `value` if unheld, otherwise the address right after its run (`None` past `u128::MAX`).
    fn first_unheld_from(&self, value: u128) -> Option<u128> {
        match self.containing(value) {
            Some((_, end)) => end.checked_add(1),
            None => Some(value),
        }
    }

    fn count_in(&self, start: u128, end: u128) -> u128 {
        let first = self.containing(start).map_or(start, |(run_start, _)| run_start);
        self.0
            .range(first..=end)
            .map(|(&run_start, &run_end)| run_end.min(end) - run_start.max(start) + 1)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PodRef;

    fn holder(owner: OwnerKey, interface: &str) -> Holder {
        let pod = PodRef {
            namespace: "default".into(),
            name: "test-app-j9ftl".into(),
        };
        let container = "4bd8f0f1c0a3e2b5d6c7a8b9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9";
        Holder::new(&owner, interface, Some(&pod), container)
    }

    #[test]
    fn runs_merge_and_split() {
        let mut runs = Runs::default();
        for value in [5, 7, 6, 1, 2] {
            runs.insert(value);
        }
        assert_eq!(runs.0, BTreeMap::from([(1, 2), (5, 7)]));
        assert_eq!(runs.first_unheld_from(5), Some(8));
        assert_eq!(runs.first_unheld_from(3), Some(3));
        assert_eq!(runs.count_in(2, 6), 3);
        runs.remove(6);
        assert_eq!(runs.0, BTreeMap::from([(1, 2), (5, 5), (7, 7)]));
        runs.remove(1);
        runs.remove(5);
        assert_eq!(runs.0, BTreeMap::from([(2, 2), (7, 7)]));
        let mut top = Runs::default();
        top.insert(u128::MAX);
        assert_eq!(top.first_unheld_from(u128::MAX), None);
    }

    proptest::proptest! {
        #[test]
        fn runs_agree_with_a_plain_set(ops in proptest::collection::vec((proptest::bool::ANY, 0u128..40), 0..200)) {
            let mut runs = Runs::default();
            let mut held = std::collections::BTreeSet::new();
            for (insert, value) in ops {
                if insert && held.insert(value) {
                    runs.insert(value);
                } else if !insert && held.remove(&value) {
                    runs.remove(value);
                }
                // Runs are maximal: disjoint, non-adjacent, and exactly the held values.
                let mut covered = Vec::new();
                let mut previous_end: Option<u128> = None;
                for (&start, &end) in &runs.0 {
                    proptest::prop_assert!(start <= end);
                    proptest::prop_assert!(previous_end.is_none_or(|p| p + 1 < start));
                    previous_end = Some(end);
                    covered.extend(start..=end);
                }
                proptest::prop_assert_eq!(covered, held.iter().copied().collect::<Vec<_>>());
                for probe in 0..42 {
                    let expected = (probe..).find(|v| !held.contains(v));
                    proptest::prop_assert_eq!(runs.first_unheld_from(probe), expected);
                }
            }
        }
    }

    #[test]
    fn the_owner_index_keeps_every_address_under_its_hash() {
        let mut index = OwnerIndex::default();
        index.insert(7, 0, 10);
        index.insert(7, 1, 20);
        index.insert(7, 0, 11);
        index.insert(9, 0, 10);
        let mut under_seven: Vec<(u32, u128)> = index.get(7).collect();
        under_seven.sort();
        assert_eq!(under_seven, [(0, 10), (0, 11), (1, 20)]);
        index.remove(7, 1, 20);
        index.remove(7, 0, 10);
        assert_eq!(index.get(7).collect::<Vec<_>>(), [(0, 11)]);
        index.remove(7, 0, 99);
        index.remove(7, 0, 11);
        assert_eq!(index.get(7).count(), 0);
        assert_eq!(index.get(9).collect::<Vec<_>>(), [(0, 10)]);
        assert_eq!(index.0.len(), 1);
        // A bucket is the 8-byte key and a 32-byte entry.
        assert_eq!(std::mem::size_of::<(u64, Owned)>(), 32);
    }

    #[test]
    fn a_failed_batch_changes_nothing() {
        let mut state = InMemoryState::new();
        let a = holder(OwnerKey::Pod("a".into()), "eth0");
        let b = holder(OwnerKey::Pod("b".into()), "eth0");
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        state
            .apply(&[Change::Allocate {
                pool: "p".into(),
                address: x,
                holder: a.clone(),
            }])
            .unwrap();
        let err = state
            .apply(&[
                Change::Allocate {
                    pool: "p".into(),
                    address: y,
                    holder: b.clone(),
                },
                Change::Allocate {
                    pool: "p".into(),
                    address: x,
                    holder: b.clone(),
                },
            ])
            .unwrap_err();
        assert!(matches!(err, ApplyError::AlreadyHeld { .. }));
        assert_eq!(state.allocated_count("p"), Ok(1));
        assert_eq!(state.holder("p", y), Ok(None));
        let err = state
            .apply(&[Change::Release {
                pool: "p".into(),
                address: x,
                holder: b,
            }])
            .unwrap_err();
        assert!(matches!(err, ApplyError::NotHeldBy { .. }));
        let err = state
            .apply(&[Change::Allocate {
                pool: "p".into(),
                address: "fd00::1".parse().unwrap(),
                holder: a.clone(),
            }])
            .unwrap_err();
        assert!(matches!(err, ApplyError::WrongFamily { .. }));
        assert_eq!(state.held_by(&a.owner()).unwrap().len(), 1);
    }

    #[test]
    fn a_transfer_moves_a_record_held_by_its_source() {
        let mut state = InMemoryState::new();
        let old = holder(OwnerKey::Pod("a".into()), "eth0");
        let new = Holder::new(&OwnerKey::Pod("a".into()), "eth0", None, "sandbox-2");
        let stranger = holder(OwnerKey::Pod("b".into()), "eth0");
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let transfer = |from: &Holder, to: &Holder| Change::Transfer {
            pool: "p".into(),
            address: x,
            from: from.clone(),
            to: to.clone(),
        };
        assert!(matches!(
            state.apply(&[transfer(&old, &new)]),
            Err(ApplyError::NotHeldBy { .. })
        ));
        state
            .apply(&[Change::Allocate {
                pool: "p".into(),
                address: x,
                holder: old.clone(),
            }])
            .unwrap();
        assert!(matches!(
            state.apply(&[transfer(&stranger, &new)]),
            Err(ApplyError::NotHeldBy { .. })
        ));
        state.apply(&[transfer(&old, &new)]).unwrap();
        assert_eq!(state.holder("p", x), Ok(Some(new.clone())));
        assert_eq!(state.held_by(&OwnerKey::Pod("a".into())).unwrap().len(), 1);
        // In a batch, a release after a transfer names the new holder.
        let back = [
            transfer(&new, &stranger),
            Change::Release {
                pool: "p".into(),
                address: x,
                holder: stranger.clone(),
            },
        ];
        state.apply(&back).unwrap();
        assert_eq!(state.allocated_count("p"), Ok(0));
        assert!(state.held_by(&OwnerKey::Pod("a".into())).unwrap().is_empty());
    }

    #[test]
    fn a_bulk_batch_is_checked_against_itself() {
        let mut state = InMemoryState::new();
        let a = holder(OwnerKey::Pod("a".into()), "eth0");
        let address = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let allocate = |i| Change::Allocate {
            pool: "p".into(),
            address: address(i),
            holder: a.clone(),
        };
        let release = |i| Change::Release {
            pool: "p".into(),
            address: address(i),
            holder: a.clone(),
        };
        let mut batch: Vec<Change> = (0..20).map(allocate).collect();
        batch.push(allocate(3));
        assert!(matches!(state.apply(&batch), Err(ApplyError::AlreadyHeld { .. })));
        assert_eq!(state.allocated_count("p"), Ok(0));
        batch.pop();
        batch.extend([release(3), allocate(3), release(4)]);
        state.apply(&batch).unwrap();
        assert_eq!(state.allocated_count("p"), Ok(19));
        assert_eq!(state.first_unheld_from("p", address(0)), Ok(Some(address(4))));
    }

    #[test]
    fn the_top_of_the_family_is_never_passed() {
        let mut state = InMemoryState::new();
        let top: IpAddr = "255.255.255.255".parse().unwrap();
        let a = holder(OwnerKey::Pod("a".into()), "eth0");
        state
            .apply(&[Change::Allocate {
                pool: "p".into(),
                address: top,
                holder: a,
            }])
            .unwrap();
        assert_eq!(state.first_unheld_from("p", top), Ok(None));
    }
}
