//! The compromise drill, on a server enforcing the generated authorization, nothing restarted:
//! police-hru's secret key file leaks to an attacker; the operator rotates all three keys with
//! `hru keys rotate`, pastes the printed directory entry, regenerates the broker authorization
//! and reloads nats-server, and revokes the old signing key with `hru keys revoke`. The
//! attacker's envelopes signed with the leaked key after the rotation (backdated or not) are
//! refused by probation's and victim advocacy's nodes and by the geofence, and reported by
//! `hru audit verify`, as is the one it signed between the leak and the rotation; the leaked
//! nkey stops working at the reload; police goes on working with its new keys, and every honest
//! event stays readable (the old ones with the kept key).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use hru_domain::{CaseId, ProducerId, split_draft};
use hru_envelope::{Directory, PartySecrets, Sealer};
use hru_policy::CompiledIsa;
use hru_tests::{CHESHIRE_PARTIES, World, free_port, metric, succeeded};
use hru_wire::v1 as pb;

const CASE: &str = "7c1e9d2a-4b3f-4e5a-8c6d-9e0f1a2b3c4d";
const TAG: &str = "tag-0042";

fn referral(area: &str) -> String {
    hru_tests::referral_json(CASE, area)
}

/// A draft's case and event, from its JSON form (as `hru append` reads it).
fn draft(json: &str) -> (CaseId, pb::event_draft::Event) {
    let desc = hru_wire::descriptor_pool()
        .get_message_by_name("hru.v1.EventDraft")
        .unwrap();
    let mut de = serde_json::Deserializer::from_str(json);
    let message = prost_reflect::DynamicMessage::deserialize(desc, &mut de).unwrap();
    let d: pb::EventDraft = message.transcode_to().unwrap();
    (d.case_id.parse().unwrap(), d.event.unwrap())
}

/// What the attacker holding police's leaked key file does: seal `json` as police-hru (its own
/// producer instance), recorded at `recorded_at_ms`, and publish it with the leaked nkey. The
/// number of envelopes the broker stored.
async fn forge(
    url: &str,
    leaked: &PartySecrets,
    isa: &CompiledIsa,
    directory: &Directory,
    json: &str,
    recorded_at_ms: i64,
) -> usize {
    let (case, event) = draft(json);
    let (event_type, sections) = split_draft(event);
    let sealer = Sealer::new(
        ProducerId {
            party: leaked.party.clone(),
            instance: format!("thief-{recorded_at_ms}"),
        },
        leaked.signing.clone(),
    );
    let batch = sealer
        .prepare_event(
            case,
            event_type,
            sections,
            recorded_at_ms,
            recorded_at_ms,
            isa,
            directory,
            &mut rand_core::OsRng,
        )
        .unwrap();
    let client = hru_broker::connect(url, Some(&leaked.broker_identity())).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for e in &batch.envelopes {
        js.publish(e.subject.to_string(), e.bytes.clone().into())
            .await
            .unwrap()
            .await
            .expect("the leaked nkey still publishes before the reload");
    }
    batch.envelopes.len()
}

