//! Subject references that link (issue 19, item 4; decision 020), on a real nats-server with
//! real nodes under agreement version 2: the police HRU grants the linkage key to its holders;
//! the police and CWP record the same person independently, written differently, and get the
//! same reference; a reoffence the police record links to CWP's case in the evaluators' view;
//! a reference supplied by the caller is refused; the evaluators hold no key and see no
//! identity; a rotation grants generation 2, the custodian re-keys every case under it, new
//! references use it, and reoffences recorded under generation 1 still count.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use hru_tests::{CHESHIRE_PARTIES, World, request, succeeded};
use hru_wire::v1 as pb;
use pb::case_service_client::CaseServiceClient;
use pb::event_draft::Event;

const DAY: i64 = 86_400_000;

fn person(name: &str, dob: &str, pnc: &str) -> pb::PersonIdentity {
    pb::PersonIdentity {
        full_name: name.into(),
        date_of_birth: dob.into(),
        pnc_number: pnc.into(),
        ..Default::default()
    }
}

fn referral(subject: pb::PersonIdentity, subject_ref: Vec<u8>, received_at_ms: i64) -> Event {
    Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref,
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Cheshire East".into(),
            received_at_ms,
            out_of_hours: false,
            crime_reference: String::new(),
        }),
        identity: Some(pb::ReferralIdentity {
            subject: Some(subject),
            victim: None,
        }),
        narrative: None,
    })
}

async fn record(
    channel: &tonic::transport::Channel,
    case: uuid::Uuid,
    version: u64,
    purpose: &str,
    event: Event,
) -> Result<u64, tonic::Status> {
    hru_tests::record_event(channel, case, version, None, purpose, "caseworker", event).await
}

