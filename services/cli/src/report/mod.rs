//! `hru report evaluation`: the unit's evaluation from the evaluation party's own view of the
//! log — an HTML report with SVG charts and a CSV file per table, small numbers suppressed —
//! plus the pseudonymised row-level extract for the unit's master database.

mod charts;
mod figures;

use std::path::{Path, PathBuf};
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
    let figures = figures::figures(&rows, at_ms);
    let charts = charts::charts(&figures).map_err(|e| anyhow::anyhow!(e))?;
    let extract = figures::extract(&rows);

    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("--out: creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".hru-report-")
        .tempdir_in(&parent)
        .with_context(|| format!("--out: writing in {}", parent.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        std::fs::write(staging.path().join(name), text).with_context(|| format!("writing {name}"))
    };
    for t in figures.tables.iter().chain(std::iter::once(&extract)) {
        write(&format!("{}.csv", t.name), &t.csv())?;
    }
    for (file, _, svg) in &charts {
        write(file, svg)?;
    }
    let period = format!(
        "{} to {}",
        args.from.unwrap_or("the first referral"),
        args.to.unwrap_or("the last referral")
    );
    write(
        "index.html",
        &html(&figures.tables, &extract, &charts, &period, at_ms, rows.len(), &party),
    )?;
    if args.out.exists() {
        std::fs::remove_dir(args.out).with_context(|| format!("--out {}", args.out.display()))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, args.out)
        .with_context(|| format!("--out: moving the report to {}", args.out.display()))?;
    println!("{}", args.out.join("index.html").display());
    eprintln!(
        "evaluation report: {} referrals from {period}, {} tables, {} charts, extract of {} cases, as of {}",
        rows.len(),
        figures.tables.len(),
        charts.len(),
        extract.rows.len(),
        jiff::Timestamp::from_millisecond(at_ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn table_html(t: &figures::Table) -> String {
    let mut h = format!("<h2 id=\"{}\">{}</h2>\n<table>\n<tr>", t.name, escape(t.title));
    for c in &t.header {
        h.push_str(&format!("<th>{}</th>", escape(c)));
    }
    h.push_str("</tr>\n");
    for r in &t.rows {
        h.push_str("<tr>");
        for c in r {
            h.push_str(&format!("<td>{}</td>", escape(c)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    if !t.note.is_empty() {
        h.push_str(&format!("<p class=\"note\">{}</p>\n", escape(&t.note)));
    }
    h.push_str(&format!(
        "<p class=\"csv\"><a href=\"{0}.csv\">{0}.csv</a></p>\n",
        t.name
    ));
    h
}

fn html(
    tables: &[figures::Table],
    extract: &figures::Table,
    charts: &[(&str, &str, String)],
    period: &str,
    at_ms: i64,
    referrals: usize,
    party: &PartyId,
) -> String {
    let at = jiff::Timestamp::from_millisecond(at_ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>Harm Reduction Unit evaluation</h1>\n<p>Referrals received from {}; figures as of {}; {} referrals \
         (shown as {}). Made from the pseudonymous view of party <code>{}</code> under the agreement's \
         evaluation purpose: no identity, narrative, clinical, victim or location information.</p>\n\
         <p class=\"rule\"><strong>Small numbers.</strong> {}</p>\n",
        escape(period),
        escape(&at),
        referrals,
        figures::count(referrals),
        escape(party.as_str()),
        escape(figures::SUPPRESSION_RULE)
    ));
    body.push_str("<div class=\"charts\">\n");
    for (file, title, svg) in charts {
        // Inline, so the report opens anywhere with nothing fetched.
        let inline = svg.trim_start_matches(|c| c != '<');
        let inline = if inline.starts_with("<?xml") {
            inline.split_once("?>").map_or(inline, |(_, rest)| rest)
        } else {
            inline
        };
        body.push_str(&format!(
            "<figure id=\"{}\"><figcaption>{}</figcaption>{}</figure>\n",
            file.trim_end_matches(".svg"),
            escape(title),
            inline
        ));
    }
    body.push_str("</div>\n");
    for t in tables {
        body.push_str(&table_html(t));
    }
    body.push_str(&format!(
        "<h2 id=\"extract\">{}</h2>\n<p class=\"note\">{} {} cases: <a href=\"extract.csv\">extract.csv</a>.</p>\n",
        escape(extract.title),
        escape(&extract.note),
        extract.rows.len()
    ));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>HRU evaluation</title><style>\
         body{{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:64em;color:#111}}\
         table{{border-collapse:collapse;margin:.5em 0}}th,td{{border:1px solid #bbb;padding:.25em .6em;text-align:left}}\
         th{{background:#eef2f7}}.note,.rule{{color:#333;max-width:60em}}.csv{{font-size:90%}}\
         figure{{display:inline-block;margin:.5em}}figcaption{{font-weight:600}}svg{{width:38em;max-width:100%;height:auto}}\
         </style></head><body>\n{body}</body></html>\n"
    )
}
