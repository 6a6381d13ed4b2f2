//! Agents killed (SIGKILL) and restarted mid-migration, as a DaemonSet
//! rollout or a crash does it: the restarted agent reads its records back,
//! monitors the job libvirt still runs (force-complete and abort work on
//! it), concludes one that ended meanwhile from libvirt, and still cleans
//! up what prepare created. The guest ends on exactly one node.

use std::time::Duration;

use kvmotion_api::agent::{JobPhase, JobStatus};
use kvmotion_api::migration::MigrationMode;
use kvmotion_tests::agent::{AgentProcess, Agents, Drive};
use kvmotion_tests::lab::{DiskKind, Guest, GuestSpec, exclusive, exists};

/// Kills the agent of `node` and starts it again on its state directory.
async fn restart(agents: &mut Agents, node: &str, label: &str) {
    let agent = if node == "node-a" {
        &mut agents.a
    } else {
        &mut agents.b
    };
    agent.kill().await;
    *agent = AgentProcess::restart(node, label, &[]).await;
}

async fn job(agents: &Agents, node: &str, id: &str) -> (u16, serde_json::Value) {
    agents
        .on(node)
        .as_controller("GET", &format!("/v1/migrations/{id}"), None)
        .await
}

#[tokio::test]
async fn a_source_agent_restarted_mid_pre_copy_adopts_the_job_and_force_completes_it() {
    let _lab = exclusive().await;
    let mut agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "restart-live", &GuestSpec::hot()).await;
    let before = guest.last_beat("node-a").expect("beating");

    // Held back: it cannot finish on its own while the agent is away.
    let drive = Drive::new("restart-live-1", &guest, "node-a").held_back(30);
    let (code, body) = drive.start(&agents).await;
    assert_eq!(code, 200, "{body}");
    drive.wait_for_data(&agents, 8 << 20).await;

    restart(&mut agents, "node-a", "restart-live").await;
    let (code, adopted) = job(&agents, "node-a", &drive.id).await;
    assert_eq!(
        code, 200,
        "the restarted agent must know the job: {adopted}"
    );
    let adopted: JobStatus = serde_json::from_value(adopted).expect("status");
    assert_eq!(adopted.phase, JobPhase::Running, "{adopted:?}");
    assert!(
        adopted.actions.iter().any(|a| a.starts_with("Adopted")),
        "{adopted:?}"
    );
    // The adopted job is monitored: progress moves again.
    drive
        .wait_for_data(&agents, adopted.progress.data_processed_bytes + (4 << 20))
        .await;

    let (code, body) = agents
        .on("node-a")
        .as_controller(
            "POST",
            &format!("/v1/migrations/{}/force-complete", drive.id),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(90)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-b"), "{done:?}");
    assert!(
        done.actions.iter().any(|a| a == "Pause"),
        "{:?}",
        done.actions
    );
    assert!(
        done.result
            .as_ref()
            .is_some_and(|r| r.data_transferred_bytes > 0),
        "{done:?}"
    );
    guest.beats_on("node-b", before).await;
    assert_eq!(
        guest.state("node-a"),
        None,
        "the source still has the domain"
    );
    assert!(guest.defined_on("node-b"));
}

