//! The validated pool model, and the verdicts Spiderpool's admission webhook gives.

use std::fmt;
use std::net::IpAddr;

use crate::model::{ReservedIPSpec, SpiderIPPool, SpiderReservedIP};
use crate::range::{IpRange, IpSet, IpVersion, RangeError};
use crate::selector::{LabelSelector, Labels, SelectorError};
use crate::subnet::{Subnet, SubnetError};

/// Where a pool may be used along one dimension (nodes or namespaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// No restriction.
    Anywhere,
    /// Only these names (`nodeName` / `namespaceName`), which win over a selector.
    Named(Vec<String>),
    /// Only objects whose labels match (`nodeAffinity` / `namespaceAffinity`).
    Selected(LabelSelector),
}

impl Placement {
    fn new(names: &[String], selector: Option<&LabelSelector>) -> Placement {
        match (names.is_empty(), selector) {
            (false, _) => Placement::Named(names.to_vec()),
            (true, Some(selector)) => Placement::Selected(selector.clone()),
            (true, None) => Placement::Anywhere,
        }
    }

    /// Whether an object with this name and labels may use the pool.
    pub fn admits(&self, name: &str, labels: &Labels) -> bool {
        match self {
            Placement::Anywhere => true,
            Placement::Named(names) => names.iter().any(|n| n == name),
            Placement::Selected(selector) => selector.matches(labels),
        }
    }

    /// 2 for names, 1 for a selector, 0 for anywhere: names pin a pool most narrowly.
    fn specificity(&self) -> u8 {
        match self {
            Placement::Anywhere => 0,
            Placement::Selected(_) => 1,
            Placement::Named(_) => 2,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Anywhere => f.write_str("anywhere"),
            Placement::Named(names) => write!(f, "[{}]", names.join(", ")),
            Placement::Selected(selector) => {
                let mut parts: Vec<String> = selector
                    .match_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                parts.extend(
                    selector
                        .match_expressions
                        .iter()
                        .map(|r| format!("{} {:?} [{}]", r.key, r.operator, r.values.join(", "))),
                );
                write!(f, "{{{}}}", parts.join(", "))
            }
        }
    }
}

/// A route of a pool, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRoute {
    /// Destination network.
    pub dst: Subnet,
    /// Next hop.
    pub gateway: IpAddr,
}

/// A `SpiderIPPool` that passed validation: every field parsed and consistent.
///
/// ```
/// use spiderpool_core::{parse_documents, Pool, Resource};
/// let docs = parse_documents("
/// apiVersion: spiderpool.spidernet.io/v2beta1
/// kind: SpiderIPPool
/// metadata: {name: test-ippool-6}
/// spec:
///   subnet: 10.6.0.0/16
///   ips: [10.6.168.60-10.6.168.69]
///   excludeIPs: [10.6.168.69]
///   gateway: 10.6.0.1
///   nodeName: [controller-node-1]
/// ").unwrap();
/// let Resource::IpPool(object) = &docs[0].resource else { unreachable!() };
/// let pool = Pool::from_object(object).unwrap();
/// assert_eq!(pool.total_count(), 9);
/// assert!(pool.node().admits("controller-node-1", &Default::default()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    name: String,
    version: IpVersion,
    subnet: Subnet,
    /// `ips` minus `excludeIPs`.
    addresses: IpSet,
    /// `addresses` minus reserved addresses: what may be handed out.
    allocatable: IpSet,
    gateway: Option<IpAddr>,
    routes: Vec<PoolRoute>,
    node: Placement,
    namespace: Placement,
    pod_affinity: Option<LabelSelector>,
    multus_names: Vec<String>,
    default: bool,
    disabled: bool,
    terminating: bool,
    /// The prefix length of its blocks in a cluster.
    block_prefix: u8,
}

/// The block prefix lengths a pool of `version` may have: at most 1,024 addresses per block,
/// so that a full block's object stays well under 256 KiB.
pub fn block_prefixes(version: IpVersion) -> std::ops::RangeInclusive<u8> {
    match version {
        IpVersion::V4 => 22..=32,
        IpVersion::V6 => 118..=128,
    }
}

/// The block prefix length of a pool that does not set `spec.blockSize`: 64 addresses per
/// block (measured in `docs/decisions/0011-address-blocks.md`).
pub fn default_block_prefix(version: IpVersion) -> u8 {
    match version {
        IpVersion::V4 => 26,
        IpVersion::V6 => 122,
    }
}

