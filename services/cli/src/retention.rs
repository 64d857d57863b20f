//! `hru retention status`: every epoch key the log granted, when its retention ends, and who
//! has confirmed destroying their copy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use hru_broker::Filter;
use hru_domain::{EventType, PartyId};
use hru_log::SharedLog as _;
use hru_log::periods::{self, PeriodHolder};
use hru_policy::Retention;
use hru_wire::v1 as pb;
use prost::Message as _;
use serde_json::json;

use crate::{Format, policies};

/// One epoch key as its grant and the destruction confirmations describe it.
struct Epoch {
    producer: PartyId,
    audience: String,
    epoch: u32,
    members: BTreeSet<PartyId>,
    class: String,
    month: String,
    /// When its sections' retention ends (Unix ms); None for a grant that names no class.
    expires_at: Option<i64>,
    /// Holders who signed an `EpochKeyDestroyed` for it.
    destroyed_by: BTreeSet<PartyId>,
    /// Members whose copy was sealed to their long-term key, not a period key: nothing they
    /// destroy erases it while that key exists (decision 010).
    long_term: BTreeSet<PartyId>,
    /// The log sequence of its grant.
    sequence: u64,
}

impl Epoch {
    /// Everyone who held the key: its producer and its members.
    fn holders(&self) -> BTreeSet<PartyId> {
        let mut all = self.members.clone();
        all.insert(self.producer.clone());
        all
    }

    fn state(&self, at_ms: i64) -> &'static str {
        match self.expires_at {
            None => "unclassified",
            Some(t) if at_ms < t => "live",
            Some(_) if self.long_term.is_empty() && self.holders().is_subset(&self.destroyed_by) => "destroyed",
            Some(_) => "due",
        }
    }
}

/// `hru retention destroy`: `party`'s producer `instance` destroys its epoch keys whose
/// retention has ended by `at` (default now).
pub(crate) async fn destroy(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    instance: &str,
    at: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    let at_ms = crate::at_ms(at)?;
    let mut producer =
        crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, instance).await?;
    let destroyed = producer.destroy_expired(at_ms).await?;
    println!(
        "{}: {} epoch keys destroyed, {} kept",
        producer.producer.sealer().producer(),
        destroyed.len(),
        producer.producer.sealer().epochs().len()
    );
    // The party's period chains, where this keys directory holds them.
    let file = hru_runtime::deployment::periods_path(keys_dir, &party);
    if file.exists() {
        let mut holder = PeriodHolder::open(&file, &party)?;
        print_destroyed(&party, &holder.destroy_expired(at_ms)?);
        keep(&mut producer, &mut holder, &party).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A hold as given on the command line.
pub(crate) struct Placement {
    pub(crate) case: String,
    pub(crate) reason: String,
    pub(crate) authority: String,
    pub(crate) review_date: String,
}

/// `hru retention hold`: `party` places a legal hold on `case`, signed, then its producer
/// `instance` keeps the case's section keys of any of its epochs whose retention has ended.
pub(crate) async fn hold(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    instance: &str,
    given: Placement,
) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    let placement = &hru_log::holds::Placement {
        case: given
            .case
            .parse()
            .map_err(|e: hru_domain::FieldError| anyhow::anyhow!("--case: {}", e.problem))?,
        reason: given.reason,
        authority: given.authority,
        review_date: given.review_date,
    };
    let now = jiff::Timestamp::now().as_millisecond();
    if let Err(e) = placement.check(now) {
        let flag = if e.field == "review_date" {
            "review"
        } else {
            e.field.as_str()
        };
        bail!("--{flag}: {}", e.problem);
    }
    let mut producer =
        crate::producer_state::PartyProducer::open_unswept(nats, policies_dir, keys_dir, &party, instance).await?;
    let standing = hru_log::holds::read(producer.log.reader(), &producer.directory).await?;
    if let Some(h) = standing
        .iter()
        .find(|h| h.stands() && h.placed_by == party && h.case == placement.case)
    {
        bail!(
            "--case: {party}'s hold {} already stands on case {} (review {}); release it first to place another",
            h.id,
            h.case,
            h.review_date
        );
    }
    let (id, sequence) =
        hru_log::holds::place(&mut producer.producer, &producer.log, &producer.isa, placement, now).await?;
    println!(
        "hold {id} placed on case {} by {party} at log sequence {sequence}; review by {}",
        placement.case, placement.review_date
    );
    producer.destroy_expired(now).await?;
    Ok(ExitCode::SUCCESS)
}

