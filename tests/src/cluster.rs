//! The lab cluster: the lab's hypervisors as Kubernetes nodes
//! (`tests/cluster/nodes.sh`) running kvmotion from the images `make
//! images` built, installed by helm (`tests/cluster/install.sh`) the way an
//! operator installs it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::scope::{SCOPE_LABEL, Scope};
use crate::{Output, control_plane, repo_root};

/// The namespace the release runs in.
pub const NAMESPACE: &str = "kvmotion-system";

/// The images of this tree, as `tests/images/build.sh` reported them.
#[derive(Debug, Clone)]
pub struct Images {
    /// The tag both images carry (VERSION-COMMIT).
    pub tag: String,
    /// `target/images/images.json`.
    pub report: Value,
}

impl Images {
    /// The OCI archives, in the report's order.
    pub fn archives(&self) -> Vec<PathBuf> {
        self.report
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["archive"].as_str())
            .map(|a| repo_root().join(a))
            .collect()
    }
}

fn script(path: &str, args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(repo_root().join(path))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {path}: {e}"));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn script_ok(path: &str, args: &[&str]) -> String {
    let out = script(path, args);
    assert!(
        out.ok,
        "{path} {} failed:\n{}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// The images of this tree, built once: by whichever test binary asks
/// first (others, and later runs, reuse `target/images/` while it holds
/// this tree's tag). A file lock keeps two binaries from building at once.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let root = repo_root();
        std::fs::create_dir_all(root.join("target")).expect("target dir");
        let lock = std::fs::File::create(root.join("target/images.lock")).expect("lock file");
        lock.lock().expect("locking target/images.lock");
        let tag = script_ok("tests/images/build.sh", &["--tag"])
            .trim()
            .to_string();
        let current = |report: &Value| {
            let items = report.as_array().map(Vec::as_slice).unwrap_or_default();
            items.len() == 2
                && items.iter().all(|i| {
                    i["ref"]
                        .as_str()
                        .is_some_and(|r| r.ends_with(&format!(":{tag}")))
                        && i["archive"]
                            .as_str()
                            .is_some_and(|a| root.join(a).is_file())
                })
        };
        let read = || {
            std::fs::read_to_string(root.join("target/images/images.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .unwrap_or(Value::Null)
        };
        let mut report = read();
        if !current(&report) {
            script_ok("tests/images/build.sh", &[]);
            report = read();
            assert!(
                current(&report),
                "build.sh wrote no images of {tag}: {report}"
            );
        }
        Images { tag, report }
    })
}

/// The lab's nodes up and Ready with this tree's images imported; returns
/// the images.
pub fn nodes() -> &'static Images {
    static UP: OnceLock<()> = OnceLock::new();
    let images = images();
    UP.get_or_init(|| {
        control_plane();
        crate::lab::lab_up();
        script_ok("tests/cluster/nodes.sh", &["up"]);
        // nodes.sh up imports what target/images holds; a node that was
        // already up gets this tree's images now.
        let archives: Vec<String> = images
            .archives()
            .iter()
            .map(|a| a.display().to_string())
            .collect();
        let mut args = vec!["import"];
        args.extend(archives.iter().map(String::as_str));
        script_ok("tests/cluster/nodes.sh", &args);
    });
    images
}

/// kubectl against the control plane, as the admin.
pub fn kubectl(args: &[&str]) -> Output {
    control_plane().kubectl(args, None)
}

