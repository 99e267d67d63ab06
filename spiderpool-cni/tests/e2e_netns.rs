//! End to end in network namespaces this test creates: the seed's two zones (node 1 on
//! 10.6.0.0/16, node 2 on 10.7.0.0/16, a router between them), pods attached by Debian's
//! `macvlan` and `bridge` plugins (/usr/lib/cni) with the real `spiderpool` binary as IPAM and
//! the seed's YAML unchanged; the pods ping each other across the zones, the CLI prints the
//! seed's table, DEL frees the addresses.
//!
//! Needs root and `containernetworking-plugins`; otherwise each test says why it is skipped
//! and passes. Traffic stays inside the test's namespaces; the namespaces are deleted by Drop
//! guards, also when an assertion fails.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use spiderpool_cni::demo::{TemporaryDir, network_config, pod_cni_args};
use spiderpool_cni::netns::{self, CniAttachment, CniCall, Namespace, Topology, Uplink};
use spiderpool_core::scenario::{NETWORK_ZONES_YAML, ScenarioPod, network_zones_pods};

/// The plugin binary under test.
const SPIDERPOOL: &str = env!("CARGO_BIN_EXE_spiderpool");

/// `kubectl get spiderippool` of the seed, once each pod holds its address.
const SEED_TABLE: &str = "\
NAME            VERSION   SUBNET        ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT   DISABLE
test-ippool-6   4         10.6.0.0/16   1                    10               false     false
test-ippool-7   4         10.7.0.0/16   1                    10               false     false
";

/// The same table once the pods are deleted.
const EMPTY_TABLE: &str = "\
NAME            VERSION   SUBNET        ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT   DISABLE
test-ippool-6   4         10.6.0.0/16   0                    10               false     false
test-ippool-7   4         10.7.0.0/16   0                    10               false     false
";

/// Whether the test can run; prints why not, in one line, when it cannot.
fn can_run(test: &str, plugin: &str) -> bool {
    match netns::prerequisites("this test", &[plugin]) {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("skipped {test}: {reason}");
            false
        }
    }
}

/// A namespace prefix unique to this process and test, short enough for `ip netns`.
fn prefix(tag: &str) -> String {
    format!("sp{}{tag}", std::process::id())
}

/// The namespaces that exist now with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    netns::list_namespaces()
        .expect("ip netns list")
        .into_iter()
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .collect()
}

/// The seed's files and where plugins find `spiderpool`.
struct Scenario {
    _dir: TemporaryDir,
    pools: PathBuf,
    data_dir: PathBuf,
    cni_path: String,
}

impl Scenario {
    fn new(tag: &str) -> Scenario {
        let dir = TemporaryDir::new(&format!("spiderpool-e2e-{tag}")).expect("temporary directory");
        let pools = dir.path().join("ippools.yaml");
        std::fs::write(&pools, NETWORK_ZONES_YAML).expect("writing the pool YAML");
        let data_dir = dir.path().join("state");
        let bin_dir = Path::new(SPIDERPOOL).parent().expect("the binary's directory");
        Scenario {
            _dir: dir,
            pools,
            data_dir,
            cni_path: netns::cni_path(bin_dir),
        }
    }

