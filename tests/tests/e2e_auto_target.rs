//! End to end: without a target the controller chooses one and says why.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

#[tokio::test]
async fn without_a_target_the_controller_chooses_the_other_node_and_explains() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-auto-target", &[]).await;
    let guest = Guest::start("node-b", "e2e-auto", &GuestSpec::default()).await;
    rig.wait_inventory("node-b", "e2e-auto").await;
    let before = guest.last_beat("node-b").expect("beating");

    let name = rig.migrate("auto", json!({"vm": {"name": "e2e-auto"}}));
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(120))
        .await;

    assert_eq!(status["sourceNode"], "node-b");
    assert_eq!(status["targetNode"], "node-a");
    let (_, reason, message) = condition(&status, "Scheduled");
    assert_eq!(reason, "TargetSelected");
    assert!(
        message.starts_with("chose node-a: most free memory"),
        "{message}"
    );
    guest.beats_on("node-a", before).await;
    rig.expect_events(&name, &["Scheduled"]).await;
}
