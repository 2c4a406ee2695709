//! The store's write-ahead log: what makes a commit durable (engine.rs
//! says why not sled's own flush).
//!
//! A flush appends the records of the commits applied since the last one
//! and `fdatasync`s this file; only then are those commits written to sled,
//! followed by the last one's number ([`APPLIED_KEY`]). sled writes its log
//! when a buffer fills, and is flushed only at a *checkpoint* (when this
//! log has grown past [`CHECKPOINT_BYTES`], and when the store closes),
//! after which the log is cut: it holds no record any more.
//!
//! After a crash, sled's state is a prefix of the writes made to it, so on
//! open every record numbered past sled's is applied again, whole and in
//! order: the store comes back with every commit whose record was durable,
//! which is every commit we acknowledged. A record numbered at or below
//! sled's is skipped (applying it again would undo a later commit's writes
//! to the same keys).
//!
//! The file is reused, not truncated: a cut starts a new *epoch* (a number
//! in the file's header, which every record carries) and the next records
//! overwrite the last epoch's in place. An append that only overwrites
//! blocks the file already has is made durable by an `fdatasync` that
//! writes those blocks and nothing else, where an append that grows the
//! file also commits its new size through the file system's journal: on
//! this machine's ext4 the sync took 0.09–0.14 ms instead of 0.12–0.17 ms
//! (`scripts/fsync-probe`, docs/performance.md). A record
//! of an earlier epoch found past the last one of this epoch ends the log
//! like a torn one. Keyring lines (keys records) are zeroed at the cut that
//! ends their epoch, so an erased patient's key line does not linger in
//! the file (the keyring has the line by then, and erasure rewrites it).
//!
//! File layout (little-endian):
//!
//! ```text
//! file = "crwal\x02\0\0" | epoch: u64 | records
//! record = len: u32 | check: [u8; 8] | body (len bytes)
//! check = CRC-32 of body (u32) | epoch (its low 32 bits)
//! ```
//!
//! A log written before December 2026 has no header: its records start at
//! the first byte, each checked by the body's CRC-32 and `"crc1"` (or, from
//! earlier still, the first 8 bytes of the body's SHA-256). It is read as
//! it is and becomes a reused file at its first cut.
//!
//! Record bodies:
//!
//! ```text
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
//! the process died (or the disk filled), so it was never acknowledged.
//! The open zeroes whatever follows the records before it, before
//! anything is written after them.

use super::store::{Tree, Write};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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

/// The start of a reused log file; the epoch follows it.
const MAGIC: &[u8; 8] = b"crwal\x02\0\0";
/// Magic and epoch: where a reused file's records begin.
const FILE_HEADER: u64 = 16;

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

/// How the file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Reused: a header, then the records of the current epoch.
    Reused { epoch: u64 },
    /// As written before December 2026: records from the first byte,
    /// appended, the file truncated at a cut (which turns it into a reused
    /// one).
    Appended,
}

impl Layout {
    /// Where records begin.
    fn base(self) -> u64 {
        match self {
            Layout::Reused { .. } => FILE_HEADER,
            Layout::Appended => 0,
        }
    }

    /// What a record's check ends in: its epoch, or `None` for the old
    /// checks.
    fn epoch_tag(self) -> Option<[u8; 4]> {
        match self {
            // The low 32 bits: an epoch passes 2^32 only after as many cuts.
            Layout::Reused { epoch } => Some((epoch as u32).to_le_bytes()),
            Layout::Appended => None,
        }
    }
}

/// The log file of one open store.
pub struct Wal {
    path: PathBuf,
    file: File,
    layout: Layout,
    /// Bytes of records since the file was last cut.
    len: u64,
    /// The keyring lines of the keys records read at open.
    keys: Vec<u8>,
    /// Where this epoch's keys records lie (offset, length): zeroed at the
    /// cut.
    key_ranges: Vec<(u64, u64)>,
}

