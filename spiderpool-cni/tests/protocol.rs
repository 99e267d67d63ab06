//! The CNI protocol of the `spiderpool` binary, spec versions 0.3.0 to 1.1.0, called as a
//! runtime calls it (one process per call): result format per version, error JSON and codes,
//! VERSION, which verbs each version allows, idempotent ADD and DEL, GC, CHECK, multi-interface
//! pods, the seed scenario, a full zone, a pod's new sandbox, and a busy store.

use std::time::Duration;

use serde_json::{Value, json};
use spiderpool_check::kit::documents::pool;
use spiderpool_check::kit::plugin::{
    Allocation, Call, Fixture, IPPOOL, IPPOOLS, NODE_1, NODE_2, ROUTES, SEED_ANNOTATION, VERSIONS, addresses,
};

/// The newest version, which has GC and STATUS.
const LATEST: &str = "1.1.0";

fn allocation(pool: &str, address: &str, container: &str, interface: &str) -> Allocation {
    Allocation {
        pool: pool.into(),
        address: address.into(),
        container: container.into(),
        interface: interface.into(),
        pod: None,
    }
}

/// The configuration with `key` set at the top level (`prevResult`, `cni.dev/...`).
fn with(mut config: Value, key: &str, value: Value) -> Value {
    config[key] = value;
    config
}

#[test]
fn add_result_has_the_format_of_every_spec_version() {
    for version in VERSIONS {
        let fixture = Fixture::seed();
        let config = fixture.seed_config(version, NODE_2);
        let outcome = Call::add("c1", "eth0").config(&config).run();
        let result = outcome.expect_json(&format!("ADD {version}"));
        let mut ip = json!({"address": "10.7.168.60/16", "gateway": "10.7.0.1"});
        if version < "1.0.0" {
            ip["version"] = json!("4");
        }
        assert_eq!(
            result["cniVersion"],
            json!(version),
            "cniVersion echoed:{outcome}"
        );
        assert_eq!(result["ips"], json!([ip]), "ips of {version}:{outcome}");
        assert_eq!(
            result["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.7.0.1"}]),
            "default route via the pool's gateway on the first interface:{outcome}"
        );
        let object = result.as_object().unwrap();
        for key in object.keys() {
            assert!(
                matches!(key.as_str(), "cniVersion" | "ips" | "routes" | "dns"),
                "an IPAM result is abbreviated (no interfaces): unexpected {key:?}:{outcome}"
            );
        }
        let again = Call::add("c1", "eth0").config(&config).run();
        assert_eq!(
            again.expect_json("ADD again"),
            result,
            "ADD twice answers the same:{outcome}{again}"
        );
        assert_eq!(
            fixture.allocations(),
            vec![allocation("test-ippool-7", "10.7.168.60", "c1", "eth0")],
            "ADD twice holds one address ({version})"
        );
    }
}

#[test]
fn errors_are_cni_error_json_in_the_configured_version() {
    for version in VERSIONS {
        let fixture = Fixture::seed();
        let config = fixture.seed_config(version, "node-elsewhere");
        let outcome = Call::add("c1", "eth0").config(&config).run();
        outcome
            .expect_error(100, version, &format!("no pool for the node, {version}"))
            .mentions(&["node-elsewhere", "test-ippool-6", "test-ippool-7"], "code 100");
        assert!(
            outcome.stdout.ends_with('\n') && outcome.stdout.trim().lines().count() == 1,
            "one JSON document on stdout:{outcome}"
        );
    }
}

