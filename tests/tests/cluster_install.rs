//! On the lab cluster (a kubelet per hypervisor): `helm install` of the
//! chart with the images `make images` built runs every pod to Ready
//! through its real probes, the agents publish their Hypervisors from
//! inside their pods and answer over TLS, and a migration applied with
//! kubectl moves a guest through the in-cluster controller and agents.

use std::time::Duration;

use kvmotion_tests::cluster::{Release, get_json, placement};
use kvmotion_tests::e2e::condition;
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

#[tokio::test]
async fn helm_install_runs_ready_pods_on_both_nodes_and_they_move_a_guest_live() {
    let _lab = exclusive().await;
    let release = Release::install("cluster-install");

    // Two controller replicas (spread over the nodes) and one agent per
    // hypervisor, all Ready by their own probes.
    let controllers = release.pods("controller");
    let agents = release.pods("agent");
    let mut agent_nodes: Vec<String> = agents.iter().map(|p| placement(p).0).collect();
    agent_nodes.sort();
    assert_eq!(agent_nodes, ["node-a", "node-b"], "{}", release.describe());
    assert_eq!(controllers.len(), 2, "{}", release.describe());
    for pod in controllers.iter().chain(&agents) {
        let (node, ready) = placement(pod);
        assert!(
            ready,
            "{} on {node} not Ready\n{}",
            pod["metadata"]["name"],
            release.describe()
        );
    }
    // One of them leads. A Lease left by an earlier release's pod (one
    // stopped without releasing it) holds until it expires, so allow one
    // lease duration and a margin.
    let names: Vec<String> = controllers
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    eventually(
        Duration::from_secs(30),
        "a controller pod to lead",
        || async { release.leader().filter(|h| names.contains(h)) },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the Lease names {:?}\n{}",
            release.leader(),
            release.describe()
        )
    });

    // Each agent, from its pod, publishes its node's Hypervisor with the
    // TLS endpoint on the migration network.
    for (node, ip) in [("node-a", "10.99.0.1"), ("node-b", "10.99.0.2")] {
        let hv = get_json(&["hypervisor", node]);
        assert_eq!(
            hv["status"]["agentEndpoint"],
            format!("https://{ip}:9443"),
            "{node}: {hv:#}"
        );
        assert_eq!(hv["status"]["migrationAddress"], ip, "{node}: {hv:#}");
    }

    let guest = Guest::start("node-a", "cl-live", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");
    let name = release.migrate(
        "cl-live",
        json!({"vm": {"name": "cl-live"}, "targetNode": "node-b", "mode": "Live"}),
    );
    let status = release
        .wait_phase(&name, "Succeeded", Duration::from_secs(180))
        .await;

    assert_eq!(status["targetNode"], "node-b", "{status:#}");
    assert_eq!(condition(&status, "Completed").1, "Succeeded", "{status:#}");
    guest.moved_whole_to("node-b", before).await;
    // The controller's pods answered through the Service-less lab the way
    // they do in a cluster: no pod restarted on the way.
    for pod in release
        .pods("controller")
        .iter()
        .chain(&release.pods("agent"))
    {
        let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(
            restarts,
            0,
            "{} restarted\n{}",
            pod["metadata"]["name"],
            release.describe()
        );
    }
}
