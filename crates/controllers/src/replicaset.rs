//! ReplicaSet and ReplicationController controllers (upstream pkg/controller/replicaset): keep
//! exactly `spec.replicas` active pods matching the selector, adopting orphans, releasing pods
//! that stopped matching, creating in slow-start batches and deleting the least valuable pods.
//!
//! Both kinds share one reconcile through [`Workload`]: an RC is an RS with a map selector.
//! Pods are read with a fresh (quorum) list on every sync instead of a cache, so a sync never
//! acts on pods it created a moment ago but has not seen yet; that replaces upstream's
//! "expectations" bookkeeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Upstream `BurstReplicas`: at most this many creates or deletes per sync.
pub const BURST_REPLICAS: usize = 500;
/// Upstream `SlowStartInitialBatchSize`.
pub const SLOW_START_INITIAL_BATCH: usize = 1;
/// Upstream's annotation that lets users rank pods for scale-down.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Condition type (RS and RC) set while creates or deletes fail.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Api {
        context: String,
        source: kube::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Manage(String),
}

pub(crate) fn api_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let context = context.into();
    move |source| Error::Api { context, source }
}

// ---------------------------------------------------------------------------------------------
// Labels and selectors (private copies so this file does not wait on util.rs).

/// Whether `labels` satisfy a label selector. An empty selector matches everything, like
/// upstream's `LabelSelectorAsSelector`; callers that must not select everything check first.
pub(crate) fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels
        && ml.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    for e in sel.match_expressions.iter().flatten() {
        let have = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

pub(crate) fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// The selector in the API's `labelSelector` query syntax.
pub(crate) fn selector_string(sel: &LabelSelector) -> Result<String, Error> {
    let mut parts: Vec<String> = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        parts.push(format!("{k}={v}"));
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, values.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, values.join(",")),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => {
                return Err(Error::Invalid(format!(
                    "{op:?} is not a valid label selector operator"
                )));
            }
        });
    }
    Ok(parts.join(","))
}

pub(crate) fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

pub(crate) fn new_controller_ref(
    api_version: &str,
    kind: &str,
    meta: &ObjectMeta,
) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

// ---------------------------------------------------------------------------------------------
// Pod predicates (upstream podutil).

