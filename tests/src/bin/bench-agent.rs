//! `make bench-agent`: the agent against raw `virsh migrate --live --p2p`
//! on the same lab guests, in one run, alternating. Writes
//! `target/bench/agent.json`.

use std::process::Command;
use std::time::{Duration, Instant};

use kvmotion_api::agent::{DiskPlan, JobPhase};
use kvmotion_api::migration::MigrationMode;
use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::bench::{
    median, rounds, virsh, virsh_downtime_ms, virsh_migrate, write_report,
};
use kvmotion_tests::lab::{self, Guest, GuestSpec, lab};
use serde_json::json;

/// One move by the agents; returns (wall s, downtime ms, job duration s).
async fn agent_move(
    agents: &Agents,
    guest: &Guest,
    id: &str,
    from: &str,
    tune: impl FnOnce(&mut Drive),
) -> (f64, f64, f64) {
    let mut drive = Drive::new(id, guest, from);
    tune(&mut drive);
    let t = Instant::now();
    let (code, body) = drive.start(agents).await;
    assert_eq!(code, 200, "{body}");
    let (done, _) = drive.wait(agents, Duration::from_secs(600)).await;
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    let r = done.result.expect("result");
    (wall, r.downtime_ms as f64, r.duration_ms as f64 / 1000.0)
}

async fn idle(agents: &Agents) -> serde_json::Value {
    let guest = Guest::start("node-a", "bench-idle", &GuestSpec::default()).await;
    let (mut at, mut agent_wall, mut agent_down, mut virsh_wall, mut virsh_down) =
        ("node-a", vec![], vec![], vec![], vec![]);
    for i in 0..rounds() {
        for first_agent in [i % 2 == 0, i % 2 == 1] {
            let to = lab::other(at);
            if first_agent {
                let (wall, down, _) =
                    agent_move(agents, &guest, &format!("bench-idle-{i}-{to}"), at, |_| {}).await;
                agent_wall.push(wall);
                agent_down.push(down);
            } else {
                virsh_wall.push(virsh_migrate(at, to, &guest.name, &[]));
                virsh_down.push(virsh_downtime_ms(to, &guest.name));
            }
            assert_eq!(
                guest.state(to).as_deref(),
                Some("running"),
                "the guest must run on {to}"
            );
            at = to;
        }
    }
    let ratio = median(&agent_wall) / median(&virsh_wall);
    println!(
        "idle: agent {:.2} s / virsh {:.2} s = {ratio:.2}; downtime agent {:.0} ms, virsh {:.0} ms",
        median(&agent_wall),
        median(&virsh_wall),
        median(&agent_down),
        median(&virsh_down)
    );
    json!({
        "idle_ratio_vs_virsh": ratio,
        "idle_agent_wall_s_median": median(&agent_wall),
        "idle_virsh_wall_s_median": median(&virsh_wall),
        "idle_downtime_ms": median(&agent_down),
        "idle_virsh_downtime_ms": median(&virsh_down),
        "idle_agent_wall_s": agent_wall,
        "idle_virsh_wall_s": virsh_wall,
    })
}

