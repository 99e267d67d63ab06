//! The cluster mode's allocation round: a batch of CNI calls served against API objects
//! written with compare-and-swap, decided here, pure, and carried out by an adapter.
//!
//! The state of record is in the API server. Each pool's status holds the records of its
//! addresses ([`crate::pool_status`]); each pod's `SpiderEndpoint` ([`EndpointSpec`]) is the
//! commit record of its allocations. A round reads what its calls need into a [`Snapshot`],
//! and [`decide`]s: the pool status writes to make, in pool name order, then the endpoint
//! writes, and each call's outcome, which stands once the writes it needs have succeeded.
//!
//! The rules, each written once, here:
//!
//! - **The endpoint is the commit point.** An ADD writes the pools, then the endpoint. A
//!   record of a pod that its endpoint does not list is left over from an allocation that did
//!   not finish (a conflict on the second pool of a dual-stack pair, a crash between two
//!   writes): the pod's next ADD releases it in the same write that allocates again, so a
//!   retried ADD never keeps half an allocation.
//! - **StatefulSet pods keep their addresses.** A pod of a StatefulSet re-created under its
//!   name takes over its predecessor's records (the endpoint names the predecessor), and the
//!   DEL of a pod that its StatefulSet will bring back keeps them.
//! - **Compensation.** When a batch gives up on an ADD after some of its pool writes
//!   succeeded, a last round releases what the pod holds that its endpoint does not commit, so
//!   that a pod that got an error holds nothing half-written.
//! - **The endpoint merge.** The endpoint after an ADD keeps the pod's other interfaces; a DEL
//!   removes only what it released, and the entries of its own sandbox.
//!
//! [`Batch`] is the protocol as a state machine, in the manner of a sans-IO protocol crate:
//! it says what to read, what to write and how long to back off, and is told what happened.
//! The Kubernetes adapter does the IO; the tests drive the same machine against a simulated API
//! server that interleaves several agents and a garbage collector.
//!
//! Calls of one pod are served by one batch at a time (the node agent serves its node's calls
//! one batch after another): the rules above assume no other writer changes a pod's records
//! but its own calls and the garbage collector, whose grace period outlasts any round.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::allocate::{AllocateError, Plan, allocate_with, release_attachment};
use crate::block::{
    Block, BlockEntry, BlockNeeds, BlockSpec, BlockView, IndexedBlock, PoolBlocks, block_name, block_range,
    block_spec,
};
use crate::catalog::PoolCatalog;
use crate::endpoint::{EndpointInterface, EndpointSpec, STATEFULSET, statefulset_keeps};
use crate::gc::{self, ClusterView, GcPolicy, Sweep};
use crate::memory::InMemoryState;
use crate::model::{IPPoolStatus, SpiderIPPool, SpiderReservedIP};
use crate::range::{IpVersion, address_value};
use crate::request::{NamespaceFacts, NodeFacts, PodContext, PodRecord, RuntimeFacts, Seconds};
use crate::selector::Labels;
use crate::state::{AllocationState, Change, HeldAddress, Holder, OwnerKey, PodRef};
use crate::status::{StatusStateError, held_status, pool_status, state_from_statuses};

/// An object as read, with the `resourceVersion` a compare-and-swap write of it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The version read.
    pub version: String,
    /// The object.
    pub object: T,
}

/// One call a round serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A CNI ADD: allocate for the attachment, or answer what it holds.
    Add(RuntimeFacts),
    /// A CNI DEL: release what the attachment holds.
    Del(RuntimeFacts),
    /// After a batch gave up on an ADD: release what the pod `uid` holds that its endpoint
    /// does not commit.
    Abandon {
        /// The pod.
        pod: PodRef,
        /// Its UID.
        uid: String,
        /// The blocks the batch wrote (or may have): where what it left is.
        blocks: BTreeSet<String>,
    },
    /// A sweep of the garbage collector at `now` ([`crate::gc::sweep`]); `suspects` is what
    /// the previous sweep saw uncommitted.
    Sweep {
        /// The collector's clock.
        now: Seconds,
        /// Its grace periods.
        policy: GcPolicy,
        /// The previous sweep's suspects.
        suspects: BTreeMap<(String, IpAddr), Seconds>,
        /// The blocks the previous sweep saw empty, since when.
        empty_blocks: BTreeMap<String, Seconds>,
    },
}

/// The pools as read: the catalog the engine chooses from, the allocation state their
/// statuses record, and each status with its version.
#[derive(Debug, Clone, Default)]
pub struct Pools {
    /// The pools and reserved addresses, validated.
    pub catalog: PoolCatalog,
    /// Who holds which address.
    pub state: InMemoryState,
    statuses: BTreeMap<String, Versioned<IPPoolStatus>>,
    uids: BTreeMap<String, String>,
}

impl Pools {
    /// Reads pool and reserved-IP objects as listed from the API server (with
    /// `metadata.resourceVersion` and `status`). A status that is not readable as allocation
    /// records is an error naming the pool and the field.
    pub fn read(
        pools: Vec<SpiderIPPool>,
        reserved: Vec<SpiderReservedIP>,
    ) -> Result<Pools, StatusStateError> {
        let empty = IPPoolStatus::default();
        let state = state_from_statuses(pools.iter().map(|pool| {
            (
                pool.metadata.name.as_str(),
                pool.status.as_ref().unwrap_or(&empty),
            )
        }))?;
        let statuses = pools
            .iter()
            .map(|pool| {
                let read = Versioned {
                    version: pool.metadata.resource_version.clone().unwrap_or_default(),
                    object: pool.status.clone().unwrap_or_default(),
                };
                (pool.metadata.name.clone(), read)
            })
            .collect();
        let uids = pools
            .iter()
            .filter_map(|pool| Some((pool.metadata.name.clone(), pool.metadata.uid.clone()?)))
            .collect();
        Ok(Pools {
            catalog: PoolCatalog::new(pools, reserved),
            state,
            statuses,
            uids,
        })
    }

    /// Whether `pool` keeps its records in `status.allocatedIPs`, as this project wrote them
    /// before blocks: it is served so, writing its status, until its last record is released
    /// or the collector moves them into blocks. Every other pool allocates from blocks.
    pub fn keeps_records_in_status(&self, pool: &str) -> bool {
        self.statuses
            .get(pool)
            .is_some_and(|read| read.object.allocated_ips.is_some())
    }

    /// Whether `block` was written for an earlier pool of its name (one deleted and created
    /// again): its records and cursor are void, and the block is reclaimed as if unclaimed.
    pub fn is_stale(&self, pool: &str, pool_uid: &str) -> bool {
        self.uids.get(pool).is_some_and(|uid| uid != pool_uid)
    }

    /// The UID of `pool`, when read.
    fn uid(&self, pool: &str) -> &str {
        self.uids.get(pool).map_or("", String::as_str)
    }

    /// Adds the records of `blocks` to the state (those of pools that keep their records in
    /// their status are not theirs): the whole allocation state, for listings and checks.
    pub fn add_blocks<'a>(&mut self, blocks: impl IntoIterator<Item = &'a Block>) {
        for block in blocks {
            if !self.keeps_records_in_status(&block.pool) && !self.is_stale(&block.pool, &block.pool_uid) {
                add_block_records(&mut self.state, block);
            }
        }
    }

    /// Every address the statuses read hold (not the blocks'), with its holder, in pool then
    /// address order.
    pub fn held(&self) -> Vec<HeldAddress> {
        held_in(&self.state, self.statuses.keys().map(String::as_str))
    }

    /// The status `pool` gets from `state`: the engine's [`pool_status`] for a valid pool; for
    /// a pool the engine refuses (still holding addresses), the records and count, keeping its
    /// total as it was read.
    fn status(&self, pool: &str, state: &InMemoryState) -> IPPoolStatus {
        let Ok(status) = match self.catalog.pool(pool) {
            Some(valid) => pool_status(valid, state),
            None => {
                let total = self
                    .statuses
                    .get(pool)
                    .and_then(|read| read.object.total_ip_count);
                held_status(pool, state, total)
            }
        };
        status
    }
}

/// What a round has read. Entries map to `None` when the object does not exist; a key that is
/// absent was not read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The pools, when read. [`decide`] takes them: its writes make them stale.
    pub pools: Option<Pools>,
    /// Pods by namespace and name.
    pub pods: BTreeMap<PodRef, Option<PodRecord>>,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Option<NamespaceFacts>>,
    /// Nodes' labels by node name.
    pub nodes: BTreeMap<String, Option<Labels>>,
    /// Endpoints by the namespace and name of their pod. [`decide`] takes them.
    pub endpoints: BTreeMap<PodRef, Option<Versioned<EndpointSpec>>>,
    /// The replica count of StatefulSets, by namespace and name.
    pub statefulsets: BTreeMap<PodRef, Option<u32>>,
    /// Blocks by name, when read. [`decide`] takes them.
    pub blocks: BTreeMap<String, Option<Block>>,
    /// Nodes whose every block is in `blocks`.
    pub node_blocks: BTreeSet<String>,
    /// Pools whose every block was listed, without records. [`decide`] takes them.
    pub block_index: BTreeMap<String, Vec<IndexedBlock>>,
    /// Whether every block of the cluster is in `blocks`.
    pub all_blocks: bool,
    /// Pods whose endpoint must be read: a create of it found one.
    pub endpoint_wanted: BTreeSet<PodRef>,
    /// Whether every pod, node, endpoint and StatefulSet of the cluster was listed, so that a
    /// missing one does not exist (what the garbage collector reads, after the pools and
    /// blocks).
    pub everything: bool,
}

