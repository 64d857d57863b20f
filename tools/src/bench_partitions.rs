//! `hru bench geofence-partitions`: the geofence end to end (gateway → NATS → geofence) with 1,
//! 2 and 3 instances sharing the position stream's three partitions, beside the gateway's
//! publish rate alone measured in the same run; then the handover when one of three instances
//! stops dead: how long its partition goes unevaluated, and fix → breach latency meanwhile.
//! Instances run in this process (each its own connections, state and producers), on this
//! machine's cores beside the server.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hru_domain::{CaseId, EventType, ProducerId};
use hru_gateway::{Gateway, GatewayConfig};
use hru_geofence::service::{GeofenceConfig, GeofenceError, Stats};
use hru_log::PositionLog;
use hru_wire::v1 as pb;
use serde_json::json;

use crate::Format;
use crate::bench_geo::{Deployment, LocalBed, fit_tags_in_zones, gps_fix, local_bed, party, percentile};
use crate::geofence_workload::Workload;

const PARTITIONS: u32 = 3;
/// Tags sending background fixes (away from their zones).
const TAGS: usize = 1_000;
/// Tags whose fixes step into their zones, one breach each.
const PROBES: usize = 600;

/// A server with the fleet's tags and zones, and the stream divided into [`PARTITIONS`].
struct Bed {
    _server: hru_local_nats::NatsServer,
    url: String,
    d: Deployment,
    positions: PositionLog,
    centres: Vec<(f64, f64)>,
    tag_of_case: HashMap<CaseId, usize>,
}

impl Bed {
    async fn new(policies_dir: &Path) -> anyhow::Result<Self> {
        let LocalBed {
            server,
            url,
            d,
            log,
            positions,
        } = local_bed(policies_dir, PARTITIONS).await?;
        let zones = Workload::new(2, TAGS + PROBES, 0).map_err(anyhow::Error::msg)?;
        let tag_of_case = fit_tags_in_zones(&log, &d, &zones).await?;
        // The geofence's period chains, made once for every instance (as `hru keys periods`).
        let geofence = "geofence".parse()?;
        let mut holder = hru_log::periods::PeriodHolder::open(
            &hru_runtime::deployment::periods_path(&d.dir.path().join("keys"), &geofence),
            &geofence,
        )?;
        let month = hru_envelope::month_at(jiff::Timestamp::now().as_millisecond())
            .ok_or_else(|| anyhow::anyhow!("the clock names no month"))?;
        holder.ensure(hru_log::periods::classes(&d.isa), &month)?;
        Ok(Self {
            _server: server,
            url,
            centres: zones.centres(),
            d,
            positions,
            tag_of_case,
        })
    }

    /// A gateway dividing among the partitions, flushing at `batch` fixes or after `linger`.
    fn gateway(&self, batch: usize, linger: Duration) -> anyhow::Result<Gateway> {
        let vendor = party(&self.d, "em-vendor")?;
        Ok(Gateway::new(
            ProducerId {
                party: vendor.party.clone(),
                instance: format!("bench-{}", uuid::Uuid::now_v7().simple()),
            },
            vendor.signing.clone(),
            self.d.isa.clone(),
            self.d.directory.clone(),
            self.positions.clone(),
            GatewayConfig {
                batch_size: batch,
                linger,
                heartbeat: Duration::from_secs(1),
            },
        )
        .partitioned(PARTITIONS))
    }

    /// Background fix `n` of tag `n % TAGS`, 3-5 km from its zone, at `at` (Unix ms).
    fn background(&self, n: usize, at: i64) -> (String, pb::PositionFix) {
        let i = n % TAGS;
        let c = self.centres[i];
        (
            format!("tag-{i}"),
            gps_fix(n as u64, at, (c.0 + 0.03 + (n % 7) as f64 * 0.001, c.1), 5.0),
        )
    }

    /// Start instance `i` of `n`, preferring the partitions `p` with `p % n == i`.
    fn start(&self, i: usize, n: usize) -> anyhow::Result<Instance> {
        let prefer: Vec<String> = (0..PARTITIONS as usize)
            .filter(|p| p % n == i)
            .map(|p| p.to_string())
            .collect();
        let dir = |rel: &str| self.d.dir.path().join(rel).display().to_string();
        let text = format!(
            "keys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nnats_url = {:?}\ninstance = \"g{i}\"\nprefer_partitions = [{}]\nheartbeat_s = 0.5\nsnapshot_every_s = 5\n",
            dir("keys"),
            dir("policies"),
            dir(&format!("geofence-{i}")),
            self.url,
            prefer.join(", ")
        );
        let config = GeofenceConfig::load(&text, "bench", |_| None)?;
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(hru_geofence::service::run(config, stats.clone(), async {
            let _ = stopped.await;
        }));
        Ok(Instance {
            stats,
            stop: Some(stop),
            task,
        })
    }
}

