//! Block-level delta sync of disk images between agents (offline moves).
//! The target hashes its copy in fixed blocks, the source compares with its
//! own hashes and sends only the blocks that differ. Run once while the VM
//! still runs and again once it is stopped, the second pass moves only what
//! changed in between. Images are synced as files, so qcow2 works as raw.
//!
//! Peers name disks by guest device ("vda"); the target maps that to the
//! path its preparation allowed, so a peer can write nothing else.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kvmotion_api::client::AgentClient;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Block size of the sync: small enough that a few changed sectors do not
/// resend much, large enough that a 1 GiB image is 4096 hashes.
pub const BLOCK_SIZE: usize = 256 * 1024;

/// Most bytes sent in one request.
const BATCH_BYTES: usize = 16 << 20;

/// The target's hashes of its copy of one disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlockHashes {
    /// File size in bytes (0 when the file does not exist).
    pub size_bytes: u64,
    /// Block size used.
    pub block_size: u64,
    /// xxh3-128 of each block, hex.
    pub hashes: Vec<String>,
}

/// What one pass moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Blocks in the image.
    pub blocks: u64,
    /// Blocks sent.
    pub sent_blocks: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Hashes a file in `block` sized blocks; a missing file has none.
pub fn hash_file(path: &Path, block: usize) -> std::io::Result<BlockHashes> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(BlockHashes {
                size_bytes: 0,
                block_size: block as u64,
                hashes: Vec::new(),
            });
        }
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    let mut buf = vec![0u8; block];
    let mut hashes = Vec::with_capacity((size as usize).div_ceil(block));
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        hashes.push(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&buf[..n])));
    }
    Ok(BlockHashes {
        size_bytes: size,
        block_size: block as u64,
        hashes,
    })
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Indices of the blocks of `local` that `remote` lacks or has different.
pub fn differing(local: &BlockHashes, remote: &BlockHashes) -> Vec<usize> {
    if local.block_size != remote.block_size {
        return (0..local.hashes.len()).collect();
    }
    local
        .hashes
        .iter()
        .enumerate()
        .filter(|(i, h)| remote.hashes.get(*i) != Some(*h))
        .map(|(i, _)| i)
        .collect()
}

/// Frames blocks for the wire: [offset u64 LE][length u32 LE][bytes]…
pub fn encode_frames(path: &Path, indices: &[usize], block: usize) -> std::io::Result<Vec<Bytes>> {
    let f = std::fs::File::open(path)?;
    let mut batches = Vec::new();
    let mut cur = BytesMut::new();
    let mut buf = vec![0u8; block];
    for &i in indices {
        let offset = (i * block) as u64;
        let n = read_at_full(&f, &mut buf, offset)?;
        cur.put_u64_le(offset);
        cur.put_u32_le(n as u32);
        cur.put_slice(&buf[..n]);
        if cur.len() >= BATCH_BYTES {
            batches.push(cur.split().freeze());
        }
    }
    if !cur.is_empty() {
        batches.push(cur.freeze());
    }
    Ok(batches)
}

fn read_at_full(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes framed blocks into `path`, sized to `size` bytes.
pub fn apply_frames(path: &Path, size: u64, mut body: Bytes) -> std::io::Result<u64> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    if f.metadata()?.len() != size {
        f.set_len(size)?;
    }
    let mut written = 0;
    while body.has_remaining() {
        if body.remaining() < 12 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "truncated frame header",
            ));
        }
        let offset = body.get_u64_le();
        let len = body.get_u32_le() as usize;
        if body.remaining() < len || offset.saturating_add(len as u64) > size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "frame outside the image",
            ));
        }
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(&body[..len])?;
        body.advance(len);
        written += len as u64;
    }
    f.sync_data()?;
    Ok(written)
}

/// Sends `body` to a peer agent; a failure names the peer.
async fn call(
    peer: &AgentClient,
    method: &'static str,
    url: &str,
    body: Bytes,
    size: Option<u64>,
) -> Result<Bytes, Error> {
    let headers: Vec<(&str, String)> = match size {
        Some(size) => vec![
            ("x-kvmotion-size", size.to_string()),
            ("content-type", "application/octet-stream".into()),
        ],
        None => Vec::new(),
    };
    peer.send(method, url, &headers, body, Duration::ZERO)
        .await
        .map_err(|e| Error::CallPeer {
            endpoint: url.to_string(),
            message: kvmotion_api::error_chain(&e),
        })
}

