//! The small, fixed cluster the operation sequences run against: seven pools of both
//! families, three nodes, small ranges so that pools fill up and requests get refused.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use arbitrary::Arbitrary;
use spiderpool_core::{IpVersion, Labels, PoolCatalog, address_value, parse_documents};

/// The nodes of the scenario, by index: `node-a` (label `zone=a`), `node-b` (`zone=b`) and
/// `node-c` (`zone=c`, served by no zone pool).
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The labels of node `index`: `zone` is the letter after `node-`.
pub fn node_labels(index: usize) -> Labels {
    let zone = NODES[index].trim_start_matches("node-");
    Labels::from([("zone".to_string(), zone.to_string())])
}

/// How many pod slots requests are made for. Slots `0..POD_SLOTS_WITH_UID` are Kubernetes pods
/// with a UID; the others are bare containers identified by their container ID.
pub const POD_SLOTS: u8 = 6;

/// Pod slots below this one carry a pod UID.
pub const POD_SLOTS_WITH_UID: u8 = 4;

/// The names a request can list, by index: the seven pools in name order, a name no pool has,
/// and five globs (see [`glob_matches`]).
pub const REF_NAMES: [&str; 13] = [
    "v4-off",
    "v4-shared",
    "v4-zone-a",
    "v4-zone-b",
    "v6-shared",
    "v6-zone-a",
    "v6-zone-b",
    "missing-pool",
    "v4-zone-*",
    "*-shared",
    "v?-zone-b",
    "none-*",
    "v[^4]-shared",
];

/// Whether `glob`, one of the globs of [`REF_NAMES`], matches `name`, decided by plain string
/// tests instead of a glob engine. `None` when `glob` is not one of them.
pub fn glob_matches(glob: &str, name: &str) -> Option<bool> {
    Some(match glob {
        "v4-zone-*" => name.starts_with("v4-zone-"),
        "*-shared" => name.ends_with("-shared"),
        "v?-zone-b" => name.len() == 9 && name.starts_with('v') && name[2..] == *"-zone-b",
        "none-*" => name.starts_with("none-"),
        // Go's negated class, which the glob crate writes `[!4]`.
        "v[^4]-shared" => {
            name.len() == 9
                && name.starts_with('v')
                && !name[1..].starts_with('4')
                && name.ends_with("-shared")
        }
        _ => return None,
    })
}

/// The sizes of the pools' `ips` ranges; each byte gives a size from 1 to 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Arbitrary)]
pub struct Shape {
    /// One byte per pool, in [`REF_NAMES`] order; the size is `1 + byte % 6`.
    pub sizes: [u8; 7],
}

impl Default for Shape {
    /// Every pool with four addresses in `ips`.
    fn default() -> Shape {
        Shape { sizes: [3; 7] }
    }
}

impl Shape {
    /// The number of addresses in the `ips` range of pool `index`.
    pub fn size(&self, index: usize) -> u128 {
        1 + u128::from(self.sizes[index] % 6)
    }
}

/// What the reference model knows of a pool, computed by brute force from the text of its
/// spec, without the core's range and set types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFacts {
    /// The pool's name.
    pub name: &'static str,
    /// Its family.
    pub version: IpVersion,
    /// Its subnet, as written.
    pub subnet: &'static str,
    /// `spec.ips`, as written.
    pub ips: Vec<String>,
    /// `spec.excludeIPs`, as written.
    pub exclude_ips: Vec<String>,
    /// `spec.gateway`.
    pub gateway: Option<IpAddr>,
    /// Indices into [`NODES`] of the nodes the pool serves.
    pub nodes: Vec<usize>,
    /// The namespaces the pool serves (`namespaceName`); `None` for all.
    pub namespaces: Option<&'static [&'static str]>,
    /// The `app` label `podAffinity` requires; `None` for any pod.
    pub pod_app: Option<&'static str>,
    /// The attachments (`namespace/name`) the pool serves (`multusName`); `None` for all.
    pub attachments: Option<&'static [&'static str]>,
    /// `spec.default`.
    pub default: bool,
    /// `spec.disable`.
    pub disabled: bool,
    /// `ips` minus `excludeIPs`: what Spiderpool counts as `totalIPCount`.
    pub listed: BTreeSet<IpAddr>,
    /// `ips` minus `excludeIPs`, reserved IPs and the gateway: what may be handed out.
    pub allowed: BTreeSet<IpAddr>,
}

impl PoolFacts {
    /// Whether the pool serves node `index` (ignoring `disable` and capacity).
    pub fn serves(&self, node: usize) -> bool {
        self.nodes.contains(&node)
    }
}

/// The scenario: its YAML, the catalog the core builds from it, and the model's facts.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The pool sizes it was built with.
    pub shape: Shape,
    /// The `SpiderIPPool` and `SpiderReservedIP` documents.
    pub yaml: String,
    /// What the core made of `yaml`.
    pub catalog: PoolCatalog,
    /// The pools, in name order (the order of the first seven [`REF_NAMES`]).
    pub pools: Vec<PoolFacts>,
    /// The reserved addresses.
    pub reserved: BTreeSet<IpAddr>,
}

