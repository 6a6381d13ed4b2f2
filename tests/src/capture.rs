//! What crosses the lab's migration link: a tcpdump capture inside a node's
//! network namespace, read back as TCP segments, to tell an encrypted
//! stream from a plain one by its bytes rather than by the flags asked for.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The first bytes of QEMU's migration stream: `QEMU_VM_FILE_MAGIC`
/// ("QEVM") and stream version 3. Eight bytes, so ciphertext does not
/// contain them by chance.
pub const QEMU_STREAM_HEADER: [u8; 8] = *b"QEVM\0\0\0\x03";

/// A TLS handshake record's first two bytes (content type 22, version 3.x).
pub const TLS_HANDSHAKE: [u8; 2] = [0x16, 0x03];

/// One captured TCP segment with a payload.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Sender's port.
    pub src_port: u16,
    /// Receiver's port.
    pub dst_port: u16,
    /// The captured payload.
    pub payload: Vec<u8>,
}

/// A running capture of a node's migration interface.
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing TCP on `node`'s migration interface; returns once
    /// tcpdump listens.
    pub async fn start(node: &str, label: &str) -> Capture {
        let dir = crate::repo_root().join("target/test-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let file = dir.join(format!("capture-{label}-{node}.pcap"));
        let _ = std::fs::remove_file(&file);
        let err = dir.join(format!("capture-{label}-{node}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", node, "tcpdump", "-i", "mig0", "-U", "-n"])
            .args(["-s", "0", "-w"])
            .arg(&file)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("capture log"))
            .spawn()
            .expect("starting tcpdump (tests/lab/install.sh installs it)");
        crate::eventually(Duration::from_secs(10), "tcpdump to listen", || async {
            std::fs::read_to_string(&err)
                .unwrap_or_default()
                .contains("listening on")
                .then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&err).unwrap_or_default()));
        Capture { child, file }
    }

    /// Stops the capture and returns every segment with a payload. The
    /// file (tens of MiB for a move) is removed once read; a capture that
    /// could not be read stays for a look.
    pub fn finish(mut self) -> Vec<Segment> {
        self.stop();
        let bytes = std::fs::read(&self.file).expect("reading the capture");
        let read = segments(&bytes).unwrap_or_else(|e| panic!("{}: {e}", self.file.display()));
        let _ = std::fs::remove_file(&self.file);
        read
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The TCP segments with a payload in a pcap file of Ethernet frames.
pub fn segments(pcap: &[u8]) -> Result<Vec<Segment>, String> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    match u32_at(pcap, 0) {
        Some(0xa1b2c3d4) | Some(0xa1b23c4d) => {}
        other => return Err(format!("not a little-endian pcap file (magic {other:x?})")),
    }
    if u32_at(pcap, 20) != Some(1) {
        return Err("not an Ethernet capture".into());
    }
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32_at(pcap, at + 8).ok_or("truncated record header")? as usize;
        let frame = pcap.get(at + 16..at + 16 + len).ok_or("truncated record")?;
        at += 16 + len;
        if let Some(s) = tcp_segment(frame) {
            out.push(s);
        }
    }
    Ok(out)
}

/// The TCP segment in an Ethernet frame of IPv4, if it carries a payload.
fn tcp_segment(frame: &[u8]) -> Option<Segment> {
    let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ether_type != 0x0800 {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = (ip.first()? & 0x0f) as usize * 4;
    let total = u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?) as usize;
    if *ip.get(9)? != 6 {
        return None;
    }
    let tcp = ip.get(ihl..total.min(ip.len()))?;
    let offset = (tcp.get(12)? >> 4) as usize * 4;
    let payload = tcp.get(offset..)?;
    if payload.is_empty() {
        return None;
    }
    Some(Segment {
        src_port: u16::from_be_bytes(tcp.get(0..2)?.try_into().ok()?),
        dst_port: u16::from_be_bytes(tcp.get(2..4)?.try_into().ok()?),
        payload: payload.to_vec(),
    })
}

/// Whether `needle` occurs in any segment's payload.
pub fn carries(segments: &[Segment], needle: &[u8]) -> bool {
    segments
        .iter()
        .any(|s| s.payload.windows(needle.len()).any(|w| w == needle))
}

/// The first payload sent to each port in `ports`, one per port seen.
pub fn first_payloads_to(
    segments: &[Segment],
    ports: &std::ops::RangeInclusive<u16>,
) -> Vec<(u16, Vec<u8>)> {
    let mut seen: Vec<(u16, Vec<u8>)> = Vec::new();
    for s in segments {
        if ports.contains(&s.dst_port) && !seen.iter().any(|(p, _)| *p == s.dst_port) {
            seen.push((s.dst_port, s.payload.clone()));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap file of one Ethernet/IPv4/TCP frame per payload.
    fn pcap_of(frames: &[(u16, u16, &[u8])]) -> Vec<u8> {
        let mut f = Vec::new();
        // Magic, version 2.4 (two u16s), zone, accuracy, snap length,
        // link type Ethernet.
        for v in [0xa1b2c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for (src, dst, payload) in frames {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = 20 + 20 + payload.len();
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(total as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2]);
            let mut tcp = Vec::new();
            tcp.extend_from_slice(&src.to_be_bytes());
            tcp.extend_from_slice(&dst.to_be_bytes());
            tcp.extend_from_slice(&[0; 8]);
            tcp.extend_from_slice(&[0x50, 0x18, 0, 0, 0, 0, 0, 0]);
            frame.extend(ip);
            frame.extend(tcp);
            frame.extend_from_slice(payload);
            for v in [0u32, 0, frame.len() as u32, frame.len() as u32] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend(frame);
        }
        f
    }

    #[test]
    fn segments_are_read_back_with_their_ports_and_payloads() {
        let file = pcap_of(&[
            (40000, 49152, b"QEVM\0\0\0\x03rest"),
            (49152, 40000, b""),
            (40001, 16514, &[0x16, 0x03, 0x01]),
        ]);
        let got = segments(&file).expect("parsed");
        assert_eq!(got.len(), 2, "the empty segment is skipped: {got:?}");
        assert_eq!((got[0].src_port, got[0].dst_port), (40000, 49152));
        assert!(carries(&got, &QEMU_STREAM_HEADER));
        let firsts = first_payloads_to(&got, &(16514..=16514));
        assert_eq!(firsts, vec![(16514, vec![0x16, 0x03, 0x01])]);
        assert!(!carries(&got[1..], &QEMU_STREAM_HEADER));
    }

    #[test]
    fn what_is_not_a_pcap_file_is_an_error() {
        assert!(segments(b"hello world, not a capture at all").is_err());
        let mut truncated = pcap_of(&[(1, 2, b"abc")]);
        truncated.truncate(truncated.len() - 2);
        assert!(segments(&truncated).is_err());
    }
}
