//! The network-zones scenario of Spiderpool's documentation, as data: its `SpiderIPPool`
//! YAML, unchanged, and the facts of the DaemonSet pods that land on its two nodes.
//!
//! The example `network_zones`, the tests and the command-line demo all run this one
//! scenario.
//!
//! ```
//! use spiderpool_core::{scenario, InMemoryState};
//! let outcome = scenario::run_network_zones(&mut InMemoryState::new()).unwrap();
//! assert_eq!(outcome.pods[0].ip.to_string(), "10.6.168.60");
//! assert_eq!(outcome.pods[1].ip.to_string(), "10.7.168.60");
//! ```

use std::net::IpAddr;

use crate::allocate::{AllocateError, allocate};
use crate::annotations::POD_IPPOOL;
use crate::catalog::PoolCatalog;
use crate::memory::{ApplyError, InMemoryState};
use crate::model::{DocumentErrors, parse_documents};
use crate::request::{NodeFacts, Request};
use crate::status::{PoolRow, pool_rows, render_pool_table, render_table};

/// The two `SpiderIPPool` objects of the scenario, as users apply them.
pub const NETWORK_ZONES_YAML: &str = include_str!("../scenarios/network-zones.yaml");

/// The workload's annotation, with the line breaks of the original YAML block scalar.
pub const NETWORK_ZONES_ANNOTATION: &str = "{\n  \"ipv4\": [\"test-ippool-6\", \"test-ippool-7\"]\n}";

/// A pod of the scenario's DaemonSet: its name and the request its CNI ADD makes.
#[derive(Debug, Clone)]
pub struct ScenarioPod {
    /// The pod's name.
    pub name: String,
    /// The request of its `eth0` attachment.
    pub request: Request,
}

/// The two DaemonSet pods, one per node: `controller-node-1` (zone `subnet-6`) and
/// `worker-node-1` (zone `subnet-7`).
pub fn network_zones_pods() -> Vec<ScenarioPod> {
    [
        (
            "test-app-j9ftl",
            "controller-node-1",
            "subnet-6",
            "1d3e5a7c-6f0b-4d2a-9c8e-0b1a2c3d4e5f",
        ),
        (
            "test-app-nkq5h",
            "worker-node-1",
            "subnet-7",
            "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(index, (name, node, zone, uid))| {
        let mut request = Request::new(format!("{:064x}", index + 1), "eth0");
        request.pod.namespace = "default".into();
        request.pod.name = name.into();
        request.pod.uid = Some(uid.into());
        request.pod.labels.insert("app".into(), "test-app".into());
        request
            .pod
            .annotations
            .insert(POD_IPPOOL.into(), NETWORK_ZONES_ANNOTATION.into());
        request.node = NodeFacts {
            name: node.into(),
            labels: [("node-subnet".to_string(), zone.to_string())].into(),
        };
        ScenarioPod {
            name: name.into(),
            request,
        }
    })
    .collect()
}

/// Where a pod of the scenario ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlacement {
    /// The pod's name.
    pub name: String,
    /// Its `eth0` address.
    pub ip: IpAddr,
    /// Its node.
    pub node: String,
    /// The pool the address came from.
    pub pool: String,
}

/// The scenario's result: the pods with their addresses, and the pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioOutcome {
    /// Each pod, in DaemonSet order.
    pub pods: Vec<PodPlacement>,
    /// Each pool, as `kubectl get spiderippool` lists them.
    pub pools: Vec<PoolRow>,
}

impl ScenarioOutcome {
    /// The pods as `NAME IP NODE`.
    pub fn pod_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .pods
            .iter()
            .map(|pod| vec![pod.name.clone(), pod.ip.to_string(), pod.node.clone()])
            .collect();
        render_table(&["NAME", "IP", "NODE"], &rows)
    }

    /// The pools as `kubectl get spiderippool` prints them.
    pub fn pool_table(&self) -> String {
        render_pool_table(&self.pools, false)
    }
}

/// Why the scenario could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The YAML did not parse.
    #[error(transparent)]
    Documents(#[from] DocumentErrors),
    /// A pod got no address.
    #[error(transparent)]
    Allocate(#[from] AllocateError),
    /// The state refused the plan.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Runs the scenario against `state`: both pods are attached, each plan is applied.
pub fn run_network_zones(state: &mut InMemoryState) -> Result<ScenarioOutcome, ScenarioError> {
    let catalog = PoolCatalog::from_documents(&parse_documents(NETWORK_ZONES_YAML)?);
    let mut pods = Vec::new();
    for pod in network_zones_pods() {
        let plan = allocate(&catalog, state, &pod.request)?;
        state.apply(&plan.changes)?;
        let address = &plan.interfaces[0].addresses[0];
        pods.push(PodPlacement {
            name: pod.name,
            ip: address.address,
            node: pod.request.node.name.clone(),
            pool: address.pool.clone(),
        });
    }
    let Ok(pools) = pool_rows(&catalog, state);
    Ok(ScenarioOutcome { pods, pools })
}
