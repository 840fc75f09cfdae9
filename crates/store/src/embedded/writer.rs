//! The embedded store's writer thread: group commit of queued writes, log rotation, snapshots.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use super::Options;
use super::format;
use super::state::{Change, State};
use crate::{Error, Event, EventType, KeyValue, Result, Revision};

/// The most writes committed in one batch: bounds latency, and the burst watchers must absorb.
const MAX_BATCH: usize = 512;

pub(crate) enum Op {
    Create(Value),
    Update(Value, Option<Revision>),
    Delete(Value, Option<Revision>),
}

pub(crate) struct Request {
    pub key: Arc<str>,
    pub op: Op,
    pub done: oneshot::Sender<Result<KeyValue>>,
}

pub(crate) enum Msg {
    Write(Request),
    /// Commit what is queued, stop, and then answer.
    Close(oneshot::Sender<()>),
}

/// What the store's handle and its writer share.
pub(crate) struct Shared {
    state: RwLock<State>,
    pub closed: AtomicBool,
    pub batches: AtomicU64,
    pub writes: AtomicU64,
    pub segment_bytes: AtomicU64,
    pub snapshots: AtomicU64,
}

impl Shared {
    pub fn new(state: State, segment_bytes: u64) -> Self {
        Shared {
            state: RwLock::new(state),
            closed: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            segment_bytes: AtomicU64::new(segment_bytes),
            snapshots: AtomicU64::new(0),
        }
    }

    // A panic while holding the lock cannot leave the state half-updated in a way readers
    // could not cope with, so poisoning is ignored.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    pub opts: Options,
    pub rx: Receiver<Msg>,
    /// The active segment, positioned at its end.
    pub file: File,
    pub segment_len: u64,
    pub buf: Vec<u8>,
    pub snapshotter: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn run(mut self) {
        let mut closers = Vec::new();
        let mut batch = Vec::new();
        loop {
            if closers.is_empty() {
                match self.rx.recv() {
                    Ok(msg) => take(msg, &mut batch, &mut closers),
                    Err(_) => break,
                }
            }
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(msg) => take(msg, &mut batch, &mut closers),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                if closers.is_empty() {
                    continue;
                }
                break;
            }
            if let Err(e) = self.commit(std::mem::take(&mut batch)) {
                tracing::error!(error = %e, "store log write failed, closing the store");
                break;
            }
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(snapshotter) = self.snapshotter.take() {
            let _ = snapshotter.join();
        }
        self.shared.write().watchers.clear();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Write(req) => {
                    let _ = req.done.send(Err(Error::Closed));
                }
                Msg::Close(done) => closers.push(done),
            }
        }
        for done in closers {
            let _ = done.send(());
        }
    }

    /// Validates, logs, syncs once, then publishes a batch and answers its requests.
    fn commit(&mut self, batch: Vec<Request>) -> io::Result<()> {
        let mut answers = Vec::with_capacity(batch.len());
        let mut changes = Vec::with_capacity(batch.len());
        self.buf.clear();
        {
            let state = self.shared.read();
            // The batch's own effects, which later requests in it must see.
            let mut pending: HashMap<Arc<str>, Option<KeyValue>> = HashMap::new();
            let mut next = state.revision + 1;
            for req in batch {
                let current = match pending.get(&req.key) {
                    Some(kv) => kv.clone(),
                    None => state.kvs.get(&req.key).cloned(),
                };
                match prepare(req.key.clone(), req.op, current, next) {
                    Ok(change) => {
                        format::encode_change(&mut self.buf, &change.event);
                        let kv = change.event.kv.clone();
                        let live = change.event.kind != EventType::Deleted;
                        pending.insert(req.key, live.then(|| kv.clone()));
                        changes.push(change);
                        answers.push((req.done, Ok(kv)));
                        next += 1;
                    }
                    Err(e) => answers.push((req.done, Err(e))),
                }
            }
        }
        if !changes.is_empty() {
            if let Err(e) = self.append() {
                for (done, _) in answers {
                    let _ = done.send(Err(Error::Io(io::Error::new(e.kind(), e.to_string()))));
                }
                return Err(e);
            }
            self.shared
                .writes
                .fetch_add(changes.len() as u64, Ordering::Relaxed);
            let mut state = self.shared.write();
            for change in changes {
                state.apply(change);
            }
        }
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        // Answered only now: even a failure must not reveal a write that is not yet durable.
        for (done, result) in answers {
            let _ = done.send(result);
        }
        self.rotate_if_full()
    }

    fn append(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        if self.opts.fsync {
            self.file.sync_data()?;
        }
        self.segment_len += self.buf.len() as u64;
        self.shared
            .segment_bytes
            .store(self.segment_len, Ordering::Relaxed);
        if self.buf.capacity() > 1 << 22 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Starts a new segment once the active one is full, and snapshots the state in the
    /// background so the old segments can go.
    fn rotate_if_full(&mut self) -> io::Result<()> {
        if self.segment_len < self.opts.segment_bytes {
            return Ok(());
        }
        let revision = self.shared.read().revision;
        let path = format::segment_path(&self.dir, revision + 1);
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        if self.opts.fsync {
            format::sync_dir(&self.dir)?;
        }
        self.segment_len = 0;
        self.shared.segment_bytes.store(0, Ordering::Relaxed);
        if self.snapshotter.as_ref().is_some_and(|s| !s.is_finished()) {
            // The next rotation's snapshot will cover these segments too.
            return Ok(());
        }
        let kvs = self.shared.read().kvs.clone();
        let (shared, dir, fsync) = (self.shared.clone(), self.dir.clone(), self.opts.fsync);
        let snapshotter = std::thread::Builder::new()
            .name("store-snapshot".into())
            .spawn(
                move || match format::write_snapshot(&dir, revision, &kvs, fsync) {
                    Ok(()) => {
                        shared.snapshots.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, revision, "store snapshot failed"),
                },
            )?;
        self.snapshotter = Some(snapshotter);
        Ok(())
    }
}

