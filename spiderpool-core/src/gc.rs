//! Garbage collection in a cluster: which held addresses no live pod needs any more.
//!
//! The controller brings what it read (pods, nodes, endpoints, StatefulSets) and the time; the
//! decision is here, pure, so that every case is an example test. An address is released
//! when its pod is gone (and no StatefulSet will bring it back under the same name), was
//! replaced by another pod of the same name, finished (`Succeeded` / `Failed`) longer ago than
//! the grace period, or sits on a node that was deleted; and when no endpoint commits it for
//! longer than the grace period (an allocation that never finished). An address a running
//! pod holds and its endpoint lists is never released.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::endpoint::{EndpointSpec, statefulset_keeps};
pub use crate::request::{PodPhase, PodRecord, Seconds};
use crate::state::{Change, HeldAddress, OwnerKey, PodRef};

/// Everything the controller read, at one time.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Pods by namespace and name.
    pub pods: BTreeMap<PodRef, PodRecord>,
    /// The names of the nodes that exist.
    pub nodes: BTreeSet<String>,
    /// Endpoints by the namespace and name of their pod.
    pub endpoints: BTreeMap<PodRef, EndpointSpec>,
    /// StatefulSets by namespace and name, with their replica count.
    pub statefulsets: BTreeMap<PodRef, u32>,
}

/// How long the collector waits before it acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// How long a finished pod keeps its addresses (its logs and status are still read).
    pub finished_grace: Seconds,
    /// How long an address may stay held without an endpoint committing it: longer than any
    /// allocation takes between its pool write and its endpoint write.
    pub uncommitted_grace: Seconds,
    /// How long a block stays claimed by its node while it holds no address: a node whose
    /// pods come and go keeps its blocks, and a node that stopped using one gives it back.
    pub empty_block_grace: Seconds,
}

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            finished_grace: 60,
            uncommitted_grace: 120,
            empty_block_grace: 300,
        }
    }
}

/// Why an address is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcReason {
    /// Its pod does not exist, and no StatefulSet will re-create it.
    PodGone,
    /// A pod of the same name with another UID exists: the holder was replaced.
    PodReplaced {
        /// The UID of the pod that exists now.
        current: String,
    },
    /// Its pod finished longer ago than the grace period.
    PodFinished {
        /// `Succeeded` or `Failed`.
        phase: PodPhase,
        /// Seconds since it finished.
        ago: Seconds,
    },
    /// Its pod's node was deleted.
    NodeGone {
        /// The node.
        node: String,
    },
    /// No endpoint committed it for longer than the grace period.
    Uncommitted {
        /// Seconds since the collector first saw it uncommitted.
        ago: Seconds,
    },
    /// It has no pod identity and its container is gone from every endpoint (records of the
    /// cluster mode always have one; this is for records written by hand).
    NoPodIdentity,
}

impl fmt::Display for GcReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcReason::PodGone => write!(f, "the pod is gone"),
            GcReason::PodReplaced { current } => write!(f, "the pod was replaced by UID {current}"),
            GcReason::PodFinished { phase, ago } => write!(f, "the pod finished ({phase:?}) {ago}s ago"),
            GcReason::NodeGone { node } => write!(f, "the pod's node {node} was deleted"),
            GcReason::Uncommitted { ago } => {
                write!(
                    f,
                    "no SpiderEndpoint has committed it for {ago}s (an interrupted allocation)"
                )
            }
            GcReason::NoPodIdentity => write!(f, "it names no pod"),
        }
    }
}

/// One release the collector decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// The change to write.
    pub change: Change,
    /// Why.
    pub reason: GcReason,
}

/// The collector's decision for one sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// The addresses to release.
    pub collected: Vec<Collected>,
    /// Addresses seen uncommitted and not yet past the grace period, with when they were first
    /// seen so: the next sweep's `suspects`.
    pub suspects: BTreeMap<(String, IpAddr), Seconds>,
    /// Endpoints whose pod is gone and that commit nothing still held: to delete.
    pub orphaned_endpoints: Vec<PodRef>,
    /// Blocks seen empty and not yet past their grace period, with when they were first seen
    /// so: the next sweep's `empty_blocks` (filled by the cluster round).
    pub empty_blocks: BTreeMap<String, Seconds>,
    /// Blocks given back: empty past their grace period, or of a pool or node that is gone.
    pub released_blocks: Vec<String>,
    /// Pools whose records moved from `status.allocatedIPs` into blocks.
    pub moved_to_blocks: Vec<String>,
}

