//! Wires the controller together: client, HTTP endpoint, leader election
//! and the reconcile loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Config};
use kvmotion_api::client::{AgentClient, Token};
use kvmotion_api::evacuation::NodeEvacuation;
use kvmotion_api::hypervisor::Hypervisor;
use kvmotion_api::policy::{ConcurrencyLimits, MigrationPolicy};
use kvmotion_api::{Phase, VirtualMachineMigration};
use tracing::{debug, info, warn};

use crate::Error;
use crate::cli::Args;
use crate::evacuation;
use crate::http::{self, Health};
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::reconcile::decide::Settings;
use crate::reconcile::events::EventSink;
use crate::reconcile::{self, Context, Stores};

/// Tasks publishing Events: enough to keep up with hundreds of transitions
/// a second against a busy API server, few enough not to crowd it.
const EVENT_WORKERS: usize = 4;
/// Batches of Events each of them may hold before new ones are dropped.
const EVENT_QUEUE: usize = 1024;
/// How long a stopping controller waits for queued Events, well inside a
/// pod's termination grace period.
const EVENT_FLUSH: Duration = Duration::from_secs(5);

/// Field manager of the leader-election Lease.
pub const LEASE_FIELD_MANAGER: &str = "kvmotion-controller-lease";

/// Builds a client from `--kubeconfig`, else in-cluster or `$KUBECONFIG`.
pub async fn client(args: &Args) -> Result<Client, Error> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::LoadKubeConfig(Box::new(e)))?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| Error::LoadKubeConfig(Box::new(e)))?
        }
        None => Config::infer()
            .await
            .map_err(|e| Error::LoadKubeConfig(Box::new(e)))?,
    };
    Client::try_from(config).map_err(Error::BuildClient)
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = client(&args).await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let server = tokio::spawn(http::serve(args.http_addr, health.clone(), stopped()));
    wait_for_apiserver(&client, stopped()).await;
    health.ready.store(true, Ordering::Relaxed);

    let token = match &args.agent_token_file {
        Some(path) => Token::File(path.clone()),
        None => Token::None,
    };
    let agents =
        AgentClient::new(token, args.agent_ca_file.as_deref()).map_err(Error::AgentClient)?;
    let setup = Setup {
        client: client.clone(),
        agents,
        metrics: metrics.clone(),
        settings: args.settings(),
        agent_namespace: args.agent_namespace.clone(),
        selector: args.migration_selector.clone(),
        concurrency: args.max_concurrent_reconciles,
        cordon: args
            .evacuate_on_cordon
            .then(|| evacuation::cordon_watch::CordonSettings {
                labels: evacuation::cordon::labels_for_selector(args.migration_selector.as_deref()),
                live_impossible: args.cordon_live_impossible.into(),
                policy: args.cordon_policy.clone(),
            }),
        guard: args
            .drain_guard
            .then(|| evacuation::guard_watch::GuardSettings {
                namespace: args.lease_namespace.clone(),
                owner: args.drain_guard_owner.clone().unwrap_or_default(),
                image: args.drain_guard_image.clone().unwrap_or_default(),
                pull_policy: args.drain_guard_pull_policy.clone(),
                pull_secrets: args.drain_guard_pull_secrets.clone(),
            }),
        // One sink for the process: Events queued in a term that ended are
        // still published, and flushed before the process exits.
        events: EventSink::start(
            Recorder::new(
                client.clone(),
                Reporter {
                    controller: kvmotion_api::CONTROLLER_MANAGER.into(),
                    instance: Some(args.identity()),
                },
            ),
            metrics.clone(),
            EVENT_WORKERS,
            EVENT_QUEUE,
        ),
    };
    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: args.identity(),
        duration: Duration::from_secs(args.lease_duration_seconds),
        grace: Duration::from_secs(args.lease_grace_seconds),
    };
    let result = leader::run_while_leader(client.clone(), lease, &metrics, stopped(), || {
        run_controller(setup.clone(), stopped())
    })
    .await;
    if !setup.events.flush(EVENT_FLUSH).await {
        warn!("stopping with Events still unpublished");
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(join) => warn!(error = %join, "HTTP task ended abnormally"),
    }
    result
}

fn migrations_api(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::erase::<VirtualMachineMigration>(&()),
    )
}

