//! `FileStorage` against its contract: the conformance suite, the directory lock,
//! group commit, checkpoints, and crash consistency (a log cut at every byte, bit
//! flips, and a writer process killed with SIGKILL).

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use paxos_core::{Ballot, Command, DurableState, Snapshot, Storage, StorageOp, Value};
use paxos_storage::{FileError, FileOptions, FileStorage};

const LOG_NAME: &str = "wal-0000000000000000.log";

fn value(tag: u64, bytes: usize) -> Value {
    Value::Commands(Arc::from(vec![Command::new(tag, 1, vec![tag as u8; bytes])]))
}

fn replay<'a>(batches: impl IntoIterator<Item = &'a Vec<StorageOp>>) -> DurableState {
    let mut state = DurableState::default();
    batches.into_iter().flatten().for_each(|op| state.apply(op));
    state
}

fn open(dir: &Path) -> FileStorage {
    FileStorage::open(dir, FileOptions::default()).expect("open")
}

/// A small deterministic PRNG (splitmix64), so failures replay from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[test]
fn passes_the_storage_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    block_on(paxos_core::conformance::storage_suite(|| {
        let path = dir.path().to_path_buf();
        async move { open(&path) }
    }));
}

#[test]
fn passes_the_storage_conformance_suite_while_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileOptions { log_bytes_max: 512, ..FileOptions::default() };
    block_on(paxos_core::conformance::storage_suite(|| {
        let storage = FileStorage::open(dir.path(), options.clone()).expect("open");
        async move { storage }
    }));
    let logs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter(|name| name.starts_with("wal-"))
        .collect::<Vec<_>>();
    assert_eq!(logs.len(), 1, "exactly one live log: {logs:?}");
    assert_ne!(logs[0], LOG_NAME, "the small log limit forced checkpoints");
}

#[test]
fn a_second_open_of_one_directory_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let error = FileStorage::open(dir.path(), FileOptions::default()).unwrap_err();
    assert!(matches!(&error, FileError::Locked { dir: locked } if locked == dir.path()), "{error}");
    assert!(error.to_string().contains("locked"), "the message names the problem: {error}");
    drop(first);
    let second = open(dir.path());
    drop(second);
}

#[test]
fn invalid_options_and_oversized_appends_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let error =
        FileStorage::open(dir.path(), FileOptions { appends_per_sync_max: 0, ..FileOptions::default() }).unwrap_err();
    assert!(error.to_string().contains("appends_per_sync_max"), "{error}");

    let storage =
        FileStorage::open(dir.path(), FileOptions { record_bytes_max: 1024, ..FileOptions::default() }).unwrap();
    let large = StorageOp::Accept { slot: 1, ballot: Ballot::new(1, 1), value: value(1, 4096) };
    let error = block_on(storage.append(&[large])).unwrap_err();
    assert!(matches!(error, FileError::TooLarge { max: 1024, .. }), "{error}");
    // Nothing was written, and the storage still works.
    block_on(storage.append(&[StorageOp::Round(2)])).unwrap();
    assert_eq!(block_on(storage.load()).unwrap().round, 2);
}

#[test]
fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let ops: Vec<StorageOp> =
        (0..64).map(|slot| StorageOp::Accept { slot, ballot: Ballot::new(1, 1), value: value(slot, 16) }).collect();
    block_on(async {
        let calls = ops.iter().map(|op| storage.append(std::slice::from_ref(op)));
        for result in futures::future::join_all(calls).await {
            result.unwrap();
        }
    });
    let stats = storage.stats();
    assert_eq!(stats.appends, 64);
    assert!(stats.syncs < stats.appends, "group commit shares syncs: {stats:?}");
    drop(storage);
    assert_eq!(block_on(open(dir.path()).load()).unwrap(), replay([&ops]));
}

#[test]
fn one_append_per_sync_when_group_commit_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        FileStorage::open(dir.path(), FileOptions { appends_per_sync_max: 1, ..FileOptions::default() }).unwrap();
    block_on(async {
        let ops: Vec<StorageOp> = (0..16).map(StorageOp::Round).collect();
        let calls = ops.iter().map(|op| storage.append(std::slice::from_ref(op)));
        futures::future::join_all(calls).await.into_iter().for_each(|result| result.unwrap());
    });
    assert_eq!(storage.stats().syncs, 16);
}

