//! Address blocks: in a cluster a pool's addresses are divided into aligned blocks (a `/26`
//! by default, `spec.blockSize`), each its own API object holding the records of its
//! addresses and the node it is affine to, so that a node writes its own blocks and the
//! writes of a zone's nodes no longer meet on one pool object.
//!
//! The rules, decided here and carried out by the round ([`crate::round`]):
//!
//! - **A node allocates from its own blocks**, each searched after its own cursor
//!   (`lastAllocatedIP`), so a just-released address is not handed out again at once.
//! - **When they are full it claims an unclaimed block** with a free address: it creates the
//!   block's object, and a create fails when another node made it first. A pool's first claim
//!   takes its lowest block; later ones pick among the unclaimed blocks by a hash of the
//!   node's name and the pool's fill, so that a zone's nodes claiming at once do not race
//!   for one block, and two that did are unlikely to race again.
//! - **When no block is unclaimed it borrows**: it allocates from another node's block, a
//!   compare-and-swap on that block, so that a pool fills to its last address. The other
//!   node keeps the block. Lenders are picked among the blocks with room like claims.
//! - Which block an address is in is arithmetic ([`block_range`]); a block's object is named
//!   after its pool and range ([`block_name`]), so two nodes claiming one block write one
//!   object.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::allocate::next_free_within;
use crate::pool::Pool;
use crate::range::{IpSet, IpVersion, address_value};
use crate::state::{AllocationState, Change, Holder};
use crate::status::{
    AllocatedIpsError, AllocationRecord, allocated_ips_text, allocation_record, parse_allocated_ips,
    record_allocation,
};

/// The spec of a `SpiderIPBlock`: a block of a pool, its node, and the records of its
/// addresses in the format of a pool's `status.allocatedIPs` (JSON text, as Spiderpool writes
/// it: the API server then checks and tracks one string instead of a field per record, which
/// makes a block's write about three times cheaper at 64 records; decision 0011).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct BlockSpec {
    /// The pool the block belongs to.
    pub pool: String,
    /// The pool's UID: a block of an earlier pool of the same name is stale, and reclaimed.
    #[serde(default, rename = "poolUID", skip_serializing_if = "String::is_empty")]
    pub pool_uid: String,
    /// The block's range, in CIDR form (`10.6.168.0/26`).
    pub cidr: String,
    /// The node the block is affine to: the one that claimed it.
    #[serde(default)]
    pub node: String,
    /// JSON text of address to the record of its holder (`{"10.6.168.65":{"pod":...}}`);
    /// absent when the block holds nothing.
    #[serde(default, rename = "allocatedIPs", skip_serializing_if = "Option::is_none")]
    pub allocated_ips: Option<String>,
    /// Number of addresses allocated.
    #[serde(default, rename = "allocatedIPCount")]
    pub allocated_ip_count: i64,
    /// The address most recently allocated in the block: the next allocation searches after it.
    #[serde(default, rename = "lastAllocatedIP", skip_serializing_if = "Option::is_none")]
    pub last_allocated_ip: Option<String>,
}

impl BlockSpec {
    /// The records `allocatedIPs` holds, by address.
    ///
    /// ```
    /// use spiderpool_core::BlockSpec;
    /// let spec = BlockSpec {
    ///     allocated_ips: Some(r#"{"10.6.168.65":{"pod":"default/web-0","podUid":"u1"}}"#.into()),
    ///     ..BlockSpec::default()
    /// };
    /// assert_eq!(spec.records().unwrap()[&"10.6.168.65".parse().unwrap()].pod, "default/web-0");
    /// ```
    pub fn records(&self) -> Result<BTreeMap<IpAddr, AllocationRecord>, AllocatedIpsError> {
        match self.allocated_ips.as_deref() {
            Some(text) => parse_allocated_ips(text),
            None => Ok(BTreeMap::new()),
        }
    }
}

