//! Appends to `HRU_EVENTS` (DESIGN §8): `Nats-Msg-Id` = event id so a retry is stored once,
//! the per-case concurrency condition, pipelined and atomic batches. Errors keep the kind
//! the server's JetStream error code gives and the client's error as their source.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use hru_broker::stream::EXPECTED_SUBJECT_HEADER;
use hru_broker::{EVENTS_STREAM, Filter, Subject, WRONG_LAST_SEQUENCE};
use hru_envelope::SealedEnvelope;

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why an append did not land; each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the case first: re-read the case and decide again.
    #[error("conflict on {case}: the case is at sequence {current}, not the one expected; re-read and retry")]
    Conflict {
        /// The case's subjects, `hru.evt.<case>.>`.
        case: Filter,
        /// The sequence of the case's last event now, as the broker states it.
        current: u64,
    },
    /// The broker refused the message for good (permissions, size, no stream).
    #[error("the broker refused {subject}: {source}")]
    Refused {
        /// Subject.
        subject: Subject,
        /// The JetStream error code, when the server gave one.
        code: Option<u64>,
        /// The broker's answer.
        #[source]
        source: Source,
    },
    /// No acknowledgement after every retry; the same bytes may be retried later (deduplicated).
    #[error("no acknowledgement for {subject} after {attempts} attempts: {source}")]
    Unavailable {
        /// Subject.
        subject: Subject,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Source,
    },
}

/// What the case must look like for an append to land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No condition (key grants, control events, or a caller that does not care).
    Any,
    /// The case's last event is at this stream sequence (0: the case has no event yet).
    CaseAt(u64),
}

/// The broker's acknowledgement of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Stream sequence of the event.
    pub sequence: u64,
    /// Whether the broker had it already (a retry of an acknowledged publish).
    pub duplicate: bool,
}

/// JetStream error code: a message with the same id is still being stored.
const DUPLICATE_IN_PROCESS: u64 = 10158;

/// Attempts of an ambiguous publish (timeout, lost connection) before giving up.
const PUBLISH_ATTEMPTS: u32 = 8;

/// The server's JetStream answer inside a client error, if the server answered.
fn server_answer<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a jetstream::Error> {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(api) = error.downcast_ref::<jetstream::Error>() {
            return Some(api);
        }
        next = error.source();
    }
    None
}

