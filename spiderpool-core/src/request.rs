//! What an allocation request says about the pod, its namespace, its node and its network.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::selector::Labels;
use crate::state::{Holder, OwnerKey, PodRef};

/// Facts about the pod being attached. Without Kubernetes, leave them empty: the container
/// ID then identifies the allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// The pod's namespace; empty without Kubernetes.
    pub namespace: String,
    /// The pod's name; empty without Kubernetes.
    pub name: String,
    /// The pod's UID; when present it identifies the allocation across sandbox re-creation.
    pub uid: Option<String>,
    /// The pod's labels, for `podAffinity`.
    pub labels: Labels,
    /// The pod's annotations, read for `ipam.spidernet.io/ippool(s)`.
    pub annotations: BTreeMap<String, String>,
}

/// Facts about the pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceFacts {
    /// The namespace's labels, for `namespaceAffinity`.
    pub labels: Labels,
    /// The namespace's annotations, read for the default-pool annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Facts about the node the pod runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name, for `nodeName`.
    pub name: String,
    /// The node's labels, for `nodeAffinity`.
    pub labels: Labels,
}

/// A network attachment (a Multus `NetworkAttachmentDefinition`, or a CNI network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Attachment {
    /// Whether a `multusName` entry names this attachment: `ns/name` compares both parts, a
    /// bare `name` only the name.
    pub fn is_named_by(&self, entry: &str) -> bool {
        match entry.split_once('/') {
            Some((namespace, name)) => namespace == self.namespace && name == self.name,
            None => entry == self.name,
        }
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Facts from the network configuration the request came through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkFacts {
    /// The attachment being set up, for `multusName`.
    pub attachment: Option<Attachment>,
    /// `ipam.default_ipv4_ippool` of the network config.
    pub default_ipv4: Vec<String>,
    /// `ipam.default_ipv6_ippool` of the network config.
    pub default_ipv6: Vec<String>,
    /// Whether the interface gets no default route (`clean_gateway`); the
    /// `ipam.spidernet.io/ippools` annotation sets this per interface instead.
    pub clean_gateway: bool,
}

/// Which families to allocate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpFamilies {
    /// Every family the source of candidates lists pools for.
    #[default]
    AsListed,
    /// IPv4 only; the source must list IPv4 pools.
    Ipv4,
    /// IPv6 only; the source must list IPv6 pools.
    Ipv6,
    /// Both; the source must list pools of both families.
    DualStack,
}

/// One request for addresses: an attachment of a pod (or container) to a network.
///
/// ```
/// use spiderpool_core::Request;
/// let mut request = Request::new("4bd8f0f1", "eth0");
/// request.pod.namespace = "default".into();
/// request.pod.name = "test-app-j9ftl".into();
/// request.pod.uid = Some("6f1c2e44-6a1b-4c0e-9d7e-2f5a8b3c1d00".into());
/// request.node.name = "controller-node-1".into();
/// assert_eq!(request.owner().to_string(), "pod uid 6f1c2e44-6a1b-4c0e-9d7e-2f5a8b3c1d00");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The container (sandbox) ID given by the runtime.
    pub container_id: String,
    /// The interface being set up, such as `eth0`.
    pub interface: String,
    /// The pod.
    pub pod: PodFacts,
    /// The pod's namespace.
    pub namespace: NamespaceFacts,
    /// The node.
    pub node: NodeFacts,
    /// The network configuration.
    pub network: NetworkFacts,
    /// Which families to allocate.
    pub families: IpFamilies,
}

impl Request {
    /// A request for one container and interface, with every other fact empty.
    pub fn new(container_id: impl Into<String>, interface: impl Into<String>) -> Request {
        Request {
            container_id: container_id.into(),
            interface: interface.into(),
            ..Request::default()
        }
    }

    /// The idempotency key: the pod UID when known, otherwise the container ID.
    pub fn owner(&self) -> OwnerKey {
        match &self.pod.uid {
            Some(uid) if !uid.is_empty() => OwnerKey::Pod(uid.clone()),
            _ => OwnerKey::Container(self.container_id.clone()),
        }
    }

    /// The pod by namespace and name, when both are known.
    pub fn pod_ref(&self) -> Option<PodRef> {
        (!self.pod.name.is_empty()).then(|| PodRef {
            namespace: self.pod.namespace.clone(),
            name: self.pod.name.clone(),
        })
    }

    /// The holder recorded for an address of `interface`.
    pub(crate) fn holder(&self, interface: &str) -> Holder {
        Holder::new(
            &self.owner(),
            interface,
            self.pod_ref().as_ref(),
            &self.container_id,
        )
    }

    /// Who is asking, for messages: `pod ns/name` or `container ID`.
    pub(crate) fn who(&self) -> String {
        match self.pod_ref() {
            Some(pod) => format!("pod {pod}"),
            None => format!("container {}", self.container_id),
        }
    }
}

