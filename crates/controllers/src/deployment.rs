//! Deployment controller (upstream pkg/controller/deployment): rolls a Deployment's pod
//! template out through ReplicaSets — one per template, named `<deployment>-<pod-template-hash>`
//! — with RollingUpdate (maxSurge/maxUnavailable) or Recreate, proportional scaling of
//! in-flight rollouts, pause/resume, revision bookkeeping for `kubectl rollout` and cleanup of
//! old ReplicaSets beyond `revisionHistoryLimit`.
//!
//! ReplicaSets are read with a fresh list on every sync (not a cache), and every write carries
//! the resourceVersion it was computed from, so a sync never acts on stale replica counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::replicaset::{
    Error, api_err, controller_ref, new_controller_ref, selector_is_empty, selector_matches,
    selector_string,
};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
/// Upstream `maxRevHistoryLengthInChars`.
const MAX_REV_HISTORY_CHARS: usize = 2000;

// Condition reasons (upstream deploymentutil).
pub const NEW_RS_REASON: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS_REASON: &str = "FoundNewReplicaSet";
pub const RS_UPDATED_REASON: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE_REASON: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT_REASON: &str = "ProgressDeadlineExceeded";
pub const PAUSED_REASON: &str = "DeploymentPaused";
pub const RESUMED_REASON: &str = "DeploymentResumed";
pub const FAILED_RS_CREATE_REASON: &str = "ReplicaSetCreateError";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

// ---------------------------------------------------------------------------------------------
// Pure rollout math.

/// Upstream `GetScaledValueFromIntOrPercent`: an int, or "N%" of `total` rounded up or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, Error> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Error::Invalid(format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}")))?;
            let prod = pct * i64::from(total);
            let v = if round_up {
                (prod + 99).div_euclid(100)
            } else {
                prod.div_euclid(100)
            };
            Ok(v as i32)
        }
    }
}

/// Upstream `ResolveFenceposts`: surge rounds up, unavailable down; both zero means one
/// unavailable so a rollout can make progress.
pub fn resolve_fenceposts(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), Error> {
    let zero = IntOrString::Int(0);
    let s = scaled_value(surge.unwrap_or(&zero), desired, true)?;
    let mut u = scaled_value(unavailable.unwrap_or(&zero), desired, false)?;
    if s == 0 && u == 0 {
        u = 1;
    }
    Ok((s, u))
}

/// Upstream `NewRSNewReplicas` for RollingUpdate: grow the new RS as far as surge allows.
pub fn new_rs_new_replicas(
    desired: i32,
    max_surge: i32,
    current_total: i32,
    new_rs_replicas: i32,
) -> i32 {
    let max_total = desired + max_surge;
    if current_total >= max_total {
        return new_rs_replicas;
    }
    let up = (max_total - current_total).min(desired - new_rs_replicas);
    new_rs_replicas + up.max(0)
}

/// Upstream `reconcileOldReplicaSets`: how many old pods may go without dropping below
/// `desired - maxUnavailable`, counting the new RS's unavailable pods against the budget.
pub fn max_scaled_down(
    all_pods: i32,
    desired: i32,
    max_unavailable: i32,
    new_rs_replicas: i32,
    new_rs_available: i32,
) -> i32 {
    let min_available = desired - max_unavailable;
    all_pods - min_available - (new_rs_replicas - new_rs_available)
}

/// A ReplicaSet as the scaling math sees it.
#[derive(Debug, Clone, Default)]
pub struct RsInfo {
    pub replicas: i32,
    pub available: i32,
    /// The `max-replicas` annotation, if valid.
    pub max_replicas: Option<i32>,
}

/// Upstream `cleanupUnhealthyReplicas`: first shrink old RSs (oldest first) by their
/// unavailable pods, up to `max_cleanup`. Returns new sizes.
pub fn cleanup_unhealthy_plan(old: &[RsInfo], max_cleanup: i32) -> Vec<i32> {
    let mut total = 0;
    old.iter()
        .map(|rs| {
            if total >= max_cleanup || rs.replicas == 0 || rs.replicas == rs.available {
                return rs.replicas;
            }
            let down = (max_cleanup - total).min(rs.replicas - rs.available);
            total += down;
            rs.replicas - down
        })
        .collect()
}

/// Upstream `scaleDownOldReplicaSetsForRollingUpdate`: scale old RSs (oldest first) down by
/// the available pods above `min_available`. Returns new sizes.
pub fn scale_down_old_plan(old: &[RsInfo], available_total: i32, min_available: i32) -> Vec<i32> {
    let budget = available_total - min_available;
    let mut total = 0;
    old.iter()
        .map(|rs| {
            if budget <= 0 || total >= budget || rs.replicas == 0 {
                return rs.replicas;
            }
            let down = rs.replicas.min(budget - total);
            total += down;
            rs.replicas - down
        })
        .collect()
}

/// Upstream `getReplicaSetFraction`.
fn rs_fraction(rs: &RsInfo, desired: i32, max_surge: i32, status_replicas: i32) -> i32 {
    if desired == 0 {
        return -rs.replicas;
    }
    let max_now = desired + max_surge;
    let before = match rs.max_replicas {
        Some(m) if m != 0 => m,
        _ => status_replicas,
    };
    if before == 0 {
        return 0;
    }
    let size = f64::from(rs.replicas) * f64::from(max_now) / f64::from(before);
    // Go's math.Round: halves away from zero, same as f64::round.
    size.round() as i32 - rs.replicas
}

/// Upstream proportional scaling in `scale()`: `active` are the active RSs already sorted
/// (by size, newer first when adding; by size, older first when removing). Returns new sizes.
pub fn proportional_plan(
    active: &[RsInfo],
    desired: i32,
    max_surge: i32,
    status_replicas: i32,
) -> Vec<i32> {
    let current: i32 = active.iter().map(|r| r.replicas).sum();
    let allowed = if desired > 0 { desired + max_surge } else { 0 };
    let to_add = allowed - current;
    let mut added = 0;
    let mut sizes: Vec<i32> = active
        .iter()
        .map(|rs| {
            if to_add == 0 || rs.replicas == 0 || to_add == added {
                return rs.replicas;
            }
            let frac = rs_fraction(rs, desired, max_surge, status_replicas);
            let allowed_left = to_add - added;
            let p = if to_add > 0 {
                frac.min(allowed_left)
            } else {
                frac.max(allowed_left)
            };
            added += p;
            rs.replicas + p
        })
        .collect();
    // Leftovers go to (or come from) the largest RS, which sorts first.
    if to_add != 0
        && let Some(first) = sizes.first_mut()
    {
        *first = (*first + to_add - added).max(0);
    }
    sizes
}