/// The case's last sequence a wrong-last-sequence answer (JetStream error code 10071) states:
/// the server gives it only in the answer's description (`wrong last sequence: N`).
fn stated_last_sequence(answer: &jetstream::Error) -> Option<u64> {
    const STATED: &str = "wrong last sequence: ";
    if answer.error_code().0 != WRONG_LAST_SEQUENCE {
        return None;
    }
    let text = answer.to_string();
    let at = text.find(STATED)? + STATED.len();
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The append side of a log handle: publishes to `HRU_EVENTS`, and resolves an ambiguous
/// answer against `HRU_EVENTS` itself (never a view, which may lag it).
#[derive(Clone)]
pub struct Appender {
    js: jetstream::Context,
    atomic: bool,
}

/// An expected last sequence no subject can have: a probe carrying it is never stored.
const PROBE_EXPECTATION: u64 = 1 << 62;

/// Probes and look-ups of a resolution before it gives up (each waits a little longer).
const RESOLVE_ATTEMPTS: u32 = 20;

impl Appender {
    /// An appender through `js`; `atomic` when `HRU_EVENTS` takes atomic batches.
    pub(crate) fn new(js: jetstream::Context, atomic: bool) -> Self {
        Self { js, atomic }
    }

    /// The last stream sequence on the subjects `on` (the envelope's own subject, or its case's
    /// filter) as the stream leader states it, from refusing an empty probe on `subject` that
    /// expects an impossible last sequence: nothing is stored, and the party needs no right
    /// beyond publishing on its own subject. Waits out a message in flight on `on`.
    async fn stated_last(&self, subject: &Subject, on: &str) -> Result<u64, Source> {
        let probe = jetstream::message::PublishMessage::build()
            .payload(Bytes::new())
            .expected_last_subject_sequence(PROBE_EXPECTATION)
            .header(EXPECTED_SUBJECT_HEADER, on);
        let mut last = String::from("none");
        for attempt in 1..=RESOLVE_ATTEMPTS {
            let answered = match self.js.send_publish(subject.to_string(), probe.clone()).await {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            match answered {
                Ok(ack) => return Err(format!("the probe was stored at {} (it never should be)", ack.sequence).into()),
                Err(e) => match server_answer(&e).map(|a| (a.error_code().0, stated_last_sequence(a))) {
                    Some((WRONG_LAST_SEQUENCE, Some(last))) => return Ok(last),
                    // A message on `on` is being stored: its outcome decides.
                    Some((WRONG_LAST_SEQUENCE, None)) => {}
                    // 503: the stream is electing a leader or catching up.
                    Some(_) if server_answer(&e).is_some_and(|a| a.code() == 503) => last = e.to_string(),
                    Some((code, _)) => return Err(format!("the probe of {on} was refused ({code}): {e}").into()),
                    None => {
                        tracing::debug!(attempt, cause = %e, "probe unanswered; asking again");
                        last = e.to_string();
                    }
                },
            }
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
        }
        Err(format!("no stated last sequence of {on} after {RESOLVE_ATTEMPTS} probes; last: {last}").into())
    }

    /// Whether the broker holds `sealed` at a log sequence after `after`, asked of `HRU_EVENTS`
    /// itself: the leader states the last sequence on the envelope's subject, then the last
    /// message on that subject (a direct get, waited for until some replica holds that
    /// sequence) says whose it is. `Err` when the log cannot tell, for instance when another
    /// writer of the same party has appended on the same subject since.
    pub async fn stored_after(&self, sealed: &SealedEnvelope, after: u64) -> Result<Option<u64>, Source> {
        let last = self.stated_last(&sealed.subject, sealed.subject.as_str()).await?;
        if last <= after {
            return Ok(None);
        }
        let id = sealed.header.event_id.to_string();
        let get = hru_broker::stream::last_message_api(EVENTS_STREAM, sealed.subject.as_str());
        let client = self.js.client();
        for attempt in 1..=RESOLVE_ATTEMPTS {
            let answer = tokio::time::timeout(Duration::from_secs(5), client.request(get.clone(), Bytes::new())).await;
            let message = match answer {
                Ok(Ok(message)) => message,
                Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                    return Err(
                        format!("{EVENTS_STREAM} answers no direct get; `hru log provision` enables them").into(),
                    );
                }
                Ok(Err(e)) => return Err(Box::new(e)),
                Err(_) => return Err(format!("no answer to {get}").into()),
            };
            // The server appends its own `Nats-*` headers after the publisher's: take the last.
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get_last(name))
                    .map(|v| v.as_str().to_owned())
            };
            let sequence = header("Nats-Sequence").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if sequence == last {
                if header(async_nats::header::NATS_MESSAGE_ID.as_ref()).as_deref() == Some(id.as_str()) {
                    return Ok(Some(last));
                }
                // Another writer of the party appended on this subject last. Had ours been
                // stored after `after`, it would be the case's first event after `after`, so
                // that writer's own condition tells: a case still at `after` means ours is not.
                let case = sealed.header.case_id.map(Filter::case_events);
                let expected_on = header(EXPECTED_SUBJECT_HEADER);
                let expected = header("Nats-Expected-Last-Subject-Sequence").and_then(|v| v.parse::<u64>().ok());
                if case.is_some_and(|c| expected_on.as_deref() == Some(c.as_str())) && expected == Some(after) {
                    return Ok(None);
                }
                return Err(format!("the last message on {} is another writer's", sealed.subject).into());
            }
            if sequence > last {
                return Err(format!("{} has moved on to {sequence} since {last}", sealed.subject).into());
            }
            // The replica that answered has not stored `last` yet.
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
        }
        Err(format!(
            "no replica held {last} on {} after {RESOLVE_ATTEMPTS} look-ups",
            sealed.subject
        )
        .into())
    }

    /// Append one sealed envelope with `Nats-Msg-Id` = its event id; returns its stream sequence.
    pub async fn append(&self, sealed: &SealedEnvelope) -> Result<u64, AppendError> {
        self.append_expecting(sealed, Expect::Any).await.map(|a| a.sequence)
    }

    /// Append one envelope, optionally only if its case is at `expect`. An ambiguous publish is
    /// retried with the same bytes and id, so the broker stores it once.
    pub async fn append_expecting(&self, sealed: &SealedEnvelope, expect: Expect) -> Result<Ack, AppendError> {
        let case = sealed.header.case_id.map(Filter::case_events);
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::copy_from_slice(&sealed.bytes))
            .message_id(sealed.header.event_id.to_string());
        if let (Expect::CaseAt(seq), Some(filter)) = (expect, &case) {
            publish = publish
                .expected_last_subject_sequence(seq)
                .header(EXPECTED_SUBJECT_HEADER, filter.as_str());
        }
        let mut last_error: Source = "no attempt made".into();
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let acked = match self.js.send_publish(sealed.subject.to_string(), publish.clone()).await {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            let e = match acked {
                Ok(ack) => {
                    return Ok(Ack {
                        sequence: ack.sequence,
                        duplicate: ack.duplicate,
                    });
                }
                Err(e) => e,
            };
            let answer = server_answer(&e);
            match answer.map(|a| (a.error_code().0, a.code())) {
                Some((WRONG_LAST_SEQUENCE, _)) => {
                    // The server may check the expectation before deduplicating, so a retry of
                    // an event it already holds (or is storing) can land here: ask the log.
                    let after = match expect {
                        Expect::CaseAt(seq) => seq,
                        Expect::Any => 0,
                    };
                    let undecided = |source: Source| AppendError::Unavailable {
                        subject: sealed.subject.clone(),
                        attempts: attempt,
                        source: format!("could not tell whether the broker stored it: {source}").into(),
                    };
                    if let Some(sequence) = self.stored_after(sealed, after).await.map_err(undecided)? {
                        return Ok(Ack {
                            sequence,
                            duplicate: true,
                        });
                    }
                    let case = case.clone().unwrap_or_else(Filter::all_case_events);
                    let current = match answer.and_then(stated_last_sequence) {
                        Some(seq) => seq,
                        None => self
                            .stated_last(&sealed.subject, case.as_str())
                            .await
                            .map_err(undecided)?,
                    };
                    return Err(AppendError::Conflict { case, current });
                }
                // 503: the cluster is electing a leader or catching up; 10158: the same message id
                // is still being stored (its answer decides); anything else the server answers is
                // final for these bytes.
                Some((code, status)) if status != 503 && code != DUPLICATE_IN_PROCESS => {
                    return Err(AppendError::Refused {
                        subject: sealed.subject.clone(),
                        code: Some(code),
                        source: Box::new(e),
                    });
                }
                _ if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                    return Err(AppendError::Refused {
                        subject: sealed.subject.clone(),
                        code: None,
                        source: Box::new(e),
                    });
                }
                _ => {
                    // "No responders" (reported as no stream) also happens while a clustered
                    // stream elects a leader: the stream was checked at open, so it is retried.
                    tracing::warn!(attempt, subject = %sealed.subject, cause = %e, "ambiguous publish; retrying the same bytes");
                    last_error = Box::new(e);
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
            }
        }
        Err(AppendError::Unavailable {
            subject: sealed.subject.clone(),
            attempts: PUBLISH_ATTEMPTS,
            source: last_error,
        })
    }

    /// Publish envelopes without waiting between them (no case condition) and await their
    /// acknowledgements in order; stops at the first failure. Returns the acknowledgements of
    /// the prefix that landed and the failure, if any.
    pub async fn append_pipelined(&self, envelopes: &[&SealedEnvelope]) -> (Vec<Ack>, Option<AppendError>) {
        // A function, not a closure held across the awaits below: the future stays `Send` for
        // any lifetime (a service spawns it).
        fn unavailable(env: &SealedEnvelope, e: Source) -> AppendError {
            AppendError::Unavailable {
                subject: env.subject.clone(),
                attempts: 1,
                source: e,
            }
        }
        let mut pending = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            let publish = jetstream::message::PublishMessage::build()
                .payload(Bytes::copy_from_slice(&env.bytes))
                .message_id(env.header.event_id.to_string());
            match self.js.send_publish(env.subject.to_string(), publish).await {
                Ok(future) => pending.push(future),
                Err(e) => return (Vec::new(), Some(unavailable(env, Box::new(e)))),
            }
        }
        let mut acks = Vec::with_capacity(envelopes.len());
        for (env, future) in envelopes.iter().zip(pending) {
            match future.await {
                Ok(ack) => acks.push(Ack {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                }),
                Err(e) => return (acks, Some(unavailable(env, Box::new(e)))),
            }
        }
        (acks, None)
    }

    /// Whether the stream takes atomic batches (nats-server 2.12+ with `allow_atomic`, seen
    /// when the handle opened `HRU_EVENTS`): then a whole batch is stored, and synced, as one.
    pub fn atomic_batches(&self) -> bool {
        self.atomic
    }

    /// Publish envelopes as one atomic batch: all are stored or none, under one
    /// acknowledgement. Returns their stream sequences.
    pub async fn append_atomic(&self, envelopes: &[&SealedEnvelope]) -> Result<Vec<u64>, AppendError> {
        let Some(last) = envelopes.last() else {
            return Ok(Vec::new());
        };
        let batch_id = format!("b{}", last.header.event_id.0.simple());
        // Collected before the await, so the future holds no closure over borrowed envelopes.
        let messages: Vec<_> = envelopes
            .iter()
            .map(|env| {
                (
                    env.subject.clone(),
                    env.header.event_id.to_string(),
                    Bytes::copy_from_slice(&env.bytes),
                )
            })
            .collect();
        atomic_publish(&self.js.client(), &batch_id, messages, envelopes.len()).await
    }

    /// Append a prepared batch in order (grants unconditionally, the case event under `expect`),
    /// committing each acknowledged envelope to `sealer`: whatever fails, the producer's chain
    /// stands exactly after the last envelope the log holds.
    pub async fn append_batch(
        &self,
        sealer: &mut hru_envelope::Sealer,
        batch: &hru_envelope::SealedBatch,
        expect: Expect,
    ) -> Result<Vec<Ack>, AppendError> {
        let mut acks = Vec::with_capacity(batch.envelopes.len());
        for (i, envelope) in batch.envelopes.iter().enumerate() {
            let condition = if envelope.header.case_id.is_some() {
                expect
            } else {
                Expect::Any
            };
            acks.push(self.append_expecting(envelope, condition).await?);
            sealer.commit(batch, i + 1);
        }
        Ok(acks)
    }
}

