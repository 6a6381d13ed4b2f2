//! On the lab cluster: `helm upgrade` to a new agent image tag rolls the
//! agents one node at a time (a hypervisor always keeps serving while the
//! other's agent is replaced), and `helm uninstall` removes every pod and
//! workload of the release.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmotion_tests::cluster::{NAMESPACE, Release, kubectl, placement, pods, retag};

/// One look at the agent pods: per pod, its node, image and readiness.
type Sample = Vec<(String, String, bool)>;

fn agent_sample() -> Sample {
    pods("agent")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let (node, ready) = placement(p);
            let image = p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (node, image, ready)
        })
        .collect()
}

#[tokio::test]
async fn helm_upgrade_rolls_agents_one_node_at_a_time_and_uninstall_removes_every_pod() {
    let _lab = kvmotion_tests::lab::exclusive().await;
    let mut release = Release::install("cluster-upgrade");
    let old_image = format!("localhost/kvmotion-agent:{}", release.tag);
    let next = format!("{}-next", release.tag);
    let new_image = format!("localhost/kvmotion-agent:{next}");
    // A new tag of the same build, as a release pipeline would push.
    let out = retag(&old_image, &new_image);
    assert!(out.ok, "tagging {new_image}: {}", out.stderr);

    // Watch the agent pods through the whole rollout.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (samples, done) = (samples.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let s = agent_sample();
                samples.lock().expect("samples").push(s);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let tag = release.tag.clone();
    release.upgrade(&tag, &["--set", &format!("agent.image.tag={next}")]);
    // helm --wait counts a DaemonSet ready with maxUnavailable pods still
    // coming up: the rollout is watched to its end.
    let rolled = kvmotion_tests::eventually(
        Duration::from_secs(90),
        "both agents on the new image",
        || async {
            let s = agent_sample();
            (s.len() == 2
                && s.iter()
                    .all(|(_, image, ready)| *image == new_image && *ready))
            .then_some(s)
        },
    )
    .await;
    done.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");

    let samples = samples.lock().expect("samples").clone();
    let serving = |s: &Sample, node: &str| s.iter().any(|(n, _, ready)| n == node && *ready);
    // Never both hypervisors without a Ready agent at once...
    for s in &samples {
        assert!(
            serving(s, "node-a") || serving(s, "node-b"),
            "both agents down at once: {s:?}"
        );
    }
    // ...and the rollout was seen: each node in turn without a Ready agent
    // while the other kept one.
    for node in ["node-a", "node-b"] {
        assert!(
            samples.iter().any(|s| !serving(s, node)),
            "{node}'s agent was never seen replaced: {samples:?}"
        );
    }
    let last =
        rolled.unwrap_or_else(|e| panic!("{e}: {:?}\n{}", agent_sample(), release.describe()));
    let mut nodes: Vec<&str> = last.iter().map(|(n, _, _)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["node-a", "node-b"], "{last:?}");
    assert!(
        last.iter()
            .all(|(_, image, ready)| *image == new_image && *ready),
        "both agents Ready on {new_image}: {last:?}"
    );
    // The controller was not touched by an agent-only upgrade.
    for pod in release.pods("controller") {
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            format!("localhost/kvmotion-controller:{}", release.tag)
        );
    }

    // Dropping the release is `helm uninstall`, waited for until no pod
    // of it is left.
    drop(release);
    let left = kubectl(&[
        "get",
        "pods,deployments,daemonsets,services",
        "-n",
        NAMESPACE,
        "-o",
        "name",
    ]);
    assert!(left.ok, "{}", left.stderr);
    assert_eq!(left.stdout.trim(), "", "left after helm uninstall");
}
