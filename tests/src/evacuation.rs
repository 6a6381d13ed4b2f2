//! Helpers for node-evacuation tests: apply a `NodeEvacuation` in a scope,
//! read its status and wait for its phases.

use std::time::Duration;

use serde_json::{Value, json};

use crate::eventually;
use crate::scope::Scope;

/// `kubectl apply` of a NodeEvacuation named after `base` in `scope`, with
/// `spec`; returns its name.
pub fn apply(scope: &Scope, base: &str, spec: Value) -> String {
    let manifest = json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "NodeEvacuation",
        "metadata": {"name": base},
        "spec": spec,
    });
    let (obj, name) = scope.adopt(&manifest.to_string());
    let out = scope.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(out.ok, "applying {name}: {}", out.stderr);
    name
}

/// The evacuation as stored, or Null when it is gone.
pub fn get(scope: &Scope, name: &str) -> Value {
    let out = scope.kubectl(&["get", "nodeevacuation", name, "-o", "json"], None);
    if !out.ok {
        return Value::Null;
    }
    serde_json::from_str(&out.stdout).unwrap_or(Value::Null)
}

/// Waits until the evacuation's phase is `phase`; the status then, or the
/// last one seen with the reason it did not get there.
pub async fn wait_phase(
    scope: &Scope,
    name: &str,
    phase: &str,
    within: Duration,
) -> Result<Value, String> {
    let got = eventually(within, &format!("{name} to be {phase}"), || async {
        let s = get(scope, name)["status"].clone();
        let p = s["phase"].as_str().unwrap_or_default().to_string();
        let ended = matches!(p.as_str(), "Completed" | "Failed" | "Cancelled");
        (p == phase || ended).then_some(s)
    })
    .await;
    match got {
        Ok(s) if s["phase"] == phase => Ok(s),
        Ok(s) => Err(format!("ended {} instead of {phase}: {s:#}", s["phase"])),
        Err(e) => Err(format!("{e}: {:#}", get(scope, name)["status"])),
    }
}

/// The migrations labelled as the evacuation's, as JSON objects.
pub fn migrations(scope: &Scope, name: &str) -> Vec<Value> {
    let selector = format!("{}={name}", kvmotion_api::evacuation::EVACUATION_LABEL);
    let out = scope.kubectl(&["get", "vmm", "-l", &selector, "-o", "json"], None);
    serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
}

/// Deletes the evacuation and waits until it is gone.
pub fn delete(scope: &Scope, name: &str) {
    let out = scope.kubectl(
        &[
            "delete",
            "nodeevacuation",
            name,
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    );
    assert!(out.ok, "deleting {name}: {}", out.stderr);
}

/// One of the evacuation's moves mid-transfer and another waiting: the
/// names of the moving migration, its VM and the waiting migration, once
/// data flows, or why that was not seen within `within`.
pub async fn one_moving_one_waiting(
    scope: &Scope,
    name: &str,
    within: Duration,
) -> Result<(String, String, String), String> {
    let text = |m: &Value, at: &str| m.pointer(at).and_then(Value::as_str).map(str::to_string);
    eventually(within, "one move running and one waiting", || async {
        let ms = migrations(scope, name);
        let phase = |p: &str| ms.iter().find(|m| m["status"]["phase"] == p);
        let moving = phase("Migrating")?;
        let waiting = phase("Pending")?;
        (moving["status"]["progress"]["dataProcessedBytes"].as_u64()? > 0).then_some(())?;
        Some((
            text(moving, "/metadata/name")?,
            text(moving, "/spec/vm/name")?,
            text(waiting, "/metadata/name")?,
        ))
    })
    .await
    .map_err(|e| e.to_string())
}