impl Pool {
    /// Validates a `SpiderIPPool` on its own, as the webhook does on create, reporting every
    /// violation. Checks against other pools are done by [`crate::PoolCatalog`].
    pub fn from_object(object: &SpiderIPPool) -> Result<Pool, InvalidObject> {
        let mut violations = Vec::new();
        let pool = Pool::check(object, &mut violations);
        match pool {
            Some(pool) if violations.is_empty() => Ok(pool),
            _ => Err(InvalidObject {
                kind: "SpiderIPPool",
                name: object.metadata.name.clone(),
                violations,
            }),
        }
    }

    fn check(object: &SpiderIPPool, violations: &mut Vec<Violation>) -> Option<Pool> {
        let mut report = |field: &str, problem| {
            violations.push(Violation {
                field: field.to_string(),
                problem,
            })
        };
        let spec = &object.spec;
        if let Err(reason) = check_object_name(&object.metadata.name) {
            report(
                "metadata.name",
                Problem::BadName {
                    name: object.metadata.name.clone(),
                    reason,
                },
            );
        }
        if object.kind != "SpiderIPPool" {
            report(
                "kind",
                Problem::WrongKind {
                    found: object.kind.clone(),
                },
            );
        }
        let declared = match spec.ip_version {
            None => None,
            Some(number) => match IpVersion::from_number(number) {
                Some(version) => Some(version),
                None => {
                    report("spec.ipVersion", Problem::BadIpVersion { found: number });
                    None
                }
            },
        };
        let subnet = if spec.subnet.is_empty() {
            report("spec.subnet", Problem::MissingSubnet);
            None
        } else {
            match spec.subnet.parse::<Subnet>() {
                Ok(subnet) => Some(subnet),
                Err(err) => {
                    report("spec.subnet", Problem::Subnet(err));
                    None
                }
            }
        };
        if let (Some(version), Some(subnet)) = (declared, subnet)
            && version != subnet.version()
        {
            report("spec.ipVersion", Problem::VersionMismatch { version, subnet });
        }
        let version = subnet.map(|s| s.version()).or(declared);

        let mut ranges_of = |field: &str, texts: &[String]| -> Vec<IpRange> {
            let mut ranges = Vec::new();
            for (index, text) in texts.iter().enumerate() {
                let field = format!("{field}[{index}]");
                match text.parse::<IpRange>() {
                    Err(err) => report(&field, Problem::Range(err)),
                    Ok(range) => match subnet {
                        Some(subnet) if !subnet.contains_range(&range) => {
                            report(&field, Problem::RangeOutsideSubnet { range, subnet })
                        }
                        _ => ranges.push(range),
                    },
                }
            }
            ranges
        };
        let ips = ranges_of("spec.ips", &spec.ips);
        let excluded = ranges_of("spec.excludeIPs", &spec.exclude_ips);

        let gateway = match &spec.gateway {
            None => None,
            Some(text) => match text.parse::<IpAddr>() {
                Err(_) => {
                    report("spec.gateway", Problem::BadAddress { text: text.clone() });
                    None
                }
                Ok(gateway) => {
                    if let Some(subnet) = subnet {
                        if !subnet.contains(gateway) {
                            report("spec.gateway", Problem::GatewayOutsideSubnet { gateway, subnet });
                        } else if !excluded.iter().any(|r| r.contains(gateway)) {
                            // As Spiderpool: the gateway may sit in ips only when excluded.
                            for (index, range) in ips.iter().enumerate() {
                                if range.contains(gateway) {
                                    report(
                                        &format!("spec.ips[{index}]"),
                                        Problem::GatewayInIps {
                                            gateway,
                                            range: *range,
                                        },
                                    );
                                }
                            }
                        }
                    }
                    Some(gateway)
                }
            },
        };
        if let Some(vlan) = spec.vlan.filter(|vlan| !(0..=4094).contains(vlan)) {
            report("spec.vlan", Problem::BadVlan { found: vlan });
        }

        let mut routes: Vec<PoolRoute> = Vec::new();
        for (index, route) in spec.routes.iter().enumerate() {
            let dst_field = format!("spec.routes[{index}].dst");
            let dst = match Subnet::parse_loose(&route.dst) {
                Err(err) => {
                    report(&dst_field, Problem::Subnet(err));
                    None
                }
                Ok(dst) if version.is_some_and(|v| v != dst.version()) => {
                    report(
                        &dst_field,
                        Problem::RouteWrongFamily {
                            dst: route.dst.clone(),
                        },
                    );
                    None
                }
                Ok(dst) if dst.prefix_len() == 0 => {
                    report(
                        &dst_field,
                        Problem::DefaultRoute {
                            dst: route.dst.clone(),
                        },
                    );
                    None
                }
                Ok(dst) if routes.iter().any(|r| r.dst == dst) => {
                    report(&dst_field, Problem::DuplicateRoute { dst });
                    None
                }
                Ok(dst) => Some(dst),
            };
            let gw_field = format!("spec.routes[{index}].gw");
            let gw = match route.gw.parse::<IpAddr>() {
                Err(_) => {
                    report(
                        &gw_field,
                        Problem::BadAddress {
                            text: route.gw.clone(),
                        },
                    );
                    None
                }
                Ok(gw) => match subnet {
                    Some(subnet) if !subnet.contains(gw) => {
                        report(&gw_field, Problem::GatewayOutsideSubnet { gateway: gw, subnet });
                        None
                    }
                    _ => Some(gw),
                },
            };
            if let (Some(dst), Some(gateway)) = (dst, gw) {
                routes.push(PoolRoute { dst, gateway });
            }
        }

        let mut check_selector = |field: &str, selector: &Option<LabelSelector>| {
            for error in selector.iter().flat_map(LabelSelector::validate) {
                report(field, Problem::Selector(error));
            }
        };
        check_selector("spec.podAffinity", &spec.pod_affinity);
        check_selector("spec.nodeAffinity", &spec.node_affinity);
        check_selector("spec.namespaceAffinity", &spec.namespace_affinity);
        if spec.pod_affinity.as_ref().is_some_and(LabelSelector::is_empty) {
            report("spec.podAffinity", Problem::EmptyPodAffinity);
        }

        let block_prefix = match (version, spec.block_size) {
            (Some(version), Some(found)) => match u8::try_from(found)
                .ok()
                .filter(|prefix| block_prefixes(version).contains(prefix))
            {
                Some(prefix) => Some(prefix),
                None => {
                    report("spec.blockSize", Problem::BadBlockSize { found, version });
                    None
                }
            },
            (Some(version), None) => Some(default_block_prefix(version)),
            (None, _) => None,
        };

        let (version, subnet, block_prefix) = (version?, subnet?, block_prefix?);
        let set = |ranges: Vec<IpRange>| IpSet::from_ranges(version, ranges).ok();
        let addresses = set(ips)?.difference(&set(excluded)?);
        Some(Pool {
            name: object.metadata.name.clone(),
            version,
            subnet,
            allocatable: addresses.clone(),
            addresses,
            gateway,
            routes,
            node: Placement::new(&spec.node_name, spec.node_affinity.as_ref()),
            namespace: Placement::new(&spec.namespace_name, spec.namespace_affinity.as_ref()),
            pod_affinity: spec.pod_affinity.clone(),
            multus_names: spec.multus_name.clone(),
            default: spec.default.unwrap_or(false),
            disabled: spec.disable.unwrap_or(false),
            terminating: object.metadata.deletion_timestamp.is_some(),
            block_prefix,
        })
    }

