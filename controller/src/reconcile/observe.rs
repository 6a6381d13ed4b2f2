//! Observe: turn the stored object into what `decide` needs, catching any
//! spec the controller cannot act on instead of failing on it.

use jiff::Timestamp;
use kube::api::DynamicObject;
use kvmotion_api::agent::{DomainPresence, JobStatus};
use kvmotion_api::hypervisor::DomainInfo;
use kvmotion_api::{VirtualMachineMigrationSpec, VirtualMachineMigrationStatus};
use tracing::warn;

use super::selector;
use super::world::World;

/// A migration as the controller sees it, with the world around it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Object name.
    pub name: String,
    /// Object UID: the migration id the agents know it by.
    pub uid: String,
    /// Creation time.
    pub created: Timestamp,
    /// Created by a NodeEvacuation (queued first).
    pub evacuation: bool,
    /// Set once deletion was requested.
    pub deleting_since: Option<Timestamp>,
    /// `metadata.generation`.
    pub generation: i64,
    /// The spec, or why it cannot be acted on.
    pub spec: Result<VirtualMachineMigrationSpec, SpecProblem>,
    /// `metadata.resourceVersion`: status writes are conditional on it.
    pub resource_version: String,
    /// Current status (empty when none was written yet, or unreadable).
    pub status: VirtualMachineMigrationStatus,
    /// Why the stored status cannot be read. The controller then acts on
    /// nothing and writes nothing: the status is the record of what the
    /// agents were asked, and a reset would start the migration again.
    pub status_problem: Option<String>,
    /// Inventories, policies, heartbeats and other migrations.
    pub world: World,
    /// What the agents said, for the phases that ask them.
    pub reading: Reading,
    /// When this controller last wrote the migration's progress.
    pub last_progress_write: Option<Timestamp>,
}

/// What the agents were asked while observing.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// Nothing (the phase does not ask).
    Nothing,
    /// The source agent's job.
    Job(Result<JobStatus, AgentFailure>),
    /// The source agent has no record of the job: where the VM is there,
    /// and whether libvirt runs a job on it.
    Unrecorded(Result<DomainPresence, AgentFailure>),
    /// Where the VM is: the source's and the target's answer.
    Presence {
        /// The source node's answer.
        source: Result<Option<DomainInfo>, AgentFailure>,
        /// The target node's answer.
        target: Result<Option<DomainInfo>, AgentFailure>,
    },
}

/// A call to an agent that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFailure {
    /// The agent's node.
    pub node: String,
    /// True when asking again may help: no answer, no answer in time, or
    /// a 5xx (the agent could not check the token, libvirtd blinked). Only
    /// a 4xx is the agent's considered refusal.
    pub transient: bool,
    /// The agent's reason when it refused (e.g. "UnknownMigration").
    pub reason: Option<String>,
    /// What happened.
    pub message: String,
}

impl AgentFailure {
    /// Describes a client error from `node`.
    pub fn from_client(node: &str, e: &kvmotion_api::client::Error) -> AgentFailure {
        AgentFailure {
            node: node.to_string(),
            transient: !e.is_refusal(),
            reason: e.reason().map(str::to_string),
            message: kvmotion_api::error_chain(e),
        }
    }
}

/// Why a spec that passed admission still cannot be acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// Message for a person: names the field and what is wrong.
    pub message: String,
}

/// Reads a stored migration.
pub fn observe(obj: &DynamicObject) -> Observed {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = parse_spec(obj.data.get("spec"));
    let (status, status_problem) = match obj.data.get("status") {
        None | Some(serde_json::Value::Null) => (VirtualMachineMigrationStatus::default(), None),
        Some(raw) => match serde_json::from_value(raw.clone()) {
            Ok(s) => (s, None),
            Err(e) => {
                warn!(migration = %name, error = %e, "unreadable status; leaving it as it is");
                (
                    VirtualMachineMigrationStatus::default(),
                    Some(e.to_string()),
                )
            }
        },
    };
    Observed {
        name,
        uid: obj.metadata.uid.clone().unwrap_or_default(),
        created: super::world::created(&obj.metadata),
        evacuation: super::world::from_evacuation(&obj.metadata),
        deleting_since: obj.metadata.deletion_timestamp.as_ref().map(|t| t.0),
        generation: obj.metadata.generation.unwrap_or(0),
        spec,
        resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
        status,
        status_problem,
        world: World::default(),
        reading: Reading::Nothing,
        last_progress_write: None,
    }
}

fn parse_spec(raw: Option<&serde_json::Value>) -> Result<VirtualMachineMigrationSpec, SpecProblem> {
    let raw = raw.ok_or_else(|| SpecProblem {
        message: "spec is missing".into(),
    })?;
    let spec: VirtualMachineMigrationSpec =
        serde_json::from_value(raw.clone()).map_err(|e| SpecProblem {
            message: format!("spec cannot be read: {e}"),
        })?;
    if let Some(sel) = &spec.target_selector {
        selector::validate(sel, "spec.targetSelector")
            .map_err(|message| SpecProblem { message })?;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(data: serde_json::Value) -> DynamicObject {
        let mut obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kvmotion.io/v1alpha1",
            "kind": "VirtualMachineMigration",
            "metadata": {"name": "m1", "generation": 3},
        }))
        .unwrap();
        obj.data = data;
        obj
    }

    #[test]
    fn a_valid_spec_is_parsed_with_defaults() {
        let o = observe(&object(json!({"spec": {"vm": {"name": "web-1"}}})));
        let spec = o.spec.unwrap();
        assert_eq!(spec.vm.name.as_deref(), Some("web-1"));
        assert_eq!(spec.mode, kvmotion_api::MigrationMode::Live);
        assert_eq!(o.generation, 3);
    }

    #[test]
    fn an_unreadable_spec_becomes_a_problem_naming_the_field() {
        let o = observe(&object(
            json!({"spec": {"vm": {"name": "x"}, "mode": "Teleport"}}),
        ));
        let p = o.spec.unwrap_err();
        assert!(p.message.contains("Teleport"), "{}", p.message);
    }

    #[test]
    fn a_missing_spec_is_a_problem() {
        assert_eq!(
            observe(&object(json!({}))).spec.unwrap_err().message,
            "spec is missing"
        );
    }

    #[test]
    fn an_unreadable_status_is_a_problem_not_a_fresh_start() {
        let o = observe(&object(
            json!({"spec": {"vm": {"name": "x"}}, "status": {"phase": 7}}),
        ));
        let problem = o.status_problem.expect("a problem");
        assert!(
            problem.contains("phase") || problem.contains("7"),
            "{problem}"
        );
        let fine = observe(&object(json!({"spec": {"vm": {"name": "x"}}})));
        assert_eq!(fine.status_problem, None);
    }
}
