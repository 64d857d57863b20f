//! The geofence's signed heartbeats (`HRU_HEARTBEATS`, `hru.hb.<party>.<instance>`): signed by
//! the geofence party, believed by a reader only under a key of that party valid when the
//! broker stored them.

use hru_domain::PartyId;
use hru_envelope::{Directory, PartySecrets};
use hru_wire::v1 as pb;
use prost::Message as _;

use crate::LogEntry;

/// Domain separation of a geofence heartbeat's signature.
pub const HEARTBEAT_DOMAIN: &[u8] = b"hru.v1.GeofenceHeartbeat\0";

/// The bytes stored for `heartbeat`, signed as `secrets`' party.
pub fn sign(secrets: &PartySecrets, heartbeat: &pb::GeofenceHeartbeat) -> Vec<u8> {
    let body = heartbeat.encode_to_vec();
    let signed = hru_envelope::sign_detached(secrets, HEARTBEAT_DOMAIN, &body);
    pb::SignedHeartbeat {
        heartbeat: body,
        key_id: signed.key_id,
        signature: signed.signature,
    }
    .encode_to_vec()
}

/// A stored heartbeat, if it is one `directory` believes: signed by the party it names, under
/// a key valid when the broker stored it, on that party's and instance's own subject; else why
/// not.
pub fn verify(entry: &LogEntry, directory: &Directory) -> Result<pb::GeofenceHeartbeat, String> {
    let signed =
        pb::SignedHeartbeat::decode(entry.payload.as_ref()).map_err(|e| format!("not a SignedHeartbeat: {e}"))?;
    let heartbeat = pb::GeofenceHeartbeat::decode(signed.heartbeat.as_slice())
        .map_err(|e| format!("field `heartbeat` is not a GeofenceHeartbeat: {e}"))?;
    let party: PartyId = heartbeat
        .party
        .parse()
        .map_err(|e: hru_domain::FieldError| format!("field `party`: {}", e.problem))?;
    let expected = hru_broker::Subject::heartbeat(&party, &heartbeat.instance);
    if entry.subject != expected {
        return Err(format!(
            "names {party}/{} but is stored under {}",
            heartbeat.instance, entry.subject
        ));
    }
    let at = match entry.stored {
        hru_broker::StoredAt::Exactly(ms) => ms,
        _ => heartbeat.at_ms,
    };
    let detached = hru_envelope::Detached {
        key_id: signed.key_id,
        signature: signed.signature,
    };
    hru_envelope::verify_detached(directory, &party, at, HEARTBEAT_DOMAIN, &signed.heartbeat, &detached)
        .map_err(|e| format!("signature: {e}"))?;
    Ok(heartbeat)
}
