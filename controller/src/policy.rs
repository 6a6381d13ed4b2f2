//! Resolving a migration's policy: kvmotion's built-in defaults, overlaid by
//! the named (or the default) `MigrationPolicy`, overlaid by the migration's
//! own overrides. A pure function of the objects it is given.

use kvmotion_api::ConditionReason;
use kvmotion_api::agent::ResolvedTuning;
use kvmotion_api::migration::PolicyRef;
use kvmotion_api::policy::{ConcurrencyLimits, MigrationPolicy};
use kvmotion_api::tuning::{MigrationTuning, Transport};
use std::sync::Arc;

/// The policy a migration runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Every tuning value, set.
    pub tuning: ResolvedTuning,
    /// Concurrency limits (from the policy the migration runs under).
    pub limits: ConcurrencyLimits,
    /// The policy used, if any.
    pub policy: Option<String>,
    /// Something a person should know (e.g. several default policies).
    pub note: Option<String>,
}

/// Why no policy could be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyProblem {
    /// `spec.policyRef` names a policy that does not exist.
    NotFound(String),
    /// The policy (named here, if any) and the overrides together ask for
    /// `tls` over a Tunnelled transport. Admission refuses that within one
    /// object; across two, neither encryption choice is dropped silently.
    TlsTunnelled(Option<String>),
}

impl PolicyProblem {
    /// The condition reason it is reported with.
    pub fn reason(&self) -> ConditionReason {
        match self {
            PolicyProblem::NotFound(_) => ConditionReason::PolicyNotFound,
            PolicyProblem::TlsTunnelled(_) => ConditionReason::TuningConflict,
        }
    }

    /// What a person should do about it.
    pub fn message(&self) -> String {
        match self {
            PolicyProblem::NotFound(name) => format!(
                "spec.policyRef names MigrationPolicy {name}, which does not exist; create it or fix the reference"
            ),
            PolicyProblem::TlsTunnelled(policy) => format!(
                "tls and transport Tunnelled exclude each other, and they come from {} and spec.overrides: choose tls for the Direct transport, or Tunnelled over a qemu+tls connection between the nodes",
                policy.as_deref().map_or_else(
                    || "kvmotion's defaults".to_string(),
                    |p| format!("MigrationPolicy {p}")
                )
            ),
        }
    }
}

/// Resolves the policy of a migration with `policy_ref` and `overrides`,
/// given every `MigrationPolicy` in the cluster.
pub fn resolve(
    policies: &[Arc<MigrationPolicy>],
    policy_ref: Option<&PolicyRef>,
    overrides: Option<&MigrationTuning>,
) -> Result<Resolved, PolicyProblem> {
    let (policy, note) = match policy_ref {
        Some(r) => {
            let p = policies
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(r.name.as_str()))
                .ok_or_else(|| PolicyProblem::NotFound(r.name.clone()))?;
            (Some(&**p), None)
        }
        None => default_policy(policies),
    };
    let mut tuning = ResolvedTuning::default();
    if let Some(p) = policy {
        overlay(&mut tuning, &p.spec.tuning);
    }
    if let Some(o) = overrides {
        overlay(&mut tuning, o);
    }
    if tuning.tls && tuning.transport == Transport::Tunnelled {
        return Err(PolicyProblem::TlsTunnelled(
            policy.and_then(|p| p.metadata.name.clone()),
        ));
    }
    Ok(Resolved {
        tuning,
        limits: policy
            .map(|p| p.spec.concurrency.clone())
            .unwrap_or_default(),
        policy: policy.and_then(|p| p.metadata.name.clone()),
        note,
    })
}

