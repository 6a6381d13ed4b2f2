//! The agent-API client: one typed call per endpoint, shared by the
//! controller, the agents' peer calls (disk sync, resume) and the tests.
//!
//! Every call carries a bearer token read from a file on each call
//! (projected service-account tokens rotate) and has a deadline, so a
//! silent agent becomes an error instead of a hung reconcile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::agent::{
    API_PREFIX, AbortedJob, DomainPresence, ErrorBody, JobStatus, PrepareRequest, PrepareResponse,
    StartRequest,
};

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bearer token file could not be read.
    #[error("reading the agent token from {path}")]
    ReadToken {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle for TLS could not be read or holds no certificate.
    #[error("reading the agent CA bundle {path}: {message}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The agent could not be reached, or did not answer in time.
    #[error("calling {method} {url}: {message}")]
    Unreachable {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// What failed (connect, timeout, reset).
        message: String,
    },
    /// The agent answered with an error status and its JSON reason.
    #[error("{method} {url} answered {status} {}: {}", body.reason, body.message)]
    Refused {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The agent's reason and message.
        body: ErrorBody,
    },
    /// The answer could not be decoded.
    #[error("decoding the answer of {method} {url}")]
    Decode {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// True when the agent itself refused the request for a reason that
    /// repeating will not change (a 4xx); transport failures and 5xx are
    /// worth retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused { status, .. } if (400..500).contains(status))
    }

    /// The agent's reason for a refusal (e.g. "InsufficientMemory").
    pub fn reason(&self) -> Option<&str> {
        match self {
            Error::Refused { body, .. } => Some(body.reason.as_str()),
            Error::ReadToken { .. }
            | Error::ReadCa { .. }
            | Error::Unreachable { .. }
            | Error::Decode { .. } => None,
        }
    }

    /// A static label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::ReadToken { .. } => "read_token",
            Error::ReadCa { .. } => "read_ca",
            Error::Unreachable { .. } => "unreachable",
            Error::Refused { .. } => "refused",
            Error::Decode { .. } => "decode",
        }
    }
}

/// Where the bearer token comes from.
#[derive(Clone, Debug)]
pub enum Token {
    /// No Authorization header.
    None,
    /// Read from this file on every call.
    File(PathBuf),
    /// This token.
    Static(String),
}

/// A client of the agent API. Cheap to clone; connections are pooled.
#[derive(Clone)]
pub struct AgentClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    token: Arc<Token>,
    timeout: Duration,
}

