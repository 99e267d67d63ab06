//! The commit record of a pod's allocations in a cluster: the `spec` of its `SpiderEndpoint`,
//! and the rules that read and change it.
//!
//! A pool's status says who holds each address; the endpoint of a pod says which of those
//! records the pod's allocations completed. A record the endpoint does not list is left over
//! from an allocation that did not finish (a crash or a conflict between two writes), and is
//! released by the pod's next call or by the garbage collector.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::allocate::InterfaceAddresses;
use crate::request::Controller;
use crate::state::{HeldAddress, PodRef};

/// The kind of controller whose pods keep their addresses across re-creation.
pub const STATEFULSET: &str = "StatefulSet";

/// The allocations of one pod: what it holds, on which node, and who owns it.
///
/// Spiderpool keeps these facts in the endpoint's `status.current`; here they are the `spec`,
/// so that an allocation writes its endpoint in one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    /// The UID of the pod holding the addresses.
    pub uid: String,
    /// The node the pod runs on.
    pub node: String,
    /// The sandbox (container ID) of the last ADD.
    #[serde(default, rename = "containerID", skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    /// The kind of the pod's controller (`StatefulSet`, `ReplicaSet`, ...), or `Pod`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner_controller_type: String,
    /// The name of the pod's controller.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner_controller_name: String,
    /// One entry per interface, by interface name.
    #[serde(default)]
    pub ips: Vec<EndpointInterface>,
    /// The blocks (`SpiderIPBlock` names) holding records of the pod: where its calls and the
    /// collector find them, committed or not, whichever node's blocks they are in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<String>,
}

/// The addresses of one interface of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct EndpointInterface {
    /// The interface name.
    pub interface: String,
    /// The pool of the IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_pool: Option<String>,
    /// The IPv4 address with its prefix length, e.g. `10.6.168.60/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// The IPv4 gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("format" = "ipv4")))]
    pub ipv4_gateway: Option<String>,
    /// The pool of the IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_pool: Option<String>,
    /// The IPv6 address with its prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// The IPv6 gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("format" = "ipv6")))]
    pub ipv6_gateway: Option<String>,
    /// Whether the interface gets no default route.
    #[serde(default)]
    pub clean_gateway: bool,
}

impl EndpointInterface {
    /// The entry of one interface of an allocation.
    ///
    /// ```
    /// use spiderpool_core::*;
    /// let docs = parse_documents("{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool,
    ///   metadata: {name: p}, spec: {subnet: 10.6.0.0/16, ips: [10.6.168.60-10.6.168.69], gateway: 10.6.0.1}}").unwrap();
    /// let catalog = PoolCatalog::from_documents(&docs);
    /// let mut request = Request::new("c1", "eth0");
    /// request.pod.annotations.insert(annotations::POD_IPPOOL.into(), r#"{"ipv4": ["p"]}"#.into());
    /// let plan = allocate(&catalog, &InMemoryState::new(), &request).unwrap();
    /// let entry = EndpointInterface::of(&plan.interfaces[0]);
    /// assert_eq!(entry.ipv4.as_deref(), Some("10.6.168.60/16"));
    /// assert_eq!(entry.ipv4_gateway.as_deref(), Some("10.6.0.1"));
    /// assert!(!entry.clean_gateway);
    /// ```
    pub fn of(interface: &InterfaceAddresses) -> EndpointInterface {
        let mut entry = EndpointInterface {
            interface: interface.interface.clone(),
            clean_gateway: !interface.default_route,
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

    /// The (pool, address) pairs the entry lists; text that is not an address lists nothing.
    pub fn addresses(&self) -> impl Iterator<Item = (String, IpAddr)> + '_ {
        [(&self.ipv4_pool, &self.ipv4), (&self.ipv6_pool, &self.ipv6)]
            .into_iter()
            .filter_map(|(pool, address)| {
                let parsed = address
                    .as_deref()
                    .and_then(|text| text.split('/').next())
                    .and_then(|text| text.parse().ok());
                Some((pool.clone()?, parsed?))
            })
    }
}

impl EndpointSpec {
    /// The (pool, address) pairs the endpoint commits.
    ///
    /// ```
    /// use spiderpool_core::{EndpointInterface, EndpointSpec};
    /// let endpoint = EndpointSpec {
    ///     uid: "u1".into(),
    ///     ips: vec![EndpointInterface {
    ///         interface: "eth0".into(),
    ///         ipv4_pool: Some("test-ippool-6".into()),
    ///         ipv4: Some("10.6.168.60/16".into()),
    ///         ..EndpointInterface::default()
    ///     }],
    ///     ..EndpointSpec::default()
    /// };
    /// let committed = endpoint.committed();
    /// assert!(committed.contains(&("test-ippool-6".to_string(), "10.6.168.60".parse().unwrap())));
    /// ```
    pub fn committed(&self) -> BTreeSet<(String, IpAddr)> {
        self.ips.iter().flat_map(EndpointInterface::addresses).collect()
    }

