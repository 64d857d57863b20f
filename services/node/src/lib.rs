//! A party's node (DESIGN §9, §10): folds the log into the party's projections and serves
//! `CaseService`, `PartnerService`, `SubscriptionService`, `BreachService` and `AuditService`
//! over gRPC with mutual TLS. The caller's party comes from its certificate;
//! every call is checked against the agreement and logged as an AccessLogged event before the
//! answer leaves; if the access log cannot be written, nothing is answered.

mod access;
mod audit_service;
mod case_service;
pub mod config;
mod decide;
mod figures;
mod geofence_watch;
mod linkage;
pub mod metrics;
mod page;
pub mod partner;
mod streams;
pub mod tls;
pub mod views;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hru_domain::{PartyId, ProducerId};
use hru_envelope::PartySecrets;
use hru_log::periods::{self, PeriodHolder};
use hru_log::{PartyView, Producer, SharedLog as _};
use hru_projection::{Projector, Store};
use hru_runtime::{Deployment, Tasks};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

pub use access::PERSON_HEADER;
pub use case_service::CaseApi;
pub use config::NodeConfig;
pub use views::View;

/// Every gRPC service a node serves (besides health and reflection).
pub const SERVICES: [&str; 5] = [
    "hru.v1.CaseService",
    "hru.v1.PartnerService",
    "hru.v1.SubscriptionService",
    "hru.v1.BreachService",
    "hru.v1.AuditService",
];

/// Why the node stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Configuration, keys or policies are wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] hru_log::LogError),
    /// The producer store failed.
    #[error(transparent)]
    Store(#[from] hru_log::StoreError),
    /// The projection store failed.
    #[error(transparent)]
    Projection(#[from] hru_projection::ProjectionError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(String),
}

fn config_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Config(e.to_string())
}

/// What every request handler shares.
pub(crate) struct Shared {
    pub(crate) party: PartyId,
    pub(crate) deployment: Deployment,
    /// The directory grants are sealed with: the deployment's, with the period keys each party
    /// last published on the log.
    pub(crate) sealing: std::sync::RwLock<Arc<hru_envelope::Directory>>,
    /// This party's period chains (decision 010).
    pub(crate) periods: tokio::sync::Mutex<PeriodHolder>,
    /// Set when a retention sweep swapped in a new projection store: the fold follows again
    /// from its checkpoint.
    pub(crate) refold: std::sync::atomic::AtomicBool,
    /// Where the projection stores live.
    pub(crate) stores: Stores,
    /// The party's secret key files (read again to build a new key ring).
    pub(crate) keys_dir: std::path::PathBuf,
    pub(crate) log: PartyView,
    pub(crate) producer: tokio::sync::Mutex<Producer>,
    pub(crate) projector: Mutex<Projector>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) secrets: PartySecrets,
    /// The newest subject-linkage key this party holds, and when it was read (decision 020).
    pub(crate) linkage: tokio::sync::Mutex<Option<(hru_envelope::LinkageKey, std::time::Instant)>>,
    pub(crate) views: Vec<View>,
    pub(crate) partners: std::collections::BTreeMap<PartyId, String>,
    pub(crate) client_tls: ClientTlsConfig,
    /// The CA certificates (DER) allowed to issue each party's certificates: its own, as the
    /// directory lists it, else the deployment CA of `[tls] ca`.
    pub(crate) party_cas: std::collections::HashMap<PartyId, Vec<Vec<u8>>>,
    /// The deployment CA's certificates (DER), for parties the directory lists no CA for.
    pub(crate) deployment_cas: Vec<Vec<u8>>,
    pub(crate) breach_heartbeat_s: u64,
    /// Whether the geofence is watching, as this node judges from its heartbeats.
    pub(crate) geofence: geofence_watch::Watch,
    /// Set when the node is stopping: streams end.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    /// The log sequence of this node's latest append: reads wait until the view holds it.
    pub(crate) appended: std::sync::atomic::AtomicU64,
    /// Open streams per calling party, and how many one party may hold.
    pub(crate) streams: Arc<Mutex<std::collections::HashMap<PartyId, usize>>>,
    pub(crate) max_streams_per_party: usize,
    /// Probation's delivery units (`delivery_units`): unit → areas.
    pub(crate) delivery_units: std::collections::BTreeMap<String, Vec<String>>,
}

fn read(path: &std::path::Path) -> Result<String, NodeError> {
    std::fs::read_to_string(path).map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))
}

