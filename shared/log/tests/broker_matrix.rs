//! The agreement enforced by the broker: a real nats-server runs the config generated from the
//! Cheshire HRU agreement; every party's allowed paths work and every forbidden path is
//! refused by the server itself. Prints the matrix (party × path → allowed/refused).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use hru_broker::{AUDITOR, PROVISIONER, nats_config, view_stream};
use hru_domain::PartyId;
use hru_envelope::{Directory, PartySecrets};
use hru_log::{BrokerIdentity, connect};
use hru_policy::CompiledIsa;
use hru_testkit::NatsServer;

const CASE: &str = "0b5c2a576f0e4b529d7c2f3e8a1d4c10";

/// The subject a party publishes a case event of type `t` under.
fn case_subject(p: &PartyId, t: hru_domain::EventType) -> String {
    if t == hru_domain::EventType::AccessLogged {
        format!("hru.acc.{CASE}.{p}")
    } else {
        format!("hru.evt.{CASE}.{p}.{t}")
    }
}

/// NATS subject matching (`*` one token, `>` the rest).
fn matches(pattern: &str, subject: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, tok) in p.iter().enumerate() {
        match *tok {
            ">" => return s.len() > i,
            "*" if i < s.len() => {}
            t if i < s.len() && s[i] == t => {}
            _ => return false,
        }
    }
    p.len() == s.len()
}

struct World {
    _server: NatsServer,
    url: String,
    isa: CompiledIsa,
    secrets: Vec<PartySecrets>,
    provisioner: PartySecrets,
    auditor: PartySecrets,
}

fn world() -> World {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cheshire-hru.toml"))
        .unwrap();
    let parties = CompiledIsa::compile(&text, "cheshire-hru.toml", None)
        .unwrap()
        .parties
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    let mut directory = Directory::default();
    let mut secrets = Vec::new();
    for p in &parties {
        let s = PartySecrets::generate(p.clone(), &mut rand_core::OsRng);
        directory.insert_secrets(&s, "test");
        secrets.push(s);
    }
    let operator = |id: &str| PartySecrets::generate(id.parse().unwrap(), &mut rand_core::OsRng);
    let provisioner = operator(PROVISIONER);
    let auditor = operator(AUDITOR);
    directory.insert_secrets(&provisioner, "ops");
    directory.insert_secrets(&auditor, "dpo");
    let isa = CompiledIsa::compile(&text, "cheshire-hru.toml", Some(&directory)).unwrap();
    let config = nats_config(&isa.broker_rights(), &isa.broker_accounts(&directory).unwrap());
    let server = NatsServer::builder()
        .extra_config(&config)
        .start()
        .expect("nats-server accepts the generated config");
    let url = server.url();
    World {
        _server: server,
        url,
        isa,
        secrets,
        provisioner,
        auditor,
    }
}

fn identity(s: &PartySecrets) -> BrokerIdentity {
    BrokerIdentity {
        id: s.party.to_string(),
        nkey_seed: s.nats_seed.clone(),
    }
}

/// Records the server's permission-violation errors of one connection.
#[derive(Clone, Default)]
struct Violations(Arc<Mutex<Vec<String>>>);

