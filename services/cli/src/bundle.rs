//! `hru audit bundle` and `hru audit verify-bundle`: one case's evidence in one file, and its
//! verification with nothing else — no broker, no secret key — as a court or an inspector
//! would receive it.
//!
//! The bundle holds the case's envelopes and access records as the log stored them; the key
//! grants of every epoch their sections name (so each section's audience is checked against
//! the agreement version it was sealed under); the public control events (key rotations and
//! revocations, adopted agreements, checkpoints and their witnesses, destructions, holds); each
//! producer's chain from its first envelope in the case to the first checkpoint a witness
//! vouched for after its last (so the envelopes are shown to sit, unchanged, in a history
//! another party countersigned); the directory; and every agreement file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use hru_audit::Auditor;
use hru_domain::{CaseId, EventType, ProducerId};
use hru_log::SharedLog as _;
use hru_policy::{CompiledIsa, PolicySet};
use hru_wire::v1 as pb;
use prost::Message as _;
use serde_json::json;

use crate::{Format, policies};

/// The bundle format this build writes and reads.
const FORMAT: u32 = 1;

/// Control events every bundle carries whole (public, small, and what the checks rest on).
fn control(t: EventType) -> bool {
    matches!(
        t,
        EventType::KeyRotated
            | EventType::KeyRevoked
            | EventType::PolicyAdopted
            | EventType::ChainCheckpoint
            | EventType::CheckpointWitnessed
            | EventType::EpochKeyDestroyed
            | EventType::LegalHoldPlaced
            | EventType::LegalHoldReleased
    )
}

/// Whether `subject` is one of `case`'s events or access records.
fn of_case(subject: &str, case: &CaseId) -> bool {
    let token = case.token();
    subject.starts_with(&format!("hru.evt.{token}.")) || subject.starts_with(&format!("hru.acc.{token}."))
}

/// What one envelope says, without any key.
struct Seen {
    header: hru_domain::EventHeader,
    envelope: pb::Envelope,
}

fn seen(payload: &[u8]) -> Option<Seen> {
    let header = hru_envelope::decode_header(payload).ok()?;
    let envelope = pb::Envelope::decode(payload).ok()?;
    Some(Seen { header, envelope })
}

/// The chain position a witness vouched for at or after `last`, the nearest; else the furthest
/// it vouched for at or after `first`.
fn witnessed_end(heads: &[u64], first: u64, last: u64) -> Option<u64> {
    heads
        .iter()
        .copied()
        .filter(|h| *h >= last)
        .min()
        .or_else(|| heads.iter().copied().filter(|h| *h >= first).max())
}