/// FNV-1a, 32 bits.
fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Upstream `rand.SafeEncodeString`: no vowels (no words) and no confusable characters.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Upstream `controller.ComputeHash`, hashing the template's JSON (deterministic: struct
/// field order and sorted maps) instead of Go's object dump, then the collision count as
/// 8 little-endian bytes.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&(c as u32).to_le_bytes());
        bytes.extend_from_slice(&b);
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Drops nulls and empty maps/lists, which Go's semantic equality treats like absent.
fn normalize(v: &mut Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(m) => {
            m.retain(|_, v| normalize(v));
            !m.is_empty()
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                normalize(x);
            }
            !a.is_empty()
        }
        _ => true,
    }
}

/// Upstream `EqualIgnoreHash`: templates equal apart from the pod-template-hash label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let prep = |t: &PodTemplateSpec| {
        let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
        if let Some(l) = v
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            l.remove(POD_TEMPLATE_HASH);
        }
        normalize(&mut v);
        v
    };
    prep(a) == prep(b)
}

/// Upstream revision-history bookkeeping in `SetNewReplicaSetAnnotations`: append the old
/// revision, dropping the oldest entries beyond the length limit.
pub fn append_revision_history(history: &str, old_revision: &str, limit: usize) -> Option<String> {
    if history.is_empty() {
        return Some(old_revision.to_string());
    }
    let revs: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + old_revision.len() + 1;
    let mut start = 0;
    while total > limit && start < revs.len() {
        total -= revs[start].len() + 1;
        start += 1;
    }
    if total > limit {
        return None;
    }
    let mut kept: Vec<&str> = revs[start..].to_vec();
    kept.push(old_revision);
    Some(kept.join(","))
}

// ---------------------------------------------------------------------------------------------
// Object helpers.

fn d_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(rs: &ReplicaSet) -> k8s_openapi::api::apps::v1::ReplicaSetStatus {
    rs.status.clone().unwrap_or_default()
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

fn paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

fn fenceposts(d: &Deployment) -> Result<(i32, i32), Error> {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        d_replicas(d),
    )
}

/// Upstream `MaxSurge`.
fn max_surge(d: &Deployment) -> Result<i32, Error> {
    if is_recreate(d) {
        return Ok(0);
    }
    Ok(fenceposts(d)?.0)
}

/// Upstream `MaxUnavailable`.
fn max_unavailable(d: &Deployment) -> Result<i32, Error> {
    if is_recreate(d) || d_replicas(d) == 0 {
        return Ok(0);
    }
    Ok(fenceposts(d)?.1.min(d_replicas(d)))
}

fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.annotations().get(key).and_then(|v| v.parse().ok())
}

fn created(meta: &ObjectMeta) -> Option<jiff::Timestamp> {
    meta.creation_timestamp.as_ref().map(|t| t.0)
}

/// Upstream `ReplicaSetsByCreationTimestamp`.
fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    created(&a.metadata)
        .cmp(&created(&b.metadata))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

fn info(rs: &ReplicaSet) -> RsInfo {
    RsInfo {
        replicas: rs_replicas(rs),
        available: rs_available(rs),
        max_replicas: annotation_i32(rs, MAX_REPLICAS),
    }
}

fn get_cond<'a>(st: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    st.conditions.iter().flatten().find(|c| c.type_ == type_)
}

fn new_cond(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = Some(Time(jiff::Timestamp::now()));
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: now.clone(),
        last_transition_time: now,
    }
}

/// Upstream `SetDeploymentCondition`: same status and reason is a no-op; same status keeps
/// the transition time.
fn set_cond(st: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get_cond(st, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_cond(st, &c.type_);
    st.conditions.get_or_insert_with(Vec::new).push(c);
}

fn remove_cond(st: &mut DeploymentStatus, type_: &str) {
    if let Some(cs) = st.conditions.as_mut() {
        cs.retain(|c| c.type_ != type_);
    }
}

/// Upstream `SetReplicasAnnotations`.
fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let a = rs.annotations_mut();
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if a.get(k) != Some(&v) {
            a.insert(k.into(), v);
            changed = true;
        }
    }
    changed
}

/// Upstream `SetNewReplicaSetAnnotations`.
fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
    max_surge: i32,
) -> bool {
    let mut changed = false;
    for (k, v) in d.annotations() {
        if [
            LAST_APPLIED,
            REVISION,
            REVISION_HISTORY,
            DESIRED_REPLICAS,
            MAX_REPLICAS,
            ROLLBACK_TO,
        ]
        .contains(&k.as_str())
        {
            continue;
        }
        if rs.annotations().get(k) != Some(v) {
            rs.annotations_mut().insert(k.clone(), v.clone());
            changed = true;
        }
    }
    let old = rs.annotations().get(REVISION).cloned();
    let old_int = match old.as_deref().map(str::parse::<i64>) {
        Some(Ok(v)) => v,
        Some(Err(_)) => return changed,
        None => 0,
    };
    if old_int < new_revision {
        rs.annotations_mut()
            .insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = rs
                .annotations()
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            if let Some(h) = append_revision_history(&history, &old, MAX_REV_HISTORY_CHARS) {
                rs.annotations_mut().insert(REVISION_HISTORY.into(), h);
            }
        }
    }
    if !exists && set_replicas_annotations(rs, d_replicas(d), d_replicas(d) + max_surge) {
        changed = true;
    }
    changed
}

// ---------------------------------------------------------------------------------------------
// Controller.

struct Ctx {
    base: Arc<crate::Context>,
    store: Store<Deployment>,
}

