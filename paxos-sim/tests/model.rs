//! Exhaustive model checking of single-decree Paxos over the real acceptor and
//! proposer code (`paxos_core::acceptor::Acceptor`, `paxos_core::proposer::Proposer`),
//! with stateright: 3 acceptors, 2 proposers (each may start over with a higher
//! ballot), and a network that loses, duplicates and reorders messages.
//!
//! Agreement, judged from the acceptors' votes (a value is chosen once a majority
//! accepted it at one ballot) and from what proposers report chosen, holds in every
//! reachable state; with a bug planted in the proposer (feature `mutations`) the
//! checker finds a counterexample.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use paxos_core::acceptor::Acceptor;
use paxos_core::mutations::{self, Mutation};
use paxos_core::proposer::Proposer;
use paxos_core::{AcceptedEntry, Ballot, Command, Message, PrepareScope, Value};
use stateright::{Checker, Model, Property};

/// The one slot the model decides.
const SLOT: u64 = 1;
/// Acceptors are members 1..=3.
const ACCEPTORS: u64 = 3;
const QUORUM: usize = 2;
/// Proposers' node ids (their ballots' tie-breakers).
const PROPOSERS: [u64; 2] = [4, 5];

/// A message in flight. Values are named by the proposer that first proposed them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Msg {
    Prepare { to: u64, ballot: Ballot },
    Promise { from: u64, to: usize, ballot: Ballot, accepted: Option<(Ballot, usize)> },
    Nack { to: usize, ballot: Ballot, promised: Ballot },
    Accept { to: u64, ballot: Ballot, value: usize },
    Accepted { from: u64, to: usize, ballot: Ballot },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Action {
    Start(usize),
    Deliver(Msg),
}

#[derive(Clone, Debug)]
struct State {
    acceptors: Vec<Acceptor>,
    proposers: Vec<Option<Proposer>>,
    rounds: Vec<u64>,
    /// Every message ever sent. Delivery leaves it in flight, so it may be
    /// delivered again (duplication), in any order (reordering), or never (loss:
    /// for safety, a lost message is one that is never delivered, so no separate
    /// action is needed and the state space stays small).
    network: BTreeSet<Msg>,
    /// Every vote ever cast: (ballot, value, acceptor).
    votes: BTreeSet<(Ballot, usize, u64)>,
    /// Values proposers were told were chosen.
    reported: BTreeSet<usize>,
}

impl State {
    /// The core types have no `Hash`. An acceptor of one slot is its promises and
    /// accepted proposal; a proposer's `Debug` form is deterministic and complete.
    #[allow(clippy::type_complexity)]
    fn key(&self) -> (Vec<(Ballot, Ballot, Option<(Ballot, usize)>)>, String) {
        let acceptors = self
            .acceptors
            .iter()
            .map(|acceptor| {
                let accepted = acceptor.accepted(SLOT).map(|(ballot, value)| (*ballot, index_of(value)));
                (acceptor.promised(), acceptor.promised_for(SLOT), accepted)
            })
            .collect();
        (acceptors, format!("{:?}", self.proposers))
    }

    /// Values chosen: accepted by a majority at one ballot, or reported chosen.
    fn chosen(&self) -> BTreeSet<usize> {
        let mut chosen = self.reported.clone();
        for (ballot, value, _) in &self.votes {
            let voters = self.votes.iter().filter(|(b, v, _)| b == ballot && v == value).count();
            if voters >= QUORUM {
                chosen.insert(*value);
            }
        }
        chosen
    }
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.rounds == other.rounds
            && self.network == other.network
            && self.votes == other.votes
            && self.reported == other.reported
            && self.key() == other.key()
    }
}

impl Eq for State {}

impl Hash for State {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        self.key().hash(hasher);
        self.rounds.hash(hasher);
        self.network.hash(hasher);
        self.votes.hash(hasher);
        self.reported.hash(hasher);
    }
}

struct Paxos {
    /// How many ballots each proposer may try.
    rounds_max: u64,
    /// A bug planted in the core while the model runs it.
    mutation: Option<Mutation>,
}

fn value(index: usize) -> Value {
    Value::Commands(Arc::from(vec![Command::new(index as u64 + 1, 1, vec![index as u8])]))
}

fn index_of(value: &Value) -> usize {
    (0..PROPOSERS.len()).find(|index| self::value(*index) == *value).expect("only proposers' values exist")
}

fn proposer_of(ballot: Ballot) -> usize {
    PROPOSERS.iter().position(|node| *node == ballot.node).expect("only proposers make ballots")
}

impl Paxos {
    fn step(&self, state: &mut State, action: Action) {
        match action {
            Action::Start(p) => {
                state.rounds[p] += 1;
                let ballot = Ballot::new(state.rounds[p], PROPOSERS[p]);
                let (proposer, _prepare) = Proposer::start(SLOT, ballot, value(p), QUORUM);
                state.proposers[p] = Some(proposer);
                for to in 1..=ACCEPTORS {
                    state.network.insert(Msg::Prepare { to, ballot });
                }
            }
            Action::Deliver(msg) => self.deliver(state, msg),
        }
    }

