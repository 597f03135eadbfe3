//! A 3-node Multi-Paxos cluster in one process: the README's example, extended.
//! Adds commands through different nodes, streams the log from a follower,
//! and prints each replica's status.
//!
//! `cargo run --example cluster`

use futures::StreamExt;
use paxos::{memory::MemoryNetwork, storage::MemoryStorage, Command, Config, Node, NodeError, NodeHandle, Protocol};

/// Adds `command`, following the leader hint if the node answers `NotLeader`.
async fn add(handles: &[NodeHandle], via: usize, command: Command) -> anyhow::Result<u64> {
    let mut target = via;
    for _ in 0..10 {
        match handles[target].add(command.clone()).await {
            Ok(index) => return Ok(index),
            Err(NodeError::NotLeader { leader_hint: Some(leader) }) => target = (leader - 1) as usize,
            Err(NodeError::NotLeader { leader_hint: None } | NodeError::Timeout) => {
                target = (target + 1) % handles.len()
            }
            Err(error) => return Err(error.into()),
        }
    }
    anyhow::bail!("command {:?} was not chosen", command.id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let network = MemoryNetwork::new();
    let members = [1, 2, 3];
    let mut handles = Vec::new();
    for id in members {
        let config = Config::new(id, members, Protocol::Multi);
        let (handle, driver) = Node::start(config, network.join(id), MemoryStorage::new()).await?;
        tokio::spawn(driver);
        handles.push(handle);
    }
    let mut log = handles[2].subscribe().await?;
    for sequence in 1..=10u64 {
        let via = (sequence % 3) as usize;
        let index = add(&handles, via, Command::new(1, sequence, format!("set x = {sequence}").into_bytes())).await?;
        println!("command {sequence} added through node {} at index {index}", via + 1);
    }
    for _ in 0..10 {
        let entry = log.next().await.expect("the stream stays open");
        println!("node 3 applied #{}: {}", entry.index, String::from_utf8_lossy(&entry.command.payload));
    }
    for handle in &handles {
        let status = handle.status().await?;
        println!(
            "node {}: {:?}, leader {:?}, ballot {}, applied through slot {}, {} commands",
            status.node_id, status.role, status.leader, status.promised, status.applied_through, status.next_index
        );
        handle.shutdown();
    }
    Ok(())
}