pub async fn run(base: Arc<crate::Context>) -> anyhow::Result<()> {
    let client = base.client.clone();
    let controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let ctx = Arc::new(Ctx {
        base: base.clone(),
        store: controller.store(),
    });
    let mapper_ctx = ctx.clone();
    let shutdown = base.shutdown.clone();
    controller
        .watches(
            Api::<ReplicaSet>::all(client),
            watcher::Config::default().any_semantic(),
            move |rs| mapper_ctx.owners_of(&rs),
        )
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("deployment reconcile failed: {e}");
            }
        })
        .await;
    Ok(())
}

impl Ctx {
    /// A ReplicaSet event concerns its controlling Deployment or, for an orphan, every
    /// Deployment that selects it.
    fn owners_of(&self, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
        let ns = rs.namespace().unwrap_or_default();
        if let Some(r) = controller_ref(&rs.metadata) {
            if r.kind == "Deployment" && r.api_version == "apps/v1" {
                return vec![ObjectRef::new(&r.name).within(&ns)];
            }
            return vec![];
        }
        self.store
            .state()
            .iter()
            .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
            .filter(|d| {
                let sel = d
                    .spec
                    .as_ref()
                    .map(|s| s.selector.clone())
                    .unwrap_or_default();
                !selector_is_empty(&sel) && selector_matches(&sel, rs.labels())
            })
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect()
    }

    async fn event(&self, d: &Deployment, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(e) = self.base.recorder.publish(&ev, &d.object_ref(&())).await {
            tracing::debug!("event {reason} not recorded: {e}");
        }
    }
}

fn error_policy(_d: Arc<Deployment>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::debug!("deployment sync failed, retrying: {err}");
    Action::requeue(Duration::from_secs(1))
}

/// One sync's working state: the Deployment and its ReplicaSets as last written or read.
struct Sync<'a> {
    ctx: &'a Ctx,
    d: Deployment,
    rss: Vec<ReplicaSet>,
    d_api: Api<Deployment>,
    rs_api: Api<ReplicaSet>,
    /// Requeue wished by the progress-deadline check.
    requeue: Option<Duration>,
}

