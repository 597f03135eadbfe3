//! Shutdown, restart on the same port with fresh handshakes, and bounded queues.

mod common;

use std::time::Duration;

use paxos_core::{Message, Transport};
use paxos_transport_zmq::{ZmqConfig, ZmqTransport, ZmqTransportError};

fn probe(slot: u64) -> Message {
    Message::CatchUpRequest { from_slot: slot }
}

async fn delivered(from: &ZmqTransport, to: &ZmqTransport, to_id: u64, marker: u64) -> bool {
    for _ in 0..200 {
        from.send(to_id, probe(marker)).unwrap();
        if let Ok(Ok((_, message))) = tokio::time::timeout(Duration::from_millis(50), to.recv()).await {
            if message == probe(marker) {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_restart_and_bounded_queues() {
    common::init_tracing();
    let (listeners, addresses) = common::listeners(2);
    let peers = vec![(1, addresses[0]), (2, addresses[1])];
    let config = |id: u64| {
        let mut config = ZmqConfig::new(id, common::CLUSTER, addresses[id as usize - 1], peers.clone());
        config.queue_messages_max = 4;
        config.secret = Some(common::SECRET.to_vec());
        config
    };
    let mut listeners = listeners.into_iter();
    let first = ZmqTransport::start_on(config(1), listeners.next().unwrap()).await.unwrap();
    let second = ZmqTransport::start_on(config(2), listeners.next().unwrap()).await.unwrap();
    assert!(delivered(&first, &second, 2, 1).await);

    // Shutdown: a pending recv ends with Closed, sends are refused, the port is freed.
    let pending = {
        // Poll a recv until it is genuinely pending on the inbox (a retried probe may
        // still be queued from the first exchange: take it first); bounded.
        let mut waiting = second.recv();
        let mut pending = false;
        for _ in 0..1_000 {
            match futures::poll!(&mut waiting) {
                std::task::Poll::Pending => {
                    pending = true;
                    break;
                }
                std::task::Poll::Ready(Ok(_leftover)) => waiting = second.recv(),
                std::task::Poll::Ready(Err(error)) => panic!("recv failed before shutdown: {error}"),
            }
        }
        assert!(pending, "the inbox never became empty");
        second.shutdown();
        let result = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("recv returned");
        assert!(matches!(second.send(1, probe(0)), Err(ZmqTransportError::Closed)));
        result
    };
    drop(second);
    assert!(matches!(pending, Err(ZmqTransportError::Closed)));

    // While node 2 is down node 1's queue to it stays bounded, dropping the oldest.
    for slot in 0..100 {
        first.send(2, probe(slot)).unwrap();
    }
    assert!(first.stats().messages_dropped_queue_full >= 90, "{:?}", first.stats());

    // Node 2 restarts on the same port: node 1 reconnects with a fresh handshake, both ways.
    let sessions_before = first.stats().outbound_sessions;
    let mut restarted = None;
    for _ in 0..500 {
        match ZmqTransport::start(config(2)).await {
            Ok(transport) => {
                restarted = Some(transport);
                break;
            }
            Err(ZmqTransportError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(error) => panic!("restart failed: {error}"),
        }
    }
    let second = restarted.expect("the port was freed by shutdown");
    assert!(delivered(&first, &second, 2, 2).await, "node 1 reaches the restarted node 2");
    assert!(delivered(&second, &first, 1, 3).await, "the restarted node 2 reaches node 1");
    assert!(first.stats().outbound_sessions > sessions_before, "a new handshake, not the old session");
    assert!(second.stats().inbound_sessions >= 1);

    // Outside a tokio runtime the transport says so instead of panicking.
    let outside_config = config(1);
    let outside = std::thread::spawn(move || {
        let runtime = futures::executor::block_on(ZmqTransport::start(outside_config));
        matches!(runtime, Err(ZmqTransportError::Runtime(_)))
    });
    assert!(outside.join().unwrap());
}

/// A receiver that does not call `recv` holds at most `inbox_bytes_max` (plus
/// one message) of large messages: the ROUTER pauses, the rest wait, and once
/// it reads, every message arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_is_bounded_in_bytes_and_loses_nothing() {
    common::init_tracing();
    let (listeners, addresses) = common::listeners(2);
    let peers = vec![(1, addresses[0]), (2, addresses[1])];
    let config = |id: u64| {
        let mut config = ZmqConfig::new(id, common::CLUSTER, addresses[id as usize - 1], peers.clone());
        config.inbox_bytes_max = 64 << 10;
        config
    };
    let mut listeners = listeners.into_iter();
    let first = ZmqTransport::start_on(config(1), listeners.next().unwrap()).await.unwrap();
    let second = ZmqTransport::start_on(config(2), listeners.next().unwrap()).await.unwrap();
    assert!(delivered(&first, &second, 2, 1).await);
    let large = |slot: u64| Message::CatchUp {
        first_slot: slot,
        values: vec![paxos_core::Value::Commands(std::sync::Arc::from(vec![paxos_core::Command::new(
            1,
            slot,
            vec![7; 16 << 10],
        )]))],
    };
    let message_bytes = large(0).encoded_bytes_bound();
    for slot in 0..64 {
        first.send(2, large(slot)).unwrap();
    }
    let filled = common::eventually(Duration::from_secs(5), || second.inbox_bytes() >= (64 << 10) - message_bytes);
    assert!(filled.await, "the inbox filled: {} bytes", second.inbox_bytes());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = second.inbox_bytes();
    assert!(held <= (64 << 10) + message_bytes, "{held} bytes held past the 64 KiB bound");
    let mut slot = 0;
    while slot < 64 {
        let received = tokio::time::timeout(Duration::from_secs(5), second.recv()).await;
        let Ok(Ok((1, message))) = received else { panic!("message {slot} never came") };
        if message == probe(1) {
            // A retried probe from the connection check, queued before the large ones.
            continue;
        }
        assert_eq!(message, large(slot));
        slot += 1;
    }
    assert_eq!(second.inbox_bytes(), 0);
}
