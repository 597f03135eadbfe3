//! Limits and lifecycle: bounded queues while a peer is down, reconnection once it
//! is up, oversized messages dropped at the sender, and graceful shutdown that
//! frees the port, under tokio and under smol.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use paxos_core::{Command, Message, Transport, Value};
use paxos_transport_tcp::{TcpConfig, TcpError, TcpTransport};

type Start = fn(TcpConfig, TcpListener) -> Result<TcpTransport, TcpError>;

fn probe(from_slot: u64) -> Message {
    Message::CatchUpRequest { from_slot }
}

/// Two listeners bound on loopback and the config of each node.
fn configs(tune: impl Fn(&mut TcpConfig)) -> (Vec<TcpListener>, Vec<TcpConfig>) {
    let listeners: Vec<TcpListener> = (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addresses: Vec<SocketAddr> = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
    let configs = (0..2)
        .map(|index| {
            let mut config =
                TcpConfig::new(index as u64 + 1, 3, addresses[index], [(1, addresses[0]), (2, addresses[1])]);
            config.backoff_min = Duration::from_millis(5);
            config.backoff_max = Duration::from_millis(50);
            tune(&mut config);
            config
        })
        .collect();
    (listeners, configs)
}

/// Receives until `wanted` arrives; bounded to about 5 s.
async fn receive(transport: &TcpTransport, wanted: &Message) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let next =
            futures::future::select(Box::pin(transport.recv()), futures_timer::Delay::new(Duration::from_millis(50)))
                .await;
        if let futures::future::Either::Left((Ok((_, message)), _)) = next {
            if &message == wanted {
                return true;
            }
        }
    }
    false
}

async fn queue_is_bounded_and_drains_on_reconnect(start: Start) {
    let (mut listeners, configs) = configs(|config| config.queue_messages_max = 100);
    let second_listener = listeners.pop().unwrap();
    let first = start(configs[0].clone(), listeners.pop().unwrap()).unwrap();
    // Node 2 is down: its queue keeps only the newest 100 messages.
    for sequence in 0..2_000 {
        first.send(2, probe(sequence)).unwrap();
    }
    assert_eq!(first.queued()[&2], 100);
    assert_eq!(first.stats().messages_dropped_queue_full, 1_900);
    // Node 2 comes up: the reconnect delivers the newest messages, the oldest of them first.
    let second = start(configs[1].clone(), second_listener).unwrap();
    assert!(receive(&second, &probe(1_900)).await, "the oldest kept message arrives");
    assert!(receive(&second, &probe(1_999)).await, "the newest message arrives");
    assert!(first.stats().connections_established >= 1);
}

async fn oversized_messages_are_dropped_at_the_sender(start: Start) {
    let (mut listeners, configs) = configs(|config| config.frame_bytes_max = 4 * 1024);
    let second = start(configs[1].clone(), listeners.pop().unwrap()).unwrap();
    let first = start(configs[0].clone(), listeners.pop().unwrap()).unwrap();
    let huge = Message::CatchUp {
        first_slot: 1,
        values: vec![Value::Commands(std::sync::Arc::from(vec![Command::new(1, 1, vec![0; 8 * 1024])]))],
    };
    first.send(2, huge).unwrap();
    first.send(2, probe(7)).unwrap();
    assert!(receive(&second, &probe(7)).await, "the connection survives an oversized message");
    assert_eq!(first.stats().messages_dropped_oversized, 1);
    assert_eq!(second.stats().connections_refused, 0, "the receiver never saw it");
}

/// A receiver that does not call `recv` holds at most `inbox_bytes_max` (plus
/// one message) of large messages: its readers pause, the rest wait at the
/// sender, and once it reads, every message arrives, in order.
async fn the_inbox_is_bounded_in_bytes_and_loses_nothing(start: Start) {
    let (mut listeners, configs) = configs(|config| config.inbox_bytes_max = 64 << 10);
    let second = start(configs[1].clone(), listeners.pop().unwrap()).unwrap();
    let first = start(configs[0].clone(), listeners.pop().unwrap()).unwrap();
    let large = |slot: u64| Message::CatchUp {
        first_slot: slot,
        values: vec![Value::Commands(std::sync::Arc::from(vec![Command::new(1, slot, vec![7; 16 << 10])]))],
    };
    let message_bytes = large(0).encoded_bytes_bound();
    for slot in 0..64 {
        first.send(2, large(slot)).unwrap();
    }
    // The first messages arrive and fill the inbox; the reader then waits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while second.inbox_bytes() < (64 << 10) - message_bytes && Instant::now() < deadline {
        futures_timer::Delay::new(Duration::from_millis(5)).await;
    }
    futures_timer::Delay::new(Duration::from_millis(100)).await;
    let held = second.inbox_bytes();
    assert!(held >= (64 << 10) - message_bytes, "the inbox filled: {held} bytes");
    assert!(held <= (64 << 10) + message_bytes, "{held} bytes held past the 64 KiB bound");
    for slot in 0..64 {
        let received =
            futures::future::select(Box::pin(second.recv()), futures_timer::Delay::new(Duration::from_secs(5)));
        match received.await {
            futures::future::Either::Left((Ok((1, message)), _)) => assert_eq!(message, large(slot)),
            futures::future::Either::Left((Ok((from, message)), _)) => {
                panic!("message {slot}: a {} from {from}", message.kind())
            }
            futures::future::Either::Left((Err(error), _)) => panic!("message {slot}: {error}"),
            futures::future::Either::Right(_) => panic!("message {slot} never came"),
        }
    }
    assert_eq!(second.inbox_bytes(), 0);
}

