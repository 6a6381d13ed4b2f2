//! The Kubernetes client, configured the way kubectl would be.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kvmotion_api::VirtualMachineMigration;

use crate::args::ClusterArgs;
use crate::error::Error;

/// A client for the cluster named by --kubeconfig/--context, else by
/// $KUBECONFIG or ~/.kube/config, else the in-cluster service account.
pub async fn connect(cluster: &ClusterArgs) -> Result<Client, Error> {
    let options = KubeConfigOptions {
        context: cluster.context.clone(),
        ..KubeConfigOptions::default()
    };
    let load = |source: Box<dyn std::error::Error + Send + Sync>| Error::LoadKubeconfig {
        path: cluster.kubeconfig.clone(),
        source,
    };
    let config = match (&cluster.kubeconfig, &cluster.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| load(e.into()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| load(e.into()))?
        }
        // A named context only exists in a kubeconfig, never in-cluster.
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| load(e.into()))?,
        (None, None) => Config::infer().await.map_err(|e| load(e.into()))?,
    };
    Client::try_from(config).map_err(Error::BuildClient)
}

/// The migrations API (the kind is cluster-scoped).
pub fn migrations(client: Client) -> Api<VirtualMachineMigration> {
    Api::all(client)
}
