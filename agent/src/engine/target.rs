//! The target side: prepare (capacity, CPU, disk paths, disk images),
//! cleanup of what prepare created when the VM did not arrive, and resuming
//! a VM that an offline move delivered paused.
//!
//! Nothing kvmotion did not create is ever written here: prepare refuses a
//! copied disk whose path exists, and any disk another domain defined here
//! uses. What prepare created is recorded on disk before it answers, so a
//! restarted agent still cleans it up.

use std::process::Command;
use std::sync::Arc;

use kvmotion_api::agent::{DiskPlan, DomainRef, PrepareRequest, PrepareResponse};
use kvmotion_api::hypervisor::{DomainInfo, DomainState};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::Engine;
use super::state::Kind;
use crate::error::{Error, blocking, blocking_io};
use crate::libvirt::CpuCompat;

/// What `prepare` did for one migration, kept (on disk too) for
/// idempotency and cleanup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prepared {
    /// The answer given.
    pub response: PrepareResponse,
    /// The VM.
    pub vm: DomainRef,
    /// Disks the source may write through disk sync (copied disks).
    pub writable_disks: Vec<DiskPlan>,
}

impl Engine {
    /// Checks this node can take the VM and creates images for copied
    /// disks. Repeating the call returns the first answer.
    pub async fn prepare(
        self: &Arc<Self>,
        id: &str,
        req: PrepareRequest,
    ) -> Result<PrepareResponse, Error> {
        if let Some(p) = self.prepared_entry(id) {
            return Ok(p.response);
        }
        // One prepare at a time on this node: a retry of the same migration
        // waits for the first and gets its answer, and two migrations can
        // never both find a path free and both create it.
        let _serial = self.prepare_lock.lock().await;
        if let Some(p) = self.prepared_entry(id) {
            return Ok(p.response);
        }
        let node = self.config.node.clone();
        if req.source_node == node {
            return Err(Error::SameNode { node });
        }
        for d in &req.disks {
            if !d.path.starts_with('/') || d.path.contains("/../") {
                return Err(Error::BadRequest(format!(
                    "disks[{}].path must be an absolute path",
                    d.target
                )));
            }
        }
        let lv = self.lv.clone();
        let vm = req.vm.clone();
        if let Some(existing) = blocking(move || lv.domain(&vm)).await? {
            return Err(Error::DomainExists {
                vm: existing.name,
                node,
            });
        }
        let lv = self.lv.clone();
        let here = blocking(move || lv.domains()).await?;
        let disks = req.disks.clone();
        blocking_io("checking disk paths", move || {
            Ok(paths_in_use(&disks, &here))
        })
        .await?
        .map_or(Ok(()), |(path, domain)| {
            Err(Error::DiskPathInUse {
                path,
                domain,
                node: node.clone(),
            })
        })?;
        let lv = self.lv.clone();
        let host = blocking(move || lv.host()).await?;
        if host.memory.free_bytes < req.memory_bytes {
            return Err(Error::InsufficientMemory {
                node,
                free: host.memory.free_bytes,
                needed: req.memory_bytes,
            });
        }
        if !req.cpu_xml.is_empty() {
            let lv = self.lv.clone();
            let (virt_type, xml) = (req.virt_type.clone(), req.cpu_xml.clone());
            if blocking(move || lv.compare_cpu(&virt_type, &xml)).await? == CpuCompat::Incompatible
            {
                return Err(Error::CpuIncompatible { node });
            }
        }
        let copies: Vec<DiskPlan> = req.disks.iter().filter(|d| d.copy).cloned().collect();
        let prepared = Prepared {
            response: PrepareResponse {
                libvirt_uri: self.config.libvirt_uri.clone(),
                migration_uri: self.config.migration_uri.clone(),
                agent_endpoint: self.config.endpoint.clone(),
                created_disks: copies.iter().map(|d| d.path.clone()).collect(),
            },
            vm: req.vm.clone(),
            writable_disks: copies.clone(),
        };
        // Recorded before the first image exists: an agent killed halfway
        // still knows what to remove.
        self.record_prepared(id, &prepared).await?;
        let made = tokio::task::spawn_blocking(move || create_images(&copies))
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        if let Err((path, source)) = made {
            self.forget_prepared(id).await;
            return Err(Error::DiskImage { path, source });
        }
        info!(migration = id, vm = %req.vm, disks = prepared.writable_disks.len(), "prepared to receive");
        if let Ok(mut p) = self.prepared.lock() {
            p.insert(id.to_string(), prepared.clone());
        }
        Ok(prepared.response)
    }

