//! `spiderpool demo network-zones`: Spiderpool's network-zones scenario through the plugin
//! itself, on a store in a temporary directory.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use spiderpool_core::render_table;
use spiderpool_core::scenario::{NETWORK_ZONES_YAML, network_zones_pods};

use crate::cni::Command;
use crate::plugin::{Answer, run};

/// A directory removed when dropped.
pub struct TemporaryDir(PathBuf);

impl TemporaryDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(prefix: &str) -> std::io::Result<TemporaryDir> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let path = base.join(format!("{prefix}-{}-{attempt}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TemporaryDir(path)),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
        Err(std::io::Error::other("no free temporary directory name"))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The network configuration of the scenario's Macvlan network for one node.
pub fn network_config(version: &str, pools: &Path, data_dir: &Path, node: &str, annotation: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "macvlan-conf",
        "type": "macvlan",
        "master": "eth0",
        "mode": "bridge",
        "ipam": {
            "type": "spiderpool",
            "ippools_path": pools,
            "data_dir": data_dir,
            "node_name": node,
        },
        "args": {"cni": {"annotations": {"ipam.spidernet.io/ippool": annotation}, "labels": {"app": "test-app"}}},
    })
}

/// Runs the scenario: each DaemonSet pod is added through the plugin's ADD on its node, then
/// the pods and the pools are printed as the documentation shows them.
pub fn network_zones() -> Result<String, String> {
    let dir = TemporaryDir::new("spiderpool-demo").map_err(|err| format!("temporary directory: {err}"))?;
    let pools = dir.path().join("ippools.yaml");
    std::fs::write(&pools, NETWORK_ZONES_YAML).map_err(|err| format!("{}: {err}", pools.display()))?;
    let data_dir = dir.path().join("state");
    let mut rows = Vec::new();
    for pod in network_zones_pods() {
        let request = &pod.request;
        let annotation = &request.pod.annotations["ipam.spidernet.io/ippool"];
        let config = network_config("1.0.0", &pools, &data_dir, &request.node.name, annotation);
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
            request.pod.namespace,
            request.pod.name,
            request.pod.uid.clone().unwrap_or_default()
        );
        let env = [
            ("CNI_CONTAINERID", request.container_id.clone()),
            ("CNI_NETNS", format!("/var/run/netns/{}", pod.name)),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_ARGS", args),
        ];
        let var = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        let stdin = config.to_string();
        let result = match run(Command::Add, var, stdin.as_bytes()) {
            Answer::Success(Some(result)) => result,
            Answer::Success(None) => return Err("ADD answered nothing".into()),
            Answer::Failure(error) => return Err(format!("ADD of {} failed: {error}", pod.name)),
        };
        let address = result["ips"][0]["address"].as_str().unwrap_or_default();
        let ip = address.split_once('/').map_or(address, |(ip, _)| ip).to_owned();
        rows.push(vec![pod.name.clone(), ip, request.node.name.clone()]);
    }
    let cli = crate::cli::Cli {
        ippools: Some(pools),
        data_dir: Some(data_dir),
        config: None,
        output: crate::cli::Format::Table,
        command: crate::cli::Command::Ippool {
            command: crate::cli::IppoolCommand::List,
        },
    };
    let table = crate::cli::run(&cli).map_err(|err| err.to_string())?;
    Ok(format!(
        "$ kubectl get po -l app=test-app -o wide\n{}\n$ kubectl get spiderippool\n{table}",
        render_table(&["NAME", "IP", "NODE"], &rows)
    ))
}