impl Snapshot {
    /// Adds what `read` holds, replacing what was read before of the same objects.
    pub fn merge(&mut self, read: Snapshot) {
        if read.pools.is_some() {
            self.pools = read.pools;
        }
        self.pods.extend(read.pods);
        self.namespaces.extend(read.namespaces);
        self.nodes.extend(read.nodes);
        self.endpoints.extend(read.endpoints);
        self.statefulsets.extend(read.statefulsets);
        self.blocks.extend(read.blocks);
        self.node_blocks.extend(read.node_blocks);
        self.block_index.extend(read.block_index);
        self.all_blocks |= read.all_blocks;
        self.endpoint_wanted.extend(read.endpoint_wanted);
        self.everything |= read.everything;
    }

    /// Whether the records read (statuses and blocks) hold any of the pod `uid`'s.
    fn holds(&self, uid: &str) -> bool {
        let owner = OwnerKey::Pod(uid.to_owned());
        let in_status = self.pools.as_ref().is_some_and(|pools| {
            let Ok(held) = pools.state.held_by(&owner);
            !held.is_empty()
        });
        in_status
            || self.blocks.values().flatten().any(|block| {
                block.allocations.iter().any(|change| match change {
                    Change::Allocate { holder, .. } => holder.is_owned_by(&owner),
                    _ => false,
                })
            })
    }

    /// The blocks holding what `endpoint` lists, in pools allocating from blocks, that were
    /// not read.
    fn unread_listed_blocks(&self, endpoint: &EndpointSpec) -> Vec<String> {
        let Some(pools) = &self.pools else {
            return Vec::new();
        };
        let listed = endpoint
            .committed()
            .into_iter()
            .filter(|(pool, _)| !pools.keeps_records_in_status(pool))
            .filter_map(|(pool, address)| Some(crate::block::block_of(pools.catalog.pool(&pool)?, address)));
        listed
            .chain(endpoint.blocks.iter().cloned())
            .filter(|name| !self.blocks.contains_key(name))
            .collect()
    }

    /// The garbage collector's view of what was read.
    fn view(&self) -> ClusterView {
        ClusterView {
            pods: self
                .pods
                .iter()
                .filter_map(|(pod, record)| Some((pod.clone(), record.clone()?)))
                .collect(),
            nodes: self
                .nodes
                .iter()
                .filter(|(_, labels)| labels.is_some())
                .map(|(name, _)| name.clone())
                .collect(),
            endpoints: self
                .endpoints
                .iter()
                .filter_map(|(pod, endpoint)| Some((pod.clone(), endpoint.as_ref()?.object.clone())))
                .collect(),
            statefulsets: self
                .statefulsets
                .iter()
                .filter_map(|(set, replicas)| Some((set.clone(), (*replicas)?)))
                .collect(),
        }
    }
}

/// The status writes that bring the `allocatedIPCount` and `totalIPCount` of every pool that
/// allocates from blocks to what `index` (each pool's blocks, as listed) says it holds: what
/// the controller writes about once a second, so that `kubectl get spiderippool` shows the
/// count while allocations write blocks only. A pool whose counts are right is not written.
///
/// ```
/// use std::collections::BTreeMap;
/// use spiderpool_core::*;
/// use spiderpool_core::round::{Pools, count_writes};
/// let docs = parse_documents("{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool,
///   metadata: {name: p, resourceVersion: '7'}, spec: {subnet: 10.6.0.0/16, ips: [10.6.168.60-10.6.168.69]}}").unwrap();
/// let Resource::IpPool(pool) = &docs[0].resource else { unreachable!() };
/// let pools = Pools::read(vec![(**pool).clone()], Vec::new()).unwrap();
/// let block = IndexedBlock { name: "p-10-6-168-0-26".into(), start: "10.6.168.0".parse().unwrap(),
///     node: "n1".into(), allocated: 3, pool_uid: String::new() };
/// let writes = count_writes(&pools, &BTreeMap::from([("p".to_string(), vec![block])]));
/// assert_eq!((writes[0].status.allocated_ip_count, writes[0].status.total_ip_count), (Some(3), Some(10)));
/// ```
pub fn count_writes(pools: &Pools, index: &BTreeMap<String, Vec<IndexedBlock>>) -> Vec<PoolWrite> {
    pools
        .statuses
        .iter()
        .filter(|(pool, _)| !pools.keeps_records_in_status(pool))
        .filter_map(|(pool, read)| {
            let allocated: u64 = (index.get(pool).into_iter().flatten())
                .filter(|block| !pools.is_stale(pool, &block.pool_uid))
                .map(|block| block.allocated)
                .sum();
            let total = match pools.catalog.pool(pool) {
                Some(valid) => Some(i64::try_from(valid.total_count()).unwrap_or(i64::MAX)),
                None => read.object.total_ip_count,
            };
            let status = IPPoolStatus {
                allocated_ip_count: Some(i64::try_from(allocated).unwrap_or(i64::MAX)),
                total_ip_count: total,
                ..read.object.clone()
            };
            (status != read.object).then(|| PoolWrite {
                pool: pool.clone(),
                version: read.version.clone(),
                status,
            })
        })
        .collect()
}

/// What a round still has to read before it can decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// Every pool and reserved-IP object.
    pub pools: bool,
    /// Every pod, node, endpoint and StatefulSet (a sweep of the garbage collector, after the
    /// pools and blocks).
    pub everything: bool,
    /// These pods.
    pub pods: BTreeSet<PodRef>,
    /// These namespaces.
    pub namespaces: BTreeSet<String>,
    /// These nodes.
    pub nodes: BTreeSet<String>,
    /// The endpoints of these pods.
    pub endpoints: BTreeSet<PodRef>,
    /// These StatefulSets.
    pub statefulsets: BTreeSet<PodRef>,
    /// Every block affine to these nodes, with its records.
    pub node_blocks: BTreeSet<String>,
    /// Every block of these pools, without records: name, node and allocated count.
    pub block_index: BTreeSet<String>,
    /// These blocks, with their records.
    pub blocks: BTreeSet<String>,
    /// Every block, with its records (the garbage collector's read, with the pools).
    pub all_blocks: bool,
}

impl Reads {
    /// Whether nothing is left to read.
    pub fn is_empty(&self) -> bool {
        *self == Reads::default()
    }
}

/// What `calls` still need read, given what `snapshot` holds. Reads come in stages: the pools,
/// pods and namespaces first (with the node and its blocks when the call names its node, as
/// an agent's do); then the nodes, and the endpoints of pods that hold addresses
/// already or belong to a StatefulSet (a new pod has none to read); then the StatefulSets
/// whose DEL may keep their addresses.
pub fn reads(calls: &[Call], snapshot: &Snapshot) -> Reads {
    let mut wanted = Reads {
        pools: snapshot.pools.is_none(),
        ..Reads::default()
    };
    let endpoint = |pod: &PodRef, wanted: &mut Reads| {
        if !snapshot.endpoints.contains_key(pod) {
            wanted.endpoints.insert(pod.clone());
        }
    };
    for call in calls {
        match call {
            Call::Add(facts) => {
                let Some(pod) = facts.pod_ref() else { continue };
                if !snapshot.namespaces.contains_key(&pod.namespace) {
                    wanted.namespaces.insert(pod.namespace.clone());
                }
                if let Some(Some(read)) = snapshot.endpoints.get(&pod) {
                    wanted.blocks.extend(snapshot.unread_listed_blocks(&read.object));
                }
                if snapshot.endpoint_wanted.contains(&pod) {
                    endpoint(&pod, &mut wanted);
                }
                // A node the call names (an agent's own) is read with the pod, not after it.
                if let Some(node) = facts.node.as_deref().filter(|node| !node.is_empty()) {
                    if !snapshot.nodes.contains_key(node) {
                        wanted.nodes.insert(node.to_owned());
                    }
                    if !snapshot.all_blocks && !snapshot.node_blocks.contains(node) {
                        wanted.node_blocks.insert(node.to_owned());
                    }
                }
                let Some(read) = snapshot.pods.get(&pod) else {
                    wanted.pods.insert(pod);
                    continue;
                };
                let Some(record) = read else { continue };
                let node = node_of(facts, record);
                if !node.is_empty() && !snapshot.nodes.contains_key(node) {
                    wanted.nodes.insert(node.to_owned());
                }
                let blocks_read =
                    node.is_empty() || snapshot.all_blocks || snapshot.node_blocks.contains(node);
                if !blocks_read {
                    wanted.node_blocks.insert(node.to_owned());
                }
                // The endpoint names the blocks of what the pod holds, wherever they are. A pod
                // that holds nothing where its node reads may still have borrowed from another
                // node's block; its endpoint, written before the borrow, then exists, and the
                // round's create of it, made before any block write, is refused and read.
                let holds = snapshot.pools.is_some() && blocks_read && snapshot.holds(&record.uid);
                if is_statefulset(record) || holds {
                    endpoint(&pod, &mut wanted);
                }
            }
            Call::Del(facts) => {
                let node = facts.node.as_deref().filter(|node| !node.is_empty());
                if let Some(node) = node.filter(|node| !snapshot.node_blocks.contains(*node)) {
                    wanted.node_blocks.insert(node.to_owned());
                }
                let Some(pod) = facts.pod_ref() else { continue };
                match snapshot.endpoints.get(&pod) {
                    None => endpoint(&pod, &mut wanted),
                    Some(Some(read)) => {
                        let listed = &read.object.node;
                        if node.is_none() && !listed.is_empty() && !snapshot.node_blocks.contains(listed) {
                            wanted.node_blocks.insert(read.object.node.clone());
                        }
                        wanted.blocks.extend(snapshot.unread_listed_blocks(&read.object));
                        if let Some(set) = read.object.statefulset() {
                            let set = PodRef {
                                namespace: pod.namespace.clone(),
                                name: set.to_owned(),
                            };
                            if !snapshot.statefulsets.contains_key(&set) {
                                wanted.statefulsets.insert(set);
                            }
                        }
                    }
                    Some(None) => {}
                }
            }
            Call::Abandon { pod, blocks, .. } => {
                endpoint(pod, &mut wanted);
                if let Some(Some(read)) = snapshot.endpoints.get(pod) {
                    wanted.blocks.extend(snapshot.unread_listed_blocks(&read.object));
                }
                wanted.blocks.extend(
                    blocks
                        .iter()
                        .filter(|name| !snapshot.blocks.contains_key(*name))
                        .cloned(),
                );
            }
            // The pods after the pools and blocks: a record read belongs to a pod that existed
            // before, which the pods read after show unless it went (a pod created between a
            // list of the pods and a list of the blocks would look gone).
            Call::Sweep { .. } => {
                wanted.all_blocks |= !snapshot.all_blocks;
                wanted.everything |= snapshot.pools.is_some() && snapshot.all_blocks && !snapshot.everything;
            }
        }
    }
    wanted
}

