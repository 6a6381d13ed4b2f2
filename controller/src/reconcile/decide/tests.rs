//! Table tests of every phase's decision and of effect outcomes.
#![allow(clippy::type_complexity)]

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kvmotion_api::agent::{JobPhase, JobStatus, ResolvedTuning};
use kvmotion_api::hypervisor::{DiskInfo, DomainInfo, DomainState, Hypervisor};
use kvmotion_api::migration::{AppliedPolicy, MigrationResult, ScheduledVm};
use kvmotion_api::policy::{ConcurrencyLimits, MigrationPolicy, MigrationPolicySpec};
use kvmotion_api::{
    ConditionType as C, MigrationMode, Phase, VirtualMachineMigrationSpec,
    VirtualMachineMigrationStatus, VmRef,
};

use super::outcome::apply;
use super::*;
use crate::fixtures::{GIB, healthy_hypervisor};
use crate::reconcile::observe::{AgentFailure, Reading, SpecProblem};
use crate::reconcile::world::{Flight, World};

const UUID: &str = "6b0a7e2c-1d1e-4c51-9a11-0000000000a1";

pub(super) fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub(super) fn ago(secs: i64) -> Timestamp {
    now() - SignedDuration::from_secs(secs)
}

/// A healthy hypervisor with 32 GiB free, an agent endpoint and `domains`.
pub(super) fn hv(name: &str, domains: Vec<DomainInfo>) -> Hypervisor {
    let mut h = healthy_hypervisor(name, 32);
    if let Some(s) = h.status.as_mut() {
        s.agent_endpoint = Some(format!("http://{name}:9443"));
        s.domains = domains;
    }
    h
}

pub(super) fn web(state: DomainState) -> DomainInfo {
    DomainInfo {
        name: "web".into(),
        uuid: UUID.into(),
        state,
        memory_bytes: GIB,
        vcpus: 1,
        persistent: true,
        disks: vec![DiskInfo {
            target: "vda".into(),
            source: Some("/shared/web.qcow2".into()),
            format: Some("qcow2".into()),
            capacity_bytes: Some(GIB),
            shared: true,
            read_only: false,
        }],
        dirty_rate: None,
    }
}

pub(super) fn spec() -> VirtualMachineMigrationSpec {
    VirtualMachineMigrationSpec {
        vm: VmRef {
            name: Some("web".into()),
            uuid: None,
        },
        source_node: None,
        target_node: Some("b".into()),
        target_selector: None,
        mode: MigrationMode::Live,
        policy_ref: None,
        overrides: None,
        force_complete: false,
    }
}

/// A migration of VM "web" from node a to node b, in `phase`, with the
/// status that phase would have.
pub(super) struct Obs(pub(super) Observed);

impl Obs {
    pub(super) fn new(phase: Option<Phase>) -> Obs {
        let mut status = VirtualMachineMigrationStatus {
            phase,
            observed_generation: phase.map(|_| 1),
            ..Default::default()
        };
        let scheduled = phase.is_some_and(|p| !matches!(p, Phase::Pending | Phase::Scheduling));
        if scheduled {
            status.source_node = Some("a".into());
            status.target_node = Some("b".into());
            status.vm = Some(ScheduledVm {
                name: "web".into(),
                uuid: UUID.into(),
                memory_bytes: GIB,
            });
            status.policy = Some(AppliedPolicy {
                name: None,
                tuning: ResolvedTuning::default(),
                concurrency: ConcurrencyLimits::default(),
            });
        }
        let heartbeats = [("a".to_string(), ago(5)), ("b".to_string(), ago(5))].into();
        Obs(Observed {
            name: "m".into(),
            uid: "uid-m".into(),
            created: ago(100),
            evacuation: false,
            deleting_since: None,
            generation: 1,
            spec: Ok(spec()),
            resource_version: "7".into(),
            status,
            status_problem: None,
            world: World {
                hypervisors: vec![
                    Arc::new(hv("a", vec![web(DomainState::Running)])),
                    Arc::new(hv("b", vec![])),
                ],
                policies: vec![],
                heartbeats,
                flights: vec![],
                cordoned: Default::default(),
                evacuating: Default::default(),
            },
            reading: Reading::Nothing,
            last_progress_write: None,
        })
    }
    pub(super) fn with(mut self, f: impl FnOnce(&mut Observed)) -> Obs {
        f(&mut self.0);
        self
    }
    pub(super) fn job(self, phase: JobPhase) -> Obs {
        self.with(|o| {
            o.reading = Reading::Job(Ok(JobStatus {
                id: "uid-m".into(),
                phase,
                progress: Default::default(),
                result: (phase == JobPhase::Completed).then_some(MigrationResult {
                    duration_ms: 1500,
                    downtime_ms: 30,
                    data_transferred_bytes: 300 << 20,
                    post_copy_recoveries: 0,
                }),
                message: (phase == JobPhase::Failed).then(|| "stalled".into()),
                reason: (phase == JobPhase::Failed).then(|| "ProgressTimeout".into()),
                vm_node: Some("a".into()),
                actions: vec![],
                prediction: None,
            }))
        })
    }
}

