//! A replicated key-value store: the state machine an application builds from
//! the log with `subscribe_from`, snapshots taken with `compact`, a replica that
//! comes back after the others compacted, and a restart that rebuilds the map.
//!
//! `cargo run --example kv_store`

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use paxos::{
    memory::MemoryNetwork, storage::MemoryStorage, Applied, Command, Config, Node, NodeError, NodeHandle, Protocol,
};

/// The application's state: a map, built from `set key=value` commands.
#[derive(Debug, Default, PartialEq)]
struct Store {
    map: BTreeMap<String, String>,
    /// Log entries applied so far: the next one expected is this index.
    applied: u64,
}

impl Store {
    fn apply(&mut self, applied: Applied) -> anyhow::Result<()> {
        match applied {
            Applied::Snapshot(snapshot) => {
                // The snapshot's data is what `encode` gave at compaction time.
                self.map = postcard::from_bytes(&snapshot.data)?;
                self.applied = snapshot.next_index;
            }
            Applied::Entry(entry) => {
                anyhow::ensure!(entry.index == self.applied, "entry {} out of order", entry.index);
                let text = String::from_utf8_lossy(&entry.command.payload).into_owned();
                if let Some((key, value)) = text.split_once('=') {
                    self.map.insert(key.to_string(), value.to_string());
                }
                self.applied += 1;
            }
        }
        Ok(())
    }

    fn encode(&self) -> anyhow::Result<Vec<u8>> {
        Ok(postcard::to_allocvec(&self.map)?)
    }

    /// Applies what `stream` brings until `count` entries are covered.
    async fn follow(
        &mut self,
        stream: &mut (impl futures::Stream<Item = Applied> + Unpin),
        count: u64,
    ) -> anyhow::Result<()> {
        while self.applied < count {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await?;
            self.apply(next.ok_or_else(|| anyhow::anyhow!("the stream ended"))?)?;
        }
        Ok(())
    }
}

/// Adds `command`, following the leader hint if the node answers `NotLeader`.
async fn set(handles: &[NodeHandle], client: u64, sequence: u64, key: &str, value: &str) -> anyhow::Result<u64> {
    let command = Command::new(client, sequence, format!("{key}={value}").into_bytes());
    let mut target = 0;
    for _ in 0..20 {
        match handles[target].add(command.clone()).await {
            Ok(index) => return Ok(index),
            Err(NodeError::NotLeader { leader_hint: Some(leader) }) => target = (leader - 1) as usize,
            Err(NodeError::NotLeader { leader_hint: None } | NodeError::Timeout) => {
                target = (target + 1) % handles.len()
            }
            Err(error) => return Err(error.into()),
        }
    }
    anyhow::bail!("{key}={value} was not chosen")
}

async fn start(network: &MemoryNetwork, id: u64, storage: MemoryStorage) -> anyhow::Result<NodeHandle> {
    let mut config = Config::new(id, [1, 2, 3], Protocol::Multi);
    // Keep no compacted slots, so the replica that comes back takes the snapshot.
    config.compaction_keep_slots = 0;
    let (handle, driver) = Node::start(config, network.join(id), storage).await?;
    tokio::spawn(driver);
    Ok(handle)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let mut handles = Vec::new();
    for id in 1..=3 {
        handles.push(start(&network, id, storages[id as usize - 1].clone()).await?);
    }
    // Each replica's application follows its log; here, node 1's and node 3's.
    let mut store_1 = Store::default();
    let mut log_1 = Box::pin(handles[0].subscribe_from(0).await?);
    let mut store_3 = Store::default();
    let mut log_3 = Box::pin(handles[2].subscribe_from(0).await?);

    let mut sequence = 0;
    for (key, value) in [("apple", "red"), ("banana", "yellow"), ("cherry", "dark red")] {
        sequence += 1;
        set(&handles, 1, sequence, key, value).await?;
    }
    store_3.follow(&mut log_3, sequence).await?;
    println!("node 3 after 3 sets: {:?}", store_3.map);

    // Node 3 is cut off; the others go on, then node 1 and 2 compact: their
    // applications hand over their maps as the snapshots' data.
    network.isolate(3);
    for (key, value) in [("apple", "green"), ("date", "brown"), ("elderberry", "purple")] {
        sequence += 1;
        set(&handles, 1, sequence, key, value).await?;
    }
    store_1.follow(&mut log_1, sequence).await?;
    for handle in &handles[..2] {
        // Node 2's application would encode its own map; it has the same one
        // once its replica has applied as much as node 1's.
        let mut status = handle.status().await?;
        for _ in 0..500 {
            if status.next_index == store_1.applied {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            status = handle.status().await?;
        }
        anyhow::ensure!(status.next_index == store_1.applied, "node {} is not where node 1 is", status.node_id);
        handle.compact(status.applied_through, store_1.encode()?).await??;
    }
    println!("nodes 1 and 2 compacted through entry {}", store_1.applied);

    // Node 3 comes back: the entries it lacks are gone, so its stream brings the
    // snapshot, then what was applied after it.
    network.heal();
    sequence += 1;
    set(&handles, 1, sequence, "fig", "purple").await?;
    store_3.follow(&mut log_3, sequence).await?;
    store_1.follow(&mut log_1, sequence).await?;
    println!("node 3 after coming back: {:?}", store_3.map);
    anyhow::ensure!(store_3 == store_1, "node 3's map differs from node 1's");

    // Node 1 restarts from its storage; its application rebuilds the map from
    // the snapshot and the entries after it.
    network.isolate(1);
    handles[0].shutdown();
    network.heal();
    let restarted = start(&network, 1, storages[0].clone()).await?;
    let mut rebuilt = Store::default();
    rebuilt.follow(&mut Box::pin(restarted.subscribe_from(0).await?), sequence).await?;
    println!("node 1 rebuilt after a restart: {:?}", rebuilt.map);
    anyhow::ensure!(rebuilt == store_1, "the rebuilt map differs");

    for handle in [&restarted, &handles[1], &handles[2]] {
        handle.shutdown();
    }
    Ok(())
}
