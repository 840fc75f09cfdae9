//! The embedded store's files: record framing, WAL segments, snapshots, and recovery from them.
//!
//! Every record on disk is framed as `len: u32 LE | crc32(payload): u32 LE | payload`.
//!
//! A WAL segment `wal-<first revision, 20 digits>.log` is a run of records, one per write, each
//! payload `op: u8 (1 put, 2 delete) | revision: u64 | create_revision: u64 | key_len: u32 | key |
//! value`, little-endian. A put's mod revision is its revision; a delete's value is the object's
//! stamped final state. Revisions are consecutive across segments, and a segment is named by the
//! first revision it holds.
//!
//! A snapshot `snap-<revision, 20 digits>.snap` is a header record `SKFSNAP1 | revision: u64 |
//! count: u64` then `count` records `create_revision: u64 | mod_revision: u64 | key_len: u32 | key |
//! value`, then end of file. It is written as `.tmp`, synced, renamed and the directory synced, so
//! a `.snap` file is complete unless the disk itself lost data.
//!
//! Recovery loads the newest valid snapshot, replays the segments after it, and truncates a bad
//! tail of the last segment: a crash can tear only the batch being written, which was never
//! acknowledged. A bad record anywhere else is corruption.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::state::{Change, State};
use crate::{Error, Event, EventType, KeyValue, Result, Revision};

const FRAME_HEADER: usize = 8;
const SNAPSHOT_MAGIC: &[u8; 8] = b"SKFSNAP1";
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

pub(crate) fn segment_path(dir: &Path, first: Revision) -> PathBuf {
    dir.join(format!("wal-{first:020}.log"))
}

