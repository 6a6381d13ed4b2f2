//! Reconciliation of one `VirtualMachineMigration`: observe → decide → act
//! → write status, under a finalizer so that deletion cancels. `decide`
//! is pure; observing, acting and writing are the I/O at the edges.

pub mod agents;
pub mod capacity;
pub mod conditions;
pub mod decide;
pub mod events;
pub mod observe;
pub mod selector;
pub mod status;
pub mod world;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kvmotion_api::client::AgentClient;
use kvmotion_api::hypervisor::Hypervisor;
use kvmotion_api::policy::{ConcurrencyLimits, MigrationPolicy};
use kvmotion_api::{Phase, VirtualMachineMigration};
use tracing::{debug, warn};

use crate::Error;
use crate::metrics::Metrics;
use decide::{Decision, Settings};
use observe::Observed;
use world::{Flight, World};

/// The kind this module reconciles, for messages and writes.
pub const MIGRATION_KIND: &str = "VirtualMachineMigration";

/// The finalizer that makes deletion cancel an in-flight migration.
pub const FINALIZER: &str = "kvmotion.io/cancel";

/// The watch caches decisions read from.
#[derive(Clone)]
pub struct Stores {
    /// Every migration.
    pub migrations: Store<DynamicObject>,
    /// Every Hypervisor.
    pub hypervisors: Store<Hypervisor>,
    /// Every MigrationPolicy.
    pub policies: Store<MigrationPolicy>,
    /// The agents' heartbeat Leases.
    pub leases: Store<Lease>,
    /// Kubernetes Nodes (cordons).
    pub nodes: Store<k8s_openapi::api::core::v1::Node>,
    /// NodeEvacuations: their nodes take no VM.
    pub evacuations: Store<kvmotion_api::evacuation::NodeEvacuation>,
}

/// What every reconciliation shares.
pub struct Context {
    /// Migrations, untyped so that an object the controller cannot parse
    /// still gets a condition instead of stalling the watch.
    pub api: Api<DynamicObject>,
    /// Watch caches.
    pub stores: Stores,
    /// Client of the agents' API.
    pub agents: AgentClient,
    /// Publishes Events, off the reconcile path.
    pub events: events::EventSink,
    /// Timing.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Capacity granted but not yet visible in the cache, by UID: makes
    /// admission atomic across concurrent reconciles.
    pub reservations: Mutex<HashMap<String, Flight>>,
    /// Migrations whose terminal status was written but may not be in the
    /// cache yet, by UID, with that phase: their capacity is free at once,
    /// so the waiting migrations their end wakes can take it (otherwise a
    /// woken reconcile reading the cache first sees no room and waits for
    /// its next recheck, up to 30 s).
    pub ended: Mutex<HashMap<String, Phase>>,
    /// When progress was last written, by UID.
    pub progress_written: Mutex<HashMap<String, Timestamp>>,
    /// Wakes waiting migrations when capacity frees up, and migrations
    /// whose job ended.
    pub wake: UnboundedSender<ObjectRef<DynamicObject>>,
    /// Summaries of migrations by UID, with the resourceVersion each
    /// summarizes.
    pub flight_cache: Mutex<HashMap<String, (String, Arc<Flight>)>>,
    /// Migrations whose job a long poll watches, by UID.
    pub watched_jobs: Mutex<std::collections::HashSet<String>>,
}

/// Reconciles slower than this are logged with their breakdown (debug).
const SLOW_RECONCILE: Duration = Duration::from_millis(100);

/// The most waiting migrations one freed slot wakes.
const WAKE_BATCH: usize = 50;

