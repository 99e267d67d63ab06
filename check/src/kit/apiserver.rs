//! The real API server of the tests: the one `scripts/k8s-testenv.sh` started, named by
//! `SPIDERPOOL_TEST_KUBECONFIG`, driven with the real `kubectl` and kube-rs, and the objects
//! the cluster tests create on it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The kubeconfig of the test API server, or `None` (with the reason printed) when the test
/// command did not start one.
pub fn kubeconfig(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SPIDERPOOL_TEST_KUBECONFIG") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            eprintln!(
                "skipping {test}: no API server; run `bash scripts/test.sh`, which starts one and sets \
                 SPIDERPOOL_TEST_KUBECONFIG"
            );
            None
        }
    }
}

/// A client of the server `kubeconfig` names.
pub async fn client(kubeconfig: &Path) -> Client {
    let file =
        Kubeconfig::read_from(kubeconfig).unwrap_or_else(|err| panic!("{}: {err}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|err| panic!("{}: {err}", kubeconfig.display()));
    Client::try_from(config).expect("a client from the test kubeconfig")
}

/// Runs `kubectl --kubeconfig K args...` with `stdin`; panics with its output when it fails.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> String {
    try_kubectl(kubeconfig, args, stdin).unwrap_or_else(|failure| panic!("{failure}"))
}

/// `status.allocatedIPCount` of each of `pools`, one per line in the order given, as
/// `kubectl get spiderippool` reads it.
pub fn allocated_counts(kubeconfig: &Path, pools: &[&str]) -> String {
    let mut args = vec!["get", "spiderippool"];
    args.extend_from_slice(pools);
    args.extend(["-o", "custom-columns=N:.status.allocatedIPCount", "--no-headers"]);
    kubectl(kubeconfig, &args, "")
}

/// Runs `kubectl --kubeconfig K args...` with `stdin`: its stdout, or what it said on failure.
pub fn try_kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("kubectl: {err}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("writing kubectl's stdin");
    let output = child.wait_with_output().expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "kubectl {}: {}\n{stdout}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Applies `deploy/crds/` and `deploy/admission/`, and waits until the server serves the
/// resources and defaults `spec.ipVersion`.
pub fn install_crds(kubeconfig: &Path) {
    for dir in ["deploy/crds", "deploy/admission"] {
        let path = repo().join(dir);
        let path = path.to_str().expect("a UTF-8 path");
        kubectl(
            kubeconfig,
            &["apply", "--server-side", "--force-conflicts", "-f", path],
            "",
        );
    }
    let crds = repo().join("deploy/crds");
    let crds = crds.to_str().expect("a UTF-8 path");
    let established = [
        "wait",
        "--for",
        "condition=Established",
        "--timeout",
        "60s",
        "-f",
        crds,
    ];
    kubectl(kubeconfig, &established, "");
    // The policy takes effect once the server's policy informer has it.
    let probe = "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata: {name: probe}\n\
                 spec: {subnet: 10.255.0.0/16, ips: [10.255.0.1]}\n";
    let dry_run = [
        "create",
        "--dry-run=server",
        "-o",
        "jsonpath={.spec.ipVersion}",
        "-f",
        "-",
    ];
    // Until then, or until the new resource is in the server's discovery ("resource kind not
    // found" right after Established), the probe fails or comes back without the version.
    let mut last = Ok(String::new());
    for _ in 0..300 {
        last = try_kubectl(kubeconfig, &dry_run, probe);
        if last.as_deref() == Ok("4") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("deploy/admission: spec.ipVersion is still not defaulted after 30 s: {last:?}");
}

/// A node object (no kubelet: the IPAM only reads its name and labels).
pub fn node_yaml(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("\n    {k}: \"{v}\""))
        .collect();
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:{}\n",
        if labels.is_empty() {
            " {}".to_owned()
        } else {
            labels
        }
    )
}

/// A pod object bound to `node` (nothing runs it: the IPAM only reads it).
pub fn pod_yaml(
    namespace: &str,
    name: &str,
    node: &str,
    annotations: &[(&str, &str)],
    labels: &[(&str, &str)],
) -> String {
    let map = |pairs: &[(&str, &str)]| -> String {
        if pairs.is_empty() {
            " {}".into()
        } else {
            pairs
                .iter()
                .map(|(k, v)| format!("\n    {k}: {}", serde_json::to_string(v).expect("a string")))
                .collect()
        }
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:{}\n  labels:{}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: app\n    image: nginx\n",
        map(annotations),
        map(labels)
    )
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// The seed of the network-zones scenario on the server, from scratch: its two pools applied
/// unchanged, its two nodes, and its DaemonSet's pod on each node with the template's
/// annotation and label. Only the tests that use this touch the seed's names.
pub fn apply_seed(kubeconfig: &Path) {
    use spiderpool_core::scenario::{NETWORK_ZONES_ANNOTATION, NETWORK_ZONES_YAML, network_zones_pods};
    install_crds(kubeconfig);
    let pods = network_zones_pods();
    let pools = [
        "delete",
        "spiderippool",
        "test-ippool-6",
        "test-ippool-7",
        "--ignore-not-found",
    ];
    kubectl(kubeconfig, &pools, "");
    let mut delete_pods = vec![
        "delete",
        "pod",
        "--ignore-not-found",
        "--grace-period=0",
        "--force",
    ];
    delete_pods.extend(pods.iter().map(|pod| pod.name.as_str()));
    kubectl(kubeconfig, &delete_pods, "");
    kubectl(kubeconfig, &["apply", "-f", "-"], NETWORK_ZONES_YAML);
    let objects: Vec<String> = pods
        .iter()
        .flat_map(|pod| {
            let node = &pod.request.node.name;
            let annotations = [("ipam.spidernet.io/ippool", NETWORK_ZONES_ANNOTATION)];
            [
                node_yaml(node, &[]),
                pod_yaml("default", &pod.name, node, &annotations, &[("app", "test-app")]),
            ]
        })
        .collect();
    kubectl(kubeconfig, &["apply", "-f", "-"], &objects.join("---\n"));
}

/// Deletes the pools an earlier run of `test` left on a reused server: they carry the label
/// `spiderpool-test: <test>`, and their addresses would overlap this run's.
pub fn forget_earlier_pools(kubeconfig: &Path, test: &str) {
    let label = format!("spiderpool-test={test}");
    kubectl(
        kubeconfig,
        &["delete", "spiderippool", "-l", &label, "--ignore-not-found"],
        "",
    );
}

/// Waits until a validating webhook just registered is in effect: the API server takes a
/// registration up a moment after it is stored. `invalid` is an object the webhook refuses;
/// server-side dry runs of it are tried (nothing is stored meanwhile) until one is refused.
/// Returns that refusal.
pub fn wait_for_webhook(kubeconfig: &Path, invalid: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        match try_kubectl(kubeconfig, &["create", "--dry-run=server", "-f", "-"], invalid) {
            Err(refusal) if refusal.contains("denied the request") => return refusal,
            outcome => assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the webhook was not in effect within 30 s: {outcome:?}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
