//! The CRDs install into a real kube-apiserver, become Established, and are
//! self-describing for `kubectl explain` and `kubectl get`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kvmotion_tests::{Scope, control_plane};

#[tokio::test]
async fn crds_install_and_become_established() {
    let client = control_plane().client().await;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for name in [
        "virtualmachinemigrations.kvmotion.io",
        "migrationpolicies.kvmotion.io",
        "hypervisors.kvmotion.io",
    ] {
        let crd = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            let c = conditions.iter().find(|c| c.type_ == wanted);
            assert_eq!(
                c.map(|c| c.status.as_str()),
                Some("True"),
                "{name}: {wanted} in {conditions:?}"
            );
        }
        assert_eq!(crd.spec.scope, "Cluster", "{name} is cluster-scoped");
    }
}

#[tokio::test]
async fn kubectl_explain_shows_field_descriptions() {
    let cp = control_plane();
    let out = cp.kubectl(&["explain", "vmm.spec.overrides.maxDowntimeMs"], None);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("Longest pause of the guest allowed at switch-over"),
        "{}",
        out.stdout
    );
    let out = cp.kubectl(
        &["explain", "hypervisors.status.domains.disks.shared"],
        None,
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("storage every node sees"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn short_name_category_and_printer_columns_work() {
    let scope = Scope::new("printer-columns");
    let (obj, name) = scope.adopt(include_str!("../../config/samples/live-migration.yaml"));
    let out = scope.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(out.ok, "{}", out.stderr);
    let out = scope.kubectl(
        &[
            "get",
            "kvmotion",
            "-l",
            &format!("kvmotion.io/test-scope={}", scope.id),
        ],
        None,
    );
    assert!(out.ok, "{}", out.stderr);
    let header = out.stdout.lines().next().unwrap_or_default();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["NAME", "PHASE", "VM", "SOURCE", "TARGET", "PROGRESS", "AGE"],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&name), "{}", out.stdout);
    let out = scope.kubectl(
        &["get", "vmm", &name, "-o", "jsonpath={.spec.vm.name}"],
        None,
    );
    assert_eq!(out.stdout, "web-1", "{}", out.stderr);
}
