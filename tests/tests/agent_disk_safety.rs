//! Prepare never writes a disk kvmotion did not create: a path another
//! domain on the target uses, or a file that already exists there, is
//! refused with `DiskPathInUse` and left byte for byte as it was; prepare
//! calls of one migration are serialized, and two migrations cannot claim
//! one path.

use kvmotion_tests::agent::{Agents, Drive};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive, exists, lab, sha256};
use serde_json::Value;

#[tokio::test]
async fn a_disk_another_domain_on_the_target_uses_is_refused_and_left_untouched() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::default().local_disk();
    let guest = Guest::start("node-a", "safe-squat", &spec).await;
    let path = guest.disk.clone().expect("disk");
    // node-b holds another VM's image at the very same path, defined there.
    lab(&[
        "exec", "node-b", "qemu-img", "create", "-q", "-f", "qcow2", &path, "64M",
    ]);
    lab(&[
        "exec",
        "node-b",
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x33 0 8M",
        &path,
    ]);
    let _squatter = Guest::define_using("node-b", "safe-squatter", &path);
    let before = sha256("node-b", &path);

    let drive =
        Drive::new("safe-squat-1", &guest, "node-a").with_copied_disk(&guest, spec.disk_mib << 20);
    let (code, body) = drive.prepare(&agents).await;

    assert_eq!(code, 409, "{body}");
    assert_eq!(body["reason"], "DiskPathInUse", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&path) && message.contains("safe-squatter"),
        "the message names the path and the domain: {message}"
    );
    assert_eq!(
        sha256("node-b", &path),
        before,
        "the other VM's disk changed"
    );
}

#[tokio::test]
async fn a_shared_disk_a_stale_definition_on_the_target_uses_is_refused() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let guest = Guest::start("node-a", "safe-shared", &GuestSpec::default()).await;
    let path = guest.disk.clone().expect("disk");
    // Starting this one would put two QEMUs on one shared disk.
    let _stale = Guest::define_using("node-b", "safe-shared-stale", &path);

    let mut drive = Drive::new("safe-shared-1", &guest, "node-a");
    drive.disks.push(kvmotion_api::agent::DiskPlan {
        target: "vda".into(),
        path: path.clone(),
        format: "qcow2".into(),
        capacity_bytes: 64 << 20,
        copy: false,
    });
    let (code, body) = drive.prepare(&agents).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["reason"], "DiskPathInUse", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("safe-shared-stale")),
        "{body}"
    );
}

#[tokio::test]
async fn an_existing_file_at_a_copied_disk_path_is_refused_and_left_untouched() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::default().local_disk();
    let guest = Guest::start("node-a", "safe-file", &spec).await;
    let path = guest.disk.clone().expect("disk");
    lab(&[
        "exec",
        "node-b",
        "sh",
        "-c",
        &format!("head -c 1048576 /dev/urandom > {path}"),
    ]);
    let before = sha256("node-b", &path);

    let drive =
        Drive::new("safe-file-1", &guest, "node-a").with_copied_disk(&guest, spec.disk_mib << 20);
    let (code, body) = drive.prepare(&agents).await;

    assert_eq!(code, 409, "{body}");
    assert_eq!(body["reason"], "DiskPathInUse", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the file exists")),
        "{body}"
    );
    assert_eq!(sha256("node-b", &path), before, "the file changed");
    // Cleanup of the refused migration removes nothing.
    let (code, cleaned) = drive.cleanup(&agents).await;
    assert_eq!(code, 200, "{cleaned}");
    assert_eq!(
        sha256("node-b", &path),
        before,
        "cleanup removed a foreign file"
    );
}

#[tokio::test]
async fn concurrent_prepares_create_an_image_once_and_two_migrations_cannot_share_a_path() {
    let _lab = exclusive().await;
    let agents = Agents::start(module_path!(), line!()).await;
    let spec = GuestSpec::default().local_disk();
    let guest = Guest::start("node-a", "safe-race", &spec).await;
    let path = guest.disk.clone().expect("disk");

    let same =
        Drive::new("safe-race-1", &guest, "node-a").with_copied_disk(&guest, spec.disk_mib << 20);
    let rival =
        Drive::new("safe-race-2", &guest, "node-a").with_copied_disk(&guest, spec.disk_mib << 20);
    // Two retries of one prepare race each other: one creates the image,
    // the other waits for it and gets the same answer.
    let (a, b) = tokio::join!(same.prepare(&agents), same.prepare(&agents));
    assert_eq!(
        (a.0, b.0),
        (200, 200),
        "a retry gets the first answer: {a:?} {b:?}"
    );
    assert_eq!(a.1, b.1, "both answers are the same preparation");
    assert_eq!(a.1["createdDisks"][0], path.as_str(), "{}", a.1);
    // A rival migration racing a third retry must not share the image the
    // first one created, and the retry still gets its answer.
    let (c, d) = tokio::join!(rival.prepare(&agents), same.prepare(&agents));
    assert_eq!(c.0, 409, "the rival must not share the image: {:?}", c.1);
    assert_eq!(c.1["reason"], "DiskPathInUse");
    assert_eq!(d, a, "the retry beside the rival gets the first answer");
    // The image is the one prepare created: empty, of the right size.
    let info = lab(&["exec", "node-b", "qemu-img", "info", "--output=json", &path]);
    let info: Value = serde_json::from_str(&info).expect("qemu-img info");
    assert_eq!(info["virtual-size"], spec.disk_mib << 20, "{info}");

    let (code, cleaned) = same.cleanup(&agents).await;
    assert_eq!(code, 200, "{cleaned}");
    assert_eq!(cleaned["removedDisks"][0], path.as_str(), "{cleaned}");
    assert!(!exists("node-b", &path), "cleanup left the image behind");
}
