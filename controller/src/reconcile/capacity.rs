//! The concurrency gate: whether a pending migration may start now, under
//! its policy's limits per cluster, outbound per node and inbound per node.
//! Migrations start in queue order (an evacuation's first, then by
//! creation): waiting migrations ahead that need the same capacity are
//! counted before this one. Pure.

use std::sync::Arc;

use kvmotion_api::policy::ConcurrencyLimits;

use super::world::Flight;

/// Whether `me` may start. `Err` says what is full, for the condition.
pub fn admit(
    me: &Flight,
    others: &[Arc<Flight>],
    limits: &ConcurrencyLimits,
) -> Result<(), String> {
    let ahead = |f: &&Flight| f.is_waiting() && f.queue_key() < me.queue_key();
    let relevant: Vec<&Flight> = others
        .iter()
        .map(|f| &**f)
        .filter(|f| f.uid != me.uid)
        .filter(|f| f.is_active() || ahead(f))
        .collect();
    let count = |pred: &dyn Fn(&Flight) -> bool| -> (u32, u32) {
        let active = relevant.iter().filter(|f| f.is_active() && pred(f)).count();
        let waiting = relevant
            .iter()
            .filter(|f| !f.is_active() && pred(f))
            .count();
        (active as u32, waiting as u32)
    };
    // The message names the limit but not the counts: a waiting
    // migration's status changes only when what it waits for does, not
    // with every start and end elsewhere in the cluster.
    let check = |what: String, (active, waiting): (u32, u32), limit: u32| {
        if active + waiting < limit {
            Ok(())
        } else {
            Err(format!(
                "{what} ({limit}) is taken by running migrations and older waiting ones"
            ))
        }
    };
    check("cluster limit".into(), count(&|_| true), limits.per_cluster)?;
    if let Some(src) = &me.source {
        check(
            format!("outbound limit of {src}"),
            count(&|f| f.source.as_ref() == Some(src)),
            limits.outbound_per_node,
        )?;
    }
    if let Some(dst) = &me.target {
        check(
            format!("inbound limit of {dst}"),
            count(&|f| f.target.as_ref() == Some(dst)),
            limits.inbound_per_node,
        )?;
    }
    Ok(())
}

/// How many of the oldest waiting migrations a freed slot should wake.
/// Admission is in creation order and every older waiting migration counts
/// against the cluster limit, so only the first `per_cluster - active` of
/// the queue can start; one more covers a cache that has not yet seen the
/// end that freed the slot. At least one, at most `batch`.
pub fn wake_count(per_cluster: u32, active: usize, batch: usize) -> usize {
    (per_cluster as usize)
        .saturating_sub(active)
        .saturating_add(1)
        .clamp(1, batch.max(1))
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use kvmotion_api::Phase;

    fn f(name: &str, created: i64, phase: Option<Phase>, src: &str, dst: &str) -> Flight {
        Flight {
            uid: name.into(),
            name: name.into(),
            created: Timestamp::from_second(created).unwrap(),
            phase,
            vm_name: Some(format!("vm-{name}")),
            vm_uuid: None,
            source: Some(src.into()),
            target: Some(dst.into()),
            memory_bytes: None,
            evacuation: false,
        }
    }

    fn limits(cluster: u32, out: u32, inb: u32) -> ConcurrencyLimits {
        ConcurrencyLimits {
            per_cluster: cluster,
            outbound_per_node: out,
            inbound_per_node: inb,
        }
    }

    #[test]
    fn a_freed_slot_wakes_only_the_head_of_the_queue_that_can_start() {
        // (per_cluster, active, batch, woken)
        let cases = [
            (50, 49, 50, 2),
            (50, 50, 50, 1),
            (50, 60, 50, 1),
            (5, 0, 50, 6),
            (500, 0, 50, 50),
            (1, 0, 0, 1),
        ];
        for (limit, active, batch, want) in cases {
            assert_eq!(
                wake_count(limit, active, batch),
                want,
                "limit {limit}, active {active}, batch {batch}"
            );
        }
    }

    #[test]
    fn the_gate_counts_active_and_older_waiting_migrations_per_limit() {
        let me = f("me", 100, Some(Phase::Pending), "a", "b");
        let run = Some(Phase::Migrating);
        let wait = Some(Phase::Pending);
        // (case, others, limits, admitted?)
        let cases: Vec<(&str, Vec<Flight>, ConcurrencyLimits, Result<(), &str>)> = vec![
            ("empty cluster", vec![], limits(1, 1, 1), Ok(())),
            (
                "cluster full",
                vec![f("x", 1, run, "c", "d")],
                limits(1, 5, 5),
                Err("cluster limit (1) is taken by running migrations and older waiting ones"),
            ),
            (
                "older waiting counts ahead",
                vec![f("x", 50, wait, "c", "d")],
                limits(1, 5, 5),
                Err("cluster limit (1) is taken by running migrations and older waiting ones"),
            ),
            (
                "younger waiting does not",
                vec![f("x", 150, wait, "c", "d")],
                limits(1, 5, 5),
                Ok(()),
            ),
            (
                "outbound of the source",
                vec![f("x", 1, run, "a", "d")],
                limits(5, 1, 5),
                Err(
                    "outbound limit of a (1) is taken by running migrations and older waiting ones",
                ),
            ),
            (
                "inbound of the target",
                vec![f("x", 1, run, "c", "b")],
                limits(5, 5, 1),
                Err("inbound limit of b (1) is taken by running migrations and older waiting ones"),
            ),
            (
                "other nodes are free",
                vec![f("x", 1, run, "c", "d")],
                limits(5, 1, 1),
                Ok(()),
            ),
            (
                "finished ones free their slot",
                vec![
                    f("x", 1, Some(Phase::Succeeded), "a", "b"),
                    f("y", 1, Some(Phase::Failed), "a", "b"),
                ],
                limits(1, 1, 1),
                Ok(()),
            ),
            (
                "itself is not counted",
                vec![f("me", 100, run, "a", "b")],
                limits(1, 1, 1),
                Ok(()),
            ),
        ];
        for (name, others, l, want) in cases {
            let others: Vec<Arc<Flight>> = others.into_iter().map(Arc::new).collect();
            let got = admit(&me, &others, &l);
            assert_eq!(
                got.as_ref().map_err(|e| e.as_str()),
                want.as_ref().map_err(|e| *e),
                "{name}"
            );
        }
    }

    #[test]
    fn same_age_waiting_migrations_queue_by_name() {
        let me = f("b", 100, None, "a", "b");
        let twin = f("a", 100, None, "c", "d");
        assert!(admit(&me, &[Arc::new(twin.clone())], &limits(1, 5, 5)).is_err());
        assert!(admit(&twin, &[Arc::new(me)], &limits(1, 5, 5)).is_ok());
    }

    #[test]
    fn an_evacuations_migration_waits_ahead_of_older_user_migrations() {
        let user = f("user", 100, None, "x", "y");
        let mut evac = f("evac", 200, None, "a", "b");
        evac.evacuation = true;
        let one = limits(1, 5, 5);
        assert!(admit(&evac, &[Arc::new(user.clone())], &one).is_ok());
        assert!(admit(&user, &[Arc::new(evac.clone())], &one).is_err());
        // Running migrations keep their capacity: priority is for the queue.
        let running = f("running", 50, Some(Phase::Migrating), "x", "y");
        assert!(admit(&evac, &[Arc::new(running)], &one).is_err());
    }
}