pub(super) fn unrecorded(migrating: bool) -> Reading {
    Reading::Unrecorded(Ok(kvmotion_api::agent::DomainPresence {
        node: "a".into(),
        domain: Some(web(DomainState::Running)),
        migrating,
    }))
}

pub(super) fn hv_without_endpoint(name: &str) -> Hypervisor {
    let mut h = hv(name, vec![web(DomainState::Running)]);
    if let Some(s) = h.status.as_mut() {
        s.agent_endpoint = None;
    }
    h
}

pub(super) fn silent(node: &str) -> AgentFailure {
    AgentFailure {
        node: node.into(),
        transient: true,
        reason: None,
        message: "connection refused".into(),
    }
}

pub(super) fn other(name: &str, phase: Phase, created: Timestamp, vm: &str) -> Flight {
    Flight {
        uid: format!("uid-{name}"),
        name: name.into(),
        created,
        phase: Some(phase),
        vm_name: Some(vm.into()),
        vm_uuid: None,
        source: Some("c".into()),
        target: Some("d".into()),
        memory_bytes: None,
        evacuation: false,
    }
}

fn arcs(v: Vec<Flight>) -> Vec<Arc<Flight>> {
    v.into_iter().map(Arc::new).collect()
}

fn reason(s: &VirtualMachineMigrationStatus, t: C) -> String {
    conditions::get(&s.conditions, t)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn kind(e: &Option<Effect>) -> &'static str {
    match e {
        None => "-",
        Some(Effect::Start { .. }) => "Start",
        Some(Effect::ForceComplete { .. }) => "ForceComplete",
        Some(Effect::Finish { .. }) => "Finish",
        Some(Effect::Settle { .. }) => "Settle",
    }
}

