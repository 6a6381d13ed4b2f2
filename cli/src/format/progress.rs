//! The one-line progress of a migration being followed.

use kvmotion_api::migration::{MigrationProgress, TransferMode};
use kvmotion_api::{Phase, VirtualMachineMigration};

use super::units::{bytes, eta_seconds, seconds};
use super::{phase, phase_label};

/// Phase, then while data moves: percent, bytes, throughput and ETA;
/// before that, the reason of a condition that holds the migration back.
///
/// `Migrating    40%  410.0 MiB of 1.0 GiB  100.0 MiB/s  ETA 7s`
pub fn progress_line(m: &VirtualMachineMigration) -> String {
    // Wide enough for the longest phase, so the figures stay in columns.
    let mut line = format!("{:<11}", phase_label(m));
    let status = m.status.as_ref();
    let moving = matches!(phase(m), Some(Phase::Migrating | Phase::Finalizing));
    match status.and_then(|s| s.progress.as_ref()) {
        // The job's first report, before libvirt knows the size, says nothing.
        Some(p) if moving && p.data_total_bytes > 0 => {
            line.push_str(&format!(" {:>3}%  {}", p.percent, figures(p)));
        }
        _ => {
            // Waiting for capacity, or for a moving VM's inventories to agree.
            let waiting = status
                .into_iter()
                .flat_map(|s| &s.conditions)
                .find(|c| c.status == "False");
            if let Some(c) = waiting.filter(|_| !phase(m).is_some_and(Phase::is_terminal)) {
                line.push_str(&format!(" ({})", c.reason));
            }
        }
    }
    line.trim_end().to_string()
}

/// Bytes moved, throughput, ETA, and the transfer mode and throttle when
/// they are out of the ordinary.
pub fn figures(p: &MigrationProgress) -> String {
    let eta = eta_seconds(p).map_or_else(|| "-".to_string(), seconds);
    let mut out = format!(
        "{} of {}  {}/s  ETA {eta}",
        bytes(p.data_processed_bytes),
        bytes(p.data_total_bytes),
        bytes(p.throughput_bytes_per_second),
    );
    match p.mode {
        TransferMode::PreCopy => {}
        TransferMode::PostCopy => out.push_str("  post-copy"),
        TransferMode::Paused => out.push_str("  paused"),
        TransferMode::PostCopyPaused => out.push_str("  post-copy lost its link"),
    }
    if let Some(t) = p.auto_converge_throttle.filter(|t| *t > 0) {
        out.push_str(&format!("  throttled {t}%"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::*;

    #[test]
    fn the_line_shows_what_is_known_in_each_phase() {
        let post_copy = MigrationProgress {
            mode: TransferMode::PostCopy,
            auto_converge_throttle: Some(30),
            eta_seconds: None,
            ..progress()
        };
        let cases = [
            (migration(None), "Submitted"),
            (migration(Some(Phase::Scheduling)), "Scheduling"),
            (
                with_conditions(
                    migration(Some(Phase::Pending)),
                    &[(
                        "Admitted",
                        "False",
                        "WaitingForCapacity",
                        "perCluster 5 of 5",
                    )],
                ),
                "Pending     (WaitingForCapacity)",
            ),
            (migration(Some(Phase::Migrating)), "Migrating"),
            (
                with_progress(migration(Some(Phase::Migrating)), progress()),
                "Migrating    40%  410.0 MiB of 1.0 GiB  100.0 MiB/s  ETA 7s",
            ),
            (
                with_progress(migration(Some(Phase::Migrating)), post_copy),
                "Migrating    40%  410.0 MiB of 1.0 GiB  100.0 MiB/s  ETA 7s  post-copy  throttled 30%",
            ),
            (
                with_progress(
                    migration(Some(Phase::Migrating)),
                    MigrationProgress {
                        throughput_bytes_per_second: 0,
                        eta_seconds: None,
                        ..progress()
                    },
                ),
                "Migrating    40%  410.0 MiB of 1.0 GiB  0 B/s  ETA -",
            ),
            (
                with_progress(migration(Some(Phase::Migrating)), Default::default()),
                "Migrating",
            ),
            (
                // Progress is only shown while data moves.
                with_progress(migration(Some(Phase::Preparing)), progress()),
                "Preparing",
            ),
            (
                with_conditions(
                    migration(Some(Phase::Failed)),
                    &[("Completed", "False", "VMNotFound", "no such VM")],
                ),
                "Failed",
            ),
        ];
        for (m, want) in cases {
            assert_eq!(progress_line(&m), want);
        }
    }
}
