//! `FileStorage` against its contract: the conformance suite, the directory lock,
//! group commit, checkpoints, preallocation, and crash consistency (a log cut at
//! every byte, with and without a zero tail, bit flips, and a writer process killed
//! with SIGKILL).

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use paxos_core::{Ballot, Command, DurableState, Snapshot, Storage, StorageOp, Value};
use paxos_storage::{FileError, FileOptions, FileStats, FileStorage};

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
fn invalid_options_and_oversized_ops_are_refused_and_large_appends_are_split() {
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
    // An append of ops that each fit is written whole, even when all of them
    // together do not fit one record, and none of it is written when one op does not.
    let mut small: Vec<StorageOp> = (0..40)
        .map(|slot| StorageOp::Accept { slot: 10 + slot, ballot: Ballot::new(3, 1), value: value(slot, 100) })
        .collect();
    let records_before = storage.stats().appends;
    block_on(storage.append(&small)).unwrap();
    // About 4.5 KiB of ops against 1 KiB records: at least 5 records.
    assert!(storage.stats().appends >= records_before + 5, "{:?}", storage.stats());
    small.push(StorageOp::Accept { slot: 99, ballot: Ballot::new(3, 1), value: value(1, 4096) });
    assert!(matches!(block_on(storage.append(&small[35..])), Err(FileError::TooLarge { .. })));
    let mut expected = DurableState::default();
    expected.apply(&StorageOp::Round(2));
    small[..40].iter().for_each(|op| expected.apply(op));
    assert_eq!(block_on(storage.load()).unwrap(), expected);
    drop(storage);
    let reopened =
        FileStorage::open(dir.path(), FileOptions { record_bytes_max: 1024, ..FileOptions::default() }).unwrap();
    assert_eq!(block_on(reopened.load()).unwrap(), expected, "the parts of the split append are all on disk");
}

/// Whether an op fits a record does not depend on what it is appended with:
/// for every size around `record_bytes_max`, an op goes in alone exactly when it
/// goes in after another op (split into a record of its own).
#[test]
fn an_op_that_fits_a_record_alone_also_fits_beside_others() {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        FileStorage::open(dir.path(), FileOptions { record_bytes_max: 1024, ..FileOptions::default() }).unwrap();
    let (mut fitted, mut refused) = (0, 0);
    for bytes in 960..1030 {
        let op = StorageOp::Accept { slot: bytes as u64, ballot: Ballot::new(1, 1), value: value(7, bytes) };
        let alone = block_on(storage.append(std::slice::from_ref(&op)));
        let beside = block_on(storage.append(&[StorageOp::Round(bytes as u64), op]));
        match (alone, beside) {
            (Ok(()), Ok(())) => fitted += 1,
            (Err(FileError::TooLarge { .. }), Err(FileError::TooLarge { .. })) => refused += 1,
            (alone, beside) => panic!("payload of {bytes} bytes: alone {alone:?}, beside another op {beside:?}"),
        }
    }
    assert!(fitted > 0 && refused > 0, "the sizes straddle the limit: {fitted} fitted, {refused} refused");
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
            let batch = compacting_batch(slot);
            storage.append(&batch).await.unwrap();
            batches.push(batch);
            largest = largest.max(directory_bytes(dir.path()));
        }
    });
    let stats = storage.stats();
    assert!(stats.checkpoints >= 10, "{stats:?}");
    // Live state is about 60 slots of ~100 bytes; the log is 16 KiB plus a record.
    assert!(largest < 64 << 10, "the directory peaked at {largest} bytes");
    drop(storage);
    assert_eq!(block_on(FileStorage::open(dir.path(), options).unwrap().load()).unwrap(), replay(&batches));
}

/// Bytes of the files in `dir`. A checkpoint's thread may rename or remove a
/// file between the listing and its size: such a file counts as gone.
fn directory_bytes(dir: &Path) -> u64 {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        match entry.and_then(|entry| entry.metadata()) {
            Ok(metadata) => bytes += metadata.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => panic!("{error}"),
        }
    }
    bytes
}

