//! The garbage collector: every sweep reads pods, nodes, endpoints and StatefulSets, asks the
//! core ([`spiderpool_core::gc::sweep`]) which addresses no live pod needs, releases them with
//! compare-and-swap, and deletes the endpoints of pods that are gone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::{Api, ResourceExt};
use spiderpool_core::PodRef;
use spiderpool_core::gc::{
    ClusterView, Collected, EndpointView, GcPolicy, LivePod, PodPhase, Seconds, sweep,
};

use crate::cluster::{ClusterError, ClusterStore, held_addresses};
use crate::crd::SpiderEndpoint;

/// What one sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// The addresses released, with why.
    pub released: Vec<Collected>,
    /// The endpoints deleted.
    pub endpoints_deleted: Vec<PodRef>,
    /// Addresses seen uncommitted, waiting for the grace period.
    pub suspects: usize,
    /// Conflicts met writing pools.
    pub conflicts: u32,
}

/// The collector, with what it remembers between sweeps: when it first saw each
/// uncommitted address.
pub struct Collector {
    store: ClusterStore,
    policy: GcPolicy,
    suspects: BTreeMap<(String, IpAddr), Seconds>,
}

impl Collector {
    /// A collector writing through `store`.
    pub fn new(store: ClusterStore, policy: GcPolicy) -> Collector {
        Collector {
            store,
            policy,
            suspects: BTreeMap::new(),
        }
    }

    /// One sweep at time `now` (seconds since the epoch).
    pub async fn sweep_once(&mut self, now: Seconds) -> Result<SweepReport, ClusterError> {
        let view = self.view().await?;
        let policy = self.policy;
        let suspects = self.suspects.clone();
        let decided = std::sync::Mutex::new(None);
        let release = self
            .store
            .write_with(|catalog, state| {
                let held = held_addresses(state, catalog);
                let result = sweep(&held, &view, &suspects, now, policy);
                let changes = result.collected.iter().map(|c| c.change.clone()).collect();
                *decided.lock().expect("not poisoned") = Some(result);
                changes
            })
            .await?;
        let result = decided
            .into_inner()
            .expect("not poisoned")
            .expect("write_with decides at least once");
        self.suspects = result.suspects;
        let mut deleted = Vec::new();
        for pod in &result.orphaned_endpoints {
            if self.delete_endpoint(pod, &view).await? {
                deleted.push(pod.clone());
            }
        }
        Ok(SweepReport {
            released: result.collected,
            endpoints_deleted: deleted,
            suspects: self.suspects.len(),
            conflicts: release.conflicts,
        })
    }

    /// Deletes the endpoint of `pod` if it is still the one read (same UID).
    async fn delete_endpoint(&self, pod: &PodRef, view: &ClusterView) -> Result<bool, ClusterError> {
        let api: Api<SpiderEndpoint> = Api::namespaced(self.store.client().clone(), &pod.namespace);
        let Some(endpoint) = view.endpoints.get(pod) else {
            return Ok(false);
        };
        let current = api
            .get_opt(&pod.name)
            .await
            .map_err(|err| ClusterError::api(format!("reading SpiderEndpoint {pod}"), err))?;
        let Some(current) = current.filter(|current| current.spec.uid == endpoint.uid) else {
            return Ok(false);
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: current.resource_version(),
                uid: current.uid(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => Ok(false),
            Err(err) => Err(ClusterError::api(format!("deleting SpiderEndpoint {pod}"), err)),
        }
    }

    /// Reads pods, nodes, endpoints and StatefulSets.
    async fn view(&self) -> Result<ClusterView, ClusterError> {
        let client = self.store.client().clone();
        let everything = ListParams::default();
        let (pods, nodes, endpoints, sets) = (
            Api::<Pod>::all(client.clone()),
            Api::<Node>::all(client.clone()),
            Api::<SpiderEndpoint>::all(client.clone()),
            Api::<StatefulSet>::all(client),
        );
        let (pods, nodes, endpoints, sets) = tokio::join!(
            pods.list(&everything),
            nodes.list_metadata(&everything),
            endpoints.list(&everything),
            sets.list(&everything),
        );
        let pods = pods.map_err(|err| ClusterError::api("listing pods", err))?;
        let nodes = nodes.map_err(|err| ClusterError::api("listing nodes", err))?;
        let endpoints = endpoints.map_err(|err| ClusterError::api("listing SpiderEndpoints", err))?;
        let sets = sets.map_err(|err| ClusterError::api("listing StatefulSets", err))?;
        let key = |namespace: Option<String>, name: String| PodRef {
            namespace: namespace.unwrap_or_default(),
            name,
        };
        Ok(ClusterView {
            pods: pods
                .items
                .iter()
                .map(|pod| (key(pod.namespace(), pod.name_any()), live_pod(pod)))
                .collect(),
            nodes: nodes.items.iter().map(|node| node.name_any()).collect(),
            endpoints: endpoints
                .items
                .iter()
                .map(|endpoint| {
                    let view = EndpointView {
                        uid: endpoint.spec.uid.clone(),
                        addresses: crate::cluster::endpoint_addresses(&endpoint.spec),
                        statefulset: (endpoint.spec.owner_controller_type == "StatefulSet")
                            .then(|| endpoint.spec.owner_controller_name.clone()),
                    };
                    (key(endpoint.namespace(), endpoint.name_any()), view)
                })
                .collect(),
            statefulsets: sets
                .items
                .iter()
                .map(|set| {
                    let replicas = set.spec.replicas.unwrap_or(1);
                    (
                        key(set.namespace(), set.name_any()),
                        u32::try_from(replicas).unwrap_or(0),
                    )
                })
                .collect(),
        })
    }
}

/// Sweeps every `interval` until the process ends; a failed sweep is reported and retried at
/// the next interval.
pub async fn run_collector(store: ClusterStore, policy: GcPolicy, interval: Duration) {
    let mut collector = Collector::new(store, policy);
    loop {
        match collector.sweep_once(unix_now()).await {
            Ok(report) => {
                for collected in &report.released {
                    if let spiderpool_core::Change::Release {
                        pool,
                        address,
                        holder,
                    } = &collected.change
                    {
                        eprintln!(
                            "gc: released {address} of {holder} in {pool}: {}",
                            collected.reason
                        );
                    }
                }
                for pod in &report.endpoints_deleted {
                    eprintln!("gc: deleted the SpiderEndpoint of {pod}: the pod is gone");
                }
            }
            Err(error) => eprintln!("gc: sweep failed, retrying in {interval:?}: {error}"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// The controller's clock.
pub fn unix_now() -> Seconds {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as Seconds)
}

/// What the collector needs of a pod.
fn live_pod(pod: &Pod) -> LivePod {
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Unknown") => PodPhase::Unknown,
        _ => PodPhase::Pending,
    };
    let finished_at = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|time| time.0.as_second())
        .max();
    LivePod {
        uid: pod.uid().unwrap_or_default(),
        phase,
        node: pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.clone())
            .unwrap_or_default(),
        finished_at,
    }
}
