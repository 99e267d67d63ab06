//! The long-running processes of the cluster mode, in the same binary as the plugin:
//! `spiderpool agent`, the node agent that serves the plugin's calls on a unix socket in
//! batches, and `spiderpool controller`, which renders Multus networks, collects garbage and
//! serves the admission webhook.

use std::path::{Path, PathBuf};

use clap::Args;
use spiderpool_core::round::{Call, Outcome};
use spiderpool_k8s::{Batcher, ClusterStore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::backend::{client, cluster_held, cluster_ready};
use crate::cni::result_of;
use crate::failure::Failure;
use crate::wire::{AgentAnswer, AgentCall};

/// `spiderpool controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The cluster's kubeconfig; default `KUBECONFIG`, then the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds between two garbage-collection sweeps.
    #[arg(long, default_value_t = 30)]
    pub gc_interval_seconds: u64,
    /// Seconds a finished pod (Succeeded or Failed) keeps its addresses.
    #[arg(long, default_value_t = 60)]
    pub finished_grace_seconds: i64,
    /// Seconds an address may stay held without a SpiderEndpoint committing it.
    #[arg(long, default_value_t = 120)]
    pub uncommitted_grace_seconds: i64,
    /// Milliseconds between two updates of the pools' allocatedIPCount from their blocks.
    #[arg(long, default_value_t = 1000)]
    pub count_interval_ms: u64,
    /// Seconds a block may stay empty before its node gives it back.
    #[arg(long, default_value_t = 300)]
    pub empty_block_grace_seconds: i64,
    /// The node agents' socket, written into every rendered network (`ipam.agent_socket`).
    #[arg(long, default_value = crate::wire::DEFAULT_SOCKET)]
    pub agent_socket: PathBuf,
    /// Serve the validating admission webhook of pools and reserved IPs with this PEM
    /// certificate chain (with --webhook-key); register it with a ValidatingWebhookConfiguration
    /// whose caBundle trusts the certificate.
    #[arg(long, requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// The PEM private key of --webhook-cert.
    #[arg(long, requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// Where the webhook listens; default port 9443 of every IPv6 and IPv4 address (IPv4 only
    /// on a host without IPv6).
    #[arg(long)]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// Serve the validating webhook with a CA and certificate made at start, and register it
    /// (ValidatingWebhookConfiguration --webhook-configuration) behind the Service
    /// --webhook-service in --webhook-namespace, or at --webhook-url.
    #[arg(long, conflicts_with_all = ["webhook_cert", "webhook_key"])]
    pub webhook_self_signed: bool,
    /// The Service in front of the controller's webhook port (port 443).
    #[arg(long, default_value = "spiderpool-controller")]
    pub webhook_service: String,
    /// The Service's namespace; default env POD_NAMESPACE, then `spiderpool`.
    #[arg(long)]
    pub webhook_namespace: Option<String>,
    /// Register this URL instead of the Service (a controller outside the cluster).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// The name of the ValidatingWebhookConfiguration to create or update.
    #[arg(long, default_value = "spiderpool")]
    pub webhook_configuration: String,
}

/// A multi-threaded runtime for the long-running commands.
fn daemon_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("starting the runtime: {err}"))
}

/// The client of a daemon: `--kubeconfig`, else `KUBECONFIG`, else the pod's service account.
async fn daemon_client(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    match kubeconfig {
        Some(path) => client(path).await.map_err(|err| err.to_string()),
        None => kube::Client::try_default().await.map_err(|err| {
            format!("no kubeconfig: {err}; pass --kubeconfig, set KUBECONFIG, or run in a pod")
        }),
    }
}

/// `spiderpool controller`: the Multus controller, the garbage collector and (with a
/// certificate) the admission webhook, until killed.
pub fn run_controller(args: &ControllerArgs) -> Result<(), String> {
    daemon_runtime()?.block_on(async {
        let client = daemon_client(args.kubeconfig.as_deref()).await?;
        let settings = spiderpool_k8s::multus::RenderSettings {
            agent_socket: Some(args.agent_socket.clone()),
            ..Default::default()
        };
        let policy = spiderpool_core::gc::GcPolicy {
            finished_grace: args.finished_grace_seconds,
            uncommitted_grace: args.uncommitted_grace_seconds,
            empty_block_grace: args.empty_block_grace_seconds,
        };
        let interval = std::time::Duration::from_secs(args.gc_interval_seconds.max(1));
        let collector =
            spiderpool_k8s::gc::run_collector(ClusterStore::new(client.clone()), policy, interval);
        // ALLOCATED-IP-COUNT within about a second of an allocation, written by this one writer.
        let counter = spiderpool_k8s::gc::run_counter(
            ClusterStore::new(client.clone()),
            std::time::Duration::from_millis(args.count_interval_ms.max(100)),
        );
        let webhook_client = client.clone();
        let multus = async {
            // Without Multus' CRD there is nothing to render; collecting goes on.
            if let Err(error) = spiderpool_k8s::multus::run_multus_controller(client, settings).await {
                eprintln!("spiderpool controller: SpiderMultusConfig controller stopped: {error}");
            }
        };
        let webhook = async {
            if let (Some(cert), Some(key)) = (&args.webhook_cert, &args.webhook_key) {
                let listener = spiderpool_k8s::webhook::bind(args.webhook_listen)
                    .map_err(|err| format!("the admission webhook: {err}"))?;
                spiderpool_k8s::webhook::serve_on(listener, cert, key, webhook_client)
                    .await
                    .map_err(|err| format!("the admission webhook: {err}"))
            } else if args.webhook_self_signed {
                serve_self_signed_webhook(args, webhook_client).await
            } else {
                Ok(())
            }
        };
        eprintln!("spiderpool controller: running");
        let ((), (), (), webhook) = tokio::join!(collector, counter, multus, webhook);
        webhook
    })
}

