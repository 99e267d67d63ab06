//! Bad input to the `spiderpool` plugin: malformed JSON, missing, unknown and mistyped fields,
//! wrong CNI versions, bad environment variables, bad annotations, bad pool files, invalid
//! candidate pools, and state files that are empty, corrupt, of another application or of a
//! newer schema. Each case asserts the CNI error code, a message naming the cause, and that
//! the state was left byte for byte as it was, with nothing allocated.

use serde_json::{Value, json};
use spiderpool_check::kit::plugin::{
    Call, Fixture, IPPOOL, IPPOOLS, NODE_1, NODE_2, SEED_YAML, Snapshot, addresses,
};

/// A seed fixture whose store already holds one allocation (c0 on worker-node-1), so that
/// "unchanged" covers a real database, not a missing one.
fn populated() -> Fixture {
    let fixture = Fixture::seed();
    let result = Call::add("c0", "eth0")
        .config(&fixture.seed_config("1.0.0", NODE_2))
        .run()
        .expect_json("ADD of the existing allocation");
    assert_eq!(addresses(&result), ["10.7.168.60/16"]);
    fixture
}

/// Asserts that the data directory is byte for byte `before` (same files, same bytes).
#[track_caller]
fn assert_unchanged(fixture: &Fixture, before: &Snapshot, what: &str) {
    assert_eq!(&fixture.snapshot(), before, "{what}: the state changed");
}

/// Asserts that the store holds exactly the allocation of [`populated`].
#[track_caller]
fn assert_only_c0(fixture: &Fixture, what: &str) {
    let held: Vec<(String, String)> = fixture
        .allocations()
        .into_iter()
        .map(|a| (a.container, a.address))
        .collect();
    assert_eq!(
        held,
        [("c0".to_owned(), "10.7.168.60".to_owned())],
        "{what}: something was allocated"
    );
}

/// Runs ADD of c1 with `stdin`, expecting `code`, a message mentioning `needles`, and no
/// change to the state.
#[track_caller]
fn refused(fixture: &Fixture, stdin: Vec<u8>, code: u64, version: &str, needles: &[&str], what: &str) {
    let before = fixture.snapshot();
    let outcome = Call::add("c1", "eth0").stdin(stdin).run();
    outcome.expect_error(code, version, what).mentions(needles, what);
    assert_unchanged(fixture, &before, what);
}

fn bytes(config: &Value) -> Vec<u8> {
    serde_json::to_vec(config).unwrap()
}

/// `config` with the JSON pointer `pointer` removed.
fn without(mut config: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    config
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(key);
    config
}

/// `config` with the JSON pointer `pointer` set to `value`.
fn set(mut config: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    config
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .insert(key.to_owned(), value);
    config
}

#[test]
fn malformed_json_is_code_6_and_changes_nothing() {
    let fixture = populated();
    let cases: [(&str, &[u8]); 5] = [
        ("empty stdin", b""),
        ("truncated object", b"{\"cniVersion\": \"1.0.0\", \"name\": \"n\""),
        ("trailing comma", b"{\"cniVersion\": \"1.0.0\",}"),
        ("not JSON at all", b"cniVersion=1.0.0"),
        ("invalid UTF-8", b"{\"cniVersion\": \"\xff\xfe\"}"),
    ];
    for (what, stdin) in cases {
        refused(&fixture, stdin.to_vec(), 6, "1.1.0", &["not valid JSON"], what);
    }
    for stdin in ["[]", "\"1.0.0\"", "42", "null"] {
        refused(
            &fixture,
            stdin.into(),
            7,
            "1.1.0",
            &["not a JSON object"],
            &format!("JSON {stdin}"),
        );
    }
    assert_only_c0(&fixture, "malformed JSON");
}

