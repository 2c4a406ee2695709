//! The store's write-ahead log: what makes a commit durable (engine.rs
//! says why not sled's own flush).
//!
//! A flush appends the records of the commits applied since the last one
//! and `fdatasync`s this file; only then are those commits written to sled,
//! followed by the last one's number ([`APPLIED_KEY`]). sled writes its log
//! when a buffer fills, and is flushed only at a *checkpoint* (when this
//! log has grown past [`CHECKPOINT_BYTES`], and when the store closes),
//! after which the log is cut back to nothing.
//!
//! After a crash, sled's state is a prefix of the writes made to it, so on
//! open every record numbered past sled's is applied again, whole and in
//! order: the store comes back with every commit whose record was durable,
//! which is every commit we acknowledged. A record numbered at or below
//! sled's is skipped (applying it again would undo a later commit's writes
//! to the same keys).
//!
//! Record layout (little-endian):
//!
//! ```text
//! len: u32 | check: [u8; 8] | body (len bytes)
//! check = CRC-32 of body (u32) | "crc1"   (a log written before December 2026:
//!         the first 8 bytes of the body's SHA-256, still read)
//! body = number: u64 | count: u32 | count × write
//! write = kind: u8 (0 put, 1 remove) | name_len: u8 | tree name | key_len: u32 | key
//!         | (put only) value_len: u32 | value
//! keys body = 0: u64 | len: u32 | keyring lines (len bytes)
//! ```
//!
//! Commits are numbered from 1; a body numbered 0 carries the keyring lines
//! of data keys created since the last checkpoint (keyring.rs, "staged"):
//! they become durable with the first flush after their creation, in the
//! same `fdatasync` as the records sealed under them, instead of with an
//! append and an `fsync` of the keyring of their own. The vault appends
//! them to the keyring before a checkpoint cuts the log, and takes back at
//! open those the keyring lacks.
//!
//! A record cut short or damaged ends the log: it was being written when
//! the process died (or the disk filled), so it was never acknowledged; it
//! is cut off at open, before anything is appended after it.

use super::store::{Tree, Write};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The log's file name inside the store's folder (sled ignores it).
pub const WAL_FILE: &str = "wal";

/// Where sled keeps the number of the last commit it applied, in its
/// default tree (not one of the vault's trees: the store layer's own).
pub const APPLIED_KEY: &[u8] = b"clinic-relay/wal-applied";

/// A log this big is checkpointed (sled flushed, log cut). A checkpoint
/// flushes about as much of sled's log, a few tens of milliseconds on a
/// small box; at ~3 KB a message that is once every ~2,500 messages.
pub const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// A record claiming more than this is damage, not a commit.
const MAX_RECORD: u32 = 1 << 30;
const HEADER: usize = 4 + 8;

/// The number a keys record carries instead of a commit's.
const KEYS_RECORD: u64 = 0;

/// A commit as read back from the log.
pub struct Record {
    pub number: u64,
    pub writes: Vec<Write>,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("write-ahead log {path}: record {found} follows commit {applied} of the store; records in between are missing (was store/ replaced by an older copy without its log?)")]
    Gap {
        path: PathBuf,
        applied: u64,
        found: u64,
    },
}

/// Appends commit `number` as a record to `out`: each write is a tree, a
/// key and a value (`None`: removed).
pub fn encode<'a>(
    number: u64,
    writes: impl ExactSizeIterator<Item = (Tree, &'a [u8], Option<&'a [u8]>)>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(writes.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (tree, key, value) in writes {
        out.push(if value.is_some() { 0 } else { 1 });
        let name = tree.name().as_bytes();
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name);
        put_bytes(out, key);
        if let Some(value) = value {
            put_bytes(out, value);
        }
    }
    seal_header(out, start);
}

/// Appends a keys record holding `lines` (keyring lines) to `out`.
pub fn encode_keys(lines: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&KEYS_RECORD.to_le_bytes());
    put_bytes(out, lines);
    seal_header(out, start);
}