pub(crate) fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Upstream `IsPodActive`: not terminal and not being deleted.
pub(crate) fn pod_active(pod: &Pod) -> bool {
    !matches!(pod_phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub(crate) fn pod_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// When the pod became ready, if it is ready.
fn pod_ready_time(pod: &Pod) -> Option<jiff::Timestamp> {
    let c = ready_condition(pod)?;
    if c.status != "True" {
        return None;
    }
    c.last_transition_time.as_ref().map(|t| t.0)
}

/// Upstream `IsPodAvailable`: ready for at least `min_ready_seconds`.
pub(crate) fn pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    if !pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    match ready_condition(pod).and_then(|c| c.last_transition_time.as_ref()) {
        Some(t) => t.0 + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)) < now,
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Deletion ranking (upstream controller.ActivePodsWithRanks with LogarithmicScaleDown, GA).

/// What ranking needs to know about a pod, so the order is testable without whole pods.
#[derive(Debug, Clone, Default)]
pub struct RankInfo {
    pub node_name: String,
    pub phase: String,
    pub ready: bool,
    pub ready_time: Option<jiff::Timestamp>,
    pub deletion_cost: i64,
    /// Related active pods on the same node: doubled-up pods go first.
    pub colocated: usize,
    pub restarts: i32,
    pub created: Option<jiff::Timestamp>,
    pub uid: String,
}

impl RankInfo {
    fn of(pod: &Pod, colocated: usize) -> Self {
        let status = pod.status.as_ref();
        let restarts = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0);
        RankInfo {
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            phase: pod_phase(pod).to_string(),
            ready: pod_ready(pod),
            ready_time: pod_ready_time(pod),
            // Upstream ignores an unparsable cost (treats it as 0).
            deletion_cost: pod
                .annotations()
                .get(POD_DELETION_COST)
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(0, i64::from),
            colocated,
            restarts,
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

fn phase_ordinal(phase: &str) -> u8 {
    match phase {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

/// log2 of the age in nanoseconds, -1 for no age: timestamps in the same power-of-two bucket
/// count as equal so scale-down spreads randomly (by UID) among similarly old pods.
fn log_bucket(t: jiff::Timestamp, now: jiff::Timestamp) -> i64 {
    let d = now.duration_since(t).as_nanos();
    if d > 0 { (d as f64).log2() as i64 } else { -1 }
}

/// Upstream `afterOrZero` turned into an ordering: missing first, then later first.
fn newer_first(
    a: Option<jiff::Timestamp>,
    b: Option<jiff::Timestamp>,
    ua: &str,
    ub: &str,
    now: jiff::Timestamp,
) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) if a == b => Ordering::Equal,
        (Some(a), Some(b)) => match log_bucket(a, now).cmp(&log_bucket(b, now)) {
            Ordering::Equal => ua.cmp(ub),
            o => o,
        },
    }
}

/// Orders pods so the first ones are deleted first.
pub fn deletion_order(a: &RankInfo, b: &RankInfo, now: jiff::Timestamp) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    // 1. Unassigned before assigned.
    if a.node_name.is_empty() != b.node_name.is_empty() {
        return if a.node_name.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 2. Pending < Unknown < Running.
    let o = phase_ordinal(&a.phase).cmp(&phase_ordinal(&b.phase));
    if o != Ordering::Equal {
        return o;
    }
    // 3. Not ready before ready.
    if a.ready != b.ready {
        return if a.ready {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    // 4. Lower deletion cost first.
    let o = a.deletion_cost.cmp(&b.deletion_cost);
    if o != Ordering::Equal {
        return o;
    }
    // 5. More doubled-up first.
    let o = b.colocated.cmp(&a.colocated);
    if o != Ordering::Equal {
        return o;
    }
    // 6. Ready for less time first.
    if a.ready && b.ready {
        let o = newer_first(a.ready_time, b.ready_time, &a.uid, &b.uid, now);
        if o != Ordering::Equal {
            return o;
        }
    }
    // 7. More restarts first.
    let o = b.restarts.cmp(&a.restarts);
    if o != Ordering::Equal {
        return o;
    }
    // 8. Newer first.
    newer_first(a.created, b.created, &a.uid, &b.uid, now)
}

/// Picks `diff` pods to delete out of `pods` (all active, all owned).
fn pods_to_delete(pods: &[Pod], diff: usize, now: jiff::Timestamp) -> Vec<&Pod> {
    if diff >= pods.len() {
        return pods.iter().collect();
    }
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *on_node.entry(n).or_default() += 1;
        }
    }
    let mut ranked: Vec<(RankInfo, &Pod)> = pods
        .iter()
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("");
            let colocated = if node.is_empty() {
                0
            } else {
                on_node.get(node).copied().unwrap_or(0)
            };
            (RankInfo::of(p, colocated), p)
        })
        .collect();
    ranked.sort_by(|a, b| deletion_order(&a.0, &b.0, now));
    ranked.into_iter().take(diff).map(|(_, p)| p).collect()
}

/// Upstream `slowStartBatch` sizes: 1, 2, 4, … until `count` calls are made.
pub fn slow_start_batches(count: usize, initial: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut remaining = count;
    let mut batch = remaining.min(initial.max(1));
    while batch > 0 {
        out.push(batch);
        remaining -= batch;
        batch = (2 * batch).min(remaining);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The two kinds.

/// What the sync reads from a ReplicaSet or ReplicationController.
#[derive(Debug, Clone)]
pub(crate) struct View {
    replicas: i32,
    selector: LabelSelector,
    template: Option<PodTemplateSpec>,
    min_ready_seconds: i32,
    status: SetStatus,
}

/// Status fields shared (with the same JSON names) by ReplicaSetStatus and
/// ReplicationControllerStatus.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SetStatus {
    replicas: i32,
    fully_labeled_replicas: i32,
    ready_replicas: i32,
    available_replicas: i32,
    observed_generation: i64,
    conditions: Vec<ReplicaSetCondition>,
}

pub(crate) trait Workload:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    const API_VERSION: &'static str;
    fn view(&self) -> View;
}

impl Workload for ReplicaSet {
    const KIND: &'static str = "ReplicaSet";
    const API_VERSION: &'static str = "apps/v1";
    fn view(&self) -> View {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        View {
            replicas: spec.replicas.unwrap_or(1),
            selector: spec.selector,
            template: spec.template,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            status: SetStatus {
                replicas: st.replicas,
                fully_labeled_replicas: st.fully_labeled_replicas.unwrap_or(0),
                ready_replicas: st.ready_replicas.unwrap_or(0),
                available_replicas: st.available_replicas.unwrap_or(0),
                observed_generation: st.observed_generation.unwrap_or(0),
                conditions: st.conditions.unwrap_or_default(),
            },
        }
    }
}