#[test]
fn every_well_known_error_code_is_used_for_its_cause() {
    let fixture = Fixture::seed();
    let config = fixture.seed_config("1.0.0", NODE_2);

    let mut old = config.clone();
    old["cniVersion"] = json!("0.2.0");
    Call::add("c1", "eth0")
        .config(&old)
        .run()
        .expect_error(1, LATEST, "code 1: unsupported cniVersion")
        .mentions(&["0.2.0", "0.3.0", "1.1.0"], "code 1");

    Call::add("c1", "eth0")
        .without("CNI_CONTAINERID")
        .config(&config)
        .run()
        .expect_error(4, "1.0.0", "code 4: CNI_CONTAINERID missing")
        .mentions(&["CNI_CONTAINERID"], "code 4");
    Call::add("c1", "eth0")
        .without("CNI_NETNS")
        .without("CNI_IFNAME")
        .config(&config)
        .run()
        .expect_error(4, "1.0.0", "code 4: CNI_NETNS and CNI_IFNAME missing")
        .mentions(&["CNI_NETNS", "CNI_IFNAME"], "code 4");
    Call::add("c1", "eth0")
        .env("CNI_COMMAND", "ATTACH")
        .config(&with(config.clone(), "cniVersion", json!(LATEST)))
        .run()
        .expect_error(4, LATEST, "code 4: unknown CNI_COMMAND")
        .mentions(&["CNI_COMMAND", "ATTACH"], "code 4");

    Call::add("c1", "eth0")
        .stdin("{\"cniVersion\": \"1.0.0\", \"name\": ")
        .run()
        .expect_error(6, LATEST, "code 6: truncated JSON")
        .mentions(&["not valid JSON"], "code 6");

    let mut no_ipam = config.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    Call::add("c1", "eth0")
        .config(&no_ipam)
        .run()
        .expect_error(7, "1.0.0", "code 7: no ipam section")
        .mentions(&["ipam"], "code 7");

    assert_eq!(fixture.allocations(), vec![], "no error allocated anything");
}

#[test]
fn version_answers_with_the_requested_version_and_every_supported_one() {
    for version in VERSIONS {
        let outcome = Call::new("VERSION")
            .stdin(format!("{{\"cniVersion\":\"{version}\"}}"))
            .run();
        assert_eq!(
            outcome.expect_json("VERSION"),
            json!({"cniVersion": version, "supportedVersions": VERSIONS}),
            "VERSION {version}:{outcome}"
        );
    }
    // libcni sends dummy values; a runtime may send nothing at all on stdin.
    for stdin in ["", "{}", "{\"cniVersion\":\"9.9.9\"}"] {
        let outcome = Call::new("VERSION")
            .env("CNI_NETNS", "dummy")
            .env("CNI_IFNAME", "dummy")
            .env("CNI_PATH", "dummy")
            .stdin(stdin)
            .run();
        let answer = outcome.expect_json("VERSION");
        assert_eq!(answer["supportedVersions"], json!(VERSIONS), "{outcome}");
        assert_eq!(answer["cniVersion"], json!(LATEST), "a usable version:{outcome}");
    }
}

#[test]
fn check_needs_0_4_0_and_gc_and_status_need_1_1_0() {
    for version in VERSIONS {
        let fixture = Fixture::seed();
        let config = fixture.seed_config(version, NODE_2);
        let result = Call::add("c1", "eth0").config(&config).run().expect_json("ADD");
        let check = Call::check("c1", "eth0")
            .config(&with(config.clone(), "prevResult", result))
            .run();
        if version < "0.4.0" {
            check
                .expect_error(1, version, &format!("CHECK at {version}"))
                .mentions(&["CHECK", "0.4.0"], "CHECK before 0.4.0");
        } else {
            check.expect_silent(&format!("CHECK at {version}"));
        }
        for verb in ["GC", "STATUS"] {
            let outcome = Call::runtime_wide(verb).config(&config).run();
            if version < "1.1.0" {
                outcome
                    .expect_error(1, version, &format!("{verb} at {version}"))
                    .mentions(&[verb, "1.1.0"], "GC/STATUS before 1.1.0");
            } else {
                outcome.expect_silent(&format!("{verb} at {version}"));
            }
        }
        let expected = if version < "1.1.0" {
            vec![allocation("test-ippool-7", "10.7.168.60", "c1", "eth0")]
        } else {
            vec![] // GC without cni.dev/valid-attachments: nothing is valid
        };
        assert_eq!(fixture.allocations(), expected, "after GC at {version}");
    }
}

