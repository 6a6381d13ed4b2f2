//! The Helm chart `charts/kvmotion`: it lints clean, renders objects the real
//! API server accepts, carries the repository's CRDs unchanged, documents
//! every value, wires the controller's and agents' identities together, and
//! grants each component exactly its RBAC; `config/` is its fresh render.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kvmotion_tests::{Output, control_plane, repo_root};
use serde_json::{Value, json};

const NAMESPACE: &str = "kvmotion-system";
const AGENT: &str = "system:serviceaccount:kvmotion-system:kvmotion-agent";
const CONTROLLER: &str = "system:serviceaccount:kvmotion-system:kvmotion-controller";

/// Runs a tool (helm, kubectl, a script) from the repository root with the
/// control plane's kubectl and helm first on PATH.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> (Option<i32>, Output) {
    use std::io::Write;
    let cp = control_plane();
    let mut child = Command::new(program)
        .current_dir(repo_root())
        .env("PATH", cp.path())
        .env("KUBECONFIG", &cp.kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing {program}'s stdin: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
    (
        out.status.code(),
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
    )
}

fn helm(args: &[&str]) -> Output {
    run("helm", args, None).1
}

/// `helm template` of release `release` in `namespace` with extra flags.
fn render_release(release: &str, namespace: &str, extra: &[&str]) -> String {
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
fn render(extra: &[&str]) -> String {
    render_release("kvmotion", NAMESPACE, extra)
}

/// The YAML documents of a rendered stream, as text (helm separates them by
/// `---` lines).
fn documents(stream: &str) -> Vec<String> {
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

fn parse(doc: &str) -> Value {
    serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("rendered YAML parses: {e}\n{doc}"))
}

/// The parsed objects of a rendered stream.
fn objects(stream: &str) -> Vec<Value> {
    documents(stream).iter().map(|d| parse(d)).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
}

fn args_of(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the container has args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_string())
        .collect()
}

/// The value of `--flag=value` among `args`.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} missing from {args:?}"))
}

/// Applies `stream` with `kubectl apply --dry-run=server`, asserting the API
/// server accepts every object.
fn assert_server_accepts(stream: &str, what: &str) {
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
fn the_default_render_is_accepted_by_the_api_server() {
    let stream = render(&[]);
    let kinds: Vec<String> = objects(&stream)
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    for kind in [
        "Deployment",
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Service",
        "PodDisruptionBudget",
        "MigrationPolicy",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} in the default render: {kinds:?}"
        );
    }
    assert!(
        !kinds
            .iter()
            .any(|k| k == "ServiceMonitor" || k == "Namespace"),
        "the default render has no ServiceMonitor and no Namespace: {kinds:?}"
    );
    assert_server_accepts(&stream, "default");
}

#[test]
fn the_render_with_service_monitors_pdb_and_tls_is_accepted_and_scrapes_the_metrics_services() {
    let stream = render(&[
        "--set",
        "serviceMonitor.enabled=true,controller.podDisruptionBudget.enabled=true,\
         tls.enabled=true,tls.secretName=agent-tls,namespace.create=true",
    ]);
    // The test API server has no Prometheus Operator CRDs: ServiceMonitors
    // are checked here, everything else by the server.
    let (monitors, rest): (Vec<String>, Vec<String>) = documents(&stream)
        .into_iter()
        .partition(|d| d.contains("\nkind: ServiceMonitor\n"));
    assert_eq!(monitors.len(), 2, "a ServiceMonitor per component");
    let rest = rest.iter().map(|d| format!("---\n{d}")).collect::<String>();
    assert_server_accepts(&rest, "ServiceMonitor/PDB/TLS");

    let objs = objects(&rest);
    let services: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "Service").collect();
    for monitor in monitors.iter().map(|m| parse(m)) {
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(monitor["metadata"]["namespace"], NAMESPACE);
        let selector = monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("a matchLabels selector");
        let endpoint = &monitor["spec"]["endpoints"][0];
        let service = services
            .iter()
            .find(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
            })
            .unwrap_or_else(|| panic!("no Service matches {selector:?}"));
        let ports = service["spec"]["ports"].as_array().expect("ports");
        assert!(
            ports.iter().any(|p| p["name"] == endpoint["port"]),
            "{} has no port {}",
            service["metadata"]["name"],
            endpoint["port"]
        );
        assert_eq!(endpoint["path"], "/metrics");
        let is_agent = monitor["metadata"]["name"] == "kvmotion-agent";
        let scheme = endpoint["scheme"].as_str().unwrap_or("http");
        assert_eq!(
            scheme,
            if is_agent { "https" } else { "http" },
            "with TLS only the agents serve https"
        );
    }
    let pdb = find(&objs, "PodDisruptionBudget", "kvmotion-controller");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let agent = find(&objs, "DaemonSet", "kvmotion-agent");
    let args = args_of(agent);
    assert!(
        args.iter().any(|a| a.starts_with("--tls-cert=")),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a.starts_with("--peer-ca-file=")),
        "{args:?}"
    );
    let controller = find(&objs, "Deployment", "kvmotion-controller");
    assert!(
        args_of(controller)
            .iter()
            .any(|a| a.starts_with("--agent-ca-file=")),
        "the controller verifies agents with the CA"
    );
}

