//! The simulated kubelet's pod side: one watcher on all bound pods, filtered to our nodes; one
//! task owning every pod's state; timers for simulated exits and CrashLoopBackOff; and a bounded
//! queue of API writes, at most one in flight per pod, each built from the pod's state when it
//! is sent (so a burst of changes becomes one write).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;

use super::Ctx;
use super::status::{Phase, PodView, RestartPolicy, Run, SpecLite, Terminated};

/// Upstream's container restart back-off: 10 s doubling to 5 min, forgotten after a container
/// ran for twice the maximum.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Backoff {
    current: Duration,
    last_update: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Exit,
    Restart,
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Status(u64),
    Delete,
}

enum Outcome {
    Done,
    /// The pod (this uid) no longer exists: stop writing.
    Gone,
    Retry(String),
}

struct Done {
    uid: String,
    op: Op,
    outcome: Outcome,
}

struct Tracked {
    view: PodView,
    node: usize,
    deleting: bool,
    backoff: Option<Backoff>,
    /// Bumped to invalidate pending Exit/Restart timers.
    epoch: u64,
    status_gen: u64,
    written_gen: u64,
    delete_wanted: bool,
    delete_sent: bool,
    in_flight: bool,
    queued: bool,
    retry_delay: Duration,
    /// Seen in the current (re-)list; pods not seen are gone.
    seen: bool,
}

impl Tracked {
    fn dirty(&self) -> bool {
        self.status_gen > self.written_gen || (self.delete_wanted && !self.delete_sent)
    }
}

/// Pod IPs of one node: .2–.254 of its /24, handed out round-robin so a freed address is not
/// reused at once (like host-local IPAM).
struct IpPool {
    net: Ipv4Addr,
    used: [u64; 4],
    next: u32,
}

impl IpPool {
    fn new(net: Ipv4Addr) -> IpPool {
        IpPool {
            net,
            used: [0; 4],
            next: 0,
        }
    }

    fn host(&self, ip: Ipv4Addr) -> Option<u32> {
        let (net, ip) = (u32::from(self.net), u32::from(ip));
        (ip & !0xff == net && (2..=254).contains(&(ip & 0xff))).then_some(ip & 0xff)
    }

    fn set(&mut self, host: u32, on: bool) {
        let (w, b) = ((host / 64) as usize, host % 64);
        if on {
            self.used[w] |= 1 << b;
        } else {
            self.used[w] &= !(1 << b);
        }
    }

    fn is_used(&self, host: u32) -> bool {
        self.used[(host / 64) as usize] & (1 << (host % 64)) != 0
    }

    fn alloc(&mut self) -> Option<Ipv4Addr> {
        for k in 0..253 {
            let host = 2 + (self.next + k) % 253;
            if !self.is_used(host) {
                self.set(host, true);
                self.next = (host - 2 + 1) % 253;
                return Some(Ipv4Addr::from(u32::from(self.net) + host));
            }
        }
        None
    }

    fn claim(&mut self, ip: Ipv4Addr) {
        if let Some(h) = self.host(ip) {
            self.set(h, true);
        }
    }

    fn release(&mut self, ip: Ipv4Addr) {
        if let Some(h) = self.host(ip) {
            self.set(h, false);
        }
    }
}

struct Manager {
    ctx: Arc<Ctx>,
    pods: HashMap<String, Tracked>,
    pools: Vec<IpPool>,
    timers: DelayQueue<(String, TimerKind, u64)>,
    queue: VecDeque<String>,
    in_flight: usize,
    limit: usize,
    done_tx: mpsc::UnboundedSender<Done>,
}

/// Runs pods bound to the simulated nodes until shutdown.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut m = Manager {
        pools: ctx.nodes.iter().map(|n| IpPool::new(n.pod_net)).collect(),
        limit: ctx.opts.max_concurrent_writes.max(1),
        ctx: ctx.clone(),
        pods: HashMap::new(),
        timers: DelayQueue::new(),
        queue: VecDeque::new(),
        in_flight: 0,
        done_tx,
    };
    // Only bound pods matter; the field selector keeps pending pods off the wire.
    let cfg = watcher::Config::default().fields("spec.nodeName!=");
    let stream = watcher(Api::<Pod>::all(ctx.client.clone()), cfg)
        .default_backoff()
        .modify(|p| p.metadata.managed_fields = None);
    let mut stream = std::pin::pin!(stream);
    let mut last_error: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            ev = stream.next() => match ev {
                Some(Ok(ev)) => m.on_event(ev),
                Some(Err(e)) => {
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!("watching pods: {e}");
                        last_error = Some(std::time::Instant::now());
                    }
                }
                None => return,
            },
            Some(expired) = m.timers.next() => {
                let (uid, kind, epoch) = expired.into_inner();
                m.on_timer(&uid, kind, epoch);
            }
            Some(done) = done_rx.recv() => m.on_done(done),
        }
        m.pump();
    }
}