async fn reconcile(obj: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let client = ctx.base.client.clone();
    let mut s = Sync {
        ctx: &ctx,
        d: (*obj).clone(),
        rss: Vec::new(),
        d_api: Api::namespaced(client.clone(), &ns),
        rs_api: Api::namespaced(client, &ns),
        requeue: None,
    };
    s.sync().await?;
    Ok(match s.requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

impl Sync<'_> {
    fn name(&self) -> String {
        self.d.name_any()
    }

    async fn sync(&mut self) -> Result<(), Error> {
        let selector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        if selector_is_empty(&selector) {
            self.ctx
                .event(
                    &self.d,
                    EventType::Warning,
                    "SelectingAll",
                    "This deployment is selecting all pods. A non-empty selector is required."
                        .into(),
                )
                .await;
            let generation = self.d.metadata.generation.unwrap_or(0);
            let mut st = self.d.status.clone().unwrap_or_default();
            if st.observed_generation.unwrap_or(0) < generation {
                st.observed_generation = Some(generation);
                self.write_status(st).await?;
            }
            return Ok(());
        }
        self.claim_replicasets(&selector).await?;
        if self.d.metadata.deletion_timestamp.is_some() {
            return self.sync_status_only().await;
        }
        self.check_paused_conditions().await?;
        if paused(&self.d) {
            return self.sync_scale().await;
        }
        if self.is_scaling_event().await? {
            return self.sync_scale().await;
        }
        if is_recreate(&self.d) {
            self.rollout_recreate(&selector).await
        } else {
            self.rollout_rolling().await
        }
    }

    /// Upstream `getReplicaSetsForDeployment`: adopt matching orphans, release owned
    /// ReplicaSets that stopped matching.
    async fn claim_replicasets(&mut self, selector: &LabelSelector) -> Result<(), Error> {
        let uid = self.d.uid().unwrap_or_default();
        let name = self.name();
        let list = self
            .rs_api
            .list(&ListParams::default())
            .await
            .map_err(api_err(format!("list replicasets for deployment {name}")))?;
        let me = new_controller_ref("apps/v1", "Deployment", &self.d.metadata)
            .ok_or_else(|| Error::Invalid("deployment has no uid".into()))?;
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        for rs in list.items {
            let matches = selector_matches(selector, rs.labels());
            let rs_name = rs.name_any();
            match controller_ref(&rs.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        self.rss.push(rs);
                    } else if !deleting {
                        let patch = json!({ "metadata": { "ownerReferences": [{ "$patch": "delete", "uid": uid }], "uid": rs.metadata.uid } });
                        match self
                            .rs_api
                            .patch(&rs_name, &PatchParams::default(), &Patch::Strategic(&patch))
                            .await
                        {
                            Ok(_) => {}
                            Err(kube::Error::Api(e))
                                if e.code == 404 || e.code == 409 || e.code == 422 => {}
                            Err(e) => {
                                return Err(api_err(format!("release replicaset {rs_name}"))(e));
                            }
                        }
                    }
                }
                None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                    let patch =
                        json!({ "metadata": { "ownerReferences": [me], "uid": rs.metadata.uid } });
                    match self
                        .rs_api
                        .patch(&rs_name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                    {
                        Ok(adopted) => self.rss.push(adopted),
                        Err(kube::Error::Api(e))
                            if e.code == 404 || e.code == 409 || e.code == 422 => {}
                        Err(e) => return Err(api_err(format!("adopt replicaset {rs_name}"))(e)),
                    }
                }
                _ => {}
            }
        }
        self.rss.sort_by(by_creation);
        Ok(())
    }

    async fn write_status(&mut self, st: DeploymentStatus) -> Result<(), Error> {
        let mut d = self.d.clone();
        d.status = Some(st);
        let name = self.name();
        self.d = self
            .d_api
            .replace_status(&name, &PostParams::default(), &d)
            .await
            .map_err(api_err(format!("update status of deployment {name}")))?;
        Ok(())
    }

    /// Upstream `SetDeploymentRevision`. Upstream writes the annotation through the status
    /// subresource; skiff's status updates ignore metadata, so it is a metadata-only patch
    /// (which does not bump the generation).
    async fn set_deployment_revision(&mut self, revision: &str) -> Result<(), Error> {
        if self.d.annotations().get(REVISION).map(String::as_str) == Some(revision) {
            return Ok(());
        }
        let name = self.name();
        let patch = json!({ "metadata": { "annotations": { REVISION: revision } } });
        self.d = self
            .d_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("set revision of deployment {name}")))?;
        Ok(())
    }

    async fn check_paused_conditions(&mut self) -> Result<(), Error> {
        if progress_deadline(&self.d).is_none() {
            return Ok(());
        }
        let st = self.d.status.clone().unwrap_or_default();
        let cond = get_cond(&st, "Progressing");
        if cond.is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT_REASON)) {
            return Ok(());
        }
        let paused_cond = cond.is_some_and(|c| c.reason.as_deref() == Some(PAUSED_REASON));
        let mut st = st.clone();
        if paused(&self.d) && !paused_cond {
            set_cond(
                &mut st,
                new_cond(
                    "Progressing",
                    "Unknown",
                    PAUSED_REASON,
                    "Deployment is paused".into(),
                ),
            );
        } else if !paused(&self.d) && paused_cond {
            set_cond(
                &mut st,
                new_cond(
                    "Progressing",
                    "Unknown",
                    RESUMED_REASON,
                    "Deployment is resumed".into(),
                ),
            );
        } else {
            return Ok(());
        }
        self.write_status(st).await
    }

    /// Indices of the new RS (oldest RS whose template matches) and of all others.
    fn split(&self) -> (Option<usize>, Vec<usize>) {
        let template = self
            .d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let new = self.rss.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &template))
        });
        let old = (0..self.rss.len()).filter(|i| Some(*i) != new).collect();
        (new, old)
    }

    fn active(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|i| rs_replicas(&self.rss[*i]) > 0)
            .collect()
    }

    /// Upstream `getAllReplicaSetsAndSyncRevision` + `getNewReplicaSet`.
    async fn new_and_old(&mut self, create: bool) -> Result<(Option<usize>, Vec<usize>), Error> {
        let (new, old) = self.split();
        let max_old = old
            .iter()
            .map(|i| revision_of(&self.rss[*i].metadata))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let surge = max_surge(&self.d)?;
        if let Some(i) = new {
            let mut rs = self.rss[i].clone();
            let changed = set_new_rs_annotations(&self.d, &mut rs, new_revision, true, surge);
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let spec = rs.spec.get_or_insert_with(Default::default);
            let min_ready_changed = spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0);
            if changed || min_ready_changed {
                spec.min_ready_seconds = min_ready;
                let name = rs.name_any();
                self.rss[i] = self
                    .rs_api
                    .replace(&name, &PostParams::default(), &rs)
                    .await
                    .map_err(api_err(format!("update replicaset {name}")))?;
                return Ok((new, old));
            }
            let revision = rs.annotations().get(REVISION).cloned().unwrap_or_default();
            self.set_deployment_revision(&revision).await?;
            let st = self.d.status.clone().unwrap_or_default();
            if progress_deadline(&self.d).is_some() && get_cond(&st, "Progressing").is_none() {
                let mut st = st;
                set_cond(
                    &mut st,
                    new_cond(
                        "Progressing",
                        "True",
                        FOUND_NEW_RS_REASON,
                        format!("Found new replica set {:?}", rs.name_any()),
                    ),
                );
                self.write_status(st).await?;
            }
            return Ok((new, old));
        }
        if !create {
            return Ok((None, old));
        }
        let spec = self.d.spec.clone().unwrap_or_default();
        let collision = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = compute_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let owner = new_controller_ref("apps/v1", "Deployment", &self.d.metadata)
            .ok_or_else(|| Error::Invalid("deployment has no uid".into()))?;
        let rs_name = format!("{}-{hash}", self.name());
        let current_total: i32 = old.iter().map(|i| rs_replicas(&self.rss[*i])).sum();
        let replicas = if is_recreate(&self.d) {
            d_replicas(&self.d)
        } else {
            new_rs_new_replicas(d_replicas(&self.d), surge, current_total, 0)
        };
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: self.d.namespace(),
                owner_references: Some(vec![owner]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        set_new_rs_annotations(&self.d, &mut rs, new_revision, false, surge);
        let mut already_exists = false;
        let created = match self.rs_api.create(&PostParams::default(), &rs).await {
            Ok(c) => c,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                already_exists = true;
                let existing = self
                    .rs_api
                    .get(&rs_name)
                    .await
                    .map_err(api_err(format!("get replicaset {rs_name}")))?;
                let ours = controller_ref(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if !(ours && same) {
                    // A hash collision: bump collisionCount so the next sync picks a new name.
                    let mut st = self.d.status.clone().unwrap_or_default();
                    st.collision_count = Some(st.collision_count.unwrap_or(0).wrapping_add(1));
                    self.write_status(st).await?;
                    return Err(Error::Manage(format!(
                        "replicaset {rs_name} already exists with a different template; collisionCount bumped"
                    )));
                }
                existing
            }
            Err(e) => {
                let msg = match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    e => e.to_string(),
                };
                if matches!(&e, kube::Error::Api(s) if s.message.contains("because it is being terminated"))
                {
                    return Err(api_err("create replicaset")(e));
                }
                let msg = format!("Failed to create new replica set {rs_name:?}: {msg}");
                if progress_deadline(&self.d).is_some() {
                    let mut st = self.d.status.clone().unwrap_or_default();
                    set_cond(
                        &mut st,
                        new_cond("Progressing", "False", FAILED_RS_CREATE_REASON, msg.clone()),
                    );
                    let _ = self.write_status(st).await;
                }
                self.ctx
                    .event(
                        &self.d,
                        EventType::Warning,
                        FAILED_RS_CREATE_REASON,
                        msg.clone(),
                    )
                    .await;
                return Err(Error::Manage(msg));
            }
        };
        if !already_exists && replicas > 0 {
            self.ctx
                .event(
                    &self.d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!(
                        "Scaled up replica set {} from 0 to {replicas}",
                        created.name_any()
                    ),
                )
                .await;
        }
        self.set_deployment_revision(&new_revision.to_string())
            .await?;
        if !already_exists && progress_deadline(&self.d).is_some() {
            let mut st = self.d.status.clone().unwrap_or_default();
            set_cond(
                &mut st,
                new_cond(
                    "Progressing",
                    "True",
                    NEW_RS_REASON,
                    format!("Created new replica set {:?}", created.name_any()),
                ),
            );
            self.write_status(st).await?;
        }
        self.rss.push(created);
        let idx = self.rss.len() - 1;
        Ok((Some(idx), old))
    }

    /// Upstream `scaleReplicaSet`: sets size and the replicas annotations; returns whether
    /// the size changed.
    async fn scale_rs(&mut self, i: usize, new_scale: i32) -> Result<bool, Error> {
        let rs = &self.rss[i];
        let old_scale = rs_replicas(rs);
        let desired = d_replicas(&self.d);
        let max = desired + max_surge(&self.d)?;
        let size_changed = old_scale != new_scale;
        let mut copy = rs.clone();
        let annotations_changed = set_replicas_annotations(&mut copy, desired, max);
        if !size_changed && !annotations_changed {
            return Ok(false);
        }
        copy.spec.get_or_insert_with(Default::default).replicas = Some(new_scale);
        let name = copy.name_any();
        self.rss[i] = self
            .rs_api
            .replace(&name, &PostParams::default(), &copy)
            .await
            .map_err(api_err(format!("scale replicaset {name}")))?;
        if size_changed {
            let op = if new_scale > old_scale { "up" } else { "down" };
            self.ctx
                .event(
                    &self.d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled {op} replica set {name} from {old_scale} to {new_scale}"),
                )
                .await;
        }
        Ok(size_changed)
    }

    /// Upstream `isScalingEvent`.
    async fn is_scaling_event(&mut self) -> Result<bool, Error> {
        let (new, old) = self.new_and_old(false).await?;
        let all: Vec<usize> = old.into_iter().chain(new).collect();
        let desired = d_replicas(&self.d);
        Ok(self
            .active(&all)
            .iter()
            .any(|i| annotation_i32(&self.rss[*i], DESIRED_REPLICAS).is_some_and(|v| v != desired)))
    }

    /// Upstream `sync`: scaling (and cleanup while paused) without rolling out.
    async fn sync_scale(&mut self) -> Result<(), Error> {
        let (new, old) = self.new_and_old(false).await?;
        self.scale(new, &old).await?;
        if paused(&self.d) {
            self.cleanup(&old).await?;
        }
        self.sync_status_only_with(new, &old).await
    }

    async fn sync_status_only(&mut self) -> Result<(), Error> {
        let (new, old) = self.new_and_old(false).await?;
        self.sync_status_only_with(new, &old).await
    }

    async fn sync_status_only_with(
        &mut self,
        new: Option<usize>,
        old: &[usize],
    ) -> Result<(), Error> {
        let st = self.calculate_status(new, old)?;
        if Some(&st) != self.d.status.as_ref() {
            self.write_status(st).await?;
        }
        Ok(())
    }

    /// Upstream `scale`: bring the RSs to the Deployment's size, proportionally during a
    /// rollout.
    async fn scale(&mut self, new: Option<usize>, old: &[usize]) -> Result<(), Error> {
        let desired = d_replicas(&self.d);
        // FindActiveOrLatest: only one active RS (or none) takes the whole size.
        let all: Vec<usize> = old.iter().copied().chain(new).collect();
        let active = self.active(&all);
        let target = match active.len() {
            0 => new.or_else(|| {
                old.iter()
                    .copied()
                    .max_by(|a, b| by_creation(&self.rss[*a], &self.rss[*b]))
            }),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = target {
            if rs_replicas(&self.rss[i]) != desired {
                self.scale_rs(i, desired).await?;
            }
            return Ok(());
        }
        // IsSaturated: the new RS holds everything, so old ones go to zero.
        if let Some(n) = new {
            let rs = &self.rss[n];
            if rs_replicas(rs) == desired
                && annotation_i32(rs, DESIRED_REPLICAS) == Some(desired)
                && rs_available(rs) == desired
            {
                for i in self.active(old) {
                    self.scale_rs(i, 0).await?;
                }
                return Ok(());
            }
        }
        if is_recreate(&self.d) {
            return Ok(());
        }
        let surge = max_surge(&self.d)?;
        let current: i32 = active.iter().map(|i| rs_replicas(&self.rss[*i])).sum();
        let allowed = if desired > 0 { desired + surge } else { 0 };
        let mut sorted = active.clone();
        if allowed > current {
            // Largest first, newer first on ties.
            sorted.sort_by(|a, b| {
                rs_replicas(&self.rss[*b])
                    .cmp(&rs_replicas(&self.rss[*a]))
                    .then_with(|| by_creation(&self.rss[*b], &self.rss[*a]))
            });
        } else if allowed < current {
            // Largest first, older first on ties.
            sorted.sort_by(|a, b| {
                rs_replicas(&self.rss[*b])
                    .cmp(&rs_replicas(&self.rss[*a]))
                    .then_with(|| by_creation(&self.rss[*a], &self.rss[*b]))
            });
        }
        let infos: Vec<RsInfo> = sorted.iter().map(|i| info(&self.rss[*i])).collect();
        let status_replicas = self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let sizes = proportional_plan(&infos, desired, surge, status_replicas);
        for (i, size) in sorted.into_iter().zip(sizes) {
            self.scale_rs(i, size).await?;
        }
        Ok(())
    }

    /// Upstream `rolloutRolling`.
    async fn rollout_rolling(&mut self) -> Result<(), Error> {
        let (new, old) = self.new_and_old(true).await?;
        if self.reconcile_new_rs(new, &old).await? {
            return self.sync_rollout_status(new, &old).await;
        }
        if self.reconcile_old_rss(new, &old).await? {
            return self.sync_rollout_status(new, &old).await;
        }
        let st = self.d.status.clone().unwrap_or_default();
        if self.complete(&st) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(new, &old).await
    }

    async fn reconcile_new_rs(&mut self, new: Option<usize>, old: &[usize]) -> Result<bool, Error> {
        let Some(n) = new else { return Ok(false) };
        let desired = d_replicas(&self.d);
        let cur = rs_replicas(&self.rss[n]);
        if cur == desired {
            return Ok(false);
        }
        if cur > desired {
            return self.scale_rs(n, desired).await;
        }
        let total: i32 = old
            .iter()
            .chain(Some(&n))
            .map(|i| rs_replicas(&self.rss[*i]))
            .sum();
        let count = new_rs_new_replicas(desired, max_surge(&self.d)?, total, cur);
        self.scale_rs(n, count).await
    }

    async fn reconcile_old_rss(
        &mut self,
        new: Option<usize>,
        old: &[usize],
    ) -> Result<bool, Error> {
        let active_old = self.active(old);
        let old_count: i32 = active_old.iter().map(|i| rs_replicas(&self.rss[*i])).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let all: Vec<usize> = old.iter().copied().chain(new).collect();
        let all_count: i32 = all.iter().map(|i| rs_replicas(&self.rss[*i])).sum();
        let desired = d_replicas(&self.d);
        let max_unavail = max_unavailable(&self.d)?;
        let (new_replicas, new_available) = new.map_or((0, 0), |n| {
            (rs_replicas(&self.rss[n]), rs_available(&self.rss[n]))
        });
        let budget = max_scaled_down(all_count, desired, max_unavail, new_replicas, new_available);
        if budget <= 0 {
            return Ok(false);
        }
        let mut sorted = active_old;
        sorted.sort_by(|a, b| by_creation(&self.rss[*a], &self.rss[*b]));
        let mut scaled = false;
        // Unhealthy replicas first: removing them costs no availability.
        let infos: Vec<RsInfo> = sorted.iter().map(|i| info(&self.rss[*i])).collect();
        for (i, size) in sorted.iter().zip(cleanup_unhealthy_plan(&infos, budget)) {
            if size != rs_replicas(&self.rss[*i]) {
                scaled |= self.scale_rs(*i, size).await?;
            }
        }
        // Then available ones, down to the minimum availability.
        let available: i32 = all.iter().map(|i| rs_available(&self.rss[*i])).sum();
        let infos: Vec<RsInfo> = sorted.iter().map(|i| info(&self.rss[*i])).collect();
        for (i, size) in sorted.iter().zip(scale_down_old_plan(
            &infos,
            available,
            desired - max_unavail,
        )) {
            if size != rs_replicas(&self.rss[*i]) {
                scaled |= self.scale_rs(*i, size).await?;
            }
        }
        Ok(scaled)
    }

    /// Upstream `rolloutRecreate`.
    async fn rollout_recreate(&mut self, selector: &LabelSelector) -> Result<(), Error> {
        let (mut new, mut old) = self.new_and_old(false).await?;
        let mut scaled = false;
        for i in self.active(&old) {
            scaled |= self.scale_rs(i, 0).await?;
        }
        if scaled {
            return self.sync_rollout_status(new, &old).await;
        }
        if self.old_pods_running(new, &old, selector).await? {
            self.sync_rollout_status(new, &old).await?;
            // Terminating pods leave without touching any ReplicaSet: look again shortly.
            self.requeue = Some(
                self.requeue
                    .map_or(Duration::from_secs(2), |r| r.min(Duration::from_secs(2))),
            );
            return Ok(());
        }
        if new.is_none() {
            (new, old) = self.new_and_old(true).await?;
        }
        if let Some(n) = new {
            let desired = d_replicas(&self.d);
            self.scale_rs(n, desired).await?;
        }
        let st = self.d.status.clone().unwrap_or_default();
        if self.complete(&st) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(new, &old).await
    }

    async fn old_pods_running(
        &self,
        new: Option<usize>,
        old: &[usize],
        selector: &LabelSelector,
    ) -> Result<bool, Error> {
        if old
            .iter()
            .map(|i| rs_status(&self.rss[*i]).replicas)
            .sum::<i32>()
            > 0
        {
            return Ok(true);
        }
        let ns = self.d.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.ctx.base.client.clone(), &ns);
        let sel = selector_string(selector)?;
        let list = pods
            .list(&ListParams::default().labels(&sel))
            .await
            .map_err(api_err("list pods for recreate"))?;
        let old_uids: Vec<&str> = old
            .iter()
            .filter_map(|i| self.rss[*i].metadata.uid.as_deref())
            .collect();
        let new_uid = new.and_then(|n| self.rss[n].metadata.uid.as_deref());
        Ok(list.items.iter().any(|p| {
            let owner = controller_ref(&p.metadata).map(|r| r.uid.as_str());
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("");
            owner.is_some_and(|u| old_uids.contains(&u) && Some(u) != new_uid)
                && !matches!(phase, "Failed" | "Succeeded")
        }))
    }

    /// Upstream `cleanupDeployment`: delete the oldest revisions beyond the history limit,
    /// only when fully scaled down.
    async fn cleanup(&mut self, old: &[usize]) -> Result<(), Error> {
        let Some(limit) = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .filter(|l| *l != i32::MAX)
        else {
            return Ok(());
        };
        let mut alive: Vec<usize> = old
            .iter()
            .copied()
            .filter(|i| self.rss[*i].metadata.deletion_timestamp.is_none())
            .collect();
        let diff = alive.len() as i64 - i64::from(limit);
        if diff <= 0 {
            return Ok(());
        }
        alive.sort_by(|a, b| {
            let (ra, rb) = (&self.rss[*a], &self.rss[*b]);
            revision_of(&ra.metadata)
                .cmp(&revision_of(&rb.metadata))
                .then_with(|| by_creation(ra, rb))
        });
        for i in alive.into_iter().take(diff as usize) {
            let rs = &self.rss[i];
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if rs_status(rs).replicas != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            let name = rs.name_any();
            match self.rs_api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(api_err(format!("delete old replicaset {name}"))(e)),
            }
        }
        Ok(())
    }

    /// Upstream `DeploymentComplete`.
    fn complete(&self, st: &DeploymentStatus) -> bool {
        let desired = d_replicas(&self.d);
        st.updated_replicas.unwrap_or(0) == desired
            && st.replicas.unwrap_or(0) == desired
            && st.available_replicas.unwrap_or(0) == desired
            && st.observed_generation.unwrap_or(0) >= self.d.metadata.generation.unwrap_or(0)
    }

    /// Upstream `calculateStatus`.
    fn calculate_status(
        &self,
        new: Option<usize>,
        old: &[usize],
    ) -> Result<DeploymentStatus, Error> {
        let all: Vec<&ReplicaSet> = old
            .iter()
            .chain(new.as_ref())
            .map(|i| &self.rss[*i])
            .collect();
        let available: i32 = all.iter().map(|r| rs_available(r)).sum();
        let total: i32 = all.iter().map(|r| rs_replicas(r)).sum();
        let desired = d_replicas(&self.d);
        let cur = self.d.status.clone().unwrap_or_default();
        let mut st = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(all.iter().map(|r| rs_status(r).replicas).sum()),
            updated_replicas: Some(new.map_or(0, |n| rs_status(&self.rss[n]).replicas)),
            ready_replicas: Some(
                all.iter()
                    .map(|r| rs_status(r).ready_replicas.unwrap_or(0))
                    .sum(),
            ),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: cur.collision_count,
            conditions: cur.conditions.clone(),
            terminating_replicas: cur.terminating_replicas,
        };
        if available >= desired - max_unavailable(&self.d)? {
            set_cond(
                &mut st,
                new_cond(
                    "Available",
                    "True",
                    MIN_AVAILABLE,
                    "Deployment has minimum availability.".into(),
                ),
            );
        } else {
            set_cond(
                &mut st,
                new_cond(
                    "Available",
                    "False",
                    MIN_UNAVAILABLE,
                    "Deployment does not have minimum availability.".into(),
                ),
            );
        }
        Ok(st)
    }

    /// Upstream `syncRolloutStatus`: status plus the Progressing condition and its deadline.
    async fn sync_rollout_status(
        &mut self,
        new: Option<usize>,
        old: &[usize],
    ) -> Result<(), Error> {
        let mut st = self.calculate_status(new, old)?;
        let deadline = progress_deadline(&self.d);
        if deadline.is_none() {
            remove_cond(&mut st, "Progressing");
        }
        let cur_status = self.d.status.clone().unwrap_or_default();
        let cur = get_cond(&cur_status, "Progressing").cloned();
        let complete_already = st.replicas == st.updated_replicas
            && cur
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE_REASON));
        let new_name = new.map(|n| self.rss[n].name_any());
        let what = |suffix: &str| match &new_name {
            Some(n) => format!("ReplicaSet {n:?} {suffix}"),
            None => format!("Deployment {:?} {suffix}", self.d.name_any()),
        };
        if let Some(secs) = deadline
            && !complete_already
        {
            if self.complete(&st) {
                set_cond(
                    &mut st,
                    new_cond(
                        "Progressing",
                        "True",
                        NEW_RS_AVAILABLE_REASON,
                        what("has successfully progressed."),
                    ),
                );
            } else if progressing(&cur_status, &st) {
                let mut c = new_cond(
                    "Progressing",
                    "True",
                    RS_UPDATED_REASON,
                    what("is progressing."),
                );
                if let Some(cur) = &cur {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_cond(&mut st, "Progressing");
                }
                set_cond(&mut st, c);
            } else if timed_out(&st, secs, jiff::Timestamp::now()) {
                set_cond(
                    &mut st,
                    new_cond(
                        "Progressing",
                        "False",
                        TIMED_OUT_REASON,
                        what("has timed out progressing."),
                    ),
                );
            }
        }
        // The first ReplicaFailure of the new RS, else of any old one, becomes the Deployment's.
        let failure = new.into_iter().chain(old.iter().copied()).find_map(|i| {
            self.rss[i]
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure")
                .cloned()
        });
        match failure {
            Some(c) => set_cond(
                &mut st,
                DeploymentCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                    last_update_time: c.last_transition_time.clone(),
                    last_transition_time: c.last_transition_time,
                },
            ),
            None => remove_cond(&mut st, "ReplicaFailure"),
        }
        if Some(&st) == self.d.status.as_ref() {
            self.requeue_stuck(&st);
            return Ok(());
        }
        self.write_status(st).await
    }

    /// Upstream `requeueStuckDeployment`: look again when the progress deadline would pass.
    fn requeue_stuck(&mut self, st: &DeploymentStatus) {
        let Some(secs) = progress_deadline(&self.d) else {
            return;
        };
        let cur = self.d.status.clone().unwrap_or_default();
        let Some(c) = get_cond(&cur, "Progressing") else {
            return;
        };
        if self.complete(st) || c.reason.as_deref() == Some(TIMED_OUT_REASON) {
            return;
        }
        let Some(updated) = c.last_update_time.as_ref() else {
            return;
        };
        let at = updated.0 + jiff::SignedDuration::from_secs(i64::from(secs));
        let after = at.duration_since(jiff::Timestamp::now());
        let after = Duration::try_from(after)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        self.requeue = Some(after);
    }
}

