//! The running scheduler while leading: informers feed the cache and queue, one loop pops
//! pods and decides, and bindings, status updates, preemptions and events are written
//! concurrently (bounded by `Config::parallelism`).

use std::collections::{BTreeSet, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use rand::SeedableRng as _;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{Cache, NodeChange};
use crate::config::Config;
use crate::framework::{self, ScheduleError};
use crate::preemption;
use crate::queue::{ClusterEvent, Queue};
use crate::types::{PodInfo, PriorityClassInfo};

/// Upstream truncates event notes and condition messages to this many bytes.
const MAX_MESSAGE: usize = 1024;

pub(crate) struct State {
    pub cache: Cache,
    pub queue: Queue,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    cfg: Config,
    client: kube::Client,
    events: EventSink,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough data for a scheduler
        // (the worst case is a stale aggregate); keep going rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn pod_ref(p: &PodInfo) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(p.namespace.clone()),
        name: Some(p.name.clone()),
        uid: Some(p.uid.clone()).filter(|u| !u.is_empty()),
        resource_version: Some(p.resource_version.clone()).filter(|r| !r.is_empty()),
        ..Default::default()
    }
}

pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff".into())
}

struct EventReq {
    regarding: ObjectReference,
    related: Option<ObjectReference>,
    type_: &'static str,
    reason: &'static str,
    action: &'static str,
    note: String,
}

/// events.k8s.io/v1 Events, written in the background. Like client-go's broadcaster, it drops
/// events rather than slow scheduling down when the API server cannot keep up.
#[derive(Clone)]
struct EventSink {
    tx: mpsc::Sender<EventReq>,
}

impl EventSink {
    fn start(
        client: kube::Client,
        cfg: &Config,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<EventReq>(1000);
        let controller = cfg.scheduler_name.clone();
        let instance = format!("{}-{}", cfg.scheduler_name, hostname());
        let limit = Arc::new(Semaphore::new(8));
        let inner = tracker.clone();
        tracker.spawn(async move {
            loop {
                let req = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.recv() => match r { Some(r) => r, None => return },
                };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let ns = req
                    .regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let now = jiff::Timestamp::now();
                let ev = Event {
                    metadata: ObjectMeta {
                        name: Some(format!(
                            "{}.{:x}",
                            req.regarding.name.clone().unwrap_or_default(),
                            now.as_nanosecond()
                        )),
                        namespace: Some(ns.clone()),
                        ..Default::default()
                    },
                    event_time: Some(MicroTime(now)),
                    reporting_controller: Some(controller.clone()),
                    reporting_instance: Some(instance.clone()),
                    action: Some(req.action.into()),
                    reason: Some(req.reason.into()),
                    note: Some(truncate(req.note)),
                    type_: Some(req.type_.into()),
                    regarding: Some(req.regarding),
                    related: req.related,
                    ..Default::default()
                };
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                let stop = stop.clone();
                inner.spawn(async move {
                    let _permit = permit;
                    let pp = PostParams::default();
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        r = api.create(&pp, &ev) => if let Err(e) = r {
                            tracing::debug!("writing event {:?}: {e}", ev.reason);
                        }
                    }
                });
            }
        });
        EventSink { tx }
    }

    fn emit(&self, req: EventReq) {
        if self.tx.try_send(req).is_err() {
            tracing::debug!("event queue full; dropping an event");
        }
    }
}

/// What an informer saw.
enum Seen<K> {
    Apply(K),
    Delete(K),
    /// A (re)list finished; these are the keys that exist.
    Listed(HashSet<String>),
}

fn key_of(meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// Runs a watcher (list, then watch, relisting as needed) until `stop`, handing each change to
/// `handle`; `synced` fires after the first complete list.
fn informer<K>(
    api: Api<K>,
    stop: CancellationToken,
    tracker: &TaskTracker,
    mut handle: impl FnMut(Seen<K>) + Send + 'static,
) -> oneshot::Receiver<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let (tx, rx) = oneshot::channel();
    tracker.spawn(async move {
        let mut synced = Some(tx);
        let mut listing: HashSet<String> = HashSet::new();
        // The cache never reads managedFields; dropping them halves a cached pod.
        let stream = watcher(api, watcher::Config::default().page_size(1000))
            .default_backoff()
            .modify(|o| o.meta_mut().managed_fields = None);
        futures::pin_mut!(stream);
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Err(e)) => tracing::warn!("scheduler watch: {e}"),
                Some(Ok(watcher::Event::Init)) => listing.clear(),
                Some(Ok(watcher::Event::InitApply(o))) => {
                    listing.insert(key_of(o.meta()));
                    handle(Seen::Apply(o));
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    handle(Seen::Listed(std::mem::take(&mut listing)));
                    if let Some(tx) = synced.take() {
                        let _ = tx.send(());
                    }
                }
                Some(Ok(watcher::Event::Apply(o))) => handle(Seen::Apply(o)),
                Some(Ok(watcher::Event::Delete(o))) => handle(Seen::Delete(o)),
            }
        }
    });
    rx
}

