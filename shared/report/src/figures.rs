//! The evaluation's figures from the pseudonymous outcome rows: every table as rows of cells,
//! with small numbers suppressed as official statistics do.
//!
//! Suppression: a count from 1 to 4 is shown as `<5`. A count whose complement in a published
//! total is 1 to 4 is shown as `[c]` (else the total would give the hidden one away), and where a
//! published total is split into parts and one part is hidden, the next smallest part is hidden
//! too. A share, rate, confidence interval or time resting on any hidden count, or on fewer than
//! 5 cases, is shown as `[c]`. Zeros are shown.

use std::collections::BTreeMap;

use hru_projection::OutcomeRow;

/// The rule stated in the report.
pub const SUPPRESSION_RULE: &str = "Counts from 1 to 4 are shown as <5. A count that would reveal one of them by \
     subtraction from a published total (its complement is 1 to 4, or it is the next smallest part of a total with one \
     part hidden) is shown as [c]. A share, rate, confidence interval or time that rests on a hidden count, or on \
     fewer than 5 cases, is shown as [c]. Zeros are shown.";

/// The smallest count shown as it is.
const SMALL: usize = 5;
const DAY_MS: f64 = 86_400_000.0;
/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// A count as published.
pub fn count(n: usize) -> String {
    if (1..SMALL).contains(&n) {
        "<5".into()
    } else {
        n.to_string()
    }
}

/// Whether a figure resting on these counts is withheld.
fn withheld(counts: &[usize]) -> bool {
    counts.iter().any(|n| (1..SMALL).contains(n))
}

/// Whether `n` of a published `total` is withheld: it is small, or its complement is.
fn part_withheld(n: usize, total: usize) -> bool {
    withheld(&[n, total.saturating_sub(n)])
}

/// A count `n` of a published `total`: `<5` when small, `[c]` when its complement is.
pub fn part(n: usize, total: usize) -> String {
    if withheld(&[n]) {
        "<5".into()
    } else if part_withheld(n, total) {
        "[c]".into()
    } else {
        n.to_string()
    }
}

/// The parts of a published total: small ones `<5`; where exactly one is hidden, the next
/// smallest non-zero part `[c]` as well, so no part is recovered by subtraction. Also which
/// parts are hidden.
pub fn parts(counts: &[usize]) -> (Vec<String>, Vec<bool>) {
    let mut hidden: Vec<bool> = counts.iter().map(|c| withheld(&[*c])).collect();
    if hidden.iter().filter(|h| **h).count() == 1
        && let Some((i, _)) = counts
            .iter()
            .enumerate()
            .filter(|(i, c)| !hidden[*i] && **c > 0)
            .min_by_key(|(i, c)| (**c, *i))
    {
        hidden[i] = true;
    }
    let shown = counts
        .iter()
        .zip(&hidden)
        .map(|(c, h)| match (*h, withheld(&[*c])) {
            (true, true) => "<5".to_owned(),
            (true, false) => "[c]".to_owned(),
            _ => c.to_string(),
        })
        .collect();
    (shown, hidden)
}

/// A share of `n` in `d`, as a percentage with one decimal, or `[c]` when it rests on a hidden
/// count (`n`, `d` or `d − n`).
pub fn share(n: usize, d: usize) -> String {
    if d == 0 {
        "–".into()
    } else if withheld(&[n, d, d.saturating_sub(n)]) {
        "[c]".into()
    } else {
        format!("{:.1}", 100.0 * n as f64 / d as f64)
    }
}

