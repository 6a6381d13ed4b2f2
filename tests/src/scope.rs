//! Per-test scopes: unique names, a label on everything a test creates, and
//! deletion of all of it when the scope is dropped, so tests share one
//! control plane without seeing each other's objects.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::control_plane::{ControlPlane, Output, control_plane};

/// Label put on every object a test creates.
pub const SCOPE_LABEL: &str = "kvmotion.io/test-scope";

/// One test's slice of the shared control plane.
pub struct Scope {
    /// Unique id, also the label value.
    pub id: String,
    /// The control plane.
    pub cp: &'static ControlPlane,
}

impl Scope {
    /// A fresh scope for the test called `test`.
    pub fn new(test: &str) -> Scope {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let salt = format!(
            "{:x}",
            (u64::from(nanos) ^ (u64::from(std::process::id()) << 32)) + n
        );
        let stem: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        Scope {
            id: format!(
                "{}-{}",
                stem.trim_matches('-'),
                &salt[salt.len().saturating_sub(6)..]
            ),
            cp: control_plane(),
        }
    }

    /// A name unique to this scope, derived from `base`.
    pub fn name(&self, base: &str) -> String {
        let mut name = format!("{base}-{}", self.id);
        name.truncate(63);
        name.trim_end_matches('-').to_string()
    }

    /// Parses a manifest (YAML or JSON), renames it into this scope and
    /// labels it. Returns the object as JSON and its new name.
    pub fn adopt(&self, manifest: &str) -> (serde_json::Value, String) {
        let mut obj: serde_json::Value = serde_saphyr::from_str(manifest).expect("manifest parses");
        let base = obj["metadata"]["name"]
            .as_str()
            .unwrap_or("obj")
            .to_string();
        let name = self.name(&base);
        obj["metadata"]["name"] = name.clone().into();
        obj["metadata"]["labels"][SCOPE_LABEL] = self.id.clone().into();
        (obj, name)
    }

    /// Runs kubectl with `stdin` as the manifest input.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.cp.kubectl(args, stdin)
    }

    /// Sets `spec.forceComplete` on the migration `name`, as a user would.
    pub fn force_complete(&self, name: &str) {
        let patch = r#"{"spec":{"forceComplete":true}}"#;
        let out = self.kubectl(&["patch", "vmm", name, "--type=merge", "-p", patch], None);
        assert!(out.ok, "patching {name}: {}", out.stderr);
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let selector = format!("{SCOPE_LABEL}={}", self.id);
        let out = self.cp.kubectl(
            &[
                "delete",
                "nodeevacuations,virtualmachinemigrations,migrationpolicies,hypervisors",
                "-l",
                &selector,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
        if !out.ok {
            eprintln!("cleaning scope {}: {}", self.id, out.stderr);
        }
        // The controller that would cancel them may be gone already: a
        // leftover finalizer must not keep the objects forever.
        let left = self.cp.kubectl(
            &["get", "vmm,nodeevacuations", "-l", &selector, "-o", "name"],
            None,
        );
        for obj in left.stdout.lines().filter(|l| !l.trim().is_empty()) {
            let _ = self.cp.kubectl(
                &[
                    "patch",
                    obj.trim(),
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ],
                None,
            );
        }
    }
}
