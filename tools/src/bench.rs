//! `hru bench`: our rates beside the raw building blocks, measured in the same run.

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cast::Cast;
use ed25519_dalek::Signer as _;
use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_envelope::{KeyRing, Sealer, StaticAudiences, verify};
use hru_reader::{Incoming, ReadPath};
use serde_json::json;

use crate::Format;

/// Run `op` repeatedly for about `seconds`; returns operations per second.
fn rate(seconds: f64, mut op: impl FnMut(u64)) -> f64 {
    for i in 0..64 {
        op(i);
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            op(n);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A 1 KiB event: two 512-byte sections.
fn sections() -> Vec<PlainSection> {
    vec![
        PlainSection {
            name: "core",
            bytes: vec![0x5a; 512],
        },
        PlainSection {
            name: "narrative",
            bytes: vec![0xa5; 512],
        },
    ]
}

/// `hru bench seal`: seal and open rates of a 1 KiB, two-section event beside raw ed25519.
pub fn seal(seconds: f64, format: Format) -> anyhow::Result<ExitCode> {
    let cast = Cast::new()?;
    let four = [&cast.police, &cast.probation, &cast.cwp, &cast.mersey_care].map(|p| p.party.clone());
    // A retention class, as the agreement gives every event type: epochs per class and month.
    const CLASS: &str = "6y";
    let policy = StaticAudiences::new("bench", 1)
        .with_retention(CLASS)
        .share(EventType::ReferralReceived, "core", &four)
        .share(EventType::ReferralReceived, "narrative", &four);
    let producer = ProducerId {
        party: cast.police.party.clone(),
        instance: "bench".into(),
    };
    let mut sealer = Sealer::new(producer, cast.police.signing.clone());
    let now = jiff::Timestamp::now().as_millisecond();
    let case = CaseId::random();
    // A userspace CSPRNG seeded from the OS, as the services use: no syscall per nonce.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    // Every member publishes period keys, as a deployment's holders do: grants go to them.
    let month = hru_envelope::month_at(now).ok_or_else(|| anyhow::anyhow!("the clock is out of range"))?;
    let mut directory = cast.directory.clone();
    let mut probation_periods = None;
    for member in [&cast.police, &cast.probation, &cast.cwp, &cast.mersey_care] {
        let mut periods = hru_envelope::PeriodKeys::new(member.party.clone());
        periods.start(CLASS, &month, &mut rng).map_err(anyhow::Error::msg)?;
        directory
            .add_period_keys(&member.party, periods.publication(&month, hru_envelope::PUBLISH_MONTHS))
            .map_err(anyhow::Error::msg)?;
        if member.party == cast.probation.party {
            probation_periods = Some(periods);
        }
    }

    let digest = [7u8; 32];
    let signature = cast.police.signing.sign(&digest);
    let public = cast.police.signing.verifying_key();
    let raw_sign = rate(seconds, |_| {
        black_box(cast.police.signing.sign(black_box(&digest)));
    });
    let raw_verify = rate(seconds, |_| {
        black_box(public.verify_strict(black_box(&digest), &signature)).ok();
    });

    // Warm the epochs, then keep a pool of sealed events for the open measurement.
    let mut ring = KeyRing::new(&cast.probation);
    if let Some(p) = &probation_periods {
        ring.set_periods(p, &hru_envelope::published_through(now));
    }
    let mut pool = Vec::new();
    for _ in 0..256 {
        for e in sealer.seal_event(
            case,
            EventType::ReferralReceived,
            sections(),
            now,
            now,
            &policy,
            &directory,
            &mut rng,
        )? {
            let v = verify(&e.bytes, &cast.directory)?;
            if v.header.event_type == EventType::KeyGranted {
                anyhow::ensure!(
                    ring.ingest_grant(&v)? == hru_envelope::GrantOutcome::Opened,
                    "probation opens its grant with its period key"
                );
            } else {
                pool.push(e.bytes);
            }
        }
    }
    let mut failed = None;
    let seal_rate = rate(seconds, |_| {
        match sealer.seal_event(
            case,
            EventType::ReferralReceived,
            sections(),
            now,
            now,
            &policy,
            &directory,
            &mut rng,
        ) {
            Ok(e) => {
                black_box(e);
            }
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let mut opened_ok = true;
    let open_rate = rate(seconds, |i| {
        let bytes = &pool[i as usize % pool.len()];
        match verify(bytes, &cast.directory) {
            Ok(v) => opened_ok &= ring.open(&v).sections.iter().all(|s| s.plaintext.is_ok()),
            Err(_) => opened_ok = false,
        }
    });
    anyhow::ensure!(opened_ok, "an event of the pool did not open");

    let seal_ratio = seal_rate / raw_sign;
    let open_ratio = open_rate / raw_verify;
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "bench": "seal",
                "event_bytes": 1024, "sections": 2, "audience_size": 4,
                "raw_sign_per_s": raw_sign.round(), "seal_per_s": seal_rate.round(), "seal_ratio": seal_ratio,
                "raw_verify_strict_per_s": raw_verify.round(), "open_per_s": open_rate.round(), "open_ratio": open_ratio,
            })
        ),
        Format::Human => {
            println!("hru bench seal — 1 KiB event, 2 sections, 4-party audiences, one core");
            println!("  raw ed25519 sign           {raw_sign:>10.0} /s");
            println!("  seal (encrypt + sign)      {seal_rate:>10.0} /s   {seal_ratio:.2} × raw sign");
            println!("  raw ed25519 verify_strict  {raw_verify:>10.0} /s");
            println!("  open (verify + decrypt)    {open_rate:>10.0} /s   {open_ratio:.2} × raw verify_strict");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A local server setup the log benchmarks run against.
enum Setup {
    Single(Box<hru_local_nats::NatsServer>),
    Cluster(hru_local_nats::NatsCluster),
}

impl Setup {
    fn start(nodes: usize, sync_always: bool) -> anyhow::Result<Self> {
        Ok(if nodes == 1 {
            Setup::Single(Box::new(
                hru_local_nats::NatsServer::builder().sync_always(sync_always).start()?,
            ))
        } else {
            Setup::Cluster(hru_local_nats::NatsCluster::start_with(nodes, sync_always)?)
        })
    }

    fn url(&self) -> String {
        match self {
            Setup::Single(s) => s.url(),
            Setup::Cluster(c) => c.urls().join(","),
        }
    }
}

/// A local setup with the event log on it and a producer writing to it.
struct BenchLog {
    setup: Setup,
    log: hru_log::EventLog,
    atomic: bool,
    _store: tempfile::TempDir,
    producer: hru_log::Producer,
}

impl BenchLog {
    async fn start(cast: &Cast, nodes: usize, sync_always: bool) -> anyhow::Result<Self> {
        let setup = Setup::start(nodes, sync_always)?;
        let log = hru_log::EventLog::open(&setup.url(), None, nodes).await?;
        let atomic = log.appender().atomic_batches();
        let store = tempfile::tempdir()?;
        let producer_id = ProducerId {
            party: cast.police.party.clone(),
            instance: "bench".into(),
        };
        let producer = hru_log::Producer::open(
            &store.path().join("producer"),
            producer_id,
            cast.police.signing.clone(),
            &log,
            &cast.directory,
        )
        .await?;
        Ok(Self {
            setup,
            log,
            atomic,
            _store: store,
            producer,
        })
    }
}

/// The setups of DESIGN §8: one node and a 3-node R3 cluster, synced always and by default.
const SETUPS: [(usize, bool); 4] = [(1, true), (1, false), (3, true), (3, false)];

/// A real referral core of about 64 bytes.
fn referral_core() -> Vec<u8> {
    use prost::Message as _;
    hru_wire::v1::ReferralCore {
        subject_ref: vec![0x42; 32],
        behaviours: vec![hru_wire::v1::Behaviour::Stalking as i32],
        area: "Cheshire West and Chester".into(),
        received_at_ms: 1_795_000_000_000,
        out_of_hours: true,
        crime_reference: String::new(),
    }
    .encode_to_vec()
}

/// A ~300-byte envelope: one referral core.
fn small_event(case: CaseId) -> hru_log::EventToSeal {
    hru_log::EventToSeal {
        case_id: case,
        event_type: EventType::ReferralReceived,
        sections: vec![PlainSection {
            name: "core",
            bytes: referral_core(),
        }],
        occurred_at_ms: jiff::Timestamp::now().as_millisecond(),
        event_id: None,
    }
}

fn one_party_policy(cast: &Cast) -> StaticAudiences {
    StaticAudiences::new("bench", 1).share(
        EventType::ReferralReceived,
        "core",
        std::slice::from_ref(&cast.police.party),
    )
}

/// Publish pre-built envelopes pipelined (a window of acknowledgements in flight), signing each
/// first when `sign` is given; returns messages per second.
async fn raw_pipeline(
    js: &async_nats::jetstream::Context,
    envelopes: &[hru_envelope::SealedEnvelope],
    sign: Option<&ed25519_dalek::SigningKey>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut window = std::collections::VecDeque::with_capacity(WINDOW);
    for env in envelopes {
        if let Some(key) = sign {
            black_box(key.sign(env.digest.0.as_slice()));
        }
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(&env.bytes))
            .message_id(env.header.event_id.to_string());
        window.push_back(js.send_publish(env.subject.to_string(), publish).await?);
        if window.len() == WINDOW
            && let Some(ack) = window.pop_front()
        {
            ack.await?;
        }
    }
    for ack in window {
        ack.await?;
    }
    Ok(envelopes.len() as f64 / start.elapsed().as_secs_f64())
}

/// Sign and publish pre-built envelopes in atomic batches of `group` (as the producer sends a
/// group: chunks of at most 500), one acknowledgement per batch; returns messages per second.
async fn raw_atomic_pipeline(
    client: &async_nats::Client,
    envelopes: &[hru_envelope::SealedEnvelope],
    group: usize,
    key: &ed25519_dalek::SigningKey,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    for (n, batch) in envelopes.chunks(group.clamp(1, 500)).enumerate() {
        let messages = batch.iter().map(|env| {
            black_box(key.sign(env.digest.0.as_slice()));
            (
                env.subject.clone(),
                env.header.event_id.to_string(),
                bytes::Bytes::copy_from_slice(&env.bytes),
            )
        });
        hru_log::append::atomic_publish(client, &format!("raw{n}"), messages, batch.len()).await?;
    }
    Ok(envelopes.len() as f64 / start.elapsed().as_secs_f64())
}

/// Acknowledgements in flight for the raw pipelines.
const WINDOW: usize = 4096;

/// Seal `n` small events offline (for the raw pipelines: the same bytes, no work of ours).
fn presealed(cast: &Cast, instance: &str, n: usize) -> anyhow::Result<Vec<hru_envelope::SealedEnvelope>> {
    let policy = one_party_policy(cast);
    let mut sealer = Sealer::new(
        ProducerId {
            party: cast.police.party.clone(),
            instance: instance.into(),
        },
        cast.police.signing.clone(),
    );
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let case = CaseId::random();
    let now = jiff::Timestamp::now().as_millisecond();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = small_event(case);
        out.extend(sealer.seal_event(
            e.case_id,
            e.event_type,
            e.sections,
            e.occurred_at_ms,
            now,
            &policy,
            &cast.directory,
            &mut rng,
        )?);
    }
    Ok(out)
}

/// `hru bench ingest`: sealed events appended through the producer (outbox, group commit) per
/// second, beside raw pipelined publish and raw sign-then-publish of the same bytes.
pub async fn ingest(events: usize, group: usize, format: Format) -> anyhow::Result<ExitCode> {
    let cast = Cast::new()?;
    let policy = one_party_policy(&cast);
    let raw_sign = {
        let key = &cast.police.signing;
        rate(1.0, |i| {
            black_box(key.sign(&i.to_be_bytes()));
        })
    };
    if format == Format::Human {
        println!("hru bench ingest — {events} events of ~300 bytes per measurement; group commit of {group}");
        println!("  raw ed25519 sign: {raw_sign:.0}/s (one core)");
        println!(
            "  {:<24} {:>12} {:>12} {:>14} {:>12} {:>16} {:>8}",
            "setup", "ours/s", "mode", "raw pub/s", "raw sign+pub/s", "raw, same mode/s", "ratio"
        );
        println!("  (ratio: ours against the same bytes signed and published in the same mode, under the same sync)");
    }
    for (nodes, sync_always) in SETUPS {
        let BenchLog {
            setup,
            log,
            atomic,
            _store,
            mut producer,
        } = BenchLog::start(&cast, nodes, sync_always).await?;
        // Seal the next group on a blocking thread while the current one is published.
        let policy = std::sync::Arc::new(policy.clone());
        let directory = std::sync::Arc::new(cast.directory.clone());
        let case = CaseId::random();
        let seal_next = |mut ahead: hru_log::GroupSealer, n: usize| {
            let (policy, directory) = (policy.clone(), directory.clone());
            tokio::task::spawn_blocking(move || {
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
                let now = jiff::Timestamp::now().as_millisecond();
                let group = ahead.seal(
                    (0..n).map(|_| small_event(case)).collect(),
                    now,
                    &*policy,
                    &directory,
                    &mut rng,
                );
                (ahead, group)
            })
        };
        let start = Instant::now();
        let mut appended = 0;
        let (mut ahead, first) = seal_next(producer.ahead(), group.min(events)).await?;
        let mut current = first?;
        let mut sealed = group.min(events);
        loop {
            let next = (sealed < events).then(|| {
                let n = group.min(events - sealed);
                sealed += n;
                seal_next(ahead.clone(), n)
            });
            appended += producer.publish_group(&log, &current, atomic).await?.len();
            let Some(next) = next else { break };
            let (a, g) = next.await?;
            ahead = a;
            current = g?;
        }
        let ours = appended as f64 / start.elapsed().as_secs_f64();

        let client = hru_log::connect(&setup.url(), None).await?;
        let js = async_nats::jetstream::new(client.clone());
        let raw_publish = raw_pipeline(&js, &presealed(&cast, "raw-publish", events)?, None).await?;
        let raw_signed = raw_pipeline(
            &js,
            &presealed(&cast, "raw-signed", events)?,
            Some(&cast.police.signing),
        )
        .await?;
        let name = format!(
            "{} node{}, sync {}",
            nodes,
            if nodes == 1 { "" } else { "s R3" },
            if sync_always { "always" } else { "default" }
        );
        let mode = if atomic { "atomic batch" } else { "pipelined" };
        // The honest baseline for our mode: the same bytes signed and sent the same way.
        let raw_same_mode = if atomic {
            raw_atomic_pipeline(
                &client,
                &presealed(&cast, "raw-atomic", events)?,
                group,
                &cast.police.signing,
            )
            .await?
        } else {
            raw_signed
        };
        match format {
            Format::Human => println!(
                "  {name:<24} {ours:>12.0} {mode:>12} {raw_publish:>14.0} {raw_signed:>12.0} {raw_same_mode:>16.0} {:>8.2}",
                ours / raw_same_mode
            ),
            Format::Json => println!(
                "{}",
                json!({"bench": "ingest", "setup": name, "nodes": nodes, "sync_always": sync_always, "mode": mode,
                       "ours_per_s": ours.round(), "raw_publish_per_s": raw_publish.round(),
                       "raw_sign_publish_per_s": raw_signed.round(), "raw_sign_per_s": raw_sign.round(),
                       "raw_sign_publish_same_mode_per_s": raw_same_mode.round(),
                       "ratio_to_raw_same_mode": ours / raw_same_mode,
                       "ratio_to_raw_sign_publish": ours / raw_signed})
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hru bench replay`: replay + verify + open events/s beside the raw read (the reader's
/// batched direct gets, themselves compared with an ordered consumer) and raw signature
/// verification, for each local server setup.
pub async fn replay(events: usize, format: Format) -> anyhow::Result<ExitCode> {
    let cast = Cast::new()?;
    let policy = one_party_policy(&cast);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Raw signature building blocks (CPU only), measured once in this run.
    let key = cast.police.signing.verifying_key();
    let sigs: Vec<([u8; 32], ed25519_dalek::Signature)> = (0u32..4096)
        .map(|i| {
            let m: [u8; 32] = sha256_of(&i.to_be_bytes());
            (m, cast.police.signing.sign(&m))
        })
        .collect();
    let raw_verify = rate(1.0, |i| {
        let (m, s) = &sigs[i as usize % sigs.len()];
        black_box(key.verify_strict(m, s)).ok();
    });
    let raw_batch = {
        let messages: Vec<&[u8]> = sigs.iter().take(64).map(|(m, _)| m.as_slice()).collect();
        let signatures: Vec<ed25519_dalek::Signature> = sigs.iter().take(64).map(|(_, s)| *s).collect();
        let keys = vec![key; messages.len()];
        64.0 * rate(1.0, |_| {
            black_box(ed25519_dalek::verify_batch(&messages, &signatures, &keys)).ok();
        })
    };
    if format == Format::Human {
        println!("hru bench replay — {events} events (~300 bytes) per setup; {threads} threads verify and open");
        println!(
            "  raw ed25519 verify_strict {raw_verify:.0}/s, raw batch verify {raw_batch:.0}/s (one core, batches of 64)"
        );
        println!(
            "  {:<24} {:>14} {:>14} {:>10} {:>18}",
            "setup", "raw read/s", "ours/s", "× read", "× strict × cores"
        );
    }
    let mut rebuild_line = None;
    let mut view_lines = Vec::new();
    let mut read_lines = Vec::new();
    for (nodes, sync_always) in SETUPS {
        let BenchLog {
            setup,
            log,
            atomic,
            _store,
            mut producer,
        } = BenchLog::start(&cast, nodes, sync_always).await?;
        let setup_url = setup.url();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let case = CaseId::random();
        let mut appended = 0;
        while appended < events {
            let batch: Vec<_> = (0..500.min(events - appended)).map(|_| small_event(case)).collect();
            appended += batch.len();
            let now = jiff::Timestamp::now().as_millisecond();
            producer
                .append_many(&log, batch, now, &policy, &cast.directory, &mut rng, atomic)
                .await?;
        }

        let start = Instant::now();
        let entries: Vec<hru_log::LogEntry> = log.reader().replay(1, &[]).await?.try_collect().await?;
        let raw_read = entries.len() as f64 / start.elapsed().as_secs_f64();
        let consumer_read = ordered_consumer_rate(&log, entries.len()).await?;
        read_lines.push((
            format!("{nodes} node{}", if nodes == 1 { "" } else { "s" }),
            sync_always,
            raw_read,
            consumer_read,
        ));
        drop(entries);

        // Ours: read; key grants first (few, in log order); then verify and open on every core.
        let start = Instant::now();
        let entries: Vec<hru_log::LogEntry> = log.reader().replay(1, &[]).await?.try_collect().await?;
        let mut ring = KeyRing::new(&cast.police);
        for e in &entries {
            if hru_envelope::decode_header(&e.payload).is_ok_and(|h| h.event_type == EventType::KeyGranted) {
                ring.ingest_grant(&verify(&e.payload, &cast.directory)?)?;
            }
        }
        let chunk = entries.len().div_ceil(threads).max(1);
        let opened: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = entries
                .chunks(chunk)
                .map(|part| {
                    let (cast, ring) = (&cast, &ring);
                    scope.spawn(move || {
                        part.iter()
                            .filter_map(|e| verify(&e.payload, &cast.directory).ok())
                            .filter(|v| v.header.event_type != EventType::KeyGranted)
                            .filter(|v| ring.open(v).sections.iter().all(|s| s.plaintext.is_ok()))
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        let bare = entries.len() as f64 / start.elapsed().as_secs_f64();
        anyhow::ensure!(
            entries.len() - opened <= 2,
            "only {opened} of {} events opened",
            entries.len()
        );
        drop(entries);

        // Ours through the read path (DESIGN §8a): every check, then open.
        let start = Instant::now();
        let entries: Vec<hru_log::LogEntry> = log.reader().replay(1, &[]).await?.try_collect().await?;
        let mut read = ReadPath::new(
            cast.directory.clone(),
            std::sync::Arc::new(one_party_policy(&cast)),
            KeyRing::new(&cast.police),
        );
        for e in &entries {
            if hru_envelope::decode_header(&e.payload).is_ok_and(|h| h.event_type == EventType::KeyGranted) {
                read.read(&incoming(e)).map_err(|r| anyhow::anyhow!("{r}"))?;
            }
        }
        let opened: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = entries
                .chunks(chunk)
                .map(|part| {
                    let read = &read;
                    scope.spawn(move || {
                        part.iter()
                            .filter_map(|e| read.check(&incoming(e)).ok())
                            .filter(|v| v.header.event_type != EventType::KeyGranted)
                            .filter(|v| read.open(v).sections.iter().all(|s| s.plaintext.is_ok()))
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        let ours = entries.len() as f64 / start.elapsed().as_secs_f64();
        anyhow::ensure!(
            entries.len() - opened <= 2,
            "only {opened} of {} events passed the read path and opened",
            entries.len()
        );
        let name = format!(
            "{} node{}, sync {}",
            nodes,
            if nodes == 1 { "" } else { "s R3" },
            if sync_always { "always" } else { "default" }
        );
        let per_core = ours / (raw_verify * threads as f64);
        if nodes == 1 && sync_always {
            rebuild_line = Some(rebuild_rate(&cast, &entries)?);
        }
        if nodes == 1 {
            let (sourced, view_read) = view_rates(&log, &setup_url, &cast, entries.len()).await?;
            view_lines.push((name.clone(), sourced, view_read, raw_read));
        }
        match format {
            Format::Human => {
                println!(
                    "  {name:<24} {raw_read:>14.0} {ours:>14.0} {:>10.2} {per_core:>18.2}   (verify + open without the read path's checks {bare:.0}/s; checks cost {:.1} %)",
                    ours / raw_read,
                    (1.0 - ours / bare) * 100.0
                )
            }
            Format::Json => println!(
                "{}",
                json!({"bench": "replay", "setup": name, "events": entries.len(), "threads": threads,
                       "raw_read_per_s": raw_read.round(), "raw_verify_strict_per_s": raw_verify.round(),
                       "raw_batch_verify_per_s": raw_batch.round(), "ours_per_s": ours.round(),
                       "verify_open_without_checks_per_s": bare.round()})
            ),
        }
    }
    if let Some((plain, checked, folded)) = rebuild_line {
        match format {
            Format::Human => println!(
                "  one thread, in memory: verify + open {plain:.0}/s; through the read path (every check + open) {checked:.0}/s, {:.3} × verify + open, {:.2} × raw verify_strict; rebuild into sled (police case board) {folded:.0}/s, {:.2} × the read path alone",
                checked / plain,
                checked / raw_verify,
                folded / checked
            ),
            Format::Json => println!(
                "{}",
                json!({"bench": "rebuild", "verify_open_one_thread_per_s": plain.round(),
                       "read_path_one_thread_per_s": checked.round(), "raw_verify_strict_per_s": raw_verify.round(),
                       "rebuild_per_s": folded.round()})
            ),
        }
    }
    for (nodes, sync_always, read, consumer) in read_lines {
        let sync = if sync_always { "always" } else { "default" };
        match format {
            Format::Human => println!(
                "  {nodes}, {sync}: the reader's batched direct gets {read:.0}/s, {:.2} × an ordered consumer reading the same stream ({consumer:.0}/s)",
                read / consumer
            ),
            Format::Json => println!(
                "{}",
                json!({"bench": "read", "setup": format!("{nodes}, {sync}"), "direct_get_per_s": read.round(), "ordered_consumer_per_s": consumer.round()})
            ),
        }
    }
    for (name, sourced, view_read, raw_read) in view_lines {
        match format {
            Format::Human => println!(
                "  {name}: a party's view sourced {sourced:.0}/s by the server; read from the view (sequences mapped to HRU_EVENTS) {view_read:.0}/s, {:.2} × raw read",
                view_read / raw_read
            ),
            Format::Json => println!(
                "{}",
                json!({"bench": "view", "setup": name, "sourced_per_s": sourced.round(), "view_read_per_s": view_read.round(), "raw_read_per_s": raw_read.round()})
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Messages per second an ordered pull consumer (the server's own streaming read, which no
/// party may create) delivers from the whole of `HRU_EVENTS`: the building block the reader's
/// direct-get pages are compared with.
async fn ordered_consumer_rate(log: &hru_log::EventLog, events: usize) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let js = async_nats::jetstream::new(log.client());
    let stream = js.get_stream(hru_broker::EVENTS_STREAM).await?;
    let start = Instant::now();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?.take(events);
    let mut n = 0usize;
    while let Some(m) = messages.next().await {
        black_box(m?.payload.len());
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A view of the whole log for police, as the provisioner makes one: (messages sourced by the
/// server per second from its creation until it holds all `events`, view read per second).
async fn view_rates(log: &hru_log::EventLog, url: &str, cast: &Cast, events: usize) -> anyhow::Result<(f64, f64)> {
    use async_nats::jetstream::stream;
    let js = async_nats::jetstream::new(log.client());
    let name = hru_broker::view_stream(&cast.police.party);
    let start = Instant::now();
    let mut view = js
        .create_stream(stream::Config {
            name,
            storage: stream::StorageType::File,
            allow_direct: true,
            sources: Some(vec![stream::Source {
                name: hru_broker::EVENTS_STREAM.to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        })
        .await?;
    while (view.info().await?.state.messages as usize) < events {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "the view is not filling");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let sourced = events as f64 / start.elapsed().as_secs_f64();
    let reader = hru_log::PartyView::open(url, None, &cast.police.party).await?;
    let start = Instant::now();
    let read: Vec<hru_log::LogEntry> = reader.reader().replay(1, &[]).await?.try_collect().await?;
    let view_read = read.len() as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(read.len() == events, "the view held {} of {events}", read.len());
    Ok((sourced, view_read))
}

/// One thread: (replay + verify + open)/s and (the same + fold into the police case board)/s.
/// One thread, entries in memory: (verify + open)/s, (read path: every check + open)/s, and
/// (the read path + fold into the police case board)/s.
fn rebuild_rate(cast: &Cast, entries: &[hru_log::LogEntry]) -> anyhow::Result<(f64, f64, f64)> {
    let start = Instant::now();
    let mut ring = KeyRing::new(&cast.police);
    for e in entries {
        let v = verify(&e.payload, &cast.directory)?;
        if v.header.event_type == EventType::KeyGranted {
            ring.ingest_grant(&v)?;
        } else {
            black_box(ring.open(&v));
        }
    }
    let plain = entries.len() as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut read = ReadPath::new(
        cast.directory.clone(),
        std::sync::Arc::new(one_party_policy(cast)),
        KeyRing::new(&cast.police),
    );
    for e in entries {
        black_box(read.read(&incoming(e)).map_err(|r| anyhow::anyhow!("{r}"))?);
    }
    let checked = entries.len() as f64 / start.elapsed().as_secs_f64();
    let dir = tempfile::tempdir()?;
    let projections: Vec<Box<dyn hru_projection::Projection>> = vec![Box::new(hru_projection::CaseBoard)];
    let read = ReadPath::new(
        cast.directory.clone(),
        std::sync::Arc::new(one_party_policy(cast)),
        KeyRing::new(&cast.police),
    );
    let mut projector = hru_projection::Projector::new(hru_projection::Store::open(dir.path())?, projections, read)?;
    let start = Instant::now();
    for chunk in entries.chunks(256) {
        let batch: Vec<hru_projection::LogItem<'_>> = chunk
            .iter()
            .map(|e| (e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored))
            .collect();
        let refused = projector.feed(&batch)?;
        anyhow::ensure!(refused.is_empty(), "the read path refused {refused:?}");
    }
    projector.store.flush()?;
    let folded = entries.len() as f64 / start.elapsed().as_secs_f64();
    Ok((plain, checked, folded))
}

/// A log entry as the read path takes it.
fn incoming(e: &hru_log::LogEntry) -> Incoming<'_> {
    Incoming::logged(e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored)
}

fn sha256_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// `hru bench verify`: envelopes audited per second (signatures, chains, subjects, audiences;
/// one core, no secret key) beside raw verify_strict and raw batch verification.
pub fn verify_bench(events: usize, format: Format) -> anyhow::Result<ExitCode> {
    let cast = Cast::new()?;
    let text = "[agreement]\nid = \"bench\"\nversion = 1\neffective_from = \"2026-01-01\"\n\n[[legal_basis]]\nid = \"b\"\ntext = \"basis\"\n\n[[clause]]\nid = \"1\"\ntext = \"c\"\nbases = [\"b\"]\n\n[[party]]\nid = \"police-hru\"\ncontroller = \"p\"\nrole = \"police\"\n\n[[produce]]\nparty = \"police-hru\"\nevents = [\"ReferralReceived\"]\n\n[[share]]\nevents = [\"ReferralReceived\"]\nsections = [\"core\"]\nto = [\"police-hru\"]\npurpose = \"p\"\nclause = \"1\"\n";
    let isa = hru_policy::CompiledIsa::compile(text, "bench.toml", Some(&cast.directory))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut set = hru_policy::PolicySet::default();
    set.insert(isa.clone());
    let mut sealer = Sealer::new(
        ProducerId {
            party: cast.police.party.clone(),
            instance: "bench".into(),
        },
        cast.police.signing.clone(),
    );
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let now = jiff::Timestamp::now().as_millisecond();
    let case = CaseId::random();
    let mut log = Vec::with_capacity(events + 1);
    while log.len() < events {
        let e = small_event(case);
        log.extend(sealer.seal_event(
            e.case_id,
            e.event_type,
            e.sections,
            now,
            now,
            &isa,
            &cast.directory,
            &mut rng,
        )?);
    }
    let start = Instant::now();
    let mut auditor = hru_audit::Auditor::new(&cast.directory, &set);
    for (i, e) in log.iter().enumerate() {
        auditor.observe(
            i as u64 + 1,
            e.subject.as_str(),
            &e.bytes,
            hru_reader::StoredAt::Unknown,
        );
    }
    let report = auditor.finish();
    let ours = log.len() as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.findings.is_empty(),
        "a clean log has findings: {:?}",
        report.findings.first()
    );
    let key = cast.police.signing.verifying_key();
    let sigs: Vec<([u8; 32], ed25519_dalek::Signature)> = log
        .iter()
        .take(4096)
        .map(|e| (e.digest.0, cast.police.signing.sign(&e.digest.0)))
        .collect();
    let raw_verify = rate(1.0, |i| {
        let (m, s) = &sigs[i as usize % sigs.len()];
        black_box(key.verify_strict(m, s)).ok();
    });
    let messages: Vec<&[u8]> = sigs.iter().take(64).map(|(m, _)| m.as_slice()).collect();
    let signatures: Vec<ed25519_dalek::Signature> = sigs.iter().take(64).map(|(_, s)| *s).collect();
    let keys = vec![key; messages.len()];
    let raw_batch = 64.0
        * rate(1.0, |_| {
            black_box(ed25519_dalek::verify_batch(&messages, &signatures, &keys)).ok();
        });
    match format {
        Format::Human => {
            println!(
                "hru bench verify — {} envelopes (~300 bytes), one core, no secret key",
                log.len()
            );
            println!("  raw ed25519 verify_strict  {raw_verify:>10.0} /s");
            println!("  raw ed25519 batch verify   {raw_batch:>10.0} /s (batches of 64)");
            println!(
                "  audit verify (ours)        {ours:>10.0} /s   {:.2} × raw verify_strict, {:.2} × raw batch",
                ours / raw_verify,
                ours / raw_batch
            );
        }
        Format::Json => println!(
            "{}",
            json!({"bench": "verify", "events": log.len(), "ours_per_s": ours.round(), "raw_verify_strict_per_s": raw_verify.round(), "raw_batch_verify_per_s": raw_batch.round()})
        ),
    }
    Ok(ExitCode::SUCCESS)
}