/// Batches of different shapes, appended one at a time, and the log size after each.
/// Without preallocation, so the file is exactly its records.
fn build_log(dir: &Path) -> (Vec<Vec<StorageOp>>, Vec<u64>) {
    build_log_with(dir, FileOptions { preallocate_bytes: 0, ..FileOptions::default() })
}

fn build_log_with(dir: &Path, options: FileOptions) -> (Vec<Vec<StorageOp>>, Vec<u64>) {
    let storage = FileStorage::open(dir, options).expect("open");
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
            _ => vec![StorageOp::Compact(Box::new(Snapshot {
                through_slot: index - 2,
                next_index: index,
                data: vec![7; 20],
                ..Snapshot::default()
            }))],
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
    cut_at_every_byte(0);
}

/// The same with the cut file followed by zeros, as in a preallocated log where
/// the unsynced end of a record never reached the disk: a record cut anywhere and
/// followed by zeros is a torn tail, and a cut at a record boundary is a clean end.
#[test]
fn a_log_cut_at_every_byte_and_followed_by_zeros_recovers_exactly_a_prefix() {
    cut_at_every_byte(4096);
}

fn cut_at_every_byte(zero_tail_bytes: usize) {
    let source = tempfile::tempdir().unwrap();
    let (batches, boundaries) = build_log(source.path());
    let full = std::fs::read(source.path().join(LOG_NAME)).unwrap();
    assert_eq!(full.len() as u64, *boundaries.last().unwrap());
    // Small, so the appends below do not allocate (and the next open read) 64 MiB each.
    let options = FileOptions { preallocate_bytes: 4 << 10, ..FileOptions::default() };

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_NAME);
    for cut in 0..=full.len() {
        let mut bytes = full[..cut].to_vec();
        bytes.resize(cut + zero_tail_bytes, 0);
        std::fs::write(&path, &bytes).unwrap();
        let result = FileStorage::open(dir.path(), options.clone());
        // The records whose bytes are all there: those before the cut, and, with a
        // zero tail, one whose remaining bytes happen to be zeros.
        let intact = |end: &u64| bytes.get(..*end as usize) == Some(&full[..*end as usize]);
        let Some(complete) = boundaries.iter().rposition(intact) else {
            assert!(matches!(result, Err(FileError::Corrupt { .. })), "cut at {cut} inside the checkpoint");
            continue;
        };
        let storage = result.unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        assert_eq!(block_on(storage.load()).unwrap(), replay(&batches[..complete]), "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), boundaries[complete], "the torn tail is truncated");
        if cut % 7 == 0 {
            // Appends continue cleanly after a truncated tail.
            let more = vec![StorageOp::Round(1000)];
            block_on(storage.append(&more)).unwrap();
            drop(storage);
            let expected = replay(batches[..complete].iter().chain([&more]));
            let storage = FileStorage::open(dir.path(), options.clone()).unwrap();
            assert_eq!(block_on(storage.load()).unwrap(), expected, "append after cut at {cut}");
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

/// The ops a compacting replica writes for `slot`: its accept and chosen record,
/// and every 50 slots a compaction through 10 slots back.
fn compacting_batch(slot: u64) -> Vec<StorageOp> {
    let mut batch = vec![
        StorageOp::Accept { slot, ballot: Ballot::new(2, 1), value: value(slot, 64) },
        StorageOp::Chosen { slot, value: None },
    ];
    if slot.is_multiple_of(50) {
        batch.push(StorageOp::Compact(Box::new(Snapshot { through_slot: slot - 10, ..Snapshot::default() })));
    }
    batch
}

/// The live log's size on disk, preallocated space included.
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// The storage's stats with its live log's size on disk, read consistently: the
/// writer may switch to a new generation (and delete the old file) right after it
/// answered an append, so read again until the stats are the same on both sides
/// of the file's size (a switch takes a few file operations; give up after 10 s).
fn stats_and_file_len(storage: &FileStorage, dir: &Path) -> (FileStats, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = storage.stats();
        let path = dir.join(format!("wal-{:016x}.log", before.generation));
        let len = std::fs::metadata(&path).ok().map(|metadata| metadata.len());
        let after = storage.stats();
        if let (Some(len), true) = (len, before == after) {
            return (after, len);
        }
        assert!(Instant::now() < deadline, "the log kept changing: {after:?}");
        std::thread::yield_now();
    }
}

/// Whether this platform preallocates (the writer falls back to growing elsewhere).
const PREALLOCATES: bool = cfg!(target_os = "linux");

/// With preallocation on, the file runs past its last record in zeros; a reopen
/// recovers the exact state, cuts the zero tail, and appends continue at the
/// logical end (not after the zeros).
#[test]
fn a_preallocated_log_reopens_and_appends_continue_at_its_logical_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_NAME);
    let options = FileOptions { preallocate_bytes: 256 << 10, ..FileOptions::default() };
    let mut batches = Vec::new();
    let storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    for slot in 1..=20u64 {
        let batch = vec![StorageOp::Accept { slot, ballot: Ballot::new(1, 1), value: value(slot, 32) }];
        block_on(storage.append(&batch)).unwrap();
        batches.push(batch);
        assert!(file_len(&path) >= storage.stats().log_bytes, "the file holds every record");
    }
    let logical = storage.stats().log_bytes;
    drop(storage);
    let bytes = std::fs::read(&path).unwrap();
    if PREALLOCATES {
        assert!(bytes.len() as u64 > logical, "{} bytes on disk, {logical} of records", bytes.len());
        assert!(bytes.len() as u64 <= logical + (256 << 10), "one preallocation ahead at most");
    }
    assert!(bytes[logical as usize..].iter().all(|byte| *byte == 0), "the space after the records is zeros");
    let records = bytes[..logical as usize].to_vec();

    let storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    assert_eq!(block_on(storage.load()).unwrap(), replay(&batches));
    assert_eq!(storage.stats().log_bytes, logical, "log_bytes counts records, not allocated space");
    assert_eq!(file_len(&path), logical, "opening cuts the zero tail");
    let more = vec![StorageOp::Round(77), StorageOp::Chosen { slot: 3, value: None }];
    block_on(storage.append(&more)).unwrap();
    batches.push(more);
    let after = storage.stats().log_bytes;
    assert!(after > logical);
    drop(storage);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..logical as usize], &records[..], "the records before the reopen are unchanged");
    assert!(bytes[after as usize..].iter().all(|byte| *byte == 0), "the new record went at the logical end");
    if PREALLOCATES {
        assert!(bytes.len() as u64 > after, "the writer preallocated again after the reopen");
    }
    assert_eq!(block_on(FileStorage::open(dir.path(), options).unwrap().load()).unwrap(), replay(&batches));
}

