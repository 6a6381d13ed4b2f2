//! Admission: valid samples are accepted, every invalid sample is rejected
//! with a message naming its field, and the spec is immutable once created
//! except for request fields.

use std::path::PathBuf;

use kvmotion_tests::{Scope, repo_root};

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn every_valid_sample_is_accepted_by_dry_run_and_for_real() {
    let scope = Scope::new("valid-samples");
    let files = yaml_files("config/samples");
    assert!(files.len() >= 5, "expected the sample set, found {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable sample");
        let (obj, name) = scope.adopt(&text);
        let json = obj.to_string();
        let dry = scope.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&json));
        assert!(
            dry.ok,
            "{}: dry run rejected: {}",
            file.display(),
            dry.stderr
        );
        let real = scope.kubectl(&["apply", "-f", "-"], Some(&json));
        assert!(real.ok, "{}: rejected: {}", file.display(), real.stderr);
        let kind = obj["kind"].as_str().expect("kind");
        let got = scope.kubectl(&["get", kind, &name, "-o", "name"], None);
        assert!(
            got.ok && !got.stdout.is_empty(),
            "{}: not stored: {}",
            file.display(),
            got.stderr
        );
    }
}

#[tokio::test]
async fn every_invalid_sample_is_rejected_with_a_message_naming_its_field() {
    let scope = Scope::new("invalid-samples");
    let files = yaml_files("config/samples/invalid");
    let mut expectations = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable sample");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!(
                    "{}: first line must be `# expect: <message part>`",
                    file.display()
                )
            });
        expectations.insert(expect.to_string());
        let (obj, name) = scope.adopt(&text);
        for args in [
            &["apply", "--dry-run=server", "-f", "-"][..],
            &["apply", "-f", "-"][..],
        ] {
            let out = scope.kubectl(args, Some(&obj.to_string()));
            assert!(
                !out.ok,
                "{}: accepted by `kubectl {}`",
                file.display(),
                args.join(" ")
            );
            assert!(
                out.stderr.contains(expect),
                "{}: rejection does not say {expect:?}:\n{}",
                file.display(),
                out.stderr
            );
        }
        let kind = obj["kind"].as_str().expect("kind");
        let got = scope.kubectl(
            &["get", kind, &name, "--ignore-not-found", "-o", "name"],
            None,
        );
        assert_eq!(
            got.stdout,
            "",
            "{}: an invalid object was stored",
            file.display()
        );
    }
    assert!(
        expectations.len() >= 12,
        "need at least 12 distinct mistakes, have {}",
        expectations.len()
    );
}

fn create_migration(scope: &Scope, spec: serde_json::Value) -> String {
    let manifest = serde_json::json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "VirtualMachineMigration",
        "metadata": {"name": "immutable"},
        "spec": spec,
    });
    let (obj, name) = scope.adopt(&manifest.to_string());
    let out = scope.kubectl(&["create", "-f", "-"], Some(&obj.to_string()));
    assert!(out.ok, "creating {name}: {}", out.stderr);
    name
}