#[test]
fn del_twice_and_del_of_unknown_attachments_succeed() {
    let fixture = Fixture::seed();
    let config = fixture.seed_config("1.0.0", NODE_2);
    Call::del("never-added", "eth0")
        .config(&config)
        .run()
        .expect_silent("DEL before any state exists");
    let result = Call::add("c1", "eth0").config(&config).run().expect_json("ADD");
    Call::add("c2", "eth0")
        .config(&config)
        .run()
        .expect_json("ADD c2");
    Call::del("c9", "eth0")
        .config(&config)
        .run()
        .expect_silent("DEL of an unknown container");
    Call::del("c1", "eth7")
        .config(&config)
        .run()
        .expect_silent("DEL of an unknown interface of a known container");
    assert_eq!(fixture.allocations().len(), 2, "unknown DELs free nothing");
    let with_prev = with(config.clone(), "prevResult", result);
    Call::del("c1", "eth0")
        .config(&with_prev)
        .run()
        .expect_silent("DEL");
    Call::del("c1", "eth0")
        .config(&with_prev)
        .run()
        .expect_silent("DEL again");
    Call::del("c1", "eth0")
        .without("CNI_NETNS")
        .config(&config)
        .run()
        .expect_silent("DEL a third time, without netns or prevResult");
    assert_eq!(
        fixture.allocations(),
        vec![allocation("test-ippool-7", "10.7.168.61", "c2", "eth0")]
    );
}

#[test]
fn gc_frees_exactly_the_attachments_not_listed() {
    let fixture = Fixture::seed();
    let config = fixture.seed_config(LATEST, NODE_2);
    for (container, ifname) in [("c1", "eth0"), ("c2", "eth0"), ("c3", "eth0"), ("c4", "eth0")] {
        Call::add(container, ifname)
            .config(&config)
            .run()
            .expect_json("ADD");
    }
    let valid = json!([
        {"containerID": "c1", "ifname": "eth0"},
        {"containerID": "c3", "ifname": "eth0"},
        {"containerID": "c4", "ifname": "net1"},
        {"containerID": "gone", "ifname": "eth0"},
    ]);
    let gc = with(config.clone(), "cni.dev/valid-attachments", valid.clone());
    let gc = with(gc, "cni.dev/attachments", valid);
    Call::runtime_wide("GC").config(&gc).run().expect_silent("GC");
    assert_eq!(
        fixture.allocations(),
        vec![
            allocation("test-ippool-7", "10.7.168.60", "c1", "eth0"),
            allocation("test-ippool-7", "10.7.168.62", "c3", "eth0"),
        ],
        "c2/eth0 is not listed, and c4 is listed only with another interface"
    );
    Call::runtime_wide("GC")
        .config(&gc)
        .run()
        .expect_silent("GC again");
    assert_eq!(fixture.allocations().len(), 2, "GC again frees nothing more");
    let nothing = with(config, "cni.dev/valid-attachments", json!([]));
    Call::runtime_wide("GC")
        .config(&nothing)
        .run()
        .expect_silent("GC with an empty list");
    assert_eq!(fixture.allocations(), vec![], "an empty list frees everything");
}

