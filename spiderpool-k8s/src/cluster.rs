//! The cluster store: the reads and compare-and-swap writes of the objects the core's round
//! ([`spiderpool_core::round`]) decides on, and the one loop that carries a batch out with a
//! jittered backoff between rounds. Every decision (what to allocate, release, transfer,
//! commit, retry) is the core's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use spiderpool_core::round::{
    Batch, BlockChange, BlockWrite, Call, EndpointChange, EndpointWrite, Outcome, Poll, PoolWrite, Pools,
    Reads, RetryBudget, RoundError, Snapshot, Step, Written,
};
use spiderpool_core::{Block, BlockStateError, IndexedBlock, Plan, PodRef, RuntimeFacts, StatusStateError};

use crate::crd::{SpiderEndpoint, SpiderEndpointSpec, SpiderIPBlock, SpiderIPPool, SpiderReservedIP};
use crate::facts::{namespace_facts, pod_record, replicas, versioned_endpoint};
use crate::watch::NodeWatch;

/// The most requests of one kind a batch has in flight at once (its endpoint writes, its
/// GETs): a node's hundreds of pods starting together would otherwise open as many
/// connections to the API server at once.
pub const REQUESTS_IN_FLIGHT: usize = 32;

/// Why the store could not read or write.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiFailure {
    /// The API server could not be reached or answered with an error.
    #[error(
        "kubernetes API: {action}: {source}; check that the API server is reachable and this client may do it"
    )]
    Request {
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: Arc<kube::Error>,
    },
    /// A pool's status cannot be read as allocation records.
    #[error("{0}; the pool's status was not written by spiderpool or was edited")]
    Status(#[from] StatusStateError),
    /// A block cannot be read as allocation records.
    #[error(transparent)]
    Block(#[from] BlockStateError),
    /// The batching task ended: the agent is stopping.
    #[error("the allocator is stopping; try again")]
    Stopped,
}

impl ApiFailure {
    /// A failed request while doing `action`.
    pub fn request(action: impl Into<String>, source: kube::Error) -> ApiFailure {
        ApiFailure::Request {
            action: action.into(),
            source: Arc::new(source),
        }
    }
}

/// Why a call could not be served in the cluster.
pub type ClusterError = RoundError<ApiFailure>;

/// Counters of a store and its clones, for reports and benchmarks.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Pool status writes that succeeded.
    pub pool_writes: AtomicU64,
    /// Block writes that succeeded.
    pub block_writes: AtomicU64,
    /// Blocks created: claims that succeeded.
    pub block_claims: AtomicU64,
    /// Pool status writes refused with a conflict (409).
    pub conflicts: AtomicU64,
}

/// What serving one batch cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCost {
    /// Rounds made.
    pub rounds: u32,
    /// Conflicts met.
    pub conflicts: u32,
}

/// The cluster store: allocations through the Kubernetes API.
#[derive(Clone)]
pub struct ClusterStore {
    client: Client,
    budget: RetryBudget,
    counters: Arc<StoreCounters>,
    node: Option<String>,
    /// The blocks this store last wrote or read, by name: what a node's blocks are read as
    /// while the API server's cache lists them at the same version or an older one.
    block_copies: Arc<std::sync::Mutex<BTreeMap<String, BlockCopy>>>,
    /// What the node's agent watches ([`ClusterStore::watching`]).
    watch: Option<Arc<NodeWatch>>,
}

/// A block as a watch or a list shows it: its version, and the object when a watch shows it
/// whole.
struct Shown {
    version: Option<String>,
    object: Option<Arc<SpiderIPBlock>>,
}

/// A block as this store last wrote or read it.
#[derive(Clone)]
struct BlockCopy {
    block: Block,
    kept: Instant,
}

impl BlockCopy {
    /// How long a copy the API server's cache does not list yet is trusted: longer than the
    /// cache lags, shorter than a block emptied and given back stays unnoticed.
    const UNLISTED: Duration = Duration::from_secs(10);

