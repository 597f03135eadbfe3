//! The writer thread: takes every queued append, writes them as one record, syncs
//! once (group commit), answers each caller, and starts and installs checkpoints,
//! which a thread of their own writes meanwhile.
//!
//! Records go at the logical end of the log (`file_bytes`), which may lie before the
//! physical end: the writer preallocates space ahead of the records
//! ([`FileOptions::preallocate_bytes`]) and makes the new size durable once, so a
//! group's `fdatasync` need not make a new file size or newly allocated blocks
//! durable (the file system still marks the reserved blocks written, a smaller
//! metadata change). The bytes between the logical and the physical end are zeros, which
//! recovery reads as the clean end of the log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use paxos_core::StorageOp;

use super::{
    format, install_checkpoint, lock, temporary_path, write_temporary_checkpoint, FileError, FileOptions, Shared,
};

/// One `append` call waiting for durability.
pub(crate) struct Request {
    /// The ops, applied to the in-memory state once durable.
    pub ops: Vec<StorageOp>,
    /// Their postcard encoding, made by the caller.
    pub encoded: Vec<u8>,
    /// Answered once the record holding them is synced (or failed).
    pub reply: oneshot::Sender<Result<(), FileError>>,
}

/// Owns the live log file; runs on its own thread.
pub(crate) struct Writer {
    dir: PathBuf,
    options: FileOptions,
    file: File,
    path: PathBuf,
    generation: u64,
    /// Bytes in the live file up to the end of its last record: where the next
    /// record goes. The file handle's position is always here.
    file_bytes: u64,
    /// The live file's size as the writer last set it, at least `file_bytes` (an
    /// allocation that ran out of space may have left the file longer). Everything
    /// after `file_bytes` reads as zeros.
    allocated_bytes: u64,
    /// Whether to preallocate: `preallocate_bytes` is not 0 and the file system
    /// has not refused it.
    preallocating: bool,
    /// The file system had no room for the last preallocation of this generation.
    no_space_in_generation: bool,
    /// Bytes of the live file's header and checkpoint.
    checkpoint_bytes: u64,
    shared: Arc<Mutex<Shared>>,
    buffer: Vec<u8>,
    /// The checkpoint being written on another thread, if any.
    pending: Option<PendingCheckpoint>,
    /// No checkpoint starts before the live file reaches this size: after one
    /// failed, the next waits for another `records_bytes_max` of records.
    checkpoint_not_before: u64,
}

