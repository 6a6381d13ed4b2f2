//! `make bench`: a migration end to end through the controller (apply →
//! Succeeded) against raw `virsh migrate --live --p2p` of the same guest,
//! alternating in one run, and the controller's time outside the libvirt
//! job. Writes `target/bench/controller.json`.

use std::process::Command;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kvmotion_api::VirtualMachineMigration;
use kvmotion_tests::e2e::Rig;
use kvmotion_tests::lab::{self, Guest, GuestSpec, lab};
use serde_json::json;

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn rounds() -> usize {
    std::env::var("KVMOTION_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(8)
}

fn virsh_move(from: &str, to: &str, name: &str) -> f64 {
    let socket = lab(&["socket", from]).trim().to_string();
    let t = Instant::now();
    let out = Command::new("virsh")
        .arg("-c")
        .arg(format!("qemu+unix:///system?socket={socket}"))
        .args([
            "migrate",
            "--live",
            "--p2p",
            "--persistent",
            "--undefinesource",
            name,
        ])
        .arg(format!("qemu+tcp://{}/system", lab::migration_ip(to)))
        .output()
        .expect("virsh");
    let wall = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "virsh migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wall
}

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
            // The inventory must show the VM where it is before a move.
            rig.wait_inventory(at, &guest.name).await;
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
                virsh_wall.push(virsh_move(at, to, &guest.name));
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
    let dir = kvmotion_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let text = serde_json::to_string_pretty(&report).expect("json");
    std::fs::write(dir.join("controller.json"), &text).expect("writing controller.json");
    println!("{text}");
}
