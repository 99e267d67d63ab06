//! The in-memory allocation state: what tests, benchmarks and embedding programs use, and the
//! reference the property tests hold other implementations to.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use crate::range::{IpRange, IpVersion, to_u128};
use crate::state::{AllocationState, Change, HeldAddress, Holder, OwnerKey};

/// Allocation state held in memory.
///
/// Memory grows with allocations, never with pool size: per pool, a B-tree of held addresses,
/// a B-tree of maximal runs of held addresses (so the next unheld address is found in
/// O(log n) however full the pool is), and one owner index for all pools. Holders are stored
/// packed, UUIDs and hexadecimal container IDs in binary, under 90 bytes for a typical pod.
///
/// ```
/// use spiderpool_core::{AllocationState, Change, Holder, InMemoryState, OwnerKey};
/// let mut state = InMemoryState::new();
/// let holder = Holder {
///     owner: OwnerKey::Container("c1".into()),
///     interface: "eth0".into(),
///     pod: None,
///     container_id: "c1".into(),
/// };
/// let address = "10.6.168.60".parse().unwrap();
/// state.apply(&[Change::Allocate { pool: "p".into(), address, holder: holder.clone() }]).unwrap();
/// assert_eq!(state.holder("p", address), Some(holder.clone()));
/// assert_eq!(state.first_unheld_from("p", address), Some("10.6.168.61".parse().unwrap()));
/// // Allocating a held address is a conflict, and changes nothing.
/// let again = state.apply(&[Change::Allocate { pool: "p".into(), address, holder }]);
/// assert!(again.is_err());
/// assert_eq!(state.allocated_count("p"), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryState {
    ids: BTreeMap<String, u32>,
    pools: Vec<PoolLedger>,
    /// (hash of the owner key, pool id, address): finds an owner's addresses in O(log n).
    owners: BTreeSet<(u64, u32, u128)>,
}

#[derive(Debug, Clone)]
struct PoolLedger {
    name: String,
    /// Fixed by the first allocation; a pool holds addresses of one family.
    version: Option<IpVersion>,
    held: BTreeMap<u128, PackedHolder>,
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

    fn owner_hash(owner: &OwnerKey) -> u64 {
        // DefaultHasher::new() has fixed keys: deterministic, no randomness in the core.
        let mut hasher = DefaultHasher::new();
        owner.hash(&mut hasher);
        hasher.finish()
    }

    /// Whether `address` in `pool` is held (by `holder`, when given) in the stored state.
    fn stored_is_held(&self, pool: &str, address: IpAddr, holder: Option<&Holder>) -> bool {
        let Some(ledger) = self
            .ledger(pool)
            .filter(|l| l.version == Some(IpVersion::of(address)))
        else {
            return false;
        };
        match (ledger.held.get(&to_u128(address)), holder) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(packed), Some(holder)) => packed.is(holder),
        }
    }

    /// Applies changes atomically: every change is checked against the state left by the ones
    /// before it, and if any fails, nothing is changed.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), ApplyError> {
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
            match change {
                Change::Allocate { .. } => {
                    let held = match earlier {
                        Some(Change::Allocate { holder, .. }) => Some(holder.clone()),
                        Some(Change::Release { .. }) => None,
                        None if self.stored_is_held(pool, address, None) => self.holder(pool, address),
                        None => None,
                    };
                    if let Some(holder) = held {
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
                Change::Release { holder, .. } => {
                    let held_by_holder = match earlier {
                        Some(Change::Allocate {
                            holder: earlier_holder,
                            ..
                        }) => earlier_holder == holder,
                        Some(Change::Release { .. }) => false,
                        None => self.stored_is_held(pool, address, Some(holder)),
                    };
                    if !held_by_holder {
                        return Err(ApplyError::NotHeldBy {
                            pool: pool.into(),
                            address,
                            expected: Box::new(holder.clone()),
                        });
                    }
                }
            }
        }
        for change in changes {
            match change {
                Change::Allocate {
                    pool,
                    address,
                    holder,
                } => self.insert(pool, *address, holder),
                Change::Release {
                    pool,
                    address,
                    holder,
                } => self.remove(pool, *address, &holder.owner),
            }
        }
        Ok(())
    }

    fn insert(&mut self, pool: &str, address: IpAddr, holder: &Holder) {
        let id = match self.ids.get(pool) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.pools.len()).expect("fewer than 2^32 pools");
                self.ids.insert(pool.to_owned(), id);
                self.pools.push(PoolLedger {
                    name: pool.to_owned(),
                    version: None,
                    held: BTreeMap::new(),
                    runs: Runs::default(),
                    cursor: None,
                });
                id
            }
        };
        let value = to_u128(address);
        let ledger = &mut self.pools[id as usize];
        ledger.version = Some(IpVersion::of(address));
        ledger.held.insert(value, PackedHolder::pack(holder));
        ledger.runs.insert(value);
        ledger.cursor = Some(value);
        self.owners.insert((Self::owner_hash(&holder.owner), id, value));
    }

    fn remove(&mut self, pool: &str, address: IpAddr, owner: &OwnerKey) {
        let id = self.ids[pool];
        let value = to_u128(address);
        let ledger = &mut self.pools[id as usize];
        ledger.held.remove(&value);
        ledger.runs.remove(value);
        self.owners.remove(&(Self::owner_hash(owner), id, value));
    }
}

