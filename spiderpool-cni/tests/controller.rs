//! `spiderpool controller` against a real API server: it makes its webhook certificate,
//! registers its validating webhook, and the API server then refuses invalid pools with the
//! engine's messages. Alone in its test binary: while the registration exists, every pool
//! write in the cluster goes through this controller.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use spiderpool_check::kit::apiserver::{forget_earlier_pools, install_crds, kubeconfig, kubectl, unique};
use spiderpool_check::kit::plugin::plugin;

/// `spiderpool controller` with its self-registered webhook; on drop (also when the test
/// fails) the process is killed and the registration deleted, so that no other test's pool
/// writes meet a webhook that is gone.
struct Controller {
    child: Child,
    config: std::path::PathBuf,
    registration: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        // The registration first, and a moment for the API server to drop it: it must not be
        // left calling a stopped server.
        let _ = spiderpool_check::kit::apiserver::try_kubectl(
            &self.config,
            &[
                "delete",
                "validatingwebhookconfiguration",
                &self.registration,
                "--ignore-not-found",
            ],
            "",
        );
        std::thread::sleep(Duration::from_secs(1));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_controller_registers_its_webhook_and_refuses_invalid_pools() {
    let Some(config) = kubeconfig("the_controller_registers_its_webhook_and_refuses_invalid_pools") else {
        return;
    };
    install_crds(&config);
    // A registration an earlier failed run could not delete.
    let listed = kubectl(
        &config,
        &["get", "validatingwebhookconfigurations", "-o", "name"],
        "",
    );
    for earlier in listed.lines().filter(|name| name.contains("/ctlwh-")) {
        kubectl(&config, &["delete", earlier, "--ignore-not-found"], "");
    }
    forget_earlier_pools(&config, "ctlwh");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        probe.local_addr().expect("its address").port()
    };
    let registration = unique("ctlwh");
    let child = Command::new(plugin())
        .args([
            "controller",
            "--gc-interval-seconds",
            "3600",
            "--webhook-self-signed",
        ])
        .arg("--kubeconfig")
        .arg(&config)
        .args(["--webhook-listen", &format!("127.0.0.1:{port}")])
        .args(["--webhook-url", &format!("https://127.0.0.1:{port}/validate")])
        .args(["--webhook-configuration", &registration])
        .stdout(Stdio::null())
        .spawn()
        .expect("the controller starts");
    let _controller = Controller {
        child,
        config: config.clone(),
        registration: registration.clone(),
    };
    let pool = format!(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: {registration}\n  \
         labels:\n    spiderpool-test: ctlwh\nspec:\n  subnet: 10.130.0.0/16\n  ips:\n  - 10.131.0.1\n"
    );
    spiderpool_check::kit::apiserver::wait_for_webhook(&config, &pool);
    let refusal = spiderpool_check::kit::apiserver::try_kubectl(&config, &["apply", "-f", "-"], &pool)
        .expect_err("the invalid pool is refused");
    assert!(
        refusal.contains("spec.ips[0]: 10.131.0.1 is outside subnet 10.130.0.0/16"),
        "{refusal}"
    );
}
