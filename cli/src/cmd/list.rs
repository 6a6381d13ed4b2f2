//! `kubectl migrate list`.

use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use kvmotion_api::VirtualMachineMigration;

use crate::error::Error;
use crate::exit::Outcome;
use crate::format::table::{LIST_HEADER, list_row, raw_row, render};
use crate::output::Output;

/// Prints every migration (matching `selector`) as a table.
pub async fn list(
    client: Client,
    selector: Option<&str>,
    out: &mut Output,
) -> Result<Outcome, Error> {
    // Untyped, so that one object this version cannot parse does not hide
    // all the others.
    let resource = ApiResource::erase::<VirtualMachineMigration>(&());
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut params = ListParams::default();
    if let Some(s) = selector {
        params = params.labels(s);
    }
    let objects = api.list(&params).await.map_err(Error::ListMigrations)?;
    if objects.items.is_empty() {
        out.error_line("No migrations found.")?;
        return Ok(Outcome::Done);
    }
    let now = jiff::Timestamp::now();
    let rows: Vec<Vec<String>> = objects
        .items
        .iter()
        .map(
            |obj| match obj.clone().try_parse::<VirtualMachineMigration>() {
                Ok(m) => list_row(&m, now),
                Err(_) => raw_row(obj, now),
            },
        )
        .collect();
    out.line(&render(&LIST_HEADER, &rows))?;
    Ok(Outcome::Done)
}