#[test]
fn every_phase_decides_its_next_step() {
    use Phase::*;
    let present = |d: DomainInfo| Ok(Some(d));
    // (case, observed, expected phase, expected Completed/step reason, effect)
    let cases: Vec<(&str, Obs, Option<Phase>, &str, &str)> = vec![
        (
            "new valid → Pending",
            Obs::new(None),
            Some(Pending),
            "",
            "-",
        ),
        (
            "new unusable spec → Failed",
            Obs::new(None).with(|o| {
                o.spec = Err(SpecProblem {
                    message: "spec.x bad".into(),
                })
            }),
            Some(Failed),
            "InvalidSpec",
            "-",
        ),
        (
            "Pending with room → Scheduling",
            Obs::new(Some(Pending)),
            Some(Scheduling),
            "",
            "-",
        ),
        (
            "Pending, cluster full → waits",
            Obs::new(Some(Pending)).with(|o| {
                o.world.flights = (0..5)
                    .map(|i| other(&format!("x{i}"), Migrating, ago(500), &format!("v{i}")))
                    .map(Arc::new)
                    .collect()
            }),
            Some(Pending),
            "",
            "-",
        ),
        (
            "Pending, VM already being moved → AlreadyMigrating",
            Obs::new(Some(Pending)).with(|o| {
                o.world.flights = arcs(vec![Flight {
                    source: Some("a".into()),
                    ..other("x", Migrating, ago(500), "web")
                }])
            }),
            Some(Failed),
            "AlreadyMigrating",
            "-",
        ),
        (
            "Pending, VM already on the target → AlreadyOnTarget",
            Obs::new(Some(Pending))
                .with(|o| o.spec.as_mut().unwrap().target_node = Some("a".into())),
            Some(Succeeded),
            "AlreadyOnTarget",
            "-",
        ),
        (
            "Pending, unknown policy → PolicyNotFound",
            Obs::new(Some(Pending)).with(|o| {
                o.spec.as_mut().unwrap().policy_ref = Some(kvmotion_api::migration::PolicyRef {
                    name: "gone".into(),
                })
            }),
            Some(Failed),
            "PolicyNotFound",
            "-",
        ),
        (
            "Scheduling → Prechecking",
            Obs::new(Some(Scheduling)),
            Some(Prechecking),
            "",
            "-",
        ),
        (
            "Scheduling, unknown VM → VMNotFound",
            Obs::new(Some(Scheduling))
                .with(|o| o.spec.as_mut().unwrap().vm.name = Some("nope".into())),
            Some(Failed),
            "VMNotFound",
            "-",
        ),
        (
            "Scheduling, no such target → TargetNotFound",
            Obs::new(Some(Scheduling))
                .with(|o| o.spec.as_mut().unwrap().target_node = Some("zz".into())),
            Some(Failed),
            "TargetNotFound",
            "-",
        ),
        (
            "Scheduling, target not ready → TargetNotReady",
            Obs::new(Some(Scheduling)).with(|o| {
                Arc::make_mut(&mut o.world.hypervisors[1])
                    .status
                    .as_mut()
                    .unwrap()
                    .conditions[0]
                    .status = "False".into()
            }),
            Some(Failed),
            "TargetNotReady",
            "-",
        ),
        (
            "Scheduling, target full → waits",
            Obs::new(Some(Scheduling)).with(|o| {
                o.world.flights = arcs(vec![
                    Flight {
                        target: Some("b".into()),
                        ..other("x", Migrating, ago(500), "v1")
                    },
                    Flight {
                        target: Some("b".into()),
                        ..other("y", Migrating, ago(500), "v2")
                    },
                ])
            }),
            Some(Scheduling),
            "",
            "-",
        ),
        (
            "Scheduling, one VM still listed on two nodes past the agent timeout → VMMoving",
            Obs::new(Some(Scheduling)).with(|o| {
                o.world.hypervisors[1] = Arc::new(hv("b", vec![web(DomainState::Running)]));
                o.status
                    .phase_transition_times
                    .push(kvmotion_api::migration::PhaseTransition {
                        phase: Scheduling,
                        time: Time(ago(120)),
                    });
            }),
            Some(Failed),
            "VMMoving",
            "-",
        ),
        (
            "Scheduling, itself (target only in spec) and one other heading to b, limit 2 → Prechecking",
            Obs::new(Some(Scheduling)).with(|o| {
                o.world.flights = arcs(vec![
                    Flight {
                        target: Some("b".into()),
                        ..other("m", Scheduling, ago(100), "web")
                    },
                    Flight {
                        target: Some("b".into()),
                        ..other("x", Migrating, ago(500), "v1")
                    },
                ])
            }),
            Some(Prechecking),
            "",
            "-",
        ),
        (
            "Scheduling, automatic choice → Prechecking",
            Obs::new(Some(Scheduling)).with(|o| o.spec.as_mut().unwrap().target_node = None),
            Some(Prechecking),
            "",
            "-",
        ),
        (
            "Prechecking → Preparing",
            Obs::new(Some(Prechecking)),
            Some(Preparing),
            "",
            "-",
        ),
        (
            "Prechecking, VM shut off → VMNotRunning",
            Obs::new(Some(Prechecking)).with(|o| {
                o.world.hypervisors[0] = Arc::new(hv("a", vec![web(DomainState::ShutOff)]))
            }),
            Some(Failed),
            "VMNotRunning",
            "-",
        ),
        (
            "Prechecking, VM still shutting down past the agent timeout → VMStateSettling",
            Obs::new(Some(Prechecking)).with(|o| {
                o.world.hypervisors[0] = Arc::new(hv("a", vec![web(DomainState::ShuttingDown)]));
                o.status
                    .phase_transition_times
                    .push(kvmotion_api::migration::PhaseTransition {
                        phase: Prechecking,
                        time: Time(ago(120)),
                    });
            }),
            Some(Failed),
            "VMStateSettling",
            "-",
        ),
        (
            "Prechecking, stale target heartbeat → AgentUnavailable",
            Obs::new(Some(Prechecking)).with(|o| {
                o.world.heartbeats.insert("b".into(), ago(600));
            }),
            Some(Failed),
            "AgentUnavailable",
            "-",
        ),
        (
            "Prechecking, local disk and copying forbidden → StorageNotShared",
            Obs::new(Some(Prechecking)).with(|o| {
                let mut d = web(DomainState::Running);
                d.disks[0].shared = false;
                o.world.hypervisors[0] = Arc::new(hv("a", vec![d]));
                o.status.policy.as_mut().unwrap().tuning.storage =
                    kvmotion_api::tuning::StorageMode::Shared;
            }),
            Some(Failed),
            "StorageNotShared",
            "-",
        ),
        (
            "Preparing asks to start",
            Obs::new(Some(Preparing)),
            Some(Preparing),
            "",
            "Start",
        ),
        (
            "Migrating, running: mirror",
            Obs::new(Some(Migrating)).job(JobPhase::Running),
            Some(Migrating),
            "",
            "-",
        ),
        (
            "Migrating, force requested",
            Obs::new(Some(Migrating))
                .job(JobPhase::Running)
                .with(|o| o.spec.as_mut().unwrap().force_complete = true),
            Some(Migrating),
            "",
            "ForceComplete",
        ),
        (
            "Migrating, completed → Finalizing",
            Obs::new(Some(Migrating)).job(JobPhase::Completed),
            Some(Finalizing),
            "",
            "-",
        ),
        (
            "Migrating, failed → Failed",
            Obs::new(Some(Migrating)).job(JobPhase::Failed),
            Some(Failed),
            "ProgressTimeout",
            "-",
        ),
        (
            "Migrating, agent silent briefly → waits",
            Obs::new(Some(Migrating)).with(|o| o.reading = Reading::Job(Err(silent("a")))),
            Some(Migrating),
            "",
            "-",
        ),
        (
            "Migrating, agent silent too long → AgentUnreachable",
            Obs::new(Some(Migrating)).with(|o| {
                o.reading = Reading::Job(Err(silent("a")));
                conditions::set(
                    &mut o.status.conditions,
                    C::AgentsReachable,
                    false,
                    "AgentUnreachable",
                    "x".into(),
                    1,
                    Time(ago(61)),
                );
            }),
            Some(Failed),
            "AgentUnreachable",
            "-",
        ),
        (
            "Migrating, agent answers 5xx → waits, never aborts",
            Obs::new(Some(Migrating)).with(|o| {
                o.reading = Reading::Job(Err(AgentFailure {
                    node: "a".into(),
                    transient: true,
                    reason: Some("ReviewToken".into()),
                    message: "answered 500".into(),
                }))
            }),
            Some(Migrating),
            "",
            "-",
        ),
        (
            "Migrating, no agent record but libvirt runs a job → waits",
            Obs::new(Some(Migrating)).with(|o| o.reading = unrecorded(true)),
            Some(Migrating),
            "",
            "-",
        ),
        (
            "Migrating, no agent record, libvirt runs none → Finalizing verifies",
            Obs::new(Some(Migrating)).with(|o| o.reading = unrecorded(false)),
            Some(Finalizing),
            "",
            "-",
        ),
        (
            "Migrating, an unrecorded job too long → JobNotAdopted",
            Obs::new(Some(Migrating)).with(|o| {
                o.reading = unrecorded(true);
                conditions::set(
                    &mut o.status.conditions,
                    C::AgentsReachable,
                    false,
                    "JobNotAdopted",
                    "x".into(),
                    1,
                    Time(ago(61)),
                );
            }),
            Some(Failed),
            "JobNotAdopted",
            "-",
        ),
        (
            "Finalizing, arrived → Finish",
            Obs::new(Some(Finalizing)).with(|o| {
                o.reading = Reading::Presence {
                    source: Ok(None),
                    target: present(web(DomainState::Running)),
                }
            }),
            Some(Finalizing),
            "",
            "Finish",
        ),
        (
            "Finalizing, missing on target → VerificationFailed",
            Obs::new(Some(Finalizing)).with(|o| {
                o.reading = Reading::Presence {
                    source: present(web(DomainState::Running)),
                    target: Ok(None),
                }
            }),
            Some(Failed),
            "VerificationFailed",
            "-",
        ),
        (
            "Succeeded stays",
            Obs::new(Some(Succeeded)),
            Some(Succeeded),
            "",
            "-",
        ),
        (
            "Failed without agent state stays",
            Obs::new(Some(Failed)),
            Some(Failed),
            "",
            "-",
        ),
        (
            "Failed with agent state settles",
            Obs::new(Some(Failed)).with(|o| {
                conditions::set(
                    &mut o.status.conditions,
                    C::Settled,
                    false,
                    "SettlePending",
                    "x".into(),
                    1,
                    Time(ago(1)),
                );
            }),
            Some(Failed),
            "",
            "Settle",
        ),
        (
            "Cancelled stays",
            Obs::new(Some(Cancelled)),
            Some(Cancelled),
            "",
            "-",
        ),
    ];
    for (name, obs, phase, want_reason, effect) in cases {
        let d = decide(&obs.0, &Settings::default(), now());
        assert_eq!(d.status.phase, phase, "{name}: phase");
        if !want_reason.is_empty() {
            assert_eq!(
                reason(&d.status, C::Completed),
                want_reason,
                "{name}: reason"
            );
        }
        assert_eq!(kind(&d.effect), effect, "{name}: effect");
    }
}

