//! `make bench`: a migration end to end through the controller (apply →
//! Succeeded) against raw `virsh migrate --live --p2p` of the same guest,
//! alternating in one run, and the controller's time outside the libvirt
//! job. Writes `target/bench/controller.json`.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kvmotion_api::VirtualMachineMigration;
use kvmotion_tests::bench::{median, merge_report, rounds, virsh_migrate};
use kvmotion_tests::e2e::Rig;
use kvmotion_tests::lab::{self, Guest, GuestSpec};
use serde_json::json;

/// Creates a migration and polls (every 20 ms) until it ends; returns the
/// wall time and the libvirt job's own duration.
async fn controller_move(
    rig: &Rig,
    api: &Api<DynamicObject>,
    name: &str,
    vm: &str,
    to: &str,
) -> (f64, f64) {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "VirtualMachineMigration",
        "metadata": {"name": name, "labels": {kvmotion_tests::scope::SCOPE_LABEL: rig.scope.id}},
        "spec": {"vm": {"name": vm}, "targetNode": to},
    }))
    .expect("object");
    let t = Instant::now();
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    loop {
        let o = api.get(name).await.expect("get");
        let status = o.data.get("status").cloned().unwrap_or_default();
        match status["phase"].as_str() {
            Some("Succeeded") => {
                let wall = t.elapsed().as_secs_f64();
                let job = status["result"]["durationMs"].as_f64().unwrap_or(f64::NAN) / 1000.0;
                return (wall, job);
            }
            Some("Failed") | Some("Cancelled") => panic!("{name}: {status:#}\n{}", rig.logs()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
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
    for i in 0..rounds() {
        for controller_first in [i % 2 == 0, i % 2 == 1] {
            let to = lab::other(at);
            // Both sides start from settled inventories: the VM listed
            // where it runs and nowhere else.
            rig.wait_settled(at, &guest.name).await;
            if controller_first {
                let (wall, job) = controller_move(
                    &rig,
                    &api,
                    &rig.scope.name(&format!("b{i}-{to}")),
                    &guest.name,
                    to,
                )
                .await;
                ctl_wall.push(wall);
                outside_ms.push((wall - job) * 1000.0);
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
        "rounds": rounds(),
        "guest": "256 MiB, 1 vCPU, TCG, 16 MiB dirtied at 4 MiB/s, shared disk",
    });
    merge_report("controller.json", report);
}
