//! The Kubernetes objects of `spiderpool.spidernet.io/v2beta1`, exactly as users write them,
//! and the parser for YAML or JSON text holding them.
//!
//! These are wire types: addresses and ranges stay text here, so that validation
//! ([`crate::Pool::from_object`]) can report every problem at once, with its field path.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::selector::{LabelSelector, Labels};

/// The API group and version every object here belongs to.
pub const API_VERSION: &str = "spiderpool.spidernet.io/v2beta1";

/// The part of Kubernetes `ObjectMeta` the IPAM reads. Other metadata is accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name.
    #[serde(default)]
    pub name: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set when deletion was requested: the object is terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// The version a compare-and-swap write must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// The object's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A `SpiderIPPool`: addresses of one subnet, and who may use them.
///
/// The YAML of the network-zones scenario is accepted unchanged:
///
/// ```
/// use spiderpool_core::SpiderIPPool;
/// let pool: SpiderIPPool = serde_yaml_ng::from_str(r#"
/// apiVersion: spiderpool.spidernet.io/v2beta1
/// kind: SpiderIPPool
/// metadata:
///   name: test-ippool-6
/// spec:
///   subnet: 10.6.0.0/16
///   ips:
///   - 10.6.168.60-10.6.168.69
///   gateway: 10.6.0.1
///   nodeName:
///   - controller-node-1
/// "#).unwrap();
/// assert_eq!(pool.spec.node_name, ["controller-node-1"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpiderIPPool {
    /// `spiderpool.spidernet.io/v2beta1`.
    pub api_version: String,
    /// `SpiderIPPool`.
    pub kind: String,
    /// Name and metadata.
    pub metadata: ObjectMeta,
    /// What the pool offers and to whom.
    pub spec: IPPoolSpec,
    /// Allocation status, when read back from a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<IPPoolStatus>,
}

/// The `spec` of a [`SpiderIPPool`], field for field as in Spiderpool's CRD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = require_subnet))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPPoolSpec {
    /// 4 or 6; inferred from `subnet` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<i64>,
    /// The subnet in canonical CIDR form, e.g. `10.6.0.0/16`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("format" = "cidr")))]
    pub subnet: String,
    /// Ranges of addresses the pool hands out: `a` or `a-b`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Ranges inside `ips` that are never handed out.
    #[serde(default, rename = "excludeIPs", skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
    /// The gateway given to pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Deprecated in Spiderpool; accepted and range-checked, otherwise unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
    /// Routes given to pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Pods the pool serves, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<LabelSelector>,
    /// Namespaces the pool serves, by label (ignored when `namespaceName` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_affinity: Option<LabelSelector>,
    /// Namespaces the pool serves, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_name: Vec<String>,
    /// Nodes the pool serves, by label (ignored when `nodeName` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<LabelSelector>,
    /// Nodes the pool serves, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_name: Vec<String>,
    /// Network attachments (`name` or `namespace/name`) the pool serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multus_name: Vec<String>,
    /// Whether the pool is a cluster default, used when nothing names a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub default: Option<bool>,
    /// Whether allocation from the pool is switched off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub disable: Option<bool>,
    /// The prefix length of the blocks a node claims in a cluster (as Calico's IPPool
    /// `blockSize`): 22 to 32 for IPv4, 118 to 128 for IPv6; 26 and 122 (64 addresses) when
    /// absent. Not in Spiderpool's spec; fixed once the pool exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i64>,
}

/// In a CustomResourceDefinition `subnet` is required, without a default: the field is
/// `serde(default)` only so that the engine reports a missing subnet with the other violations.
#[cfg(feature = "schema")]
fn require_subnet(schema: &mut schemars::Schema) {
    if let Some(subnet) = schema
        .get_mut("properties")
        .and_then(|properties| properties.get_mut("subnet"))
        .and_then(|subnet| subnet.as_object_mut())
    {
        subnet.remove("default");
    }
    schema.insert("required".into(), serde_json::json!(["subnet"]));
}

