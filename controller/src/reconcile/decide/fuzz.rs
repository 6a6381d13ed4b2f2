//! Property tests of the decision functions over arbitrary observed states:
//! they never panic, and nothing moves a migration out of a terminal phase.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kvmotion_api::agent::{DomainPresence, JobPhase, JobStatus};
use kvmotion_api::hypervisor::DomainState;
use kvmotion_api::migration::{MigrationMode, MigrationResult, TransferMode};
use kvmotion_api::{ConditionType as C, Phase};
use proptest::prelude::*;

use super::outcome::apply;
use super::tests::{Obs, ago, hv, hv_without_endpoint, now, other, web};
use super::*;
use crate::reconcile::conditions;
use crate::reconcile::observe::{AgentFailure, Reading, SpecProblem};

fn phase() -> impl Strategy<Value = Option<Phase>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(Phase::ALL.to_vec()).prop_map(Some)
    ]
}

fn node() -> impl Strategy<Value = Option<String>> {
    proptest::sample::select(vec![None, Some("a"), Some("b"), Some("zz")])
        .prop_map(|n| n.map(String::from))
}

fn state() -> impl Strategy<Value = DomainState> {
    proptest::sample::select(DomainState::ALL.to_vec())
}

fn failure() -> impl Strategy<Value = AgentFailure> {
    (
        node(),
        any::<bool>(),
        proptest::sample::select(vec![
            None,
            Some("UnknownMigration"),
            Some("DiskPathInUse"),
            Some("VMDefinedTwice"),
            Some("Conflict"),
        ]),
    )
        .prop_map(|(n, transient, reason)| AgentFailure {
            node: n.unwrap_or_default(),
            transient,
            reason: reason.map(String::from),
            message: "fuzzed".into(),
        })
}

fn presence()
-> impl Strategy<Value = Result<Option<kvmotion_api::hypervisor::DomainInfo>, AgentFailure>> {
    prop_oneof![
        Just(Ok(None)),
        state().prop_map(|s| Ok(Some(web(s)))),
        failure().prop_map(Err),
    ]
}

fn job() -> impl Strategy<Value = JobStatus> {
    (
        proptest::sample::select(vec![
            JobPhase::Starting,
            JobPhase::Running,
            JobPhase::Completed,
            JobPhase::Failed,
            JobPhase::Aborted,
        ]),
        any::<bool>(),
        any::<u8>(),
        proptest::sample::select(vec![
            TransferMode::PreCopy,
            TransferMode::PostCopy,
            TransferMode::Paused,
        ]),
        node(),
    )
        .prop_map(|(phase, with_result, percent, mode, vm_node)| {
            let mut s = JobStatus {
                id: "uid-m".into(),
                phase,
                progress: Default::default(),
                result: with_result.then_some(MigrationResult {
                    duration_ms: 1,
                    downtime_ms: 1,
                    data_transferred_bytes: 1,
                    post_copy_recoveries: 0,
                }),
                message: None,
                reason: None,
                vm_node,
                actions: vec![],
                prediction: None,
            };
            s.progress.percent = percent;
            s.progress.mode = mode;
            s
        })
}

fn reading() -> impl Strategy<Value = Reading> {
    prop_oneof![
        Just(Reading::Nothing),
        job().prop_map(|j| Reading::Job(Ok(j))),
        failure().prop_map(|f| Reading::Job(Err(f))),
        (presence(), presence()).prop_map(|(source, target)| Reading::Presence { source, target }),
        (any::<bool>(), state()).prop_map(|(migrating, s)| {
            Reading::Unrecorded(Ok(DomainPresence {
                node: "a".into(),
                domain: Some(web(s)),
                migrating,
            }))
        }),
        failure().prop_map(|f| Reading::Unrecorded(Err(f))),
    ]
}

fn condition() -> impl Strategy<Value = (C, bool, &'static str, i64)> {
    (
        proptest::sample::select(vec![
            C::Accepted,
            C::Admitted,
            C::Scheduled,
            C::Prechecked,
            C::AgentsReachable,
            C::Completed,
            C::Settled,
        ]),
        any::<bool>(),
        proptest::sample::select(vec![
            "SettlePending",
            "AgentUnreachable",
            "JobNotAdopted",
            "VMLocated",
            "WaitingForCapacity",
            "Succeeded",
        ]),
        0i64..200,
    )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        job().prop_map(|j| Outcome::Started(Box::new(j))),
        failure().prop_map(Outcome::Refused),
        failure().prop_map(Outcome::Unreachable),
        Just(Outcome::Done),
        proptest::collection::vec((node(), state()), 0..3).prop_map(|v| {
            Outcome::Located(Placement {
                places: v
                    .into_iter()
                    .map(|(n, s)| (n.unwrap_or_default(), s))
                    .collect(),
                removed_stale: None,
            })
        }),
        Just(Outcome::Stopping("fuzzed".into())),
    ]
}

