//! End to end: a live move predicted before it starts. The source agent
//! samples its guests' dirty rates in the background and publishes them;
//! the controller predicts in Prechecking from the sample and the link's
//! capped rate, so the strategy is in status before the move and the move
//! follows it from its start, and a move nothing the policy allows can
//! converge is refused without touching the VM.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, phases};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::{Value, json};

/// node-a's agent samples every two seconds instead of thirty, so a guest
/// started a moment ago has a sample by the time it is moved.
const SAMPLE_OFTEN: &[&str] = &["--dirty-rate-every-seconds", "2"];

/// The link's cap: well under what the hot guest dirties.
const CAP_MIBPS: u64 = 40;

/// Waits for a sample of `vm` on node-a that reads hotter than the cap.
async fn sampled_hot(rig: &Rig, vm: &str) -> Value {
    let rate = rig.wait_sampled("node-a", vm, jiff::Timestamp::now()).await;
    assert!(
        rate["bytesPerSecond"]
            .as_u64()
            .is_some_and(|b| b > CAP_MIBPS << 20),
        "the hot guest reads hot: {rate}"
    );
    rate
}

#[tokio::test]
async fn a_hot_guest_is_predicted_before_its_move_and_moves_by_post_copy_from_the_start() {
    let _lab = exclusive().await;
    let rig = Rig::start_with("e2e-foresee", &[], SAMPLE_OFTEN).await;
    let guest = Guest::start("node-a", "e2e-fore", &GuestSpec::hot()).await;
    rig.wait_inventory("node-a", "e2e-fore").await;
    let rate = sampled_hot(&rig, "e2e-fore").await;
    assert!(
        rate["residentBytes"].as_u64().is_some_and(|b| b > 0),
        "{rate}"
    );
    let before = guest.last_beat("node-a").expect("beating");

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
    let _lab = exclusive().await;
    let rig = Rig::start_with("e2e-foresee-no", &[], SAMPLE_OFTEN).await;
    let guest = Guest::start("node-a", "e2e-fore-no", &GuestSpec::hot()).await;
    rig.wait_inventory("node-a", "e2e-fore-no").await;
    sampled_hot(&rig, "e2e-fore-no").await;
    let before = guest.last_beat("node-a").expect("beating");

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
