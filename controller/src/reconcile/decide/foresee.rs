//! The prediction made in Prechecking, before the move: from the dirty rate
//! the source agent last sampled and the link's rate, how plain pre-copy
//! would go and which strategy the policy allows (`kvmotion_api::predict`).
//! A move nothing can converge is refused before anything is touched, and
//! the chosen strategy is in status, and in the start request, from the
//! move's first byte.

use std::time::Duration;

use jiff::Timestamp;
use kvmotion_api::MigrationMode;
use kvmotion_api::agent::ResolvedTuning;
use kvmotion_api::hypervisor::{DomainInfo, DomainState};
use kvmotion_api::migration::MigrationPrediction;
use kvmotion_api::predict::{Inputs, Overheads, predict};

use super::elapsed;

/// How old a sample may be and still predict from: a few of the agent's
/// sampling rounds (30 s by default) and Hypervisor resyncs (60 s).
pub const SAMPLE_MAX_AGE: Duration = Duration::from_secs(300);

/// The prediction before the move, when there is what to make it from: a
/// live move of a running guest, a sample of its dirty rate no older than
/// [`SAMPLE_MAX_AGE`], and a known link rate (the policy's bandwidth cap).
/// `overheads` are what the source node's moves cost besides their data.
/// None leaves the prediction to the source agent, a second into the move.
pub fn before_move(
    mode: MigrationMode,
    domain: &DomainInfo,
    overheads: Overheads,
    tuning: &ResolvedTuning,
    now: Timestamp,
) -> Option<MigrationPrediction> {
    match mode {
        MigrationMode::Live => {}
        MigrationMode::Offline => return None,
    }
    if domain.state != DomainState::Running {
        return None;
    }
    let sample = domain.dirty_rate.as_ref()?;
    if elapsed(sample.measured_at.0, now) > SAMPLE_MAX_AGE {
        return None;
    }
    let link = u64::from(tuning.bandwidth_mibps) << 20;
    if link == 0 {
        return None;
    }
    let inp = Inputs::before_move(
        domain.memory_bytes,
        sample.resident_bytes,
        sample.bytes_per_second,
        link,
        overheads,
        tuning,
    );
    let mut report = predict(&inp).report(&inp, Duration::ZERO);
    report.before_move = true;
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kvmotion_api::hypervisor::GuestDirtyRate;
    use kvmotion_api::migration::Strategy;

    const MIB: u64 = 1 << 20;

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    /// A running 256 MiB guest sampled `age_s` ago dirtying `mib_s` MiB/s.
    fn guest(mib_s: u64, age_s: i64) -> DomainInfo {
        DomainInfo {
            name: "web".into(),
            state: DomainState::Running,
            memory_bytes: 256 * MIB,
            dirty_rate: Some(GuestDirtyRate {
                bytes_per_second: mib_s * MIB,
                resident_bytes: 200 * MIB,
                measured_at: Time(Timestamp::from_second(1_000_000 - age_s).unwrap()),
            }),
            ..DomainInfo::default()
        }
    }

    fn capped(mibps: u32, post_copy: bool) -> ResolvedTuning {
        ResolvedTuning {
            bandwidth_mibps: mibps,
            post_copy,
            progress_timeout_seconds: 150,
            ..ResolvedTuning::default()
        }
    }

    #[test]
    fn a_move_is_predicted_before_it_starts_only_from_a_fresh_sample_and_a_known_link() {
        let live = MigrationMode::Live;
        let mut paused = guest(2, 10);
        paused.state = DomainState::Paused;
        let mut unsampled = guest(2, 10);
        unsampled.dirty_rate = None;
        // (case, mode, domain, tuning, strategy predicted)
        let cases = [
            (
                "idle, capped",
                live,
                guest(2, 10),
                capped(100, true),
                Some(Strategy::PreCopy),
            ),
            (
                "hot, capped, post-copy allowed",
                live,
                guest(150, 10),
                capped(100, true),
                Some(Strategy::PostCopyAtOnce),
            ),
            (
                "hot, capped, nothing else allowed",
                live,
                guest(150, 10),
                capped(100, false),
                Some(Strategy::Refuse),
            ),
            (
                "the sample just fresh enough",
                live,
                guest(2, 300),
                capped(100, true),
                Some(Strategy::PreCopy),
            ),
            (
                "the sample too old",
                live,
                guest(2, 301),
                capped(100, true),
                None,
            ),
            ("no sample", live, unsampled, capped(100, true), None),
            (
                "no cap: the link's rate unknown",
                live,
                guest(2, 10),
                capped(0, true),
                None,
            ),
            (
                "offline",
                MigrationMode::Offline,
                guest(2, 10),
                capped(100, true),
                None,
            ),
            ("paused guest", live, paused, capped(100, true), None),
        ];
        for (case, mode, domain, tuning, want) in cases {
            let got = before_move(mode, &domain, Overheads::default(), &tuning, now());
            assert_eq!(got.as_ref().map(|p| p.strategy), want, "{case}");
            if let Some(p) = got {
                assert!(p.before_move, "{case}");
                assert_eq!(p.made_after_ms, 0, "{case}");
                assert_eq!(
                    p.link_bytes_per_second,
                    u64::from(tuning.bandwidth_mibps) * MIB,
                    "{case}"
                );
            }
        }
    }
}