/// `hru retention release`: `party` releases a hold it placed; its producer `instance` drops
/// the held section keys it kept (the grants already made die with their month).
pub(crate) async fn release(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    instance: &str,
    hold: &str,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    let hold = &uuid::Uuid::parse_str(hold)
        .map_err(|e| {
            anyhow::anyhow!("--hold: {hold:?} is not a hold id (a UUID; `hru retention status` lists them): {e}")
        })?
        .to_string();
    let now = jiff::Timestamp::now().as_millisecond();
    let mut producer =
        crate::producer_state::PartyProducer::open_unswept(nats, policies_dir, keys_dir, &party, instance).await?;
    let sequence = hru_log::holds::release(
        &mut producer.producer,
        &producer.log,
        &producer.isa,
        &producer.directory,
        hold,
        reason,
        now,
    )
    .await?;
    println!("hold {hold} released by {party} at log sequence {sequence}");
    producer.destroy_expired(now).await?;
    Ok(ExitCode::SUCCESS)
}

/// Report each period range a holder destroyed.
fn print_destroyed(party: &PartyId, destroyed: &[hru_envelope::PeriodsDestroyed]) {
    for d in destroyed {
        println!(
            "{party}: period secrets of {} from {} to before {} destroyed",
            d.class, d.from, d.to
        );
    }
}

/// A holder's round now (destroy, confirm, start chains, publish), reported.
async fn keep(
    producer: &mut crate::producer_state::PartyProducer,
    holder: &mut PeriodHolder,
    party: &PartyId,
) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now().as_millisecond();
    let destroyed = periods::keep(
        holder,
        &mut producer.producer,
        &producer.log,
        &producer.isa,
        &producer.directory,
        now,
    )
    .await?;
    print_destroyed(party, &destroyed);
    Ok(())
}

