//! The DaemonSet controller (upstream `pkg/controller/daemon`): one pod per eligible node.
//! Pods are pinned with a required node affinity on `metadata.name` (the scheduler binds
//! them), carry upstream's default DaemonSet tolerations, are versioned with
//! ControllerRevisions and the `controller-revision-hash` label, and are replaced by
//! RollingUpdate within maxUnavailable/maxSurge or by OnDelete.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

/// Label carrying the hash of the template revision a pod was made from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// Deprecated label upstream still sets on DaemonSet pods.
const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// Runs the DaemonSet controller until shutdown.
pub async fn run(ctx: Arc<crate::Context>) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    controller
        .owns_shared_stream(
            ctx.informers
                .get::<Pod>(&client, watcher::Config::default(), &ctx.shutdown)
                .objects(),
        )
        .owns(
            Api::<ControllerRevision>::all(client.clone()),
            watcher::Config::default(),
        )
        // Any node change (new node, labels, taints) can change where every DaemonSet runs.
        .watches_shared_stream(
            ctx.informers
                .get::<Node>(&client, watcher::Config::default(), &ctx.shutdown)
                .objects(),
            move |_node: Arc<Node>| {
                store
                    .state()
                    .into_iter()
                    .map(|ds| ObjectRef::from_obj(&*ds))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            if let Err(e) = res {
                tracing::debug!(controller = "daemonset", "reconcile failed: {e}");
            }
            futures::future::ready(())
        })
        .await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Error(anyhow::Error);

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error(e.into())
    }
}

fn error_policy(_ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<crate::Context>) -> Action {
    tracing::debug!(controller = "daemonset", "requeue after error: {err}");
    Action::requeue(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------------------
// Revisions (shared with the StatefulSet controller)
// ---------------------------------------------------------------------------------------------

/// FNV-1a 32-bit, the hash upstream's `ComputeHash` uses.
fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Upstream `rand.SafeEncodeString`: maps each character onto an alphabet without vowels or
/// look-alikes, so hashes never spell words.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The revision hash of a template (plus collision count, to escape name collisions).
pub(crate) fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    // serde_json with BTreeMap-backed maps is deterministic for a given template.
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// The ControllerRevision payload: a strategic-merge patch replacing the template, as
/// upstream's `getPatch` builds it for DaemonSets and StatefulSets.
pub(crate) fn revision_data(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), "replace".into());
    }
    serde_json::json!({"spec": {"template": t}})
}

/// Finds or creates the ControllerRevision for the current template and returns it with
/// every revision the owner controls (oldest first). A matching old revision is bumped to
/// the newest number, like upstream's history handling.
pub(crate) async fn ensure_revision(
    api: &Api<ControllerRevision>,
    owner: OwnerReference,
    name_prefix: &str,
    selector: &str,
    labels: BTreeMap<String, String>,
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
) -> Result<(ControllerRevision, Vec<ControllerRevision>), kube::Error> {
    let lp = if selector.is_empty() {
        ListParams::default()
    } else {
        ListParams::default().labels(selector)
    };
    let mut all: Vec<ControllerRevision> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == owner.uid)
        })
        .collect();
    all.sort_by_key(|r| r.revision);
    let data = revision_data(template);
    let max_rev = all.last().map_or(0, |r| r.revision);
    if let Some(pos) = all
        .iter()
        .position(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        if all[pos].revision != max_rev {
            // The template went back to an older revision: it becomes the newest again.
            let patch = serde_json::json!({"revision": max_rev + 1});
            let updated = api
                .patch(
                    &all[pos].name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
            all[pos] = updated;
            all.sort_by_key(|r| r.revision);
        }
        let cur = all
            .iter()
            .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
            .cloned();
        if let Some(cur) = cur {
            return Ok((cur, all));
        }
    }
    let hash = template_hash(template, collision_count);
    let mut labels = labels;
    labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
    let cr = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{name_prefix}-{hash}")),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: max_rev + 1,
    };
    let created = api.create(&PostParams::default(), &cr).await?;
    all.push(created.clone());
    Ok((created, all))
}

