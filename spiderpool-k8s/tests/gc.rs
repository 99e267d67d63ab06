//! The garbage collector against a real API server: a deleted pod, a finished pod, a deleted
//! node, a StatefulSet pod re-created under its name, an orphaned SpiderEndpoint, and an
//! allocation that never committed. The tests of this file run one at a time: a sweep reads
//! and writes every pool of the cluster, and must not meet another test's allocation halfway.

use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use spiderpool_check::kit::apiserver::{
    client, forget_earlier_pools, install_crds, kubeconfig, kubectl, node_yaml, pod_yaml, unique,
};
use spiderpool_core::annotations::POD_IPPOOL;
use spiderpool_core::gc::{GcPolicy, GcReason};
use spiderpool_core::{AllocationState, Change, OwnerKey, PodIdentity, RuntimeFacts};
use spiderpool_k8s::gc::{Collector, SweepReport, unix_now};
use spiderpool_k8s::{ClusterStore, SpiderEndpoint};

/// One test at a time.
static SWEEPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A namespace, a node and a pool serving that node, for one test.
struct Fixture {
    config: std::path::PathBuf,
    store: ClusterStore,
    namespace: String,
    node: String,
    pool: String,
}

impl Fixture {
    async fn new(config: &Path, tag: &str) -> Fixture {
        install_crds(config);
        let (namespace, node, pool) = (
            unique(&format!("gc-{tag}")),
            unique(&format!("gc-{tag}-node")),
            unique(&format!("gc-{tag}-pool")),
        );
        let third = match tag {
            "deleted" => 1,
            "finished" => 2,
            "node" => 3,
            "sts" => 4,
            "orphan" => 5,
            _ => 6,
        };
        forget_earlier_pools(config, &format!("gc-{tag}"));
        let objects = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n{}---\n\
             apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: {pool}\n  \
             labels:\n    spiderpool-test: gc-{tag}\n\
             spec:\n  subnet: 10.70.0.0/16\n  ips:\n  - 10.70.{third}.1-10.70.{third}.9\n  nodeName:\n  - {node}\n",
            node_yaml(&node, &[])
        );
        kubectl(config, &["apply", "-f", "-"], &objects);
        Fixture {
            config: config.to_owned(),
            store: ClusterStore::new(client(config).await),
            namespace,
            node,
            pool,
        }
    }

    fn pod(&self, name: &str, extra_metadata: &str) {
        let annotation = format!(r#"{{"ipv4": ["{}"]}}"#, self.pool);
        let yaml = pod_yaml(
            &self.namespace,
            name,
            &self.node,
            &[(POD_IPPOOL, &annotation)],
            &[],
        );
        let yaml = yaml.replacen("metadata:\n", &format!("metadata:\n{extra_metadata}"), 1);
        kubectl(&self.config, &["apply", "-f", "-"], &yaml);
    }

    async fn allocate(&self, pod: &str) -> IpAddr {
        let facts = RuntimeFacts {
            container_id: format!("c-{pod}"),
            interface: "eth0".into(),
            pod: Some(PodIdentity {
                namespace: self.namespace.clone(),
                name: pod.into(),
                uid: None,
            }),
            ..RuntimeFacts::default()
        };
        let plan = self.store.allocate(facts).await.expect("ADD");
        plan.interfaces[0].addresses[0].address
    }

    fn delete_pod(&self, pod: &str) {
        kubectl(
            &self.config,
            &[
                "delete",
                "pod",
                "-n",
                &self.namespace,
                pod,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            "",
        );
    }

    async fn held(&self) -> Vec<IpAddr> {
        let state = self.store.pools().await.expect("the state").state;
        let Ok(allocations) = state.allocations(&self.pool);
        allocations.into_iter().map(|(address, _)| address).collect()
    }

    async fn endpoint(&self, pod: &str) -> Option<SpiderEndpoint> {
        Api::<SpiderEndpoint>::namespaced(self.store.client().clone(), &self.namespace)
            .get_opt(pod)
            .await
            .expect("reading the endpoint")
    }

    /// The reasons this fixture's pool's addresses were released for.
    fn reasons(&self, report: &SweepReport) -> Vec<GcReason> {
        report
            .released
            .iter()
            .filter(|c| c.change.pool() == self.pool)
            .map(|c| c.reason.clone())
            .collect()
    }
}

async fn sweep(collector: &mut Collector, now: i64) -> SweepReport {
    collector.sweep_once(now).await.expect("a sweep")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_loses_its_address_and_its_endpoint() {
    let Some(config) = kubeconfig("a_deleted_pod_loses_its_address_and_its_endpoint") else {
        return;
    };
    let _one = SWEEPS.lock().await;
    let fixture = Fixture::new(&config, "deleted").await;
    fixture.pod("web", "");
    fixture.pod("keep", "");
    let gone = fixture.allocate("web").await;
    let kept = fixture.allocate("keep").await;
    let mut collector = Collector::new(fixture.store.clone(), GcPolicy::default());
    assert!(
        fixture
            .reasons(&sweep(&mut collector, unix_now()).await)
            .is_empty(),
        "nothing to collect yet"
    );
    fixture.delete_pod("web");
    let report = sweep(&mut collector, unix_now()).await;
    assert_eq!(fixture.reasons(&report), [GcReason::PodGone]);
    assert_eq!(
        fixture.held().await,
        [kept],
        "{gone} released, the live pod's address kept"
    );
    assert!(
        fixture.endpoint("web").await.is_none(),
        "the endpoint of the deleted pod is deleted"
    );
    assert!(fixture.endpoint("keep").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_pod_keeps_its_address_for_the_grace_period() {
    let Some(config) = kubeconfig("a_finished_pod_keeps_its_address_for_the_grace_period") else {
        return;
    };
    let _one = SWEEPS.lock().await;
    let fixture = Fixture::new(&config, "finished").await;
    fixture.pod("job", "");
    fixture.allocate("job").await;
    let now = unix_now();
    let finished = k8s_openapi::jiff::Timestamp::from_second(now - 30).expect("a time");
    let status = serde_json::json!({"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "app", "image": "nginx", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "finishedAt": finished.to_string()}}}]}});
    kubectl(
        &config,
        &[
            "patch",
            "pod",
            "-n",
            &fixture.namespace,
            "job",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        "",
    );
    let mut collector = Collector::new(fixture.store.clone(), GcPolicy::default());
    assert!(
        fixture.reasons(&sweep(&mut collector, now).await).is_empty(),
        "30 s after: kept"
    );
    let report = sweep(&mut collector, now + 31).await;
    assert!(
        matches!(
            fixture.reasons(&report).as_slice(),
            [GcReason::PodFinished { ago: 61, .. }]
        ),
        "{:?}",
        fixture.reasons(&report)
    );
    assert!(fixture.held().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_on_a_deleted_node_loses_its_address() {
    let Some(config) = kubeconfig("a_pod_on_a_deleted_node_loses_its_address") else {
        return;
    };
    let _one = SWEEPS.lock().await;
    let fixture = Fixture::new(&config, "node").await;
    fixture.pod("web", "");
    fixture.allocate("web").await;
    kubectl(&config, &["delete", "node", &fixture.node], "");
    let mut collector = Collector::new(fixture.store.clone(), GcPolicy::default());
    let report = sweep(&mut collector, unix_now()).await;
    assert_eq!(
        fixture.reasons(&report),
        [GcReason::NodeGone {
            node: fixture.node.clone()
        }]
    );
    assert!(fixture.held().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_pod_keeps_its_address_across_re_creation() {
    let Some(config) = kubeconfig("a_statefulset_pod_keeps_its_address_across_re_creation") else {
        return;
    };
    let _one = SWEEPS.lock().await;
    let fixture = Fixture::new(&config, "sts").await;
    let set = format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: {}\nspec:\n  replicas: 1\n  \
         serviceName: db\n  selector:\n    matchLabels: {{app: db}}\n  template:\n    metadata:\n      labels: {{app: db}}\n    \
         spec:\n      containers:\n      - name: app\n        image: nginx\n",
        fixture.namespace
    );
    kubectl(&config, &["apply", "-f", "-"], &set);
    let uid = kubectl(
        &config,
        &[
            "get",
            "statefulset",
            "-n",
            &fixture.namespace,
            "db",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        "",
    );
    let owner = format!(
        "  ownerReferences:\n  - apiVersion: apps/v1\n    kind: StatefulSet\n    name: db\n    uid: {uid}\n    controller: true\n"
    );
    fixture.pod("db-0", &owner);
    let first = fixture.allocate("db-0").await;
    let mut collector = Collector::new(fixture.store.clone(), GcPolicy::default());

    // Deleted; the StatefulSet will bring it back: kept, endpoint too.
    fixture.delete_pod("db-0");
    assert!(
        fixture
            .reasons(&sweep(&mut collector, unix_now()).await)
            .is_empty()
    );
    assert_eq!(fixture.held().await, [first]);
    assert!(fixture.endpoint("db-0").await.is_some());

    // Re-created under its name with a new UID: the same address, now its own.
    fixture.pod("db-0", &owner);
    let second = fixture.allocate("db-0").await;
    assert_eq!(second, first);
    let pods: Api<Pod> = Api::namespaced(fixture.store.client().clone(), &fixture.namespace);
    let new_uid = pods
        .get("db-0")
        .await
        .expect("the pod")
        .metadata
        .uid
        .expect("a UID");
    let state = fixture.store.pools().await.expect("the state").state;
    let Ok(held) = state.held_by(&OwnerKey::Pod(new_uid.clone()));
    assert_eq!(held.len(), 1);
    assert_eq!(
        fixture.endpoint("db-0").await.expect("the endpoint").spec.0.uid,
        new_uid
    );
    assert!(
        fixture
            .reasons(&sweep(&mut collector, unix_now()).await)
            .is_empty()
    );

    // Scaled to zero and deleted: released.
    kubectl(
        &config,
        &[
            "scale",
            "statefulset",
            "-n",
            &fixture.namespace,
            "db",
            "--replicas=0",
        ],
        "",
    );
    fixture.delete_pod("db-0");
    assert_eq!(
        fixture.reasons(&sweep(&mut collector, unix_now()).await),
        [GcReason::PodGone]
    );
    assert!(fixture.held().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_endpoint_is_deleted() {
    let Some(config) = kubeconfig("an_orphaned_endpoint_is_deleted") else {
        return;
    };
    let _one = SWEEPS.lock().await;
    let fixture = Fixture::new(&config, "orphan").await;
    let endpoint = format!(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderEndpoint\nmetadata:\n  name: ghost\n  namespace: {}\n\
         spec:\n  uid: 00000000-0000-0000-0000-000000000001\n  node: {}\n  ips:\n  - interface: eth0\n    \
         ipv4Pool: {}\n    ipv4: 10.70.5.9/16\n",
        fixture.namespace, fixture.node, fixture.pool
    );
    kubectl(&config, &["apply", "-f", "-"], &endpoint);
    let mut collector = Collector::new(fixture.store.clone(), GcPolicy::default());
    let report = sweep(&mut collector, unix_now()).await;
    assert!(
        report
            .endpoints_deleted
            .iter()
            .any(|pod| pod.name == "ghost" && pod.namespace == fixture.namespace)
    );
    assert!(fixture.endpoint("ghost").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_that_never_committed_is_released_after_the_grace_period() {
    let Some(config) = kubeconfig("an_allocation_that_never_committed_is_released_after_the_grace_period")
    else {
        return;
    };
    let _one = SWEEPS.lock().await;
    let fixture = Fixture::new(&config, "uncommitted").await;
    fixture.pod("web", "");
    let address = fixture.allocate("web").await;
    // As if the allocator died before writing the endpoint.
    kubectl(
        &config,
        &["delete", "spiderendpoint", "-n", &fixture.namespace, "web"],
        "",
    );
    let mut collector = Collector::new(fixture.store.clone(), GcPolicy::default());
    let now = unix_now();
    let first = sweep(&mut collector, now).await;
    assert!(fixture.reasons(&first).is_empty(), "within the grace period");
    assert_eq!(fixture.held().await, [address]);
    let later = sweep(&mut collector, now + 120).await;
    assert_eq!(fixture.reasons(&later), [GcReason::Uncommitted { ago: 120 }]);
    assert!(fixture.held().await.is_empty());
    let released: Vec<&Change> = later.released.iter().map(|c| &c.change).collect();
    assert!(!released.is_empty());
}
