//! The spool's write-ahead log: what makes a spool line durable before it is acknowledged,
//! without an fsync of the `.jsonl` file it is appended to.
//!
//! On this kind of disk (ext4, a virtio disk with a write cache) an fsync after an append costs
//! three round trips to the device: the data, the inode (its size changed) and a cache flush.
//! An fsync after overwriting blocks that already hold data costs two, and less CPU, as long as
//! nothing else has dirtied the inode (see the offset in `append`). So each group of lines is
//! appended to `<queue>.jsonl` without an fsync (readers see it at once, as before), and
//! written with a checksum into `<queue>.wal`, a file of fixed size, zero-filled when created
//! and used as two halves in turn. Only the WAL is made durable before the group
//! is answered (written with `O_DIRECT | O_DSYNC` where the file system takes it: `Direct`).
//! When a half is full, the writer goes on in the other half, and a thread of its own fsyncs
//! the `.jsonl`, which by then holds every line of the half just left. A half is written
//! again only after the fsync that followed its last use has finished, so every acknowledged
//! line is always either durable in the `.jsonl` or in a WAL record.
//!
//! At start-up every valid record of both halves is written again at its offset in the `.jsonl`
//! (a tail lost in a crash of the machine comes back), the `.jsonl` is cut at a crash's zeros
//! after the last record and at its partial last line, fsynced, and the WAL zeroed. After any
//! error the writer does the same before it writes again (`reset`).
//!
//! A record: magic, payload length, epoch (one per use of a half), the payload's offset in the
//! `.jsonl`, the `.jsonl`'s identity (`identity`), a CRC-32 of all of these and the payload,
//! then the payload. A half holds a chain of records from its start; the chain ends at the
//! first record that is not valid, belongs to another epoch or another file.

use std::{
    fs::{File, OpenOptions},
    io::{self, Seek, SeekFrom},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
};

use super::journal::{Journal, cut_partial_line, sync_parent};

/// Bytes in each of the WAL's two halves: at 40k events/s a switch every ~0.1 s. Halves of 8 and
/// 32 MiB gave the same rate under `benches/p1.sh`, with a higher p99 at full rate (3.6–7.3 ms
/// against 1.9–4.4 ms: the background fsync of a larger stretch of `.jsonl` delays the WAL's).
pub(crate) const HALF: u64 = 2 << 20;

const MAGIC: [u8; 4] = *b"CIW1";
const HEADER: usize = 40;

/// One record found in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    epoch: u64,
    offset: u64,
    payload: Vec<u8>,
}

fn encode(out: &mut Vec<u8>, epoch: u64, offset: u64, file_id: u64, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    // A payload is at most a half (`append` checks), far below u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&file_id.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[4..32]);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
}