async fn wait_synced(
    rx: oneshot::Receiver<()>,
    stop: &CancellationToken,
    what: &str,
) -> anyhow::Result<bool> {
    tokio::select! {
        _ = stop.cancelled() => Ok(false),
        r = rx => { r.with_context(|| format!("the {what} informer stopped before listing"))?; Ok(true) }
    }
}

fn on_pod(shared: &Shared, seen: Seen<Pod>) {
    let mut st = shared.lock();
    let st = &mut *st;
    let mut wake = false;
    match seen {
        Seen::Apply(pod) => {
            let mut parsed = PodInfo::parse(pod, &st.cache.priority_classes);
            if parsed.node_name.is_some() {
                // Assigned pods live in the cache as their parsed constraints only; the object
                // itself is read just for pods still queued.
                parsed.pod = empty_pod();
            }
            let info = Arc::new(parsed);
            let key = info.key.clone();
            if info.node_name.is_some() {
                st.queue.delete(&key);
                if info.terminal {
                    if st.cache.remove_pod(&key).is_some() {
                        wake |= st.queue.move_on(ClusterEvent::AssignedPodDelete);
                    }
                } else {
                    let labels = info.labels.clone();
                    match st.cache.add_pod(info) {
                        None => wake |= st.queue.move_on(ClusterEvent::AssignedPodAdd),
                        Some(old) if old.labels != labels => {
                            wake |= st.queue.move_on(ClusterEvent::AssignedPodUpdate)
                        }
                        Some(_) => {}
                    }
                }
            } else {
                if st.cache.pod_node(&key).is_some() && !st.cache.is_assumed(&key) {
                    st.cache.remove_pod(&key);
                }
                let ours = info.scheduler_name == shared.cfg.scheduler_name
                    && !info.terminating
                    && !info.gated
                    && !info.terminal;
                if ours {
                    wake |= st.queue.add_or_update(info);
                } else {
                    st.queue.delete(&key);
                    st.cache.unnominate(&key);
                }
            }
        }
        Seen::Delete(pod) => {
            let key = key_of(&pod.metadata);
            st.queue.delete(&key);
            st.cache.unnominate(&key);
            if st.cache.remove_pod(&key).is_some() {
                wake |= st.queue.move_on(ClusterEvent::AssignedPodDelete);
            }
        }
        Seen::Listed(keys) => {
            st.queue.retain(&keys);
            if st.cache.retain_pods(&keys) {
                wake |= st.queue.move_on(ClusterEvent::Any);
            }
        }
    }
    if wake {
        shared.wake.notify_one();
    }
}

/// One shared empty object stands in for the pods the cache does not need whole.
fn empty_pod() -> Arc<Pod> {
    static EMPTY: std::sync::LazyLock<Arc<Pod>> = std::sync::LazyLock::new(Arc::default);
    EMPTY.clone()
}

fn on_node(shared: &Shared, seen: Seen<Node>) {
    let mut st = shared.lock();
    let wake = match seen {
        Seen::Apply(node) => match st.cache.set_node(&node) {
            NodeChange::Added => st.queue.move_on(ClusterEvent::NodeAdd),
            NodeChange::Updated => st.queue.move_on(ClusterEvent::NodeUpdate),
            NodeChange::Irrelevant => false,
        },
        Seen::Delete(node) => {
            st.cache
                .remove_node(node.metadata.name.as_deref().unwrap_or_default());
            false
        }
        Seen::Listed(keys) => {
            for name in st.cache.node_names() {
                if !keys.contains(&name) {
                    st.cache.remove_node(&name);
                }
            }
            false
        }
    };
    if wake {
        shared.wake.notify_one();
    }
}

/// What the scheduling loop decided for one pod; carried out off the lock.
enum Outcome {
    Bind {
        pod: Arc<PodInfo>,
        node: String,
    },
    Failed {
        pod: Arc<PodInfo>,
        reason: &'static str,
        message: String,
        nominate: Option<String>,
        victims: Vec<Arc<PodInfo>>,
    },
}