    /// Whether a list showing the block at `listed` shows this copy or an older version.
    /// Versions are etcd revisions; one that does not read as a number is taken as newer.
    fn is_current(&self, listed: Option<&str>) -> bool {
        let parse = |version: &str| version.parse::<u64>().ok();
        match (listed.and_then(parse), parse(&self.block.version)) {
            (Some(listed), Some(copy)) => listed <= copy,
            _ => false,
        }
    }

    /// Whether the copy was kept so recently that a cached list may not show the block yet.
    fn is_recent(&self) -> bool {
        self.kept.elapsed() < BlockCopy::UNLISTED
    }
}

impl ClusterStore {
    /// A store using `client`, with the default retry budget.
    pub fn new(client: Client) -> ClusterStore {
        ClusterStore {
            client,
            budget: RetryBudget::default(),
            counters: Arc::default(),
            node: None,
            block_copies: Arc::default(),
            watch: None,
        }
    }

    /// The same store serving the calls of `node` (a node agent's): an ADD or DEL whose
    /// runtime names no node is served as this node's, so that an ADD reads the node and its
    /// blocks together with the pod, and a DEL finds what its pod left in the node's blocks
    /// even when the pod and its endpoint are gone.
    pub fn with_node(mut self, node: impl Into<String>) -> ClusterStore {
        self.node = Some(node.into()).filter(|node: &String| !node.is_empty());
        self
    }

    /// The same store reading its node, the pods on it, its blocks, the pools, reserved
    /// addresses and namespaces from watches ([`crate::watch`]) instead of a request per
    /// batch: what a node's agent uses. The watches run on the current Tokio runtime; a store
    /// without a node ([`ClusterStore::with_node`]) watches nothing.
    pub fn watching(mut self) -> ClusterStore {
        self.watch = self
            .node
            .as_deref()
            .map(|node| Arc::new(NodeWatch::start(&self.client, node)));
        self
    }