    /// Runs the CLI with this scenario's pools and state; panics with its output on failure.
    fn cli(&self, args: &[&str]) -> String {
        let output = spiderpool(args, &self.pools, &self.data_dir);
        assert!(
            output.status.success(),
            "spiderpool {args:?} failed ({}): stdout {} stderr {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// The network configuration of `pod` for `plugin` (`macvlan` on the node's `eth0`, or
    /// `bridge` on its [`netns::BRIDGE`]).
    fn config(&self, pod: &ScenarioPod, plugin: &str) -> Value {
        let request = &pod.request;
        let annotation = &request.pod.annotations["ipam.spidernet.io/ippool"];
        let mut config = network_config(
            "1.0.0",
            &self.pools,
            &self.data_dir,
            &request.node.name,
            annotation,
        );
        if plugin == "bridge" {
            let object = config.as_object_mut().expect("an object");
            object.remove("master");
            object.remove("mode");
            object.insert("name".into(), json!("bridge-conf"));
            object.insert("type".into(), json!("bridge"));
            object.insert("bridge".into(), json!(netns::BRIDGE));
        }
        config
    }

    /// The CNI facts of `pod` attached in `namespace`.
    fn call(&self, pod: &ScenarioPod, namespace: &Namespace) -> CniCall {
        CniCall {
            container_id: pod.request.container_id.clone(),
            netns: namespace.path(),
            ifname: "eth0".into(),
            args: pod_cni_args(&pod.request),
            cni_path: self.cni_path.clone(),
        }
    }
}

/// Runs `spiderpool ARGS --ippools POOLS --data-dir STATE`.
fn spiderpool(args: &[&str], pools: &Path, data_dir: &Path) -> Output {
    Command::new(SPIDERPOOL)
        .args(args)
        .arg("--ippools")
        .arg(pools)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("CNI_COMMAND")
        .output()
        .expect("running spiderpool")
}

/// The zone's pool range: 10.6.168.60-69 on node 1, 10.7.168.60-69 on node 2.
fn zone_range(zone: usize) -> std::ops::RangeInclusive<Ipv4Addr> {
    let second = [6, 7][zone];
    Ipv4Addr::new(10, second, 168, 60)..=Ipv4Addr::new(10, second, 168, 69)
}

/// Attaches both pods through `plugin`, checks their addresses and routes, pings across the
/// zones both ways, and checks the CLI's table; returns the attachments (DEL on drop).
fn attach_and_ping<'t>(scenario: &Scenario, topology: &'t Topology, plugin: &str) -> Vec<CniAttachment<'t>> {
    let pods = network_zones_pods();
    let mut attachments = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        let namespace = &topology.pods[index];
        let attachment = CniAttachment::add(
            &topology.nodes[index],
            plugin,
            scenario.call(pod, namespace),
            scenario.config(pod, plugin),
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let address = attachment.address().unwrap_or_else(|err| panic!("{err}"));
        let IpAddr::V4(v4) = address else {
            panic!("{} got {address}, not IPv4", pod.name)
        };
        assert!(
            zone_range(index).contains(&v4),
            "{} on {} got {address}, outside its zone's pool {:?}; result {}",
            pod.name,
            pod.request.node.name,
            zone_range(index),
            attachment.result()
        );
        let gateway = topology.zones[index]
            .gateway
            .split('/')
            .next()
            .unwrap_or_default();
        assert_eq!(
            attachment.result()["ips"][0]["gateway"],
            json!(gateway),
            "the result carries the pool's gateway: {}",
            attachment.result()
        );
        let assigned = namespace
            .ipv4_addresses("eth0")
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            assigned,
            vec![format!("{address}/16")],
            "eth0 in {} carries the allocated address",
            namespace.name()
        );
        assert_eq!(
            namespace.default_gateway().unwrap_or_else(|err| panic!("{err}")),
            Some(gateway.to_owned()),
            "{} routes by default through its zone's gateway",
            namespace.name()
        );
        attachment.check().unwrap_or_else(|err| panic!("{err}"));
        attachments.push(attachment);
    }
    let addresses: Vec<IpAddr> = attachments
        .iter()
        .map(|a| a.address().expect("address"))
        .collect();
    assert_ne!(addresses[0], addresses[1]);
    for (from, to) in [(0, 1), (1, 0)] {
        let report = topology.pods[from]
            .ping(addresses[to])
            .unwrap_or_else(|err| panic!("{} cannot reach {}: {err}", pods[from].name, pods[to].name));
        assert!(
            report.summary.contains("packets transmitted") && !report.summary.contains(" 0 received"),
            "ping from {} to {}: {report:?}",
            pods[from].name,
            pods[to].name
        );
    }
    assert_eq!(scenario.cli(&["ippool", "list"]), SEED_TABLE);
    attachments
}

