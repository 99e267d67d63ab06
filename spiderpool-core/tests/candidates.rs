//! Where candidate pools come from, in which order they are tried, and why each is rejected.

use spiderpool_check::kit::documents::{attach, catalog, pod, pool, with_ippool};
use spiderpool_core::{
    AllocateError, Attachment, CandidateSource, InMemoryState, IpFamilies, Rejection, SelectionError,
    Verdict, allocate, annotations, explain,
};

fn zone_pools() -> Vec<String> {
    vec![
        pool(
            "zone-a",
            "{subnet: 10.1.0.0/16, ips: [10.1.0.10-10.1.0.19], nodeName: [node-a]}",
        ),
        pool(
            "zone-b",
            "{subnet: 10.2.0.0/16, ips: [10.2.0.10-10.2.0.19], nodeName: [node-b]}",
        ),
        pool("anywhere", "{subnet: 10.3.0.0/16, ips: [10.3.0.10-10.3.0.19]}"),
        pool(
            "default-v4",
            "{subnet: 10.4.0.0/16, ips: [10.4.0.10-10.4.0.19], default: true}",
        ),
        pool(
            "default-v6",
            "{subnet: 'fd00:4::/64', ips: ['fd00:4::10-fd00:4::19'], default: true}",
        ),
    ]
}

fn source_of(request: &spiderpool_core::Request) -> Option<CandidateSource> {
    allocate(&catalog(&zone_pools()), &InMemoryState::new(), request)
        .unwrap()
        .source
}

#[test]
fn the_pod_ippools_annotation_wins_over_every_other_source() {
    let mut request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["anywhere"]}"#);
    request.pod.annotations.insert(
        annotations::POD_IPPOOLS.into(),
        r#"[{"interface": "eth0", "ipv4": ["zone-a"]}]"#.into(),
    );
    assert_eq!(source_of(&request), Some(CandidateSource::PodIppools));
    assert_eq!(
        attach(&catalog(&zone_pools()), &mut InMemoryState::new(), &request),
        ["zone-a 10.1.0.10"]
    );
}

#[test]
fn the_pod_ippool_annotation_wins_over_namespace_and_network_defaults() {
    let mut request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["anywhere"]}"#);
    request
        .namespace
        .annotations
        .insert(annotations::NAMESPACE_DEFAULT_IPV4.into(), r#"["zone-a"]"#.into());
    request.network.default_ipv4 = vec!["zone-a".into()];
    assert_eq!(source_of(&request), Some(CandidateSource::PodIppool));
}

#[test]
fn namespace_defaults_win_over_network_defaults() {
    let mut request = pod("p", "node-a");
    request.namespace.annotations.insert(
        annotations::NAMESPACE_DEFAULT_IPV4.into(),
        r#"["anywhere"]"#.into(),
    );
    request.network.default_ipv4 = vec!["zone-a".into()];
    assert_eq!(source_of(&request), Some(CandidateSource::NamespaceDefault));
    assert_eq!(
        attach(&catalog(&zone_pools()), &mut InMemoryState::new(), &request),
        ["anywhere 10.3.0.10"]
    );
}

#[test]
fn network_defaults_win_over_cluster_default_pools() {
    let mut request = pod("p", "node-b");
    request.network.default_ipv4 = vec!["zone-a".into(), "zone-b".into()];
    assert_eq!(source_of(&request), Some(CandidateSource::NetworkDefault));
    assert_eq!(
        attach(&catalog(&zone_pools()), &mut InMemoryState::new(), &request),
        ["zone-b 10.2.0.10"]
    );
}

#[test]
fn cluster_default_pools_serve_when_nothing_names_a_pool() {
    let request = pod("p", "node-a");
    assert_eq!(source_of(&request), Some(CandidateSource::ClusterDefault));
    // Both families have default pools, so the pod is dual-stack.
    assert_eq!(
        attach(&catalog(&zone_pools()), &mut InMemoryState::new(), &request),
        ["default-v4 10.4.0.10", "default-v6 fd00:4::10"]
    );
}

