//! Events: one for every phase transition, failure and settlement, derived
//! from the status before and after a reconcile (pure), then published.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use kvmotion_api::{ConditionType as C, Phase, VirtualMachineMigrationStatus as Status};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tracing::warn;

use super::conditions;
use crate::metrics::Metrics;

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// For a person.
    pub message: String,
}

fn changed(old: &Status, new: &Status, t: C) -> Option<(bool, String, String)> {
    let n = conditions::get(&new.conditions, t)?;
    let o = conditions::get(&old.conditions, t);
    let same = o.is_some_and(|o| o.status == n.status && o.reason == n.reason);
    (!same).then(|| (n.status == "True", n.reason.clone(), n.message.clone()))
}

fn message_of(s: &Status, t: C) -> String {
    conditions::get(&s.conditions, t)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The events that the change from `old` to `new` deserves.
pub fn notes(old: &Status, new: &Status) -> Vec<Note> {
    let mut out = Vec::new();
    if let Some((false, reason, message)) = changed(old, new, C::Admitted) {
        out.push(Note {
            warning: false,
            reason,
            message,
        });
    }
    if let Some((false, reason, message)) = changed(old, new, C::Scheduled)
        && new.phase == old.phase
    {
        out.push(Note {
            warning: false,
            reason,
            message,
        });
    }
    if let Some((false, reason, message)) = changed(old, new, C::AgentsReachable)
        && !new.phase.is_some_and(Phase::is_terminal)
    {
        out.push(Note {
            warning: true,
            reason,
            message,
        });
    }
    if new.phase != old.phase
        && let Some(phase) = new.phase
    {
        let note = match phase {
            Phase::Pending => Note {
                warning: false,
                reason: "Accepted".into(),
                message: message_of(new, C::Accepted),
            },
            Phase::Scheduling => Note {
                warning: false,
                reason: "Scheduling".into(),
                message: message_of(new, C::Admitted),
            },
            Phase::Prechecking => Note {
                warning: false,
                reason: "Scheduled".into(),
                message: message_of(new, C::Scheduled),
            },
            Phase::Preparing => Note {
                warning: false,
                reason: "Prechecked".into(),
                message: message_of(new, C::Prechecked),
            },
            Phase::Migrating => Note {
                warning: false,
                reason: "Migrating".into(),
                message: format!(
                    "the job started on {} toward {}",
                    new.source_node.as_deref().unwrap_or("?"),
                    new.target_node.as_deref().unwrap_or("?")
                ),
            },
            Phase::Finalizing => Note {
                warning: false,
                reason: "Finalizing".into(),
                message: "the job completed; verifying the VM on the target".into(),
            },
            Phase::Succeeded | Phase::Failed | Phase::Cancelled => {
                let c = conditions::get(&new.conditions, C::Completed);
                Note {
                    warning: phase == Phase::Failed,
                    reason: c.map_or(phase.as_str().to_string(), |c| c.reason.clone()),
                    message: c.map(|c| c.message.clone()).unwrap_or_default(),
                }
            }
        };
        out.push(note);
    }
    if let Some((ok, reason, message)) = changed(old, new, C::Settled)
        && reason != kvmotion_api::ConditionReason::SettlePending.as_str()
    {
        out.push(Note {
            warning: !ok,
            reason,
            message,
        });
    }
    out
}

/// Publishes `notes` about the migration `reference`; failures are logged,
/// never fatal (events are best effort). Returns how many failed.
async fn publish(recorder: &Recorder, reference: &ObjectReference, notes: Vec<Note>) -> u64 {
    let mut failed = 0;
    for n in notes {
        let ev = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason,
            note: Some(clip(&n.message, NOTE_MAX_BYTES).to_string()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, reference).await {
            warn!(error = %e, "could not publish an event");
            failed += 1;
        }
    }
    failed
}

/// The API server refuses an Event whose note is longer than 1 KiB.
const NOTE_MAX_BYTES: usize = 1024;

/// The longest prefix of `s` within `max` bytes that ends on a character.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Notes about one migration, queued for publishing.
type Batch = (ObjectReference, Vec<Note>);

/// Publishes Events off the reconcile path: a reconcile hands its notes
/// over and returns, so a slow API server delays Events, not migrations.
/// A migration's notes always go to the same worker, which keeps them in
/// order; when a worker's queue is full the notes are dropped and counted,
/// as losing an Event is better than stalling reconciles behind it.
#[derive(Clone)]
pub struct EventSink {
    workers: Vec<mpsc::Sender<Batch>>,
    metrics: Arc<Metrics>,
    /// Batches queued or being published.
    pending: Arc<AtomicUsize>,
    /// When dropping was last logged: once per interval is enough to tell.
    last_drop_warning: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Dropped Events are logged at most this often; the counter has them all.
const DROP_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl EventSink {
    /// Starts `workers` publishing tasks, each with a queue of `capacity`
    /// batches; they stop once every clone of the sink is dropped.
    pub fn start(
        recorder: Recorder,
        metrics: Arc<Metrics>,
        workers: usize,
        capacity: usize,
    ) -> EventSink {
        let pending = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Batch>(capacity.max(1));
                let (recorder, pending) = (recorder.clone(), pending.clone());
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    while let Some((reference, notes)) = rx.recv().await {
                        let failed = publish(&recorder, &reference, notes).await;
                        if failed > 0 {
                            metrics.events_failed(failed);
                        }
                        pending.fetch_sub(1, Ordering::SeqCst);
                    }
                });
                tx
            })
            .collect();
        EventSink {
            workers,
            metrics,
            pending,
            last_drop_warning: Default::default(),
        }
    }

    /// Waits until every queued Event is published, at most `within`;
    /// false when some were still waiting. A stopping controller calls it
    /// so the Events of its last status writes are not lost.
    pub async fn flush(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.pending.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Queues `notes` about `reference` without waiting.
    pub fn send(&self, reference: ObjectReference, notes: Vec<Note>) {
        if notes.is_empty() {
            return;
        }
        let key = reference.uid.as_deref().unwrap_or_default();
        let worker = &self.workers[shard(key, self.workers.len())];
        let count = notes.len() as u64;
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = worker.try_send((reference, notes)) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.metrics.events_dropped(count);
            let now = std::time::Instant::now();
            let due = self.last_drop_warning.lock().is_ok_and(|mut last| {
                let due = last.is_none_or(|t| now.duration_since(t) >= DROP_WARNING_INTERVAL);
                if due {
                    *last = Some(now);
                }
                due
            });
            if due {
                warn!(error = %e, dropped = count, "events dropped (logged once per 10 s; kvmotion_controller_events_dropped_total counts them)");
            }
        }
    }
}

