//! End to end: a live move predicted before it starts. The source agent
//! samples its guests' dirty rates in the background and publishes them;
//! the controller predicts in Prechecking from the sample and the link's
//! capped rate, so the strategy is in status before the move and the move
//! follows it from its start, and a move nothing the policy allows can
//! converge is refused without touching the VM.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, phases};
use kvmotion_tests::lab::{Beat, Guest, GuestSpec, LabLock, exclusive};
use serde_json::{Value, json};

/// node-a's agent samples every two seconds instead of thirty, so a guest
/// started a moment ago has a sample by the time it is moved.
const SAMPLE_OFTEN: &[&str] = &["--dirty-rate-every-seconds", "2"];

/// The link's cap: well under what the hot guest dirties.
const CAP_MIBPS: u64 = 40;

/// The lab held, a rig whose node-a agent samples often, and a hot guest
/// on node-a with a sample that reads hotter than the cap; returns the
/// sample and the guest's heartbeat from before any move.
async fn scene(test: &str, vm: &str) -> (LabLock, Rig, Guest, Value, Beat) {
    let lab = exclusive().await;
    let rig = Rig::start_with(test, &[], SAMPLE_OFTEN).await;
    let guest = Guest::start("node-a", vm, &GuestSpec::hot()).await;
    rig.wait_inventory("node-a", vm).await;
    let rate = rig.wait_sampled("node-a", vm, jiff::Timestamp::now()).await;
    assert!(
        rate["bytesPerSecond"]
            .as_u64()
            .is_some_and(|b| b > CAP_MIBPS << 20),
        "the hot guest reads hot: {rate}"
    );
    let before = guest.last_beat("node-a").expect("beating");
    (lab, rig, guest, rate, before)
}

#[tokio::test]
async fn a_hot_guest_is_predicted_before_its_move_and_moves_by_post_copy_from_the_start() {
    let (_lab, rig, guest, rate, before) = scene("e2e-foresee", "e2e-fore").await;
    assert!(
        rate["residentBytes"].as_u64().is_some_and(|b| b > 0),
        "{rate}"
    );

    let name = rig.migrate(
        "fore",
        json!({"vm": {"name": "e2e-fore"}, "targetNode": "node-b",
               "overrides": {"bandwidthMiBps": CAP_MIBPS, "postCopy": true}}),
    );
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(180))
        .await;

    let prediction = &status["prediction"];
    assert_eq!(prediction["beforeMove"], true, "{status:#}");
    assert_eq!(prediction["madeAfterMs"], 0, "{status:#}");
    assert_eq!(prediction["strategy"], "PostCopyAtOnce", "{status:#}");
    assert_eq!(
        prediction["linkBytesPerSecond"],
        CAP_MIBPS << 20,
        "{status:#}"
    );
    let (_, reason, message) = condition(&status, "Prechecked");
    assert_eq!(reason, "PrechecksPassed", "{message}");
    assert!(
        message.contains("predicted before the move: PostCopyAtOnce"),
        "{message}"
    );
    assert!(
        status["result"]["durationMs"].as_u64().is_some(),
        "{status:#}"
    );
    guest.moved_whole_to("node-b", before).await;
}

#[tokio::test]
async fn a_move_nothing_the_policy_allows_can_converge_is_refused_before_it_starts() {
    let (_lab, rig, guest, _, before) = scene("e2e-foresee-no", "e2e-fore-no").await;

    let name = rig.migrate(
        "fore-no",
        json!({"vm": {"name": "e2e-fore-no"}, "targetNode": "node-b",
               "overrides": {"bandwidthMiBps": CAP_MIBPS, "postCopy": false,
                             "autoConverge": false, "onTimeout": "Abort"}}),
    );
    let status = rig
        .wait_phase(&name, "Failed", Duration::from_secs(60))
        .await;

    assert_eq!(
        phases(&status),
        ["Pending", "Scheduling", "Prechecking", "Failed"],
        "refused before any agent was asked: {status:#}"
    );
    let (state, reason, message) = condition(&status, "Prechecked");
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("False", "PredictedNotToConverge"),
        "{message}"
    );
    for needed in [
        "pre-copy cannot converge",
        "allow post-copy",
        "the VM was not touched",
    ] {
        assert!(message.contains(needed), "{needed:?} missing: {message}");
    }
    assert_eq!(status["prediction"]["strategy"], "Refuse", "{status:#}");
    // Untouched: still beating on node-a in the same boot, nothing on node-b.
    guest.beats_on("node-a", before).await;
    assert_eq!(guest.state("node-b"), None);
}
