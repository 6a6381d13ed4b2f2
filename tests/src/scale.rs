//! Many migrations at once through the real controller and apiserver,
//! against a [`Fleet`] of fake agents: what `make bench` measures at scale
//! and what the fleet test checks at a smaller one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kvmotion_api::VirtualMachineMigration;
use serde_json::json;

use crate::agent::credentials;
use crate::e2e::start_controller;
use crate::fleet::{Fleet, FleetSpec, Peaks, vm_name};
use crate::scope::{SCOPE_LABEL, Scope};

/// What to run.
#[derive(Clone, Debug)]
pub struct ScaleSpec {
    /// Migrations to create.
    pub migrations: usize,
    /// Fake hypervisor nodes they spread over.
    pub nodes: usize,
    /// Limits: per cluster, outbound per node, inbound per node.
    pub limits: (u32, u32, u32),
    /// How long each fake job runs.
    pub job: Duration,
    /// Give up after this long.
    pub deadline: Duration,
    /// Extra controller flags.
    pub controller_args: Vec<String>,
}

/// What happened.
#[derive(Clone, Debug)]
pub struct ScaleReport {
    /// Migrations created.
    pub migrations: usize,
    /// How many ended Succeeded.
    pub succeeded: usize,
    /// Final phase of those that did not, by name (at most 10).
    pub not_succeeded: Vec<(String, String)>,
    /// Guests found running on exactly their target afterwards.
    pub on_target: usize,
    /// From the first create to the last terminal phase.
    pub wall: Duration,
    /// The controller's peak resident memory.
    pub peak_rss_bytes: u64,
    /// CPU time the controller used (user + system).
    pub cpu: Duration,
    /// Status writes the controller made.
    pub status_writes: f64,
    /// Events the controller dropped because its queue was full.
    pub events_dropped: f64,
    /// Reconciles the controller ran.
    pub reconciles: f64,
    /// 99th percentile of reconcile duration, from its histogram.
    pub reconcile_p99: Duration,
    /// 50th percentile of reconcile duration.
    pub reconcile_p50: Duration,
    /// Reconciles the controller logged as slow (≥ 100 ms).
    pub slow_reconciles: usize,
    /// Of those, the longest time spent before writing status (reading and
    /// calling agents, deciding), in ms: what the controller itself adds.
    pub slow_outside_write_max_ms: u64,
    /// Concurrent jobs as the agents saw them.
    pub peaks: Peaks,
    /// Migrations seen waiting with WaitingForCapacity at least once.
    pub waited: usize,
}

/// Creates a MigrationPolicy in `scope` with these limits (per cluster,
/// outbound per node, inbound per node); returns its name.
pub fn limits_policy(
    scope: &Scope,
    base: &str,
    (cluster, outbound, inbound): (u32, u32, u32),
) -> String {
    let policy = scope.name(base);
    let out = scope.kubectl(
        &["apply", "-f", "-"],
        Some(
            &json!({
                "apiVersion": "kvmotion.io/v1alpha1",
                "kind": "MigrationPolicy",
                "metadata": {"name": policy, "labels": {SCOPE_LABEL: scope.id}},
                "spec": {"concurrency": {
                    "perCluster": cluster, "outboundPerNode": outbound, "inboundPerNode": inbound,
                }},
            })
            .to_string(),
        ),
    );
    assert!(out.ok, "creating the policy: {}", out.stderr);
    policy
}

