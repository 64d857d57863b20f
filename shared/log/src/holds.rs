//! Legal holds on the log (decision 010): `LegalHoldPlaced` and `LegalHoldReleased` are public
//! control events signed by the placing party; a producer keeps a held case's section keys
//! past their epoch's retention while its hold stands.

use hru_broker::Filter;
use hru_domain::{CaseId, EventType, PartyId};
use hru_envelope::{AudiencePolicy, Directory};
use hru_wire::v1 as pb;
use prost::Message as _;

use crate::read::Reader;
use crate::{Expect, LogError, Producer, SharedLog, StoreError};

/// One hold as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Hold id (a UUID string).
    pub id: String,
    /// The held case.
    pub case: CaseId,
    /// The party that placed it (the signer).
    pub placed_by: PartyId,
    /// Why.
    pub reason: String,
    /// Who ordered or authorised it.
    pub authority: String,
    /// When it must be reviewed, YYYY-MM-DD.
    pub review_date: String,
    /// Log sequence of the placement.
    pub sequence: u64,
    /// When it was placed (Unix ms, the signer's recorded time).
    pub placed_at_ms: i64,
    /// Its release, if released.
    pub released: Option<Release>,
}

/// A hold's release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Log sequence of the release.
    pub sequence: u64,
    /// When (Unix ms, the signer's recorded time).
    pub at_ms: i64,
    /// Why.
    pub reason: String,
}

impl Hold {
    /// Whether the hold stands (placed and not released).
    pub fn stands(&self) -> bool {
        self.released.is_none()
    }
}

/// The subjects of holds, releases and the key events that judge their signers.
fn filters() -> [Filter; 4] {
    [
        Filter::control_of_type(EventType::LegalHoldPlaced),
        Filter::control_of_type(EventType::LegalHoldReleased),
        Filter::control_of_type(EventType::KeyRotated),
        Filter::control_of_type(EventType::KeyRevoked),
    ]
}

/// A hold id as placed: a UUID in its canonical (lowercase, hyphenated) form.
pub fn canonical_id(id: &str) -> Option<String> {
    uuid::Uuid::parse_str(id)
        .ok()
        .map(|u| u.to_string())
        .filter(|c| c == id)
}

/// Every hold the log `reader` reads, in the order placed. Signers are judged as every reader
/// judges them (the log's rotations and revocations read ahead: decision 007). A placement or
/// release that does not verify, is signed by a key revoked or rotated out, whose body does not
/// decode or whose id is not canonical, or a release not signed by the hold's placer (or of a
/// hold never placed) is skipped and logged: it changes nothing.
pub async fn read(reader: &Reader, directory: &Directory) -> Result<Vec<Hold>, LogError> {
    use futures::TryStreamExt as _;
    let entries: Vec<crate::LogEntry> = reader.replay(1, &filters()).await?.try_collect().await?;
    let mut keys = hru_reader::KeyHistory::new(directory.clone());
    for e in &entries {
        keys.learn(e.sequence, &e.payload);
    }
    let mut holds: Vec<Hold> = Vec::new();
    for e in &entries {
        let skip = |cause: String| tracing::warn!(sequence = e.sequence, %cause, "legal hold event not taken");
        let v = match hru_envelope::verify(&e.payload, keys.directory()) {
            Ok(v) => v,
            Err(err) => {
                skip(err.to_string());
                continue;
            }
        };
        if let Err(verdict) = keys.judge(&v.header, e.sequence, true, e.stored) {
            skip(format!("{verdict:?}"));
            continue;
        }
        let signer = v.header.producer.party.clone();
        match v.header.event_type {
            EventType::LegalHoldPlaced => match placed(&v.body) {
                Ok((id, case, body)) if holds.iter().all(|h| h.id != id) => holds.push(Hold {
                    id,
                    case,
                    placed_by: signer,
                    reason: body.reason,
                    authority: body.authority,
                    review_date: body.review_date,
                    sequence: e.sequence,
                    placed_at_ms: v.header.recorded_at_ms,
                    released: None,
                }),
                Ok((id, ..)) => skip(format!("hold {id} was placed before")),
                Err(cause) => skip(cause),
            },
            EventType::LegalHoldReleased => {
                let Ok(body) = pb::LegalHoldReleased::decode(v.body.as_slice()) else {
                    skip("the body does not decode".into());
                    continue;
                };
                match holds.iter_mut().find(|h| h.id == body.hold) {
                    Some(h) if h.placed_by != signer => {
                        skip(format!("hold {} was placed by {}, not {signer}", h.id, h.placed_by));
                    }
                    Some(h) if h.released.is_none() => {
                        h.released = Some(Release {
                            sequence: e.sequence,
                            at_ms: v.header.recorded_at_ms,
                            reason: body.reason,
                        });
                    }
                    Some(_) => {}
                    None => skip(format!("no hold {} was placed", body.hold)),
                }
            }
            _ => {}
        }
    }
    Ok(holds)
}

