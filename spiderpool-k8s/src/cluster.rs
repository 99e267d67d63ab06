//! Allocation state kept in the API server: pools' `status.allocatedIPs`, written with
//! compare-and-swap, and one `SpiderEndpoint` per pod as the commit record.
//!
//! One allocation reads the facts (pod, namespace, node, pools, reserved IPs), asks the engine,
//! writes the status of every pool the plan touches with the `resourceVersion` it read, then
//! writes the pod's `SpiderEndpoint`. A conflict (409) on a pool means another allocator wrote
//! first: reload and ask again, after a jittered backoff, within a budget.
//!
//! The endpoint is the commit point. Records of the pod in pool statuses that its endpoint
//! does not list are left over from an allocation that did not finish (a conflict on the
//! second pool of a dual-stack pair, a crash between two writes): the next ADD of the pod
//! releases them in the same write that allocates again, so a retried ADD never keeps half an
//! allocation, and the garbage collector reclaims those of pods that never retry.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use spiderpool_core::{
    AllocateError, AllocationState, Change, Document, HeldAddress, Holder, IPPoolStatus, InMemoryState,
    NamespaceFacts, ObjectMeta, OwnerKey, Plan, PoolCatalog, Request, Resource, StatusStateError, allocate,
    held_status, pool_status, release_attachment, state_from_statuses,
};

use crate::crd::{EndpointInterface, SpiderEndpoint, SpiderEndpointSpec, SpiderIPPool, SpiderReservedIP};

/// How long an allocator keeps retrying after conflicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The backoff after the first conflict; it doubles up to `max_backoff`, and each wait is
    /// drawn uniformly below it ("full jitter"), so that colliding allocators spread out.
    pub first_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
    /// No new attempt starts after this much time.
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
    /// The wait before attempt `attempt` (1 for the first retry).
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .first_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        // A randomly keyed hash of the time is jitter enough, without a dependency.
        let draw = RandomState::new().hash_one(Instant::now());
        ceiling.mul_f64((draw % 10_000) as f64 / 10_000.0)
    }
}

/// Why an allocation or release in the cluster did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The engine refused: no candidate can serve, or a candidate is invalid.
    #[error(transparent)]
    Refused(#[from] AllocateError),
    /// The API server could not be reached or answered with an error.
    #[error(
        "kubernetes API: {action}: {source}; check that the API server is reachable and this client may do it"
    )]
    Api {
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: Arc<kube::Error>,
    },
    /// Other allocators kept writing the same pools for the whole budget.
    #[error(
        "pools {pools:?} kept changing under {attempts} attempts ({conflicts} conflicts in {elapsed:?}); try again"
    )]
    Contended {
        /// The pools whose writes conflicted last.
        pools: Vec<String>,
        /// Attempts made.
        attempts: u32,
        /// Conflicts met.
        conflicts: u32,
        /// Time spent.
        elapsed: Duration,
    },
    /// Other writers kept changing the pod's endpoint; the addresses stay uncommitted, and
    /// the pod's next ADD releases and allocates them again.
    #[error("the SpiderEndpoint of pod {pod} kept changing under {attempts} attempts; try again")]
    EndpointContended {
        /// `namespace/name` of the pod.
        pod: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The pod named by the request does not exist (yet, or any more).
    #[error(
        "pod {namespace}/{name} not found; the runtime called before the API server knows the pod, try again"
    )]
    PodNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The pod of that name has another UID than the runtime gave: it was re-created.
    #[error("pod {namespace}/{name} has UID {current}, not {requested}: it was re-created; try again")]
    PodReplaced {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The UID the runtime gave.
        requested: String,
        /// The UID in the API server.
        current: String,
    },
    /// The node the pod runs on is not known.
    #[error(
        "node {0} not found in the API server; register the node, or set ipam.node_name to a registered one"
    )]
    NodeNotFound(String),
    /// A request without a pod name: the cluster mode serves pods only.
    #[error("no pod identity: the cluster mode needs K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS")]
    NoPod,
    /// The batching task ended: the agent is stopping.
    #[error("the allocator is stopping; try again")]
    Stopped,
    /// Changes decided on a snapshot do not apply to it: a bug of the decider.
    #[error("changes do not apply to the state they were decided on: {0}")]
    Unappliable(String),
    /// A pool's status cannot be read as allocation state.
    #[error("{0}; the pool's status was not written by spiderpool or was edited")]
    Status(#[from] StatusStateError),
}

