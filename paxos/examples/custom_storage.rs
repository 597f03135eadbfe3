//! A user-written `Storage` backend: a wrapper that counts writes and bytes
//! around any other storage. It passes the storage conformance suite in one call,
//! then backs a 3-node Multi-Paxos cluster. See docs/extending.md.
//!
//! `cargo run --example custom_storage`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use paxos::conformance::storage_suite;
use paxos::{
    memory::MemoryNetwork, storage::MemoryStorage, Command, Config, DurableState, Node, Protocol, Storage, StorageOp,
};

/// Write statistics, shared between the storage and whoever reads them.
#[derive(Default, Debug)]
struct Metrics {
    appends: AtomicU64,
    ops: AtomicU64,
    accepted_payload_bytes: AtomicU64,
}

/// Counts what goes through to `inner`. Durability is `inner`'s: this wrapper
/// returns from `append` only after `inner` did, which is the whole contract.
struct MeteredStorage<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl<S: Storage> Storage for MeteredStorage<S> {
    type Error = S::Error;

    async fn append(&self, ops: &[StorageOp]) -> Result<(), S::Error> {
        self.inner.append(ops).await?;
        // Count only what is durable.
        self.metrics.appends.fetch_add(1, Ordering::Relaxed);
        self.metrics.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
        let bytes: usize = ops
            .iter()
            .map(|op| match op {
                StorageOp::Accept { value, .. } => value.payload_bytes(),
                _ => 0,
            })
            .sum();
        self.metrics.accepted_payload_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn load(&self) -> Result<DurableState, S::Error> {
        self.inner.load().await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // 1. Prove the backend keeps the contract: one call.
    let store = MemoryStorage::new();
    storage_suite(|| {
        let inner = store.clone();
        async move { MeteredStorage { inner, metrics: Arc::default() } }
    })
    .await;
    println!("MeteredStorage passed the storage conformance suite");

    // 2. Run a cluster on it.
    let network = MemoryNetwork::new();
    let members = [1, 2, 3];
    let mut handles = Vec::new();
    let mut all_metrics = Vec::new();
    for id in members {
        let metrics = Arc::new(Metrics::default());
        let storage = MeteredStorage { inner: MemoryStorage::new(), metrics: metrics.clone() };
        let (handle, driver) =
            Node::start(Config::new(id, members, Protocol::Multi), network.join(id), storage).await?;
        tokio::spawn(driver);
        handles.push(handle);
        all_metrics.push(metrics);
    }
    for sequence in 1..=20u64 {
        let mut result = handles[0].add(Command::new(1, sequence, vec![b'x'; 100])).await;
        for _ in 0..10 {
            match result {
                Ok(_) => break,
                Err(_) => {
                    result = handles[(sequence % 3) as usize].add(Command::new(1, sequence, vec![b'x'; 100])).await
                }
            }
        }
        result?;
    }
    for (id, metrics) in members.iter().zip(&all_metrics) {
        println!(
            "node {id}: {} durable appends, {} ops, {} accepted payload bytes",
            metrics.appends.load(Ordering::Relaxed),
            metrics.ops.load(Ordering::Relaxed),
            metrics.accepted_payload_bytes.load(Ordering::Relaxed)
        );
    }
    for handle in &handles {
        handle.shutdown();
    }
    Ok(())
}
