//! Crash-safe file storage: a CRC32C-checked append-only log with group commit,
//! checkpoints that bound disk use, and an exclusive lock on the data directory.
//!
//! # Layout of the data directory
//!
//! - `LOCK`: held with an exclusive `flock` while a [`FileStorage`] is open.
//! - `wal-<generation>.log`: the log (format in `format.rs`). Only the highest
//!   generation is live; it starts with a checkpoint of the whole state.
//! - `wal-<generation>.log.tmp`: a checkpoint being written; never read.
//!
//! # Durability
//!
//! `append` returns after its record was written and `fdatasync`ed. Appends that
//! arrive while a sync runs are written together as one record with one sync
//! (group commit), by one writer thread, so the storage works under any executor.
//!
//! # Preallocation
//!
//! On Linux the writer allocates the log ahead of its records, `preallocate_bytes`
//! at a time (`fallocate`, then one `fsync` for the new size), and writes each
//! record at the logical end, so a group's `fdatasync` need not also make a new
//! file size and new blocks durable. A log file therefore may end in zeros, which
//! recovery reads as the clean end of the log. Opening truncates the file to its
//! last intact record, zero tail included; the writer allocates again when it
//! next needs space. Where `fallocate` is unsupported, records grow the file.
//!
//! # Checkpoints
//!
//! When the records after the checkpoint exceed `max(log_bytes_max, checkpoint size)`,
//! a checkpoint thread writes the whole state, as it was then, into
//! `wal-<g+1>.log.tmp` and syncs it, while the writer goes on appending to
//! `wal-<g>.log` and keeps a copy of each record it appends meanwhile. Once the
//! checkpoint is written, those records are appended to it (by the checkpoint's
//! thread again, in rounds, while they are more than `bytes_per_sync_max`; the
//! last ones by the writer), it is synced, renamed to `wal-<g+1>.log`, the
//! directory synced, then `wal-<g>.log` deleted: appends wait only for the last
//! round, not for the whole state to be written. A crash at
//! any step leaves either the old file alone, the old file and a stray `.tmp`, or
//! both complete files; recovery keeps the highest complete generation and deletes
//! the rest. Once the core compacts its log (`StorageOp::Compact`), the state and so
//! the disk use stay bounded.

mod format;
mod writer;

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures::channel::{mpsc, oneshot};
use futures::SinkExt;
use paxos_core::{DurableState, Storage, StorageOp};

use writer::{Request, Writer};

/// Limits and thresholds of a [`FileStorage`]. Checked by [`FileOptions::validate`]
/// when the storage opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// Write a checkpoint (and drop the old log) once the records after the last
    /// checkpoint exceed this many bytes, or the checkpoint's own size if larger.
    pub log_bytes_max: u64,
    /// Most bytes of one record. A larger `append` is written as several
    /// records, in order (a crash may keep a prefix of them, as the `Storage`
    /// contract allows); a single op larger than this fails with
    /// [`FileError::TooLarge`]. At most `u32::MAX - 1`.
    pub record_bytes_max: u64,
    /// Most appends that share one sync (1 syncs every append on its own).
    pub appends_per_sync_max: usize,
    /// A group stops taking more appends once it holds this many bytes.
    pub bytes_per_sync_max: u64,
    /// Most appends queued for the writer, beyond one per calling task.
    pub queued_appends_max: usize,
    /// Allocate the log this many bytes ahead of its records, so each group's
    /// `fdatasync` finds the file size and blocks already durable (Linux only;
    /// elsewhere, or where the file system cannot, records grow the file). Never
    /// more than the log can use before its next checkpoint. 0 turns it off;
    /// otherwise between 4 KiB and 1 GiB (opening reads the whole file, zeros too).
    pub preallocate_bytes: u64,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            log_bytes_max: 64 << 20,
            record_bytes_max: 256 << 20,
            appends_per_sync_max: 4096,
            bytes_per_sync_max: 8 << 20,
            queued_appends_max: 4096,
            preallocate_bytes: 64 << 20,
        }
    }
}

