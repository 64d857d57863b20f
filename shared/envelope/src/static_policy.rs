//! A fixed audience table: the example agreement file `hru append` reads until the policy
//! engine compiles full ISAs, and the audiences of benchmarks and tests.

use std::collections::{BTreeMap, BTreeSet};

use hru_domain::{EventType, PartyId};
use serde::Deserialize;

use crate::{Audience, AudiencePolicy, DirectoryError, Refusal};

/// Audiences by (event type, section), the same whoever produces; deny by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAudiences {
    id: String,
    version: u32,
    rules: BTreeMap<(EventType, String), Audience>,
    retention: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    id: String,
    version: u32,
    #[serde(default)]
    share: Vec<toml::Spanned<ShareRow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareRow {
    event: toml::Spanned<String>,
    section: toml::Spanned<String>,
    to: Vec<toml::Spanned<String>>,
}

impl StaticAudiences {
    /// An empty table (shares nothing).
    pub fn new(id: &str, version: u32) -> Self {
        Self {
            id: id.to_owned(),
            version,
            rules: BTreeMap::new(),
            retention: STATIC_RETENTION_CLASS.to_owned(),
        }
    }

    /// Keep every event type for `class` (the agreement notation: "90d", "7y"); by default a
    /// table states none ([`STATIC_RETENTION_CLASS`]) and its epochs never expire.
    #[must_use]
    pub fn with_retention(mut self, class: &str) -> Self {
        class.clone_into(&mut self.retention);
        self
    }

    /// Share `section` of `event_type` with `parties` (added to any earlier rule).
    pub fn share(mut self, event_type: EventType, section: &str, parties: &[PartyId]) -> Self {
        let key = (event_type, section.to_owned());
        let mut members: BTreeSet<PartyId> = self.rules.get(&key).map(|a| a.members().clone()).unwrap_or_default();
        members.extend(parties.iter().cloned());
        if let Some(audience) = Audience::new(members) {
            self.rules.insert(key, audience);
        }
        self
    }

    /// Parse the example policy format (`id`, `version`, `[[share]] event section to`);
    /// `source` names the file in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, DirectoryError> {
        let at = |offset: usize, message: String| DirectoryError::at(source, text, offset, message);
        let file: File = toml::from_str(text).map_err(|e| DirectoryError::from_toml(source, text, &e))?;
        if file.version == 0 {
            return Err(at(0, "version must be 1 or more".into()));
        }
        let mut policy = Self::new(&file.id, file.version);
        for row in file.share {
            let row = row.into_inner();
            let event: EventType = row
                .event
                .get_ref()
                .parse()
                .map_err(|e: hru_domain::FieldError| at(row.event.span().start, e.problem))?;
            let section = row.section.get_ref();
            if !event.sections().contains(&section.as_str()) {
                return Err(at(
                    row.section.span().start,
                    format!("{event} has no section {section:?}; it has {:?}", event.sections()),
                ));
            }
            let mut parties = Vec::new();
            for p in &row.to {
                parties.push(
                    PartyId::parse(p.get_ref(), "to")
                        .map_err(|e| at(p.span().start, format!("party {}", e.problem)))?,
                );
            }
            if parties.is_empty() {
                return Err(at(row.section.span().start, "`to` must name at least one party".into()));
            }
            policy = policy.share(event, section, &parties);
        }
        Ok(policy)
    }
}

impl AudiencePolicy for StaticAudiences {
    fn policy_id(&self) -> &str {
        &self.id
    }

    fn policy_version(&self) -> u32 {
        self.version
    }

    fn audience(&self, _producer: &PartyId, event_type: EventType, section: &str) -> Result<&Audience, Refusal> {
        self.rules
            .get(&(event_type, section.to_owned()))
            .ok_or_else(|| Refusal(format!("policy {} v{} has no share rule for it", self.id, self.version)))
    }

    /// Every event type is in the table's one class.
    fn retention_class(&self, _event_type: EventType) -> String {
        self.retention.clone()
    }
}

/// The retention class of a [`StaticAudiences`] table that states none (never expires).
pub const STATIC_RETENTION_CLASS: &str = "unstated";
