//! What the benchmark binaries share: medians, the round count, raw virsh
//! on a lab node, and writing the report.

use std::process::{Command, Output};
use std::time::Instant;

use crate::lab::{self, lab};

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Rounds per comparison: `KVMOTION_BENCH_ROUNDS`, else 20 (the lab's
/// single rounds scatter from 1.8 to 3.4 s; 8 rounds moved the median by
/// up to 15 %).
pub fn rounds() -> usize {
    rounds_from("KVMOTION_BENCH_ROUNDS", 20)
}

/// Rounds from the environment variable `var`, else `default`.
pub fn rounds_from(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// `virsh -c <node's socket>`: no shell or nsenter in the timed path.
pub fn virsh(node: &str, args: &[&str]) -> Output {
    let socket = lab(&["socket", node]).trim().to_string();
    Command::new("virsh")
        .arg("-c")
        .arg(format!("qemu+unix:///system?socket={socket}"))
        .args(args)
        .output()
        .expect("virsh")
}

/// `virsh migrate --live --p2p` of `name` from `from` to `to`, plus `extra`
/// flags; returns the wall time in seconds.
pub fn virsh_migrate(from: &str, to: &str, name: &str, extra: &[&str]) -> f64 {
    let uri = format!("qemu+tcp://{}/system", lab::migration_ip(to));
    let mut args = vec![
        "migrate",
        "--live",
        "--p2p",
        "--persistent",
        "--undefinesource",
    ];
    args.extend_from_slice(extra);
    args.extend([name, uri.as_str()]);
    let t = Instant::now();
    let out = virsh(from, &args);
    let wall = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "virsh migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wall
}

/// The downtime of the last migration of `name`, as `virsh domjobinfo
/// --completed` on `node` (where it arrived) reports it; NaN when it does not.
pub fn virsh_downtime_ms(node: &str, name: &str) -> f64 {
    let out = String::from_utf8_lossy(&virsh(node, &["domjobinfo", "--completed", name]).stdout)
        .into_owned();
    out.lines()
        .find(|l| l.starts_with("Total downtime:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Sets the keys of `part` in `target/bench/<file>`, keeping the others
/// (benchmarks that fill one file in parts); prints the whole.
pub fn merge_report(file: &str, part: serde_json::Value) {
    let path = crate::repo_root().join("target/bench").join(file);
    let mut whole: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let serde_json::Value::Object(keys) = part {
        whole.extend(keys);
    }
    write_report(file, &serde_json::Value::Object(whole));
}

/// Writes `report` to `target/bench/<file>` and prints it.
pub fn write_report(file: &str, report: &serde_json::Value) {
    let dir = crate::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let text = serde_json::to_string_pretty(report).expect("json");
    std::fs::write(dir.join(file), &text).unwrap_or_else(|e| panic!("writing {file}: {e}"));
    println!("{text}");
}

/// The states of the one object `name` of `api`, as a watch delivers
/// them: started before the object is created, so no change is missed.
pub fn watch_one<K>(
    api: &kube::Api<K>,
    name: &str,
) -> impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + use<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::runtime::{WatchStreamExt, watcher};
    watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
}
