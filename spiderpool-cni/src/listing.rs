//! What the command-line tool shows of the embedded store: the pools with their counts, the
//! allocations of a pool, and why a pod would get an address (or none).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use spiderpool_core::{
    AllocateError, AllocationState, Attachment, CandidateSource, HeldAddress, Holder, InMemoryState, IpRange,
    OwnerKey, PoolCatalog, PoolRow, Request, Verdict, explain, pool_rows, render_pool_table, render_table,
};

use crate::backend::DEFAULT_DATA_DIR;
use crate::cni::IpamConfig;
use crate::pools::load_catalog;
use crate::store::{STATE_FILE, Store, StoreError, Transaction};

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

pub(crate) fn fail(error: impl std::fmt::Display) -> CliError {
    CliError(error.to_string())
}

/// The settings a command works with: the plugin's `ipam` section and the network's name.
pub struct Settings {
    /// The `ipam` section.
    pub ipam: IpamConfig,
    /// The network's name, from the configuration.
    pub network: Option<String>,
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

/// `spiderpool ippool list`: every pool, as `kubectl get spiderippool` prints it (with FREE and
/// NEXT-FREE in the wide format).
pub fn pools(settings: &Settings, output: Format) -> Result<String, CliError> {
    let catalog = load_catalog(&settings.ipam, None).map_err(fail)?;
    with_state(settings, |state, stored| {
        let rows = all_rows(&catalog, state, &stored)?;
        match output {
            Format::Table | Format::Wide => {
                let mut text = render_pool_table(&rows, output == Format::Wide);
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

/// `spiderpool ippool show NAME`: the allocations of one pool.
pub fn allocations(settings: &Settings, name: &str, output: Format) -> Result<String, CliError> {
    let catalog = load_catalog(&settings.ipam, None).map_err(fail)?;
    with_state(settings, |state, stored| {
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
        match output {
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

/// `spiderpool explain`: every candidate of a pod and its verdict, changing nothing.
pub fn explanation(settings: &Settings, args: &ExplainArgs, output: Format) -> Result<String, CliError> {
    let catalog = load_catalog(&settings.ipam, None).map_err(fail)?;
    let request = explain_request(settings, args);
    with_state(settings, |state, _| {
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
        match output {
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
