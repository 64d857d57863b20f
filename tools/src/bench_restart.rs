//! `hru bench geofence-restart`: how long a geofence takes to be ready again, and how much
//! memory it needs, after a long run for a large fleet: once replaying every input (as with no
//! snapshot), then from the snapshot that first start wrote plus a tail of new fixes. Both are
//! real `hru geofence run` processes on a local nats-server; ready is `hru_geofence_ready 1`
//! on its metrics, peak memory the process's `VmHWM`.

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hru_domain::{CaseId, ProducerId};
use hru_envelope::Sealer;
use hru_gateway::{Gateway, GatewayConfig};
use hru_wire::v1 as pb;
use serde_json::json;

use crate::Format;
use crate::bench_geo::{LocalBed, gps_fix, local_bed, party, setup_event};
use crate::geofence_workload::Workload;

/// Seconds between a tag's fixes.
const EVERY_S: i64 = 30;
/// Fixes per published batch.
const BATCH: usize = 5_000;

/// One start of the geofence: seconds to ready and peak resident memory.
struct Start {
    ready_s: f64,
    peak_bytes: u64,
    restored: u64,
    replayed: u64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The metric `name` on loopback `port`, if served.
fn metric(port: u16, name: &str) -> Option<u64> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Peak resident memory of process `pid` so far (`VmHWM`), bytes.
fn peak_resident(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Start `hru geofence run` with `config`, wait until it is ready; its child and figures.
fn start(config: &Path, url: &str, port: u16) -> anyhow::Result<(Child, Start)> {
    let exe = std::env::current_exe()?;
    // Its log beside its config.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))?;
    let began = Instant::now();
    let mut child = Command::new(exe)
        .args(["geofence", "run", "--config"])
        .arg(config)
        .env("HRU_NATS_URL", url)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start hru geofence run")?;
    let mut peak = 0;
    loop {
        peak = peak.max(peak_resident(child.id()));
        if metric(port, "hru_geofence_ready") == Some(1) {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the geofence stopped before it was ready: {status}");
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(3600),
            "the geofence was not ready within an hour"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready_s = began.elapsed().as_secs_f64();
    // The state it reached is written as a snapshot as soon as it is ready.
    while metric(port, "hru_geofence_snapshots_total").unwrap_or(0) == 0 {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the geofence stopped before it wrote a snapshot: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak_bytes = peak.max(peak_resident(child.id()));
    let restored = metric(port, "hru_geofence_restored").unwrap_or(0);
    let replayed = metric(port, "hru_geofence_replayed_positions").unwrap_or(0);
    Ok((
        child,
        Start {
            ready_s,
            peak_bytes,
            restored,
            replayed,
        },
    ))
}

/// Stop a geofence cleanly (SIGINT) and wait for it.
fn stop(mut child: Child) -> anyhow::Result<()> {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .context("kill -INT")?;
    child.wait()?;
    Ok(())
}

/// `hru bench geofence-restart`.
pub async fn geofence_restart(
    policies_dir: &Path,
    tags: usize,
    fixes: usize,
    tail: usize,
    live: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let LocalBed {
        server: _server,
        url,
        d,
        log,
        positions,
    } = local_bed(policies_dir, 1).await?;

    // The fleet: each tag fitted, with an exclusion zone.
    let workload = Workload::new(3, tags, 0).map_err(anyhow::Error::msg)?;
    let setup = Instant::now();
    let sealer = |p: &str| -> anyhow::Result<Sealer> {
        let s = party(&d, p)?;
        Ok(Sealer::new(
            ProducerId {
                party: s.party.clone(),
                instance: "setup".into(),
            },
            s.signing.clone(),
        ))
    };
    let (mut vendor_sealer, mut police_sealer) = (sealer("em-vendor")?, sealer("police-hru")?);
    let now = jiff::Timestamp::now().as_millisecond();
    let span_ms = (fixes / tags.max(1)) as i64 * EVERY_S * 1000;
    let t0 = now - span_ms - (tail / tags.max(1)) as i64 * EVERY_S * 1000;
    for (i, z) in workload.zones.iter().enumerate() {
        let case = CaseId(uuid::Uuid::from_u128(0x5e57_0000_0000 + i as u128));
        let tag = format!("tag-{i}");
        let fitted = pb::event_draft::Event::TagFitted(pb::TagFitted {
            core: Some(pb::TagCore {
                tag_id: tag.clone(),
                order_id: uuid::Uuid::from_u128(i as u128 + 1).as_bytes().to_vec(),
                victim_device_id: format!("vd-{i}"),
                at_ms: t0,
                reason: String::new(),
            }),
        });
        setup_event(&log, &mut vendor_sealer, &d, case, fitted, t0 - 1_000).await?;
        let zone = pb::event_draft::Event::ZoneDefined(pb::ZoneDefined {
            core: Some(pb::ZoneCore::from(&z.definition)),
        });
        setup_event(&log, &mut police_sealer, &d, case, zone, t0 - 1_000).await?;
    }
    let setup_s = setup.elapsed().as_secs_f64();

    // The run's fixes, then (while the geofence is down) the tail: each tag every 30 s, 3 to
    // 5 km from its zone.
    let vendor = party(&d, "em-vendor")?;
    let centres = workload.centres();
    let mut gateway = Gateway::new(
        ProducerId {
            party: vendor.party.clone(),
            instance: "bench-restart".into(),
        },
        vendor.signing.clone(),
        d.isa.clone(),
        d.directory.clone(),
        positions.clone(),
        GatewayConfig {
            batch_size: BATCH,
            linger: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(3600),
        },
    );
    let mut sent = 0usize;
    let mut publish = async |gateway: &mut Gateway, n: usize| -> anyhow::Result<f64> {
        let began = Instant::now();
        let mut heartbeat = t0;
        for _ in 0..n {
            let (i, k) = (sent % centres.len(), sent / centres.len());
            let at = t0 + k as i64 * EVERY_S * 1000;
            let c = centres[i];
            gateway.push(
                &format!("tag-{i}"),
                false,
                pb::PositionFix {
                    received_at_ms: at + 500,
                    ..gps_fix(k as u64, at, (c.0 + 0.03 + (k % 7) as f64 * 0.003, c.1), 8.0)
                },
            );
            sent += 1;
            heartbeat = at + 500;
            if gateway.pending() >= BATCH {
                gateway.flush(heartbeat).await?;
            }
        }
        gateway.flush(heartbeat).await?;
        Ok(began.elapsed().as_secs_f64())
    };
    let port = free_port()?;
    let config = d.dir.path().join("geofence.toml");
    std::fs::write(
        &config,
        format!(
            "keys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nmetrics_listen = \"127.0.0.1:{port}\"\nsnapshot_every_s = 3600\n",
            d.dir.path().join("keys").display().to_string(),
            d.dir.path().join("policies").display().to_string(),
            d.dir.path().join("geofence").display().to_string(),
        ),
    )?;
    let (full, live_peak, publish_s) = if live {
        // The geofence follows the fixes as they are published; a clean stop writes its
        // snapshot. (A full replay of this many fixes is not attempted: it holds them all.)
        let (child, _) = start(&config, &url, port)?;
        let publish_s = publish(&mut gateway, fixes).await?;
        let began = Instant::now();
        while metric(port, "hru_geofence_fixes_total").unwrap_or(0) < fixes as u64 {
            anyhow::ensure!(began.elapsed() < Duration::from_secs(7200), "the geofence fell behind");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let peak = peak_resident(child.id());
        stop(child)?;
        (None, Some(peak), publish_s)
    } else {
        // 1. Every input replayed (no snapshot yet); the snapshot it reached is written at once.
        let publish_s = publish(&mut gateway, fixes).await?;
        let (child, full) = start(&config, &url, port)?;
        stop(child)?;
        (Some(full), None, publish_s)
    };
    let snapshot_bytes = {
        let nats = async_nats::connect(&url).await?;
        let js = async_nats::jetstream::new(nats);
        let mut stream = js.get_stream(hru_broker::SNAPSHOTS_STREAM).await?;
        stream.info().await?.state.bytes
    };
    // 2. The tail arrives while it is down; it starts again from the snapshot.
    publish(&mut gateway, tail).await?;
    let (child, restart) = start(&config, &url, port)?;
    stop(child)?;
    if restart.restored != 1 || full.as_ref().is_some_and(|f| f.restored != 0) {
        let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        anyhow::bail!(
            "the first start replays everything and the second loads the snapshot; the geofence's log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let hours = span_ms as f64 / 3_600_000.0;
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "tags": tags, "fixes": fixes, "every_s": EVERY_S, "simulated_hours": hours, "tail_fixes": tail,
                "setup_s": setup_s, "publish_s": publish_s, "live": live,
                "full_replay": full.as_ref().map(|f| json!({"ready_s": f.ready_s, "peak_bytes": f.peak_bytes, "replayed_position_messages": f.replayed})),
                "live_peak_bytes": live_peak,
                "from_snapshot": {"ready_s": restart.ready_s, "peak_bytes": restart.peak_bytes, "replayed_position_messages": restart.replayed},
                "snapshot_stream_bytes": snapshot_bytes,
                "ready_ratio": full.as_ref().map(|f| restart.ready_s / f.ready_s),
            })
        ),
        Format::Human => {
            println!(
                "fleet          {tags} tags, one fix every {EVERY_S} s for {hours:.1} h simulated: {fixes} fixes (published in {publish_s:.1} s), then a tail of {tail} fixes"
            );
            match (&full, live_peak) {
                (Some(f), _) => println!(
                    "full replay    ready in {:>8.2} s, peak resident {:>8.0} MiB ({} position messages)",
                    f.ready_s,
                    mib(f.peak_bytes),
                    f.replayed
                ),
                (None, peak) => println!(
                    "followed live  peak resident {:>8.0} MiB while evaluating every fix as published (no full replay)",
                    mib(peak.unwrap_or(0))
                ),
            }
            println!(
                "from snapshot  ready in {:>8.2} s, peak resident {:>8.0} MiB ({} position messages after the cut)",
                restart.ready_s,
                mib(restart.peak_bytes),
                restart.replayed
            );
            if let Some(f) = &full {
                println!(
                    "ratio          {:>8.3} of the full replay's time",
                    restart.ready_s / f.ready_s
                );
            }
            println!(
                "snapshots      {:>8.1} MiB on the broker (three slots)",
                mib(snapshot_bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
