//! Producer-chain checking: every producer's envelopes must arrive gap-free, once, in order,
//! each naming the digest of the one before.

use std::collections::{HashMap, HashSet};

use hru_domain::{Digest, EventHeader, ProducerId};

/// A break in a producer's chain, as seen in log order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// Envelopes are missing: the sequence jumped forward.
    #[error("{producer}: gap, expected seq {expected}, found {found}")]
    Gap {
        /// Producer.
        producer: ProducerId,
        /// The sequence that should have come.
        expected: u64,
        /// The sequence that came.
        found: u64,
    },
    /// An envelope seen before arrived again.
    #[error("{producer}: duplicate of seq {seq}")]
    Duplicate {
        /// Producer.
        producer: ProducerId,
        /// Its sequence.
        seq: u64,
    },
    /// An envelope arrived after a later one of the same producer (reordered or replayed).
    #[error("{producer}: out of order, expected seq {expected}, found {found}")]
    OutOfOrder {
        /// Producer.
        producer: ProducerId,
        /// The sequence that should have come.
        expected: u64,
        /// The older sequence that came.
        found: u64,
    },
    /// A second, different envelope with the sequence number of the newest one: a forked history.
    #[error("{producer}: fork at seq {seq}, two different envelopes")]
    Forked {
        /// Producer.
        producer: ProducerId,
        /// The contested sequence.
        seq: u64,
    },
    /// The right sequence number, but it does not name its predecessor: a fork or an insertion.
    #[error("{producer}: seq {seq} does not link to the previous envelope (fork or insertion)")]
    Unlinked {
        /// Producer.
        producer: ProducerId,
        /// Its sequence.
        seq: u64,
    },
}

/// Follows every producer's chain through a log read in order.
#[derive(Debug, Default)]
pub struct ChainChecker {
    heads: HashMap<ProducerId, (u64, Digest)>,
    seen: HashSet<Digest>,
}

impl ChainChecker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Observe the next envelope of the log; a break is reported and the chain resynchronises
    /// on the newest sequence seen, so each later break is named once.
    pub fn observe(&mut self, header: &EventHeader, digest: &Digest) -> Result<(), ChainBreak> {
        let producer = &header.producer;
        let seq = header.producer_seq;
        if !self.seen.insert(*digest) {
            return Err(ChainBreak::Duplicate {
                producer: producer.clone(),
                seq,
            });
        }
        let (last_seq, last_digest) = self.heads.get(producer).copied().unwrap_or((0, Digest::ZERO));
        let expected = last_seq + 1;
        if seq == last_seq {
            return Err(ChainBreak::Forked {
                producer: producer.clone(),
                seq,
            });
        }
        if seq < expected {
            return Err(ChainBreak::OutOfOrder {
                producer: producer.clone(),
                expected,
                found: seq,
            });
        }
        self.heads.insert(producer.clone(), (seq, *digest));
        if seq > expected {
            return Err(ChainBreak::Gap {
                producer: producer.clone(),
                expected,
                found: seq,
            });
        }
        if header.prev_digest != last_digest {
            return Err(ChainBreak::Unlinked {
                producer: producer.clone(),
                seq,
            });
        }
        Ok(())
    }

    /// The last sequence seen of each producer.
    pub fn heads(&self) -> impl Iterator<Item = (&ProducerId, u64)> {
        self.heads.iter().map(|(p, (s, _))| (p, *s))
    }
}