    async fn record_prepared(&self, id: &str, p: &Prepared) -> Result<(), Error> {
        let (state, id2, p) = (self.state.clone(), id.to_string(), p.clone());
        blocking_io(format!("the preparation of {id}"), move || {
            state.save(Kind::Prepared, &id2, &p)
        })
        .await
    }

    async fn forget_prepared(&self, id: &str) {
        if let Ok(mut map) = self.prepared.lock() {
            map.remove(id);
        }
        let (state, id2) = (self.state.clone(), id.to_string());
        if let Err(e) = blocking_io("removing a preparation", move || {
            state.remove(Kind::Prepared, &id2)
        })
        .await
        {
            warn!(migration = id, error = %crate::error::chain(&e), "could not remove a preparation record");
        }
    }

    /// Removes what `prepare` created, unless the VM arrived (then its disks
    /// are in use). Unknown ids are fine: cleanup is idempotent.
    pub async fn cleanup(&self, id: &str) -> Result<Vec<String>, Error> {
        let Some(p) = self.prepared_entry(id) else {
            return Ok(Vec::new());
        };
        let lv = self.lv.clone();
        let vm = p.vm.clone();
        let arrived = blocking(move || lv.domain(&vm)).await?.is_some();
        let removed = if arrived {
            Vec::new()
        } else {
            let paths = p.response.created_disks.clone();
            blocking_io("removing prepared images", move || {
                remove_images(&paths);
                Ok(())
            })
            .await?;
            p.response.created_disks.clone()
        };
        self.forget_prepared(id).await;
        Ok(removed)
    }

    /// Resumes the VM of migration `id` when it arrived paused (an offline
    /// move of a running guest).
    pub async fn resume_arrived(&self, id: &str) -> Result<(), Error> {
        let p = self
            .prepared_entry(id)
            .ok_or_else(|| Error::UnknownMigration { id: id.to_string() })?;
        let lv = self.lv.clone();
        let vm = p.vm.clone();
        let dom = blocking(move || lv.domain(&vm))
            .await?
            .ok_or_else(|| Error::DomainNotFound {
                vm: p.vm.to_string(),
                node: self.config.node.clone(),
            })?;
        if dom.state == DomainState::Paused {
            let lv = self.lv.clone();
            blocking(move || lv.resume(&p.vm)).await?;
        }
        Ok(())
    }

    /// The preparation of `id`, if any.
    pub fn prepared_entry(&self, id: &str) -> Option<Prepared> {
        self.prepared.lock().ok().and_then(|p| p.get(id).cloned())
    }
}

/// The first disk of `disks` whose path is in use here, and the domain
/// using it: a copied disk's file must not exist at all, and no domain
/// defined here may use any of the paths.
fn paths_in_use(disks: &[DiskPlan], here: &[DomainInfo]) -> Option<(String, Option<String>)> {
    for d in disks {
        let user = here.iter().find(|dom| {
            dom.disks
                .iter()
                .any(|x| x.source.as_deref() == Some(&d.path))
        });
        if let Some(dom) = user {
            return Some((d.path.clone(), Some(dom.name.clone())));
        }
        if d.copy && std::path::Path::new(&d.path).exists() {
            return Some((d.path.clone(), None));
        }
    }
    None
}

/// Creates every image, or none: on a failure the ones made are removed
/// and the failing path is returned with its error.
fn create_images(copies: &[DiskPlan]) -> Result<(), (String, std::io::Error)> {
    let mut made = Vec::new();
    for d in copies {
        if let Err(e) = create_image(d) {
            remove_images(&made);
            return Err((d.path.clone(), e));
        }
        made.push(d.path.clone());
    }
    Ok(())
}

/// Creates an empty image of the disk's format and virtual size. Refuses a
/// path that exists (`create_new`), so a file that appeared since the check
/// is never truncated.
fn create_image(d: &DiskPlan) -> std::io::Result<()> {
    let path = std::path::Path::new(&d.path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Claims the path: qemu-img would overwrite an existing file.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let out = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            &d.format,
            &d.path,
            &d.capacity_bytes.to_string(),
        ])
        .output();
    let failed = match out {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => std::io::Error::other(format!(
            "qemu-img create {}: {}",
            d.path,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => std::io::Error::new(e.kind(), format!("running qemu-img: {e}")),
    };
    let _ = std::fs::remove_file(path);
    Err(failed)
}

fn remove_images(paths: &[String]) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %p, error = %e, "could not remove a prepared disk image");
        }
    }
}