/// `hru keys periods`: hold `party`'s period chains in its keys directory (for a party no node
/// or geofence holds them for): start a chain for each retention class, destroy the months
/// whose retention ended, publish the coming months. Refuses when the log's keys for this
/// month are not this file's (another holder publishes for the party), unless `replace`.
pub(crate) async fn hold_periods(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    replace: bool,
) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    let mut producer =
        crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, "keyholder").await?;
    let file = hru_runtime::deployment::periods_path(keys_dir, &party);
    let mut holder = PeriodHolder::open(&file, &party)?;
    let now = jiff::Timestamp::now().as_millisecond();
    let month = hru_envelope::month_at(now).context("the clock")?;
    let published = periods::directory_with_periods(producer.log.reader(), &producer.directory).await?;
    let theirs: Vec<String> = periods::classes(&producer.isa)
        .into_iter()
        .filter(|class| {
            published
                .period_key(&party, class, &month)
                .is_some_and(|k| holder.keys().public(class, &month).as_ref() != Some(k))
        })
        .collect();
    if !theirs.is_empty() && !replace {
        bail!(
            "the log's {month} period keys of {party} ({}) are not those in {}: another holder (its node or geofence) publishes them; run this where that holder keeps its file, or pass --replace to take over (grants already made to the other holder's keys open only there)",
            theirs.join(", "),
            file.display()
        );
    }
    if replace {
        // Start the chains here, so the round below takes over from the log's keys.
        holder.ensure(periods::classes(&producer.isa), &month)?;
    }
    keep(&mut producer, &mut holder, &party).await?;
    for (class, first) in holder.keys().first_months() {
        println!(
            "{party}: {class} keys held from {first}, published through {}",
            periods::published_through(now)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a hold's grants keep: sections per (producer, audience, epoch), and the last month
/// granted.
type HeldGrants = (BTreeMap<(hru_domain::ProducerId, String, u32), usize>, Option<String>);

/// Each legal hold (those `party` placed, when given): standing or released, whether its
/// review is due, and what its grants keep readable until when.
fn print_holds(
    holds: &[hru_log::holds::Hold],
    held: &BTreeMap<String, HeldGrants>,
    party: Option<&PartyId>,
    at_ms: i64,
    format: Format,
) {
    let today = date(at_ms);
    for h in holds.iter().filter(|h| party.is_none_or(|p| *p == h.placed_by)) {
        let (sections, last) = held
            .get(&h.id)
            .map(|(s, m)| (s.values().sum::<usize>(), m.clone()))
            .unwrap_or_default();
        // Held section keys open through the month after the last one granted.
        let readable_until = last
            .as_deref()
            .and_then(|m| Retention::parse(hru_envelope::HOLD_CLASS).and_then(|r| r.expires(m)))
            .map(date);
        let state = match &h.released {
            Some(_) => "released",
            None if h.review_date <= today => "standing, REVIEW DUE",
            None => "standing",
        };
        match format {
            Format::Json => println!(
                "{}",
                json!({
                    "kind": "hold",
                    "hold": h.id,
                    "case": h.case.to_string(),
                    "placed_by": h.placed_by.as_str(),
                    "reason": h.reason,
                    "authority": h.authority,
                    "review_date": h.review_date,
                    "placed_sequence": h.sequence,
                    "state": state,
                    "released_sequence": h.released.as_ref().map(|r| r.sequence),
                    "held_sections": sections,
                    "last_granted_month": last,
                    "readable_until": readable_until,
                })
            ),
            Format::Human => println!(
                "hold {} on case {} by {} ({}; authority: {}; review {}): {state}; {sections} sections held{}",
                h.id,
                h.case,
                h.placed_by,
                h.reason,
                h.authority,
                h.review_date,
                readable_until.map_or_else(String::new, |d| format!(", readable until {d}")),
            ),
        }
    }
}

fn date(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.strftime("%Y-%m-%d").to_string())
}

fn names(set: &BTreeSet<PartyId>) -> String {
    set.iter().map(PartyId::as_str).collect::<Vec<_>>().join(", ")
}

/// `hru retention status`: the log's grants (the whole log with an operator's key, a party's
/// view with its own), as of `at` (default now), optionally only the epochs `party` holds.
pub(crate) async fn status(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: Option<&str>,
    at: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let party: Option<PartyId> = party.map(str::parse).transpose().context("--party")?;
    let at_ms = crate::at_ms(at)?;
    let directory = policies::directory(policies_dir)?;
    let log = nats.log().await?;
    log.catch_up().await?;
    // Keyed by producer party, instance, audience and epoch: epoch numbers are per instance.
    let mut epochs: BTreeMap<(PartyId, String, String, u32), Epoch> = BTreeMap::new();
    let mut destroyed: Vec<((PartyId, String, String, u32), PartyId)> = Vec::new();
    let mut unverified = 0u64;
    let mut held: BTreeMap<String, HeldGrants> = BTreeMap::new();
    let mut entries = log
        .reader()
        .replay(1, &[Filter::all_key_grants(), Filter::all_control()])
        .await?;
    while let Some(entry) = entries.try_next().await? {
        let Ok(v) = hru_envelope::verify(&entry.payload, &directory) else {
            unverified += 1;
            continue;
        };
        match v.header.event_type {
            EventType::KeyGranted => {
                let Ok(g) = pb::KeyGranted::decode(v.body.as_slice()) else {
                    unverified += 1;
                    continue;
                };
                if let Some(h) = &g.held {
                    // A legal hold's grant: its sections, not a new epoch.
                    let entry = held.entry(h.hold.clone()).or_default();
                    entry.0.insert(
                        (v.header.producer.clone(), g.audience.clone(), g.epoch),
                        h.sections.len(),
                    );
                    entry.1 = entry.1.clone().max(Some(g.month.clone()));
                    continue;
                }
                let members = g.members.iter().filter_map(|m| m.party.parse().ok()).collect();
                // Members whose copy is sealed to the long-term key the directory lists.
                let long_term = g
                    .members
                    .iter()
                    .filter_map(|m| {
                        let p: PartyId = m.party.parse().ok()?;
                        let listed = directory.party(&p)?.encryption.key_id;
                        (listed.0.as_slice() == m.key_id.as_slice()).then_some(p)
                    })
                    .collect();
                let expires_at = Retention::parse(&g.retention).and_then(|r| r.expires(&g.month));
                let producer = v.header.producer.party.clone();
                epochs.insert(
                    (
                        producer.clone(),
                        v.header.producer.instance.clone(),
                        g.audience.clone(),
                        g.epoch,
                    ),
                    Epoch {
                        producer,
                        audience: g.audience,
                        epoch: g.epoch,
                        members,
                        class: g.retention,
                        month: g.month,
                        expires_at,
                        destroyed_by: BTreeSet::new(),
                        long_term,
                        sequence: entry.sequence,
                    },
                );
            }
            EventType::EpochKeyDestroyed => {
                if let Ok(d) = pb::EpochKeyDestroyed::decode(v.body.as_slice())
                    && let Ok(producer) = d.producer.parse::<PartyId>()
                {
                    destroyed.push((
                        (producer, d.instance, d.audience, d.epoch),
                        v.header.producer.party.clone(),
                    ));
                }
            }
            _ => {}
        }
    }
    for ((producer, instance, audience, epoch), by) in destroyed {
        // A confirmation that names no instance (signed before they were named) counts for any.
        for ((p, i, a, n), e) in &mut epochs {
            if *p == producer
                && *a == audience
                && *n == epoch
                && (instance.is_empty() || *i == instance)
                && e.holders().contains(&by)
            {
                e.destroyed_by.insert(by.clone());
            }
        }
    }
    let shown: Vec<&Epoch> = epochs
        .values()
        .filter(|e| party.as_ref().is_none_or(|p| e.holders().contains(p)))
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &shown {
        *counts.entry(e.state(at_ms)).or_default() += 1;
    }
    for e in &shown {
        let state = e.state(at_ms);
        let awaiting: BTreeSet<PartyId> = e.holders().difference(&e.destroyed_by).cloned().collect();
        match format {
            Format::Json => println!(
                "{}",
                json!({
                    "kind": "epoch",
                    "producer": e.producer.as_str(),
                    "audience": e.audience,
                    "epoch": e.epoch,
                    "members": e.members.iter().map(PartyId::as_str).collect::<Vec<_>>(),
                    "retention": e.class,
                    "month": e.month,
                    "expires_at_ms": e.expires_at,
                    "state": state,
                    "destroyed_by": e.destroyed_by.iter().map(PartyId::as_str).collect::<Vec<_>>(),
                    "awaiting": if state == "due" { awaiting.iter().map(PartyId::as_str).collect::<Vec<_>>() } else { Vec::new() },
                    "long_term_keys": e.long_term.iter().map(PartyId::as_str).collect::<Vec<_>>(),
                    "grant_sequence": e.sequence,
                })
            ),
            Format::Human => {
                let when = e
                    .expires_at
                    .map_or_else(|| "no retention class (granted before classes)".to_owned(), date);
                let mut tail = match state {
                    "due" => format!("due: awaiting {}", names(&awaiting)),
                    "destroyed" => "destroyed by every holder".to_owned(),
                    other => other.to_owned(),
                };
                if !e.long_term.is_empty() {
                    tail.push_str(&format!(
                        "; NOT ERASABLE: sealed to the long-term keys of {}",
                        names(&e.long_term)
                    ));
                }
                println!(
                    "{} #{} [{}] {} {}  expires {when}  {tail}",
                    e.producer,
                    e.epoch,
                    names(&e.members),
                    if e.class.is_empty() { "-" } else { &e.class },
                    e.month,
                );
            }
        }
    }
    print_holds(
        &hru_log::holds::read(log.reader(), &directory).await?,
        &held,
        party.as_ref(),
        at_ms,
        format,
    );
    // Each party's period keys as the log last published them: a holder that stops running
    // leaves producers unable to grant to it once its last month is reached.
    let published = periods::directory_with_periods(log.reader(), &directory).await?;
    let at_month = hru_envelope::month_at(at_ms).context("--at")?;
    let soon = (0..2).try_fold(at_month.clone(), |m, _| hru_envelope::next_month(&m));
    for (p, _) in directory.parties() {
        if party.as_ref().is_some_and(|only| only != p) {
            continue;
        }
        let through = published.periods_published_through(p);
        let state = match through {
            None => "none: grants to it are sealed to its long-term key (not erasable)",
            Some(t) if soon.as_deref().is_some_and(|s| t < s) => {
                "RENEW: its key holder (node, geofence or `hru keys periods`) has not published ahead"
            }
            Some(_) => "published",
        };
        match format {
            Format::Json => println!(
                "{}",
                json!({"kind": "holder", "holder": p.as_str(), "period_keys_through": through, "period_keys": state})
            ),
            Format::Human => println!("{p}: period keys through {}: {state}", through.unwrap_or("-")),
        }
    }
    let summary = format!(
        "{} epochs as of {}: {} live, {} due, {} destroyed, {} unclassified{}",
        shown.len(),
        jiff::Timestamp::from_millisecond(at_ms).map_or_else(|_| at_ms.to_string(), |t| t.to_string()),
        counts.get("live").unwrap_or(&0),
        counts.get("due").unwrap_or(&0),
        counts.get("destroyed").unwrap_or(&0),
        counts.get("unclassified").unwrap_or(&0),
        if unverified > 0 {
            format!("; {unverified} key events did not verify (run `hru audit verify`)")
        } else {
            String::new()
        }
    );
    match format {
        Format::Json => eprintln!("{summary}"),
        Format::Human => println!("{summary}"),
    }
    Ok(ExitCode::SUCCESS)
}
