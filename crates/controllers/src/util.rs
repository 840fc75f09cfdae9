//! Helpers shared by controllers: owner references and finalizers, label selectors, pod
//! readiness, discovery of the served resources, and a deduplicating work queue.
//!
//! Everything here follows upstream's helpers of the same purpose (`metav1.NewControllerRef`,
//! `metav1.LabelSelectorAsSelector`, `podutil.IsPodAvailable`, `discovery.ServerPreferredResources`,
//! `workqueue.RateLimitingInterface`), so controllers built on them behave like upstream's.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};

// ---------------------------------------------------------------------------------------------
// Owner references and finalizers
// ---------------------------------------------------------------------------------------------

/// The finalizer the API server adds for `propagationPolicy: Orphan`; the garbage collector
/// removes the owner's references from its dependents, then this finalizer.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer the API server adds for `propagationPolicy: Foreground`; the garbage collector
/// removes it once no dependent blocks the owner's deletion any more.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// An owner reference marking `owner` as the managing controller, as upstream's
/// `metav1.NewControllerRef`: `controller` and `blockOwnerDeletion` are both true, so a
/// foreground deletion of the owner waits for this dependent.
pub fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// [`controller_ref`] for a typed object; `None` when the object has no name or uid yet
/// (it was never stored, so nothing can point at it).
pub fn controller_ref_for<K>(owner: &K) -> Option<OwnerReference>
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = owner.meta();
    let (name, uid) = (meta.name.as_deref()?, meta.uid.as_deref()?);
    Some(controller_ref(
        &K::api_version(&()),
        &K::kind(&()),
        name,
        uid,
    ))
}

/// The owner reference with `controller: true`, if any (upstream `metav1.GetControllerOf`).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether the object's controller is the object with this uid (upstream `metav1.IsControlledBy`).
pub fn is_controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == owner_uid)
}

/// Whether `metadata.finalizers` holds `finalizer`.
pub fn has_finalizer(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers
        .as_deref()
        .is_some_and(|f| f.iter().any(|x| x == finalizer))
}

/// Whether the object has a `deletionTimestamp` (it is being deleted, maybe waiting on finalizers).
pub fn is_being_deleted(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

/// Why a `LabelSelector` cannot be turned into a [`Selector`]; messages follow upstream's
/// `LabelSelectorAsSelector` / `labels.NewRequirement` wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{0:?} is not a valid label selector operator")]
    BadOperator(String),
    #[error("values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty")]
    EmptyValues,
    #[error("values: Invalid value: {0:?}: values set must be empty for exists and does not exist")]
    UnexpectedValues(Vec<String>),
    #[error("key: Invalid value: {0:?}: {1}")]
    BadKey(String, &'static str),
    #[error("values[{index}]: Invalid value: {value:?}: {why}")]
    BadValue {
        index: usize,
        value: String,
        why: &'static str,
    },
}

/// One requirement of a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _) | Requirement::In(k, _) | Requirement::NotIn(k, _) => k,
            Requirement::Exists(k) | Requirement::DoesNotExist(k) => k,
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A compiled label selector. Like upstream, a missing selector selects nothing and an empty
/// one (no matchLabels, no matchExpressions) selects everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// `None` means "selects nothing".
    requirements: Option<Vec<Requirement>>,
}

impl Selector {
    /// A selector matching every object.
    pub fn everything() -> Self {
        Selector {
            requirements: Some(Vec::new()),
        }
    }

    /// A selector matching no object.
    pub fn nothing() -> Self {
        Selector { requirements: None }
    }

