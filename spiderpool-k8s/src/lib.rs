//! The Kubernetes adapter of the spiderpool IPAM: the custom resources, storage of
//! allocations in the API server with optimistic concurrency, and the controllers.
//!
//! Every decision comes from `spiderpool-core`; this crate loads what the engine needs,
//! writes what it decides with compare-and-swap (`resourceVersion`), and retries on conflict.

pub mod batch;
pub mod cluster;
pub mod crd;
pub mod facts;
pub mod gc;
pub mod multus;
pub mod watch;
pub mod webhook;

pub use batch::Batcher;
pub use cluster::{ApiFailure, BatchCost, ClusterError, ClusterStore, StoreCounters};
pub use crd::{
    BLOCK_ALLOCATED_ANNOTATION, BLOCK_CIDR_ANNOTATION, BLOCK_NODE_ANNOTATION, BLOCK_POOL_UID_ANNOTATION,
    EndpointInterface, LinkConfig, NetworkPools, SpiderEndpoint, SpiderEndpointSpec, SpiderIPBlock,
    SpiderIPBlockSpec, SpiderIPPool, SpiderIPPoolSpec, SpiderMultusConfig, SpiderMultusConfigSpec,
    SpiderReservedIP, SpiderReservedIPSpec, SriovConfig, crd_manifest, crds,
};
pub use facts::pod_record;
pub use spiderpool_core::round::RetryBudget;