/// A long run whose core compacts every 50 slots: checkpoints keep the directory
/// within a constant of the live state, and a reopen sees the exact replay.
#[test]
fn checkpoints_keep_disk_use_bounded_under_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileOptions { log_bytes_max: 16 << 10, ..FileOptions::default() };
    let storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    let mut batches = Vec::new();
    let mut largest = 0u64;
    block_on(async {
        for slot in 1..=3000u64 {
            let mut batch = vec![
                StorageOp::Accept { slot, ballot: Ballot::new(2, 1), value: value(slot, 64) },
                StorageOp::Chosen { slot, value: None },
            ];
            if slot % 50 == 0 {
                batch.push(StorageOp::Compact(Snapshot { through_slot: slot - 10, ..Snapshot::default() }));
            }
            storage.append(&batch).await.unwrap();
            batches.push(batch);
            let bytes: u64 =
                std::fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).sum();
            largest = largest.max(bytes);
        }
    });
    let stats = storage.stats();
    assert!(stats.checkpoints >= 10, "{stats:?}");
    // Live state is about 60 slots of ~100 bytes; the log is 16 KiB plus a record.
    assert!(largest < 64 << 10, "the directory peaked at {largest} bytes");
    drop(storage);
    assert_eq!(block_on(FileStorage::open(dir.path(), options).unwrap().load()).unwrap(), replay(&batches));
}

/// Batches of different shapes, appended one at a time, and the log size after each.
fn build_log(dir: &Path) -> (Vec<Vec<StorageOp>>, Vec<u64>) {
    let storage = open(dir);
    let mut boundaries = vec![storage.stats().log_bytes];
    let mut batches = Vec::new();
    for index in 0..12u64 {
        let batch = match index % 4 {
            0 => vec![StorageOp::Round(index + 1), StorageOp::Promise(Ballot::new(index + 1, 2))],
            1 => vec![StorageOp::Accept { slot: index, ballot: Ballot::new(index, 2), value: value(index, 40) }],
            2 => vec![
                StorageOp::Chosen { slot: index - 1, value: None },
                StorageOp::PromiseSlot { slot: 100 + index, ballot: Ballot::new(index, 3) },
                StorageOp::Accept { slot: 100 + index, ballot: Ballot::new(index, 3), value: Value::Noop },
            ],
            _ => vec![StorageOp::Compact(Snapshot {
                through_slot: index - 2,
                next_index: index,
                data: vec![7; 20],
                ..Snapshot::default()
            })],
        };
        block_on(storage.append(&batch)).unwrap();
        batches.push(batch);
        boundaries.push(storage.stats().log_bytes);
    }
    (batches, boundaries)
}

/// Recovers a log cut at every byte offset. A cut inside the header or checkpoint
/// (which are synced before the file is named, so no crash leaves them short) is
/// reported as corruption; any other cut recovers exactly the batches whose records
/// are complete, truncates the rest, and accepts appends after it.
#[test]
fn a_log_cut_at_every_byte_recovers_exactly_a_prefix() {
    let source = tempfile::tempdir().unwrap();
    let (batches, boundaries) = build_log(source.path());
    let full = std::fs::read(source.path().join(LOG_NAME)).unwrap();
    assert_eq!(full.len() as u64, *boundaries.last().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_NAME);
    for cut in 0..=full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        let result = FileStorage::open(dir.path(), FileOptions::default());
        if (cut as u64) < boundaries[0] {
            assert!(matches!(result, Err(FileError::Corrupt { .. })), "cut at {cut} inside the checkpoint");
            continue;
        }
        let storage = result.unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        let complete = boundaries.iter().rposition(|end| *end <= cut as u64).unwrap();
        assert_eq!(block_on(storage.load()).unwrap(), replay(&batches[..complete]), "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), boundaries[complete], "the torn tail is truncated");
        if cut % 7 == 0 {
            // Appends continue cleanly after a truncated tail.
            let more = vec![StorageOp::Round(1000)];
            block_on(storage.append(&more)).unwrap();
            drop(storage);
            let expected = replay(batches[..complete].iter().chain([&more]));
            assert_eq!(block_on(open(dir.path()).load()).unwrap(), expected, "append after cut at {cut}");
        }
    }
}

