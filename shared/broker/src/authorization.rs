//! The nats-server `accounts` block generated from the agreement's [`Rights`]: each party
//! publishes only under its own producer token, uses the JetStream API only on its own view
//! stream (and the position stream when it reads positions), and receives only on its own
//! inbox prefix.

use std::fmt::Write as _;

use hru_domain::PartyId;

use crate::rights::Rights;
use crate::stream::{
    EVENTS_STREAM, HEARTBEATS_STREAM, POSITIONS_STREAM, SNAPSHOTS_STREAM, alert_stream, device_identity,
    direct_get_api, last_message_api, message_get_api, view_stream,
};
use crate::subject::Filter;

/// Directory id of the provisioner (creates streams and views; full rights in the account).
pub const PROVISIONER: &str = "provisioner";
/// Directory id of the auditor (reads the whole shared log, publishes nothing).
pub const AUDITOR: &str = "auditor";

/// The broker identities a configuration is generated for: each party's and the operators' nkeys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    /// (party, user nkey) for each agreement party.
    pub parties: Vec<(PartyId, String)>,
    /// The provisioner's user nkey.
    pub provisioner: String,
    /// The auditor's user nkey, if any.
    pub auditor: Option<String>,
    /// (device id, user nkey) for each paired victim device.
    pub devices: Vec<(String, String)>,
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// JetStream API subjects for reading one stream: its info, and its messages by batched direct
/// get (any replica) and by message get (the leader). No consumer API: a right to create a
/// consumer is a right to choose where a push consumer delivers, which the server does not
/// hold to the creator's publish permissions.
pub fn read_api(stream: &str) -> Vec<String> {
    vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{stream}"),
        direct_get_api(stream),
        last_message_api(stream, ">"),
        message_get_api(stream),
    ]
}

/// JetStream API subjects of `party`'s partition consumers on `HRU_POSITIONS` (each named, so
/// no party reaches another's): pull, read a consumer's state, release its pin.
pub fn partition_consumer_api(party: &PartyId) -> Vec<String> {
    (0..crate::stream::MAX_PARTITIONS)
        .flat_map(|p| {
            let consumer = crate::stream::partition_consumer(party, p);
            [
                format!("$JS.API.CONSUMER.MSG.NEXT.{POSITIONS_STREAM}.{consumer}"),
                format!("$JS.API.CONSUMER.INFO.{POSITIONS_STREAM}.{consumer}"),
                format!("$JS.API.CONSUMER.UNPIN.{POSITIONS_STREAM}.{consumer}"),
            ]
        })
        .collect()
}

/// JetStream API subjects that destroy stored messages: deleting or purging any stream or a
/// message of it, and updating `HRU_EVENTS` (a smaller limit makes the server drop messages
/// even from a deny-delete stream). No identity may publish them; the provisioner, which
/// otherwise has the whole account, creates and updates streams and views but destroys none.
pub fn destroying_api() -> Vec<String> {
    vec![
        "$JS.API.STREAM.DELETE.>".to_owned(),
        "$JS.API.STREAM.PURGE.>".to_owned(),
        "$JS.API.STREAM.MSG.DELETE.>".to_owned(),
        format!("$JS.API.STREAM.UPDATE.{EVENTS_STREAM}"),
        "$JS.API.ACCOUNT.PURGE.>".to_owned(),
    ]
}

fn user(out: &mut String, comment: &str, nkey: &str, publish: &[String], subscribe: &[String]) {
    user_denied(out, comment, nkey, publish, &[], subscribe);
}

fn user_denied(out: &mut String, comment: &str, nkey: &str, publish: &[String], deny: &[String], subscribe: &[String]) {
    let _ = writeln!(out, "      # {comment}");
    let _ = writeln!(out, "      {{");
    let _ = writeln!(out, "        nkey: \"{nkey}\"");
    let _ = writeln!(out, "        permissions: {{");
    if deny.is_empty() {
        let _ = writeln!(out, "          publish: {{ allow: {} }}", list(publish));
    } else {
        let _ = writeln!(
            out,
            "          publish: {{ allow: {}, deny: {} }}",
            list(publish),
            list(deny)
        );
    }
    let _ = writeln!(out, "          subscribe: {{ allow: {} }}", list(subscribe));
    let _ = writeln!(out, "        }}");
    let _ = writeln!(out, "      }}");
}

