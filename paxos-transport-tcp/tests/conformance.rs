//! The transport conformance suite from `paxos-core`, over loopback TCP, under tokio and under smol.

use paxos_core::conformance::transport_suite;
use paxos_transport_tcp::{TcpConfig, TcpTransport};

type Start = fn(TcpConfig, std::net::TcpListener) -> Result<TcpTransport, paxos_transport_tcp::TcpError>;

fn endpoints(start: Start, secret: Option<&[u8]>) -> Vec<(u64, TcpTransport)> {
    let listeners: Vec<_> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addresses: Vec<_> = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
    let peers: Vec<(u64, std::net::SocketAddr)> = (1..=3).zip(addresses.iter().copied()).collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let id = index as u64 + 1;
            let mut config = TcpConfig::new(id, 77, addresses[index], peers.clone());
            config.secret = secret.map(<[u8]>::to_vec);
            (id, start(config, listener).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_under_tokio() {
    transport_suite(endpoints(TcpTransport::start_tokio_on, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_under_tokio_with_a_secret() {
    transport_suite(endpoints(TcpTransport::start_tokio_on, Some(b"sixteen bytes or more of secret"))).await;
}

#[test]
fn conformance_under_smol() {
    smol::block_on(transport_suite(endpoints(TcpTransport::start_smol_on, None)));
}

#[test]
fn conformance_under_smol_with_a_secret() {
    smol::block_on(transport_suite(endpoints(TcpTransport::start_smol_on, Some(b"sixteen bytes or more of secret"))));
}
