//! `spiderpool demo network-zones`: Spiderpool's network-zones scenario through the plugin
//! itself, on a store in a temporary directory; with `--netns`, through Debian's `macvlan`
//! plugin attaching real pods in network namespaces.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use spiderpool_core::Request;
use spiderpool_core::render_table;
use spiderpool_core::scenario::{NETWORK_ZONES_YAML, network_zones_pods};

use crate::cni::IpamConfig;
use crate::listing::{Format, Settings};
use crate::netns::{CniAttachment, CniCall, NetnsError, PingReport, Topology, Uplink};
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

/// `CNI_ARGS` of a scenario pod, as kubelet's runtime sends them.
pub fn pod_cni_args(request: &Request) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
        request.pod.namespace,
        request.pod.name,
        request.pod.uid.clone().unwrap_or_default()
    )
}

/// The scenario's files in a temporary directory: the pool YAML, unchanged, and the state
/// directory.
struct ScenarioFiles {
    dir: TemporaryDir,
    pools: PathBuf,
    data_dir: PathBuf,
}

impl ScenarioFiles {
    fn new(prefix: &str) -> Result<ScenarioFiles, String> {
        let dir = TemporaryDir::new(prefix).map_err(|err| format!("temporary directory: {err}"))?;
        let pools = dir.path().join("ippools.yaml");
        std::fs::write(&pools, NETWORK_ZONES_YAML).map_err(|err| format!("{}: {err}", pools.display()))?;
        let data_dir = dir.path().join("state");
        Ok(ScenarioFiles { dir, pools, data_dir })
    }

    /// `kubectl get spiderippool`, as `spiderpool ippool list` prints it.
    fn pool_table(&self) -> Result<String, String> {
        let settings = Settings {
            ipam: IpamConfig {
                plugin_type: "spiderpool".into(),
                ippools_path: Some(self.pools.clone()),
                data_dir: Some(self.data_dir.clone()),
                ..IpamConfig::default()
            },
            network: None,
        };
        crate::listing::pools(&settings, Format::Table).map_err(|err| format!("listing the pools: {err}"))
    }
}

/// The first address of an ADD result, without its prefix length.
fn result_ip(result: &Value) -> String {
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    address.split_once('/').map_or(address, |(ip, _)| ip).to_owned()
}

/// Runs the scenario: each DaemonSet pod is added through the plugin's ADD on its node, then
/// the pods and the pools are printed as the documentation shows them.
pub fn network_zones() -> Result<String, String> {
    let files = ScenarioFiles::new("spiderpool-demo")?;
    let mut rows = Vec::new();
    for pod in network_zones_pods() {
        let request = &pod.request;
        let annotation = &request.pod.annotations["ipam.spidernet.io/ippool"];
        let config = network_config(
            "1.0.0",
            &files.pools,
            &files.data_dir,
            &request.node.name,
            annotation,
        );
        let env = [
            ("CNI_CONTAINERID", request.container_id.clone()),
            ("CNI_NETNS", format!("/var/run/netns/{}", pod.name)),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_ARGS", pod_cni_args(request)),
        ];
        let var = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        let stdin = config.to_string();
        let result = match run("ADD", var, stdin.as_bytes()) {
            Answer::Success(Some(result)) => result,
            Answer::Success(None) => return Err("ADD answered nothing".into()),
            Answer::Failure(error) => return Err(format!("ADD of {} failed: {error}", pod.name)),
        };
        rows.push(vec![
            pod.name.clone(),
            result_ip(&result),
            request.node.name.clone(),
        ]);
    }
    let table = files.pool_table()?;
    Ok(format!(
        "$ kubectl get po -l app=test-app -o wide\n{}\n$ kubectl get spiderippool\n{table}",
        render_table(&["NAME", "IP", "NODE"], &rows)
    ))
}

/// `spiderpool demo network-zones [--netns]`: [`network_zones_netns`] with `netns`, else
/// [`network_zones`].
pub fn network_zones_demo(netns: bool) -> Result<String, String> {
    if netns {
        network_zones_netns()
    } else {
        network_zones()
    }
}

