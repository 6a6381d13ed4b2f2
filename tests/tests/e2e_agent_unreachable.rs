//! End to end: the source agent stops answering mid-migration (frozen, as
//! on a hung node). After the agent timeout the migration is Failed with
//! AgentUnreachable; once the agent answers again the controller settles
//! it and verifies the VM runs on exactly one node, which the guest's
//! heartbeat confirms.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, phases};
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{self, Guest, GuestSpec, exclusive};
use serde_json::json;

#[tokio::test]
async fn a_silent_source_agent_fails_the_migration_and_the_vm_is_located_once_it_answers() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-unreachable", &["--agent-timeout-seconds", "6"]).await;
    let guest = Guest::start("node-a", "e2e-unreach", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-unreach").await;

    // Throttled so the job outlives the agent timeout.
    let name = rig.migrate(
        "unreachable",
        json!({"vm": {"name": "e2e-unreach"}, "targetNode": "node-b",
               "overrides": {"bandwidthMiBps": 16, "postCopy": false,
                             "progressTimeoutSeconds": 0, "completionTimeoutPerGiBSeconds": 0}}),
    );
    rig.wait_moving(&name).await;
    rig.agents.a.freeze();
    let failed = rig
        .wait_phase(&name, "Failed", Duration::from_secs(60))
        .await;
    let (_, reason, message) = condition(&failed, "Completed");
    assert_eq!(reason, "AgentUnreachable", "{message}");
    assert!(message.contains("node-a"), "{message}");
    let seen = phases(&failed);
    assert_eq!(
        seen,
        [
            "Pending",
            "Scheduling",
            "Prechecking",
            "Preparing",
            "Migrating",
            "Failed"
        ],
        "{failed:#}"
    );
    let (_, settled, _) = condition(&failed, "Settled");
    assert_eq!(settled, "SettlePending", "settling waits for the agent");

    rig.agents.a.thaw();
    let located = eventually(
        Duration::from_secs(90),
        "the VM to be located once the agent answers",
        || async {
            let s = rig.status(&name).await?;
            let (_, reason, message) = condition(&s, "Settled");
            (reason == "VMLocated").then_some(message)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));

    // Exactly one node runs it, the one the controller names, and the
    // guest keeps beating there without a reboot.
    let running: Vec<&str> = ["node-a", "node-b"]
        .into_iter()
        .filter(|n| guest.state(n).as_deref() == Some("running"))
        .collect();
    assert_eq!(running.len(), 1, "running on {running:?}");
    let at = running[0];
    assert!(located.contains(at), "{located} should name {at}");
    assert_eq!(
        guest.state(lab::other(at)),
        None,
        "nothing left on the other node"
    );
    let beat = guest.last_beat(at).expect("a heartbeat");
    guest.beats_on(at, beat).await;

    rig.expect_events(&name, &["AgentUnreachable", "VMLocated"])
        .await;
}