async fn hot(agents: &Agents) -> serde_json::Value {
    let spec = GuestSpec {
        dirty_mib: 128,
        dirty_rate: 0,
        ..GuestSpec::default()
    };
    let guest = Guest::start("node-a", "bench-hot", &spec).await;
    // Plain pre-copy at 100 MiB/s: given 20 s, does it finish?
    let socket = lab(&["socket", "node-a"]).trim().to_string();
    let mut child = Command::new("virsh")
        .arg("-c")
        .arg(format!("qemu+unix:///system?socket={socket}"))
        .args([
            "migrate",
            "--live",
            "--p2p",
            "--persistent",
            "--undefinesource",
            "--bandwidth",
            "100",
            &guest.name,
            "qemu+tcp://10.99.0.2/system",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("virsh");
    let t = Instant::now();
    let mut precopy_converged = false;
    while t.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(status)) = child.try_wait() {
            precopy_converged = status.success();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !precopy_converged {
        let _ = virsh("node-a", &["domjobabort", &guest.name]);
    }
    // Reaps the client either way (returns at once if it already exited).
    let _ = child.wait();
    let mut at = if guest.state("node-a").as_deref() == Some("running") {
        "node-a"
    } else {
        "node-b"
    };
    let (mut walls, mut downs, mut jobs) = (vec![], vec![], vec![]);
    for i in 0..rounds().min(3) {
        let (wall, down, job) = agent_move(agents, &guest, &format!("bench-hot-{i}"), at, |d| {
            d.tuning.bandwidth_mibps = 100
        })
        .await;
        walls.push(wall);
        downs.push(down);
        jobs.push(job);
        at = lab::other(at);
        assert_eq!(guest.state(at).as_deref(), Some("running"));
    }
    println!(
        "hot @100 MiB/s: plain pre-copy converged in 20 s: {precopy_converged}; agent converged in {:.2} s (job {:.2} s), downtime {:.0} ms",
        median(&walls),
        median(&jobs),
        median(&downs)
    );
    json!({
        "hot_converge_s": median(&walls),
        "hot_job_s": median(&jobs),
        "hot_downtime_ms": median(&downs),
        "hot_precopy_converged_in_20s": precopy_converged,
        "hot_converge_s_samples": walls,
        "hot_downtime_ms_samples": downs,
    })
}

/// Changes `percent`% of the 256 KiB blocks of the image at `path`.
fn change_blocks(path: &str, percent: usize, salt: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("image");
    let blocks = (f.metadata().expect("size").len() as usize) / (256 * 1024);
    let step = 100 / percent.max(1);
    let data = vec![salt; 4096];
    for b in (0..blocks).step_by(step) {
        f.write_at(&data, (b * 256 * 1024) as u64).expect("write");
    }
}

async fn offline(agents: &Agents) -> serde_json::Value {
    let name = "bench-offline";
    let image = format!("{}/{name}.img", lab::LOCAL_DIR);
    let host_path = |node: &str| format!("/var/lib/kvmotion-lab/nodes/{node}/local/{name}.img");
    lab(&[
        "exec",
        "node-a",
        "sh",
        "-c",
        &format!("head -c 1073741824 /dev/urandom > {image}"),
    ]);
    let xml = Command::new("bash")
        .arg(kvmotion_tests::repo_root().join("tests/lab/guest/domain.sh"))
        .args([name, lab::lab_up(), "--disk", &image])
        .output()
        .expect("domain.sh");
    let xml_path = std::env::temp_dir().join("kvmotion-bench-offline.xml");
    std::fs::write(&xml_path, &xml.stdout).expect("xml");
    let guest = Guest {
        name: name.into(),
        disk: Some(image.clone()),
        uuid: String::new(),
    };
    let disk = DiskPlan {
        target: "vda".into(),
        path: image.clone(),
        format: "raw".into(),
        capacity_bytes: 1 << 30,
        copy: true,
    };
    let (mut delta, mut full) = (vec![], vec![]);
    for i in 0..rounds().min(3) {
        for use_delta in [i % 2 == 0, i % 2 == 1] {
            // Definition back on node-a, shut off.
            let _ = virsh("node-b", &["undefine", name]);
            let _ = virsh("node-a", &["undefine", name]);
            assert!(
                virsh("node-a", &["define", &xml_path.to_string_lossy()])
                    .status
                    .success()
            );
            if use_delta {
                // The target holds the first pass; 5 % of blocks changed since.
                std::fs::copy(host_path("node-a"), host_path("node-b"))
                    .expect("seeding the target");
                // A real first pass leaves its copy on disk (it syncs every batch).
                std::fs::File::open(host_path("node-b"))
                    .and_then(|f| f.sync_all())
                    .expect("syncing the seed");
                change_blocks(&host_path("node-a"), 5, i as u8 + 1);
            } else {
                let _ = std::fs::remove_file(host_path("node-b"));
            }
            let (wall, _, _) = agent_move(
                agents,
                &guest,
                &format!("bench-off-{i}-{use_delta}"),
                "node-a",
                |d| {
                    d.mode = MigrationMode::Offline;
                    d.disks = vec![disk.clone()];
                },
            )
            .await;
            if use_delta {
                delta.push(wall)
            } else {
                full.push(wall)
            }
            assert!(guest.defined_on("node-b"));
        }
    }
    let ratio = median(&delta) / median(&full);
    println!(
        "offline 1 GiB, 5 % changed: delta {:.2} s / full copy {:.2} s = {ratio:.2}",
        median(&delta),
        median(&full)
    );
    drop(guest);
    json!({
        "offline_stopped_ratio_vs_full_copy": ratio,
        "offline_delta_stopped_s": median(&delta),
        "offline_full_copy_stopped_s": median(&full),
        "offline_delta_samples_s": delta,
        "offline_full_copy_samples_s": full,
    })
}

#[tokio::main]
async fn main() {
    let agents = Agents::start("bench", 0).await;
    // KVMOTION_BENCH_ONLY=idle,hot,offline runs a subset (for investigating).
    let only = std::env::var("KVMOTION_BENCH_ONLY").unwrap_or_else(|_| "idle,hot,offline".into());
    let mut report = serde_json::Map::new();
    for part in only.split(',') {
        let result = match part.trim() {
            "idle" => idle(&agents).await,
            "hot" => hot(&agents).await,
            "offline" => offline(&agents).await,
            other => panic!("unknown bench part {other:?} (idle, hot, offline)"),
        };
        if let serde_json::Value::Object(m) = result {
            report.extend(m);
        }
    }
    report.insert("rounds".into(), json!(rounds()));
    report.insert(
        "guest".into(),
        json!("256 MiB, 1 vCPU, TCG; idle = 16 MiB dirtied at 4 MiB/s, hot = 128 MiB flat out"),
    );
    write_report("agent.json", &serde_json::Value::Object(report));
}
