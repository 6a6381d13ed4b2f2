//! End to end: a live migration in post-copy whose link is cut shows the
//! split in status (`progress.mode: PostCopyPaused`, `LinkHealthy=False`
//! with reason `PostCopyLinkLost`) for as long as the cut lasts; once the
//! link is back the move finishes (the source agent resumes it, or QEMU's
//! own stream does), Succeeds with the recovery counted, and the guest runs
//! on the target in the same boot.

use std::time::Duration;

use kvmotion_tests::e2e::{Rig, condition, held_back_spec};
use kvmotion_tests::eventually;
use kvmotion_tests::lab::{Cut, Guest, GuestSpec, Shaped, exclusive};

#[tokio::test]
async fn a_post_copy_split_mid_migration_is_shown_in_status_then_recovered() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-pc-recovery", &[]).await;
    // Slow enough that post-copy lasts while the test breaks it.
    let slow = Shaped::at(40);
    let guest = Guest::start("node-a", "e2e-pcr", &GuestSpec::hot()).await;
    rig.wait_inventory("node-a", "e2e-pcr").await;
    let before = guest.last_beat("node-a").expect("beating");

    let mut spec = held_back_spec("e2e-pcr");
    spec["overrides"]["postCopy"] = true.into();
    let name = rig.migrate("pcr", spec);
    rig.wait_moving(&name).await;
    rig.scope.force_complete(&name);
    eventually(Duration::from_secs(60), "post-copy", || async {
        let s = rig.status(&name).await?;
        (s["progress"]["mode"] == "PostCopy").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));

    let cut = Cut::now();
    // libvirt's keepalive between the daemons notices the dead link.
    let split = eventually(Duration::from_secs(120), "the split in status", || async {
        let s = rig.status(&name).await?;
        (s["progress"]["mode"] == "PostCopyPaused").then_some(s)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    assert_eq!(split["phase"], "Migrating", "{split:#}");
    let (ok, reason, message) = condition(&split, "LinkHealthy");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "PostCopyLinkLost"),
        "{split:#}"
    );
    assert!(
        message.contains("split between node-a and node-b"),
        "{message}"
    );
    // The cap was there to catch the split; the rest of the memory need
    // not crawl across once the link returns.
    drop(slow);
    drop(cut);

    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(300))
        .await;
    assert!(
        status["result"]["postCopyRecoveries"].as_u64() >= Some(1),
        "{status:#}"
    );
    let (ok, reason, _) = condition(&status, "LinkHealthy");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("True", "PostCopyRecovered"),
        "{status:#}"
    );
    assert_eq!(condition(&status, "Completed").1, "Succeeded");
    guest.moved_whole_to("node-b", before).await;
    rig.expect_events(&name, &["Succeeded"]).await;
}