impl Context {
    /// The world as the caches show it (reservations not yet merged).
    /// The flights of other migrations are summarized only for the phases
    /// whose decisions read them: a running migration's progress poll does
    /// not walk every migration in the cluster.
    fn world(&self, phase: Option<Phase>) -> World {
        World {
            // Shared with the caches, not copied: a reconcile is cheap in
            // memory however many guests the inventories list.
            hypervisors: self.stores.hypervisors.state(),
            policies: self.stores.policies.state(),
            heartbeats: world::heartbeats(self.stores.leases.state().iter().map(|l| &**l)),
            cordoned: world::cordoned(self.stores.nodes.state().iter().map(|n| &**n)),
            evacuating: world::evacuating(self.stores.evacuations.state().iter().map(|e| &**e)),
            flights: if world::needs_flights(phase) {
                self.flights()
            } else {
                Vec::new()
            },
        }
    }

    /// Every migration in the cache, summarized. A summary is kept per UID
    /// for as long as the object's resourceVersion stays the same: reading
    /// fields out of a thousand JSON objects on every planning reconcile
    /// was most of the controller's CPU at scale.
    pub fn flights(&self) -> Vec<Arc<Flight>> {
        let objs = self.stores.migrations.state();
        let Ok(mut cache) = self.flight_cache.lock() else {
            return objs.iter().map(|m| Arc::new(Flight::of(m))).collect();
        };
        let out: Vec<Arc<Flight>> = objs
            .iter()
            .map(|m| {
                let uid = m.metadata.uid.as_deref().unwrap_or_default();
                let rv = m.metadata.resource_version.as_deref().unwrap_or_default();
                match cache.get(uid) {
                    Some((v, f)) if v == rv => f.clone(),
                    _ => {
                        let f = Arc::new(Flight::of(m));
                        cache.insert(uid.to_string(), (rv.to_string(), f.clone()));
                        f
                    }
                }
            })
            .collect();
        // Deleted migrations leave entries behind; drop them now and then.
        if cache.len() > 2 * out.len() + 64 {
            let live: std::collections::HashSet<&str> =
                out.iter().map(|f| f.uid.as_str()).collect();
            cache.retain(|uid, _| live.contains(uid.as_str()));
        }
        out
    }

    /// Shows migrations that just ended in their terminal phase, dropping
    /// those the cache caught up with (or that are gone).
    fn merge_ended(ended: &mut HashMap<String, Phase>, flights: &mut [Arc<Flight>]) {
        ended.retain(|uid, _| {
            flights
                .iter()
                .any(|f| &f.uid == uid && !f.phase.is_some_and(Phase::is_terminal))
        });
        for f in flights.iter_mut() {
            if let Some(phase) = ended.get(&f.uid) {
                *f = Arc::new(Flight {
                    phase: Some(*phase),
                    ..(**f).clone()
                });
            }
        }
    }

    /// Counts reservations as active, dropping those the cache caught up with.
    fn merge_reservations(reservations: &mut HashMap<String, Flight>, world: &mut World) {
        reservations.retain(|uid, _| {
            world
                .flights
                .iter()
                .any(|f| &f.uid == uid && f.is_waiting())
        });
        for f in world.flights.iter_mut() {
            if let Some(r) = reservations.get(&f.uid) {
                *f = Arc::new(Flight {
                    phase: Some(Phase::Scheduling),
                    ..r.clone()
                });
            }
        }
    }

    /// Asks the waiting migrations that can start under `limits` (the
    /// ended migration's) to look for capacity again, in queue order; at
    /// least the queue's head, in case the caches lag behind.
    pub fn wake_waiting(&self, limits: &ConcurrencyLimits) {
        let mut flights = self.flights();
        if let Ok(mut ended) = self.ended.lock() {
            Context::merge_ended(&mut ended, &mut flights);
        }
        let mut woken: Vec<&Flight> = capacity::startable(&flights, limits, WAKE_BATCH);
        if woken.is_empty() {
            woken.extend(
                flights
                    .iter()
                    .filter(|f| f.is_waiting())
                    .min_by(|a, b| a.queue_key().cmp(&b.queue_key()))
                    .map(|f| &**f),
            );
        }
        let resource = ApiResource::erase::<VirtualMachineMigration>(&());
        for f in woken {
            let _ = self
                .wake
                .unbounded_send(ObjectRef::new_with(&f.name, resource.clone()));
        }
    }
}

