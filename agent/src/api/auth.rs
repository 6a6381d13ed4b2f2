//! Bearer-token authentication with TokenReview, and two roles: the
//! controller (migration control) and peer agents (disk sync, resume).
//! Reviews are cached for a minute so progress polling costs no API calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::error::Error;

/// Who may call what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The controller: prepare, start, progress, abort, force, finish.
    Controller,
    /// Another node's agent: disk sync and resume.
    Peer,
}

/// Checks tokens with the API server.
pub struct Authenticator {
    client: kube::Client,
    audience: String,
    controllers: Vec<String>,
    peers: Vec<String>,
    cache: Mutex<HashMap<u128, (String, Instant)>>,
}

const CACHE_FOR: Duration = Duration::from_secs(60);

impl Authenticator {
    /// Accepts tokens for `audience`; `controllers` and `peers` are the
    /// usernames (e.g. "system:serviceaccount:kvmotion-system:kvmotion-controller")
    /// allowed in each role.
    pub fn new(
        client: kube::Client,
        audience: String,
        controllers: Vec<String>,
        peers: Vec<String>,
    ) -> Self {
        Authenticator {
            client,
            audience,
            controllers,
            peers,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates the request and checks its identity may act as `role`.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        role: Role,
        action: &'static str,
    ) -> Result<String, Error> {
        let token = bearer(headers)?;
        let identity = self.identity(token).await?;
        let allowed = match role {
            Role::Controller => &self.controllers,
            Role::Peer => &self.peers,
        };
        if allowed.contains(&identity) {
            Ok(identity)
        } else {
            Err(Error::Forbidden { identity, action })
        }
    }

    async fn identity(&self, token: &str) -> Result<String, Error> {
        let key = xxhash_rust::xxh3::xxh3_128(token.as_bytes());
        if let Ok(cache) = self.cache.lock()
            && let Some((who, at)) = cache.get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(who.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::ReviewToken)?;
        let status = answer.status.unwrap_or_default();
        let audience_ok = status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience));
        if status.authenticated != Some(true) || !audience_ok {
            let why = status
                .error
                .unwrap_or_else(|| "the token was not accepted".into());
            return Err(Error::Unauthenticated(format!(
                "bearer token rejected for audience {:?}: {why}",
                self.audience
            )));
        }
        let who = status.user.and_then(|u| u.username).unwrap_or_default();
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
            cache.insert(key, (who.clone(), Instant::now()));
        }
        Ok(who)
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, Error> {
    let value = headers
        .get("authorization")
        .ok_or_else(|| {
            Error::Unauthenticated("missing Authorization: Bearer <token> header".into())
        })?
        .to_str()
        .map_err(|_| Error::Unauthenticated("the Authorization header is not text".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthenticated("the Authorization header is not a Bearer token".into())
        })?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_empty_bearer_tokens_are_read() {
        let mut h = HeaderMap::new();
        assert!(matches!(bearer(&h), Err(Error::Unauthenticated(_))));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(bearer(&h), Err(Error::Unauthenticated(_))));
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert!(matches!(bearer(&h), Err(Error::Unauthenticated(_))));
        h.insert("authorization", "Bearer t0k3n".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "t0k3n");
    }
}
