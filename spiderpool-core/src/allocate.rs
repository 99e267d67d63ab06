//! The allocation engine: one [`Request`] in, one [`Plan`] out.

use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;

use crate::annotations::{
    AnnotationError, POD_IPPOOLS, POD_ROUTES, parse_pod_ippools, parse_pod_routes, route_off_link,
};
use crate::block::BlockView;
use crate::candidates::{
    self, CandidateSource, InterfaceSelection, PoolCandidate, Rejection, Selection, SelectionError, Trial,
    Verdict,
};
use crate::catalog::{CatalogEntry, PoolCatalog};
use crate::pool::InvalidObject;
use crate::pool::{Pool, PoolRoute};
use crate::range::{IpVersion, address_value};
use crate::request::Request;
use crate::state::{AllocationState, Change, HeldAddress, OwnerKey};
use crate::subnet::Subnet;

/// An address given to an interface, with what the interface needs to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedAddress {
    /// The pool it came from.
    pub pool: String,
    /// The address.
    pub address: IpAddr,
    /// The pool's subnet: the address's prefix length and on-link network.
    pub subnet: Subnet,
    /// The pool's gateway.
    pub gateway: Option<IpAddr>,
    /// The pool's routes.
    pub routes: Vec<PoolRoute>,
}

impl fmt::Display for AssignedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} from {}",
            self.address,
            self.subnet.prefix_len(),
            self.pool
        )
    }
}

/// The addresses of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddresses {
    /// The interface.
    pub interface: String,
    /// Its addresses, IPv4 first.
    pub addresses: Vec<AssignedAddress>,
    /// Whether the interface carries the pod's default route, through its pools' gateways.
    pub default_route: bool,
    /// The routes the pod's `ipam.spidernet.io/routes` annotation gives the interface, each
    /// through a next hop within one of its subnets.
    pub routes: Vec<PoolRoute>,
}

/// What an allocation decided: the addresses per interface and the changes to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where the candidates came from; `None` when the addresses were already held.
    pub source: Option<CandidateSource>,
    /// Every interface the operation covers, the requested one among them. With the
    /// `ipam.spidernet.io/ippools` annotation, that is every interface it lists.
    pub interfaces: Vec<InterfaceAddresses>,
    /// The changes to write atomically. For a replay, none, or the moves of the records to a
    /// new sandbox of the same pod.
    pub changes: Vec<Change>,
    /// The candidates tried per interface and family, up to the chosen one.
    pub trials: Vec<Trial>,
}

impl Plan {
    /// The addresses of one interface.
    pub fn interface(&self, name: &str) -> Option<&InterfaceAddresses> {
        self.interfaces.iter().find(|entry| entry.interface == name)
    }

    /// Whether the request was answered from addresses already held (a retried ADD, or a new
    /// sandbox of the same pod). Its only changes then move the records to the new sandbox.
    pub fn is_replay(&self) -> bool {
        self.source.is_none()
    }
}

/// Why a request gets no addresses. Nothing is to be written in any case.
///
/// `E` is the error of the [`AllocationState`] read: `Infallible`, the default, for
/// [`crate::InMemoryState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError<E = Infallible> {
    /// Candidates could not be listed, or a candidate is invalid.
    #[error(transparent)]
    Selection(#[from] SelectionError),
    /// Every candidate of some interface and family was rejected or full.
    #[error(transparent)]
    NoPoolAvailable(Box<Unavailable>),
    /// The owner holds an address in a pool that is no longer defined.
    #[error(
        "{who} already holds {address} for {interface} in pool {pool}, which is no longer defined; restore the pool or release the address"
    )]
    HeldInMissingPool {
        /// Who asked.
        who: String,
        /// The interface.
        interface: String,
        /// The pool.
        pool: String,
        /// The address held.
        address: IpAddr,
    },
    /// The owner holds an address in a pool that fails validation now.
    #[error(
        "{who} already holds {address} for {interface} in pool {pool}, which is invalid now: {error}; fix the pool or release the address"
    )]
    HeldInInvalidPool {
        /// Who asked.
        who: String,
        /// The interface.
        interface: String,
        /// The pool.
        pool: String,
        /// The address held.
        address: IpAddr,
        /// Why the pool is invalid.
        error: Box<InvalidObject>,
    },
    /// The pod's routes annotation cannot be read, or names a next hop outside the subnets
    /// of its interface: nothing is allocated.
    #[error(transparent)]
    Routes(AnnotationError),
    /// The allocation state could not be read: nothing was decided.
    #[error("reading the allocation state failed: {0}")]
    State(#[source] E),
}

