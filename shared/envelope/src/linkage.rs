//! Subject references that link (decision 020): a keyed HMAC-SHA256 of a person's normalised
//! identifier under the agreement's linkage key, so two parties recording the same person get
//! the same reference and nobody without the key can test a guess of who a reference is.
//!
//! The identifier, normalised:
//! - the Police National Computer number when present: `pnc:YY/NNNNNNNL` — two-digit year, the
//!   serial zero-padded to seven digits, the check letter upper-case (spaces and leading zeros of
//!   the serial as written do not matter);
//! - otherwise the name and date of birth: `name-dob:<name>|YYYY-MM-DD`, the name decomposed
//!   (Unicode NFKD), accents dropped, lower-case, only letters kept with single spaces between
//!   the words (so "Sam O'Neill", "SAM ONEILL" and "Sám  O’Neill" are one name).
//!
//! The key is granted like epoch keys: sealed with HPKE to each holder in a signed
//! `LinkageKeyGranted` event on the log; a rotation grants the next generation.

use hkdf::hmac::{Hmac, Mac as _};
use hru_domain::{FieldError, PartyId};
use hru_wire::v1 as pb;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization as _;

use crate::keys::{EncryptionKey, PartySecrets};
use crate::primitives::{open_bytes, seal_bytes};

/// Domain separation of the reference HMAC.
const REFERENCE_DOMAIN: &[u8] = b"hru.v1.subject-ref\x00";
/// Domain separation of a grant's HPKE info.
const GRANT_DOMAIN: &[u8] = b"hru.v1.LinkageKeyGranted\x00";

/// A generation of the agreement's linkage key.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkageKey {
    /// Its generation.
    pub generation: u32,
    key: [u8; 32],
}

impl std::fmt::Debug for LinkageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkageKey(generation {})", self.generation)
    }
}

impl LinkageKey {
    /// A new random key of `generation`.
    pub fn generate(generation: u32, rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self { generation, key }
    }

