//! End to end: a guest that dirties memory flat out moves under the
//! default policy (no overrides) instead of failing.

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

    let name = rig.migrate(
        "hot",
        json!({"vm": {"name": "e2e-hot"}, "targetNode": "node-b"}),
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
    guest.beats_on("node-b", before).await;
    assert_eq!(guest.state("node-a"), None);
    rig.expect_events(&name, &["Migrating", "Finalizing", "Succeeded"])
        .await;
}
