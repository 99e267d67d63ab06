//! Links `spiderpool` as a position-dependent executable.
//!
//! Every CNI call is a new process, so its start-up is on every ADD's path. As a PIE, the
//! binary carries about 31,000 relative relocations (vtables and static data of the
//! Kubernetes client, TLS and async runtime that the cluster mode links in); applying them at
//! each start copies on write every page they touch, which measured 0.35 ms per call. Linked
//! without PIE they are resolved at link time. The cost is that the executable's own image
//! is not placed at a random address (its libraries, stack and heap still are); the code has
//! no `unsafe` of its own. See `docs/benchmarks.md`, "CNI plugin".
fn main() {
    println!("cargo:rustc-link-arg-bin=spiderpool=-no-pie");
}
