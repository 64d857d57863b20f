//! `hru geofence run`, `hru gateway run` and `hru gateway simulate`: the monitoring services.

use std::io::BufRead as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use hru_domain::{PartyId, ProducerId};
use hru_gateway::{Gateway, GatewayConfig, simulate::Simulator};
use hru_log::PositionLog;
use hru_wire::v1 as pb;

use crate::{keys, policies};

/// `hru geofence run --config FILE` until Ctrl-C.
pub(crate) async fn geofence_run(path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let config =
        hru_geofence::service::GeofenceConfig::load(&text, &path.display().to_string(), |k| std::env::var(k).ok())?;
    eprintln!("hru geofence {} following {}", config.instance, config.nats_url);
    let stats = Arc::new(hru_geofence::service::Stats::default());
    hru_geofence::service::run(config, stats, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// A gateway sealing as `party` (instance named for this run, so restarts never fork a chain).
pub(crate) async fn gateway(
    nats: &str,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    config: GatewayConfig,
) -> anyhow::Result<Gateway> {
    let party: PartyId = party.parse().context("--party")?;
    let directory = policies::directory(policies_dir)?;
    let agreements = policies::agreements(policies_dir, &directory)?;
    let isa = policies::in_force(&agreements, jiff::Timestamp::now().as_millisecond())?.clone();
    let secrets = keys::load(keys_dir, &party)?;
    // A gateway only publishes: its broker permissions give it no read of HRU_POSITIONS.
    let log = PositionLog::publisher(nats, Some(&secrets.broker_identity())).await?;
    let instance = format!("gw-{}", uuid::Uuid::now_v7().simple());
    Ok(Gateway::new(
        ProducerId { party, instance },
        secrets.signing.clone(),
        isa,
        directory,
        log,
        config,
    ))
}

async fn flush_due(gw: &mut Gateway) -> anyhow::Result<usize> {
    if gw.due(Instant::now()) {
        let sent = gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
        return Ok(sent.fixes);
    }
    Ok(0)
}

/// `hru gateway run`: vendor fixes as JSON lines of `hru.v1.DeviceFixes` on standard input.
pub(crate) async fn gateway_run(mut gw: Gateway) -> anyhow::Result<ExitCode> {
    let desc = hru_wire::descriptor_pool()
        .get_message_by_name("hru.v1.DeviceFixes")
        .ok_or_else(|| anyhow!("the wire contract has no DeviceFixes"))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String)>(10_000);
    std::thread::spawn(move || {
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let Ok(line) = line else { break };
            if tx.blocking_send((i + 1, line)).is_err() {
                break;
            }
        }
    });
    let (mut sent, mut rejected) = (0usize, 0usize);
    loop {
        let wait = gw.next_due(Instant::now());
        tokio::select! {
            line = rx.recv() => {
                let Some((n, line)) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let mut de = serde_json::Deserializer::from_str(&line);
                let parsed = prost_reflect::DynamicMessage::deserialize(desc.clone(), &mut de)
                    .and_then(|m| de.end().map(|()| m))
                    .map_err(|e| anyhow!("stdin:{n}:{}: {e}", e.column()))
                    .and_then(|m| m.transcode_to::<pb::DeviceFixes>().map_err(|e| anyhow!("stdin:{n}: {e}")))
                    .and_then(|d| check_device(&d).map_err(|e| anyhow!("stdin:{n}: {e}")).map(|()| d));
                match parsed {
                    Ok(d) => {
                        for fix in d.fixes {
                            gw.push(&d.device_id, d.victim_device, fix);
                        }
                    }
                    Err(e) => {
                        rejected += 1;
                        eprintln!("{e}; line skipped");
                    }
                }
            }
            () = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        sent += flush_due(&mut gw).await?;
    }
    if gw.pending() > 0 {
        sent += gw.flush(jiff::Timestamp::now().as_millisecond()).await?.fixes;
    }
    eprintln!("gateway: {sent} fixes sent, {rejected} lines rejected");
    Ok(ExitCode::SUCCESS)
}

fn check_device(d: &pb::DeviceFixes) -> Result<(), String> {
    hru_domain::PartyId::parse(&d.device_id, "deviceId")
        .map(|_| ())
        .map_err(|e| format!("field `deviceId`: {}", e.problem))?;
    for (i, f) in d.fixes.iter().enumerate() {
        if f.device_time_ms <= 0 {
            return Err(format!(
                "field `fixes[{i}].deviceTimeMs` must be a positive Unix time in ms"
            ));
        }
        if let Some(p) = &f.position
            && (!(-90.0..=90.0).contains(&p.lat) || !(-180.0..=180.0).contains(&p.lon))
        {
            return Err(format!(
                "field `fixes[{i}].position` is not a latitude and longitude in degrees"
            ));
        }
        if !f.accuracy_m.is_finite() || f.accuracy_m < 0.0 {
            return Err(format!(
                "field `fixes[{i}].accuracyM` must be a non-negative number of metres"
            ));
        }
    }
    Ok(())
}

/// What `hru gateway simulate` runs.
#[derive(Debug, Clone)]
pub(crate) struct Simulation {
    pub(crate) tags: usize,
    pub(crate) rate_hz: f64,
    pub(crate) seconds: f64,
    pub(crate) seed: u64,
    pub(crate) approach: Vec<usize>,
    pub(crate) fast: bool,
}

/// `hru gateway simulate`: simulated tags through the gateway, in real time (or as fast as it goes).
pub(crate) async fn gateway_simulate(mut gw: Gateway, sim: Simulation) -> anyhow::Result<ExitCode> {
    let start_ms = jiff::Timestamp::now().as_millisecond();
    let mut simulator = Simulator::new(sim.seed, sim.tags, sim.rate_hz, start_ms);
    for i in &sim.approach {
        simulator.approach(*i);
    }
    let started = Instant::now();
    let step_ms = 10;
    let steps = (sim.seconds * 1000.0 / step_ms as f64).ceil() as u64;
    let mut sent = 0usize;
    for n in 0..steps {
        for f in simulator.step(step_ms) {
            gw.push(&f.device, f.victim, f.fix);
        }
        if !sim.fast {
            let target = started + Duration::from_millis((n + 1) * step_ms as u64);
            tokio::time::sleep_until(target.into()).await;
        }
        sent += flush_due(&mut gw).await?;
    }
    sent += gw.flush(jiff::Timestamp::now().as_millisecond()).await?.fixes;
    let took = started.elapsed().as_secs_f64();
    println!(
        "simulated {} tags at {} Hz for {} s: {sent} fixes sent in {took:.1} s ({:.0} fixes/s)",
        sim.tags,
        sim.rate_hz,
        sim.seconds,
        sent as f64 / took
    );
    Ok(ExitCode::SUCCESS)
}

/// Gateway settings from the command line.
pub(crate) fn gateway_config(batch: usize, linger_ms: u64) -> anyhow::Result<GatewayConfig> {
    if batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    Ok(GatewayConfig {
        batch_size: batch,
        linger: Duration::from_millis(linger_ms),
        ..GatewayConfig::default()
    })
}
