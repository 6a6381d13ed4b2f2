//! The plugin's one error type, and how an error reads on the terminal.

use std::path::PathBuf;

use kvmotion_api::Phase;

/// Everything that can stop a command, named after what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable client configuration.
    #[error("loading the kubeconfig{}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    LoadKubeconfig {
        /// The file given with --kubeconfig, if any.
        path: Option<PathBuf>,
        /// Why it could not be used.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client")]
    BuildClient(#[source] kube::Error),
    /// The apiserver refused or failed to create the migration.
    #[error("creating a migration of VM {vm}")]
    CreateMigration {
        /// The VM.
        vm: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// No migration has the name given.
    #[error(
        "finding VirtualMachineMigration {name}: there is none (`kubectl migrate list` shows them)"
    )]
    FindMigration {
        /// The name.
        name: String,
    },
    /// Reading one migration failed.
    #[error("reading VirtualMachineMigration {name}")]
    GetMigration {
        /// The name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing migrations failed.
    #[error("listing VirtualMachineMigrations")]
    ListMigrations(#[source] kube::Error),
    /// Deleting (cancelling) a migration failed.
    #[error("cancelling VirtualMachineMigration {name}")]
    CancelMigration {
        /// The name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Cancelling a migration that has already ended; deleting it would
    /// only remove its record.
    #[error(
        "cancelling VirtualMachineMigration {name}: it already ended {phase}; nothing to cancel (`kubectl delete vmm {name}` removes the record)"
    )]
    CancelEndedMigration {
        /// The name.
        name: String,
        /// Its terminal phase.
        phase: Phase,
    },
    /// Watching an object failed repeatedly.
    #[error("following {kind} {name}")]
    Follow {
        /// Its kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The last watch error.
        #[source]
        source: kube::runtime::watcher::Error,
    },
    /// The watch stream stopped, which kube's watcher does not do by design.
    #[error("following {kind} {name}: the watch ended")]
    WatchEnded {
        /// Its kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The apiserver refused or failed to create the evacuation.
    #[error("creating an evacuation of node {node}")]
    CreateEvacuation {
        /// The node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Removing a dry run's evacuation failed.
    #[error("deleting NodeEvacuation {name} after its dry run")]
    DeleteEvacuation {
        /// The name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Standard output or error could not be written (e.g. a closed pipe).
    #[error("writing the output")]
    WriteOutput(#[source] std::io::Error),
}

/// The error and its causes on one line, each said once. The apiserver's
/// own message replaces kube's rendering of a Status, which repeats it with
/// every field.
pub fn render(err: &Error) -> String {
    let mut out = err.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(c) = cause {
        if let Some(kube::Error::Api(status)) = c.downcast_ref::<kube::Error>() {
            out.push_str(": ");
            out.push_str(&status.message);
            return out;
        }
        // Many errors repeat their cause in their own message already.
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_one_line_with_the_apiservers_message() {
        let status =
            kube::core::Status::failure("spec.vm needs a name or a uuid", "Invalid").with_code(422);
        let cases = [
            (
                Error::CreateMigration {
                    vm: "web-1".into(),
                    source: kube::Error::Api(Box::new(status)),
                },
                "creating a migration of VM web-1: spec.vm needs a name or a uuid",
            ),
            (
                Error::FindMigration { name: "m1".into() },
                "finding VirtualMachineMigration m1: there is none (`kubectl migrate list` shows them)",
            ),
            (
                Error::LoadKubeconfig {
                    path: Some("/nope".into()),
                    source: "no such file".into(),
                },
                "loading the kubeconfig /nope: no such file",
            ),
            (
                Error::ListMigrations(kube::Error::ReadEvents(std::io::Error::other("reset"))),
                "listing VirtualMachineMigrations: Error reading events stream: reset",
            ),
            (
                Error::CancelEndedMigration {
                    name: "m1".into(),
                    phase: Phase::Succeeded,
                },
                "cancelling VirtualMachineMigration m1: it already ended Succeeded; nothing to cancel (`kubectl delete vmm m1` removes the record)",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(render(&err), want);
        }
    }
}
