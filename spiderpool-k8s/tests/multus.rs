//! SpiderMultusConfig to NetworkAttachmentDefinition: the rendering of every CNI type and
//! every error, then the controller against a real API server (the seed's object, changes,
//! deletion of the network attachment, an invalid change reported as an event).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::core::CustomResourceExt;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use spiderpool_check::kit::apiserver::{client, install_crds, kubeconfig, kubectl, unique};
use spiderpool_k8s::multus::{
    MultusError, NetworkAttachmentDefinition, RESOURCE_NAME_ANNOTATION, RenderError, RenderSettings,
    network_attachment_definition, reconcile_multus_config, render_network, run_multus_controller,
};
use spiderpool_k8s::{LinkConfig, NetworkPools, SpiderMultusConfig, SpiderMultusConfigSpec, SriovConfig};
use tokio::task::JoinHandle;

/// Where the nodes' `spiderpool` plugin finds its kubeconfig, in these tests.
const KUBECONFIG: &str = "/etc/cni/net.d/spiderpool.d/spiderpool.kubeconfig";

/// The settings of every test: controllers of tests running at the same time against one API
/// server reconcile each other's objects, so they must render alike.
fn settings() -> RenderSettings {
    RenderSettings {
        cni_version: "0.3.1".into(),
        kubeconfig: Some(KUBECONFIG.into()),
        agent_socket: None,
    }
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The seed's SpiderMultusConfig, as written.
fn seed() -> SpiderMultusConfig {
    serde_yaml_ng::from_str(&fixture("macvlan-conf.yaml")).expect("the seed SpiderMultusConfig parses")
}

fn link(masters: &[&str], vlan: Option<i32>, pools: Option<NetworkPools>) -> LinkConfig {
    LinkConfig {
        master: masters.iter().map(|m| m.to_string()).collect(),
        vlan_id: vlan,
        ippools: pools,
    }
}

fn pools(ipv4: &[&str], ipv6: &[&str]) -> Option<NetworkPools> {
    Some(NetworkPools {
        ipv4: ipv4.iter().map(|p| p.to_string()).collect(),
        ipv6: ipv6.iter().map(|p| p.to_string()).collect(),
    })
}

fn spec(cni_type: &str) -> SpiderMultusConfigSpec {
    SpiderMultusConfigSpec {
        cni_type: cni_type.into(),
        ..SpiderMultusConfigSpec::default()
    }
}

/// Renders `spec` as `ns`/`net` with [`settings`]; returns the configuration parsed, the
/// annotations and the notes.
fn render(spec: &SpiderMultusConfigSpec) -> (Value, Vec<(String, String)>, Vec<String>) {
    let rendered = render_network("ns", "net", spec, &settings()).expect("renders");
    let config = serde_json::from_str(&rendered.config).expect("the configuration is JSON");
    (config, rendered.annotations.into_iter().collect(), rendered.notes)
}

/// The ipam keys the `spiderpool` plugin accepts (spiderpool-cni's `IpamConfig`, which denies
/// unknown fields), with the JSON type of each.
const IPAM_KEYS: [(&str, &str); 19] = [
    ("type", "string"),
    ("ippools_path", "string"),
    ("ippools", "array"),
    ("data_dir", "string"),
    ("node_name", "string"),
    ("node_labels", "object"),
    ("default_ipv4_ippool", "strings"),
    ("default_ipv6_ippool", "strings"),
    ("clean_gateway", "bool"),
    ("kubeconfig", "string"),
    ("agent_socket", "string"),
    ("busy_wait_ms", "number"),
    ("log_level", "any"),
    ("log_file_path", "any"),
    ("log_file_max_size", "any"),
    ("log_file_max_age", "any"),
    ("log_file_max_count", "any"),
    ("ipam_unix_socket_path", "any"),
    ("match_master_subnet", "any"),
];

/// Asserts that `config` (a configuration list) is one the `spiderpool` plugin accepts: every
/// plugin with an ipam section has `type: spiderpool` and only keys the plugin knows, of the
/// right types, and `args.cni.network_namespace` is a string.
fn assert_plugin_accepts(config: &Value) {
    assert!(config["cniVersion"].is_string(), "cniVersion: {config}");
    assert!(config["name"].is_string(), "name: {config}");
    let plugins = config["plugins"].as_array().expect("plugins is a list");
    assert!(!plugins.is_empty());
    for plugin in plugins {
        assert!(plugin["type"].is_string(), "type: {plugin}");
        if let Some(namespace) = plugin.pointer("/args/cni/network_namespace") {
            assert!(namespace.is_string(), "args.cni.network_namespace: {plugin}");
        }
        let Some(ipam) = plugin.get("ipam") else { continue };
        assert_eq!(ipam["type"], "spiderpool", "ipam.type: {plugin}");
        for (key, value) in ipam.as_object().expect("ipam is an object") {
            let kind = IPAM_KEYS
                .iter()
                .find(|(known, _)| known == key)
                .unwrap_or_else(|| panic!("ipam.{key}: the spiderpool plugin refuses unknown fields"))
                .1;
            let ok = match kind {
                "string" => value.is_string(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                "strings" => value
                    .as_array()
                    .is_some_and(|items| items.iter().all(Value::is_string)),
                "bool" => value.is_boolean(),
                "number" => value.is_u64(),
                _ => true,
            };
            assert!(ok, "ipam.{key}: {value} is not a {kind}");
        }
    }
}

#[test]
fn the_seed_renders_a_macvlan_network_on_eth0_without_the_coordinator() {
    let seed = seed();
    let rendered = render_network("kube-system", "macvlan-conf", &seed.spec, &settings()).expect("renders");
    let config: Value = serde_json::from_str(&rendered.config).expect("JSON");
    assert_eq!(
        config,
        json!({
            "cniVersion": "0.3.1",
            "name": "macvlan-conf",
            "plugins": [{
                "type": "macvlan",
                "master": "eth0",
                "mode": "bridge",
                "args": {"cni": {"network_namespace": "kube-system"}},
                "ipam": {"type": "spiderpool", "kubeconfig": KUBECONFIG},
            }],
        })
    );
    assert!(rendered.annotations.is_empty());
    assert_eq!(rendered.notes.len(), 1, "{:?}", rendered.notes);
    assert!(
        rendered.notes[0].starts_with("spec.enableCoordinator: "),
        "{:?}",
        rendered.notes
    );
    assert!(rendered.notes[0].contains("not chained"), "{:?}", rendered.notes);
    assert_plugin_accepts(&config);

    // Without a kubeconfig in the settings, ipam has only its type.
    let plain = render_network(
        "kube-system",
        "macvlan-conf",
        &seed.spec,
        &RenderSettings::default(),
    )
    .expect("renders");
    let plain: Value = serde_json::from_str(&plain.config).expect("JSON");
    assert_eq!(plain["cniVersion"], "0.3.1");
    assert_eq!(plain["plugins"][0]["ipam"], json!({"type": "spiderpool"}));
}

#[test]
fn a_vlan_makes_the_master_its_sub_interface_and_pools_become_defaults() {
    let mut macvlan = spec("macvlan");
    macvlan.macvlan = Some(link(&["eth0"], Some(100), pools(&["v4-a", "v4-b"], &["v6"])));
    let (config, annotations, notes) = render(&macvlan);
    assert_eq!(
        config,
        json!({
            "cniVersion": "0.3.1",
            "name": "net",
            "plugins": [{
                "type": "macvlan",
                "master": "eth0.100",
                "mode": "bridge",
                "args": {"cni": {"network_namespace": "ns"}},
                "ipam": {
                    "type": "spiderpool",
                    "kubeconfig": KUBECONFIG,
                    "default_ipv4_ippool": ["v4-a", "v4-b"],
                    "default_ipv6_ippool": ["v6"],
                },
            }],
        })
    );
    assert!(annotations.is_empty() && notes.is_empty());
    assert_plugin_accepts(&config);

    // vlanID 0 is no VLAN; an IPv4-only pool list leaves IPv6 out.
    macvlan.macvlan = Some(link(&["ens3"], Some(0), pools(&["v4"], &[])));
    let (config, _, _) = render(&macvlan);
    assert_eq!(config["plugins"][0]["master"], "ens3");
    assert_eq!(
        config["plugins"][0]["ipam"],
        json!({"type": "spiderpool", "kubeconfig": KUBECONFIG, "default_ipv4_ippool": ["v4"]})
    );
}

#[test]
fn ipvlan_renders_mode_l2() {
    let mut ipvlan = spec("ipvlan");
    ipvlan.ipvlan = Some(link(&["bond0"], Some(4094), pools(&[], &["v6"])));
    let (config, annotations, notes) = render(&ipvlan);
    assert_eq!(
        config,
        json!({
            "cniVersion": "0.3.1",
            "name": "net",
            "plugins": [{
                "type": "ipvlan",
                "master": "bond0.4094",
                "mode": "l2",
                "args": {"cni": {"network_namespace": "ns"}},
                "ipam": {"type": "spiderpool", "kubeconfig": KUBECONFIG, "default_ipv6_ippool": ["v6"]},
            }],
        })
    );
    assert!(annotations.is_empty() && notes.is_empty());
    assert_plugin_accepts(&config);
}

#[test]
fn sriov_renders_its_vlan_and_the_resource_annotation() {
    let mut sriov = spec("sriov");
    sriov.sriov = Some(SriovConfig {
        resource_name: "intel.com/sriov_netdevice".into(),
        vlan_id: Some(200),
        ippools: pools(&["vf-pool"], &[]),
    });
    let (config, annotations, notes) = render(&sriov);
    assert_eq!(
        config,
        json!({
            "cniVersion": "0.3.1",
            "name": "net",
            "plugins": [{
                "type": "sriov",
                "vlan": 200,
                "args": {"cni": {"network_namespace": "ns"}},
                "ipam": {"type": "spiderpool", "kubeconfig": KUBECONFIG, "default_ipv4_ippool": ["vf-pool"]},
            }],
        })
    );
    assert_eq!(
        annotations,
        vec![(
            RESOURCE_NAME_ANNOTATION.to_owned(),
            "intel.com/sriov_netdevice".to_owned()
        )]
    );
    assert!(notes.is_empty());
    assert_plugin_accepts(&config);

    // Without vlanID, no `vlan`.
    sriov.sriov.as_mut().expect("set").vlan_id = None;
    let (config, _, _) = render(&sriov);
    assert_eq!(config["plugins"][0].get("vlan"), None);
}

#[test]
fn custom_is_used_as_written() {
    let text = "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"mine\",\n  \"plugins\": [{\"type\": \"bridge\", \
                \"bridge\": \"br0\", \"ipam\": {\"type\": \"host-local\"}}]\n}";
    let mut custom = spec("custom");
    custom.custom_cni = Some(text.into());
    custom.enable_coordinator = Some(true);
    custom.disable_ipam = Some(true);
    let rendered = render_network("ns", "net", &custom, &settings()).expect("renders");
    assert_eq!(
        rendered.config, text,
        "the text is not changed, not even its layout"
    );
    assert!(rendered.annotations.is_empty());
    assert!(rendered.notes.is_empty());
}

#[test]
fn the_agent_socket_of_the_deployment_reaches_the_plugin() {
    let mut macvlan = spec("macvlan");
    macvlan.macvlan = Some(link(&["eth0"], None, None));
    let settings = RenderSettings {
        agent_socket: Some("/run/spiderpool/agent.sock".into()),
        kubeconfig: None,
        ..settings()
    };
    let rendered = render_network("ns", "net", &macvlan, &settings).expect("renders");
    let config: Value = serde_json::from_str(&rendered.config).expect("JSON");
    assert_eq!(
        config["plugins"][0]["ipam"],
        json!({"type": "spiderpool", "agent_socket": "/run/spiderpool/agent.sock"})
    );
    assert_plugin_accepts(&config);
}

#[test]
fn disable_ipam_leaves_the_ipam_section_out() {
    let mut macvlan = spec("macvlan");
    macvlan.macvlan = Some(link(&["eth0"], None, pools(&["ignored"], &[])));
    macvlan.disable_ipam = Some(true);
    let (config, _, _) = render(&macvlan);
    assert_eq!(
        config,
        json!({
            "cniVersion": "0.3.1",
            "name": "net",
            "plugins": [{
                "type": "macvlan",
                "master": "eth0",
                "mode": "bridge",
                "args": {"cni": {"network_namespace": "ns"}},
            }],
        })
    );
    // `disableIPAM: false` is the default.
    macvlan.disable_ipam = Some(false);
    assert_eq!(render(&macvlan).0["plugins"][0]["ipam"]["type"], "spiderpool");
}

#[test]
fn coordinator_settings_without_enable_coordinator_are_noted() {
    let mut macvlan = spec("macvlan");
    macvlan.macvlan = Some(link(&["eth0"], None, None));
    macvlan.coordinator = Some(json!({"mode": "underlay"}));
    let (config, _, notes) = render(&macvlan);
    assert_eq!(config["plugins"].as_array().map(Vec::len), Some(1));
    assert_eq!(notes.len(), 1);
    assert!(notes[0].starts_with("spec.coordinator: "), "{notes:?}");
    macvlan.enable_coordinator = Some(false);
    macvlan.coordinator = None;
    assert!(render(&macvlan).2.is_empty());
}

/// Renders `spec`, expecting `expected`, whose message must contain every one of `words`.
fn assert_error(spec: &SpiderMultusConfigSpec, expected: RenderError, words: &[&str]) {
    let error = render_network("ns", "net", spec, &settings()).expect_err("does not render");
    assert_eq!(error, expected);
    let message = error.to_string();
    assert!(
        message.starts_with(|c: char| !c.is_uppercase()),
        "lower case: {message}"
    );
    for word in words {
        assert!(message.contains(word), "{message:?} lacks {word:?}");
    }
}

#[test]
fn every_error_names_the_field_and_the_fix() {
    let macvlan = spec("macvlan");
    assert_error(
        &macvlan,
        RenderError::MissingSection {
            field: "spec.macvlan",
            cni_type: "macvlan",
            example: "{master: [eth0]}",
        },
        &["spec.macvlan: missing", "cniType macvlan", "master: [eth0]"],
    );
    assert_error(
        &spec("ipvlan"),
        RenderError::MissingSection {
            field: "spec.ipvlan",
            cni_type: "ipvlan",
            example: "{master: [eth0]}",
        },
        &["spec.ipvlan: missing"],
    );

    let mut two = spec("macvlan");
    two.macvlan = Some(link(&["eth0", "eth1"], None, None));
    assert_error(
        &two,
        RenderError::MultipleMasters {
            field: "spec.macvlan.master",
            masters: vec!["eth0".into(), "eth1".into()],
        },
        &[
            "spec.macvlan.master",
            "bonding",
            "not supported",
            "name one interface",
            "bond0",
        ],
    );
    let mut two = spec("ipvlan");
    two.ipvlan = Some(link(&["eth0", "eth1"], None, None));
    assert!(
        render_network("ns", "net", &two, &settings())
            .expect_err("two masters")
            .to_string()
            .starts_with("spec.ipvlan.master: ")
    );

    let mut none = spec("macvlan");
    none.macvlan = Some(link(&[], None, None));
    assert_error(
        &none,
        RenderError::NoMaster {
            field: "spec.macvlan.master",
        },
        &["spec.macvlan.master: empty", "e.g. [eth0]"],
    );

    let mut bad_vlan = spec("macvlan");
    bad_vlan.macvlan = Some(link(&["eth0"], Some(4095), None));
    assert_error(
        &bad_vlan,
        RenderError::InvalidVlan {
            field: "spec.macvlan.vlanID",
            value: 4095,
        },
        &["spec.macvlan.vlanID: 4095", "1 to 4094"],
    );

    let mut long = spec("macvlan");
    long.macvlan = Some(link(&["enp94s0f0np0"], Some(1000), None));
    assert_error(
        &long,
        RenderError::InvalidInterfaceName {
            field: "spec.macvlan.master",
            name: "enp94s0f0np0.1000".into(),
            reason: "longer than 15 bytes",
        },
        &["spec.macvlan.master", "enp94s0f0np0.1000", "15 bytes"],
    );

    assert_error(
        &spec("sriov"),
        RenderError::MissingSection {
            field: "spec.sriov",
            cni_type: "sriov",
            example: "{resourceName: intel.com/sriov_netdevice}",
        },
        &["spec.sriov: missing", "resourceName"],
    );
    let mut no_resource = spec("sriov");
    no_resource.sriov = Some(SriovConfig::default());
    assert_error(
        &no_resource,
        RenderError::MissingResourceName,
        &["spec.sriov.resourceName: empty", "intel.com/sriov_netdevice"],
    );
    let mut sriov_vlan = spec("sriov");
    sriov_vlan.sriov = Some(SriovConfig {
        resource_name: "r".into(),
        vlan_id: Some(-1),
        ippools: None,
    });
    assert_error(
        &sriov_vlan,
        RenderError::InvalidVlan {
            field: "spec.sriov.vlanID",
            value: -1,
        },
        &["spec.sriov.vlanID: -1"],
    );

    assert_error(
        &spec("custom"),
        RenderError::MissingCustomCni,
        &["spec.customCNI: missing", "JSON"],
    );
    let mut not_json = spec("custom");
    not_json.custom_cni = Some("{\"cniVersion\": \"1.0.0\",".into());
    let error = render_network("ns", "net", &not_json, &settings()).expect_err("not JSON");
    assert!(matches!(error, RenderError::InvalidCustomCni(_)), "{error:?}");
    assert!(
        error.to_string().starts_with("spec.customCNI: not valid JSON"),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .ends_with("write the whole CNI configuration as a JSON object"),
        "{error}"
    );
    not_json.custom_cni = Some("[1, 2]".into());
    assert_error(
        &not_json,
        RenderError::InvalidCustomCni("not a JSON object".into()),
        &["spec.customCNI: not a JSON object"],
    );

    assert_error(
        &spec("ovs"),
        RenderError::UnsupportedCniType("ovs".into()),
        &["spec.cniType: \"ovs\"", "macvlan, ipvlan, sriov or custom"],
    );
}

#[test]
fn the_network_attachment_is_owned_by_its_multus_config() {
    let mut seed = seed();
    let rendered = render_network("kube-system", "macvlan-conf", &seed.spec, &settings()).expect("renders");
    let error = network_attachment_definition(&seed, &rendered).expect_err("no uid yet");
    assert!(matches!(error, MultusError::MissingMetadata("uid")), "{error:?}");
    assert!(error.to_string().starts_with("metadata.uid: missing"), "{error}");

    seed.metadata.uid = Some("0b6f1a7c-0000-4000-8000-000000000001".into());
    let nad = network_attachment_definition(&seed, &rendered).expect("builds");
    assert_eq!(nad.name_any(), "macvlan-conf");
    assert_eq!(nad.namespace().as_deref(), Some("kube-system"));
    assert_eq!(nad.spec.config, rendered.config);
    assert_eq!(nad.metadata.annotations, None);
    let owners = nad.owner_references();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].api_version, "spiderpool.spidernet.io/v2beta1");
    assert_eq!(owners[0].kind, "SpiderMultusConfig");
    assert_eq!(owners[0].name, "macvlan-conf");
    assert_eq!(owners[0].uid, "0b6f1a7c-0000-4000-8000-000000000001");
    assert_eq!(owners[0].controller, Some(true));
    assert_eq!(owners[0].block_owner_deletion, Some(true));
    let object = serde_json::to_value(&nad).expect("serializes");
    assert_eq!(object["apiVersion"], "k8s.cni.cncf.io/v1");
    assert_eq!(object["kind"], "NetworkAttachmentDefinition");
}