impl Context {
    /// Long-polls the source agent for the end of the job, so Finalizing
    /// starts the moment the job ends instead of at the next progress poll.
    fn watch_job(self: &Arc<Self>, obs: &Observed, phase: Option<Phase>) {
        if phase != Some(Phase::Migrating) || obs.deleting_since.is_some() {
            return;
        }
        let Ok((source, _)) = decide::flight_endpoints(obs) else {
            return;
        };
        let fresh = self
            .watched_jobs
            .lock()
            .map(|mut w| w.insert(obs.uid.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let (ctx, uid, name) = (self.clone(), obs.uid.clone(), obs.name.clone());
        tokio::spawn(async move {
            // The receiver goes when the leadership term ends: stop then.
            while !ctx.wake.is_closed() {
                let answer = ctx
                    .agents
                    .status(&source.url, &uid, Some(Duration::from_secs(25)))
                    .await;
                // Any end, or an error the reconcile must see, wakes it.
                if answer.map_or(true, |job| job.phase.is_final()) {
                    break;
                }
            }
            if let Ok(mut w) = ctx.watched_jobs.lock() {
                w.remove(&uid);
            }
            let resource = ApiResource::erase::<VirtualMachineMigration>(&());
            let _ = ctx
                .wake
                .unbounded_send(ObjectRef::new_with(&name, resource));
        });
    }
}

/// Reconciles one migration through the finalizer: Apply drives it, Cleanup
/// cancels it.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    finalized(&ctx.api, FINALIZER, obj, &ctx.metrics, |o, deleting| {
        let ctx = &ctx;
        async move { drive(&o, ctx, deleting).await }
    })
    .await
}

/// Runs `drive(object, deleting)` under the finalizer `name` (so that both
/// branches go through one function) and counts the outcome in metrics.
pub async fn finalized<K, F, Fut>(
    api: &Api<K>,
    name: &str,
    obj: Arc<K>,
    metrics: &Metrics,
    drive: F,
) -> Result<Action, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    F: FnOnce(Arc<K>, bool) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let result = finalizer(api, name, obj, |event| match event {
        Finalizer::Apply(o) => drive(o, false),
        Finalizer::Cleanup(o) => drive(o, true),
    })
    .await
    .map_err(Error::from_finalizer);
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    };
    metrics.reconciled(label, started.elapsed().as_secs_f64());
    result
}

/// Observe → decide → act → write status, for one migration.
async fn drive(obj: &DynamicObject, ctx: &Arc<Context>, deleting: bool) -> Result<Action, Error> {
    let t0 = Instant::now();
    let mut obs = observe::observe(obj);
    if let Some(message) = obs.status_problem.clone() {
        // Nothing is decided from a status that cannot be read: it records
        // what the agents were asked. A person fixes it; the edit wakes us.
        ctx.events.send(
            reference(obj),
            vec![events::Note {
                warning: true,
                reason: kvmotion_api::ConditionReason::StatusUnreadable
                    .as_str()
                    .into(),
                message: format!(
                    "the status cannot be read ({message}); nothing is done until it is fixed"
                ),
            }],
        );
        return Err(Error::StatusUnreadable {
            name: obs.name,
            message,
        });
    }
    obs.world = ctx.world(obs.status.phase);
    obs.last_progress_write = ctx
        .progress_written
        .lock()
        .ok()
        .and_then(|m| m.get(&obs.uid).copied());
    if !deleting {
        obs.reading = agents::read(&ctx.agents, &obs).await;
    }
    let t_read = t0.elapsed();
    let now = Timestamp::now();
    let decide::Advance { decision, passed } = if deleting {
        decide::Advance {
            decision: decide::cancel(&obs, &ctx.settings, now),
            passed: Vec::new(),
        }
    } else {
        admit_atomically(ctx, &mut obs, now)
    };
    let decision = match decision.effect.clone() {
        Some(effect) => {
            if effect.needs_fresh_state() {
                fresh(ctx, &obs).await?;
            }
            let outcome = agents::act(&ctx.agents, &obs.uid, &effect).await;
            debug!(migration = %obs.name, ?effect, ?outcome, "agent call");
            decide::outcome::apply(
                &obs,
                &ctx.settings,
                decision,
                &effect,
                outcome,
                Timestamp::now(),
            )
        }
        None => decision,
    };
    let t_act = t0.elapsed();
    record(ctx, obj, &obs, &decision, &passed).await?;
    if t0.elapsed() >= SLOW_RECONCILE {
        // Where a slow reconcile spent its time: agents or the apiserver.
        debug!(
            migration = %obs.name,
            phase = ?obs.status.phase,
            read_ms = t_read.as_millis() as u64,
            act_ms = (t_act - t_read).as_millis() as u64,
            record_ms = (t0.elapsed() - t_act).as_millis() as u64,
            "slow reconcile"
        );
    }
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&obs.name);
    }
    ctx.watch_job(&obs, decision.status.phase);
    if deleting && !decision.finished {
        return Err(Error::CancelPending {
            name: obs.name.clone(),
        });
    }
    Ok(decision.next.into())
}

