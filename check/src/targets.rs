//! The fuzz targets, by name: what `fuzz/fuzz_targets/*.rs` run and what the corpus replay
//! test runs on every stored input.

use arbitrary::{Arbitrary, Unstructured};

use crate::boundary::{check_agent_call_text, check_api_records_text, check_cni_call_text};
use crate::ops::Op;
use crate::parsers::{
    check_annotation_text, check_documents_text, check_range_text, check_selector_text, check_subnet_text,
};
use crate::run::run_ops;
use crate::scenario::{Scenario, Shape};

/// Most operations one fuzz input is read into.
pub const MAX_FUZZ_OPS: usize = 96;

/// A fuzz target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `IpRange` text.
    Range,
    /// `Subnet` text.
    Subnet,
    /// `SpiderIPPool` / `SpiderReservedIP` YAML or JSON.
    Documents,
    /// Pod and namespace annotation values.
    Annotations,
    /// Label selector JSON.
    Selector,
    /// Operation sequences against the reference model.
    AllocationOps,
    /// A CNI call: the environment with `CNI_ARGS`, and the network configuration.
    CniCall,
    /// A line of the node agent's protocol.
    AgentCall,
    /// Pool and endpoint objects as read back from the API server.
    ApiRecords,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 9] = [
        Target::Range,
        Target::Subnet,
        Target::Documents,
        Target::Annotations,
        Target::Selector,
        Target::AllocationOps,
        Target::CniCall,
        Target::AgentCall,
        Target::ApiRecords,
    ];

    /// The target's name: its file in `fuzz/fuzz_targets/` and its corpus directory.
    pub fn name(self) -> &'static str {
        match self {
            Target::Range => "range",
            Target::Subnet => "subnet",
            Target::Documents => "documents",
            Target::Annotations => "annotations",
            Target::Selector => "selector",
            Target::AllocationOps => "allocation_ops",
            Target::CniCall => "cni_call",
            Target::AgentCall => "agent_call",
            Target::ApiRecords => "api_records",
        }
    }

    /// Runs the target's check on one input. Text targets read the bytes as UTF-8, replacing
    /// invalid sequences, so every input is exercised.
    pub fn check(self, data: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(data);
        let result = match self {
            Target::Range => check_range_text(&text),
            Target::Subnet => check_subnet_text(&text),
            Target::Documents => check_documents_text(&text),
            Target::Annotations => check_annotation_text(&text),
            Target::Selector => check_selector_text(&text),
            Target::AllocationOps => return check_allocation_bytes(data),
            Target::CniCall => check_cni_call_text(&text),
            Target::AgentCall => check_agent_call_text(&text),
            Target::ApiRecords => check_api_records_text(&text),
        };
        result.map_err(|failure| failure.to_string())
    }
}

/// Reads a [`Shape`] and up to [`MAX_FUZZ_OPS`] operations from raw bytes.
pub fn ops_from_bytes(data: &[u8]) -> Option<(Shape, Vec<Op>)> {
    let mut input = Unstructured::new(data);
    let shape = Shape::arbitrary(&mut input).ok()?;
    let ops = input
        .arbitrary_iter::<Op>()
        .ok()?
        .take(MAX_FUZZ_OPS)
        .map_while(Result::ok)
        .collect();
    Some((shape, ops))
}

/// Runs the operations read from `data` against the core and the model.
pub fn check_allocation_bytes(data: &[u8]) -> Result<(), String> {
    let Some((shape, ops)) = ops_from_bytes(data) else {
        return Ok(());
    };
    run_ops(&Scenario::new(&shape), &ops)
        .map(|_| ())
        .map_err(|divergence| format!("shape {shape:?}: {divergence}"))
}
