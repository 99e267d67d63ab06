//! The deployment: the plain manifests of `deploy/` and the Helm chart of `charts/spiderpool`,
//! checked against a real API server (`kubectl apply --dry-run=server --validate=strict`), against
//! each other (the chart renders the objects of `deploy/`, its CRDs and admission policy are
//! `deploy/`'s byte for byte), for the wiring of the controller's admission webhook (its
//! Service, flags, port and the one webhook configuration its RBAC lets it write), and for least
//! privilege (no wildcard; what the service accounts can and cannot do, asked of the server's
//! RBAC authorizer).
//!
//! The chart's tests need Helm 3 (`HELM`, set by `scripts/test.sh` from
//! `scripts/install-helm.sh`) and skip, saying so, without it; the server's tests skip without
//! `SPIDERPOOL_TEST_KUBECONFIG`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use spiderpool_check::kit::apiserver::{install_crds, kubeconfig, kubectl, repo, try_kubectl, unique};

/// The plain manifest of the agent and the controller.
const MANIFEST: &str = "deploy/spiderpool.yaml";
/// The chart.
const CHART: &str = "charts/spiderpool";
/// The namespace of `deploy/spiderpool.yaml`.
const NAMESPACE: &str = "spiderpool";

/// The Helm binary the test command built, or `None` (with the reason printed).
fn helm(test: &str) -> Option<PathBuf> {
    match std::env::var_os("HELM").filter(|helm| !helm.is_empty()) {
        Some(helm) => Some(PathBuf::from(helm)),
        None => {
            eprintln!(
                "skipping {test}: no Helm; run `bash scripts/test.sh`, which builds one \
                 (scripts/install-helm.sh) and sets HELM"
            );
            None
        }
    }
}

/// Runs `helm args...` in the repository; panics with its output when it fails.
fn run_helm(helm: &Path, args: &[&str]) -> String {
    let output = Command::new(helm)
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("{}: {err}", helm.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "helm {}: {}\n{stdout}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `helm template spiderpool charts/spiderpool --namespace NS extra...`.
fn render_chart(helm: &Path, namespace: &str, extra: &[&str]) -> Vec<Value> {
    render_release(helm, "spiderpool", namespace, extra)
}

/// `helm template RELEASE charts/spiderpool --namespace NS extra...`.
fn render_release(helm: &Path, release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    args.extend_from_slice(extra);
    documents(&run_helm(helm, &args), "helm template")
}

/// The objects of a YAML stream, as JSON (empty documents left out).
fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            let value = serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|err| panic!("{origin}: not YAML: {err}"));
            serde_json::to_value(value).unwrap_or_else(|err| panic!("{origin}: not JSON-like: {err}"))
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The objects of a file of the repository.
fn objects(relative: &str) -> Vec<Value> {
    documents(&read(relative), relative)
}

/// The files of a directory of the repository (relative paths, sorted), recursively.
fn files(relative: &str) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        for entry in entries {
            let entry = entry.expect("a directory entry");
            let name = format!("{prefix}/{}", entry.file_name().to_string_lossy());
            if entry.file_type().expect("a file type").is_dir() {
                walk(&entry.path(), &name, out);
            } else {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join(relative), relative, &mut out);
    out.sort();
    out
}

/// The YAML manifests of `deploy/`.
fn deploy_manifests() -> Vec<String> {
    files("deploy")
        .into_iter()
        .filter(|file| file.ends_with(".yaml") || file.ends_with(".yml"))
        .collect()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The objects moved to `namespace`: the Namespace renamed, every namespaced object and every
/// binding's subjects in it.
fn relocate(objects: &mut [Value], namespace: &str) {
    for object in objects {
        if kind(object) == "Namespace" {
            object["metadata"]["name"] = json!(namespace);
        }
        if object["metadata"].get("namespace").is_some() {
            object["metadata"]["namespace"] = json!(namespace);
        }
        if let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut) {
            for subject in subjects {
                if subject.get("namespace").is_some() {
                    subject["namespace"] = json!(namespace);
                }
            }
        }
    }
}

/// A `List` of the objects, for `kubectl ... -f -`.
fn list(objects: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string()
}

/// `kubectl apply --dry-run=server --validate=strict` of the objects: every one must be
/// accepted, with no unknown or duplicate field.
fn apply_dry_run(kubeconfig: &Path, objects: &[Value], origin: &str) {
    let args = ["apply", "--dry-run=server", "--validate=strict", "-f", "-"];
    let output = kubectl(kubeconfig, &args, &list(objects));
    let applied = output
        .lines()
        .filter(|line| line.contains("(server dry run)"))
        .count();
    assert_eq!(
        applied,
        objects.len(),
        "{origin}: the server did not accept every object:\n{output}"
    );
}

/// Deletes what a test created on the shared server, when the test ends, passed or not.
struct Cleanup {
    kubeconfig: PathBuf,
    objects: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "--ignore-not-found", "--wait=false"])
            .args(&self.objects)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

