//! The Helm chart's files agree with the repository: it lints clean, carries
//! the repository's CRDs unchanged and the workspace version, documents every
//! value, and `config/` is its fresh render.

use std::path::{Path, PathBuf};

use kvmotion_tests::chart::{NAMESPACE, helm, run};
use kvmotion_tests::repo_root;
use serde_json::Value;

#[test]
fn the_chart_crds_are_byte_identical_to_the_repository_crds() {
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    let repo = repo_root().join("crds");
    let chart = repo_root().join("charts/kvmotion/crds");
    assert_eq!(
        names(&chart),
        names(&repo),
        "charts/kvmotion/crds/ holds other files than crds/: run `make manifests`"
    );
    for name in names(&repo) {
        let a = std::fs::read(repo.join(&name)).expect("reading a CRD");
        let b = std::fs::read(chart.join(&name)).expect("reading the chart's copy");
        assert!(
            a == b,
            "charts/kvmotion/crds/{name} differs from crds/{name}: run `make manifests`"
        );
    }
}

#[test]
fn the_chart_app_version_is_the_workspace_version() {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let workspace_version = cargo
        .split("[workspace.package]")
        .nth(1)
        .and_then(|section| {
            section
                .lines()
                .find_map(|l| l.trim().strip_prefix("version = "))
        })
        .map(|v| v.trim_matches('"').to_string())
        .expect("a version in [workspace.package]");
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join("charts/kvmotion/Chart.yaml"))
            .expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(chart["appVersion"], workspace_version.as_str());
}

#[test]
fn helm_lint_strict_passes_without_warnings_with_defaults_and_every_option() {
    for values in [
        "",
        "serviceMonitor.enabled=true,tls.enabled=true,tls.secretName=agent-tls,\
         controller.podAntiAffinity=hard,agent.migrationAddress=10.0.0.1,\
         agent.sharedPaths={/srv/shared},controller.migrationSelector=shard=a,\
         defaultPolicy.tuning.postCopy=false,namespace.create=true",
    ] {
        let mut args = vec![
            "lint",
            "--strict",
            "charts/kvmotion",
            "--namespace",
            NAMESPACE,
        ];
        if !values.is_empty() {
            args.extend(["--set", values]);
        }
        let out = helm(&args);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(out.ok, "helm lint --strict with {values:?} failed:\n{text}");
        assert!(
            text.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{text}"
        );
        for bad in ["[WARNING]", "[ERROR]"] {
            assert!(
                !text.contains(bad),
                "helm lint with {values:?} reports {bad}:\n{text}"
            );
        }
    }
}

#[test]
fn the_config_directory_is_a_fresh_render_of_the_chart() {
    let out_dir = repo_root()
        .join("target/chart-render")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&out_dir);
    let (_, out) = run(
        "bash",
        &["charts/render.sh", &out_dir.to_string_lossy()],
        None,
    );
    assert!(
        out.ok,
        "charts/render.sh failed: {}{}",
        out.stdout, out.stderr
    );
    let mut rendered = Vec::new();
    collect_files(&out_dir, &mut rendered);
    rendered.sort();
    let names: Vec<String> = rendered
        .iter()
        .map(|p| {
            p.strip_prefix(&out_dir)
                .expect("under the render dir")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "install/kvmotion.yaml",
            "rbac/agent.yaml",
            "rbac/controller.yaml",
            "rbac/namespace.yaml"
        ]
    );
    for (path, name) in rendered.iter().zip(&names) {
        let fresh = std::fs::read_to_string(path).expect("reading the render");
        assert!(
            fresh.starts_with("# Generated from the Helm chart charts/kvmotion")
                && fresh.contains("run `make manifests`"),
            "{name} lacks the generated-file header"
        );
        let committed =
            std::fs::read_to_string(repo_root().join("config").join(name)).unwrap_or_default();
        assert!(
            committed == fresh,
            "config/{name} differs from a fresh render of charts/kvmotion: run `make manifests`"
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

fn collect_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_files(&path, into);
        } else {
            into.push(path);
        }
    }
}

/// Keys of values.yaml, each with whether a comment documents it (directly
/// above it, or above a key it is nested in) and whether it holds a value on
/// its own line (a leaf) rather than nested keys.
fn values_keys() -> Vec<(String, bool, bool)> {
    let text = std::fs::read_to_string(repo_root().join("charts/kvmotion/values.yaml"))
        .expect("values.yaml");
    let mut keys = Vec::new();
    // (indent, key, documented) of the keys enclosing the current line.
    let mut stack: Vec<(usize, String, bool)> = Vec::new();
    let mut previous = "";
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let key = trimmed.split_once(':').map(|(k, _)| k).filter(|k| {
            !trimmed.starts_with('#')
                && !trimmed.starts_with('-')
                && !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        });
        if let Some(key) = key {
            while stack.last().is_some_and(|(i, _, _)| *i >= indent) {
                stack.pop();
            }
            let documented = previous.trim_start().starts_with('#')
                || stack.iter().any(|(_, _, documented)| *documented);
            let path = stack
                .iter()
                .map(|(_, k, _)| k.as_str())
                .chain([key])
                .collect::<Vec<_>>()
                .join(".");
            let leaf = !trimmed[key.len() + 1..].trim().is_empty();
            keys.push((path, documented, leaf));
            stack.push((indent, key.to_string(), documented));
        }
        if !trimmed.is_empty() {
            previous = line;
        }
    }
    keys
}

#[test]
fn every_value_is_commented_in_values_yaml_and_listed_in_the_chart_readme() {
    let keys = values_keys();
    assert!(keys.len() > 50, "values.yaml was read: {keys:?}");
    let undocumented: Vec<&str> = keys
        .iter()
        .filter(|(_, documented, leaf)| *leaf && !documented)
        .map(|(path, _, _)| path.as_str())
        .collect();
    assert!(
        undocumented.is_empty(),
        "values without a comment in values.yaml: {undocumented:?}"
    );

    let readme = std::fs::read_to_string(repo_root().join("charts/kvmotion/README.md"))
        .expect("the chart README");
    let rows: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name))
        .collect();
    let covered = |path: &str| {
        rows.iter()
            .any(|r| path == *r || path.starts_with(&format!("{r}.")))
    };
    let missing: Vec<&str> = keys
        .iter()
        .filter(|(path, _, leaf)| *leaf && !covered(path))
        .map(|(path, _, _)| path.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from the README's values table: {missing:?}"
    );
    let stale: Vec<&&str> = rows
        .iter()
        .filter(|r| !keys.iter().any(|(p, _, _)| p == *r))
        .collect();
    assert!(stale.is_empty(), "README rows naming no value: {stale:?}");
}
