//! Reading a stream of the log in order, as a `Stream` of entries fetched in bounded pages by
//! an ordered consumer (never a whole range in memory), and the single-message look-ups a
//! reader needs. A party's view reports each copy under the `HRU_EVENTS` sequence it was
//! sourced from, so sequences mean the same to every reader.

use async_nats::jetstream::{consumer, stream};
use futures::{StreamExt as _, TryStreamExt as _};
use hru_broker::{BrokerError, Filter, request, source_sequence};

use crate::{LogEntry, LogError};

/// Entries of the log in order, fetched page by page as they are consumed.
pub type Entries = futures::stream::BoxStream<'static, Result<LogEntry, LogError>>;

/// How the stream read numbers its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbering {
    /// `HRU_EVENTS` (or the position stream) itself: the stored sequence.
    Stored,
    /// A party's view: the source sequence its `Nats-Stream-Source` header names.
    Sourced,
}

impl Numbering {
    fn sequence(self, stored: u64, headers: Option<&async_nats::HeaderMap>) -> Result<u64, LogError> {
        match self {
            Self::Stored => Ok(stored),
            Self::Sourced => source_sequence(headers).ok_or(BrokerError::Unsourced { view_sequence: stored }),
        }
    }
}

/// A reader of one stream: `HRU_EVENTS` or the position stream (stored sequences), or a
/// party's view (source sequences).
#[derive(Clone)]
pub struct Reader {
    stream: stream::Stream,
    numbering: Numbering,
}

impl Reader {
    /// A reader of a stream numbered by its own sequences.
    pub(crate) fn stored(stream: stream::Stream) -> Self {
        Self {
            stream,
            numbering: Numbering::Stored,
        }
    }

    /// A reader of a party's view, numbered by `HRU_EVENTS` sequences.
    pub(crate) fn sourced(stream: stream::Stream) -> Self {
        Self {
            stream,
            numbering: Numbering::Sourced,
        }
    }

