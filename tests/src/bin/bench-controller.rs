//! `make bench`: a migration end to end through the controller (apply →
//! Succeeded) against raw `virsh migrate --live --p2p` of the same guest,
//! alternating in one run, and the controller's time outside the libvirt
//! job. Writes `target/bench/controller.json`.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kvmotion_api::VirtualMachineMigration;
use kvmotion_tests::bench::{median, merge_report, rounds, virsh_migrate, watch_one};
use kvmotion_tests::e2e::Rig;
use kvmotion_tests::lab::{self, Guest, GuestSpec};
use serde_json::json;

/// One controller-driven move, as a watch saw it.
struct Move {
    /// Apply → Succeeded, seconds.
    wall: f64,
    /// The libvirt job's own duration, seconds.
    job: f64,
    /// Seconds from apply at which each phase was first seen.
    phases: Vec<(String, f64)>,
}

impl Move {
    /// The controller's time outside the agent's job: apply until the job
    /// runs (Migrating seen), plus job end (Finalizing seen) until
    /// Succeeded. Includes the watch's delivery both ways.
    fn outside_job(&self) -> f64 {
        let at = |phase: &str| {
            self.phases
                .iter()
                .find(|(p, _)| p == phase)
                .map_or(f64::NAN, |(_, t)| *t)
        };
        at("Migrating") + (self.wall - at("Finalizing"))
    }
}

/// Creates a migration and watches it until it ends.
async fn controller_move(
    rig: &Rig,
    api: &Api<DynamicObject>,
    name: &str,
    vm: &str,
    to: &str,
) -> Move {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "VirtualMachineMigration",
        "metadata": {"name": name, "labels": {kvmotion_tests::scope::SCOPE_LABEL: rig.scope.id}},
        "spec": {"vm": {"name": vm}, "targetNode": to},
    }))
    .expect("object");
    let events = watch_one(api, name);
    futures::pin_mut!(events);
    let t = Instant::now();
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    let mut phases: Vec<(String, f64)> = Vec::new();
    while let Some(o) = events.next().await {
        let o = o.expect("watch");
        let status = o.data.get("status").cloned().unwrap_or_default();
        let phase = status["phase"].as_str().unwrap_or_default().to_string();
        if !phase.is_empty() && phases.last().is_none_or(|(p, _)| *p != phase) {
            phases.push((phase.clone(), t.elapsed().as_secs_f64()));
        }
        match phase.as_str() {
            "Succeeded" => {
                return Move {
                    wall: t.elapsed().as_secs_f64(),
                    job: status["result"]["durationMs"].as_f64().unwrap_or(f64::NAN) / 1000.0,
                    phases,
                };
            }
            "Failed" | "Cancelled" => panic!("{name}: {status:#}\n{}", rig.logs()),
            _ => {}
        }
    }
    panic!("{name}: the watch ended\n{}", rig.logs())
}

#[tokio::main]
async fn main() {
    let rig = Rig::start("bench-controller", &[]).await;
    let guest = Guest::start("node-a", "bench-ctl", &GuestSpec::default()).await;
    let api: Api<DynamicObject> = Api::all_with(
        rig.scope.cp.client().await,
        &ApiResource::erase::<VirtualMachineMigration>(&()),
    );
    let (mut at, mut ctl_wall, mut outside_ms, mut virsh_wall) = ("node-a", vec![], vec![], vec![]);
    let mut reached: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut wall_minus_libvirt_ms = vec![];
    for i in 0..rounds() {
        for controller_first in [i % 2 == 0, i % 2 == 1] {
            let to = lab::other(at);
            // Both sides start from settled inventories: the VM listed
            // where it runs and nowhere else.
            rig.wait_settled(at, &guest.name).await;
            if controller_first {
                let m = controller_move(
                    &rig,
                    &api,
                    &rig.scope.name(&format!("b{i}-{to}")),
                    &guest.name,
                    to,
                )
                .await;
                ctl_wall.push(m.wall);
                wall_minus_libvirt_ms.push((m.wall - m.job) * 1000.0);
                outside_ms.push(m.outside_job() * 1000.0);
                for (phase, at) in m.phases {
                    reached.entry(phase).or_default().push(at * 1000.0);
                }
            } else {
                virsh_wall.push(virsh_migrate(at, to, &guest.name, &[]));
            }
            assert_eq!(
                guest.state(to).as_deref(),
                Some("running"),
                "the guest must run on {to}"
            );
            at = to;
        }
    }
    let ratio = median(&ctl_wall) / median(&virsh_wall);
    let report = json!({
        "apply_to_succeeded_ratio_vs_virsh": ratio,
        "apply_to_succeeded_s_median": median(&ctl_wall),
        "virsh_s_median": median(&virsh_wall),
        "overhead_outside_job_ms_p50": median(&outside_ms),
        "apply_to_succeeded_s": ctl_wall,
        "virsh_s": virsh_wall,
        "overhead_outside_job_ms": outside_ms,
        "wall_minus_libvirt_job_ms_p50": median(&wall_minus_libvirt_ms),
        "wall_minus_libvirt_job_ms": wall_minus_libvirt_ms,
        "rounds": rounds(),
        "phase_reached_ms_p50": reached
            .iter()
            .map(|(p, v)| (p.clone(), json!(median(v))))
            .collect::<serde_json::Map<_, _>>(),
        "guest": "256 MiB, 1 vCPU, TCG, 16 MiB dirtied at 4 MiB/s, shared disk",
    });
    merge_report("controller.json", report);
}
