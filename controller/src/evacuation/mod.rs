//! Node evacuations: emptying a hypervisor node of its VMs, planned as a
//! whole (`plan`), then carried out through migrations (`decide`). The
//! reconcile reads as observe → decide → act → write status, under a
//! finalizer so that deletion cancels what has not started.

pub mod act;
pub mod cordon;
pub mod cordon_watch;
pub mod decide;
pub mod guard;
pub mod guard_watch;
pub mod observe;
pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kvmotion_api::evacuation::{EvacuationPhase, NodeEvacuation, NodeEvacuationStatus};
use tracing::{info, warn};

use crate::Error;
use crate::metrics::Metrics;
use crate::reconcile::decide::Settings;
use crate::reconcile::events::{EventSink, Note};
use crate::reconcile::{self, Stores, status, world};
use decide::Decision;

/// The finalizer that makes deletion cancel what has not started.
pub const FINALIZER: &str = "kvmotion.io/evacuation";

/// The kind this module reconciles, for messages and writes.
pub const KIND: &str = "NodeEvacuation";

/// What every evacuation reconcile shares.
pub struct Context {
    /// NodeEvacuations.
    pub api: Api<NodeEvacuation>,
    /// VirtualMachineMigrations, to create and cancel.
    pub migrations: Api<DynamicObject>,
    /// Every NodeEvacuation, as watched.
    pub evacuations: Store<NodeEvacuation>,
    /// The caches the migration reconciler reads too.
    pub stores: Stores,
    /// Publishes Events.
    pub events: EventSink,
    /// Timing (the heartbeat age that makes a node ineligible).
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per evacuation, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

/// Reconciles one evacuation through the finalizer: Apply drives it,
/// Cleanup cancels what has not started and lets the rest finish.
pub async fn reconcile(obj: Arc<NodeEvacuation>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile::finalized(&ctx.api, FINALIZER, obj, &ctx.metrics, |e, deleting| {
        let ctx = &ctx;
        async move { drive(&e, ctx, deleting).await }
    })
    .await
}

/// Observe → decide → write status → act, for one evacuation.
async fn drive(evac: &NodeEvacuation, ctx: &Context, deleting: bool) -> Result<Action, Error> {
    let evacuations = ctx.evacuations.state();
    let migrations = ctx.stores.migrations.state();
    let hypervisors = ctx.stores.hypervisors.state();
    let policies = ctx.stores.policies.state();
    let heartbeats = world::heartbeats(ctx.stores.leases.state().iter().map(|l| &**l));
    let cordoned = world::cordoned(ctx.stores.nodes.state().iter().map(|n| &**n));
    let snap = observe::Snapshot {
        evacuations: &evacuations,
        migrations: &migrations,
        hypervisors: &hypervisors,
        policies: &policies,
        heartbeats: &heartbeats,
        cordoned: &cordoned,
    };
    let now = Timestamp::now();
    let obs = observe::observe(evac, deleting, &snap, ctx.settings.heartbeat_max_age, now);
    let d = decide::decide(&obs, now);
    record(ctx, evac, &obs.status, &d).await?;
    let name = obs.name.as_str();
    for new in &d.create {
        act::create(&ctx.migrations, evac, new).await?;
        let kind = if new.planned.attempts > 1 {
            "replan"
        } else {
            "first"
        };
        ctx.metrics.evacuation_migration_created(kind);
        info!(evacuation = name, migration = %new.name, vm = %new.planned.vm, target = %new.planned.target_node, "created migration");
    }
    for m in &d.cancel {
        act::cancel(&ctx.migrations, name, m).await?;
        info!(evacuation = name, migration = %m, "cancelled migration that had not started");
    }
    for m in &d.release {
        act::release(&ctx.migrations, name, m).await?;
        info!(evacuation = name, migration = %m, "released running migration to finish on its own");
    }
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(name);
    }
    Ok(d.next.into())
}

