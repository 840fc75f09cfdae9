//! Node lifecycle controller (upstream pkg/controller/nodelifecycle with its NoExecute taint
//! manager, pkg/controller/tainteviction): watches node heartbeats (the node's Lease in
//! `kube-node-lease` and its Ready condition), marks silent nodes Unknown, keeps the
//! condition taints (`not-ready`/`unreachable`/pressure, NoSchedule and NoExecute) in sync,
//! marks pods on failed nodes not ready, and evicts pods that do not tolerate a node's
//! NoExecute taints (after their tolerationSeconds).
//!
//! Deliberately absent: zone disruption handling (upstream slows or stops evictions when a
//! large share of a zone's nodes fail at once); every failing node is tainted at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeStatus, ObjectReference, Pod, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::mpsc;

use crate::Context;
use crate::endpoints::{is_not_found, kit};

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
const NO_EXECUTE: &str = "NoExecute";
const NO_SCHEDULE: &str = "NoSchedule";
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Attempts for a node status/taint write that keeps conflicting (upstream
/// `NodeHealthUpdateRetry` and taint-update retries).
const UPDATE_RETRIES: usize = 5;
/// Attempts to delete one evicted pod (upstream taint manager `retries`).
const EVICTION_RETRIES: usize = 5;

// ---------------------------------------------------------------------------------------------
// Decisions (pure).

/// The taint a node condition calls for (upstream `nodeConditionToTaintKeyStatusMap`).
fn condition_taint(type_: &str, status: &str) -> Option<&'static str> {
    match (type_, status) {
        ("Ready", "False") => Some(TAINT_NOT_READY),
        ("Ready", "Unknown") => Some(TAINT_UNREACHABLE),
        ("MemoryPressure", "True") => Some(TAINT_MEMORY_PRESSURE),
        ("DiskPressure", "True") => Some(TAINT_DISK_PRESSURE),
        ("NetworkUnavailable", "True") => Some(TAINT_NETWORK_UNAVAILABLE),
        ("PIDPressure", "True") => Some(TAINT_PID_PRESSURE),
        _ => None,
    }
}

fn is_condition_taint(key: &str) -> bool {
    [
        TAINT_NOT_READY,
        TAINT_UNREACHABLE,
        TAINT_MEMORY_PRESSURE,
        TAINT_DISK_PRESSURE,
        TAINT_NETWORK_UNAVAILABLE,
        TAINT_PID_PRESSURE,
    ]
    .contains(&key)
}

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        effect: effect.into(),
        ..Default::default()
    }
}

fn node_condition<'a>(status: Option<&'a NodeStatus>, type_: &str) -> Option<&'a NodeCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn node_taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

fn no_execute_taints(node: &Node) -> Vec<Taint> {
    node_taints(node)
        .iter()
        .filter(|t| t.effect == NO_EXECUTE)
        .cloned()
        .collect()
}

/// Upstream `doNoScheduleTaintingPass`: the NoSchedule taints the node's conditions and
/// `spec.unschedulable` call for, and the ones it has that they no longer call for.
fn no_schedule_diff(node: &Node) -> (Vec<Taint>, Vec<Taint>) {
    let mut want: Vec<Taint> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| condition_taint(&c.type_, &c.status))
        .map(|key| taint(key, NO_SCHEDULE))
        .collect();
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        want.push(taint(TAINT_UNSCHEDULABLE, NO_SCHEDULE));
    }
    let have: Vec<&Taint> = node_taints(node)
        .iter()
        .filter(|t| {
            t.effect == NO_SCHEDULE && (t.key == TAINT_UNSCHEDULABLE || is_condition_taint(&t.key))
        })
        .collect();
    let add = want
        .iter()
        .filter(|w| !have.iter().any(|h| h.key == w.key))
        .cloned()
        .collect();
    let remove = have
        .iter()
        .filter(|h| !want.iter().any(|w| w.key == h.key))
        .map(|t| (*t).clone())
        .collect();
    (add, remove)
}

/// The node's taints after adding `add` (stamped with `now`) and removing `remove`
/// (matched by key and effect); `None` when nothing changes.
fn swapped_taints(
    current: &[Taint],
    add: &[Taint],
    remove: &[Taint],
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let same = |a: &Taint, b: &Taint| a.key == b.key && a.effect == b.effect;
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !remove.iter().any(|r| same(r, t)))
        .cloned()
        .collect();
    for a in add {
        match out.iter_mut().find(|t| same(t, a)) {
            Some(t) if t.value == a.value => {}
            Some(t) => t.value = a.value.clone(),
            None => out.push(Taint {
                time_added: Some(Time(now)),
                ..a.clone()
            }),
        }
    }
    (out != current).then_some(out)
}

/// Upstream `Toleration.ToleratesTaint`.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

