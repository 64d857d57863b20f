//! Period keys (decision 010): per party and retention class, a forward-secure chain of monthly
//! secrets. The secret of month *m+1* is derived from that of *m* by a one-way step, and each
//! month's X25519 key pair is derived from its secret. Grants of a class for a month are sealed
//! to each member's key of that (class, month); once the month's retention has passed, the
//! holder moves its chain past it and no secret that could open those grants exists any more,
//! wherever a copy of the grant is kept. Later months stay derivable.
//!
//! Pure computation: the holder (a node, the geofence, a CLI store) keeps the chains in a file
//! it replaces atomically; [`PeriodKeys::to_toml`] and [`PeriodKeys::from_toml`] are its text.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::{Kem as _, Serializable as _};
use hru_domain::{KeyId, PartyId, Retention};
use rand_core::{CryptoRng, RngCore};
use serde::Deserialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::{DirectoryError, EncryptionKey, key_id};
use crate::primitives::Kem;

/// The most months one derivation walks (200 years): a bound on a corrupt or hostile month.
const MAX_STEPS: u32 = 12 * 200;
const NEXT_INFO: &[u8] = b"hru/v1 period chain next";
const KEY_INFO: &[u8] = b"hru/v1 period key";

/// A month as "YYYY-MM" (UTC), as epochs and grants name it.
fn parse_month(m: &str) -> Option<(i32, u32)> {
    let (y, mo) = m.split_once('-')?;
    if y.len() != 4 || mo.len() != 2 || !(y.bytes().chain(mo.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, mo): (i32, u32) = (y.parse().ok()?, mo.parse().ok()?);
    (1..=12).contains(&mo).then_some((y, mo))
}

fn month_index(m: &str) -> Option<i64> {
    parse_month(m).map(|(y, mo)| i64::from(y) * 12 + i64::from(mo) - 1)
}

fn month_of_index(i: i64) -> String {
    format!("{:04}-{:02}", i.div_euclid(12), i.rem_euclid(12) + 1)
}

/// The month after `month` ("YYYY-MM"), if it is one.
pub fn next_month(month: &str) -> Option<String> {
    month_index(month).map(|i| month_of_index(i + 1))
}

/// The UTC month ("YYYY-MM") of a Unix time in ms.
pub fn month_at(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.strftime("%Y-%m").to_string())
}

/// Months a holder publishes ahead, this month included: producers can grant to a party for a
/// year after its holder last ran (public keys; publishing ahead weakens nothing), so a member
/// whose node is down does not stop others recording what the agreement shares with it.
pub const PUBLISH_MONTHS: u32 = 13;

/// The last month a holder publishes at `now_ms` (this month and the next
/// [`PUBLISH_MONTHS`] − 1): how far a key ring derives its party's period secrets.
pub fn published_through(now_ms: i64) -> String {
    let mut month = month_at(now_ms).unwrap_or_else(|| "1970-01".to_owned());
    for _ in 1..PUBLISH_MONTHS {
        month = next_month(&month).unwrap_or(month);
    }
    month
}

/// One class's chain: the first month still derivable and its secret.
#[derive(Clone)]
struct Chain {
    month: String,
    secret: Zeroizing<[u8; 32]>,
}

fn step(secret: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(None, secret)
        .expand(NEXT_INFO, out.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
    out
}

impl Chain {
    /// The secret of `month`, walking forward from the chain's first month; None for a month
    /// before it (destroyed) or too far ahead.
    fn secret(&self, month: &str) -> Option<Zeroizing<[u8; 32]>> {
        let steps = month_index(month)? - month_index(&self.month)?;
        if !(0..=i64::from(MAX_STEPS)).contains(&steps) {
            return None;
        }
        let mut s = self.secret.clone();
        for _ in 0..steps {
            s = step(&s);
        }
        Some(s)
    }
}

fn key_pair(
    party: &PartyId,
    class: &str,
    month: &str,
    secret: &[u8; 32],
) -> (<Kem as hpke::Kem>::PrivateKey, <Kem as hpke::Kem>::PublicKey) {
    let mut info = KEY_INFO.to_vec();
    for part in [party.as_str(), class, month] {
        info.extend_from_slice(&(part.len() as u32).to_be_bytes());
        info.extend_from_slice(part.as_bytes());
    }
    let mut ikm = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(None, secret)
        .expand(&info, ikm.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
    Kem::derive_keypair(ikm.as_ref())
}

/// One month's published public key of a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodPublic {
    /// Retention class ("7y", "90d").
    pub class: String,
    /// Month, "YYYY-MM".
    pub month: String,
    /// The X25519 public key's 32 bytes.
    pub public: [u8; 32],
}

/// What one sweep destroyed in one class: the months `from` up to (not including) `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodsDestroyed {
    /// Retention class.
    pub class: String,
    /// The first month destroyed.
    pub from: String,
    /// The chain's first month after the sweep.
    pub to: String,
}

