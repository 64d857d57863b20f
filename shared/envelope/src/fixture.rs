//! Deterministic parties and the referral audiences of DESIGN §5, for benchmarks, fuzzing
//! and tests. Keys are derived from a fixed seed at run time; never use them in a deployment.

use ed25519_dalek::SigningKey;
use hpke::Kem as _;
use hru_domain::{EventType, PartyId};
use sha2::{Digest as _, Sha256};

use crate::primitives::Kem;
use crate::static_policy::StaticAudiences;
use crate::{Directory, PartySecrets};

/// A public directory of the deterministic secrets of `parties` (seed `seed`).
pub fn directory_of<'a>(parties: impl IntoIterator<Item = &'a str>, seed: u8) -> Directory {
    let mut directory = Directory::default();
    for party in parties {
        directory.insert_secrets(&party_secrets(party, seed), "fixture");
    }
    directory
}

/// Deterministic secrets for `party`, derived from its name and `seed`.
pub fn party_secrets(party: &str, seed: u8) -> PartySecrets {
    let party: PartyId = party.parse().unwrap_or_else(|e| panic!("fixture party {party:?}: {e}"));
    let derive = |purpose: &str| -> [u8; 32] {
        Sha256::new()
            .chain_update(b"hru.v1.fixture\0")
            .chain_update(purpose)
            .chain_update(party.as_str())
            .chain_update([seed])
            .finalize()
            .into()
    };
    let (encryption, _) = Kem::derive_keypair(&derive("x25519"));
    let nats_seed = crate::keys::nats_seed_from(&derive("nats"));
    PartySecrets {
        signing: SigningKey::from_bytes(&derive("ed25519")),
        encryption,
        nats_seed,
        party,
    }
}

/// The parties of the round trip, with a directory of their public keys.
pub struct Cast {
    /// police-hru.
    pub police: PartySecrets,
    /// probation.
    pub probation: PartySecrets,
    /// cwp (an NHS trust).
    pub cwp: PartySecrets,
    /// mersey-care (an NHS trust).
    pub mersey_care: PartySecrets,
    /// em-vendor.
    pub em_vendor: PartySecrets,
    /// Public directory of all of them.
    pub directory: Directory,
}

impl Cast {
    /// The cast, with keys derived from `seed`.
    pub fn new(seed: u8) -> Self {
        let police = party_secrets("police-hru", seed);
        let probation = party_secrets("probation", seed);
        let cwp = party_secrets("cwp", seed);
        let mersey_care = party_secrets("mersey-care", seed);
        let em_vendor = party_secrets("em-vendor", seed);
        let mut directory = Directory::default();
        for (p, controller) in [
            (&police, "Cheshire Constabulary"),
            (&probation, "Probation Service"),
            (&cwp, "Cheshire and Wirral Partnership NHS FT"),
            (&mersey_care, "Mersey Care NHS FT"),
            (&em_vendor, "EM vendor"),
        ] {
            directory.insert_secrets(p, controller);
        }
        Self {
            police,
            probation,
            cwp,
            mersey_care,
            em_vendor,
            directory,
        }
    }

    /// Referral audiences: `core` for police, probation and both trusts; `identity` for police
    /// only; `narrative` for police and cwp.
    pub fn referral_policy(&self) -> StaticAudiences {
        let core = [&self.police, &self.probation, &self.cwp, &self.mersey_care].map(|p| p.party.clone());
        let cwp = [self.police.party.clone(), self.cwp.party.clone()];
        StaticAudiences::new("example", 1)
            .share(EventType::ReferralReceived, "core", &core)
            .share(
                EventType::ReferralReceived,
                "identity",
                std::slice::from_ref(&self.police.party),
            )
            .share(EventType::ReferralReceived, "narrative", &cwp)
    }
}

/// The fixed cast the fuzz entries verify against.
fn fuzz_world() -> &'static (Cast, ()) {
    static WORLD: std::sync::OnceLock<(Cast, ())> = std::sync::OnceLock::new();
    WORLD.get_or_init(|| (Cast::new(0), ()))
}

