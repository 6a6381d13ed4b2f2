//! The images `make images` builds (`tests/images/build.sh`): both OCI
//! archives exist for this tree's commit, stay within their size budgets,
//! carry the user, entrypoint and labels their Containerfiles give, and
//! their binaries run from the image's own root filesystem.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(kvmotion_tests::repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A JSON blob of the OCI layout `dir` by its `sha256:` digest.
fn blob(dir: &Path, digest: &str) -> Value {
    let hex = digest.trim_start_matches("sha256:");
    let text = std::fs::read_to_string(dir.join("blobs/sha256").join(hex)).expect("blob");
    serde_json::from_str(&text).expect("blob JSON")
}

/// An unpacked image: its OCI config and its root filesystem, removed
/// on drop.
struct Unpacked {
    config: Value,
    rootfs: PathBuf,
    dir: PathBuf,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unpack(archive: &Path, reference: &str) -> Unpacked {
    let dir = std::env::temp_dir().join(format!(
        "kvmotion-image-{}-{}",
        std::process::id(),
        reference.replace(['/', ':'], "_")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let layout = dir.join("layout");
    std::fs::create_dir(&layout).expect("layout dir");
    run(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            layout.to_str().unwrap(),
        ],
    );
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(layout.join("index.json")).expect("index.json"),
    )
    .expect("index JSON");
    let manifest = blob(
        &layout,
        index["manifests"][0]["digest"].as_str().expect("digest"),
    );
    let config = blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("config"),
    );
    let bundle = dir.join("bundle");
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{reference}", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    Unpacked {
        config,
        rootfs: bundle.join("rootfs"),
        dir,
    }
}

/// Runs `argv` inside `rootfs` as `user` (uid:gid); returns its output.
fn in_image(rootfs: &Path, user: &str, argv: &[&str]) -> String {
    let mut args = vec![format!("--userspec={user}"), rootfs.display().to_string()];
    args.extend(argv.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("chroot", &args)
}

#[test]
fn make_images_builds_both_images_small_runnable_and_labelled_with_the_commit() {
    let root = kvmotion_tests::repo_root();
    // Built once per tree and shared with the cluster tests.
    kvmotion_tests::cluster::images();
    let report: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(root.join("target/images/images.json")).expect("images.json"),
    )
    .expect("report JSON");
    let commit = run("git", &["rev-parse", "--short=12", "HEAD"]);
    let commit = commit.trim();

    // (image, compressed budget MiB, user)
    let cases = [
        ("kvmotion-controller", 40, "65532:65532"),
        ("kvmotion-agent", 200, "0:0"),
    ];
    for (name, budget_mib, user) in cases {
        let entry = report
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {report:?}"));
        let reference = entry["ref"].as_str().expect("ref");
        assert!(
            reference.contains(commit),
            "{reference} lacks commit {commit}"
        );
        let compressed = entry["compressedBytes"].as_u64().expect("size");
        assert!(
            compressed > 1 << 20 && compressed <= budget_mib << 20,
            "{name}: {compressed} bytes, budget {budget_mib} MiB"
        );

        let image = unpack(
            &root.join(entry["archive"].as_str().expect("archive")),
            reference,
        );
        let config = &image.config["config"];
        assert_eq!(config["User"], user, "{name}: {config}");
        assert_eq!(
            config["Entrypoint"][0],
            format!("/usr/local/bin/{name}"),
            "{name}: {config}"
        );
        let revision = config["Labels"]["org.opencontainers.image.revision"]
            .as_str()
            .unwrap_or_default();
        assert!(revision.starts_with(commit), "{name}: {config}");
        // Its own libraries load from the image: it runs there.
        let binary = format!("/usr/local/bin/{name}");
        let help = in_image(&image.rootfs, user, &[&binary, "--help"]);
        assert!(help.contains("Usage:"), "{name} --help said: {help}");
        let bundle = image.rootfs.join("etc/ssl/certs/ca-certificates.crt");
        let certs = std::fs::read_to_string(&bundle).unwrap_or_default();
        assert!(
            certs.matches("BEGIN CERTIFICATE").count() > 100,
            "{name}: no CA bundle at {}",
            bundle.display()
        );
        if name == "kvmotion-agent" {
            let qemu_img = in_image(&image.rootfs, user, &["/usr/bin/qemu-img", "--version"]);
            assert!(qemu_img.contains("qemu-img version"), "{qemu_img}");
        }
    }
}
