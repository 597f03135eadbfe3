//! The node: an async driver that owns a transport, a storage and a replica, and
//! offers the application a replicated log (seed 004): `add`, `get`, a stream of
//! chosen entries, status, and leader-change events.
//!
//! It needs no particular runtime. [`Node::start`] returns a handle and a driver
//! future; spawn the driver on tokio, smol, or a thread with
//! `futures::executor::block_on`. Timers come from `futures-timer`, which works
//! under every executor.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::{FusedFuture, FutureExt};
use futures::{SinkExt, StreamExt};
use rustc_hash::FxHashSet;

use crate::actions::{Actions, Decided, Event, PersistThen};
use crate::ballot::{NodeId, Slot};
use crate::config::{Config, ConfigError};
use crate::message::{Command, CommandId, Message, Outgoing};
use crate::replica::{new_replica, ProposeError, Replica, Status};
use crate::storage::Storage;
use crate::transport::Transport;

/// Most chosen records the driver holds back from storage before it writes them
/// anyway (see [`PersistThen::is_deferrable`]).
const DEFERRED_OPS_MAX: usize = 4096;

/// Most ops queued behind the write in flight before the driver stops taking
/// input and waits for the disk: with [`QUEUED_MESSAGES_MAX`] and
/// [`QUEUED_BYTES_MAX`], what keeps a slow disk from letting the queue, and the
/// messages waiting on it, grow without bound.
const QUEUED_OPS_MAX: usize = 4096;
/// Most messages waiting on queued writes (replies to retransmissions add
/// messages but no ops); see [`QUEUED_OPS_MAX`].
const QUEUED_MESSAGES_MAX: usize = 4096;
/// Most bytes of commands in the queued ops, counted as [`op_bytes`] does; see
/// [`QUEUED_OPS_MAX`]. Well under what one file-storage record may hold.
const QUEUED_BYTES_MAX: usize = 16 << 20;

/// A write to storage in flight, owning what it writes; it yields the messages
/// that waited on it.
type Write<E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Outgoing>, E>> + Send>>;

/// Driver settings that involve real time; the replica itself only counts ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// Wall-clock length of one tick.
    pub tick_interval: Duration,
    /// How long `add` and `add_many` wait for their commands to be chosen before
    /// giving up. The driver enforces it on its ticks, so it is accurate to one
    /// `tick_interval`; no timer is armed per command.
    pub propose_timeout: Duration,
    /// Most requests waiting for the driver; callers wait beyond it.
    pub requests_max: usize,
    /// Most entries buffered per subscriber; a subscriber that falls further
    /// behind is disconnected (it can resume with `get`).
    pub subscriber_buffer_max: usize,
    /// Most inputs handled before the driver writes and sends (group commit).
    pub inputs_per_round_max: usize,
    /// How many recently applied command ids remember their log index, so a
    /// retried `add` returns the original index: at least the last this many
    /// (up to twice as many are held).
    pub recent_ids_max: usize,
    /// Compact the log automatically, with an empty snapshot, whenever this many
    /// slots were applied since the last compaction. For applications whose state
    /// lives outside the node (or that need no state transfer); others call
    /// [`NodeHandle::compact`] with their own state. `None` keeps the whole log.
    pub auto_compact_slots: Option<u64>,
    /// Also compact automatically (as [`NodeOptions::auto_compact_slots`] does)
    /// whenever this many commands were applied since the last compaction: with
    /// batching, one slot can hold a thousand commands, so a bound in slots alone
    /// does not bound memory. `None` does not count commands.
    pub auto_compact_commands: Option<u64>,
    /// Also compact automatically (as [`NodeOptions::auto_compact_slots`] does)
    /// whenever the commands applied since the last compaction (or since the node
    /// started) carry this many payload bytes: with large commands, a bound in
    /// commands does not bound memory either. `None` does not count bytes. The
    /// slots kept after a compaction for lagging peers come on top
    /// (`Config::compaction_keep_bytes_max`).
    pub auto_compact_bytes: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            tick_interval: Duration::from_millis(10),
            propose_timeout: Duration::from_secs(10),
            requests_max: 4096,
            subscriber_buffer_max: 65_536,
            inputs_per_round_max: 1024,
            recent_ids_max: 65_536,
            auto_compact_slots: None,
            auto_compact_commands: None,
            auto_compact_bytes: None,
        }
    }
}

/// Why a node operation failed, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid; fix it and start again.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// No leader is known yet, or this node cannot reach it; retry, or ask `leader_hint`.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node believes in.
        leader_hint: Option<NodeId>,
    },
    /// The proposal queue is full; retry after a pause.
    #[error("too many pending commands; retry later")]
    Busy,
    /// The command was not chosen in time. Retrying with the same id is safe:
    /// it is applied at most once.
    #[error("command not chosen within the timeout; retry with the same id")]
    Timeout,
    /// The node has stopped.
    #[error("node stopped")]
    Stopped,
    /// A durable write failed; the node stopped rather than answer as if it succeeded.
    #[error("storage failed: {0}")]
    Storage(Box<dyn std::error::Error + Send + Sync>),
    /// The transport failed for good.
    #[error("transport failed: {0}")]
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

impl From<ProposeError> for NodeError {
    fn from(error: ProposeError) -> Self {
        match error {
            ProposeError::NotLeader { leader_hint } => NodeError::NotLeader { leader_hint },
            ProposeError::Busy { .. } => NodeError::Busy,
        }
    }
}

/// One applied command and its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position among applied commands, from 0, dense.
    pub index: u64,
    /// The slot whose value carried it.
    pub slot: Slot,
    /// The command.
    pub command: Command,
    /// Whether it is the slot's last fresh command: an application's state
    /// through this entry is what [`NodeHandle::compact`] at `slot` takes.
    pub last_in_slot: bool,
}

