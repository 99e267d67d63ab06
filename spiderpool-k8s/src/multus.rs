//! Multus networks from `SpiderMultusConfig`s: each one is rendered into the
//! `NetworkAttachmentDefinition` of the same namespace and name, which the controller here
//! keeps in step with it.
//!
//! Rendering ([`render_network`]) is a pure function of the object and the cluster's
//! [`RenderSettings`]; [`reconcile_multus_config`] writes its result with server-side apply, and
//! [`run_multus_controller`] does so for every `SpiderMultusConfig`, on every change of one or of
//! the network attachment it owns.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::crd::{LinkConfig, NetworkPools, SpiderMultusConfig, SpiderMultusConfigSpec, SriovConfig};

/// The field manager of the controller's writes, and the controller's name in events.
pub const FIELD_MANAGER: &str = "spiderpool-controller";

/// The annotation of a network attachment naming the device plugin resource its pods need
/// (SR-IOV virtual functions), read by Multus and the network resources injector.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";

/// The `cniVersion` of rendered configurations unless [`RenderSettings`] says otherwise: the one
/// Spiderpool writes.
pub const DEFAULT_CNI_VERSION: &str = "0.3.1";

/// The spec of a Multus `NetworkAttachmentDefinition`: the CNI configuration of a network.
///
/// The derive generates [`NetworkAttachmentDefinition`], namespaced, in `k8s.cni.cncf.io/v1`.
/// Multus installs its CustomResourceDefinition; it is not one of `deploy/crds/`.
///
/// Multus also accepts an object without `spec` (the configuration then comes from a file on
/// the node), which this type cannot read; the controller here only watches the metadata of
/// network attachments, so such objects elsewhere in the cluster do not disturb it.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    singular = "network-attachment-definition",
    shortname = "nad",
    shortname = "net-attach-def",
    namespaced
)]
pub struct NetworkAttachmentDefinitionSpec {
    /// The CNI configuration, as JSON text: a single plugin or a list (`plugins`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
}

/// What the rendering takes from the cluster rather than from the `SpiderMultusConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    /// The `cniVersion` of every rendered configuration (default [`DEFAULT_CNI_VERSION`]).
    /// `custom` configurations keep their own.
    pub cni_version: String,
    /// The kubeconfig file the `spiderpool` IPAM plugin reads on the nodes, written as
    /// `ipam.kubeconfig`: it selects the plugin's cluster mode, where pools and allocations live
    /// in the API server. `None` leaves it out (the plugin then uses its node-local files).
    pub kubeconfig: Option<PathBuf>,
    /// The socket of the node agent, written as `ipam.agent_socket`: the plugin forwards each
    /// call to the agent, which batches allocations (the deployment's choice, see
    /// `docs/decisions/0007-cluster-mode.md`). Takes precedence over `kubeconfig` in the plugin.
    pub agent_socket: Option<PathBuf>,
}

impl Default for RenderSettings {
    fn default() -> RenderSettings {
        RenderSettings {
            cni_version: DEFAULT_CNI_VERSION.into(),
            kubeconfig: None,
            agent_socket: None,
        }
    }
}

/// A rendered network: the network attachment's configuration and annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedNetwork {
    /// `spec.config` of the network attachment: a CNI configuration list as JSON text (for
    /// `custom`, the text as written).
    pub config: String,
    /// The network attachment's annotations (for `sriov`, [`RESOURCE_NAME_ANNOTATION`]).
    pub annotations: BTreeMap<String, String>,
    /// What the spec asks for that the configuration does not do, one sentence each (the
    /// controller reports them as a warning event).
    pub notes: Vec<String>,
}