impl FileOptions {
    /// Checks every limit; the error names the field to fix.
    pub fn validate(&self) -> Result<(), FileError> {
        let invalid = |reason: &str| Err(FileError::InvalidOptions { reason: reason.to_string() });
        if self.log_bytes_max == 0 {
            return invalid("log_bytes_max must be at least 1");
        }
        if self.record_bytes_max == 0 || self.record_bytes_max >= u64::from(u32::MAX) {
            return invalid("record_bytes_max must be between 1 and u32::MAX - 1");
        }
        if self.appends_per_sync_max == 0 {
            return invalid("appends_per_sync_max must be at least 1");
        }
        if self.bytes_per_sync_max == 0 {
            return invalid("bytes_per_sync_max must be at least 1");
        }
        if self.queued_appends_max == 0 {
            return invalid("queued_appends_max must be at least 1");
        }
        if self.preallocate_bytes != 0 && !(4 << 10..=1 << 30).contains(&self.preallocate_bytes) {
            return invalid("preallocate_bytes must be 0 (off) or between 4 KiB and 1 GiB");
        }
        Ok(())
    }
}

/// Errors of [`FileStorage`]. Each says what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A [`FileOptions`] limit is out of range.
    #[error("invalid FileOptions: {reason}; fix the option and open again")]
    InvalidOptions {
        /// Which field, and why.
        reason: String,
    },
    /// The operating system refused a file operation.
    #[error(
        "{operation} {path} failed: {source}; check that the path exists and is writable and that the disk has space, \
         then open the storage again"
    )]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another [`FileStorage`], in this process or another, has the directory open.
    #[error(
        "the data directory {dir} is locked by another FileStorage (in this or another process); \
         stop that one first (two writers would corrupt the log), or use another directory"
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// The log is damaged somewhere other than an unacknowledged tail. Nothing was
    /// dropped or repaired: the file is as it was found.
    #[error(
        "the log {file} is corrupt at byte {offset}: {reason}. This is not a torn write at the tail, so acknowledged \
         data is damaged: do not delete or truncate the file. Restore this replica's directory from a backup, or \
         remove the replica from the cluster and add a new, empty one"
    )]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Where the damaged record or header starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log was written by a build with another format version.
    #[error("{file} has format version {found}, and this build reads version {expected}; open it with a matching paxos-storage")]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// Its version.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// One op is larger than [`FileOptions::record_bytes_max`]. Nothing of its
    /// append was written.
    #[error(
        "one op encodes to {bytes} bytes, more than FileOptions::record_bytes_max ({max}) allows; raise the limit"
    )]
    TooLarge {
        /// The encoded size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A write, sync or checkpoint failed earlier. What reached the disk after the
    /// last good sync is unknown, so this storage accepts no more writes.
    #[error(
        "a write to {path} failed ({source}); this storage accepts no more writes: drop it and open the directory \
         again (recovery keeps exactly what was durable)"
    )]
    Failed {
        /// The file being written.
        path: PathBuf,
        /// The first failure.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The writer thread is gone (it panicked); a bug.
    #[error(
        "the FileStorage writer thread stopped; drop this storage and open the directory again, and report the bug"
    )]
    WriterStopped,
}

fn io_error<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError::Io { operation, path: path.to_path_buf(), source }
}

/// Counters of a [`FileStorage`], for tests and monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Non-empty appends made durable since open; an append split into several
    /// records (see [`FileOptions::record_bytes_max`]) counts once per record.
    pub appends: u64,
    /// fdatasync calls on the log since open (group commit makes this smaller than `appends`).
    pub syncs: u64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
    /// Bytes of records appended while a checkpoint was being written, since
    /// open: each was copied into the new file after its checkpoint.
    pub checkpoint_tail_bytes: u64,
    /// Rounds that copied such records on the checkpoint's thread, while appends
    /// went on, since open. Each checkpoint's last records are copied by the
    /// writer, which holds appends back meanwhile; rounds keep that part to
    /// about `bytes_per_sync_max`.
    pub checkpoint_tail_rounds: u64,
    /// Checkpoints that failed before replacing the log, since open (a full
    /// disk, say). The log goes on in the current file; the next try waits for
    /// another `log_bytes_max` of records (or the checkpoint's size if larger).
    pub checkpoint_failures: u64,
    /// The live log file's generation.
    pub generation: u64,
    /// The live log file's size in bytes up to the end of its last record (the
    /// preallocated space after it is not counted).
    pub log_bytes: u64,
}

