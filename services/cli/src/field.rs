//! `hru geofence run`, `hru gateway run` and `hru gateway simulate`: the monitoring services.

use std::io::BufRead as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::anyhow;
use hru_gateway::run::Simulation;
use hru_gateway::{Gateway, GatewaySettings};

use crate::{GatewayFlags, GivenGlobals};

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what a container runtime sends to stop a service).
/// Both are caught from the moment this is called, not from the first poll: a stop asked for
/// while the service is still starting ends it cleanly once started.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// `hru geofence run --config FILE` until Ctrl-C or SIGTERM (a clean stop writes a last
/// snapshot).
pub(crate) async fn geofence_run(path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let config =
        hru_geofence::service::GeofenceConfig::load(&text, &path.display().to_string(), |k| std::env::var(k).ok())?;
    eprintln!("hru geofence {} following {}", config.instance, config.nats_url);
    let stats = Arc::new(hru_geofence::service::Stats::default());
    hru_geofence::service::run(config, stats, stop_signal()?).await?;
    Ok(ExitCode::SUCCESS)
}

/// A gateway from its layered settings: `--config`, then `HRU_*` variables, then the flags given.
pub(crate) async fn gateway(
    flags: &GatewayFlags,
    nats: &str,
    policies: &Path,
    given: GivenGlobals,
) -> anyhow::Result<Gateway> {
    let (text, source) = match &flags.config {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => (String::new(), "gateway settings".to_owned()),
    };
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if given.nats {
        overrides.push(("nats_url", nats.to_owned()));
    }
    if given.policies {
        overrides.push(("policies_dir", policies.display().to_string()));
    }
    if let Some(p) = &flags.party {
        overrides.push(("party", p.clone()));
    }
    if let Some(k) = &flags.keys {
        overrides.push(("keys_dir", k.display().to_string()));
    }
    if let Some(b) = flags.batch {
        overrides.push(("batch_size", b.to_string()));
    }
    if let Some(l) = flags.linger_ms {
        overrides.push(("linger_ms", l.to_string()));
    }
    if let Some(h) = flags.heartbeat_ms {
        overrides.push(("heartbeat_ms", h.to_string()));
    }
    if let Some(g) = &flags.gateway_id {
        overrides.push(("gateway_id", g.clone()));
    }
    let settings = GatewaySettings::load(&text, &source, |k| std::env::var(k).ok(), &overrides)?;
    let party = settings.party_id()?;
    let keys_dir = settings.keys_dir.clone().unwrap_or_default();
    Ok(hru_gateway::run::open(
        &settings.nats_url,
        &settings.policies_dir,
        &party,
        &keys_dir,
        settings.batching(),
    )
    .await?
    .named(&settings.gateway_id))
}

/// `hru gateway retire`: `party` signs that its gateway `gateway` is gone for good.
pub(crate) async fn retire(
    nats: &crate::Broker,
    policies_dir: &std::path::Path,
    party: &str,
    keys_dir: &std::path::Path,
    gateway: &str,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let party: hru_domain::PartyId = party.parse().context("--party")?;
    if gateway.trim().is_empty() {
        anyhow::bail!("--gateway: give the gateway's identity (`gateway_id` in its configuration)");
    }
    if reason.trim().is_empty() {
        anyhow::bail!("--reason: say why the gateway is retired");
    }
    let mut producer = crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, "cli").await?;
    let body = hru_wire::v1::GatewayRetired {
        gateway: gateway.to_owned(),
        reason: reason.to_owned(),
    };
    let (sequence, _) = producer
        .append_public(
            hru_domain::EventType::GatewayRetired,
            prost::Message::encode_to_vec(&body),
        )
        .await?;
    println!("gateway {gateway} of {party} retired at log sequence {sequence}");
    Ok(ExitCode::SUCCESS)
}

/// `hru gateway run`: vendor fixes as JSON lines of `hru.v1.DeviceFixes` on standard input,
/// until it ends or Ctrl-C.
pub(crate) async fn gateway_run(mut gw: Gateway) -> anyhow::Result<ExitCode> {
    let (tx, rx) = tokio::sync::mpsc::channel::<(usize, String)>(10_000);
    std::thread::spawn(move || {
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let Ok(line) = line else { break };
            if tx.blocking_send((i + 1, line)).is_err() {
                break;
            }
        }
    });
    let sent = hru_gateway::run::feed(&mut gw, rx, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    eprintln!("gateway: {} fixes sent, {} lines rejected", sent.fixes, sent.rejected);
    Ok(ExitCode::SUCCESS)
}

/// `hru gateway simulate`: simulated tags through the gateway.
pub(crate) async fn gateway_simulate(mut gw: Gateway, sim: Simulation) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let sent = hru_gateway::run::simulate(&mut gw, &sim).await?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "simulated {} tags at {} Hz for {} s: {} fixes sent in {took:.1} s ({:.0} fixes/s)",
        sim.tags,
        sim.rate_hz,
        sim.seconds,
        sent.fixes,
        sent.fixes as f64 / took
    );
    Ok(ExitCode::SUCCESS)
}