#[test]
fn a_vm_shutting_down_is_waited_for_in_prechecking() {
    let obs = Obs::new(Some(Phase::Prechecking)).with(|o| {
        o.world.hypervisors[0] = Arc::new(hv("a", vec![web(DomainState::ShuttingDown)]));
        o.status
            .phase_transition_times
            .push(kvmotion_api::migration::PhaseTransition {
                phase: Phase::Prechecking,
                time: Time(ago(3)),
            });
    });
    let d = decide(&obs.0, &Settings::default(), now());
    assert_eq!(d.status.phase, Some(Phase::Prechecking));
    let c = conditions::get(&d.status.conditions, C::Prechecked).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "VMStateSettling")
    );
    assert!(c.message.contains("shutting down"), "{}", c.message);
    assert_eq!(d.effect, None);
    assert_eq!(d.next, Next::RequeueAfter(Duration::from_secs(1)));
}

#[test]
fn a_vm_listed_on_two_nodes_waits_for_the_inventories_to_settle() {
    let obs = Obs::new(Some(Phase::Scheduling)).with(|o| {
        o.world.hypervisors[1] = Arc::new(hv("b", vec![web(DomainState::Running)]));
        o.status
            .phase_transition_times
            .push(kvmotion_api::migration::PhaseTransition {
                phase: Phase::Scheduling,
                time: Time(ago(3)),
            });
    });
    let d = decide(&obs.0, &Settings::default(), now());
    assert_eq!(d.status.phase, Some(Phase::Scheduling));
    let c = conditions::get(&d.status.conditions, C::Scheduled).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "VMMoving")
    );
    assert!(c.message.contains("listed on a and b"), "{}", c.message);
    assert_eq!(d.next, Next::RequeueAfter(Duration::from_secs(1)));
}

