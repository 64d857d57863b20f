//! The cryptographic constructions of the envelope, each in one place: digests, section keys
//! and AAD, and the HPKE sealing of epoch keys.

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hru_domain::{AudienceId, Digest, EventId, KeyId, PartyId, ProducerId};
use hru_wire::v1 as pb;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};

/// HPKE suite: X25519 + HKDF-SHA256 KEM.
pub(crate) type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;

/// An ed25519 public key as the directory accepts it: a valid point that is not of small order
/// (a small-order key would verify forged signatures under cofactored checks).
pub fn public_key(bytes: &[u8; 32]) -> Option<ed25519_dalek::VerifyingKey> {
    ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .ok()
        .filter(|k| !k.is_weak())
}

/// Strict ed25519 verification, as every envelope gets it: S canonical (below the group order),
/// R not of small order, and the cofactorless equation.
pub fn verify_strict(key: &ed25519_dalek::VerifyingKey, message: &[u8], signature: &[u8; 64]) -> bool {
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .is_ok()
}

/// Domain separator of the signed envelope digest.
pub const SIGNATURE_DOMAIN: &[u8] = b"hru.v1.envelope\0";
const HEADER_DOMAIN: &[u8] = b"hru.v1.header\0";
const SECTION_KEY_SALT: &[u8] = b"hru.v1.section-key";
const SECTION_AAD_DOMAIN: &[u8] = b"hru.v1.section\0";
const GRANT_INFO_DOMAIN: &[u8] = b"hru.v1.epoch-key\0";
const HOLD_INFO_DOMAIN: &[u8] = b"hru.v1.hold-key\0";
const HELD_SECTION_DOMAIN: &str = "hru.v1.held-section";

/// Lends a caller's rand_core 0.6 generator to hpke, which speaks rand_core 0.9.
pub(crate) struct HpkeRng<'a, R>(pub(crate) &'a mut R);

impl<R: RngCore> hpke::rand_core::RngCore for HpkeRng<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

impl<R: CryptoRng + RngCore> hpke::rand_core::CryptoRng for HpkeRng<'_, R> {}

/// Length of an epoch key.
pub(crate) const EPOCH_KEY_LEN: usize = 32;
/// Length of a section nonce.
pub(crate) const NONCE_LEN: usize = 24;

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Digest of the exact header bytes, bound into every section's AAD.
pub(crate) fn header_digest(header: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(HEADER_DOMAIN);
    put(&mut h, header);
    Digest(h.finalize().into())
}

/// The envelope digest that is signed and that the next envelope names as `prev_digest`:
/// length-prefixed exact header bytes, body bytes and every section field, in order.
pub(crate) fn envelope_digest(header: &[u8], body: &[u8], sections: &[pb::Section]) -> Digest {
    let mut h = Sha256::new();
    h.update(SIGNATURE_DOMAIN);
    put(&mut h, header);
    put(&mut h, body);
    h.update((sections.len() as u64).to_be_bytes());
    for s in sections {
        put(&mut h, s.name.as_bytes());
        put(&mut h, s.audience.as_bytes());
        h.update(s.epoch.to_be_bytes());
        put(&mut h, &s.nonce);
        put(&mut h, &s.ciphertext);
    }
    Digest(h.finalize().into())
}

/// An epoch key, with its HKDF extract done once so each section key costs one expand.
#[derive(Clone)]
pub struct EpochKey {
    bytes: [u8; EPOCH_KEY_LEN],
    prk: Hkdf<Sha256>,
}

impl EpochKey {
    /// Wrap 32 key bytes.
    pub fn new(bytes: [u8; EPOCH_KEY_LEN]) -> Self {
        Self {
            prk: Hkdf::<Sha256>::new(Some(SECTION_KEY_SALT), &bytes),
            bytes,
        }
    }

    /// The key bytes (for sealing to members and for the producer's private state).
    pub fn bytes(&self) -> &[u8; EPOCH_KEY_LEN] {
        &self.bytes
    }
}

impl PartialEq for EpochKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for EpochKey {}