/// Default deadline of a call (long polls add their wait to it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl AgentClient {
    /// A client presenting `token`, trusting `ca_file` (PEM) for `https://`
    /// endpoints; plain `http://` endpoints work too.
    pub fn new(token: Token, ca_file: Option<&std::path::Path>) -> Result<AgentClient, Error> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = ca_file {
            let ca_err = |message: String| Error::ReadCa {
                path: path.to_path_buf(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ca_err("no usable certificate in the file".into()));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::ReadCa {
            path: ca_file.map(|p| p.to_path_buf()).unwrap_or_default(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(AgentClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
            token: Arc::new(token),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with another per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> AgentClient {
        self.timeout = timeout;
        self
    }

    async fn bearer(&self) -> Result<Option<String>, Error> {
        match &*self.token {
            Token::None => Ok(None),
            Token::Static(t) => Ok(Some(t.clone())),
            // Read off the runtime's threads: a slow disk must not stall
            // the reconciles that share them.
            Token::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|t| Some(t.trim().to_string()))
                .map_err(|source| Error::ReadToken {
                    path: path.clone(),
                    source,
                }),
        }
    }

    /// Sends one request and returns the body of a 2xx answer. `headers`
    /// are added as given; the content type defaults to JSON.
    pub async fn send(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        extra_wait: Duration,
    ) -> Result<Bytes, Error> {
        let unreachable = |message: String| Error::Unreachable {
            method,
            url: url.to_string(),
            message,
        };
        let mut req = hyper::Request::builder().method(method).uri(url);
        if let Some(token) = self.bearer().await? {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(crate::error_chain(&e)))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let deadline = self.timeout + extra_wait;
        let (status, bytes) = tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", deadline.as_secs())))??;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
            reason: "Unknown".into(),
            message: String::from_utf8_lossy(&bytes).trim().to_string(),
        });
        Err(Error::Refused {
            method,
            url: url.to_string(),
            status,
            body,
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: &'static str,
        url: String,
        body: Option<&impl Serialize>,
        extra_wait: Duration,
    ) -> Result<T, Error> {
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|source| Error::Decode {
                method,
                url: url.clone(),
                source,
            })?),
            None => Bytes::new(),
        };
        let raw = self.send(method, &url, &[], body, extra_wait).await?;
        serde_json::from_slice(&raw).map_err(|source| Error::Decode {
            method,
            url,
            source,
        })
    }

    /// `POST …/prepare` on the target agent.
    pub async fn prepare(
        &self,
        endpoint: &str,
        id: &str,
        req: &PrepareRequest,
    ) -> Result<PrepareResponse, Error> {
        self.json(
            "POST",
            migration_url(endpoint, id, "/prepare"),
            Some(req),
            Duration::ZERO,
        )
        .await
    }

    /// `POST …/start` on the source agent.
    pub async fn start(
        &self,
        endpoint: &str,
        id: &str,
        req: &StartRequest,
    ) -> Result<JobStatus, Error> {
        self.json(
            "POST",
            migration_url(endpoint, id, "/start"),
            Some(req),
            Duration::ZERO,
        )
        .await
    }

    /// `GET …` on the source agent; with `wait`, long-polls for the next
    /// change (at most 30 s).
    pub async fn status(
        &self,
        endpoint: &str,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<JobStatus, Error> {
        let (query, extra) = match wait {
            Some(w) => (format!("?waitSeconds={}", w.as_secs()), w),
            None => (String::new(), Duration::ZERO),
        };
        self.json(
            "GET",
            migration_url(endpoint, id, &query),
            None::<&()>,
            extra,
        )
        .await
    }

    /// `POST …/abort` on the source agent.
    pub async fn abort(&self, endpoint: &str, id: &str) -> Result<JobStatus, Error> {
        self.post_empty(endpoint, id, "/abort").await
    }

    /// `POST …/force-complete` on the source agent.
    pub async fn force_complete(&self, endpoint: &str, id: &str) -> Result<JobStatus, Error> {
        self.post_empty(endpoint, id, "/force-complete").await
    }

    /// `POST …/finish` on the source agent: forget a final job.
    pub async fn finish(&self, endpoint: &str, id: &str) -> Result<JobStatus, Error> {
        self.post_empty(endpoint, id, "/finish").await
    }

    /// `POST …/cleanup` on the target agent: drop the preparation, removing
    /// created disk images unless the VM arrived. Idempotent.
    pub async fn cleanup(&self, endpoint: &str, id: &str) -> Result<serde_json::Value, Error> {
        self.post_empty(endpoint, id, "/cleanup").await
    }

    /// `POST …/resume` on the target agent (a peer call).
    pub async fn resume(&self, endpoint: &str, id: &str) -> Result<serde_json::Value, Error> {
        self.post_empty(endpoint, id, "/resume").await
    }

    /// `GET /v1/domains/{vm}`: whether the node has the domain.
    pub async fn domain(&self, endpoint: &str, vm: &str) -> Result<DomainPresence, Error> {
        self.json(
            "GET",
            domain_url(endpoint, vm, ""),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/domains/{vm}/undefine-stale`: removes that node's shut-off
    /// definition of `vm` (disks stay), refused (409) while it runs there.
    pub async fn undefine_stale(
        &self,
        endpoint: &str,
        vm: &str,
    ) -> Result<serde_json::Value, Error> {
        self.json(
            "POST",
            domain_url(endpoint, vm, "/undefine-stale"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/domains/{vm}/abort-job`: aborts the domain's migration job
    /// on that node, whichever migration id started it.
    pub async fn abort_domain_job(&self, endpoint: &str, vm: &str) -> Result<AbortedJob, Error> {
        self.json(
            "POST",
            domain_url(endpoint, vm, "/abort-job"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/domains/{vm}/dirty-rate?seconds=N`: measures how fast the
    /// guest dirties its memory; the answer comes after the measurement.
    pub async fn dirty_rate(
        &self,
        endpoint: &str,
        vm: &str,
        seconds: u32,
    ) -> Result<crate::agent::DirtyRate, Error> {
        self.json(
            "POST",
            domain_url(endpoint, vm, &format!("/dirty-rate?seconds={seconds}")),
            None::<&()>,
            // The measurement itself, and libvirt's report after it.
            Duration::from_secs(u64::from(seconds) + 5),
        )
        .await
    }

    async fn post_empty<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        id: &str,
        action: &str,
    ) -> Result<T, Error> {
        self.json::<T>(
            "POST",
            migration_url(endpoint, id, action),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }
}

/// `{endpoint}/v1/domains/{vm}{suffix}`.
pub fn domain_url(endpoint: &str, vm: &str, suffix: &str) -> String {
    format!(
        "{}{API_PREFIX}/domains/{vm}{suffix}",
        endpoint.trim_end_matches('/')
    )
}

/// `{endpoint}/v1/migrations/{id}{suffix}`.
pub fn migration_url(endpoint: &str, id: &str, suffix: &str) -> String {
    format!(
        "{}{API_PREFIX}/migrations/{id}{suffix}",
        endpoint.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_without_double_slashes() {
        assert_eq!(
            migration_url("http://10.0.0.1:9443/", "m-1", "/prepare"),
            "http://10.0.0.1:9443/v1/migrations/m-1/prepare"
        );
    }

    #[test]
    fn only_4xx_answers_are_refusals() {
        let refused = |status| Error::Refused {
            method: "POST",
            url: "u".into(),
            status,
            body: ErrorBody {
                reason: "InsufficientMemory".into(),
                message: "m".into(),
            },
        };
        assert!(refused(409).is_refusal());
        assert!(!refused(502).is_refusal());
        assert_eq!(refused(409).reason(), Some("InsufficientMemory"));
        let unreachable = Error::Unreachable {
            method: "GET",
            url: "u".into(),
            message: "connection refused".into(),
        };
        assert!(!unreachable.is_refusal());
    }

    #[tokio::test]
    async fn an_agent_that_does_not_listen_is_unreachable() {
        // Port 9 (discard) on localhost is closed in the test environment.
        let c = AgentClient::new(Token::Static("t".into()), None)
            .unwrap()
            .with_timeout(Duration::from_secs(2));
        let e = c
            .status("http://127.0.0.1:9", "m1", None)
            .await
            .unwrap_err();
        assert_eq!(e.category(), "unreachable", "{e}");
    }
}
