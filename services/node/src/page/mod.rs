//! The people's page (DESIGN §12a): the control room's live breach board and map, served over
//! HTTPS with the node's certificate to people signed in with OpenID Connect (decision 018).
//!
//! The page reads what the node's gRPC callers read, through the same grants: the board and
//! its live updates under `BreachService/StreamBreaches`, a breach's map under
//! `CaseService/GetCase` (the case's events as this party may see them), an acknowledgement
//! under `BreachService/Acknowledge` with the same decision and concurrency condition. Every
//! page view, update and acknowledgement is access-logged naming the signed-in person before
//! anything is answered.

mod auth;
mod map;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hru_domain::{CaseEvent, CaseId, EventType};
use hru_policy::CallGrant;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::Shared;
use crate::access::{Caller, Disclosed, read_sections};
use crate::config::PageConfig;
use auth::{Auth, Session, SignInError};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/page.js");
const STYLE: &str = include_str!("assets/page.css");

/// The session cookie (`__Host-`: only this origin over HTTPS may set it, so no neighbouring
/// host can plant one).
const SESSION_COOKIE: &str = "__Host-hru_session";
/// The cookies binding a sign-in's answer to the browser that started it, one per sign-in
/// under way (two tabs may sign in at once), named by its state.
const STATE_COOKIE: &str = "__Host-hru_signin_";
/// How often an idle live stream says it is alive (the page shows "connection lost" after
/// three missed).
const BEAT: Duration = Duration::from_secs(2);
/// Most breach rows the board sends (the newest).
const MAX_ROWS: usize = 500;
/// Nothing on the page is fetched from anywhere but the node.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What every page handler shares.
struct Page {
    shared: Arc<Shared>,
    auth: Auth,
    purpose: String,
    streams: Arc<Streams>,
}

/// The page's live streams: a pool of its own (the party's gRPC streams are not taken by
/// browser tabs), at most [`STREAMS_PER_SESSION`] per signed-in person.
struct Streams {
    open: std::sync::Mutex<HashMap<String, usize>>,
    total: std::sync::atomic::AtomicUsize,
    limit: usize,
}

/// One open live stream, counted until dropped.
struct StreamSlot {
    streams: Arc<Streams>,
    session: String,
}

impl Streams {
    fn slot(self: &Arc<Self>, session: &str) -> Result<StreamSlot, String> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
        let mine = open.entry(session.to_owned()).or_default();
        if *mine >= STREAMS_PER_SESSION {
            return Err(format!(
                "this sign-in already has {STREAMS_PER_SESSION} live pages open; close one first"
            ));
        }
        if total >= self.limit {
            return Err(format!("the page already serves {total} live streams, the most it may"));
        }
        *mine += 1;
        self.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(StreamSlot {
            streams: self.clone(),
            session: session.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.session);
            }
        }
        self.streams.total.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Most connections the page holds open at once; one more is closed at once.
const MAX_CONNECTIONS: usize = 512;
/// How long a connection may take over its TLS handshake, and a request over its headers.
const HANDSHAKE: Duration = Duration::from_secs(5);
const HEADERS: Duration = Duration::from_secs(10);
/// Live streams one signed-in person (session) may hold open.
const STREAMS_PER_SESSION: usize = 4;
/// How long a live stream waits for a browser that has stopped reading before it ends.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A fold that has not moved this long while the log holds more is "stale" on the page.
const STALE_AFTER: Duration = Duration::from_secs(10);

/// The page's sign-in state, checked before the node serves anything (a page that cannot work
/// is a configuration error, not a log line).
pub(crate) fn prepare(shared: &Shared, config: &PageConfig) -> Result<Auth, String> {
    Auth::new(config.clone(), shared.party.clone())
}

