//! The embedded store's in-memory state: current objects, the event history, and watchers.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{Error, Event, EventType, KeyValue, ListOptions, ListResult, Result, Revision};

/// A committed write: the event watchers see, plus what list-at-revision needs to undo it.
pub(crate) struct Change {
    pub event: Arc<Event>,
    /// The mod revision of the value in `event.prev` (0 for `Added`).
    pub prev_mod: Revision,
}

impl Change {
    /// The value bytes this change keeps alive (counted even when shared with the live state).
    fn bytes(&self) -> usize {
        self.event.kv.value.len() + self.event.prev.as_ref().map_or(0, |p| p.len())
    }

    /// The key's value just before this change.
    fn before(&self) -> Option<KeyValue> {
        let kv = &self.event.kv;
        self.event.prev.as_ref().map(|value| KeyValue {
            key: kv.key.clone(),
            value: value.clone(),
            create_revision: kv.create_revision,
            mod_revision: self.prev_mod,
        })
    }
}

pub(crate) struct State {
    pub kvs: BTreeMap<Arc<str>, KeyValue>,
    pub revision: Revision,
    /// History holds the changes with revisions in `(compacted, revision]`.
    pub compacted: Revision,
    history: VecDeque<Change>,
    history_cap: usize,
    /// Value bytes the history holds, and the most it may.
    history_bytes: usize,
    history_bytes_cap: usize,
    pub watchers: Watchers,
}

impl State {
    pub fn new(history_cap: usize, history_bytes_cap: usize) -> Self {
        State {
            kvs: BTreeMap::new(),
            revision: 0,
            compacted: 0,
            history: VecDeque::new(),
            history_cap,
            history_bytes: 0,
            history_bytes_cap,
            watchers: Watchers::default(),
        }
    }

    /// Makes a durable change visible: to readers, to the history, and to watchers.
    pub fn apply(&mut self, change: Change) {
        let kv = &change.event.kv;
        if change.event.kind == EventType::Deleted {
            self.kvs.remove(&kv.key);
        } else {
            self.kvs.insert(kv.key.clone(), kv.clone());
        }
        self.revision = kv.mod_revision;
        self.watchers.publish(&change.event);
        self.history_bytes += change.bytes();
        self.history.push_back(change);
        // Keep the newest event whatever its size: watchers resume from it.
        while self.history.len() > 1
            && (self.history.len() > self.history_cap
                || self.history_bytes > self.history_bytes_cap)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes -= old.bytes();
                self.compacted = old.event.kv.mod_revision;
            }
        }
    }

    pub fn compact(&mut self, revision: Revision) -> Result<()> {
        if revision > self.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision <= self.compacted {
            return Ok(());
        }
        let drop = self
            .history
            .partition_point(|c| c.event.kv.mod_revision <= revision);
        for old in self.history.drain(..drop) {
            self.history_bytes -= old.bytes();
        }
        self.compacted = revision;
        Ok(())
    }

    /// Fails unless the state at `revision` can be rebuilt from the history.
    fn check_retained(&self, revision: Revision) -> Result<()> {
        if revision > self.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision < self.compacted {
            return Err(Error::Compacted {
                requested: revision,
                oldest: self.compacted + 1,
            });
        }
        Ok(())
    }

    /// The retained changes after `revision`, oldest first.
    fn changes_after(&self, revision: Revision) -> impl DoubleEndedIterator<Item = &Change> {
        let start = self
            .history
            .partition_point(|c| c.event.kv.mod_revision <= revision);
        self.history.range(start..)
    }

    /// The retained event of `key`'s change at `revision`.
    pub fn history_event(&self, revision: Revision, key: &str) -> Option<&Event> {
        self.changes_after(revision.saturating_sub(1))
            .take_while(|c| c.event.kv.mod_revision == revision)
            .find(|c| &*c.event.kv.key == key)
            .map(|c| &*c.event)
    }

    /// The events after `after` under `prefix`, for a new watcher.
    pub fn replay(&self, prefix: &str, after: Revision) -> Result<Vec<Arc<Event>>> {
        if after > self.revision {
            return Err(Error::FutureRevision {
                requested: after,
                current: self.revision,
            });
        }
        if after < self.compacted {
            return Err(Error::Compacted {
                requested: after,
                oldest: self.compacted + 1,
            });
        }
        Ok(self
            .changes_after(after)
            .filter(|c| c.event.kv.key.starts_with(prefix))
            .map(|c| c.event.clone())
            .collect())
    }

    pub fn count(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.kvs.len() as u64;
        }
        self.range(prefix, None).count() as u64
    }

    /// Current values with keys under `prefix` and after `start_after`, in key order.
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a KeyValue> + 'a {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.kvs
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(_, kv)| kv)
            .take_while(move |kv| kv.key.starts_with(prefix))
    }

    pub fn list(&self, opts: &ListOptions<'_>) -> Result<ListResult> {
        let revision = opts.revision.unwrap_or(self.revision);
        self.check_retained(revision)?;
        let mut out = Collector::new(opts);
        if revision == self.revision {
            self.range(opts.prefix, opts.start_after)
                .for_each(|kv| out.push(kv));
            return Ok(out.finish(revision));
        }
        // Roll back the later changes, newest first, so each key ends at its value as of
        // `revision` (`None`: absent then).
        let in_range = |key: &str| {
            key.starts_with(opts.prefix) && opts.start_after.is_none_or(|after| key > after)
        };
        let mut rolled: BTreeMap<Arc<str>, Option<KeyValue>> = BTreeMap::new();
        for change in self.changes_after(revision).rev() {
            if in_range(&change.event.kv.key) {
                rolled.insert(change.event.kv.key.clone(), change.before());
            }
        }
        let mut now = self.range(opts.prefix, opts.start_after).peekable();
        let mut then = rolled.iter().peekable();
        loop {
            let order = match (now.peek(), then.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(kv), Some((key, _))) => kv.key.cmp(key),
            };
            if order != Ordering::Greater {
                let kv = now.next();
                if order == Ordering::Less {
                    kv.into_iter().for_each(|kv| out.push(kv));
                    continue;
                }
            }
            if let Some((_, Some(kv))) = then.next() {
                out.push(kv);
            }
        }
        Ok(out.finish(revision))
    }
}

