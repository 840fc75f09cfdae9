//! Namespace controller (upstream `pkg/controller/namespace`): for a namespace with a
//! deletionTimestamp, deletes every namespaced object in it (every discovered namespaced
//! resource, with deletecollection where served), reports progress in the namespace's status
//! conditions, and once nothing remains removes the `kubernetes` finalizer through
//! `PUT /api/v1/namespaces/<name>/finalize`, after which the API server removes the namespace.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use crate::util::{self, ServedResource};

/// The finalizer token this controller owns in `spec.finalizers`.
const FINALIZER_KUBERNETES: &str = "kubernetes";
/// Upstream's default wait for objects held by finalizers (`finalizerEstimateSeconds`).
const FINALIZER_ESTIMATE_SECONDS: i64 = 15;
/// Upstream runs 10 namespace workers (`--concurrent-namespace-syncs`).
const CONCURRENCY: u16 = 10;
/// Whether status writes (phase, conditions) to a Terminating namespace are safe. Not yet: the API
/// server's generic update path (`rest.rs`, "a deleting object whose last finalizer was
/// removed is gone now") deletes any deleting object with empty `metadata.finalizers`, ignoring
/// the namespace's `spec.finalizers`, so `PUT .../namespaces/<n>/status` with the conditions
/// would remove the namespace while its content remains. Until that is fixed the conditions are
/// computed and logged but not written. Flip this once the server honours `spec.finalizers`.
const STATUS_WRITES_SAFE: bool = true;

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Content(String),
    #[error("namespace uid has changed across retries")]
    UidChanged,
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> NsError {
    let what = what.into();
    move |source| NsError::Api { what, source }
}

fn is_status(e: &kube::Error, codes: &[u16]) -> bool {
    matches!(e, kube::Error::Api(s) if codes.contains(&s.code))
}

/// The message upstream shows for an API error (the Status message), else the error itself.
fn err_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

struct State {
    client: kube::Client,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the namespace controller until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Arc<crate::Context>) -> anyhow::Result<()> {
    let state = Arc::new(State {
        client: ctx.client.clone(),
        failures: Mutex::new(HashMap::new()),
    });
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("namespace controller: {e}");
            }
        })
        .await;
    Ok(())
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, NsError> {
    let Some(name) = ns.metadata.name.clone() else {
        return Ok(Action::await_change());
    };
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let remaining = delete_namespace(&state.client, &name).await?;
    state
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&name);
    Ok(match remaining {
        // Upstream requeues after half the estimate, plus a second.
        Some(estimate) => Action::requeue(Duration::from_secs(
            u64::try_from(estimate / 2 + 1).unwrap_or(1),
        )),
        None => Action::await_change(),
    })
}

fn error_policy(ns: Arc<Namespace>, err: &NsError, state: Arc<State>) -> Action {
    let name = ns.metadata.name.clone().unwrap_or_default();
    tracing::info!(namespace = %name, "namespace deletion failed, will retry: {err}");
    let mut failures = state.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(name).or_insert(0);
    *n = n.saturating_add(1);
    Action::requeue(util::backoff(
        Duration::from_millis(100),
        Duration::from_secs(300),
        *n,
    ))
}

/// Upstream `NamespacedResourcesDeleter.Delete`: returns `Some(estimate seconds)` while content
/// remains, `None` once finalized (or nothing to do).
async fn delete_namespace(client: &kube::Client, name: &str) -> Result<Option<i64>, NsError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let Some(mut ns) = api
        .get_opt(name)
        .await
        .map_err(api_err(format!("get namespace {name}")))?
    else {
        return Ok(None);
    };
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(None);
    }
    // Make sure the phase says Terminating (the API server sets it on DELETE; be sure).
    if STATUS_WRITES_SAFE
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
    {
        let mut updated = ns.clone();
        updated.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
        match api
            .replace_status(name, &PostParams::default(), &updated)
            .await
        {
            Ok(n) => ns = n,
            Err(e) if is_status(&e, &[404]) => return Ok(None),
            // Someone else wrote it meanwhile; the next pass sees their version.
            Err(e) if is_status(&e, &[409]) => {}
            Err(e) => return Err(api_err(format!("update status of namespace {name}"))(e)),
        }
    }
    if !has_kubernetes_finalizer(&ns) {
        return Ok(None);
    }
    let estimate = delete_all_content(client, &ns).await?;
    if estimate > 0 {
        return Ok(Some(estimate));
    }
    finalize(&api, &ns).await?;
    Ok(None)
}

