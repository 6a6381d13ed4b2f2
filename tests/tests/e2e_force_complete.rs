//! End to end: a live migration that cannot converge under its policy (no
//! post-copy, no auto-converge, no timeouts) completes once the user sets
//! `spec.forceComplete`.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, held_back_spec, migration, phases};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use kvmotion_tests::{eventually, strip_ansi};

/// How long the test watches the held-back migration before forcing it.
const HOLD_SECONDS: u64 = 8;

#[tokio::test]
async fn setting_force_complete_finishes_a_migration_held_back_by_its_policy() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-force", &[]).await;
    let guest = Guest::start("node-a", "e2e-force", &GuestSpec::hot()).await;
    rig.wait_inventory("node-a", "e2e-force").await;
    let before = guest.last_beat("node-a").expect("beating");

    let name = rig.migrate("force", held_back_spec("e2e-force"));
    rig.wait_moving(&name).await;
    let writes = || async {
        rig.controller
            .metric("kvmotion_controller_status_writes_total")
            .await
            .expect("the status writes counter")
    };
    let writes_before = writes().await;
    // The guest dirties its memory faster than 100 MiB/s carries it: left
    // alone, the job would copy forever.
    tokio::time::sleep(Duration::from_secs(HOLD_SECONDS)).await;
    let held = rig.status(&name).await.expect("a status");
    assert_eq!(held["phase"], "Migrating", "{held:#}");
    assert_eq!(held["observedGeneration"], 1, "{held:#}");
    // Progress is mirrored, but at most about once a second.
    let written = writes().await - writes_before;
    assert!(
        (2.0..=(HOLD_SECONDS + 2) as f64).contains(&written),
        "{written} status writes in {HOLD_SECONDS} s of Migrating"
    );
    assert_eq!(
        rig.controller
            .metric(r#"kvmotion_controller_migrations_in_flight{phase="Migrating"}"#)
            .await,
        Some(1.0),
        "in-flight gauge while held"
    );

    rig.scope.force_complete(&name);
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(90))
        .await;

    assert_eq!(status["observedGeneration"], 2, "{status:#}");
    assert_eq!(
        phases(&status)[3..],
        ["Preparing", "Migrating", "Finalizing", "Succeeded"],
        "{status:#}"
    );
    let (ok, reason, message) = condition(&status, "Completed");
    assert_eq!((ok.as_str(), reason.as_str()), ("True", "Succeeded"));
    assert!(message.starts_with("the VM runs on node-b"), "{message}");
    assert_eq!(
        status["policy"]["tuning"]["postCopy"], false,
        "the override held: {status:#}"
    );
    // Without post-copy, forcing pauses the guest for the last copy (and
    // with every timeout off, nothing else would); it resumes on the
    // target within the same boot.
    let uid = migration(&rig.scope, &name)
        .await
        .and_then(|m| m.metadata.uid)
        .expect("the migration's uid");
    let source_log = strip_ansi(&std::fs::read_to_string(&rig.agents.a.log).unwrap_or_default());
    assert!(
        source_log.lines().any(|l| l.contains("convergence action")
            && l.contains(&uid)
            && l.contains("action=Pause")),
        "no forced pause in the source agent's log:\n{source_log}"
    );
    guest.beats_on("node-b", before).await;
    assert_eq!(
        guest.state("node-a"),
        None,
        "the source still has the domain"
    );
    eventually(
        Duration::from_secs(10),
        "in-flight gauge back to 0",
        || async {
            let n = rig
                .controller
                .metric(r#"kvmotion_controller_migrations_in_flight{phase="Migrating"}"#)
                .await?;
            (n == 0.0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    rig.expect_events(&name, &["Succeeded"]).await;
}