/// What [`NodeHandle::subscribe_from`] yields, in log order: everything an
/// application needs to build its state from a point on, across compactions,
/// snapshot installs and restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Replace the application's state with `snapshot.data` (what the
    /// application gave [`NodeHandle::compact`]; empty for an automatic
    /// compaction): it stands for every entry before `snapshot.next_index`, and
    /// the entries go on from there.
    Snapshot(crate::storage::Snapshot),
    /// The next applied command.
    Entry(Entry),
}

/// Where a submission's answer goes: one index (`add`) or one per command (`add_many`).
enum AddReply {
    One(oneshot::Sender<Result<u64, NodeError>>),
    Many(oneshot::Sender<Result<Vec<u64>, NodeError>>),
}

impl AddReply {
    fn is_canceled(&self) -> bool {
        match self {
            AddReply::One(reply) => reply.is_canceled(),
            AddReply::Many(reply) => reply.is_canceled(),
        }
    }

    fn answer(self, indexes: Vec<u64>, single: u64) {
        match self {
            AddReply::One(reply) => drop(reply.send(Ok(single))),
            AddReply::Many(reply) => drop(reply.send(Ok(indexes))),
        }
    }

    fn fail(self, error: NodeError) {
        match self {
            AddReply::One(reply) => drop(reply.send(Err(error))),
            AddReply::Many(reply) => drop(reply.send(Err(error))),
        }
    }
}

enum Request {
    Add { commands: Vec<Command>, reply: AddReply },
    AddOne { command: Command, reply: AddReply },
    Get { index: u64, reply: oneshot::Sender<Option<Command>> },
    Status { reply: oneshot::Sender<Status> },
    Subscribe { subscriber: Subscriber<Entry> },
    SubscribeFrom { from_index: u64, subscriber: Subscriber<Applied> },
    Events { events: mpsc::Sender<Event> },
    Compact { through_slot: Slot, data: Vec<u8>, reply: oneshot::Sender<Result<(), crate::CompactError>> },
    Shutdown,
}

/// The application's side of a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    node_id: NodeId,
    requests: mpsc::Sender<Request>,
    /// One sender all clones share for the no-wait path (see [`NodeHandle::request`]).
    shared_requests: std::sync::Arc<std::sync::Mutex<mpsc::Sender<Request>>>,
    options: NodeOptions,
}

/// Starts nodes.
pub struct Node;

