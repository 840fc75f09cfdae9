//! The embedded store: the whole state in memory, made durable by a write-ahead log.
//!
//! Reads (`get`, `list`, `count`, `watch`) are served from memory under a read lock. Writes go
//! to one writer thread that commits whatever is queued as a batch: validate each request in
//! order (later ones see earlier ones' effects), assign consecutive revisions, stamp
//! `metadata.resourceVersion`, append the records, sync once, and only then make the batch
//! visible to readers and watchers and answer the callers. Failed requests consume no revision.
//!
//! When the active segment outgrows `Options::segment_bytes`, the writer starts a new one and a
//! background thread writes a snapshot of the state, after which older segments and snapshots
//! are deleted. Opening replays the newest valid snapshot and the segments after it, rebuilding
//! the event history from the replayed records; the history therefore starts at the snapshot
//! after a restart. File formats are described in `embedded/format.rs`.
//!
//! Watches: the history of recent events (at most `Options::history`) lets a watch start at an
//! older revision. A watcher gets a bounded channel; replay and registration happen under the
//! state lock, so nothing is missed or duplicated between them. Live events are handed over
//! with `try_send`, and a watcher whose channel is full is dropped (its stream ends) instead of
//! stalling writes. A replay too large for the channel is fed by a forwarding task on the
//! caller's tokio runtime (or a thread when there is none) that sends the replay and then the
//! live events from a second bounded channel.

mod format;
pub(crate) mod state;
pub(crate) mod writer;

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Event, KeyValue, ListOptions, ListResult, Result, Revision, Store, Watch};
use writer::{Msg, Op, Request, Shared, Writer};

/// Events a watcher may have queued before it is dropped as too slow.
pub const WATCH_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct Options {
    /// Sync the log before acknowledging writes. Off only for tests and throwaway stores.
    pub fsync: bool,
    /// Segment size that triggers a rotation and a snapshot.
    pub segment_bytes: u64,
    /// How many events to retain for watches and lists at older revisions.
    pub history: usize,
    /// The most bytes of object values the retained events may hold (the oldest go first);
    /// with large objects this, not `history`, bounds the memory.
    pub history_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: true,
            segment_bytes: 64 << 20,
            history: 100_000,
            history_bytes: 64 << 20,
        }
    }
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub revision: Revision,
    pub compacted: Revision,
    pub keys: usize,
    pub watchers: usize,
    /// Commit batches so far (each at most one sync).
    pub batches: u64,
    /// Records written so far.
    pub writes: u64,
    /// Bytes in the active segment.
    pub segment_bytes: u64,
    /// Snapshots completed so far.
    pub snapshots: u64,
}

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held for the store's lifetime: its lock keeps other processes out.
    _lock: File,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, recovering what a previous run left there.
    pub fn open(dir: &Path, opts: Options) -> Result<Arc<EmbeddedStore>> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked(dir.display().to_string())),
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        let recovered = format::recover(dir, opts.history, opts.history_bytes)?;
        let (file, segment_len) = match recovered.segment {
            Some((path, len)) => (OpenOptions::new().append(true).open(path)?, len),
            None => {
                let path = format::segment_path(dir, recovered.state.revision + 1);
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(path)?;
                format::sync_dir(dir)?;
                (file, 0)
            }
        };
        let shared = Arc::new(Shared::new(recovered.state, segment_len));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            dir: dir.to_path_buf(),
            opts,
            rx,
            file,
            segment_len,
            buf: Vec::new(),
            snapshotter: None,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())?;
        Ok(Arc::new(EmbeddedStore {
            shared,
            tx,
            writer: Mutex::new(Some(writer)),
            _lock: lock,
        }))
    }

    pub fn stats(&self) -> Stats {
        let state = self.shared.read();
        Stats {
            revision: state.revision,
            compacted: state.compacted,
            keys: state.kvs.len(),
            watchers: state.watchers.len(),
            batches: self.shared.batches.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            segment_bytes: self.shared.segment_bytes.load(Ordering::Relaxed),
            snapshots: self.shared.snapshots.load(Ordering::Relaxed),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn submit(&self, key: &str, op: Op) -> BoxFuture<'static, Result<KeyValue>> {
        let (done, answer) = oneshot::channel();
        let request = Request {
            key: Arc::from(key),
            op,
            done,
        };
        if self.check_open().is_err() || self.tx.send(Msg::Write(request)).is_err() {
            return futures::future::ready(Err(Error::Closed)).boxed();
        }
        // A dropped answer means the writer stopped before getting to the request.
        answer
            .map(|answer| answer.unwrap_or(Err(Error::Closed)))
            .boxed()
    }

    /// Asks the writer to stop; returns its thread handle the first time.
    fn stop(&self) -> (oneshot::Receiver<()>, Option<JoinHandle<()>>) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let (done, stopped) = oneshot::channel();
        let _ = self.tx.send(Msg::Close(done));
        (
            stopped,
            self.writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        )
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Joined so queued writes are committed and the lock is free once the store is gone.
        if let (_, Some(writer)) = self.stop() {
            let _ = writer.join();
        }
    }
}

