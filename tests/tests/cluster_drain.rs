//! On the lab cluster, with the chart's drain guard and evacuate-on-cordon
//! on: the real `kubectl drain` of node-a waits while a VM runs there. A
//! drain whose `--timeout` expires leaves the node cordoned, its guard in
//! place and the evacuation going on; the next drain completes once the VM
//! has moved, and the uncordon brings the guard back. An uncordon while
//! the cordon's evacuation is under way cancels the moves that have not
//! started and lets the running one finish.

use std::time::Duration;

use kvmotion_tests::cluster::{NAMESPACE, Release, get_json, kubectl, placement};
use kvmotion_tests::control_plane::control_plane;
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lift_cap};
use kvmotion_tests::scope::SCOPE_LABEL;
use serde_json::json;

const GUARD_A: &str = "node-a-has-vms-see-kubectl-get-nevac";
const GUARD_B: &str = "node-b-has-vms-see-kubectl-get-nevac";
const OPT_IN: &str = "kvmotion.io/evacuate-on-cordon";

/// node-a opted in to evacuate-on-cordon; on drop uncordoned and opted out
/// again, whatever the test did.
struct OptedIn;

impl OptedIn {
    fn node_a() -> OptedIn {
        let out = kubectl(&[
            "label",
            "node",
            "node-a",
            &format!("{OPT_IN}=true"),
            "--overwrite",
        ]);
        assert!(out.ok, "labelling node-a: {}", out.stderr);
        OptedIn
    }
}

impl Drop for OptedIn {
    fn drop(&mut self) {
        let _ = kubectl(&["uncordon", "node-a"]);
        let _ = kubectl(&["label", "node", "node-a", &format!("{OPT_IN}-")]);
    }
}

/// Creates a MigrationPolicy `name` in the release's scope (removed with
/// it) whose moves crawl (2 MiB/s, nothing that would make them converge),
/// `per_cluster` at a time, until the test lifts the cap through libvirt.
fn crawl_policy(release: &Release, name: &str, per_cluster: u32) {
    let policy = json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "MigrationPolicy",
        "metadata": {"name": name, "labels": {SCOPE_LABEL: release.scope.id}},
        "spec": {"concurrency": {"perCluster": per_cluster},
                 "tuning": {"bandwidthMiBps": 2, "postCopy": false, "autoConverge": false,
                            "progressTimeoutSeconds": 0, "completionTimeoutPerGiBSeconds": 0}},
    });
    let out = release
        .scope
        .kubectl(&["apply", "-f", "-"], Some(&policy.to_string()));
    assert!(out.ok, "creating policy {name}: {}", out.stderr);
}

/// The guard pod `name`, if it exists and is not going away: its node and
/// whether it is Ready.
fn guard(name: &str) -> Option<(String, bool)> {
    let out = kubectl(&["get", "pod", "-n", NAMESPACE, name, "-o", "json"]);
    let pod: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    pod["metadata"]["deletionTimestamp"]
        .is_null()
        .then(|| placement(&pod))
}

