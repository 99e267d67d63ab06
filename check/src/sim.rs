//! A simulated API server and a seeded scheduler for the cluster protocol of
//! [`spiderpool_core::round`], in the manner of a sans-IO protocol's simulated pair.
//!
//! One schedule is one small cluster: three nodes in two zones, pools of both families and
//! one for a second interface, a reserved address, and a few pods (plain, dual-stack,
//! two-interface, StatefulSet). Every node runs an agent that serves its pods' ADDs and DELs in
//! batches with the core's [`Batch`], exactly as the Kubernetes adapter does; a garbage
//! collector sweeps with the same machine; a kubelet per pod runs its lifecycle (create, ADD,
//! sandbox restarts, late DELs of old sandboxes, deletion with and without DEL, StatefulSet
//! re-creation). The server keeps objects with versions and answers compare-and-swap writes.
//! The scheduler picks, at random from the seed, which actor makes its next step, so reads
//! and writes of different actors interleave at every point; it injects 409s, failed reads
//! and writes (some applied before they fail), latency, and agent crashes between any two
//! steps followed by a restart.
//!
//! After every step it checks what must always hold of the pods that are running and not in
//! a call; at every answer what the answer promises; at the end of every batch that a failed
//! ADD left nothing half-written; and, once everything settled and the collector swept past
//! its grace period, that every record is committed by a live pod (or kept for a
//! StatefulSet). [`run`] returns the first violation with the seed and a trace, so that any
//! failure replays from its seed alone.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use fastrand::Rng;
use spiderpool_core::gc::{GcPolicy, Seconds};
use spiderpool_core::round::{
    Batch, BlockChange, BlockWrite, Call, EndpointChange, EndpointWrite, Outcome, Poll, PoolWrite, Pools,
    Reads, RetryBudget, RoundError, Snapshot, Step, Versioned, Written,
};
use spiderpool_core::{
    Attachment, Block, BlockSpec, Change, Controller, EndpointSpec, IPPoolStatus, IndexedBlock, IpVersion,
    NamespaceFacts, NetworkFacts, OwnerKey, PodIdentity, PodPhase, PodRecord, PodRef, RuntimeFacts,
    SpiderIPPool, SpiderReservedIP, parse_documents, statefulset_keeps,
};

/// How many steps one schedule may take before it is reported as not settling.
const STEP_LIMIT: usize = 200_000;

/// The pools of every schedule: two zones of both families, and one for a second interface.
const POOLS: &str = "
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: a4}
spec: {subnet: 10.1.0.0/24, ips: [10.1.0.10-10.1.0.15], gateway: 10.1.0.1, nodeName: [n1, n2], blockSize: 30}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: b4}
spec: {subnet: 10.2.0.0/24, ips: [10.2.0.10-10.2.0.13], gateway: 10.2.0.1, nodeName: [n3], blockSize: 31}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: a6}
spec: {subnet: 'fd00:1::/64', ips: ['fd00:1::10-fd00:1::15'], nodeName: [n1, n2], blockSize: 126}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: b6}
spec: {subnet: 'fd00:2::/64', ips: ['fd00:2::10-fd00:2::13'], nodeName: [n3]}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: m4}
spec: {subnet: 10.3.0.0/24, ips: [10.3.0.10-10.3.0.17], blockSize: 31}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderReservedIP
metadata: {name: held-back}
spec: {ips: [10.1.0.12]}
";

/// The reserved address of [`POOLS`]: never handed out.
const RESERVED: &str = "10.1.0.12";
/// How long after the previous request of its step a request lands, at most: a GET or a
/// write, and a LIST (of the pools, or of every pod, node, endpoint and StatefulSet), which
/// takes longer on a real API server. Other actors' steps run meanwhile.
const REQUEST_LATENCY: Duration = Duration::from_millis(4);
const LIST_LATENCY: Duration = Duration::from_millis(16);

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const NAMESPACE: &str = "default";
const STATEFULSET: &str = "db";

/// A violation found by a schedule, with what led to it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed that replays it.
    pub seed: u64,
    /// What does not hold.
    pub what: String,
    /// The last events before it, oldest first.
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "schedule {} broke the protocol: {}\nreplay it with SPIDERPOOL_SIM_SEED={}; its last events:",
            self.seed, self.what, self.seed
        )?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What a schedule did, for the summary of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Scheduler steps.
    pub steps: usize,
    /// ADDs answered with addresses.
    pub added: usize,
    /// ADDs answered with an error.
    pub failed: usize,
    /// DELs answered.
    pub deleted: usize,
    /// Conflicts the batches met (injected or real).
    pub conflicts: usize,
    /// Agent crashes.
    pub crashes: usize,
    /// StatefulSet pods that came back with their addresses.
    pub kept: usize,
    /// Records the collector released.
    pub collected: usize,
    /// Blocks the collector gave back.
    pub blocks_given_back: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.steps += other.steps;
        self.blocks_given_back += other.blocks_given_back;
        self.added += other.added;
        self.failed += other.failed;
        self.deleted += other.deleted;
        self.conflicts += other.conflicts;
        self.crashes += other.crashes;
        self.kept += other.kept;
        self.collected += other.collected;
    }
}

/// A failure the simulated server injects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Fault(&'static str);

/// The faults of one schedule, drawn from its seed.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Of a write: a 409 although the version matches.
    conflict: f64,
    /// Of a read or write: an error (half of the failed writes are applied first).
    failure: f64,
    /// Of an agent's step: the process dies, and restarts a little later.
    crash: f64,
}

/// A call's answer, by its index in its batch.
type Answer = (usize, Result<Outcome, RoundError<Fault>>);

/// An object with the version a compare-and-swap presents.
#[derive(Debug, Clone)]
struct Stored<T> {
    version: u64,
    object: T,
}

/// Who holds what, as the pools' statuses say: pool, address, owner, container, interface.
type Records = Vec<(String, IpAddr, OwnerKey, String, String)>;

/// The API server: objects with versions, compare-and-swap writes.
#[derive(Debug, Clone, Default)]
struct Server {
    revision: u64,
    /// The records as of a revision, read once per change of the pools.
    records: std::cell::RefCell<(u64, std::rc::Rc<Records>)>,
    pools: BTreeMap<String, Stored<SpiderIPPool>>,
    reserved: Vec<SpiderReservedIP>,
    pods: BTreeMap<PodRef, PodRecord>,
    namespaces: BTreeMap<String, NamespaceFacts>,
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    endpoints: BTreeMap<PodRef, Stored<EndpointSpec>>,
    statefulsets: BTreeMap<PodRef, u32>,
    blocks: BTreeMap<String, Stored<BlockSpec>>,
    /// The blocks of each node and of each pool, as a field selector finds them.
    node_index: BTreeMap<String, BTreeSet<String>>,
    pool_index: BTreeMap<String, BTreeSet<String>>,
    /// The pools' blocks as a list showed them at some moment: when set, a list of a pool's
    /// blocks shows only those (as they are now), like an API server's watch cache lagging
    /// behind, which serves lists made from the cache.
    lagging_index: Option<BTreeMap<String, BTreeSet<String>>>,
}

impl Server {
    fn new() -> Server {
        Server::with(POOLS, &NODES.map(|node| (node.to_owned(), BTreeMap::new())))
    }