impl ClusterError {
    /// An API failure while doing `action`.
    pub(crate) fn api(action: impl Into<String>, source: kube::Error) -> ClusterError {
        ClusterError::Api {
            action: action.into(),
            source: Arc::new(source),
        }
    }

    /// Whether the caller should answer "try again later" (CNI code 11).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClusterError::Api { .. }
                | ClusterError::Contended { .. }
                | ClusterError::EndpointContended { .. }
                | ClusterError::PodNotFound { .. }
                | ClusterError::PodReplaced { .. }
                | ClusterError::Stopped
        )
    }
}

/// What an allocation decided, and what it cost.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// The engine's plan: addresses per interface, and the changes written.
    pub plan: Plan,
    /// Conflicts (409) met on the way.
    pub conflicts: u32,
    /// Attempts made, the successful one included.
    pub attempts: u32,
}

/// What a release freed, and what it cost.
#[derive(Debug, Clone, Default)]
pub struct Release {
    /// The changes written.
    pub changes: Vec<Change>,
    /// Conflicts (409) met on the way.
    pub conflicts: u32,
}

/// The facts of a pod the engine does not get from the runtime.
#[derive(Debug, Clone)]
struct PodRecord {
    uid: String,
    node: String,
    owner_kind: String,
    owner_name: String,
}

/// One allocation of a batch, with what was read for it.
struct Pending {
    request: Request,
    pod: PodRecord,
    /// The pod's endpoint, once read: only when the pod holds addresses already (a retry, a
    /// leftover) or belongs to a StatefulSet; a new pod has none to read.
    endpoint: Option<Option<SpiderEndpoint>>,
}

impl Pending {
    /// What the pod's endpoint commits, if it is this pod's.
    fn committed(&self) -> BTreeSet<(String, IpAddr)> {
        committed_to(self.endpoint.as_ref().and_then(Option::as_ref), &self.pod.uid)
    }
}

/// What `endpoint` commits for the pod with UID `uid`: nothing when it is another pod's.
fn committed_to(endpoint: Option<&SpiderEndpoint>, uid: &str) -> BTreeSet<(String, IpAddr)> {
    endpoint
        .filter(|endpoint| endpoint.spec.uid == uid)
        .map(|endpoint| endpoint_addresses(&endpoint.spec))
        .unwrap_or_default()
}

/// Pools and reserved IPs as read, with the allocation state their statuses record.
struct Snapshot {
    pools: BTreeMap<String, SpiderIPPool>,
    catalog: PoolCatalog,
    state: InMemoryState,
}

/// Counters of a store and its clones, for reports and benchmarks.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Pool status writes that succeeded.
    pub pool_writes: std::sync::atomic::AtomicU64,
    /// Pool status writes refused with a conflict (409).
    pub conflicts: std::sync::atomic::AtomicU64,
}

/// The cluster store: allocations through the Kubernetes API.
#[derive(Clone)]
pub struct ClusterStore {
    client: Client,
    budget: RetryBudget,
    counters: Arc<StoreCounters>,
}

