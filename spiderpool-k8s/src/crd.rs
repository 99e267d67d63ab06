//! The custom resources of `spiderpool.spidernet.io/v2beta1`, as Kubernetes serves them.
//!
//! The specs of pools and reserved IPs are the core's wire types ([`spiderpool_core::IPPoolSpec`],
//! [`spiderpool_core::ReservedIPSpec`]), so what the API server stores is exactly what the
//! engine validates: one definition per field. [`crds`] renders the CustomResourceDefinitions
//! that `deploy/crds/` holds.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::core::{CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use spiderpool_core::EndpointInterface;
use spiderpool_core::{BlockSpec, EndpointSpec, IPPoolSpec, IPPoolStatus, ObjectMeta, ReservedIPSpec};

/// The API group of every resource here.
pub const GROUP: &str = "spiderpool.spidernet.io";
/// Their version.
pub const VERSION: &str = "v2beta1";

/// The spec of a [`SpiderIPPool`]: the core's [`IPPoolSpec`], field for field.
///
/// The derive also generates [`SpiderIPPool`], the cluster-scoped object with its status
/// subresource and the printer columns of `kubectl get spiderippool`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderIPPool",
    shortname = "sp",
    status = "IPPoolStatus",
    printcolumn = r#"{"name": "VERSION", "type": "string", "jsonPath": ".spec.ipVersion"}"#,
    printcolumn = r#"{"name": "SUBNET", "type": "string", "jsonPath": ".spec.subnet"}"#,
    printcolumn = r#"{"name": "ALLOCATED-IP-COUNT", "type": "integer", "jsonPath": ".status.allocatedIPCount"}"#,
    printcolumn = r#"{"name": "TOTAL-IP-COUNT", "type": "integer", "jsonPath": ".status.totalIPCount"}"#,
    printcolumn = r#"{"name": "DEFAULT", "type": "boolean", "jsonPath": ".spec.default"}"#,
    printcolumn = r#"{"name": "DISABLE", "type": "boolean", "jsonPath": ".spec.disable"}"#
)]
#[serde(transparent)]
#[schemars(
    transparent,
    description = "Addresses of one subnet, and the nodes, namespaces, pods and networks they serve."
)]
pub struct SpiderIPPoolSpec(pub IPPoolSpec);

/// The spec of a [`SpiderReservedIP`]: the core's [`ReservedIPSpec`].
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderReservedIP",
    shortname = "sr",
    printcolumn = r#"{"name": "VERSION", "type": "string", "jsonPath": ".spec.ipVersion"}"#
)]
#[serde(transparent)]
#[schemars(transparent, description = "Addresses no pool hands out.")]
pub struct SpiderReservedIPSpec(pub ReservedIPSpec);

/// The allocations of one pod, in its namespace under its name: the core's [`EndpointSpec`],
/// the commit record of the pod's allocations (see `docs/decisions/0008-cluster-round.md`).
///
/// The derive also generates [`SpiderEndpoint`], the namespaced object, with the printer
/// columns of `kubectl get spiderendpoint`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderEndpoint",
    namespaced,
    shortname = "se",
    printcolumn = r#"{"name": "INTERFACE", "type": "string", "jsonPath": ".spec.ips[0].interface"}"#,
    printcolumn = r#"{"name": "IPV4POOL", "type": "string", "jsonPath": ".spec.ips[0].ipv4Pool"}"#,
    printcolumn = r#"{"name": "IPV4", "type": "string", "jsonPath": ".spec.ips[0].ipv4"}"#,
    printcolumn = r#"{"name": "IPV6POOL", "type": "string", "jsonPath": ".spec.ips[0].ipv6Pool"}"#,
    printcolumn = r#"{"name": "IPV6", "type": "string", "jsonPath": ".spec.ips[0].ipv6"}"#,
    printcolumn = r#"{"name": "NODE", "type": "string", "jsonPath": ".spec.node"}"#
)]
#[serde(transparent)]
#[schemars(
    transparent,
    description = "The addresses one pod holds, its node and its controller: the commit record of its allocations."
)]
pub struct SpiderEndpointSpec(pub EndpointSpec);

