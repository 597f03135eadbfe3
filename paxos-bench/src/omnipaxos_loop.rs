//! OmniPaxos 0.2.4 driven the way [`crate::protocol_loop`] drives our replicas, so
//! the two can be measured side by side (`benches/omnipaxos.rs`, feature
//! `compare-omnipaxos`).
//!
//! The shape is the same: three servers in one thread, every message passed in
//! memory (one queue, each sender's messages in the order it produced them), no
//! runtime, no serialization, 8-byte commands. A closed loop of `in_flight`
//! clients keeps one command each outstanding; a client submits its next command
//! when its previous one is decided at the leader. Every step is a round: append
//! what the clients submitted at the leader, deliver every queued message, take
//! every server's outgoing messages, then read what each server decided. Servers
//! are ticked only in rounds where nothing happened, as the loop ticks its replicas.
//!
//! # Storage
//!
//! OmniPaxos 0.2.4 ships no in-memory storage in the `omnipaxos` crate itself (it
//! lives in the separate `omnipaxos_storage` crate), so [`LoopStorage`] is our
//! own: a `Vec` of entries behind an offset for the trimmed prefix, and the few
//! fields the `Storage` trait asks for. Appends move the entries in, nothing is
//! copied. The harness keeps a second handle on each server's storage and reads
//! the decided entries in place: `OmniPaxos::read_decided_suffix` would clone
//! every entry (an allocation for its payload) on every server, a cost of the
//! harness that our loop does not pay either (it reads decisions by reference).
//!
//! # Compaction
//!
//! OmniPaxos compacts by trimming: the leader calls `trim(Some(index))` and tells
//! the followers to trim too. The harness trims through the lowest index every
//! server has read, at most once every [`TRIM_EVERY_ENTRIES`] entries (the value
//! of [`COMPACT_MAX_SLOTS`]), so memory stays bounded. A trim the leader refuses
//! (an index not yet accepted by every server, as far as it knows) is tried again
//! later. A trim is a `Vec::drain` of the prefix, cheap next to the protocol:
//! trimming every 1,024 entries instead made no difference we could measure
//! (whole runs of 2M commands at one in flight and 10M at 10,000, 8 and 6
//! alternating pairs: 1.02x and 0.97x the time), where our replicas, which
//! hold more per slot, run faster compacting often ([`COMPACT_MIN_SLOTS`]).
//!
//! # Batching: the settings picked, and why
//!
//! OmniPaxos batches in two places. Within one round, every entry the leader
//! accepts is appended to the one `AcceptDecide` message per follower still in
//! its outgoing buffer, and every follower folds its replies into one `Accepted`:
//! with `batch_size` 1 a round's commands already travel in one message per
//! follower, and nothing ever waits. `batch_size` above 1 also holds entries back
//! until that many are buffered (or a tick flushes them), then appends them to
//! storage as one vector. A batch that is not full waits for a tick, and the
//! loop ticks only when a round did nothing, so [`OmniLoopCluster::new`] sets
//! `flush_batch_tick_timeout` to 1 (the default, 200, would leave a partial batch
//! waiting 200 idle rounds).
//!
//! [`OmniLoopCluster::new`] picks `batch_size` with [`batch_size_for`]: 1 up to
//! 64 commands in flight (with one in flight, any larger batch would wait for a
//! tick on every command), and the number of clients in flight above that, so
//! the whole closed loop's submissions of a round fill exactly one batch. The
//! figures that led there, measured with the criterion bench on this machine,
//! are in `benches/omnipaxos.rs`. [`OmniLoopCluster::with_batch_size`] takes any
//! other value.
//!
//! Leader election runs on OmniPaxos's own ballot leader election
//! (`election_tick_timeout` 1: a heartbeat round every tick). The clients start
//! once every server has followed the same leader for [`STABLE_TICKS`] ticks.
//!
//! [`LoopStorage`]: crate::omnipaxos_loop::LoopStorage
//! [`TRIM_EVERY_ENTRIES`]: crate::omnipaxos_loop::TRIM_EVERY_ENTRIES
//! [`STABLE_TICKS`]: crate::omnipaxos_loop::STABLE_TICKS
//! [`COMPACT_MAX_SLOTS`]: crate::protocol_loop::COMPACT_MAX_SLOTS
//! [`COMPACT_MIN_SLOTS`]: crate::protocol_loop::COMPACT_MIN_SLOTS
//! [`OmniLoopCluster::new`]: crate::omnipaxos_loop::OmniLoopCluster::new
//! [`OmniLoopCluster::with_batch_size`]: crate::omnipaxos_loop::OmniLoopCluster::with_batch_size
//! [`batch_size_for`]: crate::omnipaxos_loop::batch_size_for

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::Message;
use omnipaxos::storage::{Entry, NoSnapshot, StopSign, Storage, StorageOp, StorageResult};
use omnipaxos::util::NodeId;
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};
use paxos_core::CommandId;

