//! The agent's records on disk: the jobs it started and what `prepare`
//! created, one JSON file per migration, each written atomically (a
//! temporary file, fsync, rename, fsync of the directory). A restarted
//! agent reads them back and adopts what libvirt still runs.

use std::io::Write;
use std::path::{Path, PathBuf};

use kvmotion_api::agent::{DomainRef, JobStatus, StartRequest};
use kvmotion_api::movable::Move;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Kinds of record, each in its own subdirectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Source-side jobs.
    Job,
    /// Target-side preparations.
    Prepared,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Job => "jobs",
            Kind::Prepared => "prepared",
        }
    }
}

/// A source-side job as recorded: enough to monitor it again, abort it or
/// report how it ended after a restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// The start request (target, tuning, disks).
    pub request: StartRequest,
    /// The VM, resolved to name and uuid.
    pub vm: DomainRef,
    /// How the VM moves.
    pub how: Move,
    /// When the job started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// The job's status when last recorded (final once it ended).
    pub status: JobStatus,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) the state directory at `root`.
    pub fn open(root: &Path) -> std::io::Result<StateDir> {
        for k in [Kind::Job, Kind::Prepared] {
            std::fs::create_dir_all(root.join(k.dir()))?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, kind: Kind, id: &str) -> PathBuf {
        self.root.join(kind.dir()).join(format!("{id}.json"))
    }

    /// Records `value` for migration `id`, replacing any earlier record
    /// atomically: a reader sees the old record or the new, never half.
    pub fn save<T: Serialize>(&self, kind: Kind, id: &str, value: &T) -> std::io::Result<()> {
        let path = self.path(kind, id);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        // The rename is durable only once the directory is.
        std::fs::File::open(self.root.join(kind.dir()))?.sync_all()
    }

    /// Removes the record of `id`; a missing one is fine.
    pub fn remove(&self, kind: Kind, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(kind, id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Every readable record of `kind`, by migration id. An unreadable one
    /// is logged and left in place for a person to look at.
    pub fn load<T: DeserializeOwned>(&self, kind: Kind) -> std::io::Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join(kind.dir()))? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()))
            {
                Ok(v) => out.push((id.to_string(), v)),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "skipping an unreadable record")
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::target::Prepared;
    use kvmotion_api::agent::PrepareResponse;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kvmotion-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn prepared(path: &str) -> Prepared {
        Prepared {
            response: PrepareResponse {
                libvirt_uri: "qemu+tcp://b/system".into(),
                migration_uri: "tcp://b".into(),
                agent_endpoint: "http://b:9443".into(),
                created_disks: vec![path.into()],
            },
            vm: DomainRef {
                name: Some("web".into()),
                uuid: Some("u1".into()),
            },
            writable_disks: Vec::new(),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_replace_each_other_whole() {
        let root = dir("reopen");
        let s = StateDir::open(&root).unwrap();
        s.save(Kind::Prepared, "m1", &prepared("/x/1")).unwrap();
        s.save(Kind::Prepared, "m1", &prepared("/x/2")).unwrap();
        s.save(Kind::Prepared, "m2", &prepared("/x/3")).unwrap();
        let again = StateDir::open(&root).unwrap();
        let got: Vec<(String, Prepared)> = again.load(Kind::Prepared).unwrap();
        let paths: Vec<(&str, &str)> = got
            .iter()
            .map(|(id, p)| (id.as_str(), p.response.created_disks[0].as_str()))
            .collect();
        assert_eq!(paths, vec![("m1", "/x/2"), ("m2", "/x/3")]);
        assert!(
            std::fs::read_dir(root.join("prepared")).unwrap().all(|e| !e
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".tmp")),
            "no temporary file is left behind"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn removing_forgets_and_an_unreadable_record_is_skipped() {
        let root = dir("remove");
        let s = StateDir::open(&root).unwrap();
        s.save(Kind::Prepared, "m1", &prepared("/x/1")).unwrap();
        std::fs::write(root.join("prepared/bad.json"), b"{not json").unwrap();
        s.remove(Kind::Prepared, "m1").unwrap();
        s.remove(Kind::Prepared, "never").unwrap();
        let got: Vec<(String, Prepared)> = s.load(Kind::Prepared).unwrap();
        assert!(got.is_empty(), "{got:?}");
        assert!(root.join("prepared/bad.json").exists(), "kept for a person");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