impl Node {
    /// Loads `storage`, builds the replica, and returns a handle plus the driver
    /// future, which the caller spawns on any executor. The driver runs until
    /// [`NodeHandle::shutdown`], or fails with the storage or transport error that
    /// stopped it.
    pub async fn start<T, S>(
        config: Config,
        transport: T,
        storage: S,
    ) -> Result<(NodeHandle, impl std::future::Future<Output = Result<(), NodeError>> + Send + 'static), NodeError>
    where
        T: Transport + 'static,
        S: Storage + 'static,
    {
        Node::start_with(config, NodeOptions::default(), transport, storage).await
    }

    /// [`Node::start`] with explicit driver options.
    pub async fn start_with<T, S>(
        config: Config,
        options: NodeOptions,
        transport: T,
        storage: S,
    ) -> Result<(NodeHandle, impl std::future::Future<Output = Result<(), NodeError>> + Send + 'static), NodeError>
    where
        T: Transport + 'static,
        S: Storage + 'static,
    {
        config.validate()?;
        let durable = storage.load().await.map_err(|error| NodeError::Storage(Box::new(error)))?;
        let node_id = config.node_id;
        let resubmit_ticks = config.election_timeout_ticks;
        let replica = new_replica(config, &durable)?;
        let (requests, inbox) = mpsc::channel(options.requests_max);
        let driver = Driver {
            node_id,
            replica,
            transport: std::sync::Arc::new(transport),
            storage: std::sync::Arc::new(storage),
            options: options.clone(),
            local: VecDeque::new(),
            waiters: HashMap::with_hasher(IdHasherBuilder::new()),
            submissions: Vec::new(),
            free_submissions: Vec::new(),
            submission_serial: 0,
            deadlines: VecDeque::new(),
            timeout_ticks: ticks_for(options.propose_timeout, options.tick_interval),
            proposals: Vec::new(),
            ticks: 0,
            resubmit_ticks,
            recent: Recent::new(options.recent_ids_max),
            subscribers: Vec::new(),
            appliers: Vec::new(),
            event_watchers: Vec::new(),
            deferred: PersistThen::default(),
            queued: PersistThen::default(),
            queued_bytes: 0,
            applied_bytes: 0,
        };
        let shared_requests = std::sync::Arc::new(std::sync::Mutex::new(requests.clone()));
        let handle = NodeHandle { node_id, requests, shared_requests, options };
        // Every event the replica and driver log carries the node's id.
        let span = tracing::info_span!("paxos_node", node = node_id);
        Ok((handle, tracing::Instrument::instrument(driver.run(inbox), span)))
    }
}

impl NodeHandle {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Queues `request` for the driver. While the queue has room this takes a
    /// shared sender for a moment (no sender is cloned per request); when it is
    /// full, the caller waits for room on a sender of its own.
    async fn request(&self, request: Request) -> Result<(), NodeError> {
        let refused = {
            let mut shared = self.shared_requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match shared.try_send(request) {
                Ok(()) => return Ok(()),
                Err(error) if error.is_disconnected() => return Err(NodeError::Stopped),
                Err(error) => error.into_inner(),
            }
        };
        self.requests.clone().send(refused).await.map_err(|_| NodeError::Stopped)
    }

    /// Proposes `command` and returns its log index once it is chosen and applied
    /// here (seed 004's `add(item) -> index`). A follower forwards to the leader.
    /// While no leader is known, the node retries until the propose timeout. Retrying
    /// a command with the same [`CommandId`] is safe: it is applied at most once.
    pub async fn add(&self, command: Command) -> Result<u64, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::AddOne { command, reply: AddReply::One(reply) }).await?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// Proposes `commands` together and returns their log indexes, in the order
    /// given, once every one is chosen and applied here. One request, one answer
    /// and (usually) one slot for the lot: the way to pipeline many commands from
    /// one task, far cheaper per command than as many concurrent [`add`](Self::add)s.
    ///
    /// On an error (`Timeout`, `Busy`, `NotLeader`) some of the commands may
    /// have been applied; retrying the same commands (same ids) is safe and
    /// returns the indexes of those already applied.
    pub async fn add_many(&self, commands: Vec<Command>) -> Result<Vec<u64>, NodeError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.request(Request::Add { commands, reply: AddReply::Many(reply) }).await?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// The applied command at log `index`, if this node has it (seed 004's `get`).
    /// Eventually consistent: a lagging node may not have it yet.
    pub async fn get(&self, index: u64) -> Result<Option<Command>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Get { index, reply }).await?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// A snapshot of the replica's role, leader, ballot, applied point and peer lag.
    pub async fn status(&self) -> Result<Status, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Status { reply }).await?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// Every command applied from now on, in log order (seed 004's "event
    /// triggered each time an item is added").
    pub async fn subscribe(&self) -> Result<impl futures::Stream<Item = Entry>, NodeError> {
        // Entries travel in one batch per decided slot; the stream counts the
        // entries sent and not yet taken, against `subscriber_buffer_max`.
        let (subscriber, stream) = Subscriber::new();
        self.request(Request::Subscribe { subscriber }).await?;
        Ok(stream)
    }

    /// The log from entry `from_index` on, in order and then as it grows: what
    /// an application builds its state from, after a restart too. When entries
    /// from `from_index` were compacted away, the stream starts with the
    /// snapshot that stands for them ([`Applied::Snapshot`]), then the entries
    /// after it; a snapshot installed later (this replica lagged too far) comes
    /// in its place among the entries, so an application that reads this stream
    /// does not also take [`Event::SnapshotInstalled`] from [`NodeHandle::events`].
    /// An application that keeps its own state durably passes the index it holds
    /// through plus one (a later index than the replica has applied waits for
    /// it); one that does not, 0.
    ///
    /// A snapshot's data is what the application gave [`NodeHandle::compact`]:
    /// compact with your state at an entry whose `last_in_slot` is set, and
    /// leave `NodeOptions::auto_compact_*` off, since automatic compactions
    /// carry no application data. The stream holds at most
    /// `subscriber_buffer_max` items not yet taken; one that falls behind is not
    /// ended, it goes on from the log as it takes its items, or from the
    /// snapshot if the log was compacted past it meanwhile.
    pub async fn subscribe_from(&self, from_index: u64) -> Result<impl futures::Stream<Item = Applied>, NodeError> {
        let (subscriber, stream) = Subscriber::new();
        self.request(Request::SubscribeFrom { from_index, subscriber }).await?;
        Ok(stream)
    }

    /// Leader changes and dropped commands, from now on.
    pub async fn events(&self) -> Result<impl futures::Stream<Item = Event>, NodeError> {
        let (events, stream) = mpsc::channel(self.options.subscriber_buffer_max);
        self.request(Request::Events { events }).await?;
        Ok(stream)
    }

    /// Replaces the log through `through_slot` (an applied slot, as given in
    /// [`Entry::slot`]) by a snapshot holding the application's `data`, so storage
    /// and memory stop growing. A replica that later needs those slots is sent
    /// them from the newest ones kept in memory
    /// ([`Config::compaction_keep_slots`](crate::Config::compaction_keep_slots)),
    /// or, if it lags further, the snapshot (as [`Event::SnapshotInstalled`]). `Ok` says the
    /// snapshot is taken; it reaches storage with the node's next write, and a
    /// crash before that leaves the log whole, which is as safe.
    pub async fn compact(
        &self,
        through_slot: Slot,
        data: Vec<u8>,
    ) -> Result<Result<(), crate::CompactError>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Compact { through_slot, data, reply }).await?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// Asks the driver to stop after finishing the round it is in.
    pub fn shutdown(&self) {
        let _ = self.requests.clone().try_send(Request::Shutdown);
    }
}

/// One `subscribe` or `subscribe_from` stream: batches of items, and how many
/// items are sent and not yet taken.
struct Subscriber<T> {
    entries: mpsc::UnboundedSender<Vec<T>>,
    buffered: std::sync::Arc<AtomicUsize>,
}

impl<T> Subscriber<T> {
    /// A subscriber and the stream of what it is sent, one item at a time.
    fn new() -> (Subscriber<T>, impl futures::Stream<Item = T>) {
        let (entries, stream) = mpsc::unbounded();
        let buffered = std::sync::Arc::new(AtomicUsize::new(0));
        let taken = buffered.clone();
        let stream = stream.flat_map(move |batch: Vec<T>| {
            taken.fetch_sub(batch.len(), Ordering::Relaxed);
            futures::stream::iter(batch)
        });
        (Subscriber { entries, buffered }, stream)
    }

    /// Sends `batch`; false when the subscriber went away or would exceed `limit` items buffered.
    fn offer(&self, batch: Vec<T>, limit: usize) -> bool {
        let count = batch.len();
        if self.buffered.load(Ordering::Relaxed) + count > limit {
            return false;
        }
        self.buffered.fetch_add(count, Ordering::Relaxed);
        self.entries.unbounded_send(batch).is_ok()
    }
}

/// A command proposed through this node and not yet applied here.
struct Waiting {
    command: Command,
    /// Where its index goes: usually one submission, more when the same id was
    /// submitted again while in flight.
    target: Target,
    more_targets: Vec<Target>,
    proposed_at: u64,
    /// Times it was offered again while not held by the replica: each doubles
    /// the wait before the next (up to 4 timeouts), so a node whose commands a
    /// busy leader holds (a follower forwarding them) sends fewer copies, and
    /// one lost on the way is still offered again within 4 timeouts.
    offers: u32,
}

