//! Simulated nodes' registration and heartbeats: the Node object and its status (upstream's
//! conditions, addresses, capacity, nodeInfo), a Lease per node renewed on a schedule spread
//! over the renew interval, and status reports every `status_report_interval` or as soon as
//! someone else (the node lifecycle controller) changed a condition we own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::Ctx;
use crate::join::sha256_hex;

use crate::node_status::LEASE_NAMESPACE;
pub const KUBELET_VERSION: &str = "v1.33.0-skiff";
pub const RUNTIME_VERSION: &str = "skiff-sim://1";

/// The conditions a kubelet owns, in upstream's order, with the status and reason it reports
/// when healthy.
const CONDITIONS: [(&str, &str, &str, &str); 4] = [
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    (
        "DiskPressure",
        "False",
        "KubeletHasNoDiskPressure",
        "kubelet has no disk pressure",
    ),
    (
        "PIDPressure",
        "False",
        "KubeletHasSufficientPID",
        "kubelet has sufficient PID available",
    ),
    (
        "Ready",
        "True",
        "KubeletReady",
        "kubelet is posting ready status",
    ),
];

#[derive(Default)]
struct NodeState {
    /// Set once registered; cleared if the node is deleted (then it stays gone, as upstream's
    /// kubelet only registers at start).
    uid: Option<String>,
    /// `(type, status, lastTransitionTime)` of the node's conditions as last seen.
    observed: Vec<(String, String, String)>,
}

/// Shared heartbeat state of all simulated nodes.
pub(crate) struct Heart {
    ctx: Arc<Ctx>,
    state: Vec<Mutex<NodeState>>,
    lease_busy: Vec<AtomicBool>,
    status_busy: Vec<AtomicBool>,
    writes: Arc<Semaphore>,
    urgent_tx: mpsc::UnboundedSender<usize>,
    urgent_rx: Mutex<Option<mpsc::UnboundedReceiver<usize>>>,
    /// Changes every agent start, as a real boot ID changes every boot.
    boot_seed: String,
    errors: RateLimitedLog,
}