/// Whether a StatefulSet owns the pod: it takes its predecessor's addresses over.
fn is_statefulset(record: &PodRecord) -> bool {
    record
        .controller
        .as_ref()
        .is_some_and(|controller| controller.kind == STATEFULSET)
}

/// The node a call is served on: the one its configuration names, else the pod's.
fn node_of<'a>(facts: &'a RuntimeFacts, record: &'a PodRecord) -> &'a str {
    facts
        .node
        .as_deref()
        .filter(|name| !name.is_empty())
        .unwrap_or(&record.node)
}

/// A write of a pool's status, presenting the version read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolWrite {
    /// The pool.
    pub pool: String,
    /// The `resourceVersion` read.
    pub version: String,
    /// The status to write.
    pub status: IPPoolStatus,
}

/// A write of a block's object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockWrite {
    /// The object's name.
    pub name: String,
    /// The pool it belongs to.
    pub pool: String,
    /// What to write.
    pub change: BlockChange,
}

/// How a block's object changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockChange {
    /// Create it: the node claims the block. A block found there is a conflict (another node
    /// claimed it first).
    Create(BlockSpec),
    /// Replace the one read.
    Replace {
        /// The `resourceVersion` read.
        version: String,
        /// The new spec.
        spec: BlockSpec,
    },
    /// Delete the one read: the block is given back.
    Delete {
        /// The `resourceVersion` read.
        version: String,
    },
}

impl BlockWrite {
    /// The spec written, unless the block is deleted.
    pub fn spec(&self) -> Option<&BlockSpec> {
        match &self.change {
            BlockChange::Create(spec) | BlockChange::Replace { spec, .. } => Some(spec),
            BlockChange::Delete { .. } => None,
        }
    }
}

/// A write of a pod's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointWrite {
    /// The pod: the endpoint's namespace and name.
    pub pod: PodRef,
    /// What to write.
    pub change: EndpointChange,
}

/// How an endpoint changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointChange {
    /// Create it: none was read. An endpoint found there is a conflict.
    Create(EndpointSpec),
    /// Replace the one read.
    Replace {
        /// The `resourceVersion` read.
        version: String,
        /// The new spec.
        spec: EndpointSpec,
    },
    /// Delete the one read.
    Delete {
        /// The `resourceVersion` read.
        version: String,
    },
}

/// What a call achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An ADD: the addresses per interface, and the changes written for it.
    Added(Plan),
    /// A DEL: the changes that released the attachment's addresses (none when it held none).
    Released(Vec<Change>),
    /// A DEL of a pod its StatefulSet brings back under the same name: its addresses stay for
    /// it.
    KeptForStatefulSet {
        /// The StatefulSet.
        statefulset: String,
    },
    /// A compensation: the uncommitted records released.
    Abandoned(Vec<Change>),
    /// A sweep of the garbage collector.
    Swept(Sweep),
}

/// Why the round answers a call without serving it, on what it read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The engine refused: no candidate can serve, or a candidate is invalid.
    #[error(transparent)]
    Allocate(#[from] AllocateError),
    /// A request without a pod name: the cluster mode serves pods only.
    #[error("no pod identity: the cluster mode needs K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS")]
    NoPod,
    /// The pod named by the request does not exist (yet, or any more).
    #[error("pod {pod} not found; the runtime called before the API server knows the pod, try again")]
    PodNotFound {
        /// The pod.
        pod: PodRef,
    },
    /// The pod of that name has another UID than the runtime gave: it was re-created.
    #[error("pod {pod} has UID {current}, not {requested}: it was re-created; try again")]
    PodReplaced {
        /// The pod.
        pod: PodRef,
        /// The UID the runtime gave.
        requested: String,
        /// The UID in the API server.
        current: String,
    },
    /// The pod's namespace does not exist.
    #[error("namespace {0} not found; the pod's namespace is being deleted or not created yet, try again")]
    NamespaceNotFound(String),
    /// The node the pod runs on is not known.
    #[error(
        "node {0} not found in the API server; register the node, or set ipam.node_name to a registered one"
    )]
    NodeNotFound(String),
}

/// Which writes a call's outcome needs before it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// None: it stands now.
    Now,
    /// Every pool write of the decision.
    Pools,
    /// Every pool write, then the endpoint write of this index.
    Endpoint(usize),
    /// Every pool write, then every endpoint write made, whatever came of it (a sweep of the
    /// collector, whose deletions of orphaned endpoints a later sweep makes again).
    Endpoints,
}

/// One call's outcome in a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// What the call achieves, or why it is refused.
    pub outcome: Result<Outcome, Refusal>,
    /// What must be written before the outcome stands.
    pub commit: Commit,
}

/// What a round decided: the writes, in order, and each call's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Block writes, in name order, then pool status writes, in pool name order. Made one
    /// after another; at the first conflict the rest are not made and the round is decided
    /// again on fresh reads (records written by the first ones are then leftovers that the
    /// new round releases).
    pub block_writes: Vec<BlockWrite>,
    /// Pool status writes (of pools keeping their records in their status), after the blocks.
    pub pool_writes: Vec<PoolWrite>,
    /// Endpoints of pods that borrow an address from another node's block, written (at once)
    /// before any block: a later DEL or ADD of the pod finds the borrowed block through its
    /// endpoint, whatever comes of the writes after. Their calls stand once the blocks are
    /// written.
    pub early_endpoint_writes: Vec<EndpointWrite>,
    /// Endpoint writes, one per pod, made (at once) after every pool write succeeded.
    pub endpoint_writes: Vec<EndpointWrite>,
    /// Each call's outcome, in the order of the calls.
    pub outcomes: Vec<Decided>,
}

/// An endpoint as read, and as the calls of the round leave it.
struct Draft {
    read: Option<Versioned<EndpointSpec>>,
    current: Option<EndpointSpec>,
}

/// The working state of a decision.
struct Work<'a> {
    snapshot: &'a Snapshot,
    pools: &'a Pools,
    catalog: &'a PoolCatalog,
    state: InMemoryState,
    changes: Vec<Change>,
    drafts: BTreeMap<PodRef, Draft>,
    endpoints: BTreeMap<PodRef, Option<Versioned<EndpointSpec>>>,
    /// The blocks read, by name, of pools allocating from blocks.
    blocks: BTreeMap<String, &'a Block>,
    /// The blocks read of pools that keep their records in their status (an earlier move of
    /// them into blocks that did not end).
    parked: BTreeMap<String, &'a Block>,
    /// The family and block prefix of every pool allocating from blocks that the round knows.
    shapes: BTreeMap<String, (IpVersion, u8)>,
    view: BlockView,
    /// Blocks the changes touch: pool and first value.
    touched: BTreeSet<(String, u128)>,
    /// Blocks the collector gives back.
    given_back: BTreeSet<String>,
    /// Pods that borrow from another node's block.
    borrowers: BTreeSet<PodRef>,
    /// Pools whose records the collector moves from their status into blocks.
    moving: BTreeSet<String>,
}