#[test]
fn tls_without_a_secret_name_fails_the_render_with_a_message() {
    let out = helm(&[
        "template",
        "kvmotion",
        "charts/kvmotion",
        "--set",
        "tls.enabled=true",
    ]);
    assert!(!out.ok, "rendered TLS without a Secret:\n{}", out.stdout);
    assert!(
        out.stderr.contains("tls.secretName is required"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_agents_trust_exactly_the_accounts_the_chart_renders_under_any_release_name() {
    for (release, namespace, prefix) in [
        ("kvmotion", NAMESPACE, "kvmotion"),
        ("lab", "virt-ops", "lab-kvmotion"),
    ] {
        let objs = objects(&render_release(release, namespace, &[]));
        let controller = find(&objs, "Deployment", &format!("{prefix}-controller"));
        let agent = find(&objs, "DaemonSet", &format!("{prefix}-agent"));
        let account = |w: &Value| {
            let sa = w["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .expect("a serviceAccountName");
            find(&objs, "ServiceAccount", sa);
            format!("system:serviceaccount:{namespace}:{sa}")
        };
        let agent_args = args_of(agent);
        assert_eq!(
            flag(&agent_args, "--controller-identity"),
            account(controller),
            "release {release}: agents trust the controller's account"
        );
        assert_eq!(
            flag(&agent_args, "--peer-identity"),
            account(agent),
            "release {release}: agents trust each other's account"
        );
        // The defaults of the two binaries name the default release's
        // accounts, so that release needs no flags at all to work.
        if release == "kvmotion" {
            assert_eq!(account(controller), CONTROLLER);
            assert_eq!(account(agent), AGENT);
        }
        let controller_args = args_of(controller);
        assert_eq!(flag(&controller_args, "--agent-namespace"), namespace);

        // Both tokens are projected for the audience the agents check, live
        // an hour, and are mounted where the flags point.
        let audience = flag(&agent_args, "--token-audience");
        assert_eq!(audience, "kvmotion-agent");
        for (workload, token_flag, args) in [
            (controller, "--agent-token-file", &controller_args),
            (agent, "--peer-token-file", &agent_args),
        ] {
            let pod = &workload["spec"]["template"]["spec"];
            let token = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find_map(|v| {
                    let source = &v["projected"]["sources"][0]["serviceAccountToken"];
                    source
                        .is_object()
                        .then(|| (v["name"].clone(), source.clone()))
                })
                .expect("a projected service-account token volume");
            assert_eq!(token.1["audience"], audience);
            assert_eq!(token.1["expirationSeconds"], 3600);
            let mount = pod["containers"][0]["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .find(|m| m["name"] == token.0)
                .expect("the token volume is mounted");
            assert_eq!(
                flag(args, token_flag),
                format!(
                    "{}/{}",
                    mount["mountPath"].as_str().expect("a mountPath"),
                    token.1["path"].as_str().expect("a token path")
                )
            );
        }
    }
}

/// The env entry `name` of a workload's first container.
fn env_field_path(workload: &Value, name: &str) -> String {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
        .unwrap_or_else(|| panic!("{name} is not from the downward API"))
        .to_string()
}

#[test]
fn the_controller_runs_two_leader_elected_replicas_probed_on_its_http_port() {
    let objs = objects(&render(&[]));
    let controller = find(&objs, "Deployment", "kvmotion-controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    assert_eq!(env_field_path(controller, "POD_NAME"), "metadata.name");
    assert_eq!(
        env_field_path(controller, "POD_NAMESPACE"),
        "metadata.namespace"
    );
    let container = &controller["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["name"], "metrics");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(
        flag(&args_of(controller), "--http-addr"),
        "0.0.0.0:8080",
        "the probes and the metrics port point at the port it serves"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // A standby's /readyz is ready too (controller/src/http.rs), so readiness
    // does not depend on leadership.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for limit in ["cpu", "memory"] {
        assert!(container["resources"]["requests"][limit].is_string());
        assert!(container["resources"]["limits"][limit].is_string());
    }
}

#[test]
fn an_agent_runs_on_each_hypervisors_host_network_next_to_libvirt() {
    let objs = objects(&render(&[]));
    let agent = find(&objs, "DaemonSet", "kvmotion-agent");
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["nodeSelector"]["kvmotion.io/hypervisor"], "true");
    assert_eq!(env_field_path(agent, "NODE_NAME"), "spec.nodeName");
    assert_eq!(env_field_path(agent, "HOST_IP"), "status.hostIP");
    assert_eq!(
        flag(&args_of(agent), "--migration-address"),
        "$(HOST_IP)",
        "the migration address is the node's IP by default"
    );
    let libvirt = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "libvirt-run")
        .expect("the libvirt socket volume");
    assert_eq!(libvirt["hostPath"]["path"], "/var/run/libvirt");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == "libvirt-run")
        .expect("the libvirt socket directory is mounted");
    assert_eq!(
        mount["mountPath"], "/var/run/libvirt",
        "libvirt's client looks for the socket where the host has it"
    );
}

/// A Pod made of a workload's pod template, in `namespace`.
fn pod_of(workload: &Value, namespace: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{}-pss", workload["metadata"]["name"].as_str().unwrap_or("pod")),
            "namespace": namespace,
        },
        "spec": workload["spec"]["template"]["spec"],
    })
    .to_string()
}