#[test]
fn check_fails_with_101_when_the_stored_allocation_differs() {
    for version in ["0.4.0", "1.0.0", LATEST] {
        let fixture = Fixture::seed();
        let config = fixture.seed_config(version, NODE_2);
        let result = Call::add("c1", "eth0").config(&config).run().expect_json("ADD");
        Call::check("c1", "eth0")
            .config(&with(config.clone(), "prevResult", result.clone()))
            .run()
            .expect_silent("CHECK of the ADD result");

        let mut other = result.clone();
        other["ips"][0]["address"] = json!("10.7.168.69/16");
        Call::check("c1", "eth0")
            .config(&with(config.clone(), "prevResult", other))
            .run()
            .expect_error(101, version, "CHECK with another address")
            .mentions(&["10.7.168.60", "10.7.168.69", "eth0", "c1"], "CHECK mismatch");

        Call::check("c2", "eth0")
            .config(&with(config.clone(), "prevResult", result.clone()))
            .run()
            .expect_error(101, version, "CHECK of a container that holds nothing")
            .mentions(&["c2", "10.7.168.60"], "CHECK of nothing");

        Call::del("c1", "eth0").config(&config).run().expect_silent("DEL");
        Call::check("c1", "eth0")
            .config(&with(config.clone(), "prevResult", result))
            .run()
            .expect_error(101, version, "CHECK after DEL")
            .mentions(&["10.7.168.60"], "CHECK after DEL");
    }
}

#[test]
fn ippools_annotation_allocates_every_interface_at_once_and_del_of_the_first_releases_all() {
    let fixture = Fixture::seed();
    let annotation = r#"[{"interface": "eth0", "ipv4": ["test-ippool-7"]},
                         {"interface": "net1", "ipv4": ["test-ippool-7"], "cleangateway": true}]"#;
    let config = fixture.config(
        "1.0.0",
        NODE_2,
        &[(IPPOOLS, annotation), (IPPOOL, SEED_ANNOTATION)],
    );
    let eth0 = Call::add("c1", "eth0")
        .config(&config)
        .run()
        .expect_json("ADD eth0");
    assert_eq!(addresses(&eth0), ["10.7.168.60/16"]);
    assert_eq!(
        eth0["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.7.0.1"}]),
        "the first interface carries the default route"
    );
    assert_eq!(
        fixture.allocations(),
        vec![
            allocation("test-ippool-7", "10.7.168.60", "c1", "eth0"),
            allocation("test-ippool-7", "10.7.168.61", "c1", "net1"),
        ],
        "the first ADD allocates every interface of the annotation"
    );
    let net1 = Call::add("c1", "net1")
        .config(&config)
        .run()
        .expect_json("ADD net1");
    assert_eq!(
        addresses(&net1),
        ["10.7.168.61/16"],
        "the later ADD returns what was stored"
    );
    assert_eq!(
        net1["routes"],
        json!([]),
        "cleangateway: no default route on net1"
    );
    assert_eq!(fixture.allocations().len(), 2, "the later ADD allocates nothing");

    Call::del("c1", "eth0")
        .config(&config)
        .run()
        .expect_silent("DEL eth0");
    assert_eq!(
        fixture.allocations(),
        vec![],
        "DEL of the first interface releases them all"
    );
    Call::del("c1", "net1")
        .config(&config)
        .run()
        .expect_silent("DEL net1 afterwards");
}

#[test]
fn ippools_annotation_is_all_or_nothing() {
    let fixture = Fixture::seed();
    // net1 may only use the other zone's pool: no pool serves it on this node.
    let annotation = r#"[{"interface": "eth0", "ipv4": ["test-ippool-7"]},
                         {"interface": "net1", "ipv4": ["test-ippool-6"]}]"#;
    let config = fixture.config("1.0.0", NODE_2, &[(IPPOOLS, annotation)]);
    Call::add("c1", "eth0")
        .config(&config)
        .run()
        .expect_error(100, "1.0.0", "ADD with an interface no pool can serve")
        .mentions(&["net1", "test-ippool-6", NODE_2], "the failing interface");
    assert_eq!(fixture.allocations(), vec![], "eth0 did not keep an address");
}