#[test]
fn missing_fields_are_code_7_naming_the_field() {
    let fixture = populated();
    let config = fixture.seed_config("1.0.0", NODE_2);
    refused(
        &fixture,
        bytes(&without(config.clone(), "/cniVersion")),
        7,
        "1.1.0",
        &["cniVersion"],
        "no cniVersion",
    );
    refused(
        &fixture,
        bytes(&without(config.clone(), "/name")),
        7,
        "1.0.0",
        &["name"],
        "no network name",
    );
    refused(
        &fixture,
        bytes(&without(config.clone(), "/ipam")),
        7,
        "1.0.0",
        &["ipam", "spiderpool"],
        "no ipam section",
    );
    refused(
        &fixture,
        bytes(&without(config.clone(), "/ipam/type")),
        7,
        "1.0.0",
        &["ipam", "type"],
        "no ipam.type",
    );
    refused(
        &fixture,
        bytes(&set(config.clone(), "/ipam/type", json!("host-local"))),
        7,
        "1.0.0",
        &["ipam.type", "host-local", "spiderpool"],
        "ipam.type of another plugin",
    );
    // No ippools_path and no inline pools: the setting is named.
    refused(
        &fixture,
        bytes(&without(config, "/ipam/ippools_path")),
        7,
        "1.0.0",
        &["ipam.ippools_path: missing", "ipam.ippools"],
        "no ippools_path",
    );
    assert_only_c0(&fixture, "missing fields");
}

#[test]
fn unknown_keys_in_ipam_are_refused_naming_them_but_unknown_top_level_keys_are_allowed() {
    let fixture = populated();
    let config = fixture.seed_config("1.0.0", NODE_2);
    for key in ["ippools_pth", "dataDir", "nodeName"] {
        refused(
            &fixture,
            bytes(&set(config.clone(), &format!("/ipam/{key}"), json!("x"))),
            7,
            "1.0.0",
            &[&format!("ipam.{key}"), "unknown field"],
            &format!("unknown ipam key {key}"),
        );
    }
    assert_only_c0(&fixture, "unknown ipam keys");
    // The main plugin's keys, and those runtimes insert, come along with the IPAM's.
    let mut main_plugin = config;
    for (key, value) in [
        ("mtu", json!(1500)),
        ("linkInContainer", json!(false)),
        ("capabilities", json!({"ips": true})),
        ("runtimeConfig", json!({"ips": []})),
        ("dns", json!({"nameservers": ["10.0.0.10"]})),
        ("cni.dev/future", json!({"x": 1})),
        ("vendor-extension", json!([1, 2, 3])),
    ] {
        main_plugin[key] = value;
    }
    let outcome = Call::add("c1", "eth0").config(&main_plugin).run();
    assert_eq!(
        addresses(&outcome.expect_json("ADD with the main plugin's keys")),
        ["10.7.168.61/16"]
    );
}

#[test]
fn fields_of_the_wrong_type_are_code_7_naming_the_field() {
    let fixture = populated();
    let config = fixture.seed_config("1.0.0", NODE_2);
    let cases = [
        ("/ipam/node_name", json!(5), "ipam.node_name"),
        ("/ipam/ippools_path", json!(["a.yaml"]), "ipam.ippools_path"),
        ("/ipam/busy_wait_ms", json!("soon"), "ipam.busy_wait_ms"),
        (
            "/ipam/default_ipv4_ippool",
            json!("test-ippool-7"),
            "ipam.default_ipv4_ippool",
        ),
        ("/ipam/node_labels", json!(["zone=a"]), "ipam.node_labels"),
        ("/args/cni/annotations", json!(["a"]), "args.cni.annotations"),
        ("/name", json!(7), "name"),
    ];
    for (pointer, value, field) in cases {
        refused(
            &fixture,
            bytes(&set(config.clone(), pointer, value)),
            7,
            "1.0.0",
            &[field, "invalid type"],
            &format!("{pointer} of the wrong type"),
        );
    }
    assert_only_c0(&fixture, "wrong types");
}

#[test]
fn unsupported_cni_versions_are_code_1_listing_the_supported_ones() {
    let fixture = populated();
    let config = fixture.seed_config("1.0.0", NODE_2);
    for version in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "", "v1.0.0", "1.0"] {
        refused(
            &fixture,
            bytes(&set(config.clone(), "/cniVersion", json!(version))),
            1,
            "1.1.0",
            &[
                &format!("{version:?}"),
                "0.3.0",
                "0.3.1",
                "0.4.0",
                "1.0.0",
                "1.1.0",
            ],
            &format!("cniVersion {version:?}"),
        );
    }
    refused(
        &fixture,
        bytes(&set(config, "/cniVersion", json!(1.0))),
        7,
        "1.1.0",
        &["cniVersion", "invalid type"],
        "a numeric cniVersion",
    );
    assert_only_c0(&fixture, "wrong versions");
}

