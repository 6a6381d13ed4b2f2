//! Serving the API, over plain HTTP or TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use crate::error::Error;

/// Serves `app` on `addr` until `shutdown`; over TLS when a certificate
/// and key are given.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    tls: Option<(&Path, &Path)>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve {
            addr: addr.to_string(),
            source,
        })?;
    let Some((cert, key)) = tls else {
        info!(%addr, "serving the agent API over HTTP");
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| Error::Serve {
                addr: addr.to_string(),
                source,
            });
    };
    let acceptor = acceptor(cert, key)?;
    info!(%addr, "serving the agent API over TLS");
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted.map_err(|source| Error::Serve { addr: addr.to_string(), source })?,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::Config(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&format!("reading {}", cert.display()), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&format!("parsing {}", cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(&format!("reading {}", key.display()), &e))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("TLS certificate and key", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