use crate::check::{check_agreement, AgreementError, AppliedLog, Submitted};
use crate::protocol_loop::{
    run_rounds_until, Rounds, COMPACT_MAX_SLOTS, ELECTION_TICKS_MAX, FINISH_TIMEOUT, IDLE_TICKS_MAX,
};

/// Servers in the cluster, as in the protocol-alone headline figure.
pub const SERVERS: usize = 3;
/// Ticks in a row for which every server must follow the same leader before
/// the clients start. Right after the election, a heartbeat round can still
/// carry a server's "unhappy" flag from before it; the next idle tick would then
/// elect another leader, and the entries only the old one held would be lost
/// (OmniPaxos does not propose them again), so the run would stall.
pub const STABLE_TICKS: u32 = 4;
/// Bytes of payload per command.
pub const COMMAND_BYTES: usize = 8;
/// The leader trims the log (and tells the followers to) once every server has
/// read this many more decided entries.
pub const TRIM_EVERY_ENTRIES: usize = COMPACT_MAX_SLOTS as usize;

/// One command in the OmniPaxos log: the same fields as `paxos_core::Command`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OmniCommand {
    /// Client id, from 1.
    pub client: u64,
    /// The client's sequence number, from 0.
    pub sequence: u64,
    /// Application bytes ([`COMMAND_BYTES`] of them).
    pub payload: Vec<u8>,
}

impl Entry for OmniCommand {
    type Snapshot = NoSnapshot;
}

/// What one server's storage holds.
#[derive(Debug, Default)]
struct LogState {
    /// Entries from log index `trimmed` on.
    entries: Vec<OmniCommand>,
    /// Entries below this index were trimmed.
    trimmed: usize,
    promise: Option<Ballot>,
    accepted_round: Option<Ballot>,
    decided_idx: usize,
    compacted_idx: usize,
    stopsign: Option<StopSign>,
    snapshot: Option<NoSnapshot>,
}

impl LogState {
    /// The position in `entries` of log index `index`, if held.
    fn position(&self, index: usize) -> Option<usize> {
        index.checked_sub(self.trimmed).filter(|position| *position <= self.entries.len())
    }

    fn apply(&mut self, op: StorageOp<OmniCommand>) -> StorageResult<()> {
        match op {
            StorageOp::AppendEntry(entry) => self.entries.push(entry),
            StorageOp::AppendEntries(mut entries) => self.entries.append(&mut entries),
            StorageOp::AppendOnPrefix(from, mut entries) => {
                let position = self.position(from).ok_or(StorageError::NotHeld {
                    index: from,
                    first: self.trimmed,
                    end: self.trimmed + self.entries.len(),
                })?;
                self.entries.truncate(position);
                self.entries.append(&mut entries);
            }
            StorageOp::SetPromise(ballot) => self.promise = Some(ballot),
            StorageOp::SetDecidedIndex(index) => self.decided_idx = index,
            StorageOp::SetAcceptedRound(ballot) => self.accepted_round = Some(ballot),
            StorageOp::SetCompactedIdx(index) => self.compacted_idx = index,
            StorageOp::Trim(index) => {
                let count = index.saturating_sub(self.trimmed).min(self.entries.len());
                self.entries.drain(..count);
                self.trimmed += count;
            }
            StorageOp::SetStopsign(stopsign) => self.stopsign = stopsign,
            StorageOp::SetSnapshot(snapshot) => self.snapshot = snapshot,
        }
        Ok(())
    }
}

/// Why [`LoopStorage`] refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A write started at a log index the storage does not hold (trimmed, or past the end).
    #[error("log index {index} is not held: the log holds indexes {first}..{end}")]
    NotHeld {
        /// The index asked for.
        index: usize,
        /// The first index held (the ones below were trimmed).
        first: usize,
        /// One past the last index held.
        end: usize,
    },
}