fn schedule_one(
    st: &mut State,
    cfg: &Config,
    pod: Arc<PodInfo>,
    rng: &mut rand::rngs::SmallRng,
) -> Outcome {
    match framework::schedule_pod(&mut st.cache, &pod, cfg, rng) {
        Ok(node) => {
            st.cache.assume(&pod, &node);
            Outcome::Bind { pod, node }
        }
        Err(ScheduleError::Fit(mut fit)) => {
            let plugins = fit.plugins();
            let (mut nominate, mut victims) = (None, Vec::new());
            match preemption::preempt(&st.cache, &pod, &fit) {
                Ok(c) => {
                    st.cache.nominate(&pod, &c.node);
                    nominate = Some(c.node);
                    victims = c.victims;
                }
                Err(msg) => fit.post_filter_msg = msg,
            }
            st.queue.unschedulable(&pod.key, plugins);
            Outcome::Failed {
                pod,
                reason: "Unschedulable",
                message: truncate(fit.message()),
                nominate,
                victims,
            }
        }
        Err(ScheduleError::Error(message)) => {
            st.queue.unschedulable(&pod.key, BTreeSet::new());
            Outcome::Failed {
                pod,
                reason: "SchedulerError",
                message,
                nominate: None,
                victims: Vec::new(),
            }
        }
    }
}

async fn bind(shared: &Shared, pod: &PodInfo, node: &str) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &pod.namespace);
    let binding = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let result: kube::Result<serde_json::Value> = api
        .create_subresource("binding", &pod.name, &PostParams::default(), &binding)
        .await;
    match result {
        Ok(_) => {
            shared.lock().queue.done(&pod.key);
            shared.events.emit(EventReq {
                regarding: pod_ref(pod),
                related: None,
                type_: "Normal",
                reason: "Scheduled",
                action: "Binding",
                note: format!(
                    "Successfully assigned {}/{} to {node}",
                    pod.namespace, pod.name
                ),
            });
        }
        Err(e) => {
            tracing::info!("binding {} to {node} failed: {e}", pod.key);
            let gone = matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
            {
                let mut st = shared.lock();
                st.cache.forget(&pod.key);
                if gone {
                    st.queue.delete(&pod.key);
                } else {
                    st.queue.retry_later(&pod.key);
                }
                st.queue.move_on(ClusterEvent::AssignedPodDelete);
            }
            shared.wake.notify_one();
            shared.events.emit(EventReq {
                regarding: pod_ref(pod),
                related: None,
                type_: "Warning",
                reason: "FailedScheduling",
                action: "Scheduling",
                note: truncate(format!("Binding rejected: {e}")),
            });
        }
    }
}

/// Writes PodScheduled=False (and nominatedNodeName) unless the pod already says so.
async fn record_failure(
    shared: &Shared,
    pod: &PodInfo,
    reason: &str,
    message: &str,
    nominate: Option<&str>,
) {
    let status = pod.pod.status.as_ref();
    let current = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let same_condition = current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message)
    });
    let same_nomination = nominate.is_none() || pod.nominated_node.as_deref() == nominate;
    if !(same_condition && same_nomination) {
        let transition = match current {
            Some(c) if c.status == "False" => c
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(jiff::Timestamp::now),
            _ => jiff::Timestamp::now(),
        };
        let mut patch = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": transition.to_string(),
        }]}});
        if let Some(n) = nominate {
            patch["status"]["nominatedNodeName"] = serde_json::Value::String(n.to_string());
        }
        let api: Api<Pod> = Api::namespaced(shared.client.clone(), &pod.namespace);
        if let Err(e) = api
            .patch_status(
                &pod.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            tracing::debug!("updating the status of {}: {e}", pod.key);
        }
    }
    shared.events.emit(EventReq {
        regarding: pod_ref(pod),
        related: None,
        type_: "Warning",
        reason: "FailedScheduling",
        action: "Scheduling",
        note: message.to_string(),
    });
}

/// Evicts one preemption victim: mark why (DisruptionTarget), delete, tell.
async fn evict(shared: &Shared, victim: &PodInfo, preemptor: &PodInfo, node: &str) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &victim.namespace);
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": format!("{}: preempting to accommodate a higher priority pod", shared.cfg.scheduler_name),
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
    }]}});
    if let Err(e) = api
        .patch_status(
            &victim.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        tracing::debug!("marking preemption victim {}: {e}", victim.key);
    }
    let mut dp = DeleteParams::default();
    if !victim.uid.is_empty() {
        dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(victim.uid.clone()),
                resource_version: None,
            }),
            ..dp
        };
    }
    match api.delete(&victim.name, &dp).await {
        Ok(_) => shared.events.emit(EventReq {
            regarding: pod_ref(victim),
            related: Some(pod_ref(preemptor)),
            type_: "Normal",
            reason: "Preempted",
            action: "Preempting",
            note: format!("Preempted by pod {} on node {node}", preemptor.uid),
        }),
        Err(e) => tracing::info!("deleting preemption victim {}: {e}", victim.key),
    }
}

