//! The CNI commands: each reads the environment and the network configuration, opens the
//! store, asks the engine, writes its changes in one transaction, and answers.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use spiderpool_core::{
    AllocateError, Attachment, IpVersion, Plan, Request, SelectionError, Subnet, allocate,
    attachment_addresses, collect_garbage, next_free, release_attachment,
};

use crate::agent::{self, AgentCall, AgentRequest};
use crate::cni::{
    CniError, Command, Invocation, IpamConfig, IpamResult, NetworkConfig, PodMetadata, ResultAddress,
    ResultRoute, SpecVersion, codes, prev_result_addresses, version_json,
};
use crate::pools::load_catalog;
use crate::store::{ApplyFailure, Store, StoreError};

/// Where the state lives when `ipam.data_dir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/spiderpool";

/// How long a call waits for other writers when `ipam.busy_wait_ms` is not set.
const DEFAULT_BUSY_WAIT: Duration = Duration::from_secs(10);

/// How long a call waits for the agent when `ipam.busy_wait_ms` is not set.
const AGENT_WAIT: Duration = Duration::from_secs(60);

/// What a command prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Success: the JSON to print, if any.
    Success(Option<Value>),
    /// Failure: the error JSON to print; the process exits 1.
    Failure(Value),
}

/// Runs one CNI command, `CNI_COMMAND` as given. `var` reads the environment; `stdin` is the
/// network configuration.
pub fn run(command: &str, var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Answer {
    // The version to answer errors in: the configuration's, when it can be read.
    let declared = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
        .filter(|text| text.parse::<SpecVersion>().is_ok())
        .unwrap_or_else(|| SpecVersion::LATEST.as_str().to_owned());
    let command = match command.parse::<Command>() {
        Ok(command) => command,
        Err(error) => return Answer::Failure(error.to_json(&declared)),
    };
    if command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned));
        return Answer::Success(Some(version_json(requested.as_deref())));
    }
    let outcome = Invocation::from_env(command, &var).and_then(|invocation| {
        let config = NetworkConfig::parse(stdin)?;
        let version = config.version_for(command)?;
        if config.name.is_empty() {
            return Err(CniError::invalid_config(
                "name: missing",
                "give the network a name",
            ));
        }
        let ipam = config.ipam()?;
        let call = Call {
            invocation,
            config,
            ipam,
            var: &var,
        };
        match command {
            Command::Add => match call.agent() {
                Some((socket, wait)) => call.add_through_agent(socket, wait).map(Some),
                None => call.add().map(|result| Some(result.to_json(version))),
            },
            Command::Del => call.del().map(|()| None),
            Command::Check => call.check().map(|()| None),
            Command::Gc => call.gc().map(|()| None),
            Command::Status => call.status().map(|()| None),
            Command::Version => unreachable!("answered above"),
        }
    });
    match outcome {
        Ok(output) => Answer::Success(output),
        Err(error) => Answer::Failure(error.to_json(&declared)),
    }
}

struct Call<'a, V: Fn(&str) -> Option<String>> {
    invocation: Invocation,
    config: NetworkConfig,
    ipam: IpamConfig,
    var: &'a V,
}

