//! An agent reading from its watches (`ClusterStore::watching`) against a real API server:
//! what another writer changes behind its caches only makes a write conflict, and a pod
//! created again under its name is read with its new UID.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use spiderpool_check::kit::apiserver::{
    client, forget_earlier_pools, install_crds, kubeconfig, kubectl, node_yaml, pod_yaml, unique,
};
use spiderpool_check::kit::documents::labelled_pool;
use spiderpool_core::annotations::POD_IPPOOL;
use spiderpool_core::{AllocationState, PodIdentity, RuntimeFacts};
use spiderpool_k8s::ClusterStore;

/// An ADD of `eth0` of `namespace/pod` with its UID, as a runtime makes it.
async fn add(store: &ClusterStore, namespace: &str, pod: &str, container: &str) -> IpAddr {
    let pods: Api<Pod> = Api::namespaced(store.client().clone(), namespace);
    let uid = pods.get(pod).await.expect("the pod").metadata.uid;
    let facts = RuntimeFacts {
        container_id: container.into(),
        interface: "eth0".into(),
        pod: Some(PodIdentity {
            namespace: namespace.into(),
            name: pod.into(),
            uid,
        }),
        ..RuntimeFacts::default()
    };
    let plan = store
        .allocate(facts)
        .await
        .unwrap_or_else(|err| panic!("ADD of {pod}: {err}"));
    plan.interfaces[0].addresses[0].address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_agent_and_a_borrower_share_a_block_without_duplicates() {
    let Some(config) = kubeconfig("a_watching_agent_and_a_borrower_share_a_block_without_duplicates") else {
        return;
    };
    install_crds(&config);
    forget_earlier_pools(&config, "watch");
    let namespace = unique("watch");
    let (mine, other) = (unique("watch-node-a"), unique("watch-node-b"));
    let (pool, second) = (unique("watch-pool"), unique("watch-pool-2"));
    let annotation = |pool: &str| format!(r#"{{"ipv4": ["{pool}"]}}"#);
    let mut objects = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
    for node in [&mine, &other] {
        objects += &format!("---\n{}", node_yaml(node, &[]));
    }
    // One block of 8 (a /29) holding 6 usable addresses: the agent claims it, and the other
    // node, finding no unclaimed block, borrows from it.
    let spec = format!(
        "{{blockSize: 29, subnet: 10.51.0.0/16, ips: [10.51.1.1-10.51.1.6], nodeName: [{mine}, {other}]}}"
    );
    objects += &format!(
        "---\n{}",
        labelled_pool(&pool, &[("spiderpool-test", "watch")], &spec)
    );
    let spec = format!("{{subnet: 10.52.0.0/16, ips: [10.52.1.1-10.52.1.6], nodeName: [{mine}]}}");
    objects += &format!(
        "---\n{}",
        labelled_pool(&second, &[("spiderpool-test", "watch")], &spec)
    );
    for index in 0..6 {
        let node = if index % 2 == 0 { &mine } else { &other };
        objects += "---\n";
        objects += &pod_yaml(
            &namespace,
            &format!("pod-{index}"),
            node,
            &[(POD_IPPOOL, &annotation(&pool))],
            &[],
        );
    }
    kubectl(&config, &["apply", "-f", "-"], &objects);

    let client = client(&config).await;
    let agent = ClusterStore::new(client.clone()).with_node(&mine).watching();
    let borrower = ClusterStore::new(client.clone()).with_node(&other);
    assert!(
        borrower.loading().is_empty(),
        "a store that does not watch waits for nothing"
    );
    // An agent says it is not ready (STATUS) until each watch has listed.
    let started = std::time::Instant::now();
    while !agent.loading().is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the watches of {mine} never listed: {:?}",
            agent.loading()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The agent writes the block, the borrower writes the same block behind the agent's
    // watch and copy, one after the other with no pause: every address once.
    let mut addresses = BTreeSet::new();
    for index in 0..6 {
        let store = if index % 2 == 0 { &agent } else { &borrower };
        let address = add(store, &namespace, &format!("pod-{index}"), &format!("c-{index}")).await;
        assert!(addresses.insert(address), "{address} handed out twice");
    }
    let state = ClusterStore::new(client.clone())
        .pools()
        .await
        .expect("the state")
        .state;
    let Ok(held) = state.allocations(&pool);
    let held: BTreeSet<IpAddr> = held.into_iter().map(|(address, _)| address).collect();
    assert_eq!(held, addresses, "what was answered is what the block holds");

    // pod-0 created again under its name, now asking for the second pool: the agent reads
    // the new pod (its UID differs from the one its watch may still hold), not the old one.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.delete("pod-0", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .expect("pod-0 deleted");
    while pods.get_opt("pod-0").await.expect("a read").is_some() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = pod_yaml(
        &namespace,
        "pod-0",
        &mine,
        &[(POD_IPPOOL, &annotation(&second))],
        &[],
    );
    kubectl(&config, &["create", "-f", "-"], &again);
    let address = add(&agent, &namespace, "pod-0", "c-0-again").await;
    assert_eq!(
        address,
        "10.52.1.1".parse::<IpAddr>().unwrap(),
        "the new pod's pool"
    );

    kubectl(&config, &["delete", "namespace", &namespace, "--wait=false"], "");
    kubectl(&config, &["delete", "spiderippool", &pool, &second], "");
}
