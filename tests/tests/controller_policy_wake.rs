//! Raising a policy's limit starts waiting migrations at once, not at their
//! next periodic recheck (30 s): the controller wakes the queue when a
//! MigrationPolicy changes. Runs against fake agents.

use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kvmotion_api::VirtualMachineMigration;
use kvmotion_tests::agent::credentials;
use kvmotion_tests::e2e::start_controller;
use kvmotion_tests::eventually;
use kvmotion_tests::fleet::{Fleet, FleetSpec, vm_name};
use kvmotion_tests::scope::{SCOPE_LABEL, Scope};
use serde_json::json;

#[tokio::test]
async fn raising_the_cluster_limit_starts_waiting_migrations_within_seconds() {
    let scope = Scope::new("policy-wake");
    let creds = credentials();
    let fleet = Fleet::start(
        &scope,
        FleetSpec {
            nodes: 4,
            vms_per_node: 1,
            // Long enough that nothing ends while the test watches.
            job: Duration::from_secs(120),
            token: creds.controller_token.clone(),
        },
    )
    .await;
    let policy = scope.name("one");
    let client = scope.cp.client().await;
    let policies: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::erase::<kvmotion_api::policy::MigrationPolicy>(&()),
    );
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kvmotion.io/v1alpha1", "kind": "MigrationPolicy",
        "metadata": {"name": policy, "labels": {SCOPE_LABEL: scope.id}},
        "spec": {"concurrency": {"perCluster": 1, "outboundPerNode": 2, "inboundPerNode": 2}},
    }))
    .expect("policy");
    policies
        .create(&PostParams::default(), &obj)
        .await
        .expect("creating the policy");
    let controller = start_controller(&scope, "wake", &[]);
    controller.wait_ready().await;

    let migrations: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::erase::<VirtualMachineMigration>(&()),
    );
    for n in 0..3 {
        let m: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kvmotion.io/v1alpha1", "kind": "VirtualMachineMigration",
            "metadata": {"name": scope.name(&format!("m{n}")), "labels": {SCOPE_LABEL: scope.id}},
            "spec": {"vm": {"name": vm_name(&scope, n, 0)}, "targetNode": fleet.nodes[n + 1],
                     "policyRef": {"name": policy}},
        }))
        .expect("migration");
        migrations
            .create(&PostParams::default(), &m)
            .await
            .expect("creating a migration");
    }
    eventually(Duration::from_secs(60), "one job to start", || async {
        (fleet.peaks().started == 1).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", controller.log_text()));
    // The other two wait; give their first recheck time to pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fleet.peaks().started, 1, "the limit of 1 holds");

    policies
        .patch(
            &policy,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"concurrency": {"perCluster": 3}}})),
        )
        .await
        .expect("raising the limit");
    // 20 s is inside the 30 s periodic recheck the waiting migrations
    // scheduled for themselves: only the wake on the policy change can
    // start them in time.
    eventually(Duration::from_secs(20), "all three jobs to run", || async {
        (fleet.peaks().started == 3).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", controller.log_text()));
    assert_eq!(fleet.peaks().total, 3, "{:?}", fleet.peaks());
}
