//! The node's configuration, layered by `hru_runtime::config`: defaults, the TOML file,
//! `HRU_*` environment overrides, then checks that name the key at fault.

use std::path::PathBuf;

use serde::Deserialize;

/// Environment override of `nats_url`.
pub const ENV_NATS_URL: &str = "HRU_NATS_URL";
/// Environment override of `listen`.
pub const ENV_LISTEN: &str = "HRU_NODE_LISTEN";

/// A node's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The party this node serves.
    pub party: String,
    /// Producer instance name of this node.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Directory with the party's secret key file.
    pub keys_dir: PathBuf,
    /// Directory with directory.toml and the agreements.
    pub policies_dir: PathBuf,
    /// Projection and producer stores.
    pub data_dir: PathBuf,
    /// The party's period chains (decision 010), replaced as periods expire; default
    /// `<keys_dir>/<party>.periods.toml`. Set it on writable storage when `keys_dir` is not.
    #[serde(default)]
    pub periods_file: Option<PathBuf>,
    /// NATS URL(s), comma-separated.
    #[serde(default = "default_nats")]
    pub nats_url: String,
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Prometheus metrics listen address (`GET /metrics`); none: no metrics endpoint.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Mutual TLS files.
    pub tls: TlsConfig,
    /// Partner nodes this node may forward disclosure requests to: party id = `https://host:port`.
    #[serde(default)]
    pub partners: std::collections::BTreeMap<String, String>,
    /// Seconds between heartbeats on an idle breach stream.
    #[serde(default = "default_heartbeat")]
    pub breach_heartbeat_s: u64,
    /// Seconds between signed checkpoints of this node's chain head (0: none).
    #[serde(default = "default_checkpoint")]
    pub checkpoint_every_s: u64,
    /// Streams (Subscribe, StreamBreaches) one calling party may hold open at once; one more
    /// is answered RESOURCE_EXHAUSTED.
    #[serde(default = "default_streams")]
    pub max_streams_per_party: usize,
    /// Seconds between retention sweeps: expired keys destroyed, the party's period keys kept,
    /// projections folded again when an epoch expired or a legal hold's keys arrived.
    #[serde(default = "default_sweep")]
    pub retention_sweep_s: u64,
    /// Seconds without a geofence heartbeat after which a node whose party receives breaches
    /// reports the geofence silent (on its breach streams and metrics).
    #[serde(default = "default_geofence_silent")]
    pub geofence_silent_after_s: u64,
    /// The people's page (the control room's live breach board), served over HTTPS with the
    /// node's certificate to people who sign in with OpenID Connect; none: no page.
    #[serde(default)]
    pub page: Option<PageConfig>,
    /// Probation's delivery units: unit name → the referral areas it covers (the caseload
    /// view groups by them; an area none lists is "unassigned").
    #[serde(default)]
    pub delivery_units: std::collections::BTreeMap<String, Vec<String>>,
}

/// The people's page: where it listens, the identity provider people sign in with, and
/// whose people it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageConfig {
    /// HTTPS listen address.
    pub listen: String,
    /// Where browsers reach the page (`https://host:port`); the identity provider sends people
    /// back to `<public_url>/auth/callback`.
    pub public_url: String,
    /// The OpenID Connect issuer (its discovery document is `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// This page's client id at the issuer.
    pub client_id: String,
    /// A file holding the client secret; none: a public client (PKCE alone).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// PEM certificates to trust for the issuer's HTTPS besides the system's.
    #[serde(default)]
    pub issuer_ca: Option<PathBuf>,
    /// The ID token claim naming the person's party; a person whose claim is not this node's
    /// party is refused.
    #[serde(default = "default_party_claim")]
    pub party_claim: String,
    /// The purpose the page's reads and acknowledgements are made for (the agreement's
    /// `[[call]]` rule for this party must allow it).
    pub purpose: String,
    /// Seconds a sign-in lasts (then the person signs in again).
    #[serde(default = "default_session")]
    pub session_s: u64,
}

fn default_party_claim() -> String {
    "hru_party".into()
}
fn default_session() -> u64 {
    12 * 3600
}

/// Mutual TLS files (PEM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The deployment CA that issued every party's certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

