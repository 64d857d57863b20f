//! Signing people in (decision 018): OpenID Connect's authorization code flow with PKCE
//! against the party's identity provider, the ID token checked (signature by the provider's
//! published keys, issuer, audience, expiry, nonce) and the person's party read from a claim;
//! then a session held by the node, named by an unguessable cookie, ending at a fixed time or
//! when the person signs out.

use std::collections::HashMap;
use std::sync::Mutex;

use hru_domain::PartyId;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};

use crate::config::PageConfig;

/// The claims beyond the standard ones, kept as given (the party claim is read by name).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct OtherClaims(HashMap<String, serde_json::Value>);

impl AdditionalClaims for OtherClaims {}

/// What discovery says beyond the core: where people sign out of the provider (RP-initiated
/// logout), when it offers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LogoutMetadata {
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for LogoutMetadata {}

type Metadata = ProviderMetadata<
    LogoutMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Fields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
type OidcClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// A signed-in person, as the identity provider vouched for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Person {
    /// Their name as the provider gives it (`name`, else `preferred_username`, else `email`,
    /// else the subject).
    pub(crate) name: String,
    /// The provider's stable identifier for them.
    pub(crate) subject: String,
    /// The provider.
    pub(crate) issuer: String,
    /// Their party, from the party claim.
    pub(crate) party: PartyId,
}

impl Person {
    /// How access records and acknowledgements name them: the name, with the provider's
    /// subject (names are not unique; the subject is).
    pub(crate) fn recorded(&self) -> String {
        format!(
            "{} [oidc {} at {}]",
            plain(&self.name),
            plain(&self.subject),
            plain(&self.issuer)
        )
    }
}

/// Text a person or provider chose, made safe to stand in a record beside what the node
/// vouches for: no brackets (the record's own), no control or invisible formatting characters
/// (line breaks, bidirectional overrides), runs of spaces made one.
pub(crate) fn plain(text: &str) -> String {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
    };
    text.chars()
        .map(|c| if invisible(c) || c == '[' || c == ']' { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sign-in that was started and not yet finished.
struct Pending {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    started_ms: i64,
}

/// A session: the person, the token that must accompany every change they make (CSRF), and
/// when it ends.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) person: Person,
    pub(crate) csrf: String,
    pub(crate) expires_ms: i64,
    /// The ID token the person signed in with: the hint that signs them out of the provider.
    pub(crate) id_token: String,
}

/// Why a sign-in failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignInError {
    /// The provider could not be reached or answered wrongly.
    #[error("the identity provider: {0}")]
    Provider(String),
    /// The callback is not the answer to a sign-in this node started in this browser.
    #[error("this sign-in was not started here or has expired; sign in again")]
    UnknownState,
    /// The provider's answer did not check out.
    #[error("the identity token was refused: {0}")]
    Token(String),
    /// The person belongs to another party (or the provider names none).
    #[error("{0}")]
    OtherParty(String),
}

/// How long after a failed discovery sign-ins are refused without asking the provider again.
const DISCOVERY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);
/// Most sign-ins under way at once.
const MAX_PENDING: usize = 10_000;
/// How long a started sign-in may take, ms.
const PENDING_MS: i64 = 10 * 60 * 1000;