#[test]
fn two_parties_recording_one_person_get_one_reference_and_the_evaluators_link_without_key_or_identity() {
    // Version 2 is the agreement in force: hours, figures and the linkage key.
    let world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES)
        .with_agreement("../policies/cheshire-hru-v2.toml");
    let police_node = world.start_node("police-hru", "");
    let cwp_node = world.start_node("cwp", "");
    let evaluation_node = world.start_node("evaluation", "");
    let rt = hru_tests::runtime();
    let police = rt.block_on(world.channel(&police_node, "police-hru"));
    let cwp = rt.block_on(world.channel(&cwp_node, "cwp"));
    let evaluation = rt.block_on(world.channel(&evaluation_node, "evaluation"));
    let now = jiff::Timestamp::now().as_millisecond();
    let (case_a, case_b, case_c) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let sam = || person("Sam O'Neill", "1990-02-03", "");

    // No key granted yet: the node cannot derive a reference, and says who grants it.
    let refused = rt
        .block_on(record(
            &police,
            case_a,
            0,
            "risk-management",
            referral(sam(), Vec::new(), now - 60 * DAY),
        ))
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{}", refused.message());
    assert!(
        refused.message().contains("hru keys linkage --party police-hru"),
        "{}",
        refused.message()
    );

    // Only the custodian grants it.
    let not_custodian = world.keys_linkage("cwp", &["--reason", "first key"]);
    assert_eq!(not_custodian.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&not_custodian.stderr).contains("police-hru grants and rotates it"));
    let granted = succeeded(
        &world.keys_linkage("police-hru", &["--reason", "first key"]),
        "keys linkage",
    );
    assert!(
        granted.contains("generation 1\tto cwp, mersey-care, police-hru, probation, victim-advocacy"),
        "{granted}"
    );

    // A reference supplied by the caller is refused (before this, any 32 bytes were taken).
    let forged = rt
        .block_on(record(
            &police,
            case_a,
            0,
            "risk-management",
            referral(sam(), vec![7; 32], now - 60 * DAY),
        ))
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::InvalidArgument);
    assert!(
        forged.message().contains("draft.ReferralReceived.core.subject_ref"),
        "{}",
        forged.message()
    );
    // An identity the reference cannot be derived from names the field.
    let no_dob = rt
        .block_on(record(
            &police,
            case_a,
            0,
            "risk-management",
            referral(person("Sam O'Neill", "", ""), Vec::new(), now),
        ))
        .unwrap_err();
    assert_eq!(no_dob.code(), tonic::Code::InvalidArgument);
    assert!(
        no_dob.message().contains("identity.subject.date_of_birth"),
        "{}",
        no_dob.message()
    );

    // The police and CWP record the same person, written differently; the police another person.
    let a = rt
        .block_on(record(
            &police,
            case_a,
            0,
            "risk-management",
            referral(sam(), Vec::new(), now - 60 * DAY),
        ))
        .unwrap();
    rt.block_on(record(
        &cwp,
        case_b,
        0,
        "clinical-care",
        referral(person("  SÁM  ONEILL ", "1990-02-03", ""), Vec::new(), now - 50 * DAY),
    ))
    .unwrap();
    rt.block_on(record(
        &police,
        case_c,
        0,
        "risk-management",
        referral(
            person("Sam O'Neill", "1990-02-04", "90/1234X"),
            Vec::new(),
            now - 40 * DAY,
        ),
    ))
    .unwrap();
    // A reoffence recorded on the police case takes its subject's reference.
    let forged_reoffence = Event::ReoffenceRecorded(pb::ReoffenceRecorded {
        core: Some(pb::ReoffenceCore {
            subject_ref: vec![9; 32],
            offence: "harassment".into(),
            occurred_at_ms: now - 10 * DAY,
        }),
    });
    let refused = rt
        .block_on(record(&police, case_a, a, "risk-management", forged_reoffence))
        .unwrap_err();
    assert!(
        refused.message().contains("draft.ReoffenceRecorded.core.subject_ref"),
        "{}",
        refused.message()
    );
    rt.block_on(record(
        &police,
        case_a,
        a,
        "risk-management",
        Event::ReoffenceRecorded(pb::ReoffenceRecorded {
            core: Some(pb::ReoffenceCore {
                subject_ref: Vec::new(),
                offence: "harassment".into(),
                occurred_at_ms: now - 10 * DAY,
            }),
        }),
    ))
    .unwrap();

    // The evaluators' node: one reference for A and B, another for C; B's reoffence linked.
    let list = || {
        rt.block_on(CaseServiceClient::new(evaluation.clone()).list_cases(request(
            pb::ListCasesRequest {
                view: "outcomes".into(),
                purpose: "evaluation".into(),
            },
            "evaluation analyst",
        )))
        .unwrap()
        .into_inner()
        .rows
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = list();
        let by_case = |c: uuid::Uuid| {
            rows.iter()
                .find(|r| r.case_id == c.as_bytes().to_vec())
                .map(|r| serde_json::from_str::<serde_json::Value>(&r.json).unwrap())
        };
        if let (Some(a), Some(b), Some(c)) = (by_case(case_a), by_case(case_b), by_case(case_c))
            && b["reoffence_within_6m"] == true
        {
            break (a, b, c, rows);
        }
        assert!(Instant::now() < deadline, "the evaluators' rows within 20 s: {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (row_a, row_b, row_c, all) = rows;
    assert_eq!(row_a["subject_ref"], row_b["subject_ref"], "one person, one reference");
    assert_ne!(
        row_a["subject_ref"], row_c["subject_ref"],
        "another date of birth and a PNC number: another person"
    );
    assert_eq!(row_a["subject_ref"].as_str().unwrap().len(), 64);
    let text = format!("{all:?}");
    for identity in ["Sam", "SÁM", "ONEILL", "1990-02-03", "90/1234X"] {
        assert!(
            !text.contains(identity),
            "no identity reaches the evaluators ({identity})"
        );
    }

    // The evaluators hold no key: the grant on the log has no copy for them, nor one that opens.
    let grants = world.linkage_grants();
    assert_eq!(grants.len(), 1);
    assert!(grants[0].body.members.iter().all(|m| m.party != "evaluation"));
    assert!(world.linkage_key(&grants, "evaluation").is_err());
    let police_key = world.linkage_key(&grants, "police-hru").unwrap();
    let cwp_key = world.linkage_key(&grants, "cwp").unwrap();
    assert_eq!(police_key, cwp_key, "every holder opens the same key");
    assert_eq!(
        row_a["subject_ref"].as_str().unwrap(),
        hex::encode(police_key.reference("name-dob:sam oneill|1990-02-03")),
        "the reference is the documented HMAC of the documented identifier"
    );

    // A holder writing around its node (`hru append` is not checked) files Sam's reference on a
    // referral of somebody else: a re-keying must not carry Sam's reference over to that person.
    let case_e = uuid::Uuid::new_v4();
    let forged_referral = {
        use base64::Engine as _;
        let sam_ref =
            base64::engine::general_purpose::STANDARD.encode(police_key.reference("name-dob:sam oneill|1990-02-03"));
        format!(
            r#"{{"caseId":"{case_e}","referralReceived":{{"core":{{"subjectRef":"{sam_ref}","behaviours":["BEHAVIOUR_STALKING"],"area":"Cheshire East","receivedAtMs":"{}"}},"identity":{{"subject":{{"fullName":"Mallory Quinn","dateOfBirth":"1985-05-05"}}}}}}}}"#,
            now - 30 * DAY
        )
    };
    let appended = world.append("cwp", &world.event("forged-referral.json", &forged_referral));
    assert!(
        appended.status.success(),
        "{}",
        String::from_utf8_lossy(&appended.stderr)
    );

    // A rotation: generation 2 on the log, then every case re-keyed under it by the custodian.
    let rotation = world.keys_linkage("police-hru", &["--reason", "rotation: a holder's copy exposed"]);
    let rotated = succeeded(&rotation, "keys linkage (rotation)");
    let told = String::from_utf8_lossy(&rotation.stderr);
    assert!(rotated.contains("generation 2"), "{rotated}");
    for case in [case_a, case_b, case_c] {
        assert!(
            rotated.contains(&format!("SubjectRekeyed\t{case}\tgeneration 2")),
            "{case} re-keyed: {rotated}"
        );
    }
    assert!(told.contains("re-keyed 3 case(s) to generation 2"), "{told}");
    assert!(
        !rotated.contains(&case_e.to_string()),
        "a reference its identity does not give is not re-keyed: {rotated}"
    );
    assert!(
        told.contains(&format!(
            "1 whose reference is not the one their identity gives under an earlier generation, left as they are: {case_e}"
        )),
        "{told}"
    );
    let grants = world.linkage_grants();
    let second = world.linkage_key(&grants, "police-hru").unwrap();
    assert_eq!(second.generation, 2);
    let sam_now = hex::encode(second.reference("name-dob:sam oneill|1990-02-03"));
    let other_now = hex::encode(
        second.reference(&hru_envelope::subject_identifier(&person("Sam O'Neill", "1990-02-04", "90/1234X")).unwrap()),
    );
    // The rotation waited for the nodes to take generation 2: a referral now is derived under it.
    let case_d = uuid::Uuid::new_v4();
    let d = rt
        .block_on(record(
            &police,
            case_d,
            0,
            "risk-management",
            referral(sam(), Vec::new(), now - 5 * DAY),
        ))
        .unwrap();
    // A re-keying is the custodian's, derived from the identity; no caller records one.
    let forged = Event::SubjectRekeyed(pb::SubjectRekeyed {
        core: Some(pb::SubjectRekeyedCore {
            previous_ref: vec![1; 32],
            subject_ref: vec![2; 32],
            generation: 3,
        }),
    });
    let refused = rt
        .block_on(record(&police, case_d, d, "risk-management", forged))
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("draft.SubjectRekeyed"),
        "{}",
        refused.message()
    );
    let not_custodian = world.keys_linkage("cwp", &["--rekey"]);
    assert_eq!(not_custodian.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&not_custodian.stderr).contains("police-hru grants and rotates it"),
        "{}",
        String::from_utf8_lossy(&not_custodian.stderr)
    );
    // A reoffence recorded on A after the rotation takes A's reference under generation 2.
    let case_of = |case: uuid::Uuid| {
        rt.block_on(CaseServiceClient::new(police.clone()).get_case(request(
            pb::GetCaseRequest {
                case_id: case.as_bytes().to_vec(),
                purpose: "risk-management".into(),
            },
            "caseworker",
        )))
        .unwrap()
        .into_inner()
    };
    rt.block_on(record(
        &police,
        case_a,
        case_of(case_a).version,
        "risk-management",
        Event::ReoffenceRecorded(pb::ReoffenceRecorded {
            core: Some(pb::ReoffenceCore {
                subject_ref: Vec::new(),
                offence: "breach of a stalking protection order".into(),
                occurred_at_ms: now - DAY,
            }),
        }),
    ))
    .unwrap();
    let reoffences: Vec<String> = case_of(case_a)
        .events
        .iter()
        .filter(|e| e.header.as_ref().is_some_and(|h| h.event_type == "ReoffenceRecorded"))
        .filter_map(|e| e.sections.iter().find(|s| s.name == "core"))
        .map(|s| {
            hex::encode(
                <pb::ReoffenceCore as prost::Message>::decode(s.plaintext.as_slice())
                    .unwrap()
                    .subject_ref,
            )
        })
        .collect();
    assert_eq!(reoffences.len(), 2, "{reoffences:?}");
    assert_eq!(reoffences[1], sam_now, "taken from the case's re-keying");
    assert_ne!(reoffences[0], sam_now, "the earlier one stays as recorded");
    // Run again, nothing is left to re-key.
    let again = world.keys_linkage("police-hru", &["--rekey"]);
    succeeded(&again, "keys linkage --rekey");
    let again = String::from_utf8_lossy(&again.stderr);
    assert!(
        again.contains("re-keyed 0 case(s) to generation 2; 4 already under it; 1 whose"),
        "{again}"
    );

    // The evaluators see every case under generation 2; the reoffence recorded on A under
    // generation 1 still counts for B, and A, B and D are one person.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = list();
        let by_case = |c: uuid::Uuid| {
            rows.iter()
                .find(|r| r.case_id == c.as_bytes().to_vec())
                .map(|r| serde_json::from_str::<serde_json::Value>(&r.json).unwrap())
        };
        let refs: Vec<Option<String>> = [case_a, case_b, case_c, case_d]
            .into_iter()
            .map(|c| by_case(c).and_then(|r| r["subject_ref"].as_str().map(str::to_owned)))
            .collect();
        let want = [&sam_now, &sam_now, &other_now, &sam_now].map(|r| Some(r.clone()));
        if refs == want {
            assert_eq!(by_case(case_b).unwrap()["reoffence_within_6m"], true);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every case under generation 2 within 20 s: {refs:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The whole log still verifies without a secret key.
    let audit = world.run(&["audit", "verify"]);
    assert!(
        audit.status.success(),
        "{}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    drop((police_node, cwp_node, evaluation_node));
}
