//! Conformance suites: the documented way to check a [`Storage`] or [`Transport`]
//! backend, shipped ones and your own, against its contract in one call.
//!
//! The suites are async and runtime-neutral; call them from a test under any
//! executor. They panic with a message naming the broken rule.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::ballot::{Ballot, NodeId};
use crate::message::{Command, Message, Value};
use crate::storage::{AppliedSequences, ClientDedup, DurableState, Storage, StorageOp};
use crate::transport::Transport;

fn value(tag: u8, bytes: usize) -> Value {
    Value::Commands(Arc::from(vec![Command::new(tag as u64, 1, vec![tag; bytes])]))
}

fn replay(ops: &[StorageOp]) -> DurableState {
    let mut state = DurableState::default();
    ops.iter().for_each(|op| state.apply(op));
    state
}

/// Checks a [`Storage`] backend. `open` must return a handle on the *same*
/// durable store each time it is called (reopening it, as after a restart); the
/// suite drops each handle before opening the next. Start from an empty store.
pub async fn storage_suite<S, F, Fut>(mut open: F)
where
    S: Storage,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    let storage = open().await;
    let loaded = storage.load().await.expect("load of a new store");
    assert_eq!(loaded, DurableState::default(), "a new store loads empty");
    storage.append(&[]).await.expect("an empty append succeeds");

    let mut written = vec![
        StorageOp::Round(16),
        StorageOp::Promise(Ballot::new(3, 1)),
        StorageOp::Accept { slot: 1, ballot: Ballot::new(3, 1), value: value(1, 8) },
        StorageOp::Accept { slot: 2, ballot: Ballot::new(3, 1), value: Value::Noop },
        StorageOp::Chosen { slot: 1, value: None },
        StorageOp::PromiseSlot { slot: 9, ballot: Ballot::new(7, 2) },
    ];
    storage.append(&written).await.expect("append");
    assert_eq!(storage.load().await.expect("load"), replay(&written), "load equals the replay of every append");
    drop(storage);

    // Durable across a reopen, and appends continue after what was there.
    let storage = open().await;
    assert_eq!(
        storage.load().await.expect("load after reopen"),
        replay(&written),
        "a reopened store keeps every append"
    );
    let later = vec![
        StorageOp::Promise(Ballot::new(5, 2)),
        StorageOp::Accept { slot: 2, ballot: Ballot::new(5, 2), value: value(2, 1024) },
        StorageOp::Chosen { slot: 2, value: Some(value(2, 1024)) },
        StorageOp::Accept { slot: 3, ballot: Ballot::new(5, 2), value: value(3, 256 * 1024) },
    ];
    storage.append(&later).await.expect("append after reopen");
    written.extend(later);
    assert_eq!(storage.load().await.expect("load"), replay(&written), "later appends apply after earlier ones");

    // A compaction replaces the prefix with a snapshot.
    let compact = StorageOp::Compact(Box::new(crate::storage::Snapshot {
        through_slot: 1,
        next_index: 1,
        clients: vec![
            ClientDedup { client: 1, highest: 1, applied: AppliedSequences::Ring(vec![2; 64]) },
            ClientDedup { client: 7, highest: 90, applied: AppliedSequences::Run { older: 40 } },
        ],
        dedup_window: 256,
        dedup_through: 2,
        duplicates: vec![(2, vec![0])],
        data: b"application state".to_vec(),
    }));
    storage.append(std::slice::from_ref(&compact)).await.expect("append compaction");
    written.push(compact);
    assert_eq!(storage.load().await.expect("load"), replay(&written), "a compaction is durable like any op");

    // Many small appends, one at a time, keep their order.
    for round in 0..200u64 {
        let op = StorageOp::Accept {
            slot: 10 + round % 7,
            ballot: Ballot::new(6 + round, 2),
            value: value(round as u8, 16),
        };
        storage.append(std::slice::from_ref(&op)).await.expect("small append");
        written.push(op);
    }
    // Concurrent appends must all be durable when they return (group commit is allowed).
    let concurrent: Vec<StorageOp> = (0..32u64)
        .map(|slot| StorageOp::Accept { slot: 100 + slot, ballot: Ballot::new(900, 3), value: value(9, 64) })
        .collect();
    let calls: Vec<_> = concurrent.iter().map(|op| storage.append(std::slice::from_ref(op))).collect();
    for result in futures::future::join_all(calls).await {
        result.expect("concurrent append");
    }
    written.extend(concurrent);
    drop(storage);

    let storage = open().await;
    assert_eq!(
        storage.load().await.expect("final load"),
        replay(&written),
        "every acknowledged append survives a reopen"
    );
}

