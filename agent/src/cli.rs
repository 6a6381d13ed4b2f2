//! Command-line and environment configuration of the agent.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;

/// Flags of `kvmotion-agent`; each can also come from the environment.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "kvmotion-agent",
    version,
    about = "kvmotion's node agent: libvirt migrations, inventory, API"
)]
pub struct Args {
    /// This node's name (the Hypervisor object's name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// libvirt connection URI of the local daemon.
    #[arg(long, env = "KVMOTION_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,

    /// Address (IP or host) other nodes' libvirtd and QEMU reach this node
    /// on for migrations: the migration network.
    #[arg(
        long,
        env = "KVMOTION_MIGRATION_ADDRESS",
        required_unless_present = "migration_network",
        conflicts_with = "migration_network"
    )]
    pub migration_address: Option<String>,

    /// The migration network as a CIDR (10.99.0.0/24): the migration
    /// address is this host's own address in it, so one setting serves
    /// every node of a dedicated migration network.
    #[arg(long, env = "KVMOTION_MIGRATION_NETWORK", value_parser = Network::parse)]
    pub migration_network: Option<Network>,

    /// How other nodes' libvirtd reach this node's daemon in a peer-to-peer
    /// migration: `tcp` (qemu+tcp, port 16509; who may connect is up to
    /// libvirtd's `auth_tcp`, and with "none" any host that reaches the
    /// port controls this node's libvirt) or `tls` (qemu+tls, port 16514,
    /// both daemons proving themselves with certificates: the production
    /// choice).
    #[arg(
        long,
        env = "KVMOTION_PEER_TRANSPORT",
        value_enum,
        default_value_t = PeerTransport::Tcp
    )]
    pub peer_transport: PeerTransport,

    /// With `--peer-transport tls`: the directory of the client
    /// certificates a source node's libvirtd presents to this one
    /// (libvirt's `pkipath`; its defaults under /etc/pki when unset). The
    /// same path on every node.
    #[arg(long, env = "KVMOTION_PEER_PKI_PATH")]
    pub peer_pki_path: Option<String>,

    /// Address the API listens on.
    #[arg(long, env = "KVMOTION_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,

    /// URL the controller and peers reach this agent's API on; defaults to
    /// http(s)://<migration address>:<listen port>.
    #[arg(long, env = "KVMOTION_ADVERTISE_ENDPOINT")]
    pub advertise_endpoint: Option<String>,

    /// Directory prefix of storage all nodes share (disks there are not
    /// copied). Repeatable.
    #[arg(
        long = "shared-path",
        env = "KVMOTION_SHARED_PATHS",
        value_delimiter = ','
    )]
    pub shared_paths: Vec<String>,

    /// kubeconfig file; in-cluster configuration or $KUBECONFIG when unset.
    #[arg(long, env = "KVMOTION_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Audience callers' tokens must be issued for.
    #[arg(
        long,
        env = "KVMOTION_TOKEN_AUDIENCE",
        default_value = "kvmotion-agent"
    )]
    pub token_audience: String,

    /// Identities (usernames) allowed to control migrations. Repeatable.
    #[arg(
        long = "controller-identity",
        env = "KVMOTION_CONTROLLER_IDENTITIES",
        value_delimiter = ',',
        default_value = "system:serviceaccount:kvmotion-system:kvmotion-controller"
    )]
    pub controller_identities: Vec<String>,

    /// Identities of peer agents (disk sync, resume). Repeatable.
    #[arg(
        long = "peer-identity",
        env = "KVMOTION_PEER_IDENTITIES",
        value_delimiter = ',',
        default_value = "system:serviceaccount:kvmotion-system:kvmotion-agent"
    )]
    pub peer_identities: Vec<String>,

    /// File holding this agent's token for calling peers (audience as above).
    #[arg(long, env = "KVMOTION_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,

    /// CA bundle (PEM) trusted for peers' `https://` endpoints.
    #[arg(long, env = "KVMOTION_PEER_CA_FILE")]
    pub peer_ca_file: Option<PathBuf>,

    /// Namespace of the heartbeat Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kvmotion-system")]
    pub lease_namespace: String,

    /// Rewrite the Hypervisor status at least this often, seconds.
    #[arg(long, env = "KVMOTION_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,

    /// Renew the heartbeat Lease this often, seconds.
    #[arg(long, env = "KVMOTION_HEARTBEAT_SECONDS", default_value_t = 10)]
    pub heartbeat_seconds: u64,

    /// Measure each running guest's dirty rate this often, seconds (one
    /// second of libvirt's page sampling each time), and publish it in the
    /// Hypervisor status so that moves are predicted before they start;
    /// 0 turns it off (moves are then predicted a second into the job).
    #[arg(long, env = "KVMOTION_DIRTY_RATE_EVERY_SECONDS", default_value_t = 30)]
    pub dirty_rate_every_seconds: u64,

    /// How often a running job is sampled, milliseconds.
    #[arg(long, env = "KVMOTION_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,

    /// Directory where the agent records its jobs and what prepare created,
    /// so that a restarted agent adopts them. Must outlive the process (a
    /// hostPath in the chart) and belong to this node alone.
    #[arg(
        long,
        env = "KVMOTION_STATE_DIR",
        default_value = "/var/lib/kvmotion-agent"
    )]
    pub state_dir: std::path::PathBuf,

    /// Serve the API over TLS with this certificate (PEM chain)...
    #[arg(long, env = "KVMOTION_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// ...and this private key (PEM).
    #[arg(long, env = "KVMOTION_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log format: text or json.
    #[arg(long, env = "KVMOTION_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// The connection between two nodes' libvirt daemons.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerTransport {
    /// qemu+tcp: authenticated only as libvirtd's `auth_tcp` says.
    Tcp,
    /// qemu+tls: both daemons authenticated by certificates, encrypted.
    Tls,
}

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// Its address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/len` or `v6::addr/len`.
    pub fn parse(s: &str) -> Result<Network, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix length)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|e| format!("{addr:?} in {s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix length {prefix:?} in {s:?} is not 0 to {max}"))?;
        Ok(Network { addr, prefix })
    }

    /// Whether `ip` lies in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32u32),
            IpAddr::V6(v) => (u128::from(v), 128u32),
        };
        let ((net, width), (host, host_width)) = (bits(self.addr), bits(ip));
        if width != host_width {
            return false;
        }
        // Both kinds sit in the top bits, so one mask serves.
        let mask = match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        net & mask == host & mask
    }

    /// This host's own address in the network: the source address the
    /// kernel picks for a datagram to it (no datagram is sent).
    pub fn own_address(&self) -> Result<IpAddr, String> {
        let any: SocketAddr = match self.addr {
            IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let probe = UdpSocket::bind(any).map_err(|e| format!("a probe socket: {e}"))?;
        probe
            .connect((self.addr, 9))
            .map_err(|e| format!("no route to {}/{}: {e}", self.addr, self.prefix))?;
        let own = probe
            .local_addr()
            .map_err(|e| format!("the probe's address: {e}"))?
            .ip();
        if self.contains(own) {
            Ok(own)
        } else {
            Err(format!(
                "this host has no address in {}/{} (it reaches it from {own})",
                self.addr, self.prefix
            ))
        }
    }
}

