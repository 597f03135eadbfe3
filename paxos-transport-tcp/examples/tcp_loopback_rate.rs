//! Measures one-way throughput of small messages between two TCP transports on
//! loopback (tokio): `cargo run --release -p paxos-transport-tcp --example tcp_loopback_rate [seconds]`.
//!
//! The sender keeps node 2's outbound queue about half full, so the queue never
//! drops and the figure is what the connection and its coalesced writes carry.

use std::time::{Duration, Instant};

use paxos_core::{Message, Transport};
use paxos_transport_tcp::{TcpConfig, TcpTransport};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|arg| arg.parse().ok()).unwrap_or(3);
    let listeners: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addresses: Vec<_> = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
    let mut transports = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let mut config = TcpConfig::new(index as u64 + 1, 1, addresses[index], [(1, addresses[0]), (2, addresses[1])]);
        config.secret = Some(b"measurement shared secret".to_vec());
        transports.push(std::sync::Arc::new(TcpTransport::start_tokio_on(config, listener).unwrap()));
    }
    let (sender, receiver) = (transports[0].clone(), transports[1].clone());
    let message = Message::CatchUpRequest { from_slot: 12_345 };
    let encoded = paxos_core::wire::encode(1, &message).len();

    // Warm up: wait for the connection.
    sender.send(2, message.clone()).unwrap();
    receiver.recv().await.unwrap();

    let stop = Instant::now() + Duration::from_secs(seconds);
    let producer = tokio::spawn({
        let sender = sender.clone();
        let message = message.clone();
        async move {
            let mut sent = 0u64;
            while Instant::now() < stop {
                if sender.queued()[&2] < 512 {
                    for _ in 0..256 {
                        sender.send(2, message.clone()).unwrap();
                    }
                    sent += 256;
                } else {
                    tokio::task::yield_now().await;
                }
            }
            sent
        }
    });
    let started = Instant::now();
    let mut received = 0u64;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), receiver.recv()).await {
        received += 1;
    }
    let elapsed = started.elapsed().saturating_sub(Duration::from_millis(500));
    let sent = producer.await.unwrap();
    let stats = sender.stats();
    println!(
        "{received} of {sent} messages ({encoded}-byte bodies, {} bytes framed) in {:.2} s: {:.0} messages/s one way; dropped {}",
        encoded + 4,
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64(),
        stats.messages_dropped_queue_full
    );
}