async fn shutdown_stops_everything_and_frees_the_port(start: Start) {
    let (mut listeners, configs) = configs(|_| {});
    let second = start(configs[1].clone(), listeners.pop().unwrap()).unwrap();
    let first = start(configs[0].clone(), listeners.pop().unwrap()).unwrap();
    first.send(2, probe(1)).unwrap();
    assert!(receive(&second, &probe(1)).await);
    let address = second.local_addr();
    second.shutdown();
    assert!(matches!(second.recv().await, Err(TcpError::Closed)));
    assert!(matches!(second.send(1, probe(2)), Err(TcpError::Closed)));
    // The listener task is gone, so the port can be bound again (bounded wait for teardown).
    let mut rebound = None;
    for _ in 0..500 {
        if let Ok(listener) = TcpListener::bind(address) {
            rebound = Some(listener);
            break;
        }
        futures_timer::Delay::new(Duration::from_millis(10)).await;
    }
    let listener = rebound.expect("the port is free after shutdown");
    // A new node 2 on the same port is reached again by node 1's reconnects.
    let again = start(configs[1].clone(), listener).unwrap();
    let mut arrived = false;
    for sequence in 0..100 {
        first.send(2, probe(100 + sequence)).unwrap();
        if receive_within(&again, Duration::from_millis(50)).await {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "node 1 reconnects to the restarted node 2");
    drop(first);
}

async fn receive_within(transport: &TcpTransport, limit: Duration) -> bool {
    let next = futures::future::select(Box::pin(transport.recv()), futures_timer::Delay::new(limit)).await;
    matches!(next, futures::future::Either::Left((Ok(_), _)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_queue_is_bounded_and_drains_on_reconnect() {
    queue_is_bounded_and_drains_on_reconnect(TcpTransport::start_tokio_on).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_oversized_messages_are_dropped_at_the_sender() {
    oversized_messages_are_dropped_at_the_sender(TcpTransport::start_tokio_on).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_shutdown_stops_everything_and_frees_the_port() {
    shutdown_stops_everything_and_frees_the_port(TcpTransport::start_tokio_on).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_the_inbox_is_bounded_in_bytes_and_loses_nothing() {
    the_inbox_is_bounded_in_bytes_and_loses_nothing(TcpTransport::start_tokio_on).await;
}

#[test]
fn smol_the_inbox_is_bounded_in_bytes_and_loses_nothing() {
    smol::block_on(the_inbox_is_bounded_in_bytes_and_loses_nothing(TcpTransport::start_smol_on));
}

#[test]
fn smol_queue_is_bounded_and_drains_on_reconnect() {
    smol::block_on(queue_is_bounded_and_drains_on_reconnect(TcpTransport::start_smol_on));
}

#[test]
fn smol_oversized_messages_are_dropped_at_the_sender() {
    smol::block_on(oversized_messages_are_dropped_at_the_sender(TcpTransport::start_smol_on));
}

#[test]
fn smol_shutdown_stops_everything_and_frees_the_port() {
    smol::block_on(shutdown_stops_everything_and_frees_the_port(TcpTransport::start_smol_on));
}

#[test]
fn tokio_constructor_outside_a_runtime_is_an_error() {
    let (mut listeners, configs) = configs(|_| {});
    let result = TcpTransport::start_tokio_on(configs[0].clone(), listeners.remove(0));
    assert!(matches!(result, Err(TcpError::Runtime(_))), "{result:?}");
}

#[test]
fn invalid_config_is_refused() {
    let (_, mut configs) = configs(|config| config.queue_messages_max = 0);
    let result = TcpTransport::start_smol(configs.remove(0));
    assert!(matches!(result, Err(TcpError::Config(_))), "{result:?}");
}
