//! `kvmotion-agent`: the per-node agent of kvmotion.

use std::process::ExitCode;

use clap::Parser;
use kvmotion_agent::cli::Args;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    match kvmotion_agent::run::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(reason = e.reason(), error = %kvmotion_agent::error::chain(&e), "agent stopped");
            ExitCode::FAILURE
        }
    }
}
