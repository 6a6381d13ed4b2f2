//! Reconciliation of one `VirtualMachineMigration`: observe → decide → write
//! status. Only `write_status` does I/O; `decide` is a pure function of what
//! was observed and the current time.

pub mod conditions;
pub mod decide;
pub mod observe;
pub mod selector;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject};
use kube::runtime::controller::Action;
use tracing::{debug, warn};

use crate::Error;
use crate::metrics::Metrics;

/// What every reconciliation shares.
pub struct Context {
    /// Migrations, untyped so that an object the controller cannot parse
    /// still gets a condition instead of stalling the watch.
    pub api: Api<DynamicObject>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

/// Reconciles one migration.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let observed = observe::observe(&obj);
    let decision = decide::decide(&observed, jiff::Timestamp::now());
    let result = match decision.status {
        Some(ref desired) => status::write(&ctx.api, &observed.name, desired).await,
        None => Ok(()),
    };
    let label = match &result {
        Ok(()) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics
        .reconciled(label, started.elapsed().as_secs_f64());
    result?;
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&observed.name);
    }
    debug!(migration = %observed.name, next = ?decision.next, "reconciled");
    Ok(decision.next.into())
}

/// Retries transient failures with exponential backoff per object; a
/// permanent one waits for the object to change.
pub fn error_policy(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Context>) -> Action {
    let name = obj.metadata.name.clone().unwrap_or_default();
    warn!(migration = %name, category = err.category(), error = %crate::error::chain(err), "reconcile failed");
    if !err.is_transient() {
        return Action::await_change();
    }
    let attempt = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(name).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    Action::requeue(backoff(attempt))
}

/// Delay before retry number `attempt` (1-based): 1 s doubling to 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_five_minutes() {
        let got: Vec<u64> = [1, 2, 3, 9, 10, 50]
            .iter()
            .map(|&a| backoff(a).as_secs())
            .collect();
        assert_eq!(got, vec![1, 2, 4, 256, 300, 300]);
    }
}