    /// A server holding the pools and reserved addresses of `objects` (YAML) and `nodes` with
    /// their labels, and the namespace `default`.
    fn with(objects: &str, nodes: &[(String, BTreeMap<String, String>)]) -> Server {
        let mut server = Server::default();
        for document in parse_documents(objects).expect("the simulation's pools parse") {
            match document.resource {
                spiderpool_core::Resource::IpPool(pool) => {
                    let version = server.bump();
                    server.pools.insert(
                        pool.metadata.name.clone(),
                        Stored {
                            version,
                            object: *pool,
                        },
                    );
                }
                spiderpool_core::Resource::ReservedIp(reserved) => server.reserved.push(reserved),
                spiderpool_core::Resource::Other { .. } => {}
            }
        }
        server
            .namespaces
            .insert(NAMESPACE.into(), NamespaceFacts::default());
        for (node, labels) in nodes {
            server.nodes.insert(node.clone(), labels.clone());
        }
        server
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn read(&self, reads: &Reads) -> Snapshot {
        let mut snapshot = Snapshot::default();
        if reads.pools {
            let pools = self
                .pools
                .values()
                .map(|stored| {
                    let mut pool = stored.object.clone();
                    pool.metadata.resource_version = Some(stored.version.to_string());
                    pool
                })
                .collect();
            snapshot.pools =
                Some(Pools::read(pools, self.reserved.clone()).expect("statuses the core wrote read back"));
        }
        if reads.everything {
            snapshot.everything = true;
            snapshot.pods = self
                .pods
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            snapshot.nodes = self
                .nodes
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            snapshot.endpoints = self
                .endpoints
                .keys()
                .map(|pod| (pod.clone(), self.endpoint(pod)))
                .collect();
            snapshot.statefulsets = self
                .statefulsets
                .iter()
                .map(|(k, v)| (k.clone(), Some(*v)))
                .collect();
        }
        for pod in &reads.pods {
            snapshot.pods.insert(pod.clone(), self.pods.get(pod).cloned());
        }
        for namespace in &reads.namespaces {
            snapshot
                .namespaces
                .insert(namespace.clone(), self.namespaces.get(namespace).cloned());
        }
        for node in &reads.nodes {
            snapshot.nodes.insert(node.clone(), self.nodes.get(node).cloned());
        }
        for pod in &reads.endpoints {
            snapshot.endpoints.insert(pod.clone(), self.endpoint(pod));
        }
        for set in &reads.statefulsets {
            snapshot
                .statefulsets
                .insert(set.clone(), self.statefulsets.get(set).copied());
        }
        snapshot.all_blocks = reads.all_blocks;
        let whole: Box<dyn Iterator<Item = &String>> = if reads.all_blocks {
            Box::new(self.blocks.keys())
        } else {
            let of_nodes =
                (reads.node_blocks.iter()).flat_map(|node| self.node_index.get(node).into_iter().flatten());
            Box::new(of_nodes.chain(&reads.blocks))
        };
        for name in whole {
            let read = self.blocks.get(name).map(|stored| self.block(name, stored));
            snapshot.blocks.insert(name.clone(), read);
        }
        let index = self.lagging_index.as_ref().unwrap_or(&self.pool_index);
        for pool in &reads.block_index {
            for name in index.get(pool).into_iter().flatten() {
                let Some(stored) = self.blocks.get(name) else {
                    continue;
                };
                let start = stored
                    .object
                    .cidr
                    .parse::<spiderpool_core::Subnet>()
                    .expect("a block's cidr");
                let indexed = IndexedBlock {
                    name: name.clone(),
                    start: start.network(),
                    node: stored.object.node.clone(),
                    allocated: stored.object.allocated_ip_count as u64,
                    pool_uid: stored.object.pool_uid.clone(),
                };
                snapshot
                    .block_index
                    .entry(pool.clone())
                    .or_default()
                    .push(indexed);
            }
        }
        for pool in &reads.block_index {
            snapshot.block_index.entry(pool.clone()).or_default();
        }
        snapshot.node_blocks.extend(reads.node_blocks.iter().cloned());
        snapshot
    }

    fn block(&self, name: &str, stored: &Stored<BlockSpec>) -> Block {
        Block::read(name, stored.version.to_string(), stored.object.clone())
            .expect("blocks the core wrote read back")
    }

    fn write_block(&mut self, write: &BlockWrite) -> bool {
        let current = self
            .blocks
            .get(&write.name)
            .map(|stored| stored.version.to_string());
        let version = self.bump();
        let written = match (&write.change, current) {
            (BlockChange::Create(_), None) => true,
            (BlockChange::Replace { version: read, .. }, Some(current)) => *read == current,
            (BlockChange::Delete { version: read }, Some(current)) => *read == current,
            _ => false,
        };
        if !written {
            return false;
        }
        if let Some(old) = self.blocks.remove(&write.name) {
            for index in [
                self.node_index.get_mut(&old.object.node),
                self.pool_index.get_mut(&old.object.pool),
            ]
            .into_iter()
            .flatten()
            {
                index.remove(&write.name);
            }
        }
        if let Some(spec) = write.spec() {
            (self.node_index.entry(spec.node.clone()).or_default()).insert(write.name.clone());
            (self.pool_index.entry(spec.pool.clone()).or_default()).insert(write.name.clone());
            let object = spec.clone();
            self.blocks.insert(write.name.clone(), Stored { version, object });
        }
        true
    }

    fn endpoint(&self, pod: &PodRef) -> Option<Versioned<EndpointSpec>> {
        self.endpoints.get(pod).map(|stored| Versioned {
            version: stored.version.to_string(),
            object: stored.object.clone(),
        })
    }

    fn write_pool(&mut self, write: &PoolWrite) -> bool {
        let version = self.revision + 1;
        let Some(stored) = self.pools.get_mut(&write.pool) else {
            return false;
        };
        if stored.version.to_string() != write.version {
            return false;
        }
        stored.object.status = Some(write.status.clone());
        stored.version = version;
        self.revision = version;
        true
    }

    fn write_endpoint(&mut self, write: &EndpointWrite) -> bool {
        let current = self
            .endpoints
            .get(&write.pod)
            .map(|stored| stored.version.to_string());
        let version = self.bump();
        match (&write.change, current) {
            (EndpointChange::Create(spec), None) => {
                let stored = Stored {
                    version,
                    object: spec.clone(),
                };
                self.endpoints.insert(write.pod.clone(), stored);
                true
            }
            (EndpointChange::Replace { version: read, spec }, Some(current)) if *read == current => {
                let stored = Stored {
                    version,
                    object: spec.clone(),
                };
                self.endpoints.insert(write.pod.clone(), stored);
                true
            }
            (EndpointChange::Delete { version: read }, Some(current)) if *read == current => {
                self.endpoints.remove(&write.pod);
                true
            }
            // A delete of what is gone is done.
            (EndpointChange::Delete { .. }, None) => true,
            _ => false,
        }
    }

    /// Who holds what, now.
    fn records(&self) -> std::rc::Rc<Records> {
        let mut cached = self.records.borrow_mut();
        if cached.0 != self.revision || self.revision == 0 {
            *cached = (self.revision, std::rc::Rc::new(self.read_records()));
        }
        cached.1.clone()
    }

    fn read_records(&self) -> Records {
        let empty = IPPoolStatus::default();
        let state = spiderpool_core::state_from_statuses(
            self.pools
                .iter()
                .map(|(name, stored)| (name.as_str(), stored.object.status.as_ref().unwrap_or(&empty))),
        )
        .expect("statuses the core wrote read back");
        let mut records = Vec::new();
        for pool in self.pools.keys() {
            let Ok(allocations) = spiderpool_core::AllocationState::allocations(&state, pool);
            for (address, holder) in allocations {
                records.push((
                    pool.clone(),
                    address,
                    holder.owner(),
                    holder.container_id(),
                    holder.interface(),
                ));
            }
        }
        for (name, stored) in &self.blocks {
            for change in &self.block(name, stored).allocations {
                let Change::Allocate {
                    pool,
                    address,
                    holder,
                } = change
                else {
                    unreachable!("a block reads as allocations")
                };
                records.push((
                    pool.clone(),
                    *address,
                    holder.owner(),
                    holder.container_id(),
                    holder.interface(),
                ));
            }
        }
        records
    }
}

/// What a pod asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One IPv4 address, from its zone's pool (the seed's fallback list).
    V4,
    /// One address of each family.
    DualStack,
    /// Two interfaces, both allocated by the first one's ADD (`ipam.spidernet.io/ippools`).
    TwoInterfaces,
}

/// What the kubelet of a pod is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// The pod object is to be created at `at` (a StatefulSet brings a pod back).
    Pending { at: Duration },
    /// ADDs of `sandbox`'s interfaces from `next` on; `stale` is an older sandbox whose DEL
    /// comes after (a late teardown).
    Adding {
        sandbox: String,
        next: usize,
        stale: Option<String>,
    },
    /// Up with `sandbox`; the next lifecycle event at `at`.
    Running { sandbox: String, at: Duration },
    /// DELs of `sandbox`'s interfaces `left`, then `then`.
    Deleting {
        sandbox: String,
        left: Vec<String>,
        then: Then,
    },
    /// Gone for good.
    Gone,
}

/// What comes after a teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Then {
    /// ADD a new sandbox.
    AddAgain,
    /// Back to running `sandbox` (the teardown was of an older one).
    Resume(String),
    /// Delete the pod object.
    DeletePod,
    /// Tear an older sandbox down too, then go on.
    AlsoDelete(String, Box<Then>),
}

/// A call in flight from a kubelet to its node's agent.
#[derive(Debug, Clone)]
struct Waiting {
    id: u64,
    deadline: Duration,
}

/// A pod and its kubelet.
#[derive(Debug, Clone)]
struct Kubelet {
    pod: PodRef,
    node: String,
    shape: Shape,
    statefulset: bool,
    uid: String,
    incarnation: u32,
    sandboxes: u32,
    phase: Phase,
    waiting: Option<Waiting>,
    add_failures: u32,
    events_left: u32,
    /// The addresses answered per interface, while the pod uses them.
    live: BTreeMap<String, Vec<(String, IpAddr)>>,
    /// Whether an earlier batch may have left records of this pod half-written (an agent
    /// crash, a compensation that failed); cleared by its next successful ADD.
    may_have_leftovers: bool,
}