/// Creates namespace `name` for real, deleted when the returned guard drops.
fn namespace(kubeconfig: &Path, name: &str) -> Cleanup {
    kubectl(kubeconfig, &["create", "namespace", name], "");
    Cleanup {
        kubeconfig: kubeconfig.to_owned(),
        objects: vec![format!("namespace/{name}")],
    }
}

#[test]
fn deploy_manifests_are_accepted_by_the_server() {
    let Some(kubeconfig) = kubeconfig("deploy_manifests_are_accepted_by_the_server") else {
        return;
    };
    install_crds(&kubeconfig);
    // The manifests' namespace, renamed for this run: the server is shared with parallel tests.
    let ns = unique("spiderpool-deploy");
    let _cleanup = namespace(&kubeconfig, &ns);
    let manifests = deploy_manifests();
    assert!(
        manifests.iter().any(|file| file == MANIFEST),
        "{MANIFEST} is missing: {manifests:?}"
    );
    assert_eq!(
        assert_webhook_wiring(&objects(MANIFEST), MANIFEST),
        "spiderpool",
        "{MANIFEST}: the controller's own default --webhook-configuration"
    );
    let mut all = Vec::new();
    for file in &manifests {
        let mut objects = objects(file);
        assert!(!objects.is_empty(), "{file}: no object");
        relocate(&mut objects, &ns);
        apply_dry_run(&kubeconfig, &objects, file);
        all.extend(objects);
    }
    // And all at once, as `kubectl apply -f deploy/ -R` would.
    apply_dry_run(&kubeconfig, &all, "deploy/");
}

