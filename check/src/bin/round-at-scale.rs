//! The cluster round at scale, in memory: every node's agent serves its pods' ADDs as one
//! batch against the simulated API server (`spiderpool_check::sim::Cluster`), with the pools
//! divided into blocks. Prints the cost per pod, which should not grow with the cluster.
//!
//! ```text
//! cargo run --release -p spiderpool-check --bin round-at-scale -- 1000:10 10000:100 100000:1000
//! ```
//!
//! Each argument is `PODS:NODES`. The nodes are in 10 zones (`zone=z0` to `z9`), each with a
//! /16 pool pinned by `nodeAffinity`; every pod lists the 10 pools, as the seed's pods list
//! theirs. Only the round and the simulated server run: no IO, no latency.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use spiderpool_check::sim::Cluster;
use spiderpool_core::round::{Call, Outcome};

const ZONES: usize = 10;

fn main() -> ExitCode {
    let shapes: Vec<(usize, usize)> = std::env::args()
        .skip(1)
        .filter_map(|arg| {
            let (pods, nodes) = arg.split_once(':')?;
            Some((pods.parse().ok()?, nodes.parse().ok()?))
        })
        .collect();
    if shapes.is_empty() {
        eprintln!("usage: round-at-scale PODS:NODES...  (for example 1000:10 100000:1000)");
        return ExitCode::FAILURE;
    }
    println!("pods     nodes  total      per pod    blocks  largest block");
    for (pods, nodes) in shapes {
        match run(pods, nodes) {
            Ok(line) => println!("{line}"),
            Err(error) => {
                eprintln!("round-at-scale: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn run(pods: usize, nodes: usize) -> Result<String, String> {
    let pools: String = (0..ZONES)
        .map(|zone| {
            format!(
                "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata: {{name: z{zone}}}\n\
                 spec: {{subnet: 10.{octet}.0.0/16, ips: [10.{octet}.0.1-10.{octet}.255.254], \
                 nodeAffinity: {{matchLabels: {{zone: z{zone}}}}}}}\n---\n",
                octet = 200 + zone
            )
        })
        .collect();
    let node_names: Vec<(String, BTreeMap<String, String>)> = (0..nodes)
        .map(|node| {
            let labels = BTreeMap::from([("zone".to_owned(), format!("z{}", node % ZONES))]);
            (format!("node-{node}"), labels)
        })
        .collect();
    let mut cluster = Cluster::with(&pools, &node_names);
    let candidates: Vec<String> = (0..ZONES).map(|zone| format!("\"z{zone}\"")).collect();
    let annotation = format!(r#"{{"ipv4": [{}]}}"#, candidates.join(", "));
    let mut batches: Vec<Vec<Call>> = vec![Vec::new(); nodes];
    for pod in 0..pods {
        let (name, node) = (format!("pod-{pod}"), pod % nodes);
        cluster.add_pod(&name, &node_names[node].0, &annotation, None);
        batches[node].push(Call::Add(cluster.facts(&name, &format!("c-{pod}"), "eth0")));
    }
    let started = Instant::now();
    let mut answered = 0;
    for batch in batches {
        for answer in cluster.serve(batch) {
            match answer {
                Ok(Outcome::Added(_)) => answered += 1,
                other => return Err(format!("an ADD was answered {other:?}")),
            }
        }
    }
    let elapsed = started.elapsed();
    if answered != pods {
        return Err(format!("{answered} of {pods} ADDs answered"));
    }
    let (blocks, largest) = cluster.block_sizes();
    Ok(format!(
        "{pods:<8} {nodes:<6} {:<10} {:<10} {blocks:<7} {largest} records",
        format!("{:.2} s", elapsed.as_secs_f64()),
        format!("{:.1} µs", elapsed.as_secs_f64() * 1e6 / pods as f64),
    ))
}
