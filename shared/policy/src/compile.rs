//! Validate an agreement and compile it into the tables every layer reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hru_domain::{EventType, PartyId, Retention};
use hru_envelope::{Audience, AudiencePolicy, Directory, Refusal};
use sha2::{Digest as _, Sha256};
use toml::Spanned;

use crate::error::{ErrorKind, Locator, PolicyError, PolicyErrors};
use crate::model::{RawIsa, Role};
use crate::names::hint;

/// One grant of the agreement: a recipient of a producer's section, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Receipt {
    /// Who seals it.
    pub producer: PartyId,
    /// Event type.
    pub event_type: EventType,
    /// Section.
    pub section: &'static str,
    /// Who receives it.
    pub recipient: PartyId,
    /// Purpose.
    pub purpose: String,
    /// Clause relied on.
    pub clause: String,
}

/// Whose node a call may go to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Callee {
    /// The caller's own party's node (`on = ["own"]`).
    Own,
    /// This party's node.
    Party(PartyId),
}

impl Callee {
    /// Whether a call by `caller` to the node of `node` is to this callee.
    pub fn admits(&self, caller: &PartyId, node: &PartyId) -> bool {
        match self {
            Callee::Own => caller == node,
            Callee::Party(p) => p == node,
        }
    }
}

/// Why a call is refused: the rule the caller lacks, never anything about data it was not shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallRefused {
    /// No rule lets the caller call the method on this node at all.
    #[error("{agreement} v{version} has no [[call]] rule letting {caller} call {method} on {node}'s node")]
    NoRule {
        /// Agreement id.
        agreement: String,
        /// Its version.
        version: u32,
        /// The calling party.
        caller: PartyId,
        /// `Service/Method`.
        method: String,
        /// Whose node was called.
        node: PartyId,
    },
    /// Rules exist, for other purposes.
    #[error("{agreement} v{version} lets {caller} call {method} on {node}'s node only for purpose {}, not {asked:?}", .allowed.join(" or "))]
    Purpose {
        /// Agreement id.
        agreement: String,
        /// Its version.
        version: u32,
        /// The calling party.
        caller: PartyId,
        /// `Service/Method`.
        method: String,
        /// Whose node was called.
        node: PartyId,
        /// The purposes the rules give.
        allowed: Vec<String>,
        /// The purpose asked for.
        asked: String,
    },
}

/// A gRPC method a party may call on a node, for a purpose, under a clause.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CallGrant {
    /// The caller.
    pub party: PartyId,
    /// `Service/Method`.
    pub method: String,
    /// Whose node.
    pub on: Callee,
    /// Purpose.
    pub purpose: String,
    /// Clause.
    pub clause: String,
}

/// A party as the agreement lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyInfo {
    /// Data controller.
    pub controller: String,
    /// Role.
    pub role: Role,
}

/// A validated, compiled agreement version.
#[derive(Debug, Clone)]
pub struct CompiledIsa {
    /// Agreement id.
    pub id: String,
    /// Version.
    pub version: u32,
    /// Title.
    pub title: String,
    /// SHA-256 of the agreement file.
    pub digest: [u8; 32],
    /// In force from (Unix ms).
    pub effective_from_ms: i64,
    /// In force until (Unix ms, exclusive), if bounded.
    pub effective_until_ms: Option<i64>,
    /// Parties.
    pub parties: BTreeMap<PartyId, PartyInfo>,
    /// Clauses: id → (text, legal basis ids).
    pub clauses: BTreeMap<String, (String, Vec<String>)>,
    /// Legal bases: id → text.
    pub bases: BTreeMap<String, String>,
    producers: BTreeMap<PartyId, BTreeSet<EventType>>,
    audiences: HashMap<(PartyId, EventType, &'static str), Audience>,
    /// Every grant, sorted.
    pub receipts: Vec<Receipt>,
    /// Every gRPC permission, sorted.
    pub calls: Vec<CallGrant>,
    /// Retention per event type.
    pub retention: BTreeMap<EventType, Retention>,
    /// Retention of types not listed.
    pub default_retention: Retention,
    /// Sections some producer may seal that no rule shares (they can never be sealed).
    pub warnings: Vec<PolicyError>,
    /// The unit's working hours, when the agreement states them.
    pub hours: Option<crate::Hours>,
    /// Who holds the subject-linkage key, when the agreement has one (decision 020).
    pub linkage: Option<Linkage>,
}

/// The agreement's subject-linkage key: who grants and rotates it, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linkage {
    /// The party that grants and rotates the key.
    pub custodian: PartyId,
    /// The parties the key is sealed to (the custodian among them).
    pub holders: BTreeSet<PartyId>,
    /// The clause relied on.
    pub clause: String,
}