impl Waiting {
    fn targets(&self) -> impl Iterator<Item = Target> + '_ {
        std::iter::once(self.target).chain(self.more_targets.iter().copied())
    }
}

/// One position of one submission (`add` or `add_many`). `serial` tells a live
/// submission from a later one that reused its slot.
#[derive(Clone, Copy, Debug)]
struct Target {
    submission: usize,
    serial: u64,
    position: usize,
}

/// One `add`/`add_many` call waiting for its commands' indexes.
struct Submission {
    serial: u64,
    /// One per command for `add_many`; empty for `add`, whose index is `single`.
    indexes: Vec<u64>,
    single: u64,
    remaining: usize,
    reply: AddReply,
}

/// The log index of recently applied command ids, in two generations: ids go
/// into `current`; once it holds `generation_max`, it becomes `previous` and the
/// old `previous` is dropped whole. The last `generation_max` ids are always
/// remembered (at most twice that many), at one table insert per applied command
/// and no eviction per command (which costed a second random memory access).
struct Recent {
    current: HashMap<CommandId, u64, IdHasherBuilder>,
    previous: HashMap<CommandId, u64, IdHasherBuilder>,
    generation_max: usize,
}

impl Recent {
    fn new(generation_max: usize) -> Recent {
        let hasher = IdHasherBuilder::new();
        Recent {
            current: HashMap::with_hasher(hasher.clone()),
            previous: HashMap::with_hasher(hasher),
            generation_max: generation_max.max(1),
        }
    }

    fn get(&self, id: &CommandId) -> Option<u64> {
        self.current.get(id).or_else(|| self.previous.get(id)).copied()
    }

    fn insert(&mut self, id: CommandId, index: u64) {
        if self.current.len() >= self.generation_max {
            let fresh = HashMap::with_hasher(self.current.hasher().clone());
            self.previous = std::mem::replace(&mut self.current, fresh);
        }
        self.current.insert(id, index);
    }
}

/// Whether anyone still waits on `target`.
fn wanted(submissions: &[Option<Submission>], target: Target) -> bool {
    matches!(
        submissions.get(target.submission),
        Some(Some(submission)) if submission.serial == target.serial && !submission.reply.is_canceled()
    )
}

/// `propose_timeout` in ticks, rounded up, at least one.
fn ticks_for(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    timeout.as_nanos().div_ceil(tick).clamp(1, u64::MAX as u128) as u64
}

/// The error a submission gets when its round's proposal was refused.
fn refusal(error: &NodeError) -> NodeError {
    match error {
        NodeError::NotLeader { leader_hint } => NodeError::NotLeader { leader_hint: *leader_hint },
        _ => NodeError::Busy,
    }
}

/// Hashes command ids for the driver's maps: a folded 64x64-bit multiply keyed
/// per driver from the standard library's random state, so ids chosen by clients
/// cannot be aimed at one bucket without knowing the key; several times cheaper
/// than SipHash for two integers.
#[derive(Clone)]
struct IdHasherBuilder {
    key: u64,
}

impl IdHasherBuilder {
    fn new() -> IdHasherBuilder {
        IdHasherBuilder { key: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1 }
    }
}

impl BuildHasher for IdHasherBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.key }
    }
}

struct IdHasher {
    state: u64,
}

impl IdHasher {
    fn mix(&mut self, word: u64) {
        const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
        let product = u128::from(self.state ^ word) * u128::from(MULTIPLIER);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.mix(word);
    }

    fn finish(&self) -> u64 {
        // One more round so the last word reaches the high bits hashbrown uses.
        let product = u128::from(self.state) * u128::from(0xA076_1D64_78BD_642F_u64);
        (product as u64) ^ ((product >> 64) as u64)
    }
}

struct Driver<T, S> {
    node_id: NodeId,
    replica: Box<dyn Replica>,
    transport: std::sync::Arc<T>,
    /// Shared with the write in flight, which owns a handle so the driver goes on
    /// taking messages and requests while the disk syncs.
    storage: std::sync::Arc<S>,
    options: NodeOptions,
    /// Messages this node sent to itself, delivered without the transport.
    local: VecDeque<Message>,
    waiters: HashMap<CommandId, Waiting, IdHasherBuilder>,
    /// Submissions waiting for indexes, by slot; `None` is free (listed in `free_submissions`).
    submissions: Vec<Option<Submission>>,
    free_submissions: Vec<usize>,
    submission_serial: u64,
    /// When each submission times out, in ticks: `(deadline, slot, serial)`,
    /// earliest first (every submission gets the same timeout). Entries of
    /// answered submissions are skipped when reached, and dropped in bulk
    /// whenever they outnumber the live ones (see [`Driver::on_add`]).
    deadlines: VecDeque<(u64, usize, u64)>,
    timeout_ticks: u64,
    /// Commands added during the current round, proposed together at its end
    /// so that they share a slot (batching) instead of taking one slot each.
    proposals: Vec<Command>,
    ticks: u64,
    resubmit_ticks: u64,
    recent: Recent,
    subscribers: Vec<Subscriber<Entry>>,
    /// `subscribe_from` streams, each with the index of the next entry it takes.
    appliers: Vec<(Subscriber<Applied>, u64)>,
    event_watchers: Vec<mpsc::Sender<Event>>,
    /// Chosen records held back from storage (see [`PersistThen::is_deferrable`]):
    /// they go out in front of the next write that must be durable, or at the
    /// next tick or shutdown, whichever comes first.
    deferred: PersistThen,
    /// Writes (and the messages waiting on them) made while another write was in
    /// flight: they go to storage as one write, in order, once that one is done.
    queued: PersistThen,
    /// Bytes of commands in `queued`, roughly ([`op_bytes`]).
    queued_bytes: usize,
    /// Payload bytes of the commands applied since the last compaction (counted
    /// only under [`NodeOptions::auto_compact_bytes`]).
    applied_bytes: u64,
}

