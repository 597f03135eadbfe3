//! Criterion: our Multi-Paxos against OmniPaxos 0.2.4, the protocol alone, in the
//! same one-thread loop (feature `compare-omnipaxos`): 3 replicas, 8 B commands,
//! 1, 1024 and 10,000 commands in flight, messages passed in memory, no runtime.
//! One iteration is one command decided at the leader, so criterion reports
//! commands/s. Both clusters run in the same process, one after the other, and
//! each must pass its agreement check after its group, or the bench fails.
//!
//! `paxos-multi` is [`LoopCluster`] with batching on, as in `benches/protocol.rs`.
//! `omnipaxos` is [`OmniLoopCluster::new`], whose `batch_size` is 1 at one command
//! in flight and the number of commands in flight above 64
//! ([`paxos_bench::omnipaxos_loop::batch_size_for`]). That was OmniPaxos's best
//! figure in a sweep of `batch_size` 1, 64, 1024 and 10,000 on this machine
//! (commands/s, criterion's middle estimate, one run):
//!
//! | in flight | 1     | 64    | 1024  | 10,000 |
//! |-----------|-------|-------|-------|--------|
//! | 1         | 1.67M | 0.61M | 0.60M | 0.60M  |
//! | 1024      | 8.4M  | 15.5M | 16.6M | 16.5M  |
//! | 10,000    | 7.8M  | 12.5M | 12.5M | 15.0M  |
//!
//! (A batch that is not full waits for a tick, and the loop ticks only when a
//! round did nothing: hence the collapse of batches above 1 at one in flight.)

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use paxos_bench::omnipaxos_loop::OmniLoopCluster;
use paxos_bench::protocol_loop::LoopCluster;
use paxos_bench::{ProtocolKind, Spec, StorageKind, TransportKind};

fn head_to_head(criterion: &mut Criterion) {
    for in_flight in [1, 1_024, 10_000] {
        let mut group = criterion.benchmark_group(format!("vs-omnipaxos/n3/8B/if{in_flight}"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(4));
        let spec = Spec {
            protocol: ProtocolKind::Multi,
            transport: TransportKind::Loop,
            storage: StorageKind::Memory,
            replicas: 3,
            command_bytes: 8,
            in_flight,
            batch: true,
        };
        let mut ours = LoopCluster::new(&spec).expect("the loop cluster starts");
        let mut omnipaxos = OmniLoopCluster::new(in_flight).expect("the OmniPaxos cluster starts");
        group.bench_function("paxos-multi", |bencher| {
            bencher.iter_custom(|commands| ours.run_commands(commands).expect("commands are applied"))
        });
        group.bench_function("omnipaxos", |bencher| {
            bencher.iter_custom(|commands| omnipaxos.run_commands(commands).expect("commands are decided"))
        });
        group.finish();
        // Honest measurement: every replica must hold every command, in one order.
        ours.finish().expect("our replicas' logs agree");
        omnipaxos.finish().expect("the OmniPaxos servers' logs agree");
    }
}

criterion_group!(benches, head_to_head);
criterion_main!(benches);