    /// The prefix length of the blocks its addresses are divided into in a cluster
    /// (`spec.blockSize`, or 26 for IPv4 and 122 for IPv6).
    pub fn block_prefix(&self) -> u8 {
        self.block_prefix
    }

    /// Removes reserved addresses from what the pool may hand out.
    pub(crate) fn withhold(&mut self, reserved: &IpSet) {
        self.allocatable = self.addresses.difference(reserved);
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The family.
    pub fn version(&self) -> IpVersion {
        self.version
    }
    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }
    /// `ips` minus `excludeIPs`.
    pub fn addresses(&self) -> &IpSet {
        &self.addresses
    }
    /// The addresses that may be handed out: `ips` minus `excludeIPs` minus reserved IPs.
    pub fn allocatable(&self) -> &IpSet {
        &self.allocatable
    }
    /// Spiderpool's `totalIPCount`: the size of `ips` minus `excludeIPs`.
    pub fn total_count(&self) -> u128 {
        self.addresses.len()
    }
    /// The gateway, if set.
    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }
    /// The routes.
    pub fn routes(&self) -> &[PoolRoute] {
        &self.routes
    }
    /// The nodes the pool serves.
    pub fn node(&self) -> &Placement {
        &self.node
    }
    /// The namespaces the pool serves.
    pub fn namespace(&self) -> &Placement {
        &self.namespace
    }
    /// The pods the pool serves, if restricted.
    pub fn pod_affinity(&self) -> Option<&LabelSelector> {
        self.pod_affinity.as_ref()
    }
    /// The network attachments the pool serves; empty means all.
    pub fn multus_names(&self) -> &[String] {
        &self.multus_names
    }
    /// Whether the pool is a cluster default (`spec.default`).
    pub fn is_default(&self) -> bool {
        self.default
    }
    /// Whether allocation is switched off (`spec.disable`).
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }
    /// Whether the pool is being deleted.
    pub fn is_terminating(&self) -> bool {
        self.terminating
    }

    /// How narrowly the pool is pinned, compared lexicographically, highest first: pod
    /// affinity, then node, namespace and attachment restrictions, then how many labels the
    /// selectors state. Orders implicit candidates (cluster default pools).
    pub fn specificity(&self) -> [usize; 5] {
        let selector_size = [&self.node, &self.namespace]
            .iter()
            .filter_map(|placement| match placement {
                Placement::Selected(selector) => Some(selector.constraint_count()),
                _ => None,
            })
            .sum::<usize>()
            + self
                .pod_affinity
                .as_ref()
                .map_or(0, LabelSelector::constraint_count);
        [
            usize::from(self.pod_affinity.is_some()),
            usize::from(self.node.specificity()),
            usize::from(self.namespace.specificity()),
            usize::from(!self.multus_names.is_empty()),
            selector_size,
        ]
    }
}

