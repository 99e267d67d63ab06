//! The SQLite store answers the engine exactly as the in-memory state does: the same plans,
//! the same releases, the same state after every step, over random operation sequences.

use std::time::Duration;

use proptest::prelude::*;
use spiderpool_check::ops::Ask;
use spiderpool_check::{Op, Scenario, strategy};
use spiderpool_cni::demo::TemporaryDir;
use spiderpool_cni::store::{Store, StoreError, Transaction};
use spiderpool_core::{AllocateError, AllocationState, InMemoryState, allocate, next_free, release};

/// A failure inside a store transaction, as text.
#[derive(Debug)]
struct Failure(String);

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure(error.to_string())
    }
}

/// The engine's refusal over the store as the in-memory state gives it; a failed read of the
/// store fails the test.
fn refusal(error: AllocateError<StoreError>) -> Result<AllocateError, Failure> {
    Ok(match error {
        AllocateError::State(error) => return Err(error.into()),
        AllocateError::Selection(error) => AllocateError::Selection(error),
        AllocateError::NoPoolAvailable(unavailable) => AllocateError::NoPoolAvailable(unavailable),
        AllocateError::Routes(error) => AllocateError::Routes(error),
        AllocateError::HeldInMissingPool {
            who,
            interface,
            pool,
            address,
        } => AllocateError::HeldInMissingPool {
            who,
            interface,
            pool,
            address,
        },
        AllocateError::HeldInInvalidPool {
            who,
            interface,
            pool,
            address,
            error,
        } => AllocateError::HeldInInvalidPool {
            who,
            interface,
            pool,
            address,
            error,
        },
    })
}

/// Everything the engine can observe of one pool.
#[derive(Debug, PartialEq, Eq)]
struct PoolView {
    name: String,
    allocations: Vec<String>,
    allocated: u64,
    cursor: Option<String>,
    next_free: Option<String>,
}

/// What the engine can observe of every pool of the scenario.
fn observe<S: AllocationState + ?Sized>(scenario: &Scenario, state: &S) -> Result<Vec<PoolView>, S::Error> {
    scenario
        .pools
        .iter()
        .map(|facts| {
            let allocations = state
                .allocations(facts.name)?
                .into_iter()
                .map(|(address, holder)| format!("{address} {holder:?}"))
                .collect();
            let next = scenario
                .catalog
                .pool(facts.name)
                .map(|pool| next_free(state, pool))
                .transpose()?
                .flatten()
                .map(|a| a.to_string());
            Ok(PoolView {
                name: facts.name.to_string(),
                allocations,
                allocated: state.allocated_count(facts.name)?,
                cursor: state.cursor(facts.name)?.map(|a| a.to_string()),
                next_free: next,
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_sqlite_store_decides_exactly_as_the_in_memory_state(shape in strategy::shape(), ops in strategy::ops(40)) {
        let scenario = Scenario::new(&shape);
        let dir = TemporaryDir::new("spiderpool-store-model").expect("a temporary directory");
        let mut store = Store::open(dir.path(), Duration::from_secs(5)).expect("a new store");
        let mut memory = InMemoryState::new();
        let mut asks: Vec<Ask> = Vec::new();
        for op in &ops {
            let op = match op {
                Op::Repeat { back } if asks.is_empty() => { let _ = back; continue; }
                Op::Repeat { back } => Op::Allocate(asks[asks.len() - 1 - usize::from(*back) % asks.len()].clone()),
                other => other.clone(),
            };
            match &op {
                Op::Allocate(ask) => {
                    let request = ask.request();
                    let expected = allocate(&scenario.catalog, &memory, &request);
                    let got = store
                        .write(|transaction: &Transaction<'_>| {
                            let plan = match allocate(&scenario.catalog, transaction, &request) {
                                Ok(plan) => Ok(plan),
                                Err(error) => Err(refusal(error)?),
                            };
                            if let Ok(plan) = &plan {
                                transaction.apply(&plan.changes, "model").map_err(|err| Failure(err.to_string()))?;
                            }
                            Ok::<_, Failure>(plan)
                        })
                        .map_err(|failure| TestCaseError::fail(failure.0))?;
                    prop_assert_eq!(&got, &expected);
                    if let Ok(plan) = &expected {
                        memory.apply(&plan.changes).expect("the in-memory state takes the plan");
                    }
                    asks.push(ask.clone());
                }
                Op::Release { who, interface } => {
                    let interface = interface.map(|nic| nic.name());
                    let Ok(expected) = release(&memory, &who.owner(), interface);
                    let got = store
                        .write(|transaction: &Transaction<'_>| {
                            let changes = release(transaction, &who.owner(), interface)?;
                            transaction.apply(&changes, "model").map_err(|err| Failure(err.to_string()))?;
                            Ok::<_, Failure>(changes)
                        })
                        .map_err(|failure| TestCaseError::fail(failure.0))?;
                    prop_assert_eq!(&got, &expected);
                    memory.apply(&expected).expect("the in-memory state takes the release");
                }
                Op::Repeat { .. } => unreachable!("resolved above"),
            }
            let stored = store
                .read(|transaction: &Transaction<'_>| Ok::<_, Failure>(observe(&scenario, transaction)?))
                .map_err(|failure| TestCaseError::fail(failure.0))?;
            let Ok(remembered) = observe(&scenario, &memory);
            prop_assert_eq!(stored, remembered);
        }
    }
}