/// Why a `SpiderMultusConfig` cannot be rendered: the field at fault and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// `spec.cniType` is none of the supported plugins.
    #[error("spec.cniType: {0:?} is not supported; use macvlan, ipvlan, sriov or custom")]
    UnsupportedCniType(String),
    /// The settings section of the chosen plugin is missing.
    #[error("{field}: missing, and cniType {cni_type} needs it; add it, e.g. {example}")]
    MissingSection {
        /// The section, e.g. `spec.macvlan`.
        field: &'static str,
        /// `spec.cniType`.
        cni_type: &'static str,
        /// An example of the section, as YAML flow.
        example: &'static str,
    },
    /// No master interface.
    #[error("{field}: empty; name the node's interface the pods' interfaces sit on, e.g. [eth0]")]
    NoMaster {
        /// `spec.macvlan.master` or `spec.ipvlan.master`.
        field: &'static str,
    },
    /// More than one master interface: Spiderpool bonds them, which this project does not.
    #[error(
        "{field}: {masters:?} names {} interfaces, and bonding them is not supported; name one \
         interface (to use a bond, create it on every node and name it, e.g. [bond0])",
        masters.len()
    )]
    MultipleMasters {
        /// `spec.macvlan.master` or `spec.ipvlan.master`.
        field: &'static str,
        /// The interfaces listed.
        masters: Vec<String>,
    },
    /// The master interface, or its VLAN sub-interface, cannot be a Linux interface name.
    #[error("{field}: {name:?} is not a valid interface name ({reason}); name an interface of the node")]
    InvalidInterfaceName {
        /// `spec.macvlan.master` or `spec.ipvlan.master`.
        field: &'static str,
        /// The name (with `.VLAN` when a VLAN is set).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A VLAN tag out of range.
    #[error("{field}: {value} is out of range; use 1 to 4094, or 0 for no VLAN")]
    InvalidVlan {
        /// `spec.macvlan.vlanID`, `spec.ipvlan.vlanID` or `spec.sriov.vlanID`.
        field: &'static str,
        /// The tag.
        value: i32,
    },
    /// An SR-IOV network without its device plugin resource.
    #[error(
        "spec.sriov.resourceName: empty; name the SR-IOV device plugin's resource of the virtual \
         functions, e.g. intel.com/sriov_netdevice"
    )]
    MissingResourceName,
    /// `cniType: custom` without `customCNI`.
    #[error(
        "spec.customCNI: missing, and cniType custom needs it; write the whole CNI configuration as JSON text"
    )]
    MissingCustomCni,
    /// `customCNI` is not a JSON object.
    #[error("spec.customCNI: {0}; write the whole CNI configuration as a JSON object")]
    InvalidCustomCni(String),
}

