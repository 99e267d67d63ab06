//! Driving the core through an operation sequence, and holding it to the model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use spiderpool_core::{
    AllocateError, AllocationState, ApplyError, Change, InMemoryState, OwnerKey, Plan, Request, allocate,
    next_free, parse_allocated_ips, pool_status, release, usage,
};

use crate::model::{Model, Refusal, observe};
use crate::ops::{Ask, Nic, Op, Who};
use crate::scenario::Scenario;

/// An operation with `Repeat` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask for addresses.
    Allocate(Ask),
    /// Release an owner's addresses.
    Release(Who, Option<Nic>),
    /// Nothing to do (a repeat before any ask).
    Nothing,
}

/// What the core was asked and answered in one step.
#[derive(Debug, Clone)]
pub enum Event {
    /// An allocation request and the engine's answer; a plan was applied when `Ok`.
    Allocated {
        /// The ask, normalized.
        ask: Box<Ask>,
        /// The request sent.
        request: Box<Request>,
        /// The answer.
        result: Result<Plan, AllocateError>,
    },
    /// A release and the changes it asked for, which were applied.
    Released {
        /// The owner.
        who: Who,
        /// The interface, or all.
        interface: Option<Nic>,
        /// The changes.
        changes: Vec<Change>,
    },
    /// Nothing happened.
    Nothing,
}

/// One step of a [`Driver`].
#[derive(Debug, Clone)]
pub struct Step {
    /// What was asked and answered.
    pub event: Event,
    /// The state before the step.
    pub before: InMemoryState,
    /// Whether writing the changes worked (`Ok` when there was nothing to write).
    pub applied: Result<(), ApplyError>,
}

impl Step {
    /// The plan of a successful allocation.
    pub fn plan(&self) -> Option<&Plan> {
        match &self.event {
            Event::Allocated { result: Ok(plan), .. } => Some(plan),
            _ => None,
        }
    }
}

/// Runs operations against the core alone, as an adapter would: ask, then write the changes.
#[derive(Debug, Clone)]
pub struct Driver<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// The allocation state, after every step so far.
    pub state: InMemoryState,
    asks: Vec<Ask>,
}

impl<'a> Driver<'a> {
    /// A driver with an empty state.
    pub fn new(scenario: &'a Scenario) -> Driver<'a> {
        Driver {
            scenario,
            state: InMemoryState::new(),
            asks: Vec::new(),
        }
    }

    /// What `op` stands for now.
    pub fn resolve(&self, op: &Op) -> Action {
        match op {
            Op::Allocate(ask) => Action::Allocate(ask.normalized()),
            Op::Release { who, interface } => Action::Release(who.normalized(), *interface),
            Op::Repeat { back } => match self.asks.len() {
                0 => Action::Nothing,
                len => Action::Allocate(self.asks[len - 1 - usize::from(*back) % len].clone()),
            },
        }
    }

    /// Performs `op`: allocate and write the plan, or release and write the changes.
    pub fn step(&mut self, op: &Op) -> Step {
        let before = self.state.clone();
        let (event, applied) = match self.resolve(op) {
            Action::Allocate(ask) => {
                let request = ask.request();
                let result = allocate(&self.scenario.catalog, &self.state, &request);
                let applied = match &result {
                    Ok(plan) => self.state.apply(&plan.changes),
                    Err(_) => Ok(()),
                };
                self.asks.push(ask.clone());
                (
                    Event::Allocated {
                        ask: Box::new(ask),
                        request: Box::new(request),
                        result,
                    },
                    applied,
                )
            }
            Action::Release(who, interface) => {
                let Ok(changes) = release(&self.state, &who.owner(), interface.map(Nic::name));
                let applied = self.state.apply(&changes);
                (
                    Event::Released {
                        who,
                        interface,
                        changes,
                    },
                    applied,
                )
            }
            Action::Nothing => (Event::Nothing, Ok(())),
        };
        Step {
            event,
            before,
            applied,
        }
    }
}

/// The first point where the core and the model part ways, or an invariant breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Index of the operation in the sequence.
    pub index: usize,
    /// The operation.
    pub op: Op,
    /// The request sent, for allocations: annotations and facts.
    pub request: Option<String>,
    /// What differs.
    pub detail: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation {}: {:?}", self.index, self.op)?;
        if let Some(request) = &self.request {
            write!(f, "\n  request: {request}")?;
        }
        write!(f, "\n  {}", self.detail)
    }
}

