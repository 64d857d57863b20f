//! Erasure by period keys (decision 010), end to end on a real nats-server: every member of the
//! referral's core audience has held period keys since January 2018 and published them on the
//! log; police-hru records a referral that month, and the grant of its core section goes to
//! each member's January 2018 key (not its long-term key). Before cwp's holder runs, cwp
//! replays the referral. cwp's node then starts: before it serves it moves its chains past
//! every month whose retention has ended, confirms the destruction on the log and publishes the
//! coming months. After that, everything cwp keeps (its secret key file, its period file, a raw
//! copy of the grant from the broker) opens nothing: replay says the section was erased under
//! retention, on the day the seven years ended. victim-advocacy's projections, folded while
//! the referral was live, forget the victim's name when its node starts after the expiry
//! (before it serves), in the store's files too, and a rebuild gives the same digests. The
//! audit names the holders that have not confirmed (the seven years ended long before the
//! 30-day grace), until each has; then it counts the sections as erased, not as findings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_domain::{CaseId, EventType, ProducerId};
use hru_log::SharedLog as _;
use hru_log::periods;
use hru_log::{EventToSeal, PartyView, Producer};
use hru_tests::{CHESHIRE_PARTIES, World};
use hru_wire::v1 as pb;
use prost::Message as _;

/// 2018-01-15.
const JANUARY_2018: i64 = 1_516_000_000_000;

fn referral(victim: &str) -> Vec<hru_domain::PlainSection> {
    let referral = pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![7; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Cheshire West".into(),
            received_at_ms: JANUARY_2018,
            ..Default::default()
        }),
        identity: Some(pb::ReferralIdentity {
            subject: Some(pb::PersonIdentity {
                full_name: "Sam Subject".into(),
                ..Default::default()
            }),
            victim: Some(pb::PersonIdentity {
                full_name: victim.into(),
                ..Default::default()
            }),
        }),
        narrative: None,
    };
    hru_domain::split_draft(pb::event_draft::Event::ReferralReceived(referral)).1
}

/// The victim's name in the referral's identity section (police-hru and victim-advocacy).
const VICTIM: &str = "Vic Tim Twenty-Eighteen";
/// The victim's name in a referral recorded now, whose retention has not ended.
const LIVE_VICTIM: &str = "Liv Victim Now";

/// What cwp's key material opens of the referral's core: a key ring from everything cwp keeps
/// (its secret key file and its period file), with no retention rule applied on top.
async fn cwp_key_material_opens(
    w: &World,
    directory: &hru_envelope::Directory,
) -> Result<Vec<u8>, hru_envelope::OpenError> {
    let cwp = w.secrets("cwp");
    let file = hru_runtime::deployment::periods_path(&w.keys(), &cwp.party);
    let periods = hru_envelope::PeriodKeys::from_toml(&std::fs::read_to_string(&file).unwrap(), "periods").unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let mut ring = hru_envelope::KeyRing::new(&cwp).with_periods(&periods, &hru_envelope::published_through(now));
    let log = PartyView::open(&w.nats.url(), Some(&cwp.broker_identity()), &cwp.party)
        .await
        .unwrap();
    let entries: Vec<_> = log.reader().replay(1, &[]).await.unwrap().try_collect().await.unwrap();
    let mut core = None;
    for e in &entries {
        let v = hru_envelope::verify(&e.payload, directory).unwrap();
        match v.header.event_type {
            EventType::KeyGranted => {
                ring.ingest_grant(&v)?;
            }
            // The referral of January 2018 (the first).
            EventType::ReferralReceived if core.is_none() => core = Some(ring.open(&v).sections.remove(0).plaintext),
            _ => {}
        }
    }
    core.expect("cwp's view holds the referral")
}

/// Whether `text` occurs in any file under `dir`.
fn on_disk(dir: &std::path::Path, text: &str) -> bool {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(text.len())
                .any(|w| w == text.as_bytes())
            {
                return true;
            }
        }
    }
    false
}

