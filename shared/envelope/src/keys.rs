//! Party keys: secrets a node holds, and the public directory every verifier reads.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use hpke::{Deserializable as _, Kem as _, Serializable as _};
use hru_domain::{KeyId, PartyId};
use rand_core::{CryptoRng, RngCore};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::primitives::Kem;

/// The key id of a public key: the first 8 bytes of its SHA-256.
pub fn key_id(public: &[u8]) -> KeyId {
    let h = Sha256::digest(public);
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[..8]);
    KeyId(id)
}

/// A party's secret keys: ed25519 for signing, X25519 for receiving epoch keys.
pub struct PartySecrets {
    /// The party.
    pub party: PartyId,
    /// Signing key.
    pub signing: SigningKey,
    /// HPKE (X25519) secret key.
    pub encryption: <Kem as hpke::Kem>::PrivateKey,
    /// NATS user nkey seed (`SU…`): broker credentials, separate from the signing key so a
    /// broker's login challenge can never be an envelope digest.
    pub nats_seed: String,
}

impl PartySecrets {
    /// The broker identity these secrets log in as.
    pub fn broker_identity(&self) -> hru_broker::BrokerIdentity {
        hru_broker::BrokerIdentity {
            id: self.party.to_string(),
            nkey_seed: self.nats_seed.clone(),
        }
    }
}

impl std::fmt::Debug for PartySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartySecrets")
            .field("party", &self.party)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    party: String,
    signing: String,
    encryption: String,
    nats: String,
}

impl PartySecrets {
    /// Fresh keys for `party`.
    pub fn generate(party: PartyId, rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let signing = SigningKey::generate(rng);
        let (encryption, _) = Kem::gen_keypair(&mut crate::primitives::HpkeRng(rng));
        let mut nkey_seed = [0u8; 32];
        rng.fill_bytes(&mut nkey_seed);
        Self {
            party,
            signing,
            encryption,
            nats_seed: nats_seed_from(&nkey_seed),
        }
    }

    /// The ed25519 public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The X25519 public key.
    pub fn encryption_public(&self) -> <Kem as hpke::Kem>::PublicKey {
        Kem::sk_to_pk(&self.encryption)
    }

    /// Key id of the signing key.
    pub fn signing_key_id(&self) -> KeyId {
        key_id(self.verifying_key().as_bytes())
    }

    /// The X25519 public key's 32 bytes (as the directory and a `KeyRotated` carry it).
    pub fn encryption_public_bytes(&self) -> [u8; 32] {
        self.encryption_public().to_bytes().into()
    }

    /// Key id of the encryption key.
    pub fn encryption_key_id(&self) -> KeyId {
        key_id(&self.encryption_public().to_bytes())
    }

    /// The NATS user public nkey (`U…`) for the broker's authorization config.
    pub fn nats_user(&self) -> String {
        nkeys::KeyPair::from_seed(&self.nats_seed)
            .map(|k| k.public_key())
            .unwrap_or_default()
    }

    /// The secret file's text (keep it mode 0600; never commit it).
    pub fn to_toml(&self) -> String {
        format!(
            "# HRU Backbone secret keys of {party}. Keep private (mode 0600).\nparty = \"{party}\"\nsigning = \"{}\"\nencryption = \"{}\"\nnats = \"{}\"\n",
            B64.encode(self.signing.to_bytes()),
            B64.encode(self.encryption.to_bytes()),
            self.nats_seed,
            party = self.party,
        )
    }

    /// Parse a secret file written by [`PartySecrets::to_toml`]; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, DirectoryError> {
        let file: SecretsFile = toml::from_str(text).map_err(|e| DirectoryError::from_toml(source, text, &e))?;
        let at = |field: &str, message: String| DirectoryError {
            file: source.to_owned(),
            line: 0,
            column: 0,
            message: format!("`{field}` {message}"),
        };
        let party = PartyId::parse(&file.party, "party").map_err(|e| at("party", e.problem))?;
        let signing: [u8; 32] = decode_32(&file.signing).map_err(|m| at("signing", m))?;
        let encryption = decode_32(&file.encryption)
            .ok()
            .and_then(|b| <Kem as hpke::Kem>::PrivateKey::from_bytes(&b).ok())
            .ok_or_else(|| at("encryption", "is not a base64 X25519 secret key".into()))?;
        if nkeys::KeyPair::from_seed(&file.nats).is_err() {
            return Err(at("nats", "is not a NATS user nkey seed (SU…)".into()));
        }
        Ok(Self {
            party,
            signing: SigningKey::from_bytes(&signing),
            encryption,
            nats_seed: file.nats,
        })
    }

    /// The public lines for `policies/directory.toml`.
    pub fn directory_entry(&self, controller: &str) -> String {
        format!(
            "[[party]]\nid = \"{}\"\ncontroller = \"{}\"\nencryption_key = \"x25519:{}\"\nnats_user = \"{}\"\n\n[[party.signing_key]]\nkey = \"ed25519:{}\"\n",
            self.party,
            controller,
            B64.encode(self.encryption_public().to_bytes()),
            self.nats_user(),
            B64.encode(self.verifying_key().as_bytes()),
        )
    }
}

