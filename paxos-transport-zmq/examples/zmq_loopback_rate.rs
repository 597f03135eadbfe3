//! Small-message rate between two nodes over ZeroMQ on loopback: node 1 keeps
//! node 2's queue topped up for two seconds and node 2 counts what arrives.
//!
//! `cargo run --release -p paxos-transport-zmq --example zmq_loopback_rate`

use std::time::{Duration, Instant};

use paxos_core::{Message, Transport};
use paxos_transport_zmq::{ZmqConfig, ZmqTransport};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let listeners: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addresses: Vec<_> = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
    let mut transports = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let mut config = ZmqConfig::new(index as u64 + 1, 1, addresses[index], [(1, addresses[0]), (2, addresses[1])]);
        config.queue_messages_max = 1 << 16;
        transports.push(ZmqTransport::start_on(config, listener).await.unwrap());
    }
    let receiver = transports.pop().unwrap();
    let sender = transports.pop().unwrap();
    // Wait for the session, then measure.
    loop {
        sender.send(2, Message::CatchUpRequest { from_slot: 0 }).unwrap();
        if tokio::time::timeout(Duration::from_millis(50), receiver.recv()).await.is_ok() {
            break;
        }
    }
    let window = Duration::from_secs(2);
    let feeder = tokio::spawn(async move {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < window {
            for _ in 0..256 {
                sender.send(2, Message::CatchUpRequest { from_slot: sent }).unwrap();
                sent += 1;
            }
            tokio::task::yield_now().await;
        }
        (sent, sender)
    });
    let start = Instant::now();
    let mut received = 0u64;
    while start.elapsed() < window {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), receiver.recv()).await {
            received += 1;
        }
    }
    let (sent, sender) = feeder.await.unwrap();
    let stats = sender.stats();
    println!(
        "received {received} messages in {:?}: {:.0} messages/s (offered {sent}, dropped from the full queue {})",
        window,
        received as f64 / window.as_secs_f64(),
        stats.messages_dropped_queue_full
    );
}
