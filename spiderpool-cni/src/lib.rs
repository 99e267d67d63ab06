//! The `spiderpool` CNI IPAM plugin, its embedded store, its command-line tool and the
//! cluster's daemons.
//!
//! One binary, `spiderpool`: with `CNI_COMMAND` set it is the CNI plugin ([`plugin`]), without
//! it the command-line tool ([`cli`]), which also runs the node agent and the controller of
//! the cluster mode ([`daemon`]). Every decision comes from `spiderpool-core`.
//!
//! - [`cni`]: the CNI protocol: environment, network configuration, results and errors.
//! - [`plugin`]: each CNI verb, once, against the [`backend`] the configuration chose: the
//!   embedded SQLite [`store`] with pools from files ([`pools`]), the node agent over its
//!   socket ([`wire`]), or the API server directly.
//! - [`failure`]: every reason a call fails, and the one table of their CNI error codes.
//! - [`listing`]: what the command-line tool shows; [`demo`] and [`netns`]: the network-zones
//!   demo and the network namespaces of the end-to-end tests.

pub mod backend;
pub mod cli;
pub mod cni;
pub mod coordinator;
pub mod daemon;
pub mod demo;
pub mod failure;
pub mod listing;
pub mod netns;
pub mod plugin;
pub mod pools;
pub mod store;
pub mod wire;
