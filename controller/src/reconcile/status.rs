//! Write status: server-side apply on the status subresource, as the one
//! field manager that owns a kvmotion object's status, conditional on the
//! resourceVersion the decision was made from.

use kube::api::{Api, Patch, PatchParams};
use kvmotion_api::CONTROLLER_MANAGER;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Error;

/// Applies `status` to the `kind` object `name`, only if it still has
/// `resource_version` (the API server answers 409 otherwise). The whole
/// status is applied each time, so fields the controller stops setting are
/// removed.
pub async fn write<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    resource_version: &str,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "apiVersion": format!("{}/{}", kvmotion_api::GROUP, kvmotion_api::VERSION),
        "kind": kind,
        "metadata": {"name": name, "resourceVersion": resource_version},
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(CONTROLLER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| {
        if is_conflict(&source) {
            Error::StatusConflict {
                kind,
                name: name.to_string(),
            }
        } else {
            Error::WriteStatus {
                kind,
                name: name.to_string(),
                source,
            }
        }
    })
}

/// Whether the API server refused a write because the object changed.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