/// Every gRPC method of the wire contract, as `Service/Method`.
pub(crate) fn grpc_methods() -> Vec<String> {
    hru_wire::descriptor_pool()
        .services()
        .flat_map(|s| {
            let service = s.name().to_owned();
            s.methods()
                .map(move |m| format!("{service}/{}", m.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}

struct Checker<'a> {
    at: Locator<'a>,
    errors: Vec<PolicyError>,
}

impl Checker<'_> {
    fn push(&mut self, span: std::ops::Range<usize>, kind: ErrorKind, message: String, hint: impl Into<String>) {
        self.errors.push(self.at.error(span.start, kind, message, hint));
    }

    fn party(&mut self, name: &Spanned<String>, parties: &BTreeMap<PartyId, PartyInfo>) -> Option<PartyId> {
        let found = PartyId::parse(name.get_ref(), "party")
            .ok()
            .filter(|p| parties.contains_key(p));
        if found.is_none() {
            let known = parties.keys().map(PartyId::as_str);
            self.push(
                name.span(),
                ErrorKind::UnknownParty,
                format!("unknown party `{}`", name.get_ref()),
                format!("{} (every party needs a [[party]] table)", hint(name.get_ref(), known)),
            );
        }
        found
    }

    fn event(&mut self, name: &Spanned<String>) -> Option<EventType> {
        let found = name.get_ref().parse::<EventType>().ok();
        if found.is_none() {
            let known = EventType::ALL.iter().map(|t| t.name());
            self.push(
                name.span(),
                ErrorKind::UnknownEvent,
                format!("unknown event type `{}`", name.get_ref()),
                hint(name.get_ref(), known),
            );
        }
        found
    }

    fn clause(&mut self, name: &Spanned<String>, clauses: &BTreeMap<String, (String, Vec<String>)>) -> bool {
        let ok = clauses.contains_key(name.get_ref());
        if !ok {
            let known = clauses.keys().map(String::as_str);
            self.push(
                name.span(),
                ErrorKind::UndefinedClause,
                format!("clause `{}` is referenced but not defined", name.get_ref()),
                format!(
                    "add a [[clause]] with id = \"{}\" or cite one of: {}",
                    name.get_ref(),
                    known.collect::<Vec<_>>().join(", ")
                ),
            );
        }
        ok
    }
}

/// One recipient a share rule grants, with where the rule names it.
struct Grant {
    event_type: EventType,
    section: &'static str,
    recipient: PartyId,
    span: std::ops::Range<usize>,
}

fn date_ms(s: &str) -> Option<i64> {
    let d: jiff::civil::Date = s.parse().ok()?;
    d.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_millisecond())
}

impl CompiledIsa {
    /// Parse, validate and compile one agreement file. With a directory, every party must
    /// have keys in it. Returns every error found, each with file:line:col and a hint.
    pub fn compile(text: &str, file: &str, directory: Option<&Directory>) -> Result<Self, PolicyErrors> {
        let at = Locator { file, text };
        let raw: RawIsa = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let message = e.message().trim().to_owned();
            let (kind, hint) = if message.starts_with("unknown field") {
                (
                    ErrorKind::UnknownKey,
                    "check the spelling against docs/decisions/002-agreement-format.md",
                )
            } else if message.starts_with("missing field") {
                (
                    ErrorKind::BadValue,
                    "add the missing key; docs/decisions/002-agreement-format.md lists every table",
                )
            } else {
                (ErrorKind::Syntax, "fix the TOML syntax at this position")
            };
            PolicyErrors(vec![at.error(offset, kind, message, hint)])
        })?;
        let mut c = Checker { at, errors: Vec::new() };
        let compiled = compile_raw(raw, text, directory, &mut c);
        if c.errors.is_empty() {
            Ok(compiled)
        } else {
            c.errors.sort_by_key(|e| (e.line, e.column));
            Err(PolicyErrors(c.errors))
        }
    }

    /// Whether `party` may seal and publish events of `event_type`.
    pub fn may_produce(&self, party: &PartyId, event_type: EventType) -> bool {
        event_type.is_public() || self.producers.get(party).is_some_and(|t| t.contains(&event_type))
    }

    /// The event types `party` may produce.
    pub fn produces(&self, party: &PartyId) -> impl Iterator<Item = EventType> + '_ {
        self.producers.get(party).into_iter().flatten().copied()
    }

    /// Every (producer, event type, section) the agreement shares, with its audience.
    pub fn audiences(&self) -> impl Iterator<Item = (&PartyId, EventType, &'static str, &Audience)> {
        self.audiences.iter().map(|((p, t, s), a)| (p, *t, *s, a))
    }

    /// Whether `party` may call `method` on `node`'s node for `purpose`: the grant, or the rule
    /// it lacks.
    pub fn may_call(
        &self,
        party: &PartyId,
        node: &PartyId,
        method: &str,
        purpose: &str,
    ) -> Result<&CallGrant, Box<CallRefused>> {
        let for_method: Vec<&CallGrant> = self
            .calls
            .iter()
            .filter(|g| &g.party == party && g.method == method && g.on.admits(party, node))
            .collect();
        if for_method.is_empty() {
            return Err(Box::new(CallRefused::NoRule {
                agreement: self.id.clone(),
                version: self.version,
                caller: party.clone(),
                method: method.to_owned(),
                node: node.clone(),
            }));
        }
        for_method
            .iter()
            .find(|g| g.purpose == purpose)
            .copied()
            .ok_or_else(|| {
                let mut allowed: Vec<String> = for_method.iter().map(|g| g.purpose.clone()).collect();
                allowed.dedup();
                Box::new(CallRefused::Purpose {
                    agreement: self.id.clone(),
                    version: self.version,
                    caller: party.clone(),
                    method: method.to_owned(),
                    node: node.clone(),
                    allowed,
                    asked: purpose.to_owned(),
                })
            })
    }

    /// Whether `recipient` may receive `section` of `event_type` sealed by `producer`: the share
    /// rule that allows it, or which rule is missing.
    pub fn may_receive(
        &self,
        recipient: &PartyId,
        producer: &PartyId,
        event_type: EventType,
        section: &str,
    ) -> Result<&Receipt, String> {
        self.receipts
            .iter()
            .find(|r| {
                &r.recipient == recipient && &r.producer == producer && r.event_type == event_type && r.section == section
            })
            .ok_or_else(|| {
                format!(
                    "{} v{} has no [[share]] rule giving {recipient} the `{section}` section of {event_type} from {producer}",
                    self.id, self.version
                )
            })
    }

    /// The receipts of one recipient.
    pub fn received_by<'a>(&'a self, party: &'a PartyId) -> impl Iterator<Item = &'a Receipt> + 'a {
        self.receipts.iter().filter(move |r| &r.recipient == party)
    }

    /// Retention of an event type.
    pub fn retention_of(&self, event_type: EventType) -> Retention {
        self.retention
            .get(&event_type)
            .copied()
            .unwrap_or(self.default_retention)
    }

    /// Whether the agreement is in force at `at_ms`.
    pub fn in_force_at(&self, at_ms: i64) -> bool {
        at_ms >= self.effective_from_ms && self.effective_until_ms.is_none_or(|u| at_ms < u)
    }
}