/// Decides what to release among `held`, at `now`. `suspects` is the previous sweep's.
///
/// ```
/// use spiderpool_core::*;
/// use spiderpool_core::gc::*;
/// let pod = PodRef { namespace: "default".into(), name: "web-0".into() };
/// let holder = Holder::new(&OwnerKey::Pod("u1".into()), "eth0", Some(&pod), "c1");
/// let held = vec![HeldAddress { pool: "p".into(), address: "10.6.168.60".parse().unwrap(), holder }];
/// // Nothing in the cluster: the pod is gone, its address is released.
/// let sweep = sweep(&held, &ClusterView::default(), &Default::default(), 1_000, GcPolicy::default());
/// assert_eq!(sweep.collected[0].reason, GcReason::PodGone);
/// ```
pub fn sweep(
    held: &[HeldAddress],
    view: &ClusterView,
    suspects: &BTreeMap<(String, IpAddr), Seconds>,
    now: Seconds,
    policy: GcPolicy,
) -> Sweep {
    let mut result = Sweep::default();
    let mut still_held: BTreeSet<PodRef> = BTreeSet::new();
    let mut by_pod: BTreeMap<PodRef, Vec<HeldAddress>> = BTreeMap::new();
    for record in held {
        if let Some(pod) = record.holder.pod() {
            by_pod.entry(pod).or_default().push(record.clone());
        }
    }
    let committed: BTreeMap<&PodRef, BTreeSet<(String, IpAddr)>> = view
        .endpoints
        .iter()
        .map(|(pod, endpoint)| {
            let records: Vec<HeldAddress> = by_pod
                .get(pod)
                .into_iter()
                .flatten()
                .filter(|record| endpoint.speaks_for(record.holder.owner().id()))
                .cloned()
                .collect();
            (pod, endpoint.commits(&records))
        })
        .collect();
    for record in held {
        let key = (record.pool.clone(), record.address);
        let reason = match judge(record, view, &committed, policy, now) {
            Verdict::Keep => None,
            Verdict::Release(reason) => Some(reason),
            Verdict::Uncommitted => {
                let since = suspects.get(&key).copied().unwrap_or(now);
                if now - since >= policy.uncommitted_grace {
                    Some(GcReason::Uncommitted { ago: now - since })
                } else {
                    result.suspects.insert(key, since);
                    None
                }
            }
        };
        match reason {
            Some(reason) => result.collected.push(Collected {
                change: Change::Release {
                    pool: record.pool.clone(),
                    address: record.address,
                    holder: record.holder.clone(),
                },
                reason,
            }),
            None => {
                if let Some(pod) = record.holder.pod() {
                    still_held.insert(pod);
                }
            }
        }
    }
    result.orphaned_endpoints = view
        .endpoints
        .iter()
        .filter(|(pod, endpoint)| {
            let alive = view.pods.get(*pod).is_some_and(|live| live.uid == endpoint.uid);
            !alive && !still_held.contains(*pod) && !kept_by_statefulset(pod, endpoint, view)
        })
        .map(|(pod, _)| pod.clone())
        .collect();
    result
}

enum Verdict {
    Keep,
    Release(GcReason),
    Uncommitted,
}

