//! Event time across gateway restarts (issue 17), on a real nats-server with the geofence
//! running: a restarted gateway (a new producer instance, the same configured identity) is the
//! same gateway, so its heartbeats move event time on and a tag that fell silent raises its
//! no-communication alert; a gateway gone for good holds event time back until its party
//! retires it with a signed `GatewayRetired`. Every breach decision is logged exactly once, as
//! the pure engine decides over the logged inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use hru_domain::{EventType, ProducerId};
use hru_envelope::{Directory, KeyRing, verify};
use hru_gateway::{Gateway, GatewayConfig};
use hru_log::{EventLog, PositionLog, SharedLog as _};
use hru_tests::{CHESHIRE_PARTIES, World, free_port, metric};
use hru_wire::v1 as pb;
use prost::Message as _;

const MINUTE: i64 = 60_000;
const TAG_T: &str = "tag-t";
const TAG_U: &str = "tag-u";

fn fix(seq: u64, at_ms: i64) -> pb::PositionFix {
    pb::PositionFix {
        fix_seq: seq,
        device_time_ms: at_ms,
        received_at_ms: at_ms,
        position: Some(pb::LatLon { lat: 53.19, lon: -2.89 }),
        accuracy_m: 5.0,
        source: pb::FixSource::Gps as i32,
        battery_percent: 80,
        strap: pb::StrapState::Intact as i32,
    }
}

/// The world's deployment, a runtime and the position stream.
fn connected(world: &World) -> (Directory, hru_policy::CompiledIsa, tokio::runtime::Runtime, PositionLog) {
    let (directory, isa) = world.deployment();
    let rt = hru_tests::runtime();
    let positions = rt
        .block_on(PositionLog::open(&world.nats.url(), None, isa.positions_max_age(), 1))
        .unwrap();
    (directory, isa, rt, positions)
}

/// The vendor's gateway running as producer `instance`, known as `name`.
fn gateway(
    world: &World,
    (isa, directory, positions): (&hru_policy::CompiledIsa, &Directory, &PositionLog),
    instance: &str,
    name: &str,
) -> Gateway {
    let vendor = world.secrets("em-vendor");
    Gateway::new(
        ProducerId {
            party: vendor.party.clone(),
            instance: instance.into(),
        },
        vendor.signing.clone(),
        isa.clone(),
        directory.clone(),
        positions.clone(),
        GatewayConfig::default(),
    )
    .named(name)
}

/// Every breach decision on the log: (tag, kind) of each opening, and message id → count.
fn breaches(log: &EventLog, rt: &tokio::runtime::Runtime, world: &World, directory: &Directory) -> Decisions {
    let events: Vec<hru_log::LogEntry> = rt
        .block_on(async { log.reader().replay(1, &[]).await?.try_collect().await })
        .unwrap();
    let mut ring = hru_runtime::deployment::key_ring(&world.keys(), &"geofence".parse().unwrap()).unwrap();
    let mut d = Decisions::default();
    for e in &events {
        let Ok(v) = verify(&e.payload, directory) else { continue };
        if v.header.event_type == EventType::KeyGranted {
            let _ = ring.ingest_grant(&v);
            continue;
        }
        if v.header.event_type != EventType::TagBreach {
            continue;
        }
        let opened = ring.open(&v);
        let Some(Ok(core)) = opened.sections.first().map(|s| s.plaintext.as_ref()) else {
            continue;
        };
        let core = pb::BreachCore::decode(core.as_slice()).unwrap();
        if core.kind() == pb::BreachKind::MonitoringLapsed {
            // Coverage is the service's live observation, not a decision over logged inputs.
            continue;
        }
        if core.state == pb::BreachState::Opened as i32 {
            d.opened.push((core.tag_id.clone(), core.kind()));
        }
        if let Some(id) = hru_geofence::service::logged_id(&opened) {
            *d.logged.entry(id).or_default() += 1;
        }
    }
    d
}