/// A route handed to pods: destination CIDR and next hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination, in CIDR notation.
    #[cfg_attr(feature = "schema", schemars(extend("format" = "cidr")))]
    pub dst: String,
    /// Next hop, inside the pool's subnet.
    pub gw: String,
}

/// The `status` of a [`SpiderIPPool`], as Spiderpool writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// JSON text: address to `{"pod": "ns/name", "podUid": uid, ...}`. Absent when empty.
    #[serde(default, rename = "allocatedIPs", skip_serializing_if = "Option::is_none")]
    pub allocated_ips: Option<String>,
    /// Number of addresses allocated.
    #[serde(default, rename = "allocatedIPCount", skip_serializing_if = "Option::is_none")]
    pub allocated_ip_count: Option<i64>,
    /// Number of addresses in `ips` minus `excludeIPs`, capped at `i64::MAX`.
    #[serde(default, rename = "totalIPCount", skip_serializing_if = "Option::is_none")]
    pub total_ip_count: Option<i64>,
    /// The address most recently allocated: the next allocation searches after it, so that a
    /// just-released address is not handed out again at once. Not in Spiderpool's status.
    #[serde(default, rename = "lastAllocatedIP", skip_serializing_if = "Option::is_none")]
    pub last_allocated_ip: Option<String>,
}

/// A `SpiderReservedIP`: addresses no pool may hand out, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpiderReservedIP {
    /// `spiderpool.spidernet.io/v2beta1`.
    pub api_version: String,
    /// `SpiderReservedIP`.
    pub kind: String,
    /// Name and metadata.
    pub metadata: ObjectMeta,
    /// The reserved addresses.
    pub spec: ReservedIPSpec,
}

/// The `spec` of a [`SpiderReservedIP`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservedIPSpec {
    /// 4 or 6; inferred from the first range when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<i64>,
    /// Ranges of reserved addresses: `a` or `a-b`.
    #[serde(default)]
    pub ips: Vec<String>,
}

/// One object read from YAML or JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A `SpiderIPPool`.
    IpPool(Box<SpiderIPPool>),
    /// A `SpiderReservedIP`.
    ReservedIp(SpiderReservedIP),
    /// An object of another kind (for example a `SpiderMultusConfig` kept in the same file);
    /// the IPAM does not read it.
    Other {
        /// Its `apiVersion`.
        api_version: String,
        /// Its `kind`.
        kind: String,
        /// Its `metadata.name`, when present.
        name: Option<String>,
    },
}

/// An object with its position in the text (1 for the first document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Position of the document in the text, counting from 1.
    pub index: usize,
    /// What the document holds.
    pub resource: Resource,
}

/// A document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {index}{}: {problem}", describe(kind, name.as_deref()))]
pub struct DocumentError {
    /// Position of the document in the text, counting from 1.
    pub index: usize,
    /// The kind, when it could be read.
    pub kind: String,
    /// The object's name, when it could be read.
    pub name: Option<String>,
    /// What is wrong.
    pub problem: DocumentProblem,
}

/// " (SpiderIPPool name)", " (name)", " (Kind)" or nothing, as much as is known.
fn describe(kind: &str, name: Option<&str>) -> String {
    match (kind.is_empty(), name) {
        (false, Some(name)) => format!(" ({kind} {name})"),
        (true, Some(name)) => format!(" ({name})"),
        (false, None) => format!(" ({kind})"),
        (true, None) => String::new(),
    }
}