/// The direct gets of the last message on each of `party`'s own subjects in `HRU_EVENTS`: how a
/// producer resolves an ambiguous append against the log itself, and nothing more of it.
pub fn own_last_message_api(rights: &Rights, party: &PartyId) -> Vec<String> {
    rights
        .publish_filters(party)
        .into_iter()
        .map(|f| last_message_api(EVENTS_STREAM, f.as_str()))
        .collect()
}

/// The subjects `party` may publish to (its own producer subjects, the last message on each of
/// them, and the JetStream API of its own view, of the position stream when it reads
/// positions, of the snapshot stream when it is the geofence, and of the heartbeat stream when
/// it receives breaches).
pub fn party_publish(rights: &Rights, party: &PartyId) -> Vec<String> {
    let view = view_stream(party);
    let mut publish: Vec<String> = rights.publish_filters(party).into_iter().map(String::from).collect();
    publish.extend(own_last_message_api(rights, party));
    publish.extend(read_api(&view));
    let geofence = rights.parties.get(party).is_some_and(|r| r.geofence);
    if geofence {
        // Its state snapshots and heartbeats (no direct get of them in HRU_EVENTS: they are
        // not there).
        let at = rights.publish_filters(party).len();
        publish.insert(at, Filter::party_heartbeats(party).into());
        publish.insert(at, Filter::party_snapshots(party).into());
        // Its instances share the position stream's partitions through the consumers the
        // provisioner made: they pull, read a consumer's pin and release it; they create none
        // (see `read_api`).
        publish.extend(partition_consumer_api(party));
        publish.push(Filter::party_position_claims(party).into());
    }
    // A gateway reads how many partitions the position stream has (its info, no messages).
    if rights
        .parties
        .get(party)
        .is_some_and(|r| r.produces.contains(&hru_domain::EventType::PositionBatch))
    {
        let info = format!("$JS.API.STREAM.INFO.{POSITIONS_STREAM}");
        if !publish.contains(&info) {
            publish.push(info);
        }
    }
    // Whoever receives breaches watches the geofence's heartbeats; the geofence writes them.
    let receives_breaches = rights.parties.get(party).is_some_and(|r| {
        r.receives
            .iter()
            .any(|x| x.event_type == hru_domain::EventType::TagBreach)
    });
    let streams = [
        (rights.reads_positions(party), POSITIONS_STREAM),
        (geofence, SNAPSHOTS_STREAM),
        (receives_breaches || geofence, HEARTBEATS_STREAM),
    ];
    for (_, stream) in streams.into_iter().filter(|(reads, _)| *reads) {
        for api in read_api(stream) {
            if !publish.contains(&api) {
                publish.push(api);
            }
        }
    }
    publish
}

/// The nats-server `accounts` block that enforces `rights` at the broker.
pub fn nats_config(rights: &Rights, accounts: &Accounts) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by `hru policy nats-config` from agreement {} v{} (sha256 {}).\n# Do not edit: change the agreement and generate again.",
        rights.agreement, rights.version, rights.digest
    );
    out.push_str("accounts: {\n  HRU: {\n    jetstream: enabled\n    users: [\n");
    for (party, nkey) in &accounts.parties {
        let description = rights.parties.get(party).map_or("", |r| r.description.as_str());
        let comment = format!("{party}: {description}");
        let inbox = Filter::inbox(party.as_str()).into();
        user(&mut out, &comment, nkey, &party_publish(rights, party), &[inbox]);
    }
    for (device, nkey) in &accounts.devices {
        let mut publish = read_api(&alert_stream(device));
        publish.push(crate::Subject::receipt(device).into());
        user(
            &mut out,
            &format!("victim device {device}: reads its own alerts, records its receipts"),
            nkey,
            &publish,
            &[Filter::inbox(&device_identity(device)).into()],
        );
    }
    if let Some(auditor) = &accounts.auditor {
        let mut read = read_api(EVENTS_STREAM);
        for (device, _) in &accounts.devices {
            read.extend(
                read_api(&alert_stream(device))
                    .into_iter()
                    .filter(|a| a != "$JS.API.INFO"),
            );
        }
        user(
            &mut out,
            "auditor: reads the whole shared log and the devices' alerts and receipts, publishes nothing",
            auditor,
            &read,
            &[Filter::inbox(AUDITOR).into()],
        );
    }
    user_denied(
        &mut out,
        "provisioner: creates and updates the streams and views, destroys none",
        &accounts.provisioner,
        &[Filter::everything().into()],
        &destroying_api(),
        &[Filter::everything().into()],
    );
    out.push_str("    ]\n  }\n}\n");
    out
}
