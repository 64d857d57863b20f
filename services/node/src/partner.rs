//! `PartnerService`: one agency asks another to disclose sections of a case. The disclosing
//! node checks the agreement for every section, logs the disclosure, and signs its answer; a
//! node asked to forward a request to a partner calls the partner with its own certificate,
//! verifies the partner's signature and logs the receipt on its side.

use std::sync::Arc;

use hru_domain::{CaseId, EventType, PartyId};
use hru_envelope::{Directory, PartySecrets};
use hru_wire::v1 as pb;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::access::{Disclosed, PERSON_HEADER, read_sections};
use crate::case_service::case_id;

/// Domain separation of a disclosure signature.
pub const DISCLOSURE_DOMAIN: &[u8] = b"hru.v1.Disclosure\0";

/// Sign an encoded `Disclosure` as `secrets`' party.
pub fn sign_disclosure(secrets: &PartySecrets, disclosure: Vec<u8>) -> pb::RequestDisclosureResponse {
    let signed = hru_envelope::sign_detached(secrets, DISCLOSURE_DOMAIN, &disclosure);
    pb::RequestDisclosureResponse {
        disclosure,
        key_id: signed.key_id,
        signature: signed.signature,
    }
}

/// Check a disclosure's signature (strictly, under a key of the disclosing party valid when it
/// was made) and decode it.
pub fn verify_disclosure(
    answer: &pb::RequestDisclosureResponse,
    directory: &Directory,
) -> Result<pb::Disclosure, String> {
    let disclosure =
        pb::Disclosure::decode(answer.disclosure.as_slice()).map_err(|e| format!("does not decode: {e}"))?;
    let party: PartyId = disclosure
        .disclosed_by
        .parse()
        .map_err(|e| format!("disclosed_by: {e}"))?;
    let signed = hru_envelope::Detached {
        key_id: answer.key_id.clone(),
        signature: answer.signature.clone(),
    };
    hru_envelope::verify_detached(
        directory,
        &party,
        disclosure.disclosed_at_ms,
        DISCLOSURE_DOMAIN,
        &answer.disclosure,
        &signed,
    )
    .map_err(|e| e.to_string())?;
    Ok(disclosure)
}

/// The `PartnerService` implementation.
pub struct PartnerApi {
    shared: Arc<Shared>,
}

impl PartnerApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl pb::partner_service_server::PartnerService for PartnerApi {
    async fn request_disclosure(
        &self,
        request: Request<pb::RequestDisclosureRequest>,
    ) -> Result<Response<pb::RequestDisclosureResponse>, Status> {
        self.shared
            .timed("PartnerService/RequestDisclosure", self.inner(request))
            .await
    }
}

const METHOD: &str = "PartnerService/RequestDisclosure";

