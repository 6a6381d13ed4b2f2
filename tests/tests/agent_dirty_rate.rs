//! The agent measures how fast a guest dirties its memory (libvirt's page
//! sampling, which works under TCG): a guest dirtying 128 MiB flat out
//! measures far above one dirtying 4 MiB/s, its resident memory covers what
//! it touched, and bad requests get a 4xx JSON answer.

use kvmotion_api::agent::DirtyRate;
use kvmotion_tests::agent::Agents;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};

const MIB: u64 = 1 << 20;

async fn measure(agents: &Agents, vm: &str, seconds: u32) -> DirtyRate {
    let (code, body) = agents
        .a
        .as_controller(
            "POST",
            &format!("/v1/domains/{vm}/dirty-rate?seconds={seconds}"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_value(body).expect("a dirty rate")
}

#[tokio::test]
async fn a_hot_guest_measures_far_above_an_idle_one_and_bad_requests_are_refused() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let idle = Guest::start("node-a", "dr-idle", &GuestSpec::default()).await;
    let hot = Guest::start(
        "node-a",
        "dr-hot",
        &GuestSpec {
            dirty_mib: 128,
            dirty_rate: 0,
            ..GuestSpec::default()
        },
    )
    .await;

    let quiet = measure(&agents, &idle.name, 1).await;
    let busy = measure(&agents, &hot.name, 1).await;
    eprintln!("idle {quiet:?}\nhot {busy:?}");
    assert_eq!((quiet.period_seconds, busy.period_seconds), (1, 1));
    assert_eq!(busy.memory_bytes, 256 * MIB, "{busy:?}");
    // 4 MiB/s set; page sampling sees a few of the guest's pages only.
    assert!(quiet.bytes_per_second <= 24 * MIB, "{quiet:?}");
    // 128 MiB rewritten over and over: most of it within the second.
    assert!(busy.bytes_per_second >= 48 * MIB, "{busy:?}");
    assert!(
        busy.bytes_per_second >= 4 * quiet.bytes_per_second.max(MIB),
        "{quiet:?} vs {busy:?}"
    );
    assert!(
        (128 * MIB..=busy.memory_bytes).contains(&busy.resident_bytes),
        "the hot guest holds its buffer: {busy:?}"
    );
    // Both keep running: measuring does not stop a guest.
    assert!(idle.last_beat("node-a").is_some());
    assert!(hot.last_beat("node-a").is_some());

    let refused = [
        (
            format!("/v1/domains/{}/dirty-rate?seconds=0", idle.name),
            400,
            "BadRequest",
        ),
        (
            format!("/v1/domains/{}/dirty-rate?seconds=61", idle.name),
            400,
            "BadRequest",
        ),
        (
            format!("/v1/domains/{}/dirty-rate?seconds=x", idle.name),
            400,
            "BadRequest",
        ),
        (
            "/v1/domains/no-such-guest/dirty-rate".to_string(),
            404,
            "DomainNotFound",
        ),
    ];
    for (path, want, reason) in refused {
        let (code, body) = agents.a.as_controller("POST", &path, None).await;
        assert_eq!(code, want, "{path}: {body}");
        assert_eq!(body["reason"], reason, "{path}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}
