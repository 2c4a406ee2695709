//! The audit entries' own file (`store/audit.log`): append-only, beside sled.
//!
//! Why not in sled: an audit entry is written once, never changed, and read
//! only in order (verify, export, backup). In sled each one was a record in
//! a B-tree, so the chain (half the records of a 100,000-patient store, and
//! more every day) counted in the page table and segment accounting sled
//! builds in memory at open, and every message paid two tree inserts for
//! it. Here an entry costs a few bytes of a buffered `write` and nothing in
//! memory but a sparse index.
//!
//! A record: `u32` LE body length, `u32` LE CRC-32 of the body, then the
//! body: the entry's seq (`u64` BE, its key in the audit tree) and its
//! sealed value. The engine appends entries only from write-ahead log
//! records that are already durable, and syncs this file at each
//! checkpoint before the log is emptied; so whatever a power cut takes from
//! the unsynced tail here is still in the log, and the open appends it
//! again. The open reads the file through once and cuts off a torn or
//! damaged tail (kept aside in `audit.log.cut` for inspection: the chain's
//! MAC'd head and the anchor then tell whether entries are missing).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) const FILE: &str = "audit.log";
const HEADER: usize = 8;
/// The sparse index holds the offset of every this-many-th record.
const INDEX_EVERY: u64 = 256;
/// No sealed audit entry comes near this: a longer length is damage.
const MAX_BODY: usize = 16 << 20;
/// How much a scan reads at a time.
const READ_AHEAD: usize = 64 << 10;

pub(super) struct AuditLog {
    file: Arc<File>,
    path: PathBuf,
    /// The length of the valid records; appends go here.
    len: u64,
    count: u64,
    last_seq: u64,
    /// (seq, offset) of the first record and every [`INDEX_EVERY`]-th after.
    sparse: Vec<(u64, u64)>,
}

/// The seq of an audit tree key, if the key is an entry's: 8 bytes, the
/// first zero (no chain reaches 2^56 entries). The tree's other keys, the
/// head checkpoint (`head`) and the anchor mark (`anchored`, 8 bytes too),
/// start with a letter and stay in sled.
pub(super) fn entry_seq(key: &[u8]) -> Option<u64> {
    match <[u8; 8]>::try_from(key) {
        Ok(bytes) if bytes[0] == 0 => Some(u64::from_be_bytes(bytes)),
        _ => None,
    }
}

/// The first entry seq whose 8-byte key sorts at or after `start`.
pub(super) fn first_seq_from(start: &[u8]) -> Option<u64> {
    let mut padded = [0u8; 8];
    for (p, b) in padded.iter_mut().zip(start) {
        *p = *b;
    }
    let seq = u64::from_be_bytes(padded);
    if start.len() > 8 {
        // The 8-byte key equal to the prefix sorts before `start`.
        seq.checked_add(1)
    } else {
        Some(seq)
    }
}

