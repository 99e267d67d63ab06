//! Network namespaces for the end-to-end demo and tests: the two-zone topology of the
//! network-zones scenario (a router between two node namespaces, a pod namespace per node),
//! CNI plugins run inside a node namespace, and ping between pods.
//!
//! Everything lives in namespaces created here, named with a caller's prefix: every link is
//! created directly inside them (nothing in the host's namespace), so deleting the namespaces
//! removes everything. [`Namespace`] deletes its namespace when dropped and
//! [`CniAttachment`] runs the plugin's DEL when dropped, so a failing step still tears
//! everything down.
//!
//! This needs root, `ip` (iproute2), `ping` and the CNI plugins in [`PLUGIN_DIR`] (Debian's
//! `containernetworking-plugins`); [`prerequisites`] says what is missing.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

/// Where `ip netns add` puts the namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A step of building, using or tearing down the namespaces that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The process is not root.
    #[error(
        "{what} needs root: it creates network namespaces, veth pairs and CNI interfaces; \
         run it as root (sudo)"
    )]
    NotRoot {
        /// What needs root.
        what: String,
    },
    /// A program this needs is not installed.
    #[error("{what} needs {path}, which is missing: {hint}")]
    Missing {
        /// What needs it.
        what: String,
        /// The program.
        path: String,
        /// How to install it.
        hint: String,
    },
    /// A command could not be started.
    #[error("{step}: `{command}` could not start: {source}")]
    Spawn {
        /// What was being done.
        step: String,
        /// The command line.
        command: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// A command exited with a failure.
    #[error("{step}: `{command}` failed ({status}){}", show_output(.stdout, .stderr))]
    Failed {
        /// What was being done.
        step: String,
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stdout.
        stdout: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command answered something unexpected.
    #[error("{step}: {message}")]
    Unexpected {
        /// What was being done.
        step: String,
        /// What was wrong.
        message: String,
    },
}

fn show_output(stdout: &str, stderr: &str) -> String {
    let mut text = String::new();
    for (name, output) in [("stdout", stdout.trim()), ("stderr", stderr.trim())] {
        if !output.is_empty() {
            text.push_str(&format!("; {name}: {output}"));
        }
    }
    if text.is_empty() {
        text.push_str("; no output");
    }
    text
}

/// Whether the process runs with effective user ID 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|id| id == "0"))
        })
        .unwrap_or(false)
}

/// Checks what the namespaces need: root, `ip`, `ping`, and `plugins` (e.g. `macvlan`) in
/// [`PLUGIN_DIR`]. `what` names the caller in the error.
pub fn prerequisites(what: &str, plugins: &[&str]) -> Result<(), NetnsError> {
    if !is_root() {
        return Err(NetnsError::NotRoot { what: what.into() });
    }
    for plugin in plugins {
        let path = Path::new(PLUGIN_DIR).join(plugin);
        if !path.is_file() {
            return Err(NetnsError::Missing {
                what: what.into(),
                path: path.display().to_string(),
                hint: "install Debian's CNI plugins: apt-get install containernetworking-plugins".into(),
            });
        }
    }
    for (program, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        if find_program(program).is_none() {
            return Err(NetnsError::Missing {
                what: what.into(),
                path: program.into(),
                hint: format!("install it: apt-get install {package}"),
            });
        }
    }
    Ok(())
}