/// Serve the page on `listener` with the node's certificate until `stop` fires.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    config: PageConfig,
    auth: Auth,
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let streams = Streams {
        open: std::sync::Mutex::new(HashMap::new()),
        total: std::sync::atomic::AtomicUsize::new(0),
        limit: shared.max_streams_per_party,
    };
    let page = Arc::new(Page {
        shared,
        auth,
        purpose: config.purpose.clone(),
        streams: Arc::new(streams),
    });
    let app = axum::Router::new()
        .route("/", get(index))
        .route("/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/logout", post(logout))
        .route("/signed-out", get(signed_out))
        .route("/live", get(live))
        .route("/session", get(session_state))
        .route("/acknowledge", post(acknowledge))
        .route("/map/{id}", get(breach_map))
        .route(
            "/static/page.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/static/page.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(page);
    let mut connections = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "the page's listener failed to accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Bounded: a flood of idle connections cannot take the node's descriptors (and with
        // them its gRPC service and broker connections).
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "the page holds {MAX_CONNECTIONS} connections; one more closed");
            drop(tcp);
            continue;
        };
        let (tls, app) = (tls.clone(), app.clone());
        connections.spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, cause = %e, "a page connection's TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADERS)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, cause = %e, "a page connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// The TLS acceptor for the page: the node's certificate and key (PEM).
