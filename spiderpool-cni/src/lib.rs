//! The `spiderpool` CNI IPAM plugin, its embedded store and its command-line tool.
//!
//! One binary, `spiderpool`: with `CNI_COMMAND` set it is the CNI plugin ([`plugin`]), without
//! it the command-line tool. Every decision comes from `spiderpool-core`; this crate reads the
//! CNI environment and configuration ([`cni`]), the pool files ([`pools`]), and keeps the
//! allocation state in an embedded SQLite database ([`store`]), or in the Kubernetes API
//! server when `ipam.kubeconfig` is set ([`cluster`]). [`netns`] builds network
//! namespaces for the end-to-end demo and tests.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod cni;
pub mod demo;
pub mod netns;
pub mod plugin;
pub mod pools;
pub mod store;