impl Kubelet {
    fn interfaces(&self) -> Vec<String> {
        match self.shape {
            Shape::TwoInterfaces => vec!["eth0".into(), "net1".into()],
            _ => vec!["eth0".into()],
        }
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        let (key, value) = match self.shape {
            Shape::V4 => ("ipam.spidernet.io/ippool", r#"{"ipv4": ["a4", "b4"]}"#),
            Shape::DualStack => (
                "ipam.spidernet.io/ippool",
                r#"{"ipv4": ["a4", "b4"], "ipv6": ["a6", "b6"]}"#,
            ),
            Shape::TwoInterfaces => (
                "ipam.spidernet.io/ippools",
                r#"[{"interface": "eth0", "ipv4": ["a4", "b4"]}, {"interface": "net1", "ipv4": ["m4"]}]"#,
            ),
        };
        [(key.to_owned(), value.to_owned())].into()
    }

    /// Whether the pod runs and no call of it is in flight: what it holds must hold still.
    fn settled(&self) -> bool {
        matches!(self.phase, Phase::Running { .. }) && self.waiting.is_none()
    }

    fn facts(&self, sandbox: &str, interface: &str) -> RuntimeFacts {
        RuntimeFacts {
            container_id: sandbox.to_owned(),
            interface: interface.to_owned(),
            pod: Some(PodIdentity {
                namespace: self.pod.namespace.clone(),
                name: self.pod.name.clone(),
                uid: Some(self.uid.clone()),
            }),
            node: None,
            network: NetworkFacts {
                attachment: Some(Attachment {
                    namespace: NAMESPACE.into(),
                    name: "macvlan-conf".into(),
                }),
                ..NetworkFacts::default()
            },
            families: Default::default(),
        }
    }
}

/// A batch in an agent or the collector, with the kubelet call of each of its calls.
struct Running {
    batch: Batch<Fault>,
    ids: Vec<u64>,
    pods: Vec<PodRef>,
    calls: Vec<Call>,
    wake: Duration,
    /// The reads or endpoint writes of a step, made one per scheduler step.
    pending: Option<Pending>,
}

/// What is left of a step whose requests are made one at a time.
enum Pending {
    /// Reads still to make, and what the ones made read.
    Reads { parts: Vec<Reads>, read: Box<Snapshot> },
    /// Endpoint writes still to make (by index, last first), and the results so far.
    Endpoints {
        writes: Vec<EndpointWrite>,
        order: Vec<usize>,
        results: Vec<Option<Written<Fault>>>,
    },
}

/// The reads of a stage one by one: each kind of list, and each object.
fn split(reads: &Reads) -> Vec<Reads> {
    let mut parts = Vec::new();
    let one = |edit: &dyn Fn(&mut Reads)| {
        let mut part = Reads::default();
        edit(&mut part);
        part
    };
    if reads.pools {
        parts.push(one(&|part| part.pools = true));
    }
    if reads.everything {
        parts.push(one(&|part| part.everything = true));
    }
    if reads.all_blocks {
        parts.push(one(&|part| part.all_blocks = true));
    }
    for pod in &reads.pods {
        parts.push(one(&|part| {
            part.pods.insert(pod.clone());
        }));
    }
    for namespace in &reads.namespaces {
        parts.push(one(&|part| {
            part.namespaces.insert(namespace.clone());
        }));
    }
    for node in &reads.nodes {
        parts.push(one(&|part| {
            part.nodes.insert(node.clone());
        }));
    }
    for pod in &reads.endpoints {
        parts.push(one(&|part| {
            part.endpoints.insert(pod.clone());
        }));
    }
    for set in &reads.statefulsets {
        parts.push(one(&|part| {
            part.statefulsets.insert(set.clone());
        }));
    }
    for node in &reads.node_blocks {
        parts.push(one(&|part| {
            part.node_blocks.insert(node.clone());
        }));
    }
    for pool in &reads.block_index {
        parts.push(one(&|part| {
            part.block_index.insert(pool.clone());
        }));
    }
    for block in &reads.blocks {
        parts.push(one(&|part| {
            part.blocks.insert(block.clone());
        }));
    }
    parts
}

/// A node's agent.
struct Agent {
    node: String,
    queue: VecDeque<(u64, PodRef, Call)>,
    running: Option<Running>,
    down_until: Duration,
}

/// The garbage collector.
struct Collector {
    running: Option<Running>,
    next_sweep: Duration,
    suspects: BTreeMap<(String, IpAddr), Seconds>,
    empty_blocks: BTreeMap<String, Seconds>,
}

/// One schedule: the cluster, its actors and the scheduler's state.
struct World {
    seed: u64,
    rng: Rng,
    now: Duration,
    server: Server,
    faults: Faults,
    budget: RetryBudget,
    batch_size: usize,
    kubelets: Vec<Kubelet>,
    agents: Vec<Agent>,
    collector: Collector,
    policy: GcPolicy,
    mailbox: Vec<(u64, Result<Outcome, RoundError<Fault>>)>,
    next_id: u64,
    /// Which kubelet and call each id is.
    calls: BTreeMap<u64, (usize, Call)>,
    /// The addresses a StatefulSet pod left for its successor, by pod name.
    kept: BTreeMap<String, Vec<(String, IpAddr)>>,
    quiescing: bool,
    /// ADD calls the agents answered with an error.
    failed_adds: BTreeSet<u64>,
    trace: VecDeque<String>,
    tally: Tally,
}

/// Sim time to the collector's clock: whole seconds.
fn seconds(time: Duration) -> Seconds {
    time.as_secs() as Seconds
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::with_seed(seed);
        let faults = Faults {
            conflict: [0.0, 0.05, 0.3][rng.usize(0..3)],
            failure: [0.0, 0.0, 0.03][rng.usize(0..3)],
            crash: [0.0, 0.0, 0.01][rng.usize(0..3)],
        };
        let budget = RetryBudget {
            attempts: rng.u32(3..=8),
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(8),
            deadline: Duration::from_millis(400),
        };
        let pods = rng.usize(2..=6);
        let mut kubelets = Vec::new();
        let mut ordinal = 0;
        for index in 0..pods {
            let statefulset = rng.u8(0..3) == 0;
            let name = if statefulset {
                ordinal += 1;
                format!("{STATEFULSET}-{}", ordinal - 1)
            } else {
                format!("web-{index}")
            };
            let shape = [Shape::V4, Shape::DualStack, Shape::TwoInterfaces][rng.usize(0..3)];
            kubelets.push(Kubelet {
                pod: PodRef {
                    namespace: NAMESPACE.into(),
                    name,
                },
                node: NODES[rng.usize(0..NODES.len())].into(),
                shape,
                statefulset,
                uid: String::new(),
                incarnation: 0,
                sandboxes: 0,
                phase: Phase::Pending {
                    // Pods come all through the schedule, so that some land while the
                    // collector is between two of its reads.
                    at: Duration::from_millis(rng.u64(0..600)),
                },
                waiting: None,
                add_failures: 0,
                events_left: rng.u32(1..=4),
                live: BTreeMap::new(),
                may_have_leftovers: false,
            });
        }
        let mut server = Server::new();
        if ordinal > 0 {
            let set = PodRef {
                namespace: NAMESPACE.into(),
                name: STATEFULSET.into(),
            };
            server.statefulsets.insert(set, ordinal);
        }
        let first_sweep = Duration::from_millis(rng.u64(20..200));
        let agents = NODES
            .iter()
            .map(|node| Agent {
                node: (*node).into(),
                queue: VecDeque::new(),
                running: None,
                down_until: Duration::ZERO,
            })
            .collect();
        World {
            seed,
            batch_size: rng.usize(1..=4),
            rng,
            now: Duration::ZERO,
            server,
            faults,
            budget,
            kubelets,
            agents,
            collector: Collector {
                running: None,
                next_sweep: first_sweep,
                suspects: BTreeMap::new(),
                empty_blocks: BTreeMap::new(),
            },
            // Grace periods in whole seconds of sim time, far above any batch (its deadline
            // is 400 ms), as in a cluster (120 s against 30 s).
            policy: GcPolicy {
                finished_grace: 3,
                uncommitted_grace: 3,
                empty_block_grace: 2,
            },
            mailbox: Vec::new(),
            next_id: 0,
            calls: BTreeMap::new(),
            kept: BTreeMap::new(),
            quiescing: false,
            failed_adds: BTreeSet::new(),
            trace: VecDeque::new(),
            tally: Tally::default(),
        }
    }

    fn log(&mut self, event: String) {
        if self.trace.len() == 400 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>7.1} ms  {event}", self.now.as_secs_f64() * 1000.0));
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    /// A request's latency: up to `ceiling`.
    fn latency(&mut self, ceiling: Duration) -> Duration {
        Duration::from_micros(self.rng.u64(0..=ceiling.as_micros() as u64))
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.f64() < probability
    }

    // ----- the scheduler -----