/// Fills in the header of the record that starts at `start` in `out`.
fn seal_header(out: &mut [u8], start: usize) {
    let body_len = out.len() - start - HEADER;
    let mut header = [0u8; HEADER];
    let (len_field, check_field) = header.split_at_mut(4);
    len_field.copy_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    check_field.copy_from_slice(&check(out.get(start + HEADER..).unwrap_or_default()));
    if let Some(slot) = out.get_mut(start..start + HEADER) {
        slot.copy_from_slice(&header);
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Marks a check that is a CRC-32.
const CRC_TAG: &[u8; 4] = b"crc1";

/// A record's check: the body's CRC-32 and [`CRC_TAG`]. It only has to tell
/// a record from one torn by a crash or a full disk, which a CRC does (as
/// in most databases' logs); the SHA-256 used before cost about 70,000
/// instructions a message, 7 % of an ingest (docs/performance.md). The
/// records' values are sealed (AES-GCM) on their own.
fn check(body: &[u8]) -> [u8; 8] {
    let mut check = [0; 8];
    let (crc, tag) = check.split_at_mut(4);
    crc.copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    tag.copy_from_slice(CRC_TAG);
    check
}

/// Whether `found` is the check of `body`: a CRC-32 as [`check`] writes
/// it, or the SHA-256 prefix a log written by an earlier version holds
/// (such a log is left only by a crash just before an upgrade).
fn check_matches(body: &[u8], found: &[u8]) -> bool {
    if found == check(body) {
        return true;
    }
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    d.as_ref().get(..8) == Some(found)
}

/// The log file of one open store.
pub struct Wal {
    path: PathBuf,
    file: File,
    /// Bytes in the file since it was last cut.
    len: u64,
    /// The keyring lines of the keys records read at open.
    keys: Vec<u8>,
}

impl Wal {
    /// Opens (or creates) the log in the store folder `dir`, reads every
    /// whole record, and cuts off a torn or damaged tail. Returns the log
    /// and its records in order.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Record>), WalError> {
        let path = dir.join(WAL_FILE);
        let io_err = |source| WalError::Io {
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        if !existed {
            super::fsio::sync_parent_dir(&path).map_err(io_err)?;
        }
        let (records, keys, whole) = read_records(&file).map_err(io_err)?;
        let on_disk = file.metadata().map_err(io_err)?.len();
        if whole < on_disk {
            tracing::warn!(
                kept = whole,
                cut = on_disk - whole,
                "the write-ahead log ended in a torn record (a crash or a full disk while it was written); it is cut off"
            );
            file.set_len(whole).map_err(io_err)?;
            file.sync_data().map_err(io_err)?;
        }
        Ok((
            Self {
                path,
                file,
                len: whole,
                keys,
            },
            records,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keyring lines its keys records held at open (in log order).
    pub fn take_keys(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.keys)
    }

    /// Bytes written since the log was last cut.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `bytes` (whole records) and syncs them. On failure the file
    /// is cut back to where it was, so no fragment is left to glue onto.
    pub fn append_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        match (&self.file)
            .write_all(bytes)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: the error that matters is the append's.
                let _ = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data());
                Err(e)
            }
        }
    }

    /// Empties the log, once sled holds everything it recorded.
    pub fn cut(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
        Ok(())
    }
}

/// Reads whole records from the start of `file`; returns them and the
/// length they span (where a torn or damaged tail begins).
fn read_records(file: &File) -> io::Result<(Vec<Record>, Vec<u8>, u64)> {
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut keys = Vec::new();
    let mut whole: u64 = 0;
    loop {
        let mut header = [0u8; HEADER];
        if !read_full(&mut reader, &mut header)? {
            break;
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&header[..4]);
        let len = u32::from_le_bytes(len_bytes);
        // A length past the end of the file is a torn record (and never
        // worth allocating for).
        let end = whole + HEADER as u64 + u64::from(len);
        if len > MAX_RECORD || end > file_len {
            break;
        }
        let mut body = vec![0u8; len as usize];
        if !read_full(&mut reader, &mut body)? || !check_matches(&body, &header[4..]) {
            break;
        }
        match decode(&body) {
            Some(Decoded::Commit(record)) => records.push(record),
            Some(Decoded::Keys(lines)) => keys.extend_from_slice(&lines),
            None => break,
        }
        whole = end;
    }
    Ok((records, keys, whole))
}

/// Fills `buf`; `false` when the file ends first.
pub(super) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A cursor over a record's body; `None` on anything malformed.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
}

enum Decoded {
    Commit(Record),
    Keys(Vec<u8>),
}

fn decode(body: &[u8]) -> Option<Decoded> {
    let mut b = Body(body);
    let number = b.u64()?;
    if number == KEYS_RECORD {
        let lines = b.bytes()?;
        return b.0.is_empty().then_some(Decoded::Keys(lines));
    }
    let count = b.u32()?;
    let mut writes = Vec::new();
    for _ in 0..count {
        let kind = b.u8()?;
        let name_len = b.u8()? as usize;
        let tree = Tree::from_name(std::str::from_utf8(b.take(name_len)?).ok()?)?;
        let key = b.bytes()?;
        writes.push(match kind {
            0 => Write::Put {
                tree,
                key,
                value: b.bytes()?,
            },
            1 => Write::Remove { tree, key },
            _ => return None,
        });
    }
    b.0.is_empty()
        .then_some(Decoded::Commit(Record { number, writes }))
}

