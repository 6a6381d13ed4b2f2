//! Migrations for the formatting tests, around one fixed "now".

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kvmotion_api::migration::{MigrationProgress, MigrationResult, ScheduledVm};
use kvmotion_api::{
    Phase, VirtualMachineMigration, VirtualMachineMigrationSpec, VirtualMachineMigrationStatus,
    VmRef,
};

/// A fixed "now" for every test.
pub fn now() -> jiff::Timestamp {
    ts("2030-01-01T12:00:00Z")
}

/// A timestamp from RFC 3339.
pub fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("timestamp")
}

/// A migration of web-1 to node-b created 90 s before `now`.
pub fn migration(phase: Option<Phase>) -> VirtualMachineMigration {
    let mut m = VirtualMachineMigration::new(
        "web-1-abcde",
        VirtualMachineMigrationSpec {
            vm: VmRef {
                name: Some("web-1".into()),
                uuid: None,
            },
            source_node: None,
            target_node: Some("node-b".into()),
            target_selector: None,
            mode: Default::default(),
            policy_ref: None,
            overrides: None,
            force_complete: false,
        },
    );
    m.metadata.creation_timestamp = Some(Time(ts("2030-01-01T11:58:30Z")));
    m.status = phase.map(|p| VirtualMachineMigrationStatus {
        phase: Some(p),
        source_node: Some("node-a".into()),
        target_node: Some("node-b".into()),
        vm: Some(ScheduledVm {
            name: "web-1".into(),
            uuid: "0b5c3c0e-8d1e-4a57-9a3e-2f9b1d6f4e21".into(),
            memory_bytes: 256 << 20,
        }),
        ..Default::default()
    });
    m
}

/// `m` with progress `p` in its status.
pub fn with_progress(
    mut m: VirtualMachineMigration,
    p: MigrationProgress,
) -> VirtualMachineMigration {
    if let Some(s) = m.status.as_mut() {
        s.progress = Some(p);
    }
    m
}

/// 40% of 1 GiB at 100 MiB/s.
pub fn progress() -> MigrationProgress {
    MigrationProgress {
        percent: 40,
        data_total_bytes: 1 << 30,
        data_processed_bytes: 410 << 20,
        data_remaining_bytes: 614 << 20,
        memory_iteration: 1,
        dirty_rate_bytes_per_second: 0,
        throughput_bytes_per_second: 100 << 20,
        mode: Default::default(),
        auto_converge_throttle: None,
        eta_seconds: Some(7),
    }
}

/// A migration that Succeeded, with result, times and Completed.
pub fn succeeded() -> VirtualMachineMigration {
    let mut m = migration(Some(Phase::Succeeded));
    if let Some(s) = m.status.as_mut() {
        s.start_time = Some(Time(ts("2030-01-01T11:58:40Z")));
        s.completion_time = Some(Time(ts("2030-01-01T11:58:52Z")));
        s.result = Some(MigrationResult {
            duration_ms: 11_400,
            downtime_ms: 45,
            data_transferred_bytes: 300 << 20,
            post_copy_recoveries: 0,
        });
        s.conditions.push(cond(
            "Completed",
            "True",
            "Succeeded",
            "the VM runs on node-b",
        ));
    }
    m
}

/// A prediction of a hot guest's move.
pub fn prediction() -> kvmotion_api::migration::MigrationPrediction {
    kvmotion_api::migration::MigrationPrediction {
        strategy: kvmotion_api::migration::Strategy::PostCopyAtOnce,
        reason: "the guest dirties 128 MiB/s and the link moves 25 MiB/s: pre-copy cannot converge, so post-copy starts at once".into(),
        dirty_rate_bytes_per_second: 128 << 20,
        link_bytes_per_second: 25 << 20,
        pre_copy_passes: None,
        duration_ms: Some(11_000),
        downtime_ms: Some(20),
        setup_ms: Some(1_500),
        made_after_ms: 1_100,
        before_move: false,
    }
}

/// A condition that changed 60 s before `now`.
pub fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(ts("2030-01-01T11:59:00Z")),
        observed_generation: Some(1),
    }
}

/// `m` with exactly these (type, status, reason, message) conditions.
pub fn with_conditions(
    mut m: VirtualMachineMigration,
    conds: &[(&str, &str, &str, &str)],
) -> VirtualMachineMigration {
    if let Some(s) = m.status.as_mut() {
        s.conditions = conds
            .iter()
            .map(|(t, st, r, msg)| cond(t, st, r, msg))
            .collect();
    }
    m
}