/// A placement's hold id, case and body, checked.
fn placed(body: &[u8]) -> Result<(String, CaseId, pb::LegalHoldPlaced), String> {
    let body = pb::LegalHoldPlaced::decode(body).map_err(|e| format!("the body does not decode: {e}"))?;
    let id = canonical_id(&body.hold).ok_or_else(|| format!("hold {:?} is not a canonical UUID", body.hold))?;
    let case: CaseId = body
        .case_id
        .parse()
        .map_err(|e: hru_domain::FieldError| e.to_string())?;
    Ok((id, case, body))
}

/// The legal holds' grants the log `reader` reads (unverified: the read path verifies them
/// when they are taken in), in log order. Readers take them in ahead of the events they open,
/// which precede them in the log.
pub async fn held_grants(reader: &Reader) -> Result<Vec<crate::LogEntry>, LogError> {
    let mut out = Vec::new();
    let mut entries = reader.replay(1, &[Filter::all_key_grants()]).await?;
    while let Some(e) = futures::TryStreamExt::try_next(&mut entries).await? {
        let held = pb::Envelope::decode(e.payload.as_ref())
            .ok()
            .and_then(|env| pb::KeyGranted::decode(env.body.as_slice()).ok())
            .is_some_and(|g| g.held.is_some());
        if held {
            out.push(e);
        }
    }
    Ok(out)
}

/// What a hold must say, checked before anything is signed.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The case to hold.
    pub case: CaseId,
    /// Why.
    pub reason: String,
    /// Who ordered or authorised it.
    pub authority: String,
    /// When it must be reviewed, YYYY-MM-DD.
    pub review_date: String,
}

impl Placement {
    /// Every field present and the review date a date after `now_ms`; the error names the field.
    pub fn check(&self, now_ms: i64) -> Result<(), hru_domain::FieldError> {
        use hru_domain::FieldError;
        if self.reason.trim().is_empty() {
            return Err(FieldError::new("reason", "must say why the case is held"));
        }
        if self.authority.trim().is_empty() {
            return Err(FieldError::new(
                "authority",
                "must name who ordered or authorised the hold",
            ));
        }
        let review: jiff::civil::Date = self.review_date.parse().map_err(|e| {
            FieldError::new(
                "review_date",
                format!("{:?} is not a date YYYY-MM-DD ({e})", self.review_date),
            )
        })?;
        let today = jiff::Timestamp::from_millisecond(now_ms)
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date())
            .map_err(|e| FieldError::new("review_date", e.to_string()))?;
        if review <= today {
            return Err(FieldError::new(
                "review_date",
                format!("{review} is not after today ({today}): give the date the hold must next be reviewed"),
            ));
        }
        Ok(())
    }
}

/// Sign and append a hold; its id and log sequence.
pub async fn place(
    producer: &mut Producer,
    log: &impl SharedLog,
    policy: &(dyn AudiencePolicy + Sync),
    placement: &Placement,
    now_ms: i64,
) -> Result<(String, u64), StoreError> {
    placement.check(now_ms).map_err(|e| StoreError::Seal(e.to_string()))?;
    let id = uuid::Uuid::new_v4().to_string();
    let body = pb::LegalHoldPlaced {
        hold: id.clone(),
        case_id: placement.case.to_string(),
        reason: placement.reason.clone(),
        authority: placement.authority.clone(),
        review_date: placement.review_date.clone(),
    };
    let sequence = append(
        producer,
        log,
        policy,
        EventType::LegalHoldPlaced,
        body.encode_to_vec(),
        now_ms,
    )
    .await?;
    Ok((id, sequence))
}

/// Sign and append the release of `hold`, which the producer's party placed and which stands;
/// its log sequence.
pub async fn release(
    producer: &mut Producer,
    log: &impl SharedLog,
    policy: &(dyn AudiencePolicy + Sync),
    directory: &Directory,
    hold: &str,
    reason: &str,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let party = producer.sealer().producer().party.clone();
    let refuse = |reason: String| StoreError::Seal(reason);
    if reason.trim().is_empty() {
        return Err(refuse("reason: must say why the hold is released".into()));
    }
    let holds = read(log.reader(), directory).await?;
    let Some(h) = holds.iter().find(|h| h.id == hold) else {
        return Err(refuse(format!(
            "hold: no hold {hold} is on the log (`hru retention status` lists them)"
        )));
    };
    if h.placed_by != party {
        return Err(refuse(format!(
            "hold: {hold} was placed by {}; only that party may release it",
            h.placed_by
        )));
    }
    if let Some(r) = &h.released {
        return Err(refuse(format!(
            "hold: {hold} was released already (log sequence {})",
            r.sequence
        )));
    }
    let body = pb::LegalHoldReleased {
        hold: h.id.clone(),
        case_id: h.case.to_string(),
        reason: reason.to_owned(),
    };
    append(
        producer,
        log,
        policy,
        EventType::LegalHoldReleased,
        body.encode_to_vec(),
        now_ms,
    )
    .await
}

async fn append(
    producer: &mut Producer,
    log: &impl SharedLog,
    policy: &(dyn AudiencePolicy + Sync),
    event_type: EventType,
    body: Vec<u8>,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let batch = producer
        .sealer()
        .prepare_public(event_type, body, now_ms, policy)
        .map_err(|e| StoreError::Seal(e.to_string()))?;
    let sequences = producer.append(log, &batch, Expect::Any).await?;
    Ok(sequences.last().copied().unwrap_or_default())
}
