//! `hru audit bundle` and `hru audit verify-bundle`: one case's evidence in one file, and its
//! verification with nothing else — no broker, no secret key — as a court or an inspector
//! would receive it.
//!
//! The bundle holds the case's envelopes and access records as the log stored them; the key
//! grants of every epoch their sections name (so each section's audience is checked against
//! the agreement version it was sealed under); the public control events (key rotations and
//! revocations, adopted agreements, checkpoints and their witnesses, destructions) and the
//! case's own legal holds; each producer's chain from its first envelope in the case to the
//! first checkpoint another party vouched for after its last (so the envelopes are shown to
//! sit, unchanged and without a gap, in a history another party countersigned); the directory;
//! and every agreement file.
//!
//! A file verifies only against itself unless the verifier anchors it: `--trust DIR` (the
//! directory and agreements they hold), `--witness FILE` (checkpoints their own witness kept)
//! and `--case C`. Without anchors the report says so.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
use sha2::{Digest as _, Sha256};

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
    )
}

/// SHA-256 over messages, each length-prefixed, in order: the bundle's trailer.
fn messages_digest(messages: &[pb::LoggedMessage]) -> Vec<u8> {
    let mut h = Sha256::new();
    for m in messages {
        let bytes = m.encode_to_vec();
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&bytes);
    }
    h.finalize().to_vec()
}

/// Whether `subject` is one of `case`'s events or access records (for what does not decode).
fn of_case(subject: &str, case: &CaseId) -> bool {
    hru_broker::Filter::case_events(*case).admits(subject) || hru_broker::Filter::case_access(*case).admits(subject)
}