impl AllocationState for InMemoryState {
    fn holder(&self, pool: &str, address: IpAddr) -> Option<Holder> {
        let ledger = self.ledger(pool)?;
        if ledger.version != Some(IpVersion::of(address)) {
            return None;
        }
        ledger.held.get(&to_u128(address)).map(PackedHolder::unpack)
    }

    fn first_unheld_from(&self, pool: &str, from: IpAddr) -> Option<IpAddr> {
        let version = IpVersion::of(from);
        let Some(ledger) = self.ledger(pool).filter(|l| l.version == Some(version)) else {
            return Some(from);
        };
        ledger
            .runs
            .first_unheld_from(to_u128(from))
            .filter(|&value| value <= version.max_value())
            .map(|value| version.address(value))
    }

    fn allocated_count(&self, pool: &str) -> u64 {
        self.ledger(pool).map_or(0, |ledger| ledger.held.len() as u64)
    }

    fn held_count_in(&self, pool: &str, range: IpRange) -> u128 {
        match self.ledger(pool) {
            Some(ledger) if ledger.version == Some(range.version()) => {
                let (start, end) = range.bounds();
                ledger.runs.count_in(start, end)
            }
            _ => 0,
        }
    }

    fn cursor(&self, pool: &str) -> Option<IpAddr> {
        let ledger = self.ledger(pool)?;
        Some(ledger.version?.address(ledger.cursor?))
    }

    fn held_by(&self, owner: &OwnerKey) -> Vec<HeldAddress> {
        let hash = Self::owner_hash(owner);
        let mut found: Vec<HeldAddress> = self
            .owners
            .range((hash, 0, 0)..=(hash, u32::MAX, u128::MAX))
            .filter_map(|&(_, id, value)| {
                let ledger = &self.pools[id as usize];
                let packed = ledger.held.get(&value)?;
                // Hashes may collide: keep only this owner's records.
                let holder = packed.unpack();
                let version = ledger.version?;
                (holder.owner == *owner).then(|| HeldAddress {
                    pool: ledger.name.clone(),
                    address: version.address(value),
                    holder,
                })
            })
            .collect();
        found.sort_by(|a, b| (&a.pool, a.address).cmp(&(&b.pool, b.address)));
        found
    }