/// Publish `count` messages (subject, message id, payload) as one atomic batch `batch_id`
/// under one acknowledgement; returns their stream sequences. The raw building block the
/// ingest benchmark measures the producer against, and what [`Appender::append_atomic`] sends.
pub async fn atomic_publish(
    client: &async_nats::Client,
    batch_id: &str,
    messages: impl IntoIterator<Item = (Subject, String, Bytes)>,
    count: usize,
) -> Result<Vec<u64>, AppendError> {
    let unavailable = |subject: &Subject, e: Source| AppendError::Unavailable {
        subject: subject.clone(),
        attempts: 1,
        source: e,
    };
    for (i, (subject, id, payload)) in messages.into_iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        headers.insert(async_nats::header::NATS_BATCH_ID, batch_id);
        headers.insert(async_nats::header::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
        if i + 1 < count {
            client
                .publish_with_headers(subject.to_string(), headers, payload)
                .await
                .map_err(|e| unavailable(&subject, Box::new(e)))?;
            continue;
        }
        headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.request_with_headers(subject.to_string(), headers, payload),
        )
        .await
        .map_err(|e| unavailable(&subject, Box::new(e)))?
        .map_err(|e| unavailable(&subject, Box::new(e)))?;
        let ack: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| unavailable(&subject, Box::new(e)))?;
        if let Some(error) = ack.get("error") {
            let code = error.get("err_code").and_then(serde_json::Value::as_u64);
            return Err(AppendError::Refused {
                subject,
                code,
                source: error.to_string().into(),
            });
        }
        let seq = ack
            .get("seq")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| unavailable(&subject, "acknowledgement without seq".into()))?;
        let n = count as u64;
        return Ok((seq + 1 - n..=seq).collect());
    }
    Ok(Vec::new())
}
