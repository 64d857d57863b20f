//! The evaluation report (issue 19, item 5) from a synthetic two-year caseload with known
//! answers: a seeded generator makes 300 cases across areas, behaviours, interventions, reviews,
//! Victims' Code contacts, charging decisions, closures, reoffences and breaches; each fact is
//! recorded through the node of the party that records it (police HRU, CWP, victim advocacy, the
//! control room; breaches by the geofence party), under version 2 of the agreement. Then
//! `hru report evaluation` runs as the evaluation party and every figure of every CSV is checked
//! against the generator's own count, suppression included; the HTML is opened in chromium and a
//! screenshot kept; bad input exits 2 naming the problem, with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)] // a test fails by panicking

use std::collections::BTreeMap;
use std::path::Path;

use hru_tests::{CHESHIRE_PARTIES, NodeProcess, World, path, request, succeeded, uuid_b64};
use hru_wire::v1 as pb;
use jiff::civil::{Date, date};
use pb::breach_service_client::BreachServiceClient;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

const SEED: u64 = 19;
const CASES: usize = 300;
const BREACHES: usize = 10;
const AREAS: [&str; 4] = ["Cheshire East", "Cheshire West", "Warrington", "Halton"];
const BEHAVIOURS: [(&str, &str); 6] = [
    ("BEHAVIOUR_STALKING", "stalking"),
    ("BEHAVIOUR_HARASSMENT", "harassment"),
    ("BEHAVIOUR_DOMESTIC_ABUSE", "domestic abuse"),
    ("BEHAVIOUR_COERCIVE_CONTROL", "coercive control"),
    ("BEHAVIOUR_THREATS", "threats"),
    ("BEHAVIOUR_ONLINE", "online"),
];
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
/// The report's "as of": every generated fact happens before it.
const AT: &str = "2026-12-01T00:00:00Z";
/// England and Wales bank holidays of the generated period, as GOV.UK lists them.
const BANK_HOLIDAYS: [(i16, i8, i8); 16] = [
    (2024, 12, 25),
    (2024, 12, 26),
    (2025, 1, 1),
    (2025, 4, 18),
    (2025, 4, 21),
    (2025, 5, 5),
    (2025, 5, 26),
    (2025, 8, 25),
    (2025, 12, 25),
    (2025, 12, 26),
    (2026, 1, 1),
    (2026, 4, 3),
    (2026, 4, 6),
    (2026, 5, 4),
    (2026, 5, 25),
    (2026, 8, 31),
];

