//! Everything the plugin prints, as pure functions of the objects read and
//! of the time (passed in, so the output is testable).

pub mod describe;
pub mod evacuation;
pub mod progress;
pub mod summary;
pub mod table;
pub mod units;

#[cfg(test)]
pub(crate) mod fixture;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kvmotion_api::{Phase, VirtualMachineMigration};

/// The condition of `type_`, if the status has one.
pub fn condition<'a>(m: &'a VirtualMachineMigration, type_: &str) -> Option<&'a Condition> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The phase, if the controller has written one.
pub fn phase(m: &VirtualMachineMigration) -> Option<Phase> {
    m.status.as_ref().and_then(|s| s.phase)
}

/// The phase as a person should read it: a migration being deleted before
/// it ended is being cancelled, whatever phase it is still in.
pub fn phase_label(m: &VirtualMachineMigration) -> &'static str {
    let phase = phase(m);
    if m.metadata.deletion_timestamp.is_some() && !phase.is_some_and(Phase::is_terminal) {
        return "Cancelling";
    }
    // No status yet: the controller has not picked it up.
    phase.map_or("Submitted", Phase::as_str)
}

/// The VM's name: as scheduled, else as asked for (name, else uuid).
pub fn vm_name(m: &VirtualMachineMigration) -> &str {
    m.status
        .as_ref()
        .and_then(|s| s.vm.as_ref())
        .map(|v| v.name.as_str())
        .or(m.spec.vm.name.as_deref())
        .or(m.spec.vm.uuid.as_deref())
        .unwrap_or("-")
}

/// The source node: where the VM was found, else as asked for.
pub fn source_node(m: &VirtualMachineMigration) -> Option<&str> {
    m.status
        .as_ref()
        .and_then(|s| s.source_node.as_deref())
        .or(m.spec.source_node.as_deref())
}

/// The target node: given or chosen, else as asked for.
pub fn target_node(m: &VirtualMachineMigration) -> Option<&str> {
    m.status
        .as_ref()
        .and_then(|s| s.target_node.as_deref())
        .or(m.spec.target_node.as_deref())
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn the_phase_label_says_submitted_before_the_controller_and_cancelling_while_deleted() {
        let deleting = |mut m: VirtualMachineMigration| {
            m.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
            m
        };
        let cases = [
            (migration(None), "Submitted"),
            (migration(Some(Phase::Migrating)), "Migrating"),
            (deleting(migration(Some(Phase::Migrating))), "Cancelling"),
            (deleting(migration(None)), "Cancelling"),
            (deleting(migration(Some(Phase::Succeeded))), "Succeeded"),
        ];
        for (m, want) in cases {
            assert_eq!(phase_label(&m), want);
        }
    }

    #[test]
    fn nodes_and_vm_come_from_status_else_from_the_spec() {
        let fresh = migration(None);
        assert_eq!(
            (vm_name(&fresh), source_node(&fresh), target_node(&fresh)),
            ("web-1", None, Some("node-b"))
        );
        let scheduled = migration(Some(Phase::Preparing));
        assert_eq!(
            (vm_name(&scheduled), source_node(&scheduled)),
            ("web-1", Some("node-a"))
        );
    }
}
