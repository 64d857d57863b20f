//! Reading a stream of the log in order, as a `Stream` of entries fetched in bounded pages by
//! batched direct gets (never a whole range in memory, and no consumer: a reader needs no
//! right to create one, so no right to point one's deliveries anywhere), and the
//! single-message look-ups a reader needs. A party's view reports each copy under the `HRU_EVENTS` sequence it was
//! sourced from, so sequences mean the same to every reader.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::stream;
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
    client: async_nats::Client,
    stream: stream::Stream,
    name: String,
    numbering: Numbering,
}

impl Reader {
    /// A reader of a stream numbered by its own sequences.
    pub(crate) fn stored(client: async_nats::Client, stream: stream::Stream) -> Self {
        Self {
            client,
            name: stream.cached_info().config.name.clone(),
            stream,
            numbering: Numbering::Stored,
        }
    }

    /// A reader of a party's view, numbered by `HRU_EVENTS` sequences.
    pub(crate) fn sourced(client: async_nats::Client, stream: stream::Stream) -> Self {
        Self {
            client,
            name: stream.cached_info().config.name.clone(),
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
    /// `HRU_EVENTS` itself; for a view, when the server has set up its sourcing (a view just
    /// provisioned, or on a server just restarted, copies nothing for a moment and reports no
    /// lag meanwhile) and reports no sourcing lag. Events of the log a party is not entitled
    /// to never reach its view, so "the view's last copy" cannot say this; the sourcing can.
    pub async fn caught_up(&self) -> Result<bool, LogError> {
        if self.numbering == Numbering::Stored {
            return Ok(true);
        }
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(request("stream info"))?;
        Ok(info.sources.iter().all(|s| s.active.is_some() && s.lag == 0))
    }

    /// Wait up to `within` for [`Reader::caught_up`]: whether it is.
    pub async fn wait_caught_up(&self, within: std::time::Duration) -> Result<bool, LogError> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.caught_up().await? {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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

    /// The last message on subjects matching `filter`, if any.
    pub async fn last_of(&self, filter: &Filter) -> Result<Option<LogEntry>, LogError> {
        match self.stream.get_last_raw_message_by_subject(filter.as_str()).await {
            Ok(m) => Raw {
                stored: m.sequence,
                subject: m.subject.to_string(),
                headers: m.headers,
                payload: m.payload,
            }
            .entry(self.numbering)
            .map(Some),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
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
        let start = Start::Stored(self.read_position(from).await?);
        self.read_to_end(start, filters).await
    }

    /// Every message stored at or after `since_ms` (Unix ms, the broker's clock) on subjects
    /// matching any of `filters`, in order, up to the end of the log as it was when called.
    pub async fn replay_since(&self, since_ms: i64, filters: &[Filter]) -> Result<Entries, LogError> {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
            .map_err(request("replay since"))?;
        let at = at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(request("replay since"))?;
        self.read_to_end(Start::Time(at), filters).await
    }

    /// Follow the stream from log sequence `from` on, live, on subjects matching `filter`
    /// (all when `None`): each message as it is stored, polled page by page.
    pub async fn follow(&self, from: u64, filter: Option<&Filter>) -> Result<Entries, LogError> {
        let pages = self.follow_pages(from, filter).await?;
        Ok(pages
            .map_ok(|page| futures::stream::iter(page.entries.into_iter().map(Ok)))
            .try_flatten()
            .boxed())
    }

    /// As [`Reader::follow`], a page at a time: each page holds what the broker had from the
    /// read position on (at most a bounded number of messages and bytes), and how many more
    /// it held then.
    pub async fn follow_pages(&self, from: u64, filter: Option<&Filter>) -> Result<Pages, LogError> {
        let cursor = Cursor::new(
            self.clone(),
            Start::Stored(self.read_position(from).await?),
            filter.map(ToString::to_string),
            None,
        );
        let pages = futures::stream::try_unfold((cursor, IDLE_FIRST), move |(mut c, mut idle)| async move {
            loop {
                let (page, pending) = c.page().await?;
                if !page.is_empty() {
                    let entries = page
                        .into_iter()
                        .map(|raw| raw.entry(c.reader.numbering))
                        .collect::<Result<Vec<_>, _>>()?;
                    return Ok(Some((Page { entries, pending }, (c, IDLE_FIRST))));
                }
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(IDLE_POLL);
            }
        });
        Ok(pages.boxed())
    }

    /// The log sequence of the message with `Nats-Msg-Id` = `id` on exactly `subject`, if this
    /// reader holds it (reads page by page).
    pub async fn find_message_id(&self, subject: &hru_broker::Subject, id: &str) -> Result<Option<u64>, LogError> {
        let end = self.state().await?.last_sequence;
        let mut cursor = Cursor::new(self.clone(), Start::Stored(1), Some(subject.to_string()), Some(end));
        while let Some(raw) = cursor.next().await? {
            let same = raw
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .is_some_and(|v| v.as_str() == id);
            if same {
                return Ok(Some(raw.entry(self.numbering)?.sequence));
            }
        }
        Ok(None)
    }

    /// Messages from `start` on, on subjects matching any of `filters` (all when empty), in
    /// order, up to the stream's last message as it is now: one cursor per filter, merged by
    /// stored sequence (a message two filters match is read once).
    async fn read_to_end(&self, start: Start, filters: &[Filter]) -> Result<Entries, LogError> {
        let end = self.state().await?.last_sequence;
        let filters: Vec<Option<String>> = if filters.is_empty() {
            vec![None]
        } else {
            filters.iter().map(|f| Some(f.to_string())).collect()
        };
        let cursors: Vec<Cursor> = filters
            .into_iter()
            .map(|filter| Cursor::new(self.clone(), start.clone(), filter, Some(end)))
            .collect();
        let numbering = self.numbering;
        let heads: Vec<Option<Raw>> = vec![None; cursors.len()];
        let merged = futures::stream::try_unfold(
            (cursors, heads, true),
            move |(mut cursors, mut heads, first)| async move {
                if first {
                    for (cursor, head) in cursors.iter_mut().zip(heads.iter_mut()) {
                        *head = cursor.next().await?;
                    }
                }
                let Some(least) = heads.iter().flatten().map(|r| r.stored).min() else {
                    return Ok(None);
                };
                let mut taken = None;
                for (cursor, head) in cursors.iter_mut().zip(heads.iter_mut()) {
                    if head.as_ref().is_some_and(|r| r.stored == least) {
                        taken = head.take();
                        *head = cursor.next().await?;
                    }
                }
                let Some(raw) = taken else {
                    return Ok(None);
                };
                Ok(Some((raw.entry(numbering)?, (cursors, heads, false))))
            },
        );
        Ok(merged.boxed())
    }

    /// One page of a batched direct get from `start`: the messages (at most [`PAGE_MESSAGES`]
    /// and about [`PAGE_BYTES`]; none when the replica that answered holds nothing matching
    /// from there), how many more matching messages that replica holds, and the last sequence
    /// the batch covered. The server appends its `Nats-*` headers after those stored with the
    /// message, which a publisher chose: only the last value of each is the server's, and a
    /// page whose sequences do not rise from `start` is refused.
    async fn direct_page(&self, start: &Start, filter: Option<&str>) -> Result<(Vec<Raw>, u64, u64), LogError> {
        let mut body = serde_json::json!({ "batch": PAGE_MESSAGES, "max_bytes": PAGE_BYTES });
        start.ask_from(&mut body);
        if let Some(filter) = filter {
            body["next_by_subj"] = filter.into();
        }
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(request("direct get"))?;
        self.client
            .publish_with_reply(
                hru_broker::stream::direct_get_api(&self.name),
                inbox,
                body.to_string().into(),
            )
            .await
            .map_err(request("direct get"))?;
        let mut page: Vec<Raw> = Vec::new();
        loop {
            let message = tokio::time::timeout(PAGE_WAIT, answers.next())
                .await
                .map_err(|_| BrokerError::Request {
                    operation: "direct get",
                    source: format!(
                        "no answer from {} within {PAGE_WAIT:?} (a server refusing the request for want of \
                         permission does not answer: an authorization generated before readers used \
                         direct gets lacks them; generate it again with `hru policy nats-config`)",
                        self.name
                    )
                    .into(),
                })?
                .ok_or_else(|| BrokerError::Request {
                    operation: "direct get",
                    source: "the answer subscription closed".into(),
                })?;
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get_last(name))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
            };
            match message.status.map(|s| s.as_u16()) {
                None | Some(200) => {
                    let headers = message.headers.clone().unwrap_or_default();
                    let stored = header("Nats-Sequence").ok_or_else(|| BrokerError::Request {
                        operation: "direct get",
                        source: "a message without Nats-Sequence".into(),
                    })?;
                    let subject = headers
                        .get_last("Nats-Subject")
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    let floor = match (page.last(), start) {
                        (Some(previous), _) => previous.stored + 1,
                        (None, Start::Stored(seq)) => *seq,
                        (None, Start::Time(_)) => 1,
                    };
                    if stored < floor {
                        return Err(BrokerError::Request {
                            operation: "direct get",
                            source: format!(
                                "{} answered sequence {stored} where {floor} or later was due",
                                self.name
                            )
                            .into(),
                        });
                    }
                    page.push(Raw {
                        stored,
                        subject,
                        headers,
                        payload: message.payload.clone(),
                    });
                }
                // End of batch: how many more match, and the last sequence the batch covered.
                Some(204) => {
                    return Ok((
                        page,
                        header("Nats-Num-Pending").unwrap_or(0),
                        header("Nats-Last-Sequence").unwrap_or(0),
                    ));
                }
                Some(404) => return Ok((page, 0, 0)),
                Some(503) => {
                    return Err(BrokerError::Request {
                        operation: "direct get",
                        source: format!(
                            "{} answers no direct get: the stream is missing, no replica is up, or direct gets \
                             are off (`hru log provision` turns them on)",
                            self.name
                        )
                        .into(),
                    });
                }
                Some(code) => {
                    return Err(BrokerError::Request {
                        operation: "direct get",
                        source: format!("{} answered {code} {:?}", self.name, message.description).into(),
                    });
                }
            }
        }
    }

    /// The stored sequence of the first message at or after `start` matching `filter`, as the
    /// stream leader holds it (the check that a replica's "nothing more" is not lag).
    async fn leader_next(&self, start: &Start, filter: Option<&str>) -> Result<Option<u64>, LogError> {
        let mut body = serde_json::json!({ "next_by_subj": filter.unwrap_or(">") });
        start.ask_from(&mut body);
        let answer = self
            .client
            .request(hru_broker::stream::message_get_api(&self.name), body.to_string().into())
            .await
            .map_err(request("message get"))?;
        let value: serde_json::Value = serde_json::from_slice(&answer.payload).map_err(request("message get"))?;
        if let Some(error) = value.get("error") {
            if error.get("code").and_then(serde_json::Value::as_u64) == Some(404) {
                return Ok(None);
            }
            return Err(BrokerError::Request {
                operation: "message get",
                source: error.to_string().into(),
            });
        }
        Ok(value.pointer("/message/seq").and_then(serde_json::Value::as_u64))
    }
}

/// Messages per direct-get page.
const PAGE_MESSAGES: usize = 256;
/// Bytes per direct-get page (a page holds at least one message, up to the 1 MiB payload limit).
const PAGE_BYTES: usize = 4 << 20;
/// How long a page may take to arrive.
const PAGE_WAIT: Duration = Duration::from_secs(10);
/// First wait of a live read that found nothing new.
const IDLE_FIRST: Duration = Duration::from_millis(5);
/// Tries of a read that a replica answering direct gets lags behind the leader before it fails.
const LAGGING_ATTEMPTS: u32 = 100;
/// Longest wait between polls of a live read that has caught up.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Where a read starts.
#[derive(Debug, Clone)]
enum Start {
    /// At this stored sequence of the read stream.
    Stored(u64),
    /// At the first message stored at or after this time (RFC 3339).
    Time(String),
}

impl Start {
    /// Put this start into a direct or message get request.
    fn ask_from(&self, body: &mut serde_json::Value) {
        match self {
            Self::Stored(seq) => body["seq"] = (*seq).into(),
            Self::Time(at) => body["start_time"] = at.clone().into(),
        }
    }
}

/// One stored message as a direct get returns it.
#[derive(Debug, Clone)]
struct Raw {
    stored: u64,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

impl Raw {
    fn entry(self, numbering: Numbering) -> Result<LogEntry, LogError> {
        // The server's timestamp is the last value (a publisher may send its own first).
        let time = self
            .headers
            .get_last("Nats-Time-Stamp")
            .and_then(|v| v.as_str().parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond());
        let stored = match (numbering, time) {
            (_, None) => hru_broker::StoredAt::Unknown,
            (Numbering::Stored, Some(t)) => hru_broker::StoredAt::Exactly(t),
            (Numbering::Sourced, Some(t)) => hru_broker::StoredAt::NoLaterThan(t),
        };
        Ok(LogEntry {
            sequence: numbering.sequence(self.stored, Some(&self.headers))?,
            subject: hru_broker::Subject::from_wire(&self.subject),
            payload: self.payload,
            stored,
        })
    }
}

/// A page of a live read.
#[derive(Debug)]
pub struct Page {
    /// The entries, in order.
    pub entries: Vec<LogEntry>,
    /// Messages the broker held beyond this page when it answered.
    pub pending: u64,
}

/// Pages of a live read, as they are stored.
pub type Pages = futures::stream::BoxStream<'static, Result<Page, LogError>>;

/// A read position on one stream and filter, fetching a page at a time; with an `end`, it stops
/// after that stored sequence.
#[derive(Clone)]
struct Cursor {
    reader: Reader,
    next: Start,
    filter: Option<String>,
    end: Option<u64>,
    buffered: VecDeque<Raw>,
    done: bool,
    /// Consecutive tries the answering replica was behind the leader.
    lagging: u32,
}

impl Cursor {
    fn new(reader: Reader, next: Start, filter: Option<String>, end: Option<u64>) -> Self {
        Self {
            reader,
            next,
            filter,
            end,
            buffered: VecDeque::new(),
            done: false,
            lagging: 0,
        }
    }

    /// The next page from the read position (empty when nothing new is held yet), and how many
    /// more messages were held then; moves the position past it.
    async fn page(&mut self) -> Result<(Vec<Raw>, u64), LogError> {
        let (page, pending, _) = self.reader.direct_page(&self.next, self.filter.as_deref()).await?;
        if let Some(last) = page.last() {
            self.next = Start::Stored(last.stored + 1);
        }
        Ok((page, pending))
    }

    /// The next message up to `end`, or `None` past it.
    async fn next(&mut self) -> Result<Option<Raw>, LogError> {
        let end = self.end.unwrap_or(u64::MAX);
        loop {
            if let Some(raw) = self.buffered.pop_front() {
                if raw.stored > end {
                    self.done = true;
                    self.buffered.clear();
                    return Ok(None);
                }
                return Ok(Some(raw));
            }
            if self.done {
                return Ok(None);
            }
            if let Start::Stored(seq) = self.next
                && seq > end
            {
                self.done = true;
                continue;
            }
            let (page, pending, covered) = self.reader.direct_page(&self.next, self.filter.as_deref()).await?;
            if let Some(last) = page.last() {
                self.next = Start::Stored(last.stored + 1);
                self.lagging = 0;
                if pending == 0 && covered >= end {
                    self.done = true;
                }
                self.buffered.extend(page);
                continue;
            }
            // Nothing from here on the replica that answered: the end, unless it lags the leader.
            match self.reader.leader_next(&self.next, self.filter.as_deref()).await? {
                Some(seq) if seq <= end => {
                    self.next = Start::Stored(seq);
                    self.lagging += 1;
                    if self.lagging > LAGGING_ATTEMPTS {
                        return Err(BrokerError::Request {
                            operation: "direct get",
                            source: format!(
                                "the leader of {} holds message {seq} but no replica answering direct gets has it \
                                 after {LAGGING_ATTEMPTS} tries",
                                self.reader.name
                            )
                            .into(),
                        });
                    }
                    tokio::time::sleep((IDLE_FIRST * self.lagging).min(IDLE_POLL)).await;
                }
                _ => self.done = true,
            }
        }
    }
}
