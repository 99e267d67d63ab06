//! The `spiderpool` binary run as a container runtime runs it (one process per call, the CNI
//! environment, the network configuration on stdin), the CLI, temporary directories, the seed
//! scenario's pool file and network configurations, and views of the embedded store's state
//! (allocations through the CLI, the data directory's bytes).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spiderpool_cni::demo::network_config;

/// The `spiderpool` binary under test: `CARGO_BIN_EXE_spiderpool` when Cargo sets it for the
/// running test, else the binary Cargo builds for the plugin's integration tests in the
/// profile directory above the test executable (`target/debug/deps/TEST` →
/// `target/debug/spiderpool`).
pub fn plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_spiderpool") {
            return PathBuf::from(path);
        }
        let test = std::env::current_exe().expect("the test executable's path");
        let profile = test
            .parent()
            .and_then(Path::parent)
            .expect("a test executable in target/<profile>/deps");
        let binary = profile.join("spiderpool");
        assert!(
            binary.is_file(),
            "{} is missing: run the plugin's tests with `cargo test -p spiderpool-cni`, which builds it",
            binary.display()
        );
        binary
    })
}

/// The seed scenario's pool file (`reference/network-zones.md`), unchanged: `test-ippool-6`
/// (10.6.0.0/16, 10.6.168.60-69, gateway 10.6.0.1) pinned to `controller-node-1`, and
/// `test-ippool-7` (10.7.0.0/16, 10.7.168.60-69, gateway 10.7.0.1) pinned to `worker-node-1`.
pub const SEED_YAML: &str = spiderpool_core::scenario::NETWORK_ZONES_YAML;

/// The seed workload's `ipam.spidernet.io/ippool` annotation, as written in the seed.
pub const SEED_ANNOTATION: &str = spiderpool_core::scenario::NETWORK_ZONES_ANNOTATION;

/// The node of zone `subnet-6`.
pub const NODE_1: &str = "controller-node-1";
/// The node of zone `subnet-7`.
pub const NODE_2: &str = "worker-node-1";

/// `ipam.spidernet.io/ippool`.
pub const IPPOOL: &str = "ipam.spidernet.io/ippool";
/// `ipam.spidernet.io/ippools`.
pub const IPPOOLS: &str = "ipam.spidernet.io/ippools";
/// `ipam.spidernet.io/routes`.
pub const ROUTES: &str = "ipam.spidernet.io/routes";

/// Every CNI specification version the plugin speaks, oldest first.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How long one plugin call may take before the test gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A directory removed with everything in it when dropped: the library's own
/// [`spiderpool_cni::demo::TemporaryDir`], with helpers to place files in it.
pub struct TempDir(spiderpool_cni::demo::TemporaryDir);

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(label: &str) -> TempDir {
        let dir = spiderpool_cni::demo::TemporaryDir::new(&format!("spiderpool-{label}"))
            .unwrap_or_else(|err| panic!("creating a temporary directory for {label}: {err}"));
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        path
    }
}

/// A pool file and a data directory in a temporary directory: the state of one "node".
pub struct Fixture {
    /// Holds everything.
    pub dir: TempDir,
    /// `ipam.ippools_path`.
    pub pools: PathBuf,
    /// `ipam.data_dir`.
    pub data: PathBuf,
}

impl Fixture {
    /// The seed scenario's pools; no state yet.
    pub fn seed() -> Fixture {
        Fixture::with_pools(SEED_YAML)
    }

    /// A pool file holding `yaml`; no state yet.
    pub fn with_pools(yaml: &str) -> Fixture {
        let dir = TempDir::new("test");
        let pools = dir.write("ippools.yaml", yaml);
        let data = dir.join("data");
        Fixture { dir, pools, data }
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.data.join("state.db")
    }

    /// A network configuration of `version` for a pod on `node` naming `annotations`
    /// (pod annotations in `args.cni`), with the main plugin's own keys alongside.
    pub fn config(&self, version: &str, node: &str, annotations: &[(&str, &str)]) -> Value {
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let mut config = network_config(version, &self.pools, &self.data, node, "");
        config["args"] = json!({"cni": {"annotations": annotations}});
        config
    }

    /// The seed workload's configuration: the seed's annotation, a pod on `node`.
    pub fn seed_config(&self, version: &str, node: &str) -> Value {
        self.config(version, node, &[(IPPOOL, SEED_ANNOTATION)])
    }

    /// Every allocation in the store, as the CLI lists it (`ippool list`, then `ippool show`
    /// of each pool).
    pub fn allocations(&self) -> Vec<Allocation> {
        let pools = self.cli(&["ippool", "list", "-o", "json"]);
        let mut all = Vec::new();
        for row in pools.as_array().expect("ippool list -o json prints a list") {
            let name = row["name"].as_str().expect("every row has a name");
            let shown = self.cli(&["ippool", "show", name, "-o", "json"]);
            for entry in shown.as_array().expect("ippool show -o json prints a list") {
                let text = |key: &str| entry[key].as_str().map(str::to_owned);
                all.push(Allocation {
                    pool: name.to_owned(),
                    address: text("address").expect("every allocation has an address"),
                    container: text("container").unwrap_or_default(),
                    interface: text("interface").unwrap_or_default(),
                    pod: text("pod"),
                });
            }
        }
        all.sort();
        all
    }