/// Every candidate of the interfaces and families that could not be served, with reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no pool can serve {who} on node {node}: {}; free addresses, or add a pool that serves this node and name it", failed.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | "))]
pub struct Unavailable {
    /// Who asked.
    pub who: String,
    /// The node.
    pub node: String,
    /// Each interface and family that failed, with every candidate and its reason.
    pub failed: Vec<Trial>,
}

/// What [`explain`] found: every candidate with its verdict, and what an allocation would do.
/// `E` is the error of the [`AllocationState`] read, as in [`AllocateError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation<E = Infallible> {
    /// Every candidate of every interface and family, with its verdict, up to a failed read of
    /// the state.
    pub trials: Vec<Trial>,
    /// The plan an allocation would make now, or why it would fail.
    pub outcome: Result<Plan, AllocateError<E>>,
}

/// Decides the addresses for a request, changing nothing.
///
/// For each interface and family, candidates are tried in order and the first that accepts
/// the request and has a free address wins. Dual-stack and multi-interface requests are all
/// or nothing: any failure means no change at all. A request whose owner already holds
/// addresses for the interface gets them again, with no change (idempotency per owner and
/// interface). Within a pool, the address is the first free one after the pool's cursor,
/// wrapping around, so a just-released address is not reused at once. A query of `state` that
/// fails ends the decision with [`AllocateError::State`].
///
/// ```
/// use spiderpool_core::*;
/// let docs = parse_documents("
/// {apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {name: test-ippool-6},
///  spec: {subnet: 10.6.0.0/16, ips: [10.6.168.60-10.6.168.69], gateway: 10.6.0.1, nodeName: [controller-node-1]}}
/// ---
/// {apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {name: test-ippool-7},
///  spec: {subnet: 10.7.0.0/16, ips: [10.7.168.60-10.7.168.69], gateway: 10.7.0.1, nodeName: [worker-node-1]}}
/// ").unwrap();
/// let catalog = PoolCatalog::from_documents(&docs);
/// let mut state = InMemoryState::new();
///
/// let mut request = Request::new("c1", "eth0");
/// request.pod.annotations.insert(
///     annotations::POD_IPPOOL.into(),
///     r#"{"ipv4": ["test-ippool-6", "test-ippool-7"]}"#.into(),
/// );
/// request.node.name = "worker-node-1".into();
///
/// let plan = allocate(&catalog, &state, &request).unwrap();
/// let eth0 = plan.interface("eth0").unwrap();
/// assert_eq!(eth0.addresses[0].to_string(), "10.7.168.60/16 from test-ippool-7");
/// state.apply(&plan.changes).unwrap();
///
/// // Asking again returns the same address and changes nothing.
/// let again = allocate(&catalog, &state, &request).unwrap();
/// assert!(again.is_replay());
/// assert_eq!(again.interface("eth0"), plan.interface("eth0"));
/// ```
pub fn allocate<S: AllocationState + ?Sized>(
    catalog: &PoolCatalog,
    state: &S,
    request: &Request,
) -> Result<Plan, AllocateError<S::Error>> {
    allocate_with(catalog, state, request, None)
}

/// [`allocate`]; in a cluster (`blocks`), pools allocating from blocks hand out addresses from
/// the blocks of the request's node first ([`crate::block`]).
pub(crate) fn allocate_with<S: AllocationState + ?Sized>(
    catalog: &PoolCatalog,
    state: &S,
    request: &Request,
    blocks: Option<&BlockView>,
) -> Result<Plan, AllocateError<S::Error>> {
    Engine {
        catalog,
        state,
        request,
        explain: false,
        blocks,
    }
    .run()
    .1
}

/// Evaluates every candidate of a request, and what [`allocate`] would do now, changing
/// nothing: the answer to "why does this pod get this address, or none?".
pub fn explain<S: AllocationState + ?Sized>(
    catalog: &PoolCatalog,
    state: &S,
    request: &Request,
) -> Explanation<S::Error> {
    let (trials, outcome) = Engine {
        catalog,
        state,
        request,
        explain: true,
        blocks: None,
    }
    .run();
    Explanation { trials, outcome }
}