impl Workload for ReplicationController {
    const KIND: &'static str = "ReplicationController";
    const API_VERSION: &'static str = "v1";
    fn view(&self) -> View {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        // An RC's selector defaults to its template's labels.
        let labels = spec.selector.filter(|s| !s.is_empty()).or_else(|| {
            spec.template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
        });
        View {
            replicas: spec.replicas.unwrap_or(1),
            selector: LabelSelector {
                match_labels: labels,
                match_expressions: None,
            },
            template: spec.template,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            status: SetStatus {
                replicas: st.replicas,
                fully_labeled_replicas: st.fully_labeled_replicas.unwrap_or(0),
                ready_replicas: st.ready_replicas.unwrap_or(0),
                available_replicas: st.available_replicas.unwrap_or(0),
                observed_generation: st.observed_generation.unwrap_or(0),
                conditions: st
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| ReplicaSetCondition {
                        type_: c.type_,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                        last_transition_time: c.last_transition_time,
                    })
                    .collect(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Controller.

struct Ctx<W: Workload> {
    base: Arc<crate::Context>,
    store: Store<W>,
    /// Owned pods seen (by the pod watch) not matching their owner's selector: owner UID →
    /// (namespace, pod name). The sync re-reads each before releasing it.
    release: Mutex<HashMap<String, HashSet<(String, String)>>>,
}

pub async fn run(ctx: Arc<crate::Context>) -> anyhow::Result<()> {
    run_kind::<ReplicaSet>(ctx).await
}

pub async fn run_rc(ctx: Arc<crate::Context>) -> anyhow::Result<()> {
    run_kind::<ReplicationController>(ctx).await
}

async fn run_kind<W>(base: Arc<crate::Context>) -> anyhow::Result<()>
where
    W: Workload + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let client = base.client.clone();
    let controller = Controller::new(
        Api::<W>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let store = controller.store();
    let ctx = Arc::new(Ctx {
        base: base.clone(),
        store: store.clone(),
        release: Mutex::new(HashMap::new()),
    });
    let mapper_ctx = ctx.clone();
    let shutdown = base.shutdown.clone();
    let pods = base
        .informers
        .get::<Pod>(&client, watcher::Config::default(), &base.shutdown);
    controller
        .watches_shared_stream(pods.objects(), move |pod| mapper_ctx.owners_of(&pod))
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile::<W>, error_policy::<W>, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(kind = W::KIND, "reconcile failed: {e}");
            }
        })
        .await;
    Ok(())
}

impl<W: Workload> Ctx<W> {
    /// Which sets a pod event concerns: its controller, or for an orphan every set whose
    /// selector matches it (to adopt it).
    fn owners_of(&self, pod: &Pod) -> Vec<ObjectRef<W>> {
        let ns = pod.namespace().unwrap_or_default();
        if let Some(r) = controller_ref(&pod.metadata) {
            if r.kind != W::KIND || r.api_version != W::API_VERSION {
                return vec![];
            }
            let key = ObjectRef::<W>::new(&r.name).within(&ns);
            if let Some(owner) = self.store.get(&key) {
                let sel = owner.view().selector;
                if !selector_matches(&sel, pod.labels())
                    && let Ok(mut m) = self.release.lock()
                {
                    m.entry(r.uid.clone())
                        .or_default()
                        .insert((ns.clone(), pod.name_any()));
                }
            }
            return vec![key];
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return vec![];
        }
        self.store
            .state()
            .iter()
            .filter(|w| w.namespace().as_deref() == Some(ns.as_str()))
            .filter(|w| {
                let sel = w.view().selector;
                !selector_is_empty(&sel) && selector_matches(&sel, pod.labels())
            })
            .map(|w| ObjectRef::from_obj(w.as_ref()))
            .collect()
    }
}

fn error_policy<W: Workload>(_obj: Arc<W>, err: &Error, _ctx: Arc<Ctx<W>>) -> Action {
    tracing::debug!(kind = W::KIND, "sync failed, retrying: {err}");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile<W>(obj: Arc<W>, ctx: Arc<Ctx<W>>) -> Result<Action, Error>
where
    W: Workload + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let client = ctx.base.client.clone();
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let uid = obj.uid().unwrap_or_default();
    let view = obj.view();
    let deleting = obj.meta().deletion_timestamp.is_some();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let my_ref = new_controller_ref(W::API_VERSION, W::KIND, obj.meta())
        .ok_or_else(|| Error::Invalid(format!("{} {ns}/{name} has no name or uid", W::KIND)))?;

    // Release owned pods that stopped matching (seen by the pod watch).
    let candidates = ctx
        .release
        .lock()
        .ok()
        .and_then(|mut m| m.remove(&uid))
        .unwrap_or_default();
    for (pns, pname) in candidates {
        let Some(pod) = pods_api
            .get_opt(&pname)
            .await
            .map_err(api_err(format!("get pod {pns}/{pname}")))?
        else {
            continue;
        };
        if controller_ref(&pod.metadata).is_some_and(|r| r.uid == uid)
            && !selector_matches(&view.selector, pod.labels())
        {
            release_pod(&pods_api, &pod, &uid).await?;
        }
    }

    // A fresh list, so pods this controller just created or deleted are always counted.
    let sel = selector_string(&view.selector)?;
    let listed = pods_api
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(api_err(format!("list pods for {} {ns}/{name}", W::KIND)))?;
    let mut owned: Vec<Pod> = Vec::new();
    for pod in listed.items {
        if !pod_active(&pod) || !selector_matches(&view.selector, pod.labels()) {
            continue;
        }
        match controller_ref(&pod.metadata) {
            Some(r) if r.uid == uid => owned.push(pod),
            Some(_) => {}
            None if !deleting && !selector_is_empty(&view.selector) => {
                if let Some(p) = adopt_pod(&pods_api, &pod, &my_ref).await? {
                    owned.push(p);
                }
            }
            None => {}
        }
    }

    let mut manage_err: Option<(String, String)> = None;
    if !deleting {
        manage_err = manage_replicas(&ctx, obj.as_ref(), &view, &pods_api, &my_ref, &owned).await;
        if manage_err.is_some() {
            // Re-read so the status reflects what did get created or deleted.
            let listed = pods_api
                .list(&ListParams::default().labels(&sel))
                .await
                .map_err(api_err("relist pods"))?;
            owned = listed
                .items
                .into_iter()
                .filter(|p| {
                    pod_active(p) && controller_ref(&p.metadata).is_some_and(|r| r.uid == uid)
                })
                .collect();
        }
    }

    let now = jiff::Timestamp::now();
    let status = compute_status(
        &view,
        &owned,
        obj.meta().generation.unwrap_or(0),
        manage_err.as_ref(),
        now,
    );
    if status != view.status {
        let api: Api<W> = Api::namespaced(client, &ns);
        let patch = json!({ "status": status });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("update status of {} {ns}/{name}", W::KIND)))?;
    }
    if let Some((_, msg)) = manage_err {
        return Err(Error::Manage(msg));
    }
    // Pods become available minReadySeconds after turning ready: look again then.
    if view.min_ready_seconds > 0
        && status.ready_replicas == status.replicas
        && status.available_replicas != status.replicas
    {
        return Ok(Action::requeue(Duration::from_secs(
            view.min_ready_seconds as u64,
        )));
    }
    Ok(Action::await_change())
}

