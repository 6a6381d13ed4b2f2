//! End to end: deleting a migration in flight aborts its job; the VM keeps
//! running on the source and an Event records the cancellation.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, migration};
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

/// Overrides that keep a job running until it is stopped.
fn held_back() -> serde_json::Value {
    json!({"bandwidthMiBps": 1, "postCopy": false, "progressTimeoutSeconds": 0,
           "completionTimeoutPerGiBSeconds": 0, "onTimeout": "Abort"})
}

#[tokio::test]
async fn deleting_an_in_flight_migration_aborts_it_and_the_vm_stays_on_the_source() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-cancel", &[]).await;
    let guest = Guest::start("node-a", "e2e-cancel", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-cancel").await;

    let name = rig.migrate(
        "cancel",
        json!({"vm": {"name": "e2e-cancel"}, "targetNode": "node-b", "overrides": held_back()}),
    );
    rig.wait_moving(&name).await;
    let before = guest.last_beat("node-a").expect("beating");

    let out = rig
        .scope
        .kubectl(&["delete", "vmm", &name, "--wait=false"], None);
    assert!(out.ok, "{}", out.stderr);
    eventually(
        Duration::from_secs(60),
        "the migration to be gone",
        || async { migration(&rig.scope, &name).await.is_none().then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));

    guest.beats_on("node-a", before).await;
    assert_eq!(guest.state("node-b"), None, "the target holds no domain");
    rig.expect_events(&name, &["Cancelled", "VMLocated"]).await;
}
