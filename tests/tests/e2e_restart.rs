//! End to end: a controller killed mid-migration is replaced; the new one
//! resumes tracking the running job without starting a second one.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, start_controller};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

#[tokio::test]
async fn a_controller_restart_mid_migration_resumes_the_same_job() {
    let _lab = exclusive().await;
    let short = [
        "--lease-duration-seconds",
        "4",
        "--lease-grace-seconds",
        "1",
    ];
    let mut rig = Rig::start("e2e-restart", &short).await;
    let guest = Guest::start("node-a", "e2e-restart", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-restart").await;
    let before = guest.last_beat("node-a").expect("beating");

    // Slow enough to outlive the restart, then free to finish. 8 MiB/s
    // does not outrun even this guest's dirtying: with a timeout the
    // prediction would refuse the move at once.
    let name = rig.migrate(
        "restart",
        json!({"vm": {"name": "e2e-restart"}, "targetNode": "node-b",
               "overrides": {"bandwidthMiBps": 8, "postCopy": false,
                             "progressTimeoutSeconds": 0, "completionTimeoutPerGiBSeconds": 0}}),
    );
    rig.wait_moving(&name).await;
    rig.controller.kill().await;

    rig.controller = start_controller(&rig.scope, "ctl", &short);
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(180))
        .await;
    guest.beats_on("node-b", before).await;

    let uid = kvmotion_tests::e2e::migration(&rig.scope, &name)
        .await
        .and_then(|o| o.metadata.uid)
        .expect("uid");
    let starts = rig
        .agents
        .a
        .log_text()
        .lines()
        .filter(|l| l.contains("starting migration") && l.contains(&uid))
        .count();
    assert_eq!(starts, 1, "exactly one job was started:\n{}", rig.logs());
    let phases = kvmotion_tests::e2e::phases(&status);
    assert_eq!(
        phases.iter().filter(|p| *p == "Migrating").count(),
        1,
        "{phases:?}"
    );
    let (ok, reason, message) = condition(&status, "Completed");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("True", "Succeeded"),
        "{message}"
    );
    // The replacement controller reports the end it observed.
    rig.expect_events(&name, &["Finalizing", "Succeeded"]).await;
}