/// The changes that release what `owner` holds: on one interface, or on all when `interface`
/// is `None`. Empty when nothing is held, so releasing twice is harmless.
///
/// ```
/// use spiderpool_core::{release, InMemoryState, OwnerKey};
/// let state = InMemoryState::new();
/// // In memory the state's error is `Infallible`: `Ok` is the only pattern.
/// let Ok(changes) = release(&state, &OwnerKey::Container("gone".into()), None);
/// assert!(changes.is_empty());
/// ```
pub fn release<S: AllocationState + ?Sized>(
    state: &S,
    owner: &OwnerKey,
    interface: Option<&str>,
) -> Result<Vec<Change>, S::Error> {
    Ok(state
        .held_by(owner)?
        .into_iter()
        .filter(|held| interface.is_none_or(|name| held.holder.interface() == name))
        .map(|held| Change::Release {
            pool: held.pool,
            address: held.address,
            holder: held.holder,
        })
        .collect())
}

/// The changes a DEL of `request` asks for: the addresses its owner holds for the request's
/// interface through this container, and for every interface of an
/// `ipam.spidernet.io/ippools` annotation whose first interface is the one being deleted.
/// Records that a newer sandbox of the same pod has taken over stay. Fails only when the state
/// cannot be read: an unreadable annotation releases the one interface.
///
/// ```
/// use spiderpool_core::*;
/// let docs = parse_documents("{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool,
///   metadata: {name: p}, spec: {subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.20]}}").unwrap();
/// let catalog = PoolCatalog::from_documents(&docs);
/// let mut state = InMemoryState::new();
/// let mut first = Request::new("sandbox-1", "eth0");
/// first.pod.uid = Some("uid-1".into());
/// first.pod.annotations.insert(annotations::POD_IPPOOL.into(), r#"{"ipv4": ["p"]}"#.into());
/// state.apply(&allocate(&catalog, &state, &first).unwrap().changes).unwrap();
///
/// // The pod's sandbox is re-created: the new one keeps the address.
/// let mut second = first.clone();
/// second.container_id = "sandbox-2".into();
/// state.apply(&allocate(&catalog, &state, &second).unwrap().changes).unwrap();
///
/// // The old sandbox's DEL comes late and releases nothing; the new one's releases.
/// let Ok(late) = release_attachment(&state, &first);
/// assert!(late.is_empty());
/// let Ok(current) = release_attachment(&state, &second);
/// assert_eq!(current.len(), 1);
/// ```
pub fn release_attachment<S: AllocationState + ?Sized>(
    state: &S,
    request: &Request,
) -> Result<Vec<Change>, S::Error> {
    Ok(
        attachment_addresses(state, request, &attachment_interfaces(request))?
            .into_iter()
            .map(|held| Change::Release {
                pool: held.pool,
                address: held.address,
                holder: held.holder,
            })
            .collect(),
    )
}

/// The interfaces a DEL of `request` ends: the request's own, or every interface of an
/// `ipam.spidernet.io/ippools` annotation whose first interface it is (they were allocated
/// together). An unreadable annotation ends the one interface.
///
/// ```
/// use spiderpool_core::{Request, annotations, attachment_interfaces};
/// let mut request = Request::new("c1", "eth0");
/// request.pod.annotations.insert(annotations::POD_IPPOOLS.into(),
///     r#"[{"interface": "eth0", "ipv4": ["a"]}, {"interface": "net1", "ipv4": ["b"]}]"#.into());
/// assert_eq!(attachment_interfaces(&request), ["eth0", "net1"]);
/// ```
pub fn attachment_interfaces(request: &Request) -> Vec<String> {
    let listed = request
        .pod
        .annotations
        .get(POD_IPPOOLS)
        .and_then(|value| parse_pod_ippools(value).ok())
        .filter(|entries| {
            entries
                .first()
                .is_some_and(|first| first.interface == request.interface)
        });
    match listed {
        Some(entries) => entries.into_iter().map(|entry| entry.interface).collect(),
        None => vec![request.interface.clone()],
    }
}