/// The cluster's one migration slot (a default policy's limit of 1) taken
/// by an older waiting migration.
pub(super) fn one_slot_taken(o: &mut Observed) {
    o.world.policies = vec![Arc::new(MigrationPolicy::new(
        "one",
        MigrationPolicySpec {
            is_default: true,
            concurrency: ConcurrencyLimits {
                per_cluster: 1,
                outbound_per_node: 2,
                inbound_per_node: 2,
            },
            ..Default::default()
        },
    ))];
    o.world.flights = arcs(vec![other("older", Phase::Pending, ago(200), "v")]);
}

#[test]
fn waiting_for_capacity_says_why_and_looks_again() {
    let obs = Obs::new(Some(Phase::Pending)).with(one_slot_taken);
    let d = decide(&obs.0, &Settings::default(), now());
    let c = conditions::get(&d.status.conditions, C::Admitted).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "WaitingForCapacity")
    );
    assert!(
        c.message.contains("cluster limit (1) is taken"),
        "{}",
        c.message
    );
    assert_eq!(d.next, Next::RequeueAfter(Duration::from_secs(30)));
    assert!(d.admitted.is_none());
}

#[test]
fn scheduling_records_source_target_vm_and_resolved_policy() {
    let d = decide(
        &Obs::new(Some(Phase::Scheduling))
            .with(|o| o.spec.as_mut().unwrap().target_node = None)
            .0,
        &Settings::default(),
        now(),
    );
    let s = d.status;
    assert_eq!(
        (s.source_node.as_deref(), s.target_node.as_deref()),
        (Some("a"), Some("b"))
    );
    assert_eq!(s.vm.unwrap().uuid, UUID);
    assert_eq!(s.policy.unwrap().tuning, ResolvedTuning::default());
    let c = conditions::get(&s.conditions, C::Scheduled).unwrap();
    assert!(
        c.message.starts_with("chose b: most free memory"),
        "{}",
        c.message
    );
}

#[test]
fn progress_is_mirrored_at_most_once_per_interval() {
    let mut obs = Obs::new(Some(Phase::Migrating)).job(JobPhase::Running);
    if let Reading::Job(Ok(j)) = &mut obs.0.reading {
        j.progress.percent = 40;
    }
    obs.0.status.progress = Some(Default::default());
    obs.0.last_progress_write = Some(now());
    let d = decide(&obs.0, &Settings::default(), now());
    assert_eq!(d.status.progress.as_ref().unwrap().percent, 0, "too soon");
    obs.0.last_progress_write = Some(ago(1));
    let d = decide(&obs.0, &Settings::default(), now());
    assert_eq!(d.status.progress.as_ref().unwrap().percent, 40);
    assert_eq!(d.next, Next::RequeueAfter(Duration::from_secs(1)));
}

/// The source agent's prediction a second into a hot guest's move.
fn hot_prediction() -> kvmotion_api::migration::MigrationPrediction {
    kvmotion_api::migration::MigrationPrediction {
        strategy: kvmotion_api::migration::Strategy::PostCopyAtOnce,
        reason: "the guest dirties 128 MiB/s and the link moves 100 MiB/s".into(),
        dirty_rate_bytes_per_second: 128 << 20,
        link_bytes_per_second: 100 << 20,
        pre_copy_passes: None,
        duration_ms: Some(3100),
        downtime_ms: Some(20),
        setup_ms: Some(1300),
        made_after_ms: 1100,
        before_move: false,
    }
}

#[test]
fn the_start_request_carries_the_strategy_and_transfer_predicted_before_the_move() {
    let planned = |p: Option<kvmotion_api::migration::MigrationPrediction>| {
        let mut obs = Obs::new(Some(Phase::Preparing));
        obs.0.status.prediction = p;
        match decide(&obs.0, &Settings::default(), now()).effect {
            Some(Effect::Start { start, .. }) => (start.planned, start.planned_transfer_ms),
            other => panic!("no start: {}", kind(&other)),
        }
    };
    let before = kvmotion_api::migration::MigrationPrediction {
        made_after_ms: 0,
        before_move: true,
        ..hot_prediction()
    };
    let cases = [
        (
            "before the move",
            Some(before.clone()),
            (Some(before.strategy), Some(1800)),
        ),
        ("none", None, (None, None)),
        // The agent's own, from an earlier start: it predicts again.
        (
            "made during a move",
            Some(kvmotion_api::migration::MigrationPrediction {
                before_move: false,
                ..before.clone()
            }),
            (None, None),
        ),
        // Without a duration (or its setup) there is no transfer to measure against.
        (
            "no duration",
            Some(kvmotion_api::migration::MigrationPrediction {
                duration_ms: None,
                ..before.clone()
            }),
            (Some(before.strategy), None),
        ),
    ];
    for (case, p, want) in cases {
        assert_eq!(planned(p), want, "{case}");
    }
}

