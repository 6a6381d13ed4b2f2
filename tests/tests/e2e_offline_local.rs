//! End to end: an offline migration of a shut-off VM with a node-local
//! disk moves its definition and an identical copy of the disk.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, phases};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lab, sha256};
use serde_json::json;

#[tokio::test]
async fn an_offline_migration_moves_a_shut_off_vm_and_its_local_disk() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-offline-local", &[]).await;
    let spec = GuestSpec::default().local_disk().stamping();
    let guest = Guest::start("node-a", "e2e-off", &spec).await;
    guest
        .beats_on("node-a", guest.last_beat("node-a").expect("beating"))
        .await;
    lab(&["virsh", "node-a", "destroy", &guest.name]);
    let path = guest.disk.clone().expect("disk");
    let sum = sha256("node-a", &path);
    rig.wait_inventory("node-a", "e2e-off").await;

    let name = rig.migrate(
        "offline",
        json!({"vm": {"name": "e2e-off"}, "targetNode": "node-b", "mode": "Offline"}),
    );
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(120))
        .await;

    assert_eq!(
        phases(&status).last().map(String::as_str),
        Some("Succeeded")
    );
    assert_eq!(condition(&status, "Completed").1, "Succeeded");
    let (_, _, prechecked) = condition(&status, "Prechecked");
    assert!(prechecked.contains("disks copied: vda"), "{prechecked}");
    assert!(guest.defined_on("node-b"), "the definition moved");
    assert!(
        !guest.defined_on("node-a"),
        "the source keeps no definition"
    );
    assert_eq!(
        sha256("node-b", &path),
        sum,
        "the disk differs after the move"
    );
    rig.expect_events(&name, &["Succeeded"]).await;
}