/// In-memory storage for one OmniPaxos server (see the module docs). Clones share
/// the same log, so the harness can read what the server decided in place.
#[derive(Clone, Debug, Default)]
pub struct LoopStorage {
    state: Rc<RefCell<LogState>>,
}

impl Storage<OmniCommand> for LoopStorage {
    fn write_atomically(&mut self, ops: Vec<StorageOp<OmniCommand>>) -> StorageResult<()> {
        let mut state = self.state.borrow_mut();
        // Only `AppendOnPrefix` can fail, on an index this harness never trims past;
        // OmniPaxos `expect`s every write, so a failure panics and nothing is rolled back.
        for op in ops {
            state.apply(op)?;
        }
        Ok(())
    }

    fn append_entry(&mut self, entry: OmniCommand) -> StorageResult<()> {
        self.state.borrow_mut().entries.push(entry);
        Ok(())
    }

    fn append_entries(&mut self, mut entries: Vec<OmniCommand>) -> StorageResult<()> {
        self.state.borrow_mut().entries.append(&mut entries);
        Ok(())
    }

    fn append_on_prefix(&mut self, from_idx: usize, entries: Vec<OmniCommand>) -> StorageResult<()> {
        self.state.borrow_mut().apply(StorageOp::AppendOnPrefix(from_idx, entries))
    }

    fn set_promise(&mut self, n_prom: Ballot) -> StorageResult<()> {
        self.state.borrow_mut().promise = Some(n_prom);
        Ok(())
    }

    fn set_decided_idx(&mut self, ld: usize) -> StorageResult<()> {
        self.state.borrow_mut().decided_idx = ld;
        Ok(())
    }

    fn get_decided_idx(&self) -> StorageResult<usize> {
        Ok(self.state.borrow().decided_idx)
    }

    fn set_accepted_round(&mut self, na: Ballot) -> StorageResult<()> {
        self.state.borrow_mut().accepted_round = Some(na);
        Ok(())
    }

    fn get_accepted_round(&self) -> StorageResult<Option<Ballot>> {
        Ok(self.state.borrow().accepted_round)
    }

    fn get_entries(&self, from: usize, to: usize) -> StorageResult<Vec<OmniCommand>> {
        let state = self.state.borrow();
        // The trait asks for an empty vector when the whole range is not held.
        Ok(match (state.position(from), state.position(to)) {
            (Some(from), Some(to)) if from <= to => state.entries[from..to].to_vec(),
            _ => Vec::new(),
        })
    }

    fn get_log_len(&self) -> StorageResult<usize> {
        Ok(self.state.borrow().entries.len())
    }

    fn get_suffix(&self, from: usize) -> StorageResult<Vec<OmniCommand>> {
        let state = self.state.borrow();
        Ok(state.position(from).map(|from| state.entries[from..].to_vec()).unwrap_or_default())
    }

    fn get_promise(&self) -> StorageResult<Option<Ballot>> {
        Ok(self.state.borrow().promise)
    }

    fn set_stopsign(&mut self, s: Option<StopSign>) -> StorageResult<()> {
        self.state.borrow_mut().stopsign = s;
        Ok(())
    }

    fn get_stopsign(&self) -> StorageResult<Option<StopSign>> {
        Ok(self.state.borrow().stopsign.clone())
    }

    fn trim(&mut self, idx: usize) -> StorageResult<()> {
        self.state.borrow_mut().apply(StorageOp::Trim(idx))
    }

    fn set_compacted_idx(&mut self, idx: usize) -> StorageResult<()> {
        self.state.borrow_mut().compacted_idx = idx;
        Ok(())
    }

    fn get_compacted_idx(&self) -> StorageResult<usize> {
        Ok(self.state.borrow().compacted_idx)
    }

    fn set_snapshot(&mut self, snapshot: Option<NoSnapshot>) -> StorageResult<()> {
        self.state.borrow_mut().snapshot = snapshot;
        Ok(())
    }

    fn get_snapshot(&self) -> StorageResult<Option<NoSnapshot>> {
        Ok(self.state.borrow().snapshot)
    }
}