impl Manager {
    fn on_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Init => {
                for t in self.pods.values_mut() {
                    t.seen = false;
                }
            }
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.on_apply(&pod),
            watcher::Event::InitDone => {
                let gone: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|(_, t)| !t.seen)
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in gone {
                    self.forget(&uid);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.forget(uid);
                }
            }
        }
    }

    fn forget(&mut self, uid: &str) {
        if let Some(t) = self.pods.remove(uid)
            && let Some(ip) = t.view.pod_ip
            && !t.view.phase.terminal()
        {
            self.pools[t.node].release(ip);
        }
    }

    fn on_apply(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let Some(&node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .and_then(|n| self.ctx.by_name.get(n))
        else {
            return;
        };
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let (scheduled, others) = observed_conditions(pod);
        if let Some(t) = self.pods.get_mut(&uid) {
            t.seen = true;
            t.view.scheduled = scheduled;
            t.view.other_conditions = others;
            if deleting && !t.deleting {
                self.begin_delete(&uid);
            }
            return;
        }

        let now = Timestamp::now();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let start_time = status
            .and_then(|s| s.start_time.as_ref())
            .map_or(now, |t| t.0);
        let pod_ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let first = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first());
        let view = PodView {
            uid: uid.clone(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            spec: SpecLite::from(pod),
            host_ip: self.ctx.nodes[node].internal_ip,
            pod_ip,
            start_time,
            phase: Phase::Running,
            restart_count: first.map_or(0, |c| c.restart_count),
            run: Run::Running {
                started_at: first
                    .and_then(|c| c.state.as_ref())
                    .and_then(|s| s.running.as_ref())
                    .and_then(|r| r.started_at.as_ref())
                    .map_or(now, |t| t.0),
            },
            last: None,
            scheduled,
            other_conditions: others,
            transitions: HashMap::new(),
        };
        let mut t = Tracked {
            view,
            node,
            deleting: false,
            backoff: None,
            epoch: 0,
            status_gen: 0,
            written_gen: 0,
            delete_wanted: false,
            delete_sent: false,
            in_flight: false,
            queued: false,
            retry_delay: Duration::from_millis(500),
            seen: true,
        };
        match phase {
            "Succeeded" | "Failed" => {
                // Finished before we saw it (e.g. agent restart): nothing runs, nothing to say.
                t.view.phase = if phase == "Succeeded" {
                    Phase::Succeeded
                } else {
                    Phase::Failed
                };
                self.pods.insert(uid.clone(), t);
                if deleting {
                    self.begin_delete(&uid);
                }
                return;
            }
            "Running" if pod_ip.is_some_and(|ip| self.pools[node].host(ip).is_some()) => {
                // Adopt a pod a previous agent started: keep its IP and start times.
                if let Some(ip) = pod_ip {
                    self.pools[node].claim(ip);
                }
                let all_running = status
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                    });
                if !all_running {
                    t.view.run = Run::Running { started_at: now };
                    t.status_gen = 1;
                }
            }
            _ if deleting => {
                // Never started here: nothing to stop, just finish the deletion.
                t.view.phase = Phase::Failed;
                t.view.pod_ip = None;
                self.pods.insert(uid.clone(), t);
                self.begin_delete(&uid);
                return;
            }
            _ => {
                let Some(ip) = self.pools[node].alloc() else {
                    tracing::warn!(pod = %t.view.name, node = %self.ctx.nodes[node].name, "no free pod IP on simulated node; pod stays Pending");
                    return;
                };
                t.view.pod_ip = Some(ip);
                t.view.start_time = now;
                t.view.restart_count = 0;
                t.view.run = Run::Running { started_at: now };
                t.status_gen = 1;
            }
        }
        let started_at = match t.view.run {
            Run::Running { started_at } => started_at,
            _ => now,
        };
        if let Some(exit) = t.view.spec.exit {
            let ran = now.duration_since(started_at).unsigned_abs();
            let left = exit.after.saturating_sub(ran);
            self.timers.insert((uid.clone(), TimerKind::Exit, 0), left);
        }
        self.pods.insert(uid.clone(), t);
        if deleting {
            self.begin_delete(&uid);
        } else {
            self.enqueue(&uid);
        }
    }

    /// Graceful deletion: the containers stop (at once: nothing real runs), the final status is
    /// reported, and the pod is deleted with grace period 0 and its uid as precondition.
    fn begin_delete(&mut self, uid: &str) {
        let Some(t) = self.pods.get_mut(uid) else {
            return;
        };
        t.deleting = true;
        t.epoch += 1;
        if !t.view.phase.terminal() {
            let now = Timestamp::now();
            let started_at = match t.view.run {
                Run::Running { started_at } => started_at,
                _ => now,
            };
            t.view.run = Run::Terminated(Terminated {
                exit_code: 0,
                started_at,
                finished_at: now,
                container_id: String::new(),
            });
            t.view.phase = Phase::Succeeded;
            if let Some(ip) = t.view.pod_ip {
                self.pools[t.node].release(ip);
            }
            t.status_gen += 1;
        }
        t.delete_wanted = true;
        self.enqueue(uid);
    }

    fn on_timer(&mut self, uid: &str, kind: TimerKind, epoch: u64) {
        let Some(t) = self.pods.get_mut(uid) else {
            return;
        };
        if kind == TimerKind::Retry {
            self.enqueue(uid);
            return;
        }
        if t.epoch != epoch || t.deleting || t.view.phase.terminal() {
            return;
        }
        let now = Timestamp::now();
        match (kind, t.view.run.clone()) {
            (TimerKind::Exit, Run::Running { started_at }) => {
                let Some(exit) = t.view.spec.exit else {
                    return;
                };
                let term = Terminated {
                    exit_code: exit.code,
                    started_at,
                    finished_at: now,
                    container_id: String::new(),
                };
                let restart = match t.view.spec.restart_policy {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => exit.code != 0,
                    RestartPolicy::Always => true,
                };
                if !restart {
                    t.view.phase = if exit.code == 0 {
                        Phase::Succeeded
                    } else {
                        Phase::Failed
                    };
                    t.view.run = Run::Terminated(term);
                    if let Some(ip) = t.view.pod_ip {
                        self.pools[t.node].release(ip);
                    }
                } else {
                    // Upstream's doBackOff: without a live back-off entry the container restarts
                    // at once and the entry starts at 10 s; with one, it waits that long.
                    let live = t.backoff.filter(|b| {
                        now.duration_since(b.last_update).unsigned_abs() <= 2 * BACKOFF_MAX
                    });
                    match live {
                        None => {
                            t.backoff = Some(Backoff {
                                current: BACKOFF_INITIAL,
                                last_update: now,
                            });
                            t.view.last = Some(term);
                            t.view.restart_count += 1;
                            t.view.run = Run::Running { started_at: now };
                            t.epoch += 1;
                            self.timers
                                .insert((uid.to_string(), TimerKind::Exit, t.epoch), exit.after);
                        }
                        Some(b) => {
                            t.view.last = Some(term);
                            t.view.run = Run::BackOff { backoff: b.current };
                            t.epoch += 1;
                            self.timers
                                .insert((uid.to_string(), TimerKind::Restart, t.epoch), b.current);
                        }
                    }
                }
            }
            (TimerKind::Restart, Run::BackOff { .. }) => {
                let finished = t.view.last.as_ref().map_or(now, |l| l.finished_at);
                t.backoff = Some(Backoff {
                    current: t
                        .backoff
                        .map_or(BACKOFF_INITIAL, |b| (b.current * 2).min(BACKOFF_MAX)),
                    last_update: finished,
                });
                t.view.restart_count += 1;
                t.view.run = Run::Running { started_at: now };
                t.epoch += 1;
                if let Some(exit) = t.view.spec.exit {
                    self.timers
                        .insert((uid.to_string(), TimerKind::Exit, t.epoch), exit.after);
                }
            }
            _ => return,
        }
        t.status_gen += 1;
        self.enqueue(uid);
    }

    fn enqueue(&mut self, uid: &str) {
        if let Some(t) = self.pods.get_mut(uid)
            && !t.queued
            && !t.in_flight
            && t.dirty()
        {
            t.queued = true;
            self.queue.push_back(uid.to_string());
        }
    }

    /// Starts queued writes while fewer than `limit` are in flight.
    fn pump(&mut self) {
        while self.in_flight < self.limit {
            let Some(uid) = self.queue.pop_front() else {
                return;
            };
            let Some(t) = self.pods.get_mut(&uid) else {
                continue;
            };
            t.queued = false;
            if t.in_flight {
                continue;
            }
            let (op, body) = if t.status_gen > t.written_gen {
                let mut patch = t.view.status_patch(Timestamp::now());
                // Upstream's kubelet sends the uid too: a precondition against a recreated pod.
                patch["metadata"] = json!({ "uid": uid });
                (Op::Status(t.status_gen), Some(patch))
            } else if t.delete_wanted && !t.delete_sent {
                (Op::Delete, None)
            } else {
                continue;
            };
            t.in_flight = true;
            self.in_flight += 1;
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &t.view.namespace);
            let name = t.view.name.clone();
            let tx = self.done_tx.clone();
            let shutdown = self.ctx.shutdown.clone();
            tokio::spawn(async move {
                let work = write(&api, &name, &uid, op, body);
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    o = work => o,
                };
                let _ = tx.send(Done { uid, op, outcome });
            });
        }
    }

    fn on_done(&mut self, done: Done) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(t) = self.pods.get_mut(&done.uid) else {
            return;
        };
        t.in_flight = false;
        match done.outcome {
            Outcome::Done => {
                t.retry_delay = Duration::from_millis(500);
                match done.op {
                    Op::Status(g) => t.written_gen = t.written_gen.max(g),
                    Op::Delete => t.delete_sent = true,
                }
            }
            Outcome::Gone => {
                t.written_gen = t.status_gen;
                t.delete_sent = true;
                t.delete_wanted = true;
            }
            Outcome::Retry(why) => {
                tracing::debug!(pod = %t.view.name, "pod write failed, retrying: {why}");
                let delay = t.retry_delay;
                t.retry_delay = (delay * 2).min(Duration::from_secs(30));
                self.timers
                    .insert((done.uid.clone(), TimerKind::Retry, 0), delay);
                return;
            }
        }
        self.enqueue(&done.uid);
    }
}