fn take(msg: Msg, batch: &mut Vec<Request>, closers: &mut Vec<oneshot::Sender<()>>) {
    match msg {
        Msg::Write(req) => batch.push(req),
        Msg::Close(done) => closers.push(done),
    }
}

/// Checks a write against the key's current value and builds its change at `revision`.
fn prepare(key: Arc<str>, op: Op, current: Option<KeyValue>, revision: Revision) -> Result<Change> {
    let check = |current: &KeyValue, expected: Option<Revision>| match expected {
        Some(expected) if expected != current.mod_revision => Err(Error::Conflict {
            key: key.to_string(),
            expected,
            actual: current.mod_revision,
        }),
        _ => Ok(()),
    };
    let (kind, value, prev) = match (op, current) {
        (Op::Create(_), Some(_)) => {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        (Op::Create(value), None) => (EventType::Added, value, None),
        (Op::Update(..) | Op::Delete(..), None) => {
            return Err(Error::NotFound {
                key: key.to_string(),
            });
        }
        (Op::Update(value, expected), Some(current)) => {
            check(&current, expected)?;
            (EventType::Modified, value, Some(current))
        }
        (Op::Delete(value, expected), Some(current)) => {
            check(&current, expected)?;
            (EventType::Deleted, value, Some(current))
        }
    };
    // Records are framed with a u32 length.
    let Some(value) = stamp(value, revision).filter(|v| v.len() + key.len() < 1 << 31) else {
        return Err(Error::InvalidValue {
            key: key.to_string(),
        });
    };
    let create_revision = prev.as_ref().map_or(revision, |p| p.create_revision);
    Ok(Change {
        prev_mod: prev.as_ref().map_or(0, |p| p.mod_revision),
        event: Arc::new(Event {
            kind,
            prev: prev.map(|p| p.value),
            kv: KeyValue {
                key,
                value,
                create_revision,
                mod_revision: revision,
            },
        }),
    })
}

/// Sets `metadata.resourceVersion` and serializes; `None` unless `value` is an object whose
/// `metadata`, if present, is an object too.
pub(crate) fn stamp(mut value: Value, revision: Revision) -> Option<Bytes> {
    let Value::Object(object) = &mut value else {
        return None;
    };
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let Value::Object(metadata) = metadata else {
        return None;
    };
    metadata.insert(
        "resourceVersion".into(),
        Value::String(revision.to_string()),
    );
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::stamp;

    #[test]
    fn stamps_resource_version() {
        let stamped = stamp(json!({"metadata": {"name": "a"}, "x": 1}), 42).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(
            value,
            json!({"metadata": {"name": "a", "resourceVersion": "42"}, "x": 1})
        );
        assert!(stamp(json!({"metadata": []}), 1).is_none());
        assert!(stamp(json!(1), 1).is_none());
    }
}
