//! Property tests of the agent API over arbitrary requests: whatever the
//! method, path, id, headers and body, the answer is never a 5xx and never
//! a panic, and every refusal is a JSON `ErrorBody`. The API runs in
//! process over a host without a hypervisor (`libvirt::fake`), with token
//! reviews answered by a stand-in API server.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use kvmotion_api::agent::{DiskPlan, DomainRef, ErrorBody, PrepareRequest};
use kvmotion_api::hypervisor::{DomainInfo, DomainState};
use proptest::prelude::*;

use super::auth::Authenticator;
use super::{AppState, router};
use crate::engine::state::StateDir;
use crate::engine::{Engine, EngineConfig};
use crate::libvirt::fake::FakeLibvirt;
use crate::metrics::Metrics;

const CONTROLLER: &str = "system:serviceaccount:kvmotion-system:kvmotion-controller";
const PEER: &str = "system:serviceaccount:kvmotion-system:kvmotion-agent";
const CONTROLLER_TOKEN: &str = "controller-token";
const PEER_TOKEN: &str = "peer-token";

/// An API server that knows two tokens and nothing else.
fn token_reviews() -> kube::Client {
    let svc = tower::service_fn(|req: Request<kube::client::Body>| async move {
        let body = req.into_body().collect().await?.to_bytes();
        let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let user = match review["spec"]["token"].as_str() {
            Some(CONTROLLER_TOKEN) => Some(CONTROLLER),
            Some(PEER_TOKEN) => Some(PEER),
            _ => None,
        };
        let status = match user {
            Some(u) => {
                serde_json::json!({"authenticated": true, "user": {"username": u}, "audiences": ["kvmotion-agent"]})
            }
            None => serde_json::json!({"authenticated": false, "error": "unknown token"}),
        };
        let answer = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": review["spec"],
            "status": status,
        });
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            Response::builder()
                .header("content-type", "application/json")
                .body(kube::client::Body::from(answer.to_string().into_bytes()))
                .expect("response"),
        )
    });
    kube::Client::new(svc, "default")
}

fn guest(name: &str, uuid: &str, state: DomainState) -> DomainInfo {
    DomainInfo {
        name: name.into(),
        uuid: uuid.into(),
        state,
        memory_bytes: 256 << 20,
        vcpus: 1,
        persistent: true,
        disks: Vec::new(),
        dirty_rate: None,
    }
}

fn app(dir: &std::path::Path) -> axum::Router {
    let lv = Arc::new(FakeLibvirt::with(vec![
        guest(
            "web",
            "6b0a7e2c-1d1e-4c51-9a11-0000000000aa",
            DomainState::Running,
        ),
        guest(
            "db",
            "6b0a7e2c-1d1e-4c51-9a11-0000000000bb",
            DomainState::ShutOff,
        ),
    ]));
    let peer = kvmotion_api::client::AgentClient::new(kvmotion_api::client::Token::None, None)
        .expect("client");
    let engine = Engine::new(
        lv,
        EngineConfig {
            node: "node-a".into(),
            libvirt_uri: "qemu+tcp://10.99.0.1/system".into(),
            migration_uri: "tcp://10.99.0.1".into(),
            endpoint: "http://10.98.0.1:9443".into(),
            poll: std::time::Duration::from_millis(100),
        },
        peer,
        StateDir::open(dir).expect("state dir"),
    );
    router(Arc::new(AppState {
        engine,
        auth: Authenticator::new(
            token_reviews(),
            "kvmotion-agent".into(),
            vec![CONTROLLER.into()],
            vec![PEER.into()],
        ),
        metrics: Arc::new(Metrics::default()),
    }))
}

/// A segment of a path: ids as the controller sends them, and worse.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("m1".to_string()),
        Just("web".to_string()),
        Just("6b0a7e2c-1d1e-4c51-9a11-0000000000aa".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just("%00".to_string()),
        "[a-zA-Z0-9._~-]{0,80}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let action = proptest::sample::select(vec![
        "",
        "/prepare",
        "/start",
        "/abort",
        "/force-complete",
        "/finish",
        "/cleanup",
        "/resume",
        "/disks/vda/hashes",
        "/disks/vda/blocks",
        "/nope",
    ]);
    let query = proptest::sample::select(vec![
        "",
        "?waitSeconds=0",
        "?waitSeconds=x",
        "?waitSeconds=-1",
        "?waitSeconds=99999999999999999999999",
        "?a=b&&c",
    ]);
    prop_oneof![
        (segment(), action, query).prop_map(|(id, a, q)| format!("/v1/migrations/{id}{a}{q}")),
        (
            segment(),
            proptest::sample::select(vec![
                "",
                "/abort-job",
                "/undefine-stale",
                "/dirty-rate",
                "/dirty-rate?seconds=0",
                "/dirty-rate?seconds=x",
                "/x"
            ])
        )
            .prop_map(|(vm, a)| format!("/v1/domains/{vm}{a}")),
        Just("/healthz".to_string()),
        Just("/metrics".to_string()),
        "/[a-zA-Z0-9/._-]{0,40}",
    ]
}

