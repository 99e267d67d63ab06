//! Where allocations live: the embedded store on this host, the node agent of a cluster, or
//! the API server itself. The backend is chosen once from the configuration ([`choose`]);
//! every CNI verb is written once, in [`crate::plugin`], against [`Backend`].

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spiderpool_core::round::Pools;
use spiderpool_core::{
    NamespaceFacts, NodeFacts, PodContext, Request, RuntimeFacts, allocate, attachment_addresses,
    collect_garbage, next_free, release_attachment,
};
use spiderpool_k8s::{ApiFailure, ClusterStore};

use crate::cni::{IpamConfig, IpamResult, PodMetadata, ProtocolError, result_of};
use crate::failure::Failure;
use crate::pools::load_catalog;
use crate::store::Store;
use crate::wire::{self, AgentAnswer, AgentCall};

/// How long a call waits for other calls holding the embedded store, by default.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// How long a call waits for the agent, by default.
const AGENT_WAIT: Duration = Duration::from_secs(60);

/// What a backend does for each CNI verb.
pub trait Backend {
    /// ADD: the addresses and routes of the attachment's interface.
    fn add(&self, facts: &RuntimeFacts) -> Result<IpamResult, Failure>;
    /// DEL: releases what the attachment holds. Releasing nothing is a success.
    fn del(&self, facts: &RuntimeFacts) -> Result<(), Failure>;
    /// CHECK: the addresses the attachment holds on its interface.
    fn held(&self, facts: &RuntimeFacts) -> Result<BTreeSet<IpAddr>, Failure>;
    /// GC: releases every attachment of the network that is not in `valid` (container ID,
    /// interface).
    fn gc(&self, valid: &[(String, String)]) -> Result<(), Failure>;
    /// STATUS: whether an ADD could work now.
    fn status(&self) -> Result<(), Failure>;
}

/// The backend the `ipam` section asks for: the node agent (`agent_socket`), the API server
/// (`kubeconfig`), or the embedded store. `network` is the network's name, `metadata` the
/// configuration's `args.cni` and `node` this host's name (asked for by the embedded store
/// only).
pub fn choose(
    ipam: &IpamConfig,
    network: &str,
    metadata: PodMetadata,
    node: impl FnOnce() -> String,
) -> Box<dyn Backend> {
    let wait = |default| ipam.busy_wait_ms.map_or(default, Duration::from_millis);
    if let Some(socket) = &ipam.agent_socket {
        return Box::new(Agent {
            socket: socket.clone(),
            wait: wait(AGENT_WAIT),
        });
    }
    if let Some(kubeconfig) = &ipam.kubeconfig {
        return Box::new(Direct {
            kubeconfig: kubeconfig.clone(),
        });
    }
    let context = PodContext {
        uid: None,
        labels: metadata.labels,
        annotations: metadata.annotations,
        namespace: NamespaceFacts {
            labels: metadata.namespace_labels,
            annotations: metadata.namespace_annotations,
        },
        node: NodeFacts {
            name: node(),
            labels: ipam.node_labels.clone(),
        },
    };
    Box::new(Embedded {
        ipam: ipam.clone(),
        network: network.to_owned(),
        context,
        wait: wait(STORE_WAIT),
    })
}

/// The embedded store: pools from files or the configuration, state in SQLite.
pub struct Embedded {
    ipam: IpamConfig,
    network: String,
    context: PodContext,
    wait: Duration,
}

/// Where the embedded store lives when `ipam.data_dir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/spiderpool";

impl Embedded {
    fn open(&self) -> Result<Store, Failure> {
        let dir = self
            .ipam
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        Ok(Store::open(&dir, self.wait)?)
    }

    fn request(&self, facts: &RuntimeFacts) -> Request {
        facts.request(self.context.clone())
    }

    /// Pools come from somewhere: `ipam.ippools_path` or `ipam.ippools`.
    fn require_pool_definitions(&self) -> Result<(), Failure> {
        if self.ipam.ippools_path.is_none() && self.ipam.ippools.is_empty() {
            return Err(ProtocolError::config(
                "ipam.ippools_path: missing",
                "set ippools_path to a YAML file or a directory of SpiderIPPool objects, or list them in ipam.ippools",
            )
            .into());
        }
        Ok(())
    }
}

impl Backend for Embedded {
    fn add(&self, facts: &RuntimeFacts) -> Result<IpamResult, Failure> {
        self.require_pool_definitions()?;
        let request = self.request(facts);
        self.open()?.write(|transaction| {
            let catalog = load_catalog(&self.ipam, Some(transaction))?;
            let plan = allocate(&catalog, transaction, &request)?;
            transaction.apply(&plan.changes, &self.network)?;
            Ok::<_, Failure>(result_of(&plan, &request.interface))
        })
    }

    fn del(&self, facts: &RuntimeFacts) -> Result<(), Failure> {
        let request = self.request(facts);
        self.open()?.write(|transaction| {
            let changes = release_attachment(transaction, &request)?;
            transaction.apply(&changes, &self.network)?;
            Ok::<_, Failure>(())
        })
    }

    fn held(&self, facts: &RuntimeFacts) -> Result<BTreeSet<IpAddr>, Failure> {
        let request = self.request(facts);
        self.open()?.read(|transaction| {
            let held = attachment_addresses(transaction, &request, std::slice::from_ref(&request.interface))?;
            Ok::<_, Failure>(held.into_iter().map(|held| held.address).collect())
        })
    }

