//! The naive reference model of allocation: per pool, a plain set of held addresses with their
//! holders and the last address allocated, and decisions made by brute force.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Bound;

use spiderpool_core::{
    AllocateError, CandidateSource, Holder, IpVersion, OwnerKey, Plan, PodRef, Rejection, Request,
    SelectionError, Trial, Verdict,
};

use crate::ops::{AnnotationKey, Ask, Families, Lists, Who};
use crate::scenario::{PoolFacts, Scenario, glob_matches};

/// What became of one candidate, as far as the model decides it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// Chosen, with this address.
    Chosen(IpAddr),
    /// Could serve, but an earlier candidate was chosen (explanations only).
    Usable(IpAddr),
    /// No pool of that name, or no pool matches the glob.
    NotFound,
    /// `spec.disable: true`.
    Disabled,
    /// A pool of the other family.
    WrongFamily,
    /// The node is not served.
    NodeNotMatched,
    /// The namespace is not served.
    NamespaceNotMatched,
    /// The pod's labels do not match `podAffinity`.
    PodNotMatched,
    /// The attachment is not in `multusName`.
    MultusNameNotMatched,
    /// No free address.
    Full {
        /// Addresses held in the pool.
        allocated: u64,
        /// Addresses it may hand out.
        allocatable: u128,
    },
    /// A verdict the scenario never calls for, as the core rendered it.
    Other(String),
}

/// The candidates tried for one interface and family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialView {
    /// The interface.
    pub interface: String,
    /// The family.
    pub version: IpVersion,
    /// Candidate name and what became of it, in trial order.
    pub candidates: Vec<(String, Seen)>,
}

impl TrialView {
    /// The view of a core [`Trial`].
    pub fn of(trial: &Trial) -> TrialView {
        TrialView {
            interface: trial.interface.clone(),
            version: trial.version,
            candidates: trial
                .candidates
                .iter()
                .map(|candidate| {
                    let seen = match &candidate.verdict {
                        Verdict::Chosen { address } => Seen::Chosen(*address),
                        Verdict::Usable { next_free } => Seen::Usable(*next_free),
                        Verdict::Rejected(Rejection::NotFound) => Seen::NotFound,
                        Verdict::Rejected(Rejection::Disabled) => Seen::Disabled,
                        Verdict::Rejected(Rejection::WrongFamily { .. }) => Seen::WrongFamily,
                        Verdict::Rejected(Rejection::NodeNotMatched { .. }) => Seen::NodeNotMatched,
                        Verdict::Rejected(Rejection::NamespaceNotMatched { .. }) => Seen::NamespaceNotMatched,
                        Verdict::Rejected(Rejection::PodNotMatched { .. }) => Seen::PodNotMatched,
                        Verdict::Rejected(Rejection::MultusNameNotMatched { .. }) => {
                            Seen::MultusNameNotMatched
                        }
                        Verdict::Rejected(Rejection::Full {
                            allocated,
                            allocatable,
                        }) => Seen::Full {
                            allocated: *allocated,
                            allocatable: *allocatable,
                        },
                        Verdict::Rejected(other) => Seen::Other(other.to_string()),
                    };
                    (candidate.pool.clone(), seen)
                })
                .collect(),
        }
    }
}

/// The addresses of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceView {
    /// The interface.
    pub interface: String,
    /// Whether it carries the default route.
    pub default_route: bool,
    /// Pool and address, IPv4 first, then by address.
    pub addresses: Vec<(String, IpAddr)>,
}

/// A successful allocation, as the model and the core can both express it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Where the candidates came from; `None` for a replay of held addresses.
    pub source: Option<CandidateSource>,
    /// Every interface of the answer, by name.
    pub interfaces: Vec<InterfaceView>,
    /// New allocations: pool, address, interface; sorted.
    pub changes: Vec<(String, IpAddr, String)>,
    /// Held addresses whose records move to the request's sandbox: pool, address, interface;
    /// sorted.
    pub transfers: Vec<(String, IpAddr, String)>,
    /// The candidates tried, in order.
    pub trials: Vec<TrialView>,
}

/// Why a request gets nothing, as far as the model tells refusals apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An annotation that names pools cannot be read.
    Annotation,
    /// The winning source does not list the interface.
    InterfaceNotListed,
    /// The winning source lists no pool for an interface.
    NoPoolsListed,
    /// A required family is not listed.
    FamilyNotListed,
    /// Nothing names a pool and there is no default pool.
    NoDefaultPool,
    /// Some interface and family found no candidate with room; the failed trials.
    NoPoolAvailable(Vec<TrialView>),
    /// Anything else, as the core rendered it.
    Other(String),
}