#[test]
fn the_prediction_is_mirrored_as_soon_as_the_job_has_it_and_kept_at_its_end() {
    let predicted = hot_prediction();
    let with = |phase: JobPhase, p: Option<&kvmotion_api::migration::MigrationPrediction>| {
        let mut obs = Obs::new(Some(Phase::Migrating)).job(phase);
        if let Reading::Job(Ok(j)) = &mut obs.0.reading {
            j.prediction = p.cloned();
        }
        // Progress was written just now: the prediction does not wait for
        // the next interval.
        obs.0.status.progress = Some(Default::default());
        obs.0.last_progress_write = Some(now());
        obs
    };
    // (case, job phase, the job's prediction, phase after)
    let cases = [
        ("not made yet", JobPhase::Running, None, Phase::Migrating),
        (
            "made",
            JobPhase::Running,
            Some(&predicted),
            Phase::Migrating,
        ),
        (
            "the move ended",
            JobPhase::Completed,
            Some(&predicted),
            Phase::Finalizing,
        ),
        ("refused", JobPhase::Failed, Some(&predicted), Phase::Failed),
    ];
    for (case, phase, p, after) in cases {
        let obs = with(phase, p);
        let d = decide(&obs.0, &Settings::default(), now());
        assert_eq!(d.status.prediction.as_ref(), p, "{case}");
        assert_eq!(d.status.phase, Some(after), "{case}");
    }
}

#[test]
fn outcomes_move_the_phase() {
    use Phase::*;
    let start = || {
        let obs = Obs::new(Some(Preparing));
        let d = decide(&obs.0, &Settings::default(), now());
        (obs, d)
    };
    let refused = AgentFailure {
        node: "b".into(),
        transient: false,
        reason: Some("InsufficientMemory".into()),
        message: "only 1 GiB free".into(),
    };
    // (case, outcome, expected phase, Completed reason, Settled reason)
    let cases: Vec<(&str, Outcome, Phase, &str, &str)> = vec![
        (
            "started",
            Outcome::Started(Box::new(JobStatus {
                id: "uid-m".into(),
                phase: JobPhase::Starting,
                progress: Default::default(),
                result: None,
                message: None,
                reason: None,
                vm_node: None,
                actions: vec![],
                prediction: None,
            })),
            Migrating,
            "",
            "",
        ),
        (
            "refused by the target",
            Outcome::Refused(refused),
            Failed,
            "InsufficientMemory",
            "SettlePending",
        ),
        (
            "target silent",
            Outcome::Unreachable(silent("b")),
            Preparing,
            "",
            "",
        ),
    ];
    for (name, outcome, phase, completed, settled) in cases {
        let (obs, d) = start();
        let effect = d.effect.clone().unwrap();
        let d = apply(&obs.0, &Settings::default(), d, &effect, outcome, now());
        assert_eq!(d.status.phase, Some(phase), "{name}");
        assert_eq!(reason(&d.status, C::Completed), completed, "{name}");
        assert_eq!(reason(&d.status, C::Settled), settled, "{name}");
    }
}