    fn allocations(&self, pool: &str) -> Vec<(IpAddr, Holder)> {
        let Some(ledger) = self.ledger(pool) else {
            return Vec::new();
        };
        let Some(version) = ledger.version else {
            return Vec::new();
        };
        ledger
            .held
            .iter()
            .map(|(&value, packed)| (version.address(value), packed.unpack()))
            .collect()
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
        let before = value.checked_sub(1).and_then(|prev| self.containing(prev));
        let after = value
            .checked_add(1)
            .and_then(|next| self.0.get(&next).map(|&end| (next, end)));
        match (before, after) {
            (Some((start, _)), Some((next, end))) => {
                self.0.remove(&next);
                self.0.insert(start, end);
            }
            (Some((start, _)), None) => {
                self.0.insert(start, value);
            }
            (None, Some((next, end))) => {
                self.0.remove(&next);
                self.0.insert(value, end);
            }
            (None, None) => {
                self.0.insert(value, value);
            }
        }
    }

    fn remove(&mut self, value: u128) {
        let Some((start, end)) = self.containing(value) else {
            return;
        };
        if start < value {
            self.0.insert(start, value - 1);
        } else {
            self.0.remove(&start);
        }
        if value < end {
            self.0.insert(value + 1, end);
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

/// A [`Holder`] in one allocation: a kind byte, then each text field tagged with its encoding.
/// Canonical UUIDs take 16 bytes and even-length lower-case hex half its length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PackedHolder(Box<[u8]>);

const TAG_ABSENT: u8 = 0;
const TAG_TEXT: u8 = 1;
const TAG_UUID: u8 = 2;
const TAG_HEX: u8 = 3;

impl PackedHolder {
    fn pack(holder: &Holder) -> PackedHolder {
        let mut bytes = Vec::with_capacity(96);
        encode(holder, &mut bytes);
        PackedHolder(bytes.into_boxed_slice())
    }

    /// Whether this is `holder` packed, without allocating.
    fn is(&self, holder: &Holder) -> bool {
        let mut comparer = Comparer {
            expected: &self.0,
            position: 0,
            equal: true,
        };
        encode(holder, &mut comparer);
        comparer.equal && comparer.position == self.0.len()
    }

    fn unpack(&self) -> Holder {
        let mut reader = Reader(&self.0[1..]);
        let id = reader.text().unwrap_or_default();
        let owner = if self.0[0] == 0 {
            OwnerKey::Pod(id)
        } else {
            OwnerKey::Container(id)
        };
        let interface = reader.text().unwrap_or_default();
        let pod = reader.text().map(|namespace| crate::state::PodRef {
            namespace,
            name: reader.text().unwrap_or_default(),
        });
        let container_id = reader.text().unwrap_or_default();
        Holder {
            owner,
            interface,
            pod,
            container_id,
        }
    }
}

fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        })
}

fn is_lower_hex(text: &str) -> bool {
    !text.is_empty()
        && text.len().is_multiple_of(2)
        && text.len() <= 2 * usize::from(u16::MAX)
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Pairs of lower-case hex digits as bytes.
fn hex_bytes(mut digits: impl Iterator<Item = u8>) -> impl Iterator<Item = u8> {
    let value = |b: u8| {
        if b.is_ascii_digit() {
            b - b'0'
        } else {
            b - b'a' + 10
        }
    };
    std::iter::from_fn(move || Some(value(digits.next()?) << 4 | value(digits.next()?)))
}

/// Where an encoding goes: a buffer, or a comparison with an existing encoding.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Comparer<'a> {
    expected: &'a [u8],
    position: usize,
    equal: bool,
}

impl Sink for Comparer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.position + bytes.len();
        self.equal = self.equal && self.expected.get(self.position..end) == Some(bytes);
        self.position = end;
    }
}

fn encode(holder: &Holder, out: &mut impl Sink) {
    let (kind, id) = match &holder.owner {
        OwnerKey::Pod(uid) => (0u8, uid),
        OwnerKey::Container(id) => (1u8, id),
    };
    out.put(&[kind]);
    put_text(out, id);
    put_text(out, &holder.interface);
    match &holder.pod {
        Some(pod) => {
            put_text(out, &pod.namespace);
            put_text(out, &pod.name);
        }
        None => out.put(&[TAG_ABSENT]),
    }
    put_text(out, &holder.container_id);
}

