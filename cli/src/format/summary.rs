//! How a followed migration ended: the result of a success, the reason of
//! a failure or cancellation.

use kvmotion_api::{Phase, VirtualMachineMigration};

use super::units::{bytes, millis};
use super::{condition, phase, target_node, vm_name};

/// The figures of a finished move: job duration (and start to completion
/// when both are known), guest downtime, bytes sent. None without a result.
///
/// `duration 11.4 s (12s start to completion), downtime 45 ms, 300.0 MiB transferred`
pub fn result_line(m: &VirtualMachineMigration) -> Option<String> {
    let status = m.status.as_ref()?;
    let r = status.result.as_ref()?;
    let span = match (&status.start_time, &status.completion_time) {
        (Some(start), Some(end)) => {
            let ms = end.0.as_millisecond() - start.0.as_millisecond();
            u64::try_from(ms)
                .map(|ms| format!(" ({} start to completion)", millis(ms)))
                .unwrap_or_default()
        }
        _ => String::new(),
    };
    Some(format!(
        "duration {}{span}, downtime {}, {} transferred",
        millis(r.duration_ms),
        millis(r.downtime_ms),
        bytes(r.data_transferred_bytes)
    ))
}

/// The strategy predicted and chosen (by the controller before the move,
/// or by the source agent during it), with its figures and why. None
/// before it is made (or for a move without one).
///
/// `PostCopyAtOnce before the move: predicted 3.0 s, downtime 20 ms (the guest dirties …)`
pub fn prediction_line(m: &VirtualMachineMigration) -> Option<String> {
    let p = m.status.as_ref()?.prediction.as_ref()?;
    let figures = match (p.duration_ms, p.downtime_ms) {
        (Some(d), Some(down)) => format!(": predicted {}, downtime {}", millis(d), millis(down)),
        (Some(d), None) => format!(": predicted {}", millis(d)),
        (None, Some(down)) => format!(": downtime {}", millis(down)),
        (None, None) => String::new(),
    };
    let when = if p.before_move {
        " before the move"
    } else {
        ""
    };
    Some(format!(
        "{}{when}{figures} ({})",
        p.strategy.as_str(),
        p.reason
    ))
}

/// What to print when a followed migration reached a terminal phase.
pub fn outcome(m: &VirtualMachineMigration) -> String {
    let completed = condition(m, "Completed");
    let mut lines = Vec::new();
    match phase(m) {
        Some(Phase::Succeeded) => {
            let target = target_node(m).unwrap_or("the target");
            let how = match (completed.map(|c| c.reason.as_str()), super::source_node(m)) {
                (Some("AlreadyOnTarget"), _) => " (it already ran there)".to_string(),
                (_, Some(source)) => format!(" (moved from {source})"),
                _ => String::new(),
            };
            lines.push(format!("Succeeded: {} runs on {target}{how}", vm_name(m)));
            if let Some(r) = result_line(m) {
                lines.push(format!("Result: {r}"));
            }
            if let Some(p) = prediction_line(m) {
                lines.push(format!("Predicted: {p}"));
            }
        }
        Some(p @ (Phase::Failed | Phase::Cancelled)) => {
            // Completed carries the failing step's reason; any False
            // condition explains a status written before it was set.
            let why = completed.or_else(|| {
                m.status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.status == "False")
            });
            lines.push(match why {
                // "Cancelled: Cancelled: …" would say the same thing twice.
                Some(c) if c.reason == p.as_str() => format!("{p}: {}", c.message),
                Some(c) => format!("{p}: {}: {}", c.reason, c.message),
                None => format!("{p}"),
            });
            // Where the VM is now, once the controller has checked.
            if let Some(c) = condition(m, "Settled") {
                lines.push(format!("Settled: {}: {}", c.reason, c.message));
            }
        }
        other => lines.push(other.map_or("Submitted", Phase::as_str).to_string()),
    }
    lines.join("\n")
}

