//! The cluster figure: many pods over simulated nodes allocating at once through a real API
//! server, with latency added between the allocators and the server.
//!
//! ```text
//! cargo run --release -p spiderpool-bench --bin cluster-bench -- --kubeconfig K \
//!     --pods 1000 --nodes 10 --latency-ms 5 --mode agent
//! ```
//!
//! Nodes and pods are API objects (no kubelet runs): half the nodes are in zone a, half in zone
//! b, one pool per zone pinned by `nodeAffinity`, every pod listing both pools (`--zones 1`:
//! one zone, one pool of `--pool-size` addresses). `--concurrency` bounds the calls in flight
//! (1: one call's latency); `--release` then DELs every pod the same way and times it. The modes are
//! the two designs of the plugin's cluster mode: `direct`, where every CNI call builds its own
//! client and allocates alone (what a plugin process with `ipam.kubeconfig` does), and
//! `agent`, where one allocator per node writes the ADDs that arrive together as one batch
//! (what `spiderpool agent` does). The latency is added by a TCP proxy in front of the API
//! server that holds every byte from the client for `--latency-ms` before forwarding it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use spiderpool_core::round::{Call, Outcome};
use spiderpool_core::{Plan, PodIdentity, RuntimeFacts};
use spiderpool_k8s::{Batcher, ClusterStore, SpiderIPPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Allocation through a real API server: many pods over simulated nodes, at once")]
struct Args {
    /// The API server's kubeconfig.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Pods in all.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Simulated nodes (half in each zone).
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Latency added to every byte from the allocators to the API server, in milliseconds.
    #[arg(long, default_value_t = 5)]
    latency_ms: u64,
    /// Which design to measure.
    #[arg(long, value_enum, default_value_t = Mode::Agent)]
    mode: Mode,
    /// The `spiderpool` binary, for `--mode exec` (build it with
    /// `cargo build --release -p spiderpool-cni`).
    #[arg(long, default_value = "target/release/spiderpool")]
    spiderpool: PathBuf,
    /// Zones, each with its pool: 2 (the seed's shape), or 1 (one pool, every node).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    zones: u8,
    /// Addresses per pool (from x.y.0.1 of its /16); default the pods and 10 more.
    #[arg(long)]
    pool_size: Option<u32>,
    /// Calls in flight at most; default all at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// After the ADDs, DEL every pod (with the same concurrency) and time it.
    #[arg(long)]
    release: bool,
}

impl Args {
    fn zone_names(&self) -> &'static [&'static str] {
        if self.zones == 1 { &["a"] } else { &["a", "b"] }
    }
}

/// The plugin's cluster designs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Every call its own client, one allocation per write.
    Direct,
    /// One batching allocator per node.
    Agent,
    /// As deployed: a `spiderpool agent` process per node, and a `spiderpool` plugin process
    /// per ADD calling it over its socket, as a runtime does.
    Exec,
    /// No IPAM: only the request every ADD makes whatever the design, the create of the pod's
    /// `SpiderEndpoint` (Spiderpool's one object per pod), from one client, with the same
    /// latency and concurrency. What is left of an ADD's time beyond it is the IPAM's own.
    Floor,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cluster-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn client(kubeconfig: &Kubeconfig) -> Result<Client, String> {
    let config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
        .await
        .map_err(|err| err.to_string())?;
    Client::try_from(config).map_err(|err| err.to_string())
}

