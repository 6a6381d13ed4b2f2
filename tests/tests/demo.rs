//! `make demo`'s program, run as a newcomer would: it must move the guest
//! and say so, and leave no migration behind.

use kvmotion_tests::control_plane::control_plane;
use kvmotion_tests::controller::workspace_binary;

#[tokio::test]
async fn the_demo_live_migrates_its_guest_and_shows_the_progress_and_result() {
    let cp = control_plane();
    // The demo takes the lab lock itself; holding it here would deadlock.
    let out = tokio::process::Command::new(workspace_binary("kvmotion-tests", "demo"))
        .env_remove("KEEP")
        .output()
        .await
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    for want in [
        "==> kubectl migrate demo-vm --to node-b --wait",
        "Migrating",
        "Succeeded: demo-vm runs on node-b (moved from node-a)",
        "Result: duration",
        "==> demo-vm runs on node-b: heartbeat #",
        "==> tearing down",
    ] {
        assert!(stdout.contains(want), "no {want:?} in\n{stdout}\n{stderr}");
    }
    let left = cp.kubectl(&["get", "vmm", "-o", "name"], None);
    assert!(left.ok, "{}", left.stderr);
    let ours: Vec<&str> = left
        .stdout
        .lines()
        .filter(|l| l.contains("demo-vm"))
        .collect();
    assert!(ours.is_empty(), "the demo left {ours:?}");
}