/// Decides `calls`, in order, on what `snapshot` read: each call sees the state the calls
/// before it leave. Takes the pools, blocks and endpoints (and a view of everything) out of
/// the snapshot (its writes make them stale), so that the next [`reads`] asks for them again.
///
/// When a pool's blocks cannot answer on what was read (a node's blocks are full and the
/// pool's other blocks were not listed, or another node's block must be read to borrow from
/// it), the snapshot is left as it is and the reads it needs are returned.
///
/// # Panics
///
/// When the pools were not read: call it once [`reads`] is empty.
pub fn decide(calls: &[Call], snapshot: &mut Snapshot) -> Result<Decision, Box<Reads>> {
    let decision = plan(calls, snapshot)?;
    snapshot.pools = None;
    snapshot.endpoints.clear();
    snapshot.blocks.clear();
    snapshot.node_blocks.clear();
    snapshot.block_index.clear();
    snapshot.all_blocks = false;
    // A view of everything is read again after the pools, with them.
    if std::mem::take(&mut snapshot.everything) {
        snapshot.pods.clear();
        snapshot.nodes.clear();
        snapshot.statefulsets.clear();
    }
    Ok(decision)
}

/// Adds a block's records to `state`, skipping any another block already holds (blocks of
/// one pool cut at two sizes, which only an edit makes: their addresses stay held).
fn add_block_records(state: &mut InMemoryState, block: &Block) {
    if state.apply(&block.allocations).is_err() {
        for allocation in &block.allocations {
            let _ = state.apply(std::slice::from_ref(allocation));
        }
    }
}

/// What the round knows of the blocks of every pool that allocates from blocks.
fn block_view(pools: &Pools, snapshot: &Snapshot, read: &BTreeMap<String, &Block>) -> BlockView {
    let mut view = BlockView::default();
    for pool in pools.catalog.pools() {
        if pools.keeps_records_in_status(pool.name()) {
            continue;
        }
        let index = snapshot.block_index.get(pool.name());
        let mut known = PoolBlocks {
            listed: snapshot.all_blocks || index.is_some(),
            blocks: BTreeMap::new(),
        };
        for indexed in index.into_iter().flatten() {
            // Gone since it was listed: unclaimed, as far as this round knows.
            if matches!(snapshot.blocks.get(&indexed.name), Some(None))
                || IpVersion::of(indexed.start) != pool.version()
            {
                continue;
            }
            let stale = pools.is_stale(pool.name(), &indexed.pool_uid);
            let entry = BlockEntry {
                name: indexed.name.clone(),
                node: indexed.node.clone(),
                read: false,
                cursor: None,
                allocated: if stale { 0 } else { indexed.allocated },
            };
            known.blocks.insert(address_value(indexed.start), entry);
        }
        view.pools.insert(pool.name().to_owned(), known);
    }
    for block in read.values() {
        let (Some(known), Some(pool)) = (view.pools.get_mut(&block.pool), pools.catalog.pool(&block.pool))
        else {
            continue;
        };
        // A block cut at another size holds its addresses; none is handed out from it.
        if block.prefix != pool.block_prefix() || block.family != pool.version() {
            continue;
        }
        let stale = pools.is_stale(&block.pool, &block.pool_uid);
        let entry = BlockEntry {
            name: block.name.clone(),
            node: block.node.clone(),
            read: true,
            cursor: block.cursor.filter(|_| !stale),
            allocated: if stale { 0 } else { block.allocations.len() as u64 },
        };
        known.blocks.insert(block.low, entry);
    }
    view
}

/// Every address `state` holds in `pools`, in pool then address order.
fn held_in<'p>(state: &InMemoryState, pools: impl IntoIterator<Item = &'p str>) -> Vec<HeldAddress> {
    pools
        .into_iter()
        .flat_map(|pool| {
            let Ok(allocations) = state.allocations(pool);
            allocations.into_iter().map(move |(address, holder)| HeldAddress {
                pool: pool.to_owned(),
                address,
                holder,
            })
        })
        .collect()
}

fn plan(calls: &[Call], snapshot: &Snapshot) -> Result<Decision, Box<Reads>> {
    let pools = snapshot.pools.as_ref().expect("decide after the pools were read");
    let mut state = pools.state.clone();
    let mut blocks = BTreeMap::new();
    let mut parked = BTreeMap::new();
    let mut shapes = BTreeMap::new();
    for block in snapshot.blocks.values().flatten() {
        if pools.keeps_records_in_status(&block.pool) {
            parked.insert(block.name.clone(), block);
        } else {
            if !pools.is_stale(&block.pool, &block.pool_uid) {
                add_block_records(&mut state, block);
            }
            blocks.insert(block.name.clone(), block);
            shapes.insert(block.pool.clone(), (block.family, block.prefix));
        }
    }
    for pool in pools.catalog.pools() {
        shapes.insert(pool.name().to_owned(), (pool.version(), pool.block_prefix()));
    }
    let view = block_view(pools, snapshot, &blocks);
    let mut work = Work {
        snapshot,
        pools,
        catalog: &pools.catalog,
        state,
        changes: Vec::new(),
        drafts: BTreeMap::new(),
        endpoints: snapshot.endpoints.clone(),
        blocks,
        parked,
        shapes,
        view,
        touched: BTreeSet::new(),
        given_back: BTreeSet::new(),
        borrowers: BTreeSet::new(),
        moving: BTreeSet::new(),
    };
    let mut decided = Vec::with_capacity(calls.len());
    for call in calls {
        let before = work.changes.len();
        let (outcome, pod) = match call {
            Call::Add(facts) => (work.add(facts), facts.pod_ref()),
            Call::Del(facts) => (work.del(facts), facts.pod_ref()),
            Call::Abandon { pod, uid, .. } => (Ok(work.abandon(pod, uid)), Some(pod.clone())),
            Call::Sweep {
                now,
                policy,
                suspects,
                empty_blocks,
            } => (Ok(work.sweep(*now, *policy, suspects, empty_blocks)), None),
        };
        let sweep = matches!(call, Call::Sweep { .. });
        decided.push((outcome, pod, work.changes.len() > before, sweep));
    }
    let needs: BlockNeeds = work.view.needs.take();
    if needs != BlockNeeds::default() {
        return Err(Box::new(Reads {
            block_index: needs.index,
            blocks: needs.blocks,
            ..Reads::default()
        }));
    }
    let mut block_writes = work.block_writes();
    block_writes.extend(work.moving_writes());
    block_writes.sort_by(|a, b| a.name.cmp(&b.name));
    let touched: BTreeSet<&str> = (work.changes.iter().map(Change::pool))
        .chain(work.moving.iter().map(String::as_str))
        .collect();
    let pool_writes: Vec<PoolWrite> = touched
        .into_iter()
        .filter(|pool| pools.keeps_records_in_status(pool))
        .filter_map(|pool| {
            let read = pools.statuses.get(pool)?;
            let mut status = pools.status(pool, &work.state);
            if work.moving.contains(pool) {
                // The records are in the blocks written before this.
                status.allocated_ips = None;
            }
            (status != read.object).then(|| PoolWrite {
                pool: pool.to_owned(),
                version: read.version.clone(),
                status,
            })
        })
        .collect();
    let mut endpoint_writes = Vec::new();
    let mut early_endpoint_writes = Vec::new();
    let mut written: BTreeMap<PodRef, usize> = BTreeMap::new();
    let borrowers = std::mem::take(&mut work.borrowers);
    let holding = if work.drafts.is_empty() {
        BTreeMap::new()
    } else {
        work.blocks_holding()
    };
    for (pod, draft) in std::mem::take(&mut work.drafts) {
        let blocks: Vec<String> = holding.get(&pod).into_iter().flatten().cloned().collect();
        let current = match (draft.current, &draft.read) {
            (Some(mut spec), _) => {
                spec.blocks = blocks;
                Some(spec)
            }
            // What the pod still holds stays findable.
            (None, Some(read)) if !blocks.is_empty() => Some(EndpointSpec {
                ips: Vec::new(),
                blocks,
                ..read.object.clone()
            }),
            (None, _) => None,
        };
        let change = match (draft.read, current) {
            (None, Some(spec)) => EndpointChange::Create(spec),
            (Some(read), Some(spec)) if read.object != spec => EndpointChange::Replace {
                version: read.version,
                spec,
            },
            (Some(read), None) => EndpointChange::Delete {
                version: read.version,
            },
            _ => continue,
        };
        // An endpoint not read is created before any block: if one exists, nothing is
        // written before the round reads it.
        if borrowers.contains(&pod) || !snapshot.endpoints.contains_key(&pod) {
            early_endpoint_writes.push(EndpointWrite { pod, change });
            continue;
        }
        written.insert(pod.clone(), endpoint_writes.len());
        endpoint_writes.push(EndpointWrite { pod, change });
    }
    let stores = !(pool_writes.is_empty() && block_writes.is_empty() && early_endpoint_writes.is_empty());
    let outcomes = decided
        .into_iter()
        .map(|(outcome, pod, changed, sweep)| {
            let commit = match (&outcome, pod.and_then(|pod| written.get(&pod))) {
                (Err(_), _) => Commit::Now,
                (Ok(_), Some(&index)) => Commit::Endpoint(index),
                (Ok(_), None) if sweep && !endpoint_writes.is_empty() => Commit::Endpoints,
                (Ok(_), None) if (changed || sweep) && stores => Commit::Pools,
                (Ok(_), None) => Commit::Now,
            };
            Decided { outcome, commit }
        })
        .collect();
    Ok(Decision {
        block_writes,
        pool_writes,
        early_endpoint_writes,
        endpoint_writes,
        outcomes,
    })
}