/// What a request comes to.
pub type Outcome = Result<Grant, Refusal>;

/// Sorts the parts of a grant whose order is not part of the contract.
fn normalize(mut grant: Grant) -> Grant {
    grant.interfaces.sort_by(|a, b| a.interface.cmp(&b.interface));
    for interface in &mut grant.interfaces {
        interface
            .addresses
            .sort_by_key(|(_, address)| (address.is_ipv6(), *address));
    }
    grant.changes.sort();
    grant.transfers.sort();
    grant
}

/// The model's view of what the core answered. `Err` describes an answer that is malformed
/// on its face (a change for another holder, a release in an allocation).
pub fn observe(request: &Request, result: &Result<Plan, AllocateError>) -> Result<Outcome, String> {
    let request_holder = |interface: &str| {
        Holder::new(
            &request.owner(),
            interface,
            request.pod_ref().as_ref(),
            &request.container_id,
        )
    };
    let plan = match result {
        Ok(plan) => plan,
        Err(error) => return Ok(Err(refusal_of(error))),
    };
    let mut changes = Vec::new();
    let mut transfers = Vec::new();
    for change in &plan.changes {
        match change {
            spiderpool_core::Change::Allocate {
                pool,
                address,
                holder,
            } => {
                if *holder != request_holder(&holder.interface()) {
                    return Err(format!(
                        "the plan allocates {address} for {holder:?}, not for the request"
                    ));
                }
                changes.push((pool.clone(), *address, holder.interface()));
            }
            spiderpool_core::Change::Transfer {
                pool,
                address,
                from,
                to,
            } => {
                if *to != request_holder(&to.interface()) || from.owner() != to.owner() || from == to {
                    return Err(format!(
                        "the plan moves {address} from {from:?} to {to:?}, not to the request's sandbox"
                    ));
                }
                transfers.push((pool.clone(), *address, to.interface()));
            }
            other => return Err(format!("an allocation plan releases: {other:?}")),
        }
    }
    let interfaces = plan
        .interfaces
        .iter()
        .map(|entry| InterfaceView {
            interface: entry.interface.clone(),
            default_route: entry.default_route,
            addresses: entry
                .addresses
                .iter()
                .map(|a| (a.pool.clone(), a.address))
                .collect(),
        })
        .collect();
    Ok(Ok(normalize(Grant {
        source: plan.source,
        interfaces,
        changes,
        transfers,
        trials: plan.trials.iter().map(TrialView::of).collect(),
    })))
}

/// The model's name for a core error.
pub fn refusal_of(error: &AllocateError) -> Refusal {
    match error {
        AllocateError::Selection(SelectionError::Annotation(_)) => Refusal::Annotation,
        AllocateError::Selection(SelectionError::InterfaceNotListed { .. }) => Refusal::InterfaceNotListed,
        AllocateError::Selection(SelectionError::NoPoolsListed { .. }) => Refusal::NoPoolsListed,
        AllocateError::Selection(SelectionError::FamilyNotListed { .. }) => Refusal::FamilyNotListed,
        AllocateError::Selection(SelectionError::NoDefaultPool) => Refusal::NoDefaultPool,
        AllocateError::NoPoolAvailable(unavailable) => {
            Refusal::NoPoolAvailable(unavailable.failed.iter().map(TrialView::of).collect())
        }
        other => Refusal::Other(other.to_string()),
    }
}

/// The interfaces a request covers, with candidate names per family, as the model reads the
/// sources of candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The winning source.
    pub source: CandidateSource,
    /// The interfaces, in order.
    pub interfaces: Vec<SelectedInterface>,
}

/// One interface of a [`Selection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedInterface {
    /// The interface.
    pub interface: String,
    /// Whether it carries the default route.
    pub default_route: bool,
    /// Candidate names per family, in the order tried.
    pub families: Vec<(IpVersion, Vec<String>)>,
}

/// The reference model: who holds what in each pool, and each pool's last allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// (pool index, address) to holder.
    pub held: BTreeMap<(usize, IpAddr), Holder>,
    /// Per pool index, the address allocated last.
    pub cursors: BTreeMap<usize, IpAddr>,
}

/// The holder the core must record for `who` on `interface`.
pub fn holder_of(who: Who, interface: &str) -> Holder {
    let who = who.normalized();
    let pod = who.uid().map(|_| PodRef {
        namespace: "default".into(),
        name: format!("pod-{}", who.slot),
    });
    Holder::new(&who.owner(), interface, pod.as_ref(), &who.container_id())
}

