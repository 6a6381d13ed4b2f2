//! `kubectl migrate` against the real apiserver and the lab: a followed
//! live migration with its progress and result, `list` and `status`,
//! prechecks that fail with their reason, cancellation, errors for unknown
//! names, and every command's --help, also through kubectl's plugin lookup.

use std::time::Duration;

use kvmotion_tests::e2e::Rig;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use kvmotion_tests::plugin::{Background, Run, command, run, via_kubectl};
use kvmotion_tests::scope::SCOPE_LABEL;
use kvmotion_tests::{Scope, control_plane};
use serde_json::json;

const QUICK: Duration = Duration::from_secs(30);
const MIGRATION: Duration = Duration::from_secs(180);

/// Creates a MigrationPolicy in the rig's scope; returns its name.
fn policy(rig: &Rig, base: &str, tuning: serde_json::Value) -> String {
    let (obj, name) = rig.scope.adopt(
        &json!({
            "apiVersion": "kvmotion.io/v1alpha1",
            "kind": "MigrationPolicy",
            "metadata": {"name": base},
            "spec": {"tuning": tuning},
        })
        .to_string(),
    );
    let out = rig
        .scope
        .kubectl(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(out.ok, "{}", out.stderr);
    name
}

/// The `list` row of migration `name`, split into its cells.
fn row(list: &Run, name: &str) -> Vec<String> {
    list.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}: {list}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_followed_live_migration_shows_progress_and_result_then_list_and_status_show_it() {
    let _lab = exclusive().await;
    let rig = Rig::start("plugin-live", &[]).await;
    let cp = rig.scope.cp;
    let guest = Guest::start("node-a", "e2e-plugin", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-plugin").await;
    let before = guest.last_beat("node-a").expect("beating");
    // A capped link keeps the job running for some seconds, so progress
    // is mirrored while the plugin follows.
    let steady = policy(&rig, "steady", json!({"bandwidthMiBps": 16}));
    let label = format!("{SCOPE_LABEL}={}", rig.scope.id);

    let moved = run(
        command(
            cp,
            &[
                "e2e-plugin",
                "--to",
                "node-b",
                "--policy",
                &steady,
                "--label",
                &label,
                "--wait",
            ],
        ),
        MIGRATION,
    )
    .await;
    assert_eq!(moved.code, Some(0), "{moved}\n{}", rig.logs());
    let lines: Vec<&str> = moved.stdout.lines().collect();
    let name = lines.first().map_or_else(String::new, |l| l.to_string());
    assert!(name.starts_with("e2e-plugin-"), "{moved}");
    // Not a terminal: one line per change, no carriage returns.
    assert!(!moved.stdout.contains('\r'), "{moved}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Migrating") && l.contains("% ") && l.contains("MiB of")),
        "no progress line: {moved}"
    );
    assert!(
        moved
            .stdout
            .contains("Succeeded: e2e-plugin runs on node-b (moved from node-a)"),
        "{moved}"
    );
    let result = lines
        .iter()
        .find(|l| l.starts_with("Result: duration "))
        .unwrap_or_else(|| panic!("no result line: {moved}"));
    assert!(
        result.contains("downtime ") && result.contains("MiB transferred"),
        "{result}"
    );
    guest.beats_on("node-b", before).await;

    // list, read through $KUBECONFIG, filtered to this scope.
    let list = run(command(cp, &["list", "-l", &label]), QUICK).await;
    assert_eq!(list.code, Some(0), "{list}");
    let header: Vec<&str> = list
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "VM", "SOURCE", "TARGET", "PHASE", "PROGRESS", "AGE"]
    );
    let cells = row(&list, &name);
    assert_eq!(
        &cells[..5],
        [name.as_str(), "e2e-plugin", "node-a", "node-b", "Succeeded"],
        "{list}"
    );

    // status, with the kubeconfig given as a flag.
    let kubeconfig = cp.kubeconfig.to_string_lossy().into_owned();
    let mut flagged = command(cp, &["status", &name, "--kubeconfig", &kubeconfig]);
    flagged.env_remove("KUBECONFIG");
    let status = run(flagged, QUICK).await;
    assert_eq!(status.code, Some(0), "{status}");
    for want in [
        "Phase:    Succeeded",
        "Source:   node-a",
        "Target:   node-b",
        &format!("Policy:   {steady} (bandwidth 16 MiB/s"),
        "Phases:   Pending → Scheduling → Prechecking → Preparing → Migrating → Finalizing → Succeeded",
        "Result:   duration ",
    ] {
        assert!(status.stdout.contains(want), "no {want:?} in {status}");
    }
    let completed = status
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("Completed "))
        .unwrap_or_else(|| panic!("no Completed condition: {status}"));
    let cells: Vec<&str> = completed.split_whitespace().collect();
    assert_eq!(
        &cells[..3],
        ["Completed", "True", "Succeeded"],
        "{completed}"
    );
    assert!(completed.contains("the VM runs on node-b"), "{completed}");

    // Prechecks that fail: the exit code says Failed, stderr the reason.
    // The source's inventory must have let go of the VM first, or the
    // controller waits for the two to agree.
    rig.wait_settled("node-b", "e2e-plugin").await;
    let cases = [
        ("e2e-plugin", "no-such-node", "Failed: TargetNotFound: "),
        ("no-such-vm", "node-a", "Failed: VMNotFound: "),
    ];
    for (vm, to, want) in cases {
        let failed = run(
            command(cp, &[vm, "--to", to, "--label", &label, "--wait"]),
            QUICK,
        )
        .await;
        assert_eq!(
            failed.code,
            Some(1),
            "{vm} to {to}: {failed}\n{}",
            rig.logs()
        );
        assert!(failed.stderr.contains(want), "{vm} to {to}: {failed}");
    }
    assert_eq!(guest.state("node-b").as_deref(), Some("running"));
}

