//! The CNI protocol as an IPAM plugin sees it, spec versions 0.3.0 to 1.1.0: the environment,
//! the network configuration on stdin, results and errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Value, json};
use spiderpool_core::{IpVersion, Plan, Subnet};

/// A version of the CNI specification this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpecVersion {
    /// 0.3.0.
    V0_3_0,
    /// 0.3.1.
    V0_3_1,
    /// 0.4.0: CHECK.
    V0_4_0,
    /// 1.0.0: `ips` entries lose `version`.
    V1_0_0,
    /// 1.1.0: GC and STATUS.
    V1_1_0,
}

impl SpecVersion {
    /// Every version supported, oldest first.
    pub const SUPPORTED: [SpecVersion; 5] = [
        SpecVersion::V0_3_0,
        SpecVersion::V0_3_1,
        SpecVersion::V0_4_0,
        SpecVersion::V1_0_0,
        SpecVersion::V1_1_0,
    ];

    /// The newest version supported.
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

    /// The version as written in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The oldest version that has `command`.
    fn introducing(command: Command) -> SpecVersion {
        match command {
            Command::Check => SpecVersion::V0_4_0,
            Command::Gc | Command::Status => SpecVersion::V1_1_0,
            Command::Add | Command::Del | Command::Version => SpecVersion::V0_3_0,
        }
    }
}

impl FromStr for SpecVersion {
    type Err = ProtocolError;

    fn from_str(text: &str) -> Result<SpecVersion, ProtocolError> {
        SpecVersion::SUPPORTED
            .into_iter()
            .find(|version| version.as_str() == text)
            .ok_or_else(|| ProtocolError::incompatible_version(text))
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Allocate.
    Add,
    /// Release.
    Del,
    /// Verify an allocation.
    Check,
    /// Release what the runtime no longer knows.
    Gc,
    /// Say whether ADD would work.
    Status,
    /// Report supported versions.
    Version,
}

impl FromStr for Command {
    type Err = ProtocolError;

    fn from_str(text: &str) -> Result<Command, ProtocolError> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(ProtocolError::environment(
                    format!("CNI_COMMAND: {other:?} is not a CNI command"),
                    "use ADD, DEL, CHECK, GC, STATUS or VERSION",
                ));
            }
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        })
    }
}

/// The well-known CNI error codes, and ours (100 and above).
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Invalid environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// No candidate pool can serve the request; `details` lists every candidate.
    pub const NO_POOL_AVAILABLE: u32 = 100;
    /// CHECK found the stored allocation different from `prevResult`.
    pub const CHECK_MISMATCH: u32 = 101;
    /// The state file is not a usable spiderpool store.
    pub const STATE_REFUSED: u32 = 102;
}

/// An error as the CNI specification shapes it: a code, a message and details. Which code a
/// failure gets is decided in one place, [`crate::failure::Failure::code`]; this is the
/// rendered form, printed on stdout (and carried from the node agent to the plugin).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", details.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    /// The CNI error code.
    pub code: u32,
    /// What went wrong.
    pub msg: String,
    /// The facts and the fix.
    pub details: Option<String>,
}

impl CniError {
    /// An error with a code, a message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        let details = details.into();
        CniError {
            code,
            msg: msg.into(),
            details: (!details.is_empty()).then_some(details),
        }
    }

    /// The error JSON, as printed on stdout.
    pub fn to_json(&self, version: &str) -> Value {
        let mut error = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if let Some(details) = &self.details {
            error["details"] = Value::String(details.clone());
        }
        error
    }
}

/// Which rule of the CNI specification a call breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// A `cniVersion` this plugin does not speak, or too old for the command.
    IncompatibleVersion,
    /// A missing or malformed environment variable.
    InvalidEnvironment,
    /// Input that cannot be decoded at all.
    Undecodable,
    /// A network configuration that cannot be used.
    InvalidConfig,
}

/// What is wrong with a call as the runtime made it: the breach, what was found, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct ProtocolError {
    /// The rule broken.
    pub breach: Breach,
    /// What was found, naming the field or variable.
    pub msg: String,
    /// The facts and the fix.
    pub details: String,
}

