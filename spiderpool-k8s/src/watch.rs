//! What a node agent watches: its node, the pods on it, its blocks, and the pools, reserved
//! addresses and namespaces every ADD reads. A batch reads them from these caches instead of
//! asking the API server, so that an ADD's only requests are its writes (its endpoint and its
//! node's block) and a node's 100 pods starting at once no longer cost 100 GETs.
//!
//! A cache may be a moment behind. That is safe because every write a round makes is a
//! compare-and-swap on the version read (a block, a pool's status in the earlier format, an
//! endpoint), so a stale read only makes a write conflict, and the round reads and decides
//! again. What a write does not protect is read from the cache only when it cannot be stale
//! in a way that matters: a pod only when the cache holds it with the UID the runtime names
//! (a StatefulSet's pod comes back under its name with a new UID), a namespace or node only
//! when the cache holds it; anything else is read from the API server as without a cache. A
//! cache that has not listed yet, or whose watch the agent's role does not allow, is not used.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use spiderpool_core::StatusStateError;
use spiderpool_core::round::Pools;

use crate::crd::{SpiderIPBlock, SpiderIPPool, SpiderReservedIP};

/// One watched kind: a reflector's store, and whether its first list has arrived.
pub struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    ready: Arc<AtomicBool>,
}

impl<K> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    /// Starts watching what `config` selects of `api` on the current Tokio runtime, for as
    /// long as the runtime runs; a watch that fails is retried with backoff.
    fn start(api: Api<K>, config: watcher::Config) -> Watched<K> {
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        tokio::spawn(stream.for_each(|_| futures::future::ready(())));
        let (waiting, flag) = (store.clone(), ready.clone());
        tokio::spawn(async move {
            if waiting.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Release);
            }
        });
        Watched { store, ready }
    }

    /// Whether its first list has arrived.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The store, once its first list has arrived.
    pub fn store(&self) -> Option<&Store<K>> {
        self.is_ready().then_some(&self.store)
    }

    /// The object `name` (within `namespace`), when the store is ready and holds it.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let mut key = ObjectRef::new(name);
        if let Some(namespace) = namespace {
            key = key.within(namespace);
        }
        self.store()?.get(&key)
    }
}

/// The caches of one node's agent.
pub struct NodeWatch {
    /// The node's name.
    pub node: String,
    /// Every pool.
    pub pools: Watched<SpiderIPPool>,
    /// Every reserved address object.
    pub reserved: Watched<SpiderReservedIP>,
    /// Every namespace.
    pub namespaces: Watched<Namespace>,
    /// The node itself.
    pub nodes: Watched<Node>,
    /// The pods scheduled on the node.
    pub pods: Watched<Pod>,
    /// The blocks affine to the node.
    pub blocks: Watched<SpiderIPBlock>,
}

impl NodeWatch {
    /// Starts the watches of `node`'s agent.
    pub fn start(client: &Client, node: &str) -> NodeWatch {
        let all = watcher::Config::default;
        NodeWatch {
            node: node.to_owned(),
            pools: Watched::start(Api::all(client.clone()), all()),
            reserved: Watched::start(Api::all(client.clone()), all()),
            namespaces: Watched::start(Api::all(client.clone()), all()),
            nodes: Watched::start(
                Api::all(client.clone()),
                all().fields(&format!("metadata.name={node}")),
            ),
            pods: Watched::start(
                Api::all(client.clone()),
                all().fields(&format!("spec.nodeName={node}")),
            ),
            blocks: Watched::start(
                Api::all(client.clone()),
                all().fields(&format!("spec.node={node}")),
            ),
        }
    }
}

impl NodeWatch {
    /// The kinds whose first list has not arrived yet: until then the agent reads them from
    /// the API server on every batch, and says it is not ready ([`crate::ClusterStore::loading`]).
    pub fn loading(&self) -> Vec<&'static str> {
        [
            ("SpiderIPPools", self.pools.is_ready()),
            ("SpiderReservedIPs", self.reserved.is_ready()),
            ("namespaces", self.namespaces.is_ready()),
            ("its node", self.nodes.is_ready()),
            ("its pods", self.pods.is_ready()),
            ("its SpiderIPBlocks", self.blocks.is_ready()),
        ]
        .into_iter()
        .filter_map(|(kind, ready)| (!ready).then_some(kind))
        .collect()
    }

    /// The pools and reserved addresses as the watches hold them, once both have listed.
    pub fn pools(&self) -> Option<Result<Pools, StatusStateError>> {
        let (pools, reserved) = (self.pools.store()?, self.reserved.store()?);
        Some(Pools::read(
            pools.state().iter().map(|pool| pool.to_core()).collect(),
            reserved
                .state()
                .iter()
                .map(|reserved| reserved.to_core())
                .collect(),
        ))
    }

    /// The blocks affine to `node` as the watch holds them, when `node` is the watched one
    /// and the watch has listed.
    pub fn blocks_of(&self, node: &str) -> Option<Vec<Arc<SpiderIPBlock>>> {
        (node == self.node).then_some(())?;
        Some(self.blocks.store()?.state())
    }
}