/// The chain of valid records at the start of `half` that belong to `file_id`.
fn scan(half: &[u8], file_id: u64) -> Vec<Record> {
    let mut records = Vec::new();
    let mut pos = 0;
    let word = |at: usize| u64::from_le_bytes(half[at..at + 8].try_into().expect("8 bytes"));
    while pos + HEADER <= half.len() && half[pos..pos + 4] == MAGIC {
        let len = u32::from_le_bytes(half[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let (epoch, offset, id) = (word(pos + 8), word(pos + 16), word(pos + 24));
        let stored = u32::from_le_bytes(half[pos + 32..pos + 36].try_into().expect("4 bytes"));
        let Some(payload) = half.get(pos + HEADER..pos + HEADER + len) else {
            break;
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&half[pos + 4..pos + 32]);
        crc.update(payload);
        if crc.finalize() != stored
            || id != file_id
            || records.first().is_some_and(|r: &Record| r.epoch != epoch)
        {
            break;
        }
        records.push(Record {
            epoch,
            offset,
            payload: payload.to_vec(),
        });
        pos += HEADER + len;
    }
    records
}

/// A `.jsonl` spool file and its WAL, as the group writer's journal.
pub(crate) struct WalJournal {
    /// Shared with the thread of the fsync that frees a half.
    jsonl: Arc<File>,
    /// The `.jsonl`'s length before the last group, taken from the file each time (lines
    /// written into it by others, as tests and older versions' records do, are kept): the
    /// group's offset, and what a failed group is cut back to.
    len: u64,
    wal: File,
    /// The WAL opened again for the records' writes, where the file system takes
    /// `O_DIRECT | O_DSYNC`; otherwise they go through `wal` and an fsync.
    direct: Option<Direct>,
    wal_path: PathBuf,
    half: u64,
    /// The half being written (0 or 1), the next record's position in it, and its epoch.
    current: u64,
    pos: u64,
    epoch: u64,
    /// The `.jsonl`'s identity (`identity`), in every record.
    file_id: u64,
    /// The name of the fsync's thread.
    sync_name: String,
    /// The fsync of the `.jsonl` started at the last switch, if not yet waited for.
    sync: Option<JoinHandle<io::Result<()>>>,
    /// An error happened: the next append first makes the `.jsonl` durable and empties the WAL.
    broken: bool,
    record: Vec<u8>,
}

impl WalJournal {
    /// Opens `jsonl` and its WAL `wal` (created if missing), restoring into the `.jsonl` what the
    /// WAL holds and the `.jsonl` lost; `name` names the fsync's thread.
    pub(crate) fn open(name: &str, jsonl: &Path, wal: &Path) -> io::Result<Self> {
        Self::open_with_half(name, jsonl, wal, HALF)
    }

    fn open_with_half(name: &str, jsonl: &Path, wal_path: &Path, half: u64) -> io::Result<Self> {
        let created = !jsonl.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(jsonl)?;
        if created {
            sync_parent(jsonl)?;
        }
        let file_id = identity(&file.metadata()?);
        let records = match std::fs::read(wal_path) {
            // Another size than this build's is still read (halves of another build), then
            // made again.
            Ok(bytes) if bytes.len() % 2 == 0 => records_in(&bytes, file_id),
            Ok(_) => {
                tracing::warn!(path = %wal_path.display(), "the spool's write-ahead log has an odd size; making a new one");
                Vec::new()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let epoch = records.last().map_or(0, |r| r.epoch);
        let restored_end = restore(&file, jsonl, &records)?;
        cut_at_nul(
            &file,
            jsonl,
            restored_end.max(file.metadata()?.len().saturating_sub(2 * half)),
        )?;
        file.sync_data()?;
        let len = cut_partial_line(&mut file, jsonl)?;
        let mut journal = Self {
            jsonl: Arc::new(file),
            len,
            wal: open_wal(wal_path, half)?,
            direct: Direct::open(wal_path, half),
            wal_path: wal_path.to_owned(),
            half,
            current: 0,
            pos: 0,
            epoch,
            file_id,
            sync_name: format!("{name}-sync"),
            sync: None,
            broken: false,
            record: Vec::new(),
        };
        journal.empty_wal()?;
        Ok(journal)
    }

    /// Zeroes both halves (no record of an earlier run may be left for a later chain to run
    /// into) and starts a new epoch in the first: callers have made the `.jsonl` durable.
    fn empty_wal(&mut self) -> io::Result<()> {
        let zeros = vec![0u8; self.half.min(1 << 20) as usize];
        let mut at = 0;
        while at < 2 * self.half {
            let n = zeros.len().min((2 * self.half - at) as usize);
            self.wal.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.wal.sync_data()?;
        self.current = 0;
        self.pos = 0;
        self.epoch += 1;
        Ok(())
    }

    /// After an error: the `.jsonl` cut back to before the failed group, every line the WAL
    /// holds written into it again and fsynced, then the WAL emptied. The lines are written
    /// again because a failed fsync (here or on the sync thread, which shares the open file)
    /// reports its error once: a later fsync that succeeds says nothing about pages whose
    /// writeback failed, which the kernel may then hold as clean. Until this succeeds the WAL
    /// keeps its records.
    fn reset(&mut self) -> io::Result<()> {
        let _ = self.wait_sync();
        self.jsonl.set_len(self.len)?;
        let mut bytes = vec![0u8; (2 * self.half) as usize];
        self.wal.read_exact_at(&mut bytes, 0)?;
        restore(
            &self.jsonl,
            &self.wal_path,
            &records_in(&bytes, self.file_id),
        )?;
        self.jsonl.sync_data()?;
        self.empty_wal()?;
        self.broken = false;
        Ok(())
    }

    /// Goes on in the other half, once the sync that freed it has finished, and starts the sync
    /// that frees the half being left (all its lines are in the `.jsonl` already).
    fn switch(&mut self) -> io::Result<()> {
        self.wait_sync()?;
        let file = Arc::clone(&self.jsonl);
        self.sync = Some(
            std::thread::Builder::new()
                .name(self.sync_name.clone())
                .spawn(move || file.sync_data())?,
        );
        self.current ^= 1;
        self.pos = 0;
        self.epoch += 1;
        Ok(())
    }

    /// Waits for the fsync started at the last switch, if any, and returns its result.
    fn wait_sync(&mut self) -> io::Result<()> {
        match self.sync.take() {
            Some(sync) => sync
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the spool's fsync thread panicked"))),
            None => Ok(()),
        }
    }

    fn write(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let need = (HEADER + bytes.len()) as u64;
        if need > self.half {
            // Too large for the WAL: made durable in the `.jsonl` itself (which also makes
            // every earlier line durable there).
            self.jsonl.write_all_at(bytes, offset)?;
            return self.jsonl.sync_data();
        }
        if self.pos + need > self.half {
            self.switch()?;
        }
        self.jsonl.write_all_at(bytes, offset)?;
        encode(&mut self.record, self.epoch, offset, self.file_id, bytes);
        let base = self.current * self.half;
        match self
            .direct
            .as_mut()
            .map(|d| d.write(&self.record, base, self.pos))
        {
            Some(Ok(())) => {}
            // A file system that took the flags at open but not these writes: through the
            // page cache from now on.
            Some(Err(e)) if e.kind() == io::ErrorKind::InvalidInput => {
                tracing::warn!(path = %self.wal_path.display(), error = %e, "the spool's write-ahead log cannot be written with O_DIRECT here; writing it through the page cache");
                self.direct = None;
                self.write_buffered(base)?;
            }
            Some(Err(e)) => return Err(e),
            None => self.write_buffered(base)?,
        }
        self.pos += need;
        Ok(())
    }

    fn write_buffered(&mut self, base: u64) -> io::Result<()> {
        self.wal.write_all_at(&self.record, base + self.pos)?;
        self.wal.sync_data()
    }
}

impl Journal for WalJournal {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.broken {
            self.reset()?;
        }
        // The offset is the file's length, so lines another writer appended are kept. Taken
        // with `lseek`, not `fstat`: a stat asks for the file's ctime, and since Linux 6.13
        // (multigrain timestamps) the next write then gets a fine-grained timestamp, which
        // also moves every other file's next mtime. The WAL's inode would then be dirty at
        // each of its fsyncs, which on ext4 writes it too: 135 against 99 µs a group on this
        // machine's disk (a Python loop of the same calls).
        self.len = (&*self.jsonl).seek(SeekFrom::End(0))?;
        let result = self.write(bytes, self.len);
        if let Err(error) = &result {
            tracing::warn!(path = %self.wal_path.display(), %error, "spool write failed; the next one first makes the spool durable");
            self.broken = true;
            // Leave no partial line behind for the next group to append to (`reset` cuts
            // again if this fails), and no record of the failed group that a start after a
            // crash would write back (best effort: `reset` empties the WAL).
            let _ = self.jsonl.set_len(self.len);
            let at = self.current * self.half + self.pos;
            if self.wal.write_all_at(&[0; HEADER], at).is_ok() {
                let _ = self.wal.sync_data();
            }
        }
        result
    }
}

impl Drop for WalJournal {
    /// A journal closed in the process (its writer thread finished) leaves the WAL empty, so a
    /// `.jsonl` cut afterwards gets nothing back at the next open. Best effort: the writer
    /// thread is not joined at process exit, and after a failure or an exit midway the records
    /// stay, and the next open writes them again. Nor while the writer thread panics: the
    /// spool then opens the file again on another thread, which may already be writing records
    /// into the WAL that this drop would zero.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if !self.broken && self.wait_sync().is_ok() && self.jsonl.sync_data().is_ok() {
            let _ = self.empty_wal();
        }
    }
}

/// Bytes of a block written with `O_DIRECT`: offsets, lengths and the buffer's address are
/// multiples of it (4 KiB covers disks of 512-byte and 4 KiB sectors).
const BLOCK: usize = 4096;

/// The WAL's records written with `O_DIRECT | O_DSYNC`: each write is durable when it returns,
/// with no trip through the page cache (on this machine's disk 80 against 92 µs and 33 against
/// 42 µs of CPU per record in a Python loop of the same calls). Records stay packed as before:
/// a write covers the whole blocks the record touches, starting with the part of the first block
/// that earlier records filled, kept here, and padded with zeros, which the next record
/// overwrites.
struct Direct {
    file: File,
    /// The blocks of the last write, from a block-aligned address inside: grown to the largest
    /// write so far (at most a half and a block), not reserved up front, as three journals
    /// would hold 6 MiB for groups that are a few KiB.
    buf: Vec<u8>,
}

impl Direct {
    /// `None` where the file system refuses the flags (tmpfs before Linux 6.6, some FUSE and
    /// network file systems) or a half is not made of whole blocks.
    fn open(path: &Path, half: u64) -> Option<Self> {
        if !half.is_multiple_of(BLOCK as u64) {
            return None;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(path)
            {
                Ok(file) => Some(Self {
                    file,
                    buf: Vec::new(),
                }),
                Err(error) => {
                    tracing::info!(path = %path.display(), %error, "the spool's write-ahead log is written through the page cache: no O_DIRECT here");
                    None
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            None
        }
    }

    /// Writes `record` at `pos` of the half that starts at `base`; the bytes before `pos` in
    /// its first block are those the last call wrote there (a half starts at `pos` 0).
    fn write(&mut self, record: &[u8], base: u64, pos: u64) -> io::Result<()> {
        let head = pos as usize % BLOCK;
        let end = head + record.len();
        let total = end.div_ceil(BLOCK) * BLOCK;
        if self.buf.len() < total + BLOCK {
            // A new allocation has another alignment: carry the head over.
            let mut grown = vec![0; (total + BLOCK).max(16 * BLOCK)];
            let (from, to) = (
                self.buf.as_ptr().align_offset(BLOCK),
                grown.as_ptr().align_offset(BLOCK),
            );
            if head > 0 {
                let kept = self.buf.get(from..from + head).ok_or_else(|| {
                    io::Error::other("the spool's WAL block being written is not known")
                })?;
                grown[to..to + head].copy_from_slice(kept);
            }
            self.buf = grown;
        }
        let skip = self.buf.as_ptr().align_offset(BLOCK);
        let block = &mut self.buf[skip..];
        block[head..end].copy_from_slice(record);
        block[end..total].fill(0);
        self.file
            .write_all_at(&block[..total], base + pos - head as u64)?;
        // The next record starts in the last block written: keep what this one put there.
        let tail = end % BLOCK;
        block.copy_within(end - tail..end, 0);
        Ok(())
    }
}

/// What tells one `.jsonl` from another at the same path: the inode number and, where the file
/// system records it, the creation time (an inode number freed by a removed file is soon given
/// to a new one).
fn identity(meta: &std::fs::Metadata) -> u64 {
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    meta.ino() ^ born.rotate_left(32)
}

/// The valid records of a WAL's two halves, `bytes`, for the file `file_id`, oldest first.
fn records_in(bytes: &[u8], file_id: u64) -> Vec<Record> {
    let (a, b) = bytes.split_at(bytes.len() / 2);
    let mut records = scan(a, file_id);
    records.extend(scan(b, file_id));
    records.sort_by_key(|r| r.epoch);
    records
}

/// Writes each record's payload at its offset in `file` (a tail lost in a crash of the machine
/// comes back; where the file holds the same bytes, writing them again makes the next fsync
/// write them to the disk, whatever an earlier failed one left). Returns the end of the last
/// record written (0 if none).
fn restore(file: &File, path: &Path, records: &[Record]) -> io::Result<u64> {
    let mut len = file.metadata()?.len();
    let (mut restored, mut skipped, mut last_end) = (0u64, 0u64, 0u64);
    let mut held = Vec::new();
    for r in records {
        if r.offset > len {
            // Only a `.jsonl` cut or replaced behind the spool's back leaves a gap.
            skipped += 1;
            continue;
        }
        let end = r.offset + r.payload.len() as u64;
        held.resize((end.min(len) - r.offset) as usize, 0);
        file.read_exact_at(&mut held, r.offset)?;
        if held != r.payload {
            restored += r.payload.len() as u64;
        }
        file.write_all_at(&r.payload, r.offset)?;
        len = len.max(end);
        last_end = end;
    }
    if restored > 0 || skipped > 0 {
        tracing::warn!(path = %path.display(), restored_bytes = restored, skipped_records = skipped, "spool restored from its write-ahead log");
    }
    Ok(last_end)
}

/// Cuts `file` at the first NUL byte at or after `from`. A crash of the machine can leave zeros
/// in place of part of a group that was written but never acknowledged (its WAL record was not
/// durable), followed by the rest of it; JSON text has no NUL, and everything acknowledged
/// after the last WAL record was fsynced in the `.jsonl` itself, so none of it holds one.
/// `cut_partial_line` then removes what is left of that line.
fn cut_at_nul(file: &File, path: &Path, from: u64) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(i) = buf[..n].iter().position(|&b| b == 0) {
            tracing::warn!(path = %path.display(), cut = len - at - i as u64, "removing the unacknowledged end of the spool, zeroed by a crash");
            return file.set_len(at + i as u64);
        }
        at += n as u64;
    }
    Ok(())
}

/// The WAL file, made two halves long. `empty_wal` then writes every byte of it and fsyncs:
/// written blocks, not just allocated ones, so that each later fsync writes data alone (one
/// after writing into allocated but unwritten blocks costs a metadata update again).
fn open_wal(path: &Path, half: u64) -> io::Result<File> {
    let created = !path.exists();
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    if file.metadata()?.len() != 2 * half {
        file.set_len(2 * half)?;
    }
    if created {
        sync_parent(path)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: u64 = 4096;

    struct Files {
        _dir: tempfile::TempDir,
        jsonl: PathBuf,
        wal: PathBuf,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        Files {
            jsonl: dir.path().join("q.jsonl"),
            wal: dir.path().join("q.wal"),
            _dir: dir,
        }
    }

    fn open(f: &Files) -> WalJournal {
        WalJournal::open_with_half("t", &f.jsonl, &f.wal, SMALL).unwrap()
    }

    /// The `.jsonl` after a start on `f` (and a clean stop).
    fn restarted(f: &Files) -> Vec<u8> {
        drop(open(f));
        std::fs::read(&f.jsonl).unwrap()
    }

    /// The `.jsonl` opened for writing behind the journal's back.
    fn jsonl_for_writing(f: &Files) -> File {
        OpenOptions::new().write(true).open(&f.jsonl).unwrap()
    }

    /// Whether the temporary directory's file system refuses O_DIRECT (tmpfs before Linux
    /// 6.6): then a test of that path says so and passes (this project's machines take it).
    fn no_direct_here(j: &WalJournal) -> bool {
        let none = j.direct.is_none();
        if none {
            eprintln!("skipped: the temporary directory's file system refuses O_DIRECT");
        }
        none
    }

    fn line(i: usize) -> Vec<u8> {
        format!(
            "{{\"eventId\":\"{i:06}\",\"pad\":\"{}\"}}\n",
            "x".repeat(i % 50)
        )
        .into_bytes()
    }

    #[test]
    fn records_round_trip_and_the_chain_stops_at_anything_else() {
        let mut half = vec![0u8; 512];
        let mut rec = Vec::new();
        encode(&mut rec, 7, 0, 42, b"one\n");
        half[..rec.len()].copy_from_slice(&rec);
        let second = rec.len();
        encode(&mut rec, 7, 4, 42, b"two\n");
        half[second..second + rec.len()].copy_from_slice(&rec);
        let found = scan(&half, 42);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].offset, 4);
        assert_eq!(found[1].payload, b"two\n");
        assert!(scan(&half, 43).is_empty(), "another file's records");
        let mut torn = half.clone();
        torn[second + HEADER] ^= 1;
        assert_eq!(scan(&torn, 42).len(), 1, "a corrupt payload ends the chain");
        let mut older = half.clone();
        encode(&mut rec, 6, 4, 42, b"two\n");
        older[second..second + rec.len()].copy_from_slice(&rec);
        assert_eq!(scan(&older, 42).len(), 1, "another epoch ends the chain");
    }

    #[test]
    fn a_lost_tail_of_the_jsonl_is_restored_across_half_switches() {
        a_lost_tail_is_restored(true);
    }

    #[test]
    fn a_lost_tail_is_restored_where_the_wal_is_written_through_the_page_cache() {
        a_lost_tail_is_restored(false);
    }

    fn a_lost_tail_is_restored(direct: bool) {
        let f = files();
        let mut expected = Vec::new();
        {
            let mut j = open(&f);
            if !direct {
                j.direct = None;
            } else if no_direct_here(&j) {
                return;
            }
            for i in 0..300 {
                let l = line(i);
                j.append(&l).unwrap();
                expected.extend_from_slice(&l);
            }
            assert!(j.epoch > 3, "the halves were switched several times");
            j.wait_sync().unwrap();
            // Killed: no clean stop.
            std::mem::forget(j);
        }
        // A crash of the machine loses what was not fsynced: at most what the halves hold,
        // from the first line of the older half on.
        let text = std::fs::read(&f.jsonl).unwrap();
        assert_eq!(text, expected);
        let wal = std::fs::read(&f.wal).unwrap();
        let id = identity(&std::fs::metadata(&f.jsonl).unwrap());
        let (a, b) = wal.split_at(SMALL as usize);
        let kept = scan(a, id)
            .iter()
            .chain(&scan(b, id))
            .map(|r| r.offset)
            .min()
            .unwrap() as usize;
        assert!(
            text.len() - kept > SMALL as usize,
            "more than a half's lines lost"
        );
        let file = jsonl_for_writing(&f);
        file.set_len(kept as u64 + 10).unwrap();
        // ... and may leave zeros where data was.
        file.write_all_at(&[0; 10], kept as u64).unwrap();
        drop(file);
        let mut j = open(&f);
        assert_eq!(std::fs::read(&f.jsonl).unwrap(), expected);
        j.append(b"after\n").unwrap();
        expected.extend_from_slice(b"after\n");
        assert_eq!(std::fs::read(&f.jsonl).unwrap(), expected);
    }

    #[test]
    fn restart_empties_the_wal_so_a_spool_emptied_while_stopped_stays_empty() {
        let f = files();
        let mut j = open(&f);
        j.append(&line(1)).unwrap();
        // Killed, restarted, killed again before any append: only the restart emptied the WAL.
        std::mem::forget(j);
        std::mem::forget(open(&f));
        std::fs::write(&f.jsonl, b"").unwrap();
        assert_eq!(restarted(&f), b"");
        assert_eq!(
            std::fs::metadata(&f.wal).unwrap().len(),
            2 * SMALL,
            "the WAL keeps its size"
        );
    }

    #[test]
    fn a_clean_stop_empties_the_wal() {
        let f = files();
        let mut j = open(&f);
        j.append(&line(1)).unwrap();
        drop(j);
        std::fs::write(&f.jsonl, b"").unwrap();
        assert_eq!(restarted(&f), b"");
    }

    #[test]
    fn records_written_across_blocks_keep_the_records_before_them() {
        let f = files();
        let half = 32 * BLOCK as u64;
        let mut j = WalJournal::open_with_half("t", &f.jsonl, &f.wal, half).unwrap();
        if no_direct_here(&j) {
            return;
        }
        // Nine records of 1,540 bytes in one half: most start inside a block an earlier one
        // filled part of, and end in the next. Then one larger than the buffer so far, which
        // grows it mid-block, and one more after it.
        let mut lines: Vec<Vec<u8>> = (0..9)
            .map(|i| format!("{i:>1499}\n").into_bytes())
            .collect();
        lines.push([vec![b'9'; 69_999], b"\n".to_vec()].concat());
        lines.push(format!("{:>99}\n", 10).into_bytes());
        for l in &lines {
            j.append(l).unwrap();
        }
        assert_eq!(j.epoch, 1, "no switch");
        std::mem::forget(j);
        std::fs::write(&f.jsonl, b"").unwrap();
        drop(WalJournal::open_with_half("t", &f.jsonl, &f.wal, half).unwrap());
        assert_eq!(std::fs::read(&f.jsonl).unwrap(), lines.concat());
    }

    #[test]
    fn a_journal_dropped_by_a_panic_leaves_the_wal_to_the_next_open() {
        let f = files();
        let mut j = open(&f);
        j.append(&line(1)).unwrap();
        // The writer thread panics; the spool's next open may already use the WAL.
        let panicked = std::thread::spawn(move || {
            let _journal = j;
            panic!("writer thread");
        })
        .join();
        assert!(panicked.is_err());
        // Its records are still there for the next open: a tail lost since is restored.
        std::fs::write(&f.jsonl, b"").unwrap();
        assert_eq!(restarted(&f), line(1));
    }

    #[test]
    fn no_record_of_an_earlier_run_extends_a_later_chain() {
        let f = files();
        let mut j = open(&f);
        for i in 0..20 {
            j.append(&line(i)).unwrap();
        }
        drop(j);
        // Emptied in place while stopped (the README says not to, after a kill), then a run
        // with fewer groups of the same sizes, killed.
        std::fs::write(&f.jsonl, b"").unwrap();
        let mut j = open(&f);
        for i in 0..5 {
            j.append(&line(i)).unwrap();
        }
        std::mem::forget(j);
        drop(open(&f));
        let expected: Vec<u8> = (0..5).flat_map(line).collect();
        assert_eq!(std::fs::read(&f.jsonl).unwrap(), expected);
    }

    #[test]
    fn a_wal_of_another_builds_size_is_still_restored() {
        let f = files();
        let mut j = WalJournal::open_with_half("t", &f.jsonl, &f.wal, 2 * SMALL).unwrap();
        j.append(&line(1)).unwrap();
        j.append(&line(2)).unwrap();
        std::mem::forget(j);
        jsonl_for_writing(&f).set_len(3).unwrap();
        assert_eq!(restarted(&f), [line(1), line(2)].concat());
        assert_eq!(std::fs::metadata(&f.wal).unwrap().len(), 2 * SMALL);
    }

    #[test]
    fn an_unacknowledged_tail_zeroed_by_a_crash_is_cut() {
        let f = files();
        let mut j = open(&f);
        j.append(&line(1)).unwrap();
        std::mem::forget(j);
        // A group written to the `.jsonl` but never acknowledged: after the crash its first
        // page is zeros and the rest, ending in a newline, made it to the disk.
        let mut text = std::fs::read(&f.jsonl).unwrap();
        text.extend_from_slice(&[0; 100]);
        text.extend_from_slice(b"half\"}\n{\"eventId\":\"x\"}\n");
        std::fs::write(&f.jsonl, text).unwrap();
        assert_eq!(restarted(&f), line(1));
    }

    #[test]
    fn a_replaced_jsonl_gets_nothing_from_the_old_ones_wal() {
        let f = files();
        let mut j = open(&f);
        j.append(&line(1)).unwrap();
        std::mem::forget(j);
        // Moved away and a new file put in its place while the WAL still holds the old lines
        // (a crash before the restart's restore): another inode.
        let before = std::fs::read(&f.wal).unwrap();
        std::fs::rename(&f.jsonl, f.jsonl.with_extension("old")).unwrap();
        std::fs::write(&f.jsonl, b"").unwrap();
        std::fs::write(&f.wal, before).unwrap();
        assert_eq!(restarted(&f), b"");
    }

    #[test]
    fn a_group_larger_than_a_half_is_synced_into_the_jsonl() {
        let f = files();
        let mut j = open(&f);
        j.append(&line(1)).unwrap();
        let big = format!("{{\"big\":\"{}\"}}\n", "y".repeat(2 * SMALL as usize)).into_bytes();
        j.append(&big).unwrap();
        j.append(&line(2)).unwrap();
        drop(j);
        let text = std::fs::read(&f.jsonl).unwrap();
        assert_eq!(text, [line(1), big, line(2)].concat());
        assert_eq!(restarted(&f), text);
    }

    #[test]
    fn a_partial_last_line_is_cut_and_the_wal_is_zero_filled_on_creation() {
        let f = files();
        std::fs::write(&f.jsonl, "{\"a\":1}\n{\"b\":").unwrap();
        drop(open(&f));
        assert_eq!(std::fs::read_to_string(&f.jsonl).unwrap(), "{\"a\":1}\n");
        let wal = std::fs::read(&f.wal).unwrap();
        assert_eq!(wal.len() as u64, 2 * SMALL);
        assert!(wal.iter().all(|&b| b == 0));
        std::fs::write(&f.wal, b"short").unwrap();
        drop(open(&f));
        assert_eq!(std::fs::metadata(&f.wal).unwrap().len(), 2 * SMALL);
    }

    #[test]
    fn after_a_failed_write_the_next_group_starts_from_a_durable_spool() {
        let f = files();
        let mut j = open(&f);
        j.append(&line(1)).unwrap();
        // The WAL's handles turned read-only: the record cannot be written.
        let wal = std::mem::replace(&mut j.wal, File::open(&f.wal).unwrap());
        let direct = j.direct.is_some();
        if let Some(d) = j.direct.as_mut() {
            d.file = File::open(&f.wal).unwrap();
        }
        assert!(j.append(&line(2)).is_err());
        assert!(j.broken);
        assert_eq!(
            std::fs::read(&f.jsonl).unwrap(),
            line(1),
            "the failed group's line is cut from the jsonl"
        );
        j.wal = wal;
        if direct {
            j.direct = Direct::open(&f.wal, SMALL);
        }
        // A failed fsync reports its error once; pages whose writeback failed may then be held
        // as clean. The reset writes every line the WAL holds again before its fsync: here the
        // first line's bytes, changed behind the journal's back, come back.
        jsonl_for_writing(&f).write_all_at(b"XXXX", 0).unwrap();
        j.append(&line(3)).unwrap();
        assert!(!j.broken);
        drop(j);
        assert_eq!(restarted(&f), [line(1), line(3)].concat());
    }
}
