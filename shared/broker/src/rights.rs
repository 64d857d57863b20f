//! The one table every broker permission and view filter derives from: for each party, what
//! it produces and what it receives under the agreement. The agreement compiler fills it; the
//! view a party reads and the subjects it may publish on are both computed here, so they
//! cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};

use hru_domain::{AudienceId, EventType, PartyId};

use crate::subject::Filter;

/// One kind of event a party receives: a producer's events of a type, sealed for an audience
/// the party is in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Receipt {
    /// Who produces it.
    pub producer: PartyId,
    /// Its event type.
    pub event_type: EventType,
    /// The audience its section keys are granted to.
    pub audience: AudienceId,
}

/// What one party may do on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartyRights {
    /// A one-line description for the generated configuration (role and controller).
    pub description: String,
    /// The event types it may produce.
    pub produces: BTreeSet<EventType>,
    /// What it receives from other producers.
    pub receives: BTreeSet<Receipt>,
    /// Whether it is the geofence: it publishes victim alerts and keeps its state snapshots.
    pub geofence: bool,
}

/// Every party's rights under one agreement version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rights {
    /// Agreement id, for the generated configuration's header.
    pub agreement: String,
    /// Agreement version.
    pub version: u32,
    /// Agreement digest (hex), for the generated configuration's header.
    pub digest: String,
    /// The parties.
    pub parties: BTreeMap<PartyId, PartyRights>,
}

impl Rights {
    /// The subjects of the shared log `party` reads in its view: its own envelopes (so a lost
    /// producer store can be recovered), events of (producer, type) pairs with a section
    /// shared with it, key grants of the audiences it is in, and public control events. No
    /// two filters overlap (the server refuses overlapping source filters).
    pub fn view_filters(&self, party: &PartyId) -> Vec<Filter> {
        let mut filters = BTreeSet::from([
            Filter::producer_events(party),
            Filter::producer_key_grants(party),
            Filter::producer_access(party),
            Filter::all_control(),
        ]);
        if let Some(rights) = self.parties.get(party) {
            for r in rights.receives.iter().filter(|r| &r.producer != party) {
                filters.insert(match r.event_type {
                    EventType::AccessLogged => Filter::producer_access(&r.producer),
                    t => Filter::producer_events_of_type(&r.producer, t),
                });
                filters.insert(crate::Subject::key_grant(&r.producer, &r.audience).into());
            }
        }
        filters.into_iter().collect()
    }

    /// The subjects `party` may publish on: only under its own producer token.
    pub fn publish_filters(&self, party: &PartyId) -> Vec<Filter> {
        let Some(rights) = self.parties.get(party) else {
            return Vec::new();
        };
        let mut filters: Vec<Filter> = rights
            .produces
            .iter()
            .filter(|t| t.has_case())
            .map(|&t| match t {
                EventType::AccessLogged => Filter::producer_access(party),
                t => Filter::producer_events_of_type(party, t),
            })
            .collect();
        filters.push(Filter::producer_key_grants(party));
        filters.push(Filter::producer_control(party));
        if rights.produces.contains(&EventType::PositionBatch) {
            // Position batches and their key grants, one subject per gateway instance.
            filters.push(Filter::vendor_positions(party));
        }
        if rights.geofence {
            filters.push(Filter::all_alerts());
        }
        filters
    }

    /// Whether `party` reads the position stream (it receives another party's position batches).
    pub fn reads_positions(&self, party: &PartyId) -> bool {
        self.parties.get(party).is_some_and(|r| {
            r.receives
                .iter()
                .any(|x| x.event_type == EventType::PositionBatch && &x.producer != party)
        })
    }
}