/// Whether a message is `case`'s: by its header, or by its subject when it does not decode.
fn in_case(subject: &str, v: Option<&Seen>, case: &CaseId) -> bool {
    match v {
        Some(v) => v.header.case_id.as_ref() == Some(case),
        None => of_case(subject, case),
    }
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
    let mut case_messages = 0usize;
    // The case's legal holds (other cases' holds name their reasons and authorities).
    let mut holds: HashSet<String> = HashSet::new();
    for (e, v) in entries.iter().zip(&views) {
        if in_case(e.subject.as_str(), v.as_ref(), &case) {
            case_messages += 1;
        }
        let Some(v) = v else { continue };
        if v.header.event_type == EventType::LegalHoldPlaced
            && let Ok(p) = pb::LegalHoldPlaced::decode(v.envelope.body.as_slice())
            && p.case_id == case.to_string()
        {
            holds.insert(p.hold);
        }
        if v.header.case_id.as_ref() == Some(&case) {
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
    if case_messages == 0 {
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
        if in_case(e.subject.as_str(), Some(v), &case) || in_segment(v) {
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
            Some(v) if v.header.case_id.as_ref() == Some(&case) => Some("case"),
            Some(v) if in_segment(v) => Some("chain"),
            Some(v) if control(v.header.event_type) => Some("control"),
            Some(v) if v.header.event_type == EventType::LegalHoldPlaced => {
                pb::LegalHoldPlaced::decode(v.envelope.body.as_slice())
                    .ok()
                    .filter(|p| holds.contains(&p.hold))
                    .map(|_| "hold")
            }
            Some(v) if v.header.event_type == EventType::LegalHoldReleased => {
                pb::LegalHoldReleased::decode(v.envelope.body.as_slice())
                    .ok()
                    .filter(|r| holds.contains(&r.hold))
                    .map(|_| "hold")
            }
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
        message_count: messages.len() as u64,
        messages_digest: messages_digest(&messages),
        messages,
    };
    write_whole(out, &bundle.encode_to_vec())?;
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

/// Write `bytes` to `out` whole or not at all: a hidden file beside it, synced, then renamed.
fn write_whole(out: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: name a file", out.display()))?;
    let tmp = out.with_file_name(format!(".{}.{}.partial", name.to_string_lossy(), std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
}

/// What the verifier trusts beyond the file.
pub(crate) struct Anchors<'a> {
    /// The case they asked for.
    pub case: Option<&'a str>,
    /// A policies directory they hold: its directory.toml and agreements.
    pub trust: Option<&'a Path>,
    /// A witness file their own witness kept.
    pub witness: Option<&'a Path>,
    /// Every case envelope must lie under a witnessed checkpoint.
    pub require_witnessed: bool,
}

/// `hru audit verify-bundle FILE`: exit 0 when everything verifies (and, with
/// `require_witnessed`, every case envelope lies under a witnessed checkpoint), 1 otherwise.
pub(crate) fn verify(file: &Path, anchors: &Anchors<'_>, format: Format) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let bundle = pb::AuditBundle::decode(bytes.as_slice()).with_context(|| {
        format!(
            "{}: does not decode as an evidence bundle (cut short or not one: hru audit bundle writes them)",
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
    if bundle.message_count != bundle.messages.len() as u64
        || bundle.messages_digest != messages_digest(&bundle.messages)
    {
        bail!(
            "{}: holds {} messages but its trailer says {} (or their digest differs): the file is cut short or altered",
            file.display(),
            bundle.messages.len(),
            bundle.message_count
        );
    }
    let case: CaseId = bundle
        .case_id
        .parse()
        .with_context(|| format!("{}: case_id", file.display()))?;
    let mut extra: Vec<(u64, &str, String)> = Vec::new();
    if let Some(asked) = anchors.case {
        let asked: CaseId = asked.parse().context("--case")?;
        if asked != case {
            extra.push((0, "other-case", format!("the bundle is of case {case}, not {asked}")));
        }
    }
    let directory = hru_envelope::Directory::from_toml(&bundle.directory_toml, "bundle: directory.toml")?;
    let mut set = PolicySet::default();
    for a in &bundle.agreements {
        let isa = CompiledIsa::compile(&a.text, &format!("bundle: {}", a.name), Some(&directory))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        set.insert(isa);
    }
    // The verifier's own copies: the bundle's directory and agreements must be theirs.
    let trusted = match anchors.trust {
        Some(dir) => {
            let path = dir.join(policies::DIRECTORY_FILE);
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("--trust: reading {}", path.display()))?;
            if Sha256::digest(text.as_bytes()) != Sha256::digest(bundle.directory_toml.as_bytes()) {
                extra.push((
                    0,
                    "directory-differs",
                    format!("the bundle's directory is not {}", path.display()),
                ));
            }
            let trusted_directory = policies::directory(dir)?;
            Some(policies::agreements(dir, &trusted_directory)?)
        }
        None => None,
    };
    let mut auditor = Auditor::for_extract(&directory, &set);
    let trusted_witnesses = match anchors.witness {
        Some(path) => {
            let w = crate::audit::witnessed_checkpoints(path)?;
            for c in &w {
                auditor.expect(c.clone());
            }
            true
        }
        None => false,
    };
    for m in &bundle.messages {
        auditor.learn_key_event(m.sequence, &m.payload);
    }
    let mut case_envelopes = Vec::new();
    let mut used: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut adopted: HashMap<(String, u32), Vec<u8>> = HashMap::new();
    let mut previous = 0u64;
    for m in &bundle.messages {
        if m.sequence <= previous {
            extra.push((
                m.sequence,
                "out-of-order",
                format!("sequence {} follows {previous}: a bundle is in log order", m.sequence),
            ));
        }
        previous = previous.max(m.sequence);
        if m.stored_ms <= 0 {
            extra.push((
                m.sequence,
                "no-store-time",
                "the broker's store time is missing (revocations and skew cannot be judged)".into(),
            ));
        }
        auditor.observe(
            m.sequence,
            &m.subject,
            &m.payload,
            hru_broker::StoredAt::Exactly(m.stored_ms),
        );
        let v = seen(&m.payload);
        if in_case(&m.subject, v.as_ref(), &case)
            && let Some(v) = &v
        {
            case_envelopes.push((m.sequence, v.header.producer.clone(), v.header.producer_seq));
            if !v.header.event_type.is_public() {
                used.insert((v.header.policy_id.clone(), v.header.policy_version));
            }
        }
        if let Some(v) = &v
            && v.header.event_type == EventType::PolicyAdopted
            && hru_envelope::verify(&m.payload, &directory).is_ok()
            && let Ok(a) = pb::PolicyAdopted::decode(v.envelope.body.as_slice())
        {
            adopted.insert((a.policy_id, a.version), a.digest);
        }
    }
    // Each agreement version the case's envelopes were sealed under: the verifier's own copy,
    // or the one adopted on the log, byte for byte.
    let mut anchored_agreements = true;
    for (id, version) in &used {
        let Some(isa) = set.version(id, *version) else {
            continue; // the auditor reports unknown-agreement
        };
        let by_trust = trusted.as_ref().map(|t| t.version(id, *version).map(|i| i.digest));
        let by_adoption = adopted.get(&(id.clone(), *version));
        match (by_trust, by_adoption) {
            (Some(Some(d)), _) if d == isa.digest => {}
            (Some(_), _) => extra.push((
                0,
                "agreement-differs",
                format!("{id} v{version} in the bundle is not the trusted copy"),
            )),
            (None, Some(d)) if d.as_slice() == isa.digest.as_slice() => {}
            (None, Some(d)) => extra.push((
                0,
                "agreement-text-differs",
                format!(
                    "{id} v{version} was adopted with sha256 {}; the bundle's file differs",
                    hex::encode(d)
                ),
            )),
            (None, None) => {
                anchored_agreements = false;
                extra.push((
                    0,
                    "agreement-unanchored",
                    format!("{id} v{version}: not adopted in the bundle and no --trust copy to compare"),
                ));
            }
        }
    }
    // Per producer: the chain from its first case envelope to the nearest witnessed position
    // after its last (else the furthest after its first) must be whole in the bundle.
    let mut by_producer: BTreeMap<ProducerId, Vec<(u64, u64)>> = BTreeMap::new();
    for (sequence, producer, pseq) in &case_envelopes {
        by_producer
            .entry(producer.clone())
            .or_default()
            .push((*pseq, *sequence));
    }
    let mut covered: Vec<(u64, String, u64, String, u64)> = Vec::new();
    let mut unwitnessed: Vec<String> = Vec::new();
    for (producer, envs) in &by_producer {
        let first = envs.iter().map(|e| e.0).min().unwrap_or(0);
        let last = envs.iter().map(|e| e.0).max().unwrap_or(0);
        let heads: Vec<&hru_audit::WitnessedCheckpoint> = auditor
            .witnessed()
            .iter()
            .filter(|w| &w.producer == producer && w.head_seq >= first)
            .filter(|w| !trusted_witnesses || w.sequence == 0)
            .collect();
        let end = heads
            .iter()
            .filter(|w| w.head_seq >= last)
            .min_by_key(|w| w.head_seq)
            .or_else(|| heads.iter().max_by_key(|w| w.head_seq))
            .copied();
        let Some(end) = end else {
            unwitnessed.extend(envs.iter().map(|(p, s)| format!("#{s} ({producer} seq {p})")));
            continue;
        };
        let missing: Vec<u64> = (first..=end.head_seq)
            .filter(|s| auditor.position(producer, *s).is_none())
            .collect();
        if !missing.is_empty() {
            extra.push((
                0,
                "chain-incomplete",
                format!(
                    "{producer}'s chain from its first case envelope (seq {first}) to the position {} vouched for ({}) lacks {} positions, from seq {}",
                    end.witness,
                    end.head_seq,
                    missing.len(),
                    missing[0]
                ),
            ));
        }
        for (pseq, sequence) in envs {
            if *pseq <= end.head_seq && missing.is_empty() {
                covered.push((
                    *sequence,
                    producer.to_string(),
                    *pseq,
                    end.witness.clone(),
                    end.head_seq,
                ));
            } else if *pseq > end.head_seq {
                unwitnessed.push(format!("#{sequence} ({producer} seq {pseq})"));
            }
        }
    }
    let report = auditor.finish();
    let findings = report.findings.len() + extra.len();
    let anchored = json!({"directory": anchors.trust.is_some(), "agreements": anchored_agreements, "witnesses": trusted_witnesses, "case": anchors.case.is_some()});
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
                                   "findings": findings, "case_envelopes": case_envelopes.len(), "witnessed": covered.len(),
                                   "unwitnessed": unwitnessed, "anchored": anchored,
                                   "directory_sha256": hex::encode(Sha256::digest(bundle.directory_toml.as_bytes()))}})
            );
        }
        Format::Human => {
            for f in &report.findings {
                crate::audit::print_finding(f);
            }
            for (sequence, kind, detail) in &extra {
                println!("#{sequence} {kind}: {detail}");
            }
            for (sequence, producer, pseq, witness, head) in &covered {
                println!("#{sequence} {producer} seq {pseq}: under the checkpoint at {head} vouched for by {witness}");
            }
            if !unwitnessed.is_empty() {
                println!("not yet under a witnessed checkpoint: {}", unwitnessed.join(", "));
            }
            println!(
                "directory sha256 {}{}",
                hex::encode(Sha256::digest(bundle.directory_toml.as_bytes())),
                if anchors.trust.is_some() {
                    " (compared with --trust)"
                } else {
                    " (NOT ANCHORED: compare it with the parties' published directory, or pass --trust DIR)"
                }
            );
            if !trusted_witnesses {
                println!(
                    "witnesses: those the bundle itself holds (pass --witness FILE to rely on your own witness's copy)"
                );
            }
            println!(
                "verify-bundle: case {case}: {} messages checked, {} case envelopes ({} under a witnessed checkpoint), {findings} findings",
                report.checked,
                case_envelopes.len(),
                covered.len()
            );
        }
    }
    Ok(
        if findings > 0 || (anchors.require_witnessed && !unwitnessed.is_empty()) {
            ExitCode::from(crate::EXIT_FINDINGS)
        } else {
            ExitCode::SUCCESS
        },
    )
}
