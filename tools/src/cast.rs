//! The benchmarks' cast: five parties with freshly generated keys and their public directory.

use hru_envelope::{Directory, PartySecrets};

/// Parties of the benchmarks.
pub(crate) struct Cast {
    /// police-hru.
    pub police: PartySecrets,
    /// probation.
    pub probation: PartySecrets,
    /// cwp (an NHS trust).
    pub cwp: PartySecrets,
    /// mersey-care (an NHS trust).
    pub mersey_care: PartySecrets,
    /// Public directory of all of them.
    pub directory: Directory,
}

impl Cast {
    /// New keys for every party.
    pub(crate) fn new() -> anyhow::Result<Self> {
        let generate = |party: &str| -> anyhow::Result<PartySecrets> {
            Ok(PartySecrets::generate(party.parse()?, &mut rand_core::OsRng))
        };
        let (police, probation, cwp, mersey_care, em_vendor) = (
            generate("police-hru")?,
            generate("probation")?,
            generate("cwp")?,
            generate("mersey-care")?,
            generate("em-vendor")?,
        );
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
        Ok(Self {
            police,
            probation,
            cwp,
            mersey_care,
            directory,
        })
    }
}
