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
/// a key valid when the broker stored it, on that party's and instance's own subject, and
/// stored within `tolerance_ms` of the time it says it beat (an old heartbeat published again,
/// or held back and stored late, says nothing about now); else why not.
pub fn verify(entry: &LogEntry, directory: &Directory, tolerance_ms: i64) -> Result<pb::GeofenceHeartbeat, String> {
    let signed =
        pb::SignedHeartbeat::decode(entry.payload.as_ref()).map_err(|e| format!("not a SignedHeartbeat: {e}"))?;
    let heartbeat = pb::GeofenceHeartbeat::decode(signed.heartbeat.as_slice())
        .map_err(|e| format!("field `heartbeat` is not a GeofenceHeartbeat: {e}"))?;
    let party: PartyId = heartbeat
        .party
        .parse()
        .map_err(|e: hru_domain::FieldError| format!("field `party`: {}", e.problem))?;
    // A heartbeat speaks for a partition of the position stream (whichever instance holds
    // it); one from before partitions, for its instance.
    let (name, named) = if heartbeat.partitions > 0 {
        (
            hru_broker::stream::partition_name(heartbeat.partition),
            format!("partition {} of {}", heartbeat.partition, heartbeat.partitions),
        )
    } else {
        (heartbeat.instance.clone(), heartbeat.instance.clone())
    };
    if heartbeat.partitions > 0 && heartbeat.partition >= heartbeat.partitions {
        return Err(format!("names {named}, which is no partition"));
    }
    let expected = hru_broker::Subject::heartbeat(&party, &name);
    if entry.subject != expected {
        return Err(format!("names {party}/{named} but is stored under {}", entry.subject));
    }
    let hru_broker::StoredAt::Exactly(at) = entry.stored else {
        return Err("its store time is not known".into());
    };
    if (at - heartbeat.at_ms).abs() > tolerance_ms {
        return Err(format!(
            "it says it beat at {} but was stored at {at}: more than {tolerance_ms} ms apart",
            heartbeat.at_ms
        ));
    }
    let detached = hru_envelope::Detached {
        key_id: signed.key_id,
        signature: signed.signature,
    };
    hru_envelope::verify_detached(directory, &party, at, HEARTBEAT_DOMAIN, &signed.heartbeat, &detached)
        .map_err(|e| format!("signature: {e}"))?;
    Ok(heartbeat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hru_envelope::fixture::{directory_of, party_secrets};

    fn stored(party: &str, instance: &str, bytes: Vec<u8>, at_ms: i64) -> LogEntry {
        LogEntry {
            sequence: 1,
            subject: hru_broker::Subject::heartbeat(&party.parse().unwrap_or_else(|_| unreachable!()), instance),
            payload: bytes.into(),
            stored: hru_broker::StoredAt::Exactly(at_ms),
        }
    }

    fn beat(party: &str, at_ms: i64) -> pb::GeofenceHeartbeat {
        pb::GeofenceHeartbeat {
            party: party.into(),
            instance: "geofence-1".into(),
            at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn only_a_fresh_heartbeat_signed_by_its_party_on_its_own_subject_is_believed() {
        let directory = directory_of(["geofence", "police-hru"], 7);
        let geofence = party_secrets("geofence", 7);
        let police = party_secrets("police-hru", 7);
        let t = 1_800_000_000_000;
        let good = sign(&geofence, &beat("geofence", t));
        assert!(
            verify(
                &stored("geofence", "geofence-1", good.clone(), t + 200),
                &directory,
                15_000
            )
            .is_ok()
        );
        // Another party's key, naming the geofence.
        let forged = sign(&police, &beat("geofence", t));
        let e = verify(&stored("geofence", "geofence-1", forged, t), &directory, 15_000).unwrap_err();
        assert!(e.starts_with("signature"), "{e}");
        // Stored under another instance's subject.
        let e = verify(&stored("geofence", "geofence-2", good.clone(), t), &directory, 15_000).unwrap_err();
        assert!(e.contains("stored under"), "{e}");
        // An old heartbeat published again (or stored late): its time is not the store time.
        let e = verify(&stored("geofence", "geofence-1", good, t + 60_000), &directory, 15_000).unwrap_err();
        assert!(e.contains("apart"), "{e}");
    }
}
