//! The CustomResourceDefinitions, rendered to the YAML committed in `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::CustomResourceExt;

use crate::{Hypervisor, MigrationPolicy, NodeEvacuation, VirtualMachineMigration};

/// Every kvmotion CRD with the file name it is committed under in `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    let mut crds = vec![
        (
            "virtualmachinemigrations.yaml",
            VirtualMachineMigration::crd(),
        ),
        ("migrationpolicies.yaml", MigrationPolicy::crd()),
        ("hypervisors.yaml", Hypervisor::crd()),
        ("nodeevacuations.yaml", NodeEvacuation::crd()),
    ];
    for (_, crd) in &mut crds {
        for version in &mut crd.spec.versions {
            let schema = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut());
            if let Some(schema) = schema {
                drop_unsigned_formats(schema);
            }
        }
    }
    crds
}

/// schemars marks Rust's unsigned integers `format: uint32` and the like,
/// which Kubernetes does not know and warns about on every apply; the
/// schema's `minimum: 0` already says what the format meant.
fn drop_unsigned_formats(schema: &mut JSONSchemaProps) {
    if schema
        .format
        .as_deref()
        .is_some_and(|f| f.starts_with("uint"))
    {
        schema.format = None;
    }
    for prop in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        drop_unsigned_formats(prop);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        drop_unsigned_formats(items);
    }
}

/// Errors of rendering a CRD.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRD could not be serialized to YAML.
    #[error("rendering CRD {name} as YAML")]
    RenderYaml {
        /// The CRD's name.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_saphyr::ser::Error,
    },
}

/// Renders a CRD as the YAML document committed in `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, Error> {
    let body = serde_saphyr::to_string(crd).map_err(|source| Error::RenderYaml {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })?;
    Ok(format!(
        "# Generated from the Rust types in api/ by `make crds`. Do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn crds_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
    }

    #[test]
    fn committed_crd_yaml_matches_the_rust_types() {
        for (file, crd) in all() {
            let want = to_yaml(&crd).unwrap();
            let path = crds_dir().join(file);
            let have = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            assert!(
                have == want,
                "{} differs from the types in api/: run `make crds` and commit the result",
                path.display()
            );
        }
    }

    #[test]
    fn every_schema_property_has_a_description() {
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            let Some(props) = v.get("properties").and_then(|p| p.as_object()) else {
                if let Some(items) = v.get("items") {
                    walk(&format!("{path}[]"), items, missing);
                }
                return;
            };
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                let top = ["apiVersion", "kind", "metadata"];
                if path.is_empty() && top.contains(&name.as_str()) {
                    continue;
                }
                if prop.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        for (file, crd) in all() {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            let mut missing = Vec::new();
            walk("", &schema["openAPIV3Schema"], &mut missing);
            assert!(
                missing.is_empty(),
                "{file}: fields without a description: {missing:?}"
            );
        }
    }

    #[test]
    fn every_spec_field_but_requests_is_immutable() {
        let crd = VirtualMachineMigration::crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        let rules: Vec<String> = spec["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_string())
            .collect();
        for field in spec["properties"].as_object().unwrap().keys() {
            let guarded = rules
                .iter()
                .any(|r| r.contains(&format!("oldSelf.{field}")));
            let request = crate::schema::MIGRATION_REQUEST_FIELDS.contains(&field.as_str());
            assert_eq!(
                guarded, !request,
                "spec.{field}: immutable={guarded}, request={request}"
            );
        }
    }
}