/// `kubectl get ... -o json`, parsed.
pub fn get_json(args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let out = kubectl(&all);
    assert!(out.ok, "kubectl {all:?}: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("kubectl JSON")
}

/// kvmotion installed by helm for one test, reconciling only the
/// migrations of `scope`. Uninstalled on drop, and waited for until no pod
/// of it is left.
pub struct Release {
    /// The test's scope; its label selects the migrations.
    pub scope: Scope,
    /// The images' tag the release runs now.
    pub tag: String,
    /// Whether the controller reconciles only the scope's migrations.
    scoped: bool,
}

impl Release {
    /// `helm upgrade --install` with the lab's values; waits until every
    /// pod is Ready (helm --wait).
    pub fn install(test: &str) -> Release {
        Release::install_with(test, true, &[])
    }

    /// Like [`Release::install`], reconciling every migration: the
    /// release as an operator has it (the demo).
    pub fn install_unscoped(test: &str) -> Release {
        Release::install_with(test, false, &[])
    }

    /// Like [`Release::install`], with more helm arguments (`--set …`).
    pub fn install_with_values(test: &str, extra: &[&str]) -> Release {
        Release::install_with(test, true, extra)
    }

    fn install_with(test: &str, scoped: bool, extra: &[&str]) -> Release {
        let images = nodes();
        let release = Release {
            tag: images.tag.clone(),
            scope: Scope::new(test),
            scoped,
        };
        release.helm_install(&images.tag, extra);
        release
    }

    fn helm_install(&self, tag: &str, extra: &[&str]) -> Output {
        let selector = format!(
            "controller.migrationSelector={SCOPE_LABEL}={}",
            self.scope.id
        );
        let mut args = vec![tag];
        if self.scoped {
            args.extend(["--set", selector.as_str()]);
        }
        args.extend_from_slice(extra);
        let out = script("tests/cluster/install.sh", &args);
        assert!(
            out.ok,
            "install.sh failed:\n{}{}\n{}",
            out.stdout,
            out.stderr,
            self.describe()
        );
        out
    }

    /// `helm upgrade` to images tagged `tag` (which the nodes must hold).
    pub fn upgrade(&mut self, tag: &str, extra: &[&str]) -> Output {
        let out = self.helm_install(tag, extra);
        self.tag = tag.to_string();
        out
    }

    /// The release's pods of `component` (controller or agent).
    pub fn pods(&self, component: &str) -> Vec<Value> {
        pods(component)
    }

    /// The pod holding the controller's leader Lease.
    pub fn leader(&self) -> Option<String> {
        let lease = get_json(&["lease", "-n", NAMESPACE, "kvmotion-controller"]);
        lease["spec"]["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    /// Applies a VirtualMachineMigration of this scope; returns its name.
    pub fn migrate(&self, base: &str, spec: Value) -> String {
        crate::e2e::apply_migration(&self.scope, base, spec)
    }

    /// The migration's status.
    pub fn status(&self, name: &str) -> Value {
        let out = self
            .scope
            .kubectl(&["get", "vmm", name, "-o", "json"], None);
        if !out.ok {
            return Value::Null;
        }
        serde_json::from_str::<Value>(&out.stdout)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until the migration is in `phase` (or in a final one);
    /// panics with the pods' state and logs otherwise.
    pub async fn wait_phase(&self, name: &str, phase: &str, within: Duration) -> Value {
        let status = || async { Some(self.status(name)).filter(|s| !s.is_null()) };
        match crate::e2e::until_phase(name, phase, within, status).await {
            Ok(s) => s,
            Err((None, s)) => panic!(
                "{name} ended {} instead of {phase}: {s:#}\n{}",
                s["phase"],
                self.describe()
            ),
            Err((Some(e), s)) => panic!("{e}: {s:#}\n{}", self.describe()),
        }
    }

    /// The pods, wide, and the tail of every kvmotion container's log: what
    /// a failure message needs.
    pub fn describe(&self) -> String {
        let pods = kubectl(&["get", "pods", "-n", NAMESPACE, "-o", "wide"]);
        let mut text = format!("--- pods ---\n{}{}", pods.stdout, pods.stderr);
        for component in ["controller", "agent"] {
            let selector = format!("app.kubernetes.io/component={component}");
            let logs = kubectl(&[
                "logs", "-n", NAMESPACE, "-l", &selector, "--prefix", "--tail", "40",
            ]);
            text.push_str(&format!(
                "--- {component} logs ---\n{}{}",
                logs.stdout, logs.stderr
            ));
        }
        text
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        uninstall();
    }
}

/// `helm uninstall` of the release, then a wait until none of its pods is
/// left (helm does not wait for pods; the next test needs the nodes' ports).
fn uninstall() {
    let _ = control_plane().run(
        "helm",
        &[
            "uninstall",
            "kvmotion",
            "-n",
            NAMESPACE,
            "--wait",
            "--timeout",
            "120s",
        ],
        None,
    );
    for _ in 0..300 {
        let out = kubectl(&["get", "pods", "-n", NAMESPACE, "-o", "name"]);
        if out.ok && out.stdout.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pods of kvmotion's `component` (controller or agent).
pub fn pods(component: &str) -> Vec<Value> {
    let selector = format!("app.kubernetes.io/component={component}");
    get_json(&["pods", "-n", NAMESPACE, "-l", &selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Tags image `from` as `to` in both nodes' containerd (what pushing a new
/// tag of the same build to a registry does).
pub fn retag(from: &str, to: &str) -> Output {
    script("tests/cluster/nodes.sh", &["tag", from, to])
}

/// The node a pod runs on, and whether it is Ready.
pub fn placement(pod: &Value) -> (String, bool) {
    let node = pod["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    (node, ready)
}
