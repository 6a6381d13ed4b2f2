//! The concurrency gate: whether a pending migration may start now, under
//! its policy's limits per cluster, outbound per node and inbound per node.
//! Waiting migrations are admitted in queue order (an evacuation's first,
//! then by creation): each takes the capacity it fits in before any younger
//! one is considered. One that does not fit holds nothing, so a queue head
//! whose source node is full does not keep the rest of the cluster idle.
//! Pure.

use std::collections::HashMap;
use std::sync::Arc;

use kvmotion_api::policy::ConcurrencyLimits;

use super::world::Flight;

/// The capacity taken so far: by running migrations, then by the waiting
/// ones admitted ahead in the queue.
#[derive(Default)]
struct Load<'a> {
    total: u32,
    outbound: HashMap<&'a str, u32>,
    inbound: HashMap<&'a str, u32>,
}

impl<'a> Load<'a> {
    fn take(&mut self, f: &'a Flight) {
        self.total += 1;
        if let Some(src) = &f.source {
            *self.outbound.entry(src).or_default() += 1;
        }
        if let Some(dst) = &f.target {
            *self.inbound.entry(dst).or_default() += 1;
        }
    }

    /// Whether `f` fits; `Err` names the first limit that is full.
    fn fits(&self, f: &Flight, limits: &ConcurrencyLimits) -> Result<(), String> {
        // The message names the limit but not the counts: a waiting
        // migration's status changes only when what it waits for does, not
        // with every start and end elsewhere in the cluster.
        let full = |what: String, limit: u32| {
            format!("{what} ({limit}) is taken by running migrations and older waiting ones")
        };
        if self.total >= limits.per_cluster {
            return Err(full("cluster limit".into(), limits.per_cluster));
        }
        if let Some(src) = &f.source
            && self.outbound.get(src.as_str()).copied().unwrap_or(0) >= limits.outbound_per_node
        {
            return Err(full(
                format!("outbound limit of {src}"),
                limits.outbound_per_node,
            ));
        }
        if let Some(dst) = &f.target
            && self.inbound.get(dst.as_str()).copied().unwrap_or(0) >= limits.inbound_per_node
        {
            return Err(full(
                format!("inbound limit of {dst}"),
                limits.inbound_per_node,
            ));
        }
        Ok(())
    }
}

/// Walks the queue: `waiting` in queue order against the capacity `flights`
/// that are active already hold, calling `seen` with each waiting one and
/// whether it fits. Stops early when `seen` returns false.
fn walk<'a>(
    active: impl Iterator<Item = &'a Flight>,
    mut waiting: Vec<&'a Flight>,
    limits: &ConcurrencyLimits,
    mut seen: impl FnMut(&'a Flight, Result<(), String>) -> bool,
) {
    let mut load = Load::default();
    for f in active {
        load.take(f);
    }
    waiting.sort_by(|a, b| a.queue_key().cmp(&b.queue_key()));
    for f in waiting {
        let fits = load.fits(f, limits);
        if fits.is_ok() {
            load.take(f);
        }
        if !seen(f, fits) {
            return;
        }
    }
}

/// Whether `me` may start. `Err` says what is full, for the condition.
pub fn admit(
    me: &Flight,
    others: &[Arc<Flight>],
    limits: &ConcurrencyLimits,
) -> Result<(), String> {
    let others = || others.iter().map(|f| &**f).filter(|f| f.uid != me.uid);
    let waiting: Vec<&Flight> = others()
        .filter(|f| f.is_waiting())
        .chain(std::iter::once(me))
        .collect();
    let mut mine = Ok(());
    walk(
        others().filter(|f| f.is_active()),
        waiting,
        limits,
        |f, fits| {
            if f.uid == me.uid {
                mine = fits;
                return false;
            }
            true
        },
    );
    mine
}

/// The waiting migrations that may start now, in queue order, at most
/// `batch`: those a freed slot should wake.
pub fn startable<'a>(
    flights: &'a [Arc<Flight>],
    limits: &ConcurrencyLimits,
    batch: usize,
) -> Vec<&'a Flight> {
    let flights = || flights.iter().map(|f| &**f);
    let mut out = Vec::new();
    walk(
        flights().filter(|f| f.is_active()),
        flights().filter(|f| f.is_waiting()).collect(),
        limits,
        |f, fits| {
            if fits.is_ok() {
                out.push(f);
            }
            out.len() < batch
        },
    );
    out
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
                "an older waiting one held at its own full source takes nothing",
                vec![f("y", 1, run, "c", "d"), f("x", 50, wait, "c", "e")],
                limits(2, 1, 5),
                Ok(()),
            ),
            (
                "an older waiting one held at its full target takes nothing",
                vec![f("y", 1, run, "c", "d"), f("x", 50, wait, "e", "d")],
                limits(2, 5, 1),
                Ok(()),
            ),
            (
                "older waiting ones that fit fill the source first",
                vec![f("x", 50, wait, "a", "e")],
                limits(5, 1, 5),
                Err(
                    "outbound limit of a (1) is taken by running migrations and older waiting ones",
                ),
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
    fn a_freed_slot_wakes_the_waiting_migrations_that_fit_in_queue_order() {
        let run = Some(Phase::Migrating);
        let wait = Some(Phase::Pending);
        let fleet = vec![
            f("r1", 1, run, "a", "x"),
            f("w1", 10, wait, "a", "y"),
            f("w2", 20, wait, "b", "x"),
            f("w3", 30, wait, "b", "y"),
            f("w4", 40, None, "c", "z"),
            f("w5", 50, wait, "d", "z"),
        ];
        let fleet: Vec<Arc<Flight>> = fleet.into_iter().map(Arc::new).collect();
        // (limits, batch, woken)
        let cases = [
            (limits(10, 1, 1), 50, vec!["w3", "w4"]),
            (limits(10, 2, 1), 50, vec!["w1", "w4"]),
            (limits(3, 1, 1), 50, vec!["w3", "w4"]),
            (limits(2, 1, 1), 50, vec!["w3"]),
            (limits(1, 1, 1), 50, vec![]),
            (limits(10, 5, 5), 2, vec!["w1", "w2"]),
        ];
        for (l, batch, want) in cases {
            let got: Vec<&str> = startable(&fleet, &l, batch)
                .iter()
                .map(|f| f.name.as_str())
                .collect();
            assert_eq!(got, want, "{l:?}, batch {batch}");
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