#[tokio::test]
async fn cancel_aborts_a_running_migration_and_its_follower_exits_cancelled() {
    let _lab = exclusive().await;
    let rig = Rig::start("plugin-cancel", &[]).await;
    let cp = rig.scope.cp;
    let guest = Guest::start("node-a", "e2e-plugin-cancel", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-plugin-cancel").await;
    // Slow enough to be caught mid-copy, and never timing out on its own.
    let held = policy(
        &rig,
        "held",
        json!({"bandwidthMiBps": 1, "postCopy": false, "progressTimeoutSeconds": 0,
               "completionTimeoutPerGiBSeconds": 0, "onTimeout": "Abort"}),
    );
    let label = format!("{SCOPE_LABEL}={}", rig.scope.id);

    let mut follower = Background::spawn(command(
        cp,
        &[
            "e2e-plugin-cancel",
            "--to",
            "node-b",
            "--policy",
            &held,
            "--label",
            &label,
            "--wait",
        ],
    ));
    let name = follower.line(QUICK).await;
    assert!(name.starts_with("e2e-plugin-cancel-"), "{name}");
    rig.wait_moving(&name).await;
    let before = guest.last_beat("node-a").expect("beating");

    let cancel = run(command(cp, &["cancel", &name, "--wait"]), MIGRATION).await;
    assert_eq!(cancel.code, Some(0), "{cancel}\n{}", rig.logs());
    assert!(
        cancel.stdout.contains("Cancelled: deleted while Migrating"),
        "{cancel}"
    );
    assert!(cancel.stdout.contains("Settled: VMLocated"), "{cancel}");

    let followed = follower.finish(QUICK).await;
    assert_eq!(followed.code, Some(3), "{followed}");
    assert!(followed.stderr.contains("Cancelled"), "{followed}");
    assert!(followed.stdout.contains("Migrating"), "{followed}");

    guest.beats_on("node-a", before).await;
    assert_eq!(guest.state("node-b"), None, "the target holds no domain");
    let gone = run(command(cp, &["status", &name]), QUICK).await;
    assert_eq!(gone.code, Some(4), "{gone}");
}

#[tokio::test]
async fn drain_prints_the_plan_of_a_dry_run_and_leaves_nothing_then_waits_until_the_node_is_empty()
{
    let _lab = exclusive().await;
    let rig = Rig::start("plugin-drain", &[]).await;
    let cp = rig.scope.cp;
    let mut guests = Vec::new();
    for (name, mib) in [("pd-small", 192), ("pd-large", 320)] {
        let spec = GuestSpec {
            memory_mib: mib,
            ..GuestSpec::default()
        };
        let g = Guest::start("node-a", name, &spec).await;
        rig.wait_inventory("node-a", name).await;
        guests.push(g);
    }
    let label = format!("{SCOPE_LABEL}={}", rig.scope.id);

    let dry = run(
        command(cp, &["drain", "node-a", "--dry-run", "--label", &label]),
        MIGRATION,
    )
    .await;
    assert_eq!(dry.code, Some(0), "{dry}\n{}", rig.logs());
    let lines: Vec<&str> = dry.stdout.lines().collect();
    assert!(
        lines[0].starts_with("nodeevacuation/drain-node-a-") && lines[0].ends_with(" created"),
        "{dry}"
    );
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(header, ["VM", "MEMORY", "MODE", "TARGET"], "{dry}");
    // Largest first, both to node-b, live.
    let rows: Vec<Vec<&str>> = lines[2..4]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["pd-large", "320.0", "MiB", "Live", "node-b"],
        "{dry}"
    );
    assert_eq!(
        rows[1],
        ["pd-small", "192.0", "MiB", "Live", "node-b"],
        "{dry}"
    );
    assert_eq!(
        lines.last(),
        Some(&"dry run of node-a: nothing moved"),
        "{dry}"
    );
    let left = rig
        .scope
        .kubectl(&["get", "nevac", "-l", &label, "-o", "name"], None);
    assert!(
        left.ok && left.stdout.trim().is_empty(),
        "the dry run left {}",
        left.stdout
    );
    let befores: Vec<_> = guests
        .iter()
        .map(|g| {
            assert_eq!(g.state("node-a").as_deref(), Some("running"));
            g.last_beat("node-a").expect("beating")
        })
        .collect();

    let moved = run(
        command(cp, &["drain", "node-a", "--wait", "--label", &label]),
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(moved.code, Some(0), "{moved}\n{}", rig.logs());
    for vm in ["pd-large", "pd-small"] {
        assert!(
            moved
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("{vm}: Succeeded (drain-node-a-"))),
            "no Succeeded line for {vm}: {moved}"
        );
    }
    assert!(
        moved
            .stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("node-a evacuated: 2 VMs moved in ")),
        "{moved}"
    );
    for (g, before) in guests.iter().zip(befores) {
        g.moved_whole_to("node-b", before).await;
    }
}