impl Heart {
    pub fn new(ctx: Arc<Ctx>) -> Arc<Heart> {
        let n = ctx.nodes.len();
        let (urgent_tx, urgent_rx) = mpsc::unbounded_channel();
        let boot_seed = format!(
            "{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond()
        );
        Arc::new(Heart {
            writes: Arc::new(Semaphore::new(ctx.opts.max_concurrent_writes.max(1))),
            state: (0..n).map(|_| Mutex::default()).collect(),
            lease_busy: (0..n).map(|_| AtomicBool::new(false)).collect(),
            status_busy: (0..n).map(|_| AtomicBool::new(false)).collect(),
            urgent_tx,
            urgent_rx: Mutex::new(Some(urgent_rx)),
            boot_seed,
            errors: RateLimitedLog::default(),
            ctx,
        })
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.ctx.client.clone())
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.ctx.client.clone(), LEASE_NAMESPACE)
    }

    fn state(&self, i: usize) -> std::sync::MutexGuard<'_, NodeState> {
        // A poisoned lock only means a panic elsewhere; the data is still usable.
        self.state[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn registered(&self, i: usize) -> Option<String> {
        self.state(i).uid.clone()
    }

    fn observe(&self, i: usize, node: &Node) {
        let observed = crate::node_status::observed(node);
        self.state(i).observed = observed;
    }

    /// Whether the node's conditions differ from what this kubelet reports.
    fn deviates(&self, i: usize) -> bool {
        let st = self.state(i);
        CONDITIONS
            .iter()
            .any(|(ty, want, _, _)| !st.observed.iter().any(|(t, s, _)| t == ty && s == want))
    }

    /// The labels and annotations a kubelet puts on its Node.
    fn node_meta(&self, i: usize) -> (Value, Value) {
        let name = &self.ctx.nodes[i].name;
        let labels = json!({
            "beta.kubernetes.io/arch": runtime::image::oci_arch(),
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": runtime::image::oci_arch(),
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "skiff-sim",
        });
        let annotations = json!({
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            super::SIM_NODE_ANNOTATION: "true",
        });
        (labels, annotations)
    }

    fn node_object(&self, i: usize) -> Value {
        let n = &self.ctx.nodes[i];
        let (labels, annotations) = self.node_meta(i);
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": n.name, "labels": labels, "annotations": annotations },
            "spec": { "podCIDR": n.pod_cidr(), "podCIDRs": [n.pod_cidr()] },
        })
    }

    /// The status patch for node `i` as of `now`, keeping the transition time of conditions
    /// whose status did not change.
    fn status_patch(&self, i: usize, now: Timestamp) -> Value {
        let n = &self.ctx.nodes[i];
        let o = &self.ctx.opts;
        let observed = self.state(i).observed.clone();
        let conditions = crate::node_status::conditions(&CONDITIONS, &observed, now);
        let resources = json!({
            "cpu": o.cpu,
            "memory": o.memory,
            "pods": o.pods.to_string(),
            "ephemeral-storage": o.ephemeral_storage,
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        });
        let machine = sha256_hex(format!("machine/{}", n.name).as_bytes());
        let system = sha256_hex(format!("system/{}", n.name).as_bytes());
        let boot = sha256_hex(format!("boot/{}/{}", self.boot_seed, n.name).as_bytes());
        json!({ "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions,
            "addresses": [
                { "type": "InternalIP", "address": n.internal_ip.to_string() },
                { "type": "Hostname", "address": n.name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
            "nodeInfo": {
                "machineID": &machine[..32],
                "systemUUID": uuid_like(&system),
                "bootID": uuid_like(&boot),
                "kernelVersion": "6.8.0-skiff-sim",
                "osImage": "skiff simulated node",
                "containerRuntimeVersion": RUNTIME_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": runtime::image::oci_arch(),
            },
        }})
    }

    /// Creates the Node, or updates labels/annotations of an existing one, then reports its
    /// status and takes its Lease.
    async fn register(&self, i: usize) -> Result<()> {
        let name = &self.ctx.nodes[i].name;
        let api = self.nodes();
        let obj: Node = serde_json::from_value(self.node_object(i)).context("building the Node")?;
        let node = match api.create(&PostParams::default(), &obj).await {
            Ok(n) => n,
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                let (labels, annotations) = self.node_meta(i);
                let existing = api
                    .get(name)
                    .await
                    .with_context(|| format!("reading node {name}"))?;
                let mut patch =
                    json!({ "metadata": { "labels": labels, "annotations": annotations } });
                // podCIDR is immutable once set: only fill it in when missing.
                let has_cidr = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.as_ref())
                    .is_some_and(|c| !c.is_empty());
                if !has_cidr {
                    patch["spec"] = self.node_object(i)["spec"].clone();
                }
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("updating node {name}"))?
            }
            Err(e) => return Err(e).with_context(|| format!("creating node {name}")),
        };
        self.observe(i, &node);
        let uid = node
            .metadata
            .uid
            .clone()
            .with_context(|| format!("node {name} has no uid"))?;
        self.state(i).uid = Some(uid);
        self.report_status(i).await?;
        self.renew_lease(i).await?;
        Ok(())
    }

    async fn report_status(&self, i: usize) -> Result<()> {
        let name = &self.ctx.nodes[i].name;
        let patch = self.status_patch(i, Timestamp::now());
        let node = self
            .nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .with_context(|| format!("reporting status of node {name}"))?;
        self.observe(i, &node);
        Ok(())
    }

    /// Renews node `i`'s Lease with one merge patch; creates it (owned by the Node, so it goes
    /// when the Node goes) when it does not exist.
    async fn renew_lease(&self, i: usize) -> Result<()> {
        let name = &self.ctx.nodes[i].name;
        let uid = self.registered(i);
        crate::node_status::renew_lease(
            &self.leases(),
            name,
            i64::from(self.ctx.opts.lease_duration_seconds),
            uid.as_deref(),
        )
        .await
    }

    fn spawn_lease(self: &Arc<Self>, i: usize) {
        if self.registered(i).is_none() || self.lease_busy[i].swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let shutdown = me.ctx.shutdown.clone();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = async {
                    let _permit = me.writes.acquire().await;
                    me.renew_lease(i).await
                } => if let Err(e) = r { me.errors.warn(&e) },
            }
            me.lease_busy[i].store(false, Ordering::Release);
        });
    }

    fn spawn_status(self: &Arc<Self>, i: usize) {
        if self.registered(i).is_none() || self.status_busy[i].swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let shutdown = me.ctx.shutdown.clone();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = async {
                    let _permit = me.writes.acquire().await;
                    me.report_status(i).await
                } => if let Err(e) = r { me.errors.warn(&e) },
            }
            me.status_busy[i].store(false, Ordering::Release);
        });
    }
}