/// Why an OmniPaxos loop run stopped without figures.
#[derive(Debug, thiserror::Error)]
pub enum OmniLoopError {
    /// The closed loop needs at least one client.
    #[error("at least one command must be in flight")]
    NoClients,
    /// OmniPaxos rejected the configuration.
    #[error("invalid OmniPaxos configuration: {0}")]
    Config(String),
    /// No server became a leader that every server follows.
    #[error("no OmniPaxos leader elected within {ELECTION_TICKS_MAX} ticks")]
    NoLeader,
    /// The leader refused an entry (OmniPaxos does so only once a reconfiguration is pending).
    #[error("the OmniPaxos leader refused an entry: {0}")]
    Propose(String),
    /// Nothing moved for too long.
    #[error("no progress: {outstanding} commands outstanding after {what}")]
    Stalled {
        /// Commands submitted and not decided at the leader.
        outstanding: usize,
        /// What timed out.
        what: &'static str,
    },
    /// A server's decided entries were trimmed before the harness read them.
    #[error("server {server} trimmed its log through {trimmed} before entry {index} was read")]
    TrimmedUnread {
        /// Position of the server (pid - 1).
        server: usize,
        /// The first entry not read.
        index: usize,
        /// The server's first held entry.
        trimmed: usize,
    },
    /// The servers' logs do not agree; the figures are void.
    #[error("the OmniPaxos servers' logs disagree, so no figure is reported")]
    Agreement(#[from] AgreementError),
}

/// The `batch_size` [`OmniLoopCluster::new`] gives OmniPaxos for `in_flight`
/// clients (see the module docs): 1 up to 64 in flight, `in_flight` above.
pub fn batch_size_for(in_flight: usize) -> usize {
    if in_flight <= 64 {
        1
    } else {
        in_flight
    }
}

/// Three OmniPaxos servers and their closed-loop clients, in one thread.
pub struct OmniLoopCluster {
    servers: Vec<OmniPaxos<OmniCommand, LoopStorage>>,
    /// A second handle on each server's storage, to read decisions in place.
    storage: Vec<LoopStorage>,
    /// Messages sent in the last round, delivered at the start of the next.
    in_transit: Vec<Message<OmniCommand>>,
    /// The buffer being delivered (kept to reuse its allocation).
    delivering: Vec<Message<OmniCommand>>,
    leader: usize,
    /// Per server: the log index up to which (exclusive) decisions were read.
    read_through: Vec<usize>,
    trimmed_through: usize,
    logs: Vec<AppliedLog>,
    submitted: Submitted,
    payload: Vec<u8>,
    /// Per client (index = client id - 1): its next sequence number.
    next_sequence: Vec<u64>,
    /// Commands submitted by clients and not yet appended at the leader.
    ready: Vec<OmniCommand>,
    /// Clients whose command was decided at the leader this round.
    just_completed: Vec<u32>,
    outstanding: usize,
    completed: u64,
    refill: bool,
    rounds: u64,
    batch_size: usize,
    /// Entries read by every server between two trims.
    trim_every: usize,
    /// Test hook: this server does not fold the entry at this log index.
    #[cfg(test)]
    skip_fold: Option<(usize, usize)>,
}

impl Rounds for OmniLoopCluster {
    type Error = OmniLoopError;

    fn round(&mut self) -> Result<bool, OmniLoopError> {
        OmniLoopCluster::round(self)
    }

    fn tick_all(&mut self) {
        OmniLoopCluster::tick_all(self)
    }

    fn stalled(&self, what: &'static str) -> OmniLoopError {
        OmniLoopError::Stalled { outstanding: self.outstanding, what }
    }
}

impl fmt::Debug for OmniLoopCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OmniLoopCluster")
            .field("leader", &self.leader)
            .field("batch_size", &self.batch_size)
            .field("outstanding", &self.outstanding)
            .field("completed", &self.completed)
            .field("read_through", &self.read_through)
            .field("trimmed_through", &self.trimmed_through)
            .field("logs", &self.logs)
            .finish_non_exhaustive()
    }
}

impl OmniLoopCluster {
    /// Builds three servers with the batching [`batch_size_for`] picks, elects a
    /// leader, and submits the first `in_flight` commands.
    pub fn new(in_flight: usize) -> Result<OmniLoopCluster, OmniLoopError> {
        OmniLoopCluster::with_batch_size(in_flight, batch_size_for(in_flight))
    }