/// A paired victim device's secret: the nkey it connects to the broker with, to read its own
/// alerts and record its receipts. A device signs nothing and opens nothing.
#[derive(Clone)]
pub struct DeviceSecret {
    /// The device.
    pub device: hru_domain::DeviceId,
    /// NATS user nkey seed (`SU…`).
    pub nats_seed: String,
}

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSecret")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceSecretFile {
    device: String,
    nats: String,
}

impl DeviceSecret {
    /// A fresh identity for `device`.
    pub fn generate(device: hru_domain::DeviceId, rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self {
            device,
            nats_seed: nats_seed_from(&seed),
        }
    }

    /// The NATS user public nkey (`U…`).
    pub fn nats_user(&self) -> String {
        nkeys::KeyPair::from_seed(&self.nats_seed)
            .map(|k| k.public_key())
            .unwrap_or_default()
    }

    /// The secret file's text (keep it mode 0600, on the device).
    pub fn to_toml(&self) -> String {
        format!(
            "# HRU Backbone alert device {device}. Keep private (mode 0600).\ndevice = \"{device}\"\nnats = \"{}\"\n",
            self.nats_seed,
            device = self.device
        )
    }

    /// Parse a file written by [`DeviceSecret::to_toml`]; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, DirectoryError> {
        let file: DeviceSecretFile = toml::from_str(text).map_err(|e| DirectoryError::from_toml(source, text, &e))?;
        let at = |field: &str, message: String| DirectoryError {
            file: source.to_owned(),
            line: 0,
            column: 0,
            message: format!("`{field}` {message}"),
        };
        let device = hru_domain::DeviceId::parse(&file.device, "device").map_err(|e| at("device", e.problem))?;
        if nkeys::KeyPair::from_seed(&file.nats).is_err() {
            return Err(at("nats", "is not a NATS user nkey seed (SU…)".into()));
        }
        Ok(Self {
            device,
            nats_seed: file.nats,
        })
    }

    /// The device's lines for `policies/directory.toml`.
    pub fn directory_entry(&self) -> String {
        format!(
            "[[device]]\nid = \"{}\"\nnats_user = \"{}\"\n",
            self.device,
            self.nats_user()
        )
    }
}

/// Create `path` (and any missing parents) so that only its owner can enter it (mode 0700):
/// how every directory holding secrets or plaintext is made (key directories, producer and
/// projection stores). An existing directory is left as it is.
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Encode 32 seed bytes as a NATS user nkey seed.
pub(crate) fn nats_seed_from(seed: &[u8; 32]) -> String {
    nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, *seed)
        .and_then(|k| k.seed())
        .unwrap_or_else(|e| unreachable!("32 raw bytes always make a user nkey: {e}"))
}

fn decode_32(s: &str) -> Result<[u8; 32], String> {
    let bytes = B64.decode(s.trim()).map_err(|e| format!("is not base64 ({e})"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("must decode to 32 bytes, got {}", b.len()))
}

/// A directory or key file error, with the file, line and column it points at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct DirectoryError {
    /// File name.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// What is wrong and what to do.
    pub message: String,
}

impl DirectoryError {
    pub(crate) fn at(source: &str, text: &str, offset: usize, message: String) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self {
            file: source.to_owned(),
            line,
            column,
            message,
        }
    }

    pub(crate) fn from_toml(source: &str, text: &str, e: &toml::de::Error) -> Self {
        let offset = e.span().map_or(0, |s| s.start);
        Self::at(source, text, offset, e.message().to_owned())
    }
}

