//! End to end: a NodeEvacuation empties node-a through the controller and
//! the lab's agents. A dry run shows the whole plan and moves nothing; the
//! same object, its dry run turned off, moves every guest; a VM too big
//! for any target blocks the plan and nothing moves; a VM that cannot move
//! live moves offline when the spec allows it; deleting an evacuation
//! cancels the moves that have not started and lets the running one end.

use std::time::Duration;

use kvmotion_tests::controller::metric_value;
use kvmotion_tests::e2e::Rig;
use kvmotion_tests::evacuation;
use kvmotion_tests::lab::{DiskKind, Guest, GuestSpec, exclusive, lab};
use serde_json::{Value, json};

/// Starts `n` guests on node-a named `prefix-i`, each listed in its
/// inventory.
async fn guests(rig: &Rig, prefix: &str, n: usize) -> Vec<Guest> {
    sized(rig, prefix, &vec![256; n]).await
}

/// Starts one guest on node-a per size (MiB), named `prefix-i`.
async fn sized(rig: &Rig, prefix: &str, mib: &[u32]) -> Vec<Guest> {
    let specs: Vec<GuestSpec> = mib
        .iter()
        .map(|m| GuestSpec {
            memory_mib: *m,
            ..GuestSpec::default()
        })
        .collect();
    let out = Guest::start_all("node-a", prefix, &specs).await;
    for g in &out {
        rig.wait_inventory("node-a", &g.name).await;
    }
    out
}