/// The inclusive values of the block of prefix length `prefix` that holds `value`.
///
/// ```
/// use spiderpool_core::{IpVersion, address_value, block_range};
/// let value = address_value("10.6.168.70".parse().unwrap());
/// let (low, high) = block_range(IpVersion::V4, value, 26);
/// assert_eq!(IpVersion::V4.address_at(low).unwrap().to_string(), "10.6.168.64");
/// assert_eq!(IpVersion::V4.address_at(high).unwrap().to_string(), "10.6.168.127");
/// ```
pub fn block_range(version: IpVersion, value: u128, prefix: u8) -> (u128, u128) {
    let host_bits = version.bits().saturating_sub(u32::from(prefix));
    let mask = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (value & !mask, (value & !mask) | mask)
}

/// The name of the object of a pool's block starting at `start`: the pool's name, the
/// address with its separators as dashes, and the prefix length (`test-ippool-6-10-6-168-0-26`).
/// Names longer than Kubernetes allows keep a prefix of the pool's name and a hash of it.
///
/// ```
/// use spiderpool_core::block_name;
/// assert_eq!(block_name("test-ippool-6", "10.6.168.0".parse().unwrap(), 26), "test-ippool-6-10-6-168-0-26");
/// assert_eq!(block_name("v6", "fd00::40".parse().unwrap(), 122), "v6-fd00-0-0-0-0-0-0-40-122");
/// ```
pub fn block_name(pool: &str, start: IpAddr, prefix: u8) -> String {
    let address = match start {
        IpAddr::V4(v4) => v4.octets().map(|octet| octet.to_string()).join("-"),
        IpAddr::V6(v6) => v6.segments().map(|segment| format!("{segment:x}")).join("-"),
    };
    let suffix = format!("-{address}-{prefix}");
    const MAX: usize = 253;
    if pool.len() + suffix.len() <= MAX {
        return format!("{pool}{suffix}");
    }
    let hash = fnv1a(pool.as_bytes());
    let mut keep = MAX - suffix.len() - 17;
    while !pool.is_char_boundary(keep) {
        keep -= 1;
    }
    let head = pool[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{hash:016x}{suffix}")
}

/// FNV-1a: stable across builds and platforms, which a name and a claim order must be.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where a search of `len` blocks keyed by `key` starts: its hash, so that searches with
/// other keys start apart (0 when there is nothing to search).
fn spread(key: &str, len: usize) -> usize {
    match len {
        0 => 0,
        len => (fnv1a(key.as_bytes()) % len as u64) as usize,
    }
}

/// The name of the block of `pool` that holds `address`.
pub fn block_of(pool: &Pool, address: IpAddr) -> String {
    let (low, _) = block_range(pool.version(), address_value(address), pool.block_prefix());
    block_name(pool.name(), pool.version().address(low), pool.block_prefix())
}

/// A block as read from its object: checked, with the version a write presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The object's name.
    pub name: String,
    /// Its `resourceVersion`.
    pub version: String,
    /// The pool.
    pub pool: String,
    /// The UID of the pool it was written for.
    pub pool_uid: String,
    /// The first address's value.
    pub low: u128,
    /// The last address's value.
    pub high: u128,
    /// The family.
    pub family: IpVersion,
    /// The prefix length.
    pub prefix: u8,
    /// The node it is affine to.
    pub node: String,
    /// The allocations its records stand for.
    pub allocations: Vec<Change>,
    /// The value of `lastAllocatedIP`.
    pub cursor: Option<u128>,
    /// The spec as read, so that a write that would change nothing is not made.
    pub spec: BlockSpec,
}

/// A block's object cannot be read as allocation records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SpiderIPBlock {block}: {problem}; the block was not written by spiderpool or was edited")]
pub struct BlockStateError {
    /// The object's name.
    pub block: String,
    /// What is wrong, naming the field.
    pub problem: String,
}

