//! The inventory publisher: keeps `Hypervisor/<node>` status current and
//! renews the node's heartbeat Lease. Status is written when something
//! changed (libvirt lifecycle events trigger a look) plus a slow resync.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::api::{Api, Patch, PatchParams};
use kvmotion_api::hypervisor::{DomainInfo, GuestDirtyRate, Hypervisor, HypervisorStatus};
use serde_json::json;
use tracing::{debug, warn};

use crate::error::{Error, blocking};
use crate::libvirt::Libvirt;
use crate::metrics::Metrics;
use crate::sampler::Samples;

/// Field manager of everything the agent writes.
pub const AGENT_MANAGER: &str = "kvmotion-agent";

/// Where and how often to publish.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// The node (and Hypervisor object) name.
    pub node: String,
    /// The address other nodes' libvirtd reach this one on.
    pub migration_address: String,
    /// This agent's API endpoint.
    pub endpoint: String,
    /// Namespace of the heartbeat Lease.
    pub lease_namespace: String,
    /// Rewrite the status at least this often.
    pub resync: Duration,
    /// Renew the Lease this often.
    pub heartbeat: Duration,
}

/// Runs until the process ends.
pub async fn run(
    client: kube::Client,
    lv: Arc<dyn Libvirt>,
    samples: Arc<Samples>,
    engine: Arc<crate::engine::Engine>,
    cfg: InventoryConfig,
    metrics: Arc<Metrics>,
) {
    let mut events = lv.subscribe();
    let mut last: Option<HypervisorStatus> = None;
    let mut last_write = tokio::time::Instant::now();
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    let mut check = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = renew_lease(&client, &cfg).await {
                    warn!(error = %crate::error::chain(&e), "heartbeat Lease not renewed");
                }
                continue;
            }
            _ = check.tick() => {}
            ev = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev { return; }
                // Let a burst of events (a migration ends with several) settle.
                tokio::time::sleep(Duration::from_millis(300)).await;
                while events.try_recv().is_ok() {}
            }
        }
        let mut observed = observe(&lv, &cfg).await;
        samples.fill(&mut observed.domains);
        let overheads = engine.overheads();
        observed.migration_startup_ms = overheads.startup.map(crate::engine::millis);
        observed.migration_finish_ms = overheads.finish.map(crate::engine::millis);
        let due = last_write.elapsed() >= cfg.resync;
        if !due
            && last
                .as_ref()
                .is_some_and(|old| !significant_change(old, &observed))
        {
            continue;
        }
        let mut status = observed;
        status.last_sync_time = Some(Time(now_seconds()));
        match write_status(&client, &cfg.node, &status).await {
            Ok(()) => {
                metrics.published("ok");
                debug!(domains = status.domains.len(), "inventory published");
                last = Some(status);
                last_write = tokio::time::Instant::now();
            }
            Err(e) => {
                metrics.published("error");
                warn!(error = %crate::error::chain(&e), "inventory not published");
            }
        }
    }
}

fn now_seconds() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// What libvirt reports now, as a Hypervisor status (without sync time).
async fn observe(lv: &Arc<dyn Libvirt>, cfg: &InventoryConfig) -> HypervisorStatus {
    let lv1 = lv.clone();
    let lv2 = lv.clone();
    let facts = blocking(move || lv1.host()).await;
    let domains = blocking(move || lv2.domains()).await;
    let base = HypervisorStatus {
        migration_address: Some(cfg.migration_address.clone()),
        agent_endpoint: Some(cfg.endpoint.clone()),
        ..Default::default()
    };
    match (facts, domains) {
        (Ok(f), Ok(d)) => HypervisorStatus {
            libvirt_version: Some(f.libvirt_version),
            qemu_version: Some(f.qemu_version),
            cpu: Some(f.cpu),
            memory: Some(f.memory),
            domains: d,
            conditions: vec![ready(
                true,
                "LibvirtReachable",
                "the agent reaches libvirtd".into(),
            )],
            ..base
        },
        (Err(e), _) | (_, Err(e)) => HypervisorStatus {
            conditions: vec![ready(false, "LibvirtUnreachable", crate::error::chain(&e))],
            ..base
        },
    }
}

