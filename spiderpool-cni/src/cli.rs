//! The command-line tool: what the pools hold, why a pod would get an address (or none), and
//! the network-zones demo.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use spiderpool_core::{
    AllocateError, AllocationState, Attachment, CandidateSource, HeldAddress, Holder, InMemoryState, IpRange,
    OwnerKey, PoolCatalog, PoolRow, Request, Verdict, explain, pool_rows, render_pool_table, render_table,
};

use crate::cni::IpamConfig;
use crate::plugin::DEFAULT_DATA_DIR;
use crate::pools::load_catalog;
use crate::store::{STATE_FILE, Store, StoreError, Transaction};

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

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns, as `kubectl get` prints them.
    Table,
    /// Columns, with more of them.
    Wide,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts.
    Yaml,
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
        #[arg(long, default_value = crate::agent::DEFAULT_SOCKET)]
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

/// `spiderpool controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The cluster's kubeconfig; default `KUBECONFIG`, then the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds between two garbage-collection sweeps.
    #[arg(long, default_value_t = 30)]
    pub gc_interval_seconds: u64,
    /// Seconds a finished pod (Succeeded or Failed) keeps its addresses.
    #[arg(long, default_value_t = 60)]
    pub finished_grace_seconds: i64,
    /// Seconds an address may stay held without a SpiderEndpoint committing it.
    #[arg(long, default_value_t = 120)]
    pub uncommitted_grace_seconds: i64,
    /// The node agents' socket, written into every rendered network (`ipam.agent_socket`).
    #[arg(long, default_value = crate::agent::DEFAULT_SOCKET)]
    pub agent_socket: PathBuf,
    /// Serve the validating admission webhook of pools and reserved IPs with this PEM
    /// certificate chain (with --webhook-key); register it with a ValidatingWebhookConfiguration
    /// whose caBundle trusts the certificate.
    #[arg(long, requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// The PEM private key of --webhook-cert.
    #[arg(long, requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// Where the webhook listens; default port 9443 of every IPv6 and IPv4 address (IPv4 only
    /// on a host without IPv6).
    #[arg(long)]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// Serve the validating webhook with a CA and certificate made at start, and register it
    /// (ValidatingWebhookConfiguration --webhook-configuration) behind the Service
    /// --webhook-service in --webhook-namespace, or at --webhook-url.
    #[arg(long, conflicts_with_all = ["webhook_cert", "webhook_key"])]
    pub webhook_self_signed: bool,
    /// The Service in front of the controller's webhook port (port 443).
    #[arg(long, default_value = "spiderpool-controller")]
    pub webhook_service: String,
    /// The Service's namespace; default env POD_NAMESPACE, then `spiderpool`.
    #[arg(long)]
    pub webhook_namespace: Option<String>,
    /// Register this URL instead of the Service (a controller outside the cluster).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// The name of the ValidatingWebhookConfiguration to create or update.
    #[arg(long, default_value = "spiderpool")]
    pub webhook_configuration: String,
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

/// The facts of the pod to explain, as an ADD would carry them.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The node the pod runs on.
    #[arg(long)]
    pub node: String,
    /// The pod's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The pod's name.
    #[arg(long, default_value = "")]
    pub pod: String,
    /// The pod's UID.
    #[arg(long)]
    pub uid: Option<String>,
    /// The container ID.
    #[arg(long, default_value = "explain")]
    pub container: String,
    /// The interface.
    #[arg(long, default_value = "eth0")]
    pub interface: String,
    /// A pod annotation, KEY=VALUE; repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = key_value)]
    pub annotations: Vec<(String, String)>,
    /// A pod label, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// A namespace annotation, KEY=VALUE; repeatable.
    #[arg(long = "namespace-annotation", value_name = "KEY=VALUE", value_parser = key_value)]
    pub namespace_annotations: Vec<(String, String)>,
    /// A namespace label, KEY=VALUE; repeatable.
    #[arg(long = "namespace-label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub namespace_labels: Vec<(String, String)>,
    /// A node label, KEY=VALUE; repeatable (added to the configuration's node_labels).
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub node_labels: Vec<(String, String)>,
    /// The network attachment, NAME or NAMESPACE/NAME, for multusName [default: the
    /// configuration's network name].
    #[arg(long)]
    pub network: Option<String>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// A failure of the tool, printed as `error: ...`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn fail(error: impl std::fmt::Display) -> CliError {
    CliError(error.to_string())
}