/// Deletes the oldest revisions no live pod uses, keeping `limit` of them
/// (revisionHistoryLimit, default 10).
pub(crate) async fn truncate_history(
    api: &Api<ControllerRevision>,
    all: &[ControllerRevision],
    in_use: &[String],
    current: &str,
    limit: usize,
) -> Result<(), kube::Error> {
    let unused: Vec<&ControllerRevision> = all
        .iter()
        .filter(|r| {
            let hash = r
                .labels()
                .get(REVISION_HASH_LABEL)
                .cloned()
                .unwrap_or_default();
            r.name_any() != current && !in_use.contains(&hash)
        })
        .collect();
    if unused.len() <= limit {
        return Ok(());
    }
    for r in &unused[..unused.len() - limit] {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Node eligibility (pure)
// ---------------------------------------------------------------------------------------------

/// Upstream's `AddOrUpdateDaemonPodTolerations`: DaemonSet pods keep running through node
/// conditions that would evict or block ordinary pods.
pub fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut t = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        t.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    t.into_iter()
        .map(|(k, e)| Toleration {
            key: Some(k.into()),
            operator: Some("Exists".into()),
            effect: Some(e.into()),
            ..Default::default()
        })
        .collect()
}

fn add_tolerations(spec: &mut PodSpec) {
    let host_network = spec.host_network == Some(true);
    let tols = spec.tolerations.get_or_insert_with(Vec::new);
    for d in default_tolerations(host_network) {
        if !tols.iter().any(|t| t.key == d.key && t.effect == d.effect) {
            tols.push(d);
        }
    }
}

/// Whether a toleration tolerates a taint (upstream `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node satisfies a NodeSelectorTerm (expressions on labels, fields on the name).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        // An empty term matches nothing, as upstream.
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = if r.key == "metadata.name" {
                node.metadata.name.as_deref()
            } else {
                None
            };
            requirement_matches(r, v)
        })
}

/// Where a DaemonSet pod may run (upstream `nodeShouldRunDaemonPod`): returns
/// (should run, should continue running).
pub fn node_should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let node_name = node.metadata.name.as_deref().unwrap_or("");
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return (false, false);
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return (false, false);
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(req) = required
        && !req
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
    {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    let mut run = true;
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if taint.effect != "NoSchedule" && taint.effect != "NoExecute" {
            continue;
        }
        if tolerations.iter().any(|t| tolerates(t, taint)) {
            continue;
        }
        if taint.effect == "NoExecute" {
            return (false, false);
        }
        // An untolerated NoSchedule taint blocks new pods but lets existing ones stay.
        run = false;
    }
    (run, true)
}

/// The pod spec a DaemonSet pod for `node` gets: the template, default tolerations, and a
/// required node affinity naming exactly that node (upstream
/// `ReplaceDaemonSetPodNodeNameNodeAffinity`).
pub fn pod_spec_for_node(template: &PodSpec, node: &str) -> PodSpec {
    let mut spec = template.clone();
    add_tolerations(&mut spec);
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    spec
}

/// The node a DaemonSet pod belongs to: its bound node, else the node its affinity pins.
pub fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find_map(|r| {
            (r.key == "metadata.name"
                && r.operator == "In"
                && r.values.as_ref().is_some_and(|v| v.len() == 1))
            .then(|| r.values.as_ref().and_then(|v| v.first().cloned()))
            .flatten()
        })
}

/// Resolves maxUnavailable/maxSurge against the desired count, rounding up like upstream.
pub fn scaled(v: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct = s.trim_end_matches('%').parse::<i64>().unwrap_or(0);
            ((pct * i64::from(total) + 99) / 100) as i32
        }
    }
}

