//! `spiderpool agent`: the per-node daemon of the cluster mode. The plugin hands it each call
//! over a unix socket (`ipam.agent_socket`); the agent keeps one API client, and writes the
//! ADDs that arrive while a write is in flight as one batch, one status write per pool, so
//! that allocators on other nodes meet a conflict once per batch instead of once per pod.
//!
//! The protocol is one line of JSON each way per connection: an [`AgentCall`], then an
//! [`AgentAnswer`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spiderpool_core::{Attachment, Request, attachment_addresses};
use spiderpool_k8s::{Batcher, ClusterStore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::cluster::cni_error;
use crate::cni::{CniError, codes};
use crate::plugin::result_of;

/// What the plugin asks the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum AgentCall {
    /// Allocate; answer the CNI result in `cni_version`'s format.
    Add {
        /// The request.
        request: AgentRequest,
        /// The configuration's `cniVersion`.
        cni_version: String,
    },
    /// Release.
    Del {
        /// The request.
        request: AgentRequest,
    },
    /// The addresses the attachment holds.
    Held {
        /// The request.
        request: AgentRequest,
    },
    /// Whether the API server answers and some pool is valid.
    Status,
}

/// The runtime's facts of a call, as the cluster mode uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequest {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub interface: String,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `K8S_POD_UID`, when given.
    pub pod_uid: Option<String>,
    /// `ipam.node_name`, when given (else the pod's node).
    pub node_name: String,
    /// The network attachment: namespace and name.
    pub attachment: Option<(String, String)>,
    /// `ipam.default_ipv4_ippool`.
    pub default_ipv4: Vec<String>,
    /// `ipam.default_ipv6_ippool`.
    pub default_ipv6: Vec<String>,
    /// `ipam.clean_gateway`.
    pub clean_gateway: bool,
}

impl AgentRequest {
    /// The runtime's facts of `request`.
    pub fn from_request(request: &Request) -> AgentRequest {
        AgentRequest {
            container_id: request.container_id.clone(),
            interface: request.interface.clone(),
            pod_namespace: request.pod.namespace.clone(),
            pod_name: request.pod.name.clone(),
            pod_uid: request.pod.uid.clone(),
            node_name: request.node.name.clone(),
            attachment: request
                .network
                .attachment
                .as_ref()
                .map(|a| (a.namespace.clone(), a.name.clone())),
            default_ipv4: request.network.default_ipv4.clone(),
            default_ipv6: request.network.default_ipv6.clone(),
            clean_gateway: request.network.clean_gateway,
        }
    }

    /// The engine's request.
    pub fn to_request(&self) -> Request {
        let mut request = Request::new(self.container_id.clone(), self.interface.clone());
        request.pod.namespace = self.pod_namespace.clone();
        request.pod.name = self.pod_name.clone();
        request.pod.uid = self.pod_uid.clone();
        request.node.name = self.node_name.clone();
        request.network.attachment = self
            .attachment
            .clone()
            .map(|(namespace, name)| Attachment { namespace, name });
        request.network.default_ipv4 = self.default_ipv4.clone();
        request.network.default_ipv6 = self.default_ipv6.clone();
        request.network.clean_gateway = self.clean_gateway;
        request
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAnswer {
    /// Done; for ADD the CNI result, for Held the addresses.
    Done(Value),
    /// Failed, as a CNI error.
    Failed {
        /// The CNI error code.
        code: u32,
        /// The message.
        msg: String,
        /// Details.
        details: String,
    },
}

impl From<CniError> for AgentAnswer {
    fn from(error: CniError) -> AgentAnswer {
        AgentAnswer::Failed {
            code: error.code,
            msg: error.msg,
            details: error.details.unwrap_or_default(),
        }
    }
}

/// Serves the socket until the process ends. A socket file left by an earlier agent is
/// replaced.
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
    let answer = match serde_json::from_str::<AgentCall>(&line) {
        Ok(call) => handle(call, &store, &batcher).await,
        Err(error) => CniError::new(
            codes::DECODING_FAILURE,
            format!("the agent could not read the call: {error}"),
            "use a plugin of the same version as the agent",
        )
        .into(),
    };
    let mut text = serde_json::to_string(&answer).expect("answers serialize");
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

async fn handle(call: AgentCall, store: &ClusterStore, batcher: &Batcher) -> AgentAnswer {
    match call {
        AgentCall::Add { request, cni_version } => {
            let version = match cni_version.parse() {
                Ok(version) => version,
                Err(error) => return AgentAnswer::from(error),
            };
            let request = request.to_request();
            let interface = request.interface.clone();
            match batcher.allocate(request).await {
                Ok(allocation) => AgentAnswer::Done(result_of(&allocation.plan, &interface).to_json(version)),
                Err(error) => cni_error(error).into(),
            }
        }
        AgentCall::Del { request } => match store.release(&request.to_request()).await {
            Ok(_) => AgentAnswer::Done(Value::Null),
            Err(error) => cni_error(error).into(),
        },
        AgentCall::Held { request } => match store.state().await {
            Ok((_, state)) => {
                let request = request.to_request();
                let Ok(held) =
                    attachment_addresses(&state, &request, std::slice::from_ref(&request.interface));
                AgentAnswer::Done(held.iter().map(|h| h.address.to_string()).collect())
            }
            Err(error) => cni_error(error).into(),
        },
        AgentCall::Status => match store.state().await {
            Ok((catalog, _)) if catalog.pools().next().is_some() => AgentAnswer::Done(Value::Null),
            Ok(_) => CniError::new(
                codes::NOT_AVAILABLE,
                "no valid SpiderIPPool in the cluster",
                "kubectl apply SpiderIPPool objects",
            )
            .into(),
            Err(error) => CniError::new(codes::NOT_AVAILABLE, error.to_string(), "").into(),
        },
    }
}

/// The plugin's side: sends `call` to the agent at `socket` and returns its answer.
pub fn call(socket: &Path, call: &AgentCall, timeout: Duration) -> Result<Value, CniError> {
    let unreachable = |error: std::io::Error| {
        CniError::new(
            codes::TRY_AGAIN_LATER,
            format!(
                "ipam.agent_socket: the agent at {} does not answer: {error}",
                socket.display()
            ),
            "check that the spiderpool agent runs on this node (its DaemonSet pod)",
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    let mut text = serde_json::to_string(call).expect("calls serialize");
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(unreachable)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(unreachable)?;
    match serde_json::from_str::<AgentAnswer>(&line) {
        Ok(AgentAnswer::Done(value)) => Ok(value),
        Ok(AgentAnswer::Failed { code, msg, details }) => Err(CniError::new(code, msg, details)),
        Err(error) => Err(CniError::new(
            codes::DECODING_FAILURE,
            format!(
                "the agent at {} answered what the plugin cannot read: {error}",
                socket.display()
            ),
            "use a plugin of the same version as the agent",
        )),
    }
}

/// Where the agent listens, and where rendered networks point the plugin, by default.
pub const DEFAULT_SOCKET: &str = "/run/spiderpool/agent.sock";
