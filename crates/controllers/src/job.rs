//! The Job controller (upstream `pkg/controller/job`) plus the TTL-after-finished controller:
//! runs pods to completion, tracks finished pods with the `batch.kubernetes.io/job-tracking`
//! finalizer and `status.uncountedTerminatedPods`, applies backoffLimit with exponential pod
//! recreation backoff, podFailurePolicy, activeDeadlineSeconds, suspend, Indexed completion,
//! and deletes finished Jobs once `ttlSecondsAfterFinished` has passed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobStatus, PodFailurePolicy, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

/// Finalizer the Job controller puts on its pods so it can count them before they vanish.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation (and label) holding an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Upstream caps how many pods one sync creates or deletes.
const MAX_POD_CREATE_DELETE_PER_SYNC: usize = 500;
/// Upstream caps the uncounted UIDs kept in status so it stays small.
const MAX_UNCOUNTED_PODS: usize = 500;
const JOB_CONTROLLER_NAME: &str = "kubernetes.io/job-controller";

/// Tunables of the Job controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// Delay before recreating a pod after the first failure (upstream 10s); doubles per
    /// consecutive failure.
    pub backoff_base: Duration,
    /// Upper bound of the recreation delay (upstream 6m).
    pub backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(360),
        }
    }
}

/// Runs the Job controller with upstream's defaults.
pub async fn run(ctx: Arc<crate::Context>) -> anyhow::Result<()> {
    run_with(ctx, Config::default()).await
}

/// Runs the Job controller with explicit tunables (tests shorten the backoff).
pub async fn run_with(ctx: Arc<crate::Context>, cfg: Config) -> anyhow::Result<()> {
    let jobs: Api<Job> = Api::all(ctx.client.clone());
    let pods = ctx
        .informers
        .get::<Pod>(&ctx.client, watcher::Config::default(), &ctx.shutdown);
    let state = Arc::new(State {
        ctx: ctx.clone(),
        cfg,
        backoff: Mutex::new(HashMap::new()),
    });
    Controller::new(jobs, watcher::Config::default())
        .owns_shared_stream(pods.objects())
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|res| {
            if let Err(e) = res {
                tracing::debug!(controller = "job", "reconcile failed: {e}");
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

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error(e)
    }
}

struct State {
    ctx: Arc<crate::Context>,
    cfg: Config,
    /// Per Job UID: consecutive failures since the last success, for the recreation backoff.
    /// Kept in memory like upstream's podBackoffStore.
    backoff: Mutex<HashMap<String, BackoffRecord>>,
}

fn error_policy(_job: Arc<Job>, err: &Error, _st: Arc<State>) -> Action {
    tracing::debug!(controller = "job", "requeue after error: {err}");
    Action::requeue(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------------------
// Pure decision logic
// ---------------------------------------------------------------------------------------------

/// Consecutive failures since the last success and when the last one happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackoffRecord {
    pub failures_after_last_success: u32,
    pub last_failure_time: Option<Timestamp>,
}

impl BackoffRecord {
    /// Folds newly finished pods (given by finish time) into the record, as upstream's
    /// `newBackoffRecord` does: a success resets the count to the failures after it.
    pub fn update(
        &self,
        mut succeeded: Vec<Timestamp>,
        mut failed: Vec<Timestamp>,
    ) -> BackoffRecord {
        succeeded.sort();
        failed.sort();
        let mut out = self.clone();
        match succeeded.last() {
            None => {
                if let Some(last) = failed.last() {
                    out.failures_after_last_success += failed.len() as u32;
                    out.last_failure_time = Some(*last);
                }
            }
            Some(last_success) => {
                out.failures_after_last_success = 0;
                out.last_failure_time = None;
                for t in failed.iter().rev() {
                    if t <= last_success {
                        break;
                    }
                    if out.last_failure_time.is_none() {
                        out.last_failure_time = Some(*t);
                    }
                    out.failures_after_last_success += 1;
                }
            }
        }
        out
    }

    /// How long pod creation must still wait: base * 2^(failures-1), capped, minus the time
    /// since the last failure.
    pub fn remaining(&self, now: Timestamp, base: Duration, max: Duration) -> Duration {
        if self.failures_after_last_success == 0 {
            return Duration::ZERO;
        }
        let Some(last) = self.last_failure_time else {
            return Duration::ZERO;
        };
        let exp = (self.failures_after_last_success - 1).min(30);
        let delay = base.saturating_mul(1u32 << exp).min(max);
        let elapsed = now.duration_since(last);
        let elapsed = if elapsed.is_negative() {
            Duration::ZERO
        } else {
            elapsed.unsigned_abs()
        };
        delay.saturating_sub(elapsed)
    }
}

/// Parses `status.completedIndexes` ("1,3-5,7"), keeping indexes below `completions`.
pub fn parse_indexes(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        let (Ok(lo), Ok(hi)) = (lo, hi) else { continue };
        for ix in lo.max(0)..=hi.min(completions - 1) {
            out.insert(ix);
        }
    }
    out
}

/// Formats indexes in upstream's compressed form: consecutive runs of 2+ as "a-b".
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The outcome of matching a failed pod against a podFailurePolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyMatch {
    /// The action of the matching rule, None when no rule matched.
    pub action: Option<String>,
    /// Whether the failure counts toward backoffLimit.
    pub count_failed: bool,
    /// For FailJob: the message of the FailureTarget condition.
    pub message: Option<String>,
}

/// Evaluates the rules in order, as upstream's `matchPodFailurePolicy`.
pub fn match_pod_failure_policy(policy: &PodFailurePolicy, pod: &Pod) -> PolicyMatch {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(req) = &rule.on_exit_codes {
            let statuses = status.into_iter().flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            });
            for cs in statuses {
                if req.container_name.as_deref().is_some_and(|c| c != cs.name) {
                    continue;
                }
                let Some(term) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
                    continue;
                };
                let code = term.exit_code;
                if code == 0 {
                    continue;
                }
                let hit = match req.operator.as_str() {
                    "In" => req.values.contains(&code),
                    "NotIn" => !req.values.contains(&code),
                    _ => false,
                };
                if hit {
                    matched = Some(format!(
                        "Container {} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                        cs.name, rule.action
                    ));
                    break;
                }
            }
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let conds = status.and_then(|s| s.conditions.as_ref());
            for pat in patterns {
                let want = if pat.status.is_empty() {
                    "True"
                } else {
                    pat.status.as_str()
                };
                if conds
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == pat.type_ && c.status == want)
                {
                    matched = Some(format!(
                        "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                        pat.type_, rule.action
                    ));
                    break;
                }
            }
        }
        if let Some(msg) = matched {
            return match rule.action.as_str() {
                "FailJob" => PolicyMatch {
                    action: Some(rule.action.clone()),
                    count_failed: true,
                    message: Some(msg),
                },
                "Ignore" => PolicyMatch {
                    action: Some(rule.action.clone()),
                    count_failed: false,
                    message: None,
                },
                _ => PolicyMatch {
                    action: Some(rule.action.clone()),
                    count_failed: true,
                    message: None,
                },
            };
        }
    }
    PolicyMatch {
        action: None,
        count_failed: true,
        message: None,
    }
}

