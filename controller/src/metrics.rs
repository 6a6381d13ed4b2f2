//! Prometheus metrics of the controller. Label values are static strings
//! (phases, error categories), never formatted from data.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

/// The controller's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    reconciliations: Family<Labels, Counter>,
    reconcile_seconds: Histogram,
    leader: Gauge,
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
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
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
        Self {
            registry,
            reconciliations,
            reconcile_seconds,
            leader,
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