/// Why a network attachment could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MultusError {
    /// The `SpiderMultusConfig` cannot be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The object lacks metadata that only the API server sets (it was not read from it).
    #[error("metadata.{0}: missing; pass the SpiderMultusConfig as read from the API server")]
    MissingMetadata(&'static str),
    /// The `NetworkAttachmentDefinition` resource is not served.
    #[error(
        "the NetworkAttachmentDefinition resource (k8s.cni.cncf.io/v1) is not served; install Multus, \
         whose CustomResourceDefinition it is, then start the controller again"
    )]
    NetworkAttachmentCrdMissing,
    /// The API server could not be reached or answered with an error.
    #[error(
        "kubernetes API: {action}: {source}; check that the API server is reachable and this client may do it"
    )]
    Api {
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// The keys of the `ipam` section: all are ones the `spiderpool` plugin accepts.
mod ipam_keys {
    pub const TYPE: &str = "type";
    pub const KUBECONFIG: &str = "kubeconfig";
    pub const AGENT_SOCKET: &str = "agent_socket";
    pub const DEFAULT_IPV4_IPPOOL: &str = "default_ipv4_ippool";
    pub const DEFAULT_IPV6_IPPOOL: &str = "default_ipv6_ippool";
}

/// Renders the network attachment of the `SpiderMultusConfig` `namespace`/`name`.
///
/// The configuration is a CNI configuration list named `name` with one plugin:
///
/// - `macvlan`: `{"type": "macvlan", "master": M, "mode": "bridge", "ipam": ...}`;
/// - `ipvlan`: `{"type": "ipvlan", "master": M, "mode": "l2", "ipam": ...}`;
/// - `sriov`: `{"type": "sriov", "vlan": N, "ipam": ...}` (`vlan` when `vlanID` is set), and
///   the annotation [`RESOURCE_NAME_ANNOTATION`] with `resourceName`;
/// - `custom`: `customCNI` exactly as written (it must be a JSON object); nothing is added.
///
/// For macvlan and ipvlan, `master` names exactly one interface: Spiderpool bonds several, which
/// is not supported here. A `vlanID` above 0 makes the master the VLAN sub-interface `M.<vlanID>`,
/// which **must already exist on every node**: Spiderpool's `ifacer` plugin, which creates it,
/// is not part of this project.
///
/// The `ipam` section is `{"type": "spiderpool", "kubeconfig": ..., "agent_socket": ...,
/// "default_ipv4_ippool": [...], "default_ipv6_ippool": [...]}`, without the kubeconfig or the
/// socket when the settings have none and without
/// empty pool lists; `disableIPAM: true` leaves the section out. The plugin carries
/// `"args": {"cni": {"network_namespace": namespace}}`, from which the `spiderpool` plugin learns
/// the attachment's namespace, so that pools with `multusName: namespace/name` serve it.
///
/// `enableCoordinator: true` (and `coordinator`) are **not rendered**: Spiderpool's `coordinator`
/// plugin is not part of this project, and chaining it would fail every pod with "plugin not
/// found". Each such setting left out adds a sentence to [`RenderedNetwork::notes`].
pub fn render_network(
    namespace: &str,
    name: &str,
    spec: &SpiderMultusConfigSpec,
    settings: &RenderSettings,
) -> Result<RenderedNetwork, RenderError> {
    let mut annotations = BTreeMap::new();
    let mut notes = Vec::new();
    if spec.cni_type != "custom" {
        if spec.enable_coordinator == Some(true) {
            notes.push(
                "spec.enableCoordinator: the coordinator plugin is not part of this project, so it is not \
                 chained (pods would fail with \"plugin not found\"); routes and neighbours stay as the \
                 main plugin sets them"
                    .to_owned(),
            );
        } else if spec.coordinator.is_some() {
            notes.push(
                "spec.coordinator: the coordinator plugin is not part of this project, so its settings are \
                 not used"
                    .to_owned(),
            );
        }
    }
    let (mut plugin, pools) = match spec.cni_type.as_str() {
        "macvlan" => link_plugin("macvlan", "bridge", spec.macvlan.as_ref(), LinkFields::MACVLAN)?,
        "ipvlan" => link_plugin("ipvlan", "l2", spec.ipvlan.as_ref(), LinkFields::IPVLAN)?,
        "sriov" => {
            let sriov = spec.sriov.as_ref().ok_or(RenderError::MissingSection {
                field: "spec.sriov",
                cni_type: "sriov",
                example: "{resourceName: intel.com/sriov_netdevice}",
            })?;
            sriov_plugin(sriov, &mut annotations)?
        }
        "custom" => {
            let text = spec.custom_cni.as_deref().ok_or(RenderError::MissingCustomCni)?;
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => {}
                Ok(_) => return Err(RenderError::InvalidCustomCni("not a JSON object".into())),
                Err(err) => return Err(RenderError::InvalidCustomCni(format!("not valid JSON: {err}"))),
            }
            return Ok(RenderedNetwork {
                config: text.to_owned(),
                annotations,
                notes,
            });
        }
        other => return Err(RenderError::UnsupportedCniType(other.to_owned())),
    };
    plugin.insert("args".into(), json!({"cni": {"network_namespace": namespace}}));
    if spec.disable_ipam != Some(true) {
        plugin.insert("ipam".into(), ipam_section(pools, settings));
    }
    let config = json!({
        "cniVersion": settings.cni_version,
        "name": name,
        "plugins": [Value::Object(plugin)],
    });
    Ok(RenderedNetwork {
        config: serde_json::to_string_pretty(&config).expect("a JSON value serializes"),
        annotations,
        notes,
    })
}

/// The field names of a macvlan or ipvlan section, for errors.
struct LinkFields {
    section: &'static str,
    cni_type: &'static str,
    master: &'static str,
    vlan: &'static str,
}

impl LinkFields {
    const MACVLAN: LinkFields = LinkFields {
        section: "spec.macvlan",
        cni_type: "macvlan",
        master: "spec.macvlan.master",
        vlan: "spec.macvlan.vlanID",
    };
    const IPVLAN: LinkFields = LinkFields {
        section: "spec.ipvlan",
        cni_type: "ipvlan",
        master: "spec.ipvlan.master",
        vlan: "spec.ipvlan.vlanID",
    };
}

/// The macvlan or ipvlan plugin, and the network's default pools.
fn link_plugin<'a>(
    plugin_type: &str,
    mode: &str,
    link: Option<&'a LinkConfig>,
    fields: LinkFields,
) -> Result<(Map<String, Value>, Option<&'a NetworkPools>), RenderError> {
    let link = link.ok_or(RenderError::MissingSection {
        field: fields.section,
        cni_type: fields.cni_type,
        example: "{master: [eth0]}",
    })?;
    let master = match link.master.as_slice() {
        [] => return Err(RenderError::NoMaster { field: fields.master }),
        [master] => master,
        masters => {
            return Err(RenderError::MultipleMasters {
                field: fields.master,
                masters: masters.to_vec(),
            });
        }
    };
    let master = match vlan(link.vlan_id, fields.vlan)? {
        Some(vlan) => format!("{master}.{vlan}"),
        None => master.clone(),
    };
    if let Err(reason) = check_interface_name(&master) {
        return Err(RenderError::InvalidInterfaceName {
            field: fields.master,
            name: master,
            reason,
        });
    }
    let mut plugin = Map::new();
    plugin.insert("type".into(), plugin_type.into());
    plugin.insert("master".into(), master.into());
    plugin.insert("mode".into(), mode.into());
    Ok((plugin, link.ippools.as_ref()))
}

