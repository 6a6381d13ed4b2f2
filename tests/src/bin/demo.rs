//! `make demo`: kvmotion as it ships. A two-node cluster whose nodes are
//! the lab's hypervisors (a kubelet on each), the images `make images`
//! builds, the chart installed by helm, a guest on node-a, and one live
//! migration followed with `kubectl migrate --wait`. With `KEEP=1` it all
//! stays up after the program ends, until `make demo-down`.

use std::process::ExitCode;
use std::time::Duration;

use kvmotion_tests::cluster::{self, NAMESPACE, Release};
use kvmotion_tests::control_plane::control_plane;
use kvmotion_tests::e2e::wait_listed;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use kvmotion_tests::plugin::plugin_binary;

const VM: &str = "demo-vm";

fn step(what: &str) {
    println!("\n==> {what}");
}

fn show(args: &[&str]) {
    let out = cluster::kubectl(args);
    print!("{}{}", out.stdout, out.stderr);
}

#[tokio::main]
async fn main() -> ExitCode {
    let keep = std::env::var("KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
    let _lab = exclusive().await;
    step("control plane: etcd, kube-apiserver, kube-scheduler, kube-controller-manager");
    let cp = control_plane();
    let client = cp.client().await;
    let version = client.apiserver_version().await.map(|v| v.git_version);
    println!("    kubernetes {}", version.unwrap_or_default());

    step("images: kvmotion-controller and kvmotion-agent (make images, no registry)");
    let images = cluster::images();
    for i in images.report.as_array().into_iter().flatten() {
        println!(
            "    {}  {:.1} MiB compressed",
            i["ref"].as_str().unwrap_or_default(),
            i["compressedBytes"].as_f64().unwrap_or_default() / 1_048_576.0
        );
    }

    step("nodes: containerd and a kubelet on node-a and node-b");
    cluster::nodes();
    show(&["get", "nodes", "-L", "kvmotion.io/hypervisor"]);

    step(&format!(
        "helm install kvmotion charts/kvmotion -n {NAMESPACE}"
    ));
    let release = Release::install_unscoped("demo");
    step(&format!("kubectl get pods -n {NAMESPACE} -o wide"));
    show(&["get", "pods", "-n", NAMESPACE, "-o", "wide"]);

    step(&format!(
        "guest {VM} boots on node-a (QEMU, software emulation)"
    ));
    let guest = Guest::start("node-a", VM, &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("the guest beats");
    println!("    heartbeat #{} on node-a", before.seq);
    if let Err(e) = wait_listed(client.clone(), "node-a", VM, true).await {
        eprintln!("{e}\n{}", release.describe());
        return ExitCode::FAILURE;
    }

    step(&format!("kubectl migrate {VM} --to node-b --wait"));
    let status = tokio::process::Command::new(plugin_binary())
        .args([VM, "--to", "node-b", "--wait"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .status()
        .await;
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!(
                "the migration did not succeed ({s}):\n{}",
                release.describe()
            );
            forget_migrations(&client).await;
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("running kubectl-migrate: {e}");
            forget_migrations(&client).await;
            return ExitCode::FAILURE;
        }
    }

    let after = guest.beats_on("node-b", before).await;
    step(&format!(
        "{VM} runs on node-b: heartbeat #{} (was #{} on node-a), same boot, gone from node-a",
        after.seq, before.seq
    ));

    if keep {
        let root = kvmotion_tests::repo_root();
        let root = root.canonicalize().unwrap_or(root);
        // Left running on purpose: make demo-down stops them (and
        // with-lab.sh refuses to run over them).
        let dir = root.join("target/demo");
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("kept"), VM))
        {
            eprintln!("writing {}/kept: {e}", dir.display());
        }
        std::mem::forget(guest);
        std::mem::forget(release);
        println!(
            "\nEverything stays up. In this shell:\n\n  \
             source {}/target/control-plane/env\n  \
             export PATH={}:$PATH\n  \
             kubectl get pods -n {NAMESPACE} -o wide\n  \
             kubectl get vmm,hv\n  \
             kubectl migrate {VM} --to node-a --wait\n\n\
             Stop it all with: make demo-down",
            root.display(),
            plugin_binary()
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        );
        return ExitCode::SUCCESS;
    }
    step("tearing down: migration, guest, helm uninstall");
    forget_migrations(&client).await;
    drop(guest);
    drop(release);
    ExitCode::SUCCESS
}

/// Deletes the demo's migrations while the controller still runs (it
/// removes their finalizer), so a reused control plane keeps no trace.
async fn forget_migrations(client: &kube::Client) {
    use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<kvmotion_api::VirtualMachineMigration>(&()),
    );
    let Ok(list) = api.list(&ListParams::default()).await else {
        return;
    };
    for m in list.items {
        let ours = m.data["spec"]["vm"]["name"] == VM;
        if let (true, Some(name)) = (ours, m.metadata.name.as_deref()) {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
    }
    let _ = kvmotion_tests::eventually(Duration::from_secs(30), "migrations gone", || async {
        let left = api.list(&ListParams::default()).await.ok()?;
        (!left
            .items
            .iter()
            .any(|m| m.data["spec"]["vm"]["name"] == VM))
        .then_some(())
    })
    .await;
}
