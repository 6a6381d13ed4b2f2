//! End to end: a guest that dirties memory flat out, on a link capped
//! below its rate, moves under the default policy instead of failing, by
//! the strategy the source agent predicted as the move started, which
//! status shows beside the result.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, phases};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

#[tokio::test]
async fn a_hot_guest_converges_under_the_default_policy() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-live-hot", &[]).await;
    let guest = Guest::start("node-a", "e2e-hot", &GuestSpec::hot()).await;
    rig.wait_inventory("node-a", "e2e-hot").await;
    let before = guest.last_beat("node-a").expect("beating");

    // The link capped below the guest's dirty rate: passes of a second and
    // more, which the one-second measurement predicts well.
    let name = rig.migrate(
        "hot",
        json!({"vm": {"name": "e2e-hot"}, "targetNode": "node-b",
               "overrides": {"bandwidthMiBps": 100}}),
    );
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(180))
        .await;

    assert_eq!(
        phases(&status),
        [
            "Pending",
            "Scheduling",
            "Prechecking",
            "Preparing",
            "Migrating",
            "Finalizing",
            "Succeeded"
        ],
        "{status:#}"
    );
    let (_, reason, message) = condition(&status, "Completed");
    assert_eq!(reason, "Succeeded", "{message}");
    assert_eq!(status["policy"]["tuning"]["postCopy"], true, "{status:#}");
    let prediction = &status["prediction"];
    assert_eq!(prediction["strategy"], "PostCopyAtOnce", "{status:#}");
    assert!(
        prediction["reason"]
            .as_str()
            .is_some_and(|r| r.contains("pre-copy cannot converge")),
        "{status:#}"
    );
    for figure in [
        "dirtyRateBytesPerSecond",
        "linkBytesPerSecond",
        "durationMs",
    ] {
        assert!(
            prediction[figure].as_u64().is_some_and(|v| v > 0),
            "{figure}: {status:#}"
        );
    }
    assert!(
        status["result"]["durationMs"].as_u64().is_some(),
        "{status:#}"
    );
    guest.beats_on("node-b", before).await;
    assert_eq!(guest.state("node-a"), None);
    rig.expect_events(&name, &["Migrating", "Finalizing", "Succeeded"])
        .await;
}