/// Upstream `calculateStatus` plus the ReplicaFailure condition.
fn compute_status(
    view: &View,
    owned: &[Pod],
    generation: i64,
    manage_err: Option<&(String, String)>,
    now: jiff::Timestamp,
) -> SetStatus {
    let template_labels = view
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut st = SetStatus {
        replicas: owned.len() as i32,
        observed_generation: generation,
        conditions: view.status.conditions.clone(),
        ..Default::default()
    };
    for p in owned {
        if template_labels
            .iter()
            .all(|(k, v)| p.labels().get(k) == Some(v))
        {
            st.fully_labeled_replicas += 1;
        }
        if pod_ready(p) {
            st.ready_replicas += 1;
            if pod_available(p, view.min_ready_seconds, now) {
                st.available_replicas += 1;
            }
        }
    }
    let has_failure = st.conditions.iter().any(|c| c.type_ == REPLICA_FAILURE);
    match manage_err {
        Some((reason, msg)) if !has_failure => st.conditions.push(ReplicaSetCondition {
            type_: REPLICA_FAILURE.into(),
            status: "True".into(),
            reason: Some(reason.clone()),
            message: Some(msg.clone()),
            last_transition_time: Some(Time(now)),
        }),
        None if has_failure => st.conditions.retain(|c| c.type_ != REPLICA_FAILURE),
        _ => {}
    }
    st
}

