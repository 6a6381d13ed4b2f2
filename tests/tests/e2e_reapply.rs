//! End to end: GitOps re-applies are harmless. Re-applying the same object
//! changes nothing; applying it again after it was deleted ends at once
//! with AlreadyOnTarget.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, phases};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

#[tokio::test]
async fn re_applying_after_success_is_harmless_and_ends_already_on_target() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-reapply", &[]).await;
    let guest = Guest::start("node-a", "e2e-reapply", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-reapply").await;
    let before = guest.last_beat("node-a").expect("beating on node-a");
    let spec = json!({"vm": {"name": "e2e-reapply"}, "targetNode": "node-b"});

    let name = rig.migrate("gitops", spec.clone());
    let first = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(120))
        .await;
    // Succeeded can be seen before the guest's first beat on node-b.
    let after = guest.beats_on("node-b", before).await;

    // The same manifest again: unchanged object, unchanged status.
    assert_eq!(rig.migrate("gitops", spec.clone()), name);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rig.status(&name).await.as_ref(),
        Some(&first),
        "a re-apply changed the status"
    );

    // Pruned and applied again: the VM is already there.
    let out = rig
        .scope
        .kubectl(&["delete", "vmm", &name, "--wait=true"], None);
    assert!(out.ok, "{}", out.stderr);
    rig.wait_inventory("node-b", "e2e-reapply").await;
    let again = rig.migrate("gitops", spec);
    let status = rig
        .wait_phase(&again, "Succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(phases(&status), ["Pending", "Succeeded"], "{status:#}");
    let (ok, reason, message) = condition(&status, "Completed");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("True", "AlreadyOnTarget"),
        "{message}"
    );
    guest.beats_on("node-b", after).await;
    rig.expect_events(&again, &["AlreadyOnTarget"]).await;
}
