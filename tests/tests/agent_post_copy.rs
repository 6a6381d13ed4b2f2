//! Post-copy recovery on the lab: a live migration whose post-copy phase
//! loses its link is resumed (by the agent through libvirt, or by QEMU's
//! own stream once the link returns) and ends with the guest running on the
//! target in the same boot, defined only there; past the policy's bound it
//! fails honestly, and the guest still ends on one node. An agent restarted
//! while the move is split takes the recovery up.

use std::time::Duration;

use kvmotion_api::agent::{JobPhase, JobStatus};
use kvmotion_api::migration::TransferMode;
use kvmotion_tests::agent::{AgentProcess, Agents, Drive};
use kvmotion_tests::lab::{Cut, Guest, GuestSpec, Shaped, exclusive, lab};

/// Starts a move of `guest` that is switched to post-copy as soon as data
/// flows; returns once the agent reports post-copy.
async fn in_post_copy(agents: &Agents, guest: &Guest, id: &str, bound_s: u32) -> Drive {
    let mut drive = Drive::new(id, guest, "node-a").held_back(30);
    drive.tuning.post_copy = true;
    drive.tuning.post_copy_recovery_timeout_seconds = bound_s;
    let (code, body) = drive.start(agents).await;
    assert_eq!(code, 200, "{body}");
    drive.wait_for_data(agents, 8 << 20).await;
    let path = format!("/v1/migrations/{}", drive.id);
    let (code, body) = agents
        .a
        .as_controller("POST", &format!("{path}/force-complete"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    until(agents, &drive, Duration::from_secs(30), "post-copy", |s| {
        s.progress.mode == TransferMode::PostCopy
    })
    .await;
    drive
}

/// What a scene holds until the test ends: the link's shaping, then the
/// lab (a tuple drops its fields in order).
type Held = (Shaped, kvmotion_tests::lab::LabLock);

/// One scene of these tests: the lab held, both agents up, the link shaped
/// to `mbit`, a hot guest on node-a whose move `name-1` is in post-copy.
/// Bind `Held` first so that it drops after the guest.
async fn scene(
    line: u32,
    name: &str,
    mbit: u32,
    bound_s: u32,
) -> (Held, Agents, Guest, kvmotion_tests::lab::Beat, Drive) {
    let lab = exclusive().await;
    let agents = Agents::start(module_path!(), line).await;
    let slow = Shaped::at(mbit);
    let guest = Guest::start("node-a", name, &GuestSpec::hot()).await;
    let before = guest.last_beat("node-a").expect("beating");
    let drive = in_post_copy(&agents, &guest, &format!("{name}-1"), bound_s).await;
    ((slow, lab), agents, guest, before, drive)
}

/// Lifts the link's cap once the split it was there to catch exists: what
/// follows proves the recovery, not its speed, and the rest of the guest's
/// memory then crosses in seconds instead of most of a minute.
fn lift(slow: Shaped) {
    drop(slow);
}

/// Whether the job took an action whose record starts with `prefix`.
fn took(s: &JobStatus, prefix: &str) -> bool {
    s.actions.iter().any(|a| a.starts_with(prefix))
}

/// Waits until the job took an action starting with `prefix`.
async fn until_took(agents: &Agents, drive: &Drive, within: Duration, prefix: &str) -> JobStatus {
    until(agents, drive, within, prefix, |s| took(s, prefix)).await
}

/// Waits until the job's status satisfies `pred`; returns that status.
async fn until(
    agents: &Agents,
    drive: &Drive,
    within: Duration,
    what: &str,
    pred: impl Fn(&JobStatus) -> bool,
) -> JobStatus {
    let path = format!("/v1/migrations/{}", drive.id);
    kvmotion_tests::eventually(within, what, || async {
        let (_, s) = agents.a.as_controller("GET", &path, None).await;
        let s: JobStatus = serde_json::from_value(s).ok()?;
        pred(&s).then_some(s)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agents.a.log_text()))
}

#[tokio::test]
async fn a_post_copy_whose_stream_broke_is_resumed_by_the_agent() {
    let ((slow, _lab), agents, guest, before, drive) = scene(line!(), "pc-resume", 80, 300).await;

    // What a broken stream does to post-copy, deterministically: QEMU
    // pauses the migration on both sides, libvirt marks post-copy failed.
    lab(&["virsh", "node-a", "domjobabort", "--postcopy", &guest.name]);
    lift(slow);
    let (done, history) = drive.wait(&agents, Duration::from_secs(240)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert!(
        history
            .iter()
            .any(|s| s.progress.mode == TransferMode::PostCopyPaused),
        "the split was reported while it lasted: {history:?}"
    );
    assert!(
        took(&done, "PostCopyResume(attempt"),
        "the agent resumed it: {:?}",
        done.actions
    );
    let result = done.result.clone().expect("result");
    assert_eq!(result.post_copy_recoveries, 1, "{result:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-b"), "{done:?}");
    guest.moved_whole_to("node-b", before).await;
}

#[tokio::test]
async fn a_link_cut_during_post_copy_and_restored_ends_with_the_guest_moved() {
    let ((slow, _lab), agents, guest, before, drive) = scene(line!(), "pc-cut", 40, 300).await;

    let cut = Cut::now();
    // libvirt's keepalive between the daemons notices the dead link.
    let split = until(
        &agents,
        &drive,
        Duration::from_secs(120),
        "the split reported",
        |s| s.progress.mode == TransferMode::PostCopyPaused,
    )
    .await;
    assert_eq!(
        split.phase,
        JobPhase::Running,
        "recovery keeps the job: {split:?}"
    );
    assert!(
        split
            .message
            .as_deref()
            .is_some_and(|m| m.contains("split between node-a and node-b")),
        "{split:?}"
    );
    lift(slow);
    drop(cut);
    let (done, _) = drive.wait(&agents, Duration::from_secs(300)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    let result = done.result.clone().expect("result");
    assert!(result.post_copy_recoveries >= 1, "{result:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-b"), "{done:?}");
    guest.moved_whole_to("node-b", before).await;
}

#[tokio::test]
async fn a_post_copy_split_past_its_recovery_bound_fails_saying_where_the_guest_is() {
    let ((slow, _lab), agents, guest, before, drive) = scene(line!(), "pc-bound", 40, 5).await;

    let cut = Cut::now();
    let (done, _) = drive.wait(&agents, Duration::from_secs(150)).await;

    assert_eq!(done.phase, JobPhase::Failed, "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("PostCopyLinkLost"), "{done:?}");
    assert_eq!(done.vm_node, None, "on neither node alone: {done:?}");
    assert_eq!(done.progress.mode, TransferMode::PostCopyPaused);
    let message = done.message.clone().unwrap_or_default();
    for needed in [
        "node-a",
        "node-b",
        "--postcopy-resume",
        "gave up",
        "never start or destroy",
    ] {
        assert!(message.contains(needed), "{needed:?} missing: {message}");
    }
    // As libvirt says: paused on the source, its other half on the target.
    assert_eq!(guest.state("node-a").as_deref(), Some("paused"));
    assert!(guest.state("node-b").is_some(), "the target's half is gone");

    // Once the link is back the guest is not lost: QEMU's stream, or the
    // command the message gives, finishes the move. Its speed is not what
    // this proves, so the cap goes too.
    drop(cut);
    drop(slow);
    let tried = std::cell::RefCell::new(Vec::<String>::new());
    let finished = kvmotion_tests::eventually(
        Duration::from_secs(240),
        "the guest to finish moving to node-b",
        || async {
            if split_on_source(&guest) {
                let (ok, out) = kvmotion_tests::lab::lab_try(&[
                    "virsh",
                    "node-a",
                    "migrate",
                    "--live",
                    "--p2p",
                    "--persistent",
                    "--undefinesource",
                    "--postcopy",
                    "--postcopy-resume",
                    &guest.name,
                    "qemu+tcp://10.99.0.2/system",
                ]);
                tried
                    .borrow_mut()
                    .push(format!("resume ok={ok}: {}", out.trim()));
            }
            (guest.state("node-b").as_deref() == Some("running")
                && guest.state("node-a").as_deref() != Some("paused"))
            .then_some(())
        },
    )
    .await;
    if let Err(e) = finished {
        panic!(
            "{e}\nresumes: {:#?}\nnode-a: {}\nnode-b: {}",
            tried.borrow(),
            migration_state("node-a", &guest),
            migration_state("node-b", &guest)
        );
    }
    guest.beats_on("node-b", before).await;
}

#[tokio::test]
async fn a_post_copy_split_found_by_a_restarted_agent_is_resumed() {
    let ((slow, _lab), mut agents, guest, before, drive) =
        scene(line!(), "pc-adopt", 80, 300).await;

    // The agent dies in post-copy (libvirt carries the job on), and the
    // stream breaks while it is away: the restarted agent finds the split.
    agents.a.kill().await;
    lab(&["virsh", "node-a", "domjobabort", "--postcopy", &guest.name]);
    assert_eq!(guest.state("node-a").as_deref(), Some("paused"));
    lift(slow);
    agents.a = AgentProcess::restart("node-a", "pc-adopt", &[]).await;
    let (done, _) = drive.wait(&agents, Duration::from_secs(240)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    for needed in ["Adopted", "PostCopyResume(attempt"] {
        assert!(
            done.actions.iter().any(|a| a.starts_with(needed)),
            "{needed:?} missing: {:?}",
            done.actions
        );
    }
    let result = done.result.clone().expect("result");
    assert_eq!(result.post_copy_recoveries, 1, "{result:?}");
    assert_eq!(done.vm_node.as_deref(), Some("node-b"), "{done:?}");
    guest.moved_whole_to("node-b", before).await;
}

/// Whether the source holds its half of a post-copy that broke (the
/// state the resume command is for), as `virsh domstate --reason` says.
fn split_on_source(guest: &Guest) -> bool {
    let (ok, out) =
        kvmotion_tests::lab::lab_try(&["virsh", "node-a", "domstate", "--reason", &guest.name]);
    ok && out.contains("paused") && out.contains("failed")
}

/// What libvirt and QEMU say of `guest`'s migration on `node`, for a
/// failure message.
fn migration_state(node: &str, guest: &Guest) -> String {
    let ask = |args: &[&str]| {
        let mut all = vec!["virsh", node];
        all.extend_from_slice(args);
        kvmotion_tests::lab::lab_try(&all).1.trim().to_string()
    };
    format!(
        "{} | {} | {}",
        ask(&["domstate", "--reason", &guest.name]),
        ask(&["domjobinfo", &guest.name]).replace('\n', "; "),
        ask(&["qemu-monitor-command", "--hmp", &guest.name, "info migrate"]).replace('\n', "; "),
    )
}

/// Sends `signal` to the QEMU of `guest` on `node`.
fn signal_qemu(node: &str, guest: &Guest, signal: &str) {
    let pid = lab(&["qemu-pid", node, &guest.name]);
    let status = std::process::Command::new("kill")
        .args([signal, pid.trim()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// A guest's QEMU on one node stopped (SIGSTOP) until dropped, so that a
/// failing test still leaves it to be cleaned up.
struct Stopped<'a>(&'a str, &'a Guest);

impl<'a> Stopped<'a> {
    fn now(node: &'a str, guest: &'a Guest) -> Stopped<'a> {
        signal_qemu(node, guest, "-STOP");
        Stopped(node, guest)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        signal_qemu(self.0, self.1, "-CONT");
    }
}

#[tokio::test]
async fn a_split_whose_target_qemu_hangs_is_reported_and_recovered_once_it_answers() {
    let ((slow, _lab), agents, guest, before, drive) = scene(line!(), "pc-hang", 80, 300).await;

    // A target QEMU that answers nothing (a hung process or host) makes
    // libvirt wait: the call of the broken move does not return.
    let stopped = Stopped::now("node-b", &guest);
    lab(&["virsh", "node-a", "domjobabort", "--postcopy", &guest.name]);
    until_took(
        &agents,
        &drive,
        Duration::from_secs(90),
        "MigrationCallAbandoned",
    )
    .await;
    lift(slow);
    // A resume asked of a target whose QEMU cannot answer would hang in
    // libvirt for good: none is asked while it hangs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let watched = until(
        &agents,
        &drive,
        Duration::from_secs(10),
        "its status",
        |_| true,
    )
    .await;
    assert!(!took(&watched, "PostCopyResume(attempt"), "{watched:?}");
    assert_eq!(watched.phase, JobPhase::Running, "{watched:?}");
    assert_eq!(watched.progress.mode, TransferMode::PostCopyPaused);
    assert!(
        watched
            .message
            .as_deref()
            .is_some_and(|m| m.contains("split between node-a and node-b")),
        "{watched:?}"
    );
    drop(stopped);
    let (done, _) = drive.wait(&agents, Duration::from_secs(240)).await;

    assert_eq!(done.phase, JobPhase::Completed, "{done:?}");
    assert!(
        took(&done, "PostCopyResume(attempt 1)"),
        "resumed by the agent once the target answered: {done:?}"
    );
    assert_eq!(done.vm_node.as_deref(), Some("node-b"), "{done:?}");
    guest.moved_whole_to("node-b", before).await;
}
