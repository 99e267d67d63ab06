//! What an allocation request says about the pod, its namespace, its node and its network.

use std::collections::BTreeMap;
use std::fmt;

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
