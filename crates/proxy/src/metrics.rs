//! What the proxy measures about itself: how long syncs take and how long a change waits
//! from its watch event to the transaction that carries it (rule programming latency).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Samples kept per series; older ones are dropped.
const KEEP: usize = 10_000;

/// Shared with whoever wants the figures (the agent's metrics, `skiff bench`, tests).
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    syncs: u64,
    full_syncs: u64,
    failures: u64,
    sync: VecDeque<Duration>,
    latency: VecDeque<Duration>,
    chains: usize,
    elements: usize,
}

/// Percentiles of one series, in milliseconds.
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
        // Nearest rank: the smallest sample with at least q of them at or below it.
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
    /// Transactions applied (full ones included).
    pub syncs: u64,
    pub full_syncs: u64,
    /// Transactions nft refused (each is followed by a full resync).
    pub failures: u64,
    /// From starting to compute the rules to nft having applied them.
    pub sync: Summary,
    /// From a Service or EndpointSlice watch event to the transaction that carried it.
    pub latency: Summary,
    /// Size of the programmed per-service part of the table.
    pub chains: usize,
    pub elements: usize,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn push(q: &mut VecDeque<Duration>, d: Duration) {
    if q.len() == KEEP {
        q.pop_front();
    }
    q.push_back(d);
}

impl Metrics {
    pub(crate) fn applied(
        &self,
        full: bool,
        took: Duration,
        latencies: impl IntoIterator<Item = Duration>,
        size: (usize, usize),
    ) {
        let mut m = lock(&self.inner);
        m.syncs += 1;
        if full {
            m.full_syncs += 1;
        }
        push(&mut m.sync, took);
        for l in latencies {
            push(&mut m.latency, l);
        }
        (m.chains, m.elements) = size;
    }

    pub(crate) fn failed(&self) {
        lock(&self.inner).failures += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        let m = lock(&self.inner);
        Snapshot {
            syncs: m.syncs,
            full_syncs: m.full_syncs,
            failures: m.failures,
            sync: Summary::of(m.sync.iter().copied()),
            latency: Summary::of(m.latency.iter().copied()),
            chains: m.chains,
            elements: m.elements,
        }
    }

    /// Forgets the samples (not the counters), e.g. between bench phases.
    pub fn clear_samples(&self) {
        let mut m = lock(&self.inner);
        m.sync.clear();
        m.latency.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of((1..=100).map(Duration::from_millis));
        assert_eq!(
            (s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        let one = Summary::of([Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(Summary::of([]), Summary::default());
    }

    #[test]
    fn samples_are_bounded() {
        let m = Metrics::default();
        for _ in 0..KEEP + 5 {
            m.applied(
                false,
                Duration::from_millis(1),
                [Duration::from_millis(2)],
                (3, 4),
            );
        }
        let s = m.snapshot();
        assert_eq!(s.syncs, (KEEP + 5) as u64);
        assert_eq!(s.sync.count, KEEP);
        assert_eq!((s.chains, s.elements), (3, 4));
    }
}