    /// [`OmniLoopCluster::new`] with OmniPaxos's `batch_size` set to `batch_size`.
    pub fn with_batch_size(in_flight: usize, batch_size: usize) -> Result<OmniLoopCluster, OmniLoopError> {
        if in_flight == 0 {
            return Err(OmniLoopError::NoClients);
        }
        let nodes: Vec<NodeId> = (1..=SERVERS as NodeId).collect();
        let mut servers = Vec::with_capacity(SERVERS);
        let mut storage = Vec::with_capacity(SERVERS);
        for pid in &nodes {
            let config = OmniPaxosConfig {
                cluster_config: ClusterConfig { configuration_id: 1, nodes: nodes.clone(), flexible_quorum: None },
                server_config: ServerConfig {
                    pid: *pid,
                    election_tick_timeout: 1,
                    batch_size,
                    flush_batch_tick_timeout: 1,
                    ..ServerConfig::default()
                },
            };
            let log = LoopStorage::default();
            servers.push(config.build(log.clone()).map_err(|error| OmniLoopError::Config(error.to_string()))?);
            storage.push(log);
        }
        let mut cluster = OmniLoopCluster {
            servers,
            storage,
            in_transit: Vec::new(),
            delivering: Vec::new(),
            leader: 0,
            read_through: vec![0; SERVERS],
            trimmed_through: 0,
            logs: vec![AppliedLog::default(); SERVERS],
            submitted: Submitted::default(),
            payload: vec![0xA5; COMMAND_BYTES],
            next_sequence: vec![0; in_flight],
            ready: Vec::with_capacity(in_flight),
            just_completed: Vec::with_capacity(in_flight),
            outstanding: 0,
            completed: 0,
            refill: true,
            rounds: 0,
            batch_size,
            trim_every: TRIM_EVERY_ENTRIES,
            #[cfg(test)]
            skip_fold: None,
        };
        cluster.leader = cluster.elect()?;
        for client in 0..in_flight {
            cluster.submit(client);
        }
        Ok(cluster)
    }

    /// Ticks every server until all follow one leader that is in its accept
    /// phase, for [`STABLE_TICKS`] ticks in a row; returns its position.
    fn elect(&mut self) -> Result<usize, OmniLoopError> {
        let mut stable: Option<(usize, u32)> = None;
        for _ in 0..ELECTION_TICKS_MAX {
            self.tick_all();
            let mut rounds = 0;
            while self.round()? {
                rounds += 1;
                if rounds > IDLE_TICKS_MAX {
                    return Err(OmniLoopError::NoLeader);
                }
            }
            stable = match (self.agreed_leader(), stable) {
                (Some(leader), Some((previous, ticks))) if leader == previous => Some((leader, ticks + 1)),
                (Some(leader), _) => Some((leader, 1)),
                (None, _) => None,
            };
            if let Some((leader, ticks)) = stable {
                if ticks >= STABLE_TICKS {
                    return Ok(leader);
                }
            }
        }
        Err(OmniLoopError::NoLeader)
    }

    /// The position of the leader every server follows, once it accepts entries.
    fn agreed_leader(&self) -> Option<usize> {
        let (pid, _) = self.servers.first()?.get_current_leader()?;
        let leader = usize::try_from(pid).ok()?.checked_sub(1)?;
        let agreed = self.servers.iter().all(|server| server.get_current_leader() == Some((pid, true)));
        (agreed && leader < self.servers.len()).then_some(leader)
    }

    /// Advances every server by one tick.
    fn tick_all(&mut self) {
        for server in &mut self.servers {
            server.tick();
        }
    }

    /// The position of the leader clients submit to.
    pub fn leader(&self) -> usize {
        self.leader
    }

    /// OmniPaxos's `batch_size` in this cluster.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Trims once every server has read `entries` more decided entries
    /// (at least one), instead of [`TRIM_EVERY_ENTRIES`].
    pub fn set_trim_every(&mut self, entries: usize) {
        self.trim_every = entries.max(1);
    }

    /// Submits `client`'s next command: a fresh copy of the one payload buffer.
    fn submit(&mut self, client: usize) {
        let sequence = self.next_sequence[client];
        self.next_sequence[client] += 1;
        let client = client as u64 + 1;
        self.submitted.record(CommandId { client, sequence });
        self.ready.push(OmniCommand { client, sequence, payload: self.payload.clone() });
        self.outstanding += 1;
    }

