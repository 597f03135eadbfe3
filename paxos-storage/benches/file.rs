//! Durable appends per second on `FileStorage`: 64 concurrent appenders sharing
//! syncs (group commit) against the same appenders with one fdatasync per append,
//! and a single appender, all on the disk under `target/`.
//!
//! `cargo bench -p paxos-storage --features file --bench file`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::executor::block_on;
use paxos_core::{Ballot, Command, Storage, StorageOp, Value};
use paxos_storage::{FileOptions, FileStorage};

const APPENDERS: u64 = 64;

/// A small Accept, as an acceptor writes for one slot of a batch of commands.
fn accept(slot: u64) -> StorageOp {
    let value = Value::Commands(Arc::from(vec![Command::new(slot, 1, vec![7u8; 64])]));
    // Slots wrap so the durable state, and so each checkpoint, stays the same size.
    StorageOp::Accept { slot: slot % 4096, ballot: Ballot::new(1, 1), value }
}

fn appenders(criterion: &mut Criterion) {
    // CARGO_TARGET_TMPDIR is on the same disk as the build, never a tmpfs.
    let root = env!("CARGO_TARGET_TMPDIR");
    let mut group = criterion.benchmark_group("file_append");
    group.throughput(Throughput::Elements(APPENDERS));
    for (name, appends_per_sync_max) in
        [("group_commit", FileOptions::default().appends_per_sync_max), ("sync_per_append", 1)]
    {
        let dir = tempfile::tempdir_in(root).expect("bench directory");
        let storage = FileStorage::open(dir.path(), FileOptions { appends_per_sync_max, ..FileOptions::default() })
            .expect("open");
        let mut next = 0u64;
        group.bench_function(format!("{name}/{APPENDERS}_appenders"), |bencher| {
            bencher.iter(|| {
                let ops: Vec<StorageOp> = (0..APPENDERS).map(|offset| accept(next + offset)).collect();
                next += APPENDERS;
                block_on(async {
                    let calls = ops.iter().map(|op| storage.append(std::slice::from_ref(op)));
                    for result in futures::future::join_all(calls).await {
                        result.expect("append");
                    }
                });
            })
        });
        let stats = storage.stats();
        eprintln!("{name}: {} appends in {} syncs", stats.appends, stats.syncs);
    }
    group.finish();

    let mut group = criterion.benchmark_group("file_append");
    group.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir_in(root).expect("bench directory");
    let storage = FileStorage::open(dir.path(), FileOptions::default()).expect("open");
    let mut next = 0u64;
    group.bench_function("one_appender", |bencher| {
        bencher.iter(|| {
            next += 1;
            block_on(storage.append(&[accept(next)])).expect("append");
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = appenders
}
criterion_main!(benches);