/// Makes the webhook's certificate, registers the webhook, and serves it.
async fn serve_self_signed_webhook(args: &ControllerArgs, client: kube::Client) -> Result<(), String> {
    use spiderpool_k8s::webhook::{WebhookTarget, bind, register, self_signed, serve_with};
    let target = match &args.webhook_url {
        Some(url) => WebhookTarget::Url(url.clone()),
        None => WebhookTarget::Service {
            namespace: args
                .webhook_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|ns| !ns.is_empty()))
                .unwrap_or_else(|| "spiderpool".into()),
            name: args.webhook_service.clone(),
        },
    };
    let made = self_signed(&target.certificate_names()).map_err(|err| err.to_string())?;
    let listener = bind(args.webhook_listen).map_err(|err| format!("the admission webhook: {err}"))?;
    // The API server may still be starting with the controller: keep trying, while serving.
    let registration = {
        let client = client.clone();
        let name = args.webhook_configuration.clone();
        let ca = made.ca_pem.clone();
        async move {
            let mut pause = std::time::Duration::from_secs(1);
            while let Err(error) = register(&client, &name, &target, &ca, None).await {
                eprintln!(
                    "spiderpool controller: registering the webhook {name}: {error}; retrying in {pause:?}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(60));
            }
            eprintln!("spiderpool controller: webhook {name} registered");
        }
    };
    let serving = serve_with(listener, vec![made.cert], made.key, client);
    let ((), served) = tokio::join!(registration, serving);
    served.map_err(|err| format!("the admission webhook: {err}"))
}

/// `spiderpool agent`: serves `socket` until killed.
pub fn serve_agent(socket: &Path, kubeconfig: Option<&Path>) -> Result<(), String> {
    daemon_runtime()?.block_on(async {
        let client = daemon_client(kubeconfig).await?;
        eprintln!("spiderpool agent: serving {}", socket.display());
        // The DaemonSet gives the agent its node's name (the downward API's spec.nodeName);
        // with it the agent watches its node, its pods and blocks, and what every ADD reads.
        let node = std::env::var("NODE_NAME").unwrap_or_default();
        serve(socket, ClusterStore::new(client).with_node(node).watching())
            .await
            .map_err(|err| format!("serving {}: {err}", socket.display()))
    })
}

/// Serves the agent's socket until the process ends: ADDs and DELs go to one batching
/// allocator, so that a node's calls are served one batch after another. A socket file left
/// by an earlier agent is replaced.
pub async fn serve(socket: &Path, store: ClusterStore) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    let batcher = Batcher::spawn(store.clone());
    loop {
        let (stream, _) = listener.accept().await?;
        let store = store.clone();
        let batcher = batcher.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, store, batcher).await {
                eprintln!("spiderpool agent: a call failed to complete: {error}");
            }
        });
    }
}

/// Reads one call from `stream`, answers it.
async fn answer(
    stream: tokio::net::UnixStream,
    store: ClusterStore,
    batcher: Batcher,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read).read_line(&mut line).await?;
    let answer = match AgentCall::parse(&line) {
        Ok(call) => handle(call, &store, &batcher).await,
        Err(refused) => Failure::from(refused).into(),
    };
    let mut text = serde_json::to_string(&answer).expect("answers serialize");
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

async fn handle(call: AgentCall, store: &ClusterStore, batcher: &Batcher) -> AgentAnswer {
    let answered = match call {
        AgentCall::Add { facts } => {
            let interface = facts.interface.clone();
            batcher
                .serve(Call::Add(facts))
                .await
                .map(|outcome| match outcome {
                    Outcome::Added(plan) => AgentAnswer::Added(result_of(&plan, &interface)),
                    other => unreachable!("an ADD is answered with addresses, not {other:?}"),
                })
        }
        AgentCall::Del { facts } => batcher.serve(Call::Del(facts)).await.map(|_| AgentAnswer::Done),
        AgentCall::Held { facts } => {
            return match cluster_held(store, &facts).await {
                Ok(held) => AgentAnswer::Held(held.into_iter().collect()),
                Err(failure) => failure.into(),
            };
        }
        AgentCall::Status => {
            return match cluster_ready(store).await {
                Ok(()) => AgentAnswer::Done,
                Err(failure) => failure.into(),
            };
        }
    };
    answered.unwrap_or_else(|error| Failure::Cluster(error).into())
}
