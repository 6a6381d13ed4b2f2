//! The Helm chart's RBAC, asked of the real API server by impersonation: each
//! component is granted exactly what it uses and nothing more.

use std::sync::OnceLock;

use kvmotion_tests::chart::{AGENT, CONTROLLER, NAMESPACE, render, run};

/// Applies the chart's namespace and RBAC (the objects config/rbac holds and
/// the other tests apply too), once per test binary.
fn rbac_applied() {
    static APPLIED: OnceLock<()> = OnceLock::new();
    APPLIED.get_or_init(|| {
        let stream = render(&[
            "--set",
            "namespace.create=true",
            "--show-only",
            "templates/namespace.yaml",
            "--show-only",
            "templates/agent-rbac.yaml",
            "--show-only",
            "templates/controller-rbac.yaml",
        ]);
        let (_, out) = run("kubectl", &["apply", "-f", "-"], Some(&stream));
        assert!(out.ok, "applying the namespace and RBAC: {}", out.stderr);
    });
}

/// The controller of a release named `guarded` with evacuate-on-cordon and
/// the drain guard on, beside the default release.
const GUARDED: &str = "system:serviceaccount:kvmotion-system:guarded-kvmotion-controller";

/// Applies the RBAC of the `guarded` release, once per test binary.
fn guarded_rbac_applied() {
    static APPLIED: OnceLock<()> = OnceLock::new();
    rbac_applied();
    APPLIED.get_or_init(|| {
        let stream = kvmotion_tests::chart::render_release(
            "guarded",
            NAMESPACE,
            &[
                "--set",
                "controller.evacuateOnCordon.enabled=true",
                "--set",
                "controller.drainGuard.enabled=true",
                "--show-only",
                "templates/controller-rbac.yaml",
            ],
        );
        let (_, out) = run("kubectl", &["apply", "-f", "-"], Some(&stream));
        assert!(
            out.ok,
            "applying the guarded release's RBAC: {}",
            out.stderr
        );
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
            q("create", "hypervisors", None, None, true),
            q("patch", "hypervisors", None, None, true),
            q("get", "hypervisors", None, None, true),
            q("watch", "hypervisors", None, None, false),
            q("update", "hypervisors", Some("status"), None, false),
            q("patch", "leases", None, ns, true),
            q("create", "leases", None, ns, true),
            q("delete", "leases", None, ns, false),
            q("create", "tokenreviews", None, None, true),
            q("patch", "leases", None, Some("default"), false),
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
fn the_controller_drives_migrations_and_evacuations_and_reads_inventories_and_may_do_nothing_else()
{
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
            q(
                "create",
                "events.events.k8s.io",
                None,
                Some("kube-system"),
                false,
            ),
            q("update", "virtualmachinemigrations", None, None, false),
            q("update", "leases", None, ns, true),
            q("list", "leases", None, ns, true),
            q("update", "leases", None, Some("default"), false),
            // An evacuation's own migrations: created, cancelled, released.
            q("create", "virtualmachinemigrations", None, None, true),
            q("delete", "virtualmachinemigrations", None, None, true),
            q("watch", "nodeevacuations", None, None, true),
            q("patch", "nodeevacuations", None, None, true),
            q("patch", "nodeevacuations", Some("status"), None, true),
            q("update", "nodeevacuations", Some("finalizers"), None, true),
            q("create", "nodeevacuations", None, None, false),
            q("delete", "nodeevacuations", None, None, false),
            q("watch", "nodes", None, None, true),
            q("patch", "nodes", None, None, false),
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

#[test]
fn with_evacuate_on_cordon_and_the_drain_guard_the_controller_also_makes_evacuations_and_guards_in_its_namespace_only()
 {
    guarded_rbac_applied();
    let ns = Some(NAMESPACE);
    assert_can_i(
        GUARDED,
        &[
            q("create", "nodeevacuations", None, None, true),
            q("delete", "nodeevacuations", None, None, true),
            q("create", "pods", None, ns, true),
            q("delete", "pods", None, ns, true),
            q("watch", "pods", None, ns, true),
            q("create", "poddisruptionbudgets.policy", None, ns, true),
            q("delete", "poddisruptionbudgets.policy", None, ns, true),
            q("create", "pods", None, Some("default"), false),
            q("create", "pods", None, None, false),
            q(
                "create",
                "poddisruptionbudgets.policy",
                None,
                Some("default"),
                false,
            ),
            q("update", "pods", None, ns, false),
            q("create", "pods", Some("eviction"), ns, false),
            q("get", "deployments.apps", None, ns, false),
            q("delete", "deployments.apps", None, ns, false),
            q("get", "secrets", None, ns, false),
        ],
    );
    // The owner's uid is read from exactly its Deployment.
    let (code, out) = run(
        "kubectl",
        &[
            "auth",
            "can-i",
            "get",
            "deployments.apps/guarded-kvmotion-controller",
            "-n",
            NAMESPACE,
            "--as",
            GUARDED,
        ],
        None,
    );
    assert_eq!(
        (code, out.stdout.trim()),
        (Some(0), "yes"),
        "{}",
        out.stderr
    );
    // The default release's controller gets none of it.
    assert_can_i(
        CONTROLLER,
        &[
            q("create", "pods", None, ns, false),
            q("create", "poddisruptionbudgets.policy", None, ns, false),
        ],
    );
}
