//! A police-hru node on a real nats-server: mutual TLS, the caller's party from its
//! certificate, answers from projections, refusals naming the ISA rule, and exactly one
//! AccessLogged event per call, written before the answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::Path;
use std::time::Duration;

use hru_domain::{CaseId, EventType, ProducerId, split_draft};
use hru_envelope::{Directory, PartySecrets, verify};
use hru_log::{EventLog, Expect, Producer};
use hru_node::tls::{self, CertAndKey};
use hru_node::{NodeConfig, run};
use hru_policy::{CompiledIsa, PolicySet};
use hru_testkit::NatsServer;
use hru_wire::v1 as pb;
use hru_wire::v1::case_service_client::CaseServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const PARTIES: [&str; 9] = [
    "police-hru",
    "police-control",
    "victim-advocacy",
    "probation",
    "cwp",
    "mersey-care",
    "em-vendor",
    "geofence",
    "evaluation",
];

struct World {
    _nats: NatsServer,
    dir: tempfile::TempDir,
    ca: CertAndKey,
    directory: Directory,
    secrets: Vec<PartySecrets>,
    log: EventLog,
    addr: std::net::SocketAddr,
    metrics_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    node: Option<tokio::task::JoinHandle<Result<(), hru_node::NodeError>>>,
}

async fn world() -> World {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::create_dir_all(&keys).unwrap();
    let mut directory_text = String::new();
    let mut secrets = Vec::new();
    for p in PARTIES {
        let s = PartySecrets::generate(p.parse().unwrap(), &mut rand_core::OsRng);
        directory_text.push_str(&s.directory_entry(p));
        directory_text.push('\n');
        std::fs::write(keys.join(format!("{p}.secret")), s.to_toml()).unwrap();
        secrets.push(s);
    }
    std::fs::write(policies.join("directory.toml"), &directory_text).unwrap();
    let agreement = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cheshire-hru.toml");
    std::fs::copy(agreement, policies.join("cheshire-hru.toml")).unwrap();
    let directory = Directory::from_toml(&directory_text, "directory.toml").unwrap();

    let ca = tls::new_ca("HRU test deployment CA").unwrap();
    let server_cert = tls::issue(&ca, "police-hru", &["localhost"]).unwrap();
    for (name, text) in [
        ("ca.pem", &ca.cert_pem),
        ("node.pem", &server_cert.cert_pem),
        ("node.key", &server_cert.key_pem),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config_text = format!(
        "party = \"police-hru\"\nkeys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nnats_url = {:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        keys.display().to_string(),
        policies.display().to_string(),
        dir.path().join("data").display().to_string(),
        nats.url(),
        dir.path().join("ca.pem").display().to_string(),
        dir.path().join("node.pem").display().to_string(),
        dir.path().join("node.key").display().to_string(),
    );
    let config = NodeConfig::load(&config_text, "node.toml", |_| None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = EventLog::connect(&nats.url()).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(run(config, listener, async {
        let _ = stop_rx.await;
    }));
    World {
        _nats: nats,
        dir,
        ca,
        directory,
        secrets,
        log,
        addr,
        metrics_port,
        stop: Some(stop_tx),
        node: Some(node),
    }
}

impl World {
    fn secrets(&self, party: &str) -> &PartySecrets {
        self.secrets.iter().find(|s| s.party.as_str() == party).unwrap()
    }

    async fn client(&self, party: Option<&str>) -> Result<CaseServiceClient<Channel>, tonic::transport::Error> {
        let mut tls_config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca.cert_pem))
            .domain_name("localhost");
        if let Some(p) = party {
            let cert = tls::issue(&self.ca, p, &[]).unwrap();
            tls_config = tls_config.identity(Identity::from_pem(cert.cert_pem, cert.key_pem));
        }
        let channel = Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls_config)?
            .connect()
            .await?;
        Ok(CaseServiceClient::new(channel))
    }

    async fn access_logged(&self) -> Vec<pb::AccessCore> {
        let isa_text = std::fs::read_to_string(self.dir.path().join("policies/cheshire-hru.toml")).unwrap();
        let _ = CompiledIsa::compile(&isa_text, "x", Some(&self.directory)).unwrap();
        let police = self.secrets("police-hru");
        let mut ring = hru_envelope::KeyRing::new(police);
        let mut out = Vec::new();
        for e in self.log.replay(1, &[]).await.unwrap() {
            let v = verify(&e.payload, &self.directory).unwrap();
            if v.header.event_type == EventType::KeyGranted {
                let _ = ring.ingest_grant(&v);
            } else if v.header.event_type == EventType::AccessLogged {
                let opened = ring.open(&v);
                let core = opened.sections[0].plaintext.as_ref().unwrap();
                out.push(<pb::AccessCore as prost::Message>::decode(core.as_slice()).unwrap());
            }
        }
        out
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.node.take().unwrap().await.unwrap().unwrap();
    }
}