fn patch(scope: &Scope, name: &str, patch: serde_json::Value) -> kvmotion_tests::Output {
    scope.kubectl(
        &[
            "patch",
            "vmm",
            name,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    )
}

#[tokio::test]
async fn changing_an_immutable_field_is_rejected_naming_the_field() {
    let scope = Scope::new("immutable-change");
    let name = create_migration(
        &scope,
        serde_json::json!({"vm": {"name": "web-1"}, "targetNode": "node-b"}),
    );
    let cases = [
        (
            serde_json::json!({"spec": {"targetNode": "node-c"}}),
            "spec.targetNode is immutable",
        ),
        (
            serde_json::json!({"spec": {"vm": {"name": "web-2"}}}),
            "spec.vm is immutable",
        ),
        (
            serde_json::json!({"spec": {"mode": "Offline"}}),
            "spec.mode is immutable",
        ),
        (
            serde_json::json!({"spec": {"sourceNode": "node-a"}}),
            "spec.sourceNode is immutable",
        ),
        (
            serde_json::json!({"spec": {"overrides": {"bandwidthMiBps": 10}}}),
            "spec.overrides is immutable",
        ),
        (
            serde_json::json!({"spec": {"targetNode": null}}),
            "spec.targetNode is immutable",
        ),
    ];
    for (p, want) in cases {
        let out = patch(&scope, &name, p.clone());
        assert!(!out.ok, "patch {p} was accepted");
        assert!(
            out.stderr.contains(want),
            "patch {p}: {:?} lacks {want:?}",
            out.stderr
        );
    }
    let out = scope.kubectl(
        &["get", "vmm", &name, "-o", "jsonpath={.spec.targetNode}"],
        None,
    );
    assert_eq!(
        out.stdout, "node-b",
        "the stored spec changed: {}",
        out.stderr
    );
}

#[tokio::test]
async fn force_complete_may_be_requested_after_creation() {
    let scope = Scope::new("force-complete");
    let name = create_migration(&scope, serde_json::json!({"vm": {"name": "web-1"}}));
    let out = patch(
        &scope,
        &name,
        serde_json::json!({"spec": {"forceComplete": true}}),
    );
    assert!(out.ok, "{}", out.stderr);
    let out = scope.kubectl(
        &["get", "vmm", &name, "-o", "jsonpath={.spec.forceComplete}"],
        None,
    );
    assert_eq!(out.stdout, "true");
}

#[tokio::test]
async fn an_evacuations_node_is_immutable_and_a_dry_run_may_only_be_turned_off() {
    let scope = Scope::new("evacuation-immutable");
    let (obj, name) = scope.adopt(
        &serde_json::json!({
            "apiVersion": "kvmotion.io/v1alpha1",
            "kind": "NodeEvacuation",
            "metadata": {"name": "what-if"},
            "spec": {"nodeName": "node-z", "dryRun": true},
        })
        .to_string(),
    );
    let out = scope.kubectl(&["create", "-f", "-"], Some(&obj.to_string()));
    assert!(out.ok, "creating {name}: {}", out.stderr);
    let patch = |p: serde_json::Value| {
        scope.kubectl(
            &[
                "patch",
                "nevac",
                &name,
                "--type=merge",
                "-p",
                &p.to_string(),
            ],
            None,
        )
    };
    let out = patch(serde_json::json!({"spec": {"nodeName": "node-y"}}));
    assert!(!out.ok, "the node changed");
    assert!(
        out.stderr.contains("spec.nodeName is immutable"),
        "{}",
        out.stderr
    );
    let out = patch(serde_json::json!({"spec": {"dryRun": false}}));
    assert!(out.ok, "turning the dry run off: {}", out.stderr);
    let out = patch(serde_json::json!({"spec": {"dryRun": true}}));
    assert!(!out.ok, "the dry run came back on");
    assert!(out.stderr.contains("spec.dryRun"), "{}", out.stderr);

    // An evacuation created without dryRun takes metadata changes (the
    // controller's finalizer): the rule copes with the absent field.
    let (obj, plain) = scope.adopt(
        &serde_json::json!({
            "apiVersion": "kvmotion.io/v1alpha1",
            "kind": "NodeEvacuation",
            "metadata": {"name": "plain"},
            "spec": {"nodeName": "node-z"},
        })
        .to_string(),
    );
    let out = scope.kubectl(&["create", "-f", "-"], Some(&obj.to_string()));
    assert!(out.ok, "creating {plain}: {}", out.stderr);
    for finalizers in [
        serde_json::json!(["example.com/hold"]),
        serde_json::Value::Null,
    ] {
        let p = serde_json::json!({"metadata": {"finalizers": finalizers}}).to_string();
        let out = scope.kubectl(&["patch", "nevac", &plain, "--type=merge", "-p", &p], None);
        assert!(out.ok, "setting finalizers {finalizers}: {}", out.stderr);
    }
}
