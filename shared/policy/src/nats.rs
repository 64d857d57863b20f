//! The broker layer of a compiled agreement: per-party view subjects and the nats-server
//! authorization config (docs/decisions/002-agreement-format.md, "Broker model").

use std::collections::BTreeSet;
use std::fmt::Write as _;

use hru_domain::PartyId;
use hru_envelope::Directory;

use crate::CompiledIsa;

/// Prefix of each party's view stream.
pub const VIEW_STREAM_PREFIX: &str = "HRU_VIEW_";
/// Directory id of the provisioner (creates streams and views; full rights in the account).
pub const PROVISIONER: &str = "provisioner";
/// Directory id of the auditor (reads the whole shared log, publishes nothing).
pub const AUDITOR: &str = "auditor";
/// Name of the shared event stream.
const EVENTS_STREAM: &str = "HRU_EVENTS";
const POSITIONS_STREAM: &str = "HRU_POSITIONS";

/// The view stream of a party.
pub fn view_stream(party: &PartyId) -> String {
    format!("{VIEW_STREAM_PREFIX}{party}")
}

/// The broker identities a config is generated for: each party's and the operators' nkeys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsAccounts {
    /// (party, user nkey) for each agreement party.
    pub parties: Vec<(PartyId, String)>,
    /// The provisioner's user nkey.
    pub provisioner: String,
    /// The auditor's user nkey, if any.
    pub auditor: Option<String>,
}

impl NatsAccounts {
    /// Collect the nkeys from the directory; names each identity that has none.
    pub fn from_directory(isa: &CompiledIsa, directory: &Directory) -> Result<Self, String> {
        let nkey = |id: &PartyId| {
            directory.party(id).and_then(|e| e.nats_user.clone()).ok_or_else(|| {
                format!("{id} has no nats_user in the directory; add the entry `hru keys generate --party {id}` prints")
            })
        };
        let parties = isa
            .parties
            .keys()
            .map(|p| nkey(p).map(|k| (p.clone(), k)))
            .collect::<Result<_, _>>()?;
        let provisioner = nkey(&PartyId::parse(PROVISIONER, "provisioner").map_err(|e| e.to_string())?)?;
        let auditor_id = PartyId::parse(AUDITOR, "auditor").map_err(|e| e.to_string())?;
        let auditor = directory.party(&auditor_id).and_then(|e| e.nats_user.clone());
        Ok(Self {
            parties,
            provisioner,
            auditor,
        })
    }
}

impl CompiledIsa {
    /// The subjects of the shared log `party` is entitled to read: its own envelopes (what it
    /// sealed, so a lost producer store can be recovered), events of (producer, type) pairs with
    /// a section shared with it, key grants of the audiences it is in, and public control
    /// events. No two subjects overlap (the server refuses overlapping source filters).
    pub fn view_subjects(&self, party: &PartyId) -> Vec<String> {
        let mut subjects = BTreeSet::from([
            format!("hru.evt.*.{party}.*"),
            format!("hru.key.{party}.*"),
            format!("hru.acc.*.{party}"),
        ]);
        for (producer, event_type, _, audience) in self.audiences() {
            if audience.contains(party) && producer != party {
                subjects.insert(if event_type == hru_domain::EventType::AccessLogged {
                    format!("hru.acc.*.{producer}")
                } else {
                    format!("hru.evt.*.{producer}.{event_type}")
                });
                subjects.insert(format!("hru.key.{producer}.{}", audience.id()));
            }
        }
        subjects.insert("hru.ctl.>".to_owned());
        subjects.into_iter().collect()
    }

