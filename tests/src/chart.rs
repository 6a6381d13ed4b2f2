//! Helpers for the tests of the Helm chart `charts/kvmotion`: running helm
//! and kubectl from the repository root with the control plane's pinned
//! binaries, rendering the chart, and reading the rendered objects.

use serde_json::Value;

use crate::{Output, control_plane};

/// The namespace the chart is rendered into by default.
pub const NAMESPACE: &str = "kvmotion-system";
/// The user name of the default release's agent service account.
pub const AGENT: &str = "system:serviceaccount:kvmotion-system:kvmotion-agent";
/// The user name of the default release's controller service account.
pub const CONTROLLER: &str = "system:serviceaccount:kvmotion-system:kvmotion-controller";

/// Runs a tool (helm, kubectl, a script) from the repository root with the
/// control plane's kubectl and helm first on PATH.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> (Option<i32>, Output) {
    control_plane().run(program, args, stdin)
}

/// Runs the pinned helm from the repository root.
pub fn helm(args: &[&str]) -> Output {
    run("helm", args, None).1
}

/// `helm template` of release `release` in `namespace` with extra flags.
pub fn render_release(release: &str, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        release,
        "charts/kvmotion",
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(out.ok, "helm {args:?} failed: {}", out.stderr);
    out.stdout
}

/// `helm template` of the default release (kvmotion in kvmotion-system).
pub fn render(extra: &[&str]) -> String {
    render_release("kvmotion", NAMESPACE, extra)
}

/// The YAML documents of a rendered stream, as text (helm separates them by
/// `---` lines).
pub fn documents(stream: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in stream.lines() {
        if line == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .collect()
}

/// Parses one rendered YAML document, panicking with it when it is invalid.
pub fn parse(doc: &str) -> Value {
    serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("rendered YAML parses: {e}\n{doc}"))
}

/// The parsed objects of a rendered stream.
pub fn objects(stream: &str) -> Vec<Value> {
    documents(stream).iter().map(|d| parse(d)).collect()
}

/// The object of `kind` named `name` among `objects`; panics when there is none.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
}

/// The args of a workload's first container.
pub fn args_of(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the container has args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_string())
        .collect()
}

/// The value of `--flag=value` among `args`.
pub fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} missing from {args:?}"))
}

/// The downward-API field path that env entry `name` of a workload's first
/// container is set from.
pub fn env_field_path(workload: &Value, name: &str) -> String {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
        .unwrap_or_else(|| panic!("{name} is not from the downward API"))
        .to_string()
}

/// Applies `stream` with `kubectl apply --dry-run=server`, asserting the API
/// server accepts every object.
pub fn assert_server_accepts(stream: &str, what: &str) {
    control_plane().ensure_namespace(NAMESPACE);
    let (_, out) = run(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(stream),
    );
    assert!(
        out.ok,
        "the API server rejected the {what} render: {}",
        out.stderr
    );
    let accepted = out
        .stdout
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(
        accepted,
        documents(stream).len(),
        "every object of the {what} render is accepted:\n{}",
        out.stdout
    );
}
