//! End to end: failed prechecks end in Failed with a reason a person can
//! act on, and nothing is touched.

use std::time::Duration;

use kube::Api;
use kvmotion_api::hypervisor::Hypervisor;
use kvmotion_tests::e2e::{Rig, condition};
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lab};
use serde_json::json;

#[tokio::test]
async fn prechecks_fail_with_a_reason_for_unknown_vm_unready_target_and_same_node() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-prechecks", &[]).await;
    let guest = Guest::start("node-a", "e2e-pre", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-pre").await;

    // Unknown VM.
    let unknown = rig.migrate(
        "unknown",
        json!({"vm": {"name": "no-such-vm"}, "targetNode": "node-b"}),
    );
    let s = rig
        .wait_phase(&unknown, "Failed", Duration::from_secs(30))
        .await;
    let (_, reason, message) = condition(&s, "Completed");
    assert_eq!(reason, "VMNotFound", "{message}");
    assert!(message.contains("check spec.vm"), "{message}");

    // Same node: the selector matches only the VM's own node.
    let out = rig.scope.kubectl(
        &[
            "label",
            "hypervisor",
            "node-a",
            &format!("kvmotion.io/e2e-rack={}", rig.scope.id),
            "--overwrite",
        ],
        None,
    );
    assert!(out.ok, "{}", out.stderr);
    let same = rig.migrate(
        "same",
        json!({"vm": {"name": "e2e-pre"}, "targetSelector": {"matchLabels": {"kvmotion.io/e2e-rack": rig.scope.id}}}),
    );
    let s = rig
        .wait_phase(&same, "Failed", Duration::from_secs(30))
        .await;
    let (_, reason, message) = condition(&s, "Completed");
    assert_eq!(reason, "SameNode", "{message}");
    let _ = rig.scope.kubectl(
        &["label", "hypervisor", "node-a", "kvmotion.io/e2e-rack-"],
        None,
    );

    // Target not ready: node-b's libvirtd is down, its agent says so.
    lab(&["kill-libvirtd", "node-b"]);
    let api: Api<Hypervisor> = Api::all(rig.scope.cp.client().await);
    eventually(
        Duration::from_secs(60),
        "node-b to be not Ready",
        || async {
            let hv = api.get("node-b").await.ok()?;
            hv.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    let unready = rig.migrate(
        "unready",
        json!({"vm": {"name": "e2e-pre"}, "targetNode": "node-b"}),
    );
    let s = rig
        .wait_phase(&unready, "Failed", Duration::from_secs(30))
        .await;
    lab(&["start-libvirtd", "node-b"]);
    let (_, reason, message) = condition(&s, "Completed");
    assert_eq!(reason, "TargetNotReady", "{message}");
    assert!(message.contains("node-b"), "{message}");

    for name in [&unknown, &same, &unready] {
        let s = rig.status(name).await.expect("status");
        let want = condition(&s, "Completed").1;
        rig.expect_events(name, &[want.as_str()]).await;
    }
    assert!(
        guest.last_beat("node-a").is_some(),
        "the guest still runs on node-a"
    );
    assert_eq!(guest.state("node-b"), None);
}