impl std::error::Error for Divergence {}

/// What a run did, to tell whether a sequence reached the interesting cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Allocations that handed out new addresses.
    pub granted: usize,
    /// Allocations answered from addresses already held.
    pub replayed: usize,
    /// Requests refused because no candidate had room or accepted them.
    pub unavailable: usize,
    /// Of those, refusals where some candidate was full.
    pub full: usize,
    /// Requests refused for another reason (annotations, lists).
    pub refused: usize,
    /// Releases that freed at least one address.
    pub released: usize,
}

/// Runs `ops` through the core (allocate, release, [`InMemoryState::apply`]) and through the
/// model, and checks after every step that they agree and that the invariants hold.
pub fn run_ops(scenario: &Scenario, ops: &[Op]) -> Result<Summary, Box<Divergence>> {
    let mut driver = Driver::new(scenario);
    let mut model = Model::new();
    let mut summary = Summary::default();
    for (index, op) in ops.iter().enumerate() {
        let action = driver.resolve(op);
        let step = driver.step(op);
        let mut request_text = None;
        let diverge = |request: Option<String>, detail: String| {
            Box::new(Divergence {
                index,
                op: op.clone(),
                request,
                detail,
            })
        };
        if let Err(error) = &step.applied {
            return Err(diverge(
                None,
                format!("writing the core's changes failed: {error}"),
            ));
        }
        match (&action, &step.event) {
            (Action::Allocate(ask), Event::Allocated { request, result, .. }) => {
                let text = describe(request);
                request_text = Some(text.clone());
                let expected = model.decide(scenario, ask);
                let got = observe(request, result).map_err(|detail| diverge(Some(text.clone()), detail))?;
                if got != expected {
                    return Err(diverge(
                        Some(text),
                        format!(
                            "core and model disagree\n  core:  {got:?}\n  model: {expected:?}\n  core said: {}",
                            match result {
                                Ok(_) => "ok".to_string(),
                                Err(error) => error.to_string(),
                            }
                        ),
                    ));
                }
                match &expected {
                    Ok(grant) if grant.source.is_none() => {
                        summary.replayed += 1;
                        model.apply(scenario, ask.who, grant);
                    }
                    Ok(grant) => {
                        summary.granted += 1;
                        model.apply(scenario, ask.who, grant);
                    }
                    Err(Refusal::NoPoolAvailable(failed)) => {
                        summary.unavailable += 1;
                        let full = failed
                            .iter()
                            .flat_map(|t| &t.candidates)
                            .any(|(_, seen)| matches!(seen, crate::model::Seen::Full { .. }));
                        summary.full += usize::from(full);
                    }
                    Err(_) => summary.refused += 1,
                }
            }
            (Action::Release(who, interface), Event::Released { changes, .. }) => {
                let expected = model.release(scenario, &who.owner(), interface.map(Nic::name));
                let mut got = Vec::new();
                for change in changes {
                    match change {
                        Change::Release {
                            pool,
                            address,
                            holder,
                        } if holder.is_owned_by(&who.owner()) => {
                            got.push((pool.clone(), *address, holder.interface()))
                        }
                        other => {
                            return Err(diverge(
                                None,
                                format!("release asked for a foreign change: {other:?}"),
                            ));
                        }
                    }
                }
                got.sort();
                if got != expected {
                    return Err(diverge(
                        None,
                        format!("release differs\n  core:  {got:?}\n  model: {expected:?}"),
                    ));
                }
                summary.released += usize::from(!got.is_empty());
            }
            (Action::Nothing, Event::Nothing) => {}
            (action, event) => {
                return Err(diverge(
                    None,
                    format!("driver mismatch: {action:?} became {event:?}"),
                ));
            }
        }
        check_state(scenario, &driver.state, &model).map_err(|detail| diverge(request_text, detail))?;
    }
    Ok(summary)
}

/// The facts of a request that decide its candidates, on one line.
pub fn describe(request: &Request) -> String {
    format!(
        "owner {} interface {} node {} families {:?} pod annotations {:?} namespace annotations {:?} network defaults {:?}/{:?}",
        request.owner(),
        request.interface,
        request.node.name,
        request.families,
        request.pod.annotations,
        request.namespace.annotations,
        request.network.default_ipv4,
        request.network.default_ipv6
    )
}