/// The sriov plugin and the network's default pools; adds the resource annotation.
fn sriov_plugin<'a>(
    sriov: &'a SriovConfig,
    annotations: &mut BTreeMap<String, String>,
) -> Result<(Map<String, Value>, Option<&'a NetworkPools>), RenderError> {
    if sriov.resource_name.trim().is_empty() {
        return Err(RenderError::MissingResourceName);
    }
    let mut plugin = Map::new();
    plugin.insert("type".into(), "sriov".into());
    if let Some(tag) = sriov.vlan_id {
        vlan(Some(tag), "spec.sriov.vlanID")?;
        plugin.insert("vlan".into(), tag.into());
    }
    annotations.insert(RESOURCE_NAME_ANNOTATION.into(), sriov.resource_name.clone());
    Ok((plugin, sriov.ippools.as_ref()))
}

/// A VLAN tag checked: `None` for none (absent or 0).
fn vlan(tag: Option<i32>, field: &'static str) -> Result<Option<i32>, RenderError> {
    match tag {
        None | Some(0) => Ok(None),
        Some(value @ 1..=4094) => Ok(Some(value)),
        Some(value) => Err(RenderError::InvalidVlan { field, value }),
    }
}

/// Whether Linux accepts `name` as an interface name (`dev_valid_name`).
fn check_interface_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name.len() > 15 {
        Err("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Err("a path component")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Err("it contains '/', ':' or white space")
    } else {
        Ok(())
    }
}

/// The `ipam` section of the `spiderpool` plugin.
fn ipam_section(pools: Option<&NetworkPools>, settings: &RenderSettings) -> Value {
    let mut ipam = Map::new();
    ipam.insert(ipam_keys::TYPE.into(), "spiderpool".into());
    if let Some(kubeconfig) = &settings.kubeconfig {
        ipam.insert(
            ipam_keys::KUBECONFIG.into(),
            kubeconfig.to_string_lossy().into_owned().into(),
        );
    }
    if let Some(socket) = &settings.agent_socket {
        ipam.insert(
            ipam_keys::AGENT_SOCKET.into(),
            socket.to_string_lossy().into_owned().into(),
        );
    }
    if let Some(pools) = pools {
        if !pools.ipv4.is_empty() {
            ipam.insert(ipam_keys::DEFAULT_IPV4_IPPOOL.into(), pools.ipv4.clone().into());
        }
        if !pools.ipv6.is_empty() {
            ipam.insert(ipam_keys::DEFAULT_IPV6_IPPOOL.into(), pools.ipv6.clone().into());
        }
    }
    Value::Object(ipam)
}