/// When a pod with `tolerations` must leave a node with these NoExecute taints (each with the
/// time it was added): at once (`Timestamp::MIN`) for a taint it does not tolerate or
/// tolerates for <= 0 seconds, otherwise the earliest `timeAdded + tolerationSeconds`; `None`
/// when it tolerates them all forever. Like upstream `GetMatchingTolerations`, the first
/// toleration matching a taint is the one that counts.
fn eviction_deadline(
    taints: &[(Taint, Timestamp)],
    tolerations: &[Toleration],
) -> Option<Timestamp> {
    let mut deadline: Option<Timestamp> = None;
    for (taint, added) in taints {
        let candidate = match tolerations.iter().find(|t| tolerates(t, taint)) {
            None => Timestamp::MIN,
            Some(t) => match t.toleration_seconds {
                None => continue,
                Some(s) if s <= 0 => Timestamp::MIN,
                Some(s) => match added.checked_add(SignedDuration::from_secs(s)) {
                    Ok(t) => t,
                    // Far beyond any clock: effectively forever.
                    Err(_) => continue,
                },
            },
        };
        deadline = Some(deadline.map_or(candidate, |d| d.min(candidate)));
    }
    deadline
}

/// What the controller last saw of a node's heartbeats (upstream `nodeHealthData`). The
/// timestamps are this controller's clock when it saw a heartbeat change, so clock skew
/// between kubelets and the controller does not matter.
#[derive(Clone, Debug, PartialEq)]
struct NodeHealth {
    probe: Timestamp,
    ready_transition: Timestamp,
    ready: Option<NodeCondition>,
    lease_renew: Option<Timestamp>,
}

/// Upstream `tryUpdateNodeHealth`'s bookkeeping: the node's health record after observing
/// `node` and its Lease renew time at `now`.
fn observe(
    saved: Option<NodeHealth>,
    node: &Node,
    lease_renew: Option<Timestamp>,
    now: Timestamp,
) -> NodeHealth {
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let current = node_condition(node.status.as_ref(), "Ready").cloned();
    let saved_lease = saved.as_ref().and_then(|h| h.lease_renew);
    let fresh = |ready: Option<NodeCondition>| NodeHealth {
        probe: now,
        ready_transition: now,
        ready,
        lease_renew: None,
    };
    let mut health = match (saved, current) {
        // Never posted status: measured from creation, with the startup grace period.
        (None, None) => NodeHealth {
            probe: created,
            ready_transition: created,
            ready: None,
            lease_renew: None,
        },
        (Some(h), None) => NodeHealth { ready: None, ..h },
        (None, Some(c)) => fresh(Some(c)),
        (Some(h), Some(c)) => match &h.ready {
            None => fresh(Some(c)),
            Some(s) if s.last_heartbeat_time != c.last_heartbeat_time => {
                let ready_transition = if s.last_transition_time != c.last_transition_time {
                    now
                } else {
                    h.ready_transition
                };
                NodeHealth {
                    probe: now,
                    ready_transition,
                    ready: Some(c),
                    lease_renew: h.lease_renew,
                }
            }
            Some(_) => h,
        },
    };
    // A renewed Lease is a heartbeat too (the kubelet renews it every 10s, and posts status
    // only on change or every 5 minutes).
    if let Some(renew) = lease_renew
        && saved_lease.is_none_or(|s| s < renew)
    {
        health.lease_renew = Some(renew);
        health.probe = now;
    }
    health
}

/// Sets Ready and the pressure conditions to Unknown, as upstream does for a node whose
/// heartbeats stopped (NetworkUnavailable is left alone: the network plugin owns it).
fn mark_status_unknown(status: &mut NodeStatus, created: Option<Time>, now: Timestamp) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => conditions.push(NodeCondition {
                type_: type_.into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_heartbeat_time: created.clone(),
                last_transition_time: Some(Time(now)),
            }),
            Some(c) if c.status != "Unknown" => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
            }
            Some(_) => {}
        }
    }
}

fn to_instant(deadline: Timestamp) -> tokio::time::Instant {
    let wait = Duration::try_from(deadline.duration_since(Timestamp::now())).unwrap_or_default();
    tokio::time::Instant::now() + wait
}

