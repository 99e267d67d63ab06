//! The plugin driven by a real CNI client: libcni's `cnitool` (path in `CNITOOL`, built by
//! `scripts/install-cnitool.sh`, which the test command runs) with a 1.1.0 network
//! configuration list whose single plugin is `spiderpool` itself, so that ADD, CHECK, DEL, GC
//! and STATUS all reach it, in network namespaces the tests create (as root) and always delete.
//!
//! Without `CNITOOL` the tests say they are skipped and pass: the test command always sets it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use spiderpool_check::kit::documents::pool;
use spiderpool_check::kit::plugin::{Allocation, Call, Fixture, IPPOOL, NODE_2, SEED_ANNOTATION, plugin};

/// Where libcni caches ADD results (`libcni.CacheDir`); cnitool has no option to move it.
const CNI_CACHE: &str = "/var/lib/cni/results";

/// The cnitool to use, or `None` (after saying so) when `CNITOOL` is not set.
fn cnitool() -> Option<PathBuf> {
    let Some(path) = std::env::var_os("CNITOOL").filter(|p| !p.is_empty()) else {
        eprintln!(
            "SKIPPED: CNITOOL is not set. scripts/test.sh sets it from `bash scripts/install-cnitool.sh`; \
             run that, then CNITOOL=<its output> cargo test --test cnitool"
        );
        return None;
    };
    let path = PathBuf::from(path);
    assert!(path.is_file(), "CNITOOL={} is not a file", path.display());
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the cnitool tests create network namespaces and write libcni's cache in /var/lib/cni: run them as root \
         (CI does), or unset CNITOOL to skip them"
    );
    Some(path)
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = unique("spcni");
        let output = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("`ip` runs (iproute2)");
        assert!(
            output.status.success(),
            "ip netns add {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Netns { name }
    }

    /// The path runtimes pass as `CNI_NETNS`.
    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// What cnitool printed and how it exited.
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\n  {}\n  exit: {:?}\n  stdout: {}\n  stderr: {}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &Run {
        assert_eq!(self.code, Some(0), "expected success:{self}");
        self
    }

    #[track_caller]
    fn failed(&self, needles: &[&str]) -> &Run {
        assert_eq!(self.code, Some(1), "expected failure:{self}");
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr does not mention {needle:?}:{self}"
            );
        }
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| panic!("stdout is not JSON ({err}):{self}"))
    }
}

/// A network for cnitool: a conflist in its own NETCONFPATH, `CNI_PATH` holding a
/// `spiderpool` link to the binary under test, the fixture's pools and state. Removes
/// libcni's cache entries of the network when dropped.
struct Network {
    tool: PathBuf,
    fixture: Fixture,
    name: String,
    netconf_dir: PathBuf,
    cni_path: PathBuf,
}

