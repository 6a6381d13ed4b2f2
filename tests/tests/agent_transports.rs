//! Migration transports on the lab: a Tunnelled move travels inside the
//! connection between the two libvirt daemons (no QEMU migration port is
//! opened), while a Direct one opens QEMU's own connection; both leave the
//! guest running on the target in the same boot.

use std::time::Duration;

use kvmotion_api::agent::JobPhase;
use kvmotion_api::tuning::Transport;
use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lab};

/// QEMU's migration ports (libvirt's `migration_port_min`..`max`).
const QEMU_PORTS: std::ops::RangeInclusive<u16> = 49152..=49215;
/// libvirtd's TCP port, which carries a tunnel.
const LIBVIRTD_PORT: u16 = 16509;

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
