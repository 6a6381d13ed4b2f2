//! Faults during a migration on the lab: whatever breaks, the guest ends
//! running on exactly one node and the agent says which.

use std::time::Duration;

use kvmotion_api::agent::JobPhase;
use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lab};

#[tokio::test]
async fn killing_the_target_libvirtd_mid_migration_fails_clearly_and_the_guest_stays_on_the_source()
{
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "fault-target", &GuestSpec::hot()).await;
    let before = guest.last_beat("node-a").expect("beating");

    let drive = Drive::new("fault-target-1", &guest, "node-a").held_back(30);
    let (code, body) = drive.start(&agents).await;
    assert_eq!(code, 200, "{body}");
    drive.wait_for_data(&agents, 8 << 20).await;

    lab(&["kill-libvirtd", "node-b"]);
    let (done, _) = drive.wait(&agents, Duration::from_secs(90)).await;
    lab(&["start-libvirtd", "node-b"]);

    assert_eq!(done.phase, JobPhase::Failed, "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("MigrationFailed"));
    assert!(
        !done.message.clone().unwrap_or_default().is_empty(),
        "{done:?}"
    );
    assert_eq!(done.vm_node.as_deref(), Some("node-a"), "{done:?}");
    guest.beats_on("node-a", before).await;
    // The restarted target daemon must not keep a half-arrived guest.
    kvmotion_tests::eventually(
        Duration::from_secs(30),
        "node-b to drop the incoming guest",
        || async { guest.state("node-b").is_none().then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: node-b reports {:?}", guest.state("node-b")));
}

#[tokio::test]
async fn cutting_the_migration_network_mid_migration_fails_it_and_the_guest_stays_on_the_source() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "fault-cut", &GuestSpec::hot()).await;
    let before = guest.last_beat("node-a").expect("beating");

    let drive = Drive::new("fault-cut-1", &guest, "node-a").held_back(30);
    let (code, body) = drive.start(&agents).await;
    assert_eq!(code, 200, "{body}");
    drive.wait_for_data(&agents, 8 << 20).await;

    lab(&["cut"]);
    // libvirt's keepalive between the daemons notices the dead link.
    let waited = std::panic::AssertUnwindSafe(drive.wait(&agents, Duration::from_secs(150)));
    let outcome = catching(waited).await;
    lab(&["restore"]);
    let (done, _) = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e));

    assert_eq!(done.phase, JobPhase::Failed, "{done:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-a"), "{done:?}");
    guest.beats_on("node-a", before).await;
    kvmotion_tests::eventually(
        Duration::from_secs(60),
        "node-b to drop the incoming guest",
        || async { guest.state("node-b").is_none().then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: node-b reports {:?}", guest.state("node-b")));
}

/// Runs `f`, catching a panic so the caller can restore the link first.
async fn catching<T>(
    f: std::panic::AssertUnwindSafe<impl std::future::Future<Output = T>>,
) -> Result<T, Box<dyn std::any::Any + Send>> {
    use futures::FutureExt;
    f.catch_unwind().await
}

#[tokio::test]
async fn restarting_the_source_libvirtd_mid_migration_fails_it_and_the_guest_runs_on_at_the_source()
{
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "fault-source", &GuestSpec::hot()).await;
    let before = guest.last_beat("node-a").expect("beating");

    let drive = Drive::new("fault-source-1", &guest, "node-a").held_back(30);
    let (code, body) = drive.start(&agents).await;
    assert_eq!(code, 200, "{body}");
    drive.wait_for_data(&agents, 8 << 20).await;

    // QEMU runs on while its libvirtd is away; the restarted daemon
    // re-attaches to it and cancels the outgoing migration.
    lab(&["kill-libvirtd", "node-a"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab(&["start-libvirtd", "node-a"]);
    let (done, _) = drive.wait(&agents, Duration::from_secs(120)).await;

    assert_eq!(done.phase, JobPhase::Failed, "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("MigrationFailed"), "{done:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-a"), "{done:?}");
    guest.beats_on("node-a", before).await;
    assert_eq!(guest.state("node-a").as_deref(), Some("running"));
    kvmotion_tests::eventually(
        Duration::from_secs(30),
        "node-b to drop the incoming guest",
        || async { guest.state("node-b").is_none().then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: node-b reports {:?}", guest.state("node-b")));
}