#[tokio::test]
async fn unknown_names_and_contexts_are_clear_errors() {
    let scope = Scope::new("plugin-unknown");
    let cp = scope.cp;
    let missing = scope.name("missing");
    for cmd in ["cancel", "status"] {
        let out = run(command(cp, &[cmd, &missing]), QUICK).await;
        assert_eq!(out.code, Some(4), "{cmd}: {out}");
        assert_eq!(
            out.stderr.trim(),
            format!(
                "error: finding VirtualMachineMigration {missing}: there is none (`kubectl migrate list` shows them)"
            ),
            "{cmd}"
        );
        assert!(out.stdout.is_empty(), "{cmd}: {out}");
    }
    let out = run(
        command(cp, &["status", &missing, "--context", "no-such-context"]),
        QUICK,
    )
    .await;
    assert_eq!(out.code, Some(4), "{out}");
    assert!(
        out.stderr.starts_with("error: loading the kubeconfig: ")
            && out.stderr.contains("no-such-context"),
        "{out}"
    );
    // A label without a value is a usage error, caught before the cluster.
    let out = run(command(cp, &["vm", "--label", "no-equals-sign"]), QUICK).await;
    assert_eq!(out.code, Some(2), "{out}");
    // The apiserver's own message when it refuses the object.
    let out = run(command(cp, &["vm", "--label", "bad key=x"]), QUICK).await;
    assert_eq!(out.code, Some(4), "{out}");
    assert!(
        out.stderr
            .starts_with("error: creating a migration of VM vm: ")
            && out.stderr.contains("bad key"),
        "{out}"
    );
}

#[tokio::test]
async fn every_command_has_help_and_kubectl_finds_the_plugin() {
    let cp = control_plane();
    let commands: [&[&str]; 7] = [
        &["--help"],
        &["start", "--help"],
        &["list", "--help"],
        &["status", "--help"],
        &["cancel", "--help"],
        &["drain", "--help"],
        &["help", "cancel"],
    ];
    for args in commands {
        let out = run(command(cp, args), QUICK).await;
        assert_eq!(out.code, Some(0), "{args:?}: {out}");
        assert!(
            out.stdout.contains("Usage: kubectl migrate"),
            "{args:?}: {out}"
        );
        assert!(out.stdout.contains("Exit codes:"), "{args:?}: {out}");
    }
    let top = run(command(cp, &["--help"]), QUICK).await;
    for flag in [
        "--to",
        "--offline",
        "--policy",
        "--wait",
        "--label",
        "--kubeconfig",
        "--context",
    ] {
        assert!(top.stdout.contains(flag), "{flag} undocumented: {top}");
    }
    let bare = run(command(cp, &[]), QUICK).await;
    assert_eq!(bare.code, Some(2), "{bare}");

    let via = run(via_kubectl(cp, &["migrate", "--help"]), QUICK).await;
    assert_eq!(via.code, Some(0), "{via}");
    assert!(via.stdout.contains("Usage: kubectl migrate"), "{via}");
    let listed = run(via_kubectl(cp, &["plugin", "list"]), QUICK).await;
    assert!(listed.stdout.contains("kubectl-migrate"), "{listed}");
}
