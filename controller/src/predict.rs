//! Predict, then move: from the guest's measured dirty rate and the link's
//! rate, how plain pre-copy would go (passes, duration, downtime) and which
//! strategy the policy allows that converges soonest. Pure: the rates are
//! measured at the edges and passed in.

use std::time::Duration;

/// What the prediction is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// The guest's memory.
    pub memory_bytes: u64,
    /// Memory holding data, which the first pass must send (the rest are
    /// zero pages, nearly free); at most `memory_bytes`.
    pub resident_bytes: u64,
    /// How fast the guest dirties memory, measured before the move.
    pub dirty_bytes_per_second: u64,
    /// How fast the link moves data (the bandwidth cap, or what earlier
    /// moves between the two nodes achieved, whichever is lower).
    pub link_bytes_per_second: u64,
    /// The downtime the policy allows for the final pass.
    pub max_downtime: Duration,
    /// Time outside the transfer: connecting, starting the target,
    /// finishing (from earlier moves, or a default).
    pub setup: Duration,
    /// The policy allows post-copy.
    pub post_copy: bool,
    /// The policy allows auto-converge.
    pub auto_converge: bool,
}

/// How the move is to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Pre-copy converges by itself.
    PreCopy,
    /// Pre-copy cannot converge: switch to post-copy as soon as the job
    /// runs, instead of sending a first pass only to send it again.
    PostCopyAtOnce,
    /// Pre-copy cannot converge and post-copy is not allowed: throttle the
    /// guest's CPUs until it does.
    AutoConverge,
    /// Nothing the policy allows converges.
    Refuse,
}

impl Strategy {
    /// Its name in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::PreCopy => "PreCopy",
            Strategy::PostCopyAtOnce => "PostCopyAtOnce",
            Strategy::AutoConverge => "AutoConverge",
            Strategy::Refuse => "Refuse",
        }
    }
}

/// How plain pre-copy would go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PreCopy {
    /// It converges after `passes` passes.
    Converges {
        /// Memory passes, the last one sent with the guest paused.
        passes: u32,
        /// From start to the guest running on the target.
        duration: Duration,
        /// The final pass, guest paused.
        downtime: Duration,
    },
    /// The dirty memory left after each pass does not shrink enough.
    Diverges,
}

/// The prediction and the choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Plain pre-copy, whatever the choice.
    pub pre_copy: PreCopy,
    /// What to do.
    pub strategy: Strategy,
    /// The chosen strategy's duration (none when refused).
    pub duration: Option<Duration>,
    /// The chosen strategy's downtime (none when refused).
    pub downtime: Option<Duration>,
    /// Why, for a person.
    pub reason: String,
}

/// Passes after which pre-copy is taken not to converge (libvirt keeps
/// going; the convergence policy would act long before).
const MAX_PASSES: u32 = 30;

/// A pass that leaves more than this share of what it sent dirty again
/// makes too little headway to count on.
const MIN_SHRINK: f64 = 0.9;

/// The guest's CPU state and devices, sent while it is paused whatever the
/// strategy.
const SWITCHOVER: Duration = Duration::from_millis(20);

/// auto-converge's first throttle and its step per pass (QEMU's defaults).
const THROTTLE_INITIAL: f64 = 0.2;
const THROTTLE_STEP: f64 = 0.1;
const THROTTLE_MAX: f64 = 0.99;

