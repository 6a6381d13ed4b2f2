//! Migration transports on the lab: a Tunnelled move travels inside the
//! connection between the two libvirt daemons (no QEMU migration port is
//! opened), while a Direct one opens QEMU's own connection; with TLS (the
//! daemons' `qemu+tls` connection, QEMU's native TLS) what crosses the
//! link is ciphertext, which a capture of the link shows; every move
//! leaves the guest running on the target in the same boot.

use std::time::Duration;

use kvmotion_api::agent::JobPhase;
use kvmotion_api::tuning::Transport;
use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::capture::{
    Capture, QEMU_STREAM_HEADER, Segment, TLS_HANDSHAKE, carries, first_payloads_to,
};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lab};

/// QEMU's migration ports (libvirt's `migration_port_min`..`max`).
const QEMU_PORTS: std::ops::RangeInclusive<u16> = 49152..=49215;
/// libvirtd's TCP port, which carries a tunnel.
const LIBVIRTD_PORT: u16 = 16509;
/// libvirtd's TLS port.
const LIBVIRTD_TLS_PORT: u16 = 16514;

/// The ports segments were sent to.
fn ports_sent_to(segments: &[Segment]) -> Vec<u16> {
    let mut ports: Vec<u16> = segments.iter().map(|s| s.dst_port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Moves the guest with `drive` to completion while `node`'s migration
/// link is captured; returns what crossed it.
async fn captured(agents: &Agents, drive: &Drive, node: &str, label: &str) -> Vec<Segment> {
    let capture = Capture::start(node, label).await;
    let (code, started) = drive.start(agents).await;
    assert_eq!(code, 200, "{started}");
    let (done, _) = drive.wait(agents, Duration::from_secs(120)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    capture.finish()
}

/// Asserts every connection to a port in `ports` opened with a TLS
/// handshake, and that there was at least one.
fn opened_with_tls(segments: &[Segment], ports: std::ops::RangeInclusive<u16>, what: &str) {
    let firsts = first_payloads_to(segments, &ports);
    assert!(!firsts.is_empty(), "no {what} connection was captured");
    for (port, payload) in firsts {
        assert!(
            payload.starts_with(&TLS_HANDSHAKE),
            "{what} on port {port} began with {:02x?}, not a TLS handshake",
            &payload[..payload.len().min(8)]
        );
    }
}

/// The ports `node` holds established TCP connections to on `peer`.
fn ports_to(node: &str, peer: &str) -> Vec<u16> {
    let out = lab(&["exec", node, "ss", "-tnH", "state", "established"]);
    out.lines()
        .filter_map(|line| {
            let mut ends = line.split_whitespace().filter(|w| w.contains(':'));
            let (_local, remote) = (ends.next()?, ends.next()?);
            let (ip, port) = remote.rsplit_once(':')?;
            (ip == peer).then(|| port.parse().ok()).flatten()
        })
        .collect()
}

#[tokio::test]
async fn a_tunnelled_move_travels_inside_the_daemons_connection_and_a_direct_one_does_not() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "tr-tunnel", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");

    // Held back so the connections can be seen mid-move; post-copy asked
    // for, which a tunnel cannot carry: the agent turns it off and says so.
    let mut tunnelled = Drive::new("tr-tunnel-1", &guest, "node-a").held_back(20);
    tunnelled.tuning.transport = Transport::Tunnelled;
    tunnelled.tuning.post_copy = true;
    let (code, started) = tunnelled.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    tunnelled.wait_for_data(&agents, 8 << 20).await;
    let ports = ports_to("node-a", "10.99.0.2");
    assert!(
        !ports.iter().any(|p| QEMU_PORTS.contains(p)),
        "a QEMU migration connection is open: {ports:?}"
    );
    assert!(ports.contains(&LIBVIRTD_PORT), "{ports:?}");
    kvmotion_tests::lab::lift_cap("node-a", &guest.name);
    let (done, _) = tunnelled.wait(&agents, Duration::from_secs(120)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert!(
        done.actions.iter().any(|a| a == "PostCopyOff(tunnelled)"),
        "{:?}",
        done.actions
    );
    guest.moved_whole_to("node-b", before).await;
    let mid = guest.last_beat("node-b").expect("beating");

    // The control: a Direct move back opens QEMU's own connection, so the
    // check above can see one.
    let direct = Drive::new("tr-tunnel-2", &guest, "node-b").held_back(20);
    let (code, started) = direct.start(&agents).await;
    assert_eq!(code, 200, "{started}");
    direct.wait_for_data(&agents, 8 << 20).await;
    let ports = ports_to("node-b", "10.99.0.1");
    assert!(
        ports.iter().any(|p| QEMU_PORTS.contains(p)),
        "no QEMU migration connection: {ports:?}"
    );
    kvmotion_tests::lab::lift_cap("node-b", &guest.name);
    let (done, _) = direct.wait(&agents, Duration::from_secs(120)).await;
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    guest.moved_whole_to("node-a", mid).await;
}

#[tokio::test]
async fn over_tls_the_link_carries_only_ciphertext_and_a_plain_move_shows_qemus_stream() {
    let _lab = exclusive().await;
    let tls = ["--peer-transport", "tls"];
    let agents = Agents::start_each(module_path!(), line!(), &tls, &tls).await;
    let guest = Guest::start("node-a", "tr-tls", &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("beating");

    // Direct with QEMU's TLS, over the daemons' qemu+tls connection.
    let mut direct_tls = Drive::new("tr-tls-1", &guest, "node-a");
    direct_tls.tuning.tls = true;
    let seen = captured(&agents, &direct_tls, "node-a", "tls-direct").await;
    let ports = ports_sent_to(&seen);
    assert!(ports.contains(&LIBVIRTD_TLS_PORT), "{ports:?}");
    assert!(
        !ports.contains(&LIBVIRTD_PORT),
        "qemu+tcp was used: {ports:?}"
    );
    opened_with_tls(
        &seen,
        LIBVIRTD_TLS_PORT..=LIBVIRTD_TLS_PORT,
        "the daemons' connection",
    );
    opened_with_tls(&seen, QEMU_PORTS, "QEMU's migration stream");
    assert!(
        !carries(&seen, &QEMU_STREAM_HEADER),
        "QEMU's stream header crossed the link in clear"
    );
    guest.moved_whole_to("node-b", before).await;
    let mid = guest.last_beat("node-b").expect("beating");

    // Tunnelled inside the qemu+tls connection: one encrypted port only.
    let mut tunnelled = Drive::new("tr-tls-2", &guest, "node-b");
    tunnelled.tuning.transport = Transport::Tunnelled;
    tunnelled.tuning.post_copy = false;
    let seen = captured(&agents, &tunnelled, "node-b", "tls-tunnel").await;
    let ports = ports_sent_to(&seen);
    assert!(
        !ports.iter().any(|p| QEMU_PORTS.contains(p)),
        "a QEMU migration connection was opened: {ports:?}"
    );
    opened_with_tls(&seen, LIBVIRTD_TLS_PORT..=LIBVIRTD_TLS_PORT, "the tunnel");
    assert!(
        !carries(&seen, &QEMU_STREAM_HEADER),
        "QEMU's stream header crossed the link in clear"
    );
    guest.moved_whole_to("node-a", mid).await;
    let mid = guest.last_beat("node-a").expect("beating");

    // The control: without QEMU's TLS the same capture sees the stream's
    // header in clear, so the checks above can fail.
    let plain = Drive::new("tr-tls-3", &guest, "node-a");
    let seen = captured(&agents, &plain, "node-a", "plain").await;
    assert!(
        carries(&seen, &QEMU_STREAM_HEADER),
        "a plain move's stream header was not seen: {:?}",
        ports_sent_to(&seen)
    );
    guest.moved_whole_to("node-b", mid).await;
}