/// What the reconcile loop is built from each time leadership is won.
#[derive(Clone)]
struct Setup {
    client: Client,
    agents: AgentClient,
    metrics: Arc<Metrics>,
    settings: Settings,
    agent_namespace: String,
    selector: Option<String>,
    concurrency: u16,
    events: EventSink,
    /// Set with `--evacuate-on-cordon`.
    cordon: Option<evacuation::cordon_watch::CordonSettings>,
    /// Set with `--drain-guard`.
    guard: Option<evacuation::guard_watch::GuardSettings>,
}

/// A task of one leadership term. The term's future is dropped when the
/// Lease is lost or the process stops, and its tasks must go with it: a
/// standby must not keep watching, counting or holding the caches.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a watch cache of the objects of `api` that `config` selects and
/// returns it once filled, with the task feeding it; `changed`, if given,
/// is signalled on every change.
async fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Option<Arc<tokio::sync::Notify>>,
) -> (Store<K>, AbortOnDrop)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config).default_backoff());
    let feed = AbortOnDrop(tokio::spawn(stream.for_each(move |_| {
        if let Some(c) = &changed {
            c.notify_one();
        }
        futures::future::ready(())
    })));
    if store.wait_until_ready().await.is_err() {
        warn!("a watch cache closed before it was ready");
    }
    (store, feed)
}

async fn run_controller(
    setup: Setup,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    info!("reconciling VirtualMachineMigrations and NodeEvacuations");
    let stop = futures::FutureExt::shared(stop);
    let client = setup.client.clone();
    let resource = ApiResource::erase::<VirtualMachineMigration>(&());
    let policy_changed = Arc::new(tokio::sync::Notify::new());
    let all = watcher::Config::default;
    let mut selected = all();
    if let Some(sel) = &setup.selector {
        selected = selected.labels(sel);
    }
    let (
        (hypervisors, hv_feed),
        (policies, policy_feed),
        (leases, lease_feed),
        (nodes, node_feed),
        (evacuations, evacuation_feed),
    ) = tokio::join!(
        cache(Api::<Hypervisor>::all(client.clone()), all(), None),
        cache(
            Api::<MigrationPolicy>::all(client.clone()),
            all(),
            Some(policy_changed.clone())
        ),
        cache(
            Api::<Lease>::namespaced(client.clone(), &setup.agent_namespace),
            all(),
            None
        ),
        cache(Api::<Node>::all(client.clone()), all(), None),
        // Read by target choice: a node being emptied takes no VM.
        cache(
            Api::<NodeEvacuation>::all(client.clone()),
            selected.clone(),
            None
        ),
    );
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let watch = selected;
    // On shutdown the controller starts no new reconcile and lets the
    // running ones write their status (the term drains them).
    let controller = Controller::new_with(migrations_api(&client), watch, resource)
        .with_config(kube::runtime::controller::Config::default().concurrency(setup.concurrency))
        .reconcile_on(woken)
        .graceful_shutdown_on(stop.clone());
    let stores = Stores {
        migrations: controller.store(),
        hypervisors,
        policies,
        leases,
        nodes,
        evacuations,
    };
    let ctx = Arc::new(Context {
        api: migrations_api(&client),
        stores: stores.clone(),
        agents: setup.agents.clone(),
        events: setup.events.clone(),
        settings: setup.settings.clone(),
        metrics: setup.metrics.clone(),
        failures: Default::default(),
        reservations: Default::default(),
        ended: Default::default(),
        progress_written: Default::default(),
        wake,
        watched_jobs: Default::default(),
        flight_cache: Default::default(),
    });
    // A policy edit may raise a limit: waiting migrations look again now
    // rather than at their next recheck.
    let policy_wakes = AbortOnDrop(tokio::spawn({
        let ctx = ctx.clone();
        async move {
            loop {
                policy_changed.notified().await;
                ctx.wake_waiting(&ConcurrencyLimits::unlimited());
            }
        }
    }));
    let gauges = AbortOnDrop(tokio::spawn(count_in_flight(
        ctx.clone(),
        setup.metrics.clone(),
    )));
    // Locals drop in reverse order: the tasks are aborted, then the gauges
    // zeroed, so a standby never reports migrations in flight.
    let _zero = ZeroInFlight(setup.metrics.clone());
    let _term = (
        hv_feed,
        policy_feed,
        lease_feed,
        node_feed,
        evacuation_feed,
        policy_wakes,
        gauges,
    );
    let migrations = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %crate::error::chain(&e), "controller event");
            }
        });
    tokio::join!(migrations, run_evacuations(&setup, stores, stop));
}