impl Args {
    /// Settles the migration address: given, or this host's own in
    /// `--migration-network`.
    pub fn resolve_migration_address(&mut self) -> Result<(), String> {
        if let (None, Some(net)) = (&self.migration_address, self.migration_network) {
            self.migration_address = Some(net.own_address()?.to_string());
        }
        Ok(())
    }

    /// The migration address (after [`Args::resolve_migration_address`]).
    pub fn migration_address(&self) -> &str {
        self.migration_address.as_deref().unwrap_or_default()
    }

    /// The libvirt URI other nodes' daemons reach this one on.
    pub fn peer_libvirt_uri(&self) -> String {
        let host = uri_host(self.migration_address());
        match (self.peer_transport, &self.peer_pki_path) {
            (PeerTransport::Tcp, _) => format!("qemu+tcp://{host}/system"),
            (PeerTransport::Tls, None) => format!("qemu+tls://{host}/system"),
            (PeerTransport::Tls, Some(pki)) => {
                format!("qemu+tls://{host}/system?pkipath={pki}")
            }
        }
    }

    /// The URI QEMU on a source node sends the migration stream to.
    pub fn migration_uri(&self) -> String {
        format!("tcp://{}", uri_host(self.migration_address()))
    }

    /// The endpoint peers and the controller use.
    pub fn endpoint(&self) -> String {
        self.advertise_endpoint.clone().unwrap_or_else(|| {
            let scheme = if self.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!(
                "{scheme}://{}:{}",
                self.migration_address(),
                self.listen.port()
            )
        })
    }
}

