//! Checks a label selector the way Kubernetes would before using it: the
//! CRD schema cannot express label-key syntax or operator/value rules.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Returns a message naming the first invalid part of `sel`, found at `path`.
pub fn validate(sel: &LabelSelector, path: &str) -> Result<(), String> {
    for (key, value) in sel.match_labels.iter().flatten() {
        label_key(key).map_err(|why| format!("{path}.matchLabels: key {key:?} {why}"))?;
        label_value(value)
            .map_err(|why| format!("{path}.matchLabels[{key}]: value {value:?} {why}"))?;
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let here = format!("{path}.matchExpressions[{i}]");
        label_key(&req.key).map_err(|why| format!("{here}.key: {:?} {why}", req.key))?;
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "{here}.values: operator {} needs at least one value",
                    req.operator
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "{here}.values: operator {} takes no values",
                    req.operator
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "{here}.operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                ));
            }
        }
        for v in values {
            label_value(v).map_err(|why| format!("{here}.values: {v:?} {why}"))?;
        }
    }
    Ok(())
}

/// A qualified name: optional DNS-subdomain prefix and '/', then a name of
/// at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
fn label_key(key: &str) -> Result<(), &'static str> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            let ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !ok {
                return Err("has an invalid prefix (must be a DNS subdomain)");
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("is empty");
    }
    label_value(name)
}

fn label_value(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Ok(());
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if v.len() > 63 {
        return Err("is longer than 63 characters");
    }
    if !edge_ok(v.bytes().next()) || !edge_ok(v.bytes().last()) {
        return Err("must start and end with a letter or digit");
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may contain only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn selectors_are_checked_like_kubernetes_does() {
        let cases: &[(LabelSelector, Option<&str>)] = &[
            (expr("kvmotion.io/zone", "In", &["a", "b"]), None),
            (expr("gpu", "Exists", &[]), None),
            (
                expr("zone", "Near", &["a"]),
                Some("s.matchExpressions[0].operator: \"Near\""),
            ),
            (expr("zone", "In", &[]), Some("needs at least one value")),
            (expr("zone", "Exists", &["a"]), Some("takes no values")),
            (
                expr("bad key!", "Exists", &[]),
                Some("s.matchExpressions[0].key"),
            ),
            (
                expr("Bad_Prefix/zone", "Exists", &[]),
                Some("invalid prefix"),
            ),
            (expr("zone", "In", &["-a"]), Some("must start and end")),
        ];
        for (sel, want) in cases {
            match (validate(sel, "s"), want) {
                (Ok(()), None) => {}
                (Err(got), Some(w)) => assert!(got.contains(w), "{got:?} lacks {w:?}"),
                (got, want) => panic!("{sel:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn match_labels_keys_and_values_are_checked() {
        let sel = LabelSelector {
            match_labels: Some([("rack".to_string(), "r 1".to_string())].into()),
            match_expressions: None,
        };
        let err = validate(&sel, "spec.targetSelector").unwrap_err();
        assert!(
            err.starts_with("spec.targetSelector.matchLabels[rack]: value \"r 1\""),
            "{err}"
        );
    }
}

/// Whether `labels` match `sel` (which `validate` accepted).
pub fn matches(sel: &LabelSelector, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        let have = labels.get(&req.key);
        match req.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => !have.is_some_and(|v| values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            // Unknown operators never reach here (validate refuses them);
            // matching nothing is the safe answer.
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod matching {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_labels_like_kubernetes() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("rack".to_string(), "r2".to_string()),
            ("gpu".to_string(), "yes".to_string()),
        ]
        .into();
        let req = |op: &str, key: &str, vals: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(vals.iter().map(|v| v.to_string()).collect()),
            }]),
            match_labels: None,
        };
        let cases = [
            (LabelSelector::default(), true),
            (
                LabelSelector {
                    match_labels: Some([("rack".into(), "r2".into())].into()),
                    match_expressions: None,
                },
                true,
            ),
            (
                LabelSelector {
                    match_labels: Some([("rack".into(), "r1".into())].into()),
                    match_expressions: None,
                },
                false,
            ),
            (req("In", "rack", &["r1", "r2"]), true),
            (req("NotIn", "rack", &["r2"]), false),
            (req("NotIn", "zone", &["a"]), true),
            (req("Exists", "gpu", &[]), true),
            (req("DoesNotExist", "gpu", &[]), false),
        ];
        for (i, (sel, want)) in cases.into_iter().enumerate() {
            assert_eq!(matches(&sel, &labels), want, "case {i}: {sel:?}");
        }
    }
}
