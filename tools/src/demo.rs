//! `hru demo`: a local nats-server, five party nodes, the geofence and the gateway, playing one
//! stalking case from referral to audit, and printing at each step what each party sees and
//! what it cannot.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures::StreamExt as _;
use futures::TryStreamExt as _;
use hru_broker::Filter;
use hru_domain::{CaseId, EventType, PartyId, ProducerId, split_draft};
use hru_envelope::{Directory, PartySecrets};
use hru_gateway::{Gateway, GatewayConfig};
use hru_log::{EventLog, Expect, PartyView, PositionLog, Producer, SharedLog as _};
use hru_node::tls;
use hru_policy::CompiledIsa;
use hru_wire::v1 as pb;
use pb::breach_service_client::BreachServiceClient;
use pb::case_service_client::CaseServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The parties running a node, the purpose their people act for, and the person acting (the
/// HRU's staff as the seeds give them: the consultant forensic psychologist is Mersey Care's,
/// the clinical practitioners CWP's).
const NODES: [(&str, &str, &str); 7] = [
    ("police-hru", "risk-management", "DS Morgan"),
    ("police-control", "breach-response", "PC 4512"),
    ("victim-advocacy", "victim-safety", "Advocate Shah"),
    ("probation", "offender-management", "PO Singh"),
    (
        "mersey-care",
        "clinical-care",
        "Dr Okafor (consultant forensic psychologist)",
    ),
    ("cwp", "clinical-care", "RMN Hughes (senior psychiatric nurse)"),
    ("evaluation", "evaluation", "Evaluation analyst"),
];
/// The victim's home in Chester and the subject's in Crewe (lat, lon).
const VICTIM_HOME: (f64, f64) = (53.1905, -2.8910);
const VICTIM_WORK: (f64, f64) = (53.2000, -2.8700);
const SUBJECT_HOME: (f64, f64) = (53.0979, -2.4416);
const TAG: &str = "tag-demo-1";
const VICTIM_DEVICE: &str = "vd-demo-1";

struct Demo {
    interactive: bool,
    step: u32,
    case: CaseId,
    log: EventLog,
    channels: Vec<(String, Channel)>,
    /// Each node's view of the log, read by the demo (an operator) to wait for delivery.
    views: Vec<(String, PartyView)>,
    isa: CompiledIsa,
    /// The log sequence of the last event recorded.
    recorded: std::cell::Cell<u64>,
}

fn offset(p: (f64, f64), north_m: f64, east_m: f64) -> (f64, f64) {
    (
        p.0 + north_m / 111_195.0,
        p.1 + east_m / (111_195.0 * p.0.to_radians().cos()),
    )
}

fn request<T>(message: T, person: &str) -> tonic::Request<T> {
    hru_wire::request_as(message, person).unwrap_or_else(|| panic!("the demo's people have ASCII names: {person:?}"))
}

fn circle(centre: (f64, f64)) -> String {
    format!(r#"{{"type":"Point","coordinates":[{},{}]}}"#, centre.1, centre.0)
}

fn purpose_of(party: &str) -> &'static str {
    NODES.iter().find(|(p, ..)| *p == party).map_or("", |n| n.1)
}

fn person_of(party: &str) -> &'static str {
    NODES.iter().find(|(p, ..)| *p == party).map_or("", |n| n.2)
}

