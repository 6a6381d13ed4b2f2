//! `make bench-transports`: one guest moved by the agents over each
//! transport, side by side in one run (the variants rotate each round), to
//! check the seed's claim that a tunnel through the libvirt daemons is
//! slower than QEMU's own connection, and to price TLS. Writes
//! `target/bench/transports.json`.
//!
//! The agents advertise `qemu+tls` (`--peer-transport tls`); for the
//! variants whose peer connection is plain the bench rewrites the target's
//! prepare answer to `qemu+tcp`, so that one pair of agents and one guest
//! serve all four and only the transport differs between them.

use std::time::{Duration, Instant};

use kvmotion_api::agent::JobPhase;
use kvmotion_api::tuning::Transport;
use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::bench::{median, rounds_from, write_report};
use kvmotion_tests::lab::{self, Guest, GuestSpec, exclusive};
use serde_json::json;

/// One way of moving the guest.
#[derive(Clone, Copy)]
struct Variant {
    /// Its key in the report.
    key: &'static str,
    /// The libvirt daemons' connection is qemu+tls.
    tls_peer: bool,
    /// QEMU's native TLS on the stream (Direct only).
    tls_stream: bool,
    /// The stream goes through the daemons' connection.
    tunnelled: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        key: "direct",
        tls_peer: false,
        tls_stream: false,
        tunnelled: false,
    },
    Variant {
        key: "tunnelled",
        tls_peer: false,
        tls_stream: false,
        tunnelled: true,
    },
    Variant {
        key: "tls",
        tls_peer: true,
        tls_stream: true,
        tunnelled: false,
    },
    Variant {
        key: "tunnelled_tls",
        tls_peer: true,
        tls_stream: false,
        tunnelled: true,
    },
];

/// What one move measured.
struct Move {
    wall_s: f64,
    job_s: f64,
    mib_per_s: f64,
    downtime_ms: f64,
}

async fn one_move(agents: &Agents, guest: &Guest, id: &str, from: &str, v: Variant) -> Move {
    let mut drive = Drive::new(id, guest, from);
    // Pre-copy only: a tunnel cannot carry post-copy, and the same
    // convergence for every variant keeps the comparison to transport.
    drive.tuning.post_copy = false;
    drive.tuning.tls = v.tls_stream;
    drive.tuning.transport = if v.tunnelled {
        Transport::Tunnelled
    } else {
        Transport::Direct
    };
    let t = Instant::now();
    let (code, mut prepared) = drive.prepare(agents).await;
    assert_eq!(code, 200, "prepare: {prepared}");
    if !v.tls_peer {
        let uri = prepared["libvirtUri"].as_str().unwrap_or_default();
        prepared["libvirtUri"] = json!(uri.replacen("qemu+tls://", "qemu+tcp://", 1));
    }
    let (code, body) = drive.start_with(agents, prepared).await;
    assert_eq!(code, 200, "start: {body}");
    let (done, _) = drive.wait(agents, Duration::from_secs(600)).await;
    let wall_s = t.elapsed().as_secs_f64();
    assert_eq!(done.phase, JobPhase::Completed, "{}: {done:?}", v.key);
    let r = done.result.expect("result");
    let job_s = r.duration_ms as f64 / 1000.0;
    Move {
        wall_s,
        job_s,
        mib_per_s: r.data_transferred_bytes as f64 / (1 << 20) as f64 / job_s.max(1e-3),
        downtime_ms: r.downtime_ms as f64,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _lab = exclusive().await;
    let tls = ["--peer-transport", "tls"];
    let agents = Agents::start_each("bench-transports", 0, &tls, &tls).await;
    // 160 MiB of the guest's memory holds data (not zero pages), dirtied
    // slowly enough that pre-copy converges on every transport (and fast
    // enough that the first full pass, which the lab waits for, takes 20 s).
    let spec = GuestSpec {
        dirty_mib: 160,
        dirty_rate: 8,
        ..GuestSpec::default()
    };
    let guest = Guest::start("node-a", "bench-transports", &spec).await;
    let rounds = rounds_from("KVMOTION_BENCH_TRANSPORT_ROUNDS", 5);
    let mut seen: Vec<Vec<Move>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    let mut at = "node-a";
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let i = (round + k) % VARIANTS.len();
            let v = VARIANTS[i];
            let id = format!("bench-tr-{round}-{}", v.key.replace('_', "-"));
            let m = one_move(&agents, &guest, &id, at, v).await;
            at = lab::other(at);
            assert!(
                guest.last_beat(at).is_some(),
                "{}: the guest must beat on {at}",
                v.key
            );
            println!(
                "round {round} {:>13}: {:.2} s wall, {:.2} s job, {:.0} MiB/s, {:.0} ms down",
                v.key, m.wall_s, m.job_s, m.mib_per_s, m.downtime_ms
            );
            seen[i].push(m);
        }
    }
    let med = |i: usize, f: fn(&Move) -> f64| median(&seen[i].iter().map(f).collect::<Vec<_>>());
    let direct_wall = med(0, |m| m.wall_s);
    let mut report = serde_json::Map::new();
    report.insert("rounds".into(), json!(rounds));
    report.insert("guest_data_mib".into(), json!(spec.dirty_mib));
    for (i, v) in VARIANTS.iter().enumerate() {
        let wall = med(i, |m| m.wall_s);
        report.insert(
            v.key.into(),
            json!({
                "wall_s_median": wall,
                "job_s_median": med(i, |m| m.job_s),
                "throughput_mib_per_s_median": med(i, |m| m.mib_per_s),
                "downtime_ms_median": med(i, |m| m.downtime_ms),
                "wall_ratio_vs_direct": wall / direct_wall,
                "wall_s": seen[i].iter().map(|m| m.wall_s).collect::<Vec<_>>(),
            }),
        );
    }
    write_report("transports.json", &serde_json::Value::Object(report));
}
