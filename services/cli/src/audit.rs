//! `hru audit verify`: the whole log (or a range) checked without any secret key.

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::path::Path;
use std::process::ExitCode;

use hru_audit::Auditor;
use serde_json::json;

use crate::{Format, policies};

/// Checks beyond the log itself.
pub(crate) struct Checks {
    /// A witness file whose checkpoints the log must still hold.
    pub(crate) witness: Option<std::path::PathBuf>,
    /// Maximum age of a producer's latest checkpoint, seconds.
    pub(crate) max_checkpoint_age_s: Option<u64>,
    /// Days after an epoch's retention ends by which every holder must have signed its
    /// destruction.
    pub(crate) destruction_grace_days: u32,
}

/// One line of a witness file.
#[derive(serde::Serialize, serde::Deserialize)]
struct WitnessLine {
    party: String,
    instance: String,
    head_seq: u64,
    head_digest: String,
    at_ms: i64,
    witnessed_by: String,
}

fn read_witness(path: &Path) -> anyhow::Result<Vec<WitnessLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

/// The checkpoints a witness file vouches for; an error names the line.
pub(crate) fn witnessed_checkpoints(path: &Path) -> anyhow::Result<Vec<hru_audit::WitnessedCheckpoint>> {
    read_witness(path)?
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let at = |e: String| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1);
            let producer = hru_domain::ProducerId::try_from(hru_wire::v1::Producer {
                party: w.party,
                instance: w.instance,
            })
            .map_err(|e| at(e.to_string()))?;
            let head_digest: [u8; 32] = hex::decode(&w.head_digest)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| at("head_digest must be 64 hex digits".into()))?;
            Ok(hru_audit::WitnessedCheckpoint {
                producer,
                head_seq: w.head_seq,
                head_digest,
                witness: format!("{} (witness file)", w.witnessed_by),
                sequence: 0,
            })
        })
        .collect()
}

/// One finding, as a human reads it.
pub(crate) fn print_finding(f: &hru_audit::Finding) {
    println!(
        "#{} {} {}: {}",
        f.sequence,
        f.producer.as_deref().unwrap_or("?"),
        f.kind.name(),
        f.detail
    );
}

pub(crate) async fn verify(
    nats: &crate::Broker,
    policies_dir: &Path,
    from: u64,
    to: Option<u64>,
    checks: &Checks,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let directory = policies::directory(policies_dir)?;
    let set = policies::agreements(policies_dir, &directory)?;
    let log = nats.log().await?;
    let (_, last) = log.reader().bounds().await?;
    let mut auditor = Auditor::new(&directory, &set);
    // Key events first (public, under the control subjects), so a revocation reaches what was
    // stored before the revocation event but after its effective time.
    let mut key_events = log.reader().replay(1, &[hru_broker::Filter::all_control()]).await?;
    while let Some(e) = key_events.try_next().await? {
        auditor.learn_key_event(e.sequence, &e.payload);
    }
    let mut entries = log.reader().replay(from, &[]).await?;
    let bar = indicatif::ProgressBar::new(last.saturating_sub(from.max(1)).saturating_add(1));
    if let Some(path) = &checks.witness {
        for w in witnessed_checkpoints(path)? {
            auditor.expect(w);
        }
    }
    auditor.require_destruction(
        jiff::Timestamp::now().as_millisecond(),
        i64::from(checks.destruction_grace_days) * 86_400_000,
    );
    if let Some(max) = checks.max_checkpoint_age_s {
        auditor.require_fresh_checkpoints(jiff::Timestamp::now().as_millisecond(), max as i64 * 1000);
    }
    while let Some(e) = entries.try_next().await? {
        if to.is_some_and(|t| e.sequence > t) {
            break;
        }
        auditor.observe(e.sequence, e.subject.as_str(), &e.payload, e.stored);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = auditor.finish();
    match format {
        Format::Json => {
            for f in &report.findings {
                println!("{}", serde_json::to_string(f)?);
            }
            println!(
                "{}",
                json!({"summary": {"checked": report.checked, "findings": report.findings.len(), "by_kind": report.counts(),
                                   "erased_sections": report.erased_sections, "erased_epochs": report.erased_epochs,
                                   "held_sections": report.held_sections, "holds_standing": report.holds_standing}})
            );
        }
        Format::Human => {
            for f in &report.findings {
                print_finding(f);
            }
            let range = match to {
                Some(t) => format!("sequences {from}..={t}"),
                None => format!("from sequence {from}"),
            };
            if report.erased_epochs > 0 {
                println!(
                    "audit: {} sections of {} epochs erased under retention (destruction confirmed by every holder)",
                    report.erased_sections, report.erased_epochs
                );
            }
            if report.held_sections > 0 || report.holds_standing > 0 {
                println!(
                    "audit: {} sections past their retention kept readable under legal holds; {} holds standing (`hru retention status` lists them)",
                    report.held_sections, report.holds_standing
                );
            }
            if report.findings.is_empty() {
                println!("audit: {} envelopes checked ({range}), no findings", report.checked);
            } else {
                let counts: Vec<String> = report.counts().iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!(
                    "audit: {} envelopes checked ({range}), {} findings: {}",
                    report.checked,
                    report.findings.len(),
                    counts.join(", ")
                );
            }
        }
    }
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_FINDINGS)
    })
}