/// Checks an update of a pool as the webhook does: `spec.subnet` and `spec.ipVersion` cannot
/// change, the new spec must be valid, and every address in use must stay in `ips` minus
/// `excludeIPs`. `in_use` lists the addresses held now with a description of their holder.
///
/// ```
/// use spiderpool_core::{validate_update, SpiderIPPool};
/// let old: SpiderIPPool = serde_yaml_ng::from_str("
/// {apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {name: p},
///  spec: {subnet: 10.6.0.0/16, ips: [10.6.168.60-10.6.168.69]}}").unwrap();
/// let mut new = old.clone();
/// new.spec.ips = vec!["10.6.168.60-10.6.168.64".into()];
/// let in_use = [("10.6.168.65".parse().unwrap(), "pod default/a".to_string())];
/// let err = validate_update(&old, &new, &in_use).unwrap_err();
/// assert_eq!(err.to_string(), "SpiderIPPool p is invalid: spec.ips: 10.6.168.65 is in use by \
///     pod default/a; keep it in ips and out of excludeIPs until it is released");
/// ```
pub fn validate_update(
    old: &SpiderIPPool,
    new: &SpiderIPPool,
    in_use: &[(IpAddr, String)],
) -> Result<Pool, InvalidObject> {
    let mut violations = Vec::new();
    if old.spec.subnet != new.spec.subnet {
        violations.push(Violation {
            field: "spec.subnet".into(),
            problem: Problem::Immutable {
                old: old.spec.subnet.clone(),
                new: new.spec.subnet.clone(),
            },
        });
    }
    if let (Some(before), Some(after)) = (old.spec.ip_version, new.spec.ip_version)
        && before != after
    {
        violations.push(Violation {
            field: "spec.ipVersion".into(),
            problem: Problem::Immutable {
                old: before.to_string(),
                new: after.to_string(),
            },
        });
    }
    let pool = Pool::check(new, &mut violations);
    // Blocks already claimed are cut at the old size.
    let block_size = |spec: &crate::model::IPPoolSpec| {
        let version = spec.subnet.parse::<Subnet>().ok()?.version();
        Some(
            spec.block_size
                .unwrap_or(i64::from(default_block_prefix(version))),
        )
    };
    if let (Some(before), Some(after)) = (block_size(&old.spec), block_size(&new.spec))
        && before != after
    {
        violations.push(Violation {
            field: "spec.blockSize".into(),
            problem: Problem::Immutable {
                old: before.to_string(),
                new: after.to_string(),
            },
        });
    }
    if let Some(pool) = &pool {
        for (address, holder) in in_use {
            if !pool.addresses.contains(*address) {
                violations.push(Violation {
                    field: "spec.ips".into(),
                    problem: Problem::InUseRemoved {
                        address: *address,
                        holder: holder.clone(),
                    },
                });
            }
        }
    }
    match pool {
        Some(pool) if violations.is_empty() => Ok(pool),
        _ => Err(InvalidObject {
            kind: "SpiderIPPool",
            name: new.metadata.name.clone(),
            violations,
        }),
    }
}