/// Flips 1 to 3 random bits of a multi-record log, 400 times. Recovery either
/// reports corruption or returns a prefix that keeps every record before the
/// first damaged one; it reports corruption whenever an intact record follows
/// a damaged one, and treats damage confined to the last record as a torn tail.
#[test]
fn bit_flips_yield_an_error_or_a_valid_prefix_never_garbage() {
    let source = tempfile::tempdir().unwrap();
    let (batches, boundaries) = build_log(source.path());
    let full = std::fs::read(source.path().join(LOG_NAME)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_NAME);
    let seed = 0x5eed_0004;
    let mut rng = Rng(seed);
    let (mut errors, mut prefixes) = (0, 0);
    for trial in 0..400 {
        let mut bytes = full.clone();
        let flips: Vec<u64> = (0..1 + rng.below(3)).map(|_| rng.below(full.len() as u64 * 8)).collect();
        for bit in &flips {
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        let damaged_bytes: Vec<u64> =
            flips.iter().map(|bit| bit / 8).filter(|at| bytes[*at as usize] != full[*at as usize]).collect();
        let Some(&first) = damaged_bytes.iter().min() else { continue };
        // Record r spans boundaries[r]..boundaries[r + 1] and holds batches[r].
        let record_of = |at: u64| boundaries.iter().rposition(|start| *start <= at).unwrap();
        let damaged_records: Vec<usize> =
            damaged_bytes.iter().filter(|at| **at >= boundaries[0]).map(|at| record_of(*at)).collect();
        let context = format!("seed {seed:#x}, trial {trial}, flipped bits {flips:?}");

        std::fs::write(&path, &bytes).unwrap();
        match FileStorage::open(dir.path(), FileOptions::default()) {
            Err(FileError::Corrupt { .. }) => {
                errors += 1;
                assert!(
                    first < boundaries[0] || damaged_records.iter().any(|record| *record < batches.len() - 1),
                    "damage confined to the last record is a torn tail, not corruption ({context})"
                );
            }
            Err(error) => panic!("unexpected error {error} ({context})"),
            Ok(storage) => {
                prefixes += 1;
                assert!(first >= boundaries[0], "a damaged header or checkpoint went unnoticed ({context})");
                let state = block_on(storage.load()).unwrap();
                let first_damaged = record_of(first);
                assert_eq!(state, replay(&batches[..first_damaged]), "recovered state ({context})");
                let intact_after = (first_damaged + 1..batches.len()).any(|record| !damaged_records.contains(&record));
                assert!(!intact_after, "an intact record after the damage was dropped silently ({context})");
            }
        }
    }
    assert!(errors > 0 && prefixes > 0, "both outcomes were exercised: {errors} errors, {prefixes} prefixes");
}

#[test]
fn corruption_in_the_middle_is_reported_and_the_file_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (_, boundaries) = build_log(dir.path());
    let path = dir.path().join(LOG_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    let target = boundaries[3] as usize + 10;
    bytes[target] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let error = FileStorage::open(dir.path(), FileOptions::default()).unwrap_err();
    match &error {
        FileError::Corrupt { file, offset, .. } => {
            assert_eq!(file, &path);
            assert_eq!(*offset, boundaries[3]);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(error.to_string().contains("do not delete"), "the message says what to do: {error}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was truncated or repaired");
}

const CHILD_DIR: &str = "PAXOS_STORAGE_SIGKILL_CHILD_DIR";
const CHILD_FIRST: &str = "PAXOS_STORAGE_SIGKILL_CHILD_FIRST";
const CHILD_APPENDERS: u64 = 8;

fn batch(number: u64) -> Vec<StorageOp> {
    vec![StorageOp::Accept { slot: number, ballot: Ballot::new(number, 1), value: value(number, 24) }]
}

/// The child's side: append batches from 8 concurrent tasks, printing each batch
/// number once its append returned. Bounded, in case the parent never kills it.
fn sigkill_child(dir: &str, first: u64) {
    let options = FileOptions { log_bytes_max: 8 << 10, ..FileOptions::default() };
    let storage = FileStorage::open(dir, options).expect("child open");
    let deadline = Instant::now() + Duration::from_secs(60);
    block_on(futures::future::join_all((0..CHILD_APPENDERS).map(|appender| {
        let storage = &storage;
        async move {
            for step in 0..20_000u64 {
                if Instant::now() > deadline {
                    return;
                }
                let number = first + appender + step * CHILD_APPENDERS;
                storage.append(&batch(number)).await.expect("child append");
                println!("acked {number}");
            }
        }
    })));
}

/// Kills a writing child process with SIGKILL three times, at different points, and
/// checks after each that every batch it reported durable was recovered, and that
/// every recovered slot holds exactly the value written for it.
#[test]
fn sigkill_loses_no_acknowledged_append() {
    if let (Ok(dir), Ok(first)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_FIRST)) {
        sigkill_child(&dir, first.parse().expect("first batch number"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged = Vec::new();
    let mut first = 1u64;
    for (round, kill_after) in [150usize, 400, 900].into_iter().enumerate() {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["sigkill_loses_no_acknowledged_append", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_FIRST, first.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(number) = line.strip_prefix("acked ") {
                    if lines.send(number.parse::<u64>().expect("batch number")).is_err() {
                        break;
                    }
                }
            }
        });
        let mut this_round = Vec::new();
        while this_round.len() < kill_after {
            let number = received.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
                panic!("round {round}: the child stopped acknowledging after {}", this_round.len())
            });
            this_round.push(number);
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap child");
        assert!(!status.success(), "round {round}: the child was killed, not finished ({status})");
        reader.join().unwrap();
        // Lines already in the pipe when the child died were acknowledged too.
        this_round.extend(received.try_iter());
        first = this_round.iter().max().unwrap() + CHILD_APPENDERS * 4;
        acknowledged.extend(this_round);

        let state = block_on(open(dir.path()).load()).unwrap();
        for number in &acknowledged {
            assert!(state.slots.contains_key(number), "round {round}: acknowledged batch {number} was lost");
        }
        for (slot, slot_state) in &state.slots {
            let expected = replay([&batch(*slot)]);
            assert_eq!(Some(slot_state), expected.slots.get(slot), "round {round}: slot {slot} holds what was written");
        }
    }
}
