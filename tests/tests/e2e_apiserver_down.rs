//! End to end: the API server stops answering for 60 s (its process frozen)
//! while a migration runs. libvirt carries on; once the API server is back,
//! the controller reads the job from the agent and reports what libvirt
//! did: Succeeded, the VM on the target in the same boot. Its own test
//! binary: nothing else may run while the API server is frozen.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, phases};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

/// Freezes the test control plane's kube-apiserver (SIGSTOP) while alive;
/// thawed when dropped, whatever the test did.
struct Frozen(String);

impl Frozen {
    fn apiserver() -> Frozen {
        let pid_file = kvmotion_tests::repo_root().join("target/control-plane/kube-apiserver.pid");
        let pid = std::fs::read_to_string(pid_file).expect("the apiserver's pid");
        let pid = pid.trim().to_string();
        signal("-STOP", &pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(sig: &str, pid: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn a_migration_survives_sixty_seconds_without_an_api_server() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-apiserver", &[]).await;
    let guest = Guest::start("node-a", "e2e-apiserver", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-apiserver").await;
    let before = guest.last_beat("node-a").expect("beating");

    // Capped so that the job is still running when the API server goes.
    let name = rig.migrate(
        "down",
        json!({
            "vm": {"name": "e2e-apiserver"},
            "targetNode": "node-b",
            "overrides": {"bandwidthMiBps": 20}
        }),
    );
    rig.wait_moving(&name).await;
    {
        let _frozen = Frozen::apiserver();
        tokio::time::sleep(Duration::from_secs(60)).await;
        // The move finished in libvirt while nobody could record it.
        assert_eq!(guest.state("node-b").as_deref(), Some("running"));
        assert_eq!(guest.state("node-a"), None);
    }
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(180))
        .await;
    assert_eq!(
        phases(&status)[3..],
        ["Preparing", "Migrating", "Finalizing", "Succeeded"],
        "{status:#}"
    );
    assert!(
        status["result"]["dataTransferredBytes"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{status:#}"
    );
    guest.beats_on("node-b", before).await;
}
