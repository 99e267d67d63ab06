//! Why a CNI call fails, typed, and the one table that decides each failure's CNI error code.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use spiderpool_core::round::{Refusal, RoundError};
use spiderpool_core::{AllocateError, SelectionError};
use spiderpool_k8s::{ApiFailure, ClusterError};

use crate::cni::{Breach, CniError, ProtocolError, codes};
use crate::pools::PoolsError;
use crate::store::{ApplyFailure, StoreError};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The call breaks the CNI specification: environment, configuration, version.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The pool definitions cannot be read.
    #[error(transparent)]
    Pools(#[from] PoolsError),
    /// The embedded store cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded store could not take a plan.
    #[error(transparent)]
    Write(#[from] ApplyFailure),
    /// The engine refused, on the embedded store.
    #[error(transparent)]
    Refused(#[from] AllocateError<StoreError>),
    /// The cluster mode could not serve the call.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The node agent cannot be reached.
    #[error(
        "ipam.agent_socket: the agent at {} does not answer: {error}", socket.display()
    )]
    AgentUnreachable {
        /// Its socket.
        socket: PathBuf,
        /// What failed.
        #[source]
        error: std::io::Error,
    },
    /// The node agent answered what this plugin cannot read.
    #[error("the agent at {} answered what the plugin cannot read: {error}", socket.display())]
    AgentGarbled {
        /// Its socket.
        socket: PathBuf,
        /// Why it cannot be read.
        error: String,
    },
    /// The node agent failed the call: its error, with the code it decided by this table.
    #[error(transparent)]
    Agent(CniError),
    /// CHECK found another allocation than `prevResult`.
    #[error("the stored allocation of {interface} for {container} differs from prevResult")]
    CheckMismatch {
        /// The interface.
        interface: String,
        /// The container.
        container: String,
        /// What is stored.
        stored: BTreeSet<IpAddr>,
        /// What `prevResult` says.
        expected: BTreeSet<IpAddr>,
    },
    /// STATUS: no valid pool is defined.
    #[error("no valid IP pool is defined")]
    NoPools {
        /// Where pools come from: the fix.
        fix: &'static str,
    },
    /// STATUS: the agent has just started and its watches have not listed everything yet.
    #[error("the node agent is still loading its caches of {}", loading.join(", "))]
    Loading {
        /// The kinds not listed yet.
        loading: Vec<&'static str>,
    },
    /// STATUS: every pool is full.
    #[error("every IP pool is full")]
    AllFull,
    /// STATUS: ADD could not work now, for the reason inside.
    #[error(transparent)]
    NotAvailable(Box<Failure>),
    /// A local I/O failure (reading stdin, starting the runtime).
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The failure.
        #[source]
        error: std::io::Error,
    },
}

impl Failure {
    /// The CNI error code: the one table.
    pub fn code(&self) -> u32 {
        match self {
            Failure::Protocol(error) => match error.breach {
                Breach::IncompatibleVersion => codes::INCOMPATIBLE_VERSION,
                Breach::InvalidEnvironment => codes::INVALID_ENVIRONMENT,
                Breach::Undecodable => codes::DECODING_FAILURE,
                Breach::InvalidConfig => codes::INVALID_CONFIG,
            },
            Failure::Pools(_) => codes::INVALID_CONFIG,
            Failure::Store(error) => store_code(error),
            Failure::Write(ApplyFailure::Conflict(_)) => codes::TRY_AGAIN_LATER,
            Failure::Write(ApplyFailure::Database(_)) => codes::IO_FAILURE,
            Failure::Refused(AllocateError::State(error)) => store_code(error),
            Failure::Refused(refused) => refusal_code(refused),
            Failure::Cluster(RoundError::Refused(Refusal::Allocate(refused))) => refusal_code(refused),
            Failure::Cluster(RoundError::Refused(Refusal::NoPod)) => codes::INVALID_ENVIRONMENT,
            Failure::Cluster(RoundError::Api(ApiFailure::Status(_))) => codes::STATE_REFUSED,
            // A pod or node the API server does not know yet, a contended or unreachable API
            // server, an agent stopping: all may pass.
            Failure::Cluster(_) => codes::TRY_AGAIN_LATER,
            Failure::AgentUnreachable { .. } => codes::TRY_AGAIN_LATER,
            Failure::AgentGarbled { .. } => codes::DECODING_FAILURE,
            Failure::Agent(error) => error.code,
            Failure::CheckMismatch { .. } => codes::CHECK_MISMATCH,
            Failure::NoPools { .. }
            | Failure::Loading { .. }
            | Failure::AllFull
            | Failure::NotAvailable(_) => codes::NOT_AVAILABLE,
            Failure::Io { .. } => codes::IO_FAILURE,
        }
    }