/// A checkpoint of the next generation that a thread of its own is writing, and
/// how far the records the live file took since are carried after it.
struct PendingCheckpoint {
    generation: u64,
    /// Writes the temporary file (the checkpoint, or records carried after it)
    /// and syncs it; `None` once joined. Dropping a pending checkpoint joins it,
    /// so no thread outlives the writer (and the directory lock).
    thread: Option<JoinHandle<std::io::Result<Written>>>,
    /// Where the records after the checkpoint's state start in the live file.
    tail_from: u64,
    /// Up to where the live file's records are in the new file once `thread` is done.
    carried_to: u64,
    /// Rounds that carried records in the background so far.
    rounds: u32,
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A synced temporary log file of the next generation.
struct Written {
    /// Open, positioned at its end.
    file: File,
    temporary: PathBuf,
    checkpoint_bytes: u64,
    /// The checkpoint and the records carried after it.
    file_bytes: u64,
}

/// Most rounds that carry records into a new checkpoint file in the background
/// before the writer carries the rest itself: each round carries what was
/// appended during the one before, so under a steady load they shrink, and under
/// a load the disk cannot keep up with, the writer still gets to install it.
const CARRY_ROUNDS_MAX: u32 = 8;

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dir: PathBuf,
        options: FileOptions,
        file: File,
        path: PathBuf,
        generation: u64,
        file_bytes: u64,
        allocated_bytes: u64,
        checkpoint_bytes: u64,
        shared: Arc<Mutex<Shared>>,
    ) -> Writer {
        assert!(allocated_bytes >= file_bytes, "the file is shorter than its records");
        let preallocating = options.preallocate_bytes > 0;
        Writer {
            dir,
            options,
            file,
            path,
            generation,
            file_bytes,
            allocated_bytes,
            preallocating,
            no_space_in_generation: false,
            checkpoint_bytes,
            shared,
            buffer: Vec::new(),
            pending: None,
            checkpoint_not_before: 0,
        }
    }

    /// Serves appends until every sender is dropped.
    pub(crate) fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let mut carried: Option<Request> = None;
        let mut group: Vec<Request> = Vec::new();
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match futures::executor::block_on(receiver.next()) {
                    Some(request) => request,
                    None => {
                        self.finish_checkpoint_at_close();
                        return;
                    }
                },
            };
            // The record body: one kind byte, then each append's encoding.
            let mut body_bytes = 1 + first.encoded.len() as u64;
            group.push(first);
            while group.len() < self.options.appends_per_sync_max && body_bytes < self.options.bytes_per_sync_max {
                let Ok(request) = receiver.try_recv() else { break };
                if body_bytes + request.encoded.len() as u64 > self.options.record_bytes_max {
                    carried = Some(request);
                    break;
                }
                body_bytes += request.encoded.len() as u64;
                group.push(request);
            }
            self.serve(&mut group);
        }
    }

    /// Writes one group as one record, syncs, and answers its callers.
    fn serve(&mut self, group: &mut Vec<Request>) {
        let failure = lock(&self.shared).failure.clone();
        let result = match failure {
            Some(failure) => Err(failure),
            None => self.write_group(group).map_err(|source| (self.path.clone(), Arc::new(source))),
        };
        match result {
            Ok(()) => {
                {
                    let mut shared = lock(&self.shared);
                    for request in group.iter() {
                        request.ops.iter().for_each(|op| shared.state.apply(op));
                    }
                    shared.stats.appends += group.len() as u64;
                    shared.stats.syncs += 1;
                    shared.stats.log_bytes = self.file_bytes;
                }
                for request in group.drain(..) {
                    let _ = request.reply.send(Ok(()));
                }
                self.checkpoint_if_due();
            }
            Err((path, source)) => {
                lock(&self.shared).failure.get_or_insert_with(|| (path.clone(), Arc::clone(&source)));
                for request in group.drain(..) {
                    let failed = FileError::Failed { path: path.clone(), source: Arc::clone(&source) };
                    let _ = request.reply.send(Err(failed));
                }
            }
        }
    }

    fn write_group(&mut self, group: &[Request]) -> std::io::Result<()> {
        self.buffer.clear();
        let start = format::start_record(&mut self.buffer, format::KIND_OPS);
        for request in group {
            self.buffer.extend_from_slice(&request.encoded);
        }
        // The group stays within `record_bytes_max`, which `validate` keeps below u32::MAX.
        format::finish_record(&mut self.buffer, start)
            .map_err(|bytes| std::io::Error::other(format!("a record of {bytes} bytes is too large")))?;
        self.reserve(self.buffer.len() as u64)?;
        self.file.write_all(&self.buffer)?;
        self.file.sync_data()?;
        self.file_bytes += self.buffer.len() as u64;
        self.allocated_bytes = self.allocated_bytes.max(self.file_bytes);
        // A rare huge group should not pin its buffer for the life of the storage.
        if self.buffer.capacity() > 4 * self.options.bytes_per_sync_max as usize {
            self.buffer = Vec::new();
        }
        Ok(())
    }

    /// Makes room for a record of `record_bytes` at `file_bytes`: when it would run
    /// past the allocated size, extends the allocation by `preallocate_bytes` (at
    /// least the record) and syncs the new size once. Space this file can never use
    /// (it is replaced by a checkpoint once its records pass
    /// [`Self::records_bytes_max`]) is not allocated. Without preallocation (turned
    /// off, unsupported, or no space for it) the write simply grows the file.
    fn reserve(&mut self, record_bytes: u64) -> std::io::Result<()> {
        let end = self.file_bytes + record_bytes;
        if !self.preallocating || self.no_space_in_generation || end <= self.allocated_bytes {
            return Ok(());
        }
        let end_max = if self.pending.is_some() || self.checkpoint_not_before > 0 {
            // A checkpoint is being written, or the last one failed; until one is
            // installed this file stays live, and goes on being allocated a step
            // at a time, each no larger than the records it was meant to hold.
            end.saturating_add(self.options.preallocate_bytes.min(self.records_bytes_max()))
        } else {
            self.checkpoint_bytes + self.records_bytes_max()
        };
        if end > end_max {
            // This record makes a checkpoint due, which replaces the file.
            return Ok(());
        }
        let target = self.allocated_bytes.saturating_add(self.options.preallocate_bytes).clamp(end, end_max);
        match allocate(&self.file, self.allocated_bytes, target - self.allocated_bytes)? {
            Allocation::Done => {
                // Once, so the groups' fdatasyncs find the size already durable.
                self.file.sync_all()?;
                self.allocated_bytes = target;
            }
            Allocation::Unsupported => self.preallocating = false,
            // The record may still fit; writing it grows the file as without
            // preallocation, and a write that finds no space fails as before.
            // Not asking again until the next checkpoint spares every group a
            // failing system call while the disk stays full.
            Allocation::NoSpace => self.no_space_in_generation = true,
        }
        Ok(())
    }

    /// The most record bytes the live file holds after its checkpoint before it is
    /// replaced by a new one.
    fn records_bytes_max(&self) -> u64 {
        self.options.log_bytes_max.max(self.checkpoint_bytes)
    }

    /// Replaces the log with a checkpoint once the records after the current
    /// checkpoint outgrow both `log_bytes_max` and the checkpoint itself, so disk
    /// use stays within a constant factor of the live state and rewriting costs
    /// O(1) per appended byte. The state is written by a thread of its own; this
    /// installs a checkpoint that thread has finished, and starts the next one
    /// when due.
    fn checkpoint_if_due(&mut self) {
        if self.pending.as_ref().is_some_and(|pending| pending.thread.as_ref().is_none_or(JoinHandle::is_finished)) {
            self.install_pending(false);
        }
        let records_bytes = self.file_bytes - self.checkpoint_bytes;
        if self.pending.is_some()
            || records_bytes <= self.records_bytes_max()
            || self.file_bytes < self.checkpoint_not_before
        {
            return;
        }
        let state = lock(&self.shared).state.clone();
        let generation = self.generation + 1;
        let dir = self.dir.clone();
        let spawned = spawn_checkpoint_thread(move || {
            let (file, temporary, bytes) = write_temporary_checkpoint(&dir, generation, &state)?;
            Ok(Written { file, temporary, checkpoint_bytes: bytes, file_bytes: bytes })
        });
        match spawned {
            Ok(thread) => {
                let (tail_from, carried_to) = (self.file_bytes, self.file_bytes);
                self.pending =
                    Some(PendingCheckpoint { generation, thread: Some(thread), tail_from, carried_to, rounds: 0 })
            }
            Err(source) => self.checkpoint_failed_before_rename(generation, source),
        }
    }

    /// Waits for the checkpoint thread. While the live file's records not yet
    /// carried into the new file are more than one group's worth
    /// (`bytes_per_sync_max`), another thread copies them over, and appends go
    /// on (at most [`CARRY_ROUNDS_MAX`] rounds, none at close). Then the writer
    /// copies the rest itself, syncs, and makes the new file the live log:
    /// appends wait for that last part only. Records are copied from the live
    /// file, so memory stays constant however many there are.
    fn install_pending(&mut self, closing: bool) {
        let Some(mut pending) = self.pending.take() else { return };
        let generation = pending.generation;
        let joined = pending.thread.take().map(|thread| thread.join());
        let written = match joined {
            Some(Ok(written)) => written,
            Some(Err(_)) => Err(std::io::Error::other("the checkpoint thread panicked")),
            None => Err(std::io::Error::other("the checkpoint thread was already joined")),
        };
        let Written { mut file, temporary, checkpoint_bytes, file_bytes } = match written {
            Ok(written) => written,
            Err(source) => {
                return self.checkpoint_failed_before_rename(generation, source);
            }
        };
        let (from, to) = (pending.carried_to, self.file_bytes);
        if !closing && to - from > self.options.bytes_per_sync_max && pending.rounds < CARRY_ROUNDS_MAX {
            let live = self.path.clone();
            let spawned = spawn_checkpoint_thread(move || {
                carry(&live, from, to, &mut file)?;
                file.sync_data()?;
                Ok(Written { file, temporary, checkpoint_bytes, file_bytes: file_bytes + (to - from) })
            });
            match spawned {
                Ok(thread) => {
                    pending.thread = Some(thread);
                    pending.carried_to = to;
                    pending.rounds += 1;
                    self.pending = Some(pending);
                }
                Err(source) => self.checkpoint_failed_before_rename(generation, source),
            }
            return;
        }
        if let Err(source) = carry(&self.path, from, to, &mut file).and_then(|()| file.sync_all()) {
            return self.checkpoint_failed_before_rename(generation, source);
        }
        match install_checkpoint(&self.dir, generation, &temporary) {
            Ok(path) => {
                let old = std::mem::replace(&mut self.path, path);
                self.file = file;
                self.generation = generation;
                self.file_bytes = file_bytes + (to - from);
                // The new file ends at its last record; `reserve` allocates more
                // when the next record needs it.
                self.allocated_bytes = self.file_bytes;
                self.no_space_in_generation = false;
                self.checkpoint_not_before = 0;
                self.checkpoint_bytes = checkpoint_bytes;
                // If this removal is lost in a crash, recovery removes the old
                // generation, since the new one is complete and higher.
                let _ = std::fs::remove_file(old);
                let mut shared = lock(&self.shared);
                shared.stats.checkpoints += 1;
                shared.stats.checkpoint_tail_bytes += to - pending.tail_from;
                shared.stats.checkpoint_tail_rounds += u64::from(pending.rounds);
                shared.stats.generation = generation;
                shared.stats.log_bytes = self.file_bytes;
            }
            Err(source) => {
                // The rename may or may not have happened, so appending to the old
                // file could write where recovery never looks: stop writing.
                let path = self.dir.join(super::log_name(generation));
                lock(&self.shared).failure.get_or_insert_with(|| (path, Arc::new(source)));
            }
        }
    }

    /// A checkpoint failed before its file got its name: the live log is whole
    /// and stays live. Says so, removes what was written, and waits for another
    /// `records_bytes_max` of records before trying again (a full disk is not
    /// asked again at every group).
    fn checkpoint_failed_before_rename(&mut self, generation: u64, source: std::io::Error) {
        tracing::warn!(
            dir = %self.dir.display(),
            generation,
            error = %source,
            "writing a checkpoint failed; the log goes on in the current file, and the checkpoint is tried again later"
        );
        let _ = std::fs::remove_file(temporary_path(&self.dir, generation));
        self.checkpoint_not_before = self.file_bytes + self.records_bytes_max();
        lock(&self.shared).stats.checkpoint_failures += 1;
    }

    /// At close, a checkpoint still being written is finished and installed if
    /// the log is sound; after a failure it is left as a temporary file, which
    /// the next open removes. Either way its thread is joined.
    fn finish_checkpoint_at_close(&mut self) {
        if lock(&self.shared).failure.is_none() {
            self.install_pending(true);
        }
        self.pending = None;
    }
}