/// A block of a pool's addresses and the node it is affine to, holding the records of its
/// addresses: the core's [`BlockSpec`] (see `docs/decisions/0011-address-blocks.md`).
///
/// The derive also generates [`SpiderIPBlock`], the cluster-scoped object with the printer
/// columns of `kubectl get spideripblock`. `spec.pool` and `spec.node` are selectable fields,
/// so that a node lists its blocks and a pool's blocks are listed by field selector.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderIPBlock",
    shortname = "sib",
    selectable = ".spec.pool",
    selectable = ".spec.node",
    printcolumn = r#"{"name": "POOL", "type": "string", "jsonPath": ".spec.pool"}"#,
    printcolumn = r#"{"name": "NODE", "type": "string", "jsonPath": ".spec.node"}"#,
    printcolumn = r#"{"name": "RANGE", "type": "string", "jsonPath": ".spec.cidr"}"#,
    printcolumn = r#"{"name": "ALLOCATED", "type": "integer", "jsonPath": ".spec.allocatedIPCount"}"#
)]
#[serde(transparent)]
#[schemars(
    transparent,
    description = "A block of a pool's addresses, the node it is affine to, and who holds its addresses."
)]
pub struct SpiderIPBlockSpec(pub BlockSpec);

/// Annotations of a block's object that its metadata alone tells a pool's index by: its
/// node and how many addresses it holds (a list of metadata carries no spec).
pub const BLOCK_NODE_ANNOTATION: &str = "spiderpool.spidernet.io/node";
/// See [`BLOCK_NODE_ANNOTATION`].
pub const BLOCK_ALLOCATED_ANNOTATION: &str = "spiderpool.spidernet.io/allocated-ip-count";
/// See [`BLOCK_NODE_ANNOTATION`].
pub const BLOCK_CIDR_ANNOTATION: &str = "spiderpool.spidernet.io/cidr";
/// See [`BLOCK_NODE_ANNOTATION`].
pub const BLOCK_POOL_UID_ANNOTATION: &str = "spiderpool.spidernet.io/pool-uid";

impl SpiderIPBlock {
    /// The object `name` with `spec`, its index annotations set.
    pub fn of(name: &str, spec: &BlockSpec) -> SpiderIPBlock {
        let mut block = SpiderIPBlock::new(name, SpiderIPBlockSpec(spec.clone()));
        block.metadata.annotations = Some(
            [
                (BLOCK_NODE_ANNOTATION.to_owned(), spec.node.clone()),
                (BLOCK_CIDR_ANNOTATION.to_owned(), spec.cidr.clone()),
                (BLOCK_POOL_UID_ANNOTATION.to_owned(), spec.pool_uid.clone()),
                (
                    BLOCK_ALLOCATED_ANNOTATION.to_owned(),
                    spec.allocated_ip_count.to_string(),
                ),
            ]
            .into(),
        );
        block
    }

