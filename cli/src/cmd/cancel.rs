//! `kubectl migrate cancel NAME`: deletes the migration; the controller's
//! finalizer aborts its job and settles the VM before the object goes.

use kube::Client;
use kube::api::{DeleteParams, Preconditions};
use kvmotion_api::Phase;

use super::follow::{Until, watch};
use crate::error::Error;
use crate::exit::Outcome;
use crate::format::{phase, summary};
use crate::output::Output;

/// Reads and conditional deletes tried before giving up on a migration
/// whose status keeps changing.
const MAX_ATTEMPTS: u32 = 10;

/// Cancels migration `name`; with `wait`, until it is gone.
pub async fn cancel(
    client: Client,
    name: &str,
    wait: bool,
    out: &mut Output,
) -> Result<Outcome, Error> {
    let api = crate::client::migrations(client);
    // Deleted only as read: a migration that ends between the read and the
    // delete is reported, not erased with its result. A status write in
    // between (progress, once a second) just means reading again.
    let mut attempts = 0;
    loop {
        let m = super::get(&api, name).await?;
        if let Some(phase) = phase(&m).filter(|p| p.is_terminal()) {
            return Err(Error::CancelEndedMigration {
                name: name.to_string(),
                phase,
            });
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: m.metadata.resource_version.clone(),
                uid: m.metadata.uid.clone(),
            }),
            ..DeleteParams::default()
        };
        attempts += 1;
        match api.delete(name, &params).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.is_conflict() && attempts < MAX_ATTEMPTS => continue,
            // Gone between the read and the delete: it ended and was removed.
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                return Err(Error::FindMigration {
                    name: name.to_string(),
                });
            }
            Err(source) => {
                return Err(Error::CancelMigration {
                    name: name.to_string(),
                    source,
                });
            }
        }
    }
    if !wait {
        out.line(&format!(
            "{name} cancelling: its job is stopped and the VM left on its source before it is deleted"
        ))?;
        return Ok(Outcome::Done);
    }
    let last = watch(&api, name, Until::Gone, out).await?;
    let last = last.as_deref();
    let text = summary::gone(name, last);
    match last.and_then(phase) {
        // It ended on its own between the read and the delete.
        Some(Phase::Succeeded | Phase::Failed) => out.error_line(&text)?,
        _ => out.line(&text)?,
    }
    Ok(Outcome::Done)
}
