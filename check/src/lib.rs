//! The test kit of the workspace: the reference model and invariant checks of
//! `spiderpool-core`, shared by the property tests (`tests/properties.rs`) and the fuzz targets
//! (`fuzz/`); the simulation of the cluster protocol; and the helpers every test suite shares.
//!
//! - [`scenario`]: a small fixed cluster (seven pools of both families, three nodes, excluded,
//!   reserved and gateway addresses) whose pools fill up after a few requests.
//! - [`ops`]: the operations of a sequence ([`Op`]), derived from fuzz bytes with
//!   [`arbitrary::Arbitrary`] or drawn by the proptest strategies of [`strategy`].
//! - [`model`]: the naive reference model. Per pool, a plain map of held addresses and the last
//!   address allocated; candidates, rejections and the next free address are found by brute
//!   force over the scenario's facts, which are computed from the spec text with the standard
//!   library only.
//! - [`run`]: [`run_ops`] drives the core (allocate, release, `InMemoryState::apply`) and
//!   the model side by side and reports the first divergence or broken invariant.
//! - [`parsers`]: checks of every parser for arbitrary text; [`boundary`]: checks of what
//!   crosses a trust boundary (a CNI call, the agent's wire request, records read back from
//!   the API server); and [`targets`], the fuzz targets that call them.
//! - [`sim`]: a simulated API server and a seeded scheduler that interleave several node
//!   agents and a garbage collector running the core's cluster round, with injected conflicts,
//!   failures and crashes, checking the protocol's invariants after every step.
//! - [`kit`]: documents and requests for example tests, the plugin binary run as a runtime
//!   runs it, and the real API server of the Kubernetes tests.
//!
//! ```
//! use spiderpool_check::{Op, Scenario, run_ops, ops::{Ask, Nic, Who}};
//! let scenario = Scenario::standard();
//! let who = Who { slot: 0, sandbox: false };
//! // Pod 0 on node-a asks for v4-zone-a, then asks again, then releases.
//! let ask = Ask::ippool(who, 0, Nic::Eth0, &[2], &[]);
//! let ops = [Op::Allocate(ask.clone()), Op::Allocate(ask), Op::Release { who, interface: None }];
//! let summary = run_ops(&scenario, &ops).unwrap();
//! assert_eq!((summary.granted, summary.replayed, summary.released), (1, 1, 1));
//! ```

pub mod boundary;
pub mod kit;
pub mod model;
pub mod ops;
pub mod parsers;
pub mod run;
pub mod scenario;
pub mod sim;
#[cfg(feature = "proptest")]
pub mod strategy;
pub mod targets;

pub use model::{Grant, Model, Outcome, Refusal};
pub use ops::Op;
pub use parsers::Failure;
pub use run::{Divergence, Driver, Summary, check_state, run_ops};
pub use scenario::{Scenario, Shape};
pub use targets::Target;