/// One signing key of a party, with its validity period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyEntry {
    /// Key id.
    pub key_id: KeyId,
    /// Public key.
    pub key: VerifyingKey,
    /// Valid from (Unix ms), if bounded.
    pub valid_from_ms: Option<i64>,
    /// Valid until (Unix ms, exclusive), if bounded.
    pub valid_until_ms: Option<i64>,
}

impl SigningKeyEntry {
    /// Whether the key was valid at `at_ms`.
    pub fn valid_at(&self, at_ms: i64) -> bool {
        self.valid_from_ms.is_none_or(|f| at_ms >= f) && self.valid_until_ms.is_none_or(|u| at_ms < u)
    }
}

/// A party's current X25519 public key for receiving epoch keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    /// Key id.
    pub key_id: KeyId,
    /// Public key.
    pub key: <Kem as hpke::Kem>::PublicKey,
}

impl EncryptionKey {
    /// The key of these 32 public bytes, if they are an X25519 public key.
    pub fn from_bytes(public: &[u8; 32]) -> Option<Self> {
        let key = <<Kem as hpke::Kem>::PublicKey as hpke::Deserializable>::from_bytes(public).ok()?;
        Some(Self {
            key_id: key_id(public),
            key,
        })
    }
}

/// A party as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyEntry {
    /// The data controller (agency) the party belongs to.
    pub controller: String,
    /// Signing keys, current and past.
    pub signing: Vec<SigningKeyEntry>,
    /// Encryption key.
    pub encryption: EncryptionKey,
    /// NATS user public nkey (`U…`), when the party connects to the broker.
    pub nats_user: Option<String>,
    /// The party's own TLS CA (PEM), when listed: a node accepts a certificate naming the
    /// party only if this CA issued it.
    pub tls_ca: Option<String>,
}

