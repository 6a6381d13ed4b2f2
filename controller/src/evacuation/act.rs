//! Act: carry out an evacuation's decision against the API server. The
//! status that records a step is written before the step is taken (with the
//! resourceVersion it was decided from), so a step is never taken twice from
//! stale state and a step whose record was lost is taken again idempotently.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kvmotion_api::evacuation::{EVACUATION_LABEL, NodeEvacuation};
use kvmotion_api::migration::MigrationMode;
use serde_json::{Value, json};

use super::decide::NewMigration;
use crate::Error;

/// The VirtualMachineMigration that carries out `new` for `evac`: owned by
/// it (so it goes when the evacuation goes), labelled with its name and
/// with the evacuation's own labels (a selector that picks the evacuation
/// picks its migrations too).
pub fn migration_object(evac: &NodeEvacuation, new: &NewMigration) -> Value {
    let mut labels: BTreeMap<String, String> = evac.labels().clone();
    labels.insert(EVACUATION_LABEL.into(), evac.name_any());
    let mode = match new.planned.mode {
        MigrationMode::Live => "Live",
        MigrationMode::Offline => "Offline",
    };
    let mut spec = json!({
        "vm": {"name": new.planned.vm, "uuid": new.planned.uuid},
        "sourceNode": evac.spec.node_name,
        "targetNode": new.planned.target_node,
        "mode": mode,
    });
    if let Some(p) = &evac.spec.policy_ref {
        spec["policyRef"] = json!({"name": p.name});
    }
    json!({
        "apiVersion": format!("{}/{}", kvmotion_api::GROUP, kvmotion_api::VERSION),
        "kind": "VirtualMachineMigration",
        "metadata": {
            "name": new.name,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": format!("{}/{}", kvmotion_api::GROUP, kvmotion_api::VERSION),
                "kind": "NodeEvacuation",
                "name": evac.name_any(),
                "uid": evac.metadata.uid.clone().unwrap_or_default(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    })
}

/// Creates the migration; one that exists already (an earlier attempt's
/// create whose answer was lost) is left as it is.
pub async fn create(
    api: &Api<DynamicObject>,
    evac: &NodeEvacuation,
    new: &NewMigration,
) -> Result<(), Error> {
    let obj: DynamicObject = serde_json::from_value(migration_object(evac, new)).map_err(|e| {
        Error::CreateMigration {
            evacuation: evac.name_any(),
            name: new.name.clone(),
            source: kube::Error::SerdeError(e),
        }
    })?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(Error::CreateMigration {
            evacuation: evac.name_any(),
            name: new.name.clone(),
            source,
        }),
    }
}

/// Deletes a migration that has not started moving; its own finalizer
/// cancels whatever it began. One already gone is fine.
pub async fn cancel(api: &Api<DynamicObject>, evacuation: &str, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::CancelMigration {
            evacuation: evacuation.into(),
            name: name.into(),
            source,
        }),
    }
}

/// Removes the owner reference of a migration that is moving its VM, so
/// that the garbage collector does not delete it with the evacuation: it
/// finishes on its own (or its own deletion cancels it cleanly).
pub async fn release(api: &Api<DynamicObject>, evacuation: &str, name: &str) -> Result<(), Error> {
    let patch = json!({"metadata": {"ownerReferences": null}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::ReleaseMigration {
            evacuation: evacuation.into(),
            name: name.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmotion_api::evacuation::{LiveImpossible, NodeEvacuationSpec, PlannedMove};
    use kvmotion_api::migration::{PolicyRef, VirtualMachineMigrationSpec};

    #[test]
    fn an_evacuations_migration_is_owned_labelled_and_names_source_target_and_policy() {
        let mut evac = NodeEvacuation::new(
            "drain-a",
            NodeEvacuationSpec {
                node_name: "node-a".into(),
                dry_run: false,
                policy_ref: Some(PolicyRef {
                    name: "fast".into(),
                }),
                target_selector: None,
                live_impossible: LiveImpossible::Offline,
                max_parallel: None,
            },
        );
        evac.metadata.uid = Some("u-1".into());
        evac.metadata.labels = Some([("team".to_string(), "infra".to_string())].into());
        let new = NewMigration {
            name: "drain-a-web-1234abcd-1".into(),
            planned: PlannedMove {
                vm: "web".into(),
                uuid: "1234abcd-0000-0000-0000-000000000000".into(),
                memory_bytes: 1 << 30,
                mode: MigrationMode::Offline,
                target_node: "node-b".into(),
                ..PlannedMove::default()
            },
        };
        let obj = migration_object(&evac, &new);
        let spec: VirtualMachineMigrationSpec =
            serde_json::from_value(obj["spec"].clone()).unwrap();
        assert_eq!(spec.vm.name.as_deref(), Some("web"));
        assert_eq!(
            spec.vm.uuid.as_deref(),
            Some("1234abcd-0000-0000-0000-000000000000")
        );
        assert_eq!(spec.source_node.as_deref(), Some("node-a"));
        assert_eq!(spec.target_node.as_deref(), Some("node-b"));
        assert_eq!(spec.mode, MigrationMode::Offline);
        assert_eq!(spec.policy_ref.map(|p| p.name).as_deref(), Some("fast"));
        assert_eq!(obj["metadata"]["labels"][EVACUATION_LABEL], "drain-a");
        assert_eq!(obj["metadata"]["labels"]["team"], "infra");
        let owner = &obj["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "NodeEvacuation");
        assert_eq!(owner["uid"], "u-1");
        assert_eq!(owner["controller"], true);
    }
}