/// The network attachment `multus_config` owns, as [`reconcile_multus_config`] applies it: same
/// namespace and name, the rendered configuration and annotations, and an owner reference to
/// `multus_config` (controller, blocking its deletion), so that the garbage collector deletes it
/// with its `SpiderMultusConfig`.
pub fn network_attachment_definition(
    multus_config: &SpiderMultusConfig,
    rendered: &RenderedNetwork,
) -> Result<NetworkAttachmentDefinition, MultusError> {
    let namespace = multus_config
        .namespace()
        .ok_or(MultusError::MissingMetadata("namespace"))?;
    multus_config
        .meta()
        .uid
        .as_ref()
        .ok_or(MultusError::MissingMetadata("uid"))?;
    let mut owner = multus_config
        .controller_owner_ref(&())
        .ok_or(MultusError::MissingMetadata("name"))?;
    owner.block_owner_deletion = Some(true);
    Ok(NetworkAttachmentDefinition {
        metadata: ObjectMeta {
            name: Some(multus_config.name_any()),
            namespace: Some(namespace),
            annotations: (!rendered.annotations.is_empty()).then(|| rendered.annotations.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: NetworkAttachmentDefinitionSpec {
            config: rendered.config.clone(),
        },
    })
}

/// Renders `multus_config` (see [`render_network`]) and applies its network attachment (see
/// [`network_attachment_definition`]) with server-side apply as [`FIELD_MANAGER`], taking over
/// fields other managers set: what the `SpiderMultusConfig` says wins. Returns the network
/// attachment as stored.
///
/// A network attachment of that name that someone else wrote is taken over (as Spiderpool does);
/// one owned by another controller is refused by the API server. When rendering fails, the
/// network attachment is left as it is.
pub async fn reconcile_multus_config(
    client: Client,
    multus_config: &SpiderMultusConfig,
    settings: &RenderSettings,
) -> Result<NetworkAttachmentDefinition, MultusError> {
    apply(client, multus_config, settings)
        .await
        .map(|(stored, _)| stored)
}

/// [`reconcile_multus_config`], with the rendering's notes.
async fn apply(
    client: Client,
    multus_config: &SpiderMultusConfig,
    settings: &RenderSettings,
) -> Result<(NetworkAttachmentDefinition, Vec<String>), MultusError> {
    let namespace = multus_config
        .namespace()
        .ok_or(MultusError::MissingMetadata("namespace"))?;
    let name = multus_config
        .meta()
        .name
        .clone()
        .ok_or(MultusError::MissingMetadata("name"))?;
    let rendered = render_network(&namespace, &name, &multus_config.spec, settings)?;
    let desired = network_attachment_definition(multus_config, &rendered)?;
    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(client, &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let stored = api
        .patch(&name, &params, &Patch::Apply(&desired))
        .await
        .map_err(|source| MultusError::Api {
            action: format!("applying NetworkAttachmentDefinition {namespace}/{name}"),
            source,
        })?;
    Ok((stored, rendered.notes))
}

/// How long a network attachment in step waits before it is checked again anyway.
const RESYNC: Duration = Duration::from_secs(3600);
/// The first wait after a failed reconciliation; it doubles with each failure in a row.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait after failures.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// What the reconciliations share.
struct Context {
    client: Client,
    settings: RenderSettings,
    recorder: Recorder,
    /// Failures in a row, per `namespace/name`, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned map only holds retry counts: keep using it.
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes a warning event about `multus_config`; a failure to publish is logged.
    async fn warn(&self, multus_config: &SpiderMultusConfig, reason: &str, note: String) {
        let mut note = note;
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Render".into(),
            secondary: None,
        };
        if let Err(err) = self
            .recorder
            .publish(&event, &multus_config.object_ref(&()))
            .await
        {
            eprintln!(
                "{FIELD_MANAGER}: SpiderMultusConfig {}: could not publish event {reason}: {err}",
                key(multus_config)
            );
        }
    }
}

/// `namespace/name` of an object.
fn key(multus_config: &SpiderMultusConfig) -> String {
    format!(
        "{}/{}",
        multus_config.namespace().unwrap_or_default(),
        multus_config.name_any()
    )
}

async fn reconcile(multus_config: Arc<SpiderMultusConfig>, ctx: Arc<Context>) -> Result<Action, MultusError> {
    if multus_config.meta().deletion_timestamp.is_some() {
        // The garbage collector deletes the network attachment with it.
        return Ok(Action::await_change());
    }
    match apply(ctx.client.clone(), &multus_config, &ctx.settings).await {
        Ok((_, notes)) => {
            ctx.failures().remove(&key(&multus_config));
            if !notes.is_empty() {
                ctx.warn(&multus_config, "SettingsNotRendered", notes.join("; "))
                    .await;
            }
            Ok(Action::requeue(RESYNC))
        }
        Err(err) => {
            let reason = match err {
                MultusError::Render(_) | MultusError::MissingMetadata(_) => "InvalidSpec",
                MultusError::NetworkAttachmentCrdMissing | MultusError::Api { .. } => "ApplyFailed",
            };
            ctx.warn(&multus_config, reason, err.to_string()).await;
            Err(err)
        }
    }
}

/// The wait after `failures` failed reconciliations in a row (at least 1).
fn retry_wait(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(MAX_RETRY)
}

fn error_policy(multus_config: Arc<SpiderMultusConfig>, err: &MultusError, ctx: Arc<Context>) -> Action {
    let key = key(&multus_config);
    let failures = {
        let mut all = ctx.failures();
        let count = all.entry(key.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let wait = retry_wait(failures);
    eprintln!("{FIELD_MANAGER}: SpiderMultusConfig {key}: {err}; retrying in {wait:?}");
    Action::requeue(wait)
}

/// Keeps the network attachment of every `SpiderMultusConfig`, in every namespace, in step with
/// it: renders and applies it (see [`reconcile_multus_config`]) when the `SpiderMultusConfig`
/// changes, when its network attachment changes or goes away, and hourly.
///
/// A `SpiderMultusConfig` that cannot be rendered, or whose network attachment cannot be written,
/// gets a `Warning` event (reason `InvalidSpec` or `ApplyFailed`) whose message names the field
/// and the fix, is logged on stderr, and is tried again after a backoff (5 s, doubling up to
/// 5 min); its network attachment stays as it was. Settings that are not rendered (the
/// coordinator) get a `Warning` event with reason `SettingsNotRendered`.
///
/// Needs, cluster-wide: get, list and watch of `spidermultusconfigs.spiderpool.spidernet.io`;
/// get, list, watch and patch of `network-attachment-definitions.k8s.cni.cncf.io`; create and
/// patch of `events.events.k8s.io`.
///
/// Returns an error at once when the API server does not serve network attachments (Multus is
/// not installed) or `SpiderMultusConfig`s; otherwise it runs until the task is dropped.
pub async fn run_multus_controller(client: Client, settings: RenderSettings) -> Result<(), MultusError> {
    let configs: Api<SpiderMultusConfig> = Api::all(client.clone());
    let attachments: Api<PartialObjectMeta<NetworkAttachmentDefinition>> = Api::all(client.clone());
    let one = ListParams::default().limit(1);
    match attachments.list_metadata(&one).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(MultusError::NetworkAttachmentCrdMissing);
        }
        Err(source) => {
            return Err(MultusError::Api {
                action: "listing NetworkAttachmentDefinitions".into(),
                source,
            });
        }
        Ok(_) => {}
    }
    configs
        .list_metadata(&one)
        .await
        .map_err(|source| MultusError::Api {
            action: "listing SpiderMultusConfigs (are deploy/crds/ applied?)".into(),
            source,
        })?;
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER)),
        client,
        settings,
        failures: Mutex::default(),
    });
    // Only the metadata of network attachments is watched: owner references are all the
    // controller needs, and objects without `spec` (which Multus allows) do not stop it.
    let results = Controller::new(configs, watcher::Config::default())
        .owns(attachments, watcher::Config::default())
        .run(reconcile, error_policy, ctx);
    drain(results, |result| match result {
        Ok(_) => {}
        // Logged by the error policy.
        Err(controller::Error::ReconcilerFailed(..)) => {}
        // A change of an object deleted meanwhile.
        Err(controller::Error::ObjectNotFound(_)) => {}
        Err(err) => eprintln!("{FIELD_MANAGER}: SpiderMultusConfig controller: {err}"),
    })
    .await;
    Ok(())
}