/// How many pods should be active (upstream `manageJob`): bounded by parallelism and, with
/// completions, by the completions still missing; a work-queue Job stops starting pods after
/// its first success.
pub fn want_active(parallelism: i32, completions: Option<i32>, succeeded: i32, active: i32) -> i32 {
    match completions {
        None => {
            if succeeded > 0 {
                active
            } else {
                parallelism
            }
        }
        Some(c) => (c - succeeded).min(parallelism).max(0),
    }
}

/// Whether the Job met its completions (upstream: succeeded reached, nothing active).
pub fn is_complete(completions: Option<i32>, succeeded: i32, active: i32) -> bool {
    match completions {
        None => succeeded > 0 && active == 0,
        Some(c) => succeeded >= c && active == 0,
    }
}

/// The lowest `count` indexes that neither succeeded nor have a pod.
pub fn first_pending_indexes(
    completions: i32,
    succeeded: &BTreeSet<i32>,
    taken: &HashSet<i32>,
    count: usize,
) -> Vec<i32> {
    (0..completions)
        .filter(|i| !succeeded.contains(i) && !taken.contains(i))
        .take(count)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pod helpers
// ---------------------------------------------------------------------------------------------

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

fn is_terminating(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_some()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn has_finalizer(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

fn uid_of(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

/// A pod's completion index, or None when absent or malformed.
pub fn completion_index(p: &Pod) -> Option<i32> {
    let from = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.as_ref()
            .and_then(|m| m.get(COMPLETION_INDEX))
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|i| *i >= 0)
    };
    from(&p.metadata.annotations).or_else(|| from(&p.metadata.labels))
}

/// When a pod finished: the latest container termination, else its Ready transition or
/// deletion, else now (upstream `getFinishedTime`).
fn finish_time(p: &Pod, now: Timestamp) -> Timestamp {
    let status = p.status.as_ref();
    let latest = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|cs| {
            cs.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max();
    if let Some(t) = latest {
        return t;
    }
    if let Some(t) = p.metadata.deletion_timestamp.as_ref() {
        return t.0;
    }
    status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map_or(now, |t| t.0)
}

/// Removal ranking like upstream's `controller.ActivePods`: unscheduled, pending, not ready,
/// and younger pods go first.
fn removal_rank(p: &Pod) -> (u8, u8, u8, std::cmp::Reverse<Option<Timestamp>>) {
    let scheduled = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase_rank = match phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    };
    (
        u8::from(scheduled),
        phase_rank,
        u8::from(is_ready(p)),
        std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
    )
}

/// Renders a label selector as a list query (`a=b,c in (d),!e`).
pub(crate) fn selector_query(sel: &LabelSelector) -> String {
    let mut parts = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        parts.push(format!("{k}={v}"));
    }
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({vals})", e.key),
            "NotIn" => format!("{} notin ({vals})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Complete or Failed, the terminal conditions.
pub fn finished_condition(job: &Job) -> Option<&JobCondition> {
    condition(job, "Complete").or_else(|| condition(job, "Failed"))
}

fn new_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
        message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition's status, keeping the transition time when the status is unchanged.
/// Returns whether anything changed (upstream `ensureJobConditionStatus`).
fn ensure_condition(
    conds: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message)
        {
            return false;
        }
        if c.status != status {
            c.last_transition_time = Some(Time(now));
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(Time(now));
        return true;
    }
    // A False condition is only worth adding when it records a transition away from True.
    if status == "False" {
        return false;
    }
    let mut c = new_condition(type_, reason, message, now);
    c.status = status.into();
    conds.push(c);
    true
}

// ---------------------------------------------------------------------------------------------
// Reconcile
// ---------------------------------------------------------------------------------------------

struct Sync<'a> {
    st: &'a State,
    job: Job,
    jobs: Api<Job>,
    pods_api: Api<Pod>,
    now: Timestamp,
}

impl Sync<'_> {
    async fn event(&self, type_: EventType, reason: &str, note: String, action: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self
            .st
            .ctx
            .recorder
            .publish(&ev, &self.job.object_ref(&()))
            .await
        {
            tracing::debug!(controller = "job", "event not recorded: {e}");
        }
    }

    async fn flush(&mut self) -> Result<(), Error> {
        let name = self.job.name_any();
        self.job = self
            .jobs
            .replace_status(&name, &PostParams::default(), &self.job)
            .await?;
        Ok(())
    }

    async fn remove_finalizer(&self, pod: &Pod) -> Result<bool, Error> {
        if !has_finalizer(pod) {
            return Ok(true);
        }
        let patch = serde_json::json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}});
        match self
            .pods_api
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_pod(&self, pod: &Pod) -> Result<bool, Error> {
        match self
            .pods_api
            .delete(&pod.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                self.event(
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", pod.name_any()),
                    "Delete",
                )
                .await;
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
            Err(e) => {
                self.event(
                    EventType::Warning,
                    "FailedDelete",
                    format!("Error deleting: {e}"),
                    "Delete",
                )
                .await;
                Err(e.into())
            }
        }
    }

    /// Deletes pods the Job no longer wants, releasing the finalizer first so they are not
    /// counted as failures (upstream `deleteJobPods`).
    async fn delete_uncounted(&self, pods: &[&Pod]) -> Result<i32, Error> {
        let mut removed = 0;
        for p in pods {
            self.remove_finalizer(p).await?;
            if self.delete_pod(p).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn pod_from_template(&self, index: Option<i32>) -> Result<Pod, Error> {
        let job = &self.job;
        let name = job.name_any();
        let spec = job
            .spec
            .as_ref()
            .ok_or_else(|| Error(anyhow::anyhow!("job has no spec")))?;
        let tmpl = &spec.template;
        let mut meta = tmpl.metadata.clone().unwrap_or_default();
        meta.name = None;
        meta.namespace = job.namespace();
        meta.generate_name = Some(match index {
            Some(i) => format!("{name}-{i}-"),
            None => format!("{name}-"),
        });
        meta.finalizers
            .get_or_insert_with(Vec::new)
            .push(TRACKING_FINALIZER.into());
        meta.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: name.clone(),
            uid: job.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        let mut pod_spec = tmpl
            .spec
            .clone()
            .ok_or_else(|| Error(anyhow::anyhow!("job template has no pod spec")))?;
        if let Some(i) = index {
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), i.to_string());
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), i.to_string());
            // Stable per-index hostnames let indexed workers find each other via a headless Service.
            if pod_spec.hostname.as_deref().is_none_or(str::is_empty) {
                pod_spec.hostname = Some(format!("{name}-{i}"));
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            for c in pod_spec
                .containers
                .iter_mut()
                .chain(pod_spec.init_containers.iter_mut().flatten())
            {
                let envs = c.env.get_or_insert_with(Vec::new);
                if !envs.iter().any(|e| e.name == env.name) {
                    envs.push(env.clone());
                }
            }
        }
        Ok(Pod {
            metadata: meta,
            spec: Some(pod_spec),
            status: None,
        })
    }

    /// Creates pods in slow-start batches (1, 2, 4, ...), stopping at the first error, as
    /// upstream does to avoid flooding a failing API with requests.
    async fn create_pods(&self, indexes: Vec<Option<i32>>) -> Result<i32, Error> {
        let mut created = 0;
        let mut batch = 1usize;
        let mut rest = indexes.as_slice();
        while !rest.is_empty() {
            let n = batch.min(rest.len());
            let (now, later) = rest.split_at(n);
            let mut futs = Vec::new();
            for ix in now {
                let pod = self.pod_from_template(*ix)?;
                futs.push(async move { self.pods_api.create(&PostParams::default(), &pod).await });
            }
            let mut first_err = None;
            for r in futures::future::join_all(futs).await {
                match r {
                    Ok(p) => {
                        created += 1;
                        self.event(
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                            "Create",
                        )
                        .await;
                    }
                    Err(e) => {
                        self.event(
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating: {e}"),
                            "Create",
                        )
                        .await;
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e.into());
            }
            rest = later;
            batch *= 2;
        }
        Ok(created)
    }
}