/// Writes the status when it changed (conditional on the resourceVersion
/// it was decided from), then events and metrics.
async fn record(
    ctx: &Context,
    evac: &NodeEvacuation,
    old: &NodeEvacuationStatus,
    d: &Decision,
) -> Result<(), Error> {
    if d.status == *old {
        return Ok(());
    }
    let name = kube::ResourceExt::name_any(evac);
    let rv = evac.metadata.resource_version.clone().unwrap_or_default();
    status::write(&ctx.api, KIND, &name, &rv, &d.status).await?;
    if d.status.phase != old.phase
        && let Some(phase) = d.status.phase
    {
        if phase.is_terminal() {
            let created = evac.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let seconds = created.map_or(0.0, |c| {
                jiff::Timestamp::now().duration_since(c).as_secs_f64()
            });
            let counts = d.status.counts.clone().unwrap_or_default();
            ctx.metrics
                .evacuation_ended(phase.as_str(), seconds, counts.moved, counts.failed);
        }
        ctx.events
            .send(reference(evac), vec![note(phase, &d.status)]);
    }
    Ok(())
}

/// The Event for entering `phase`: its reason is the phase, its message
/// the condition that explains it.
fn note(phase: EvacuationPhase, s: &NodeEvacuationStatus) -> Note {
    let cond = |t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.message.clone())
    };
    let (warning, message) = match phase {
        EvacuationPhase::Planning => (false, None),
        EvacuationPhase::Planned | EvacuationPhase::Evacuating => (false, cond(decide::PLANNED)),
        EvacuationPhase::Blocked => (true, cond(decide::PLANNED)),
        EvacuationPhase::Completed => (false, cond(decide::COMPLETED)),
        EvacuationPhase::Failed => (
            true,
            cond(decide::COMPLETED).or_else(|| cond(decide::PLANNED)),
        ),
        EvacuationPhase::Cancelled => (false, Some("deleted before it finished".into())),
    };
    Note {
        warning,
        reason: phase.as_str().into(),
        message: message.unwrap_or_else(|| phase.as_str().into()),
    }
}

fn reference(e: &NodeEvacuation) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", kvmotion_api::GROUP, kvmotion_api::VERSION)),
        kind: Some(KIND.into()),
        name: e.metadata.name.clone(),
        uid: e.metadata.uid.clone(),
        resource_version: e.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// An API call's result with one status code taken as done (a conflict on
/// create: it exists; not found on delete: it is gone).
pub(crate) fn ignore<T>(r: Result<T, kube::Error>, code: u16) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == code => Ok(()),
        Err(e) => Err(e),
    }
}

/// Transient failures retry with backoff; a conflict looks again soon.
pub fn error_policy(obj: Arc<NodeEvacuation>, err: &Error, ctx: Arc<Context>) -> Action {
    let name = obj.metadata.name.clone().unwrap_or_default();
    if let Error::StatusConflict { .. } = err {
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(evacuation = %name, category = err.category(), error = %crate::error::chain(err), "reconcile failed");
    reconcile::retry(&ctx.failures, name, err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::conditions::set_named;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn each_phase_entered_gets_an_event_explaining_it() {
        let mut s = NodeEvacuationStatus::default();
        let t = Time(Timestamp::UNIX_EPOCH);
        set_named(
            &mut s.conditions,
            decide::PLANNED,
            false,
            "Unplaceable",
            "db has no place".into(),
            1,
            t.clone(),
        );
        set_named(
            &mut s.conditions,
            decide::COMPLETED,
            true,
            "NodeEmpty",
            "node-a runs no VM".into(),
            1,
            t,
        );
        let cases = [
            (EvacuationPhase::Blocked, true, "db has no place"),
            (EvacuationPhase::Completed, false, "node-a runs no VM"),
            (EvacuationPhase::Planning, false, "Planning"),
            (
                EvacuationPhase::Cancelled,
                false,
                "deleted before it finished",
            ),
        ];
        for (phase, warning, message) in cases {
            let n = note(phase, &s);
            assert_eq!(n.reason, phase.as_str());
            assert_eq!(n.warning, warning, "{phase:?}");
            assert_eq!(n.message, message, "{phase:?}");
        }
    }
}
