//! Measuring how fast a guest dirties its memory: on request, and as a
//! live move starts, so the move can predict how pre-copy would go and
//! choose its strategy (engine::predict).

use std::time::{Duration, Instant};

use kvmotion_api::agent::{DIRTY_RATE_MAX_SECONDS, DirtyRate, DomainRef};

use super::{Engine, by_uuid};
use crate::error::{Error, blocking};
use crate::libvirt::{Libvirt, LibvirtError};

/// How long after the measurement's end libvirt may take to report it.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// How often the result is looked for.
const POLL: Duration = Duration::from_millis(100);

/// How long a move's measurement samples the guest: libvirt's shortest.
const MOVE_PERIOD: u32 = 1;

/// A measurement a live move started, read once libvirt has its result.
#[derive(Debug, Clone)]
pub(crate) struct Measuring {
    vm: DomainRef,
    /// `calc_start_time` of the result before this one (none: the result
    /// of the measurement running as it began counts).
    before: Option<i64>,
    asked: Instant,
}

/// What a move's measurement has come to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Measured {
    /// Not done yet.
    Pending,
    /// Distinct bytes the guest dirtied per second.
    Rate(u64),
    /// No result will come; why.
    GaveUp(String),
}

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
        // Someone else's measurement (the background sampler's) would not
        // be over the seconds asked for: let it end first.
        let busy_until =
            Instant::now() + Duration::from_secs(DIRTY_RATE_MAX_SECONDS.into()) + REPORT_GRACE;
        while self.sample(&r, &d.name).await?.measuring && Instant::now() < busy_until {
            tokio::time::sleep(POLL).await;
        }
        let (lv, r2) = (self.lv.clone(), r.clone());
        let before = blocking(move || begin(&*lv, &r2, seconds)).await?;
        tokio::time::sleep(Duration::from_secs(seconds.into())).await;
        let deadline = Instant::now() + REPORT_GRACE;
        loop {
            let s = self.sample(&r, &d.name).await?;
            if s.measured && Some(s.start_time) != before {
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

impl Engine {
    /// Starts the measurement a live move predicts from, just before the
    /// move: libvirt runs no other job on a domain while it migrates one,
    /// while QEMU's sampling goes on beside the migration. None when
    /// libvirt cannot measure this guest.
    pub(crate) async fn start_measuring(&self, vm: &DomainRef) -> Option<Measuring> {
        let (lv, r) = (self.lv.clone(), vm.clone());
        let started = blocking(move || {
            if lv.dirty_rate(&r)?.is_none() {
                return Ok(None);
            }
            begin(&*lv, &r, MOVE_PERIOD).map(Some)
        })
        .await;
        match started {
            Ok(Some(before)) => Some(Measuring {
                vm: vm.clone(),
                before,
                asked: Instant::now(),
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(vm = %vm, error = %e, "no dirty-rate measurement for the move");
                None
            }
        }
    }

    /// Where the move's measurement stands; libvirt is asked only once the
    /// sampling period is over.
    pub(crate) async fn measured(&self, m: &Measuring) -> Measured {
        let period = Duration::from_secs(MOVE_PERIOD.into());
        if m.asked.elapsed() < period {
            return Measured::Pending;
        }
        let (lv, r) = (self.lv.clone(), m.vm.clone());
        match blocking(move || lv.dirty_rate(&r)).await {
            Ok(Some(s)) if s.measured && Some(s.start_time) != m.before => {
                Measured::Rate(s.bytes_per_second)
            }
            Ok(Some(_)) if m.asked.elapsed() < period + REPORT_GRACE => Measured::Pending,
            Ok(Some(_)) => Measured::GaveUp(format!(
                "no result {} s after the measurement ended",
                REPORT_GRACE.as_secs()
            )),
            Ok(None) => Measured::GaveUp("the domain is gone".into()),
            Err(e) => Measured::GaveUp(e.to_string()),
        }
    }
}

/// Starts a measurement of `vm` over `seconds`, or joins the one running
/// (the background sampler's, or a request's: libvirt refuses a second).
/// Returns the `calc_start_time` a new result differs from; none when the
/// running measurement's result is the one to wait for.
fn begin(lv: &dyn Libvirt, vm: &DomainRef, seconds: u32) -> Result<Option<i64>, LibvirtError> {
    let now = lv.dirty_rate(vm)?.unwrap_or_default();
    if now.measuring {
        return Ok(None);
    }
    match lv.start_dirty_rate(vm, seconds) {
        Ok(()) => Ok(Some(now.start_time)),
        // Another began between the look and the start: wait for it.
        Err(e)
            if lv
                .dirty_rate(vm)
                .ok()
                .flatten()
                .is_some_and(|s| s.measuring) =>
        {
            tracing::debug!(vm = %vm, error = %e, "joining the dirty-rate measurement already running");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
