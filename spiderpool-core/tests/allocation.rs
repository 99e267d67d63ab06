//! Allocation: all-or-nothing, idempotent, round-robin, never handing out what is withheld.

use spiderpool_check::kit::documents::{attach, catalog, pod, pool, reserved, with_ippool};
use spiderpool_core::{
    AllocateError, AllocationState, IPPoolStatus, InMemoryState, OwnerKey, Request, allocate, annotations,
    collect_garbage, next_free, parse_allocated_ips, pool_status, release, release_attachment,
    state_from_statuses, usage,
};

fn dual_stack_pools() -> Vec<String> {
    vec![
        pool(
            "v4",
            "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.11], gateway: 10.6.0.1}",
        ),
        pool(
            "v6",
            "{subnet: 'fd00:6::/64', ips: ['fd00:6::10'], gateway: 'fd00:6::1'}",
        ),
    ]
}

const DUAL: &str = r#"{"ipv4": ["v4"], "ipv6": ["v6"]}"#;

#[test]
fn dual_stack_gets_both_families_in_one_plan() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let addresses = attach(&catalog, &mut state, &with_ippool(pod("a", "n"), DUAL));
    assert_eq!(addresses, ["v4 10.6.0.10", "v6 fd00:6::10"]);
}

#[test]
fn dual_stack_is_all_or_nothing() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    attach(&catalog, &mut state, &with_ippool(pod("a", "n"), DUAL));
    // IPv4 has room for one more, IPv6 has none: the request fails and writes nothing.
    let err = allocate(&catalog, &state, &with_ippool(pod("b", "n"), DUAL)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no pool can serve pod default/b on node n: eth0 IPv6: v6: full: 1 of 1 allocatable addresses in use; \
         free addresses, or add a pool that serves this node and name it"
    );
    assert_eq!(state.allocated_count("v4"), Ok(1));
    assert_eq!(
        next_free(&state, catalog.pool("v4").unwrap())
            .unwrap()
            .unwrap()
            .to_string(),
        "10.6.0.11"
    );
}

fn multi_nic(request: Request) -> Request {
    let mut request = request;
    request.pod.annotations.insert(
        annotations::POD_IPPOOLS.into(),
        r#"[{"interface": "eth0", "ipv4": ["v4"]}, {"interface": "net1", "ipv6": ["v6"], "cleangateway": true}]"#.into(),
    );
    request
}

#[test]
fn the_first_interface_allocates_every_listed_interface_at_once() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let plan = allocate(&catalog, &state, &multi_nic(pod("a", "n"))).unwrap();
    assert_eq!(plan.changes.len(), 2);
    let eth0 = plan.interface("eth0").unwrap();
    let net1 = plan.interface("net1").unwrap();
    assert_eq!(eth0.addresses[0].address.to_string(), "10.6.0.10");
    assert!(
        eth0.default_route,
        "the first interface carries the default route"
    );
    assert_eq!(net1.addresses[0].address.to_string(), "fd00:6::10");
    assert!(!net1.default_route);
    state.apply(&plan.changes).unwrap();

    // The ADD of net1 returns what was stored.
    let mut net1_request = multi_nic(pod("a", "n"));
    net1_request.interface = "net1".into();
    let replay = allocate(&catalog, &state, &net1_request).unwrap();
    assert!(replay.is_replay());
    assert_eq!(replay.interface("net1"), Some(net1));

    // Releasing every interface of the owner frees both.
    let owner = OwnerKey::Pod("uid-a".into());
    state.apply(&release(&state, &owner, None).unwrap()).unwrap();
    assert!(state.held_by(&owner).unwrap().is_empty());
}

#[test]
fn multi_interface_requests_are_all_or_nothing() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    attach(
        &catalog,
        &mut state,
        &with_ippool(pod("first", "n"), r#"{"ipv6": ["v6"]}"#),
    );
    let err = allocate(&catalog, &state, &multi_nic(pod("a", "n"))).unwrap_err();
    assert!(matches!(err, AllocateError::NoPoolAvailable(_)), "{err}");
    assert_eq!(state.allocated_count("v4"), Ok(0), "eth0 was not allocated alone");
}

