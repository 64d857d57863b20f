//! Audiences: the exact set of parties a section is for, and its stable id.

use std::collections::BTreeSet;

use hru_domain::{AudienceId, PartyId};
use sha2::{Digest as _, Sha256};

/// A non-empty, exact set of parties; its id is derived from the sorted members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Audience {
    members: BTreeSet<PartyId>,
    id: AudienceId,
}

impl Audience {
    /// An audience of these parties; `None` when empty.
    pub fn new(members: impl IntoIterator<Item = PartyId>) -> Option<Self> {
        let members: BTreeSet<PartyId> = members.into_iter().collect();
        if members.is_empty() {
            return None;
        }
        let id = id_of(&members);
        Some(Self { members, id })
    }

    /// The members, sorted.
    pub fn members(&self) -> &BTreeSet<PartyId> {
        &self.members
    }

    /// Whether `party` is a member.
    pub fn contains(&self, party: &PartyId) -> bool {
        self.members.contains(party)
    }

    /// The id: `a` and 15 hex digits of SHA-256 over the sorted member list, so any verifier can
    /// recompute it from a grant's member list.
    pub fn id(&self) -> &AudienceId {
        &self.id
    }
}

fn id_of(members: &BTreeSet<PartyId>) -> AudienceId {
    let mut h = Sha256::new();
    h.update(b"hru.v1.audience\0");
    for m in members {
        h.update(m.as_str().as_bytes());
        h.update(b"\n");
    }
    let hex = hex::encode(h.finalize());
    AudienceId::parse(&format!("a{}", &hex[..15]), "audience")
        .unwrap_or_else(|_| unreachable!("hex digits always form a valid token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PartyId {
        s.parse().expect("valid party")
    }

    #[test]
    fn id_depends_on_the_set_not_the_order() {
        let a = Audience::new([p("cwp"), p("police-hru")]).expect("non-empty");
        let b = Audience::new([p("police-hru"), p("cwp"), p("cwp")]).expect("non-empty");
        let c = Audience::new([p("police-hru")]).expect("non-empty");
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id().as_str().len(), 16);
        assert!(Audience::new([]).is_none());
    }
}
