//! `hru project` and `hru rebuild`: fold the log into a party's projections (catching up from
//! their checkpoints, or wiping and replaying from sequence 1), with progress and digests.

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use hru_domain::PartyId;
use hru_node::View;
use hru_projection::{Projection, Projector, Store};

use crate::{keys, policies};

/// Entries folded per committed batch.
const BATCH: usize = 256;

/// The projections a party's node keeps: those behind the views of its role.
fn role_projections(
    policies_dir: &Path,
    directory: &hru_envelope::Directory,
    party: &PartyId,
) -> anyhow::Result<Vec<Box<dyn Projection>>> {
    let set = policies::agreements(policies_dir, directory)?;
    let role = set
        .iter()
        .find_map(|isa| isa.parties.get(party).map(|p| p.role))
        .with_context(|| format!("--party: {party} is not a party of any agreement"))?;
    let calendar = policies::in_force(&set, jiff::Timestamp::now().as_millisecond())
        .ok()
        .and_then(|isa| isa.hours.as_ref());
    Ok(View::projections(&View::for_role(role), calendar))
}

/// Fold the log into the store at `store_dir` as `party`; `wipe` rebuilds from sequence 1;
/// retention is judged as of `at` (default now).
#[allow(clippy::too_many_arguments)] // one per command-line option
pub(crate) async fn run(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    store_dir: &Path,
    only: Option<&str>,
    wipe: bool,
    at: Option<&str>,
) -> anyhow::Result<ExitCode> {
    // Retention is judged as of `at` (default now): what expired by then is not folded.
    let at_ms = crate::at_ms(at)?;
    let party: PartyId = party.parse().context("--party")?;
    let directory = policies::directory(policies_dir)?;
    keys::load(keys_dir, &party)?; // its own error names the file and how to make it
    let projections: Vec<Box<dyn Projection>> = role_projections(policies_dir, &directory, &party)?
        .into_iter()
        .filter(|p| only.is_none_or(|n| n == p.name()))
        .collect();
    if projections.is_empty() {
        let all = role_projections(policies_dir, &directory, &party)?;
        let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
        bail!(
            "no projection named {:?}; known: {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    let Folded {
        projector,
        last,
        read,
        refused,
        resume,
    } = fold(nats, policies_dir, &party, keys_dir, store_dir, only, wipe, at_ms).await?;
    for p in projector.projections() {
        println!(
            "{}\tv{}\tthrough {last}\tdigest {}",
            p.name(),
            p.version(),
            hex::encode(projector.store.digest(p)?)
        );
    }
    eprintln!(
        "{} events read ({refused} refused by the read path), folding resumed after sequence {}",
        read,
        resume.saturating_sub(1)
    );
    Ok(ExitCode::SUCCESS)
}

/// What a fold did.
pub(crate) struct Folded {
    /// The projector, its store flushed.
    pub projector: Projector,
    /// The last sequence read.
    pub last: u64,
    /// Entries read.
    pub read: usize,
    /// Entries the read path refused.
    pub refused: usize,
    /// Where folding resumed.
    pub resume: u64,
}

/// Fold the log into `party`'s projections (only `only`, if given) in the store at
/// `store_dir`, as of `at_ms`; `wipe` folds from sequence 1.
#[allow(clippy::too_many_arguments)] // one per command-line option
pub(crate) async fn fold(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &PartyId,
    keys_dir: &Path,
    store_dir: &Path,
    only: Option<&str>,
    wipe: bool,
    at_ms: i64,
) -> anyhow::Result<Folded> {
    let party = party.clone();
    let directory = policies::directory(policies_dir)?;
    let projections: Vec<Box<dyn Projection>> = role_projections(policies_dir, &directory, &party)?
        .into_iter()
        .filter(|p| only.is_none_or(|n| n == p.name()))
        .collect();
    let deployment = hru_runtime::Deployment::load(policies_dir)?;
    let log = nats.log().await?;
    // The read path, with the log's key events and legal holds' grants read ahead (those
    // grants are returned too: they follow the events they open).
    let read_path = async || -> anyhow::Result<(hru_reader::ReadPath, Vec<hru_log::LogEntry>)> {
        let mut read = hru_reader::ReadPath::new(
            directory.clone(),
            std::sync::Arc::new(deployment.policies.clone()),
            hru_runtime::deployment::key_ring(keys_dir, &party)?,
        );
        let held = log.foresee_keys(&mut read).await?;
        Ok((read, held))
    };
    let store = Store::open(store_dir)?;
    if wipe {
        for p in &projections {
            store.wipe(p.as_ref())?;
        }
    }
    let (read, held) = read_path().await?;
    let mut projector = Projector::new(store, projections, read)?;
    projector.read_path_mut().ring_mut().destroy_expired(at_ms);
    // A store folded before a legal hold's grant is folded again with it.
    let held_items: Vec<hru_projection::LogItem<'_>> = held
        .iter()
        .map(|e| (e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored))
        .collect();
    if projector.forgetting_due(at_ms)? || projector.holds_due(held.last().map(|e| e.sequence))? {
        // What the store folded from sections now past their retention: its files are removed
        // (sled keeps old values in them) and the projections folded again from the log.
        eprintln!("projections folded again to forget sections erased under retention");
        drop(projector);
        std::fs::remove_dir_all(store_dir).with_context(|| format!("removing {}", store_dir.display()))?;
        let projections = role_projections(policies_dir, &directory, &party)?
            .into_iter()
            .filter(|p| only.is_none_or(|n| n == p.name()))
            .collect();
        projector = Projector::new(Store::open(store_dir)?, projections, read_path().await?.0)?;
    }
    projector.take_holds_ahead(&held_items)?;
    projector.forget_expired(at_ms)?;
    // Grants are read from the start so the key ring is complete; folded events are skipped.
    let (_, last) = log.reader().bounds().await?;
    let mut entries = log.reader().replay(1, &[]).await?;
    let resume = projector.resume_from();
    let bar = indicatif::ProgressBar::new(last);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} events {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut read, mut last, mut refused) = (0usize, 0u64, 0usize);
    let mut chunk = Vec::with_capacity(BATCH);
    loop {
        let next = entries.try_next().await?;
        let done = next.is_none();
        chunk.extend(next);
        if chunk.len() == BATCH || (done && !chunk.is_empty()) {
            let batch: Vec<hru_projection::LogItem<'_>> = chunk
                .iter()
                .map(|e| (e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored))
                .collect();
            for refusal in projector.feed(&batch)? {
                refused += 1;
                eprintln!("refused, not folded: {refusal}");
            }
            bar.inc(chunk.len() as u64);
            read += chunk.len();
            last = chunk.last().map_or(last, |e| e.sequence);
            chunk.clear();
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    projector.store.flush()?;
    Ok(Folded {
        projector,
        last,
        read,
        refused,
        resume,
    })
}
