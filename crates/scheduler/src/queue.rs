//! The scheduling queue: activeQ ordered by priority then creation time, backoffQ for pods
//! waiting out their exponential backoff (1s doubling to 10s), and unschedulable pods parked
//! until a cluster event that might help them (or 5 minutes) moves them back.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::types::PodInfo;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Upstream's podMaxInUnschedulablePodsDuration.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    Active,
    Backoff,
    Unschedulable,
    /// Popped and being scheduled or bound.
    InFlight,
}

struct Entry {
    info: Arc<PodInfo>,
    attempts: u32,
    at: Where,
    /// Bumped every time the entry moves, to invalidate stale heap items.
    generation: u64,
    backoff_until: Instant,
    unschedulable_since: Instant,
    /// Plugins that rejected it in its last attempt, for event-based moves.
    rejected_by: BTreeSet<&'static str>,
    /// The move counter when it was popped.
    popped_at_move: u64,
}

#[derive(PartialEq, Eq)]
struct ActiveItem {
    priority: i32,
    created: jiff::Timestamp,
    seq: u64,
    key: String,
    generation: u64,
}

impl Ord for ActiveItem {
    fn cmp(&self, o: &Self) -> Ordering {
        // Max-heap: higher priority first, then older pods, then FIFO.
        self.priority
            .cmp(&o.priority)
            .then(o.created.cmp(&self.created))
            .then(o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveItem {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Which kind of cluster change happened, for deciding whom to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    NodeAdd,
    NodeUpdate,
    AssignedPodAdd,
    AssignedPodUpdate,
    AssignedPodDelete,
    /// Something unknown changed (a relist, a forgotten binding): retry everyone.
    Any,
}

impl ClusterEvent {
    /// Whether a pod rejected by `plugins` could become schedulable after this event
    /// (a coarse version of upstream's queueing hints).
    fn may_help(self, plugins: &BTreeSet<&'static str>) -> bool {
        match self {
            ClusterEvent::NodeAdd
            | ClusterEvent::NodeUpdate
            | ClusterEvent::AssignedPodDelete
            | ClusterEvent::Any => true,
            ClusterEvent::AssignedPodAdd | ClusterEvent::AssignedPodUpdate => {
                plugins.is_empty()
                    || plugins.contains("InterPodAffinity")
                    || plugins.contains("PodTopologySpread")
            }
        }
    }
}

#[derive(Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<ActiveItem>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    seq: u64,
    moves: u64,
}

fn backoff_for(attempts: u32) -> Duration {
    let mut d = INITIAL_BACKOFF;
    for _ in 1..attempts {
        d *= 2;
        if d >= MAX_BACKOFF {
            return MAX_BACKOFF;
        }
    }
    d
}

impl Queue {
    fn push_active(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        self.seq += 1;
        e.generation += 1;
        e.at = Where::Active;
        self.active.push(ActiveItem {
            priority: e.info.priority,
            created: e.info.created,
            seq: self.seq,
            key: key.to_string(),
            generation: e.generation,
        });
    }

    fn push_backoff(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.generation += 1;
        e.at = Where::Backoff;
        self.backoff
            .push(Reverse((e.backoff_until, e.generation, key.to_string())));
    }

    /// A new or updated unscheduled pod. Returns true when activeQ or backoffQ gained a pod,
    /// i.e. when the scheduling loop must look again (see `move_on`).
    pub fn add_or_update(&mut self, info: Arc<PodInfo>) -> bool {
        let key = info.key.clone();
        match self.entries.get_mut(&key) {
            None => {
                let now = Instant::now();
                self.entries.insert(
                    key.clone(),
                    Entry {
                        info,
                        attempts: 0,
                        at: Where::Active,
                        generation: 0,
                        backoff_until: now,
                        unschedulable_since: now,
                        rejected_by: BTreeSet::new(),
                        popped_at_move: 0,
                    },
                );
                self.push_active(&key);
                true
            }
            Some(e) => {
                // Our own status writes come back as updates; only a spec or label change
                // can make a parked pod schedulable.
                let changed = e.info.pod.spec != info.pod.spec
                    || e.info.labels != info.labels
                    || e.info.priority != info.priority;
                let reprioritized = e.info.priority != info.priority;
                e.info = info;
                match e.at {
                    Where::Unschedulable if changed => {
                        if e.backoff_until > Instant::now() {
                            self.push_backoff(&key);
                        } else {
                            self.push_active(&key);
                        }
                        true
                    }
                    Where::Active if reprioritized => {
                        self.push_active(&key);
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    pub fn delete(&mut self, key: &str) {
        // Stale heap items are skipped when popped.
        self.entries.remove(key);
    }

    /// Moves expired backoffs (and long-parked unschedulable pods) to activeQ.
    pub fn flush(&mut self, now: Instant) {
        while let Some(Reverse((at, generation, key))) = self.backoff.peek().cloned() {
            if at > now {
                break;
            }
            self.backoff.pop();
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.generation == generation && e.at == Where::Backoff)
            {
                self.push_active(&key);
            }
        }
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.at == Where::Unschedulable
                    && now.duration_since(e.unschedulable_since) >= MAX_UNSCHEDULABLE
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.push_active(&k);
        }
    }

    /// When the next backoff expires, to sleep exactly that long.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The most important active pod, now in flight.
    pub fn pop(&mut self) -> Option<Arc<PodInfo>> {
        while let Some(item) = self.active.pop() {
            let Some(e) = self.entries.get_mut(&item.key) else {
                continue;
            };
            if e.generation != item.generation || e.at != Where::Active {
                continue;
            }
            e.at = Where::InFlight;
            e.attempts += 1;
            e.popped_at_move = self.moves;
            return Some(e.info.clone());
        }
        None
    }

    /// The latest version of a queued pod (including one in flight).
    pub fn get(&self, key: &str) -> Option<Arc<PodInfo>> {
        self.entries.get(key).map(|e| e.info.clone())
    }

    /// A failed attempt: park the pod, or back off if the cluster changed while it was in
    /// flight (that change may already have helped it).
    pub fn unschedulable(&mut self, key: &str, rejected_by: BTreeSet<&'static str>) {
        let moves = self.moves;
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.at != Where::InFlight {
            return;
        }
        let now = Instant::now();
        e.backoff_until = now + backoff_for(e.attempts);
        e.rejected_by = rejected_by;
        if e.popped_at_move < moves || e.rejected_by.is_empty() {
            self.push_backoff(key);
        } else {
            e.generation += 1;
            e.at = Where::Unschedulable;
            e.unschedulable_since = now;
        }
    }

    /// An error (binding or API failure): retry after the backoff.
    pub fn retry_later(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.backoff_until = Instant::now() + backoff_for(e.attempts.max(1));
        self.push_backoff(key);
    }

    /// The pod was bound: it leaves the queue.
    pub fn done(&mut self, key: &str) {
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.at == Where::InFlight)
        {
            self.entries.remove(key);
        }
    }

    /// A cluster event: unschedulable pods it may help go to activeQ, or backoffQ while
    /// their backoff lasts. Returns true when either gained a pod: the scheduling loop must
    /// then look again, since it sleeps until the backoff deadline it saw last (or its idle
    /// tick when backoffQ was empty), which a pod new in backoffQ may precede.
    pub fn move_on(&mut self, event: ClusterEvent) -> bool {
        self.moves += 1;
        let now = Instant::now();
        let mut to_active = Vec::new();
        let mut to_backoff = Vec::new();
        for (k, e) in &self.entries {
            if e.at == Where::Unschedulable && event.may_help(&e.rejected_by) {
                if e.backoff_until > now {
                    to_backoff.push(k.clone())
                } else {
                    to_active.push(k.clone())
                }
            }
        }
        for k in &to_backoff {
            self.push_backoff(k);
        }
        for k in &to_active {
            self.push_active(k);
        }
        !(to_active.is_empty() && to_backoff.is_empty())
    }

    /// After a relist: drops pods the API server no longer has.
    pub fn retain(&mut self, keep: &std::collections::HashSet<String>) {
        self.entries.retain(|k, _| keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, priority: i32, created_secs: i64) -> Arc<PodInfo> {
        let p = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: jiff::Timestamp::from_second(created_secs).ok().map(Time),
                ..Default::default()
            },
            spec: Some(PodSpec {
                priority: Some(priority),
                ..Default::default()
            }),
            status: None,
        };
        Arc::new(PodInfo::parse(p, &HashMap::new()))
    }

    #[test]
    fn priority_then_age() {
        let mut q = Queue::default();
        q.add_or_update(pod("young-low", 0, 200));
        q.add_or_update(pod("old-low", 0, 100));
        q.add_or_update(pod("high", 10, 300));
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(order, ["high", "old-low", "young-low"]);
    }

    #[test]
    fn backoff_doubles_to_cap() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(4), Duration::from_secs(8));
        assert_eq!(backoff_for(5), Duration::from_secs(10));
        assert_eq!(backoff_for(50), Duration::from_secs(10));
    }

    #[test]
    fn unschedulable_moves_on_events() {
        let mut q = Queue::default();
        q.add_or_update(pod("p", 0, 1));
        assert!(q.pop().is_some());
        q.unschedulable("default/p", ["NodeResourcesFit"].into());
        assert!(q.pop().is_none());
        // A new pod on a node cannot free resources.
        q.move_on(ClusterEvent::AssignedPodAdd);
        q.flush(Instant::now());
        assert!(q.pop().is_none());
        // A node add can; the pod still waits out its 1s backoff first.
        q.move_on(ClusterEvent::NodeAdd);
        assert!(q.pop().is_none());
        q.flush(Instant::now() + Duration::from_millis(1001));
        assert_eq!(q.pop().map(|p| p.name.clone()).as_deref(), Some("p"));
    }

    /// The scheduling loop sleeps until the backoff deadline it last saw; a pod an event moves
    /// into backoffQ must wake it, or the pod waits for the loop's idle tick.
    #[test]
    fn a_move_into_backoff_asks_for_a_wake() {
        let mut q = Queue::default();
        q.add_or_update(pod("p", 0, 1));
        assert!(q.pop().is_some());
        q.unschedulable("default/p", ["TaintToleration"].into());
        assert_eq!(q.next_backoff(), None);
        // A node update (say, its taint removed) while the 1s backoff still runs.
        assert!(q.move_on(ClusterEvent::NodeUpdate));
        let due = q.next_backoff().expect("the pod waits in backoffQ");
        assert!(due <= Instant::now() + INITIAL_BACKOFF);
        assert!(q.pop().is_none());
        q.flush(due);
        assert_eq!(q.pop().map(|p| p.name.clone()).as_deref(), Some("p"));

        // The same for a spec change of a parked pod.
        q.unschedulable("default/p", ["TaintToleration"].into());
        let mut changed = (*pod("p", 0, 1)).clone();
        let mut p = (*changed.pod).clone();
        p.spec.get_or_insert_with(Default::default).node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        changed.pod = Arc::new(p);
        assert!(q.add_or_update(Arc::new(changed)));
        assert!(q.next_backoff().is_some());
    }

    /// A cluster change while a pod is being scheduled (its watch event raced with the
    /// attempt, which saw the old node) may already have helped it: it backs off instead of
    /// parking until the next event.
    #[test]
    fn a_change_during_the_attempt_backs_off_instead_of_parking() {
        let mut q = Queue::default();
        q.add_or_update(pod("p", 0, 1));
        assert!(q.pop().is_some());
        // Nothing to move: the pod is in flight, and the loop is awake running it.
        assert!(!q.move_on(ClusterEvent::NodeUpdate));
        q.unschedulable("default/p", ["TaintToleration"].into());
        let due = q
            .next_backoff()
            .expect("the pod waits in backoffQ, not parked");
        q.flush(due);
        assert_eq!(q.pop().map(|p| p.name.clone()).as_deref(), Some("p"));
    }

    /// Events that cannot help leave a parked pod alone and do not wake the loop.
    #[test]
    fn unhelpful_events_do_not_wake() {
        let mut q = Queue::default();
        q.add_or_update(pod("p", 0, 1));
        assert!(q.pop().is_some());
        q.unschedulable("default/p", ["TaintToleration"].into());
        assert!(!q.move_on(ClusterEvent::AssignedPodAdd));
        assert_eq!(q.next_backoff(), None);
    }
}
