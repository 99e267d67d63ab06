//! Allocation-throughput harness (being written).
fn main() {}