#[test]
fn chart_renders_objects_the_server_accepts() {
    let test = "chart_renders_objects_the_server_accepts";
    let (Some(helm), Some(kubeconfig)) = (helm(test), kubeconfig(test)) else {
        return;
    };
    install_crds(&kubeconfig);
    let ns = unique("spiderpool-chart");
    let _cleanup = namespace(&kubeconfig, &ns);

    let defaults = render_chart(&helm, &ns, &["--include-crds"]);
    let kinds: Vec<&str> = defaults.iter().map(kind).collect();
    for expected in [
        "CustomResourceDefinition",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Deployment",
        "Service",
    ] {
        assert!(
            kinds.contains(&expected),
            "no {expected} in the chart's objects: {kinds:?}"
        );
    }
    assert_webhook_wiring(&defaults, "helm template (default values)");
    apply_dry_run(&kubeconfig, &defaults, "helm template (default values)");
    // Another release: every name the webhook's wiring uses follows it.
    let renamed = render_release(&helm, "ipam", &ns, &[]);
    assert_eq!(
        assert_webhook_wiring(&renamed, "helm template ipam"),
        "ipam-spiderpool"
    );
    apply_dry_run(&kubeconfig, &renamed, "helm template ipam");

    // Other values: every template branch, and the socket path followed everywhere.
    let socket = "/var/run/spiderpool-test/agent.sock";
    let set = format!(
        "agentSocket={socket},cniBinDir=/usr/libexec/cni,image.repository=registry.example/spiderpool,\
         image.tag=dev,image.pullPolicy=Always,agent.hostNetwork=false,agent.priorityClassName=,\
         ipVersionDefaults.enabled=false,webhook.enabled=false,controller.gcIntervalSeconds=5"
    );
    let affinity = r#"agent.affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms":[{"matchExpressions":[{"key":"spiderpool","operator":"NotIn","values":["off"]}]}]}}}"#;
    let secrets = r#"imagePullSecrets=[{"name":"registry"}]"#;
    let others = render_chart(
        &helm,
        &ns,
        &[
            "--set",
            &set,
            "--set-json",
            affinity,
            "--set-json",
            secrets,
            "--set-json",
            r#"controller.podAnnotations={"a":"b"}"#,
        ],
    );
    assert!(
        others
            .iter()
            .all(|o| !kind(o).starts_with("MutatingAdmissionPolicy")),
        "ipVersionDefaults.enabled=false still renders the policy"
    );
    let daemonset = others
        .iter()
        .find(|o| kind(o) == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["args"], json!(["agent", "--socket", socket]));
    assert_eq!(
        pod["containers"][0]["image"],
        json!("registry.example/spiderpool:dev")
    );
    assert_eq!(pod["hostNetwork"], Value::Null);
    assert_eq!(pod["priorityClassName"], Value::Null);
    let volumes = pod["volumes"].to_string();
    assert!(
        volumes.contains("\"/var/run/spiderpool-test\"") && volumes.contains("\"/usr/libexec/cni\""),
        "{volumes}"
    );
    let deployment = others
        .iter()
        .find(|o| kind(o) == "Deployment")
        .expect("a Deployment");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args = controller["args"].to_string();
    assert!(
        args.contains(&format!("\"--agent-socket\",\"{socket}\""))
            && args.contains("\"--gc-interval-seconds\",\"5\""),
        "{args}"
    );
    // webhook.enabled=false: no Service, no webhook flag, port or probe, no RBAC rule.
    assert!(
        others.iter().all(|o| kind(o) != "Service"),
        "webhook.enabled=false still renders a Service"
    );
    assert!(
        !args.contains("--webhook"),
        "webhook.enabled=false still passes {args}"
    );
    for field in ["ports", "readinessProbe", "env"] {
        assert_eq!(controller[field], Value::Null, "webhook.enabled=false: {field}");
    }
    let role = others
        .iter()
        .find(|o| kind(o) == "ClusterRole" && name(o) == "spiderpool-controller")
        .expect("the controller's ClusterRole");
    assert!(
        !role["rules"].to_string().contains("admissionregistration"),
        "webhook.enabled=false still grants {}",
        role["rules"]
    );
    apply_dry_run(&kubeconfig, &others, "helm template (other values)");
}

#[test]
fn chart_lints_clean() {
    let Some(helm) = helm("chart_lints_clean") else {
        return;
    };
    let output = run_helm(&helm, &["lint", "--strict", CHART]);
    assert!(output.contains("0 chart(s) failed"), "{output}");
    assert!(
        !output.contains("[WARNING]") && !output.contains("[ERROR]"),
        "{output}"
    );
}

/// The chart's copies are the generated files, byte for byte: the chart's `crds/` is
/// `deploy/crds/`, its `files/` is `deploy/admission/`.
#[test]
fn chart_copies_are_identical_to_deploy() {
    for (original, copy) in [
        ("deploy/crds", "charts/spiderpool/crds"),
        ("deploy/admission", "charts/spiderpool/files"),
    ] {
        let strip = |files: Vec<String>, dir: &str| -> Vec<String> {
            files
                .into_iter()
                .map(|file| file[dir.len() + 1..].to_owned())
                .collect()
        };
        let originals = strip(files(original), original);
        let copies = strip(files(copy), copy);
        assert!(!originals.is_empty(), "{original} is empty");
        assert_eq!(
            originals, copies,
            "{copy}/ must hold exactly the files of {original}/: copy them again (cp {original}/* {copy}/)"
        );
        for file in &originals {
            let (a, b) = (format!("{original}/{file}"), format!("{copy}/{file}"));
            assert!(
                read(&a) == read(&b),
                "{b} differs from {a}: copy it again (cp {a} {b})"
            );
        }
    }
}