/// The NodeEvacuation controller: woken by its objects and by the
/// migrations they own.
async fn run_evacuations<S>(setup: &Setup, stores: Stores, stop: S)
where
    S: std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
{
    let stop_cordons = stop.clone();
    let stop_guards = stop.clone();
    let client = setup.client.clone();
    let mut watch = watcher::Config::default();
    if let Some(sel) = &setup.selector {
        watch = watch.labels(sel);
    }
    let owned = watcher::Config::default().labels(kvmotion_api::evacuation::EVACUATION_LABEL);
    let controller = Controller::new(Api::<NodeEvacuation>::all(client.clone()), watch).owns_with(
        migrations_api(&client),
        ApiResource::erase::<VirtualMachineMigration>(&()),
        owned,
    );
    let evacuations = controller.store();
    // A node's inventory changing wakes its evacuations: the one whose
    // moves all succeeded Completes as soon as the source lists no VM,
    // and a Blocked plan is made again when a target frees memory.
    let of_node = evacuations.clone();
    let controller = controller
        .watches(
            Api::<Hypervisor>::all(client.clone()),
            watcher::Config::default(),
            move |h: Hypervisor| {
                let node = h.metadata.name.unwrap_or_default();
                let all = of_node.state();
                all.iter()
                    .filter(|e| {
                        e.spec.node_name == node
                            || e.status.as_ref().and_then(|s| s.phase)
                                == Some(kvmotion_api::evacuation::EvacuationPhase::Blocked)
                    })
                    .map(|e| kube::runtime::reflector::ObjectRef::from_obj(&**e))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop);
    let guards = setup.guard.clone().map(|settings| {
        watch_guards(
            client.clone(),
            stores.clone(),
            setup.settings.heartbeat_max_age,
            settings,
            stop_guards,
        )
    });
    let ctx = Arc::new(evacuation::Context {
        api: Api::all(client.clone()),
        migrations: migrations_api(&client),
        evacuations: evacuations.clone(),
        stores,
        events: setup.events.clone(),
        settings: setup.settings.clone(),
        metrics: setup.metrics.clone(),
        failures: Default::default(),
    });
    let evacuate = controller
        .run(evacuation::reconcile, evacuation::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %crate::error::chain(&e), "evacuation controller event");
            }
        });
    let cordons = setup
        .cordon
        .clone()
        .map(|settings| watch_cordons(&client, evacuations, settings, stop_cordons));
    tokio::join!(evacuate, optional(cordons), optional(guards));
}

/// Runs `f` when there is one.
async fn optional(f: Option<impl std::future::Future<Output = ()>>) {
    if let Some(f) = f {
        f.await;
    }
}

/// The drain guard watch: Nodes, woken by their Hypervisors and their
/// guard pods too.
async fn watch_guards(
    client: Client,
    stores: Stores,
    heartbeat_max_age: Duration,
    settings: evacuation::guard_watch::GuardSettings,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use evacuation::guard::COMPONENT;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector::ObjectRef;
    // The owner is read once per term; without it no guard is placed
    // (kubectl drain would refuse a guard that declares no controller).
    let owner = loop {
        match evacuation::guard_watch::owner_reference(
            &client,
            &settings.namespace,
            &settings.owner,
        )
        .await
        {
            Ok(o) => break o,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "drain guards wait for their owner");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    info!(namespace = %settings.namespace, "guarding hypervisor nodes against drains while VMs run there");
    let ctx = Arc::new(evacuation::guard_watch::GuardContext {
        pods: Api::namespaced(client.clone(), &settings.namespace),
        budgets: Api::namespaced(client.clone(), &settings.namespace),
        hypervisors: stores.hypervisors.clone(),
        leases: stores.leases.clone(),
        heartbeat_max_age,
        owner,
        settings: settings.clone(),
    });
    Controller::new(Api::<Node>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<Hypervisor>::all(client.clone()),
            watcher::Config::default(),
            |h: Hypervisor| h.metadata.name.map(|n| ObjectRef::<Node>::new(&n)),
        )
        .watches(
            Api::<Pod>::namespaced(client.clone(), &settings.namespace),
            watcher::Config::default().labels(&format!("app.kubernetes.io/component={COMPONENT}")),
            |p: Pod| {
                p.spec
                    .and_then(|s| s.node_name)
                    .map(|n| ObjectRef::<Node>::new(&n))
            },
        )
        .graceful_shutdown_on(stop)
        .run(
            evacuation::guard_watch::reconcile,
            evacuation::guard_watch::error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %crate::error::chain(&e), "drain guard event");
            }
        })
        .await;
}