/// Upstream `isPodFailed`: failed phase; without a podFailurePolicy or `Failed` replacement
/// policy, a deleted non-succeeded pod also counts, since it may never reach a terminal phase.
fn is_pod_failed(p: &Pod, job: &Job) -> bool {
    if phase(p) == "Failed" {
        return true;
    }
    if only_replace_failed(job) {
        return false;
    }
    p.metadata.deletion_timestamp.is_some() && phase(p) != "Succeeded"
}

fn only_replace_failed(job: &Job) -> bool {
    let spec = job.spec.as_ref();
    spec.and_then(|s| s.pod_replacement_policy.as_deref()) == Some("Failed")
        || spec.is_some_and(|s| s.pod_failure_policy.is_some())
}

fn suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// Restarts of OnFailure pods count against backoffLimit (upstream `pastBackoffLimitOnFailure`).
fn past_backoff_limit_on_failure(job: &Job, pods: &[Pod]) -> bool {
    let Some(spec) = job.spec.as_ref() else {
        return false;
    };
    if spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        != Some("OnFailure")
    {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Pending" | "Running"))
        .flat_map(|p| {
            p.status.iter().flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
        })
        .map(|cs| cs.restart_count)
        .sum();
    let limit = spec.backoff_limit.unwrap_or(6);
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

async fn reconcile(obj: Arc<Job>, st: Arc<State>) -> Result<Action, Error> {
    let client = st.ctx.client.clone();
    let ns = obj.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(client, &ns);
    let Some(uid) = obj.uid() else {
        return Ok(Action::await_change());
    };
    // A Job managed by another controller (spec.managedBy) is not ours to sync.
    if let Some(m) = obj.spec.as_ref().and_then(|s| s.managed_by.as_deref())
        && m != JOB_CONTROLLER_NAME
    {
        return Ok(Action::await_change());
    }
    let mut sync = Sync {
        st: &st,
        job: (*obj).clone(),
        jobs,
        pods_api,
        now: Timestamp::now(),
    };
    let pods = list_pods(&sync, &uid).await?;

    // A deleted or finished Job no longer needs its pods held back: release them.
    if obj.metadata.deletion_timestamp.is_some() || finished_condition(&obj).is_some() {
        for p in pods.iter().filter(|p| has_finalizer(p)) {
            sync.remove_finalizer(p).await?;
        }
        if let Ok(mut b) = st.backoff.lock() {
            b.remove(&uid);
        }
        if obj.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        return ttl_after_finished(&sync).await;
    }
    if obj
        .spec
        .as_ref()
        .and_then(|s| s.completion_mode.as_deref())
        .is_some_and(|m| m != "NonIndexed" && m != "Indexed")
    {
        sync.event(
            EventType::Warning,
            "UnknownCompletionMode",
            "Skipped Job sync because completion mode is unknown".into(),
            "Sync",
        )
        .await;
        return Ok(Action::await_change());
    }
    sync_job(&mut sync, &pods, &uid).await
}

async fn list_pods(sync: &Sync<'_>, uid: &str) -> Result<Vec<Pod>, Error> {
    let sel = sync
        .job
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(selector_query)
        .unwrap_or_default();
    let lp = if sel.is_empty() {
        ListParams::default()
    } else {
        ListParams::default().labels(&sel)
    };
    let list = sync.pods_api.list(&lp).await?;
    // Only pods this Job controls: a selector match alone could be another owner's pod.
    Ok(list
        .items
        .into_iter()
        .filter(|p| controller_uid(&p.metadata) == Some(uid))
        .collect())
}

async fn ttl_after_finished(sync: &Sync<'_>) -> Result<Action, Error> {
    let job = &sync.job;
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let Some(finished) = finished_condition(job)
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
    else {
        return Ok(Action::await_change());
    };
    let expire = finished + SignedDuration::from_secs(i64::from(ttl));
    let left = expire.duration_since(sync.now);
    if left.is_positive() {
        return Ok(Action::requeue(left.unsigned_abs()));
    }
    // The UID precondition stops us from deleting a recreated Job of the same name.
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match sync.jobs.delete(&job.name_any(), &dp).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

async fn sync_job(sync: &mut Sync<'_>, pods: &[Pod], uid: &str) -> Result<Action, Error> {
    let now = sync.now;
    let original_status = sync.job.status.clone();
    let spec = sync
        .job
        .spec
        .clone()
        .ok_or_else(|| Error(anyhow::anyhow!("job has no spec")))?;
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let status = sync.job.status.get_or_insert_with(JobStatus::default);
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    let unc_succeeded: HashSet<String> = uncounted.succeeded.iter().flatten().cloned().collect();
    let unc_failed: HashSet<String> = uncounted.failed.iter().flatten().cloned().collect();

    let active_pods: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    let mut ready = active_pods.iter().filter(|p| is_ready(p)).count() as i32;
    let mut terminating = pods.iter().filter(|p| is_terminating(p)).count() as i32;
    let mut active = active_pods.len() as i32;

    // Newly finished pods: still carrying the finalizer and not yet in the uncounted lists.
    let new_succeeded: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            has_finalizer(p) && phase(p) == "Succeeded" && !unc_succeeded.contains(&uid_of(p))
        })
        .collect();
    let new_failed: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            has_finalizer(p) && is_pod_failed(p, &sync.job) && !unc_failed.contains(&uid_of(p))
        })
        .collect();
    let non_ignored_failed = match spec.pod_failure_policy.as_ref() {
        Some(pol) => new_failed
            .iter()
            .filter(|p| match_pod_failure_policy(pol, p).count_failed)
            .count(),
        None => new_failed.len(),
    } as i32;
    let status = sync.job.status.get_or_insert_with(JobStatus::default);
    let mut succeeded =
        status.succeeded.unwrap_or(0) + new_succeeded.len() as i32 + unc_succeeded.len() as i32;
    let failed = status.failed.unwrap_or(0) + non_ignored_failed + unc_failed.len() as i32;

    if status.start_time.is_none() && spec.suspend != Some(true) {
        status.start_time = Some(Time(now));
    }

    let prev_backoff = sync
        .st
        .backoff
        .lock()
        .ok()
        .and_then(|b| b.get(uid).cloned())
        .unwrap_or_default();
    let new_backoff = prev_backoff.update(
        new_succeeded.iter().map(|p| finish_time(p, now)).collect(),
        new_failed.iter().map(|p| finish_time(p, now)).collect(),
    );

    // Decide whether the Job reached a terminal state (interim condition first, as 1.33 does).
    let mut requeue: Option<Duration> = None;
    let mut finished: Option<JobCondition> = condition(&sync.job, "SuccessCriteriaMet").cloned();
    if finished.is_none() {
        if let Some(ft) = condition(&sync.job, "FailureTarget") {
            finished = Some(ft.clone());
        } else if let Some(pol) = spec.pod_failure_policy.as_ref() {
            finished = pods
                .iter()
                .filter(|p| phase(p) == "Failed")
                // Only FailJob matches carry a message.
                .find_map(|p| match_pod_failure_policy(pol, p).message)
                .map(|msg| new_condition("FailureTarget", "PodFailurePolicy", &msg, now));
        }
    }
    if finished.is_none() {
        if failed > backoff_limit || past_backoff_limit_on_failure(&sync.job, pods) {
            finished = Some(new_condition(
                "FailureTarget",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ));
        } else if let (Some(ads), Some(start)) = (
            spec.active_deadline_seconds,
            sync.job
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
        ) && !suspended(&sync.job)
        {
            let left = (start + SignedDuration::from_secs(ads)).duration_since(now);
            if !left.is_positive() {
                finished = Some(new_condition(
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                ));
            } else {
                requeue = Some(left.unsigned_abs());
            }
        }
    }

    // Indexed: the set of completed indexes, including newly succeeded pods.
    let mut succeeded_indexes = BTreeSet::new();
    if indexed {
        let c = completions.unwrap_or(0);
        let prev = sync
            .job
            .status
            .as_ref()
            .and_then(|s| s.completed_indexes.as_deref())
            .unwrap_or("");
        succeeded_indexes = parse_indexes(prev, c);
        for p in pods
            .iter()
            .filter(|p| phase(p) == "Succeeded" && has_finalizer(p))
        {
            if let Some(ix) = completion_index(p).filter(|ix| *ix < c) {
                succeeded_indexes.insert(ix);
            }
        }
        succeeded = succeeded_indexes.len() as i32;
    }

    let mut suspend_changed = false;
    if finished.is_some() {
        // Terminal: stop everything still running; finalizers stay so they get counted.
        for p in &active_pods {
            if sync.delete_pod(p).await? {
                active -= 1;
                terminating += 1;
                if is_ready(p) {
                    ready -= 1;
                }
            }
        }
        if active > 0 {
            finished = None;
        }
    } else if sync.job.metadata.deletion_timestamp.is_none() {
        active = manage(
            sync,
            &active_pods,
            pods,
            succeeded,
            &succeeded_indexes,
            terminating,
            &new_backoff,
            &mut requeue,
        )
        .await?;
        if is_complete(completions, succeeded, active) {
            finished = Some(new_condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        } else {
            let is_suspended = suspended(&sync.job);
            let conds = sync
                .job
                .status
                .get_or_insert_with(Default::default)
                .conditions
                .get_or_insert_with(Vec::new);
            if is_suspended {
                if ensure_condition(
                    conds,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    now,
                ) {
                    suspend_changed = true;
                    sync.event(
                        EventType::Normal,
                        "Suspended",
                        "Job suspended".into(),
                        "Suspend",
                    )
                    .await;
                }
            } else if ensure_condition(
                conds,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            ) {
                suspend_changed = true;
                sync.event(EventType::Normal, "Resumed", "Job resumed".into(), "Resume")
                    .await;
                // The deadline counts time continuously active, so it restarts on resume.
                sync.job
                    .status
                    .get_or_insert_with(Default::default)
                    .start_time = Some(Time(now));
            }
        }
    }
    if suspended(&sync.job) && finished.is_none() {
        // Upstream clears the start time while suspended so activeDeadlineSeconds restarts.
        let st = sync.job.status.get_or_insert_with(Default::default);
        if st.start_time.is_some() && suspend_changed {
            st.start_time = None;
        }
    }

    let status = sync.job.status.get_or_insert_with(Default::default);
    status.active = Some(active);
    status.ready = Some(ready);
    status.terminating = Some(terminating);
    // Any change so far (counts, start time, suspend condition) must reach the API.
    let mut needs_flush = suspend_changed || sync.job.status != original_status;

    let tracked = Tracked {
        indexed,
        completions: completions.unwrap_or(0),
        succeeded_indexes,
        finished,
        terminating,
    };
    track_and_remove_finalizers(sync, pods, tracked, &new_backoff, uid, &mut needs_flush).await?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

#[allow(clippy::too_many_arguments)]
async fn manage(
    sync: &Sync<'_>,
    active_pods: &[&Pod],
    pods: &[Pod],
    succeeded: i32,
    succeeded_indexes: &BTreeSet<i32>,
    terminating: i32,
    backoff: &BackoffRecord,
    requeue: &mut Option<Duration>,
) -> Result<i32, Error> {
    let spec = sync
        .job
        .spec
        .as_ref()
        .ok_or_else(|| Error(anyhow::anyhow!("job has no spec")))?;
    let mut active = active_pods.len() as i32;
    if suspended(&sync.job) {
        let removed = sync.delete_uncounted(active_pods).await?;
        return Ok(active - removed);
    }
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1);
    let want = want_active(parallelism, completions, succeeded, active);
    let rm_at_least = (active - want).max(0) as usize;

    // Pods to remove: for Indexed, out-of-range, unindexed, already-succeeded and duplicate
    // indexes first; then the lowest-ranked extras.
    let mut to_delete: Vec<&Pod> = Vec::new();
    let mut rest: Vec<&Pod> = Vec::new();
    if indexed {
        let c = completions.unwrap_or(0);
        let mut seen: HashMap<i32, &Pod> = HashMap::new();
        let mut sorted: Vec<&Pod> = active_pods.to_vec();
        // Keep the best pod of each index: ready/running ones sort last in removal order.
        sorted.sort_by_key(|p| std::cmp::Reverse(removal_rank(p)));
        for p in sorted {
            match completion_index(p) {
                Some(ix)
                    if ix < c && !succeeded_indexes.contains(&ix) && !seen.contains_key(&ix) =>
                {
                    seen.insert(ix, p);
                    rest.push(p);
                }
                _ => to_delete.push(p),
            }
        }
    } else {
        rest = active_pods.to_vec();
    }
    if to_delete.len() < rm_at_least {
        rest.sort_by_key(|p| removal_rank(p));
        let extra = rm_at_least - to_delete.len();
        to_delete.extend(rest.iter().take(extra));
    }
    to_delete.truncate(MAX_POD_CREATE_DELETE_PER_SYNC.max(rm_at_least));
    if !to_delete.is_empty() {
        let removed = sync.delete_uncounted(&to_delete).await?;
        active -= removed;
        return Ok(active);
    }

    let waiting_terminating = if only_replace_failed(&sync.job) {
        terminating
    } else {
        0
    };
    if active + waiting_terminating < want {
        let left = backoff.remaining(sync.now, sync.st.cfg.backoff_base, sync.st.cfg.backoff_max);
        if !left.is_zero() {
            *requeue = Some(requeue.map_or(left, |r| r.min(left)));
            return Ok(active);
        }
        let diff =
            ((want - active - waiting_terminating) as usize).min(MAX_POD_CREATE_DELETE_PER_SYNC);
        let indexes: Vec<Option<i32>> = if indexed {
            let mut taken: HashSet<i32> = active_pods
                .iter()
                .filter_map(|p| completion_index(p))
                .collect();
            if only_replace_failed(&sync.job) {
                taken.extend(
                    pods.iter()
                        .filter(|p| is_terminating(p))
                        .filter_map(completion_index),
                );
            }
            first_pending_indexes(completions.unwrap_or(0), succeeded_indexes, &taken, diff)
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; diff]
        };
        let created = sync.create_pods(indexes).await?;
        active += created;
    }
    Ok(active)
}

