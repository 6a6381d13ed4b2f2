//! The Helm chart's renders against the real API server: the defaults and the
//! optional objects are accepted by a server-side dry run, and the controller
//! and agent pods meet the Pod Security levels the chart's namespace sets.
//! That the pods then run (mounts, privileges, probes, the projected
//! tokens, the host network) is proven on the lab's kubelets by
//! `cluster_install`, `cluster_upgrade` and `cluster_faults`.

use kvmotion_tests::chart::{
    NAMESPACE, args_of, assert_server_accepts, documents, find, objects, parse, render, run,
};
use kvmotion_tests::{Output, control_plane};
use serde_json::{Value, json};

#[test]
fn the_default_render_is_accepted_by_the_api_server() {
    let stream = render(&[]);
    let kinds: Vec<String> = objects(&stream)
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    for kind in [
        "Deployment",
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Service",
        "PodDisruptionBudget",
        "MigrationPolicy",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} in the default render: {kinds:?}"
        );
    }
    assert!(
        !kinds
            .iter()
            .any(|k| k == "ServiceMonitor" || k == "Namespace"),
        "the default render has no ServiceMonitor and no Namespace: {kinds:?}"
    );
    assert_server_accepts(&stream, "default");
}

#[test]
fn the_render_with_service_monitors_pdb_tls_and_the_drain_guard_is_accepted_and_scrapes_the_metrics_services()
 {
    let stream = render(&[
        "--set",
        "serviceMonitor.enabled=true,controller.podDisruptionBudget.enabled=true,\
         tls.enabled=true,tls.secretName=agent-tls,namespace.create=true,\
         controller.drainGuard.enabled=true,controller.evacuateOnCordon.enabled=true",
    ]);
    // The test API server has no Prometheus Operator CRDs: ServiceMonitors
    // are checked here, everything else by the server.
    let (monitors, rest): (Vec<String>, Vec<String>) = documents(&stream)
        .into_iter()
        .partition(|d| d.contains("\nkind: ServiceMonitor\n"));
    assert_eq!(monitors.len(), 2, "a ServiceMonitor per component");
    let rest = rest.iter().map(|d| format!("---\n{d}")).collect::<String>();
    assert_server_accepts(&rest, "ServiceMonitor/PDB/TLS");

    let objs = objects(&rest);
    let services: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "Service").collect();
    for monitor in monitors.iter().map(|m| parse(m)) {
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(monitor["metadata"]["namespace"], NAMESPACE);
        let selector = monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("a matchLabels selector");
        let endpoint = &monitor["spec"]["endpoints"][0];
        let service = services
            .iter()
            .find(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
            })
            .unwrap_or_else(|| panic!("no Service matches {selector:?}"));
        let ports = service["spec"]["ports"].as_array().expect("ports");
        assert!(
            ports.iter().any(|p| p["name"] == endpoint["port"]),
            "{} has no port {}",
            service["metadata"]["name"],
            endpoint["port"]
        );
        assert_eq!(endpoint["path"], "/metrics");
        let is_agent = monitor["metadata"]["name"] == "kvmotion-agent";
        let scheme = endpoint["scheme"].as_str().unwrap_or("http");
        assert_eq!(
            scheme,
            if is_agent { "https" } else { "http" },
            "with TLS only the agents serve https"
        );
    }
    let pdb = find(&objs, "PodDisruptionBudget", "kvmotion-controller");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let agent = find(&objs, "DaemonSet", "kvmotion-agent");
    let args = args_of(agent);
    assert!(
        args.iter().any(|a| a.starts_with("--tls-cert=")),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a.starts_with("--peer-ca-file=")),
        "{args:?}"
    );
    let controller = find(&objs, "Deployment", "kvmotion-controller");
    assert!(
        args_of(controller)
            .iter()
            .any(|a| a.starts_with("--agent-ca-file=")),
        "the controller verifies agents with the CA"
    );
}

/// A Pod made of a workload's pod template, in `namespace`.
fn pod_of(workload: &Value, namespace: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{}-pss", workload["metadata"]["name"].as_str().unwrap_or("pod")),
            "namespace": namespace,
        },
        "spec": workload["spec"]["template"]["spec"],
    })
    .to_string()
}

fn create_pod_dry_run(pod: &str) -> Output {
    run(
        "kubectl",
        &["create", "--dry-run=server", "-f", "-"],
        Some(pod),
    )
    .1
}

#[test]
fn the_controller_meets_the_restricted_pod_security_level_and_the_agent_needs_privileged() {
    let cp = control_plane();
    let restricted = "kvmotion-chart-restricted";
    cp.ensure_namespace(restricted);
    let (_, out) = run(
        "kubectl",
        &[
            "label",
            "--overwrite",
            "namespace",
            restricted,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    assert!(out.ok, "{}", out.stderr);
    // The rendered namespace carries the level the agent needs.
    let (_, out) = run(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&render(&[
            "--set",
            "namespace.create=true",
            "--show-only",
            "templates/namespace.yaml",
        ])),
    );
    assert!(out.ok, "{}", out.stderr);

    // Pods are admitted only with their service account present (the
    // ServiceAccount admission plugin), before the Pod Security check.
    for ns in [restricted, NAMESPACE] {
        for sa in ["kvmotion-controller", "kvmotion-agent"] {
            let (_, out) = run("kubectl", &["create", "serviceaccount", sa, "-n", ns], None);
            assert!(
                out.ok || out.stderr.contains("already exists"),
                "{}",
                out.stderr
            );
        }
    }

    let objs = objects(&render(&[]));
    let controller = find(&objs, "Deployment", "kvmotion-controller");
    let agent = find(&objs, "DaemonSet", "kvmotion-agent");

    let out = create_pod_dry_run(&pod_of(controller, restricted));
    assert!(
        out.ok,
        "the controller pod violates the restricted level: {}",
        out.stderr
    );
    let out = create_pod_dry_run(&pod_of(agent, restricted));
    assert!(!out.ok, "the agent pod passed the restricted level");
    for violation in ["hostNetwork", "hostPath", "runAsNonRoot"] {
        assert!(
            out.stderr.contains(violation),
            "the restricted level refuses the agent for {violation}: {}",
            out.stderr
        );
    }
    let out = create_pod_dry_run(&pod_of(agent, NAMESPACE));
    assert!(
        out.ok,
        "the agent pod is refused in the chart's namespace: {}",
        out.stderr
    );

    // Root, but no more than it needs.
    let sc = &agent["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], json!(["DAC_OVERRIDE"]));
}
