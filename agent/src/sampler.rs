//! Background dirty-rate sampling: every running guest's dirty rate is
//! measured (one second of libvirt's page sampling) at a steady interval
//! and kept for the inventory to publish, so that the controller can
//! predict a live move before it starts instead of a second into it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kvmotion_api::hypervisor::{DomainInfo, GuestDirtyRate};
use tracing::debug;

use crate::engine::{Engine, by_uuid};
use crate::error::blocking;

/// The latest sample of each guest, by domain UUID.
#[derive(Debug, Default)]
pub struct Samples {
    by_uuid: Mutex<HashMap<String, GuestDirtyRate>>,
}

impl Samples {
    /// The guests' latest samples put into `domains` (which are taken to
    /// be what libvirt lists now).
    pub fn fill(&self, domains: &mut [DomainInfo]) {
        let Ok(by_uuid) = self.by_uuid.lock() else {
            return;
        };
        for d in domains {
            d.dirty_rate = by_uuid.get(&d.uuid).cloned();
        }
    }

    /// Keeps the samples of `running` guests only: one that stopped or
    /// left has no current rate.
    fn keep(&self, running: &[String]) {
        if let Ok(mut by_uuid) = self.by_uuid.lock() {
            by_uuid.retain(|uuid, _| running.contains(uuid));
        }
    }

    fn put(&self, uuid: &str, sample: Option<GuestDirtyRate>) {
        if let Ok(mut by_uuid) = self.by_uuid.lock() {
            match sample {
                Some(s) => by_uuid.insert(uuid.to_string(), s),
                None => by_uuid.remove(uuid),
            };
        }
    }
}

/// Samples every running guest each `every`, until the process ends.
/// Guests this agent is moving are left alone: their move measures them.
pub async fn run(engine: Arc<Engine>, samples: Arc<Samples>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lv = engine.lv.clone();
        let domains = match blocking(move || lv.domains()).await {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, "no domains to sample");
                continue;
            }
        };
        let running: Vec<String> = domains
            .iter()
            .filter(|d| d.state == kvmotion_api::hypervisor::DomainState::Running)
            .map(|d| d.uuid.clone())
            .collect();
        samples.keep(&running);
        let due: Vec<&String> = running
            .iter()
            .filter(|uuid| !engine.is_moving(uuid))
            .collect();
        join_all(due.into_iter().map(|uuid| {
            let (engine, samples) = (engine.clone(), samples.clone());
            async move {
                let sample = match engine.dirty_rate(by_uuid(uuid), 1).await {
                    Ok(r) => Some(GuestDirtyRate {
                        bytes_per_second: r.bytes_per_second,
                        resident_bytes: r.resident_bytes,
                        measured_at: Time(jiff::Timestamp::now()),
                    }),
                    Err(e) => {
                        debug!(%uuid, error = %e, "dirty rate not sampled");
                        None
                    }
                };
                samples.put(uuid, sample);
            }
        }))
        .await;
    }
}