/// Upstream `DeploymentProgressing`.
fn progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

/// Upstream `DeploymentTimedOut`.
fn timed_out(st: &DeploymentStatus, deadline_secs: i32, now: jiff::Timestamp) -> bool {
    let Some(c) = get_cond(st, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE_REASON) => false,
        Some(TIMED_OUT_REASON) => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0 + jiff::SignedDuration::from_secs(i64::from(deadline_secs)) < now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ios(s: &str) -> IntOrString {
        match s.parse::<i32>() {
            Ok(i) => IntOrString::Int(i),
            Err(_) => IntOrString::String(s.into()),
        }
    }

    #[test]
    fn fenceposts_table() {
        // (surge, unavailable, desired) -> (surge, unavailable)
        let cases = [
            ("25%", "25%", 4, (1, 1)),
            ("25%", "25%", 10, (3, 2)),
            ("25%", "25%", 1, (1, 0)),
            ("0", "0", 3, (0, 1)),
            ("1", "0", 3, (1, 0)),
            ("50%", "50%", 5, (3, 2)),
            ("0%", "10%", 5, (0, 1)),
            ("100%", "0%", 3, (3, 0)),
        ];
        for (s, u, d, want) in cases {
            let got = resolve_fenceposts(Some(&ios(s)), Some(&ios(u)), d).ok();
            assert_eq!(got, Some(want), "surge {s} unavailable {u} desired {d}");
        }
        assert!(scaled_value(&IntOrString::String("abc".into()), 10, true).is_err());
    }

    #[test]
    fn new_rs_scale_up() {
        // (desired, surge, current total, new rs replicas) -> new rs replicas
        let cases = [
            (4, 1, 4, 0, 1),
            (4, 1, 5, 1, 1),
            (4, 1, 4, 1, 2),
            (4, 0, 4, 0, 0),
            (4, 4, 4, 0, 4),
            (10, 3, 10, 0, 3),
            (3, 1, 2, 1, 3),
            (4, 1, 0, 0, 4),
        ];
        for (d, s, total, cur, want) in cases {
            assert_eq!(
                new_rs_new_replicas(d, s, total, cur),
                want,
                "desired {d} surge {s} total {total} new {cur}"
            );
        }
    }

    #[test]
    fn old_scale_down_budget() {
        // (all pods, desired, maxUnavailable, new replicas, new available) -> budget
        let cases = [
            (5, 4, 1, 1, 0, 1),
            (5, 4, 1, 1, 1, 2),
            (4, 4, 0, 0, 0, 0),
            (6, 4, 1, 2, 0, 1),
            (4, 4, 1, 0, 0, 1),
        ];
        for (all, d, mu, nr, na, want) in cases {
            assert_eq!(max_scaled_down(all, d, mu, nr, na), want);
        }
    }

    fn rs(replicas: i32, available: i32) -> RsInfo {
        RsInfo {
            replicas,
            available,
            max_replicas: None,
        }
    }

    #[test]
    fn old_rs_plans() {
        // Unhealthy first, oldest first, bounded by the budget.
        assert_eq!(cleanup_unhealthy_plan(&[rs(3, 1), rs(2, 0)], 3), vec![1, 1]);
        assert_eq!(cleanup_unhealthy_plan(&[rs(3, 3), rs(2, 0)], 5), vec![3, 0]);
        assert_eq!(cleanup_unhealthy_plan(&[rs(0, 0), rs(2, 2)], 5), vec![0, 2]);
        // Available pods above the minimum go, oldest first.
        assert_eq!(scale_down_old_plan(&[rs(3, 3), rs(2, 2)], 6, 4), vec![1, 2]);
        assert_eq!(scale_down_old_plan(&[rs(3, 3), rs(2, 2)], 5, 4), vec![2, 2]);
        assert_eq!(scale_down_old_plan(&[rs(3, 3)], 3, 4), vec![3]);
        assert_eq!(scale_down_old_plan(&[rs(1, 1), rs(4, 4)], 8, 2), vec![0, 0]);
    }

    #[test]
    fn proportional() {
        let with_max = |replicas, max| RsInfo {
            replicas,
            available: 0,
            max_replicas: Some(max),
        };
        // (active sorted, desired, surge, status replicas) -> sizes
        type Case = (Vec<RsInfo>, i32, i32, i32, Vec<i32>);
        let cases: Vec<Case> = vec![
            // 10 -> 20 during a rollout (max 13 -> 23): 8/5 become 14/9 (leftover to the largest).
            (
                vec![with_max(8, 13), with_max(5, 13)],
                20,
                3,
                13,
                vec![14, 9],
            ),
            // Scale down 10 -> 5 (max 13 -> 7 with surge 2): sizes shrink proportionally.
            (vec![with_max(8, 13), with_max(5, 13)], 5, 2, 13, vec![4, 3]),
            // To zero: everything goes.
            (vec![with_max(3, 5), with_max(2, 5)], 0, 1, 5, vec![0, 0]),
            // Already at the allowed size: nothing changes.
            (vec![with_max(3, 5), with_max(2, 5)], 4, 1, 5, vec![3, 2]),
            // No annotation: falls back to the Deployment's status replicas.
            (vec![rs(6, 0), rs(4, 0)], 20, 0, 10, vec![12, 8]),
        ];
        for (active, d, s, sr, want) in cases {
            let got = proportional_plan(&active, d, s, sr);
            assert_eq!(got, want, "desired {d} surge {s}");
            if d > 0 {
                assert_eq!(got.iter().sum::<i32>(), d + s);
            }
        }
    }

    #[test]
    fn hash_and_history() {
        // Digits map through the alphabet by byte value modulo 27, as upstream.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        let t = PodTemplateSpec::default();
        assert_eq!(compute_hash(&t, None), compute_hash(&t, None));
        assert_ne!(compute_hash(&t, None), compute_hash(&t, Some(1)));
        assert!(
            compute_hash(&t, None)
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
        assert_eq!(append_revision_history("", "1", 2000).as_deref(), Some("1"));
        assert_eq!(
            append_revision_history("1,3", "4", 2000).as_deref(),
            Some("1,3,4")
        );
        assert_eq!(
            append_revision_history("1,3", "4", 4).as_deref(),
            Some("3,4")
        );
    }

    #[test]
    fn template_equality_ignores_hash_and_empties() {
        let mut a: PodTemplateSpec = serde_json::from_value(json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).unwrap_or_default();
        let b: PodTemplateSpec = serde_json::from_value(json!({"metadata": {"labels": {"app": "x", "pod-template-hash": "abc"}, "annotations": {}}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).unwrap_or_default();
        assert!(equal_ignore_hash(&a, &b));
        a.spec.get_or_insert_with(Default::default).containers[0].image = Some("j".into());
        assert!(!equal_ignore_hash(&a, &b));
    }
}