/// One geofence instance running in this process.
struct Instance {
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), GeofenceError>>,
}

/// Partitions the instances hold between them.
fn held(instances: &[&Instance]) -> i64 {
    instances.iter().map(|i| i.stats.partitions_held.get()).sum()
}

/// Wait until `instances` are ready and hold every partition between them.
async fn settled(instances: &[&Instance]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(instances.iter().all(|i| i.stats.is_ready()) && held(instances) == i64::from(PARTITIONS)) {
        anyhow::ensure!(
            instances.iter().all(|i| !i.task.is_finished()),
            "a geofence stopped during setup"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the instances did not take the partitions in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn stop(instances: Vec<Instance>) {
    for mut i in instances {
        if let Some(s) = i.stop.take() {
            let _ = s.send(());
        }
        let _ = i.task.await;
    }
}

/// Publish `total` background fixes as fast as the gateway goes: fixes/s published.
async fn publish(bed: &Bed, gw: &mut Gateway, total: usize, t0: i64) -> anyhow::Result<f64> {
    let start = Instant::now();
    for n in 0..total {
        let (tag, fix) = bed.background(n, t0 + (n / TAGS) as i64 * 1_000);
        gw.push(&tag, false, fix);
        if gw.pending() >= 5_000 {
            gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
        }
    }
    gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// End to end with `n` instances: fixes/s from the first publish to the last fix evaluated.
async fn end_to_end(policies_dir: &Path, n: usize, total: usize) -> anyhow::Result<f64> {
    let bed = Bed::new(policies_dir).await?;
    let instances: Vec<Instance> = (0..n).map(|i| bed.start(i, n)).collect::<anyhow::Result<_>>()?;
    let all: Vec<&Instance> = instances.iter().collect();
    settled(&all).await?;
    let evaluated = || all.iter().map(|i| i.stats.fixes.get()).sum::<u64>();
    let base = evaluated();
    let mut gw = bed.gateway(5_000, Duration::from_secs(3600))?;
    let start = Instant::now();
    publish(&bed, &mut gw, total, jiff::Timestamp::now().as_millisecond()).await?;
    while evaluated() < base + total as u64 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "the geofence fell behind");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(all);
    stop(instances).await;
    Ok(rate)
}

/// What the handover measured.
struct Handover {
    /// From the instance's death until its partition is evaluated again, s.
    seconds: f64,
    /// Fix → breach latency of the probes into the dead instance's partition sent before it
    /// was taken over, ms (p50, p99, max), and how many.
    during: (f64, f64, f64, usize),
    /// The same for probes sent once it was taken over.
    after: (f64, f64, f64, usize),
    /// Probes with no breach within 10 s of the end.
    unanswered: usize,
}

/// Three instances; background fixes at 2,000/s; probes into partition 1's zones every 50 ms;
/// after 2 s the instance preferring partition 1 stops dead (its task aborted: connections
/// dropped, nothing released).
async fn handover(policies_dir: &Path) -> anyhow::Result<Handover> {
    let bed = Bed::new(policies_dir).await?;
    let mut instances: Vec<Instance> = (0..3).map(|i| bed.start(i, 3)).collect::<anyhow::Result<_>>()?;
    settled(&instances.iter().collect::<Vec<_>>()).await?;
    let nats = async_nats::connect(&bed.url).await?;
    let mut breaches = nats
        .subscribe(hru_broker::Filter::producer_events_of_type(&"geofence".parse()?, EventType::TagBreach).to_string())
        .await?;
    let probes: Vec<usize> = (TAGS..TAGS + PROBES)
        .filter(|i| hru_broker::stream::partition_of(&format!("tag-{i}"), PARTITIONS) == 1)
        .collect();
    let mut gw = bed.gateway(5_000, Duration::from_millis(10))?;
    let rate = 2_000usize;
    let seconds = 12u64;
    let start = Instant::now();
    let mut killed: Option<Instant> = None;
    let mut taken: Option<Instant> = None;
    let mut sent_at: HashMap<usize, Instant> = HashMap::new();
    let (mut during, mut after) = (Vec::new(), Vec::new());
    let mut next_probe = probes.iter();
    let mut n = 0usize;
    let receive = |m: async_nats::Message,
                   sent_at: &mut HashMap<usize, Instant>,
                   taken: Option<Instant>,
                   during: &mut Vec<f64>,
                   after: &mut Vec<f64>| {
        if let Ok(h) = hru_envelope::decode_header(&m.payload)
            && let Some(i) = h.case_id.and_then(|c| bed.tag_of_case.get(&c))
            && let Some(t) = sent_at.remove(i)
        {
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if taken.is_some_and(|k| t >= k) {
                after.push(ms)
            } else {
                during.push(ms)
            }
        }
    };
    for ms in 0..seconds * 1000 {
        let at = jiff::Timestamp::now().as_millisecond();
        let due = (start.elapsed().as_secs_f64() * rate as f64) as usize;
        while n < due {
            let (tag, fix) = bed.background(n, at);
            gw.push(&tag, false, fix);
            n += 1;
        }
        if ms == 2_000 {
            instances[1].task.abort();
            killed = Some(Instant::now());
        }
        if killed.is_some() && taken.is_none() && held(&[&instances[0], &instances[2]]) == i64::from(PARTITIONS) {
            taken = Some(Instant::now());
        }
        if ms % 50 == 25
            && ms >= 1_000
            && let Some(&p) = next_probe.next()
        {
            let c = bed.centres[p];
            gw.push(&format!("tag-{p}"), false, gps_fix(1, at, c, 5.0));
            sent_at.insert(p, Instant::now());
        }
        if gw.due(Instant::now()) {
            gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
        }
        while let Ok(Some(m)) = tokio::time::timeout(Duration::ZERO, breaches.next()).await {
            receive(m, &mut sent_at, taken, &mut during, &mut after);
        }
        tokio::time::sleep_until((start + Duration::from_millis(ms + 1)).into()).await;
    }
    gw.flush(jiff::Timestamp::now().as_millisecond()).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sent_at.is_empty() && Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), breaches.next()).await {
            receive(m, &mut sent_at, taken, &mut during, &mut after);
        }
    }
    let killed = killed.ok_or_else(|| anyhow::anyhow!("the run ended before the kill"))?;
    let seconds = taken.map_or(f64::NAN, |t| (t - killed).as_secs_f64());
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
            v.len(),
        )
    };
    let out = Handover {
        seconds,
        during: summary(&mut during),
        after: summary(&mut after),
        unanswered: sent_at.len(),
    };
    let dead = instances.remove(1);
    let _ = dead.task.await;
    stop(instances).await;
    Ok(out)
}