#[test]
fn without_any_source_the_error_says_how_to_name_a_pool() {
    let pools = [pool("plain", "{subnet: 10.3.0.0/16, ips: [10.3.0.10]}")];
    let err = allocate(&catalog(&pools), &InMemoryState::new(), &pod("p", "node-a")).unwrap_err();
    assert_eq!(err, AllocateError::Selection(SelectionError::NoDefaultPool),);
    assert!(
        err.to_string().contains("set spec.default: true on a pool"),
        "{err}"
    );
}

#[test]
fn an_explicit_list_is_tried_in_exactly_the_written_order() {
    // `anywhere` is less specific than `zone-a`, yet comes first because it is written first.
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["anywhere", "zone-a"]}"#);
    assert_eq!(
        attach(&catalog(&zone_pools()), &mut InMemoryState::new(), &request),
        ["anywhere 10.3.0.10"]
    );
    let request = with_ippool(pod("q", "node-a"), r#"{"ipv4": ["zone-a", "anywhere"]}"#);
    assert_eq!(
        attach(&catalog(&zone_pools()), &mut InMemoryState::new(), &request),
        ["zone-a 10.1.0.10"]
    );
}

#[test]
fn globs_expand_in_place_in_name_order() {
    let request = with_ippool(pod("p", "node-b"), r#"{"ipv4": ["zone-*", "anywhere"]}"#);
    let explanation = explain(&catalog(&zone_pools()), &InMemoryState::new(), &request);
    let names: Vec<(&str, Option<&str>)> = explanation.trials[0]
        .candidates
        .iter()
        .map(|c| (c.pool.as_str(), c.pattern.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("zone-a", Some("zone-*")),
            ("zone-b", Some("zone-*")),
            ("anywhere", None)
        ]
    );
    assert_eq!(
        explanation.outcome.unwrap().interfaces[0].addresses[0].pool,
        "zone-b"
    );
}

#[test]
fn a_glob_matching_nothing_is_rejected_as_not_found() {
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["rack-[0-9]", "zone-a"]}"#);
    let plan = allocate(&catalog(&zone_pools()), &InMemoryState::new(), &request).unwrap();
    let first = &plan.trials[0].candidates[0];
    assert_eq!(first.to_string(), "rack-[0-9]: no pool matches");
}

fn rejection_of(pools: &[String], request: &spiderpool_core::Request) -> Rejection {
    let explanation = explain(&catalog(pools), &InMemoryState::new(), request);
    match &explanation.trials[0].candidates[0].verdict {
        Verdict::Rejected(rejection) => rejection.clone(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_missing_pool_is_rejected_and_the_next_candidate_tried() {
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["no-such-pool", "zone-a"]}"#);
    assert_eq!(rejection_of(&zone_pools(), &request), Rejection::NotFound);
    assert_eq!(
        attach(&catalog(&zone_pools()), &mut InMemoryState::new(), &request),
        ["zone-a 10.1.0.10"]
    );
}

#[test]
fn a_terminating_pool_is_rejected() {
    let pools = [
        "---\n{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, \
        metadata: {name: going, deletionTimestamp: '2026-11-25T10:00:00Z'}, \
        spec: {subnet: 10.9.0.0/16, ips: [10.9.0.1]}}\n"
            .to_string(),
    ];
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["going"]}"#);
    assert_eq!(rejection_of(&pools, &request), Rejection::Terminating);
}

#[test]
fn a_disabled_pool_is_rejected() {
    let pools = [pool(
        "off",
        "{subnet: 10.9.0.0/16, ips: [10.9.0.1], disable: true}",
    )];
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["off"]}"#);
    assert_eq!(rejection_of(&pools, &request), Rejection::Disabled);
}

#[test]
fn a_pool_of_the_other_family_is_rejected() {
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["default-v6"]}"#);
    let rejection = rejection_of(&zone_pools(), &request);
    assert_eq!(
        rejection.to_string(),
        "the pool is IPv6, but it is listed for IPv4"
    );
}