/// Labels are the chart's own (it adds Helm's, and selects its pods with its release's); everything
/// else must be the same. [`assert_webhook_wiring`] checks that the Service selects the controller.
fn without_labels(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("labels");
            map.remove("matchLabels");
            // A Service's selector: a map of labels (a workload's holds matchLabels instead).
            if map
                .get("selector")
                .and_then(Value::as_object)
                .is_some_and(|selector| selector.values().all(Value::is_string))
            {
                map.remove("selector");
            }
            map.values_mut().for_each(without_labels);
        }
        Value::Array(items) => items.iter_mut().for_each(without_labels),
        _ => {}
    }
}

fn by_kind_and_name(objects: Vec<Value>) -> BTreeMap<(String, String), Value> {
    objects
        .into_iter()
        .map(|mut object| {
            without_labels(&mut object);
            ((kind(&object).to_owned(), name(&object).to_owned()), object)
        })
        .collect()
}

/// With its default values, as the release `spiderpool` in the namespace `spiderpool`, the chart
/// renders the objects of `deploy/` (less the Namespace, which Helm's `--create-namespace`
/// makes), labels aside.
#[test]
fn chart_renders_the_objects_of_deploy() {
    let Some(helm) = helm("chart_renders_the_objects_of_deploy") else {
        return;
    };
    let mut plain: Vec<Value> = objects(MANIFEST);
    plain.retain(|object| kind(object) != "Namespace");
    for file in files("deploy/admission") {
        plain.extend(objects(&file));
    }
    let chart = by_kind_and_name(render_chart(&helm, NAMESPACE, &[]));
    let plain = by_kind_and_name(plain);
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "the chart and deploy/ make different objects"
    );
    for (key, object) in &plain {
        assert_eq!(
            object, &chart[key],
            "{key:?}: the chart's (right) differs from deploy/'s (left)"
        );
    }
}

/// The argument following `flag` in `args`.
fn flag_value<'a>(args: &'a [Value], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|arg| arg == flag)?;
    args.get(at + 1).and_then(Value::as_str)
}