impl AudiencePolicy for CompiledIsa {
    fn policy_id(&self) -> &str {
        &self.id
    }

    fn policy_version(&self) -> u32 {
        self.version
    }

    fn audience(&self, producer: &PartyId, event_type: EventType, section: &str) -> Result<&Audience, Refusal> {
        if !self.may_produce(producer, event_type) {
            return Err(Refusal(format!(
                "{} v{} has no [[produce]] rule letting {producer} produce {event_type}",
                self.id, self.version
            )));
        }
        let section = event_type
            .sections()
            .iter()
            .copied()
            .find(|s| *s == section)
            .unwrap_or("");
        self.audiences
            .get(&(producer.clone(), event_type, section))
            .ok_or_else(|| {
                Refusal(format!(
                    "{} v{} has no [[share]] rule for {event_type}.{section} from {producer}",
                    self.id, self.version
                ))
            })
    }

    fn retention_class(&self, event_type: EventType) -> String {
        self.retention_of(event_type).class()
    }
}

#[allow(clippy::too_many_lines)]
fn compile_raw(raw: RawIsa, text: &str, directory: Option<&Directory>, c: &mut Checker<'_>) -> CompiledIsa {
    let RawIsa {
        agreement,
        legal_basis,
        clause,
        party,
        produce,
        share,
        never,
        retention,
        call,
        hours,
        linkage,
    } = raw;
    let agreement = agreement.into_inner();

    // [agreement]
    if hru_domain::PartyId::parse(agreement.id.get_ref(), "id").is_err() {
        c.push(
            agreement.id.span(),
            ErrorKind::BadValue,
            format!("agreement id `{}` is not a subject-safe token", agreement.id.get_ref()),
            "use lowercase letters, digits and inner hyphens, e.g. cheshire-hru",
        );
    }
    let version = u32::try_from(*agreement.version.get_ref()).ok().filter(|v| *v > 0);
    if version.is_none() {
        c.push(
            agreement.version.span(),
            ErrorKind::BadValue,
            format!("version {} is not valid", agreement.version.get_ref()),
            "versions are 1, 2, 3…; a new version of the agreement gets the next number",
        );
    }
    let from_ms = date_ms(agreement.effective_from.get_ref());
    if from_ms.is_none() {
        c.push(
            agreement.effective_from.span(),
            ErrorKind::BadDates,
            format!("effective_from `{}` is not a date", agreement.effective_from.get_ref()),
            "write dates as YYYY-MM-DD",
        );
    }
    let until_ms = agreement.effective_until.as_ref().and_then(|u| {
        let ms = date_ms(u.get_ref());
        match (ms, from_ms) {
            (None, _) => c.push(
                u.span(),
                ErrorKind::BadDates,
                format!("effective_until `{}` is not a date", u.get_ref()),
                "write dates as YYYY-MM-DD",
            ),
            (Some(u_ms), Some(f_ms)) if u_ms <= f_ms => c.push(
                u.span(),
                ErrorKind::BadDates,
                format!(
                    "effective_until {} is not after effective_from {}",
                    u.get_ref(),
                    agreement.effective_from.get_ref()
                ),
                "the agreement must end after it starts; swap or correct the dates",
            ),
            _ => {}
        }
        ms
    });

    // [[legal_basis]] and [[clause]]
    let mut bases = BTreeMap::new();
    for b in &legal_basis {
        if bases
            .insert(b.get_ref().id.get_ref().clone(), b.get_ref().text.clone())
            .is_some()
        {
            c.push(
                b.get_ref().id.span(),
                ErrorKind::Duplicate,
                format!("legal basis `{}` is defined twice", b.get_ref().id.get_ref()),
                "keep one [[legal_basis]] per id",
            );
        }
    }
    let mut clauses = BTreeMap::new();
    for cl in &clause {
        let cl = cl.get_ref();
        let basis_ids = cl.bases.iter().map(|b| b.get_ref().clone()).collect();
        if clauses
            .insert(cl.id.get_ref().clone(), (cl.text.clone(), basis_ids))
            .is_some()
        {
            c.push(
                cl.id.span(),
                ErrorKind::Duplicate,
                format!("clause `{}` is defined twice", cl.id.get_ref()),
                "keep one [[clause]] per id",
            );
        }
        for b in &cl.bases {
            if !bases.contains_key(b.get_ref()) {
                let known = bases.keys().map(String::as_str);
                c.push(
                    b.span(),
                    ErrorKind::UndefinedBasis,
                    format!("legal basis `{}` is referenced but not defined", b.get_ref()),
                    format!("add a [[legal_basis]] with this id; {}", hint(b.get_ref(), known)),
                );
            }
        }
    }

    // [[party]]
    let mut parties = BTreeMap::new();
    for p in &party {
        let p = p.get_ref();
        let Ok(id) = PartyId::parse(p.id.get_ref(), "id") else {
            c.push(
                p.id.span(),
                ErrorKind::BadValue,
                format!("party id `{}` is not a subject-safe token", p.id.get_ref()),
                "use lowercase letters, digits and inner hyphens",
            );
            continue;
        };
        let role = Role::ALL.iter().find(|(_, n)| n == p.role.get_ref()).map(|(r, _)| *r);
        let Some(role) = role else {
            c.push(
                p.role.span(),
                ErrorKind::BadValue,
                format!("unknown role `{}`", p.role.get_ref()),
                hint(p.role.get_ref(), Role::ALL.iter().map(|(_, n)| *n)),
            );
            continue;
        };
        if let Some(dir) = directory
            && dir.party(&id).is_none()
        {
            c.push(
                p.id.span(),
                ErrorKind::PartyWithoutKeys,
                format!("party `{id}` has no keys in the directory"),
                format!(
                    "run `hru keys generate --party {id} --out KEYS` and add the entry it prints to directory.toml"
                ),
            );
        }
        if parties
            .insert(
                id.clone(),
                PartyInfo {
                    controller: p.controller.clone(),
                    role,
                },
            )
            .is_some()
        {
            c.push(
                p.id.span(),
                ErrorKind::Duplicate,
                format!("party `{id}` is listed twice"),
                "keep one [[party]] table per party",
            );
        }
    }

    // [[produce]]
    let mut producers: BTreeMap<PartyId, BTreeSet<EventType>> = BTreeMap::new();
    for pr in &produce {
        let pr = pr.get_ref();
        let Some(p) = c.party(&pr.party, &parties) else {
            continue;
        };
        for e in &pr.events {
            let Some(t) = c.event(e) else { continue };
            if t.is_public() {
                c.push(
                    e.span(),
                    ErrorKind::PublicEvent,
                    format!("{t} is a public event"),
                    "every party may seal public events; remove it from [[produce]]",
                );
                continue;
            }
            producers.entry(p.clone()).or_default().insert(t);
        }
    }

    // [[share]]
    let mut receipts = Vec::new();
    let mut grants_by_rule: Vec<Vec<Grant>> = Vec::new();
    for rule in &share {
        let rule = rule.get_ref();
        let clause_ok = c.clause(&rule.clause, &clauses);
        let events: Vec<EventType> = rule
            .events
            .iter()
            .filter_map(|e| {
                let t = c.event(e)?;
                if t.is_public() {
                    c.push(
                        e.span(),
                        ErrorKind::PublicEvent,
                        format!("{t} is a public event with no sections to share"),
                        "public events are readable by every party; remove it from the share rule",
                    );
                    return None;
                }
                Some(t)
            })
            .collect();
        let mut sections: Vec<Vec<(EventType, &'static str)>> = Vec::new();
        for s in &rule.sections {
            let pairs: Vec<(EventType, &'static str)> = events
                .iter()
                .filter_map(|t| {
                    t.sections()
                        .iter()
                        .find(|n| **n == s.get_ref().as_str())
                        .map(|n| (*t, *n))
                })
                .collect();
            let missing: Vec<EventType> = events
                .iter()
                .copied()
                .filter(|t| !pairs.iter().any(|(pt, _)| pt == t))
                .collect();
            if !missing.is_empty() {
                let t = missing[0];
                c.push(
                    s.span(),
                    ErrorKind::UnknownSection,
                    format!("{t} has no section `{}`", s.get_ref()),
                    format!(
                        "{t} has sections {}; split the rule if its events differ",
                        t.sections().join(", ")
                    ),
                );
            }
            sections.push(pairs);
        }
        let to: Vec<(PartyId, std::ops::Range<usize>)> = rule
            .to
            .iter()
            .filter_map(|r| c.party(r, &parties).map(|p| (p, r.span())))
            .collect();
        let mut grants = Vec::new();
        for t in &events {
            let from: Vec<PartyId> = match &rule.from {
                Some(from) => from
                    .iter()
                    .filter_map(|f| {
                        let p = c.party(f, &parties)?;
                        if !producers.get(&p).is_some_and(|ts| ts.contains(t)) {
                            c.push(
                                f.span(),
                                ErrorKind::ProducerNotAllowed,
                                format!("{p} may not produce {t}, so it cannot share it"),
                                format!("add {t} to the [[produce]] rule of {p}, or remove {p} from `from`"),
                            );
                            return None;
                        }
                        Some(p)
                    })
                    .collect(),
                None => producers
                    .iter()
                    .filter(|(_, ts)| ts.contains(t))
                    .map(|(p, _)| p.clone())
                    .collect(),
            };
            for pairs in &sections {
                for (pt, section) in pairs.iter().filter(|(pt, _)| pt == t) {
                    for (recipient, span) in &to {
                        grants.push(Grant {
                            event_type: *pt,
                            section,
                            recipient: recipient.clone(),
                            span: span.clone(),
                        });
                        if clause_ok {
                            for producer in &from {
                                receipts.push(Receipt {
                                    producer: producer.clone(),
                                    event_type: *pt,
                                    section,
                                    recipient: recipient.clone(),
                                    purpose: rule.purpose.get_ref().clone(),
                                    clause: rule.clause.get_ref().clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        grants_by_rule.push(grants);
    }

    // [[never]]: guardrails no share rule may break.
    for n in &never {
        let n_span = n.span();
        let n = n.get_ref();
        let events: Option<Vec<EventType>> = n
            .events
            .as_ref()
            .map(|es| es.iter().filter_map(|e| c.event(e)).collect());
        let to: Vec<PartyId> = n.to.iter().filter_map(|r| c.party(r, &parties)).collect();
        for s in &n.sections {
            let exists = EventType::ALL
                .iter()
                .filter(|t| events.as_ref().is_none_or(|es| es.contains(t)))
                .any(|t| t.sections().contains(&s.get_ref().as_str()));
            if !exists {
                c.push(
                    s.span(),
                    ErrorKind::UnknownSection,
                    format!(
                        "no event type{} has a section `{}`",
                        if events.is_some() { " named here" } else { "" },
                        s.get_ref()
                    ),
                    "check the section name against proto/hru/v1/events.proto",
                );
            }
        }
        let never_line =
            c.at.error(n_span.start, ErrorKind::Contradiction, String::new(), "")
                .line;
        for grants in &grants_by_rule {
            for Grant {
                event_type: t,
                section,
                recipient,
                span,
            } in grants
            {
                let forbidden = events.as_ref().is_none_or(|es| es.contains(t))
                    && n.sections.iter().any(|s| s.get_ref() == section)
                    && to.contains(recipient);
                if forbidden {
                    c.push(
                        span.clone(),
                        ErrorKind::Contradiction,
                        format!("this rule shares {t}.{section} with {recipient}, which the [[never]] rule at line {never_line} forbids"),
                        format!("remove {recipient} from `to`, or change the guardrail ({})", if n.reason.is_empty() { "no reason given" } else { &n.reason }),
                    );
                }
            }
        }
    }

    // [retention]
    let mut retention_map = BTreeMap::new();
    let mut default_retention = None;
    for (key, value) in &retention {
        let period = Retention::parse(value.get_ref());
        if period.is_none() {
            c.push(
                value.span(),
                ErrorKind::BadRetention,
                format!("retention `{}` does not parse", value.get_ref()),
                "write a number and a unit: 90d, 12w, 18m or 7y",
            );
        }
        if key.get_ref() == "default" {
            default_retention = period;
        } else if let Some(t) = c.event(key)
            && let Some(p) = period
        {
            retention_map.insert(t, p);
        }
    }

    // [[call]]
    let methods = grpc_methods();
    let mut calls = Vec::new();
    for spanned in &call {
        let rule = spanned.get_ref();
        let party = c.party(&rule.party, &parties);
        let clause_ok = c.clause(&rule.clause, &clauses);
        let on: Vec<Callee> = match &rule.on {
            None => {
                c.push(
                    spanned.span(),
                    ErrorKind::MissingCallee,
                    format!("this [[call]] rule for `{}` does not say whose node it may be called on", rule.party.get_ref()),
                    "add `on = [\"own\"]` (the caller's own node) or the parties whose nodes it may call, e.g. `on = [\"police-hru\"]`",
                );
                Vec::new()
            }
            Some(list) => {
                if list.get_ref().is_empty() {
                    c.push(
                        list.span(),
                        ErrorKind::MissingCallee,
                        "`on` names no node".to_owned(),
                        "name `own` or at least one party",
                    );
                }
                list.get_ref()
                    .iter()
                    .filter_map(|n| {
                        if n.get_ref() == "own" {
                            Some(Callee::Own)
                        } else {
                            c.party(n, &parties).map(Callee::Party)
                        }
                    })
                    .collect()
            }
        };
        for m in &rule.methods {
            if !methods.contains(m.get_ref()) {
                c.push(
                    m.span(),
                    ErrorKind::UnknownMethod,
                    format!("unknown gRPC method `{}`", m.get_ref()),
                    hint(m.get_ref(), methods.iter().map(String::as_str)),
                );
                continue;
            }
            if let (Some(p), true) = (&party, clause_ok) {
                for callee in &on {
                    calls.push(CallGrant {
                        party: p.clone(),
                        method: m.get_ref().clone(),
                        on: callee.clone(),
                        purpose: rule.purpose.get_ref().clone(),
                        clause: rule.clause.get_ref().clone(),
                    });
                }
            }
        }
    }

    // Audiences: the union of recipients per (producer, event, section).
    receipts.sort();
    receipts.dedup();
    let mut members: HashMap<(PartyId, EventType, &'static str), BTreeSet<PartyId>> = HashMap::new();
    for r in &receipts {
        members
            .entry((r.producer.clone(), r.event_type, r.section))
            .or_default()
            .insert(r.recipient.clone());
    }
    let audiences = members
        .into_iter()
        .filter_map(|(k, m)| Audience::new(m).map(|a| (k, a)))
        .collect::<HashMap<_, _>>();

    let warnings = producers
        .iter()
        .flat_map(|(p, ts)| {
            ts.iter()
                .flat_map(move |t| t.sections().iter().map(move |s| (p, *t, *s)))
        })
        .filter(|(p, t, s)| !audiences.contains_key(&((*p).clone(), *t, *s)))
        .map(|(p, t, s)| {
            c.at.error(
                0,
                ErrorKind::Uncovered,
                format!("{p} may produce {t} but no rule shares its `{s}` section"),
                "add a [[share]] rule for it, or accept that the section can never be sealed",
            )
        })
        .collect();
    calls.sort();
    calls.dedup();

    // [hours]
    let hours = hours.and_then(|h| match crate::hours::Hours::compile(h, until_ms) {
        Ok(h) => Some(h),
        Err(problems) => {
            for (span, kind, message, hint) in problems {
                c.push(span, kind, message, hint);
            }
            None
        }
    });

    // [linkage]
    let linkage = linkage.and_then(|l| {
        let custodian = c.party(&l.custodian, &parties);
        let mut holders = BTreeSet::new();
        for h in &l.holders {
            if let Some(p) = c.party(h, &parties) {
                let role = parties.get(&p).map(|i| i.role);
                if matches!(
                    role,
                    Some(Role::Evaluation | Role::EmVendor | Role::Geofence | Role::ControlRoom | Role::Audit)
                ) {
                    c.push(
                        h.span(),
                        ErrorKind::Contradiction,
                        format!(
                            "{p} ({}) may not hold the linkage key: with it, a guess at who a subject reference is can be tested",
                            role.map_or("?", Role::name)
                        ),
                        "hold the key only where identities are recorded anyway (police, probation, health, advocacy)",
                    );
                }
                holders.insert(p);
            }
        }
        let clause_ok = c.clause(&l.clause, &clauses);
        let custodian = custodian?;
        if !holders.contains(&custodian) {
            c.push(
                l.custodian.span(),
                ErrorKind::BadValue,
                format!("the custodian {custodian} is not among the holders"),
                "list the custodian in holders: it derives references too",
            );
        }
        clause_ok.then(|| Linkage {
            custodian,
            holders,
            clause: l.clause.into_inner(),
        })
    });

    CompiledIsa {
        id: agreement.id.into_inner(),
        version: version.unwrap_or(0),
        title: agreement.title,
        digest: Sha256::digest(text.as_bytes()).into(),
        effective_from_ms: from_ms.unwrap_or(0),
        effective_until_ms: until_ms,
        parties,
        clauses,
        bases,
        producers,
        audiences,
        receipts,
        calls,
        retention: retention_map,
        default_retention: default_retention.unwrap_or(Retention::Months(72)),
        warnings,
        hours,
        linkage,
    }
}