/// Every address from `start` to `end`, both included, one by one.
fn expand(start: IpAddr, end: IpAddr) -> Vec<IpAddr> {
    let version = IpVersion::of(start);
    if IpVersion::of(end) != version {
        return Vec::new();
    }
    (address_value(start)..=address_value(end))
        .filter_map(|value| version.address_at(value))
        .collect()
}

/// The addresses a range text (`a` or `a-b`) stands for, read with the standard library only.
fn addresses_of(text: &str) -> Vec<IpAddr> {
    let (start, end) = text.split_once('-').unwrap_or((text, text));
    match (start.parse(), end.parse()) {
        (Ok(start), Ok(end)) => expand(start, end),
        _ => Vec::new(),
    }
}

/// `base + offset` in the family of `base`.
fn offset(base: &str, by: u128) -> IpAddr {
    let base: IpAddr = base.parse().expect("scenario addresses parse");
    IpVersion::of(base)
        .address_at(address_value(base) + by)
        .expect("a small offset stays in the family")
}

struct Blueprint {
    name: &'static str,
    subnet: &'static str,
    first: &'static str,
    /// Offsets from `first` of excluded addresses.
    exclude: &'static [u128],
    gateway: Option<GatewayAt>,
    node_rule: &'static str,
    nodes: &'static [usize],
    /// Further spec lines, and what they mean to the model.
    extra: &'static str,
    namespaces: Option<&'static [&'static str]>,
    pod_app: Option<&'static str>,
    attachments: Option<&'static [&'static str]>,
    default: bool,
    disabled: bool,
}

enum GatewayAt {
    /// Outside `ips`, written as is.
    Fixed(&'static str),
    /// At this offset from `first`, which `exclude` also lists.
    Offset(u128),
}

const BLUEPRINTS: [Blueprint; 7] = [
    Blueprint {
        name: "v4-off",
        subnet: "10.9.0.0/24",
        first: "10.9.0.10",
        exclude: &[],
        gateway: None,
        node_rule: "",
        nodes: &[0, 1, 2],
        extra: "",
        namespaces: None,
        pod_app: None,
        attachments: None,
        default: true,
        disabled: true,
    },
    Blueprint {
        name: "v4-shared",
        subnet: "255.255.255.0/24",
        first: "255.255.255.250",
        exclude: &[],
        gateway: None,
        node_rule: "",
        nodes: &[0, 1, 2],
        extra: "",
        namespaces: None,
        pod_app: None,
        attachments: None,
        default: true,
        disabled: false,
    },
    Blueprint {
        name: "v4-zone-a",
        subnet: "10.6.0.0/16",
        first: "10.6.168.60",
        exclude: &[1],
        gateway: Some(GatewayAt::Fixed("10.6.0.1")),
        node_rule: "nodeName: [node-a]",
        nodes: &[0],
        extra: "",
        namespaces: None,
        pod_app: None,
        attachments: None,
        default: false,
        disabled: false,
    },
    Blueprint {
        name: "v4-zone-b",
        subnet: "10.7.0.0/16",
        first: "10.7.168.60",
        exclude: &[2],
        gateway: Some(GatewayAt::Offset(2)),
        node_rule: "nodeAffinity: {matchLabels: {zone: b}}",
        nodes: &[1],
        extra: "namespaceName: [default]",
        namespaces: Some(&["default"]),
        pod_app: None,
        attachments: None,
        default: false,
        disabled: false,
    },
    Blueprint {
        name: "v6-shared",
        subnet: "ffff:ffff:ffff:ffff::/64",
        first: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffa",
        exclude: &[],
        gateway: None,
        node_rule: "",
        nodes: &[0, 1, 2],
        extra: "",
        namespaces: None,
        pod_app: None,
        attachments: None,
        default: true,
        disabled: false,
    },
    Blueprint {
        name: "v6-zone-a",
        subnet: "fd00:6::/64",
        first: "fd00:6::a",
        exclude: &[1],
        gateway: Some(GatewayAt::Fixed("fd00:6::1")),
        node_rule: "nodeName: [node-a]",
        nodes: &[0],
        extra: "podAffinity: {matchLabels: {app: web}}",
        namespaces: None,
        pod_app: Some("web"),
        attachments: None,
        default: false,
        disabled: false,
    },
    Blueprint {
        name: "v6-zone-b",
        subnet: "fd00:7::/64",
        first: "fd00:7::a",
        exclude: &[],
        gateway: None,
        node_rule: "nodeAffinity: {matchExpressions: [{key: zone, operator: In, values: [b, x]}]}",
        nodes: &[1],
        extra: "multusName: [kube-system/macvlan-conf]",
        namespaces: None,
        pod_app: None,
        attachments: Some(&["kube-system/macvlan-conf"]),
        default: false,
        disabled: false,
    },
];

/// Reserved addresses: the third address of `v4-shared` and of `v6-shared`, and one address
/// outside every pool. The shared pools end at the top of their family when they have six
/// addresses, so the cursor wraps at the last address there is.
const RESERVED: [&str; 3] = [
    "255.255.255.252",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc",
    "10.6.200.1",
];

impl Scenario {
    /// The scenario with every pool of [`Shape::default`] size.
    pub fn standard() -> Scenario {
        Scenario::new(&Shape::default())
    }

