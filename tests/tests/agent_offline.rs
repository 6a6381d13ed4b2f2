//! Offline moves through the agents on the lab: a shut-off VM's definition
//! and local disk (two-pass delta sync, identical content), and a running
//! VM that pauses, moves and resumes without a reboot.

use std::time::Duration;

use kvmotion_api::agent::JobPhase;
use kvmotion_api::migration::MigrationMode;
use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::lab::{DiskKind, Guest, GuestSpec, exclusive, lab, sha256};

#[tokio::test]
async fn a_shut_off_vm_moves_its_definition_and_an_identical_local_disk() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::default().local_disk().stamping();
    let guest = Guest::start("node-a", "off-defined", &spec).await;
    let before = guest
        .beats_on("node-a", guest.last_beat("node-a").expect("beating"))
        .await;
    lab(&["virsh", "node-a", "destroy", &guest.name]);
    let path = guest.disk.clone().expect("disk");
    let source_sum = sha256("node-a", &path);

    let mut drive =
        Drive::new("off-defined-1", &guest, "node-a").with_copied_disk(&guest, spec.disk_mib << 20);
    drive.mode = MigrationMode::Offline;
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(120)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-b"));
    assert!(
        guest.defined_on("node-b") && !guest.defined_on("node-a"),
        "the definition must move"
    );
    assert_eq!(
        sha256("node-b", &path),
        source_sum,
        "the disk differs after the sync"
    );
    assert!(
        done.actions
            .iter()
            .any(|a| a.starts_with("DiskSync(pass1 vda")),
        "{:?}",
        done.actions
    );

    // It boots on the target from the moved disk, a new boot.
    lab(&["virsh", "node-b", "start", &guest.name]);
    let after = kvmotion_tests::eventually(Duration::from_secs(60), "a boot on node-b", || async {
        guest.last_beat("node-b").filter(|b| b.boot != before.boot)
    })
    .await
    .unwrap();
    guest.beats_on("node-b", after).await;
}

#[tokio::test]
async fn a_running_vm_moved_offline_resumes_on_the_target_without_a_reboot() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    // Data on the disk gives the first pass real work.
    let spec = GuestSpec {
        disk: DiskKind::Local,
        stamp_disk: true,
        disk_mib: 256,
        prefill_mib: 64,
        ..GuestSpec::default()
    };
    let guest = Guest::start("node-a", "off-running", &spec).await;
    let before = guest.last_beat("node-a").expect("beating");

    let mut drive = Drive::new("off-running-1", &guest, "node-a");
    drive.mode = MigrationMode::Offline;
    drive = drive.with_copied_disk(&guest, spec.disk_mib << 20);
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(180)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    let after = guest.beats_on("node-b", before).await;
    assert_eq!(after.boot, before.boot, "the guest rebooted");
    assert_eq!(
        guest.state("node-a"),
        None,
        "the source still has the domain"
    );
    let sent = |pass: &str| -> u64 {
        let a = done
            .actions
            .iter()
            .find(|a| a.starts_with(&format!("DiskSync({pass} vda")))
            .unwrap_or_else(|| panic!("no {pass} in {:?}", done.actions));
        a.split(", ")
            .nth(1)
            .and_then(|b| b.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    assert!(
        sent("pass2") < sent("pass1") / 4,
        "the stopped pass must send only changes: {:?}",
        done.actions
    );
    let result = done.result.expect("result");
    assert!(result.downtime_ms > 0, "{result:?}");
}

#[tokio::test]
async fn a_running_vm_on_shared_storage_moves_offline_paused_and_resumes() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "off-shared", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");
    let mut drive = Drive::new("off-shared-1", &guest, "node-a");
    drive.mode = MigrationMode::Offline;
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(60)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    let after = guest.beats_on("node-b", before).await;
    assert_eq!(after.boot, before.boot);
    assert_eq!(guest.state("node-a"), None);
}
