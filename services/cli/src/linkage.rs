//! `hru keys linkage`: grant the agreement's subject-linkage key to its holders, or the next
//! generation to rotate it (decision 020): a signed LinkageKeyGranted event on the log. After a
//! rotation the custodian derives every case's reference again under the new generation from
//! the referral's identity: a `SubjectRekeyed` on each case (`--rekey` does that alone, and
//! may be run again: a case already under the newest generation is left as it is).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use futures::TryStreamExt as _;
use hru_domain::{CaseEvent, CaseId, EventType, PartyId};
use hru_log::SharedLog as _;
use hru_wire::v1 as pb;

use crate::producer_state::PartyProducer;

/// How long a rotation waits before re-keying: every node takes the new generation within its
/// refresh time (5 s), so a referral recorded meanwhile under the old one is re-keyed too.
const NODES_TAKE_IT: std::time::Duration = std::time::Duration::from_secs(6);

/// Grant generation n+1 of the linkage key as the custodian `party`.
pub(crate) async fn grant(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    nats.check_acting_as(&party)?;
    if reason.trim().is_empty() {
        bail!("--reason is empty: say why this key is granted (\"first key\", or what the rotation answers)");
    }
    let mut p = PartyProducer::open(nats, policies_dir, keys_dir, &party, "linkage").await?;
    let isa = p.isa.clone();
    let linkage = custodian(&isa, &party)?;
    let holders = linkage
        .holders
        .iter()
        .map(|h| {
            p.directory
                .party(h)
                .map(|e| (h.clone(), e.encryption.clone()))
                .ok_or_else(|| anyhow!("{h} holds the linkage key but the directory lists no keys for it"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (seq, generation) = hru_log::linkage::grant_next(
        &mut p.producer,
        &p.log,
        &p.directory,
        &isa.id,
        &holders,
        reason.trim(),
        &isa,
    )
    .await?;
    let names: Vec<&str> = holders.iter().map(|(h, _)| h.as_str()).collect();
    println!(
        "{seq}\tLinkageKeyGranted\t{} generation {generation}\tto {}",
        isa.id,
        names.join(", ")
    );
    if generation > 1 {
        eprintln!(
            "generation {generation} replaces {} (log sequence {seq}); waiting {NODES_TAKE_IT:?} for every node to \
             take it, then re-keying every case",
            generation - 1
        );
        tokio::time::sleep(NODES_TAKE_IT).await;
        rekey_as(&mut p, keys_dir, policies_dir, nats).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `hru keys linkage --rekey`: derive every case's subject reference again under the newest
/// generation, as the custodian `party`.
pub(crate) async fn rekey(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    nats.check_acting_as(&party)?;
    let mut p = PartyProducer::open(nats, policies_dir, keys_dir, &party, "linkage").await?;
    custodian(&p.isa, &party)?;
    rekey_as(&mut p, keys_dir, policies_dir, nats).await?;
    Ok(ExitCode::SUCCESS)
}

/// The agreement's linkage table, if `party` is its custodian; an error saying who is, if not.
fn custodian(isa: &hru_policy::CompiledIsa, party: &PartyId) -> anyhow::Result<hru_policy::Linkage> {
    let linkage = isa.linkage.clone().ok_or_else(|| {
        anyhow!(
            "{} v{} has no [linkage] table: the agreement in force names no holders of a linkage key",
            isa.id,
            isa.version
        )
    })?;
    if *party != linkage.custodian {
        bail!(
            "--party {party} is not the custodian of the linkage key under {} v{}: {} grants and rotates it",
            isa.id,
            isa.version,
            linkage.custodian
        );
    }
    Ok(linkage)
}

/// What the custodian knows of one case: the reference it carries now (and its generation),
/// and the referral's subject, where its identity section opens.
#[derive(Default)]
struct Known {
    reference: Option<([u8; 32], u32)>,
    subject: Option<pb::PersonIdentity>,
}

/// Re-key every case the custodian can read to the newest generation; prints what was done.
async fn rekey_as(
    p: &mut PartyProducer,
    keys_dir: &Path,
    policies_dir: &Path,
    nats: &crate::Broker,
) -> anyhow::Result<()> {
    let party = p.producer.sealer().producer().party.clone();
    let linkage = custodian(&p.isa, &party)?;
    let secrets = crate::keys::load(keys_dir, &party)?;
    p.log.catch_up().await?;
    let grants = hru_log::linkage::grants(p.log.reader(), &p.directory, &p.isa.id, &linkage.custodian).await?;
    let key =
        hru_log::linkage::newest_key(&grants, &p.isa.id, &linkage.holders, &secrets).map_err(|why| anyhow!(why))?;
    // The earlier generations this custodian opens: a case's reference is carried over only if
    // its referral's identity gives it under one of them (a reference filed on somebody else's
    // referral, around a node, is not carried over to that person).
    let earlier: Vec<hru_envelope::LinkageKey> = grants
        .iter()
        .filter(|g| g.body.generation < key.generation)
        .filter_map(|g| hru_envelope::LinkageKey::open(&p.isa.id, g.body.generation, &g.body.members, &secrets))
        .collect();
    let now = jiff::Timestamp::now().as_millisecond();
    let crate::replay::Reader { log, mut read, .. } =
        crate::replay::Reader::open(nats, policies_dir, party.as_str(), keys_dir, now).await?;
    let mut cases: BTreeMap<CaseId, Known> = BTreeMap::new();
    let mut entries = log.reader().replay(1, &[]).await?;
    while let Some(entry) = entries.try_next().await? {
        let incoming =
            hru_reader::Incoming::logged(entry.sequence, entry.subject.as_str(), &entry.payload, entry.stored);
        let Ok(hru_reader::Read::Event { opened, .. }) = read.read(&incoming) else {
            continue;
        };
        let (Some(case), EventType::ReferralReceived | EventType::SubjectRekeyed) =
            (opened.header.case_id, opened.header.event_type)
        else {
            continue;
        };
        let readable: Vec<(&str, &[u8])> = opened
            .sections
            .iter()
            .filter_map(|s| s.plaintext.as_ref().ok().map(|b| (s.name.as_str(), b.as_slice())))
            .collect();
        let Ok(event) = hru_domain::join_sections(opened.header.event_type, &readable).and_then(CaseEvent::try_from)
        else {
            continue;
        };
        let known = cases.entry(case).or_default();
        if known.reference.is_none()
            && let CaseEvent::ReferralReceived { identity, .. } = &event
        {
            known.subject = identity.as_ref().map(|i| i.subject.clone());
        }
        known.reference = hru_domain::carried_reference(known.reference, &event);
    }
    let sealing = hru_log::periods::directory_with_periods(p.log.reader(), &p.directory).await?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let (mut rekeyed, mut current, mut unreadable, mut mismatched) = (0usize, 0usize, Vec::new(), Vec::new());
    for (case, known) in &cases {
        let Some((previous, _)) = known.reference else { continue };
        let Some(identifier) = known
            .subject
            .as_ref()
            .and_then(|s| hru_envelope::subject_identifier(s).ok())
        else {
            unreadable.push(*case);
            continue;
        };
        let reference = key.reference(&identifier);
        if reference == previous {
            current += 1;
            continue;
        }
        if !earlier.iter().any(|k| k.reference(&identifier) == previous) {
            mismatched.push(*case);
            continue;
        }
        let (event_type, sections) =
            hru_domain::split_draft(pb::event_draft::Event::SubjectRekeyed(pb::SubjectRekeyed {
                core: Some(pb::SubjectRekeyedCore {
                    previous_ref: previous.to_vec(),
                    subject_ref: reference.to_vec(),
                    generation: key.generation,
                }),
            }));
        let now = jiff::Timestamp::now().as_millisecond();
        let batch = p
            .producer
            .sealer()
            .prepare_event(*case, event_type, sections, now, now, &p.isa, &sealing, &mut rng)?;
        let sequences = p.producer.append(&p.log, &batch, hru_log::Expect::Any).await?;
        println!(
            "{}\tSubjectRekeyed\t{case}\tgeneration {}",
            sequences.last().copied().unwrap_or_default(),
            key.generation
        );
        rekeyed += 1;
    }
    let listed = |cases: &[CaseId]| {
        if cases.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                cases.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )
        }
    };
    eprintln!(
        "re-keyed {rekeyed} case(s) to generation {}; {current} already under it; {} whose reference is not the one \
         their identity gives under an earlier generation, left as they are{}; {} whose referral identity {party} \
         cannot read or use, left under their reference{}",
        key.generation,
        mismatched.len(),
        listed(&mismatched),
        unreadable.len(),
        listed(&unreadable)
    );
    Ok(())
}