impl Wal {
    /// Opens (or creates) the log in the store folder `dir` and reads every
    /// whole record; a torn or damaged record ends the log. Whatever
    /// follows the records read is made unreadable (a new epoch when there
    /// are none, zeroes after them otherwise), so that nothing written
    /// from here on can be followed on disk by a stale record that still
    /// checks. Returns the log and its records in order.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Record>), WalError> {
        let path = dir.join(WAL_FILE);
        let io_err = |source| WalError::Io {
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            // Kept: the log's records, and its blocks for the next epoch.
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        if !existed {
            super::fsio::sync_parent_dir(&path).map_err(io_err)?;
        }
        let layout = read_layout(&file).map_err(io_err)?;
        let read = read_records(&file, layout).map_err(io_err)?;
        let on_disk = file.metadata().map_err(io_err)?.len();
        let mut wal = Self {
            path: path.clone(),
            file,
            layout,
            len: read.whole,
            keys: read.keys,
            key_ranges: Vec::new(),
        };
        match layout {
            Layout::Appended => {
                if read.whole < on_disk {
                    tracing::warn!(
                        kept = read.whole,
                        cut = on_disk - read.whole,
                        "the write-ahead log ended in a torn record (a crash or a full disk while it was written); it is cut off"
                    );
                    wal.file.set_len(read.whole).map_err(io_err)?;
                    wal.file.sync_data().map_err(io_err)?;
                }
            }
            Layout::Reused { epoch } if read.whole == 0 => {
                // Nothing to keep: a new epoch makes whatever the file
                // still holds unreadable as records.
                wal.write_header(epoch + 1).map_err(io_err)?;
                wal.file.sync_data().map_err(io_err)?;
            }
            Layout::Reused { .. } => {
                // The records read are kept in this epoch; what follows
                // them may hold a stale record of it (a torn write's later
                // blocks can reach the disk before its earlier ones), which
                // must never come to follow the next records: zeroed, over
                // blocks the file has (so even a full disk allows it).
                let end = FILE_HEADER + read.whole;
                wal.zero(end, on_disk.saturating_sub(end))
                    .and_then(|()| wal.file.sync_data())
                    .map_err(io_err)?;
                wal.key_ranges = read.key_ranges;
            }
        }
        Ok((wal, read.records))
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

    /// Writes `bytes` (whole records, as [`encode`] and [`encode_keys`]
    /// make them) after the last record, each check ending in the epoch,
    /// and syncs them. On failure what was written is zeroed again (best
    /// effort), so no fragment is left to be read.
    pub fn append_durably(&mut self, bytes: &mut [u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let at = self.layout.base() + self.len;
        let keys = stamp(bytes, self.layout.epoch_tag());
        match self
            .file
            .write_all_at(bytes, at)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.key_ranges
                    .extend(keys.into_iter().map(|(off, n)| (at + off, n)));
                Ok(())
            }
            Err(e) => {
                // Best effort: the error that matters is the append's.
                let _ = self
                    .zero(at, bytes.len() as u64)
                    .and_then(|()| self.file.sync_data());
                Err(e)
            }
        }
    }

    /// Empties the log, once sled holds everything it recorded: the next
    /// epoch begins, and this one's keyring lines are zeroed first.
    pub fn cut(&mut self) -> io::Result<()> {
        let next = match self.layout {
            Layout::Appended => {
                // Its lines go with the rest of the file.
                self.file.set_len(0)?;
                self.key_ranges.clear();
                1
            }
            Layout::Reused { epoch } => {
                if !self.key_ranges.is_empty() {
                    for (at, n) in std::mem::take(&mut self.key_ranges) {
                        self.zero(at, n)?;
                    }
                    // Durable before the epoch moves on: a crash between
                    // the two never leaves lines behind a valid header.
                    self.file.sync_data()?;
                }
                epoch + 1
            }
        };
        self.write_header(next)?;
        self.file.sync_data()?;
        self.len = 0;
        Ok(())
    }

    fn write_header(&mut self, epoch: u64) -> io::Result<()> {
        let mut header = [0u8; FILE_HEADER as usize];
        let (magic, number) = header.split_at_mut(MAGIC.len());
        magic.copy_from_slice(MAGIC);
        number.copy_from_slice(&epoch.to_le_bytes());
        self.file.write_all_at(&header, 0)?;
        self.layout = Layout::Reused { epoch };
        Ok(())
    }

    fn zero(&self, at: u64, n: u64) -> io::Result<()> {
        const CHUNK: u64 = 64 * 1024;
        let zeros = vec![0u8; n.min(CHUNK) as usize];
        let mut done = 0;
        while done < n {
            let step = (n - done).min(CHUNK);
            self.file
                .write_all_at(zeros.get(..step as usize).unwrap_or_default(), at + done)?;
            done += step;
        }
        Ok(())
    }
}

