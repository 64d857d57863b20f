//! Running a gateway: opening it for a party of a deployment, the vendor-feed loop (one JSON
//! `hru.v1.DeviceFixes` per line; a bad line is named and skipped), and the tag simulator's
//! loop. Lines and shutdown come in from the binary; the loops only batch and publish.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use hru_domain::{PartyId, ProducerId};
use hru_log::PositionLog;
use hru_wire::v1 as pb;

use crate::simulate::Simulator;
use crate::{Gateway, GatewayConfig, GatewayError};

/// Why a gateway could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The deployment (policies, keys) could not be loaded.
    #[error(transparent)]
    Deployment(#[from] hru_runtime::DeploymentError),
    /// The broker could not be reached.
    #[error(transparent)]
    Log(#[from] hru_log::LogError),
}

/// A gateway sealing as `party` of the deployment in `policies_dir` with the keys in
/// `keys_dir`, publishing to `nats` (instance named for this run, so restarts never fork a chain).
pub async fn open(
    nats: &str,
    policies_dir: &Path,
    party: &PartyId,
    keys_dir: &Path,
    config: GatewayConfig,
) -> Result<Gateway, OpenError> {
    let deployment = hru_runtime::Deployment::load(policies_dir)?;
    let isa = deployment.in_force_now()?.clone();
    let secrets = hru_runtime::deployment::secrets(keys_dir, party)?;
    // A gateway only publishes: its broker permissions give it no read of HRU_POSITIONS, only
    // of the stream's configuration, which names its partitions.
    let log = PositionLog::publisher(nats, Some(&secrets.broker_identity())).await?;
    let partitions = log.partitions().await?;
    let instance = format!("gw-{}", uuid::Uuid::now_v7().simple());
    let gateway = Gateway::new(
        ProducerId {
            party: party.clone(),
            instance,
        },
        secrets.signing.clone(),
        isa,
        deployment.directory.clone(),
        log,
        config,
    )
    .partitioned(partitions);
    // Grants go to the period keys the members published, read from the vendor's own view.
    let view = hru_log::PartyView::open(nats, Some(&secrets.broker_identity()), party).await?;
    Ok(gateway.with_period_keys(view, deployment.directory).await?)
}

/// What a feed or a simulation sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sent {
    /// Fixes published.
    pub fixes: usize,
    /// Lines refused (named on the log and skipped).
    pub rejected: usize,
}

async fn flush_due(gw: &mut Gateway) -> Result<usize, GatewayError> {
    if gw.due(Instant::now()) || gw.has_inflight() {
        return Ok(gw.flush(now_ms()).await?.fixes);
    }
    Ok(0)
}

/// How long a gateway waits before publishing again after the broker refused or did not
/// answer.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A rejected line of the vendor feed: which line (and column, when known), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {problem}", column.map(|c| format!(":{c}")).unwrap_or_default())]
pub struct LineError {
    /// Line number, from 1.
    pub line: usize,
    /// Column, from 1, for JSON syntax errors.
    pub column: Option<usize>,
    /// What is wrong, naming the field.
    pub problem: String,
}

/// One line of the vendor feed: a `DeviceFixes` in protobuf JSON, checked; the error names
/// the line, the column or the field.
pub fn parse_line(n: usize, line: &str) -> Result<pb::DeviceFixes, LineError> {
    let problem = |column: Option<usize>, problem: String| LineError {
        line: n,
        column,
        problem,
    };
    let desc = hru_wire::descriptor_pool()
        .get_message_by_name("hru.v1.DeviceFixes")
        .ok_or_else(|| problem(None, "the wire contract has no DeviceFixes".to_owned()))?;
    let mut de = serde_json::Deserializer::from_str(line);
    let message = prost_reflect::DynamicMessage::deserialize(desc, &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| problem(Some(e.column()), e.to_string()))?;
    let fixes = message
        .transcode_to::<pb::DeviceFixes>()
        .map_err(|e| problem(None, e.to_string()))?;
    check_device(&fixes).map_err(|e| problem(None, e))?;
    Ok(fixes)
}