    /// The `ALLOCATED-IP-COUNT` of every pool, by name, as `ippool list` reports it.
    pub fn allocated_counts(&self) -> BTreeMap<String, u64> {
        let pools = self.cli(&["ippool", "list", "-o", "json"]);
        pools
            .as_array()
            .expect("ippool list -o json prints a list")
            .iter()
            .map(|row| {
                (
                    row["name"].as_str().unwrap().to_owned(),
                    row["allocatedIpCount"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Runs the CLI on this fixture's pools and state; the output parsed as JSON.
    pub fn cli(&self, args: &[&str]) -> Value {
        cli(&self.pools, &self.data, args)
    }

    /// Every file of the data directory with its bytes.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::of(&self.data)
    }
}

/// One allocation as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allocation {
    /// The pool.
    pub pool: String,
    /// The address, without prefix.
    pub address: String,
    /// The container ID.
    pub container: String,
    /// The interface.
    pub interface: String,
    /// `namespace/name`, when the call carried the pod's name.
    pub pod: Option<String>,
}

/// The files below a directory and their bytes, to prove that a call changed nothing. A
/// rollback journal counts only by whether it holds a live transaction.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<PathBuf, Vec<u8>>);

impl Snapshot {
    /// Reads every file below `dir` (nothing when it does not exist).
    pub fn of(dir: &Path) -> Snapshot {
        fn walk(dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, files);
                } else if path.to_string_lossy().ends_with("-journal") {
                    // SQLite keeps its rollback journal between transactions (PERSIST) and
                    // zeroes its header when one ends: what counts is whether one is live.
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    let hot = bytes.starts_with(&[0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7]);
                    files.insert(
                        path.clone(),
                        if hot {
                            b"live transaction".to_vec()
                        } else {
                            Vec::new()
                        },
                    );
                } else {
                    files.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(dir, &mut files);
        Snapshot(files)
    }

    /// The files.
    pub fn files(&self) -> Vec<&Path> {
        self.0.keys().map(PathBuf::as_path).collect()
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (path, bytes) in &self.0 {
            let digest = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
            map.entry(path, &format!("{} bytes, fnv {digest:016x}", bytes.len()));
        }
        map.finish()
    }
}

/// One call of the plugin: `CNI_COMMAND` and the other variables, and stdin.
#[derive(Clone)]
pub struct Call {
    vars: Vec<(String, String)>,
    stdin: Vec<u8>,
}

impl Call {
    /// `command` with nothing else set.
    pub fn new(command: &str) -> Call {
        Call {
            vars: vec![("CNI_COMMAND".into(), command.into())],
            stdin: Vec::new(),
        }
    }

    /// ADD, CHECK or DEL of `container` on `ifname`, with a network namespace path.
    pub fn attachment(command: &str, container: &str, ifname: &str) -> Call {
        Call::new(command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", &format!("/var/run/netns/{container}"))
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/opt/cni/bin")
    }

    /// ADD of `container` on `ifname`.
    pub fn add(container: &str, ifname: &str) -> Call {
        Call::attachment("ADD", container, ifname)
    }

    /// DEL of `container` on `ifname`.
    pub fn del(container: &str, ifname: &str) -> Call {
        Call::attachment("DEL", container, ifname)
    }

    /// CHECK of `container` on `ifname`.
    pub fn check(container: &str, ifname: &str) -> Call {
        Call::attachment("CHECK", container, ifname)
    }

    /// GC or STATUS as libcni sends them: every variable set, the attachment ones empty.
    pub fn runtime_wide(command: &str) -> Call {
        Call::new(command)
            .env("CNI_CONTAINERID", "")
            .env("CNI_NETNS", "")
            .env("CNI_IFNAME", "")
            .env("CNI_ARGS", "")
            .env("CNI_PATH", "/opt/cni/bin")
    }

    /// Sets (or replaces) a variable.
    pub fn env(mut self, name: &str, value: &str) -> Call {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.into(), value.into()));
        self
    }

    /// Removes a variable.
    pub fn without(mut self, name: &str) -> Call {
        self.vars.retain(|(k, _)| k != name);
        self
    }

    /// `CNI_ARGS` for a pod: `IgnoreUnknown=1`, namespace, name and UID.
    pub fn pod(self, namespace: &str, name: &str, uid: &str) -> Call {
        let args =
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}");
        self.env("CNI_ARGS", &args)
    }

    /// The network configuration on stdin.
    pub fn config(mut self, config: &Value) -> Call {
        self.stdin = serde_json::to_vec(config).unwrap();
        self
    }

    /// Raw bytes on stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Call {
        self.stdin = bytes.into();
        self
    }

