//! The plugin's cluster mode: `ipam.kubeconfig` names the API server that holds pools, pod
//! facts and allocations; each call builds a client, asks [`ClusterStore`], and answers.

use std::future::Future;
use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use spiderpool_k8s::{ClusterError, ClusterStore};

use crate::cni::{CniError, codes};
use crate::plugin::refusal;

/// Runs `work` against the cluster `kubeconfig` names, on a runtime of this thread.
pub fn run<T, F: Future<Output = Result<T, ClusterError>>>(
    kubeconfig: &Path,
    work: impl FnOnce(ClusterStore) -> F,
) -> Result<T, CniError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| CniError::new(codes::IO_FAILURE, format!("starting the runtime: {err}"), ""))?;
    runtime.block_on(async {
        let store = ClusterStore::new(client(kubeconfig).await?);
        work(store).await.map_err(cni_error)
    })
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
        Some(path) => client(path).await.map_err(|err| err.msg),
        None => kube::Client::try_default().await.map_err(|err| {
            format!("no kubeconfig: {err}; pass --kubeconfig, set KUBECONFIG, or run in a pod")
        }),
    }
}

/// `spiderpool controller`: the Multus controller, the garbage collector and (with a
/// certificate) the admission webhook, until killed.
pub fn run_controller(args: &crate::cli::ControllerArgs) -> Result<(), String> {
    daemon_runtime()?.block_on(async {
        let client = daemon_client(args.kubeconfig.as_deref()).await?;
        let settings = spiderpool_k8s::multus::RenderSettings {
            agent_socket: Some(args.agent_socket.clone()),
            ..Default::default()
        };
        let policy = spiderpool_core::gc::GcPolicy {
            finished_grace: args.finished_grace_seconds,
            uncommitted_grace: args.uncommitted_grace_seconds,
        };
        let interval = std::time::Duration::from_secs(args.gc_interval_seconds.max(1));
        let collector =
            spiderpool_k8s::gc::run_collector(ClusterStore::new(client.clone()), policy, interval);
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
        let ((), (), webhook) = tokio::join!(collector, multus, webhook);
        webhook
    })
}

/// Makes the webhook's certificate, registers the webhook, and serves it.
async fn serve_self_signed_webhook(
    args: &crate::cli::ControllerArgs,
    client: kube::Client,
) -> Result<(), String> {
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
        crate::agent::serve(socket, ClusterStore::new(client))
            .await
            .map_err(|err| format!("serving {}: {err}", socket.display()))
    })
}

/// A client of the cluster the kubeconfig file names.
async fn client(path: &Path) -> Result<kube::Client, CniError> {
    let invalid = |problem: String| {
        CniError::invalid_config(
            format!("ipam.kubeconfig: {}: {problem}", path.display()),
            "point ipam.kubeconfig at a readable kubeconfig file for this node",
        )
    };
    let file = Kubeconfig::read_from(path).map_err(|err| invalid(err.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|err| invalid(err.to_string()))?;
    kube::Client::try_from(config).map_err(|err| invalid(err.to_string()))
}

/// The CNI error for a cluster failure: "try again" for what may pass, the engine's codes for
/// its refusals.
pub(crate) fn cni_error(error: ClusterError) -> CniError {
    match error {
        ClusterError::Refused(refused) => refusal(refused),
        ClusterError::NoPod => CniError::new(codes::INVALID_ENVIRONMENT, error.to_string(), ""),
        ClusterError::Status(_) => CniError::new(codes::STATE_REFUSED, error.to_string(), ""),
        // Unreachable or contended API, a pod or node the API does not know yet: all may pass.
        other => CniError::new(codes::TRY_AGAIN_LATER, other.to_string(), ""),
    }
}