/// The section key: HKDF-SHA256(epoch key; event id ‖ section name).
pub(crate) fn section_key(epoch_key: &EpochKey, event_id: &EventId, name: &str) -> chacha20poly1305::Key {
    let mut okm = chacha20poly1305::Key::default();
    epoch_key
        .prk
        .expand_multi_info(&[event_id.0.as_bytes(), name.as_bytes()], &mut okm)
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    okm
}

/// AAD of a section: the header digest, the section name, its audience and epoch.
fn section_aad(header_digest: &Digest, name: &str, audience: &str, epoch: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SECTION_AAD_DOMAIN.len() + 32 + name.len() + audience.len() + 20);
    aad.extend_from_slice(SECTION_AAD_DOMAIN);
    aad.extend_from_slice(&header_digest.0);
    for part in [name.as_bytes(), audience.as_bytes()] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// The event a section is sealed into: its id (for the key) and header digest (for the AAD).
pub(crate) struct SealedHeader<'a> {
    pub(crate) event_id: &'a EventId,
    pub(crate) header_digest: &'a Digest,
}

/// Encrypt one section under its epoch key.
pub(crate) fn seal_section(
    epoch_key: &EpochKey,
    event: &SealedHeader<'_>,
    name: &str,
    audience: &AudienceId,
    epoch: u32,
    plaintext: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> pb::Section {
    let cipher = XChaCha20Poly1305::new(&section_key(epoch_key, event.event_id, name));
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = section_aad(event.header_digest, name, audience.as_str(), epoch);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 encryption fails only past 256 GiB"));
    pb::Section {
        name: name.to_owned(),
        audience: audience.to_string(),
        epoch,
        nonce: nonce.to_vec(),
        ciphertext,
    }
}

/// Decrypt one section; `None` when it does not authenticate.
pub(crate) fn open_section(
    epoch_key: &EpochKey,
    event_id: &EventId,
    header_digest: &Digest,
    section: &pb::Section,
) -> Option<Vec<u8>> {
    open_section_with(&section_key(epoch_key, event_id, &section.name), header_digest, section)
}

/// Open a section with its section key itself (one kept under a legal hold).
pub(crate) fn open_section_with(
    key: &chacha20poly1305::Key,
    header_digest: &Digest,
    section: &pb::Section,
) -> Option<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(key);
    let aad = section_aad(header_digest, &section.name, &section.audience, section.epoch);
    cipher
        .decrypt(
            XNonce::from_slice(&section.nonce),
            Payload {
                msg: &section.ciphertext,
                aad: &aad,
            },
        )
        .ok()
}

/// Where a grant entry belongs: producer (party and instance), audience, epoch, member and
/// the member's key. All of it is bound into the HPKE `info`, so an entry opens only there.
pub(crate) struct GrantSlot<'a> {
    pub(crate) producer: &'a ProducerId,
    pub(crate) audience: &'a AudienceId,
    pub(crate) epoch: u32,
    pub(crate) member: &'a PartyId,
    pub(crate) member_key_id: &'a KeyId,
    /// The legal hold a hold key is sealed for; `None` for an epoch key.
    pub(crate) hold: Option<&'a str>,
}

impl GrantSlot<'_> {
    fn info(&self) -> Vec<u8> {
        let mut info = match self.hold {
            None => GRANT_INFO_DOMAIN.to_vec(),
            Some(hold) => {
                let mut info = HOLD_INFO_DOMAIN.to_vec();
                info.extend_from_slice(&(hold.len() as u32).to_be_bytes());
                info.extend_from_slice(hold.as_bytes());
                info
            }
        };
        for part in [
            self.producer.party.as_str(),
            self.producer.instance.as_str(),
            self.audience.as_str(),
            self.member.as_str(),
        ] {
            info.extend_from_slice(&(part.len() as u32).to_be_bytes());
            info.extend_from_slice(part.as_bytes());
        }
        info.extend_from_slice(&self.epoch.to_be_bytes());
        info.extend_from_slice(&self.member_key_id.0);
        info
    }
}