fn at_ms() -> i64 {
    AT.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn london(d: Date, hour: i8, minute: i8) -> i64 {
    d.at(hour, minute, 0, 0)
        .to_zoned(jiff::tz::TimeZone::get("Europe/London").unwrap())
        .unwrap()
        .timestamp()
        .as_millisecond()
}

fn months_after(ms: i64, months: i64) -> i64 {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .checked_add(jiff::Span::new().months(months))
        .unwrap()
        .timestamp()
        .as_millisecond()
}

fn month(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .strftime("%Y-%m")
        .to_string()
}

/// One generated case: the facts and when they happen.
#[derive(Debug, Clone)]
struct Case {
    id: uuid::Uuid,
    subject: pb::PersonIdentity,
    area: &'static str,
    behaviours: Vec<usize>,
    received: i64,
    out_of_hours: bool,
    screening: Option<(i64, bool, usize)>,
    charge: Option<(i64, &'static str)>,
    therapeutic: Option<i64>,
    other_interventions: Vec<(&'static str, &'static str, i64)>,
    reviews: Vec<(u32, i64, i64)>,
    contact: Option<(i64, bool)>,
    closed: Option<i64>,
    reoffence: Option<i64>,
}

fn generate() -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(SEED);
    let first = date(2024, 12, 1);
    let span_days = first.until(date(2026, 10, 31)).unwrap().get_days();
    let holidays: Vec<Date> = BANK_HOLIDAYS.iter().map(|(y, m, d)| date(*y, *m, *d)).collect();
    let limit = at_ms();
    let before = |t: i64| (t < limit).then_some(t);
    (0..CASES)
        .map(|i| {
            let mut day = first
                .checked_add(jiff::Span::new().days(rng.gen_range(0..=span_days)))
                .unwrap();
            let working = |d: &Date| {
                !matches!(
                    d.weekday(),
                    jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday
                ) && !holidays.contains(d)
            };
            // Out of hours by construction: an evening, a weekend morning or a bank holiday.
            let (received, out_of_hours) = match i % 10 {
                0 | 1 => (london(day, 19, 30), true),
                2 => {
                    while working(&day) {
                        day = day.tomorrow().unwrap();
                    }
                    (london(day, 10, 0), true)
                }
                3 if i % 30 == 3 => (london(holidays[(i / 30) % holidays.len()], 11, 0), true),
                _ => {
                    while !working(&day) {
                        day = day.tomorrow().unwrap();
                    }
                    (london(day, rng.gen_range(8..16), rng.gen_range(0..60)), false)
                }
            };
            let behaviours = if rng.gen_bool(0.3) {
                let a = rng.gen_range(0..BEHAVIOURS.len());
                let b = (a + rng.gen_range(1..BEHAVIOURS.len())) % BEHAVIOURS.len();
                let mut v = vec![a, b];
                v.sort_unstable();
                v
            } else {
                vec![rng.gen_range(0..BEHAVIOURS.len())]
            };
            let screening = rng.gen_bool(0.9).then(|| {
                (
                    received + rng.gen_range(1..96) * HOUR,
                    rng.gen_bool(0.6),
                    rng.gen_range(1..5),
                )
            });
            let charge = rng
                .gen_bool(0.5)
                .then(|| {
                    let d = match rng.gen_range(0..20) {
                        0..11 => "CHARGE_DECISION_CHARGED",
                        11..17 => "CHARGE_DECISION_NO_FURTHER_ACTION",
                        _ => "CHARGE_DECISION_OUT_OF_COURT",
                    };
                    before(received + rng.gen_range(10..200) * DAY).map(|t| (t, d))
                })
                .flatten();
            let therapeutic = rng
                .gen_bool(0.45)
                .then(|| before(received + rng.gen_range(30..150) * DAY))
                .flatten();
            let mut other_interventions = Vec::new();
            if rng.gen_bool(0.2)
                && let Some(t) = before(received + rng.gen_range(5..60) * DAY)
            {
                other_interventions.push(("police-hru", "INTERVENTION_KIND_LEGAL", t));
            }
            if rng.gen_bool(0.3)
                && let Some(t) = before(received + rng.gen_range(5..90) * DAY)
            {
                other_interventions.push(("victim-advocacy", "INTERVENTION_KIND_ADVOCACY", t));
            }
            let mut reviews = Vec::new();
            if let Some(t) = therapeutic {
                for n in 1..=4u32 {
                    let due = months_after(t, 3 * i64::from(n));
                    let held = due + rng.gen_range(-5..20) * DAY;
                    if rng.gen_bool(0.8) && held < limit && held > t {
                        reviews.push((n, due, held));
                    }
                }
            }
            // A contact on time (the next day) or late (a week later).
            let contact = rng.gen_bool(0.8).then(|| {
                let late = rng.gen_bool(0.3);
                (received + if late { 7 * DAY } else { DAY }, late)
            });
            let closed = rng
                .gen_bool(0.4)
                .then(|| before(received + rng.gen_range(60..400) * DAY))
                .flatten();
            let from = therapeutic.unwrap_or(received);
            let (p6, p12) = if therapeutic.is_some() {
                (0.18, 0.08)
            } else {
                (0.3, 0.1)
            };
            let roll: f64 = rng.r#gen();
            let reoffence = if roll < p6 {
                before(from + rng.gen_range(10..170) * DAY)
            } else if roll < p6 + p12 {
                before(from + rng.gen_range(200..330) * DAY)
            } else {
                None
            };
            // A person by name and date of birth, or (one in five) by PNC number.
            let subject = pb::PersonIdentity {
                full_name: format!("Subject {i}"),
                date_of_birth: format!("19{}-0{}-1{}", 60 + i % 40, 1 + i % 9, i % 10),
                pnc_number: if i % 5 == 0 {
                    format!("{:02}/{}A", i % 100, 100_000 + i)
                } else {
                    String::new()
                },
                ..Default::default()
            };
            Case {
                id: uuid::Uuid::from_u128(0x0e7a_0000_0000_4000_8000_0000_0000_0000 | i as u128),
                subject,
                area: AREAS[rng.gen_range(0..AREAS.len())],
                behaviours,
                received,
                out_of_hours,
                screening,
                charge,
                therapeutic,
                other_interventions,
                reviews,
                contact,
                closed,
                reoffence,
            }
        })
        .collect()
}

/// One fact to record: who records it, when it happens, and the draft.
fn facts(c: &Case) -> Vec<(&'static str, i64, pb::event_draft::Event)> {
    use pb::event_draft::Event as E;
    let mut out = vec![(
        "police-hru",
        c.received,
        E::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore {
                // The node derives it from the identity (clause 3.6).
                subject_ref: Vec::new(),
                behaviours: c
                    .behaviours
                    .iter()
                    .map(|b| pb::Behaviour::from_str_name(BEHAVIOURS[*b].0).unwrap() as i32)
                    .collect(),
                area: c.area.into(),
                received_at_ms: c.received,
                // The node decides; what the caller says is not kept.
                out_of_hours: !c.out_of_hours,
                crime_reference: String::new(),
            }),
            identity: Some(pb::ReferralIdentity {
                subject: Some(c.subject.clone()),
                victim: None,
            }),
            narrative: None,
        }),
    )];
    if let Some((t, primacy, criteria)) = c.screening {
        out.push((
            "police-hru",
            t,
            E::ScreeningCompleted(pb::ScreeningCompleted {
                core: Some(pb::ScreeningCore {
                    primacy_taken: primacy,
                    criteria: (0..criteria).map(|k| format!("criterion {k}")).collect(),
                    rationale: "synthetic".into(),
                }),
                figures: None,
            }),
        ));
    }
    if let Some((t, decision)) = c.charge {
        out.push((
            "police-hru",
            t,
            E::ChargeDecided(pb::ChargeDecided {
                core: Some(pb::ChargeCore {
                    decision: pb::ChargeDecision::from_str_name(decision).unwrap() as i32,
                    offence: "stalking".into(),
                    decided_at_ms: t,
                }),
            }),
        ));
    }
    let intervention = |kind: &str, t: i64| {
        E::InterventionCompleted(pb::InterventionCompleted {
            core: Some(pb::InterventionCore {
                intervention_id: uuid::Uuid::new_v4().as_bytes().to_vec(),
                kind: pb::InterventionKind::from_str_name(kind).unwrap() as i32,
                at_ms: t,
                outcome: "completed".into(),
            }),
        })
    };
    if let Some(t) = c.therapeutic {
        out.push(("cwp", t, intervention("INTERVENTION_KIND_THERAPEUTIC", t)));
    }
    for (party, kind, t) in &c.other_interventions {
        out.push((party, *t, intervention(kind, *t)));
    }
    for (n, due, held) in &c.reviews {
        out.push((
            "cwp",
            *held,
            E::ReviewRecorded(pb::ReviewRecorded {
                summary: Some(pb::ReviewSummary {
                    review_number: *n,
                    due_at_ms: *due,
                    held_at_ms: *held,
                    outcome: "engaging".into(),
                }),
                clinical: None,
                figures: None,
            }),
        ));
    }
    if let Some((t, _)) = c.contact {
        out.push((
            "victim-advocacy",
            t,
            E::SafetyPlanUpdated(pb::SafetyPlanUpdated {
                victim: Some(pb::SafetyPlan {
                    plan: "needs assessed".into(),
                    measures: vec!["referral to support".into()],
                    next_contact_due_ms: t + 28 * DAY,
                }),
                identity: None,
                figures: None,
            }),
        ));
    }
    if let Some(t) = c.reoffence {
        out.push((
            "police-hru",
            t,
            E::ReoffenceRecorded(pb::ReoffenceRecorded {
                core: Some(pb::ReoffenceCore {
                    // The node takes the case's subject reference.
                    subject_ref: Vec::new(),
                    offence: "harassment".into(),
                    occurred_at_ms: t,
                }),
            }),
        ));
    }
    if let Some(t) = c.closed {
        out.push((
            "police-hru",
            t,
            E::CaseClosed(pb::CaseClosed {
                core: Some(pb::CaseClosedCore {
                    reason: "risk reduced".into(),
                    closed_at_ms: t,
                }),
            }),
        ));
    }
    // The referral first, then in time order.
    out[1..].sort_by_key(|f| f.1);
    out
}