    /// Compiles a `LabelSelector` (upstream `metav1.LabelSelectorAsSelector`).
    pub fn from_label_selector(selector: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        let Some(sel) = selector else {
            return Ok(Self::nothing());
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            validate_key(k)?;
            validate_value(0, v)?;
            reqs.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for expr in sel.match_expressions.iter().flatten() {
            validate_key(&expr.key)?;
            let values = expr.values.clone().unwrap_or_default();
            let req = match expr.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(SelectorError::EmptyValues);
                    }
                    for (i, v) in values.iter().enumerate() {
                        validate_value(i, v)?;
                    }
                    let mut values = values;
                    values.sort();
                    values.dedup();
                    if expr.operator == "In" {
                        Requirement::In(expr.key.clone(), values)
                    } else {
                        Requirement::NotIn(expr.key.clone(), values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(SelectorError::UnexpectedValues(values));
                    }
                    if expr.operator == "Exists" {
                        Requirement::Exists(expr.key.clone())
                    } else {
                        Requirement::DoesNotExist(expr.key.clone())
                    }
                }
                other => return Err(SelectorError::BadOperator(other.to_string())),
            };
            reqs.push(req);
        }
        // Upstream keeps requirements sorted by key, which makes `to_string` stable.
        reqs.sort_by(|a, b| a.key().cmp(b.key()));
        Ok(Selector {
            requirements: Some(reqs),
        })
    }

    /// Whether the selector selects nothing at all.
    pub fn is_nothing(&self) -> bool {
        self.requirements.is_none()
    }

    /// Whether the selector selects everything (it has no requirements).
    pub fn is_everything(&self) -> bool {
        self.requirements.as_ref().is_some_and(|r| r.is_empty())
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.requirements {
            None => false,
            Some(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }

    /// Whether an object with this (possibly absent) labels map is selected.
    pub fn matches_opt(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.matches(labels.unwrap_or(&EMPTY))
    }

    /// The selector in the `labelSelector` query syntax (`a=b,c in (x,y),!d`), for list and
    /// watch calls. `None` for a selector matching nothing, which has no query form: callers
    /// should skip the call.
    pub fn to_query(&self) -> Option<String> {
        let reqs = self.requirements.as_ref()?;
        let parts: Vec<String> = reqs
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        Some(parts.join(","))
    }
}

/// Whether `selector` selects an object with `labels` (a missing selector selects nothing).
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<bool, SelectorError> {
    Ok(Selector::from_label_selector(selector)?.matches_opt(labels))
}

/// A DNS-1123-ish label name part: alphanumerics, '-', '_', '.', alphanumeric at both ends.
fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
                && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
        })
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Err(SelectorError::BadKey(
            key.to_string(),
            "prefix part must be a lowercase RFC 1123 subdomain",
        ));
    }
    if !is_qualified_name_part(name) {
        return Err(SelectorError::BadKey(
            key.to_string(),
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ));
    }
    Ok(())
}

fn validate_value(index: usize, value: &str) -> Result<(), SelectorError> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(SelectorError::BadValue {
            index,
            value: value.to_string(),
            why: "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------------

/// The pod's condition of this type, if reported.
pub fn pod_condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Whether the pod's `Ready` condition is `True` (upstream `podutil.IsPodReady`).
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod_condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// Whether the pod has been ready for at least `min_ready_seconds` at `now`
/// (upstream `podutil.IsPodAvailable`: the Ready condition's lastTransitionTime plus
/// minReadySeconds must be strictly before now).
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    let Some(ready) = pod_condition(pod, "Ready").filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    let Some(since) = ready.last_transition_time.as_ref() else {
        return false;
    };
    match since
        .0
        .checked_add(jiff::SignedDuration::from_secs(i64::from(
            min_ready_seconds,
        ))) {
        Ok(available_at) => available_at < now,
        Err(_) => false,
    }
}

/// Whether the pod still counts toward its owner's replicas: not Succeeded/Failed and not being
/// deleted (upstream `controller.IsPodActive`).
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
        && pod.metadata.deletion_timestamp.is_none()
}

/// Whether the pod is being deleted (has a deletionTimestamp).
pub fn is_pod_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

/// One served resource (never a subresource) at one version.
#[derive(Debug, Clone)]
pub struct ServedResource {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub verbs: Vec<String>,
}

