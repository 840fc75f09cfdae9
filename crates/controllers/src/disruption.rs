//! Disruption controller (upstream pkg/controller/disruption): keeps every
//! PodDisruptionBudget's status current — expected pods (from the owning controllers' scale
//! for percentages and `maxUnavailable`), healthy pods, desired healthy pods, the disruptions
//! the eviction subresource may still grant, and `disruptedPods` (evictions approved by the
//! API server, forgotten once the pod is gone or after two minutes).
//!
//! Level-triggered: any PDB or pod change (and a periodic resync) recomputes every budget
//! from fresh lists. Status is written with the resourceVersion that was read, so a
//! concurrent eviction's decrement is never overwritten (the write conflicts and the next
//! pass recomputes).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher::{self, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Context;
use crate::util::{Selector, controller_of, is_pod_ready};

/// How long an approved eviction keeps a pod out of the healthy count (upstream
/// `DeletionTimeout`).
pub const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);
/// A full recomputation this often even without changes.
const RESYNC: Duration = Duration::from_secs(30);

/// Wakes `notify` on every change of `K` (after an initial listing), until `shutdown`.
pub(crate) fn trigger_on<K>(client: kube::Client, notify: Arc<Notify>, shutdown: CancellationToken)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    // Metadata-only: any change bumps the resourceVersion, which is all a trigger needs.
    let api = Api::<kube::core::PartialObjectMeta<K>>::all(client);
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.next() => match ev {
                    Some(Ok(_)) => notify.notify_one(),
                    Some(Err(e)) => {
                        tracing::debug!("watch failed, retrying: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    None => return,
                },
            }
        }
    });
}

/// Upstream `intstr.GetScaledValueFromIntOrPercent` with rounding up.
pub fn scaled_value(v: &IntOrString, total: i32) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let scaled = (pct * i64::from(total) + 99).div_euclid(100);
            Ok(i32::try_from(scaled).unwrap_or(i32::MAX))
        }
    }
}

/// Whether the spec needs the controllers' scale (percentages and `maxUnavailable`).
fn needs_scale(pdb: &PodDisruptionBudget) -> bool {
    let spec = pdb.spec.as_ref();
    spec.is_some_and(|s| s.max_unavailable.is_some())
        || matches!(
            spec.and_then(|s| s.min_available.as_ref()),
            Some(IntOrString::String(_))
        )
}

/// (expected pods, desired healthy) given the spec, the matching pod count and, when
/// [`needs_scale`], the summed scale of their controllers.
pub fn expected_and_desired(
    pdb: &PodDisruptionBudget,
    pods: i32,
    scale: i32,
) -> Result<(i32, i32), String> {
    let spec = pdb.spec.as_ref();
    if let Some(max) = spec.and_then(|s| s.max_unavailable.as_ref()) {
        let unavailable = scaled_value(max, scale)?;
        return Ok((scale, (scale - unavailable).max(0)));
    }
    match spec.and_then(|s| s.min_available.as_ref()) {
        Some(IntOrString::Int(n)) => Ok((pods, *n)),
        Some(min @ IntOrString::String(_)) => Ok((scale, scaled_value(min, scale)?)),
        None => Ok((pods, 0)),
    }
}

/// Healthy pods: ready, not deleting and not recently approved for eviction.
pub fn count_healthy(pods: &[&Pod], disrupted: &BTreeMap<String, Time>, now: Timestamp) -> i32 {
    let n = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            disrupted
                .get(&p.name_any())
                .is_none_or(|t| t.0 + DELETION_TIMEOUT <= now)
        })
        .filter(|p| is_pod_ready(p))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The `disruptedPods` to keep: entries of pods still present, not deleting, and not yet
/// timed out; plus the earliest time an entry will time out (to recheck then).
pub fn prune_disrupted(
    pods: &[&Pod],
    disrupted: &BTreeMap<String, Time>,
    now: Timestamp,
) -> (BTreeMap<String, Time>, Option<Timestamp>) {
    let mut keep = BTreeMap::new();
    let mut recheck: Option<Timestamp> = None;
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.name_any();
        let Some(t) = disrupted.get(&name) else {
            continue;
        };
        let expires = t.0 + DELETION_TIMEOUT;
        if expires <= now {
            tracing::info!(
                pod = name,
                "pod was expected to be deleted at {expires} but it wasn't; forgetting its eviction"
            );
            continue;
        }
        recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
        keep.insert(name, t.clone());
    }
    (keep, recheck)
}

pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let notify = Arc::new(Notify::new());
    trigger_on::<PodDisruptionBudget>(ctx.client.clone(), notify.clone(), ctx.shutdown.clone());
    trigger_on::<Pod>(ctx.client.clone(), notify.clone(), ctx.shutdown.clone());
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match sync_all(&ctx).await {
            Ok(Some(recheck)) => {
                let secs = recheck
                    .duration_since(Timestamp::now())
                    .as_secs_f64()
                    .max(0.0);
                Duration::from_secs_f64(secs).min(RESYNC) + Duration::from_millis(10)
            }
            Ok(None) => RESYNC,
            Err(e) => {
                tracing::warn!("disruption: {e:#}");
                Duration::from_secs(1)
            }
        };
    }
}

/// Recomputes every budget; returns the earliest time a disrupted-pod entry expires.
async fn sync_all(ctx: &Context) -> anyhow::Result<Option<Timestamp>> {
    let pdbs = Api::<PodDisruptionBudget>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .context("listing PodDisruptionBudgets")?;
    let mut by_ns: BTreeMap<String, Vec<PodDisruptionBudget>> = BTreeMap::new();
    for p in pdbs.items {
        by_ns
            .entry(p.namespace().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let mut recheck: Option<Timestamp> = None;
    for (ns, pdbs) in by_ns {
        let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .with_context(|| format!("listing pods in {ns}"))?
            .items;
        let mut scales = Scales::new(ctx, &ns);
        for pdb in pdbs {
            match sync_pdb(ctx, &pdb, &pods, &mut scales).await {
                Ok(Some(t)) => recheck = Some(recheck.map_or(t, |r| r.min(t))),
                Ok(None) => {}
                Err(e) => tracing::warn!(pdb = format!("{ns}/{}", pdb.name_any()), "{e:#}"),
            }
        }
    }
    Ok(recheck)
}

async fn event(
    ctx: &Context,
    pdb: &PodDisruptionBudget,
    warning: bool,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &pdb.object_ref(&())).await {
        tracing::debug!("recording a PodDisruptionBudget event failed: {e}");
    }
}

/// Why the expected count could not be computed.
enum ScaleError {
    NoControllers(String),
    Api(anyhow::Error),
}

/// The scale of pods' controllers, looked up once per controller per pass.
struct Scales<'a> {
    ctx: &'a Context,
    ns: String,
    /// controller uid → replicas (`None`: not found).
    cache: HashMap<String, Option<i32>>,
    served: Option<crate::util::ServedResources>,
}

impl<'a> Scales<'a> {
    fn new(ctx: &'a Context, ns: &str) -> Self {
        Scales {
            ctx,
            ns: ns.to_string(),
            cache: HashMap::new(),
            served: None,
        }
    }

    /// The replicas of the workload controlling `pod`, keyed by that workload's uid (a
    /// Deployment for pods of its ReplicaSets).
    async fn of(&mut self, pod: &Pod) -> Result<Option<(String, i32)>, ScaleError> {
        let Some(owner) = controller_of(&pod.metadata).cloned() else {
            return Ok(None);
        };
        let client = self.ctx.client.clone();
        let ns = self.ns.clone();
        let found: Option<(String, i32)> = match (owner.api_version.as_str(), owner.kind.as_str()) {
            ("apps/v1", "ReplicaSet") => {
                let rs = get_opt(
                    Api::<ReplicaSet>::namespaced(client.clone(), &ns),
                    &owner.name,
                )
                .await?
                .filter(|r| r.uid().as_deref() == Some(owner.uid.as_str()));
                match rs {
                    None => None,
                    Some(rs) => match controller_of(&rs.metadata)
                        .filter(|o| o.kind == "Deployment" && o.api_version == "apps/v1")
                        .cloned()
                    {
                        Some(d) => get_opt(Api::<Deployment>::namespaced(client, &ns), &d.name)
                            .await?
                            .filter(|x| x.uid().as_deref() == Some(d.uid.as_str()))
                            .map(|x| (d.uid.clone(), x.spec.and_then(|s| s.replicas).unwrap_or(1))),
                        None => Some((
                            owner.uid.clone(),
                            rs.spec.and_then(|s| s.replicas).unwrap_or(1),
                        )),
                    },
                }
            }
            ("v1", "ReplicationController") => get_opt(
                Api::<ReplicationController>::namespaced(client, &ns),
                &owner.name,
            )
            .await?
            .filter(|x| x.uid().as_deref() == Some(owner.uid.as_str()))
            .map(|x| {
                (
                    owner.uid.clone(),
                    x.spec.and_then(|s| s.replicas).unwrap_or(1),
                )
            }),
            ("apps/v1", "StatefulSet") => {
                get_opt(Api::<StatefulSet>::namespaced(client, &ns), &owner.name)
                    .await?
                    .filter(|x| x.uid().as_deref() == Some(owner.uid.as_str()))
                    .map(|x| {
                        (
                            owner.uid.clone(),
                            x.spec.and_then(|s| s.replicas).unwrap_or(1),
                        )
                    })
            }
            (api_version, kind) => {
                // Anything else with a scale subresource (custom workloads).
                if self.served.is_none() {
                    self.served = Some(
                        crate::util::discover(&self.ctx.client)
                            .await
                            .map_err(|e| ScaleError::Api(e.into()))?,
                    );
                }
                match self
                    .served
                    .as_ref()
                    .and_then(|s| s.resolve(api_version, kind))
                {
                    None => None,
                    Some(r) => {
                        let api: Api<DynamicObject> =
                            Api::namespaced_with(client, &ns, &r.resource);
                        match api.get_scale(&owner.name).await {
                            Ok(s) if s.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
                                Some((
                                    owner.uid.clone(),
                                    s.spec.and_then(|s| s.replicas).unwrap_or(0),
                                ))
                            }
                            Ok(_) => None,
                            Err(kube::Error::Api(e)) if e.code == 404 => None,
                            Err(e) => return Err(ScaleError::Api(e.into())),
                        }
                    }
                }
            }
        };
        match found {
            Some((uid, n)) => {
                self.cache.insert(uid.clone(), Some(n));
                Ok(Some((uid, n)))
            }
            None => Err(ScaleError::NoControllers(format!(
                "found no controllers for pod {:?}",
                pod.name_any()
            ))),
        }
    }
}