/// Syncs one disk to the peer: hashes there, differing blocks here.
pub async fn sync_disk(
    peer: &AgentClient,
    endpoint: &str,
    id: &str,
    target: &str,
    path: &str,
) -> Result<PassStats, Error> {
    let started = Instant::now();
    let base = format!(
        "{endpoint}{}/migrations/{id}/disks/{target}",
        kvmotion_api::agent::API_PREFIX
    );
    // Both sides hash at once; then only differing blocks travel, read
    // and sent one batch at a time so memory stays at one batch.
    let p = path.to_string();
    let local = async {
        tokio::task::spawn_blocking(move || hash_file(Path::new(&p), BLOCK_SIZE))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(|source| Error::DiskImage {
                path: path.to_string(),
                source,
            })
    };
    let remote = async {
        let raw = call(peer, "GET", &format!("{base}/hashes"), Bytes::new(), None).await?;
        serde_json::from_slice::<BlockHashes>(&raw).map_err(|e| Error::CallPeer {
            endpoint: endpoint.to_string(),
            message: format!("reading hashes: {e}"),
        })
    };
    let (local, remote) = tokio::try_join!(local, remote)?;
    let hashed = started.elapsed();
    let changed = differing(&local, &remote);
    let mut sent = 0;
    for chunk in changed.chunks((BATCH_BYTES / BLOCK_SIZE).max(1)) {
        let (p, chunk) = (path.to_string(), chunk.to_vec());
        let batches =
            tokio::task::spawn_blocking(move || encode_frames(Path::new(&p), &chunk, BLOCK_SIZE))
                .await
                .map_err(|e| Error::Task(e.to_string()))?
                .map_err(|source| Error::DiskImage {
                    path: path.to_string(),
                    source,
                })?;
        for batch in batches {
            sent += batch.len() as u64;
            call(
                peer,
                "POST",
                &format!("{base}/blocks"),
                batch,
                Some(local.size_bytes),
            )
            .await?;
        }
    }
    // Nothing to send but a size to fix (the image shrank, or is empty).
    if changed.is_empty() && remote.size_bytes != local.size_bytes {
        call(
            peer,
            "POST",
            &format!("{base}/blocks"),
            Bytes::new(),
            Some(local.size_bytes),
        )
        .await?;
    }
    tracing::debug!(
        disk = target,
        hash_ms = hashed.as_millis() as u64,
        send_ms = (started.elapsed() - hashed).as_millis() as u64,
        "disk sync timings"
    );
    Ok(PassStats {
        blocks: local.hashes.len() as u64,
        sent_blocks: changed.len() as u64,
        sent_bytes: sent,
        elapsed: started.elapsed(),
    })
}

/// Asks the peer to resume the VM that arrived paused.
pub async fn resume_on(peer: &AgentClient, endpoint: &str, id: &str) -> Result<(), Error> {
    peer.resume(endpoint, id)
        .await
        .map(|_| ())
        .map_err(|e| Error::CallPeer {
            endpoint: endpoint.to_string(),
            message: kvmotion_api::error_chain(&e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kvmotion-sync-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_two_pass_sync_sends_only_changed_blocks_and_ends_identical() {
        let dir = scratch("two-pass");
        let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
        let block = 4096;
        let mut data: Vec<u8> = (0..64 * block).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();

        // pass 1: nothing on the target, every block goes
        let (l, r) = (
            hash_file(&src, block).unwrap(),
            hash_file(&dst, block).unwrap(),
        );
        let changed = differing(&l, &r);
        assert_eq!(changed.len(), 64);
        for batch in encode_frames(&src, &changed, block).unwrap() {
            apply_frames(&dst, l.size_bytes, batch).unwrap();
        }
        assert_eq!(std::fs::read(&dst).unwrap(), data);

        // the guest writes three blocks; pass 2 sends exactly those
        for b in [3usize, 17, 63] {
            data[b * block + 10] ^= 0xff;
        }
        std::fs::write(&src, &data).unwrap();
        let (l, r) = (
            hash_file(&src, block).unwrap(),
            hash_file(&dst, block).unwrap(),
        );
        let changed = differing(&l, &r);
        assert_eq!(changed, vec![3, 17, 63]);
        for batch in encode_frames(&src, &changed, block).unwrap() {
            apply_frames(&dst, l.size_bytes, batch).unwrap();
        }
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_shrunk_source_truncates_the_copy_and_a_partial_last_block_is_kept() {
        let dir = scratch("resize");
        let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
        std::fs::write(&dst, vec![7u8; 10_000]).unwrap();
        std::fs::write(&src, vec![9u8; 5_000]).unwrap();
        let (l, r) = (
            hash_file(&src, 4096).unwrap(),
            hash_file(&dst, 4096).unwrap(),
        );
        for batch in encode_frames(&src, &differing(&l, &r), 4096).unwrap() {
            apply_frames(&dst, l.size_bytes, batch).unwrap();
        }
        assert_eq!(std::fs::read(&dst).unwrap(), vec![9u8; 5_000]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn frames_outside_the_image_are_refused() {
        let dir = scratch("bad-frame");
        let mut frame = BytesMut::new();
        frame.put_u64_le(8192);
        frame.put_u32_le(4);
        frame.put_slice(b"evil");
        let err = apply_frames(&dir.join("x.img"), 4096, frame.freeze()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