/// What `sync_job` decided, handed to the status tracking step.
struct Tracked {
    indexed: bool,
    completions: i32,
    succeeded_indexes: BTreeSet<i32>,
    finished: Option<JobCondition>,
    terminating: i32,
}

/// Upstream `trackJobStatusAndRemoveFinalizers`: records finished pods in
/// `uncountedTerminatedPods`, flushes, removes their finalizers, moves them into the counters,
/// and adds the terminal condition once nothing is uncounted or terminating.
async fn track_and_remove_finalizers(
    sync: &mut Sync<'_>,
    pods: &[Pod],
    tracked: Tracked,
    backoff: &BackoffRecord,
    uid: &str,
    needs_flush: &mut bool,
) -> Result<(), Error> {
    let Tracked {
        indexed,
        completions,
        succeeded_indexes,
        mut finished,
        terminating,
    } = tracked;
    let now = sync.now;
    let policy = sync
        .job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.clone());
    let failed_target = finished
        .as_ref()
        .is_some_and(|c| c.type_ != "SuccessCriteriaMet");
    let mut with_finalizer: HashSet<String> = pods
        .iter()
        .filter(|p| has_finalizer(p))
        .map(uid_of)
        .collect();
    let status = sync.job.status.get_or_insert_with(Default::default);
    if clean_uncounted(status, &with_finalizer) {
        *needs_flush = true;
    }
    let status = sync.job.status.get_or_insert_with(Default::default);
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(Default::default);
    let mut unc_s: Vec<String> = uncounted.succeeded.clone().unwrap_or_default();
    let mut unc_f: Vec<String> = uncounted.failed.clone().unwrap_or_default();
    let mut to_release: Vec<&Pod> = Vec::new();
    let mut reached_max = false;
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    if indexed {
        sorted.sort_by_key(|p| completion_index(p).unwrap_or(i32::MAX));
    }
    for p in sorted {
        if !has_finalizer(p) {
            continue;
        }
        let uid = uid_of(p);
        let considered_failed = is_pod_failed(p, &sync.job);
        let releasable = finished.is_some() || phase(p) == "Succeeded" || considered_failed;
        if !releasable {
            continue;
        }
        to_release.push(p);
        if phase(p) == "Succeeded" && !unc_f.contains(&uid) {
            // Indexed pods are counted by index, not by UID.
            if !indexed && !unc_s.contains(&uid) {
                unc_s.push(uid);
                *needs_flush = true;
            }
        } else if considered_failed || failed_target {
            let ix_ok = !indexed || completion_index(p).is_some_and(|ix| ix < completions);
            if !unc_f.contains(&uid) && ix_ok {
                let count = policy
                    .as_ref()
                    .is_none_or(|pol| match_pod_failure_policy(pol, p).count_failed);
                if count {
                    unc_f.push(uid);
                    *needs_flush = true;
                }
            }
        }
        if unc_s.len() + unc_f.len() >= MAX_UNCOUNTED_PODS {
            reached_max = true;
            break;
        }
    }
    let status = sync.job.status.get_or_insert_with(Default::default);
    if indexed {
        let s = format_indexes(&succeeded_indexes);
        if status.completed_indexes.as_deref().unwrap_or("") != s {
            *needs_flush = true;
        }
        status.succeeded = Some(succeeded_indexes.len() as i32);
        status.completed_indexes = Some(s);
    }
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(Default::default);
    uncounted.succeeded = Some(unc_s);
    uncounted.failed = Some(unc_f);
    let conds = status.conditions.get_or_insert_with(Vec::new);
    // Record the interim condition before any finalizer goes, then prepare the final one.
    if let Some(c) = finished.take() {
        let final_type = if c.type_ == "SuccessCriteriaMet" {
            "Complete"
        } else {
            "Failed"
        };
        if c.type_ == "SuccessCriteriaMet" || c.type_ == "FailureTarget" {
            if !conds
                .iter()
                .any(|x| x.type_ == c.type_ && x.status == "True")
            {
                conds.push(c.clone());
                *needs_flush = true;
            }
            finished = Some(new_condition(
                final_type,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or(""),
                now,
            ));
        } else {
            finished = Some(c);
        }
    }

    // 1. Flush the uncounted UIDs (and interim condition).
    if *needs_flush {
        sync.flush().await?;
        if let Ok(mut b) = sync.st.backoff.lock() {
            b.insert(uid.to_string(), backoff.clone());
        }
        *needs_flush = false;
    }
    // 2. Release finalizers of counted pods.
    let mut rm_err = None;
    for p in &to_release {
        match sync.remove_finalizer(p).await {
            Ok(true) => {
                with_finalizer.remove(&uid_of(p));
            }
            Ok(false) => {}
            Err(e) => {
                rm_err.get_or_insert(e);
            }
        }
    }
    // 3. Move released pods from uncounted into the counters.
    let status = sync.job.status.get_or_insert_with(Default::default);
    if clean_uncounted(status, &with_finalizer) {
        *needs_flush = true;
    }
    if let Some(e) = rm_err {
        if *needs_flush {
            sync.flush().await?;
        }
        return Err(e);
    }
    // 4. Terminal condition once everything is counted and nothing is terminating.
    let mut job_finished = false;
    if !reached_max && let Some(fc) = finished.as_ref() {
        let status = sync.job.status.get_or_insert_with(Default::default);
        let pending = status.uncounted_terminated_pods.as_ref().map_or(0, |u| {
            u.succeeded.as_ref().map_or(0, Vec::len) + u.failed.as_ref().map_or(0, Vec::len)
        });
        if pending == 0 && terminating == 0 {
            let conds = status.conditions.get_or_insert_with(Vec::new);
            ensure_condition(
                conds,
                &fc.type_,
                "True",
                fc.reason.as_deref().unwrap_or(""),
                fc.message.as_deref().unwrap_or(""),
                now,
            );
            if fc.type_ == "Complete" {
                status.completion_time = conds
                    .iter()
                    .find(|c| c.type_ == "Complete")
                    .and_then(|c| c.last_transition_time.clone());
            }
            job_finished = true;
            *needs_flush = true;
        }
    }
    if *needs_flush {
        sync.flush().await?;
        if job_finished && let Some(fc) = finished.as_ref() {
            if fc.type_ == "Complete" {
                sync.event(
                    EventType::Normal,
                    "Completed",
                    "Job completed".into(),
                    "Complete",
                )
                .await;
            } else {
                let reason = fc.reason.clone().unwrap_or_else(|| "Failed".into());
                sync.event(
                    EventType::Warning,
                    &reason,
                    fc.message.clone().unwrap_or_default(),
                    "Fail",
                )
                .await;
            }
        }
    }
    Ok(())
}