pub(crate) fn acceptor(cert_pem: &str, key_pem: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("[tls] cert: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("[tls] key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("[tls] cert and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A cookie only this node's pages over HTTPS get, never script; `same_site` says when the
/// browser sends it on a request another site started.
fn set_cookie(name: &str, value: &str, max_age_s: i64, same_site: &str) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!("{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; Secure; SameSite={same_site}"),
    )
}

/// A short page of text (sign-in problems, signed out).
fn notice(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <link rel=\"stylesheet\" href=\"/static/page.css\"></head><body class=\"notice\"><h1>{t}</h1>\
         <p id=\"notice\">{x}</p><p><a id=\"sign-in\" href=\"/login\">Sign in</a></p></body></html>",
        t = map::escape(title),
        x = map::escape(text)
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// A refusal as JSON.
fn refused(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn status_of(s: &tonic::Status) -> StatusCode {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl Page {
    /// The signed-in session of this request, if any.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let session = self.auth.session(&id, now_ms())?;
        Some((id, session))
    }

    /// The agreement's grant for this party's people calling `method` with the page's purpose.
    fn grant(&self, method: &str) -> Result<CallGrant, tonic::Status> {
        let shared = &self.shared;
        shared
            .agreement()?
            .may_call(&shared.party, &shared.party, method, &self.purpose)
            .cloned()
            .map_err(|refused| tonic::Status::permission_denied(refused.to_string()))
    }

    fn caller(&self, session: &Session) -> Caller {
        Caller {
            party: session.person.party.clone(),
            person: session.person.recorded(),
        }
    }
}

async fn index(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    let Some((_, session)) = page.session(&headers) else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    };
    let grant = match page.grant("BreachService/StreamBreaches") {
        Ok(g) => g,
        Err(s) => return notice(status_of(&s), "Not allowed", s.message()),
    };
    let viewed = Disclosed {
        case: None,
        case_ids: Vec::new(),
        sections: vec!["page".into()],
        disclosed_to: None,
    };
    if let Err(s) = page.shared.log_access(&grant, &session.person.recorded(), viewed).await {
        return notice(status_of(&s), "Not available", s.message());
    }
    let html = INDEX
        .replace("{{party}}", &map::escape(page.shared.party.as_str()))
        .replace("{{person}}", &map::escape(&session.person.name))
        .replace("{{csrf}}", &session.csrf);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn login(State(page): State<Arc<Page>>) -> Response {
    match page.auth.start(now_ms()).await {
        Ok((url, state)) => {
            // Sent back on the identity provider's return (a top-level GET): it binds the
            // answer to this browser.
            let (k, v) = set_cookie(&format!("{STATE_COOKIE}{state}"), "1", 600, "Lax");
            (StatusCode::SEE_OTHER, [(header::LOCATION, url), (k, v)]).into_response()
        }
        Err(e) => {
            tracing::warn!(cause = %e, "a sign-in could not start");
            notice(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", &e.to_string())
        }
    }
}

/// The identity provider's answer.
#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(State(page): State<Arc<Page>>, headers: HeaderMap, Query(q): Query<CallbackParams>) -> Response {
    if let Some(error) = q.error {
        // Only the error's code, as OAuth defines them: the description is anyone's text on
        // this node's origin.
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(64)
            .collect();
        let text = format!("the identity provider answered `{code}`; sign in again or ask your administrator");
        return notice(
            StatusCode::UNAUTHORIZED,
            "Sign-in refused by the identity provider",
            &text,
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return notice(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "the answer carries no code or state",
        );
    };
    let state_cookie = format!("{STATE_COOKIE}{state}");
    let bound = cookie(&headers, &state_cookie).is_some();
    match page.auth.finish(&state, bound, &code, now_ms()).await {
        Ok((id, session)) => {
            tracing::info!(person = %session.person.recorded(), "signed in to the page");
            // A session this browser already had ends: one browser, one person.
            if let Some(old) = cookie(&headers, SESSION_COOKIE) {
                page.auth.sign_out(&old);
            }
            let max_age = (session.expires_ms - now_ms()) / 1000;
            let (k1, v1) = set_cookie(SESSION_COOKIE, &id, max_age, "Lax");
            let (k2, v2) = set_cookie(&state_cookie, "", 0, "Lax");
            // Appended, not inserted: both cookies must reach the browser.
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, "/")],
                axum::response::AppendHeaders([(k1, v1), (k2, v2)]),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(cause = %e, "a sign-in was refused");
            let status = match e {
                SignInError::OtherParty(_) => StatusCode::FORBIDDEN,
                SignInError::Provider(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::UNAUTHORIZED,
            };
            notice(status, "Not signed in", &e.to_string())
        }
    }
}

/// The CSRF token must come back in this header with every change.
const CSRF_HEADER: &str = "x-hru-csrf";

/// The refusal of a change that does not carry `session`'s CSRF token, if it does not.
fn csrf_refusal(headers: &HeaderMap, session: &Session) -> Option<Response> {
    let ok = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == session.csrf);
    (!ok).then(|| {
        refused(
            StatusCode::FORBIDDEN,
            format!("header `{CSRF_HEADER}` is missing or wrong"),
        )
    })
}

/// The refusal of a request without a live session.
fn not_signed_in() -> Response {
    refused(StatusCode::UNAUTHORIZED, "not signed in (or the session has ended)")
}

async fn logout(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    let Some((id, session)) = page.session(&headers) else {
        return not_signed_in();
    };
    if let Some(r) = csrf_refusal(&headers, &session) {
        return r;
    }
    page.auth.sign_out(&id);
    tracing::info!(person = %session.person.recorded(), "signed out of the page");
    // Out of the provider too (a control room's workstations are shared), when it offers it.
    let next = page
        .auth
        .provider_sign_out(&session)
        .await
        .unwrap_or_else(|| "/signed-out".into());
    let (k, v) = set_cookie(SESSION_COOKIE, "", 0, "Lax");
    (
        [(k, v)],
        axum::Json(serde_json::json!({ "signed_out": true, "next": next })),
    )
        .into_response()
}

/// Whether this browser is signed in, as whom and until when.
async fn session_state(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    match page.session(&headers) {
        Some((_, s)) => {
            axum::Json(serde_json::json!({ "person": s.person.name, "expires_ms": s.expires_ms })).into_response()
        }
        None => not_signed_in(),
    }
}

async fn signed_out() -> Response {
    notice(
        StatusCode::OK,
        "Signed out",
        "You have signed out of the control room's page.",
    )
}

/// What the board shows: the breaches needing attention, every fitted tag's coverage and the
/// geofence's state.
#[derive(Serialize, PartialEq)]
struct Board {
    breaches: Vec<hru_projection::BreachRow>,
    more: usize,
    coverage: Vec<hru_projection::CoverageRow>,
    geofence: Option<GeofenceState>,
}

#[derive(Serialize, PartialEq)]
struct GeofenceState {
    silent: bool,
    last_heartbeat_ms: i64,
    tags_lapsed: u32,
}

/// Whether the agreement in force still gives this party `event_type`'s core section (rows
/// folded under an older version are not shown once it no longer does).
fn still_given(shared: &Shared, event_type: EventType) -> bool {
    shared.agreement().is_ok_and(|isa| {
        isa.audiences()
            .any(|(_, t, section, a)| t == event_type && section == "core" && a.members().contains(&shared.party))
    })
}

fn board(shared: &Shared, geofence: Option<&hru_wire::v1::GeofenceStatus>) -> Result<Board, String> {
    let (breaches_given, tags_given) = (
        still_given(shared, EventType::TagBreach),
        still_given(shared, EventType::TagFitted),
    );
    let projector = shared
        .projector
        .lock()
        .map_err(|_| "projector unavailable".to_owned())?;
    let closed = hru_wire::v1::BreachState::Closed.as_str_name();
    // Open episodes, and closed ones nobody has acknowledged yet: those nobody has acknowledged
    // first, each group newest raised first (a breach found late is raised late: it is on top).
    let mut breaches: Vec<_> = if breaches_given {
        hru_projection::breach_board(&projector.store)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| r.state != closed || r.acknowledged_by.is_none())
            .collect()
    } else {
        Vec::new()
    };
    breaches.sort_by_key(|r| {
        (
            r.acknowledged_by.is_some(),
            std::cmp::Reverse((r.raised_at_ms, r.opened_at_ms)),
        )
    });
    let more = breaches.len().saturating_sub(MAX_ROWS);
    breaches.truncate(MAX_ROWS);
    let coverage = if breaches_given && tags_given {
        hru_projection::coverage_rows(&projector.store).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    Ok(Board {
        breaches,
        more,
        coverage,
        geofence: geofence.map(|g| GeofenceState {
            silent: g.silent,
            last_heartbeat_ms: g.last_heartbeat_ms,
            tags_lapsed: g.tags_lapsed,
        }),
    })
}

/// A request another site made the browser send (it would write an access record in the
/// operator's name): refused.
fn cross_site(headers: &HeaderMap) -> Option<Response> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())?;
    (site != "same-origin").then(|| refused(StatusCode::FORBIDDEN, "only this page may ask for this"))
}