    fn deliver(&self, state: &mut State, msg: Msg) {
        let mut ops = Vec::new();
        match msg {
            Msg::Prepare { to, ballot } => {
                let acceptor = &mut state.acceptors[to as usize - 1];
                let reply = match acceptor.on_prepare(ballot, PrepareScope::Slot(SLOT), &mut ops) {
                    Ok(entries) => Msg::Promise {
                        from: to,
                        to: proposer_of(ballot),
                        ballot,
                        accepted: entries.first().map(|entry| (entry.ballot, index_of(&entry.value))),
                    },
                    Err(promised) => Msg::Nack { to: proposer_of(ballot), ballot, promised },
                };
                state.network.insert(reply);
            }
            Msg::Accept { to, ballot, value: index } => {
                let acceptor = &mut state.acceptors[to as usize - 1];
                let reply = match acceptor.on_accept(ballot, SLOT, &[value(index)], false, &mut ops) {
                    Ok(()) => {
                        state.votes.insert((ballot, index, to));
                        Msg::Accepted { from: to, to: proposer_of(ballot), ballot }
                    }
                    Err(promised) => Msg::Nack { to: proposer_of(ballot), ballot, promised },
                };
                state.network.insert(reply);
            }
            Msg::Promise { from, to, ballot, accepted } => {
                let Some(proposer) = state.proposers[to].as_mut() else { return };
                let entries = accepted
                    .map(|(ballot, index)| AcceptedEntry { slot: SLOT, ballot, value: value(index) })
                    .into_iter()
                    .collect();
                if let Some(Message::Accept { ballot, values, .. }) = proposer.on_promise(1 << from, ballot, entries) {
                    let index = index_of(&values[0]);
                    for to in 1..=ACCEPTORS {
                        state.network.insert(Msg::Accept { to, ballot, value: index });
                    }
                }
            }
            Msg::Accepted { from, to, ballot } => {
                let Some(proposer) = state.proposers[to].as_mut() else { return };
                if let Some(outcome) = proposer.on_accepted(1 << from, ballot) {
                    state.reported.insert(index_of(&outcome.value));
                }
            }
            Msg::Nack { to, ballot, promised } => {
                if let Some(proposer) = state.proposers[to].as_mut() {
                    proposer.on_nack(ballot, promised);
                }
            }
        }
    }
}

impl Model for Paxos {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            acceptors: vec![Acceptor::default(); ACCEPTORS as usize],
            proposers: vec![None; PROPOSERS.len()],
            rounds: vec![0; PROPOSERS.len()],
            network: BTreeSet::new(),
            votes: BTreeSet::new(),
            reported: BTreeSet::new(),
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (p, rounds) in state.rounds.iter().enumerate() {
            if *rounds < self.rounds_max {
                actions.push(Action::Start(p));
            }
        }
        for msg in &state.network {
            actions.push(Action::Deliver(msg.clone()));
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match self.mutation {
            Some(mutation) => mutations::with(mutation, || self.step(&mut state, action)),
            None => self.step(&mut state, action),
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("agreement", |_, state: &State| state.chosen().len() <= 1),
            Property::sometimes("a value is chosen", |_, state: &State| !state.chosen().is_empty()),
        ]
    }
}

#[test]
fn single_decree_paxos_keeps_agreement_in_the_first_states_explored() {
    // The CI-sized check: breadth-first over the first states, which cover every
    // interleaving of the first several deliveries.
    let checker =
        Paxos { rounds_max: 1, mutation: None }.checker().threads(2).target_state_count(30_000).spawn_bfs().join();
    eprintln!("states explored: {} unique of {}", checker.unique_state_count(), checker.state_count());
    checker.assert_properties();
}

#[test]
#[ignore = "exhaustive: 421k unique states, about 2.5 min in debug; run with --release -- --ignored"]
fn single_decree_paxos_keeps_agreement_in_every_reachable_state() {
    let checker = Paxos { rounds_max: 1, mutation: None }.checker().threads(2).spawn_bfs().join();
    eprintln!("states explored: {} unique of {}", checker.unique_state_count(), checker.state_count());
    checker.assert_properties();
    assert!(checker.unique_state_count() > 1_000, "the model explored too little to mean anything");
}

#[test]
fn a_proposer_that_skips_adoption_yields_a_counterexample() {
    let model = Paxos { rounds_max: 1, mutation: Some(Mutation::ProposerSkipsAdoption) };
    let checker = model.checker().threads(2).spawn_bfs().join();
    let path = checker.discovery("agreement").expect("the planted bug breaks agreement somewhere");
    eprintln!("counterexample: {:?}", path.into_actions());
}