/// What the attachment of `request` holds on `interfaces`: its owner's addresses held through
/// this container; or, when the request carries no pod UID (a DEL or CHECK without
/// `CNI_ARGS`), whatever this container holds on them.
pub fn attachment_addresses<S: AllocationState + ?Sized>(
    state: &S,
    request: &Request,
    interfaces: &[String],
) -> Result<Vec<HeldAddress>, S::Error> {
    let ours = |held: &HeldAddress| {
        interfaces.contains(&held.holder.interface()) && held.holder.container_id() == request.container_id
    };
    let owned: Vec<HeldAddress> = state
        .held_by(&request.owner())?
        .into_iter()
        .filter(ours)
        .collect();
    if !owned.is_empty() || request.pod.uid.as_deref().is_some_and(|uid| !uid.is_empty()) {
        return Ok(owned);
    }
    Ok(state
        .held_by_container(&request.container_id)?
        .into_iter()
        .filter(ours)
        .collect())
}

/// The changes a CNI GC asks for: every held address whose attachment (container ID and
/// interface) is not among `valid`.
///
/// ```
/// use spiderpool_core::{collect_garbage, HeldAddress, Holder, OwnerKey};
/// let held = |container: &str| HeldAddress {
///     pool: "p".into(),
///     address: "10.6.0.10".parse().unwrap(),
///     holder: Holder::new(&OwnerKey::Container(container.into()), "eth0", None, container),
/// };
/// let valid = [("c1".to_string(), "eth0".to_string())];
/// assert!(collect_garbage([held("c1")], &valid).is_empty());
/// assert_eq!(collect_garbage([held("c2")], &valid).len(), 1);
/// ```
pub fn collect_garbage(
    held: impl IntoIterator<Item = HeldAddress>,
    valid: &[(String, String)],
) -> Vec<Change> {
    let valid: std::collections::BTreeSet<(&str, &str)> = valid
        .iter()
        .map(|(container, interface)| (container.as_str(), interface.as_str()))
        .collect();
    held.into_iter()
        .filter(|held| {
            let (container, interface) = (held.holder.container_id(), held.holder.interface());
            !valid.contains(&(container.as_str(), interface.as_str()))
        })
        .map(|held| Change::Release {
            pool: held.pool,
            address: held.address,
            holder: held.holder,
        })
        .collect()
}

struct Engine<'a, S: ?Sized> {
    catalog: &'a PoolCatalog,
    state: &'a S,
    request: &'a Request,
    explain: bool,
    /// In a cluster: the blocks that pools managed in blocks allocate from.
    blocks: Option<&'a BlockView>,
}