    fn run(mut self) -> Result<Tally, Violation> {
        let active = Duration::from_millis(self.rng.u64(300..1500));
        loop {
            self.tally.steps += 1;
            if self.tally.steps > STEP_LIMIT {
                return Err(self.violation("the schedule did not settle".into()));
            }
            if !self.quiescing && self.now >= active {
                self.quiescing = true;
                self.log("quiescing: no new lifecycle events".into());
            }
            let ready = self.ready();
            if ready.is_empty() {
                match self.next_wake() {
                    Some(at) => {
                        self.now = self.now.max(at);
                        continue;
                    }
                    None => break,
                }
            }
            let actor = ready[self.rng.usize(0..ready.len())];
            match actor {
                Actor::Kubelet(index) => self.step_kubelet(index)?,
                Actor::Agent(index) => self.step_agent(index)?,
                Actor::Collector => self.step_collector()?,
            }
            self.deliver()?;
            self.check_settled()?;
            self.now += Duration::from_micros(self.rng.u64(0..3000));
        }
        self.settle_and_collect()?;
        Ok(self.tally)
    }

    /// The actors that can make a step now.
    fn ready(&self) -> Vec<Actor> {
        let mut ready = Vec::new();
        for (index, kubelet) in self.kubelets.iter().enumerate() {
            let acts = match (&kubelet.waiting, &kubelet.phase) {
                (Some(waiting), _) => self.now >= waiting.deadline,
                (None, Phase::Pending { at }) => self.now >= *at,
                (None, Phase::Running { at, .. }) => {
                    !self.quiescing && kubelet.events_left > 0 && self.now >= *at
                }
                (None, Phase::Gone) => false,
                (None, _) => true,
            };
            if acts {
                ready.push(Actor::Kubelet(index));
            }
        }
        for (index, agent) in self.agents.iter().enumerate() {
            let up = self.now >= agent.down_until;
            let work = match &agent.running {
                Some(running) => self.now >= running.wake,
                None => !agent.queue.is_empty(),
            };
            if up && work {
                ready.push(Actor::Agent(index));
            }
        }
        let sweeping = match &self.collector.running {
            Some(running) => self.now >= running.wake,
            None => !self.quiescing && self.now >= self.collector.next_sweep,
        };
        if sweeping {
            ready.push(Actor::Collector);
        }
        ready
    }

    /// When the next actor becomes ready, if any will.
    fn next_wake(&self) -> Option<Duration> {
        let mut times = Vec::new();
        for kubelet in &self.kubelets {
            match (&kubelet.waiting, &kubelet.phase) {
                (Some(waiting), _) => times.push(waiting.deadline),
                (None, Phase::Pending { at }) => times.push(*at),
                (None, Phase::Running { at, .. }) if !self.quiescing && kubelet.events_left > 0 => {
                    times.push(*at)
                }
                _ => {}
            }
        }
        for agent in &self.agents {
            match &agent.running {
                Some(running) => times.push(running.wake.max(agent.down_until)),
                None if !agent.queue.is_empty() => times.push(agent.down_until),
                None => {}
            }
        }
        if let Some(running) = &self.collector.running {
            times.push(running.wake);
        } else if !self.quiescing {
            times.push(self.collector.next_sweep);
        }
        times.into_iter().min()
    }

    // ----- kubelets -----

    fn step_kubelet(&mut self, index: usize) -> Result<(), Violation> {
        if let Some(waiting) = self.kubelets[index].waiting.clone() {
            // No answer in time: the runtime gives up on the call; a late answer is ignored.
            self.kubelets[index].waiting = None;
            let (_, call) = self.calls.remove(&waiting.id).expect("a call in flight is known");
            let pod = self.kubelets[index].pod.clone();
            self.log(format!("{pod}: call {} timed out", waiting.id));
            return self.answered(index, call, Err(RoundError::Api(Fault("timed out"))));
        }
        let kubelet = &mut self.kubelets[index];
        match kubelet.phase.clone() {
            Phase::Pending { .. } => {
                kubelet.incarnation += 1;
                kubelet.uid = format!("{}-uid-{}", kubelet.pod.name, kubelet.incarnation);
                let record = PodRecord {
                    uid: kubelet.uid.clone(),
                    node: kubelet.node.clone(),
                    annotations: kubelet.annotations(),
                    controller: Some(Controller {
                        kind: if kubelet.statefulset {
                            "StatefulSet"
                        } else {
                            "ReplicaSet"
                        }
                        .into(),
                        name: if kubelet.statefulset { STATEFULSET } else { "web" }.into(),
                    }),
                    phase: PodPhase::Running,
                    ..PodRecord::default()
                };
                let (pod, uid, node) = (kubelet.pod.clone(), kubelet.uid.clone(), kubelet.node.clone());
                self.server.pods.insert(pod.clone(), record);
                let sandbox = self.new_sandbox(index);
                self.kubelets[index].phase = Phase::Adding {
                    sandbox,
                    next: 0,
                    stale: None,
                };
                self.log(format!("{pod}: created as {uid} on {node}"));
            }
            Phase::Adding { sandbox, next, stale } => {
                let interfaces = kubelet.interfaces();
                match interfaces.get(next) {
                    Some(interface) => {
                        let call = Call::Add(kubelet.facts(&sandbox, interface));
                        self.send(index, call);
                    }
                    None => {
                        kubelet.phase = match stale {
                            Some(old) => Phase::Deleting {
                                sandbox: old,
                                left: interfaces.into_iter().rev().collect(),
                                then: Then::Resume(sandbox),
                            },
                            None => Phase::Running {
                                sandbox,
                                at: self.now + Duration::from_millis(self.rng.u64(5..80)),
                            },
                        };
                    }
                }
            }
            Phase::Running { sandbox, .. } => {
                kubelet.events_left -= 1;
                let interfaces: Vec<String> = kubelet.interfaces().into_iter().rev().collect();
                let pod = kubelet.pod.clone();
                match self.rng.u8(0..10) {
                    // The sandbox restarts: teardown first, then a new one.
                    0..=2 => {
                        self.log(format!("{pod}: sandbox {sandbox} restarts"));
                        self.kubelets[index].phase = Phase::Deleting {
                            sandbox,
                            left: interfaces,
                            then: Then::AddAgain,
                        };
                    }
                    // A new sandbox first, the old one's DEL late.
                    3..=4 => {
                        self.log(format!("{pod}: new sandbox, {sandbox} torn down late"));
                        let new = self.new_sandbox(index);
                        self.kubelets[index].phase = Phase::Adding {
                            sandbox: new,
                            next: 0,
                            stale: Some(sandbox),
                        };
                    }
                    // Deleted: DEL, then the object goes.
                    5..=7 => {
                        self.log(format!("{pod}: deleted"));
                        self.kubelets[index].phase = Phase::Deleting {
                            sandbox,
                            left: interfaces,
                            then: Then::DeletePod,
                        };
                    }
                    // Force-deleted: the object goes without a DEL (a lost node).
                    8 => {
                        self.log(format!("{pod}: force-deleted, no DEL"));
                        self.delete_pod(index);
                    }
                    _ => {
                        let at = self.now + Duration::from_millis(self.rng.u64(5..80));
                        self.kubelets[index].phase = Phase::Running { sandbox, at };
                    }
                }
            }
            Phase::Deleting { sandbox, left, then } => match left.first() {
                Some(interface) => {
                    let call = Call::Del(kubelet.facts(&sandbox, interface));
                    self.send(index, call);
                }
                None => match then {
                    Then::AddAgain => {
                        let sandbox = self.new_sandbox(index);
                        self.kubelets[index].phase = Phase::Adding {
                            sandbox,
                            next: 0,
                            stale: None,
                        };
                    }
                    Then::Resume(sandbox) => {
                        let at = self.now + Duration::from_millis(self.rng.u64(5..80));
                        self.kubelets[index].phase = Phase::Running { sandbox, at };
                    }
                    Then::DeletePod => self.delete_pod(index),
                    Then::AlsoDelete(sandbox, then) => {
                        let left = self.kubelets[index].interfaces().into_iter().rev().collect();
                        self.kubelets[index].phase = Phase::Deleting {
                            sandbox,
                            left,
                            then: *then,
                        };
                    }
                },
            },
            Phase::Gone => {}
        }
        Ok(())
    }

    fn new_sandbox(&mut self, index: usize) -> String {
        let kubelet = &mut self.kubelets[index];
        kubelet.sandboxes += 1;
        format!("{}-s{}", kubelet.pod.name, kubelet.sandboxes)
    }

    fn send(&mut self, index: usize, call: Call) {
        self.next_id += 1;
        let id = self.next_id;
        let kubelet = &mut self.kubelets[index];
        kubelet.waiting = Some(Waiting {
            id,
            deadline: self.now + Duration::from_millis(1000),
        });
        let pod = kubelet.pod.clone();
        let node = kubelet.node.clone();
        // The agent knows its node and tells it with every call, as `ClusterStore::with_node`
        // does: an ADD reads the node with the pod, a DEL finds the node where the pod is gone.
        let call = match call {
            Call::Add(mut facts) => {
                facts.node.get_or_insert_with(|| node.clone());
                Call::Add(facts)
            }
            Call::Del(mut facts) => {
                facts.node.get_or_insert_with(|| node.clone());
                Call::Del(facts)
            }
            other => other,
        };
        self.log(format!("{pod}: sends {} (call {id}) to {node}", describe(&call)));
        self.calls.insert(id, (index, call.clone()));
        let agent = self
            .agents
            .iter_mut()
            .find(|agent| agent.node == node)
            .expect("every node has an agent");
        agent.queue.push_back((id, pod, call));
    }