/// Everything one arbitrary observed state is built from.
#[derive(Debug, Clone)]
struct Knobs {
    phase: Option<Phase>,
    spec_problem: bool,
    offline: bool,
    force: bool,
    source: Option<String>,
    target: Option<String>,
    conditions: Vec<(C, bool, &'static str, i64)>,
    reading: Reading,
    deleting: Option<i64>,
    states: (DomainState, DomainState),
    endpoints: (bool, bool),
    heartbeat_ages: (i64, i64),
    busy: Vec<Option<Phase>>,
    progress_written: Option<i64>,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        (
            phase(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            node(),
            node(),
        ),
        proptest::collection::vec(condition(), 0..5),
        reading(),
        proptest::option::of(0i64..200),
        (state(), state()),
        (any::<bool>(), any::<bool>()),
        (0i64..120, 0i64..120),
        proptest::collection::vec(phase(), 0..4),
        proptest::option::of(0i64..5),
    )
        .prop_map(
            |(
                (phase, spec_problem, offline, force, source, target),
                conditions,
                reading,
                deleting,
                states,
                endpoints,
                heartbeat_ages,
                busy,
                progress_written,
            )| Knobs {
                phase,
                spec_problem,
                offline,
                force,
                source,
                target,
                conditions,
                reading,
                deleting,
                states,
                endpoints,
                heartbeat_ages,
                busy,
                progress_written,
            },
        )
}

fn observed(k: &Knobs) -> Observed {
    Obs::new(k.phase)
        .with(|o| {
            if k.spec_problem {
                o.spec = Err(SpecProblem {
                    message: "fuzzed".into(),
                });
            } else if let Ok(spec) = o.spec.as_mut() {
                spec.mode = if k.offline {
                    MigrationMode::Offline
                } else {
                    MigrationMode::Live
                };
                spec.force_complete = k.force;
            }
            if k.source.is_some() {
                o.status.source_node = k.source.clone();
            }
            if k.target.is_some() {
                o.status.target_node = k.target.clone();
            }
            for (t, ok, reason, age) in &k.conditions {
                conditions::set(
                    &mut o.status.conditions,
                    *t,
                    *ok,
                    reason,
                    "fuzzed".into(),
                    1,
                    Time(ago(*age)),
                );
            }
            o.reading = k.reading.clone();
            o.deleting_since = k.deleting.map(ago);
            let (a, b) = k.endpoints;
            o.world.hypervisors = vec![
                Arc::new(if a {
                    hv("a", vec![web(k.states.0)])
                } else {
                    hv_without_endpoint("a")
                }),
                Arc::new(if b {
                    hv("b", vec![web(k.states.1)])
                } else {
                    hv_without_endpoint("b")
                }),
            ];
            o.world.heartbeats = [
                ("a".to_string(), ago(k.heartbeat_ages.0)),
                ("b".to_string(), ago(k.heartbeat_ages.1)),
            ]
            .into();
            o.world.flights = k
                .busy
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|p| other(&format!("x{i}"), p, ago(300), "web")))
                .map(Arc::new)
                .collect();
            o.last_progress_write = k.progress_written.map(ago);
        })
        .0
}

/// The phase `d` leaves the migration in, checked against where it was.
fn check_terminal_kept(obs: &Observed, d: &Decision) -> Result<(), TestCaseError> {
    if let Some(p) = obs.status.phase {
        prop_assert!(d.status.phase.is_some(), "{p:?} went back to no phase");
        if p.is_terminal() {
            prop_assert_eq!(d.status.phase, Some(p), "left a terminal phase");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn deciding_never_panics_nor_leaves_a_terminal_phase(k in knobs(), o in outcome()) {
        let obs = observed(&k);
        let s = Settings::default();
        let d = if obs.deleting_since.is_some() {
            cancel(&obs, &s, now())
        } else {
            // What reconcile runs: decide, carried through the phases that
            // ask no agent; every step passed is kept out of a terminal phase.
            let a = advance(&obs, &s, now());
            for p in &a.passed {
                prop_assert!(!p.phase.is_some_and(Phase::is_terminal), "passed through an end");
            }
            a.decision
        };
        check_terminal_kept(&obs, &d)?;
        if let Some(effect) = d.effect.clone() {
            let after = apply(&obs, &s, d, &effect, o, now());
            check_terminal_kept(&obs, &after)?;
        }
    }

    #[test]
    fn a_cancellation_is_released_only_when_no_job_can_run(k in knobs(), o in outcome()) {
        let mut obs = observed(&k);
        obs.deleting_since = Some(ago(k.deleting.unwrap_or(1)));
        let s = Settings::default();
        let d = cancel(&obs, &s, now());
        let owes = matches!(
            obs.status.phase,
            Some(Phase::Preparing) | Some(Phase::Migrating) | Some(Phase::Finalizing)
        ) || (matches!(obs.status.phase, Some(Phase::Failed) | Some(Phase::Cancelled))
            && settle_pending(&obs.status));
        if owes {
            prop_assert!(!d.finished, "released {:?} before settling", obs.status.phase);
            if let Some(effect) = d.effect.clone() {
                let released = matches!(&o, Outcome::Located(_));
                let after = apply(&obs, &s, d, &effect, o, now());
                // Only locating the VM settles a cancellation.
                prop_assert!(!after.finished || released, "released without locating the VM");
            }
        }
    }
}