/// The worker of the object with UID `uid`, among `n`.
fn shard(uid: &str, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(uid, &mut h);
    (std::hash::Hasher::finish(&h) % n as u64) as usize
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use crate::reconcile::conditions::set;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t() -> Time {
        Time(jiff::Timestamp::UNIX_EPOCH)
    }

    fn status(phase: Option<Phase>, conds: &[(C, bool, &str)]) -> Status {
        let mut s = Status {
            phase,
            ..Default::default()
        };
        for (ty, ok, reason) in conds {
            set(
                &mut s.conditions,
                *ty,
                *ok,
                reason,
                format!("{reason} message"),
                1,
                t(),
            );
        }
        s
    }

    #[test]
    fn each_transition_and_failure_gets_one_event() {
        let empty = Status::default();
        let pending = status(Some(Phase::Pending), &[(C::Accepted, true, "Accepted")]);
        let waiting = status(
            Some(Phase::Pending),
            &[
                (C::Accepted, true, "Accepted"),
                (C::Admitted, false, "WaitingForCapacity"),
            ],
        );
        let failed = status(Some(Phase::Failed), &[(C::Completed, false, "VMNotFound")]);
        let settled = status(
            Some(Phase::Failed),
            &[
                (C::Completed, false, "VMNotFound"),
                (C::Settled, true, "VMLocated"),
            ],
        );
        let cases: Vec<(&str, &Status, &Status, Vec<(bool, &str)>)> = vec![
            ("accepted", &empty, &pending, vec![(false, "Accepted")]),
            (
                "starts waiting",
                &pending,
                &waiting,
                vec![(false, "WaitingForCapacity")],
            ),
            ("still waiting", &waiting, &waiting, vec![]),
            ("fails", &pending, &failed, vec![(true, "VMNotFound")]),
            ("settles", &failed, &settled, vec![(false, "VMLocated")]),
        ];
        for (name, old, new, want) in cases {
            let got: Vec<(bool, String)> = notes(old, new)
                .into_iter()
                .map(|n| (n.warning, n.reason))
                .collect();
            let want: Vec<(bool, String)> =
                want.into_iter().map(|(w, r)| (w, r.to_string())).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    fn note(reason: &str) -> Note {
        Note {
            warning: false,
            reason: reason.into(),
            message: reason.into(),
        }
    }

    #[test]
    fn notes_are_clipped_to_the_api_limit_in_bytes_on_a_character_boundary() {
        assert_eq!(clip("short", 1024), "short");
        let long = "é".repeat(600); // 1,200 bytes
        let clipped = clip(&long, NOTE_MAX_BYTES);
        assert_eq!(clipped.len(), 1024);
        assert_eq!(clip("aé", 2), "a", "never splits a character");
    }

    /// Nothing listens on port 1: every publish there fails at once.
    const NOBODY: &str = "http://127.0.0.1:1";

    fn recorder_at(url: &str) -> Recorder {
        let config = kube::Config::new(url.parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let reporter = kube::runtime::events::Reporter {
            controller: "test".into(),
            instance: None,
        };
        Recorder::new(client, reporter)
    }

    fn reference() -> ObjectReference {
        ObjectReference {
            uid: Some("u".into()),
            ..Default::default()
        }
    }

    fn counter(metrics: &Metrics, name: &str) -> Option<u64> {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_migration_always_goes_to_the_same_worker() {
        for uid in ["", "a", "0c6f3e0e-5b7e-4a8e-9a53-1d1b2c3d4e5f"] {
            for n in [1, 2, 4, 7] {
                let w = shard(uid, n);
                assert!(w < n);
                assert_eq!(w, shard(uid, n), "{uid} {n}");
            }
        }
        let used: std::collections::HashSet<usize> =
            (0..64).map(|i| shard(&format!("uid-{i}"), 4)).collect();
        assert_eq!(used.len(), 4, "UIDs spread over every worker");
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_and_counts_them_instead_of_waiting() {
        // An API server that accepts connections and never answers: the
        // one worker stays busy with the first batch.
        let stuck = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", stuck.local_addr().expect("addr"));
        let metrics = Arc::new(Metrics::default());
        let sink = EventSink::start(recorder_at(&url), metrics.clone(), 1, 1);
        let reference = reference();
        let started = std::time::Instant::now();
        for i in 0..5 {
            sink.send(reference.clone(), vec![note(&format!("R{i}"))]);
            tokio::task::yield_now().await;
        }
        sink.send(reference.clone(), vec![]);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // One batch in the worker at most, one queued: three or more lost.
        let dropped = counter(&metrics, "kvmotion_controller_events_dropped_total")
            .expect("the dropped counter");
        assert!((3..=4).contains(&dropped), "{dropped}");
        // What was queued cannot go out: flushing gives up at its deadline.
        let waited = std::time::Instant::now();
        assert!(!sink.flush(std::time::Duration::from_millis(200)).await);
        assert!(waited.elapsed() >= std::time::Duration::from_millis(200));
    }

    #[tokio::test]
    async fn events_the_api_server_refuses_are_counted() {
        let metrics = Arc::new(Metrics::default());
        let sink = EventSink::start(recorder_at(NOBODY), metrics.clone(), 2, 4);
        sink.send(reference(), vec![note("A"), note("B")]);
        assert!(sink.flush(std::time::Duration::from_secs(10)).await);
        let failed = counter(&metrics, "kvmotion_controller_events_failed_total");
        assert_eq!(failed, Some(2));
    }

    #[tokio::test]
    async fn flushing_with_nothing_queued_returns_at_once() {
        let sink = EventSink::start(recorder_at(NOBODY), Arc::new(Metrics::default()), 2, 4);
        assert!(sink.flush(std::time::Duration::ZERO).await);
    }
}
