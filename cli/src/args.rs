//! The command line: `kubectl migrate VM …` and its subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit;

/// Moves libvirt VMs between nodes with kvmotion, and follows the moves.
///
/// `kubectl migrate VM --to NODE` creates a VirtualMachineMigration and
/// prints its name; with --wait it follows the migration to its end.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-migrate",
    bin_name = "kubectl migrate",
    version,
    after_help = exit::HELP,
    // clap's own would offer a VM before a command, which is refused.
    override_usage = "kubectl migrate [OPTIONS] <VM>\n       kubectl migrate <COMMAND> [ARGS]",
    arg_required_else_help = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// The VM to move: its libvirt domain name, or its UUID. Use
    /// `kubectl migrate start VM` for a VM named like a subcommand.
    #[arg(value_name = "VM", required = true)]
    pub vm: Option<String>,

    /// How to migrate it.
    #[command(flatten)]
    pub start: StartArgs,

    /// Which cluster to talk to.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// A subcommand instead of starting a migration.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a migration of VM (the same as `kubectl migrate VM`).
    #[command(after_help = exit::HELP)]
    Start {
        /// The VM to move: its libvirt domain name, or its UUID.
        #[arg(value_name = "VM")]
        vm: String,
        /// How to migrate it.
        #[command(flatten)]
        start: StartArgs,
    },
    /// List migrations: name, VM, nodes, phase, progress and age.
    #[command(after_help = exit::HELP)]
    List {
        /// Only migrations whose labels match this selector (e.g. `team=web`).
        #[arg(short = 'l', long, value_name = "SELECTOR")]
        selector: Option<String>,
    },
    /// Show one migration: phase, nodes, policy, progress, conditions and result.
    #[command(after_help = exit::HELP)]
    Status {
        /// The migration's name.
        name: String,
    },
    /// Cancel a migration by deleting it: the controller aborts a running
    /// job, cleans the target and leaves the VM on its source.
    #[command(after_help = exit::HELP)]
    Cancel {
        /// The migration's name.
        name: String,
        /// Wait until the controller has settled the migration and it is gone.
        #[arg(long)]
        wait: bool,
    },
    /// Empty NODE of its VMs: creates its NodeEvacuation, prints the plan
    /// (each VM's target, mode and memory, and any VM without a place),
    /// then with --wait a line per VM as its move goes and a summary.
    #[command(after_help = DRAIN_HELP)]
    Drain {
        /// The node to empty.
        #[arg(value_name = "NODE")]
        node: String,
        /// How.
        #[command(flatten)]
        args: DrainArgs,
    },
}

/// The exit codes of `drain`.
const DRAIN_HELP: &str = "\
Exit codes:
  0  done: the plan places every VM (with --dry-run), the moves started, or (with --wait) the node is empty
  1  a VM has no place (Blocked), or the evacuation Failed
  2  usage error
  3  the evacuation was deleted or cancelled while followed
  4  the command could not be carried out (cluster unreachable or refusing)";

/// What a drain asks for.
#[derive(Args, Debug, Clone, Default)]
pub struct DrainArgs {
    /// Only plan: print where every VM would go, move nothing, and remove
    /// the evacuation again.
    #[arg(long)]
    pub dry_run: bool,

    /// Follow the moves until the node is empty (or the evacuation fails);
    /// a Blocked plan is waited on until every VM has a place.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,

    /// Move a VM that cannot move live (shut off, crashed…) offline
    /// instead of blocking the drain.
    #[arg(long)]
    pub offline_if_needed: bool,

    /// The MigrationPolicy of every move; the cluster's default policy when
    /// omitted.
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,

    /// Moves at once from this node, at most (the policy's limits still
    /// apply).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_parallel: Option<u32>,

    /// Label for the evacuation (and its migrations), KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

/// What a new migration asks for.
#[derive(Args, Debug, Clone, Default)]
pub struct StartArgs {
    /// The node to move the VM to; the controller chooses one when omitted.
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,

    /// The node the VM must be running on now; found from the inventories
    /// when omitted (give it when a name exists on several nodes).
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,

    /// Move the VM offline instead of live: a running guest is paused for
    /// the move, a shut-off one has its definition and disks moved.
    #[arg(long)]
    pub offline: bool,

    /// The MigrationPolicy to apply; the cluster's default policy when omitted.
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,

