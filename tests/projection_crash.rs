//! `hru node run` killed with SIGKILL mid-fold, 20 times, while the log grows: after each
//! restart (finished by `hru project` on the node's store) the projection's digest equals a
//! clean `hru rebuild` of the same log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_log::SharedLog as _;
use std::time::Duration;

use hru_domain::{CaseId, EventType, ProducerId, split_draft};
use hru_envelope::{Directory, PartySecrets, Sealer, StaticAudiences};
use hru_log::{EventLog, Expect};
use hru_tests::World;
use hru_wire::v1 as pb;
use rand::Rng as _;

const PARTIES: [&str; 5] = ["police-hru", "probation", "cwp", "mersey-care", "em-vendor"];
const AGREEMENT: &str = "data/round-trip.toml";

/// The first projection's digest and where folding resumed.
fn digest_of(world: &World, command: &str, store: &str) -> (String, u64) {
    let keys = hru_tests::path(world.dir.path(), "keys");
    let out = world.run(&[command, "--party", "police-hru", "--keys", &keys, "--store", store]);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let digest = text
        .split("digest ")
        .nth(1)
        .and_then(|t| t.lines().next())
        .expect("a digest line")
        .trim()
        .to_owned();
    let resumed = String::from_utf8_lossy(&out.stderr)
        .split("resumed after sequence ")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .expect("where folding resumed");
    (digest, resumed)
}

#[test]
fn killed_folds_resume_to_the_rebuilt_digest() {
    let world = World::new(AGREEMENT, &PARTIES);
    let keys_dir = world.dir.path().join("keys");
    let secrets = PartySecrets::from_toml(
        &std::fs::read_to_string(keys_dir.join("police-hru.secret")).unwrap(),
        "police",
    )
    .unwrap();
    let directory = Directory::from_toml(
        &std::fs::read_to_string(world.dir.path().join("policies/directory.toml")).unwrap(),
        "d",
    )
    .unwrap();
    let me = std::slice::from_ref(&secrets.party);
    let policy = StaticAudiences::new("board", 1)
        .share(EventType::ReferralReceived, "core", me)
        .share(EventType::RiskAssessed, "summary", me)
        .share(EventType::TagBreach, "core", me);
    let mut sealer = Sealer::new(
        ProducerId {
            party: secrets.party.clone(),
            instance: "gen".into(),
        },
        secrets.signing.clone(),
    );
    let cases: Vec<CaseId> = (0..40).map(|_| CaseId::random()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = rt.block_on(EventLog::connect(&world.nats.url())).unwrap();
    let mut rng = rand::thread_rng();
    let node_data = world.dir.path().join("node-police-hru");
    let store = node_data.join("projections").display().to_string();
    let mut n = 0u32;
    let mut previous_end = 0;
    let mut landed = Vec::new();
    let mut previous = 0;
    for round in 0..20 {
        // The log grows by 500 mixed events (10k in all).
        for _ in 0..500 {
            n += 1;
            let at = 1_795_000_000_000 + i64::from(n) * 1_000;
            let event = match n % 3 {
                0 => pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
                    core: Some(pb::ReferralCore {
                        subject_ref: vec![(n % 200) as u8; 32],
                        behaviours: vec![pb::Behaviour::Stalking as i32],
                        area: format!("area {n}"),
                        received_at_ms: at,
                        out_of_hours: n.is_multiple_of(2),
                        crime_reference: String::new(),
                    }),
                    identity: None,
                    narrative: None,
                }),
                1 => pb::event_draft::Event::RiskAssessed(pb::RiskAssessed {
                    summary: Some(pb::RiskSummary {
                        tool: "SRP".into(),
                        overall: 1 + (n % 4) as i32,
                        assessed_at_ms: at,
                        ..Default::default()
                    }),
                    clinical: None,
                }),
                _ => pb::event_draft::Event::TagBreach(pb::TagBreach {
                    core: Some(pb::BreachCore {
                        breach_id: vec![(n % 5) as u8; 16],
                        tag_id: "tag-7".into(),
                        kind: 1,
                        state: if n.is_multiple_of(4) { 3 } else { 1 },
                        rule_id: vec![1; 16],
                        opened_at_ms: at,
                        observed_at_ms: at,
                        ..Default::default()
                    }),
                }),
            };
            let (t, sections) = split_draft(event);
            let batch = sealer
                .prepare_event(
                    cases[n as usize % cases.len()],
                    t,
                    sections,
                    at,
                    at,
                    &policy,
                    &directory,
                    &mut rand_core::OsRng,
                )
                .unwrap();
            rt.block_on(log.appender().append_batch(&mut sealer, &batch, Expect::Any))
                .unwrap();
        }
        // The node folds, killed once it has folded into this round's events, a random moment later.
        let metrics = hru_tests::free_port();
        let node = world.start_node("police-hru", &format!("metrics_listen = \"127.0.0.1:{metrics}\""));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while folded_through(metrics) <= previous_end {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the node never folds"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..30)));
        drop(node);
        // Restart to completion; compare with a clean rebuild into a fresh store.
        let before = log_last(&rt, &log);
        let (live, resumed) = digest_of(&world, "project", &store);
        landed.push((resumed, before));
        previous_end = before;
        let fresh = hru_tests::path(world.dir.path(), &format!("rebuild-{round}"));
        let (rebuilt, _) = digest_of(&world, "rebuild", &fresh);
        assert_eq!(live, rebuilt, "round {round}: resumed fold equals a clean rebuild");
    }
    // Every kill came after the node had folded into the round's events. What the store kept of
    // them depends on whether sled had flushed (the fold and its checkpoint go together).
    let (mut none, mut part, mut all) = (0, 0, 0);
    for (resumed, last) in landed {
        match resumed {
            r if r <= previous => none += 1,
            r if r < last => part += 1,
            _ => all += 1,
        }
        previous = last;
    }
    println!("kills mid-fold: the store kept none of the round's folds {none} times, part {part}, all {all}");
}

fn log_last(rt: &tokio::runtime::Runtime, log: &EventLog) -> u64 {
    rt.block_on(log.reader().bounds()).unwrap().1
}

/// The node's `hru_node_folded_through` gauge (0 while it does not answer yet).
fn folded_through(port: u16) -> u64 {
    hru_tests::metric(port, "hru_node_folded_through")
}