/// The records at the addresses `endpoint` lists that it speaks for: held by the pod of its
/// name, under its UID, or, for a StatefulSet's, under any of the pod's incarnations (a
/// takeover whose writes were not all made leaves them spread over several).
fn listed_records(state: &InMemoryState, pod: &PodRef, endpoint: &EndpointSpec) -> Vec<HeldAddress> {
    endpoint
        .committed()
        .into_iter()
        .filter_map(|(pool, address)| {
            let Ok(holder) = state.holder(&pool, address);
            let holder = holder?;
            (holder.pod().as_ref() == Some(pod) && endpoint.speaks_for(holder.owner().id())).then_some(
                HeldAddress {
                    pool,
                    address,
                    holder,
                },
            )
        })
        .collect()
}

/// The releases of what the pod `uid` holds that `endpoint` does not commit
/// ([`EndpointSpec::commits`]): the leftovers of an allocation that did not finish.
fn uncommitted(
    state: &InMemoryState,
    pod: &PodRef,
    uid: &str,
    endpoint: Option<&EndpointSpec>,
) -> Vec<Change> {
    let Ok(held) = state.held_by(&OwnerKey::Pod(uid.to_owned()));
    let committed = match endpoint.filter(|endpoint| endpoint.speaks_for(uid)) {
        Some(endpoint) => {
            let mut records = listed_records(state, pod, endpoint);
            for record in &held {
                if !records
                    .iter()
                    .any(|r| r.pool == record.pool && r.address == record.address)
                {
                    records.push(record.clone());
                }
            }
            endpoint.commits(&records)
        }
        None => BTreeSet::new(),
    };
    held.into_iter()
        .filter(|held| !committed.contains(&(held.pool.clone(), held.address)))
        .map(|held| Change::Release {
            pool: held.pool,
            address: held.address,
            holder: held.holder,
        })
        .collect()
}

/// What `owner` holds, as (pool, address) pairs.
fn held_pairs(state: &InMemoryState, owner: &OwnerKey) -> BTreeSet<(String, IpAddr)> {
    let Ok(held) = state.held_by(owner);
    held.into_iter().map(|held| (held.pool, held.address)).collect()
}

