//! The CNI commands: each reads the environment and the network configuration, turns them
//! into what the runtime knows of the call ([`RuntimeFacts`]), and asks the backend the
//! configuration chose ([`crate::backend::choose`]). Every verb is written once, here.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;
use spiderpool_core::{Attachment, IpFamilies, NetworkFacts, PodIdentity, RuntimeFacts};

use crate::backend;
use crate::cni::{
    Command, Invocation, IpamConfig, NetworkConfig, PodMetadata, ProtocolError, SpecVersion,
    prev_result_addresses, version_json,
};
use crate::failure::Failure;

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
    match serve(command, &var, stdin) {
        Ok(output) => Answer::Success(output),
        Err(failure) => Answer::Failure(failure.render().to_json(&declared)),
    }
}

fn serve(
    command: &str,
    var: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, Failure> {
    let command: Command = command.parse()?;
    if command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned));
        return Ok(Some(version_json(requested.as_deref())));
    }
    let CniCall {
        version,
        config,
        ipam,
        metadata,
        facts,
    } = CniCall::read(command, var, stdin)?;
    let backend = backend::choose(&ipam, &config.name, metadata, || node_name(&ipam, var));
    match command {
        Command::Add => Ok(Some(backend.add(&facts)?.to_json(version))),
        Command::Del => backend.del(&facts).map(|()| None),
        Command::Check => {
            let prev = config.prev_result.as_ref().ok_or_else(|| {
                ProtocolError::config(
                    "prevResult: missing",
                    "CHECK verifies the result of ADD, which the runtime passes",
                )
            })?;
            let expected: BTreeSet<IpAddr> = prev_result_addresses(prev)?.into_iter().collect();
            let stored = backend.held(&facts)?;
            if stored != expected {
                return Err(Failure::CheckMismatch {
                    interface: facts.interface,
                    container: facts.container_id,
                    stored,
                    expected,
                });
            }
            Ok(None)
        }
        Command::Gc => {
            // An absent list means no attachment is valid, as libcni's cnitool sends it.
            let valid: Vec<(String, String)> = config
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect();
            backend.gc(&valid).map(|()| None)
        }
        // STATUS answers 50 whenever ADD could not work, whatever the cause.
        Command::Status => backend
            .status()
            .map(|()| None)
            .map_err(|failure| Failure::NotAvailable(Box::new(failure))),
        Command::Version => unreachable!("answered above"),
    }
}

/// A CNI call as the runtime made it, read and checked, before any backend is asked: reading
/// it does no IO, so that it can be tested and fuzzed on its own.
#[derive(Debug, Clone)]
pub struct CniCall {
    /// The version to answer in.
    pub version: SpecVersion,
    /// The network configuration.
    pub config: NetworkConfig,
    /// Its `ipam` section.
    pub ipam: IpamConfig,
    /// What `args.cni` says of the pod.
    pub metadata: PodMetadata,
    /// What the runtime knows of the attachment.
    pub facts: RuntimeFacts,
}

impl CniCall {
    /// Reads `command` (any but VERSION, which needs no configuration) with the environment
    /// `var` and the network configuration `stdin`, naming every missing or malformed part.
    pub fn read(
        command: Command,
        var: &impl Fn(&str) -> Option<String>,
        stdin: &[u8],
    ) -> Result<CniCall, Failure> {
        let invocation = Invocation::from_env(command, var)?;
        let config = NetworkConfig::parse(stdin)?;
        let version = config.version_for(command)?;
        if config.name.is_empty() {
            return Err(ProtocolError::config("name: missing", "give the network a name").into());
        }
        let ipam = config.ipam()?;
        let metadata = config.pod_metadata()?;
        let facts = runtime_facts(&invocation, &config, &ipam, &metadata);
        Ok(CniCall {
            version,
            config,
            ipam,
            metadata,
            facts,
        })
    }
}

/// What the runtime knows of the call: the sandbox, the interface, the pod of `CNI_ARGS`, and
/// what the network configuration says. Built once; every backend starts from it.
pub fn runtime_facts(
    invocation: &Invocation,
    config: &NetworkConfig,
    ipam: &IpamConfig,
    metadata: &PodMetadata,
) -> RuntimeFacts {
    let args = &invocation.args;
    let (namespace, name, uid) = (
        args.get("K8S_POD_NAMESPACE"),
        args.get("K8S_POD_NAME"),
        args.get("K8S_POD_UID"),
    );
    let pod = (namespace.is_some() || name.is_some() || uid.is_some()).then(|| PodIdentity {
        namespace: namespace.unwrap_or_default().to_owned(),
        name: name.unwrap_or_default().to_owned(),
        uid: uid.map(str::to_owned),
    });
    RuntimeFacts {
        container_id: invocation.container_id.clone().unwrap_or_default(),
        interface: invocation.ifname.clone().unwrap_or_default(),
        pod,
        node: ipam.node_name.clone(),
        network: NetworkFacts {
            attachment: Some(Attachment {
                namespace: metadata
                    .network_namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: config.name.clone(),
            }),
            default_ipv4: ipam.default_ipv4_ippool.clone(),
            default_ipv6: ipam.default_ipv6_ippool.clone(),
            clean_gateway: ipam.clean_gateway,
        },
        families: IpFamilies::AsListed,
    }
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
