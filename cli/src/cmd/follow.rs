//! Following one migration through a watch until it ends or is gone.

use std::pin::pin;

use futures::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kvmotion_api::{Phase, VirtualMachineMigration};

use crate::error::Error;
use crate::exit::Outcome;
use crate::format::phase;
use crate::format::progress::progress_line;
use crate::format::summary;
use crate::output::Output;

/// Watch errors in a row tolerated (the watcher backs off between them)
/// before giving up: an apiserver restart is survived, a lost permission
/// is not waited on forever.
const MAX_WATCH_ERRORS: u32 = 8;

/// When to stop following.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// At a terminal phase.
    Ended,
    /// When the object is deleted (a cancelled migration is kept until its
    /// job is stopped).
    Gone,
}

/// How watching one object ended.
pub enum Watched<K> {
    /// `seen` asked to stop at this state.
    Stopped(K),
    /// It was deleted: its last state, if it was seen at all.
    Gone(Option<K>),
}

/// Watches the object `name` of `api`, handing each state to `seen` until
/// it returns true or the object is deleted.
pub async fn watch_object<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    mut seen: impl FnMut(&K) -> Result<bool, Error>,
) -> Result<Watched<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut last = None;
    let mut listed = false;
    let mut errors = 0;
    while let Some(event) = events.next().await {
        let obj = match event {
            Err(source) => {
                errors += 1;
                if errors >= MAX_WATCH_ERRORS || refused(&source) {
                    let name = name.to_string();
                    return Err(Error::Follow { kind, name, source });
                }
                continue;
            }
            // Not a sign of health: the watcher starts every relist so,
            // including those that then fail.
            Ok(Event::Init) => {
                listed = false;
                continue;
            }
            // A (re)list without the object: it was deleted meanwhile.
            Ok(Event::InitDone) if !listed => return Ok(Watched::Gone(last)),
            Ok(Event::InitDone) => {
                errors = 0;
                continue;
            }
            Ok(Event::Delete(obj)) => return Ok(Watched::Gone(Some(obj))),
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                errors = 0;
                listed = true;
                obj
            }
        };
        if seen(&obj)? {
            return Ok(Watched::Stopped(obj));
        }
        last = Some(obj);
    }
    Err(Error::WatchEnded {
        kind,
        name: name.to_string(),
    })
}

/// Watches migration `name`, showing its progress line on every change;
/// returns its last state: terminal when it ended, else the last seen
/// before it was deleted (if any).
pub async fn watch(
    api: &Api<VirtualMachineMigration>,
    name: &str,
    until: Until,
    out: &mut Output,
) -> Result<Option<Box<VirtualMachineMigration>>, Error> {
    let watched = watch_object(api, "VirtualMachineMigration", name, |m| {
        let ended = phase(m).is_some_and(Phase::is_terminal);
        if ended && until == Until::Ended {
            return Ok(true);
        }
        // The terminal phase is reported by the caller's summary.
        if !ended {
            out.progress(&progress_line(m))?;
        }
        Ok(false)
    })
    .await?;
    Ok(match watched {
        Watched::Stopped(m) => Some(Box::new(m)),
        Watched::Gone(m) => m.map(Box::new),
    })
}

/// The API server refused the list or watch for good: no credentials, no
/// permission, or no such resource. Retrying cannot help.
fn refused(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    matches!(code, 401 | 403 | 404)
}

/// Follows migration `name` to its end and reports how it ended: the
/// result on stdout after a success, the reason on stderr otherwise.
pub async fn follow(
    api: &Api<VirtualMachineMigration>,
    name: &str,
    out: &mut Output,
) -> Result<Outcome, Error> {
    let last = watch(api, name, Until::Ended, out).await?;
    let last = last.as_deref();
    let text = summary::gone(name, last);
    let outcome = super::outcome_of(last.and_then(phase).filter(|p| p.is_terminal()));
    match outcome {
        Outcome::Done => out.line(&text)?,
        Outcome::Failed | Outcome::Cancelled => out.error_line(&text)?,
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("no", "Test").with_code(code).boxed())
    }

    #[test]
    fn only_a_lasting_refusal_stops_following_at_once() {
        let cases = [
            (watcher::Error::InitialListFailed(api(403)), true),
            (watcher::Error::InitialListFailed(api(401)), true),
            (watcher::Error::WatchStartFailed(api(404)), true),
            (watcher::Error::WatchFailed(api(403)), true),
            (
                watcher::Error::WatchError(
                    Status::failure("gone", "Expired").with_code(410).boxed(),
                ),
                false,
            ),
            (watcher::Error::InitialListFailed(api(500)), false),
            (watcher::Error::InitialListFailed(api(429)), false),
            (watcher::Error::NoResourceVersion, false),
        ];
        for (e, want) in cases {
            assert_eq!(refused(&e), want, "{e}");
        }
    }
}
