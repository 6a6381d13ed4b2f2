//! The agent's HTTP API (axum, JSON). Every call is authenticated; every
//! failure is a 4xx/5xx with an `ErrorBody`.

pub mod auth;
#[cfg(test)]
mod fuzz;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kvmotion_api::agent::{DomainRef, ErrorBody, PrepareRequest, StartRequest};
use serde::Serialize;

use self::auth::{Authenticator, Role};
use crate::engine::{Engine, disksync};
use crate::error::Error;
use crate::metrics::Metrics;

/// What the handlers share.
pub struct AppState {
    /// The migration engine.
    pub engine: Arc<Engine>,
    /// Token checks.
    pub auth: Authenticator,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

type St = State<Arc<AppState>>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            reason: self.reason().to_string(),
            message: crate::error::chain(&self),
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

fn ok<T: Serialize>(v: T) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// The router of the agent API.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = kvmotion_api::agent::API_PREFIX;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(&format!("{v1}/migrations/{{id}}"), get(status))
        .route(&format!("{v1}/migrations/{{id}}/prepare"), post(prepare))
        .route(&format!("{v1}/migrations/{{id}}/start"), post(start))
        .route(&format!("{v1}/migrations/{{id}}/abort"), post(abort))
        .route(
            &format!("{v1}/migrations/{{id}}/force-complete"),
            post(force_complete),
        )
        .route(&format!("{v1}/migrations/{{id}}/finish"), post(finish))
        .route(&format!("{v1}/migrations/{{id}}/cleanup"), post(cleanup))
        .route(&format!("{v1}/migrations/{{id}}/resume"), post(resume))
        .route(
            &format!("{v1}/migrations/{{id}}/disks/{{disk}}/hashes"),
            get(disk_hashes),
        )
        .route(
            &format!("{v1}/migrations/{{id}}/disks/{{disk}}/blocks"),
            post(disk_blocks).layer(DefaultBodyLimit::max(64 << 20)),
        )
        .route(&format!("{v1}/domains/{{vm}}"), get(domain))
        .route(
            &format!("{v1}/domains/{{vm}}/abort-job"),
            post(abort_domain_job),
        )
        .route(&format!("{v1}/domains/{{vm}}/dirty-rate"), post(dirty_rate))
        .route(
            &format!("{v1}/domains/{{vm}}/undefine-stale"),
            post(undefine_stale),
        )
        .fallback(
            |uri: axum::http::Uri| async move { Error::UnknownEndpoint(uri.path().to_string()) },
        )
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                Error::MethodNotAllowed {
                    method: method.to_string(),
                    path: uri.path().to_string(),
                }
            },
        )
        .with_state(state)
}

/// A migration id: the migration object's UID, or any DNS-label-like name.
fn migration_id(id: &str) -> Result<&str, Error> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(id)
    } else {
        Err(Error::BadRequest(format!(
            "invalid migration id {id:?}: use lowercase letters, digits and '-', at most 63"
        )))
    }
}

fn json_body<T>(body: Result<axum::Json<T>, JsonRejection>) -> Result<T, Error> {
    body.map(|axum::Json(v)| v)
        .map_err(|e| Error::BadRequest(format!("malformed request body: {}", e.body_text())))
}

/// Runs `f` after authorizing `role`, turning errors into JSON answers.
async fn guarded<T: Serialize, F: std::future::Future<Output = Result<T, Error>>>(
    s: &AppState,
    headers: &HeaderMap,
    role: Role,
    action: &'static str,
    f: impl FnOnce() -> F,
) -> Response {
    let result = async {
        s.auth.authorize(headers, role, action).await?;
        f().await
    }
    .await;
    s.metrics.request(action, &result);
    match result {
        Ok(v) => ok(v),
        Err(e) => e.into_response(),
    }
}

async fn readyz(State(s): St) -> Response {
    let lv = s.engine.lv.clone();
    match crate::error::blocking(move || lv.host()).await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, crate::error::chain(&e)).into_response(),
    }
}

async fn metrics(State(s): St) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// A query string, or the 400 that names what is wrong with it.
fn parsed<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Error> {
    query
        .map(|q| q.0)
        .map_err(|e| Error::BadRequest(format!("query: {}", e.body_text())))
}

/// `?waitSeconds=N` (at most 30) long-polls: the answer comes at the next
/// change of the job (progress or phase), or after N seconds.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusQuery {
    wait_seconds: Option<u64>,
}

async fn status(
    State(s): St,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
    h: HeaderMap,
) -> Response {
    guarded(&s, &h, Role::Controller, "read a migration", || async {
        let wait = parsed(query)?.wait_seconds.unwrap_or(0).min(30);
        let job = s.engine.job(migration_id(&id)?)?;
        let status = job.status();
        if wait == 0 || status.phase.is_final() {
            return Ok(status);
        }
        Ok(job.next_status(std::time::Duration::from_secs(wait)).await)
    })
    .await
}

async fn prepare(
    State(s): St,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Result<axum::Json<PrepareRequest>, JsonRejection>,
) -> Response {
    guarded(&s, &h, Role::Controller, "prepare a migration", || async {
        let req = json_body(body)?;
        s.engine.prepare(migration_id(&id)?, req).await
    })
    .await
}

async fn start(
    State(s): St,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Result<axum::Json<StartRequest>, JsonRejection>,
) -> Response {
    guarded(&s, &h, Role::Controller, "start a migration", || async {
        let req = json_body(body)?;
        s.engine.start(migration_id(&id)?, req).await
    })
    .await
}

