//! `kubectl migrate cancel NAME`: deletes the migration; the controller's
//! finalizer aborts its job and settles the VM before the object goes.

use kube::Client;
use kube::api::DeleteParams;
use kvmotion_api::Phase;

use super::follow::{Ending, Until, watch};
use crate::error::Error;
use crate::exit::Outcome;
use crate::format::summary;
use crate::output::Output;

/// Cancels migration `name`; with `wait`, until it is gone.
pub async fn cancel(
    client: Client,
    name: &str,
    wait: bool,
    out: &mut Output,
) -> Result<Outcome, Error> {
    let api = crate::client::migrations(client);
    let m = super::get(&api, name).await?;
    if let Some(phase) = m
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .filter(|p| p.is_terminal())
    {
        return Err(Error::CancelEndedMigration {
            name: name.to_string(),
            phase,
        });
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
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
    if !wait {
        out.line(&format!(
            "{name} cancelling: its job is stopped and the VM left on its source before it is deleted"
        ))?;
        return Ok(Outcome::Done);
    }
    let last = match watch(&api, name, Until::Gone, out).await? {
        Ending::Gone(last) => last,
        // Not asked for with Until::Gone; report the state it ended in.
        Ending::Ended(m) => Some(m),
    };
    let last = last.as_deref();
    let text = summary::gone(name, last);
    let phase = last.and_then(|m| m.status.as_ref()?.phase);
    match phase {
        // It ended on its own between the read and the delete.
        Some(Phase::Succeeded | Phase::Failed) => out.error_line(&text)?,
        _ => out.line(&text)?,
    }
    Ok(Outcome::Done)
}
