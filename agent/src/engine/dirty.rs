//! Measuring how fast a guest dirties its memory before it moves, so the
//! controller can predict how pre-copy would go and choose a strategy.

use std::time::{Duration, Instant};

use kvmotion_api::agent::{DIRTY_RATE_MAX_SECONDS, DirtyRate, DomainRef};

use super::{Engine, by_uuid};
use crate::error::{Error, blocking};
use crate::libvirt::LibvirtError;

/// How long after the measurement's end libvirt may take to report it.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// How often the result is looked for.
const POLL: Duration = Duration::from_millis(100);

impl Engine {
    /// Measures `vm`'s dirty rate over `seconds` (taken into 1 to
    /// [`DIRTY_RATE_MAX_SECONDS`]); the guest must run here.
    pub async fn dirty_rate(&self, vm: DomainRef, seconds: u32) -> Result<DirtyRate, Error> {
        let seconds = seconds.clamp(1, DIRTY_RATE_MAX_SECONDS);
        let lv = self.lv.clone();
        let wanted = vm.clone();
        let found = blocking(move || lv.domain(&wanted)).await?;
        let Some(d) = found else {
            return Err(Error::DomainNotFound {
                vm: vm.to_string(),
                node: self.config.node.clone(),
            });
        };
        if !d.state.has_guest() {
            return Err(Error::DomainState {
                vm: d.name.clone(),
                state: format!("{:?}", d.state),
                needed: "a dirty rate is measured on a running guest",
            });
        }
        let r = by_uuid(&d.uuid);
        let before = self.sample(&r, &d.name).await?.start_time;
        let (lv, r2) = (self.lv.clone(), r.clone());
        blocking(move || lv.start_dirty_rate(&r2, seconds)).await?;
        tokio::time::sleep(Duration::from_secs(seconds.into())).await;
        let deadline = Instant::now() + REPORT_GRACE;
        loop {
            let s = self.sample(&r, &d.name).await?;
            if s.measured && s.start_time != before {
                return Ok(DirtyRate {
                    bytes_per_second: s.bytes_per_second,
                    resident_bytes: s.resident_bytes.min(d.memory_bytes),
                    memory_bytes: d.memory_bytes,
                    period_seconds: seconds,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Libvirt(LibvirtError::Call {
                    op: "virDomainStartDirtyRateCalc",
                    message: format!(
                        "no result {} s after the {seconds} s measurement of {} ended",
                        REPORT_GRACE.as_secs(),
                        d.name
                    ),
                }));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn sample(
        &self,
        r: &DomainRef,
        name: &str,
    ) -> Result<crate::libvirt::DirtyRateSample, Error> {
        let (lv, r) = (self.lv.clone(), r.clone());
        blocking(move || lv.dirty_rate(&r))
            .await?
            .ok_or_else(|| Error::DomainNotFound {
                vm: name.to_string(),
                node: self.config.node.clone(),
            })
    }
}
