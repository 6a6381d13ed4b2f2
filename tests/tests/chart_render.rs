//! What the Helm chart renders: the controller Deployment and the agent
//! DaemonSet are wired to each other's identities and tokens under any
//! release name, each runs where and as it must, and TLS needs its Secret.

use kvmotion_tests::chart::{
    AGENT, CONTROLLER, NAMESPACE, args_of, env_field_path, find, flag, helm, objects, render,
    render_release,
};
use serde_json::Value;

#[test]
fn tls_without_a_secret_name_fails_the_render_with_a_message() {
    let out = helm(&[
        "template",
        "kvmotion",
        "charts/kvmotion",
        "--set",
        "tls.enabled=true",
    ]);
    assert!(!out.ok, "rendered TLS without a Secret:\n{}", out.stdout);
    assert!(
        out.stderr.contains("tls.secretName is required"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_agents_trust_exactly_the_accounts_the_chart_renders_under_any_release_name() {
    for (release, namespace, prefix) in [
        ("kvmotion", NAMESPACE, "kvmotion"),
        ("lab", "virt-ops", "lab-kvmotion"),
    ] {
        let objs = objects(&render_release(release, namespace, &[]));
        let controller = find(&objs, "Deployment", &format!("{prefix}-controller"));
        let agent = find(&objs, "DaemonSet", &format!("{prefix}-agent"));
        let account = |w: &Value| {
            let sa = w["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .expect("a serviceAccountName");
            find(&objs, "ServiceAccount", sa);
            format!("system:serviceaccount:{namespace}:{sa}")
        };
        let agent_args = args_of(agent);
        assert_eq!(
            flag(&agent_args, "--controller-identity"),
            account(controller),
            "release {release}: agents trust the controller's account"
        );
        assert_eq!(
            flag(&agent_args, "--peer-identity"),
            account(agent),
            "release {release}: agents trust each other's account"
        );
        // The defaults of the two binaries name the default release's
        // accounts, so that release needs no flags at all to work.
        if release == "kvmotion" {
            assert_eq!(account(controller), CONTROLLER);
            assert_eq!(account(agent), AGENT);
        }
        let controller_args = args_of(controller);
        assert_eq!(flag(&controller_args, "--agent-namespace"), namespace);

        // Both tokens are projected for the audience the agents check, live
        // an hour, and are mounted where the flags point.
        let audience = flag(&agent_args, "--token-audience");
        assert_eq!(audience, "kvmotion-agent");
        for (workload, token_flag, args) in [
            (controller, "--agent-token-file", &controller_args),
            (agent, "--peer-token-file", &agent_args),
        ] {
            let pod = &workload["spec"]["template"]["spec"];
            let token = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find_map(|v| {
                    let source = &v["projected"]["sources"][0]["serviceAccountToken"];
                    source
                        .is_object()
                        .then(|| (v["name"].clone(), source.clone()))
                })
                .expect("a projected service-account token volume");
            assert_eq!(token.1["audience"], audience);
            assert_eq!(token.1["expirationSeconds"], 3600);
            let mount = pod["containers"][0]["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .find(|m| m["name"] == token.0)
                .expect("the token volume is mounted");
            assert_eq!(
                flag(args, token_flag),
                format!(
                    "{}/{}",
                    mount["mountPath"].as_str().expect("a mountPath"),
                    token.1["path"].as_str().expect("a token path")
                )
            );
        }
    }
}

#[test]
fn the_controller_runs_two_leader_elected_replicas_probed_on_its_http_port() {
    let objs = objects(&render(&[]));
    let controller = find(&objs, "Deployment", "kvmotion-controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    assert_eq!(env_field_path(controller, "POD_NAME"), "metadata.name");
    assert_eq!(
        env_field_path(controller, "POD_NAMESPACE"),
        "metadata.namespace"
    );
    let container = &controller["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["name"], "metrics");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(
        flag(&args_of(controller), "--http-addr"),
        "0.0.0.0:8080",
        "the probes and the metrics port point at the port it serves"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // A standby's /readyz is ready too (controller/src/http.rs), so readiness
    // does not depend on leadership.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for limit in ["cpu", "memory"] {
        assert!(container["resources"]["requests"][limit].is_string());
        assert!(container["resources"]["limits"][limit].is_string());
    }
}

#[test]
fn an_agent_runs_on_each_hypervisors_host_network_next_to_libvirt() {
    let objs = objects(&render(&[]));
    let agent = find(&objs, "DaemonSet", "kvmotion-agent");
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["nodeSelector"]["kvmotion.io/hypervisor"], "true");
    assert_eq!(env_field_path(agent, "NODE_NAME"), "spec.nodeName");
    assert_eq!(env_field_path(agent, "HOST_IP"), "status.hostIP");
    assert_eq!(
        flag(&args_of(agent), "--migration-address"),
        "$(HOST_IP)",
        "the migration address is the node's IP by default"
    );
    let libvirt = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "libvirt-run")
        .expect("the libvirt socket volume");
    assert_eq!(libvirt["hostPath"]["path"], "/var/run/libvirt");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == "libvirt-run")
        .expect("the libvirt socket directory is mounted");
    assert_eq!(
        mount["mountPath"], "/var/run/libvirt",
        "libvirt's client looks for the socket where the host has it"
    );
}
