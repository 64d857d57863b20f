//! The broker layer of a compiled agreement: the rights table the broker crate derives every
//! view filter and publish permission from, and the broker identities of a directory
//! (docs/decisions/002-agreement-format.md, "Broker model").

use hru_broker::{AUDITOR, Accounts, PROVISIONER, PartyRights, Receipt, Rights};
use hru_domain::PartyId;
use hru_envelope::Directory;

use crate::CompiledIsa;

/// A broker identity the directory gives no NATS nkey.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} has no nats_user in the directory; add the entry `hru keys generate --party {0}` prints")]
pub struct MissingNkey(pub String);

impl CompiledIsa {
    /// What each party may produce and receives, as the broker enforces it.
    pub fn broker_rights(&self) -> Rights {
        let mut parties: std::collections::BTreeMap<PartyId, PartyRights> = self
            .parties
            .iter()
            .map(|(party, info)| {
                let rights = PartyRights {
                    description: format!("{} ({})", info.role.name(), info.controller),
                    produces: self.produces(party).collect(),
                    receives: Default::default(),
                    geofence: info.role == crate::Role::Geofence,
                };
                (party.clone(), rights)
            })
            .collect();
        for (producer, event_type, _, audience) in self.audiences() {
            for member in audience.members() {
                if let Some(rights) = parties.get_mut(member) {
                    rights.receives.insert(Receipt {
                        producer: producer.clone(),
                        event_type,
                        audience: audience.id().clone(),
                    });
                }
            }
        }
        Rights {
            agreement: self.id.clone(),
            version: self.version,
            digest: hex::encode(self.digest),
            parties,
        }
    }

    /// The broker identities to generate a configuration for: every party's nkey from the
    /// directory, the provisioner's and (when listed) the auditor's; names each identity that
    /// has none.
    pub fn broker_accounts(&self, directory: &Directory) -> Result<Accounts, MissingNkey> {
        let nkey = |id: &PartyId| {
            directory
                .party(id)
                .and_then(|e| e.nats_user.clone())
                .ok_or_else(|| MissingNkey(id.to_string()))
        };
        let parties = self
            .parties
            .keys()
            .map(|p| nkey(p).map(|k| (p.clone(), k)))
            .collect::<Result<_, _>>()?;
        let well_known = |name: &str| PartyId::parse(name, "party").map_err(|_| MissingNkey(name.to_owned()));
        let provisioner = nkey(&well_known(PROVISIONER)?)?;
        let auditor = directory.party(&well_known(AUDITOR)?).and_then(|e| e.nats_user.clone());
        Ok(Accounts {
            parties,
            provisioner,
            auditor,
            devices: directory
                .devices()
                .map(|(d, k)| (d.to_string(), k.to_owned()))
                .collect(),
        })
    }

    /// How long a device stream keeps alerts: the agreement's retention of breaches (an alert
    /// is part of its breach decision).
    pub fn alerts_max_age(&self) -> std::time::Duration {
        let days = self.retention_of(hru_domain::EventType::TagBreach).max_days();
        std::time::Duration::from_secs(days * 86_400)
    }

    /// How long the position stream keeps batches: the agreement's retention of them.
    pub fn positions_max_age(&self) -> std::time::Duration {
        let days = self.retention_of(hru_domain::EventType::PositionBatch).max_days();
        std::time::Duration::from_secs(days * 86_400)
    }
}
