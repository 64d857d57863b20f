//! The gateway's layered settings: defaults → TOML file → `HRU_*` environment → flags →
//! validation naming the key (the same loader as the node and the geofence).

use std::path::PathBuf;
use std::time::Duration;

use hru_domain::PartyId;
use hru_runtime::ConfigError;
use serde::Deserialize;

use crate::GatewayConfig;

/// The gateway's settings (TOML; see [`GatewaySettings::ENV`] for environment overrides).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// The party sealing (the EM vendor).
    #[serde(default = "default_party")]
    pub party: String,
    /// Directory with the party's secret key file.
    #[serde(default)]
    pub keys_dir: Option<PathBuf>,
    /// Directory with directory.toml and the agreements.
    #[serde(default = "default_policies")]
    pub policies_dir: PathBuf,
    /// NATS URL(s), comma-separated.
    #[serde(default = "default_nats")]
    pub nats_url: String,
    /// Fixes per batch at most.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Milliseconds the oldest fix may wait for its batch.
    #[serde(default = "default_linger")]
    pub linger_ms: u64,
    /// Milliseconds without fixes after which an empty batch (a heartbeat) goes out.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// The gateway's stable identity: the same across restarts, one per gateway process (the
    /// geofence waits for each gateway's heartbeats; a retired one with `hru gateway retire`).
    /// Default: this machine's host name.
    #[serde(default = "default_gateway_id")]
    pub gateway_id: String,
}

/// This machine's host name, or "gateway" where it cannot be read.
fn default_gateway_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

fn default_party() -> String {
    "em-vendor".into()
}
fn default_policies() -> PathBuf {
    "policies".into()
}
fn default_nats() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_batch() -> usize {
    GatewayConfig::default().batch_size
}
fn default_linger() -> u64 {
    millis(GatewayConfig::default().linger)
}
fn default_heartbeat() -> u64 {
    millis(GatewayConfig::default().heartbeat)
}
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl hru_runtime::Settings for GatewaySettings {
    const ENV: &'static [(&'static str, &'static str)] = &[
        ("HRU_NATS_URL", "nats_url"),
        ("HRU_POLICIES", "policies_dir"),
        ("HRU_GATEWAY_PARTY", "party"),
        ("HRU_GATEWAY_KEYS", "keys_dir"),
        ("HRU_GATEWAY_ID", "gateway_id"),
    ];

    fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str, message: String| ConfigError::key("", k, message);
        PartyId::parse(&self.party, "party").map_err(|e| key("party", e.problem))?;
        let id_ok = !self.gateway_id.is_empty()
            && self.gateway_id.len() <= 64
            && self
                .gateway_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !id_ok {
            return Err(key(
                "gateway_id",
                format!(
                    "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    self.gateway_id
                ),
            ));
        }
        if self.keys_dir.is_none() {
            return Err(key(
                "keys_dir",
                "missing: give the directory holding the party's secret key file (`keys_dir` in the config, \
                 HRU_GATEWAY_KEYS or --keys)"
                    .into(),
            ));
        }
        if self.batch_size == 0 {
            return Err(key("batch_size", "must be at least 1".into()));
        }
        if self.heartbeat_ms == 0 {
            return Err(key("heartbeat_ms", "must be at least 1".into()));
        }
        if self.nats_url.trim().is_empty() {
            return Err(key("nats_url", "must name at least one server".into()));
        }
        Ok(())
    }
}

impl GatewaySettings {
    /// Load from the TOML `text` (named `source`), the environment (`env`) and `flags`
    /// (dotted key, value), then validate.
    pub fn load(
        text: &str,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
        flags: &[(&str, String)],
    ) -> Result<Self, ConfigError> {
        hru_runtime::load(text, source, env, flags)
    }

    /// The party (checked by validation).
    pub fn party_id(&self) -> Result<PartyId, ConfigError> {
        PartyId::parse(&self.party, "party").map_err(|e| ConfigError::key("gateway settings", "party", e.problem))
    }

    /// The batching settings.
    pub fn batching(&self) -> GatewayConfig {
        GatewayConfig {
            batch_size: self.batch_size,
            linger: Duration::from_millis(self.linger_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().find(|(v, _)| *v == k).map(|(_, x)| (*x).to_owned())
    }

    #[test]
    fn layers_apply_in_order() {
        let text = "keys_dir = \"/k\"\nbatch_size = 10\nlinger_ms = 5\nnats_url = \"nats://file:4222\"\n";
        let s = GatewaySettings::load(
            text,
            "gateway.toml",
            env(&[("HRU_NATS_URL", "nats://env:4222")]),
            &[("batch_size", "20".into())],
        )
        .unwrap();
        assert_eq!(s.nats_url, "nats://env:4222", "environment over file");
        assert_eq!(s.batch_size, 20, "flag over file");
        assert_eq!(s.linger_ms, 5, "file over default");
        assert_eq!(s.party, "em-vendor", "default");
        assert_eq!(s.batching().heartbeat, GatewayConfig::default().heartbeat);
    }

    #[test]
    fn errors_name_the_key_and_where_it_came_from() {
        let e = GatewaySettings::load(
            "keys_dir = \"/k\"\n",
            "gateway.toml",
            env(&[]),
            &[("batch_size", "0".into())],
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("batch_size"));
        assert!(e.to_string().contains("flag --batch-size"), "{e}");

        let e = GatewaySettings::load("", "gateway.toml", env(&[]), &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("keys_dir"));
        assert!(e.to_string().contains("--keys"), "{e}");

        let e = GatewaySettings::load("keys_dir = \"/k\"\nparty = \"Not A Party\"\n", "gw.toml", env(&[]), &[])
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("party"));
        assert!(e.to_string().starts_with("gw.toml"), "{e}");

        let e = GatewaySettings::load("keys_dir = \"/k\"\nbatch = 3\n", "gw.toml", env(&[]), &[]).unwrap_err();
        assert!(e.to_string().contains("batch"), "unknown keys are refused: {e}");
    }
}
