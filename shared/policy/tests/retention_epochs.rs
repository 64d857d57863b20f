//! Epoch keys per retention class: two event types the agreement keeps for different times
//! never share an epoch key, even for the same audience in the same month, so destroying the
//! shorter class's key at its expiry erases nothing kept longer (and keeps nothing past its
//! time). Each grant names the class its key serves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{CaseId, EventType, ProducerId, split_draft};
use hru_envelope::{Directory, PartySecrets, Sealer};
use hru_policy::CompiledIsa;
use hru_wire::v1 as pb;
use prost::Message as _;

const JUNE_2026: i64 = 1_780_000_000_000;

/// Police shares the referral's and the intervention's facts with itself and probation alike;
/// the referral is kept seven years, the intervention ninety days.
const AGREEMENT: &str = r#"
[agreement]
id = "classes"
version = 1
effective_from = "2026-01-01"

[[legal_basis]]
id = "b"
text = "basis"

[[clause]]
id = "1"
text = "clause"
bases = ["b"]

[[party]]
id = "police-hru"
controller = "police"
role = "police"

[[party]]
id = "probation"
controller = "probation"
role = "probation"

[[produce]]
party = "police-hru"
events = ["ReferralReceived", "InterventionStarted"]

[[share]]
events = ["ReferralReceived", "InterventionStarted"]
sections = ["core"]
to = ["police-hru", "probation"]
purpose = "p"
clause = "1"

[retention]
default = "6y"
ReferralReceived = "7y"
InterventionStarted = "90d"
"#;

#[test]
fn two_retention_classes_never_share_an_epoch_key() {
    let police = PartySecrets::generate("police-hru".parse().unwrap(), &mut rand_core::OsRng);
    let probation = PartySecrets::generate("probation".parse().unwrap(), &mut rand_core::OsRng);
    let mut directory = Directory::default();
    directory.insert_secrets(&police, "police");
    directory.insert_secrets(&probation, "probation");
    let isa = CompiledIsa::compile(AGREEMENT, "classes.toml", Some(&directory)).unwrap();
    let mut sealer = Sealer::new(
        ProducerId {
            party: police.party.clone(),
            instance: "node-1".into(),
        },
        police.signing.clone(),
    );
    let events = [
        pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore::default()),
            ..Default::default()
        }),
        pb::event_draft::Event::InterventionStarted(pb::InterventionStarted {
            core: Some(Default::default()),
        }),
        // A second referral in the same month reuses the referral's key.
        pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore::default()),
            ..Default::default()
        }),
    ];
    let mut log = Vec::new();
    for event in events {
        let (t, sections) = split_draft(event);
        log.extend(
            sealer
                .seal_event(
                    CaseId::random(),
                    t,
                    sections,
                    JUNE_2026,
                    JUNE_2026,
                    &isa,
                    &directory,
                    &mut rand_core::OsRng,
                )
                .unwrap(),
        );
    }
    let envelope = |e: &hru_envelope::SealedEnvelope| pb::Envelope::decode(e.bytes.as_slice()).unwrap();
    let epoch_of = |t: EventType| -> Vec<u32> {
        log.iter()
            .filter(|e| e.header.event_type == t)
            .map(|e| envelope(e).sections[0].epoch)
            .collect()
    };
    let referrals = epoch_of(EventType::ReferralReceived);
    let interventions = epoch_of(EventType::InterventionStarted);
    assert_eq!(
        referrals[0], referrals[1],
        "one class, one month, one audience: one key"
    );
    assert_ne!(
        referrals[0], interventions[0],
        "a 7-year referral and a 90-day intervention share no epoch key"
    );
    let grants: Vec<pb::KeyGranted> = log
        .iter()
        .filter(|e| e.header.event_type == EventType::KeyGranted)
        .map(|e| pb::KeyGranted::decode(envelope(e).body.as_slice()).unwrap())
        .collect();
    let mut classes: Vec<(u32, String)> = grants.iter().map(|g| (g.epoch, g.retention.clone())).collect();
    classes.sort();
    assert_eq!(
        classes,
        [(referrals[0], "7y".to_owned()), (interventions[0], "90d".to_owned())]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "each grant names the class its key serves"
    );
}

#[test]
fn an_epoch_expires_its_retention_after_the_end_of_its_month() {
    use hru_policy::Retention;
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    let seven_years = Retention::parse("7y").unwrap();
    assert_eq!(seven_years.class(), "7y");
    assert_eq!(seven_years.expires("2026-12"), Some(at("2034-01-01T00:00:00Z")));
    let ninety_days = Retention::parse("90d").unwrap();
    assert_eq!(ninety_days.class(), "90d");
    assert_eq!(ninety_days.expires("2026-12"), Some(at("2027-04-01T00:00:00Z")));
    assert_eq!(
        Retention::parse("18m").unwrap().expires("2026-01"),
        Some(at("2027-08-01T00:00:00Z"))
    );
    assert_eq!(Retention::parse("2w").unwrap().class(), "14d");
    assert_eq!(seven_years.expires("2026-13"), None);
    assert_eq!(seven_years.expires("December"), None);
}
