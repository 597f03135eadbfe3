//! A deterministic, single-threaded cluster of sans-IO replicas, for tests and benchmarks.
//!
//! Messages sit in one in-memory network that can drop, duplicate, reorder and
//! partition them, all drawn from one seeded PRNG, so a seed fixes a whole run.
//! Storage is a [`DurableState`] per replica, written synchronously: a crash keeps
//! exactly what was persisted. No clock, no threads, no runtime.

use std::collections::VecDeque;

use crate::actions::Decided;
use crate::ballot::{NodeId, Slot};
use crate::config::{Config, Protocol};
use crate::message::{Command, Message, Value};
use crate::replica::{new_replica, ProposeError, Replica};
use crate::rng::Rng;
use crate::storage::DurableState;

/// Fault rates, in parts per million per message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Chance a message is lost.
    pub drop_per_million: u32,
    /// Chance a message is delivered twice.
    pub duplicate_per_million: u32,
    /// Deliver messages in random order instead of first-in, first-out.
    pub reorder: bool,
}

/// How storage behaves in the harness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageFaults {
    /// Writes complete after a random delay of up to this many deliveries (0: at once).
    /// A crash loses writes not yet complete, and the messages waiting for them.
    pub write_delay_max: u64,
    /// A planted bug, for proving checkers are not vacuous: release the messages
    /// that wait for a write before the write completes (as a driver that ignored
    /// `PersistThen` would). Never enable it otherwise.
    pub reply_before_persist: bool,
}

/// Faults injected so far, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Messages lost to random loss.
    pub lost: u64,
    /// Messages lost to a partition.
    pub partitioned: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages delivered out of order.
    pub reordered: u64,
    /// Crashes.
    pub crashes: u64,
    /// Writes lost because a crash came before they completed.
    pub writes_lost: u64,
}

/// A write in progress: completes at delivery `due`.
struct PendingWrite {
    due: u64,
    ops: Vec<crate::storage::StorageOp>,
    /// The messages waiting for the write; `None` if the planted bug already sent them.
    persist: Option<crate::actions::PersistThen>,
}

/// An in-flight message.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

/// A cluster of replicas wired through a simulated network.
pub struct Cluster {
    configs: Vec<Config>,
    replicas: Vec<Option<Box<dyn Replica>>>,
    durable: Vec<DurableState>,
    /// Every slot each replica applied, in order, since it last started.
    applied: Vec<Vec<Decided>>,
    /// Every event each replica emitted, in order, across restarts.
    events: Vec<Vec<crate::actions::Event>>,
    /// The first value any replica ever applied for each slot, across crashes.
    first_applied: std::collections::BTreeMap<Slot, Value>,
    network: VecDeque<Envelope>,
    rng: Rng,
    /// Fault injection settings.
    pub faults: Faults,
    /// `blocked[a][b]`: messages from member `a` to member `b` are lost.
    blocked: Vec<Vec<bool>>,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Messages dropped so far (loss, partition, or a crashed receiver).
    pub dropped: u64,
    /// How storage behaves.
    pub storage_faults: StorageFaults,
    /// If set, a message whose wire encoding is longer is dropped, as a
    /// transport drops a frame above its limit (`None`: any size goes).
    pub frame_bytes_max: Option<usize>,
    /// Messages dropped for being longer than `frame_bytes_max`.
    pub oversize_dropped: u64,
    /// Faults injected so far.
    pub fault_counts: FaultCounts,
    pending_writes: Vec<VecDeque<PendingWrite>>,
    /// Whether the harness panics when two replicas apply a slot with different
    /// values (on by default). An outside checker, such as `paxos-sim`'s, turns it
    /// off to do that judging itself.
    pub assert_agreement: bool,
}

impl Cluster {
    /// A cluster of `size` replicas with ids `1..=size`, default config, seeded with `seed`.
    pub fn new(size: usize, protocol: Protocol, seed: u64) -> Cluster {
        Cluster::with_config(size, protocol, seed, |_| {})
    }

    /// Like [`Cluster::new`], letting `adjust` change each replica's config.
    pub fn with_config(size: usize, protocol: Protocol, seed: u64, adjust: impl Fn(&mut Config)) -> Cluster {
        let members: Vec<NodeId> = (1..=size as NodeId).collect();
        let mut rng = Rng::new(seed);
        let configs: Vec<Config> = members
            .iter()
            .map(|id| {
                let mut config = Config::new(*id, members.clone(), protocol);
                config.seed = rng.next_u64();
                adjust(&mut config);
                config
            })
            .collect();
        let durable = vec![DurableState::default(); size];
        let replicas = configs
            .iter()
            .zip(&durable)
            .map(|(config, state)| Some(new_replica(config.clone(), state).expect("valid config")))
            .collect();
        let mut cluster = Cluster {
            configs,
            replicas,
            durable,
            applied: vec![Vec::new(); size],
            events: vec![Vec::new(); size],
            first_applied: Default::default(),
            network: VecDeque::new(),
            rng,
            faults: Faults::default(),
            blocked: vec![vec![false; size]; size],
            delivered: 0,
            dropped: 0,
            storage_faults: StorageFaults::default(),
            frame_bytes_max: None,
            oversize_dropped: 0,
            fault_counts: FaultCounts::default(),
            pending_writes: (0..size).map(|_| VecDeque::new()).collect(),
            assert_agreement: true,
        };
        for node in 1..=size as NodeId {
            cluster.drain(node);
        }
        cluster
    }