    /// One round; returns whether anything happened.
    fn round(&mut self) -> Result<bool, OmniLoopError> {
        self.rounds += 1;
        let mut progress = false;
        if !self.ready.is_empty() {
            progress = true;
            let leader = &mut self.servers[self.leader];
            for command in self.ready.drain(..) {
                leader.append(command).map_err(|error| OmniLoopError::Propose(format!("{error:?}")))?;
            }
        }
        // Last round's messages, sender by sender, each in the order it was sent.
        std::mem::swap(&mut self.in_transit, &mut self.delivering);
        if !self.delivering.is_empty() {
            progress = true;
            for message in self.delivering.drain(..) {
                let to = message.get_receiver() as usize - 1;
                self.servers[to].handle_incoming(message);
            }
        }
        for server in &mut self.servers {
            server.take_outgoing_messages(&mut self.in_transit);
        }
        progress |= !self.in_transit.is_empty();
        progress |= self.read_decisions()?;
        if !self.just_completed.is_empty() {
            let mut completed = std::mem::take(&mut self.just_completed);
            for client in completed.drain(..) {
                self.outstanding -= 1;
                self.completed += 1;
                if self.refill {
                    self.submit(client as usize);
                }
            }
            self.just_completed = completed;
        }
        if self.rounds.is_multiple_of(16) {
            self.trim();
        }
        Ok(progress)
    }

    /// Folds every server's newly decided entries into its [`AppliedLog`]; the
    /// leader's also complete their clients' commands. Returns whether any were read.
    fn read_decisions(&mut self) -> Result<bool, OmniLoopError> {
        let mut read_any = false;
        for position in 0..self.servers.len() {
            let decided = self.servers[position].get_decided_idx();
            let from = self.read_through[position];
            if decided <= from {
                continue;
            }
            read_any = true;
            let state = self.storage[position].state.borrow();
            let trimmed = state.trimmed;
            let (Some(start), Some(end)) = (state.position(from), state.position(decided)) else {
                return Err(OmniLoopError::TrimmedUnread { server: position, index: from, trimmed });
            };
            let log = &mut self.logs[position];
            for (index, command) in (from..).zip(&state.entries[start..end]) {
                #[cfg(test)]
                if self.skip_fold == Some((position, index)) {
                    continue;
                }
                let index = index as u64;
                // One entry per log index: the index is its slot too.
                log.record(index, index, CommandId { client: command.client, sequence: command.sequence });
            }
            if position == self.leader {
                self.just_completed.extend(state.entries[start..end].iter().map(|command| (command.client - 1) as u32));
            }
            self.read_through[position] = decided;
        }
        Ok(read_any)
    }

    /// Trims every server's log through the lowest index all of them have read,
    /// once that is [`TRIM_EVERY_ENTRIES`] (or what [`OmniLoopCluster::set_trim_every`]
    /// set) past the last trim.
    fn trim(&mut self) {
        let Some(through) = self.read_through.iter().copied().min() else { return };
        if through >= self.trimmed_through + self.trim_every && self.servers[self.leader].trim(Some(through)).is_ok() {
            self.trimmed_through = through;
        }
    }

    /// Runs rounds until `done` holds (see [`run_rounds_until`]).
    fn run_until(
        &mut self,
        done: impl Fn(&OmniLoopCluster) -> bool,
        deadline: Instant,
        what: &'static str,
    ) -> Result<(), OmniLoopError> {
        run_rounds_until(self, done, Some(deadline), what)
    }

    /// Runs until `count` more commands are decided at the leader; returns how long that took.
    /// The pipeline stays full, so back-to-back calls measure steady state (criterion's `iter_custom`).
    pub fn run_commands(&mut self, count: u64) -> Result<Duration, OmniLoopError> {
        let target = self.completed + count;
        let start = Instant::now();
        self.run_until(|cluster| cluster.completed >= target, start + FINISH_TIMEOUT, "run_commands")?;
        Ok(start.elapsed())
    }

    /// Stops submitting, lets every outstanding command be decided, lets every
    /// server learn every decision, and checks the logs (see [`crate::check`]).
    pub fn finish(&mut self) -> Result<(), OmniLoopError> {
        self.refill = false;
        let deadline = Instant::now() + FINISH_TIMEOUT;
        self.run_until(|cluster| cluster.outstanding == 0, deadline, "draining")?;
        let target = self.submitted.count as usize;
        // Followers learn the last decisions from the leader's next message: keep going.
        self.run_until(|cluster| cluster.read_through.iter().all(|read| *read >= target), deadline, "catch-up")?;
        check_agreement(&self.logs, &self.submitted)?;
        Ok(())
    }