/// Checks the core's state against the model, and the invariants that hold in any state:
/// no address held twice, every address held allowed, counts adding up, status agreeing.
pub fn check_state(scenario: &Scenario, state: &InMemoryState, model: &Model) -> Result<(), String> {
    let mut everywhere: BTreeSet<IpAddr> = BTreeSet::new();
    let mut owners: BTreeSet<OwnerKey> = BTreeSet::new();
    for (index, facts) in scenario.pools.iter().enumerate() {
        let name = facts.name;
        let pool = scenario
            .catalog
            .pool(name)
            .ok_or_else(|| format!("pool {name} is not in the catalog"))?;
        let Ok(held) = state.allocations(name);
        let expected: Vec<_> = model
            .held
            .range((index, IpAddr::V4(0.into()))..)
            .take_while(|((p, _), _)| *p == index)
            .map(|((_, address), holder)| (*address, holder.clone()))
            .collect();
        if held != expected {
            return Err(format!("pool {name} holds {held:?}, the model {expected:?}"));
        }
        for (address, holder) in &held {
            if !everywhere.insert(*address) {
                return Err(format!("{address} is held twice (again in {name})"));
            }
            if !facts.allowed.contains(address) {
                return Err(format!("{address} is held in {name} but not allowed there"));
            }
            owners.insert(holder.owner());
        }
        let Ok(cursor) = state.cursor(name);
        if cursor != model.cursors.get(&index).copied() {
            return Err(format!(
                "pool {name}: cursor {:?}, the model's {:?}",
                cursor,
                model.cursors.get(&index)
            ));
        }
        let Ok(next) = next_free(state, pool);
        let model_next = model.next_free(scenario, index, &[]);
        if next != model_next {
            return Err(format!(
                "pool {name}: next free {next:?}, the model's {model_next:?}"
            ));
        }
        let Ok(used) = usage(pool, state);
        let allocated = held.len() as u128;
        let allocatable = facts
            .listed
            .iter()
            .filter(|a| !scenario.reserved.contains(a))
            .count() as u128;
        let total = facts.listed.len() as u128;
        if used.total != total
            || used.allocatable != allocatable
            || u128::from(used.allocated) != allocated
            || u128::from(used.allocated) + used.free != used.allocatable
            || used.next_free != model_next
        {
            return Err(format!(
                "pool {name}: usage {used:?}, expected total {total}, allocatable {allocatable}, allocated {allocated}"
            ));
        }
        let Ok(status) = pool_status(pool, state);
        if status.allocated_ip_count != Some(allocated as i64) || status.total_ip_count != Some(total as i64)
        {
            return Err(format!("pool {name}: status {status:?}"));
        }
        let records = match &status.allocated_ips {
            None => BTreeMap::new(),
            Some(text) => parse_allocated_ips(text).map_err(|e| format!("pool {name}: status: {e}"))?,
        };
        let addresses: Vec<IpAddr> = records.keys().copied().collect();
        let held_addresses: Vec<IpAddr> = held.iter().map(|(a, _)| *a).collect();
        if addresses != held_addresses {
            return Err(format!(
                "pool {name}: allocatedIPs lists {addresses:?}, held {held_addresses:?}"
            ));
        }
        for (address, holder) in &held {
            let record = &records[address];
            let pod = holder.pod().as_ref().map(ToString::to_string).unwrap_or_default();
            let uid = match holder.owner() {
                OwnerKey::Pod(uid) => uid,
                OwnerKey::Container(_) => String::new(),
            };
            if record.pod != pod || record.pod_uid != uid || record.interface != holder.interface() {
                return Err(format!(
                    "pool {name}: allocatedIPs record {record:?} for holder {holder:?}"
                ));
            }
        }
    }
    for owner in owners {
        let Ok(got) = state.held_by(&owner);
        let got: Vec<_> = got.into_iter().map(|h| (h.pool, h.address, h.holder)).collect();
        let mut expected: Vec<_> = model
            .held_by(&owner)
            .into_iter()
            .map(|(pool, address, holder)| (scenario.pools[pool].name.to_string(), address, holder))
            .collect();
        expected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        if got != expected {
            return Err(format!("held_by({owner}) is {got:?}, the model's {expected:?}"));
        }
        // One address per family per interface.
        let mut seen = BTreeSet::new();
        for (_, address, holder) in &got {
            if !seen.insert((holder.interface(), address.is_ipv6())) {
                return Err(format!(
                    "{owner} holds two addresses of a family on {}",
                    holder.interface()
                ));
            }
        }
    }
    Ok(())
}
