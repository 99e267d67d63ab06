//! The helpers every test suite of the workspace shares, so that no suite keeps its own copy:
//!
//! - [`documents`]: pool and reserved-address documents from one-line specs, catalogs, and
//!   requests from facts, for the engine's example tests.
//! - [`plugin`]: the `spiderpool` binary run as a container runtime runs it (one process per
//!   call, the CNI environment, the network configuration on stdin), the CLI, temporary
//!   directories, and views of the embedded store's state.
//! - [`apiserver`]: the real API server the test command starts, driven with the real
//!   `kubectl` and kube-rs, and the objects the cluster tests create on it.

pub mod apiserver;
pub mod documents;
pub mod plugin;
