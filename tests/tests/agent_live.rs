//! Live migrations through the agents on the two-node lab. Each test proves
//! the guest kept running on the target (heartbeat advances, same boot) and
//! is gone from the source.

use std::time::Duration;

use kvmotion_api::agent::JobPhase;
use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};

#[tokio::test]
async fn an_idle_guest_on_shared_storage_moves_live_and_keeps_running() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "live-idle", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");

    let drive = Drive::new("live-idle-1", &guest, "node-a");
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, seen) = drive.wait(&agents, Duration::from_secs(60)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-b"));
    let result = done.result.expect("result");
    assert!(result.data_transferred_bytes > 1 << 20, "{result:?}");
    assert!(
        result.duration_ms > 0 && result.downtime_ms < 2_000,
        "{result:?}"
    );
    assert_eq!(done.progress.percent, 100);
    let percents: Vec<u8> = seen.iter().map(|s| s.progress.percent).collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress ran backwards: {percents:?}"
    );

    guest.moved_whole_to("node-b", before).await;

    // Repeating the call is harmless: it returns the same job.
    let (code, again) = drive.start(&agents).await;
    assert_eq!(code, 200);
    assert_eq!(again["phase"], "Completed");
}

#[tokio::test]
async fn a_guest_with_a_node_local_disk_moves_live_with_its_storage() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::default().local_disk().stamping();
    let guest = Guest::start("node-a", "live-local", &spec).await;
    let before = guest.last_beat("node-a").expect("beating");
    let path = guest.disk.clone().expect("disk");

    let drive =
        Drive::new("live-local-1", &guest, "node-a").with_copied_disk(&guest, spec.disk_mib << 20);
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(90)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");

    let after = guest.beats_on("node-b", before).await;
    assert_eq!(guest.state("node-a"), None);
    // The guest keeps writing its heartbeat to the copied disk on the target.
    let script = format!(
        "qemu-img convert -U -O raw {path} /tmp/live-local.raw && strings /tmp/live-local.raw | grep -c 'HB seq='; rm -f /tmp/live-local.raw"
    );
    let stamped = kvmotion_tests::lab::lab(&["exec", "node-b", "sh", "-c", &script]);
    assert!(
        stamped.trim().parse::<u32>().unwrap_or(0) > 0,
        "no heartbeat stamps on the target's disk (after {after:?})"
    );
}

#[tokio::test]
async fn a_hot_guest_that_pre_copy_cannot_move_converges_under_the_default_policy() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::hot();
    let guest = Guest::start("node-a", "live-hot", &spec).await;
    let before = guest.last_beat("node-a").expect("beating");

    let mut drive = Drive::new("live-hot-1", &guest, "node-a");
    drive.tuning.bandwidth_mibps = 100;
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, seen) = drive.wait(&agents, Duration::from_secs(120)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert!(
        done.actions.iter().any(|a| a == "StartPostCopy"),
        "post-copy was not used: {:?}",
        done.actions
    );
    // Post-copy moves the guest at once: the pause is milliseconds.
    let result = done.result.expect("result");
    assert!(result.downtime_ms < 1_000, "{result:?}");
    assert!(
        seen.iter().any(|s| s.progress.data_processed_bytes > 0),
        "no progress was reported"
    );
    guest.beats_on("node-b", before).await;
    assert_eq!(guest.state("node-a"), None);
}

