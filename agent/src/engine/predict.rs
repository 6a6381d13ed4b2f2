//! The source agent's prediction during a move: the inputs of
//! [`kvmotion_api::predict`]'s model from a running job's first second.

use std::time::Duration;

use kvmotion_api::agent::ResolvedTuning;
use kvmotion_api::tuning::TimeoutAction;

pub use kvmotion_api::predict::{FINISH, Inputs, finish_of, predict};

use super::convergence::{JobSample, Policy};

/// The inputs of a running job's prediction: its latest sample, the
/// guest's measured dirty rate, the policy, when data began to flow
/// (`before_flow` after the job's start), for how long it has, and what
/// the node's moves took after their data (`finish`, [`FINISH`] until
/// measured).
pub fn from_job(
    s: &JobSample,
    dirty_bytes_per_second: u64,
    policy: &Policy,
    t: &ResolvedTuning,
    (before_flow, flowing): (Duration, Duration),
    finish: Option<Duration>,
) -> Inputs {
    // Zero pages are scanned but cost nearly nothing on the wire: the
    // rest of the first pass sends what its scanned part did per byte.
    let scanned = s.data_total.saturating_sub(s.data_remaining);
    let first_pass_remaining = if s.memory_iteration <= 1 && scanned > 0 {
        let per_byte = (s.data_processed as f64 / scanned as f64).min(1.0);
        (s.data_remaining as f64 * per_byte) as u64
    } else {
        s.data_remaining
    };
    let seen = if s.throughput > 0 {
        s.throughput
    } else {
        (s.data_processed as f64 / flowing.as_secs_f64().max(0.001)) as u64
    };
    let cap = u64::from(t.bandwidth_mibps) << 20;
    Inputs {
        memory_bytes: s.memory_total.max(s.data_total),
        first_pass_remaining_bytes: first_pass_remaining,
        sent_bytes: s.data_processed,
        flowing,
        dirty_bytes_per_second,
        link_bytes_per_second: if cap > 0 { seen.min(cap) } else { seen },
        max_downtime: policy.max_downtime,
        setup: before_flow + finish.unwrap_or(FINISH),
        post_copy: policy.post_copy,
        auto_converge: t.auto_converge,
        pause: policy.on_timeout == TimeoutAction::Pause,
        timeouts: policy.progress_timeout.is_some() || policy.completion_timeout_per_gib.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_job_sample_gives_the_first_pass_left_on_the_wire_and_the_capped_link() {
        // A second in: 64 of 256 MiB scanned, 16 MiB of it data.
        let s = JobSample {
            data_total: 256 * MIB,
            data_remaining: 192 * MIB,
            data_processed: 16 * MIB,
            memory_iteration: 1,
            throughput: 120 * MIB,
            memory_total: 256 * MIB,
            ..JobSample::default()
        };
        let t = ResolvedTuning {
            bandwidth_mibps: 100,
            ..ResolvedTuning::default()
        };
        let policy = Policy::from(&t);
        let inp = from_job(
            &s,
            8 * MIB,
            &policy,
            &t,
            (Duration::from_millis(300), Duration::from_secs(1)),
            None,
        );
        assert_eq!(inp.first_pass_remaining_bytes, 48 * MIB);
        assert_eq!(inp.link_bytes_per_second, 100 * MIB);
        assert_eq!(inp.setup, Duration::from_millis(300) + FINISH);
        let measured = from_job(
            &s,
            8 * MIB,
            &policy,
            &t,
            (Duration::from_millis(300), Duration::from_secs(1)),
            Some(Duration::from_millis(700)),
        );
        assert_eq!(
            measured.setup,
            Duration::from_millis(1000),
            "the node's own finish"
        );
        assert_eq!((inp.post_copy, inp.pause), (true, false));
        // Past the first pass, what remains is data; no cap, the job's rate.
        let later = JobSample {
            memory_iteration: 2,
            data_remaining: 10 * MIB,
            ..s
        };
        let free = ResolvedTuning::default();
        let inp = from_job(
            &later,
            8 * MIB,
            &Policy::from(&free),
            &free,
            (Duration::ZERO, Duration::from_secs(1)),
            None,
        );
        assert_eq!(inp.first_pass_remaining_bytes, 10 * MIB);
        assert_eq!(inp.link_bytes_per_second, 120 * MIB);
    }
}
