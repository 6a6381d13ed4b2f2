//! `make bench`: a migration end to end through the controller (apply →
//! Succeeded) against raw `virsh migrate --live --p2p` of the same guest,
//! alternating in one run, and the controller's time outside the libvirt
//! job; a hot guest capped at 100 MiB/s against what a virsh expert types
//! for it (`--postcopy --postcopy-after-precopy`, with and without
//! `--postcopy-bandwidth`, as QEMU lifts the cap in post-copy otherwise);
//! and how far the
//! predicted duration was from the real one on an idle, a hot and an
//! in-between guest, each capped move predicted before it starts (the
//! agents sample every 2 s here: `KVMOTION_DIRTY_RATE_EVERY_SECONDS`, set
//! by `make bench`). Writes `target/bench/controller.json`.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kvmotion_api::VirtualMachineMigration;
use kvmotion_tests::bench::{
    median, merge_report, rounds, rounds_from, virsh_downtime_ms, virsh_migrate, watch_one,
};
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
    /// The guest's pause, milliseconds.
    downtime_ms: f64,
    /// The predicted job duration, seconds (NaN without a prediction).
    predicted: f64,
    /// The predicted strategy.
    strategy: String,
    /// The prediction was made before the move (in Prechecking).
    before_move: bool,
}

impl Move {
    /// How far the predicted duration was from the job's as the
    /// prediction defines it (from the agent starting the job to the guest
    /// running on the target), percent. The watch sees that span as
    /// `Migrating` until `Finalizing`.
    fn prediction_error_pct(&self) -> f64 {
        let job = self.at("Finalizing") - self.at("Migrating");
        (self.predicted - job).abs() / job * 100.0
    }

    /// The same against the duration libvirt reports (`result.durationMs`),
    /// whose clock starts once the target's QEMU runs and, after a switch
    /// to post-copy, stops before the last pages arrive.
    fn prediction_error_vs_libvirt_pct(&self) -> f64 {
        (self.predicted - self.job).abs() / self.job * 100.0
    }

    /// Seconds from apply at which `phase` was first seen (NaN if never).
    fn at(&self, phase: &str) -> f64 {
        self.phases
            .iter()
            .find(|(p, _)| p == phase)
            .map_or(f64::NAN, |(_, t)| *t)
    }

    /// The controller's time outside the agent's job: apply until the job
    /// runs (Migrating seen), plus job end (Finalizing seen) until
    /// Succeeded. Includes the watch's delivery both ways.
    fn outside_job(&self) -> f64 {
        self.at("Migrating") + (self.wall - self.at("Finalizing"))
    }
}

/// Creates a migration and watches it until it ends.
async fn controller_move(
    rig: &Rig,
    api: &Api<DynamicObject>,
    name: &str,
    vm: &str,
    to: &str,
    overrides: serde_json::Value,
) -> Move {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "VirtualMachineMigration",
        "metadata": {"name": name, "labels": {kvmotion_tests::scope::SCOPE_LABEL: rig.scope.id}},
        "spec": {"vm": {"name": vm}, "targetNode": to, "overrides": overrides},
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
                let ms = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
                return Move {
                    wall: t.elapsed().as_secs_f64(),
                    job: ms(&status["result"]["durationMs"]) / 1000.0,
                    phases,
                    downtime_ms: ms(&status["result"]["downtimeMs"]),
                    predicted: ms(&status["prediction"]["durationMs"]) / 1000.0,
                    strategy: status["prediction"]["strategy"]
                        .as_str()
                        .unwrap_or("none")
                        .to_string(),
                    before_move: status["prediction"]["beforeMove"] == true,
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
                    json!({}),
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
    drop(guest);

    let hot = capped(&rig, &api, "hot", &GuestSpec::hot(), true).await;
    let idle = capped(&rig, &api, "idle", &GuestSpec::default(), false).await;
    let between = GuestSpec {
        dirty_mib: 64,
        dirty_rate: 40,
        ..GuestSpec::default()
    };
    let between = capped(&rig, &api, "between", &between, false).await;
    let errors: Vec<(&str, f64)> = [("idle", &idle), ("between", &between), ("hot", &hot)]
        .iter()
        .map(|(k, c)| (*k, c.error_pct))
        .collect();
    // A guest without predictions makes the worst unknown, not smaller.
    let worst = errors
        .iter()
        .map(|(_, e)| *e)
        .reduce(|a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        })
        .unwrap_or(f64::NAN);
    merge_report(
        "controller.json",
        json!({
            "hot_ratio_vs_virsh_postcopy": hot.ratio,
            "hot_ratio_vs_virsh_postcopy_capped": hot.ratio_capped,
            "hot": hot.report,
            "prediction_error_pct": worst,
            "prediction_error_pct_by_guest": errors
                .iter()
                .map(|(k, e)| ((*k).to_string(), json!(e)))
                .collect::<serde_json::Map<_, _>>(),
            "capped_idle": idle.report,
            "capped_between": between.report,
        }),
    );
}