impl Violations {
    fn seen(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|v| v.contains(needle))
    }

    /// Resolves once the server has reported a violation naming `needle`.
    async fn reported(&self, needle: &str) {
        while !self.seen(needle) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn connect_watched(url: &str, s: &PartySecrets) -> (async_nats::Client, Violations) {
    let violations = Violations::default();
    let v = violations.clone();
    let client = async_nats::ConnectOptions::new()
        .nkey(s.nats_seed.clone())
        .custom_inbox_prefix(format!("_INBOX_{}", s.party))
        .event_callback(move |event| {
            let v = v.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    v.0.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .expect("party connects with its nkey");
    (client, violations)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Refused,
}

/// A request: allowed when answered without a permission error; refused when the server
/// reports a permission violation for its subject.
async fn request(client: &async_nats::Client, v: &Violations, subject: &str, body: &str) -> Outcome {
    let fut = client.request(subject.to_owned(), body.to_owned().into());
    tokio::select! {
        reply = tokio::time::timeout(Duration::from_secs(5), fut) => match reply {
            Ok(Ok(reply)) => {
                let text = String::from_utf8_lossy(&reply.payload);
                if text.contains("\"error\"") { Outcome::Refused } else { Outcome::Allowed }
            }
            _ => {
                assert!(v.seen(subject), "no answer and no permission violation for {subject}: undecided");
                Outcome::Refused
            }
        },
        () = v.reported(subject) => Outcome::Refused,
    }
}

async fn subscribe(client: &async_nats::Client, v: &Violations, subject: &str) -> Outcome {
    let _sub = client.subscribe(subject.to_owned()).await.unwrap();
    client.flush().await.unwrap();
    // A subscription is refused asynchronously; a round trip after it proves the server has
    // processed it, and a violation, if any, is reported by then.
    match tokio::time::timeout(Duration::from_secs(2), v.reported(subject)).await {
        Ok(()) => Outcome::Refused,
        Err(_) => Outcome::Allowed,
    }
}

async fn js_publish(client: &async_nats::Client, v: &Violations, subject: &str) -> Outcome {
    let js = jetstream::new(client.clone());
    let ack = async { js.publish(subject.to_owned(), "x".into()).await?.await };
    tokio::select! {
        ack = tokio::time::timeout(Duration::from_secs(5), ack) => match ack {
            Ok(Ok(_)) => Outcome::Allowed,
            _ => {
                assert!(v.seen(subject), "publish to {subject} failed without a permission violation");
                Outcome::Refused
            }
        },
        () = v.reported(subject) => Outcome::Refused,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_party_is_held_to_the_agreement_by_the_broker() {
    let w = world();
    let admin = connect(&w.url, Some(&identity(&w.provisioner))).await.unwrap();
    hru_broker::provision(&admin, &w.isa.broker_rights(), w.isa.positions_max_age(), 1, 1)
        .await
        .expect("provisioner creates HRU_EVENTS and the views");

    // Each party publishes what it may: one event of each type it produces, a key grant for
    // each audience it seals to, and a control event.
    let mut published = Vec::new();
    for s in &w.secrets {
        let (client, v) = connect_watched(&w.url, s).await;
        let p = &s.party;
        let mut subjects: Vec<String> = w
            .isa
            .produces(p)
            .filter(|t| t.has_case())
            .map(|t| case_subject(p, t))
            .collect();
        let audiences: BTreeSet<String> = w
            .isa
            .audiences()
            .filter(|(q, ..)| *q == p)
            .map(|(.., a)| a.id().to_string())
            .collect();
        subjects.extend(audiences.iter().map(|a| format!("hru.key.{p}.{a}")));
        subjects.push(format!("hru.ctl.{p}.PolicyAdopted"));
        for subject in subjects {
            assert_eq!(
                js_publish(&client, &v, &subject).await,
                Outcome::Allowed,
                "{p} publishes {subject}"
            );
            published.push(subject);
        }
    }

    let names: Vec<&str> = vec![
        "publish own event",
        "read own view (exactly its entitlement)",
        "last message on its own subject of HRU_EVENTS",
        "publish under another party's token",
        "publish an event type it may not produce",
        "consumer on HRU_EVENTS with a filter",
        "consumer on HRU_EVENTS with no filter",
        "consumer on another party's view",
        "pull consumer on own view",
        "push consumer on own view onto another's inbox",
        "last message on another party's subject",
        "direct get on HRU_EVENTS",
        "stream message get on HRU_EVENTS",
        "core subscription to hru.>",
        "subscription to another party's inbox",
        "stream delete HRU_EVENTS",
        "stream purge HRU_EVENTS",
        "stream update HRU_EVENTS",
        "delete its own view",
    ];
    let expected = |i: usize| if i < 3 { Outcome::Allowed } else { Outcome::Refused };
    let mut matrix = Vec::new();
    for (pi, s) in w.secrets.iter().enumerate() {
        let p = &s.party;
        let other: &PartyId = &w.secrets[(pi + 1) % w.secrets.len()].party;
        let (client, v) = connect_watched(&w.url, s).await;
        let js = jetstream::new(client.clone());
        let mut row = Vec::new();

        // Allowed: publish an event it produces.
        let own = w
            .isa
            .produces(p)
            .find(|t| t.has_case())
            .expect("every party produces something");
        row.push(js_publish(&client, &v, &case_subject(p, own)).await);
        published.push(case_subject(p, own));

        // Allowed: read its view, which holds exactly the published subjects it is entitled to.
        let entitled: Vec<String> = w
            .isa
            .broker_rights()
            .view_filters(p)
            .into_iter()
            .map(String::from)
            .collect();
        let want: Vec<&String> = published
            .iter()
            .filter(|s| entitled.iter().any(|e| matches(e, s)))
            .collect();
        let mut view = js.get_stream(view_stream(p)).await.expect("own view info");
        let mut n = 0;
        for _ in 0..100 {
            n = view.info().await.unwrap().state.messages;
            if n as usize >= want.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reader = hru_log::PartyView::open(&w.url, Some(&identity(s)), p)
            .await
            .expect("own view");
        let mut got: Vec<String> = reader
            .reader()
            .replay(1, &[])
            .await
            .unwrap()
            .map_ok(|e| e.subject.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(got.len() as u64, n, "{p}: every message of its view, by direct get");
        let mut want_sorted: Vec<String> = want.iter().map(|s| (*s).clone()).collect();
        want_sorted.sort();
        got.sort();
        row.push(if got == want_sorted {
            Outcome::Allowed
        } else {
            Outcome::Refused
        });
        assert_eq!(got, want_sorted, "{p}'s view holds exactly its entitlement");

        // Allowed: the last message on one of its own subjects of the shared log (how an
        // ambiguous append is resolved).
        let own = w.isa.produces(p).find(|t| t.has_case()).unwrap();
        row.push(
            request(
                &client,
                &v,
                &format!("$JS.API.DIRECT.GET.HRU_EVENTS.{}", case_subject(p, own)),
                "",
            )
            .await,
        );

        // Refused paths.
        let foreign = w.isa.produces(other).find(|t| t.has_case()).expect("other produces");
        row.push(js_publish(&client, &v, &case_subject(other, foreign)).await);
        let not_mine = hru_domain::EventType::ALL
            .iter()
            .find(|t| t.has_case() && !w.isa.may_produce(p, **t))
            .expect("some type it may not produce");
        row.push(js_publish(&client, &v, &format!("hru.evt.{CASE}.{p}.{not_mine}")).await);
        let consumer_body = |filter: &str| {
            format!(
                r#"{{"stream_name":"HRU_EVENTS","config":{{"name":"x{pi}","filter_subject":"{filter}","ack_policy":"none","deliver_policy":"all"}}}}"#
            )
        };
        row.push(
            request(
                &client,
                &v,
                &format!("$JS.API.CONSUMER.CREATE.HRU_EVENTS.x{pi}.hru.evt.>"),
                &consumer_body("hru.evt.>"),
            )
            .await,
        );
        row.push(
            request(
                &client,
                &v,
                &format!("$JS.API.CONSUMER.CREATE.HRU_EVENTS.x{pi}"),
                &consumer_body(""),
            )
            .await,
        );
        row.push(
            request(
                &client,
                &v,
                &format!("$JS.API.CONSUMER.CREATE.{}.x{pi}", view_stream(other)),
                "{}",
            )
            .await,
        );
        row.push(
            request(
                &client,
                &v,
                &format!("$JS.API.CONSUMER.CREATE.{}", view_stream(p)),
                &format!(
                    r#"{{"stream_name":"{}","config":{{"ack_policy":"none"}}}}"#,
                    view_stream(p)
                ),
            )
            .await,
        );
        row.push(
            request(
                &client,
                &v,
                &format!("$JS.API.CONSUMER.CREATE.{}", view_stream(p)),
                &format!(
                    r#"{{"stream_name":"{}","config":{{"ack_policy":"none","deliver_subject":"_INBOX_{other}.x"}}}}"#,
                    view_stream(p)
                ),
            )
            .await,
        );
        row.push(
            request(
                &client,
                &v,
                &format!("$JS.API.DIRECT.GET.HRU_EVENTS.{}", case_subject(other, foreign)),
                "",
            )
            .await,
        );
        row.push(request(&client, &v, "$JS.API.DIRECT.GET.HRU_EVENTS", r#"{"seq":1}"#).await);
        row.push(request(&client, &v, "$JS.API.STREAM.MSG.GET.HRU_EVENTS", r#"{"seq":1}"#).await);
        row.push(subscribe(&client, &v, "hru.>").await);
        row.push(subscribe(&client, &v, &format!("_INBOX_{other}.>")).await);
        row.push(request(&client, &v, "$JS.API.STREAM.DELETE.HRU_EVENTS", "").await);
        row.push(request(&client, &v, "$JS.API.STREAM.PURGE.HRU_EVENTS", "{}").await);
        row.push(
            request(
                &client,
                &v,
                "$JS.API.STREAM.UPDATE.HRU_EVENTS",
                r#"{"name":"HRU_EVENTS","subjects":[">"]}"#,
            )
            .await,
        );
        row.push(request(&client, &v, &format!("$JS.API.STREAM.DELETE.{}", view_stream(p)), "").await);
        matrix.push((p.clone(), row));
    }

    println!(
        "{:<42} {}",
        "path \\ party",
        matrix
            .iter()
            .map(|(p, _)| format!("{:>16}", p.as_str()))
            .collect::<String>()
    );
    for (i, name) in names.iter().enumerate() {
        let cells: String = matrix
            .iter()
            .map(|(_, row)| {
                format!(
                    "{:>16}",
                    if row[i] == Outcome::Allowed {
                        "allowed"
                    } else {
                        "refused"
                    }
                )
            })
            .collect();
        println!("{name:<42} {cells}");
    }
    for (p, row) in &matrix {
        for (i, outcome) in row.iter().enumerate() {
            assert_eq!(*outcome, expected(i), "{p}: {}", names[i]);
        }
    }

    // The auditor reads the whole shared log and can change nothing.
    let (client, v) = connect_watched(&w.url, &w.auditor).await;
    let js = jetstream::new(client.clone());
    js.get_stream("HRU_EVENTS").await.expect("auditor reads stream info");
    let log = hru_log::EventLog::open(&w.url, Some(&identity(&w.auditor)), 1)
        .await
        .expect("auditor opens the log");
    let read = log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(read.len(), published.len(), "auditor reads the whole shared log");
    assert_eq!(
        request(
            &client,
            &v,
            "$JS.API.CONSUMER.CREATE.HRU_EVENTS",
            r#"{"stream_name":"HRU_EVENTS","config":{"ack_policy":"none","deliver_subject":"hru.alert.x"}}"#
        )
        .await,
        Outcome::Refused,
        "auditor creates no consumer"
    );
    let p = &w.secrets[0].party;
    let own = w.isa.produces(p).next().unwrap();
    assert_eq!(
        js_publish(&client, &v, &case_subject(p, own)).await,
        Outcome::Refused,
        "auditor publishes nothing"
    );
    assert_eq!(
        request(&client, &v, "$JS.API.STREAM.PURGE.HRU_EVENTS", "{}").await,
        Outcome::Refused
    );
    println!("auditor: reads HRU_EVENTS: allowed; publishes: refused; purges: refused");

    // The provisioner creates and updates streams and views, and can destroy none of them:
    // not by deleting a stream, purging it, deleting a message, or shrinking the log's limits
    // (the server enforces limits even on a deny-delete stream).
    let (client, v) = connect_watched(&w.url, &w.provisioner).await;
    let view = view_stream(&w.secrets[0].party);
    let shrink = serde_json::to_string(&async_nats::jetstream::stream::Config {
        max_messages: 1,
        ..hru_broker::stream::events_config(1)
    })
    .unwrap();
    let mut destroyed = Vec::new();
    for (attack, subject, body) in [
        (
            "shrink HRU_EVENTS to one message",
            "$JS.API.STREAM.UPDATE.HRU_EVENTS".to_owned(),
            shrink,
        ),
        ("purge a view", format!("$JS.API.STREAM.PURGE.{view}"), "{}".to_owned()),
        (
            "delete a view's message",
            format!("$JS.API.STREAM.MSG.DELETE.{view}"),
            r#"{"seq":1}"#.to_owned(),
        ),
        ("delete a view", format!("$JS.API.STREAM.DELETE.{view}"), String::new()),
        (
            "delete HRU_EVENTS",
            "$JS.API.STREAM.DELETE.HRU_EVENTS".to_owned(),
            String::new(),
        ),
    ] {
        let outcome = request(&client, &v, &subject, &body).await;
        println!("provisioner: {attack}: {outcome:?}");
        if outcome == Outcome::Allowed {
            destroyed.push(attack);
        }
    }
    assert!(destroyed.is_empty(), "the provisioner could {destroyed:?}");
    let admin = connect(&w.url, Some(&identity(&w.provisioner))).await.unwrap();
    hru_broker::provision(&admin, &w.isa.broker_rights(), w.isa.positions_max_age(), 1, 1)
        .await
        .expect("the provisioner still provisions");
    let kept = log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(kept.len(), published.len(), "HRU_EVENTS keeps everything");
}

/// Seal one event of `producer` on `case` with every section the agreement gives an audience.
fn sealed(
    w: &World,
    producer: &PartySecrets,
    case: hru_domain::CaseId,
    event_type: hru_domain::EventType,
) -> hru_envelope::SealedBatch {
    let sealer = hru_envelope::Sealer::new(
        hru_domain::ProducerId {
            party: producer.party.clone(),
            instance: "view-test".into(),
        },
        producer.signing.clone(),
    );
    let sections: Vec<hru_domain::PlainSection> = w
        .isa
        .audiences()
        .filter(|(p, t, ..)| **p == producer.party && *t == event_type)
        .map(|(_, _, name, _)| hru_domain::PlainSection {
            name,
            bytes: b"x".to_vec(),
        })
        .collect();
    let now = jiff::Timestamp::now().as_millisecond();
    let mut directory = Directory::default();
    for s in &w.secrets {
        directory.insert_secrets(s, "test");
    }
    sealer
        .prepare_event(
            case,
            event_type,
            sections,
            now,
            now,
            &w.isa,
            &directory,
            &mut rand_core::OsRng,
        )
        .unwrap()
}

/// A party's log on its view, under the generated permissions: sequences are `HRU_EVENTS`
/// sequences, a case version it cannot fully see is corrected by the broker's refusal, and a
/// live read pages through the view and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_reads_its_view_under_shared_sequences() {
    use hru_domain::EventType;
    use hru_log::{AppendError, EventLog, Expect, PartyView};
    let w = world();
    let admin = EventLog::open(&w.url, Some(&identity(&w.provisioner)), 1)
        .await
        .unwrap();
    hru_broker::provision(&admin.client(), &w.isa.broker_rights(), w.isa.positions_max_age(), 1, 1)
        .await
        .unwrap();
    let party = |name: &str| w.secrets.iter().find(|s| s.party.as_str() == name).unwrap();
    let view_of = |s: &PartySecrets| {
        let id = identity(s);
        let party = s.party.clone();
        let url = w.url.clone();
        async move { PartyView::open(&url, Some(&id), &party).await.unwrap() }
    };
    let (police, probation) = (party("police-hru"), party("probation"));
    // An event some party produces on which probation holds no subject at all.
    let entitled: Vec<String> = w
        .isa
        .broker_rights()
        .view_filters(&probation.party)
        .into_iter()
        .map(String::from)
        .collect();
    let (hidden_party, hidden_type) = w
        .secrets
        .iter()
        .flat_map(|s| w.isa.produces(&s.party).map(move |t| (s, t)))
        .find(|(s, t)| {
            t.has_case()
                && *t != EventType::AccessLogged
                && !entitled
                    .iter()
                    .any(|e| matches(e, &format!("hru.evt.{CASE}.{}.{t}", s.party)))
        })
        .expect("some event is not shared with probation");

    let case = hru_domain::CaseId::random();
    let police_log = view_of(police).await;
    let referral = sealed(&w, police, case, EventType::ReferralReceived);
    let mut first = 0;
    for env in &referral.envelopes {
        first = police_log
            .appender()
            .append_expecting(env, Expect::Any)
            .await
            .unwrap()
            .sequence;
    }
    let hidden_log = view_of(hidden_party).await;
    let mut hidden = 0;
    for env in &sealed(&w, hidden_party, case, hidden_type).envelopes {
        hidden = hidden_log
            .appender()
            .append_expecting(env, Expect::Any)
            .await
            .unwrap()
            .sequence;
    }
    assert!(hidden > first);

    let probation_log = view_of(probation).await;
    let mut seen = 0;
    for _ in 0..100 {
        seen = probation_log.reader().case_version(case).await.unwrap();
        if seen == first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen, first,
        "probation's view holds the referral under its HRU_EVENTS sequence"
    );

    // Probation writes at the version it sees; the broker says the case moved on.
    let own = sealed(&w, probation, case, EventType::ReferralReceived);
    let (mut own_seq, mut conflicts) = (0, 0);
    for env in &own.envelopes {
        let expect = if env.header.case_id.is_some() {
            Expect::CaseAt(seen)
        } else {
            Expect::Any
        };
        match probation_log.appender().append_expecting(env, expect).await {
            Ok(ack) => own_seq = ack.sequence,
            Err(AppendError::Conflict { current, .. }) => {
                assert_eq!(current, hidden, "the conflict states the true version, not the view's");
                conflicts += 1;
                own_seq = probation_log
                    .appender()
                    .append_expecting(env, Expect::CaseAt(current))
                    .await
                    .unwrap()
                    .sequence;
            }
            Err(e) => panic!("append: {e}"),
        }
    }
    assert_eq!(conflicts, 1, "the write at the view's version was refused");
    assert!(own_seq > hidden, "the retry at the stated version landed");

    // The view's entries carry the shared sequences and bytes, its own event included.
    let all = admin
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let mut mine = Vec::new();
    for _ in 0..100 {
        mine = probation_log
            .reader()
            .replay(1, &[])
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        if mine.last().is_some_and(|e| e.sequence == own_seq) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mine.iter().any(|e| e.sequence == own_seq));
    assert!(mine.iter().all(|e| e.sequence != hidden), "the hidden event stays out");
    for e in &mine {
        let shared = all.iter().find(|a| a.sequence == e.sequence).unwrap();
        assert_eq!((&shared.subject, &shared.payload), (&e.subject, &e.payload));
    }
    let after_hidden = probation_log
        .reader()
        .replay(hidden, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(
        after_hidden.first().map(|e| e.sequence),
        mine.iter().map(|e| e.sequence).find(|s| *s > hidden)
    );
    let (low, high) = probation_log.reader().bounds().await.unwrap();
    assert_eq!((low, high), (mine[0].sequence, own_seq));

    // A live read pages through the same entries, then waits for more.
    let mut pages = probation_log.reader().follow_pages(1, None).await.unwrap();
    let mut followed = Vec::new();
    while followed.len() < mine.len() {
        let page = tokio::time::timeout(Duration::from_secs(5), pages.next())
            .await
            .expect("a page")
            .unwrap()
            .unwrap();
        followed.extend(page.entries.into_iter().map(|e| e.sequence));
    }
    assert_eq!(followed, mine.iter().map(|e| e.sequence).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), pages.next())
            .await
            .is_err(),
        "nothing more until something is stored"
    );
}

/// An append whose first attempt was stored but not acknowledged (a lost answer), retried
/// while the party's view lags behind `HRU_EVENTS`: the retry is resolved against the log
/// itself, so the event is acknowledged once, the producer's chain moves on (no fork) and
/// nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_append_resolves_against_the_log_not_a_lagging_view() {
    use hru_domain::EventType;
    use hru_log::{EventLog, Expect, PartyView};
    let w = world();
    let admin = EventLog::open(&w.url, Some(&identity(&w.provisioner)), 1)
        .await
        .unwrap();
    let rights = w.isa.broker_rights();
    hru_broker::provision(&admin.client(), &rights, w.isa.positions_max_age(), 1, 1)
        .await
        .unwrap();
    let police = w.secrets.iter().find(|s| s.party.as_str() == "police-hru").unwrap();
    let log = PartyView::open(&w.url, Some(&identity(police)), &police.party)
        .await
        .unwrap();

    // The view stops sourcing: it lags the log for as long as the test wants.
    let js = jetstream::new(admin.client());
    let mut lagging = hru_broker::stream::view_config(&rights, &police.party, 1);
    for source in lagging.sources.iter_mut().flatten() {
        source.subject_transforms.truncate(1);
        source.subject_transforms[0].source = "hru.nothing.here".into();
    }
    js.update_stream(lagging).await.expect("the view pauses");

    let case = hru_domain::CaseId::random();
    let batch = sealed(&w, police, case, EventType::ReferralReceived);
    let mut sealer = hru_envelope::Sealer::new(
        hru_domain::ProducerId {
            party: police.party.clone(),
            instance: "view-test".into(),
        },
        police.signing.clone(),
    );
    let (event, grants) = batch.envelopes.split_last().unwrap();
    for grant in grants {
        log.appender().append_expecting(grant, Expect::Any).await.unwrap();
    }
    // The first attempt: stored by the broker, its acknowledgement lost on the way back.
    let raw = jetstream::new(log.client());
    let stored = raw
        .send_publish(
            event.subject.to_string(),
            jetstream::message::PublishMessage::build()
                .payload(event.bytes.clone().into())
                .message_id(event.header.event_id.to_string())
                .expected_last_subject_sequence(0)
                .header(
                    hru_broker::stream::EXPECTED_SUBJECT_HEADER,
                    hru_broker::Filter::case_events(case).as_str(),
                ),
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;

    // The producer's retry of the same bytes under the same condition.
    let ack = log
        .appender()
        .append_expecting(event, Expect::CaseAt(0))
        .await
        .expect("the retry finds its own event in the log, not a conflict");
    assert_eq!((ack.sequence, ack.duplicate), (stored, true));
    sealer.commit(&batch, batch.envelopes.len());
    assert_eq!(
        sealer.chain().next_seq,
        event.header.producer_seq + 1,
        "the chain moves past the stored event: the next envelope cannot reuse its sequence"
    );

    // Stored once; the view, sourcing again, holds it once.
    js.update_stream(hru_broker::stream::view_config(&rights, &police.party, 1))
        .await
        .expect("the view sources again");
    let ids = |entries: &[hru_log::LogEntry]| {
        entries
            .iter()
            .filter(|e| e.subject == event.subject)
            .map(|e| e.sequence)
            .collect::<Vec<_>>()
    };
    let all = admin
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(ids(&all), vec![stored], "stored exactly once");
    let mut seen = Vec::new();
    for _ in 0..100 {
        let view = log
            .reader()
            .replay(1, &[])
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        seen = ids(&view);
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, vec![stored], "the view holds it once");
}

/// The log provisioned on `w`'s server: the provisioner's handle, the police HRU's secrets, and
/// its view.
async fn police_view(w: &World) -> (hru_log::EventLog, &PartySecrets, hru_log::PartyView) {
    let admin = hru_log::EventLog::open(&w.url, Some(&identity(&w.provisioner)), 1)
        .await
        .unwrap();
    hru_broker::provision(&admin.client(), &w.isa.broker_rights(), w.isa.positions_max_age(), 1, 1)
        .await
        .unwrap();
    let police = w.secrets.iter().find(|s| s.party.as_str() == "police-hru").unwrap();
    let log = hru_log::PartyView::open(&w.url, Some(&identity(police)), &police.party)
        .await
        .unwrap();
    (admin, police, log)
}

/// A party may put any header on what it publishes, `Nats-Sequence` and `Nats-Subject` included:
/// readers take the server's own values (the last of each), so a forged one neither stalls nor
/// skips a read, and files nothing under another subject. A replay from a time after every
/// message reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_a_publisher_forges_do_not_move_a_reader() {
    use hru_domain::EventType;
    use hru_log::Expect;
    let w = world();
    let (admin, police, log) = police_view(&w).await;
    let case = hru_domain::CaseId::random();
    for env in &sealed(&w, police, case, EventType::ReferralReceived).envelopes {
        log.appender().append_expecting(env, Expect::Any).await.unwrap();
    }
    let own = format!("hru.evt.{}.police-hru.ReferralReceived", case.0.simple());
    for forged_sequence in ["1", "18446744073709551615", "999999"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Sequence", forged_sequence);
        headers.insert("Nats-Subject", "hru.evt.x.probation.ReferralReceived");
        jetstream::new(log.client())
            .publish_with_headers(own.clone(), headers, "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    for env in &sealed(&w, police, case, EventType::ReferralReceived).envelopes {
        log.appender().append_expecting(env, Expect::Any).await.unwrap();
    }
    let stored = admin.reader().last_sequence().await.unwrap();

    let read = |reader: hru_log::Reader| async move {
        tokio::time::timeout(Duration::from_secs(10), async {
            reader
                .replay(1, &[])
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        })
        .await
        .expect("the read ends")
    };
    let all = read(admin.reader().clone()).await;
    let sequences: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=stored).collect::<Vec<_>>(),
        "every message once, in order"
    );
    assert!(
        all.iter().all(|e| !e.subject.as_str().contains("probation")),
        "nothing filed elsewhere"
    );
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = read(log.reader().clone()).await;
        if seen.last().is_some_and(|e| e.sequence == stored) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view: Vec<u64> = seen.iter().map(|e| e.sequence).collect();
    assert!(view.windows(2).all(|p| p[0] < p[1]), "the view in order: {view:?}");
    assert_eq!(view.last(), Some(&stored), "the view to its end");

    let later = jiff::Timestamp::now().as_millisecond() + 60_000;
    let none = tokio::time::timeout(Duration::from_secs(10), async {
        admin
            .reader()
            .replay_since(later, &[])
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        none.is_empty(),
        "a replay from after every message reads {} of them",
        none.len()
    );
}

/// A view just provisioned (or whose server just restarted) copies nothing until the server
/// has set up its source; until then it is not caught up, whatever lag it reports, and once it
/// says it is caught up it holds what was appended before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_whose_source_is_not_set_up_is_not_caught_up() {
    use hru_domain::EventType;
    use hru_log::Expect;
    let w = world();
    let (_admin, police, log) = police_view(&w).await;
    let batch = sealed(&w, police, hru_domain::CaseId::random(), EventType::ReferralReceived);
    let mut appended = Vec::new();
    for envelope in &batch.envelopes {
        let ack = log.appender().append_expecting(envelope, Expect::Any).await.unwrap();
        appended.push(ack.sequence);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !log.reader().caught_up().await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "the view catches up within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let view: Vec<u64> = log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .map_ok(|e| e.sequence)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(view, appended, "caught up, the view holds what was appended before");
}
