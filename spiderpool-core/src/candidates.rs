//! Which pools a request may use, in which order, and why each one is accepted or rejected.

use std::fmt;
use std::net::IpAddr;

use crate::annotations::{
    self, AnnotationError, NAMESPACE_DEFAULT_IPV4, NAMESPACE_DEFAULT_IPV6, POD_IPPOOL, POD_IPPOOLS, PodIppool,
};
use crate::catalog::{CatalogEntry, PoolCatalog};
use crate::pool::{InvalidObject, Placement, Pool};
use crate::range::IpVersion;
use crate::request::{IpFamilies, Request};
use crate::selector::LabelSelector;

/// Where the candidate pools of a request came from. The first source present wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateSource {
    /// Pod annotation `ipam.spidernet.io/ippools` (pools per interface).
    PodIppools,
    /// Pod annotation `ipam.spidernet.io/ippool`.
    PodIppool,
    /// Namespace annotations `ipam.spidernet.io/default-ipv4-ippool` / `-ipv6-`.
    NamespaceDefault,
    /// Network config `ipam.default_ipv4_ippool` / `default_ipv6_ippool`.
    NetworkDefault,
    /// Every pool with `spec.default: true`, most specific affinity first, then by name.
    ClusterDefault,
}

impl fmt::Display for CandidateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CandidateSource::PodIppools => "pod annotation ipam.spidernet.io/ippools",
            CandidateSource::PodIppool => "pod annotation ipam.spidernet.io/ippool",
            CandidateSource::NamespaceDefault => "namespace default-ippool annotations",
            CandidateSource::NetworkDefault => "network config default_ipv4_ippool/default_ipv6_ippool",
            CandidateSource::ClusterDefault => "cluster default pools (spec.default: true)",
        })
    }
}

/// Why a candidate pool cannot serve the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No pool has this name (or no pool matches this glob).
    #[error("no such pool")]
    NotFound,
    /// The pool is being deleted.
    #[error("the pool is being deleted")]
    Terminating,
    /// `spec.disable: true`.
    #[error("the pool is disabled (spec.disable: true)")]
    Disabled,
    /// The pool is of the other family than the list naming it.
    #[error("the pool is {pool}, but it is listed for {wanted}")]
    WrongFamily {
        /// The pool's family.
        pool: IpVersion,
        /// The family of the list.
        wanted: IpVersion,
    },
    /// The node is not one the pool serves.
    #[error("{}", placement_text("node", node, rule, "nodeName", "nodeAffinity"))]
    NodeNotMatched {
        /// The request's node.
        node: String,
        /// The pool's rule.
        rule: Placement,
    },
    /// The namespace is not one the pool serves.
    #[error(
        "{}",
        placement_text("namespace", namespace, rule, "namespaceName", "namespaceAffinity")
    )]
    NamespaceNotMatched {
        /// The request's namespace.
        namespace: String,
        /// The pool's rule.
        rule: Placement,
    },
    /// The pod's labels do not match `podAffinity`.
    #[error("the pod's labels do not match podAffinity {}", Placement::Selected(.selector.clone()))]
    PodNotMatched {
        /// The pool's selector.
        selector: LabelSelector,
    },
    /// The attachment is not one the pool serves.
    #[error("{}", match attachment {
        Some(attachment) => format!("network attachment {attachment} is not in multusName [{}]", allowed.join(", ")),
        None => format!("the request names no network attachment, but multusName is [{}]", allowed.join(", ")),
    })]
    MultusNameNotMatched {
        /// The request's attachment, `namespace/name`.
        attachment: Option<String>,
        /// The pool's `multusName`.
        allowed: Vec<String>,
    },
    /// Every allocatable address is held.
    #[error("full: {allocated} of {allocatable} allocatable addresses in use")]
    Full {
        /// Addresses held.
        allocated: u64,
        /// Addresses the pool may hand out.
        allocatable: u128,
    },
}