#[tokio::test]
async fn an_abort_mid_flight_leaves_the_guest_running_on_the_source_and_the_target_clean() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::hot();
    let guest = Guest::start("node-a", "live-abort", &spec).await;
    let before = guest.last_beat("node-a").expect("beating");

    let drive = Drive::new("live-abort-1", &guest, "node-a").held_back(50);
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    drive.wait_for_data(&agents, 16 << 20).await;
    let (code, body) = agents
        .a
        .as_controller("POST", "/v1/migrations/live-abort-1/abort", None)
        .await;
    assert_eq!(code, 200, "{body}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(60)).await;

    assert_eq!(done.phase, JobPhase::Aborted, "{done:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-a"));
    guest.beats_on("node-a", before).await;
    assert_eq!(
        guest.state("node-b"),
        None,
        "the target must not keep the domain"
    );
    let (code, body) = agents
        .b
        .as_controller("POST", "/v1/migrations/live-abort-1/cleanup", None)
        .await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn with_post_copy_forbidden_a_hot_guest_converges_by_pausing_when_its_progress_timeout_fires()
{
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::hot();
    let guest = Guest::start("node-a", "live-timeout", &spec).await;
    let before = guest.last_beat("node-a").expect("beating");
    let mut drive = Drive::new("live-timeout-1", &guest, "node-a");
    drive.tuning.bandwidth_mibps = 100;
    drive.tuning.post_copy = false;
    drive.tuning.progress_timeout_seconds = 3;
    drive.tuning.on_timeout = kvmotion_api::tuning::TimeoutAction::Pause;
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(120)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert!(
        done.actions.iter().any(|a| a == "Pause"),
        "{:?}",
        done.actions
    );
    assert!(
        !done.actions.iter().any(|a| a == "StartPostCopy"),
        "{:?}",
        done.actions
    );
    // Paused for the switch-over, then resumed on the target: same boot.
    guest.beats_on("node-b", before).await;
    assert_eq!(guest.state("node-a"), None);
}

#[tokio::test]
async fn force_complete_finishes_a_migration_that_would_not_converge() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::hot();
    let guest = Guest::start("node-a", "live-force", &spec).await;
    let before = guest.last_beat("node-a").expect("beating");
    let drive = Drive::new("live-force-1", &guest, "node-a").held_back(100);
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, still) = agents
        .a
        .as_controller("GET", "/v1/migrations/live-force-1", None)
        .await;
    assert_eq!(
        still["phase"], "Running",
        "the job should not have finished alone: {still}"
    );
    let (code, body) = agents
        .a
        .as_controller("POST", "/v1/migrations/live-force-1/force-complete", None)
        .await;
    assert_eq!(code, 200, "{body}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(60)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert!(
        done.actions.iter().any(|a| a == "Pause"),
        "without post-copy, force-complete pauses: {:?}",
        done.actions
    );
    guest.beats_on("node-b", before).await;
}

#[tokio::test]
async fn stream_options_parallel_connections_auto_converge_and_compression_move_the_guest() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "live-options", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");

    // Parallel connections: QEMU cannot combine them with post-copy, so
    // the agent turns post-copy off for the job and says so.
    let mut parallel = Drive::new("live-options-1", &guest, "node-a");
    parallel.tuning.parallel_connections = 2;
    let (code, started) = parallel.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = parallel.wait(&agents, Duration::from_secs(60)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert!(
        done.actions
            .iter()
            .any(|a| a == "PostCopyOff(parallel connections)"),
        "{:?}",
        done.actions
    );
    let mid = guest.beats_on("node-b", before).await;

    let mut tuned = Drive::new("live-options-2", &guest, "node-b");
    tuned.tuning.auto_converge = true;
    tuned.tuning.compression = kvmotion_api::tuning::Compression::Xbzrle;
    let (code, started) = tuned.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = tuned.wait(&agents, Duration::from_secs(60)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    guest.beats_on("node-a", mid).await;
    assert_eq!(guest.state("node-b"), None);
}

#[tokio::test]
async fn a_paused_guest_moves_live_without_post_copy_and_arrives_paused() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "live-paused", &GuestSpec::default()).await;
    kvmotion_tests::lab::lab(&["virsh", "node-a", "suspend", &guest.name]);
    let before = guest.last_beat("node-a").expect("beating");

    // The default tuning asks for post-copy, which libvirt refuses for a
    // paused domain: the agent must not.
    let drive = Drive::new("live-paused-1", &guest, "node-a");
    assert!(drive.tuning.post_copy);
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = drive.wait(&agents, Duration::from_secs(60)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert!(
        done.actions
            .iter()
            .any(|a| a == "PostCopyOff(paused guest)"),
        "{:?}",
        done.actions
    );
    assert!(
        !done.actions.iter().any(|a| a.starts_with("SetMaxDowntime")),
        "no downtime ramp for a paused guest: {:?}",
        done.actions
    );
    assert_eq!(guest.state("node-b").as_deref(), Some("paused"));
    assert_eq!(
        guest.state("node-a"),
        None,
        "the source still has the domain"
    );
    // It is the same guest: resumed, it beats on in the same boot.
    kvmotion_tests::lab::lab(&["virsh", "node-b", "resume", &guest.name]);
    guest.beats_on("node-b", before).await;
}
