//! The etcd backend: the same `Store` trait over an etcd v3 cluster (`etcd-client`, gRPC).
//!
//! Writes are etcd transactions whose compare clauses carry the trait's preconditions (absent
//! for `create`, mod revision for compare-and-swap), so etcd alone decides them and its revision
//! is the store's revision. Reads and watches are served from a mirror in memory, the same
//! `State` the embedded store keeps, fed by one etcd watch on the prefix (with previous
//! values): the trait's reads are synchronous, like the API server's watch cache over etcd.
//! A write resolves only after the mirror has applied its revision, so a caller reads its own
//! writes. The mirror stamps `metadata.resourceVersion` with each event's mod revision, as the
//! embedded store stamps at commit; etcd holds the values as written.
//!
//! A `Deleted` event carries the final state the caller handed to `delete` (etcd's delete
//! event has only the previous value): the caller's value waits in `pending_deletes` until the
//! mirror sees the delete.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType as EtcdEventType, GetOptions, KvClient, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use crate::embedded::state::{Change, State};
use crate::embedded::watch_state;
use crate::embedded::writer::stamp;
use crate::{Error, Event, EventType, KeyValue, ListOptions, ListResult, Result, Revision, Store};

/// Events the mirror keeps for watches that start at an older revision (as the embedded
/// store's default).
const HISTORY: usize = 10_000;
const HISTORY_BYTES: usize = 64 << 20;