/// The victim names victim-advocacy's advocacy projection holds in the store at `dir`, sorted.
fn victim_names(dir: &std::path::Path) -> Vec<String> {
    let store = hru_projection::Store::open(dir).unwrap();
    store
        .scan(&hru_projection::Advocacy::default(), b"")
        .unwrap()
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<serde_json::Value>(v).ok())
        .filter_map(|row| row["victim_name"].as_str().map(str::to_owned))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The digests `hru project` or `hru rebuild` print for victim-advocacy's store at `dir`.
fn digests(w: &World, command: &str, dir: &std::path::Path) -> Vec<String> {
    let keys = w.keys().display().to_string();
    let store = dir.display().to_string();
    let out = as_party(
        w,
        "victim-advocacy",
        &[
            command,
            "--party",
            "victim-advocacy",
            "--keys",
            &keys,
            "--store",
            &store,
        ],
    );
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("digest ")
                .nth(1)
                .map(|d| format!("{} {d}", l.split('\t').next().unwrap_or("")))
        })
        .collect()
}

/// `hru project` of victim-advocacy's store at `dir`, retention judged in February 2018 (the
/// referral of January 2018 still live); it must succeed.
fn project_in_february_2018(w: &World, dir: &std::path::Path) -> std::process::Output {
    let keys = w.keys().display().to_string();
    let store = dir.display().to_string();
    let args = [
        "project",
        "--party",
        "victim-advocacy",
        "--keys",
        &keys,
        "--store",
        &store,
        "--at",
        "2018-02-01T00:00:00Z",
    ];
    let out = as_party(w, "victim-advocacy", &args);
    assert!(
        out.status.success(),
        "project: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The referral's core section as cwp's replay reports it.
fn cwp_core(w: &World) -> serde_json::Value {
    referral_as(w, "cwp", None, None)
}

/// The first referral `party`'s replay reports (of `case`, when given), retention judged at
/// `at` (RFC 3339; now when `None`).
fn referral_as(w: &World, party: &str, case: Option<CaseId>, at: Option<&str>) -> serde_json::Value {
    replayed_referral(w, party, case, at).unwrap_or_else(|out| panic!("{party} replays the referral: {out}"))
}

/// The first referral `party`'s replay reports, or what the replay printed instead.
fn replayed_referral(
    w: &World,
    party: &str,
    case: Option<CaseId>,
    at: Option<&str>,
) -> Result<serde_json::Value, String> {
    let keys = w.keys().display().to_string();
    let case = case.map(|c| c.to_string());
    let mut args = vec!["replay", "--party", party, "--keys", &keys, "--format", "json"];
    if let Some(case) = &case {
        args.extend(["--case", case]);
    }
    if let Some(at) = at {
        args.extend(["--at", at]);
    }
    let out = as_party(w, party, &args);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a json line"))
        .collect();
    lines
        .into_iter()
        .find(|l| l["event_type"] == "ReferralReceived")
        .ok_or_else(|| {
            format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// A referral naming `victim`, recorded by `producer` at `at_ms` with `sealing`'s keys.
async fn record_referral(
    producer: &mut Producer,
    log: &PartyView,
    isa: &hru_policy::CompiledIsa,
    sealing: &hru_envelope::Directory,
    victim: &str,
    at_ms: i64,
) -> CaseId {
    let case_id = CaseId::random();
    let event = EventToSeal {
        case_id,
        event_type: EventType::ReferralReceived,
        sections: referral(victim),
        occurred_at_ms: at_ms,
        event_id: None,
    };
    producer
        .append_many(log, vec![event], at_ms, isa, sealing, &mut rand_core::OsRng, true)
        .await
        .unwrap();
    case_id
}

/// `secrets`' producer `instance` with its store at `store`.
async fn open_producer(
    store: &std::path::Path,
    secrets: &hru_envelope::PartySecrets,
    instance: &str,
    log: &PartyView,
    directory: &hru_envelope::Directory,
) -> Producer {
    let id = ProducerId {
        party: secrets.party.clone(),
        instance: instance.into(),
    };
    Producer::open(store, id, secrets.signing.clone(), log, directory)
        .await
        .unwrap()
}

/// The members of the referral's core audience (policies/cheshire-hru.toml, clauses 3.1 and 8.1).
const CORE: [&str; 6] = [
    "police-hru",
    "probation",
    "cwp",
    "mersey-care",
    "victim-advocacy",
    "evaluation",
];

/// `hru` as `party`, with its own key.
fn as_party(w: &World, party: &str, args: &[&str]) -> std::process::Output {
    let identity = format!("{}/{party}.secret", w.keys().display());
    let mut full = vec!["--identity", &identity];
    full.extend_from_slice(args);
    w.run(&full)
}

/// `hru retention destroy` as `party` (its CLI producer store and its period file).
fn sweep(w: &World, party: &str) {
    sweep_at(w, party, None);
}

/// `hru retention destroy` as `party`, as of `at` (RFC 3339; now when `None`).
fn sweep_at(w: &World, party: &str, at: Option<&str>) {
    let keys = w.keys().display().to_string();
    let mut args = vec!["retention", "destroy", "--party", party, "--keys", &keys];
    if let Some(at) = at {
        args.extend(["--at", at]);
    }
    let out = as_party(w, party, &args);
    assert!(
        out.status.success(),
        "retention destroy {party}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hru audit verify --format json` as the auditor: its JSON lines.
fn audit(w: &World) -> Vec<serde_json::Value> {
    let out = as_party(w, "auditor", &["audit", "verify", "--format", "json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a json line"))
        .collect()
}

/// Who each destruction-unconfirmed finding says has not confirmed.
fn unconfirmed(w: &World) -> Vec<String> {
    audit(w)
        .iter()
        .filter(|f| f["kind"] == "destruction-unconfirmed")
        .map(|f| {
            let detail = f["detail"].as_str().unwrap();
            detail.rsplit("no destruction from ").next().unwrap().to_owned()
        })
        .collect()
}

/// Wait until `log`'s view holds a period-key publication of `party` (a view copies the log
/// a moment after it is written).
async fn holds(log: &PartyView, party: &hru_domain::PartyId) {
    let subject = hru_broker::Subject::control(party, EventType::PeriodKeysPublished);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while log
        .reader()
        .last_of(&hru_broker::Filter::exactly(&subject))
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the view copied {subject} within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn a_grant_to_a_period_key_opens_nothing_once_its_holder_moved_past_the_period() {
    let w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    // The agreement as in force since 2018, so a referral of January 2018 is read under it.
    w.agreement_in_force_from("2018-01-01");
    w.provision();
    let (directory, isa) = w.deployment();
    let cwp = w.secrets("cwp");
    let police = w.secrets("police-hru");
    let periods_file = hru_runtime::deployment::periods_path(&w.keys(), &cwp.party);
    let rt = hru_tests::runtime();
    let url = w.nats.url();
    let cwp_grant_key = rt.block_on(async {
        // Each member's chains start in January 2018; each publishes from then.
        let mut cwp_january = None;
        for member in CORE {
            let holder = w.hold_periods_since(member, "2018-01", JANUARY_2018).await;
            if member == "cwp" {
                cwp_january = holder.keys().public("7y", "2018-01");
            }
        }
        let january = cwp_january.unwrap();
        // police-hru records a referral in January 2018 with what the log published.
        let log = PartyView::open(&url, Some(&police.broker_identity()), &police.party)
            .await
            .unwrap();
        for member in CORE {
            holds(&log, &member.parse().unwrap()).await;
        }
        let sealing = periods::directory_with_periods(log.reader(), &directory).await.unwrap();
        assert_eq!(sealing.period_key(&cwp.party, "7y", "2018-01"), Some(&january));
        // The store `hru retention destroy --party police-hru` sweeps (instance "cli").
        let store = w.keys().join("police-hru.cli.producer");
        let mut producer = open_producer(&store, &police, "cli", &log, &directory).await;
        record_referral(&mut producer, &log, &isa, &sealing, VICTIM, JANUARY_2018).await;
        // Another instance of police-hru records a referral now: its epochs of the same
        // audiences are numbered from 1 too, and live. The audit must not take them for the
        // expired ones (nor the expired ones' confirmations for them).
        let store = w.dir.path().join("police-node-1");
        let mut live = open_producer(&store, &police, "node-1", &log, &directory).await;
        let now = jiff::Timestamp::now().as_millisecond();
        record_referral(&mut live, &log, &isa, &sealing, LIVE_VICTIM, now).await;
        january.key_id
    });

    // The grant as the broker holds it (read raw, as the auditor) names cwp's period key.
    let grants: Vec<pb::KeyGranted> = all_grants(&w, &rt, &directory)
        .into_iter()
        .filter(|g| g.month == "2018-01" && g.retention == "7y")
        .collect();
    assert_eq!(
        grants.len(),
        2,
        "one grant each for the referral's core and identity audiences"
    );
    let to_cwp = grants
        .iter()
        .find_map(|g| g.members.iter().find(|m| m.party == "cwp"))
        .unwrap();
    assert_eq!(
        to_cwp.key_id,
        cwp_grant_key.0.to_vec(),
        "sealed to cwp's January 2018 key"
    );
    assert_ne!(
        to_cwp.key_id,
        cwp.encryption_key_id().0.to_vec(),
        "not to its long-term key"
    );

    // Before cwp's holder runs, what cwp keeps still opens the referral's core (replay shows
    // nothing past its retention, but the key exists until the holder destroys it).
    assert!(rt.block_on(cwp_key_material_opens(&w, &directory)).is_ok());
    let before = cwp_core(&w);
    assert_eq!(before["refused"][0]["reason"], "erased", "{before}");

    // victim-advocacy's projections as they stood before the seven years ended (folded with
    // retention judged in February 2018): the advocacy board names the victim.
    let advocacy_store = w.dir.path().join("node-victim-advocacy/projections");
    std::fs::create_dir_all(advocacy_store.parent().unwrap()).unwrap();
    let out = project_in_february_2018(&w, &advocacy_store);
    assert_eq!(
        victim_names(&advocacy_store),
        vec![LIVE_VICTIM.to_owned(), VICTIM.to_owned()],
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A store `hru project` keeps, folded the same way: it names the victim on disk.
    let cli_store = w.dir.path().join("cli-advocacy");
    project_in_february_2018(&w, &cli_store);
    assert!(on_disk(&cli_store, VICTIM));

    // cwp's node starts: before it answers, its chains have moved past expired months.
    let node = w.start_node("cwp", "");
    drop(rt.block_on(w.channel(&node, "cwp")));
    let kept =
        hru_envelope::PeriodKeys::from_toml(&std::fs::read_to_string(&periods_file).unwrap(), "periods").unwrap();
    assert!(kept.destroyed("7y", "2018-01"), "{kept:?}");
    assert!(kept.secret("7y", "2018-01").is_none());

    // The audit names every holder that has not confirmed: all but cwp for the core, both
    // holders of the identity section.
    assert_eq!(
        unconfirmed(&w),
        vec![
            "evaluation, mersey-care, police-hru, probation, victim-advocacy".to_owned(),
            "police-hru, victim-advocacy".to_owned()
        ]
    );

    // Operators see each holder's publications: cwp's node published a year ahead; police-hru
    // last published in 2018 (its holder has not run since), police-control never did.
    let out = as_party(&w, "auditor", &["retention", "status", "--format", "json"]);
    let holders: std::collections::BTreeMap<String, (serde_json::Value, serde_json::Value)> =
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| {
                let h = r["holder"].as_str()?.to_owned();
                Some((h, (r["period_keys_through"].clone(), r["period_keys"].clone())))
            })
            .collect();
    let through = hru_envelope::published_through(jiff::Timestamp::now().as_millisecond());
    assert_eq!(
        holders["cwp"],
        (serde_json::json!(through), serde_json::json!("published"))
    );
    assert!(
        holders["police-hru"].1.as_str().unwrap().starts_with("RENEW"),
        "{holders:?}"
    );
    assert!(
        holders["police-control"].1.as_str().unwrap().starts_with("none"),
        "{holders:?}"
    );

    // Everything cwp keeps opens nothing now.
    assert!(matches!(
        rt.block_on(cwp_key_material_opens(&w, &directory)),
        Err(hru_envelope::OpenError::Erased { .. })
    ));

    // victim-advocacy's node, stopped across the expiry, forgets before it serves: the
    // advocacy board no longer names the victim, no file of its store holds the name, and a
    // rebuild from the log gives the same digests as the live store.
    let node = w.start_node("victim-advocacy", "");
    drop(rt.block_on(w.channel(&node, "victim-advocacy")));
    drop(node);
    // The node folded a new store and names it in `projections.current`.
    let data_dir = advocacy_store.parent().unwrap();
    let current = std::fs::read_to_string(data_dir.join("projections.current")).unwrap();
    let live_store = data_dir.join(current.trim());
    assert_ne!(live_store, advocacy_store);
    assert!(!advocacy_store.exists(), "the old store is removed");
    assert_eq!(
        victim_names(&live_store),
        vec![LIVE_VICTIM.to_owned()],
        "only the live referral's name"
    );
    assert!(
        !on_disk(data_dir, VICTIM),
        "the name is gone from every file of the node's data directory"
    );
    let live = digests(&w, "project", &live_store);
    let rebuilt = digests(&w, "rebuild", &w.dir.path().join("rebuilt"));
    assert!(!live.is_empty());
    assert_eq!(live, rebuilt, "a rebuild gives the live store's digests");

    // A store `hru project` keeps (folded as of February 2018, above) forgets the same way
    // when next used: no file of it names the victim, and its digests are the node's.
    assert_eq!(digests(&w, "project", &cli_store), live);
    assert!(
        !on_disk(&cli_store, VICTIM),
        "the name is gone from the CLI store's files"
    );

    // Everything cwp keeps opens nothing: replay reports erasure, not a decrypt error.
    let after = cwp_core(&w);
    assert_eq!(after["readable"], serde_json::json!([]), "{after}");
    let refused = &after["refused"][0];
    assert_eq!(refused["reason"], "erased", "{after}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("erased under retention on 2025-02-01"),
        "{after}"
    );

    // The other holders sweep, all but evaluation, which fails to (simulated): the audit names
    // it alone (the identity epoch's holders, police-hru and victim-advocacy, have confirmed).
    for party in ["police-hru", "probation", "mersey-care"] {
        sweep(&w, party);
    }
    assert_eq!(unconfirmed(&w), vec!["evaluation".to_owned()]);
    sweep(&w, "evaluation");
    assert!(unconfirmed(&w).is_empty());
    let summary = audit(&w).pop().unwrap();
    assert_eq!(summary["summary"]["erased_sections"], 2, "{summary}");
    assert_eq!(summary["summary"]["erased_epochs"], 2, "{summary}");

    // The node published its coming months, and a producer reading the log now seals to them.
    let now = jiff::Timestamp::now().as_millisecond();
    let month = hru_envelope::month_at(now).unwrap();
    rt.block_on(async {
        let log = PartyView::open(&url, Some(&police.broker_identity()), &police.party)
            .await
            .unwrap();
        holds(&log, &cwp.party).await;
        let sealing = periods::directory_with_periods(log.reader(), &directory).await.unwrap();
        assert_eq!(
            sealing.period_key(&cwp.party, "7y", &month),
            kept.public("7y", &month).as_ref(),
            "the node published this month's key from the chain it keeps"
        );
    });
}

fn ms(date: &str) -> i64 {
    date.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// Every key grant on the log, read raw as the auditor reads it.
fn all_grants(w: &World, rt: &tokio::runtime::Runtime, directory: &hru_envelope::Directory) -> Vec<pb::KeyGranted> {
    let auditor = w.secrets("auditor").broker_identity();
    rt.block_on(async {
        let log = hru_log::EventLog::open(&w.nats.url(), Some(&auditor), 1).await.unwrap();
        let entries: Vec<_> = log
            .reader()
            .replay(1, &[hru_broker::Filter::all_key_grants()])
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        entries
            .iter()
            .filter_map(|e| hru_envelope::verify(&e.payload, directory).ok())
            .map(|v| pb::KeyGranted::decode(v.body.as_slice()).unwrap())
            .collect()
    })
}

/// The held grants on the log: (hold, hold-key month, sections).
fn held_grants(
    w: &World,
    rt: &tokio::runtime::Runtime,
    directory: &hru_envelope::Directory,
) -> Vec<(String, String, usize)> {
    all_grants(w, rt, directory)
        .into_iter()
        .filter_map(|g| g.held.map(|h| (h.hold, g.month, h.sections.len())))
        .collect()
}

/// The sections of `line` (a replay line) kept readable by a legal hold.
fn held_sections(line: &serde_json::Value) -> Vec<String> {
    line["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["section"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_legal_hold_keeps_one_case_readable_past_its_retention_until_released() {
    let w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    w.agreement_in_force_from("2018-01-01");
    w.provision();
    let (directory, isa) = w.deployment();
    let police = w.secrets("police-hru");
    let keys = w.keys().display().to_string();
    let rt = hru_tests::runtime();
    let url = w.nats.url();
    // Two referrals of January 2018 under the same epochs: one case will be held.
    let (held_case, other_case) = rt.block_on(async {
        for member in CORE {
            w.hold_periods_since(member, "2018-01", JANUARY_2018).await;
        }
        let log = PartyView::open(&url, Some(&police.broker_identity()), &police.party)
            .await
            .unwrap();
        for member in CORE {
            holds(&log, &member.parse().unwrap()).await;
        }
        let sealing = periods::directory_with_periods(log.reader(), &directory).await.unwrap();
        let store = w.keys().join("police-hru.cli.producer");
        let mut producer = open_producer(&store, &police, "cli", &log, &directory).await;
        let held = record_referral(&mut producer, &log, &isa, &sealing, VICTIM, JANUARY_2018).await;
        let other = record_referral(&mut producer, &log, &isa, &sealing, LIVE_VICTIM, JANUARY_2018).await;
        (held, other)
    });
    // Every member's holder runs now: the seven years of January 2018 have ended, so each
    // destroys its January 2018 secrets, and each publishes this month's keys (the one-month
    // class of hold keys among them).
    for member in CORE {
        let out = as_party(&w, member, &["keys", "periods", "--party", member, "--keys", &keys]);
        assert!(
            out.status.success(),
            "keys periods {member}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // victim-advocacy's node runs from before the hold, sweeping every second.
    let node = w.start_node("victim-advocacy", "retention_sweep_s = 1");
    drop(rt.block_on(w.channel(&node, "victim-advocacy")));
    let data_dir = w.dir.path().join("node-victim-advocacy");
    let advocacy_store = || {
        let current =
            std::fs::read_to_string(data_dir.join("projections.current")).unwrap_or_else(|_| "projections".into());
        data_dir.join(current.trim())
    };
    let before_hold = advocacy_store();

    // A hold whose review date has passed is refused, naming the flag; nothing is signed.
    let held = held_case.to_string();
    let place = |review: &str| {
        as_party(
            &w,
            "police-hru",
            &[
                "retention",
                "hold",
                "--party",
                "police-hru",
                "--keys",
                &keys,
                "--case",
                &held,
                "--reason",
                "Crown Court proceedings R v Subject",
                "--authority",
                "CPS Cheshire, reviewing lawyer",
                "--review",
                review,
            ],
        )
    };
    let out = place("2020-01-01");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--review"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(held_grants(&w, &rt, &directory).is_empty());

    // probation holds the other case: a hold keeps only its placer's own sections, so it
    // keeps nothing of police-hru's referral.
    let other = other_case.to_string();
    let out = as_party(
        &w,
        "probation",
        &[
            "retention",
            "hold",
            "--party",
            "probation",
            "--keys",
            &keys,
            "--case",
            &other,
            "--reason",
            "complaint",
            "--authority",
            "probation legal team",
            "--review",
            "2099-01-01",
        ],
    );
    assert!(
        out.status.success(),
        "probation's hold: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // police-hru places the hold; its producer, whose January 2018 epochs have expired, keeps
    // the held case's section keys and grants them under this month's hold keys, then
    // destroys the epochs.
    let out = place("2099-06-30");
    assert!(out.status.success(), "hold: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let hold = stdout.split_whitespace().nth(1).unwrap().to_owned();
    let month = hru_envelope::month_at(jiff::Timestamp::now().as_millisecond()).unwrap();
    let mut grants = held_grants(&w, &rt, &directory);
    grants.sort();
    assert_eq!(
        grants,
        vec![(hold.clone(), month.clone(), 1), (hold.clone(), month.clone(), 1)],
        "one grant per audience (core, identity), each of the held referral's one section"
    );

    // The held case opens for exactly the parties given it: cwp its core, victim-advocacy its
    // core and identity; the other case of the same epochs is erased for both; police-control,
    // never given the referral, still is not.
    let cwp_held = referral_as(&w, "cwp", Some(held_case), None);
    assert_eq!(cwp_held["readable"], serde_json::json!(["core"]), "{cwp_held}");
    assert_eq!(held_sections(&cwp_held), vec!["core"]);
    let advocacy_held = referral_as(&w, "victim-advocacy", Some(held_case), None);
    assert_eq!(
        advocacy_held["readable"],
        serde_json::json!(["core", "identity"]),
        "{advocacy_held}"
    );
    assert!(advocacy_held.to_string().contains(VICTIM));
    for party in ["cwp", "victim-advocacy"] {
        let other = referral_as(&w, party, Some(other_case), None);
        assert_eq!(other["readable"], serde_json::json!([]), "{party}: {other}");
        let core = other["refused"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["section"] == "core")
            .cloned();
        assert_eq!(core.unwrap()["reason"], "erased", "{other}");
    }
    let control = replayed_referral(&w, "police-control", Some(held_case), None);
    assert!(control.is_err(), "police-control is not sent the referral: {control:?}");

    // The audit counts the held sections apart from the erased ones, with no finding about
    // the hold; retention status lists it.
    let lines = audit(&w);
    assert!(lines.iter().all(|f| f["kind"] != "bad-hold"), "{lines:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["summary"]["held_sections"], 2, "{summary}");
    assert_eq!(summary["summary"]["holds_standing"], 2, "{summary}");
    assert_eq!(summary["summary"]["erased_sections"], 2, "{summary}");
    let out = as_party(&w, "auditor", &["retention", "status", "--format", "json"]);
    let status: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["kind"] == "hold")
        .collect();
    assert_eq!(status.len(), 2, "{status:?}");
    let police_hold = status.iter().find(|h| h["hold"] == hold.as_str()).unwrap();
    assert_eq!(police_hold["state"], "standing");
    assert_eq!(police_hold["held_sections"], 2);
    let probation_hold = status.iter().find(|h| h["placed_by"] == "probation").unwrap();
    assert_eq!(
        probation_hold["held_sections"], 0,
        "probation holds none of police-hru's sections"
    );

    // victim-advocacy's node, running since before the hold, takes the hold's grant in as it
    // follows the log and, on its next sweep, folds a new store with the held referral and
    // swaps it in: the held victim is named, the other is not, and a rebuild from the log
    // gives the same digests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while advocacy_store() == before_hold {
        assert!(
            std::time::Instant::now() < deadline,
            "the node swapped in a new store within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(node);
    let live_store = advocacy_store();
    assert_eq!(victim_names(&live_store), vec![VICTIM.to_owned()]);
    assert!(
        !on_disk(&data_dir, LIVE_VICTIM),
        "the unheld referral's victim is in no file"
    );
    let live = digests(&w, "project", &live_store);
    assert!(!live.is_empty());
    assert_eq!(live, digests(&w, "rebuild", &w.dir.path().join("rebuilt")));

    // Only the placer releases: cwp's attempt is refused, naming who placed it.
    let release = |party: &str| {
        as_party(
            &w,
            party,
            &[
                "retention",
                "release",
                "--party",
                party,
                "--keys",
                &keys,
                "--hold",
                &hold,
                "--reason",
                "proceedings concluded",
            ],
        )
    };
    let out = release("cwp");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("placed by police-hru"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second hold by police-hru on the same case is refused, naming the first.
    let out = place("2099-07-31");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&hold),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // While the hold stands the producer renews its grant each month (its clock set to the
    // next month here): the case still opens after this month's hold keys have died.
    let next = hru_envelope::next_month(&month).unwrap();
    let after_next = hru_envelope::next_month(&next).unwrap();
    let third = hru_envelope::next_month(&after_next).unwrap();
    let police_sweep_at = |month: &str| {
        let at = ms(&format!("{month}-10T00:00:00Z"));
        rt.block_on(async {
            let log = PartyView::open(&url, Some(&police.broker_identity()), &police.party)
                .await
                .unwrap();
            let store = w.keys().join("police-hru.cli.producer");
            let mut producer = open_producer(&store, &police, "cli", &log, &directory).await;
            producer.destroy_expired(&log, at, at, &isa, &directory).await.unwrap();
        });
    };
    police_sweep_at(&next);
    assert_eq!(
        held_grants(&w, &rt, &directory).iter().filter(|g| g.1 == next).count(),
        2
    );
    let in_after_next = format!("{after_next}-15T00:00:00Z");
    let renewed = referral_as(&w, "cwp", Some(held_case), Some(&in_after_next));
    assert_eq!(renewed["readable"], serde_json::json!(["core"]), "{renewed}");

    // Released, the producer grants no more: the last grant dies with its month, and then
    // nothing of the case opens for anyone.
    let out = release("police-hru");
    assert!(
        out.status.success(),
        "release: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    police_sweep_at(&after_next);
    assert_eq!(
        held_grants(&w, &rt, &directory)
            .iter()
            .filter(|g| g.1 == after_next)
            .count(),
        0
    );
    let in_third = format!("{third}-15T00:00:00Z");
    for party in ["cwp", "victim-advocacy"] {
        let gone = referral_as(&w, party, Some(held_case), Some(&in_third));
        assert_eq!(gone["readable"], serde_json::json!([]), "{party}: {gone}");
        assert!(held_sections(&gone).is_empty());
    }
    // cwp's holder, swept then, can no longer derive the hold keys of those months.
    sweep_at(&w, "cwp", Some(&in_third));
    let file = hru_runtime::deployment::periods_path(&w.keys(), &"cwp".parse().unwrap());
    let kept = hru_envelope::PeriodKeys::from_toml(&std::fs::read_to_string(&file).unwrap(), "periods").unwrap();
    for m in [&month, &next] {
        assert!(kept.secret(hru_envelope::HOLD_CLASS, m).is_none(), "{m}");
    }
    let out = as_party(&w, "auditor", &["retention", "status", "--format", "json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"state\":\"released\""));
}
