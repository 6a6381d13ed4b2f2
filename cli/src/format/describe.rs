//! `kubectl migrate status NAME`: one migration, described.

use kvmotion_api::VirtualMachineMigration;
use kvmotion_api::migration::AppliedPolicy;

use super::progress::figures;
use super::summary::{prediction_line, result_line};
use super::table::render;
use super::units::{age, bytes, millis, secs_between};
use super::{phase_label, source_node, target_node, vm_name};

/// Phase, nodes, policy, progress, result and every condition with its
/// reason and message.
pub fn describe(m: &VirtualMachineMigration, now: jiff::Timestamp) -> String {
    let status = m.status.as_ref();
    let mut fields: Vec<(&str, String)> = vec![
        ("Name", m.metadata.name.clone().unwrap_or_default()),
        ("VM", vm_field(m)),
        ("Mode", format!("{:?}", m.spec.mode)),
        ("Phase", phase_label(m).to_string()),
        ("Source", source_node(m).unwrap_or("-").to_string()),
        (
            "Target",
            target_node(m)
                .unwrap_or("(chosen by the controller)")
                .to_string(),
        ),
        ("Policy", policy_field(m)),
    ];
    let mut time = |label, t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        if let Some(t) = t {
            fields.push((
                label,
                format!("{} ({} ago)", t.0, age(secs_between(t.0, now))),
            ));
        }
    };
    time("Created", m.metadata.creation_timestamp.as_ref());
    time("Started", status.and_then(|s| s.start_time.as_ref()));
    time("Ended", status.and_then(|s| s.completion_time.as_ref()));
    if let Some(s) = status.filter(|s| !s.phase_transition_times.is_empty()) {
        let phases: Vec<&str> = s
            .phase_transition_times
            .iter()
            .map(|t| t.phase.as_str())
            .collect();
        fields.push(("Phases", phases.join(" → ")));
    }
    if let Some(p) = status.and_then(|s| s.progress.as_ref()) {
        fields.push(("Progress", format!("{}%  {}", p.percent, figures(p))));
    }
    if let Some(r) = result_line(m) {
        fields.push(("Result", r));
    }
    if let Some(p) = prediction_line(m) {
        fields.push(("Predicted", p));
    }
    if !m.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
        let labels = m.metadata.labels.iter().flatten();
        let labels: Vec<String> = labels.map(|(k, v)| format!("{k}={v}")).collect();
        fields.push(("Labels", labels.join(", ")));
    }
    let mut out: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{:<10}{v}", format!("{k}:")))
        .collect();
    let conditions: Vec<Vec<String>> = status
        .into_iter()
        .flat_map(|s| &s.conditions)
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                age(secs_between(c.last_transition_time.0, now)),
                c.message.clone(),
            ]
        })
        .collect();
    if conditions.is_empty() {
        out.push("Conditions: none yet (the controller has not reported)".into());
    } else {
        out.push("Conditions:".into());
        let table = render(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], &conditions);
        out.extend(table.lines().map(|l| format!("  {l}")));
    }
    out.join("\n")
}

fn vm_field(m: &VirtualMachineMigration) -> String {
    match m.status.as_ref().and_then(|s| s.vm.as_ref()) {
        Some(vm) => format!("{} (uuid {}, {})", vm.name, vm.uuid, bytes(vm.memory_bytes)),
        None => vm_name(m).to_string(),
    }
}

fn policy_field(m: &VirtualMachineMigration) -> String {
    let asked = m.spec.policy_ref.as_ref().map(|p| p.name.as_str());
    match m.status.as_ref().and_then(|s| s.policy.as_ref()) {
        Some(p) => format!(
            "{} ({})",
            p.name.as_deref().unwrap_or("kvmotion's built-in defaults"),
            tuning(p)
        ),
        None => asked.unwrap_or("the default policy").to_string() + " (not resolved yet)",
    }
}

fn tuning(p: &AppliedPolicy) -> String {
    let t = &p.tuning;
    let api = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let bandwidth = match t.bandwidth_mibps {
        0 => "unlimited".to_string(),
        n => format!("{n} MiB/s"),
    };
    let on_off = |b: bool| if b { "on" } else { "off" };
    format!(
        "bandwidth {bandwidth}, max downtime {}, on timeout {}, post-copy {}, auto-converge {}, storage {}",
        millis(u64::from(t.max_downtime_ms)),
        api(serde_json::to_value(t.on_timeout)),
        on_off(t.post_copy),
        on_off(t.auto_converge),
        api(serde_json::to_value(t.storage)),
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::*;
    use kvmotion_api::Phase;
    use kvmotion_api::migration::PolicyRef;

    #[test]
    fn a_fresh_migration_says_what_is_not_known_yet() {
        let mut m = migration(None);
        m.spec.target_node = None;
        m.spec.policy_ref = Some(PolicyRef {
            name: "fast".into(),
        });
        assert_eq!(
            describe(&m, now()),
            "Name:     web-1-abcde\n\
             VM:       web-1\n\
             Mode:     Live\n\
             Phase:    Submitted\n\
             Source:   -\n\
             Target:   (chosen by the controller)\n\
             Policy:   fast (not resolved yet)\n\
             Created:  2030-01-01T11:58:30Z (90s ago)\n\
             Conditions: none yet (the controller has not reported)"
        );
    }

    #[test]
    fn a_finished_migration_shows_result_and_conditions() {
        let mut m = succeeded();
        m.metadata.labels = Some([("team".to_string(), "web".to_string())].into());
        if let Some(s) = m.status.as_mut() {
            s.conditions.insert(
                0,
                cond(
                    "Scheduled",
                    "True",
                    "TargetSelected",
                    "spec.targetNode node-b can take the VM",
                ),
            );
        }
        let text = describe(&m, now());
        for want in [
            "VM:       web-1 (uuid 0b5c3c0e-8d1e-4a57-9a3e-2f9b1d6f4e21, 256.0 MiB)\n",
            "Phase:    Succeeded\n",
            "Source:   node-a\nTarget:   node-b\n",
            "Policy:   the default policy (not resolved yet)\n",
            "Started:  2030-01-01T11:58:40Z (80s ago)\n",
            "Ended:    2030-01-01T11:58:52Z (68s ago)\n",
            "Result:   duration 11.4 s (12.0 s start to completion), downtime 45 ms, 300.0 MiB transferred\n",
            "Labels:   team=web\n",
            "Conditions:\n\
             \x20 TYPE        STATUS   REASON           AGE   MESSAGE\n\
             \x20 Scheduled   True     TargetSelected   60s   spec.targetNode node-b can take the VM\n\
             \x20 Completed   True     Succeeded        60s   the VM runs on node-b",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn progress_and_phases_appear_while_migrating() {
        let mut m = with_progress(migration(Some(Phase::Migrating)), progress());
        if let Some(s) = m.status.as_mut() {
            s.phase_transition_times = [Phase::Pending, Phase::Scheduling, Phase::Migrating]
                .into_iter()
                .map(|phase| kvmotion_api::migration::PhaseTransition {
                    phase,
                    time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()),
                })
                .collect();
        }
        let text = describe(&m, now());
        assert!(
            text.contains("Phases:   Pending → Scheduling → Migrating\n"),
            "{text}"
        );
        assert!(
            text.contains("Progress: 40%  410.0 MiB of 1.0 GiB  100.0 MiB/s  ETA 7s\n"),
            "{text}"
        );
    }
}