impl Block {
    /// Reads the object `name` at `version` with `spec`, checking that its name is its pool's
    /// and range's, and that every record lies in its range.
    ///
    /// ```
    /// use spiderpool_core::{Block, BlockSpec};
    /// let spec = BlockSpec { pool: "p".into(), cidr: "10.6.168.0/26".into(), node: "n1".into(), ..Default::default() };
    /// let block = Block::read("p-10-6-168-0-26", "7".into(), spec.clone()).unwrap();
    /// assert_eq!(block.node, "n1");
    /// let err = Block::read("p-10-6-168-64-26", "7".into(), spec).unwrap_err();
    /// assert!(err.to_string().contains("metadata.name"));
    /// ```
    pub fn read(name: &str, version: String, spec: BlockSpec) -> Result<Block, BlockStateError> {
        let bad = |problem: String| BlockStateError {
            block: name.to_owned(),
            problem,
        };
        let subnet: crate::Subnet = spec
            .cidr
            .parse()
            .map_err(|err| bad(format!("spec.cidr: {err}")))?;
        let family = subnet.version();
        let prefix = subnet.prefix_len();
        let expected = block_name(&spec.pool, subnet.network(), prefix);
        if name != expected {
            return Err(bad(format!(
                "metadata.name: a block of pool {} at {} is named {expected}",
                spec.pool, spec.cidr
            )));
        }
        let (low, high) = block_range(family, address_value(subnet.network()), prefix);
        let within = |address: IpAddr| {
            IpVersion::of(address) == family && (low..=high).contains(&address_value(address))
        };
        let records = spec
            .records()
            .map_err(|err| bad(format!("spec.allocatedIPs: {err}")))?;
        let mut allocations = Vec::with_capacity(records.len());
        for (address, record) in &records {
            if !within(*address) {
                return Err(bad(format!(
                    "spec.allocatedIPs: {address} is outside {}",
                    spec.cidr
                )));
            }
            allocations.push(
                record_allocation(&spec.pool, *address, record)
                    .map_err(|problem| bad(format!("spec.allocatedIPs: {problem}")))?,
            );
        }
        let cursor = match spec.last_allocated_ip.as_deref() {
            None => None,
            Some(text) => match text.parse::<IpAddr>() {
                Ok(address) if within(address) => Some(address_value(address)),
                _ => {
                    return Err(bad(format!(
                        "spec.lastAllocatedIP: {text:?} is not an address of {}; remove it",
                        spec.cidr
                    )));
                }
            },
        };
        Ok(Block {
            name: name.to_owned(),
            version,
            pool: spec.pool.clone(),
            pool_uid: spec.pool_uid.clone(),
            low,
            high,
            family,
            prefix,
            node: spec.node.clone(),
            allocations,
            cursor,
            spec,
        })
    }
}

/// The spec of a block of `pool` affine to `node`, holding `records` (address and holder, in
/// the block's range) with `cursor`.
pub(crate) fn block_spec<'a>(
    (pool, pool_uid): (&str, &str),
    family: IpVersion,
    (low, prefix): (u128, u8),
    node: &str,
    records: impl IntoIterator<Item = (IpAddr, &'a Holder)>,
    cursor: Option<u128>,
) -> BlockSpec {
    let allocated_ips: BTreeMap<String, AllocationRecord> = records
        .into_iter()
        .map(|(address, holder)| (address.to_string(), allocation_record(holder)))
        .collect();
    BlockSpec {
        pool: pool.to_owned(),
        pool_uid: pool_uid.to_owned(),
        cidr: format!("{}/{prefix}", family.address(low)),
        node: node.to_owned(),
        allocated_ip_count: i64::try_from(allocated_ips.len()).unwrap_or(i64::MAX),
        allocated_ips: allocated_ips_text(&allocated_ips),
        last_allocated_ip: cursor.map(|value| family.address(value).to_string()),
    }
}

/// One block of a pool as listed: its name, node and how many addresses it holds, without
/// its records (what a list of the objects' metadata tells).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedBlock {
    /// The object's name.
    pub name: String,
    /// The block's first address.
    pub start: IpAddr,
    /// The node it is affine to.
    pub node: String,
    /// Addresses allocated in it.
    pub allocated: u64,
    /// The UID of the pool it was written for.
    pub pool_uid: String,
}

/// What a round knows of one block.
#[derive(Debug, Clone)]
pub(crate) struct BlockEntry {
    pub(crate) name: String,
    pub(crate) node: String,
    /// Whether its records are in the round's state.
    pub(crate) read: bool,
    pub(crate) cursor: Option<u128>,
    pub(crate) allocated: u64,
}

