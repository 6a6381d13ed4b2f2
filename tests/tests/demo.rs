//! `make demo`'s program, run as a newcomer would: it must install kvmotion
//! with helm onto the lab's two nodes, show its pods Running there, move the
//! guest and say so, and leave no migration or pod behind.

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
        "==> helm install kvmotion charts/kvmotion -n kvmotion-system",
        "==> kubectl get pods -n kvmotion-system -o wide",
        "==> kubectl migrate demo-vm --to node-b --wait",
        "Migrating",
        "Succeeded: demo-vm runs on node-b (moved from node-a)",
        "Result: duration",
        "==> demo-vm runs on node-b: heartbeat #",
        "==> tearing down",
    ] {
        assert!(stdout.contains(want), "no {want:?} in\n{stdout}\n{stderr}");
    }
    // The pods ran where the chart puts them: an agent on each node, the
    // two controller replicas spread over both.
    let pods = stdout
        .split("==> kubectl get pods -n kvmotion-system -o wide")
        .nth(1)
        .and_then(|rest| rest.split("\n==>").next())
        .unwrap_or_default();
    for node in ["node-a", "node-b"] {
        let running = pods
            .lines()
            .filter(|l| l.contains(" Running ") && l.contains(node))
            .count();
        assert!(running >= 1, "no pod Running on {node}:\n{pods}");
    }
    for component in ["kvmotion-agent-", "kvmotion-controller-"] {
        let n = pods
            .lines()
            .filter(|l| l.starts_with(component) && l.contains("1/1"))
            .count();
        assert_eq!(n, 2, "{component}* Ready:\n{pods}");
    }
    let left_pods = cp.kubectl(
        &["get", "pods", "-n", "kvmotion-system", "-o", "name"],
        None,
    );
    assert!(
        left_pods.ok && left_pods.stdout.trim().is_empty(),
        "the demo left pods: {}",
        left_pods.stdout
    );
    let left = cp.kubectl(&["get", "vmm", "-o", "name"], None);
    assert!(left.ok, "{}", left.stderr);
    let ours: Vec<&str> = left
        .stdout
        .lines()
        .filter(|l| l.contains("demo-vm"))
        .collect();
    assert!(ours.is_empty(), "the demo left {ours:?}");
}