/// The settings a command works with: the plugin's `ipam` section and the network's name.
pub struct Settings {
    /// The `ipam` section.
    pub ipam: IpamConfig,
    /// The network's name, from the configuration.
    pub network: Option<String>,
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
        } => list(cli),
        Command::Ippool {
            command: IppoolCommand::Show { name },
        } => show(cli, name),
        Command::Explain(args) => explain_command(cli, args),
        Command::Demo {
            scenario: DemoScenario::NetworkZones { netns },
        } => crate::demo::network_zones_demo(*netns).map_err(fail),
        Command::Controller(args) => crate::cluster::run_controller(args)
            .map(|()| String::new())
            .map_err(fail),
        Command::Agent { socket, kubeconfig } => crate::cluster::serve_agent(socket, kubeconfig.as_deref())
            .map(|()| String::new())
            .map_err(fail),
    }
}

/// Runs `work` on the state, read-only, with the names of the pools the state holds
/// addresses in: the store when it exists, an empty state otherwise (reading never creates
/// the store).
fn with_state<T>(
    settings: &Settings,
    work: impl FnOnce(&dyn AllocationState<Error = StoreError>, Vec<String>) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let dir = settings
        .ipam
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if !dir.join(STATE_FILE).exists() {
        return work(&NoStore(InMemoryState::new()), Vec::new());
    }
    let mut store = Store::open(&dir, Duration::from_secs(10)).map_err(fail)?;
    store.read(|transaction: &Transaction<'_>| {
        let stored = transaction.pool_names().map_err(fail)?;
        work(transaction, stored)
    })
}

/// The state of a data directory without a store: an empty in-memory state, whose queries
/// cannot fail, read as the store is (with its error type).
struct NoStore(InMemoryState);

impl AllocationState for NoStore {
    type Error = StoreError;

    fn holder(&self, pool: &str, address: IpAddr) -> Result<Option<Holder>, StoreError> {
        let Ok(holder) = self.0.holder(pool, address);
        Ok(holder)
    }

    fn first_unheld_from(&self, pool: &str, from: IpAddr) -> Result<Option<IpAddr>, StoreError> {
        let Ok(unheld) = self.0.first_unheld_from(pool, from);
        Ok(unheld)
    }

    fn allocated_count(&self, pool: &str) -> Result<u64, StoreError> {
        let Ok(count) = self.0.allocated_count(pool);
        Ok(count)
    }

    fn held_count_in(&self, pool: &str, range: IpRange) -> Result<u128, StoreError> {
        let Ok(count) = self.0.held_count_in(pool, range);
        Ok(count)
    }

    fn cursor(&self, pool: &str) -> Result<Option<IpAddr>, StoreError> {
        let Ok(cursor) = self.0.cursor(pool);
        Ok(cursor)
    }

    fn held_by(&self, owner: &OwnerKey) -> Result<Vec<HeldAddress>, StoreError> {
        let Ok(held) = self.0.held_by(owner);
        Ok(held)
    }

    fn held_by_container(&self, container_id: &str) -> Result<Vec<HeldAddress>, StoreError> {
        let Ok(held) = self.0.held_by_container(container_id);
        Ok(held)
    }