/// Check a device's fixes before they are batched; the error names the field.
pub fn check_device(d: &pb::DeviceFixes) -> Result<(), String> {
    let id = if d.victim_device {
        hru_domain::DeviceId::parse(&d.device_id, "deviceId").map(|_| ())
    } else {
        hru_domain::TagId::parse(&d.device_id, "deviceId").map(|_| ())
    };
    id.map_err(|e| format!("field `deviceId`: {}", e.problem))?;
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

/// Batch and publish the vendor feed's `lines` (numbered from 1) until they end or
/// `shutdown`; what is pending then is flushed. While the broker cannot be reached the gateway
/// keeps what it has (the batch that failed, sent again byte for byte, and the fixes since,
/// up to [`BACKLOG_BATCHES`](crate::BACKLOG_BATCHES) batches, beyond which the feed waits)
/// and tries again every [`RETRY_AFTER`]; when the lines end it keeps trying until everything
/// is out, or `shutdown`. A batch that cannot be sealed (the agreement shares no positions) is
/// an error.
pub async fn feed(
    gw: &mut Gateway,
    mut lines: tokio::sync::mpsc::Receiver<(usize, String)>,
    shutdown: impl Future<Output = ()>,
) -> Result<Sent, GatewayError> {
    let mut sent = Sent::default();
    let mut retry_at: Option<Instant> = None;
    let mut stopped = false;
    tokio::pin!(shutdown);
    loop {
        let now = Instant::now();
        let wait = retry_at.map_or_else(|| gw.next_due(now), |t| t.saturating_duration_since(now));
        let room = !gw.backlog_full();
        tokio::select! {
            line = lines.recv(), if room => {
                let Some((n, line)) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                match parse_line(n, &line) {
                    Ok(d) => {
                        for fix in d.fixes {
                            gw.push(&d.device_id, d.victim_device, fix);
                        }
                    }
                    Err(e) => {
                        sent.rejected += 1;
                        tracing::warn!(problem = %e, "vendor line skipped");
                    }
                }
            }
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => {
                stopped = true;
                break;
            }
        }
        if retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        match flush_due(gw).await {
            Ok(n) => {
                sent.fixes += n;
                retry_at = None;
            }
            Err(GatewayError::Log(e)) => {
                tracing::warn!(cause = %e, pending = gw.pending(), "broker unreachable; fixes kept and sent again");
                retry_at = Some(Instant::now() + RETRY_AFTER);
            }
            Err(e) => return Err(e),
        }
    }
    // Everything taken goes out before the gateway ends, however long the broker takes to
    // return; a shutdown gets one last attempt.
    while gw.pending() > 0 || gw.has_inflight() {
        match gw.flush(now_ms()).await {
            Ok(f) => sent.fixes += f.fixes,
            Err(GatewayError::Log(e)) if !stopped => {
                tracing::warn!(cause = %e, pending = gw.pending(), "broker unreachable; fixes kept and sent again");
                tokio::select! {
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                    () = &mut shutdown => stopped = true,
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// What a simulation runs.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Tags.
    pub tags: usize,
    /// Fixes per tag per second.
    pub rate_hz: f64,
    /// Seconds of simulated time.
    pub seconds: f64,
    /// Seed of the fleet's movements.
    pub seed: u64,
    /// Tags sent towards their victim's home.
    pub approach: Vec<usize>,
    /// As fast as it goes rather than in real time.
    pub fast: bool,
}

/// Simulated tags through the gateway, in real time (or as fast as it goes).
pub async fn simulate(gw: &mut Gateway, sim: &Simulation) -> Result<Sent, GatewayError> {
    let mut simulator = Simulator::new(sim.seed, sim.tags, sim.rate_hz, now_ms());
    for i in &sim.approach {
        simulator.approach(*i);
    }
    let started = Instant::now();
    let step_ms = 10u64;
    let steps = (sim.seconds * 1000.0 / step_ms as f64).ceil() as u64;
    let mut sent = Sent::default();
    for n in 0..steps {
        for f in simulator.step(step_ms as i64) {
            gw.push(&f.device, f.victim, f.fix);
        }
        if !sim.fast {
            tokio::time::sleep_until((started + Duration::from_millis((n + 1) * step_ms)).into()).await;
        }
        sent.fixes += flush_due(gw).await?;
    }
    sent.fixes += gw.flush(now_ms()).await?.fixes;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_bad_line_is_named_with_its_number_and_field() {
        let e = parse_line(7, r#"{"deviceId":"tag-1","fixes":[{"deviceTimeMs":"0"}]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 7: field `fixes[0].deviceTimeMs` must be a positive Unix time in ms"
        );
        let e = parse_line(3, r#"{"deviceId":"tag-1","#).unwrap_err();
        assert_eq!((e.line, e.column.is_some()), (3, true), "{e}");
        let e = e.to_string();
        assert!(e.starts_with("line 3:"), "{e}");
        let e = parse_line(4, r#"{"deviceId":"Not A Tag"}"#).unwrap_err().to_string();
        assert!(e.starts_with("line 4: field `deviceId`"), "{e}");
    }

    #[test]
    fn a_good_line_parses() {
        let d = parse_line(
            1,
            r#"{"deviceId":"tag-1","fixes":[{"deviceTimeMs":"1795000000000","position":{"lat":53.19,"lon":-2.89},"accuracyM":8}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.fixes.len(), 1);
    }
}