/// What to print when a followed migration was deleted; `last` is its
/// final state when the watch saw it.
pub fn gone(name: &str, last: Option<&VirtualMachineMigration>) -> String {
    match last {
        Some(m) if phase(m).is_some_and(Phase::is_terminal) => outcome(m),
        _ => format!("Cancelled: {name} was deleted before it ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::*;

    #[test]
    fn every_ending_reads_with_its_reason_or_figures() {
        let mut already = succeeded();
        if let Some(s) = already.status.as_mut() {
            s.result = None;
            s.conditions = vec![cond(
                "Completed",
                "True",
                "AlreadyOnTarget",
                "the VM already ran on node-b",
            )];
        }
        let mut no_times = succeeded();
        if let Some(s) = no_times.status.as_mut() {
            s.start_time = None;
        }
        let mut predicted = succeeded();
        if let Some(s) = predicted.status.as_mut() {
            s.prediction = Some(prediction());
        }
        let mut foreseen = succeeded();
        if let Some(s) = foreseen.status.as_mut() {
            s.prediction = Some(kvmotion_api::migration::MigrationPrediction {
                before_move: true,
                made_after_ms: 0,
                ..prediction()
            });
        }
        let cases = [
            (
                succeeded(),
                "Succeeded: web-1 runs on node-b (moved from node-a)\n\
                 Result: duration 11.4 s (12.0 s start to completion), downtime 45 ms, 300.0 MiB transferred",
            ),
            (
                foreseen,
                "Succeeded: web-1 runs on node-b (moved from node-a)\n\
                 Result: duration 11.4 s (12.0 s start to completion), downtime 45 ms, 300.0 MiB transferred\n\
                 Predicted: PostCopyAtOnce before the move: predicted 11.0 s, downtime 20 ms (the guest dirties 128 MiB/s and the link moves 25 MiB/s: pre-copy cannot converge, so post-copy starts at once)",
            ),
            (
                already,
                "Succeeded: web-1 runs on node-b (it already ran there)",
            ),
            (
                predicted,
                "Succeeded: web-1 runs on node-b (moved from node-a)\n\
                 Result: duration 11.4 s (12.0 s start to completion), downtime 45 ms, 300.0 MiB transferred\n\
                 Predicted: PostCopyAtOnce: predicted 11.0 s, downtime 20 ms (the guest dirties 128 MiB/s and the link moves 25 MiB/s: pre-copy cannot converge, so post-copy starts at once)",
            ),
            (
                no_times,
                "Succeeded: web-1 runs on node-b (moved from node-a)\n\
                 Result: duration 11.4 s, downtime 45 ms, 300.0 MiB transferred",
            ),
            (
                with_conditions(
                    migration(Some(Phase::Failed)),
                    &[
                        (
                            "Scheduled",
                            "False",
                            "TargetNotFound",
                            "spec.targetNode x has no Hypervisor object",
                        ),
                        (
                            "Completed",
                            "False",
                            "TargetNotFound",
                            "spec.targetNode x has no Hypervisor object",
                        ),
                    ],
                ),
                "Failed: TargetNotFound: spec.targetNode x has no Hypervisor object",
            ),
            (
                with_conditions(
                    migration(Some(Phase::Failed)),
                    &[("Prechecked", "False", "VMNotRunning", "web-1 is shut off")],
                ),
                "Failed: VMNotRunning: web-1 is shut off",
            ),
            (
                with_conditions(
                    migration(Some(Phase::Cancelled)),
                    &[
                        (
                            "Completed",
                            "False",
                            "Cancelled",
                            "deleted while Migrating; the job was aborted",
                        ),
                        ("Settled", "True", "VMLocated", "the VM runs on node-a"),
                    ],
                ),
                "Cancelled: deleted while Migrating; the job was aborted\n\
                 Settled: VMLocated: the VM runs on node-a",
            ),
            (migration(Some(Phase::Failed)), "Failed"),
        ];
        for (m, want) in cases {
            assert_eq!(outcome(&m), want);
        }
    }

    #[test]
    fn a_deleted_migration_reads_as_cancelled_unless_it_had_ended() {
        assert_eq!(
            gone("m1", None),
            "Cancelled: m1 was deleted before it ended"
        );
        assert_eq!(
            gone("m1", Some(&migration(Some(Phase::Migrating)))),
            "Cancelled: m1 was deleted before it ended"
        );
        assert!(gone("m1", Some(&succeeded())).starts_with("Succeeded: web-1"));
    }
}
