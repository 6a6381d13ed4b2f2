//! End-to-end rig: both lab agents and a controller, each a real process
//! under its own service account, on the real apiserver; helpers to create
//! migrations and to read their phases, conditions and Events.

use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use kvmotion_api::VirtualMachineMigration;
use kvmotion_api::hypervisor::Hypervisor;
use serde_json::{Value, json};

use crate::agent::{Agents, credentials};
use crate::controller::ControllerProcess;
use crate::eventually;
use crate::scope::{SCOPE_LABEL, Scope};

/// Agents, a controller and a scope for one scenario.
pub struct Rig {
    /// Objects of this scenario.
    pub scope: Scope,
    /// The lab's agents.
    pub agents: Agents,
    /// The controller.
    pub controller: ControllerProcess,
}

impl Rig {
    /// Starts the agents and a controller that sees only this scope's
    /// migrations; `extra` flags go to the controller.
    pub async fn start(test: &str, extra: &[&str]) -> Rig {
        Rig::start_with(test, extra, &[]).await
    }

    /// Like `start`, with `agent_a` flags for node-a's agent.
    pub async fn start_with(test: &str, extra: &[&str], agent_a: &[&str]) -> Rig {
        let scope = Scope::new(test);
        let agents = Agents::start_with(test, 0, agent_a).await;
        let controller = start_controller(&scope, "ctl", extra);
        controller.wait_ready().await;
        Rig {
            scope,
            agents,
            controller,
        }
    }

    /// Creates a migration named after `base` with `spec`; returns its name.
    pub fn migrate(&self, base: &str, spec: Value) -> String {
        apply_migration(&self.scope, base, spec)
    }

    /// The migration's status, if it has one.
    pub async fn status(&self, name: &str) -> Option<Value> {
        migration(&self.scope, name)
            .await
            .and_then(|o| o.data.get("status").cloned())
    }

    /// Waits until the migration reaches `phase`; panics with the logs when
    /// it ends elsewhere or takes longer than `within`.
    pub async fn wait_phase(&self, name: &str, phase: &str, within: Duration) -> Value {
        match until_phase(name, phase, within, || self.status(name)).await {
            Ok(s) => s,
            Err((None, s)) => panic!(
                "{name} ended {} instead of {phase}: {s:#}\n{}",
                s["phase"],
                self.logs()
            ),
            Err((Some(e), s)) => panic!("{e}: {s:#}\n{}", self.logs()),
        }
    }

