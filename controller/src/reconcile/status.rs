//! Write status: server-side apply on the status subresource, as the one
//! field manager that owns a migration's status.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kvmotion_api::{CONTROLLER_MANAGER, VirtualMachineMigrationStatus};
use serde_json::json;

use crate::Error;

/// Applies `status` to migration `name`. The whole status is applied each
/// time, so fields the controller stops setting are removed.
pub async fn write(
    api: &Api<DynamicObject>,
    name: &str,
    status: &VirtualMachineMigrationStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": format!("{}/{}", kvmotion_api::GROUP, kvmotion_api::VERSION),
        "kind": "VirtualMachineMigration",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(CONTROLLER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::WriteStatus {
        name: name.to_string(),
        source,
    })
}