    /// The subjects `party` may publish on the shared log: only under its own producer token.
    pub fn publish_subjects(&self, party: &PartyId) -> Vec<String> {
        let mut subjects: Vec<String> = self
            .produces(party)
            .filter(|t| t.has_case())
            .map(|t| {
                if t == hru_domain::EventType::AccessLogged {
                    format!("hru.acc.*.{party}")
                } else {
                    format!("hru.evt.*.{party}.{t}")
                }
            })
            .collect();
        subjects.push(format!("hru.key.{party}.*"));
        subjects.push(format!("hru.ctl.{party}.*"));
        if self.may_produce(party, hru_domain::EventType::PositionBatch) {
            // Position batches and their key grants, one subject per gateway instance.
            subjects.push(format!("hru.pos.{party}.*"));
        }
        if self.parties.get(party).is_some_and(|p| p.role == crate::Role::Geofence) {
            // Signed victim alerts, published beside each proximity or exclusion breach.
            subjects.push("hru.alert.*".to_owned());
        }
        subjects
    }

    /// Whether `party` reads the position stream (it receives position batches).
    pub fn reads_positions(&self, party: &PartyId) -> bool {
        self.audiences()
            .any(|(p, t, _, a)| t == hru_domain::EventType::PositionBatch && p != party && a.contains(party))
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// JetStream API subjects for reading one stream through consumers (nothing that alters it).
fn read_api(stream: &str) -> Vec<String> {
    vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*"),
        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("$JS.API.CONSUMER.NAMES.{stream}"),
        format!("$JS.API.CONSUMER.LIST.{stream}"),
        format!("$JS.ACK.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

fn user(out: &mut String, comment: &str, nkey: &str, publish: &[String], subscribe: &[String]) {
    let _ = writeln!(out, "      # {comment}");
    let _ = writeln!(out, "      {{");
    let _ = writeln!(out, "        nkey: \"{nkey}\"");
    let _ = writeln!(out, "        permissions: {{");
    let _ = writeln!(out, "          publish: {{ allow: {} }}", list(publish));
    let _ = writeln!(out, "          subscribe: {{ allow: {} }}", list(subscribe));
    let _ = writeln!(out, "        }}");
    let _ = writeln!(out, "      }}");
}

/// The nats-server `accounts` block that enforces the agreement at the broker: each party
/// publishes only under its own producer token, uses the JetStream API only on its own view
/// stream, and receives only on its own inbox prefix (`_INBOX_<party>.`).
pub fn nats_config(isa: &CompiledIsa, accounts: &NatsAccounts) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by `hru policy nats-config` from agreement {} v{} (sha256 {}).\n# Do not edit: change the agreement and generate again.",
        isa.id,
        isa.version,
        hex::encode(isa.digest)
    );
    out.push_str("accounts: {\n  HRU: {\n    jetstream: enabled\n    users: [\n");
    for (party, nkey) in &accounts.parties {
        let info = &isa.parties[party];
        let mut publish = isa.publish_subjects(party);
        publish.extend(read_api(&view_stream(party)));
        publish.push(format!("$JS.API.DIRECT.GET.{}", view_stream(party)));
        publish.push(format!("$JS.API.DIRECT.GET.{}.>", view_stream(party)));
        publish.push(format!("$JS.API.STREAM.MSG.GET.{}", view_stream(party)));
        if isa.reads_positions(party) {
            for api in read_api(POSITIONS_STREAM) {
                if !publish.contains(&api) {
                    publish.push(api);
                }
            }
        }
        let comment = format!("{party}: {} ({})", info.role.name(), info.controller);
        user(&mut out, &comment, nkey, &publish, &[format!("_INBOX_{party}.>")]);
    }
    if let Some(auditor) = &accounts.auditor {
        user(
            &mut out,
            "auditor: reads the whole shared log, publishes nothing",
            auditor,
            &read_api(EVENTS_STREAM),
            &[format!("_INBOX_{AUDITOR}.>")],
        );
    }
    user(
        &mut out,
        "provisioner: creates the streams and views",
        &accounts.provisioner,
        &[">".to_owned()],
        &[">".to_owned()],
    );
    out.push_str("    ]\n  }\n}\n");
    out
}
