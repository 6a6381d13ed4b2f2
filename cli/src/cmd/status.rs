//! `kubectl migrate status NAME`.

use kube::Client;

use crate::error::Error;
use crate::exit::Outcome;
use crate::format::describe::describe;
use crate::output::Output;

/// Prints the description of migration `name`.
pub async fn status(client: Client, name: &str, out: &mut Output) -> Result<Outcome, Error> {
    let api = crate::client::migrations(client);
    let m = super::get(&api, name).await?;
    out.line(&describe(&m, jiff::Timestamp::now()))?;
    Ok(Outcome::Done)
}
