//! End to end: with a cluster limit of 1, three migrations wait in Pending
//! with WaitingForCapacity and run one at a time, in creation order.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::{Value, json};

/// When the migration entered `phase`, from its status.
fn entered(status: &Value, phase: &str) -> String {
    status["phaseTransitionTimes"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["phase"] == phase))
        .and_then(|t| t["time"].as_str())
        .unwrap_or_else(|| panic!("never entered {phase}: {status:#}"))
        .to_string()
}

#[tokio::test]
async fn over_the_limit_migrations_wait_and_start_in_creation_order() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-queueing", &[]).await;
    let (policy, policy_name) = rig.scope.adopt(
        &json!({
            "apiVersion": "kvmotion.io/v1alpha1",
            "kind": "MigrationPolicy",
            "metadata": {"name": "one-at-a-time"},
            "spec": {"concurrency": {"perCluster": 1}},
        })
        .to_string(),
    );
    let out = rig
        .scope
        .kubectl(&["apply", "-f", "-"], Some(&policy.to_string()));
    assert!(out.ok, "{}", out.stderr);
    let guests = Guest::start_all("node-a", "e2e-queue", &vec![GuestSpec::default(); 3]).await;
    for g in &guests {
        rig.wait_inventory("node-a", &g.name).await;
    }
    let mut names = Vec::new();
    for g in &guests {
        names.push(rig.migrate(
            &format!("q{}", g.name.rsplit('-').next().unwrap_or("x")),
            json!({"vm": {"name": g.name}, "targetNode": "node-b", "policyRef": {"name": policy_name}}),
        ));
        // Distinct creation seconds make the expected order unambiguous.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let waited = rig.status(&names[2]).await.expect("status");
    let (ok, reason, message) = condition(&waited, "Admitted");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "WaitingForCapacity"),
        "{waited:#}"
    );
    assert!(
        message.starts_with("cluster limit (1) is taken"),
        "{message}"
    );

    let mut done = Vec::new();
    for n in &names {
        done.push(
            rig.wait_phase(n, "Succeeded", Duration::from_secs(180))
                .await,
        );
    }
    for pair in done.windows(2) {
        // The next one leaves Pending only once the previous one ended.
        assert!(
            entered(&pair[1], "Scheduling") >= entered(&pair[0], "Succeeded"),
            "overlap: {:#} / {:#}",
            pair[0],
            pair[1]
        );
    }
    for n in &names[1..] {
        rig.expect_events(n, &["WaitingForCapacity"]).await;
    }
    for g in &guests {
        // The console log on node-b may trail the move by a beat.
        let beat = kvmotion_tests::eventually(
            std::time::Duration::from_secs(20),
            &format!("{} beating on node-b", g.name),
            || async { g.last_beat("node-b") },
        )
        .await;
        assert!(beat.is_ok(), "{} runs on node-b", g.name);
    }
}