    /// The pod object goes; a StatefulSet brings its pod back under the name while its
    /// ordinal is below the set's replicas. A pod that comes back no more scales the set down
    /// to its ordinal: the pods above it are not brought back either.
    fn delete_pod(&mut self, index: usize) {
        let set = PodRef {
            namespace: NAMESPACE.into(),
            name: STATEFULSET.into(),
        };
        let replicas = self.server.statefulsets.get(&set).copied().unwrap_or(0);
        let kubelet = &mut self.kubelets[index];
        self.server.pods.remove(&kubelet.pod);
        let live = std::mem::take(&mut kubelet.live);
        let own = ordinal(&kubelet.pod);
        if kubelet.statefulset && kubelet.incarnation < 3 && own < replicas {
            if let Some(eth0) = live.get("eth0") {
                self.kept.insert(kubelet.pod.name.clone(), eth0.clone());
            }
            // Re-created, maybe on another node of the cluster.
            kubelet.node = NODES[self.rng.usize(0..NODES.len())].into();
            kubelet.phase = Phase::Pending {
                at: self.now + Duration::from_millis(self.rng.u64(1..50)),
            };
            kubelet.events_left = kubelet.events_left.max(1);
            return;
        }
        kubelet.phase = Phase::Gone;
        if kubelet.statefulset && own < replicas {
            self.server.statefulsets.insert(set, own);
            self.log(format!("StatefulSet {STATEFULSET} scaled down to {own}"));
            for other in &mut self.kubelets {
                if other.statefulset && ordinal(&other.pod) >= own {
                    self.kept.remove(&other.pod.name);
                    if matches!(other.phase, Phase::Pending { .. }) {
                        other.phase = Phase::Gone;
                    }
                }
            }
        }
    }

    // ----- agents and the collector -----

    fn step_agent(&mut self, index: usize) -> Result<(), Violation> {
        if self.chance(self.faults.crash) {
            let agent = &mut self.agents[index];
            let lost: Vec<PodRef> = agent
                .queue
                .drain(..)
                .map(|(_, pod, _)| pod)
                .chain(agent.running.take().into_iter().flat_map(|running| running.pods))
                .collect();
            agent.down_until = self.now + Duration::from_millis(20);
            let node = agent.node.clone();
            for kubelet in &mut self.kubelets {
                if lost.contains(&kubelet.pod) {
                    kubelet.may_have_leftovers = true;
                }
            }
            self.tally.crashes += 1;
            self.log(format!("agent {node} crashed; restarts in 20 ms"));
            return Ok(());
        }
        let agent = &mut self.agents[index];
        if agent.running.is_none() {
            let take = agent.queue.len().min(self.batch_size);
            let jobs: Vec<(u64, PodRef, Call)> = agent.queue.drain(..take).collect();
            let ids = jobs.iter().map(|(id, _, _)| *id).collect();
            let pods = jobs.iter().map(|(_, pod, _)| pod.clone()).collect();
            let calls: Vec<Call> = jobs.into_iter().map(|(_, _, call)| call).collect();
            agent.running = Some(Running {
                batch: Batch::new(calls.clone(), self.budget, self.now),
                ids,
                pods,
                calls,
                wake: self.now,
                pending: None,
            });
        }
        let mut running = self.agents[index].running.take().expect("a batch runs");
        let actor = format!("agent {}", self.agents[index].node);
        let (done, answers) = self.step_batch(&actor, &mut running);
        for (call, result) in answers {
            let id = running.ids[call];
            if result.is_err() && matches!(self.calls.get(&id), Some((_, Call::Add(_)))) {
                self.failed_adds.insert(id);
            }
            self.mailbox.push((id, result));
        }
        if done {
            self.tally.conflicts += running.batch.conflicts() as usize;
            self.batch_ended(&running)?;
        } else {
            self.agents[index].running = Some(running);
        }
        Ok(())
    }

    /// A sweep of the collector, starting now.
    fn sweep(&self) -> Running {
        Running {
            batch: Batch::new(
                vec![Call::Sweep {
                    now: seconds(self.now),
                    policy: self.policy,
                    suspects: self.collector.suspects.clone(),
                    empty_blocks: self.collector.empty_blocks.clone(),
                }],
                self.budget,
                self.now,
            ),
            ids: vec![0],
            pods: Vec::new(),
            calls: Vec::new(),
            wake: self.now,
            pending: None,
        }
    }

    fn step_collector(&mut self) -> Result<(), Violation> {
        let mut running = match self.collector.running.take() {
            Some(running) => running,
            None => self.sweep(),
        };
        let (done, answers) = self.step_batch("collector", &mut running);
        for (_, result) in answers {
            if let Ok(Outcome::Swept(sweep)) = result {
                for collected in &sweep.collected {
                    self.log(format!(
                        "collector released {} in {}: {}",
                        collected.change.address(),
                        collected.change.pool(),
                        collected.reason
                    ));
                }
                for block in &sweep.released_blocks {
                    self.log(format!("collector gave back block {block}"));
                }
                self.tally.collected += sweep.collected.len();
                self.tally.blocks_given_back += sweep.released_blocks.len();
                self.collector.suspects = sweep.suspects;
                self.collector.empty_blocks = sweep.empty_blocks;
            }
        }
        if done {
            self.collector.next_sweep = self.now + Duration::from_millis(self.rng.u64(20..200));
        } else {
            self.collector.running = Some(running);
        }
        Ok(())
    }

    /// One step of a batch against the server: whether the batch is done, and the answers
    /// that stood before the step. The reads of a stage and the endpoint writes of a round
    /// are made one per step, in any order, as concurrent requests land on a real server:
    /// other actors' steps come between them.
    fn step_batch(&mut self, actor: &str, running: &mut Running) -> (bool, Vec<Answer>) {
        if let Some(pending) = running.pending.take() {
            self.step_pending(actor, running, pending);
            return (false, Vec::new());
        }
        let Poll { step, answers } = running.batch.poll(self.now);
        let done = matches!(step, Step::Done);
        match step {
            Step::Read(reads) => {
                self.log(format!("{actor}: reads {}", describe_reads(&reads)));
                let mut parts = split(&reads);
                self.rng.shuffle(&mut parts);
                let pending = Pending::Reads {
                    parts,
                    read: Box::default(),
                };
                self.step_pending(actor, running, pending);
            }
            Step::WritePool(write) => {
                let write = write.clone();
                let written = self.write(|server| server.write_pool(&write));
                self.log(format!(
                    "{actor}: write status of {}: {written:?} ({} records)",
                    write.pool,
                    write.status.allocated_ip_count.unwrap_or(0)
                ));
                running.batch.pool_written(written);
            }
            Step::WriteBlock(write) => {
                let write = write.clone();
                let written = self.write(|server| server.write_block(&write));
                self.log(format!(
                    "{actor}: write block {} ({}, {} records): {written:?}",
                    write.name,
                    match write.change {
                        BlockChange::Create(_) => "create",
                        BlockChange::Replace { .. } => "replace",
                        BlockChange::Delete { .. } => "delete",
                    },
                    write.spec().map_or(0, |spec| spec.allocated_ip_count as usize)
                ));
                running.batch.pool_written(written);
            }
            Step::WriteEndpoints(writes) => {
                let writes = writes.to_vec();
                let mut order: Vec<usize> = (0..writes.len()).collect();
                self.rng.shuffle(&mut order);
                let pending = Pending::Endpoints {
                    results: writes.iter().map(|_| None).collect(),
                    writes,
                    order,
                };
                self.step_pending(actor, running, pending);
            }
            Step::Wait(ceiling) => {
                let nanos = ceiling.as_nanos() as u64;
                running.wake = self.now + Duration::from_nanos(self.rng.u64(0..=nanos));
                running.batch.waited();
            }
            Step::Done => {}
        }
        (done, answers)
    }