impl Work<'_> {
    /// Records and applies changes the rules decided on this very state, for a call served
    /// on `node` (the node a block claimed by an allocation is affine to).
    /// Returns whether an allocation borrows from another node's block.
    fn apply(&mut self, changes: Vec<Change>, node: &str) -> bool {
        self.state
            .apply(&changes)
            .expect("changes decided on the working state apply to it");
        let mut borrows = false;
        for change in &changes {
            let pool = change.pool();
            if self.pools.keeps_records_in_status(pool) {
                continue;
            }
            let Some(&(family, prefix)) = self.shapes.get(pool) else {
                continue;
            };
            let value = address_value(change.address());
            let (start, _) = block_range(family, value, prefix);
            self.touched.insert((pool.to_owned(), start));
            let Some(known) = self.view.pools.get_mut(pool) else {
                continue;
            };
            let entry = known.blocks.entry(start).or_insert_with(|| BlockEntry {
                name: block_name(pool, family.address(start), prefix),
                node: node.to_owned(),
                read: true,
                cursor: None,
                allocated: 0,
            });
            match change {
                Change::Allocate { .. } => {
                    entry.allocated += 1;
                    entry.cursor = Some(value);
                    borrows |= entry.node != node;
                }
                Change::Release { .. } => entry.allocated = entry.allocated.saturating_sub(1),
                Change::Transfer { .. } => {}
            }
        }
        self.changes.extend(changes);
        borrows
    }

    /// The writes of the blocks that take over the records of the pools in `moving`: every
    /// block holding one of them, affine to the node of the pod of its first record; and the
    /// deletion of the pool's blocks holding none (left by an earlier move that did not end).
    fn moving_writes(&self) -> Vec<BlockWrite> {
        let mut writes = Vec::new();
        for pool in &self.moving {
            let (Some(valid), Some(read)) = (self.catalog.pool(pool), self.pools.statuses.get(pool)) else {
                continue;
            };
            let (family, prefix) = (valid.version(), valid.block_prefix());
            let cursor = (read.object.last_allocated_ip.as_deref())
                .and_then(|text| text.parse::<IpAddr>().ok())
                .map(address_value);
            let Ok(allocations) = self.state.allocations(pool);
            let mut records: BTreeMap<u128, Vec<(IpAddr, Holder)>> = BTreeMap::new();
            for (address, holder) in allocations {
                let (start, _) = block_range(family, address_value(address), prefix);
                records.entry(start).or_default().push((address, holder));
            }
            let mut named = BTreeSet::new();
            for (start, held) in &records {
                let name = block_name(pool, family.address(*start), prefix);
                let node = (held.iter())
                    .filter_map(|(_, holder)| self.snapshot.pods.get(&holder.pod()?)?.as_ref())
                    .map(|record| record.node.clone())
                    .next()
                    .unwrap_or_default();
                let (low, high) = block_range(family, *start, prefix);
                let spec = block_spec(
                    (pool, self.pools.uid(pool)),
                    family,
                    (*start, prefix),
                    &node,
                    held.iter().map(|(address, holder)| (*address, holder)),
                    cursor.filter(|value| (low..=high).contains(value)),
                );
                let change = match self.parked.get(&name) {
                    Some(block) if block.spec == spec => {
                        named.insert(name);
                        continue;
                    }
                    Some(block) => BlockChange::Replace {
                        version: block.version.clone(),
                        spec,
                    },
                    None => BlockChange::Create(spec),
                };
                named.insert(name.clone());
                writes.push(BlockWrite {
                    name,
                    pool: pool.clone(),
                    change,
                });
            }
            for block in self.parked.values().filter(|block| block.pool == *pool) {
                let start = block_range(family, block.low, prefix).0;
                if !records.contains_key(&start) && !named.contains(&block.name) {
                    writes.push(BlockWrite {
                        name: block.name.clone(),
                        pool: pool.clone(),
                        change: BlockChange::Delete {
                            version: block.version.clone(),
                        },
                    });
                }
            }
        }
        writes
    }

    /// The blocks holding records of each pod (of any of its incarnations), among those read.
    fn blocks_holding(&self) -> BTreeMap<PodRef, BTreeSet<String>> {
        let mut holding: BTreeMap<PodRef, BTreeSet<String>> = BTreeMap::new();
        for (pool, &(family, prefix)) in &self.shapes {
            if self.pools.keeps_records_in_status(pool) {
                continue;
            }
            let Ok(allocations) = self.state.allocations(pool);
            for (address, holder) in allocations {
                let Some(pod) = holder.pod() else { continue };
                let (start, _) = block_range(family, address_value(address), prefix);
                holding
                    .entry(pod)
                    .or_default()
                    .insert(block_name(pool, family.address(start), prefix));
            }
        }
        holding
    }

    /// The writes of the blocks the changes touched and of those given back, in name order.
    fn block_writes(&self) -> Vec<BlockWrite> {
        let mut starts: BTreeMap<&str, BTreeSet<u128>> = BTreeMap::new();
        for (pool, start) in &self.touched {
            starts.entry(pool).or_default().insert(*start);
        }
        let mut writes = Vec::new();
        for (pool, starts) in starts {
            let (family, prefix) = self.shapes[pool];
            let Ok(allocations) = self.state.allocations(pool);
            let mut records: BTreeMap<u128, Vec<(IpAddr, Holder)>> = BTreeMap::new();
            for (address, holder) in allocations {
                let (start, _) = block_range(family, address_value(address), prefix);
                if starts.contains(&start) {
                    records.entry(start).or_default().push((address, holder));
                }
            }
            for start in starts {
                let name = block_name(pool, family.address(start), prefix);
                let read = self.blocks.get(&name);
                let entry = self
                    .view
                    .pools
                    .get(pool)
                    .and_then(|known| known.blocks.get(&start));
                let (node, cursor) = match (entry, read) {
                    (Some(entry), _) => (entry.node.as_str(), entry.cursor),
                    (None, Some(read)) => (read.node.as_str(), read.cursor),
                    (None, None) => ("", None),
                };
                let held = records.remove(&start).unwrap_or_default();
                let spec = block_spec(
                    (pool, self.pools.uid(pool)),
                    family,
                    (start, prefix),
                    node,
                    held.iter().map(|(address, holder)| (*address, holder)),
                    cursor,
                );
                let change = match read {
                    Some(read) if read.spec == spec => continue,
                    Some(read) => BlockChange::Replace {
                        version: read.version.clone(),
                        spec,
                    },
                    None => BlockChange::Create(spec),
                };
                writes.push(BlockWrite {
                    name,
                    pool: pool.to_owned(),
                    change,
                });
            }
        }
        for name in &self.given_back {
            let block = self.blocks[name];
            if !self.touched.contains(&(block.pool.clone(), block.low)) {
                writes.push(BlockWrite {
                    name: name.clone(),
                    pool: block.pool.clone(),
                    change: BlockChange::Delete {
                        version: block.version.clone(),
                    },
                });
            }
        }
        writes.sort_by(|a, b| a.name.cmp(&b.name));
        writes
    }

    /// The endpoint of `pod` as the round leaves it so far.
    fn draft(&mut self, pod: &PodRef) -> &mut Draft {
        let endpoints = &mut self.endpoints;
        self.drafts.entry(pod.clone()).or_insert_with(|| {
            let read = endpoints.remove(pod).flatten();
            Draft {
                current: read.as_ref().map(|read| read.object.clone()),
                read,
            }
        })
    }

    fn add(&mut self, facts: &RuntimeFacts) -> Result<Outcome, Refusal> {
        let pod = facts.pod_ref().ok_or(Refusal::NoPod)?;
        let snapshot = self.snapshot;
        let record = snapshot
            .pods
            .get(&pod)
            .and_then(Option::as_ref)
            .ok_or_else(|| Refusal::PodNotFound { pod: pod.clone() })?;
        if let Some(requested) = facts
            .pod
            .as_ref()
            .and_then(|identity| identity.uid.as_ref())
            .filter(|uid| !uid.is_empty() && **uid != record.uid)
        {
            return Err(Refusal::PodReplaced {
                pod,
                requested: requested.clone(),
                current: record.uid.clone(),
            });
        }
        let namespace = snapshot
            .namespaces
            .get(&pod.namespace)
            .and_then(Option::clone)
            .ok_or_else(|| Refusal::NamespaceNotFound(pod.namespace.clone()))?;
        let node = node_of(facts, record).to_owned();
        let labels = snapshot
            .nodes
            .get(&node)
            .and_then(Option::clone)
            .ok_or_else(|| Refusal::NodeNotFound(node.clone()))?;
        let request = facts.request(PodContext {
            uid: Some(record.uid.clone()),
            labels: record.labels.clone(),
            annotations: record.annotations.clone(),
            namespace,
            node: NodeFacts { name: node, labels },
        });
        let owner = OwnerKey::Pod(record.uid.clone());
        // The endpoint whose entries the pod keeps: its own, or its StatefulSet
        // predecessor's, whose records it takes over.
        let kept = match self.draft(&pod).current.clone() {
            Some(current) if current.uid == record.uid => Some(current),
            Some(current) if is_statefulset(record) => {
                // What the set's endpoint commits, whichever incarnation holds it now.
                let transfers = listed_records(&self.state, &pod, &current)
                    .into_iter()
                    .filter(|held| !held.holder.is_owned_by(&owner))
                    .map(|held| Change::Transfer {
                        to: request.holder(&held.holder.interface()),
                        pool: held.pool,
                        address: held.address,
                        from: held.holder,
                    })
                    .collect();
                let _ = self.apply(transfers, "");
                Some(current)
            }
            _ => None,
        };
        let leftovers = uncommitted(&self.state, &pod, &record.uid, kept.as_ref());
        let _ = self.apply(leftovers, "");
        // A refused ADD keeps the releases and transfers above: the releases were garbage, and
        // transferred records stay uncommitted for the pod's next ADD or the collector.
        let plan = allocate_with(self.catalog, &self.state, &request, Some(&self.view))?;
        if self.apply(plan.changes.clone(), &request.node.name) {
            self.borrowers.insert(pod.clone());
        }
        let entries = plan.interfaces.iter().map(EndpointInterface::of).collect();
        let mut endpoint = EndpointSpec::committing(
            kept.as_ref(),
            &record.uid,
            &request.node.name,
            &request.container_id,
            record.controller.as_ref(),
            entries,
        );
        endpoint.retain_held(&held_pairs(&self.state, &owner));
        self.draft(&pod).current = Some(endpoint);
        Ok(Outcome::Added(plan))
    }

    fn del(&mut self, facts: &RuntimeFacts) -> Result<Outcome, Refusal> {
        let request = facts.request(PodContext::default());
        let pod = facts.pod_ref();
        let runtime_uid = request.pod.uid.clone().filter(|uid| !uid.is_empty());
        let snapshot = self.snapshot;
        // Whichever incarnation of the pod asks: a StatefulSet's pod name is its ordinal's, and
        // records the pod took over from its predecessor are kept as the predecessor's were.
        if let Some(pod) = &pod
            && let Some(current) = &self.draft(pod).current
            && let Some(set) = current.statefulset()
        {
            let key = PodRef {
                namespace: pod.namespace.clone(),
                name: set.to_owned(),
            };
            let replicas = snapshot.statefulsets.get(&key).copied().flatten();
            if statefulset_keeps(pod, set, replicas) {
                return Ok(Outcome::KeptForStatefulSet {
                    statefulset: set.to_owned(),
                });
            }
        }
        let Ok(releases) = release_attachment(&self.state, &request);
        let _ = self.apply(releases.clone(), "");
        if let Some(pod) = &pod {
            // The endpoint keeps what the pod still holds: what this DEL released goes, and
            // whatever an earlier DEL released without getting to write the endpoint.
            let holder = self
                .draft(pod)
                .current
                .as_ref()
                .map(|current| current.uid.clone());
            if let Some(uid) = holder.filter(|uid| runtime_uid.as_ref().is_none_or(|runtime| runtime == uid))
            {
                let held = held_pairs(&self.state, &OwnerKey::Pod(uid));
                let draft = self.draft(pod);
                if let Some(current) = draft.current.as_mut() {
                    current.retain_held(&held);
                    if current.ips.is_empty() {
                        draft.current = None;
                    }
                }
            }
        }
        Ok(Outcome::Released(releases))
    }

    fn abandon(&mut self, pod: &PodRef, uid: &str) -> Outcome {
        let endpoint = self.draft(pod).current.clone();
        let releases = uncommitted(&self.state, pod, uid, endpoint.as_ref());
        let _ = self.apply(releases.clone(), "");
        // An endpoint written before a borrow lists what the pod may not hold.
        let held = held_pairs(&self.state, &OwnerKey::Pod(uid.to_owned()));
        let draft = self.draft(pod);
        if let Some(current) = draft.current.as_mut().filter(|current| current.uid == uid) {
            current.retain_held(&held);
            if current.ips.is_empty() {
                draft.current = None;
            }
        }
        Outcome::Abandoned(releases)
    }

    fn sweep(
        &mut self,
        now: Seconds,
        policy: GcPolicy,
        suspects: &BTreeMap<(String, IpAddr), Seconds>,
        empty_blocks: &BTreeMap<String, Seconds>,
    ) -> Outcome {
        let mut view = self.snapshot.view();
        view.endpoints = self
            .endpoints
            .iter()
            .filter_map(|(pod, endpoint)| Some((pod.clone(), endpoint.as_ref()?.object.clone())))
            .collect();
        let pools: BTreeSet<&str> = (self.pools.statuses.keys().map(String::as_str))
            .chain(self.blocks.values().map(|block| block.pool.as_str()))
            .collect();
        let mut swept = gc::sweep(&held_in(&self.state, pools), &view, suspects, now, policy);
        let _ = self.apply(swept.collected.iter().map(|c| c.change.clone()).collect(), "");
        // Records still in a valid pool's status move into blocks (decision 0011).
        for pool in self.catalog.pools() {
            if self.pools.keeps_records_in_status(pool.name()) {
                self.moving.insert(pool.name().to_owned());
                swept.moved_to_blocks.push(pool.name().to_owned());
            }
        }
        for pod in &swept.orphaned_endpoints {
            self.draft(pod).current = None;
        }
        // Blocks left empty go back after their grace; at once when their pool or node is gone.
        for block in self.blocks.values() {
            let range = crate::range::IpRange::from_bounds(block.family, block.low, block.high);
            let Ok(held) = self.state.held_count_in(&block.pool, range);
            if held > 0 {
                continue;
            }
            let since = empty_blocks.get(&block.name).copied().unwrap_or(now);
            let gone = self.catalog.get(&block.pool).is_none()
                || !view.nodes.contains(&block.node)
                || self.pools.is_stale(&block.pool, &block.pool_uid);
            if gone || now.saturating_sub(since) >= policy.empty_block_grace {
                self.given_back.insert(block.name.clone());
                swept.released_blocks.push(block.name.clone());
                if let Some(known) = self.view.pools.get_mut(&block.pool) {
                    known.blocks.remove(&block.low);
                }
            } else {
                swept.empty_blocks.insert(block.name.clone(), since);
            }
        }
        Outcome::Swept(swept)
    }
}

/// How long a batch keeps trying after conflicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Rounds in all, the first included.
    pub attempts: u32,
    /// The backoff after the first conflict; it doubles up to `max_backoff`. Each wait is
    /// drawn uniformly below it by the adapter ("full jitter"), so that colliding writers
    /// spread out.
    pub first_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
    /// No new round starts after this much time.
    pub deadline: Duration,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget {
            attempts: 64,
            first_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(250),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryBudget {
    /// The ceiling of the wait before retry `retry` (1 for the first): exponential, capped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use spiderpool_core::round::RetryBudget;
    /// let budget = RetryBudget::default();
    /// assert_eq!(budget.backoff(1), Duration::from_millis(2));
    /// assert_eq!(budget.backoff(3), Duration::from_millis(8));
    /// assert_eq!(budget.backoff(40), Duration::from_millis(250));
    /// ```
    pub fn backoff(&self, retry: u32) -> Duration {
        self.first_backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff)
    }
}