impl<S: AllocationState + ?Sized> Engine<'_, S> {
    fn run(&self) -> (Vec<Trial>, Result<Plan, AllocateError<S::Error>>) {
        let (trials, plan) = self.decide();
        let plan = plan.and_then(|plan| with_pod_routes(plan, self.request).map_err(AllocateError::Routes));
        (trials, plan)
    }

    fn decide(&self) -> (Vec<Trial>, Result<Plan, AllocateError<S::Error>>) {
        let held = match self.state.held_by(&self.request.owner()) {
            Ok(held) => held,
            Err(error) => return (Vec::new(), Err(AllocateError::State(error))),
        };
        let holds_requested = held
            .iter()
            .any(|h| h.holder.interface() == self.request.interface);
        let selection = match candidates::select(self.catalog, self.request) {
            Ok(selection) => Some(selection),
            // A retried request is answered from what is held, whatever the pools say now.
            Err(_) if holds_requested => None,
            Err(error) => return (Vec::new(), Err(error.into())),
        };
        if holds_requested {
            let trials = match (&selection, self.explain) {
                (Some(selection), true) => match self.held_trials(selection) {
                    Ok(trials) => trials,
                    Err(error) => return (Vec::new(), Err(AllocateError::State(error))),
                },
                _ => Vec::new(),
            };
            return (trials, self.replay(&held, selection.as_ref()));
        }
        let selection = selection.expect("selection failures returned above");
        let mut trials = Vec::new();
        let mut failed = Vec::new();
        let mut changes = Vec::new();
        let mut interfaces = Vec::new();
        for selected in &selection.interfaces {
            let already: Vec<&HeldAddress> = held
                .iter()
                .filter(|h| h.holder.interface() == selected.interface)
                .collect();
            if !already.is_empty() {
                // Another interface of a multi-interface request, served earlier.
                match self.held_addresses(selected, &already) {
                    Ok(entry) => interfaces.push(entry),
                    Err(error) => return (trials, Err(error)),
                }
                if self.explain {
                    match self.held_trials_of(selected) {
                        Ok(held_trials) => trials.extend(held_trials),
                        Err(error) => return (trials, Err(AllocateError::State(error))),
                    }
                }
                continue;
            }
            let mut addresses = Vec::new();
            for (version, names) in &selected.families {
                let trial = match self.try_candidates(&selected.interface, *version, names, &changes, true) {
                    Ok(trial) => trial,
                    Err(error) => return (trials, Err(error)),
                };
                let chosen = trial
                    .candidates
                    .iter()
                    .find_map(|candidate| match candidate.verdict {
                        Verdict::Chosen { address } => Some((candidate.pool.as_str(), address)),
                        _ => None,
                    });
                match chosen {
                    Some((pool_name, address)) => {
                        let pool = self
                            .catalog
                            .pool(pool_name)
                            .expect("a chosen pool is in the catalog");
                        addresses.push(assigned(pool, address));
                        changes.push(Change::Allocate {
                            pool: pool_name.to_owned(),
                            address,
                            holder: self.request.holder(&selected.interface),
                        });
                    }
                    None => failed.push(trial.clone()),
                }
                trials.push(trial);
            }
            interfaces.push(InterfaceAddresses {
                interface: selected.interface.clone(),
                addresses,
                default_route: selected.default_route,
                routes: Vec::new(),
            });
        }
        if !failed.is_empty() {
            let unavailable = Unavailable {
                who: self.request.who(),
                node: self.request.node.name.clone(),
                failed,
            };
            return (trials, Err(AllocateError::NoPoolAvailable(Box::new(unavailable))));
        }
        changes.extend(self.transfers(held.iter()));
        let mut plan = Plan {
            source: Some(selection.source),
            interfaces,
            changes,
            trials: Vec::new(),
        };
        if self.explain {
            (trials, Ok(plan))
        } else {
            plan.trials = trials;
            (Vec::new(), Ok(plan))
        }
    }

    /// The verdicts of every interface of a request that is already served. Nothing is chosen:
    /// pools that could serve show their next free address.
    fn held_trials(&self, selection: &Selection) -> Result<Vec<Trial>, S::Error> {
        let mut trials = Vec::new();
        for selected in &selection.interfaces {
            trials.extend(self.held_trials_of(selected)?);
        }
        Ok(trials)
    }

    /// Families whose candidates cannot be evaluated show no verdict; a failed read of the
    /// state fails them all.
    fn held_trials_of(&self, selected: &InterfaceSelection) -> Result<Vec<Trial>, S::Error> {
        selected
            .families
            .iter()
            .filter_map(|(version, names)| {
                match self.try_candidates(&selected.interface, *version, names, &[], false) {
                    Ok(trial) => Some(Ok(trial)),
                    Err(AllocateError::State(error)) => Some(Err(error)),
                    Err(_) => None,
                }
            })
            .collect()
    }

    /// Tries the candidates of one interface and family, in order.
    fn try_candidates(
        &self,
        interface: &str,
        version: IpVersion,
        names: &[String],
        pending: &[Change],
        choose: bool,
    ) -> Result<Trial, AllocateError<S::Error>> {
        let mut trial = Trial {
            interface: interface.to_owned(),
            version,
            candidates: Vec::new(),
        };
        // An interface that already holds addresses has nothing to choose.
        let mut chosen = !choose;
        let unreadable = AllocateError::State;
        for (name, pattern) in candidates::expand(self.catalog, names, version) {
            let verdict = match candidates::evaluate(self.catalog, self.request, interface, version, name)? {
                Err(rejection) => Verdict::Rejected(rejection),
                Ok(pool) => match self.next_free(pool, pending).map_err(unreadable)? {
                    None => Verdict::Rejected(Rejection::Full {
                        allocated: match self.blocks.and_then(|view| view.allocated(pool.name())) {
                            Some(allocated) => allocated,
                            None => self.state.allocated_count(pool.name()).map_err(unreadable)?,
                        },
                        allocatable: pool.allocatable().len(),
                    }),
                    Some(address) if !chosen => {
                        chosen = true;
                        Verdict::Chosen { address }
                    }
                    Some(address) => Verdict::Usable { next_free: address },
                },
            };
            trial.candidates.push(PoolCandidate {
                pool: name.to_owned(),
                pattern: pattern.map(str::to_owned),
                verdict,
            });
            if chosen && !self.explain {
                break;
            }
        }
        Ok(trial)
    }

    /// The address an allocation from `pool` gets: from the node's blocks in a cluster,
    /// otherwise after the pool's cursor.
    fn next_free(&self, pool: &Pool, pending: &[Change]) -> Result<Option<IpAddr>, S::Error> {
        match self.blocks {
            Some(view) if view.manages(pool.name()) => {
                view.next_free(self.state, pool, &self.request.node.name, pending)
            }
            _ => next_free_besides(self.state, pool, pending),
        }
    }

    /// The plan for a request whose owner already holds addresses for the interface.
    fn replay(
        &self,
        held: &[HeldAddress],
        selection: Option<&Selection>,
    ) -> Result<Plan, AllocateError<S::Error>> {
        let mut interfaces: Vec<InterfaceAddresses> = Vec::new();
        for entry in held {
            let interface = entry.holder.interface();
            if interfaces.iter().any(|i| i.interface == interface) {
                continue;
            }
            let group: Vec<&HeldAddress> = held
                .iter()
                .filter(|h| h.holder.interface() == interface)
                .collect();
            let selected = selection
                .and_then(|s| s.interfaces.iter().find(|i| i.interface == interface))
                .cloned()
                .unwrap_or_else(|| InterfaceSelection {
                    interface: interface.clone(),
                    default_route: !self.request.network.clean_gateway,
                    families: Vec::new(),
                });
            interfaces.push(self.held_addresses(&selected, &group)?);
        }
        Ok(Plan {
            source: None,
            interfaces,
            changes: self.transfers(held.iter()),
            trials: Vec::new(),
        })
    }

    /// A new sandbox of the same pod takes its addresses over: the records follow it, so that
    /// a late DEL of the old sandbox releases nothing.
    fn transfers<'h>(&self, held: impl Iterator<Item = &'h HeldAddress>) -> Vec<Change> {
        held.filter_map(|entry| {
            let current = self.request.holder(&entry.holder.interface());
            (current != entry.holder).then(|| Change::Transfer {
                pool: entry.pool.clone(),
                address: entry.address,
                from: entry.holder.clone(),
                to: current,
            })
        })
        .collect()
    }

    fn held_addresses(
        &self,
        selected: &InterfaceSelection,
        held: &[&HeldAddress],
    ) -> Result<InterfaceAddresses, AllocateError<S::Error>> {
        let mut addresses = Vec::with_capacity(held.len());
        for entry in held {
            let pool = match self.catalog.get(&entry.pool) {
                Some(CatalogEntry::Valid(pool)) => pool,
                Some(CatalogEntry::Invalid { error, .. }) => {
                    return Err(AllocateError::HeldInInvalidPool {
                        who: self.request.who(),
                        interface: selected.interface.clone(),
                        pool: entry.pool.clone(),
                        address: entry.address,
                        error: Box::new(error.clone()),
                    });
                }
                None => {
                    return Err(AllocateError::HeldInMissingPool {
                        who: self.request.who(),
                        interface: selected.interface.clone(),
                        pool: entry.pool.clone(),
                        address: entry.address,
                    });
                }
            };
            addresses.push(assigned(pool, entry.address));
        }
        addresses.sort_by_key(|a| (IpVersion::of(a.address), a.address));
        Ok(InterfaceAddresses {
            interface: selected.interface.clone(),
            addresses,
            default_route: selected.default_route,
            routes: Vec::new(),
        })
    }
}

