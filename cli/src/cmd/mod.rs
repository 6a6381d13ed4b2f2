//! The commands: each reads or writes migrations and prints through
//! `Output`; what they print is built by `crate::format`.

pub mod cancel;
pub mod drain;
pub mod follow;
pub mod list;
pub mod start;
pub mod status;

use kube::Api;
use kvmotion_api::{Phase, VirtualMachineMigration};

use crate::args::{ClusterArgs, Request};
use crate::error::Error;
use crate::exit::Outcome;
use crate::output::Output;

/// Carries out `request` against the cluster named by `cluster`.
pub async fn run(request: Request, cluster: &ClusterArgs) -> Result<Outcome, Error> {
    let client = crate::client::connect(cluster).await?;
    let mut out = Output::new();
    match request {
        Request::Start { vm, args } => start::start(client, &vm, &args, &mut out).await,
        Request::List { selector } => list::list(client, selector.as_deref(), &mut out).await,
        Request::Status { name } => status::status(client, &name, &mut out).await,
        Request::Cancel { name, wait } => cancel::cancel(client, &name, wait, &mut out).await,
        Request::Drain { node, args } => drain::drain(client, &node, &args, &mut out).await,
    }
}

/// Reads one migration; an unknown name is its own error.
pub async fn get(
    api: &Api<VirtualMachineMigration>,
    name: &str,
) -> Result<VirtualMachineMigration, Error> {
    api.get_opt(name)
        .await
        .map_err(|source| Error::GetMigration {
            name: name.to_string(),
            source,
        })?
        .ok_or_else(|| Error::FindMigration {
            name: name.to_string(),
        })
}

/// The exit outcome of a migration that ended in `phase`.
pub fn outcome_of(phase: Option<Phase>) -> Outcome {
    match phase {
        Some(Phase::Succeeded) => Outcome::Done,
        Some(Phase::Failed) => Outcome::Failed,
        // Deleted before it ended, or ended Cancelled.
        _ => Outcome::Cancelled,
    }
}
