//! The command-line tool: what the pools hold, why a pod would get an address (or none), the
//! network-zones demo, and the cluster's agent and controller processes.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::cni::IpamConfig;
use crate::daemon::ControllerArgs;
use crate::listing::{CliError, ExplainArgs, Format, Settings, fail};
use crate::wire::DEFAULT_SOCKET;

/// `spiderpool`: without `CNI_COMMAND`, the command-line tool of the spiderpool IPAM.
#[derive(Debug, Parser)]
#[command(name = "spiderpool", version, about, long_about = None)]
pub struct Cli {
    /// A YAML file, or a directory of YAML files, holding SpiderIPPool and SpiderReservedIP
    /// objects (the plugin's `ipam.ippools_path`).
    #[arg(long, global = true, value_name = "PATH")]
    pub ippools: Option<PathBuf>,
    /// The state directory (the plugin's `ipam.data_dir`) [default: /var/lib/cni/spiderpool].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A network configuration (.conf or .conflist) whose spiderpool `ipam` section gives the
    /// pool files, the state directory and the node; --ippools and --data-dir override it.
    #[arg(long, global = true, value_name = "NETCONF")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pools and their allocations.
    Ippool {
        /// What to show.
        #[command(subcommand)]
        command: IppoolCommand,
    },
    /// Every candidate pool for a pod, why it is accepted, rejected or full, and the address
    /// an ADD would get now. Changes nothing.
    Explain(Box<ExplainArgs>),
    /// Runs the node agent of the cluster mode: serves the plugin's calls (`ipam.agent_socket`)
    /// on a unix socket, with one API client and allocations written in batches.
    Agent {
        /// Where to listen.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The cluster's kubeconfig; default `KUBECONFIG`, then the in-cluster service account.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Runs the cluster controller: renders each SpiderMultusConfig into its Multus
    /// NetworkAttachmentDefinition, and collects the addresses of pods that are gone.
    Controller(Box<ControllerArgs>),
    /// Runs a scenario end to end.
    Demo {
        /// Which scenario.
        #[command(subcommand)]
        scenario: DemoScenario,
    },
}

/// `spiderpool ippool ...`.
#[derive(Debug, Subcommand)]
pub enum IppoolCommand {
    /// Every pool: NAME VERSION SUBNET ALLOCATED-IP-COUNT TOTAL-IP-COUNT DEFAULT DISABLE (and
    /// FREE and NEXT-FREE with -o wide).
    List,
    /// The allocations of one pool: address, pod, container, interface.
    Show {
        /// The pool's name.
        name: String,
    },
}

/// `spiderpool demo ...`.
#[derive(Debug, Subcommand)]
pub enum DemoScenario {
    /// Spiderpool's network-zones scenario: two nodes in two zones, a pool per zone, a
    /// DaemonSet listing both pools; each pod gets an address of its own zone.
    NetworkZones {
        /// Root only: build the two zones in network namespaces (a router between two nodes),
        /// attach each pod with Debian's macvlan plugin (/usr/lib/cni/macvlan) and this
        /// program as IPAM, ping across the zones, then DEL and tear everything down.
        #[arg(long)]
        netns: bool,
    },
}

impl Cli {
    /// The settings: the configuration file's, overridden by --ippools and --data-dir.
    pub fn settings(&self) -> Result<Settings, CliError> {
        let (mut ipam, network) = match &self.config {
            Some(path) => read_config(path)?,
            None => (
                IpamConfig {
                    plugin_type: "spiderpool".into(),
                    ..IpamConfig::default()
                },
                None,
            ),
        };
        if let Some(path) = &self.ippools {
            ipam.ippools_path = Some(path.clone());
        }
        if let Some(dir) = &self.data_dir {
            ipam.data_dir = Some(dir.clone());
        }
        Ok(Settings { ipam, network })
    }
}

/// The spiderpool `ipam` section and the network's name of a .conf or .conflist file.
fn read_config(path: &Path) -> Result<(IpamConfig, Option<String>), CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|err| fail(format!("--config {}: {err}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|err| fail(format!("--config {}: not JSON: {err}", path.display())))?;
    let name = value.get("name").and_then(Value::as_str).map(str::to_owned);
    let is_ours = |plugin: &Value| {
        plugin
            .get("ipam")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            == Some("spiderpool")
    };
    let plugin = match value.get("plugins").and_then(Value::as_array) {
        Some(plugins) => plugins.iter().find(|p| is_ours(p)),
        None => Some(&value).filter(|v| is_ours(v)),
    };
    let ipam = plugin.and_then(|p| p.get("ipam")).ok_or_else(|| {
        fail(format!(
            "--config {}: no plugin with \"ipam\": {{\"type\": \"spiderpool\"}}",
            path.display()
        ))
    })?;
    let ipam: IpamConfig = serde_json::from_value(ipam.clone())
        .map_err(|err| fail(format!("--config {}: ipam: {err}", path.display())))?;
    Ok((ipam, name))
}

/// Runs the tool; returns what to print on stdout.
pub fn run(cli: &Cli) -> Result<String, CliError> {
    match &cli.command {
        Command::Ippool {
            command: IppoolCommand::List,
        } => crate::listing::pools(&cli.settings()?, cli.output),
        Command::Ippool {
            command: IppoolCommand::Show { name },
        } => crate::listing::allocations(&cli.settings()?, name, cli.output),
        Command::Explain(args) => crate::listing::explanation(&cli.settings()?, args, cli.output),
        Command::Demo {
            scenario: DemoScenario::NetworkZones { netns },
        } => crate::demo::network_zones_demo(*netns).map_err(fail),
        Command::Controller(args) => crate::daemon::run_controller(args)
            .map(|()| String::new())
            .map_err(fail),
        Command::Agent { socket, kubeconfig } => crate::daemon::serve_agent(socket, kubeconfig.as_deref())
            .map(|()| String::new())
            .map_err(fail),
    }
}
