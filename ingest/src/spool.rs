//! The durable spool: an append-only, fsynced log of encoded records that could not be handed
//! to the broker, drained in order once it is back.
//!
//! Layout: `dir/<first-seq>.seg` segment files of records
//! `[u32 len][u32 crc32c(payload)][payload]`, payload = `[u16 key len][key][value]`, and a
//! `dir/cursor` file naming the first record not yet acknowledged by the broker
//! (`<segment-seq> <byte offset>`), replaced atomically (write temp, fsync, rename).
//!
//! Crash safety:
//! - an append is acknowledged to the HTTP caller only after `fdatasync` of the segment;
//! - a torn last record (crash mid-write) fails its length or CRC check on open and is cut off —
//!   it was never acknowledged, so nothing accepted is lost;
//! - the cursor moves only after the broker acked every record before it, so a crash while
//!   draining re-sends at most the records of one drain chunk (the enrich stage drops those
//!   duplicates by event id); records are never sent twice otherwise.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;

/// Where a record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// A spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Segments by first sequence number, with their valid length.
    segments: Vec<(u64, u64)>,
    writer: Option<File>,
    cursor: Position,
    /// Records and bytes after the cursor.
    depth_records: u64,
    depth_bytes: u64,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// Reads the valid records of a segment from `from`; returns them with their positions and the
/// end of the last valid record.
fn scan(path: &Path, from: u64, limit: usize) -> Result<(Vec<(u64, Record)>, u64), SpoolError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(io_err(path))?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while out.len() < limit && pos + HEADER <= buf.len() {
        let n = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap());
        let end = pos + HEADER + n;
        if end > buf.len() || crc32c::crc32c(&buf[pos + HEADER..end]) != crc || n < 2 {
            break; // torn or corrupt tail
        }
        let payload = &buf[pos + HEADER..end];
        let klen = u16::from_le_bytes([payload[0], payload[1]]) as usize;
        if 2 + klen > payload.len() {
            break;
        }
        out.push((
            from + pos as u64,
            Record {
                key: payload[2..2 + klen].to_vec(),
                value: payload[2 + klen..].to_vec(),
            },
        ));
        pos = end;
    }
    Ok((out, from + pos as u64))
}