/// Moves UIDs whose pods no longer carry the finalizer from the uncounted lists into the
/// counters. Returns whether the status changed.
fn clean_uncounted(status: &mut JobStatus, with_finalizer: &HashSet<String>) -> bool {
    let mut changed = false;
    let u = status
        .uncounted_terminated_pods
        .get_or_insert_with(Default::default);
    let s: Vec<String> = u
        .succeeded
        .iter()
        .flatten()
        .filter(|x| with_finalizer.contains(*x))
        .cloned()
        .collect();
    let s_gone = u.succeeded.as_ref().map_or(0, Vec::len) - s.len();
    let f: Vec<String> = u
        .failed
        .iter()
        .flatten()
        .filter(|x| with_finalizer.contains(*x))
        .cloned()
        .collect();
    let f_gone = u.failed.as_ref().map_or(0, Vec::len) - f.len();
    if s_gone > 0 {
        u.succeeded = Some(s);
        changed = true;
    }
    if f_gone > 0 {
        u.failed = Some(f);
        changed = true;
    }
    if s_gone > 0 {
        status.succeeded = Some(status.succeeded.unwrap_or(0) + s_gone as i32);
    }
    if f_gone > 0 {
        status.failed = Some(status.failed.unwrap_or(0) + f_gone as i32);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{
        PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern,
        PodFailurePolicyRule,
    };
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodStatus,
    };

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid timestamp")
    }

    #[test]
    fn indexes_round_trip() {
        let cases: &[(&str, i32, &str, usize)] = &[
            ("", 5, "", 0),
            ("0", 5, "0", 1),
            ("0-2,4", 5, "0-2,4", 4),
            ("0,1,2,4", 5, "0-2,4", 4),
            ("3-9", 5, "3-4", 2),
            ("1,x,3", 5, "1,3", 2),
            ("0-1,3-4", 10, "0-1,3-4", 4),
        ];
        for (input, completions, want, n) in cases {
            let set = parse_indexes(input, *completions);
            assert_eq!(format_indexes(&set), *want, "input {input}");
            assert_eq!(set.len(), *n, "input {input}");
        }
    }

    #[test]
    fn want_active_table() {
        // (parallelism, completions, succeeded, active, want)
        let cases = [
            (2, Some(5), 0, 0, 2),
            (2, Some(5), 4, 1, 1),
            (2, Some(5), 5, 0, 0),
            (2, Some(5), 7, 0, 0),
            (3, None, 0, 0, 3),
            (3, None, 1, 2, 2),
            (0, Some(5), 0, 2, 0),
        ];
        for (p, c, s, a, want) in cases {
            assert_eq!(want_active(p, c, s, a), want, "{p} {c:?} {s} {a}");
        }
        assert!(is_complete(Some(2), 2, 0));
        assert!(!is_complete(Some(2), 2, 1));
        assert!(is_complete(None, 1, 0));
        assert!(!is_complete(None, 0, 0));
    }

    #[test]
    fn backoff_table() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(360);
        let r = BackoffRecord::default().update(vec![], vec![ts(100)]);
        assert_eq!(r.failures_after_last_success, 1);
        assert_eq!(r.remaining(ts(100), base, max), Duration::from_secs(10));
        assert_eq!(r.remaining(ts(104), base, max), Duration::from_secs(6));
        assert_eq!(r.remaining(ts(200), base, max), Duration::ZERO);
        let r = r.update(vec![], vec![ts(110), ts(120)]);
        assert_eq!(r.failures_after_last_success, 3);
        assert_eq!(r.last_failure_time, Some(ts(120)));
        assert_eq!(r.remaining(ts(120), base, max), Duration::from_secs(40));
        let many = BackoffRecord {
            failures_after_last_success: 20,
            last_failure_time: Some(ts(0)),
        };
        assert_eq!(many.remaining(ts(0), base, max), max);
        // A success resets the count to the failures after it.
        let r = r.update(vec![ts(130)], vec![ts(125), ts(140)]);
        assert_eq!(r.failures_after_last_success, 1);
        assert_eq!(r.last_failure_time, Some(ts(140)));
        let r = r.update(vec![ts(150)], vec![]);
        assert_eq!(r, BackoffRecord::default());
    }

    fn failed_pod(exit: i32, cond: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Failed".into()),
                conditions: cond.map(|c| {
                    vec![PodCondition {
                        type_: c.into(),
                        status: "True".into(),
                        ..Default::default()
                    }]
                }),
                container_statuses: Some(vec![ContainerStatus {
                    name: "main".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: exit,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pod_failure_policy_table() {
        let policy = PodFailurePolicy {
            rules: vec![
                PodFailurePolicyRule {
                    action: "Ignore".into(),
                    on_exit_codes: None,
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".into(),
                        status: "True".into(),
                    }]),
                },
                PodFailurePolicyRule {
                    action: "FailJob".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: Some("main".into()),
                        operator: "In".into(),
                        values: vec![42],
                    }),
                    on_pod_conditions: None,
                },
                PodFailurePolicyRule {
                    action: "Count".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: None,
                        operator: "NotIn".into(),
                        values: vec![1],
                    }),
                    on_pod_conditions: None,
                },
            ],
        };
        // (exit code, pod condition, action, counts)
        let cases: &[(i32, Option<&str>, Option<&str>, bool)] = &[
            (1, Some("DisruptionTarget"), Some("Ignore"), false),
            (42, None, Some("FailJob"), true),
            (7, None, Some("Count"), true),
            (1, None, None, true),
        ];
        for (exit, cond, action, counts) in cases {
            let m = match_pod_failure_policy(&policy, &failed_pod(*exit, *cond));
            assert_eq!(m.action.as_deref(), *action, "exit {exit}");
            assert_eq!(m.count_failed, *counts, "exit {exit}");
        }
        let m = match_pod_failure_policy(&policy, &failed_pod(42, None));
        assert_eq!(
            m.message.as_deref(),
            Some(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
            )
        );
    }

    #[test]
    fn pending_indexes() {
        let succeeded: BTreeSet<i32> = [0, 2].into_iter().collect();
        let taken: HashSet<i32> = [1].into_iter().collect();
        assert_eq!(first_pending_indexes(6, &succeeded, &taken, 2), vec![3, 4]);
        assert_eq!(
            first_pending_indexes(3, &succeeded, &taken, 2),
            Vec::<i32>::new()
        );
    }
}