impl ServedResource {
    /// Whether discovery lists this verb for the resource.
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// Whether the resource supports every one of these verbs.
    pub fn supports_all(&self, verbs: &[&str]) -> bool {
        verbs.iter().all(|v| self.supports(v))
    }

    /// `resource.group`, as upstream prints a GroupResource (`configmaps.`, `deployments.apps`).
    pub fn group_resource(&self) -> String {
        format!("{}.{}", self.resource.plural, self.resource.group)
    }

    /// As Go prints a GroupVersionResource (`apps/v1, Resource=deployments`), for messages.
    pub fn gvr_string(&self) -> String {
        let gv = if self.resource.group.is_empty() {
            format!("/{}", self.resource.version)
        } else {
            format!("{}/{}", self.resource.group, self.resource.version)
        };
        format!("{gv}, Resource={}", self.resource.plural)
    }
}

/// What the API server serves, from one discovery run.
#[derive(Debug, Clone, Default)]
pub struct ServedResources {
    /// Each resource once, at its group's preferred version, or at the most preferred version
    /// serving it when the preferred version does not (upstream `ServerPreferredResources`).
    pub preferred: Vec<ServedResource>,
    /// Every (group, version, kind), for resolving `apiVersion`+`kind` (owner references).
    by_gvk: HashMap<(String, String, String), ServedResource>,
    /// (group, kind) → index into `preferred`, for kinds referenced at unserved versions.
    by_gk: HashMap<(String, String), usize>,
}

impl ServedResources {
    /// Builds the table from a finished `Discovery`.
    pub fn from_discovery(discovery: &Discovery) -> Self {
        let mut out = ServedResources::default();
        for group in discovery.groups() {
            let mut seen: HashSet<String> = HashSet::new();
            // Preferred version first, then the rest in kube's stability order.
            let preferred = group.preferred_version_or_latest().to_string();
            let mut versions = vec![preferred.clone()];
            versions.extend(
                group
                    .versions()
                    .filter(|v| *v != preferred)
                    .map(str::to_string),
            );
            for version in versions {
                for (ar, caps) in group.versioned_resources(&version) {
                    if ar.plural.contains('/') {
                        continue;
                    }
                    let served = served(ar, &caps);
                    let gvk = (
                        served.resource.group.clone(),
                        served.resource.version.clone(),
                        served.resource.kind.clone(),
                    );
                    out.by_gvk.entry(gvk).or_insert_with(|| served.clone());
                    if seen.insert(served.resource.plural.clone()) {
                        out.by_gk
                            .entry((served.resource.group.clone(), served.resource.kind.clone()))
                            .or_insert(out.preferred.len());
                        out.preferred.push(served);
                    }
                }
            }
        }
        out
    }

    /// Resolves an `apiVersion` and `kind` (as in an owner reference) to a served resource:
    /// that exact version if served, else the kind's preferred version.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<&ServedResource> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.by_gvk
            .get(&(group.to_string(), version.to_string(), kind.to_string()))
            .or_else(|| {
                self.by_gk
                    .get(&(group.to_string(), kind.to_string()))
                    .and_then(|i| self.preferred.get(*i))
            })
    }

    /// Preferred resources supporting all of `verbs`.
    pub fn with_verbs<'a>(
        &'a self,
        verbs: &'a [&'a str],
    ) -> impl Iterator<Item = &'a ServedResource> + 'a {
        self.preferred.iter().filter(move |r| r.supports_all(verbs))
    }

    /// What the garbage collector watches: resources supporting list, watch and delete
    /// (upstream `GetDeletableResources`).
    pub fn deletable(&self) -> Vec<ServedResource> {
        self.with_verbs(&["delete", "list", "watch"])
            .cloned()
            .collect()
    }

    /// Namespaced resources supporting these verbs (upstream `ServerPreferredNamespacedResources`
    /// filtered by verbs).
    pub fn namespaced_with_verbs(&self, verbs: &[&str]) -> Vec<ServedResource> {
        self.preferred
            .iter()
            .filter(|r| r.namespaced && r.supports_all(verbs))
            .cloned()
            .collect()
    }
}

