//! The compiled audience agrees with a small reference model on random agreements: a reader is
//! in the audience of (producer, event, section) iff some share rule grants it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hru_domain::{EventType, PartyId};
use hru_envelope::AudiencePolicy as _;
use hru_policy::CompiledIsa;
use proptest::prelude::*;

const PARTIES: [&str; 6] = [
    "police-hru",
    "probation",
    "cwp",
    "mersey-care",
    "em-vendor",
    "evaluation",
];
const EVENTS: [EventType; 5] = [
    EventType::ReferralReceived,
    EventType::RiskAssessed,
    EventType::ReviewRecorded,
    EventType::SafetyPlanUpdated,
    EventType::TagBreach,
];

/// One share rule of the model.
#[derive(Debug, Clone)]
struct Rule {
    events: Vec<EventType>,
    sections: Vec<&'static str>,
    from: Option<Vec<usize>>,
    to: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Model {
    produce: Vec<Vec<EventType>>,
    rules: Vec<Rule>,
}

/// The reference: is `reader` granted `section` of `event` sealed by `producer`?
fn granted(m: &Model, producer: usize, event: EventType, section: &str, reader: usize) -> bool {
    m.produce[producer].contains(&event)
        && m.rules.iter().any(|r| {
            r.events.contains(&event)
                && r.sections.contains(&section)
                && r.from.as_ref().is_none_or(|f| f.contains(&producer))
                && r.to.contains(&reader)
        })
}

fn subset<T: Copy>(items: &[T], mask: u32) -> Vec<T> {
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| *t)
        .collect()
}

fn model() -> impl Strategy<Value = Model> {
    let produce = prop::collection::vec(0u32..32, PARTIES.len());
    let rules = prop::collection::vec((0u32..32, 0u32..8, prop::option::of(1u32..64), 1u32..64), 0..8);
    (produce, rules).prop_map(|(produce, raw_rules)| {
        let produce: Vec<Vec<EventType>> = produce.iter().map(|m| subset(&EVENTS, *m)).collect();
        let mut rules = Vec::new();
        for (ev_mask, sec_mask, from_mask, to_mask) in raw_rules {
            let mut events = subset(&EVENTS, ev_mask);
            if events.is_empty() {
                events.push(EVENTS[(ev_mask as usize) % EVENTS.len()]);
            }
            // Sections every chosen event has; fall back to one event when they share none.
            let mut common: Vec<&'static str> = events[0].sections().to_vec();
            common.retain(|s| events.iter().all(|e| e.sections().contains(s)));
            if common.is_empty() {
                events.truncate(1);
                common = events[0].sections().to_vec();
            }
            let mut sections = subset(&common, sec_mask);
            if sections.is_empty() {
                sections.push(common[0]);
            }
            // `from` may only name parties that produce every event of the rule.
            let from = from_mask.map(|m| {
                (0..PARTIES.len())
                    .filter(|p| m & (1 << p) != 0 && events.iter().all(|e| produce[*p].contains(e)))
                    .collect::<Vec<_>>()
            });
            let from = from.filter(|f| !f.is_empty());
            let to: Vec<usize> = (0..PARTIES.len()).filter(|p| to_mask & (1 << p) != 0).collect();
            rules.push(Rule {
                events,
                sections,
                from,
                to,
            });
        }
        Model { produce, rules }
    })
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    format!(
        "[{}]",
        items
            .into_iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn render(m: &Model) -> String {
    let mut t = String::from(
        "[agreement]\nid = \"random\"\nversion = 1\neffective_from = \"2026-01-01\"\n\n[[legal_basis]]\nid = \"b\"\ntext = \"basis\"\n\n[[clause]]\nid = \"1\"\ntext = \"clause\"\nbases = [\"b\"]\n",
    );
    for p in PARTIES {
        let _ = write!(
            t,
            "\n[[party]]\nid = \"{p}\"\ncontroller = \"{p}\"\nrole = \"police\"\n"
        );
    }
    for (p, events) in m.produce.iter().enumerate() {
        if !events.is_empty() {
            let _ = write!(
                t,
                "\n[[produce]]\nparty = \"{}\"\nevents = {}\n",
                PARTIES[p],
                list(events.iter().map(|e| e.to_string()))
            );
        }
    }
    for r in &m.rules {
        let _ = write!(
            t,
            "\n[[share]]\nevents = {}\nsections = {}\n",
            list(r.events.iter().map(|e| e.to_string())),
            list(r.sections.iter().map(|s| (*s).to_owned()))
        );
        if let Some(from) = &r.from {
            let _ = writeln!(t, "from = {}", list(from.iter().map(|p| PARTIES[*p].to_owned())));
        }
        let _ = write!(
            t,
            "to = {}\npurpose = \"p\"\nclause = \"1\"\n",
            list(r.to.iter().map(|p| PARTIES[*p].to_owned()))
        );
    }
    t
}

/// Check one random agreement against the model; returns the number of cases checked.
fn check(m: &Model) -> Result<u64, TestCaseError> {
    let text = render(m);
    let isa =
        CompiledIsa::compile(&text, "random.toml", None).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    let parties: Vec<PartyId> = PARTIES.iter().map(|p| p.parse().unwrap()).collect();
    let mut checked = 0u64;
    for (pi, producer) in parties.iter().enumerate() {
        for event in EVENTS {
            for section in event.sections() {
                let audience = isa.audience(producer, event, section).ok();
                for (ri, reader) in parties.iter().enumerate() {
                    let compiled = audience.is_some_and(|a| a.contains(reader));
                    prop_assert_eq!(
                        compiled,
                        granted(m, pi, event, section, ri),
                        "producer {} event {} section {} reader {}\n{}",
                        producer,
                        event,
                        section,
                        reader,
                        text
                    );
                    checked += 1;
                }
            }
        }
    }
    // Every audience is exactly the set the model grants.
    for (producer, event, section, audience) in isa.audiences() {
        let pi = PARTIES.iter().position(|p| *p == producer.as_str()).unwrap();
        let want: BTreeSet<&str> = (0..PARTIES.len())
            .filter(|r| granted(m, pi, event, section, *r))
            .map(|r| PARTIES[r])
            .collect();
        let got: BTreeSet<&str> = audience.members().iter().map(PartyId::as_str).collect();
        prop_assert_eq!(got, want);
    }
    Ok(checked)
}

#[test]
fn compiled_audiences_match_the_reference_model() {
    let checked = AtomicU64::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(400));
    runner
        .run(&model(), |m| {
            checked.fetch_add(check(&m)?, Ordering::Relaxed);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("divergence from the reference model: {e}"));
    let n = checked.load(Ordering::Relaxed);
    println!("reference model: {n} (producer, event, section, reader) cases, 0 divergences");
    assert!(n >= 100_000, "only {n} cases");
}
