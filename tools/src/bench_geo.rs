//! `hru bench geofence`: the engine beside raw R-tree + point-in-polygon (one core), resident
//! memory of a large state, and the service end to end on a local nats-server (gateway in,
//! breach out): fixes/s, and fix → control-room breach latency at steady rates.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::geofence_workload::{Workload, engine_vs_raw, state_memory};
use anyhow::Context as _;
use futures::StreamExt as _;
use hru_domain::{CaseId, EventType, PartyId, ProducerId, split_draft};
use hru_envelope::{Directory, PartySecrets, Sealer};
use hru_gateway::{Gateway, GatewayConfig};
use hru_geofence::service::{GeofenceConfig, Stats};
use hru_log::{EventLog, Expect, PositionLog, SharedLog as _};
use hru_policy::CompiledIsa;
use hru_wire::v1 as pb;
use serde_json::json;

use crate::Format;

/// A throwaway deployment: fresh keys for every party of the agreements in `policies_dir`.
pub(crate) struct Deployment {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) directory: Directory,
    pub(crate) isa: CompiledIsa,
    pub(crate) secrets: HashMap<String, PartySecrets>,
}

pub(crate) fn deployment(policies_dir: &Path) -> anyhow::Result<Deployment> {
    let dir = tempfile::tempdir()?;
    let policies = dir.path().join("policies");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&policies)?;
    std::fs::create_dir_all(&keys)?;
    let mut agreement = None;
    for entry in std::fs::read_dir(policies_dir).with_context(|| policies_dir.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.file_name().is_some_and(|n| n != "directory.toml") {
            std::fs::copy(&path, policies.join(path.file_name().unwrap_or_default()))?;
            agreement.get_or_insert(path);
        }
    }
    let agreement = agreement.context("no agreement in --policies")?;
    let text = std::fs::read_to_string(&agreement)?;
    let parties: Vec<PartyId> = CompiledIsa::compile(&text, "agreement", None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .parties
        .keys()
        .cloned()
        .collect();
    let mut directory_text = String::new();
    let mut secrets = HashMap::new();
    for p in &parties {
        let s = PartySecrets::generate(p.clone(), &mut rand::rngs::OsRng);
        directory_text.push_str(&s.directory_entry(p.as_str()));
        directory_text.push('\n');
        std::fs::write(keys.join(format!("{p}.secret")), s.to_toml())?;
        secrets.insert(p.to_string(), s);
    }
    std::fs::write(policies.join("directory.toml"), &directory_text)?;
    let directory = Directory::from_toml(&directory_text, "directory.toml")?;
    let isa = CompiledIsa::compile(&text, "agreement", Some(&directory)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Deployment {
        dir,
        directory,
        isa,
        secrets,
    })
}

pub(crate) fn party<'a>(d: &'a Deployment, p: &str) -> anyhow::Result<&'a PartySecrets> {
    d.secrets
        .get(p)
        .with_context(|| format!("the agreement has no party {p}"))
}

/// Seal and append one setup event, occurring and recorded at `now` (Unix ms).
pub(crate) async fn setup_event(
    log: &EventLog,
    sealer: &mut Sealer,
    d: &Deployment,
    case: CaseId,
    event: pb::event_draft::Event,
    now: i64,
) -> anyhow::Result<()> {
    let (t, sections) = split_draft(event);
    let batch = sealer.prepare_event(
        case,
        t,
        sections,
        now,
        now,
        &d.isa,
        &d.directory,
        &mut rand::rngs::OsRng,
    )?;
    log.appender().append_batch(sealer, &batch, Expect::Any).await?;
    Ok(())
}

/// A local nats-server with a throwaway deployment's streams provisioned, the position
/// stream divided into `partitions`.
pub(crate) struct LocalBed {
    /// The server (stopped when dropped).
    pub(crate) server: hru_local_nats::NatsServer,
    /// Its URL.
    pub(crate) url: String,
    /// The deployment.
    pub(crate) d: Deployment,
    /// The shared log.
    pub(crate) log: EventLog,
    /// The position stream.
    pub(crate) positions: PositionLog,
}