impl Spool {
    /// Opens (or creates) the spool, cutting off a torn tail.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut seqs: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        let cursor = Self::read_cursor(dir)?.unwrap_or(Position {
            segment: seqs.first().copied().unwrap_or(0),
            offset: 0,
        });
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            segments: vec![],
            writer: None,
            cursor,
            depth_records: 0,
            depth_bytes: 0,
        };
        for seq in seqs {
            let path = seg_path(dir, seq);
            if seq < cursor.segment {
                // fully drained before a crash, not yet deleted
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let from = if seq == cursor.segment {
                cursor.offset
            } else {
                0
            };
            let (recs, end) = scan(&path, from, usize::MAX)?;
            let file_len = fs::metadata(&path).map_err(io_err(&path))?.len();
            if end < file_len {
                tracing::warn!(segment = %path.display(), valid = end, len = file_len, "cutting torn spool tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(end).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            spool.depth_records += recs.len() as u64;
            spool.depth_bytes += end - from;
            spool.segments.push((seq, end));
        }
        if spool.segments.is_empty() {
            spool.cursor = Position {
                segment: cursor.segment,
                offset: 0,
            };
        }
        Ok(spool)
    }

    fn read_cursor(dir: &Path) -> Result<Option<Position>, SpoolError> {
        let path = dir.join("cursor");
        match fs::read_to_string(&path) {
            Ok(s) => {
                let mut it = s.split_whitespace().map(|x| x.parse::<u64>());
                match (it.next(), it.next()) {
                    (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Position { segment, offset })),
                    _ => Err(SpoolError::Io {
                        path,
                        source: io::Error::new(io::ErrorKind::InvalidData, "bad cursor"),
                    }),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SpoolError::Io { path, source: e }),
        }
    }

    pub fn depth_records(&self) -> u64 {
        self.depth_records
    }

    pub fn depth_bytes(&self) -> u64 {
        self.depth_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.depth_records == 0
    }

    /// Forgets the depth when nothing readable is left after the cursor (corruption): keeps the
    /// drainer from spinning on records it cannot read.
    pub fn reset_depth(&mut self) {
        self.depth_records = 0;
        self.depth_bytes = 0;
    }

    /// Appends the records and fsyncs once. All or nothing: refused whole when it would
    /// exceed the spool's capacity.
    pub fn append(&mut self, records: &[Record]) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(
            records
                .iter()
                .map(|r| HEADER + 2 + r.key.len() + r.value.len())
                .sum(),
        );
        for r in records {
            let klen = r.key.len().min(u16::MAX as usize);
            let n = 2 + klen + r.value.len();
            buf.extend_from_slice(&(n as u32).to_le_bytes());
            let start = buf.len() + 4;
            buf.extend_from_slice(&[0; 4]);
            buf.extend_from_slice(&(klen as u16).to_le_bytes());
            buf.extend_from_slice(&r.key[..klen]);
            buf.extend_from_slice(&r.value);
            let crc = crc32c::crc32c(&buf[start..]);
            buf[start - 4..start].copy_from_slice(&crc.to_le_bytes());
        }
        if self.depth_bytes + buf.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                used: self.depth_bytes,
                max: self.max_bytes,
            });
        }
        let roll = match self.segments.last() {
            None => true,
            Some((_, len)) => *len >= self.segment_bytes,
        };
        if roll || self.writer.is_none() {
            let seq = if roll {
                self.segments
                    .last()
                    .map(|(s, _)| s + 1)
                    .unwrap_or(self.cursor.segment)
            } else {
                self.segments.last().unwrap().0
            };
            let path = seg_path(&self.dir, seq);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            if roll {
                // make the new file's directory entry durable
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(&self.dir))?;
                self.segments.push((seq, 0));
            }
            self.writer = Some(f);
        }
        let (seq, len) = self.segments.last_mut().unwrap();
        let path = seg_path(&self.dir, *seq);
        let w = self.writer.as_mut().unwrap();
        if let Err(e) = w.write_all(&buf).and_then(|_| w.sync_data()) {
            // Put the file back to its last acknowledged length, so a later append is never
            // hidden behind a half-written (never acknowledged) record.
            let _ = w.set_len(*len).and_then(|_| w.sync_data());
            self.writer = None;
            return Err(SpoolError::Io { path, source: e });
        }
        *len += buf.len() as u64;
        self.depth_records += records.len() as u64;
        self.depth_bytes += buf.len() as u64;
        Ok(())
    }

    /// Up to `limit` records from the cursor, with the position just after the last one.
    pub fn peek(&self, limit: usize) -> Result<(Vec<Record>, Position), SpoolError> {
        let mut out = Vec::new();
        let mut next = self.cursor;
        for &(seq, len) in &self.segments {
            if seq < self.cursor.segment || out.len() >= limit {
                continue;
            }
            let from = if seq == self.cursor.segment {
                self.cursor.offset
            } else {
                0
            };
            if from >= len {
                next = Position {
                    segment: seq,
                    offset: len,
                };
                continue;
            }
            let (recs, end) = scan(&seg_path(&self.dir, seq), from, limit - out.len())?;
            let end = end.min(len);
            out.extend(recs.into_iter().map(|(_, r)| r));
            next = Position {
                segment: seq,
                offset: end,
            };
            if end < len {
                break;
            }
        }
        Ok((out, next))
    }

    /// Marks everything before `to` as acknowledged by the broker: persists the cursor, then
    /// deletes segments that are fully drained.
    pub fn commit(&mut self, to: Position, records: u64) -> Result<(), SpoolError> {
        let consumed: u64 = self
            .segments
            .iter()
            .map(|&(seq, len)| {
                let from = if seq == self.cursor.segment {
                    self.cursor.offset
                } else if seq < self.cursor.segment {
                    len
                } else {
                    0
                };
                let until = if seq < to.segment {
                    len
                } else if seq == to.segment {
                    to.offset
                } else {
                    from
                };
                until.saturating_sub(from)
            })
            .sum();
        // 1. persist the cursor (temp + fsync + rename): after this, a restart starts at `to`
        let tmp = self.dir.join("cursor.tmp");
        let path = self.dir.join("cursor");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(format!("{} {}\n", to.segment, to.offset).as_bytes())
            .map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.cursor = to;
        self.depth_records -= records.min(self.depth_records);
        self.depth_bytes -= consumed.min(self.depth_bytes);
        // 2. delete drained segments (a crash before this is cleaned up by `open`); keep the
        //    newest one open for appends
        let last = self.segments.last().map(|s| s.0);
        let dir = self.dir.clone();
        self.segments.retain(|&(seq, len)| {
            let drained =
                seq < to.segment || (seq == to.segment && to.offset >= len && Some(seq) != last);
            if drained {
                let _ = fs::remove_file(seg_path(&dir, seq));
            }
            !drained
        });
        if self.depth_records == 0 {
            self.depth_bytes = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> Record {
        Record {
            key: format!("k{i}").into_bytes(),
            value: vec![i as u8; 50 + i as usize % 7],
        }
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut segs = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path());
        segs.find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap()
    }

    fn drain_all(s: &mut Spool) -> Vec<Record> {
        let mut got = vec![];
        loop {
            let (recs, next) = s.peek(3).unwrap();
            if recs.is_empty() {
                return got;
            }
            let n = recs.len() as u64;
            got.extend(recs);
            s.commit(next, n).unwrap();
        }
    }

    #[test]
    fn appends_survive_reopen_and_drain_in_order() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1 << 20, 300).unwrap();
        let recs: Vec<_> = (0..20).map(rec).collect();
        s.append(&recs[..7]).unwrap();
        s.append(&recs[7..]).unwrap();
        assert_eq!(s.depth_records(), 20);
        drop(s);
        let mut s = Spool::open(d.path(), 1 << 20, 300).unwrap();
        assert_eq!(s.depth_records(), 20);
        assert_eq!(drain_all(&mut s), recs);
        assert!(s.is_empty());
        assert_eq!(s.depth_bytes(), 0);
    }

    #[test]
    fn a_restart_after_partial_drain_resumes_at_the_cursor() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1 << 20, 200).unwrap();
        let recs: Vec<_> = (0..10).map(rec).collect();
        s.append(&recs).unwrap();
        let (first, next) = s.peek(4).unwrap();
        s.commit(next, 4).unwrap();
        drop(s);
        let mut s = Spool::open(d.path(), 1 << 20, 200).unwrap();
        assert_eq!(s.depth_records(), 6);
        let rest = drain_all(&mut s);
        assert_eq!(
            [first, rest].concat(),
            recs,
            "nothing lost, nothing repeated"
        );
    }

    #[test]
    fn a_torn_last_record_is_cut_and_appends_continue() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1 << 20, 1 << 20).unwrap();
        s.append(&[rec(1), rec(2)]).unwrap();
        drop(s);
        // simulate a crash mid-append: half a record at the end
        let seg = only_segment(d.path());
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
        drop(f);
        let mut s = Spool::open(d.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(s.depth_records(), 2);
        s.append(&[rec(3)]).unwrap();
        assert_eq!(drain_all(&mut s), vec![rec(1), rec(2), rec(3)]);
    }

    #[test]
    fn a_corrupt_crc_stops_the_scan() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 1 << 20, 1 << 20).unwrap();
        s.append(&[rec(1), rec(2)]).unwrap();
        drop(s);
        let seg = only_segment(d.path());
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        fs::write(&seg, bytes).unwrap();
        let s = Spool::open(d.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(s.depth_records(), 1);
    }

    #[test]
    fn full_spool_refuses_the_whole_batch() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 200, 1 << 20).unwrap();
        s.append(&[rec(1)]).unwrap();
        let before = s.depth_records();
        assert!(matches!(
            s.append(&[rec(2), rec(3), rec(4)]),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(s.depth_records(), before);
        assert_eq!(drain_all(&mut s), vec![rec(1)]);
        s.append(&[rec(2), rec(3)]).unwrap();
    }
}