    /// The pod's controller, when the endpoint names one other than the pod itself.
    pub fn controller(&self) -> Option<Controller> {
        (!self.owner_controller_type.is_empty() && self.owner_controller_type != "Pod").then(|| Controller {
            kind: self.owner_controller_type.clone(),
            name: self.owner_controller_name.clone(),
        })
    }

    /// The StatefulSet owning the pod, if one does.
    pub fn statefulset(&self) -> Option<&str> {
        (self.owner_controller_type == STATEFULSET).then_some(self.owner_controller_name.as_str())
    }

    /// The endpoint after an allocation of the pod `uid` on `node` through `container_id`:
    /// the interfaces of `interfaces` replace the entries of the same name, and the others
    /// stay when the endpoint already was this pod's (or its predecessor's, whose records the
    /// allocation took over).
    ///
    /// ```
    /// use spiderpool_core::{EndpointInterface, EndpointSpec};
    /// let entry = |name: &str| EndpointInterface { interface: name.into(), ..Default::default() };
    /// let before = EndpointSpec { uid: "u1".into(), ips: vec![entry("net1")], ..Default::default() };
    /// let after = EndpointSpec::committing(Some(&before), "u1", "n1", "c2", None, vec![entry("eth0")]);
    /// let names: Vec<&str> = after.ips.iter().map(|i| i.interface.as_str()).collect();
    /// assert_eq!(names, ["eth0", "net1"]);
    /// assert_eq!(after.container_id, "c2");
    /// ```
    pub fn committing(
        kept: Option<&EndpointSpec>,
        uid: &str,
        node: &str,
        container_id: &str,
        controller: Option<&Controller>,
        interfaces: Vec<EndpointInterface>,
    ) -> EndpointSpec {
        let mut ips: Vec<EndpointInterface> = kept.map(|endpoint| endpoint.ips.clone()).unwrap_or_default();
        for entry in interfaces {
            ips.retain(|kept| kept.interface != entry.interface);
            ips.push(entry);
        }
        ips.sort_by(|a, b| a.interface.cmp(&b.interface));
        let (kind, name) = match controller {
            Some(controller) => (controller.kind.clone(), controller.name.clone()),
            None => ("Pod".to_owned(), String::new()),
        };
        EndpointSpec {
            uid: uid.to_owned(),
            node: node.to_owned(),
            container_id: container_id.to_owned(),
            owner_controller_type: kind,
            owner_controller_name: name,
            ips,
            blocks: kept.map(|endpoint| endpoint.blocks.clone()).unwrap_or_default(),
        }
    }

    /// Whether the endpoint speaks for the records of the pod with UID `uid`: its own, or,
    /// for a StatefulSet's pod, those of every incarnation under its name (a successor takes
    /// its predecessor's records over before it writes its own endpoint).
    pub fn speaks_for(&self, uid: &str) -> bool {
        self.uid == uid || self.statefulset().is_some()
    }