/// The drain guard pod's whole work: hold its place on the node until
/// stopped.
pub async fn guard() {
    info!("drain guard: holding this node until the controller releases it");
    shutdown_signal().await;
}

/// The cordon watch: Nodes, and the evacuations a cordon made (so one
/// deleted while its node stays cordoned is made again).
async fn watch_cordons(
    client: &Client,
    evacuations: Store<NodeEvacuation>,
    settings: evacuation::cordon_watch::CordonSettings,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use evacuation::cordon::CORDON_LABEL;
    use kube::runtime::reflector::ObjectRef;
    info!(
        "evacuating Nodes labelled {} when cordoned",
        evacuation::cordon::OPT_IN_LABEL
    );
    let ctx = Arc::new(evacuation::cordon_watch::CordonContext {
        api: Api::all(client.clone()),
        evacuations,
        settings,
    });
    Controller::new(Api::<Node>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<NodeEvacuation>::all(client.clone()),
            watcher::Config::default().labels(CORDON_LABEL),
            |e: NodeEvacuation| Some(ObjectRef::<Node>::new(&e.spec.node_name)),
        )
        .graceful_shutdown_on(stop)
        .run(
            evacuation::cordon_watch::reconcile,
            evacuation::cordon_watch::error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %crate::error::chain(&e), "cordon watch event");
            }
        })
        .await;
}

/// Zeroes the in-flight gauges when a leadership term ends.
struct ZeroInFlight(Arc<Metrics>);

impl Drop for ZeroInFlight {
    fn drop(&mut self) {
        self.0.set_in_flight(&no_flights());
    }
}

/// A count of 0 for every phase a migration is in flight in.
fn no_flights() -> Vec<(Phase, i64)> {
    Phase::ALL
        .iter()
        .filter(|p| !p.is_terminal())
        .map(|p| (*p, 0))
        .collect()
}

/// Keeps the in-flight gauges current from the migration summaries.
async fn count_in_flight(ctx: Arc<Context>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let mut counts = no_flights();
        for f in ctx.flights() {
            if let Some(c) = counts.iter_mut().find(|(p, _)| Some(*p) == f.phase) {
                c.1 += 1;
            }
        }
        metrics.set_in_flight(&counts);
    }
}

/// Waits until the API server answers, retrying quietly; readiness follows.
async fn wait_for_apiserver(client: &Client, stopped: impl std::future::Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut delay = Duration::from_millis(200);
    loop {
        match client.apiserver_version().await {
            Ok(v) => {
                info!(version = %v.git_version, "API server reached");
                return;
            }
            Err(e) => warn!(error = %e, "API server not reachable yet"),
        }
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, only Ctrl-C can stop the process.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_term_task_is_aborted_when_its_guard_goes() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let guard = AbortOnDrop(tokio::spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        }));
        drop(guard);
        // The sender is dropped with the aborted task.
        assert!(rx.await.is_err());
    }

    #[test]
    fn the_in_flight_gauges_read_zero_once_a_term_ends() {
        let metrics = Arc::new(Metrics::default());
        metrics.set_in_flight(&[(Phase::Migrating, 3), (Phase::Pending, 7)]);
        drop(ZeroInFlight(metrics.clone()));
        let page = metrics.render();
        let series: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("kvmotion_controller_migrations_in_flight{"))
            .collect();
        assert!(!series.is_empty());
        assert!(series.iter().all(|l| l.ends_with(" 0")), "{series:?}");
    }
}