#[test]
fn an_interface_missing_from_the_ippools_annotation_is_an_error() {
    let catalog = catalog(&dual_stack_pools());
    let mut request = multi_nic(pod("a", "n"));
    request.interface = "net2".into();
    let err = allocate(&catalog, &InMemoryState::new(), &request).unwrap_err();
    assert_eq!(
        err.to_string(),
        "interface net2 is not listed in pod annotation ipam.spidernet.io/ippools (it lists eth0, net1); add an entry for it"
    );
}

#[test]
fn a_repeated_request_returns_the_same_addresses_and_changes_nothing() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let request = with_ippool(pod("a", "n"), DUAL);
    let first = attach(&catalog, &mut state, &request);
    let again = allocate(&catalog, &state, &request).unwrap();
    assert!(again.changes.is_empty());
    let addresses: Vec<String> = again.interfaces[0]
        .addresses
        .iter()
        .map(|a| format!("{} {}", a.pool, a.address))
        .collect();
    assert_eq!(addresses, first);
}

#[test]
fn a_new_sandbox_of_the_same_pod_keeps_its_address() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let request = with_ippool(pod("a", "n"), DUAL);
    let first = attach(&catalog, &mut state, &request);
    let mut recreated = request.clone();
    recreated.container_id = "another-sandbox".into();
    assert_eq!(attach(&catalog, &mut state, &recreated), first);
}

#[test]
fn without_a_pod_uid_the_container_id_identifies_the_allocation() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let mut request = with_ippool(Request::new("c-1", "eth0"), r#"{"ipv4": ["v4"]}"#);
    assert_eq!(attach(&catalog, &mut state, &request), ["v4 10.6.0.10"]);
    assert_eq!(attach(&catalog, &mut state, &request), ["v4 10.6.0.10"]);
    request.container_id = "c-2".into();
    assert_eq!(attach(&catalog, &mut state, &request), ["v4 10.6.0.11"]);
    let holder = state.holder("v4", "10.6.0.11".parse().unwrap()).unwrap().unwrap();
    assert_eq!(holder.to_string(), "container c-2 (eth0)");
}

#[test]
fn a_retry_is_answered_from_what_is_held_even_if_the_annotation_changed() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let request = with_ippool(pod("a", "n"), r#"{"ipv4": ["v4"]}"#);
    attach(&catalog, &mut state, &request);
    let changed = with_ippool(pod("a", "n"), r#"{"ipv4": ["no-such-pool"]}"#);
    assert_eq!(attach(&catalog, &mut state, &changed), ["v4 10.6.0.10"]);
}

#[test]
fn a_retry_whose_pool_disappeared_says_so() {
    let mut state = InMemoryState::new();
    let request = with_ippool(pod("a", "n"), r#"{"ipv4": ["v4"]}"#);
    attach(&catalog(&dual_stack_pools()), &mut state, &request);
    let err = allocate(&catalog(&[]), &state, &request).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pod default/a already holds 10.6.0.10 for eth0 in pool v4, which is no longer defined; restore the pool or release the address"
    );
}

#[test]
fn releasing_twice_is_harmless_and_release_can_target_one_interface() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    attach(&catalog, &mut state, &multi_nic(pod("a", "n")));
    let owner = OwnerKey::Pod("uid-a".into());
    let Ok(changes) = release(&state, &owner, Some("net1"));
    assert_eq!(changes.len(), 1);
    state.apply(&changes).unwrap();
    assert_eq!(state.held_by(&owner).unwrap().len(), 1);
    assert!(release(&state, &owner, Some("net1")).unwrap().is_empty());
    state.apply(&release(&state, &owner, None).unwrap()).unwrap();
    assert!(release(&state, &owner, None).unwrap().is_empty());
}

