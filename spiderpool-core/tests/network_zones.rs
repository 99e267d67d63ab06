//! The network-zones scenario of Spiderpool's documentation, end to end through the engine.

use spiderpool_core::scenario::{self, NETWORK_ZONES_YAML};
use spiderpool_core::{InMemoryState, Resource, allocate, parse_documents, release};

#[test]
fn the_seed_yaml_is_accepted_unchanged() {
    let documents = parse_documents(NETWORK_ZONES_YAML).unwrap();
    let names: Vec<String> = documents.iter().map(|d| d.resource.to_string()).collect();
    assert_eq!(
        names,
        ["SpiderIPPool test-ippool-6", "SpiderIPPool test-ippool-7"]
    );
    assert!(
        documents
            .iter()
            .all(|d| matches!(d.resource, Resource::IpPool(_)))
    );
    let catalog = spiderpool_core::PoolCatalog::from_documents(&documents);
    assert_eq!(catalog.invalid().count(), 0);
}

#[test]
fn each_pod_gets_an_address_of_its_own_zone() {
    let outcome = scenario::run_network_zones(&mut InMemoryState::new()).unwrap();
    assert_eq!(
        outcome.pod_table(),
        "\
NAME             IP            NODE
test-app-j9ftl   10.6.168.60   controller-node-1
test-app-nkq5h   10.7.168.60   worker-node-1
"
    );
    assert_eq!(outcome.pods[0].pool, "test-ippool-6");
    assert_eq!(outcome.pods[1].pool, "test-ippool-7");
}

#[test]
fn the_pool_table_reads_as_in_the_seed() {
    let outcome = scenario::run_network_zones(&mut InMemoryState::new()).unwrap();
    assert_eq!(
        outcome.pool_table(),
        "\
NAME            VERSION   SUBNET        ALLOCATED-IP-COUNT   TOTAL-IP-COUNT   DEFAULT   DISABLE
test-ippool-6   4         10.6.0.0/16   1                    10               false     false
test-ippool-7   4         10.7.0.0/16   1                    10               false     false
"
    );
}

#[test]
fn the_worker_pod_skips_the_first_candidate_for_its_node() {
    let catalog = spiderpool_core::PoolCatalog::from_documents(&parse_documents(NETWORK_ZONES_YAML).unwrap());
    let worker = &scenario::network_zones_pods()[1];
    let plan = allocate(&catalog, &InMemoryState::new(), &worker.request).unwrap();
    let trial: Vec<String> = plan.trials[0]
        .candidates
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        trial,
        [
            "test-ippool-6: node worker-node-1 is not in nodeName [controller-node-1]",
            "test-ippool-7: chosen, 10.7.168.60",
        ]
    );
}

#[test]
fn a_zone_that_is_full_fails_with_every_candidate_and_reason() {
    let catalog = spiderpool_core::PoolCatalog::from_documents(&parse_documents(NETWORK_ZONES_YAML).unwrap());
    let mut state = InMemoryState::new();
    let template = scenario::network_zones_pods().remove(1).request;
    for index in 0..10 {
        let mut request = template.clone();
        request.pod.name = format!("test-app-{index}");
        request.pod.uid = Some(format!("uid-{index}"));
        let plan = allocate(&catalog, &state, &request).unwrap();
        state.apply(&plan.changes).unwrap();
    }
    let err = allocate(&catalog, &state, &template).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no pool can serve pod default/test-app-nkq5h on node worker-node-1: eth0 IPv4: \
         test-ippool-6: node worker-node-1 is not in nodeName [controller-node-1]; \
         test-ippool-7: full: 10 of 10 allocatable addresses in use; \
         free addresses, or add a pool that serves this node and name it"
    );
    // Releasing one address makes room again.
    let owner = spiderpool_core::OwnerKey::Pod("uid-3".into());
    state.apply(&release(&state, &owner, None).unwrap()).unwrap();
    assert_eq!(
        allocate(&catalog, &state, &template).unwrap().interfaces[0].addresses[0]
            .address
            .to_string(),
        "10.7.168.63"
    );
}
