//! The operations a sequence is made of, and the requests they turn into.

use arbitrary::Arbitrary;
use serde_json::{Value, json};
use spiderpool_core::annotations::{NAMESPACE_DEFAULT_IPV4, NAMESPACE_DEFAULT_IPV6, POD_IPPOOL, POD_IPPOOLS};
use spiderpool_core::{Attachment, IpFamilies, OwnerKey, Request};

use crate::scenario::{NODES, POD_SLOTS, POD_SLOTS_WITH_UID, REF_NAMES, node_labels};

/// Longest candidate list a request carries; longer generated lists are cut.
pub const MAX_LIST: usize = 4;
/// Most entries of an `ipam.spidernet.io/ippools` annotation; longer generated ones are cut.
pub const MAX_IPPOOLS_ENTRIES: usize = 3;

/// One step of an operation sequence.
#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub enum Op {
    /// Ask for addresses.
    Allocate(Ask),
    /// Release what an owner holds, on one interface or on all.
    Release {
        /// The owner.
        who: Who,
        /// The interface; `None` releases every interface.
        interface: Option<Nic>,
    },
    /// Ask again exactly as `back + 1` asks ago (modulo the number of asks so far); nothing
    /// when nothing was asked yet.
    Repeat {
        /// How far back.
        back: u8,
    },
}

/// Who asks: a pod slot (taken modulo [`POD_SLOTS`]) and which of its two sandboxes.
///
/// Slots with a UID are identified by it, so both sandboxes are the same owner; bare
/// containers are identified by their container ID, so each sandbox is an owner of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Arbitrary)]
pub struct Who {
    /// The pod slot.
    pub slot: u8,
    /// Whether the second sandbox (container ID) of the slot asks.
    pub sandbox: bool,
}

impl Who {
    /// The slot within range.
    pub fn normalized(self) -> Who {
        Who {
            slot: self.slot % POD_SLOTS,
            sandbox: self.sandbox,
        }
    }

    /// The container ID of the sandbox.
    pub fn container_id(self) -> String {
        let Who { slot, sandbox } = self.normalized();
        if sandbox {
            format!("ctr-{slot}-b")
        } else {
            format!("ctr-{slot}")
        }
    }

    /// The pod UID, for slots that have one.
    pub fn uid(self) -> Option<String> {
        let slot = self.normalized().slot;
        (slot < POD_SLOTS_WITH_UID).then(|| format!("uid-{slot}"))
    }

    /// The idempotency key the core must use: the UID when there is one, else the container ID.
    pub fn owner(self) -> OwnerKey {
        match self.uid() {
            Some(uid) => OwnerKey::Pod(uid),
            None => OwnerKey::Container(self.container_id()),
        }
    }
}

/// An interface of the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Arbitrary)]
pub enum Nic {
    /// `eth0`.
    Eth0,
    /// `net1`.
    Net1,
}

impl Nic {
    /// The interface name.
    pub fn name(self) -> &'static str {
        match self {
            Nic::Eth0 => "eth0",
            Nic::Net1 => "net1",
        }
    }
}

/// A name in a candidate list: [`REF_NAMES`]`[index % 13]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Arbitrary)]
pub struct PoolRef(pub u8);

impl PoolRef {
    /// The name or glob written.
    pub fn name(self) -> &'static str {
        REF_NAMES[usize::from(self.0) % REF_NAMES.len()]
    }
}

/// Candidate lists per family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Arbitrary)]
pub struct Lists {
    /// IPv4 candidates, in order.
    pub ipv4: Vec<PoolRef>,
    /// IPv6 candidates, in order.
    pub ipv6: Vec<PoolRef>,
}

impl Lists {
    /// The lists cut to [`MAX_LIST`] names.
    pub fn normalized(&self) -> Lists {
        Lists {
            ipv4: self.ipv4.iter().take(MAX_LIST).copied().collect(),
            ipv6: self.ipv6.iter().take(MAX_LIST).copied().collect(),
        }
    }

    /// The IPv4 names.
    pub fn ipv4_names(&self) -> Vec<String> {
        self.ipv4.iter().map(|r| r.name().to_string()).collect()
    }

    /// The IPv6 names.
    pub fn ipv6_names(&self) -> Vec<String> {
        self.ipv6.iter().map(|r| r.name().to_string()).collect()
    }

    /// Whether both lists are empty.
    pub fn is_empty(&self) -> bool {
        self.ipv4.is_empty() && self.ipv6.is_empty()
    }
}

/// The `ipam.spidernet.io/ippool` annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Arbitrary)]
pub struct Ippool {
    /// The `interface` field, when written.
    pub interface: Option<Nic>,
    /// The pools.
    pub lists: Lists,
}