/// Drives `stream` to its end, handing every item to `each`.
///
/// `Stream` is reached as the supertrait of kube's `WatchStreamExt` (implemented by every
/// stream), so that this crate needs no `futures` dependency for one loop.
async fn drain<S: WatchStreamExt>(stream: S, mut each: impl FnMut(S::Item)) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        each(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_linux() {
        assert_eq!(check_interface_name("eth0"), Ok(()));
        assert_eq!(check_interface_name("enp0s31f6.4094"), Ok(()));
        assert!(check_interface_name("").is_err());
        assert!(check_interface_name("a-very-long-name0").is_err());
        assert!(check_interface_name("..").is_err());
        assert!(check_interface_name("eth 0").is_err());
        assert!(check_interface_name("eth0:1").is_err());
    }

    #[test]
    fn vlans_are_checked() {
        assert_eq!(vlan(None, "f"), Ok(None));
        assert_eq!(vlan(Some(0), "f"), Ok(None));
        assert_eq!(vlan(Some(4094), "f"), Ok(Some(4094)));
        assert_eq!(
            vlan(Some(4095), "f"),
            Err(RenderError::InvalidVlan {
                field: "f",
                value: 4095
            })
        );
        assert!(vlan(Some(-1), "f").is_err());
    }

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling() {
        assert_eq!(retry_wait(1), Duration::from_secs(5));
        assert_eq!(retry_wait(2), Duration::from_secs(10));
        assert_eq!(retry_wait(7), MAX_RETRY);
        assert_eq!(retry_wait(u32::MAX), MAX_RETRY);
    }
}