fn token() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(Some(format!("Bearer {CONTROLLER_TOKEN}"))),
        Just(Some(format!("Bearer {PEER_TOKEN}"))),
        Just(None),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

/// Bodies: random bytes, random JSON, and prepare requests with their
/// fields stretched (never a copied disk: that would create files here).
fn body() -> impl Strategy<Value = Vec<u8>> {
    let json = value::any_value().prop_map(|v| v.to_string().into_bytes());
    let prepare = (
        segment(),
        "[ -~]{0,30}",
        any::<u64>(),
        "[a-z/.]{0,20}",
        any::<bool>(),
    )
        .prop_map(|(name, source, memory, disk_path, with_uuid)| {
            serde_json::to_vec(&PrepareRequest {
                vm: DomainRef {
                    name: Some(name),
                    uuid: with_uuid.then(|| "6b0a7e2c-1d1e-4c51-9a11-0000000000aa".into()),
                },
                source_node: source,
                mode: kvmotion_api::MigrationMode::Live,
                memory_bytes: memory,
                cpu_xml: String::new(),
                virt_type: "qemu".into(),
                disks: vec![DiskPlan {
                    target: "vda".into(),
                    path: disk_path,
                    format: "qcow2".into(),
                    capacity_bytes: 1 << 20,
                    copy: false,
                }],
            })
            .expect("json")
        });
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..256),
        json,
        prepare,
    ]
}

/// `serde_json::Value` has no `Arbitrary`; a small recursive one.
mod value {
    use proptest::prelude::*;

    pub fn any_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ -~]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Option<(u16, Vec<u8>)> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(c) = content_type {
        req = req.header("content-type", c);
    }
    // A header value or URI the HTTP layer itself rejects never reaches
    // the agent.
    let req = req.body(Body::from(body)).ok()?;
    let resp = tower::ServiceExt::oneshot(app.clone(), req)
        .await
        .expect("the router is infallible");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
    Some((status, bytes))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn arbitrary_requests_get_a_4xx_json_answer_never_a_5xx(
        method in proptest::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        path in path(),
        auth in token(),
        content_type in proptest::sample::select(vec![None, Some("application/json"), Some("text/plain"), Some("application/json; charset=x")]),
        body in prop_oneof![body(), value::any_value().prop_map(|v| v.to_string().into_bytes())],
    ) {
        let dir = std::env::temp_dir().join(format!("kvmotion-fuzz-{}", std::process::id()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let answer = rt.block_on(async {
            let app = app(&dir);
            call(&app, method, &path, auth.as_deref(), content_type, body).await
        });
        let _ = std::fs::remove_dir_all(&dir);
        let Some((status, bytes)) = answer else {
            return Ok(());
        };
        prop_assert!(status < 500, "{method} {path} answered {status}: {}", String::from_utf8_lossy(&bytes));
        if status >= 400 {
            let e: Result<ErrorBody, _> = serde_json::from_slice(&bytes);
            prop_assert!(
                e.as_ref().is_ok_and(|e| !e.reason.is_empty() && !e.message.is_empty()),
                "{method} {path} answered {status} without an error body: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

/// The fuzzer reaches the handlers, not only the token check: a known
/// token gets to each refusal, an unknown one stops at 401.
#[tokio::test]
async fn known_tokens_get_past_authentication_to_the_handlers() {
    let dir = std::env::temp_dir().join(format!("kvmotion-fuzz-known-{}", std::process::id()));
    let app = app(&dir);
    let controller = format!("Bearer {CONTROLLER_TOKEN}");
    // (method, path, authorization, body, status, reason)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [u8], u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/v1/migrations/m1",
            Some(&controller),
            b"",
            404,
            "UnknownMigration",
        ),
        (
            "POST",
            "/v1/migrations/m1/prepare",
            Some(&controller),
            b"{",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/v1/migrations/Bad_Id",
            Some(&controller),
            b"",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/v1/domains/web/undefine-stale",
            Some(&controller),
            b"",
            409,
            "DomainState",
        ),
        (
            "GET",
            "/v1/migrations/m1",
            Some("Bearer nope"),
            b"",
            401,
            "Unauthenticated",
        ),
        (
            "GET",
            "/v1/migrations/m1",
            None,
            b"",
            401,
            "Unauthenticated",
        ),
    ];
    for (method, path, auth, body, want, reason) in cases {
        let (status, bytes) = call(
            &app,
            method,
            path,
            auth,
            Some("application/json"),
            body.to_vec(),
        )
        .await
        .expect("an answer");
        let e: ErrorBody = serde_json::from_slice(&bytes).expect("an error body");
        assert_eq!(
            (status, e.reason.as_str()),
            (want, reason),
            "{method} {path}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