/// The pod of a CNI call as the runtime names it (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID` of `CNI_ARGS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID, when the runtime gives it.
    #[serde(default)]
    pub uid: Option<String>,
}

impl PodIdentity {
    /// The pod by namespace and name.
    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// What the container runtime knows of one CNI call, before anything is looked up: the
/// sandbox, the interface, the pod's identity and the network configuration. It is what the
/// plugin sends its node agent, and, with what the pod's labels and annotations say
/// ([`PodContext`]), every [`Request`] is made from it in [`RuntimeFacts::request`].
///
/// ```
/// use spiderpool_core::*;
/// let facts: RuntimeFacts = serde_json::from_str(r#"{"container_id": "c1", "interface": "eth0",
///     "pod": {"namespace": "default", "name": "web-0", "uid": "u1"}, "node": "worker-node-1"}"#).unwrap();
/// let request = facts.request(PodContext::default());
/// assert_eq!(request.owner(), OwnerKey::Pod("u1".into()));
/// assert_eq!(request.node.name, "worker-node-1");
/// // A field this version does not know is refused, not dropped.
/// assert!(serde_json::from_str::<RuntimeFacts>(r#"{"container_id": "c1", "interface": "eth0", "mtu": 9000}"#).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFacts {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub interface: String,
    /// The pod, when `CNI_ARGS` names one.
    #[serde(default)]
    pub pod: Option<PodIdentity>,
    /// The node, when the configuration names it (`ipam.node_name`); otherwise the pod's node
    /// in a cluster, or the host's name.
    #[serde(default)]
    pub node: Option<String>,
    /// What the network configuration says.
    #[serde(default)]
    pub network: NetworkFacts,
    /// Which families to allocate.
    #[serde(default)]
    pub families: IpFamilies,
}

/// What the runtime does not know of a pod and its surroundings: its labels and annotations,
/// its namespace's, its node's. The cluster mode reads them from the API server; the embedded
/// store takes them from the network configuration's `args.cni`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodContext {
    /// The pod's UID as the API server has it, when the runtime gave none.
    pub uid: Option<String>,
    /// The pod's labels.
    pub labels: Labels,
    /// The pod's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The pod's namespace.
    pub namespace: NamespaceFacts,
    /// The node the pod runs on: its name is used when the runtime facts name none.
    pub node: NodeFacts,
}

impl RuntimeFacts {
    /// The request these facts make in `context`.
    pub fn request(&self, context: PodContext) -> Request {
        // Destructured whole, so that a new field of either side is a compile error here.
        let RuntimeFacts {
            container_id,
            interface,
            pod,
            node,
            network,
            families,
        } = self.clone();
        let PodContext {
            uid,
            labels,
            annotations,
            namespace,
            node: node_facts,
        } = context;
        let PodIdentity {
            namespace: pod_namespace,
            name,
            uid: runtime_uid,
        } = pod.unwrap_or_default();
        Request {
            container_id,
            interface,
            pod: PodFacts {
                namespace: pod_namespace,
                name,
                uid: runtime_uid.filter(|uid| !uid.is_empty()).or(uid),
                labels,
                annotations,
            },
            namespace,
            node: NodeFacts {
                name: node.filter(|name| !name.is_empty()).unwrap_or(node_facts.name),
                labels: node_facts.labels,
            },
            network,
            families,
        }
    }

    /// The pod by namespace and name, when the runtime names one.
    pub fn pod_ref(&self) -> Option<PodRef> {
        self.pod
            .as_ref()
            .filter(|pod| !pod.name.is_empty() && !pod.namespace.is_empty())
            .map(PodIdentity::pod_ref)
    }
}

/// Who owns a pod: the kind and name of its controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controller {
    /// `StatefulSet`, `ReplicaSet`, `DaemonSet`, ...
    pub kind: String,
    /// The controller's name.
    pub name: String,
}

/// The lifecycle phase of a pod, as the API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodPhase {
    /// Not all containers started yet.
    #[default]
    Pending,
    /// Running.
    Running,
    /// Every container ended successfully and none restarts.
    Succeeded,
    /// Every container ended, some failed, none restarts.
    Failed,
    /// Unknown (the node stopped reporting).
    Unknown,
}

/// Seconds since the Unix epoch: the controller's clock, passed in.
pub type Seconds = i64;

/// What the IPAM reads of a pod in the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRecord {
    /// Its UID.
    pub uid: String,
    /// The node it is bound to; empty while unscheduled.
    pub node: String,
    /// Its labels, for `podAffinity`.
    pub labels: Labels,
    /// Its annotations, for `ipam.spidernet.io/ippool(s)`.
    pub annotations: BTreeMap<String, String>,
    /// Its controller, when one owns it.
    pub controller: Option<Controller>,
    /// Its phase.
    pub phase: PodPhase,
    /// When it finished (the latest container termination), for `Succeeded` / `Failed`;
    /// `None` counts as longer ago than any grace period.
    pub finished_at: Option<Seconds>,
}
