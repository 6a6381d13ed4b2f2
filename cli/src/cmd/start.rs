//! `kubectl migrate VM`: creates a migration and, with --wait, follows it.

use kube::api::PostParams;
use kube::{Client, ResourceExt};
use kvmotion_api::migration::PolicyRef;
use kvmotion_api::{MigrationMode, VirtualMachineMigration, VirtualMachineMigrationSpec, VmRef};

use crate::args::StartArgs;
use crate::error::Error;
use crate::exit::Outcome;
use crate::output::Output;

/// Creates the migration of `vm` that `args` describe, prints its name,
/// and follows it when asked to.
pub async fn start(
    client: Client,
    vm: &str,
    args: &StartArgs,
    out: &mut Output,
) -> Result<Outcome, Error> {
    let api = crate::client::migrations(client);
    let created = api
        .create(&PostParams::default(), &new_migration(vm, args))
        .await
        .map_err(|source| Error::CreateMigration {
            vm: vm.to_string(),
            source,
        })?;
    let name = created.name_any();
    // The bare name, so that scripts can capture it.
    out.line(&name)?;
    if !args.wait {
        return Ok(Outcome::Done);
    }
    super::follow::follow(&api, &name, out).await
}

/// The migration object to create: named after the VM by the apiserver.
pub fn new_migration(vm: &str, args: &StartArgs) -> VirtualMachineMigration {
    let vm_ref = if is_uuid(vm) {
        VmRef {
            name: None,
            uuid: Some(vm.to_string()),
        }
    } else {
        VmRef {
            name: Some(vm.to_string()),
            uuid: None,
        }
    };
    let spec = VirtualMachineMigrationSpec {
        vm: vm_ref,
        source_node: args.from.clone(),
        target_node: args.to.clone(),
        target_selector: None,
        mode: if args.offline {
            MigrationMode::Offline
        } else {
            MigrationMode::Live
        },
        policy_ref: args.policy.clone().map(|name| PolicyRef { name }),
        overrides: None,
        force_complete: false,
    };
    let mut m = VirtualMachineMigration::new("", spec);
    m.metadata.name = None;
    m.metadata.generate_name = Some(generate_name(vm));
    if !args.labels.is_empty() {
        m.metadata.labels = Some(args.labels.iter().cloned().collect());
    }
    m
}

/// A generateName prefix from a libvirt domain name, which may hold
/// characters (capitals, `_`, `.`) an object name cannot.
pub fn generate_name(vm: &str) -> String {
    // The apiserver appends 5 characters; 63 in all keeps the name a valid
    // label value too, for selectors.
    const MAX_STEM: usize = 57;
    let stem: String = vm
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .take(MAX_STEM)
        .collect();
    let stem = stem.trim_matches('-');
    if stem.is_empty() {
        "vm-".to_string()
    } else {
        format!("{stem}-")
    }
}

/// Whether `s` is a UUID in libvirt's 8-4-4-4-12 form.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid_object_names() {
        let long = "a".repeat(80);
        let cases = [
            ("web-1", "web-1-"),
            ("Web_1.prod", "web-1-prod-"),
            ("--x--", "x-"),
            ("___", "vm-"),
            ("", "vm-"),
            (long.as_str(), &*format!("{}-", "a".repeat(57))),
        ];
        for (vm, want) in cases {
            assert_eq!(generate_name(vm), want, "{vm}");
        }
    }

    #[test]
    fn uuids_are_told_from_names() {
        let cases = [
            ("0b5c3c0e-8d1e-4a57-9a3e-2f9b1d6f4e21", true),
            ("0B5C3C0E-8D1E-4A57-9A3E-2F9B1D6F4E21", true),
            ("0b5c3c0e-8d1e-4a57-9a3e-2f9b1d6f4e2", false),
            ("0b5c3c0e8d1e4a579a3e2f9b1d6f4e21", false),
            ("web-1", false),
            ("zzzzzzzz-8d1e-4a57-9a3e-2f9b1d6f4e21", false),
        ];
        for (s, want) in cases {
            assert_eq!(is_uuid(s), want, "{s}");
        }
    }

    #[test]
    fn the_object_carries_every_option() {
        let args = StartArgs {
            to: Some("node-b".into()),
            from: Some("node-a".into()),
            offline: true,
            policy: Some("fast".into()),
            labels: vec![("team".into(), "web".into())],
            wait: false,
        };
        let m = new_migration("web-1", &args);
        let json = serde_json::to_value(&m).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "kvmotion.io/v1alpha1",
                "kind": "VirtualMachineMigration",
                "metadata": {"generateName": "web-1-", "labels": {"team": "web"}},
                "spec": {
                    "vm": {"name": "web-1"},
                    "sourceNode": "node-a",
                    "targetNode": "node-b",
                    "mode": "Offline",
                    "policyRef": {"name": "fast"},
                },
            })
        );
    }

    #[test]
    fn without_options_the_controller_chooses() {
        let m = new_migration(
            "0b5c3c0e-8d1e-4a57-9a3e-2f9b1d6f4e21",
            &StartArgs::default(),
        );
        let json = serde_json::to_value(&m).expect("serializes");
        assert_eq!(
            json["spec"],
            serde_json::json!({"vm": {"uuid": "0b5c3c0e-8d1e-4a57-9a3e-2f9b1d6f4e21"}, "mode": "Live"})
        );
        assert_eq!(
            json["metadata"],
            serde_json::json!({"generateName": "0b5c3c0e-8d1e-4a57-9a3e-2f9b1d6f4e21-"})
        );
    }
}
