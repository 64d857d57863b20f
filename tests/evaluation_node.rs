//! The evaluation party's node (issue 19, item 6): the pseudonymous outcomes view is read
//! through the evaluation node — `ListCases` with the evaluation purpose — on a real
//! nats-server, from facts the police and CWP recorded: reoffending is followed from the
//! completed therapeutic intervention, and no identity reaches the evaluators.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use hru_tests::{CHESHIRE_PARTIES, World, referral_json, succeeded, uuid_b64};
use hru_wire::v1 as pb;
use pb::case_service_client::CaseServiceClient;

const CASE: &str = "0b7c3a40-9a5d-4d8e-8f1e-5d2b7e0c9a11";
const LATER_CASE: &str = "0b7c3a40-9a5d-4d8e-8f1e-5d2b7e0c9a12";
/// `referral_json`'s received time and subject reference.
const REFERRAL_MS: i64 = 1_795_300_000_000;
const SUBJECT: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
const DAY: i64 = 86_400_000;

#[test]
fn the_evaluation_node_lists_pseudonymous_outcomes_followed_from_the_completed_intervention() {
    let world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let node = world.start_node("evaluation", "");
    // The police refer; CWP's clinicians complete a therapeutic intervention a month later;
    // three months after that the police record a reoffence in a new case for the same subject.
    let facts = [
        ("police-hru", referral_json(CASE, "Crewe")),
        (
            "cwp",
            format!(
                r#"{{"caseId":"{CASE}","interventionCompleted":{{"core":{{"interventionId":"{}","kind":"INTERVENTION_KIND_THERAPEUTIC","atMs":"{}","outcome":"completed"}}}}}}"#,
                uuid_b64(0x1e),
                REFERRAL_MS + 30 * DAY
            ),
        ),
        (
            "police-hru",
            format!(
                r#"{{"caseId":"{LATER_CASE}","reoffenceRecorded":{{"core":{{"subjectRef":"{SUBJECT}","offence":"stalking","occurredAtMs":"{}"}}}}}}"#,
                REFERRAL_MS + 120 * DAY
            ),
        ),
    ];
    for (i, (party, json)) in facts.iter().enumerate() {
        succeeded(
            &world.append(party, &world.event(&format!("fact-{i}.json"), json)),
            "append",
        );
    }

    let rt = hru_tests::runtime();
    let channel = rt.block_on(world.channel(&node, "evaluation"));
    let list = |purpose: &str| {
        let channel = channel.clone();
        rt.block_on(async move {
            CaseServiceClient::new(channel)
                .list_cases(hru_tests::request(
                    pb::ListCasesRequest {
                        view: "outcomes".into(),
                        purpose: purpose.into(),
                    },
                    "evaluation analyst",
                ))
                .await
                .map(|r| r.into_inner().rows)
        })
    };
    // The node folds what the log holds; the row is complete once the reoffence is in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let rows = list("evaluation").unwrap_or_else(|s| panic!("ListCases: {}", s.message()));
        let row = rows
            .iter()
            .find(|r| r.case_id == uuid::Uuid::parse_str(CASE).unwrap().as_bytes().to_vec())
            .map(|r| serde_json::from_str::<serde_json::Value>(&r.json).unwrap());
        if let Some(row) = row.filter(|r| r["reoffence_within_6m"] == true) {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "the outcome row was complete within 20 s: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(row["therapeutic_completed_at_ms"], REFERRAL_MS + 30 * DAY, "{row}");
    assert_eq!(
        row["interventions_completed"][0], "INTERVENTION_KIND_THERAPEUTIC",
        "{row}"
    );
    assert_eq!(row["area"], "Crewe", "{row}");
    assert!(
        !row.to_string().contains("Sam Example"),
        "no identity reaches the evaluators: {row}"
    );

    // Another purpose is not the evaluators' to use.
    let refused = list("risk-management").unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{}", refused.message());
}