async fn run(args: &Args) -> Result<(), String> {
    let file = Kubeconfig::read_from(&args.kubeconfig).map_err(|err| err.to_string())?;
    let direct = client(&file).await?;
    let upstream = server_address(&file)?;
    let proxy = start_proxy(upstream, Duration::from_millis(args.latency_ms)).await?;
    let mut slow_file = file.clone();
    for cluster in &mut slow_file.clusters {
        if let Some(cluster) = cluster.cluster.as_mut() {
            cluster.server = Some(format!("https://{proxy}"));
        }
    }

    let id = format!("b{}", std::process::id());
    let namespace = format!("{id}-pods");
    println!(
        "cluster-bench: {} pods over {} nodes, {} zone pools of {} addresses, +{} ms per request, mode {:?}, {} in flight (run {id})",
        args.pods,
        args.nodes,
        args.zones,
        pool_size(args),
        args.latency_ms,
        args.mode,
        args.concurrency.map_or("all".to_owned(), |n| n.to_string())
    );
    let setup = Instant::now();
    let uids = create_objects(&direct, &id, &namespace, args).await?;
    println!("setup: {:.1} s (not counted)", setup.elapsed().as_secs_f64());

    let requests: Vec<(usize, RuntimeFacts)> = (0..args.pods)
        .map(|index| {
            let request = RuntimeFacts {
                container_id: format!("c-{index}"),
                interface: "eth0".into(),
                pod: Some(PodIdentity {
                    namespace: namespace.clone(),
                    name: format!("pod-{index}"),
                    // As the kubelet's runtime passes it (K8S_POD_UID).
                    uid: Some(uids[index].clone()),
                }),
                ..RuntimeFacts::default()
            };
            (index % args.nodes, request)
        })
        .collect();
    let counters_store = ClusterStore::new(client(&slow_file).await?);
    let conflicts_before = server_conflicts(&direct).await;
    // Exec mode: the agents, started before the clock.
    let work = std::env::temp_dir().join(format!("spiderpool-{id}"));
    let mut agents = Vec::new();
    if args.mode == Mode::Exec {
        std::fs::create_dir_all(&work).map_err(|err| err.to_string())?;
        let kubeconfig = work.join("kubeconfig");
        let text = serde_yaml_ng::to_string(&slow_file).map_err(|err| err.to_string())?;
        std::fs::write(&kubeconfig, text).map_err(|err| err.to_string())?;
        for node in 0..args.nodes {
            let socket = work.join(format!("node-{node}.sock"));
            let log = std::fs::File::create(work.join(format!("node-{node}.log")))
                .map_err(|err| err.to_string())?;
            let mut agent = tokio::process::Command::new(&args.spiderpool)
                .env("NODE_NAME", format!("{id}-node-{node}"))
                .args(["agent", "--socket"])
                .arg(&socket)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(|err| format!("{}: {err}", args.spiderpool.display()))?;
            while !socket.exists() {
                if let Ok(Some(status)) = agent.try_wait() {
                    let log =
                        std::fs::read_to_string(work.join(format!("node-{node}.log"))).unwrap_or_default();
                    return Err(format!("the agent of node {node} exited ({status}): {log}"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            agents.push(agent);
        }
        // As a runtime does (CNI STATUS) before it sends a node's first ADD: each agent's
        // watches have listed.
        for node in 0..args.nodes {
            let socket = work.join(format!("node-{node}.sock"));
            wait_until_ready(|| agent_status(&args.spiderpool, &socket)).await?;
        }
    }
    let mut batchers = Vec::new();
    if args.mode == Mode::Agent {
        let mut stores = Vec::new();
        for node in 0..args.nodes {
            let store = counters_store
                .with_client(client(&slow_file).await?)
                .with_node(format!("{id}-node-{node}"))
                .watching();
            stores.push(store.clone());
            batchers.push(Batcher::spawn(store));
        }
        for store in &stores {
            wait_until_ready(|| async { store.loading().is_empty() }).await?;
        }
    }
    let phase = Phase {
        mode: args.mode,
        batchers: &batchers,
        store: &counters_store,
        kubeconfig: &slow_file,
        spiderpool: &args.spiderpool,
        work: &work,
        concurrency: args.concurrency.unwrap_or(usize::MAX).max(1),
    };
    let started = Instant::now();
    let (results, mut latencies) = phase.run(Command::Add, &requests).await;
    let total = started.elapsed();
    let mut addresses = BTreeSet::new();
    let mut failures = Vec::new();
    let mut duplicates = 0;
    for result in results {
        match result {
            Ok(Some(address)) => {
                if !addresses.insert(address) {
                    duplicates += 1;
                }
            }
            Ok(None) => {}
            Err(error) => failures.push(error),
        }
    }
    // Conflicts as the API server counts them (409s on pool statuses and blocks), whichever
    // process met them.
    let conflicts = match (conflicts_before, server_conflicts(&direct).await) {
        (Some(before), Some(after)) => after - before,
        _ => counters_store.counters().conflicts.load(Ordering::Relaxed),
    };
    let writes = counters_store.counters().pool_writes.load(Ordering::Relaxed);

    // Duplicates as the API server records them, not only as answered.
    let state = ClusterStore::new(direct.clone())
        .pools()
        .await
        .map_err(|err| err.to_string())?
        .state;
    let mut recorded = 0;
    let mut seen = BTreeSet::new();
    for zone in args.zone_names() {
        let Ok(allocations) = spiderpool_core::AllocationState::allocations(&state, &format!("{id}-{zone}"));
        for (address, _) in allocations {
            recorded += 1;
            if !seen.insert(address) {
                duplicates += 1;
            }
        }
    }
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!("total IPAM time: {:.2} s", total.as_secs_f64());
    println!(
        "allocations: {} answered, {} recorded, {} failed, {duplicates} duplicates",
        addresses.len(),
        recorded,
        failures.len()
    );
    println!(
        "conflicts: {conflicts} ({:.3} per allocation; 409s on pool statuses and blocks, from the API server's metrics), \
         pool writes by this process: {writes}",
        conflicts as f64 / args.pods as f64
    );
    let (blocks, largest) = stored_objects(&direct, &id, args).await?;
    println!(
        "stored: {blocks} blocks; largest object {} bytes ({})",
        largest.0, largest.1
    );
    println!(
        "per-pod latency: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
        quantile(1.0)
    );
    if let Some(first) = failures.first() {
        println!("first failure: {first}");
    }
    if args.release {
        let started = Instant::now();
        let (results, mut latencies) = phase.run(Command::Del, &requests).await;
        let total = started.elapsed();
        let failed: Vec<&String> = results
            .iter()
            .filter_map(|result| result.as_ref().err())
            .collect();
        latencies.sort();
        let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
        println!("total DEL time: {:.2} s", total.as_secs_f64());
        println!(
            "releases: {} answered, {} failed; per-pod latency p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
            results.len() - failed.len(),
            failed.len(),
            quantile(0.5),
            quantile(0.9),
            quantile(1.0)
        );
        if let Some(first) = failed.first() {
            println!("first DEL failure: {first}");
        }
        let state = ClusterStore::new(direct.clone())
            .pools()
            .await
            .map_err(|err| err.to_string())?
            .state;
        let left: u64 = args
            .zone_names()
            .iter()
            .map(|zone| {
                let Ok(count) =
                    spiderpool_core::AllocationState::allocated_count(&state, &format!("{id}-{zone}"));
                count
            })
            .sum();
        println!("left allocated after the DELs: {left}");
    }
    drop(agents);
    let _ = std::fs::remove_dir_all(&work);
    cleanup(&direct, &id, &namespace, args).await;
    if duplicates > 0 {
        return Err(format!("{duplicates} duplicate addresses"));
    }
    Ok(())
}

/// One ADD or DEL as a runtime makes it: a `spiderpool` process with the CNI environment and
/// the network configuration on stdin, answered by the node's agent. An ADD's first address.
async fn plugin_call(
    binary: &std::path::Path,
    socket: &std::path::Path,
    command: Command,
    request: &RuntimeFacts,
) -> Result<Option<IpAddr>, String> {
    let pod = request.pod.clone().unwrap_or_default();
    use tokio::io::AsyncWriteExt as _;
    let config = serde_json::json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "macvlan",
        "ipam": {"type": "spiderpool", "agent_socket": socket}
    });
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", command.name())
        .env("CNI_CONTAINERID", &request.container_id)
        .env("CNI_NETNS", format!("/var/run/netns/{}", request.container_id))
        .env("CNI_IFNAME", &request.interface)
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
                pod.namespace,
                pod.name,
                pod.uid.as_deref().unwrap_or_default()
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| err.to_string())?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(config.to_string().as_bytes())
        .await
        .map_err(|err| err.to_string())?;
    drop(stdin);
    let output = child.wait_with_output().await.map_err(|err| err.to_string())?;
    if command == Command::Del {
        return match output.status.success() {
            true => Ok(None),
            false => Err(String::from_utf8_lossy(&output.stdout).into_owned()),
        };
    }
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|err| err.to_string())?;
    let address = answer["ips"][0]["address"]
        .as_str()
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|text| text.parse().ok());
    address.map(Some).ok_or_else(|| answer.to_string())
}

