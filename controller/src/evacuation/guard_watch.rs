//! The drain guard watch: reconciles Nodes, placing and releasing the guard
//! pods and budgets `guard::decide` asks for. Observe reads the pod and the
//! budget from the API server (not a cache), so a guard is never released
//! or placed twice on a stale view.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, Node, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Toleration,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use kvmotion_api::hypervisor::Hypervisor;
use tracing::{info, warn};

use super::guard::{
    self, COMPONENT, GUARDED_NODE_LABEL, GuardAction, GuardObjects, GuardedNode, guard_name,
};
use super::ignore;
use super::observe::occupying;
use crate::Error;
use crate::reconcile::world;

/// How often a node is looked at without a change: an agent's heartbeat
/// going stale changes nothing the watch sees.
const RESYNC: Duration = Duration::from_secs(15);

/// The guards, from the controller's flags.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// Namespace of the guard pods and budgets (the controller's).
    pub namespace: String,
    /// The controller's Deployment, which owns the guards: `kubectl drain`
    /// refuses pods without a controller, and uninstalling the controller
    /// takes them with it.
    pub owner: String,
    /// Image of the guard pods (the controller's, run with `--guard`).
    pub image: String,
    /// Its pull policy.
    pub pull_policy: String,
    /// Image pull secrets of the guard pods.
    pub pull_secrets: Vec<String>,
}

/// What the guard watch shares.
pub struct GuardContext {
    /// Guard pods, in the settings' namespace.
    pub pods: Api<Pod>,
    /// Guard budgets, in the settings' namespace.
    pub budgets: Api<PodDisruptionBudget>,
    /// Every Hypervisor (inventories).
    pub hypervisors: Store<Hypervisor>,
    /// The agents' heartbeat Leases.
    pub leases: Store<Lease>,
    /// A heartbeat older than this leaves a node's content unknown.
    pub heartbeat_max_age: Duration,
    /// The owner reference every guard object carries.
    pub owner: OwnerReference,
    /// The settings.
    pub settings: GuardSettings,
}

