//! The target side: prepare (capacity, CPU, disk images), cleanup of what
//! prepare created when the VM did not arrive, and resuming a VM that an
//! offline move delivered paused.

use std::process::Command;
use std::sync::Arc;

use kvmotion_api::agent::{DiskPlan, DomainRef, PrepareRequest, PrepareResponse};
use kvmotion_api::hypervisor::DomainState;
use tracing::{info, warn};

use super::Engine;
use crate::error::{Error, blocking};
use crate::libvirt::CpuCompat;

/// What `prepare` did for one migration, kept for idempotency and cleanup.
#[derive(Debug, Clone)]
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
        let mut created = Vec::new();
        let copies: Vec<DiskPlan> = req.disks.iter().filter(|d| d.copy).cloned().collect();
        for d in &copies {
            match create_image(d) {
                Ok(true) => created.push(d.path.clone()),
                Ok(false) => {}
                Err(e) => {
                    remove_images(&created);
                    return Err(e);
                }
            }
        }
        let response = PrepareResponse {
            libvirt_uri: self.config.libvirt_uri.clone(),
            migration_uri: self.config.migration_uri.clone(),
            agent_endpoint: self.config.endpoint.clone(),
            created_disks: created,
        };
        info!(migration = id, vm = %req.vm, disks = copies.len(), "prepared to receive");
        if let Ok(mut p) = self.prepared.lock() {
            p.insert(
                id.to_string(),
                Prepared {
                    response: response.clone(),
                    vm: req.vm,
                    writable_disks: copies,
                },
            );
        }
        Ok(response)
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
            remove_images(&p.response.created_disks);
            p.response.created_disks.clone()
        };
        if let Ok(mut map) = self.prepared.lock() {
            map.remove(id);
        }
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

/// Creates an empty image of the disk's format and virtual size, unless one
/// exists. Returns whether it created one.
fn create_image(d: &DiskPlan) -> Result<bool, Error> {
    let path = std::path::Path::new(&d.path);
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::DiskImage {
            path: d.path.clone(),
            source,
        })?;
    }
    let out = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            &d.format,
            &d.path,
            &d.capacity_bytes.to_string(),
        ])
        .output()
        .map_err(|source| Error::DiskImage {
            path: d.path.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::DiskImage {
            path: d.path.clone(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(true)
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