/// What the writer thread and the callers share.
#[derive(Default)]
struct Shared {
    state: DurableState,
    stats: FileStats,
    failure: Option<(PathBuf, Arc<std::io::Error>)>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Crash-safe storage in a directory. See the [module docs](self) for the layout.
///
/// Opening holds an exclusive lock on the directory until the storage is dropped;
/// dropping waits for the writer thread to finish the group it is writing, and
/// for a checkpoint being written to be finished and installed.
///
/// ```
/// # futures::executor::block_on(async {
/// use paxos_core::{Storage, StorageOp};
/// use paxos_storage::{FileOptions, FileStorage};
///
/// let dir = tempfile::tempdir().unwrap();
/// let storage = FileStorage::open(dir.path(), FileOptions::default()).unwrap();
/// storage.append(&[StorageOp::Round(3)]).await.unwrap();
/// drop(storage);
///
/// let storage = FileStorage::open(dir.path(), FileOptions::default()).unwrap();
/// assert_eq!(storage.load().await.unwrap().round, 3);
/// # });
/// ```
pub struct FileStorage {
    dir: PathBuf,
    options: FileOptions,
    sender: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
    /// Holds the directory lock; released when the storage is dropped.
    _lock: File,
}

impl std::fmt::Debug for FileStorage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FileStorage").field("dir", &self.dir).field("options", &self.options).finish()
    }
}

/// The name of the log file of `generation`.
fn log_name(generation: u64) -> String {
    format!("wal-{generation:016x}.log")
}

/// The generation a log or temporary file name stands for, and whether it is temporary.
fn parse_name(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix("wal-")?;
    let (hex, temporary) = match rest.strip_suffix(".log.tmp") {
        Some(hex) => (hex, true),
        None => (rest.strip_suffix(".log")?, false),
    };
    if hex.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(hex, 16).ok()?, temporary))
}

/// Makes the directory's entries (created, renamed or removed files) durable.
fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(io_error("syncing directory", dir))
}

/// Writes a complete log file for `generation` holding `state`, durably: a temporary
/// file, synced, renamed into place, then the directory synced. Returns the open
/// file (positioned at its end), its path and its size.
fn write_checkpoint(dir: &Path, generation: u64, state: &DurableState) -> std::io::Result<(File, PathBuf, u64)> {
    let (file, temporary, bytes) = write_temporary_checkpoint(dir, generation, state)?;
    let path = install_checkpoint(dir, generation, &temporary)?;
    Ok((file, path, bytes))
}

/// Writes `state` as the checkpoint of a new log file for `generation` under its
/// temporary name, and syncs it. Returns the open file (positioned at its end),
/// its temporary path and its size.
fn write_temporary_checkpoint(
    dir: &Path,
    generation: u64,
    state: &DurableState,
) -> std::io::Result<(File, PathBuf, u64)> {
    let temporary = temporary_path(dir, generation);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temporary)?;
    let bytes = format::write_checkpoint_file(&mut file, state)?;
    file.sync_all()?;
    Ok((file, temporary, bytes))
}

/// Where the log file of `generation` is written before it gets its name.
fn temporary_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{}.tmp", log_name(generation)))
}

