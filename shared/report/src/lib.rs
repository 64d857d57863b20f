//! The unit's evaluation report from the pseudonymous outcome rows of the evaluation party's
//! own view: every table as a CSV file with small numbers suppressed as official statistics
//! do, charts drawn as SVG by plotters, one HTML page that fetches nothing, and the
//! pseudonymised row-level extract for the unit's master database.

mod charts;
mod figures;

use std::path::{Path, PathBuf};

pub use figures::{SUPPRESSION_RULE, Table, count, quantile, share, wilson};
use hru_projection::OutcomeRow;

/// What went wrong writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A chart could not be drawn.
    #[error("{0}")]
    Chart(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReportError {
    let what = what.into();
    move |source| ReportError::Io { what, source }
}

/// What the report says about itself.
pub struct Heading<'a> {
    /// The period, as words (e.g. "2024-12-01 to 2026-11-30").
    pub period: &'a str,
    /// The figures' "as of", Unix ms.
    pub at_ms: i64,
    /// The party whose view it is.
    pub party: &'a str,
}

/// What was written.
pub struct Written {
    /// The HTML page.
    pub index: PathBuf,
    /// Tables written as CSV, the extract included.
    pub tables: usize,
    /// Charts drawn.
    pub charts: usize,
    /// Cases in the extract.
    pub cases: usize,
}

/// Write the report for `rows` (referrals of the period) into the new directory `out`: every
/// file is written beside it first and the directory moved into place at the end, so a failure
/// leaves nothing behind. `out` must not exist, or be empty.
pub fn write(rows: &[OutcomeRow], heading: &Heading<'_>, out: &Path) -> Result<Written, ReportError> {
    let figures = figures::figures(rows, heading.at_ms);
    let charts = charts::charts(&figures).map_err(ReportError::Chart)?;
    let extract = figures::extract(rows);
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(format!("creating {}", parent.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".hru-report-")
        .tempdir_in(&parent)
        .map_err(io(format!("writing in {}", parent.display())))?;
    let put =
        |name: &str, text: &str| std::fs::write(staging.path().join(name), text).map_err(io(format!("writing {name}")));
    for t in &figures.tables {
        put(&format!("{}.csv", t.name), &t.csv())?;
    }
    // The row-level extract is not for publication: it goes apart, unlinked from the page.
    std::fs::create_dir(staging.path().join("restricted")).map_err(io("creating restricted/"))?;
    put("restricted/extract.csv", &extract.csv())?;
    for (file, _, svg) in &charts {
        put(file, svg)?;
    }
    put(
        "index.html",
        &html(&figures.tables, &extract, &charts, heading, rows.len()),
    )?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(io(format!("{} exists and is not empty", out.display())))?;
    }
    // Moved into place, then released: on any failure the staging directory is removed.
    std::fs::rename(staging.path(), out).map_err(io(format!("moving the report to {}", out.display())))?;
    let _ = staging.keep();
    Ok(Written {
        index: out.join("index.html"),
        tables: figures.tables.len() + 1,
        charts: charts.len(),
        cases: extract.rows.len(),
    })
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
    heading: &Heading<'_>,
    referrals: usize,
) -> String {
    let at = jiff::Timestamp::from_millisecond(heading.at_ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>Harm Reduction Unit evaluation</h1>\n<p>Referrals received from {}; figures as of {}; {} referrals. \
         Made from the pseudonymous view of party <code>{}</code> under the agreement's \
         evaluation purpose: no identity, narrative, clinical, victim or location information.</p>\n\
         <p class=\"rule\"><strong>Small numbers.</strong> {}</p>\n",
        escape(heading.period),
        escape(&at),
        figures::count(referrals),
        escape(heading.party),
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
        "<h2 id=\"extract\">{}</h2>\n<p class=\"note\">{} It is written apart, in <code>restricted/extract.csv</code>, \
         and not linked from this page.</p>\n",
        escape(extract.title),
        escape(&extract.note),
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