fn snapshot_path(dir: &Path, revision: Revision, ext: &str) -> PathBuf {
    dir.join(format!("snap-{revision:020}.{ext}"))
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<Revision> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The store's files, sorted by revision.
#[derive(Default)]
struct Listing {
    segments: Vec<(Revision, PathBuf)>,
    snapshots: Vec<(Revision, PathBuf)>,
}

fn list_dir(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(rev) = parse_name(name, "wal-", ".log") {
            listing.segments.push((rev, entry.path()));
        } else if let Some(rev) = parse_name(name, "snap-", ".snap") {
            listing.snapshots.push((rev, entry.path()));
        } else if name.starts_with("snap-") && name.ends_with(".tmp") {
            // A snapshot that never got renamed is garbage from a crash mid-write.
            fs::remove_file(entry.path())?;
        }
    }
    listing.segments.sort();
    listing.snapshots.sort();
    Ok(listing)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn frame(buf: &mut [u8], payload_start: usize) {
    let len = buf.len() - payload_start;
    let crc = crc32fast::hash(&buf[payload_start..]);
    let header = payload_start - FRAME_HEADER;
    // Payloads are bounded by what fits in memory and JSON objects far below 4 GiB.
    buf[header..header + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[header + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
}

fn begin_frame(buf: &mut Vec<u8>) -> usize {
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    buf.len()
}

fn put_kv(buf: &mut Vec<u8>, a: u64, b: u64, key: &str, value: &[u8]) {
    buf.extend_from_slice(&a.to_le_bytes());
    buf.extend_from_slice(&b.to_le_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(value);
}

/// Appends the WAL record of one change to `buf`.
pub(crate) fn encode_change(buf: &mut Vec<u8>, event: &Event) {
    let start = begin_frame(buf);
    buf.push(if event.kind == EventType::Deleted {
        OP_DELETE
    } else {
        OP_PUT
    });
    let kv = &event.kv;
    put_kv(buf, kv.mod_revision, kv.create_revision, &kv.key, &kv.value);
    frame(buf, start);
}

/// Reads the frame at `offset`: `Ok(None)` at the end, `Err` with the reason when it is bad.
fn read_frame(data: &[u8], offset: usize) -> Result<Option<(&[u8], usize)>, &'static str> {
    let rest = &data[offset..];
    if rest.is_empty() {
        return Ok(None);
    }
    let (Some(len), Some(crc)) = (le_u32(rest, 0), le_u32(rest, 4)) else {
        return Err("truncated record header");
    };
    let end = FRAME_HEADER + len as usize;
    let Some(payload) = rest.get(FRAME_HEADER..end) else {
        return Err("truncated record");
    };
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch");
    }
    Ok(Some((payload, offset + end)))
}

fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// Splits `a | b | key_len | key | value`.
fn get_kv(data: &[u8]) -> Option<(u64, u64, Arc<str>, Bytes)> {
    let a = le_u64(data, 0)?;
    let b = le_u64(data, 8)?;
    let key_len = le_u32(data, 16)? as usize;
    let key = data.get(20..20 + key_len)?;
    let key = std::str::from_utf8(key).ok()?;
    // Copied rather than sliced so one live value does not pin a whole segment in memory.
    let value = Bytes::copy_from_slice(&data[20 + key_len..]);
    Some((a, b, Arc::from(key), value))
}

struct Record {
    delete: bool,
    revision: Revision,
    create_revision: Revision,
    key: Arc<str>,
    value: Bytes,
}

fn decode_record(payload: &[u8]) -> Option<Record> {
    let (&op, rest) = payload.split_first()?;
    let (revision, create_revision, key, value) = get_kv(rest)?;
    let delete = match op {
        OP_PUT => false,
        OP_DELETE => true,
        _ => return None,
    };
    Some(Record {
        delete,
        revision,
        create_revision,
        key,
        value,
    })
}

/// Writes a snapshot of `kvs` at `revision`, then removes the files it makes redundant.
pub(crate) fn write_snapshot(
    dir: &Path,
    revision: Revision,
    kvs: &BTreeMap<Arc<str>, KeyValue>,
    fsync: bool,
) -> io::Result<()> {
    let tmp = snapshot_path(dir, revision, "tmp");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let mut buf = Vec::with_capacity(4096);
    let start = begin_frame(&mut buf);
    buf.extend_from_slice(SNAPSHOT_MAGIC);
    buf.extend_from_slice(&revision.to_le_bytes());
    buf.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    frame(&mut buf, start);
    for kv in kvs.values() {
        if buf.len() >= 1 << 16 {
            out.write_all(&buf)?;
            buf.clear();
        }
        let start = begin_frame(&mut buf);
        put_kv(
            &mut buf,
            kv.create_revision,
            kv.mod_revision,
            &kv.key,
            &kv.value,
        );
        frame(&mut buf, start);
    }
    out.write_all(&buf)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    if fsync {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&tmp, snapshot_path(dir, revision, "snap"))?;
    if fsync {
        sync_dir(dir)?;
    }
    remove_covered(dir, revision)
}

/// Removes older snapshots and the segments holding only revisions up to `revision`.
fn remove_covered(dir: &Path, revision: Revision) -> io::Result<()> {
    let listing = list_dir(dir)?;
    for (rev, path) in &listing.snapshots {
        if *rev < revision {
            fs::remove_file(path)?;
        }
    }
    for pair in listing.segments.windows(2) {
        if pair[1].0 <= revision + 1 {
            fs::remove_file(&pair[0].1)?;
        }
    }
    Ok(())
}

fn load_snapshot(path: &Path, revision: Revision) -> Result<BTreeMap<Arc<str>, KeyValue>> {
    let data = fs::read(path)?;
    let corrupt = |offset: usize, why: &str| {
        Error::Corrupt(format!(
            "snapshot {} at offset {offset}: {why}",
            path.display()
        ))
    };
    let (header, mut offset) = match read_frame(&data, 0) {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(corrupt(0, "empty file")),
        Err(why) => return Err(corrupt(0, why)),
    };
    if header.len() != 24 || &header[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(0, "bad header"));
    }
    if le_u64(header, 8) != Some(revision) {
        return Err(corrupt(0, "revision does not match the file name"));
    }
    let count = le_u64(header, 16).unwrap_or(0);
    let mut kvs = BTreeMap::new();
    loop {
        let (payload, next) = match read_frame(&data, offset) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(why) => return Err(corrupt(offset, why)),
        };
        let Some((create_revision, mod_revision, key, value)) = get_kv(payload) else {
            return Err(corrupt(offset, "bad entry"));
        };
        if mod_revision > revision || create_revision > mod_revision {
            return Err(corrupt(offset, "entry revision out of range"));
        }
        kvs.insert(
            key.clone(),
            KeyValue {
                key,
                value,
                create_revision,
                mod_revision,
            },
        );
        offset = next;
    }
    if kvs.len() as u64 != count {
        return Err(corrupt(offset, "entry count does not match the header"));
    }
    Ok(kvs)
}

/// What `recover` found: the state, and where the writer continues.
pub(crate) struct Recovered {
    pub state: State,
    /// The last segment, with its valid length; `None` when there is none yet.
    pub segment: Option<(PathBuf, u64)>,
}

/// Rebuilds the state (and the event history since the snapshot) from `dir`.
pub(crate) fn recover(dir: &Path, history: usize, history_bytes: usize) -> Result<Recovered> {
    let listing = list_dir(dir)?;
    let mut state = State::new(history, history_bytes);
    for (rev, path) in listing.snapshots.iter().rev() {
        match load_snapshot(path, *rev) {
            Ok(kvs) => {
                state.kvs = kvs;
                state.revision = *rev;
                state.compacted = *rev;
                break;
            }
            // An older snapshot plus the segments after it may still cover everything; a
            // missing segment is caught below.
            Err(e) => tracing::warn!(error = %e, "skipping unreadable snapshot"),
        }
    }
    let base = state.revision;
    let segments = &listing.segments;
    // The first segment that can hold revisions after the snapshot.
    let first = segments.iter().rposition(|(first, _)| *first <= base + 1);
    let first = match (first, segments.first()) {
        (Some(i), _) => i,
        (None, None) => {
            return Ok(Recovered {
                state,
                segment: None,
            });
        }
        (None, Some((rev, path))) => {
            return Err(Error::Corrupt(format!(
                "revisions {} to {} are missing: the oldest segment is {}",
                base + 1,
                rev - 1,
                path.display()
            )));
        }
    };
    for (_, path) in &segments[..first] {
        fs::remove_file(path)?;
    }
    let mut segment = None;
    for (i, (name_rev, path)) in segments.iter().enumerate().skip(first) {
        let last = i + 1 == segments.len();
        if i > first && *name_rev != state.revision + 1 {
            return Err(Error::Corrupt(format!(
                "segment {} should start at revision {}",
                path.display(),
                state.revision + 1
            )));
        }
        let valid = replay_segment(&mut state, path, last)?;
        if last {
            segment = Some((path.clone(), valid));
        }
    }
    Ok(Recovered { state, segment })
}