/// The Wilson score interval for `x` successes in `n` trials, as proportions.
pub fn wilson(x: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (x, n) = (x as f64, n as f64);
    let p = x / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// A quantile by linear interpolation between order statistics (R's type 7); `sorted` ascending.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// A time in days with one decimal, or `[c]` when it rests on fewer than 5 cases.
fn days(v: Option<f64>, cases: usize) -> String {
    match v {
        _ if cases == 0 => "–".into(),
        _ if cases < SMALL => "[c]".into(),
        Some(d) => format!("{d:.1}"),
        None => "–".into(),
    }
}

/// One table: a name (its CSV file's stem), a title, a header and rows.
#[derive(Debug, Clone)]
pub struct Table {
    /// File stem, e.g. `referrals_by_month_area`.
    pub name: &'static str,
    /// Title in the report.
    pub title: &'static str,
    /// Column names.
    pub header: Vec<&'static str>,
    /// Rows of cells as published.
    pub rows: Vec<Vec<String>>,
    /// A note under the table.
    pub note: String,
}

impl Table {
    /// The table as CSV (RFC 4180 quoting).
    pub fn csv(&self) -> String {
        let line = |cells: &[String]| {
            cells
                .iter()
                .map(|c| {
                    // A cell a spreadsheet would take for a formula is made text.
                    let c = if c.starts_with(['=', '+', '-', '@']) {
                        format!("'{c}")
                    } else {
                        c.clone()
                    };
                    if c.contains([',', '"', '\n', '\r']) {
                        format!("\"{}\"", c.replace('"', "\"\""))
                    } else {
                        c
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let mut out = line(&header);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

/// The month (`YYYY-MM`, UTC) of a Unix ms time.
pub fn month(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m").to_string())
        .unwrap_or_default()
}

/// Strip the wire enum prefix: `BEHAVIOUR_STALKING` → `stalking`.
fn plain(name: &str) -> String {
    let stripped = ["BEHAVIOUR_", "INTERVENTION_KIND_", "CHARGE_DECISION_", "BREACH_KIND_"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    stripped.to_lowercase().replace('_', " ")
}

/// Every figure of the report, from rows already restricted to the period.
pub struct Figures {
    /// The tables, in report order.
    pub tables: Vec<Table>,
    /// Monthly referral totals (month, count) for the chart; suppressed months are `None`.
    pub monthly: Vec<(String, Option<usize>)>,
    /// Reoffending rates for the chart: (label, rate, low, high), published ones only.
    pub reoffending: Vec<(String, f64, f64, f64)>,
    /// Times for the chart: (stage, q1, median, q3) in days, published ones only.
    pub times: Vec<(String, f64, f64, f64)>,
    /// Interventions by kind for the chart, published counts only.
    pub interventions: Vec<(String, usize)>,
}

/// Compute every table from `rows` (referrals in the period) as of `now_ms`.
#[allow(clippy::too_many_lines)] // one block per table, in report order
pub fn figures(rows: &[OutcomeRow], now_ms: i64) -> Figures {
    let n = rows.len();
    let mut tables = Vec::new();

    // Referrals per month by area and by behaviour.
    let mut by_area: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut by_behaviour: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut monthly: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows {
        let m = month(r.referral_at_ms.unwrap_or_default());
        *monthly.entry(m.clone()).or_default() += 1;
        *by_area
            .entry((m.clone(), r.area.clone().unwrap_or_else(|| "unknown".into())))
            .or_default() += 1;
        for b in &r.behaviours {
            *by_behaviour.entry((m.clone(), plain(b))).or_default() += 1;
        }
    }
    tables.push(Table {
        name: "referrals_by_month_area",
        title: "Referrals per month by area",
        header: vec!["month", "area", "referrals"],
        rows: monthly
            .keys()
            .flat_map(|m| {
                // A month's areas are parts of the month's total (drawn in the chart).
                let cells: Vec<(&String, usize)> = by_area
                    .iter()
                    .filter(|((bm, _), _)| bm == m)
                    .map(|((_, a), c)| (a, *c))
                    .collect();
                let (shown, _) = parts(&cells.iter().map(|(_, c)| *c).collect::<Vec<_>>());
                cells
                    .into_iter()
                    .zip(shown)
                    .map(|((a, _), s)| vec![m.clone(), a.clone(), s])
                    .collect::<Vec<_>>()
            })
            .collect(),
        note: "Month of the referral's received time (UTC).".into(),
    });
    tables.push(Table {
        name: "referrals_by_month_behaviour",
        title: "Referrals per month by behaviour",
        header: vec!["month", "behaviour", "referrals"],
        rows: by_behaviour
            .iter()
            .map(|((m, b), c)| vec![m.clone(), b.clone(), count(*c)])
            .collect(),
        note: "A referral reporting several behaviours is counted once under each.".into(),
    });

    // Out of hours and primacy.
    let ooh = rows.iter().filter(|r| r.out_of_hours).count();
    let screened: Vec<_> = rows.iter().filter_map(|r| r.screening).collect();
    let primacy = screened.iter().filter(|s| s.primacy_taken).count();
    tables.push(Table {
        name: "referrals_summary",
        title: "Referrals, out of hours and primacy",
        header: vec!["measure", "count", "of", "percent"],
        rows: vec![
            vec!["referrals".into(), count(n), String::new(), String::new()],
            vec!["received out of hours".into(), part(ooh, n), count(n), share(ooh, n)],
            vec![
                "screened".into(),
                part(screened.len(), n),
                count(n),
                share(screened.len(), n),
            ],
            vec![
                "primacy taken (of those screened)".into(),
                part(primacy, screened.len()),
                part(screened.len(), n),
                share(primacy, screened.len()),
            ],
        ],
        note: "Out of hours: received outside the unit's working hours as the agreement states them \
               (Monday to Friday 08:00–16:00 Europe/London, bank holidays excepted)."
            .into(),
    });

    // Time from referral to screening, charge decision and closure.
    let mut time_rows = Vec::new();
    let mut times = Vec::new();
    type Stage = (&'static str, fn(&OutcomeRow) -> Option<i64>);
    let stages: [Stage; 3] = [
        ("screening", |r| r.screening.map(|s| s.at_ms)),
        ("charge decision", |r| r.charge_decided_at_ms),
        ("case closure", |r| r.closed_at_ms),
    ];
    for (stage, at) in stages {
        let mut d: Vec<f64> = rows
            .iter()
            .filter_map(|r| Some((at(r)? - r.referral_at_ms?) as f64 / DAY_MS))
            .collect();
        d.sort_by(f64::total_cmp);
        let (q1, med, q3) = (quantile(&d, 0.25), quantile(&d, 0.5), quantile(&d, 0.75));
        time_rows.push(vec![
            stage.to_owned(),
            count(d.len()),
            days(med, d.len()),
            days(q1, d.len()),
            days(q3, d.len()),
        ]);
        if let (Some(a), Some(b), Some(c)) = (q1, med, q3)
            && d.len() >= SMALL
        {
            times.push((stage.to_owned(), a, b, c));
        }
    }
    tables.push(Table {
        name: "time_to",
        title: "Time from referral (days)",
        header: vec!["stage", "cases", "median", "lower quartile", "upper quartile"],
        rows: time_rows,
        note: "Quartiles by linear interpolation between order statistics.".into(),
    });

    // Charge rate.
    let decided: Vec<&str> = rows.iter().filter_map(|r| r.charge_decision.as_deref()).collect();
    let charged = decided.iter().filter(|d| **d == "CHARGE_DECISION_CHARGED").count();
    let ci = |x: usize, d: usize| -> (String, String) {
        match wilson(x, d) {
            Some((lo, hi)) if !withheld(&[x, d, d.saturating_sub(x)]) => {
                (format!("{:.1}", 100.0 * lo), format!("{:.1}", 100.0 * hi))
            }
            Some(_) => ("[c]".into(), "[c]".into()),
            None => ("–".into(), "–".into()),
        }
    };
    // The decisions are parts of the cases decided: charged first, then the others by name.
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    for d in decided.iter().filter(|d| **d != "CHARGE_DECISION_CHARGED") {
        *others.entry(plain(d)).or_default() += 1;
    }
    let order: Vec<(String, usize)> = std::iter::once(("charged".to_owned(), charged)).chain(others).collect();
    let (shown, hidden) = parts(&order.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    let mut charge_rows = Vec::new();
    for (i, ((d, c), s)) in order.iter().zip(shown).enumerate() {
        let (pct, lo, hi) = if hidden[i] {
            ("[c]".to_owned(), "[c]".to_owned(), "[c]".to_owned())
        } else {
            let (lo, hi) = ci(*c, decided.len());
            (share(*c, decided.len()), lo, hi)
        };
        let (lo, hi) = if i == 0 {
            (lo, hi)
        } else {
            (String::new(), String::new())
        };
        charge_rows.push(vec![d.clone(), s, count(decided.len()), pct, lo, hi]);
    }
    tables.push(Table {
        name: "charge_rate",
        title: "Charging decisions",
        header: vec![
            "decision",
            "cases",
            "of decided",
            "percent",
            "95% CI low",
            "95% CI high",
        ],
        rows: charge_rows,
        note: "Charge rate: cases charged among cases with a charging decision; Wilson score interval.".into(),
    });

    // Reoffending after a completed therapeutic intervention, beside those without one.
    let mut reoffending_rows = Vec::new();
    let mut reoffending = Vec::new();
    for (group, with) in [
        ("completed a therapeutic intervention", true),
        ("no completed therapeutic intervention", false),
    ] {
        let members: Vec<&OutcomeRow> = rows
            .iter()
            .filter(|r| r.therapeutic_completed_at_ms.is_some() == with)
            .collect();
        // The windows' open counts and denominators are parts of the group: where either open
        // count is hidden, both are, with both denominators.
        let windows: Vec<(&str, Vec<bool>)> = [("6 months", 6), ("12 months", 12)]
            .into_iter()
            .map(|(window, months)| {
                let known = members
                    .iter()
                    .filter_map(|r| {
                        if months == 6 {
                            r.reoffence_within_6m
                        } else {
                            r.reoffence_within_12m
                        }
                    })
                    .collect();
                (window, known)
            })
            .collect();
        let open_hidden = windows
            .iter()
            .any(|(_, k)| part_withheld(members.len() - k.len(), members.len()));
        let hide = |n: usize| {
            if withheld(&[n]) {
                "<5".to_owned()
            } else {
                "[c]".to_owned()
            }
        };
        for (window, known) in &windows {
            let open = members.len() - known.len();
            let x = known.iter().filter(|k| **k).count();
            let (lo, hi) = ci(x, known.len());
            let (open_shown, denominator) = if open_hidden {
                (hide(open), hide(known.len()))
            } else {
                (count(open), count(known.len()))
            };
            let (pct, lo, hi) = if open_hidden {
                ("[c]".to_owned(), "[c]".to_owned(), "[c]".to_owned())
            } else {
                (share(x, known.len()), lo, hi)
            };
            reoffending_rows.push(vec![
                group.to_owned(),
                (*window).to_owned(),
                part(x, known.len()),
                denominator,
                pct,
                lo,
                hi,
                open_shown,
            ]);
            if let Some((l, h)) =
                wilson(x, known.len()).filter(|_| !open_hidden && !withheld(&[x, known.len(), known.len() - x]))
            {
                reoffending.push((
                    format!("{} – {window}", if with { "completed" } else { "without" }),
                    x as f64 / known.len() as f64,
                    l,
                    h,
                ));
            }
        }
    }
    tables.push(Table {
        name: "reoffending",
        title: "Reoffending",
        header: vec![
            "group",
            "window",
            "reoffended",
            "denominator",
            "percent",
            "95% CI low",
            "95% CI high",
            "window not yet closed",
        ],
        rows: reoffending_rows,
        note: "The window runs from the completed therapeutic intervention, or from the referral for cases \
               without one; a reoffence counts for the subject whichever case recorded it. The denominator \
               holds the cases whose window has closed or who reoffended within it; the last column counts \
               cases whose window has not yet closed, left out of the rate. Wilson score interval."
            .into(),
    });

    // Interventions by kind.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows {
        for k in &r.interventions_completed {
            *kinds.entry(plain(k)).or_default() += 1;
        }
    }
    tables.push(Table {
        name: "interventions",
        title: "Interventions completed by kind",
        header: vec!["kind", "completed"],
        rows: kinds.iter().map(|(k, c)| vec![k.clone(), count(*c)]).collect(),
        note: String::new(),
    });
    let interventions = kinds
        .iter()
        .filter(|(_, c)| !withheld(&[**c]))
        .map(|(k, c)| (k.clone(), *c))
        .collect();

    // Quarterly reviews: held, due, overdue.
    let (mut due, mut held, mut overdue, mut held_late) = (0usize, 0usize, 0usize, 0usize);
    for r in rows {
        let Some(done) = r.therapeutic_completed_at_ms else {
            continue;
        };
        for number in 1..=hru_projection::REVIEWS {
            let due_at = hru_projection::review_due_at_ms(done, number);
            let was_held = r.reviews_held.iter().find(|h| h.number == number);
            if let Some(h) = was_held {
                held += 1;
                if h.held_at_ms > due_at {
                    held_late += 1;
                }
            }
            if due_at <= now_ms {
                due += 1;
                if was_held.is_none() {
                    overdue += 1;
                }
            }
        }
    }
    tables.push(Table {
        name: "reviews",
        title: "Quarterly reviews after a completed therapeutic intervention",
        header: vec!["measure", "reviews"],
        rows: vec![
            vec!["fallen due".into(), count(due)],
            vec!["held".into(), count(held)],
            vec!["held after their due date".into(), count(held_late)],
            vec!["overdue (due, not held)".into(), count(overdue)],
        ],
        note: "Four reviews fall due, 3, 6, 9 and 12 months after the first completed therapeutic intervention.".into(),
    });

    // Victims' Code contacts.
    let discharged: usize = rows.iter().map(|r| r.contacts_discharged as usize).sum();
    let late: usize = rows.iter().map(|r| r.contacts_late as usize).sum();
    let on_time = discharged - late.min(discharged);
    tables.push(Table {
        name: "victims_code",
        title: "Victims' Code contacts",
        header: vec!["measure", "contacts", "of", "percent"],
        rows: vec![
            vec!["contacts made".into(), count(discharged), String::new(), String::new()],
            vec![
                "on time".into(),
                part(on_time, discharged),
                count(discharged),
                share(on_time, discharged),
            ],
            vec![
                "late".into(),
                part(late, discharged),
                count(discharged),
                share(late, discharged),
            ],
        ],
        note: "Contacts the Victims' Code made due (needs assessment within two working days of the referral; \
               news of an order, a charging decision or closure within one working day; safety plan reviews) \
               as the advocates' node counted them when the contact was recorded."
            .into(),
    });

    // Breach acknowledgement times.
    let mut acks: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in rows {
        for a in &r.acknowledgements {
            let s = a.response_time_ms as f64 / 1000.0;
            acks.entry(plain(&a.kind)).or_default().push(s);
        }
    }
    let secs = |v: Option<f64>, cases: usize| match v {
        _ if cases == 0 => "–".to_owned(),
        _ if cases < SMALL => "[c]".to_owned(),
        Some(s) => format!("{s:.1}"),
        None => "–".into(),
    };
    // The kinds are parts of all acknowledgements: "all" last, the kinds by name.
    let mut kinds: Vec<(String, Vec<f64>)> = acks.into_iter().filter(|(k, _)| k != "all").collect();
    for (_, v) in &mut kinds {
        v.sort_by(f64::total_cmp);
    }
    let (shown, hidden) = parts(&kinds.iter().map(|(_, v)| v.len()).collect::<Vec<_>>());
    let mut ack_rows: Vec<Vec<String>> = kinds
        .iter()
        .zip(shown)
        .zip(&hidden)
        .map(|(((k, v), s), h)| {
            let cases = if *h { 0 } else { v.len() };
            let time = |q: f64| {
                if *h {
                    "[c]".to_owned()
                } else {
                    secs(quantile(v, q), cases)
                }
            };
            vec![k.clone(), s, time(0.5), time(0.9)]
        })
        .collect();
    let mut all: Vec<f64> = kinds.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    if !all.is_empty() {
        ack_rows.push(vec![
            "all".into(),
            count(all.len()),
            secs(quantile(&all, 0.5), all.len()),
            secs(quantile(&all, 0.9), all.len()),
        ]);
    }
    tables.push(Table {
        name: "breach_acknowledgements",
        title: "Breach acknowledgement times (seconds)",
        header: vec!["breach kind", "acknowledged", "median", "90th percentile"],
        rows: ack_rows,
        note: "From the breach's first record in the log to the control room's acknowledgement.".into(),
    });

    Figures {
        tables,
        monthly: monthly
            .into_iter()
            .map(|(m, c)| (m, (!withheld(&[c])).then_some(c)))
            .collect(),
        reoffending,
        times,
        interventions,
    }
}

/// The pseudonymised row-level extract for the unit's master databases: one row per case,
/// dates to the month, durations in whole days, no identity.
pub fn extract(rows: &[OutcomeRow]) -> Table {
    let days_between = |a: Option<i64>, b: Option<i64>| {
        a.zip(b)
            .map(|(a, b)| ((a - b) as f64 / DAY_MS).floor().to_string())
            .unwrap_or_default()
    };
    let flag = |b: Option<bool>| {
        b.map(|b| if b { "yes" } else { "no" }.to_owned())
            .unwrap_or_else(|| "window open".into())
    };
    Table {
        name: "extract",
        title: "Pseudonymised extract",
        header: vec![
            "case_id",
            "subject_ref",
            "referral_month",
            "area",
            "behaviours",
            "out_of_hours",
            "primacy_taken",
            "days_to_screening",
            "charge_decision",
            "days_to_charge_decision",
            "days_to_closure",
            "interventions_completed",
            "therapeutic_completed_month",
            "reoffended_within_6m",
            "reoffended_within_12m",
            "reviews_held",
            "victims_code_contacts",
            "victims_code_contacts_late",
        ],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.case_id.clone(),
                    r.subject_ref.clone().unwrap_or_default(),
                    r.referral_at_ms.map(month).unwrap_or_default(),
                    r.area.clone().unwrap_or_default(),
                    r.behaviours.iter().map(|b| plain(b)).collect::<Vec<_>>().join(";"),
                    if r.out_of_hours { "yes" } else { "no" }.into(),
                    r.screening
                        .map(|s| if s.primacy_taken { "yes" } else { "no" }.to_owned())
                        .unwrap_or_default(),
                    days_between(r.screening.map(|s| s.at_ms), r.referral_at_ms),
                    r.charge_decision.as_deref().map(plain).unwrap_or_default(),
                    days_between(r.charge_decided_at_ms, r.referral_at_ms),
                    days_between(r.closed_at_ms, r.referral_at_ms),
                    r.interventions_completed
                        .iter()
                        .map(|k| plain(k))
                        .collect::<Vec<_>>()
                        .join(";"),
                    r.therapeutic_completed_at_ms.map(month).unwrap_or_default(),
                    flag(r.reoffence_within_6m),
                    flag(r.reoffence_within_12m),
                    r.reviews_held.len().to_string(),
                    r.contacts_discharged.to_string(),
                    r.contacts_late.to_string(),
                ]
            })
            .collect(),
        note: "Row-level and pseudonymised (keyed subject references, random case ids, months not dates): \
               for the unit's master database under the agreement's clause 8.1, not for publication."
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_numbers_are_suppressed_and_zeros_shown() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1), "<5");
        assert_eq!(count(4), "<5");
        assert_eq!(count(5), "5");
        assert_eq!(share(3, 40), "[c]");
        assert_eq!(share(10, 4), "[c]");
        assert_eq!(share(10, 40), "25.0");
        assert_eq!(share(0, 40), "0.0");
    }

    fn rows(n: usize, f: impl Fn(usize) -> String) -> Vec<OutcomeRow> {
        (0..n)
            .map(|i| {
                let json = format!(
                    r#"{{"case_id":"c{i}","subject_ref":null,"referral_at_ms":1800000000000,"behaviours":[],"area":"Crewe","charge_decision":null,"time_to_resolve_ms":null,"interventions_completed":[],"therapeutic_completed_at_ms":null,"reoffence_within_6m":null,"reoffence_within_12m":null{}}}"#,
                    f(i)
                );
                serde_json::from_str(&json).unwrap()
            })
            .collect()
    }

    fn cell(f: &Figures, table: &str, row: &str, column: usize) -> String {
        let t = f.tables.iter().find(|t| t.name == table).unwrap();
        t.rows.iter().find(|r| r[0] == row).unwrap()[column].clone()
    }

    #[test]
    fn no_hidden_count_is_recovered_by_subtraction_from_a_published_total() {
        // 40 contacts made, 3 late: "on time" would give the late count away.
        let f = figures(
            &rows(40, |i| {
                format!(r#","contacts_discharged":1,"contacts_late":{}"#, u32::from(i < 3))
            }),
            1_900_000_000_000,
        );
        assert_eq!(cell(&f, "victims_code", "contacts made", 1), "40");
        assert_eq!(cell(&f, "victims_code", "late", 1), "<5");
        assert_eq!(cell(&f, "victims_code", "on time", 1), "[c]");
        assert_eq!(cell(&f, "victims_code", "on time", 3), "[c]");
        // 20 referrals, 18 out of hours: the 2 in hours are the complement.
        let f = figures(
            &rows(20, |i| format!(r#","out_of_hours":{}"#, i >= 2)),
            1_900_000_000_000,
        );
        assert_eq!(cell(&f, "referrals_summary", "received out of hours", 1), "[c]");
    }

    #[test]
    fn parts_of_a_total_hide_the_next_smallest_with_a_small_one() {
        assert_eq!(parts(&[20, 3, 9]).0, ["20", "<5", "[c]"]);
        assert_eq!(parts(&[20, 3, 2]).0, ["20", "<5", "<5"]);
        assert_eq!(parts(&[20, 0, 9]).0, ["20", "0", "9"]);
        assert_eq!(part(38, 40), "[c]");
        assert_eq!(share(38, 40), "[c]");
    }

    #[test]
    fn wilson_matches_published_values() {
        // 17.6 % (3 of 17 would be suppressed; 30 of 170 is the same share).
        let (lo, hi) = wilson(30, 170).unwrap();
        assert!((lo - 0.1265).abs() < 5e-4 && (hi - 0.2407).abs() < 5e-4, "{lo} {hi}");
        let (lo, hi) = wilson(0, 10).unwrap();
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 5e-4, "{lo} {hi}");
    }

    #[test]
    fn quartiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), Some(2.5));
        assert_eq!(quantile(&v, 0.25), Some(1.75));
        assert_eq!(quantile(&[7.0], 0.9), Some(7.0));
    }
}
