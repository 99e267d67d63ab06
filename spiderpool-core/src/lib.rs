//! The decision engine of spiderpool, an IP address manager for underlay container networks
//! whose nodes sit in different network zones.
//!
//! The crate is sans-IO: it reads no file, opens no socket, reads no clock and draws no random
//! number. Adapters (the CNI plugin, the Kubernetes store) load a snapshot, ask the engine,
//! and write the [`Change`]s it returns with compare-and-swap.
//!
//! The flow, from text to a decision:
//!
//! 1. [`parse_documents`] reads `SpiderIPPool` and `SpiderReservedIP` objects from YAML or
//!    JSON, exactly as users `kubectl apply` them.
//! 2. [`PoolCatalog::new`] validates them as Spiderpool's webhook would ([`Pool::from_object`],
//!    then overlaps between pools) and withholds reserved addresses.
//! 3. [`allocate`] takes a [`Request`] (pod, namespace, node and network facts), finds the
//!    candidate pools (pod annotations, namespace annotations, network config, cluster
//!    defaults), tries them in order, and returns a [`Plan`]: the addresses per interface and
//!    the changes to write, or an error listing every candidate and why it could not serve.
//! 4. [`release`] returns the changes that free an owner's addresses; [`explain`] shows every
//!    verdict; [`usage`], [`pool_status`] and [`render_pool_table`] report.
//! 5. In a cluster, [`round`] serves batches of CNI calls against API objects written with
//!    compare-and-swap: what to read, the writes to make in order, each call's answer, and
//!    the retries and compensation, as a state machine an adapter feeds with IO results.
//!
//! The allocation state is read through the [`AllocationState`] trait, whose queries an index
//! answers directly; [`InMemoryState`] implements it in memory.
//!
//! ```
//! use spiderpool_core::*;
//! let docs = parse_documents("
//! apiVersion: spiderpool.spidernet.io/v2beta1
//! kind: SpiderIPPool
//! metadata:
//!   name: test-ippool-6
//! spec:
//!   subnet: 10.6.0.0/16
//!   ips:
//!   - 10.6.168.60-10.6.168.69
//!   gateway: 10.6.0.1
//!   nodeName:
//!   - controller-node-1
//! ").unwrap();
//! let catalog = PoolCatalog::from_documents(&docs);
//! let mut state = InMemoryState::new();
//!
//! let mut request = Request::new("container-1", "eth0");
//! request.pod.annotations.insert(annotations::POD_IPPOOL.into(), r#"{"ipv4": ["test-ippool-6"]}"#.into());
//! request.node.name = "worker-node-1".into();
//! let err = allocate(&catalog, &state, &request).unwrap_err();
//! assert_eq!(err.to_string(), "no pool can serve container container-1 on node worker-node-1: \
//!     eth0 IPv4: test-ippool-6: node worker-node-1 is not in nodeName [controller-node-1]; \
//!     free addresses, or add a pool that serves this node and name it");
//!
//! request.node.name = "controller-node-1".into();
//! let plan = allocate(&catalog, &state, &request).unwrap();
//! state.apply(&plan.changes).unwrap();
//! // The in-memory state cannot fail a query: its error is `Infallible`, so `Ok` is the only
//! // pattern (a database-backed state returns its own error type instead).
//! let Ok(rows) = pool_rows(&catalog, &state);
//! assert_eq!(render_pool_table(&rows, false), "\
//! NAME            VERSION   SUBNET        ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT   DISABLE
//! test-ippool-6   4         10.6.0.0/16   1                    10               false     false
//! ");
//! ```

pub mod admission;
mod allocate;
pub mod annotations;
mod block;
mod candidates;
mod catalog;
mod endpoint;
pub mod gc;
mod memory;
mod model;
mod pool;
mod range;
mod request;
pub mod round;
pub mod scenario;
mod selector;
mod state;
mod status;
mod subnet;

pub use allocate::{
    AllocateError, AssignedAddress, Explanation, InterfaceAddresses, Plan, Unavailable, allocate,
    attachment_addresses, attachment_interfaces, collect_garbage, explain, next_free, release,
    release_attachment,
};
pub use annotations::{AnnotationError, InterfaceIppools, PodIppool, parse_pod_ippools, parse_pool_list};
pub use block::{Block, BlockSpec, BlockStateError, IndexedBlock, block_name, block_of, block_range};
pub use candidates::{CandidateSource, PoolCandidate, Rejection, SelectionError, Trial, Verdict};
pub use catalog::{CatalogEntry, PoolCatalog};
pub use endpoint::{EndpointInterface, EndpointSpec, STATEFULSET, statefulset_keeps};
pub use memory::{ApplyError, InMemoryState};
pub use model::{
    API_VERSION, Document, DocumentError, DocumentErrors, DocumentProblem, IPPoolSpec, IPPoolStatus,
    ObjectMeta, ReservedIPSpec, Resource, Route, SpiderIPPool, SpiderReservedIP, parse_documents,
    parse_resource,
};
pub use pool::{
    InvalidObject, Placement, Pool, PoolRoute, Problem, ReservedIps, Violation, block_prefixes,
    default_block_prefix, validate_update,
};
pub use range::{FamilyMismatch, IpRange, IpSet, IpVersion, RangeError, address_value};
pub use request::{
    Attachment, Controller, IpFamilies, NamespaceFacts, NetworkFacts, NodeFacts, PodContext, PodFacts,
    PodIdentity, PodPhase, PodRecord, Request, RuntimeFacts, Seconds,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, Labels, SelectorError, SelectorOperator};
pub use state::{AllocationState, Change, HeldAddress, Holder, OwnerKey, PodRef};
pub use status::{
    AllocatedIpsError, AllocationRecord, PoolRow, PoolUsage, StatusStateError, held_status,
    parse_allocated_ips, pool_rows, pool_status, render_pool_table, render_table, state_from_statuses, usage,
};
pub use subnet::{Subnet, SubnetError};
