//! Durable file primitives: the few places outside sled where bytes must
//! reach the disk before we say they did.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// fsyncs the directory holding `path`, so that a create or rename inside it
/// survives a power cut.
pub fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)?.sync_all()
}

/// Replaces `path` with `bytes` atomically: write a sibling temp file, fsync
/// it, rename it over the target, fsync the directory. A crash leaves either
/// the old file or the new one, never a mix.
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_atomically_with(path, |w| w.write_all(bytes))
}

/// [`replace_atomically`] with the new contents written by `fill`, buffered:
/// a large file (the keyring of 100,000 patients is over 20 MB) is streamed
/// instead of being built in memory first. If `fill` fails, the target is
/// left as it was.
pub fn replace_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    // `name.tmp` beside `name`: distinct for every target name.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = io::BufWriter::with_capacity(64 * 1024, f);
        let written = fill(&mut out).and_then(|()| out.flush());
        if let Err(e) = written {
            drop(out);
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        out.get_ref().sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_parent_dir(path)
}

/// Appends `bytes` to `path` and fsyncs before returning. If the append
/// fails (a full disk), the file is cut back to where it was, so that no
/// fragment is left for the next append to glue onto.
pub fn append_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let f = fs::OpenOptions::new().append(true).mode(0o600).open(path)?;
    append_or_undo(f, bytes)
}

/// Appends to an existing file (never creates one) and fsyncs; undone on failure.
pub fn append_durably_existing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let f = fs::OpenOptions::new().append(true).open(path)?;
    append_or_undo(f, bytes)
}

fn append_or_undo(mut f: fs::File, bytes: &[u8]) -> io::Result<()> {
    let before = f.metadata()?.len();
    match f.write_all(bytes).and_then(|()| f.sync_data()) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Best effort: the error that matters is the append's.
            let _ = f.set_len(before).and_then(|()| f.sync_data());
            Err(e)
        }
    }
}