fn has_kubernetes_finalizer(ns: &Namespace) -> bool {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.as_deref())
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER_KUBERNETES))
}

/// Removes our token from `spec.finalizers` via the finalize subresource, re-reading on
/// conflict (upstream `finalizeNamespace` under `retryOnConflictError`).
async fn finalize(api: &Api<Namespace>, ns: &Namespace) -> Result<(), NsError> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut current = ns.clone();
    for _ in 0..5 {
        let mut finalized = current.clone();
        let spec = finalized.spec.get_or_insert_with(Default::default);
        let mut rest: Vec<String> = spec
            .finalizers
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != FINALIZER_KUBERNETES)
            .collect();
        rest.sort();
        rest.dedup();
        spec.finalizers = Some(rest);
        match api
            .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %name, "namespace finalized");
                return Ok(());
            }
            Err(e) if is_status(&e, &[404]) => return Ok(()),
            Err(e) if is_status(&e, &[409]) => {
                let Some(latest) = api
                    .get_opt(&name)
                    .await
                    .map_err(api_err(format!("get namespace {name}")))?
                else {
                    return Ok(());
                };
                if latest.metadata.uid != current.metadata.uid {
                    return Err(NsError::UidChanged);
                }
                current = latest;
            }
            Err(e) => return Err(api_err(format!("finalize namespace {name}"))(e)),
        }
    }
    Err(NsError::Content(format!(
        "conflict persisted finalizing namespace {name}"
    )))
}

/// What remains of one resource in the namespace after a deletion pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct GvrDeletion {
    estimate: i64,
    remaining: usize,
    finalizers: BTreeMap<String, usize>,
}

/// Upstream `deleteAllContent`: deletes everything, returns the estimate of seconds until the
/// remaining content is gone (0: nothing remains), and updates the status conditions.
async fn delete_all_content(client: &kube::Client, ns: &Namespace) -> Result<i64, NsError> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut conditions = ConditionInputs::default();
    let mut errors: Vec<String> = Vec::new();
    let resources = match util::discover(client).await {
        Ok(served) => served.namespaced_with_verbs(&["delete"]),
        Err(e) => {
            // Nothing can be known to be gone without discovery: never finalize on this pass.
            let msg = err_message(&e);
            conditions.discovery_failure = Some(msg.clone());
            errors.push(msg);
            Vec::new()
        }
    };
    let mut estimate = 0i64;
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    for res in &resources {
        let (gvr, err) = delete_all_content_for(client, res, &name).await;
        estimate = estimate.max(gvr.estimate);
        if gvr.remaining > 0 {
            *remaining.entry(res.group_resource()).or_default() += gvr.remaining;
            for (f, n) in gvr.finalizers {
                *finalizers.entry(f).or_default() += n;
            }
        }
        if let Some(e) = err {
            conditions.content_errors.push(e.clone());
            errors.push(e);
        }
    }
    conditions.remaining = remaining;
    conditions.finalizers = finalizers;

    // Always write the conditions: a condition that failed before and succeeds now must say so.
    let now = jiff::Timestamp::now();
    let mut updated = ns.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    let mut conds = status.conditions.take().unwrap_or_default();
    if update_conditions(&mut conds, conditions.build(now), now) {
        if !STATUS_WRITES_SAFE {
            for c in conds.iter().filter(|c| c.status == "True") {
                tracing::info!(namespace = %name, condition = %c.type_, reason = ?c.reason, "{}", c.message.as_deref().unwrap_or_default());
            }
            return finish(errors, estimate);
        }
        status.conditions = Some(conds);
        let api: Api<Namespace> = Api::all(client.clone());
        if let Err(e) = api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            tracing::debug!(namespace = %name, "couldn't update status conditions: {e}");
        }
    }
    finish(errors, estimate)
}

fn finish(mut errors: Vec<String>, estimate: i64) -> Result<i64, NsError> {
    if !errors.is_empty() {
        errors.sort();
        return Err(NsError::Content(errors.join(", ")));
    }
    Ok(estimate)
}

