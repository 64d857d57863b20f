//! `hru append`: read one event in the JSON form of `hru.v1.EventDraft`, seal it for the
//! audiences of the agreement in force, and append it (with any key grants it needs).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use hru_domain::{CaseEvent, CaseId, FieldError, PartyId, ProducerId, split_draft};
use hru_log::{Expect, SharedLog as _};
use hru_wire::v1 as pb;

use crate::{keys, policies, producer_state};

/// Parse the JSON form of an EventDraft; errors name the line and column, or the field.
pub(crate) fn parse_draft(text: &str, source: &str) -> anyhow::Result<(CaseId, Option<i64>, pb::event_draft::Event)> {
    let desc = hru_wire::descriptor_pool()
        .get_message_by_name("hru.v1.EventDraft")
        .ok_or_else(|| anyhow!("the wire contract has no EventDraft"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let message = prost_reflect::DynamicMessage::deserialize(desc, &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| anyhow!("{source}:{}:{}: {e}", e.line(), e.column()))?;
    let draft: pb::EventDraft = message.transcode_to().context("transcoding the event")?;
    let pb::EventDraft {
        case_id,
        occurred_at,
        event,
    } = draft;
    let at = |e: FieldError| anyhow!("{source}: {e}");
    let case_id: CaseId = case_id.parse().map_err(at)?;
    let occurred_at_ms = if occurred_at.is_empty() {
        None
    } else {
        let t: jiff::Timestamp = occurred_at
            .parse()
            .map_err(|e| at(FieldError::new("occurredAt", format!("is not an RFC 3339 time ({e})"))))?;
        Some(t.as_millisecond())
    };
    let event = event.ok_or_else(|| {
        at(FieldError::new(
            "event",
            "is missing: give one event, e.g. \"referralReceived\": {...}",
        ))
    })?;
    CaseEvent::try_from(event.clone()).map_err(at)?;
    Ok((case_id, occurred_at_ms, event))
}

pub(crate) async fn run(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    instance: &str,
    event_file: &Path,
    repeat: u32,
) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    nats.check_acting_as(&party)?;
    let producer = ProducerId::try_from(pb::Producer {
        party: party.to_string(),
        instance: instance.to_owned(),
    })
    .context("--instance")?;
    let directory = policies::directory(policies_dir)?;
    let agreements = policies::agreements(policies_dir, &directory)?;
    let agreement = policies::in_force(&agreements, jiff::Timestamp::now().as_millisecond())?;
    let secrets = keys::load(keys_dir, &party)?;
    let listed = directory
        .party(&party)
        .ok_or_else(|| anyhow!("{party} is not in the directory"))?;
    if !listed.signing.iter().any(|k| k.key_id == secrets.signing_key_id()) {
        bail!(
            "the signing key in {} is not listed for {party} in the directory",
            keys_dir.display()
        );
    }
    let text = std::fs::read_to_string(event_file).with_context(|| format!("reading {}", event_file.display()))?;
    let (case_id, occurred_at_ms, event) = parse_draft(&text, &event_file.display().to_string())?;
    let (event_type, sections) = split_draft(event);

    let log = nats.log().await?;
    let mut producer = producer_state::open(keys_dir, producer, secrets.signing.clone(), &log, &directory).await?;
    // Grants go to the period keys each member last published on the log (decision 010).
    let sealing = hru_log::periods::directory_with_periods(log.reader(), &directory).await?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    for _ in 0..repeat {
        let now = jiff::Timestamp::now().as_millisecond();
        let batch = producer.sealer().prepare_event(
            case_id,
            event_type,
            sections.clone(),
            occurred_at_ms.unwrap_or(now),
            now,
            agreement,
            &sealing,
            &mut rng,
        )?;
        let sequences = producer.append(&log, &batch, Expect::Any).await?;
        // Printed only once acknowledged and committed: the caller's acknowledgement.
        for (seq, envelope) in sequences.iter().zip(&batch.envelopes) {
            println!(
                "{seq}\t{}\t{}\t{}",
                envelope.header.event_type, envelope.header.event_id, envelope.subject
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