/// An address as the host part of a URI: an IPv6 literal in brackets.
fn uri_host(addr: &str) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_uris_follow_the_transport_and_bracket_ipv6() {
        use clap::Parser;
        // (case, extra flags, migration address, libvirt URI, migration URI)
        let cases: [(&str, &[&str], &str, &str, &str); 5] = [
            (
                "tcp by default",
                &[],
                "10.99.0.2",
                "qemu+tcp://10.99.0.2/system",
                "tcp://10.99.0.2",
            ),
            (
                "tls",
                &["--peer-transport", "tls"],
                "10.99.0.2",
                "qemu+tls://10.99.0.2/system",
                "tcp://10.99.0.2",
            ),
            (
                "tls with a pki path",
                &["--peer-transport", "tls", "--peer-pki-path", "/etc/pki/kvm"],
                "node-b.example",
                "qemu+tls://node-b.example/system?pkipath=/etc/pki/kvm",
                "tcp://node-b.example",
            ),
            (
                "ipv6",
                &[],
                "fd00::2",
                "qemu+tcp://[fd00::2]/system",
                "tcp://[fd00::2]",
            ),
            (
                "tcp ignores a pki path",
                &["--peer-pki-path", "/x"],
                "10.0.0.1",
                "qemu+tcp://10.0.0.1/system",
                "tcp://10.0.0.1",
            ),
        ];
        for (case, extra, addr, libvirt, migration) in cases {
            let mut argv = vec![
                "kvmotion-agent",
                "--node-name",
                "n",
                "--migration-address",
                addr,
            ];
            argv.extend_from_slice(extra);
            let args = Args::try_parse_from(argv).expect(case);
            assert_eq!(args.peer_libvirt_uri(), libvirt, "{case}");
            assert_eq!(args.migration_uri(), migration, "{case}");
        }
    }

    #[test]
    fn a_network_contains_exactly_its_addresses() {
        let net = Network::parse("10.99.0.0/24").unwrap();
        let cases = [
            ("10.99.0.1", true),
            ("10.99.0.255", true),
            ("10.99.1.1", false),
            ("10.98.0.1", false),
            ("::ffff:10.99.0.1", false),
        ];
        for (ip, want) in cases {
            assert_eq!(net.contains(ip.parse().unwrap()), want, "{ip}");
        }
        let all = Network::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.7".parse().unwrap()));
        let v6 = Network::parse("fd00:99::/64").unwrap();
        assert!(v6.contains("fd00:99::2".parse().unwrap()));
        assert!(!v6.contains("fd00:98::2".parse().unwrap()));
    }

    #[test]
    fn malformed_networks_are_refused_naming_the_part() {
        for (s, says) in [
            ("10.99.0.0", "not a CIDR"),
            ("10.99.0/24", "10.99.0"),
            ("10.99.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
        ] {
            let e = Network::parse(s).unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn the_own_address_of_loopback_is_found_and_a_foreign_network_refused() {
        let lo = Network::parse("127.0.0.0/8").unwrap();
        assert_eq!(
            lo.own_address().unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        // Reached through a route from another address, if at all: a host
        // holds that one address only if it was given it.
        let far = Network::parse("203.0.113.77/32").unwrap();
        assert!(far.own_address().is_err());
    }
}
