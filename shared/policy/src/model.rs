//! The agreement file as written: TOML tables with the source span of every value that an
//! error may point at. Validation and compilation live in `compile`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The roles a party may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Police officers of the HRU.
    Police,
    /// The force control centre.
    ControlRoom,
    /// Probation.
    Probation,
    /// An NHS trust (clinicians).
    Health,
    /// Victim advocacy.
    Advocacy,
    /// The electronic-monitoring vendor.
    EmVendor,
    /// The geofence service.
    Geofence,
    /// Evaluators and analysts.
    Evaluation,
    /// Auditors and the data-protection officer.
    Audit,
}

impl Role {
    /// Every role with its name in the file.
    pub const ALL: [(Role, &'static str); 9] = [
        (Role::Police, "police"),
        (Role::ControlRoom, "control-room"),
        (Role::Probation, "probation"),
        (Role::Health, "health"),
        (Role::Advocacy, "advocacy"),
        (Role::EmVendor, "em-vendor"),
        (Role::Geofence, "geofence"),
        (Role::Evaluation, "evaluation"),
        (Role::Audit, "audit"),
    ];

    /// The role's name in the file.
    pub fn name(self) -> &'static str {
        Role::ALL.iter().find(|(r, _)| *r == self).map_or("?", |(_, n)| n)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIsa {
    pub(crate) agreement: Spanned<RawAgreement>,
    #[serde(default)]
    pub(crate) legal_basis: Vec<Spanned<RawBasis>>,
    #[serde(default)]
    pub(crate) clause: Vec<Spanned<RawClause>>,
    #[serde(default)]
    pub(crate) party: Vec<Spanned<RawParty>>,
    #[serde(default)]
    pub(crate) produce: Vec<Spanned<RawProduce>>,
    #[serde(default)]
    pub(crate) share: Vec<Spanned<RawShare>>,
    #[serde(default)]
    pub(crate) never: Vec<Spanned<RawNever>>,
    #[serde(default)]
    pub(crate) retention: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub(crate) call: Vec<Spanned<RawCall>>,
    #[serde(default)]
    pub(crate) hours: Option<crate::hours::RawHours>,
    #[serde(default)]
    pub(crate) linkage: Option<RawLinkage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLinkage {
    pub(crate) custodian: Spanned<String>,
    pub(crate) holders: Vec<Spanned<String>>,
    pub(crate) clause: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgreement {
    pub(crate) id: Spanned<String>,
    pub(crate) version: Spanned<i64>,
    #[serde(default)]
    pub(crate) title: String,
    pub(crate) effective_from: Spanned<String>,
    pub(crate) effective_until: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBasis {
    pub(crate) id: Spanned<String>,
    pub(crate) text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClause {
    pub(crate) id: Spanned<String>,
    pub(crate) text: String,
    #[serde(default)]
    pub(crate) bases: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawParty {
    pub(crate) id: Spanned<String>,
    pub(crate) controller: String,
    pub(crate) role: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProduce {
    pub(crate) party: Spanned<String>,
    pub(crate) events: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShare {
    pub(crate) events: Vec<Spanned<String>>,
    pub(crate) sections: Vec<Spanned<String>>,
    pub(crate) from: Option<Vec<Spanned<String>>>,
    pub(crate) to: Vec<Spanned<String>>,
    pub(crate) purpose: Spanned<String>,
    pub(crate) clause: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNever {
    pub(crate) events: Option<Vec<Spanned<String>>>,
    pub(crate) sections: Vec<Spanned<String>>,
    pub(crate) to: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCall {
    pub(crate) party: Spanned<String>,
    pub(crate) methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) on: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) purpose: Spanned<String>,
    pub(crate) clause: Spanned<String>,
}