/// Gathers list items: filter, then limit, then count the rest.
struct Collector<'o> {
    items: Vec<KeyValue>,
    limit: usize,
    filter: Option<&'o (dyn Fn(&KeyValue) -> bool + Sync)>,
    remaining: u64,
}

impl<'o> Collector<'o> {
    fn new(opts: &ListOptions<'o>) -> Self {
        Collector {
            items: Vec::new(),
            limit: opts.limit,
            filter: opts.filter,
            remaining: 0,
        }
    }

    fn push(&mut self, kv: &KeyValue) {
        if self.filter.is_some_and(|keep| !keep(kv)) {
            return;
        }
        if self.limit == 0 || self.items.len() < self.limit {
            self.items.push(kv.clone());
        } else {
            self.remaining += 1;
        }
    }

    fn finish(self, revision: Revision) -> ListResult {
        ListResult {
            items: self.items,
            revision,
            more: self.remaining > 0,
            remaining: self.remaining,
        }
    }
}

/// Live watchers, grouped by prefix so an event costs one lookup per distinct prefix length
/// rather than a scan of every watcher.
#[derive(Default)]
pub(crate) struct Watchers {
    by_prefix: HashMap<Box<str>, Vec<mpsc::Sender<Arc<Event>>>>,
    /// How many distinct prefixes have each length.
    lengths: BTreeMap<usize, usize>,
    count: usize,
    /// Watchers whose receiver is gone are removed when they next miss an event, or by a
    /// sweep once the count reaches this.
    sweep_at: usize,
}

impl Watchers {
    pub fn add(&mut self, prefix: &str, tx: mpsc::Sender<Arc<Event>>) {
        if self.count >= self.sweep_at {
            self.sweep();
        }
        let txs = self.by_prefix.entry(prefix.into()).or_insert_with(|| {
            *self.lengths.entry(prefix.len()).or_default() += 1;
            Vec::new()
        });
        txs.push(tx);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    fn sweep(&mut self) {
        let mut emptied = Vec::new();
        self.by_prefix.retain(|prefix, txs| {
            txs.retain(|tx| !tx.is_closed());
            if txs.is_empty() {
                emptied.push(prefix.len());
            }
            !txs.is_empty()
        });
        self.forget_lengths(emptied);
        self.count = self.by_prefix.values().map(Vec::len).sum();
        self.sweep_at = (self.count * 2).max(64);
    }

    fn forget_lengths(&mut self, emptied: Vec<usize>) {
        for len in emptied {
            if let Some(n) = self.lengths.get_mut(&len) {
                *n -= 1;
                if *n == 0 {
                    self.lengths.remove(&len);
                }
            }
        }
    }

    /// Hands `event` to every watcher of a prefix of its key. One that cannot take it at once
    /// is dropped, closing its stream: a slow reader must not stall writes, and it re-watches
    /// from the last revision it saw.
    fn publish(&mut self, event: &Arc<Event>) {
        let key = &*event.kv.key;
        let mut emptied = Vec::new();
        for &len in self.lengths.keys() {
            if len > key.len() {
                break;
            }
            let Some(prefix) = key.get(..len) else {
                continue;
            };
            let Some(txs) = self.by_prefix.get_mut(prefix) else {
                continue;
            };
            let before = txs.len();
            txs.retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(prefix, "dropping a watcher that fell behind");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            self.count -= before - txs.len();
            if txs.is_empty() {
                self.by_prefix.remove(prefix);
                emptied.push(len);
            }
        }
        self.forget_lengths(emptied);
    }

    /// Ends every watch stream.
    pub fn clear(&mut self) {
        *self = Watchers::default();
    }
}