impl ClusterStore {
    /// A store using `client`, with the default retry budget.
    pub fn new(client: Client) -> ClusterStore {
        ClusterStore {
            client,
            budget: RetryBudget::default(),
            counters: Arc::default(),
        }
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

    /// Allocates for one request. The pod's labels and annotations, its namespace's and its
    /// node's labels come from the API server; the request gives the pod's namespace, name and
    /// (when the runtime knows it) UID, the container, the interface and the network.
    pub async fn allocate(&self, request: Request) -> Result<Allocation, ClusterError> {
        self.allocate_many(vec![request])
            .await
            .pop()
            .expect("one result per request")
    }

    /// Allocates for several requests in one write per pool: what a node agent does with the
    /// ADDs that arrive while it writes, so that allocators on other nodes meet a conflict once
    /// per batch rather than once per pod. Each request succeeds or fails on its own.
    pub async fn allocate_many(&self, requests: Vec<Request>) -> Vec<Result<Allocation, ClusterError>> {
        let count = requests.len();
        let mut results: Vec<Option<Result<Allocation, ClusterError>>> = (0..count).map(|_| None).collect();
        // The reads of every request at once: a batch waits for a few round trips, not a few
        // per pod; a namespace or node is read once per batch.
        let mut reads = tokio::task::JoinSet::new();
        for (index, request) in requests.into_iter().enumerate() {
            let store = self.clone();
            reads.spawn(async move { (index, store.read_pod(request).await) });
        }
        let mut pods = Vec::new();
        while let Some(read) = reads.join_next().await {
            match read.expect("a read task does not panic") {
                (index, Ok(pod)) => pods.push((index, pod)),
                (index, Err(error)) => results[index] = Some(Err(error)),
            }
        }
        let namespaces: BTreeSet<String> = pods
            .iter()
            .map(|(_, p)| p.request.pod.namespace.clone())
            .collect();
        let nodes: BTreeSet<String> = pods.iter().map(|(_, p)| p.request.node.name.clone()).collect();
        let (namespaces, nodes) = tokio::join!(self.read_namespaces(namespaces), self.read_nodes(nodes));
        let mut pending = Vec::new();
        for (index, mut prepared) in pods {
            let request = &mut prepared.request;
            let facts = match namespaces.get(&request.pod.namespace) {
                Some(Ok(facts)) => facts,
                Some(Err(error)) => {
                    results[index] = Some(Err(error.clone()));
                    continue;
                }
                None => unreachable!("every namespace of the batch was read"),
            };
            request.namespace = facts.clone();
            match nodes.get(&request.node.name) {
                Some(Ok(labels)) => request.node.labels = labels.clone(),
                Some(Err(error)) => {
                    results[index] = Some(Err(error.clone()));
                    continue;
                }
                None => unreachable!("every node of the batch was read"),
            }
            pending.push((index, prepared));
        }
        pending.sort_by_key(|(index, _)| *index);
        let started = Instant::now();
        let mut conflicts = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.attempt(&mut pending).await;
            match outcome {
                Ok(plans) => {
                    // The endpoints of a batch at once: one round trip, not one per pod.
                    let mut commits = tokio::task::JoinSet::new();
                    for ((index, prepared), plan) in std::mem::take(&mut pending).into_iter().zip(plans) {
                        let store = self.clone();
                        commits.spawn(async move {
                            let committed = match plan {
                                Ok(plan) => store.commit(&prepared, &plan).await.map(|()| Allocation {
                                    plan,
                                    conflicts,
                                    attempts: attempt,
                                }),
                                Err(error) => Err(error),
                            };
                            (index, committed)
                        });
                    }
                    while let Some(done) = commits.join_next().await {
                        let (index, committed) = done.expect("a commit task does not panic");
                        results[index] = Some(committed);
                    }
                    break;
                }
                Err(Attempt::Failed(error)) => {
                    for (index, _) in &pending {
                        results[*index] = Some(Err(error.clone()));
                    }
                    self.compensate(&pending).await;
                    break;
                }
                Err(Attempt::Conflict(pools)) => {
                    conflicts += 1;
                    if attempt >= self.budget.attempts || started.elapsed() >= self.budget.deadline {
                        for (index, _) in &pending {
                            results[*index] = Some(Err(ClusterError::Contended {
                                pools: pools.clone(),
                                attempts: attempt,
                                conflicts,
                                elapsed: started.elapsed(),
                            }));
                        }
                        self.compensate(&pending).await;
                        break;
                    }
                    tokio::time::sleep(self.budget.backoff(attempt)).await;
                }
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every request has a result"))
            .collect()
    }

    /// After a batch gave up, releases what its attempts wrote to some pools before a later
    /// write failed (the first pool of a dual-stack pair, say), so that a pod that got an error
    /// holds nothing its endpoint does not commit. Best effort: if the API server is gone, the
    /// collector reclaims those records after its grace period, and the pod's next ADD releases
    /// them in its own write.
    async fn compensate(&self, pending: &[(usize, Pending)]) {
        let Ok((_, state)) = self.state().await else {
            return;
        };
        let mut uncommitted = Vec::new();
        for (_, prepared) in pending {
            let owner = prepared.request.owner();
            let Ok(held) = state.held_by(&owner);
            if held.is_empty() {
                continue;
            }
            // What the endpoint commits now, read again: the batch may not have read it.
            let Ok(endpoint) = self.read_endpoint(&prepared.request).await else {
                return;
            };
            uncommitted.push((owner, committed_to(endpoint.as_ref(), &prepared.pod.uid)));
        }
        if uncommitted.is_empty() {
            return;
        }
        let budget = RetryBudget {
            attempts: 5,
            ..self.budget
        };
        let _ = self
            .clone()
            .with_budget(budget)
            .write_with(|_, state| {
                uncommitted
                    .iter()
                    .flat_map(|(owner, committed)| {
                        let Ok(held) = state.held_by(owner);
                        held.into_iter()
                            .filter(|held| !committed.contains(&(held.pool.clone(), held.address)))
                            .map(|held| Change::Release {
                                pool: held.pool,
                                address: held.address,
                                holder: held.holder,
                            })
                    })
                    .collect()
            })
            .await;
    }

    /// Reads the pod of a request: its UID, labels, annotations, node and owner.
    async fn read_pod(&self, mut request: Request) -> Result<Pending, ClusterError> {
        if request.pod.name.is_empty() || request.pod.namespace.is_empty() {
            return Err(ClusterError::NoPod);
        }
        let (namespace, name) = (request.pod.namespace.clone(), request.pod.name.clone());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let pod = pods
            .get_opt(&name)
            .await
            .map_err(|err| ClusterError::api(format!("reading pod {namespace}/{name}"), err))?
            .ok_or_else(|| ClusterError::PodNotFound {
                namespace: namespace.clone(),
                name: name.clone(),
            })?;
        let uid = pod.uid().unwrap_or_default();
        if let Some(requested) = request.pod.uid.as_ref().filter(|r| !r.is_empty() && **r != uid) {
            return Err(ClusterError::PodReplaced {
                namespace,
                name,
                requested: requested.clone(),
                current: uid,
            });
        }
        request.pod.uid = Some(uid.clone());
        request.pod.labels = pod.labels().clone();
        request.pod.annotations = pod.annotations().clone();
        if request.node.name.is_empty() {
            request.node.name = pod
                .spec
                .as_ref()
                .and_then(|spec| spec.node_name.clone())
                .unwrap_or_default();
        }
        let (owner_kind, owner_name) = pod
            .owner_references()
            .iter()
            .find(|owner| owner.controller == Some(true))
            .map(|owner| (owner.kind.clone(), owner.name.clone()))
            .unwrap_or_else(|| ("Pod".into(), name.clone()));
        let mut pending = Pending {
            pod: PodRecord {
                uid,
                node: request.node.name.clone(),
                owner_kind,
                owner_name,
            },
            request,
            endpoint: None,
        };
        if pending.pod.owner_kind == "StatefulSet" {
            // Its predecessor's addresses are named by the endpoint.
            pending.endpoint = Some(self.read_endpoint(&pending.request).await?);
        }
        Ok(pending)
    }

    /// The endpoint of the request's pod, if there is one.
    async fn read_endpoint(&self, request: &Request) -> Result<Option<SpiderEndpoint>, ClusterError> {
        let (namespace, name) = (&request.pod.namespace, &request.pod.name);
        Api::<SpiderEndpoint>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|err| ClusterError::api(format!("reading SpiderEndpoint {namespace}/{name}"), err))
    }

    /// The labels and annotations of each namespace.
    async fn read_namespaces(
        &self,
        names: BTreeSet<String>,
    ) -> BTreeMap<String, Result<NamespaceFacts, ClusterError>> {
        let mut reads = tokio::task::JoinSet::new();
        for name in names {
            let api: Api<Namespace> = Api::all(self.client.clone());
            reads.spawn(async move {
                let read = api
                    .get(&name)
                    .await
                    .map(|ns| NamespaceFacts {
                        labels: ns.labels().clone(),
                        annotations: ns.annotations().clone(),
                    })
                    .map_err(|err| ClusterError::api(format!("reading namespace {name}"), err));
                (name, read)
            });
        }
        reads.join_all().await.into_iter().collect()
    }

    /// The labels of each node.
    async fn read_nodes(
        &self,
        names: BTreeSet<String>,
    ) -> BTreeMap<String, Result<spiderpool_core::Labels, ClusterError>> {
        let mut reads = tokio::task::JoinSet::new();
        for name in names {
            let api: Api<Node> = Api::all(self.client.clone());
            reads.spawn(async move {
                let read = match api.get_opt(&name).await {
                    Ok(Some(node)) => Ok(node.labels().clone()),
                    Ok(None) => Err(ClusterError::NodeNotFound(name.clone())),
                    Err(err) => Err(ClusterError::api(format!("reading node {name}"), err)),
                };
                (name, read)
            });
        }
        reads.join_all().await.into_iter().collect()
    }

    /// Reads the pools and reserved IPs.
    async fn snapshot(&self) -> Result<Snapshot, ClusterError> {
        let pools: Api<SpiderIPPool> = Api::all(self.client.clone());
        let reserved: Api<SpiderReservedIP> = Api::all(self.client.clone());
        let everything = ListParams::default();
        let (pools, reserved) = tokio::join!(pools.list(&everything), reserved.list(&everything));
        let pools = pools.map_err(|err| ClusterError::api("listing SpiderIPPools", err))?;
        let reserved = reserved.map_err(|err| ClusterError::api("listing SpiderReservedIPs", err))?;
        let documents = documents(&pools.items, &reserved.items);
        let catalog = PoolCatalog::from_documents(&documents);
        let empty = IPPoolStatus::default();
        let state = state_from_statuses(pools.items.iter().map(|pool| {
            (
                pool.metadata.name.as_deref().unwrap_or_default(),
                pool.status.as_ref().unwrap_or(&empty),
            )
        }))?;
        let pools = pools
            .items
            .into_iter()
            .map(|pool| (pool.name_any(), pool))
            .collect();
        Ok(Snapshot {
            pools,
            catalog,
            state,
        })
    }

    /// One read-decide-write round for a batch; every pool it touches is written with the
    /// version read, or none after the first conflict.
    async fn attempt(
        &self,
        pending: &mut [(usize, Pending)],
    ) -> Result<Vec<Result<Plan, ClusterError>>, Attempt> {
        let Snapshot {
            pools,
            catalog,
            mut state,
        } = self.snapshot().await.map_err(Attempt::Failed)?;
        // A pod that holds addresses already: its endpoint says which are committed.
        let mut reads = tokio::task::JoinSet::new();
        for (position, (_, prepared)) in pending.iter().enumerate() {
            let Ok(held) = state.held_by(&prepared.request.owner());
            if prepared.endpoint.is_none() && !held.is_empty() {
                let store = self.clone();
                let request = prepared.request.clone();
                reads.spawn(async move { (position, store.read_endpoint(&request).await) });
            }
        }
        for (position, read) in reads.join_all().await {
            pending[position].1.endpoint = Some(read.map_err(Attempt::Failed)?);
        }
        let mut touched = BTreeSet::new();
        let mut plans = Vec::new();
        for (_, prepared) in pending.iter() {
            let owner = prepared.request.owner();
            let committed = prepared.committed();
            let mut changes = self.sticky_transfers(prepared, &state);
            let Ok(held) = state.held_by(&owner);
            changes.extend(
                held.into_iter()
                    .filter(|held| !committed.contains(&(held.pool.clone(), held.address)))
                    .map(|held| Change::Release {
                        pool: held.pool,
                        address: held.address,
                        holder: held.holder,
                    }),
            );
            state
                .apply(&changes)
                .expect("transfers and releases of held records apply");
            let plan = match allocate(&catalog, &state, &prepared.request) {
                Ok(plan) => plan,
                Err(error) => {
                    plans.push(Err(ClusterError::Refused(error)));
                    continue;
                }
            };
            state
                .apply(&plan.changes)
                .expect("a plan applies to the state it was made on");
            touched.extend(changes.iter().chain(&plan.changes).map(|c| c.pool().to_owned()));
            plans.push(Ok(plan));
        }
        self.write_pools(&pools, &catalog, &state, &touched).await?;
        Ok(plans)
    }

    /// For a StatefulSet pod re-created under the same name, the records of its predecessor
    /// (named by the endpoint) move to it: the pod keeps its addresses.
    fn sticky_transfers(&self, prepared: &Pending, state: &InMemoryState) -> Vec<Change> {
        let Some(Some(endpoint)) = &prepared.endpoint else {
            return Vec::new();
        };
        if prepared.pod.owner_kind != "StatefulSet" || endpoint.spec.uid == prepared.pod.uid {
            return Vec::new();
        }
        let owner = OwnerKey::Pod(prepared.pod.uid.clone());
        let pod = prepared.request.pod_ref();
        let Ok(held) = state.held_by(&OwnerKey::Pod(endpoint.spec.uid.clone()));
        held.into_iter()
            .map(|held| Change::Transfer {
                to: Holder::new(
                    &owner,
                    &held.holder.interface(),
                    pod.as_ref(),
                    &prepared.request.container_id,
                ),
                pool: held.pool,
                address: held.address,
                from: held.holder,
            })
            .collect()
    }

    /// Writes the status of every pool in `touched` from `state`, each with the
    /// `resourceVersion` it was read at, in name order; stops at the first conflict.
    async fn write_pools(
        &self,
        pools: &BTreeMap<String, SpiderIPPool>,
        catalog: &PoolCatalog,
        state: &InMemoryState,
        touched: &BTreeSet<String>,
    ) -> Result<(), Attempt> {
        let api: Api<SpiderIPPool> = Api::all(self.client.clone());
        for name in touched {
            let Some(read) = pools.get(name) else {
                continue;
            };
            let mut pool = read.clone();
            pool.status = Some(status_of(name, catalog, state, read.status.as_ref()));
            match api.replace_status(name, &PostParams::default(), &pool).await {
                Ok(_) => {
                    self.counters.pool_writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                    self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    return Err(Attempt::Conflict(vec![name.clone()]));
                }
                Err(error) => {
                    return Err(Attempt::Failed(ClusterError::api(
                        format!("writing the status of SpiderIPPool {name}"),
                        error,
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes the pod's endpoint: the commit record of its allocation.
    async fn commit(&self, prepared: &Pending, plan: &Plan) -> Result<(), ClusterError> {
        let request = &prepared.request;
        let api: Api<SpiderEndpoint> = Api::namespaced(self.client.clone(), &request.pod.namespace);
        // Unread: the pod is new, so create, and read only if that finds one.
        let mut endpoint = prepared.endpoint.clone().flatten();
        for _ in 0..self.budget.attempts {
            let mut ips: Vec<EndpointInterface> = endpoint
                .as_ref()
                .filter(|e| e.spec.uid == prepared.pod.uid)
                .map(|e| e.spec.ips.clone())
                .unwrap_or_default();
            for interface in &plan.interfaces {
                ips.retain(|entry| entry.interface != interface.interface);
                ips.push(endpoint_interface(interface, !interface.default_route));
            }
            ips.sort_by(|a, b| a.interface.cmp(&b.interface));
            let spec = SpiderEndpointSpec {
                uid: prepared.pod.uid.clone(),
                node: prepared.pod.node.clone(),
                container_id: request.container_id.clone(),
                owner_controller_type: prepared.pod.owner_kind.clone(),
                owner_controller_name: prepared.pod.owner_name.clone(),
                ips,
            };
            let written = match &endpoint {
                Some(current) if current.spec == spec => return Ok(()),
                Some(current) => {
                    let mut next = current.clone();
                    next.spec = spec;
                    api.replace(&request.pod.name, &PostParams::default(), &next)
                        .await
                }
                None => {
                    api.create(
                        &PostParams::default(),
                        &SpiderEndpoint::new(&request.pod.name, spec),
                    )
                    .await
                }
            };
            match written {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                    endpoint = api
                        .get_opt(&request.pod.name)
                        .await
                        .map_err(|err| endpoint_error("reading", request, err))?;
                }
                Err(error) => {
                    return Err(endpoint_error("writing", request, error));
                }
            }
        }
        Err(ClusterError::EndpointContended {
            pod: format!("{}/{}", request.pod.namespace, request.pod.name),
            attempts: self.budget.attempts,
        })
    }

    /// Releases what the attachment holds (every interface of an `ippools` annotation when
    /// `request.interface` is its first), then removes those interfaces from the pod's
    /// endpoint, deleting it when none is left. Releasing nothing is a success.
    pub async fn release(&self, request: &Request) -> Result<Release, ClusterError> {
        let release = self
            .write_with(|_, state| {
                let Ok(changes) = release_attachment(state, request);
                changes
            })
            .await?;
        if !request.pod.name.is_empty() {
            let released: BTreeSet<String> = release
                .changes
                .iter()
                .filter_map(|change| match change {
                    Change::Release { holder, .. } => Some(holder.interface()),
                    _ => None,
                })
                .chain(std::iter::once(request.interface.clone()))
                .collect();
            self.forget(request, &released).await?;
        }
        Ok(release)
    }

    /// Writes the changes `decide` makes on a fresh snapshot, with compare-and-swap per pool;
    /// after a conflict it reads again and decides again, within the budget. Deciding nothing
    /// writes nothing.
    pub async fn write_with(
        &self,
        decide: impl Fn(&PoolCatalog, &InMemoryState) -> Vec<Change>,
    ) -> Result<Release, ClusterError> {
        let started = Instant::now();
        let mut conflicts = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let snapshot = self.snapshot().await?;
            let changes = decide(&snapshot.catalog, &snapshot.state);
            let mut state = snapshot.state;
            state
                .apply(&changes)
                .map_err(|err| ClusterError::Unappliable(err.to_string()))?;
            let touched = changes.iter().map(|c| c.pool().to_owned()).collect();
            match self
                .write_pools(&snapshot.pools, &snapshot.catalog, &state, &touched)
                .await
            {
                Ok(()) => return Ok(Release { changes, conflicts }),
                Err(Attempt::Failed(error)) => return Err(error),
                Err(Attempt::Conflict(pools)) => {
                    conflicts += 1;
                    if attempt >= self.budget.attempts || started.elapsed() >= self.budget.deadline {
                        return Err(ClusterError::Contended {
                            pools,
                            attempts: attempt,
                            conflicts,
                            elapsed: started.elapsed(),
                        });
                    }
                    tokio::time::sleep(self.budget.backoff(attempt)).await;
                }
            }
        }
    }

    /// Removes `interfaces` from the endpoint of the request's pod (if it is that pod's).
    async fn forget(&self, request: &Request, interfaces: &BTreeSet<String>) -> Result<(), ClusterError> {
        let api: Api<SpiderEndpoint> = Api::namespaced(self.client.clone(), &request.pod.namespace);
        for _ in 0..self.budget.attempts {
            let read = api
                .get_opt(&request.pod.name)
                .await
                .map_err(|err| endpoint_error("reading", request, err))?;
            let Some(mut endpoint) = read else {
                return Ok(());
            };
            if request
                .pod
                .uid
                .as_ref()
                .is_some_and(|uid| !uid.is_empty() && *uid != endpoint.spec.uid)
            {
                return Ok(());
            }
            endpoint
                .spec
                .ips
                .retain(|entry| !interfaces.contains(&entry.interface));
            let written = if endpoint.spec.ips.is_empty() {
                let preconditions = kube::api::Preconditions {
                    resource_version: endpoint.resource_version(),
                    uid: endpoint.uid(),
                };
                let params = kube::api::DeleteParams {
                    preconditions: Some(preconditions),
                    ..kube::api::DeleteParams::default()
                };
                api.delete(&request.pod.name, &params).await.map(|_| ())
            } else {
                api.replace(&request.pod.name, &PostParams::default(), &endpoint)
                    .await
                    .map(|_| ())
            };
            match written {
                Ok(()) => return Ok(()),
                Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
                Err(kube::Error::Api(status)) if status.is_conflict() => {}
                Err(error) => {
                    return Err(endpoint_error("writing", request, error));
                }
            }
        }
        Ok(())
    }

    /// The allocation state the pools' statuses record now, with the pools as the engine sees
    /// them: what `kubectl get spiderippool` and the garbage collector read.
    pub async fn state(&self) -> Result<(PoolCatalog, InMemoryState), ClusterError> {
        let snapshot = self.snapshot().await?;
        Ok((snapshot.catalog, snapshot.state))
    }
}

/// How an attempt ended when it did not write.
enum Attempt {
    /// A pool changed since it was read.
    Conflict(Vec<String>),
    /// Something else failed; retrying will not help.
    Failed(ClusterError),
}

/// The status a pool gets from `state`: the engine's [`pool_status`] for a valid pool; for a
/// pool the engine refuses (still holding addresses), the records and count, keeping its
/// total as it was.
fn status_of(
    name: &str,
    catalog: &PoolCatalog,
    state: &InMemoryState,
    read: Option<&IPPoolStatus>,
) -> IPPoolStatus {
    let Ok(status) = match catalog.pool(name) {
        Some(pool) => pool_status(pool, state),
        None => held_status(name, state, read.and_then(|status| status.total_ip_count)),
    };
    status
}

/// The (pool, address) pairs an endpoint lists.
pub(crate) fn endpoint_addresses(spec: &SpiderEndpointSpec) -> BTreeSet<(String, IpAddr)> {
    let mut committed = BTreeSet::new();
    for entry in &spec.ips {
        for (pool, address) in [(&entry.ipv4_pool, &entry.ipv4), (&entry.ipv6_pool, &entry.ipv6)] {
            let parsed = address
                .as_deref()
                .and_then(|text| text.split('/').next())
                .and_then(|text| text.parse().ok());
            if let (Some(pool), Some(address)) = (pool, parsed) {
                committed.insert((pool.clone(), address));
            }
        }
    }
    committed
}

/// The endpoint entry of one interface of a plan.
fn endpoint_interface(
    interface: &spiderpool_core::InterfaceAddresses,
    clean_gateway: bool,
) -> EndpointInterface {
    let mut entry = EndpointInterface {
        interface: interface.interface.clone(),
        clean_gateway,
        ..EndpointInterface::default()
    };
    for assigned in &interface.addresses {
        let address = Some(format!("{}/{}", assigned.address, assigned.subnet.prefix_len()));
        let gateway = assigned.gateway.map(|gateway| gateway.to_string());
        if assigned.address.is_ipv4() {
            entry.ipv4_pool = Some(assigned.pool.clone());
            entry.ipv4 = address;
            entry.ipv4_gateway = gateway;
        } else {
            entry.ipv6_pool = Some(assigned.pool.clone());
            entry.ipv6 = address;
            entry.ipv6_gateway = gateway;
        }
    }
    entry
}

/// The engine's documents for the objects read from the API server.
pub fn documents(pools: &[SpiderIPPool], reserved: &[SpiderReservedIP]) -> Vec<Document> {
    let meta = |metadata: &kube::core::ObjectMeta| ObjectMeta {
        name: metadata.name.clone().unwrap_or_default(),
        labels: metadata.labels.clone().unwrap_or_default(),
        annotations: metadata.annotations.clone().unwrap_or_default(),
        deletion_timestamp: metadata
            .deletion_timestamp
            .as_ref()
            .map(|time| time.0.to_string()),
        resource_version: metadata.resource_version.clone(),
        uid: metadata.uid.clone(),
    };
    let pools = pools.iter().map(|pool| {
        Resource::IpPool(Box::new(spiderpool_core::SpiderIPPool {
            api_version: spiderpool_core::API_VERSION.into(),
            kind: "SpiderIPPool".into(),
            metadata: meta(&pool.metadata),
            spec: pool.spec.0.clone(),
            status: pool.status.clone(),
        }))
    });
    let reserved = reserved.iter().map(|object| {
        Resource::ReservedIp(spiderpool_core::SpiderReservedIP {
            api_version: spiderpool_core::API_VERSION.into(),
            kind: "SpiderReservedIP".into(),
            metadata: meta(&object.metadata),
            spec: object.spec.0.clone(),
        })
    });
    pools
        .chain(reserved)
        .enumerate()
        .map(|(index, resource)| Document {
            index: index + 1,
            resource,
        })
        .collect()
}

/// Every address held in the cluster, with its holder, by pool: for listings and GC.
pub fn held_addresses(state: &InMemoryState, catalog: &PoolCatalog) -> Vec<HeldAddress> {
    catalog
        .entries()
        .flat_map(|(pool, _)| {
            let Ok(allocations) = state.allocations(pool);
            allocations.into_iter().map(move |(address, holder)| HeldAddress {
                pool: pool.to_owned(),
                address,
                holder,
            })
        })
        .collect()
}

/// A failed call about the SpiderEndpoint of the request's pod: `verb` is what was being done.
fn endpoint_error(verb: &str, request: &Request, source: kube::Error) -> ClusterError {
    ClusterError::api(
        format!(
            "{verb} SpiderEndpoint {}/{}",
            request.pod.namespace, request.pod.name
        ),
        source,
    )
}