/// Applies a segment's records to `state`; returns the length of its valid prefix.
fn replay_segment(state: &mut State, path: &Path, last: bool) -> Result<u64> {
    let data = fs::read(path)?;
    let mut offset = 0;
    let bad = loop {
        let (payload, next) = match read_frame(&data, offset) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(offset as u64),
            Err(why) => break why,
        };
        let Some(record) = decode_record(payload) else {
            break "bad record";
        };
        if record.revision <= state.revision {
            // Already in the snapshot.
            offset = next;
            continue;
        }
        if record.revision != state.revision + 1 {
            break "revision out of sequence";
        }
        let prev = state.kvs.get(&record.key);
        let (kind, prev_mod) = match (record.delete, prev) {
            (true, None) => break "delete of a missing key",
            (true, Some(p)) => (EventType::Deleted, p.mod_revision),
            (false, Some(p)) => (EventType::Modified, p.mod_revision),
            (false, None) => (EventType::Added, 0),
        };
        let event = Event {
            kind,
            prev: prev.map(|p| p.value.clone()),
            kv: KeyValue {
                key: record.key,
                value: record.value,
                create_revision: record.create_revision,
                mod_revision: record.revision,
            },
        };
        state.apply(Change {
            event: Arc::new(event),
            prev_mod,
        });
        offset = next;
    };
    if !last {
        return Err(Error::Corrupt(format!(
            "segment {} at offset {offset}: {bad}",
            path.display()
        )));
    }
    tracing::warn!(
        segment = %path.display(),
        offset,
        reason = bad,
        dropped = data.len() - offset,
        "truncating the torn tail of the log"
    );
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(offset as u64)?;
    file.sync_all()?;
    Ok(offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/d");
        let path = segment_path(dir, 123);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "wal-00000000000000000123.log");
        assert_eq!(parse_name(name, "wal-", ".log"), Some(123));
        assert_eq!(parse_name("wal-123.log", "wal-", ".log"), None);
        assert_eq!(
            parse_name("wal-0000000000000000012x.log", "wal-", ".log"),
            None
        );
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let event = Event {
            kind: EventType::Deleted,
            prev: None,
            kv: KeyValue {
                key: Arc::from("/k/é"),
                value: Bytes::from_static(b"{}"),
                create_revision: 3,
                mod_revision: 9,
            },
        };
        let mut buf = Vec::new();
        encode_change(&mut buf, &event);
        let (payload, end) = read_frame(&buf, 0).unwrap().unwrap();
        assert_eq!(end, buf.len());
        let record = decode_record(payload).unwrap();
        assert!(record.delete);
        assert_eq!((record.revision, record.create_revision), (9, 3));
        assert_eq!((&*record.key, &record.value[..]), ("/k/é", &b"{}"[..]));
        assert_eq!(read_frame(&buf, end), Ok(None));

        for cut in 1..buf.len() {
            assert!(read_frame(&buf[..cut], 0).is_err(), "cut at {cut}");
        }
        for at in 0..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 1;
            let ok = read_frame(&bad, 0)
                .ok()
                .flatten()
                .and_then(|(p, _)| decode_record(p));
            assert!(ok.is_none(), "flipped byte {at}");
        }
        assert!(decode_record(&[OP_PUT, 1, 2]).is_none());
    }

    #[test]
    fn snapshots_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut kvs = BTreeMap::new();
        for i in 0..1000u64 {
            let key: Arc<str> = Arc::from(format!("/k/{i}"));
            let value = Bytes::from(format!("{{\"i\":{i}}}"));
            kvs.insert(
                key.clone(),
                KeyValue {
                    key,
                    value,
                    create_revision: i + 1,
                    mod_revision: i + 1,
                },
            );
        }
        write_snapshot(dir.path(), 1000, &kvs, false).unwrap();
        let path = snapshot_path(dir.path(), 1000, "snap");
        assert_eq!(load_snapshot(&path, 1000).unwrap(), kvs);
        assert!(
            load_snapshot(&path, 999).is_err(),
            "name and header must agree"
        );
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 3]).unwrap();
        assert!(matches!(load_snapshot(&path, 1000), Err(Error::Corrupt(_))));
    }
}
