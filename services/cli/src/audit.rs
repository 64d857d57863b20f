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
