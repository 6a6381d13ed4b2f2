//! The agent API's guard rails on the lab: authentication by TokenReview
//! with an audience and an allowed identity, and a distinct JSON 4xx for
//! every kind of bad request.

use std::time::Duration;

use kvmotion_api::agent::{DiskPlan, JobPhase};
use kvmotion_tests::agent::{AUDIENCE, Agents, Drive, credentials, token_for};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lab};
use serde_json::{Value, json};

fn reason(body: &Value) -> &str {
    body["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[tokio::test]
async fn calls_without_a_valid_token_for_the_audience_and_identity_are_refused() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let a = &agents.a;
    let path = "/v1/migrations/m1";

    let (code, body) = a.call("GET", path, None, None).await;
    assert_eq!(
        (code, reason(&body)),
        (401, "Unauthenticated"),
        "no token: {body}"
    );
    let (code, body) = a.call("GET", path, Some("not-a-token"), None).await;
    assert_eq!(
        (code, reason(&body)),
        (401, "Unauthenticated"),
        "garbage token: {body}"
    );

    let wrong_audience = token_for("kvmotion-controller", "some-other-audience");
    let (code, body) = a.call("GET", path, Some(&wrong_audience), None).await;
    assert_eq!(
        (code, reason(&body)),
        (401, "Unauthenticated"),
        "wrong audience: {body}"
    );

    let stranger = token_for("kvmotion-stranger", AUDIENCE);
    let (code, body) = a.call("GET", path, Some(&stranger), None).await;
    assert_eq!(
        (code, reason(&body)),
        (403, "Forbidden"),
        "wrong identity: {body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("kvmotion-stranger"),
        "{body}"
    );

    // A peer agent may sync disks but not control migrations.
    let peer = std::fs::read_to_string(&credentials().peer_token_file).expect("peer token");
    let (code, body) = a
        .call("POST", "/v1/migrations/m1/abort", Some(peer.trim()), None)
        .await;
    assert_eq!(
        (code, reason(&body)),
        (403, "Forbidden"),
        "peer as controller: {body}"
    );

    // The controller's token is accepted (the migration simply is unknown).
    let (code, body) = a.as_controller("GET", path, None).await;
    assert_eq!((code, reason(&body)), (404, "UnknownMigration"), "{body}");
}

#[tokio::test]
async fn malformed_requests_get_a_json_4xx() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let a = &agents.a;
    let token = credentials().controller_token.clone();
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/migrations/m1/start",
            Some(json!({"vm": {"name": "x"}})),
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/v1/migrations/m1/prepare",
            Some(json!("not an object")),
            400,
            "BadRequest",
        ),
        ("POST", "/v1/migrations/m1/prepare", None, 400, "BadRequest"),
        ("GET", "/v1/migrations/Bad_Id", None, 400, "BadRequest"),
        ("GET", "/v1/no-such-thing", None, 404, "UnknownEndpoint"),
        ("DELETE", "/v1/migrations/m1", None, 405, "MethodNotAllowed"),
    ];
    for (method, path, body, want_code, want_reason) in cases {
        let (code, answer) = a.call(method, path, Some(&token), body.as_ref()).await;
        assert_eq!(
            (code, reason(&answer)),
            (want_code, want_reason),
            "{method} {path}: {answer}"
        );
        assert!(
            !answer["message"].as_str().unwrap_or_default().is_empty(),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn impossible_migrations_are_refused_each_with_its_own_reason() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "api-refusals", &GuestSpec::hot()).await;
    let drive = Drive::new("refusal-base", &guest, "node-a");
    let prepare = |changes: Value| {
        let mut body = serde_json::to_value(drive.prepare_request()).expect("json");
        if let (Some(b), Some(c)) = (body.as_object_mut(), changes.as_object()) {
            for (k, v) in c {
                b.insert(k.clone(), v.clone());
            }
        }
        body
    };

    // Unknown domain, on the source.
    let mut unknown = Drive::new("refusal-unknown", &guest, "node-a");
    unknown.vm.name = Some("no-such-vm".into());
    let (code, body) = unknown.start(&agents).await;
    assert_eq!((code, reason(&body)), (404, "DomainNotFound"), "{body}");

    // Target equal to source.
    let (code, body) = agents
        .b
        .as_controller(
            "POST",
            "/v1/migrations/refusal-same/prepare",
            Some(&prepare(json!({"sourceNode": "node-b"}))),
        )
        .await;
    assert_eq!((code, reason(&body)), (422, "SameNode"), "{body}");

    // A target without the memory.
    let (code, body) = agents
        .b
        .as_controller(
            "POST",
            "/v1/migrations/refusal-mem/prepare",
            Some(&prepare(json!({"memoryBytes": 1u64 << 50}))),
        )
        .await;
    assert_eq!((code, reason(&body)), (422, "InsufficientMemory"), "{body}");

    // A target whose hypervisor cannot provide the guest CPU.
    let cpu = "<cpu match='exact'><model>qemu64</model><feature policy='require' name='avx512-vp2intersect'/></cpu>";
    let (code, body) = agents
        .b
        .as_controller(
            "POST",
            "/v1/migrations/refusal-cpu/prepare",
            Some(&prepare(json!({"cpuXml": cpu}))),
        )
        .await;
    assert_eq!((code, reason(&body)), (422, "CPUIncompatible"), "{body}");

    // The guest's own CPU is fine there.
    let (code, body) = agents.b.as_controller("POST", "/v1/migrations/refusal-cpu-ok/prepare", Some(&prepare(json!({"cpuXml": "<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>"})))).await;
    assert_eq!(code, 200, "{body}");
    agents
        .b
        .as_controller("POST", "/v1/migrations/refusal-cpu-ok/cleanup", None)
        .await;

    // A domain already on the target.
    let (code, body) = agents
        .a
        .as_controller(
            "POST",
            "/v1/migrations/refusal-exists/prepare",
            Some(&prepare(json!({"sourceNode": "node-b"}))),
        )
        .await;
    assert_eq!((code, reason(&body)), (409, "DomainExists"), "{body}");

    // A second migration of a VM that is already moving, refused by the
    // source (started with the first's target: a prepare of its own could
    // meet the first's incoming domain on the target, DomainExists, first).
    let first = Drive::new("refusal-first", &guest, "node-a").held_back(20);
    let (code, prepared) = first.prepare(&agents).await;
    assert_eq!(code, 200, "prepare: {prepared}");
    let (code, body) = first.start_with(&agents, prepared.clone()).await;
    assert_eq!(code, 200, "{body}");
    let second = Drive::new("refusal-second", &guest, "node-a");
    let (code, body) = second.start_with(&agents, prepared).await;
    assert_eq!((code, reason(&body)), (409, "AlreadyMigrating"), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("refusal-first"),
        "{body}"
    );
    let (code, body) = agents
        .a
        .as_controller("POST", "/v1/migrations/refusal-first/abort", None)
        .await;
    assert_eq!(code, 200, "{body}");
    let (done, _) = first.wait(&agents, Duration::from_secs(60)).await;
    assert_eq!(done.phase, JobPhase::Aborted);

    // Live migration of a shut-off domain.
    lab(&["virsh", "node-a", "destroy", &guest.name]);
    let shut = Drive::new("refusal-shutoff", &guest, "node-a");
    let (code, body) = shut.start(&agents).await;
    assert_eq!((code, reason(&body)), (409, "DomainState"), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Offline"),
        "{body}"
    );

    // Disk paths must be absolute.
    let bad_disk = prepare(
        json!({"disks": [DiskPlan { target: "vda".into(), path: "relative.qcow2".into(), format: "qcow2".into(), capacity_bytes: 1, copy: true }]}),
    );
    let (code, body) = agents
        .b
        .as_controller(
            "POST",
            "/v1/migrations/refusal-path/prepare",
            Some(&bad_disk),
        )
        .await;
    assert_eq!((code, reason(&body)), (400, "BadRequest"), "{body}");
}
