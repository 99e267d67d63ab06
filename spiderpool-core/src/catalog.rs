//! The set of pools and reserved addresses an allocation chooses from.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::model::{Document, Resource, SpiderIPPool, SpiderReservedIP};
use crate::pool::{InvalidObject, Pool, Problem, ReservedIps, Violation};
use crate::range::{IpRange, IpSet, IpVersion};
use crate::subnet::Subnet;

/// A pool as the catalog knows it: usable, or refused with the reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogEntry {
    /// A valid pool.
    Valid(Box<Pool>),
    /// A pool object that failed validation. It is never allocated from, and a request naming
    /// it stops rather than falling back past it.
    Invalid {
        /// Its family, when that much could be read.
        version: Option<IpVersion>,
        /// Whether it says `spec.default: true`.
        default: bool,
        /// Why it was refused.
        error: InvalidObject,
    },
}

/// Every pool and reserved address, validated against each other as Spiderpool's webhook
/// would have admitted them one by one, in the order given.
///
/// Built once per change of the pool objects and shared by every allocation: lookups by name
/// are O(log pools), and the ordered list of cluster default pools is precomputed.
///
/// ```
/// use spiderpool_core::{parse_documents, PoolCatalog};
/// let docs = parse_documents("
/// {apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {name: a},
///  spec: {subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.20]}}
/// ---
/// {apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {name: b},
///  spec: {subnet: 10.6.0.0/16, ips: [10.6.0.20-10.6.0.30]}}
/// ").unwrap();
/// let catalog = PoolCatalog::from_documents(&docs);
/// assert!(catalog.pool("a").is_some());
/// let refused: Vec<String> = catalog.invalid().map(|e| e.to_string()).collect();
/// assert_eq!(refused, ["SpiderIPPool b is invalid: spec.ips: 10.6.0.20 also belong to pool a; \
///     a pool's addresses are ips minus excludeIPs and must not overlap another pool's"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct PoolCatalog {
    entries: BTreeMap<String, CatalogEntry>,
    /// Cluster default pools per family (IPv4, IPv6), in trial order.
    defaults: [Vec<String>; 2],
    reserved: ReservedIps,
    other_refusals: Vec<InvalidObject>,
}

/// Disjoint intervals of accepted pools, keyed by start: end and the owner.
type IntervalIndex<T> = BTreeMap<u128, (u128, T)>;

/// The entries of `index` that overlap `[start, end]`, lowest first.
fn overlapping<T>(index: &IntervalIndex<T>, start: u128, end: u128) -> Vec<(u128, u128, &T)> {
    let mut found: Vec<_> = index
        .range(..=end)
        .rev()
        .take_while(|(_, (entry_end, _))| *entry_end >= start)
        .map(|(&entry_start, (entry_end, owner))| (entry_start, *entry_end, owner))
        .collect();
    found.reverse();
    found
}

fn family_index(version: IpVersion) -> usize {
    match version {
        IpVersion::V4 => 0,
        IpVersion::V6 => 1,
    }
}