/// The controller's admission webhook is wired up: the Deployment's controller serves it
/// (`--webhook-self-signed`, port `webhook` = 9443, the namespace from the downward API) behind
/// the Service `--webhook-service` names (in its namespace, selecting its pods and no agent, 443
/// to that port), and its ClusterRole may write the webhook configuration
/// `--webhook-configuration` names, and only that one. Returns that name.
fn assert_webhook_wiring(objects: &[Value], origin: &str) -> String {
    let find = |wanted: &str| -> &Value {
        let mut found = objects.iter().filter(|o| kind(o) == wanted);
        let object = found.next().unwrap_or_else(|| panic!("{origin}: no {wanted}"));
        assert!(found.next().is_none(), "{origin}: more than one {wanted}");
        object
    };
    let deployment = find("Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args = container["args"].as_array().expect("the controller's args");
    assert!(
        args.iter().any(|arg| arg == "--webhook-self-signed"),
        "{origin}: the controller is not given --webhook-self-signed: {args:?}"
    );

    let service = find("Service");
    let service_name = flag_value(args, "--webhook-service").unwrap_or("spiderpool-controller");
    assert_eq!(
        name(service),
        service_name,
        "{origin}: the Service is not --webhook-service"
    );
    assert_eq!(
        service["metadata"]["namespace"], deployment["metadata"]["namespace"],
        "{origin}: the Service is not in the controller's namespace"
    );
    let selector = service["spec"]["selector"].as_object().expect("a selector");
    assert!(!selector.is_empty(), "{origin}: the Service selects every pod");
    let selects = |template: &Value| {
        selector
            .iter()
            .all(|(label, value)| template["metadata"]["labels"][label] == *value)
    };
    assert!(
        selects(pod),
        "{origin}: the Service does not select the controller: {selector:?}"
    );
    assert!(
        !selects(&find("DaemonSet")["spec"]["template"]),
        "{origin}: the Service selects the agents too: {selector:?}"
    );
    let ports = service["spec"]["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "{origin}: {ports:?}");
    assert_eq!(
        ports[0]["port"],
        json!(443),
        "{origin}: the webhook's clientConfig port"
    );
    let container_port = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|port| port["name"] == "webhook")
        .unwrap_or_else(|| panic!("{origin}: the controller has no port named webhook"));
    assert_eq!(
        container_port["containerPort"],
        json!(9443),
        "{origin}: --webhook-listen's default"
    );
    assert!(
        flag_value(args, "--webhook-listen").is_none_or(|listen| listen.ends_with(":9443")),
        "{origin}: {args:?}"
    );
    assert!(
        [json!(9443), json!("webhook")].contains(&ports[0]["targetPort"]),
        "{origin}: the Service's targetPort is not the webhook's: {}",
        ports[0]["targetPort"]
    );
    assert_eq!(
        container["readinessProbe"]["tcpSocket"]["port"],
        json!("webhook"),
        "{origin}: the controller is ready before the webhook listens"
    );
    let env = container["env"].as_array().expect("the controller's env");
    assert!(
        env.iter().any(|var| var["name"] == "POD_NAMESPACE"
            && var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "{origin}: no POD_NAMESPACE from the downward API (the default --webhook-namespace): {env:?}"
    );

    // The controller's ClusterRole, through its binding to the pods' service account.
    let account = pod["spec"]["serviceAccountName"]
        .as_str()
        .expect("a service account");
    let binding = objects
        .iter()
        .find(|o| {
            kind(o) == "ClusterRoleBinding"
                && o["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|subject| subject["kind"] == "ServiceAccount" && subject["name"] == account)
        })
        .unwrap_or_else(|| panic!("{origin}: {account} has no ClusterRoleBinding"));
    let role = objects
        .iter()
        .find(|o| kind(o) == "ClusterRole" && name(o) == binding["roleRef"]["name"])
        .unwrap_or_else(|| panic!("{origin}: no ClusterRole {}", binding["roleRef"]["name"]));
    let configuration = flag_value(args, "--webhook-configuration").unwrap_or("spiderpool");
    let webhook_rules: Vec<&Value> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|rule| rule["apiGroups"] == json!(["admissionregistration.k8s.io"]))
        .collect();
    assert_eq!(
        webhook_rules,
        [&json!({"apiGroups": ["admissionregistration.k8s.io"],
                    "resources": ["validatingwebhookconfigurations"],
                    "resourceNames": [configuration],
                    "verbs": ["get", "create", "patch", "update"]}),],
        "{origin}: the controller's rules for webhook configurations"
    );
    configuration.to_owned()
}

/// No rule of a role grants `*` (a wildcard verb, resource, group or name), and every binding
/// grants one of the manifests' own roles.
fn assert_no_wildcards(objects: &[Value], origin: &str) {
    let roles: Vec<&str> = objects
        .iter()
        .filter(|o| matches!(kind(o), "ClusterRole" | "Role"))
        .map(name)
        .collect();
    assert!(
        roles.len() >= 2,
        "{origin}: the agent's and the controller's roles are missing"
    );
    for object in objects {
        match kind(object) {
            "ClusterRole" | "Role" => {
                assert!(
                    object.get("aggregationRule").is_none(),
                    "{origin}: {} aggregates other roles",
                    name(object)
                );
                let rules = object["rules"].as_array().expect("rules");
                for rule in rules {
                    for field in [
                        "apiGroups",
                        "resources",
                        "verbs",
                        "resourceNames",
                        "nonResourceURLs",
                    ] {
                        for entry in rule[field].as_array().into_iter().flatten() {
                            let entry = entry.as_str().expect("a string");
                            assert!(
                                !entry.contains('*'),
                                "{origin}: {} grants {field} {entry:?}",
                                name(object)
                            );
                        }
                    }
                    assert!(
                        rule.get("nonResourceURLs").is_none(),
                        "{origin}: {} grants non-resource URLs",
                        name(object)
                    );
                }
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                let role = object["roleRef"]["name"].as_str().unwrap_or_default();
                assert!(
                    roles.contains(&role),
                    "{origin}: {} binds {role}, not one of {roles:?}",
                    name(object)
                );
            }
            _ => {}
        }
    }
}

#[test]
fn rbac_has_no_wildcards() {
    assert_no_wildcards(&objects(MANIFEST), MANIFEST);
    if let Some(helm) = helm("rbac_has_no_wildcards (the chart's part)") {
        assert_no_wildcards(&render_chart(&helm, NAMESPACE, &[]), CHART);
    }
}

/// The resources of [`can_i`] that are cluster-scoped: asked about without a namespace.
const CLUSTER_SCOPED: [&str; 6] = [
    "nodes",
    "namespaces",
    "spiderippools",
    "spiderreservedips",
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
];

/// `resource` (as [`can_i`] takes it) limited to the object `name`.
fn named(resource: &str, name: &str) -> String {
    format!("{resource} named {name}")
}

/// Whether `user` may `verb` `resource` (`RESOURCE[.GROUP][/SUBRESOURCE]`, as `kubectl auth
/// can-i` takes it, then ` named NAME` for one object, see [`named`]) in the namespace `default`
/// (none for the cluster-scoped), as the server's authorizer answers a SubjectAccessReview: what
/// `kubectl auth can-i --as=USER` asks, without its guess of the group of a resource the server
/// does not serve (Multus' CRD is not installed here).
fn can_i(kubeconfig: &Path, user: &str, verb: &str, resource: &str) -> bool {
    let (resource, object) = resource.split_once(" named ").unwrap_or((resource, ""));
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    let namespace = if CLUSTER_SCOPED.contains(&resource) {
        ""
    } else {
        "default"
    };
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": resource,
                "subresource": subresource,
                "name": object,
            },
        },
    });
    let args = ["create", "-o", "jsonpath={.status.allowed}", "-f", "-"];
    match kubectl(kubeconfig, &args, &review.to_string()).trim() {
        "true" => true,
        // `allowed` is left out when false.
        "" | "false" => false,
        other => panic!("SubjectAccessReview {review}: allowed is {other:?}"),
    }
}

