//! The two-node libvirt lab for tests: started once per test binary by
//! `tests/lab/lab.sh`, guests that clean up after themselves, and the
//! guests' heartbeats read from each node's serial-console log.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The lab's two nodes.
pub const NODES: [&str; 2] = ["node-a", "node-b"];
/// Directory at the same path on both nodes (shared storage).
pub const SHARED_DIR: &str = "/var/lib/kvmotion-lab/shared";
/// Node-local image directory (same path, separate storage per node).
pub const LOCAL_DIR: &str = "/var/lib/kvmotion-local";

/// Migration-network address of a node.
pub fn migration_ip(node: &str) -> &'static str {
    if node == "node-a" {
        "10.99.0.1"
    } else {
        "10.99.0.2"
    }
}

/// Management-network address of a node (agents listen there).
pub fn management_ip(node: &str) -> &'static str {
    if node == "node-a" {
        "10.98.0.1"
    } else {
        "10.98.0.2"
    }
}

/// The state directory of `node`'s agent: under the lab's per-node
/// directory, so the two agents never share records, and removed with the
/// lab.
pub fn agent_state_dir(node: &str) -> String {
    format!("/var/lib/kvmotion-lab/nodes/{node}/agent-state")
}

/// The other node.
pub fn other(node: &str) -> &'static str {
    if node == "node-a" { "node-b" } else { "node-a" }
}

fn script() -> PathBuf {
    crate::repo_root().join("tests/lab/lab.sh")
}

/// The migration link cut (`lab.sh cut`) until dropped, also on a panic.
pub struct Cut(());

impl Cut {
    /// Cuts the link between the nodes.
    pub fn now() -> Cut {
        lab(&["cut"]);
        Cut(())
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = lab_try(&["restore"]);
    }
}

/// The migration link capped at a rate (`lab.sh shape`) until dropped.
pub struct Shaped(());

impl Shaped {
    /// Caps the link at `mbit` megabits per second each way.
    pub fn at(mbit: u32) -> Shaped {
        lab(&["shape", &mbit.to_string()]);
        Shaped(())
    }
}

impl Drop for Shaped {
    fn drop(&mut self) {
        let _ = lab_try(&["unshape"]);
    }
}

/// Lifts the bandwidth cap of `vm`'s running move on `node` through
/// libvirt, behind the agent's back: a test held the move back to act
/// mid-transfer and now lets it finish.
pub fn lift_cap(node: &str, vm: &str) {
    lab(&["virsh", node, "migrate-setspeed", vm, "1000"]);
}