/// The CNI calls measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Add,
    Del,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
        }
    }
}

/// How the calls of a phase are made.
struct Phase<'a> {
    mode: Mode,
    batchers: &'a [Batcher],
    store: &'a ClusterStore,
    kubeconfig: &'a Kubeconfig,
    spiderpool: &'a std::path::Path,
    work: &'a std::path::Path,
    concurrency: usize,
}

impl Phase<'_> {
    /// Makes `command` for every request (node index, facts), at most `concurrency` at once:
    /// each call's outcome (an ADD's first address) and latency.
    async fn run(
        &self,
        command: Command,
        requests: &[(usize, RuntimeFacts)],
    ) -> (Vec<Result<Option<IpAddr>, String>>, Vec<Duration>) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut latencies = Vec::with_capacity(requests.len());
        let mut finish =
            |done: Result<(Result<Option<IpAddr>, String>, Duration), tokio::task::JoinError>| {
                let (result, latency) = done.expect("a call's task");
                outcomes.push(result);
                latencies.push(latency);
            };
        for (node, request) in requests.iter().cloned() {
            if tasks.len() >= self.concurrency
                && let Some(done) = tasks.join_next().await
            {
                finish(done);
            }
            let mode = self.mode;
            let batcher = self.batchers.get(node).cloned();
            let store = self.store.clone();
            let kubeconfig = self.kubeconfig.clone();
            let binary = self.spiderpool.to_path_buf();
            let socket = self.work.join(format!("node-{node}.sock"));
            tasks.spawn(async move {
                let began = Instant::now();
                let first = |plan: Plan| Some(plan.interfaces[0].addresses[0].address);
                let call = match command {
                    Command::Add => Call::Add(request.clone()),
                    Command::Del => Call::Del(request.clone()),
                };
                let result = match mode {
                    Mode::Agent => batcher
                        .expect("an allocator per node")
                        .serve(call)
                        .await
                        .map(|outcome| match outcome {
                            Outcome::Added(plan) => first(plan),
                            _ => None,
                        })
                        .map_err(|err| err.to_string()),
                    Mode::Direct => {
                        // A plugin process: its own client, its own connection.
                        let store = match client(&kubeconfig).await {
                            Ok(client) => store.with_client(client),
                            Err(error) => panic!("a client: {error}"),
                        };
                        match store.serve_one(call).await {
                            Ok(Outcome::Added(plan)) => Ok(first(plan)),
                            Ok(_) => Ok(None),
                            Err(error) => Err(error.to_string()),
                        }
                    }
                    Mode::Exec => plugin_call(&binary, &socket, command, &request).await,
                    Mode::Floor => endpoint_create(&store, node, command, &request).await,
                };
                (result, began.elapsed())
            });
        }
        while let Some(done) = tasks.join_next().await {
            finish(done);
        }
        (outcomes, latencies)
    }
}