/// Fails with a conflict unless the stored object is still the one `obs`
/// was read from.
async fn fresh(ctx: &Context, obs: &Observed) -> Result<(), Error> {
    let now = ctx
        .api
        .get_metadata(&obs.name)
        .await
        .map_err(|source| Error::ReadMigration {
            name: obs.name.clone(),
            source,
        })?;
    if now.metadata.resource_version.as_deref() == Some(obs.resource_version.as_str()) {
        return Ok(());
    }
    Err(Error::StatusConflict {
        kind: MIGRATION_KIND,
        name: obs.name.clone(),
    })
}

/// Decides with reservations merged, holding their lock so that two
/// reconciles cannot both take the last slot or the same VM.
fn admit_atomically(ctx: &Context, obs: &mut Observed, now: Timestamp) -> decide::Advance {
    if !world::needs_flights(obs.status.phase) {
        return decide::advance(obs, &ctx.settings, now);
    }
    let Ok(mut reservations) = ctx.reservations.lock() else {
        return decide::advance(obs, &ctx.settings, now);
    };
    if let Ok(mut ended) = ctx.ended.lock() {
        Context::merge_ended(&mut ended, &mut obs.world.flights);
    }
    Context::merge_reservations(&mut reservations, &mut obs.world);
    let d = decide::advance(obs, &ctx.settings, now);
    if let Some(me) = &d.decision.admitted {
        // Counted as active until the cache shows Scheduling.
        reservations.insert(obs.uid.clone(), me.clone());
    }
    d
}

/// Writes the status when it changed, then events and metrics for each
/// step: the statuses `passed` on the way, then the one written.
async fn record(
    ctx: &Context,
    obj: &DynamicObject,
    obs: &Observed,
    d: &Decision,
    passed: &[kvmotion_api::VirtualMachineMigrationStatus],
) -> Result<(), Error> {
    if d.status == obs.status {
        return Ok(());
    }
    if obs.status.phase.is_some_and(Phase::is_terminal) && d.status.phase != obs.status.phase {
        // A decided end stands; whatever asked to change it is a bug.
        warn!(migration = %obs.name, from = ?obs.status.phase, to = ?d.status.phase, "refusing to overwrite a terminal phase");
        return Ok(());
    }
    status::write(
        &ctx.api,
        MIGRATION_KIND,
        &obs.name,
        &obs.resource_version,
        &d.status,
    )
    .await?;
    let now = Timestamp::now();
    if d.status.progress != obs.status.progress
        && let Ok(mut m) = ctx.progress_written.lock()
    {
        m.insert(obs.uid.clone(), now);
    }
    ctx.metrics.status_written();
    let mut notes = Vec::new();
    let mut before = &obs.status;
    for step in passed.iter().chain([&d.status]) {
        ctx.metrics.transition(before, step);
        notes.extend(events::notes(before, step));
        before = step;
    }
    let ended = d.status.phase.is_some_and(Phase::is_terminal)
        && !obs.status.phase.is_some_and(Phase::is_terminal);
    if ended {
        if let Ok(mut m) = ctx.progress_written.lock() {
            m.remove(&obs.uid);
        }
        if let (Ok(mut m), Some(phase)) = (ctx.ended.lock(), d.status.phase) {
            m.insert(obs.uid.clone(), phase);
        }
        let limits = d
            .status
            .policy
            .as_ref()
            .map_or_else(ConcurrencyLimits::unlimited, |p| p.concurrency.clone());
        ctx.wake_waiting(&limits);
    }
    ctx.events.send(reference(obj), notes);
    Ok(())
}