/// Runs `lab.sh ARGS`; returns stdout, panicking with stderr on failure.
pub fn lab(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("running lab.sh");
    assert!(
        out.status.success(),
        "lab.sh {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `lab.sh ARGS`; returns (success, stdout + stderr).
pub fn lab_try(args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("running lab.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Starts the lab once per test binary (it stays up; `make lab-down` or
/// `make test` stop it). Returns the guest kernel/initramfs directory.
pub fn lab_up() -> &'static str {
    static GUEST: OnceLock<String> = OnceLock::new();
    GUEST.get_or_init(|| {
        lab(&["up"]);
        lab(&["guest-dir"]).trim().to_string()
    })
}

/// Holds the lab for one test; released on drop.
pub struct LabLock {
    _in_process: tokio::sync::MutexGuard<'static, ()>,
    _across_processes: std::fs::File,
}

/// Serializes tests that run guests, within this test binary and across
/// test binaries run at once (the lab is one per machine): two cores do not
/// run several TCG guests and migrations at once without skewing every
/// timing.
pub async fn exclusive() -> LabLock {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let in_process = LOCK.lock().await;
    let path = std::env::temp_dir().join("kvmotion-lab.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .expect("the lock task")
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    // Every guest belongs to a test holding this lock: one that exists now
    // was left by a test that failed, and would slow every test after it.
    let (_, strays) = lab_try(&["sweep"]);
    if !strays.trim().is_empty() {
        eprintln!(
            "removed guests an earlier test left behind: {}",
            strays.trim()
        );
    }
    LabLock {
        _in_process: in_process,
        _across_processes: file,
    }
}

/// The sha256 of `path` as `node` sees it.
pub fn sha256(node: &str, path: &str) -> String {
    lab(&["exec", node, "sha256sum", path])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether a file exists at `path` on `node`.
pub fn exists(node: &str, path: &str) -> bool {
    lab_try(&["exec", node, "test", "-e", path]).0
}

/// One heartbeat line of a guest: `HB seq=N boot=X … pass=P bad=B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// Sequence number (advances each second, restarts on reboot).
    pub seq: u64,
    /// Boot id (changes on reboot).
    pub boot: u32,
    /// Completed passes over the dirtied buffer (0: still first-touching it).
    pub pass: u64,
    /// Pages found without the previous pass's stamp: writes a move lost.
    pub bad: u64,
}

/// How a lab guest is built.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Memory the guest dirties, MiB.
    pub dirty_mib: u32,
    /// Dirty rate, MiB/s (0 = flat out).
    pub dirty_rate: u32,
    /// Disk: none, on shared storage, or node-local.
    pub disk: DiskKind,
    /// Disk virtual size, MiB.
    pub disk_mib: u64,
    /// Stamp each heartbeat into the disk (changes blocks while running).
    pub stamp_disk: bool,
    /// MiB of the disk written with data before the guest starts.
    pub prefill_mib: u64,
}

impl GuestSpec {
    /// The disk in the node-local directory instead of shared storage.
    pub fn local_disk(mut self) -> GuestSpec {
        self.disk = DiskKind::Local;
        self
    }

    /// Stamps every heartbeat into the disk, so its blocks change while it runs.
    pub fn stamping(mut self) -> GuestSpec {
        self.stamp_disk = true;
        self
    }

    /// A guest that dirties 128 MiB flat out: faster than a capped link drains.
    pub fn hot() -> GuestSpec {
        GuestSpec {
            dirty_mib: 128,
            dirty_rate: 0,
            ..GuestSpec::default()
        }
    }
}

/// Where a guest's disk lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// No disk.
    None,
    /// qcow2 in the shared directory.
    Shared,
    /// qcow2 in the node-local directory.
    Local,
}

impl Default for GuestSpec {
    fn default() -> Self {
        GuestSpec {
            memory_mib: 256,
            dirty_mib: 16,
            dirty_rate: 4,
            disk: DiskKind::Shared,
            disk_mib: 64,
            stamp_disk: false,
            prefill_mib: 0,
        }
    }
}

/// A running lab guest, destroyed and undefined on both nodes when dropped.
pub struct Guest {
    /// Domain name.
    pub name: String,
    /// Disk path, if any.
    pub disk: Option<String>,
    /// Its UUID.
    pub uuid: String,
}

/// Heartbeats (one a second) a started guest gives before a test may move
/// it: its kernel about seven seconds past boot.
pub const SETTLED_BEATS: u64 = 4;

impl Guest {
    /// Defines and starts a guest on `node`, waiting until its workload is
    /// steady: a heartbeat after its first full pass over the memory it
    /// dirties. A guest moved while its kernel still faults that memory in
    /// for the first time panicked on the target now and then with plain
    /// `virsh migrate` on this lab's software-emulated QEMU
    /// (docs/failure-behaviour.md); the tests move settled guests, as
    /// operators do. Settled also means [`SETTLED_BEATS`] beats after boot:
    /// five of the six faults on record came in guests moved one beat
    /// after it, and none in fifteen moves four beats after it.
    pub async fn start(node: &str, name: &str, spec: &GuestSpec) -> Guest {
        let guest = Guest::define(node, name, spec);
        lab(&["virsh", node, "start", name]);
        guest.settle(node, spec).await;
        guest
    }

    /// Starts one guest per spec on `node`, named `prefix-i`, all booting
    /// at once, and returns them once each is settled as [`Guest::start`]
    /// says: a test that needs several waits for one boot, not one each.
    pub async fn start_all(node: &str, prefix: &str, specs: &[GuestSpec]) -> Vec<Guest> {
        let mut guests = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let guest = Guest::define(node, &format!("{prefix}-{i}"), spec);
            lab(&["virsh", node, "start", &guest.name]);
            guests.push(guest);
        }
        for (guest, spec) in guests.iter().zip(specs) {
            guest.settle(node, spec).await;
        }
        guests
    }

    /// Waits until the guest beats on `node` with its workload steady.
    async fn settle(&self, node: &str, spec: &GuestSpec) {
        let settled = |b: &Beat| (spec.dirty_mib == 0 || b.pass >= 1) && b.seq >= SETTLED_BEATS;
        crate::eventually(
            Duration::from_secs(60),
            &format!("{} to beat on {node} with its workload steady", self.name),
            || async { self.last_beat(node).filter(settled) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.console(node)));
    }

    /// Defines a guest on `node` without starting it, its disk created as
    /// the spec says.
    pub fn define(node: &str, name: &str, spec: &GuestSpec) -> Guest {
        let disk = match spec.disk {
            DiskKind::None => None,
            DiskKind::Shared => Some(format!("{SHARED_DIR}/{name}.qcow2")),
            DiskKind::Local => Some(format!("{LOCAL_DIR}/{name}.qcow2")),
        };
        if let Some(path) = &disk {
            lab(&[
                "exec",
                node,
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                path,
                &format!("{}M", spec.disk_mib),
            ]);
            if spec.prefill_mib > 0 {
                let write = format!("write -P 0x5a 0 {}M", spec.prefill_mib);
                lab(&["exec", node, "qemu-io", "-f", "qcow2", "-c", &write, path]);
            }
        }
        Guest::define_on(node, name, spec, disk)
    }

    /// Defines (does not start) another domain on `node` whose disk is the
    /// file at `disk`, which must exist there: a domain that squats a path.
    pub fn define_using(node: &str, name: &str, disk: &str) -> Guest {
        Guest::define_on(node, name, &GuestSpec::default(), Some(disk.to_string()))
    }

    fn define_on(node: &str, name: &str, spec: &GuestSpec, disk: Option<String>) -> Guest {
        let guest_dir = lab_up();
        let mut args = vec![
            name.to_string(),
            guest_dir.to_string(),
            "--memory".into(),
            spec.memory_mib.to_string(),
            "--dirty-mib".into(),
            spec.dirty_mib.to_string(),
            "--dirty-rate".into(),
            spec.dirty_rate.to_string(),
        ];
        if let Some(path) = &disk {
            args.extend(["--disk".into(), path.clone()]);
            if spec.stamp_disk {
                args.push("--stamp-disk".into());
            }
        }
        let xml = Command::new("bash")
            .arg(crate::repo_root().join("tests/lab/guest/domain.sh"))
            .args(&args)
            .output()
            .expect("domain.sh");
        assert!(
            xml.status.success(),
            "domain.sh: {}",
            String::from_utf8_lossy(&xml.stderr)
        );
        let xml_path = std::env::temp_dir().join(format!("kvmotion-{name}.xml"));
        std::fs::write(&xml_path, &xml.stdout).expect("writing domain XML");
        let defined = lab_try(&["virsh", node, "define", &xml_path.to_string_lossy()]);
        let _ = std::fs::remove_file(&xml_path);
        assert!(defined.0, "virsh define {name} on {node}: {}", defined.1);
        let uuid = lab(&["virsh", node, "domuuid", name]).trim().to_string();
        Guest {
            name: name.to_string(),
            disk,
            uuid,
        }
    }

    /// The serial console log of the guest on `node`.
    pub fn console(&self, node: &str) -> String {
        let path = format!("/var/log/libvirt/qemu/{}-serial.log", self.name);
        lab_try(&["exec", node, "cat", &path]).1
    }

    /// The newest heartbeat in `node`'s console log.
    pub fn last_beat(&self, node: &str) -> Option<Beat> {
        last_beat_in(&self.console(node))
    }

    /// libvirt's state of the domain on `node` ("running", "shut off"…),
    /// or None when the node does not have it.
    pub fn state(&self, node: &str) -> Option<String> {
        let (ok, out) = lab_try(&["virsh", node, "domstate", &self.name]);
        ok.then(|| out.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Whether `node` has the domain defined (persistent).
    pub fn defined_on(&self, node: &str) -> bool {
        let (ok, out) = lab_try(&["virsh", node, "list", "--all", "--persistent", "--name"]);
        ok && out.lines().any(|l| l.trim() == self.name)
    }

    /// Waits until the guest runs on `node` in the boot of `before` (its
    /// heartbeat advances there) and checks that it is defined there and
    /// exists on no other node: a move that ended whole.
    pub async fn moved_whole_to(&self, node: &str, before: Beat) {
        self.beats_on(node, before).await;
        assert_eq!(self.state(node).as_deref(), Some("running"));
        assert!(self.defined_on(node), "{node} lacks the definition");
        for other in NODES.iter().filter(|n| **n != node) {
            assert_eq!(self.state(other), None, "{other} still has the domain");
        }
    }

    /// Waits until the guest's heartbeat advances on `node` past `after`
    /// without a reboot, and checks that its memory is whole there (no page
    /// lost a write): the proof that it runs there as it ran before.
    pub async fn beats_on(&self, node: &str, after: Beat) -> Beat {
        let beat = self.beats_past(node, after).await;
        let console = self.console(node);
        let corrupt: Vec<&str> = console
            .lines()
            .filter(|l| l.starts_with("HB corrupt"))
            .collect();
        assert!(
            beat.bad == 0 && corrupt.is_empty(),
            "{} runs on {node} with {} pages that lost a write:\n{}",
            self.name,
            beat.bad,
            corrupt.join("\n")
        );
        beat
    }

    async fn beats_past(&self, node: &str, after: Beat) -> Beat {
        // A guest whose kernel faulted on `node` and booted again will not
        // beat in `after`'s boot: say so at once instead of at the timeout.
        let outcome = crate::eventually(
            Duration::from_secs(60),
            &format!("{} to beat on {node} after {after:?}", self.name),
            || async {
                let console = self.console(node);
                if let Some(fault) = kernel_fault_since(&console, after.boot) {
                    return Some(Err(fault));
                }
                last_beat_in(&console)
                    .filter(|b| b.boot == after.boot && b.seq > after.seq)
                    .map(Ok)
            },
        )
        .await;
        match outcome {
            Ok(Ok(beat)) => beat,
            Ok(Err(fault)) => panic!(
                "{GUEST_KERNEL_FAULT}: {} faulted on {node} after {after:?} and booted again \
                 (software-emulated QEMU, docs/failure-behaviour.md)\n{fault}",
                self.name
            ),
            Err(e) => {
                let console = self.console(node);
                if let Some(fault) = kernel_fault_after(&console, after.boot) {
                    panic!(
                        "{GUEST_KERNEL_FAULT}: {} faulted on {node} after {after:?} and stopped \
                         beating (software-emulated QEMU, docs/failure-behaviour.md)\n{e}\n{fault}",
                        self.name
                    );
                }
                panic!(
                    "{e}\nconsole on {node}:\n{}\n{}",
                    tail(&console, 10),
                    reboot(&console, after)
                )
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // A guest left mid-migration or stuck must not keep a core busy
        // for the tests after this one.
        let _ = lab_try(&["remove", &self.name]);
        for node in NODES {
            if let Some(disk) = &self.disk {
                let _ = lab_try(&["exec", node, "rm", "-f", disk]);
            }
            let log = format!("/var/log/libvirt/qemu/{}-serial.log", self.name);
            let _ = lab_try(&["exec", node, "rm", "-f", &log]);
        }
    }
}

/// The last heartbeat a console shows.
fn last_beat_in(console: &str) -> Option<Beat> {
    console.lines().rev().find_map(parse_beat)
}

/// Reads `HB seq=N boot=X … pass=P bad=B` (pass and bad read as 0 where
/// the line lacks them: the beat the guest stamps into its disk).
pub fn parse_beat(line: &str) -> Option<Beat> {
    let (mut seq, mut boot, mut pass, mut bad) = (None, None, 0, 0);
    for word in line.split_whitespace() {
        if let Some(v) = word.strip_prefix("seq=") {
            seq = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("boot=") {
            boot = u32::from_str_radix(v, 16).ok();
        } else if let Some(v) = word.strip_prefix("pass=") {
            pass = v.parse().ok()?;
        } else if let Some(v) = word.strip_prefix("bad=") {
            bad = v.parse().ok()?;
        }
    }
    line.starts_with("HB ").then_some(Beat {
        seq: seq?,
        boot: boot?,
        pass,
        bad,
    })
}

/// The words a failed check starts with when a guest's kernel faulted on the
/// node it was moved to and the guest booted again there: the lost write of
/// software-emulated QEMU's dirty tracking that docs/failure-behaviour.md
/// describes. `tests/retry-guest-faults.sh` runs such a test once more.
pub const GUEST_KERNEL_FAULT: &str = "GUEST KERNEL FAULT AFTER THE MOVE";

/// Lines a Linux guest prints when its kernel faults.
const FAULT_LINES: [&str; 5] = [
    "Kernel panic - not syncing",
    "---[ end trace",
    "BUG: ",
    "Oops: ",
    "general protection fault",
];

/// The kernel fault a console shows after the last heartbeat of `boot`
/// when a heartbeat of another boot follows it (the guest faulted and
/// started again), with the lines around it; None while the console shows
/// no such thing (earlier boots before `boot`'s last beat do not count).
pub fn kernel_fault_since(console: &str, boot: u32) -> Option<String> {
    let lines: Vec<&str> = console.lines().collect();
    let fault = first_fault_after_last_beat(&lines, boot)?;
    let again = fault
        + lines[fault..]
            .iter()
            .position(|l| parse_beat(l).is_some_and(|b| b.boot != boot))?;
    Some(lines[fault.saturating_sub(5)..=again.min(fault + 40)].join("\n"))
}

/// The kernel fault a console shows after the last heartbeat of `boot`,
/// whether or not the guest started again: a fault in a process (not in
/// an interrupt) kills the heartbeat and leaves the kernel running, so
/// the heartbeat just stops. For a guest that stopped beating.
pub fn kernel_fault_after(console: &str, boot: u32) -> Option<String> {
    let lines: Vec<&str> = console.lines().collect();
    let fault = first_fault_after_last_beat(&lines, boot)?;
    Some(lines[fault.saturating_sub(5)..lines.len().min(fault + 40)].join("\n"))
}

/// Where the first fault line after the last heartbeat of `boot` is.
fn first_fault_after_last_beat(lines: &[&str], boot: u32) -> Option<usize> {
    let from = lines
        .iter()
        .rposition(|l| parse_beat(l).is_some_and(|b| b.boot == boot))
        .map_or(0, |i| i + 1);
    Some(
        from + lines[from..]
            .iter()
            .position(|l| FAULT_LINES.iter().any(|f| l.contains(f)))?,
    )
}

/// What a console shows around the first heartbeat of another boot than
/// `after`'s: a guest that restarted prints why before it.
fn reboot(console: &str, after: Beat) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let Some(at) = lines
        .iter()
        .position(|l| parse_beat(l).is_some_and(|b| b.boot != after.boot))
    else {
        return format!("(no heartbeat of another boot than {:x})", after.boot);
    };
    format!(
        "--- the first heartbeat of another boot, with what came before it ---\n{}",
        lines[at.saturating_sub(40)..=at].join("\n")
    )
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_lines_parse() {
        assert_eq!(
            parse_beat("HB seq=12 boot=2d767299 dirty_mib=64 rate=20 pass=7 bad=2"),
            Some(Beat {
                seq: 12,
                boot: 0x2d767299,
                pass: 7,
                bad: 2,
            })
        );
        assert_eq!(
            parse_beat("HB seq=3 boot=0000000a"),
            Some(Beat {
                seq: 3,
                boot: 10,
                pass: 0,
                bad: 0,
            })
        );
        assert_eq!(parse_beat("HB corrupt page=5 want=3 got=0 pass=4"), None);
        assert_eq!(parse_beat("kvmotion lab guest up"), None);
        assert_eq!(parse_beat("HB error=malloc"), None);
    }

    const OLD: &str = "HB seq=1 boot=0000000a pass=1 bad=0";
    const FAULT: &str = "[    5.69] Kernel panic - not syncing: Fatal exception in interrupt";
    const NEW: &str = "HB seq=0 boot=0000000b pass=1 bad=0";

    #[test]
    fn a_fault_then_another_boot_after_the_last_beat_is_a_kernel_fault() {
        let console = [
            OLD,
            "[    5.69] RIP: 0010:0x0",
            FAULT,
            "kvmotion lab guest up",
            NEW,
        ]
        .join("\n");
        let fault = kernel_fault_since(&console, 10).expect("a fault");
        assert!(
            fault.contains("RIP: 0010:0x0") && fault.ends_with(NEW),
            "{fault}"
        );
        // The arriving guest faulted before its first beat there.
        let arrived = [FAULT, NEW].join("\n");
        assert!(kernel_fault_since(&arrived, 10).is_some());
    }

    #[test]
    fn a_fault_that_only_stopped_the_heartbeat_is_a_kernel_fault_once_it_stopped() {
        let oops = "[   15.65] Oops: 0000 [#1] PREEMPT SMP NOPTI";
        let console = [
            OLD,
            oops,
            "[   15.66] note: heartbeat[1] exited with irqs disabled",
        ]
        .join("\n");
        let fault = kernel_fault_after(&console, 10).expect("a fault");
        assert!(
            fault.contains("Oops") && fault.contains("exited"),
            "{fault}"
        );
        assert_eq!(
            kernel_fault_since(&console, 10),
            None,
            "no other boot followed"
        );
        let healthy = [oops, OLD].join("\n");
        assert_eq!(
            kernel_fault_after(&healthy, 10),
            None,
            "a fault before the last beat"
        );
    }

    #[test]
    fn no_kernel_fault_without_a_fault_line_or_before_the_guest_starts_again() {
        // Offline moves boot anew without any fault.
        assert_eq!(kernel_fault_since(&[OLD, NEW].join("\n"), 10), None);
        // Faulting, not yet up again: the wait goes on.
        assert_eq!(kernel_fault_since(&[OLD, FAULT].join("\n"), 10), None);
        // An earlier boot's fault before this boot's last beat is history.
        let history = [FAULT, NEW, "HB seq=2 boot=0000000b pass=1 bad=0"].join("\n");
        assert_eq!(kernel_fault_since(&history, 11), None);
    }
}
