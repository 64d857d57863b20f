//! What the cross-service tests share: a world of a real nats-server, a policies directory
//! and generated keys; the `hru` binary to run against it; node processes, mTLS channels,
//! free ports and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support fails by panicking

pub mod browser;
pub mod chaos;
mod world;

pub use world::*;

/// A two-worker runtime for a test's async work (the machines have two cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The `hru` binary under test (the package's `hru-e2e` target: the `hru` binary's own code,
/// built by cargo beside the test executables).
pub fn hru_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/hru-e2e; a binary of this
    // package (hru-chaos) is beside it in target/<profile>.
    let name = format!("hru-e2e{}", std::env::consts::EXE_SUFFIX);
    let beside = exe.parent().expect("a target directory");
    let bin = if beside.join(&name).exists() {
        beside.join(&name)
    } else {
        beside.parent().expect("a target directory").join(&name)
    };
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test -p hru-tests` (cargo builds it)",
        bin.display()
    );
    bin
}

/// Everything on the event log and the position stream now: the geofence's inputs (and its
/// breaches), for comparing it with the pure engine.
pub fn logged_inputs(
    rt: &tokio::runtime::Runtime,
    log: &hru_log::EventLog,
    positions: &hru_log::PositionLog,
) -> (Vec<hru_log::LogEntry>, Vec<hru_log::LogEntry>) {
    try_logged_inputs(rt, log, positions).expect("the log and the position stream read")
}

/// [`logged_inputs`], or why they could not be read.
pub fn try_logged_inputs(
    rt: &tokio::runtime::Runtime,
    log: &hru_log::EventLog,
    positions: &hru_log::PositionLog,
) -> Result<(Vec<hru_log::LogEntry>, Vec<hru_log::LogEntry>), hru_log::LogError> {
    use futures::TryStreamExt as _;
    use hru_log::SharedLog as _;
    rt.block_on(async {
        let events = log.reader().replay(1, &[]).await?.try_collect().await?;
        // A geofence's claim on an idle partition is no input.
        let stored = positions
            .replay(1)
            .await?
            .try_filter(|e| futures::future::ready(!e.subject.is_position_claim()))
            .try_collect()
            .await?;
        Ok::<_, hru_log::LogError>((events, stored))
    })
}

/// Every breach update the pure geofence engine raises over logged `events` and `positions`,
/// opened with `ring`, in the order the geofence service reads them, believing every verified
/// header (no read path): the reference a test compares the service with.
pub fn engine_breaches(
    events: &[hru_log::LogEntry],
    positions: &[hru_log::LogEntry],
    directory: &hru_envelope::Directory,
    ring: &mut hru_envelope::KeyRing,
) -> Vec<hru_geofence::BreachUpdate> {
    judge(events, positions, directory, ring, hru_geofence::Inputs::new())
}

/// [`engine_breaches`] for one partition of the position stream, as the instance holding it
/// decides: over the partition's own position messages, judging only its tags.
pub fn partition_breaches(
    events: &[hru_log::LogEntry],
    positions: &[hru_log::LogEntry],
    directory: &hru_envelope::Directory,
    ring: &mut hru_envelope::KeyRing,
    partition: u32,
    partitions: u32,
) -> Vec<hru_geofence::BreachUpdate> {
    let filters = hru_broker::Filter::partition_positions(partition);
    let own: Vec<hru_log::LogEntry> = positions
        .iter()
        .filter(|e| filters.iter().any(|f| e.subject.matches(f)) && !e.subject.is_position_claim())
        .cloned()
        .collect();
    let inputs = hru_geofence::Inputs::new().owning(partition, partitions);
    judge(events, &own, directory, ring, inputs)
}

fn judge(
    events: &[hru_log::LogEntry],
    positions: &[hru_log::LogEntry],
    directory: &hru_envelope::Directory,
    ring: &mut hru_envelope::KeyRing,
    mut inputs: hru_geofence::Inputs,
) -> Vec<hru_geofence::BreachUpdate> {
    use hru_domain::EventType;
    let mut merged = Vec::new();
    for (source, entries) in [(0u8, events), (1u8, positions)] {
        for e in entries {
            if let Ok(v) = hru_envelope::verify(&e.payload, directory) {
                merged.push((v.header.recorded_at_ms, source, e.sequence, v));
            }
        }
    }
    for m in merged.iter().filter(|m| m.3.header.event_type == EventType::KeyGranted) {
        let _ = ring.ingest_grant(&m.3);
    }
    merged.sort_by_key(|(t, s, q, _)| (*t, *s, *q));
    let mut state = hru_geofence::State::new(hru_geofence::Config::default());
    let mut out = Vec::new();
    for (_, _, _, v) in &merged {
        if v.header.event_type == EventType::TagBreach {
            continue;
        }
        let told = if v.header.event_type.is_public() {
            inputs.public(v)
        } else {
            inputs.of(&ring.open(v))
        };
        for input in told {
            for a in state.apply(&input) {
                if let hru_geofence::Action::Breach(b) = a {
                    out.push(b);
                }
            }
        }
    }
    out
}

/// A fleet of `tags` simulated tags (seeded with `seed`, time from `start_ms`), each fitted in
/// its own case with an exclusion zone at its victim's home and a proximity rule, appended to
/// `world`'s log; the simulator that moves them.
pub fn fleet(world: &World, tags: usize, seed: u64, start_ms: i64) -> hru_gateway::simulate::Simulator {
    use base64::Engine as _;
    let simulator = hru_gateway::simulate::Simulator::new(seed, tags, 1.0, start_ms);
    for (i, (tag, victim, home)) in simulator.pairs().into_iter().enumerate() {
        let case = uuid::Uuid::from_u128(0xca5e_0000 + i as u128).to_string();
        let id = |n: u128| {
            base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::from_u128((n << 32) + i as u128).as_bytes())
        };
        let fitted = tag_fitted_json(&case, &tag, &id(1), &victim, start_ms);
        let zone = home_zone_json(&case, &id(2), &tag, home);
        let rule = format!(
            r#"{{"caseId":"{case}","proximityRuleSet":{{"core":{{"ruleId":"{}","tagId":"{tag}","victimDeviceId":"{victim}","warningM":1500,"breachM":250,"maxVictimFixAgeS":300}}}}}}"#,
            id(3)
        );
        for (party, json) in [("em-vendor", fitted), ("police-hru", zone), ("police-hru", rule)] {
            let out = world.append(party, &world.event(&format!("setup-{i}-{party}.json"), &json));
            assert!(out.status.success(), "{json}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    simulator
}

/// Every breach decision on the log (coverage lapses aside: they are the service's live
/// observations, not decisions over logged inputs), with how many times it was appended.
pub fn logged_decisions(
    events: &[hru_log::LogEntry],
    directory: &hru_envelope::Directory,
    ring: &mut hru_envelope::KeyRing,
) -> std::collections::BTreeMap<String, usize> {
    use hru_domain::EventType;
    let mut out = std::collections::BTreeMap::new();
    for e in events {
        let Ok(v) = hru_envelope::verify(&e.payload, directory) else {
            continue;
        };
        if v.header.event_type == EventType::KeyGranted {
            let _ = ring.ingest_grant(&v);
        } else if v.header.event_type == EventType::TagBreach {
            let opened = ring.open(&v);
            let lapse = hru_geofence::service::logged_breach(&opened)
                .is_some_and(|b| b.kind == hru_wire::v1::BreachKind::MonitoringLapsed);
            if let Some(id) = hru_geofence::service::logged_id(&opened).filter(|_| !lapse) {
                *out.entry(id).or_default() += 1;
            }
        }
    }
    out
}

/// The EM vendor's gateway of `world` (instance `gw-test`), publishing to `positions`.
pub fn vendor_gateway(
    world: &World,
    isa: &hru_policy::CompiledIsa,
    directory: &hru_envelope::Directory,
    positions: &hru_log::PositionLog,
) -> hru_gateway::Gateway {
    let vendor = world.secrets("em-vendor");
    hru_gateway::Gateway::new(
        hru_domain::ProducerId {
            party: vendor.party.clone(),
            instance: "gw-test".into(),
        },
        vendor.signing.clone(),
        isa.clone(),
        directory.clone(),
        positions.clone(),
        hru_gateway::GatewayConfig::default(),
    )
}

/// The coverage lapses opened on the log: (tag, breach id).
pub fn logged_lapses(
    events: &[hru_log::LogEntry],
    directory: &hru_envelope::Directory,
    ring: &mut hru_envelope::KeyRing,
) -> Vec<(String, String)> {
    use hru_domain::EventType;
    let mut out = Vec::new();
    for e in events {
        let Ok(v) = hru_envelope::verify(&e.payload, directory) else {
            continue;
        };
        if v.header.event_type == EventType::KeyGranted {
            let _ = ring.ingest_grant(&v);
        } else if v.header.event_type == EventType::TagBreach
            && let Some(b) = hru_geofence::service::logged_breach(&ring.open(&v))
            && b.kind == hru_wire::v1::BreachKind::MonitoringLapsed
            && b.state == hru_wire::v1::BreachState::Opened
        {
            out.push((b.tag_id.to_string(), b.breach_id.to_string()));
        }
    }
    out
}
