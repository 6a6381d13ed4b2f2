//! The `list` table, aligned like kubectl's.

use kube::api::DynamicObject;
use kvmotion_api::VirtualMachineMigration;

use super::units::{age, secs_between};
use super::{phase_label, source_node, target_node, vm_name};

/// Columns of `kubectl migrate list`.
pub const LIST_HEADER: [&str; 7] = ["NAME", "VM", "SOURCE", "TARGET", "PHASE", "PROGRESS", "AGE"];

/// One migration's row.
pub fn list_row(m: &VirtualMachineMigration, now: jiff::Timestamp) -> Vec<String> {
    let progress = m
        .status
        .as_ref()
        .and_then(|s| s.progress.as_ref())
        .map_or_else(|| "-".to_string(), |p| format!("{}%", p.percent));
    vec![
        m.metadata.name.clone().unwrap_or_default(),
        vm_name(m).to_string(),
        source_node(m).unwrap_or("-").to_string(),
        target_node(m).unwrap_or("-").to_string(),
        phase_label(m).to_string(),
        progress,
        age_of(&m.metadata, now),
    ]
}

/// The row of an object that does not parse as a migration (written by a
/// newer or broken client): what the raw object says, so it is not hidden.
pub fn raw_row(obj: &DynamicObject, now: jiff::Timestamp) -> Vec<String> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    vec![
        obj.metadata.name.clone().unwrap_or_default(),
        text(&obj.data["spec"]["vm"]["name"]),
        text(&obj.data["status"]["sourceNode"]),
        text(&obj.data["status"]["targetNode"]),
        format!("{} (unreadable)", text(&obj.data["status"]["phase"])),
        "?".into(),
        age_of(&obj.metadata, now),
    ]
}

fn age_of(meta: &kube::api::ObjectMeta, now: jiff::Timestamp) -> String {
    meta.creation_timestamp
        .as_ref()
        .map_or_else(|| "-".into(), |t| age(secs_between(t.0, now)))
}

/// Left-aligned columns, three spaces apart, no trailing blanks.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::*;
    use kvmotion_api::Phase;

    #[test]
    fn rows_show_nodes_phase_progress_and_age() {
        let cases = [
            (
                migration(None),
                [
                    "web-1-abcde",
                    "web-1",
                    "-",
                    "node-b",
                    "Submitted",
                    "-",
                    "90s",
                ],
            ),
            (
                with_progress(migration(Some(Phase::Migrating)), progress()),
                [
                    "web-1-abcde",
                    "web-1",
                    "node-a",
                    "node-b",
                    "Migrating",
                    "40%",
                    "90s",
                ],
            ),
            (
                succeeded(),
                [
                    "web-1-abcde",
                    "web-1",
                    "node-a",
                    "node-b",
                    "Succeeded",
                    "-",
                    "90s",
                ],
            ),
        ];
        for (m, want) in cases {
            assert_eq!(list_row(&m, now()), want);
        }
    }

    #[test]
    fn an_unreadable_object_still_gets_a_row() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kvmotion.io/v1alpha1",
            "kind": "VirtualMachineMigration",
            "metadata": {"name": "odd", "creationTimestamp": "2030-01-01T11:00:00Z"},
            "spec": {"vm": {"name": "web-2"}, "mode": "Sideways"},
            "status": {"phase": "Migrating"},
        }))
        .expect("object");
        assert_eq!(
            raw_row(&obj, now()),
            [
                "odd",
                "web-2",
                "?",
                "?",
                "Migrating (unreadable)",
                "?",
                "60m"
            ]
        );
    }

    #[test]
    fn columns_align_on_the_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "long-value".to_string(), "x".to_string()],
            vec!["bbbbbb".to_string(), "v".to_string(), "".to_string()],
        ];
        assert_eq!(
            render(&["N", "VALUE", "LAST"], &rows),
            "N        VALUE        LAST\n\
             a        long-value   x\n\
             bbbbbb   v"
        );
        assert_eq!(render(&["N", "M"], &[]), "N   M");
    }
}
