//! Schema helpers: CEL rules and patterns that serde and schemars cannot express.

use schemars::Schema;
use serde_json::{Value, json};

/// A DNS-1123 subdomain, the form of a Kubernetes node name.
pub(crate) const DNS1123_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Spec fields of a migration that are requests by nature and so may change
/// after creation; every other spec field is immutable.
pub(crate) const MIGRATION_REQUEST_FIELDS: &[&str] = &["forceComplete"];

/// Appends a CEL rule to a schema's `x-kubernetes-validations`.
pub(crate) fn push_rule(schema: &mut Schema, rule: &str, message: &str, field_path: Option<&str>) {
    let mut entry = json!({ "rule": rule, "message": message });
    if let Some(path) = field_path {
        entry["fieldPath"] = json!(path);
    }
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    match obj.get_mut("x-kubernetes-validations") {
        Some(Value::Array(rules)) => rules.push(entry),
        _ => {
            obj.insert("x-kubernetes-validations".into(), json!([entry]));
        }
    }
}

/// The transition rule that keeps one spec property fixed. Optional
/// properties must also not appear or disappear, which a rule on the property
/// itself cannot see (it only runs when both old and new values exist).
pub(crate) fn immutability_rule(field: &str, required: bool) -> String {
    if required {
        format!("self.{field} == oldSelf.{field}")
    } else {
        format!(
            "has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
        )
    }
}

/// schemars transform for the migration spec: one immutability rule per
/// property (so the rejection names the field), except request fields.
/// Deriving the list from the schema means a new field is covered unasked.
pub(crate) fn migration_spec_immutable(schema: &mut Schema) {
    immutable_except(schema, "migration", MIGRATION_REQUEST_FIELDS);
}

/// Spec fields of an evacuation that may change after creation: a dry run
/// may be turned into the real one.
pub(crate) const EVACUATION_REQUEST_FIELDS: &[&str] = &["dryRun"];

/// schemars transform for the evacuation spec, like the migration's.
pub(crate) fn evacuation_spec_immutable(schema: &mut Schema) {
    immutable_except(schema, "evacuation", EVACUATION_REQUEST_FIELDS);
}

/// One immutability rule per spec property of a `kind` object, except the
/// `mutable` ones.
fn immutable_except(schema: &mut Schema, kind: &str, mutable: &[&str]) {
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let fields: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for field in fields.iter().filter(|f| !mutable.contains(&f.as_str())) {
        // A field with a default is always present once stored, like a required one.
        let defaulted = schema
            .get("properties")
            .and_then(|p| p.get(field))
            .is_some_and(|p| p.get("default").is_some());
        let rule = immutability_rule(field, required.contains(field) || defaulted);
        let message = format!(
            "spec.{field} is immutable once the {kind} is created; delete it and create a new one to change it"
        );
        push_rule(schema, &rule, &message, Some(&format!(".{field}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_field_rule_catches_addition_and_removal() {
        let rule = immutability_rule("targetNode", false);
        assert!(rule.starts_with("has(self.targetNode) == has(oldSelf.targetNode)"));
    }

    #[test]
    fn required_field_rule_is_plain_equality() {
        assert_eq!(immutability_rule("vm", true), "self.vm == oldSelf.vm");
    }
}
