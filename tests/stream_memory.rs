//! A node's memory while it serves many streams: 200 `Subscribe` streams from sequence 1 over a
//! 100,000-event log, each read only to its first event, on a real node and nats-server. Long
//! (minutes; release build): `cargo test --release -p hru-tests --test stream_memory -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_envelope::Directory;
use hru_policy::CompiledIsa;
use hru_tests::{CHESHIRE_PARTIES, World, free_port, metric, request};
use hru_wire::v1 as pb;
use pb::subscription_service_client::SubscriptionServiceClient;
use prost::Message as _;

const CASES: usize = 1_000;
const STREAMS: usize = 200;

/// Events in the log: 100,000, or `HRU_STREAM_MEMORY_EVENTS` (a multiple of 500).
fn events() -> usize {
    std::env::var("HRU_STREAM_MEMORY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// (resident, peak resident) memory of a process in KiB, from /proc.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
#[ignore = "long: 100,000 events and 200 streams; run with --ignored"]
fn two_hundred_streams_over_a_100k_event_log_stay_bounded() {
    let w = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    w.provision();
    let rt = hru_tests::runtime();
    let read = |rel: &str| std::fs::read_to_string(w.dir.path().join(rel)).unwrap();
    let directory = Directory::from_toml(&read("policies/directory.toml"), "directory.toml").unwrap();
    let isa = CompiledIsa::compile(
        &read("policies/cheshire-hru.toml"),
        "cheshire-hru.toml",
        Some(&directory),
    )
    .unwrap();
    let police = w.secrets("police-hru");

    // 100,000 police referrals over 1,000 cases, sealed and appended as police.
    let start = Instant::now();
    let last = rt.block_on(async {
        let log = hru_log::EventLog::connect(&w.nats.url()).await.unwrap();
        let store = tempfile::tempdir().unwrap();
        let producer_id = ProducerId {
            party: police.party.clone(),
            instance: "load".into(),
        };
        let mut producer = hru_log::Producer::open(
            &store.path().join("producer"),
            producer_id,
            police.signing.clone(),
            &log,
            &directory,
        )
        .await
        .unwrap();
        let atomic = hru_log::SharedLog::appender(&log).atomic_batches();
        let cases: Vec<CaseId> = (0..CASES).map(|_| CaseId::random()).collect();
        let mut rng = rand::thread_rng();
        let mut last = 0;
        println!("atomic batches: {atomic}");
        for chunk in 0..events() / 500 {
            let now = jiff::Timestamp::now().as_millisecond();
            let events = (0..500)
                .map(|i| {
                    let core = pb::ReferralCore {
                        subject_ref: vec![7; 32],
                        behaviours: vec![pb::Behaviour::Stalking as i32],
                        area: "Chester".into(),
                        received_at_ms: now,
                        out_of_hours: false,
                        crime_reference: String::new(),
                    };
                    hru_log::EventToSeal {
                        case_id: cases[(chunk * 500 + i) % CASES],
                        event_type: EventType::ReferralReceived,
                        sections: vec![PlainSection {
                            name: "core",
                            bytes: core.encode_to_vec(),
                        }],
                        occurred_at_ms: now,
                        event_id: None,
                    }
                })
                .collect();
            let seqs = producer
                .append_many(&log, events, now, &isa, &directory, &mut rng, atomic)
                .await
                .unwrap();
            last = *seqs.last().unwrap();
            if (chunk + 1) % 20 == 0 {
                println!("  {} events appended after {:.1?}", (chunk + 1) * 500, start.elapsed());
            }
        }
        last
    });
    println!(
        "{} events appended in {:.1?} (log sequence {last})",
        events(),
        start.elapsed()
    );

    let metrics_port = free_port();
    let node = w.start_node(
        "police-hru",
        &format!(
            "max_streams_per_party = {}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"",
            STREAMS + 8
        ),
    );
    let pid = node.child.id();
    let start = Instant::now();
    while metric(metrics_port, "hru_node_folded_through") < last {
        assert!(start.elapsed() < Duration::from_secs(600), "the node folds the log");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("folded through {last} in {:.1?}", start.elapsed());
    let (idle, idle_peak) = memory(pid);

    let (open, peak_open) = rt.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            // A connection each: an unread stream holds its connection's flow-control window.
            let channel = w.channel(&node, "police-hru").await;
            let mut stream = SubscriptionServiceClient::new(channel)
                .subscribe(request(
                    pb::SubscribeRequest {
                        case_id: Vec::new(),
                        event_types: Vec::new(),
                        from_sequence: 1,
                        purpose: "risk-management".into(),
                    },
                    "load",
                ))
                .await
                .expect("a stream opens")
                .into_inner();
            let opened = Instant::now();
            let first = tokio::time::timeout(Duration::from_secs(300), stream.message())
                .await
                .expect("the first event arrives")
                .unwrap();
            assert!(first.is_some());
            if streams.len() % 50 == 0 {
                println!("stream {}: first event after {:.1?}", streams.len(), opened.elapsed());
            }
            streams.push(stream);
        }
        // Let every stream fill whatever it buffers while nobody reads.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (open, _) = memory(pid);
        let peak = memory(pid).1;
        drop(streams);
        (open, peak)
    });
    let mib = |kib: u64| kib as f64 / 1024.0;
    let log_mib = {
        let (_, info) = rt.block_on(async {
            let client = async_nats::connect(w.nats.url()).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut s = js.get_stream(hru_broker::EVENTS_STREAM).await.unwrap();
            ((), s.info().await.unwrap().state.bytes)
        });
        info as f64 / (1024.0 * 1024.0)
    };
    println!(
        "police-hru's node: {:.0} MiB resident when idle after folding (peak {:.0}); {:.0} MiB with {STREAMS} open streams from sequence 1 (peak {:.0}); the log holds {log_mib:.0} MiB",
        mib(idle),
        mib(idle_peak),
        mib(open),
        mib(peak_open)
    );
    let per_stream = (open.saturating_sub(idle)) as f64 / STREAMS as f64;
    println!("{:.2} MiB per open stream", per_stream / 1024.0);
    // Each stream holds at most a page, its channel and its connection's buffers, whatever the
    // log's size: a stream that read its range into memory would hold the log.
    assert!(
        per_stream < 4.0 * 1024.0 && per_stream / 1024.0 < log_mib / 10.0,
        "{:.2} MiB per open stream over a {log_mib:.0} MiB log",
        per_stream / 1024.0
    );
}
