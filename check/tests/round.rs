//! The cluster round's rules, each an example: batches served by the core's round against the
//! simulated API server of `spiderpool_check::sim`, without faults.

use spiderpool_check::sim::Cluster;
use spiderpool_core::gc::{GcPolicy, GcReason};
use spiderpool_core::round::{Call, Outcome};
use spiderpool_core::{Plan, STATEFULSET};

const ZONES: &str = r#"{"ipv4": ["a4", "b4"]}"#;
const DUAL: &str = r#"{"ipv4": ["a4", "b4"], "ipv6": ["a6", "b6"]}"#;

/// The addresses an ADD answered, as `pool address`.
fn added(outcome: &Outcome) -> Vec<String> {
    let Outcome::Added(Plan { interfaces, .. }) = outcome else {
        panic!("an ADD is answered with addresses, not {outcome:?}")
    };
    interfaces[0]
        .addresses
        .iter()
        .map(|a| format!("{} {}", a.pool, a.address))
        .collect()
}

fn add(cluster: &mut Cluster, pod: &str, sandbox: &str) -> Vec<String> {
    let call = Call::Add(cluster.facts(pod, sandbox, "eth0"));
    let answer = cluster.serve(vec![call]).remove(0).expect("ADD");
    added(&answer)
}

fn del(cluster: &mut Cluster, pod: &str, sandbox: &str) -> Outcome {
    let call = Call::Del(cluster.facts(pod, sandbox, "eth0"));
    cluster.serve(vec![call]).remove(0).expect("DEL")
}

/// The addresses held by `uid`, as `pool address`.
fn held_by(cluster: &Cluster, uid: &str) -> Vec<String> {
    cluster
        .records()
        .into_iter()
        .filter(|(_, _, owner, _, _)| owner == uid)
        .map(|(pool, address, ..)| format!("{pool} {address}"))
        .collect()
}

#[test]
fn pods_of_two_zones_get_their_zones_first_address_in_one_batch() {
    let mut cluster = Cluster::new();
    cluster.add_pod("web-a", "n1", ZONES, None);
    cluster.add_pod("web-b", "n3", ZONES, None);
    let calls = vec![
        Call::Add(cluster.facts("web-a", "s1", "eth0")),
        Call::Add(cluster.facts("web-b", "s1", "eth0")),
    ];
    let answers = cluster.serve(calls);
    assert_eq!(added(answers[0].as_ref().unwrap()), ["a4 10.1.0.10"]);
    assert_eq!(added(answers[1].as_ref().unwrap()), ["b4 10.2.0.10"]);
    let endpoint = cluster.endpoint("web-b").expect("the endpoint commits the ADD");
    assert_eq!(endpoint.node, "n3");
    assert_eq!(endpoint.ips[0].ipv4.as_deref(), Some("10.2.0.10/24"));
}

#[test]
fn a_retried_add_is_answered_from_its_commit_without_a_write() {
    let mut cluster = Cluster::new();
    cluster.add_pod("web", "n1", ZONES, None);
    let first = add(&mut cluster, "web", "s1");
    let revision = cluster.revision();
    assert_eq!(add(&mut cluster, "web", "s1"), first);
    assert_eq!(cluster.revision(), revision, "nothing was written");
}

#[test]
fn half_of_a_dual_stack_pair_is_released_by_the_pods_next_add() {
    let mut cluster = Cluster::new();
    let uid = cluster.add_pod("web", "n1", DUAL, None);
    // An allocation died after writing the IPv4 pool: no IPv6 record, no endpoint.
    cluster.write_record("a4", "10.1.0.10", "web", &uid, "s1", "eth0");
    let answered = add(&mut cluster, "web", "s2");
    assert_eq!(answered, ["a4 10.1.0.11", "a6 fd00:1::10"]);
    assert_eq!(held_by(&cluster, &uid), answered, "the half was released");
}

#[test]
fn a_statefulset_pod_keeps_its_address_until_its_set_scales_down() {
    let mut cluster = Cluster::new();
    cluster.scale("db", 1);
    let statefulset = Some((STATEFULSET, "db"));
    cluster.add_pod("db-0", "n1", ZONES, statefulset);
    let address = add(&mut cluster, "db-0", "s1");
    // Deleted: its DEL keeps the address, and its successor, on another node, gets it back.
    assert_eq!(
        del(&mut cluster, "db-0", "s1"),
        Outcome::KeptForStatefulSet {
            statefulset: "db".into()
        }
    );
    cluster.remove_pod("db-0");
    let successor = cluster.add_pod("db-0", "n2", ZONES, statefulset);
    assert_eq!(add(&mut cluster, "db-0", "s2"), address);
    assert_eq!(held_by(&cluster, &successor), address);
    // Scaled to zero: the DEL releases.
    cluster.scale("db", 0);
    assert!(matches!(del(&mut cluster, "db-0", "s2"), Outcome::Released(changes) if changes.len() == 1));
    assert!(held_by(&cluster, &successor).is_empty());
    assert_eq!(cluster.endpoint("db-0"), None);
}