/// `hru audit access --case C`: who consulted or disclosed the case, when, under which clause
/// and purpose (read with the keys of a party the access records are shared with).
pub(crate) async fn access(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    case: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    use hru_domain::{CaseId, PartyId};

    let party: PartyId = party.parse().map_err(|e| anyhow::anyhow!("--party: {e}"))?;
    let case: CaseId = case.parse().map_err(|e| anyhow::anyhow!("--case: {e}"))?;
    let directory = policies::directory(policies_dir)?;
    crate::keys::load(keys_dir, &party)?; // its own error names the file and how to make it
    let log = nats.log().await?;
    let agreements = std::sync::Arc::new(policies::agreements(policies_dir, &directory)?);
    let read = hru_reader::ReadPath::new(
        directory,
        agreements.clone(),
        hru_runtime::deployment::key_ring(keys_dir, &party)?,
    );
    let mut reader = hru_audit::AccessReader::new(read, agreements, case);
    let mut entries = log.reader().replay(1, &hru_audit::AccessReader::subjects()).await?;
    while let Some(e) = entries.try_next().await? {
        reader.observe(e.sequence, e.subject.as_str(), &e.payload, e.stored);
    }
    for refusal in &reader.refused {
        eprintln!("refused by the read path, not an access record: {refusal}");
    }
    for (sequence, producer, why) in &reader.forged {
        eprintln!("log sequence {sequence} from {producer}: not an access record: it {why}");
    }
    let unreadable = reader.unreadable;
    let rows: Vec<_> = reader
        .records
        .into_iter()
        .map(|r| {
            let at = jiff::Timestamp::from_millisecond(r.recorded_at_ms)
                .map(|t| t.to_string())
                .unwrap_or_default();
            (r.sequence, at, r.access, r.logged_by.to_string())
        })
        .collect();
    for (sequence, at, a, logged_by) in &rows {
        match format {
            Format::Json => println!(
                "{}",
                json!({"sequence": sequence, "at": at, "party": a.party.as_str(), "person": a.person, "method": a.method,
                       "sections": a.sections, "purpose": a.purpose, "clause": a.clause,
                       "disclosed_to": a.disclosed_to.as_ref().map(ToString::to_string), "logged_by": logged_by})
            ),
            Format::Human => println!(
                "{at}  {} ({}) {} {} — purpose {}, clause {}{}",
                a.person,
                a.party,
                a.method,
                a.sections.join(","),
                a.purpose,
                a.clause,
                a.disclosed_to
                    .as_ref()
                    .map(|d| format!(", disclosed to {d}"))
                    .unwrap_or_default()
            ),
        }
    }
    if format == Format::Human {
        println!("{} access records for case {case}", rows.len());
        if unreadable > 0 {
            println!("({unreadable} access records are not shared with {party} and were not read)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hru audit checkpoint`: a signed ChainCheckpoint of the producer instance's chain head.
pub(crate) async fn checkpoint(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    instance: &str,
) -> anyhow::Result<ExitCode> {
    use prost::Message as _;
    let party: hru_domain::PartyId = party.parse().map_err(|e| anyhow::anyhow!("--party: {e}"))?;
    let mut p = crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, instance).await?;
    let name = format!("{party}/{instance}");
    let head = p.producer.sealer().chain();
    anyhow::ensure!(
        head.next_seq > 1,
        "{name} has appended nothing yet: there is no head to checkpoint"
    );
    let body = hru_wire::v1::ChainCheckpoint {
        party: party.to_string(),
        instance: instance.to_owned(),
        head_seq: head.next_seq - 1,
        head_digest: head.prev_digest.0.to_vec(),
        at_ms: jiff::Timestamp::now().as_millisecond(),
    };
    let (seq, _) = p
        .append_public(hru_domain::EventType::ChainCheckpoint, body.encode_to_vec())
        .await?;
    println!("{seq}\tChainCheckpoint\t{name} at {}", body.head_seq);
    Ok(ExitCode::SUCCESS)
}

/// `hru audit witness`: countersign the consistent checkpoints of other parties and keep a copy
/// of each in `out`, so a later truncation or rollback of the log shows against it.
pub(crate) async fn witness(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    use hru_envelope::verify as verify_envelope;
    use prost::Message as _;
    let party: hru_domain::PartyId = party.parse().map_err(|e| anyhow::anyhow!("--party: {e}"))?;
    let mut p = crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, "witness").await?;
    let mut entries = p.log.reader().replay(1, &[]).await?;
    let whole = p.log.is_whole();
    let mut known: std::collections::HashSet<(String, String, u64)> = read_witness(out)?
        .into_iter()
        .map(|w| (w.party, w.instance, w.head_seq))
        .collect();
    // The chain as this witness sees it: only checkpoints that state it are countersigned. A
    // checkpoint must be the next link after the head it states; on the whole log the witness
    // must have seen that head; on a view (a producer's envelopes only where they are shared
    // with the witness) what it saw must not contradict it. The auditor checks the rest of the
    // chain against the witness's copy (`hru audit verify --witness`).
    let mut heads: std::collections::HashMap<hru_domain::ProducerId, (u64, [u8; 32])> = Default::default();
    let mut found = Vec::new();
    while let Some(e) = entries.try_next().await? {
        let Ok(v) = verify_envelope(&e.payload, &p.directory) else {
            continue;
        };
        let h = &v.header;
        if h.event_type == hru_domain::EventType::ChainCheckpoint && h.producer.party != party {
            let consistent = |cp: &hru_wire::v1::ChainCheckpoint| match heads.get(&h.producer) {
                Some(&(seq, digest)) if seq == cp.head_seq => digest == h.prev_digest.0,
                Some(&(seq, _)) => !whole && seq < cp.head_seq,
                None => !whole,
            };
            if let Ok(cp) = hru_wire::v1::ChainCheckpoint::decode(v.body.as_slice())
                && h.producer_seq == cp.head_seq.saturating_add(1)
                && consistent(&cp)
                && cp.head_digest == h.prev_digest.0
                && cp.party == h.producer.party.as_str()
                && cp.instance == h.producer.instance
                && !known.contains(&(cp.party.clone(), cp.instance.clone(), cp.head_seq))
            {
                found.push((cp, h.event_id));
            }
        }
        heads.insert(h.producer.clone(), (h.producer_seq, v.digest.0));
    }
    let mut lines = String::new();
    for (cp, event_id) in &found {
        let body = hru_wire::v1::CheckpointWitnessed {
            checkpoint: Some(cp.clone()),
            checkpoint_event_id: event_id.0.as_bytes().to_vec(),
        };
        p.append_public(hru_domain::EventType::CheckpointWitnessed, body.encode_to_vec())
            .await?;
        known.insert((cp.party.clone(), cp.instance.clone(), cp.head_seq));
        let line = WitnessLine {
            party: cp.party.clone(),
            instance: cp.instance.clone(),
            head_seq: cp.head_seq,
            head_digest: hex::encode(&cp.head_digest),
            at_ms: cp.at_ms,
            witnessed_by: party.to_string(),
        };
        lines.push_str(&serde_json::to_string(&line)?);
        lines.push('\n');
    }
    if !lines.is_empty() {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
        f.write_all(lines.as_bytes())?;
        f.sync_all()?;
    }
    println!(
        "witnessed {} checkpoints; {} kept in {}",
        found.len(),
        known.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