/// Why a batch could not serve a call. `E` is the adapter's failure to read or write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoundError<E> {
    /// Refused on what was read.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Other writers kept changing the same pools for the whole budget.
    #[error(
        "pools {pools:?} kept changing under {attempts} attempts ({conflicts} conflicts in {elapsed:?}); try again"
    )]
    Contended {
        /// The pools whose writes conflicted last.
        pools: Vec<String>,
        /// Rounds made.
        attempts: u32,
        /// Conflicts met.
        conflicts: u32,
        /// Time spent.
        elapsed: Duration,
    },
    /// Other writers kept changing the pod's endpoint; what was written stays uncommitted,
    /// and is released by compensation, the pod's next ADD or the collector.
    #[error("the SpiderEndpoint of pod {pod} kept changing under {attempts} attempts; try again")]
    EndpointContended {
        /// The pod.
        pod: PodRef,
        /// Rounds made.
        attempts: u32,
    },
    /// The adapter could not read or write.
    #[error(transparent)]
    Api(E),
}

/// What a write came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written<E> {
    /// Done.
    Done,
    /// Refused: the object changed since it was read (or, for a create, exists).
    Conflict,
    /// Failed otherwise.
    Failed(E),
}

/// What [`Batch::poll`] returns: the next step, and the answers that stood since the last
/// poll, by the index of the call in the batch.
#[derive(Debug)]
pub struct Poll<'a, E> {
    /// What to do next.
    pub step: Step<'a>,
    /// Calls whose outcome stands now.
    pub answers: Vec<(usize, Result<Outcome, RoundError<E>>)>,
}