// ---- The expected figures, from the generator's own facts, under the report's stated rule. ----

fn small(ns: &[usize]) -> bool {
    ns.iter().any(|n| (1..5).contains(n))
}

fn count(n: usize) -> String {
    if small(&[n]) { "<5".into() } else { n.to_string() }
}

/// `n` of a published total: hidden when it or its complement is small.
fn part(n: usize, total: usize) -> String {
    if small(&[n]) {
        "<5".into()
    } else if small(&[total - n]) {
        "[c]".into()
    } else {
        n.to_string()
    }
}

fn hidden(s: &str) -> bool {
    s == "<5" || s == "[c]"
}

/// Parts of a published total: the small ones hidden and, with exactly one hidden, the next
/// smallest non-zero one too.
fn parts(counts: &[usize]) -> Vec<String> {
    let mut hide: Vec<bool> = counts.iter().map(|c| small(&[*c])).collect();
    if hide.iter().filter(|h| **h).count() == 1
        && let Some(i) = (0..counts.len())
            .filter(|i| !hide[*i] && counts[*i] > 0)
            .min_by_key(|i| (counts[*i], *i))
    {
        hide[i] = true;
    }
    counts
        .iter()
        .zip(hide)
        .map(|(c, h)| match (h, small(&[*c])) {
            (true, true) => "<5".to_owned(),
            (true, false) => "[c]".to_owned(),
            _ => c.to_string(),
        })
        .collect()
}

