//! The server side: the version floor, connecting as a broker identity, and rendering a
//! nats-server configuration (one node or a cluster node, JetStream with
//! `sync_interval: always` so an acknowledged append is on disk, and the generated
//! authorization).

use std::fmt::Write as _;
use std::time::Duration;

use crate::error::BrokerError;
use crate::subject::Filter;

/// Oldest nats-server accepted: older servers silently ignore fields they do not know
/// (Debian's 2.9 drops multi-subject consumer filters and delivers everything).
pub const MIN_SERVER: (u64, u64) = (2, 11);
/// First server version that takes atomic batch publishes.
pub const ATOMIC_BATCH_SERVER: (u64, u64) = (2, 12);

/// Parse `major.minor` out of a server version such as `2.15.1` or `v2.11.0-beta`.
pub fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Who connects to the broker: a party (or operator) with its NATS user nkey seed. Replies
/// arrive under its own inbox prefix `_INBOX_<id>.`, the only subjects it may subscribe to.
#[derive(Clone)]
pub struct BrokerIdentity {
    /// Party or operator id.
    pub id: String,
    /// NATS user nkey seed (`SU…`).
    pub nkey_seed: String,
}

impl std::fmt::Debug for BrokerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The environment variable naming the CA file (PEM) a NATS connection trusts; when it is set,
/// every connection requires TLS.
pub const NATS_CA_ENV: &str = "HRU_NATS_CA";

/// Connect to NATS (as `identity`, when given; `url` may list several servers, comma-separated)
/// and refuse servers older than the floor.
pub async fn connect(url: &str, identity: Option<&BrokerIdentity>) -> Result<async_nats::Client, BrokerError> {
    let mut options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
    // A server with TLS for clients: trust its CA, and require TLS.
    if let Some(ca) = std::env::var_os(NATS_CA_ENV).filter(|v| !v.is_empty()) {
        options = options
            .add_root_certificates(std::path::PathBuf::from(ca))
            .require_tls(true);
    }
    if let Some(id) = identity {
        options = options
            .nkey(id.nkey_seed.clone())
            .custom_inbox_prefix(Filter::inbox_prefix(&id.id));
    }
    let connect_error = |source: Box<dyn std::error::Error + Send + Sync>| BrokerError::Connect {
        url: url.to_owned(),
        source,
    };
    let addrs = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| connect_error(Box::new(e)))?;
    let client = options.connect(addrs).await.map_err(|e| connect_error(Box::new(e)))?;
    let version = client.server_info().version;
    match major_minor(&version) {
        Some(v) if v >= MIN_SERVER => Ok(client),
        _ => Err(BrokerError::ServerTooOld { found: version }),
    }
}

/// TLS for a server's client or route connections: its certificate and key, and the CA whose
/// certificates it accepts from the other side (required: with it, a peer without a
/// certificate from that CA is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificate file (PEM).
    pub cert: String,
    /// Private key file (PEM).
    pub key: String,
    /// CA file (PEM) the peers' certificates must chain to.
    pub ca: String,
    /// Whether the peer must present a certificate from `ca` (always for routes).
    pub verify: bool,
}

impl ServerTls {
    fn render(&self, out: &mut String, indent: &str) {
        let _ = writeln!(out, "{indent}tls {{");
        let _ = writeln!(out, "{indent}  cert_file: {}", quoted(&self.cert));
        let _ = writeln!(out, "{indent}  key_file: {}", quoted(&self.key));
        let _ = writeln!(out, "{indent}  ca_file: {}", quoted(&self.ca));
        if self.verify {
            let _ = writeln!(out, "{indent}  verify: true");
        }
        let _ = writeln!(out, "{indent}  timeout: 5");
        let _ = writeln!(out, "{indent}}}");
    }
}

/// A cluster a node belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Cluster name, shared by every node.
    pub name: String,
    /// Route listen address, e.g. `0.0.0.0:6222`.
    pub listen: String,
    /// Routes to the other nodes, e.g. `nats-route://n2:6222`.
    pub routes: Vec<String>,
    /// Mutual TLS on routes: only a server with a certificate from the cluster CA joins.
    pub tls: Option<ServerTls>,
    /// The route address the node tells its peers to reach it at, when not its listen address
    /// (behind a proxy or a NAT).
    pub advertise: Option<String>,
    /// Do not tell clients of the cluster's other servers (a client uses only the URLs it is
    /// given).
    pub no_advertise: bool,
}