fn placement_text(what: &str, name: &str, rule: &Placement, by_name: &str, by_labels: &str) -> String {
    match rule {
        Placement::Named(_) => format!("{what} {name} is not in {by_name} {rule}"),
        _ => format!("the labels of {what} {name} do not match {by_labels} {rule}"),
    }
}

/// The outcome for one candidate pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request gets this address from the pool.
    Chosen {
        /// The address.
        address: IpAddr,
    },
    /// The pool could serve, but an earlier candidate was chosen (only in explanations).
    Usable {
        /// The address the pool would hand out next.
        next_free: IpAddr,
    },
    /// The pool cannot serve the request.
    Rejected(Rejection),
}

/// A candidate pool with its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCandidate {
    /// The pool's name (the glob itself when no pool matches it).
    pub pool: String,
    /// The glob the pool was found by, when it was.
    pub pattern: Option<String>,
    /// The outcome.
    pub verdict: Verdict,
}

impl fmt::Display for PoolCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pattern, &self.verdict) {
            (Some(pattern), Verdict::Rejected(Rejection::NotFound)) => {
                write!(f, "{pattern}: no pool matches")
            }
            (_, Verdict::Rejected(rejection)) => write!(f, "{}: {rejection}", self.pool),
            (_, Verdict::Chosen { address }) => write!(f, "{}: chosen, {address}", self.pool),
            (_, Verdict::Usable { next_free }) => write!(f, "{}: usable, next free {next_free}", self.pool),
        }
    }
}

/// The candidates tried for one interface and family, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// The interface.
    pub interface: String,
    /// The family.
    pub version: IpVersion,
    /// Every candidate considered, in trial order.
    pub candidates: Vec<PoolCandidate>,
}

impl fmt::Display for Trial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.interface, self.version)?;
        if self.candidates.is_empty() {
            return f.write_str("no candidate pool");
        }
        for (index, candidate) in self.candidates.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{candidate}")?;
        }
        Ok(())
    }
}

/// Why candidates could not even be listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// An annotation that names pools cannot be read.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// The pools annotation does not list the interface being set up.
    #[error("interface {interface} is not listed in {origin} (it lists {}); add an entry for it", listed.join(", "))]
    InterfaceNotListed {
        /// The interface being set up.
        interface: String,
        /// The source that lists interfaces.
        origin: CandidateSource,
        /// The interfaces it lists.
        listed: Vec<String>,
    },
    /// The winning source lists no pool for the interface.
    #[error("{origin} names no pool for interface {interface}; name at least one pool there")]
    NoPoolsListed {
        /// The interface.
        interface: String,
        /// The source.
        origin: CandidateSource,
    },
    /// A required family has no pools in the winning source.
    #[error("{origin} names no {version} pool for interface {interface}, but {version} is required; add one")]
    FamilyNotListed {
        /// The interface.
        interface: String,
        /// The family missing.
        version: IpVersion,
        /// The source.
        origin: CandidateSource,
    },
    /// Nothing names a pool and no pool is a cluster default.
    #[error(
        "no pool is named for this pod and no pool is a cluster default; annotate the pod with {POD_IPPOOL}, set default_ipv4_ippool in the network config, or set spec.default: true on a pool"
    )]
    NoDefaultPool,
    /// A candidate failed validation; allocation stops rather than fall back to another pool.
    #[error("candidate pool {} for {interface} {version} is invalid, and allocation stops rather than use a pool of another zone: {error}", error.name)]
    InvalidCandidate {
        /// The interface.
        interface: String,
        /// The family.
        version: IpVersion,
        /// Why the pool is invalid.
        error: InvalidObject,
    },
}

/// The interfaces a request covers, each with its candidate pool names per family.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    pub source: CandidateSource,
    pub interfaces: Vec<InterfaceSelection>,
}

#[derive(Debug, Clone)]
pub(crate) struct InterfaceSelection {
    pub interface: String,
    pub default_route: bool,
    pub families: Vec<(IpVersion, Vec<String>)>,
}

