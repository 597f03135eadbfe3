//! The on-disk format of a log file, and recovery: pure functions over bytes.
//!
//! A log file is a 16-byte file header followed by records:
//!
//! ```text
//! file header:  magic "PAXOSLOG" (8) | format version u32 LE | CRC32C of the previous 12 bytes, u32 LE
//! record:       body length u32 LE | CRC32C(length bytes ++ body) u32 LE | body
//! body:         kind u8 | payload
//! ```
//!
//! The first record of every file is a checkpoint (kind 1): the postcard encoding of
//! the whole [`DurableState`]. Every later record is an ops record (kind 2): the
//! postcard encodings of the `&[StorageOp]` of one or more `append` calls, one after
//! another, exactly the appends that shared one fdatasync (group commit). A record is
//! therefore written by exactly one `write` and made durable by exactly one sync, so a
//! record is either wholly durable or the unsynced tail of the file.
//!
//! The CRC covers the length, so a damaged length is detected like damaged data.
//!
//! # The zero tail
//!
//! The writer may preallocate the file beyond its last record, so a file can end in
//! zero bytes. No record header is all zeros (a zero length is covered by a CRC of
//! four zero bytes, which is not zero), so when every byte from a damaged record to
//! the end of the file is zero, that is the clean end of the log; and an intact
//! record can only start at or before the last non-zero byte, which bounds the scan
//! for intact records after damage.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use paxos_core::{DurableState, StorageOp};

use super::FileError;

/// The magic bytes every log file starts with.
const FILE_MAGIC: &[u8; 8] = b"PAXOSLOG";
/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Bytes of the file header.
pub(crate) const FILE_HEADER_BYTES: usize = 16;
/// Bytes of a record header (length and CRC).
pub(crate) const RECORD_HEADER_BYTES: usize = 8;
/// Record kind: the whole durable state.
const KIND_CHECKPOINT: u8 = 1;
/// Record kind: the ops of one or more appends.
pub(crate) const KIND_OPS: u8 = 2;

/// The 16-byte header every log file starts with.
pub(crate) fn file_header() -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[..8].copy_from_slice(FILE_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Starts a record in `buffer`: reserves its header and writes the kind byte.
/// Append the payload, then call [`finish_record`] with the returned start.
pub(crate) fn start_record(buffer: &mut Vec<u8>, kind: u8) -> usize {
    let start = buffer.len();
    buffer.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    buffer.push(kind);
    start
}

/// Fills in the length and CRC of the record started at `start`, which runs to the
/// end of `buffer`. Fails if the body is longer than a `u32` can say.
pub(crate) fn finish_record(buffer: &mut [u8], start: usize) -> Result<(), u64> {
    let body_len = buffer.len() - start - RECORD_HEADER_BYTES;
    let Ok(length) = u32::try_from(body_len) else { return Err(body_len as u64) };
    let length_bytes = length.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length_bytes), &buffer[start + RECORD_HEADER_BYTES..]);
    buffer[start..start + 4].copy_from_slice(&length_bytes);
    buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Bytes the checkpoint's encoding is gathered in before each write.
const CHECKPOINT_CHUNK_BYTES: usize = 256 << 10;