    fn gc(&self, valid: &[(String, String)]) -> Result<(), Failure> {
        self.open()?.write(|transaction| {
            // Only this network's allocations: other networks share the store.
            let held = transaction.allocations_of_network(&self.network)?;
            let changes = collect_garbage(held, valid);
            transaction.apply(&changes, &self.network)?;
            Ok::<_, Failure>(())
        })
    }

    fn status(&self) -> Result<(), Failure> {
        self.require_pool_definitions()?;
        self.open()?.read(|transaction| {
            let catalog = load_catalog(&self.ipam, None)?;
            let pools: Vec<_> = catalog.pools().collect();
            if pools.is_empty() {
                return Err(Failure::NoPools {
                    fix: "add SpiderIPPool objects to ippools_path",
                });
            }
            for pool in pools {
                if next_free(transaction, pool)?.is_some() {
                    return Ok(());
                }
            }
            Err(Failure::AllFull)
        })
    }
}

/// The node agent, over its unix socket.
pub struct Agent {
    socket: PathBuf,
    wait: Duration,
}

impl Agent {
    fn call(&self, call: &AgentCall) -> Result<AgentAnswer, Failure> {
        wire::call(&self.socket, call, self.wait)
    }
}

impl Backend for Agent {
    fn add(&self, facts: &RuntimeFacts) -> Result<IpamResult, Failure> {
        match self.call(&AgentCall::Add { facts: facts.clone() })? {
            AgentAnswer::Added(result) => Ok(result),
            other => Err(wire::unexpected(&self.socket, &other)),
        }
    }

    fn del(&self, facts: &RuntimeFacts) -> Result<(), Failure> {
        self.call(&AgentCall::Del { facts: facts.clone() }).map(|_| ())
    }

    fn held(&self, facts: &RuntimeFacts) -> Result<BTreeSet<IpAddr>, Failure> {
        match self.call(&AgentCall::Held { facts: facts.clone() })? {
            AgentAnswer::Held(held) => Ok(held.into_iter().collect()),
            other => Err(wire::unexpected(&self.socket, &other)),
        }
    }

    fn gc(&self, _: &[(String, String)]) -> Result<(), Failure> {
        // In a cluster the controller collects garbage from the API's view of pods, which is
        // wider than one runtime's list of attachments.
        Ok(())
    }

    fn status(&self) -> Result<(), Failure> {
        self.call(&AgentCall::Status).map(|_| ())
    }
}

/// The API server itself, through the kubeconfig of `ipam.kubeconfig`: one client and one
/// batch per call.
pub struct Direct {
    kubeconfig: PathBuf,
}

impl Direct {
    /// Runs `work` against the cluster, on a runtime of this thread.
    fn run<T, F: Future<Output = Result<T, Failure>>>(
        &self,
        work: impl FnOnce(ClusterStore) -> F,
    ) -> Result<T, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Failure::Io {
                what: "starting the runtime",
                error,
            })?;
        runtime.block_on(async { work(ClusterStore::new(client(&self.kubeconfig).await?)).await })
    }
}

impl Backend for Direct {
    fn add(&self, facts: &RuntimeFacts) -> Result<IpamResult, Failure> {
        self.run(|store| async move {
            let plan = store.allocate(facts.clone()).await?;
            Ok(result_of(&plan, &facts.interface))
        })
    }

    fn del(&self, facts: &RuntimeFacts) -> Result<(), Failure> {
        self.run(|store| async move { Ok(store.release(facts.clone()).await.map(|_| ())?) })
    }

    fn held(&self, facts: &RuntimeFacts) -> Result<BTreeSet<IpAddr>, Failure> {
        self.run(|store| async move { cluster_held(&store, facts).await })
    }

    fn gc(&self, _: &[(String, String)]) -> Result<(), Failure> {
        // As with the agent: the controller collects.
        Ok(())
    }

    fn status(&self) -> Result<(), Failure> {
        self.run(|store| async move { cluster_ready(&store).await })
    }
}

/// The addresses an attachment holds in the cluster (CHECK).
pub async fn cluster_held(store: &ClusterStore, facts: &RuntimeFacts) -> Result<BTreeSet<IpAddr>, Failure> {
    let pools = store.pools().await.map_err(api)?;
    let request = facts.request(PodContext::default());
    let Ok(held) = attachment_addresses(&pools.state, &request, std::slice::from_ref(&request.interface));
    Ok(held.into_iter().map(|held| held.address).collect())
}

/// Whether the cluster can serve an ADD (STATUS): an agent's watches have listed, the API
/// server answers and some pool is valid.
pub async fn cluster_ready(store: &ClusterStore) -> Result<(), Failure> {
    let loading = store.loading();
    if !loading.is_empty() {
        return Err(Failure::Loading { loading });
    }
    let pools: Pools = store.pools().await.map_err(api)?;
    if pools.catalog.pools().next().is_none() {
        return Err(Failure::NoPools {
            fix: "kubectl apply SpiderIPPool objects",
        });
    }
    Ok(())
}

/// A failed read of the cluster, as a call's failure.
fn api(failure: ApiFailure) -> Failure {
    Failure::Cluster(spiderpool_core::round::RoundError::Api(failure))
}

/// A client of the cluster the kubeconfig file names.
pub async fn client(path: &Path) -> Result<kube::Client, Failure> {
    let invalid = |problem: String| {
        Failure::from(ProtocolError::config(
            format!("ipam.kubeconfig: {}: {problem}", path.display()),
            "point ipam.kubeconfig at a readable kubeconfig file for this node",
        ))
    };
    let file = kube::config::Kubeconfig::read_from(path).map_err(|err| invalid(err.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|err| invalid(err.to_string()))?;
    kube::Client::try_from(config).map_err(|err| invalid(err.to_string()))
}