/// The policy marked `isDefault`; the oldest when several are (then by
/// name), with a note naming them all.
fn default_policy(policies: &[Arc<MigrationPolicy>]) -> (Option<&MigrationPolicy>, Option<String>) {
    let mut defaults: Vec<&MigrationPolicy> = policies
        .iter()
        .map(|p| &**p)
        .filter(|p| p.spec.is_default)
        .collect();
    defaults.sort_by(|a, b| {
        let key = |p: &MigrationPolicy| {
            (
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let note = (defaults.len() > 1).then(|| {
        let names: Vec<&str> = defaults
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        format!(
            "several MigrationPolicies are marked isDefault ({}); using the oldest, {}",
            names.join(", "),
            names.first().copied().unwrap_or_default()
        )
    });
    (defaults.first().copied(), note)
}

/// Sets every field `from` sets.
fn overlay(t: &mut ResolvedTuning, from: &MigrationTuning) {
    let MigrationTuning {
        bandwidth_mibps,
        max_downtime_ms,
        completion_timeout_per_gib_seconds,
        progress_timeout_seconds,
        on_timeout,
        auto_converge,
        post_copy,
        post_copy_recovery_timeout_seconds,
        parallel_connections,
        compression,
        storage,
        tls,
        transport,
    } = from;
    // Destructured above so a new tuning field fails to compile here until
    // it is resolved too.
    set(&mut t.bandwidth_mibps, bandwidth_mibps);
    set(&mut t.max_downtime_ms, max_downtime_ms);
    set(
        &mut t.completion_timeout_per_gib_seconds,
        completion_timeout_per_gib_seconds,
    );
    set(&mut t.progress_timeout_seconds, progress_timeout_seconds);
    set(&mut t.on_timeout, on_timeout);
    set(&mut t.auto_converge, auto_converge);
    set(&mut t.post_copy, post_copy);
    set(
        &mut t.post_copy_recovery_timeout_seconds,
        post_copy_recovery_timeout_seconds,
    );
    set(&mut t.parallel_connections, parallel_connections);
    set(&mut t.compression, compression);
    set(&mut t.storage, storage);
    set(&mut t.tls, tls);
    set(&mut t.transport, transport);
}

fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *field = v.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kvmotion_api::policy::MigrationPolicySpec;
    use kvmotion_api::tuning::TimeoutAction;

    fn policy(name: &str, default: bool, created: i64, tuning: MigrationTuning) -> MigrationPolicy {
        let mut p = MigrationPolicy::new(
            name,
            MigrationPolicySpec {
                is_default: default,
                tuning,
                ..Default::default()
            },
        );
        p.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        p
    }

    fn bw(mibps: u32) -> MigrationTuning {
        MigrationTuning {
            bandwidth_mibps: Some(mibps),
            ..Default::default()
        }
    }

    #[test]
    fn policies_resolve_in_layers() {
        let wan = policy(
            "wan",
            false,
            10,
            MigrationTuning {
                on_timeout: Some(TimeoutAction::Abort),
                ..bw(100)
            },
        );
        let dflt = policy("default", true, 20, bw(500));
        let both = vec![Arc::new(wan), Arc::new(dflt)];
        let named = Some(PolicyRef { name: "wan".into() });
        // (case, policies, ref, overrides) → (bandwidth, onTimeout, policy used)
        type Case<'a> = (
            &'a str,
            &'a [Arc<MigrationPolicy>],
            Option<PolicyRef>,
            Option<MigrationTuning>,
            (u32, TimeoutAction, Option<&'a str>),
        );
        let cases: Vec<Case> = vec![
            (
                "no policies: built-in defaults",
                &[],
                None,
                None,
                (0, TimeoutAction::PostCopy, None),
            ),
            (
                "no ref: the default policy",
                &both,
                None,
                None,
                (500, TimeoutAction::PostCopy, Some("default")),
            ),
            (
                "the named policy, not the default",
                &both,
                named.clone(),
                None,
                (100, TimeoutAction::Abort, Some("wan")),
            ),
            (
                "overrides win over the policy",
                &both,
                named,
                Some(bw(7)),
                (7, TimeoutAction::Abort, Some("wan")),
            ),
        ];
        for (name, policies, r, o, want) in cases {
            let got = resolve(policies, r.as_ref(), o.as_ref()).unwrap();
            assert_eq!(
                (
                    got.tuning.bandwidth_mibps,
                    got.tuning.on_timeout,
                    got.policy.as_deref()
                ),
                want,
                "{name}"
            );
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn tls_from_one_object_and_a_tunnel_from_the_other_is_a_conflict() {
        let tls = MigrationTuning {
            tls: Some(true),
            ..MigrationTuning::default()
        };
        let tunnel = MigrationTuning {
            transport: Some(Transport::Tunnelled),
            ..MigrationTuning::default()
        };
        let secure = vec![Arc::new(policy("secure", true, 1, tls.clone()))];
        let piped = vec![Arc::new(policy("piped", true, 1, tunnel.clone()))];
        // (case, policies, overrides, conflict naming)
        let cases: Vec<(
            &str,
            &[Arc<MigrationPolicy>],
            MigrationTuning,
            Option<Option<&str>>,
        )> = vec![
            (
                "policy tls, override tunnel",
                &secure,
                tunnel.clone(),
                Some(Some("secure")),
            ),
            (
                "policy tunnel, override tls",
                &piped,
                tls.clone(),
                Some(Some("piped")),
            ),
            (
                "policy tunnel, override Direct",
                &piped,
                MigrationTuning {
                    transport: Some(Transport::Direct),
                    tls: Some(true),
                    ..MigrationTuning::default()
                },
                None,
            ),
            ("no policy: the overrides alone", &[], tunnel.clone(), None),
        ];
        for (name, policies, o, want) in cases {
            let got = resolve(policies, None, Some(&o));
            match want {
                Some(p) => {
                    let problem = got.expect_err(name);
                    assert_eq!(
                        problem,
                        PolicyProblem::TlsTunnelled(p.map(str::to_string)),
                        "{name}"
                    );
                    assert_eq!(problem.reason(), ConditionReason::TuningConflict, "{name}");
                    assert!(problem.message().contains("exclude each other"), "{name}");
                }
                None => assert!(got.is_ok(), "{name}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_missing_named_policy_is_a_problem() {
        let r = PolicyRef {
            name: "gone".into(),
        };
        assert_eq!(
            resolve(&[], Some(&r), None),
            Err(PolicyProblem::NotFound("gone".into()))
        );
    }

    #[test]
    fn of_several_defaults_the_oldest_wins_and_the_note_says_so() {
        let all = vec![
            Arc::new(policy("b-new", true, 30, bw(2))),
            Arc::new(policy("a-old", true, 10, bw(1))),
        ];
        let got = resolve(&all, None, None).unwrap();
        assert_eq!(
            (got.policy.as_deref(), got.tuning.bandwidth_mibps),
            (Some("a-old"), 1)
        );
        assert!(got.note.unwrap().contains("a-old, b-new"));
    }

    #[test]
    fn concurrency_limits_come_from_the_policy_or_the_defaults() {
        assert_eq!(
            resolve(&[], None, None).unwrap().limits,
            ConcurrencyLimits::default()
        );
        let mut p = policy("p", true, 1, MigrationTuning::default());
        p.spec.concurrency.per_cluster = 1;
        assert_eq!(
            resolve(&[Arc::new(p)], None, None)
                .unwrap()
                .limits
                .per_cluster,
            1
        );
    }
}