/// Writes a complete log file holding `state` as its checkpoint to `out`, from
/// its start, and returns its length. The encoding is streamed in chunks of
/// [`CHECKPOINT_CHUNK_BYTES`], its length and CRC counted on the way and written
/// into the record header last, so memory stays constant however large the state
/// is (a buffer of the whole file took as much again as the state, doubled while
/// it grew: 800 MB at once for three replicas holding 160,000 1 KiB commands).
///
/// A file cut anywhere before this returns is not a valid log: its record header
/// is still zeros until the last write. The caller writes to a temporary file and
/// renames it once synced, so a crash leaves either no new file or a whole one.
pub(crate) fn write_checkpoint_file<W: Write + Seek>(mut out: W, state: &DurableState) -> std::io::Result<u64> {
    let mut prefix = [0u8; FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 1];
    prefix[..FILE_HEADER_BYTES].copy_from_slice(&file_header());
    prefix[FILE_HEADER_BYTES + RECORD_HEADER_BYTES] = KIND_CHECKPOINT;
    out.write_all(&prefix)?;
    let counted = Counted { inner: &mut out, crc: crc32c::crc32c(&[KIND_CHECKPOINT]), bytes: 1, failure: None };
    let mut body = BufWriter::with_capacity(CHECKPOINT_CHUNK_BYTES, counted);
    let encoded = postcard::to_io(state, &mut body).map(drop);
    let flushed = if encoded.is_ok() { body.flush() } else { Ok(()) };
    let counted = body.into_parts().0;
    if let Some(failure) = counted.failure {
        // postcard reports a failed write as an error of its own; this is the cause.
        return Err(failure);
    }
    encoded.map_err(|error| std::io::Error::other(format!("encoding the checkpoint failed: {error}")))?;
    flushed?;
    let (crc, body_bytes) = (counted.crc, counted.bytes);
    let length = u32::try_from(body_bytes).map_err(|_| {
        std::io::Error::other(format!("the checkpoint is {body_bytes} bytes, more than a record can hold (4 GiB)"))
    })?;
    let length_bytes = length.to_le_bytes();
    // The CRC covers the length, then the body: the length's CRC extended by the body's.
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&length_bytes), crc, body_bytes as usize);
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[..4].copy_from_slice(&length_bytes);
    header[4..].copy_from_slice(&crc.to_le_bytes());
    out.seek(SeekFrom::Start(FILE_HEADER_BYTES as u64))?;
    out.write_all(&header)?;
    let end = (FILE_HEADER_BYTES + RECORD_HEADER_BYTES) as u64 + body_bytes;
    out.seek(SeekFrom::Start(end))?;
    Ok(end)
}