/// Gives a synced temporary log file of `generation` its name, durably; returns the new path.
fn install_checkpoint(dir: &Path, generation: u64, temporary: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(log_name(generation));
    std::fs::rename(temporary, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

impl FileStorage {
    /// Opens (or creates) the store in `dir`: takes the directory lock, recovers the
    /// log (truncating a torn tail), and starts the writer thread.
    ///
    /// # Errors
    /// [`FileError::Locked`] if the directory is open elsewhere; [`FileError::Corrupt`]
    /// if acknowledged data is damaged; [`FileError::Io`] for file system failures.
    pub fn open(dir: impl AsRef<Path>, options: FileOptions) -> Result<FileStorage, FileError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io_error("creating directory", &dir))?;
            if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_error("opening lock file", &lock_path))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(FileError::Locked { dir }),
            Err(TryLockError::Error(source)) => {
                return Err(FileError::Io { operation: "locking", path: lock_path, source });
            }
        }

        let (log, generation, recovered) = recover_dir(&dir)?;
        let shared = Arc::new(Mutex::new(Shared {
            state: recovered.state,
            stats: FileStats { generation, log_bytes: recovered.valid_bytes, ..FileStats::default() },
            failure: None,
        }));
        // Not `append`: records go at the logical end, which may lie before the
        // end of a preallocated file. Sequential writes keep the position there.
        let mut file = OpenOptions::new().write(true).open(&log).map_err(io_error("opening log", &log))?;
        let allocated_bytes = file.metadata().map_err(io_error("reading the size of", &log))?.len();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(recovered.valid_bytes))
            .map_err(io_error("seeking to the end of the records in", &log))?;
        let (sender, receiver) = mpsc::channel(options.queued_appends_max);
        let writer = Writer::new(
            dir.clone(),
            options.clone(),
            file,
            log,
            generation,
            recovered.valid_bytes,
            allocated_bytes,
            recovered.checkpoint_bytes,
            Arc::clone(&shared),
        );
        let writer = std::thread::Builder::new()
            .name("paxos-file-writer".to_string())
            .spawn(move || writer.run(receiver))
            .map_err(io_error("starting the writer thread for", &dir))?;
        Ok(FileStorage { dir, options, sender: Some(sender), writer: Some(writer), shared, _lock: lock_file })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters since open.
    pub fn stats(&self) -> FileStats {
        lock(&self.shared).stats.clone()
    }

    fn failure(&self) -> Option<FileError> {
        lock(&self.shared)
            .failure
            .as_ref()
            .map(|(path, source)| FileError::Failed { path: path.clone(), source: Arc::clone(source) })
    }
}

/// Recovers the directory's live log: removes stray temporary files and older
/// generations, creates generation 0 in a new directory, and truncates a torn tail
/// and a preallocated zero tail, so the file ends at its last intact record.
fn recover_dir(dir: &Path) -> Result<(PathBuf, u64, format::Recovered), FileError> {
    let mut generations = Vec::new();
    let mut temporaries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error("listing directory", dir))? {
        let entry = entry.map_err(io_error("listing directory", dir))?;
        match entry.file_name().to_str().and_then(parse_name) {
            Some((_, true)) => temporaries.push(entry.path()),
            Some((generation, false)) => generations.push(generation),
            None => {}
        }
    }
    // A temporary file is a checkpoint that never got its name: the log it would
    // have replaced is still complete.
    for temporary in &temporaries {
        std::fs::remove_file(temporary).map_err(io_error("removing unfinished checkpoint", temporary))?;
    }
    let Some(&generation) = generations.iter().max() else {
        let (_, path, bytes) = write_checkpoint(dir, 0, &DurableState::default())
            .map_err(io_error("creating the first log file in", dir))?;
        let recovered = format::Recovered {
            state: DurableState::default(),
            valid_bytes: bytes,
            checkpoint_bytes: bytes,
            ops_records: 0,
        };
        return Ok((path, 0, recovered));
    };
    let path = dir.join(log_name(generation));
    let bytes = std::fs::read(&path).map_err(io_error("reading log", &path))?;
    let recovered = format::recover(&bytes, &path)?;
    if recovered.valid_bytes < bytes.len() as u64 {
        // A torn tail was never acknowledged, and a zero tail holds nothing; cut
        // either so new records follow intact ones and the file holds no stale
        // bytes. The writer preallocates again when it needs space. Damage to the
        // last record alone looks the same as a torn write, so a cut that is not
        // all zeros is said aloud.
        let tail = &bytes[recovered.valid_bytes as usize..];
        if tail.iter().any(|byte| *byte != 0) {
            tracing::warn!(
                file = %path.display(),
                offset = recovered.valid_bytes,
                bytes = tail.len(),
                "cutting an incomplete record at the end of the log: the write in progress at a crash, or damage to the last record"
            );
        }
        let file = OpenOptions::new().write(true).open(&path).map_err(io_error("opening log", &path))?;
        file.set_len(recovered.valid_bytes).map_err(io_error("truncating the torn tail of", &path))?;
        file.sync_all().map_err(io_error("syncing", &path))?;
    }
    // Older generations are fully contained in the live file's checkpoint.
    let older: Vec<u64> = generations.into_iter().filter(|older| *older < generation).collect();
    for older in &older {
        let stale = dir.join(log_name(*older));
        std::fs::remove_file(&stale).map_err(io_error("removing superseded log", &stale))?;
    }
    if !temporaries.is_empty() || !older.is_empty() {
        sync_dir(dir)?;
    }
    Ok((path, generation, recovered))
}