/// Upstream `deleteAllContentForGroupVersionResource`.
async fn delete_all_content_for(
    client: &kube::Client,
    res: &ServedResource,
    namespace: &str,
) -> (GvrDeletion, Option<String>) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &res.resource);
    let mut estimate = 0;
    if res.resource.group.is_empty() && res.resource.plural == "pods" {
        match estimate_graceful_termination(client, namespace).await {
            Ok(e) => estimate = e,
            Err(e) => return (GvrDeletion::default(), Some(e)),
        }
    }

    // Background propagation, so the garbage collector never adds the orphan finalizer: this
    // controller removes everything in the namespace itself.
    let mut deleted = false;
    if res.supports("deletecollection") {
        match api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
        {
            Ok(_) => deleted = true,
            Err(e) if is_status(&e, &[404, 405]) => {}
            Err(e) => {
                return (
                    GvrDeletion {
                        estimate,
                        ..Default::default()
                    },
                    Some(err_message(&e)),
                );
            }
        }
    }
    if !res.supports("list") {
        return (
            GvrDeletion {
                estimate,
                ..Default::default()
            },
            None,
        );
    }
    if !deleted && let Err(e) = delete_each_item(&api).await {
        return (
            GvrDeletion {
                estimate,
                ..Default::default()
            },
            Some(e),
        );
    }

    // Verify: whatever is still listed is remaining content.
    let items = match api.list_metadata(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) if is_status(&e, &[404, 405]) => {
            return (
                GvrDeletion {
                    estimate,
                    ..Default::default()
                },
                None,
            );
        }
        Err(e) => {
            return (
                GvrDeletion {
                    estimate,
                    ..Default::default()
                },
                Some(err_message(&e)),
            );
        }
    };
    if items.is_empty() {
        return (GvrDeletion::default(), None);
    }
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    for item in &items {
        for f in item.metadata.finalizers.iter().flatten() {
            *finalizers.entry(f.clone()).or_default() += 1;
        }
    }
    let remaining = items.len();
    if estimate != 0 {
        return (
            GvrDeletion {
                estimate,
                remaining,
                finalizers,
            },
            None,
        );
    }
    // Finalizers are a normal reason to wait (the garbage collector, say).
    if !finalizers.is_empty() {
        return (
            GvrDeletion {
                estimate: FINALIZER_ESTIMATE_SECONDS,
                remaining,
                finalizers,
            },
            None,
        );
    }
    (
        GvrDeletion {
            estimate,
            remaining,
            finalizers,
        },
        Some(format!(
            "unexpected items still remain in namespace: {namespace} for gvr: {}",
            res.gvr_string()
        )),
    )
}

async fn delete_each_item(api: &Api<DynamicObject>) -> Result<(), String> {
    let items = match api.list_metadata(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) if is_status(&e, &[404, 405]) => return Ok(()),
        Err(e) => return Err(err_message(&e)),
    };
    for item in items {
        let Some(name) = item.metadata.name.as_deref() else {
            continue;
        };
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, &[404, 405]) => {}
            Err(e) => return Err(err_message(&e)),
        }
    }
    Ok(())
}

/// The longest grace period of the namespace's non-terminal pods (upstream
/// `estimateGracefulTermination`).
async fn estimate_graceful_termination(
    client: &kube::Client,
    namespace: &str,
) -> Result<i64, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default())
        .await
        .map_err(|e| err_message(&e))?;
    Ok(list
        .items
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
        })
        .filter_map(|p| p.spec.as_ref()?.termination_grace_period_seconds)
        .max()
        .unwrap_or(0)
        .max(0))
}

// ---------------------------------------------------------------------------------------------
// Status conditions (pure, unit tested)
// ---------------------------------------------------------------------------------------------

const COND_DISCOVERY: &str = "NamespaceDeletionDiscoveryFailure";
const COND_GV_PARSING: &str = "NamespaceDeletionGroupVersionParsingFailure";
const COND_CONTENT_FAILURE: &str = "NamespaceDeletionContentFailure";
const COND_CONTENT_REMAINING: &str = "NamespaceContentRemaining";
const COND_FINALIZERS_REMAINING: &str = "NamespaceFinalizersRemaining";

