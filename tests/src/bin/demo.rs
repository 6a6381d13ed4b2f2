//! `make demo`: a guest on the two-node lab, agents and controller under
//! their own service accounts on the local control plane, and one live
//! migration followed with `kubectl migrate --wait`. With `KEEP=1` it all
//! stays up after the program ends, until `make demo-down`.

use std::process::ExitCode;
use std::time::Duration;

use kvmotion_tests::agent::{Agents, credentials};
use kvmotion_tests::control_plane::control_plane;
use kvmotion_tests::controller::ControllerProcess;
use kvmotion_tests::e2e::wait_listed;
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use kvmotion_tests::plugin::plugin_binary;

const VM: &str = "demo-vm";

fn step(what: &str) {
    println!("\n==> {what}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let keep = std::env::var("KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
    let _lab = exclusive().await;
    step("control plane: etcd and kube-apiserver, kvmotion's CRDs and RBAC");
    let cp = control_plane();
    let creds = credentials();
    let client = cp.client().await;
    let version = client.apiserver_version().await.map(|v| v.git_version);
    println!("    kube-apiserver {}", version.unwrap_or_default());

    step("agents on node-a and node-b (service account kvmotion-agent)");
    let agents = Agents::start("demo", 0).await;
    println!(
        "    node-a http://{}  node-b http://{}",
        agents.a.addr, agents.b.addr
    );

    step("controller (service account kvmotion-controller)");
    let token = creds.controller_token_file.to_string_lossy().to_string();
    let controller = ControllerProcess::start_as(
        &creds.controller_kubeconfig,
        "kvmotion-system",
        "kvmotion-demo",
        "demo-controller",
        &["--agent-token-file", &token],
    );
    controller.wait_ready().await;
    controller.wait_leading(Duration::from_secs(30)).await;
    println!(
        "    leading; metrics on http://{}/metrics",
        controller.http_addr
    );
    let controller_log = controller.log.clone();

    step(&format!(
        "guest {VM} boots on node-a (QEMU, software emulation)"
    ));
    let guest = Guest::start("node-a", VM, &GuestSpec::default()).await;
    let before = guest.last_beat("node-a").expect("the guest beats");
    println!("    heartbeat #{} on node-a", before.seq);
    if let Err(e) = wait_listed(client.clone(), "node-a", VM, true).await {
        eprintln!("{e}");
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
            eprintln!("the migration did not succeed ({s}); controller log:");
            eprintln!("{}", controller.log_text());
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
        let pids: Vec<String> = [agents.a.pid(), agents.b.pid(), controller.pid()]
            .into_iter()
            .flatten()
            .map(|p| p.to_string())
            .collect();
        let root = kvmotion_tests::repo_root();
        let root = root.canonicalize().unwrap_or(root);
        let dir = root.join("target/demo");
        if let Err(e) = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("pids"), pids.join(" ")))
        {
            eprintln!("writing {}/pids: {e}", dir.display());
        }
        // Left running on purpose: make demo-down stops them.
        std::mem::forget(guest);
        std::mem::forget(controller);
        std::mem::forget(agents);
        println!(
            "\nEverything stays up. In this shell:\n\n  \
             source {}/target/control-plane/env\n  \
             export PATH={}:$PATH\n  \
             kubectl get vmm,hv\n  \
             kubectl migrate {VM} --to node-a --wait\n\n\
             Controller log: {}\nStop it all with: make demo-down",
            root.display(),
            plugin_binary()
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            controller_log
                .canonicalize()
                .unwrap_or(controller_log)
                .display(),
        );
        return ExitCode::SUCCESS;
    }
    step("tearing down: migration, guest, agents, controller");
    forget_migrations(&client).await;
    drop(guest);
    drop(controller);
    drop(agents);
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