/// Finds the winning source of candidates and the pool names it lists.
pub(crate) fn select(catalog: &PoolCatalog, request: &Request) -> Result<Selection, SelectionError> {
    let annotation = |key: &str| request.pod.annotations.get(key);
    let namespace_annotation = |key: &str| request.namespace.annotations.get(key);
    let single = |source, ipv4: Vec<String>, ipv6: Vec<String>, clean_gateway: bool| Selection {
        source,
        interfaces: vec![InterfaceSelection {
            interface: request.interface.clone(),
            default_route: !clean_gateway,
            families: vec![(IpVersion::V4, ipv4), (IpVersion::V6, ipv6)],
        }],
    };
    let selection = if let Some(value) = annotation(POD_IPPOOLS) {
        let entries = annotations::parse_pod_ippools(value)?;
        if !entries.iter().any(|entry| entry.interface == request.interface) {
            return Err(SelectionError::InterfaceNotListed {
                interface: request.interface.clone(),
                origin: CandidateSource::PodIppools,
                listed: entries.into_iter().map(|entry| entry.interface).collect(),
            });
        }
        Selection {
            source: CandidateSource::PodIppools,
            interfaces: entries
                .into_iter()
                .enumerate()
                .map(|(index, entry)| InterfaceSelection {
                    // One default route per pod: through its first interface.
                    default_route: index == 0 && !entry.cleangateway,
                    interface: entry.interface,
                    families: vec![(IpVersion::V4, entry.ipv4), (IpVersion::V6, entry.ipv6)],
                })
                .collect(),
        }
    } else if let Some(value) = annotation(POD_IPPOOL) {
        let parsed = PodIppool::parse(value)?;
        if let Some(interface) = parsed.interface.filter(|i| *i != request.interface) {
            return Err(SelectionError::InterfaceNotListed {
                interface: request.interface.clone(),
                origin: CandidateSource::PodIppool,
                listed: vec![interface],
            });
        }
        single(
            CandidateSource::PodIppool,
            parsed.ipv4,
            parsed.ipv6,
            request.network.clean_gateway,
        )
    } else {
        let read = |key: &'static str| {
            namespace_annotation(key)
                .map(|value| annotations::parse_pool_list(key, value))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let (ns_ipv4, ns_ipv6) = (read(NAMESPACE_DEFAULT_IPV4)?, read(NAMESPACE_DEFAULT_IPV6)?);
        let network = &request.network;
        let clean = network.clean_gateway;
        if !ns_ipv4.is_empty() || !ns_ipv6.is_empty() {
            single(CandidateSource::NamespaceDefault, ns_ipv4, ns_ipv6, clean)
        } else if !network.default_ipv4.is_empty() || !network.default_ipv6.is_empty() {
            let (ipv4, ipv6) = (network.default_ipv4.clone(), network.default_ipv6.clone());
            single(CandidateSource::NetworkDefault, ipv4, ipv6, clean)
        } else {
            let defaults = |version| catalog.default_pools(version).to_vec();
            let (ipv4, ipv6) = (defaults(IpVersion::V4), defaults(IpVersion::V6));
            if ipv4.is_empty() && ipv6.is_empty() {
                return Err(SelectionError::NoDefaultPool);
            }
            single(CandidateSource::ClusterDefault, ipv4, ipv6, clean)
        }
    };
    apply_family_policy(selection, request.families)
}

/// Keeps the families the request asks for, and insists that required ones are listed.
fn apply_family_policy(mut selection: Selection, families: IpFamilies) -> Result<Selection, SelectionError> {
    let required: &[IpVersion] = match families {
        IpFamilies::AsListed => &[],
        IpFamilies::Ipv4 => &[IpVersion::V4],
        IpFamilies::Ipv6 => &[IpVersion::V6],
        IpFamilies::DualStack => &IpVersion::ALL,
    };
    let source = selection.source;
    for interface in &mut selection.interfaces {
        if required.is_empty() {
            interface.families.retain(|(_, names)| !names.is_empty());
            if interface.families.is_empty() {
                return Err(SelectionError::NoPoolsListed {
                    interface: interface.interface.clone(),
                    origin: source,
                });
            }
            continue;
        }
        interface
            .families
            .retain(|(version, _)| required.contains(version));
        if let Some((version, _)) = interface.families.iter().find(|(_, names)| names.is_empty()) {
            return Err(SelectionError::FamilyNotListed {
                interface: interface.interface.clone(),
                version: *version,
                origin: source,
            });
        }
    }
    Ok(selection)
}