/// Starts a thread that writes a checkpoint or carries records into one.
fn spawn_checkpoint_thread(
    work: impl FnOnce() -> std::io::Result<Written> + Send + 'static,
) -> std::io::Result<JoinHandle<std::io::Result<Written>>> {
    std::thread::Builder::new().name("paxos-file-checkpoint".to_string()).spawn(work)
}

/// Appends bytes `from..to` of the log file `live` to `file`, at its end.
fn carry(live: &Path, from: u64, to: u64, file: &mut File) -> std::io::Result<()> {
    let mut source = File::open(live)?;
    source.seek(SeekFrom::Start(from))?;
    let copied = std::io::copy(&mut source.take(to - from), file)?;
    if copied != to - from {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the live log ends {} bytes before its last record", to - from - copied),
        ));
    }
    Ok(())
}

/// What became of a preallocation request.
// Elsewhere than Linux every request is `Unsupported`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
enum Allocation {
    /// The range is allocated and the file at least that long.
    Done,
    /// This platform or file system cannot preallocate; stop trying.
    Unsupported,
    /// Not enough space for the whole range now; some of it may be allocated.
    NoSpace,
}

/// Allocates `length` bytes of `file` from `offset`, extending its size: the new
/// range reads as zeros. `fallocate` with no flags, the system call under
/// `posix_fallocate`, without glibc's fallback of writing every block.
#[cfg(target_os = "linux")]
fn allocate(file: &File, offset: u64, length: u64) -> std::io::Result<Allocation> {
    use rustix::io::Errno;
    loop {
        return match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, length) {
            Ok(()) => Ok(Allocation::Done),
            Err(Errno::INTR) => continue,
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => Ok(Allocation::Unsupported),
            Err(Errno::NOSPC | Errno::FBIG) => Ok(Allocation::NoSpace),
            Err(error) => Err(error.into()),
        };
    }
}

/// Other platforms do not preallocate: records grow the file.
#[cfg(not(target_os = "linux"))]
fn allocate(_file: &File, _offset: u64, _length: u64) -> std::io::Result<Allocation> {
    Ok(Allocation::Unsupported)
}
