//! Subjects and filters of every `hru.` family (DESIGN §8): the only place they are spelled.
//!
//! | family | subject |
//! | --- | --- |
//! | case events | `hru.evt.<case>.<producer>.<EventType>` |
//! | access records | `hru.acc.<case>.<producer>` (kept off `hru.evt` so reads never move a case's version) |
//! | key grants | `hru.key.<producer>.<audience>` |
//! | public control events | `hru.ctl.<producer>.<EventType>` |
//! | position batches | `hru.pos.<vendor>.<instance>.<partition>` (`hru.pos.<vendor>.<instance>` before partitions) |
//! | victim alerts | `hru.alert.<device>` |
//! | replies | `_INBOX_<identity>.…` |

use std::fmt;

use hru_domain::{AudienceId, CaseId, EventHeader, EventType, PartyId};

/// A concrete subject a message is published under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject(String);

/// A subject filter (may hold `*` and `>` wildcards), for consumers, views and permissions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Filter(String);

macro_rules! text_type {
    ($t:ty) => {
        impl $t {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<$t> for String {
            fn from(s: $t) -> String {
                s.0
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
text_type!(Subject);
text_type!(Filter);

/// The token in place of a vendor in a partition claim's subject (no party id starts with `_`).
const CLAIM_TOKEN: &str = "_claim";

impl Subject {
    /// A case event: `hru.evt.<case>.<producer>.<EventType>`.
    pub fn event(case: CaseId, producer: &PartyId, event_type: EventType) -> Self {
        Self(format!("hru.evt.{}.{producer}.{event_type}", case.token()))
    }

    /// An access record: `hru.acc.<case>.<producer>`.
    pub fn access(case: CaseId, producer: &PartyId) -> Self {
        Self(format!("hru.acc.{}.{producer}", case.token()))
    }

    /// A key grant of `producer` to `audience`: `hru.key.<producer>.<audience>`.
    pub fn key_grant(producer: &PartyId, audience: &AudienceId) -> Self {
        Self(format!("hru.key.{producer}.{audience}"))
    }

    /// A public control event: `hru.ctl.<producer>.<EventType>`.
    pub fn control(producer: &PartyId, event_type: EventType) -> Self {
        Self(format!("hru.ctl.{producer}.{event_type}"))
    }

    /// A position batch of one gateway instance for one partition of the position stream:
    /// `hru.pos.<vendor>.<instance>.<partition>`.
    pub fn positions(vendor: &PartyId, instance: &str, partition: u32) -> Self {
        Self(format!("hru.pos.{vendor}.{instance}.{partition}"))
    }

    /// A geofence instance's claim on an idle partition of the position stream (one no instance
    /// holds and nothing is delivered from): `hru.pos._claim.<party>.<partition>`. Stored in
    /// the partition like a batch, it gets the partition's consumer a pinned instance; it
    /// carries nothing else.
    pub fn position_claim(party: &PartyId, partition: u32) -> Self {
        Self(format!("hru.pos.{CLAIM_TOKEN}.{party}.{partition}"))
    }

    /// Whether this is a partition claim (see [`Subject::position_claim`]), not a batch.
    pub fn is_position_claim(&self) -> bool {
        self.0.starts_with(&format!("hru.pos.{CLAIM_TOKEN}."))
    }

    /// Whether this is a position subject of `vendor`'s gateway `instance`: with a partition
    /// token (`Some(partition)`), or without one as gateways published before partitions
    /// (`Some(0)`); `None` when it is not.
    pub fn position_partition(&self, vendor: &PartyId, instance: &str) -> Option<u32> {
        let rest = self.0.strip_prefix("hru.pos.")?;
        let rest = rest.strip_prefix(vendor.as_str())?.strip_prefix('.')?;
        let rest = rest.strip_prefix(instance)?;
        if rest.is_empty() {
            return Some(0);
        }
        let token = rest.strip_prefix('.')?;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) || token.len() > 9 {
            return None;
        }
        token.parse().ok()
    }

    /// One chunk (`part` a number) or the manifest (`part` = `m`) of a geofence state snapshot
    /// in `slot`: `hru.snap.<party>.<instance>.<slot>.<part>`.
    pub fn snapshot(party: &PartyId, instance: &str, slot: u32, part: &str) -> Self {
        Self(format!("hru.snap.{party}.{instance}.{slot}.{part}"))
    }

    /// A geofence instance's heartbeat: `hru.hb.<party>.<instance>`.
    pub fn heartbeat(party: &PartyId, instance: &str) -> Self {
        Self(format!("hru.hb.{party}.{instance}"))
    }

    /// A victim device's alerts: `hru.alert.<device>`.
    pub fn alert(device: &str) -> Self {
        Self(format!("hru.alert.{device}"))
    }

    /// A paired device's receipt of its alerts: `hru.receipt.<device>`.
    pub fn receipt(device: &str) -> Self {
        Self(format!("hru.receipt.{device}"))
    }

    /// The subject an envelope with `header` is published under; `grant_audience` is the
    /// audience a `KeyGranted` envelope grants to. A position batch (and the grants published
    /// with it) carries its partition in the subject only: see [`Subject::position_partition`].
    pub fn of_header(header: &EventHeader, grant_audience: Option<&AudienceId>) -> Self {
        let party = &header.producer.party;
        match (header.event_type, header.case_id, grant_audience) {
            (EventType::KeyGranted, _, Some(audience)) => Self::key_grant(party, audience),
            (EventType::AccessLogged, Some(case), _) => Self::access(case, party),
            (t, Some(case), _) => Self::event(case, party, t),
            (t, None, _) => Self::control(party, t),
        }
    }

    /// Whether this subject is one `filter` matches (NATS token rules: `*` one token, `>` the rest).
    pub fn matches(&self, filter: &Filter) -> bool {
        let mut subject = self.0.split('.');
        for token in filter.0.split('.') {
            match (token, subject.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(s)) if t == s => {}
                _ => return false,
            }
        }
        subject.next().is_none()
    }

    /// A subject as the server (or a store) gave it back, for example the one a message arrived on.
    pub fn from_wire(text: impl Into<String>) -> Self {
        Self(text.into())
    }
}

impl PartialEq<str> for Subject {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Subject {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Filter {
    /// Whether a subject as stored (its text) is one this filter matches.
    pub fn admits(&self, subject: &str) -> bool {
        Subject(subject.to_owned()).matches(self)
    }

    /// Everything (`>`).
    pub fn everything() -> Self {
        Self(">".to_owned())
    }

    /// Every case event of every case: `hru.evt.>`.
    pub fn all_case_events() -> Self {
        Self("hru.evt.>".to_owned())
    }

    /// Every access record: `hru.acc.>`.
    pub fn all_access() -> Self {
        Self("hru.acc.>".to_owned())
    }

    /// Every key grant: `hru.key.>`.
    pub fn all_key_grants() -> Self {
        Self("hru.key.>".to_owned())
    }

    /// Every public control event: `hru.ctl.>`.
    pub fn all_control() -> Self {
        Self("hru.ctl.>".to_owned())
    }

    /// Every position batch: `hru.pos.>`.
    pub fn all_positions() -> Self {
        Self("hru.pos.>".to_owned())
    }

    /// Every geofence state snapshot: `hru.snap.>`.
    pub fn all_snapshots() -> Self {
        Self("hru.snap.>".to_owned())
    }

    /// A party's snapshots: `hru.snap.<party>.>`.
    pub fn party_snapshots(party: &PartyId) -> Self {
        Self(format!("hru.snap.{party}.>"))
    }

    /// The manifests of one instance's snapshots: `hru.snap.<party>.<instance>.*.m`.
    pub fn snapshot_manifests(party: &PartyId, instance: &str) -> Self {
        Self(format!("hru.snap.{party}.{instance}.*.m"))
    }

    /// Every geofence heartbeat: `hru.hb.>`.
    pub fn all_heartbeats() -> Self {
        Self("hru.hb.>".to_owned())
    }

    /// A party's heartbeats: `hru.hb.<party>.*`.
    pub fn party_heartbeats(party: &PartyId) -> Self {
        Self(format!("hru.hb.{party}.*"))
    }

    /// Every alert to any victim device: `hru.alert.*`.
    pub fn all_alerts() -> Self {
        Self("hru.alert.*".to_owned())
    }

    /// One case's events (its version is the last of these): `hru.evt.<case>.>`.
    pub fn case_events(case: CaseId) -> Self {
        Self(format!("hru.evt.{}.>", case.token()))
    }

    /// One case's access records: `hru.acc.<case>.>`.
    pub fn case_access(case: CaseId) -> Self {
        Self(format!("hru.acc.{}.>", case.token()))
    }

    /// One event type in one case, from any producer: `hru.evt.<case>.*.<EventType>`.
    pub fn case_events_of_type(case: CaseId, event_type: EventType) -> Self {
        Self(format!("hru.evt.{}.*.{event_type}", case.token()))
    }

    /// One event type in any case, from any producer: `hru.evt.*.*.<EventType>`.
    pub fn events_of_type(event_type: EventType) -> Self {
        Self(format!("hru.evt.*.*.{event_type}"))
    }

    /// One producer's events of one type in any case: `hru.evt.*.<producer>.<EventType>`.
    pub fn producer_events_of_type(producer: &PartyId, event_type: EventType) -> Self {
        Self(format!("hru.evt.*.{producer}.{event_type}"))
    }

    /// One producer's events of any type in any case: `hru.evt.*.<producer>.*`.
    pub fn producer_events(producer: &PartyId) -> Self {
        Self(format!("hru.evt.*.{producer}.*"))
    }

    /// One producer's access records in any case: `hru.acc.*.<producer>`.
    pub fn producer_access(producer: &PartyId) -> Self {
        Self(format!("hru.acc.*.{producer}"))
    }

    /// One producer's key grants to any audience: `hru.key.<producer>.*`.
    pub fn producer_key_grants(producer: &PartyId) -> Self {
        Self(format!("hru.key.{producer}.*"))
    }

    /// One type of control event from any producer: `hru.ctl.*.<EventType>`.
    pub fn control_of_type(event_type: EventType) -> Self {
        Self(format!("hru.ctl.*.{event_type}"))
    }

    /// One producer's control events: `hru.ctl.<producer>.*`.
    pub fn producer_control(producer: &PartyId) -> Self {
        Self(format!("hru.ctl.{producer}.*"))
    }

    /// One vendor's position batches from any instance, in any partition: `hru.pos.<vendor>.>`.
    pub fn vendor_positions(vendor: &PartyId) -> Self {
        Self(format!("hru.pos.{vendor}.>"))
    }

    /// One geofence party's partition claims: `hru.pos._claim.<party>.*`.
    pub fn party_position_claims(party: &PartyId) -> Self {
        Self(format!("hru.pos.{CLAIM_TOKEN}.{party}.*"))
    }

    /// The position batches of one partition, from every vendor and gateway instance:
    /// `hru.pos.*.*.<partition>`, with, for partition 0, the batches published before
    /// partitions (`hru.pos.*.*`).
    pub fn partition_positions(partition: u32) -> Vec<Self> {
        let mut filters = vec![Self(format!("hru.pos.*.*.{partition}"))];
        if partition == 0 {
            filters.push(Self("hru.pos.*.*".to_owned()));
        }
        filters
    }

    /// Exactly one subject.
    pub fn exactly(subject: &Subject) -> Self {
        Self(subject.0.clone())
    }

    /// The reply inbox prefix of a broker identity, `_INBOX_<id>`: the only subjects it may
    /// subscribe to end under it.
    pub fn inbox_prefix(identity: &str) -> String {
        format!("_INBOX_{identity}")
    }

    /// Every reply subject of a broker identity: `_INBOX_<id>.>`.
    pub fn inbox(identity: &str) -> Self {
        Self(format!("{}.>", Self::inbox_prefix(identity)))
    }
}

impl From<Subject> for Filter {
    fn from(s: Subject) -> Self {
        Self(s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(s: &str) -> PartyId {
        PartyId::parse(s, "party").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn filters_match_the_subjects_of_their_family() {
        let case = CaseId::random();
        let police = party("police-hru");
        let referral = Subject::event(case, &police, EventType::ReferralReceived);
        assert!(referral.matches(&Filter::case_events(case)));
        assert!(referral.matches(&Filter::all_case_events()));
        assert!(referral.matches(&Filter::producer_events(&police)));
        assert!(referral.matches(&Filter::events_of_type(EventType::ReferralReceived)));
        assert!(!referral.matches(&Filter::events_of_type(EventType::TagBreach)));
        assert!(!referral.matches(&Filter::case_events(CaseId::random())));
        let access = Subject::access(case, &police);
        assert!(
            !access.matches(&Filter::case_events(case)),
            "reads never move a case's version"
        );
        assert!(access.matches(&Filter::case_access(case)));
        assert!(access.matches(&Filter::producer_access(&police)));
        let batch = Subject::positions(&police, "gw-1", 2);
        assert_eq!(batch.position_partition(&police, "gw-1"), Some(2));
        assert_eq!(batch.position_partition(&police, "gw"), None);
        assert_eq!(
            Subject::from_wire("hru.pos.police-hru.gw-1").position_partition(&police, "gw-1"),
            Some(0)
        );
        assert_eq!(
            Subject::from_wire("hru.pos.police-hru.gw-1.x").position_partition(&police, "gw-1"),
            None
        );
        assert!(batch.matches(&Filter::vendor_positions(&police)));
        assert!(batch.matches(&Filter::partition_positions(2)[0]));
        assert!(!batch.matches(&Filter::partition_positions(1)[0]));
        assert!(Subject::from_wire("hru.pos.police-hru.gw-1").matches(&Filter::partition_positions(0)[1]));
        let claim = Subject::position_claim(&police, 2);
        assert!(claim.is_position_claim() && !batch.is_position_claim());
        assert!(claim.matches(&Filter::partition_positions(2)[0]));
        assert!(claim.matches(&Filter::party_position_claims(&police)));
        assert!(!claim.matches(&Filter::vendor_positions(&police)));
        assert!(Subject::alert("dev-1").matches(&Filter::all_alerts()));
        assert!(!Subject::alert("dev-1").matches(&Filter::producer_control(&police)));
    }
}
