//! Wires the controller together: client, HTTP endpoint, leader election
//! and the reconcile loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{Controller, watcher};
use kube::{Client, Config};
use kvmotion_api::VirtualMachineMigration;
use tracing::{info, warn};

use crate::Error;
use crate::cli::Args;
use crate::http::{self, Health};
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};

/// Field manager of the leader-election Lease.
pub const LEASE_FIELD_MANAGER: &str = "kvmotion-controller-lease";

/// Builds a client from `--kubeconfig`, else in-cluster or `$KUBECONFIG`.
pub async fn client(args: &Args) -> Result<Client, Error> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::LoadKubeConfig(Box::new(e)))?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| Error::LoadKubeConfig(Box::new(e)))?
        }
        None => Config::infer()
            .await
            .map_err(|e| Error::LoadKubeConfig(Box::new(e)))?,
    };
    Client::try_from(config).map_err(Error::BuildClient)
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = client(&args).await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let server = tokio::spawn(http::serve(args.http_addr, health.clone(), stopped()));
    wait_for_apiserver(&client, stopped()).await;
    health.ready.store(true, Ordering::Relaxed);

    let ctx = Arc::new(Context {
        api: migrations_api(&client),
        metrics: metrics.clone(),
        failures: Default::default(),
    });
    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: args.identity(),
        duration: Duration::from_secs(args.lease_duration_seconds),
        grace: Duration::from_secs(args.lease_grace_seconds),
    };
    let result = leader::run_while_leader(client.clone(), lease, &metrics, stopped(), || {
        run_controller(client.clone(), ctx.clone())
    })
    .await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(join) => warn!(error = %join, "HTTP task ended abnormally"),
    }
    result
}

fn migrations_api(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::erase::<VirtualMachineMigration>(&()),
    )
}

async fn run_controller(client: Client, ctx: Arc<Context>) {
    info!("reconciling VirtualMachineMigrations");
    let resource = ApiResource::erase::<VirtualMachineMigration>(&());
    Controller::new_with(
        migrations_api(&client),
        watcher::Config::default(),
        resource,
    )
    .run(reconcile::reconcile, reconcile::error_policy, ctx)
    .for_each(|res| async move {
        if let Err(e) = res {
            warn!(error = %crate::error::chain(&e), "controller event");
        }
    })
    .await;
}

/// Waits until the API server answers, retrying quietly; readiness follows.
async fn wait_for_apiserver(client: &Client, stopped: impl std::future::Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut delay = Duration::from_millis(200);
    loop {
        match client.apiserver_version().await {
            Ok(v) => {
                info!(version = %v.git_version, "API server reached");
                return;
            }
            Err(e) => warn!(error = %e, "API server not reachable yet"),
        }
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, only Ctrl-C can stop the process.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