async fn get_opt<K>(api: Api<K>, name: &str) -> Result<Option<K>, ScaleError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| ScaleError::Api(e.into()))
}

/// Recomputes one budget's status and writes it when it changed.
async fn sync_pdb(
    ctx: &Context,
    pdb: &PodDisruptionBudget,
    all_pods: &[Pod],
    scales: &mut Scales<'_>,
) -> anyhow::Result<Option<Timestamp>> {
    let now = Timestamp::now();
    let selector =
        Selector::from_label_selector(pdb.spec.as_ref().and_then(|s| s.selector.as_ref()));
    let pods: Vec<&Pod> = match &selector {
        Ok(sel) => all_pods
            .iter()
            .filter(|p| sel.matches_opt(p.metadata.labels.as_ref()))
            .collect(),
        Err(e) => return fail_safe(ctx, pdb, &format!("{e}")).await.map(|_| None),
    };
    if pods.is_empty() {
        event(ctx, pdb, false, "NoPods", "No matching pods found".into()).await;
    }
    let pod_count = i32::try_from(pods.len()).unwrap_or(i32::MAX);
    let mut scale = 0;
    if needs_scale(pdb) {
        let mut seen: HashMap<String, i32> = HashMap::new();
        let mut unmanaged = false;
        for p in &pods {
            match scales.of(p).await {
                Ok(Some((uid, n))) => {
                    seen.insert(uid, n);
                }
                Ok(None) => unmanaged = true,
                Err(ScaleError::NoControllers(msg)) => {
                    event(ctx, pdb, true, "NoControllers", msg.clone()).await;
                    return fail_safe(ctx, pdb, &msg).await.map(|_| None);
                }
                Err(ScaleError::Api(e)) => return Err(e.context("reading the pods' controllers")),
            }
        }
        if unmanaged {
            let sel = pdb
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .map(|s| format!("{s:?}"))
                .unwrap_or_default();
            event(ctx, pdb, true, "UnmanagedPods", format!("Pods selected by this PodDisruptionBudget (selector: {sel}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.")).await;
        }
        scale = seen.values().sum();
    }
    let (expected, desired) = match expected_and_desired(pdb, pod_count, scale) {
        Ok(v) => v,
        Err(e) => {
            event(
                ctx,
                pdb,
                true,
                "CalculateExpectedPodCountFailed",
                format!("Failed to calculate the number of expected pods: {e}"),
            )
            .await;
            return fail_safe(ctx, pdb, &e).await.map(|_| None);
        }
    };
    let old = pdb.status.clone().unwrap_or_default();
    let (disrupted, recheck) =
        prune_disrupted(&pods, &old.disrupted_pods.clone().unwrap_or_default(), now);
    let healthy = count_healthy(&pods, &disrupted, now);
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    let generation = pdb.metadata.generation.unwrap_or(0);

    let mut new = pdb.clone();
    let mut status = serde_json::to_value(&old).unwrap_or_default();
    status["currentHealthy"] = healthy.into();
    status["desiredHealthy"] = desired.into();
    status["expectedPods"] = expected.into();
    status["disruptionsAllowed"] = allowed.into();
    status["observedGeneration"] = generation.into();
    status["disruptedPods"] = serde_json::to_value(&disrupted).unwrap_or_default();
    let mut holder = serde_json::json!({ "status": status });
    apiserver_condition(&mut holder, allowed > 0, now);
    new.status = Some(
        serde_json::from_value(holder["status"].take())
            .context("building PodDisruptionBudget status")?,
    );
    if new.status == pdb.status {
        return Ok(recheck);
    }
    let api: Api<PodDisruptionBudget> =
        Api::namespaced(ctx.client.clone(), &pdb.namespace().unwrap_or_default());
    match api
        .replace_status(&pdb.name_any(), &PostParams::default(), &new)
        .await
    {
        Ok(_) => Ok(recheck),
        // An eviction changed the budget meanwhile: the watch brings us back.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(recheck),
        Err(e) => Err(anyhow::Error::from(e).context("updating PodDisruptionBudget status")),
    }
}