    /// What each server decided so far, folded.
    pub fn logs(&self) -> &[AppliedLog] {
        &self.logs
    }

    /// What the clients submitted so far.
    pub fn submitted(&self) -> &Submitted {
        &self.submitted
    }

    /// Commands decided at the leader so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// The index through which every server's log has been trimmed.
    pub fn trimmed_through(&self) -> usize {
        self.trimmed_through
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_and_check(in_flight: usize, commands: u64) -> OmniLoopCluster {
        let mut cluster = OmniLoopCluster::new(in_flight).expect("the OmniPaxos cluster starts");
        cluster.run_commands(commands).expect("commands are decided");
        assert!(cluster.completed() >= commands);
        cluster.finish().expect("the servers' logs agree");
        let submitted = cluster.submitted().count;
        assert_eq!(submitted, cluster.completed(), "every submitted command was decided at the leader");
        assert!(cluster.logs().iter().all(|log| log.count == submitted));
        cluster
    }

    #[test]
    fn one_in_flight_agrees_and_trims() {
        let cluster = run_and_check(1, 5_000);
        assert_eq!(cluster.batch_size(), 1);
        let cluster = run_and_check(1, 2 * TRIM_EVERY_ENTRIES as u64);
        assert!(cluster.trimmed_through() >= TRIM_EVERY_ENTRIES, "the log was trimmed: {cluster:?}");
        for storage in &cluster.storage {
            let state = storage.state.borrow();
            assert!(state.trimmed >= TRIM_EVERY_ENTRIES, "every server trimmed: {}", state.trimmed);
        }
    }

    #[test]
    fn a_trim_interval_set_by_hand_is_the_one_used() {
        let mut cluster = OmniLoopCluster::new(1).expect("the OmniPaxos cluster starts");
        cluster.set_trim_every(1024);
        cluster.run_commands(3_000).expect("commands are decided");
        cluster.finish().expect("the servers' logs agree");
        let trimmed = cluster.trimmed_through();
        assert!(trimmed >= 2048, "trimmed every 1,024 entries read: {cluster:?}");
        assert!(trimmed < TRIM_EVERY_ENTRIES, "not at the default interval: {cluster:?}");
    }

    #[test]
    fn sixty_four_in_flight_agrees() {
        run_and_check(64, 5_000);
    }

    #[test]
    fn batched_runs_agree() {
        for (in_flight, batch_size) in [(1_024, 1_024), (1_000, 64), (100, 7)] {
            let mut cluster = OmniLoopCluster::with_batch_size(in_flight, batch_size).expect("the cluster starts");
            cluster.run_commands(20_000).expect("commands are decided");
            cluster.finish().expect("the servers' logs agree");
        }
    }

    #[test]
    fn reading_storage_in_place_matches_omnipaxos_read_api() {
        let cluster = run_and_check(64, 3_000);
        assert_eq!(cluster.trimmed_through(), 0, "nothing trimmed yet, so the whole log can be read back");
        for (position, server) in cluster.servers.iter().enumerate() {
            let mut log = AppliedLog::default();
            let entries = server.read_decided_suffix(0).expect("the decided log is readable");
            for (index, entry) in entries.into_iter().enumerate() {
                let omnipaxos::util::LogEntry::Decided(command) = entry else {
                    panic!("server {position}: entry {index} is not a decided entry: {entry:?}");
                };
                let index = index as u64;
                log.record(index, index, CommandId { client: command.client, sequence: command.sequence });
            }
            assert_eq!(log, cluster.logs()[position], "server {position}");
        }
    }

    #[test]
    fn finish_detects_a_tampered_log() {
        let mut cluster = OmniLoopCluster::new(64).expect("the OmniPaxos cluster starts");
        cluster.skip_fold = Some((2, 1_000));
        cluster.run_commands(5_000).expect("commands are decided");
        let error = cluster.finish().expect_err("a server that skipped an entry fails the check");
        assert!(
            matches!(error, OmniLoopError::Agreement(AgreementError::Count { replica: 2, .. })),
            "unexpected error: {error}"
        );
    }

    #[test]
    fn zero_in_flight_is_refused() {
        assert!(matches!(OmniLoopCluster::new(0), Err(OmniLoopError::NoClients)));
    }
}
