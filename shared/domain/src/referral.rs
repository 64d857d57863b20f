//! The typed referral: what a party learns from the sections of a ReferralReceived it may open.

use hru_wire::v1 as pb;

use crate::FieldError;

/// The pseudonymous core of a referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    /// Keyed HMAC of the subject's normalised identifier.
    pub subject_ref: [u8; 32],
    /// Reported behaviours, at least one.
    pub behaviours: Vec<pb::Behaviour>,
    /// Policing area.
    pub area: String,
    /// When it arrived, Unix ms.
    pub received_at_ms: i64,
    /// Whether it arrived out of hours.
    pub out_of_hours: bool,
    /// Crime reference, if recorded.
    pub crime_reference: Option<String>,
}

impl TryFrom<pb::ReferralCore> for Referral {
    type Error = FieldError;
    fn try_from(wire: pb::ReferralCore) -> Result<Self, FieldError> {
        let pb::ReferralCore {
            subject_ref,
            behaviours,
            area,
            received_at_ms,
            out_of_hours,
            crime_reference,
        } = wire;
        let subject_ref = subject_ref
            .as_slice()
            .try_into()
            .map_err(|_| FieldError::new("subject_ref", format!("must be 32 bytes, got {}", subject_ref.len())))?;
        if behaviours.is_empty() {
            return Err(FieldError::new("behaviours", "must name at least one behaviour"));
        }
        let behaviours = behaviours
            .into_iter()
            .enumerate()
            .map(|(i, b)| match pb::Behaviour::try_from(b) {
                Ok(pb::Behaviour::Unspecified) | Err(_) => Err(FieldError::new(
                    format!("behaviours[{i}]"),
                    format!("{b} is not a known behaviour"),
                )),
                Ok(known) => Ok(known),
            })
            .collect::<Result<_, _>>()?;
        if area.trim().is_empty() {
            return Err(FieldError::missing("area"));
        }
        if received_at_ms <= 0 {
            return Err(FieldError::new("received_at_ms", "must be a positive Unix time in ms"));
        }
        Ok(Self {
            subject_ref,
            behaviours,
            area,
            received_at_ms,
            out_of_hours,
            crime_reference: (!crime_reference.is_empty()).then_some(crime_reference),
        })
    }
}

/// The identities in a referral (readable only by parties its `identity` audience names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralIdentity {
    /// The person referred.
    pub subject: pb::PersonIdentity,
    /// The victim, if named.
    pub victim: Option<pb::PersonIdentity>,
}

impl TryFrom<pb::ReferralIdentity> for ReferralIdentity {
    type Error = FieldError;
    fn try_from(wire: pb::ReferralIdentity) -> Result<Self, FieldError> {
        let pb::ReferralIdentity { subject, victim } = wire;
        let subject = subject.ok_or_else(|| FieldError::missing("subject"))?;
        if subject.full_name.trim().is_empty() {
            return Err(FieldError::missing("subject.full_name"));
        }
        Ok(Self { subject, victim })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referral_core_names_bad_fields() {
        let good = pb::ReferralCore {
            subject_ref: vec![7; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Cheshire West".into(),
            received_at_ms: 1,
            out_of_hours: true,
            crime_reference: String::new(),
        };
        assert!(Referral::try_from(good.clone()).is_ok());
        let mut bad = good.clone();
        bad.behaviours.push(99);
        assert_eq!(
            Referral::try_from(bad).map_err(|e| e.field),
            Err("behaviours[1]".to_owned())
        );
        let mut bad = good.clone();
        bad.subject_ref.pop();
        assert_eq!(
            Referral::try_from(bad).map_err(|e| e.field),
            Err("subject_ref".to_owned())
        );
        let mut bad = good;
        bad.area = " ".into();
        assert_eq!(Referral::try_from(bad).map_err(|e| e.field), Err("area".to_owned()));
    }
}
