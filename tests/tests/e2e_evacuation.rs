//! End to end: a NodeEvacuation empties node-a through the controller and
//! the lab's agents. A dry run shows the whole plan and moves nothing; the
//! same object, its dry run turned off, moves every guest; a plan with a
//! VM that has no place blocks and moves nothing; deleting an evacuation
//! cancels the moves that have not started and lets the running one end.

use std::time::Duration;

use kvmotion_tests::e2e::Rig;
use kvmotion_tests::evacuation;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lab};
use serde_json::{Value, json};

/// Starts `n` guests on node-a named `prefix-i`, each listed in its
/// inventory.
async fn guests(rig: &Rig, prefix: &str, n: usize) -> Vec<Guest> {
    let mut out = Vec::new();
    for i in 0..n {
        let g = Guest::start("node-a", &format!("{prefix}-{i}"), &GuestSpec::default()).await;
        rig.wait_inventory("node-a", &g.name).await;
        out.push(g);
    }
    out
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
    let guests = guests(&rig, "ev-all", 3).await;
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
    let names: Vec<String> = guests.iter().map(|g| g.name.clone()).collect();
    assert_eq!(vms_in(&planned["plan"]), names, "{planned:#}");
    for m in planned["plan"].as_array().unwrap() {
        assert_eq!(m["targetNode"], "node-b", "{planned:#}");
        assert_eq!(m["mode"], "Live", "{planned:#}");
        assert_eq!(m["memoryBytes"], 256u64 << 20, "{planned:#}");
        assert!(
            m["migration"].is_null(),
            "a dry run creates nothing: {planned:#}"
        );
    }
    assert_eq!(planned["counts"]["total"], 3, "{planned:#}");
    assert!(evacuation::migrations(&rig.scope, &name).is_empty());
    for g in &guests {
        assert_eq!(g.state("node-a").as_deref(), Some("running"));
    }

    // Carry the plan out: the same object, dryRun off.
    let out = rig.scope.kubectl(
        &[
            "patch",
            "nodeevacuation",
            &name,
            "--type=merge",
            "-p",
            r#"{"spec":{"dryRun":false}}"#,
        ],
        None,
    );
    assert!(out.ok, "turning the dry run off: {}", out.stderr);
    let done = evacuation::wait_phase(&rig.scope, &name, "Completed", Duration::from_secs(300))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    assert_eq!(done["counts"]["moved"], 3, "{done:#}");
    assert_eq!(done["counts"]["failed"], 0, "{done:#}");
    for m in done["plan"].as_array().unwrap() {
        assert_eq!(m["migrationPhase"], "Succeeded", "{done:#}");
    }
    // Every move is an ordinary migration, owned by the evacuation.
    let owned = evacuation::migrations(&rig.scope, &name);
    assert_eq!(owned.len(), 3, "{owned:#?}");
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
    assert_eq!(evacuation::migrations(&rig.scope, &name).len(), 3);
    assert_eq!(
        evacuation::get(&rig.scope, &name)["status"]["phase"],
        "Completed"
    );
}

#[tokio::test]
async fn a_vm_without_a_place_blocks_the_evacuation_and_nothing_moves() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-evacuation-blocked", &[]).await;
    let guests = guests(&rig, "ev-blocked", 1).await;
    let name = evacuation::apply(
        &rig.scope,
        "drain-a",
        json!({
            "nodeName": "node-a",
            "targetSelector": {"matchLabels": {"rack": "nowhere"}},
        }),
    );
    let blocked = evacuation::wait_phase(&rig.scope, &name, "Blocked", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    assert_eq!(vms_in(&blocked["unplaceable"]), [guests[0].name.clone()]);
    let why = &blocked["unplaceable"][0];
    assert_eq!(why["reason"], "NoTargetAvailable", "{blocked:#}");
    assert!(
        why["message"]
            .as_str()
            .unwrap_or_default()
            .contains("node-b: it does not match targetSelector"),
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
    assert_eq!(guests[0].state("node-a").as_deref(), Some("running"));
    assert_eq!(guests[0].state("node-b"), None);
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
    let running = kvmotion_tests::eventually(
        Duration::from_secs(90),
        "one move running and one waiting",
        || async {
            let ms = evacuation::migrations(&rig.scope, &name);
            let phase = |p: &str| ms.iter().find(|m| m["status"]["phase"] == p).cloned();
            let moving = phase("Migrating")?;
            let waiting = phase("Pending")?;
            (moving["status"]["progress"]["dataProcessedBytes"].as_u64()? > 0)
                .then_some((moving, waiting))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    let (moving, waiting) = running;
    let moving_name = moving["metadata"]["name"].as_str().unwrap().to_string();
    let waiting_name = waiting["metadata"]["name"].as_str().unwrap().to_string();
    let moving_vm = moving["spec"]["vm"]["name"].as_str().unwrap().to_string();
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
    lab(&["virsh", "node-a", "migrate-setspeed", &moving_vm, "1000"]);
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