/// The conditions this controller maintains, in upstream's order, with their "ok" reason and
/// message.
const MAINTAINED: &[(&str, &str, &str)] = &[
    (
        COND_DISCOVERY,
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        COND_GV_PARSING,
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        COND_CONTENT_FAILURE,
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        COND_CONTENT_REMAINING,
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        COND_FINALIZERS_REMAINING,
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ),
];

/// What one deletion pass found, to be turned into conditions.
#[derive(Debug, Default, Clone)]
struct ConditionInputs {
    discovery_failure: Option<String>,
    content_errors: Vec<String>,
    /// "resource.group" → remaining objects.
    remaining: BTreeMap<String, usize>,
    /// finalizer → objects still holding it.
    finalizers: BTreeMap<String, usize>,
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
    }
}

impl ConditionInputs {
    /// The failing conditions (status True); maintained types absent here are "ok".
    fn build(&self, now: jiff::Timestamp) -> Vec<NamespaceCondition> {
        let mut out = Vec::new();
        if let Some(msg) = &self.discovery_failure {
            // Discovery fails as a whole here (never per group), which upstream reports verbatim.
            out.push(condition(
                COND_DISCOVERY,
                "True",
                "DiscoveryFailed",
                msg.clone(),
                now,
            ));
        }
        if !self.content_errors.is_empty() {
            let mut msgs = self.content_errors.clone();
            msgs.sort();
            out.push(condition(
                COND_CONTENT_FAILURE,
                "True",
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    msgs.len(),
                    msgs.join(", ")
                ),
                now,
            ));
        }
        let remaining: Vec<String> = self
            .remaining
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(gr, n)| format!("{gr} has {n} resource instances"))
            .collect();
        if !remaining.is_empty() {
            out.push(condition(
                COND_CONTENT_REMAINING,
                "True",
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", sorted_join(remaining)),
                now,
            ));
        }
        let finalizers: Vec<String> = self
            .finalizers
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        if !finalizers.is_empty() {
            out.push(condition(
                COND_FINALIZERS_REMAINING,
                "True",
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    sorted_join(finalizers)
                ),
                now,
            ));
        }
        out
    }
}

fn sorted_join(mut parts: Vec<String>) -> String {
    parts.sort();
    parts.join(", ")
}