#[tokio::test]
async fn a_source_agent_restarted_after_the_job_ended_reports_the_true_outcome() {
    let _lab = exclusive().await;
    let mut agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "restart-ended", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");

    // Capped so that it runs for seconds, yet converges on its own. The
    // guest's memory is mostly zero pages, which cost nothing to send: at
    // 30 MiB/s the whole move took 2 s, sometimes ending before 8 MiB
    // were seen.
    let mut drive = Drive::new("restart-ended-1", &guest, "node-a");
    drive.tuning.bandwidth_mibps = 8;
    let (code, body) = drive.start(&agents).await;
    assert_eq!(code, 200, "{body}");
    drive.wait_for_data(&agents, 1 << 20).await;
    // libvirt's job runs on in libvirtd and ends while the agent is away.
    agents.a.kill().await;
    kvmotion_tests::eventually(Duration::from_secs(60), "the guest to arrive", || async {
        (guest.state("node-a").is_none() && guest.state("node-b").as_deref() == Some("running"))
            .then_some(())
    })
    .await
    .unwrap();
    agents.a = AgentProcess::restart("node-a", "restart-ended", &[]).await;

    let (done, _) = drive.wait(&agents, Duration::from_secs(30)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-b"), "{done:?}");
    // The source's copy of the domain is gone with its statistics. The
    // target's libvirt may still have those of the job it completed (11.x
    // keeps them; 12.9 keeps none once the client that started the job is
    // gone): then they are reported, else their loss is said, never zeros
    // passed off as figures.
    let result = done.result.clone().expect("result");
    assert!(result.duration_ms > 0, "{result:?}");
    let from_target = done
        .actions
        .iter()
        .any(|a| a == "FinalStats(from the target)");
    if from_target {
        assert!(
            result.downtime_ms > 0 && result.data_transferred_bytes > 8 << 20,
            "{result:?}"
        );
    } else {
        assert!(
            done.actions
                .iter()
                .any(|a| a.starts_with("FinalStatsLost") || a.starts_with("FinalStatsPartial")),
            "neither figures nor their loss told: {:?}",
            done.actions
        );
    }
    guest.beats_on("node-b", before).await;
}

#[tokio::test]
async fn a_source_agent_killed_during_the_offline_disk_sync_leaves_the_vm_running_on_the_source() {
    let _lab = exclusive().await;
    let mut agents = Agents::start(module_path!(), line!()).await;
    // A large, filled disk: the first pass takes seconds, the kill lands in it.
    let spec = GuestSpec {
        disk: DiskKind::Local,
        disk_mib: 1024,
        prefill_mib: 768,
        ..GuestSpec::default()
    };
    let guest = Guest::start("node-a", "restart-off", &spec).await;
    let before = guest.last_beat("node-a").expect("beating");
    let path = guest.disk.clone().expect("disk");

    let mut drive =
        Drive::new("restart-off-1", &guest, "node-a").with_copied_disk(&guest, spec.disk_mib << 20);
    drive.mode = MigrationMode::Offline;
    let (code, body) = drive.start(&agents).await;
    assert_eq!(code, 200, "{body}");
    restart(&mut agents, "node-a", "restart-off").await;

    let (done, _) = drive.wait(&agents, Duration::from_secs(60)).await;
    assert_eq!(done.phase, JobPhase::Failed, "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("JobInterrupted"), "{done:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-a"), "{done:?}");
    assert_eq!(guest.state("node-a").as_deref(), Some("running"));
    guest.beats_on("node-a", before).await;
    // What prepare created on the target goes; nothing of the VM stays there.
    let (code, cleaned) = drive.cleanup(&agents).await;
    assert_eq!(code, 200, "{cleaned}");
    assert!(
        !exists("node-b", &path),
        "the prepared image leaked: {cleaned}"
    );
    assert_eq!(guest.state("node-b"), None);
}

#[tokio::test]
async fn a_target_agent_restarted_after_prepare_still_removes_the_images_it_created() {
    let _lab = exclusive().await;
    let mut agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::default().local_disk();
    let guest = Guest::start("node-a", "restart-prep", &spec).await;
    let path = guest.disk.clone().expect("disk");

    let drive = Drive::new("restart-prep-1", &guest, "node-a")
        .with_copied_disk(&guest, spec.disk_mib << 20);
    let (code, prepared) = drive.prepare(&agents).await;
    assert_eq!(code, 200, "{prepared}");
    restart(&mut agents, "node-b", "restart-prep").await;

    // A retried prepare gets the recorded answer, not a DiskPathInUse.
    let (code, again) = drive.prepare(&agents).await;
    assert_eq!((code, &again), (200, &prepared));
    let (code, cleaned) = drive.cleanup(&agents).await;
    assert_eq!(code, 200, "{cleaned}");
    assert_eq!(cleaned["removedDisks"][0], path.as_str(), "{cleaned}");
    assert!(!exists("node-b", &path), "the prepared image leaked");
}
