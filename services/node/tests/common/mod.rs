//! A deployment for node tests: a real nats-server, every party's keys, the Cheshire agreement,
//! a deployment CA, and nodes started in-process.

#![allow(dead_code)] // each test file uses part of it

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::path::Path;
use std::time::Duration;

use hru_domain::{CaseId, EventType, ProducerId, split_draft};
use hru_envelope::{Directory, PartySecrets, verify};
use hru_log::{EventLog, Expect, PartyView, Producer};
use hru_node::tls::{self, CertAndKey};
use hru_node::{NodeConfig, run};
use hru_policy::{CompiledIsa, PolicySet};
use hru_testkit::NatsServer;
use hru_wire::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub const PARTIES: [&str; 9] = [
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

pub struct World {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    pub ca: CertAndKey,
    pub directory: Directory,
    pub secrets: Vec<PartySecrets>,
    pub set: PolicySet,
    pub log: EventLog,
    /// The provisioner's broker identity (full rights), which the test acts as.
    pub provisioner: hru_log::BrokerIdentity,
}

/// A node running in this process.
pub struct Node {
    pub addr: std::net::SocketAddr,
    pub metrics_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), hru_node::NodeError>>>,
}

/// A deployment whose nats-server enforces the authorization generated from the agreement:
/// nodes connect with their party's nkey and read only their view; the test itself acts as the
/// provisioner (full rights), which created the streams and views.
pub async fn world() -> World {
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
    let provisioner = PartySecrets::generate(hru_broker::PROVISIONER.parse().unwrap(), &mut rand_core::OsRng);
    directory_text.push_str(&provisioner.directory_entry(hru_broker::PROVISIONER));
    directory_text.push('\n');
    std::fs::write(policies.join("directory.toml"), &directory_text).unwrap();
    let agreement = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cheshire-hru.toml");
    std::fs::copy(&agreement, policies.join("cheshire-hru.toml")).unwrap();
    let directory = Directory::from_toml(&directory_text, "directory.toml").unwrap();
    let mut set = PolicySet::default();
    let text = std::fs::read_to_string(&agreement).unwrap();
    set.insert(CompiledIsa::compile(&text, "cheshire-hru.toml", Some(&directory)).unwrap());
    let ca = tls::new_ca("HRU test deployment CA").unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let isa = set.iter().next().unwrap();
    let accounts = isa.broker_accounts(&directory).unwrap();
    let nats = NatsServer::builder()
        .extra_config(&hru_broker::nats_config(&isa.broker_rights(), &accounts))
        .start()
        .unwrap();
    let identity = hru_envelope::PartySecrets::broker_identity(&provisioner);
    let log = EventLog::open(&nats.url(), Some(&identity), 1).await.unwrap();
    hru_broker::provision(&log.client(), &isa.broker_rights(), isa.positions_max_age(), 1, 1)
        .await
        .unwrap();
    World {
        nats,
        dir,
        ca,
        directory,
        secrets,
        set,
        log,
        provisioner: identity,
    }
}

pub use hru_testkit::free_port;

impl World {
    pub fn secrets(&self, party: &str) -> &PartySecrets {
        self.secrets.iter().find(|s| s.party.as_str() == party).unwrap()
    }