/// Whether a name is a glob, as Spiderpool decides: `*` or `?`, or both `[` and `]`.
fn is_glob(name: &str) -> bool {
    name.contains(['*', '?']) || (name.contains('[') && name.contains(']'))
}

/// The listed names with globs expanded in place (matches by name), duplicates dropped.
pub(crate) fn expand<'a>(
    catalog: &'a PoolCatalog,
    names: &'a [String],
    version: IpVersion,
) -> Vec<(&'a str, Option<&'a str>)> {
    let mut expanded: Vec<(&str, Option<&str>)> = Vec::with_capacity(names.len());
    let push = |expanded: &mut Vec<(&'a str, Option<&'a str>)>, name: &'a str, pattern| {
        if !expanded.iter().any(|(seen, _)| *seen == name) {
            expanded.push((name, pattern));
        }
    };
    for name in names {
        if !is_glob(name) {
            push(&mut expanded, name, None);
            continue;
        }
        // Go's filepath.Match negates a class with '^', the glob crate with '!'.
        let translated = name.replace("[^", "[!");
        let matches = glob::Pattern::new(&translated)
            .map(|pattern| {
                let prefix_end = name.find(['*', '?', '[']).unwrap_or(name.len());
                catalog.matching(&pattern, &name[..prefix_end], version)
            })
            .unwrap_or_default();
        if matches.is_empty() {
            push(&mut expanded, name, Some(name));
        }
        for matched in matches {
            push(&mut expanded, matched, Some(name));
        }
    }
    expanded
}

/// Checks one candidate against the request, in Spiderpool's order: existence, validity,
/// deletion, `disable`, family, node, namespace, pod, attachment. Capacity is checked by the
/// caller, which has the allocation state.
pub(crate) fn evaluate<'a>(
    catalog: &'a PoolCatalog,
    request: &Request,
    interface: &str,
    version: IpVersion,
    name: &str,
) -> Result<Result<&'a Pool, Rejection>, SelectionError> {
    let pool = match catalog.get(name) {
        None => return Ok(Err(Rejection::NotFound)),
        Some(CatalogEntry::Invalid { error, .. }) => {
            return Err(SelectionError::InvalidCandidate {
                interface: interface.to_owned(),
                version,
                error: error.clone(),
            });
        }
        Some(CatalogEntry::Valid(pool)) => pool,
    };
    let rejection = if pool.is_terminating() {
        Rejection::Terminating
    } else if pool.is_disabled() {
        Rejection::Disabled
    } else if pool.version() != version {
        Rejection::WrongFamily {
            pool: pool.version(),
            wanted: version,
        }
    } else if !pool.node().admits(&request.node.name, &request.node.labels) {
        Rejection::NodeNotMatched {
            node: request.node.name.clone(),
            rule: pool.node().clone(),
        }
    } else if !pool
        .namespace()
        .admits(&request.pod.namespace, &request.namespace.labels)
    {
        Rejection::NamespaceNotMatched {
            namespace: request.pod.namespace.clone(),
            rule: pool.namespace().clone(),
        }
    } else if let Some(selector) = pool.pod_affinity().filter(|s| !s.matches(&request.pod.labels)) {
        Rejection::PodNotMatched {
            selector: selector.clone(),
        }
    } else if !pool.multus_names().is_empty()
        && !request.network.attachment.as_ref().is_some_and(|attachment| {
            pool.multus_names()
                .iter()
                .any(|entry| attachment.is_named_by(entry))
        })
    {
        Rejection::MultusNameNotMatched {
            attachment: request.network.attachment.as_ref().map(ToString::to_string),
            allowed: pool.multus_names().to_vec(),
        }
    } else {
        return Ok(Ok(pool));
    };
    Ok(Err(rejection))
}