/// The addresses of `SpiderReservedIP` objects, which no pool hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedIps {
    v4: IpSet,
    v6: IpSet,
}

impl Default for ReservedIps {
    fn default() -> Self {
        ReservedIps {
            v4: IpSet::empty(IpVersion::V4),
            v6: IpSet::empty(IpVersion::V6),
        }
    }
}

impl ReservedIps {
    /// The reserved addresses of one family.
    pub fn of(&self, version: IpVersion) -> &IpSet {
        match version {
            IpVersion::V4 => &self.v4,
            IpVersion::V6 => &self.v6,
        }
    }

    /// Adds one object, validated as Spiderpool's webhook does: at least one range, every range
    /// valid and of the object's family (`spec.ipVersion`, or that of the first range), and no
    /// overlap with objects added before.
    pub fn add(&mut self, object: &SpiderReservedIP) -> Result<(), InvalidObject> {
        let mut violations = Vec::new();
        let mut report = |field: String, problem| violations.push(Violation { field, problem });
        let ReservedIPSpec { ip_version, ips } = &object.spec;
        if let Err(reason) = check_object_name(&object.metadata.name) {
            report(
                "metadata.name".into(),
                Problem::BadName {
                    name: object.metadata.name.clone(),
                    reason,
                },
            );
        }
        if ips.is_empty() {
            report("spec.ips".into(), Problem::NoReservedIps);
        }
        let mut version = ip_version.map(|number| IpVersion::from_number(number).ok_or(number));
        if let Some(Err(found)) = version {
            report("spec.ipVersion".into(), Problem::BadIpVersion { found });
        }
        let mut ranges = Vec::new();
        for (index, text) in ips.iter().enumerate() {
            let field = format!("spec.ips[{index}]");
            match text.parse::<IpRange>() {
                Err(err) => report(field, Problem::Range(err)),
                Ok(range) => match version {
                    None => {
                        version = Some(Ok(range.version()));
                        ranges.push(range);
                    }
                    Some(Ok(v)) if v != range.version() => {
                        report(field, Problem::RangeWrongFamily { range, version: v })
                    }
                    _ => ranges.push(range),
                },
            }
        }
        if let Some(Ok(version)) = version {
            let set = IpSet::from_ranges(version, ranges).expect("ranges were checked against the family");
            let shared = set.intersection(self.of(version));
            if !shared.is_empty() {
                report(
                    "spec.ips".into(),
                    Problem::ReservedTwice {
                        shared: shared.to_string(),
                    },
                );
            }
            if violations.is_empty() {
                let merged = self.of(version).union(&set);
                match version {
                    IpVersion::V4 => self.v4 = merged,
                    IpVersion::V6 => self.v6 = merged,
                }
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(InvalidObject {
                kind: "SpiderReservedIP",
                name: object.metadata.name.clone(),
                violations,
            })
        }
    }
}

/// A Kubernetes object name: a DNS-1123 subdomain.
fn check_object_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a name is required");
    }
    if name.len() > 253 {
        return Err("at most 253 characters");
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")
    }
}

/// An object that failed validation, with every violation found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name} is invalid: {}", .violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidObject {
    /// `SpiderIPPool` or `SpiderReservedIP`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// Every violation, in field order.
    pub violations: Vec<Violation>,
}

/// One violated rule, at one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Violation {
    /// The field path, for example `spec.ips[1]`.
    pub field: String,
    /// What is wrong there.
    pub problem: Problem,
}