    /// The block as a pool's index lists it, from its metadata alone; `None` when its
    /// annotations are missing or unreadable (the block is then read whole).
    pub fn indexed(metadata: &kube::core::ObjectMeta) -> Option<spiderpool_core::IndexedBlock> {
        let annotations = metadata.annotations.as_ref()?;
        let cidr: spiderpool_core::Subnet = annotations.get(BLOCK_CIDR_ANNOTATION)?.parse().ok()?;
        Some(spiderpool_core::IndexedBlock {
            name: metadata.name.clone()?,
            start: cidr.network(),
            node: annotations.get(BLOCK_NODE_ANNOTATION)?.clone(),
            allocated: annotations.get(BLOCK_ALLOCATED_ANNOTATION)?.parse().ok()?,
            pool_uid: annotations
                .get(BLOCK_POOL_UID_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// The block as the core reads it.
    pub fn to_core(&self) -> Result<spiderpool_core::Block, spiderpool_core::BlockStateError> {
        spiderpool_core::Block::read(
            self.metadata.name.as_deref().unwrap_or_default(),
            self.metadata.resource_version.clone().unwrap_or_default(),
            self.spec.0.clone(),
        )
    }
}

/// A Multus network for Spiderpool's IPAM: the controller renders and owns the
/// `NetworkAttachmentDefinition` of the same namespace and name.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderMultusConfig",
    namespaced,
    shortname = "smc"
)]
#[serde(rename_all = "camelCase")]
pub struct SpiderMultusConfigSpec {
    /// The main CNI plugin: `macvlan`, `ipvlan`, `sriov` or `custom`.
    #[serde(default = "default_cni_type")]
    #[schemars(extend("enum" = ["macvlan", "ipvlan", "sriov", "custom"]))]
    pub cni_type: String,
    /// Settings of `cniType: macvlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<LinkConfig>,
    /// Settings of `cniType: ipvlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvlan: Option<LinkConfig>,
    /// Settings of `cniType: sriov`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<SriovConfig>,
    /// The whole CNI configuration (JSON text) of `cniType: custom`.
    #[serde(default, rename = "customCNI", skip_serializing_if = "Option::is_none")]
    pub custom_cni: Option<String>,
    /// Whether Spiderpool's `coordinator` plugin is chained after the main plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_coordinator: Option<bool>,
    /// Settings of the coordinator, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub coordinator: Option<Value>,
    /// Whether the network has no IPAM at all.
    #[serde(default, rename = "disableIPAM", skip_serializing_if = "Option::is_none")]
    pub disable_ipam: Option<bool>,
}

/// An object whose fields the API server keeps as written.
fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn default_cni_type() -> String {
    "custom".into()
}

/// The settings of a macvlan or ipvlan network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkConfig {
    /// The node's interface the pods' interfaces sit on.
    #[serde(default)]
    pub master: Vec<String>,
    /// A VLAN tag; 0 or absent for none.
    #[serde(default, rename = "vlanID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i32>,
    /// The default pools of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<NetworkPools>,
}

/// The settings of an SR-IOV network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SriovConfig {
    /// The device plugin resource of the virtual functions.
    #[serde(default)]
    pub resource_name: String,
    /// A VLAN tag; 0 or absent for none.
    #[serde(default, rename = "vlanID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i32>,
    /// The default pools of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<NetworkPools>,
}

/// The default pools of a network, per family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkPools {
    /// IPv4 pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4: Vec<String>,
    /// IPv6 pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<String>,
}

/// Every CustomResourceDefinition, with the file name it has in `deploy/crds/`.
pub fn crds() -> Vec<(String, CustomResourceDefinition)> {
    fn named<K: CustomResourceExt + Resource<DynamicType = ()>>() -> (String, CustomResourceDefinition) {
        (format!("{GROUP}_{}.yaml", K::plural(&())), K::crd())
    }
    vec![
        named::<SpiderIPPool>(),
        named::<SpiderReservedIP>(),
        named::<SpiderEndpoint>(),
        named::<SpiderIPBlock>(),
        named::<SpiderMultusConfig>(),
    ]
}

/// The text of a CRD file in `deploy/crds/`: a header saying where it comes from, then YAML.
pub fn crd_manifest(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_yaml_ng::to_string(crd).expect("a CRD serializes to YAML");
    format!(
        "# Generated from spiderpool-k8s/src/crd.rs; do not edit.\n\
         # Regenerate: SPIDERPOOL_UPDATE_CRDS=1 cargo test -p spiderpool-k8s --test crds\n{yaml}"
    )
}

/// The core's metadata of an object read from the API server.
fn core_meta(metadata: &kube::core::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: metadata.name.clone().unwrap_or_default(),
        labels: metadata.labels.clone().unwrap_or_default(),
        annotations: metadata.annotations.clone().unwrap_or_default(),
        deletion_timestamp: metadata
            .deletion_timestamp
            .as_ref()
            .map(|time| time.0.to_string()),
        resource_version: metadata.resource_version.clone(),
        uid: metadata.uid.clone(),
    }
}

impl SpiderIPPool {
    /// The pool as the engine reads it, with its version and status.
    pub fn to_core(&self) -> spiderpool_core::SpiderIPPool {
        spiderpool_core::SpiderIPPool {
            api_version: spiderpool_core::API_VERSION.into(),
            kind: "SpiderIPPool".into(),
            metadata: core_meta(&self.metadata),
            spec: self.spec.0.clone(),
            status: self.status.clone(),
        }
    }
}

impl SpiderReservedIP {
    /// The reserved addresses as the engine reads them.
    pub fn to_core(&self) -> spiderpool_core::SpiderReservedIP {
        spiderpool_core::SpiderReservedIP {
            api_version: spiderpool_core::API_VERSION.into(),
            kind: "SpiderReservedIP".into(),
            metadata: core_meta(&self.metadata),
            spec: self.spec.0.clone(),
        }
    }
}