/// `plan` with the routes of the pod's `ipam.spidernet.io/routes` annotation on the interfaces
/// it serves (a route for another interface is that interface's call's), each next hop
/// checked to lie within a subnet of its interface's addresses.
fn with_pod_routes(mut plan: Plan, request: &Request) -> Result<Plan, AnnotationError> {
    let Some(value) = request.pod.annotations.get(POD_ROUTES) else {
        return Ok(plan);
    };
    for route in parse_pod_routes(value)? {
        let Some(entry) = plan
            .interfaces
            .iter_mut()
            .find(|i| i.interface == route.interface)
        else {
            continue;
        };
        if !entry.addresses.iter().any(|a| a.subnet.contains(route.gw)) {
            let subnets: Vec<Subnet> = entry.addresses.iter().map(|a| a.subnet).collect();
            return Err(route_off_link(value, &route, &subnets));
        }
        entry.routes.push(PoolRoute {
            dst: route.dst,
            gateway: route.gw,
        });
    }
    Ok(plan)
}

fn assigned(pool: &Pool, address: IpAddr) -> AssignedAddress {
    AssignedAddress {
        pool: pool.name().to_owned(),
        address,
        subnet: pool.subnet(),
        gateway: pool.gateway(),
        routes: pool.routes().to_vec(),
    }
}

