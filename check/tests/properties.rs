//! Properties of the allocation engine and the parsers, each a named test that reads as the
//! rule it checks. Operation sequences run against the small scenario of
//! `spiderpool_check::scenario`, whose pools fill after a few requests.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use proptest::collection::vec;
use proptest::prelude::*;
use spiderpool_check::model::{Model, Seen, TrialView};
use spiderpool_check::ops::{Ask, Families, Nic, Op, Who};
use spiderpool_check::run::{Driver, Event, Step};
use spiderpool_check::{Scenario, Shape, parsers, run_ops, strategy};
use spiderpool_core::annotations::POD_IPPOOL;
use spiderpool_core::{
    AllocateError, AllocationState, Change, Holder, IPPoolStatus, InMemoryState, IpRange, IpSet, IpVersion,
    OwnerKey, Request, allocate, explain, next_free, pool_status, release, state_from_statuses, usage,
};

/// What an observer sees of every pool: allocations, cursor and next free address.
type Snapshot = Vec<(Vec<(IpAddr, Holder)>, Option<IpAddr>, Option<IpAddr>)>;

fn snapshot(scenario: &Scenario, state: &InMemoryState) -> Snapshot {
    scenario
        .pools
        .iter()
        .map(|facts| {
            let pool = scenario.catalog.pool(facts.name).expect("scenario pool");
            let Ok(allocations) = state.allocations(facts.name);
            let Ok(cursor) = state.cursor(facts.name);
            let Ok(next) = next_free(state, pool);
            (allocations, cursor, next)
        })
        .collect()
}

/// Runs `ops` through the core alone, calling `check` after every step.
fn drive(
    shape: &Shape,
    ops: &[Op],
    mut check: impl FnMut(&Driver, &Step) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let scenario = Scenario::new(shape);
    let mut driver = Driver::new(&scenario);
    for op in ops {
        let step = driver.step(op);
        prop_assert!(
            step.applied.is_ok(),
            "writing the engine's changes failed: {:?}",
            step.applied
        );
        check(&driver, &step)?;
    }
    Ok(())
}