fn create_pod_dry_run(pod: &str) -> Output {
    run(
        "kubectl",
        &["create", "--dry-run=server", "-f", "-"],
        Some(pod),
    )
    .1
}

#[test]
fn the_controller_meets_the_restricted_pod_security_level_and_the_agent_needs_privileged() {
    let cp = control_plane();
    let restricted = "kvmotion-chart-restricted";
    cp.ensure_namespace(restricted);
    let (_, out) = run(
        "kubectl",
        &[
            "label",
            "--overwrite",
            "namespace",
            restricted,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    assert!(out.ok, "{}", out.stderr);
    // The rendered namespace carries the level the agent needs.
    let (_, out) = run(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&render(&[
            "--set",
            "namespace.create=true",
            "--show-only",
            "templates/namespace.yaml",
        ])),
    );
    assert!(out.ok, "{}", out.stderr);

    let objs = objects(&render(&[]));
    let controller = find(&objs, "Deployment", "kvmotion-controller");
    let agent = find(&objs, "DaemonSet", "kvmotion-agent");

    let out = create_pod_dry_run(&pod_of(controller, restricted));
    assert!(
        out.ok,
        "the controller pod violates the restricted level: {}",
        out.stderr
    );
    let out = create_pod_dry_run(&pod_of(agent, restricted));
    assert!(!out.ok, "the agent pod passed the restricted level");
    for violation in ["hostNetwork", "hostPath", "runAsNonRoot"] {
        assert!(
            out.stderr.contains(violation),
            "the restricted level refuses the agent for {violation}: {}",
            out.stderr
        );
    }
    let out = create_pod_dry_run(&pod_of(agent, NAMESPACE));
    assert!(
        out.ok,
        "the agent pod is refused in the chart's namespace: {}",
        out.stderr
    );

    // Root, but no more than it needs.
    let sc = &agent["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], json!(["DAC_OVERRIDE"]));
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

/// Applies the chart's namespace and RBAC (the objects config/rbac holds and
/// the other tests apply too), once per test binary.
fn rbac_applied() {
    static APPLIED: OnceLock<()> = OnceLock::new();
    APPLIED.get_or_init(|| {
        for template in [
            "templates/namespace.yaml",
            "templates/agent-rbac.yaml",
            "templates/controller-rbac.yaml",
        ] {
            let stream = render(&["--set", "namespace.create=true", "--show-only", template]);
            let (_, out) = run("kubectl", &["apply", "-f", "-"], Some(&stream));
            assert!(out.ok, "applying {template}: {}", out.stderr);
        }
    });
}

/// One `kubectl auth can-i` question: verb, resource, and where.
struct Question {
    verb: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    /// A namespace, or None for a cluster-scoped resource (or any namespace).
    namespace: Option<&'static str>,
    allowed: bool,
}

const fn q(
    verb: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    namespace: Option<&'static str>,
    allowed: bool,
) -> Question {
    Question {
        verb,
        resource,
        subresource,
        namespace,
        allowed,
    }
}

/// Asks every question as `user` and lists the wrong answers.
fn assert_can_i(user: &str, questions: &[Question]) {
    rbac_applied();
    let mut wrong = Vec::new();
    for question in questions {
        let mut args = vec![
            "auth",
            "can-i",
            question.verb,
            question.resource,
            "--as",
            user,
        ];
        if let Some(sub) = question.subresource {
            args.extend(["--subresource", sub]);
        }
        match question.namespace {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        let (code, out) = run("kubectl", &args, None);
        let (want_code, want_answer) = if question.allowed {
            (0, "yes")
        } else {
            (1, "no")
        };
        if code != Some(want_code) || out.stdout.trim() != want_answer {
            wrong.push(format!(
                "{} {}{} in {}: want {want_answer} (exit {want_code}), got {:?} (exit {code:?}) {}",
                question.verb,
                question.resource,
                question
                    .subresource
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default(),
                question.namespace.unwrap_or("the cluster"),
                out.stdout.trim(),
                out.stderr.trim(),
            ));
        }
    }
    assert!(wrong.is_empty(), "{user}:\n{}", wrong.join("\n"));
}

#[test]
fn the_agent_publishes_hypervisors_renews_leases_reviews_tokens_and_never_touches_migrations() {
    let ns = Some(NAMESPACE);
    assert_can_i(
        AGENT,
        &[
            q("patch", "hypervisors", Some("status"), None, true),
            q("update", "hypervisors", Some("status"), None, true),
            q("create", "hypervisors", None, None, true),
            q("watch", "hypervisors", None, None, true),
            q("update", "leases", None, ns, true),
            q("create", "leases", None, ns, true),
            q("create", "tokenreviews", None, None, true),
            q("update", "leases", None, Some("default"), false),
            q("get", "virtualmachinemigrations", None, None, false),
            q("list", "virtualmachinemigrations", None, None, false),
            q("patch", "virtualmachinemigrations", None, None, false),
            q("create", "virtualmachinemigrations", None, None, false),
            q("delete", "virtualmachinemigrations", None, None, false),
            q(
                "update",
                "virtualmachinemigrations",
                Some("status"),
                None,
                false,
            ),
            q(
                "patch",
                "virtualmachinemigrations",
                Some("status"),
                None,
                false,
            ),
            q("create", "migrationpolicies", None, None, false),
            q("delete", "hypervisors", None, None, false),
            q("get", "secrets", None, ns, false),
            q("get", "secrets", None, None, false),
        ],
    );
}

#[test]
fn the_controller_drives_migrations_and_reads_inventories_and_may_do_nothing_else() {
    let ns = Some(NAMESPACE);
    assert_can_i(
        CONTROLLER,
        &[
            q("watch", "virtualmachinemigrations", None, None, true),
            q("patch", "virtualmachinemigrations", None, None, true),
            q(
                "patch",
                "virtualmachinemigrations",
                Some("status"),
                None,
                true,
            ),
            q("list", "hypervisors", None, None, true),
            q("watch", "migrationpolicies", None, None, true),
            q(
                "create",
                "events.events.k8s.io",
                None,
                Some("default"),
                true,
            ),
            q("update", "leases", None, ns, true),
            q("list", "leases", None, ns, true),
            q("update", "leases", None, Some("default"), false),
            q("create", "virtualmachinemigrations", None, None, false),
            q("delete", "virtualmachinemigrations", None, None, false),
            q("delete", "hypervisors", None, None, false),
            q("patch", "hypervisors", None, None, false),
            q("patch", "hypervisors", Some("status"), None, false),
            q("update", "migrationpolicies", None, None, false),
            q("create", "tokenreviews", None, None, false),
            q("get", "secrets", None, ns, false),
            q("get", "secrets", None, None, false),
        ],
    );
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
