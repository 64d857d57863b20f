//! Victim alerts in the deployed configuration, on a server enforcing the generated
//! authorization: the victim's phone is paired with its own broker identity (`hru device
//! pair`, the printed entry in directory.toml, the authorization regenerated and reloaded, its
//! stream provisioned); the tag drives to the victim while the phone is offline; the geofence
//! (with its own key) stores each alert (the exclusion zone at the victim's home, proximity)
//! in the phone's stream; a geofence restart sends none
//! twice; when the phone comes back it receives every alert, in order, each once, verified,
//! and its receipts are recorded on the broker. The phone can read nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use hru_domain::ProducerId;
use hru_gateway::simulate::Simulator;
use hru_gateway::{Gateway, GatewayConfig};
use hru_log::PositionLog;
use hru_tests::{CHESHIRE_PARTIES, World, free_port, metric, succeeded};

#[test]
fn the_victims_phone_receives_every_alert_once_with_its_own_identity() {
    let mut w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let keys = hru_tests::path(w.dir.path(), "keys");
    let start_ms = jiff::Timestamp::now().as_millisecond();
    let mut simulator = Simulator::new(11, 1, 1.0, start_ms);
    let (tag, victim, home) = simulator.pairs().remove(0);

    // Pair the phone: its entry into the directory, the authorization regenerated and reloaded,
    // its stream provisioned.
    let entry = succeeded(
        &w.run(&["device", "pair", "--device", &victim, "--out", &keys]),
        "device pair",
    );
    let directory_file = w.dir.path().join("policies/directory.toml");
    let mut text = std::fs::read_to_string(&directory_file).unwrap();
    text.push('\n');
    text.push_str(&entry);
    std::fs::write(&directory_file, &text).unwrap();
    w.reload_authorization();
    w.provision();

    // The tag, and a proximity rule around the victim, each recorded with its party's own key.
    let b64 = hru_tests::uuid_b64;
    let case = uuid::Uuid::from_u128(0xa1e7_0000);
    let fitted = hru_tests::tag_fitted_json(&case.to_string(), &tag, &b64(1), &victim, start_ms);
    let rule = format!(
        r#"{{"caseId":"{case}","proximityRuleSet":{{"core":{{"ruleId":"{}","tagId":"{tag}","victimDeviceId":"{victim}","warningM":1500,"breachM":250,"maxVictimFixAgeS":300}}}}}}"#,
        b64(2)
    );
    let zone = hru_tests::home_zone_json(&case.to_string(), &b64(3), &tag, home);
    for (party, json) in [("em-vendor", fitted), ("police-hru", zone), ("police-hru", rule)] {
        let file = w.event(&format!("{party}.json"), &json);
        succeeded(&w.append_as(party, &file), party);
    }

    let metrics_port = free_port();
    let mut service = w.start_geofence(metrics_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(metrics_port, "hru_geofence_ready") != 1 {
        assert!(Instant::now() < deadline, "the geofence never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its view copies the log a moment behind: fixes evaluated before it holds the tag and its
    // zone would raise nothing.
    while metric(metrics_port, "hru_geofence_zones") < 1 || metric(metrics_port, "hru_geofence_tags") < 1 {
        assert!(
            Instant::now() < deadline,
            "the geofence never held the tag and its zone"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (directory, isa) = w.deployment();
    let rt = hru_tests::runtime();
    let vendor = w.secrets("em-vendor");
    let positions = rt
        .block_on(PositionLog::publisher(&w.nats.url(), Some(&vendor.broker_identity())))
        .unwrap();
    let mut gateway = Gateway::new(
        ProducerId {
            party: vendor.party.clone(),
            instance: "gw-test".into(),
        },
        vendor.signing.clone(),
        isa,
        directory,
        positions,
        GatewayConfig::default(),
    );

    // The tag drives to the victim while the phone is offline: an hour of fixes.
    simulator.approach(0);
    for _ in 0..120 {
        let fixes = simulator.step(30_000);
        rt.block_on(async {
            for f in fixes {
                gateway.push(&f.device, f.victim, f.fix);
            }
            gateway.flush(jiff::Timestamp::now().as_millisecond()).await.unwrap();
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(metrics_port, "hru_geofence_alerts_total") < 1 {
        assert!(
            Instant::now() < deadline,
            "the geofence stored {} alerts (failed {}; fixes {}, breaches {}): {}",
            metric(metrics_port, "hru_geofence_alerts_total"),
            metric(metrics_port, "hru_geofence_alerts_failed_total"),
            metric(metrics_port, "hru_geofence_fixes_total"),
            metric(metrics_port, "hru_geofence_breaches_total"),
            std::fs::read_to_string(w.dir.path().join("geofence.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(metrics_port, "hru_geofence_alerts_failed_total"), 0);

    // A geofence restart replays the log and sends no alert twice.
    service.kill().unwrap();
    service.wait().unwrap();
    let mut service = w.start_geofence(metrics_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(metrics_port, "hru_geofence_ready") != 1 {
        assert!(Instant::now() < deadline, "the restarted geofence never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The phone comes back: every alert, in order, each once, each verified.
    let alerts = |w: &World| {
        let out = w.run(&["device", "alerts", "--device", &victim, "--keys", &keys]);
        let text = succeeded(&out, "device alerts");
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let received = alerts(&w);
    println!("the phone received {} alerts: {received:?}", received.len());
    assert!(!received.is_empty(), "{received:?}");
    assert!(received.iter().all(|a| a.get("refused").is_none()), "{received:?}");
    let sequences: Vec<u64> = received.iter().map(|a| a["sequence"].as_u64().unwrap()).collect();
    assert!(sequences.windows(2).all(|p| p[0] < p[1]), "in order: {sequences:?}");
    let decisions: std::collections::BTreeSet<(String, String)> = received
        .iter()
        .map(|a| (a["breach_id"].to_string(), a["kind"].to_string()))
        .collect();
    assert_eq!(decisions.len(), received.len(), "no alert twice: {received:?}");
    assert!(
        received.iter().all(|a| [
            "BREACH_KIND_EXCLUSION",
            "BREACH_KIND_PROXIMITY_WARNING",
            "BREACH_KIND_PROXIMITY"
        ]
        .contains(&a["kind"].as_str().unwrap_or_default())),
        "{received:?}"
    );
    assert!(alerts(&w).is_empty(), "each alert is received once");

    // Its receipts are on the broker, and its identity reads nothing but its own stream.
    rt.block_on(async {
        let admin = hru_broker::connect(&w.nats.url(), Some(&w.secrets("provisioner").broker_identity()))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(admin);
        let mut stream = js.get_stream(hru_broker::alert_stream(&victim)).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        assert_eq!(
            state.messages as usize,
            2 * received.len(),
            "one receipt per alert beside the alerts"
        );
        let seed = std::fs::read_to_string(w.keys().join(format!("device.{victim}.secret"))).unwrap();
        let secret = hru_envelope::DeviceSecret::from_toml(&seed, "device secret").unwrap();
        assert!(
            hru_log::DeviceAlerts::open(&w.nats.url(), &secret.nats_seed, "vd-someone-else")
                .await
                .is_err(),
            "the phone opens no other device's stream"
        );
    });

    // The phone is lost: the device is paired again with a new identity, its entry replaced
    // and the authorization reloaded. The lost phone's identity no longer connects; the new
    // one reads the device's stream.
    let lost = std::fs::read_to_string(w.keys().join(format!("device.{victim}.secret"))).unwrap();
    let lost = hru_envelope::DeviceSecret::from_toml(&lost, "lost phone").unwrap();
    std::fs::remove_file(w.keys().join(format!("device.{victim}.secret"))).unwrap();
    std::fs::remove_file(w.keys().join(format!("device.{victim}.cursor"))).unwrap();
    let replacement = succeeded(
        &w.run(&["device", "pair", "--device", &victim, "--out", &keys]),
        "device pair (replacement)",
    );
    let text = std::fs::read_to_string(&directory_file).unwrap();
    assert!(text.contains(&entry));
    std::fs::write(&directory_file, text.replace(&entry, &replacement)).unwrap();
    w.reload_authorization();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while hru_log::DeviceAlerts::open(&w.nats.url(), &lost.nats_seed, &victim)
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "the lost phone still reads its alerts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(
        alerts(&w).len(),
        received.len(),
        "the new phone reads the device's alerts"
    );

    service.kill().unwrap();
    service.wait().unwrap();
}