    /// The subject reference of a normalised identifier (see [`identifier`]).
    pub fn reference(&self, identifier: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(REFERENCE_DOMAIN);
        mac.update(identifier.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Seal the key to each holder (party, its current encryption key) under `agreement`.
    pub fn grant(
        &self,
        agreement: &str,
        holders: &[(PartyId, EncryptionKey)],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Vec<pb::GrantMember> {
        holders
            .iter()
            .map(|(party, key)| {
                let info = grant_info(agreement, self.generation, party, key);
                let (enc, sealed) = seal_bytes(&key.key, &info, b"", &self.key, rng);
                pb::GrantMember {
                    party: party.to_string(),
                    key_id: key.key_id.0.to_vec(),
                    enc,
                    sealed_epoch_key: sealed,
                }
            })
            .collect()
    }

    /// Open `secrets`' copy in a grant of `agreement`'s `generation`; `None` when the grant has
    /// none for this party or it does not open.
    pub fn open(agreement: &str, generation: u32, members: &[pb::GrantMember], secrets: &PartySecrets) -> Option<Self> {
        let public = secrets.encryption_public_bytes();
        let own = EncryptionKey::from_bytes(&public)?;
        let member = members
            .iter()
            .find(|m| m.party == secrets.party.as_str() && m.key_id == own.key_id.0)?;
        let info = grant_info(agreement, generation, &secrets.party, &own);
        let key = open_bytes(&secrets.encryption, &member.enc, &info, b"", &member.sealed_epoch_key)?;
        Some(Self {
            generation,
            key: key.try_into().ok()?,
        })
    }
}

fn grant_info(agreement: &str, generation: u32, member: &PartyId, key: &EncryptionKey) -> Vec<u8> {
    let mut info = GRANT_DOMAIN.to_vec();
    for part in [agreement, member.as_str()] {
        info.extend_from_slice(&(part.len() as u32).to_be_bytes());
        info.extend_from_slice(part.as_bytes());
    }
    info.extend_from_slice(&generation.to_be_bytes());
    info.extend_from_slice(&key.key_id.0);
    info
}

/// A PNC number normalised, or why it is not one.
fn pnc(raw: &str) -> Result<String, String> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase();
    let (year, rest) = compact
        .split_once('/')
        .ok_or_else(|| format!("`{raw}` is not a PNC number (YY/NNNNNNNL)"))?;
    let mut chars: Vec<char> = rest.chars().collect();
    let letter = chars.pop().filter(char::is_ascii_uppercase);
    let serial: String = chars.into_iter().collect();
    match letter {
        Some(l)
            if year.len() == 2
                && year.chars().all(|c| c.is_ascii_digit())
                && (1..=7).contains(&serial.len())
                && serial.chars().all(|c| c.is_ascii_digit()) =>
        {
            Ok(format!("pnc:{year}/{serial:0>7}{l}"))
        }
        _ => Err(format!("`{raw}` is not a PNC number (YY/NNNNNNNL)")),
    }
}

/// A name normalised: decomposed, accents dropped, lower-case, letters only, single spaces.
fn name(raw: &str) -> String {
    let letters: String = raw
        .nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_alphabetic() {
                c
            } else if c.is_whitespace() || c == '-' {
                ' '
            } else {
                '\u{0}'
            }
        })
        .filter(|c| *c != '\u{0}')
        .collect();
    letters.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The normalised identifier of a person: the PNC number when present, otherwise name and date
/// of birth; an error naming the field when neither is usable.
pub fn identifier(person: &pb::PersonIdentity) -> Result<String, FieldError> {
    if !person.pnc_number.trim().is_empty() {
        return pnc(&person.pnc_number).map_err(|why| FieldError::new("pnc_number", why));
    }
    let n = name(&person.full_name);
    if n.is_empty() {
        return Err(FieldError::new(
            "full_name",
            "a subject reference needs the PNC number, or the full name and date of birth",
        ));
    }
    if person.date_of_birth.trim().is_empty() {
        return Err(FieldError::new(
            "date_of_birth",
            "is missing: a subject reference needs the PNC number, or the full name and date of birth",
        ));
    }
    let dob: jiff::civil::Date = person.date_of_birth.trim().parse().map_err(|_| {
        FieldError::new(
            "date_of_birth",
            format!(
                "`{}` is not a date (YYYY-MM-DD); a subject reference needs the PNC number, or the full name and date of birth",
                person.date_of_birth
            ),
        )
    })?;
    Ok(format!("name-dob:{n}|{dob}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn person(name: &str, dob: &str, pnc: &str) -> pb::PersonIdentity {
        pb::PersonIdentity {
            full_name: name.into(),
            date_of_birth: dob.into(),
            pnc_number: pnc.into(),
            ..Default::default()
        }
    }

    #[test]
    fn one_person_written_differently_is_one_identifier() {
        let same = [
            person("Sam O'Neill", "1990-02-03", ""),
            person("SAM ONEILL", "1990-02-03", ""),
            person("  Sám   O’Neill ", "1990-02-03", ""),
        ];
        let ids: Vec<String> = same.iter().map(|p| identifier(p).unwrap()).collect();
        assert!(ids.iter().all(|i| i == "name-dob:sam oneill|1990-02-03"), "{ids:?}");
        assert_eq!(
            identifier(&person("Mary-Jane Smith", "1985-12-01", "")).unwrap(),
            "name-dob:mary jane smith|1985-12-01"
        );
        // The PNC number wins over the name, however it is spaced or padded.
        assert_eq!(
            identifier(&person("Anyone", "", "90/1234x")).unwrap(),
            "pnc:90/0001234X"
        );
        assert_eq!(
            identifier(&person("", "", " 90 / 0001234X ")).unwrap(),
            "pnc:90/0001234X"
        );
    }

    #[test]
    fn unusable_identities_name_the_field() {
        let err = |p| identifier(&p).unwrap_err().to_string();
        assert!(err(person("", "1990-02-03", "")).contains("full_name"));
        assert!(err(person("Sam", "03/02/1990", "")).contains("date_of_birth"));
        assert!(err(person("Sam", "1990-02-03", "1234")).contains("pnc_number"));
        // Not ASCII: refused, never a panic on a character boundary.
        assert!(err(person("Sam", "1990-02-03", "90/1234É")).contains("pnc_number"));
        assert!(err(person("Sam", "1990-02-03", "90/١٢٣٤X")).contains("pnc_number"));
        assert!(err(person("Sam", "1990-02-03", "É/")).contains("pnc_number"));
    }

    #[test]
    fn references_depend_on_the_key_and_grants_open_only_for_their_holder() {
        let mut rng = rand_core::OsRng;
        let k1 = LinkageKey::generate(1, &mut rng);
        let k2 = LinkageKey::generate(2, &mut rng);
        let id = "name-dob:sam oneill|1990-02-03";
        assert_eq!(k1.reference(id), k1.reference(id));
        assert_ne!(k1.reference(id), k2.reference(id));
        assert_ne!(k1.reference(id), k1.reference("name-dob:sam oneil|1990-02-03"));
        let police = PartySecrets::generate("police-hru".parse().unwrap(), &mut rng);
        let evaluation = PartySecrets::generate("evaluation".parse().unwrap(), &mut rng);
        let holder = EncryptionKey::from_bytes(&police.encryption_public_bytes()).unwrap();
        let members = k1.grant("cheshire-hru", &[(police.party.clone(), holder)], &mut rng);
        assert_eq!(LinkageKey::open("cheshire-hru", 1, &members, &police), Some(k1.clone()));
        assert_eq!(
            LinkageKey::open("cheshire-hru", 2, &members, &police),
            None,
            "bound to its generation"
        );
        assert_eq!(
            LinkageKey::open("other", 1, &members, &police),
            None,
            "bound to its agreement"
        );
        assert_eq!(LinkageKey::open("cheshire-hru", 1, &members, &evaluation), None);
    }
}