/// One entry of the `ipam.spidernet.io/ippools` annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Arbitrary)]
pub struct NicPools {
    /// The `interface` field, when written.
    pub interface: Option<Nic>,
    /// The pools.
    pub lists: Lists,
    /// `cleangateway`.
    pub clean_gateway: bool,
}

/// An annotation key whose value a request spoils.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Arbitrary)]
pub enum AnnotationKey {
    /// Pod `ipam.spidernet.io/ippool`.
    Ippool,
    /// Pod `ipam.spidernet.io/ippools`.
    Ippools,
    /// Namespace `ipam.spidernet.io/default-ipv4-ippool`.
    NamespaceIpv4,
    /// Namespace `ipam.spidernet.io/default-ipv6-ippool`.
    NamespaceIpv6,
}

/// Values that every annotation naming pools refuses.
pub const MALFORMED_VALUES: [&str; 6] = [
    "not json",
    r#"{"ipv4": "v4-shared"}"#,
    r#"[{"interface": "eth0"}, {"ipv4": ["v4-shared"]}]"#,
    r#"["v4-shared", ""]"#,
    r#"[{"interface": "eth0", "ipv4": ["v4-shared"]}, {"interface": "eth0"}]"#,
    r#"{"ipv4": ["v4-shared"], "interface": ""}"#,
];

/// An annotation with a value no parser accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Arbitrary)]
pub struct Malformed {
    /// Which annotation.
    pub key: AnnotationKey,
    /// [`MALFORMED_VALUES`]`[value % 6]`.
    pub value: u8,
}

/// Which families a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Arbitrary)]
pub enum Families {
    /// As the source lists.
    AsListed,
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
    /// Both.
    DualStack,
}

impl Families {
    /// The core's name for it.
    pub fn to_core(self) -> IpFamilies {
        match self {
            Families::AsListed => IpFamilies::AsListed,
            Families::Ipv4 => IpFamilies::Ipv4,
            Families::Ipv6 => IpFamilies::Ipv6,
            Families::DualStack => IpFamilies::DualStack,
        }
    }
}

/// A request for addresses, with every source of candidates it may carry.
#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub struct Ask {
    /// Who asks.
    pub who: Who,
    /// The node, an index into [`NODES`] modulo its length.
    pub node: u8,
    /// The interface being set up.
    pub interface: Nic,
    /// The families asked for.
    pub families: Families,
    /// Pod annotation `ipam.spidernet.io/ippools`.
    pub ippools: Option<Vec<NicPools>>,
    /// Pod annotation `ipam.spidernet.io/ippool`.
    pub ippool: Option<Ippool>,
    /// Namespace default-pool annotations (both written, possibly as empty lists).
    pub namespace: Option<Lists>,
    /// Network config `default_ipv4_ippool` / `default_ipv6_ippool`.
    pub network: Lists,
    /// An annotation spoiled with a value no parser accepts.
    pub malformed: Option<Malformed>,
    /// The network attachment: none, `kube-system/macvlan-conf` (`true`) or `default/other`.
    pub attachment: Option<bool>,
}

impl Ask {
    /// A request of `who` on `node` for `interface`, naming `ipv4` / `ipv6` in the
    /// `ipam.spidernet.io/ippool` annotation, families as listed.
    pub fn ippool(who: Who, node: u8, interface: Nic, ipv4: &[u8], ipv6: &[u8]) -> Ask {
        Ask {
            who,
            node,
            interface,
            families: Families::AsListed,
            ippools: None,
            ippool: Some(Ippool {
                interface: None,
                lists: Lists {
                    ipv4: ipv4.iter().map(|&i| PoolRef(i)).collect(),
                    ipv6: ipv6.iter().map(|&i| PoolRef(i)).collect(),
                },
            }),
            namespace: None,
            network: Lists::default(),
            malformed: None,
            attachment: None,
        }
    }

    /// The ask with every index within range and every list cut to size, so that the model and
    /// the request read the same values.
    pub fn normalized(&self) -> Ask {
        Ask {
            who: self.who.normalized(),
            node: self.node % NODES.len() as u8,
            interface: self.interface,
            families: self.families,
            ippools: self.ippools.as_ref().map(|entries| {
                entries
                    .iter()
                    .take(MAX_IPPOOLS_ENTRIES)
                    .map(|entry| NicPools {
                        interface: entry.interface,
                        lists: entry.lists.normalized(),
                        clean_gateway: entry.clean_gateway,
                    })
                    .collect()
            }),
            ippool: self.ippool.as_ref().map(|ippool| Ippool {
                interface: ippool.interface,
                lists: ippool.lists.normalized(),
            }),
            namespace: self.namespace.as_ref().map(Lists::normalized),
            network: self.network.normalized(),
            malformed: self.malformed.map(|m| Malformed {
                key: m.key,
                value: m.value % MALFORMED_VALUES.len() as u8,
            }),
            attachment: self.attachment,
        }
    }

