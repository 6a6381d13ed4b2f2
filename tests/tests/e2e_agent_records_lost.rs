//! End to end: the source agent dies mid-migration and comes back with an
//! empty state directory (a pod rescheduled without its hostPath, a wiped
//! disk). The agent has no record of the job, but libvirt still runs it:
//! the controller never concludes JobLost while it does. It waits, saying
//! so; a job that ends meanwhile is verified from where the VM runs, and
//! one that outlives the agent timeout is aborted on the domain itself.

use std::time::Duration;

use kvmotion_tests::agent::AgentProcess;
use kvmotion_tests::e2e::{Rig, condition, find_condition};
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::{Value, json};

/// A live move of `vm` to node-b too slow to end by itself (2 MiB/s
/// against a guest dirtying 4 MiB/s, no post-copy, no timeouts).
fn crawling(vm: &str) -> Value {
    json!({"vm": {"name": vm}, "targetNode": "node-b",
           "overrides": {"bandwidthMiBps": 2, "postCopy": false, "autoConverge": false,
                         "progressTimeoutSeconds": 0, "completionTimeoutPerGiBSeconds": 0}})
}

/// Kills node-a's agent mid-move and starts it on an empty state directory;
/// returns the status once the controller says it waits for libvirt's job.
async fn lose_the_source_records(rig: &mut Rig, name: &str, label: &str) -> Value {
    rig.wait_moving(name).await;
    rig.agents.a.kill().await;
    rig.agents.a = AgentProcess::start("node-a", label, &[]).await;
    eventually(
        Duration::from_secs(60),
        "the controller to wait for the job its agent forgot",
        || async {
            let s = rig.status(name).await?;
            let (_, reason, _) = find_condition(&s, "AgentsReachable")?;
            (reason == "JobNotAdopted").then_some(s)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()))
}

#[tokio::test]
async fn a_job_its_agent_forgot_is_waited_for_and_verified_once_libvirt_ends_it() {
    let _lab = exclusive().await;
    let mut rig = Rig::start("e2e-forgot", &[]).await;
    let guest = Guest::start("node-a", "e2e-forgot", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-forgot").await;
    let before = guest.last_beat("node-a").expect("beating");
    let name = rig.migrate("forgot", crawling("e2e-forgot"));

    let waiting = lose_the_source_records(&mut rig, &name, "e2e-forgot-wiped").await;
    assert_eq!(waiting["phase"], "Migrating", "{waiting:#}");
    let (status, _, message) = condition(&waiting, "AgentsReachable");
    assert_eq!(status, "False", "{waiting:#}");
    assert!(
        message.contains("node-a") && message.contains("no record"),
        "{message}"
    );
    assert_eq!(guest.state("node-a").as_deref(), Some("running"));

    // An operator lifts the cap through libvirt: the job ends by itself.
    kvmotion_tests::lab::lift_cap("node-a", "e2e-forgot");
    let done = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(120))
        .await;

    let (_, _, located) = condition(&done, "Completed");
    assert!(located.contains("node-b"), "{located}");
    let (reachable, reason, _) = condition(&done, "AgentsReachable");
    assert_eq!(
        (reachable.as_str(), reason.as_str()),
        ("True", "JobLost"),
        "judged by where the VM is: {done:#}"
    );
    guest.moved_whole_to("node-b", before).await;
}

#[tokio::test]
async fn a_job_its_agent_forgot_is_aborted_on_the_domain_after_the_agent_timeout() {
    let _lab = exclusive().await;
    let mut rig = Rig::start("e2e-forgot-abort", &["--agent-timeout-seconds", "15"]).await;
    let guest = Guest::start("node-a", "e2e-forgot-ab", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-forgot-ab").await;
    let before = guest.last_beat("node-a").expect("beating");
    let name = rig.migrate("forgot-abort", crawling("e2e-forgot-ab"));

    lose_the_source_records(&mut rig, &name, "e2e-forgot-abort-wiped").await;
    let failed = rig
        .wait_phase(&name, "Failed", Duration::from_secs(90))
        .await;
    let (_, reason, message) = condition(&failed, "Completed");
    assert_eq!(reason, "JobNotAdopted", "{message}");
    assert!(message.contains("no record"), "{message}");
    let located = eventually(
        Duration::from_secs(90),
        "the VM to be located after the abort",
        || async {
            let s = rig.status(&name).await?;
            let (_, reason, message) = find_condition(&s, "Settled")?;
            (reason == "VMLocated").then_some(message)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));

    assert!(located.contains("node-a"), "{located}");
    // The abort reached libvirt's job: the guest never left, and keeps
    // beating on node-a in the same boot, defined nowhere else.
    guest.moved_whole_to("node-a", before).await;
}