    /// Which of `held`, the records of one pod, the endpoint commits: the records of an
    /// interface are committed when the endpoint's entry of that interface lists exactly
    /// them. Half of a dual-stack pair, or an address the entry lists that was released and
    /// later given to the pod again by an allocation that did not finish, is not.
    ///
    /// ```
    /// use spiderpool_core::{EndpointInterface, EndpointSpec, HeldAddress, Holder, OwnerKey};
    /// let holder = Holder::new(&OwnerKey::Pod("u1".into()), "eth0", None, "c1");
    /// let held = |pool: &str, address: &str| HeldAddress {
    ///     pool: pool.into(), address: address.parse().unwrap(), holder: holder.clone(),
    /// };
    /// let endpoint = EndpointSpec {
    ///     uid: "u1".into(),
    ///     ips: vec![EndpointInterface {
    ///         interface: "eth0".into(),
    ///         ipv4_pool: Some("a4".into()), ipv4: Some("10.1.0.15/24".into()),
    ///         ipv6_pool: Some("a6".into()), ipv6: Some("fd00:1::10/64".into()),
    ///         ..Default::default()
    ///     }],
    ///     ..Default::default()
    /// };
    /// // Both halves held: committed. One half alone: not.
    /// assert_eq!(endpoint.commits(&[held("a4", "10.1.0.15"), held("a6", "fd00:1::10")]).len(), 2);
    /// assert!(endpoint.commits(&[held("a4", "10.1.0.15")]).is_empty());
    /// ```
    pub fn commits(&self, held: &[HeldAddress]) -> BTreeSet<(String, IpAddr)> {
        let mut by_interface: BTreeMap<String, BTreeSet<(String, IpAddr)>> = BTreeMap::new();
        for record in held {
            by_interface
                .entry(record.holder.interface())
                .or_default()
                .insert((record.pool.clone(), record.address));
        }
        by_interface
            .into_iter()
            .filter(|(interface, records)| {
                self.ips.iter().any(|entry| {
                    entry.interface == *interface && entry.addresses().collect::<BTreeSet<_>>() == *records
                })
            })
            .flat_map(|(_, records)| records)
            .collect()
    }

    /// Drops the entries of interfaces the pod no longer holds whole: an interface's
    /// addresses are allocated and released together, so an entry with an address `held`
    /// does not list (released by a DEL, perhaps one that did not get to write the endpoint)
    /// commits nothing any more. Returns whether anything went.
    ///
    /// ```
    /// use spiderpool_core::{EndpointInterface, EndpointSpec};
    /// let mut endpoint = EndpointSpec {
    ///     ips: vec![EndpointInterface {
    ///         interface: "eth0".into(),
    ///         ipv4_pool: Some("a4".into()), ipv4: Some("10.1.0.15/24".into()),
    ///         ipv6_pool: Some("a6".into()), ipv6: Some("fd00:1::10/64".into()),
    ///         ..Default::default()
    ///     }],
    ///     ..Default::default()
    /// };
    /// // A DEL released the IPv4 address: the interface's entry goes.
    /// let held = [("a6".to_string(), "fd00:1::10".parse().unwrap())].into();
    /// assert!(endpoint.retain_held(&held));
    /// assert!(endpoint.ips.is_empty());
    /// ```
    pub fn retain_held(&mut self, held: &BTreeSet<(String, IpAddr)>) -> bool {
        let before = self.ips.len();
        self.ips.retain(|entry| {
            let mut listed = entry.addresses().peekable();
            listed.peek().is_some() && listed.all(|pair| held.contains(&pair))
        });
        self.ips.len() != before
    }
}

/// Whether a StatefulSet brings `pod` back under its name: the set `set` exists with
/// `replicas` (`None` when it does not exist) and the pod's ordinal is below that.
///
/// ```
/// use spiderpool_core::{PodRef, statefulset_keeps};
/// let pod = PodRef { namespace: "default".into(), name: "db-1".into() };
/// assert!(statefulset_keeps(&pod, "db", Some(2)));
/// assert!(!statefulset_keeps(&pod, "db", Some(1)));
/// assert!(!statefulset_keeps(&pod, "db", None));
/// ```
pub fn statefulset_keeps(pod: &PodRef, set: &str, replicas: Option<u32>) -> bool {
    let Some(replicas) = replicas else {
        return false;
    };
    pod.name
        .strip_prefix(set)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|ordinal| ordinal.parse::<u32>().ok())
        .is_some_and(|ordinal| ordinal < replicas)
}
