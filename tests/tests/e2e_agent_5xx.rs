//! End to end: the source agent answers 503 for 20 s in the middle of a
//! migration (seen through a proxy in front of the real agent). The
//! controller waits it out as a transient failure, never aborting the
//! job, and the migration completes once the agent answers again.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, held_back_spec, phases};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use kvmotion_tests::proxy::FaultProxy;

#[tokio::test]
async fn an_agent_answering_5xx_for_20_s_is_waited_out_and_the_migration_completes() {
    let _lab = exclusive().await;
    // The controller reaches node-a's agent through the proxy only.
    let proxy = FaultProxy::start("10.98.0.254:0", "10.98.0.1:9443".parse().unwrap()).await;
    let advertised = format!("http://{}", proxy.addr);
    let rig = Rig::start_with("e2e-5xx", &[], &["--advertise-endpoint", &advertised]).await;
    let guest = Guest::start("node-a", "e2e-5xx", &GuestSpec::hot()).await;
    rig.wait_inventory("node-a", "e2e-5xx").await;
    let before = guest.last_beat("node-a").expect("beating");

    // Held back so that it is still copying when the agent blinks.
    let name = rig.migrate("fivexx", held_back_spec("e2e-5xx"));
    rig.wait_moving(&name).await;

    proxy.fail();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = rig.status(&name).await.expect("a status");
    let refused = proxy.refused.load(std::sync::atomic::Ordering::SeqCst);
    proxy.heal();
    assert!(refused > 0, "the controller never called during the fault");
    assert_eq!(
        during["phase"], "Migrating",
        "a 5xx must not end the migration: {during:#}"
    );
    let (ok, reason, _) = condition(&during, "AgentsReachable");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "AgentUnreachable"),
        "{during:#}"
    );

    // The job ran on untouched: forcing it completes the move.
    rig.scope.force_complete(&name);
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(90))
        .await;
    assert_eq!(
        phases(&status)[3..],
        ["Preparing", "Migrating", "Finalizing", "Succeeded"],
        "{status:#}"
    );
    let (ok, reason, _) = condition(&status, "AgentsReachable");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("True", "AgentsAnswer"),
        "{status:#}"
    );
    guest.beats_on("node-b", before).await;
    assert_eq!(
        guest.state("node-a"),
        None,
        "the source still has the domain"
    );
}
