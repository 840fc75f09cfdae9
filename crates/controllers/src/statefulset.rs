//! The StatefulSet controller (upstream `pkg/controller/statefulset`): pods with stable
//! identities `<set>-<ordinal>` (hostname, subdomain = serviceName, per-ordinal PVCs from
//! volumeClaimTemplates), created in order and removed in reverse under OrderedReady or all at
//! once under Parallel, and rolled to a new ControllerRevision from the highest ordinal down to
//! the partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::daemonset::{
    REVISION_HASH_LABEL, ensure_revision, pod_available, pod_ready, truncate_history,
};

/// Label with the pod's own name, so a Service can select exactly one replica.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Runs the StatefulSet controller until shutdown.
pub async fn run(ctx: Arc<crate::Context>) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_shared_stream(
        ctx.informers
            .get::<Pod>(&client, watcher::Config::default(), &ctx.shutdown)
            .objects(),
    )
    .owns(
        Api::<ControllerRevision>::all(client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(|res| {
        if let Err(e) = res {
            tracing::debug!(controller = "statefulset", "reconcile failed: {e}");
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

fn error_policy(_s: Arc<StatefulSet>, err: &Error, _ctx: Arc<crate::Context>) -> Action {
    tracing::debug!(controller = "statefulset", "requeue after error: {err}");
    Action::requeue(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------------------
// Pure planning
// ---------------------------------------------------------------------------------------------

/// What the planner needs to know about one existing pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub revision: String,
    /// Phase Failed or Succeeded: the pod must be replaced.
    pub terminal: bool,
    pub terminating: bool,
    /// Running, Ready and available for minReadySeconds.
    pub healthy: bool,
}

/// One action of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Create(i32),
    Delete(i32),
}

/// Inputs of the plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub start: i32,
    pub replicas: i32,
    /// Parallel pod management (no ordering).
    pub parallel: bool,
    /// Some(partition) for RollingUpdate, None for OnDelete.
    pub rolling_partition: Option<i32>,
    pub update_revision: String,
}

/// Decides the pod creations and deletions of one sync (upstream `updateStatefulSet`):
/// replace terminal pods, create missing ordinals in order (waiting for each to be healthy
/// under OrderedReady), delete condemned ordinals from the highest, then roll one outdated
/// pod at a time from the highest ordinal down to the partition.
pub fn plan(p: &Plan, pods: &BTreeMap<i32, Replica>) -> Vec<Step> {
    let mut steps = Vec::new();
    let end = p.start + p.replicas;
    let in_range = |o: i32| o >= p.start && o < end;
    let monotonic = !p.parallel;
    // Replace terminal pods first: they block nothing but hold the identity.
    let mut deleted_terminal = Vec::new();
    for (o, r) in pods.iter().filter(|(o, _)| in_range(**o)) {
        if r.terminal && !r.terminating {
            steps.push(Step::Delete(*o));
            deleted_terminal.push(*o);
        }
    }
    for o in p.start..end {
        match pods.get(&o) {
            None => {
                steps.push(Step::Create(o));
                if monotonic {
                    return steps;
                }
            }
            Some(r) => {
                // Under OrderedReady nothing proceeds past a replica that is not healthy.
                if (deleted_terminal.contains(&o) || r.terminating || !r.healthy) && monotonic {
                    return steps;
                }
            }
        }
    }
    // Scale down, highest ordinal first; under OrderedReady only once everything is healthy
    // and one at a time.
    let mut condemned: Vec<(&i32, &Replica)> =
        pods.iter().filter(|(o, _)| !in_range(**o)).collect();
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(**o));
    let first_unhealthy = pods
        .iter()
        .filter(|(o, _)| in_range(**o))
        .chain(condemned.iter().rev().copied())
        .find(|(_, r)| !r.healthy || r.terminating)
        .map(|(o, _)| *o);
    for (o, r) in condemned {
        if r.terminating {
            if monotonic {
                return steps;
            }
            continue;
        }
        if monotonic && first_unhealthy.is_some_and(|u| u != *o) {
            return steps;
        }
        steps.push(Step::Delete(*o));
        if monotonic {
            return steps;
        }
    }
    if !steps.is_empty() && monotonic {
        return steps;
    }
    // Rolling update: at most one pod down at a time.
    if let Some(partition) = p.rolling_partition {
        let min = partition.max(p.start);
        for o in (min..end).rev() {
            let Some(r) = pods.get(&o) else { return steps };
            if r.revision != p.update_revision && !r.terminating {
                steps.push(Step::Delete(o));
                return steps;
            }
            if !r.healthy || r.terminating {
                return steps;
            }
        }
    }
    steps
}

/// Parses `<set>-<ordinal>` pod names.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse::<i32>().ok().filter(|o| *o >= 0)
}

/// Claim name for a template and ordinal: `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

// ---------------------------------------------------------------------------------------------
// Reconcile
// ---------------------------------------------------------------------------------------------

async fn publish(
    ctx: &crate::Context,
    s: &StatefulSet,
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
    if let Err(e) = ctx.recorder.publish(&ev, &s.object_ref(&())).await {
        tracing::debug!(controller = "statefulset", "event not recorded: {e}");
    }
}

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

fn is_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The template a revision recorded (its data is `{"spec":{"template":...}}`).
fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    let mut t = t;
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<crate::Context>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(spec) = set.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(uid) = set.uid() else {
        return Ok(Action::await_change());
    };
    let client = ctx.client.clone();
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let now = Timestamp::now();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let sets_api: Api<StatefulSet> = Api::namespaced(client, &ns);
    let selector = crate::job::selector_query(&spec.selector);
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };

    let collision = set.status.as_ref().and_then(|s| s.collision_count);
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let (update_rev, all_revs) = ensure_revision(
        &revs_api,
        owner.clone(),
        &name,
        &selector,
        template_labels,
        &spec.template,
        collision,
    )
    .await?;
    let update_name = update_rev.name_any();
    let current_name = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| all_revs.iter().any(|r| r.name_any() == *c))
        .unwrap_or_else(|| update_name.clone());
    let current_template = all_revs
        .iter()
        .find(|r| r.name_any() == current_name)
        .and_then(template_of)
        .unwrap_or_else(|| spec.template.clone());

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
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut by_ordinal: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut replicas_state: BTreeMap<i32, Replica> = BTreeMap::new();
    for p in &pods {
        let Some(o) = ordinal_of(&name, &p.name_any()) else {
            continue;
        };
        by_ordinal.insert(o, p);
        replicas_state.insert(
            o,
            Replica {
                revision: p
                    .labels()
                    .get(REVISION_HASH_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                terminal: is_terminal(p),
                terminating: p.metadata.deletion_timestamp.is_some(),
                healthy: is_running(p) && pod_available(p, min_ready, now),
            },
        );
    }

    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let replicas = spec.replicas.unwrap_or(1);
    let the_plan = Plan {
        start,
        replicas,
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        rolling_partition: rolling.then_some(partition),
        update_revision: update_name.clone(),
    };
    let steps = plan(&the_plan, &replicas_state);

    let retention = spec.persistent_volume_claim_retention_policy.as_ref();
    let when_scaled_delete = retention.and_then(|r| r.when_scaled.as_deref()) == Some("Delete");
    let when_deleted_delete = retention.and_then(|r| r.when_deleted.as_deref()) == Some("Delete");
    for step in &steps {
        match *step {
            Step::Create(o) => {
                // Ordinals below the partition stay on the current revision (upstream
                // `newVersionedStatefulSetPod`).
                let (tmpl, rev) = if rolling && o < partition && current_name != update_name {
                    (&current_template, &current_name)
                } else {
                    (&spec.template, &update_name)
                };
                let pod_name = format!("{name}-{o}");
                ensure_claims(&ctx, &set, &pvc_api, &owner, when_deleted_delete, o).await?;
                let pod = build_pod(&set, tmpl, rev, &owner, o);
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        publish(
                            &ctx,
                            &set,
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("create Pod {pod_name} in StatefulSet {name} successful"),
                        )
                        .await
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        publish(
                            &ctx,
                            &set,
                            EventType::Warning,
                            "FailedCreate",
                            format!(
                                "create Pod {pod_name} in StatefulSet {name} failed error: {e}"
                            ),
                        )
                        .await;
                        return Err(e.into());
                    }
                }
            }
            Step::Delete(o) => {
                let pod_name = format!("{name}-{o}");
                let condemned = o < start || o >= start + replicas;
                if condemned && when_scaled_delete {
                    // The claims follow the pod away: the garbage collector removes them.
                    if let Some(pod) = by_ordinal.get(&o) {
                        own_claims_by_pod(&set, &pvc_api, pod, o).await?;
                    }
                }
                match pods_api.delete(&pod_name, &DeleteParams::default()).await {
                    Ok(_) => {
                        publish(
                            &ctx,
                            &set,
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                        )
                        .await
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        publish(
                            &ctx,
                            &set,
                            EventType::Warning,
                            "FailedDelete",
                            format!(
                                "delete Pod {pod_name} in StatefulSet {name} failed error: {e}"
                            ),
                        )
                        .await;
                        return Err(e.into());
                    }
                }
            }
        }
    }

    // Status from the pods as listed (the next sync, triggered by the pod events, refreshes it).
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: collision,
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    for p in pods
        .iter()
        .filter(|p| !is_terminal(p) && ordinal_of(&name, &p.name_any()).is_some())
    {
        status.replicas += 1;
        if is_running(p) && pod_ready(p) {
            ready += 1;
        }
        if is_running(p) && pod_available(p, min_ready, now) {
            available += 1;
        }
        let rev = p.labels().get(REVISION_HASH_LABEL);
        if rev == Some(&current_name) {
            current += 1;
        }
        if rev == Some(&update_name) {
            updated += 1;
        }
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    status.current_revision = Some(current_name.clone());
    status.update_revision = Some(update_name.clone());
    // A finished rollout makes the update revision current (upstream `completeRollingUpdate`).
    if rolling && updated == replicas && ready == replicas && status.replicas == replicas {
        status.current_revision = Some(update_name.clone());
        status.current_replicas = Some(updated);
    }
    if set.status.as_ref() != Some(&status) {
        sets_api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": status})),
            )
            .await?;
    }

    let in_use: Vec<String> = pods
        .iter()
        .filter_map(|p| p.labels().get(REVISION_HASH_LABEL).cloned())
        .collect();
    let mut keep = in_use.clone();
    keep.push(current_name);
    // truncate_history compares hashes; map revision names in use to their hash labels.
    let keep_hashes: Vec<String> = all_revs
        .iter()
        .filter(|r| keep.contains(&r.name_any()))
        .filter_map(|r| r.labels().get(REVISION_HASH_LABEL).cloned())
        .collect();
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    truncate_history(&revs_api, &all_revs, &keep_hashes, &update_name, limit).await?;

    let waiting_ready = min_ready > 0 && ready > available;
    Ok(if waiting_ready {
        Action::requeue(Duration::from_secs(min_ready as u64))
    } else {
        Action::await_change()
    })
}