#[test]
fn node_name_and_node_affinity_reject_other_nodes() {
    let request = with_ippool(pod("p", "node-b"), r#"{"ipv4": ["zone-a"]}"#);
    assert_eq!(
        rejection_of(&zone_pools(), &request).to_string(),
        "node node-b is not in nodeName [node-a]"
    );
    let pools = [pool(
        "by-label",
        "{subnet: 10.9.0.0/16, ips: [10.9.0.1], nodeAffinity: {matchLabels: {node-subnet: subnet-6}}}",
    )];
    let mut request = with_ippool(pod("p", "worker-node-1"), r#"{"ipv4": ["by-label"]}"#);
    request
        .node
        .labels
        .insert("node-subnet".into(), "subnet-7".into());
    assert_eq!(
        rejection_of(&pools, &request).to_string(),
        "the labels of node worker-node-1 do not match nodeAffinity {node-subnet=subnet-6}"
    );
    request
        .node
        .labels
        .insert("node-subnet".into(), "subnet-6".into());
    assert_eq!(
        attach(&catalog(&pools), &mut InMemoryState::new(), &request),
        ["by-label 10.9.0.1"]
    );
}

#[test]
fn node_name_wins_over_node_affinity() {
    let pools = [pool(
        "both",
        "{subnet: 10.9.0.0/16, ips: [10.9.0.1], nodeName: [node-a], nodeAffinity: {matchLabels: {zone: b}}}",
    )];
    let mut request = with_ippool(pod("p", "node-b"), r#"{"ipv4": ["both"]}"#);
    request.node.labels.insert("zone".into(), "b".into());
    assert!(matches!(
        rejection_of(&pools, &request),
        Rejection::NodeNotMatched { .. }
    ));
}

#[test]
fn namespace_name_and_affinity_reject_other_namespaces() {
    let pools = [
        pool(
            "team",
            "{subnet: 10.8.0.0/16, ips: [10.8.0.1], namespaceName: [team-a], namespaceAffinity: {matchLabels: {tier: x}}}",
        ),
        pool(
            "tier",
            "{subnet: 10.9.0.0/16, ips: [10.9.0.1], namespaceAffinity: {matchLabels: {tier: gold}}}",
        ),
    ];
    let mut request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["team"]}"#);
    request.namespace.labels.insert("tier".into(), "x".into());
    assert_eq!(
        rejection_of(&pools, &request).to_string(),
        "namespace default is not in namespaceName [team-a]"
    );
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["tier"]}"#);
    assert_eq!(
        rejection_of(&pools, &request).to_string(),
        "the labels of namespace default do not match namespaceAffinity {tier=gold}"
    );
}

#[test]
fn pod_affinity_rejects_pods_without_the_labels() {
    let pools = [pool(
        "app",
        "{subnet: 10.9.0.0/16, ips: [10.9.0.1], podAffinity: {matchLabels: {app: test-app}}}",
    )];
    let mut request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["app"]}"#);
    assert_eq!(
        rejection_of(&pools, &request).to_string(),
        "the pod's labels do not match podAffinity {app=test-app}"
    );
    request.pod.labels.insert("app".into(), "test-app".into());
    assert_eq!(
        attach(&catalog(&pools), &mut InMemoryState::new(), &request),
        ["app 10.9.0.1"]
    );
}

#[test]
fn multus_name_rejects_other_attachments() {
    let pools = [pool(
        "macvlan",
        "{subnet: 10.9.0.0/16, ips: [10.9.0.1], multusName: [kube-system/macvlan-conf]}",
    )];
    let mut request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["macvlan"]}"#);
    assert_eq!(
        rejection_of(&pools, &request).to_string(),
        "the request names no network attachment, but multusName is [kube-system/macvlan-conf]"
    );
    request.network.attachment = Some(Attachment {
        namespace: "default".into(),
        name: "macvlan-conf".into(),
    });
    assert_eq!(
        rejection_of(&pools, &request).to_string(),
        "network attachment default/macvlan-conf is not in multusName [kube-system/macvlan-conf]"
    );
    request.network.attachment = Some(Attachment {
        namespace: "kube-system".into(),
        name: "macvlan-conf".into(),
    });
    assert_eq!(
        attach(&catalog(&pools), &mut InMemoryState::new(), &request),
        ["macvlan 10.9.0.1"]
    );
    // A bare name matches the attachment's name in any namespace.
    let pools = [pool(
        "bare",
        "{subnet: 10.9.0.0/16, ips: [10.9.0.1], multusName: [macvlan-conf]}",
    )];
    let request_bare = with_ippool(request.clone(), r#"{"ipv4": ["bare"]}"#);
    assert_eq!(
        attach(&catalog(&pools), &mut InMemoryState::new(), &request_bare),
        ["bare 10.9.0.1"]
    );
}