fn served(ar: ApiResource, caps: &ApiCapabilities) -> ServedResource {
    ServedResource {
        resource: ar,
        namespaced: matches!(caps.scope, Scope::Namespaced),
        verbs: caps.operations.clone(),
    }
}

/// Runs discovery (aggregated, falling back to the per-group legacy documents) and returns the
/// served resources.
pub async fn discover(client: &kube::Client) -> Result<ServedResources, kube::Error> {
    let discovery = match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!("aggregated discovery failed, using legacy discovery: {e}");
            Discovery::new(client.clone()).run().await?
        }
    };
    Ok(ServedResources::from_discovery(&discovery))
}

// ---------------------------------------------------------------------------------------------
// Work queue
// ---------------------------------------------------------------------------------------------

/// A deduplicating work queue with upstream workqueue semantics: an item is queued at most once,
/// never handed to two workers at once, and an item added while it is being processed is
/// handed out again after [`WorkQueue::done`]. Failed items back off exponentially.
pub struct WorkQueue<T> {
    state: Mutex<QueueState<T>>,
    ready: tokio::sync::Notify,
    base_delay: Duration,
    max_delay: Duration,
}

struct QueueState<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    shut_down: bool,
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    /// A queue whose failed items are retried after `base_delay`, doubling up to `max_delay`.
    pub fn new(base_delay: Duration, max_delay: Duration) -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(QueueState {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                shut_down: false,
            }),
            ready: tokio::sync::Notify::new(),
            base_delay,
            max_delay,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<T>> {
        // A panic while holding this lock leaves only plain collections behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` unless it is already queued.
    pub fn add(&self, item: T) {
        let mut st = self.lock();
        if st.shut_down || !st.dirty.insert(item.clone()) {
            return;
        }
        if !st.processing.contains(&item) {
            st.queue.push_back(item);
            drop(st);
            self.ready.notify_one();
        }
    }

    /// Queues `item` after `delay`.
    pub fn add_after(self: &Arc<Self>, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(q) = queue.upgrade() {
                q.add(item);
            }
        });
    }

    /// Queues `item` after its exponential backoff delay, and counts the failure.
    pub fn add_rate_limited(self: &Arc<Self>, item: T) {
        let delay = {
            let mut st = self.lock();
            let n = st.failures.entry(item.clone()).or_insert(0);
            *n = n.saturating_add(1);
            backoff(self.base_delay, self.max_delay, *n)
        };
        self.add_after(item, delay);
    }

    /// Forgets `item`'s failures (call after it was processed successfully).
    pub fn forget(&self, item: &T) {
        self.lock().failures.remove(item);
    }

    /// How many times `item` failed since it was last forgotten.
    pub fn failures(&self, item: &T) -> u32 {
        self.lock().failures.get(item).copied().unwrap_or(0)
    }

    /// Waits for the next item; `None` once the queue is shut down.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            // Register interest before looking, so an add between the look and the wait
            // still wakes us.
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.shut_down {
                    return None;
                }
                if let Some(item) = st.queue.pop_front() {
                    st.dirty.remove(&item);
                    st.processing.insert(item.clone());
                    let more = !st.queue.is_empty();
                    drop(st);
                    if more {
                        // Pass the wakeup on: another worker may be idle.
                        self.ready.notify_one();
                    }
                    return Some(item);
                }
            }
            notified.await;
        }
    }

    /// Marks `item` processed; it is queued again if it was added meanwhile.
    pub fn done(&self, item: &T) {
        let mut st = self.lock();
        st.processing.remove(item);
        if st.dirty.contains(item) && !st.shut_down {
            st.queue.push_back(item.clone());
            drop(st);
            self.ready.notify_one();
        }
    }

    /// Number of items waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out items; every [`WorkQueue::get`] returns `None`.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.ready.notify_waiters();
    }
}

