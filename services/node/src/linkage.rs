//! Subject references derived by the node (decision 020): under an agreement with `[linkage]`,
//! a referral's subject reference is the keyed HMAC of the subject's normalised identifier under
//! the newest generation of the linkage key this party holds, and a reoffence takes the
//! reference of its case's referral. The caller never supplies one.

use hru_envelope::LinkageKey;
use hru_log::SharedLog as _;
use hru_policy::CompiledIsa;
use hru_wire::v1 as pb;
use pb::event_draft::Event;
use tonic::Status;

use crate::Shared;
use crate::case_service::HistoryEntry;

/// How long a node keeps the newest key it read before looking at the log again (a rotation
/// reaches every holder within this time).
const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

fn supplied(field: &str) -> Status {
    Status::invalid_argument(format!(
        "field `draft.{field}` is derived by the node from the subject's identity under the agreement's linkage key \
         (clause 3.6); leave it empty"
    ))
}

/// Whether the node derives this subject reference: the agreement in force has a linkage key.
/// One the caller filled in is refused, naming `field`.
fn derives(isa: &CompiledIsa, supplied_ref: &[u8], field: &str) -> Result<bool, Status> {
    match (&isa.linkage, supplied_ref.is_empty()) {
        (None, _) => Ok(false),
        (Some(_), true) => Ok(true),
        (Some(_), false) => Err(supplied(field)),
    }
}

impl Shared {
    /// The newest linkage key this party holds under `isa`, read from the log at most every
    /// [`REFRESH`].
    async fn linkage_key(&self, isa: &CompiledIsa) -> Result<LinkageKey, Status> {
        let Some(linkage) = &isa.linkage else {
            return Err(Status::failed_precondition("the agreement in force has no linkage key"));
        };
        if !linkage.holders.contains(&self.party) {
            return Err(Status::permission_denied(format!(
                "{} v{} does not let {} hold the linkage key (clause {}), so it cannot record a subject",
                isa.id, isa.version, self.party, linkage.clause
            )));
        }
        let mut cached = self.linkage.lock().await;
        if let Some((key, at)) = cached.as_ref()
            && at.elapsed() < REFRESH
        {
            return Ok(key.clone());
        }
        let grants = hru_log::linkage::grants(
            self.log.reader(),
            &self.deployment.directory,
            &isa.id,
            &linkage.custodian,
        )
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let key = hru_log::linkage::newest_key(&grants, &isa.id, &linkage.holders, &self.secrets).map_err(|why| {
            Status::failed_precondition(format!(
                "{why} for {}: the custodian runs `hru keys linkage --party {}`",
                self.party, linkage.custodian
            ))
        })?;
        *cached = Some((key.clone(), std::time::Instant::now()));
        Ok(key)
    }

    /// Derive the referral's subject reference from its identity section, where the agreement
    /// in force has a linkage key.
    pub(crate) async fn link_referral(&self, isa: &CompiledIsa, event: &mut Event) -> Result<(), Status> {
        let Event::ReferralReceived(r) = event else {
            return Ok(());
        };
        let Some(core) = r.core.as_mut() else {
            return Ok(());
        };
        if !derives(isa, &core.subject_ref, "ReferralReceived.core.subject_ref")? {
            return Ok(());
        }
        let subject = r.identity.as_ref().and_then(|i| i.subject.as_ref()).ok_or_else(|| {
            Status::invalid_argument(
                "field `draft.ReferralReceived.identity.subject` is missing: the node derives the subject reference \
                     from the PNC number, or the full name and date of birth",
            )
        })?;
        let identifier = hru_envelope::subject_identifier(subject)
            .map_err(|e| Status::invalid_argument(e.within("draft.ReferralReceived.identity.subject").to_string()))?;
        let key = self.linkage_key(isa).await?;
        core.subject_ref = key.reference(&identifier).to_vec();
        Ok(())
    }
}

/// A case's re-keying is derived by the custodian's `hru keys linkage --rekey` from the
/// referral's identity under the newest key; a node's caller never records one.
pub(crate) fn refuse_rekeying(event: &Event) -> Result<(), Status> {
    match event {
        Event::SubjectRekeyed(_) => Err(Status::invalid_argument(
            "field `draft.SubjectRekeyed`: a case's subject reference is derived again under a rotated linkage key \
             by the custodian (`hru keys linkage --rekey`), from the referral's identity; it is not recorded \
             through a node",
        )),
        _ => Ok(()),
    }
}

/// The subject reference a case carries now: its referral's, or that of the newest re-keying
/// that continues it.
pub(crate) fn case_reference(history: &[HistoryEntry]) -> Option<[u8; 32]> {
    history
        .iter()
        .fold(None, |carried, (_, _, e)| hru_domain::carried_reference(carried, e))
        .map(|(r, _)| r)
}

/// A reoffence takes the subject reference its case carries (its referral's, or the newest
/// re-keying's), where the agreement in force has a linkage key.
pub(crate) fn link_reoffence(isa: &CompiledIsa, history: &[HistoryEntry], event: &mut Event) -> Result<(), Status> {
    let Event::ReoffenceRecorded(r) = event else {
        return Ok(());
    };
    let Some(core) = r.core.as_mut() else {
        return Ok(());
    };
    if !derives(isa, &core.subject_ref, "ReoffenceRecorded.core.subject_ref")? {
        return Ok(());
    }
    core.subject_ref = case_reference(history)
        .ok_or_else(|| {
            Status::failed_precondition(
                "the case holds no referral this node can read: a reoffence is recorded on the subject's case, \
                 whose referral gives its subject reference",
            )
        })?
        .to_vec();
    Ok(())
}
