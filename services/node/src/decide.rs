//! Commands decided on the case (DESIGN §10): a command reads the case's events, a pure
//! function here decides what to append or why not, and the append carries the case's
//! version as its concurrency condition, so two operators cannot both win.

use hru_domain::{CaseEvent, EventHeader};

/// What a case's history says, event by event, as this node could open it.
pub(crate) struct Fact<'a> {
    /// The event's log sequence.
    pub sequence: u64,
    /// Its header.
    pub header: &'a EventHeader,
    /// What could be opened of it.
    pub event: &'a CaseEvent,
}

/// Why a command is refused on the case as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No breach episode with this id in the case.
    UnknownBreach,
    /// No zone with this id was defined in the case.
    UnknownZone,
    /// The zone was revoked already.
    ZoneAlreadyRevoked {
        /// The log sequence of that revocation.
        sequence: u64,
    },
    /// The case holds a referral already.
    AlreadyReferred {
        /// The log sequence of that referral.
        sequence: u64,
    },
    /// Someone acknowledged the breach first.
    AlreadyAcknowledged {
        /// Who (the operator the acknowledgement names).
        by: String,
        /// The log sequence of that acknowledgement.
        sequence: u64,
    },
}

/// An acknowledgement the case allows: when the breach was raised (for the response time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acknowledge {
    /// When the breach was first recorded in the log (ms).
    pub raised_at_ms: i64,
    /// The breach's kind.
    pub kind: hru_wire::v1::BreachKind,
}

/// The facts of a case's history as the node read it.
pub(crate) fn facts(history: &[crate::case_service::HistoryEntry]) -> Vec<Fact<'_>> {
    history
        .iter()
        .map(|(sequence, header, event)| Fact {
            sequence: *sequence,
            header,
            event,
        })
        .collect()
}

/// A refusal as the caller's answer: FAILED_PRECONDITION naming what stands in the way, or
/// NOT_FOUND for what the case does not hold.
pub(crate) fn refusal_status(refusal: Refusal) -> tonic::Status {
    use tonic::Status;
    match refusal {
        Refusal::UnknownBreach => Status::not_found("no breach episode with this id in the case"),
        Refusal::UnknownZone => Status::not_found("no zone with this id was defined in the case"),
        Refusal::ZoneAlreadyRevoked { sequence } => {
            Status::failed_precondition(format!("the zone was revoked already (log sequence {sequence})"))
        }
        Refusal::AlreadyReferred { sequence } => Status::failed_precondition(format!(
            "the case already holds a referral (log sequence {sequence}); a new referral opens a new case"
        )),
        Refusal::AlreadyAcknowledged { by, sequence } => Status::failed_precondition(format!(
            "the breach was already acknowledged by {by} (log sequence {sequence})"
        )),
    }
}