impl Model {
    /// The empty model.
    pub fn new() -> Model {
        Model::default()
    }

    /// How many addresses pool `pool` holds.
    pub fn count(&self, pool: usize) -> usize {
        self.held
            .range((pool, min_address())..)
            .take_while(|((p, _), _)| *p == pool)
            .count()
    }

    /// Every (pool, address, holder) of `owner`.
    pub fn held_by(&self, owner: &OwnerKey) -> Vec<(usize, IpAddr, Holder)> {
        self.held
            .iter()
            .filter(|(_, holder)| holder.is_owned_by(owner))
            .map(|(&(pool, address), holder)| (pool, address, holder.clone()))
            .collect()
    }

    /// The next address pool `pool` hands out, skipping `pending` allocations: the first allowed
    /// address strictly after the last one allocated that nobody holds, wrapping around to the
    /// lowest. Decided by walking the allowed set one address at a time.
    pub fn next_free(&self, scenario: &Scenario, pool: usize, pending: &[(usize, IpAddr)]) -> Option<IpAddr> {
        let allowed = &scenario.pools[pool].allowed;
        let free = |address: &&IpAddr| {
            !self.held.contains_key(&(pool, **address)) && !pending.contains(&(pool, **address))
        };
        match self.cursors.get(&pool) {
            None => allowed.iter().find(free).copied(),
            Some(cursor) => allowed
                .range((Bound::Excluded(*cursor), Bound::Unbounded))
                .find(free)
                .or_else(|| allowed.range(..=*cursor).find(free))
                .copied(),
        }
    }

    /// Why `pool` does not accept `ask` for `version`, capacity aside, checking in the order
    /// Spiderpool does: disabled, family, node, namespace, pod, attachment.
    pub fn rejection(facts: &PoolFacts, version: IpVersion, ask: &Ask) -> Option<Seen> {
        let namespace = ask.namespace_name();
        let attachment = ask.attachment_name();
        if facts.disabled {
            Some(Seen::Disabled)
        } else if facts.version != version {
            Some(Seen::WrongFamily)
        } else if !facts.serves(ask.node_index()) {
            Some(Seen::NodeNotMatched)
        } else if facts.namespaces.is_some_and(|names| !names.contains(&namespace)) {
            Some(Seen::NamespaceNotMatched)
        } else if facts.pod_app.is_some_and(|app| ask.app_label() != Some(app)) {
            Some(Seen::PodNotMatched)
        } else if facts
            .attachments
            .is_some_and(|names| !attachment.is_some_and(|a| names.contains(&a)))
        {
            Some(Seen::MultusNameNotMatched)
        } else {
            None
        }
    }