    fn position(&self, node: NodeId) -> usize {
        (node - 1) as usize
    }

    /// The replica `node`, if it is up.
    pub fn replica(&self, node: NodeId) -> Option<&dyn Replica> {
        self.replicas[self.position(node)].as_deref()
    }

    /// Member ids.
    pub fn members(&self) -> Vec<NodeId> {
        (1..=self.replicas.len() as NodeId).collect()
    }

    /// What `node` has applied since it last started.
    pub fn applied(&self, node: NodeId) -> &[Decided] {
        &self.applied[self.position(node)]
    }

    /// Every event `node` emitted, across restarts.
    pub fn events(&self, node: NodeId) -> &[crate::actions::Event] {
        &self.events[self.position(node)]
    }

    /// Compacts `node`'s log through `through_slot`, carrying out the write.
    pub fn compact(&mut self, node: NodeId, through_slot: Slot, data: Vec<u8>) -> Result<(), crate::CompactError> {
        let position = self.position(node);
        let replica = self.replicas[position].as_mut().expect("compact on a running node");
        let result = replica.compact(through_slot, data);
        self.drain(node);
        result
    }

    /// What storage holds for `node`.
    pub fn durable(&self, node: NodeId) -> &DurableState {
        &self.durable[self.position(node)]
    }

    /// Messages waiting in the network.
    pub fn in_flight(&self) -> usize {
        self.network.len()
    }

    /// Offers `commands` to `node`.
    pub fn propose(&mut self, node: NodeId, commands: Vec<Command>) -> Result<(), ProposeError> {
        let position = self.position(node);
        let replica = self.replicas[position].as_mut().ok_or(ProposeError::NotLeader { leader_hint: None })?;
        let result = replica.propose(commands);
        self.drain(node);
        result
    }

    /// Carries out `node`'s pending actions: persist, then send; record what it applied.
    fn drain(&mut self, node: NodeId) {
        let position = self.position(node);
        let Some(replica) = self.replicas[position].as_mut() else { return };
        let actions = replica.take_actions();
        for outgoing in actions.send {
            self.network.push_back(Envelope { from: node, to: outgoing.to, message: outgoing.message });
        }
        if self.storage_faults.write_delay_max == 0 && self.pending_writes[position].is_empty() {
            let durable = &mut self.durable[position];
            let released = actions
                .persist
                .persist_with(|ops| {
                    ops.iter().for_each(|op| durable.apply(op));
                    Ok::<(), std::convert::Infallible>(())
                })
                .expect("in-memory writes cannot fail");
            for outgoing in released {
                self.network.push_back(Envelope { from: node, to: outgoing.to, message: outgoing.message });
            }
        } else if !actions.persist.is_empty() {
            // Writes complete in order, each after a random delay.
            let drawn = self.delivered + self.rng.range_inclusive(0, self.storage_faults.write_delay_max);
            let due = self.pending_writes[position].back().map_or(drawn, |last| last.due.max(drawn));
            let ops = actions.persist.ops().to_vec();
            let mut persist = Some(actions.persist);
            if self.storage_faults.reply_before_persist {
                let early = persist.take().expect("set above").persist_with(|_| Ok::<(), ()>(())).expect("no write");
                for outgoing in early {
                    self.network.push_back(Envelope { from: node, to: outgoing.to, message: outgoing.message });
                }
            }
            self.pending_writes[position].push_back(PendingWrite { due, ops, persist });
        }
        self.events[position].extend(actions.events);
        for decided in actions.decided {
            // Agreement, checked across replicas and across restarts.
            match self.first_applied.get(&decided.slot) {
                Some(value) if self.assert_agreement => {
                    assert_eq!(*value, decided.value, "slot {} applied with two values", decided.slot)
                }
                Some(_) => {}
                None => {
                    self.first_applied.insert(decided.slot, decided.value.clone());
                }
            }
            self.applied[position].push(decided);
        }
    }

    /// Completes every delayed write that is due, releasing what waited for it.
    fn complete_writes(&mut self, all: bool) {
        for position in 0..self.pending_writes.len() {
            while self.pending_writes[position].front().is_some_and(|write| all || write.due <= self.delivered) {
                let write = self.pending_writes[position].pop_front().expect("checked");
                write.ops.iter().for_each(|op| self.durable[position].apply(op));
                let node = position as NodeId + 1;
                if let Some(persist) = write.persist {
                    let released = persist.persist_with(|_| Ok::<(), ()>(())).expect("already applied");
                    for outgoing in released {
                        self.network.push_back(Envelope { from: node, to: outgoing.to, message: outgoing.message });
                    }
                }
            }
        }
    }