impl Demo {
    fn channel(&self, party: &str) -> anyhow::Result<Channel> {
        self.channels
            .iter()
            .find(|(p, _)| p == party)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| anyhow!("no node for {party}"))
    }

    fn heading(&mut self, title: &str) {
        self.step += 1;
        if self.interactive {
            eprint!("\n(press Enter for step {}) ", self.step);
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        println!("\n== {}. {title} ==", self.step);
    }

    /// Record an event at `party`'s node, on the case's current version.
    async fn record(&self, party: &str, event: pb::event_draft::Event) -> anyhow::Result<u64> {
        let version = self.log.reader().case_version(self.case).await?;
        let response = CaseServiceClient::new(self.channel(party)?)
            .record_event(request(
                pb::RecordEventRequest {
                    draft: Some(pb::EventDraft {
                        case_id: self.case.to_string(),
                        occurred_at: String::new(),
                        event: Some(event),
                    }),
                    expected_version: version,
                    purpose: purpose_of(party).into(),
                },
                person_of(party),
            ))
            .await
            .map_err(|s| anyhow!("{party}: {}", s.message()))?;
        let sequence = response.into_inner().sequence;
        self.recorded.set(sequence);
        Ok(sequence)
    }

    /// Wait (up to three seconds) until the latest `event_type` recorded reached `party`'s view,
    /// when the agreement shares any of it with `party`.
    async fn delivered(&self, party: &str, event_type: EventType) -> anyhow::Result<()> {
        let shared = self
            .isa
            .audiences()
            .any(|(_, t, _, a)| t == event_type && a.members().iter().any(|m| m.as_str() == party));
        let Some((_, view)) = self.views.iter().find(|(p, _)| p == party) else {
            return Ok(());
        };
        let filter = Filter::case_events_of_type(self.case, event_type);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while shared && std::time::Instant::now() < deadline {
            if view.reader().last_sequence_of(&filter).await? >= self.recorded.get() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// What `party` sees of the case's latest `event_type`: sections read and refused.
    async fn show(&self, party: &str, event_type: EventType) -> anyhow::Result<()> {
        self.delivered(party, event_type).await?;
        let got = CaseServiceClient::new(self.channel(party)?)
            .get_case(request(
                pb::GetCaseRequest {
                    case_id: self.case.0.as_bytes().to_vec(),
                    purpose: purpose_of(party).into(),
                },
                person_of(party),
            ))
            .await;
        let events = match got {
            Ok(r) => r.into_inner().events,
            Err(s) => {
                println!("  {party:<16} refused: {}", s.message());
                return Ok(());
            }
        };
        let Some(event) = events
            .iter()
            .rev()
            .find(|e| e.header.as_ref().is_some_and(|h| h.event_type == event_type.name()))
        else {
            println!("  {party:<16} sees no {event_type}");
            return Ok(());
        };
        let read: Vec<&str> = event
            .sections
            .iter()
            .filter(|s| s.refusal.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        // The node names only what the caller may have; what the agreement withholds is read
        // from the agreement itself.
        let producer: PartyId = event
            .header
            .as_ref()
            .and_then(|h| h.producer.as_ref())
            .and_then(|p| p.party.parse().ok())
            .ok_or_else(|| anyhow!("the event names no producer"))?;
        let reader: PartyId = party.parse()?;
        let withheld: Vec<&str> = event_type
            .sections()
            .iter()
            .copied()
            .filter(|s| self.isa.may_receive(&reader, &producer, event_type, s).is_err())
            .collect();
        let mut refused: Vec<String> = event
            .sections
            .iter()
            .filter(|s| !s.refusal.is_empty())
            .map(|s| format!("{} ({})", s.name, s.refusal))
            .collect();
        if !withheld.is_empty() {
            refused.push(format!("{} (not shared with {party})", withheld.join(", ")));
        }
        println!(
            "  {party:<16} sees {event_type}: {}{}",
            if read.is_empty() {
                "nothing".to_owned()
            } else {
                read.join(", ")
            },
            if refused.is_empty() {
                String::new()
            } else {
                format!("; cannot see {}", refused.join(", "))
            }
        );
        Ok(())
    }

    async fn list(&self, party: &str, view: &str) -> anyhow::Result<Vec<String>> {
        let rows = CaseServiceClient::new(self.channel(party)?)
            .list_cases(request(
                pb::ListCasesRequest {
                    view: view.into(),
                    purpose: purpose_of(party).into(),
                },
                person_of(party),
            ))
            .await
            .map_err(|s| anyhow!("{party} {view}: {}", s.message()))?;
        Ok(rows.into_inner().rows.into_iter().map(|r| r.json).collect())
    }
}

/// The control room's page and the local OpenID Connect provider its operators sign in at
/// (`tools/web/idp.mjs`, found through `HRU_WEB_TOOLS` and `HRU_NODE_BIN` as `scripts/demo.sh`
/// sets them); the provider is stopped when this is dropped.
struct ControlRoomPage {
    url: String,
    listen: String,
    issuer: String,
    provider: std::process::Child,
}

impl ControlRoomPage {
    /// The page's address: `HRU_DEMO_PAGE_PORT` (default 8443) when free, else any free port.
    fn start(dir: &Path) -> anyhow::Result<Option<Self>> {
        let (Some(tools), Some(node)) = (std::env::var_os("HRU_WEB_TOOLS"), std::env::var_os("HRU_NODE_BIN")) else {
            println!(
                "  (no control room page: run the demo with scripts/demo.sh, which installs its identity provider)"
            );
            return Ok(None);
        };
        let free = |port: u16| {
            std::net::TcpListener::bind(("127.0.0.1", port))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        };
        let wanted = std::env::var("HRU_DEMO_PAGE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(8443);
        let page_port = free(wanted).or_else(|_| free(0))?;
        let idp_port = free(0)?;
        let url = format!("https://127.0.0.1:{page_port}");
        let config = serde_json::json!({
            "port": idp_port,
            "clients": [{
                "client_id": "control-room",
                "redirect_uris": [format!("{url}/auth/callback")],
                "post_logout_redirect_uris": [format!("{url}/signed-out")],
            }],
            "accounts": {
                "pc4512": {"name": "PC 4512", "email": "pc4512@cheshire.police.example", "hru_party": "police-control"},
                "insp-hart": {"name": "Insp. Hart", "email": "hart@cheshire.police.example", "hru_party": "police-control"},
                "ds-morgan": {"name": "DS Morgan", "email": "morgan@cheshire.police.example", "hru_party": "police-hru"},
            },
        });
        let file = dir.join("idp.json");
        std::fs::write(&file, config.to_string())?;
        let mut provider = std::process::Command::new(node)
            .arg(Path::new(&tools).join("idp.mjs"))
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the local identity provider (tools/web/idp.mjs)")?;
        let mut line = String::new();
        let stdout = provider
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the identity provider's output"))?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let issuer = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| anyhow!("the identity provider did not start: {line:?}"))?
            .to_owned();
        println!("  control room page {url}  (your browser will question the demo CA's certificate)");
        println!("    sign in at the local identity provider as pc4512 or insp-hart (police-control; any password);");
        println!("    ds-morgan (police-hru) is refused: the page serves the control centre's people only");
        Ok(Some(Self {
            url,
            listen: format!("127.0.0.1:{page_port}"),
            issuer,
            provider,
        }))
    }

    /// The node's `[page]` table.
    fn config(&self) -> String {
        format!(
            "\n[page]\nlisten = \"{}\"\npublic_url = \"{}\"\nissuer = \"{}\"\nclient_id = \"control-room\"\npurpose = \"breach-response\"\n",
            self.listen, self.url, self.issuer
        )
    }
}

impl Drop for ControlRoomPage {
    fn drop(&mut self) {
        let _ = self.provider.kill();
        let _ = self.provider.wait();
    }
}

/// Fresh keys for every party of the agreement, its directory, a CA and certificates.
fn deployment(
    dir: &Path,
    policies_dir: &Path,
) -> anyhow::Result<(Directory, CompiledIsa, Vec<PartySecrets>, hru_envelope::DeviceSecret)> {
    let policies = dir.join("policies");
    let keys = dir.join("keys");
    std::fs::create_dir_all(&policies)?;
    std::fs::create_dir_all(&keys)?;
    // Both versions of the agreement: version 2 is in force, version 1 stays for what it sealed.
    let source = policies_dir.join("cheshire-hru.toml");
    let text = std::fs::read_to_string(&source).with_context(|| format!("{}", source.display()))?;
    std::fs::write(policies.join("cheshire-hru.toml"), &text)?;
    let v2 = policies_dir.join("cheshire-hru-v2.toml");
    std::fs::copy(&v2, policies.join("cheshire-hru-v2.toml")).with_context(|| format!("{}", v2.display()))?;
    let parties: Vec<PartyId> = CompiledIsa::compile(&text, "cheshire-hru.toml", None)
        .map_err(|e| anyhow!("{e}"))?
        .parties
        .keys()
        .cloned()
        .collect();
    let mut directory_text = String::new();
    let mut secrets = Vec::new();
    for p in parties {
        let s = PartySecrets::generate(p.clone(), &mut rand::rngs::OsRng);
        directory_text.push_str(&s.directory_entry(p.as_str()));
        directory_text.push('\n');
        hru_runtime::deployment::write_private(&keys.join(format!("{p}.secret")), &s.to_toml())?;
        secrets.push(s);
    }
    // The broker's operator: creates the streams and views (and stands in here for the demo's
    // own reads of the log).
    let provisioner = PartySecrets::generate(hru_broker::PROVISIONER.parse()?, &mut rand::rngs::OsRng);
    directory_text.push_str(&provisioner.directory_entry(hru_broker::PROVISIONER));
    directory_text.push('\n');
    secrets.push(provisioner);
    // The victim's phone, paired: it reads its own alerts with its own identity.
    let phone = hru_envelope::DeviceSecret::generate(VICTIM_DEVICE.parse()?, &mut rand::rngs::OsRng);
    directory_text.push_str(&phone.directory_entry());
    directory_text.push('\n');
    hru_runtime::deployment::write_private(&keys.join(format!("device.{VICTIM_DEVICE}.secret")), &phone.to_toml())?;
    std::fs::write(policies.join("directory.toml"), &directory_text)?;
    let directory = Directory::from_toml(&directory_text, "directory.toml")?;
    let isa = hru_policy::PolicySet::load_dir(&policies, Some(&directory))
        .map_err(|e| anyhow!("{e}"))?
        .in_force("cheshire-hru", jiff::Timestamp::now().as_millisecond())
        .cloned()
        .ok_or_else(|| anyhow!("no version of the agreement is in force today"))?;
    let ca = tls::new_ca("HRU demo CA")?;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    for (party, ..) in NODES {
        let cert = tls::issue(&ca, party, &["localhost"], tls::DEFAULT_CERT_VALIDITY)?;
        std::fs::write(dir.join(format!("{party}.pem")), &cert.cert_pem)?;
        hru_runtime::deployment::write_private(&dir.join(format!("{party}.key")), &cert.key_pem)?;
    }
    Ok((directory, isa, secrets, phone))
}

/// `hru demo`: play the case (pausing for Enter between steps when `interactive`; at the end,
/// with every service still running, until a line on standard input when `hold`).
pub async fn run(policies_dir: &Path, interactive: bool, hold: bool) -> anyhow::Result<ExitCode> {
    tokio::select! {
        r = play(policies_dir, interactive, hold) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\nstopped: every service and the nats-server were shut down");
            Ok(ExitCode::from(130))
        }
    }
}

async fn play(policies_dir: &Path, interactive: bool, hold: bool) -> anyhow::Result<ExitCode> {
    let work = tempfile::tempdir()?;
    let dir = work.path();
    println!(
        "HRU Backbone demo: one stalking case, the unit's agencies, a GPS tag (working in {})",
        dir.display()
    );
    let (directory, isa, secrets, phone) = deployment(dir, policies_dir)?;
    let secret = |p: &str| secrets.iter().find(|s| s.party.as_str() == p);
    let identity = |p: &str| secret(p).map(PartySecrets::broker_identity);
    // The server enforces the authorization generated from the agreement: every service
    // connects with its party's nkey, publishes only as itself and reads only its view.
    let accounts = isa.broker_accounts(&directory).map_err(|e| anyhow!("{e}"))?;
    let server = hru_local_nats::NatsServer::builder()
        .extra_config(&hru_broker::nats_config(&isa.broker_rights(), &accounts))
        .start()?;
    let url = server.url();
    let operator = identity(hru_broker::PROVISIONER).ok_or_else(|| anyhow!("no provisioner keys"))?;
    let provisioner = hru_log::connect(&url, Some(&operator)).await?;
    hru_broker::provision(&provisioner, &isa.broker_rights(), isa.positions_max_age(), 1, 1).await?;
    hru_broker::provision_devices(&provisioner, &[VICTIM_DEVICE.to_owned()], isa.alerts_max_age(), 1).await?;
    println!(
        "  nats-server {url} enforcing the agreement's broker authorization · keys for {} parties · a deployment CA",
        secrets.len() - 1
    );

    // The police HRU, custodian of the agreement's subject-linkage key, grants it to its holders.
    if let Some(linkage) = &isa.linkage {
        let police = secret(linkage.custodian.as_str()).ok_or_else(|| anyhow!("no keys for the linkage custodian"))?;
        let police_log = PartyView::open(&url, Some(&police.broker_identity()), &police.party).await?;
        let mut police_producer = Producer::open(
            &dir.join("data-linkage"),
            ProducerId {
                party: police.party.clone(),
                instance: "linkage".into(),
            },
            police.signing.clone(),
            &police_log,
            &directory,
        )
        .await?;
        let holders: Vec<_> = linkage
            .holders
            .iter()
            .filter_map(|h| directory.party(h).map(|e| (h.clone(), e.encryption.clone())))
            .collect();
        let (_, generation) = hru_log::linkage::grant_next(
            &mut police_producer,
            &police_log,
            &directory,
            &isa.id,
            &holders,
            "first key",
            &isa,
        )
        .await?;
        println!(
            "  linkage key generation {generation} granted by {} to {}",
            linkage.custodian,
            holders.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(", ")
        );
    }

    // The control room's page, with a local identity provider its operators sign in at.
    let page = ControlRoomPage::start(dir)?;

    // The party nodes, the geofence and the gateway.
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut channels = Vec::new();
    let ca = std::fs::read_to_string(dir.join("ca.pem"))?;
    for (party, ..) in NODES {
        let config = format!(
            "party = \"{party}\"\nkeys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nnats_url = {url:?}\nbreach_heartbeat_s = 1\n\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n{}",
            dir.join("keys").display().to_string(),
            dir.join("policies").display().to_string(),
            dir.join(format!("data-{party}")).display().to_string(),
            dir.join("ca.pem").display().to_string(),
            dir.join(format!("{party}.pem")).display().to_string(),
            dir.join(format!("{party}.key")).display().to_string(),
            page.as_ref()
                .filter(|_| party == "police-control")
                .map(ControlRoomPage::config)
                .unwrap_or_default(),
        );
        let config = hru_node::NodeConfig::load(&config, party, |_| None)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        tasks.push(tokio::spawn(async move {
            let _ = hru_node::run(config, listener, async {
                let _ = rx.await;
            })
            .await;
        }));
        let tls_config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .identity(Identity::from_pem(
                std::fs::read_to_string(dir.join(format!("{party}.pem")))?,
                std::fs::read_to_string(dir.join(format!("{party}.key")))?,
            ))
            .domain_name("localhost");
        let endpoint = Channel::from_shared(format!("https://{addr}"))?.tls_config(tls_config)?;
        let mut channel = None;
        for _ in 0..100 {
            if let Ok(c) = endpoint.connect().await {
                channel = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        channels.push((
            party.to_owned(),
            channel.ok_or_else(|| anyhow!("{party}'s node did not start"))?,
        ));
        println!("  node {party:<16} https://{addr}");
    }
    let geofence_config = hru_geofence::service::GeofenceConfig::load(
        &format!(
            "keys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nnats_url = {url:?}\n",
            dir.join("keys").display().to_string(),
            dir.join("policies").display().to_string(),
            dir.join("data-geofence").display().to_string(),
        ),
        "geofence",
        |_| None,
    )?;
    let stats = Arc::new(hru_geofence::service::Stats::default());
    let (geofence_stop, geofence_rx) = tokio::sync::oneshot::channel::<()>();
    let geofence = tokio::spawn(hru_geofence::service::run(geofence_config, stats.clone(), async {
        let _ = geofence_rx.await;
    }));
    let log = EventLog::open(&url, Some(&operator), 1).await?;
    let positions = PositionLog::publisher(&url, identity("em-vendor").as_ref()).await?;
    let vendor = secret("em-vendor").ok_or_else(|| anyhow!("the agreement has no em-vendor"))?;
    let mut gateway = Gateway::new(
        ProducerId {
            party: vendor.party.clone(),
            instance: "gw-demo".into(),
        },
        vendor.signing.clone(),
        isa.clone(),
        directory.clone(),
        positions,
        GatewayConfig::default(),
    );
    println!("  geofence and EM gateway running");

    let mut views = Vec::new();
    for (party, ..) in NODES {
        views.push((
            party.to_owned(),
            PartyView::open(&url, Some(&operator), &party.parse()?).await?,
        ));
    }
    let mut demo = Demo {
        interactive,
        step: 0,
        case: CaseId::random(),
        log,
        channels,
        views,
        isa: isa.clone(),
        recorded: std::cell::Cell::new(0),
    };

    demo.heading("Police record a stalking referral");
    demo.record(
        "police-hru",
        pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore {
                // Left empty: the node derives it from the subject's identity (clause 3.6).
                subject_ref: Vec::new(),
                behaviours: vec![pb::Behaviour::Stalking as i32, pb::Behaviour::Online as i32],
                area: "Cheshire West".into(),
                received_at_ms: jiff::Timestamp::now().as_millisecond(),
                out_of_hours: true,
                crime_reference: "CH/2026/11/0042".into(),
            }),
            identity: Some(pb::ReferralIdentity {
                subject: Some(pb::PersonIdentity {
                    full_name: "Sam Example".into(),
                    date_of_birth: "1988-04-12".into(),
                    ..Default::default()
                }),
                victim: Some(pb::PersonIdentity {
                    full_name: "Alex Victim".into(),
                    ..Default::default()
                }),
            }),
            narrative: Some(pb::ReferralNarrative {
                text: "Follows the victim to work; dozens of messages a day since October.".into(),
            }),
        }),
    )
    .await?;
    println!("  case {}", demo.case);
    for (party, ..) in NODES {
        demo.show(party, EventType::ReferralReceived).await?;
    }

    demo.heading("Screening: the HRU takes primacy");
    demo.record(
        "police-hru",
        pb::event_draft::Event::ScreeningCompleted(pb::ScreeningCompleted {
            core: Some(pb::ScreeningCore {
                primacy_taken: true,
                criteria: vec!["FOUR: fixated, obsessive, unwanted, repeated".into()],
                rationale: "Escalating contact; victim in fear.".into(),
            }),
            figures: None,
        }),
    )
    .await?;
    for party in ["police-hru", "probation", "victim-advocacy"] {
        demo.show(party, EventType::ScreeningCompleted).await?;
    }

    demo.heading("Risk assessment by Mersey Care's consultant forensic psychologist");
    let level = pb::RiskLevel::High as i32;
    demo.record(
        "mersey-care",
        pb::event_draft::Event::RiskAssessed(pb::RiskAssessed {
            summary: Some(pb::RiskSummary {
                tool: "SRP".into(),
                violence: level,
                persistence: level,
                recurrence: level,
                psychosocial_harm: level,
                escalation: level,
                overall: level,
                assessed_at_ms: jiff::Timestamp::now().as_millisecond(),
            }),
            clinical: Some(pb::ClinicalNotes {
                formulation: "Rejected-type stalker; rumination after separation.".into(),
            }),
        }),
    )
    .await?;
    for party in ["mersey-care", "cwp", "police-hru", "probation", "victim-advocacy"] {
        demo.show(party, EventType::RiskAssessed).await?;
    }

    demo.heading("An interim Stalking Protection Order with a GPS tag, zones and victim proximity");
    let now = jiff::Timestamp::now().as_millisecond();
    demo.record(
        "police-hru",
        pb::event_draft::Event::OrderIssued(pb::OrderIssued {
            core: Some(pb::OrderCore {
                order_id: uuid::Uuid::now_v7().as_bytes().to_vec(),
                kind: pb::OrderKind::SpoInterim as i32,
                conditions: vec![
                    "no contact".into(),
                    "exclusion: victim's home and work".into(),
                    "curfew 7pm-7am".into(),
                ],
                tag_required: true,
                issued_at_ms: now,
                expires_at_ms: now + 90 * 86_400_000,
            }),
        }),
    )
    .await?;
    // The vendor fits the tag from its own system, with its own nkey.
    let vendor_log = PartyView::open(&url, Some(&vendor.broker_identity()), &vendor.party).await?;
    let mut vendor_producer = Producer::open(
        &dir.join("data-em-vendor"),
        ProducerId {
            party: vendor.party.clone(),
            instance: "fitting".into(),
        },
        vendor.signing.clone(),
        &vendor_log,
        &directory,
    )
    .await?;
    let (t, sections) = split_draft(pb::event_draft::Event::TagFitted(pb::TagFitted {
        core: Some(pb::TagCore {
            tag_id: TAG.into(),
            order_id: uuid::Uuid::now_v7().as_bytes().to_vec(),
            victim_device_id: VICTIM_DEVICE.into(),
            at_ms: now,
            reason: "interim SPO".into(),
        }),
    }));
    let batch = vendor_producer.sealer().prepare_event(
        demo.case,
        t,
        sections,
        now,
        now,
        &isa,
        &directory,
        &mut rand::rngs::OsRng,
    )?;
    vendor_producer.append(&vendor_log, &batch, Expect::Any).await?;
    let zone = |n: u128, kind: pb::ZoneKind, centre, radius: f64, schedule: Vec<pb::WeeklyWindow>, label: &str| {
        pb::event_draft::Event::ZoneDefined(pb::ZoneDefined {
            core: Some(pb::ZoneCore {
                zone_id: uuid::Uuid::from_u128(0xd000 + n).as_bytes().to_vec(),
                version: 1,
                kind: kind as i32,
                tag_id: TAG.into(),
                geojson: circle(centre),
                radius_m: radius,
                schedule,
                exit_buffer_m: 25.0,
                label: label.into(),
            }),
        })
    };
    demo.record(
        "police-hru",
        zone(1, pb::ZoneKind::Exclusion, VICTIM_HOME, 250.0, vec![], "victim's home"),
    )
    .await?;
    demo.record(
        "police-hru",
        zone(2, pb::ZoneKind::Exclusion, VICTIM_WORK, 150.0, vec![], "victim's work"),
    )
    .await?;
    // The curfew is on now, whatever the time of the demo: a window from an hour ago.
    let london = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Europe/London")?);
    let start = london.checked_sub(jiff::Span::new().hours(1))?;
    let day = match start.weekday() {
        jiff::civil::Weekday::Monday => pb::Weekday::Monday,
        jiff::civil::Weekday::Tuesday => pb::Weekday::Tuesday,
        jiff::civil::Weekday::Wednesday => pb::Weekday::Wednesday,
        jiff::civil::Weekday::Thursday => pb::Weekday::Thursday,
        jiff::civil::Weekday::Friday => pb::Weekday::Friday,
        jiff::civil::Weekday::Saturday => pb::Weekday::Saturday,
        jiff::civil::Weekday::Sunday => pb::Weekday::Sunday,
    };
    let window = pb::WeeklyWindow {
        day: day as i32,
        start_minute: u32::try_from(i32::from(start.hour()) * 60 + i32::from(start.minute())).unwrap_or(0),
        duration_minutes: 12 * 60,
    };
    demo.record(
        "police-hru",
        zone(
            3,
            pb::ZoneKind::Inclusion,
            SUBJECT_HOME,
            120.0,
            vec![window],
            "curfew address",
        ),
    )
    .await?;
    demo.record(
        "police-hru",
        pb::event_draft::Event::ProximityRuleSet(pb::ProximityRuleSet {
            core: Some(pb::ProximityCore {
                rule_id: uuid::Uuid::from_u128(0xd100).as_bytes().to_vec(),
                tag_id: TAG.into(),
                victim_device_id: VICTIM_DEVICE.into(),
                warning_m: 1_000.0,
                breach_m: 200.0,
                max_victim_fix_age_s: 300,
            }),
        }),
    )
    .await?;
    for party in ["police-hru", "police-control", "probation", "victim-advocacy"] {
        demo.show(party, EventType::ZoneDefined).await?;
    }

    demo.heading("The victim's advocate records a safety plan");
    demo.record(
        "victim-advocacy",
        pb::event_draft::Event::SafetyPlanUpdated(pb::SafetyPlanUpdated {
            victim: Some(pb::SafetyPlan {
                plan: "Panic alarm fitted; route to work varied; alerts to the victim's phone.".into(),
                measures: vec!["panic alarm".into(), "proximity alerts".into()],
                next_contact_due_ms: jiff::Timestamp::now().as_millisecond() + 7 * 86_400_000,
            }),
            identity: Some(pb::VictimIdentity {
                victim: Some(pb::PersonIdentity {
                    full_name: "Alex Victim".into(),
                    ..Default::default()
                }),
                victim_device_id: VICTIM_DEVICE.into(),
            }),
            figures: None,
        }),
    )
    .await?;
    for party in ["victim-advocacy", "police-hru", "probation", "cwp"] {
        demo.show(party, EventType::SafetyPlanUpdated).await?;
    }

    demo.heading("The tag heads for the victim's home during curfew");
    let phone = hru_log::DeviceAlerts::open(&url, &phone.nats_seed, VICTIM_DEVICE).await?;
    let mut stream = BreachServiceClient::new(demo.channel("police-control")?)
        .stream_breaches(request(
            pb::StreamBreachesRequest {
                resume_token: String::new(),
                purpose: "breach-response".into(),
            },
            "PC 4512",
        ))
        .await
        .map_err(|s| anyhow!("control room stream: {}", s.message()))?
        .into_inner();
    while !stats.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fix = |seq: u64, p: (f64, f64), at: i64| pb::PositionFix {
        fix_seq: seq,
        device_time_ms: at,
        received_at_ms: at + 150,
        position: Some(pb::LatLon { lat: p.0, lon: p.1 }),
        accuracy_m: 8.0,
        source: pb::FixSource::Gps as i32,
        battery_percent: 74,
        strap: pb::StrapState::Intact as i32,
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut proximity = None;
    let wanted = [
        "BREACH_KIND_CURFEW",
        "BREACH_KIND_PROXIMITY_WARNING",
        "BREACH_KIND_PROXIMITY",
        "BREACH_KIND_EXCLUSION",
    ];
    for (i, metres) in [3_000.0, 1_800.0, 900.0, 600.0, 300.0, 120.0, 80.0]
        .into_iter()
        .enumerate()
    {
        let at = jiff::Timestamp::now().as_millisecond();
        gateway.push(VICTIM_DEVICE, true, fix(i as u64 + 1, VICTIM_HOME, at));
        gateway.push(TAG, false, fix(i as u64 + 1, offset(VICTIM_HOME, metres, 0.0), at));
        gateway.flush(at).await?;
        println!("  tag fix {:>5} m from the victim's home", metres);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, stream.next()).await {
            let Some(b) = m.breach else { continue };
            let kind = pb::BreachKind::try_from(b.kind)
                .map_or("?", |k| k.as_str_name())
                .to_owned();
            let state = pb::BreachState::try_from(b.state).map_or("?", |s| s.as_str_name());
            println!(
                "    control room ← {kind} {state} (distance {:.0} m){}",
                b.distance_m,
                if b.late { ", late" } else { "" }
            );
            if kind == "BREACH_KIND_PROXIMITY" && proximity.is_none() {
                proximity = Some(b.breach_id.clone());
            }
            seen.insert(kind);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The phone, with its own identity, reads every alert its stream holds, in order, once.
    for alert in phone.after(0).await? {
        let receipt = format!("{{\"alert_sequence\":{}}}", alert.sequence);
        phone
            .receipt(&format!("receipt:{}", alert.sequence), receipt.into())
            .await?;
        match hru_geofence::service::verify_alert(&alert.payload, &directory) {
            Ok(a) => println!(
                "    victim's phone ← signed alert: {} at {} m",
                a.kind().as_str_name(),
                a.distance_m
            ),
            Err(e) => println!("    victim's phone ← an alert that does not verify: {e}"),
        }
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|k| !seen.contains(*k)).collect();
    if !missing.is_empty() {
        println!("  (not raised: {})", missing.join(", "));
    }

    demo.heading("The control room acknowledges the proximity breach");
    match proximity {
        Some(id) => {
            let ack = BreachServiceClient::new(demo.channel("police-control")?)
                .acknowledge(request(
                    pb::AcknowledgeRequest {
                        breach_id: id,
                        operator: "PC 4512".into(),
                        action: "units dispatched to the victim's home".into(),
                        purpose: "breach-response".into(),
                    },
                    "PC 4512",
                ))
                .await
                .map_err(|s| anyhow!("acknowledge: {}", s.message()))?
                .into_inner();
            println!("  acknowledged in {} ms: units dispatched", ack.response_time_ms);
        }
        None => println!("  no proximity breach to acknowledge"),
    }
    for party in ["police-hru", "victim-advocacy", "probation"] {
        demo.show(party, EventType::BreachAcknowledged).await?;
    }

    demo.heading("A therapeutic intervention completes; quarterly clinical reviews fall due");
    let completed = jiff::Timestamp::now().as_millisecond() - 80 * 86_400_000;
    demo.record(
        "cwp",
        pb::event_draft::Event::InterventionCompleted(pb::InterventionCompleted {
            core: Some(pb::InterventionCore {
                intervention_id: uuid::Uuid::now_v7().as_bytes().to_vec(),
                kind: pb::InterventionKind::Therapeutic as i32,
                at_ms: completed,
                outcome: "completed".into(),
            }),
        }),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for row in demo.list("cwp", "review-schedule").await? {
        let v: serde_json::Value = serde_json::from_str(&row)?;
        let due = v["review"]["due_at_ms"]
            .as_i64()
            .and_then(|t| jiff::Timestamp::from_millisecond(t).ok())
            .map(|t| t.strftime("%Y-%m-%d").to_string())
            .unwrap_or_default();
        println!(
            "  cwp review {} due {due}: {}",
            v["review"]["review_number"],
            v["status"].as_str().unwrap_or("?")
        );
    }
    // The evaluators' view: pseudonymous, followed from the completed intervention.
    for row in demo.list("evaluation", "outcomes").await? {
        let v: serde_json::Value = serde_json::from_str(&row)?;
        let window = |w: &serde_json::Value| match w.as_bool() {
            Some(true) => "reoffended",
            Some(false) => "no reoffence",
            None => "window still open",
        };
        println!(
            "  evaluation (pseudonymous): interventions {}, 6 months after the intervention: {}, 12 months: {}",
            v["interventions_completed"],
            window(&v["reoffence_within_6m"]),
            window(&v["reoffence_within_12m"])
        );
    }
    for row in demo.list("victim-advocacy", "advocacy").await? {
        let v: serde_json::Value = serde_json::from_str(&row)?;
        println!(
            "  victim-advocacy: {} alerts sent, {} contacts due",
            v["row"]["alerts"].as_array().map_or(0, Vec::len),
            v["row"]["contacts_due"].as_array().map_or(0, Vec::len)
        );
    }

    demo.heading("Audit: the whole log, with public keys only");
    let mut entries = demo.log.reader().replay(1, &[]).await?;
    let set = hru_policy::PolicySet::load_dir(&dir.join("policies"), Some(&directory)).map_err(|e| anyhow!("{e}"))?;
    let mut auditor = hru_audit::Auditor::new(&directory, &set);
    while let Some(e) = entries.try_next().await? {
        auditor.observe(e.sequence, e.subject.as_str(), &e.payload, e.stored);
    }
    let report = auditor.finish();
    let police = secret("police-hru").ok_or_else(|| anyhow!("no police-hru"))?;
    let set = Arc::new(set);
    let read = hru_reader::ReadPath::new(directory.clone(), set.clone(), hru_envelope::KeyRing::new(police));
    let mut access = hru_audit::AccessReader::new(read, set, demo.case);
    let mut entries = demo
        .log
        .reader()
        .replay(1, &hru_audit::AccessReader::subjects())
        .await?;
    while let Some(e) = entries.try_next().await? {
        access.observe(e.sequence, e.subject.as_str(), &e.payload, e.stored);
    }
    let mut by_party: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &access.records {
        *by_party.entry(r.access.party.to_string()).or_default() += 1;
    }
    println!(
        "  access log for the case: {} records ({})",
        access.records.len(),
        by_party
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if report.findings.is_empty() {
        println!("  audit: {} envelopes checked, no findings", report.checked);
    } else {
        for f in &report.findings {
            println!("  finding #{} {}: {}", f.sequence, f.kind.name(), f.detail);
        }
        println!(
            "  audit: {} envelopes checked, {} findings",
            report.checked,
            report.findings.len()
        );
    }

    demo.heading("The evaluation report, from the evaluators' own node");
    let rows: Vec<hru_projection::OutcomeRow> = demo
        .list("evaluation", "outcomes")
        .await?
        .iter()
        .map(|row| serde_json::from_str(row))
        .collect::<Result<_, _>>()?;
    let now = jiff::Timestamp::now();
    let out = std::env::temp_dir().join(format!("hru-demo-report-{}", now.strftime("%Y%m%dT%H%M%SZ")));
    let written = hru_report::write(
        &rows,
        &hru_report::Heading {
            period: "the demo's case load",
            at_ms: now.as_millisecond(),
            party: "evaluation",
        },
        &out,
    )?;
    println!(
        "  {} referral(s): {} tables as CSV (small numbers shown as <5), {} charts, the pseudonymised extract",
        rows.len(),
        written.tables,
        written.charts
    );
    println!("  evaluation report: {}", written.index.display());

    if hold {
        if let Some(page) = &page {
            println!("\n  The control room's page is still served at {}", page.url);
        }
        println!("  Every service is still running: press Enter to stop the demo.");
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    }
    for stop in stops {
        let _ = stop.send(());
    }
    let _ = geofence_stop.send(());
    for t in tasks {
        let _ = t.await;
    }
    let _ = geofence.await;
    drop(server);
    println!("\nDemo done: every party saw exactly what the Cheshire HRU agreement gives it, and the log proves it.");
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(hru_runtime::EXIT_FINDINGS)
    })
}