/// With preallocation off, the file is exactly its records after every append,
/// as before preallocation existed.
#[test]
fn without_preallocation_the_file_is_exactly_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_NAME);
    let options = FileOptions { preallocate_bytes: 0, ..FileOptions::default() };
    let storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    let mut batches = Vec::new();
    for round in 1..=10u64 {
        let batch = vec![StorageOp::Round(round), StorageOp::Promise(Ballot::new(round, 2))];
        block_on(storage.append(&batch)).unwrap();
        batches.push(batch);
        assert_eq!(file_len(&path), storage.stats().log_bytes, "after round {round}");
    }
    drop(storage);
    let storage = FileStorage::open(dir.path(), options).unwrap();
    assert_eq!(block_on(storage.load()).unwrap(), replay(&batches));
    assert_eq!(file_len(&path), storage.stats().log_bytes);
}

/// Builds a log in `dir` with 64 KiB preallocation; returns its path, the
/// batches, the record boundaries and the file's bytes, zero tail included.
fn preallocated_log(dir: &Path) -> (std::path::PathBuf, Vec<Vec<StorageOp>>, Vec<u64>, Vec<u8>) {
    let path = dir.join(LOG_NAME);
    let (batches, boundaries) =
        build_log_with(dir, FileOptions { preallocate_bytes: 64 << 10, ..FileOptions::default() });
    let bytes = std::fs::read(&path).unwrap();
    if PREALLOCATES {
        assert!(bytes.len() as u64 > *boundaries.last().unwrap(), "the log was preallocated");
    }
    (path, batches, boundaries, bytes)
}

