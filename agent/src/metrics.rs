//! Prometheus metrics of the agent; label values are static strings.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::error::Error;

type Labels = [(&'static str, &'static str); 2];

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    publishes: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kvmotion_agent");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests by action and result reason",
            requests.clone(),
        );
        let publishes = Family::default();
        registry.register(
            "inventory_writes",
            "Hypervisor status writes by outcome",
            publishes.clone(),
        );
        Metrics {
            registry,
            requests,
            publishes,
        }
    }
}

impl Metrics {
    /// Counts one API request.
    pub fn request<T>(&self, action: &'static str, result: &Result<T, Error>) {
        let reason = match result {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        };
        self.requests
            .get_or_create(&[("action", action), ("result", reason)])
            .inc();
    }

    /// Counts one inventory write.
    pub fn published(&self, outcome: &'static str) {
        self.publishes.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