    /// Delivers one message, applying fault rates. Returns false if none was waiting.
    pub fn deliver_one(&mut self) -> bool {
        self.complete_writes(false);
        let pick = if self.faults.reorder && self.network.len() > 1 {
            self.rng.range_inclusive(0, self.network.len() as u64 - 1) as usize
        } else {
            0
        };
        let Some(envelope) = self.network.remove(pick) else {
            // Nothing in flight: let every write finish.
            let pending = self.pending_writes.iter().any(|writes| !writes.is_empty());
            self.complete_writes(true);
            return pending;
        };
        if pick > 0 {
            self.fault_counts.reordered += 1;
        }
        let from = self.position(envelope.from);
        let to = self.position(envelope.to);
        let self_message = envelope.from == envelope.to;
        if !self_message && self.blocked[from][to] {
            self.dropped += 1;
            self.fault_counts.partitioned += 1;
            return true;
        }
        if !self_message && self.rng.chance(self.faults.drop_per_million as u64, 1_000_000) {
            self.dropped += 1;
            self.fault_counts.lost += 1;
            return true;
        }
        if self.frame_bytes_max.is_some_and(|max| crate::wire::encode(envelope.from, &envelope.message).len() > max) {
            self.dropped += 1;
            self.oversize_dropped += 1;
            return true;
        }
        if !self_message && self.rng.chance(self.faults.duplicate_per_million as u64, 1_000_000) {
            self.fault_counts.duplicated += 1;
            self.network.push_back(envelope.clone());
        }
        let Some(replica) = self.replicas[to].as_mut() else {
            self.dropped += 1;
            return true;
        };
        replica.on_message(envelope.from, envelope.message);
        self.delivered += 1;
        self.drain(envelope.to);
        true
    }

    /// Advances every live replica by one tick.
    pub fn tick(&mut self) {
        for node in self.members() {
            let position = self.position(node);
            if let Some(replica) = self.replicas[position].as_mut() {
                replica.tick();
                self.drain(node);
            }
        }
    }

    /// Checks every live replica's own invariants.
    pub fn check_invariants(&self) {
        for replica in self.replicas.iter().flatten() {
            replica.check_invariants();
        }
    }

    /// Delivers messages, ticking every `messages_per_tick` deliveries or when the
    /// network is empty, until `done` holds. Returns false if `steps_max` ran out.
    pub fn run_until(
        &mut self,
        steps_max: u64,
        messages_per_tick: u64,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> bool {
        let mut since_tick = 0;
        for _ in 0..steps_max {
            if done(self) {
                return true;
            }
            if since_tick >= messages_per_tick || !self.deliver_one() {
                self.tick();
                since_tick = 0;
            } else {
                since_tick += 1;
            }
            self.check_invariants();
        }
        done(self)
    }

    /// Stops `node`: its volatile state and the messages addressed to it are lost.
    pub fn crash(&mut self, node: NodeId) {
        let position = self.position(node);
        self.replicas[position] = None;
        self.network.retain(|envelope| envelope.to != node);
        self.fault_counts.crashes += 1;
        // Writes not yet complete are lost, with the messages waiting for them.
        self.fault_counts.writes_lost += self.pending_writes[position].len() as u64;
        self.pending_writes[position].clear();
    }

    /// Restarts `node` from what its storage holds.
    pub fn restart(&mut self, node: NodeId) {
        let position = self.position(node);
        assert!(self.replicas[position].is_none(), "restart of a running node");
        self.applied[position].clear();
        let replica = new_replica(self.configs[position].clone(), &self.durable[position]).expect("valid config");
        self.replicas[position] = Some(replica);
        self.drain(node);
    }

    /// Cuts every link between `side` and the other members, both ways.
    pub fn partition(&mut self, side: &[NodeId]) {
        for a in self.members() {
            for b in self.members() {
                if side.contains(&a) != side.contains(&b) {
                    let (a, b) = (self.position(a), self.position(b));
                    self.blocked[a][b] = true;
                }
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        let (from, to) = (self.position(from), self.position(to));
        self.blocked[from][to] = true;
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.iter_mut().for_each(|row| row.iter_mut().for_each(|cell| *cell = false));
    }

    /// The member that currently claims leadership with the highest ballot, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.replicas
            .iter()
            .flatten()
            .filter(|replica| replica.status().role == crate::replica::Role::Leader)
            .max_by_key(|replica| replica.status().promised)
            .map(|replica| replica.status().node_id)
    }

    /// The fresh commands `node` applied since it last started, in log order.
    pub fn applied_commands(&self, node: NodeId) -> Vec<Command> {
        self.applied(node).iter().flat_map(|decided| decided.entries().map(|(_, command)| command.clone())).collect()
    }
}