#[test]
fn a_leaked_key_is_rotated_revoked_and_refused_everywhere_without_a_restart() {
    let mut w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    w.provision();
    let d = |rel: &str| hru_tests::path(w.dir.path(), rel);
    let keys = d("keys");
    let identity = |party: &str| format!("{keys}/{party}.secret");
    let police = identity("police-hru");

    // Readers running throughout: probation's and victim advocacy's nodes and the geofence.
    let node_ports: Vec<(&str, u16)> = ["probation", "victim-advocacy"]
        .iter()
        .map(|p| (*p, free_port()))
        .collect();
    let _nodes: Vec<_> = node_ports
        .iter()
        .map(|(p, port)| w.start_node(p, &format!("metrics_listen = \"127.0.0.1:{port}\"")))
        .collect();
    let geofence_port = free_port();
    let mut geofence = w.start_geofence(geofence_port);

    // Before the leak: a tag fitted, an exclusion zone and a referral, each with its own key.
    let zone_id = "AAAAAAAAAAAAAAAAAAAAAQ==";
    let fitted = hru_tests::tag_fitted_json(CASE, TAG, "AAAAAAAAAAAAAAAAAAAAAg==", "vd-0042", 1_795_300_000_000);
    let zone = hru_tests::home_zone_json(CASE, zone_id, TAG, (53.19, -2.89));
    for (party, json, name) in [
        ("em-vendor", fitted, "fitted"),
        ("police-hru", zone, "zone"),
        ("police-hru", referral("Chester"), "before"),
    ] {
        let file = w.event(&format!("{name}.json"), &json);
        succeeded(&w.append_as(party, &file), name);
    }

    // The leak: the attacker holds a copy of police's secret key file.
    let leaked = w.secrets("police-hru");
    let leaked_key = leaked.signing_key_id().to_string();
    let leaked_at = jiff::Timestamp::now();
    let (directory, isa) = w.deployment();

    // At once, before anyone notices, the attacker records a referral as police.
    let rt = hru_tests::runtime();
    let url = w.nats.url();
    let mut forged = rt.block_on(forge(
        &url,
        &leaked,
        &isa,
        &directory,
        &referral("Forged in the window"),
        jiff::Timestamp::now().as_millisecond(),
    ));

    // The operator rotates all three keys (the old signing key signs the announcements).
    let out = w.run(&[
        "--identity",
        &police,
        "keys",
        "rotate",
        "--party",
        "police-hru",
        "--keys",
        &keys,
    ]);
    let printed = succeeded(&out, "keys rotate");
    let rotations = printed.lines().filter(|l| l.contains("\tKeyRotated\t")).count();
    assert_eq!(rotations, 2, "the encryption and signing keys are announced: {printed}");
    let block = &printed[printed.find("[[party]]").expect("the directory entry is printed")..];
    let rotated = w.secrets("police-hru");
    assert_ne!(rotated.signing_key_id(), leaked.signing_key_id());
    assert_ne!(rotated.encryption_key_id(), leaked.encryption_key_id());
    assert_ne!(rotated.nats_user(), leaked.nats_user());

    // Before the operator reloads the broker, the attacker uses the leaked key: envelopes
    // recorded now, and backdated to before the leak (a referral, and a revocation of the
    // victim's exclusion zone).
    let a_day_ago = leaked_at.as_millisecond() - 86_400_000;
    let revoke_zone =
        format!(r#"{{"caseId":"{CASE}","zoneRevoked":{{"core":{{"zoneId":"{zone_id}","reason":"order varied"}}}}}}"#);
    forged += rt.block_on(async {
        forge(
            &url,
            &leaked,
            &isa,
            &directory,
            &referral("Forged now"),
            jiff::Timestamp::now().as_millisecond(),
        )
        .await
            + forge(
                &url,
                &leaked,
                &isa,
                &directory,
                &referral("Forged backdated"),
                a_day_ago,
            )
            .await
            + forge(&url, &leaked, &isa, &directory, &revoke_zone, a_day_ago).await
    });

    // The operator pastes the printed entry, regenerates the authorization and reloads.
    w.replace_party("police-hru", block);
    let reloaded = w.reload_authorization();
    let window = rt.block_on(async {
        loop {
            if hru_broker::connect(&url, Some(&leaked.broker_identity()))
                .await
                .is_err()
            {
                break reloaded.elapsed();
            }
            assert!(
                reloaded.elapsed() < Duration::from_secs(10),
                "the leaked nkey still connects"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    println!(
        "the leaked nkey is refused {} ms after the reload signal",
        window.as_millis()
    );

    // The old signing key is revoked from the leak, signed by the new key over the new nkey.
    let out = w.run(&[
        "--identity",
        &police,
        "keys",
        "revoke",
        "--party",
        "police-hru",
        "--keys",
        &keys,
        "--key-id",
        &leaked_key,
        "--at",
        &leaked_at.to_string(),
        "--reason",
        "secret key file copied",
    ]);
    succeeded(&out, "keys revoke");

    // Police goes on working with its new keys.
    let after = w.event("after.json", &referral("Crewe"));
    succeeded(&w.append_as("police-hru", &after), "police appends with its new keys");

    // Every reader refuses what the attacker signed after the rotation: probation and victim
    // advocacy receive the referrals (and the grants sealed with them), the geofence the zone
    // revocation.
    let refused = |port: u16| {
        metric(port, "hru_read_refused_total{reason=\"key-not-valid\"}")
            + metric(port, "hru_read_refused_total{reason=\"signed-after-revocation\"}")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for (party, port) in node_ports.iter().copied().chain([("geofence", geofence_port)]) {
        while refused(port) == 0 {
            assert!(
                Instant::now() < deadline,
                "{party} refused none of the attacker's envelopes; the geofence's log:\n{}",
                std::fs::read_to_string(w.dir.path().join("geofence.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("{party}: {} of the attacker's envelopes refused", refused(port));
    }

    // Probation reads both honest referrals and no forged one: its replay reads the key events
    // first, so the revocation from the leak also reaches the referral forged before it.
    let out = w.run(&[
        "--identity",
        &identity("probation"),
        "replay",
        "--party",
        "probation",
        "--keys",
        &keys,
        "--format",
        "json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    for area in ["Chester", "Crewe"] {
        assert!(
            text.contains(area),
            "probation reads police's referral from {area}: {text}"
        );
    }
    assert!(!text.contains("Forged"), "probation reads no forged referral: {text}");

    // Police reads its own history, sealed before the rotation, with the kept old key, and
    // what came after with the new one.
    let out = w.run(&[
        "--identity",
        &police,
        "replay",
        "--party",
        "police-hru",
        "--keys",
        &keys,
        "--format",
        "json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("Sam Example").count(),
        2,
        "police opens both referrals' identity: {text}"
    );

    // The audit names every envelope the attacker signed, and nothing else.
    let out = w.run(&[
        "--identity",
        &identity("auditor"),
        "audit",
        "verify",
        "--format",
        "json",
    ]);
    let mut findings = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(kind) = v.get("kind").and_then(|k| k.as_str()) {
            let producer = v["producer"].as_str().unwrap_or_default();
            assert!(
                producer.starts_with("police-hru/thief-")
                    && ["key-not-valid", "signed-after-revocation"].contains(&kind),
                "only the attacker's envelopes are findings: {line}"
            );
            findings += 1;
        }
    }
    assert_eq!(
        findings, forged,
        "each of the attacker's {forged} envelopes is a finding"
    );

    // The nodes' and the geofence's stores (plaintext projections, epoch keys) and the kept
    // old secrets are their owner's alone.
    hru_tests::assert_private(&[
        (w.dir.path().join("node-probation"), 0o700),
        (w.dir.path().join("node-probation/projections"), 0o700),
        (w.dir.path().join("node-probation/producer"), 0o700),
        (w.dir.path().join("geofence-data"), 0o700),
        (w.keys().join(format!("police-hru.secret.{leaked_key}")), 0o600),
        (w.keys().join("police-hru.secret"), 0o600),
    ]);

    let _ = geofence.kill();
    let _ = geofence.wait();
}