/// `hru bench geofence-partitions`.
pub async fn geofence_partitions(policies_dir: &Path, fixes: usize, format: Format) -> anyhow::Result<ExitCode> {
    // The raw building block: the gateway sealing and publishing into the divided stream,
    // nothing consuming it.
    let raw = {
        let bed = Bed::new(policies_dir).await?;
        let mut gw = bed.gateway(5_000, Duration::from_secs(3600))?;
        publish(&bed, &mut gw, fixes, jiff::Timestamp::now().as_millisecond()).await?
    };
    let mut rates = Vec::new();
    for n in 1..=3 {
        rates.push((n, end_to_end(policies_dir, n, fixes).await?));
    }
    let h = handover(policies_dir).await?;
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "gateway_publish_fixes_per_s": raw,
                "end_to_end": rates.iter().map(|(n, r)| json!({"instances": n, "fixes_per_s": r, "ratio_to_publish": r / raw})).collect::<Vec<_>>(),
                "handover_s": h.seconds,
                "during_handover": {"p50_ms": h.during.0, "p99_ms": h.during.1, "max_ms": h.during.2, "probes": h.during.3},
                "after_handover": {"p50_ms": h.after.0, "p99_ms": h.after.1, "max_ms": h.after.2, "probes": h.after.3},
                "unanswered": h.unanswered,
            })
        ),
        Format::Human => {
            println!("gateway publish {raw:>10.0} fixes/s into {PARTITIONS} partitions (nothing consuming)");
            for (n, r) in &rates {
                println!(
                    "{n} instance{}     {r:>10.0} fixes/s end to end ({:.2} × publish)",
                    if *n == 1 { " " } else { "s" },
                    r / raw
                );
            }
            println!(
                "handover        {:>10.1} s from an instance's death until its partition is evaluated again",
                h.seconds
            );
            println!(
                "fix → breach    during the handover p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} probes); after it p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} probes); {} unanswered",
                h.during.0,
                h.during.1,
                h.during.2,
                h.during.3,
                h.after.0,
                h.after.1,
                h.after.2,
                h.after.3,
                h.unanswered
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