impl Drop for FileStorage {
    fn drop(&mut self) {
        // Closing the queue stops the writer after the group it is writing.
        self.sender.take();
        if let Some(writer) = self.writer.take() {
            // A panic in the writer was already reported to every waiting caller.
            let _ = writer.join();
        }
    }
}

/// Ops for one record, with their encoding.
type Part = (Vec<StorageOp>, Vec<u8>);

impl FileStorage {
    fn encode(&self, ops: &[StorageOp]) -> Result<Vec<u8>, FileError> {
        postcard::to_stdvec(ops).map_err(|error| FileError::Failed {
            path: self.dir.clone(),
            source: Arc::new(std::io::Error::other(format!("encoding ops failed: {error}"))),
        })
    }

    /// `ops` cut, in order, into parts that each fit one record with their
    /// encoding; an op too large for a record on its own is refused.
    fn split(&self, ops: &[StorageOp]) -> Result<Vec<Part>, FileError> {
        let max = self.options.record_bytes_max;
        // A record body is the kind byte, the op count (a varint), then each op's
        // encoding; `body` gives its size for `count` ops of `bytes` in all.
        let body = |count: u64, bytes: u64| 1 + varint_len(count) + bytes;
        let mut parts = Vec::new();
        let mut part: Vec<StorageOp> = Vec::new();
        let mut part_bytes = 0;
        for op in ops {
            // A one-op slice encodes as a one-byte count and the op.
            let bytes = self.encode(std::slice::from_ref(op))?.len() as u64 - 1;
            if body(1, bytes) > max {
                return Err(FileError::TooLarge { bytes: body(1, bytes), max });
            }
            if !part.is_empty() && body(part.len() as u64 + 1, part_bytes + bytes) > max {
                let encoded = self.encode(&part)?;
                parts.push((std::mem::take(&mut part), encoded));
                part_bytes = 0;
            }
            part.push(op.clone());
            part_bytes += bytes;
        }
        let encoded = self.encode(&part)?;
        parts.push((part, encoded));
        Ok(parts)
    }
}

/// Bytes postcard's varint takes for `value`: seven bits a byte.
fn varint_len(value: u64) -> u64 {
    u64::from((64 - value.leading_zeros()).max(1).div_ceil(7))
}

#[async_trait]
impl Storage for FileStorage {
    type Error = FileError;

    async fn append(&self, ops: &[StorageOp]) -> Result<(), FileError> {
        if let Some(failure) = self.failure() {
            return Err(failure);
        }
        if ops.is_empty() {
            return Ok(());
        }
        let encoded = self.encode(ops)?;
        // One byte of the record body is its kind; the encoding must fit beside it.
        let parts = if (encoded.len() as u64) < self.options.record_bytes_max {
            vec![(ops.to_vec(), encoded)]
        } else {
            self.split(ops)?
        };
        let mut sender = self.sender.clone().ok_or(FileError::WriterStopped)?;
        let mut answers = Vec::with_capacity(parts.len());
        for (ops, encoded) in parts {
            let (reply, answer) = oneshot::channel();
            // Each sender has one guaranteed slot, so the queue holds at most
            // `queued_appends_max` plus one append per task currently waiting here.
            sender.send(Request { ops, encoded, reply }).await.map_err(|_| FileError::WriterStopped)?;
            answers.push(answer);
        }
        // The writer serves one sender's requests in order, and a failed write fails
        // every later one: the parts that became durable are a prefix.
        for answer in answers {
            answer.await.map_err(|_| FileError::WriterStopped)??;
        }
        Ok(())
    }