/// Start a [`LocalBed`] for the agreements in `policies_dir`.
pub(crate) async fn local_bed(policies_dir: &Path, partitions: u32) -> anyhow::Result<LocalBed> {
    let server = hru_local_nats::NatsServer::start()?;
    let url = server.url();
    let d = deployment(policies_dir)?;
    let log = EventLog::connect(&url).await?;
    hru_broker::provision(
        &log.client(),
        &d.isa.broker_rights(),
        d.isa.positions_max_age(),
        1,
        partitions,
    )
    .await?;
    let positions = PositionLog::open(&url, None, d.isa.positions_max_age(), 1).await?;
    Ok(LocalBed {
        server,
        url,
        d,
        log,
        positions,
    })
}

/// Fit tag `tag-<i>` in case `i` with an exclusion zone of `zones` (zone `i`) for every zone,
/// as the vendor and police would; each case's tag number.
pub(crate) async fn fit_tags_in_zones(
    log: &EventLog,
    d: &Deployment,
    zones: &Workload,
) -> anyhow::Result<HashMap<CaseId, usize>> {
    let vendor = party(d, "em-vendor")?;
    let police = party(d, "police-hru")?;
    let mut vendor_sealer = Sealer::new(
        ProducerId {
            party: vendor.party.clone(),
            instance: "setup".into(),
        },
        vendor.signing.clone(),
    );
    let mut police_sealer = Sealer::new(
        ProducerId {
            party: police.party.clone(),
            instance: "setup".into(),
        },
        police.signing.clone(),
    );
    let mut tag_of_case = HashMap::new();
    for (i, z) in zones.zones.iter().enumerate() {
        let case = CaseId(uuid::Uuid::from_u128(0xbe0c_0000_0000 + i as u128));
        let tag = format!("tag-{i}");
        tag_of_case.insert(case, i);
        let now = jiff::Timestamp::now().as_millisecond();
        let fitted = pb::event_draft::Event::TagFitted(pb::TagFitted {
            core: Some(pb::TagCore {
                tag_id: tag.clone(),
                order_id: uuid::Uuid::now_v7().as_bytes().to_vec(),
                victim_device_id: format!("vd-{i}"),
                at_ms: now,
                reason: String::new(),
            }),
        });
        setup_event(log, &mut vendor_sealer, d, case, fitted, now).await?;
        let ring: Vec<String> = match &z.shape {
            hru_geofence::Shape::Area { .. } => zones.polygons[i]
                .exterior()
                .0
                .iter()
                .map(|c| format!("[{},{}]", c.x, c.y))
                .collect(),
            hru_geofence::Shape::Circle { .. } => Vec::new(),
        };
        let zone = pb::event_draft::Event::ZoneDefined(pb::ZoneDefined {
            core: Some(pb::ZoneCore {
                zone_id: z.id.as_bytes().to_vec(),
                version: 1,
                kind: pb::ZoneKind::Exclusion as i32,
                tag_id: tag,
                geojson: format!(r#"{{"type":"Polygon","coordinates":[[{}]]}}"#, ring.join(",")),
                radius_m: 0.0,
                schedule: vec![],
                exit_buffer_m: 20.0,
                label: "bench".into(),
            }),
        });
        setup_event(log, &mut police_sealer, d, case, zone, now).await?;
    }

    Ok(tag_of_case)
}

/// A GPS fix `seq` at `at` (device and receive time, Unix ms) at (latitude, longitude), with
/// `accuracy_m`, a healthy battery and an intact strap.
pub(crate) fn gps_fix(seq: u64, at: i64, (lat, lon): (f64, f64), accuracy_m: f64) -> pb::PositionFix {
    pb::PositionFix {
        fix_seq: seq,
        device_time_ms: at,
        received_at_ms: at,
        position: Some(pb::LatLon { lat, lon }),
        accuracy_m,
        source: pb::FixSource::Gps as i32,
        battery_percent: 80,
        strap: pb::StrapState::Intact as i32,
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `hru bench geofence`: the engine, its memory, and the service end to end.
pub async fn geofence(
    policies_dir: &Path,
    fixes: usize,
    engine_only: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    // 1. The engine on one core beside the raw building block.
    let workload = Workload::new(1, 10_000, fixes).map_err(anyhow::Error::msg)?;
    let (engine, raw, _) = engine_vs_raw(&workload);
    drop(workload);
    if engine_only {
        match format {
            Format::Json => println!(
                "{}",
                json!({"engine_fixes_per_s": engine, "raw_rtree_pip_per_s": raw, "ratio": engine / raw})
            ),
            Format::Human => print_engine(engine, raw),
        }
        return Ok(ExitCode::SUCCESS);
    }
    // 2. Memory for 100k tags and 100k zones.
    let memory = state_memory(100_000).map_err(anyhow::Error::msg)?;

    // 3. End to end on a local server.
    let LocalBed {
        server: _server,
        url,
        d,
        log,
        positions,
    } = local_bed(policies_dir, 1).await?;
    let vendor = party(&d, "em-vendor")?;
    let control = party(&d, "police-control")?;
    let tags = 1_000usize;
    let probes = 200usize;
    let zones = Workload::new(2, tags + probes, 0).map_err(anyhow::Error::msg)?;
    let tag_of_case = fit_tags_in_zones(&log, &d, &zones).await?;

    let config_text = format!(
        "keys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nnats_url = {url:?}\n",
        d.dir.path().join("keys").display().to_string(),
        d.dir.path().join("policies").display().to_string(),
        d.dir.path().join("geofence").display().to_string(),
    );
    let config = GeofenceConfig::load(&config_text, "bench", |_| None)?;
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(hru_geofence::service::run(config, stats.clone(), async {
        let _ = stop_rx.await;
    }));
    while !stats.is_ready() {
        anyhow::ensure!(!service.is_finished(), "the geofence stopped during setup");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Background fixes: tags 0..tags, outside their zones (3-5 km away).
    let centres = zones.centres();
    let background = |n: usize, at: i64| {
        let c = centres[n % tags];
        gps_fix(n as u64, at, (c.0 + 0.03 + (n % 7) as f64 * 0.001, c.1), 10.0)
    };
    let new_gateway = |config: GatewayConfig| {
        Gateway::new(
            ProducerId {
                party: vendor.party.clone(),
                instance: format!("bench-{}", uuid::Uuid::now_v7().simple()),
            },
            vendor.signing.clone(),
            d.isa.clone(),
            d.directory.clone(),
            positions.clone(),
            config,
        )
    };

    // 3a. Throughput: as fast as the gateway, the server and the geofence go.
    let total = fixes.min(1_000_000);
    let mut gw = new_gateway(GatewayConfig {
        batch_size: 5_000,
        linger: Duration::from_secs(3600),
        heartbeat: Duration::from_secs(3600),
    });
    let base = stats.fixes.get();
    let t0 = jiff::Timestamp::now().as_millisecond();
    let start = Instant::now();
    for n in 0..total {
        gw.push(
            &format!("tag-{}", n % tags),
            false,
            background(n, t0 + (n / tags) as i64 * 1_000),
        );
        if gw.pending() >= 5_000 {
            gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
        }
    }
    gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
    let published = start.elapsed().as_secs_f64();
    while stats.fixes.get() < base + total as u64 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(300), "the geofence fell behind");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end_to_end = total as f64 / start.elapsed().as_secs_f64();

    // 3b. Latency at steady rates: probe tags step into their zones while background flows.
    let nats = async_nats::connect(&url).await?;
    let mut breaches = nats
        .subscribe(
            hru_broker::Filter::producer_events_of_type(&"geofence".parse()?, hru_domain::EventType::TagBreach)
                .to_string(),
        )
        .await?;
    let mut latencies = Vec::new();
    let mut probe = tags;
    for rate in [10_000usize, 100_000] {
        let mut gw = new_gateway(GatewayConfig {
            batch_size: 5_000,
            linger: Duration::from_millis(10),
            heartbeat: Duration::from_secs(1),
        });
        let mut sent_at: HashMap<usize, Instant> = HashMap::new();
        let mut got: Vec<f64> = Vec::new();
        let seconds = 4u64;
        let start = Instant::now();
        let mut n = 0usize;
        for ms in 0..seconds * 1000 {
            let at = jiff::Timestamp::now().as_millisecond();
            // Catch up to the rate by the clock, not by loop turns.
            let due = (start.elapsed().as_secs_f64() * rate as f64) as usize;
            while n < due {
                gw.push(&format!("tag-{}", n % tags), false, background(n, at));
                n += 1;
            }
            if ms % 40 == 20 && probe < tags + probes {
                let c = centres[probe];
                let fix = gps_fix(1, at, c, 5.0);
                gw.push(&format!("tag-{probe}"), false, fix);
                sent_at.insert(probe, Instant::now());
                probe += 1;
            }
            if gw.due(Instant::now()) {
                gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
            }
            while let Ok(Some(m)) = tokio::time::timeout(Duration::ZERO, breaches.next()).await {
                if let Ok(h) = hru_envelope::decode_header(&m.payload)
                    && h.event_type == EventType::TagBreach
                    && let Some(i) = h.case_id.and_then(|c| tag_of_case.get(&c))
                    && let Some(t) = sent_at.remove(i)
                {
                    got.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            tokio::time::sleep_until((start + Duration::from_millis(ms + 1)).into()).await;
        }
        gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sent_at.is_empty() && Instant::now() < deadline {
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), breaches.next()).await
                && let Ok(h) = hru_envelope::decode_header(&m.payload)
                && let Some(i) = h.case_id.and_then(|c| tag_of_case.get(&c))
                && let Some(t) = sent_at.remove(i)
            {
                got.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        got.sort_by(f64::total_cmp);
        let achieved = n as f64 / start.elapsed().as_secs_f64();
        latencies.push((
            rate,
            achieved,
            got.len(),
            sent_at.len(),
            percentile(&got, 0.5),
            percentile(&got, 0.99),
        ));
    }
    let _ = stop_tx.send(());
    let _ = service.await;
    let _ = control;

    match format {
        Format::Json => println!(
            "{}",
            json!({
                "engine_fixes_per_s": engine, "raw_rtree_pip_per_s": raw, "ratio": engine / raw,
                "memory_100k_tags_zones_bytes": memory,
                "end_to_end_fixes_per_s": end_to_end, "gateway_publish_s": published,
                "latency": latencies.iter().map(|(r, a, n, lost, p50, p99)| json!({"rate": r, "achieved": a, "probes": n, "unanswered": lost, "p50_ms": p50, "p99_ms": p99})).collect::<Vec<_>>(),
            })
        ),
        Format::Human => {
            print_engine(engine, raw);
            println!(
                "memory        {:>12.0} MiB for 100k tags and 100k zones",
                memory as f64 / 1_048_576.0
            );
            println!(
                "end to end    {end_to_end:>12.0} fixes/s (gateway → NATS → geofence on 2 shared cores; fixes away from zones)"
            );
            for (rate, achieved, n, lost, p50, p99) in &latencies {
                println!(
                    "latency @ {rate:>6}/s (achieved {achieved:.0}/s): fix → control-room breach p50 {p50:.1} ms, p99 {p99:.1} ms over {n} probes ({lost} unanswered)"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine's figure beside the raw building block's.
fn print_engine(engine: f64, raw: f64) {
    println!(
        "engine        {engine:>12.0} fixes/s on one core (10k zones, 10k tags)\nraw           {raw:>12.0} R-tree + point-in-polygon/s (same fixes)\nratio         {:>12.2}",
        engine / raw
    );
}
