//! Runs Spiderpool's network-zones scenario through the engine: two nodes in two zones, one
//! pool per zone pinned by `nodeName`, and a DaemonSet whose pods list both pools. Each pod
//! gets an address of its own zone.
//!
//! Run with `cargo run -p spiderpool-core --example network_zones`.

use std::process::ExitCode;

use spiderpool_core::{InMemoryState, scenario};

fn main() -> ExitCode {
    match scenario::run_network_zones(&mut InMemoryState::new()) {
        Ok(outcome) => {
            println!("$ kubectl get po -l app=test-app -o wide");
            print!("{}", outcome.pod_table());
            println!();
            println!("$ kubectl get spiderippool");
            print!("{}", outcome.pool_table());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