/// Writes each whole record's epoch into its check (when the layout has
/// one), and returns where the keys records lie (offset in `bytes`,
/// length).
fn stamp(bytes: &mut [u8], epoch_tag: Option<[u8; 4]>) -> Vec<(u64, u64)> {
    let mut keys = Vec::new();
    let mut at = 0usize;
    while let Some(len_bytes) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
        let end = at + HEADER + len;
        if end > bytes.len() {
            // A record cut short (only tests write one): left as it is,
            // it ends the log.
            break;
        }
        if let (Some(tag), Some(slot)) = (epoch_tag, bytes.get_mut(at + 8..at + HEADER)) {
            slot.copy_from_slice(&tag);
        }
        if bytes.get(at + HEADER..at + HEADER + 8) == Some(&KEYS_RECORD.to_le_bytes()[..]) {
            keys.push((at as u64, (HEADER + len) as u64));
        }
        at = end;
    }
    keys
}

/// The layout the file is in: a reused file starts with [`MAGIC`]; an empty
/// one becomes reused (epoch 0, moved on by the open).
fn read_layout(file: &File) -> io::Result<Layout> {
    if file.metadata()?.len() == 0 {
        return Ok(Layout::Reused { epoch: 0 });
    }
    let mut header = [0u8; FILE_HEADER as usize];
    if file.read_exact_at(&mut header, 0).is_ok() && header.starts_with(MAGIC) {
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(header.get(MAGIC.len()..).unwrap_or_default());
        return Ok(Layout::Reused {
            epoch: u64::from_le_bytes(epoch),
        });
    }
    Ok(Layout::Appended)
}

/// What [`read_records`] found.
struct Found {
    records: Vec<Record>,
    keys: Vec<u8>,
    /// The bytes the whole records span (where a torn or damaged one, or
    /// an earlier epoch's, begins).
    whole: u64,
    /// Where the keys records lie in the file (offset, length).
    key_ranges: Vec<(u64, u64)>,
}

/// Reads whole records of the current epoch from where the layout puts
/// the first.
fn read_records(file: &File, layout: Layout) -> io::Result<Found> {
    let base = layout.base();
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(base))?;
    let mut read = Found {
        records: Vec::new(),
        keys: Vec::new(),
        whole: 0,
        key_ranges: Vec::new(),
    };
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
        let end = read.whole + HEADER as u64 + u64::from(len);
        if len > MAX_RECORD || base + end > file_len {
            break;
        }
        let mut body = vec![0u8; len as usize];
        if !read_full(&mut reader, &mut body)? {
            break;
        }
        let checked = match layout.epoch_tag() {
            Some(tag) => header[4..8] == crc32fast::hash(&body).to_le_bytes() && header[8..] == tag,
            None => check_matches(&body, &header[4..]),
        };
        if !checked {
            break;
        }
        match decode(&body) {
            Some(Decoded::Commit(record)) => read.records.push(record),
            Some(Decoded::Keys(lines)) => {
                read.keys.extend_from_slice(&lines);
                read.key_ranges.push((base + read.whole, end - read.whole));
            }
            None => break,
        }
        read.whole = end;
    }
    Ok(read)
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
pub(super) mod tests {
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

    /// The records of the current epoch a log file holds, read without
    /// opening it (an open starts a new epoch).
    pub(in crate::vault) fn records_on_disk(dir: &Path) -> (Vec<u64>, u64) {
        let file = File::open(dir.join(WAL_FILE)).unwrap();
        let found = read_records(&file, read_layout(&file).unwrap()).unwrap();
        (
            found.records.iter().map(|r| r.number).collect(),
            found.whole,
        )
    }