/// What a [`Batch`] asks its adapter to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Read these objects, then call [`Batch::read`].
    Read(Reads),
    /// Write this pool's status, then call [`Batch::pool_written`].
    WritePool(&'a PoolWrite),
    /// Write this block, then call [`Batch::pool_written`].
    WriteBlock(&'a BlockWrite),
    /// Make these endpoint writes (at once), then call [`Batch::endpoints_written`] with a
    /// result per write, in order.
    WriteEndpoints(&'a [EndpointWrite]),
    /// Wait a duration drawn uniformly below this one, then call [`Batch::waited`].
    Wait(Duration),
    /// Nothing left: every call has its answer.
    Done,
}

enum Stage {
    Read,
    Early { decision: Decision },
    Pools { decision: Decision, next: usize },
    Endpoints { decision: Decision },
    Wait(Duration),
    Done,
}

/// Why a call is served again.
#[derive(Clone)]
enum Cause {
    Pool(String),
    Endpoint(PodRef),
}

/// The calls of one batch, served round after round until each has its answer: the protocol
/// of the cluster mode as a state machine, without IO.
///
/// ```
/// use std::time::Duration;
/// use spiderpool_core::round::{Batch, Call, RetryBudget, Step};
/// use spiderpool_core::RuntimeFacts;
/// let facts = RuntimeFacts { container_id: "c1".into(), interface: "eth0".into(), ..Default::default() };
/// let mut batch: Batch<String> = Batch::new(vec![Call::Add(facts)], RetryBudget::default(), Duration::ZERO);
/// // The first thing to do is to read the pools.
/// let Step::Read(reads) = batch.poll(Duration::ZERO).step else { panic!() };
/// assert!(reads.pools);
/// ```
pub struct Batch<E> {
    calls: Vec<Call>,
    /// Calls from this index on are compensations: their outcomes are not answers.
    answered_calls: usize,
    results: Vec<Option<Result<Outcome, RoundError<E>>>>,
    fresh: Vec<usize>,
    serving: Vec<usize>,
    causes: BTreeMap<usize, Cause>,
    snapshot: Snapshot,
    budget: RetryBudget,
    started: Duration,
    now: Duration,
    rounds: u32,
    conflicts: u32,
    /// ADD calls some of whose pool writes succeeded and that have no successful answer:
    /// what compensation looks at.
    wrote: BTreeSet<usize>,
    compensating: bool,
    /// Blocks whose writes succeeded or may have: where a failed ADD may have left records.
    written_blocks: BTreeSet<String>,
    /// Whether a compensation failed: what it would have released stays for the collector.
    uncompensated: bool,
    stage: Stage,
}

impl<E: Clone> Batch<E> {
    /// A batch of `calls`, started at `now` (any monotonic clock of the adapter's).
    pub fn new(calls: Vec<Call>, budget: RetryBudget, now: Duration) -> Batch<E> {
        let count = calls.len();
        Batch {
            calls,
            answered_calls: count,
            results: (0..count).map(|_| None).collect(),
            fresh: Vec::new(),
            serving: (0..count).collect(),
            causes: BTreeMap::new(),
            snapshot: Snapshot::default(),
            budget,
            started: now,
            now,
            rounds: 1,
            conflicts: 0,
            wrote: BTreeSet::new(),
            compensating: false,
            written_blocks: BTreeSet::new(),
            uncompensated: false,
            stage: Stage::Read,
        }
    }

    /// Facts already read (a pod the caller just read, say): the batch reads them no more.
    pub fn with_snapshot(mut self, snapshot: Snapshot) -> Batch<E> {
        self.snapshot.merge(snapshot);
        self
    }

    /// What to do next, at `now`, with the answers that stood since the last poll: an
    /// adapter hands them out before it does the step, so that none waits for later writes
    /// (and none is lost when the step is [`Step::Done`]).
    pub fn poll(&mut self, now: Duration) -> Poll<'_, E> {
        self.now = now;
        let step = self.next_step();
        let fresh = std::mem::take(&mut self.fresh);
        let answers = fresh
            .into_iter()
            .filter_map(|call| Some((call, self.results[call].take()?)))
            .collect();
        let step = match &self.stage {
            _ if step.is_some() => step.expect("checked"),
            Stage::Read => unreachable!("the next step leaves the read stage or reads"),
            Stage::Pools { decision, next } => match decision.block_writes.get(*next) {
                Some(write) => Step::WriteBlock(write),
                None => Step::WritePool(&decision.pool_writes[*next - decision.block_writes.len()]),
            },
            Stage::Endpoints { decision } => Step::WriteEndpoints(&decision.endpoint_writes),
            Stage::Early { decision } => Step::WriteEndpoints(&decision.early_endpoint_writes),
            Stage::Wait(ceiling) => Step::Wait(*ceiling),
            Stage::Done => Step::Done,
        };
        Poll { step, answers }
    }

    /// Reads, or decides once everything is read; `None` when the step is a write, a wait or
    /// the end.
    fn next_step<'a>(&mut self) -> Option<Step<'a>> {
        // A decision may settle every call at once and start a compensation round.
        while matches!(self.stage, Stage::Read) {
            let calls = self.serving_calls();
            let wanted = reads(&calls, &self.snapshot);
            if !wanted.is_empty() {
                return Some(Step::Read(wanted));
            }
            match decide(&calls, &mut self.snapshot) {
                Ok(decision) => self.begin_writes(decision),
                Err(more) => return Some(Step::Read(*more)),
            }
        }
        None
    }

    /// What was read for the last [`Step::Read`], or why it could not be.
    pub fn read(&mut self, read: Result<Snapshot, E>) {
        match read {
            Ok(read) => self.snapshot.merge(read),
            Err(error) => {
                let serving = std::mem::take(&mut self.serving);
                self.fail(&serving, error);
                self.finish();
            }
        }
    }

    /// How the last [`Step::WritePool`] or [`Step::WriteBlock`] went.
    pub fn pool_written(&mut self, written: Written<E>) {
        let Stage::Pools { decision, next } = &mut self.stage else {
            return;
        };
        if let Some(write) = decision.block_writes.get(*next)
            && !matches!(written, Written::Conflict)
        {
            self.written_blocks.insert(write.name.clone());
        }
        match written {
            Written::Done => {
                for (&call, decided) in self.serving.iter().zip(&decision.outcomes) {
                    if matches!(self.calls[call], Call::Add(_)) && decided.commit != Commit::Now {
                        self.wrote.insert(call);
                    }
                }
                *next += 1;
                if *next == decision.block_writes.len() + decision.pool_writes.len() {
                    let Stage::Pools { decision, .. } = std::mem::replace(&mut self.stage, Stage::Done)
                    else {
                        unreachable!()
                    };
                    self.pools_written(decision);
                }
            }
            Written::Conflict => {
                let pool = match decision.block_writes.get(*next) {
                    Some(write) => write.pool.clone(),
                    None => decision.pool_writes[*next - decision.block_writes.len()]
                        .pool
                        .clone(),
                };
                let Stage::Pools { decision, .. } = std::mem::replace(&mut self.stage, Stage::Done) else {
                    unreachable!()
                };
                self.conflicts += 1;
                let again = self.unsettled(&decision, |_| true);
                self.retry(again, Cause::Pool(pool));
            }
            Written::Failed(error) => {
                let Stage::Pools { decision, .. } = std::mem::replace(&mut self.stage, Stage::Done) else {
                    unreachable!()
                };
                let failed = self.unsettled(&decision, |_| true);
                // The write may have been made, its answer lost: compensate as if it was.
                for &call in &failed {
                    if matches!(self.calls[call], Call::Add(_)) {
                        self.wrote.insert(call);
                    }
                }
                self.fail(&failed, error);
                self.finish();
            }
        }
    }

    /// How the endpoint writes of the last [`Step::WriteEndpoints`] went, in order.
    pub fn endpoints_written(&mut self, results: Vec<Written<E>>) {
        let decision = match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Endpoints { decision } => decision,
            Stage::Early { decision } => return self.early_endpoints_written(decision, results),
            other => {
                self.stage = other;
                return;
            }
        };
        let mut again = Vec::new();
        let mut cause = None;
        for (&call, decided) in self.serving.clone().iter().zip(decision.outcomes) {
            let index = match decided.commit {
                Commit::Endpoint(index) => index,
                Commit::Endpoints => {
                    let outcome = decided.outcome.map(|outcome| match outcome {
                        Outcome::Swept(mut sweep) => {
                            sweep.orphaned_endpoints.retain(|pod| {
                                decision
                                    .endpoint_writes
                                    .iter()
                                    .zip(&results)
                                    .any(|(write, result)| {
                                        write.pod == *pod && matches!(result, Written::Done)
                                    })
                            });
                            Outcome::Swept(sweep)
                        }
                        other => other,
                    });
                    self.settle(call, outcome.map_err(RoundError::Refused));
                    continue;
                }
                Commit::Now | Commit::Pools => continue,
            };
            match results.get(index) {
                Some(Written::Done) => self.settle(call, decided.outcome.map_err(RoundError::Refused)),
                Some(Written::Failed(error)) => self.settle(call, Err(RoundError::Api(error.clone()))),
                Some(Written::Conflict) | None => {
                    cause = Some(Cause::Endpoint(decision.endpoint_writes[index].pod.clone()));
                    again.push(call);
                }
            }
        }
        self.conflicts += results.iter().filter(|r| matches!(r, Written::Conflict)).count() as u32;
        match cause {
            Some(cause) => self.retry(again, cause),
            None => self.finish(),
        }
    }

    /// The endpoints written before a borrow: on, to the blocks, when all were written.
    fn early_endpoints_written(&mut self, decision: Decision, results: Vec<Written<E>>) {
        let conflict = (decision.early_endpoint_writes.iter().zip(&results))
            .find(|(_, result)| matches!(result, Written::Conflict))
            .map(|(write, _)| write.pod.clone());
        let failed = results.iter().find_map(|result| match result {
            Written::Failed(error) => Some(error.clone()),
            _ => None,
        });
        self.conflicts += results.iter().filter(|r| matches!(r, Written::Conflict)).count() as u32;
        let unsettled = self.unsettled(&decision, |_| true);
        match (conflict, failed) {
            (_, Some(error)) => {
                self.fail(&unsettled, error);
                self.finish();
            }
            (Some(pod), None) => {
                for (write, result) in decision.early_endpoint_writes.iter().zip(&results) {
                    if matches!(result, Written::Conflict) {
                        self.snapshot.endpoint_wanted.insert(write.pod.clone());
                    }
                }
                self.retry(unsettled, Cause::Endpoint(pod))
            }
            (None, None) => {
                // Should a block write be refused now, the next round reads these endpoints
                // instead of creating them again, which would be refused too.
                for write in &decision.early_endpoint_writes {
                    self.snapshot.endpoint_wanted.insert(write.pod.clone());
                }
                self.write_stores(decision)
            }
        }
    }

    /// The wait of the last [`Step::Wait`] is over.
    pub fn waited(&mut self) {
        if matches!(self.stage, Stage::Wait(_)) {
            self.stage = Stage::Read;
        }
    }

    /// Rounds made so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Conflicts met so far.
    pub fn conflicts(&self) -> u32 {
        self.conflicts
    }

    /// Whether an ADD that failed after writing could not be compensated (the API server
    /// failed, or the pools kept changing): its records stay uncommitted until the pod's next
    /// ADD or the collector releases them.
    pub fn left_uncommitted(&self) -> bool {
        self.uncompensated
    }

    fn serving_calls(&self) -> Vec<Call> {
        self.serving
            .iter()
            .map(|&call| self.calls[call].clone())
            .collect()
    }

    /// Gives `call` its answer (compensations have none to give), and stops serving it.
    fn settle(&mut self, call: usize, result: Result<Outcome, RoundError<E>>) {
        if result.is_ok() {
            self.wrote.remove(&call);
        } else if call >= self.answered_calls {
            self.uncompensated = true;
        }
        if call < self.answered_calls {
            self.results[call] = Some(result);
            self.fresh.push(call);
        }
        self.serving.retain(|&serving| serving != call);
    }

    fn fail(&mut self, calls: &[usize], error: E) {
        for &call in calls {
            self.settle(call, Err(RoundError::Api(error.clone())));
        }
    }

    /// The calls of a decision whose outcome did not stand yet and that `keep` selects.
    fn unsettled(&self, decision: &Decision, keep: impl Fn(&Decided) -> bool) -> Vec<usize> {
        self.serving
            .iter()
            .zip(&decision.outcomes)
            .filter(|(_, decided)| decided.commit != Commit::Now && keep(decided))
            .map(|(&call, _)| call)
            .collect()
    }

    fn begin_writes(&mut self, decision: Decision) {
        // What stands now is answered now, whatever the writes do.
        for (&call, decided) in self.serving.clone().iter().zip(&decision.outcomes) {
            if decided.commit == Commit::Now {
                self.settle(call, decided.outcome.clone().map_err(RoundError::Refused));
            }
        }
        let decision = Decision {
            outcomes: decision
                .outcomes
                .into_iter()
                .filter(|d| d.commit != Commit::Now)
                .collect(),
            ..decision
        };
        if decision.early_endpoint_writes.is_empty() {
            self.write_stores(decision);
        } else {
            self.stage = Stage::Early { decision };
        }
    }

    /// On to the block and pool writes.
    fn write_stores(&mut self, decision: Decision) {
        if decision.pool_writes.is_empty() && decision.block_writes.is_empty() {
            self.pools_written(decision);
        } else {
            self.stage = Stage::Pools { decision, next: 0 };
        }
    }

    fn pools_written(&mut self, decision: Decision) {
        let mut outcomes = Vec::new();
        for (&call, decided) in self.serving.clone().iter().zip(decision.outcomes) {
            if decided.commit == Commit::Pools {
                self.settle(call, decided.outcome.map_err(RoundError::Refused));
            } else {
                outcomes.push(decided);
            }
        }
        let decision = Decision { outcomes, ..decision };
        if decision.endpoint_writes.is_empty() {
            self.finish();
        } else {
            self.stage = Stage::Endpoints { decision };
        }
    }

    /// Serves `calls` again in a new round after a backoff, or gives up on them when the
    /// budget is spent.
    fn retry(&mut self, calls: Vec<usize>, cause: Cause) {
        for &call in &calls {
            self.causes.insert(call, cause.clone());
        }
        self.serving = calls;
        let elapsed = self.now.saturating_sub(self.started);
        if self.rounds >= self.budget.attempts || elapsed >= self.budget.deadline {
            for call in self.serving.clone() {
                let error = match &self.causes[&call] {
                    Cause::Pool(pool) => RoundError::Contended {
                        pools: vec![pool.clone()],
                        attempts: self.rounds,
                        conflicts: self.conflicts,
                        elapsed,
                    },
                    Cause::Endpoint(pod) => RoundError::EndpointContended {
                        pod: pod.clone(),
                        attempts: self.rounds,
                    },
                };
                self.settle(call, Err(error));
            }
            self.finish();
            return;
        }
        self.stage = Stage::Wait(self.budget.backoff(self.rounds));
        self.rounds += 1;
    }

    /// Every served call has its answer: compensate for ADDs that failed after writing, or
    /// stop.
    fn finish(&mut self) {
        if !self.serving.is_empty() {
            self.stage = Stage::Read;
            return;
        }
        // Calls stay in `wrote` only when they failed.
        let failed = std::mem::take(&mut self.wrote);
        if self.compensating || failed.is_empty() {
            self.stage = Stage::Done;
            return;
        }
        self.compensating = true;
        for call in failed {
            let Call::Add(facts) = &self.calls[call] else {
                continue;
            };
            let record = facts
                .pod_ref()
                .and_then(|pod| Some((self.snapshot.pods.get(&pod)?.as_ref()?, pod)));
            let Some((record, pod)) = record else {
                self.uncompensated = true;
                continue;
            };
            let uid = record.uid.clone();
            self.serving.push(self.calls.len());
            self.calls.push(Call::Abandon {
                pod,
                uid,
                blocks: self.written_blocks.clone(),
            });
        }
        // A short budget of its own: if the API server is gone, the collector releases them.
        self.budget = RetryBudget {
            attempts: self.rounds + 5,
            deadline: self.now.saturating_sub(self.started) + self.budget.max_backoff * 5,
            ..self.budget
        };
        self.stage = if self.serving.is_empty() {
            Stage::Done
        } else {
            Stage::Read
        };
    }
}