/// Seal an epoch key to one member: returns (enc, ciphertext).
pub(crate) fn seal_epoch_key(
    epoch_key: &[u8; EPOCH_KEY_LEN],
    slot: &GrantSlot<'_>,
    member_key: &<Kem as hpke::Kem>::PublicKey,
    rng: &mut (impl CryptoRng + RngCore),
) -> (Vec<u8>, Vec<u8>) {
    use hpke::Serializable as _;
    let info = slot.info();
    let (enc, ct) = hpke::single_shot_seal::<HpkeAead, Kdf, Kem, _>(
        &hpke::OpModeS::Base,
        member_key,
        &info,
        epoch_key,
        b"",
        &mut HpkeRng(rng),
    )
    .unwrap_or_else(|e| unreachable!("HPKE base-mode seal of 32 bytes cannot fail: {e}"));
    (enc.to_bytes().to_vec(), ct)
}

/// Seal `plaintext` of any length to `key` (HPKE base mode), bound to `info` and `aad`:
/// returns (enc, ciphertext).
pub(crate) fn seal_bytes(
    key: &<Kem as hpke::Kem>::PublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> (Vec<u8>, Vec<u8>) {
    use hpke::Serializable as _;
    let (enc, ct) = hpke::single_shot_seal::<HpkeAead, Kdf, Kem, _>(
        &hpke::OpModeS::Base,
        key,
        info,
        plaintext,
        aad,
        &mut HpkeRng(rng),
    )
    .unwrap_or_else(|e| unreachable!("HPKE base-mode seal fails only past 256 GiB: {e}"));
    (enc.to_bytes().to_vec(), ct)
}

/// Open what [`seal_bytes`] sealed; `None` when it does not open under `secret`, `info` and `aad`.
pub(crate) fn open_bytes(
    secret: &<Kem as hpke::Kem>::PrivateKey,
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    use hpke::Deserializable as _;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).ok()?;
    hpke::single_shot_open::<HpkeAead, Kdf, Kem>(&hpke::OpModeR::Base, secret, &enc, info, ciphertext, aad).ok()
}

/// Unseal an epoch key sealed to this member; `None` when it does not open.
pub(crate) fn open_epoch_key(
    enc: &[u8],
    sealed: &[u8],
    slot: &GrantSlot<'_>,
    secret: &<Kem as hpke::Kem>::PrivateKey,
) -> Option<[u8; EPOCH_KEY_LEN]> {
    use hpke::Deserializable as _;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).ok()?;
    let info = slot.info();
    let key =
        hpke::single_shot_open::<HpkeAead, Kdf, Kem>(&hpke::OpModeR::Base, secret, &enc, &info, sealed, b"").ok()?;
    key.try_into().ok()
}

/// What binds a held section key, wrapped under a hold key, to its place: the producer, the
/// audience and epoch of its section, the event and the section name.
pub(crate) fn held_section_aad(
    producer: &ProducerId,
    audience: &AudienceId,
    epoch: u32,
    event_id: &EventId,
    name: &str,
) -> Vec<u8> {
    let mut aad = HELD_SECTION_DOMAIN.as_bytes().to_vec();
    for part in [
        producer.party.as_str(),
        producer.instance.as_str(),
        audience.as_str(),
        name,
    ] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad.extend_from_slice(event_id.0.as_bytes());
    aad
}

/// Encrypt a 32-byte key for storage at rest under `kek` (XChaCha20-Poly1305, `aad` binding it
/// to where it is stored): nonce ‖ ciphertext. Destroying `kek` destroys every copy written
/// under it, wherever a store's history keeps the bytes.
pub fn wrap_at_rest(kek: &[u8; 32], aad: &[u8], key: &[u8; 32], rng: &mut (impl CryptoRng + RngCore)) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(kek.into());
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: key, aad })
        .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 encryption fails only past 256 GiB"));
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ciphertext);
    out
}

/// Open what [`wrap_at_rest`] wrote; `None` when it does not authenticate under `kek` and `aad`.
pub fn unwrap_at_rest(kek: &[u8; 32], aad: &[u8], wrapped: &[u8]) -> Option<[u8; 32]> {
    if wrapped.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(kek.into());
    let plain = cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .ok()?;
    plain.try_into().ok()
}