#[test]
fn bad_environment_variables_are_code_4_naming_them() {
    let fixture = populated();
    let config = fixture.seed_config("1.0.0", NODE_2);
    let cases = [
        ("CNI_CONTAINERID", "-starts-with-dash", "CNI_CONTAINERID"),
        ("CNI_CONTAINERID", "has/slash", "CNI_CONTAINERID"),
        ("CNI_IFNAME", "sixteen-chars-xx", "CNI_IFNAME"),
        ("CNI_IFNAME", "eth 0", "CNI_IFNAME"),
        ("CNI_IFNAME", "..", "CNI_IFNAME"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME", "CNI_ARGS"),
        ("CNI_ARGS", "=value", "CNI_ARGS"),
    ];
    for (name, value, needle) in cases {
        let before = fixture.snapshot();
        let what = format!("{name}={value:?}");
        Call::add("c1", "eth0")
            .env(name, value)
            .config(&config)
            .run()
            .expect_error(4, "1.0.0", &what)
            .mentions(&[needle], &what);
        assert_unchanged(&fixture, &before, &what);
    }
    for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let before = fixture.snapshot();
        Call::add("c1", "eth0")
            .without(missing)
            .config(&config)
            .run()
            .expect_error(4, "1.0.0", missing)
            .mentions(&[missing, "missing"], missing);
        assert_unchanged(&fixture, &before, missing);
    }
    assert_only_c0(&fixture, "bad environment");
}