    /// The error as the runtime reads it: the code, the message and the details (the facts
    /// and the fix).
    pub fn render(&self) -> CniError {
        let code = self.code();
        match self {
            Failure::Protocol(error) => CniError::new(code, &error.msg, &error.details),
            Failure::Pools(error) => CniError::new(
                code,
                error.to_string(),
                "fix the pool definitions; nothing was changed",
            ),
            Failure::Write(ApplyFailure::Conflict(conflict)) => {
                CniError::new(code, conflict.to_string(), "nothing was written")
            }
            Failure::Refused(AllocateError::NoPoolAvailable(unavailable))
            | Failure::Cluster(RoundError::Refused(Refusal::Allocate(AllocateError::NoPoolAvailable(
                unavailable,
            )))) => {
                let details: Vec<String> = unavailable.failed.iter().map(ToString::to_string).collect();
                CniError::new(
                    code,
                    format!(
                        "no IP pool can serve {} on node {}",
                        unavailable.who, unavailable.node
                    ),
                    format!(
                        "{}; free addresses, or add a pool that serves this node and name it",
                        details.join(" | ")
                    ),
                )
            }
            Failure::Refused(AllocateError::Selection(SelectionError::InvalidCandidate {
                error, ..
            }))
            | Failure::Cluster(RoundError::Refused(Refusal::Allocate(AllocateError::Selection(
                SelectionError::InvalidCandidate { error, .. },
            )))) => CniError::new(
                code,
                format!(
                    "candidate pool {} is invalid, and allocation stops rather than use a pool of another zone",
                    error.name
                ),
                error.to_string(),
            ),
            Failure::AgentUnreachable { .. } => CniError::new(
                code,
                self.to_string(),
                "check that the spiderpool agent runs on this node (its DaemonSet pod)",
            ),
            Failure::AgentGarbled { .. } => CniError::new(
                code,
                self.to_string(),
                "use a plugin of the same version as the agent",
            ),
            Failure::Agent(error) => error.clone(),
            Failure::CheckMismatch { stored, expected, .. } => {
                let list = |set: &BTreeSet<IpAddr>| {
                    set.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                };
                CniError::new(
                    code,
                    self.to_string(),
                    format!("stored [{}], prevResult [{}]", list(stored), list(expected)),
                )
            }
            Failure::NoPools { fix } => CniError::new(code, self.to_string(), *fix),
            Failure::Loading { .. } => CniError::new(
                code,
                self.to_string(),
                "try again in a moment; if it lasts, check the agent's log and its RBAC (list and watch)",
            ),
            Failure::AllFull => CniError::new(code, self.to_string(), "release addresses or add pools"),
            Failure::NotAvailable(inner) => {
                let inner = inner.render();
                CniError { code, ..inner }
            }
            _ => CniError::new(code, self.to_string(), ""),
        }
    }
}

/// The code of an engine refusal that is not a failed read.
fn refusal_code<E>(refused: &AllocateError<E>) -> u32 {
    match refused {
        AllocateError::NoPoolAvailable(_) => codes::NO_POOL_AVAILABLE,
        _ => codes::INVALID_CONFIG,
    }
}

/// The code of a store failure.
fn store_code(error: &StoreError) -> u32 {
    match error {
        StoreError::Busy { .. } => codes::TRY_AGAIN_LATER,
        StoreError::Empty { .. }
        | StoreError::Corrupt { .. }
        | StoreError::Foreign { .. }
        | StoreError::Newer { .. } => codes::STATE_REFUSED,
        StoreError::Directory { .. } | StoreError::Database { .. } => codes::IO_FAILURE,
        StoreError::NotADirectory { .. } => codes::INVALID_CONFIG,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_still_listing_is_not_available_and_says_what_it_waits_for() {
        let failure = Failure::Loading {
            loading: vec!["its pods", "its SpiderIPBlocks"],
        };
        let rendered = failure.render();
        assert_eq!(rendered.code, codes::NOT_AVAILABLE);
        assert_eq!(
            rendered.msg,
            "the node agent is still loading its caches of its pods, its SpiderIPBlocks"
        );
        assert!(
            rendered
                .details
                .unwrap_or_default()
                .contains("try again in a moment")
        );
    }
}
