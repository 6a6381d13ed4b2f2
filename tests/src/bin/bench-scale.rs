//! `make bench`, part (c): 1,000 migrations through the real controller
//! and apiserver against in-process fake agents, limits 50 / 10 / 10. Adds
//! the `scale_*` keys to `target/bench/controller.json`.

use std::time::Duration;

use kvmotion_tests::bench::merge_report;
use kvmotion_tests::scale::{ScaleReport, ScaleSpec, run};
use serde_json::json;

#[tokio::main]
async fn main() {
    let migrations = std::env::var("KVMOTION_BENCH_SCALE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let spec = ScaleSpec {
        controller_args: Vec::new(),
        migrations,
        nodes: 20,
        limits: (50, 10, 10),
        job: Duration::from_secs(2),
        deadline: Duration::from_secs(1800),
    };
    let r = run("bench-scale", &spec).await;
    let secs = r.wall.as_secs_f64();
    merge_report(
        "controller.json",
        json!({
            "scale_migrations": r.migrations,
            "scale_succeeded": r.succeeded,
            "scale_on_target": r.on_target,
            "scale_peak_rss_mib": r.peak_rss_bytes as f64 / (1 << 20) as f64,
            "scale_status_writes_per_s": r.status_writes / secs,
            "scale_status_writes": r.status_writes,
            "scale_events_dropped": r.events_dropped,
            "scale_reconciles": r.reconciles,
            "scale_reconcile_p50_ms": r.reconcile_p50.as_secs_f64() * 1000.0,
            "scale_reconcile_p99_ms": r.reconcile_p99.as_secs_f64() * 1000.0,
            "scale_wall_s": secs,
            "scale_slow_reconciles_over_100ms": r.slow_reconciles,
            "scale_slow_reconciles_time_before_status_write_max_ms": r.slow_outside_write_max_ms,
            "scale_controller_cpu_s": r.cpu.as_secs_f64(),
            "scale_migrations_per_s": r.migrations as f64 / secs,
            "scale_peak_jobs": {"cluster": r.peaks.total, "outboundPerNode": r.peaks.outbound, "inboundPerNode": r.peaks.inbound},
            "scale_setup": format!(
                "{} fake nodes, limits {:?}, each job {:?}",
                spec.nodes, spec.limits, spec.job
            ),
        }),
    );
    if r.succeeded != r.migrations {
        eprintln!("not succeeded: {:?}", r.not_succeeded);
        std::process::exit(1);
    }

    // The same run with more reconciles at once, side by side: where the
    // default comes from.
    let mut sweep = vec![point("default (2)", &r)];
    for n in [4, 8, 16] {
        let spec = ScaleSpec {
            controller_args: vec![format!("--max-concurrent-reconciles={n}")],
            ..spec.clone()
        };
        let r = run(&format!("bench-scale-c{n}"), &spec).await;
        sweep.push(point(&n.to_string(), &r));
    }
    merge_report("controller.json", json!({"scale_concurrency_sweep": sweep}));
}

/// One row of the concurrency sweep.
fn point(max_concurrent_reconciles: &str, r: &ScaleReport) -> serde_json::Value {
    json!({
        "max_concurrent_reconciles": max_concurrent_reconciles,
        "succeeded": r.succeeded,
        "reconcile_p50_ms": r.reconcile_p50.as_secs_f64() * 1000.0,
        "reconcile_p99_ms": r.reconcile_p99.as_secs_f64() * 1000.0,
        "migrations_per_s": r.migrations as f64 / r.wall.as_secs_f64(),
        "controller_cpu_s": r.cpu.as_secs_f64(),
    })
}