/// The conditions the kubelet does not own but keeps: PodScheduled as it is, and the types of
/// the others (for their place in the list).
fn observed_conditions(pod: &Pod) -> (Option<Value>, Vec<String>) {
    let mut scheduled = None;
    let mut others = Vec::new();
    for c in pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        match c.type_.as_str() {
            "PodScheduled" => scheduled = serde_json::to_value(c).ok(),
            "PodReadyToStartContainers" | "Initialized" | "Ready" | "ContainersReady" => {}
            other => others.push(other.to_string()),
        }
    }
    (scheduled, others)
}

async fn write(api: &Api<Pod>, name: &str, uid: &str, op: Op, body: Option<Value>) -> Outcome {
    let result = match (op, body) {
        (Op::Status(_), Some(patch)) => api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map(drop),
        _ => {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            api.delete(name, &dp).await.map(drop)
        }
    };
    match result {
        Ok(()) => Outcome::Done,
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Outcome::Gone,
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            // The server will never take this write; retrying would only repeat the error.
            tracing::warn!(pod = %name, "pod write rejected: {}", s.message);
            Outcome::Done
        }
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_pool_round_robin_and_reuse() {
        let mut p = IpPool::new(Ipv4Addr::new(10, 128, 3, 0));
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 128, 3, 2));
        assert_eq!(b, Ipv4Addr::new(10, 128, 3, 3));
        p.release(a);
        // Round-robin: the freed address is not handed out next.
        assert_eq!(p.alloc().unwrap(), Ipv4Addr::new(10, 128, 3, 4));
        let mut n = 3;
        while p.alloc().is_some() {
            n += 1;
        }
        assert_eq!(n, 254);
        p.release(b);
        assert_eq!(p.alloc(), Some(b));
        // Addresses outside the pool are ignored.
        p.claim(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.host(Ipv4Addr::new(10, 128, 3, 255)), None);
    }
}