impl AuditLog {
    /// Opens (or creates) the file and reads it through, cutting off a torn
    /// or damaged tail.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        if !existed {
            super::fsio::sync_parent_dir(&path)?;
        }
        let file_len = file.metadata()?.len();
        let mut log = Self {
            file: Arc::new(file),
            path,
            len: 0,
            count: 0,
            last_seq: 0,
            sparse: Vec::new(),
        };
        let file = Arc::clone(&log.file);
        let mut reader = BufReader::with_capacity(READ_AHEAD, &*file);
        let mut at = 0u64;
        let mut header = [0u8; HEADER];
        let mut body = Vec::new();
        while super::wal::read_full(&mut reader, &mut header)? {
            let (len, crc) = split_header(&header);
            if !(8..=MAX_BODY).contains(&len) {
                break;
            }
            body.resize(len, 0);
            if !super::wal::read_full(&mut reader, &mut body)? || crc32fast::hash(&body) != crc {
                break;
            }
            let Some(seq) = body.get(..8).and_then(entry_seq) else {
                break;
            };
            if log.count > 0 && seq <= log.last_seq {
                break;
            }
            log.note(seq, at);
            at += (HEADER + len) as u64;
        }
        drop(reader);
        log.len = at;
        if at < file_len {
            log.cut_tail(file_len)?;
        }
        Ok(log)
    }

    /// Keeps the bytes past the valid records aside (best effort: on a full
    /// disk the cut goes ahead without the copy), then cuts them off:
    /// appending after them would bury them in the middle of the file.
    fn cut_tail(&mut self, file_len: u64) -> io::Result<()> {
        let aside = self.path.with_extension("log.cut");
        let kept = (|| -> io::Result<()> {
            let mut src = File::open(&self.path)?;
            src.seek(SeekFrom::Start(self.len))?;
            let mut out = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&aside)?;
            io::copy(&mut src, &mut out)?;
            out.sync_data()
        })();
        if let Err(e) = &kept {
            tracing::error!(error = %e, "the audit log's cut-off tail could not be kept aside");
        }
        self.file.set_len(self.len)?;
        self.file.sync_data()?;
        tracing::warn!(
            valid_bytes = self.len,
            cut_bytes = file_len - self.len,
            kept_in = %aside.display(),
            "the audit log's tail was torn or damaged and is cut off (a crash in the middle of a write leaves this; the write-ahead log supplies what was durable)"
        );
        Ok(())
    }

    fn note(&mut self, seq: u64, offset: u64) {
        if self.count % INDEX_EVERY == 0 {
            self.sparse.push((seq, offset));
        }
        self.count += 1;
        self.last_seq = seq;
    }

    #[cfg(test)]
    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends entries in seq order in one write, skipping those the file
    /// holds already (a replay after a crash brings them again).
    pub(super) fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut notes = Vec::new();
        let mut last = self.last_seq;
        for (seq, value) in entries {
            if seq <= last {
                continue;
            }
            let len = 8 + value.len();
            if len > MAX_BODY {
                return Err(io::Error::other("an audit entry is too large to store"));
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&seq.to_be_bytes());
            crc.update(value);
            notes.push((seq, self.len + buf.len() as u64));
            buf.extend_from_slice(&(len as u32).to_le_bytes());
            buf.extend_from_slice(&crc.finalize().to_le_bytes());
            buf.extend_from_slice(&seq.to_be_bytes());
            buf.extend_from_slice(value);
            last = seq;
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&buf, self.len)?;
        // Noted only once written: after a failed write the next append
        // goes over whatever part of it landed.
        for (seq, offset) in notes {
            self.note(seq, offset);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Makes every append so far durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The entries from `seq` on, as they are now (later appends are not
    /// seen); the scan holds no lock.
    pub(super) fn entries_from(&self, seq: u64) -> Entries {
        let i = self.sparse.partition_point(|&(s, _)| s <= seq);
        let at = i
            .checked_sub(1)
            .and_then(|i| self.sparse.get(i))
            .map_or(0, |&(_, offset)| offset);
        Entries {
            file: Arc::clone(&self.file),
            at,
            end: self.len,
            from_seq: seq,
            buf: Vec::new(),
            pos: 0,
            failed: false,
        }
    }

    /// The sealed value of entry `seq`.
    pub(super) fn get(&self, seq: u64) -> io::Result<Option<Vec<u8>>> {
        if self.count == 0 || seq > self.last_seq {
            return Ok(None);
        }
        match self.entries_from(seq).next() {
            Some(Ok((s, value))) if s == seq => Ok(Some(value)),
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }
}

fn split_header(header: &[u8; HEADER]) -> (usize, u32) {
    let [a, b, c, d, e, f, g, h] = *header;
    (
        u32::from_le_bytes([a, b, c, d]) as usize,
        u32::from_le_bytes([e, f, g, h]),
    )
}

/// An ordered scan of (seq, sealed value) from a seq on. Reads ahead in
/// blocks; a record that does not check out ends it with an error (the file
/// was checked at open, so that is damage since).
pub(super) struct Entries {
    file: Arc<File>,
    /// The file offset of `buf[pos]`.
    at: u64,
    end: u64,
    from_seq: u64,
    buf: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl Entries {
    /// `n` bytes at the current offset, reading ahead as needed.
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.buf.len() - self.pos < n {
            let want = (n.max(READ_AHEAD) as u64).min(self.end - self.at) as usize;
            if want < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the audit log ends inside a record",
                ));
            }
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, self.at)?;
            self.pos = 0;
        }
        let out = self.buf.get(self.pos..self.pos + n).unwrap_or_default();
        self.pos += n;
        self.at += n as u64;
        Ok(out)
    }

    fn read_one(&mut self) -> io::Result<(u64, Vec<u8>)> {
        let header: [u8; HEADER] = self.take(HEADER)?.try_into().unwrap_or([0; HEADER]);
        let (len, crc) = split_header(&header);
        if !(8..=MAX_BODY).contains(&len) {
            return Err(io::Error::other("a damaged audit log record"));
        }
        let body = self.take(len)?;
        if crc32fast::hash(body) != crc {
            return Err(io::Error::other("a damaged audit log record"));
        }
        let seq = body.get(..8).and_then(entry_seq).unwrap_or(0);
        Ok((seq, body.get(8..).unwrap_or_default().to_vec()))
    }
}