/// Fuzz entry: untrusted bytes as a log (frames of a 4-byte big-endian length and an
/// envelope) or, when they do not frame, as one envelope. Each envelope is verified; grants
/// go into a key ring that opens the events after them. Must never panic.
pub fn fuzz_envelope(bytes: &[u8]) {
    let (cast, _) = fuzz_world();
    let mut ring = crate::KeyRing::new(&cast.probation);
    for envelope in frames(bytes).unwrap_or_else(|| vec![bytes]) {
        if let Ok(v) = crate::verify(envelope, &cast.directory) {
            if v.header.event_type == EventType::KeyGranted {
                let _ = ring.ingest_grant(&v);
            } else {
                let _ = ring.open(&v);
            }
        }
    }
}

/// Frame envelopes as a fuzz log: each as a 4-byte big-endian length and its bytes.
pub fn frame_log<'a>(envelopes: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in envelopes {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

fn frames(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if len > rest.len() {
            return None;
        }
        let (frame, rest) = rest.split_at(len);
        out.push(frame);
        bytes = rest;
    }
    Some(out)
}

/// Fuzz entry: take in an untrusted KeyGranted body as if its envelope had verified.
pub fn fuzz_key_granted(body: &[u8]) {
    let (cast, _) = fuzz_world();
    let header = hru_domain::EventHeader {
        event_id: hru_domain::EventId(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)),
        event_type: EventType::KeyGranted,
        case_id: None,
        producer: hru_domain::ProducerId {
            party: cast.police.party.clone(),
            instance: "node-1".into(),
        },
        key_id: cast.police.signing_key_id(),
        producer_seq: 1,
        prev_digest: hru_domain::Digest::ZERO,
        occurred_at_ms: 1,
        recorded_at_ms: 1,
        policy_id: "example".into(),
        policy_version: 1,
        schema: crate::SCHEMA_VERSION,
    };
    let v = crate::VerifiedEnvelope {
        header,
        header_digest: hru_domain::Digest::ZERO,
        digest: hru_domain::Digest::ZERO,
        body: body.to_vec(),
        sections: Vec::new(),
    };
    let _ = crate::KeyRing::new(&cast.probation).ingest_grant(&v);
}

/// Real envelopes of the fuzz cast (grants, then referrals): the seed corpus.
pub fn seed_envelopes() -> Vec<crate::SealedEnvelope> {
    let (cast, _) = fuzz_world();
    let mut sealer = crate::Sealer::new(
        hru_domain::ProducerId {
            party: cast.police.party.clone(),
            instance: "node-1".into(),
        },
        cast.police.signing.clone(),
    );
    let mut out = Vec::new();
    for n in 0..2u8 {
        let core = hru_wire::v1::ReferralCore {
            area: format!("area {n}"),
            subject_ref: vec![n; 32],
            ..Default::default()
        };
        let sections = vec![
            crate::PlainSection {
                name: "core",
                bytes: prost::Message::encode_to_vec(&core),
            },
            crate::PlainSection {
                name: "narrative",
                bytes: b"\x0a\x04text".to_vec(),
            },
        ];
        let now = 1_795_000_000_000 + i64::from(n);
        out.extend(
            sealer
                .seal_event(
                    hru_domain::CaseId(uuid::Uuid::from_u128(u128::from(n) + 1)),
                    EventType::ReferralReceived,
                    sections,
                    now,
                    now,
                    &cast.referral_policy(),
                    &cast.directory,
                    &mut rand_core::OsRng,
                )
                .unwrap_or_else(|e| panic!("the fuzz cast's policy covers its seeds: {e}")),
        );
    }
    out
}

/// Sign an envelope's content again with `key`, as whoever holds that key could (for tamper
/// tests: a legitimate signature over altered content, or a foreign key's signature).
pub fn resign(env: &hru_wire::v1::Envelope, key: &SigningKey) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    let digest = crate::primitives::envelope_digest(&env.header, &env.body, &env.sections);
    let signed = hru_wire::v1::Envelope {
        signature: key.sign(&digest.0).to_bytes().to_vec(),
        ..env.clone()
    };
    prost::Message::encode_to_vec(&signed)
}