fn patch_evacuation(rig: &Rig, name: &str, patch: Value) {
    let out = rig.scope.kubectl(
        &[
            "patch",
            "nodeevacuation",
            name,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    assert!(out.ok, "patching {name} with {patch}: {}", out.stderr);
}

fn vms_in(list: &Value) -> Vec<String> {
    let mut vms: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["vm"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    vms.sort();
    vms
}

#[tokio::test]
async fn a_dry_run_shows_the_plan_and_moves_nothing_then_the_evacuation_moves_every_guest() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-evacuation", &[]).await;
    // Four guests of different sizes: the plan places the largest first.
    let guests = sized(&rig, "ev-all", &[192, 320, 256, 384]).await;
    let before: Vec<_> = guests
        .iter()
        .map(|g| g.last_beat("node-a").expect("beating"))
        .collect();

    let name = evacuation::apply(
        &rig.scope,
        "drain-a",
        json!({"nodeName": "node-a", "dryRun": true}),
    );
    let planned = evacuation::wait_phase(&rig.scope, &name, "Planned", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    let plan = planned["plan"].as_array().cloned().unwrap_or_default();
    let order: Vec<u64> = plan
        .iter()
        .filter_map(|m| m["memoryBytes"].as_u64())
        .map(|b| b >> 20)
        .collect();
    assert_eq!(order, [384, 320, 256, 192], "largest first: {planned:#}");
    for (m, g) in plan
        .iter()
        .zip([&guests[3], &guests[1], &guests[2], &guests[0]])
    {
        assert_eq!(m["vm"], g.name.as_str(), "{planned:#}");
        assert_eq!(m["uuid"], g.uuid.as_str(), "{planned:#}");
        assert_eq!(m["targetNode"], "node-b", "{planned:#}");
        assert_eq!(m["mode"], "Live", "{planned:#}");
        assert!(
            m["migration"].is_null(),
            "a dry run creates nothing: {planned:#}"
        );
    }
    assert_eq!(planned["counts"]["total"], 4, "{planned:#}");
    assert!(evacuation::migrations(&rig.scope, &name).is_empty());
    for g in &guests {
        assert_eq!(g.state("node-a").as_deref(), Some("running"));
    }

    // Carry the plan out: the same object, dryRun off.
    patch_evacuation(&rig, &name, json!({"spec": {"dryRun": false}}));
    let done = evacuation::wait_phase(&rig.scope, &name, "Completed", Duration::from_secs(300))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    assert_eq!(done["counts"]["moved"], 4, "{done:#}");
    assert_eq!(done["counts"]["failed"], 0, "{done:#}");
    // Its phases as Events, and its end in the controller's metrics.
    rig.expect_events(&name, &["Planned", "Evacuating", "Completed"])
        .await;
    let page = rig.controller.metrics_text().await;
    let metric = |series: &str| {
        metric_value(&page, series).unwrap_or_else(|| panic!("no {series} in\n{page}"))
    };
    let ended = r#"{result="Completed"}"#;
    assert_eq!(
        metric(&format!("kvmotion_controller_evacuations_total{ended}")),
        1.0
    );
    assert_eq!(
        metric(&format!(
            "kvmotion_controller_evacuation_duration_seconds_count{ended}"
        )),
        1.0
    );
    assert!(
        metric(&format!(
            "kvmotion_controller_evacuation_duration_seconds_sum{ended}"
        )) > 0.0
    );
    assert_eq!(
        metric(r#"kvmotion_controller_evacuation_vms_total{result="moved"}"#),
        4.0
    );
    assert_eq!(
        metric(r#"kvmotion_controller_evacuation_vms_total{result="failed"}"#),
        0.0
    );
    for m in done["plan"].as_array().unwrap() {
        assert_eq!(m["migrationPhase"], "Succeeded", "{done:#}");
    }
    // Every move is an ordinary migration, owned by the evacuation.
    let owned = evacuation::migrations(&rig.scope, &name);
    assert_eq!(owned.len(), 4, "{owned:#?}");
    for m in &owned {
        assert_eq!(
            m["metadata"]["ownerReferences"][0]["kind"],
            "NodeEvacuation"
        );
        assert_eq!(m["spec"]["sourceNode"], "node-a");
        assert_eq!(m["status"]["phase"], "Succeeded");
    }
    for (g, b) in guests.iter().zip(before) {
        g.moved_whole_to("node-b", b).await;
    }

    // Applying the finished object again changes nothing.
    let again = evacuation::get(&rig.scope, &name);
    let out = rig.scope.kubectl(
        &["apply", "-f", "-"],
        Some(
            &json!({
                "apiVersion": "kvmotion.io/v1alpha1",
                "kind": "NodeEvacuation",
                "metadata": {"name": name, "labels": again["metadata"]["labels"]},
                "spec": {"nodeName": "node-a"},
            })
            .to_string(),
        ),
    );
    assert!(out.ok, "re-applying: {}", out.stderr);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(evacuation::migrations(&rig.scope, &name).len(), 4);
    assert_eq!(
        evacuation::get(&rig.scope, &name)["status"]["phase"],
        "Completed"
    );
}

#[tokio::test]
async fn a_vm_too_big_for_any_target_blocks_the_evacuation_and_nothing_moves() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-evacuation-blocked", &[]).await;
    let small = guests(&rig, "ev-small", 1).await;
    // A guest larger than node-b's free memory (QEMU allocates lazily, so
    // it runs on node-a without using it); it need not boot to be planned.
    let free_mib = free_memory_mib(&rig, "node-b").await;
    let big = Guest::define(
        "node-a",
        "ev-big",
        &GuestSpec {
            memory_mib: (free_mib + 1024) as u32,
            disk: DiskKind::None,
            ..GuestSpec::default()
        },
    );
    lab(&["virsh", "node-a", "start", &big.name]);
    rig.wait_inventory("node-a", &big.name).await;
    let name = evacuation::apply(&rig.scope, "drain-a", json!({"nodeName": "node-a"}));
    let blocked = evacuation::wait_phase(&rig.scope, &name, "Blocked", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    assert_eq!(
        vms_in(&blocked["unplaceable"]),
        std::slice::from_ref(&big.name),
        "{blocked:#}"
    );
    let why = &blocked["unplaceable"][0];
    assert_eq!(why["reason"], "InsufficientMemory", "{blocked:#}");
    let message = why["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("ev-big needs {} MiB", free_mib + 1024))
            && message.contains("node-b: only"),
        "{blocked:#}"
    );
    // The small one had a place, and still nothing moved.
    assert_eq!(
        vms_in(&blocked["plan"]),
        std::slice::from_ref(&small[0].name),
        "{blocked:#}"
    );
    let planned = blocked["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Planned"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(planned["status"], "False", "{blocked:#}");
    assert_eq!(planned["reason"], "Unplaceable", "{blocked:#}");
    assert!(evacuation::migrations(&rig.scope, &name).is_empty());

    evacuation::delete(&rig.scope, &name);
    assert_eq!(small[0].state("node-a").as_deref(), Some("running"));
    assert_eq!(small[0].state("node-b"), None);
}

/// `node`'s free memory as its Hypervisor reports it, MiB.
async fn free_memory_mib(rig: &Rig, node: &str) -> u64 {
    let out = rig.scope.kubectl(
        &[
            "get",
            "hypervisor",
            node,
            "-o",
            "jsonpath={.status.memory.freeBytes}",
        ],
        None,
    );
    out.stdout
        .trim()
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("{node}'s free memory {:?}: {e}", out.stdout))
        >> 20
}

#[tokio::test]
async fn a_vm_that_cannot_move_live_moves_offline_when_the_spec_allows_it() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-evacuation-offline", &[]).await;
    let off = Guest::define("node-a", "ev-off", &GuestSpec::default());
    rig.wait_inventory("node-a", &off.name).await;
    let name = evacuation::apply(
        &rig.scope,
        "drain-a",
        json!({"nodeName": "node-a", "liveImpossible": "Offline"}),
    );
    let done = evacuation::wait_phase(&rig.scope, &name, "Completed", Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    assert_eq!(done["plan"][0]["vm"], "ev-off", "{done:#}");
    assert_eq!(done["plan"][0]["mode"], "Offline", "{done:#}");
    assert_eq!(done["plan"][0]["migrationPhase"], "Succeeded", "{done:#}");
    assert!(off.defined_on("node-b"), "node-b lacks the definition");
    assert!(!off.defined_on("node-a"), "node-a still defines it");
    assert_eq!(off.state("node-b").as_deref(), Some("shut off"));
}

#[tokio::test]
async fn deleting_an_evacuation_cancels_waiting_moves_and_lets_the_running_one_finish() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-evacuation-delete", &[]).await;
    // One move at a time, and slow: the first is mid-transfer while the
    // second waits for capacity.
    let (policy, policy_name) = rig.scope.adopt(
        &json!({
            "apiVersion": "kvmotion.io/v1alpha1",
            "kind": "MigrationPolicy",
            "metadata": {"name": "one-slow"},
            "spec": {
                "concurrency": {"perCluster": 1},
                "tuning": {
                    "bandwidthMiBps": 5,
                    "postCopy": false,
                    "autoConverge": false,
                    "progressTimeoutSeconds": 0,
                    "completionTimeoutPerGiBSeconds": 0
                }
            },
        })
        .to_string(),
    );
    let out = rig
        .scope
        .kubectl(&["apply", "-f", "-"], Some(&policy.to_string()));
    assert!(out.ok, "{}", out.stderr);
    let guests = guests(&rig, "ev-del", 2).await;
    let name = evacuation::apply(
        &rig.scope,
        "drain-a",
        json!({"nodeName": "node-a", "policyRef": {"name": policy_name}}),
    );
    let (moving_name, moving_vm, waiting_name) =
        evacuation::one_moving_one_waiting(&rig.scope, &name, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    let moved = guests.iter().find(|g| g.name == moving_vm).unwrap();
    let stays = guests.iter().find(|g| g.name != moving_vm).unwrap();
    let before = moved.last_beat("node-a").expect("beating");

    evacuation::delete(&rig.scope, &name);
    // The waiting move is gone; the running one no longer belongs to the
    // evacuation (the garbage collector leaves it) and finishes.
    kvmotion_tests::eventually(
        Duration::from_secs(30),
        "the waiting move deleted",
        || async {
            kvmotion_tests::e2e::migration(&rig.scope, &waiting_name)
                .await
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    let released = kvmotion_tests::e2e::migration(&rig.scope, &moving_name)
        .await
        .expect("the running move is kept");
    assert!(
        released
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty()),
        "{released:?}"
    );
    kvmotion_tests::lab::lift_cap("node-a", &moving_vm);
    rig.wait_phase(&moving_name, "Succeeded", Duration::from_secs(120))
        .await;
    moved.moved_whole_to("node-b", before).await;
    assert_eq!(stays.state("node-a").as_deref(), Some("running"));
    assert_eq!(stays.state("node-b"), None);
    // Nothing re-creates a move later: only the released one is left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left: Vec<String> = evacuation::migrations(&rig.scope, &name)
        .iter()
        .filter_map(|m| m["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, [moving_name]);
}
