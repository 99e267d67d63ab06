//! The plugin's cluster mode against a real API server: the seed through the node agent
//! (`ipam.agent_socket`), the plugin talking to the API directly (`ipam.kubeconfig`), and what
//! it answers when neither the agent nor the API server is there.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spiderpool_check::kit::apiserver::{
    allocated_counts, apply_seed, forget_earlier_pools, install_crds, kubeconfig, kubectl, node_yaml,
    pod_yaml, unique,
};
use spiderpool_check::kit::plugin::{Call, TempDir, plugin};

const SEED_TABLE: &str =
    "NAME            VERSION   SUBNET        ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT   DISABLE
test-ippool-6   4         10.6.0.0/16   1                    10               false     false
test-ippool-7   4         10.7.0.0/16   1                    10               false     false
";

/// `spiderpool agent` on a socket in `dir`, killed when dropped.
struct Agent {
    child: Child,
    socket: std::path::PathBuf,
}

impl Agent {
    fn start(dir: &TempDir, kubeconfig: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new(plugin())
            .args(["agent", "--socket"])
            .arg(&socket)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .expect("the agent starts");
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the agent did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, socket }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `spiderpool controller`, killed when dropped: it keeps the pools' ALLOCATED-IP-COUNT.
struct Controller(Child);

impl Controller {
    fn start(kubeconfig: &Path) -> Controller {
        let child = Command::new(plugin())
            .args(["controller", "--count-interval-ms", "200", "--kubeconfig"])
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the controller starts");
        Controller(child)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `read` returns once it returns `expected`, or its last answer after 2 s (the bound
/// on how long ALLOCATED-IP-COUNT may lag the last allocation).
fn within_two_seconds(expected: &str, read: impl Fn() -> String) -> String {
    let started = Instant::now();
    loop {
        let got = read();
        if got == expected || started.elapsed() > Duration::from_secs(2) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A network configuration of the cluster mode: `ipam` is the `spiderpool` section given.
fn network(ipam: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": "macvlan-conf", "type": "macvlan", "master": "eth0", "ipam": ipam})
}

/// STATUS of a network of the cluster mode (STATUS exists from CNI 1.1.0 on).
fn status(ipam: Value) -> spiderpool_check::kit::plugin::Outcome {
    let mut config = network(ipam);
    config["cniVersion"] = json!("1.1.0");
    Call::runtime_wide("STATUS").config(&config).run()
}

fn uid(config: &Path, namespace: &str, pod: &str) -> String {
    kubectl(
        config,
        &[
            "get",
            "pod",
            "-n",
            namespace,
            pod,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        "",
    )
}

#[test]
fn the_seed_through_the_plugin_and_its_node_agent() {
    let Some(config) = kubeconfig("the_seed_through_the_plugin_and_its_node_agent") else {
        return;
    };
    apply_seed(&config);
    let dir = TempDir::new("cluster-agent");
    let agent = Agent::start(&dir, &config);
    let _controller = Controller::start(&config);
    let socket = agent.socket.to_str().expect("a UTF-8 path");
    let net = network(json!({"type": "spiderpool", "agent_socket": socket}));

    let mut results = Vec::new();
    for (pod, expected, gateway) in [
        ("test-app-j9ftl", "10.6.168.60/16", "10.6.0.1"),
        ("test-app-nkq5h", "10.7.168.60/16", "10.7.0.1"),
    ] {
        let uid = uid(&config, "default", pod);
        let add = Call::add(&format!("c-{pod}"), "eth0")
            .pod("default", pod, &uid)
            .config(&net);
        let result = add.run().expect_json("ADD through the agent");
        assert_eq!(result["ips"][0]["address"], expected, "{result}");
        assert_eq!(result["ips"][0]["gateway"], gateway, "{result}");
        assert!(
            result["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["dst"] == "0.0.0.0/0")),
            "a default route through the gateway: {result}"
        );
        // ADD again: the same address.
        assert_eq!(add.run().expect_json("ADD again")["ips"], result["ips"]);
        let mut checked = net.clone();
        checked["prevResult"] = result.clone();
        Call::check(&format!("c-{pod}"), "eth0")
            .pod("default", pod, &uid)
            .config(&checked)
            .run()
            .expect_silent("CHECK");
        results.push((pod, uid));
    }
    let table = within_two_seconds(SEED_TABLE, || {
        kubectl(
            &config,
            &["get", "spiderippool", "test-ippool-6", "test-ippool-7"],
            "",
        )
    });
    assert_eq!(table, SEED_TABLE);
    status(json!({"type": "spiderpool", "agent_socket": socket})).expect_silent("STATUS");

    for (pod, uid) in &results {
        let del = Call::del(&format!("c-{pod}"), "eth0")
            .pod("default", pod, uid)
            .config(&net);
        del.run().expect_silent("DEL");
        del.run().expect_silent("DEL again");
    }
    let counts = within_two_seconds("0\n0\n", || {
        allocated_counts(&config, &["test-ippool-6", "test-ippool-7"])
    });
    assert_eq!(counts, "0\n0\n");
}

#[test]
fn the_plugin_talks_to_the_api_directly_with_a_kubeconfig() {
    let Some(config) = kubeconfig("the_plugin_talks_to_the_api_directly_with_a_kubeconfig") else {
        return;
    };
    install_crds(&config);
    forget_earlier_pools(&config, "direct");
    let (namespace, node, pool) = (unique("direct"), unique("direct-node"), unique("direct-pool"));
    let objects = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n{}---\n\
         apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: {pool}\n  \
         labels:\n    spiderpool-test: direct\nspec:\n  subnet: 10.90.0.0/16\n  ips:\n  - 10.90.0.10-10.90.0.12\n  gateway: 10.90.0.1\n  nodeName:\n  - {node}\n---\n{}",
        node_yaml(&node, &[]),
        pod_yaml(
            &namespace,
            "web",
            &node,
            &[("ipam.spidernet.io/ippool", &format!(r#"{{"ipv4": ["{pool}"]}}"#))],
            &[]
        )
    );
    kubectl(&config, &["apply", "-f", "-"], &objects);
    let _controller = Controller::start(&config);
    let uid = uid(&config, &namespace, "web");
    let net = network(json!({"type": "spiderpool", "kubeconfig": config.to_str().expect("a UTF-8 path")}));
    let result = Call::add("c-web", "eth0")
        .pod(&namespace, "web", &uid)
        .config(&net)
        .run()
        .expect_json("ADD");
    assert_eq!(result["ips"][0]["address"], "10.90.0.10/16");
    let held = within_two_seconds("1\n", || allocated_counts(&config, &[&pool]));
    assert_eq!(held, "1\n");
    let endpoint = kubectl(
        &config,
        &[
            "get",
            "spiderendpoint",
            "-n",
            &namespace,
            "web",
            "-o",
            "jsonpath={.spec.ips[0].ipv4}",
        ],
        "",
    );
    assert_eq!(endpoint, "10.90.0.10/16");
    Call::del("c-web", "eth0")
        .pod(&namespace, "web", &uid)
        .config(&net)
        .run()
        .expect_silent("DEL");
    let held = within_two_seconds("0\n", || allocated_counts(&config, &[&pool]));
    assert_eq!(held, "0\n");
    kubectl(&config, &["delete", "spiderippool", &pool], "");
}

#[test]
fn without_agent_or_api_server_the_plugin_says_try_again() {
    let Some(config) = kubeconfig("without_agent_or_api_server_the_plugin_says_try_again") else {
        return;
    };
    let dir = TempDir::new("cluster-down");
    let nobody = dir.join("no-agent.sock");
    let add = |ipam: Value| {
        Call::add("c-down", "eth0")
            .pod("default", "down", "00000000-0000-0000-0000-00000000000d")
            .config(&network(ipam))
            .run()
    };
    let error = add(json!({"type": "spiderpool", "agent_socket": nobody.to_str().unwrap()}))
        .expect_error(11, "1.0.0", "no agent");
    assert!(error.msg.contains("does not answer"), "{}", error.outcome);

    // The kubeconfig of a server that is not running: same credentials, a closed port.
    let text = std::fs::read_to_string(&config).expect("the kubeconfig");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("its address").port();
    drop(closed);
    let mut yaml: serde_json::Value = serde_yaml_ng::from_str(&text).expect("kubeconfig YAML");
    for cluster in yaml["clusters"].as_array_mut().expect("clusters") {
        cluster["cluster"]["server"] = json!(format!("https://127.0.0.1:{port}"));
    }
    let down = dir.write("down.kubeconfig", serde_yaml_ng::to_string(&yaml).expect("YAML"));
    let error = add(json!({"type": "spiderpool", "kubeconfig": down.to_str().unwrap()})).expect_error(
        11,
        "1.0.0",
        "no API server",
    );
    assert!(error.msg.contains("kubernetes API"), "{}", error.outcome);
    status(json!({"type": "spiderpool", "kubeconfig": down.to_str().unwrap()})).expect_error(
        50,
        "1.1.0",
        "STATUS without an API server",
    );
}
