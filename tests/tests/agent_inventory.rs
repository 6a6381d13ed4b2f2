//! The agent's inventory on the lab: `Hypervisor/<node>` status from real
//! libvirt, updated when a domain changes, and a heartbeat Lease, written
//! under the agent's own least-privilege RBAC (its permissions are checked
//! in `chart_rbac.rs`).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kvmotion_api::hypervisor::{DomainState, Hypervisor};
use kvmotion_tests::agent::Agents;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, lab};
use kvmotion_tests::{control_plane, eventually};

#[tokio::test]
async fn the_hypervisor_status_describes_the_node_and_follows_its_domains() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let client = control_plane().client().await;
    let hvs: Api<Hypervisor> = Api::all(client.clone());
    let shared = Guest::start("node-a", "inv-shared", &GuestSpec::default()).await;
    let local = Guest::start("node-a", "inv-local", &GuestSpec::default().local_disk()).await;

    let status = eventually(
        Duration::from_secs(30),
        "both guests in Hypervisor/node-a",
        || async {
            let s = hvs.get("node-a").await.ok()?.status?;
            let names: Vec<&str> = s.domains.iter().map(|d| d.name.as_str()).collect();
            (names.contains(&"inv-shared") && names.contains(&"inv-local")).then_some(s)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agents.a.log_text()));

    assert!(
        status
            .libvirt_version
            .as_deref()
            .is_some_and(|v| v.split('.').count() == 3),
        "{status:?}"
    );
    assert!(status.qemu_version.is_some());
    let cpu = status.cpu.clone().expect("cpu");
    assert_eq!(cpu.arch, "x86_64");
    assert!(cpu.count >= 1 && !cpu.model.is_empty(), "{cpu:?}");
    let memory = status.memory.clone().expect("memory");
    assert!(
        memory.total_bytes > 1 << 30 && memory.free_bytes <= memory.total_bytes,
        "{memory:?}"
    );
    assert_eq!(status.migration_address.as_deref(), Some("10.99.0.1"));
    assert_eq!(
        status.agent_endpoint.as_deref(),
        Some("http://10.98.0.1:9443")
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True");

    let find = |name: &str| {
        status
            .domains
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .expect("domain")
    };
    let s = find("inv-shared");
    assert_eq!(
        (
            s.state,
            s.uuid.as_str(),
            s.vcpus,
            s.memory_bytes,
            s.persistent
        ),
        (
            DomainState::Running,
            shared.uuid.as_str(),
            1,
            256 << 20,
            true
        )
    );
    assert!(
        s.disks[0].shared && s.disks[0].capacity_bytes == Some(64 << 20),
        "{:?}",
        s.disks
    );
    assert!(
        !find("inv-local").disks[0].shared,
        "a node-local disk is not shared"
    );

    // A domain change shows up promptly (libvirt events), not at the resync.
    lab(&["virsh", "node-a", "destroy", &local.name]);
    eventually(
        Duration::from_secs(10),
        "inv-local to be ShutOff",
        || async {
            let s = hvs.get("node-a").await.ok()?.status?;
            s.domains
                .iter()
                .any(|d| d.name == "inv-local" && d.state == DomainState::ShutOff)
                .then_some(())
        },
    )
    .await
    .unwrap();

    // The heartbeat Lease is renewed.
    let leases: Api<Lease> = Api::namespaced(client, "kvmotion-system");
    let renew = || async {
        leases
            .get("kvmotion-agent-node-a")
            .await
            .ok()?
            .spec?
            .renew_time
    };
    let first = eventually(Duration::from_secs(10), "a heartbeat", || async {
        renew().await
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "a newer heartbeat", || async {
        renew().await.filter(|t| *t != first)
    })
    .await
    .unwrap();
    drop(shared);
}