#[test]
fn a_pods_routes_annotation_adds_its_routes_and_a_next_hop_off_the_subnet_is_refused() {
    let fixture = Fixture::seed();
    let routes = r#"[{"interface": "eth0", "dst": "172.16.0.0/12", "gw": "10.7.0.254"},
                     {"interface": "net1", "dst": "192.168.0.0/16", "gw": "10.9.0.1"}]"#;
    let config = fixture.config("1.0.0", NODE_2, &[(IPPOOL, SEED_ANNOTATION), (ROUTES, routes)]);
    let result = Call::add("c1", "eth0")
        .config(&config)
        .run()
        .expect_json("ADD with a routes annotation");
    assert_eq!(
        result["routes"],
        json!([{"dst": "172.16.0.0/12", "gw": "10.7.0.254"}, {"dst": "0.0.0.0/0", "gw": "10.7.0.1"}]),
        "eth0's route (net1's is net1's call's), then the pool's default route"
    );

    let off_link = r#"[{"interface": "eth0", "dst": "172.16.0.0/12", "gw": "10.6.0.1"}]"#;
    let config = fixture.config("1.0.0", NODE_2, &[(IPPOOL, SEED_ANNOTATION), (ROUTES, off_link)]);
    Call::add("c2", "eth0")
        .config(&config)
        .run()
        .expect_error(7, "1.0.0", "ADD with a next hop in the other zone")
        .mentions(
            &["ipam.spidernet.io/routes", "gw 10.6.0.1", "10.7.0.0/16"],
            "the annotation, the next hop and the interface's subnet",
        );
    assert_eq!(fixture.allocations().len(), 1, "the refused ADD kept no address");
}

#[test]
fn seed_scenario_gives_each_node_an_address_of_its_zone() {
    let fixture = Fixture::seed();
    let node1 = Call::add("container-node1", "eth0")
        .pod("default", "test-app-j9ftl", "uid-j9ftl")
        .config(&fixture.seed_config("1.0.0", NODE_1))
        .run()
        .expect_json("ADD on controller-node-1");
    let node2 = Call::add("container-node2", "eth0")
        .pod("default", "test-app-nkq5h", "uid-nkq5h")
        .config(&fixture.seed_config("1.0.0", NODE_2))
        .run()
        .expect_json("ADD on worker-node-1");
    assert_eq!(
        node1,
        json!({"cniVersion": "1.0.0", "dns": {},
               "ips": [{"address": "10.6.168.60/16", "gateway": "10.6.0.1"}],
               "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]})
    );
    assert_eq!(
        node2,
        json!({"cniVersion": "1.0.0", "dns": {},
               "ips": [{"address": "10.7.168.60/16", "gateway": "10.7.0.1"}],
               "routes": [{"dst": "0.0.0.0/0", "gw": "10.7.0.1"}]})
    );
    let rows = fixture.cli(&["ippool", "list", "-o", "json"]);
    let summary: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            json!([
                row["name"],
                row["version"],
                row["subnet"],
                row["allocatedIpCount"],
                row["totalIpCount"],
                row["default"],
                row["disable"]
            ])
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            json!(["test-ippool-6", "4", "10.6.0.0/16", 1, "10", false, false]),
            json!(["test-ippool-7", "4", "10.7.0.0/16", 1, "10", false, false]),
        ],
        "the seed's kubectl get spiderippool table"
    );
    let pods: Vec<Option<String>> = fixture.allocations().into_iter().map(|a| a.pod).collect();
    assert_eq!(
        pods,
        [
            Some("default/test-app-j9ftl".to_owned()),
            Some("default/test-app-nkq5h".to_owned())
        ]
    );
}