    /// The kinds this store watches whose first list has not arrived yet (none when it does
    /// not watch, [`ClusterStore::watching`]).
    pub fn loading(&self) -> Vec<&'static str> {
        self.watch.as_deref().map(NodeWatch::loading).unwrap_or_default()
    }

    /// The same store with another retry budget.
    pub fn with_budget(mut self, budget: RetryBudget) -> ClusterStore {
        self.budget = budget;
        self
    }

    /// The same store (budget, counters) over another client: what one process among many
    /// would use.
    pub fn with_client(&self, client: Client) -> ClusterStore {
        ClusterStore {
            client,
            ..self.clone()
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The counters of this store and its clones.
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Serves `calls` as one batch: reads what the round asks, writes what it decides,
    /// backs off and serves again what conflicted, and hands each call's answer to `answer`
    /// (by its index) as soon as it stands.
    pub async fn serve(
        &self,
        calls: Vec<Call>,
        mut answer: impl FnMut(usize, Result<Outcome, ClusterError>),
    ) -> BatchCost {
        let epoch = Instant::now();
        let calls: Vec<Call> = calls
            .into_iter()
            .map(|call| match (call, &self.node) {
                (Call::Add(mut facts), Some(node)) => {
                    facts.node.get_or_insert_with(|| node.clone());
                    Call::Add(facts)
                }
                (Call::Del(mut facts), Some(node)) => {
                    facts.node.get_or_insert_with(|| node.clone());
                    Call::Del(facts)
                }
                (call, _) => call,
            })
            .collect();
        let uids = pod_uids(&calls);
        let mut batch: Batch<ApiFailure> = Batch::new(calls, self.budget, Duration::ZERO);
        loop {
            let Poll { step, answers } = batch.poll(epoch.elapsed());
            for (index, result) in answers {
                answer(index, result);
            }
            match step {
                Step::Read(reads) => {
                    let read = self.read(reads, &uids).await;
                    batch.read(read);
                }
                Step::WritePool(write) => {
                    let write = write.clone();
                    batch.pool_written(self.write_pool(&write).await);
                }
                Step::WriteBlock(write) => {
                    let write = write.clone();
                    batch.pool_written(self.write_block(&write).await);
                }
                Step::WriteEndpoints(writes) => {
                    let writes = writes.to_vec();
                    let results = at_most_in_flight(writes.iter().map(|w| self.write_endpoint(w))).await;
                    batch.endpoints_written(results);
                }
                Step::Wait(ceiling) => {
                    // Full jitter: a randomly keyed hash of the time draws below the ceiling.
                    let draw = RandomState::new().hash_one(Instant::now()) % 10_000;
                    tokio::time::sleep(ceiling.mul_f64(draw as f64 / 10_000.0)).await;
                    batch.waited();
                }
                Step::Done => break,
            }
        }
        BatchCost {
            rounds: batch.rounds(),
            conflicts: batch.conflicts(),
        }
    }

    /// Serves one call alone.
    pub async fn serve_one(&self, call: Call) -> Result<Outcome, ClusterError> {
        let mut answered = None;
        self.serve(vec![call], |_, result| answered = Some(result)).await;
        answered.expect("a batch answers every call")
    }

    /// An ADD: the pod's labels and annotations, its namespace's and its node's labels come
    /// from the API server; `facts` are what the runtime knows.
    pub async fn allocate(&self, facts: RuntimeFacts) -> Result<Plan, ClusterError> {
        match self.serve_one(Call::Add(facts)).await? {
            Outcome::Added(plan) => Ok(plan),
            other => unreachable!("an ADD is answered with addresses, not {other:?}"),
        }
    }

    /// A DEL: releases what the attachment holds and removes it from the pod's endpoint.
    pub async fn release(&self, facts: RuntimeFacts) -> Result<Outcome, ClusterError> {
        self.serve_one(Call::Del(facts)).await
    }

    /// The pools with the allocation state their statuses and blocks record now: what
    /// listings, CHECK, STATUS and the webhook read.
    pub async fn pools(&self) -> Result<Pools, ApiFailure> {
        let (pools, blocks) = tokio::join!(self.read_pools(), self.list_blocks(ListParams::default()));
        let mut pools = pools?;
        pools.add_blocks(&blocks?);
        Ok(pools)
    }

    /// Writes the `allocatedIPCount` (and `totalIPCount`) of every pool that allocates from
    /// blocks whose count is not what its blocks hold ([`spiderpool_core::round::count_writes`]):
    /// the pools written. A pool that changed meanwhile is left for the next time.
    pub async fn write_counts(&self) -> Result<usize, ApiFailure> {
        let pools = self.read_pools().await?;
        let names: Vec<String> = pools.catalog.entries().map(|(name, _)| name.to_owned()).collect();
        let indexes = futures::future::try_join_all(names.iter().map(|pool| self.index_blocks(pool))).await?;
        let index = names.into_iter().zip(indexes).collect();
        let mut written = 0;
        for write in spiderpool_core::round::count_writes(&pools, &index) {
            match self.write_pool(&write).await {
                Written::Done => written += 1,
                Written::Conflict => {}
                Written::Failed(error) => return Err(error),
            }
        }
        Ok(written)
    }

    /// The pools and reserved addresses, with the records of pools that keep them in their
    /// status, from the API server's cache: a round's writes are compare-and-swaps of blocks
    /// (and of the statuses of pools in the earlier format), which a stale read only makes
    /// conflict, and a consistent list of every pool would wait for the cache to catch up
    /// (about 55 ms on the test server, most of one ADD).
    async fn read_pools(&self) -> Result<Pools, ApiFailure> {
        let all = ListParams::default().match_any();
        let (pools, reserved) = (
            Api::<SpiderIPPool>::all(self.client.clone()),
            Api::<SpiderReservedIP>::all(self.client.clone()),
        );
        let (pools, reserved) = tokio::join!(pools.list(&all), reserved.list(&all));
        let pools = pools.map_err(|err| ApiFailure::request("listing SpiderIPPools", err))?;
        let reserved = reserved.map_err(|err| ApiFailure::request("listing SpiderReservedIPs", err))?;
        Ok(Pools::read(
            pools.items.iter().map(SpiderIPPool::to_core).collect(),
            reserved.items.iter().map(SpiderReservedIP::to_core).collect(),
        )?)
    }

    /// The blocks `params` select, read whole.
    async fn list_blocks(&self, params: ListParams) -> Result<Vec<Block>, ApiFailure> {
        let api = Api::<SpiderIPBlock>::all(self.client.clone());
        let listed = api
            .list(&params)
            .await
            .map_err(|err| ApiFailure::request("listing SpiderIPBlocks", err))?;
        listed
            .items
            .iter()
            .map(|block| block.to_core().map_err(ApiFailure::from))
            .collect()
    }

    /// Every block affine to `node`, as fresh as a GET. The watch of the node's agent shows
    /// them whole; without it (another node's blocks, a store without watches) a list of the
    /// objects' metadata from the API server's cache shows their names and versions.
    async fn node_blocks(&self, node: &str) -> Result<Vec<Block>, ApiFailure> {
        let shown = match self.watch.as_deref().and_then(|watch| watch.blocks_of(node)) {
            Some(watched) => watched
                .into_iter()
                .filter_map(|object| {
                    let version = object.metadata.resource_version.clone();
                    Some((
                        object.metadata.name.clone()?,
                        Shown {
                            version,
                            object: Some(object),
                        },
                    ))
                })
                .collect(),
            None => {
                let api = Api::<SpiderIPBlock>::all(self.client.clone());
                let params = ListParams::default()
                    .match_any()
                    .fields(&format!("spec.node={node}"));
                let listed = api.list_metadata(&params).await.map_err(|err| {
                    ApiFailure::request(format!("listing the SpiderIPBlocks of node {node}"), err)
                })?;
                listed
                    .items
                    .into_iter()
                    .filter_map(|item| {
                        let version = item.metadata.resource_version;
                        Some((
                            item.metadata.name?,
                            Shown {
                                version,
                                object: None,
                            },
                        ))
                    })
                    .collect()
            }
        };
        self.fresh_blocks(node, shown).await
    }

    /// The blocks of `node` that `shown` shows, with those this store wrote since (which a
    /// cache may not show yet). A block is this store's copy when `shown` has it at the copy's
    /// version or an older one (a cache lags, the copy does not), else the object shown whole,
    /// else a GET: a node's blocks are written by its own agent but for the odd borrow or
    /// collection, so a batch seldom reads one. A copy out of date only makes the block's
    /// compare-and-swap conflict, which drops it; a copy no cache shows for longer than one
    /// lags is read again (the block went, or moved to another node).
    async fn fresh_blocks(
        &self,
        node: &str,
        shown: BTreeMap<String, Shown>,
    ) -> Result<Vec<Block>, ApiFailure> {
        let (mut blocks, mut whole, mut stale) = (BTreeMap::new(), Vec::new(), BTreeSet::new());
        {
            let copies = self.block_copies.lock().expect("the block copies' lock");
            let mine = copies.iter().filter(|(_, copy)| copy.block.node == node);
            let names: BTreeSet<&String> = shown.keys().chain(mine.map(|(name, _)| name)).collect();
            for name in names {
                match (copies.get(name), shown.get(name)) {
                    (Some(copy), Some(seen)) if copy.is_current(seen.version.as_deref()) => {
                        blocks.insert(name.clone(), copy.block.clone());
                    }
                    (Some(copy), None) if copy.is_recent() => {
                        blocks.insert(name.clone(), copy.block.clone());
                    }
                    (
                        _,
                        Some(Shown {
                            object: Some(object), ..
                        }),
                    ) => whole.push(object.clone()),
                    _ => {
                        stale.insert(name.clone());
                    }
                }
            }
        }
        for object in whole {
            let block = object.to_core()?;
            blocks.insert(block.name.clone(), block);
        }
        let api = Api::<SpiderIPBlock>::all(self.client.clone());
        for (name, read) in get_each(stale, "SpiderIPBlock", |_| api.clone()).await? {
            match read {
                Some(object) => {
                    let block = object.to_core()?;
                    self.keep_copy(&block);
                    blocks.insert(name, block);
                }
                None => self.drop_copy(&name),
            }
        }
        // A block another node claimed meanwhile is not this node's.
        Ok(blocks.into_values().filter(|block| block.node == node).collect())
    }

    fn keep_copy(&self, block: &Block) {
        let mut copies = self.block_copies.lock().expect("the block copies' lock");
        copies.insert(
            block.name.clone(),
            BlockCopy {
                block: block.clone(),
                kept: Instant::now(),
            },
        );
    }

    fn drop_copy(&self, name: &str) {
        let mut copies = self.block_copies.lock().expect("the block copies' lock");
        copies.remove(name);
    }

    /// Every block of `pool`, from the objects' metadata: a block whose annotations do not
    /// tell is read whole.
    async fn index_blocks(&self, pool: &str) -> Result<Vec<IndexedBlock>, ApiFailure> {
        let api = Api::<SpiderIPBlock>::all(self.client.clone());
        // From the cache: a claim of a block listed late is a create that conflicts.
        let params = ListParams::default()
            .match_any()
            .fields(&format!("spec.pool={pool}"));
        let listed = api
            .list_metadata(&params)
            .await
            .map_err(|err| ApiFailure::request(format!("listing the SpiderIPBlocks of pool {pool}"), err))?;
        let mut index = Vec::with_capacity(listed.items.len());
        for item in &listed.items {
            match SpiderIPBlock::indexed(&item.metadata) {
                Some(indexed) => index.push(indexed),
                None => {
                    let name = item.metadata.name.clone().unwrap_or_default();
                    let Some(block) = api
                        .get_opt(&name)
                        .await
                        .map_err(|err| ApiFailure::request(format!("reading SpiderIPBlock {name}"), err))?
                    else {
                        continue;
                    };
                    let block = block.to_core()?;
                    index.push(IndexedBlock {
                        start: block
                            .family
                            .address_at(block.low)
                            .expect("a block's start is of its family"),
                        name: block.name,
                        node: block.node,
                        allocated: block.allocations.len() as u64,
                        pool_uid: block.pool_uid,
                    });
                }
            }
        }
        Ok(index)
    }

    /// Reads what a round asks for, every read at once: from the watches what they hold
    /// (a pod only with the UID its call names, `uids`), the rest from the API server.
    async fn read(&self, reads: Reads, uids: &BTreeMap<PodRef, String>) -> Result<Snapshot, ApiFailure> {
        let Reads {
            pools,
            everything,
            pods,
            namespaces,
            nodes,
            endpoints,
            statefulsets,
            node_blocks,
            block_index,
            blocks,
            all_blocks,
        } = reads;
        let client = &self.client;
        let blocks_api = || Api::<SpiderIPBlock>::all(client.clone());
        let watch = self.watch.as_deref();
        let (pods, cached_pods) = watched(pods, |pod| {
            let cached = watch?.pods.get(Some(&pod.namespace), &pod.name)?;
            (cached.metadata.uid.as_ref() == uids.get(pod)).then(|| (*cached).clone())
        });
        let (namespaces, cached_namespaces) = watched(namespaces, |name| {
            Some((*watch?.namespaces.get(None, name)?).clone())
        });
        let (nodes, cached_nodes) = watched(nodes, |name| Some((*watch?.nodes.get(None, name)?).clone()));
        let (blocks_read, (pools, everything, pods, namespaces, nodes, endpoints, statefulsets)) = tokio::join!(
            async {
                let of_nodes =
                    futures::future::try_join_all(node_blocks.iter().map(|node| self.node_blocks(node)));
                let indexes =
                    futures::future::try_join_all(block_index.iter().map(|pool| self.index_blocks(pool)));
                let named = get_each(blocks.clone(), "SpiderIPBlock", |_| blocks_api());
                let every = async {
                    match all_blocks {
                        true => self.list_blocks(ListParams::default()).await,
                        false => Ok(Vec::new()),
                    }
                };
                tokio::try_join!(of_nodes, indexes, named, every)
            },
            async {
                tokio::join!(
                    async {
                        match (pools, watch.and_then(NodeWatch::pools)) {
                            (false, _) => Ok(None),
                            (true, Some(cached)) => cached.map(Some).map_err(ApiFailure::from),
                            (true, None) => self.read_pools().await.map(Some),
                        }
                    },
                    async {
                        if everything {
                            self.read_everything().await.map(Some)
                        } else {
                            Ok(None)
                        }
                    },
                    get_each(pods, "pod", |pod| Api::<Pod>::namespaced(
                        client.clone(),
                        &pod.namespace
                    )),
                    get_each(namespaces, "namespace", |_| Api::<Namespace>::all(client.clone())),
                    get_each(nodes, "node", |_| Api::<Node>::all(client.clone())),
                    get_each(endpoints, "SpiderEndpoint", |pod| {
                        Api::<SpiderEndpoint>::namespaced(client.clone(), &pod.namespace)
                    }),
                    get_each(statefulsets, "StatefulSet", |set| {
                        Api::<StatefulSet>::namespaced(client.clone(), &set.namespace)
                    }),
                )
            },
        );
        let mut snapshot = everything?.unwrap_or_default();
        let (of_nodes, indexes, named, every) = blocks_read?;
        snapshot.all_blocks = all_blocks;
        for block in of_nodes.into_iter().flatten().chain(every) {
            snapshot.blocks.insert(block.name.clone(), Some(block));
        }
        snapshot.node_blocks.extend(node_blocks);
        snapshot.block_index.extend(block_index.into_iter().zip(indexes));
        for (name, read) in named {
            let read = read.map(|block| block.to_core()).transpose()?;
            snapshot.blocks.insert(name, read);
        }
        snapshot.pools = pools?;
        snapshot.pods.extend(
            pods?
                .into_iter()
                .chain(cached_pods)
                .map(|(pod, read)| (pod, read.as_ref().map(pod_record))),
        );
        snapshot.namespaces.extend(
            namespaces?
                .into_iter()
                .chain(cached_namespaces)
                .map(|(name, read)| (name, read.as_ref().map(namespace_facts))),
        );
        snapshot.nodes.extend(
            nodes?
                .into_iter()
                .chain(cached_nodes)
                .map(|(name, read)| (name, read.map(|node| node.labels().clone()))),
        );
        snapshot.endpoints.extend(
            endpoints?
                .into_iter()
                .map(|(pod, read)| (pod, read.map(versioned_endpoint))),
        );
        snapshot.statefulsets.extend(
            statefulsets?
                .into_iter()
                .map(|(set, read)| (set, read.map(|set| replicas(&set)))),
        );
        Ok(snapshot)
    }

    /// Every pod, node, endpoint and StatefulSet: what the garbage collector reads after the
    /// pools and blocks.
    async fn read_everything(&self) -> Result<Snapshot, ApiFailure> {
        let client = &self.client;
        let all = ListParams::default();
        let (pods, nodes, endpoints, sets) = (
            Api::<Pod>::all(client.clone()),
            Api::<Node>::all(client.clone()),
            Api::<SpiderEndpoint>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
        );
        let (pods, nodes, endpoints, sets) = tokio::join!(
            pods.list(&all),
            nodes.list_metadata(&all),
            endpoints.list(&all),
            sets.list(&all),
        );
        let failed = |what: &'static str| move |err| ApiFailure::request(format!("listing {what}"), err);
        let key = |namespace: Option<String>, name: String| PodRef {
            namespace: namespace.unwrap_or_default(),
            name,
        };
        Ok(Snapshot {
            pods: (pods.map_err(failed("pods"))?.items.iter())
                .map(|pod| (key(pod.namespace(), pod.name_any()), Some(pod_record(pod))))
                .collect(),
            nodes: (nodes.map_err(failed("nodes"))?.items.iter())
                .map(|node| (node.name_any(), Some(node.labels().clone())))
                .collect(),
            endpoints: (endpoints.map_err(failed("SpiderEndpoints"))?.items.into_iter())
                .map(|endpoint| {
                    (
                        key(endpoint.namespace(), endpoint.name_any()),
                        Some(versioned_endpoint(endpoint)),
                    )
                })
                .collect(),
            statefulsets: (sets.map_err(failed("StatefulSets"))?.items.iter())
                .map(|set| (key(set.namespace(), set.name_any()), Some(replicas(set))))
                .collect(),
            everything: true,
            ..Snapshot::default()
        })
    }

    /// Writes a pool's status, presenting the version read: a merge patch carrying
    /// `metadata.resourceVersion` is refused with 409 when the pool changed since.
    async fn write_pool(&self, write: &PoolWrite) -> Written<ApiFailure> {
        let mut status = serde_json::to_value(&write.status).expect("a status serializes");
        // A merge patch removes what it sets to null: a field the new status leaves out goes.
        for field in [
            "allocatedIPs",
            "allocatedIPCount",
            "totalIPCount",
            "lastAllocatedIP",
        ] {
            status
                .as_object_mut()
                .expect("a status is an object")
                .entry(field)
                .or_insert(serde_json::Value::Null);
        }
        let patch = json!({"metadata": {"resourceVersion": write.version}, "status": status});
        let api: Api<SpiderIPPool> = Api::all(self.client.clone());
        let written = api
            .patch_status(&write.pool, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let outcome = classify(written, false, || {
            format!("writing the status of SpiderIPPool {}", write.pool)
        });
        match outcome {
            Written::Done => self.counters.pool_writes.fetch_add(1, Ordering::Relaxed),
            Written::Conflict => self.counters.conflicts.fetch_add(1, Ordering::Relaxed),
            Written::Failed(_) => 0,
        };
        outcome
    }

    /// Creates (claims), replaces or deletes a block, presenting the version read.
    async fn write_block(&self, write: &BlockWrite) -> Written<ApiFailure> {
        let api: Api<SpiderIPBlock> = Api::all(self.client.clone());
        let action = || format!("writing SpiderIPBlock {}", write.name);
        let written = match &write.change {
            BlockChange::Create(spec) => {
                let block = SpiderIPBlock::of(&write.name, spec);
                api.create(&PostParams::default(), &block).await.map(Some)
            }
            BlockChange::Replace { version, spec } => {
                let mut block = SpiderIPBlock::of(&write.name, spec);
                block.metadata.resource_version = Some(version.clone());
                api.replace(&write.name, &PostParams::default(), &block)
                    .await
                    .map(Some)
            }
            BlockChange::Delete { version } => {
                api.delete(&write.name, &at_version(version)).await.map(|_| None)
            }
        };
        // What was written is the block as this store knows it; a block that conflicted or
        // went is read again.
        match &written {
            Ok(Some(object)) => match object.to_core() {
                Ok(block) => self.keep_copy(&block),
                Err(_) => self.drop_copy(&write.name),
            },
            _ => self.drop_copy(&write.name),
        }
        let gone_is_done = matches!(write.change, BlockChange::Delete { .. });
        let outcome = classify(written, gone_is_done, action);
        match (&outcome, &write.change) {
            (Written::Done, BlockChange::Create(_)) => {
                self.counters.block_claims.fetch_add(1, Ordering::Relaxed);
                self.counters.block_writes.fetch_add(1, Ordering::Relaxed);
            }
            (Written::Done, _) => {
                self.counters.block_writes.fetch_add(1, Ordering::Relaxed);
            }
            (Written::Conflict, _) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            (Written::Failed(_), _) => {}
        }
        outcome
    }

    /// Creates, replaces or deletes an endpoint, presenting the version read.
    async fn write_endpoint(&self, write: &EndpointWrite) -> Written<ApiFailure> {
        let EndpointWrite { pod, change } = write;
        let api: Api<SpiderEndpoint> = Api::namespaced(self.client.clone(), &pod.namespace);
        let action = || format!("writing SpiderEndpoint {pod}");
        match change {
            EndpointChange::Create(spec) => {
                let endpoint = SpiderEndpoint::new(&pod.name, SpiderEndpointSpec(spec.clone()));
                classify(api.create(&PostParams::default(), &endpoint).await, false, action)
            }
            EndpointChange::Replace { version, spec } => {
                let mut endpoint = SpiderEndpoint::new(&pod.name, SpiderEndpointSpec(spec.clone()));
                endpoint.metadata.resource_version = Some(version.clone());
                classify(
                    api.replace(&pod.name, &PostParams::default(), &endpoint).await,
                    false,
                    action,
                )
            }
            EndpointChange::Delete { version } => classify(
                api.delete(&pod.name, &at_version(version)).await.map(|_| ()),
                true,
                action,
            ),
        }
    }
}

/// A delete of the object at `version` only: compare-and-swap.
fn at_version(version: &str) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some(version.to_owned()),
            uid: None,
        }),
        ..DeleteParams::default()
    }
}