    /// Which source of candidates wins for `ask` and what it lists, after the family policy.
    pub fn select(&self, scenario: &Scenario, ask: &Ask) -> Result<Selection, Refusal> {
        let ask = ask.normalized();
        let requested = ask.interface.name();
        let malformed = ask.malformed.map(|m| m.key);
        let single = |source, lists: &Lists| Selection {
            source,
            interfaces: vec![SelectedInterface {
                interface: requested.to_string(),
                default_route: true,
                families: vec![
                    (IpVersion::V4, lists.ipv4_names()),
                    (IpVersion::V6, lists.ipv6_names()),
                ],
            }],
        };
        let selection = if malformed == Some(AnnotationKey::Ippools) {
            return Err(Refusal::Annotation);
        } else if let Some(entries) = &ask.ippools {
            let named = entries.iter().filter(|e| e.interface.is_some()).count();
            if entries.is_empty() || (named != 0 && named != entries.len()) {
                return Err(Refusal::Annotation);
            }
            let names: Vec<String> = entries
                .iter()
                .enumerate()
                .map(|(index, entry)| match (entry.interface, index) {
                    (Some(nic), _) => nic.name().to_string(),
                    (None, 0) => "eth0".to_string(),
                    (None, index) => format!("net{index}"),
                })
                .collect();
            if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
                return Err(Refusal::Annotation);
            }
            if !names.iter().any(|n| n == requested) {
                return Err(Refusal::InterfaceNotListed);
            }
            Selection {
                source: CandidateSource::PodIppools,
                interfaces: entries
                    .iter()
                    .zip(names)
                    .enumerate()
                    .map(|(index, (entry, name))| SelectedInterface {
                        interface: name,
                        default_route: index == 0 && !entry.clean_gateway,
                        families: vec![
                            (IpVersion::V4, entry.lists.ipv4_names()),
                            (IpVersion::V6, entry.lists.ipv6_names()),
                        ],
                    })
                    .collect(),
            }
        } else if malformed == Some(AnnotationKey::Ippool) {
            return Err(Refusal::Annotation);
        } else if let Some(ippool) = &ask.ippool {
            if ippool.interface.is_some_and(|nic| nic != ask.interface) {
                return Err(Refusal::InterfaceNotListed);
            }
            single(CandidateSource::PodIppool, &ippool.lists)
        } else if matches!(
            malformed,
            Some(AnnotationKey::NamespaceIpv4 | AnnotationKey::NamespaceIpv6)
        ) {
            return Err(Refusal::Annotation);
        } else if let Some(lists) = ask.namespace.as_ref().filter(|l| !l.is_empty()) {
            single(CandidateSource::NamespaceDefault, lists)
        } else if !ask.network.is_empty() {
            single(CandidateSource::NetworkDefault, &ask.network)
        } else {
            let names = |version| -> Vec<String> {
                scenario
                    .default_pools(version)
                    .into_iter()
                    .map(String::from)
                    .collect()
            };
            let (ipv4, ipv6) = (names(IpVersion::V4), names(IpVersion::V6));
            if ipv4.is_empty() && ipv6.is_empty() {
                return Err(Refusal::NoDefaultPool);
            }
            Selection {
                source: CandidateSource::ClusterDefault,
                interfaces: vec![SelectedInterface {
                    interface: requested.to_string(),
                    default_route: true,
                    families: vec![(IpVersion::V4, ipv4), (IpVersion::V6, ipv6)],
                }],
            }
        };
        let required: &[IpVersion] = match ask.families {
            Families::AsListed => &[],
            Families::Ipv4 => &[IpVersion::V4],
            Families::Ipv6 => &[IpVersion::V6],
            Families::DualStack => &IpVersion::ALL,
        };
        let mut selection = selection;
        for SelectedInterface { families, .. } in &mut selection.interfaces {
            if required.is_empty() {
                families.retain(|(_, names)| !names.is_empty());
                if families.is_empty() {
                    return Err(Refusal::NoPoolsListed);
                }
            } else {
                families.retain(|(version, _)| required.contains(version));
                if families.iter().any(|(_, names)| names.is_empty()) {
                    return Err(Refusal::FamilyNotListed);
                }
            }
        }
        Ok(selection)
    }

    /// The candidates of a list, globs replaced by the pools of the family they match (in
    /// name order, the glob itself when none), each name once.
    pub fn expand(scenario: &Scenario, names: &[String], version: IpVersion) -> Vec<String> {
        let mut expanded: Vec<String> = Vec::new();
        let mut push = |name: &str| {
            if !expanded.iter().any(|seen| seen == name) {
                expanded.push(name.to_string());
            }
        };
        for name in names {
            let matches: Vec<&str> = scenario
                .pools
                .iter()
                .filter(|p| p.version == version && glob_matches(name, p.name) == Some(true))
                .map(|p| p.name)
                .collect();
            match glob_matches(name, "") {
                None => push(name),
                Some(_) if matches.is_empty() => push(name),
                Some(_) => matches.into_iter().for_each(&mut push),
            }
        }
        expanded
    }

    /// What the core must answer to `ask` now.
    pub fn decide(&self, scenario: &Scenario, ask: &Ask) -> Outcome {
        let ask = ask.normalized();
        let owner = ask.who.owner();
        let held = self.held_by(&owner);
        let requested = ask.interface.name();
        if held.iter().any(|(_, _, holder)| holder.interface() == requested) {
            return Ok(self.replay(scenario, &ask, &held));
        }
        let selection = self.select(scenario, &ask)?;
        let mut pending: Vec<(usize, IpAddr)> = Vec::new();
        let mut grant = Grant {
            source: Some(selection.source),
            interfaces: Vec::new(),
            changes: Vec::new(),
            transfers: Vec::new(),
            trials: Vec::new(),
        };
        let mut failed = Vec::new();
        for SelectedInterface {
            interface,
            default_route,
            families,
        } in &selection.interfaces
        {
            let already: Vec<(String, IpAddr)> = held
                .iter()
                .filter(|(_, _, holder)| holder.interface() == *interface)
                .map(|(pool, address, _)| (scenario.pools[*pool].name.to_string(), *address))
                .collect();
            if !already.is_empty() {
                grant.interfaces.push(InterfaceView {
                    interface: interface.clone(),
                    default_route: *default_route,
                    addresses: already,
                });
                continue;
            }
            let mut addresses = Vec::new();
            for (version, names) in families {
                let mut trial = TrialView {
                    interface: interface.clone(),
                    version: *version,
                    candidates: Vec::new(),
                };
                let mut chosen = None;
                for name in Model::expand(scenario, names, *version) {
                    let seen = match scenario.pool(&name) {
                        None => Seen::NotFound,
                        Some((index, facts)) => match Model::rejection(facts, *version, &ask) {
                            Some(rejection) => rejection,
                            None => match self.next_free(scenario, index, &pending) {
                                None => Seen::Full {
                                    allocated: self.count(index) as u64,
                                    allocatable: facts.allowed.len() as u128,
                                },
                                Some(address) => {
                                    chosen = Some((index, address));
                                    Seen::Chosen(address)
                                }
                            },
                        },
                    };
                    trial.candidates.push((name, seen));
                    if chosen.is_some() {
                        break;
                    }
                }
                match chosen {
                    Some((pool, address)) => {
                        let name = scenario.pools[pool].name.to_string();
                        addresses.push((name.clone(), address));
                        grant.changes.push((name, address, interface.clone()));
                        pending.push((pool, address));
                    }
                    None => failed.push(trial.clone()),
                }
                grant.trials.push(trial);
            }
            grant.interfaces.push(InterfaceView {
                interface: interface.clone(),
                default_route: *default_route,
                addresses,
            });
        }
        if !failed.is_empty() {
            return Err(Refusal::NoPoolAvailable(failed));
        }
        // Every record another sandbox of the pod holds moves to this one.
        for (pool, address, holder) in &held {
            if *holder != holder_of(ask.who, &holder.interface()) {
                grant.transfers.push((
                    scenario.pools[*pool].name.to_string(),
                    *address,
                    holder.interface(),
                ));
            }
        }
        Ok(normalize(grant))
    }

    /// The answer to a request whose owner already holds addresses for the interface: every
    /// address the owner holds, no new allocation, and the records that another sandbox of the
    /// same pod holds move to this one.
    fn replay(&self, scenario: &Scenario, ask: &Ask, held: &[(usize, IpAddr, Holder)]) -> Grant {
        let selection = self.select(scenario, ask).ok();
        let mut interfaces: Vec<InterfaceView> = Vec::new();
        let mut transfers = Vec::new();
        for (pool, address, holder) in held {
            let entry = (scenario.pools[*pool].name.to_string(), *address);
            if *holder != holder_of(ask.who, &holder.interface()) {
                transfers.push((entry.0.clone(), *address, holder.interface()));
            }
            match interfaces.iter_mut().find(|i| i.interface == holder.interface()) {
                Some(view) => view.addresses.push(entry),
                None => interfaces.push(InterfaceView {
                    interface: holder.interface(),
                    default_route: selection
                        .as_ref()
                        .and_then(|s| s.interfaces.iter().find(|i| i.interface == holder.interface()))
                        .is_none_or(|i| i.default_route),
                    addresses: vec![entry],
                }),
            }
        }
        normalize(Grant {
            source: None,
            interfaces,
            changes: Vec::new(),
            transfers,
            trials: Vec::new(),
        })
    }

    /// Records a grant's allocations for `who`, moving each pool's cursor, and its transfers
    /// to `who`'s sandbox, leaving cursors.
    pub fn apply(&mut self, scenario: &Scenario, who: Who, grant: &Grant) {
        for (name, address, interface) in &grant.transfers {
            if let Some((pool, _)) = scenario.pool(name) {
                self.held.insert((pool, *address), holder_of(who, interface));
            }
        }
        // The cursor follows the order of allocation, which `changes` (sorted) lost.
        for trial in &grant.trials {
            for (name, seen) in &trial.candidates {
                if let (Seen::Chosen(address), Some((pool, _))) = (seen, scenario.pool(name)) {
                    self.held
                        .insert((pool, *address), holder_of(who, &trial.interface));
                    self.cursors.insert(pool, *address);
                }
            }
        }
    }

    /// Removes what `owner` holds, on `interface` or on all; returns what was removed as
    /// pool name, address and interface, sorted.
    pub fn release(
        &mut self,
        scenario: &Scenario,
        owner: &OwnerKey,
        interface: Option<&str>,
    ) -> Vec<(String, IpAddr, String)> {
        let gone: Vec<(usize, IpAddr, Holder)> = self
            .held_by(owner)
            .into_iter()
            .filter(|(_, _, holder)| interface.is_none_or(|name| holder.interface() == name))
            .collect();
        let mut released = Vec::new();
        for (pool, address, holder) in gone {
            self.held.remove(&(pool, address));
            released.push((scenario.pools[pool].name.to_string(), address, holder.interface()));
        }
        released.sort();
        released
    }
}

fn min_address() -> IpAddr {
    IpAddr::V4(0.into())
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