pub(crate) fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least minReadySeconds (upstream `IsPodAvailable`).
pub(crate) fn pod_available(p: &Pod, min_ready: i32, now: Timestamp) -> bool {
    let Some(cond) = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
    else {
        return false;
    };
    if min_ready <= 0 {
        return true;
    }
    cond.last_transition_time
        .as_ref()
        .is_some_and(|t| t.0 + SignedDuration::from_secs(i64::from(min_ready)) <= now)
}

fn pod_phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Reconcile
// ---------------------------------------------------------------------------------------------

async fn publish(
    ctx: &crate::Context,
    ds: &DaemonSet,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &ds.object_ref(&())).await {
        tracing::debug!(controller = "daemonset", "event not recorded: {e}");
    }
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<crate::Context>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = ctx.client.clone();
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let Some(uid) = ds.uid() else {
        return Ok(Action::await_change());
    };
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let selector = crate::job::selector_query(&spec.selector);

    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let collision = ds.status.as_ref().and_then(|s| s.collision_count);
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let (cur_rev, all_revs) = ensure_revision(
        &revs_api,
        owner.clone(),
        &name,
        &selector,
        template_labels.clone(),
        &spec.template,
        collision,
    )
    .await?;
    let hash = cur_rev
        .labels()
        .get(REVISION_HASH_LABEL)
        .cloned()
        .unwrap_or_else(|| template_hash(&spec.template, collision));

    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let lp = if selector.is_empty() {
        ListParams::default()
    } else {
        ListParams::default().labels(&selector)
    };
    let pods: Vec<Pod> = pods_api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    let mut by_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p);
        }
    }

    let template_spec = spec.template.spec.clone().unwrap_or_default();
    let mut check_spec = template_spec.clone();
    add_tolerations(&mut check_spec);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    let mut to_create: Vec<String> = Vec::new();
    let mut to_delete: Vec<&Pod> = Vec::new();
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: collision,
        ..Default::default()
    };
    let (mut updated, mut available) = (0, 0);
    let mut should_run_nodes: Vec<&Node> = Vec::new();
    for node in &nodes {
        let node_name = node.name_any();
        let (run, keep) = node_should_run(&check_spec, node);
        let here: Vec<&Pod> = by_node.get(&node_name).cloned().unwrap_or_default();
        if run {
            should_run_nodes.push(node);
            status.desired_number_scheduled += 1;
        }
        if run && here.is_empty() {
            to_create.push(node_name.clone());
            continue;
        }
        if !keep {
            if !here.is_empty() {
                status.number_misscheduled += 1;
            }
            to_delete.extend(here.iter().copied());
            continue;
        }
        if here.is_empty() {
            continue;
        }
        if !run {
            status.number_misscheduled += 1;
            continue;
        }
        // Failed daemon pods are killed so a fresh one replaces them.
        let (failed, live): (Vec<&Pod>, Vec<&Pod>) =
            here.iter().partition(|p| pod_phase(p) == "Failed");
        for p in &failed {
            publish(
                &ctx,
                &ds,
                EventType::Warning,
                "FailedDaemonPod",
                format!(
                    "Found failed daemon pod {ns}/{} on node {node_name}, will try to kill it",
                    p.name_any()
                ),
            )
            .await;
        }
        to_delete.extend(failed);
        if live.is_empty() {
            continue;
        }
        status.current_number_scheduled += 1;
        let pick = live
            .iter()
            .find(|p| p.labels().get(REVISION_HASH_LABEL) == Some(&hash))
            .unwrap_or(&live[0]);
        if pod_ready(pick) {
            status.number_ready += 1;
        }
        if pod_available(pick, min_ready, now) {
            available += 1;
        }
        if live
            .iter()
            .any(|p| p.labels().get(REVISION_HASH_LABEL) == Some(&hash))
        {
            updated += 1;
        }
        // More than one pod on a node (outside a surge): keep the oldest.
        let surge_pair = live.len() == 2
            && live
                .iter()
                .filter(|p| p.labels().get(REVISION_HASH_LABEL) == Some(&hash))
                .count()
                == 1;
        if live.len() > 1 && !surge_pair {
            let mut sorted = live.clone();
            sorted.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            to_delete.extend(sorted.into_iter().skip(1));
        }
    }

    // Rolling update: replace old-revision pods within the unavailability / surge budget.
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let mut surge_nodes: Vec<String> = Vec::new();
    if rolling {
        let ru = strategy.and_then(|s| s.rolling_update.as_ref());
        let desired = status.desired_number_scheduled;
        let max_surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, 0);
        let mut max_unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), desired, 1);
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        let mut unavailable = 0;
        let mut candidates: Vec<(&Pod, bool)> = Vec::new();
        let mut surging = 0;
        for node in &should_run_nodes {
            let here: Vec<&Pod> = by_node.get(&node.name_any()).cloned().unwrap_or_default();
            let live: Vec<&Pod> = here
                .into_iter()
                .filter(|p| pod_phase(p) != "Failed")
                .collect();
            let new_pod = live
                .iter()
                .find(|p| p.labels().get(REVISION_HASH_LABEL) == Some(&hash))
                .copied();
            let old_pod = live
                .iter()
                .find(|p| p.labels().get(REVISION_HASH_LABEL) != Some(&hash))
                .copied();
            match (old_pod, new_pod) {
                (None, None) => unavailable += 1,
                (None, Some(n)) => {
                    if !pod_available(n, min_ready, now) {
                        unavailable += 1;
                    }
                }
                (Some(o), None) => {
                    let avail = pod_available(o, min_ready, now);
                    if !avail {
                        unavailable += 1;
                    }
                    candidates.push((o, avail));
                }
                (Some(o), Some(n)) => {
                    // A surge pair: the old pod goes once its replacement is available.
                    if pod_available(n, min_ready, now) {
                        to_delete.push(o);
                    } else {
                        surging += 1;
                    }
                }
            }
        }
        for (old, avail) in candidates {
            if max_surge > 0 {
                if !avail {
                    // An unavailable old pod costs nothing to replace in place.
                    to_delete.push(old);
                } else if surging < max_surge {
                    surging += 1;
                    if let Some(n) = target_node(old) {
                        surge_nodes.push(n);
                    }
                }
            } else if !avail {
                to_delete.push(old);
            } else if unavailable < max_unavailable {
                unavailable += 1;
                to_delete.push(old);
            }
        }
    }

    // Apply: deletions first, then creations.
    to_delete.sort_by_key(|p| p.name_any());
    to_delete.dedup_by_key(|p| p.name_any());
    for p in &to_delete {
        match pods_api
            .delete(&p.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                publish(
                    &ctx,
                    &ds,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", p.name_any()),
                )
                .await
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                publish(
                    &ctx,
                    &ds,
                    EventType::Warning,
                    "FailedDelete",
                    format!("Error deleting: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
    }
    let mut pod_labels = template_labels;
    pod_labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
    pod_labels.insert(
        TEMPLATE_GENERATION_LABEL.into(),
        ds.metadata.generation.unwrap_or(0).to_string(),
    );
    for node_name in to_create.iter().chain(surge_nodes.iter()) {
        let mut meta = spec.template.metadata.clone().unwrap_or_default();
        meta.name = None;
        meta.generate_name = Some(format!("{name}-"));
        meta.namespace = Some(ns.clone());
        meta.labels = Some(pod_labels.clone());
        meta.owner_references = Some(vec![owner.clone()]);
        let pod = Pod {
            metadata: meta,
            spec: Some(pod_spec_for_node(&template_spec, node_name)),
            status: None,
        };
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(p) => {
                publish(
                    &ctx,
                    &ds,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created pod: {}", p.name_any()),
                )
                .await
            }
            Err(e) => {
                publish(
                    &ctx,
                    &ds,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
    }

    let in_use: Vec<String> = pods
        .iter()
        .filter_map(|p| p.labels().get(REVISION_HASH_LABEL).cloned())
        .collect();
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    truncate_history(&revs_api, &all_revs, &in_use, &cur_rev.name_any(), limit).await?;

    status.updated_number_scheduled = Some(updated);
    status.number_available = Some(available);
    status.number_unavailable = Some((status.desired_number_scheduled - available).max(0));
    status.conditions = ds.status.as_ref().and_then(|s| s.conditions.clone());
    if ds.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({"status": status});
        ds_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    // minReadySeconds needs a later look to notice pods turning available.
    let pending_availability = status.number_ready > available && min_ready > 0;
    Ok(if pending_availability {
        Action::requeue(Duration::from_secs(min_ready as u64))
    } else {
        Action::await_change()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn node(
        name: &str,
        labels: &[(&str, &str)],
        taints: &[(&str, &str)],
        unschedulable: bool,
    ) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(unschedulable),
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: k.to_string(),
                            effect: e.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn eligibility_table() {
        let mut base = PodSpec::default();
        add_tolerations(&mut base);
        let mut with_selector = base.clone();
        with_selector.node_selector = Some(
            [("disk".to_string(), "ssd".to_string())]
                .into_iter()
                .collect(),
        );
        let mut tolerant = base.clone();
        tolerant
            .tolerations
            .get_or_insert_with(Vec::new)
            .push(Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            });
        // (spec, node, should run, should continue)
        let cases: Vec<(&PodSpec, Node, bool, bool)> = vec![
            (&base, node("a", &[], &[], false), true, true),
            (&base, node("a", &[], &[], true), true, true),
            (
                &base,
                node(
                    "a",
                    &[],
                    &[("node.kubernetes.io/unschedulable", "NoSchedule")],
                    true,
                ),
                true,
                true,
            ),
            (
                &base,
                node("a", &[], &[("dedicated", "NoSchedule")], false),
                false,
                true,
            ),
            (
                &base,
                node("a", &[], &[("dedicated", "NoExecute")], false),
                false,
                false,
            ),
            (
                &base,
                node("a", &[], &[("dedicated", "PreferNoSchedule")], false),
                true,
                true,
            ),
            (
                &tolerant,
                node("a", &[], &[("dedicated", "NoExecute")], false),
                true,
                true,
            ),
            (
                &base,
                node(
                    "a",
                    &[],
                    &[("node.kubernetes.io/not-ready", "NoExecute")],
                    false,
                ),
                true,
                true,
            ),
            (
                &with_selector,
                node("a", &[("disk", "ssd")], &[], false),
                true,
                true,
            ),
            (
                &with_selector,
                node("a", &[("disk", "hdd")], &[], false),
                false,
                false,
            ),
        ];
        for (i, (spec, n, run, keep)) in cases.into_iter().enumerate() {
            assert_eq!(node_should_run(spec, &n), (run, keep), "case {i}");
        }
    }

    #[test]
    fn affinity_pins_node() {
        let spec = pod_spec_for_node(&PodSpec::default(), "n1");
        let pod = Pod {
            spec: Some(spec.clone()),
            ..Default::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n1"));
        assert!(node_should_run(&spec, &node("n1", &[], &[], false)).0);
        assert!(!node_should_run(&spec, &node("n2", &[], &[], false)).0);
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(6));
    }

    #[test]
    fn scaled_values() {
        assert_eq!(scaled(None, 10, 1), 1);
        assert_eq!(scaled(Some(&IntOrString::Int(3)), 10, 1), 3);
        assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 10, 1), 3);
        assert_eq!(scaled(Some(&IntOrString::String("0%".into())), 10, 1), 0);
    }

    #[test]
    fn hash_is_stable_and_safe() {
        let t = PodTemplateSpec::default();
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