#[test]
fn settling_locates_the_vm_on_exactly_one_node() {
    let failed = || {
        Obs::new(Some(Phase::Failed)).with(|o| {
            conditions::set(
                &mut o.status.conditions,
                C::Settled,
                false,
                "SettlePending",
                "x".into(),
                1,
                Time(ago(1)),
            );
        })
    };
    // (case, places after the settle, stale copy removed on, reason, message)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, DomainState)>,
        Option<&'a str>,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "on the source",
            vec![("a", DomainState::Running)],
            None,
            "VMLocated",
            "the VM runs on a only",
        ),
        (
            "a stale copy on the source removed",
            vec![("b", DomainState::Running)],
            Some("a"),
            "StaleDefinitionRemoved",
            "the VM runs on b only; its stale shut-off definition on a was removed",
        ),
        (
            "a stale copy on the target that would not go",
            vec![("a", DomainState::Running), ("b", DomainState::ShutOff)],
            None,
            "VMDefinedTwice",
            "the VM runs on a and a shut-off copy is still defined on b: remove it there (virsh undefine) so it is never started twice",
        ),
        (
            "defined on both, running nowhere",
            vec![("a", DomainState::ShutOff), ("b", DomainState::ShutOff)],
            None,
            "VMDefinedTwice",
            "the VM runs nowhere and is defined on a and b: it cannot be told which copy is current; keep one and undefine the other",
        ),
        (
            "on both",
            vec![("a", DomainState::Running), ("b", DomainState::Paused)],
            None,
            "VerificationFailed",
            "the VM runs on a and b: stop one of them by hand",
        ),
        (
            "nowhere",
            vec![],
            None,
            "VerificationFailed",
            "the VM is on no node",
        ),
    ];
    for (name, places, removed_stale, want, message) in cases {
        let removed_stale = removed_stale.map(str::to_string);
        let obs = failed();
        let d = decide(&obs.0, &Settings::default(), now());
        let effect = d.effect.clone().unwrap();
        let places = places
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        let d = apply(
            &obs.0,
            &Settings::default(),
            d,
            &effect,
            Outcome::Located(Placement {
                places,
                removed_stale,
            }),
            now(),
        );
        let c = conditions::get(&d.status.conditions, C::Settled).unwrap();
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            (want, message),
            "{name}"
        );
        assert!(!settle_pending(&d.status), "{name}: settled once");
    }
}

#[test]
fn deleting_cancels_at_once_before_the_agents_act_and_after_settling_in_flight() {
    for phase in Phase::ALL {
        let obs = Obs::new(Some(phase)).with(|o| o.deleting_since = Some(ago(1)));
        let d = cancel(&obs.0, &Settings::default(), now());
        let in_flight = matches!(
            phase,
            Phase::Preparing | Phase::Migrating | Phase::Finalizing
        );
        assert_eq!(
            kind(&d.effect),
            if in_flight { "Settle" } else { "-" },
            "{phase}"
        );
        assert_eq!(d.finished, !in_flight, "{phase}");
        let want = if phase.is_terminal() || in_flight {
            phase
        } else {
            Phase::Cancelled
        };
        assert_eq!(d.status.phase, Some(want), "{phase}");
        if in_flight {
            let effect = d.effect.clone().unwrap();
            let stopping = apply(
                &obs.0,
                &Settings::default(),
                d.clone(),
                &effect,
                Outcome::Stopping("abort requested".into()),
                now(),
            );
            assert!(!stopping.finished, "{phase}: waits for the job to stop");
            let done = apply(
                &obs.0,
                &Settings::default(),
                d,
                &effect,
                Outcome::Located(Placement {
                    places: vec![("a".into(), DomainState::Running)],
                    removed_stale: None,
                }),
                now(),
            );
            assert!(done.finished, "{phase}");
            assert_eq!(done.status.phase, Some(Phase::Cancelled));
            assert_eq!(reason(&done.status, C::Completed), "Cancelled");
        }
    }
}

#[test]
fn a_cancellation_holds_the_finalizer_while_an_agent_is_silent() {
    // (case, deleted seconds ago, Settled reason)
    for (name, ago_s, want) in [
        ("just deleted", 1, "SettlePending"),
        ("past the agent timeout", 61, "AgentUnreachable"),
    ] {
        let obs = Obs::new(Some(Phase::Migrating)).with(|o| o.deleting_since = Some(ago(ago_s)));
        let d = cancel(&obs.0, &Settings::default(), now());
        let effect = d.effect.clone().unwrap();
        let d = apply(
            &obs.0,
            &Settings::default(),
            d,
            &effect,
            Outcome::Unreachable(silent("a")),
            now(),
        );
        assert!(!d.finished, "{name}: a job may still run");
        assert_eq!(d.status.phase, Some(Phase::Migrating), "{name}");
        assert_eq!(reason(&d.status, C::Settled), want, "{name}");
        assert!(
            settle_pending(&d.status),
            "{name}: the settle is still owed"
        );
    }
}

#[test]
fn a_missing_agent_endpoint_never_releases_a_migration_in_flight() {
    let no_endpoint = |o: &mut Observed| {
        o.world.hypervisors[0] = Arc::new(hv_without_endpoint("a"));
    };
    for phase in [Phase::Preparing, Phase::Migrating, Phase::Finalizing] {
        let obs = Obs::new(Some(phase))
            .with(no_endpoint)
            .with(|o| o.deleting_since = Some(ago(5)));
        let d = cancel(&obs.0, &Settings::default(), now());
        assert!(!d.finished, "{phase}");
        assert_eq!(kind(&d.effect), "-", "{phase}");
        assert_eq!(reason(&d.status, C::Settled), "SettlePending", "{phase}");
    }
}