async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    let mut timer = futures_timer::Delay::new(limit).fuse();
    let mut future = std::pin::pin!(future.fuse());
    futures::select_biased! {
        value = future => Some(value),
        _ = timer => None,
    }
}

fn probe(sequence: u64) -> Message {
    Message::CatchUpRequest { from_slot: sequence }
}

/// Checks a [`Transport`] backend. `endpoints` are connected endpoints of one
/// cluster, as `(node id, transport)`, at least two; no other traffic may use them.
pub async fn transport_suite<T: Transport>(endpoints: Vec<(NodeId, T)>) {
    assert!(endpoints.len() >= 2, "the suite needs at least two endpoints");
    let limit = Duration::from_secs(10);

    // Connection set-up: resend a probe until it arrives (loss is allowed).
    for (sender_id, sender) in &endpoints {
        for (receiver_id, receiver) in &endpoints {
            if sender_id == receiver_id {
                continue;
            }
            let mut arrived = false;
            for attempt in 0..100u64 {
                sender.send(*receiver_id, probe(attempt)).expect("send to a member");
                if let Some(Ok((from, message))) = within(Duration::from_millis(100), receiver.recv()).await {
                    assert_eq!(from, *sender_id, "the sender id is the authenticated peer");
                    assert!(matches!(message, Message::CatchUpRequest { .. }), "messages arrive unaltered");
                    arrived = true;
                    break;
                }
            }
            assert!(arrived, "{sender_id} never reached {receiver_id}");
            // Drain probe copies still in flight.
            while let Some(Ok(_)) = within(Duration::from_millis(50), receiver.recv()).await {}
        }
    }

    let (first_id, first) = &endpoints[0];
    let (second_id, second) = &endpoints[1];

    // A healthy link delivers a burst intact, from the right sender.
    let count = 500u64;
    for sequence in 0..count {
        first.send(*second_id, probe(1_000 + sequence)).expect("send");
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < count as usize {
        let Some(received) = within(limit, second.recv()).await else { break };
        let (from, message) = received.expect("recv");
        assert_eq!(from, *first_id, "sender attribution");
        let Message::CatchUpRequest { from_slot } = message else {
            panic!("an unexpected message arrived: {message:?}")
        };
        assert!((1_000..1_000 + count).contains(&from_slot), "a message nobody sent arrived");
        seen.insert(from_slot);
    }
    assert_eq!(seen.len() as u64, count, "a healthy link delivered only {} of {count} messages", seen.len());

    // A large message (1 MiB of payload) arrives intact.
    let large = Message::CatchUp { first_slot: 1, values: vec![value(7, 1 << 20)] };
    second.send(*first_id, large.clone()).expect("send large");
    let received = within(limit, first.recv()).await.expect("large message arrived in time").expect("recv");
    assert_eq!(received, (*second_id, large), "a large message arrives byte for byte");

    // An unknown peer is a caller error, reported, not a panic.
    assert!(first.send(NodeId::MAX - 1, probe(0)).is_err(), "sending to a non-member is an error");

    // recv is cancel-safe: a dropped recv future loses nothing.
    for _ in 0..3 {
        assert!(second.recv().now_or_never().is_none(), "nothing is waiting");
    }
    first.send(*second_id, probe(42)).expect("send");
    let received = within(limit, second.recv()).await.expect("arrived after cancelled receives").expect("recv");
    assert_eq!(received, (*first_id, probe(42)));
}