/// Run the node until `shutdown` resolves: the projection loop and the gRPC server on
/// `listener`; returns once both have stopped.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let party: PartyId = config.party.parse().map_err(config_err)?;
    let deployment = Deployment::load(&config.policies_dir).map_err(config_err)?;
    let secrets = hru_runtime::deployment::secrets(&config.keys_dir, &party).map_err(config_err)?;
    // The node connects with its party's nkey and reads only its view stream, as the generated
    // broker permissions allow.
    let identity = secrets.broker_identity();
    let log = PartyView::open(&config.nats_url, Some(&identity), &party).await?;
    // The data directory holds plaintext (projections) and epoch keys (the producer store).
    hru_envelope::create_private_dir(&config.data_dir)
        .map_err(|e| config_err(format!("data_dir {}: {e}", config.data_dir.display())))?;
    let producer_id = ProducerId {
        party: party.clone(),
        instance: config.instance.clone(),
    };
    let mut producer = Producer::open(
        &config.data_dir.join("producer"),
        producer_id,
        secrets.signing.clone(),
        &log,
        &deployment.directory,
    )
    .await?;
    // A node that was down when an epoch's retention ended destroys its key before serving:
    // the producer's epoch keys, then the period secrets its party was granted under.
    let isa = deployment.in_force_now().map_err(config_err)?;
    destroy_expired(&mut producer, &log, isa, &deployment.directory).await?;
    let now = jiff::Timestamp::now().as_millisecond();
    let periods_file = config
        .periods_file
        .clone()
        .unwrap_or_else(|| hru_runtime::deployment::periods_path(&config.keys_dir, &party));
    let mut periods = PeriodHolder::open(&periods_file, &party)?;
    for d in periods::keep(&mut periods, &mut producer, &log, isa, &deployment.directory, now).await? {
        tracing::info!(class = %d.class, from = %d.from, to = %d.to, "period secrets destroyed: their retention has ended");
    }
    let sealing = periods::directory_with_periods(log.reader(), &deployment.directory).await?;
    let role = deployment
        .policies
        .iter()
        .find_map(|isa| isa.parties.get(&party).map(|p| p.role))
        .ok_or_else(|| NodeError::Config(format!("key `party`: {party} is not a party of any agreement")))?;
    let views = View::for_role(role);
    let stores = Stores::open(&config.data_dir)?;
    let ring = || -> Result<hru_envelope::KeyRing, NodeError> {
        hru_runtime::deployment::key_ring(&config.keys_dir, &party).map_err(config_err)
    };
    let read_path = |ring: hru_envelope::KeyRing| {
        hru_reader::ReadPath::new(
            deployment.directory.clone(),
            Arc::new(deployment.policies.clone()),
            ring.with_periods(periods.keys(), &periods::published_through(now)),
        )
    };
    let calendar = isa.hours.clone();
    let mut projector = Projector::new(
        Store::open(&stores.current())?,
        View::projections(&views, calendar.as_ref()),
        read_path(ring()?),
    )?;
    // What its projections derived from sections whose retention ended while the node was
    // down is forgotten before it serves: they are folded again from the log into a new store
    // without those sections, and the old store's files are removed (sled keeps old values in
    // them).
    // Nothing is changed in the old store first: a crash before the switch leaves it as it was,
    // and the next start forgets again.
    projector.read_path_mut().ring_mut().destroy_expired(now);
    // A legal hold granted after the store folded the events it opens: folded again with it.
    let held = hru_log::holds::held_grants(log.reader()).await?;
    if projector.forgetting_due(now)? || projector.holds_due(held.last().map(|e| e.sequence))? {
        drop(projector);
        projector = fresh_projector(
            &stores,
            (&views, calendar.as_ref()),
            read_path(ring()?),
            &log,
            &held,
            now,
        )
        .await?;
        stores.switch()?;
        tracing::info!(
            "projections folded again: without the sections erased under retention, with those legal holds keep"
        );
    } else {
        projector.forget_expired(now)?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every agency's CA is trusted for the handshake; which CA may issue which party's
    // certificate is checked per call (`Shared::caller`).
    let deployment_ca = read(&config.tls.ca)?;
    let deployment_cas = tls::pem_certificates(&deployment_ca);
    if deployment_cas.is_empty() {
        return Err(NodeError::Config(format!(
            "[tls] ca ({}) holds no PEM certificate",
            config.tls.ca.display()
        )));
    }
    let mut trust = deployment_ca;
    let mut party_cas = std::collections::HashMap::new();
    for (p, entry) in deployment.directory.parties() {
        if let Some(ca) = &entry.tls_ca {
            trust.push('\n');
            trust.push_str(ca);
            party_cas.insert(p.clone(), tls::pem_certificates(ca));
        }
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let shared = Arc::new(Shared {
        stopping: stop_rx.clone(),
        appended: std::sync::atomic::AtomicU64::new(0),
        streams: Arc::new(Mutex::new(std::collections::HashMap::new())),
        max_streams_per_party: config.max_streams_per_party,
        delivery_units: config.delivery_units.clone(),
        party,
        deployment,
        sealing: std::sync::RwLock::new(Arc::new(sealing)),
        periods: tokio::sync::Mutex::new(periods),
        refold: std::sync::atomic::AtomicBool::new(false),
        stores,
        keys_dir: config.keys_dir.clone(),
        log,
        producer: tokio::sync::Mutex::new(producer),
        projector: Mutex::new(projector),
        metrics: metrics.clone(),
        secrets,
        linkage: tokio::sync::Mutex::new(None),
        views,
        partners: config
            .partners
            .iter()
            .map(|(p, url)| Ok((p.parse::<PartyId>().map_err(config_err)?, url.clone())))
            .collect::<Result<_, NodeError>>()?,
        client_tls: ClientTlsConfig::new()
            .identity(Identity::from_pem(read(&config.tls.cert)?, read(&config.tls.key)?))
            .ca_certificate(Certificate::from_pem(trust.clone())),
        party_cas,
        deployment_cas,
        breach_heartbeat_s: config.breach_heartbeat_s,
        geofence: geofence_watch::Watch::new(metrics.geofence_silent.clone(), metrics.geofence_heartbeat_ms.clone()),
    });
    // On shutdown, open streams end first, so the server's graceful stop does not wait on them.
    let stop_streams = stop_tx.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = stop_streams.send(true);
    };

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&config.tls.cert)?, read(&config.tls.key)?))
        .client_ca_root(Certificate::from_pem(trust));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = reflection_builder()
        .build_v1()
        .map_err(|e| NodeError::Server(e.to_string()))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| NodeError::Server(e.to_string()))?;

    let mut tasks = Tasks::new();
    tasks.spawn(fold_loop(shared.clone(), stop_rx.clone()));
    tasks.spawn(retention_loop(
        shared.clone(),
        Duration::from_secs(config.retention_sweep_s),
        stop_rx.clone(),
    ));
    // The control room (any party that receives breaches) watches the geofence's heartbeats.
    let receives_breaches = shared.deployment.in_force_now().is_ok_and(|isa| {
        isa.broker_rights().parties.get(&shared.party).is_some_and(|r| {
            r.receives
                .iter()
                .any(|x| x.event_type == hru_domain::EventType::TagBreach)
        })
    });
    if receives_breaches {
        shared
            .geofence
            .watching
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tasks.spawn(geofence_watch::watch_loop(
            shared.clone(),
            Duration::from_secs(config.geofence_silent_after_s),
            stop_rx.clone(),
        ));
    }
    if config.checkpoint_every_s > 0 {
        tasks.spawn(checkpoint_loop(
            shared.clone(),
            Duration::from_secs(config.checkpoint_every_s),
            stop_rx.clone(),
        ));
    }
    if let Some(addr) = &config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| NodeError::Config(format!("key `metrics_listen` ({addr}): {e}")))?;
        let (registry, shutdown) = (shared.metrics.registry(), tasks.shutdown());
        tasks.spawn(async move {
            if let Err(e) = hru_runtime::metrics::serve(listener, registry, shutdown).await {
                tracing::error!(cause = %e, "metrics endpoint stopped");
            }
        });
    }
    if let Some(page_config) = config.page.clone() {
        let page_listener = TcpListener::bind(&page_config.listen)
            .await
            .map_err(|e| NodeError::Config(format!("key `page.listen` ({}): {e}", page_config.listen)))?;
        let acceptor = page::acceptor(&read(&config.tls.cert)?, &read(&config.tls.key)?).map_err(NodeError::Config)?;
        let auth = page::prepare(&shared, &page_config).map_err(NodeError::Config)?;
        tracing::info!(url = %page_config.public_url, "serving the people's page");
        tasks.spawn(page::serve(
            shared.clone(),
            page_config,
            auth,
            page_listener,
            acceptor,
            stop_rx.clone(),
        ));
    }
    let incoming = tokio_stream_of(listener);
    let server = Server::builder()
        .tls_config(tls)
        .map_err(|e| NodeError::Server(e.to_string()))?
        .layer(tower::util::MapResponseLayer::new(undecodable_is_invalid_argument))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(hru_wire::v1::case_service_server::CaseServiceServer::new(CaseApi::new(
            shared.clone(),
        )))
        .add_service(hru_wire::v1::partner_service_server::PartnerServiceServer::new(
            partner::PartnerApi::new(shared.clone()),
        ))
        .add_service(
            hru_wire::v1::subscription_service_server::SubscriptionServiceServer::new(streams::SubscriptionApi::new(
                shared.clone(),
            )),
        )
        .add_service(hru_wire::v1::breach_service_server::BreachServiceServer::new(
            streams::BreachApi::new(shared.clone()),
        ))
        .add_service(hru_wire::v1::audit_service_server::AuditServiceServer::new(
            audit_service::AuditApi::new(shared.clone()),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown);
    let result = server.await.map_err(|e| NodeError::Server(e.to_string()));
    let _ = stop_tx.send(true);
    tasks.stop().await;
    shared
        .projector
        .lock()
        .map_err(|_| NodeError::Server("projector lock poisoned".into()))?
        .store
        .flush()?;
    result
}