/// The address the next allocation from `pool` gets: the first allocatable address after the
/// pool's cursor, wrapping around, that nobody holds. `None` when the pool is full.
///
/// Costs O(log n) per run of held addresses skipped, never O(pool size).
///
/// ```
/// use spiderpool_core::*;
/// let docs = parse_documents("{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool,
///   metadata: {name: p}, spec: {subnet: 10.0.0.0/8, ips: [10.0.0.1-10.255.255.254]}}").unwrap();
/// let catalog = PoolCatalog::from_documents(&docs);
/// let pool = catalog.pool("p").unwrap();
/// assert_eq!(next_free(&InMemoryState::new(), pool), Ok(Some("10.0.0.1".parse().unwrap())));
/// ```
pub fn next_free<S: AllocationState + ?Sized>(state: &S, pool: &Pool) -> Result<Option<IpAddr>, S::Error> {
    next_free_besides(state, pool, &[])
}

/// [`next_free`], also skipping addresses that `pending` changes allocate.
pub(crate) fn next_free_besides<S: AllocationState + ?Sized>(
    state: &S,
    pool: &Pool,
    pending: &[Change],
) -> Result<Option<IpAddr>, S::Error> {
    let version = pool.version();
    let cursor = state
        .cursor(pool.name())?
        .filter(|cursor| IpVersion::of(*cursor) == version)
        .map(address_value);
    next_free_within(state, pool, pending, (0, version.max_value()), cursor)
}

/// The first allocatable address of `pool` within `bounds` (inclusive values) after `cursor`,
/// wrapping around within the bounds, that nobody holds and `pending` does not allocate: the
/// search of the whole pool, and of one of its blocks.
pub(crate) fn next_free_within<S: AllocationState + ?Sized>(
    state: &S,
    pool: &Pool,
    pending: &[Change],
    (low, high): (u128, u128),
    cursor: Option<u128>,
) -> Result<Option<IpAddr>, S::Error> {
    let set = pool.allocatable();
    let version = pool.version();
    let start = cursor
        .and_then(|cursor| cursor.checked_add(1))
        .filter(|start| (low..=high).contains(start))
        .unwrap_or(low);
    let search = |mut from: u128, limit: u128| -> Result<Option<u128>, S::Error> {
        loop {
            let Some(candidate) = set.first_at_or_after(from).filter(|&c| c <= limit) else {
                return Ok(None);
            };
            let Some(unheld) = state.first_unheld_from(pool.name(), version.address(candidate))? else {
                return Ok(None);
            };
            let unheld = address_value(unheld);
            if unheld > limit {
                return Ok(None);
            }
            if !set.contains_value(unheld) {
                // The held run ends in a gap of the pool's addresses: continue after the gap.
                from = unheld;
                continue;
            }
            let taken = pending
                .iter()
                .any(|change| change.pool() == pool.name() && change.address() == version.address(unheld));
            if !taken {
                return Ok(Some(unheld));
            }
            let Some(next) = unheld.checked_add(1) else {
                return Ok(None);
            };
            from = next;
        }
    };
    let found = match search(start, high)? {
        Some(value) => Some(value),
        None if start > low => search(low, start - 1)?,
        None => None,
    };
    Ok(found.map(|value| version.address(value)))
}