impl PartnerApi {
    async fn inner(
        &self,
        request: Request<pb::RequestDisclosureRequest>,
    ) -> Result<Response<pb::RequestDisclosureResponse>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, METHOD, &purpose)?;
        let pb::RequestDisclosureRequest {
            case_id: case_bytes,
            purpose,
            sections,
            partner,
        } = request.into_inner();
        let case = case_id(&case_bytes)?;
        if sections.is_empty() {
            return Err(Status::invalid_argument(
                "field `sections` is empty: name the sections asked for",
            ));
        }
        for (i, s) in sections.iter().enumerate() {
            if !EventType::ALL.iter().any(|t| t.sections().contains(&s.as_str())) {
                return Err(Status::invalid_argument(format!(
                    "field `sections[{i}]`: {s:?} is not a section of any event"
                )));
            }
        }
        let partner = if partner.is_empty() {
            self.shared.party.clone()
        } else {
            partner
                .parse::<PartyId>()
                .map_err(|e| Status::invalid_argument(format!("field `partner`: {}", e.problem)))?
        };
        if partner != self.shared.party {
            self.shared.own_party_only(&caller)?;
            return self
                .forward(&partner, &caller.person, &grant, case, &purpose, sections)
                .await
                .map(Response::new);
        }

        // A section the agreement gives the caller from no producer at all is refused, naming
        // the rule it lacks (the agreement is public to the parties; the case is not).
        let isa = self.shared.agreement()?;
        for s in &sections {
            if !isa.received_by(&caller.party).any(|r| r.section == s.as_str()) {
                return Err(Status::permission_denied(format!(
                    "{} v{} has no [[share]] rule giving {} a `{s}` section of any event",
                    isa.id, isa.version, caller.party
                )));
            }
        }
        // This node discloses what of the asked sections the agreement (the version each event
        // was sealed under) lets the caller receive; nothing else is named or hinted at.
        let (events, _) = self.shared.case_events(case, &caller.party, Some(&sections)).await?;
        if events.is_empty() {
            // The same answer whether the case holds such sections or not.
            return Err(Status::permission_denied(format!(
                "{} v{} gives {} none of the sections asked for ({}) of this case's events",
                isa.id,
                isa.version,
                caller.party,
                sections.join(", ")
            )));
        }
        let disclosed: Vec<String> = {
            let mut names: Vec<String> = read_sections(&events);
            names.sort();
            names.dedup();
            names
        };
        self.shared
            .log_access(
                &grant,
                &caller.person,
                Disclosed {
                    disclosed_to: Some(caller.party.clone()),
                    ..Disclosed::case(case, disclosed)
                },
            )
            .await?;
        let disclosure = pb::Disclosure {
            case_id: case.0.as_bytes().to_vec(),
            disclosed_by: self.shared.party.to_string(),
            disclosed_to: caller.party.to_string(),
            purpose,
            clause: grant.clause.clone(),
            sections,
            events,
            disclosed_at_ms: jiff::Timestamp::now().as_millisecond(),
        };
        Ok(Response::new(sign_disclosure(
            &self.shared.secrets,
            disclosure.encode_to_vec(),
        )))
    }

    /// Ask `partner` with this node's certificate, check its signature, log the receipt.
    async fn forward(
        &self,
        partner: &PartyId,
        person: &str,
        grant: &hru_policy::CallGrant,
        case: CaseId,
        purpose: &str,
        sections: Vec<String>,
    ) -> Result<pb::RequestDisclosureResponse, Status> {
        let url = self.shared.partners.get(partner).ok_or_else(|| {
            Status::failed_precondition(format!(
                "no partner node is configured for {partner} (key `partners.{partner}`)"
            ))
        })?;
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .map_err(|e| Status::failed_precondition(format!("partners.{partner}: {e}")))?
            .tls_config(self.shared.client_tls.clone())
            .map_err(|e| Status::failed_precondition(format!("partners.{partner}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("partner {partner} at {url}: {e}")))?;
        let mut client = pb::partner_service_client::PartnerServiceClient::new(channel);
        let mut request = Request::new(pb::RequestDisclosureRequest {
            case_id: case.0.as_bytes().to_vec(),
            purpose: purpose.to_owned(),
            sections,
            partner: partner.to_string(),
        });
        let value = person
            .parse()
            .map_err(|_| Status::invalid_argument(format!("metadata `{PERSON_HEADER}` is not ASCII")))?;
        request.metadata_mut().insert(PERSON_HEADER, value);
        let answer = client.request_disclosure(request).await?.into_inner();
        let disclosure = verify_disclosure(&answer, &self.shared.deployment.directory)
            .map_err(|e| Status::data_loss(format!("{partner}'s answer is refused: {e}")))?;
        if disclosure.disclosed_by != partner.as_str() || disclosure.disclosed_to != self.shared.party.as_str() {
            return Err(Status::data_loss(format!(
                "{partner}'s answer is refused: it is a disclosure by {} to {}",
                disclosure.disclosed_by, disclosure.disclosed_to
            )));
        }
        let received: Vec<String> = read_sections(&disclosure.events);
        self.shared
            .log_access(
                grant,
                person,
                Disclosed {
                    disclosed_to: Some(self.shared.party.clone()),
                    ..Disclosed::case(case, received)
                },
            )
            .await?;
        Ok(answer)
    }
}