/// What is wrong with a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentProblem {
    /// The text is not valid YAML or JSON.
    #[error("not valid YAML/JSON: {0}")]
    Syntax(String),
    /// The document is not a mapping.
    #[error("expected an object with apiVersion, kind, metadata and spec")]
    NotAnObject,
    /// `kind` is missing.
    #[error("kind: missing; write kind: SpiderIPPool or kind: SpiderReservedIP")]
    MissingKind,
    /// A Spiderpool kind at an API version this IPAM does not read.
    #[error("apiVersion: {found:?} is not supported for {kind}; write apiVersion: {API_VERSION}")]
    UnsupportedApiVersion {
        /// The kind.
        kind: String,
        /// The apiVersion written.
        found: String,
    },
    /// A field has the wrong type, an unknown name or is missing.
    #[error("{path}: {message}")]
    Field {
        /// The field path, for example `spec.ips[0]`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Every document that could not be read, in order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct DocumentErrors(pub Vec<DocumentError>);

/// Reads every object of a YAML text (several documents separated by `---`) or a JSON text.
///
/// Empty documents are skipped; documents of kinds other than `SpiderIPPool` and
/// `SpiderReservedIP` come back as [`Resource::Other`]. When any document is malformed, every
/// malformed document is reported and none is returned.
///
/// ```
/// use spiderpool_core::{parse_documents, Resource};
/// let docs = parse_documents("
/// apiVersion: spiderpool.spidernet.io/v2beta1
/// kind: SpiderIPPool
/// metadata: {name: a}
/// spec: {subnet: 10.6.0.0/16, ips: [10.6.168.60-10.6.168.69]}
/// ---
/// apiVersion: spiderpool.spidernet.io/v2beta1
/// kind: SpiderIPPool
/// metadata: {name: b}
/// spec: {subnet: 10.7.0.0/16, ipz: [10.7.168.60]}
/// ").unwrap_err();
/// assert_eq!(
///     docs.to_string(),
///     "document 2 (SpiderIPPool b): spec.ipz: unknown field `ipz`, expected one of `ipVersion`, \
///      `subnet`, `ips`, `excludeIPs`, `gateway`, `vlan`, `routes`, `podAffinity`, \
///      `namespaceAffinity`, `namespaceName`, `nodeAffinity`, `nodeName`, `multusName`, \
///      `default`, `disable`, `blockSize`"
/// );
/// ```
pub fn parse_documents(text: &str) -> Result<Vec<Document>, DocumentErrors> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (position, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = position + 1;
        match serde_json::Value::deserialize(document) {
            Ok(serde_json::Value::Null) => {}
            Ok(value) => match resource_from_value(value) {
                Ok(resource) => documents.push(Document { index, resource }),
                Err((kind, name, problem)) => errors.push(DocumentError {
                    index,
                    kind,
                    name,
                    problem,
                }),
            },
            Err(err) => {
                errors.push(DocumentError {
                    index,
                    kind: String::new(),
                    name: None,
                    problem: DocumentProblem::Syntax(err.to_string()),
                });
                // After a syntax error the parser cannot find later documents reliably.
                break;
            }
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(DocumentErrors(errors))
    }
}

/// Reads one object from a JSON value, such as a pool written inline in a network config.
pub fn parse_resource(value: serde_json::Value) -> Result<Resource, DocumentError> {
    resource_from_value(value).map_err(|(kind, name, problem)| DocumentError {
        index: 1,
        kind,
        name,
        problem,
    })
}

type Failure = (String, Option<String>, DocumentProblem);

fn resource_from_value(value: serde_json::Value) -> Result<Resource, Failure> {
    let serde_json::Value::Object(object) = &value else {
        return Err((String::new(), None, DocumentProblem::NotAnObject));
    };
    let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let name = object
        .get("metadata")
        .and_then(|meta| meta.get("name"))
        .and_then(|name| name.as_str())
        .map(str::to_owned);
    let kind = text("kind").ok_or_else(|| (String::new(), name.clone(), DocumentProblem::MissingKind))?;
    let api_version = text("apiVersion").unwrap_or_default();
    let fail = |problem| (kind.clone(), name.clone(), problem);
    let is_ours = matches!(kind.as_str(), "SpiderIPPool" | "SpiderReservedIP");
    if !is_ours {
        return Ok(Resource::Other {
            api_version,
            kind,
            name,
        });
    }
    if api_version != API_VERSION {
        return Err(fail(DocumentProblem::UnsupportedApiVersion {
            kind: kind.clone(),
            found: api_version,
        }));
    }
    let field_error = |err: serde_path_to_error::Error<serde_json::Error>| {
        fail(DocumentProblem::Field {
            path: err.path().to_string(),
            message: err.inner().to_string(),
        })
    };
    if kind == "SpiderIPPool" {
        let pool: SpiderIPPool = serde_path_to_error::deserialize(value).map_err(field_error)?;
        Ok(Resource::IpPool(Box::new(pool)))
    } else {
        let reserved: SpiderReservedIP = serde_path_to_error::deserialize(value).map_err(field_error)?;
        Ok(Resource::ReservedIp(reserved))
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::IpPool(pool) => write!(f, "SpiderIPPool {}", pool.metadata.name),
            Resource::ReservedIp(reserved) => write!(f, "SpiderReservedIP {}", reserved.metadata.name),
            Resource::Other { kind, name, .. } => {
                write!(f, "{kind} {}", name.as_deref().unwrap_or("(unnamed)"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = crate::scenario::NETWORK_ZONES_YAML;

    #[test]
    fn the_seed_yaml_is_read_unchanged() {
        let docs = parse_documents(SEED).unwrap();
        assert_eq!(docs.len(), 2);
        let Resource::IpPool(pool) = &docs[1].resource else {
            panic!("not a pool")
        };
        assert_eq!(pool.metadata.name, "test-ippool-7");
        assert_eq!(pool.spec.subnet, "10.7.0.0/16");
        assert_eq!(pool.spec.ips, ["10.7.168.60-10.7.168.69"]);
        assert_eq!(pool.spec.gateway.as_deref(), Some("10.7.0.1"));
        assert_eq!(pool.spec.node_name, ["worker-node-1"]);
        assert_eq!(docs[1].index, 2);
    }

    #[test]
    fn json_text_and_other_kinds_are_read_too() {
        let docs = parse_documents(
            r#"{"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
                "metadata": {"name": "r"}, "spec": {"ips": ["10.6.168.61"]}}"#,
        )
        .unwrap();
        assert!(matches!(&docs[0].resource, Resource::ReservedIp(r) if r.spec.ips == ["10.6.168.61"]));
        let docs = parse_documents(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata: {name: macvlan-conf}\n---\n",
        )
        .unwrap();
        assert_eq!(docs[0].resource.to_string(), "SpiderMultusConfig macvlan-conf");
    }

    #[test]
    fn every_bad_document_is_reported_with_its_field() {
        let text = "
apiVersion: spiderpool.spidernet.io/v1
kind: SpiderIPPool
metadata: {name: old}
spec: {subnet: 10.6.0.0/16}
---
kind: SpiderIPPool
apiVersion: spiderpool.spidernet.io/v2beta1
metadata: {name: wrong-type}
spec: {subnet: 10.6.0.0/16, ips: 10.6.0.10}
---
- just a list
---
metadata: {name: kindless}
";
        let errors: Vec<String> = parse_documents(text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "document 1 (SpiderIPPool old): apiVersion: \"spiderpool.spidernet.io/v1\" is not supported for SpiderIPPool; write apiVersion: spiderpool.spidernet.io/v2beta1",
                "document 2 (SpiderIPPool wrong-type): spec.ips: invalid type: string \"10.6.0.10\", expected a sequence",
                "document 3: expected an object with apiVersion, kind, metadata and spec",
                "document 4 (kindless): kind: missing; write kind: SpiderIPPool or kind: SpiderReservedIP",
            ]
        );
    }

    #[test]
    fn yaml_syntax_errors_name_the_document() {
        let err = parse_documents("kind: SpiderIPPool\nspec: [unclosed\n").unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.to_string().starts_with("document 1: not valid YAML/JSON"),
            "{err}"
        );
    }
}
