//! From what the read path opened to what the engine is told: case events become zone, rule and
//! tag inputs, position batches become fixes, and each gateway's heartbeat moves event time.
//!
//! Event time (the watermark that drives no-fix and no-communication alerts) is the oldest
//! latest heartbeat among the gateways heard from, each known by its stable identity (the
//! `gateway` a batch names, so a restarted gateway replaces its earlier run rather than holding
//! the clock back as a new one would). A gateway gone for good is retired by a signed
//! `GatewayRetired` of its own party; it no longer holds event time back. The service and any
//! replay of its inputs use this one type, so both reach the same decisions.

use std::collections::BTreeMap;

use hru_domain::zone::Zone;
use hru_domain::{CaseEvent, DeviceId, EventType, PartyId, TagId};
use hru_envelope::{OpenedEvent, VerifiedEnvelope};
use hru_wire::v1 as pb;
use prost::Message as _;

use crate::engine::{Device, Fix, Input, Proximity};

/// Turns opened events into engine inputs, keeping each gateway's latest heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// (gateway's party, gateway identity) → its latest heartbeat, Unix ms.
    heard: BTreeMap<(PartyId, String), i64>,
    /// The partition of the position stream whose tags this engine judges (partition, of how
    /// many); every tag when none.
    owns: Option<(u32, u32)>,
}

impl Inputs {
    /// No gateway heard from yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Judge only the tags of `partition` of `partitions`: another partition's tags, zones,
    /// rules and fixes are not this engine's (a batch routed to the wrong partition decides
    /// nothing here). Victim devices' fixes are every partition's.
    pub fn owning(mut self, partition: u32, partitions: u32) -> Self {
        self.owns = (partitions > 1).then_some((partition, partitions));
        self
    }

    /// Whether this engine judges `tag`.
    pub fn owns(&self, tag: &str) -> bool {
        self.owns
            .is_none_or(|(partition, partitions)| hru_broker::stream::partition_of(tag, partitions) == partition)
    }

    /// The gateways heard from and not retired, with their latest heartbeats.
    pub fn gateways(&self) -> impl Iterator<Item = (&PartyId, &str, i64)> {
        self.heard.iter().map(|((p, g), at)| (p, g.as_str(), *at))
    }

    /// Each gateway heard from and not retired, as a snapshot keeps them.
    pub fn to_snapshot(&self) -> Vec<pb::HeardGateway> {
        self.heard
            .iter()
            .map(|((party, gateway), at)| pb::HeardGateway {
                party: party.to_string(),
                gateway: gateway.clone(),
                heartbeat_at_ms: *at,
            })
            .collect()
    }

