//! `hru geofence run`, `hru gateway run` and `hru gateway simulate`: the monitoring services.

use std::io::BufRead as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use hru_domain::PartyId;
use hru_gateway::run::Simulation;
use hru_gateway::{Gateway, GatewayConfig};

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

/// A gateway sealing as `party` of the deployment.
pub(crate) async fn gateway(
    nats: &str,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    config: GatewayConfig,
) -> anyhow::Result<Gateway> {
    let party: PartyId = party.parse().context("--party")?;
    Ok(hru_gateway::run::open(nats, policies_dir, &party, keys_dir, config).await?)
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