/// Roughly how many bytes `op` puts in a write: its commands' payloads and ids,
/// and the snapshot's application data and client windows.
fn op_bytes(op: &crate::storage::StorageOp) -> usize {
    use crate::storage::StorageOp;
    const FIXED: usize = 32;
    let value_bytes = |value: &crate::message::Value| {
        value.commands().iter().map(|command| command.payload.len() + FIXED).sum::<usize>()
    };
    match op {
        StorageOp::Accept { value, .. } | StorageOp::Chosen { value: Some(value), .. } => FIXED + value_bytes(value),
        StorageOp::Compact(snapshot) => FIXED + snapshot.data.len() + snapshot.clients.len() * FIXED,
        _ => FIXED,
    }
}

impl<T: Transport, S: Storage + 'static> Driver<T, S> {
    /// The driver loop. Storage writes overlap everything else: one write is in
    /// flight at a time (so writes reach storage in order), and what the replica
    /// asks to write meanwhile is queued and goes out as the next write, which
    /// is the group commit. A message that must wait for a write (seed 001: a
    /// promise or an accept leaves only once durable) is released when that
    /// write completes, never before.
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) -> Result<(), NodeError> {
        tracing::info!(node = self.node_id, "node started");
        let actions = self.replica.take_actions();
        self.carry_out(actions);
        self.settle();
        let mut writing = self.next_write()?;
        let mut ticker = futures_timer::Delay::new(self.options.tick_interval).fuse();
        let transport = self.transport.clone();
        let mut receive = transport.recv().fuse();
        loop {
            if !writing.is_terminated() && self.queue_is_full() {
                // The disk is behind: take no more input until it catches up.
                let released = (&mut writing).await;
                self.written(released)?;
                self.settle();
                writing = self.next_write()?;
                continue;
            }
            let mut stop = false;
            let mut inputs = 0;
            // Wait for one input, then take whatever else is ready, up to a bound,
            // so one write and one round of sends cover many inputs.
            // The ticker comes first: under constant load, ticks (heartbeats,
            // retransmission, elections) must not starve behind messages. A finished
            // write comes next: the messages it releases are what others wait for.
            futures::select_biased! {
                _ = ticker => {
                    self.replica.tick();
                    self.ticks += 1;
                    self.expire();
                    self.resubmit(false);
                    self.flush_deferred();
                    ticker = futures_timer::Delay::new(self.options.tick_interval).fuse();
                }
                released = writing => self.written(released)?,
                received = receive => {
                    self.on_received(received)?;
                    receive = transport.recv().fuse();
                    inputs += 1;
                }
                request = requests.next() => match request {
                    Some(request) => stop |= self.on_request(request),
                    None => stop = true,
                },
            }
            while !stop && inputs < self.options.inputs_per_round_max {
                if let Some(received) = (&mut receive).now_or_never() {
                    self.on_received(received)?;
                    receive = transport.recv().fuse();
                    inputs += 1;
                    continue;
                }
                match requests.try_recv() {
                    Ok(request) => {
                        stop |= self.on_request(request);
                        inputs += 1;
                    }
                    Err(mpsc::TryRecvError::Closed) => stop = true,
                    Err(_) => break,
                }
            }
            self.propose_round();
            self.settle();
            if writing.is_terminated() {
                writing = self.next_write()?;
            }
            if stop {
                // Everything asked for is written before the node reports it stopped.
                loop {
                    self.flush_deferred();
                    if writing.is_terminated() {
                        writing = self.next_write()?;
                    }
                    if writing.is_terminated() {
                        // A write that finished at once may have released messages
                        // that asked for more (chosen records): go round again.
                        if self.deferred.is_empty() && self.queued.is_empty() {
                            break;
                        }
                        continue;
                    }
                    let released = (&mut writing).await;
                    self.written(released)?;
                    self.settle();
                }
                tracing::info!(node = self.node_id, "node stopped");
                return Ok(());
            }
        }
    }

    /// Whether the writes queued behind the one in flight reached a bound: the
    /// driver then takes no input until the disk catches up.
    fn queue_is_full(&self) -> bool {
        self.queued.ops().len() >= QUEUED_OPS_MAX
            || self.queued.waiting_messages() >= QUEUED_MESSAGES_MAX
            || self.queued_bytes >= QUEUED_BYTES_MAX
    }

    /// Lets the replica handle the messages it sent itself, and carries out what
    /// it asks for, until it asks for nothing more.
    fn settle(&mut self) {
        loop {
            while let Some(message) = self.local.pop_front() {
                self.replica.on_message(self.node_id, message);
            }
            let actions = self.replica.take_actions();
            if actions.is_empty() {
                self.fill_appliers();
                return;
            }
            self.carry_out(actions);
        }
    }

    /// Starts writing what is queued, if anything is and nothing else is in
    /// flight (the caller checks). A write that finishes at once, as memory
    /// storage's does, releases its messages here and the next write starts: the
    /// driver waits for a disk, never for an in-memory store.
    fn next_write(&mut self) -> Result<futures::future::Fuse<Write<S::Error>>, NodeError> {
        loop {
            if self.queued.is_empty() {
                return Ok(futures::future::Fuse::terminated());
            }
            let batch = std::mem::take(&mut self.queued);
            self.queued_bytes = 0;
            let storage = std::sync::Arc::clone(&self.storage);
            let mut write: Write<S::Error> = Box::pin(async move { batch.persist(&*storage).await });
            match (&mut write).now_or_never() {
                Some(released) => {
                    self.written(released)?;
                    self.settle();
                }
                None => return Ok(write.fuse()),
            }
        }
    }

    /// A write finished: sends the messages that waited on it, or stops the node
    /// if it failed (it never replies as if the write had succeeded).
    fn written(&mut self, released: Result<Vec<Outgoing>, S::Error>) -> Result<(), NodeError> {
        let released = released.map_err(|error| {
            tracing::error!(node = self.node_id, %error, "durable write failed; stopping");
            NodeError::Storage(Box::new(error))
        })?;
        for outgoing in released {
            self.dispatch(outgoing);
        }
        Ok(())
    }

    /// Proposes the commands added this round as one batch. If the replica
    /// refuses because no leader is known, they keep waiting and are offered
    /// again when one is (or after an election timeout), within the propose
    /// timeout; on any other refusal their callers get the error at once.
    fn propose_round(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        let commands = std::mem::take(&mut self.proposals);
        let ids: Vec<CommandId> = commands.iter().map(|command| command.id).collect();
        match self.replica.propose(commands) {
            Ok(()) => {}
            Err(ProposeError::NotLeader { leader_hint: None }) => {
                tracing::debug!(node = self.node_id, commands = ids.len(), "no leader known; commands wait for one");
            }
            Err(error) => {
                let error = NodeError::from(error);
                for id in ids {
                    if let Some(waiting) = self.waiters.remove(&id) {
                        for target in waiting.targets() {
                            self.fail(target.submission, target.serial, refusal(&error));
                        }
                    }
                }
            }
        }
    }

    /// Starts a submission of `count` commands; returns its slot and serial.
    fn open_submission(&mut self, count: usize, reply: AddReply) -> (usize, u64) {
        self.submission_serial += 1;
        let serial = self.submission_serial;
        let indexes = match reply {
            AddReply::One(_) => Vec::new(),
            AddReply::Many(_) => vec![0; count],
        };
        let submission = Submission { serial, indexes, single: 0, remaining: count, reply };
        let slot = match self.free_submissions.pop() {
            Some(slot) => {
                self.submissions[slot] = Some(submission);
                slot
            }
            None => {
                self.submissions.push(Some(submission));
                self.submissions.len() - 1
            }
        };
        (slot, serial)
    }

    fn live_submission(&mut self, slot: usize, serial: u64) -> Option<&mut Submission> {
        self.submissions.get_mut(slot)?.as_mut().filter(|submission| submission.serial == serial)
    }

    fn close_submission(&mut self, slot: usize) -> Option<Submission> {
        let submission = self.submissions.get_mut(slot)?.take()?;
        self.free_submissions.push(slot);
        Some(submission)
    }

    /// Records `index` for `target`; answers the submission once it is complete.
    fn resolve(&mut self, target: Target, index: u64) {
        let Some(submission) = self.live_submission(target.submission, target.serial) else { return };
        match submission.indexes.get_mut(target.position) {
            Some(slot) => *slot = index,
            None => submission.single = index,
        }
        submission.remaining -= 1;
        if submission.remaining == 0 {
            if let Some(submission) = self.close_submission(target.submission) {
                submission.reply.answer(submission.indexes, submission.single);
            }
        }
    }

    /// Answers a live submission with `error`. Its other commands stay proposed;
    /// their waiters are dropped at the next tick (see [`Driver::resubmit`]).
    fn fail(&mut self, slot: usize, serial: u64, error: NodeError) {
        if self.live_submission(slot, serial).is_some() {
            if let Some(submission) = self.close_submission(slot) {
                submission.reply.fail(error);
            }
        }
    }

    /// Answers `Timeout` to every submission older than the propose timeout.
    fn expire(&mut self) {
        while let Some((deadline, slot, serial)) = self.deadlines.front().copied() {
            if deadline > self.ticks {
                break;
            }
            self.deadlines.pop_front();
            self.fail(slot, serial, NodeError::Timeout);
        }
    }

    fn on_add(&mut self, commands: impl ExactSizeIterator<Item = Command>, reply: AddReply) {
        let (slot, serial) = self.open_submission(commands.len(), reply);
        for (position, command) in commands.enumerate() {
            let target = Target { submission: slot, serial, position };
            if let Some(index) = self.recent.get(&command.id) {
                self.resolve(target, index);
                continue;
            }
            if let Some(waiting) = self.waiters.get_mut(&command.id) {
                // Already in flight from this node: wait for the same outcome.
                waiting.more_targets.push(target);
                continue;
            }
            let id = command.id;
            self.proposals.push(command.clone());
            let waiting = Waiting { command, target, more_targets: Vec::new(), proposed_at: self.ticks, offers: 0 };
            self.waiters.insert(id, waiting);
        }
        if self.live_submission(slot, serial).is_some() {
            let live = self.submissions.len() - self.free_submissions.len();
            if self.deadlines.len() >= 2 * live + 1024 {
                // Most entries belong to answered submissions: keep the queue
                // proportional to what is in flight (amortized O(1) per add).
                let submissions = &self.submissions;
                self.deadlines.retain(|(_, slot, serial)| {
                    matches!(submissions.get(*slot), Some(Some(submission)) if submission.serial == *serial)
                });
            }
            self.deadlines.push_back((self.ticks + self.timeout_ticks, slot, serial));
        }
    }

    fn on_received(&mut self, received: Result<(NodeId, Message), T::Error>) -> Result<(), NodeError> {
        match received {
            Ok((from, message)) => {
                self.replica.on_message(from, message);
                Ok(())
            }
            Err(error) => {
                tracing::error!(node = self.node_id, %error, "transport failed; stopping");
                Err(NodeError::Transport(Box::new(error)))
            }
        }
    }

    /// Handles one application request; returns true on shutdown.
    fn on_request(&mut self, request: Request) -> bool {
        match request {
            Request::Add { commands, reply } => self.on_add(commands.into_iter(), reply),
            Request::AddOne { command, reply } => self.on_add(std::iter::once(command), reply),
            Request::Get { index, reply } => {
                let _ = reply.send(self.replica.log_entry(index).cloned());
            }
            Request::Status { reply } => {
                let _ = reply.send(self.replica.status());
            }
            Request::Subscribe { subscriber } => self.subscribers.push(subscriber),
            Request::SubscribeFrom { from_index, subscriber } => self.start_applier(from_index, subscriber),
            Request::Events { events } => self.event_watchers.push(events),
            Request::Compact { through_slot, data, reply } => {
                let compacted = self.replica.compact(through_slot, data);
                if compacted.is_ok() && through_slot == self.replica.learner().applied_through() {
                    // Only a compaction of everything applied empties the count;
                    // after one of an older slot, the slots past it are still held.
                    self.applied_bytes = 0;
                }
                let _ = reply.send(compacted);
            }
            Request::Shutdown => return true,
        }
        false
    }

    /// Sends what may go now, delivers decisions and events, makes the writes
    /// durable, then sends what waited on them. A failed write stops the node.
    ///
    /// Decisions go first because none depends on this replica's pending writes:
    /// a slot is chosen only after a quorum made its accept durable (this
    /// replica's own vote counts only once its write is). Writes of nothing but
    /// chosen records are held back and ride with the next durable write, so the
    /// answer to a client never waits on an fdatasync that safety does not need.
    fn carry_out(&mut self, actions: Actions) {
        for outgoing in actions.send {
            self.dispatch(outgoing);
        }
        for decided in actions.decided {
            self.deliver(decided);
        }
        // Events go with the decisions they came with, so a failed write below
        // cannot leave the application with the one and not the other.
        for event in actions.events {
            match &event {
                Event::LeaderChanged { leader: Some(_), .. } => {
                    // Commands forwarded to a leader that is gone may be lost: offer
                    // them again. Their ids make a second copy harmless.
                    self.resubmit(true);
                }
                Event::Dropped { ids, .. } => self.offer_dropped_soon(ids),
                _ => {}
            }
            self.event_watchers.retain_mut(|watcher| watcher.try_send(event.clone()).is_ok());
        }
        if actions.persist.is_deferrable() {
            self.deferred.merge(actions.persist);
            if self.deferred.ops().len() >= DEFERRED_OPS_MAX {
                self.flush_deferred();
            }
        } else {
            self.flush_deferred();
            self.queued_bytes += actions.persist.ops().iter().map(op_bytes).sum::<usize>();
            self.queued.merge(actions.persist);
        }
        let options = &self.options;
        if options.auto_compact_slots.is_some()
            || options.auto_compact_commands.is_some()
            || options.auto_compact_bytes.is_some()
        {
            let learner = self.replica.learner();
            let applied = learner.applied_through();
            let (held, held_index) =
                self.replica.snapshot().map_or((0, 0), |snapshot| (snapshot.through_slot, snapshot.next_index));
            let slots_due = options.auto_compact_slots.is_some_and(|every| applied >= held + every.max(1));
            let commands_due = options
                .auto_compact_commands
                .is_some_and(|every| applied > held && learner.next_index() >= held_index + every.max(1));
            let bytes_due =
                options.auto_compact_bytes.is_some_and(|every| applied > held && self.applied_bytes >= every);
            if (slots_due || commands_due || bytes_due) && self.replica.compact(applied, Vec::new()).is_ok() {
                // The compaction's write goes out with the next round of actions.
                self.applied_bytes = 0;
            }
        }
    }

    /// Queues the chosen records held back, if any, for the next write.
    fn flush_deferred(&mut self) {
        if !self.deferred.is_empty() {
            let deferred = std::mem::take(&mut self.deferred);
            self.queued_bytes += deferred.ops().iter().map(op_bytes).sum::<usize>();
            self.queued.merge(deferred);
        }
    }

    /// Proposes again the commands this node still waits for: all of them when
    /// `all`, else those waiting longer than an election timeout (two, then four,
    /// after each offer the replica did not keep; see `Waiting::offers`), except the
    /// ones the replica still holds (queued or in a slot it proposed): offered
    /// again, each would only take another slot as a copy, and under a load the
    /// replica cannot serve within the timeout, copies took most of the slots
    /// (Basic Paxos, batching off, 1024 in flight, 50 ms timeout: 52,000 copies
    /// in 2 s, 1.8k commands/s against 14-20k without). A command the replica
    /// refuses keeps waiting for the next chance, within `add`'s timeout.
    /// Commands nobody waits for any more (timed out, failed, caller gone) are forgotten.
    fn resubmit(&mut self, all: bool) {
        let submissions = &self.submissions;
        self.waiters.retain(|_, waiting| waiting.targets().any(|target| wanted(submissions, target)));
        let (ticks, timeout) = (self.ticks, self.resubmit_ticks);
        let mut due: FxHashSet<CommandId> = self
            .waiters
            .iter()
            .filter(|(_, waiting)| all || ticks >= waiting.proposed_at + (timeout << waiting.offers.min(2)))
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        // What the replica holds is not offered again; its timer starts over.
        self.replica.for_each_held_command(&mut |id| {
            if due.remove(&id) {
                if let Some(waiting) = self.waiters.get_mut(&id) {
                    waiting.proposed_at = ticks;
                }
            }
        });
        if due.is_empty() {
            return;
        }
        let mut offered = Vec::with_capacity(due.len());
        for id in &due {
            if let Some(waiting) = self.waiters.get_mut(id) {
                waiting.proposed_at = ticks;
                waiting.offers += 1;
                offered.push(waiting.command.clone());
            }
        }
        tracing::debug!(node = self.node_id, commands = offered.len(), "resubmitting commands not yet chosen");
        if let Err(error) = self.replica.propose(offered) {
            tracing::debug!(node = self.node_id, %error, "resubmission refused; will retry");
        }
    }

    /// Commands the replica dropped (`Event::Dropped`) are offered again at the
    /// next tick rather than after their timer runs out.
    fn offer_dropped_soon(&mut self, ids: &[CommandId]) {
        for id in ids {
            if let Some(waiting) = self.waiters.get_mut(id) {
                waiting.proposed_at = self.ticks.saturating_sub(self.resubmit_ticks);
                waiting.offers = 0;
            }
        }
    }

    fn dispatch(&mut self, outgoing: Outgoing) {
        if outgoing.to == self.node_id {
            self.local.push_back(outgoing.message);
        } else if let Err(error) = self.transport.send(outgoing.to, outgoing.message) {
            tracing::warn!(node = self.node_id, to = outgoing.to, %error, "send failed");
        }
    }

    /// Starts a `subscribe_from` stream at `from_index`.
    fn start_applier(&mut self, from_index: u64, subscriber: Subscriber<Applied>) {
        self.appliers.push((subscriber, from_index));
        self.fill_appliers();
    }

    /// Sends each `subscribe_from` stream what it has room for, from the index
    /// it takes next: the snapshot first if the entries from there were
    /// compacted (by this node, or by a snapshot it installed), then the
    /// applied entries, read from the replica's log. A stream that falls behind
    /// is not dropped: it goes on from the log when it takes its items, or from
    /// the snapshot if the log moved past it meanwhile. Runs at the end of every
    /// round, so a stream that keeps up gets each entry in the round it is applied.
    fn fill_appliers(&mut self) {
        if self.appliers.is_empty() {
            return;
        }
        let limit = self.options.subscriber_buffer_max;
        let snapshot = self.replica.snapshot();
        let learner = self.replica.learner();
        let acceptor = self.replica.acceptor();
        let end = learner.next_index();
        self.appliers.retain_mut(|(applier, next)| {
            if applier.entries.is_closed() {
                return false;
            }
            let mut batch = Vec::new();
            if let Some(snapshot) = snapshot.filter(|snapshot| *next < snapshot.next_index) {
                batch.push(Applied::Snapshot(snapshot.clone()));
                *next = snapshot.next_index;
            }
            let room = limit.saturating_sub(applier.buffered.load(Ordering::Relaxed) + batch.len());
            if *next < end && room > 0 {
                for (index, slot, command, last_in_slot) in learner.entries_from(*next, acceptor).take(room) {
                    batch.push(Applied::Entry(Entry { index, slot, command: command.clone(), last_in_slot }));
                    *next = index + 1;
                }
            }
            // Room was checked above: the offer only fails for a stream gone.
            batch.is_empty() || applier.offer(batch, usize::MAX)
        });
    }

    fn deliver(&mut self, decided: Decided) {
        if self.options.auto_compact_bytes.is_some() {
            let bytes: usize = decided.value.commands().iter().map(|command| command.payload.len()).sum();
            self.applied_bytes += bytes as u64;
        }
        let waiting = !self.waiters.is_empty();
        for (index, command) in decided.entries() {
            if waiting {
                if let Some(waiting) = self.waiters.remove(&command.id) {
                    self.resolve(waiting.target, index);
                    for target in waiting.more_targets {
                        self.resolve(target, index);
                    }
                }
            }
            self.recent.insert(command.id, index);
        }
        if !self.subscribers.is_empty() {
            let mut batch: Vec<Entry> = decided
                .entries()
                .map(|(index, command)| Entry {
                    index,
                    slot: decided.slot,
                    command: command.clone(),
                    last_in_slot: false,
                })
                .collect();
            if let Some(last) = batch.last_mut() {
                last.last_in_slot = true;
                offer_to_all(&mut self.subscribers, batch, self.options.subscriber_buffer_max);
            }
        }
        // A retried command that was already applied: answer with its first index.
        for position in &decided.duplicates {
            let id = decided.value.commands()[*position as usize].id;
            if let Some(index) = self.recent.get(&id) {
                if let Some(waiting) = self.waiters.remove(&id) {
                    self.resolve(waiting.target, index);
                    for target in waiting.more_targets {
                        self.resolve(target, index);
                    }
                }
            }
        }
    }
}