fn pct(n: usize, d: usize) -> String {
    if d == 0 {
        "–".into()
    } else if small(&[n, d, d - n]) {
        "[c]".into()
    } else {
        format!("{:.1}", 100.0 * n as f64 / d as f64)
    }
}

fn wilson(x: usize, n: usize) -> (String, String) {
    if n == 0 {
        return ("–".into(), "–".into());
    }
    if small(&[x, n, n - x]) {
        return ("[c]".into(), "[c]".into());
    }
    let z = 1.959_963_984_540_054_f64;
    let (p, nf) = (x as f64 / n as f64, n as f64);
    let d = 1.0 + z * z / nf;
    let c = (p + z * z / (2.0 * nf)) / d;
    let h = z / d * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt();
    (
        format!("{:.1}", 100.0 * (c - h).max(0.0)),
        format!("{:.1}", 100.0 * (c + h).min(1.0)),
    )
}

fn q(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

fn spread(mut v: Vec<f64>, probs: &[f64]) -> Vec<String> {
    v.sort_by(f64::total_cmp);
    probs
        .iter()
        .map(|p| match v.len() {
            0 => "–".into(),
            1..5 => "[c]".into(),
            _ => format!("{:.1}", q(&v, *p)),
        })
        .collect()
}

#[allow(clippy::too_many_lines)] // one block per table
fn expected(cases: &[Case], acks: &[(&str, i64)]) -> BTreeMap<&'static str, Vec<Vec<String>>> {
    let at = at_ms();
    let n = cases.len();
    let mut t: BTreeMap<&'static str, Vec<Vec<String>>> = BTreeMap::new();
    let mut by_area: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut by_behaviour: BTreeMap<(String, String), usize> = BTreeMap::new();
    for c in cases {
        *by_area
            .entry(month(c.received))
            .or_default()
            .entry(c.area.to_owned())
            .or_default() += 1;
        for b in &c.behaviours {
            *by_behaviour
                .entry((month(c.received), BEHAVIOURS[*b].1.to_owned()))
                .or_default() += 1;
        }
    }
    let mut area_rows = Vec::new();
    for (m, areas) in &by_area {
        let shown = parts(&areas.values().copied().collect::<Vec<_>>());
        for (a, s) in areas.keys().zip(shown) {
            area_rows.push(vec![m.clone(), a.clone(), s]);
        }
    }
    t.insert("referrals_by_month_area", area_rows);
    t.insert(
        "referrals_by_month_behaviour",
        by_behaviour
            .into_iter()
            .map(|((m, b), k)| vec![m, b, count(k)])
            .collect(),
    );
    let ooh = cases.iter().filter(|c| c.out_of_hours).count();
    let screened = cases.iter().filter(|c| c.screening.is_some()).count();
    let primacy = cases.iter().filter(|c| c.screening.is_some_and(|s| s.1)).count();
    t.insert(
        "referrals_summary",
        vec![
            vec!["referrals".into(), count(n), String::new(), String::new()],
            vec!["received out of hours".into(), part(ooh, n), count(n), pct(ooh, n)],
            vec!["screened".into(), part(screened, n), count(n), pct(screened, n)],
            vec![
                "primacy taken (of those screened)".into(),
                part(primacy, screened),
                part(screened, n),
                pct(primacy, screened),
            ],
        ],
    );
    let days_to = |f: &dyn Fn(&Case) -> Option<i64>| -> Vec<f64> {
        cases
            .iter()
            .filter_map(|c| f(c).map(|x| (x - c.received) as f64 / DAY as f64))
            .collect()
    };
    let mut time_rows = Vec::new();
    for (stage, v) in [
        ("screening", days_to(&|c| c.screening.map(|s| s.0))),
        ("charge decision", days_to(&|c| c.charge.map(|s| s.0))),
        ("case closure", days_to(&|c| c.closed)),
    ] {
        let mut row = vec![stage.to_owned(), count(v.len())];
        row.extend(spread(v, &[0.5, 0.25, 0.75]));
        time_rows.push(row);
    }
    t.insert("time_to", time_rows);
    let decided: Vec<&str> = cases.iter().filter_map(|c| c.charge.map(|x| x.1)).collect();
    let mut order = vec![(
        "charged",
        decided.iter().filter(|d| **d == "CHARGE_DECISION_CHARGED").count(),
    )];
    for (name, label) in [
        ("CHARGE_DECISION_NO_FURTHER_ACTION", "no further action"),
        ("CHARGE_DECISION_OUT_OF_COURT", "out of court"),
    ] {
        let k = decided.iter().filter(|d| **d == name).count();
        if k > 0 {
            order.push((label, k));
        }
    }
    let shown = parts(&order.iter().map(|o| o.1).collect::<Vec<_>>());
    let mut charge_rows = Vec::new();
    for (i, ((label, k), s)) in order.iter().zip(shown).enumerate() {
        let (p, lo, hi) = if hidden(&s) {
            ("[c]".to_owned(), "[c]".to_owned(), "[c]".to_owned())
        } else {
            let (lo, hi) = wilson(*k, decided.len());
            (pct(*k, decided.len()), lo, hi)
        };
        let (lo, hi) = if i == 0 {
            (lo, hi)
        } else {
            (String::new(), String::new())
        };
        charge_rows.push(vec![(*label).to_owned(), s, count(decided.len()), p, lo, hi]);
    }
    t.insert("charge_rate", charge_rows);
    let mut reoffending = Vec::new();
    for (group, with) in [
        ("completed a therapeutic intervention", true),
        ("no completed therapeutic intervention", false),
    ] {
        let members: Vec<&Case> = cases.iter().filter(|c| c.therapeutic.is_some() == with).collect();
        let windows: Vec<(&str, usize, usize)> = [("6 months", 6), ("12 months", 12)]
            .into_iter()
            .map(|(window, months)| {
                let (mut yes, mut known) = (0, 0);
                for c in &members {
                    let from = c.therapeutic.unwrap_or(c.received);
                    let end = months_after(from, months);
                    if c.reoffence.is_some_and(|r| r > from && r <= end) {
                        yes += 1;
                        known += 1;
                    } else if at > end {
                        known += 1;
                    }
                }
                (window, yes, known)
            })
            .collect();
        let open_hidden = windows
            .iter()
            .any(|(_, _, known)| small(&[members.len() - known, *known]));
        let hide = |n: usize| if small(&[n]) { "<5".to_owned() } else { "[c]".to_owned() };
        for (window, yes, known) in windows {
            let open = members.len() - known;
            let (lo, hi) = wilson(yes, known);
            let (p, lo, hi) = if open_hidden {
                ("[c]".to_owned(), "[c]".to_owned(), "[c]".to_owned())
            } else {
                (pct(yes, known), lo, hi)
            };
            reoffending.push(vec![
                group.into(),
                window.into(),
                part(yes, known),
                if open_hidden { hide(known) } else { count(known) },
                p,
                lo,
                hi,
                if open_hidden { hide(open) } else { count(open) },
            ]);
        }
    }
    t.insert("reoffending", reoffending);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for c in cases {
        if c.therapeutic.is_some() {
            *kinds.entry("therapeutic").or_default() += 1;
        }
        for (_, k, _) in &c.other_interventions {
            *kinds
                .entry(if *k == "INTERVENTION_KIND_LEGAL" {
                    "legal"
                } else {
                    "advocacy"
                })
                .or_default() += 1;
        }
    }
    t.insert(
        "interventions",
        kinds.into_iter().map(|(k, v)| vec![k.to_owned(), count(v)]).collect(),
    );
    let (mut due, mut held, mut late, mut overdue) = (0, 0, 0, 0);
    for c in cases {
        if let Some(done) = c.therapeutic {
            for n in 1..=4u32 {
                let due_at = months_after(done, 3 * i64::from(n));
                let h = c.reviews.iter().find(|r| r.0 == n);
                if let Some(r) = h {
                    held += 1;
                    if r.2 > due_at {
                        late += 1;
                    }
                }
                if due_at <= at {
                    due += 1;
                    if h.is_none() {
                        overdue += 1;
                    }
                }
            }
        }
    }
    t.insert(
        "reviews",
        vec![
            vec!["fallen due".into(), count(due)],
            vec!["held".into(), count(held)],
            vec!["held after their due date".into(), count(late)],
            vec!["overdue (due, not held)".into(), count(overdue)],
        ],
    );
    let contacts = cases.iter().filter(|c| c.contact.is_some()).count();
    let contacts_late = cases.iter().filter(|c| c.contact.is_some_and(|x| x.1)).count();
    let on_time = contacts - contacts_late;
    t.insert(
        "victims_code",
        vec![
            vec!["contacts made".into(), count(contacts), String::new(), String::new()],
            vec![
                "on time".into(),
                part(on_time, contacts),
                count(contacts),
                pct(on_time, contacts),
            ],
            vec![
                "late".into(),
                part(contacts_late, contacts),
                count(contacts),
                pct(contacts_late, contacts),
            ],
        ],
    );
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (kind, ms) in acks {
        by_kind.entry(kind).or_default().push(*ms as f64 / 1000.0);
    }
    let shown = parts(&by_kind.values().map(Vec::len).collect::<Vec<_>>());
    let mut ack_rows: Vec<Vec<String>> = by_kind
        .iter()
        .zip(shown)
        .map(|((k, v), s)| {
            let times = if hidden(&s) {
                vec!["[c]".to_owned(), "[c]".to_owned()]
            } else {
                spread(v.clone(), &[0.5, 0.9])
            };
            let mut row = vec![(*k).to_owned(), s];
            row.extend(times);
            row
        })
        .collect();
    let all: Vec<f64> = by_kind.values().flatten().copied().collect();
    if !all.is_empty() {
        let mut row = vec!["all".to_owned(), count(all.len())];
        row.extend(spread(all, &[0.5, 0.9]));
        ack_rows.push(row);
    }
    t.insert("breach_acknowledgements", ack_rows);
    t
}

