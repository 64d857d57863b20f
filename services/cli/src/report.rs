//! `hru report evaluation`: the unit's evaluation from the evaluation party's own view of the
//! log — an HTML report with SVG charts and a CSV file per table, small numbers suppressed —
//! plus the pseudonymised row-level extract for the unit's master database.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use hru_domain::PartyId;

use crate::{keys, policies};

/// The purpose the evaluation is read under.
const PURPOSE: &str = "evaluation";

/// `hru report evaluation` arguments.
pub(crate) struct EvaluationArgs<'a> {
    pub policies: &'a Path,
    pub party: &'a str,
    pub keys: &'a Path,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub out: &'a Path,
    pub at: Option<&'a str>,
}

fn date_ms(flag: &str, value: &str) -> anyhow::Result<i64> {
    let d: jiff::civil::Date = value
        .parse()
        .map_err(|e| anyhow::anyhow!("{flag} `{value}` is not a date: write YYYY-MM-DD ({e})"))?;
    Ok(d.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp().as_millisecond())
}

/// Check everything that can be checked before reading the log: nothing is written on bad input.
fn check(args: &EvaluationArgs<'_>) -> anyhow::Result<(PartyId, i64, i64)> {
    let from = args.from.map(|f| date_ms("--from", f)).transpose()?.unwrap_or(i64::MIN);
    // --to names the last day included.
    let to = args
        .to
        .map(|t| date_ms("--to", t).map(|ms| ms + 86_400_000))
        .transpose()?
        .unwrap_or(i64::MAX);
    if let (Some(f), Some(t)) = (args.from, args.to)
        && from >= to
    {
        bail!("--from {f} is after --to {t}: give a period that starts on or before it ends");
    }
    let party: PartyId = args
        .party
        .parse()
        .map_err(|e| anyhow::anyhow!("--party `{}`: {e}", args.party))?;
    let directory = policies::directory(args.policies)?;
    let set = policies::agreements(args.policies, &directory)?;
    let isa = policies::in_force(&set, jiff::Timestamp::now().as_millisecond())?;
    if !isa.parties.contains_key(&party) {
        let known: Vec<&str> = isa.parties.keys().map(PartyId::as_str).collect();
        bail!(
            "--party {party} is not a party of {} v{} (parties: {})",
            isa.id,
            isa.version,
            known.join(", ")
        );
    }
    if !isa.received_by(&party).any(|r| r.purpose == PURPOSE) {
        bail!(
            "--party {party} receives nothing for the evaluation purpose under {} v{}: the report is made \
             from the evaluation party's own view (see `hru policy explain --party {party}`)",
            isa.id,
            isa.version
        );
    }
    if args.out.exists()
        && std::fs::read_dir(args.out)
            .with_context(|| format!("--out {}", args.out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "--out {} exists and is not empty: give a new directory, so no earlier report is mixed with this one",
            args.out.display()
        );
    }
    keys::load(args.keys, &party)?;
    Ok((party, from, to))
}

/// Make the report: fold the evaluation party's outcomes view, compute, write everything to a
/// directory beside `--out` and move it into place at the end.
pub(crate) async fn evaluation(nats: &crate::Broker, args: EvaluationArgs<'_>) -> anyhow::Result<ExitCode> {
    let (party, from, to) = check(&args)?;
    let at_ms = crate::at_ms(args.at)?;
    let store = tempfile::tempdir().context("a temporary directory for the outcomes view")?;
    let folded = crate::project::fold(
        nats,
        args.policies,
        &party,
        args.keys,
        store.path(),
        Some("evaluation-outcomes"),
        true,
        at_ms,
    )
    .await?;
    let rows: Vec<_> = hru_projection::outcome_rows(&folded.projector.store, at_ms)?
        .into_iter()
        .filter(|r| r.referral_at_ms.is_some_and(|t| t >= from && t < to))
        .collect();
    let period = format!(
        "{} to {}",
        args.from.unwrap_or("the first referral"),
        args.to.unwrap_or("the last referral")
    );
    let written = hru_report::write(
        &rows,
        &hru_report::Heading {
            period: &period,
            at_ms,
            party: party.as_str(),
        },
        args.out,
    )
    .with_context(|| format!("--out {}", args.out.display()))?;
    println!("{}", written.index.display());
    eprintln!(
        "evaluation report: {} referrals from {period}, {} tables as CSV, {} charts, extract of {} cases, as of {}",
        rows.len(),
        written.tables,
        written.charts,
        written.cases,
        jiff::Timestamp::from_millisecond(at_ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