#[test]
fn a_late_del_of_an_old_sandbox_leaves_the_new_sandbox_committed() {
    let mut cluster = Cluster::new();
    let uid = cluster.add_pod("web", "n1", ZONES, None);
    let address = add(&mut cluster, "web", "s1");
    // A new sandbox takes the address over; then the old one's DEL comes.
    assert_eq!(add(&mut cluster, "web", "s2"), address);
    assert_eq!(del(&mut cluster, "web", "s1"), Outcome::Released(Vec::new()));
    assert_eq!(held_by(&cluster, &uid), address);
    let endpoint = cluster.endpoint("web").expect("still committed");
    assert_eq!(endpoint.container_id, "s2");
    assert_eq!(endpoint.ips.len(), 1);
}

#[test]
fn a_del_releases_and_drops_the_endpoint() {
    let mut cluster = Cluster::new();
    let uid = cluster.add_pod("web", "n1", DUAL, None);
    add(&mut cluster, "web", "s1");
    let Outcome::Released(changes) = del(&mut cluster, "web", "s1") else {
        panic!("a DEL releases")
    };
    assert_eq!(changes.len(), 2);
    assert!(held_by(&cluster, &uid).is_empty());
    assert_eq!(cluster.endpoint("web"), None);
    // Again: nothing to do, and no error.
    assert_eq!(del(&mut cluster, "web", "s1"), Outcome::Released(Vec::new()));
}

#[test]
fn the_collector_releases_an_uncommitted_record_after_its_grace_period_only() {
    let mut cluster = Cluster::new();
    let uid = cluster.add_pod("web", "n1", ZONES, None);
    cluster.write_record("a4", "10.1.0.13", "web", &uid, "s1", "eth0");
    let policy = GcPolicy::default();
    let sweep = |cluster: &mut Cluster, suspects| {
        let call = Call::Sweep {
            now: cluster.clock(),
            policy,
            suspects,
            empty_blocks: Default::default(),
        };
        match cluster.serve(vec![call]).remove(0).expect("a sweep") {
            Outcome::Swept(sweep) => sweep,
            other => panic!("{other:?}"),
        }
    };
    let first = sweep(&mut cluster, Default::default());
    assert!(
        first.collected.is_empty(),
        "a new allocation gets the grace period"
    );
    cluster.advance(policy.uncommitted_grace as u64);
    let later = sweep(&mut cluster, first.suspects);
    let reasons: Vec<GcReason> = later.collected.iter().map(|c| c.reason.clone()).collect();
    assert!(
        matches!(reasons[..], [GcReason::Uncommitted { .. }]),
        "{reasons:?}"
    );
    assert!(held_by(&cluster, &uid).is_empty());
}

#[test]
fn a_pod_the_api_server_does_not_know_is_refused_without_a_write() {
    let mut cluster = Cluster::new();
    cluster.add_pod("web", "n1", ZONES, None);
    let mut facts = cluster.facts("web", "s1", "eth0");
    facts.pod.as_mut().unwrap().name = "ghost".into();
    let revision = cluster.revision();
    let answer = cluster.serve(vec![Call::Add(facts)]).remove(0);
    let error = answer.expect_err("no such pod");
    assert!(
        error.to_string().starts_with("pod default/ghost not found"),
        "{error}"
    );
    assert_eq!(cluster.revision(), revision);
}