/// The service account a workload's pods run as.
fn service_account<'a>(objects: &'a [Value], workload: &str) -> &'a str {
    let object = objects
        .iter()
        .find(|o| kind(o) == workload)
        .unwrap_or_else(|| panic!("{MANIFEST}: no {workload}"));
    object["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or_else(|| panic!("{MANIFEST}: the {workload} names no service account"))
}

/// The RBAC objects of `deploy/spiderpool.yaml`, really applied (renamed for this run), give the
/// agent and the controller what they use and nothing they do not.
#[test]
fn service_accounts_can_do_what_they_need_and_no_more() {
    let Some(kubeconfig) = kubeconfig("service_accounts_can_do_what_they_need_and_no_more") else {
        return;
    };
    let all = objects(MANIFEST);
    let agent = service_account(&all, "DaemonSet").to_owned();
    let controller = service_account(&all, "Deployment").to_owned();
    let ns = unique("spiderpool-rbac");
    let suffix = ns.trim_start_matches("spiderpool-rbac");
    let mut rbac: Vec<Value> = all
        .into_iter()
        .filter(|o| matches!(kind(o), "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding"))
        .collect();
    relocate(&mut rbac, &ns);
    let mut cleanup = namespace(&kubeconfig, &ns);
    for object in &mut rbac {
        if matches!(kind(object), "ClusterRole" | "ClusterRoleBinding") {
            let renamed = format!("{}{suffix}", name(object));
            cleanup
                .objects
                .push(format!("{}/{renamed}", kind(object).to_lowercase()));
            object["metadata"]["name"] = json!(renamed);
        }
        if kind(object) == "ClusterRoleBinding" {
            let role = object["roleRef"]["name"].as_str().expect("a role").to_owned();
            object["roleRef"]["name"] = json!(format!("{role}{suffix}"));
        }
    }
    kubectl(&kubeconfig, &["apply", "-f", "-"], &list(&rbac));

    let agent = format!("system:serviceaccount:{ns}:{agent}");
    let controller = format!("system:serviceaccount:{ns}:{controller}");
    // The authorizer sees new bindings through its informers: wait for the first grant.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(can_i(&kubeconfig, &agent, "get", "pods") && can_i(&kubeconfig, &controller, "list", "pods")) {
        assert!(Instant::now() < deadline, "the bindings take no effect in 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    const SP: &str = "spiderpool.spidernet.io";
    const VWC: &str = "validatingwebhookconfigurations.admissionregistration.k8s.io";
    const MWC: &str = "mutatingwebhookconfigurations.admissionregistration.k8s.io";
    // The controller's own webhook configuration, the one `--webhook-configuration` names.
    const OURS: &str = "spiderpool";
    // The agent watches what an ADD reads (ClusterStore::watching) and patches the statuses
    // of pools in the earlier format (a merge patch carrying the version read).
    let agent_can = [
        ("get", "pods".to_owned()),
        ("list", "pods".into()),
        ("watch", "pods".into()),
        ("get", "namespaces".into()),
        ("watch", "namespaces".into()),
        ("get", "nodes".into()),
        ("watch", "nodes".into()),
        ("list", format!("spiderippools.{SP}")),
        ("watch", format!("spiderippools.{SP}")),
        ("list", format!("spiderreservedips.{SP}")),
        ("watch", format!("spiderreservedips.{SP}")),
        ("update", format!("spiderippools.{SP}/status")),
        ("patch", format!("spiderippools.{SP}/status")),
        ("watch", format!("spideripblocks.{SP}")),
        ("create", format!("spideripblocks.{SP}")),
        ("update", format!("spideripblocks.{SP}")),
        ("get", format!("spiderendpoints.{SP}")),
        ("create", format!("spiderendpoints.{SP}")),
        ("update", format!("spiderendpoints.{SP}")),
        ("delete", format!("spiderendpoints.{SP}")),
    ];
    let agent_cannot = [
        ("delete", "pods".to_owned()),
        ("create", "pods".into()),
        ("update", "pods".into()),
        ("update", "nodes".into()),
        ("get", "secrets".into()),
        ("list", "secrets".into()),
        ("create", format!("spiderippools.{SP}")),
        ("update", format!("spiderippools.{SP}")),
        ("delete", format!("spiderippools.{SP}")),
        ("update", format!("spiderreservedips.{SP}")),
        ("delete", format!("spideripblocks.{SP}")),
        ("list", format!("spiderendpoints.{SP}")),
        ("create", "network-attachment-definitions.k8s.cni.cncf.io".into()),
        ("update", "statefulsets.apps".into()),
        ("create", VWC.into()),
        ("get", named(VWC, OURS)),
        ("patch", named(VWC, OURS)),
    ];
    let controller_can = [
        ("list", "pods".to_owned()),
        ("watch", "pods".into()),
        ("list", "nodes".into()),
        ("watch", "nodes".into()),
        ("list", "statefulsets.apps".into()),
        ("watch", "statefulsets.apps".into()),
        ("list", format!("spiderendpoints.{SP}")),
        ("watch", format!("spiderendpoints.{SP}")),
        ("delete", format!("spiderendpoints.{SP}")),
        ("list", format!("spiderippools.{SP}")),
        ("watch", format!("spiderippools.{SP}")),
        ("update", format!("spiderippools.{SP}/status")),
        ("patch", format!("spiderippools.{SP}/status")),
        ("list", format!("spiderreservedips.{SP}")),
        ("watch", format!("spidermultusconfigs.{SP}")),
        ("get", "network-attachment-definitions.k8s.cni.cncf.io".into()),
        ("create", "network-attachment-definitions.k8s.cni.cncf.io".into()),
        ("patch", "network-attachment-definitions.k8s.cni.cncf.io".into()),
        ("update", "network-attachment-definitions.k8s.cni.cncf.io".into()),
        ("create", "events.events.k8s.io".into()),
        ("patch", "events.events.k8s.io".into()),
        // Its webhook's registration (server-side apply: patch, and create when it is new).
        ("get", named(VWC, OURS)),
        ("patch", named(VWC, OURS)),
        ("update", named(VWC, OURS)),
        ("create", named(VWC, OURS)),
    ];
    let controller_cannot = [
        ("delete", "pods".to_owned()),
        ("update", "pods".into()),
        ("update", "nodes".into()),
        ("get", "secrets".into()),
        ("update", "statefulsets.apps".into()),
        ("create", format!("spiderendpoints.{SP}")),
        ("update", format!("spiderendpoints.{SP}")),
        ("create", format!("spiderippools.{SP}")),
        ("update", format!("spiderippools.{SP}")),
        ("delete", format!("spiderippools.{SP}")),
        ("update", format!("spidermultusconfigs.{SP}")),
        ("delete", format!("spiderreservedips.{SP}")),
        ("delete", "network-attachment-definitions.k8s.cni.cncf.io".into()),
        ("delete", "events.events.k8s.io".into()),
        ("create", "events".into()),
        ("create", "services".into()),
        ("update", "services".into()),
        // No other webhook configuration, no deletion, no listing of them.
        ("delete", named(VWC, OURS)),
        ("create", VWC.into()),
        ("create", named(VWC, "another-webhook")),
        ("delete", VWC.into()),
        ("deletecollection", VWC.into()),
        ("list", VWC.into()),
        ("watch", VWC.into()),
        ("get", VWC.into()),
        ("patch", VWC.into()),
        ("update", VWC.into()),
        ("get", named(VWC, "another-webhook")),
        ("patch", named(VWC, "another-webhook")),
        ("update", named(VWC, "another-webhook")),
        ("get", named(MWC, OURS)),
        ("create", MWC.into()),
        ("create", named(MWC, OURS)),
        ("patch", named(MWC, OURS)),
        ("update", named(MWC, OURS)),
        ("delete", named(MWC, OURS)),
        ("list", MWC.into()),
    ];
    let mut wrong = Vec::new();
    for (user, grants, expected) in [
        (&agent, &agent_can[..], true),
        (&agent, &agent_cannot[..], false),
        (&controller, &controller_can[..], true),
        (&controller, &controller_cannot[..], false),
    ] {
        for (verb, resource) in grants {
            if can_i(&kubeconfig, user, verb, resource) != expected {
                let can = if expected { "cannot" } else { "can" };
                wrong.push(format!("{user} {can} {verb} {resource}"));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong grants:\n{}", wrong.join("\n"));

    // What the controller really sends to register its webhook, a server-side apply, is allowed
    // for its configuration (also when new: the server then checks create as well as patch)
    // and forbidden for any other. A dry run: the server's other tests must not see it.
    let exists = !kubectl(
        &kubeconfig,
        &[
            "get",
            "validatingwebhookconfiguration",
            OURS,
            "--ignore-not-found",
            "-o",
            "name",
        ],
        "",
    )
    .trim()
    .is_empty();
    let register = |name: &str| {
        let configuration = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [],
        });
        let args = [
            "apply",
            "--server-side",
            "--field-manager=spiderpool-controller",
            "--force-conflicts",
            "--dry-run=server",
            "--as",
            controller.as_str(),
            "-f",
            "-",
        ];
        try_kubectl(&kubeconfig, &args, &configuration.to_string())
    };
    if let Err(refusal) = register(OURS) {
        panic!("the controller cannot apply its webhook configuration ({OURS}, exists: {exists}): {refusal}");
    }
    match register("another-webhook") {
        Err(refusal) if refusal.contains("forbidden") => {}
        other => panic!("the controller may apply another webhook configuration: {other:?}"),
    }
}