/// What a write's answer means for the round: 409 (and 404 but for a delete: the object went)
/// is a conflict.
fn classify<T>(
    written: Result<T, kube::Error>,
    gone_is_done: bool,
    action: impl FnOnce() -> String,
) -> Written<ApiFailure> {
    match written {
        Ok(_) => Written::Done,
        Err(kube::Error::Api(status)) if status.is_not_found() && gone_is_done => Written::Done,
        Err(kube::Error::Api(status))
            if status.is_conflict() || status.is_already_exists() || status.is_not_found() =>
        {
            Written::Conflict
        }
        Err(error) => Written::Failed(ApiFailure::request(action(), error)),
    }
}

/// The name an object is read by: a namespaced object's within its namespace.
trait ObjectName: std::fmt::Display {
    fn name(&self) -> &str;
}

impl ObjectName for PodRef {
    fn name(&self) -> &str {
        &self.name
    }
}

impl ObjectName for String {
    fn name(&self) -> &str {
        self
    }
}

/// GETs each object `keys` name, `what` they are, at once: what exists, `None` for what
/// does not.
async fn get_each<K, Key>(
    keys: BTreeSet<Key>,
    what: &str,
    api: impl Fn(&Key) -> Api<K>,
) -> Result<Vec<(Key, Option<K>)>, ApiFailure>
where
    K: Clone + DeserializeOwned + Debug,
    Key: ObjectName,
{
    let reads = keys.into_iter().map(|key| {
        let api = api(&key);
        async move {
            let read = api.get_opt(key.name()).await;
            (key, read)
        }
    });
    let mut found = Vec::new();
    for (key, read) in at_most_in_flight(reads).await {
        let read = read.map_err(|err| ApiFailure::request(format!("reading {what} {key}"), err))?;
        found.push((key, read));
    }
    Ok(found)
}