/// Reflection advertising exactly the services this node serves.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    SERVICES.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hru_wire::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health"),
        |b, s| b.with_service_name(*s),
    )
}

fn tokio_stream_of(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| stream);
        Some((next, listener))
    })
}

/// Destroy the producer's epoch keys whose retention has ended, each announced on the log.
async fn destroy_expired(
    producer: &mut Producer,
    log: &PartyView,
    isa: &hru_policy::CompiledIsa,
    directory: &hru_envelope::Directory,
) -> Result<(), NodeError> {
    let now = jiff::Timestamp::now().as_millisecond();
    for (audience, epoch) in producer.destroy_expired(log, now, now, isa, directory).await? {
        tracing::info!(%audience, epoch, "epoch key destroyed: its retention has ended");
    }
    Ok(())
}

/// Every `every` (`retention_sweep_s`), destroy the epoch keys whose retention has ended since.
async fn retention_loop(shared: Arc<Shared>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sweep(&shared).await {
            tracing::warn!(cause = %e, "expired keys not destroyed; trying again later");
        }
    }
}

/// One retention sweep of a running node: the producer's expired epoch keys, the party's
/// expired period secrets and the epoch keys its ring opened under them; then the coming
/// months' keys published and every party's publications read again.
async fn sweep(shared: &Shared) -> Result<(), NodeError> {
    let isa = shared.deployment.in_force_now().map_err(config_err)?;
    let now = jiff::Timestamp::now().as_millisecond();
    let mut producer = shared.producer.lock().await;
    destroy_expired(&mut producer, &shared.log, isa, &shared.deployment.directory).await?;
    let mut periods = shared.periods.lock().await;
    let destroyed = periods::keep(
        &mut periods,
        &mut producer,
        &shared.log,
        isa,
        &shared.deployment.directory,
        now,
    )
    .await?;
    for d in destroyed {
        tracing::info!(class = %d.class, from = %d.from, to = %d.to, "period secrets destroyed: their retention has ended");
    }
    // Appends wait for neither the refold nor the reading of publications below.
    let keys = periods.keys().clone();
    drop(periods);
    drop(producer);
    let due = {
        let mut projector = shared
            .projector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ring = projector.read_path_mut().ring_mut();
        ring.set_periods(&keys, &periods::published_through(now));
        ring.destroy_expired(now);
        let due = projector.forgetting_due(now)?;
        if !due {
            // Checked and recorded under one lock: nothing the fold feeds in between is missed.
            projector.forget_expired(now)?;
        }
        due
    };
    if due {
        // A new store is folded from the log without the erased sections while the node keeps
        // answering from the old one; then the two are swapped at once and the old removed.
        let ring = hru_runtime::deployment::key_ring(&shared.keys_dir, &shared.party)
            .map_err(config_err)?
            .with_periods(&keys, &periods::published_through(now));
        let read = hru_reader::ReadPath::new(
            shared.deployment.directory.clone(),
            Arc::new(shared.deployment.policies.clone()),
            ring,
        );
        let held = hru_log::holds::held_grants(shared.log.reader()).await?;
        let calendar = shared.deployment.in_force_now().ok().and_then(|isa| isa.hours.clone());
        let fresh = fresh_projector(
            &shared.stores,
            (&shared.views, calendar.as_ref()),
            read,
            &shared.log,
            &held,
            now,
        )
        .await?;
        let old = {
            let mut projector = shared
                .projector
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Under the same lock the fold feeds by: it follows on from the new checkpoint and
            // never feeds the new store what it read for the old one.
            shared.refold.store(true, std::sync::atomic::Ordering::Release);
            std::mem::replace(&mut *projector, fresh)
        };
        drop(old);
        shared.stores.switch()?;
        tracing::info!(
            "projections folded again: without the sections erased under retention, with those legal holds keep"
        );
    }
    shared.refresh_sealing().await
}

