//! The validating webhook, registered with a real API server and answering with the engine's
//! verdicts: an invalid pool, an overlapping pool, an update dropping an address in use, and
//! the deletion of a pool in use are refused with the core's messages, through `kubectl`.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use spiderpool_check::kit::apiserver::{
    client, forget_earlier_pools, install_crds, kubeconfig, try_kubectl, unique, wait_for_webhook,
};
use spiderpool_check::kit::documents::labelled_pool;
use spiderpool_k8s::SpiderIPPool;

fn pool_yaml(name: &str, label: &str, ips: &str, gateway: &str) -> String {
    let labels = [("spiderpool-webhook-test", label), ("spiderpool-test", "webhook")];
    labelled_pool(
        name,
        &labels,
        &format!("{{subnet: 10.120.0.0/16, ips: [{ips}], gateway: {gateway}}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_refuses_what_the_engine_would_refuse() {
    let Some(config) = kubeconfig("the_webhook_refuses_what_the_engine_would_refuse") else {
        return;
    };
    // The test server's own certificate (for 127.0.0.1) serves the webhook, and its CA is the
    // bundle the server trusts it with.
    let pki = config.parent().expect("the kubeconfig's directory").join("pki");
    if !pki.join("apiserver.crt").exists() {
        eprintln!(
            "skipping: {} has no apiserver.crt (not the repo's test server)",
            pki.display()
        );
        return;
    }
    install_crds(&config);
    let client = client(&config).await;
    let registrations: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    // An earlier run that failed left its registration, pointing at a server that is gone.
    for earlier in registrations
        .list(&Default::default())
        .await
        .expect("webhook configurations")
    {
        let name = earlier.metadata.name.unwrap_or_default();
        if name.starts_with("wh-") {
            let _ = registrations.delete(&name, &DeleteParams::default()).await;
        }
    }
    forget_earlier_pools(&config, "webhook");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = listener.local_addr().expect("its address").port();
    let (cert, key) = (pki.join("apiserver.crt"), pki.join("apiserver.key"));
    let server_client = client.clone();
    let server =
        tokio::spawn(
            async move { spiderpool_k8s::webhook::serve_on(listener, &cert, &key, server_client).await },
        );

    // Only this test's objects go to this webhook: others must not depend on it.
    let label = unique("wh");
    let registration: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": label},
        "webhooks": [{
            "name": "spiderippools.spiderpool.spidernet.io",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}{}", spiderpool_k8s::webhook::PATH)},
            "rules": [{"apiGroups": ["spiderpool.spidernet.io"], "apiVersions": ["v2beta1"],
                       "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["spiderippools", "spiderreservedips"]}],
            "objectSelector": {"matchLabels": {"spiderpool-webhook-test": label}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10
        }]
    }))
    .expect("a webhook configuration");
    let mut registration = registration;
    registration.webhooks.as_mut().expect("webhooks")[0]
        .client_config
        .ca_bundle = Some(ByteString(std::fs::read(pki.join("ca.crt")).expect("the CA")));
    registrations
        .create(&PostParams::default(), &registration)
        .await
        .expect("registering the webhook");

    let apply = |yaml: String| try_kubectl(&config, &["apply", "-f", "-"], &yaml);
    let (first, second) = (format!("{label}-a"), format!("{label}-b"));

    let invalid = pool_yaml(&first, &label, "10.121.0.1", "10.122.0.1");
    wait_for_webhook(&config, &invalid);
    let refusal = apply(invalid).expect_err("an invalid pool is refused");
    assert!(
        refusal.contains("spec.ips[0]: 10.121.0.1 is outside subnet 10.120.0.0/16")
            && refusal.contains("spec.gateway: 10.122.0.1 is outside subnet 10.120.0.0/16"),
        "every violation, in the engine's words: {refusal}"
    );

    apply(pool_yaml(
        &first,
        &label,
        "10.120.0.1-10.120.0.10",
        "10.120.0.254",
    ))
    .expect("a valid pool is stored");
    let overlap = apply(pool_yaml(
        &second,
        &label,
        "10.120.0.10-10.120.0.20",
        "10.120.0.254",
    ))
    .expect_err("an overlapping pool is refused");
    assert!(
        overlap.contains(&format!("10.120.0.10 also belong to pool {first}")),
        "{overlap}"
    );

    // In use: 10.120.0.5 held by a pod.
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let mut stored = pools.get(&first).await.expect("the pool");
    stored.status = Some(spiderpool_core::IPPoolStatus {
        allocated_ips: Some(
            r#"{"10.120.0.5":{"pod":"default/web","podUid":"u1","interface":"eth0"}}"#.into(),
        ),
        allocated_ip_count: Some(1),
        ..Default::default()
    });
    pools
        .replace_status(&first, &PostParams::default(), &stored)
        .await
        .expect("writing the status");
    let shrink = apply(pool_yaml(&first, &label, "10.120.0.1-10.120.0.4", "10.120.0.254"))
        .expect_err("dropping an address in use is refused");
    assert!(
        shrink.contains("10.120.0.5 is in use by pod default/web"),
        "{shrink}"
    );
    let delete = try_kubectl(&config, &["delete", "spiderippool", &first], "")
        .expect_err("deleting a pool in use is refused");
    assert!(delete.contains("1 addresses are still allocated"), "{delete}");

    // Released: the pool may go.
    let mut stored = pools.get(&first).await.expect("the pool");
    stored.status = Some(Default::default());
    pools
        .replace_status(&first, &PostParams::default(), &stored)
        .await
        .expect("clearing the status");
    try_kubectl(&config, &["delete", "spiderippool", &first], "").expect("a pool not in use is deleted");

    registrations
        .delete(&label, &DeleteParams::default())
        .await
        .expect("unregistering the webhook");
    server.abort();
}