fn judge(
    record: &HeldAddress,
    view: &ClusterView,
    commits: &BTreeMap<&PodRef, BTreeSet<(String, IpAddr)>>,
    policy: GcPolicy,
    now: Seconds,
) -> Verdict {
    let pod = record.holder.pod();
    let endpoint = pod.as_ref().and_then(|pod| view.endpoints.get(pod));
    let committed = endpoint.is_some_and(|e| e.speaks_for(record.holder.owner().id()))
        && pod
            .as_ref()
            .and_then(|pod| commits.get(pod))
            .is_some_and(|pairs| pairs.contains(&(record.pool.clone(), record.address)));
    let (Some(pod), OwnerKey::Pod(uid)) = (pod, record.holder.owner()) else {
        // Records of the cluster mode always name their pod's UID; one written by hand
        // without it stays while an endpoint still lists its container or commits it.
        let container = record.holder.container_id();
        let listed = view
            .endpoints
            .values()
            .any(|endpoint| !container.is_empty() && endpoint.container_id == container);
        return if listed || committed {
            Verdict::Keep
        } else {
            Verdict::Release(GcReason::NoPodIdentity)
        };
    };
    let Some(live) = view.pods.get(&pod) else {
        return match endpoint {
            Some(endpoint) if committed && kept_by_statefulset(&pod, endpoint, view) => Verdict::Keep,
            _ => Verdict::Release(GcReason::PodGone),
        };
    };
    if live.uid != uid {
        // The next ADD of a StatefulSet pod takes its predecessor's records over.
        return match endpoint {
            Some(endpoint) if committed && kept_by_statefulset(&pod, endpoint, view) => Verdict::Keep,
            _ => Verdict::Release(GcReason::PodReplaced {
                current: live.uid.clone(),
            }),
        };
    }
    if !live.node.is_empty() && !view.nodes.contains(&live.node) {
        return Verdict::Release(GcReason::NodeGone {
            node: live.node.clone(),
        });
    }
    if matches!(live.phase, PodPhase::Succeeded | PodPhase::Failed) {
        // Without a termination time the pod finished before anything recorded it.
        let ago = live
            .finished_at
            .map_or(policy.finished_grace, |finished| now - finished);
        if ago >= policy.finished_grace {
            return Verdict::Release(GcReason::PodFinished {
                phase: live.phase,
                ago,
            });
        }
    }
    if committed {
        Verdict::Keep
    } else {
        Verdict::Uncommitted
    }
}