#[test]
fn a_full_pool_is_rejected_and_the_next_candidate_tried() {
    let pools = [
        pool("tiny", "{subnet: 10.8.0.0/16, ips: [10.8.0.1]}"),
        pool("spare", "{subnet: 10.9.0.0/16, ips: [10.9.0.1-10.9.0.9]}"),
    ];
    let catalog = catalog(&pools);
    let mut state = InMemoryState::new();
    let value = r#"{"ipv4": ["tiny", "spare"]}"#;
    assert_eq!(
        attach(&catalog, &mut state, &with_ippool(pod("a", "n"), value)),
        ["tiny 10.8.0.1"]
    );
    let second = with_ippool(pod("b", "n"), value);
    let plan = allocate(&catalog, &state, &second).unwrap();
    assert_eq!(
        plan.trials[0].candidates[0].verdict,
        Verdict::Rejected(Rejection::Full {
            allocated: 1,
            allocatable: 1
        })
    );
    assert_eq!(plan.interfaces[0].addresses[0].pool, "spare");
}

#[test]
fn an_invalid_candidate_stops_the_request_instead_of_falling_back() {
    let mut pools = zone_pools();
    pools.push(pool(
        "broken",
        "{subnet: 10.5.1.0/16, ips: [10.5.0.1], nodeName: [node-a]}",
    ));
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["broken", "anywhere"]}"#);
    let err = allocate(&catalog(&pools), &InMemoryState::new(), &request).unwrap_err();
    assert_eq!(
        err.to_string(),
        "candidate pool broken for eth0 IPv4 is invalid, and allocation stops rather than use a pool of \
         another zone: SpiderIPPool broken is invalid: spec.subnet: subnet 10.5.1.0/16 is not in canonical \
         form: write 10.5.0.0/16"
    );
}

#[test]
fn explain_shows_every_candidate_and_the_address_an_allocation_would_get() {
    let request = with_ippool(
        pod("p", "node-a"),
        r#"{"ipv4": ["zone-b", "zone-a", "anywhere", "gone"]}"#,
    );
    let explanation = explain(&catalog(&zone_pools()), &InMemoryState::new(), &request);
    let lines: Vec<String> = explanation.trials[0]
        .candidates
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "zone-b: node node-a is not in nodeName [node-b]",
            "zone-a: chosen, 10.1.0.10",
            "anywhere: usable, next free 10.3.0.10",
            "gone: no such pool",
        ]
    );
    assert!(explanation.outcome.unwrap().changes.len() == 1);
}

#[test]
fn required_families_must_be_listed() {
    let mut request = with_ippool(pod("p", "node-a"), r#"{"ipv4": ["zone-a"]}"#);
    request.families = IpFamilies::DualStack;
    let err = allocate(&catalog(&zone_pools()), &InMemoryState::new(), &request).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pod annotation ipam.spidernet.io/ippool names no IPv6 pool for interface eth0, but IPv6 is required; add one"
    );
    request.families = IpFamilies::Ipv4;
    assert_eq!(
        attach(&catalog(&zone_pools()), &mut InMemoryState::new(), &request),
        ["zone-a 10.1.0.10"]
    );
}

#[test]
fn a_malformed_annotation_is_an_error_naming_it() {
    let request = with_ippool(pod("p", "node-a"), r#"{"ipv4": "zone-a"}"#);
    let err = allocate(&catalog(&zone_pools()), &InMemoryState::new(), &request).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("annotation ipam.spidernet.io/ippool: invalid value"),
        "{err}"
    );
    let mut request = pod("p", "node-a");
    request
        .namespace
        .annotations
        .insert(annotations::NAMESPACE_DEFAULT_IPV6.into(), "pool-a".into());
    let err = allocate(&catalog(&zone_pools()), &InMemoryState::new(), &request).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("annotation ipam.spidernet.io/default-ipv6-ippool: invalid value"),
        "{err}"
    );
}