#[test]
fn a_full_zone_fails_with_code_100_listing_every_candidate_and_changes_nothing() {
    let fixture = Fixture::seed();
    let config = fixture.seed_config("1.0.0", NODE_2);
    for n in 0..10 {
        Call::add(&format!("c{n}"), "eth0")
            .config(&config)
            .run()
            .expect_json("filling test-ippool-7");
    }
    let before = fixture.snapshot();
    Call::add("c10", "eth0")
        .config(&config)
        .run()
        .expect_error(100, "1.0.0", "ADD into a full zone")
        .mentions(
            &[
                "test-ippool-6",
                "node worker-node-1 is not in nodeName [controller-node-1]",
                "test-ippool-7",
                "full: 10 of 10",
                "c10",
                NODE_2,
            ],
            "both candidates and their reasons",
        );
    assert_eq!(fixture.snapshot(), before, "a refused ADD writes nothing");
    assert_eq!(fixture.allocations().len(), 10);
    // The other zone is not full.
    let other = Call::add("c10", "eth0")
        .config(&fixture.seed_config("1.0.0", NODE_1))
        .run()
        .expect_json("ADD on the other node");
    assert_eq!(addresses(&other), ["10.6.168.60/16"]);
}

#[test]
fn a_new_sandbox_of_the_same_pod_gets_the_same_address_and_the_old_late_del_frees_nothing() {
    let fixture = Fixture::seed();
    let config = fixture.seed_config("1.0.0", NODE_2);
    let old = Call::add("sandbox-old", "eth0")
        .pod("default", "web-0", "uid-web-0")
        .config(&config)
        .run()
        .expect_json("ADD of the first sandbox");
    let new = Call::add("sandbox-new", "eth0")
        .pod("default", "web-0", "uid-web-0")
        .config(&config)
        .run()
        .expect_json("ADD of the new sandbox");
    assert_eq!(addresses(&new), addresses(&old), "the pod keeps its address");
    let held = |container: &str| Allocation {
        pool: "test-ippool-7".into(),
        address: "10.7.168.60".into(),
        container: container.into(),
        interface: "eth0".into(),
        pod: Some("default/web-0".into()),
    };
    assert_eq!(
        fixture.allocations(),
        vec![held("sandbox-new")],
        "one address, now the new sandbox's"
    );
    Call::del("sandbox-old", "eth0")
        .pod("default", "web-0", "uid-web-0")
        .config(&config)
        .run()
        .expect_silent("late DEL of the old sandbox");
    assert_eq!(
        fixture.allocations(),
        vec![held("sandbox-new")],
        "the old sandbox's late DEL frees nothing"
    );
    Call::del("sandbox-new", "eth0")
        .pod("default", "web-0", "uid-web-0")
        .config(&config)
        .run()
        .expect_silent("DEL of the new sandbox");
    assert_eq!(fixture.allocations(), vec![]);
}