async fn adopt_pod(
    api: &Api<Pod>,
    pod: &Pod,
    owner: &OwnerReference,
) -> Result<Option<Pod>, Error> {
    // The pod UID in the patch makes it a precondition: never adopt a same-named replacement.
    let patch = json!({ "metadata": { "ownerReferences": [owner], "uid": pod.metadata.uid } });
    let name = pod.name_any();
    match api
        .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(p) => Ok(Some(p)),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 || e.code == 422 => Ok(None),
        Err(e) => Err(api_err(format!("adopt pod {name}"))(e)),
    }
}

async fn release_pod(api: &Api<Pod>, pod: &Pod, owner_uid: &str) -> Result<(), Error> {
    let patch = json!({ "metadata": { "ownerReferences": [{ "$patch": "delete", "uid": owner_uid }], "uid": pod.metadata.uid } });
    let name = pod.name_any();
    match api
        .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 || e.code == 422 => Ok(()),
        Err(e) => Err(api_err(format!("release pod {name}"))(e)),
    }
}

fn pod_from_template(
    template: &PodTemplateSpec,
    ns: &str,
    prefix: &str,
    owner: &OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix.to_string()),
            namespace: Some(ns.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

async fn publish<W: Workload>(
    ctx: &Ctx<W>,
    obj: &W,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.base.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::debug!("event {reason} not recorded: {e}");
    }
}

