//! Leader election: run the reconciler only while this replica holds the Lease.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::Error;
use crate::metrics::Metrics;

/// Where and how long the leader Lease is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// Lease validity without renewal.
    pub duration: Duration,
    /// Renew this long before expiry.
    pub grace: Duration,
}

/// Runs `work` while this replica leads, until `shutdown` completes. Losing
/// the Lease drops the running `work` (so no stale leader keeps writing) and
/// campaigns again. On shutdown the Lease is released so a standby takes
/// over at once instead of waiting for expiry.
pub async fn run_while_leader<W, F>(
    client: Client,
    lease: LeaseConfig,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
    mut work: W,
) -> Result<(), Error>
where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    let to_err = |source| Error::LeaderElection {
        namespace: lease.namespace.clone(),
        name: lease.name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration.as_secs())
        .with_grace(lease.grace.as_secs())
        .with_field_manager(crate::run::LEASE_FIELD_MANAGER)
        .build()
        .await
        .map_err(to_err)?;
    let (mut leading, task) = manager.watch().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        info!(identity = %lease.identity, lease = %lease.name, "became leader");
        metrics.set_leader(true);
        let lost = tokio::select! {
            _ = &mut shutdown => false,
            _ = leading.wait_for(|l| !*l) => true,
            _ = work() => false,
        };
        metrics.set_leader(false);
        if !lost {
            break;
        }
        warn!(identity = %lease.identity, "lost the leader Lease; stopped reconciling");
    }
    // Closing the channel makes the manager release the Lease and return.
    drop(leading);
    match task.await {
        Ok(Ok(_)) => {
            info!(identity = %lease.identity, "released the leader Lease");
            Ok(())
        }
        Ok(Err(source)) => Err(to_err(source)),
        Err(join) => {
            warn!(error = %join, "lease manager task ended abnormally");
            Ok(())
        }
    }
}
