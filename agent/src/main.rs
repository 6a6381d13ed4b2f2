//! `kvmotion-agent`: the per-node agent of kvmotion.

use std::process::ExitCode;

use clap::Parser;
use kvmotion_agent::cli::Args;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvmotion-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(agent());
    // A migration's own libvirt call blocks a thread for as long as the
    // move lasts; libvirtd runs the job, and the next agent adopts it. So
    // the agent exits at once on SIGTERM instead of waiting for the move
    // (and being killed at the end of the pod's grace period).
    runtime.shutdown_background();
    code
}

async fn agent() -> ExitCode {
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