#[test]
fn deciding_again_on_a_decided_status_writes_nothing() {
    let full = |o: &mut Observed| {
        o.world.flights = (0..5)
            .map(|i| {
                other(
                    &format!("x{i}"),
                    Phase::Migrating,
                    ago(500),
                    &format!("v{i}"),
                )
            })
            .map(Arc::new)
            .collect()
    };
    let waiting = decide(
        &Obs::new(Some(Phase::Pending)).with(full).0,
        &Settings::default(),
        now(),
    )
    .status;
    let again = Obs::new(Some(Phase::Pending))
        .with(full)
        .with(|o| o.status = waiting.clone());
    assert_eq!(
        decide(&again.0, &Settings::default(), now()).status,
        waiting
    );
    for phase in [Phase::Succeeded, Phase::Failed, Phase::Cancelled] {
        let done = Obs::new(Some(phase));
        assert_eq!(
            decide(&done.0, &Settings::default(), now()).status,
            done.0.status,
            "{phase}"
        );
    }
}

#[test]
fn the_stale_copy_is_the_shut_off_one_beside_the_one_running_copy() {
    use DomainState::*;
    let p = |v: &[(&str, DomainState)]| -> Vec<(String, DomainState)> {
        v.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    };
    let cases: Vec<(&str, Vec<(String, DomainState)>, Option<&str>)> = vec![
        (
            "runs on a, shut off on b",
            p(&[("a", Running), ("b", ShutOff)]),
            Some("b"),
        ),
        (
            "paused on b, shut off on a",
            p(&[("a", ShutOff), ("b", Paused)]),
            Some("a"),
        ),
        ("runs on a only", p(&[("a", Running)]), None),
        (
            "shut off on both: which one?",
            p(&[("a", ShutOff), ("b", ShutOff)]),
            None,
        ),
        ("runs on both", p(&[("a", Running), ("b", Running)]), None),
        ("nowhere", p(&[]), None),
    ];
    for (name, places, want) in cases {
        assert_eq!(stale_copy(&places), want, "{name}");
    }
}

#[test]
fn a_post_copy_that_lost_its_link_shows_link_healthy_false_then_true_once_recovered() {
    use kvmotion_api::migration::TransferMode;
    let with_mode = |mode: TransferMode, phase: JobPhase| {
        Obs::new(Some(Phase::Migrating)).job(phase).with(move |o| {
            if let Reading::Job(Ok(j)) = &mut o.reading {
                j.progress.mode = mode;
                j.message = Some("post-copy lost its link to b; resuming".into());
                if let Some(r) = &mut j.result {
                    r.post_copy_recoveries = 1;
                }
            }
        })
    };
    let link = |d: &Decision| {
        conditions::get(&d.status.conditions, C::LinkHealthy)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };

    let healthy = decide(
        &with_mode(TransferMode::PostCopy, JobPhase::Running).0,
        &Settings::default(),
        now(),
    );
    assert_eq!(
        link(&healthy),
        None,
        "no condition while the link never failed"
    );

    let lost = decide(
        &with_mode(TransferMode::PostCopyPaused, JobPhase::Running).0,
        &Settings::default(),
        now(),
    );
    assert_eq!(
        lost.status.phase,
        Some(Phase::Migrating),
        "recovery keeps it Migrating"
    );
    assert_eq!(
        link(&lost),
        Some(("False".into(), "PostCopyLinkLost".into()))
    );
    assert_eq!(
        lost.status.progress.as_ref().map(|p| p.mode),
        Some(TransferMode::PostCopyPaused)
    );

    let mut again = with_mode(TransferMode::PostCopy, JobPhase::Running);
    again.0.status = lost.status.clone();
    let flows = decide(&again.0, &Settings::default(), now());
    assert_eq!(
        link(&flows),
        Some(("True".into(), "PostCopyRecovered".into()))
    );
    assert_eq!(
        flows.status.progress.as_ref().map(|p| p.mode),
        Some(TransferMode::PostCopy),
        "the link's return is mirrored at once"
    );

    let mut unseen = with_mode(TransferMode::PostCopy, JobPhase::Running);
    if let Reading::Job(Ok(j)) = &mut unseen.0.reading {
        j.actions.push("PostCopyLinkLost".into());
    }
    let resumed_unseen = decide(&unseen.0, &Settings::default(), now());
    assert_eq!(
        link(&resumed_unseen),
        Some(("True".into(), "PostCopyRecovered".into())),
        "a split resumed before any read is still told"
    );

    let done = decide(
        &with_mode(TransferMode::PostCopy, JobPhase::Completed).0,
        &Settings::default(),
        now(),
    );
    assert_eq!(
        link(&done),
        Some(("True".into(), "PostCopyRecovered".into()))
    );
    assert_eq!(done.status.result.map(|r| r.post_copy_recoveries), Some(1));

    let ended_split = decide(
        &with_mode(TransferMode::PostCopyPaused, JobPhase::Completed).0,
        &Settings::default(),
        now(),
    );
    assert_eq!(
        link(&ended_split),
        Some(("True".into(), "PostCopyRecovered".into())),
        "a completed job's last mode is history, not a split"
    );
}