/// Registers every node with bounded concurrency, retrying each until it succeeds.
pub(crate) async fn register_all(heart: Arc<Heart>) {
    let limit = heart.ctx.opts.max_concurrent_writes.max(1);
    let shutdown = heart.ctx.shutdown.clone();
    let started = Instant::now();
    let all = futures::stream::iter(0..heart.ctx.nodes.len()).for_each_concurrent(limit, |i| {
        let heart = heart.clone();
        async move {
            // Registration reports status itself; keep the node watcher's urgent report out.
            heart.status_busy[i].store(true, Ordering::Release);
            let mut delay = Duration::from_millis(200);
            loop {
                match heart.register(i).await {
                    Ok(()) => break,
                    Err(e) => {
                        heart.errors.warn(&e);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
            heart.status_busy[i].store(false, Ordering::Release);
        }
    });
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = all => tracing::info!(
            nodes = heart.ctx.nodes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "simulated nodes registered"
        ),
    }
}

/// Renews leases and reports node status on a fixed schedule: time is cut into 100 ms ticks and
/// node `i` renews on ticks `t` with `t ≡ i (mod slots)`, so load is even over the interval.
pub(crate) async fn heartbeats(heart: Arc<Heart>) {
    let tick = Duration::from_millis(100);
    let slots = |every: Duration| (every.as_millis() / tick.as_millis()).max(1) as usize;
    let lease_slots = slots(heart.ctx.opts.lease_renew_interval);
    let status_slots = slots(heart.ctx.opts.status_report_interval);
    let n = heart.ctx.nodes.len();
    let mut urgent = heart
        .urgent_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let shutdown = heart.ctx.shutdown.clone();
    let mut t: usize = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(i) = async { match urgent.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                heart.spawn_status(i);
            }
            _ = ticker.tick() => {
                for i in (t % lease_slots..n).step_by(lease_slots) {
                    heart.spawn_lease(i);
                }
                // Offset by one slot so a node's status report and renewal don't coincide.
                for i in ((t + 1) % status_slots..n).step_by(status_slots) {
                    heart.spawn_status(i);
                }
                t = t.wrapping_add(1);
            }
        }
    }
}

/// Watches Nodes: remembers our nodes' conditions (for transition times) and reports status at
/// once when someone changed a condition we own, as upstream's kubelet does within a sync.
pub(crate) async fn watch_nodes(heart: Arc<Heart>) {
    let stream = watcher(heart.nodes(), watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let shutdown = heart.ctx.shutdown.clone();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.try_next() => ev,
        };
        match ev {
            Ok(Some(watcher::Event::Apply(node) | watcher::Event::InitApply(node))) => {
                let Some(&i) = node
                    .metadata
                    .name
                    .as_ref()
                    .and_then(|n| heart.ctx.by_name.get(n))
                else {
                    continue;
                };
                heart.observe(i, &node);
                let ours = heart
                    .registered(i)
                    .is_some_and(|uid| node.metadata.uid.as_ref() == Some(&uid));
                if ours && heart.deviates(i) {
                    let _ = heart.urgent_tx.send(i);
                }
            }
            Ok(Some(watcher::Event::Delete(node))) => {
                let Some(&i) = node
                    .metadata
                    .name
                    .as_ref()
                    .and_then(|n| heart.ctx.by_name.get(n))
                else {
                    continue;
                };
                let mut st = heart.state(i);
                if st.uid.is_some() && st.uid == node.metadata.uid {
                    tracing::warn!(node = %heart.ctx.nodes[i].name, "simulated node was deleted; it stays gone until the agent restarts");
                    st.uid = None;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => heart
                .errors
                .warn(&anyhow::Error::new(e).context("watching nodes")),
        }
    }
}

/// Logs failures at most once per 10 s with a count of the suppressed ones: with thousands of
/// nodes an unreachable server must not flood the log.
#[derive(Default)]
struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    fn warn(&self, e: &anyhow::Error) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(suppressed, "simulated node heartbeat failed: {e:#}");
    }
}

/// Formats 32+ hex digits as a UUID (8-4-4-4-12).
fn uuid_like(hex: &str) -> String {
    let h = hex.get(..32).unwrap_or(hex);
    if h.len() < 32 {
        return h.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_arch() {
        let u = uuid_like(&"ab".repeat(32));
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
        assert!(!runtime::image::oci_arch().is_empty());
    }
}
