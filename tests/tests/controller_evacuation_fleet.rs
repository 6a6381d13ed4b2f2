//! Ten nodes of a hundred-node fleet of fake agents (twenty guests each)
//! evacuated at once through the real controller and apiserver: every
//! evacuation Completes, every guest runs on exactly one node and none on
//! a node being evacuated, each move starts one job (none toward a node
//! being evacuated, where it would have to move again), and the cluster,
//! outbound and inbound limits hold as the agents see them.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kvmotion_api::VirtualMachineMigration;
use kvmotion_api::evacuation::NodeEvacuation;
use kvmotion_tests::agent::credentials;
use kvmotion_tests::e2e::start_controller;
use kvmotion_tests::fleet::{Fleet, FleetSpec};
use kvmotion_tests::scale::limits_policy;
use kvmotion_tests::scope::{SCOPE_LABEL, Scope};
use serde_json::json;

const NODES: usize = 100;
const VMS: usize = 20;
const EVACUATED: usize = 10;
const LIMITS: (u32, u32, u32) = (20, 2, 2);

#[tokio::test]
async fn ten_nodes_of_a_hundred_evacuated_at_once_all_complete_within_every_limit() {
    let scope = Scope::new("fleet-evacuation");
    let fleet = Fleet::start(
        &scope,
        FleetSpec {
            nodes: NODES,
            vms_per_node: VMS,
            job: Duration::from_secs(2),
            token: credentials().controller_token.clone(),
        },
    )
    .await;
    let policy = limits_policy(&scope, "fleet", LIMITS);
    let (cluster, outbound, inbound) = LIMITS;

    // All ten exist before the controller starts, as after a controller
    // restart or a drain of several nodes at once: it must see every one
    // of them before the first move is placed. (Evacuations created one
    // after another while it runs may place a move on a node whose own
    // evacuation comes later; a migration not started by then is refused
    // at scheduling and re-planned, one already running moves twice.)
    let client = scope.cp.client().await;
    let evacuations: Api<NodeEvacuation> = Api::all(client.clone());
    let drained: BTreeSet<String> = fleet.nodes[..EVACUATED].iter().cloned().collect();
    let started = Instant::now();
    for node in &drained {
        let e: NodeEvacuation = serde_json::from_value(json!({
            "apiVersion": "kvmotion.io/v1alpha1",
            "kind": "NodeEvacuation",
            "metadata": {"name": format!("drain-{node}"), "labels": {SCOPE_LABEL: scope.id}},
            "spec": {"nodeName": node, "policyRef": {"name": policy}},
        }))
        .expect("evacuation");
        evacuations
            .create(&PostParams::default(), &e)
            .await
            .unwrap_or_else(|err| panic!("creating the evacuation of {node}: {err}"));
    }
    let controller = start_controller(&scope, "fleet-evacuation", &[]);

    let selector = format!("{SCOPE_LABEL}={}", scope.id);
    let mut phases: HashMap<String, String> = HashMap::new();
    let events = watcher(
        evacuations.clone(),
        watcher::Config::default().labels(&selector),
    )
    .applied_objects();
    futures::pin_mut!(events);
    let deadline = started + Duration::from_secs(300);
    while phases.values().filter(|p| *p == "Completed").count() < EVACUATED {
        let e = match tokio::time::timeout_at(deadline.into(), events.next()).await {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(err))) => panic!("watching evacuations: {err}"),
            Ok(None) | Err(_) => panic!(
                "not all evacuations Completed in 300 s: {phases:?}\n{}",
                controller.log_text()
            ),
        };
        let phase = e
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        assert!(
            !matches!(phase.as_str(), "Failed" | "Blocked" | "Cancelled"),
            "{:?} ended {phase}: {:#?}\n{}",
            e.metadata.name,
            e.status,
            controller.log_text()
        );
        phases.insert(e.metadata.name.clone().unwrap_or_default(), phase);
    }
    eprintln!(
        "{EVACUATED} nodes × {VMS} guests evacuated in {:?}",
        started.elapsed()
    );

    // Every guest of an evacuated node runs on exactly one node, none of
    // them evacuated; the others never moved.
    for n in 0..NODES {
        for i in 0..VMS {
            let on = fleet.running_on(&fleet.uuid(n, i));
            assert_eq!(on.len(), 1, "guest {i} of node {n} runs on {on:?}");
            if n < EVACUATED {
                assert!(
                    !drained.contains(&on[0]),
                    "guest {i} of node {n} moved to {on:?}, being evacuated"
                );
            } else {
                assert_eq!(on[0], fleet.nodes[n], "guest {i} of node {n} moved");
            }
        }
    }
    let peaks = fleet.peaks();
    eprintln!("{peaks:?}");
    let onto_drained: Vec<String> = fleet
        .job_targets()
        .into_iter()
        .filter(|t| drained.contains(t))
        .collect();
    assert!(
        onto_drained.is_empty(),
        "{} job(s) moved a guest onto a node being evacuated: {onto_drained:?}",
        onto_drained.len()
    );
    assert_eq!(
        peaks.started,
        EVACUATED * VMS,
        "one job per move: {peaks:?}"
    );
    assert_eq!(peaks.repeated_starts, 0, "{peaks:?}");
    assert!(
        peaks.total <= cluster as usize,
        "cluster limit exceeded: {peaks:?}"
    );
    assert!(
        peaks.outbound <= outbound as usize,
        "outbound limit exceeded: {peaks:?}"
    );
    assert!(
        peaks.inbound <= inbound as usize,
        "inbound limit exceeded: {peaks:?}"
    );
    // Not serialized: jobs of several sources run at once (one source
    // alone allows two).
    assert!(peaks.total >= 4, "too little concurrency: {peaks:?}");

    // Deleted while the controller runs, so it releases the finalizers.
    let list = ListParams::default().labels(&selector);
    evacuations
        .delete_collection(&DeleteParams::default(), &list)
        .await
        .expect("deleting the evacuations");
    let migrations: Api<DynamicObject> =
        Api::all_with(client, &ApiResource::erase::<VirtualMachineMigration>(&()));
    migrations
        .delete_collection(&DeleteParams::default(), &list)
        .await
        .expect("deleting the migrations");
    let left = || async {
        let e = evacuations.list(&list).await.ok()?.items.len();
        let m = migrations.list(&list).await.ok()?.items.len();
        Some((e, m))
    };
    let gone =
        kvmotion_tests::eventually(Duration::from_secs(240), "everything deleted", || async {
            left().await.filter(|n| *n == (0, 0))
        })
        .await;
    if let Err(e) = gone {
        panic!(
            "{e}: {:?} evacuations and migrations left\n{}",
            left().await,
            controller.log_text()
        );
    }
}
