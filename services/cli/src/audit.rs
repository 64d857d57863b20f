//! `hru audit verify`: the whole log (or a range) checked without any secret key.

use std::path::Path;
use std::process::ExitCode;

use hru_audit::Auditor;
use hru_log::EventLog;
use serde_json::json;

use crate::{Format, policies};

pub(crate) async fn verify(
    nats: &str,
    policies_dir: &Path,
    from: u64,
    to: Option<u64>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let directory = policies::directory(policies_dir)?;
    let set = policies::agreements(policies_dir, &directory)?;
    let log = EventLog::connect(nats).await?;
    let entries = log.replay(from, &[]).await?;
    let bar = indicatif::ProgressBar::new(entries.len() as u64);
    let mut auditor = Auditor::new(&directory, &set);
    for e in entries.iter().take_while(|e| to.is_none_or(|t| e.sequence <= t)) {
        auditor.observe(e.sequence, &e.subject, &e.payload);
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
                json!({"summary": {"checked": report.checked, "findings": report.findings.len(), "by_kind": report.counts()}})
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
            let range = match to {
                Some(t) => format!("sequences {from}..={t}"),
                None => format!("from sequence {from}"),
            };
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
    nats: &str,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    case: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    use hru_domain::{CaseId, PartyId};
    use hru_envelope::KeyRing;

    let party: PartyId = party.parse().map_err(|e| anyhow::anyhow!("--party: {e}"))?;
    let case: CaseId = case.parse().map_err(|e| anyhow::anyhow!("--case: {e}"))?;
    let directory = policies::directory(policies_dir)?;
    let secrets = crate::keys::load(keys_dir, &party)?;
    let log = EventLog::connect(nats).await?;
    let mut reader = hru_audit::AccessReader::new(&directory, KeyRing::new(&secrets), case);
    for e in log.replay(1, &hru_audit::AccessReader::subjects()).await? {
        reader.observe(e.sequence, &e.payload);
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