/// Offers `batch` to every subscriber (the last takes it, the others a copy),
/// dropping those that went away or fell `limit` items behind.
fn offer_to_all<T: Clone>(subscribers: &mut Vec<Subscriber<T>>, batch: Vec<T>, limit: usize) {
    if subscribers.is_empty() {
        return;
    }
    let last = subscribers.len() - 1;
    let mut position = 0;
    let mut batch = Some(batch);
    subscribers.retain(|subscriber| {
        let mine = if position == last { batch.take().unwrap_or_default() } else { batch.clone().unwrap_or_default() };
        position += 1;
        let kept = subscriber.offer(mine, limit);
        if !kept {
            tracing::warn!("a subscriber fell behind or went away; disconnected");
        }
        kept
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sequence: u64) -> CommandId {
        CommandId { client: 1, sequence }
    }

    #[test]
    fn recent_ids_keep_at_least_the_last_generation() {
        let mut recent = Recent::new(100);
        for sequence in 0..1000 {
            recent.insert(id(sequence), sequence * 2);
            for back in 0..100.min(sequence + 1) {
                assert_eq!(recent.get(&id(sequence - back)), Some((sequence - back) * 2));
            }
        }
        assert_eq!(recent.get(&id(0)), None, "old generations are dropped");
        assert!(recent.current.len() + recent.previous.len() <= 200);
    }

    #[test]
    fn id_hasher_spreads_sequential_ids() {
        let builder = IdHasherBuilder::new();
        let tops: std::collections::HashSet<u64> =
            (0..4096).map(|sequence| builder.hash_one(id(sequence)) >> 57).collect();
        assert_eq!(tops.len(), 128, "every 7-bit tag is used");
        let buckets: std::collections::HashSet<u64> =
            (0..4096).map(|sequence| builder.hash_one(id(sequence)) & 4095).collect();
        assert!(buckets.len() > 2400, "{} of 4096 buckets", buckets.len());
    }
}