    async fn load(&self) -> Result<DurableState, FileError> {
        let shared = lock(&self.shared);
        if let Some((path, source)) = &shared.failure {
            return Err(FileError::Failed { path: path.clone(), source: Arc::clone(source) });
        }
        Ok(shared.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_matches_postcard() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(varint_len(value), postcard::to_stdvec(&value).unwrap().len() as u64, "{value}");
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&log_name(0x2a)), Some((0x2a, false)));
        assert_eq!(parse_name(&format!("{}.tmp", log_name(7))), Some((7, true)));
        assert_eq!(parse_name("wal-12.log"), None);
        assert_eq!(parse_name("LOCK"), None);
    }

    #[test]
    fn options_are_validated() {
        assert!(FileOptions::default().validate().is_ok());
        let zero_queue = FileOptions { queued_appends_max: 0, ..FileOptions::default() };
        assert!(matches!(zero_queue.validate(), Err(FileError::InvalidOptions { .. })));
        let huge_record = FileOptions { record_bytes_max: u64::from(u32::MAX), ..FileOptions::default() };
        assert!(matches!(huge_record.validate(), Err(FileError::InvalidOptions { .. })));
        for preallocate_bytes in [0, 4 << 10, 1 << 30] {
            assert!(FileOptions { preallocate_bytes, ..FileOptions::default() }.validate().is_ok());
        }
        for preallocate_bytes in [1, (4 << 10) - 1, (1 << 30) + 1, u64::MAX] {
            let error = FileOptions { preallocate_bytes, ..FileOptions::default() }.validate().unwrap_err();
            assert!(error.to_string().contains("preallocate_bytes"), "{error}");
        }
    }

    /// Builds a directory holding generation 0 with a few appends, and returns the
    /// file's bytes (a small preallocated zero tail included) and the state they hold.
    fn old_generation(dir: &Path) -> (Vec<u8>, DurableState) {
        let options = FileOptions { preallocate_bytes: 4 << 10, ..FileOptions::default() };
        let storage = FileStorage::open(dir, options).unwrap();
        futures::executor::block_on(async {
            for round in 1..=5 {
                storage
                    .append(&[StorageOp::Round(round), StorageOp::Promise(paxos_core::Ballot::new(round, 1))])
                    .await
                    .unwrap();
            }
        });
        let state = futures::executor::block_on(storage.load()).unwrap();
        drop(storage);
        (std::fs::read(dir.join(log_name(0))).unwrap(), state)
    }

    fn reopen(dir: &Path) -> DurableState {
        let storage = FileStorage::open(dir, FileOptions::default()).unwrap();
        futures::executor::block_on(storage.load()).unwrap()
    }

    /// A crash at every step of a checkpoint: while the temporary file is written
    /// (cut at every byte), after it is complete but not renamed, and after the
    /// rename but before the old log is deleted. Recovery returns the same state
    /// each time and leaves exactly one log file.
    #[test]
    fn a_crash_at_any_step_of_a_checkpoint_loses_nothing() {
        let source = tempfile::tempdir().unwrap();
        let (old, state) = old_generation(source.path());
        let new = format::checkpoint_file(&state).unwrap();
        let logs = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.starts_with("wal-"))
                .collect();
            names.sort();
            names
        };

        let dir = tempfile::tempdir().unwrap();
        for cut in 0..=new.len() {
            std::fs::write(dir.path().join(log_name(0)), &old).unwrap();
            std::fs::write(dir.path().join(format!("{}.tmp", log_name(1))), &new[..cut]).unwrap();
            assert_eq!(reopen(dir.path()), state, "temporary checkpoint cut at {cut}");
            assert_eq!(logs(dir.path()), vec![log_name(0)]);
        }

        // Renamed, old log not yet deleted: the new generation wins, the old goes.
        std::fs::write(dir.path().join(log_name(0)), &old).unwrap();
        std::fs::write(dir.path().join(log_name(1)), &new).unwrap();
        assert_eq!(reopen(dir.path()), state);
        assert_eq!(logs(dir.path()), vec![log_name(1)]);

        // Finished: only the new generation.
        assert_eq!(reopen(dir.path()), state);
    }
}
