//! Helpers shared by this crate's integration tests: free loopback ports and started nodes.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use paxos_transport_zmq::{ZmqConfig, ZmqTransport};

pub const CLUSTER: u64 = 77;
pub const SECRET: &[u8] = b"sixteen bytes or more of secret";

/// Binds `count` listeners on free loopback ports (kept bound, so no other process can take them).
pub fn listeners(count: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let listeners: Vec<_> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addresses = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
    (listeners, addresses)
}

/// Starts nodes 1..=count of one cluster on loopback.
pub async fn start(count: usize, secret: Option<&[u8]>) -> Vec<(u64, ZmqTransport)> {
    let (listeners, addresses) = listeners(count);
    let peers: Vec<(u64, SocketAddr)> = (1..=count as u64).zip(addresses.iter().copied()).collect();
    let mut endpoints = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let id = index as u64 + 1;
        let mut config = ZmqConfig::new(id, CLUSTER, addresses[index], peers.clone());
        config.secret = secret.map(<[u8]>::to_vec);
        endpoints.push((id, ZmqTransport::start_on(config, listener).await.unwrap()));
    }
    endpoints
}

/// Polls `condition` every 10 ms for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
