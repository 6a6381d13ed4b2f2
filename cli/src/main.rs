//! `kubectl-migrate`: found by kubectl on PATH and run as `kubectl migrate`.

use std::process::ExitCode;

use clap::Parser;
use kubectl_migrate::args::Cli;
use kubectl_migrate::{cmd, error, exit};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let cluster = cli.cluster.clone();
    let request = cli.request().unwrap_or_else(|e| e.exit());
    match cmd::run(request, &cluster).await {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("error: {}", error::render(&e));
            ExitCode::from(exit::ERROR)
        }
    }
}
