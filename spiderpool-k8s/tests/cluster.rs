//! Allocation through a real API server: the seed scenario at the API level, a conflict storm,
//! all-or-nothing dual stack across two pool objects, recovery of a half-written allocation,
//! and an API server that is down.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use kube::Api;
use spiderpool_check::kit::apiserver::{
    allocated_counts, apply_seed, client, forget_earlier_pools, install_crds, kubeconfig, kubectl, node_yaml,
    pod_yaml, unique,
};
use spiderpool_check::kit::documents::labelled_pool;
use spiderpool_core::annotations::POD_IPPOOL;
use spiderpool_core::round::{Refusal, RoundError};
use spiderpool_core::{AllocationState, OwnerKey, Plan, PodIdentity, RuntimeFacts};
use spiderpool_k8s::{ApiFailure, ClusterStore, SpiderEndpoint, SpiderIPPool};

/// What a runtime knows of an ADD or DEL for `eth0` of a pod: the rest comes from the API.
fn request(namespace: &str, pod: &str, container: &str) -> RuntimeFacts {
    RuntimeFacts {
        container_id: container.into(),
        interface: "eth0".into(),
        pod: Some(PodIdentity {
            namespace: namespace.into(),
            name: pod.into(),
            uid: None,
        }),
        ..RuntimeFacts::default()
    }
}

/// The same call with the pod's UID, as a runtime gives it.
fn with_uid(mut facts: RuntimeFacts, uid: String) -> RuntimeFacts {
    if let Some(pod) = facts.pod.as_mut() {
        pod.uid = Some(uid);
    }
    facts
}