async fn wait_guarded(node: &str, name: &str, release: &Release) {
    eventually(
        Duration::from_secs(90),
        &format!("{node}'s guard Ready"),
        || async { guard(name).filter(|(n, ready)| n == node && *ready) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", release.describe()));
}

/// `kubectl drain node-a` with a global timeout: exit code, and what it
/// printed (its retries go to stderr).
fn drain(timeout: &str) -> (Option<i32>, String) {
    let (code, out) = control_plane().run(
        "kubectl",
        &[
            "drain",
            "node-a",
            "--ignore-daemonsets",
            "--timeout",
            timeout,
        ],
        None,
    );
    (code, format!("{}{}", out.stdout, out.stderr))
}

#[tokio::test]
async fn kubectl_drain_waits_until_the_nodes_vms_have_moved_and_the_guard_returns_after_the_uncordon()
 {
    let _lab = exclusive().await;
    let release = Release::install_with_values(
        "cluster-drain",
        &[
            "--set",
            "controller.drainGuard.enabled=true",
            "--set",
            "controller.evacuateOnCordon.enabled=true",
            "--set",
            "controller.evacuateOnCordon.policy=drain-crawl",
        ],
    );
    crawl_policy(&release, "drain-crawl", 5);
    wait_guarded("node-a", GUARD_A, &release).await;
    wait_guarded("node-b", GUARD_B, &release).await;
    let budget = get_json(&["pdb", "-n", NAMESPACE, GUARD_A]);
    assert_eq!(budget["spec"]["minAvailable"], 1, "{budget:#}");

    let guest = Guest::start("node-a", "cd-vm", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");
    kvmotion_tests::e2e::wait_listed(control_plane().client().await, "node-a", "cd-vm", false)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", release.describe()));
    let _opted = OptedIn::node_a();

    // The first drain gives up after 20 s: the move crawls, the guard's
    // budget refuses every eviction, and drain names the guard each time.
    let (code, out) = drain("20s");
    assert_ne!(
        code,
        Some(0),
        "drain returned while the VM runs there:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "error when evicting pods/\"{GUARD_A}\" -n \"{NAMESPACE}\""
        )),
        "drain's retries do not name the guard:\n{out}"
    );
    assert!(
        out.contains("disruption budget"),
        "refused by something else than the budget:\n{out}"
    );
    // What an expired drain leaves: node-a cordoned, its guard in place,
    // the VM still there while its evacuation runs.
    let node = get_json(&["node", "node-a"]);
    assert_eq!(node["spec"]["unschedulable"], true, "{node:#}");
    assert_eq!(guard(GUARD_A), Some(("node-a".into(), true)));
    assert_eq!(guest.state("node-a").as_deref(), Some("running"));
    let evac = get_json(&["nevac", "cordon-node-a"]);
    assert_eq!(evac["status"]["phase"], "Evacuating", "{evac:#}");

    // The next drain waits; lifting the cap lets the move end, the
    // controller deletes node-a's guard, and the drain completes.
    let waiting = tokio::task::spawn_blocking(|| drain("300s"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!waiting.is_finished(), "the second drain did not wait");
    lift_cap("node-a", "cd-vm");
    let (code, out) = waiting.await.expect("drain thread");
    assert_eq!(
        code,
        Some(0),
        "drain failed:\n{out}\n{}",
        release.describe()
    );
    assert!(out.contains("node/node-a drained"), "{out}");
    guest.moved_whole_to("node-b", before).await;
    let evac = get_json(&["nevac", "cordon-node-a"]);
    assert_eq!(evac["status"]["phase"], "Completed", "{evac:#}");
    assert_eq!(guard(GUARD_A), None, "node-a's guard is still there");
    assert_eq!(
        guard(GUARD_B).map(|(n, _)| n),
        Some("node-b".to_string()),
        "node-b, still running its VMs' new home, lost its guard"
    );
    // Every controller replica left node-a and runs on node-b.
    for pod in release.pods("controller") {
        let (node, _) = placement(&pod);
        assert_eq!(node, "node-b", "{}", release.describe());
    }

    // Uncordoned: the cordon's evacuation goes and the guard comes back.
    let out = kubectl(&["uncordon", "node-a"]);
    assert!(out.ok, "{}", out.stderr);
    wait_guarded("node-a", GUARD_A, &release).await;
    eventually(
        Duration::from_secs(30),
        "the cordon's evacuation deleted",
        || async {
            let out = kubectl(&[
                "get",
                "nevac",
                "cordon-node-a",
                "--ignore-not-found",
                "-o",
                "name",
            ]);
            (out.ok && out.stdout.trim().is_empty()).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", release.describe()));
}

#[tokio::test]
async fn an_uncordon_mid_evacuation_cancels_the_moves_not_started_and_lets_the_running_one_finish()
{
    let _lab = exclusive().await;
    let release = Release::install_with_values(
        "cluster-uncordon",
        &[
            "--set",
            "controller.evacuateOnCordon.enabled=true",
            "--set",
            "controller.evacuateOnCordon.policy=uncordon-crawl",
        ],
    );
    // One move at a time, crawling: the first is mid-transfer while the
    // second waits for capacity.
    crawl_policy(&release, "uncordon-crawl", 1);
    let guests = Guest::start_all("node-a", "cu", &vec![GuestSpec::default(); 2]).await;
    for g in &guests {
        kvmotion_tests::e2e::wait_listed(control_plane().client().await, "node-a", &g.name, false)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", release.describe()));
    }
    let _opted = OptedIn::node_a();
    let out = kubectl(&["cordon", "node-a"]);
    assert!(out.ok, "{}", out.stderr);

    let evac = "cordon-node-a";
    let (moving_name, moving_vm, waiting_name) =
        kvmotion_tests::evacuation::one_moving_one_waiting(
            &release.scope,
            evac,
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", release.describe()));
    let moved = guests
        .iter()
        .find(|g| g.name == moving_vm)
        .expect("the moving guest");
    let stays = guests
        .iter()
        .find(|g| g.name != moving_vm)
        .expect("the waiting guest");
    let before = moved.last_beat("node-a").expect("beating");

    // Uncordoned: the evacuation goes with the move that had not started;
    // the running one is let go of, and finishes.
    let out = kubectl(&["uncordon", "node-a"]);
    assert!(out.ok, "{}", out.stderr);
    eventually(
        Duration::from_secs(60),
        "the evacuation and its waiting move deleted",
        || async {
            let gone = |kind: &str, name: &str| {
                let out = kubectl(&["get", kind, name, "--ignore-not-found", "-o", "name"]);
                out.ok && out.stdout.trim().is_empty()
            };
            (gone("nevac", evac) && gone("vmm", &waiting_name)).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", release.describe()));
    let released = get_json(&["vmm", &moving_name]);
    assert!(
        released["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "the running move still belongs to the evacuation: {released:#}"
    );
    lift_cap("node-a", &moving_vm);
    release
        .wait_phase(&moving_name, "Succeeded", Duration::from_secs(120))
        .await;
    moved.moved_whole_to("node-b", before).await;
    assert_eq!(stays.state("node-a").as_deref(), Some("running"));
    assert_eq!(stays.state("node-b"), None);
    // Nothing re-creates the cancelled move later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left: Vec<String> = kvmotion_tests::evacuation::migrations(&release.scope, evac)
        .iter()
        .filter_map(|m| m["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, [moving_name], "{}", release.describe());
}