/// Runs the scenario with real interfaces (root only): the two zones in network namespaces
/// (a router with 10.6.0.1/16 and 10.7.0.1/16 between two node namespaces), each DaemonSet pod
/// attached in its own namespace by Debian's `macvlan` plugin on its node's `eth0` with this
/// binary as the IPAM, the pods pinging each other across the zones; then DEL and teardown,
/// also when a step fails.
pub fn network_zones_netns() -> Result<String, String> {
    let what = "spiderpool demo network-zones --netns";
    crate::netns::prerequisites(what, &["macvlan"]).map_err(show)?;
    let files = ScenarioFiles::new("spiderpool-netns-demo")?;
    let binary = std::env::current_exe().map_err(|err| format!("finding this program: {err}"))?;
    let ipam_dir = crate::netns::link_ipam_plugin(&files.dir.path().join("bin"), &binary).map_err(show)?;
    let cni_path = crate::netns::cni_path(&ipam_dir);
    let topology = Topology::build(
        &format!("sp{}", std::process::id()),
        &crate::netns::network_zones(),
        Uplink::Eth0,
    )
    .map_err(show)?;
    let pods = network_zones_pods();
    let mut attachments = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        let request = &pod.request;
        let annotation = &request.pod.annotations["ipam.spidernet.io/ippool"];
        let config = network_config(
            "1.0.0",
            &files.pools,
            &files.data_dir,
            &request.node.name,
            annotation,
        );
        let call = CniCall {
            container_id: request.container_id.clone(),
            netns: topology.pods[index].path(),
            ifname: request.interface.clone(),
            args: pod_cni_args(request),
            cni_path: cni_path.clone(),
        };
        attachments.push(CniAttachment::add(&topology.nodes[index], "macvlan", call, config).map_err(show)?);
    }
    let addresses = attachments
        .iter()
        .map(CniAttachment::address)
        .collect::<Result<Vec<_>, _>>()
        .map_err(show)?;
    let mut pings = Vec::new();
    for (from, to) in [(0, 1), (1, 0)] {
        let report = topology.pods[from].ping(addresses[to]).map_err(show)?;
        pings.push(ping_line(&pods[from].name, &pods[to].name, &report));
    }
    let rows: Vec<Vec<String>> = pods
        .iter()
        .zip(&attachments)
        .map(|(pod, attachment)| {
            vec![
                pod.name.clone(),
                result_ip(attachment.result()),
                pod.request.node.name.clone(),
            ]
        })
        .collect();
    let mut namespaces = vec![vec![
        topology.router.name().to_owned(),
        "router, forwarding".to_owned(),
        topology
            .zones
            .iter()
            .map(|zone| zone.gateway.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    ]];
    for (index, zone) in topology.zones.iter().enumerate() {
        namespaces.push(vec![
            topology.nodes[index].name().to_owned(),
            format!("node {}", zone.node),
            format!("eth0 {} (veth to the router)", zone.node_address),
        ]);
    }
    for (index, zone) in topology.zones.iter().enumerate() {
        namespaces.push(vec![
            topology.pods[index].name().to_owned(),
            format!("pod {}", pods[index].name),
            format!(
                "eth0 {} (macvlan on {}'s eth0)",
                attachments[index].result()["ips"][0]["address"]
                    .as_str()
                    .unwrap_or_default(),
                zone.node
            ),
        ]);
    }
    let table = files.pool_table()?;
    for attachment in &mut attachments {
        attachment.delete().map_err(show)?;
    }
    let after = files.pool_table()?;
    drop(attachments);
    drop(topology);
    Ok(format!(
        "network namespaces, pods attached by {}/macvlan with spiderpool as IPAM:\n{}\n\
         $ kubectl get po -l app=test-app -o wide\n{}\n$ kubectl get spiderippool\n{table}\n{}\n\
         after DEL of both pods:\n$ kubectl get spiderippool\n{after}\nnetwork namespaces deleted\n",
        crate::netns::PLUGIN_DIR,
        render_table(&["NAMESPACE", "ROLE", "INTERFACES"], &namespaces),
        render_table(&["NAME", "IP", "NODE"], &rows),
        pings.join("\n") + "\n",
    ))
}

fn show(error: NetnsError) -> String {
    error.to_string()
}

/// `$ kubectl exec FROM -- ping TO-IP` and ping's summary.
fn ping_line(from: &str, to: &str, report: &PingReport) -> String {
    format!(
        "$ kubectl exec {from} -- ping -c 3 {}   # {to}\n{}\n{}",
        report.target, report.summary, report.rtt
    )
}
