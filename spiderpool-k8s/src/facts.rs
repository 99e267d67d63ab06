//! What the IPAM reads of the Kubernetes objects it does not own: a pod's record, a
//! namespace's and a node's labels, a StatefulSet's replicas, and a `SpiderEndpoint` with the
//! version a write of it presents. Conversions only; the core decides on them.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use spiderpool_core::round::Versioned;
use spiderpool_core::{Controller, EndpointSpec, NamespaceFacts, PodPhase, PodRecord};

use crate::crd::SpiderEndpoint;

/// What the IPAM reads of a pod: its UID, node, labels, annotations, controller, phase, and
/// when its last container finished.
pub fn pod_record(pod: &Pod) -> PodRecord {
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
    PodRecord {
        uid: pod.uid().unwrap_or_default(),
        node: pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.clone())
            .unwrap_or_default(),
        labels: pod.labels().clone(),
        annotations: pod.annotations().clone(),
        controller: pod
            .owner_references()
            .iter()
            .find(|owner| owner.controller == Some(true))
            .map(|owner| Controller {
                kind: owner.kind.clone(),
                name: owner.name.clone(),
            }),
        phase,
        finished_at,
    }
}

/// A namespace's labels and annotations.
pub fn namespace_facts(namespace: &Namespace) -> NamespaceFacts {
    NamespaceFacts {
        labels: namespace.labels().clone(),
        annotations: namespace.annotations().clone(),
    }
}

/// A StatefulSet's replica count (1 when unset, as the API defaults it).
pub fn replicas(set: &StatefulSet) -> u32 {
    let replicas = set.spec.replicas.unwrap_or(1);
    u32::try_from(replicas).unwrap_or(0)
}

/// An endpoint with the version a write of it presents.
pub fn versioned_endpoint(endpoint: SpiderEndpoint) -> Versioned<EndpointSpec> {
    Versioned {
        version: endpoint.metadata.resource_version.unwrap_or_default(),
        object: endpoint.spec.0,
    }
}