/// Sets `DisruptionAllowed` like upstream's `UpdateDisruptionAllowedCondition`.
fn apiserver_condition(holder: &mut serde_json::Value, allowed: bool, now: Timestamp) {
    let (status, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    set_condition(holder, status, reason, "", now);
}

fn set_condition(
    holder: &mut serde_json::Value,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let observed = holder["status"]["observedGeneration"].as_i64().unwrap_or(0);
    let now = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut conds: Vec<serde_json::Value> = holder["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conds.iter_mut().find(|c| c["type"] == "DisruptionAllowed") {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = now.into();
            }
            c["status"] = status.into();
            c["reason"] = reason.into();
            c["message"] = message.into();
            c["observedGeneration"] = observed.into();
        }
        None => conds.push(serde_json::json!({
            "type": "DisruptionAllowed", "status": status, "reason": reason, "message": message,
            "observedGeneration": observed, "lastTransitionTime": now,
        })),
    }
    holder["status"]["conditions"] = serde_json::Value::Array(conds);
}

/// Upstream `failSafe`: no disruptions while the budget cannot be computed.
async fn fail_safe(ctx: &Context, pdb: &PodDisruptionBudget, why: &str) -> anyhow::Result<()> {
    let mut holder = serde_json::json!({ "status": serde_json::to_value(pdb.status.clone().unwrap_or_default()).unwrap_or_default() });
    holder["status"]["disruptionsAllowed"] = 0.into();
    set_condition(&mut holder, "False", "SyncFailed", why, Timestamp::now());
    let mut new = pdb.clone();
    new.status = Some(
        serde_json::from_value(holder["status"].take())
            .context("building PodDisruptionBudget status")?,
    );
    if new.status == pdb.status {
        return Ok(());
    }
    let api: Api<PodDisruptionBudget> =
        Api::namespaced(ctx.client.clone(), &pdb.namespace().unwrap_or_default());
    match api
        .replace_status(&pdb.name_any(), &PostParams::default(), &new)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context("updating PodDisruptionBudget status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn expected_and_desired_counts() {
        let s = |v: &str| IntOrString::String(v.into());
        // (spec, matching pods, controllers' scale, want)
        let cases = [
            (pdb(Some(IntOrString::Int(2)), None), 3, 5, Ok((3, 2))),
            (pdb(Some(s("50%")), None), 3, 5, Ok((5, 3))),
            (pdb(None, Some(IntOrString::Int(1))), 3, 4, Ok((4, 3))),
            (pdb(None, Some(s("25%"))), 3, 10, Ok((10, 7))),
            (pdb(None, Some(IntOrString::Int(9))), 3, 4, Ok((4, 0))),
            (
                pdb(Some(s("half")), None),
                3,
                4,
                Err("invalid value for IntOrString: invalid value \"half\"".to_string()),
            ),
        ];
        for (p, pods, scale, want) in cases {
            assert_eq!(expected_and_desired(&p, pods, scale), want, "{:?}", p.spec);
        }
    }

    #[test]
    fn healthy_pods_and_disrupted_entries() {
        let now = Timestamp::now();
        let pod = |name: &str, ready: bool, deleting: bool| {
            serde_json::from_value::<Pod>(serde_json::json!({
                "metadata": { "name": name, "deletionTimestamp": if deleting { Some("2020-01-01T00:00:00Z") } else { None } },
                "status": { "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
            }))
            .unwrap_or_default()
        };
        let pods = [
            pod("a", true, false),
            pod("b", true, false),
            pod("c", false, false),
            pod("d", true, true),
            pod("e", true, false),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let disrupted = BTreeMap::from([
            ("b".to_string(), Time(now - SignedDuration::from_secs(10))),
            ("e".to_string(), Time(now - SignedDuration::from_secs(300))),
            ("gone".to_string(), Time(now)),
            ("d".to_string(), Time(now)),
        ]);
        // a and e are healthy (e's eviction timed out); b is being evicted; c unready; d deleting.
        assert_eq!(count_healthy(&refs, &disrupted, now), 2);
        let (keep, recheck) = prune_disrupted(&refs, &disrupted, now);
        assert_eq!(keep.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(
            recheck,
            Some(now - SignedDuration::from_secs(10) + DELETION_TIMEOUT)
        );
    }
}