/// Creates or deletes pods toward `spec.replicas`; returns (reason, message) on failure.
async fn manage_replicas<W: Workload>(
    ctx: &Ctx<W>,
    obj: &W,
    view: &View,
    api: &Api<Pod>,
    owner: &OwnerReference,
    owned: &[Pod],
) -> Option<(String, String)> {
    let want = view.replicas.max(0) as usize;
    let ns = obj.namespace().unwrap_or_default();
    if owned.len() < want {
        let Some(template) = &view.template else {
            return Some(("FailedCreate".into(), "spec.template is missing".into()));
        };
        let diff = (want - owned.len()).min(BURST_REPLICAS);
        let pod = pod_from_template(template, &ns, &format!("{}-", obj.name_any()), owner);
        let pp = PostParams::default();
        for batch in slow_start_batches(diff, SLOW_START_INITIAL_BATCH) {
            let results =
                futures::future::join_all((0..batch).map(|_| api.create(&pp, &pod))).await;
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(p) => {
                        publish(
                            ctx,
                            obj,
                            EventType::Normal,
                            "SuccessfulCreate",
                            "Create",
                            format!("Created pod: {}", p.name_any()),
                        )
                        .await
                    }
                    Err(e) => {
                        let msg = match &e {
                            kube::Error::Api(s) => s.message.clone(),
                            e => e.to_string(),
                        };
                        // A terminating namespace refuses creates; that is not a failure to report.
                        if matches!(&e, kube::Error::Api(s) if s.message.contains("because it is being terminated"))
                        {
                            continue;
                        }
                        publish(
                            ctx,
                            obj,
                            EventType::Warning,
                            "FailedCreate",
                            "Create",
                            format!("Error creating: {msg}"),
                        )
                        .await;
                        first_err.get_or_insert(msg);
                    }
                }
            }
            // Upstream stops at the first failing batch: the rest would most likely fail too.
            if let Some(msg) = first_err {
                return Some(("FailedCreate".into(), msg));
            }
        }
    } else if owned.len() > want {
        let diff = (owned.len() - want).min(BURST_REPLICAS);
        let victims = pods_to_delete(owned, diff, jiff::Timestamp::now());
        let results = futures::future::join_all(victims.iter().map(|p| async move {
            (
                p.name_any(),
                api.delete(&p.name_any(), &DeleteParams::default()).await,
            )
        }))
        .await;
        let mut first_err = None;
        for (name, r) in results {
            match r {
                Ok(_) => {
                    publish(
                        ctx,
                        obj,
                        EventType::Normal,
                        "SuccessfulDelete",
                        "Delete",
                        format!("Deleted pod: {name}"),
                    )
                    .await
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    let msg = match &e {
                        kube::Error::Api(s) => s.message.clone(),
                        e => e.to_string(),
                    };
                    publish(
                        ctx,
                        obj,
                        EventType::Warning,
                        "FailedDelete",
                        "Delete",
                        format!("Error deleting: {msg}"),
                    )
                    .await;
                    first_err.get_or_insert(msg);
                }
            }
        }
        if let Some(msg) = first_err {
            return Some(("FailedDelete".into(), msg));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    fn ts(secs_ago: i64, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        Some(now - jiff::SignedDuration::from_secs(secs_ago))
    }

    #[test]
    fn slow_start() {
        let cases: &[(usize, Vec<usize>)] = &[
            (0, vec![]),
            (1, vec![1]),
            (3, vec![1, 2]),
            (4, vec![1, 2, 1]),
            (10, vec![1, 2, 4, 3]),
            (500, vec![1, 2, 4, 8, 16, 32, 64, 128, 245]),
        ];
        for (n, want) in cases {
            assert_eq!(&slow_start_batches(*n, 1), want, "count {n}");
            assert_eq!(slow_start_batches(*n, 1).iter().sum::<usize>(), *n);
        }
    }

    #[test]
    fn ranking() {
        let now = jiff::Timestamp::now();
        let base = RankInfo {
            node_name: "n1".into(),
            phase: "Running".into(),
            ready: true,
            ready_time: ts(1000, now),
            created: ts(2000, now),
            ..Default::default()
        };
        // (description, a, b, expected order of a relative to b)
        let cases: Vec<(&str, RankInfo, RankInfo, Ordering)> = vec![
            (
                "unassigned first",
                RankInfo {
                    node_name: "".into(),
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "pending before running",
                RankInfo {
                    phase: "Pending".into(),
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "unknown before running",
                RankInfo {
                    phase: "Unknown".into(),
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "pending before unknown",
                RankInfo {
                    phase: "Pending".into(),
                    ..base.clone()
                },
                RankInfo {
                    phase: "Unknown".into(),
                    ..base.clone()
                },
                Ordering::Less,
            ),
            (
                "not ready first",
                RankInfo {
                    ready: false,
                    ready_time: None,
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "lower cost first",
                RankInfo {
                    deletion_cost: -5,
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "doubled up first",
                RankInfo {
                    colocated: 3,
                    ..base.clone()
                },
                RankInfo {
                    colocated: 1,
                    ..base.clone()
                },
                Ordering::Less,
            ),
            (
                "recently ready first",
                RankInfo {
                    ready_time: ts(10, now),
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "more restarts first",
                RankInfo {
                    restarts: 4,
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "newer first",
                RankInfo {
                    created: ts(5, now),
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "no creation time first",
                RankInfo {
                    created: None,
                    ..base.clone()
                },
                base.clone(),
                Ordering::Less,
            ),
            (
                "assigned after unassigned",
                base.clone(),
                RankInfo {
                    node_name: "".into(),
                    ..base.clone()
                },
                Ordering::Greater,
            ),
            ("equal", base.clone(), base.clone(), Ordering::Equal),
            // Same log2 bucket: creation time no longer decides; UID does.
            (
                "same bucket by uid",
                RankInfo {
                    created: ts(2001, now),
                    uid: "a".into(),
                    ..base.clone()
                },
                RankInfo {
                    uid: "b".into(),
                    ..base.clone()
                },
                Ordering::Less,
            ),
        ];
        for (what, a, b, want) in cases {
            assert_eq!(deletion_order(&a, &b, now), want, "{what}");
        }
    }

    #[test]
    fn selectors() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let sel = LabelSelector {
            match_labels: Some(l(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "old".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_string(&sel).unwrap_or_default(),
            "app=web,tier in (a,b),!old"
        );
        let cases = [
            (l(&[("app", "web"), ("tier", "a")]), true),
            (l(&[("app", "web"), ("tier", "c")]), false),
            (l(&[("app", "web")]), false),
            (l(&[("app", "web"), ("tier", "b"), ("old", "1")]), false),
            (l(&[("app", "db"), ("tier", "a")]), false),
        ];
        for (labels, want) in cases {
            assert_eq!(selector_matches(&sel, &labels), want, "{labels:?}");
        }
    }
}
