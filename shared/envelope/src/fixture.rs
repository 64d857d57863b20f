//! Deterministic parties and the referral audiences of DESIGN §5, for benchmarks, fuzzing
//! and tests. Keys are derived from a fixed seed at run time; never use them in a deployment.

use ed25519_dalek::SigningKey;
use hpke::Kem as _;
use hru_domain::{EventType, PartyId};
use sha2::{Digest as _, Sha256};

use crate::primitives::Kem;
use crate::static_policy::StaticAudiences;
use crate::{Directory, PartySecrets};

/// Deterministic secrets for `party`, derived from its name and `seed`.
pub fn party_secrets(party: &str, seed: u8) -> PartySecrets {
    let party: PartyId = party
        .parse()
        .unwrap_or_else(|e| panic!("fixture party {party:?}: {e}"));
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
    PartySecrets {
        signing: SigningKey::from_bytes(&derive("ed25519")),
        encryption,
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
        let core =
            [&self.police, &self.probation, &self.cwp, &self.mersey_care].map(|p| p.party.clone());
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