/// A real preallocated log whose last record lost its second half (a torn write
/// whose end never reached the disk, so zeros follow): the record is a torn tail,
/// the rest is recovered, and the file is cut at the last intact record.
#[test]
fn a_torn_record_followed_by_a_preallocated_zero_tail_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (path, batches, boundaries, mut bytes) = preallocated_log(dir.path());
    let last = boundaries.len() - 2;
    let (start, end) = (boundaries[last] as usize, boundaries[last + 1] as usize);
    let middle = start + (end - start) / 2;
    bytes[middle..end].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let storage = FileStorage::open(dir.path(), FileOptions::default()).unwrap();
    assert_eq!(block_on(storage.load()).unwrap(), replay(&batches[..last]));
    assert_eq!(storage.stats().log_bytes, boundaries[last]);
    assert_eq!(file_len(&path), boundaries[last], "the torn record and the zeros are cut");
}

/// A real preallocated log damaged in the middle: intact records follow the
/// damage, so it is corruption, the zero tail notwithstanding, and the file,
/// zero tail included, is left as it was.
#[test]
fn damage_followed_by_an_intact_record_in_a_preallocated_log_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, boundaries, mut bytes) = preallocated_log(dir.path());
    bytes[boundaries[3] as usize + 10] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let error = FileStorage::open(dir.path(), FileOptions::default()).unwrap_err();
    assert!(matches!(error, FileError::Corrupt { offset, .. } if offset == boundaries[3]), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was truncated or repaired");
}

/// A copy of `storage`'s live log, taken between appends as a crash would leave
/// it, opened in a directory of its own: the state a restart would recover.
fn recover_a_copy_of_the_live_log(storage: &FileStorage, dir: &Path) -> DurableState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The writer may be installing a checkpoint right after answering:
        // copy again if the live generation changed or its file went meanwhile.
        let before = storage.stats();
        let name = format!("wal-{:016x}.log", before.generation);
        let copy = tempfile::tempdir().unwrap();
        let copied = std::fs::copy(dir.join(&name), copy.path().join(&name));
        if copied.is_ok() && storage.stats().generation == before.generation {
            return block_on(FileStorage::open(copy.path(), FileOptions::default()).unwrap().load()).unwrap();
        }
        assert!(Instant::now() < deadline, "the live log kept changing: {before:?}");
        std::thread::yield_now();
    }
}

/// Appends go on while a checkpoint is written on its own thread, and while the
/// records appended meanwhile are carried after it in rounds: after every
/// checkpoint, a crash would recover every acknowledged append, and so does a
/// reopen after close.
#[test]
fn appends_go_on_while_a_checkpoint_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // Groups of at most 64 KiB: a checkpoint's last round carries no more than
    // that, and the records appended while it was written go in rounds before.
    let options = FileOptions { log_bytes_max: 256 << 10, bytes_per_sync_max: 64 << 10, ..FileOptions::default() };
    let storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    let mut batches = Vec::new();
    let mut checked_generation = 0;
    for slot in 1..=2000u64 {
        let stats = storage.stats();
        if stats.generation != checked_generation {
            // A checkpoint of a state held only in memory would mend a file
            // that lost records, so each generation is checked as soon as it is live.
            assert_eq!(recover_a_copy_of_the_live_log(&storage, dir.path()), replay(&batches), "{stats:?}");
            checked_generation = stats.generation;
            if stats.checkpoints >= 2 && stats.checkpoint_tail_rounds > 0 {
                break;
            }
        }
        assert!(slot < 2000, "2,000 appends of 32 KiB and no checkpoint carried records in rounds: {stats:?}");
        let batch = vec![
            StorageOp::Accept { slot, ballot: Ballot::new(2, 1), value: value(slot, 32 << 10) },
            StorageOp::Chosen { slot: slot.saturating_sub(1).max(1), value: None },
        ];
        block_on(storage.append(&batch)).unwrap();
        batches.push(batch);
    }
    let generation = storage.stats().generation;
    drop(storage);
    let logs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter(|name| name.starts_with("wal-"))
        .collect();
    // Closing finished a checkpoint still in progress, so no temporary file is left.
    assert_eq!(logs.len(), 1, "exactly one log file after close: {logs:?}");
    assert!(logs[0] >= format!("wal-{generation:016x}.log"), "{logs:?}, generation {generation}");
    assert_eq!(block_on(FileStorage::open(dir.path(), options).unwrap().load()).unwrap(), replay(&batches));
}

