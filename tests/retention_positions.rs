//! Positions under retention (decision 010), on a real nats-server: `HRU_POSITIONS` keeps
//! batches for the agreement's retention of `PositionBatch` (90 days), and the gateway seals
//! their grants to the geofence's period keys. Batches of January 2018 open with the
//! geofence's key material until its service starts; the service then moves its chains past
//! that month before it evaluates anything, evaluates none of those fixes, and its key
//! material opens them no more. A batch of this month is evaluated as usual.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use hru_domain::{EventType, ProducerId};
use hru_gateway::{Gateway, GatewayConfig};
use hru_log::{PartyView, PositionLog};
use hru_tests::{CHESHIRE_PARTIES, World, free_port, metric};
use hru_wire::v1 as pb;
use prost::Message as _;

/// 2018-01-15.
const JANUARY_2018: i64 = 1_516_000_000_000;

/// A batch of `n` fixes of one tag, sealed at `at_ms` and published.
async fn send(gateway: &mut Gateway, n: usize, at_ms: i64) {
    for i in 0..n {
        gateway.push(
            "tag-1",
            false,
            pb::PositionFix {
                fix_seq: i as u64 + 1,
                device_time_ms: at_ms + i as i64 * 1000,
                received_at_ms: at_ms + i as i64 * 1000,
                position: Some(pb::LatLon { lat: 53.19, lon: -2.89 }),
                accuracy_m: 5.0,
                source: pb::FixSource::Gps as i32,
                battery_percent: 80,
                ..Default::default()
            },
        );
    }
    gateway.flush(at_ms).await.unwrap();
}

/// The vendor's gateway `instance`, reading the members' period keys from its own view.
async fn gateway(w: &World, instance: &str) -> Gateway {
    let (directory, isa) = w.deployment();
    let vendor = w.secrets("em-vendor");
    let url = w.nats.url();
    let view = PartyView::open(&url, Some(&vendor.broker_identity()), &vendor.party)
        .await
        .unwrap();
    let publisher = PositionLog::publisher(&url, Some(&vendor.broker_identity()))
        .await
        .unwrap();
    let producer = ProducerId {
        party: vendor.party.clone(),
        instance: instance.into(),
    };
    Gateway::new(
        producer,
        vendor.signing.clone(),
        isa,
        directory.clone(),
        publisher,
        GatewayConfig::default(),
    )
    .with_period_keys(view, directory)
    .await
    .unwrap()
}

/// What the geofence's key material (its secret key file and its period file) opens of the
/// position batches: one result per batch.
async fn geofence_opens(w: &World, log: &PositionLog) -> Vec<Result<Vec<u8>, hru_envelope::OpenError>> {
    let (directory, _) = w.deployment();
    let secrets = w.secrets("geofence");
    let file = hru_runtime::deployment::periods_path(&w.keys(), &secrets.party);
    let periods = hru_envelope::PeriodKeys::from_toml(&std::fs::read_to_string(&file).unwrap(), "periods").unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let mut ring = hru_envelope::KeyRing::new(&secrets).with_periods(&periods, &hru_envelope::published_through(now));
    let entries: Vec<_> = log.replay(1).await.unwrap().try_collect().await.unwrap();
    let mut out = Vec::new();
    for e in &entries {
        let v = hru_envelope::verify(&e.payload, &directory).unwrap();
        match v.header.event_type {
            EventType::KeyGranted => {
                if let Err(e) = ring.ingest_grant(&v) {
                    out.push(Err(e));
                }
            }
            EventType::PositionBatch => out.push(ring.open(&v).sections.remove(0).plaintext),
            _ => {}
        }
    }
    out
}