/// The bandwidth cap of the capped runs, MiB/s: the lab's hot guest
/// out-dirties it.
const CAP_MIBPS: u32 = 100;

/// What a virsh expert types for a guest pre-copy cannot move, as the
/// benchmark's goal names it. Its post-copy phase runs uncapped: QEMU lifts
/// `--bandwidth` once post-copy starts.
const VIRSH_POSTCOPY: [&str; 4] = [
    "--bandwidth",
    "100",
    "--postcopy",
    "--postcopy-after-precopy",
];

/// The same with the cap held in post-copy too, as kvmotion holds
/// `bandwidthMiBps`: the like-for-like command.
const VIRSH_POSTCOPY_CAPPED: [&str; 6] = [
    "--bandwidth",
    "100",
    "--postcopy",
    "--postcopy-after-precopy",
    "--postcopy-bandwidth",
    "100",
];

/// One guest's capped moves.
struct Capped {
    /// Median apply→Succeeded over median virsh (NaN when virsh was not run).
    ratio: f64,
    /// The same against virsh with its post-copy capped too.
    ratio_capped: f64,
    /// Median prediction error, percent.
    error_pct: f64,
    report: serde_json::Value,
}

/// Who moves the guest in a round.
#[derive(Clone, Copy)]
enum Mover {
    Controller,
    Virsh,
    VirshCapped,
}

/// Moves a fresh `spec` guest by the controller capped at [`CAP_MIBPS`]
/// (`HOT_ROUNDS` times, 5 by default), taking turns in a rotating order
/// with the two virsh post-copy commands when `against_virsh`.
async fn capped(
    rig: &Rig,
    api: &Api<DynamicObject>,
    kind: &str,
    spec: &GuestSpec,
    against_virsh: bool,
) -> Capped {
    let guest = Guest::start("node-a", &format!("bench-{kind}"), spec).await;
    let mut at = "node-a";
    let (mut moves, mut virsh_wall, mut virsh_down, mut capped_wall) =
        (vec![], vec![], vec![], vec![]);
    let movers: &[Mover] = if against_virsh {
        &[Mover::Controller, Mover::Virsh, Mover::VirshCapped]
    } else {
        &[Mover::Controller]
    };
    for i in 0..rounds_from("HOT_ROUNDS", 5) {
        for k in 0..movers.len() {
            let mover = movers[(i + k) % movers.len()];
            let to = lab::other(at);
            rig.wait_settled(at, &guest.name).await;
            match mover {
                Mover::Controller => {
                    // Predicted before the move, as a capped move is: from
                    // a sample of the guest taken where it runs now.
                    rig.wait_sampled(at, &guest.name, jiff::Timestamp::now())
                        .await;
                    let name = rig.scope.name(&format!("{kind}{i}-{to}"));
                    let overrides = json!({"bandwidthMiBps": CAP_MIBPS});
                    moves.push(controller_move(rig, api, &name, &guest.name, to, overrides).await);
                }
                Mover::Virsh => {
                    virsh_wall.push(virsh_migrate(at, to, &guest.name, &VIRSH_POSTCOPY));
                    virsh_down.push(virsh_downtime_ms(to, &guest.name));
                }
                Mover::VirshCapped => {
                    capped_wall.push(virsh_migrate(at, to, &guest.name, &VIRSH_POSTCOPY_CAPPED));
                }
            }
            assert_eq!(guest.state(to).as_deref(), Some("running"), "on {to}");
            at = to;
        }
    }
    let of = |f: fn(&Move) -> f64| moves.iter().map(f).collect::<Vec<f64>>();
    let wall = of(|m| m.wall);
    let ratio = median(&wall) / median(&virsh_wall);
    let ratio_capped = median(&wall) / median(&capped_wall);
    let error_pct = median(&of(Move::prediction_error_pct));
    let report = json!({
        "apply_to_succeeded_s": wall,
        "job_s": of(|m| m.job),
        "predicted_job_s": of(|m| m.predicted),
        "strategy": moves.iter().map(|m| m.strategy.clone()).collect::<Vec<_>>(),
        "predicted_before_move": moves.iter().map(|m| m.before_move).collect::<Vec<_>>(),
        "downtime_ms": of(|m| m.downtime_ms),
        "prediction_error_pct": of(Move::prediction_error_pct),
        "job_wall_s": of(|m| m.at("Finalizing") - m.at("Migrating")),
        "prediction_error_vs_libvirt_job_pct": of(Move::prediction_error_vs_libvirt_pct),
        "virsh_s": virsh_wall,
        "virsh_downtime_ms": virsh_down,
        "virsh_args": VIRSH_POSTCOPY,
        "virsh_capped_s": capped_wall,
        "virsh_capped_args": VIRSH_POSTCOPY_CAPPED,
        "cap_mibps": CAP_MIBPS,
        "guest": format!("256 MiB, {} MiB dirtied at {} MiB/s (0 = flat out)", spec.dirty_mib, spec.dirty_rate),
    });
    println!("{kind}: {report:#}");
    Capped {
        ratio,
        ratio_capped,
        error_pct,
        report,
    }
}
