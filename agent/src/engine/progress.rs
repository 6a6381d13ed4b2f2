//! Progress as users see it, computed from job samples: a percent that
//! never runs backwards (libvirt's totals grow as the guest dirties memory),
//! throughput and an ETA that is only given when the job converges.

use kvmotion_api::migration::{MigrationProgress, TransferMode};

use super::convergence::JobSample;

/// Builds the progress report of a running job from its latest sample and
/// the previously reported percent.
pub fn report(prev_percent: u8, s: &JobSample, throttle: Option<u8>) -> MigrationProgress {
    let done = s.data_processed;
    let all = s.data_processed.saturating_add(s.data_remaining);
    // 100 is kept for a completed job: a running one shows at most 99.
    let raw = done
        .saturating_mul(100)
        .checked_div(all)
        .map_or(0, |p| p.min(99) as u8);
    let mode = match (s.post_copy_failed, s.post_copy, s.paused) {
        (true, _, _) => TransferMode::PostCopyPaused,
        (false, true, _) => TransferMode::PostCopy,
        (false, false, true) => TransferMode::Paused,
        (false, false, false) => TransferMode::PreCopy,
    };
    // In post-copy or while paused the guest no longer dirties what is left
    // to send; in pre-copy only the rate above the dirty rate drains it.
    let drain = match mode {
        TransferMode::PreCopy => s.throughput.saturating_sub(s.dirty_rate),
        TransferMode::PostCopy | TransferMode::Paused => s.throughput,
        // Nothing moves until the link is back.
        TransferMode::PostCopyPaused => 0,
    };
    let eta_seconds = (drain > 0).then(|| s.data_remaining.div_ceil(drain));
    MigrationProgress {
        percent: raw.max(prev_percent),
        data_total_bytes: s.data_total,
        data_processed_bytes: s.data_processed,
        data_remaining_bytes: s.data_remaining,
        memory_iteration: s.memory_iteration,
        dirty_rate_bytes_per_second: s.dirty_rate,
        throughput_bytes_per_second: s.throughput,
        mode,
        auto_converge_throttle: throttle,
        eta_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn s(processed: u64, remaining: u64, dirty: u64, rate: u64) -> JobSample {
        JobSample {
            data_total: (processed + remaining) * MIB,
            data_processed: processed * MIB,
            data_remaining: remaining * MIB,
            dirty_rate: dirty * MIB,
            throughput: rate * MIB,
            memory_iteration: 1,
            ..Default::default()
        }
    }

    #[test]
    fn progress_reports_follow_the_samples() {
        // (name, previous percent, sample, (percent, eta, mode))
        let cases = [
            (
                "half done, converging",
                0,
                s(128, 128, 20, 100),
                (50, Some(2), TransferMode::PreCopy),
            ),
            (
                "totals grew: percent holds",
                60,
                s(128, 128, 20, 100),
                (60, Some(2), TransferMode::PreCopy),
            ),
            (
                "never 100 while running",
                0,
                s(1000, 1, 0, 100),
                (99, Some(1), TransferMode::PreCopy),
            ),
            (
                "dirtier than the link: no ETA",
                10,
                s(50, 200, 300, 100),
                (20, None, TransferMode::PreCopy),
            ),
            (
                "nothing known yet",
                0,
                s(0, 0, 0, 0),
                (0, None, TransferMode::PreCopy),
            ),
        ];
        for (name, prev, sample, (pct, eta, mode)) in cases {
            let r = report(prev, &sample, None);
            assert_eq!(
                (r.percent, r.eta_seconds, r.mode),
                (pct, eta, mode),
                "{name}"
            );
        }
    }

    #[test]
    fn a_post_copy_that_lost_its_link_reports_no_eta() {
        let sample = JobSample {
            post_copy: false,
            paused: true,
            post_copy_failed: true,
            ..s(50, 200, 0, 100)
        };
        let r = report(30, &sample, None);
        assert_eq!(
            (r.mode, r.eta_seconds),
            (TransferMode::PostCopyPaused, None)
        );
    }

    #[test]
    fn post_copy_drains_at_the_full_rate() {
        let sample = JobSample {
            post_copy: true,
            ..s(50, 200, 300, 100)
        };
        let r = report(0, &sample, Some(30));
        assert_eq!(
            (r.mode, r.eta_seconds, r.auto_converge_throttle),
            (TransferMode::PostCopy, Some(2), Some(30))
        );
    }
}