fn reference(obj: &DynamicObject) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", kvmotion_api::GROUP, kvmotion_api::VERSION)),
        kind: Some("VirtualMachineMigration".into()),
        name: obj.metadata.name.clone(),
        uid: obj.metadata.uid.clone(),
        resource_version: obj.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Retries transient failures with exponential backoff per object; a
/// permanent one waits for the object to change. A cancellation waiting
/// for its job to stop looks again soon.
pub fn error_policy(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Context>) -> Action {
    let name = obj.metadata.name.clone().unwrap_or_default();
    match err {
        Error::CancelPending { .. } => return Action::requeue(Duration::from_secs(1)),
        // The newer object is on its way through the watch; look at it soon.
        Error::StatusConflict { .. } => return Action::requeue(Duration::from_millis(200)),
        _ => {}
    }
    warn!(migration = %name, category = err.category(), error = %crate::error::chain(err), "reconcile failed");
    retry(&ctx.failures, name, err)
}

/// Waits for a change after a permanent error; after a transient one,
/// backs off by the object's count of consecutive failures.
pub fn retry(failures: &Mutex<HashMap<String, u32>>, name: String, err: &Error) -> Action {
    if !err.is_transient() {
        return Action::await_change();
    }
    let attempt = failures
        .lock()
        .map(|mut f| {
            let n = f.entry(name).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    Action::requeue(backoff(attempt))
}

/// Delay before retry number `attempt` (1-based): 1 s doubling to 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_five_minutes() {
        let got: Vec<u64> = [1, 2, 3, 9, 10, 50]
            .iter()
            .map(|&a| backoff(a).as_secs())
            .collect();
        assert_eq!(got, vec![1, 2, 4, 256, 300, 300]);
    }

    fn flight(uid: &str, phase: Phase) -> Arc<Flight> {
        Arc::new(Flight {
            uid: uid.into(),
            name: uid.into(),
            created: Timestamp::UNIX_EPOCH,
            phase: Some(phase),
            vm_name: None,
            vm_uuid: None,
            source: Some("node-a".into()),
            target: Some("node-b".into()),
            memory_bytes: None,
            evacuation: false,
        })
    }

    #[test]
    fn a_migration_that_just_ended_frees_its_capacity_before_the_cache_shows_it() {
        let mut ended: HashMap<String, Phase> = [
            ("a".to_string(), Phase::Succeeded),
            ("gone".to_string(), Phase::Failed),
        ]
        .into();
        // The cache still shows "a" Finalizing; "gone" is no longer there.
        let mut flights = vec![
            flight("a", Phase::Finalizing),
            flight("b", Phase::Migrating),
        ];
        Context::merge_ended(&mut ended, &mut flights);
        assert_eq!(flights[0].phase, Some(Phase::Succeeded));
        assert!(!flights[0].is_active());
        assert_eq!(flights[1].phase, Some(Phase::Migrating));
        assert_eq!(ended.keys().collect::<Vec<_>>(), ["a"]);
        // Once the cache shows it ended, the entry goes.
        let mut flights = vec![flight("a", Phase::Succeeded)];
        Context::merge_ended(&mut ended, &mut flights);
        assert!(ended.is_empty());
    }
}