    /// Builds the scenario for `shape`: the YAML, the catalog and the brute-force facts.
    ///
    /// Every cluster default pool is unrestricted, so the core's default order (most specific
    /// first, then by name) is name order.
    pub fn new(shape: &Shape) -> Scenario {
        let mut yaml = String::new();
        let mut pools = Vec::new();
        let reserved: BTreeSet<IpAddr> = RESERVED
            .iter()
            .map(|a| a.parse().expect("reserved parses"))
            .collect();
        for (index, blueprint) in BLUEPRINTS.iter().enumerate() {
            let size = shape.size(index);
            let last = offset(blueprint.first, size - 1);
            let ips = if size == 1 {
                vec![blueprint.first.to_string()]
            } else {
                vec![format!("{}-{last}", blueprint.first)]
            };
            let exclude_ips: Vec<String> = blueprint
                .exclude
                .iter()
                .map(|&by| offset(blueprint.first, by).to_string())
                .collect();
            let gateway = blueprint.gateway.as_ref().map(|at| match at {
                GatewayAt::Fixed(text) => text.parse().expect("gateway parses"),
                GatewayAt::Offset(by) => offset(blueprint.first, *by),
            });
            let version = match blueprint.first.parse::<IpAddr>().expect("first parses") {
                IpAddr::V4(_) => IpVersion::V4,
                IpAddr::V6(_) => IpVersion::V6,
            };
            let excluded: BTreeSet<IpAddr> = exclude_ips.iter().flat_map(|t| addresses_of(t)).collect();
            let listed: BTreeSet<IpAddr> = ips
                .iter()
                .flat_map(|t| addresses_of(t))
                .filter(|a| !excluded.contains(a))
                .collect();
            let allowed = listed
                .iter()
                .copied()
                .filter(|a| !reserved.contains(a) && Some(*a) != gateway)
                .collect();

            let quote = |items: &[String]| {
                items
                    .iter()
                    .map(|i| format!("'{i}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = write!(
                yaml,
                "---\napiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: {}\nspec:\n  subnet: '{}'\n  ips: [{}]\n",
                blueprint.name,
                blueprint.subnet,
                quote(&ips)
            );
            if !exclude_ips.is_empty() {
                let _ = writeln!(yaml, "  excludeIPs: [{}]", quote(&exclude_ips));
            }
            if let Some(gateway) = gateway {
                let _ = writeln!(yaml, "  gateway: '{gateway}'");
            }
            for line in [blueprint.node_rule, blueprint.extra] {
                if !line.is_empty() {
                    let _ = writeln!(yaml, "  {line}");
                }
            }
            if blueprint.default {
                yaml.push_str("  default: true\n");
            }
            if blueprint.disabled {
                yaml.push_str("  disable: true\n");
            }
            pools.push(PoolFacts {
                name: blueprint.name,
                version,
                subnet: blueprint.subnet,
                ips,
                exclude_ips,
                gateway,
                nodes: blueprint.nodes.to_vec(),
                namespaces: blueprint.namespaces,
                pod_app: blueprint.pod_app,
                attachments: blueprint.attachments,
                default: blueprint.default,
                disabled: blueprint.disabled,
                listed,
                allowed,
            });
        }
        for (version, name) in [(IpVersion::V4, "reserved-v4"), (IpVersion::V6, "reserved-v6")] {
            let ips: Vec<String> = RESERVED
                .iter()
                .filter(|a| (a.contains(':')) == (version == IpVersion::V6))
                .map(|a| format!("'{a}'"))
                .collect();
            let _ = write!(
                yaml,
                "---\napiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderReservedIP\nmetadata:\n  name: {name}\nspec:\n  ips: [{}]\n",
                ips.join(", ")
            );
        }
        let documents = parse_documents(&yaml).expect("the scenario YAML parses");
        let catalog = PoolCatalog::from_documents(&documents);
        if let Some(error) = catalog.invalid().next() {
            panic!("the scenario refuses an object: {error}\n{yaml}");
        }
        Scenario {
            shape: *shape,
            yaml,
            catalog,
            pools,
            reserved,
        }
    }

    /// The facts of pool `name`, if the scenario has it.
    pub fn pool(&self, name: &str) -> Option<(usize, &PoolFacts)> {
        self.pools.iter().enumerate().find(|(_, p)| p.name == name)
    }

    /// The cluster default pools of a family, in the order the core must try them.
    pub fn default_pools(&self, version: IpVersion) -> Vec<&'static str> {
        self.pools
            .iter()
            .filter(|p| p.default && p.version == version)
            .map(|p| p.name)
            .collect()
    }
}