async fn abort(State(s): St, Path(id): Path<String>, h: HeaderMap) -> Response {
    guarded(&s, &h, Role::Controller, "abort a migration", || async {
        s.engine.abort(migration_id(&id)?)
    })
    .await
}

async fn force_complete(State(s): St, Path(id): Path<String>, h: HeaderMap) -> Response {
    guarded(
        &s,
        &h,
        Role::Controller,
        "force a migration to complete",
        || async { s.engine.force_complete(migration_id(&id)?) },
    )
    .await
}

async fn finish(State(s): St, Path(id): Path<String>, h: HeaderMap) -> Response {
    guarded(&s, &h, Role::Controller, "finish a migration", || async {
        s.engine.forget(migration_id(&id)?).await
    })
    .await
}

async fn cleanup(State(s): St, Path(id): Path<String>, h: HeaderMap) -> Response {
    guarded(&s, &h, Role::Controller, "clean up a migration", || async {
        let removed = s.engine.cleanup(migration_id(&id)?).await?;
        Ok(serde_json::json!({ "removedDisks": removed }))
    })
    .await
}

async fn resume(State(s): St, Path(id): Path<String>, h: HeaderMap) -> Response {
    guarded(&s, &h, Role::Peer, "resume an arrived VM", || async {
        s.engine.resume_arrived(migration_id(&id)?).await?;
        Ok(serde_json::json!({ "resumed": true }))
    })
    .await
}

async fn domain(State(s): St, Path(vm): Path<String>, h: HeaderMap) -> Response {
    guarded(&s, &h, Role::Controller, "look up a domain", || async {
        s.engine.presence(domain_ref(&vm)).await
    })
    .await
}

async fn abort_domain_job(State(s): St, Path(vm): Path<String>, h: HeaderMap) -> Response {
    guarded(&s, &h, Role::Controller, "abort a domain's job", || async {
        s.engine.abort_domain_job(domain_ref(&vm)).await
    })
    .await
}

/// `?seconds=N`: how long a dirty rate is measured (1 by default).
#[derive(serde::Deserialize)]
struct Period {
    seconds: Option<u32>,
}

async fn dirty_rate(
    State(s): St,
    Path(vm): Path<String>,
    query: Result<axum::extract::Query<Period>, axum::extract::rejection::QueryRejection>,
    h: HeaderMap,
) -> Response {
    guarded(&s, &h, Role::Controller, "measure a dirty rate", || async {
        let seconds = parsed(query)?.seconds.unwrap_or(1);
        let max = kvmotion_api::agent::DIRTY_RATE_MAX_SECONDS;
        if !(1..=max).contains(&seconds) {
            return Err(Error::BadRequest(format!(
                "query: seconds must be 1 to {max}, not {seconds}"
            )));
        }
        s.engine.dirty_rate(domain_ref(&vm), seconds).await
    })
    .await
}

async fn undefine_stale(State(s): St, Path(vm): Path<String>, h: HeaderMap) -> Response {
    guarded(
        &s,
        &h,
        Role::Controller,
        "remove a stale definition",
        || async {
            s.engine.undefine_stale(domain_ref(&vm)).await?;
            Ok(serde_json::json!({ "undefined": true }))
        },
    )
    .await
}

/// A domain named in a path: a uuid, or a name.
fn domain_ref(vm: &str) -> DomainRef {
    let is_uuid = vm.len() == 36 && vm.bytes().filter(|b| *b == b'-').count() == 4;
    if is_uuid {
        DomainRef {
            name: None,
            uuid: Some(vm.to_string()),
        }
    } else {
        DomainRef {
            name: Some(vm.to_string()),
            uuid: None,
        }
    }
}

/// The path a peer may sync for `disk` of migration `id`.
fn writable_path(engine: &Engine, id: &str, disk: &str) -> Result<String, Error> {
    let p = engine
        .prepared_entry(migration_id(id)?)
        .ok_or_else(|| Error::UnknownMigration { id: id.to_string() })?;
    p.writable_disks
        .iter()
        .find(|d| d.target == disk)
        .map(|d| d.path.clone())
        .ok_or_else(|| Error::BadRequest(format!("disk {disk:?} is not copied by migration {id}")))
}

async fn disk_hashes(
    State(s): St,
    Path((id, disk)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    guarded(&s, &h, Role::Peer, "read disk hashes", || async {
        let path = writable_path(&s.engine, &id, &disk)?;
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            disksync::hash_file(std::path::Path::new(&p), disksync::BLOCK_SIZE)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|source| Error::DiskImage { path, source })
    })
    .await
}

async fn disk_blocks(
    State(s): St,
    Path((id, disk)): Path<(String, String)>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    guarded(&s, &h, Role::Peer, "write disk blocks", || async {
        let path = writable_path(&s.engine, &id, &disk)?;
        let size: u64 = h
            .get("x-kvmotion-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::BadRequest("missing or invalid x-kvmotion-size header".into()))?;
        let p = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            disksync::apply_frames(std::path::Path::new(&p), size, body)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidData => Error::BadRequest(format!("disk blocks: {source}")),
            _ => Error::DiskImage { path, source },
        })?;
        Ok(serde_json::json!({ "writtenBytes": written }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_ids_are_uid_like() {
        for good in ["6b0a7e2c-1d1e-4c51-9a11-0000000000a1", "m1", "abc-9"] {
            assert!(migration_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "UPPER", "a/b", "../etc", &"x".repeat(64)] {
            assert!(migration_id(bad).is_err(), "{bad}");
        }
    }
}