/// The pod of ordinal `o`: identity labels, hostname/subdomain, and volumes pointing at its
/// own claims.
fn build_pod(
    set: &StatefulSet,
    tmpl: &PodTemplateSpec,
    revision: &str,
    owner: &OwnerReference,
    o: i32,
) -> Pod {
    let name = set.name_any();
    let pod_name = format!("{name}-{o}");
    let mut meta = tmpl.metadata.clone().unwrap_or_default();
    meta.name = Some(pod_name.clone());
    meta.generate_name = None;
    meta.namespace = set.namespace();
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(POD_INDEX_LABEL.into(), o.to_string());
    labels.insert(REVISION_HASH_LABEL.into(), revision.into());
    meta.owner_references = Some(vec![owner.clone()]);
    let mut spec = tmpl.spec.clone().unwrap_or_default();
    spec.hostname = Some(pod_name);
    if let Some(svc) = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.as_ref())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(svc.clone());
    }
    for claim in set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
    {
        let tname = claim.name_any();
        let vol = Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, &name, o),
                read_only: None,
            }),
            ..Default::default()
        };
        let vols = spec.volumes.get_or_insert_with(Vec::new);
        vols.retain(|v| v.name != tname);
        vols.push(vol);
    }
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// Creates the ordinal's claims that do not exist yet.
async fn ensure_claims(
    ctx: &crate::Context,
    set: &StatefulSet,
    api: &Api<PersistentVolumeClaim>,
    owner: &OwnerReference,
    owned_by_set: bool,
    o: i32,
) -> Result<(), Error> {
    let name = set.name_any();
    let spec = set.spec.as_ref();
    let match_labels = spec
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    for tmpl in spec
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
    {
        let cname = claim_name(&tmpl.name_any(), &name, o);
        if api.get_opt(&cname).await?.is_some() {
            continue;
        }
        let mut claim = tmpl.clone();
        claim.metadata.name = Some(cname.clone());
        claim.metadata.namespace = set.namespace();
        claim.metadata.resource_version = None;
        claim.metadata.uid = None;
        claim.status = None;
        let labels = claim.metadata.labels.get_or_insert_with(Default::default);
        labels.extend(match_labels.clone());
        if owned_by_set {
            // whenDeleted: Delete — the claim goes with the StatefulSet.
            let mut r = owner.clone();
            r.controller = Some(true);
            claim.metadata.owner_references = Some(vec![r]);
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => {
                publish(
                    ctx,
                    set,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("create Claim {cname} Pod {name}-{o} in StatefulSet {name} success"),
                )
                .await
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                publish(
                    ctx,
                    set,
                    EventType::Warning,
                    "FailedCreate",
                    format!("create Claim {cname} for Pod {name}-{o} in StatefulSet {name} failed error: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// whenScaled: Delete — make the condemned pod own its claims so they go with it.
async fn own_claims_by_pod(
    set: &StatefulSet,
    api: &Api<PersistentVolumeClaim>,
    pod: &Pod,
    o: i32,
) -> Result<(), Error> {
    let name = set.name_any();
    let Some(pod_uid) = pod.uid() else {
        return Ok(());
    };
    let r = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod_uid,
        controller: None,
        block_owner_deletion: None,
    };
    for tmpl in set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
    {
        let cname = claim_name(&tmpl.name_any(), &name, o);
        let Some(claim) = api.get_opt(&cname).await? else {
            continue;
        };
        let mut refs = claim.metadata.owner_references.clone().unwrap_or_default();
        if refs.iter().any(|x| x.uid == r.uid) {
            continue;
        }
        refs.push(r.clone());
        let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": claim.metadata.resource_version}});
        api.patch(&cname, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(rev: &str, healthy: bool) -> Replica {
        Replica {
            revision: rev.into(),
            terminal: false,
            terminating: false,
            healthy,
        }
    }

    fn pods(list: &[(i32, Replica)]) -> BTreeMap<i32, Replica> {
        list.iter().cloned().collect()
    }

    #[test]
    fn plan_table() {
        let ordered = Plan {
            start: 0,
            replicas: 3,
            parallel: false,
            rolling_partition: Some(0),
            update_revision: "v2".into(),
        };
        let parallel = Plan {
            parallel: true,
            ..ordered.clone()
        };
        let partitioned = Plan {
            rolling_partition: Some(2),
            ..ordered.clone()
        };
        let on_delete = Plan {
            rolling_partition: None,
            ..ordered.clone()
        };
        let scaled_down = Plan {
            replicas: 1,
            ..ordered.clone()
        };
        let failed = Replica {
            terminal: true,
            ..r("v2", false)
        };
        type Case<'a> = (&'a str, &'a Plan, BTreeMap<i32, Replica>, Vec<Step>);
        let cases: Vec<Case> = vec![
            (
                "empty ordered creates 0 only",
                &ordered,
                pods(&[]),
                vec![Step::Create(0)],
            ),
            (
                "waits for 0 to be ready",
                &ordered,
                pods(&[(0, r("v2", false))]),
                vec![],
            ),
            (
                "creates 1 after 0 ready",
                &ordered,
                pods(&[(0, r("v2", true))]),
                vec![Step::Create(1)],
            ),
            (
                "parallel creates all",
                &parallel,
                pods(&[]),
                vec![Step::Create(0), Step::Create(1), Step::Create(2)],
            ),
            (
                "replaces failed pod",
                &ordered,
                pods(&[(0, failed.clone())]),
                vec![Step::Delete(0)],
            ),
            (
                "scale down highest first",
                &scaled_down,
                pods(&[(0, r("v2", true)), (1, r("v2", true)), (2, r("v2", true))]),
                vec![Step::Delete(2)],
            ),
            (
                "scale down waits for unhealthy",
                &scaled_down,
                pods(&[(0, r("v2", false)), (1, r("v2", true)), (2, r("v2", true))]),
                vec![],
            ),
            (
                "rolling update highest outdated first",
                &ordered,
                pods(&[(0, r("v1", true)), (1, r("v1", true)), (2, r("v1", true))]),
                vec![Step::Delete(2)],
            ),
            (
                "rolling update continues downward",
                &ordered,
                pods(&[(0, r("v1", true)), (1, r("v1", true)), (2, r("v2", true))]),
                vec![Step::Delete(1)],
            ),
            (
                "rolling update waits for the new pod",
                &ordered,
                pods(&[(0, r("v1", true)), (1, r("v1", true)), (2, r("v2", false))]),
                vec![],
            ),
            (
                "partition protects lower ordinals",
                &partitioned,
                pods(&[(0, r("v1", true)), (1, r("v1", true)), (2, r("v2", true))]),
                vec![],
            ),
            (
                "on delete never deletes",
                &on_delete,
                pods(&[(0, r("v1", true)), (1, r("v1", true)), (2, r("v1", true))]),
                vec![],
            ),
        ];
        for (name, p, state, want) in cases {
            assert_eq!(plan(p, &state), want, "{name}");
        }
    }

    #[test]
    fn ordinals_and_claims() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web-a-1"), None);
        assert_eq!(claim_name("www", "web", 2), "www-web-2");
    }
}