/// The records sled does not have yet (numbered past `applied`), checked
/// to follow on from it without a gap.
pub fn to_replay(path: &Path, applied: u64, records: Vec<Record>) -> Result<Vec<Record>, WalError> {
    let newer: Vec<Record> = records.into_iter().filter(|r| r.number > applied).collect();
    for (expected, r) in (applied + 1..).zip(&newer) {
        if r.number != expected {
            return Err(WalError::Gap {
                path: path.to_owned(),
                applied,
                found: r.number,
            });
        }
    }
    Ok(newer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn encode_writes(number: u64, writes: &[Write], out: &mut Vec<u8>) {
        encode(
            number,
            writes.iter().map(|w| match w {
                Write::Put { tree, key, value } => (*tree, key.as_slice(), Some(value.as_slice())),
                Write::Remove { tree, key } => (*tree, key.as_slice(), None),
            }),
            out,
        );
    }

    fn put(key: &[u8], value: &[u8]) -> Write {
        Write::Put {
            tree: Tree::Meta,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn records_read_back_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        assert!(records.is_empty());
        let mut bytes = Vec::new();
        encode_writes(1, &[put(b"a", b"1")], &mut bytes);
        encode_writes(
            2,
            &[
                put(b"b", b"2"),
                Write::Remove {
                    tree: Tree::Patients,
                    key: b"c".to_vec(),
                },
            ],
            &mut bytes,
        );
        wal.append_durably(&bytes).unwrap();
        let whole = wal.len();
        // A third record cut short, as a crash in mid-write leaves it.
        let mut third = Vec::new();
        encode_writes(3, &[put(b"d", b"4")], &mut third);
        wal.append_durably(&third[..third.len() - 3]).unwrap();
        drop(wal);

        let (wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.len(), whole);
        assert_eq!(std::fs::metadata(wal.path()).unwrap().len(), whole);
        let numbers: Vec<u64> = records.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [1, 2]);
        assert!(matches!(
            &records[1].writes[1],
            Write::Remove { tree: Tree::Patients, key } if key == b"c"
        ));
    }

    #[test]
    fn keys_records_read_back_apart_from_the_commits_and_a_torn_one_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let mut bytes = Vec::new();
        encode_keys(b"line one\n", &mut bytes);
        encode_writes(1, &[put(b"a", b"1")], &mut bytes);
        encode_keys(b"line two\n", &mut bytes);
        encode_writes(2, &[put(b"b", b"2")], &mut bytes);
        wal.append_durably(&bytes).unwrap();
        let whole = wal.len();
        // A keys record cut short: its keys were never used (the commits
        // sealed under them follow it), so it is cut off like a commit.
        let mut torn = Vec::new();
        encode_keys(b"line three\n", &mut torn);
        wal.append_durably(&torn[..torn.len() - 2]).unwrap();
        drop(wal);

        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.len(), whole);
        let numbers: Vec<u64> = records.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(wal.take_keys(), b"line one\nline two\n");
        assert!(wal.take_keys().is_empty(), "handed out once");
    }

    #[test]
    fn a_damaged_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let mut bytes = Vec::new();
        encode_writes(1, &[put(b"a", b"1")], &mut bytes);
        let first = bytes.len();
        encode_writes(2, &[put(b"b", b"2")], &mut bytes);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        wal.append_durably(&bytes).unwrap();
        drop(wal);
        let (wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(wal.len(), first as u64);
    }

    #[test]
    fn a_log_checked_with_sha256_by_an_earlier_version_still_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let mut bytes = Vec::new();
        encode_writes(1, &[put(b"a", b"1")], &mut bytes);
        let old = bytes.len();
        // Rewrite the first record's check as the earlier format did.
        let sha = ring::digest::digest(&ring::digest::SHA256, &bytes[HEADER..]);
        bytes[4..HEADER].copy_from_slice(&sha.as_ref()[..8]);
        assert_ne!(&bytes[8..HEADER], CRC_TAG);
        encode_writes(2, &[put(b"b", b"2")], &mut bytes);
        assert_eq!(&bytes[old + 8..old + HEADER], CRC_TAG);
        // One flipped bit in a CRC-checked body ends the log there.
        encode_writes(3, &[put(b"c", b"3")], &mut bytes);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        wal.append_durably(&bytes).unwrap();
        drop(wal);
        let (_, records) = Wal::open(dir.path()).unwrap();
        let numbers: Vec<u64> = records.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [1, 2]);
    }

    #[test]
    fn replay_skips_what_sled_has_and_refuses_a_gap() {
        let path = Path::new("wal");
        let record = |number| Record {
            number,
            writes: Vec::new(),
        };
        let kept = to_replay(path, 6, (5..=8).map(record).collect()).unwrap();
        assert_eq!(kept.iter().map(|r| r.number).collect::<Vec<_>>(), [7, 8]);
        assert!(to_replay(path, 8, (5..=8).map(record).collect())
            .unwrap()
            .is_empty());
        assert!(matches!(
            to_replay(path, 6, (9..=10).map(record).collect()),
            Err(WalError::Gap { found: 9, .. })
        ));
    }
}
