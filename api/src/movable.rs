//! Which domain states each migration mode can move, and how: the one table
//! the controller's precheck and the agent's start both read.

use crate::hypervisor::DomainState;
use crate::migration::MigrationMode;

/// How a domain in a given state travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Move {
    /// Live, the guest running throughout: pre-copy, the downtime ramp,
    /// post-copy when the policy allows it.
    LiveRunning,
    /// Live, a paused guest: its memory does not change, so plain pre-copy
    /// moves it; no post-copy (libvirt refuses it for a paused domain) and
    /// no downtime ramp. It arrives paused.
    LivePaused,
    /// Offline, a guest with memory: stopped for the move and restored on
    /// the target in the state it had (running, or paused).
    OfflineWithMemory {
        /// The guest was paused before the move and stays paused.
        paused: bool,
    },
    /// Offline, a defined shut-off domain: its definition (and copied
    /// disks) move, nothing runs.
    OfflineDefinition,
}

/// Why a domain cannot be moved in the asked mode, for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotMovable {
    /// What the mode needs and what to do instead.
    pub needed: &'static str,
}

/// How `mode` moves a domain in `state`; `persistent` says whether it is
/// defined (survives a shut-off). Every state is listed: the table the
/// "Domain states" section of docs/agent.md shows.
pub fn how(mode: MigrationMode, state: DomainState, persistent: bool) -> Result<Move, NotMovable> {
    use DomainState as S;
    let refuse = |needed| Err(NotMovable { needed });
    match (mode, state) {
        (MigrationMode::Live, S::Running | S::Blocked) => Ok(Move::LiveRunning),
        (MigrationMode::Live, S::Paused) => Ok(Move::LivePaused),
        (MigrationMode::Live, S::ShutOff) => refuse(
            "a live migration needs a running or paused domain; use mode Offline for a shut-off one",
        ),
        (MigrationMode::Offline, S::Running | S::Blocked) => {
            Ok(Move::OfflineWithMemory { paused: false })
        }
        (MigrationMode::Offline, S::Paused) => Ok(Move::OfflineWithMemory { paused: true }),
        (MigrationMode::Offline, S::ShutOff) if persistent => Ok(Move::OfflineDefinition),
        (MigrationMode::Offline, S::ShutOff) => {
            refuse("a shut-off domain must be defined (persistent) to move")
        }
        (_, S::ShuttingDown) => refuse(
            "the guest is shutting down; wait until it is shut off, then move it with mode Offline",
        ),
        (_, S::Crashed) => refuse("the guest crashed; destroy or restart it first"),
        (_, S::Suspended) => {
            refuse("the guest is suspended to memory by its power management; wake it first")
        }
        (_, S::Unknown) => refuse("libvirt reports no state for the domain; check it with virsh"),
    }
}

/// A state the domain leaves by itself within seconds (a shutdown under
/// way, or the instant of a destroy): worth waiting for before refusing.
pub fn settling(state: DomainState) -> bool {
    use DomainState as S;
    match state {
        S::ShuttingDown => true,
        S::Running
        | S::Blocked
        | S::Paused
        | S::ShutOff
        | S::Crashed
        | S::Suspended
        | S::Unknown => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_takes_exactly_the_states_in_the_table() {
        use DomainState::*;
        use MigrationMode::*;
        let cases = [
            (Live, Running, true, Some(Move::LiveRunning)),
            (Live, Blocked, false, Some(Move::LiveRunning)),
            (Live, Paused, true, Some(Move::LivePaused)),
            (Live, ShutOff, true, None),
            (Live, ShuttingDown, true, None),
            (Live, Crashed, true, None),
            (Live, Suspended, true, None),
            (Live, Unknown, true, None),
            (
                Offline,
                Running,
                true,
                Some(Move::OfflineWithMemory { paused: false }),
            ),
            (
                Offline,
                Paused,
                false,
                Some(Move::OfflineWithMemory { paused: true }),
            ),
            (Offline, ShutOff, true, Some(Move::OfflineDefinition)),
            (Offline, ShutOff, false, None),
            (Offline, Crashed, true, None),
            (Offline, ShuttingDown, true, None),
        ];
        for (mode, state, persistent, want) in cases {
            assert_eq!(
                how(mode, state, persistent).ok(),
                want,
                "{mode:?} {state:?} persistent={persistent}"
            );
        }
    }

    #[test]
    fn only_a_shutdown_under_way_is_waited_for() {
        let settling: Vec<DomainState> = DomainState::ALL
            .iter()
            .copied()
            .filter(|s| settling(*s))
            .collect();
        assert_eq!(settling, vec![DomainState::ShuttingDown]);
    }

    #[test]
    fn a_refusal_says_what_to_do() {
        let r = how(MigrationMode::Live, DomainState::ShutOff, true).unwrap_err();
        assert!(r.needed.contains("mode Offline"), "{}", r.needed);
    }
}