fn pod_key(pod: &Pod) -> String {
    kit::key(pod)
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn node_reference(node: &Node) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: node.metadata.name.clone(),
        uid: node.metadata.uid.clone(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The controller.

/// What the informers tell the control loop.
enum Msg {
    /// A node changed; `no_execute_changed` when its NoExecute taints did (or it came/went).
    Node {
        name: String,
        no_execute_changed: bool,
    },
    /// A pod was added or changed; `assigned` when it just got (or changed) its node,
    /// `taint_relevant` when the taint manager must look at it again.
    Pod {
        key: String,
        assigned: bool,
        taint_relevant: bool,
    },
}

struct Controller {
    ctx: Arc<Context>,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    /// Nodes seen so far, by name (upstream `knownNodeSet`).
    known: HashMap<String, Arc<Node>>,
    health: HashMap<String, NodeHealth>,
    /// Nodes whose pods still have to be marked not ready after a failure.
    retry: HashSet<String>,
    /// Pods with a pending eviction, by key, and when it is due.
    scheduled: HashMap<String, Timestamp>,
    /// Pods we deleted (key → uid), so later passes do not repeat it before the watch shows it.
    evicted: HashMap<String, String>,
    /// When we first saw a NoExecute taint that has no timeAdded: (node, key, value).
    taint_first_seen: HashMap<(String, String, String), Timestamp>,
}

pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();

    let nodes = {
        let tx = tx.clone();
        kit::informer::<Node, _>(&ctx, watcher::Config::default(), move |old, ev| {
            let Some(node) = kit::object(ev) else { return };
            let deleted = matches!(ev, kit::Change::Delete(_));
            let no_execute_changed = deleted
                || old
                    .as_deref()
                    .is_none_or(|o| no_execute_taints(o) != no_execute_taints(node));
            let _ = tx.send(Msg::Node {
                name: node.metadata.name.clone().unwrap_or_default(),
                no_execute_changed,
            });
        })
    };
    let leases = kit::informer::<Lease, _>(
        &ctx,
        watcher::Config::default().fields(&format!("metadata.namespace={NODE_LEASE_NAMESPACE}")),
        |_, _| {},
    );
    let pods = {
        let tx = tx.clone();
        kit::informer::<Pod, _>(&ctx, watcher::Config::default(), move |old, ev| {
            let Some(pod) = kit::object(ev) else { return };
            if matches!(ev, kit::Change::Delete(_)) {
                return;
            }
            let node = pod_node(pod);
            let assigned = node.is_some() && old.as_deref().is_none_or(|o| pod_node(o) != node);
            let tolerations = |p: &Pod| p.spec.as_ref().and_then(|s| s.tolerations.clone());
            let taint_relevant = old
                .as_deref()
                .is_none_or(|o| pod_node(o) != node || tolerations(o) != tolerations(pod));
            if assigned || taint_relevant {
                let _ = tx.send(Msg::Pod {
                    key: pod_key(pod),
                    assigned,
                    taint_relevant,
                });
            }
        })
    };
    drop(tx);
    if !kit::wait_synced(&[&nodes], &shutdown).await
        || !kit::wait_synced(&[&leases], &shutdown).await
        || !kit::wait_synced(&[&pods], &shutdown).await
    {
        return Ok(());
    }

    let mut ctl = Controller {
        ctx,
        nodes,
        leases,
        pods,
        known: HashMap::new(),
        health: HashMap::new(),
        retry: HashSet::new(),
        scheduled: HashMap::new(),
        evicted: HashMap::new(),
        taint_first_seen: HashMap::new(),
    };
    let mut monitor = tokio::time::interval(ctl.ctx.opts.node_monitor_period);
    monitor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_eviction: Option<tokio::time::Instant> = None;
    loop {
        let eviction_due = async {
            match next_eviction {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut taint_pass = false;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = monitor.tick() => {
                ctl.monitor_node_health().await;
                taint_pass = true;
            }
            msg = rx.recv() => {
                let Some(first) = msg else { return Ok(()) };
                let mut batch = vec![first];
                while let Ok(m) = rx.try_recv() {
                    batch.push(m);
                }
                let mut dirty_nodes = BTreeSet::new();
                let mut assigned = BTreeSet::new();
                for m in batch {
                    match m {
                        Msg::Node { name, no_execute_changed } => {
                            taint_pass |= no_execute_changed;
                            dirty_nodes.insert(name);
                        }
                        Msg::Pod { key, assigned: a, taint_relevant } => {
                            taint_pass |= taint_relevant;
                            if a {
                                assigned.insert(key);
                            }
                        }
                    }
                }
                for name in dirty_nodes {
                    if let Err(e) = ctl.no_schedule_tainting_pass(&name).await {
                        tracing::warn!(node = %name, "syncing NoSchedule taints: {e:#}");
                    }
                }
                for key in assigned {
                    ctl.process_assigned_pod(&key).await;
                }
            }
            _ = eviction_due => taint_pass = true,
        }
        if taint_pass {
            next_eviction = ctl.taint_eviction_pass().await.map(to_instant);
        }
    }
}

impl Controller {
    fn node_api(&self) -> Api<Node> {
        Api::all(self.ctx.client.clone())
    }

    async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, reference).await {
            tracing::debug!("recording event {reason}: {e}");
        }
    }

    /// Upstream `monitorNodeHealth`, run every `node_monitor_period`.
    async fn monitor_node_health(&mut self) {
        let nodes = self.nodes.state();
        let names: HashSet<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        for node in &nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            if self.known.contains_key(&name) {
                continue;
            }
            tracing::info!(node = %name, "observed a new node");
            self.event(
                &node_reference(node),
                EventType::Normal,
                "RegisteredNode",
                format!("Node {name} event: Registered Node {name} in Controller"),
            )
            .await;
            self.known.insert(name.clone(), node.clone());
            // Like upstream, a newly observed node starts without the controller's NoExecute
            // taints; the health check below puts them back if it is still failing.
            if let Err(e) = self.mark_node_as_reachable(node).await {
                tracing::warn!(node = %name, "removing NoExecute taints: {e:#}");
            }
        }
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !names.contains(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(node) = self.known.remove(&name) {
                tracing::info!(node = %name, "observed a node deletion");
                self.event(
                    &node_reference(&node),
                    EventType::Normal,
                    "RemovingNode",
                    format!("Node {name} event: Removing Node {name} from Controller"),
                )
                .await;
            }
            self.health.remove(&name);
            self.retry.remove(&name);
        }

        let mut pods_by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for pod in self.pods.state() {
            if let Some(node) = pod_node(&pod) {
                pods_by_node
                    .entry(node.to_string())
                    .or_default()
                    .push(pod.clone());
            }
        }
        for node in nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let (node, observed, current) = match self.update_node_health(node).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node = %name, "updating node health (no pods will be evicted): {e:#}");
                    continue;
                }
            };
            if let Some(current) = current {
                self.process_taint_based_eviction(&node, &observed).await;
                let pods = pods_by_node.remove(&name).unwrap_or_default();
                let became_not_ready = current.status != "True" && observed.status == "True";
                if became_not_ready {
                    self.event(
                        &node_reference(&node),
                        EventType::Normal,
                        "NodeNotReady",
                        format!("Node {name} status is now: NodeNotReady"),
                    )
                    .await;
                }
                if (became_not_ready || (self.retry.contains(&name) && observed.status != "True"))
                    && let Err(e) = self.mark_pods_not_ready(&pods, &name).await
                {
                    tracing::warn!(node = %name, "marking pods not ready, will retry: {e:#}");
                    self.retry.insert(name);
                    continue;
                }
            }
            self.retry.remove(&name);
        }
    }

    /// Upstream `tryUpdateNodeHealth` with its retries: returns the node as written, the Ready
    /// condition as observed before this pass and as it is now.
    async fn update_node_health(
        &mut self,
        node: Arc<Node>,
    ) -> anyhow::Result<(Arc<Node>, NodeCondition, Option<NodeCondition>)> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut node = node;
        let mut last_err = None;
        for _ in 0..UPDATE_RETRIES {
            match self.try_update_node_health(&node).await {
                Ok((written, observed, current)) => return Ok((written, observed, current)),
                Err(e) => last_err = Some(e),
            }
            match self
                .node_api()
                .get_opt(&name)
                .await
                .with_context(|| format!("getting node {name}"))?
            {
                Some(fresh) => node = Arc::new(fresh),
                None => anyhow::bail!("node {name} was deleted"),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("updating node {name} kept failing")))
    }

    async fn try_update_node_health(
        &mut self,
        node: &Arc<Node>,
    ) -> anyhow::Result<(Arc<Node>, NodeCondition, Option<NodeCondition>)> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = Timestamp::now();
        let current = node_condition(node.status.as_ref(), "Ready").cloned();
        let grace = if current.is_some() {
            self.ctx.opts.node_monitor_grace_period
        } else {
            // Upstream's node startup grace period (1m) is 1.5x the monitor grace period (40s).
            self.ctx.opts.node_monitor_grace_period * 3 / 2
        };
        let observed = current.clone().unwrap_or_else(|| NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            last_heartbeat_time: node.metadata.creation_timestamp.clone(),
            last_transition_time: node.metadata.creation_timestamp.clone(),
            ..Default::default()
        });
        let lease_renew = self
            .leases
            .get(&ObjectRef::new(&name).within(NODE_LEASE_NAMESPACE))
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let health = observe(self.health.remove(&name), node, lease_renew, now);
        let stale = health
            .probe
            .checked_add(SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX))
            .is_ok_and(|deadline| now > deadline);
        self.health.insert(name.clone(), health.clone());
        if !stale {
            return Ok((node.clone(), observed, current));
        }
        let mut updated = (**node).clone();
        mark_status_unknown(
            updated.status.get_or_insert_with(Default::default),
            node.metadata.creation_timestamp.clone(),
            now,
        );
        let new_ready = node_condition(updated.status.as_ref(), "Ready").cloned();
        if new_ready.as_ref() == Some(&observed) {
            return Ok((node.clone(), observed, new_ready));
        }
        tracing::info!(node = %name, "no heartbeat for {grace:?}: marking node status Unknown");
        let written = self
            .node_api()
            .replace_status(&name, &PostParams::default(), &updated)
            .await
            .with_context(|| format!("updating status of node {name}"))?;
        let ready = node_condition(written.status.as_ref(), "Ready").cloned();
        self.health.insert(
            name,
            NodeHealth {
                ready: ready.clone(),
                ready_transition: now,
                ..health
            },
        );
        Ok((Arc::new(written), observed, ready))
    }

    /// Upstream `processTaintBaseEviction`: NoExecute `not-ready` or `unreachable` taint
    /// following the observed Ready condition (mutually exclusive), none when Ready.
    async fn process_taint_based_eviction(&self, node: &Node, observed: &NodeCondition) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let (add, remove) = match observed.status.as_str() {
            "False" => (
                vec![taint(TAINT_NOT_READY, NO_EXECUTE)],
                vec![taint(TAINT_UNREACHABLE, NO_EXECUTE)],
            ),
            "Unknown" => (
                vec![taint(TAINT_UNREACHABLE, NO_EXECUTE)],
                vec![taint(TAINT_NOT_READY, NO_EXECUTE)],
            ),
            _ => (
                vec![],
                vec![
                    taint(TAINT_UNREACHABLE, NO_EXECUTE),
                    taint(TAINT_NOT_READY, NO_EXECUTE),
                ],
            ),
        };
        match self.swap_taints(node, &add, &remove).await {
            Ok(true) if add.is_empty() => {
                tracing::info!(node = %name, "node is healthy again: removed NoExecute taints")
            }
            Ok(true) => {
                tracing::info!(node = %name, ready = %observed.status, "tainted node NoExecute")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(node = %name, "updating NoExecute taints, will retry next pass: {e:#}")
            }
        }
    }

    async fn mark_node_as_reachable(&self, node: &Node) -> anyhow::Result<bool> {
        self.swap_taints(
            node,
            &[],
            &[
                taint(TAINT_UNREACHABLE, NO_EXECUTE),
                taint(TAINT_NOT_READY, NO_EXECUTE),
            ],
        )
        .await
    }

    /// Upstream `doNoScheduleTaintingPass` for one node.
    async fn no_schedule_tainting_pass(&self, name: &str) -> anyhow::Result<()> {
        let Some(node) = self.nodes.get(&ObjectRef::new(name)) else {
            return Ok(());
        };
        let (add, remove) = no_schedule_diff(&node);
        if !add.is_empty() || !remove.is_empty() {
            self.swap_taints(&node, &add, &remove).await?;
        }
        Ok(())
    }

    /// Upstream `SwapNodeControllerTaint`: adds and removes taints with a read-modify-write
    /// pinned to the resourceVersion read, retrying conflicts. False when nothing changed.
    async fn swap_taints(
        &self,
        cached: &Node,
        add: &[Taint],
        remove: &[Taint],
    ) -> anyhow::Result<bool> {
        let name = cached.metadata.name.clone().unwrap_or_default();
        // The cache says there is nothing to do: skip the round trip.
        if swapped_taints(node_taints(cached), add, remove, Timestamp::now()).is_none() {
            return Ok(false);
        }
        let api = self.node_api();
        for _ in 0..UPDATE_RETRIES {
            let Some(node) = api
                .get_opt(&name)
                .await
                .with_context(|| format!("getting node {name}"))?
            else {
                return Ok(false);
            };
            let Some(taints) = swapped_taints(node_taints(&node), add, remove, Timestamp::now())
            else {
                return Ok(false);
            };
            let patch = json!({
                "metadata": { "resourceVersion": node.metadata.resource_version },
                "spec": { "taints": taints },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e).with_context(|| format!("updating taints of node {name}")),
            }
        }
        anyhow::bail!("updating taints of node {name}: kept conflicting")
    }

    /// Upstream `MarkPodsNotReady`: sets the Ready condition of the node's pods to False.
    async fn mark_pods_not_ready(&self, pods: &[Arc<Pod>], node: &str) -> anyhow::Result<()> {
        let mut errors = vec![];
        for pod in pods {
            if pod_node(pod) != Some(node) {
                continue;
            }
            let Some(ready) = crate::endpoints::pod_ready_condition(pod) else {
                continue;
            };
            if ready.status == "False" {
                continue;
            }
            let (ns, name) = (
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
            );
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
            // Strategic merge on the conditions list (merge key `type`) touches only Ready.
            let patch = json!({
                "metadata": { "uid": pod.metadata.uid },
                "status": { "conditions": [{ "type": "Ready", "status": "False", "lastTransitionTime": Time(Timestamp::now()) }] },
            });
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = %format!("{ns}/{name}"), %node, "marked pod not ready");
                    self.event(
                        &pod_reference(pod),
                        EventType::Warning,
                        "NodeNotReady",
                        "Node is not ready".into(),
                    )
                    .await;
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => errors.push(format!("{ns}/{name}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("marking pods not ready: {}", errors.join("; "))
        }
    }

    /// Upstream `processPod`: a pod just assigned to a node that is not Ready is marked not
    /// ready right away.
    async fn process_assigned_pod(&mut self, key: &str) {
        let Ok((ns, name)) = kit::split(key) else {
            return;
        };
        let Some(pod) = self.pods.get(&ObjectRef::new(name).within(ns)) else {
            return;
        };
        let Some(node) = pod_node(&pod).map(str::to_string) else {
            return;
        };
        let Some(ready) = self.health.get(&node).and_then(|h| h.ready.clone()) else {
            return;
        };
        if ready.status != "True"
            && let Err(e) = self.mark_pods_not_ready(&[pod], &node).await
        {
            tracing::warn!(pod = %key, "marking pod not ready, will retry: {e:#}");
            self.retry.insert(node);
        }
    }

    /// The NoExecute taint manager (upstream tainteviction), level-triggered: evicts pods whose
    /// deadline passed and returns the next deadline.
    async fn taint_eviction_pass(&mut self) -> Option<Timestamp> {
        let now = Timestamp::now();
        let mut tainted: HashMap<String, Vec<(Taint, Timestamp)>> = HashMap::new();
        let mut first_seen = HashMap::new();
        for node in self.nodes.state() {
            let taints = no_execute_taints(&node);
            if taints.is_empty() {
                continue;
            }
            let name = node.metadata.name.clone().unwrap_or_default();
            let timed = taints
                .into_iter()
                .map(|t| {
                    let added = t.time_added.as_ref().map(|a| a.0).unwrap_or_else(|| {
                        // No timeAdded (a taint set by hand): count from when we first saw it.
                        let id = (
                            name.clone(),
                            t.key.clone(),
                            t.value.clone().unwrap_or_default(),
                        );
                        let seen = self.taint_first_seen.get(&id).copied().unwrap_or(now);
                        first_seen.insert(id, seen);
                        seen
                    });
                    (t, added)
                })
                .collect();
            tainted.insert(name, timed);
        }
        self.taint_first_seen = first_seen;

        let pods = self.pods.state();
        let live: HashMap<String, Arc<Pod>> =
            pods.iter().map(|p| (pod_key(p), p.clone())).collect();
        // Forget evictions once the pod is gone or replaced by a new one of the same name.
        self.evicted.retain(|key, uid| {
            live.get(key)
                .is_some_and(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
        });

        let mut scheduled = HashMap::new();
        let mut next: Option<Timestamp> = None;
        for pod in &pods {
            let Some(taints) = pod_node(pod).and_then(|n| tainted.get(n)) else {
                continue;
            };
            let key = pod_key(pod);
            if pod.metadata.deletion_timestamp.is_some() || self.evicted.contains_key(&key) {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            match eviction_deadline(taints, &tolerations) {
                None => {}
                Some(at) if at <= now => match self.evict(pod).await {
                    Ok(()) => {
                        self.evicted
                            .insert(key, pod.metadata.uid.clone().unwrap_or_default());
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key, "taint eviction failed, retrying: {e:#}");
                        let retry = now + SignedDuration::from_secs(1);
                        next = Some(next.map_or(retry, |n| n.min(retry)));
                    }
                },
                Some(at) => {
                    if !self.scheduled.contains_key(&key) {
                        tracing::info!(pod = %key, "scheduling taint eviction at {at}");
                    }
                    scheduled.insert(key, at);
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        // Scheduled evictions no longer needed (taint gone, now tolerated forever).
        let cancelled: Vec<String> = self
            .scheduled
            .keys()
            .filter(|k| !scheduled.contains_key(*k) && !self.evicted.contains_key(*k))
            .cloned()
            .collect();
        for key in cancelled {
            if let Some(pod) = live
                .get(&key)
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                self.event(
                    &pod_reference(pod),
                    EventType::Normal,
                    "TaintManagerEviction",
                    format!("Cancelling deletion of Pod {key}"),
                )
                .await;
            }
        }
        self.scheduled = scheduled;
        next
    }

    /// Upstream `addConditionAndDeletePod`, with the TaintManagerEviction event first.
    async fn evict(&self, pod: &Pod) -> anyhow::Result<()> {
        let key = pod_key(pod);
        let (ns, name) = (
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
        );
        tracing::info!(pod = %key, "deleting pod: NoExecute taint");
        self.event(
            &pod_reference(pod),
            EventType::Normal,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {key}"),
        )
        .await;
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        let mut last_err = None;
        for _ in 0..EVICTION_RETRIES {
            match self.add_condition_and_delete(&api, pod, name).await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("deleting pod {key} kept failing")))
    }

    async fn add_condition_and_delete(
        &self,
        api: &Api<Pod>,
        cached: &Pod,
        name: &str,
    ) -> anyhow::Result<()> {
        let Some(pod) = api
            .get_opt(name)
            .await
            .with_context(|| format!("getting pod {name}"))?
        else {
            return Ok(());
        };
        if pod.metadata.uid != cached.metadata.uid {
            // A new pod took the name; the evicted one is gone already.
            return Ok(());
        }
        let has_condition = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "DisruptionTarget"
                        && c.status == "True"
                        && c.reason.as_deref() == Some("DeletionByTaintManager")
                })
            });
        if !has_condition {
            let patch = json!({
                "metadata": { "uid": pod.metadata.uid },
                "status": { "conditions": [{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByTaintManager",
                    "message": "Taint manager: deleting due to NoExecute taint",
                    "lastTransitionTime": Time(Timestamp::now()),
                }] },
            });
            api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .with_context(|| format!("adding DisruptionTarget condition to pod {name}"))?;
        }
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting pod {name}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp fixture")
    }

    fn toleration(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).expect("toleration fixture")
    }

    #[test]
    fn toleration_matching() {
        let t = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: NO_EXECUTE.into(),
            ..Default::default()
        };
        let cases = [
            (
                json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"}),
                true,
            ),
            (json!({"key": "k", "value": "v"}), true),
            (json!({"key": "k", "operator": "Exists"}), true),
            (json!({"operator": "Exists"}), true),
            (json!({"operator": "Exists", "effect": "NoSchedule"}), false),
            (json!({"key": "k", "value": "w"}), false),
            (json!({"key": "other", "operator": "Exists"}), false),
            (json!({"key": "k", "operator": "Lt", "value": "v"}), false),
        ];
        for (tol, want) in cases {
            assert_eq!(tolerates(&toleration(tol.clone()), &t), want, "{tol}");
        }
    }

    #[test]
    fn eviction_deadlines() {
        let added = ts("2024-01-01T00:00:00Z");
        let unreachable = (
            Taint {
                time_added: Some(Time(added)),
                ..taint(TAINT_UNREACHABLE, NO_EXECUTE)
            },
            added,
        );
        let later = ts("2024-01-01T00:01:00Z");
        let not_ready = (taint(TAINT_NOT_READY, NO_EXECUTE), later);
        type Case = (
            Vec<(Taint, Timestamp)>,
            serde_json::Value,
            Option<Timestamp>,
        );
        let cases: Vec<Case> = vec![
            (vec![unreachable.clone()], json!([]), Some(Timestamp::MIN)),
            (
                vec![unreachable.clone()],
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]),
                None,
            ),
            (
                vec![unreachable.clone()],
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
                Some(ts("2024-01-01T00:05:00Z")),
            ),
            (
                vec![unreachable.clone()],
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 0}]),
                Some(Timestamp::MIN),
            ),
            // Two taints: each counted from its own timeAdded; the earliest wins.
            (
                vec![unreachable.clone(), not_ready.clone()],
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 300},
                       {"key": TAINT_NOT_READY, "operator": "Exists", "tolerationSeconds": 30}]),
                Some(ts("2024-01-01T00:01:30Z")),
            ),
            // One taint tolerated forever, the other not at all.
            (
                vec![unreachable.clone(), not_ready],
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists"}]),
                Some(Timestamp::MIN),
            ),
            // The first matching toleration counts (forever here).
            (
                vec![unreachable],
                json!([{"operator": "Exists"}, {"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 5}]),
                None,
            ),
        ];
        for (taints, tols, want) in cases {
            let tols: Vec<Toleration> =
                serde_json::from_value(tols.clone()).expect("tolerations fixture");
            assert_eq!(eviction_deadline(&taints, &tols), want, "{tols:?}");
        }
    }

    fn node_with(
        conditions: serde_json::Value,
        taints: serde_json::Value,
        unschedulable: bool,
    ) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"taints": taints, "unschedulable": unschedulable},
            "status": {"conditions": conditions},
        }))
        .expect("node fixture")
    }

    #[test]
    fn no_schedule_taints_follow_conditions() {
        let keys = |ts: Vec<Taint>| ts.into_iter().map(|t| t.key).collect::<Vec<_>>();
        let cases = [
            (
                json!([{"type": "Ready", "status": "True"}]),
                json!([]),
                false,
                vec![],
                vec![],
            ),
            (
                json!([{"type": "Ready", "status": "Unknown"}]),
                json!([]),
                false,
                vec![TAINT_UNREACHABLE],
                vec![],
            ),
            (
                json!([{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "True"}]),
                json!([]),
                false,
                vec![TAINT_NOT_READY, TAINT_DISK_PRESSURE],
                vec![],
            ),
            (
                json!([{"type": "Ready", "status": "True"}]),
                json!([{"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}, {"key": TAINT_UNREACHABLE, "effect": "NoExecute"}, {"key": "custom", "effect": "NoSchedule"}]),
                false,
                vec![],
                vec![TAINT_UNREACHABLE],
            ),
            (
                json!([{"type": "Ready", "status": "True"}]),
                json!([]),
                true,
                vec![TAINT_UNSCHEDULABLE],
                vec![],
            ),
            (
                json!([{"type": "Ready", "status": "Unknown"}]),
                json!([{"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}]),
                false,
                vec![],
                vec![],
            ),
        ];
        for (conditions, taints, unschedulable, want_add, want_remove) in cases {
            let node = node_with(conditions.clone(), taints, unschedulable);
            let (add, remove) = no_schedule_diff(&node);
            assert!(add.iter().chain(&remove).all(|t| t.effect == NO_SCHEDULE));
            assert_eq!(
                (keys(add), keys(remove)),
                (
                    want_add.iter().map(|s| s.to_string()).collect(),
                    want_remove.iter().map(|s| s.to_string()).collect()
                ),
                "{conditions}"
            );
        }
    }

    #[test]
    fn swapping_taints() {
        let now = ts("2024-01-01T00:00:00Z");
        let custom = Taint {
            key: "custom".into(),
            effect: NO_EXECUTE.into(),
            ..Default::default()
        };
        let unreachable = taint(TAINT_UNREACHABLE, NO_EXECUTE);
        let not_ready = taint(TAINT_NOT_READY, NO_EXECUTE);
        // Add stamps timeAdded and keeps other taints.
        let out = swapped_taints(
            std::slice::from_ref(&custom),
            std::slice::from_ref(&unreachable),
            std::slice::from_ref(&not_ready),
            now,
        )
        .expect("changed");
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].time_added, Some(Time(now)));
        // Already there (with its original timeAdded): no change.
        assert!(
            swapped_taints(
                &out,
                std::slice::from_ref(&unreachable),
                std::slice::from_ref(&not_ready),
                ts("2024-02-01T00:00:00Z")
            )
            .is_none()
        );
        // Swap: unreachable → not-ready.
        let swapped = swapped_taints(
            &out,
            std::slice::from_ref(&not_ready),
            std::slice::from_ref(&unreachable),
            now,
        )
        .expect("changed");
        assert_eq!(
            swapped.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
            ["custom", TAINT_NOT_READY]
        );
        // Removing what is absent changes nothing.
        assert!(swapped_taints(&[custom], &[], &[unreachable], now).is_none());
    }

    fn node(ready: Option<(&str, &str, &str)>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                creation_timestamp: Some(Time(ts("2024-01-01T00:00:00Z"))),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: ready.map(|(status, heartbeat, transition)| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: status.into(),
                        last_heartbeat_time: Some(Time(ts(heartbeat))),
                        last_transition_time: Some(Time(ts(transition))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn health_observation() {
        let t0 = ts("2024-01-01T00:10:00Z");
        let t1 = ts("2024-01-01T00:10:30Z");
        let t2 = ts("2024-01-01T00:11:00Z");
        // Never posted status: probe from creation.
        let h = observe(None, &node(None), None, t0);
        assert_eq!(h.probe, ts("2024-01-01T00:00:00Z"));
        // First sight with status: now.
        let n = node(Some((
            "True",
            "2024-01-01T00:09:00Z",
            "2024-01-01T00:00:00Z",
        )));
        let h = observe(None, &n, None, t0);
        assert_eq!(h.probe, t0);
        // Same heartbeat, no lease: probe stays.
        let h = observe(Some(h), &n, None, t1);
        assert_eq!(h.probe, t0);
        // Lease renewed: probe moves.
        let h = observe(Some(h), &n, Some(ts("2024-01-01T00:10:29Z")), t1);
        assert_eq!(
            (h.probe, h.lease_renew),
            (t1, Some(ts("2024-01-01T00:10:29Z")))
        );
        // Same lease again: probe stays.
        let h = observe(Some(h), &n, Some(ts("2024-01-01T00:10:29Z")), t2);
        assert_eq!(h.probe, t1);
        // New heartbeat with a transition: probe and transition move.
        let n2 = node(Some((
            "False",
            "2024-01-01T00:10:59Z",
            "2024-01-01T00:10:59Z",
        )));
        let h = observe(Some(h), &n2, Some(ts("2024-01-01T00:10:29Z")), t2);
        assert_eq!((h.probe, h.ready_transition), (t2, t2));
        assert_eq!(h.ready.map(|c| c.status), Some("False".into()));
    }

    #[test]
    fn unknown_marking() {
        let now = ts("2024-01-01T01:00:00Z");
        let mut n = node(Some((
            "True",
            "2024-01-01T00:09:00Z",
            "2024-01-01T00:00:00Z",
        )));
        let status = n.status.as_mut().expect("status");
        mark_status_unknown(status, Some(Time(ts("2024-01-01T00:00:00Z"))), now);
        let conditions = status.conditions.clone().unwrap_or_default();
        let ready = conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("ready");
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_deref(),
                ready.message.as_deref()
            ),
            (
                "Unknown",
                Some("NodeStatusUnknown"),
                Some("Kubelet stopped posting node status.")
            )
        );
        assert_eq!(ready.last_transition_time, Some(Time(now)));
        assert_eq!(
            ready.last_heartbeat_time,
            Some(Time(ts("2024-01-01T00:09:00Z")))
        );
        for type_ in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            let c = conditions
                .iter()
                .find(|c| c.type_ == type_)
                .expect("condition added");
            assert_eq!(
                (c.status.as_str(), c.reason.as_deref()),
                ("Unknown", Some("NodeStatusNeverUpdated"))
            );
        }
        assert!(!conditions.iter().any(|c| c.type_ == "NetworkUnavailable"));
        // Idempotent: a second pass changes nothing.
        let before = status.clone();
        mark_status_unknown(status, None, ts("2024-01-01T02:00:00Z"));
        assert_eq!(*status, before);
    }
}
