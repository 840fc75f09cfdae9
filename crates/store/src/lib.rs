//! The etcd role: a revisioned key-value store of Kubernetes objects behind the `Store` trait.
//!
//! Every write bumps one global revision (the objects' `resourceVersion`). Values are JSON
//! objects; the store stamps `metadata.resourceVersion` with the write's revision before it
//! keeps them, so readers get bytes they can serve as they are.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

pub mod embedded;
pub mod etcd;

pub use embedded::{EmbeddedStore, Options};
pub use etcd::EtcdStore;

/// A global revision: every successful write gets the next one.
pub type Revision = u64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `create` found the key already present.
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// `update`/`delete` found no such key.
    #[error("key {key} not found")]
    NotFound { key: String },
    /// A compare-and-swap precondition failed: the key's mod revision is `actual`.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    /// A read or watch asked for history older than the retained window.
    #[error("required revision {requested} has been compacted, oldest retained is {oldest}")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// A read asked for a revision the store has not reached yet.
    #[error("revision {requested} is in the future, current is {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("value for {key} is not a JSON object")]
    InvalidValue { key: String },
    #[error("store i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store is closed")]
    Closed,
    /// The backend (etcd) failed or could not be reached.
    #[error("store backend failed: {0}")]
    Backend(String),
    /// Another process (or another open in this one) holds the store directory.
    #[error("store directory {0} is locked by another process")]
    Locked(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One stored object, as of its last write.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: Arc<str>,
    /// The object as JSON, with `metadata.resourceVersion` equal to `mod_revision`.
    pub value: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// A change, as a watcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventType,
    /// For `Deleted`: the object's final state, stamped with the delete's revision.
    pub kv: KeyValue,
    /// The value before this change (absent for `Added`).
    pub prev: Option<Bytes>,
}

/// The answer to a `list`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListResult {
    /// Items in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// More items remain after the last one returned (because of `limit`).
    pub more: bool,
    /// How many items remain after the last one returned, when `more`.
    pub remaining: u64,
}

/// What a list reads.
#[derive(Clone, Default)]
pub struct ListOptions<'a> {
    /// Only keys starting with this prefix.
    pub prefix: &'a str,
    /// Start strictly after this key (for pagination).
    pub start_after: Option<&'a str>,
    /// At most this many items; 0 means no limit.
    pub limit: usize,
    /// Read as of this revision (must be inside the retained window); `None` means current.
    pub revision: Option<Revision>,
    /// Keep only the values this returns true for (applied before `limit`).
    pub filter: Option<&'a (dyn Fn(&KeyValue) -> bool + Sync)>,
}

impl std::fmt::Debug for ListOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListOptions")
            .field("prefix", &self.prefix)
            .field("start_after", &self.start_after)
            .field("limit", &self.limit)
            .field("revision", &self.revision)
            .field("filter", &self.filter.map(|_| "<fn>"))
            .finish()
    }
}

/// A stream of changes after a revision, in revision order. Ends when the store closes or the
/// watcher falls too far behind (then the client re-watches from its last seen revision).
pub struct Watch {
    pub rx: tokio::sync::mpsc::Receiver<Arc<Event>>,
}

/// The store every API server talks to. Only the API server uses it. Object-safe, so the
/// server holds an `Arc<dyn Store>`; writes return futures that resolve once durable.
pub trait Store: Send + Sync + 'static {
    /// The current revision (of the last acknowledged write).
    fn revision(&self) -> Revision;
    /// The oldest revision a watch or a list at a revision can start from.
    fn oldest_revision(&self) -> Revision;

    fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    fn list(&self, opts: &ListOptions<'_>) -> Result<ListResult>;
    /// How many keys have this prefix now.
    fn count(&self, prefix: &str) -> Result<u64>;

    /// Store a new key. Fails with `AlreadyExists` if the key is present.
    fn create(&self, key: &str, value: serde_json::Value) -> BoxFuture<'static, Result<KeyValue>>;
    /// Replace a key's value; with `expected` set, only if the key's mod revision equals it.
    fn update(
        &self,
        key: &str,
        value: serde_json::Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'static, Result<KeyValue>>;
    /// Remove a key; with `expected` set, only if the key's mod revision equals it. `last` is the
    /// object's final state, stamped and handed to watchers in the `Deleted` event.
    fn delete(
        &self,
        key: &str,
        last: serde_json::Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'static, Result<KeyValue>>;

    /// Changes to keys under `prefix` with a revision greater than `after`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch>;
    /// Forget history at or before `revision` (watch/list-at-revision start points).
    fn compact(&self, revision: Revision) -> Result<()>;
    /// Flush and stop: later calls fail with `Closed`.
    fn close(&self) -> BoxFuture<'static, Result<()>>;
}