#[test]
fn bad_annotations_are_code_7_naming_the_annotation() {
    let fixture = populated();
    let cases = [
        (IPPOOL, "{not json"),
        (IPPOOL, r#"{"ipv4": "test-ippool-7"}"#),
        (IPPOOL, r#"{"ipv4": ["test-ippool-7"], "ipv5": []}"#),
        (IPPOOL, r#"["test-ippool-7"]"#),
        (IPPOOLS, r#"{"interface": "eth0", "ipv4": ["test-ippool-7"]}"#),
        (
            IPPOOLS,
            r#"[{"interface": "eth0", "ipv4": ["test-ippool-7"], "bogus": 1}]"#,
        ),
        (
            IPPOOLS,
            r#"[{"interface": "eth0", "ipv4": ["test-ippool-7"], "cleangateway": "yes"}]"#,
        ),
    ];
    for (key, value) in cases {
        let config = fixture.config("1.0.0", NODE_2, &[(key, value)]);
        let what = format!("{key}: {value}");
        refused(&fixture, bytes(&config), 7, "1.0.0", &[key], &what);
    }
    let namespace_default = fixture.config("1.0.0", NODE_2, &[]);
    let namespace_default = set(
        namespace_default,
        "/args/cni/namespace_annotations",
        json!({"ipam.spidernet.io/default-ipv4-ippool": "test-ippool-7"}),
    );
    refused(
        &fixture,
        bytes(&namespace_default),
        7,
        "1.0.0",
        &["ipam.spidernet.io/default-ipv4-ippool"],
        "a namespace default that is not a JSON list",
    );
    assert_only_c0(&fixture, "bad annotations");
}

#[test]
fn bad_pool_files_are_code_7_naming_file_document_and_field_and_change_nothing() {
    let fixture = populated();
    let config = fixture.seed_config("1.0.0", NODE_2);
    let cases = [
        (
            "a YAML syntax error",
            SEED_YAML.replace("subnet: 10.7.0.0/16", "subnet: [10.7.0.0/16"),
            vec!["document 2", "not valid YAML"],
        ),
        (
            "an unknown field",
            SEED_YAML.replace("  nodeName:\n    - worker", "  nodeNme:\n    - worker"),
            vec!["document 2", "test-ippool-7", "spec.nodeNme", "unknown field"],
        ),
        (
            "a field of the wrong type",
            SEED_YAML.replace("- 10.7.168.60-10.7.168.69", "- 5"),
            vec!["document 2", "test-ippool-7", "spec.ips[0]", "invalid type"],
        ),
        (
            "no kind",
            SEED_YAML.replace(
                "kind: SpiderIPPool\nmetadata:\n  name: test-ippool-6",
                "metadata:\n  name: test-ippool-6",
            ),
            vec!["document 1", "kind"],
        ),
        (
            "an unsupported apiVersion",
            SEED_YAML.replacen("spiderpool.spidernet.io/v2beta1", "spiderpool.spidernet.io/v1", 1),
            vec!["document 1", "apiVersion", "spiderpool.spidernet.io/v1"],
        ),
    ];
    for (what, yaml, needles) in cases {
        assert_ne!(yaml, SEED_YAML, "{what}: the case must change the seed");
        std::fs::write(&fixture.pools, &yaml).unwrap();
        let path = fixture.pools.display().to_string();
        let mut needles: Vec<&str> = needles;
        needles.push(&path);
        refused(&fixture, bytes(&config), 7, "1.0.0", &needles, what);
    }
    // A pool file that does not exist.
    let missing = fixture.dir.join("no-such-pools.yaml");
    let missing_name = missing.display().to_string();
    refused(
        &fixture,
        bytes(&set(config.clone(), "/ipam/ippools_path", json!(missing))),
        7,
        "1.0.0",
        &["ipam.ippools_path", &missing_name, "No such file"],
        "a missing pool file",
    );
    // A directory of pool files: the bad file is named.
    let dir = fixture.dir.join("pools.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-good.yaml"), SEED_YAML).unwrap();
    let bad = dir.join("20-bad.yaml");
    std::fs::write(&bad, "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: extra\nspec:\n  subnet: 10.8.0.0/16\n  ips: 10.8.0.2\n").unwrap();
    let bad_name = bad.display().to_string();
    refused(
        &fixture,
        bytes(&set(config.clone(), "/ipam/ippools_path", json!(dir))),
        7,
        "1.0.0",
        &[&bad_name, "document 1", "SpiderIPPool extra", "spec.ips"],
        "a bad file in a pool directory",
    );
    std::fs::write(&fixture.pools, SEED_YAML).unwrap();
    assert_only_c0(&fixture, "bad pool files");
}

#[test]
fn an_invalid_candidate_stops_the_add_naming_it_without_falling_back_to_another_pool() {
    let any_node = "---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: any-node
spec:
  subnet: 10.8.0.0/16
  ips:
    - 10.8.0.10-10.8.0.19
  gateway: 10.8.0.1
";
    let broken = SEED_YAML.replace("gateway: 10.7.0.1", "gateway: 10.9.0.1");
    let fixture = Fixture::with_pools(&format!("{broken}{any_node}"));
    let candidates = r#"{"ipv4": ["test-ippool-7", "any-node"]}"#;
    let config = fixture.config("1.0.0", NODE_2, &[(IPPOOL, candidates)]);
    let outcome = Call::add("c1", "eth0").config(&config).run();
    outcome
        .expect_error(7, "1.0.0", "ADD with an invalid first candidate")
        .mentions(
            &[
                "test-ippool-7",
                "spec.gateway",
                "10.9.0.1",
                "outside subnet 10.7.0.0/16",
            ],
            "the invalid candidate and its field",
        );
    assert_eq!(fixture.allocations(), vec![], "no fallback to any-node");

    // A pool that is invalid but not a candidate does not stop anyone.
    let zone_6 = Call::add("c2", "eth0")
        .config(&fixture.seed_config("1.0.0", NODE_1))
        .run()
        .expect_json("ADD on the other zone's node");
    assert_eq!(addresses(&zone_6), ["10.6.168.60/16"]);
    // A missing candidate is only rejected, and the next one is tried.
    let missing_first = fixture.config(
        "1.0.0",
        NODE_2,
        &[(IPPOOL, r#"{"ipv4": ["no-such-pool", "any-node"]}"#)],
    );
    let next = Call::add("c3", "eth0")
        .config(&missing_first)
        .run()
        .expect_json("ADD with a missing first candidate");
    assert_eq!(addresses(&next), ["10.8.0.10/16"]);
}

#[test]
fn a_retried_add_whose_pool_became_invalid_names_the_invalid_field() {
    let fixture = populated();
    std::fs::write(
        &fixture.pools,
        SEED_YAML.replace("gateway: 10.7.0.1", "gateway: 10.9.0.1"),
    )
    .unwrap();
    let before = fixture.snapshot();
    Call::add("c0", "eth0")
        .config(&fixture.seed_config("1.0.0", NODE_2))
        .run()
        .expect_error(7, "1.0.0", "retried ADD of c0")
        .mentions(&["test-ippool-7", "invalid", "spec.gateway"], "the invalid pool");
    assert_unchanged(&fixture, &before, "retried ADD");
}

/// A deterministic stream of pseudo-random bytes (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Every verb on a state file the plugin must refuse: ADD, DEL, CHECK and GC fail with code
/// 102 and a message naming the file and mentioning `needles`, STATUS says 50; the data
/// directory stays byte for byte as it was.
#[track_caller]
fn state_refused(fixture: &Fixture, needles: &[&str], what: &str) {
    state_refused_by(fixture, &["ADD", "DEL", "CHECK", "GC", "STATUS"], needles, what);
}

#[track_caller]
fn state_refused_by(fixture: &Fixture, verbs: &[&str], needles: &[&str], what: &str) {
    let before = fixture.snapshot();
    assert!(
        before.files().contains(&fixture.state_file().as_path()),
        "{what}: the test must have written the state file"
    );
    let config = fixture.seed_config("1.1.0", NODE_2);
    let state = fixture.state_file().display().to_string();
    let mut needles = needles.to_vec();
    needles.push(&state);
    for verb in verbs {
        let what = format!("{verb} on {what}");
        let (call, config, code) = match *verb {
            "ADD" => (Call::add("c1", "eth0"), config.clone(), 102),
            "DEL" => (Call::del("c0", "eth0"), config.clone(), 102),
            "CHECK" => {
                let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.7.168.60/16"}]});
                (
                    Call::check("c0", "eth0"),
                    set(config.clone(), "/prevResult", prev),
                    102,
                )
            }
            "GC" => (Call::runtime_wide("GC"), config.clone(), 102),
            "STATUS" => (Call::runtime_wide("STATUS"), config.clone(), 50),
            other => unreachable!("{other}"),
        };
        call.config(&config)
            .run()
            .expect_error(code, "1.1.0", &what)
            .mentions(&needles, &what);
        assert_unchanged(fixture, &before, &what);
    }
}

#[test]
fn an_empty_state_file_is_refused_and_left_untouched() {
    let fixture = Fixture::seed();
    std::fs::create_dir_all(&fixture.data).unwrap();
    std::fs::write(fixture.state_file(), b"").unwrap();
    state_refused(&fixture, &["empty"], "empty state file");
}

#[test]
fn a_corrupt_state_file_is_refused_and_left_untouched() {
    let fixture = Fixture::seed();
    std::fs::create_dir_all(&fixture.data).unwrap();
    std::fs::write(fixture.state_file(), noise(8192, 0x5eed)).unwrap();
    state_refused(&fixture, &["not a readable SQLite database"], "random bytes");
    std::fs::write(fixture.state_file(), b"SQLite format 3\0 but short").unwrap();
    state_refused(
        &fixture,
        &["not a readable SQLite database"],
        "a truncated header",
    );
}

#[test]
fn a_store_with_damaged_pages_is_refused_and_left_untouched() {
    let fixture = damaged_store();
    state_refused_by(
        &fixture,
        &["ADD", "DEL", "CHECK"],
        &["not a readable SQLite database"],
        "damaged pages",
    );
}

/// A store whose header is intact but whose pages are garbage.
fn damaged_store() -> Fixture {
    let fixture = populated();
    let mut bytes = std::fs::read(fixture.state_file()).unwrap();
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    assert!(bytes.len() > page_size, "the store has more than one page");
    let damage = noise(bytes.len() - page_size, 0xbad);
    bytes[page_size..].copy_from_slice(&damage);
    std::fs::write(fixture.state_file(), &bytes).unwrap();
    fixture
}

#[test]
fn gc_on_a_store_with_damaged_pages_is_refused_like_the_other_verbs() {
    let fixture = damaged_store();
    state_refused_by(
        &fixture,
        &["GC"],
        &["not a readable SQLite database"],
        "damaged pages",
    );
}

#[test]
fn status_on_a_store_with_damaged_pages_answers_50() {
    let fixture = damaged_store();
    state_refused_by(
        &fixture,
        &["STATUS"],
        &["not a readable SQLite database"],
        "damaged pages",
    );
}

#[test]
fn an_sqlite_database_of_another_application_is_refused_and_left_untouched() {
    let fixture = Fixture::seed();
    std::fs::create_dir_all(&fixture.data).unwrap();
    {
        let other = rusqlite::Connection::open(fixture.state_file()).unwrap();
        other
            .execute_batch(
                "PRAGMA application_id = 305419896; -- 0x12345678
                 CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT);
                 INSERT INTO notes (text) VALUES ('not an IPAM');",
            )
            .unwrap();
    }
    state_refused(
        &fixture,
        &["another application", "0x12345678"],
        "a foreign database",
    );
}

#[test]
fn a_plain_sqlite_database_is_refused_and_left_untouched() {
    let fixture = Fixture::seed();
    std::fs::create_dir_all(&fixture.data).unwrap();
    {
        let other = rusqlite::Connection::open(fixture.state_file()).unwrap();
        other
            .execute_batch("CREATE TABLE allocations (x); INSERT INTO allocations VALUES (1);")
            .unwrap();
    }
    state_refused(
        &fixture,
        &["another application", "application_id 0x0"],
        "application_id 0",
    );
}

#[test]
fn a_store_of_a_newer_schema_is_refused_and_left_untouched() {
    let fixture = populated();
    {
        let newer = rusqlite::Connection::open(fixture.state_file()).unwrap();
        newer.execute_batch("PRAGMA user_version = 2;").unwrap();
    }
    let header = std::fs::read(fixture.state_file()).unwrap();
    assert_eq!(
        &header[60..64],
        &2u32.to_be_bytes(),
        "user_version is at offset 60 of the header"
    );
    state_refused(&fixture, &["schema version 2", "newer"], "schema version 2");
}

#[test]
fn a_newer_schema_written_into_the_header_bytes_is_refused_and_left_untouched() {
    let fixture = populated();
    let mut bytes = std::fs::read(fixture.state_file()).unwrap();
    bytes[60..64].copy_from_slice(&7u32.to_be_bytes());
    std::fs::write(fixture.state_file(), &bytes).unwrap();
    state_refused(
        &fixture,
        &["schema version 7", "newer"],
        "user_version patched to 7",
    );
}

#[test]
fn a_newer_schema_still_in_the_write_ahead_log_is_refused_and_left_untouched() {
    let fixture = populated();
    // A newer build using a write-ahead log wrote user_version 2 and has not checkpointed
    // yet: the file header still says 1, the log says 2.
    let newer = rusqlite::Connection::open(fixture.state_file()).unwrap();
    newer
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; PRAGMA user_version = 2;")
        .unwrap();
    let header = std::fs::read(fixture.state_file()).unwrap();
    assert_eq!(&header[60..64], &1u32.to_be_bytes(), "the header lags the log");
    let durable = |fixture: &Fixture| {
        ["state.db", "state.db-wal"].map(|name| std::fs::read(fixture.data.join(name)).unwrap())
    };
    let before = durable(&fixture);
    let state = fixture.state_file().display().to_string();
    for call in [Call::add("c1", "eth0"), Call::del("c0", "eth0")] {
        call.config(&fixture.seed_config("1.0.0", NODE_2))
            .run()
            .expect_error(102, "1.0.0", "a newer schema in the log")
            .mentions(
                &["schema version 2", "newer", &state],
                "a newer schema in the log",
            );
        assert!(
            durable(&fixture) == before,
            "the database and its log are unchanged"
        );
    }
    drop(newer);
}

#[test]
fn a_data_dir_that_is_a_file_is_code_7_naming_it() {
    let fixture = Fixture::seed();
    let file = fixture.dir.write("not-a-dir", b"keep me");
    let config = set(
        fixture.seed_config("1.0.0", NODE_2),
        "/ipam/data_dir",
        json!(file),
    );
    let name = file.display().to_string();
    Call::add("c1", "eth0")
        .config(&config)
        .run()
        .expect_error(7, "1.0.0", "data_dir is a file")
        .mentions(&["data_dir", &name, "is not a directory"], "data_dir is a file");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me", "the file is untouched");
}
