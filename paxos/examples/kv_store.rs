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
#[derive(Debug, Default)]
struct Store {
    map: BTreeMap<String, String>,
    /// Log entries applied so far: the next one expected is this index.
    applied: u64,
    /// The slot of the last entry applied, if it was the slot's last: the
    /// state can then be compacted through that slot.
    complete_slot: Option<paxos::Slot>,
}

impl Store {
    fn apply(&mut self, applied: Applied) -> anyhow::Result<()> {
        match applied {
            Applied::Snapshot(snapshot) => {
                // The snapshot's data is what `encode` gave at compaction time.
                self.map = postcard::from_bytes(&snapshot.data)?;
                self.applied = snapshot.next_index;
                self.complete_slot = None;
            }
            Applied::Entry(entry) => {
                anyhow::ensure!(entry.index == self.applied, "entry {} out of order", entry.index);
                let text = String::from_utf8_lossy(&entry.command.payload).into_owned();
                if let Some((key, value)) = text.split_once('=') {
                    self.map.insert(key.to_string(), value.to_string());
                }
                self.applied += 1;
                self.complete_slot = entry.last_in_slot.then_some(entry.slot);
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

type Driver = tokio::task::JoinHandle<Result<(), NodeError>>;

async fn start(network: &MemoryNetwork, id: u64, storage: MemoryStorage) -> anyhow::Result<(NodeHandle, Driver)> {
    let mut config = Config::new(id, [1, 2, 3], Protocol::Multi);
    // Keep no compacted slots, so the replica that comes back takes the snapshot.
    config.compaction_keep_slots = 0;
    let (handle, driver) = Node::start(config, network.join(id), storage).await?;
    Ok((handle, tokio::spawn(driver)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let mut handles = Vec::new();
    let mut drivers = Vec::new();
    for id in 1..=3 {
        let (handle, driver) = start(&network, id, storages[id as usize - 1].clone()).await?;
        handles.push(handle);
        drivers.push(driver);
    }
    // Each replica's application follows its own log.
    let mut stores: Vec<Store> = (0..3).map(|_| Store::default()).collect();
    let mut logs = Vec::new();
    for handle in &handles {
        logs.push(Box::pin(handle.subscribe_from(0).await?));
    }

    let mut sequence = 0;
    for (key, value) in [("apple", "red"), ("banana", "yellow"), ("cherry", "dark red")] {
        sequence += 1;
        set(&handles, 1, sequence, key, value).await?;
    }
    stores[2].follow(&mut logs[2], sequence).await?;
    println!("node 3 after 3 sets: {:?}", stores[2].map);

    // Node 3 is cut off; the others go on, then nodes 1 and 2 compact: each
    // application hands over its map, at a slot it applied whole.
    network.isolate(3);
    for (key, value) in [("apple", "green"), ("date", "brown"), ("elderberry", "purple")] {
        sequence += 1;
        set(&handles, 1, sequence, key, value).await?;
    }
    for node in 0..2 {
        stores[node].follow(&mut logs[node], sequence).await?;
        let slot = stores[node].complete_slot.ok_or_else(|| anyhow::anyhow!("a slot still arriving"))?;
        handles[node].compact(slot, stores[node].encode()?).await??;
        println!("node {} compacted through slot {slot}, entry {}", node + 1, stores[node].applied);
    }

    // Node 3 comes back: the entries it lacks are gone, so its stream brings the
    // snapshot, then what was applied after it.
    network.heal();
    sequence += 1;
    set(&handles, 1, sequence, "fig", "purple").await?;
    for node in 0..3 {
        stores[node].follow(&mut logs[node], sequence).await?;
    }
    println!("node 3 after coming back: {:?}", stores[2].map);
    anyhow::ensure!(stores[2].map == stores[0].map, "node 3's map differs from node 1's");

    // Node 1 restarts from its storage; its application rebuilds the map from
    // the snapshot and the entries after it.
    network.isolate(1);
    handles[0].shutdown();
    drivers.remove(0).await??;
    network.heal();
    let (restarted, _) = start(&network, 1, storages[0].clone()).await?;
    let mut rebuilt = Store::default();
    rebuilt.follow(&mut Box::pin(restarted.subscribe_from(0).await?), sequence).await?;
    println!("node 1 rebuilt after a restart: {:?}", rebuilt.map);
    anyhow::ensure!(rebuilt.map == stores[0].map, "the rebuilt map differs");

    for handle in [&restarted, &handles[1], &handles[2]] {
        handle.shutdown();
    }
    Ok(())
}
