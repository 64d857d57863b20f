//! `hru project` killed with SIGKILL mid-fold, 20 times, while the log grows: after each
//! restart the projection's digest equals a clean `hru rebuild` of the same log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::World;
use hru_domain::{CaseId, EventType, ProducerId, split_draft};
use hru_envelope::{Directory, PartySecrets, Sealer, StaticAudiences};
use hru_log::{EventLog, Expect};
use hru_wire::v1 as pb;
use rand::Rng as _;

const PARTIES: [&str; 5] = ["police-hru", "probation", "cwp", "mersey-care", "em-vendor"];
const AGREEMENT: &str = "tests/data/round-trip.toml";

fn digest_of(world: &World, command: &str, store: &str) -> String {
    let keys = common::path(world.dir.path(), "keys");
    let out = world.run(&[command, "--party", "police-hru", "--keys", &keys, "--store", store]);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("digest ").nth(1).expect("a digest line").trim().to_owned()
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
    let store = common::path(world.dir.path(), "live-store");
    let mut n = 0u32;
    for round in 0..20 {
        // The log grows by 150 mixed events.
        for _ in 0..150 {
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
            rt.block_on(log.append_batch(&mut sealer, &batch, Expect::Any)).unwrap();
        }
        // Fold, killed at a random point.
        let mut child = Command::new(env!("CARGO_BIN_EXE_hru"))
            .args([
                "--policies",
                &common::path(world.dir.path(), "policies"),
                "project",
                "--party",
                "police-hru",
            ])
            .args(["--keys", &common::path(world.dir.path(), "keys"), "--store", &store])
            .env("HRU_NATS_URL", world.nats.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..300)));
        child.kill().ok();
        child.wait().unwrap();
        // Restart to completion; compare with a clean rebuild into a fresh store.
        let live = digest_of(&world, "project", &store);
        let fresh = common::path(world.dir.path(), &format!("rebuild-{round}"));
        let rebuilt = digest_of(&world, "rebuild", &fresh);
        assert_eq!(live, rebuilt, "round {round}: resumed fold equals a clean rebuild");
    }
}