fn default_heartbeat() -> u64 {
    5
}
fn default_streams() -> usize {
    64
}
fn default_checkpoint() -> u64 {
    300
}
fn default_sweep() -> u64 {
    3600
}
fn default_geofence_silent() -> u64 {
    15
}
fn default_instance() -> String {
    "node-1".into()
}
fn default_nats() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_listen() -> String {
    "127.0.0.1:7443".into()
}

/// A configuration error naming the key.
pub type ConfigError = hru_runtime::ConfigError;

impl hru_runtime::Settings for NodeConfig {
    const ENV: &'static [(&'static str, &'static str)] = &[(ENV_NATS_URL, "nats_url"), (ENV_LISTEN, "listen")];

    fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str, message: String| ConfigError::key("", k, message);
        hru_domain::PartyId::parse(&self.party, "party").map_err(|e| key("party", e.problem))?;
        if let Some(m) = &self.metrics_listen
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(key("metrics_listen", format!("{m:?} is not host:port")));
        }
        for (party, url) in &self.partners {
            hru_domain::PartyId::parse(party, "partners").map_err(|e| key(&format!("partners.{party}"), e.problem))?;
            if !url.starts_with("https://") {
                return Err(key(
                    &format!("partners.{party}"),
                    format!("{url:?} must be an https:// URL"),
                ));
            }
        }
        if self.max_streams_per_party == 0 {
            return Err(key("max_streams_per_party", "must be at least 1".into()));
        }
        if self.retention_sweep_s == 0 {
            return Err(key("retention_sweep_s", "must be at least 1".into()));
        }
        if self.geofence_silent_after_s == 0 {
            return Err(key("geofence_silent_after_s", "must be at least 1".into()));
        }
        if self.breach_heartbeat_s == 0 {
            return Err(key("breach_heartbeat_s", "must be at least 1".into()));
        }
        if let Some(page) = &self.page {
            if page.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(key("page.listen", format!("{:?} is not host:port", page.listen)));
            }
            for (k, url) in [("page.public_url", &page.public_url), ("page.issuer", &page.issuer)] {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(key(k, format!("{url:?} is not an http(s):// URL")));
                }
            }
            if !page.public_url.starts_with("https://") {
                return Err(key(
                    "page.public_url",
                    format!("{:?} must be https:// (the page is served over TLS)", page.public_url),
                ));
            }
            // Plain HTTP to an identity provider only on this machine (a local test provider).
            let host = reqwest::Url::parse(&page.issuer)
                .map_err(|e| key("page.issuer", format!("{:?} is not a URL: {e}", page.issuer)))?
                .host_str()
                .unwrap_or_default()
                .to_owned();
            let local = ["127.0.0.1", "localhost", "[::1]"].contains(&host.as_str());
            if page.issuer.starts_with("http://") && !local {
                return Err(key(
                    "page.issuer",
                    format!(
                        "{:?}: an identity provider off this machine must be https://",
                        page.issuer
                    ),
                ));
            }
            for (k, v) in [
                ("page.client_id", &page.client_id),
                ("page.purpose", &page.purpose),
                ("page.party_claim", &page.party_claim),
            ] {
                if v.trim().is_empty() {
                    return Err(key(k, "must not be empty".into()));
                }
            }
            if !(1..=7 * 24 * 3600).contains(&page.session_s) {
                return Err(key("page.session_s", "must be from 1 s to 7 days".into()));
            }
            for (k, path) in [
                ("page.client_secret_file", &page.client_secret_file),
                ("page.issuer_ca", &page.issuer_ca),
            ] {
                if let Some(path) = path
                    && !path.exists()
                {
                    return Err(key(k, format!("{} does not exist", path.display())));
                }
            }
        }
        let mut seen: std::collections::BTreeMap<String, &str> = std::collections::BTreeMap::new();
        for (unit, areas) in &self.delivery_units {
            if unit.trim().is_empty() || areas.is_empty() {
                return Err(key(
                    &format!("delivery_units.{unit}"),
                    "give a unit name and the areas it covers".into(),
                ));
            }
            for area in areas {
                if let Some(other) = seen.insert(area.trim().to_lowercase(), unit) {
                    return Err(key(
                        &format!("delivery_units.{unit}"),
                        format!("area {area:?} is already covered by {other:?}; an area belongs to one unit"),
                    ));
                }
            }
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(key("listen", format!("{:?} is not host:port", self.listen)));
        }
        for (k, path) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if !path.exists() {
                return Err(key(k, format!("{} does not exist", path.display())));
            }
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Parse `text` (from `source_name`), apply `HRU_*` environment overrides (`env` looks a
    /// variable up), and check it.
    pub fn load(text: &str, source_name: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        hru_runtime::load(text, source_name, env, &[])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A node config whose files exist, with `page` as its `[page]` table.
    fn load(page: &str) -> Result<NodeConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, "x").unwrap();
            p.display().to_string()
        };
        let text = format!(
            "party = \"police-control\"\nkeys_dir = \"k\"\npolicies_dir = \"p\"\ndata_dir = \"d\"\n\
             [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n{page}",
            file("ca.pem"),
            file("c.pem"),
            file("c.key")
        );
        NodeConfig::load(&text, "node.toml", |_| None).map_err(|e| e.to_string())
    }

    const PAGE: &str = "[page]\nlisten = \"127.0.0.1:8443\"\npublic_url = \"https://127.0.0.1:8443\"\n\
                        issuer = \"https://login.example\"\nclient_id = \"ops\"\npurpose = \"breach-response\"\n";

    #[test]
    fn every_node_config_the_deployment_ships_is_a_node_config() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nodes");
        let mut parties = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let config: NodeConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                path.file_stem().unwrap().to_str().unwrap(),
                config.party,
                "{} is named for its party",
                path.display()
            );
            parties.push(config.party);
        }
        parties.sort();
        assert_eq!(
            parties,
            [
                "cwp",
                "evaluation",
                "mersey-care",
                "police-control",
                "police-hru",
                "probation",
                "victim-advocacy"
            ]
        );
    }

    #[test]
    fn delivery_units_cover_each_area_once() {
        let units = "[delivery_units]\nNorth = [\"Warrington\", \"Halton\"]\nEast = [\"Cheshire East\"]\n";
        let config = load(units).unwrap();
        assert_eq!(config.delivery_units["North"], ["Warrington", "Halton"]);
        let err = load(&format!("{units}West = [\"halton\"]\n")).unwrap_err();
        assert!(err.contains("delivery_units.West") && err.contains("North"), "{err}");
        let err = load("[delivery_units]\nNorth = []\n").unwrap_err();
        assert!(err.contains("delivery_units.North"), "{err}");
    }

    #[test]
    fn a_page_is_configured_in_full_or_refused_naming_the_key() {
        let page = load(PAGE).unwrap().page.unwrap();
        assert_eq!((page.party_claim.as_str(), page.session_s), ("hru_party", 43_200));
        assert!(load("").unwrap().page.is_none(), "no [page]: no page");
        for (change, key) in [
            (("listen = \"127.0.0.1:8443\"", "listen = \"8443\""), "page.listen"),
            (
                (
                    "public_url = \"https://127.0.0.1:8443\"",
                    "public_url = \"http://127.0.0.1:8443\"",
                ),
                "page.public_url",
            ),
            (
                (
                    "issuer = \"https://login.example\"",
                    "issuer = \"http://login.example\"",
                ),
                "page.issuer",
            ),
            (("client_id = \"ops\"", "client_id = \" \""), "page.client_id"),
            (
                (
                    "purpose = \"breach-response\"\n",
                    "purpose = \"breach-response\"\nsession_s = 0\n",
                ),
                "page.session_s",
            ),
            (
                (
                    "client_id = \"ops\"",
                    "client_id = \"ops\"\nclient_secret_file = \"/nowhere\"",
                ),
                "page.client_secret_file",
            ),
        ] {
            let err = load(&PAGE.replace(change.0, change.1)).unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
        }
        // A provider on this machine may speak plain HTTP (a local test provider); a typo'd key is named.
        assert!(load(&PAGE.replace("https://login.example", "http://127.0.0.1:9000")).is_ok());
        for lookalike in ["http://localhost.evil.example", "http://127.0.0.1.nip.io:9000"] {
            let err = load(&PAGE.replace("https://login.example", lookalike)).unwrap_err();
            assert!(err.contains("page.issuer"), "{lookalike}: {err}");
        }
        let err = load(&PAGE.replace("purpose", "purpse")).unwrap_err();
        assert!(err.contains("purpse"), "{err}");
        let err = load(&PAGE.replace("client_id = \"ops\"\n", "")).unwrap_err();
        assert!(err.contains("client_id"), "{err}");
    }
}