    #[test]
    fn records_read_back_and_a_torn_tail_ends_the_log() {
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
        wal.append_durably(&mut bytes).unwrap();
        let whole = wal.len();
        // A third record cut short, as a crash in mid-write leaves it.
        let mut third = Vec::new();
        encode_writes(3, &[put(b"d", b"4")], &mut third);
        let torn = third.len() - 3;
        wal.append_durably(&mut third[..torn]).unwrap();
        drop(wal);

        let (wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.len(), whole);
        // Nothing of the torn record is left after the whole ones.
        let file = std::fs::read(wal.path()).unwrap();
        assert!(file[(FILE_HEADER + whole) as usize..]
            .iter()
            .all(|b| *b == 0));
        let numbers: Vec<u64> = records.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [1, 2]);
        assert!(matches!(
            &records[1].writes[1],
            Write::Remove { tree: Tree::Patients, key } if key == b"c"
        ));
    }

    #[test]
    fn keys_records_read_back_apart_from_the_commits_and_a_torn_one_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let mut bytes = Vec::new();
        encode_keys(b"line one\n", &mut bytes);
        encode_writes(1, &[put(b"a", b"1")], &mut bytes);
        encode_keys(b"line two\n", &mut bytes);
        encode_writes(2, &[put(b"b", b"2")], &mut bytes);
        wal.append_durably(&mut bytes).unwrap();
        let whole = wal.len();
        // A keys record cut short: its keys were never used (the commits
        // sealed under them follow it), so it ends the log like a commit.
        let mut torn = Vec::new();
        encode_keys(b"line three\n", &mut torn);
        let cut = torn.len() - 2;
        wal.append_durably(&mut torn[..cut]).unwrap();
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
        wal.append_durably(&mut bytes).unwrap();
        drop(wal);
        let (wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(wal.len(), first as u64);
    }

    /// A cut keeps the file (its blocks are overwritten by the next
    /// epoch, which an fdatasync writes without a journal commit) and no
    /// record of the epoch it ends reads back; a shorter next epoch is not
    /// followed by the longer last one's records.
    #[test]
    fn a_cut_reuses_the_file_and_an_earlier_epochs_records_never_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let mut bytes = Vec::new();
        for n in 1..=3 {
            encode_writes(n, &[put(b"k", &[n as u8; 100])], &mut bytes);
        }
        wal.append_durably(&mut bytes).unwrap();
        let size = std::fs::metadata(wal.path()).unwrap().len();
        wal.cut().unwrap();
        assert_eq!(wal.len(), 0);
        assert_eq!(std::fs::metadata(wal.path()).unwrap().len(), size);
        assert_eq!(records_on_disk(dir.path()), (vec![], 0));
        // The next epoch writes one record of the same size over the first:
        // the second and third are still on disk, of the earlier epoch.
        let mut next = Vec::new();
        encode_writes(4, &[put(b"k", &[4; 100])], &mut next);
        wal.append_durably(&mut next).unwrap();
        assert_eq!(std::fs::metadata(wal.path()).unwrap().len(), size);
        drop(wal);
        assert_eq!(records_on_disk(dir.path()).0, [4]);
        let (wal, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.number).collect::<Vec<_>>(), [4]);
        drop(wal);
        // Kept by that open (and what followed it zeroed): it reads back.
        let (_, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.number).collect::<Vec<_>>(), [4]);
    }

    /// Keyring lines do not outlive their epoch in the file: the cut zeroes
    /// them (an erased patient's key line must not linger, see
    /// `vault_erasure`).
    #[test]
    fn a_cut_zeroes_the_keyring_lines_of_the_epoch_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let holds = |needle: &[u8]| {
            let bytes = std::fs::read(dir.path().join(WAL_FILE)).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        };
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let mut bytes = Vec::new();
        encode_keys(b"ZZKEYLINE-ONE\n", &mut bytes);
        encode_writes(1, &[put(b"a", b"ZZVALUE-ONE")], &mut bytes);
        wal.append_durably(&mut bytes).unwrap();
        drop(wal);
        // Read back after a crash (the open keeps it in its epoch), then
        // cut.
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.take_keys(), b"ZZKEYLINE-ONE\n");
        let mut more = Vec::new();
        encode_keys(b"ZZKEYLINE-TWO\n", &mut more);
        encode_writes(2, &[put(b"b", b"2")], &mut more);
        wal.append_durably(&mut more).unwrap();
        assert!(holds(b"ZZKEYLINE-ONE") && holds(b"ZZKEYLINE-TWO"));
        wal.cut().unwrap();
        assert!(!holds(b"ZZKEYLINE-ONE"), "carried line left behind");
        assert!(!holds(b"ZZKEYLINE-TWO"), "appended line left behind");
    }

    /// A log written before December 2026 (no header, records from the
    /// first byte) reads back, and becomes a reused file at its first cut.
    #[test]
    fn a_log_from_before_reads_back_and_is_reused_after_its_first_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode_writes(1, &[put(b"a", b"1")], &mut bytes);
        let old = bytes.len();
        // The first record's check as the earliest format wrote it.
        let sha = ring::digest::digest(&ring::digest::SHA256, &bytes[HEADER..]);
        bytes[4..HEADER].copy_from_slice(&sha.as_ref()[..8]);
        assert_ne!(&bytes[8..HEADER], CRC_TAG);
        encode_writes(2, &[put(b"b", b"2")], &mut bytes);
        assert_eq!(&bytes[old + 8..old + HEADER], CRC_TAG);
        let whole = bytes.len();
        // One flipped bit in a CRC-checked body ends the log there, and
        // the open cuts it off.
        encode_writes(3, &[put(b"c", b"3")], &mut bytes);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(dir.path().join(WAL_FILE), &bytes).unwrap();

        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        let numbers: Vec<u64> = records.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(wal.layout, Layout::Appended);
        assert_eq!(std::fs::metadata(wal.path()).unwrap().len(), whole as u64);
        // Appended to as before until the cut.
        let mut next = Vec::new();
        encode_writes(3, &[put(b"c", b"3")], &mut next);
        wal.append_durably(&mut next).unwrap();
        assert_eq!(records_on_disk(dir.path()).0, [1, 2, 3]);
        wal.cut().unwrap();
        assert!(matches!(wal.layout, Layout::Reused { .. }));
        let mut after = Vec::new();
        encode_writes(4, &[put(b"d", b"4")], &mut after);
        wal.append_durably(&mut after).unwrap();
        drop(wal);
        let (_, records) = Wal::open(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.number).collect::<Vec<_>>(), [4]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Records of these value sizes, in one write and sync.
        Append(Vec<usize>),
        /// A record of this size written cut short, to `keep` of its bytes
        /// (a crash in mid-write).
        Torn(usize, usize),
        Cut,
        Reopen,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => proptest::collection::vec(0usize..600, 1..5).prop_map(Step::Append),
            1 => (0usize..600, 1usize..100).prop_map(|(n, k)| Step::Torn(n, k)),
            1 => Just(Step::Cut),
            2 => Just(Step::Reopen),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever mix of appends, torn appends, cuts and reopens (epochs
        /// of every length over one another, torn tails in between), an open
        /// reads back exactly the records appended since the last cut, in
        /// order: never one of an earlier epoch, never a torn one, none
        /// lost.
        #[test]
        fn an_open_reads_back_exactly_the_records_since_the_last_cut(
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            let mut expected: Vec<u64> = Vec::new();
            let mut number = 0u64;
            for step in steps {
                match step {
                    Step::Append(sizes) => {
                        let mut bytes = Vec::new();
                        for n in sizes {
                            number += 1;
                            encode_writes(number, &[put(b"k", &vec![number as u8; n])], &mut bytes);
                            expected.push(number);
                        }
                        wal.append_durably(&mut bytes).unwrap();
                    }
                    Step::Torn(n, keep) => {
                        let mut bytes = Vec::new();
                        encode_writes(number + 1, &[put(b"k", &vec![0xee; n])], &mut bytes);
                        let keep = keep.min(bytes.len() - 1);
                        wal.append_durably(&mut bytes[..keep]).unwrap();
                        // The process dies with the fragment on disk.
                        drop(wal);
                        let (reopened, records) = Wal::open(dir.path()).unwrap();
                        let read: Vec<u64> = records.iter().map(|r| r.number).collect();
                        proptest::prop_assert_eq!(&read, &expected);
                        wal = reopened;
                    }
                    Step::Cut => {
                        wal.cut().unwrap();
                        expected.clear();
                    }
                    Step::Reopen => {
                        drop(wal);
                        let (reopened, records) = Wal::open(dir.path()).unwrap();
                        let read: Vec<u64> = records.iter().map(|r| r.number).collect();
                        proptest::prop_assert_eq!(&read, &expected);
                        wal = reopened;
                    }
                }
            }
            drop(wal);
            let (_, records) = Wal::open(dir.path()).unwrap();
            let read: Vec<u64> = records.iter().map(|r| r.number).collect();
            proptest::prop_assert_eq!(read, expected);
        }
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