async fn live(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    if let Some(r) = cross_site(&headers) {
        return r;
    }
    let Some((id, session)) = page.session(&headers) else {
        return not_signed_in();
    };
    let grant = match page.grant("BreachService/StreamBreaches") {
        Ok(g) => g,
        Err(s) => return refused(status_of(&s), s.message()),
    };
    let slot = match page.streams.slot(&id) {
        Ok(slot) => slot,
        Err(e) => return refused(StatusCode::TOO_MANY_REQUESTS, e),
    };
    let opened = Disclosed {
        case: None,
        case_ids: Vec::new(),
        sections: vec!["breach-board".into(), "coverage".into()],
        disclosed_to: None,
    };
    if let Err(s) = page.shared.log_access(&grant, &session.person.recorded(), opened).await {
        return refused(status_of(&s), s.message());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let _slot = slot;
        follow(page, id, session, tx).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Send `event` to the browser; false when it has gone or has stopped reading for
/// [`SEND_TIMEOUT`] (the stream ends and its slot is freed).
async fn send(tx: &tokio::sync::mpsc::Sender<Event>, event: Event) -> bool {
    tx.send_timeout(event, SEND_TIMEOUT).await.is_ok()
}

/// The cases of `board`'s rows that are new or changed since `shown` (which is brought up to
/// date).
fn changed_cases(board: &Board, shown: &mut HashMap<String, String>) -> Vec<CaseId> {
    let mut cases: Vec<CaseId> = Vec::new();
    let rows = board
        .breaches
        .iter()
        .map(|r| {
            (
                format!("b{}", r.breach_id),
                serde_json::to_string(r),
                r.case_id.as_str(),
            )
        })
        .chain(
            board
                .coverage
                .iter()
                .map(|r| (format!("c{}", r.tag_id), serde_json::to_string(r), r.case_id.as_str())),
        );
    for (key, json, case) in rows {
        let json = json.unwrap_or_default();
        if shown.get(&key) != Some(&json) {
            if let Ok(c) = case.parse::<CaseId>()
                && !cases.contains(&c)
            {
                cases.push(c);
            }
            shown.insert(key, json);
        }
    }
    cases
}

/// Send the board whenever what it shows changes (the grant checked again and each change
/// access-logged first, naming its cases) and a beat every [`BEAT`] saying whether the node's
/// fold is keeping up, until the browser goes, the session ends or the node stops.
async fn follow(page: Arc<Page>, session_id: String, session: Session, tx: tokio::sync::mpsc::Sender<Event>) {
    let shared = &page.shared;
    let person = session.person.recorded();
    let watching = shared.geofence.watching.load(std::sync::atomic::Ordering::Relaxed);
    let mut geofence = shared.geofence.status.subscribe();
    let mut stopping = shared.stopping.clone();
    let mut shown: HashMap<String, String> = HashMap::new();
    let mut last: Option<Board> = None;
    let mut head = u64::MAX;
    let mut beat = tokio::time::Instant::now();
    let mut moved = tokio::time::Instant::now();
    loop {
        if *stopping.borrow() {
            return;
        }
        if page.auth.session(&session_id, now_ms()).is_none() {
            let _ = send(
                &tx,
                Event::default()
                    .event("expired")
                    .data("the session has ended; sign in again"),
            )
            .await;
            return;
        }
        let folded = shared.folded_through();
        if folded != head || geofence.has_changed().unwrap_or(false) {
            let status = watching.then(|| geofence.borrow_and_update().clone());
            match board(shared, status.as_ref()) {
                Ok(now) => {
                    if folded != head {
                        moved = tokio::time::Instant::now();
                    }
                    head = folded;
                    if last.as_ref() != Some(&now) {
                        // Still allowed now (the agreement may have changed since the page opened).
                        let grant = match page.grant("BreachService/StreamBreaches") {
                            Ok(g) => g,
                            Err(s) => {
                                let _ = send(&tx, Event::default().event("failed").data(s.message())).await;
                                return;
                            }
                        };
                        let cases = changed_cases(&now, &mut shown);
                        if !cases.is_empty() {
                            let what = Disclosed {
                                case: None,
                                case_ids: cases,
                                sections: vec!["breach-board".into(), "coverage".into()],
                                disclosed_to: None,
                            };
                            if let Err(s) = shared.log_access(&grant, &person, what).await {
                                tracing::warn!(cause = %s.message(), "the page's access record was not written; its stream ends");
                                let _ = send(&tx, Event::default().event("failed").data(s.message())).await;
                                return;
                            }
                        }
                        let message = serde_json::json!({ "at_ms": now_ms(), "board": &now });
                        if !send(&tx, Event::default().event("board").data(message.to_string())).await {
                            return;
                        }
                        beat = tokio::time::Instant::now();
                        last = Some(now);
                    }
                }
                // Read again on the next turn; the beats say the board is not being kept.
                Err(e) => tracing::warn!(cause = %e, "the board could not be read"),
            }
        }
        if beat.elapsed() >= BEAT {
            beat = tokio::time::Instant::now();
            // A fold that has stopped while the log moves on is a board nobody is keeping.
            let behind = match hru_log::SharedLog::reader(&shared.log).last_sequence().await {
                Ok(last_seq) => last_seq > head || head == u64::MAX,
                Err(_) => true,
            };
            let stale_s = if behind && moved.elapsed() >= STALE_AFTER {
                moved.elapsed().as_secs()
            } else {
                0
            };
            let message = serde_json::json!({ "at_ms": now_ms(), "folded": head, "stale_s": stale_s });
            if !send(&tx, Event::default().event("beat").data(message.to_string())).await {
                return;
            }
        }
        tokio::select! {
            () = tx.closed() => return,
            _ = stopping.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// An acknowledgement from the page.
#[derive(Deserialize)]
struct AckForm {
    breach_id: String,
    action: String,
}

/// A breach id given as 32 hex digits.
fn breach_id(hex_id: &str) -> Option<uuid::Uuid> {
    hex::decode(hex_id).ok().and_then(|b| uuid::Uuid::from_slice(&b).ok())
}

fn bad_breach_id() -> Response {
    refused(StatusCode::BAD_REQUEST, "field `breach_id` must be 32 hex digits")
}

async fn acknowledge(State(page): State<Arc<Page>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some((_, session)) = page.session(&headers) else {
        return not_signed_in();
    };
    if let Some(r) = csrf_refusal(&headers, &session) {
        return r;
    }
    let form: AckForm = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("the acknowledgement is not JSON {{breach_id, action}}: {e}"),
            );
        }
    };
    let Some(id) = breach_id(&form.breach_id) else {
        return bad_breach_id();
    };
    if form.action.trim().is_empty() {
        return refused(StatusCode::BAD_REQUEST, "field `action` is missing: say what was done");
    }
    let grant = match page.grant("BreachService/Acknowledge") {
        Ok(g) => g,
        Err(s) => return refused(status_of(&s), s.message()),
    };
    let caller = page.caller(&session);
    match page
        .shared
        .timed(
            "Page/Acknowledge",
            page.shared
                .acknowledge_breach(&grant, &caller, id, &caller.person, form.action.trim()),
        )
        .await
    {
        Ok(done) => axum::Json(serde_json::json!({
            "acknowledged": form.breach_id,
            "by": session.person.name,
            "response_time_ms": done.response_time_ms,
        }))
        .into_response(),
        Err(s) => refused(status_of(&s), s.message()),
    }
}

async fn breach_map(State(page): State<Arc<Page>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = cross_site(&headers) {
        return r;
    }
    let Some((_, session)) = page.session(&headers) else {
        return not_signed_in();
    };
    let Some(id) = breach_id(id.trim_end_matches(".svg")) else {
        return bad_breach_id();
    };
    let grant = match page.grant("CaseService/GetCase") {
        Ok(g) => g,
        Err(s) => return refused(status_of(&s), s.message()),
    };
    let shared = &page.shared;
    let row = shared
        .projector
        .lock()
        .ok()
        .and_then(|p| hru_projection::breach(&p.store, &id).ok().flatten());
    let Some(case) = row.and_then(|r| r.case_id.parse::<CaseId>().ok()) else {
        return refused(StatusCode::NOT_FOUND, "no such breach on this node's board");
    };
    // The case as this party may read it: GetCase's read path, logged as GetCase is.
    let (events, _) = match shared.case_events(case, &shared.party, None).await {
        Ok(e) => e,
        Err(s) => return refused(status_of(&s), s.message()),
    };
    let mut sections = read_sections(&events);
    sections.sort();
    sections.dedup();
    let read = Disclosed::case(case, sections);
    if let Err(s) = shared.log_access(&grant, &session.person.recorded(), read).await {
        return refused(status_of(&s), s.message());
    }
    let typed: Vec<CaseEvent> = events
        .iter()
        .filter_map(|e| {
            let event_type: EventType = e.header.as_ref()?.event_type.parse().ok()?;
            let sections: Vec<(&str, &[u8])> = e
                .sections
                .iter()
                .filter(|s| s.refusal.is_empty())
                .map(|s| (s.name.as_str(), s.plaintext.as_slice()))
                .collect();
            CaseEvent::try_from(hru_domain::join_sections(event_type, &sections).ok()?).ok()
        })
        .collect();
    match map::MapData::of(id, &typed, now_ms()) {
        Some(m) => ([(header::CONTENT_TYPE, "image/svg+xml")], m.svg()).into_response(),
        None => refused(StatusCode::NOT_FOUND, "the case holds no such breach"),
    }
}
