//! `make bench-evacuation`: four guests of different sizes emptied off a
//! lab node by a NodeEvacuation (apply → Completed) against a sequential
//! `virsh migrate --live --p2p` loop over the same guests, largest first
//! (what Nova's host-evacuate-live amounts to), alternating which goes
//! first in each round; then the time a dry run takes to plan one node of
//! a 100-node, 2,000-guest fake fleet. Writes `target/bench/evacuation.json`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kvmotion_api::evacuation::NodeEvacuation;
use kvmotion_tests::agent::credentials;
use kvmotion_tests::bench::{median, rounds_from, virsh_migrate, watch_one, write_report};
use kvmotion_tests::e2e::{Rig, start_controller};
use kvmotion_tests::fleet::{Fleet, FleetSpec};
use kvmotion_tests::lab::{self, Guest, GuestSpec};
use kvmotion_tests::scope::{SCOPE_LABEL, Scope};
use serde_json::json;

/// The guests' memory, MiB, in the order they are started.
const SIZES: [u32; 4] = [192, 320, 256, 384];

/// Rounds: `KVMOTION_BENCH_EVACUATION_ROUNDS`, else 3 (each round starts
/// four TCG guests, which dominates its time).
fn rounds() -> usize {
    rounds_from("KVMOTION_BENCH_EVACUATION_ROUNDS", 3)
}

/// Applies an evacuation of `node` (a dry run when asked) and watches it
/// until `until`; returns the seconds from create to that phase.
async fn evacuate(
    scope: &Scope,
    api: &Api<NodeEvacuation>,
    name: &str,
    node: &str,
    dry_run: bool,
    until: &str,
) -> f64 {
    let e: NodeEvacuation = serde_json::from_value(json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "NodeEvacuation",
        "metadata": {"name": name, "labels": {SCOPE_LABEL: scope.id}},
        "spec": {"nodeName": node, "dryRun": dry_run},
    }))
    .expect("evacuation");
    let events = watch_one(api, name);
    futures::pin_mut!(events);
    let t = Instant::now();
    api.create(&PostParams::default(), &e)
        .await
        .expect("create");
    while let Some(e) = events.next().await {
        let e = e.expect("watch");
        let phase = e
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| p.as_str())
            .unwrap_or_default();
        if phase == until {
            let took = t.elapsed().as_secs_f64();
            api.delete(name, &DeleteParams::default())
                .await
                .expect("delete");
            return took;
        }
        if matches!(phase, "Failed" | "Blocked" | "Cancelled") {
            panic!("{name} ended {phase}: {:#?}", e.status);
        }
    }
    panic!("{name}: the watch ended")
}

/// `virsh migrate` of each guest in turn, largest first; total seconds.
fn virsh_loop(guests: &[(Guest, u32)], from: &str) -> f64 {
    let mut order: Vec<&(Guest, u32)> = guests.iter().collect();
    order.sort_by_key(|(_, mib)| std::cmp::Reverse(*mib));
    order
        .iter()
        .map(|(g, _)| virsh_migrate(from, lab::other(from), &g.name, &[]))
        .sum()
}

#[tokio::main]
async fn main() {
    let rig = Rig::start("bench-evacuation", &[]).await;
    let api: Api<NodeEvacuation> = Api::all(rig.scope.cp.client().await);
    let (mut ours, mut virsh) = (vec![], vec![]);
    for round in 0..rounds() {
        let guests: Vec<(Guest, u32)> = {
            let mut v = Vec::new();
            for (i, mib) in SIZES.iter().enumerate() {
                let spec = GuestSpec {
                    memory_mib: *mib,
                    ..GuestSpec::default()
                };
                let g = Guest::start("node-a", &format!("bev-{round}-{i}"), &spec).await;
                rig.wait_inventory("node-a", &g.name).await;
                v.push((g, *mib));
            }
            v
        };
        let mut at = "node-a";
        for ours_first in [round % 2 == 0, round % 2 == 1] {
            for (g, _) in &guests {
                rig.wait_settled(at, &g.name).await;
            }
            if ours_first {
                let name = rig.scope.name(&format!("bev-{round}-{at}"));
                ours.push(evacuate(&rig.scope, &api, &name, at, false, "Completed").await);
            } else {
                virsh.push(virsh_loop(&guests, at));
            }
            let to = lab::other(at);
            for (g, _) in &guests {
                assert_eq!(
                    g.state(to).as_deref(),
                    Some("running"),
                    "{} on {to}",
                    g.name
                );
            }
            at = to;
        }
        eprintln!("round {round}: kvmotion {ours:?}, virsh loop {virsh:?}");
    }

    // One node's plan on a fleet far larger than the lab, by a controller
    // of its own (the lab's would plan onto the fake nodes too).
    let scope = Scope::new("bench-evacuation-fleet");
    let fleet = Fleet::start(
        &scope,
        FleetSpec {
            nodes: 100,
            vms_per_node: 20,
            job: Duration::from_millis(500),
            token: credentials().controller_token.clone(),
        },
    )
    .await;
    let controller = start_controller(&scope, "bench-evacuation-fleet", &[]);
    controller.wait_ready().await;
    let mut plan_ms = vec![];
    for i in 0..5 {
        let name = scope.name(&format!("plan-{i}"));
        let s = evacuate(&scope, &api, &name, &fleet.nodes[i], true, "Planned").await;
        plan_ms.push(s * 1000.0);
    }

    let report = json!({
        "evacuation_vms": SIZES.len(),
        "evacuation_succeeded": ours.len() * SIZES.len(),
        "evacuation_ratio_vs_sequential_virsh": median(&ours) / median(&virsh),
        "evacuation_s_median": median(&ours),
        "sequential_virsh_s_median": median(&virsh),
        "evacuation_s": ours,
        "sequential_virsh_s": virsh,
        "rounds": rounds(),
        "fleet_plan_ms": median(&plan_ms),
        "fleet_plan_ms_each": plan_ms,
        "guests": "192, 320, 256 and 384 MiB, 1 vCPU, TCG, 16 MiB dirtied at 4 MiB/s, shared disk; default policy",
        "fleet": "100 fake nodes × 20 guests; apply → Planned of a dry run (API round trips included)",
    });
    write_report("evacuation.json", &report);
}