    /// Waits until the migration is Migrating and data flows (progress
    /// mirrored into status).
    pub async fn wait_moving(&self, name: &str) {
        eventually(
            Duration::from_secs(60),
            "progress mirrored while Migrating",
            || async {
                let s = self.status(name).await?;
                (s["phase"] == "Migrating" && s["progress"]["dataProcessedBytes"].as_u64()? > 0)
                    .then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// The controller's and the agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- controller ---\n{}\n--- agent node-a ---\n{}\n--- agent node-b ---\n{}",
            tail(&self.controller.log_text()),
            tail(&self.agents.a.log_text()),
            tail(&self.agents.b.log_text())
        )
    }

    /// Waits until `vm` appears in `node`'s Hypervisor inventory.
    pub async fn wait_inventory(&self, node: &str, vm: &str) {
        self.wait_listed(node, vm, false).await
    }

    /// Waits until `node`'s Hypervisor shows a dirty-rate sample of `vm`
    /// measured at or after `since` (the agent samples in the background);
    /// returns it (`bytesPerSecond`, `residentBytes`, `measuredAt`).
    pub async fn wait_sampled(&self, node: &str, vm: &str, since: jiff::Timestamp) -> Value {
        let hypervisors: Api<Hypervisor> = Api::all(self.scope.cp.client().await);
        eventually(
            Duration::from_secs(90),
            "a dirty-rate sample in the inventory",
            || async {
                let hv = hypervisors.get(node).await.ok()?;
                let rate = hv
                    .status?
                    .domains
                    .into_iter()
                    .find(|d| d.name == vm)?
                    .dirty_rate?;
                (rate.measured_at.0 >= since).then(|| serde_json::to_value(&rate).ok())?
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Waits until `node` is the only inventory that lists `vm` (after a
    /// move, until the source's inventory has caught up too).
    pub async fn wait_settled(&self, node: &str, vm: &str) {
        self.wait_listed(node, vm, true).await
    }

    async fn wait_listed(&self, node: &str, vm: &str, only_there: bool) {
        wait_listed(self.scope.cp.client().await, node, vm, only_there)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// Waits until the migration's Events include every reason in `want`
    /// (they are published after the status write, so may trail it);
    /// panics with the reasons recorded when they do not within 15 s.
    pub async fn expect_events(&self, name: &str, want: &[&str]) {
        let all_there = eventually(Duration::from_secs(15), "the events", || async {
            let got = self.event_reasons(name);
            want.iter()
                .all(|w| got.iter().any(|r| r == w))
                .then_some(())
        })
        .await;
        if let Err(e) = all_there {
            panic!(
                "{e}: want {want:?} among the events of {name}: {:?}",
                self.event_reasons(name)
            );
        }
    }

    /// Event reasons recorded for the migration, oldest first.
    fn event_reasons(&self, name: &str) -> Vec<String> {
        let out = self.scope.kubectl(
            &[
                "get",
                "events.events.k8s.io",
                "-n",
                "default",
                "--field-selector",
                &format!("regarding.name={name}"),
                "-o",
                "json",
            ],
            None,
        );
        assert!(out.ok, "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).expect("events json");
        let mut items: Vec<(String, String)> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let t = e["eventTime"]
                    .as_str()
                    .or(e["metadata"]["creationTimestamp"].as_str());
                (
                    t.unwrap_or_default().to_string(),
                    e["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        items.sort();
        items.into_iter().map(|(_, r)| r).collect()
    }
}

/// Starts a controller for `scope` as the kvmotion-controller service
/// account, calling agents with its audience-bound token.
pub fn start_controller(scope: &Scope, identity: &str, extra: &[&str]) -> ControllerProcess {
    let creds = credentials();
    let selector = format!("{SCOPE_LABEL}={}", scope.id);
    let token = creds.controller_token_file.to_string_lossy().to_string();
    let mut args = vec![
        "--migration-selector",
        selector.as_str(),
        "--agent-token-file",
        token.as_str(),
        "--heartbeat-max-age-seconds",
        "40",
    ];
    args.extend_from_slice(extra);
    ControllerProcess::start_as(
        &creds.controller_kubeconfig,
        "kvmotion-system",
        &scope.name("lease"),
        &scope.name(identity),
        &args,
    )
}

/// Waits up to 30 s until `vm` is in `node`'s Hypervisor inventory and,
/// with `only_there`, in no other.
pub async fn wait_listed(
    client: kube::Client,
    node: &str,
    vm: &str,
    only_there: bool,
) -> anyhow::Result<()> {
    let api: Api<Hypervisor> = Api::all(client);
    eventually(
        Duration::from_secs(30),
        &format!("{vm} in {node}'s inventory"),
        || async {
            let all = api.list(&Default::default()).await.ok()?;
            let holders: Vec<&str> = all
                .items
                .iter()
                .filter(|h| {
                    h.status
                        .as_ref()
                        .is_some_and(|s| s.domains.iter().any(|d| d.name == vm))
                })
                .filter_map(|h| h.metadata.name.as_deref())
                .collect();
            let here = holders.contains(&node);
            let elsewhere = holders.iter().any(|h| *h != node);
            (here && !(only_there && elsewhere)).then_some(())
        },
    )
    .await
}

/// The migration object.
pub async fn migration(scope: &Scope, name: &str) -> Option<DynamicObject> {
    let api: Api<DynamicObject> = Api::all_with(
        scope.cp.client().await,
        &ApiResource::erase::<VirtualMachineMigration>(&()),
    );
    api.get(name).await.ok()
}

/// The spec of a live move of `vm` to node-b that cannot converge on its
/// own (100 MiB/s, no post-copy, no auto-converge, no timeouts): it runs
/// until forced or aborted.
pub fn held_back_spec(vm: &str) -> Value {
    json!({
        "vm": {"name": vm},
        "targetNode": "node-b",
        "overrides": {
            "bandwidthMiBps": 100,
            "postCopy": false,
            "autoConverge": false,
            "progressTimeoutSeconds": 0,
            "completionTimeoutPerGiBSeconds": 0,
            "onTimeout": "Abort"
        }
    })
}

/// `kubectl apply` of a VirtualMachineMigration named after `base` in
/// `scope`, with `spec`; returns its name.
pub fn apply_migration(scope: &Scope, base: &str, spec: Value) -> String {
    let (obj, name) = scope.adopt(&migration_manifest(base, spec).to_string());
    let out = scope.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(out.ok, "applying {name}: {}", out.stderr);
    name
}

/// A VirtualMachineMigration named `base` with `spec`.
pub fn migration_manifest(base: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "VirtualMachineMigration",
        "metadata": {"name": base},
        "spec": spec,
    })
}

/// Polls `status` until the migration `name` is in `phase` or a final
/// one; `Ok` with the status in `phase`, `Err` with what it shows
/// otherwise (the status, and the timeout when there was one).
pub async fn until_phase<F, Fut>(
    name: &str,
    phase: &str,
    within: Duration,
    status: F,
) -> Result<Value, (Option<String>, Value)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let got = eventually(within, &format!("{name} to reach {phase}"), || async {
        let s = status().await?;
        let p = s["phase"].as_str().unwrap_or_default();
        (p == phase || matches!(p, "Succeeded" | "Failed" | "Cancelled")).then_some(s)
    })
    .await;
    match got {
        Ok(s) if s["phase"] == phase => Ok(s),
        Ok(s) => Err((None, s)),
        Err(e) => Err((Some(e.to_string()), status().await.unwrap_or_default())),
    }
}

/// The phases a status went through, in order.
pub fn phases(status: &Value) -> Vec<String> {
    status["phaseTransitionTimes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["phase"].as_str().map(str::to_string))
        .collect()
}

/// The condition of `type_` in a status: (status, reason, message).
pub fn condition(status: &Value, type_: &str) -> (String, String, String) {
    find_condition(status, type_).unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
}

/// Like `condition`, `None` while the status has no such condition.
pub fn find_condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