/// What a round knows of one pool's blocks.
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolBlocks {
    /// Whether every block of the pool is known (listed), so that one not known is unclaimed.
    pub(crate) listed: bool,
    pub(crate) blocks: BTreeMap<u128, BlockEntry>,
}

/// What a round must read before the blocks can answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BlockNeeds {
    /// Pools whose blocks must be listed.
    pub(crate) index: BTreeSet<String>,
    /// Blocks whose records must be read.
    pub(crate) blocks: BTreeSet<String>,
}

/// The most blocks of other nodes a round reads at once when it must borrow.
const BORROW_READS: usize = 8;

/// The blocks of the pools a round allocates from, as far as it read them, and what it
/// still needs to read to decide.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockView {
    pub(crate) pools: BTreeMap<String, PoolBlocks>,
    pub(crate) needs: RefCell<BlockNeeds>,
}

impl BlockView {
    /// Whether allocations from `pool` go to blocks.
    pub(crate) fn manages(&self, pool: &str) -> bool {
        self.pools.contains_key(pool)
    }

    /// Addresses allocated in `pool`, when every block of it is known.
    pub(crate) fn allocated(&self, pool: &str) -> Option<u64> {
        let blocks = self.pools.get(pool).filter(|blocks| blocks.listed)?;
        Some(blocks.blocks.values().map(|entry| entry.allocated).sum())
    }

    /// The address an allocation on `node` gets from `pool`: in the node's blocks, else in
    /// an unclaimed block, else in another node's block. `None` when the pool is
    /// full, or when the round must read more first (recorded in [`BlockView::needs`]).
    pub(crate) fn next_free<S: AllocationState + ?Sized>(
        &self,
        state: &S,
        pool: &Pool,
        node: &str,
        pending: &[Change],
    ) -> Result<Option<IpAddr>, S::Error> {
        let Some(known) = self.pools.get(pool.name()) else {
            return Ok(None);
        };
        let (version, prefix) = (pool.version(), pool.block_prefix());
        let search = |start: u128, cursor: Option<u128>| {
            next_free_within(state, pool, pending, block_range(version, start, prefix), cursor)
        };
        for (&start, entry) in &known.blocks {
            if entry.node == node
                && entry.read
                && let Some(address) = search(start, entry.cursor)?
            {
                return Ok(Some(address));
            }
        }
        if !known.listed {
            self.needs.borrow_mut().index.insert(pool.name().to_owned());
            return Ok(None);
        }
        // A claim or a borrow picks among the blocks that can serve it (unclaimed ones, then
        // other nodes' with room) from where the node's name and the pool's fill hash to:
        // nodes searching at once start apart, and two that met on one block (one of them
        // then refused) see another fill next time and are unlikely to meet again. Walking on
        // from a fixed hash instead sends most of them to the block after the longest run of
        // taken ones. The first claim of a pool takes its lowest block, so that its first
        // address goes first, as without blocks.
        let fill: u64 = known.blocks.values().map(|entry| entry.allocated).sum();
        let pick = |len: usize| spread(&format!("{node}/{fill}"), len);
        let unclaimed: Vec<u128> = block_starts(pool.allocatable(), prefix)
            .filter(|start| !known.blocks.contains_key(start))
            .collect();
        let offset = if known.blocks.is_empty() {
            0
        } else {
            pick(unclaimed.len())
        };
        for &start in unclaimed[offset..].iter().chain(&unclaimed[..offset]) {
            if let Some(address) = search(start, None)? {
                return Ok(Some(address));
            }
        }
        let lenders: Vec<(u128, &BlockEntry)> = known
            .blocks
            .iter()
            .filter(|(_, entry)| !(entry.node == node && entry.read))
            .filter(|&(&start, entry)| {
                u128::from(entry.allocated)
                    < count_within(pool.allocatable(), block_range(version, start, prefix))
            })
            .map(|(&start, entry)| (start, entry))
            .collect();
        let offset = pick(lenders.len());
        let mut wanted = Vec::new();
        for &(start, entry) in lenders[offset..].iter().chain(&lenders[..offset]) {
            if entry.read {
                if let Some(address) = search(start, entry.cursor)? {
                    return Ok(Some(address));
                }
            } else if wanted.len() < BORROW_READS {
                wanted.push(entry.name.clone());
            }
        }
        self.needs.borrow_mut().blocks.extend(wanted);
        Ok(None)
    }
}