impl Iterator for Entries {
    type Item = io::Result<(u64, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.at < self.end {
            match self.read_one() {
                Ok((seq, _)) if seq < self.from_seq => continue,
                Ok(entry) => return Some(Ok(entry)),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn values(log: &AuditLog, from: u64) -> Vec<(u64, Vec<u8>)> {
        log.entries_from(from).map(|r| r.unwrap()).collect()
    }

    fn entry(seq: u64) -> Vec<u8> {
        format!("sealed entry {seq}")
            .repeat(1 + (seq % 5) as usize)
            .into_bytes()
    }

    fn fill(log: &mut AuditLog, seqs: std::ops::RangeInclusive<u64>) {
        let all: Vec<(u64, Vec<u8>)> = seqs.map(|s| (s, entry(s))).collect();
        log.append(all.iter().map(|(s, v)| (*s, v.as_slice())))
            .unwrap();
    }

    #[test]
    fn entries_read_back_from_any_seq_across_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path()).unwrap();
        assert_eq!(log.get(1).unwrap(), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fill(&mut log, 1..=700);
        fill(&mut log, 650..=1000); // a replay: 650..=700 are skipped
        log.sync().unwrap();
        drop(log);
        let log = AuditLog::open(tmp.path()).unwrap();
        assert_eq!(log.last_seq(), 1000);
        for from in [0, 1, 255, 256, 257, 513, 999, 1000] {
            let got = values(&log, from);
            let want: Vec<(u64, Vec<u8>)> = (from.max(1)..=1000).map(|s| (s, entry(s))).collect();
            assert_eq!(got, want, "from {from}");
        }
        assert!(values(&log, 1001).is_empty());
        assert_eq!(log.get(300).unwrap(), Some(entry(300)));
        assert_eq!(log.get(1001).unwrap(), None);
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_off_and_kept_aside_and_appends_go_on_after() {
        for damage in ["torn", "flipped", "zeros"] {
            let tmp = tempfile::tempdir().unwrap();
            let mut log = AuditLog::open(tmp.path()).unwrap();
            fill(&mut log, 1..=10);
            let whole = log.len;
            drop(log);
            let path = tmp.path().join(FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            match damage {
                "torn" => bytes.truncate(bytes.len() - 3),
                "flipped" => *bytes.last_mut().unwrap() ^= 1,
                _ => bytes.extend_from_slice(&[0; 4096]),
            }
            std::fs::write(&path, &bytes).unwrap();
            let mut log = AuditLog::open(tmp.path()).unwrap();
            let want_last = if damage == "zeros" { 10 } else { 9 };
            assert_eq!(log.last_seq(), want_last, "{damage}");
            assert!(log.len <= whole);
            let cut = tmp.path().join("audit.log.cut");
            assert!(cut.exists(), "{damage}");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&cut).unwrap().permissions().mode() & 0o777,
                0o600
            );
            fill(&mut log, want_last + 1..=12);
            drop(log);
            let log = AuditLog::open(tmp.path()).unwrap();
            assert_eq!(values(&log, 0).len(), 12, "{damage}");
        }
    }

    #[test]
    fn keys_map_to_seqs_in_key_order() {
        assert_eq!(entry_seq(&7u64.to_be_bytes()), Some(7));
        assert_eq!(entry_seq(b"head"), None);
        assert_eq!(entry_seq(b"anchored"), None);
        assert_eq!(first_seq_from(&[]), Some(0));
        assert_eq!(first_seq_from(&9u64.to_be_bytes()), Some(9));
        assert_eq!(first_seq_from(&[0, 0, 0, 0, 0, 0, 0, 9, 0]), Some(10));
        // "head" sorts after every entry key (they start with a zero byte).
        assert!(first_seq_from(b"head").unwrap() > u64::from(u32::MAX));
        assert_eq!(first_seq_from(&[0xff; 9]), None);
    }
}