#[test]
fn positions_of_a_period_open_nothing_once_the_geofence_moved_past_it() {
    let w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    w.agreement_in_force_from("2018-01-01");
    w.provision();
    let (directory, isa) = w.deployment();
    assert_eq!(isa.retention_of(EventType::PositionBatch).class(), "90d");
    let rt = hru_tests::runtime();
    let url = w.nats.url();
    let geofence = w.secrets("geofence");
    let vendor = w.secrets("em-vendor");

    let (positions, january) = rt.block_on(async {
        // The geofence read by its own key: the stream keeps what the agreement says.
        let positions = PositionLog::open(&url, Some(&geofence.broker_identity()), isa.positions_max_age(), 1)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(
            hru_log::connect(&url, Some(&w.secrets("provisioner").broker_identity()))
                .await
                .unwrap(),
        );
        let mut stream = js.get_stream("HRU_POSITIONS").await.unwrap();
        let max_age = stream.info().await.unwrap().config.max_age;
        assert_eq!(max_age, Duration::from_secs(90 * 86_400));
        assert_eq!(max_age, isa.positions_max_age());

        // The geofence has held period keys since January 2018.
        let holder = w.hold_periods_since("geofence", "2018-01", JANUARY_2018).await;
        let january = holder.keys().public("90d", "2018-01").unwrap();

        // The vendor's gateway reads the publications from its own view and seals January's
        // fixes to the geofence's January key.
        let view = PartyView::open(&url, Some(&vendor.broker_identity()), &vendor.party)
            .await
            .unwrap();
        let subject = hru_broker::Subject::control(&geofence.party, EventType::PeriodKeysPublished);
        let deadline = Instant::now() + Duration::from_secs(20);
        use hru_log::SharedLog as _;
        while view
            .reader()
            .last_of(&hru_broker::Filter::exactly(&subject))
            .await
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < deadline, "the vendor's view copied {subject}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(view);
        let mut gateway = gateway(&w, "gw-2018").await;
        send(&mut gateway, 30, JANUARY_2018).await;
        (positions, january)
    });

    // The grant in the position stream names the geofence's January 2018 key.
    let grants: Vec<pb::KeyGranted> = rt.block_on(async {
        let entries: Vec<_> = positions.replay(1).await.unwrap().try_collect().await.unwrap();
        entries
            .iter()
            .filter_map(|e| hru_envelope::verify(&e.payload, &directory).ok())
            .filter(|v| v.header.event_type == EventType::KeyGranted)
            .map(|v| pb::KeyGranted::decode(v.body.as_slice()).unwrap())
            .collect()
    });
    assert_eq!(grants.len(), 1);
    assert_eq!(
        (grants[0].retention.as_str(), grants[0].month.as_str()),
        ("90d", "2018-01")
    );
    let to_geofence = grants[0].members.iter().find(|m| m.party == "geofence").unwrap();
    assert_eq!(to_geofence.key_id, january.key_id.0.to_vec());
    // Before the geofence's holder runs, its key material opens January's batch.
    let before = rt.block_on(geofence_opens(&w, &positions));
    assert!(before.len() == 1 && before[0].is_ok(), "{before:?}");

    // The geofence starts: before it evaluates anything, January 2018 is gone.
    let metrics_port = free_port();
    let mut service = w.start_geofence(metrics_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(metrics_port, "hru_geofence_ready") != 1 {
        assert!(Instant::now() < deadline, "the geofence never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric(metrics_port, "hru_geofence_fixes_total"),
        0,
        "no fix of January 2018 evaluated"
    );
    let after = rt.block_on(geofence_opens(&w, &positions));
    assert!(
        matches!(after.as_slice(), [Err(hru_envelope::OpenError::Erased { .. })]),
        "{after:?}"
    );

    // A batch of this month is evaluated: the geofence is reading.
    rt.block_on(async {
        let mut gateway = gateway(&w, "gw-now").await;
        send(&mut gateway, 30, jiff::Timestamp::now().as_millisecond()).await;
    });
    while metric(metrics_port, "hru_geofence_fixes_total") < 30 {
        assert!(Instant::now() < deadline, "the geofence evaluated this month's fixes");
        std::thread::sleep(Duration::from_millis(100));
    }
    service.kill().unwrap();
    service.wait().unwrap();
}
