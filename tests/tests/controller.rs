//! The controller as a real process against the real apiserver, without
//! agents: it accepts new migrations through the status subresource, fails
//! what it cannot act on with a reason, elects one leader, and serves
//! health and metrics.

use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use kvmotion_api::VirtualMachineMigration;
use kvmotion_tests::{ControllerProcess, Scope, eventually};
use serde_json::json;

const LEASE_NS: &str = "kvmotion-tests";

fn start(scope: &Scope, lease: &str, identity: &str, extra: &[&str]) -> ControllerProcess {
    scope.cp.ensure_namespace(LEASE_NS);
    let selector = format!("{}={}", kvmotion_tests::scope::SCOPE_LABEL, scope.id);
    let mut args = vec!["--migration-selector", selector.as_str()];
    args.extend_from_slice(extra);
    ControllerProcess::start(scope.cp, LEASE_NS, lease, &scope.name(identity), &args)
}

fn create(scope: &Scope, base: &str, spec: serde_json::Value) -> String {
    let manifest = kvmotion_tests::e2e::migration_manifest(base, spec);
    let (obj, name) = scope.adopt(&manifest.to_string());
    let out = scope.kubectl(&["create", "-f", "-"], Some(&obj.to_string()));
    assert!(out.ok, "creating {name}: {}", out.stderr);
    name
}

async fn status_of(scope: &Scope, name: &str) -> Option<serde_json::Value> {
    let api: Api<DynamicObject> = Api::all_with(
        scope.cp.client().await,
        &ApiResource::erase::<VirtualMachineMigration>(&()),
    );
    api.get(name)
        .await
        .ok()
        .and_then(|o| o.data.get("status").cloned())
}

async fn wait_for_phase(scope: &Scope, name: &str, phase: &str) -> serde_json::Value {
    eventually(
        Duration::from_secs(30),
        &format!("{name} to reach {phase}"),
        || async { status_of(scope, name).await.filter(|s| s["phase"] == phase) },
    )
    .await
    .unwrap()
}

/// Waits until the controller wrote any status (it reconciled the object).
async fn wait_for_status(scope: &Scope, name: &str) -> serde_json::Value {
    eventually(
        Duration::from_secs(30),
        &format!("{name} to get a status"),
        || async {
            status_of(scope, name)
                .await
                .filter(|s| s["phase"].is_string())
        },
    )
    .await
    .unwrap()
}

fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn a_new_migration_is_accepted_then_fails_on_an_unknown_vm_through_the_status_subresource() {
    let scope = Scope::new("accept-pending");
    let controller = start(&scope, &scope.name("lease"), "ctl", &[]);
    let name = create(
        &scope,
        "accept",
        json!({"vm": {"name": "no-such-vm-anywhere"}, "targetNode": "node-b"}),
    );

    let status = wait_for_phase(&scope, &name, "Failed").await;
    let accepted = condition(&status, "Accepted");
    assert_eq!(accepted["status"], "True", "{status}");
    assert_eq!(accepted["reason"], "Accepted");
    assert_eq!(status["observedGeneration"], 1);
    let phases: Vec<&str> = status["phaseTransitionTimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["Pending", "Scheduling", "Failed"], "{status}");
    let scheduled = condition(&status, "Scheduled");
    assert_eq!(scheduled["reason"], "VMNotFound", "{status}");
    assert_eq!(condition(&status, "Completed")["reason"], "VMNotFound");

    // The status belongs to the controller's field manager, on the status
    // subresource: server-side apply, not a full-object update.
    let out = scope.kubectl(
        &["get", "vmm", &name, "--show-managed-fields", "-o", "json"],
        None,
    );
    let obj: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let managers = obj["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields");
    assert!(
        managers
            .iter()
            .any(|m| m["manager"] == "kvmotion-controller"
                && m["operation"] == "Apply"
                && m["subresource"] == "status"),
        "{managers:?}"
    );
    // forceComplete bumps the generation; the controller acknowledges it.
    scope.force_complete(&name);
    eventually(Duration::from_secs(30), "observedGeneration 2", || async {
        status_of(&scope, &name)
            .await
            .filter(|s| s["observedGeneration"] == 2)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", controller.log_text()));
}

#[tokio::test]
async fn a_selector_the_controller_cannot_use_fails_with_invalid_spec() {
    let scope = Scope::new("invalid-selector");
    let _controller = start(&scope, &scope.name("lease"), "ctl", &[]);
    // Admission cannot check operators or label-key syntax inside a label
    // selector; the controller must, and say which part is wrong.
    let name = create(
        &scope,
        "bad-selector",
        json!({"vm": {"name": "web-1"},
               "targetSelector": {"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]}}),
    );
    let status = wait_for_phase(&scope, &name, "Failed").await;
    let accepted = condition(&status, "Accepted");
    assert_eq!(accepted["status"], "False", "{status}");
    assert_eq!(accepted["reason"], "InvalidSpec");
    let message = accepted["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("spec.targetSelector.matchExpressions[0].operator: \"Near\""),
        "{message}"
    );
    assert!(status["completionTime"].is_string(), "{status}");
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_when_it_stops() {
    let scope = Scope::new("leader-election");
    let lease = scope.name("lease");
    let mut first = start(&scope, &lease, "first", &[]);
    first.wait_leading(Duration::from_secs(30)).await;
    let second = start(&scope, &lease, "second", &[]);
    second.wait_ready().await;

    let before = create(&scope, "while-first-leads", json!({"vm": {"name": "a"}}));
    wait_for_status(&scope, &before).await;
    let ok = r#"kvmotion_controller_reconciliations_total{result="ok"}"#;
    assert!(
        first.metric(ok).await.unwrap_or(0.0) >= 1.0,
        "the leader reconciled"
    );
    assert_eq!(second.metric("kvmotion_controller_leader").await, Some(0.0));
    assert_eq!(
        second.metric(ok).await,
        None,
        "the standby must not reconcile:\n{}",
        second.log_text()
    );

    // A graceful stop releases the Lease, so the standby takes over at once.
    let code = first.terminate().await;
    assert_eq!(
        code,
        Some(0),
        "the leader exits cleanly:\n{}",
        first.log_text()
    );
    second.wait_leading(Duration::from_secs(20)).await;
    let after = create(&scope, "after-takeover", json!({"vm": {"name": "b"}}));
    wait_for_status(&scope, &after).await;
    assert!(second.metric(ok).await.unwrap_or(0.0) >= 1.0);
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_once_its_lease_expires() {
    let scope = Scope::new("leader-crash");
    let lease = scope.name("lease");
    let short = [
        "--lease-duration-seconds",
        "4",
        "--lease-grace-seconds",
        "1",
    ];
    let mut first = start(&scope, &lease, "first", &short);
    first.wait_leading(Duration::from_secs(30)).await;
    let second = start(&scope, &lease, "second", &short);
    second.wait_ready().await;
    assert_eq!(second.metric("kvmotion_controller_leader").await, Some(0.0));
    first.kill().await; // no chance to release the Lease
    second.wait_leading(Duration::from_secs(30)).await;
    let name = create(&scope, "after-crash", json!({"vm": {"name": "c"}}));
    wait_for_status(&scope, &name).await;
}

#[tokio::test]
async fn health_readiness_metrics_and_json_logs_are_served() {
    let scope = Scope::new("health");
    let controller = start(
        &scope,
        &scope.name("lease"),
        "ctl",
        &["--log-format", "json"],
    );
    let (code, body) = eventually(Duration::from_secs(30), "/readyz", || async {
        controller
            .get("/readyz")
            .await
            .ok()
            .filter(|(c, _)| *c == 200)
    })
    .await
    .unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, _) = controller.get("/healthz").await.expect("/healthz");
    assert_eq!(code, 200);
    let (code, metrics) = controller.get("/metrics").await.expect("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("# TYPE kvmotion_controller_leader gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kvmotion_controller_reconcile_duration_seconds"),
        "{metrics}"
    );

    let log = controller.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log output");
    for line in lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            parsed["level"].is_string() && parsed["timestamp"].is_string(),
            "{line}"
        );
    }
}
