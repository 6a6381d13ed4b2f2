//! Predict, then move, on the lab: the source agent measures the guest's
//! dirty rate as a live move starts and chooses the strategy from it. A hot
//! guest that pre-copy cannot move switches to post-copy within its first
//! pass; an idle one moves by pre-copy alone; one that nothing the policy
//! allows can move is refused at once and keeps running on the source.

use std::time::Duration;

use kvmotion_api::agent::{JobPhase, JobStatus, ResolvedTuning};
use kvmotion_api::migration::{Strategy, TransferMode};
use kvmotion_api::tuning::TimeoutAction;
use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::lab::{Beat, Guest, GuestSpec, LabLock, exclusive};

/// The strategy a finished job predicted, and its actions. The link's
/// rate is always measured; the dirty rate of an idle guest may read 0
/// (page sampling looks at 512 pages per GiB: a guest rewriting 16 of its
/// 256 MiB in a second leaves none of them changed about one time in
/// eight), so the tests check it against what each guest does.
fn predicted(done: &JobStatus) -> (Strategy, &[String]) {
    let p = done
        .prediction
        .as_ref()
        .unwrap_or_else(|| panic!("no prediction: {done:?}"));
    assert!(p.link_bytes_per_second > 0, "{p:?}");
    (p.strategy, &done.actions)
}

/// The hot guest rewrites its 128 MiB flat out (about 126 MiB/s measured
/// on the lab): whatever sample of pages the measurement takes, it reads
/// as hot against the 100 MiB/s link.
fn measured_hot(done: &JobStatus) {
    let p = done.prediction.as_ref().expect("prediction");
    assert!(
        p.dirty_rate_bytes_per_second > p.link_bytes_per_second / 2,
        "{p:?}"
    );
}

/// Index of the first action starting with `prefix`.
fn index(actions: &[String], prefix: &str) -> Option<usize> {
    actions.iter().position(|a| a.starts_with(prefix))
}

/// One scene: the lab held, both agents up, a `spec` guest on node-a moved
/// live with `tune` applied to the default tuning; returns what the test
/// checks, the lab lock last so that it drops after the guest.
async fn moved(
    line: u32,
    name: &str,
    spec: &GuestSpec,
    tune: impl FnOnce(&mut ResolvedTuning),
) -> (Guest, Beat, JobStatus, Vec<JobStatus>, Agents, LabLock) {
    let lab = exclusive().await;
    let agents = Agents::start(module_path!(), line).await;
    let guest = Guest::start("node-a", name, spec).await;
    let before = guest.last_beat("node-a").expect("beating");
    let mut drive = Drive::new(&format!("{name}-1"), &guest, "node-a");
    tune(&mut drive.tuning);
    let (code, started) = drive.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, seen) = drive.wait(&agents, Duration::from_secs(120)).await;
    (guest, before, done, seen, agents, lab)
}

#[tokio::test]
async fn a_hot_guest_predicted_not_to_converge_switches_to_post_copy_within_its_first_pass() {
    let (guest, before, done, seen, _agents, _lab) =
        moved(line!(), "predict-hot", &GuestSpec::hot(), |t| {
            t.bandwidth_mibps = 100;
        })
        .await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    let (strategy, actions) = predicted(&done);
    assert_eq!(strategy, Strategy::PostCopyAtOnce, "{done:?}");
    measured_hot(&done);
    let p = done.prediction.clone().expect("prediction");
    assert!(p.link_bytes_per_second <= 100 << 20, "{p:?}");
    assert!(
        p.pre_copy_passes.is_none() && p.duration_ms.is_some(),
        "{p:?}"
    );
    // The switch is the prediction's, made as soon as it was: the stall
    // rule waits for the first pass to end, a second and more later.
    let at = index(actions, "Predicted(PostCopyAtOnce)").expect("predicted");
    assert_eq!(index(actions, "StartPostCopy"), Some(at + 1), "{actions:?}");
    // Pre-copy never sent a whole memory's worth before the switch.
    let last_pre_copy = seen
        .iter()
        .rev()
        .find(|s| s.progress.mode == TransferMode::PreCopy)
        .expect("seen in pre-copy");
    assert!(
        last_pre_copy.progress.data_processed_bytes < last_pre_copy.progress.data_total_bytes,
        "{last_pre_copy:?}"
    );
    guest.moved_whole_to("node-b", before).await;
}

#[tokio::test]
async fn an_idle_guest_is_predicted_to_converge_and_moves_by_pre_copy_alone() {
    // Capped, so the move outlasts the second the measurement takes.
    let (guest, before, done, _, _agents, _lab) =
        moved(line!(), "predict-idle", &GuestSpec::default(), |t| {
            t.bandwidth_mibps = 50;
        })
        .await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    let (strategy, actions) = predicted(&done);
    assert_eq!(strategy, Strategy::PreCopy, "{done:?}");
    assert!(index(actions, "StartPostCopy").is_none(), "{actions:?}");
    let p = done.prediction.clone().expect("prediction");
    // 4 MiB/s, where sampling sees it at all, against a 50 MiB/s link.
    assert!(
        p.dirty_rate_bytes_per_second < p.link_bytes_per_second / 2,
        "{p:?}"
    );
    assert!(
        p.pre_copy_passes.is_some_and(|n| n >= 2) && p.downtime_ms.is_some(),
        "{p:?}"
    );
    assert!(p.reason.contains("pre-copy converges"), "{p:?}");
    guest.moved_whole_to("node-b", before).await;
}

#[tokio::test]
async fn a_hot_guest_nothing_the_policy_allows_can_move_is_refused_and_keeps_running_at_home() {
    let (guest, before, done, _, _agents, _lab) =
        moved(line!(), "predict-refused", &GuestSpec::hot(), |t| {
            t.bandwidth_mibps = 100;
            t.post_copy = false;
            t.auto_converge = false;
            t.on_timeout = TimeoutAction::Abort;
        })
        .await;

    assert_eq!(done.phase, JobPhase::Failed, "{done:?}");
    assert_eq!(
        done.reason.as_deref(),
        Some("PredictedNotToConverge"),
        "{done:?}"
    );
    let (strategy, _) = predicted(&done);
    assert_eq!(strategy, Strategy::Refuse, "{done:?}");
    measured_hot(&done);
    let message = done.message.clone().unwrap_or_default();
    for needed in [
        "refused as it started",
        "allow post-copy",
        "keeps running on the source",
    ] {
        assert!(message.contains(needed), "{needed:?} missing: {message}");
    }
    assert_eq!(done.vm_node.as_deref(), Some("node-a"), "{done:?}");
    guest.beats_on("node-a", before).await;
    assert_eq!(guest.state("node-b"), None, "node-b has the domain");
}
