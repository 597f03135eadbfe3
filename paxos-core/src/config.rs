//! Replica configuration: every limit in one place, validated once (STYLE.md rule 8).

use crate::ballot::NodeId;

/// Which protocol a cluster runs. Every member of a cluster must run the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Every slot is its own single-decree instance running both phases, from any node.
    Basic,
    /// A stable leader runs phase 1 once for the whole log, then phase 2 per slot.
    Multi,
}

/// The largest cluster the core supports (votes are tracked in a `u64` bitmask).
pub const MEMBERS_MAX: usize = 64;

/// The largest [`Config::dedup_window`]: a client applied out of order keeps a
/// ring of this many bits (128 KiB) on every replica.
pub const MAX_DEDUP_WINDOW: u64 = 1 << 20;

/// Configuration of one replica. Build one with [`Config::new`], adjust fields,
/// and the node validates it once at construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica's id; must be in `members`.
    pub node_id: NodeId,
    /// Every member of the cluster, this replica included.
    pub members: Vec<NodeId>,
    /// Basic or Multi-Paxos.
    pub protocol: Protocol,
    /// Seed of the replica's PRNG (election jitter, backoff). Give each node its own.
    pub seed: u64,
    /// Ticks without hearing from a leader before a follower stands for election.
    /// The actual timeout is drawn uniformly from `[this, 2 * this)`.
    pub election_timeout_ticks: u64,
    /// Ticks between leader heartbeats. Must be below `election_timeout_ticks`.
    pub heartbeat_ticks: u64,
    /// Ticks before an unanswered prepare, accept or catch-up request is resent.
    /// A Multi-Paxos leader's accepts and a Basic Paxos instance's prepares and accepts
    /// wait twice as long for each further resend, up to 16 times this. Catch-up
    /// requests, and a Multi-Paxos candidate's prepares, are resent every `retransmit_ticks`.
    pub retransmit_ticks: u64,
    /// Most slots a proposer may have proposed but not yet seen chosen (pipelining depth).
    ///
    /// Multi-Paxos: how many slots the leader pipelines (4096 by default).
    /// Basic Paxos: how many single-decree instances of its own a replica runs at
    /// once; 1 by default, the textbook (one decision at a time, each value a batch
    /// of up to `batch_commands_max` queued commands). Raising it runs concurrent
    /// instances in successive slots. An instance that fills a hole may run
    /// on top of these, one at a time.
    pub slots_in_flight_max: u64,
    /// Most commands in one slot (batching); `1` turns batching off.
    pub batch_commands_max: usize,
    /// Most payload bytes in one slot; a single larger command still gets a slot of its own.
    pub batch_bytes_max: usize,
    /// Most slots in one accept message.
    pub accept_slots_per_message_max: usize,
    /// Most commands queued at a proposer waiting for a slot; beyond it, proposals are refused.
    pub pending_commands_max: usize,
    /// Most chosen values in one catch-up message.
    pub catch_up_slots_max: usize,
    /// How many of the newest compacted slots a replica keeps in memory after a
    /// compaction (1024 by default; 0 keeps none), within
    /// `compaction_keep_bytes_max`. A peer asking for slots from among them is
    /// sent those slots, as from the log, rather than the snapshot: a follower a
    /// little behind does not take the whole state, and one that catches up
    /// more slowly than the leader compacts still gets there. Kept slots are not
    /// durable: a replica that restarts, or installs a peer's snapshot, keeps
    /// none until it compacts again.
    pub compaction_keep_slots: u64,
    /// Most bytes of values kept after compaction, 4 MiB by default (0 keeps
    /// none). See `compaction_keep_slots`. Counted as their encoding is bounded:
    /// in memory, small commands take up to about twice that (each has an
    /// allocation of its own). A single value larger than this is not kept, and
    /// nor is anything compacted before it.
    pub compaction_keep_bytes_max: usize,
    /// Most bytes of values in one accept, catch-up or forward message (counted
    /// as an upper bound of their encoding). A single larger value or command
    /// still goes, alone. Keep it well under the transport's largest frame
    /// (`frame_bytes_max`, 16 MiB by default): a message above that is dropped,
    /// and one resent whole would be dropped again.
    pub message_bytes_max: usize,
    /// How many recent sequence numbers per client are remembered for deduplication
    /// (rounded up to a power of two, at least 64). A client should not have more
    /// commands in flight than this; one older than the window counts as applied.
    pub dedup_window: u64,
    /// Largest randomized backoff, in ticks, after a Basic Paxos proposer is preempted.
    pub backoff_ticks_max: u64,
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `members` does not contain `node_id`.
    #[error("node {0} is not among the members")]
    NotAMember(NodeId),
    /// A member id appears twice.
    #[error("member {0} is listed twice")]
    DuplicateMember(NodeId),
    /// Too few or too many members.
    #[error("a cluster needs 1 to {MEMBERS_MAX} members, got {0}")]
    MemberCount(usize),
    /// A limit or tick count is zero or inconsistent.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The field.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Config {
    /// A configuration with defaults suited to a LAN and a 10 ms tick.
    pub fn new(node_id: NodeId, members: impl Into<Vec<NodeId>>, protocol: Protocol) -> Config {
        Config {
            node_id,
            members: members.into(),
            protocol,
            seed: node_id.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED,
            election_timeout_ticks: 10,
            heartbeat_ticks: 2,
            retransmit_ticks: 3,
            // Basic Paxos decides one slot at a time; Multi-Paxos pipelines.
            slots_in_flight_max: match protocol {
                Protocol::Basic => 1,
                Protocol::Multi => 4096,
            },
            batch_commands_max: 1024,
            batch_bytes_max: 1 << 20,
            accept_slots_per_message_max: 64,
            pending_commands_max: 1 << 20,
            catch_up_slots_max: 256,
            compaction_keep_slots: 1024,
            compaction_keep_bytes_max: 4 << 20,
            message_bytes_max: 4 << 20,
            dedup_window: 256,
            backoff_ticks_max: 8,
        }
    }

    /// Checks every field; the node refuses to start on an error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() || self.members.len() > MEMBERS_MAX {
            return Err(ConfigError::MemberCount(self.members.len()));
        }
        for (position, member) in self.members.iter().enumerate() {
            if self.members[..position].contains(member) {
                return Err(ConfigError::DuplicateMember(*member));
            }
        }
        if !self.members.contains(&self.node_id) {
            return Err(ConfigError::NotAMember(self.node_id));
        }
        let positive: [(&'static str, u64); 11] = [
            ("election_timeout_ticks", self.election_timeout_ticks),
            ("heartbeat_ticks", self.heartbeat_ticks),
            ("retransmit_ticks", self.retransmit_ticks),
            ("slots_in_flight_max", self.slots_in_flight_max),
            ("batch_commands_max", self.batch_commands_max as u64),
            ("batch_bytes_max", self.batch_bytes_max as u64),
            ("accept_slots_per_message_max", self.accept_slots_per_message_max as u64),
            ("pending_commands_max", self.pending_commands_max as u64),
            ("catch_up_slots_max", self.catch_up_slots_max as u64),
            ("message_bytes_max", self.message_bytes_max as u64),
            ("dedup_window", self.dedup_window),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid { name, reason: "must be at least 1" });
            }
        }
        if self.dedup_window > MAX_DEDUP_WINDOW {
            return Err(ConfigError::Invalid {
                name: "dedup_window",
                reason: "must be at most MAX_DEDUP_WINDOW (1,048,576): a client out of order keeps that many bits",
            });
        }
        if self.heartbeat_ticks >= self.election_timeout_ticks {
            return Err(ConfigError::Invalid {
                name: "heartbeat_ticks",
                reason: "must be below election_timeout_ticks, or followers time out on a healthy leader",
            });
        }
        Ok(())
    }

    /// Votes needed for a decision: a strict majority of `members`.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// The bit of `node` in vote masks, or `None` for a stranger.
    pub fn member_bit(&self, node: NodeId) -> Option<u64> {
        self.members.iter().position(|member| *member == node).map(|position| 1u64 << position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert_eq!(Config::new(1, [1, 2, 3], Protocol::Multi).validate(), Ok(()));
    }

    #[test]
    fn basic_paxos_runs_one_instance_at_a_time_by_default() {
        assert_eq!(Config::new(1, [1, 2, 3], Protocol::Basic).slots_in_flight_max, 1);
        assert_eq!(Config::new(1, [1, 2, 3], Protocol::Multi).slots_in_flight_max, 4096);
    }

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(Config::new(4, [1, 2, 3], Protocol::Multi).validate(), Err(ConfigError::NotAMember(4)));
        assert_eq!(Config::new(1, [1, 1, 3], Protocol::Multi).validate(), Err(ConfigError::DuplicateMember(1)));
        let mut config = Config::new(1, [1, 2, 3], Protocol::Basic);
        config.heartbeat_ticks = config.election_timeout_ticks;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { name: "heartbeat_ticks", .. })));
        config = Config::new(1, [1, 2, 3], Protocol::Basic);
        config.slots_in_flight_max = 0;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { name: "slots_in_flight_max", .. })));
        config = Config::new(1, [1, 2, 3], Protocol::Multi);
        config.dedup_window = MAX_DEDUP_WINDOW;
        assert_eq!(config.validate(), Ok(()));
        config.dedup_window = MAX_DEDUP_WINDOW + 1;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { name: "dedup_window", .. })));
    }

    #[test]
    fn quorum_is_a_strict_majority() {
        assert_eq!(Config::new(1, [1], Protocol::Multi).quorum(), 1);
        assert_eq!(Config::new(1, [1, 2, 3], Protocol::Multi).quorum(), 2);
        assert_eq!(Config::new(1, [1, 2, 3, 4], Protocol::Multi).quorum(), 3);
        assert_eq!(Config::new(1, [1, 2, 3, 4, 5], Protocol::Multi).quorum(), 3);
    }
}
