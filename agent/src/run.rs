//! Wires the agent together: libvirt, engine, inventory, API.

use std::sync::Arc;
use std::time::Duration;

use kube::{Client, Config};
use tracing::{info, warn};

use crate::api::{self, AppState, auth::Authenticator};
use crate::cli::Args;
use crate::engine::state::StateDir;
use crate::engine::{Engine, EngineConfig};
use crate::error::Error;
use crate::inventory::{self, InventoryConfig};
use crate::libvirt::{Libvirt, virt_impl::VirtLibvirt};
use crate::metrics::Metrics;
use crate::sampler::{self, Samples};
use kvmotion_api::client::{AgentClient, Token};

async fn client(args: &Args) -> Result<Client, Error> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("kubeconfig: {e}")))?;
            Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Config(format!("kubeconfig: {e}")))?
        }
        None => Config::infer()
            .await
            .map_err(|e| Error::Config(format!("Kubernetes configuration: {e}")))?,
    };
    Client::try_from(config).map_err(|e| Error::Config(format!("Kubernetes client: {e}")))
}

/// Connects to libvirt, retrying while the daemon is not up yet.
async fn connect_libvirt(args: &Args) -> Arc<dyn Libvirt> {
    let mut delay = Duration::from_millis(200);
    loop {
        let (uri, shared) = (args.libvirt_uri.clone(), args.shared_paths.clone());
        match tokio::task::spawn_blocking(move || VirtLibvirt::connect(&uri, shared)).await {
            Ok(Ok(lv)) => return Arc::new(lv),
            Ok(Err(e)) => warn!(error = %e, "libvirt not reachable yet"),
            Err(e) => warn!(error = %e, "libvirt connection task failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(mut args: Args) -> Result<(), Error> {
    args.resolve_migration_address()
        .map_err(|e| Error::Config(format!("--migration-network: {e}")))?;
    let kube = client(&args).await?;
    let lv = connect_libvirt(&args).await;
    let endpoint = args.endpoint();
    info!(node = %args.node_name, %endpoint, libvirt = %args.libvirt_uri, peer = %args.peer_libvirt_uri(), "agent starting");
    let metrics = Arc::new(Metrics::default());
    let dir = args.state_dir.clone();
    let state = tokio::task::spawn_blocking(move || StateDir::open(&dir))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|source| Error::State {
            what: format!("opening {}", args.state_dir.display()),
            source,
        })?;
    let engine = Engine::new(
        lv.clone(),
        EngineConfig {
            node: args.node_name.clone(),
            libvirt_uri: args.peer_libvirt_uri(),
            migration_uri: args.migration_uri(),
            endpoint: endpoint.clone(),
            poll: Duration::from_millis(args.poll_ms.max(100)),
        },
        peer_client(&args)?,
        state,
    );
    let adopted = engine.adopt().await?;
    info!(?adopted, state_dir = %args.state_dir.display(), "records of earlier runs taken back");
    let samples = Arc::new(Samples::default());
    let sampler = (args.dirty_rate_every_seconds > 0).then(|| {
        tokio::spawn(sampler::run(
            engine.clone(),
            samples.clone(),
            Duration::from_secs(args.dirty_rate_every_seconds),
        ))
    });
    let inventory = tokio::spawn(inventory::run(
        kube.clone(),
        lv,
        samples,
        engine.clone(),
        InventoryConfig {
            node: args.node_name.clone(),
            migration_address: args.migration_address().to_string(),
            endpoint,
            lease_namespace: args.lease_namespace.clone(),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
            heartbeat: Duration::from_secs(args.heartbeat_seconds.max(1)),
        },
        metrics.clone(),
    ));
    let state = Arc::new(AppState {
        engine,
        auth: Authenticator::new(
            kube,
            args.token_audience.clone(),
            args.controller_identities.clone(),
            args.peer_identities.clone(),
        ),
        metrics,
    });
    let tls = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    let result = crate::serve::serve(args.listen, api::router(state), tls, shutdown_signal()).await;
    inventory.abort();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    info!("shutting down");
}

/// The client for peer calls, presenting the peer token when one is given.
fn peer_client(args: &Args) -> Result<AgentClient, Error> {
    let token = match &args.peer_token_file {
        Some(path) => Token::File(path.clone()),
        None => Token::None,
    };
    AgentClient::new(token, args.peer_ca_file.as_deref())
        .map_err(|e| Error::Config(kvmotion_api::error_chain(&e)))
}
