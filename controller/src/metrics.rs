//! Prometheus metrics of the controller. Label values are static strings
//! (phases, error categories), never formatted from data.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use kvmotion_api::{Phase, VirtualMachineMigrationStatus as Status};

type Labels = [(&'static str, &'static str); 1];

/// The controller's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    reconciliations: Family<Labels, Counter>,
    reconcile_seconds: Histogram,
    leader: Gauge,
    migrations: Family<Labels, Counter>,
    phase_seconds: Family<Labels, Histogram>,
    downtime_seconds: Histogram,
    transferred_bytes: Counter,
    in_flight: Family<Labels, Gauge>,
    status_writes: Counter,
    events_dropped: Counter,
    events_failed: Counter,
    evacuations: Family<Labels, Counter>,
    evacuation_moves: Family<Labels, Counter>,
    evacuation_seconds: Family<Labels, Histogram>,
    evacuation_vms: Family<Labels, Counter>,
}

fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kvmotion_controller");
        let reconciliations = Family::<Labels, Counter>::default();
        registry.register(
            "reconciliations",
            "Reconciliations by result (ok, or the error category)",
            reconciliations.clone(),
        );
        // Buckets 1.5x apart from 0.5 ms to about 10 s: fine enough to
        // read a p99 near the 50 ms budget without a wide bucket.
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 1.5, 25));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            reconcile_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        let migrations = Family::<Labels, Counter>::default();
        registry.register(
            "migrations",
            "Migrations that ended, by result (Succeeded, Failed, Cancelled)",
            migrations.clone(),
        );
        let phase_seconds =
            Family::<Labels, Histogram>::new_with_constructor(phase_histogram as fn() -> Histogram);
        registry.register(
            "phase_duration_seconds",
            "Time migrations spent in each phase",
            phase_seconds.clone(),
        );
        let downtime_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "downtime_seconds",
            "Guest downtime of successful migrations",
            downtime_seconds.clone(),
        );
        let transferred_bytes = Counter::default();
        registry.register(
            "transferred_bytes",
            "Bytes sent by successful migrations",
            transferred_bytes.clone(),
        );
        let in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "migrations_in_flight",
            "Migrations not yet ended, by phase",
            in_flight.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "Status writes to migrations",
            status_writes.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Events not published because their queue was full",
            events_dropped.clone(),
        );
        let events_failed = Counter::default();
        registry.register(
            "events_failed",
            "Events the API server refused or did not answer",
            events_failed.clone(),
        );
        let evacuations = Family::<Labels, Counter>::default();
        registry.register(
            "evacuations",
            "Node evacuations that ended, by result (Completed, Failed, Cancelled)",
            evacuations.clone(),
        );
        let evacuation_moves = Family::<Labels, Counter>::default();
        registry.register(
            "evacuation_migrations_created",
            "Migrations created by node evacuations, by kind (first attempt, or a re-plan after a failure)",
            evacuation_moves.clone(),
        );
        let evacuation_seconds =
            Family::<Labels, Histogram>::new_with_constructor(phase_histogram as fn() -> Histogram);
        registry.register(
            "evacuation_duration_seconds",
            "Node evacuations from creation to their end, by result",
            evacuation_seconds.clone(),
        );
        let evacuation_vms = Family::<Labels, Counter>::default();
        registry.register(
            "evacuation_vms",
            "VMs of ended node evacuations, by result (moved, or failed: not moved)",
            evacuation_vms.clone(),
        );
        Self {
            registry,
            reconciliations,
            reconcile_seconds,
            leader,
            migrations,
            phase_seconds,
            downtime_seconds,
            transferred_bytes,
            in_flight,
            status_writes,
            events_dropped,
            events_failed,
            evacuations,
            evacuation_moves,
            evacuation_seconds,
            evacuation_vms,
        }
    }
}

impl Metrics {
    /// Records one reconciliation: its outcome label and how long it took.
    pub fn reconciled(&self, result: &'static str, seconds: f64) {
        self.reconciliations
            .get_or_create(&[("result", result)])
            .inc();
        self.reconcile_seconds.observe(seconds);
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts a status write.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Records a step of a migration's status from `old` to `new`: the
    /// phase left (its duration), and a migration's result when it ended.
    pub fn transition(&self, old: &Status, new: &Status) {
        if old.phase == new.phase {
            return;
        }
        // The phase just left was entered at the second-to-last transition.
        let times = &new.phase_transition_times;
        if let [.., prev, last] = times.as_slice() {
            let secs = last
                .time
                .0
                .duration_since(prev.time.0)
                .as_secs_f64()
                .max(0.0);
            self.phase_seconds
                .get_or_create(&[("phase", prev.phase.as_str())])
                .observe(secs);
        }
        let ended =
            new.phase.is_some_and(Phase::is_terminal) && !old.phase.is_some_and(Phase::is_terminal);
        if let (true, Some(phase)) = (ended, new.phase) {
            self.migrations
                .get_or_create(&[("result", phase.as_str())])
                .inc();
            if let (Phase::Succeeded, Some(r)) = (phase, &new.result) {
                self.downtime_seconds.observe(r.downtime_ms as f64 / 1000.0);
                self.transferred_bytes.inc_by(r.data_transferred_bytes);
            }
        }
    }

    /// Counts `n` Events dropped unpublished.
    pub fn events_dropped(&self, n: u64) {
        self.events_dropped.inc_by(n);
    }

    /// Counts `n` Events the API server did not take.
    pub fn events_failed(&self, n: u64) {
        self.events_failed.inc_by(n);
    }

    /// Sets the number of unfinished migrations in each phase.
    pub fn set_in_flight(&self, counts: &[(Phase, i64)]) {
        for (phase, n) in counts {
            self.in_flight
                .get_or_create(&[("phase", phase.as_str())])
                .set(*n);
        }
    }

    /// Counts an evacuation that reached its end `result` after `seconds`,
    /// with the VMs it `moved` and those that `failed` to move.
    pub fn evacuation_ended(&self, result: &'static str, seconds: f64, moved: u32, failed: u32) {
        self.evacuations.get_or_create(&[("result", result)]).inc();
        self.evacuation_seconds
            .get_or_create(&[("result", result)])
            .observe(seconds.max(0.0));
        for (kind, n) in [("moved", moved), ("failed", failed)] {
            self.evacuation_vms
                .get_or_create(&[("result", kind)])
                .inc_by(u64::from(n));
        }
    }

    /// Counts a migration an evacuation created: `first` for a VM's first
    /// attempt, `replan` for a later one.
    pub fn evacuation_migration_created(&self, kind: &'static str) {
        self.evacuation_moves
            .get_or_create(&[("attempt", kind)])
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_exposes_reconciliations_by_result_and_leadership() {
        let m = Metrics::default();
        m.reconciled("ok", 0.002);
        m.reconciled("write_status", 0.01);
        m.set_leader(true);
        let text = m.render();
        assert!(
            text.contains(r#"kvmotion_controller_reconciliations_total{result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kvmotion_controller_reconciliations_total{result="write_status"} 1"#)
        );
        assert!(text.contains("kvmotion_controller_leader 1"));
        assert!(text.contains("kvmotion_controller_reconcile_duration_seconds_count 2"));
    }
}
