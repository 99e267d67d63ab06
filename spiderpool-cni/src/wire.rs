//! The node agent's protocol: the plugin sends one [`AgentCall`] as a line of JSON on the
//! agent's unix socket (`ipam.agent_socket`) and reads one [`AgentAnswer`] back. A call
//! carries what the runtime knows ([`RuntimeFacts`]); the agent reads the rest from the API
//! server. Both sides refuse fields they do not know, so that a plugin and an agent of
//! different versions fail loudly instead of dropping a fact.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spiderpool_core::RuntimeFacts;

use crate::cni::{CniError, IpamResult, ProtocolError, check_container_id, check_interface_name};
use crate::failure::Failure;

/// Where the agent listens, and where rendered networks point the plugin, by default.
pub const DEFAULT_SOCKET: &str = "/run/spiderpool/agent.sock";

/// What the plugin asks the agent.
///
/// ```
/// use spiderpool_cni::wire::AgentCall;
/// let call: AgentCall = serde_json::from_str(
///     r#"{"command": "del", "facts": {"container_id": "c1", "interface": "eth0"}}"#).unwrap();
/// assert!(matches!(call, AgentCall::Del { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command", deny_unknown_fields)]
pub enum AgentCall {
    /// Allocate for the attachment.
    Add {
        /// What the runtime knows.
        facts: RuntimeFacts,
    },
    /// Release what the attachment holds.
    Del {
        /// What the runtime knows.
        facts: RuntimeFacts,
    },
    /// The addresses the attachment holds (CHECK).
    Held {
        /// What the runtime knows.
        facts: RuntimeFacts,
    },
    /// Whether an ADD could work now (STATUS).
    Status,
}

impl AgentCall {
    /// Reads one call as the agent receives it, a line of JSON, and checks the facts it
    /// carries as the plugin checks the environment they came from: the agent serves only
    /// what a plugin of its version could have sent.
    ///
    /// ```
    /// use spiderpool_cni::wire::AgentCall;
    /// assert!(AgentCall::parse(r#"{"command": "add", "facts": {"container_id": "c1", "interface": "eth0"}}"#).is_ok());
    /// let refused = AgentCall::parse(r#"{"command": "add", "facts": {"container_id": "", "interface": "eth0"}}"#);
    /// assert!(refused.unwrap_err().to_string().contains("facts.container_id"));
    /// ```
    pub fn parse(line: &str) -> Result<AgentCall, ProtocolError> {
        let call: AgentCall = serde_json::from_str(line).map_err(|error| {
            ProtocolError::undecodable(
                format!("the agent could not read the call: {error}"),
                "use a plugin of the same version as the agent",
            )
        })?;
        if let Some(facts) = call.facts() {
            check_container_id("facts.container_id", &facts.container_id)?;
            check_interface_name("facts.interface", &facts.interface)?;
        }
        Ok(call)
    }

    /// The facts the call carries (every call but STATUS).
    pub fn facts(&self) -> Option<&RuntimeFacts> {
        match self {
            AgentCall::Add { facts } | AgentCall::Del { facts } | AgentCall::Held { facts } => Some(facts),
            AgentCall::Status => None,
        }
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentAnswer {
    /// The addresses and routes of an ADD.
    Added(IpamResult),
    /// The addresses the attachment holds.
    Held(Vec<IpAddr>),
    /// Done: a DEL, or STATUS.
    Done,
    /// Failed, as a CNI error whose code the agent decided.
    Failed {
        /// The CNI error code.
        code: u32,
        /// The message.
        msg: String,
        /// The facts and the fix.
        details: String,
    },
}

impl From<Failure> for AgentAnswer {
    fn from(failure: Failure) -> AgentAnswer {
        let rendered = failure.render();
        AgentAnswer::Failed {
            code: rendered.code,
            msg: rendered.msg,
            details: rendered.details.unwrap_or_default(),
        }
    }
}

/// Sends `call` to the agent at `socket`, waiting at most `timeout` for the answer; a failed
/// call is the agent's error, with its code.
pub fn call(socket: &Path, call: &AgentCall, timeout: Duration) -> Result<AgentAnswer, Failure> {
    let unreachable = |error: std::io::Error| Failure::AgentUnreachable {
        socket: socket.to_owned(),
        error,
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
        Ok(AgentAnswer::Failed { code, msg, details }) => {
            Err(Failure::Agent(CniError::new(code, msg, details)))
        }
        Ok(answer) => Ok(answer),
        Err(error) => Err(Failure::AgentGarbled {
            socket: socket.to_owned(),
            error: error.to_string(),
        }),
    }
}

/// An answer of the wrong kind for the call.
pub fn unexpected(socket: &Path, answer: &AgentAnswer) -> Failure {
    Failure::AgentGarbled {
        socket: socket.to_owned(),
        error: format!("an answer of another kind than the call: {answer:?}"),
    }
}