fn put_text(out: &mut impl Sink, text: &str) {
    if is_uuid(text) {
        out.put(&[TAG_UUID]);
        for byte in hex_bytes(text.bytes().filter(|&b| b != b'-')) {
            out.put(&[byte]);
        }
    } else if is_lower_hex(text) {
        out.put(&[TAG_HEX]);
        out.put(&((text.len() / 2) as u16).to_le_bytes());
        for byte in hex_bytes(text.bytes()) {
            out.put(&[byte]);
        }
    } else {
        // Kubernetes names, interface names and container IDs are far below 64 KiB.
        let length = u16::try_from(text.len()).expect("holder fields are shorter than 64 KiB");
        out.put(&[TAG_TEXT]);
        out.put(&length.to_le_bytes());
        out.put(text.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, count: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(count);
        self.0 = rest;
        head
    }

    fn length(&mut self) -> usize {
        let bytes = self.take(2);
        usize::from(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn text(&mut self) -> Option<String> {
        let tag = self.take(1)[0];
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match tag {
            TAG_ABSENT => None,
            TAG_TEXT => {
                let length = self.length();
                Some(String::from_utf8_lossy(self.take(length)).into_owned())
            }
            TAG_UUID => {
                let digits = hex(self.take(16));
                Some(format!(
                    "{}-{}-{}-{}-{}",
                    &digits[..8],
                    &digits[8..12],
                    &digits[12..16],
                    &digits[16..20],
                    &digits[20..]
                ))
            }
            _ => {
                let length = self.length();
                Some(hex(self.take(length)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PodRef;

    fn holder(owner: OwnerKey, interface: &str) -> Holder {
        Holder {
            owner,
            interface: interface.into(),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "test-app-j9ftl".into(),
            }),
            container_id: "4bd8f0f1c0a3e2b5d6c7a8b9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9".into(),
        }
    }

    #[test]
    fn holders_pack_and_unpack_losslessly() {
        let cases = [
            holder(
                OwnerKey::Pod("6f1c2e44-6a1b-4c0e-9d7e-2f5a8b3c1d00".into()),
                "eth0",
            ),
            holder(OwnerKey::Container("Not-Hex_ID".into()), "net1"),
            Holder {
                owner: OwnerKey::Container("abc".into()),
                interface: String::new(),
                pod: None,
                container_id: "ABCDEF".into(),
            },
            holder(
                OwnerKey::Pod("6F1C2E44-6A1B-4C0E-9D7E-2F5A8B3C1D00".into()),
                "eth0",
            ),
        ];
        for (index, case) in cases.iter().enumerate() {
            let packed = PackedHolder::pack(case);
            assert_eq!(&packed.unpack(), case);
            assert!(packed.is(case));
            let others = cases.iter().enumerate().filter(|(other, _)| *other != index);
            assert!(others.clone().all(|(_, other)| !packed.is(other)), "{case:?}");
            let mut longer = case.clone();
            longer.container_id.push('0');
            assert!(!packed.is(&longer));
        }
        let typical = PackedHolder::pack(&holder(
            OwnerKey::Pod("6f1c2e44-6a1b-4c0e-9d7e-2f5a8b3c1d00".into()),
            "eth0",
        ));
        assert!(typical.0.len() <= 90, "{} bytes", typical.0.len());
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
        assert_eq!(state.allocated_count("p"), 1);
        assert_eq!(state.holder("p", y), None);
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
        assert_eq!(state.held_by(&a.owner).len(), 1);
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
        assert_eq!(state.allocated_count("p"), 0);
        batch.pop();
        batch.extend([release(3), allocate(3), release(4)]);
        state.apply(&batch).unwrap();
        assert_eq!(state.allocated_count("p"), 19);
        assert_eq!(state.first_unheld_from("p", address(0)), Some(address(4)));
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
        assert_eq!(state.first_unheld_from("p", top), None);
    }
}