/// A writer that passes bytes on and keeps their CRC32C and count, and the first
/// error of the writer below (which postcard would replace by its own).
struct Counted<W> {
    inner: W,
    crc: u32,
    bytes: u64,
    failure: Option<std::io::Error>,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes + buf.len() as u64 > u64::from(u32::MAX) {
            // Stop at once rather than write gigabytes that can never be a record.
            let error = std::io::Error::other("the checkpoint is more than a record can hold (4 GiB)");
            self.failure.get_or_insert(error);
            return Err(std::io::ErrorKind::Other.into());
        }
        match self.inner.write(buf) {
            Ok(written) => {
                self.crc = crc32c::crc32c_append(self.crc, &buf[..written]);
                self.bytes += written as u64;
                Ok(written)
            }
            Err(error) => {
                let kind = error.kind();
                if kind != std::io::ErrorKind::Interrupted {
                    self.failure.get_or_insert(error);
                    return Err(kind.into());
                }
                Err(error)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The complete bytes of a new log file holding `state` as its checkpoint.
#[cfg(test)]
pub(crate) fn checkpoint_file(state: &DurableState) -> std::io::Result<Vec<u8>> {
    let mut file = std::io::Cursor::new(Vec::new());
    write_checkpoint_file(&mut file, state)?;
    Ok(file.into_inner())
}

/// What recovery found in a log file.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The replay of the checkpoint and every intact record.
    pub state: DurableState,
    /// Bytes of the file up to the end of the last intact record.
    pub valid_bytes: u64,
    /// Bytes of the header and the checkpoint record.
    pub checkpoint_bytes: u64,
    /// Intact ops records after the checkpoint.
    pub ops_records: u64,
}

/// Why the record at some offset is not intact.
enum Damage {
    /// Fewer bytes left than a record header.
    ShortHeader,
    /// The length points past the end of the file.
    PastEnd(u32),
    /// The CRC does not match.
    Checksum,
}

impl Damage {
    fn describe(&self) -> String {
        match self {
            Damage::ShortHeader => "the file ends inside a record header".to_string(),
            Damage::PastEnd(length) => format!("a record of {length} bytes runs past the end of the file"),
            Damage::Checksum => "CRC32C mismatch".to_string(),
        }
    }
}

/// The record at `offset`: its body and the offset after it, or why it is damaged.
fn record_at(bytes: &[u8], offset: usize) -> Result<(&[u8], usize), Damage> {
    let Some(header) = bytes.get(offset..offset + RECORD_HEADER_BYTES) else { return Err(Damage::ShortHeader) };
    let length_bytes: [u8; 4] = header[..4].try_into().expect("four bytes");
    let stored_crc = u32::from_le_bytes(header[4..].try_into().expect("four bytes"));
    let length = u32::from_le_bytes(length_bytes);
    let body_start = offset + RECORD_HEADER_BYTES;
    let Some(body) = bytes.get(body_start..body_start + length as usize) else { return Err(Damage::PastEnd(length)) };
    if crc32c::crc32c_append(crc32c::crc32c(&length_bytes), body) != stored_crc {
        return Err(Damage::Checksum);
    }
    Ok((body, body_start + length as usize))
}

/// Whether an intact record starts anywhere after `offset`. Records after the first
/// damaged one can only exist if the damaged one was once synced: each record is
/// written only after every earlier one was made durable.
///
/// `last_nonzero` is the index of the file's last non-zero byte. A record header is
/// never all zeros, so no intact record starts after it, and a preallocated zero
/// tail costs nothing here.
fn intact_record_after(bytes: &[u8], offset: usize, last_nonzero: usize) -> bool {
    let starts_end = bytes.len().saturating_sub(RECORD_HEADER_BYTES - 1).min(last_nonzero + 1);
    (offset + 1..starts_end).any(|start| record_at(bytes, start).is_ok())
}

/// Replays a log file. A damaged record with only zero bytes after its start is the
/// end of a preallocated log, and one with nothing intact after it is a torn tail (a
/// write that was never acknowledged); either ends the replay. Damage followed by an
/// intact record, a damaged header or checkpoint, or a record whose CRC matches but
/// whose body does not decode, is corruption and an error.
pub(crate) fn recover(bytes: &[u8], file: &Path) -> Result<Recovered, FileError> {
    let corrupt =
        |offset: usize, reason: String| FileError::Corrupt { file: file.to_path_buf(), offset: offset as u64, reason };
    // The header and the checkpoint were synced before the file got its name, so
    // they are complete in any file recovery looks at.
    let Some(header) = bytes.get(..FILE_HEADER_BYTES) else {
        return Err(corrupt(0, format!("the file is {} bytes, shorter than its header", bytes.len())));
    };
    if &header[..8] != FILE_MAGIC {
        return Err(corrupt(0, "not a paxos-storage log file (wrong magic bytes)".to_string()));
    }
    if crc32c::crc32c(&header[..12]) != u32::from_le_bytes(header[12..].try_into().expect("four bytes")) {
        return Err(corrupt(0, "CRC32C mismatch in the file header".to_string()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("four bytes"));
    if version != FORMAT_VERSION {
        return Err(FileError::UnsupportedVersion {
            file: file.to_path_buf(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }

    let (body, mut offset) =
        record_at(bytes, FILE_HEADER_BYTES).map_err(|damage| corrupt(FILE_HEADER_BYTES, damage.describe()))?;
    let state = match body.split_first() {
        Some((&KIND_CHECKPOINT, payload)) => match postcard::take_from_bytes::<DurableState>(payload) {
            Ok((state, [])) => state,
            Ok(_) => return Err(corrupt(FILE_HEADER_BYTES, "trailing bytes after the checkpoint".to_string())),
            Err(error) => return Err(corrupt(FILE_HEADER_BYTES, format!("the checkpoint does not decode: {error}"))),
        },
        _ => return Err(corrupt(FILE_HEADER_BYTES, "the first record is not a checkpoint".to_string())),
    };
    let mut recovered =
        Recovered { state, valid_bytes: offset as u64, checkpoint_bytes: offset as u64, ops_records: 0 };

    while offset < bytes.len() {
        let start = offset;
        let body = match record_at(bytes, start) {
            Ok((body, next)) => {
                offset = next;
                body
            }
            Err(damage) => {
                // One backward scan: the zero tail of a preallocated file is skipped
                // here and never searched for records.
                let Some(last_nonzero) = bytes[start..].iter().rposition(|byte| *byte != 0) else {
                    // Only zeros from here on: the clean end of a preallocated log.
                    break;
                };
                if intact_record_after(bytes, start, start + last_nonzero) {
                    return Err(corrupt(start, format!("{}, and intact records follow", damage.describe())));
                }
                // A torn tail: the write that was in progress at the crash.
                break;
            }
        };
        match body.split_first() {
            Some((&KIND_OPS, mut payload)) => {
                while !payload.is_empty() {
                    let (ops, rest) = postcard::take_from_bytes::<Vec<StorageOp>>(payload).map_err(|error| {
                        corrupt(start, format!("a record with a valid CRC does not decode: {error}"))
                    })?;
                    ops.iter().for_each(|op| recovered.state.apply(op));
                    payload = rest;
                }
            }
            Some((&KIND_CHECKPOINT, _)) => {
                return Err(corrupt(start, "a checkpoint record after the start of the file".to_string()))
            }
            Some((kind, _)) => return Err(corrupt(start, format!("unknown record kind {kind}"))),
            None => return Err(corrupt(start, "an empty record".to_string())),
        }
        recovered.ops_records += 1;
        recovered.valid_bytes = offset as u64;
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::{Ballot, Command, SlotState, Value};

    fn ops_record(buffer: &mut Vec<u8>, ops: &[StorageOp]) {
        let start = start_record(buffer, KIND_OPS);
        postcard::to_io(ops, &mut *buffer).unwrap();
        finish_record(buffer, start).unwrap();
    }

    /// A state whose encoding spans several of the checkpoint's chunks.
    fn state_of_many_chunks() -> DurableState {
        let mut state = DurableState { promised: Ballot::new(3, 2), round: 3, ..DurableState::default() };
        for slot in 1..=800u64 {
            let value = Value::Commands(vec![Command::new(slot, 0, vec![slot as u8; 1024])].into());
            let accepted = Some((Ballot::new(3, 2), value.clone()));
            state.slots.insert(slot, SlotState { promised: Ballot::ZERO, accepted, chosen: Some(value) });
        }
        state
    }

    /// Streamed, the file is byte for byte the one a buffer of the whole
    /// checkpoint record gives, and it recovers to the state.
    #[test]
    fn a_streamed_checkpoint_is_the_buffered_one() {
        let state = state_of_many_chunks();
        let streamed = checkpoint_file(&state).unwrap();
        assert!(streamed.len() > 3 * CHECKPOINT_CHUNK_BYTES, "{} bytes", streamed.len());

        let mut buffered = file_header().to_vec();
        let start = start_record(&mut buffered, KIND_CHECKPOINT);
        buffered.extend_from_slice(&postcard::to_allocvec(&state).unwrap());
        finish_record(&mut buffered, start).unwrap();
        assert!(streamed == buffered, "the streamed checkpoint differs from the buffered one");

        let recovered = recover(&streamed, Path::new("x")).unwrap();
        assert_eq!(recovered.state, state);
        assert_eq!(recovered.checkpoint_bytes, streamed.len() as u64);
    }

    /// A file that takes `left` bytes, then fails as a full disk does.
    struct FillsUp {
        written: std::io::Cursor<Vec<u8>>,
        left: usize,
    }

    impl Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "the test disk is full"));
            }
            let take = buf.len().min(self.left);
            self.left -= take;
            self.written.write(&buf[..take])
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FillsUp {
        fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
            self.written.seek(position)
        }
    }

    /// A write that fails part way through the checkpoint is reported as itself,
    /// not as postcard's stand-in, and what was written is no valid log.
    #[test]
    fn a_failed_checkpoint_write_reports_its_cause() {
        let mut file = FillsUp { written: std::io::Cursor::new(Vec::new()), left: CHECKPOINT_CHUNK_BYTES + 100 };
        let error = write_checkpoint_file(&mut file, &state_of_many_chunks()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(error.to_string(), "the test disk is full");
        let partial = file.written.into_inner();
        assert!(recover(&partial, Path::new("x")).is_err(), "a cut checkpoint must not recover");
    }

    #[test]
    fn crc32c_matches_the_published_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn a_file_replays_its_checkpoint_and_records() {
        let mut bytes = checkpoint_file(&DurableState { round: 4, ..DurableState::default() }).unwrap();
        ops_record(&mut bytes, &[StorageOp::Round(9), StorageOp::Promise(Ballot::new(2, 1))]);
        let recovered = recover(&bytes, Path::new("x")).unwrap();
        assert_eq!(recovered.state.round, 9);
        assert_eq!(recovered.state.promised, Ballot::new(2, 1));
        assert_eq!(recovered.valid_bytes, bytes.len() as u64);
        assert_eq!(recovered.ops_records, 1);
    }

    #[test]
    fn a_valid_crc_over_an_undecodable_body_is_corruption_even_at_the_end() {
        let mut bytes = checkpoint_file(&DurableState::default()).unwrap();
        let start = start_record(&mut bytes, KIND_OPS);
        bytes.extend_from_slice(&[0xff; 12]);
        finish_record(&mut bytes, start).unwrap();
        let error = recover(&bytes, Path::new("x")).unwrap_err();
        assert!(matches!(error, FileError::Corrupt { offset, .. } if offset == start as u64), "{error}");
    }

    #[test]
    fn no_record_header_is_all_zeros() {
        // The zero tail rule rests on this: a zero length needs the CRC of four zero bytes.
        assert_ne!(crc32c::crc32c(&[0u8; 4]), 0);
        assert!(matches!(record_at(&[0u8; 64], 0), Err(Damage::Checksum)));
    }

    /// A file preallocated past its last record: the zeros are the clean end.
    #[test]
    fn a_zero_tail_after_the_last_record_is_the_clean_end() {
        let mut bytes = checkpoint_file(&DurableState::default()).unwrap();
        ops_record(&mut bytes, &[StorageOp::Round(5)]);
        ops_record(&mut bytes, &[StorageOp::Promise(Ballot::new(6, 2))]);
        let end = bytes.len();
        bytes.resize(end + (4 << 20), 0);
        let recovered = recover(&bytes, Path::new("x")).unwrap();
        assert_eq!(recovered.valid_bytes, end as u64);
        assert_eq!(recovered.ops_records, 2);
        assert_eq!(recovered.state.round, 5);
        assert_eq!(recovered.state.promised, Ballot::new(6, 2));
    }

    /// A record cut anywhere (header or body) and followed by zeros is a torn tail.
    #[test]
    fn a_torn_record_followed_by_zeros_is_a_torn_tail() {
        let mut intact = checkpoint_file(&DurableState::default()).unwrap();
        ops_record(&mut intact, &[StorageOp::Round(5)]);
        let end = intact.len();
        let mut with_torn = intact.clone();
        ops_record(&mut with_torn, &[StorageOp::Round(9), StorageOp::Promise(Ballot::new(9, 1))]);
        for cut in end + 1..with_torn.len() {
            let mut bytes = with_torn[..cut].to_vec();
            bytes.resize(cut + 4096, 0);
            let recovered = recover(&bytes, Path::new("x")).unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
            assert_eq!(recovered.valid_bytes, end as u64, "cut at {cut}");
            assert_eq!(recovered.state.round, 5, "cut at {cut}");
            assert_eq!(recovered.ops_records, 1, "cut at {cut}");
        }
    }

    /// Damage is corruption when an intact record follows it, zero tail or not.
    #[test]
    fn damage_followed_by_an_intact_record_and_zeros_is_corruption() {
        let mut bytes = checkpoint_file(&DurableState::default()).unwrap();
        let damaged = bytes.len();
        ops_record(&mut bytes, &[StorageOp::Round(5)]);
        ops_record(&mut bytes, &[StorageOp::Round(6)]);
        bytes[damaged + RECORD_HEADER_BYTES + 1] ^= 0x10;
        bytes.resize(bytes.len() + 4096, 0);
        let error = recover(&bytes, Path::new("x")).unwrap_err();
        assert!(matches!(error, FileError::Corrupt { offset, .. } if offset == damaged as u64), "{error}");
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut bytes = checkpoint_file(&DurableState::default()).unwrap();
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..12]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        let error = recover(&bytes, Path::new("x")).unwrap_err();
        assert!(matches!(error, FileError::UnsupportedVersion { found: 7, expected: FORMAT_VERSION, .. }));
    }
}