    /// Runs the plugin with exactly these variables (the test's environment is not passed
    /// on) and waits for it, at most [`CALL_TIMEOUT`].
    pub fn run(&self) -> Outcome {
        let mut child = Command::new(plugin())
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the plugin binary starts");
        let mut stdin = child.stdin.take().unwrap();
        let bytes = self.stdin.clone();
        let writer = thread::spawn(move || {
            // The plugin may answer without reading everything (VERSION): ignore EPIPE.
            let _ = stdin.write_all(&bytes);
        });
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stdout.read_to_end(&mut text);
            text
        });
        let err = thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            text
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the plugin") {
                break status;
            }
            if started.elapsed() > CALL_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish within {CALL_TIMEOUT:?}", self.describe());
            }
            thread::sleep(Duration::from_millis(1));
        };
        let _ = writer.join();
        Outcome {
            call: self.describe(),
            exit: status.code(),
            stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
            stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    fn describe(&self) -> String {
        let vars: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!(
            "spiderpool [{}] with stdin {}",
            vars.join(" "),
            String::from_utf8_lossy(&self.stdin)
        )
    }
}

/// What a plugin call printed and how it exited.
pub struct Outcome {
    /// The call, described.
    pub call: String,
    /// The exit code (`None` when killed by a signal).
    pub exit: Option<i32>,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// How long the call took.
    pub elapsed: Duration,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n  call: {}\n  exit: {:?}\n  stdout: {}\n  stderr: {}",
            self.call, self.exit, self.stdout, self.stderr
        )
    }
}

impl Outcome {
    /// Whether the call exited 0.
    pub fn success(&self) -> bool {
        self.exit == Some(0)
    }

    /// stdout as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not one JSON value ({err}):{self}"))
    }

    /// Asserts success with nothing on stdout (DEL, CHECK, GC, STATUS).
    #[track_caller]
    pub fn expect_silent(&self, what: &str) {
        assert!(self.success(), "{what}: expected success:{self}");
        assert_eq!(self.stdout.trim(), "", "{what}: expected no output:{self}");
    }

    /// Asserts success and returns stdout as JSON (ADD, VERSION).
    #[track_caller]
    pub fn expect_json(&self, what: &str) -> Value {
        assert!(self.success(), "{what}: expected success:{self}");
        self.json()
    }

    /// Asserts a CNI error: exit status 1, and stdout one JSON object with exactly the keys
    /// `cniVersion` (`version`), `code` (`code`), `msg` (a non-empty string) and, if present,
    /// `details` (a non-empty string). Returns the error.
    #[track_caller]
    pub fn expect_error(&self, code: u64, version: &str, what: &str) -> CniError {
        assert_eq!(self.exit, Some(1), "{what}: expected exit status 1:{self}");
        let error = self.json();
        let object = error
            .as_object()
            .unwrap_or_else(|| panic!("{what}: the error is not a JSON object:{self}"));
        for key in object.keys() {
            assert!(
                matches!(key.as_str(), "cniVersion" | "code" | "msg" | "details"),
                "{what}: unexpected key {key:?} in the error:{self}"
            );
        }
        assert_eq!(error["code"], json!(code), "{what}: wrong error code:{self}");
        assert_eq!(
            error["cniVersion"],
            json!(version),
            "{what}: wrong cniVersion in the error:{self}"
        );
        let msg = error["msg"].as_str().unwrap_or_default().to_owned();
        assert!(!msg.is_empty(), "{what}: msg must be a non-empty string:{self}");
        let details = match error.get("details") {
            None => String::new(),
            Some(Value::String(text)) if !text.is_empty() => text.clone(),
            Some(other) => panic!("{what}: details must be a non-empty string, found {other}:{self}"),
        };
        CniError {
            msg,
            details,
            outcome: self.to_string(),
        }
    }
}

/// A CNI error as the plugin printed it.
pub struct CniError {
    /// `msg`.
    pub msg: String,
    /// `details`, or empty.
    pub details: String,
    /// The whole call, for failure messages.
    pub outcome: String,
}

impl CniError {
    /// `msg` and `details` together.
    pub fn text(&self) -> String {
        format!("{} | {}", self.msg, self.details)
    }

    /// Asserts that `msg` or `details` mentions every one of `needles`.
    #[track_caller]
    pub fn mentions(&self, needles: &[&str], what: &str) -> &CniError {
        let text = self.text();
        for needle in needles {
            assert!(
                text.contains(needle),
                "{what}: the error does not mention {needle:?}:{}",
                self.outcome
            );
        }
        self
    }
}

/// The addresses (`address` fields) of an ADD result.
pub fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .map(|ip| ip["address"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the CLI (no `CNI_COMMAND`) on the pool file `pools` and the data directory `data`; it
/// must succeed and print JSON, which is returned parsed.
pub fn cli(pools: &Path, data: &Path, args: &[&str]) -> Value {
    let output = Command::new(plugin())
        .env_remove("CNI_COMMAND")
        .arg("--ippools")
        .arg(pools)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("the CLI runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "spiderpool {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("spiderpool {args:?}: {err}: {stdout}"))
}
