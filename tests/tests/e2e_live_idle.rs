//! End to end: `kubectl apply` of a live migration moves an idle lab guest
//! to the named node through the controller and both agents.

use std::time::Duration;

use kvmotion_tests::controller::metric_value;
use kvmotion_tests::e2e::{Rig, condition, phases};
use kvmotion_tests::lab::{Guest, GuestSpec, exclusive};
use serde_json::json;

#[tokio::test]
async fn a_live_migration_moves_an_idle_guest_and_reports_every_phase() {
    let _lab = exclusive().await;
    let rig = Rig::start("e2e-live-idle", &[]).await;
    let guest = Guest::start("node-a", "e2e-idle", &GuestSpec::default()).await;
    rig.wait_inventory("node-a", "e2e-idle").await;
    let before = guest.last_beat("node-a").expect("beating");

    let name = rig.migrate(
        "live",
        json!({"vm": {"name": "e2e-idle"}, "targetNode": "node-b"}),
    );
    let status = rig
        .wait_phase(&name, "Succeeded", Duration::from_secs(120))
        .await;

    assert_eq!(
        phases(&status),
        [
            "Pending",
            "Scheduling",
            "Prechecking",
            "Preparing",
            "Migrating",
            "Finalizing",
            "Succeeded"
        ],
        "{status:#}"
    );
    let (ok, reason, message) = condition(&status, "Completed");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("True", "Succeeded"),
        "{message}"
    );
    assert!(message.starts_with("the VM runs on node-b"), "{message}");
    for c in ["Accepted", "Admitted", "Scheduled", "Prechecked"] {
        assert_eq!(condition(&status, c).0, "True", "{c}: {status:#}");
    }
    assert_eq!(status["sourceNode"], "node-a");
    assert_eq!(status["targetNode"], "node-b");
    assert_eq!(status["vm"]["uuid"].as_str(), Some(guest.uuid.as_str()));
    assert_eq!(
        status["policy"]["tuning"]["onTimeout"], "PostCopy",
        "defaults resolved into status"
    );
    let result = &status["result"];
    assert!(
        result["dataTransferredBytes"].as_u64().unwrap_or(0) > 1 << 20,
        "{result}"
    );
    assert!(
        result["downtimeMs"].as_u64().is_some_and(|d| d < 2_000),
        "{result}"
    );
    assert!(status["startTime"].is_string() && status["completionTime"].is_string());

    guest.beats_on("node-b", before).await;
    assert_eq!(
        guest.state("node-a"),
        None,
        "the source still has the domain"
    );

    rig.expect_events(
        &name,
        &[
            "Accepted",
            "Scheduling",
            "Scheduled",
            "Prechecked",
            "Migrating",
            "Finalizing",
            "Succeeded",
        ],
    )
    .await;
    let page = rig.controller.metrics_text().await;
    let metric = |series: &str| {
        metric_value(&page, series).unwrap_or_else(|| panic!("no {series} in\n{page}"))
    };
    let ok = metric(r#"kvmotion_controller_migrations_total{result="Succeeded"}"#);
    assert_eq!(ok, 1.0, "migrations metric");

    // Every phase left was timed once; the result fed the downtime and
    // bytes series with the values the status reports.
    for phase in phases(&status).iter().filter(|p| *p != "Succeeded") {
        let n = metric(&format!(
            r#"kvmotion_controller_phase_duration_seconds_count{{phase="{phase}"}}"#
        ));
        assert_eq!(n, 1.0, "{phase} timed once");
    }
    let migrating = metric(r#"kvmotion_controller_phase_duration_seconds_sum{phase="Migrating"}"#);
    assert!(migrating > 0.0 && migrating < 120.0, "{migrating}");
    assert_eq!(metric("kvmotion_controller_downtime_seconds_count"), 1.0);
    let downtime = metric("kvmotion_controller_downtime_seconds_sum");
    let reported = result["downtimeMs"].as_f64().expect("downtime") / 1000.0;
    assert!(
        (downtime - reported).abs() < 1e-6,
        "{downtime} vs {reported}"
    );
    assert_eq!(
        metric("kvmotion_controller_transferred_bytes_total"),
        result["dataTransferredBytes"].as_f64().expect("bytes")
    );
}
