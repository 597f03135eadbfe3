//! Criterion: Basic against Multi-Paxos through the async node, on every
//! compiled-in transport (in-memory; TCP loopback with feature `tcp`; ZeroMQ
//! loopback with feature `zmq`) and storage
//! (in-memory; file with group commit with feature `file`). The base
//! configuration is 3 replicas, 8 B commands, batching on, at 1, 64 and 1024 in
//! flight; 5 replicas, 1 KiB commands and batching off are varied one at a time
//! at 64 in flight. One iteration is one applied command.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_bench::node_run::NodeCluster;
use paxos_bench::{ProtocolKind, Spec, StorageKind, TransportKind};

fn backends() -> Vec<(TransportKind, StorageKind)> {
    let mut backends = vec![(TransportKind::Memory, StorageKind::Memory)];
    if cfg!(feature = "file") {
        backends.push((TransportKind::Memory, StorageKind::File));
    }
    if cfg!(feature = "tcp") {
        backends.push((TransportKind::Tcp, StorageKind::Memory));
        if cfg!(feature = "file") {
            backends.push((TransportKind::Tcp, StorageKind::File));
        }
    }
    if cfg!(feature = "zmq") {
        backends.push((TransportKind::Zmq, StorageKind::Memory));
    }
    backends
}

fn through_node(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("node");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for (transport, storage) in backends() {
        let base = Spec {
            protocol: ProtocolKind::Basic,
            transport,
            storage,
            replicas: 3,
            command_bytes: 8,
            in_flight: 64,
            batch: true,
        };
        let mut specs: Vec<Spec> =
            [1, 64, 1024].into_iter().map(|in_flight| Spec { in_flight, ..base.clone() }).collect();
        specs.push(Spec { replicas: 5, ..base.clone() });
        specs.push(Spec { command_bytes: 1024, ..base.clone() });
        specs.push(Spec { batch: false, ..base.clone() });
        for spec in specs {
            for protocol in [ProtocolKind::Basic, ProtocolKind::Multi] {
                let spec = spec.with_protocol(protocol);
                let mut cluster = NodeCluster::start(&spec).expect("the cluster starts");
                let id = format!(
                    "{transport}-{storage}/n{}/{}B/if{}/batch-{}",
                    spec.replicas,
                    spec.command_bytes,
                    spec.in_flight,
                    if spec.batch { "on" } else { "off" }
                );
                group.bench_function(BenchmarkId::new(protocol.to_string(), id), |bencher| {
                    bencher.iter_custom(|commands| cluster.run_commands(commands).expect("commands are applied"))
                });
                // Honest measurement: every node must hold every command, in one order.
                cluster.finish().expect("the nodes' logs agree");
            }
        }
    }
    group.finish();
}

criterion_group!(benches, through_node);
criterion_main!(benches);
