//! The cordon watch: reconciles Nodes, creating or deleting the
//! evacuations `cordon::decide` asks for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kvmotion_api::evacuation::{LiveImpossible, NodeEvacuation, NodeEvacuationSpec};
use kvmotion_api::migration::PolicyRef;
use tracing::{info, warn};

use super::cordon::{self, CORDON_LABEL, CordonAction, EvacuationView, NodeView, OPT_IN_LABEL};
use super::ignore;
use crate::Error;

/// What the cordon watch shares.
pub struct CordonContext {
    /// NodeEvacuations, to create and delete.
    pub api: Api<NodeEvacuation>,
    /// Every NodeEvacuation, as watched.
    pub evacuations: Store<NodeEvacuation>,
    /// What the evacuations it creates are made of.
    pub settings: CordonSettings,
}

/// The evacuations a cordon creates, from the controller's flags.
#[derive(Debug, Clone)]
pub struct CordonSettings {
    /// Labels every evacuation it creates carries (the controller's
    /// selector terms).
    pub labels: BTreeMap<String, String>,
    /// `liveImpossible` of the evacuations it creates.
    pub live_impossible: LiveImpossible,
    /// `policyRef` of the evacuations it creates.
    pub policy: Option<String>,
}

fn view(node: &Node) -> NodeView {
    NodeView {
        name: node.name_any(),
        cordoned: node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
        opted_in: node.labels().get(OPT_IN_LABEL).map(String::as_str) == Some("true"),
        deleting: node.metadata.deletion_timestamp.is_some(),
    }
}

/// The evacuation a cordon of `node` creates.
pub fn evacuation_for(node: &str, ctx: &CordonSettings) -> NodeEvacuation {
    let mut e = NodeEvacuation::new(
        &cordon::evacuation_name(node),
        NodeEvacuationSpec {
            node_name: node.into(),
            dry_run: false,
            policy_ref: ctx.policy.clone().map(|name| PolicyRef { name }),
            target_selector: None,
            live_impossible: ctx.live_impossible,
            max_parallel: None,
        },
    );
    let mut labels = ctx.labels.clone();
    labels.insert(CORDON_LABEL.into(), node.into());
    e.metadata.labels = Some(labels);
    e
}

/// Reconciles one Node.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<CordonContext>) -> Result<Action, Error> {
    let v = view(&node);
    let evacs: Vec<EvacuationView> = ctx
        .evacuations
        .state()
        .iter()
        .filter(|e| e.spec.node_name == v.name)
        .map(|e| EvacuationView {
            name: e.name_any(),
            by_cordon: e.labels().contains_key(CORDON_LABEL),
            deleting: e.metadata.deletion_timestamp.is_some(),
        })
        .collect();
    match cordon::decide(&v, &evacs) {
        CordonAction::Nothing => {}
        CordonAction::Create(name) => {
            let e = evacuation_for(&v.name, &ctx.settings);
            ignore(ctx.api.create(&PostParams::default(), &e).await, 409).map_err(|source| {
                Error::CordonEvacuation {
                    node: v.name.clone(),
                    source,
                }
            })?;
            info!(node = %v.name, evacuation = %name, "node cordoned: evacuation created");
        }
        CordonAction::Delete(names) => {
            for name in names {
                ignore(ctx.api.delete(&name, &DeleteParams::default()).await, 404).map_err(
                    |source| Error::CordonEvacuation {
                        node: v.name.clone(),
                        source,
                    },
                )?;
                info!(node = %v.name, evacuation = %name, "node uncordoned: evacuation deleted");
            }
        }
    }
    Ok(Action::await_change())
}

/// Retries after a few seconds: the API server recovers.
pub fn error_policy(node: Arc<Node>, err: &Error, _ctx: Arc<CordonContext>) -> Action {
    warn!(node = %node.name_any(), error = %crate::error::chain(err), "cordon watch failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cordons_evacuation_carries_the_selector_labels_the_node_and_the_settings() {
        let ctx = CordonSettings {
            labels: [("shard".to_string(), "a".to_string())].into(),
            live_impossible: LiveImpossible::Offline,
            policy: Some("maintenance".into()),
        };
        let e = evacuation_for("node-a", &ctx);
        assert_eq!(e.name_any(), "cordon-node-a");
        assert_eq!(e.spec.node_name, "node-a");
        assert_eq!(e.spec.live_impossible, LiveImpossible::Offline);
        assert_eq!(
            e.spec.policy_ref.as_ref().map(|p| p.name.as_str()),
            Some("maintenance")
        );
        assert!(!e.spec.dry_run);
        assert_eq!(e.labels().get("shard").map(String::as_str), Some("a"));
        assert_eq!(
            e.labels().get(CORDON_LABEL).map(String::as_str),
            Some("node-a")
        );
    }
}