    /// The gateways a snapshot kept; an error names the first whose party is not a party id.
    pub fn from_snapshot(heard: &[pb::HeardGateway]) -> Result<Self, hru_domain::FieldError> {
        let heard = heard
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let party = PartyId::parse(&g.party, &format!("gateways[{i}].party"))?;
                Ok(((party, g.gateway.clone()), g.heartbeat_at_ms))
            })
            .collect::<Result<_, hru_domain::FieldError>>()?;
        Ok(Self { heard, owns: None })
    }

    /// Event time: the oldest latest heartbeat among the gateways heard from.
    pub fn event_time(&self) -> Option<i64> {
        self.heard.values().copied().min()
    }

    /// The engine inputs one event carries, as the read path opened it.
    pub fn of(&mut self, v: &OpenedEvent) -> Vec<Input> {
        if v.header.event_type == EventType::PositionBatch {
            return self.batch(v);
        }
        let readable: Vec<(&str, &[u8])> = v
            .sections
            .iter()
            .filter_map(|s| s.plaintext.as_ref().ok().map(|p| (s.name.as_str(), p.as_slice())))
            .collect();
        let Ok(event) = hru_domain::join_sections(v.header.event_type, &readable).and_then(CaseEvent::try_from) else {
            return Vec::new();
        };
        let case = v.header.case_id;
        match event {
            CaseEvent::ZoneDefined { core: Some(z) } if !self.owns(z.tag_id.as_str()) => Vec::new(),
            CaseEvent::ProximityRuleSet { core: Some(r) } if !self.owns(r.tag_id.as_str()) => Vec::new(),
            CaseEvent::TagFitted { core: Some(t) } if !self.owns(t.tag_id.as_str()) => Vec::new(),
            CaseEvent::TagRemoved { core: Some(t) } if !self.owns(t.tag_id.as_str()) => Vec::new(),
            CaseEvent::ZoneDefined { core: Some(z) } => match Zone::parse(&z, case) {
                Ok(zone) => vec![Input::Zone(Box::new(zone))],
                Err(e) => {
                    tracing::warn!(cause = %e, "zone not usable; ignored");
                    Vec::new()
                }
            },
            CaseEvent::ZoneRevoked { core: Some(r) } => vec![Input::ZoneRevoked {
                zone: r.zone_id,
                at_ms: v.header.occurred_at_ms,
            }],
            CaseEvent::ProximityRuleSet { core: Some(rule) } => {
                vec![Input::Proximity(Box::new(Proximity { rule, case, version: 1 }))]
            }
            CaseEvent::TagFitted { core: Some(tag) } => vec![Input::TagFitted { case, tag }],
            CaseEvent::TagRemoved { core: Some(tag) } => vec![Input::TagRemoved { tag: tag.tag_id }],
            _ => Vec::new(),
        }
    }

    /// The engine inputs a verified public event carries: a gateway retired by its own party
    /// stops holding event time back, which may move it on at once.
    pub fn public(&mut self, v: &VerifiedEnvelope) -> Vec<Input> {
        if v.header.event_type != EventType::GatewayRetired {
            return Vec::new();
        }
        let Ok(retired) = pb::GatewayRetired::decode(v.body.as_slice()) else {
            tracing::warn!(event = %v.header.event_id, "GatewayRetired body does not decode; ignored");
            return Vec::new();
        };
        let before = self.event_time();
        if self
            .heard
            .remove(&(v.header.producer.party.clone(), retired.gateway.clone()))
            .is_none()
        {
            return Vec::new();
        }
        tracing::info!(party = %v.header.producer.party, gateway = %retired.gateway, reason = %retired.reason, "gateway retired: event time no longer waits for it");
        match self.event_time() {
            Some(at_ms) if Some(at_ms) > before => vec![Input::Watermark { at_ms }],
            _ => Vec::new(),
        }
    }

    fn batch(&mut self, v: &OpenedEvent) -> Vec<Input> {
        let Some(batch) = v
            .sections
            .iter()
            .find(|s| s.name == "batch")
            .and_then(|s| s.plaintext.as_ref().ok())
            .and_then(|p| pb::PositionBatch::decode(p.as_slice()).ok())
        else {
            return Vec::new();
        };
        if let Some((_, partitions)) = self.owns
            && batch.partitions != partitions
        {
            tracing::warn!(
                batch = %v.header.event_id,
                producer = %v.header.producer,
                divided_into = batch.partitions,
                partitions,
                "a batch divided among another number of partitions: only this partition's tags in it are judged"
            );
        }
        let mut inputs: Vec<Input> = batch
            .devices
            .iter()
            .filter(|d| d.victim_device || self.owns(&d.device_id))
            .filter_map(|d| {
                let device = if d.victim_device {
                    DeviceId::parse(&d.device_id, "device_id").map(Device::Victim)
                } else {
                    TagId::parse(&d.device_id, "device_id").map(Device::Tag)
                };
                match device {
                    Ok(device) => Some(Input::Fixes {
                        device,
                        fixes: d.fixes.iter().map(|f| Fix::from_wire(f, v.header.event_id.0)).collect(),
                    }),
                    Err(e) => {
                        tracing::warn!(
                            device = d.device_id.as_str(),
                            batch = %v.header.event_id,
                            producer = %v.header.producer,
                            cause = %e,
                            "device id not usable; its fixes ignored"
                        );
                        None
                    }
                }
            })
            .collect();
        // A batch naming no gateway (from before gateways were named) is known by its
        // producer instance.
        let gateway = if batch.gateway.is_empty() {
            v.header.producer.instance.clone()
        } else {
            batch.gateway
        };
        let latest = self
            .heard
            .entry((v.header.producer.party.clone(), gateway))
            .or_insert(i64::MIN);
        *latest = (*latest).max(batch.heartbeat_at_ms);
        if let Some(at_ms) = self.event_time() {
            inputs.push(Input::Watermark { at_ms });
        }
        inputs
    }
}