/// Append a signed checkpoint of this node's chain head every `every`, when it has moved.
async fn checkpoint_loop(shared: Arc<Shared>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    use prost::Message as _;
    let mut last = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        let mut producer = shared.producer.lock().await;
        let head = producer.sealer().chain();
        if head.next_seq <= 1 || head.next_seq - 1 == last {
            continue;
        }
        let Ok(isa) = shared.agreement() else { continue };
        let now = jiff::Timestamp::now().as_millisecond();
        let id = producer.sealer().producer().clone();
        let body = hru_wire::v1::ChainCheckpoint {
            party: id.party.to_string(),
            instance: id.instance.clone(),
            head_seq: head.next_seq - 1,
            head_digest: head.prev_digest.0.to_vec(),
            at_ms: now,
        };
        let batch = match producer.sealer().prepare_public(
            hru_domain::EventType::ChainCheckpoint,
            body.encode_to_vec(),
            now,
            isa,
        ) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(cause = %e, "checkpoint not sealed");
                continue;
            }
        };
        match producer.append(&shared.log, &batch, hru_log::Expect::Any).await {
            Ok(_) => last = head.next_seq,
            Err(e) => tracing::warn!(cause = %e, "checkpoint not appended; trying again later"),
        }
    }
}

/// A request that does not decode is the caller's error: `INVALID_ARGUMENT`, with the decoder's
/// message naming the field it stopped at, rather than tonic's `INTERNAL` (which reads as the
/// node's fault and which some clients retry).
fn undecodable_is_invalid_argument(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let undecodable = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode"));
    if internal && undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    response
}