/// Waits until `ready` says so, for at most a minute.
async fn wait_until_ready<F: std::future::Future<Output = bool>>(
    ready: impl Fn() -> F,
) -> Result<(), String> {
    let started = Instant::now();
    while !ready().await {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("an agent's watches did not list within a minute".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Whether the agent behind `socket` answers a CNI STATUS with success.
async fn agent_status(binary: &std::path::Path, socket: &std::path::Path) -> bool {
    use tokio::io::AsyncWriteExt as _;
    let config = serde_json::json!({
        "cniVersion": "1.1.0", "name": "bench", "type": "macvlan",
        "ipam": {"type": "spiderpool", "agent_socket": socket}
    });
    let child = tokio::process::Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config.to_string().as_bytes()).await;
    }
    child.wait().await.is_ok_and(|status| status.success())
}

/// The create (or, for a DEL, the delete) of the endpoint an ADD of `request` on node `node`
/// commits, shaped as the agent writes it.
async fn endpoint_create(
    store: &ClusterStore,
    node: usize,
    command: Command,
    request: &RuntimeFacts,
) -> Result<Option<IpAddr>, String> {
    let pod = request.pod.as_ref().expect("the bench names every pod");
    let api: Api<spiderpool_k8s::SpiderEndpoint> = Api::namespaced(store.client().clone(), &pod.namespace);
    if command == Command::Del {
        return match api.delete(&pod.name, &Default::default()).await {
            Ok(_) => Ok(None),
            Err(error) => Err(error.to_string()),
        };
    }
    let spec = spiderpool_core::EndpointSpec {
        uid: pod.uid.clone().unwrap_or_default(),
        node: format!("node-{node}"),
        container_id: request.container_id.clone(),
        ips: vec![spiderpool_core::EndpointInterface {
            interface: request.interface.clone(),
            ipv4_pool: Some("floor".into()),
            ipv4: Some("10.100.0.1/16".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let endpoint = spiderpool_k8s::SpiderEndpoint::new(&pod.name, spiderpool_k8s::SpiderEndpointSpec(spec));
    match api.create(&Default::default(), &endpoint).await {
        Ok(_) => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// The addresses of each pool.
fn pool_size(args: &Args) -> u32 {
    args.pool_size.unwrap_or(args.pods as u32 + 10)
}

/// The blocks the run's pools have, and the largest object of them and the pools, in bytes of
/// JSON as stored.
async fn stored_objects(client: &Client, id: &str, args: &Args) -> Result<(usize, (usize, String)), String> {
    let blocks: Api<spiderpool_k8s::SpiderIPBlock> = Api::all(client.clone());
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let mut count = 0;
    let mut largest = (0, String::new());
    for zone in args.zone_names() {
        let pool = format!("{id}-{zone}");
        let params = ListParams::default().fields(&format!("spec.pool={pool}"));
        let listed = blocks.list(&params).await.map_err(|err| err.to_string())?;
        count += listed.items.len();
        let object = pools.get(&pool).await.map_err(|err| err.to_string())?;
        let size = serde_json::to_vec(&object).map_or(0, |json| json.len());
        if size > largest.0 {
            largest = (size, format!("SpiderIPPool {pool}"));
        }
        for block in &listed.items {
            let size = serde_json::to_vec(block).map_or(0, |json| json.len());
            if size > largest.0 {
                largest = (
                    size,
                    format!(
                        "SpiderIPBlock {}",
                        block.metadata.name.as_deref().unwrap_or_default()
                    ),
                );
            }
        }
    }
    Ok((count, largest))
}

/// The 409s the API server answered to pool status writes so far, from its metrics.
async fn server_conflicts(client: &Client) -> Option<u64> {
    let request = http::Request::get("/metrics").body(Vec::new()).ok()?;
    let text = client.request_text(request).await.ok()?;
    Some(
        text.lines()
            .filter(|line| {
                line.starts_with("apiserver_request_total{")
                    && line.contains(r#"code="409""#)
                    && (line.contains(r#"resource="spiderippools""#)
                        || line.contains(r#"resource="spideripblocks""#))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

fn server_address(file: &Kubeconfig) -> Result<SocketAddr, String> {
    let server = file
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or("the kubeconfig names no server")?;
    let authority = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    authority
        .parse()
        .map_err(|_| format!("server {server}: expected https://IP:PORT"))
}

/// A TCP proxy to `upstream` that holds every chunk from the client for `delay`.
async fn start_proxy(upstream: SocketAddr, delay: Duration) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| err.to_string())?;
    let address = listener.local_addr().map_err(|err| err.to_string())?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, delay));
                tokio::spawn(pump(server_read, client_write, Duration::ZERO));
            });
        }
    });
    Ok(address)
}

/// Copies `from` to `to`, each chunk `delay` after it arrived (chunks keep their order and do
/// not wait for each other: the delay is latency, not a bandwidth limit).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (chunks, mut queue) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((arrived, chunk)) = queue.recv().await {
            tokio::time::sleep_until((arrived + delay).into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(chunks);
    let _ = writer.await;
}

/// Nodes in two zones, a pool per zone, and the pods, bound round-robin to the nodes.
/// Creates the run's nodes, pools and pods: the UID of each pod, by index.
async fn create_objects(
    client: &Client,
    id: &str,
    namespace: &str,
    args: &Args,
) -> Result<Vec<String>, String> {
    let fail = |what: &str, err: kube::Error| format!("creating {what}: {err}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).expect("a namespace");
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .map_err(|err| fail("the namespace", err))?;
    let nodes: Api<Node> = Api::all(client.clone());
    for index in 0..args.nodes {
        let zone = if index < args.nodes / 2 || args.zones == 1 {
            "a"
        } else {
            "b"
        };
        let node: Node = serde_json::from_value(serde_json::json!({"metadata": {
            "name": format!("{id}-node-{index}"),
            "labels": {"bench.spiderpool.io/zone": format!("{id}-{zone}")}}}))
        .expect("a node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .map_err(|err| fail("a node", err))?;
    }
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    // The pools of an interrupted earlier run hold the same addresses.
    let earlier = ListParams::default().labels("spiderpool-test=cluster-bench");
    pools
        .delete_collection(&DeleteParams::default(), &earlier)
        .await
        .map_err(|err| fail("(deleting) earlier pools", err))?;
    for (zone, octet) in args.zone_names().iter().zip([100, 101]) {
        let first = std::net::Ipv4Addr::new(10, octet, 0, 1);
        let last = std::net::Ipv4Addr::from(u32::from(first) + pool_size(args).clamp(1, 65534) - 1);
        let pool: SpiderIPPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": format!("{id}-{zone}"), "labels": {"spiderpool-test": "cluster-bench"}},
            "spec": {
                "subnet": format!("10.{octet}.0.0/16"),
                "ips": [format!("{first}-{last}")],
                "nodeAffinity": {"matchLabels": {"bench.spiderpool.io/zone": format!("{id}-{zone}")}}
            }
        }))
        .expect("a pool");
        pools
            .create(&PostParams::default(), &pool)
            .await
            .map_err(|err| fail("a pool", err))?;
    }
    let names: Vec<String> = args
        .zone_names()
        .iter()
        .map(|zone| format!(r#""{id}-{zone}""#))
        .collect();
    let annotation = format!(r#"{{"ipv4": [{}]}}"#, names.join(", "));
    let mut creations = tokio::task::JoinSet::new();
    let mut uids = vec![String::new(); args.pods];
    let created = |done: Result<(usize, Result<Pod, kube::Error>), tokio::task::JoinError>,
                   uids: &mut Vec<String>| {
        let (index, pod) = done.map_err(|err| err.to_string())?;
        uids[index] = pod
            .map_err(|err| fail("a pod", err))?
            .metadata
            .uid
            .unwrap_or_default();
        Ok::<(), String>(())
    };
    for index in 0..args.pods {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("pod-{index}"), "annotations": {"ipam.spidernet.io/ippool": annotation}},
            "spec": {"nodeName": format!("{id}-node-{}", index % args.nodes),
                     "containers": [{"name": "app", "image": "nginx"}]}
        }))
        .expect("a pod");
        creations.spawn(async move { (index, pods.create(&PostParams::default(), &pod).await) });
        if creations.len() >= 64
            && let Some(done) = creations.join_next().await
        {
            created(done, &mut uids)?;
        }
    }
    while let Some(done) = creations.join_next().await {
        created(done, &mut uids)?;
    }
    Ok(uids)
}

/// Deletes what the run created; failures are only reported.
async fn cleanup(client: &Client, id: &str, namespace: &str, args: &Args) {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let endpoints: Api<spiderpool_k8s::SpiderEndpoint> = Api::namespaced(client.clone(), namespace);
    let everything = ListParams::default();
    let results = [
        pods.delete_collection(&now, &everything).await.err(),
        endpoints.delete_collection(&now, &everything).await.err(),
    ];
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut errors: Vec<String> = results.into_iter().flatten().map(|e| e.to_string()).collect();
    let blocks: Api<spiderpool_k8s::SpiderIPBlock> = Api::all(client.clone());
    for zone in args.zone_names() {
        let pool = format!("{id}-{zone}");
        if let Err(error) = pools.delete(&pool, &now).await {
            errors.push(error.to_string());
        }
        let of_pool = ListParams::default().fields(&format!("spec.pool={pool}"));
        if let Err(error) = blocks.delete_collection(&now, &of_pool).await {
            errors.push(error.to_string());
        }
    }
    for index in 0..args.nodes {
        if let Err(error) = nodes.delete(&format!("{id}-node-{index}"), &now).await {
            errors.push(error.to_string());
        }
    }
    if let Err(error) = namespaces.delete(namespace, &now).await {
        errors.push(error.to_string());
    }
    if !errors.is_empty() {
        eprintln!("cleanup: {}", errors.join("; "));
    }
}
