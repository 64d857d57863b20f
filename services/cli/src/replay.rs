//! `hru replay`: what one party can read of the log, verified and opened with its keys.

use futures::TryStreamExt as _;
use hru_broker::Filter;
use hru_log::SharedLog as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use hru_domain::{CaseId, EventType, PartyId, join_sections};
use hru_envelope::{ChainChecker, OpenError};
use hru_reader::{Incoming, Read, ReadPath};
use hru_wire::v1 as pb;
use prost::Message as _;
use serde_json::json;

use crate::{Format, keys, policies};

/// Render a draft event as proto3 JSON.
fn event_json(event: pb::event_draft::Event) -> serde_json::Value {
    let draft = pb::EventDraft {
        case_id: String::new(),
        occurred_at: String::new(),
        event: Some(event),
    };
    let desc = hru_wire::descriptor_pool().get_message_by_name("hru.v1.EventDraft");
    let Some(desc) = desc else {
        return serde_json::Value::Null;
    };
    let mut dynamic = prost_reflect::DynamicMessage::new(desc);
    if dynamic.transcode_from(&draft).is_err() {
        return serde_json::Value::Null;
    }
    let value = serde_json::to_value(&dynamic).unwrap_or(serde_json::Value::Null);
    value
        .as_object()
        .and_then(|o| o.values().next().cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// What one party reads the log with: the log, its read path (keys as of a time, the log's
/// key events read ahead) and the agreements.
pub(crate) struct Reader {
    /// The log.
    pub log: crate::CliLog,
    /// The party's read path.
    pub read: ReadPath,
    /// Every agreement version.
    pub agreements: hru_policy::PolicySet,
}

impl Reader {
    /// `party`'s reader, with nothing past its retention at `at_ms` readable.
    pub async fn open(
        nats: &crate::Broker,
        policies_dir: &Path,
        party: &str,
        keys_dir: &Path,
        at_ms: i64,
    ) -> anyhow::Result<Self> {
        let party: PartyId = party.parse().context("--party")?;
        let directory = policies::directory(policies_dir)?;
        keys::load(keys_dir, &party)?; // its own error names the file and how to make it
        let log = nats.log().await?;
        log.catch_up().await?;
        let agreements = policies::agreements(policies_dir, &directory)?;
        let mut ring = hru_runtime::deployment::key_ring(keys_dir, &party)?;
        // Nothing past its retention is shown, whichever key its grant is sealed to.
        ring.destroy_expired(at_ms);
        for isa in agreements.iter() {
            for (.., audience) in isa.audiences() {
                ring.know_audience(audience);
            }
        }
        let mut read = ReadPath::new(directory, std::sync::Arc::new(agreements.clone()), ring);
        log.foresee_keys(&mut read).await?;
        Ok(Self { log, read, agreements })
    }
}

/// The log filters for one case: its events, its access records, key grants and control events.
pub(crate) fn case_filters(c: CaseId) -> Vec<Filter> {
    vec![
        Filter::case_events(c),
        Filter::case_access(c),
        Filter::all_key_grants(),
        Filter::all_control(),
    ]
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    case: Option<&str>,
    from: u64,
    at: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let at_ms = crate::at_ms(at)?;
    let case: Option<CaseId> = case.map(str::parse).transpose().context("--case")?;
    let filters: Vec<Filter> = match case {
        Some(c) => case_filters(c),
        None => Vec::new(),
    };
    let Reader {
        log,
        mut read,
        agreements,
    } = Reader::open(nats, policies_dir, party, keys_dir, at_ms).await?;
    let mut chains = ChainChecker::new();
    let mut problems = 0u64;
    let mut entries = log.reader().replay(from, &filters).await?;
    while let Some(entry) = entries.try_next().await? {
        // The read path: what it refuses is reported, never shown as content.
        let incoming = Incoming::logged(entry.sequence, entry.subject.as_str(), &entry.payload, entry.stored);
        let (verified, opened) = match read.read(&incoming) {
            Ok(Read::Grant { envelope, .. } | Read::Public(envelope)) => (envelope, None),
            Ok(Read::Event { envelope, opened }) => (envelope, Some(opened)),
            Err(refusal) => {
                problems += 1;
                emit(
                    format,
                    json!({"sequence": entry.sequence, "subject": entry.subject.as_str(), "refused": refusal.kind.name(), "error": refusal.detail}),
                    || format!("#{} {}: REFUSED {refusal}", entry.sequence, entry.subject),
                );
                continue;
            }
        };
        // Chains are checkable only on the whole log from its start (a view holds a
        // producer's envelopes only where they are shared with the reader).
        if case.is_none()
            && from <= 1
            && log.is_whole()
            && let Err(b) = chains.observe(&verified.header, &verified.digest)
        {
            problems += 1;
            emit(
                format,
                json!({"sequence": entry.sequence, "chain_break": b.to_string()}),
                || format!("#{} CHAIN BREAK {b}", entry.sequence),
            );
        }
        let h = &verified.header;
        if h.event_type == EventType::KeyGranted {
            continue;
        }
        if h.event_type == EventType::PolicyAdopted {
            let adopted = pb::PolicyAdopted::decode(verified.body.as_slice()).unwrap_or_default();
            let local = agreements.version(&adopted.policy_id, adopted.version);
            let matches = local.is_some_and(|i| i.digest.as_slice() == adopted.digest.as_slice());
            if !matches {
                problems += 1;
            }
            let digest = hex::encode(&adopted.digest);
            emit(
                format,
                json!({"sequence": entry.sequence, "event_type": "PolicyAdopted", "producer": h.producer.to_string(),
                       "policy_id": adopted.policy_id, "version": adopted.version, "digest": digest, "matches_local_file": matches}),
                || {
                    let note = if matches {
                        "matches the local file"
                    } else {
                        "DIFFERS from the local policies"
                    };
                    format!(
                        "#{} PolicyAdopted {} v{} sha256 {digest} by {} ({note})",
                        entry.sequence, adopted.policy_id, adopted.version, h.producer
                    )
                },
            );
            continue;
        }
        let Some(opened) = opened else {
            continue;
        };
        let readable: Vec<(&str, &[u8])> = opened
            .sections
            .iter()
            .filter_map(|s| s.plaintext.as_ref().ok().map(|p| (s.name.as_str(), p.as_slice())))
            .collect();
        let refused: Vec<(&str, &OpenError)> = opened
            .sections
            .iter()
            .filter_map(|s| s.plaintext.as_ref().err().map(|e| (s.name.as_str(), e)))
            .collect();
        let content = join_sections(h.event_type, &readable)
            .map(event_json)
            .unwrap_or(serde_json::Value::Null);
        let case_text = h.case_id.map(|c| c.to_string()).unwrap_or_default();
        emit(
            format,
            json!({
                "sequence": entry.sequence,
                "event_id": h.event_id.to_string(),
                "event_type": h.event_type.name(),
                "case_id": case_text,
                "producer": h.producer.to_string(),
                "producer_seq": h.producer_seq,
                "readable": readable.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                "held": opened.sections.iter().filter_map(|s| s.held.as_ref().map(|h| json!({"section": s.name, "hold": h}))).collect::<Vec<_>>(),
                "refused": refused.iter().map(|(n, e)| json!({"section": n, "reason": e.kind(), "detail": e.to_string()})).collect::<Vec<_>>(),
                "content": content,
            }),
            || {
                let mut line = format!(
                    "#{} {} case {} by {} seq {}",
                    entry.sequence, h.event_type, case_text, h.producer, h.producer_seq
                );
                for s in &opened.sections {
                    match &s.plaintext {
                        Ok(_) => {
                            line.push_str(&format!("\n    {}: {}", s.name, content[&s.name]));
                            if let Some(h) = &s.held {
                                line.push_str(&format!(" (past its retention, kept by legal hold {h})"));
                            }
                        }
                        Err(e) => line.push_str(&format!("\n    {}: {} ({e})", s.name, e.kind())),
                    }
                }
                line
            },
        );
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_FINDINGS)
    })
}

fn emit(format: Format, value: serde_json::Value, human: impl FnOnce() -> String) {
    match format {
        Format::Json => println!("{value}"),
        Format::Human => println!("{}", human()),
    }
}