/// Every address of the family of `base`, from `base + from` to `base + to`.
fn address(version: IpVersion, base: u128, offset: u128) -> IpAddr {
    version
        .address_at(base + offset)
        .expect("an address of the family")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// No two holders ever share an address, in one pool or across pools, and no plan hands
    /// out an address that is held.
    #[test]
    fn an_address_is_never_held_twice(shape in strategy::shape(), ops in strategy::ops(60)) {
        drive(&shape, &ops, |driver, step| {
            let mut seen = BTreeSet::new();
            for facts in &driver.scenario.pools {
                let Ok(held) = driver.state.allocations(facts.name);
                for (address, _) in held {
                    prop_assert!(seen.insert(address), "{} is held twice", address);
                }
            }
            if let Some(plan) = step.plan() {
                let mut planned = BTreeSet::new();
                for change in &plan.changes {
                    prop_assert!(planned.insert(change.address()), "a plan hands out {} twice", change.address());
                    // A new allocation takes a free address; a transfer moves one the pod holds.
                    let Ok(before) = step.before.holder(change.pool(), change.address());
                    prop_assert_eq!(before.as_ref(), change.holder_before());
                }
            }
            Ok(())
        })?;
    }

    /// Every address handed out (new or replayed) lies in its pool's `ips`, outside its
    /// `excludeIPs`, outside every reserved range, and is not the gateway.
    #[test]
    fn handed_out_addresses_lie_in_ips_minus_excluded_reserved_and_gateway(
        shape in strategy::shape(),
        ops in strategy::ops(60),
    ) {
        drive(&shape, &ops, |driver, step| {
            let scenario = driver.scenario;
            let Some(plan) = step.plan() else { return Ok(()) };
            for assigned in plan.interfaces.iter().flat_map(|i| &i.addresses) {
                let (_, facts) = scenario.pool(&assigned.pool).expect("a scenario pool");
                let in_ips = facts.ips.iter().any(|text| {
                    let range: IpRange = text.parse().expect("scenario range");
                    range.contains(assigned.address)
                });
                let excluded = facts.exclude_ips.iter().any(|text| text.parse::<IpAddr>().ok() == Some(assigned.address));
                prop_assert!(in_ips && !excluded, "{} is not in ips minus excludeIPs of {}", assigned.address, facts.name);
                prop_assert!(!scenario.reserved.contains(&assigned.address), "{} is reserved", assigned.address);
                prop_assert_ne!(Some(assigned.address), facts.gateway, "the gateway is handed out");
                prop_assert!(facts.allowed.contains(&assigned.address));
                prop_assert_eq!(assigned.gateway, facts.gateway);
            }
            Ok(())
        })?;
    }

    /// In every pool, allocated + free = allocatable (ips minus excludeIPs minus reserved IPs),
    /// `totalIPCount` = |ips − excludeIPs|, and the status counts what is held.
    #[test]
    fn allocated_plus_free_equals_total(shape in strategy::shape(), ops in strategy::ops(60)) {
        drive(&shape, &ops, |driver, _| {
            let scenario = driver.scenario;
            for facts in &scenario.pools {
                let pool = scenario.catalog.pool(facts.name).expect("scenario pool");
                let Ok(used) = usage(pool, &driver.state);
                let listed = facts.listed.len() as u128;
                let allocatable = facts.listed.difference(&scenario.reserved).count() as u128;
                prop_assert_eq!(used.total, listed, "total of {}", facts.name);
                prop_assert_eq!(used.allocatable, allocatable, "allocatable of {}", facts.name);
                prop_assert_eq!(u128::from(used.allocated) + used.free, used.allocatable, "{}: {:?}", facts.name, used);
                let Ok(held) = driver.state.allocations(facts.name);
                prop_assert_eq!(used.allocated as usize, held.len());
                prop_assert_eq!(used.next_free.is_none(), used.free == 0, "{}: {:?}", facts.name, used);
                let Ok(status) = pool_status(pool, &driver.state);
                prop_assert_eq!(status.allocated_ip_count, Some(used.allocated as i64));
                prop_assert_eq!(status.total_ip_count, Some(listed as i64));
            }
            Ok(())
        })?;
    }

    /// What pools' statuses record reads back as the same state: the holders of every
    /// address, with pod and interface, and the cursor. The cluster mode keeps its state only
    /// there, so an allocation continues exactly where the one before it left off.
    #[test]
    fn pool_statuses_read_back_as_the_same_state(shape in strategy::shape(), ops in strategy::ops(60)) {
        drive(&shape, &ops, |driver, _| {
            let scenario = driver.scenario;
            let statuses: Vec<(&str, IPPoolStatus)> = scenario
                .pools
                .iter()
                .map(|facts| {
                    let pool = scenario.catalog.pool(facts.name).expect("scenario pool");
                    let Ok(status) = pool_status(pool, &driver.state);
                    (facts.name, status)
                })
                .collect();
            let read = state_from_statuses(statuses.iter().map(|(name, status)| (*name, status)))
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert_eq!(snapshot(scenario, &read), snapshot(scenario, &driver.state));
            Ok(())
        })?;
    }

    /// A refused request leaves every pool as it was: holders, cursor and next free address;
    /// the addresses it would have taken for the families that had room stay free. A batch of
    /// changes that cannot be written entirely is not written at all.
    #[test]
    fn a_failed_request_changes_nothing(shape in strategy::shape(), ops in strategy::ops(60)) {
        drive(&shape, &ops, |driver, step| {
            let scenario = driver.scenario;
            match &step.event {
                Event::Allocated { result: Err(error), .. } => {
                    prop_assert_eq!(snapshot(scenario, &step.before), snapshot(scenario, &driver.state));
                    if let AllocateError::NoPoolAvailable(unavailable) = error {
                        prop_assert!(!unavailable.failed.is_empty());
                        for trial in &unavailable.failed {
                            prop_assert!(
                                TrialView::of(trial).candidates.iter().all(|(_, seen)| !matches!(seen, Seen::Chosen(_))),
                                "a failed trial chose a pool: {}", trial
                            );
                        }
                    }
                }
                Event::Allocated { result: Ok(plan), .. } if !plan.changes.is_empty() => {
                    // The same changes plus one that conflicts: nothing is written.
                    let Some(holder) = plan.changes[0].holder_after() else {
                        return Err(TestCaseError::fail("an allocation plan releases"));
                    };
                    let pod = holder.pod();
                    let stranger = Holder::new(&holder.owner(), "never", pod.as_ref(), &holder.container_id());
                    let mut batch = plan.changes.clone();
                    batch.push(Change::Release {
                        pool: plan.changes[0].pool().to_string(),
                        address: plan.changes[0].address(),
                        holder: stranger,
                    });
                    let mut state = step.before.clone();
                    prop_assert!(state.apply(&batch).is_err());
                    prop_assert_eq!(snapshot(scenario, &state), snapshot(scenario, &step.before));
                    prop_assert_eq!(state.held_by(&holder.owner()), step.before.held_by(&holder.owner()));
                }
                _ => {}
            }
            Ok(())
        })?;
    }

    /// Asking again with the same owner and interface returns the same addresses and allocates
    /// nothing, even from another sandbox of the pod (whose records then move to it), another
    /// node or other annotations.
    #[test]
    fn a_repeated_request_returns_the_same_addresses(
        shape in strategy::shape(),
        ops in strategy::ops(40),
        other in strategy::ask(),
    ) {
        drive(&shape, &ops, |driver, step| {
            let Event::Allocated { request, result: Ok(plan), ask, .. } = &step.event else { return Ok(()) };
            let catalog = &driver.scenario.catalog;
            let again = allocate(catalog, &driver.state, request).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(again.is_replay() && again.changes.is_empty(), "asking again changes {:?}", again.changes);
            prop_assert_eq!(again.interface(&request.interface), plan.interface(&request.interface));
            // The owner's key decides, not the circumstances of the retry.
            let mut retry = other.clone();
            retry.interface = ask.interface;
            retry.who = Who { sandbox: !ask.who.sandbox, ..ask.who };
            if ask.who.uid().is_some() {
                let retried = allocate(catalog, &driver.state, &retry.request())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(retried.is_replay());
                let transfers_only = retried.changes.iter().all(|c| matches!(c, Change::Transfer { .. }));
                prop_assert!(transfers_only, "a retry from another sandbox allocates: {:?}", retried.changes);
                let held = |p: &spiderpool_core::Plan| p.interface(&request.interface).map(|i| i.addresses.clone());
                prop_assert_eq!(held(&retried), held(plan));
            }
            Ok(())
        })?;
    }

    /// For each family, the pool chosen is the first candidate, in the order written (globs
    /// expanded in name order), that exists, is enabled, is of the family, serves the node,
    /// namespace, pod and attachment, and has a free address; every candidate before it is
    /// rejected.
    #[test]
    fn the_chosen_pool_is_the_first_candidate_in_written_order_that_accepts_and_has_room(
        shape in strategy::shape(),
        setup in strategy::ops(40),
        asks in vec((strategy::who(), 0u8..3, strategy::lists(), proptest::option::of(any::<bool>())), 1..20),
    ) {
        let scenario = Scenario::new(&shape);
        let mut driver = Driver::new(&scenario);
        for op in &setup {
            driver.step(op);
        }
        for (who, node, lists, attachment) in asks {
            let mut ask = Ask::ippool(who, node, Nic::Eth0, &[], &[]);
            ask.attachment = attachment;
            ask.ippool.as_mut().expect("ippool").lists = lists.clone();
            let ask = ask.normalized();
            let step = driver.step(&Op::Allocate(ask.clone()));
            let Event::Allocated { result, .. } = &step.event else { unreachable!() };
            let trials: Vec<TrialView> = match result {
                Ok(plan) if plan.is_replay() => continue,
                Ok(plan) => plan.trials.iter().map(TrialView::of).collect(),
                Err(AllocateError::NoPoolAvailable(unavailable)) => unavailable.failed.iter().map(TrialView::of).collect(),
                Err(_) => continue,
            };
            let before = &step.before;
            let mut taken: Vec<(String, IpAddr)> = Vec::new();
            for trial in trials {
                let lists = ask.ippool.as_ref().expect("ippool").lists.clone();
                let written = match trial.version {
                    IpVersion::V4 => lists.ipv4_names(),
                    IpVersion::V6 => lists.ipv6_names(),
                };
                let candidates = Model::expand(&scenario, &written, trial.version);
                let has_room = |name: &str| {
                    let (_, facts) = scenario.pool(name).expect("pool");
                    facts.allowed.iter().any(|a| before.holder(name, *a) == Ok(None) && !taken.contains(&(name.to_string(), *a)))
                };
                let first = candidates.iter().position(|name| {
                    scenario.pool(name).is_some_and(|(_, facts)| {
                        Model::rejection(facts, trial.version, &ask).is_none() && has_room(name)
                    })
                });
                let tried: Vec<&String> = trial.candidates.iter().map(|(name, _)| name).collect();
                match first {
                    Some(index) => {
                        prop_assert_eq!(tried, candidates[..=index].iter().collect::<Vec<_>>());
                        let (name, seen) = trial.candidates.last().expect("a candidate");
                        let Seen::Chosen(address) = seen else {
                            return Err(TestCaseError::fail(format!("{name} is not chosen: {seen:?}")));
                        };
                        taken.push((name.clone(), *address));
                    }
                    None => {
                        prop_assert_eq!(tried, candidates.iter().collect::<Vec<_>>());
                    }
                }
                for (_, seen) in &trial.candidates[..trial.candidates.len().saturating_sub(1)] {
                    prop_assert!(!matches!(seen, Seen::Chosen(_) | Seen::Usable(_)), "an earlier candidate: {seen:?}");
                }
            }
        }
    }

    /// A request needing several addresses (both families, or several interfaces through
    /// `ipam.spidernet.io/ippools`) gets all of them or none.
    #[test]
    fn dual_stack_and_multi_interface_requests_are_all_or_nothing(
        shape in strategy::shape(),
        ops in strategy::ops(60),
    ) {
        drive(&shape, &ops, |driver, step| {
            let Event::Allocated { ask, result, .. } = &step.event else { return Ok(()) };
            let scenario = driver.scenario;
            // The model only reads what the request asks for here.
            let Ok(selection) = Model::new().select(scenario, ask) else { return Ok(()) };
            let Ok(held_before) = step.before.held_by(&ask.who.owner());
            let held_before: BTreeSet<String> = held_before
                .into_iter()
                .map(|h| h.holder.interface())
                .collect();
            if held_before.contains(ask.interface.name()) {
                return Ok(());
            }
            match result {
                Ok(plan) => {
                    for selected in &selection.interfaces {
                        let entry = plan.interface(&selected.interface).expect("every interface answered");
                        if held_before.contains(&selected.interface) {
                            continue;
                        }
                        let families: Vec<IpVersion> = entry.addresses.iter().map(|a| IpVersion::of(a.address)).collect();
                        let wanted: Vec<IpVersion> = selected.families.iter().map(|(v, _)| *v).collect();
                        prop_assert_eq!(families, wanted, "interface {}", selected.interface);
                    }
                    let fresh: usize = selection
                        .interfaces
                        .iter()
                        .filter(|s| !held_before.contains(&s.interface))
                        .map(|s| s.families.len())
                        .sum();
                    let allocations = plan.changes.iter().filter(|c| matches!(c, Change::Allocate { .. })).count();
                    prop_assert_eq!(allocations, fresh);
                }
                Err(_) => {
                    prop_assert_eq!(snapshot(scenario, &step.before), snapshot(scenario, &driver.state));
                    prop_assert_eq!(
                        driver.state.held_by(&ask.who.owner()),
                        step.before.held_by(&ask.who.owner())
                    );
                }
            }
            Ok(())
        })?;
    }

    /// A pod that takes an address and lets it go does not see it handed to the next pod
    /// asking the same pool, unless it is the pool's only free address.
    #[test]
    fn a_just_released_address_is_not_reused_at_once(
        shape in strategy::shape(),
        setup in strategy::ops(40),
        pool_choice in 0usize..7,
        node in 0usize..3,
    ) {
        let scenario = Scenario::new(&shape);
        let facts = &scenario.pools[pool_choice];
        prop_assume!(!facts.disabled && facts.serves(node));
        let mut driver = Driver::new(&scenario);
        for op in &setup {
            driver.step(op);
        }
        let key = match facts.version { IpVersion::V4 => "ipv4", IpVersion::V6 => "ipv6" };
        let request = |id: &str| {
            let mut request = Request::new(id, "eth0");
            request.node.name = spiderpool_check::scenario::NODES[node].into();
            request.node.labels = spiderpool_check::scenario::node_labels(node);
            request.pod.annotations.insert(POD_IPPOOL.into(), format!(r#"{{"{key}": ["{}"]}}"#, facts.name));
            request
        };
        let mut state = driver.state.clone();
        let first = allocate(&scenario.catalog, &state, &request("leaving"));
        prop_assume!(first.is_ok());
        let first = first.expect("checked");
        let taken = first.interfaces[0].addresses[0].address;
        state.apply(&first.changes).expect("plan applies");
        let Ok(freed) = release(&state, &OwnerKey::Container("leaving".into()), None);
        prop_assert_eq!(freed.len(), 1);
        state.apply(&freed).expect("release applies");
        let free = facts.allowed.iter().filter(|a| state.holder(facts.name, **a) == Ok(None)).count();
        let next = allocate(&scenario.catalog, &state, &request("arriving")).expect("the address is free again");
        let given = next.interfaces[0].addresses[0].address;
        if free > 1 {
            prop_assert_ne!(given, taken, "{} was handed out again at once while {} addresses are free", taken, free);
        } else {
            prop_assert_eq!(given, taken);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The differential test: over random operation sequences, the engine decides exactly what
    /// the naive model decides (candidates, verdicts, addresses, cursor, releases), and every
    /// invariant holds after every step.
    #[test]
    fn engine_agrees_with_naive_model_over_random_operation_sequences(
        shape in strategy::shape(),
        ops in strategy::ops(100),
    ) {
        let scenario = Scenario::new(&shape);
        if let Err(divergence) = run_ops(&scenario, &ops) {
            prop_assert!(false, "{}", divergence);
        }
    }
}

/// A small universe of offsets for set tests, at the bottom or the top of a family.
fn universe() -> impl Strategy<Value = (IpVersion, u128)> {
    prop_oneof![
        Just((IpVersion::V4, 0)),
        Just((IpVersion::V4, u128::from(u32::MAX) - 63)),
        Just((IpVersion::V6, 0)),
        Just((IpVersion::V6, u128::MAX - 63)),
        Just((IpVersion::V6, 0xfd00_u128 << 112)),
    ]
}

fn offsets() -> impl Strategy<Value = Vec<(u128, u128)>> {
    vec(
        (0u128..64, 0u128..64).prop_map(|(a, b)| (a.min(b), a.max(b))),
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any range, printed, parses back to itself, in either family and at the family's edges;
    /// texts written otherwise (IPv6 uncompressed, upper case) read to the same range, and any
    /// text is accepted exactly when the grammar allows it.
    #[test]
    fn range_text_round_trips(
        v4 in (any::<u32>(), any::<u32>()),
        v6 in (any::<u128>(), any::<u128>()),
        edge in 0u128..4,
        noise in "[0-9a-fA-F:.\\-/ ]{0,24}",
    ) {
        let v4 = (v4.0.min(v4.1), v4.0.max(v4.1));
        let v6 = (v6.0.min(v6.1), v6.0.max(v6.1));
        let cases = [
            (IpAddr::V4(v4.0.into()), IpAddr::V4(v4.1.into())),
            (IpAddr::V6(v6.0.into()), IpAddr::V6(v6.1.into())),
            (IpAddr::V4((u32::MAX - edge as u32).into()), IpAddr::V4(u32::MAX.into())),
            (IpAddr::V6((u128::MAX - edge).into()), IpAddr::V6(u128::MAX.into())),
            (IpAddr::V6(0u128.into()), IpAddr::V6(edge.into())),
        ];
        for (start, end) in cases {
            let range = IpRange::new(start, end).expect("ordered");
            let text = range.to_string();
            prop_assert_eq!(text.parse::<IpRange>(), Ok(range));
            parsers::check_range_text(&text).map_err(|f| TestCaseError::fail(f.to_string()))?;
            if let (IpAddr::V6(s), IpAddr::V6(e)) = (start, end) {
                let long = |a: Ipv6Addr| a.segments().iter().map(|s| format!("{s:04X}")).collect::<Vec<_>>().join(":");
                let written = format!("{}-{}", long(s), long(e));
                prop_assert_eq!(written.parse::<IpRange>(), Ok(range));
                parsers::check_range_text(&written).map_err(|f| TestCaseError::fail(f.to_string()))?;
            }
        }
        parsers::check_range_text(&noise).map_err(|f| TestCaseError::fail(f.to_string()))?;
    }

    /// Union, difference, intersection, counts, membership, containment, first address and
    /// the printed form of address sets agree with plain sets of integers.
    #[test]
    fn ip_set_operations_agree_with_naive_sets(
        (version, base) in universe(),
        a in offsets(),
        b in offsets(),
        probe in (0u128..64, 0u128..64),
    ) {
        let build = |ranges: &[(u128, u128)]| {
            let set = IpSet::from_ranges(
                version,
                ranges.iter().map(|&(s, e)| IpRange::new(address(version, base, s), address(version, base, e)).expect("ordered")),
            )
            .expect("one family");
            let naive: BTreeSet<u128> = ranges.iter().flat_map(|&(s, e)| s..=e).collect();
            (set, naive)
        };
        let ((set_a, naive_a), (set_b, naive_b)) = (build(&a), build(&b));
        let results = [
            (set_a.union(&set_b), naive_a.union(&naive_b).copied().collect::<BTreeSet<u128>>()),
            (set_a.difference(&set_b), naive_a.difference(&naive_b).copied().collect()),
            (set_a.intersection(&set_b), naive_a.intersection(&naive_b).copied().collect()),
            (set_a.clone(), naive_a.clone()),
        ];
        for (set, naive) in &results {
            prop_assert_eq!(set.len(), naive.len() as u128, "{}", set);
            prop_assert_eq!(set.is_empty(), naive.is_empty());
            for offset in 0..64u128 {
                prop_assert_eq!(set.contains(address(version, base, offset)), naive.contains(&offset), "{} in {}", offset, set);
            }
            prop_assert_eq!(set.first(), naive.first().map(|&o| address(version, base, o)));
            // Maximal ranges: ascending, disjoint, not adjacent.
            let ranges: Vec<IpRange> = set.ranges().collect();
            for pair in ranges.windows(2) {
                let gap_start = IpRange::new(pair[0].end(), pair[1].start()).expect("ascending");
                prop_assert!(gap_start.len() > 2, "ranges {} and {} touch", pair[0], pair[1]);
            }
            // The printed form lists exactly the set's ranges.
            let text = set.to_string();
            let parsed: Vec<IpRange> = if text.is_empty() {
                Vec::new()
            } else {
                text.split(',').map(|part| part.parse().expect("a printed range parses")).collect()
            };
            prop_assert_eq!(&parsed, &ranges);
            let (lo, hi) = (probe.0.min(probe.1), probe.0.max(probe.1));
            let range = IpRange::new(address(version, base, lo), address(version, base, hi)).expect("ordered");
            prop_assert_eq!(set.contains_range(&range), (lo..=hi).all(|o| naive.contains(&o)));
        }
        prop_assert_eq!(set_a.intersects(&set_b), !naive_a.is_disjoint(&naive_b));
        let other = match version { IpVersion::V4 => IpVersion::V6, IpVersion::V6 => IpVersion::V4 };
        let foreign = IpRange::single(address(other, 0, 1));
        prop_assert!(IpSet::from_ranges(version, [foreign]).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// `explain` reports the outcome `allocate` would have now, with the same addresses.
    #[test]
    fn explain_tells_what_allocate_would_do(shape in strategy::shape(), ops in strategy::ops(60)) {
        drive(&shape, &ops, |driver, step| {
            let Event::Allocated { request, result, .. } = &step.event else { return Ok(()) };
            let explained = explain(&driver.scenario.catalog, &step.before, request);
            let view = |r: &Result<spiderpool_core::Plan, AllocateError>| {
                r.as_ref().map(|p| (p.interfaces.clone(), p.changes.clone())).map_err(|e| e.to_string())
            };
            prop_assert_eq!(view(&explained.outcome), view(result));
            Ok(())
        })?;
    }
}

/// The regression behind `explain_tells_what_allocate_would_do`: a one-address pool, taken by
/// the pod that asks again.
#[test]
fn explaining_a_served_request_in_a_full_pool_reports_the_held_address() {
    let scenario = Scenario::new(&Shape { sizes: [0; 7] });
    let request = Ask::ippool(
        Who {
            slot: 0,
            sandbox: false,
        },
        0,
        Nic::Eth0,
        &[2],
        &[],
    )
    .request();
    let mut state = InMemoryState::new();
    let plan = allocate(&scenario.catalog, &state, &request).expect("v4-zone-a has one address");
    state.apply(&plan.changes).expect("applies");
    let again = allocate(&scenario.catalog, &state, &request).expect("a retry is answered");
    let explained = explain(&scenario.catalog, &state, &request);
    assert_eq!(
        explained.outcome.map(|p| p.interfaces).map_err(|e| e.to_string()),
        Ok(again.interfaces)
    );
}

/// The scenario is not vacuous: pools fill, a full pool is rejected as full while the next
/// candidate serves, and a dual-stack request fails whole when IPv6 is exhausted.
#[test]
fn pools_of_the_scenario_fill_up_and_requests_are_refused() {
    // v6-zone-b gets three addresses; v4-zone-b has four, one of them its excluded gateway.
    let scenario = Scenario::new(&Shape {
        sizes: [3, 3, 3, 3, 3, 3, 2],
    });
    let allowed = |name: &str| scenario.pool(name).expect("pool").1.allowed.len();
    assert_eq!((allowed("v4-zone-b"), allowed("v6-zone-b")), (3, 3));
    let ops: Vec<Op> = (0..4)
        .map(|slot| {
            // On node-b, through the attachment v6-zone-b serves.
            let mut ask = Ask::ippool(Who { slot, sandbox: false }, 1, Nic::Eth0, &[3, 1], &[6]);
            ask.families = Families::DualStack;
            ask.attachment = Some(true);
            Op::Allocate(ask)
        })
        .collect();
    let summary = run_ops(&scenario, &ops).expect("core and model agree");
    assert_eq!((summary.granted, summary.unavailable, summary.full), (3, 1, 1));
    let mut driver = Driver::new(&scenario);
    let steps: Vec<Step> = ops.iter().map(|op| driver.step(op)).collect();
    let Event::Allocated {
        result: Err(error), ..
    } = &steps[3].event
    else {
        panic!("the fourth request should fail")
    };
    assert!(
        error
            .to_string()
            .contains("eth0 IPv6: v6-zone-b: full: 3 of 3 allocatable addresses in use"),
        "{error}"
    );
    // The IPv4 half found room in v4-shared, and took nothing there.
    assert!(!error.to_string().contains("eth0 IPv4"), "{error}");
    let held = |name: &str| {
        let Ok(held) = driver.state.allocations(name);
        held.len()
    };
    assert_eq!(
        (held("v4-zone-b"), held("v6-zone-b"), held("v4-shared")),
        (3, 3, 0)
    );
}

/// The second face of the same bug: with `ipam.spidernet.io/ippools`, an interface the owner
/// already holds is planned afresh, so explain's plan gives `net1` a second address.
#[test]
fn explaining_a_multi_interface_request_keeps_the_held_interface() {
    use spiderpool_check::ops::{Lists, NicPools, PoolRef};
    let scenario = Scenario::standard();
    let who = Who {
        slot: 0,
        sandbox: false,
    };
    let entry = |nic, pool| NicPools {
        interface: Some(nic),
        lists: Lists {
            ipv4: vec![PoolRef(pool)],
            ipv6: Vec::new(),
        },
        clean_gateway: false,
    };
    let mut ask = Ask::ippool(who, 0, Nic::Eth0, &[], &[]);
    ask.ippool = None;
    ask.ippools = Some(vec![entry(Nic::Eth0, 1), entry(Nic::Net1, 2)]);
    let request = ask.request();
    let mut state = InMemoryState::new();
    let both = allocate(&scenario.catalog, &state, &request).expect("both interfaces");
    state.apply(&both.changes).expect("applies");
    let Ok(eth0) = release(&state, &who.owner(), Some("eth0"));
    state.apply(&eth0).expect("applies");
    let again = allocate(&scenario.catalog, &state, &request).expect("eth0 again");
    assert_eq!(
        again.changes.len(),
        1,
        "only eth0 is allocated: {:?}",
        again.changes
    );
    let explained = explain(&scenario.catalog, &state, &request)
        .outcome
        .expect("a plan");
    assert_eq!(explained.changes, again.changes);
}