/// The first `program` on `PATH` (or in the usual system directories).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `program args...` with `stdin` and `env`, and returns its stdout; a failure names
/// `step`, the command line and everything it printed.
pub fn run(
    step: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Result<String, NetnsError> {
    let command_line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_error = |source| NetnsError::Spawn {
        step: step.into(),
        command: command_line.clone(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(NetnsError::Failed {
            step: step.into(),
            command: command_line,
            status: output.status.to_string(),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// A network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates the namespace `name` and brings its loopback up.
    pub fn create(name: &str) -> Result<Namespace, NetnsError> {
        run(
            &format!("creating network namespace {name}"),
            "ip",
            &["netns", "add", name],
            &[],
            None,
        )?;
        let namespace = Namespace { name: name.into() };
        namespace.ip(&format!("bringing lo up in {name}"), &["link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, what CNI calls `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, step: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run(step, "ip", &all, &[], None)
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`), with `env` and `stdin`.
    pub fn exec(
        &self,
        step: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Result<String, NetnsError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run(step, "ip", &all, env, stdin)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key_value: &str) -> Result<(), NetnsError> {
        self.exec(
            &format!("setting {key_value} in {}", self.name),
            "sysctl",
            &["-q", "-w", key_value],
            &[],
            None,
        )
        .map(drop)
    }

    /// The IPv4 addresses (CIDR) of `interface`, or an error naming the namespace.
    pub fn ipv4_addresses(&self, interface: &str) -> Result<Vec<String>, NetnsError> {
        let step = format!("reading the addresses of {interface} in {}", self.name);
        let text = self.ip(&step, &["-j", "-4", "address", "show", "dev", interface])?;
        let links: Value = serde_json::from_str(&text).map_err(|err| NetnsError::Unexpected {
            step: step.clone(),
            message: format!("`ip -j address` printed no JSON ({err}): {text}"),
        })?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|info| {
                Some(format!(
                    "{}/{}",
                    info["local"].as_str()?,
                    info["prefixlen"].as_u64()?
                ))
            })
            .collect())
    }

    /// The gateway of the IPv4 default route, if there is one.
    pub fn default_gateway(&self) -> Result<Option<String>, NetnsError> {
        let step = format!("reading the default route in {}", self.name);
        let text = self.ip(&step, &["-j", "-4", "route", "show", "default"])?;
        let routes: Value = serde_json::from_str(&text).map_err(|err| NetnsError::Unexpected {
            step: step.clone(),
            message: format!("`ip -j route` printed no JSON ({err}): {text}"),
        })?;
        Ok(routes
            .as_array()
            .and_then(|routes| routes.first())
            .and_then(|route| route["gateway"].as_str())
            .map(str::to_owned))
    }

    /// Whether `interface` exists in the namespace.
    pub fn has_link(&self, interface: &str) -> bool {
        self.ip("looking for a link", &["link", "show", "dev", interface])
            .is_ok()
    }

    /// Pings `address` from inside the namespace: three echo requests, 200 ms apart, one
    /// second of patience each. Succeeds when at least one reply came back.
    pub fn ping(&self, address: IpAddr) -> Result<PingReport, NetnsError> {
        let target = address.to_string();
        let output = self.exec(
            &format!("pinging {target} from {}", self.name),
            "ping",
            &["-n", "-c", "3", "-i", "0.2", "-W", "1", &target],
            &[],
            None,
        )?;
        let line = |needle: &str| {
            output
                .lines()
                .find(|line| line.contains(needle))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(PingReport {
            target: address,
            summary: line("packets transmitted"),
            rtt: line("min/avg/max"),
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) = run(
            &format!("deleting network namespace {}", self.name),
            "ip",
            &["netns", "del", &self.name],
            &[],
            None,
        ) {
            eprintln!("warning: {error}");
        }
    }
}

/// What ping printed for a successful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingReport {
    /// The address pinged.
    pub target: IpAddr,
    /// `3 packets transmitted, 3 received, 0% packet loss, time 402ms`.
    pub summary: String,
    /// `rtt min/avg/max/mdev = ...`.
    pub rtt: String,
}

/// One zone of the topology: the node's name and its segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The node's name (the plugin's `node_name`).
    pub node: String,
    /// The router's address on the segment, the pods' gateway, as CIDR.
    pub gateway: String,
    /// The node's own address on the segment, as CIDR.
    pub node_address: String,
}

/// The two zones of the network-zones scenario: `controller-node-1` on 10.6.0.0/16 and
/// `worker-node-1` on 10.7.0.0/16, with the nodes' INTERNAL-IPs of the documentation.
pub fn network_zones() -> Vec<Zone> {
    [
        ("controller-node-1", "10.6.0.1/16", "10.6.168.71/16"),
        ("worker-node-1", "10.7.0.1/16", "10.7.168.73/16"),
    ]
    .into_iter()
    .map(|(node, gateway, node_address)| Zone {
        node: node.into(),
        gateway: gateway.into(),
        node_address: node_address.into(),
    })
    .collect()
}

/// What a node namespace's `eth0` (its veth to the router) is plugged into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    /// Nothing: `eth0` carries the node's address and is the macvlan master.
    Eth0,
    /// A bridge named [`BRIDGE`], with `eth0` enslaved and the node's address on the bridge,
    /// for the `bridge` plugin.
    Bridge,
}

/// The bridge of [`Uplink::Bridge`].
pub const BRIDGE: &str = "br0";

/// The zones in namespaces: `PREFIX-router` with a leg `zoneN` per zone (the zone's gateway
/// address, forwarding on), `PREFIX-nodeN` with `eth0` (a veth to the router's `zoneN`), and
/// an empty `PREFIX-podN` per node for a CNI plugin to attach. Dropping it deletes them all.
#[derive(Debug)]
pub struct Topology {
    /// One pod namespace per zone, in the zones' order.
    pub pods: Vec<Namespace>,
    /// One node namespace per zone, in the zones' order.
    pub nodes: Vec<Namespace>,
    /// The router between the zones.
    pub router: Namespace,
    /// The zones.
    pub zones: Vec<Zone>,
}

impl Topology {
    /// Builds the namespaces. `prefix` makes the names unique (e.g. `sp<pid>`); what was built
    /// before a failing step is deleted again.
    ///
    /// A topology whose builder was killed (Ctrl-C during the demo) could not delete its
    /// namespaces; those, named `sp<pid>...-` after a process that no longer runs, are deleted
    /// first.
    pub fn build(prefix: &str, zones: &[Zone], uplink: Uplink) -> Result<Topology, NetnsError> {
        remove_abandoned_namespaces()?;
        let router = Namespace::create(&format!("{prefix}-router"))?;
        router.sysctl("net.ipv4.ip_forward=1")?;
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for (index, zone) in zones.iter().enumerate() {
            let number = index + 1;
            let node = Namespace::create(&format!("{prefix}-node{number}"))?;
            let leg = format!("zone{number}");
            router.ip(
                &format!("creating the veth {leg} (router) - eth0 ({})", node.name()),
                &[
                    "link",
                    "add",
                    &leg,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    node.name(),
                ],
            )?;
            router.ip(
                &format!("addressing the router's leg {leg}"),
                &["address", "add", &zone.gateway, "dev", &leg],
            )?;
            router.ip(&format!("bringing {leg} up"), &["link", "set", &leg, "up"])?;
            node.ip(
                &format!("bringing eth0 up in {}", node.name()),
                &["link", "set", "eth0", "up"],
            )?;
            let node_interface = match uplink {
                Uplink::Eth0 => "eth0",
                Uplink::Bridge => {
                    let step = format!("creating the bridge {BRIDGE} on eth0 in {}", node.name());
                    node.ip(&step, &["link", "add", BRIDGE, "type", "bridge"])?;
                    node.ip(&step, &["link", "set", "eth0", "master", BRIDGE])?;
                    node.ip(&step, &["link", "set", BRIDGE, "up"])?;
                    BRIDGE
                }
            };
            node.ip(
                &format!("addressing {node_interface} in {}", node.name()),
                &["address", "add", &zone.node_address, "dev", node_interface],
            )?;
            nodes.push(node);
            pods.push(Namespace::create(&format!("{prefix}-pod{number}"))?);
        }
        Ok(Topology {
            pods,
            nodes,
            router,
            zones: zones.to_vec(),
        })
    }

    /// The names of every namespace, router first.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(&self.router)
            .chain(&self.nodes)
            .chain(&self.pods)
            .map(|namespace| namespace.name().to_owned())
            .collect()
    }
}

/// Deletes the namespaces of topologies whose builder process is gone: names `sp<pid><tag>-<role>`
/// (role `router`, `node<n>` or `pod<n>`) where no process `pid` runs.
fn remove_abandoned_namespaces() -> Result<(), NetnsError> {
    for name in list_namespaces()? {
        if let Some(pid) = builder_pid(&name)
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            drop(Namespace { name });
        }
    }
    Ok(())
}

/// The builder's pid in a topology namespace's name, `None` for any other name.
fn builder_pid(name: &str) -> Option<u32> {
    let (prefix, role) = name.strip_prefix("sp")?.split_once('-')?;
    let numbered = |stem: &str| {
        role.strip_prefix(stem)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if role != "router" && !numbered("node") && !numbered("pod") {
        return None;
    }
    let digits = prefix.bytes().take_while(u8::is_ascii_digit).count();
    let tag = &prefix[digits..];
    if !tag.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    prefix[..digits].parse().ok()
}

/// The names of the network namespaces that exist now (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>, NetnsError> {
    let text = run("listing network namespaces", "ip", &["netns", "list"], &[], None)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The CNI facts of one attachment besides the network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniCall {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`: where the plugin finds its IPAM plugin.
    pub cni_path: String,
}

/// Runs the CNI plugin `PLUGIN_DIR/plugin_type` inside `node` with `command` (ADD, DEL,
/// CHECK) and `config` on stdin; returns what it printed, parsed, if anything.
pub fn cni_exec(
    node: &Namespace,
    plugin_type: &str,
    command: &str,
    call: &CniCall,
    config: &Value,
) -> Result<Option<Value>, NetnsError> {
    let plugin = Path::new(PLUGIN_DIR).join(plugin_type);
    let plugin = plugin.to_string_lossy();
    let netns = call.netns.to_string_lossy();
    let step = format!(
        "CNI {command} of {} ({}) through {plugin_type} in {}",
        call.container_id,
        netns,
        node.name()
    );
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", call.container_id.as_str()),
        ("CNI_NETNS", &netns),
        ("CNI_IFNAME", call.ifname.as_str()),
        ("CNI_ARGS", call.args.as_str()),
        ("CNI_PATH", call.cni_path.as_str()),
    ];
    let stdin = config.to_string();
    let output = node.exec(&step, &plugin, &[], &env, Some(stdin.as_bytes()))?;
    if output.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&output)
        .map(Some)
        .map_err(|err| NetnsError::Unexpected {
            step,
            message: format!("the plugin printed no JSON ({err}): {output}"),
        })
}

/// An attachment made by a CNI ADD, released by DEL when dropped (unless [`delete`]d
/// before).
///
/// [`delete`]: CniAttachment::delete
#[derive(Debug)]
pub struct CniAttachment<'a> {
    node: &'a Namespace,
    plugin_type: String,
    call: CniCall,
    config: Value,
    result: Value,
    deleted: bool,
}

impl<'a> CniAttachment<'a> {
    /// Runs ADD through `plugin_type` inside `node`.
    pub fn add(
        node: &'a Namespace,
        plugin_type: &str,
        call: CniCall,
        config: Value,
    ) -> Result<CniAttachment<'a>, NetnsError> {
        let result =
            cni_exec(node, plugin_type, "ADD", &call, &config)?.ok_or_else(|| NetnsError::Unexpected {
                step: format!("CNI ADD of {} through {plugin_type}", call.container_id),
                message: "the plugin printed no result".into(),
            })?;
        Ok(CniAttachment {
            node,
            plugin_type: plugin_type.into(),
            call,
            config,
            result,
            deleted: false,
        })
    }

    /// The ADD result.
    pub fn result(&self) -> &Value {
        &self.result
    }

    /// The first address of the ADD result, without its prefix length.
    pub fn address(&self) -> Result<IpAddr, NetnsError> {
        let text = self.result["ips"][0]["address"].as_str().unwrap_or_default();
        let ip = text.split_once('/').map_or(text, |(ip, _)| ip);
        ip.parse().map_err(|_| NetnsError::Unexpected {
            step: format!("reading the ADD result of {}", self.call.container_id),
            message: format!("no address in ips[0]: {}", self.result),
        })
    }

    /// The network configuration with the ADD result as `prevResult`, as a runtime passes it
    /// to CHECK and DEL.
    fn with_prev_result(&self) -> Value {
        let mut config = self.config.clone();
        config["prevResult"] = self.result.clone();
        config
    }

    /// Runs CHECK with the ADD result as `prevResult`.
    pub fn check(&self) -> Result<(), NetnsError> {
        cni_exec(
            self.node,
            &self.plugin_type,
            "CHECK",
            &self.call,
            &self.with_prev_result(),
        )
        .map(drop)
    }

    /// Runs DEL (with the ADD result as `prevResult`); dropping then does nothing more.
    pub fn delete(&mut self) -> Result<(), NetnsError> {
        self.deleted = true;
        self.delete_again()
    }

    /// Runs DEL (again), as runtimes may: it must succeed.
    pub fn delete_again(&self) -> Result<(), NetnsError> {
        cni_exec(
            self.node,
            &self.plugin_type,
            "DEL",
            &self.call,
            &self.with_prev_result(),
        )
        .map(drop)
    }
}

impl Drop for CniAttachment<'_> {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(error) = self.delete()
        {
            eprintln!("warning: {error}");
        }
    }
}

/// A directory holding a symlink named `spiderpool` to `binary`, to put on `CNI_PATH` so
/// that plugins find `"type": "spiderpool"` whatever the binary is called.
pub fn link_ipam_plugin(dir: &Path, binary: &Path) -> Result<PathBuf, NetnsError> {
    let step = format!("linking {}/spiderpool to {}", dir.display(), binary.display());
    let unexpected = |err: std::io::Error| NetnsError::Unexpected {
        step: step.clone(),
        message: err.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(unexpected)?;
    std::os::unix::fs::symlink(binary, dir.join("spiderpool")).map_err(unexpected)?;
    Ok(dir.to_path_buf())
}

/// `CNI_PATH` for Debian's plugins with the IPAM plugin in `ipam_dir`.
pub fn cni_path(ipam_dir: &Path) -> String {
    format!("{PLUGIN_DIR}:{}", ipam_dir.display())
}

#[cfg(test)]
mod tests {
    use super::builder_pid;

    #[test]
    fn topology_namespaces_name_their_builder() {
        assert_eq!(builder_pid("sp4242-router"), Some(4242));
        assert_eq!(builder_pid("sp4242m-node1"), Some(4242));
        assert_eq!(builder_pid("sp7-pod12"), Some(7));
    }

    #[test]
    fn other_namespaces_are_never_claimed() {
        for name in [
            "sp-router",
            "spx-router",
            "sp42-routers",
            "sp42-node",
            "sp42-podx",
            "cni-1234",
            "sp42M-pod1",
        ] {
            assert_eq!(builder_pid(name), None, "{name}");
        }
    }
}