/// `hru audit bundle --case C --out FILE`.
pub(crate) async fn make(
    nats: &crate::Broker,
    policies_dir: &Path,
    case: &str,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let case: CaseId = case.parse().context("--case")?;
    let directory = policies::directory(policies_dir)?;
    // The agreements must compile here, or the bundle could not be verified anywhere.
    policies::agreements(policies_dir, &directory)?;
    let directory_path = policies_dir.join(policies::DIRECTORY_FILE);
    let directory_toml =
        std::fs::read_to_string(&directory_path).with_context(|| format!("reading {}", directory_path.display()))?;
    let mut names: Vec<_> = std::fs::read_dir(policies_dir)
        .with_context(|| format!("reading {}", policies_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml") && p.file_name().is_some_and(|n| n != policies::DIRECTORY_FILE)
        })
        .collect();
    names.sort();
    let agreements = names
        .iter()
        .map(|p| {
            Ok(pb::AgreementFile {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                text: std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let log = nats.log().await?;
    if !log.is_whole() {
        bail!(
            "a bundle is cut from the whole log, which a party's key cannot read: run it as the auditor (--identity auditor.secret)"
        );
    }
    let entries: Vec<hru_log::LogEntry> = log.reader().replay(1, &[]).await?.try_collect().await?;
    let views: Vec<Option<Seen>> = entries.iter().map(|e| seen(&e.payload)).collect();

    // The case's envelopes, each producer's span of them, and the heads witnesses vouched for.
    let mut spans: HashMap<ProducerId, (u64, u64)> = HashMap::new();
    let mut heads: HashMap<ProducerId, Vec<u64>> = HashMap::new();
    let mut in_case = 0usize;
    for (e, v) in entries.iter().zip(&views) {
        let Some(v) = v else { continue };
        if of_case(e.subject.as_str(), &case) {
            in_case += 1;
            let span = spans
                .entry(v.header.producer.clone())
                .or_insert((v.header.producer_seq, v.header.producer_seq));
            span.0 = span.0.min(v.header.producer_seq);
            span.1 = span.1.max(v.header.producer_seq);
        }
        if v.header.event_type == EventType::CheckpointWitnessed
            && let Ok(w) = pb::CheckpointWitnessed::decode(v.envelope.body.as_slice())
            && let Some(cp) = w.checkpoint
            && let Ok(producer) = ProducerId::try_from(pb::Producer {
                party: cp.party,
                instance: cp.instance,
            })
        {
            heads.entry(producer).or_default().push(cp.head_seq);
        }
    }
    if in_case == 0 {
        bail!("--case {case}: the log holds no event of this case");
    }
    // Each producer's chain from its first envelope in the case to the witnessed position that
    // covers the most of them; past that, only the case's own envelopes go in.
    let segments: HashMap<&ProducerId, (u64, u64)> = spans
        .iter()
        .filter_map(|(p, (first, last))| {
            let end = heads.get(p).and_then(|h| witnessed_end(h, *first, *last))?;
            Some((p, (*first, end)))
        })
        .collect();
    let in_segment = |v: &Seen| {
        segments
            .get(&v.header.producer)
            .is_some_and(|(a, b)| (*a..=*b).contains(&v.header.producer_seq))
    };
    // The epochs every selected envelope's sections name: their grants go in too.
    let mut epochs: HashSet<(ProducerId, String, u32)> = HashSet::new();
    for (e, v) in entries.iter().zip(&views) {
        let Some(v) = v else { continue };
        if of_case(e.subject.as_str(), &case) || in_segment(v) {
            for s in &v.envelope.sections {
                epochs.insert((v.header.producer.clone(), s.audience.clone(), s.epoch));
            }
        }
    }
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut messages = Vec::new();
    for (e, v) in entries.iter().zip(&views) {
        let why = match v {
            None if of_case(e.subject.as_str(), &case) => Some("case (undecodable)"),
            None => None,
            Some(_) if of_case(e.subject.as_str(), &case) => Some("case"),
            Some(v) if in_segment(v) => Some("chain"),
            Some(v) if control(v.header.event_type) => Some("control"),
            Some(v) if v.header.event_type == EventType::KeyGranted => {
                pb::KeyGranted::decode(v.envelope.body.as_slice())
                    .ok()
                    .filter(|g| epochs.contains(&(v.header.producer.clone(), g.audience.clone(), g.epoch)))
                    .map(|_| "grant")
            }
            Some(_) => None,
        };
        if let Some(why) = why {
            *counts.entry(why).or_default() += 1;
            messages.push(pb::LoggedMessage {
                sequence: e.sequence,
                subject: e.subject.to_string(),
                payload: e.payload.to_vec(),
                stored_ms: match e.stored {
                    hru_broker::StoredAt::Exactly(t) | hru_broker::StoredAt::NoLaterThan(t) => t,
                    hru_broker::StoredAt::Unknown => 0,
                },
            });
        }
    }
    let bundle = pb::AuditBundle {
        format: FORMAT,
        case_id: case.to_string(),
        made_at_ms: jiff::Timestamp::now().as_millisecond(),
        directory_toml,
        agreements,
        messages,
    };
    // Written whole or not at all.
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, bundle.encode_to_vec()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "bundle of case {case}: {} messages ({}), {} producers, {} agreement files; written to {}",
        bundle.messages.len(),
        parts.join(", "),
        spans.len(),
        bundle.agreements.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// How one case envelope stands against the witnesses.
enum Cover {
    /// Its chain runs unbroken in the bundle to a position a witness vouched for.
    Witnessed { witness: String, head_seq: u64 },
    /// A witness vouched for a later position, but the bundle lacks part of the chain to it.
    Broken { head_seq: u64, missing: u64 },
    /// No witness vouched for a position at or after it (yet).
    Unwitnessed,
}

/// `hru audit verify-bundle FILE`: exit 0 when everything verifies (and, with
/// `require_witnessed`, every case envelope lies under a witnessed checkpoint), 1 otherwise.
pub(crate) fn verify(file: &Path, require_witnessed: bool, format: Format) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let bundle = pb::AuditBundle::decode(bytes.as_slice()).with_context(|| {
        format!(
            "{}: not an evidence bundle (hru audit bundle writes them)",
            file.display()
        )
    })?;
    if bundle.format != FORMAT {
        bail!(
            "{}: bundle format {} (this build reads {FORMAT})",
            file.display(),
            bundle.format
        );
    }
    let case: CaseId = bundle
        .case_id
        .parse()
        .with_context(|| format!("{}: case_id", file.display()))?;
    let directory = hru_envelope::Directory::from_toml(&bundle.directory_toml, "bundle: directory.toml")?;
    let mut set = PolicySet::default();
    let mut texts: HashMap<(String, u32), [u8; 32]> = HashMap::new();
    for a in &bundle.agreements {
        let isa = CompiledIsa::compile(&a.text, &format!("bundle: {}", a.name), Some(&directory))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        texts.insert((isa.id.clone(), isa.version), isa.digest);
        set.insert(isa);
    }
    let mut auditor = Auditor::for_extract(&directory, &set);
    for m in &bundle.messages {
        auditor.learn_key_event(m.sequence, &m.payload);
    }
    let mut extra = Vec::new();
    let mut case_envelopes = Vec::new();
    for m in &bundle.messages {
        let stored = if m.stored_ms == 0 {
            hru_broker::StoredAt::Unknown
        } else {
            hru_broker::StoredAt::Exactly(m.stored_ms)
        };
        auditor.observe(m.sequence, &m.subject, &m.payload, stored);
        let Some(v) = seen(&m.payload) else { continue };
        if of_case(&m.subject, &case) {
            case_envelopes.push((m.sequence, v.header.producer.clone(), v.header.producer_seq));
        }
        // The agreement text in the bundle is the one adopted, byte for byte.
        if v.header.event_type == EventType::PolicyAdopted
            && hru_envelope::verify(&m.payload, &directory).is_ok()
            && let Ok(adopted) = pb::PolicyAdopted::decode(v.envelope.body.as_slice())
        {
            match texts.get(&(adopted.policy_id.clone(), adopted.version)) {
                Some(d) if d.as_slice() == adopted.digest.as_slice() => {}
                Some(_) => extra.push((
                    m.sequence,
                    "agreement-text-differs",
                    format!(
                        "{} v{} was adopted with sha256 {}; the bundle's file differs",
                        adopted.policy_id,
                        adopted.version,
                        hex::encode(&adopted.digest)
                    ),
                )),
                None => extra.push((
                    m.sequence,
                    "agreement-missing",
                    format!(
                        "{} v{} was adopted; the bundle has no file of it",
                        adopted.policy_id, adopted.version
                    ),
                )),
            }
        }
    }
    let covers: Vec<(u64, ProducerId, u64, Cover)> = case_envelopes
        .into_iter()
        .map(|(sequence, producer, pseq)| {
            let mut best: Option<Cover> = None;
            for w in auditor
                .witnessed()
                .iter()
                .filter(|w| w.producer == producer && w.head_seq >= pseq)
            {
                let missing = (pseq..=w.head_seq)
                    .filter(|s| auditor.position(&producer, *s).is_none())
                    .count() as u64;
                let holds = auditor.position(&producer, w.head_seq) == Some(w.head_digest);
                let cover = if missing == 0 && holds {
                    Cover::Witnessed {
                        witness: w.witness.clone(),
                        head_seq: w.head_seq,
                    }
                } else {
                    Cover::Broken {
                        head_seq: w.head_seq,
                        missing,
                    }
                };
                best = match (best, cover) {
                    (Some(Cover::Witnessed { witness, head_seq }), _) => Some(Cover::Witnessed { witness, head_seq }),
                    (_, c) => Some(c),
                };
            }
            (sequence, producer, pseq, best.unwrap_or(Cover::Unwitnessed))
        })
        .collect();
    let report = auditor.finish();
    for (sequence, producer, pseq, cover) in &covers {
        if let Cover::Broken { head_seq, missing } = cover {
            extra.push((
                *sequence,
                "chain-incomplete",
                format!(
                    "{producer} seq {pseq} is vouched for by a witness at {head_seq}, but the bundle lacks {missing} of the chain positions between"
                ),
            ));
        }
    }
    let witnessed = covers.iter().filter(|c| matches!(c.3, Cover::Witnessed { .. })).count();
    let unwitnessed: Vec<String> = covers
        .iter()
        .filter(|c| matches!(c.3, Cover::Unwitnessed))
        .map(|(sequence, producer, pseq, _)| format!("#{sequence} ({producer} seq {pseq})"))
        .collect();
    let findings = report.findings.len() + extra.len();
    match format {
        Format::Json => {
            for f in &report.findings {
                println!("{}", serde_json::to_string(f)?);
            }
            for (sequence, kind, detail) in &extra {
                println!("{}", json!({"sequence": sequence, "kind": kind, "detail": detail}));
            }
            println!(
                "{}",
                json!({"summary": {"case": case.to_string(), "messages": bundle.messages.len(), "checked": report.checked,
                                   "findings": findings, "case_envelopes": covers.len(), "witnessed": witnessed,
                                   "unwitnessed": unwitnessed}})
            );
        }
        Format::Human => {
            for f in &report.findings {
                println!(
                    "#{} {} {}: {}",
                    f.sequence,
                    f.producer.as_deref().unwrap_or("?"),
                    f.kind.name(),
                    f.detail
                );
            }
            for (sequence, kind, detail) in &extra {
                println!("#{sequence} {kind}: {detail}");
            }
            for (sequence, producer, pseq, cover) in &covers {
                if let Cover::Witnessed { witness, head_seq } = cover {
                    println!(
                        "#{sequence} {producer} seq {pseq}: under the checkpoint at {head_seq} vouched for by {witness}"
                    );
                }
            }
            if !unwitnessed.is_empty() {
                println!("not yet under a witnessed checkpoint: {}", unwitnessed.join(", "));
            }
            println!(
                "verify-bundle: case {case}: {} messages checked, {} case envelopes ({witnessed} under a witnessed checkpoint), {findings} findings",
                report.checked,
                covers.len()
            );
        }
    }
    Ok(if findings > 0 || (require_witnessed && !unwitnessed.is_empty()) {
        ExitCode::from(crate::EXIT_FINDINGS)
    } else {
        ExitCode::SUCCESS
    })
}
