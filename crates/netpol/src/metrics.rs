//! What the enforcer measures about itself: how long a change waits from its watch event to
//! the transaction that carries it, and how long computing and applying a transaction takes.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Samples kept per series; older ones are dropped.
const KEEP: usize = 10_000;

/// Shared with whoever wants the figures (the agent, tests).
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    syncs: u64,
    full_syncs: u64,
    failures: u64,
    latency: VecDeque<Duration>,
    sync: VecDeque<Duration>,
    elements: usize,
    rules: usize,
}

/// Percentiles of one series, in milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Summary {
        let mut v: Vec<f64> = samples
            .into_iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Summary {
            count: v.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: v[v.len() - 1],
        }
    }
}

/// The figures at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Transactions applied, full rewrites included.
    pub syncs: u64,
    pub full_syncs: u64,
    /// Transactions nft refused (each is retried as a full rewrite).
    pub failures: u64,
    /// From the first watch event of a burst to the transaction that carried it.
    pub latency: Summary,
    /// From reading the caches to nft having applied the transaction.
    pub sync: Summary,
    /// Size of the table last applied: set and map elements, and rules.
    pub elements: usize,
    pub rules: usize,
}

fn push(series: &mut VecDeque<Duration>, d: Duration) {
    if series.len() == KEEP {
        series.pop_front();
    }
    series.push_back(d);
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn applied(
        &self,
        full: bool,
        latency: Duration,
        sync: Duration,
        size: (usize, usize),
    ) {
        let mut m = self.lock();
        m.syncs += 1;
        m.full_syncs += u64::from(full);
        push(&mut m.latency, latency);
        push(&mut m.sync, sync);
        (m.elements, m.rules) = size;
    }

    pub(crate) fn failed(&self) {
        self.lock().failures += 1;
    }

    /// Drops the latency and sync-time samples (counters stay): for measuring one phase.
    pub fn clear_samples(&self) {
        let mut m = self.lock();
        m.latency.clear();
        m.sync.clear();
    }

    pub fn snapshot(&self) -> Snapshot {
        let m = self.lock();
        Snapshot {
            syncs: m.syncs,
            full_syncs: m.full_syncs,
            failures: m.failures,
            latency: Summary::of(m.latency.iter().copied()),
            sync: Summary::of(m.sync.iter().copied()),
            elements: m.elements,
            rules: m.rules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_use_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let s = Summary::of((1..=100).map(ms));
        assert_eq!(
            (s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Summary::of([]), Summary::default());
        let m = Metrics::default();
        m.applied(true, ms(5), ms(3), (10, 4));
        m.failed();
        let snap = m.snapshot();
        assert_eq!(
            (
                snap.syncs,
                snap.full_syncs,
                snap.failures,
                snap.elements,
                snap.rules
            ),
            (1, 1, 1, 10, 4)
        );
        assert_eq!(snap.latency.max_ms, 5.0);
    }
}
