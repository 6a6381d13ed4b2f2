//! The controller's I/O with the agents: what a phase reads before
//! deciding, and carrying out a decided effect. No decisions here.

use kvmotion_api::Phase;
use kvmotion_api::client::{AgentClient, Error as CallError};
use kvmotion_api::hypervisor::DomainInfo;

use super::decide::{Effect, Endpoint, Outcome, Placement, flight_endpoints, stale_copy};
use super::observe::{AgentFailure, Observed, Reading};

/// Asks the agents what the migration's phase needs to know. An agent
/// without an endpoint reads as one that does not answer.
pub async fn read(client: &AgentClient, obs: &Observed) -> Reading {
    let asks = matches!(
        obs.status.phase,
        Some(Phase::Migrating) | Some(Phase::Finalizing)
    );
    let (source, target) = match flight_endpoints(obs) {
        Ok(e) => e,
        Err(f) if asks && obs.status.phase == Some(Phase::Migrating) => {
            return Reading::Job(Err(f));
        }
        Err(f) if asks => {
            return Reading::Presence {
                source: Err(f.clone()),
                target: Err(f),
            };
        }
        Err(_) => return Reading::Nothing,
    };
    let vm = obs
        .status
        .vm
        .as_ref()
        .map(|v| v.uuid.clone())
        .unwrap_or_default();
    match obs.status.phase {
        Some(Phase::Migrating) => match client.status(&source.url, &obs.uid, None).await {
            Ok(job) => Reading::Job(Ok(job)),
            Err(e) if e.reason() == Some("UnknownMigration") => Reading::Unrecorded(
                client
                    .domain(&source.url, &vm)
                    .await
                    .map_err(|e| AgentFailure::from_client(&source.node, &e)),
            ),
            Err(e) => Reading::Job(Err(AgentFailure::from_client(&source.node, &e))),
        },
        Some(Phase::Finalizing) => {
            let (s, t) = tokio::join!(
                presence(client, &source, &vm),
                presence(client, &target, &vm)
            );
            Reading::Presence {
                source: s,
                target: t,
            }
        }
        None
        | Some(Phase::Pending)
        | Some(Phase::Scheduling)
        | Some(Phase::Prechecking)
        | Some(Phase::Preparing)
        | Some(Phase::Succeeded)
        | Some(Phase::Failed)
        | Some(Phase::Cancelled) => Reading::Nothing,
    }
}

async fn presence(
    client: &AgentClient,
    at: &Endpoint,
    vm: &str,
) -> Result<Option<DomainInfo>, AgentFailure> {
    client
        .domain(&at.url, vm)
        .await
        .map(|p| p.domain)
        .map_err(|e| AgentFailure::from_client(&at.node, &e))
}

fn failed(node: &str, e: &CallError) -> Outcome {
    let f = AgentFailure::from_client(node, e);
    if f.transient {
        Outcome::Unreachable(f)
    } else {
        Outcome::Refused(f)
    }
}

/// Carries out `effect` for migration `id`.
pub async fn act(client: &AgentClient, id: &str, effect: &Effect) -> Outcome {
    match effect {
        Effect::Start {
            source,
            target,
            prepare,
            start,
        } => {
            let prepared = match client.prepare(&target.url, id, prepare).await {
                Ok(p) => p,
                Err(e) => return failed(&target.node, &e),
            };
            let mut start = (**start).clone();
            start.target = prepared;
            match client.start(&source.url, id, &start).await {
                Ok(job) => Outcome::Started(Box::new(job)),
                Err(e) => failed(&source.node, &e),
            }
        }
        Effect::ForceComplete { source } => match client.force_complete(&source.url, id).await {
            Ok(_) => Outcome::Done,
            Err(e) => failed(&source.node, &e),
        },
        Effect::Finish {
            source,
            target,
            stale_source,
        } => {
            if let Err(e) = client.finish(&source.url, id).await {
                return failed(&source.node, &e);
            }
            if let Err(e) = client.cleanup(&target.url, id).await {
                return failed(&target.node, &e);
            }
            if let Some(vm) = stale_source
                && let Err(e) = client.undefine_stale(&source.url, vm).await
            {
                if !e.is_refusal() {
                    return failed(&source.node, &e);
                }
                let mut f = AgentFailure::from_client(&source.node, &e);
                f.reason = Some(
                    kvmotion_api::ConditionReason::VMDefinedTwice
                        .as_str()
                        .into(),
                );
                return Outcome::Refused(f);
            }
            Outcome::Done
        }
        Effect::Settle { source, target, vm } => settle(client, id, source, target, vm).await,
    }
}

/// Stops the job if it runs, cleans the target, forgets the job, and
/// reports where the VM is.
async fn settle(
    client: &AgentClient,
    id: &str,
    source: &Endpoint,
    target: &Endpoint,
    vm: &str,
) -> Outcome {
    match client.status(&source.url, id, None).await {
        Ok(job) if !job.phase.is_final() => {
            return match client.abort(&source.url, id).await {
                Ok(_) => Outcome::Stopping("abort requested; waiting for the job to stop".into()),
                Err(e) if e.is_refusal() => Outcome::Stopping(format!(
                    "the job cannot be aborted ({}); waiting for it to end",
                    kvmotion_api::error_chain(&e)
                )),
                Err(e) => failed(&source.node, &e),
            };
        }
        Ok(_) => {}
        // No record of the id: a job libvirt runs on the VM is stopped all
        // the same (the agent may have lost its records).
        Err(e) if e.reason() == Some("UnknownMigration") => {
            match client.abort_domain_job(&source.url, vm).await {
                Ok(a) if a.aborted => {
                    return Outcome::Stopping(
                        "aborted a migration job libvirt ran on the VM without an agent record; waiting for it to stop".into(),
                    );
                }
                Ok(_) => {}
                Err(e) if e.is_refusal() => {}
                Err(e) => return failed(&source.node, &e),
            }
        }
        Err(e) if e.is_refusal() => {}
        Err(e) => return failed(&source.node, &e),
    }
    if let Err(e) = client.cleanup(&target.url, id).await
        && !e.is_refusal()
    {
        return failed(&target.node, &e);
    }
    // Forgetting a job the agent does not know is fine.
    if let Err(e) = client.finish(&source.url, id).await
        && !e.is_refusal()
    {
        return failed(&source.node, &e);
    }
    let (s, t) = tokio::join!(presence(client, source, vm), presence(client, target, vm));
    let mut places = Vec::new();
    for (at, answer) in [(source, s), (target, t)] {
        match answer {
            Ok(Some(d)) => places.push((at.node.clone(), d.state)),
            Ok(None) => {}
            Err(f) if f.transient => return Outcome::Unreachable(f),
            Err(f) => return Outcome::Refused(f),
        }
    }
    // The VM confirmed running on one node: a shut-off copy elsewhere goes,
    // so nobody ever starts it a second time. If it will not go, the
    // placement still lists it and the condition says so.
    let mut removed_stale = None;
    if let Some(stale) = stale_copy(&places).map(str::to_string) {
        let at = if stale == source.node { source } else { target };
        match client.undefine_stale(&at.url, vm).await {
            Ok(_) => {
                places.retain(|(n, _)| *n != stale);
                removed_stale = Some(stale);
            }
            Err(e) if e.is_refusal() => {}
            Err(e) => return failed(&at.node, &e),
        }
    }
    Outcome::Located(Placement {
        places,
        removed_stale,
    })
}