#[test]
fn status_reports_50_when_every_pool_is_full_or_none_is_readable() {
    let fixture = Fixture::with_pools(&pool(
        "tiny",
        "{subnet: 10.9.0.0/24, ips: [10.9.0.10], gateway: 10.9.0.1}",
    ));
    let config = fixture.config(LATEST, NODE_2, &[(IPPOOL, r#"{"ipv4": ["tiny"]}"#)]);
    Call::runtime_wide("STATUS")
        .config(&config)
        .run()
        .expect_silent("STATUS with a free address");
    Call::add("c1", "eth0").config(&config).run().expect_json("ADD");
    Call::runtime_wide("STATUS")
        .config(&config)
        .run()
        .expect_error(50, LATEST, "STATUS with every pool full")
        .mentions(&["full"], "STATUS full");
    let mut missing = config.clone();
    missing["ipam"]["ippools_path"] = json!(fixture.dir.join("no-such-file.yaml"));
    Call::runtime_wide("STATUS")
        .config(&missing)
        .run()
        .expect_error(50, LATEST, "STATUS without pool definitions")
        .mentions(&["no-such-file.yaml"], "STATUS unreadable");
}

#[test]
fn a_call_that_cannot_get_the_write_lock_answers_11_and_changes_nothing() {
    let fixture = Fixture::seed();
    let mut config = fixture.seed_config("1.0.0", NODE_2);
    config["ipam"]["busy_wait_ms"] = json!(200);
    Call::add("c1", "eth0").config(&config).run().expect_json("ADD");
    // Another writer of the same database holds the write lock, as a plugin process in the
    // middle of its transaction does.
    let holder = rusqlite::Connection::open(fixture.state_file()).expect("open the state as another writer");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let busy = Call::add("c2", "eth0").config(&config).run();
    busy.expect_error(11, "1.0.0", "ADD while the state is locked")
        .mentions(&["locked", "try again"], "code 11");
    assert!(
        busy.elapsed >= Duration::from_millis(200) && busy.elapsed < Duration::from_secs(5),
        "the call waited about busy_wait_ms (200 ms), not {:?}:{busy}",
        busy.elapsed
    );
    Call::del("c1", "eth0")
        .config(&config)
        .run()
        .expect_error(11, "1.0.0", "DEL while the state is locked");
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(
        fixture.allocations(),
        vec![allocation("test-ippool-7", "10.7.168.60", "c1", "eth0")],
        "the busy calls changed nothing"
    );
    let retry = Call::add("c2", "eth0")
        .config(&config)
        .run()
        .expect_json("ADD retried");
    assert_eq!(addresses(&retry), ["10.7.168.61/16"]);
}

#[test]
fn dual_stack_results_carry_both_families_pool_routes_and_both_default_routes() {
    let yaml = "apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: v4
spec:
  subnet: 10.8.0.0/24
  ips:
    - 10.8.0.10-10.8.0.20
  gateway: 10.8.0.1
  routes:
    - dst: 192.168.0.0/16
      gw: 10.8.0.254
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: v6
spec:
  subnet: fd00:8::/64
  ips:
    - fd00:8::10-fd00:8::20
  gateway: fd00:8::1
";
    for version in VERSIONS {
        let fixture = Fixture::with_pools(yaml);
        let config = fixture.config(
            version,
            NODE_2,
            &[(IPPOOL, r#"{"ipv4": ["v4"], "ipv6": ["v6"]}"#)],
        );
        let outcome = Call::add("c1", "eth0").config(&config).run();
        let result = outcome.expect_json(&format!("dual-stack ADD at {version}"));
        let mut v4 = json!({"address": "10.8.0.10/24", "gateway": "10.8.0.1"});
        let mut v6 = json!({"address": "fd00:8::10/64", "gateway": "fd00:8::1"});
        if version < "1.0.0" {
            v4["version"] = json!("4");
            v6["version"] = json!("6");
        }
        assert_eq!(result["ips"], json!([v4, v6]), "{outcome}");
        assert_eq!(
            result["routes"],
            json!([
                {"dst": "192.168.0.0/16", "gw": "10.8.0.254"},
                {"dst": "0.0.0.0/0", "gw": "10.8.0.1"},
                {"dst": "::/0", "gw": "fd00:8::1"},
            ]),
            "{outcome}"
        );
        assert_eq!(fixture.allocations().len(), 2);
    }
}

#[test]
fn a_new_sandbox_of_a_multi_interface_pod_keeps_every_address() {
    let fixture = Fixture::seed();
    let annotation = r#"[{"interface": "eth0", "ipv4": ["test-ippool-7"]},
                         {"interface": "net1", "ipv4": ["test-ippool-7"]}]"#;
    let config = fixture.config("1.0.0", NODE_2, &[(IPPOOLS, annotation)]);
    let add = |container: &str, ifname: &str| {
        Call::add(container, ifname)
            .pod("default", "web-0", "uid-web-0")
            .config(&config)
            .run()
            .expect_json("ADD")
    };
    let old_eth0 = add("sandbox-old", "eth0");
    let old_net1 = add("sandbox-old", "net1");
    let new_eth0 = add("sandbox-new", "eth0");
    let new_net1 = add("sandbox-new", "net1");
    assert_eq!(addresses(&new_eth0), addresses(&old_eth0));
    assert_eq!(addresses(&new_net1), addresses(&old_net1));
    let held: Vec<(String, String, String)> = fixture
        .allocations()
        .into_iter()
        .map(|a| (a.address, a.container, a.interface))
        .collect();
    let expected = |container: &str| {
        vec![
            ("10.7.168.60".to_owned(), container.to_owned(), "eth0".to_owned()),
            ("10.7.168.61".to_owned(), container.to_owned(), "net1".to_owned()),
        ]
    };
    assert_eq!(
        held,
        expected("sandbox-new"),
        "both addresses moved to the new sandbox"
    );
    Call::del("sandbox-old", "eth0")
        .pod("default", "web-0", "uid-web-0")
        .config(&config)
        .run()
        .expect_silent("late DEL of the old sandbox");
    assert_eq!(
        fixture.allocations().len(),
        2,
        "the old sandbox's late DEL frees nothing"
    );
    Call::del("sandbox-new", "eth0")
        .pod("default", "web-0", "uid-web-0")
        .config(&config)
        .run()
        .expect_silent("DEL of the new sandbox's first interface");
    assert_eq!(
        fixture.allocations(),
        vec![],
        "DEL of the first interface releases both"
    );
}

#[test]
fn gc_of_one_network_keeps_the_allocations_of_other_networks() {
    let fixture = Fixture::seed();
    let network = |name: &str| {
        let mut config = fixture.seed_config(LATEST, NODE_2);
        config["name"] = json!(name);
        config
    };
    Call::add("c1", "eth0")
        .config(&network("macvlan-a"))
        .run()
        .expect_json("ADD on network a");
    Call::add("c1", "net1")
        .config(&network("macvlan-b"))
        .run()
        .expect_json("ADD on network b");
    // The runtime's GC of network a: only a's attachments are listed, as libcni does per network.
    let gc = with(
        network("macvlan-a"),
        "cni.dev/valid-attachments",
        json!([{"containerID": "c1", "ifname": "eth0"}]),
    );
    Call::runtime_wide("GC")
        .config(&gc)
        .run()
        .expect_silent("GC of network a");
    assert_eq!(
        fixture.allocations(),
        vec![
            allocation("test-ippool-7", "10.7.168.60", "c1", "eth0"),
            allocation("test-ippool-7", "10.7.168.61", "c1", "net1"),
        ],
        "GC of network a must not free network b's attachment c1/net1"
    );
}

#[test]
fn del_without_cni_args_releases_the_attachment_added_with_a_pod_uid() {
    let fixture = Fixture::seed();
    let config = fixture.seed_config("1.0.0", NODE_2);
    Call::add("c1", "eth0")
        .pod("default", "web-0", "uid-web-0")
        .config(&config)
        .run()
        .expect_json("ADD with the pod's CNI_ARGS");
    // CNI_ARGS is optional on DEL; the attachment is (CNI_CONTAINERID, CNI_IFNAME).
    Call::del("c1", "eth0")
        .without("CNI_ARGS")
        .config(&config)
        .run()
        .expect_silent("DEL without CNI_ARGS");
    assert_eq!(
        fixture.allocations(),
        vec![],
        "DEL of c1/eth0 released its address"
    );
}

#[test]
fn check_without_cni_args_finds_the_attachment_added_with_a_pod_uid() {
    let fixture = Fixture::seed();
    let config = fixture.seed_config("1.0.0", NODE_2);
    let result = Call::add("c1", "eth0")
        .pod("default", "web-0", "uid-web-0")
        .config(&config)
        .run()
        .expect_json("ADD with the pod's CNI_ARGS");
    Call::check("c1", "eth0")
        .without("CNI_ARGS")
        .config(&with(config, "prevResult", result))
        .run()
        .expect_silent("CHECK without CNI_ARGS");
}