pub struct EtcdStore {
    kv: KvClient,
    /// Prepended to every key in etcd.
    prefix: String,
    inner: Arc<Inner>,
    /// The revision the mirror has applied; the sender is gone once the mirror stopped.
    applied: watch::Receiver<Revision>,
    mirror: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    state: RwLock<State>,
    closed: AtomicBool,
    /// Final states of deletes in flight, by key (without the prefix).
    pending_deletes: Mutex<HashMap<Arc<str>, Value>>,
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn backend(e: etcd_client::Error) -> Error {
    Error::Backend(e.to_string())
}

/// etcd revisions are positive i64s.
fn rev(r: i64) -> Revision {
    r.max(0) as Revision
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`), loads every key under `prefix`
    /// into the mirror and starts following changes. Must run on a tokio runtime, which then
    /// hosts the mirror.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Arc<EtcdStore>> {
        let client = etcd_client::Client::connect(endpoints, None)
            .await
            .map_err(backend)?;
        let mut kv = client.kv_client();
        let mut watch_client = client.watch_client();
        let snapshot = kv
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(backend)?;
        let at = rev(snapshot.header().map_or(0, |h| h.revision()));
        let mut state = State::new(HISTORY, HISTORY_BYTES);
        for item in snapshot.kvs() {
            let key = strip(item.key(), prefix)?;
            let value = decode(&key, item.value(), rev(item.mod_revision()))?;
            state.kvs.insert(
                key.clone(),
                KeyValue {
                    key,
                    value,
                    create_revision: rev(item.create_revision()),
                    mod_revision: rev(item.mod_revision()),
                },
            );
        }
        state.revision = at;
        state.compacted = at;
        let inner = Arc::new(Inner {
            state: RwLock::new(state),
            closed: AtomicBool::new(false),
            pending_deletes: Mutex::new(HashMap::new()),
        });
        let stream = watch_client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_prev_key()
                        .with_start_revision(at as i64 + 1),
                ),
            )
            .await
            .map_err(backend)?;
        let (applied_tx, applied) = watch::channel(at);
        let mirror = tokio::spawn(follow(
            inner.clone(),
            prefix.to_string(),
            stream,
            applied_tx,
        ));
        Ok(Arc::new(EtcdStore {
            kv,
            prefix: prefix.to_string(),
            inner,
            applied,
            mirror: Mutex::new(Some(mirror)),
        }))
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Runs `txn`, waits until the mirror holds its revision, and returns the key's value as
    /// of that revision (for a delete: the stamped final state).
    fn write(
        &self,
        key: &str,
        txn: Txn,
        on_failure: fn(&str, Option<Revision>, &etcd_client::TxnResponse) -> Error,
        expected: Option<Revision>,
        deleting: bool,
    ) -> BoxFuture<'static, Result<KeyValue>> {
        if let Err(e) = self.check_open() {
            return futures::future::ready(Err(e)).boxed();
        }
        let mut kv = self.kv.clone();
        let mut applied = self.applied.clone();
        let inner = self.inner.clone();
        let key: Arc<str> = Arc::from(key);
        async move {
            let resp = kv.txn(txn).await.map_err(backend);
            let resp = match resp {
                Ok(resp) if resp.succeeded() => resp,
                other => {
                    if deleting {
                        lock(&inner.pending_deletes).remove(&key);
                    }
                    return Err(match other {
                        Ok(resp) => on_failure(&key, expected, &resp),
                        Err(e) => e,
                    });
                }
            };
            let revision = rev(resp.header().map_or(0, |h| h.revision()));
            applied
                .wait_for(|r| *r >= revision)
                .await
                .map_err(|_| Error::Backend("the etcd watch ended".into()))?;
            let state = inner.read();
            if deleting {
                // The mirror consumed the pending value; rebuild what it stamped.
                let create_revision = resp
                    .op_responses()
                    .into_iter()
                    .find_map(|op| match op {
                        TxnOpResponse::Delete(d) => {
                            d.prev_kvs().first().map(|p| p.create_revision())
                        }
                        _ => None,
                    })
                    .map_or(0, rev);
                let value = state
                    .history_event(revision, &key)
                    .map(|e| e.kv.value.clone())
                    .unwrap_or_default();
                return Ok(KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: revision,
                });
            }
            match state.kvs.get(&key) {
                Some(kv) if kv.mod_revision == revision => Ok(kv.clone()),
                // Changed again since: the value as of this write is in the history.
                _ => state
                    .history_event(revision, &key)
                    .map(|e| e.kv.clone())
                    .ok_or_else(|| Error::Backend(format!("write at {revision} not mirrored"))),
            }
        }
        .boxed()
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The key without the store's prefix.
fn strip(key: &[u8], prefix: &str) -> Result<Arc<str>> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(prefix))
        .map(Arc::from)
        .ok_or_else(|| Error::Corrupt(format!("etcd key {:?}", String::from_utf8_lossy(key))))
}

/// A stored value, stamped with its revision.
fn decode(key: &str, bytes: &[u8], revision: Revision) -> Result<Bytes> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Corrupt(format!("value of {key}: {e}")))?;
    stamp(value, revision).ok_or_else(|| Error::InvalidValue {
        key: key.to_string(),
    })
}

/// The mirror: applies etcd's events to the state in order, then publishes the revision.
async fn follow(
    inner: Arc<Inner>,
    prefix: String,
    mut stream: etcd_client::WatchStream,
    applied: watch::Sender<Revision>,
) {
    let outcome: Result<()> = async {
        while let Some(resp) = stream.message().await.map_err(backend)? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Err(Error::Backend(format!(
                    "the etcd watch was cancelled: {}",
                    resp.cancel_reason()
                )));
            }
            let mut last = None;
            for ev in resp.events() {
                let Some(item) = ev.kv() else { continue };
                let key = strip(item.key(), &prefix)?;
                let revision = rev(item.mod_revision());
                let prev = ev.prev_kv();
                let prev_value = prev
                    .map(|p| decode(&key, p.value(), rev(p.mod_revision())))
                    .transpose()?;
                let (kind, kv) = match ev.event_type() {
                    EtcdEventType::Put => (
                        if prev.is_some() {
                            EventType::Modified
                        } else {
                            EventType::Added
                        },
                        KeyValue {
                            key: key.clone(),
                            value: decode(&key, item.value(), revision)?,
                            create_revision: rev(item.create_revision()),
                            mod_revision: revision,
                        },
                    ),
                    EtcdEventType::Delete => {
                        let last = lock(&inner.pending_deletes).remove(&key);
                        let value = match last {
                            Some(last) => stamp(last, revision),
                            None => prev
                                .and_then(|p| serde_json::from_slice(p.value()).ok())
                                .and_then(|v| stamp(v, revision)),
                        }
                        .unwrap_or_default();
                        (
                            EventType::Deleted,
                            KeyValue {
                                key: key.clone(),
                                value,
                                create_revision: prev.map_or(0, |p| rev(p.create_revision())),
                                mod_revision: revision,
                            },
                        )
                    }
                };
                inner.write().apply(Change {
                    prev_mod: prev.map_or(0, |p| rev(p.mod_revision())),
                    event: Arc::new(Event {
                        kind,
                        kv,
                        prev: prev_value,
                    }),
                });
                last = Some(revision);
            }
            if let Some(r) = last {
                applied.send_replace(r);
            }
        }
        Err(Error::Backend("the etcd watch stream ended".into()))
    }
    .await;
    if let Err(e) = outcome
        && !inner.closed.load(Ordering::SeqCst)
    {
        tracing::error!("etcd store mirror stopped: {e}");
    }
    // Writers waiting on `applied` fail now; watchers' streams end.
    inner.closed.store(true, Ordering::SeqCst);
    inner.write().watchers.clear();
}

fn create_failed(key: &str, _: Option<Revision>, _: &etcd_client::TxnResponse) -> Error {
    Error::AlreadyExists {
        key: key.to_string(),
    }
}

/// Why an update or delete's compare failed: the key is absent, or its mod revision differs.
fn cas_failed(key: &str, expected: Option<Revision>, resp: &etcd_client::TxnResponse) -> Error {
    let current = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| rev(kv.mod_revision())),
        _ => None,
    });
    match (current, expected) {
        (Some(actual), Some(expected)) => Error::Conflict {
            key: key.to_string(),
            expected,
            actual,
        },
        _ => Error::NotFound {
            key: key.to_string(),
        },
    }
}

/// The value as etcd keeps it, refusing what the embedded store refuses.
fn encode(key: &str, value: &Value) -> Result<Vec<u8>> {
    match value {
        Value::Object(o) if o.get("metadata").is_none_or(Value::is_object) => {
            serde_json::to_vec(value).map_err(|_| Error::InvalidValue {
                key: key.to_string(),
            })
        }
        _ => Err(Error::InvalidValue {
            key: key.to_string(),
        }),
    }
}

impl EtcdStore {
    /// The compare clause of an update or delete.
    fn precondition(&self, full: &str, expected: Option<Revision>) -> Compare {
        match expected {
            Some(r) => Compare::mod_revision(full, CompareOp::Equal, r as i64),
            None => Compare::create_revision(full, CompareOp::Greater, 0),
        }
    }
}

impl Store for EtcdStore {
    fn revision(&self) -> Revision {
        self.inner.read().revision
    }

    fn oldest_revision(&self) -> Revision {
        self.inner.read().compacted + 1
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.check_open()?;
        Ok(self.inner.read().kvs.get(key).cloned())
    }

    fn list(&self, opts: &ListOptions<'_>) -> Result<ListResult> {
        self.check_open()?;
        self.inner.read().list(opts)
    }

    fn count(&self, prefix: &str) -> Result<u64> {
        self.check_open()?;
        Ok(self.inner.read().count(prefix))
    }

    fn create(&self, key: &str, value: Value) -> BoxFuture<'static, Result<KeyValue>> {
        let bytes = match encode(key, &value) {
            Ok(b) => b,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.as_str(), bytes, None)]);
        self.write(key, txn, create_failed, None, false)
    }

    fn update(
        &self,
        key: &str,
        value: Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'static, Result<KeyValue>> {
        let bytes = match encode(key, &value) {
            Ok(b) => b,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([self.precondition(&full, expected)])
            .and_then([TxnOp::put(full.as_str(), bytes, None)])
            .or_else([TxnOp::get(full.as_str(), None)]);
        self.write(key, txn, cas_failed, expected, false)
    }

    fn delete(
        &self,
        key: &str,
        last: Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'static, Result<KeyValue>> {
        if let Err(e) = encode(key, &last) {
            return futures::future::ready(Err(e)).boxed();
        }
        let full = self.full_key(key);
        lock(&self.inner.pending_deletes).insert(Arc::from(key), last);
        let txn = Txn::new()
            .when([self.precondition(&full, expected)])
            .and_then([TxnOp::delete(
                full.as_str(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full.as_str(), None)]);
        self.write(key, txn, cas_failed, expected, true)
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<crate::Watch> {
        let state = self.inner.write();
        // Checked under the lock: the mirror clears watchers under it once closed.
        self.check_open()?;
        watch_state(state, prefix, after)
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        self.check_open()?;
        self.inner.write().compact(revision)?;
        let mut kv = self.kv.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = kv.compact(revision as i64, None).await {
                    tracing::warn!("etcd compaction at {revision} failed: {e}");
                }
            });
        }
        Ok(())
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(mirror) = lock(&self.mirror).take() {
            mirror.abort();
        }
        self.inner.write().watchers.clear();
        futures::future::ready(Ok(())).boxed()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(mirror) = lock(&self.mirror).take() {
            mirror.abort();
        }
    }
}

/// An etcd server of its own on loopback ports, with its data in a temporary directory (on
/// disk, so writes are as durable as the embedded store's), for tests and benchmarks. Killed
/// by its PID and its directory removed when dropped.
pub struct LocalEtcd {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// The client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl LocalEtcd {
    /// Starts `etcd` from PATH and waits until it answers.
    pub async fn start() -> Result<LocalEtcd> {
        let free_port = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let dir = tempfile::tempdir()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = std::process::Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Backend(format!(
                    "starting etcd: {e} (install it: apt-get install etcd-server)"
                ))
            })?;
        let mut etcd = LocalEtcd {
            child,
            _dir: dir,
            endpoint,
        };
        let started = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(Error::Backend(format!("etcd exited with {status}")));
            }
            if let Ok(mut c) = etcd_client::Client::connect([&etcd.endpoint], None).await
                && c.status().await.is_ok()
            {
                return Ok(etcd);
            }
            if started.elapsed() > std::time::Duration::from_secs(30) {
                return Err(Error::Backend("etcd did not answer within 30 s".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