/// `base * 2^(failures-1)`, capped at `max`.
pub fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| v.to_string()).collect())
            },
        }
    }

    #[test]
    fn selector_matching() {
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: if ml.is_empty() {
                None
            } else {
                Some(labels(ml))
            },
            match_expressions: if me.is_empty() { None } else { Some(me) },
        };
        struct Case {
            name: &'static str,
            selector: Option<LabelSelector>,
            labels: BTreeMap<String, String>,
            want: bool,
        }
        let cases = vec![
            Case {
                name: "nil selects nothing",
                selector: None,
                labels: labels(&[("a", "b")]),
                want: false,
            },
            Case {
                name: "empty selects everything",
                selector: Some(sel(&[], vec![])),
                labels: labels(&[]),
                want: true,
            },
            Case {
                name: "matchLabels hit",
                selector: Some(sel(&[("app", "web")], vec![])),
                labels: labels(&[("app", "web"), ("x", "y")]),
                want: true,
            },
            Case {
                name: "matchLabels wrong value",
                selector: Some(sel(&[("app", "web")], vec![])),
                labels: labels(&[("app", "db")]),
                want: false,
            },
            Case {
                name: "matchLabels missing",
                selector: Some(sel(&[("app", "web")], vec![])),
                labels: labels(&[]),
                want: false,
            },
            Case {
                name: "In hit",
                selector: Some(sel(&[], vec![expr("env", "In", &["a", "b"])])),
                labels: labels(&[("env", "b")]),
                want: true,
            },
            Case {
                name: "In missing label",
                selector: Some(sel(&[], vec![expr("env", "In", &["a"])])),
                labels: labels(&[]),
                want: false,
            },
            Case {
                name: "NotIn missing label",
                selector: Some(sel(&[], vec![expr("env", "NotIn", &["a"])])),
                labels: labels(&[]),
                want: true,
            },
            Case {
                name: "NotIn excluded",
                selector: Some(sel(&[], vec![expr("env", "NotIn", &["a"])])),
                labels: labels(&[("env", "a")]),
                want: false,
            },
            Case {
                name: "Exists",
                selector: Some(sel(&[], vec![expr("env", "Exists", &[])])),
                labels: labels(&[("env", "")]),
                want: true,
            },
            Case {
                name: "DoesNotExist",
                selector: Some(sel(&[], vec![expr("env", "DoesNotExist", &[])])),
                labels: labels(&[("env", "x")]),
                want: false,
            },
            Case {
                name: "all requirements must hold",
                selector: Some(sel(&[("app", "web")], vec![expr("env", "In", &["prod"])])),
                labels: labels(&[("app", "web"), ("env", "dev")]),
                want: false,
            },
        ];
        for c in cases {
            assert_eq!(
                selector_matches(c.selector.as_ref(), Some(&c.labels)),
                Ok(c.want),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn selector_errors() {
        let one = |e: LabelSelectorRequirement| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![e]),
        };
        let cases = vec![
            ("bad operator", one(expr("a", "Equals", &["x"]))),
            ("In without values", one(expr("a", "In", &[]))),
            ("Exists with values", one(expr("a", "Exists", &["x"]))),
            ("bad key", one(expr("-a", "Exists", &[]))),
            ("bad value", one(expr("a", "In", &["no spaces"]))),
        ];
        for (name, s) in cases {
            assert!(Selector::from_label_selector(Some(&s)).is_err(), "{name}");
        }
        let err = Selector::from_label_selector(Some(&one(expr("a", "In", &[])))).err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some(
                "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
                    .to_string()
            )
        );
    }

    #[test]
    fn selector_query_string() {
        let s = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                expr("tier", "NotIn", &["b", "a"]),
                expr("env", "DoesNotExist", &[]),
                expr("x.io/k", "Exists", &[]),
            ]),
        };
        let sel = Selector::from_label_selector(Some(&s)).expect("valid");
        assert_eq!(
            sel.to_query().as_deref(),
            Some("app=web,!env,tier notin (a,b),x.io/k")
        );
        assert_eq!(Selector::nothing().to_query(), None);
        assert_eq!(Selector::everything().to_query().as_deref(), Some(""));
    }

    #[test]
    fn owner_refs() {
        let r = controller_ref("apps/v1", "ReplicaSet", "rs", "u1");
        assert_eq!(
            (r.controller, r.block_owner_deletion),
            (Some(true), Some(true))
        );
        let other = OwnerReference {
            controller: None,
            ..controller_ref("v1", "ConfigMap", "c", "u2")
        };
        let meta = ObjectMeta {
            owner_references: Some(vec![other, r]),
            ..Default::default()
        };
        assert_eq!(controller_of(&meta).map(|r| r.uid.as_str()), Some("u1"));
        assert!(is_controlled_by(&meta, "u1"));
        assert!(!is_controlled_by(&meta, "u2"));
        assert!(!is_controlled_by(&ObjectMeta::default(), "u1"));

        let rs = k8s_openapi::api::apps::v1::ReplicaSet {
            metadata: ObjectMeta {
                name: Some("rs".into()),
                uid: Some("u9".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = controller_ref_for(&rs).expect("named and stored");
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.uid.as_str()),
            ("apps/v1", "ReplicaSet", "u9")
        );
    }

    #[test]
    fn pod_availability() {
        use k8s_openapi::api::core::v1::PodStatus;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let now: jiff::Timestamp = "2025-01-01T00:01:00Z".parse().expect("timestamp");
        let pod = |status: &str, since: Option<&str>| Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    last_transition_time: since.map(|s| Time(s.parse().expect("timestamp"))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            (
                "not ready",
                pod("False", Some("2025-01-01T00:00:00Z")),
                0,
                false,
            ),
            ("ready, no minReadySeconds", pod("True", None), 0, true),
            (
                "ready long enough",
                pod("True", Some("2025-01-01T00:00:00Z")),
                30,
                true,
            ),
            (
                "ready exactly minReadySeconds is not enough",
                pod("True", Some("2025-01-01T00:00:00Z")),
                60,
                false,
            ),
            (
                "ready too recently",
                pod("True", Some("2025-01-01T00:00:50Z")),
                30,
                false,
            ),
            ("no transition time", pod("True", None), 5, false),
        ];
        for (name, p, min_ready, want) in cases {
            assert_eq!(is_pod_available(&p, min_ready, now), want, "{name}");
        }
        assert!(is_pod_ready(&pod("True", None)));
        assert!(!is_pod_ready(&Pod::default()));
        assert!(is_pod_active(&Pod::default()));
        let done = Pod {
            status: Some(PodStatus {
                phase: Some("Succeeded".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!is_pod_active(&done));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let (b, m) = (Duration::from_millis(10), Duration::from_secs(1));
        assert_eq!(backoff(b, m, 1), Duration::from_millis(10));
        assert_eq!(backoff(b, m, 3), Duration::from_millis(40));
        assert_eq!(backoff(b, m, 40), m);
    }

    #[tokio::test]
    async fn work_queue_dedups_and_requeues_while_processing() {
        let q = WorkQueue::new(Duration::from_millis(1), Duration::from_millis(10));
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.get().await;
        assert_eq!(a, Some("a"));
        // Added while being processed: not handed out until done.
        q.add("a");
        assert_eq!(q.get().await, Some("b"));
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.get().await, Some("a"));
        q.done(&"a");
        q.done(&"b");
        assert!(q.is_empty());
        q.add_rate_limited("c");
        assert_eq!(q.failures(&"c"), 1);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), q.get()).await,
            Ok(Some("c"))
        );
        q.forget(&"c");
        assert_eq!(q.failures(&"c"), 0);
        q.shut_down();
        assert_eq!(q.get().await, None);
    }
}