    /// The attachment as `namespace/name`.
    pub fn attachment_name(&self) -> Option<&'static str> {
        self.attachment.map(|known| {
            if known {
                "kube-system/macvlan-conf"
            } else {
                "default/other"
            }
        })
    }

    /// The pod's namespace: `default` for pods with a UID, none for bare containers.
    pub fn namespace_name(&self) -> &'static str {
        if self.who.uid().is_some() { "default" } else { "" }
    }

    /// The pod's `app` label: `web` for even slots, `db` for odd ones; bare containers have
    /// none.
    pub fn app_label(&self) -> Option<&'static str> {
        let who = self.who.normalized();
        who.uid()
            .map(|_| if who.slot.is_multiple_of(2) { "web" } else { "db" })
    }

    /// The node index, within range.
    pub fn node_index(&self) -> usize {
        usize::from(self.node) % NODES.len()
    }

    /// The core request this ask stands for.
    pub fn request(&self) -> Request {
        let ask = self.normalized();
        let mut request = Request::new(ask.who.container_id(), ask.interface.name());
        request.pod.uid = ask.who.uid();
        if request.pod.uid.is_some() {
            request.pod.namespace = ask.namespace_name().into();
            request.pod.name = format!("pod-{}", ask.who.slot);
        }
        if let Some(app) = ask.app_label() {
            request.pod.labels.insert("app".into(), app.into());
        }
        request.network.attachment = ask.attachment_name().map(|text| {
            let (namespace, name) = text.split_once('/').expect("namespace/name");
            Attachment {
                namespace: namespace.into(),
                name: name.into(),
            }
        });
        request.node.name = NODES[ask.node_index()].into();
        request.node.labels = node_labels(ask.node_index());
        request.families = ask.families.to_core();
        let lists_json = |lists: &Lists, object: &mut serde_json::Map<String, Value>| {
            object.insert("ipv4".into(), json!(lists.ipv4_names()));
            object.insert("ipv6".into(), json!(lists.ipv6_names()));
        };
        if let Some(entries) = &ask.ippools {
            let value: Vec<Value> = entries
                .iter()
                .map(|entry| {
                    let mut object = serde_json::Map::new();
                    if let Some(nic) = entry.interface {
                        object.insert("interface".into(), json!(nic.name()));
                    }
                    lists_json(&entry.lists, &mut object);
                    object.insert("cleangateway".into(), json!(entry.clean_gateway));
                    Value::Object(object)
                })
                .collect();
            request
                .pod
                .annotations
                .insert(POD_IPPOOLS.into(), Value::Array(value).to_string());
        }
        if let Some(ippool) = &ask.ippool {
            let mut object = serde_json::Map::new();
            if let Some(nic) = ippool.interface {
                object.insert("interface".into(), json!(nic.name()));
            }
            lists_json(&ippool.lists, &mut object);
            request
                .pod
                .annotations
                .insert(POD_IPPOOL.into(), Value::Object(object).to_string());
        }
        if let Some(lists) = &ask.namespace {
            let annotations = &mut request.namespace.annotations;
            annotations.insert(
                NAMESPACE_DEFAULT_IPV4.into(),
                json!(lists.ipv4_names()).to_string(),
            );
            annotations.insert(
                NAMESPACE_DEFAULT_IPV6.into(),
                json!(lists.ipv6_names()).to_string(),
            );
        }
        request.network.default_ipv4 = ask.network.ipv4_names();
        request.network.default_ipv6 = ask.network.ipv6_names();
        if let Some(malformed) = ask.malformed {
            let value = MALFORMED_VALUES[usize::from(malformed.value) % MALFORMED_VALUES.len()].to_string();
            match malformed.key {
                AnnotationKey::Ippool => request.pod.annotations.insert(POD_IPPOOL.into(), value),
                AnnotationKey::Ippools => request.pod.annotations.insert(POD_IPPOOLS.into(), value),
                AnnotationKey::NamespaceIpv4 => request
                    .namespace
                    .annotations
                    .insert(NAMESPACE_DEFAULT_IPV4.into(), value),
                AnnotationKey::NamespaceIpv6 => request
                    .namespace
                    .annotations
                    .insert(NAMESPACE_DEFAULT_IPV6.into(), value),
            };
        }
        request
    }
}