/// The node's sign-in state: the provider (discovered on first use), sign-ins under way and
/// sessions.
pub(crate) struct Auth {
    config: PageConfig,
    party: PartyId,
    http: reqwest::Client,
    client: tokio::sync::Mutex<Option<(OidcClient, Option<String>)>>,
    /// When discovery last failed: sign-ins are refused at once for a while after, rather than
    /// each asking an unreachable provider again.
    failed_at: Mutex<Option<std::time::Instant>>,
    pending: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex.
pub(crate) fn token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Auth {
    /// Sign-in for `party`'s people through the provider `config` names.
    pub(crate) fn new(config: PageConfig, party: PartyId) -> Result<Self, String> {
        // The provider's redirects are not followed: its answers are read as given.
        let mut http = reqwest::ClientBuilder::new()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10));
        if let Some(ca) = &config.issuer_ca {
            let pem = std::fs::read(ca).map_err(|e| format!("key `page.issuer_ca` ({}): {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("key `page.issuer_ca` ({}): {e}", ca.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| format!("an HTTP client for the identity provider: {e}"))?;
        Ok(Self {
            config,
            party,
            http,
            client: tokio::sync::Mutex::new(None),
            failed_at: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The provider's client and its end-session endpoint, discovered once (again after a
    /// failure).
    async fn client(&self) -> Result<(OidcClient, Option<String>), SignInError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let recently = self
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < DISCOVERY_BACKOFF);
        if recently {
            return Err(SignInError::Provider(format!(
                "{} did not answer just now; try again in a few seconds",
                self.config.issuer
            )));
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| SignInError::Provider(e.to_string()))?;
        let metadata = match Metadata::discover_async(issuer, &self.http).await {
            Ok(m) => m,
            Err(e) => {
                *self.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(std::time::Instant::now());
                return Err(SignInError::Provider(format!(
                    "discovery at {}: {e}",
                    self.config.issuer
                )));
            }
        };
        let secret = match &self.config.client_secret_file {
            Some(f) => Some(ClientSecret::new(
                std::fs::read_to_string(f)
                    .map_err(|e| SignInError::Provider(format!("{}: {e}", f.display())))?
                    .trim()
                    .to_owned(),
            )),
            None => None,
        };
        let redirect = RedirectUrl::new(format!(
            "{}/auth/callback",
            self.config.public_url.trim_end_matches('/')
        ))
        .map_err(|e| SignInError::Provider(e.to_string()))?;
        let end_session = metadata.additional_metadata().end_session_endpoint.clone();
        let client = OidcClient::from_provider_metadata(metadata, ClientId::new(self.config.client_id.clone()), secret)
            .set_redirect_uri(redirect);
        *slot = Some((client.clone(), end_session.clone()));
        Ok((client, end_session))
    }

    /// Start a sign-in: the provider's URL to send the browser to, and the state that must
    /// come back with it (kept in a cookie too, so the answer is bound to this browser).
    pub(crate) async fn start(&self, now_ms: i64) -> Result<(String, String), SignInError> {
        let (client, _) = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("profile".into()))
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge)
            .url();
        self.remember(state.secret().clone(), verifier, nonce, now_ms);
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Keep a sign-in under way until its answer comes back.
    fn remember(&self, state: String, verifier: PkceCodeVerifier, nonce: Nonce, now_ms: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.retain(|_, p| now_ms - p.started_ms < PENDING_MS);
        // A flood of sign-ins started and never finished pushes out the oldest, not memory.
        while pending.len() >= MAX_PENDING {
            let Some(oldest) = pending.iter().min_by_key(|(_, p)| p.started_ms).map(|(k, _)| k.clone()) else {
                break;
            };
            pending.remove(&oldest);
        }
        pending.insert(
            state,
            Pending {
                verifier,
                nonce,
                started_ms: now_ms,
            },
        );
    }

    /// Finish a sign-in: exchange `code` for tokens, check the ID token and the person's
    /// party, and open a session: its id and the person. `bound`: this browser holds the
    /// cookie its start set for `state`.
    pub(crate) async fn finish(
        &self,
        state: &str,
        bound: bool,
        code: &str,
        now_ms: i64,
    ) -> Result<(String, Session), SignInError> {
        if !bound {
            return Err(SignInError::UnknownState);
        }
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(state)
            .filter(|p| now_ms - p.started_ms < PENDING_MS)
            .ok_or(SignInError::UnknownState)?;
        let (client, _) = self.client().await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| SignInError::Provider(e.to_string()))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| SignInError::Provider(format!("exchanging the code: {e}")))?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| SignInError::Token("the provider returned no ID token".into()))?;
        let verified = match id_token.claims(&client.id_token_verifier(), &pending.nonce) {
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_)) => {
                // The provider may have rotated its signing keys since discovery: once more
                // with the keys it publishes now.
                *self.client.lock().await = None;
                let (fresh, _) = self.client().await?;
                id_token.claims(&fresh.id_token_verifier(), &pending.nonce)
            }
            other => other,
        };
        let claims = verified.map_err(|e| SignInError::Token(e.to_string()))?;
        let subject = claims.subject().as_str().to_owned();
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned())
            .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()))
            .or_else(|| claims.email().map(|e| e.as_str().to_owned()))
            .unwrap_or_else(|| subject.clone());
        let name = plain(&name);
        let claim = &self.config.party_claim;
        let party = claims
            .additional_claims()
            .0
            .get(claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                SignInError::OtherParty(format!(
                    "{name} signed in, but the identity provider names no party for them (claim `{claim}`); \
                     this page serves {}'s people",
                    self.party
                ))
            })?;
        if party != self.party.as_str() {
            return Err(SignInError::OtherParty(format!(
                "{name} belongs to {party}; this page serves {}'s people only",
                self.party
            )));
        }
        let session = Session {
            person: Person {
                name,
                subject,
                issuer: claims.issuer().as_str().to_owned(),
                party: self.party.clone(),
            },
            csrf: token(),
            expires_ms: now_ms.saturating_add(i64::try_from(self.config.session_s).unwrap_or(0).saturating_mul(1000)),
            id_token: id_token.to_string(),
        };
        let id = token();
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session `id` names at `now_ms` (an expired one is forgotten).
    pub(crate) fn session(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.retain(|_, s| s.expires_ms > now_ms);
        sessions.get(id).cloned()
    }

    /// End session `id`.
    pub(crate) fn sign_out(&self, id: &str) -> Option<Session> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
    }

    /// Where to send the browser of someone who signed out of `session` so that the provider
    /// signs them out too, then back to `<public_url>/signed-out`: the provider's end-session
    /// endpoint, when it has one.
    pub(crate) async fn provider_sign_out(&self, session: &Session) -> Option<String> {
        let (_, endpoint) = self.client().await.ok()?;
        let mut url = reqwest::Url::parse(&endpoint?).ok()?;
        url.query_pairs_mut()
            .append_pair("id_token_hint", &session.id_token)
            .append_pair("client_id", &self.config.client_id)
            .append_pair(
                "post_logout_redirect_uri",
                &format!("{}/signed-out", self.config.public_url.trim_end_matches('/')),
            );
        Some(url.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn auth(session_s: u64) -> Auth {
        let config = PageConfig {
            listen: "127.0.0.1:0".into(),
            public_url: "https://localhost:1".into(),
            issuer: "http://127.0.0.1:1".into(),
            client_id: "ops".into(),
            client_secret_file: None,
            issuer_ca: None,
            party_claim: "hru_party".into(),
            purpose: "breach-response".into(),
            session_s,
        };
        Auth::new(config, "police-control".parse().unwrap()).unwrap()
    }

    fn open(auth: &Auth, now_ms: i64) -> String {
        let id = token();
        auth.sessions.lock().unwrap().insert(
            id.clone(),
            Session {
                person: Person {
                    name: "Op".into(),
                    subject: "op-1".into(),
                    issuer: "http://127.0.0.1:1".into(),
                    party: "police-control".parse().unwrap(),
                },
                csrf: token(),
                expires_ms: now_ms + i64::try_from(auth.config.session_s).unwrap() * 1000,
                id_token: String::new(),
            },
        );
        id
    }

    #[test]
    fn a_name_the_person_chose_cannot_pass_for_another_persons_record() {
        let person = |name: &str, subject: &str| Person {
            name: name.into(),
            subject: subject.into(),
            issuer: "https://idp".into(),
            party: "police-control".parse().unwrap(),
        };
        let alice = person("Insp. Alice Hart", "alice").recorded();
        // Mallory edits her display name at the provider to read as Alice's record.
        for name in [
            "Insp. Alice Hart [oidc alice at https://idp]",
            "Insp. Alice Hart [oidc alice at https://idp]\u{202e}",
            "Insp. Alice Hart\n[oidc alice at https://idp]",
        ] {
            let mallory = person(name, "mallory").recorded();
            assert!(!mallory.starts_with(&alice), "{mallory:?} passes for {alice:?}");
            assert!(mallory.ends_with("[oidc mallory at https://idp]"), "{mallory:?}");
            assert_eq!(mallory.matches('[').count(), 1, "{mallory:?}");
        }
    }

    #[test]
    fn sign_ins_under_way_are_bounded() {
        let auth = auth(60);
        for i in 0..(MAX_PENDING + 500) {
            auth.remember(
                format!("s{i}"),
                PkceCodeVerifier::new("v".repeat(43)),
                Nonce::new("n".into()),
                1_000,
            );
        }
        assert!(auth.pending.lock().unwrap().len() <= MAX_PENDING);
        assert!(
            auth.pending
                .lock()
                .unwrap()
                .contains_key(&format!("s{}", MAX_PENDING + 499)),
            "the newest kept"
        );
    }

    #[test]
    fn a_session_lasts_its_configured_time_and_ends_on_sign_out() {
        let auth = auth(60);
        let id = open(&auth, 1_000);
        assert!(auth.session(&id, 60_999).is_some());
        assert!(auth.session(&id, 61_000).is_none(), "expired at exactly its end");
        assert!(auth.session(&id, 1_000).is_none(), "and forgotten, not revived");
        let id = open(&auth, 1_000);
        assert!(auth.sign_out(&id).is_some());
        assert!(auth.session(&id, 1_001).is_none());
        assert!(auth.session(&token(), 1_001).is_none(), "an unknown id is no session");
    }

    #[tokio::test]
    async fn a_callback_not_started_in_this_browser_is_refused_before_the_provider_is_asked() {
        let auth = auth(60);
        auth.pending.lock().unwrap().insert(
            "s1".into(),
            Pending {
                verifier: PkceCodeVerifier::new("v".repeat(43)),
                nonce: Nonce::new("n".into()),
                started_ms: 0,
            },
        );
        // Without this sign-in's cookie: refused (the provider at port 1 is never reached).
        assert!(matches!(
            auth.finish("s1", false, "code", 1).await,
            Err(SignInError::UnknownState)
        ));
        // A state this node never issued.
        assert!(matches!(
            auth.finish("s3", true, "code", 1).await,
            Err(SignInError::UnknownState)
        ));
    }
}