/// The controller reference to the Deployment `name` in `namespace`.
pub async fn owner_reference(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<OwnerReference, Error> {
    let d = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|source| Error::DrainGuardOwner {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    Ok(OwnerReference {
        api_version: Deployment::api_version(&()).into(),
        kind: Deployment::kind(&()).into(),
        name: name.into(),
        uid: d.metadata.uid.unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    })
}

fn labels(node: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "kvmotion"),
        ("app.kubernetes.io/component", COMPONENT),
        ("app.kubernetes.io/managed-by", "kvmotion-controller"),
        (GUARDED_NODE_LABEL, guard::node_label_value(node).as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn meta(node: &str, s: &GuardSettings, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(guard_name(node)),
        namespace: Some(s.namespace.clone()),
        labels: Some(labels(node)),
        annotations: Some(
            [(
                "kvmotion.io/drain-guard".to_string(),
                format!(
                    "holds the eviction of {node}'s pods (kubectl drain) until it runs no VM; \
                     see kubectl get nevac, kubectl get hypervisor {node}"
                ),
            )]
            .into(),
        ),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// The guard pod of `node`: bound to the node (no scheduling, so a cordon
/// does not move it), tolerating every taint, nothing mounted (no emptyDir
/// for drain to object to, no token), the restricted security profile.
pub fn guard_pod(node: &str, s: &GuardSettings, owner: &OwnerReference) -> Pod {
    let q = |v: &str| Quantity(v.into());
    Pod {
        metadata: meta(node, s, owner),
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(5),
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            image_pull_secrets: (!s.pull_secrets.is_empty()).then(|| {
                s.pull_secrets
                    .iter()
                    .map(|n| k8s_openapi::api::core::v1::LocalObjectReference { name: n.clone() })
                    .collect()
            }),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: "guard".into(),
                image: Some(s.image.clone()),
                image_pull_policy: Some(s.pull_policy.clone()),
                args: Some(vec!["--guard".into()]),
                resources: Some(ResourceRequirements {
                    requests: Some([("cpu".into(), q("1m")), ("memory".into(), q("8Mi"))].into()),
                    limits: Some([("memory".into(), q("32Mi"))].into()),
                    ..Default::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// The budget of `node`'s guard: one pod that must stay, so its eviction
/// is refused (an integer `minAvailable`, the kind a budget may have over
/// pods without a scalable controller), also while it is not Ready.
pub fn guard_budget(node: &str, s: &GuardSettings, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(node, s, owner),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels(node)),
                ..Default::default()
            }),
            unhealthy_pod_eviction_policy: Some("IfHealthyBudget".into()),
            ..Default::default()
        }),
        status: None,
    }
}

fn view(node: &Node, ctx: &GuardContext, now: Timestamp) -> GuardedNode {
    let name = node.name_any();
    let hv = ctx
        .hypervisors
        .state()
        .into_iter()
        .find(|h| h.metadata.name.as_deref() == Some(name.as_str()));
    let heartbeats = world::heartbeats(ctx.leases.state().iter().map(|l| &**l));
    let fresh = heartbeats
        .get(&name)
        .is_some_and(|t| now.duration_since(*t).unsigned_abs() <= ctx.heartbeat_max_age);
    let running = hv.as_ref().filter(|_| fresh).map(|h| occupying(h));
    GuardedNode {
        cordoned: node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
        deleting: node.metadata.deletion_timestamp.is_some(),
        hypervisor: hv.is_some(),
        running,
    }
}

/// Reconciles one Node's guard: observe, decide, act.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<GuardContext>) -> Result<Action, Error> {
    let name = node.name_any();
    let guard = guard_name(&name);
    let err = |action: &'static str| {
        let node = name.clone();
        move |source| Error::DrainGuard {
            action,
            node,
            source,
        }
    };
    let pod = ctx.pods.get_opt(&guard).await.map_err(err("reading"))?;
    let budget = ctx.budgets.get_opt(&guard).await.map_err(err("reading"))?;
    let objects = GuardObjects {
        pod: pod
            .as_ref()
            .map(|p| p.metadata.deletion_timestamp.is_some()),
        budget: budget.is_some(),
    };
    let v = view(&node, &ctx, Timestamp::now());
    match guard::decide(&v, objects) {
        GuardAction::Nothing => {}
        GuardAction::Place => {
            let s = &ctx.settings;
            let pp = PostParams::default();
            if budget.is_none() {
                let b = guard_budget(&name, s, &ctx.owner);
                ignore(ctx.budgets.create(&pp, &b).await, 409).map_err(err("placing"))?;
            }
            if pod.is_none() {
                let p = guard_pod(&name, s, &ctx.owner);
                ignore(ctx.pods.create(&pp, &p).await, 409).map_err(err("placing"))?;
                info!(node = %name, pod = %guard, "drain guard placed");
            }
        }
        GuardAction::Release => {
            let dp = DeleteParams::default();
            if objects.pod == Some(false) {
                ignore(ctx.pods.delete(&guard, &dp).await.map(|_| ()), 404)
                    .map_err(err("releasing"))?;
                info!(node = %name, pod = %guard, "node cordoned and running no VM: drain guard released");
            }
            if objects.budget {
                ignore(ctx.budgets.delete(&guard, &dp).await.map(|_| ()), 404)
                    .map_err(err("releasing"))?;
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Retries after a few seconds: the API server recovers.
pub fn error_policy(node: Arc<Node>, err: &Error, _ctx: Arc<GuardContext>) -> Action {
    warn!(node = %node.name_any(), error = %crate::error::chain(err), "drain guard failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GuardSettings {
        GuardSettings {
            namespace: "kvmotion-system".into(),
            owner: "kvmotion-controller".into(),
            image: "kvmotion-controller:1.0".into(),
            pull_policy: "IfNotPresent".into(),
            pull_secrets: vec!["regcred".into()],
        }
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "kvmotion-controller".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn a_guard_pod_is_bound_to_its_node_owned_by_the_controller_and_mounts_nothing() {
        let p = guard_pod("node-a", &settings(), &owner());
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(
            p.metadata.name.as_deref(),
            Some(guard_name("node-a").as_str())
        );
        assert_eq!(p.metadata.namespace.as_deref(), Some("kvmotion-system"));
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        // kubectl drain refuses pods that declare no controller; a
        // DaemonSet's it would skip.
        let refs = p.metadata.owner_references.as_deref().unwrap_or_default();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].kind, "Deployment");
        assert_eq!(refs[0].controller, Some(true));
        assert!(spec.volumes.is_none(), "no emptyDir or any volume");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.containers[0].args.as_deref(),
            Some(&["--guard".to_string()][..])
        );
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("kvmotion-controller:1.0")
        );
        let tol = spec.tolerations.as_deref().unwrap_or_default();
        assert_eq!(tol[0].operator.as_deref(), Some("Exists"));
        assert_eq!(tol[0].key, None);
        assert_eq!(
            spec.image_pull_secrets
                .as_deref()
                .map(|s| s[0].name.as_str()),
            Some("regcred")
        );
        assert_eq!(
            p.labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some(COMPONENT)
        );
    }

    #[test]
    fn a_guards_budget_selects_only_that_nodes_pod_and_allows_no_eviction() {
        let s = settings();
        let b = guard_budget("node-a", &s, &owner());
        let spec = b.spec.expect("spec");
        assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
        assert_eq!(spec.max_unavailable, None);
        let sel = spec
            .selector
            .and_then(|s| s.match_labels)
            .expect("matchLabels");
        let pod_a = guard_pod("node-a", &s, &owner());
        let pod_b = guard_pod("node-b", &s, &owner());
        let matches = |p: &Pod| sel.iter().all(|(k, v)| p.labels().get(k) == Some(v));
        assert!(matches(&pod_a));
        assert!(!matches(&pod_b));
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("IfHealthyBudget")
        );
    }
}