/// One nats-server node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeConfig {
    /// Server name (unique in a cluster); the server makes one up when absent.
    pub server_name: Option<String>,
    /// Client listen address, e.g. `0.0.0.0:4222` (`127.0.0.1:-1`: any free port).
    pub listen: String,
    /// Monitoring listen address (health checks), e.g. `0.0.0.0:8222`.
    pub http: Option<String>,
    /// Directory the server writes its chosen ports to (with `-1` ports).
    pub ports_file_dir: Option<String>,
    /// JetStream store directory.
    pub store_dir: String,
    /// `sync_interval: always` (true) or the server's default.
    pub sync_always: bool,
    /// Cluster membership.
    pub cluster: Option<ClusterConfig>,
    /// TLS for client connections (every client must then use TLS).
    pub tls: Option<ServerTls>,
    /// File with the generated `accounts` block (`hru policy nats-config`), relative to the
    /// config file, included as is.
    pub authorization: Option<String>,
    /// Configuration appended verbatim (for example an inline `accounts` block).
    pub extra: String,
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Render a node's configuration file.
pub fn render(node: &NodeConfig) -> String {
    let mut out = String::from("# Generated by `hru log server-config`. Do not edit: generate again.\n");
    if let Some(name) = &node.server_name {
        let _ = writeln!(out, "server_name: {}", quoted(name));
    }
    let _ = writeln!(out, "listen: {}", quoted(&node.listen));
    if let Some(http) = &node.http {
        let _ = writeln!(out, "http: {}", quoted(http));
    }
    if let Some(dir) = &node.ports_file_dir {
        let _ = writeln!(out, "ports_file_dir: {}", quoted(dir));
    }
    let _ = writeln!(out, "jetstream {{");
    let _ = writeln!(out, "  store_dir: {}", quoted(&node.store_dir));
    if node.sync_always {
        let _ = writeln!(out, "  # Every write is synced before it is acknowledged.");
        let _ = writeln!(out, "  sync_interval: always");
    }
    let _ = writeln!(out, "}}");
    if let Some(tls) = &node.tls {
        let _ = writeln!(out, "# Clients connect over TLS only.");
        tls.render(&mut out, "");
    }
    if let Some(c) = &node.cluster {
        let routes: Vec<String> = c.routes.iter().map(|r| quoted(r)).collect();
        let _ = writeln!(out, "cluster {{");
        let _ = writeln!(out, "  name: {}", quoted(&c.name));
        let _ = writeln!(out, "  listen: {}", quoted(&c.listen));
        let _ = writeln!(out, "  routes: [{}]", routes.join(", "));
        if let Some(advertise) = &c.advertise {
            let _ = writeln!(out, "  advertise: {}", quoted(advertise));
        }
        if c.no_advertise {
            let _ = writeln!(out, "  no_advertise: true");
        }
        if let Some(tls) = &c.tls {
            let _ = writeln!(
                out,
                "  # Routes are mutual TLS: a server without a certificate from the cluster CA"
            );
            let _ = writeln!(out, "  # cannot join (and so cannot bypass the account's permissions).");
            ServerTls {
                verify: true,
                ..tls.clone()
            }
            .render(&mut out, "  ");
        }
        let _ = writeln!(out, "}}");
    }
    if let Some(auth) = &node.authorization {
        let _ = writeln!(out, "include {}", quoted(auth));
    }
    out.push_str(&node.extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_node_has_its_routes_and_syncs_always() {
        let text = render(&NodeConfig {
            server_name: Some("n1".into()),
            listen: "0.0.0.0:4222".into(),
            http: Some("0.0.0.0:8222".into()),
            store_dir: "/data/jetstream".into(),
            sync_always: true,
            cluster: Some(ClusterConfig {
                name: "hru".into(),
                listen: "0.0.0.0:6222".into(),
                routes: vec!["nats-route://n2:6222".into(), "nats-route://n3:6222".into()],
                tls: None,
                advertise: None,
                no_advertise: false,
            }),
            authorization: Some("auth.conf".into()),
            ..Default::default()
        });
        assert!(text.contains("sync_interval: always"));
        assert!(text.contains("routes: [\"nats-route://n2:6222\", \"nats-route://n3:6222\"]"));
        assert!(text.contains("include \"auth.conf\""));
    }

    #[test]
    fn versions_below_the_floor_are_refused() {
        assert_eq!(major_minor("v2.11.0-beta.1"), Some((2, 11)));
        assert!(major_minor("2.9.25").is_some_and(|v| v < MIN_SERVER));
        assert!(major_minor("2.15.1").is_some_and(|v| v >= MIN_SERVER));
    }
}