fn ready(ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: None,
        // Only compared by status, so a fixed time keeps equality stable;
        // the real transition time is set when written.
        last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Whether `new` differs from what was published enough to write: any
/// change but free memory, which must move by more than 2% of the total
/// (it jitters constantly), and guests' dirty rates, which count only
/// when they appear, go, or move to another quarter of an octave (a
/// sample's time alone is no change: the resync carries it).
pub fn significant_change(old: &HypervisorStatus, new: &HypervisorStatus) -> bool {
    let strip = |s: &HypervisorStatus| HypervisorStatus {
        last_sync_time: None,
        domains: s
            .domains
            .iter()
            .map(|d| DomainInfo {
                dirty_rate: d.dirty_rate.as_ref().map(|r| GuestDirtyRate {
                    bytes_per_second: quarter_octave(r.bytes_per_second),
                    resident_bytes: quarter_octave(r.resident_bytes),
                    measured_at: Time(jiff::Timestamp::UNIX_EPOCH),
                }),
                ..d.clone()
            })
            .collect(),
        memory: s
            .memory
            .as_ref()
            .map(|m| kvmotion_api::hypervisor::HostMemory {
                free_bytes: 0,
                ..m.clone()
            }),
        conditions: s
            .conditions
            .iter()
            .map(|c| Condition {
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
                ..c.clone()
            })
            .collect(),
        ..s.clone()
    };
    if strip(old) != strip(new) {
        return true;
    }
    match (&old.memory, &new.memory) {
        (Some(a), Some(b)) => a.free_bytes.abs_diff(b.free_bytes) > b.total_bytes / 50,
        _ => false,
    }
}

/// Which quarter of an octave of MiB `bytes` falls in (0 below 1 MiB).
fn quarter_octave(bytes: u64) -> u64 {
    let mib = bytes as f64 / f64::from(1u32 << 20);
    if mib < 1.0 {
        0
    } else {
        1 + (mib.log2() * 4.0) as u64
    }
}

async fn write_status(
    client: &kube::Client,
    node: &str,
    status: &HypervisorStatus,
) -> Result<(), Error> {
    let api: Api<Hypervisor> = Api::all(client.clone());
    let pp = PatchParams::apply(AGENT_MANAGER).force();
    let mut status = status.clone();
    let stamp = Time(now_seconds());
    for c in &mut status.conditions {
        c.last_transition_time = stamp.clone();
    }
    // The object may not exist yet: applying it (empty spec) creates it.
    let object = json!({"apiVersion": "kvmotion.io/v1alpha1", "kind": "Hypervisor", "metadata": {"name": node}, "spec": {}});
    if api
        .get_opt(node)
        .await
        .map_err(|source| Error::Publish {
            what: format!("Hypervisor/{node}"),
            source,
        })?
        .is_none()
    {
        api.patch(node, &pp, &Patch::Apply(&object))
            .await
            .map_err(|source| Error::Publish {
                what: format!("Hypervisor/{node}"),
                source,
            })?;
    }
    let patch =
        json!({"apiVersion": "kvmotion.io/v1alpha1", "kind": "Hypervisor", "status": status});
    api.patch_status(node, &pp, &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Publish {
            what: format!("Hypervisor/{node} status"),
            source,
        })?;
    Ok(())
}

async fn renew_lease(client: &kube::Client, cfg: &InventoryConfig) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.lease_namespace);
    let name = lease_name(&cfg.node);
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {
            "holderIdentity": cfg.node,
            "leaseDurationSeconds": (cfg.heartbeat.as_secs() * 4).max(10),
            "renewTime": MicroTime(jiff::Timestamp::now()),
        }
    });
    api.patch(
        &name,
        &PatchParams::apply(AGENT_MANAGER).force(),
        &Patch::Apply(&lease),
    )
    .await
    .map_err(|source| Error::Publish {
        what: format!("Lease/{name}"),
        source,
    })?;
    Ok(())
}

/// The heartbeat Lease of a node's agent.
pub fn lease_name(node: &str) -> String {
    format!("kvmotion-agent-{node}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmotion_api::hypervisor::{DomainInfo, HostMemory};

    fn status(free: u64, domains: usize) -> HypervisorStatus {
        HypervisorStatus {
            memory: Some(HostMemory {
                total_bytes: 1000 << 20,
                free_bytes: free << 20,
            }),
            domains: (0..domains)
                .map(|i| DomainInfo {
                    name: format!("d{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_real_changes_are_written() {
        let cases = [
            ("identical", status(500, 1), status(500, 1), false),
            (
                "free memory jitter under 2%",
                status(500, 1),
                status(510, 1),
                false,
            ),
            (
                "free memory moved over 2%",
                status(500, 1),
                status(530, 1),
                true,
            ),
            ("a domain appeared", status(500, 1), status(500, 2), true),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(significant_change(&old, &new), want, "{name}");
        }
        let rated = |mib: u64, at: i64| {
            let mut s = status(500, 1);
            s.domains[0].dirty_rate = Some(GuestDirtyRate {
                bytes_per_second: mib << 20,
                resident_bytes: 100 << 20,
                measured_at: Time(jiff::Timestamp::from_second(at).unwrap()),
            });
            s
        };
        let rates = [
            ("a first sample", status(500, 1), rated(40, 0), true),
            (
                "the same rate sampled again",
                rated(40, 0),
                rated(40, 30),
                false,
            ),
            (
                "a rate within its quarter octave",
                rated(40, 0),
                rated(44, 30),
                false,
            ),
            (
                "a rate half again as high",
                rated(40, 0),
                rated(60, 30),
                true,
            ),
            ("the sample gone", rated(40, 0), status(500, 1), true),
        ];
        for (name, old, new, want) in rates {
            assert_eq!(significant_change(&old, &new), want, "{name}");
        }
        let mut synced = status(500, 1);
        synced.last_sync_time = Some(Time(jiff::Timestamp::from_second(5).unwrap()));
        assert!(
            !significant_change(&status(500, 1), &synced),
            "sync time alone is no change"
        );
    }
}