    /// One read or endpoint write of a step in progress; the batch hears when all are made.
    fn step_pending(&mut self, actor: &str, running: &mut Running, pending: Pending) {
        match pending {
            Pending::Reads { mut parts, mut read } => {
                let Some(part) = parts.pop() else {
                    running.batch.read(Ok(*read));
                    return;
                };
                if self.chance(self.faults.failure) {
                    self.log(format!("{actor}: read of {} failed", describe_reads(&part)));
                    running.batch.read(Err(Fault("read failed")));
                    return;
                }
                read.merge(self.server.read(&part));
                if parts.is_empty() {
                    running.batch.read(Ok(*read));
                } else {
                    let next = parts.last().expect("a read is left");
                    let ceiling = if next.pools
                        || next.everything
                        || next.all_blocks
                        || !next.block_index.is_empty()
                        || !next.node_blocks.is_empty()
                    {
                        LIST_LATENCY
                    } else {
                        REQUEST_LATENCY
                    };
                    running.wake = self.now + self.latency(ceiling);
                    running.pending = Some(Pending::Reads { parts, read });
                }
            }
            Pending::Endpoints {
                writes,
                mut order,
                mut results,
            } => {
                let index = order.pop().expect("a write is pending");
                let write = &writes[index];
                let written = self.write(|server| server.write_endpoint(write));
                self.log(format!(
                    "{actor}: write endpoint {} ({}): {written:?}",
                    write.pod,
                    change_kind(&write.change)
                ));
                results[index] = Some(written);
                if order.is_empty() {
                    running
                        .batch
                        .endpoints_written(results.into_iter().map(|r| r.expect("written")).collect());
                } else {
                    running.wake = self.now + self.latency(REQUEST_LATENCY);
                    running.pending = Some(Pending::Endpoints {
                        writes,
                        order,
                        results,
                    });
                }
            }
        }
    }

    /// A write through the faults: a 409 although nothing changed, a failure before or after
    /// it was applied, or the server's own answer.
    fn write(&mut self, apply: impl FnOnce(&mut Server) -> bool) -> Written<Fault> {
        if self.chance(self.faults.conflict) {
            return Written::Conflict;
        }
        if self.chance(self.faults.failure) {
            if self.rng.bool() {
                apply(&mut self.server);
                return Written::Failed(Fault("write applied, answer lost"));
            }
            return Written::Failed(Fault("write failed"));
        }
        if apply(&mut self.server) {
            Written::Done
        } else {
            Written::Conflict
        }
    }

    /// Answers go to the kubelets still waiting for them.
    fn deliver(&mut self) -> Result<(), Violation> {
        for (id, result) in std::mem::take(&mut self.mailbox) {
            let Some(&(index, _)) = self.calls.get(&id) else {
                continue;
            };
            if self.kubelets[index].waiting.as_ref().map(|w| w.id) != Some(id) {
                continue;
            }
            self.kubelets[index].waiting = None;
            let (_, call) = self.calls.remove(&id).expect("known");
            self.answered(index, call, result)?;
        }
        Ok(())
    }

    // ----- what answers promise -----

    fn answered(
        &mut self,
        index: usize,
        call: Call,
        result: Result<Outcome, RoundError<Fault>>,
    ) -> Result<(), Violation> {
        let pod = self.kubelets[index].pod.clone();
        match (call, result) {
            (Call::Add(facts), Ok(Outcome::Added(plan))) => {
                self.tally.added += 1;
                let shape = self.kubelets[index].shape;
                let entry = plan.interface(&facts.interface).ok_or_else(|| {
                    self.violation(format!("{pod}: ADD {} answered without it", facts.interface))
                })?;
                let addresses: Vec<(String, IpAddr)> = entry
                    .addresses
                    .iter()
                    .map(|a| (a.pool.clone(), a.address))
                    .collect();
                self.log(format!(
                    "{pod}: ADD {} {} got {addresses:?}",
                    facts.container_id, facts.interface
                ));
                let families: BTreeSet<IpVersion> =
                    addresses.iter().map(|(_, a)| IpVersion::of(*a)).collect();
                let wanted = if shape == Shape::DualStack { 2 } else { 1 };
                if families.len() != wanted || addresses.len() != wanted {
                    return Err(self.violation(format!(
                        "{pod}: ADD of {} answered {addresses:?}: one address per family asked for ({wanted})",
                        facts.interface
                    )));
                }
                self.check_held(index, &facts.interface, &addresses, Some(&facts.container_id))?;
                if facts.interface == "eth0"
                    && let Some(kept) = self.kept.remove(&pod.name)
                {
                    if kept != addresses {
                        return Err(self.violation(format!(
                            "{pod}: StatefulSet pod came back with {addresses:?}, not its predecessor's {kept:?}"
                        )));
                    }
                    self.tally.kept += 1;
                }
                let kubelet = &mut self.kubelets[index];
                kubelet.live.insert(facts.interface.clone(), addresses);
                kubelet.add_failures = 0;
                kubelet.may_have_leftovers = false;
                if let Phase::Adding { next, .. } = &mut kubelet.phase {
                    *next += 1;
                }
            }
            (Call::Add(facts), result) => {
                self.tally.failed += 1;
                let reason = match &result {
                    Err(error) => error.to_string(),
                    Ok(other) => format!("{other:?}"),
                };
                self.log(format!(
                    "{pod}: ADD {} {} failed: {reason}",
                    facts.container_id, facts.interface
                ));
                let kubelet = &mut self.kubelets[index];
                kubelet.add_failures += 1;
                // The runtime tears the sandbox down and tries a new one, or gives up.
                // An older sandbox still waiting for its late DEL is torn down too.
                if let Phase::Adding { sandbox, stale, .. } = kubelet.phase.clone() {
                    let interfaces = kubelet.interfaces();
                    let mut then = if kubelet.add_failures < 4 {
                        Then::AddAgain
                    } else {
                        Then::DeletePod
                    };
                    if let Some(stale) = stale {
                        then = Then::AlsoDelete(stale, Box::new(then));
                    }
                    kubelet.live.clear();
                    // Multus calls DEL for every network of the sandbox, set up or not.
                    kubelet.phase = Phase::Deleting {
                        sandbox,
                        left: interfaces.into_iter().rev().collect(),
                        then,
                    };
                }
            }
            (Call::Del(facts), Ok(outcome)) => {
                self.tally.deleted += 1;
                self.log(format!(
                    "{pod}: DEL {} {}: {}",
                    facts.container_id,
                    facts.interface,
                    describe_outcome(&outcome)
                ));
                if !matches!(outcome, Outcome::KeptForStatefulSet { .. }) {
                    self.check_deleted(index, &facts)?;
                }
                let kubelet = &mut self.kubelets[index];
                if let Phase::Deleting { left, .. } = &mut kubelet.phase {
                    left.retain(|interface| *interface != facts.interface);
                }
                let current = match &kubelet.phase {
                    Phase::Deleting {
                        then: Then::Resume(current),
                        ..
                    } => Some(current.clone()),
                    _ => None,
                };
                if current.is_none() && !matches!(outcome, Outcome::KeptForStatefulSet { .. }) {
                    kubelet.live.remove(&facts.interface);
                }
            }
            (Call::Del(facts), Err(error)) => {
                // The runtime tries the DEL again.
                self.log(format!(
                    "{pod}: DEL {} {} failed: {error}",
                    facts.container_id, facts.interface
                ));
            }
            (other, _) => unreachable!("kubelets send ADDs and DELs, not {other:?}"),
        }
        Ok(())
    }

    /// `addresses` of `interface` are held by the pod (through `sandbox`, when given) and its
    /// endpoint commits them; none is reserved or answered to another running pod.
    fn check_held(
        &self,
        index: usize,
        interface: &str,
        addresses: &[(String, IpAddr)],
        sandbox: Option<&str>,
    ) -> Result<(), Violation> {
        let kubelet = &self.kubelets[index];
        let records = self.server.records();
        let endpoint = self.server.endpoints.get(&kubelet.pod);
        for (pool, address) in addresses {
            if address.to_string() == RESERVED {
                return Err(self.violation(format!("{}: handed the reserved address {address}", kubelet.pod)));
            }
            let held = records.iter().any(|(p, a, owner, container, held_interface)| {
                p == pool
                    && a == address
                    && *owner == OwnerKey::Pod(kubelet.uid.clone())
                    && held_interface == interface
                    && sandbox.is_none_or(|sandbox| sandbox == container)
            });
            if !held {
                return Err(self.violation(format!(
                    "{}: {address} of {pool} ({interface}) is not recorded for {} (records: {records:?})",
                    kubelet.pod, kubelet.uid
                )));
            }
            let committed = endpoint.is_some_and(|endpoint| {
                endpoint.object.uid == kubelet.uid
                    && endpoint.object.committed().contains(&(pool.clone(), *address))
            });
            if !committed {
                return Err(self.violation(format!(
                    "{}: {address} of {pool} is not committed by the pod's endpoint {:?}",
                    kubelet.pod,
                    endpoint.map(|e| &e.object)
                )));
            }
        }
        Ok(())
    }

