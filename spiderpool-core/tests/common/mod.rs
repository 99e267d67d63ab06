//! Builders shared by the example tests: pools from one-line specs, requests from facts.

#![allow(dead_code)] // each test file uses a different part

use spiderpool_core::{InMemoryState, PoolCatalog, Request, annotations, parse_documents};

/// A `SpiderIPPool` document from its name and a flow-style spec.
pub fn pool(name: &str, spec: &str) -> String {
    format!(
        "---\n{{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {{name: {name}}}, spec: {spec}}}\n"
    )
}

/// A `SpiderReservedIP` document.
pub fn reserved(name: &str, spec: &str) -> String {
    format!(
        "---\n{{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderReservedIP, metadata: {{name: {name}}}, spec: {spec}}}\n"
    )
}

/// A catalog of the given documents, which must all parse.
pub fn catalog(documents: &[String]) -> PoolCatalog {
    PoolCatalog::from_documents(&parse_documents(&documents.concat()).expect("test documents parse"))
}

/// A request of pod `default/NAME` (UID `uid-NAME`) on `node`, for `eth0`.
pub fn pod(name: &str, node: &str) -> Request {
    let mut request = Request::new(format!("container-{name}"), "eth0");
    request.pod.namespace = "default".into();
    request.pod.name = name.into();
    request.pod.uid = Some(format!("uid-{name}"));
    request.node.name = node.into();
    request
}

/// The request with the `ipam.spidernet.io/ippool` annotation set to `value`.
pub fn with_ippool(mut request: Request, value: &str) -> Request {
    request
        .pod
        .annotations
        .insert(annotations::POD_IPPOOL.into(), value.into());
    request
}

/// Allocates and applies; returns the addresses of the requested interface as text.
pub fn attach(catalog: &PoolCatalog, state: &mut InMemoryState, request: &Request) -> Vec<String> {
    let plan = spiderpool_core::allocate(catalog, state, request).unwrap_or_else(|err| panic!("{err}"));
    state.apply(&plan.changes).unwrap();
    plan.interface(&request.interface)
        .expect("the requested interface is in the plan")
        .addresses
        .iter()
        .map(|a| format!("{} {}", a.pool, a.address))
        .collect()
}
