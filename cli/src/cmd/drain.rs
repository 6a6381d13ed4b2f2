//! `kubectl migrate drain NODE`: creates the node's NodeEvacuation, prints
//! its plan once the controller has made it and, with --wait, follows the
//! moves to the end. A dry run prints the plan and removes its evacuation.

use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kvmotion_api::evacuation::{
    EvacuationPhase, LiveImpossible, NodeEvacuation, NodeEvacuationSpec,
};
use kvmotion_api::migration::PolicyRef;

use super::follow::{Watched, watch_object};
use crate::args::DrainArgs;
use crate::error::Error;
use crate::exit::Outcome;
use crate::format::evacuation::{changes, current_phase, ended, moves, plan, progress};
use crate::output::Output;

const KIND: &str = "NodeEvacuation";

/// What to do once the plan is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPlan {
    /// Stop here with this outcome (removing a dry run's evacuation).
    Exit(Outcome),
    /// Follow the moves to the end.
    Follow,
}

/// Decides, from the first current phase past Planning, whether to stop.
/// A plan that cannot place every VM is a failure unless the caller waits
/// for the cluster to change; so is one that failed at once (another
/// evacuation of the node works).
pub fn after_plan(phase: EvacuationPhase, dry_run: bool, wait: bool) -> AfterPlan {
    match phase {
        EvacuationPhase::Planned => AfterPlan::Exit(Outcome::Done),
        EvacuationPhase::Blocked if dry_run || !wait => AfterPlan::Exit(Outcome::Failed),
        EvacuationPhase::Blocked => AfterPlan::Follow,
        EvacuationPhase::Evacuating if wait => AfterPlan::Follow,
        EvacuationPhase::Evacuating => AfterPlan::Exit(Outcome::Done),
        EvacuationPhase::Completed => AfterPlan::Exit(Outcome::Done),
        EvacuationPhase::Failed => AfterPlan::Exit(Outcome::Failed),
        EvacuationPhase::Cancelled => AfterPlan::Exit(Outcome::Cancelled),
        // Not past planning: the caller waits on.
        EvacuationPhase::Planning => AfterPlan::Follow,
    }
}

/// The exit outcome of an evacuation that ended in `phase`.
pub fn outcome_of(phase: Option<EvacuationPhase>) -> Outcome {
    match phase {
        Some(EvacuationPhase::Completed | EvacuationPhase::Planned) => Outcome::Done,
        Some(EvacuationPhase::Failed | EvacuationPhase::Blocked) => Outcome::Failed,
        Some(
            EvacuationPhase::Cancelled | EvacuationPhase::Planning | EvacuationPhase::Evacuating,
        )
        | None => Outcome::Cancelled,
    }
}

/// The evacuation object to create, named `drain-<node>-…` by the apiserver.
pub fn new_evacuation(node: &str, args: &DrainArgs) -> NodeEvacuation {
    let mut e = NodeEvacuation::new(
        "",
        NodeEvacuationSpec {
            node_name: node.into(),
            dry_run: args.dry_run,
            policy_ref: args.policy.clone().map(|name| PolicyRef { name }),
            target_selector: None,
            live_impossible: if args.offline_if_needed {
                LiveImpossible::Offline
            } else {
                LiveImpossible::Fail
            },
            max_parallel: args.max_parallel,
        },
    );
    e.metadata.name = None;
    e.metadata.generate_name = Some(format!("drain-{}", super::start::generate_name(node)));
    if !args.labels.is_empty() {
        e.metadata.labels = Some(args.labels.iter().cloned().collect());
    }
    e
}

/// Drains `node`: plan, then (with --wait) every move to the end.
pub async fn drain(
    client: Client,
    node: &str,
    args: &DrainArgs,
    out: &mut Output,
) -> Result<Outcome, Error> {
    let api: Api<NodeEvacuation> = Api::all(client);
    let created = api
        .create(&PostParams::default(), &new_evacuation(node, args))
        .await
        .map_err(|source| Error::CreateEvacuation {
            node: node.to_string(),
            source,
        })?;
    let name = created.name_any();
    out.line(&format!("nodeevacuation/{name} created"))?;

    // The plan: the first phase written for this spec past Planning.
    let planned = watch_object(&api, KIND, &name, |e| {
        Ok(current_phase(e).is_some_and(|p| p != EvacuationPhase::Planning))
    })
    .await?;
    let e = match planned {
        Watched::Stopped(e) => e,
        Watched::Gone(last) => {
            let text = match &last {
                Some(e) => ended(e, jiff::Timestamp::now()),
                None => format!("{name} was deleted before it was planned"),
            };
            out.error_line(&text)?;
            return Ok(Outcome::Cancelled);
        }
    };
    out.line(&plan(&e))?;
    let phase = current_phase(&e).unwrap_or(EvacuationPhase::Planning);
    match after_plan(phase, args.dry_run, args.wait) {
        AfterPlan::Exit(outcome) => {
            if args.dry_run {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(Error::DeleteEvacuation { name, source }),
                }
            }
            let text = match phase {
                EvacuationPhase::Evacuating => format!(
                    "{}; follow it with `kubectl get nevac {name} -w`",
                    progress(&e)
                ),
                _ => ended(&e, jiff::Timestamp::now()),
            };
            report(out, outcome, &text)?;
            Ok(outcome)
        }
        AfterPlan::Follow => follow(&api, &name, &e, out).await,
    }
}

