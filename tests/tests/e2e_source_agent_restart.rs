//! End to end: the source agent is SIGKILLed while the migration is being
//! prepared and comes back (a crashed DaemonSet pod restarted). The
//! controller treats the refused connection as transient, never fails or
//! aborts, and the move goes on once the agent answers again.

use std::time::Duration;

use kvmotion_tests::agent::AgentProcess;
use kvmotion_tests::e2e::{Rig, condition, find_condition, phases};
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

#[tokio::test]
async fn a_source_agent_killed_during_prepare_and_restarted_lets_the_move_finish() {
    let _lab = exclusive().await;
    let mut rig = Rig::start("e2e-src-restart", &[]).await;
    let guest = Guest::start("node-a", "e2e-srcr", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-srcr").await;
    let before = guest.last_beat("node-a").expect("beating");

    // Dead before the controller reaches the source: its heartbeat Lease is
    // still fresh, so prechecks pass and the start call meets a dead port.
    rig.agents.a.kill().await;
    let name = rig.migrate(
        "srcr",
        json!({"vm": {"name": "e2e-srcr"}, "targetNode": "node-b"}),
    );
    let waiting = eventually(
        Duration::from_secs(60),
        "the controller to wait for the source agent",
        || async {
            let s = rig.status(&name).await?;
            let reachable = find_condition(&s, "AgentsReachable")?;
            (reachable.0 == "False").then_some(s)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    assert_eq!(waiting["phase"], "Preparing", "{waiting:#}");
    let (_, reason, message) = condition(&waiting, "AgentsReachable");
    assert_eq!(reason, "AgentUnreachable", "{waiting:#}");
    assert!(message.contains("node-a"), "{message}");
    assert_eq!(guest.state("node-a").as_deref(), Some("running"));

    rig.agents.a = AgentProcess::restart("node-a", "e2e-src-restart", &[]).await;
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(120))
        .await;

    assert_eq!(
        phases(&status)[3..],
        ["Preparing", "Migrating", "Finalizing", "Succeeded"],
        "{status:#}"
    );
    assert_eq!(
        condition(&status, "AgentsReachable").0,
        "True",
        "{status:#}"
    );
    assert_eq!(condition(&status, "Completed").1, "Succeeded");
    guest.moved_whole_to("node-b", before).await;
    rig.expect_events(&name, &["Succeeded"]).await;
}