/// Log entries folded per committed batch.
const FOLD_BATCH: usize = 256;

/// Fold the party's view into the projections until told to stop; the batch in hand finishes.
/// A failure (broker, store) is logged and folding starts again from the committed checkpoint.
async fn fold_loop(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        match fold_view(&shared, &mut stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(cause = %e, "folding the view failed; resuming from the checkpoint"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Fold the party's view from the committed checkpoint on, a page at a time as the broker
/// stores it: each page is committed to sled before the next is read. Returns when told to
/// stop.
async fn fold_view(shared: &Shared, stop: &mut tokio::sync::watch::Receiver<bool>) -> Result<(), String> {
    use futures::StreamExt as _;
    let resume = shared
        .projector
        .lock()
        .map_err(|_| "projector lock poisoned".to_owned())?
        .resume_from();
    let mut pages = shared
        .log
        .reader()
        .follow_pages(resume, None)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let page = tokio::select! {
            _ = stop.changed() => return Ok(()),
            p = pages.next() => p,
        };
        let page = page.ok_or("the view's read ended")?.map_err(|e| e.to_string())?;
        for chunk in page.entries.chunks(FOLD_BATCH) {
            let entries: Vec<hru_projection::LogItem<'_>> = chunk
                .iter()
                .map(|e| (e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored))
                .collect();
            let Some(&(through, ..)) = entries.last() else { continue };
            let refused = {
                let mut projector = shared
                    .projector
                    .lock()
                    .map_err(|_| "projector lock poisoned".to_owned())?;
                // A retention sweep swapped in a new store (under this lock): nothing read for
                // the old one goes into it; the fold follows on from the new checkpoint.
                if shared.refold.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    return Err("a new projection store was swapped in; folding on from its checkpoint".into());
                }
                projector.feed(&entries).map_err(|e| e.to_string())?
            };
            for refusal in &refused {
                tracing::warn!(%refusal, "refused by the read path; not folded");
                shared.metrics.read_refused(refusal.kind);
            }
            shared.metrics.folded(entries.len() as u64, through);
        }
        shared.metrics.pending(page.pending);
    }
}

/// The two projection store directories a node alternates between when it forgets what
/// expired, and the file naming the one in use (replaced atomically).
pub(crate) struct Stores {
    data_dir: std::path::PathBuf,
    current: Mutex<&'static str>,
}

const STORE_NAMES: [&str; 2] = ["projections", "projections.b"];
const STORE_POINTER: &str = "projections.current";

impl Stores {
    /// The stores of `data_dir`: the one the pointer names (the first when none), the other
    /// removed (left by a swap that did not finish, or the old store of one that did).
    fn open(data_dir: &std::path::Path) -> Result<Self, NodeError> {
        let named = std::fs::read_to_string(data_dir.join(STORE_POINTER)).unwrap_or_default();
        let current = STORE_NAMES
            .into_iter()
            .find(|n| *n == named.trim())
            .unwrap_or(STORE_NAMES[0]);
        let me = Self {
            data_dir: data_dir.to_owned(),
            current: Mutex::new(current),
        };
        me.remove(me.other())?;
        Ok(me)
    }

    fn name(&self) -> &'static str {
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn other(&self) -> &'static str {
        if self.name() == STORE_NAMES[0] {
            STORE_NAMES[1]
        } else {
            STORE_NAMES[0]
        }
    }

    /// The store in use.
    fn current(&self) -> std::path::PathBuf {
        self.data_dir.join(self.name())
    }

    /// The store a new fold goes into.
    fn next(&self) -> std::path::PathBuf {
        self.data_dir.join(self.other())
    }

    fn remove(&self, name: &str) -> Result<(), NodeError> {
        let dir = self.data_dir.join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(config_err(format!("removing {}: {e}", dir.display())))
            }
            _ => Ok(()),
        }
    }

    /// Make the other store the one in use (the pointer replaced atomically), then remove the
    /// old one's files.
    fn switch(&self) -> Result<(), NodeError> {
        use std::io::Write as _;
        let (old, new) = (self.name(), self.other());
        let pointer = self.data_dir.join(STORE_POINTER);
        let aside = self.data_dir.join(format!("{STORE_POINTER}.new"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&aside)?;
            f.write_all(new.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&aside, &pointer)?;
            std::fs::File::open(&self.data_dir)?.sync_all()
        };
        write().map_err(|e| config_err(format!("{}: {e}", pointer.display())))?;
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        self.remove(old)
    }
}

