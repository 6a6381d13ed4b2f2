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

/// How long a stopping leader lets running reconciles finish, so that an
/// agent call already made has its status written. Below the pod's default
/// 30 s termination grace period.
pub const DRAIN: Duration = Duration::from_secs(20);

/// How a leadership term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermEnd {
    /// The Lease was lost: the work was dropped at once, so that no stale
    /// leader writes.
    Lost,
    /// The work ended by itself.
    Finished,
    /// Shutdown: the work was given up to `drain` to finish what it runs
    /// (it stops taking new work when it sees the same shutdown).
    Stopped,
}

/// What a standby woke up for.
enum Woke {
    /// Shutdown, or the manager ended.
    Stop,
    /// It holds the Lease now.
    Leading,
    /// The Lease was released by its holder.
    Released,
}

/// Returns once the Lease, held by another replica, has no holder (its
/// leader released it), seen by a watch; never when the watch cannot be
/// made (the manager's own expiry timing still applies then).
///
/// A Lease that is free when first seen does not count: the manager is
/// taking it already, and cutting that campaign short to start another
/// one would repeat forever whenever the watch answers before the
/// manager's acquisition does (a loaded API server).
async fn released(client: &Client, lease: &LeaseConfig) {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &lease.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", lease.name));
    let stream = watcher(api, config).applied_objects();
    tokio::pin!(stream);
    let mut held_by_another = false;
    while let Some(event) = stream.next().await {
        if let Ok(l) = event {
            let holder = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            if release_seen(&mut held_by_another, &holder, &lease.identity) {
                return;
            }
        }
    }
    std::future::pending::<()>().await
}

/// Whether a Lease holder just seen ends another replica's hold: true only
/// for an empty holder after a holder other than `me` was seen.
fn release_seen(held_by_another: &mut bool, holder: &str, me: &str) -> bool {
    if holder.is_empty() {
        return *held_by_another;
    }
    *held_by_another = holder != me;
    false
}

/// Runs one term's `work` until the Lease is `lost`, the work ends, or
/// `shutdown`, after which the work may run `drain` longer.
pub async fn term(
    work: impl Future<Output = ()>,
    lost: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> TermEnd {
    tokio::pin!(work);
    tokio::select! {
        _ = lost => TermEnd::Lost,
        _ = &mut work => TermEnd::Finished,
        _ = shutdown => {
            if tokio::time::timeout(drain, work).await.is_err() {
                warn!(seconds = drain.as_secs(), "reconciles still running at shutdown were dropped");
            }
            TermEnd::Stopped
        }
    }
}

/// Runs `work` while this replica leads, until `shutdown` completes. Losing
/// the Lease drops the running `work` (so no stale leader keeps writing) and
/// campaigns again. On shutdown the work drains (see [`term`]), then the
/// Lease is released so a standby takes over at once instead of waiting
/// for expiry.
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
    let build = || async {
        LeaseManagerBuilder::new(client.clone(), &lease.name)
            .with_namespace(&lease.namespace)
            .with_identity(&lease.identity)
            .with_duration(lease.duration.as_secs())
            .with_grace(lease.grace.as_secs())
            .with_field_manager(crate::run::LEASE_FIELD_MANAGER)
            .build()
            .await
            .map_err(to_err)
    };
    let (mut leading, mut task) = build().await?.watch().await;
    let mut last_campaign = tokio::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        // A standby's manager sleeps until the Lease expires; a leader
        // that stops clears the holder long before. Seeing that here, the
        // standby campaigns again at once and takes over, rather than a
        // replacement pod that finds the Lease free first.
        let woke = tokio::select! {
            _ = &mut shutdown => Woke::Stop,
            changed = leading.wait_for(|l| *l) => match changed {
                Ok(_) => Woke::Leading,
                Err(_) => Woke::Stop,
            },
            () = released(&client, &lease) => Woke::Released,
        };
        match woke {
            Woke::Stop => break,
            Woke::Leading => {}
            Woke::Released => {
                if !*leading.borrow() {
                    // Not the holder: nothing to release, only the sleep
                    // to cut short.
                    task.abort();
                    // At once after a release (a replacement pod starting
                    // meanwhile must not find the Lease free first), but no
                    // more than one campaign each 500 ms when the free
                    // Lease cannot be taken (the API server refusing).
                    tokio::time::sleep_until(last_campaign + Duration::from_millis(500)).await;
                    last_campaign = tokio::time::Instant::now();
                    (leading, task) = build().await?.watch().await;
                }
                continue;
            }
        }
        info!(identity = %lease.identity, lease = %lease.name, "became leader");
        metrics.set_leader(true);
        let mut watch = leading.clone();
        let ended = term(
            work(),
            async move {
                let _ = watch.wait_for(|l| !*l).await;
            },
            &mut shutdown,
            DRAIN,
        )
        .await;
        metrics.set_leader(false);
        match ended {
            TermEnd::Lost => {
                warn!(identity = %lease.identity, "lost the leader Lease; stopped reconciling")
            }
            TermEnd::Finished | TermEnd::Stopped => break,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn after(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await
    }

    #[test]
    fn only_a_release_by_another_holder_cuts_the_campaign_short() {
        // (case, holders seen in order, fires at the last one)
        let cases: [(&str, &[&str], bool); 6] = [
            ("free when first seen: the manager takes it", &[""], false),
            ("free, then ours", &["", "me"], false),
            ("held by another, then released", &["other", ""], true),
            ("free, another takes it, releases", &["", "other", ""], true),
            ("another, then ours, then free", &["other", "me", ""], false),
            ("still held by another", &["other", "other"], false),
        ];
        for (case, holders, fires) in cases {
            let mut held = false;
            let mut last = false;
            for h in holders {
                last = release_seen(&mut held, h, "me");
            }
            assert_eq!(last, fires, "{case}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_leader_lets_running_work_finish_and_a_deposed_one_does_not() {
        // (case, work takes, lost at, shutdown at, end, work finished)
        let cases = [
            (
                "shutdown mid-reconcile: drained",
                3,
                100,
                1,
                TermEnd::Stopped,
                true,
            ),
            (
                "shutdown, work hangs: dropped after the drain",
                1000,
                100,
                1,
                TermEnd::Stopped,
                false,
            ),
            (
                "lease lost: dropped at once",
                3,
                1,
                100,
                TermEnd::Lost,
                false,
            ),
            ("work ends by itself", 1, 100, 100, TermEnd::Finished, true),
        ];
        for (name, takes, lost_at, stop_at, want, finished) in cases {
            let done = Arc::new(AtomicBool::new(false));
            let flag = done.clone();
            let work = async move {
                after(takes).await;
                flag.store(true, Ordering::SeqCst);
            };
            let t0 = tokio::time::Instant::now();
            let got = term(
                work,
                after(lost_at),
                after(stop_at),
                Duration::from_secs(20),
            )
            .await;
            assert_eq!(got, want, "{name}");
            assert_eq!(done.load(Ordering::SeqCst), finished, "{name}");
            assert!(t0.elapsed() <= Duration::from_secs(21 + stop_at), "{name}");
        }
    }
}