/// A party's period chains, one per retention class.
#[derive(Clone)]
pub struct PeriodKeys {
    party: PartyId,
    chains: BTreeMap<String, Chain>,
    /// Key ids of the months destroyed (public: what the holder may confirm destroyed).
    destroyed: std::collections::BTreeSet<KeyId>,
}

impl std::fmt::Debug for PeriodKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeriodKeys")
            .field("party", &self.party)
            .field(
                "first_months",
                &self.chains.iter().map(|(c, ch)| (c, &ch.month)).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeriodFile {
    party: String,
    #[serde(default)]
    destroyed: Vec<String>,
    #[serde(default)]
    chain: Vec<ChainRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainRow {
    class: String,
    month: String,
    secret: String,
}

impl PeriodKeys {
    /// No chains yet.
    pub fn new(party: PartyId) -> Self {
        Self {
            party,
            chains: BTreeMap::new(),
            destroyed: std::collections::BTreeSet::new(),
        }
    }

    /// Whether `key_id` is the key of a month this holder's chains destroyed: a grant sealed to
    /// it opens nowhere any more.
    pub fn destroyed_key(&self, key_id: &KeyId) -> bool {
        self.destroyed.contains(key_id)
    }

    /// The party.
    pub fn party(&self) -> &PartyId {
        &self.party
    }

    /// Start a chain for `class` at `month` with a fresh secret, unless the class has one;
    /// whether one was started. A class that is not a retention class is refused.
    pub fn start(&mut self, class: &str, month: &str, rng: &mut (impl CryptoRng + RngCore)) -> Result<bool, String> {
        if Retention::parse(class).is_none() {
            return Err(format!("{class:?} is not a retention class such as \"7y\" or \"90d\""));
        }
        if parse_month(month).is_none() {
            return Err(format!("{month:?} is not a month YYYY-MM"));
        }
        if self.chains.contains_key(class) {
            return Ok(false);
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        self.chains.insert(
            class.to_owned(),
            Chain {
                month: month.to_owned(),
                secret,
            },
        );
        Ok(true)
    }

    /// The classes with a chain, and the first month each can still derive.
    pub fn first_months(&self) -> impl Iterator<Item = (&str, &str)> {
        self.chains.iter().map(|(c, ch)| (c.as_str(), ch.month.as_str()))
    }

    /// The public key of (`class`, `month`), while its secret exists.
    pub fn public(&self, class: &str, month: &str) -> Option<EncryptionKey> {
        let (_, public) = self.pair(class, month)?;
        EncryptionKey::from_bytes(&public.to_bytes().into())
    }

    /// The secret key of (`class`, `month`) and its key id, while it exists.
    pub fn secret(&self, class: &str, month: &str) -> Option<(KeyId, <Kem as hpke::Kem>::PrivateKey)> {
        let (secret, public) = self.pair(class, month)?;
        Some((key_id(&public.to_bytes()), secret))
    }

    /// Seal `plaintext` at rest to this holder's own key of (`class`, `month`), bound to
    /// `aad`: (enc, ciphertext), or `None` when that key does not exist. Destroying the month
    /// destroys every copy sealed so, wherever it is kept.
    pub fn seal_own(
        &self,
        class: &str,
        month: &str,
        aad: &[u8],
        plaintext: &[u8],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let (_, public) = self.pair(class, month)?;
        let info = self.own_info(class, month);
        Some(crate::primitives::seal_bytes(&public, &info, aad, plaintext, rng))
    }

    /// Open what [`PeriodKeys::seal_own`] sealed; `None` when the month's key is gone or the
    /// bytes do not open under it.
    pub fn open_own(&self, class: &str, month: &str, aad: &[u8], enc: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        let (secret, _) = self.pair(class, month)?;
        let info = self.own_info(class, month);
        crate::primitives::open_bytes(&secret, enc, &info, aad, ciphertext)
    }

    fn own_info(&self, class: &str, month: &str) -> Vec<u8> {
        let mut info = b"hru.v1.period-at-rest\0".to_vec();
        for part in [self.party.as_str(), class, month] {
            info.extend_from_slice(&(part.len() as u32).to_be_bytes());
            info.extend_from_slice(part.as_bytes());
        }
        info
    }

    fn pair(
        &self,
        class: &str,
        month: &str,
    ) -> Option<(<Kem as hpke::Kem>::PrivateKey, <Kem as hpke::Kem>::PublicKey)> {
        let chain = self.chains.get(class)?;
        let secret = chain.secret(month)?;
        Some(key_pair(&self.party, class, month, &secret))
    }

    /// Whether (`class`, `month`) was destroyed: the class has a chain and it starts after it.
    pub fn destroyed(&self, class: &str, month: &str) -> bool {
        self.chains
            .get(class)
            .and_then(|c| Some(month_index(month)? < month_index(&c.month)?))
            .unwrap_or(false)
    }

    /// The public keys of every class for `months` months from `from` (what a holder publishes).
    pub fn publication(&self, from: &str, months: u32) -> Vec<PeriodPublic> {
        let Some(start) = month_index(from) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for class in self.chains.keys() {
            for i in 0..i64::from(months) {
                let month = month_of_index(start + i);
                if let Some(key) = self.pair(class, &month) {
                    out.push(PeriodPublic {
                        class: class.clone(),
                        month,
                        public: key.1.to_bytes().into(),
                    });
                }
            }
        }
        out
    }

    /// The secret keys of every class from each chain's first month through `through`, by key
    /// id (what a key ring needs to open grants).
    pub fn secrets_through(&self, through: &str) -> Vec<(KeyId, <Kem as hpke::Kem>::PrivateKey)> {
        let Some(end) = month_index(through) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (class, chain) in &self.chains {
            let Some(first) = month_index(&chain.month) else {
                continue;
            };
            let mut secret = chain.secret.clone();
            for i in first..=end.min(first + i64::from(MAX_STEPS)) {
                let month = month_of_index(i);
                let (sk, pk) = key_pair(&self.party, class, &month, &secret);
                out.push((key_id(&pk.to_bytes()), sk));
                secret = step(&secret);
            }
        }
        out
    }

    /// Move every chain past the months whose retention has ended by `at_ms` (the class counted
    /// from the end of the month): their secrets can no longer be derived from what is kept.
    /// The caller replaces its stored copy before relying on it.
    pub fn destroy_expired(&mut self, at_ms: i64) -> Vec<PeriodsDestroyed> {
        let mut out = Vec::new();
        for (class, chain) in &mut self.chains {
            let Some(retention) = Retention::parse(class) else {
                continue;
            };
            let from = chain.month.clone();
            let mut moved = 0;
            while moved < MAX_STEPS && retention.expires(&chain.month).is_some_and(|t| t <= at_ms) {
                let Some(next) = next_month(&chain.month) else { break };
                let (_, public) = key_pair(&self.party, class, &chain.month, &chain.secret);
                self.destroyed.insert(key_id(&public.to_bytes()));
                chain.secret = step(&chain.secret);
                chain.month = next;
                moved += 1;
            }
            if moved > 0 {
                out.push(PeriodsDestroyed {
                    class: class.clone(),
                    from,
                    to: chain.month.clone(),
                });
            }
        }
        out
    }

    /// The holder's file text (keep it mode 0600 and replace it atomically; never commit it).
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "# HRU Backbone period secrets of {}: each chain's first month still derivable.\n# Keep private (mode 0600); replaced on every destruction.\nparty = \"{}\"\n",
            self.party, self.party
        );
        // Before the first table: the ids (public) of every month destroyed.
        let ids: Vec<String> = self
            .destroyed
            .iter()
            .map(|k| format!("\"{}\"", hex::encode(k.0)))
            .collect();
        out.push_str(&format!("destroyed = [{}]\n", ids.join(", ")));
        for (class, chain) in &self.chains {
            out.push_str(&format!(
                "\n[[chain]]\nclass = \"{class}\"\nmonth = \"{}\"\nsecret = \"{}\"\n",
                chain.month,
                B64.encode(chain.secret.as_ref())
            ));
        }
        out
    }

    /// Parse what [`PeriodKeys::to_toml`] wrote; `source` names the file in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, DirectoryError> {
        let file: PeriodFile = toml::from_str(text).map_err(|e| DirectoryError::from_toml(source, text, &e))?;
        let at = |message: String| DirectoryError {
            file: source.to_owned(),
            line: 0,
            column: 0,
            message,
        };
        let party = PartyId::parse(&file.party, "party").map_err(|e| at(format!("`party` {}", e.problem)))?;
        let mut keys = Self::new(party);
        for (i, id) in file.destroyed.iter().enumerate() {
            let raw: [u8; 8] = hex::decode(id)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| at(format!("destroyed[{i}] is not 8 hex bytes")))?;
            keys.destroyed.insert(KeyId(raw));
        }
        for (i, row) in file.chain.into_iter().enumerate() {
            if Retention::parse(&row.class).is_none() {
                return Err(at(format!("chain[{i}].class {:?} is not a retention class", row.class)));
            }
            if parse_month(&row.month).is_none() {
                return Err(at(format!("chain[{i}].month {:?} is not a month YYYY-MM", row.month)));
            }
            let secret: [u8; 32] = B64
                .decode(&row.secret)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| at(format!("chain[{i}].secret is not 32 base64 bytes")))?;
            if keys
                .chains
                .insert(
                    row.class.clone(),
                    Chain {
                        month: row.month,
                        secret: Zeroizing::new(secret),
                    },
                )
                .is_some()
            {
                return Err(at(format!("chain[{i}].class {:?} is given twice", row.class)));
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn keys() -> PeriodKeys {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut k = PeriodKeys::new(PartyId::parse("cwp", "party").unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(k.start("90d", "2026-01", &mut rng), Ok(true));
        assert_eq!(k.start("7y", "2026-01", &mut rng), Ok(true));
        k
    }

    #[test]
    fn months_walk_over_years() {
        assert_eq!(next_month("2026-12").as_deref(), Some("2027-01"));
        assert_eq!(next_month("2026-13"), None);
        assert_eq!(next_month("2026-+1"), None);
        assert_eq!(month_at(0).as_deref(), Some("1970-01"));
    }

    #[test]
    fn a_sweep_destroys_expired_months_only_and_later_keys_are_unchanged() {
        let mut k = keys();
        let march = k.public("90d", "2026-03").unwrap_or_else(|| panic!("march"));
        let jan_secret = k.secret("90d", "2026-01").map(|(id, _)| id);
        // 90 days after the end of January 2026 is 2026-05-02; February ends 90 days later.
        let at = jiff::Timestamp::from_second(1_777_680_000).map_or(0, |t| t.as_millisecond()); // 2026-05-02
        let destroyed = k.destroy_expired(at);
        assert_eq!(
            destroyed,
            vec![PeriodsDestroyed {
                class: "90d".into(),
                from: "2026-01".into(),
                to: "2026-02".into()
            }]
        );
        assert!(jan_secret.is_some());
        assert!(k.secret("90d", "2026-01").is_none(), "January's key is gone");
        assert!(k.destroyed("90d", "2026-01"));
        assert!(
            jan_secret.is_some_and(|id| k.destroyed_key(&id)),
            "January's key id is recorded"
        );
        assert!(!k.destroyed_key(&k.public("90d", "2026-03").map(|p| p.key_id).unwrap_or(KeyId([0; 8]))));
        assert_eq!(
            k.public("90d", "2026-03"),
            Some(march),
            "later months are the same keys"
        );
        assert!(k.secret("7y", "2026-01").is_some(), "another class is untouched");
        let again = PeriodKeys::from_toml(&k.to_toml(), "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.public("90d", "2026-03"), k.public("90d", "2026-03"));
        assert!(again.secret("90d", "2026-01").is_none());
        assert!(
            jan_secret.is_some_and(|id| again.destroyed_key(&id)),
            "kept across the file"
        );
    }

    #[test]
    fn bad_files_name_the_field() {
        let e = PeriodKeys::from_toml(
            "party = \"cwp\"\n[[chain]]\nclass = \"7x\"\nmonth = \"2026-01\"\nsecret = \"\"\n",
            "p",
        )
        .err()
        .map(|e| e.message);
        assert_eq!(e.as_deref(), Some("chain[0].class \"7x\" is not a retention class"));
    }
}