impl PoolCatalog {
    /// Builds the catalog. Reserved-IP objects come first in effect, since they apply to every
    /// pool; pools are admitted in the given order, so of two conflicting pools the later one
    /// is refused, as the webhook would have refused creating it.
    pub fn new(
        pools: impl IntoIterator<Item = SpiderIPPool>,
        reserved: impl IntoIterator<Item = SpiderReservedIP>,
    ) -> PoolCatalog {
        let mut catalog = PoolCatalog::default();
        for object in reserved {
            if let Err(error) = catalog.reserved.add(&object) {
                catalog.other_refusals.push(error);
            }
        }
        let mut subnets: [IntervalIndex<(Subnet, String)>; 2] = Default::default();
        let mut addresses: [IntervalIndex<String>; 2] = Default::default();
        for object in pools {
            let name = object.metadata.name.clone();
            let checked = match Pool::from_object(&object) {
                Ok(pool) if catalog.entries.contains_key(&name) => Err(InvalidObject {
                    kind: "SpiderIPPool",
                    name: name.clone(),
                    violations: vec![Violation {
                        field: "metadata.name".into(),
                        problem: Problem::DuplicateName {
                            name: pool.name().into(),
                        },
                    }],
                }),
                Ok(pool) => {
                    let family = family_index(pool.version());
                    let violations = conflicts(&pool, &subnets[family], &addresses[family]);
                    if violations.is_empty() {
                        admit(&pool, &mut subnets[family], &mut addresses[family]);
                        Ok(pool)
                    } else {
                        Err(InvalidObject {
                            kind: "SpiderIPPool",
                            name: name.clone(),
                            violations,
                        })
                    }
                }
                Err(error) => Err(error),
            };
            let entry = match checked {
                Ok(mut pool) => {
                    pool.withhold(catalog.reserved.of(pool.version()));
                    CatalogEntry::Valid(Box::new(pool))
                }
                Err(error) => CatalogEntry::Invalid {
                    version: declared_version(&object),
                    default: object.spec.default.unwrap_or(false),
                    error,
                },
            };
            // A duplicate keeps the first definition; the refusal is still reported.
            match catalog.entries.entry(name) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(entry);
                }
                std::collections::btree_map::Entry::Occupied(_) => {
                    if let CatalogEntry::Invalid { error, .. } = entry {
                        catalog.other_refusals.push(error);
                    }
                }
            }
        }
        catalog.order_defaults();
        catalog
    }

    /// Builds the catalog from parsed documents, in document order; other kinds are skipped.
    pub fn from_documents<'a>(documents: impl IntoIterator<Item = &'a Document>) -> PoolCatalog {
        let mut pools = Vec::new();
        let mut reserved = Vec::new();
        for document in documents {
            match &document.resource {
                Resource::IpPool(pool) => pools.push((**pool).clone()),
                Resource::ReservedIp(object) => reserved.push(object.clone()),
                Resource::Other { .. } => {}
            }
        }
        PoolCatalog::new(pools, reserved)
    }

    /// Orders cluster default pools: refused ones first (a request reaching them stops),
    /// then most specific affinity first, then by name.
    fn order_defaults(&mut self) {
        for version in IpVersion::ALL {
            let mut ranked: Vec<(bool, Reverse<[usize; 5]>, &str)> = self
                .entries
                .iter()
                .filter_map(|(name, entry)| match entry {
                    CatalogEntry::Valid(pool) if pool.is_default() && pool.version() == version => {
                        Some((true, Reverse(pool.specificity()), name.as_str()))
                    }
                    CatalogEntry::Invalid {
                        version: v,
                        default: true,
                        ..
                    } if v.is_none_or(|v| v == version) => {
                        Some((false, Reverse([usize::MAX; 5]), name.as_str()))
                    }
                    _ => None,
                })
                .collect();
            ranked.sort();
            self.defaults[family_index(version)] =
                ranked.into_iter().map(|(_, _, name)| name.to_owned()).collect();
        }
    }

    /// The entry of a pool by name.
    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.get(name)
    }

    /// A valid pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        match self.entries.get(name) {
            Some(CatalogEntry::Valid(pool)) => Some(pool),
            _ => None,
        }
    }

    /// Every entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &CatalogEntry)> {
        self.entries.iter().map(|(name, entry)| (name.as_str(), entry))
    }

    /// Every valid pool, by name.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.entries.values().filter_map(|entry| match entry {
            CatalogEntry::Valid(pool) => Some(&**pool),
            CatalogEntry::Invalid { .. } => None,
        })
    }

    /// Every refused object: pools by name, then refused reservations and duplicates.
    pub fn invalid(&self) -> impl Iterator<Item = &InvalidObject> {
        self.entries
            .values()
            .filter_map(|entry| match entry {
                CatalogEntry::Invalid { error, .. } => Some(error),
                CatalogEntry::Valid(_) => None,
            })
            .chain(&self.other_refusals)
    }

    /// The reserved addresses.
    pub fn reserved(&self) -> &ReservedIps {
        &self.reserved
    }

    /// Cluster default pools of a family, in the order they are tried.
    pub fn default_pools(&self, version: IpVersion) -> &[String] {
        &self.defaults[family_index(version)]
    }

    /// Names of the pools matching a glob, in name order, among pools of the family and
    /// refused pools whose family is unknown or the same.
    pub(crate) fn matching(
        &self,
        pattern: &glob::Pattern,
        literal_prefix: &str,
        version: IpVersion,
    ) -> Vec<&str> {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(literal_prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(name, _)| name.starts_with(literal_prefix))
            .filter(|(name, entry)| {
                let family_ok = match entry {
                    CatalogEntry::Valid(pool) => pool.version() == version,
                    CatalogEntry::Invalid { version: v, .. } => v.is_none_or(|v| v == version),
                };
                family_ok && pattern.matches(name)
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// The family an object declares or implies, when readable.
fn declared_version(object: &SpiderIPPool) -> Option<IpVersion> {
    object
        .spec
        .ip_version
        .and_then(IpVersion::from_number)
        .or_else(|| Subnet::parse_loose(&object.spec.subnet).ok().map(|s| s.version()))
}

/// Conflicts of a new pool with pools admitted before it: a different but overlapping subnet,
/// or shared addresses.
fn conflicts(
    pool: &Pool,
    subnets: &IntervalIndex<(Subnet, String)>,
    addresses: &IntervalIndex<String>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let (start, end) = pool.subnet().range().bounds();
    for (_, _, (other_subnet, other)) in overlapping(subnets, start, end) {
        if *other_subnet != pool.subnet() {
            violations.push(Violation {
                field: "spec.subnet".into(),
                problem: Problem::SubnetOverlapsPool {
                    subnet: pool.subnet(),
                    other: other.clone(),
                    other_subnet: *other_subnet,
                },
            });
        }
    }
    let mut shared: BTreeMap<&str, Vec<IpRange>> = BTreeMap::new();
    for range in pool.addresses().ranges() {
        let (start, end) = range.bounds();
        for (other_start, other_end, other) in overlapping(addresses, start, end) {
            let bounds = (start.max(other_start), end.min(other_end));
            shared
                .entry(other.as_str())
                .or_default()
                .push(IpRange::from_bounds(pool.version(), bounds.0, bounds.1));
        }
    }
    for (other, ranges) in shared {
        let set = IpSet::from_ranges(pool.version(), ranges).expect("ranges of the pool's family");
        violations.push(Violation {
            field: "spec.ips".into(),
            problem: Problem::OverlapsPool {
                other: other.into(),
                shared: set.to_string(),
            },
        });
    }
    violations
}

fn admit(pool: &Pool, subnets: &mut IntervalIndex<(Subnet, String)>, addresses: &mut IntervalIndex<String>) {
    let (start, end) = pool.subnet().range().bounds();
    subnets
        .entry(start)
        .or_insert_with(|| (end, (pool.subnet(), pool.name().into())));
    for range in pool.addresses().ranges() {
        let (start, end) = range.bounds();
        addresses.insert(start, (end, pool.name().into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_documents;

    fn pool(name: &str, spec: &str) -> String {
        format!(
            "---\n{{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {{name: {name}}}, spec: {spec}}}\n"
        )
    }

    fn catalog(text: &str) -> PoolCatalog {
        PoolCatalog::from_documents(&parse_documents(text).unwrap())
    }

    fn refusals(catalog: &PoolCatalog) -> Vec<String> {
        catalog.invalid().map(ToString::to_string).collect()
    }

    #[test]
    fn pools_may_share_a_subnet_but_not_addresses() {
        let c = catalog(&[
            pool("a", "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.20]}"),
            pool("b", "{subnet: 10.6.0.0/16, ips: [10.6.0.21-10.6.0.30]}"),
            pool("c", "{subnet: 10.6.0.0/16, ips: [10.6.0.5-10.6.0.11, 10.6.0.30-10.6.0.40], excludeIPs: [10.6.0.10]}"),
        ]
        .concat());
        assert!(c.pool("a").is_some() && c.pool("b").is_some());
        assert_eq!(
            refusals(&c),
            [
                "SpiderIPPool c is invalid: spec.ips: 10.6.0.11 also belong to pool a; a pool's addresses are ips minus excludeIPs and must not overlap another pool's; spec.ips: 10.6.0.30 also belong to pool b; a pool's addresses are ips minus excludeIPs and must not overlap another pool's"
            ]
        );
    }

    #[test]
    fn an_address_excluded_in_one_pool_may_belong_to_another() {
        let c = catalog(
            &[
                pool(
                    "a",
                    "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.20], excludeIPs: [10.6.0.15]}",
                ),
                pool("b", "{subnet: 10.6.0.0/16, ips: [10.6.0.15]}"),
            ]
            .concat(),
        );
        assert_eq!(refusals(&c), Vec::<String>::new());
    }

    #[test]
    fn different_overlapping_subnets_are_refused() {
        let c = catalog(
            &[
                pool("wide", "{subnet: 10.6.0.0/16}"),
                pool("narrow", "{subnet: 10.6.1.0/24}"),
                pool("v6", "{subnet: 'fd00::/64'}"),
            ]
            .concat(),
        );
        assert_eq!(
            refusals(&c),
            [
                "SpiderIPPool narrow is invalid: spec.subnet: 10.6.1.0/24 overlaps subnet 10.6.0.0/16 of pool wide; pools share a subnet only when it is written identically"
            ]
        );
    }

    #[test]
    fn a_duplicate_name_keeps_the_first_definition() {
        let c = catalog(
            &[
                pool("a", "{subnet: 10.6.0.0/16}"),
                pool("a", "{subnet: 10.7.0.0/16}"),
            ]
            .concat(),
        );
        assert_eq!(c.pool("a").unwrap().subnet().to_string(), "10.6.0.0/16");
        assert_eq!(
            refusals(&c),
            [
                "SpiderIPPool a is invalid: metadata.name: another pool named a comes earlier; rename one of them"
            ]
        );
    }

    #[test]
    fn reserved_addresses_are_withheld_but_still_counted_in_total() {
        let text = [
            pool("a", "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.20]}"),
            "---\n{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderReservedIP, metadata: {name: r}, spec: {ips: [10.6.0.12-10.6.0.13]}}\n".into(),
        ]
        .concat();
        let c = catalog(&text);
        let a = c.pool("a").unwrap();
        assert_eq!(a.total_count(), 11);
        assert_eq!(
            a.allocatable().to_string(),
            "10.6.0.10-10.6.0.11,10.6.0.14-10.6.0.20"
        );
    }

    #[test]
    fn default_pools_are_ordered_by_specificity_then_name() {
        let c = catalog(
            &[
                pool("z-anywhere", "{subnet: 10.1.0.0/16, default: true}"),
                pool(
                    "b-node-labels",
                    "{subnet: 10.2.0.0/16, default: true, nodeAffinity: {matchLabels: {zone: a}}}",
                ),
                pool("a-anywhere", "{subnet: 10.3.0.0/16, default: true}"),
                pool(
                    "c-node-names",
                    "{subnet: 10.4.0.0/16, default: true, nodeName: [n1]}",
                ),
                pool(
                    "d-pod",
                    "{subnet: 10.5.0.0/16, default: true, podAffinity: {matchLabels: {app: x}}}",
                ),
                pool("e-not-default", "{subnet: 10.6.0.0/16}"),
                pool("f-broken", "{subnet: 10.7.0.1/16, default: true}"),
                pool("v6", "{subnet: 'fd00::/64', default: true}"),
            ]
            .concat(),
        );
        assert_eq!(
            c.default_pools(IpVersion::V4),
            [
                "f-broken",
                "d-pod",
                "c-node-names",
                "b-node-labels",
                "a-anywhere",
                "z-anywhere"
            ]
        );
        assert_eq!(c.default_pools(IpVersion::V6), ["v6"]);
    }
}