impl ProtocolError {
    fn new(breach: Breach, msg: impl Into<String>, details: impl Into<String>) -> ProtocolError {
        ProtocolError {
            breach,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// A `cniVersion` this plugin does not speak.
    pub fn incompatible_version(found: &str) -> ProtocolError {
        let supported: Vec<&str> = SpecVersion::SUPPORTED.iter().map(|v| v.as_str()).collect();
        ProtocolError::new(
            Breach::IncompatibleVersion,
            "incompatible CNI versions",
            format!("config is {found:?}, plugin supports {supported:?}; set cniVersion to one of them"),
        )
    }

    /// A missing or malformed environment variable.
    pub fn environment(msg: impl Into<String>, details: impl Into<String>) -> ProtocolError {
        ProtocolError::new(Breach::InvalidEnvironment, msg, details)
    }

    /// A network configuration that cannot be used.
    pub fn config(msg: impl Into<String>, details: impl Into<String>) -> ProtocolError {
        ProtocolError::new(Breach::InvalidConfig, msg, details)
    }

    /// Input that cannot be decoded.
    pub fn undecodable(msg: impl Into<String>, details: impl Into<String>) -> ProtocolError {
        ProtocolError::new(Breach::Undecodable, msg, details)
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(Vec<(String, String)>);

impl CniArgs {
    /// Parses the text; a pair without `=` or with an empty key is refused. Unknown keys are
    /// kept and ignored, as runtimes send `IgnoreUnknown=1` and more.
    pub fn parse(text: &str) -> Result<CniArgs, ProtocolError> {
        let mut pairs = Vec::new();
        for pair in text.split(';').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => pairs.push((key.to_owned(), value.to_owned())),
                _ => {
                    return Err(ProtocolError::environment(
                        format!("CNI_ARGS: invalid pair {pair:?}"),
                        "write KEY=VALUE pairs separated by ';', for example K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
                    ));
                }
            }
        }
        Ok(CniArgs(pairs))
    }

    /// The value of `key`, when present and not empty. A key given twice counts as its last
    /// pair says, as the reference plugins read `CNI_ARGS`.
    ///
    /// ```
    /// use spiderpool_cni::cni::CniArgs;
    /// let args = CniArgs::parse("K8S_POD_NAME=a;IgnoreUnknown=1;K8S_POD_NAME=b;K8S_POD_UID=u;K8S_POD_UID=").unwrap();
    /// assert_eq!(args.get("K8S_POD_NAME"), Some("b"));
    /// assert_eq!(args.get("K8S_POD_UID"), None);
    /// ```
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rfind(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// The environment of one invocation. Empty variables count as absent, as libcni sets all of
/// them for every command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: CniArgs,
}

impl Invocation {
    /// Reads and checks the environment for `command`, naming every missing or malformed
    /// variable.
    pub fn from_env(
        command: Command,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Invocation, ProtocolError> {
        let get = |name: &str| var(name).filter(|value| !value.is_empty());
        let container_id = get("CNI_CONTAINERID");
        let netns = get("CNI_NETNS");
        let ifname = get("CNI_IFNAME");
        let required: &[(&str, bool)] = match command {
            Command::Add | Command::Check => &[
                ("CNI_CONTAINERID", container_id.is_some()),
                ("CNI_NETNS", netns.is_some()),
                ("CNI_IFNAME", ifname.is_some()),
            ],
            Command::Del => &[
                ("CNI_CONTAINERID", container_id.is_some()),
                ("CNI_IFNAME", ifname.is_some()),
            ],
            Command::Gc | Command::Status | Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(ProtocolError::environment(
                format!(
                    "required environment variables missing for {command}: {}",
                    missing.join(", ")
                ),
                "the container runtime sets them; when calling the plugin by hand, set them too",
            ));
        }
        if let Some(id) = &container_id {
            check_container_id("CNI_CONTAINERID", id)?;
        }
        if let Some(name) = &ifname {
            check_interface_name("CNI_IFNAME", name)?;
        }
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

/// Checks a container ID as the CNI specification defines it: letters, digits, `_`, `.` and
/// `-`, starting with a letter or digit. `field` names where it came from, for the error.
///
/// ```
/// use spiderpool_cni::cni::check_container_id;
/// assert!(check_container_id("CNI_CONTAINERID", "c1-a.b_c").is_ok());
/// let refused = check_container_id("CNI_CONTAINERID", "-c1").unwrap_err();
/// assert!(refused.msg.starts_with("CNI_CONTAINERID: \"-c1\""));
/// ```
pub fn check_container_id(field: &str, id: &str) -> Result<(), ProtocolError> {
    let valid = id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        return Ok(());
    }
    Err(ProtocolError::environment(
        format!("{field}: {id:?} is not a valid container ID"),
        "it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
    ))
}

/// Checks an interface name as Linux and the CNI specification allow it: 1 to 15 bytes, not
/// `.` or `..`, no `/`, `:` or white space. `field` names where it came from, for the error.
pub fn check_interface_name(field: &str, name: &str) -> Result<(), ProtocolError> {
    let valid = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        return Ok(());
    }
    Err(ProtocolError::environment(
        format!("{field}: {name:?} is not a valid interface name"),
        "use 1 to 15 characters, without '/', ':' or spaces",
    ))
}

/// The network configuration on stdin, as far as this plugin reads it. The configuration of
/// the main plugin (macvlan, bridge) comes along and is ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct NetworkConfig {
    /// `cniVersion`.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// `name`, the network's name.
    #[serde(default)]
    pub name: String,
    /// The `ipam` section.
    #[serde(default)]
    pub ipam: Option<Value>,
    /// `args`, for `args.cni`.
    #[serde(default)]
    pub args: Option<Value>,
    /// `prevResult`, for CHECK.
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments`, for GC.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface.
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// The `ipam` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    /// `spiderpool`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// A YAML file, or a directory of YAML files, holding `SpiderIPPool` and
    /// `SpiderReservedIP` documents.
    #[serde(default)]
    pub ippools_path: Option<PathBuf>,
    /// Pool and reserved-IP objects written inline, as JSON.
    #[serde(default)]
    pub ippools: Vec<Value>,
    /// Where the state lives; default `/var/lib/cni/spiderpool`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// This node's name; default `NODE_NAME`, then the host name.
    #[serde(default)]
    pub node_name: Option<String>,
    /// This node's labels, for `nodeAffinity`.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// Default IPv4 pools of this network.
    #[serde(default)]
    pub default_ipv4_ippool: Vec<String>,
    /// Default IPv6 pools of this network.
    #[serde(default)]
    pub default_ipv6_ippool: Vec<String>,
    /// No default route through the pools' gateways.
    #[serde(default)]
    pub clean_gateway: bool,
    /// A kubeconfig file: selects the cluster mode, where pools, pod facts and allocations
    /// live in the Kubernetes API server, and `ippools_path`, `ippools` and `data_dir` are not
    /// used.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The unix socket of the node's `spiderpool agent`: selects the cluster mode through the
    /// agent, which batches allocations and keeps one API client.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// How long a call waits for other calls holding the state, in milliseconds, before it
    /// answers "try again later" (code 11); default 10,000.
    #[serde(default)]
    pub busy_wait_ms: Option<u64>,
    /// Spiderpool's agent settings, accepted so that its network configurations can be
    /// reused, and not used.
    #[serde(default)]
    pub log_level: Option<Value>,
    /// See `log_level`.
    #[serde(default)]
    pub log_file_path: Option<Value>,
    /// See `log_level`.
    #[serde(default)]
    pub log_file_max_size: Option<Value>,
    /// See `log_level`.
    #[serde(default)]
    pub log_file_max_age: Option<Value>,
    /// See `log_level`.
    #[serde(default)]
    pub log_file_max_count: Option<Value>,
    /// See `log_level`.
    #[serde(default)]
    pub ipam_unix_socket_path: Option<Value>,
    /// See `log_level`.
    #[serde(default)]
    pub match_master_subnet: Option<Value>,
}

/// `args.cni`: pod and namespace metadata, as on the Kubernetes objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PodMetadata {
    /// The pod's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The pod's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The namespace's annotations.
    #[serde(default)]
    pub namespace_annotations: BTreeMap<String, String>,
    /// The namespace's labels.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// The namespace of the network attachment, for `multusName`; default `default`.
    #[serde(default)]
    pub network_namespace: Option<String>,
}

/// Deserializes `value` into `T`, naming the field path in the error.
fn from_value<T: serde::de::DeserializeOwned>(value: Value, prefix: &str) -> Result<T, ProtocolError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        ProtocolError::config(
            format!("{field}: {}", err.inner()),
            "fix the network configuration",
        )
    })
}

impl NetworkConfig {
    /// Parses stdin. Malformed JSON is code 6; a known field of the wrong type is code 7.
    pub fn parse(stdin: &[u8]) -> Result<NetworkConfig, ProtocolError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|err| {
            ProtocolError::undecodable(
                format!("the network configuration on stdin is not valid JSON: {err}"),
                "the runtime passes the network configuration as JSON on stdin",
            )
        })?;
        if !value.is_object() {
            return Err(ProtocolError::config(
                "the network configuration is not a JSON object",
                "write {\"cniVersion\": ..., \"name\": ..., \"ipam\": {\"type\": \"spiderpool\", ...}}",
            ));
        }
        if value.get("cniVersion").is_none() {
            return Err(ProtocolError::config(
                "cniVersion: missing",
                "add \"cniVersion\", for example \"1.0.0\"",
            ));
        }
        from_value(value, "config")
    }

    /// The version, checked against the command.
    pub fn version_for(&self, command: Command) -> Result<SpecVersion, ProtocolError> {
        let version: SpecVersion = self.cni_version.parse()?;
        let needed = SpecVersion::introducing(command);
        if version < needed {
            return Err(ProtocolError::new(
                Breach::IncompatibleVersion,
                "incompatible CNI versions",
                format!(
                    "config version {version} does not allow {command}; it needs cniVersion {needed} or later"
                ),
            ));
        }
        Ok(version)
    }

    /// The `ipam` section, checked.
    pub fn ipam(&self) -> Result<IpamConfig, ProtocolError> {
        let section = self.ipam.clone().ok_or_else(|| {
            ProtocolError::config(
                "ipam: missing",
                "add \"ipam\": {\"type\": \"spiderpool\", \"ippools_path\": \"/etc/cni/spiderpool/ippools.yaml\"}",
            )
        })?;
        let ipam: IpamConfig = from_value(section, "ipam")?;
        if ipam.plugin_type != "spiderpool" {
            return Err(ProtocolError::config(
                format!("ipam.type: {:?} is not this plugin", ipam.plugin_type),
                "set \"type\": \"spiderpool\"",
            ));
        }
        Ok(ipam)
    }

    /// `args.cni`, or nothing.
    pub fn pod_metadata(&self) -> Result<PodMetadata, ProtocolError> {
        match self.args.as_ref().and_then(|args| args.get("cni")) {
            None | Some(Value::Null) => Ok(PodMetadata::default()),
            Some(cni) => from_value(cni.clone(), "args.cni"),
        }
    }
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultAddress {
    /// The address.
    pub address: IpAddr,
    /// Its network, for the prefix length.
    pub subnet: Subnet,
    /// The gateway.
    pub gateway: Option<IpAddr>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultRoute {
    /// The destination.
    pub dst: Subnet,
    /// The next hop.
    pub gw: Option<IpAddr>,
}

/// What an IPAM plugin answers to ADD: addresses and routes, no interfaces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamResult {
    /// The addresses.
    pub ips: Vec<ResultAddress>,
    /// The routes.
    pub routes: Vec<ResultRoute>,
}

impl IpamResult {
    /// The result in the format of `version`: `ips` entries carry `version` before 1.0.0.
    pub fn to_json(&self, version: SpecVersion) -> Value {
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut entry = json!({"address": format!("{}/{}", ip.address, ip.subnet.prefix_len())});
                if version < SpecVersion::V1_0_0 {
                    let family = if ip.address.is_ipv4() { "4" } else { "6" };
                    entry["version"] = Value::String(family.into());
                }
                if let Some(gateway) = ip.gateway {
                    entry["gateway"] = Value::String(gateway.to_string());
                }
                entry
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|route| {
                let mut entry = json!({"dst": route.dst.to_string()});
                if let Some(gw) = route.gw {
                    entry["gw"] = Value::String(gw.to_string());
                }
                entry
            })
            .collect();
        json!({"cniVersion": version.as_str(), "ips": ips, "routes": routes, "dns": {}})
    }
}

/// The ADD result for `interface`: its addresses with their gateways, the pod's routes (its
/// annotation's), the pools' routes, and the default route through the gateway when the
/// interface carries it; one route per destination, the first given.
pub fn result_of(plan: &Plan, interface: &str) -> IpamResult {
    let mut result = IpamResult {
        ips: Vec::new(),
        routes: Vec::new(),
    };
    let Some(entry) = plan.interface(interface) else {
        return result;
    };
    // The pod's own routes (its `ipam.spidernet.io/routes` annotation) before its pools'.
    result.routes.extend(entry.routes.iter().map(|route| ResultRoute {
        dst: route.dst,
        gw: Some(route.gateway),
    }));
    for assigned in &entry.addresses {
        result.ips.push(ResultAddress {
            address: assigned.address,
            subnet: assigned.subnet,
            gateway: assigned.gateway,
        });
        let mut routes: Vec<ResultRoute> = assigned
            .routes
            .iter()
            .map(|route| ResultRoute {
                dst: route.dst,
                gw: Some(route.gateway),
            })
            .collect();
        if let (true, Some(gateway)) = (entry.default_route, assigned.gateway) {
            let everything = match IpVersion::of(assigned.address) {
                IpVersion::V4 => "0.0.0.0/0",
                IpVersion::V6 => "::/0",
            };
            routes.push(ResultRoute {
                dst: everything
                    .parse::<Subnet>()
                    .expect("the default destination parses"),
                gw: Some(gateway),
            });
        }
        for route in routes {
            if !result.routes.iter().any(|r| r.dst == route.dst) {
                result.routes.push(route);
            }
        }
    }
    result
}

/// The addresses (`address` fields, prefix dropped) of a `prevResult`.
pub fn prev_result_addresses(prev: &Value) -> Result<Vec<IpAddr>, ProtocolError> {
    let bad = |why: String| {
        ProtocolError::config(format!("prevResult: {why}"), "the runtime passes the ADD result")
    };
    let ips = prev
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no ips list".into()))?;
    ips.iter()
        .map(|entry| {
            let text = entry
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an ips entry has no address".into()))?;
            let address = text.split_once('/').map_or(text, |(address, _)| address);
            address
                .parse()
                .map_err(|_| bad(format!("{text:?} is not an address")))
        })
        .collect()
}

/// The answer to VERSION.
pub fn version_json(requested: Option<&str>) -> Value {
    let supported: Vec<&str> = SpecVersion::SUPPORTED.iter().map(|v| v.as_str()).collect();
    let version = requested
        .and_then(|text| text.parse::<SpecVersion>().ok())
        .unwrap_or(SpecVersion::LATEST);
    json!({"cniVersion": version.as_str(), "supportedVersions": supported})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn every_supported_version_parses_and_others_are_code_1() {
        for version in SpecVersion::SUPPORTED {
            assert_eq!(version.as_str().parse::<SpecVersion>().unwrap(), version);
        }
        let err = "0.2.0".parse::<SpecVersion>().unwrap_err();
        assert_eq!(err.breach, Breach::IncompatibleVersion);
        assert!(
            err.to_string()
                .contains("plugin supports [\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]")
        );
    }

    #[test]
    fn commands_need_their_variables() {
        let err = Invocation::from_env(Command::Add, env(&[("CNI_IFNAME", "eth0")])).unwrap_err();
        assert_eq!(err.breach, Breach::InvalidEnvironment);
        assert_eq!(
            err.msg,
            "required environment variables missing for ADD: CNI_CONTAINERID, CNI_NETNS"
        );
        let del = Invocation::from_env(
            Command::Del,
            env(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]),
        )
        .unwrap();
        assert_eq!(del.netns, None);
        let gc =
            Invocation::from_env(Command::Gc, env(&[("CNI_CONTAINERID", ""), ("CNI_IFNAME", "")])).unwrap();
        assert_eq!(gc.container_id, None, "empty means absent");
    }

    #[test]
    fn container_ids_interface_names_and_args_are_checked() {
        let with = |key: &str, value: &str| {
            let mut pairs = vec![
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ];
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            Invocation::from_env(Command::Add, env(&pairs))
        };
        assert!(with("CNI_CONTAINERID", "-bad").is_err());
        assert!(with("CNI_IFNAME", "a/b").is_err());
        assert!(with("CNI_IFNAME", "sixteen-chars-xx").is_err());
        let err = with("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME").unwrap_err();
        assert_eq!(err.msg, "CNI_ARGS: invalid pair \"K8S_POD_NAME\"");
        let ok = with(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;X=",
        )
        .unwrap();
        assert_eq!(ok.args.get("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(ok.args.get("X"), None);
    }

    #[test]
    fn results_follow_the_requested_version() {
        let result = IpamResult {
            ips: vec![ResultAddress {
                address: "10.6.168.60".parse().unwrap(),
                subnet: "10.6.0.0/16".parse().unwrap(),
                gateway: Some("10.6.0.1".parse().unwrap()),
            }],
            routes: vec![ResultRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.6.0.1".parse().unwrap()),
            }],
        };
        assert_eq!(
            result.to_json(SpecVersion::V0_4_0).to_string(),
            r#"{"cniVersion":"0.4.0","dns":{},"ips":[{"address":"10.6.168.60/16","gateway":"10.6.0.1","version":"4"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.6.0.1"}]}"#
        );
        assert_eq!(
            result.to_json(SpecVersion::V1_0_0).to_string(),
            r#"{"cniVersion":"1.0.0","dns":{},"ips":[{"address":"10.6.168.60/16","gateway":"10.6.0.1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.6.0.1"}]}"#
        );
    }

    #[test]
    fn configurations_name_the_bad_field() {
        let err = NetworkConfig::parse(b"{not json").unwrap_err();
        assert_eq!(err.breach, Breach::Undecodable);
        let err = NetworkConfig::parse(br#"{"name": "n"}"#).unwrap_err();
        assert_eq!(
            (err.breach, err.msg.as_str()),
            (Breach::InvalidConfig, "cniVersion: missing")
        );
        let config = NetworkConfig::parse(
            br#"{"cniVersion": "1.0.0", "name": "n", "type": "macvlan", "master": "eth0",
                 "ipam": {"type": "spiderpool", "ippools_pth": "/x"}}"#,
        )
        .unwrap();
        let err = config.ipam().unwrap_err();
        assert_eq!(err.breach, Breach::InvalidConfig);
        assert!(
            err.msg
                .starts_with("ipam.ippools_pth: unknown field `ippools_pth`"),
            "{}",
            err.msg
        );
        let config =
            NetworkConfig::parse(br#"{"cniVersion": "0.3.1", "name": "n", "ipam": {"type": "host-local"}}"#)
                .unwrap();
        assert_eq!(
            config.ipam().unwrap_err().msg,
            "ipam.type: \"host-local\" is not this plugin"
        );
        let err = config.version_for(Command::Check).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not allow CHECK; it needs cniVersion 0.4.0"),
            "{err}"
        );
    }

    #[test]
    fn version_answers_with_every_supported_version() {
        assert_eq!(
            version_json(Some("0.4.0")).to_string(),
            r#"{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(version_json(Some("9.9.9"))["cniVersion"], "1.1.0");
    }

    #[test]
    fn errors_render_as_cni_error_json() {
        let err = CniError::new(codes::TRY_AGAIN_LATER, "the state is busy", "retry");
        assert_eq!(
            err.to_json("1.0.0").to_string(),
            r#"{"cniVersion":"1.0.0","code":11,"details":"retry","msg":"the state is busy"}"#
        );
    }
}
