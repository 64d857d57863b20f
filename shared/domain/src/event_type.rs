//! Event types of DESIGN §5, the sections each one has, and the split of a draft event into
//! its encoded sections (and back, for the sections a reader could open).

use std::fmt;
use std::str::FromStr;

use hru_wire::v1 as pb;
use pb::event_draft::Event as Draft;
use prost::Message;

use crate::FieldError;

/// One section of an event before encryption: its name and the encoded section message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainSection {
    /// Section name, e.g. `core`.
    pub name: &'static str,
    /// The encoded section message.
    pub bytes: Vec<u8>,
}

macro_rules! event_types {
    (
        sectioned { $( $variant:ident => [ $( $section:ident ),+ ] ),+ $(,)? }
        public { $( $public:ident ),+ $(,)? }
    ) => {
        /// Every event type the log carries.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $( #[doc = stringify!($variant)] $variant, )+
            $( #[doc = stringify!($public)] $public, )+
            /// A signed, encrypted batch of position fixes (HRU_POSITIONS).
            PositionBatch,
        }

        impl EventType {
            /// Every event type, in declaration order.
            pub const ALL: &'static [EventType] = &[
                $( EventType::$variant, )+ $( EventType::$public, )+ EventType::PositionBatch,
            ];

            /// The type's name as it appears in headers and subjects.
            pub fn name(self) -> &'static str {
                match self {
                    $( EventType::$variant => stringify!($variant), )+
                    $( EventType::$public => stringify!($public), )+
                    EventType::PositionBatch => "PositionBatch",
                }
            }

            /// The names of the encrypted sections this type may carry; empty for public events.
            pub fn sections(self) -> &'static [&'static str] {
                match self {
                    $( EventType::$variant => &[ $( stringify!($section) ),+ ], )+
                    $( EventType::$public => &[], )+
                    EventType::PositionBatch => &["batch"],
                }
            }
        }

        /// Split a draft event into its type and encoded sections (absent sections are omitted).
        pub fn split_draft(draft: Draft) -> (EventType, Vec<PlainSection>) {
            match draft {
                $( Draft::$variant(event) => {
                    let pb::$variant { $( $section ),+ } = event;
                    let mut out = Vec::new();
                    $( if let Some(s) = $section {
                        out.push(PlainSection { name: stringify!($section), bytes: s.encode_to_vec() });
                    } )+
                    (EventType::$variant, out)
                } )+
            }
        }

        /// Rebuild a draft event from the sections a reader opened; unopened ones stay empty.
        pub fn join_sections(
            event_type: EventType,
            opened: &[(&str, &[u8])],
        ) -> Result<Draft, FieldError> {
            match event_type {
                $( EventType::$variant => {
                    let mut event = pb::$variant::default();
                    for (name, bytes) in opened {
                        match *name {
                            $( stringify!($section) => {
                                event.$section = Some(Message::decode(*bytes).map_err(|e| {
                                    FieldError::new(stringify!($section), format!("does not decode: {e}"))
                                })?);
                            } )+
                            other => return Err(FieldError::new(
                                "sections",
                                format!("{} has no section {other:?}", event_type),
                            )),
                        }
                    }
                    Ok(Draft::$variant(event))
                } )+
                other => Err(FieldError::new(
                    "event_type",
                    format!("{other} is a public event with no sections"),
                )),
            }
        }
    };
}

event_types! {
    sectioned {
        ReferralReceived => [core, identity, narrative],
        ScreeningCompleted => [core, figures],
        RiskAssessed => [summary, clinical],
        InterventionStarted => [core],
        InterventionCompleted => [core],
        OrderIssued => [core],
        TagFitted => [core],
        TagRemoved => [core],
        ZoneDefined => [core],
        ZoneRevoked => [core],
        ProximityRuleSet => [core],
        TagBreach => [core],
        BreachAcknowledged => [core, figures],
        SafetyPlanUpdated => [victim, identity, figures],
        ReviewRecorded => [summary, clinical, figures],
        ChargeDecided => [core],
        ReoffenceRecorded => [core],
        CaseClosed => [core],
        AccessLogged => [core],
        SubjectRekeyed => [core],
    }
    public { PolicyAdopted, KeyGranted, KeyRotated, KeyRevoked, EpochKeyDestroyed, PeriodKeysPublished, LegalHoldPlaced, LegalHoldReleased, GatewayRetired, ChainCheckpoint, CheckpointWitnessed, LinkageKeyGranted }
}

impl EventType {
    /// Whether the event's content travels as a signed cleartext body rather than sections.
    pub fn is_public(self) -> bool {
        self.sections().is_empty()
    }

    /// Whether the event belongs to a case (its header must carry a case id).
    pub fn has_case(self) -> bool {
        !self.is_public() && self != EventType::PositionBatch
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EventType {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| FieldError::new("event_type", format!("{s:?} is not an event type of hru.v1")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for t in EventType::ALL {
            assert_eq!(t.name().parse::<EventType>(), Ok(*t));
        }
        assert!("Referral".parse::<EventType>().is_err());
    }

    #[test]
    fn every_sectioned_type_is_in_the_draft_oneof() {
        let pool = hru_wire::descriptor_pool();
        let draft = pool
            .get_message_by_name("hru.v1.EventDraft")
            .expect("EventDraft exists");
        for t in EventType::ALL.iter().filter(|t| t.has_case()) {
            let message = pool
                .get_message_by_name(&format!("hru.v1.{}", t.name()))
                .unwrap_or_else(|| panic!("{t} has a message"));
            let fields: Vec<String> = message.fields().map(|f| f.name().to_owned()).collect();
            assert_eq!(fields, t.sections(), "{t}: section list matches the proto");
            assert!(
                draft
                    .fields()
                    .any(|f| f.kind().as_message().map(|m| m.full_name()) == Some(message.full_name())),
                "{t} is a variant of EventDraft"
            );
        }
    }

    #[test]
    fn split_then_join_keeps_every_section() {
        let draft = Draft::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore {
                area: "Cheshire East".into(),
                ..Default::default()
            }),
            identity: None,
            narrative: Some(pb::ReferralNarrative {
                text: "repeated contact".into(),
            }),
        });
        let (t, sections) = split_draft(draft.clone());
        assert_eq!(t, EventType::ReferralReceived);
        assert_eq!(
            sections.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["core", "narrative"]
        );
        let opened: Vec<(&str, &[u8])> = sections.iter().map(|s| (s.name, s.bytes.as_slice())).collect();
        assert_eq!(join_sections(t, &opened), Ok(draft));
    }
}
