//! Reading libvirt's XML: a domain's disks and guest CPU, the host CPU from
//! the capabilities document.

use kvmotion_api::hypervisor::{DiskInfo, HostCpu};

use super::LibvirtError;

fn parse<'a>(what: &'static str, text: &'a str) -> Result<roxmltree::Document<'a>, LibvirtError> {
    roxmltree::Document::parse(text).map_err(|e| LibvirtError::Xml {
        what,
        message: e.to_string(),
    })
}

/// A disk as found in domain XML (capacity and sharing are filled in later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// Guest device, "vda".
    pub target: String,
    /// Host path of a file-backed disk.
    pub source: Option<String>,
    /// Image format ("qcow2", "raw").
    pub format: Option<String>,
    /// Read-only media.
    pub read_only: bool,
}

/// The `device='disk'` and `device='cdrom'` entries of a domain.
pub fn domain_disks(domain_xml: &str) -> Result<Vec<DomainDisk>, LibvirtError> {
    let doc = parse("domain", domain_xml)?;
    let disks = doc
        .descendants()
        .filter(|n| n.has_tag_name("disk"))
        .filter_map(|d| {
            let target = d
                .children()
                .find(|c| c.has_tag_name("target"))?
                .attribute("dev")?;
            let source = d
                .children()
                .find(|c| c.has_tag_name("source"))
                .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
                .map(String::from);
            let format = d
                .children()
                .find(|c| c.has_tag_name("driver"))
                .and_then(|drv| drv.attribute("type"))
                .map(String::from);
            let read_only = d.attribute("device") == Some("cdrom")
                || d.children().any(|c| c.has_tag_name("readonly"));
            Some(DomainDisk {
                target: target.to_string(),
                source,
                format,
                read_only,
            })
        })
        .collect();
    Ok(disks)
}

/// The `<cpu>` element of a domain, serialized, for `virConnectCompareCPU`;
/// empty when the domain names no CPU model (then anything runs it).
pub fn guest_cpu(domain_xml: &str) -> Result<String, LibvirtError> {
    let doc = parse("domain", domain_xml)?;
    let Some(cpu) = doc
        .root_element()
        .children()
        .find(|c| c.has_tag_name("cpu"))
    else {
        return Ok(String::new());
    };
    if !cpu.children().any(|c| c.has_tag_name("model")) {
        return Ok(String::new());
    }
    Ok(domain_xml[cpu.range()].to_string())
}

/// The domain's virtualization type (`<domain type='…'>`).
pub fn virt_type(domain_xml: &str) -> Result<String, LibvirtError> {
    let doc = parse("domain", domain_xml)?;
    Ok(doc
        .root_element()
        .attribute("type")
        .unwrap_or("kvm")
        .to_string())
}

/// The host CPU from the capabilities document.
pub fn host_cpu(capabilities_xml: &str, count: u32) -> Result<HostCpu, LibvirtError> {
    let doc = parse("capabilities", capabilities_xml)?;
    let cpu = doc
        .descendants()
        .find(|n| n.has_tag_name("cpu") && n.parent().is_some_and(|p| p.has_tag_name("host")))
        .ok_or_else(|| LibvirtError::Xml {
            what: "capabilities",
            message: "no <host><cpu> element".into(),
        })?;
    let text = |tag: &str| {
        cpu.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
    };
    Ok(HostCpu {
        arch: text("arch").unwrap_or_default(),
        model: text("model").unwrap_or_default(),
        vendor: text("vendor"),
        features: cpu
            .children()
            .filter(|c| c.has_tag_name("feature"))
            .filter_map(|f| f.attribute("name").map(String::from))
            .collect(),
        count,
    })
}

/// libvirt's version numbers (major × 1,000,000 + minor × 1,000 + micro) as text.
pub fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

/// Marks each disk shared or local and fills in its size.
pub fn disk_info(disk: &DomainDisk, shared_paths: &[String], capacity: Option<u64>) -> DiskInfo {
    let shared = disk
        .source
        .as_deref()
        .is_some_and(|src| shared_paths.iter().any(|p| is_under(src, p)));
    DiskInfo {
        target: disk.target.clone(),
        source: disk.source.clone(),
        format: disk.format.clone(),
        capacity_bytes: capacity,
        shared,
        read_only: disk.read_only,
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='qemu'><name>hb1</name>
      <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/shared/hb1.qcow2'/><target dev='vda' bus='virtio'/></disk>
        <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/local/data.img'/><target dev='vdb' bus='virtio'/></disk>
        <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
      </devices></domain>"#;

    #[test]
    fn disks_are_read_from_domain_xml() {
        let disks = domain_disks(DOMAIN).unwrap();
        let summary: Vec<(&str, Option<&str>, bool)> = disks
            .iter()
            .map(|d| (d.target.as_str(), d.format.as_deref(), d.read_only))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("vda", Some("qcow2"), false),
                ("vdb", Some("raw"), false),
                ("sda", None, true)
            ]
        );
    }

    #[test]
    fn disks_under_a_shared_path_are_shared() {
        let disks = domain_disks(DOMAIN).unwrap();
        let shared = vec!["/srv/shared/".to_string()];
        let flags: Vec<bool> = disks
            .iter()
            .map(|d| disk_info(d, &shared, None).shared)
            .collect();
        assert_eq!(flags, vec![true, false, false]);
        assert!(!is_under("/srv/sharedness/x", "/srv/shared"));
    }

    #[test]
    fn the_guest_cpu_element_is_extracted_verbatim() {
        let cpu = guest_cpu(DOMAIN).unwrap();
        assert!(
            cpu.starts_with("<cpu mode='custom'") && cpu.ends_with("</cpu>"),
            "{cpu}"
        );
        assert_eq!(guest_cpu("<domain><name>x</name></domain>").unwrap(), "");
        assert_eq!(virt_type(DOMAIN).unwrap(), "qemu");
    }

    #[test]
    fn host_cpu_comes_from_capabilities() {
        let caps = "<capabilities><host><uuid>u</uuid><cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model>\
                    <vendor>Intel</vendor><feature name='ss'/><feature name='vmx'/></cpu></host></capabilities>";
        let cpu = host_cpu(caps, 2).unwrap();
        assert_eq!(
            (cpu.arch.as_str(), cpu.model.as_str(), cpu.count),
            ("x86_64", "Skylake-Client-IBRS", 2)
        );
        assert_eq!(cpu.features, vec!["ss", "vmx"]);
    }

    #[test]
    fn libvirt_version_numbers_read_as_text() {
        assert_eq!(version_string(11_003_000), "11.3.0");
        assert_eq!(version_string(10_000_002), "10.0.2");
    }
}