/// Decide an acknowledgement of `breach`: allowed once per breach episode the case holds.
pub(crate) fn acknowledge(history: &[Fact<'_>], breach: uuid::Uuid) -> Result<Acknowledge, Refusal> {
    let mut raised = None;
    for fact in history {
        match fact.event {
            CaseEvent::TagBreach { core: Some(b) } if b.breach_id == breach => {
                raised.get_or_insert((fact.header.recorded_at_ms, b.kind));
            }
            CaseEvent::BreachAcknowledged { core: Some(a), .. } if a.breach_id == breach => {
                return Err(Refusal::AlreadyAcknowledged {
                    by: a.operator.clone(),
                    sequence: fact.sequence,
                });
            }
            _ => {}
        }
    }
    raised
        .map(|(raised_at_ms, kind)| Acknowledge { raised_at_ms, kind })
        .ok_or(Refusal::UnknownBreach)
}

/// Decide whether `event` may be recorded on the case as it stands: a case holds one referral
/// (a second would point it at another subject), an acknowledgement follows the
/// acknowledgement rule, a zone revocation needs a zone of the case still in force; every other
/// event the agreement lets its producer record is allowed.
pub(crate) fn record(history: &[Fact<'_>], event: &CaseEvent) -> Result<(), Refusal> {
    match event {
        CaseEvent::ReferralReceived { .. } => match history
            .iter()
            .find(|f| f.header.event_type == hru_domain::EventType::ReferralReceived)
        {
            Some(f) => Err(Refusal::AlreadyReferred { sequence: f.sequence }),
            None => Ok(()),
        },
        CaseEvent::BreachAcknowledged { core: Some(a), .. } => acknowledge(history, a.breach_id).map(|_| ()),
        CaseEvent::ZoneRevoked { core: Some(r) } => {
            let mut defined = false;
            for fact in history {
                match fact.event {
                    CaseEvent::ZoneDefined { core: Some(z) } if z.zone_id == r.zone_id => defined = true,
                    CaseEvent::ZoneRevoked { core: Some(x) } if x.zone_id == r.zone_id => {
                        return Err(Refusal::ZoneAlreadyRevoked {
                            sequence: fact.sequence,
                        });
                    }
                    _ => {}
                }
            }
            if defined { Ok(()) } else { Err(Refusal::UnknownZone) }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hru_domain::{Acknowledgement, Breach, CaseId, EventType, PartyId, ProducerId};
    use hru_wire::v1 as pb;

    use super::*;

    fn header(event_type: EventType, party: &str, at: i64) -> EventHeader {
        EventHeader {
            event_id: hru_domain::EventId::new_v7(),
            event_type,
            case_id: Some(CaseId::random()),
            producer: ProducerId {
                party: PartyId::parse(party, "party").unwrap(),
                instance: "a".into(),
            },
            key_id: hru_domain::KeyId([0; 8]),
            producer_seq: 1,
            prev_digest: hru_domain::Digest([0; 32]),
            occurred_at_ms: at,
            recorded_at_ms: at,
            policy_id: "isa".into(),
            policy_version: 1,
            schema: 1,
        }
    }

    fn breach(id: uuid::Uuid) -> CaseEvent {
        CaseEvent::TagBreach {
            core: Some(Breach {
                breach_id: id,
                tag_id: "tag-1".parse().unwrap(),
                kind: pb::BreachKind::Exclusion,
                state: pb::BreachState::Opened,
                rule_id: uuid::Uuid::nil(),
                opened_at_ms: 90,
                observed_at_ms: 90,
                position: None,
                accuracy_m: 5.0,
                distance_m: 0.0,
                late: false,
                evidence: None,
            }),
        }
    }

    fn acknowledged(id: uuid::Uuid, by: &str) -> CaseEvent {
        CaseEvent::BreachAcknowledged {
            core: Some(Acknowledgement {
                breach_id: id,
                operator: by.into(),
                action: "units sent".into(),
                response_time_ms: 10,
            }),
            figures: None,
        }
    }

    #[test]
    fn given_an_open_breach_when_acknowledged_then_allowed_with_its_raise_time() {
        let id = uuid::Uuid::now_v7();
        let (h, e) = (header(EventType::TagBreach, "geofence", 100), breach(id));
        let history = [Fact {
            sequence: 5,
            header: &h,
            event: &e,
        }];
        assert_eq!(
            acknowledge(&history, id),
            Ok(Acknowledge {
                raised_at_ms: 100,
                kind: pb::BreachKind::Exclusion
            })
        );
    }

    /// A breach raised at sequence 5 and acknowledged by Insp. Ada at sequence 7.
    fn acknowledged_breach(id: uuid::Uuid) -> Vec<crate::case_service::HistoryEntry> {
        vec![
            (5, header(EventType::TagBreach, "geofence", 100), breach(id)),
            (
                7,
                header(EventType::BreachAcknowledged, "police-control", 200),
                acknowledged(id, "Insp. Ada"),
            ),
        ]
    }

    #[test]
    fn given_an_acknowledged_breach_when_acknowledged_again_then_refused_naming_the_first() {
        let id = uuid::Uuid::now_v7();
        let entries = acknowledged_breach(id);
        let history = facts(&entries);
        assert_eq!(
            acknowledge(&history, id),
            Err(Refusal::AlreadyAcknowledged {
                by: "Insp. Ada".into(),
                sequence: 7
            })
        );
    }

    #[test]
    fn given_another_breach_acknowledged_when_acknowledged_then_allowed() {
        let (id, other) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let (h1, e1) = (header(EventType::TagBreach, "geofence", 100), breach(id));
        let (h2, e2) = (
            header(EventType::BreachAcknowledged, "police-control", 200),
            acknowledged(other, "Insp. Ada"),
        );
        let history = [
            Fact {
                sequence: 5,
                header: &h1,
                event: &e1,
            },
            Fact {
                sequence: 7,
                header: &h2,
                event: &e2,
            },
        ];
        assert!(acknowledge(&history, id).is_ok());
    }

    fn zone(id: uuid::Uuid) -> CaseEvent {
        CaseEvent::ZoneDefined {
            core: Some(hru_domain::Zone {
                zone_id: id,
                version: 1,
                kind: pb::ZoneKind::Exclusion,
                tag_id: "tag-1".parse().unwrap(),
                geojson: String::new(),
                radius_m: 100.0,
                schedule: vec![],
                exit_buffer_m: 20.0,
                label: "victim home".into(),
            }),
        }
    }

    fn revoked(id: uuid::Uuid) -> CaseEvent {
        CaseEvent::ZoneRevoked {
            core: Some(hru_domain::ZoneRevocation {
                zone_id: id,
                reason: "order varied".into(),
            }),
        }
    }

    fn referral(subject: u8) -> CaseEvent {
        CaseEvent::ReferralReceived {
            core: Some(hru_domain::Referral {
                subject_ref: [subject; 32],
                behaviours: vec![pb::Behaviour::Stalking],
                area: "Crewe".into(),
                received_at_ms: 100,
                out_of_hours: false,
                crime_reference: None,
            }),
            identity: None,
            narrative: None,
        }
    }

    #[test]
    fn given_a_referral_when_another_is_recorded_on_the_case_then_refused() {
        // A second referral would point the case at another person's subject reference.
        let (h, first) = (header(EventType::ReferralReceived, "police-hru", 100), referral(1));
        let history = [Fact {
            sequence: 3,
            header: &h,
            event: &first,
        }];
        let refused = record(&history, &referral(2));
        assert!(
            refused.is_err(),
            "a second referral on the case is refused: {refused:?}"
        );
        let status = refusal_status(refused.unwrap_err());
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("log sequence 3"), "{}", status.message());
        assert_eq!(record(&[], &referral(2)), Ok(()));
    }

    #[test]
    fn given_a_zone_in_force_when_revoked_then_allowed_once() {
        let id = uuid::Uuid::now_v7();
        let (h1, e1) = (header(EventType::ZoneDefined, "police-hru", 100), zone(id));
        let (h2, e2) = (header(EventType::ZoneRevoked, "police-hru", 200), revoked(id));
        let defined = [Fact {
            sequence: 3,
            header: &h1,
            event: &e1,
        }];
        assert_eq!(record(&defined, &revoked(id)), Ok(()));
        let twice = [
            Fact {
                sequence: 3,
                header: &h1,
                event: &e1,
            },
            Fact {
                sequence: 8,
                header: &h2,
                event: &e2,
            },
        ];
        assert_eq!(
            record(&twice, &revoked(id)),
            Err(Refusal::ZoneAlreadyRevoked { sequence: 8 })
        );
        assert_eq!(record(&[], &revoked(id)), Err(Refusal::UnknownZone));
    }

    #[test]
    fn given_an_acknowledged_breach_when_an_acknowledgement_is_recorded_then_refused() {
        let id = uuid::Uuid::now_v7();
        let entries = acknowledged_breach(id);
        let history = facts(&entries);
        assert!(matches!(
            record(&history, &acknowledged(id, "PC 202")),
            Err(Refusal::AlreadyAcknowledged { .. })
        ));
        assert_eq!(record(&history[..1], &acknowledged(id, "PC 202")), Ok(()));
    }

    #[test]
    fn given_no_such_breach_when_acknowledged_then_refused() {
        assert_eq!(acknowledge(&[], uuid::Uuid::now_v7()), Err(Refusal::UnknownBreach));
    }
}