/// The first value of every block of prefix length `prefix` that holds an address of `set`,
/// in order.
pub(crate) fn block_starts(set: &IpSet, prefix: u8) -> impl Iterator<Item = u128> + '_ {
    let version = set.version();
    let mut last: Option<u128> = None;
    set.ranges().flat_map(move |range| {
        let (end, mut at) = (address_value(range.end()), address_value(range.start()));
        let mut starts = Vec::new();
        loop {
            let (low, high) = block_range(version, at, prefix);
            if last != Some(low) {
                starts.push(low);
                last = Some(low);
            }
            match high.checked_add(1) {
                Some(next) if next <= end => at = next,
                _ => break,
            }
        }
        starts
    })
}

/// How many values of `set` lie within `bounds`.
fn count_within(set: &IpSet, (low, high): (u128, u128)) -> u128 {
    set.ranges()
        .map(|range| {
            let (start, end) = (
                address_value(range.start()).max(low),
                address_value(range.end()).min(high),
            );
            if start <= end { end - start + 1 } else { 0 }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::IpRange;

    fn set(ranges: &[&str]) -> IpSet {
        IpSet::from_ranges(
            IpVersion::V4,
            ranges.iter().map(|r| r.parse::<IpRange>().unwrap()),
        )
        .unwrap()
    }

    fn address(value: u128) -> String {
        IpVersion::V4.address_at(value).unwrap().to_string()
    }

    #[test]
    fn the_blocks_of_a_set_are_the_aligned_ranges_it_touches() {
        let starts: Vec<String> = block_starts(&set(&["10.6.168.60-10.6.168.69", "10.6.169.1"]), 26)
            .map(address)
            .collect();
        assert_eq!(starts, ["10.6.168.0", "10.6.168.64", "10.6.169.0"]);
    }

    #[test]
    fn a_block_counts_only_the_addresses_of_the_set_in_it() {
        let set = set(&["10.6.168.60-10.6.168.69"]);
        let value = address_value("10.6.168.0".parse().unwrap());
        assert_eq!(count_within(&set, block_range(IpVersion::V4, value, 26)), 4);
    }

    #[test]
    fn a_long_pool_name_gives_a_valid_name_that_stays_apart() {
        let long = "p".repeat(250);
        let other = format!("{}q", "p".repeat(249));
        let start = "10.0.0.0".parse().unwrap();
        let (a, b) = (block_name(&long, start, 26), block_name(&other, start, 26));
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
        assert!(a.ends_with("-10-0-0-0-26"));
    }

    #[test]
    fn a_block_whose_records_cannot_be_read_is_refused_naming_the_field() {
        let spec = |records: &str| BlockSpec {
            pool: "p".into(),
            cidr: "10.6.168.64/26".into(),
            node: "n1".into(),
            allocated_ips: Some(records.into()),
            ..BlockSpec::default()
        };
        let read = |records: &str| {
            Block::read("p-10-6-168-64-26", "1".into(), spec(records))
                .unwrap_err()
                .to_string()
        };
        assert!(read("[1, 2]").contains("spec.allocatedIPs: not a JSON object of address"));
        assert!(
            read(r#"{"web":{"pod":"a/b"}}"#).contains(r#"spec.allocatedIPs: key "web" is not an IP address"#)
        );
        assert!(
            read(r#"{"10.6.168.1":{"pod":"a/b","podUid":"u"}}"#)
                .contains("spec.allocatedIPs: 10.6.168.1 is outside 10.6.168.64/26")
        );
        let good = Block::read(
            "p-10-6-168-64-26",
            "1".into(),
            spec(r#"{"10.6.168.65":{"pod":"a/b","podUid":"u"}}"#),
        );
        assert_eq!(good.unwrap().allocations.len(), 1);
    }
}