#[test]
fn a_just_released_address_is_not_reused_at_once() {
    let pools = [pool("p", "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.14]}")];
    let catalog = catalog(&pools);
    let mut state = InMemoryState::new();
    let value = r#"{"ipv4": ["p"]}"#;
    let got: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| attach(&catalog, &mut state, &with_ippool(pod(name, "n"), value))[0].clone())
        .collect();
    assert_eq!(got, ["p 10.6.0.10", "p 10.6.0.11"]);
    state
        .apply(&release(&state, &OwnerKey::Pod("uid-a".into()), None).unwrap())
        .unwrap();
    // The cursor moves on: 10.6.0.12, then 13, 14, and only then wraps to 10.6.0.10.
    let next: Vec<String> = ["c", "d", "e", "f"]
        .iter()
        .map(|name| attach(&catalog, &mut state, &with_ippool(pod(name, "n"), value))[0].clone())
        .collect();
    assert_eq!(next, ["p 10.6.0.12", "p 10.6.0.13", "p 10.6.0.14", "p 10.6.0.10"]);
}

#[test]
fn reserved_excluded_and_gateway_addresses_are_never_handed_out() {
    let docs = [
        pool(
            "p",
            "{subnet: 10.6.0.0/16, ips: [10.6.0.1-10.6.0.6], excludeIPs: [10.6.0.1, 10.6.0.3], gateway: 10.6.0.1}",
        ),
        reserved("r", "{ips: [10.6.0.5]}"),
    ];
    let catalog = catalog(&docs);
    let mut state = InMemoryState::new();
    let mut handed_out = Vec::new();
    for index in 0..3 {
        let request = with_ippool(pod(&format!("p{index}"), "n"), r#"{"ipv4": ["p"]}"#);
        handed_out.extend(attach(&catalog, &mut state, &request));
    }
    assert_eq!(handed_out, ["p 10.6.0.2", "p 10.6.0.4", "p 10.6.0.6"]);
    let err = allocate(
        &catalog,
        &state,
        &with_ippool(pod("p9", "n"), r#"{"ipv4": ["p"]}"#),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("full: 3 of 3 allocatable addresses in use"),
        "{err}"
    );
    let Ok(usage) = usage(catalog.pool("p").unwrap(), &state);
    assert_eq!(
        (usage.total, usage.allocatable, usage.allocated, usage.free),
        (4, 3, 3, 0)
    );
}

#[test]
fn the_plan_carries_gateway_routes_and_prefix() {
    let pools = [pool(
        "p",
        "{subnet: 10.6.0.0/16, ips: [10.6.168.60], gateway: 10.6.0.1, routes: [{dst: 10.96.0.0/12, gw: 10.6.0.254}]}",
    )];
    let plan = allocate(
        &catalog(&pools),
        &InMemoryState::new(),
        &with_ippool(pod("a", "n"), r#"{"ipv4": ["p"]}"#),
    )
    .unwrap();
    let eth0 = &plan.interfaces[0];
    assert!(eth0.default_route);
    let address = &eth0.addresses[0];
    assert_eq!(address.to_string(), "10.6.168.60/16 from p");
    assert_eq!(address.gateway.unwrap().to_string(), "10.6.0.1");
    assert_eq!(address.routes[0].dst.to_string(), "10.96.0.0/12");
    let mut clean = with_ippool(pod("b", "n"), r#"{"ipv4": ["p"]}"#);
    clean.network.clean_gateway = true;
    let err_or_plan = allocate(&catalog(&pools), &InMemoryState::new(), &clean).unwrap();
    assert!(!err_or_plan.interfaces[0].default_route);
}

#[test]
fn huge_pools_are_ordinary() {
    let pools = [
        pool("v4-8", "{subnet: 10.0.0.0/8, ips: [10.0.0.1-10.255.255.254]}"),
        pool(
            "v6-64",
            "{subnet: 'fd00::/64', ips: ['fd00::1-fd00::ffff:ffff:ffff:ffff']}",
        ),
    ];
    let catalog = catalog(&pools);
    let mut state = InMemoryState::new();
    let addresses = attach(
        &catalog,
        &mut state,
        &with_ippool(pod("a", "n"), r#"{"ipv4": ["v4-8"], "ipv6": ["v6-64"]}"#),
    );
    assert_eq!(addresses, ["v4-8 10.0.0.1", "v6-64 fd00::1"]);
    let Ok(v6) = usage(catalog.pool("v6-64").unwrap(), &state);
    assert_eq!(v6.total, (1u128 << 64) - 1);
    assert_eq!(v6.free, (1u128 << 64) - 2);
    let Ok(status) = pool_status(catalog.pool("v6-64").unwrap(), &state);
    assert_eq!(
        status.total_ip_count,
        Some(i64::MAX),
        "capped as Spiderpool caps it"
    );
}

#[test]
fn status_uses_spiderpools_allocated_ips_shape() {
    let pools = [pool("p", "{subnet: 10.6.0.0/16, ips: [10.6.168.60-10.6.168.69]}")];
    let catalog = catalog(&pools);
    let mut state = InMemoryState::new();
    let Ok(empty) = pool_status(catalog.pool("p").unwrap(), &state);
    assert_eq!(
        (
            empty.allocated_ips,
            empty.allocated_ip_count,
            empty.total_ip_count
        ),
        (None, Some(0), Some(10))
    );
    attach(
        &catalog,
        &mut state,
        &with_ippool(pod("test-app-j9ftl", "n"), r#"{"ipv4": ["p"]}"#),
    );
    let Ok(status) = pool_status(catalog.pool("p").unwrap(), &state);
    let text = status.allocated_ips.unwrap();
    assert_eq!(
        text,
        r#"{"10.6.168.60":{"pod":"default/test-app-j9ftl","podUid":"uid-test-app-j9ftl","interface":"eth0","containerID":"container-test-app-j9ftl"}}"#
    );
    let records = parse_allocated_ips(&text).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(status.allocated_ip_count, Some(1));
}

#[test]
fn records_read_back_that_could_not_be_written_back_whole_are_refused_by_name() {
    // Two spellings of one address: one record would silently win.
    let twice =
        r#"{"fd00::1":{"pod":"default/a","podUid":"u1"},"fd00:0::1":{"pod":"default/b","podUid":"u2"}}"#;
    assert_eq!(
        parse_allocated_ips(twice).unwrap_err().to_string(),
        "fd00::1 is listed twice, as \"fd00:0::1\" and \"fd00::1\"; \
         keep the record of the pod that holds it"
    );
    let status = IPPoolStatus {
        allocated_ips: Some(twice.into()),
        ..IPPoolStatus::default()
    };
    assert_eq!(
        state_from_statuses([("p", &status)]).unwrap_err().to_string(),
        "pool p: status.allocatedIPs: fd00::1 is listed twice, as \"fd00:0::1\" and \"fd00::1\"; \
         keep the record of the pod that holds it",
        "the reader names the field"
    );
    // A pod not written namespace/name would come back without its pod.
    let status = IPPoolStatus {
        allocated_ips: Some(r#"{"10.6.168.60":{"pod":"web","podUid":"u1"}}"#.into()),
        ..IPPoolStatus::default()
    };
    assert_eq!(
        state_from_statuses([("p", &status)]).unwrap_err().to_string(),
        "pool p: status.allocatedIPs: 10.6.168.60 names pod \"web\", not namespace/name; \
         write the pod as namespace/name"
    );
}

#[test]
fn deleting_the_first_listed_interface_releases_every_listed_interface() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let request = multi_nic(pod("a", "n"));
    attach(&catalog, &mut state, &request);
    let mut net1 = request.clone();
    net1.interface = "net1".into();
    assert_eq!(
        release_attachment(&state, &net1).unwrap().len(),
        1,
        "a later interface releases itself"
    );
    let Ok(changes) = release_attachment(&state, &request);
    assert_eq!(changes.len(), 2, "the first interface releases the whole group");
    state.apply(&changes).unwrap();
    assert!(state.held_by(&OwnerKey::Pod("uid-a".into())).unwrap().is_empty());
    assert!(
        release_attachment(&state, &request).unwrap().is_empty(),
        "a second DEL finds nothing"
    );
}

#[test]
fn a_new_sandbox_takes_the_records_over_and_the_old_one_cannot_release_them() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let old = with_ippool(pod("a", "n"), DUAL);
    attach(&catalog, &mut state, &old);
    let mut new = old.clone();
    new.container_id = "sandbox-2".into();
    let plan = allocate(&catalog, &state, &new).unwrap();
    assert!(plan.is_replay());
    assert_eq!(plan.changes.len(), 2, "two addresses move to the new sandbox");
    assert!(
        plan.changes
            .iter()
            .all(|c| matches!(c, spiderpool_core::Change::Transfer { .. }))
    );
    let Ok(cursor) = state.cursor("v4");
    state.apply(&plan.changes).unwrap();
    let holder = state.holder("v4", "10.6.0.10".parse().unwrap()).unwrap().unwrap();
    assert_eq!(holder.container_id(), "sandbox-2");
    assert_eq!(state.cursor("v4"), Ok(cursor), "a transfer leaves the cursor");
    assert!(release_attachment(&state, &old).unwrap().is_empty());
    assert_eq!(release_attachment(&state, &new).unwrap().len(), 2);
}

#[test]
fn garbage_collection_releases_attachments_that_are_no_longer_valid() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    attach(
        &catalog,
        &mut state,
        &with_ippool(pod("a", "n"), r#"{"ipv4": ["v4"]}"#),
    );
    attach(
        &catalog,
        &mut state,
        &with_ippool(pod("b", "n"), r#"{"ipv4": ["v4"]}"#),
    );
    let held = state
        .allocations("v4")
        .unwrap()
        .into_iter()
        .map(|(address, holder)| spiderpool_core::HeldAddress {
            pool: "v4".into(),
            address,
            holder,
        });
    let valid = [("container-a".to_string(), "eth0".to_string())];
    let changes = collect_garbage(held, &valid);
    assert_eq!(changes.len(), 1);
    state.apply(&changes).unwrap();
    assert_eq!(state.held_by(&OwnerKey::Pod("uid-b".into())).unwrap().len(), 0);
    assert_eq!(state.held_by(&OwnerKey::Pod("uid-a".into())).unwrap().len(), 1);
}

#[test]
fn a_del_without_pod_identity_still_releases_what_its_container_holds() {
    let catalog = catalog(&dual_stack_pools());
    let mut state = InMemoryState::new();
    let request = with_ippool(pod("a", "n"), DUAL);
    attach(&catalog, &mut state, &request);
    let bare = Request::new(request.container_id.clone(), "eth0");
    let Ok(changes) = release_attachment(&state, &bare);
    assert_eq!(changes.len(), 2, "found through the container");
    // Another container's bare DEL finds nothing.
    assert!(
        release_attachment(&state, &Request::new("someone-else", "eth0"))
            .unwrap()
            .is_empty()
    );
    state.apply(&changes).unwrap();
    assert!(state.held_by(&OwnerKey::Pod("uid-a".into())).unwrap().is_empty());
}

#[test]
fn a_retry_whose_pool_became_invalid_names_the_violation() {
    let mut state = InMemoryState::new();
    let request = with_ippool(pod("a", "n"), r#"{"ipv4": ["v4"]}"#);
    attach(&catalog(&dual_stack_pools()), &mut state, &request);
    let broken = [pool(
        "v4",
        "{subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.11], gateway: 10.9.0.1}",
    )];
    let err = allocate(&catalog(&broken), &state, &request).unwrap_err();
    assert!(matches!(err, AllocateError::HeldInInvalidPool { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("spec.gateway: 10.9.0.1 is outside subnet 10.6.0.0/16"),
        "{err}"
    );
}

/// What a database answers when it cannot read: the error a [`Failing`] state returns.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DiskError;

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("disk I/O error")
    }
}

impl std::error::Error for DiskError {}

/// The in-memory state, except that the query named `broken` fails, as a database's can.
struct Failing {
    state: InMemoryState,
    broken: &'static str,
}

impl Failing {
    fn query(&self, name: &str) -> Result<(), DiskError> {
        if name == self.broken {
            Err(DiskError)
        } else {
            Ok(())
        }
    }
}

impl AllocationState for Failing {
    type Error = DiskError;

    fn holder(
        &self,
        pool: &str,
        address: std::net::IpAddr,
    ) -> Result<Option<spiderpool_core::Holder>, DiskError> {
        self.query("holder")?;
        let Ok(holder) = self.state.holder(pool, address);
        Ok(holder)
    }

    fn first_unheld_from(
        &self,
        pool: &str,
        from: std::net::IpAddr,
    ) -> Result<Option<std::net::IpAddr>, DiskError> {
        self.query("first_unheld_from")?;
        let Ok(unheld) = self.state.first_unheld_from(pool, from);
        Ok(unheld)
    }

    fn allocated_count(&self, pool: &str) -> Result<u64, DiskError> {
        self.query("allocated_count")?;
        let Ok(count) = self.state.allocated_count(pool);
        Ok(count)
    }

    fn held_count_in(&self, pool: &str, range: spiderpool_core::IpRange) -> Result<u128, DiskError> {
        self.query("held_count_in")?;
        let Ok(count) = self.state.held_count_in(pool, range);
        Ok(count)
    }

    fn cursor(&self, pool: &str) -> Result<Option<std::net::IpAddr>, DiskError> {
        self.query("cursor")?;
        let Ok(cursor) = self.state.cursor(pool);
        Ok(cursor)
    }

    fn held_by(&self, owner: &OwnerKey) -> Result<Vec<spiderpool_core::HeldAddress>, DiskError> {
        self.query("held_by")?;
        let Ok(held) = self.state.held_by(owner);
        Ok(held)
    }

    fn held_by_container(&self, container_id: &str) -> Result<Vec<spiderpool_core::HeldAddress>, DiskError> {
        self.query("held_by_container")?;
        let Ok(held) = self.state.held_by_container(container_id);
        Ok(held)
    }

    fn allocations(&self, pool: &str) -> Result<Vec<(std::net::IpAddr, spiderpool_core::Holder)>, DiskError> {
        self.query("allocations")?;
        let Ok(allocations) = self.state.allocations(pool);
        Ok(allocations)
    }
}

#[test]
fn a_failed_read_of_the_state_is_an_error_never_a_free_address() {
    let catalog = catalog(&[pool("v4", "{subnet: 10.6.0.0/16, ips: [10.6.0.10]}")]);
    let mut state = InMemoryState::new();
    let request = with_ippool(pod("a", "n"), r#"{"ipv4": ["v4"]}"#);
    let other = with_ippool(pod("b", "n"), r#"{"ipv4": ["v4"]}"#);
    // Each query on the path of an allocation: the owner's holdings, the cursor, the search.
    for broken in ["held_by", "cursor", "first_unheld_from"] {
        let failing = Failing {
            state: state.clone(),
            broken,
        };
        let err = allocate(&catalog, &failing, &request).unwrap_err();
        assert_eq!(err, AllocateError::State(DiskError), "{broken}");
        assert_eq!(
            err.to_string(),
            "reading the allocation state failed: disk I/O error"
        );
        let source = std::error::Error::source(&err).expect("the state's error is the source");
        assert_eq!(source.to_string(), "disk I/O error");
        let explanation = spiderpool_core::explain(&catalog, &failing, &request);
        assert_eq!(
            explanation.outcome,
            Err(AllocateError::State(DiskError)),
            "{broken}"
        );
    }
    attach(&catalog, &mut state, &request);
    // The pool is full now: its count is read to say so.
    let failing = Failing {
        state: state.clone(),
        broken: "allocated_count",
    };
    assert_eq!(
        allocate(&catalog, &failing, &other),
        Err(AllocateError::State(DiskError))
    );
    let pool = catalog.pool("v4").unwrap();
    assert_eq!(usage(pool, &failing), Err(DiskError));
    assert_eq!(spiderpool_core::pool_rows(&catalog, &failing), Err(DiskError));
    // A replay's explanation evaluates the candidates too.
    let failing = Failing {
        state: state.clone(),
        broken: "first_unheld_from",
    };
    assert!(allocate(&catalog, &failing, &request).unwrap().is_replay());
    assert_eq!(
        spiderpool_core::explain(&catalog, &failing, &request).outcome,
        Err(AllocateError::State(DiskError))
    );
    assert_eq!(next_free(&failing, pool), Err(DiskError));
    // Releases read what is held.
    let failing = Failing {
        state: state.clone(),
        broken: "held_by",
    };
    assert_eq!(
        release(&failing, &OwnerKey::Pod("uid-a".into()), None),
        Err(DiskError)
    );
    assert_eq!(release_attachment(&failing, &request), Err(DiskError));
    let failing = Failing {
        state,
        broken: "allocations",
    };
    assert_eq!(pool_status(pool, &failing), Err(DiskError));
}