/// Runs `spec` in a fresh scope; panics with the controller's log when
/// the run cannot be set up.
pub async fn run(test: &str, spec: &ScaleSpec) -> ScaleReport {
    let scope = Scope::new(test);
    let creds = credentials();
    let per_node = spec.migrations.div_ceil(spec.nodes);
    let fleet = Fleet::start(
        &scope,
        FleetSpec {
            nodes: spec.nodes,
            vms_per_node: per_node,
            job: spec.job,
            token: creds.controller_token.clone(),
        },
    )
    .await;
    let policy = limits_policy(&scope, "scale", spec.limits);
    let args: Vec<&str> = spec.controller_args.iter().map(String::as_str).collect();
    let controller = start_controller(&scope, "scale", &args);
    controller.wait_ready().await;

    let api: Api<DynamicObject> = Api::all_with(
        scope.cp.client().await,
        &ApiResource::erase::<VirtualMachineMigration>(&()),
    );
    // Guest i of node n moves to node n+1: every node is both a source and
    // a target, so all three limits bind.
    let plan: Vec<(String, String, String)> = (0..spec.migrations)
        .map(|k| {
            let (n, i) = (k % spec.nodes, k / spec.nodes);
            let to = fleet.nodes[(n + 1) % spec.nodes].clone();
            (scope.name(&format!("m{k:04}")), vm_name(&scope, n, i), to)
        })
        .collect();
    let started = Instant::now();
    stream::iter(plan.iter().cloned())
        .map(|(name, vm, to)| {
            let api = api.clone();
            let (label, policy) = (scope.id.clone(), policy.clone());
            async move {
                let obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "kvmotion.io/v1alpha1",
                    "kind": "VirtualMachineMigration",
                    "metadata": {"name": name, "labels": {SCOPE_LABEL: label}},
                    "spec": {"vm": {"name": vm}, "targetNode": to, "policyRef": {"name": policy}},
                }))
                .expect("migration");
                api.create(&PostParams::default(), &obj)
                    .await
                    .unwrap_or_else(|e| panic!("creating {name}: {e}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    // Watched, not listed: polling a thousand objects would load the
    // apiserver the controller is measured against.
    let selector = format!("{SCOPE_LABEL}={}", scope.id);
    let mut phases: HashMap<String, String> = HashMap::new();
    let mut waited = HashSet::new();
    let mut ended = 0;
    let events =
        watcher(api.clone(), watcher::Config::default().labels(&selector)).applied_objects();
    futures::pin_mut!(events);
    while ended < spec.migrations {
        let next = tokio::time::timeout_at((started + spec.deadline).into(), events.next()).await;
        let m = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => panic!("watching migrations: {e}"),
            Ok(None) | Err(_) => panic!(
                "{ended} of {} migrations ended within {:?}\n{}",
                spec.migrations,
                spec.deadline,
                controller.log_text()
            ),
        };
        let name = m.metadata.name.clone().unwrap_or_default();
        let status = &m.data["status"];
        let waiting = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["reason"] == "WaitingForCapacity");
        if waiting {
            waited.insert(name.clone());
        }
        let phase = status["phase"].as_str().unwrap_or_default().to_string();
        let now_terminal = is_terminal(&phase);
        let was_terminal = phases.insert(name, phase).is_some_and(|p| is_terminal(&p));
        if now_terminal && !was_terminal {
            ended += 1;
        }
    }
    let finals: Vec<(String, String)> = phases.into_iter().collect();
    let wall = started.elapsed();
    let metrics = controller.metrics_text().await;
    let (p50, p99) = (
        histogram_quantile(
            &metrics,
            "kvmotion_controller_reconcile_duration_seconds",
            0.5,
        ),
        histogram_quantile(
            &metrics,
            "kvmotion_controller_reconcile_duration_seconds",
            0.99,
        ),
    );
    let on_target = plan
        .iter()
        .enumerate()
        .filter(|(k, (_, _, to))| {
            let (n, i) = (k % spec.nodes, k / spec.nodes);
            fleet.running_on(&fleet.uuid(n, i)) == vec![to.clone()]
        })
        .count();
    // Deleted while the controller runs, so it releases its finalizers
    // (left to the scope, a thousand objects would each need a patch).
    let selector = ListParams::default().labels(&selector);
    api.delete_collection(&DeleteParams::default(), &selector)
        .await
        .expect("deleting the migrations");
    crate::eventually(
        Duration::from_secs(300),
        "the migrations to be deleted",
        || async {
            api.list(&selector)
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", controller.log_text()));
    let (slow_reconciles, slow_outside_write_max_ms) = slow_reconciles(&controller.log_text());
    ScaleReport {
        slow_reconciles,
        slow_outside_write_max_ms,
        migrations: spec.migrations,
        succeeded: finals.iter().filter(|(_, p)| p == "Succeeded").count(),
        not_succeeded: finals
            .iter()
            .filter(|(_, p)| p != "Succeeded")
            .take(10)
            .cloned()
            .collect(),
        on_target,
        wall,
        peak_rss_bytes: controller.peak_rss_bytes().unwrap_or(0),
        cpu: controller.cpu_time().unwrap_or_default(),
        status_writes: sum_series(&metrics, "kvmotion_controller_status_writes_total"),
        events_dropped: sum_series(&metrics, "kvmotion_controller_events_dropped_total"),
        reconciles: sum_series(&metrics, "kvmotion_controller_reconciliations_total"),
        reconcile_p99: Duration::from_secs_f64(p99),
        reconcile_p50: Duration::from_secs_f64(p50),
        peaks: fleet.peaks(),
        waited: waited.len(),
    }
}

/// Counts the controller's "slow reconcile" log lines and the largest
/// `read_ms + act_ms` among them.
pub fn slow_reconciles(log: &str) -> (usize, u64) {
    let field = |line: &str, key: &str| -> u64 {
        line.split_once(key)
            .map(|(_, rest)| {
                rest.chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let slow: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("slow reconcile"))
        .map(|l| {
            let l = crate::strip_ansi(l);
            field(&l, "read_ms") + field(&l, "act_ms")
        })
        .collect();
    (slow.len(), slow.into_iter().max().unwrap_or(0))
}

fn is_terminal(phase: &str) -> bool {
    matches!(phase, "Succeeded" | "Failed" | "Cancelled")
}

/// Sum of every series of `name` on a metrics page.
pub fn sum_series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `q` quantile of histogram `name`, interpolated linearly inside the
/// bucket it falls in (as Prometheus' `histogram_quantile` does).
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let within = if count > prev.1 {
                (rank - prev.1) / (count - prev.1)
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, count);
    }
    f64::NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP x_seconds d\n\
        x_seconds_bucket{le=\"0.01\"} 50\n\
        x_seconds_bucket{le=\"0.02\"} 90\n\
        x_seconds_bucket{le=\"0.04\"} 100\n\
        x_seconds_bucket{le=\"+Inf\"} 100\n\
        x_seconds_count 100\n\
        w_total{result=\"ok\"} 3\nw_total{result=\"err\"} 2\nw_totalish 9\n";

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        assert!((histogram_quantile(PAGE, "x_seconds", 0.5) - 0.01).abs() < 1e-9);
        assert!((histogram_quantile(PAGE, "x_seconds", 0.7) - 0.015).abs() < 1e-9);
        assert!((histogram_quantile(PAGE, "x_seconds", 0.95) - 0.03).abs() < 1e-9);
        assert!(histogram_quantile(PAGE, "missing", 0.5).is_nan());
    }

    #[test]
    fn slow_reconcile_lines_are_counted_with_their_own_time() {
        let log = "x slow reconcile migration=a read_ms=3 act_ms=40 record_ms=120\n\
                   y other line read_ms=999\n\
                   \u{1b}[3mz\u{1b}[0m slow reconcile read_ms\u{1b}[2m=\u{1b}[0m50 act_ms\u{1b}[2m=\u{1b}[0m2 record_ms=101\n";
        assert_eq!(slow_reconciles(log), (2, 52));
    }

    #[test]
    fn series_sums_cover_every_label_set_of_one_name_only() {
        assert_eq!(sum_series(PAGE, "w_total"), 5.0);
    }
}