fn request<T>(message: T, person: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("x-hru-person", person.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_answers_its_parties_and_logs_every_access() {
    let w = world().await;
    // police-hru records a stalking referral through the log (as another of its instances).
    let police = w.secrets("police-hru");
    let set = {
        let mut s = PolicySet::default();
        let text = std::fs::read_to_string(w.dir.path().join("policies/cheshire-hru.toml")).unwrap();
        s.insert(CompiledIsa::compile(&text, "cheshire-hru.toml", Some(&w.directory)).unwrap());
        s
    };
    let isa = set.iter().next().unwrap();
    let store = w.dir.path().join("writer");
    let mut producer = Producer::open(
        &store,
        ProducerId {
            party: police.party.clone(),
            instance: "desk".into(),
        },
        police.signing.clone(),
        &w.log,
        &w.directory,
    )
    .await
    .unwrap();
    let case = CaseId::random();
    let now = jiff::Timestamp::now().as_millisecond();
    let (t, sections) = split_draft(pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![3; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Congleton".into(),
            received_at_ms: now,
            out_of_hours: true,
            crime_reference: String::new(),
        }),
        identity: None,
        narrative: None,
    }));
    let batch = producer
        .sealer()
        .prepare_event(case, t, sections, now, now, isa, &w.directory, &mut rand_core::OsRng)
        .unwrap();
    producer.append(&w.log, &batch, Expect::CaseAt(0)).await.unwrap();

    // The node folds it within a second.
    let mut client = None;
    for _ in 0..50 {
        if let Ok(c) = w.client(Some("police-hru")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut police_client = client.expect("the node serves with TLS");
    let mut rows = Vec::new();
    let mut list_calls = 0;
    for _ in 0..20 {
        list_calls += 1;
        rows = police_client
            .list_cases(request(
                pb::ListCasesRequest {
                    view: "screening-queue".into(),
                    purpose: "risk-management".into(),
                },
                "PC 1234",
            ))
            .await
            .expect("police may list its screening queue")
            .into_inner()
            .rows;
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 1, "the referral is on the screening queue");
    assert_eq!(rows[0].case_id, case.0.as_bytes().to_vec());

    let got = police_client
        .get_case(request(
            pb::GetCaseRequest {
                case_id: case.0.as_bytes().to_vec(),
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.events.len(), 1);
    assert!(
        got.events[0]
            .sections
            .iter()
            .any(|s| s.name == "core" && s.refusal.is_empty())
    );

    // A command on a stale version is refused with ABORTED and the current version.
    let screening = pb::EventDraft {
        case_id: case.to_string(),
        occurred_at: String::new(),
        event: Some(pb::event_draft::Event::ScreeningCompleted(pb::ScreeningCompleted {
            core: Some(pb::ScreeningCore {
                primacy_taken: true,
                criteria: vec!["FOUR".into()],
                rationale: "fixated, repeated".into(),
            }),
        })),
    };
    let stale = police_client
        .record_event(request(
            pb::RecordEventRequest {
                draft: Some(screening.clone()),
                expected_version: 0,
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{}", stale.message());
    assert!(
        stale.message().contains(&format!("version {}", got.version)),
        "{}",
        stale.message()
    );
    let recorded = police_client
        .record_event(request(
            pb::RecordEventRequest {
                draft: Some(screening),
                expected_version: got.version,
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .expect("recorded on the current version")
        .into_inner();
    assert!(recorded.sequence > got.version);

    // Refusals: a bad field, a call the agreement does not allow, a missing person.
    let err = police_client
        .get_case(request(
            pb::GetCaseRequest {
                case_id: vec![1, 2],
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("case_id"), "{}", err.message());
    let mut vendor = w.client(Some("em-vendor")).await.unwrap();
    let err = vendor
        .list_cases(request(
            pb::ListCasesRequest {
                view: "case-board".into(),
                purpose: "monitoring".into(),
            },
            "ops",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("no [[call]] rule letting em-vendor call CaseService/ListCases"),
        "{}",
        err.message()
    );
    let err = police_client
        .list_cases(tonic::Request::new(pb::ListCasesRequest {
            view: "case-board".into(),
            purpose: "risk-management".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // No client certificate: no connection.
    let anonymous = w.client(None).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(mut c) => c
            .list_cases(request(
                pb::ListCasesRequest {
                    view: "case-board".into(),
                    purpose: "risk-management".into(),
                },
                "x",
            ))
            .await
            .is_err(),
    };
    assert!(refused, "a caller without a certificate is refused");

    // Exactly one AccessLogged per answered call (each list, the get), naming person and clause;
    // refused calls disclose nothing and log nothing.
    let logged = w.access_logged().await;
    assert_eq!(
        logged.len(),
        list_calls + 3,
        "lists, the get and two record attempts: {logged:?}"
    );
    assert!(
        logged[..list_calls]
            .iter()
            .all(|l| l.method == "CaseService/ListCases" && l.person == "PC 1234")
    );
    assert_eq!(
        logged[list_calls - 1].case_ids,
        vec![case.0.as_bytes().to_vec()],
        "the answer's cases are logged"
    );
    let get = &logged[list_calls];
    assert_eq!(get.method, "CaseService/GetCase");
    assert_eq!((get.clause.as_str(), get.purpose.as_str()), ("10.1", "risk-management"));
    // Prometheus metrics: calls by method and outcome, events folded, lag.
    let metrics = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", w.metrics_port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    };
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "hru_node_requests_total{{method=\"CaseService/ListCases\",code=\"Ok\"}} {list_calls}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("hru_node_requests_total{method=\"CaseService/RecordEvent\",code=\"Aborted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hru_node_request_seconds_count{method=\"CaseService/GetCase\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("hru_node_events_folded_total 0\n"), "{metrics}");
    w.stop().await;
}
