//! Documents and requests for the engine's example tests: pools from one-line specs,
//! requests from facts.

use spiderpool_core::{InMemoryState, PoolCatalog, Request, annotations, parse_documents};

/// A `SpiderIPPool` document from its name and a spec in YAML flow style.
///
/// ```
/// use spiderpool_check::kit::documents::{catalog, pool};
/// let catalog = catalog(&[pool("p", "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.14], gateway: 10.6.0.1}")]);
/// assert_eq!(catalog.pool("p").unwrap().total_count(), 5);
/// ```
pub fn pool(name: &str, spec: &str) -> String {
    labelled_pool(name, &[], spec)
}

/// A `SpiderIPPool` document with labels: what the cluster tests use to find the pools an
/// earlier run left.
pub fn labelled_pool(name: &str, labels: &[(&str, &str)], spec: &str) -> String {
    resource("SpiderIPPool", name, labels, spec)
}

/// A `SpiderReservedIP` document.
pub fn reserved(name: &str, spec: &str) -> String {
    resource("SpiderReservedIP", name, &[], spec)
}

fn resource(kind: &str, name: &str, labels: &[(&str, &str)], spec: &str) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}: {}", serde_json::to_string(value).expect("a string")))
        .collect();
    format!(
        "---\n{{apiVersion: spiderpool.spidernet.io/v2beta1, kind: {kind}, metadata: {{name: {name}, labels: {{{}}}}}, spec: {spec}}}\n",
        labels.join(", ")
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