/// A sweep of the collector at the cluster's clock, with nothing remembered.
fn sweep(cluster: &mut Cluster) -> spiderpool_core::gc::Sweep {
    let call = Call::Sweep {
        now: cluster.clock(),
        policy: GcPolicy::default(),
        suspects: Default::default(),
        empty_blocks: Default::default(),
    };
    match cluster.serve(vec![call]).remove(0).expect("a sweep") {
        Outcome::Swept(sweep) => sweep,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pool_with_records_in_its_status_serves_them_and_the_collector_moves_them_into_blocks() {
    let mut cluster = Cluster::new();
    // Records as the earlier version wrote them: in a4's status.allocatedIPs.
    let old = cluster.add_pod("old", "n1", ZONES, None);
    cluster.write_record("a4", "10.1.0.10", "old", &old, "s1", "eth0");
    let web = cluster.add_pod("web", "n2", ZONES, None);
    // Served from the status, as before: the next address after the status's cursor.
    assert_eq!(add(&mut cluster, "web", "s1"), ["a4 10.1.0.11"]);
    assert!(cluster.block("a4-10-1-0-8-30").is_none(), "no block yet");
    assert!(cluster.pool_status("a4").unwrap().allocated_ips.is_some());

    let swept = sweep(&mut cluster);
    assert_eq!(swept.moved_to_blocks, ["a4"]);
    let status = cluster.pool_status("a4").unwrap();
    assert_eq!(status.allocated_ips, None, "the status holds no record");
    assert_eq!(status.allocated_ip_count, Some(2));
    let block = cluster.block("a4-10-1-0-8-30").expect("the records' block");
    assert_eq!(
        block
            .records()
            .unwrap()
            .keys()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        ["10.1.0.10", "10.1.0.11"]
    );
    assert_eq!(block.node, "n1", "the node of the first record's pod");
    assert_eq!(
        block.last_allocated_ip.as_deref(),
        Some("10.1.0.11"),
        "the cursor moved along"
    );
    assert_eq!(held_by(&cluster, &old), ["a4 10.1.0.10"]);
    assert_eq!(held_by(&cluster, &web), ["a4 10.1.0.11"]);

    // Served from the block now: the same address again, and nothing handed out twice.
    assert_eq!(add(&mut cluster, "web", "s1"), ["a4 10.1.0.11"]);
    cluster.add_pod("new", "n1", ZONES, None);
    assert_eq!(
        add(&mut cluster, "new", "s1"),
        ["a4 10.1.0.13"],
        "10.1.0.12 is reserved"
    );
    assert!(matches!(del(&mut cluster, "web", "s1"), Outcome::Released(changes) if changes.len() == 1));
    assert!(held_by(&cluster, &web).is_empty());
    assert_eq!(sweep(&mut cluster).moved_to_blocks, Vec::<String>::new());
}

#[test]
fn a_claim_refused_on_a_lagging_list_reads_that_block_and_claims_another() {
    let mut cluster = Cluster::new();
    // a4 in blocks of 4: 10.1.0.8/30 (.10 .11) and 10.1.0.12/30 (.13 .14 .15).
    cluster.add_pod("p1", "n1", r#"{"ipv4": ["a4"]}"#, None);
    cluster.add_pod("p2", "n2", r#"{"ipv4": ["a4"]}"#, None);
    cluster.freeze_block_lists();
    assert_eq!(add(&mut cluster, "p1", "s"), ["a4 10.1.0.10"]);
    // n2's lists still show no block: its first claim, of the lowest block, is refused, and
    // listing again would show the same. Its endpoint, created before the claim, names the
    // block: the next round reads it there, and claims the next.
    assert_eq!(add(&mut cluster, "p2", "s"), ["a4 10.1.0.13"]);
    assert_eq!(cluster.block("a4-10-1-0-12-30").unwrap().node, "n2");
    assert_eq!(
        cluster.refused_writes(),
        1,
        "only the claim was refused: the retry read the endpoint it had created, not created it again"
    );
}

#[test]
fn nodes_claim_their_own_blocks_then_borrow_until_the_pool_is_full() {
    let mut cluster = Cluster::new();
    // a4: 10.1.0.10-15 in blocks of 4 (10.1.0.8/30: .10 .11; 10.1.0.12/30: .13 .14 .15,
    // .12 reserved), nodes n1 and n2.
    let pods = ["p1", "p2", "p3", "p4", "p5"];
    for (index, pod) in pods.iter().enumerate() {
        let node = if index < 3 { "n1" } else { "n2" };
        cluster.add_pod(pod, node, r#"{"ipv4": ["a4"]}"#, None);
    }
    assert_eq!(add(&mut cluster, "p1", "s"), ["a4 10.1.0.10"]);
    assert_eq!(
        add(&mut cluster, "p4", "s"),
        ["a4 10.1.0.13"],
        "n2 claims the next block"
    );
    assert_eq!(add(&mut cluster, "p2", "s"), ["a4 10.1.0.11"]);
    // n1's block is full and none is unclaimed: n1 borrows from n2's block.
    assert_eq!(add(&mut cluster, "p3", "s"), ["a4 10.1.0.14"]);
    assert_eq!(
        cluster.block("a4-10-1-0-12-30").unwrap().node,
        "n2",
        "the block stays n2's"
    );
    let borrower = cluster.endpoint("p3").expect("committed");
    assert_eq!(borrower.blocks, ["a4-10-1-0-12-30"]);
    assert_eq!(add(&mut cluster, "p5", "s"), ["a4 10.1.0.15"]);
    cluster.add_pod("p6", "n1", r#"{"ipv4": ["a4"]}"#, None);
    let call = Call::Add(cluster.facts("p6", "s", "eth0"));
    let refused = cluster.serve(vec![call]).remove(0).unwrap_err().to_string();
    assert!(
        refused.contains("a4: full: 5 of 5 allocatable addresses in use"),
        "{refused}"
    );
}