/// Whether a StatefulSet will re-create the pod under its name, as its endpoint records.
fn kept_by_statefulset(pod: &PodRef, endpoint: &EndpointSpec, view: &ClusterView) -> bool {
    endpoint.statefulset().is_some_and(|set| {
        let key = PodRef {
            namespace: pod.namespace.clone(),
            name: set.to_owned(),
        };
        statefulset_keeps(pod, set, view.statefulsets.get(&key).copied())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Holder;

    const NOW: Seconds = 10_000;

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn record(name: &str, uid: &str, address: &str) -> HeldAddress {
        HeldAddress {
            pool: "p".into(),
            address: address.parse().unwrap(),
            holder: Holder::new(&OwnerKey::Pod(uid.into()), "eth0", Some(&pod(name)), "c"),
        }
    }

    fn live(uid: &str, phase: PodPhase, node: &str) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            phase,
            node: node.into(),
            ..PodRecord::default()
        }
    }

    fn endpoint(uid: &str, address: &str, statefulset: Option<&str>) -> EndpointSpec {
        EndpointSpec {
            uid: uid.into(),
            owner_controller_type: if statefulset.is_some() {
                "StatefulSet"
            } else {
                "Pod"
            }
            .into(),
            owner_controller_name: statefulset.unwrap_or_default().into(),
            ips: vec![crate::EndpointInterface {
                interface: "eth0".into(),
                ipv4_pool: Some("p".into()),
                ipv4: Some(format!("{address}/24")),
                ..Default::default()
            }],
            ..EndpointSpec::default()
        }
    }

    /// A running pod on node n1, committed by its endpoint.
    fn healthy() -> ClusterView {
        let mut view = ClusterView::default();
        view.nodes.insert("n1".into());
        view.pods.insert(pod("web"), live("u1", PodPhase::Running, "n1"));
        view.endpoints
            .insert(pod("web"), endpoint("u1", "10.0.0.1", None));
        view
    }

    fn reasons(sweep: &Sweep) -> Vec<GcReason> {
        sweep.collected.iter().map(|c| c.reason.clone()).collect()
    }

    fn run(view: &ClusterView, held: &[HeldAddress]) -> Sweep {
        sweep(held, view, &BTreeMap::new(), NOW, GcPolicy::default())
    }

    #[test]
    fn a_running_committed_pod_keeps_its_address() {
        let held = [record("web", "u1", "10.0.0.1")];
        let result = run(&healthy(), &held);
        assert!(result.collected.is_empty());
        assert!(result.suspects.is_empty());
        assert!(result.orphaned_endpoints.is_empty());
    }

    #[test]
    fn a_record_without_a_pod_uid_stays_while_an_endpoint_lists_its_container() {
        let by_container = |container: &str| HeldAddress {
            pool: "p".into(),
            address: "10.0.0.9".parse().unwrap(),
            holder: Holder::new(&OwnerKey::Container(container.into()), "eth0", None, container),
        };
        let mut view = healthy();
        view.endpoints.get_mut(&pod("web")).unwrap().container_id = "c9".into();
        assert!(run(&view, &[by_container("c9")]).collected.is_empty());
        assert_eq!(
            reasons(&run(&view, &[by_container("c8")])),
            [GcReason::NoPodIdentity]
        );
    }

    #[test]
    fn a_deleted_pod_loses_its_address_and_its_endpoint() {
        let mut view = healthy();
        view.pods.clear();
        let result = run(&view, &[record("web", "u1", "10.0.0.1")]);
        assert_eq!(reasons(&result), [GcReason::PodGone]);
        assert_eq!(result.orphaned_endpoints, [pod("web")]);
    }

    #[test]
    fn a_finished_pod_keeps_its_address_for_the_grace_period_only() {
        let mut view = healthy();
        let finished = |ago| PodRecord {
            finished_at: Some(NOW - ago),
            ..live("u1", PodPhase::Succeeded, "n1")
        };
        view.pods.insert(pod("web"), finished(30));
        assert!(
            run(&view, &[record("web", "u1", "10.0.0.1")])
                .collected
                .is_empty()
        );
        view.pods.insert(pod("web"), finished(61));
        assert_eq!(
            reasons(&run(&view, &[record("web", "u1", "10.0.0.1")])),
            [GcReason::PodFinished {
                phase: PodPhase::Succeeded,
                ago: 61
            }]
        );
    }

    #[test]
    fn a_pod_on_a_deleted_node_loses_its_address() {
        let mut view = healthy();
        view.nodes.clear();
        assert_eq!(
            reasons(&run(&view, &[record("web", "u1", "10.0.0.1")])),
            [GcReason::NodeGone { node: "n1".into() }]
        );
    }

    #[test]
    fn a_replaced_pod_loses_its_address_unless_a_statefulset_brings_it_back() {
        let mut view = healthy();
        view.pods.insert(pod("web"), live("u2", PodPhase::Pending, "n1"));
        assert_eq!(
            reasons(&run(&view, &[record("web", "u1", "10.0.0.1")])),
            [GcReason::PodReplaced { current: "u2".into() }]
        );

        let mut view = ClusterView::default();
        view.nodes.insert("n1".into());
        view.statefulsets.insert(pod("db"), 2);
        view.endpoints
            .insert(pod("db-1"), endpoint("u1", "10.0.0.1", Some("db")));
        let held = [record("db-1", "u1", "10.0.0.1")];
        // Deleted and not yet re-created, or re-created with a new UID: kept for it.
        let result = run(&view, &held);
        assert!(result.collected.is_empty(), "{:?}", result.collected);
        assert!(result.orphaned_endpoints.is_empty());
        view.pods.insert(pod("db-1"), live("u2", PodPhase::Pending, "n1"));
        assert!(run(&view, &held).collected.is_empty());
        // Scaled down below the ordinal: released.
        view.statefulsets.insert(pod("db"), 1);
        assert_eq!(
            reasons(&run(&view, &held)),
            [GcReason::PodReplaced { current: "u2".into() }]
        );
        view.pods.clear();
        assert_eq!(reasons(&run(&view, &held)), [GcReason::PodGone]);
    }

    #[test]
    fn an_uncommitted_address_is_released_after_the_grace_period() {
        let mut view = healthy();
        view.endpoints.clear();
        let held = [record("web", "u1", "10.0.0.1")];
        let first = sweep(&held, &view, &BTreeMap::new(), NOW, GcPolicy::default());
        assert!(first.collected.is_empty());
        assert_eq!(first.suspects.values().copied().collect::<Vec<_>>(), [NOW]);
        let soon = sweep(&held, &view, &first.suspects, NOW + 60, GcPolicy::default());
        assert!(soon.collected.is_empty());
        let later = sweep(&held, &view, &soon.suspects, NOW + 120, GcPolicy::default());
        assert_eq!(reasons(&later), [GcReason::Uncommitted { ago: 120 }]);
        // Committed in between: forgotten as a suspect.
        let committed = sweep(&held, &healthy(), &first.suspects, NOW + 120, GcPolicy::default());
        assert!(committed.collected.is_empty() && committed.suspects.is_empty());
    }

    #[test]
    fn an_orphaned_endpoint_is_deleted_even_without_addresses() {
        let mut view = healthy();
        view.pods.clear();
        let result = run(&view, &[]);
        assert!(result.collected.is_empty());
        assert_eq!(result.orphaned_endpoints, [pod("web")]);
    }
}