impl Store for EmbeddedStore {
    fn revision(&self) -> Revision {
        self.shared.read().revision
    }

    fn oldest_revision(&self) -> Revision {
        self.shared.read().compacted + 1
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.check_open()?;
        Ok(self.shared.read().kvs.get(key).cloned())
    }

    fn list(&self, opts: &ListOptions<'_>) -> Result<ListResult> {
        self.check_open()?;
        self.shared.read().list(opts)
    }

    fn count(&self, prefix: &str) -> Result<u64> {
        self.check_open()?;
        Ok(self.shared.read().count(prefix))
    }

    fn create(&self, key: &str, value: Value) -> BoxFuture<'static, Result<KeyValue>> {
        self.submit(key, Op::Create(value))
    }

    fn update(
        &self,
        key: &str,
        value: Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'static, Result<KeyValue>> {
        self.submit(key, Op::Update(value, expected))
    }

    fn delete(
        &self,
        key: &str,
        last: Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'static, Result<KeyValue>> {
        self.submit(key, Op::Delete(last, expected))
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let state = self.shared.write();
        // Checked under the lock: the writer clears watchers under it after setting `closed`.
        self.check_open()?;
        watch_state(state, prefix, after)
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        self.check_open()?;
        self.shared.write().compact(revision)
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let (stopped, writer) = self.stop();
        async move {
            let _ = stopped.await;
            if let Some(writer) = writer {
                // Already finished: it answered `stopped` on its way out.
                let _ = writer.join();
            }
            Ok(())
        }
        .boxed()
    }
}

/// A new watcher of `prefix` on `state` (locked by the caller, so nothing is missed or
/// duplicated between the replay after `after` and the live events).
pub(crate) fn watch_state(
    mut state: std::sync::RwLockWriteGuard<'_, state::State>,
    prefix: &str,
    after: Revision,
) -> Result<Watch> {
    let (tx, rx) = mpsc::channel(WATCH_CAPACITY);
    let replay = state.replay(prefix, after)?;
    if replay.len() <= WATCH_CAPACITY / 2 {
        for event in replay {
            // Cannot fail: the channel is new and has room.
            let _ = tx.try_send(event);
        }
        state.watchers.add(prefix, tx);
        return Ok(Watch { rx });
    }
    let (live_tx, live_rx) = mpsc::channel(WATCH_CAPACITY);
    state.watchers.add(prefix, live_tx);
    drop(state);
    forward(replay, live_rx, tx)?;
    Ok(Watch { rx })
}

/// Feeds `out` with `replay`, then with the live events.
fn forward(
    replay: Vec<Arc<Event>>,
    mut live: mpsc::Receiver<Arc<Event>>,
    out: mpsc::Sender<Arc<Event>>,
) -> Result<()> {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            for event in replay {
                if out.send(event).await.is_err() {
                    return;
                }
            }
            loop {
                // Watching `closed` too lets the store's sweep notice a client that left
                // while no events came.
                let event = tokio::select! {
                    event = live.recv() => event,
                    () = out.closed() => None,
                };
                let Some(event) = event else { return };
                if out.send(event).await.is_err() {
                    return;
                }
            }
        });
        return Ok(());
    }
    std::thread::Builder::new()
        .name("store-watch".into())
        .spawn(move || {
            for event in replay {
                if out.blocking_send(event).is_err() {
                    return;
                }
            }
            while let Some(event) = live.blocking_recv() {
                if out.blocking_send(event).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