#[test]
fn the_network_attachment_crd_fixture_matches_the_type() {
    let fixture: Value =
        serde_yaml_ng::from_str(&fixture("network-attachment-definition-crd.yaml")).expect("YAML");
    let derived = serde_json::to_value(NetworkAttachmentDefinition::crd()).expect("serializes");
    assert_eq!(fixture["metadata"]["name"], derived["metadata"]["name"]);
    for key in ["group", "scope", "names"] {
        assert_eq!(fixture["spec"][key], derived["spec"][key], "spec.{key}");
    }
    assert_eq!(fixture["spec"]["versions"][0]["name"], "v1");
    assert_eq!(
        fixture.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/config/type"),
        Some(&json!("string"))
    );
}

// ---- Against the API server ----

/// `kubectl --kubeconfig K args...`, or `None` when it fails.
fn try_kubectl(config: &Path, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(config)
        .args(args)
        .output()
        .expect("kubectl runs");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Installs our CRDs and Multus' NetworkAttachmentDefinition CRD, once per test process.
///
/// On a fresh server, `install_crds`' readiness probe (a server-side dry run) can meet "resource
/// kind not found" (503) for a while after the CRDs are established, and panics rather than
/// retrying; so it is retried here, and run by one test at a time.
fn install_all_crds(config: &Path) {
    static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*installed {
        install_once(config);
        *installed = true;
    }
}

fn install_once(config: &Path) {
    const ATTEMPTS: u32 = 10;
    for attempt in 1..=ATTEMPTS {
        match std::panic::catch_unwind(|| install_crds(config)) {
            Ok(()) => break,
            Err(panic) if attempt == ATTEMPTS => std::panic::resume_unwind(panic),
            Err(_) => {
                eprintln!("install_crds failed (attempt {attempt} of {ATTEMPTS}); trying again in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let crd = fixture("network-attachment-definition-crd.yaml");
    kubectl(
        config,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &crd,
    );
    kubectl(
        config,
        &[
            "wait",
            "--for",
            "condition=Established",
            "--timeout",
            "60s",
            "crd/network-attachment-definitions.k8s.cni.cncf.io",
        ],
        "",
    );
}

/// Polls `check` every 100 ms until it gives a value, for 30 s at most; fails early when
/// `controller` stopped.
async fn eventually<T>(
    what: &str,
    controller: &mut JoinHandle<Result<(), MultusError>>,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        if controller.is_finished() {
            let result = controller.await;
            panic!("the controller stopped while waiting for {what}: {result:?}");
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 30s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The network attachment `namespace/name` as `kubectl get -o json` prints it, with its
/// configuration parsed, once `accept` takes it.
async fn network_attachment(
    config: &Path,
    controller: &mut JoinHandle<Result<(), MultusError>>,
    namespace: &str,
    name: &str,
    what: &str,
    accept: impl Fn(&Value, &Value) -> bool,
) -> (Value, Value) {
    eventually(what, controller, || {
        let text = try_kubectl(
            config,
            &[
                "get",
                "network-attachment-definitions",
                "-n",
                namespace,
                name,
                "-o",
                "json",
                "--show-managed-fields",
            ],
        )?;
        let object: Value = serde_json::from_str(&text).expect("kubectl prints JSON");
        let cni: Value = serde_json::from_str(
            object["spec"]["config"]
                .as_str()
                .expect("spec.config is a string"),
        )
        .expect("spec.config is JSON");
        accept(&object, &cni).then_some((object, cni))
    })
    .await
}

fn uid(config: &Path, namespace: &str, name: &str) -> String {
    kubectl(
        config,
        &[
            "get",
            "spidermultusconfig",
            "-n",
            namespace,
            name,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        "",
    )
}

/// Asserts the single owner reference of a network attachment is the controller reference to
/// the SpiderMultusConfig `name` with `uid`.
fn assert_owned(object: &Value, name: &str, uid: &str) {
    assert_eq!(
        object["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderMultusConfig",
            "name": name,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]),
        "{object}"
    );
}

fn spawn_controller(client: Client) -> JoinHandle<Result<(), MultusError>> {
    tokio::spawn(run_multus_controller(client, settings()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_multus_config_gets_its_network_attachment_and_keeps_it_in_step() {
    let Some(config) = kubeconfig("the_seed_multus_config_gets_its_network_attachment_and_keeps_it_in_step")
    else {
        return;
    };
    install_all_crds(&config);
    // Leftovers of an earlier run (this server has no garbage collector).
    kubectl(
        &config,
        &[
            "delete",
            "network-attachment-definitions",
            "-n",
            "kube-system",
            "macvlan-conf",
            "--ignore-not-found",
        ],
        "",
    );
    let seed = fixture("macvlan-conf.yaml");
    kubectl(&config, &["apply", "-f", "-"], &seed);
    let owner = uid(&config, "kube-system", "macvlan-conf");

    let mut controller = spawn_controller(client(&config).await);
    let (object, cni) = network_attachment(
        &config,
        &mut controller,
        "kube-system",
        "macvlan-conf",
        "the seed's network attachment",
        |_, _| true,
    )
    .await;
    assert_eq!(cni["name"], "macvlan-conf");
    assert_eq!(cni["plugins"][0]["type"], "macvlan");
    assert_eq!(cni["plugins"][0]["master"], "eth0");
    assert_eq!(cni["plugins"][0]["mode"], "bridge");
    assert_eq!(cni["plugins"][0]["ipam"]["type"], "spiderpool");
    assert_eq!(cni["plugins"][0]["ipam"]["kubeconfig"], KUBECONFIG);
    assert_eq!(
        cni["plugins"][0]["args"]["cni"]["network_namespace"],
        "kube-system"
    );
    assert_eq!(
        cni["plugins"].as_array().map(Vec::len),
        Some(1),
        "no coordinator: {cni}"
    );
    assert_plugin_accepts(&cni);
    assert_owned(&object, "macvlan-conf", &owner);
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|entry| entry["manager"].as_str())
        .collect();
    assert_eq!(managers, ["spiderpool-controller"]);

    // The seed's master changes: the network attachment follows.
    kubectl(&config, &["apply", "-f", "-"], &seed.replace("- eth0", "- eth1"));
    let (object, cni) = network_attachment(
        &config,
        &mut controller,
        "kube-system",
        "macvlan-conf",
        "master eth1",
        |_, cni| cni["plugins"][0]["master"] == "eth1",
    )
    .await;
    assert_owned(&object, "macvlan-conf", &owner);
    assert_plugin_accepts(&cni);

    controller.abort();
    kubectl(
        &config,
        &[
            "delete",
            "spidermultusconfig",
            "-n",
            "kube-system",
            "macvlan-conf",
        ],
        "",
    );
    kubectl(
        &config,
        &[
            "delete",
            "network-attachment-definitions",
            "-n",
            "kube-system",
            "macvlan-conf",
            "--ignore-not-found",
        ],
        "",
    );
}

fn multus_config_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: {name}\n  \
         namespace: {namespace}\nspec:\n{spec}"
    )
}

/// The warning events about the SpiderMultusConfig `name` in `namespace`, as `reason: note`.
async fn warnings(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await.expect("listing events");
    list.items
        .into_iter()
        .filter(|event| {
            event.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("SpiderMultusConfig") && r.name.as_deref() == Some(name)
            }) && event.type_.as_deref() == Some("Warning")
        })
        .map(|event| {
            format!(
                "{}: {}",
                event.reason.unwrap_or_default(),
                event.note.unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_attachments_follow_changes_deletion_and_invalid_specs() {
    let Some(config) = kubeconfig("network_attachments_follow_changes_deletion_and_invalid_specs") else {
        return;
    };
    install_all_crds(&config);
    let namespace = unique("multus-follow");
    let name = "vlan-net";
    kubectl(
        &config,
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"),
    );
    let ipvlan = "  cniType: ipvlan\n  ipvlan:\n    master: [eth0]\n    vlanID: 100\n    ippools:\n      \
                  ipv4: [pool-v4]\n      ipv6: [pool-v6]\n";
    kubectl(
        &config,
        &["apply", "-f", "-"],
        &multus_config_yaml(&namespace, name, ipvlan),
    );
    let owner = uid(&config, &namespace, name);
    let client = client(&config).await;
    let mut controller = spawn_controller(client.clone());

    let (object, cni) = network_attachment(
        &config,
        &mut controller,
        &namespace,
        name,
        "the ipvlan network",
        |_, _| true,
    )
    .await;
    assert_eq!(
        cni,
        json!({
            "cniVersion": "0.3.1",
            "name": name,
            "plugins": [{
                "type": "ipvlan",
                "master": "eth0.100",
                "mode": "l2",
                "args": {"cni": {"network_namespace": namespace}},
                "ipam": {
                    "type": "spiderpool",
                    "kubeconfig": KUBECONFIG,
                    "default_ipv4_ippool": ["pool-v4"],
                    "default_ipv6_ippool": ["pool-v6"],
                },
            }],
        })
    );
    assert_owned(&object, name, &owner);
    assert_eq!(object["metadata"].get("annotations"), None);

    // To SR-IOV: the resource annotation comes, and goes again when it is not SR-IOV any more.
    let sriov = "  cniType: sriov\n  sriov:\n    resourceName: example.com/vf\n    vlanID: 7\n";
    kubectl(
        &config,
        &["apply", "-f", "-"],
        &multus_config_yaml(&namespace, name, sriov),
    );
    let (object, cni) = network_attachment(
        &config,
        &mut controller,
        &namespace,
        name,
        "the sriov network",
        |_, cni| cni["plugins"][0]["type"] == "sriov",
    )
    .await;
    assert_eq!(cni["plugins"][0]["vlan"], 7);
    assert_eq!(
        cni["plugins"][0]["ipam"],
        json!({"type": "spiderpool", "kubeconfig": KUBECONFIG})
    );
    assert_eq!(
        object["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION],
        "example.com/vf"
    );

    let macvlan = "  cniType: macvlan\n  disableIPAM: true\n  macvlan:\n    master: [ens1]\n";
    kubectl(
        &config,
        &["apply", "-f", "-"],
        &multus_config_yaml(&namespace, name, macvlan),
    );
    let (object, cni) = network_attachment(
        &config,
        &mut controller,
        &namespace,
        name,
        "the macvlan network",
        |_, cni| cni["plugins"][0]["type"] == "macvlan",
    )
    .await;
    assert_eq!(cni["plugins"][0].get("ipam"), None, "disableIPAM: {cni}");
    assert_eq!(
        object["metadata"].get("annotations"),
        None,
        "the annotation is gone: {object}"
    );

    // Deleted by hand: it comes back. Edited by hand: the edit is undone.
    kubectl(
        &config,
        &["delete", "network-attachment-definitions", "-n", &namespace, name],
        "",
    );
    network_attachment(
        &config,
        &mut controller,
        &namespace,
        name,
        "the re-created network",
        |_, cni| cni["plugins"][0]["master"] == "ens1",
    )
    .await;
    kubectl(
        &config,
        &[
            "patch",
            "network-attachment-definitions",
            "-n",
            &namespace,
            name,
            "--type",
            "merge",
            "-p",
            r#"{"spec": {"config": "{\"cniVersion\": \"0.3.1\", \"name\": \"edited\", \"type\": \"bridge\"}"}}"#,
        ],
        "",
    );
    network_attachment(
        &config,
        &mut controller,
        &namespace,
        name,
        "the edit undone",
        |_, cni| cni["name"] == name && cni["plugins"][0]["master"] == "ens1",
    )
    .await;

    // Two masters: a warning event names the field and the fix; the network stays as it was.
    let bonded = "  cniType: macvlan\n  macvlan:\n    master: [eth0, eth1]\n";
    kubectl(
        &config,
        &["apply", "-f", "-"],
        &multus_config_yaml(&namespace, name, bonded),
    );
    let mut events = Vec::new();
    for _ in 0..300 {
        events = warnings(&client, &namespace, name).await;
        if events.iter().any(|event| event.starts_with("InvalidSpec: ")) {
            break;
        }
        assert!(!controller.is_finished(), "the controller stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let invalid = events
        .iter()
        .find(|event| event.starts_with("InvalidSpec: "))
        .unwrap_or_else(|| panic!("no InvalidSpec event; warnings: {events:?}"));
    assert!(invalid.contains("spec.macvlan.master"), "{invalid}");
    assert!(invalid.contains("bonding them is not supported"), "{invalid}");
    let (_, cni) = network_attachment(
        &config,
        &mut controller,
        &namespace,
        name,
        "the unchanged network",
        |_, _| true,
    )
    .await;
    assert_eq!(cni["plugins"][0]["master"], "ens1");

    // Fixed: followed again (after the backoff, or at once on the change).
    kubectl(
        &config,
        &["apply", "-f", "-"],
        &multus_config_yaml(&namespace, name, ipvlan),
    );
    network_attachment(
        &config,
        &mut controller,
        &namespace,
        name,
        "the fixed network",
        |_, cni| cni["plugins"][0]["type"] == "ipvlan",
    )
    .await;

    controller.abort();
    kubectl(&config, &["delete", "namespace", &namespace, "--wait=false"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_once_takes_over_a_hand_written_network_and_reports_render_errors() {
    let Some(config) =
        kubeconfig("reconcile_once_takes_over_a_hand_written_network_and_reports_render_errors")
    else {
        return;
    };
    install_all_crds(&config);
    let namespace = unique("multus-once");
    kubectl(
        &config,
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"),
    );
    // A network attachment written by hand before its SpiderMultusConfig exists.
    let hand = format!(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: taken\n  \
         namespace: {namespace}\nspec:\n  config: '{{\"cniVersion\": \"0.3.1\", \"name\": \"taken\", \"type\": \
         \"bridge\"}}'\n"
    );
    kubectl(&config, &["apply", "-f", "-"], &hand);

    let client = client(&config).await;
    let configs: Api<SpiderMultusConfig> = Api::namespaced(client.clone(), &namespace);
    let mut spec = spec("macvlan");
    spec.macvlan = Some(link(&["eth2"], None, pools(&["p4"], &[])));
    let created = configs
        .create(&PostParams::default(), &SpiderMultusConfig::new("taken", spec))
        .await
        .expect("creating the SpiderMultusConfig");
    let stored = reconcile_multus_config(client.clone(), &created, &settings())
        .await
        .expect("reconciles");
    let cni: Value = serde_json::from_str(&stored.spec.config).expect("JSON");
    assert_eq!(cni["plugins"][0]["master"], "eth2");
    assert_eq!(cni["plugins"][0]["ipam"]["default_ipv4_ippool"], json!(["p4"]));
    assert_plugin_accepts(&cni);
    let owners = stored.owner_references();
    assert_eq!(owners.len(), 1);
    assert_eq!(Some(&owners[0].uid), created.metadata.uid.as_ref());

    // As read back with kube-rs.
    let attachments: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &namespace);
    let read = attachments
        .get("taken")
        .await
        .expect("reading the network attachment");
    assert_eq!(read.spec.config, stored.spec.config);

    // A render error is the error, and the network attachment stays.
    let mut broken = created.clone();
    broken.spec.macvlan = None;
    let error = reconcile_multus_config(client.clone(), &broken, &settings())
        .await
        .expect_err("no macvlan");
    assert!(
        matches!(
            error,
            MultusError::Render(RenderError::MissingSection {
                field: "spec.macvlan",
                ..
            })
        ),
        "{error:?}"
    );
    assert_eq!(
        attachments.get("taken").await.expect("still there").spec.config,
        stored.spec.config
    );

    // Objects not read from the API server are refused before any request.
    let fresh = SpiderMultusConfig::new("fresh", created.spec.clone());
    let error = reconcile_multus_config(client.clone(), &fresh, &settings())
        .await
        .expect_err("no namespace");
    assert!(
        matches!(error, MultusError::MissingMetadata("namespace")),
        "{error:?}"
    );

    let names: BTreeSet<String> = attachments
        .list(&ListParams::default())
        .await
        .expect("listing")
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(names, BTreeSet::from(["taken".to_owned()]));
    kubectl(&config, &["delete", "namespace", &namespace, "--wait=false"], "");
}