impl From<StoreError> for CniError {
    fn from(error: StoreError) -> CniError {
        let code = match &error {
            StoreError::Busy { .. } => codes::TRY_AGAIN_LATER,
            StoreError::Empty { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Foreign { .. }
            | StoreError::Newer { .. } => codes::STATE_REFUSED,
            StoreError::Directory { .. } | StoreError::Database { .. } => codes::IO_FAILURE,
            StoreError::NotADirectory { .. } => codes::INVALID_CONFIG,
        };
        CniError::new(code, error.to_string(), "")
    }
}

impl From<ApplyFailure> for CniError {
    fn from(error: ApplyFailure) -> CniError {
        match error {
            ApplyFailure::Conflict(conflict) => CniError::new(
                codes::TRY_AGAIN_LATER,
                conflict.to_string(),
                "nothing was written",
            ),
            ApplyFailure::Database(source) => CniError::new(
                codes::IO_FAILURE,
                format!("writing the state failed: {source}"),
                "",
            ),
        }
    }
}

/// The CNI error for an engine refusal; a failed read of the state keeps the code its own
/// error maps to (a busy store is 11, try again later).
pub(crate) fn refusal<E: std::fmt::Display>(error: AllocateError<E>) -> CniError
where
    CniError: From<E>,
{
    match error {
        AllocateError::NoPoolAvailable(unavailable) => {
            let details: Vec<String> = unavailable.failed.iter().map(ToString::to_string).collect();
            CniError::new(
                codes::NO_POOL_AVAILABLE,
                format!(
                    "no IP pool can serve {} on node {}",
                    unavailable.who, unavailable.node
                ),
                format!(
                    "{}; free addresses, or add a pool that serves this node and name it",
                    details.join(" | ")
                ),
            )
        }
        AllocateError::Selection(SelectionError::InvalidCandidate { error, .. }) => CniError::invalid_config(
            format!(
                "candidate pool {} is invalid, and allocation stops rather than use a pool of another zone",
                error.name
            ),
            error.to_string(),
        ),
        AllocateError::State(error) => CniError::from(error),
        other => CniError::invalid_config(other.to_string(), ""),
    }
}

impl<V: Fn(&str) -> Option<String>> Call<'_, V> {
    fn data_dir(&self) -> PathBuf {
        self.ipam
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    fn open(&self) -> Result<Store, CniError> {
        let wait = self
            .ipam
            .busy_wait_ms
            .map_or(DEFAULT_BUSY_WAIT, Duration::from_millis);
        Ok(Store::open(&self.data_dir(), wait)?)
    }

    /// The request this call makes, from the environment and the configuration.
    fn request(&self) -> Result<Request, CniError> {
        let metadata: PodMetadata = self.config.pod_metadata()?;
        let args = &self.invocation.args;
        let mut request = Request::new(
            self.invocation.container_id.clone().unwrap_or_default(),
            self.invocation.ifname.clone().unwrap_or_default(),
        );
        request.pod.namespace = args.get("K8S_POD_NAMESPACE").unwrap_or_default().to_owned();
        request.pod.name = args.get("K8S_POD_NAME").unwrap_or_default().to_owned();
        request.pod.uid = args.get("K8S_POD_UID").map(str::to_owned);
        request.pod.labels = metadata.labels;
        request.pod.annotations = metadata.annotations;
        request.namespace.labels = metadata.namespace_labels;
        request.namespace.annotations = metadata.namespace_annotations;
        request.node.name = node_name(&self.ipam, self.var);
        request.node.labels = self.ipam.node_labels.clone();
        request.network.attachment = Some(Attachment {
            namespace: metadata.network_namespace.unwrap_or_else(|| "default".into()),
            name: self.config.name.clone(),
        });
        request.network.default_ipv4 = self.ipam.default_ipv4_ippool.clone();
        request.network.default_ipv6 = self.ipam.default_ipv6_ippool.clone();
        request.network.clean_gateway = self.ipam.clean_gateway;
        Ok(request)
    }

    /// The agent's socket and how long to wait for it, in the agent mode.
    fn agent(&self) -> Option<(&std::path::Path, Duration)> {
        let wait = self.ipam.busy_wait_ms.map_or(AGENT_WAIT, Duration::from_millis);
        self.ipam.agent_socket.as_deref().map(|socket| (socket, wait))
    }

    fn add_through_agent(&self, socket: &std::path::Path, wait: Duration) -> Result<Value, CniError> {
        let call = AgentCall::Add {
            request: AgentRequest::from_request(&self.cluster_request()?),
            cni_version: self.config.cni_version.clone(),
        };
        agent::call(socket, &call, wait)
    }

    fn add(&self) -> Result<IpamResult, CniError> {
        if let Some(kubeconfig) = &self.ipam.kubeconfig {
            let request = self.cluster_request()?;
            let allocation = crate::cluster::run(kubeconfig, |store| {
                let request = request.clone();
                async move { store.allocate(request).await }
            })?;
            return Ok(result_of(&allocation.plan, &request.interface));
        }
        self.require_pool_definitions()?;
        let request = self.request()?;
        let mut store = self.open()?;
        store.write(|transaction| {
            let catalog = load_catalog(&self.ipam, Some(transaction))?;
            let plan = allocate(&catalog, transaction, &request).map_err(refusal)?;
            transaction.apply(&plan.changes, &self.config.name)?;
            Ok::<_, CniError>(result_of(&plan, &request.interface))
        })
    }

    fn del(&self) -> Result<(), CniError> {
        if let Some((socket, wait)) = self.agent() {
            let request = AgentRequest::from_request(&self.cluster_request()?);
            return agent::call(socket, &AgentCall::Del { request }, wait).map(|_| ());
        }
        if let Some(kubeconfig) = &self.ipam.kubeconfig {
            let request = self.cluster_request()?;
            crate::cluster::run(kubeconfig, |store| async move { store.release(&request).await })?;
            return Ok(());
        }
        let request = self.request()?;
        let mut store = self.open()?;
        store.write(|transaction| {
            let changes = release_attachment(transaction, &request)?;
            transaction.apply(&changes, &self.config.name)?;
            Ok::<_, CniError>(())
        })
    }

    fn check(&self) -> Result<(), CniError> {
        let request = self.request()?;
        let prev = self.config.prev_result.as_ref().ok_or_else(|| {
            CniError::invalid_config(
                "prevResult: missing",
                "CHECK verifies the result of ADD, which the runtime passes",
            )
        })?;
        let expected: BTreeSet<IpAddr> = prev_result_addresses(prev)?.into_iter().collect();
        if let Some((socket, wait)) = self.agent() {
            let request = self.cluster_request()?;
            let call = AgentCall::Held {
                request: AgentRequest::from_request(&request),
            };
            let held = agent::call(socket, &call, wait)?;
            let held = serde_json::from_value::<BTreeSet<IpAddr>>(held).map_err(|err| {
                CniError::new(
                    codes::DECODING_FAILURE,
                    format!("the agent's addresses: {err}"),
                    "",
                )
            })?;
            return compare_with_prev_result(&request, held, &expected);
        }
        if let Some(kubeconfig) = &self.ipam.kubeconfig {
            let request = self.cluster_request()?;
            let (_, state) = crate::cluster::run(kubeconfig, |store| async move { store.state().await })?;
            let Ok(held) = attachment_addresses(&state, &request, std::slice::from_ref(&request.interface));
            return compare_with_prev_result(
                &request,
                held.into_iter().map(|h| h.address).collect(),
                &expected,
            );
        }
        let mut store = self.open()?;
        let held: BTreeSet<IpAddr> = store.read(|transaction| {
            let interfaces = [request.interface.clone()];
            Ok::<_, CniError>(
                attachment_addresses(transaction, &request, &interfaces)?
                    .into_iter()
                    .map(|held| held.address)
                    .collect(),
            )
        })?;
        compare_with_prev_result(&request, held, &expected)
    }

    fn gc(&self) -> Result<(), CniError> {
        if self.ipam.kubeconfig.is_some() || self.ipam.agent_socket.is_some() {
            // In a cluster the controller collects garbage from the API's view of pods, which
            // is wider than one runtime's list of attachments.
            return Ok(());
        }
        // An absent list means no attachment is valid, as libcni's cnitool sends it.
        let valid: Vec<(String, String)> = self
            .config
            .valid_attachments
            .iter()
            .flatten()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        let mut store = self.open()?;
        store.write(|transaction| {
            // Only this network's allocations: other networks share the store.
            let held = transaction.allocations_of_network(&self.config.name)?;
            let changes = collect_garbage(held, &valid);
            transaction.apply(&changes, &self.config.name)?;
            Ok::<_, CniError>(())
        })
    }

    /// STATUS answers 50 whenever ADD could not work, whatever the cause.
    fn status(&self) -> Result<(), CniError> {
        self.ready().map_err(|error| {
            CniError::new(codes::NOT_AVAILABLE, error.msg, error.details.unwrap_or_default())
        })
    }

    fn ready(&self) -> Result<(), CniError> {
        if let Some((socket, wait)) = self.agent() {
            return agent::call(socket, &AgentCall::Status, wait).map(|_| ());
        }
        if let Some(kubeconfig) = &self.ipam.kubeconfig {
            let (catalog, _) = crate::cluster::run(kubeconfig, |store| async move { store.state().await })?;
            if catalog.pools().next().is_none() {
                return Err(CniError::invalid_config(
                    "no valid SpiderIPPool in the cluster",
                    "kubectl apply SpiderIPPool objects",
                ));
            }
            return Ok(());
        }
        self.require_pool_definitions()?;
        let mut store = self.open()?;
        store.read(|transaction| {
            let catalog = load_catalog(&self.ipam, None)?;
            let pools: Vec<_> = catalog.pools().collect();
            if pools.is_empty() {
                return Err(CniError::invalid_config(
                    "no valid IP pool is defined",
                    "add SpiderIPPool objects to ippools_path",
                ));
            }
            // The first pool with a free address, or the first failed read.
            let free = pools
                .iter()
                .find_map(|pool| next_free(transaction, pool).transpose());
            if free.transpose()?.is_none() {
                return Err(CniError::new(
                    codes::NOT_AVAILABLE,
                    "every IP pool is full",
                    "release addresses or add pools",
                ));
            }
            Ok(())
        })
    }

    /// The request of the cluster mode: the runtime's identities of pod, container,
    /// interface and network; labels and annotations come from the API server, and the node
    /// from the pod unless `ipam.node_name` names it.
    fn cluster_request(&self) -> Result<Request, CniError> {
        let mut request = self.request()?;
        request.pod.labels.clear();
        request.pod.annotations.clear();
        request.namespace = Default::default();
        request.node.labels.clear();
        request.node.name = self.ipam.node_name.clone().unwrap_or_default();
        Ok(request)
    }

    /// Pools come from somewhere: `ipam.ippools_path` or `ipam.ippools`.
    fn require_pool_definitions(&self) -> Result<(), CniError> {
        if self.ipam.ippools_path.is_none() && self.ipam.ippools.is_empty() {
            return Err(CniError::invalid_config(
                "ipam.ippools_path: missing",
                "set ippools_path to a YAML file or a directory of SpiderIPPool objects, or list them in ipam.ippools",
            ));
        }
        Ok(())
    }
}

/// CHECK's verdict: the stored addresses of the attachment are those of `prevResult`.
fn compare_with_prev_result(
    request: &Request,
    held: BTreeSet<IpAddr>,
    expected: &BTreeSet<IpAddr>,
) -> Result<(), CniError> {
    if held == *expected {
        return Ok(());
    }
    let list = |set: &BTreeSet<IpAddr>| set.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    Err(CniError::new(
        codes::CHECK_MISMATCH,
        format!(
            "the stored allocation of {} for {} differs from prevResult",
            request.interface, request.container_id
        ),
        format!("stored [{}], prevResult [{}]", list(&held), list(expected)),
    ))
}

/// This node's name: `ipam.node_name`, else `NODE_NAME`, else the host name.
pub fn node_name(ipam: &IpamConfig, var: &impl Fn(&str) -> Option<String>) -> String {
    ipam.node_name
        .clone()
        .or_else(|| var("NODE_NAME").filter(|n| !n.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|n| n.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The ADD result for `interface`: its addresses with their gateways, the pools' routes, and
/// the default route through the gateway when the interface carries it.
pub fn result_of(plan: &Plan, interface: &str) -> IpamResult {
    let mut result = IpamResult {
        ips: Vec::new(),
        routes: Vec::new(),
    };
    let Some(entry) = plan.interface(interface) else {
        return result;
    };
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