    /// After a DEL of a sandbox's interface, it holds nothing there, and the pod's endpoint
    /// lists nothing the pod does not hold.
    fn check_deleted(&self, index: usize, facts: &RuntimeFacts) -> Result<(), Violation> {
        let kubelet = &self.kubelets[index];
        let records = self.server.records();
        let left: Vec<_> = records
            .iter()
            .filter(|(_, _, _, container, interface)| {
                *container == facts.container_id && *interface == facts.interface
            })
            .collect();
        if !left.is_empty() {
            return Err(self.violation(format!(
                "{}: DEL of {} {} answered, and it still holds {left:?}",
                kubelet.pod, facts.container_id, facts.interface
            )));
        }
        if let Some(endpoint) = self.server.endpoints.get(&kubelet.pod)
            && endpoint.object.uid == kubelet.uid
        {
            let uid = OwnerKey::Pod(kubelet.uid.clone());
            for (pool, address) in endpoint.object.committed() {
                if !records
                    .iter()
                    .any(|(p, a, owner, _, _)| *p == pool && *a == address && *owner == uid)
                {
                    return Err(self.violation(format!(
                        "{}: DEL of {} {} answered, and its endpoint still lists {address} of {pool}, released: {:?}",
                        kubelet.pod, facts.container_id, facts.interface, endpoint.object
                    )));
                }
            }
        }
        Ok(())
    }