#[derive(Default)]
struct Decisions {
    opened: Vec<(String, pb::BreachKind)>,
    logged: BTreeMap<String, usize>,
}

impl Decisions {
    fn raised(&self, tag: &str, kind: pb::BreachKind) -> bool {
        self.opened.iter().any(|(t, k)| t == tag && *k == kind)
    }
}

/// Wait up to 20 s for `tag`'s `kind` breach on the log.
fn wait_for(
    log: &EventLog,
    rt: &tokio::runtime::Runtime,
    world: &World,
    directory: &Directory,
    tag: &str,
    kind: pb::BreachKind,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !breaches(log, rt, world, directory).raised(tag, kind) {
        assert!(
            Instant::now() < deadline,
            "{tag}'s {} was raised within 20 s (geofence log: {})",
            kind.as_str_name(),
            std::fs::read_to_string(world.dir.path().join("geofence.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_restarted_gateway_keeps_event_time_moving_and_a_retired_one_stops_holding_it_back() {
    let world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    world.provision();
    let fitted_at = jiff::Timestamp::now().as_millisecond();
    for (i, tag) in [TAG_T, TAG_U].into_iter().enumerate() {
        let case = uuid::Uuid::from_u128(0xc0fe_0000 + i as u128).to_string();
        let order = base64_of(uuid::Uuid::from_u128(0x0de0_0000 + i as u128));
        let fitted = hru_tests::tag_fitted_json(&case, tag, &order, &format!("victim-{tag}"), fitted_at);
        let out = world.append("em-vendor", &world.event(&format!("fitted-{tag}.json"), &fitted));
        assert!(
            out.status.success(),
            "{fitted}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (directory, isa, rt, positions) = connected(&world);
    let vendor = world.secrets("em-vendor");
    let run = |instance: &str, name: &str| gateway(&world, (&isa, &directory, &positions), instance, name);
    let log = rt.block_on(EventLog::connect(&world.nats.url())).unwrap();
    let metrics = free_port();
    let mut geofence = world.start_geofence(metrics);
    // Gateways' clocks run ahead of the wall clock here (simulated minutes pass in moments);
    // whatever else is recorded is recorded in the same order on that clock, as it would be
    // in service, so the pure engine over the logged inputs (in recorded order) decides alike.
    let t0 = jiff::Timestamp::now().as_millisecond() + MINUTE;

    // The gateway's first run hears both tags; it restarts (a new instance, the same identity)
    // and hears only U for twenty minutes: T has been silent for more than fifteen.
    let mut first = run("gw-run-1", "vendor-gw-1");
    rt.block_on(async {
        first.push(TAG_T, false, fix(1, t0));
        first.push(TAG_U, false, fix(1, t0));
        first.flush(t0).await.unwrap();
    });
    let mut restarted = run("gw-run-2", "vendor-gw-1");
    rt.block_on(async {
        for m in 1..=20 {
            restarted.push(TAG_U, false, fix(1 + m as u64, t0 + m * MINUTE));
            restarted.flush(t0 + m * MINUTE).await.unwrap();
        }
    });
    wait_for(&log, &rt, &world, &directory, TAG_T, pb::BreachKind::NoCommunication);

    // A second gateway hears U once and goes for good; the first carries on with heartbeats
    // alone. Event time waits for the silent one: U, silent for twenty minutes by the first
    // gateway's clock, raises nothing...
    let t1 = t0 + 21 * MINUTE;
    let mut other = run("gw-run-3", "vendor-gw-2");
    rt.block_on(async {
        other.push(TAG_U, false, fix(100, t1));
        other.flush(t1).await.unwrap();
        for m in 1..=20 {
            restarted.flush(t1 + m * MINUTE).await.unwrap();
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !breaches(&log, &rt, &world, &directory).raised(TAG_U, pb::BreachKind::NoCommunication),
        "a gateway heard from and not retired holds event time back"
    );
    // Operators see it: two gateways, event time at the silent one's last heartbeat.
    assert_eq!(metric(metrics, "hru_geofence_gateways"), 2);
    assert_eq!(metric(metrics, "hru_geofence_event_time_ms"), t1 as u64);
    // ... until the vendor retires the silent gateway (signed on the gateways' clock): event
    // time moves on at once.
    rt.block_on(async {
        let store = world.dir.path().join("vendor-desk");
        let producer_id = ProducerId {
            party: vendor.party.clone(),
            instance: "desk".into(),
        };
        let mut desk = hru_log::Producer::open(&store, producer_id, vendor.signing.clone(), &log, &directory)
            .await
            .unwrap();
        let body = pb::GatewayRetired {
            gateway: "vendor-gw-2".into(),
            reason: "decommissioned".into(),
        };
        let batch = desk
            .sealer()
            .prepare_public(EventType::GatewayRetired, body.encode_to_vec(), t1 + 21 * MINUTE, &isa)
            .unwrap();
        desk.append(&log, &batch, hru_log::Expect::Any).await.unwrap();
    });
    wait_for(&log, &rt, &world, &directory, TAG_U, pb::BreachKind::NoCommunication);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(metrics, "hru_geofence_gateways") != 1 {
        assert!(Instant::now() < deadline, "the retired gateway is no longer counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(metrics, "hru_geofence_event_time_ms"), (t1 + 20 * MINUTE) as u64);

    // The operator's command signs the same event; its bad input is named.
    let keys = world.keys().display().to_string();
    let retire = |reason: &str| {
        world.run(&[
            "gateway",
            "retire",
            "--party",
            "em-vendor",
            "--keys",
            &keys,
            "--gateway",
            "vendor-gw-9",
            "--reason",
            reason,
        ])
    };
    let out = retire(" ");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--reason"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = retire("never deployed");
    assert!(out.status.success(), "retire: {}", String::from_utf8_lossy(&out.stderr));

    // Every decision on the log exactly once, as the pure engine decides over the logged inputs.
    let (events, stored) = hru_tests::logged_inputs(&rt, &log, &positions);
    let mut ring: KeyRing = hru_runtime::deployment::key_ring(&world.keys(), &"geofence".parse().unwrap()).unwrap();
    let want: Vec<String> = hru_tests::engine_breaches(&events, &stored, &directory, &mut ring)
        .into_iter()
        .filter(|b| b.case.is_some())
        .map(|b| b.message_id())
        .collect();
    let got = breaches(&log, &rt, &world, &directory).logged;
    geofence.kill().unwrap();
    geofence.wait().unwrap();
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "logged twice: {twice:?}");
    let mut want_sorted = want.clone();
    want_sorted.sort();
    want_sorted.dedup();
    assert_eq!(want_sorted.len(), want.len(), "the engine decides each once");
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), want_sorted);
}

fn base64_of(id: uuid::Uuid) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(id.as_bytes())
}

/// What the control room's breach stream carried, with when it arrived.
type Heard = std::sync::mpsc::Receiver<(Instant, pb::StreamBreachesResponse)>;

/// Wait until `deadline` for a message `want` accepts; it, with when it arrived.
fn heard(
    rx: &Heard,
    deadline: Instant,
    what: &str,
    want: impl Fn(&pb::StreamBreachesResponse) -> bool,
) -> (Instant, pb::StreamBreachesResponse) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, m)) if want(&m) => return (at, m),
            Ok(_) => {}
            Err(_) => panic!("the control room's stream carried {what} in time"),
        }
    }
}

fn lapse(m: &pb::StreamBreachesResponse, state: pb::BreachState) -> Option<Vec<u8>> {
    let b = m.breach.as_ref()?;
    (b.tag_id == TAG_T && b.kind() == pb::BreachKind::MonitoringLapsed && b.state() == state)
        .then(|| b.breach_id.clone())
}

#[test]
fn blind_is_told_apart_from_quiet_a_silent_gateway_lapses_monitoring_and_a_silent_geofence_is_reported() {
    const LAPSE_S: u64 = 3;
    const SILENT_S: u64 = 3;
    let world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    world.provision();
    let case = uuid::Uuid::from_u128(0xc0fe_1000).to_string();
    let fitted = hru_tests::tag_fitted_json(
        &case,
        TAG_T,
        &base64_of(uuid::Uuid::from_u128(0x0de0_1000)),
        "victim-t",
        jiff::Timestamp::now().as_millisecond(),
    );
    let out = world.append("em-vendor", &world.event("fitted.json", &fitted));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (directory, isa, rt, positions) = connected(&world);

    // The control room's node, and the geofence, with short limits.
    let node_metrics = free_port();
    let node = world.start_node(
        "police-control",
        &format!("geofence_silent_after_s = {SILENT_S}\nmetrics_listen = \"127.0.0.1:{node_metrics}\""),
    );
    // The police HRU's node, whose coverage view says how each tag is watched.
    let hru_node = world.start_node("police-hru", "");
    let hru_channel = rt.block_on(world.channel(&hru_node, "police-hru"));
    let watch_of_t = || -> Option<(String, i64)> {
        let rows = rt
            .block_on(
                pb::case_service_client::CaseServiceClient::new(hru_channel.clone()).list_cases(hru_tests::request(
                    pb::ListCasesRequest {
                        view: "coverage".into(),
                        purpose: "risk-management".into(),
                    },
                    "DS 4410",
                )),
            )
            .ok()?
            .into_inner()
            .rows;
        rows.iter()
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.json).ok())
            .find(|v| v["tag_id"] == TAG_T)
            .map(|v| {
                (
                    v["watch"].as_str().unwrap_or_default().to_owned(),
                    v["since_ms"].as_i64().unwrap_or_default(),
                )
            })
    };
    let watched = |want: &str| {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            match watch_of_t() {
                Some((watch, since)) if watch == want => return since,
                found => assert!(
                    Instant::now() < until,
                    "coverage view shows {TAG_T} {want}; found {found:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let metrics = free_port();
    let limits = format!("lapse_after_s = {LAPSE_S}\nheartbeat_s = 0.5");
    let mut geofence = world.start_geofence_with(metrics, &limits);
    let ready = Instant::now() + Duration::from_secs(30);
    while metric(metrics, "hru_geofence_ready") != 1 {
        assert!(Instant::now() < ready, "the geofence was ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The control room watches its breach stream.
    let purpose = isa
        .calls
        .iter()
        .find(|g| g.party.as_str() == "police-control" && g.method == "BreachService/StreamBreaches")
        .map(|g| g.purpose.clone())
        .expect("the agreement lets the control room stream breaches");
    let channel = rt.block_on(world.channel(&node, "police-control"));
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let mut stream = hru_wire::v1::breach_service_client::BreachServiceClient::new(channel)
            .stream_breaches(hru_tests::request(
                pb::StreamBreachesRequest {
                    resume_token: String::new(),
                    purpose,
                },
                "duty-inspector",
            ))
            .await
            .unwrap()
            .into_inner();
        while let Ok(Some(m)) = stream.message().await {
            if tx.send((Instant::now(), m)).is_err() {
                return;
            }
        }
    });

    // The vendor's gateway sends a fix every 300 ms while `feeding`.
    let feeding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feed = |run: &str| {
        feeding.store(true, std::sync::atomic::Ordering::SeqCst);
        let feeding = feeding.clone();
        let mut gateway = gateway(&world, (&isa, &directory, &positions), run, "vendor-gw-1");
        rt.spawn(async move {
            let mut seq = 0;
            while feeding.load(std::sync::atomic::Ordering::SeqCst) {
                seq += 1;
                let now = jiff::Timestamp::now().as_millisecond();
                gateway.push(TAG_T, false, fix(seq, now));
                gateway.flush(now).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let stop_feeding = |task: tokio::task::JoinHandle<()>| {
        feeding.store(false, std::sync::atomic::Ordering::SeqCst);
        rt.block_on(task).unwrap();
        Instant::now()
    };
    let limit = |s: u64| Duration::from_secs(s + 5);

    // 1. Fixes flow: monitored, nothing lapses; the control room hears the geofence.
    let task = feed("gw-run-1");
    let geofence_heard = |m: &pb::StreamBreachesResponse| m.geofence.as_ref().is_some_and(|g| !g.silent);
    heard(
        &rx,
        Instant::now() + Duration::from_secs(15),
        "the geofence heard",
        geofence_heard,
    );
    std::thread::sleep(Duration::from_secs(LAPSE_S + 1));
    assert!(
        rx.try_iter().all(|(_, m)| lapse(&m, pb::BreachState::Opened).is_none()),
        "a tag heard from does not lapse"
    );
    // 2. The gateway stops: the tag's monitoring lapses at the control room within T + 5 s.
    let stopped = stop_feeding(task);
    let (at, m) = heard(&rx, stopped + limit(LAPSE_S), "a lapse", |m| {
        lapse(m, pb::BreachState::Opened).is_some()
    });
    let first = lapse(&m, pb::BreachState::Opened).unwrap();
    println!(
        "gateway stopped → lapse at the control room in {:.1} s",
        (at - stopped).as_secs_f64()
    );
    let blind_since = watched("BLIND");
    assert_eq!(
        Some(blind_since),
        m.breach.as_ref().map(|b| b.opened_at_ms),
        "blind since the tag was last heard"
    );
    // 3. It comes back: restored. It stops again: a new lapse.
    let task = feed("gw-run-2");
    heard(&rx, Instant::now() + Duration::from_secs(10), "the restoration", |m| {
        lapse(m, pb::BreachState::Closed).as_ref() == Some(&first)
    });
    assert!(
        watched("MONITORED") > blind_since,
        "monitored again, since it was heard"
    );
    let stopped = stop_feeding(task);
    let (at, m) = heard(&rx, stopped + limit(LAPSE_S), "a second lapse", |m| {
        lapse(m, pb::BreachState::Opened).is_some()
    });
    let second = lapse(&m, pb::BreachState::Opened).unwrap();
    assert_ne!(second, first, "a new episode");
    println!("gateway stopped again → lapse in {:.1} s", (at - stopped).as_secs_f64());

    // 4. The geofence stops: the control room's node says so within T + 5 s, and in its
    //    metrics; restarted, it is heard again.
    geofence.kill().unwrap();
    geofence.wait().unwrap();
    let killed = Instant::now();
    let (at, _) = heard(&rx, killed + limit(SILENT_S), "\"geofence silent\"", |m| {
        m.geofence.as_ref().is_some_and(|g| g.silent)
    });
    println!(
        "geofence killed → \"geofence silent\" in {:.1} s",
        (at - killed).as_secs_f64()
    );
    assert_eq!(metric(node_metrics, "hru_node_geofence_silent"), 1);
    let mut geofence = world.start_geofence_with(metrics, &limits);
    heard(
        &rx,
        Instant::now() + Duration::from_secs(30),
        "the geofence heard again",
        geofence_heard,
    );
    assert_eq!(metric(node_metrics, "hru_node_geofence_silent"), 0);
    assert!(metric(node_metrics, "hru_node_geofence_heartbeat_ms") > 0);

    // 5. The lapse open before the restart was read back from the log: the silent tag is not
    //    raised again, and its lapse closes when it is heard.
    std::thread::sleep(Duration::from_secs(LAPSE_S + 2));
    assert!(
        rx.try_iter().all(|(_, m)| lapse(&m, pb::BreachState::Opened).is_none()),
        "an open lapse is not raised again after a restart"
    );
    let task = feed("gw-run-3");
    heard(
        &rx,
        Instant::now() + Duration::from_secs(10),
        "the earlier lapse closed",
        |m| lapse(m, pb::BreachState::Closed).as_ref() == Some(&second),
    );
    stop_feeding(task);
    geofence.kill().unwrap();
    geofence.wait().unwrap();
}