    /// The read stream's state (messages, first and last stored sequence).
    async fn state(&self) -> Result<stream::State, LogError> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await.map_err(request("stream info"))?.state.clone())
    }

    /// The log sequence of the message stored at `stored`.
    async fn sequence_at(&self, stored: u64) -> Result<u64, LogError> {
        if self.numbering == Numbering::Stored {
            return Ok(stored);
        }
        let message = self
            .stream
            .get_raw_message(stored)
            .await
            .map_err(request("read view message"))?;
        self.numbering.sequence(stored, Some(&message.headers))
    }

    /// The first stored sequence holding log sequence `from` or later (one past the end when
    /// none does). Views keep their source's order, so this is a binary search.
    pub async fn read_position(&self, from: u64) -> Result<u64, LogError> {
        if self.numbering == Numbering::Stored {
            return Ok(from.max(1));
        }
        let state = self.state().await?;
        if state.messages == 0 {
            return Ok(state.last_sequence + 1);
        }
        let (mut lo, mut hi) = (state.first_sequence, state.last_sequence + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.sequence_at(mid).await? >= from {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// Whether the stream holds everything its source had when asked: always for
    /// `HRU_EVENTS` itself; for a view, when the server reports no sourcing lag. Events of the
    /// log a party is not entitled to never reach its view, so "the view's last copy" cannot
    /// say this; the sourcing lag can.
    pub async fn caught_up(&self) -> Result<bool, LogError> {
        if self.numbering == Numbering::Stored {
            return Ok(true);
        }
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(request("stream info"))?;
        Ok(info.sources.iter().all(|s| s.lag == 0))
    }

    /// The first and last log sequence this reader still holds (retention may have removed older).
    pub async fn bounds(&self) -> Result<(u64, u64), LogError> {
        let state = self.state().await?;
        if state.messages == 0 {
            return Ok((state.first_sequence, state.last_sequence));
        }
        Ok((
            self.sequence_at(state.first_sequence).await?,
            self.sequence_at(state.last_sequence).await?,
        ))
    }

    /// The last log sequence this reader holds (0 when it holds nothing).
    pub async fn last_sequence(&self) -> Result<u64, LogError> {
        let state = self.state().await?;
        if state.messages == 0 {
            return Ok(state.last_sequence);
        }
        self.sequence_at(state.last_sequence).await
    }

    /// The log sequence of the last message on subjects matching `filter` (0 when none).
    pub async fn last_sequence_of(&self, filter: &Filter) -> Result<u64, LogError> {
        match self.stream.get_last_raw_message_by_subject(filter.as_str()).await {
            Ok(m) => self.numbering.sequence(m.sequence, Some(&m.headers)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(request("last message by subject")(e)),
        }
    }

    /// The sequence of a case's last event (0 when the case has none): what an append expects.
    pub async fn case_version(&self, case: hru_domain::CaseId) -> Result<u64, LogError> {
        self.last_sequence_of(&Filter::case_events(case)).await
    }

    /// Every message from log sequence `from` (1 = the start) on subjects matching any of
    /// `filters` (all when empty), in order, up to the end of the log as it was when called.
    pub async fn replay(&self, from: u64, filters: &[Filter]) -> Result<Entries, LogError> {
        let start_sequence = self.read_position(from).await?;
        self.read(
            consumer::DeliverPolicy::ByStartSequence { start_sequence },
            filters,
            false,
        )
        .await
    }

    /// Every message stored at or after `since_ms` (Unix ms, the broker's clock) on subjects
    /// matching any of `filters`, in order, up to the end of the log as it was when called.
    pub async fn replay_since(&self, since_ms: i64, filters: &[Filter]) -> Result<Entries, LogError> {
        let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
            .map_err(request("replay since"))?;
        self.read(consumer::DeliverPolicy::ByStartTime { start_time }, filters, false)
            .await
    }

    /// Follow the stream from log sequence `from` on, live: each message as it is stored.
    pub async fn follow(&self, from: u64, filters: &[Filter]) -> Result<Entries, LogError> {
        let start_sequence = self.read_position(from).await?;
        self.read(
            consumer::DeliverPolicy::ByStartSequence { start_sequence },
            filters,
            true,
        )
        .await
    }

    /// The log sequence of the message with `Nats-Msg-Id` = `id` on exactly `subject`, if this
    /// reader holds it (reads headers only, page by page).
    pub async fn find_message_id(&self, subject: &hru_broker::Subject, id: &str) -> Result<Option<u64>, LogError> {
        let config = consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            headers_only: true,
            ..Default::default()
        };
        let mut consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(request("create ordered consumer"))?;
        let info = consumer.info().await.map_err(request("consumer info"))?.clone();
        let mut found = None;
        if info.num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(request("consume"))?;
            for _ in 0..info.num_pending {
                let Some(message) = messages.next().await else { break };
                let message = message.map_err(request("consume"))?;
                let same = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .is_some_and(|v| v.as_str() == id);
                if same {
                    let stored = message.info().map_err(request("message info"))?;
                    found = Some(
                        self.numbering
                            .sequence(stored.stream_sequence, message.headers.as_ref())?,
                    );
                    break;
                }
            }
        }
        if let Err(e) = self.stream.delete_consumer(&info.name).await {
            tracing::debug!(consumer = %info.name, cause = %e, "consumer already gone");
        }
        Ok(found)
    }

    /// Messages from `deliver_policy` on, on subjects matching any of `filters` (all when
    /// empty), in order; up to the end as it was when called unless `live`.
    async fn read(
        &self,
        deliver_policy: consumer::DeliverPolicy,
        filters: &[Filter],
        live: bool,
    ) -> Result<Entries, LogError> {
        let filters: Vec<String> = filters.iter().map(ToString::to_string).collect();
        let config = consumer::pull::OrderedConfig {
            filter_subjects: filters.clone(),
            deliver_policy,
            ..Default::default()
        };
        let mut consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(request("create ordered consumer"))?;
        let info = consumer.info().await.map_err(request("consumer info"))?;
        if info.config.filter_subjects.len() != filters.len() {
            return Err(BrokerError::Request {
                operation: "create ordered consumer",
                source: format!(
                    "the server kept filters {:?} of {filters:?}",
                    info.config.filter_subjects
                )
                .into(),
            });
        }
        let pending = usize::try_from(info.num_pending).unwrap_or(usize::MAX);
        if pending == 0 && !live {
            return Ok(futures::stream::empty().boxed());
        }
        let numbering = self.numbering;
        let messages = consumer.messages().await.map_err(request("consume"))?;
        let entries = messages
            .map_err(request("consume"))
            .and_then(move |message| async move {
                let stored = message.info().map_err(request("message info"))?;
                Ok(LogEntry {
                    sequence: numbering.sequence(stored.stream_sequence, message.headers.as_ref())?,
                    subject: hru_broker::Subject::from_wire(message.subject.as_str()),
                    payload: message.payload.clone(),
                })
            });
        Ok(if live {
            entries.boxed()
        } else {
            entries.take(pending).boxed()
        })
    }
}