    /// Label for the new migration, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Follow the migration until it ends, showing its progress; the exit
    /// code tells how it ended.
    #[arg(long)]
    pub wait: bool,
}

/// Where the cluster is.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The kubeconfig file to use; else $KUBECONFIG, ~/.kube/config, or
    /// the in-cluster service account.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use; else its current context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// What the command line asks for, with the start form made explicit.
#[derive(Debug)]
pub enum Request {
    /// Start a migration of `vm`.
    Start {
        /// The VM.
        vm: String,
        /// How.
        args: StartArgs,
    },
    /// List migrations.
    List {
        /// Optional label selector.
        selector: Option<String>,
    },
    /// Describe one migration.
    Status {
        /// Its name.
        name: String,
    },
    /// Cancel one migration.
    Cancel {
        /// Its name.
        name: String,
        /// Wait until it is gone.
        wait: bool,
    },
    /// Evacuate a node.
    Drain {
        /// The node.
        node: String,
        /// How.
        args: DrainArgs,
    },
}

impl Cli {
    /// The request, whichever form it was given in. A VM or migration
    /// options next to a subcommand are refused: `kubectl migrate --to b
    /// list` must not quietly list (clap's own conflict rule would also
    /// refuse --kubeconfig before a subcommand).
    pub fn request(self) -> Result<Request, clap::Error> {
        let request = match self.command {
            Some(Command::Start { vm, start }) => Request::Start { vm, args: start },
            Some(Command::List { selector }) => Request::List { selector },
            Some(Command::Status { name }) => Request::Status { name },
            Some(Command::Cancel { name, wait }) => Request::Cancel { name, wait },
            Some(Command::Drain { node, args }) => Request::Drain { node, args },
            // clap requires VM when no subcommand is given.
            None => {
                return match self.vm {
                    Some(vm) => Ok(Request::Start {
                        vm,
                        args: self.start,
                    }),
                    None => Err(usage("a VM or a command is required")),
                };
            }
        };
        if self.vm.is_some() || !self.start.is_empty() {
            return Err(usage(
                "a VM and migration options go without a command; to move a VM named like a command, use `kubectl migrate start VM`",
            ));
        }
        Ok(request)
    }
}

impl StartArgs {
    /// Whether no option was given.
    fn is_empty(&self) -> bool {
        let StartArgs {
            to,
            from,
            offline,
            policy,
            labels,
            wait,
        } = self;
        to.is_none() && from.is_none() && !offline && policy.is_none() && labels.is_empty() && !wait
    }
}

/// A usage error, printed and exited with like clap's own.
fn usage(message: &str) -> clap::Error {
    use clap::CommandFactory;
    Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Request, clap::Error> {
        let argv = std::iter::once("kubectl-migrate").chain(args.iter().copied());
        Cli::try_parse_from(argv).and_then(Cli::request)
    }

    #[test]
    fn the_bare_form_starts_a_migration_with_every_option() {
        let req = parse(&[
            "web-1",
            "--to",
            "node-b",
            "--offline",
            "--policy",
            "fast",
            "--label",
            "team=web",
            "--label",
            "ticket=",
            "--wait",
            "--kubeconfig",
            "/tmp/kc",
        ])
        .expect("parses");
        let Request::Start { vm, args } = req else {
            panic!("not a start: {req:?}")
        };
        assert_eq!(vm, "web-1");
        assert_eq!(args.to.as_deref(), Some("node-b"));
        assert!(args.offline && args.wait);
        assert_eq!(args.policy.as_deref(), Some("fast"));
        assert_eq!(
            args.labels,
            [("team".into(), "web".into()), ("ticket".into(), "".into())]
        );
    }

    #[test]
    fn subcommands_and_their_flags_parse() {
        let cases: &[(&[&str], &str)] = &[
            (&["list"], "List { selector: None }"),
            (&["list", "-l", "a=b"], "List { selector: Some(\"a=b\") }"),
            (&["status", "m1"], "Status { name: \"m1\" }"),
            (&["cancel", "m1"], "Cancel { name: \"m1\", wait: false }"),
            (
                &["cancel", "m1", "--wait", "--context", "lab"],
                "Cancel { name: \"m1\", wait: true }",
            ),
            (&["start", "list", "--to", "n"], "Start { vm: \"list\""),
            (
                &["drain", "node-a", "--dry-run", "--offline-if-needed"],
                "Drain { node: \"node-a\", args: DrainArgs { dry_run: true, wait: false, offline_if_needed: true, policy: None, max_parallel: None, labels: [] } }",
            ),
            (
                &[
                    "drain",
                    "node-a",
                    "--wait",
                    "--policy",
                    "p",
                    "--max-parallel",
                    "2",
                ],
                "Drain { node: \"node-a\", args: DrainArgs { dry_run: false, wait: true, offline_if_needed: false, policy: Some(\"p\"), max_parallel: Some(2), labels: [] } }",
            ),
            (&["--kubeconfig", "/k", "list"], "List { selector: None }"),
            (
                &["--context", "c", "status", "m1"],
                "Status { name: \"m1\" }",
            ),
        ];
        for (args, want) in cases {
            let got = format!("{:?}", parse(args).expect("parses"));
            assert!(got.starts_with(want), "{args:?}: {got}");
        }
    }

    #[test]
    fn usage_mistakes_are_refused() {
        let cases: &[&[&str]] = &[
            &[],
            &["web-1", "--label", "novalue"],
            &["web-1", "--label", "=v"],
            &["status"],
            &["cancel"],
            &["web-1", "--bogus"],
            &["--to", "node-b", "list"],
            &["--wait", "cancel", "m1"],
            &["web-1", "status", "m1"],
            &["list", "--to", "node-b"],
            &["drain"],
            &["drain", "node-a", "--dry-run", "--wait"],
            &["drain", "node-a", "--max-parallel", "0"],
            &["--to", "node-b", "drain", "node-a"],
        ];
        for args in cases {
            let err = parse(args).expect_err("refused");
            assert_eq!(err.exit_code(), i32::from(exit::USAGE), "{args:?}: {err}");
        }
    }
}
