//! Many migrations at once against a fleet of fake agents: every one ends
//! Succeeded with its guest on the target, the limits hold as the agents
//! see them, and each migration starts exactly one job.

use std::time::Duration;

use kvmotion_tests::scale::{ScaleSpec, run};

#[tokio::test]
async fn sixty_migrations_over_six_nodes_all_succeed_within_the_limits() {
    let spec = ScaleSpec {
        // Well above the default, to prove capacity stays atomic when many
        // migrations are reconciled at once.
        controller_args: vec!["--max-concurrent-reconciles=16".into()],
        migrations: 60,
        nodes: 6,
        limits: (5, 2, 2),
        job: Duration::from_millis(800),
        deadline: Duration::from_secs(240),
    };
    let r = run("scale-60", &spec).await;
    eprintln!("{r:#?}");
    assert_eq!(r.succeeded, 60, "not succeeded: {:?}", r.not_succeeded);
    assert_eq!(r.on_target, 60, "every guest runs on its target only");
    assert_eq!(r.peaks.started, 60, "one job per migration: {:?}", r.peaks);
    assert_eq!(r.peaks.repeated_starts, 0, "{:?}", r.peaks);
    assert!(r.peaks.total <= 5, "cluster limit exceeded: {:?}", r.peaks);
    assert!(
        r.peaks.outbound <= 2,
        "outbound limit exceeded: {:?}",
        r.peaks
    );
    assert!(
        r.peaks.inbound <= 2,
        "inbound limit exceeded: {:?}",
        r.peaks
    );
    // Not serialized either: the cluster limit is actually used.
    assert!(r.peaks.total >= 4, "too little concurrency: {:?}", r.peaks);
    assert!(r.waited > 0, "some migrations must have queued");
    // Each is written at least as Preparing (reached in one write from
    // the caches), Migrating, Finalizing and Succeeded.
    assert!(
        r.status_writes >= 60.0 * 4.0,
        "status writes: {}",
        r.status_writes
    );
}