impl Network {
    fn new(tool: PathBuf, fixture: Fixture, annotation: &str) -> Network {
        let name = unique("spiderpool-cnitool");
        let netconf_dir = fixture.dir.join("net.d");
        let cni_path = fixture.dir.join("bin");
        std::fs::create_dir_all(&netconf_dir).unwrap();
        std::fs::create_dir_all(&cni_path).unwrap();
        std::os::unix::fs::symlink(plugin(), cni_path.join("spiderpool")).unwrap();
        let conflist = json!({
            "cniVersion": "1.1.0",
            "name": name,
            "plugins": [{
                "type": "spiderpool",
                "ipam": {
                    "type": "spiderpool",
                    "ippools_path": fixture.pools,
                    "data_dir": fixture.data,
                    "node_name": NODE_2,
                },
                "args": {"cni": {"annotations": {IPPOOL: annotation}}},
            }],
        });
        std::fs::write(
            netconf_dir.join("10-spiderpool.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        Network {
            tool,
            fixture,
            name,
            netconf_dir,
            cni_path,
        }
    }

    /// `cnitool <verb> <network> <netns>`.
    fn run(&self, verb: &str, netns: &str) -> Run {
        let output = Command::new(&self.tool)
            .env_clear()
            .env("NETCONFPATH", &self.netconf_dir)
            .env("CNI_PATH", &self.cni_path)
            .args([verb, &self.name, netns])
            .output()
            .expect("cnitool runs");
        Run {
            what: format!("cnitool {verb} {} {netns}", self.name),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The network configuration the plugin receives, at 1.1.0, for calling it directly.
    fn plugin_config(&self) -> Value {
        let mut config = self.fixture.config("1.1.0", NODE_2, &[(IPPOOL, SEED_ANNOTATION)]);
        config["name"] = json!(self.name);
        config["type"] = json!("spiderpool");
        config
    }

    /// libcni's cache entries of this network.
    fn cached(&self) -> Vec<PathBuf> {
        let prefix = format!("{}-", self.name);
        std::fs::read_dir(CNI_CACHE)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for file in self.cached() {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// The container ID cnitool derived (from the netns path) for the holder of `address`.
fn cnitool_container(allocations: &[Allocation], address: &str) -> String {
    let held = allocations
        .iter()
        .find(|a| a.address == address)
        .unwrap_or_else(|| panic!("{address} is not allocated: {allocations:?}"));
    assert!(
        held.container.starts_with("cnitool-") && held.container.len() == "cnitool-".len() + 20,
        "cnitool's container ID is cnitool-<20 hex digits>: {held:?}"
    );
    held.container.clone()
}

#[test]
fn cnitool_add_check_status_and_del_reach_the_plugin() {
    let Some(tool) = cnitool() else { return };
    let network = Network::new(tool, Fixture::seed(), SEED_ANNOTATION);
    let pod = Netns::new();
    assert!(
        Path::new(&pod.path()).exists(),
        "ip netns add made {}",
        pod.path()
    );

    let add = network.run("add", &pod.path());
    let result = add.ok().json();
    assert_eq!(result["cniVersion"], json!("1.1.0"), "{add}");
    assert_eq!(
        result["ips"],
        json!([{"address": "10.7.168.60/16", "gateway": "10.7.0.1"}]),
        "the zone's pool address:{add}"
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.7.0.1"}]),
        "{add}"
    );
    let allocations = network.fixture.allocations();
    assert_eq!(allocations.len(), 1, "{allocations:?}");
    let container = cnitool_container(&allocations, "10.7.168.60");
    assert_eq!(allocations[0].interface, "eth0");
    assert_eq!(network.cached().len(), 1, "libcni cached the result");

    network.run("check", &pod.path()).ok();
    network.run("status", &pod.path()).ok();
    let again = network.run("add", &pod.path());
    assert_eq!(
        again.ok().json()["ips"],
        result["ips"],
        "a repeated ADD answers the same"
    );
    assert_eq!(network.fixture.allocations().len(), 1);

    network.run("del", &pod.path()).ok();
    assert_eq!(network.fixture.allocations(), vec![], "DEL released {container}");
    assert_eq!(
        network.cached(),
        Vec::<PathBuf>::new(),
        "libcni dropped its cache entry"
    );
    network.run("del", &pod.path()).ok();
}

#[test]
fn cnitool_check_fails_when_the_allocation_is_gone() {
    let Some(tool) = cnitool() else { return };
    let network = Network::new(tool, Fixture::seed(), SEED_ANNOTATION);
    let pod = Netns::new();
    network.run("add", &pod.path()).ok();
    let container = cnitool_container(&network.fixture.allocations(), "10.7.168.60");
    // Released behind the runtime's back.
    Call::del(&container, "eth0")
        .config(&network.plugin_config())
        .run()
        .expect_silent("DEL by hand");
    network
        .run("check", &pod.path())
        .failed(&["differs from prevResult", "10.7.168.60", &container]);
    network.run("del", &pod.path()).ok();
}

#[test]
fn cnitool_gc_deletes_cached_attachments_then_frees_every_other_allocation() {
    let Some(tool) = cnitool() else { return };
    let network = Network::new(tool, Fixture::seed(), SEED_ANNOTATION);
    let (a, b) = (Netns::new(), Netns::new());
    network.run("add", &a.path()).ok();
    network.run("add", &b.path()).ok();
    // An allocation the runtime does not know about (its cache was lost).
    Call::add("orphan", "eth0")
        .config(&network.plugin_config())
        .run()
        .expect_json("ADD by hand");
    assert_eq!(network.fixture.allocations().len(), 3);
    assert_eq!(network.cached().len(), 2);

    let gc = network.run("gc", &a.path());
    gc.ok();
    assert_eq!(
        network.fixture.allocations(),
        vec![],
        "cnitool gc: DEL of both cached attachments, then GC with no valid attachment:{gc}"
    );
    assert_eq!(network.cached(), Vec::<PathBuf>::new());
    network.run("status", &a.path()).ok();
}

#[test]
fn gc_with_valid_attachments_frees_exactly_the_unlisted_cnitool_attachments() {
    let Some(tool) = cnitool() else { return };
    let network = Network::new(tool, Fixture::seed(), SEED_ANNOTATION);
    let (a, b) = (Netns::new(), Netns::new());
    network.run("add", &a.path()).ok();
    network.run("add", &b.path()).ok();
    let allocations = network.fixture.allocations();
    let kept = cnitool_container(&allocations, "10.7.168.60");
    let dropped = cnitool_container(&allocations, "10.7.168.61");

    // GC as a runtime that knows only a's attachment sends it (libcni GCNetworkList with args).
    let mut config = network.plugin_config();
    let valid = json!([{"containerID": kept, "ifname": "eth0"}]);
    config["cni.dev/valid-attachments"] = valid.clone();
    config["cni.dev/attachments"] = valid;
    Call::runtime_wide("GC")
        .config(&config)
        .run()
        .expect_silent("GC with a's attachment valid");
    let left: Vec<(String, String)> = network
        .fixture
        .allocations()
        .into_iter()
        .map(|a| (a.container, a.address))
        .collect();
    assert_eq!(
        left,
        [(kept.clone(), "10.7.168.60".to_owned())],
        "only b ({dropped}) was freed"
    );

    network.run("check", &a.path()).ok();
    network
        .run("check", &b.path())
        .failed(&["differs from prevResult", &dropped]);
    network.run("del", &b.path()).ok();
    network.run("del", &a.path()).ok();
    assert_eq!(network.fixture.allocations(), vec![]);
}

#[test]
fn cnitool_status_and_add_fail_when_every_pool_is_full() {
    let Some(tool) = cnitool() else { return };
    let fixture = Fixture::with_pools(&pool(
        "tiny",
        "{subnet: 10.9.0.0/24, ips: [10.9.0.10], gateway: 10.9.0.1}",
    ));
    let network = Network::new(tool, fixture, r#"{"ipv4": ["tiny"]}"#);
    let (a, b) = (Netns::new(), Netns::new());
    network.run("status", &a.path()).ok();
    network.run("add", &a.path()).ok();
    network
        .run("status", &a.path())
        .failed(&["every IP pool is full"]);
    network
        .run("add", &b.path())
        .failed(&["no IP pool can serve", "tiny", "full: 1 of 1"]);
    assert_eq!(network.cached().len(), 1, "the failed ADD left no cache entry");
    network.run("del", &a.path()).ok();
    network.run("status", &a.path()).ok();
}