/// A projector over a new, empty store (the one not in use), folded from the start of the
/// view to its end with retention judged at `now_ms`, the legal holds' grants `held` (they
/// follow the events they open) taken in first.
async fn fresh_projector(
    stores: &Stores,
    (views, calendar): (&[View], Option<&hru_policy::Hours>),
    read: hru_reader::ReadPath,
    log: &PartyView,
    held: &[hru_log::LogEntry],
    now_ms: i64,
) -> Result<Projector, NodeError> {
    let dir = stores.next();
    stores.remove(stores.other())?;
    let mut projector = Projector::new(Store::open(&dir)?, View::projections(views, calendar), read)?;
    projector.forget_expired(now_ms)?;
    let items: Vec<hru_projection::LogItem<'_>> = held
        .iter()
        .map(|e| (e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored))
        .collect();
    projector.take_holds_ahead(&items)?;
    fold_to_end(&mut projector, log).await?;
    projector.store.flush()?;
    Ok(projector)
}

/// Fold the view from the projector's checkpoint to its current end (before the node serves).
async fn fold_to_end(projector: &mut Projector, log: &PartyView) -> Result<(), NodeError> {
    use futures::TryStreamExt as _;
    let mut entries = log.reader().replay(projector.resume_from(), &[]).await?;
    let mut chunk = Vec::with_capacity(FOLD_BATCH);
    loop {
        let next = entries.try_next().await?;
        let done = next.is_none();
        chunk.extend(next);
        if chunk.len() == FOLD_BATCH || (done && !chunk.is_empty()) {
            let items: Vec<hru_projection::LogItem<'_>> = chunk
                .iter()
                .map(|e| (e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored))
                .collect();
            for refusal in projector.feed(&items)? {
                tracing::warn!(%refusal, "refused by the read path; not folded");
            }
            chunk.clear();
        }
        if done {
            return Ok(());
        }
    }
}