/// The public party directory (`policies/directory.toml`): enough to verify any envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    parties: BTreeMap<PartyId, PartyEntry>,
    /// Paired victim devices: device id → NATS user public nkey.
    devices: BTreeMap<hru_domain::DeviceId, String>,
    /// Period keys each party published on the log: retention class → month → key.
    periods: BTreeMap<PartyId, BTreeMap<String, BTreeMap<String, EncryptionKey>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryFile {
    #[serde(default)]
    party: Vec<toml::Spanned<PartyRow>>,
    #[serde(default)]
    device: Vec<DeviceRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRow {
    id: toml::Spanned<String>,
    nats_user: toml::Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartyRow {
    id: toml::Spanned<String>,
    controller: String,
    encryption_key: toml::Spanned<String>,
    nats_user: Option<toml::Spanned<String>>,
    tls_ca: Option<toml::Spanned<String>>,
    #[serde(default)]
    signing_key: Vec<SigningRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningRow {
    key: toml::Spanned<String>,
    valid_from: Option<toml::Spanned<String>>,
    valid_until: Option<toml::Spanned<String>>,
}

fn tagged_key(s: &str, prefix: &str) -> Result<[u8; 32], String> {
    let rest = s
        .strip_prefix(prefix)
        .ok_or_else(|| format!("must start with {prefix:?} (the line `hru keys generate` prints)"))?;
    decode_32(rest)
}

fn timestamp_ms(s: &str) -> Result<i64, String> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| format!("is not an RFC 3339 time such as 2026-01-01T00:00:00Z ({e})"))
}

impl Directory {
    /// Parse a directory file; `source` names it in errors (file:line:col).
    pub fn from_toml(text: &str, source: &str) -> Result<Self, DirectoryError> {
        let file: DirectoryFile = toml::from_str(text).map_err(|e| DirectoryError::from_toml(source, text, &e))?;
        let err = |span: std::ops::Range<usize>, message: String| DirectoryError::at(source, text, span.start, message);
        let mut dir = Directory::default();
        for row in file.party {
            let row_span = row.span();
            let row = row.into_inner();
            let party = PartyId::parse(row.id.get_ref(), "id")
                .map_err(|e| err(row.id.span(), format!("party id {}", e.problem)))?;
            let enc = tagged_key(row.encryption_key.get_ref(), "x25519:")
                .and_then(|b| <Kem as hpke::Kem>::PublicKey::from_bytes(&b).map_err(|_| "is not an X25519 key".into()))
                .map_err(|m| err(row.encryption_key.span(), format!("encryption_key {m}")))?;
            if row.signing_key.is_empty() {
                return Err(err(
                    row_span,
                    format!("party {party} has no [[party.signing_key]]; add the line `hru keys generate` printed"),
                ));
            }
            let mut signing = Vec::new();
            for s in row.signing_key {
                let key = tagged_key(s.key.get_ref(), "ed25519:")
                    .and_then(|b| {
                        crate::primitives::public_key(&b)
                            .ok_or_else(|| "is not an ed25519 public key of prime order".to_owned())
                    })
                    .map_err(|m| err(s.key.span(), format!("signing key {m}")))?;
                let bound = |v: &Option<toml::Spanned<String>>, name: &str| -> Result<Option<i64>, DirectoryError> {
                    v.as_ref()
                        .map(|v| timestamp_ms(v.get_ref()).map_err(|m| err(v.span(), format!("{name} {m}"))))
                        .transpose()
                };
                let valid_from_ms = bound(&s.valid_from, "valid_from")?;
                let valid_until_ms = bound(&s.valid_until, "valid_until")?;
                signing.push(SigningKeyEntry {
                    key_id: key_id(key.as_bytes()),
                    key,
                    valid_from_ms,
                    valid_until_ms,
                });
            }
            let nats_user = row
                .nats_user
                .map(|u| match nkeys::from_public_key(u.get_ref()) {
                    Ok(_) if u.get_ref().starts_with('U') => Ok(u.into_inner()),
                    _ => Err(err(u.span(), "nats_user is not a NATS user public nkey (U…)".into())),
                })
                .transpose()?;
            let tls_ca = row
                .tls_ca
                .map(|ca| {
                    if ca.get_ref().contains("-----BEGIN CERTIFICATE-----") {
                        Ok(ca.into_inner())
                    } else {
                        Err(err(
                            ca.span(),
                            format!("tls_ca of {party} is not a PEM certificate; paste the CA certificate `hru keys ca` wrote"),
                        ))
                    }
                })
                .transpose()?;
            let entry = PartyEntry {
                nats_user,
                tls_ca,
                controller: row.controller,
                signing,
                encryption: EncryptionKey {
                    key_id: key_id(&enc.to_bytes()),
                    key: enc,
                },
            };
            if dir.parties.insert(party.clone(), entry).is_some() {
                return Err(err(
                    row.id.span(),
                    format!("party {party} is listed twice; keep one [[party]] table per party"),
                ));
            }
        }
        for row in file.device {
            let id = hru_domain::DeviceId::parse(row.id.get_ref(), "id")
                .map_err(|e| err(row.id.span(), format!("device id {}", e.problem)))?;
            let nkey = row.nats_user.get_ref();
            if !nkey.starts_with('U') || nkeys::KeyPair::from_public_key(nkey).is_err() {
                return Err(err(
                    row.nats_user.span(),
                    format!(
                        "nats_user of device {id} is not a NATS user public nkey (U…); paste the line `hru device pair` printed"
                    ),
                ));
            }
            if dir.devices.insert(id.clone(), nkey.clone()).is_some() {
                return Err(err(
                    row.id.span(),
                    format!("device {id} is listed twice; keep one [[device]] table per device"),
                ));
            }
        }
        Ok(dir)
    }

    /// Add or replace a party (for tools and tests that build a directory in memory).
    pub fn insert(&mut self, party: PartyId, entry: PartyEntry) {
        self.parties.insert(party, entry);
    }

    /// Add a party from its secrets, with an unbounded signing key.
    pub fn insert_secrets(&mut self, secrets: &PartySecrets, controller: &str) {
        let key = secrets.verifying_key();
        let enc = secrets.encryption_public();
        self.insert(
            secrets.party.clone(),
            PartyEntry {
                nats_user: Some(secrets.nats_user()),
                tls_ca: None,
                controller: controller.to_owned(),
                signing: vec![SigningKeyEntry {
                    key_id: key_id(key.as_bytes()),
                    key,
                    valid_from_ms: None,
                    valid_until_ms: None,
                }],
                encryption: EncryptionKey {
                    key_id: key_id(&enc.to_bytes()),
                    key: enc,
                },
            },
        );
    }

    /// A party's entry.
    pub fn party(&self, party: &PartyId) -> Option<&PartyEntry> {
        self.parties.get(party)
    }

    /// Take in period public keys `party` published (decision 010); keys it published before
    /// stay. Refused when the party is not in the directory or a key is not an X25519 key.
    pub fn add_period_keys(
        &mut self,
        party: &PartyId,
        keys: impl IntoIterator<Item = crate::PeriodPublic>,
    ) -> Result<usize, String> {
        if !self.parties.contains_key(party) {
            return Err(format!("{party} is not in the directory"));
        }
        let mut added = 0;
        for (i, k) in keys.into_iter().enumerate() {
            if hru_domain::Retention::parse(&k.class).is_none() {
                return Err(format!("keys[{i}].retention {:?} is not a retention class", k.class));
            }
            if crate::period::next_month(&k.month).is_none() {
                return Err(format!("keys[{i}].month {:?} is not a month YYYY-MM", k.month));
            }
            let key = EncryptionKey::from_bytes(&k.public)
                .ok_or_else(|| format!("keys[{i}].public_key is not an X25519 public key"))?;
            self.periods
                .entry(party.clone())
                .or_default()
                .entry(k.class)
                .or_default()
                .insert(k.month, key);
            added += 1;
        }
        Ok(added)
    }

    /// Whether `party` has published period keys: grants to it are then sealed only to them.
    pub fn publishes_periods(&self, party: &PartyId) -> bool {
        self.periods.get(party).is_some_and(|m| !m.is_empty())
    }

    /// The last month for which `party` has published a period key in every class it
    /// publishes (None when it publishes none).
    pub fn periods_published_through(&self, party: &PartyId) -> Option<&str> {
        self.periods
            .get(party)?
            .values()
            .filter_map(|months| months.keys().next_back())
            .min()
            .map(String::as_str)
    }

    /// The period key `party` published for (`class`, `month`).
    pub fn period_key(&self, party: &PartyId, class: &str, month: &str) -> Option<&EncryptionKey> {
        self.periods.get(party)?.get(class)?.get(month)
    }

    /// The key a grant of `class` for `month` is sealed to for `party`: its period key when it
    /// has published one, else its long-term key. A member that has not published (or whose
    /// holder has not run ahead) never stops a producer recording: its copy is then not
    /// erasable, which `hru retention status` and the audit report.
    pub fn member_key(&self, party: &PartyId, class: &str, month: &str) -> Result<&EncryptionKey, crate::SealError> {
        if hru_domain::Retention::parse(class).is_some()
            && let Some(key) = self.period_key(party, class, month)
        {
            return Ok(key);
        }
        self.party(party)
            .map(|e| &e.encryption)
            .ok_or_else(|| crate::SealError::NoEncryptionKey { party: party.clone() })
    }

    /// Every paired victim device and its NATS user public nkey, sorted by id.
    pub fn devices(&self) -> impl Iterator<Item = (&hru_domain::DeviceId, &str)> {
        self.devices.iter().map(|(d, k)| (d, k.as_str()))
    }

    /// Every party, sorted by id.
    pub fn parties(&self) -> impl Iterator<Item = (&PartyId, &PartyEntry)> {
        self.parties.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_directory_parses_the_printed_entry() {
        let s = PartySecrets::generate("probation".parse().expect("party"), &mut rand_core::OsRng);
        let back = PartySecrets::from_toml(&s.to_toml(), "probation.secret").expect("parses");
        assert_eq!(back.signing_key_id(), s.signing_key_id());
        assert_eq!(back.encryption_key_id(), s.encryption_key_id());
        let dir = Directory::from_toml(&s.directory_entry("Probation Service"), "directory.toml").expect("parses");
        let entry = dir.party(&s.party).expect("listed");
        assert_eq!(entry.signing[0].key_id, s.signing_key_id());
        assert_eq!(entry.encryption.key_id, s.encryption_key_id());
    }

    #[test]
    fn directory_errors_name_line_and_column() {
        let text = "[[party]]\nid = \"cwp\"\ncontroller = \"CWP\"\nencryption_key = \"rsa:abc\"\n";
        let e = Directory::from_toml(text, "directory.toml").expect_err("bad key");
        assert_eq!((e.line, e.column), (4, 18), "{e}");
        assert!(e.message.contains("x25519:"), "{e}");
        let e = Directory::from_toml("[[party]]\nid = \"cwp\"\nfoo = 1\n", "d.toml").expect_err("unknown key");
        assert_eq!(e.line, 3, "{e}");
    }
}