async fn carry_out(shared: Arc<Shared>, outcome: Outcome) {
    match outcome {
        Outcome::Bind { pod, node } => bind(&shared, &pod, &node).await,
        Outcome::Failed {
            pod,
            reason,
            message,
            nominate,
            victims,
        } => {
            if let Some(node) = nominate.as_deref() {
                futures::future::join_all(victims.iter().map(|v| evict(&shared, v, &pod, node)))
                    .await;
            }
            // Use the latest version we know, so the "already says so" check is accurate.
            let latest = shared.lock().queue.get(&pod.key).unwrap_or(pod);
            record_failure(&shared, &latest, reason, &message, nominate.as_deref()).await;
        }
    }
}

/// Schedules until `stop` (leadership lost or shutdown).
pub(crate) async fn run_leading(
    client: kube::Client,
    cfg: Config,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let result = run_inner(client, cfg, stop.clone(), &tracker).await;
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("scheduler tasks did not stop within 10s");
    }
    result
}

async fn run_inner(
    client: kube::Client,
    cfg: Config,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let events = EventSink::start(client.clone(), &cfg, stop.clone(), tracker);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            cache: Cache::default(),
            queue: Queue::default(),
        }),
        wake: Notify::new(),
        cfg: cfg.clone(),
        client: client.clone(),
        events,
    });

    // Priority classes and namespaces first: parsing pods needs them.
    let s = shared.clone();
    let pcs = informer(
        Api::<PriorityClass>::all(client.clone()),
        stop.clone(),
        tracker,
        move |seen| {
            let mut st = s.lock();
            match seen {
                Seen::Apply(pc) => {
                    let info = PriorityClassInfo {
                        value: pc.value,
                        global_default: pc.global_default.unwrap_or(false),
                        preempt_never: pc.preemption_policy.as_deref() == Some("Never"),
                    };
                    st.cache
                        .priority_classes
                        .insert(pc.metadata.name.unwrap_or_default(), info);
                }
                Seen::Delete(pc) => {
                    st.cache
                        .priority_classes
                        .remove(pc.metadata.name.as_deref().unwrap_or_default());
                }
                Seen::Listed(keys) => st.cache.priority_classes.retain(|k, _| keys.contains(k)),
            }
        },
    );
    let s = shared.clone();
    let nss = informer(
        Api::<Namespace>::all(client.clone()),
        stop.clone(),
        tracker,
        move |seen| {
            let mut st = s.lock();
            match seen {
                Seen::Apply(ns) => {
                    st.cache.namespaces.insert(
                        ns.metadata.name.unwrap_or_default(),
                        ns.metadata.labels.unwrap_or_default(),
                    );
                }
                Seen::Delete(ns) => {
                    st.cache
                        .namespaces
                        .remove(ns.metadata.name.as_deref().unwrap_or_default());
                }
                Seen::Listed(keys) => st.cache.namespaces.retain(|k, _| keys.contains(k)),
            }
        },
    );
    let s = shared.clone();
    let nodes = informer(
        Api::<Node>::all(client.clone()),
        stop.clone(),
        tracker,
        move |seen| on_node(&s, seen),
    );
    for (rx, what) in [(pcs, "PriorityClass"), (nss, "Namespace"), (nodes, "Node")] {
        if !wait_synced(rx, &stop, what).await? {
            return Ok(());
        }
    }
    let s = shared.clone();
    let pods = informer(
        Api::<Pod>::all(client.clone()),
        stop.clone(),
        tracker,
        move |seen| on_pod(&s, seen),
    );
    if !wait_synced(pods, &stop, "Pod").await? {
        return Ok(());
    }
    tracing::info!("scheduler {} caches synced; scheduling", cfg.scheduler_name);

    let limit = Arc::new(Semaphore::new(cfg.parallelism.max(1)));
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            p = limit.clone().acquire_owned() => p.context("the write limiter closed")?,
        };
        let (outcome, next_wake) = {
            let mut st = shared.lock();
            st.queue.flush(Instant::now());
            match st.queue.pop() {
                Some(pod) => (Some(schedule_one(&mut st, &cfg, pod, &mut rng)), None),
                None => (None, st.queue.next_backoff()),
            }
        };
        match outcome {
            Some(outcome) => {
                let shared = shared.clone();
                let stop = stop.clone();
                tracker.spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = carry_out(shared, outcome) => {}
                    }
                });
            }
            None => {
                drop(permit);
                // Wake at least every 30s so pods parked for 5 minutes get flushed back.
                let deadline =
                    next_wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}