    /// After every step: every running pod not in a call holds and has committed what it was
    /// answered, and no address is answered to two of them.
    fn check_settled(&self) -> Result<(), Violation> {
        let mut owners: BTreeMap<IpAddr, &PodRef> = BTreeMap::new();
        for (index, kubelet) in self.kubelets.iter().enumerate() {
            if !kubelet.settled() {
                continue;
            }
            for (interface, addresses) in &kubelet.live {
                self.check_held(index, interface, addresses, None)?;
                for (_, address) in addresses {
                    if let Some(other) = owners.insert(*address, &kubelet.pod)
                        && *other != kubelet.pod
                    {
                        return Err(self.violation(format!(
                            "{address} is answered to both {other} and {}",
                            kubelet.pod
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// At the end of an agent's batch: an ADD that failed left nothing its endpoint does not
    /// commit, unless the batch says what it could not compensate.
    fn batch_ended(&mut self, running: &Running) -> Result<(), Violation> {
        let uncompensated = running.batch.left_uncommitted();
        for ((id, pod), call) in running.ids.iter().zip(&running.pods).zip(&running.calls) {
            let Some(index) = self.kubelets.iter().position(|k| k.pod == *pod) else {
                continue;
            };
            if uncompensated {
                self.kubelets[index].may_have_leftovers = true;
                continue;
            }
            let kubelet = &self.kubelets[index];
            if !self.failed_adds.remove(id) || kubelet.may_have_leftovers {
                continue;
            }
            let uid = OwnerKey::Pod(kubelet.uid.clone());
            let statefulset = kubelet.statefulset;
            let committed = self
                .server
                .endpoints
                .get(pod)
                .filter(|endpoint| endpoint.object.uid == kubelet.uid || statefulset)
                .map(|endpoint| endpoint.object.committed())
                .unwrap_or_default();
            // What this ADD wrote is held through its sandbox.
            let Call::Add(facts) = call else { continue };
            let half: Vec<_> = self
                .server
                .records()
                .iter()
                .filter(|(pool, address, owner, container, _)| {
                    *owner == uid
                        && *container == facts.container_id
                        && !committed.contains(&(pool.clone(), *address))
                })
                .cloned()
                .collect();
            if !half.is_empty() {
                return Err(self.violation(format!(
                    "{pod}: an ADD failed and its batch ended with {half:?} written but not committed"
                )));
            }
        }
        Ok(())
    }

    // ----- the end -----

    /// Lets every call finish, heals the cluster, lets the collector sweep past its grace
    /// period, and checks what is left.
    fn settle_and_collect(&mut self) -> Result<(), Violation> {
        self.faults = Faults {
            conflict: 0.0,
            failure: 0.0,
            crash: 0.0,
        };
        for _ in 0..3 {
            self.now += Duration::from_secs(2);
            let mut running = self.sweep();
            loop {
                let (done, answers) = self.step_batch("collector", &mut running);
                for (_, result) in answers {
                    match result {
                        Ok(Outcome::Swept(sweep)) => {
                            self.tally.collected += sweep.collected.len();
                            self.tally.blocks_given_back += sweep.released_blocks.len();
                            self.collector.suspects = sweep.suspects;
                            self.collector.empty_blocks = sweep.empty_blocks;
                        }
                        other => return Err(self.violation(format!("the final sweep failed: {other:?}"))),
                    }
                }
                if done {
                    break;
                }
                self.now = self.now.max(running.wake);
            }
        }
        self.check_settled()?;
        let records = self.server.records();
        for (pool, address, owner, _, _) in records.iter() {
            let OwnerKey::Pod(uid) = owner else {
                return Err(self.violation(format!("{address} of {pool} is held by {owner}, not a pod")));
            };
            let holder = self
                .server
                .endpoints
                .iter()
                .find(|(_, endpoint)| endpoint.object.uid == *uid)
                .filter(|(_, endpoint)| endpoint.object.committed().contains(&(pool.clone(), *address)));
            let Some((pod, endpoint)) = holder else {
                return Err(self.violation(format!(
                    "after the collector's grace period, {address} of {pool} is still held by {uid} and no endpoint commits it"
                )));
            };
            let live = self.server.pods.get(pod).is_some_and(|record| record.uid == *uid);
            let set = PodRef {
                namespace: NAMESPACE.into(),
                name: STATEFULSET.into(),
            };
            let kept = endpoint.object.statefulset().is_some()
                && statefulset_keeps(pod, STATEFULSET, self.server.statefulsets.get(&set).copied());
            if !live && !kept {
                return Err(self.violation(format!(
                    "after the collector's grace period, {address} of {pool} is still held by {uid}, whose pod {pod} is gone"
                )));
            }
        }
        for (pod, endpoint) in &self.server.endpoints {
            let live = self
                .server
                .pods
                .get(pod)
                .is_some_and(|record| record.uid == endpoint.object.uid);
            if live {
                let uid = OwnerKey::Pod(endpoint.object.uid.clone());
                for (pool, address) in endpoint.object.committed() {
                    let held = records
                        .iter()
                        .any(|(p, a, owner, _, _)| *p == pool && *a == address && *owner == uid);
                    if !held {
                        return Err(self.violation(format!(
                            "the endpoint of running pod {pod} lists {address} of {pool}, which the pod does not hold"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Actor {
    Kubelet(usize),
    Agent(usize),
    Collector,
}

/// The ordinal of a StatefulSet's pod.
fn ordinal(pod: &PodRef) -> u32 {
    pod.name
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0)
}

fn describe(call: &Call) -> String {
    match call {
        Call::Add(facts) => format!("ADD {} {}", facts.container_id, facts.interface),
        Call::Del(facts) => format!("DEL {} {}", facts.container_id, facts.interface),
        Call::Abandon { pod, uid, .. } => format!("abandon {pod} {uid}"),
        Call::Sweep { now, .. } => format!("sweep at {now}"),
    }
}

fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Added(plan) => format!("added {:?}", plan.interfaces),
        Outcome::Released(changes) => format!("released {}", changes.len()),
        Outcome::KeptForStatefulSet { statefulset } => format!("kept for StatefulSet {statefulset}"),
        Outcome::Abandoned(changes) => format!("abandoned {}", changes.len()),
        Outcome::Swept(sweep) => format!("swept {}", sweep.collected.len()),
    }
}

fn describe_reads(reads: &Reads) -> String {
    let mut parts = Vec::new();
    if reads.pools {
        parts.push("pools".to_owned());
    }
    if reads.everything {
        parts.push("everything".to_owned());
    }
    if reads.all_blocks {
        parts.push("all blocks".to_owned());
    }
    for pod in &reads.pods {
        parts.push(format!("pod {pod}"));
    }
    for pod in &reads.endpoints {
        parts.push(format!("endpoint {pod}"));
    }
    for node in &reads.node_blocks {
        parts.push(format!("blocks of {node}"));
    }
    for pool in &reads.block_index {
        parts.push(format!("block index of {pool}"));
    }
    for block in &reads.blocks {
        parts.push(format!("block {block}"));
    }
    for set in &reads.statefulsets {
        parts.push(format!("statefulset {set}"));
    }
    parts.join(", ")
}

fn change_kind(change: &EndpointChange) -> &'static str {
    match change {
        EndpointChange::Create(_) => "create",
        EndpointChange::Replace { .. } => "replace",
        EndpointChange::Delete { .. } => "delete",
    }
}

/// Runs the schedule of `seed`: its tally, or the first violation with a trace.
pub fn run(seed: u64) -> Result<Tally, Violation> {
    World::new(seed).run()
}

/// The simulated API server driven by hand, without faults: rounds served one batch at a time,
/// for example tests of the round's rules. The cluster is the simulation's: pools `a4`, `a6`
/// (nodes `n1`, `n2`), `b4`, `b6` (node `n3`), `m4` (every node), `10.1.0.12` reserved.
///
/// ```
/// use spiderpool_check::sim::Cluster;
/// use spiderpool_core::round::{Call, Outcome};
/// let mut cluster = Cluster::new();
/// cluster.add_pod("web", "n3", r#"{"ipv4": ["a4", "b4"]}"#, None);
/// let [Ok(Outcome::Added(plan))] = &cluster.serve(vec![Call::Add(cluster.facts("web", "s1", "eth0"))])[..] else {
///     panic!()
/// };
/// assert_eq!(plan.interfaces[0].addresses[0].to_string(), "10.2.0.10/24 from b4");
/// ```
pub struct Cluster {
    server: Server,
    now: Duration,
    /// Writes the server refused (a version that changed, an object that exists).
    refused: u64,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster::new()
    }
}

impl Cluster {
    /// The simulation's cluster, without pods.
    pub fn new() -> Cluster {
        Cluster {
            server: Server::new(),
            now: Duration::ZERO,
            refused: 0,
        }
    }

    /// A cluster of the pools (and reserved addresses) of `objects`, YAML as users apply it,
    /// and `nodes` with their labels: what the simulation at scale runs.
    pub fn with(objects: &str, nodes: &[(String, BTreeMap<String, String>)]) -> Cluster {
        Cluster {
            server: Server::with(objects, nodes),
            now: Duration::ZERO,
            refused: 0,
        }
    }

    /// From now on a list of a pool's blocks shows only the blocks that exist now, as an API
    /// server whose watch cache lags behind does.
    pub fn freeze_block_lists(&mut self) {
        self.server.lagging_index = Some(self.server.pool_index.clone());
    }

    /// How many writes the server has refused so far.
    pub fn refused_writes(&self) -> u64 {
        self.refused
    }

    /// The spec of block `name`, when it exists.
    pub fn block(&self, name: &str) -> Option<BlockSpec> {
        self.server.blocks.get(name).map(|stored| stored.object.clone())
    }

    /// The status of pool `name`.
    pub fn pool_status(&self, name: &str) -> Option<IPPoolStatus> {
        self.server.pools.get(name)?.object.status.clone()
    }

    /// How many block objects the server holds, and the records of the largest.
    pub fn block_sizes(&self) -> (usize, usize) {
        let largest = self
            .server
            .blocks
            .values()
            .map(|b| b.object.allocated_ip_count as usize)
            .max();
        (self.server.blocks.len(), largest.unwrap_or(0))
    }

    /// Creates pod `name` (UID `<name>-uid-1`, or the next one when it existed) in namespace
    /// `default` on `node`, with `ipam.spidernet.io/ippool` (or `ippools` for a JSON list)
    /// set to `pools`, owned by `controller` (kind, name). Returns its UID.
    pub fn add_pod(
        &mut self,
        name: &str,
        node: &str,
        pools: &str,
        controller: Option<(&str, &str)>,
    ) -> String {
        let key = if pools.trim_start().starts_with('[') {
            "ipam.spidernet.io/ippools"
        } else {
            "ipam.spidernet.io/ippool"
        };
        let incarnation = self.server.revision + 1;
        let uid = format!("{name}-uid-{incarnation}");
        let record = PodRecord {
            uid: uid.clone(),
            node: node.into(),
            annotations: [(key.to_owned(), pools.to_owned())].into(),
            controller: controller.map(|(kind, name)| Controller {
                kind: kind.into(),
                name: name.into(),
            }),
            phase: PodPhase::Running,
            ..PodRecord::default()
        };
        self.server.bump();
        self.server.pods.insert(pod_ref(name), record);
        uid
    }

    /// The node the pod of UID `uid` runs on: where the agent that serves its calls runs.
    pub fn node_of(&self, uid: &str) -> Option<String> {
        self.server
            .pods
            .values()
            .find(|record| record.uid == uid)
            .map(|record| record.node.clone())
    }

    /// Deletes pod `name` (its object only: no DEL).
    pub fn remove_pod(&mut self, name: &str) {
        self.server.pods.remove(&pod_ref(name));
    }

    /// Creates or scales StatefulSet `name` to `replicas`.
    pub fn scale(&mut self, name: &str, replicas: u32) {
        self.server.statefulsets.insert(pod_ref(name), replicas);
    }

    /// What the runtime knows of a call for `interface` of pod `name` in `sandbox`.
    pub fn facts(&self, name: &str, sandbox: &str, interface: &str) -> RuntimeFacts {
        RuntimeFacts {
            container_id: sandbox.into(),
            interface: interface.into(),
            pod: Some(PodIdentity {
                namespace: NAMESPACE.into(),
                name: name.into(),
                uid: self
                    .server
                    .pods
                    .get(&pod_ref(name))
                    .map(|record| record.uid.clone()),
            }),
            ..RuntimeFacts::default()
        }
    }

    /// Serves `calls` as one batch, to the end; the answers in the order of the calls.
    pub fn serve(&mut self, calls: Vec<Call>) -> Vec<Result<Outcome, RoundError<Fault>>> {
        let count = calls.len();
        let mut batch: Batch<Fault> = Batch::new(calls, RetryBudget::default(), self.now);
        let mut answers: Vec<Option<Result<Outcome, RoundError<Fault>>>> = (0..count).map(|_| None).collect();
        loop {
            self.now += Duration::from_millis(1);
            let Poll { step, answers: stood } = batch.poll(self.now);
            for (index, result) in stood {
                answers[index] = Some(result);
            }
            match step {
                Step::Read(reads) => {
                    let read = self.server.read(&reads);
                    batch.read(Ok(read));
                }
                Step::WritePool(write) => {
                    let write = write.clone();
                    let done = self.server.write_pool(&write);
                    self.refused += u64::from(!done);
                    batch.pool_written(if done { Written::Done } else { Written::Conflict });
                }
                Step::WriteBlock(write) => {
                    let write = write.clone();
                    let done = self.server.write_block(&write);
                    self.refused += u64::from(!done);
                    batch.pool_written(if done { Written::Done } else { Written::Conflict });
                }
                Step::WriteEndpoints(writes) => {
                    let writes = writes.to_vec();
                    let results = writes
                        .iter()
                        .map(|write| match self.server.write_endpoint(write) {
                            true => Written::Done,
                            false => {
                                self.refused += 1;
                                Written::Conflict
                            }
                        })
                        .collect();
                    batch.endpoints_written(results);
                }
                Step::Wait(ceiling) => {
                    self.now += ceiling;
                    batch.waited();
                }
                Step::Done => break,
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("a batch answers every call"))
            .collect()
    }

    /// Who holds what: (pool, address, owner's UID or container, container, interface), by
    /// pool and address.
    pub fn records(&self) -> Vec<(String, IpAddr, String, String, String)> {
        self.server
            .records()
            .iter()
            .map(|(pool, address, owner, container, interface)| {
                (
                    pool.clone(),
                    *address,
                    owner.id().to_owned(),
                    container.clone(),
                    interface.clone(),
                )
            })
            .collect()
    }

    /// The endpoint of pod `name`.
    pub fn endpoint(&self, name: &str) -> Option<EndpointSpec> {
        self.server
            .endpoints
            .get(&pod_ref(name))
            .map(|stored| stored.object.clone())
    }

    /// How many writes the server took: every change of an object bumps it.
    pub fn revision(&self) -> u64 {
        self.server.revision
    }

    /// Records `address` of `pool` for pod `name` (UID `uid`) through `sandbox` on
    /// `interface`, as an allocation that died after this write would leave it.
    pub fn write_record(
        &mut self,
        pool: &str,
        address: &str,
        name: &str,
        uid: &str,
        sandbox: &str,
        interface: &str,
    ) {
        let stored = self.server.pools.get(pool).expect("a pool of the cluster");
        let status = stored.object.status.clone().unwrap_or_default();
        let mut records: BTreeMap<String, spiderpool_core::AllocationRecord> = status
            .allocated_ips
            .as_deref()
            .map(|text| serde_json::from_str(text).expect("allocatedIPs JSON"))
            .unwrap_or_default();
        records.insert(
            address.into(),
            spiderpool_core::AllocationRecord {
                pod: format!("{NAMESPACE}/{name}"),
                pod_uid: uid.into(),
                interface: interface.into(),
                container_id: sandbox.into(),
            },
        );
        let status = IPPoolStatus {
            allocated_ip_count: Some(records.len() as i64),
            allocated_ips: Some(serde_json::to_string(&records).expect("records serialize")),
            ..status
        };
        let write = PoolWrite {
            pool: pool.into(),
            version: stored.version.to_string(),
            status,
        };
        assert!(self.server.write_pool(&write), "the record is written");
    }

    /// Moves the clock `seconds` forward: the collector's clock is whole seconds of it.
    pub fn advance(&mut self, seconds: u64) {
        self.now += Duration::from_secs(seconds);
    }

    /// The collector's clock now.
    pub fn clock(&self) -> Seconds {
        seconds(self.now)
    }
}

/// Pod `name` of the simulation's namespace.
fn pod_ref(name: &str) -> PodRef {
    PodRef {
        namespace: NAMESPACE.into(),
        name: name.into(),
    }
}
