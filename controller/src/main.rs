//! `kvmotion-controller`: the leader-elected reconciler of kvmotion migrations.

use std::process::ExitCode;

use clap::Parser;
use kvmotion_controller::cli::{Args, LogFormat};
use kvmotion_controller::error::chain;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    if args.guard {
        kvmotion_controller::run::guard().await;
        return ExitCode::SUCCESS;
    }
    match kvmotion_controller::run::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(category = e.category(), error = %chain(&e), "controller stopped");
            ExitCode::FAILURE
        }
    }
}