/// Simulates pre-copy with the guest's dirty rate scaled by `throttle(pass)`.
fn simulate(inp: &Inputs, throttle: impl Fn(u32) -> f64) -> PreCopy {
    let link = inp.link_bytes_per_second.max(1) as f64;
    let dirty = inp.dirty_bytes_per_second as f64;
    let budget = inp.max_downtime.as_secs_f64() * link;
    let cap = inp.memory_bytes as f64;
    let mut send = inp.resident_bytes.min(inp.memory_bytes) as f64;
    let mut elapsed = inp.setup.as_secs_f64();
    for pass in 1..=MAX_PASSES {
        let took = send / link;
        elapsed += took;
        let dirtied = (dirty * (1.0 - throttle(pass)) * took).min(cap);
        if dirtied <= budget {
            let downtime = Duration::from_secs_f64(dirtied / link) + SWITCHOVER;
            return PreCopy::Converges {
                passes: pass + 1,
                duration: Duration::from_secs_f64(elapsed) + downtime,
                downtime,
            };
        }
        // Not shrinking, and no more throttle to come: it never will.
        if pass > 1 && dirtied > send * MIN_SHRINK && throttle(pass + 1) <= throttle(pass) {
            return PreCopy::Diverges;
        }
        send = dirtied;
    }
    PreCopy::Diverges
}

/// The throttle auto-converge applies in `pass` (from the second pass on).
fn auto_converge_throttle(pass: u32) -> f64 {
    if pass < 2 {
        return 0.0;
    }
    (THROTTLE_INITIAL + THROTTLE_STEP * (pass - 2) as f64).min(THROTTLE_MAX)
}