/// Upstream `updateConditions`: every maintained type gets its new (or "ok") value; the
/// transition time moves only when the status flips. Returns whether anything changed.
fn update_conditions(
    conds: &mut Vec<NamespaceCondition>,
    failing: Vec<NamespaceCondition>,
    now: jiff::Timestamp,
) -> bool {
    let mut changed = false;
    for (type_, ok_reason, ok_message) in MAINTAINED {
        let new = failing
            .iter()
            .find(|c| c.type_ == *type_)
            .cloned()
            .unwrap_or_else(|| condition(type_, "False", ok_reason, ok_message.to_string(), now));
        match conds.iter_mut().find(|c| c.type_ == *type_) {
            None => {
                conds.push(new);
                changed = true;
            }
            Some(old) => {
                if old.status != new.status
                    || old.reason != new.reason
                    || old.message != new.message
                {
                    if old.status != new.status {
                        old.last_transition_time = Some(Time(now));
                    }
                    old.status = new.status;
                    old.reason = new.reason;
                    old.message = new.message;
                    changed = true;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    fn find<'a>(conds: &'a [NamespaceCondition], t: &str) -> &'a NamespaceCondition {
        conds
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn condition_messages() {
        let t = ts("2025-01-01T00:00:00Z");
        struct Case {
            name: &'static str,
            inputs: ConditionInputs,
            want: Vec<(&'static str, &'static str, &'static str)>,
        }
        let cases = vec![
            Case {
                name: "all fine",
                inputs: ConditionInputs::default(),
                want: vec![],
            },
            Case {
                name: "content remains with finalizers",
                inputs: ConditionInputs {
                    remaining: [
                        ("configmaps.".to_string(), 2),
                        ("deployments.apps".to_string(), 1),
                    ]
                    .into(),
                    finalizers: [("example.com/x".to_string(), 2)].into(),
                    ..Default::default()
                },
                want: vec![
                    (
                        COND_CONTENT_REMAINING,
                        "SomeResourcesRemain",
                        "Some resources are remaining: configmaps. has 2 resource instances, deployments.apps has 1 resource instances",
                    ),
                    (
                        COND_FINALIZERS_REMAINING,
                        "SomeFinalizersRemain",
                        "Some content in the namespace has finalizers remaining: example.com/x in 2 resource instances",
                    ),
                ],
            },
            Case {
                name: "errors",
                inputs: ConditionInputs {
                    discovery_failure: Some("boom".into()),
                    content_errors: vec!["b".into(), "a".into()],
                    ..Default::default()
                },
                want: vec![
                    (COND_DISCOVERY, "DiscoveryFailed", "boom"),
                    (
                        COND_CONTENT_FAILURE,
                        "ContentDeletionFailed",
                        "Failed to delete all resource types, 2 remaining: a, b",
                    ),
                ],
            },
        ];
        for c in cases {
            let got: Vec<(String, String, String)> = c
                .inputs
                .build(t)
                .into_iter()
                .map(|c| {
                    (
                        c.type_,
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default(),
                    )
                })
                .collect();
            let want: Vec<(String, String, String)> = c
                .want
                .iter()
                .map(|(a, b, m)| (a.to_string(), b.to_string(), m.to_string()))
                .collect();
            assert_eq!(got, want, "{}", c.name);
        }
    }

    #[test]
    fn conditions_update_and_transition_times() {
        let t0 = ts("2025-01-01T00:00:00Z");
        let t1 = ts("2025-01-01T00:01:00Z");
        let mut conds = Vec::new();
        let remaining = ConditionInputs {
            remaining: [("configmaps.".to_string(), 1)].into(),
            ..Default::default()
        };
        assert!(update_conditions(&mut conds, remaining.build(t0), t0));
        assert_eq!(conds.len(), MAINTAINED.len());
        assert_eq!(find(&conds, COND_CONTENT_REMAINING).status, "True");
        assert_eq!(find(&conds, COND_DISCOVERY).status, "False");
        assert_eq!(
            find(&conds, COND_DISCOVERY).reason.as_deref(),
            Some("ResourcesDiscovered")
        );
        // Same inputs later: nothing changes.
        assert!(!update_conditions(&mut conds, remaining.build(t1), t1));
        // Content gone: flips to False with a new transition time; untouched ones keep theirs.
        assert!(update_conditions(
            &mut conds,
            ConditionInputs::default().build(t1),
            t1
        ));
        let c = find(&conds, COND_CONTENT_REMAINING);
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("ContentRemoved"))
        );
        assert_eq!(c.last_transition_time.as_ref().map(|t| t.0), Some(t1));
        assert_eq!(
            find(&conds, COND_DISCOVERY)
                .last_transition_time
                .as_ref()
                .map(|t| t.0),
            Some(t0)
        );
        // Message change without status flip keeps the transition time.
        let more = ConditionInputs {
            content_errors: vec!["x".into()],
            ..Default::default()
        };
        assert!(update_conditions(&mut conds, more.build(t0), t0));
        let more2 = ConditionInputs {
            content_errors: vec!["y".into()],
            ..Default::default()
        };
        assert!(update_conditions(&mut conds, more2.build(t1), t1));
        assert_eq!(
            find(&conds, COND_CONTENT_FAILURE)
                .last_transition_time
                .as_ref()
                .map(|t| t.0),
            Some(t0)
        );
    }

    #[test]
    fn kubernetes_finalizer_detection() {
        use k8s_openapi::api::core::v1::NamespaceSpec;
        let ns = |f: Option<Vec<&str>>| Namespace {
            spec: Some(NamespaceSpec {
                finalizers: f.map(|v| v.into_iter().map(String::from).collect()),
            }),
            ..Default::default()
        };
        assert!(has_kubernetes_finalizer(&ns(Some(vec!["kubernetes"]))));
        assert!(has_kubernetes_finalizer(&ns(Some(vec!["x", "kubernetes"]))));
        assert!(!has_kubernetes_finalizer(&ns(Some(vec!["x"]))));
        assert!(!has_kubernetes_finalizer(&ns(None)));
        assert!(!has_kubernetes_finalizer(&Namespace::default()));
    }
}