/// Deletes both pods: the addresses are free again, the interfaces gone, and a second DEL
/// succeeds.
fn delete_and_check(scenario: &Scenario, topology: &Topology, attachments: &mut [CniAttachment<'_>]) {
    for (index, attachment) in attachments.iter_mut().enumerate() {
        attachment.delete().unwrap_or_else(|err| panic!("{err}"));
        assert!(
            !topology.pods[index].has_link("eth0"),
            "DEL removes eth0 from {}",
            topology.pods[index].name()
        );
    }
    assert_eq!(scenario.cli(&["ippool", "list"]), EMPTY_TABLE);
    for attachment in attachments.iter() {
        attachment
            .delete_again()
            .unwrap_or_else(|err| panic!("a second DEL must succeed: {err}"));
    }
    assert_eq!(scenario.cli(&["ippool", "list"]), EMPTY_TABLE);
}

#[test]
fn macvlan_pods_get_their_zone_address_and_reach_each_other() {
    let test = "macvlan_pods_get_their_zone_address_and_reach_each_other";
    if !can_run(test, "macvlan") {
        return;
    }
    let prefix = prefix("m");
    let scenario = Scenario::new("macvlan");
    let topology =
        Topology::build(&prefix, &netns::network_zones(), Uplink::Eth0).unwrap_or_else(|err| panic!("{err}"));
    let mut attachments = attach_and_ping(&scenario, &topology, "macvlan");

    let show = scenario.cli(&["ippool", "show", "test-ippool-6"]);
    let pod = &network_zones_pods()[0];
    for expected in [
        "10.6.168.60",
        "default/test-app-j9ftl",
        pod.request.container_id.as_str(),
        "eth0",
    ] {
        assert!(show.contains(expected), "ippool show lacks {expected}: {show}");
    }

    delete_and_check(&scenario, &topology, &mut attachments);
    drop(attachments);
    drop(topology);
    assert_eq!(
        namespaces_with(&prefix),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}

#[test]
fn bridge_pods_reach_each_other_across_zones() {
    let test = "bridge_pods_reach_each_other_across_zones";
    if !can_run(test, "bridge") {
        return;
    }
    let prefix = prefix("b");
    let scenario = Scenario::new("bridge");
    let topology = Topology::build(&prefix, &netns::network_zones(), Uplink::Bridge)
        .unwrap_or_else(|err| panic!("{err}"));
    let mut attachments = attach_and_ping(&scenario, &topology, "bridge");
    delete_and_check(&scenario, &topology, &mut attachments);
    drop(attachments);
    drop(topology);
    assert_eq!(
        namespaces_with(&prefix),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}

#[test]
fn add_on_a_node_of_no_zone_fails_naming_every_candidate_and_leaves_nothing() {
    let test = "add_on_a_node_of_no_zone_fails_naming_every_candidate_and_leaves_nothing";
    if !can_run(test, "macvlan") {
        return;
    }
    let prefix = prefix("f");
    let scenario = Scenario::new("nozone");
    let topology = Topology::build(&prefix, &netns::network_zones()[..1], Uplink::Eth0)
        .unwrap_or_else(|err| panic!("{err}"));
    let mut pod = network_zones_pods().remove(0);
    pod.request.node.name = "edge-node-9".into();
    let call = scenario.call(&pod, &topology.pods[0]);
    let config = scenario.config(&pod, "macvlan");
    let error = CniAttachment::add(&topology.nodes[0], "macvlan", call.clone(), config.clone())
        .expect_err("ADD on a node no pool serves must fail");
    let text = error.to_string();
    let netns::NetnsError::Failed { stdout, .. } = &error else {
        panic!("expected the plugin's error, got {text}")
    };
    let answer: Value = serde_json::from_str(stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    assert_eq!(answer["code"], json!(100), "{answer}");
    let details = format!("{} {}", answer["msg"], answer["details"]);
    for expected in ["edge-node-9", "test-ippool-6", "test-ippool-7"] {
        assert!(details.contains(expected), "the error lacks {expected}: {answer}");
    }
    assert_eq!(
        scenario.cli(&["ippool", "list"]),
        EMPTY_TABLE,
        "a failed ADD holds nothing"
    );
    // Debian's macvlan (1.1.1) leaves its eth0 behind when the IPAM fails (its cleanup checks
    // a shadowed `err`); the runtime's DEL after a failed ADD removes it, and must succeed.
    netns::cni_exec(&topology.nodes[0], "macvlan", "DEL", &call, &config)
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        !topology.pods[0].has_link("eth0"),
        "DEL after the failed ADD leaves no eth0"
    );
    assert_eq!(scenario.cli(&["ippool", "list"]), EMPTY_TABLE);
    drop(topology);
    assert_eq!(
        namespaces_with(&prefix),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}

#[test]
fn a_failing_build_deletes_what_it_built() {
    let test = "a_failing_build_deletes_what_it_built";
    if !can_run(test, "macvlan") {
        return;
    }
    let prefix = prefix("t");
    // The last namespace of the build already exists: the build fails there.
    let squatter = Namespace::create(&format!("{prefix}-pod2")).unwrap_or_else(|err| panic!("{err}"));
    let error = Topology::build(&prefix, &netns::network_zones(), Uplink::Eth0)
        .expect_err("the build must fail on the existing namespace");
    let text = error.to_string();
    assert!(
        text.contains(&format!("creating network namespace {prefix}-pod2")) && text.contains("exists"),
        "the error names the step and ip's output: {text}"
    );
    assert_eq!(namespaces_with(&prefix), vec![format!("{prefix}-pod2")]);
    drop(squatter);
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
}

#[test]
fn demo_network_zones_netns_prints_the_tables_and_the_pings() {
    let test = "demo_network_zones_netns_prints_the_tables_and_the_pings";
    if !can_run(test, "macvlan") {
        return;
    }
    let child = Command::new(SPIDERPOOL)
        .args(["demo", "network-zones", "--netns"])
        .env_remove("CNI_COMMAND")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running spiderpool demo network-zones --netns");
    let pid = child.id();
    let output = child.wait_with_output().expect("waiting for the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed ({}): stdout {stdout} stderr {stderr}",
        output.status
    );
    for expected in [
        "NAME             IP            NODE\n\
         test-app-j9ftl   10.6.168.60   controller-node-1\n\
         test-app-nkq5h   10.7.168.60   worker-node-1\n",
        SEED_TABLE,
        EMPTY_TABLE,
        "ping -c 3 10.7.168.60",
        "ping -c 3 10.6.168.60",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo's output lacks {expected:?}: {stdout}"
        );
    }
    let summaries: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("packets transmitted"))
        .collect();
    assert_eq!(summaries.len(), 2, "two pings: {stdout}");
    assert!(
        summaries.iter().all(|l| !l.contains(" 0 received")),
        "both pings answered: {stdout}"
    );
    assert_eq!(
        namespaces_with(&format!("sp{pid}")),
        Vec::<String>::new(),
        "the demo left namespaces"
    );
}

#[test]
fn demo_network_zones_netns_without_root_says_it_needs_root() {
    let mut command = if netns::is_root() {
        // Drop to nobody for the run.
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", SPIDERPOOL]);
        command
    } else {
        Command::new(SPIDERPOOL)
    };
    command
        .args(["demo", "network-zones", "--netns"])
        .env_remove("CNI_COMMAND")
        .current_dir("/");
    let output = match command.output() {
        Ok(output) => output,
        Err(err) => {
            eprintln!("skipped demo_network_zones_netns_without_root_says_it_needs_root: setpriv: {err}");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.starts_with("setpriv:") {
        eprintln!(
            "skipped demo_network_zones_netns_without_root_says_it_needs_root: nobody cannot run \
             {SPIDERPOOL}: {}",
            stderr.trim()
        );
        return;
    }
    assert_eq!(output.status.code(), Some(1), "stderr {stderr}");
    assert!(stderr.contains("needs root"), "stderr {stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout");
}