/// Follows the moves: a line per VM whose move changed, the counts as the
/// progress line, until the evacuation ends or is deleted.
async fn follow(
    api: &Api<NodeEvacuation>,
    name: &str,
    first: &NodeEvacuation,
    out: &mut Output,
) -> Result<Outcome, Error> {
    let mut shown = moves(first);
    let mut blocked_shown = current_phase(first) == Some(EvacuationPhase::Blocked);
    if blocked_shown {
        out.error_line(&ended(first, jiff::Timestamp::now()))?;
    }
    let watched = watch_object(api, KIND, name, |e| {
        let phase = current_phase(e);
        let now = moves(e);
        for line in changes(&shown, &now) {
            out.line(&line)?;
        }
        shown = now;
        match phase {
            Some(EvacuationPhase::Blocked) if !blocked_shown => {
                blocked_shown = true;
                out.error_line(&plan(e))?;
            }
            Some(EvacuationPhase::Blocked) => {}
            _ => blocked_shown = false,
        }
        if phase.is_some_and(EvacuationPhase::is_terminal) {
            return Ok(true);
        }
        out.progress(&progress(e))?;
        Ok(false)
    })
    .await?;
    let (last, outcome) = match watched {
        Watched::Stopped(e) => {
            let outcome = outcome_of(current_phase(&e));
            (Some(e), outcome)
        }
        Watched::Gone(e) => (e, Outcome::Cancelled),
    };
    let text = match &last {
        Some(e) => ended(e, jiff::Timestamp::now()),
        None => format!("{name} was deleted"),
    };
    report(out, outcome, &text)?;
    Ok(outcome)
}

fn report(out: &mut Output, outcome: Outcome, text: &str) -> Result<(), Error> {
    match outcome {
        Outcome::Done => out.line(text),
        Outcome::Failed | Outcome::Cancelled => out.error_line(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_follows_the_plan_depends_on_the_phase_and_the_flags() {
        use AfterPlan::*;
        use EvacuationPhase::*;
        let cases = [
            (Planned, true, false, Exit(Outcome::Done)),
            (Blocked, true, false, Exit(Outcome::Failed)),
            (Blocked, true, true, Exit(Outcome::Failed)),
            (Blocked, false, false, Exit(Outcome::Failed)),
            (Blocked, false, true, Follow),
            (Evacuating, false, false, Exit(Outcome::Done)),
            (Evacuating, false, true, Follow),
            (Completed, false, true, Exit(Outcome::Done)),
            (Completed, false, false, Exit(Outcome::Done)),
            (Failed, false, true, Exit(Outcome::Failed)),
            (Cancelled, false, true, Exit(Outcome::Cancelled)),
            (Planning, false, true, Follow),
        ];
        for (phase, dry_run, wait, want) in cases {
            assert_eq!(
                after_plan(phase, dry_run, wait),
                want,
                "{phase:?} dry_run={dry_run} wait={wait}"
            );
        }
    }

    #[test]
    fn each_end_has_its_exit_code() {
        use EvacuationPhase::*;
        let cases = [
            (Some(Completed), Outcome::Done),
            (Some(Failed), Outcome::Failed),
            (Some(Cancelled), Outcome::Cancelled),
            (None, Outcome::Cancelled),
        ];
        for (phase, want) in cases {
            assert_eq!(outcome_of(phase), want, "{phase:?}");
        }
    }

    #[test]
    fn the_evacuation_carries_every_option() {
        let args = DrainArgs {
            dry_run: true,
            wait: false,
            offline_if_needed: true,
            policy: Some("maintenance".into()),
            max_parallel: Some(2),
            labels: vec![("team".into(), "ops".into())],
        };
        let e = new_evacuation("Node_A", &args);
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "kvmotion.io/v1alpha1",
                "kind": "NodeEvacuation",
                "metadata": {"generateName": "drain-node-a-", "labels": {"team": "ops"}},
                "spec": {"nodeName": "Node_A", "dryRun": true, "policyRef": {"name": "maintenance"},
                         "liveImpossible": "Offline", "maxParallel": 2},
            })
        );
    }
}