    fn allocations(&self, pool: &str) -> Result<Vec<(IpAddr, Holder)>, StoreError> {
        let Ok(allocations) = self.0.allocations(pool);
        Ok(allocations)
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(error: crate::store::StoreError) -> CliError {
        fail(error)
    }
}

/// Rows of every pool of the files, and of pools removed from them that still hold addresses.
fn all_rows(
    catalog: &PoolCatalog,
    state: &dyn AllocationState<Error = StoreError>,
    stored: &[String],
) -> Result<Vec<PoolRow>, StoreError> {
    let mut rows = pool_rows(catalog, state)?;
    for name in stored {
        let allocated = state.allocated_count(name)?;
        if allocated > 0 && catalog.get(name).is_none() {
            rows.push(PoolRow {
                name: name.clone(),
                version: String::new(),
                subnet: String::new(),
                allocated,
                total: 0,
                default: false,
                disable: false,
                free: 0,
                next_free: None,
                invalid: Some(format!(
                    "no longer defined in the pool files; its {allocated} allocations stay until released"
                )),
            });
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolView {
    name: String,
    version: String,
    subnet: String,
    allocated_ip_count: u64,
    total_ip_count: String,
    default: bool,
    disable: bool,
    free: String,
    next_free: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

fn serialize<T: Serialize>(format: Format, value: &T) -> Result<String, CliError> {
    match format {
        Format::Yaml => serde_yaml_ng::to_string(value).map_err(fail),
        _ => serde_json::to_string_pretty(value)
            .map(|text| text + "\n")
            .map_err(fail),
    }
}

fn list(cli: &Cli) -> Result<String, CliError> {
    let settings = cli.settings()?;
    let catalog = load_catalog(&settings.ipam, None).map_err(fail)?;
    with_state(&settings, |state, stored| {
        let rows = all_rows(&catalog, state, &stored)?;
        match cli.output {
            Format::Table | Format::Wide => {
                let mut text = render_pool_table(&rows, cli.output == Format::Wide);
                for row in &rows {
                    if let Some(problem) = &row.invalid {
                        text.push_str(&format!("warning: {}: {problem}\n", row.name));
                    }
                }
                Ok(text)
            }
            format => {
                let views: Vec<PoolView> = rows
                    .into_iter()
                    .map(|row| PoolView {
                        name: row.name,
                        version: row.version,
                        subnet: row.subnet,
                        allocated_ip_count: row.allocated,
                        total_ip_count: row.total.to_string(),
                        default: row.default,
                        disable: row.disable,
                        free: row.free.to_string(),
                        next_free: row.next_free.map(|a| a.to_string()),
                        problem: row.invalid,
                    })
                    .collect();
                serialize(format, &views)
            }
        }
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AllocationView {
    address: String,
    pod: Option<String>,
    pod_uid: Option<String>,
    container: String,
    interface: String,
}

fn show(cli: &Cli, name: &str) -> Result<String, CliError> {
    let settings = cli.settings()?;
    let catalog = load_catalog(&settings.ipam, None).map_err(fail)?;
    with_state(&settings, |state, stored| {
        if catalog.get(name).is_none() && !stored.iter().any(|s| s == name) {
            return Err(fail(format!(
                "no pool named {name} in the pool files or the state; `spiderpool ippool list` shows the pools"
            )));
        }
        let views: Vec<AllocationView> = state
            .allocations(name)?
            .into_iter()
            .map(|(address, holder)| AllocationView {
                address: address.to_string(),
                pod: holder.pod().map(|pod| pod.to_string()),
                pod_uid: match holder.owner() {
                    spiderpool_core::OwnerKey::Pod(uid) => Some(uid),
                    spiderpool_core::OwnerKey::Container(_) => None,
                },
                container: holder.container_id(),
                interface: holder.interface(),
            })
            .collect();
        match cli.output {
            Format::Table | Format::Wide => {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.address.clone(),
                            v.pod.clone().unwrap_or_else(|| "<none>".into()),
                            v.container.clone(),
                            v.interface.clone(),
                        ]
                    })
                    .collect();
                Ok(render_table(&["ADDRESS", "POD", "CONTAINER", "INTERFACE"], &rows))
            }
            format => serialize(format, &views),
        }
    })
}

/// The request an ADD with these facts would make.
fn explain_request(settings: &Settings, args: &ExplainArgs) -> Request {
    let pairs = |list: &[(String, String)]| list.iter().cloned().collect::<BTreeMap<String, String>>();
    let mut request = Request::new(args.container.clone(), args.interface.clone());
    request.pod.namespace = args.namespace.clone();
    request.pod.name = args.pod.clone();
    request.pod.uid = args.uid.clone();
    request.pod.annotations = pairs(&args.annotations);
    request.pod.labels = pairs(&args.labels);
    request.namespace.annotations = pairs(&args.namespace_annotations);
    request.namespace.labels = pairs(&args.namespace_labels);
    request.node.name = args.node.clone();
    request.node.labels = settings.ipam.node_labels.clone();
    request.node.labels.extend(pairs(&args.node_labels));
    let network = args.network.clone().or_else(|| settings.network.clone());
    request.network.attachment = network.map(|text| match text.split_once('/') {
        Some((namespace, name)) => Attachment {
            namespace: namespace.into(),
            name: name.into(),
        },
        None => Attachment {
            namespace: "default".into(),
            name: text,
        },
    });
    request.network.default_ipv4 = settings.ipam.default_ipv4_ippool.clone();
    request.network.default_ipv6 = settings.ipam.default_ipv6_ippool.clone();
    request.network.clean_gateway = settings.ipam.clean_gateway;
    request
}

#[derive(Serialize)]
struct CandidateView {
    interface: String,
    family: String,
    pool: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<String>,
    verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
struct ExplainView {
    source: Option<String>,
    candidates: Vec<CandidateView>,
    outcome: OutcomeView,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutcomeView {
    would_get: Vec<String>,
    already_held: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn explain_command(cli: &Cli, args: &ExplainArgs) -> Result<String, CliError> {
    let settings = cli.settings()?;
    let catalog = load_catalog(&settings.ipam, None).map_err(fail)?;
    let request = explain_request(&settings, args);
    with_state(&settings, |state, _| {
        let explanation = explain(&catalog, state, &request);
        // A failed read of the store fails the command: the verdicts would be incomplete.
        if let Err(AllocateError::State(error)) = explanation.outcome {
            return Err(error.into());
        }
        let candidates: Vec<CandidateView> = explanation
            .trials
            .iter()
            .flat_map(|trial| {
                trial.candidates.iter().map(move |candidate| {
                    let (verdict, address, reason) = match &candidate.verdict {
                        Verdict::Chosen { address } => ("chosen", Some(address.to_string()), None),
                        Verdict::Usable { next_free } => ("usable", Some(next_free.to_string()), None),
                        Verdict::Rejected(rejection) => ("rejected", None, Some(rejection.to_string())),
                    };
                    CandidateView {
                        interface: trial.interface.clone(),
                        family: trial.version.to_string(),
                        pool: candidate.pool.clone(),
                        pattern: candidate.pattern.clone(),
                        verdict: verdict.into(),
                        address,
                        reason,
                    }
                })
            })
            .collect();
        let (outcome, source) = match &explanation.outcome {
            Ok(plan) => (
                OutcomeView {
                    would_get: plan
                        .interface(&request.interface)
                        .map(|entry| entry.addresses.iter().map(ToString::to_string).collect())
                        .unwrap_or_default(),
                    already_held: plan.is_replay(),
                    error: None,
                },
                plan.source,
            ),
            Err(error) => (
                OutcomeView {
                    would_get: Vec::new(),
                    already_held: false,
                    error: Some(error.to_string()),
                },
                None,
            ),
        };
        let view = ExplainView {
            source: source.map(|s: CandidateSource| s.to_string()),
            candidates,
            outcome,
        };
        match cli.output {
            Format::Table | Format::Wide => Ok(render_explanation(&view, &request.interface)),
            format => serialize(format, &view),
        }
    })
}

fn render_explanation(view: &ExplainView, interface: &str) -> String {
    let mut text = String::new();
    if let Some(source) = &view.source {
        text.push_str(&format!("candidates from {source}\n"));
    }
    let rows: Vec<Vec<String>> = view
        .candidates
        .iter()
        .map(|c| {
            let verdict = match (&c.address, &c.reason) {
                (Some(address), _) if c.verdict == "chosen" => format!("chosen: {address}"),
                (Some(address), _) => format!("usable: next free {address}"),
                (_, Some(reason)) => format!("rejected: {reason}"),
                _ => c.verdict.clone(),
            };
            let pool = match &c.pattern {
                Some(pattern) if *pattern != c.pool => format!("{} ({pattern})", c.pool),
                _ => c.pool.clone(),
            };
            vec![c.interface.clone(), c.family.clone(), pool, verdict]
        })
        .collect();
    if !rows.is_empty() {
        text.push_str(&render_table(&["INTERFACE", "FAMILY", "POOL", "VERDICT"], &rows));
    }
    match (&view.outcome.error, view.outcome.already_held) {
        (Some(error), _) => text.push_str(&format!("an ADD now would fail: {error}\n")),
        (None, true) => text.push_str(&format!(
            "already held for {interface}: {}\n",
            view.outcome.would_get.join(", ")
        )),
        (None, false) => text.push_str(&format!(
            "an ADD now would get for {interface}: {}\n",
            view.outcome.would_get.join(", ")
        )),
    }
    text
}