/// Predicts plain pre-copy and chooses the strategy within the policy.
pub fn predict(inp: &Inputs) -> Prediction {
    let pre_copy = simulate(inp, |_| 0.0);
    let link = inp.link_bytes_per_second.max(1) as f64;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let rates = format!(
        "the guest dirties {:.0} MiB/s and the link moves {:.0} MiB/s",
        mib(inp.dirty_bytes_per_second),
        mib(inp.link_bytes_per_second)
    );
    if let PreCopy::Converges {
        passes,
        duration,
        downtime,
    } = pre_copy
    {
        return Prediction {
            pre_copy,
            strategy: Strategy::PreCopy,
            duration: Some(duration),
            downtime: Some(downtime),
            reason: format!("{rates}: pre-copy converges in {passes} passes"),
        };
    }
    if inp.post_copy {
        // One pass of what holds data; pages the guest touches meanwhile
        // are fetched on demand, so the guest pauses only to switch over.
        let transfer = inp.resident_bytes.min(inp.memory_bytes) as f64 / link;
        return Prediction {
            pre_copy,
            strategy: Strategy::PostCopyAtOnce,
            duration: Some(inp.setup + Duration::from_secs_f64(transfer) + SWITCHOVER),
            downtime: Some(SWITCHOVER),
            reason: format!("{rates}: pre-copy cannot converge, so post-copy starts at once"),
        };
    }
    if inp.auto_converge
        && let PreCopy::Converges {
            passes,
            duration,
            downtime,
        } = simulate(inp, auto_converge_throttle)
    {
        return Prediction {
            pre_copy,
            strategy: Strategy::AutoConverge,
            duration: Some(duration),
            downtime: Some(downtime),
            reason: format!(
                "{rates}: pre-copy cannot converge and post-copy is not allowed; throttling the guest converges in {passes} passes"
            ),
        };
    }
    Prediction {
        pre_copy,
        strategy: Strategy::Refuse,
        duration: None,
        downtime: None,
        reason: format!(
            "{rates}: pre-copy cannot converge and the policy allows {}; allow post-copy, raise the bandwidth or maxDowntimeMs, or move the VM offline",
            if inp.auto_converge {
                "no post-copy, and throttling the guest does not make it converge either"
            } else {
                "neither post-copy nor auto-converge"
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn inputs() -> Inputs {
        Inputs {
            memory_bytes: 256 * MIB,
            resident_bytes: 32 * MIB,
            dirty_bytes_per_second: 4 * MIB,
            link_bytes_per_second: 100 * MIB,
            max_downtime: Duration::from_millis(300),
            setup: Duration::from_millis(1500),
            post_copy: true,
            auto_converge: false,
        }
    }

    fn secs(d: Option<Duration>) -> f64 {
        d.map_or(f64::NAN, |d| d.as_secs_f64())
    }

    #[test]
    fn the_strategy_follows_the_rates_and_the_policy() {
        // (case, inputs, strategy, duration range in s)
        let hot = Inputs {
            resident_bytes: 160 * MIB,
            dirty_bytes_per_second: 400 * MIB,
            ..inputs()
        };
        let cases: Vec<(&str, Inputs, Strategy, (f64, f64))> = vec![
            (
                "an idle guest: pre-copy",
                inputs(),
                Strategy::PreCopy,
                (1.8, 2.0),
            ),
            (
                "a hot guest with post-copy allowed: post-copy at once",
                hot.clone(),
                Strategy::PostCopyAtOnce,
                (3.1, 3.2),
            ),
            (
                "hot, no post-copy, auto-converge allowed: throttled",
                Inputs {
                    dirty_bytes_per_second: 150 * MIB,
                    post_copy: false,
                    auto_converge: true,
                    ..hot.clone()
                },
                Strategy::AutoConverge,
                (12.0, 20.0),
            ),
            (
                "hot, neither allowed: refused",
                Inputs {
                    post_copy: false,
                    ..hot.clone()
                },
                Strategy::Refuse,
                (f64::NAN, f64::NAN),
            ),
            (
                "a guest dirtying nearly the link's rate: pre-copy converges, slowly",
                Inputs {
                    resident_bytes: 128 * MIB,
                    dirty_bytes_per_second: 60 * MIB,
                    ..inputs()
                },
                Strategy::PreCopy,
                (3.5, 5.0),
            ),
        ];
        for (case, inp, strategy, (lo, hi)) in cases {
            let p = predict(&inp);
            assert_eq!(p.strategy, strategy, "{case}: {p:?}");
            let d = secs(p.duration);
            if lo.is_nan() {
                assert!(d.is_nan() && p.downtime.is_none(), "{case}: {p:?}");
            } else {
                assert!(
                    (lo..=hi).contains(&d),
                    "{case}: {d} s not in {lo}..{hi}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn converging_pre_copy_counts_its_passes_and_keeps_downtime_within_the_policy() {
        let p = predict(&inputs());
        let PreCopy::Converges {
            passes, downtime, ..
        } = p.pre_copy
        else {
            panic!("{p:?}")
        };
        // 32 MiB in 0.32 s; 1.3 MiB dirtied meanwhile fits the 300 ms budget.
        assert_eq!(passes, 2);
        assert!(downtime <= Duration::from_millis(300) + SWITCHOVER, "{p:?}");
        assert!(p.reason.contains("converges in 2 passes"), "{}", p.reason);
    }

    #[test]
    fn a_guest_dirtying_faster_than_the_link_never_converges_by_pre_copy() {
        for dirty in [100, 101, 200, 10_000] {
            let inp = Inputs {
                resident_bytes: 128 * MIB,
                dirty_bytes_per_second: dirty * MIB,
                ..inputs()
            };
            assert_eq!(simulate(&inp, |_| 0.0), PreCopy::Diverges, "{dirty} MiB/s");
        }
    }

    #[test]
    fn a_refusal_says_what_to_change() {
        let p = predict(&Inputs {
            resident_bytes: 160 * MIB,
            dirty_bytes_per_second: 400 * MIB,
            post_copy: false,
            ..inputs()
        });
        assert_eq!(p.strategy, Strategy::Refuse);
        assert!(
            p.reason.contains("400 MiB/s") && p.reason.contains("100 MiB/s"),
            "{}",
            p.reason
        );
        assert!(p.reason.contains("allow post-copy"), "{}", p.reason);
    }

    #[test]
    fn nothing_panics_on_extreme_rates() {
        for link in [0, 1, u64::MAX / 2] {
            for dirty in [0, 1, u64::MAX / 2] {
                let inp = Inputs {
                    link_bytes_per_second: link,
                    dirty_bytes_per_second: dirty,
                    ..inputs()
                };
                let _ = predict(&inp);
            }
        }
    }
}