fn namespace_yaml(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

/// A pool of `test` (labelled for [`forget_earlier_pools`]) serving `node`, with `extra`
/// fields of its spec (flow style, each followed by a comma).
fn pool_yaml(test: &str, name: &str, subnet: &str, ips: &str, node: &str, extra: &str) -> String {
    let spec = format!("{{{extra}subnet: {subnet}, ips: [{ips}], nodeName: [{node}]}}");
    labelled_pool(name, &[("spiderpool-test", test)], &spec)
}

/// The first address of `interface` in a plan.
fn address_of(plan: &Plan) -> IpAddr {
    plan.interfaces[0].addresses[0].address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_at_the_api_level_prints_the_seed_table() {
    let Some(config) = kubeconfig("the_seed_at_the_api_level_prints_the_seed_table") else {
        return;
    };
    apply_seed(&config);

    let store = ClusterStore::new(client(&config).await);
    let first = store
        .allocate(request("default", "test-app-j9ftl", "c-j9ftl"))
        .await
        .expect("ADD on node 1");
    let second = store
        .allocate(request("default", "test-app-nkq5h", "c-nkq5h"))
        .await
        .expect("ADD on node 2");
    assert_eq!(address_of(&first).to_string(), "10.6.168.60");
    assert_eq!(address_of(&second).to_string(), "10.7.168.60");

    // Allocations write blocks; the controller's counter writes the pools' counts.
    store.write_counts().await.expect("the pools' counts");
    let table = kubectl(
        &config,
        &["get", "spiderippool", "test-ippool-6", "test-ippool-7"],
        "",
    );
    assert_eq!(
        table,
        "NAME            VERSION   SUBNET        ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT   DISABLE\n\
         test-ippool-6   4         10.6.0.0/16   1                    10               false     false\n\
         test-ippool-7   4         10.7.0.0/16   1                    10               false     false\n"
    );
    let endpoint: SpiderEndpoint = Api::namespaced(store.client().clone(), "default")
        .get("test-app-nkq5h")
        .await
        .expect("the endpoint of test-app-nkq5h");
    assert_eq!(endpoint.spec.0.node, "worker-node-1");
    assert_eq!(endpoint.spec.0.ips[0].ipv4.as_deref(), Some("10.7.168.60/16"));
    assert_eq!(endpoint.spec.0.ips[0].ipv4_pool.as_deref(), Some("test-ippool-7"));

    // ADD again: the same address, nothing written.
    let again = store
        .allocate(request("default", "test-app-j9ftl", "c-j9ftl"))
        .await
        .expect("ADD again");
    assert_eq!(address_of(&again), address_of(&first));
    assert!(again.changes.is_empty());

    for (pod, container) in [("test-app-j9ftl", "c-j9ftl"), ("test-app-nkq5h", "c-nkq5h")] {
        let del = with_uid(
            request("default", pod, container),
            endpoint_uid(&store, "default", pod).await,
        );
        store.release(del.clone()).await.expect("DEL");
        store.release(del).await.expect("DEL again");
    }
    store.write_counts().await.expect("the pools' counts");
    let table = allocated_counts(&config, &["test-ippool-6", "test-ippool-7"]);
    assert_eq!(table, "0\n0\n");
    let left = kubectl(
        &config,
        &["get", "spiderendpoints", "-n", "default", "-o", "name"],
        "",
    );
    assert!(!left.contains("test-app-"), "endpoints left: {left}");
}

async fn endpoint_uid(store: &ClusterStore, namespace: &str, pod: &str) -> String {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(store.client().clone(), namespace);
    pods.get(pod).await.expect("the pod").metadata.uid.expect("a UID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_allocators_on_one_pool_converge_without_duplicates() {
    let Some(config) = kubeconfig("fifty_concurrent_allocators_on_one_pool_converge_without_duplicates")
    else {
        return;
    };
    install_crds(&config);
    forget_earlier_pools(&config, "storm");
    let namespace = unique("storm");
    let node = unique("storm-node");
    let pool = unique("storm-pool");
    let mut objects = namespace_yaml(&namespace) + "---\n" + &node_yaml(&node, &[]) + "---\n";
    objects += &pool_yaml("storm", &pool, "10.50.0.0/16", "10.50.1.1-10.50.1.100", &node, "");
    let annotation = format!(r#"{{"ipv4": ["{pool}"]}}"#);
    for index in 0..50 {
        objects += "---\n";
        objects += &pod_yaml(
            &namespace,
            &format!("pod-{index}"),
            &node,
            &[(POD_IPPOOL, &annotation)],
            &[],
        );
    }
    kubectl(&config, &["apply", "-f", "-"], &objects);

    let client = client(&config).await;
    // Fifty allocators, each its own store, sharing one set of counters.
    let shared = ClusterStore::new(client.clone());
    let tasks: Vec<_> = (0..50)
        .map(|index| {
            let store = shared.with_client(client.clone());
            let request = request(&namespace, &format!("pod-{index}"), &format!("c-{index}"));
            tokio::spawn(async move { store.allocate(request).await })
        })
        .collect();
    let mut addresses = BTreeSet::new();
    for task in tasks {
        let allocation = task
            .await
            .expect("the task ran")
            .expect("every allocator gets an address");
        assert!(
            addresses.insert(address_of(&allocation)),
            "duplicate {}",
            address_of(&allocation)
        );
    }
    let total = shared
        .counters()
        .conflicts
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "conflict storm: 50 allocations, {total} conflicts ({:.2} per allocation)",
        total as f64 / 50.0
    );
    let store = ClusterStore::new(client.clone());
    let state = store.pools().await.expect("the state").state;
    assert_eq!(state.allocated_count(&pool), Ok(50));
    let Ok(allocations) = state.allocations(&pool);
    let held: BTreeSet<IpAddr> = allocations.into_iter().map(|(address, _)| address).collect();
    assert_eq!(held, addresses);
    let endpoints: Api<SpiderEndpoint> = Api::namespaced(client.clone(), &namespace);
    let listed = endpoints.list(&Default::default()).await.expect("endpoints");
    assert_eq!(listed.items.len(), 50);
    kubectl(&config, &["delete", "namespace", &namespace, "--wait=false"], "");
    kubectl(&config, &["delete", "spiderippool", &pool], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_across_two_pools_is_all_or_nothing_and_recovers_a_half_write() {
    let Some(config) = kubeconfig("dual_stack_across_two_pools_is_all_or_nothing_and_recovers_a_half_write")
    else {
        return;
    };
    install_crds(&config);
    forget_earlier_pools(&config, "dual");
    let namespace = unique("dual");
    let node = unique("dual-node");
    let (v4, v6) = (unique("dual-v4"), unique("dual-v6"));
    let annotation = format!(r#"{{"ipv4": ["{v4}"], "ipv6": ["{v6}"]}}"#);
    let mut objects = namespace_yaml(&namespace) + "---\n" + &node_yaml(&node, &[]) + "---\n";
    objects += &pool_yaml("dual", &v4, "10.60.0.0/16", "10.60.0.10-10.60.0.19", &node, "");
    objects += "---\n";
    objects += &pool_yaml("dual", &v6, "fd00:60::/64", "fd00:60::10", &node, "");
    for pod in ["first", "second"] {
        objects += "---\n";
        objects += &pod_yaml(&namespace, pod, &node, &[(POD_IPPOOL, &annotation)], &[]);
    }
    kubectl(&config, &["apply", "-f", "-"], &objects);
    let client = client(&config).await;
    let store = ClusterStore::new(client.clone());

    let first = store
        .allocate(request(&namespace, "first", "c1"))
        .await
        .expect("dual-stack ADD");
    let families: Vec<bool> = first.interfaces[0]
        .addresses
        .iter()
        .map(|a| a.address.is_ipv4())
        .collect();
    assert_eq!(families, [true, false]);

    // The IPv6 pool has one address: the second pod gets nothing, not even its IPv4 address.
    let refused = store.allocate(request(&namespace, "second", "c2")).await;
    assert!(
        matches!(refused, Err(RoundError::Refused(Refusal::Allocate(_)))),
        "{refused:?}"
    );
    let state = store.pools().await.expect("the state").state;
    assert_eq!(
        state.allocated_count(&v4),
        Ok(1),
        "the refused pod's IPv4 address was not written"
    );

    // A crash between the two pool writes leaves an IPv4 record of the second pod and no
    // endpoint; free the IPv6 address, and its retried ADD releases the leftover and gets both.
    let uid = endpoint_uid(&store, &namespace, "second").await;
    let leftover: IpAddr = "10.60.0.19".parse().unwrap();
    write_record(&client, &v4, leftover, &namespace, "second", &uid).await;
    let del = with_uid(
        request(&namespace, "first", "c1"),
        endpoint_uid(&store, &namespace, "first").await,
    );
    store.release(del).await.expect("DEL first");
    let second = store
        .allocate(request(&namespace, "second", "c2"))
        .await
        .expect("retried ADD");
    let state = store.pools().await.expect("the state").state;
    let Ok(held) = state.held_by(&OwnerKey::Pod(uid));
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(
        held.iter().all(|h| h.address != leftover),
        "the leftover record was released: {held:?}"
    );
    assert_eq!(second.interfaces[0].addresses.len(), 2);

    kubectl(&config, &["delete", "namespace", &namespace, "--wait=false"], "");
    kubectl(&config, &["delete", "spiderippool", &v4, &v6], "");
}

/// Adds a record to a pool's status as an allocator that crashed after this write would leave.
async fn write_record(
    client: &kube::Client,
    pool: &str,
    address: IpAddr,
    namespace: &str,
    pod: &str,
    uid: &str,
) {
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    let mut object = api.get(pool).await.expect("the pool");
    let mut status = object.status.clone().unwrap_or_default();
    let mut records: serde_json::Map<String, serde_json::Value> = status
        .allocated_ips
        .as_deref()
        .map(|text| serde_json::from_str(text).expect("allocatedIPs JSON"))
        .unwrap_or_default();
    records.insert(
        address.to_string(),
        serde_json::json!({"pod": format!("{namespace}/{pod}"), "podUid": uid, "interface": "eth0", "containerID": "c2"}),
    );
    status.allocated_ip_count = Some(records.len() as i64);
    status.allocated_ips = Some(serde_json::Value::Object(records).to_string());
    object.status = Some(status);
    api.replace_status(pool, &Default::default(), &object)
        .await
        .expect("writing the status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_is_down_is_a_transient_error() {
    let Some(config) = kubeconfig("an_api_server_that_is_down_is_a_transient_error") else {
        return;
    };
    let mut file = kube::config::Kubeconfig::read_from(Path::new(&config)).expect("the kubeconfig");
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("its address").port();
    drop(closed);
    for cluster in &mut file.clusters {
        if let Some(cluster) = cluster.cluster.as_mut() {
            cluster.server = Some(format!("https://127.0.0.1:{port}"));
        }
    }
    let client_config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("a config");
    let store = ClusterStore::new(kube::Client::try_from(client_config).expect("a client"));
    let error = store
        .allocate(request("default", "anything", "c"))
        .await
        .expect_err("no server, no allocation");
    assert!(
        matches!(error, RoundError::Api(ApiFailure::Request { .. })),
        "{error}"
    );
    // The first read of a round lists the pools (the pod is read at the same time).
    assert!(
        error
            .to_string()
            .contains("kubernetes API: listing SpiderIPPools"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_allocation_that_gives_up_leaves_nothing_behind() {
    let Some(config) = kubeconfig("a_dual_stack_allocation_that_gives_up_leaves_nothing_behind") else {
        return;
    };
    install_crds(&config);
    forget_earlier_pools(&config, "giveup");
    let namespace = unique("giveup");
    let node = unique("giveup-node");
    // Pools are written in name order: the IPv4 pool first, then the IPv6 pool.
    let (v4, v6) = (unique("giveup-a4"), unique("giveup-b6"));
    let annotation = format!(r#"{{"ipv4": ["{v4}"], "ipv6": ["{v6}"]}}"#);
    let mut objects = namespace_yaml(&namespace) + "---\n" + &node_yaml(&node, &[]) + "---\n";
    objects += &pool_yaml("giveup", &v4, "10.61.0.0/16", "10.61.0.10-10.61.0.19", &node, "");
    objects += "---\n";
    objects += &pool_yaml(
        "giveup",
        &v6,
        "fd00:61::/64",
        "fd00:61::10-fd00:61::19",
        &node,
        "",
    );
    objects += "---\n";
    objects += &pod_yaml(&namespace, "web", &node, &[(POD_IPPOOL, &annotation)], &[]);
    kubectl(&config, &["apply", "-f", "-"], &objects);
    let client = client(&config).await;

    // Another writer keeps changing the IPv6 pool's block: every write of it conflicts (until
    // the first allocation creates it, nothing conflicts). It pauses while the test undoes an
    // allocation that slipped through, which must write that block too.
    let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let pools: Api<spiderpool_k8s::SpiderIPBlock> = Api::all(client.clone());
        let v6 = spiderpool_core::block_name(&v6, "fd00:61::".parse().unwrap(), 122);
        let paused = paused.clone();
        tokio::spawn(async move {
            for round in 0u64.. {
                if paused.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
                let patch = serde_json::json!({"metadata": {"labels": {"churn": round.to_string()}}});
                let _ = pools
                    .patch(
                        &v6,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await;
            }
        })
    };
    let budget = spiderpool_k8s::RetryBudget {
        attempts: 3,
        first_backoff: std::time::Duration::from_millis(1),
        max_backoff: std::time::Duration::from_millis(2),
        deadline: std::time::Duration::from_secs(10),
    };
    let store = ClusterStore::new(client.clone()).with_budget(budget);
    let mut gave_up = false;
    for _ in 0..20 {
        match store.allocate(request(&namespace, "web", "c-web")).await {
            Err(RoundError::Contended { pools, .. }) => {
                assert_eq!(pools, std::slice::from_ref(&v6));
                gave_up = true;
                break;
            }
            // An attempt slipped between two churning writes: undo and try again.
            Ok(_) => {
                paused.store(true, std::sync::atomic::Ordering::SeqCst);
                let del = with_uid(
                    request(&namespace, "web", "c-web"),
                    endpoint_uid(&store, &namespace, "web").await,
                );
                ClusterStore::new(client.clone()).release(del).await.expect("DEL");
                paused.store(false, std::sync::atomic::Ordering::SeqCst);
            }
            Err(other) => panic!("{other}"),
        }
    }
    churn.abort();
    assert!(gave_up, "the churning writer never made the allocation give up");
    let state = ClusterStore::new(client.clone())
        .pools()
        .await
        .expect("the state")
        .state;
    assert_eq!(
        state.allocated_count(&v4),
        Ok(0),
        "the IPv4 address written before the IPv6 pool conflicted was released: {:?}",
        state.allocations(&v4)
    );
    assert_eq!(state.allocated_count(&v6), Ok(0));
    kubectl(&config, &["delete", "spiderippool", &v4, &v6], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pool_stops_the_add_and_a_deleted_pool_still_lets_pods_go() {
    let Some(config) = kubeconfig("an_invalid_pool_stops_the_add_and_a_deleted_pool_still_lets_pods_go")
    else {
        return;
    };
    install_crds(&config);
    forget_earlier_pools(&config, "bad");
    let namespace = unique("bad");
    let node = unique("bad-node");
    let (bad, good) = (unique("bad-a"), unique("bad-b"));
    let mut objects = namespace_yaml(&namespace) + "---\n" + &node_yaml(&node, &[]) + "---\n";
    // Stored without the webhook: the gateway is outside the subnet.
    objects += &pool_yaml(
        "bad",
        &bad,
        "10.62.0.0/16",
        "10.62.0.10-10.62.0.19",
        &node,
        "gateway: 10.99.0.1, ",
    );
    objects += "---\n";
    objects += &pool_yaml("bad", &good, "10.63.0.0/16", "10.63.0.10-10.63.0.19", &node, "");
    for (pod, pools) in [
        ("first", format!("[\"{bad}\", \"{good}\"]")),
        ("second", format!("[\"{good}\"]")),
    ] {
        objects += "---\n";
        objects += &pod_yaml(
            &namespace,
            pod,
            &node,
            &[(POD_IPPOOL, &format!(r#"{{"ipv4": {pools}}}"#))],
            &[],
        );
    }
    kubectl(&config, &["apply", "-f", "-"], &objects);
    let store = ClusterStore::new(client(&config).await);

    // The invalid candidate stops the ADD, naming the pool and the violation: no fallback past
    // it to another pool.
    let refused = store
        .allocate(request(&namespace, "first", "c1"))
        .await
        .expect_err("an invalid candidate stops the ADD");
    let text = refused.to_string();
    assert!(
        matches!(refused, RoundError::Refused(Refusal::Allocate(_))),
        "{text}"
    );
    assert!(
        text.contains(&bad) && text.contains("spec.gateway: 10.99.0.1 is outside subnet 10.62.0.0/16"),
        "{text}"
    );

    // A pool deleted while a pod holds one of its addresses: the pod's DEL still succeeds and
    // its endpoint goes; a new ADD naming the pool is refused as not found.
    let held = store
        .allocate(request(&namespace, "second", "c2"))
        .await
        .expect("ADD");
    assert_eq!(address_of(&held).to_string(), "10.63.0.10");
    kubectl(&config, &["delete", "spiderippool", &good], "");
    let del = with_uid(
        request(&namespace, "second", "c2"),
        endpoint_uid(&store, &namespace, "second").await,
    );
    store.release(del).await.expect("DEL with the pool gone");
    let endpoints: Api<SpiderEndpoint> = Api::namespaced(store.client().clone(), &namespace);
    assert!(endpoints.get_opt("second").await.expect("reading").is_none());
    let missing = store
        .allocate(request(&namespace, "second", "c3"))
        .await
        .expect_err("the pool is gone");
    assert!(
        missing.to_string().contains(&format!("{good}: no such pool")),
        "{missing}"
    );
}