/// A rule a pool or reserved-IP object breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `metadata.name` is not a valid object name.
    #[error("{name:?} is not a valid name: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The object is not a `SpiderIPPool`.
    #[error("expected SpiderIPPool, found {found:?}")]
    WrongKind {
        /// The kind written.
        found: String,
    },
    /// Two objects share a name.
    #[error("another pool named {name} comes earlier; rename one of them")]
    DuplicateName {
        /// The shared name.
        name: String,
    },
    /// `spec.subnet` is missing.
    #[error("required: write the subnet in CIDR form, for example 10.6.0.0/16")]
    MissingSubnet,
    /// A CIDR does not parse or is not canonical.
    #[error(transparent)]
    Subnet(SubnetError),
    /// `spec.ipVersion` is neither 4 nor 6.
    #[error("{found} is not an IP version: write 4 or 6, or leave it out to infer it from spec.subnet")]
    BadIpVersion {
        /// The number written.
        found: i64,
    },
    /// `spec.ipVersion` contradicts the subnet.
    #[error("ipVersion {} does not match subnet {subnet}; write {} or leave it out", .version.number(), .subnet.version().number())]
    VersionMismatch {
        /// The version declared.
        version: IpVersion,
        /// The subnet.
        subnet: Subnet,
    },
    /// A range does not parse.
    #[error(transparent)]
    Range(RangeError),
    /// A range is not inside the subnet.
    #[error("{range} is outside subnet {subnet}")]
    RangeOutsideSubnet {
        /// The range.
        range: IpRange,
        /// The subnet.
        subnet: Subnet,
    },
    /// A range of the other family than the object's.
    #[error("{range} is not an IPv{} range like the rest of the object", .version.number())]
    RangeWrongFamily {
        /// The range.
        range: IpRange,
        /// The object's family.
        version: IpVersion,
    },
    /// An address does not parse.
    #[error("{text:?} is not an IP address")]
    BadAddress {
        /// The text.
        text: String,
    },
    /// A gateway outside the subnet.
    #[error("{gateway} is outside subnet {subnet}")]
    GatewayOutsideSubnet {
        /// The gateway.
        gateway: IpAddr,
        /// The subnet.
        subnet: Subnet,
    },
    /// The gateway lies in `ips` and is not excluded.
    #[error("{range} contains the gateway {gateway}: add the gateway to excludeIPs or remove it from ips")]
    GatewayInIps {
        /// The gateway.
        gateway: IpAddr,
        /// The range holding it.
        range: IpRange,
    },
    /// `spec.blockSize` is not a block prefix length of the pool's family.
    #[error(
        "{found} is not a block size for IPv{}: write a prefix length from {} to {} ({} to 1 addresses per block), or leave it out for {}",
        .version.number(),
        block_prefixes(*.version).start(),
        block_prefixes(*.version).end(),
        1u32 << (u32::from(*block_prefixes(*.version).end()) - u32::from(*block_prefixes(*.version).start())),
        default_block_prefix(*.version)
    )]
    BadBlockSize {
        /// The number written.
        found: i64,
        /// The pool's family.
        version: IpVersion,
    },
    /// `spec.vlan` out of range.
    #[error("{found} is not a VLAN ID: use 0 to 4094")]
    BadVlan {
        /// The number written.
        found: i64,
    },
    /// A route to the default destination.
    #[error("{dst} is the default route: set spec.gateway instead")]
    DefaultRoute {
        /// The destination written.
        dst: String,
    },
    /// Two routes to the same destination.
    #[error("a route to {dst} is already listed; keep one")]
    DuplicateRoute {
        /// The destination.
        dst: Subnet,
    },
    /// A route destination of the other family.
    #[error("{dst} is not of the pool's IP family")]
    RouteWrongFamily {
        /// The destination written.
        dst: String,
    },
    /// A label selector is invalid.
    #[error(transparent)]
    Selector(SelectorError),
    /// `spec.podAffinity` is present but selects nothing in particular.
    #[error("an empty selector is not allowed here; remove it or add matchLabels/matchExpressions")]
    EmptyPodAffinity,
    /// A reserved-IP object without addresses.
    #[error("requires at least one address or range")]
    NoReservedIps,
    /// Reserved addresses already reserved by an earlier object.
    #[error("{shared} are already reserved by another SpiderReservedIP")]
    ReservedTwice {
        /// The shared addresses.
        shared: String,
    },
    /// The pool's addresses overlap another pool's.
    #[error(
        "{shared} also belong to pool {other}; a pool's addresses are ips minus excludeIPs and must not overlap another pool's"
    )]
    OverlapsPool {
        /// The pool that came first.
        other: String,
        /// The shared addresses.
        shared: String,
    },
    /// The subnet overlaps a different subnet of another pool.
    #[error(
        "{subnet} overlaps subnet {other_subnet} of pool {other}; pools share a subnet only when it is written identically"
    )]
    SubnetOverlapsPool {
        /// This pool's subnet.
        subnet: Subnet,
        /// The pool that came first.
        other: String,
        /// Its subnet.
        other_subnet: Subnet,
    },
    /// An immutable field changed.
    #[error("cannot change from {old} to {new}; create a new pool instead")]
    Immutable {
        /// The old value.
        old: String,
        /// The new value.
        new: String,
    },
    /// A pool that still holds addresses is being deleted.
    #[error(
        "{count} addresses are still allocated ({examples}); delete those pods, or wait for their addresses to be released, before deleting the pool"
    )]
    InUse {
        /// How many.
        count: usize,
        /// The first few, with their holders.
        examples: String,
    },
    /// An update drops an address that is in use.
    #[error("{address} is in use by {holder}; keep it in ips and out of excludeIPs until it is released")]
    InUseRemoved {
        /// The address.
        address: IpAddr,
        /// Who holds it.
        holder: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(spec_yaml: &str) -> Result<Pool, InvalidObject> {
        Pool::from_object(&object("p", spec_yaml))
    }

    fn object(name: &str, spec_yaml: &str) -> SpiderIPPool {
        let text = format!(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata: {{name: {name}}}\nspec: {spec_yaml}"
        );
        serde_yaml_ng::from_str(&text).unwrap()
    }

    fn messages(result: Result<Pool, InvalidObject>) -> Vec<String> {
        result
            .unwrap_err()
            .violations
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_version_is_inferred_from_the_subnet() {
        assert_eq!(pool("{subnet: fd00::/64}").unwrap().version(), IpVersion::V6);
        assert_eq!(
            pool("{subnet: 10.6.0.0/16, ipVersion: 4}").unwrap().version(),
            IpVersion::V4
        );
    }

    #[test]
    fn every_violation_is_reported_at_its_field() {
        let got = messages(pool(
            "{ipVersion: 6, subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.1, 10.7.0.1, 10.6.0.0/24],
              excludeIPs: [nonsense], gateway: 10.6.0.300, vlan: 5000,
              routes: [{dst: 0.0.0.0/0, gw: 10.6.0.1}, {dst: 10.8.0.0/16, gw: 10.9.0.1}],
              podAffinity: {}}",
        ));
        assert_eq!(
            got,
            [
                "spec.ipVersion: ipVersion 6 does not match subnet 10.6.0.0/16; write 4 or leave it out",
                "spec.ips[0]: invalid ip range \"10.6.0.10-10.6.0.1\": start 10.6.0.10 is after end 10.6.0.1",
                "spec.ips[1]: 10.7.0.1 is outside subnet 10.6.0.0/16",
                "spec.ips[2]: invalid ip range \"10.6.0.0/24\": CIDR notation is not allowed here, write start-end",
                "spec.excludeIPs[0]: invalid ip range \"nonsense\": \"nonsense\" is not an IP address",
                "spec.gateway: \"10.6.0.300\" is not an IP address",
                "spec.vlan: 5000 is not a VLAN ID: use 0 to 4094",
                "spec.routes[0].dst: 0.0.0.0/0 is the default route: set spec.gateway instead",
                "spec.routes[1].gw: 10.9.0.1 is outside subnet 10.6.0.0/16",
                "spec.podAffinity: an empty selector is not allowed here; remove it or add matchLabels/matchExpressions",
            ]
        );
    }

    #[test]
    fn a_missing_or_non_canonical_subnet_is_refused() {
        assert_eq!(
            messages(pool("{ips: [10.6.0.1]}")),
            ["spec.subnet: required: write the subnet in CIDR form, for example 10.6.0.0/16"]
        );
        assert_eq!(
            messages(pool("{subnet: 10.6.1.0/16}")),
            ["spec.subnet: subnet 10.6.1.0/16 is not in canonical form: write 10.6.0.0/16"]
        );
        assert_eq!(
            messages(pool("{subnet: 10.6.0.0/16, ipVersion: 5}")),
            [
                "spec.ipVersion: 5 is not an IP version: write 4 or 6, or leave it out to infer it from spec.subnet"
            ]
        );
    }

    #[test]
    fn the_gateway_may_sit_in_ips_only_when_excluded() {
        assert_eq!(
            messages(pool(
                "{subnet: 10.6.0.0/16, ips: [10.6.0.1-10.6.0.10], gateway: 10.6.0.1}"
            )),
            [
                "spec.ips[0]: 10.6.0.1-10.6.0.10 contains the gateway 10.6.0.1: add the gateway to excludeIPs or remove it from ips"
            ]
        );
        let ok = pool(
            "{subnet: 10.6.0.0/16, ips: [10.6.0.1-10.6.0.10], excludeIPs: [10.6.0.1], gateway: 10.6.0.1}",
        )
        .unwrap();
        assert_eq!(ok.total_count(), 9);
        assert!(!ok.allocatable().contains("10.6.0.1".parse().unwrap()));
        assert_eq!(
            messages(pool("{subnet: 10.6.0.0/16, gateway: 10.7.0.1}")),
            ["spec.gateway: 10.7.0.1 is outside subnet 10.6.0.0/16"]
        );
    }

    #[test]
    fn routes_are_checked_for_family_and_duplicates() {
        assert_eq!(
            messages(pool(
                "{subnet: 10.6.0.0/16, routes: [{dst: 10.8.0.0/16, gw: 10.6.0.1}, {dst: 10.8.1.0/16, gw: 10.6.0.2}, {dst: 'fd00::/64', gw: 10.6.0.1}]}"
            )),
            [
                "spec.routes[1].dst: a route to 10.8.0.0/16 is already listed; keep one",
                "spec.routes[2].dst: fd00::/64 is not of the pool's IP family",
            ]
        );
        let p = pool("{subnet: 10.6.0.0/16, routes: [{dst: 10.8.0.0/16, gw: 10.6.0.1}]}").unwrap();
        assert_eq!(p.routes()[0].dst.to_string(), "10.8.0.0/16");
    }

    #[test]
    fn node_name_wins_over_node_affinity() {
        let p =
            pool("{subnet: 10.6.0.0/16, nodeName: [n1], nodeAffinity: {matchLabels: {zone: '6'}}}").unwrap();
        let zone6 = Labels::from([("zone".to_string(), "6".to_string())]);
        assert!(p.node().admits("n1", &Labels::new()));
        assert!(!p.node().admits("n2", &zone6));
        let p = pool("{subnet: 10.6.0.0/16, nodeAffinity: {matchLabels: {zone: '6'}}}").unwrap();
        assert!(p.node().admits("n2", &zone6));
        assert!(!p.node().admits("n1", &Labels::new()));
    }

    #[test]
    fn updates_keep_subnet_and_version_and_in_use_addresses() {
        let old = object(
            "p",
            "{subnet: 10.6.0.0/16, ipVersion: 4, ips: [10.6.0.10-10.6.0.20]}",
        );
        let new = object(
            "p",
            "{subnet: 10.7.0.0/16, ipVersion: 4, ips: [10.7.0.10-10.7.0.20]}",
        );
        let in_use = [("10.6.0.10".parse().unwrap(), "pod default/a".to_string())];
        let got: Vec<String> = validate_update(&old, &new, &in_use)
            .unwrap_err()
            .violations
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "spec.subnet: cannot change from 10.6.0.0/16 to 10.7.0.0/16; create a new pool instead",
                "spec.ips: 10.6.0.10 is in use by pod default/a; keep it in ips and out of excludeIPs until it is released",
            ]
        );
        let excluded = object(
            "p",
            "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.20], excludeIPs: [10.6.0.10]}",
        );
        assert!(validate_update(&old, &excluded, &in_use).is_err());
        let grown = object("p", "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.30]}");
        assert_eq!(validate_update(&old, &grown, &in_use).unwrap().total_count(), 21);
    }

    #[test]
    fn reserved_ips_are_validated_and_merged() {
        let reserved = |name: &str, spec: &str| -> SpiderReservedIP {
            serde_yaml_ng::from_str(&format!(
                "{{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderReservedIP, metadata: {{name: {name}}}, spec: {spec}}}"
            ))
            .unwrap()
        };
        let mut all = ReservedIps::default();
        all.add(&reserved("a", "{ips: [10.6.168.61, 10.6.168.63-10.6.168.64]}"))
            .unwrap();
        all.add(&reserved("b", "{ipVersion: 6, ips: ['fd00::1']}"))
            .unwrap();
        assert_eq!(all.of(IpVersion::V4).len(), 3);
        let err = all
            .add(&reserved("c", "{ips: [10.6.168.64-10.6.168.70, 'fd00::2']}"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "SpiderReservedIP c is invalid: spec.ips[1]: fd00::2 is not an IPv4 range like the rest of the object; spec.ips: 10.6.168.64 are already reserved by another SpiderReservedIP"
        );
        assert_eq!(
            all.of(IpVersion::V4).len(),
            3,
            "a refused object reserves nothing"
        );
        assert!(all.add(&reserved("d", "{ips: []}")).is_err());
    }
}
