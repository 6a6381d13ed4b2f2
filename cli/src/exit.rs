//! Exit codes: scripts tell a failed migration from a cancelled one, and
//! both from a command that could not run.

/// Everything went as asked (a waited-for migration Succeeded).
pub const OK: u8 = 0;
/// The migration ended Failed.
pub const FAILED: u8 = 1;
/// The command line was wrong (clap's own code for usage errors).
pub const USAGE: u8 = 2;
/// The migration ended Cancelled, or was deleted while being followed.
pub const CANCELLED: u8 = 3;
/// The command could not be carried out: no such migration, the cluster
/// unreachable or refusing, a bad kubeconfig.
pub const ERROR: u8 = 4;

/// The exit codes, for every command's --help.
pub const HELP: &str = "\
Exit codes:
  0  done (with --wait: the migration Succeeded)
  1  the migration Failed
  2  usage error
  3  the migration was Cancelled (deleted while in flight)
  4  the command could not be carried out (unknown migration, cluster unreachable or refusing)";

/// How a command that talked to the cluster ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// As asked.
    Done,
    /// The followed migration Failed.
    Failed,
    /// The followed migration was Cancelled.
    Cancelled,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Done => OK,
            Outcome::Failed => FAILED,
            Outcome::Cancelled => CANCELLED,
        }
    }
}