    /// Wait (up to five seconds) until `party`'s view holds a message on `subject`: what another
    /// party's node wrote reaches a node once its view has sourced it.
    pub async fn wait_in_view(&self, party: &str, filter: &hru_broker::Filter) {
        let view = PartyView::open(&self.nats.url(), Some(&self.provisioner), &party.parse().unwrap())
            .await
            .unwrap();
        for _ in 0..250 {
            if view.reader().last_sequence_of(filter).await.unwrap() > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{party}'s view holds nothing on {filter}");
    }

    pub fn isa(&self) -> &CompiledIsa {
        self.set.iter().next().unwrap()
    }

    /// Start `party`'s node; `extra` is appended to its TOML config.
    pub async fn node(&self, party: &str, extra: &str) -> Node {
        let cert = tls::issue(&self.ca, party, &["localhost"], tls::DEFAULT_CERT_VALIDITY).unwrap();
        let d = self.dir.path();
        std::fs::write(d.join(format!("{party}.pem")), &cert.cert_pem).unwrap();
        std::fs::write(d.join(format!("{party}.key")), &cert.key_pem).unwrap();
        let metrics_port = free_port();
        let config_text = format!(
            "party = \"{party}\"\nkeys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nnats_url = {:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nbreach_heartbeat_s = 1\n{extra}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            d.join("keys").display().to_string(),
            d.join("policies").display().to_string(),
            d.join(format!("data-{party}")).display().to_string(),
            self.nats.url(),
            d.join("ca.pem").display().to_string(),
            d.join(format!("{party}.pem")).display().to_string(),
            d.join(format!("{party}.key")).display().to_string(),
        );
        let config = NodeConfig::load(&config_text, "node.toml", |_| None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(config, listener, async {
            let _ = stop_rx.await;
        }));
        Node {
            addr,
            metrics_port,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// A TLS channel to `node` as `party` (no client certificate when none).
    pub async fn channel(&self, node: &Node, party: Option<&str>) -> Result<Channel, tonic::transport::Error> {
        let mut tls_config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca.cert_pem))
            .domain_name("localhost");
        if let Some(p) = party {
            let cert = tls::issue(&self.ca, p, &[], tls::DEFAULT_CERT_VALIDITY).unwrap();
            tls_config = tls_config.identity(Identity::from_pem(cert.cert_pem, cert.key_pem));
        }
        let mut last = None;
        for _ in 0..50 {
            match Channel::from_shared(format!("https://{}", node.addr))
                .unwrap()
                .tls_config(tls_config.clone())?
                .connect()
                .await
            {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap())
    }

    /// A producer of `party` writing straight to the log (another instance of that party).
    pub async fn producer(&self, party: &str) -> Producer {
        let s = self.secrets(party);
        Producer::open(
            &self.dir.path().join(format!("writer-{party}")),
            ProducerId {
                party: s.party.clone(),
                instance: "desk".into(),
            },
            s.signing.clone(),
            &self.log,
            &self.directory,
        )
        .await
        .unwrap()
    }

    /// Seal and append one event of `party` to `case`.
    pub async fn record(&self, producer: &mut Producer, case: CaseId, event: pb::event_draft::Event) -> u64 {
        let now = jiff::Timestamp::now().as_millisecond();
        let (t, sections) = split_draft(event);
        let batch = producer
            .sealer()
            .prepare_event(
                case,
                t,
                sections,
                now,
                now,
                self.isa(),
                &self.directory,
                &mut rand_core::OsRng,
            )
            .unwrap();
        *producer
            .append(&self.log, &batch, Expect::Any)
            .await
            .unwrap()
            .last()
            .unwrap()
    }

    /// Every AccessLogged record police-hru (the DPO's party) can read, in log order, with the
    /// key ring its node has: its long-term keys and the period keys the node keeps (grants may
    /// be sealed to either).
    pub async fn access_logged(&self) -> Vec<pb::AccessCore> {
        let keys = self.dir.path().join("keys");
        let mut ring = hru_runtime::deployment::key_ring(&keys, &"police-hru".parse().unwrap()).unwrap();
        let mut out = Vec::new();
        for e in self
            .log
            .reader()
            .replay(
                1,
                &[hru_broker::Filter::all_key_grants(), hru_broker::Filter::all_access()],
            )
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
        {
            let v = verify(&e.payload, &self.directory).unwrap();
            if v.header.event_type == EventType::KeyGranted {
                // A grant police-hru cannot open would leave what it seals unreadable: say which.
                if let Err(e) = ring.ingest_grant(&v) {
                    panic!("police-hru cannot open the grant of {}: {e}", v.header.producer);
                }
            } else if v.header.event_type == EventType::AccessLogged {
                let opened = ring.open(&v);
                let core = opened.sections[0].plaintext.as_ref().unwrap();
                out.push(<pb::AccessCore as prost::Message>::decode(core.as_slice()).unwrap());
            }
        }
        out
    }
}

impl Node {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

pub fn request<T>(message: T, person: &str) -> tonic::Request<T> {
    hru_wire::request_as(message, person).unwrap()
}

/// A stalking referral with identity and narrative.
pub fn referral(subject: u8) -> pb::event_draft::Event {
    pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![subject; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Congleton".into(),
            received_at_ms: jiff::Timestamp::now().as_millisecond(),
            out_of_hours: true,
            crime_reference: String::new(),
        }),
        identity: Some(pb::ReferralIdentity {
            subject: Some(pb::PersonIdentity {
                full_name: "Sam Subject".into(),
                date_of_birth: "1980-02-03".into(),
                ..Default::default()
            }),
            victim: Some(pb::PersonIdentity {
                full_name: "Vic Tim".into(),
                ..Default::default()
            }),
        }),
        narrative: Some(pb::ReferralNarrative {
            text: "Repeated unwanted contact at home and work.".into(),
        }),
    })
}
