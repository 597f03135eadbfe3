//! Criterion: the protocol alone (sans-IO replicas in one thread), Basic against
//! Multi-Paxos over 3 and 5 replicas, 8 B and 1 KiB commands, 1, 64 and 1024
//! commands in flight (and 10,000 for the headline figure), batching on and off.
//! One iteration is one applied command, so criterion reports commands/s.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_bench::protocol_loop::LoopCluster;
use paxos_bench::{ProtocolKind, Spec, StorageKind, TransportKind};

fn protocol_alone(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("loop");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    let mut specs = Vec::new();
    for replicas in [3, 5] {
        for command_bytes in [8, 1024] {
            for in_flight in [1, 64, 1024] {
                for batch in [true, false] {
                    specs.push((replicas, command_bytes, in_flight, batch));
                }
            }
        }
    }
    specs.push((3, 8, 10_000, true));
    for (replicas, command_bytes, in_flight, batch) in specs {
        for protocol in [ProtocolKind::Basic, ProtocolKind::Multi] {
            let spec = Spec {
                protocol,
                transport: TransportKind::Loop,
                storage: StorageKind::Memory,
                replicas,
                command_bytes,
                in_flight,
                batch,
            };
            let mut cluster = LoopCluster::new(&spec).expect("the loop cluster starts");
            let id = format!("n{replicas}/{command_bytes}B/if{in_flight}/batch-{}", if batch { "on" } else { "off" });
            group.bench_function(BenchmarkId::new(protocol.to_string(), id), |bencher| {
                bencher.iter_custom(|commands| cluster.run_commands(commands).expect("commands are applied"))
            });
            // Honest measurement: every replica must hold every command, in one order.
            cluster.finish().expect("the replicas' logs agree");
        }
    }
    group.finish();
}

criterion_group!(benches, protocol_alone);
criterion_main!(benches);
