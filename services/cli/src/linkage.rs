//! `hru keys linkage`: grant the agreement's subject-linkage key to its holders, or the next
//! generation to rotate it (decision 020): a signed LinkageKeyGranted event on the log.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use hru_domain::PartyId;

use crate::producer_state::PartyProducer;

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
    let linkage = isa.linkage.clone().ok_or_else(|| {
        anyhow!(
            "{} v{} has no [linkage] table: the agreement in force names no holders of a linkage key",
            isa.id,
            isa.version
        )
    })?;
    if party != linkage.custodian {
        bail!(
            "--party {party} is not the custodian of the linkage key under {} v{}: {} grants and rotates it",
            isa.id,
            isa.version,
            linkage.custodian
        );
    }
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
            "generation {generation} replaces {}: references derived from now on differ from earlier ones; \
             the re-keying is on the log at sequence {seq}",
            generation - 1
        );
    }
    Ok(ExitCode::SUCCESS)
}
