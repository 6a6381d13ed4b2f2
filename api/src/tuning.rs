//! How a migration is carried out: the knobs a `MigrationPolicy` sets as
//! defaults and a `VirtualMachineMigration` may override one by one.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Tuning of one migration. Every field is optional: an unset field falls
/// back to the policy, then to kvmotion's built-in default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = tuning_rules)]
pub struct MigrationTuning {
    /// Bandwidth cap for the memory (and disk) stream, in MiB/s. 0 means unlimited.
    #[serde(rename = "bandwidthMiBps", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_048_576))]
    pub bandwidth_mibps: Option<u32>,

    /// Longest pause of the guest allowed at switch-over, in milliseconds
    /// (1 to 2,000,000). kvmotion raises the allowed downtime in steps up to
    /// this value while the migration runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2_000_000))]
    pub max_downtime_ms: Option<u32>,

    /// Time allowed per GiB of guest memory (and copied disk) before the
    /// timeout action is taken, in seconds. 0 disables this timeout.
    #[serde(
        rename = "completionTimeoutPerGiBSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 86_400))]
    pub completion_timeout_per_gib_seconds: Option<u32>,

    /// Time without progress (remaining data not shrinking) before the
    /// timeout action is taken, in seconds. 0 disables this timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86_400))]
    pub progress_timeout_seconds: Option<u32>,

    /// What to do when a timeout fires: Abort (the VM stays on the source),
    /// PostCopy (switch to post-copy: the VM runs on the target at once and
    /// pulls the remaining memory), or Pause (pause the guest so pre-copy
    /// finishes; downtime grows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<TimeoutAction>,

    /// Let QEMU throttle the guest's vCPUs when it dirties memory faster than
    /// the link sends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_converge: Option<bool>,

    /// Allow switching to post-copy. Required for onTimeout PostCopy. A
    /// post-copy migration cannot be rolled back once switched: a network
    /// failure then loses the guest, which is why a policy may forbid it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_copy: Option<bool>,

    /// How long the source agent keeps resuming a post-copy migration that
    /// lost its link (libvirt's post-copy recovery) before it reports the
    /// migration Failed, in seconds. The guest cannot run anywhere else
    /// meanwhile: its memory is split between the nodes. 0 = do not try.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86_400))]
    pub post_copy_recovery_timeout_seconds: Option<u32>,

    /// Number of parallel connections for the memory stream (1 to 16).
    /// More than one excludes post-copy (QEMU cannot combine them): such a
    /// migration converges by the downtime ramp and onTimeout Pause or Abort.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub parallel_connections: Option<u8>,

    /// Compression of the memory stream. None by default: on small hosts
    /// compression costs more CPU than it saves in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,

    /// How disks travel: Auto (copy the disks that are not on shared
    /// storage), Shared (all disks must be on shared storage, copying is
    /// forbidden), Copy (copy every disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageMode>,

    /// Encrypt the migration stream with libvirt's native TLS (the Direct
    /// transport; the nodes need QEMU's migration certificates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,

    /// How the memory stream travels. Direct (the default): QEMU to QEMU on
    /// a connection of its own, encrypted with `tls`. Tunnelled: inside the
    /// connection between the two libvirt daemons, so one port is all the
    /// nodes open to each other, and it is encrypted when that connection
    /// is (`qemu+tls`); slower, as the data passes through both daemons,
    /// and pre-copy only in one stream: it excludes postCopy, onTimeout
    /// PostCopy, parallelConnections above 1, Zstd and Zlib compression,
    /// and `tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

/// Rules over several tuning fields: the combinations libvirt refuses
/// with a tunnelled migration.
fn tuning_rules(schema: &mut schemars::Schema) {
    use crate::schema::push_rule;
    const TUNNELLED: &str = "!has(self.transport) || self.transport != 'Tunnelled' || ";
    let rules = [
        (
            "!has(self.postCopy) || !self.postCopy",
            "postCopy cannot be true with transport Tunnelled: libvirt moves a tunnelled migration by pre-copy only",
            ".postCopy",
        ),
        (
            "!has(self.onTimeout) || self.onTimeout != 'PostCopy'",
            "onTimeout PostCopy cannot be used with transport Tunnelled (pre-copy only): use Pause or Abort",
            ".onTimeout",
        ),
        (
            "!has(self.parallelConnections) || self.parallelConnections == 1",
            "parallelConnections must be 1 with transport Tunnelled: the tunnel carries one stream",
            ".parallelConnections",
        ),
        (
            "!has(self.compression) || self.compression == 'None' || self.compression == 'Xbzrle'",
            "compression Zstd and Zlib need parallel connections, which transport Tunnelled cannot use: use None or Xbzrle",
            ".compression",
        ),
        (
            "!has(self.tls) || !self.tls",
            "tls is for transport Direct: a Tunnelled stream is as secure as the libvirt connection between the nodes (use qemu+tls there)",
            ".tls",
        ),
    ];
    for (rule, message, field) in rules {
        push_rule(schema, &format!("{TUNNELLED}{rule}"), message, Some(field));
    }
}

/// How a migration's memory stream travels between the nodes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Transport {
    /// QEMU to QEMU on its own connection (libvirt's native transport).
    #[default]
    Direct,
    /// Through the libvirt daemons' connection (VIR_MIGRATE_TUNNELLED).
    Tunnelled,
}

/// What happens when a migration runs out of time.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TimeoutAction {
    /// Cancel the migration; the VM keeps running on the source.
    Abort,
    /// Switch to post-copy; needs postCopy allowed.
    PostCopy,
    /// Pause the guest so the remaining memory is sent while it is stopped.
    Pause,
}

/// Compression of the migration stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Compression {
    /// No compression.
    None,
    /// XBZRLE page-delta caching (helps guests rewriting the same pages).
    Xbzrle,
    /// zstd over parallel connections.
    Zstd,
    /// zlib over parallel connections.
    Zlib,
}

/// How a migration treats the VM's disks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StorageMode {
    /// Copy the disks that are not on shared storage.
    Auto,
    /// Require shared storage for every disk; never copy.
    Shared,
    /// Copy every disk to the target.
    Copy,
}