/// The UID each ADD's runtime names for its pod.
fn pod_uids(calls: &[Call]) -> BTreeMap<PodRef, String> {
    calls
        .iter()
        .filter_map(|call| match call {
            Call::Add(facts) => Some((facts.pod_ref()?, facts.pod.as_ref()?.uid.clone()?)),
            _ => None,
        })
        .collect()
}

/// `keys` split into those `cached` does not answer, to read from the API server, and the
/// objects it answers.
fn watched<Key: Ord + Clone, K>(
    keys: BTreeSet<Key>,
    cached: impl Fn(&Key) -> Option<K>,
) -> (BTreeSet<Key>, Vec<(Key, Option<K>)>) {
    let mut unanswered = BTreeSet::new();
    let mut answered = Vec::new();
    for key in keys {
        match cached(&key) {
            Some(object) => answered.push((key, Some(object))),
            None => {
                unanswered.insert(key);
            }
        }
    }
    (unanswered, answered)
}

/// Runs `requests`, [`REQUESTS_IN_FLIGHT`] at a time: their answers in their order.
async fn at_most_in_flight<F: std::future::Future>(requests: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let limit = tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT);
    let limit = &limit;
    futures::future::join_all(requests.into_iter().map(|request| async move {
        let _permit = limit.acquire().await.expect("the semaphore is never closed");
        request.await
    }))
    .await
}
