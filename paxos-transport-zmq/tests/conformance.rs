//! The transport conformance suite from `paxos-core`, over ZeroMQ on loopback, under tokio.

mod common;

use paxos_core::conformance::transport_suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    common::init_tracing();
    transport_suite(common::start(3, None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_a_secret() {
    transport_suite(common::start(3, Some(common::SECRET)).await).await;
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_on_a_current_thread_runtime() {
    transport_suite(common::start(2, None).await).await;
}