/// A checkpoint that cannot be written (here a directory holds its temporary
/// name) leaves the log live: appends go on, the failure is counted, and once
/// the way is clear a later try goes through. A reopen sees the exact replay.
#[test]
fn a_failed_checkpoint_leaves_the_log_live_and_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileOptions { log_bytes_max: 16 << 10, ..FileOptions::default() };
    let storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    let blocker = dir.path().join("wal-0000000000000001.log.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let mut batches = Vec::new();
    let mut slot = 0;
    let mut append_until = |done: &dyn Fn(&FileStats) -> bool, what: &str| {
        for _ in 0..2000 {
            if done(&storage.stats()) {
                return;
            }
            slot += 1;
            // The live state stays small (a compaction every 50 slots), so each
            // generation's record budget is log_bytes_max.
            let batch = compacting_batch(slot);
            block_on(storage.append(&batch)).unwrap();
            batches.push(batch);
        }
        panic!("2,000 appends and {what}: {:?}", storage.stats());
    };
    append_until(&|stats| stats.checkpoint_failures > 0, "no checkpoint failed");
    let stats = storage.stats();
    assert_eq!((stats.checkpoints, stats.generation), (0, 0), "{stats:?}");
    std::fs::remove_dir(&blocker).unwrap();
    append_until(&|stats| stats.checkpoints > 0, "no checkpoint after the way was cleared");
    assert_eq!(storage.stats().generation, 1);
    // The wait after the failure is over: generation 1 is replaced on the usual
    // schedule, once its records pass the larger of log_bytes_max and its checkpoint.
    let installed_at = storage.stats().log_bytes;
    let largest = std::cell::Cell::new(installed_at);
    append_until(
        &|stats| {
            if stats.generation == 1 {
                largest.set(largest.get().max(stats.log_bytes));
            }
            stats.checkpoints > 1
        },
        "no second checkpoint",
    );
    let largest = largest.get();
    let bound = installed_at + installed_at.max(options.log_bytes_max) + 2048;
    assert!(largest <= bound, "generation 1 grew to {largest} bytes, past {bound}");
    drop(storage);
    assert_eq!(block_on(FileStorage::open(dir.path(), options).unwrap().load()).unwrap(), replay(&batches));
}

/// Checkpoints with preallocation: every generation is preallocated in steps of
/// `preallocate_bytes`, never more than one step ahead of its records, the old
/// generations go, and a reopen sees the exact replay.
#[test]
fn checkpoints_work_with_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let step = 4u64 << 10;
    let options = FileOptions { log_bytes_max: 8 << 10, preallocate_bytes: step, ..FileOptions::default() };
    let storage = FileStorage::open(dir.path(), options.clone()).unwrap();
    let mut batches = Vec::new();
    let mut preallocated_generations = std::collections::BTreeSet::new();
    for slot in 1..=600u64 {
        let batch = compacting_batch(slot);
        block_on(storage.append(&batch)).unwrap();
        batches.push(batch);
        let (stats, on_disk) = stats_and_file_len(&storage, dir.path());
        assert!(on_disk >= stats.log_bytes, "slot {slot}: {stats:?}, {on_disk} bytes on disk");
        assert!(on_disk - stats.log_bytes <= step, "slot {slot}: at most one step ahead, {stats:?}, {on_disk}");
        if on_disk > stats.log_bytes {
            preallocated_generations.insert(stats.generation);
        }
    }
    let stats = storage.stats();
    assert!(stats.checkpoints >= 5, "{stats:?}");
    if PREALLOCATES {
        assert!(preallocated_generations.len() >= 5, "generations preallocated: {preallocated_generations:?}");
    }
    drop(storage);
    let logs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter(|name| name.starts_with("wal-"))
        .count();
    assert_eq!(logs, 1, "only the live generation remains");
    assert_eq!(block_on(FileStorage::open(dir.path(), options).unwrap().load()).unwrap(), replay(&batches));
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