fn read_csv(file: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .skip(1)
        .map(|l| {
            // No generated cell holds a quote; split on commas outside quotes.
            let mut cells = Vec::new();
            let (mut cell, mut quoted) = (String::new(), false);
            for ch in l.chars() {
                match ch {
                    '"' => quoted = !quoted,
                    ',' if !quoted => cells.push(std::mem::take(&mut cell)),
                    _ => cell.push(ch),
                }
            }
            cells.push(cell);
            cells
        })
        .collect()
}

async fn record_case(channels: &BTreeMap<&'static str, tonic::transport::Channel>, c: &Case) {
    let mut version = 0;
    for (party, at, event) in facts(c) {
        let purpose = match party {
            "police-hru" => "risk-management",
            "cwp" => "clinical-care",
            _ => "victim-safety",
        };
        version = hru_tests::record_event(
            &channels[party],
            c.id,
            version,
            Some(at),
            purpose,
            &format!("{party} caseworker"),
            event,
        )
        .await
        .unwrap_or_else(|s| panic!("{party} records on case {}: {}", c.id, s.message()));
    }
}

#[test]
fn the_evaluation_report_from_a_synthetic_two_year_caseload_matches_the_generators_counts() {
    // Version 2 is the agreement in force: hours, figures and the linkage key.
    let world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES)
        .with_agreement("../policies/cheshire-hru-v2.toml");
    let cases = generate();
    let keys = path(world.dir.path(), "keys");
    succeeded(
        &world.keys_linkage("police-hru", &["--reason", "first key"]),
        "grant the linkage key",
    );
    let recorders = ["police-hru", "cwp", "victim-advocacy", "police-control"];
    let nodes: Vec<NodeProcess> = recorders.iter().map(|p| world.start_node(p, "")).collect();
    let rt = hru_tests::runtime();
    let channels: BTreeMap<&'static str, tonic::transport::Channel> = rt.block_on(async {
        let mut m = BTreeMap::new();
        for (p, node) in recorders.iter().zip(&nodes) {
            m.insert(*p, world.channel(node, p).await);
        }
        m
    });
    let started = std::time::Instant::now();
    rt.block_on(async {
        use futures::StreamExt as _;
        futures::stream::iter(cases.iter().map(|c| record_case(&channels, c)))
            .buffer_unordered(6)
            .collect::<Vec<()>>()
            .await;
    });
    let events: usize = cases.iter().map(|c| facts(c).len()).sum();
    eprintln!(
        "{events} facts of {CASES} cases recorded through four nodes in {:?}",
        started.elapsed()
    );

    // Breaches raised by the geofence party on the first cases, acknowledged in the control room.
    let mut acks = Vec::new();
    for (k, c) in cases.iter().take(BREACHES).enumerate() {
        let kind = if k < 6 {
            "BREACH_KIND_EXCLUSION"
        } else {
            "BREACH_KIND_CURFEW"
        };
        let now = jiff::Timestamp::now().as_millisecond();
        let breach = uuid_b64(0xb4ea_c400 + k as u128);
        let json = format!(
            r#"{{"caseId":"{}","tagBreach":{{"core":{{"breachId":"{breach}","tagId":"tag-{k}","kind":"{kind}","state":"BREACH_STATE_OPENED","ruleId":"{}","openedAtMs":"{now}","observedAtMs":"{now}","accuracyM":5}}}}}}"#,
            c.id,
            uuid_b64(0x2010 + k as u128),
        );
        succeeded(
            &world.append("geofence", &world.event(&format!("breach-{k}.json"), &json)),
            "append a breach",
        );
        std::thread::sleep(std::time::Duration::from_millis(100 * (k as u64 % 4)));
        let answer = rt
            .block_on(
                BreachServiceClient::new(channels["police-control"].clone()).acknowledge(request(
                    pb::AcknowledgeRequest {
                        breach_id: uuid::Uuid::from_u128(0xb4ea_c400 + k as u128).as_bytes().to_vec(),
                        operator: "PC 4512".into(),
                        action: "unit sent".into(),
                        purpose: "breach-response".into(),
                    },
                    "PC 4512",
                )),
            )
            .unwrap_or_else(|s| panic!("acknowledge breach {k}: {}", s.message()))
            .into_inner();
        acks.push((if k < 6 { "exclusion" } else { "curfew" }, answer.response_time_ms));
    }

    // The report, as the evaluation party.
    let out = world.dir.path().join("report");
    let made = std::time::Instant::now();
    let report = world.run(&[
        "report",
        "evaluation",
        "--party",
        "evaluation",
        "--keys",
        &keys,
        "--from",
        "2024-12-01",
        "--to",
        "2026-11-30",
        "--at",
        AT,
        "--out",
        &out.display().to_string(),
    ]);
    let printed = succeeded(&report, "hru report evaluation");
    eprintln!(
        "hru report evaluation (fold of the evaluators' view, tables, charts) took {:?}",
        made.elapsed()
    );
    assert!(
        printed.trim().ends_with("index.html"),
        "prints where the report is: {printed}"
    );

    let extract = read_csv(&out.join("restricted/extract.csv"));
    assert_eq!(extract.len(), CASES, "one extract row per case");
    let all = std::fs::read_to_string(out.join("restricted/extract.csv")).unwrap();
    assert!(!all.contains("Subject "), "no identity in the extract");
    let key = world.linkage_key(&world.linkage_grants(), "police-hru").unwrap();
    for c in &cases {
        let row = extract.iter().find(|r| r[0] == c.id.to_string()).unwrap();
        let reference = key.reference(&hru_envelope::subject_identifier(&c.subject).unwrap());
        assert_eq!(
            row[1],
            hex::encode(reference),
            "the node derived the subject reference: {}",
            c.id
        );
        assert_eq!(
            row[5],
            if c.out_of_hours { "yes" } else { "no" },
            "out of hours decided by the node: {}",
            c.id
        );
    }
    let want = expected(&cases, &acks);
    let mut checked = 0;
    for (name, rows) in &want {
        let got = read_csv(&out.join(format!("{name}.csv")));
        assert_eq!(&got, rows, "{name}.csv matches the generator's counts");
        checked += rows.iter().map(Vec::len).sum::<usize>();
    }
    eprintln!("{checked} published figures checked against the generator");

    // The page, in chromium: the charts drawn, the rule stated, nothing fetched.
    let html = out.join("index.html");
    let mut browser = hru_tests::browser::Browser::start(&[]);
    browser.call(
        "open",
        serde_json::json!({"page": "report", "url": format!("file://{}", html.display())}),
    );
    browser.wait_for("report", "figure#reoffending svg", 10_000).unwrap();
    let figures = browser.eval("report", "document.querySelectorAll('figure svg').length");
    assert_eq!(figures, 4, "four charts");
    let text = browser.eval("report", "document.body.innerText");
    assert!(
        text.as_str().unwrap().contains("Counts from 1 to 4 are shown as <5"),
        "the rule is stated"
    );
    let requests = browser.call("requests", serde_json::json!({"page": "report"}));
    let requests = requests.as_array().unwrap();
    assert!(
        requests
            .iter()
            .all(|r| r["url"].as_str().unwrap().starts_with("file://")),
        "the report fetches nothing: {requests:?}"
    );
    let shot = browser.screenshot("report", "evaluation-report");
    eprintln!("screenshot: {}", shot.display());

    // Bad input: exit 2 naming the problem, nothing written.
    let bad = world.dir.path().join("bad");
    for (args, says) in [
        (
            vec!["--party", "evaluation", "--from", "2026-06-01", "--to", "2026-01-01"],
            "--from 2026-06-01 is after --to 2026-01-01",
        ),
        (
            vec!["--party", "nobody", "--from", "2026-01-01"],
            "--party nobody is not a party",
        ),
        (
            vec!["--party", "em-vendor"],
            "--party em-vendor receives nothing for the evaluation purpose",
        ),
        (
            vec!["--party", "evaluation", "--to", "2026-13-01"],
            "--to `2026-13-01` is not a date",
        ),
    ] {
        let mut full = vec!["report", "evaluation", "--keys", &keys];
        full.extend(args.iter().copied());
        let bad_out = bad.display().to_string();
        full.extend(["--out", &bad_out]);
        let refused = world.run(&full);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} says {says:?}: {err}");
        assert!(!bad.exists(), "nothing written for {args:?}");
    }
    let not_empty = world.run(&[
        "report",
        "evaluation",
        "--party",
        "evaluation",
        "--keys",
        &keys,
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(not_empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&not_empty.stderr).contains("exists and is not empty"));
    drop(nodes);
}
