//! On the lab cluster: the pods kvmotion runs as are deleted in the middle
//! of a live migration, as a node drain or a rollout does. The leader
//! controller's pod goes: the standby takes the Lease and finishes the
//! move. The source agent's pod goes: the DaemonSet recreates it, the new
//! agent adopts libvirt's job from its state directory, and the migration
//! Succeeds.

use std::time::Duration;

use kvmotion_tests::cluster::{NAMESPACE, Release, kubectl, placement};
use kvmotion_tests::e2e::condition;
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::{Value, json};

/// A live move of `vm` to node-b too slow to end by itself (2 MiB/s
/// against a guest that keeps dirtying memory, no post-copy, no timeouts)
/// until the cap is lifted through libvirt.
fn crawling(vm: &str) -> Value {
    json!({"vm": {"name": vm}, "targetNode": "node-b",
           "overrides": {"bandwidthMiBps": 2, "postCopy": false, "autoConverge": false,
                         "progressTimeoutSeconds": 0, "completionTimeoutPerGiBSeconds": 0}})
}

/// Waits until the migration is Migrating with data moving.
async fn wait_moving(release: &Release, name: &str) {
    eventually(
        Duration::from_secs(90),
        "data moving while Migrating",
        || async {
            let s = release.status(name);
            (s["phase"] == "Migrating" && s["progress"]["dataProcessedBytes"].as_u64()? > 0)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:#}\n{}", release.status(name), release.describe()));
}

#[tokio::test]
async fn the_leader_pod_deleted_mid_migration_leaves_the_standby_to_finish_it() {
    let _lab = exclusive().await;
    let release = Release::install("cluster-leader");
    let guest = Guest::start("node-a", "cl-leader", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");
    let name = release.migrate("cl-leader", crawling("cl-leader"));
    wait_moving(&release, &name).await;

    let leader = release.leader().expect("a leader");
    let standby = release
        .pods("controller")
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .find(|p| *p != leader)
        .expect("a standby replica");
    let out = kubectl(&["delete", "pod", "-n", NAMESPACE, &leader, "--wait=true"]);
    assert!(out.ok, "deleting {leader}: {}", out.stderr);
    // The leader released its Lease as it stopped: the standby holds it
    // well within one lease duration.
    let holder = eventually(Duration::from_secs(20), "the standby to lead", || async {
        release.leader().filter(|h| *h != leader)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", release.describe()));
    assert_eq!(holder, standby, "{}", release.describe());
    assert_eq!(release.status(&name)["phase"], "Migrating");

    kvmotion_tests::lab::lift_cap("node-a", "cl-leader");
    let status = release
        .wait_phase(&name, "Succeeded", Duration::from_secs(120))
        .await;
    assert_eq!(status["targetNode"], "node-b", "{status:#}");
    guest.moved_whole_to("node-b", before).await;
}

#[tokio::test]
async fn the_source_agent_pod_deleted_mid_migration_is_recreated_adopts_the_job_and_succeeds() {
    let _lab = exclusive().await;
    let release = Release::install("cluster-agent");
    let guest = Guest::start("node-a", "cl-agent", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");
    let name = release.migrate("cl-agent", crawling("cl-agent"));
    wait_moving(&release, &name).await;

    let pod_on = |node: &str| {
        release
            .pods("agent")
            .into_iter()
            .find(|p| placement(p).0 == node)
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
    };
    let old = pod_on("node-a").expect("node-a's agent pod");
    let out = kubectl(&["delete", "pod", "-n", NAMESPACE, &old, "--wait=true"]);
    assert!(out.ok, "deleting {old}: {}", out.stderr);
    let new = eventually(
        Duration::from_secs(60),
        "node-a's agent recreated and Ready",
        || async {
            release
                .pods("agent")
                .into_iter()
                .find(|p| {
                    placement(p) == ("node-a".to_string(), true)
                        && p["metadata"]["name"] != old.as_str()
                })
                .map(|p| {
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", release.describe()));
    // The job never stopped: libvirt runs it in libvirtd, not in the pod.
    assert_eq!(guest.state("node-a").as_deref(), Some("running"));
    let logs = kubectl(&["logs", "-n", NAMESPACE, &new]);
    assert!(
        logs.stdout.contains("running: 1"),
        "the new agent adopted the running job:\n{}",
        logs.stdout
    );

    kvmotion_tests::lab::lift_cap("node-a", "cl-agent");
    let status = release
        .wait_phase(&name, "Succeeded", Duration::from_secs(120))
        .await;
    assert_eq!(status["targetNode"], "node-b", "{status:#}");
    assert_eq!(condition(&status, "Completed").1, "Succeeded", "{status:#}");
    guest.moved_whole_to("node-b", before).await;
}
