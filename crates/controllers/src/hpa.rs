//! HorizontalPodAutoscaler controller (upstream pkg/controller/podautoscaler, autoscaling/v2):
//! every sync period, reads each HPA's target through its `scale` subresource, fetches the
//! pods' usage from `metrics.k8s.io`, computes the desired replica count with upstream's
//! replica calculator (tolerance, unready and missing pods), stabilizes and rate-limits it
//! with the HPA's `behavior`, writes the scale and reports status, conditions and events.
//!
//! Resource and ContainerResource metrics are supported; Pods, Object and External metrics
//! need a custom/external metrics API, which skiff does not serve, and report
//! `ScalingActive=False` like upstream does when those APIs are unavailable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use api::validation::quantity::Quantity;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler, MetricSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::Context;

/// Usage ratios this close to 1 cause no scaling (upstream `--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// CPU samples of pods started this recently are trusted only once ready for a full window
/// (upstream `--horizontal-pod-autoscaler-cpu-initialization-period`).
pub const CPU_INITIALIZATION_PERIOD: SignedDuration = SignedDuration::from_secs(300);
/// A pod unready this soon after start is taken as never having been ready
/// (upstream `--horizontal-pod-autoscaler-initial-readiness-delay`).
pub const INITIAL_READINESS_DELAY: SignedDuration = SignedDuration::from_secs(30);
/// The target when an HPA names no metrics (autoscaling/v2 defaulting).
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;

// ---------------------------------------------------------------------------------------------
// Replica calculation
// ---------------------------------------------------------------------------------------------

/// A pod as the replica calculator sees it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub name: String,
    pub phase: String,
    pub deleting: bool,
    /// The Ready condition: (is true, last transition).
    pub ready: Option<(bool, Timestamp)>,
    pub start_time: Option<Timestamp>,
    /// Sum of the containers' requests of the metric's resource (milli units); `None` when a
    /// container states none.
    pub request_milli: Option<i64>,
}

/// One pod's usage sample from the metrics API.
#[derive(Debug, Clone, Copy)]
pub struct PodMetric {
    pub milli: i64,
    pub timestamp: Timestamp,
    pub window: SignedDuration,
}

/// What a metric targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Average per pod, in milli units.
    AverageValue(i64),
}

/// The calculator's answer for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    pub replicas: i32,
    /// Average utilization in percent (utilization targets only).
    pub utilization: Option<i32>,
    /// Average usage per pod in milli units.
    pub raw_average: i64,
}

fn within_tolerance(ratio: f64) -> bool {
    (1.0 - ratio).abs() <= TOLERANCE
}

/// Upstream `groupPods`: ready pods with metrics, and the names of unready, missing and
/// ignored pods.
fn group_pods(
    pods: &[PodInfo],
    metrics: &BTreeMap<String, PodMetric>,
    cpu: bool,
    now: Timestamp,
) -> (usize, Vec<String>, Vec<String>, Vec<String>) {
    let (mut ready, mut unready, mut missing, mut ignored) =
        (0, Vec::new(), Vec::new(), Vec::new());
    for pod in pods {
        if pod.deleting || pod.phase == "Failed" {
            ignored.push(pod.name.clone());
            continue;
        }
        if pod.phase == "Pending" {
            unready.push(pod.name.clone());
            continue;
        }
        let Some(metric) = metrics.get(&pod.name) else {
            missing.push(pod.name.clone());
            continue;
        };
        if cpu {
            let is_unready = match (pod.ready, pod.start_time) {
                (Some((status, transition)), Some(start)) => {
                    if start + CPU_INITIALIZATION_PERIOD > now {
                        // Still initializing: trust the sample only if the pod is ready and a
                        // full window passed since it became so.
                        !status || metric.timestamp < transition + metric.window
                    } else {
                        // Unready and never been ready since start.
                        !status && start + INITIAL_READINESS_DELAY > transition
                    }
                }
                _ => true,
            };
            if is_unready {
                unready.push(pod.name.clone());
                continue;
            }
        }
        ready += 1;
    }
    (ready, unready, missing, ignored)
}

/// Usage ratio, current utilization (percent) and raw average for the pods with metrics.
fn usage_ratio(
    metrics: &BTreeMap<String, i64>,
    requests: &BTreeMap<String, i64>,
    target: Target,
) -> Result<(f64, Option<i32>, i64), String> {
    match target {
        Target::Utilization(t) => {
            let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
            for (pod, m) in metrics {
                if let Some(r) = requests.get(pod) {
                    used += m;
                    requested += r;
                    n += 1;
                }
            }
            if requested == 0 || n == 0 {
                return Err("no metrics returned matched known pods".into());
            }
            let utilization = i32::try_from(used * 100 / requested).unwrap_or(i32::MAX);
            Ok((
                f64::from(utilization) / f64::from(t.max(1)),
                Some(utilization),
                used / n,
            ))
        }
        Target::AverageValue(t) => {
            let n = i64::try_from(metrics.len()).unwrap_or(i64::MAX);
            if n == 0 {
                return Err("no metrics returned matched known pods".into());
            }
            let average = metrics.values().sum::<i64>() / n;
            Ok((average as f64 / t.max(1) as f64, None, average))
        }
    }
}

/// Upstream `GetResourceReplicas` / `GetRawResourceReplicas`.
pub fn resource_replicas(
    current: i32,
    target: Target,
    pods: &[PodInfo],
    metrics: &BTreeMap<String, PodMetric>,
    cpu: bool,
    resource: &str,
    now: Timestamp,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let (ready, unready, missing, ignored) = group_pods(pods, metrics, cpu, now);
    let mut values: BTreeMap<String, i64> = metrics
        .iter()
        .filter(|(n, _)| !ignored.contains(n) && !unready.contains(n))
        .filter(|(n, _)| pods.iter().any(|p| &p.name == *n))
        .map(|(n, m)| (n.clone(), m.milli))
        .collect();
    if values.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests = BTreeMap::new();
    if matches!(target, Target::Utilization(_)) {
        for p in pods {
            match p.request_milli {
                Some(r) => {
                    requests.insert(p.name.clone(), r);
                }
                None => {
                    return Err(format!("missing request for {resource} in pod {}", p.name));
                }
            }
        }
    }
    let (ratio, utilization, raw) = usage_ratio(&values, &requests, target)?;
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        raw_average: raw,
    };
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if within_tolerance(ratio) {
            return Ok(proposal(current));
        }
        return Ok(proposal(ceil_replicas(ratio * ready as f64)));
    }
    if !missing.is_empty() {
        for name in &missing {
            let fill = if ratio < 1.0 {
                // Scaling down: missing pods are taken to use their request (or the target).
                match target {
                    Target::Utilization(t) => {
                        requests.get(name).copied().unwrap_or(0) * i64::from(t.max(100)) / 100
                    }
                    Target::AverageValue(t) => t,
                }
            } else {
                0
            };
            if ratio != 1.0 {
                values.insert(name.clone(), fill);
            }
        }
    }
    if scale_up_with_unready {
        for name in &unready {
            values.insert(name.clone(), 0);
        }
    }
    let (new_ratio, _, _) = usage_ratio(&values, &requests, target)?;
    if within_tolerance(new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = ceil_replicas(new_ratio * values.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

fn ceil_replicas(x: f64) -> i32 {
    let c = x.ceil();
    if c >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        c as i32
    }
}

// ---------------------------------------------------------------------------------------------
// Behavior: stabilization and rate limits
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

/// Scaling rules for one direction, with upstream's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub window: SignedDuration,
    pub select: Select,
    /// (kind, value, period)
    pub policies: Vec<(PolicyKind, i32, SignedDuration)>,
}

impl Rules {
    /// Upstream's default scale-up rules: no window, the larger of 100% or 4 pods per 15 s.
    pub fn default_up() -> Rules {
        Rules {
            window: SignedDuration::ZERO,
            select: Select::Max,
            policies: vec![
                (PolicyKind::Pods, 4, SignedDuration::from_secs(15)),
                (PolicyKind::Percent, 100, SignedDuration::from_secs(15)),
            ],
        }
    }

    /// Upstream's default scale-down rules: 100% per 15 s after the stabilization window.
    pub fn default_down(window: Duration) -> Rules {
        Rules {
            window: SignedDuration::try_from(window).unwrap_or(SignedDuration::from_secs(300)),
            select: Select::Max,
            policies: vec![(PolicyKind::Percent, 100, SignedDuration::from_secs(15))],
        }
    }

    /// The rules an HPA states, over `defaults` for what it leaves out.
    pub fn from_spec(spec: Option<&HPAScalingRules>, defaults: Rules) -> Rules {
        let Some(spec) = spec else { return defaults };
        let policies = spec
            .policies
            .as_ref()
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.iter()
                    .map(|p| {
                        let kind = if p.type_ == "Pods" {
                            PolicyKind::Pods
                        } else {
                            PolicyKind::Percent
                        };
                        (
                            kind,
                            p.value,
                            SignedDuration::from_secs(i64::from(p.period_seconds)),
                        )
                    })
                    .collect()
            })
            .unwrap_or(defaults.policies);
        Rules {
            window: spec
                .stabilization_window_seconds
                .map(|s| SignedDuration::from_secs(i64::from(s)))
                .unwrap_or(defaults.window),
            select: match spec.select_policy.as_deref() {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            },
            policies,
        }
    }

    fn longest_period(&self) -> SignedDuration {
        self.policies
            .iter()
            .map(|p| p.2)
            .max()
            .unwrap_or(SignedDuration::ZERO)
    }
}

/// What the controller remembers about one HPA between syncs.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Unstabilized recommendations with their time.
    pub recommendations: Vec<(i32, Timestamp)>,
    pub up_events: Vec<(i32, Timestamp)>,
    pub down_events: Vec<(i32, Timestamp)>,
}

impl History {
    /// Upstream `stabilizeRecommendationWithBehaviors`: the lowest recommendation of the
    /// scale-up window and the highest of the scale-down window bound the new one.
    pub fn stabilize(
        &mut self,
        current: i32,
        desired: i32,
        up: &Rules,
        down: &Rules,
        now: Timestamp,
    ) -> (i32, &'static str, &'static str) {
        let (up_cutoff, down_cutoff) = (now - up.window, now - down.window);
        let (mut up_rec, mut down_rec) = (desired, desired);
        let mut old = None;
        for (i, (rec, at)) in self.recommendations.iter().enumerate() {
            if *at > up_cutoff {
                up_rec = up_rec.min(*rec);
            }
            if *at > down_cutoff {
                down_rec = down_rec.max(*rec);
            }
            if *at < up_cutoff && *at < down_cutoff {
                old = Some(i);
            }
        }
        let recommendation = current.max(up_rec).min(down_rec);
        match old {
            Some(i) => self.recommendations[i] = (desired, now),
            None => self.recommendations.push((desired, now)),
        }
        if desired >= current {
            ("ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation")
        } else {
            ("ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
        }
        .into_tuple(recommendation)
    }

    fn change_in(events: &[(i32, Timestamp)], period: SignedDuration, now: Timestamp) -> i32 {
        events
            .iter()
            .filter(|(_, at)| *at > now - period)
            .map(|(c, _)| c)
            .sum()
    }

    fn up_limit(&self, current: i32, rules: &Rules, now: Timestamp) -> i32 {
        if rules.select == Select::Disabled {
            return current;
        }
        let mut result: Option<i32> = None;
        for (kind, value, period) in &rules.policies {
            let start = current - Self::change_in(&self.up_events, *period, now)
                + Self::change_in(&self.down_events, *period, now);
            let proposed = match kind {
                PolicyKind::Pods => start.saturating_add(*value),
                PolicyKind::Percent => {
                    ceil_replicas(f64::from(start) * (1.0 + f64::from(*value) / 100.0))
                }
            };
            result = Some(match (result, rules.select) {
                (None, _) => proposed,
                (Some(r), Select::Min) => r.min(proposed),
                (Some(r), _) => r.max(proposed),
            });
        }
        result.unwrap_or(current)
    }

    fn down_limit(&self, current: i32, rules: &Rules, now: Timestamp) -> i32 {
        if rules.select == Select::Disabled {
            return current;
        }
        let mut result: Option<i32> = None;
        for (kind, value, period) in &rules.policies {
            let start = current - Self::change_in(&self.up_events, *period, now)
                + Self::change_in(&self.down_events, *period, now);
            let proposed = match kind {
                PolicyKind::Pods => start - value,
                // Truncated toward zero like upstream's int32 conversion.
                PolicyKind::Percent => {
                    (f64::from(start) * (1.0 - f64::from(*value) / 100.0)) as i32
                }
            };
            result = Some(match (result, rules.select) {
                (None, _) => proposed,
                (Some(r), Select::Min) => r.max(proposed),
                (Some(r), _) => r.min(proposed),
            });
        }
        result.unwrap_or(current)
    }

    /// Upstream `convertDesiredReplicasWithBehaviorRate`: bounds by min/max and the rate
    /// policies, with the ScalingLimited reason and message.
    #[allow(clippy::too_many_arguments)]
    pub fn rate_limit(
        &self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        up: &Rules,
        down: &Rules,
        now: Timestamp,
    ) -> (i32, &'static str, &'static str) {
        if desired > current {
            let limit = self.up_limit(current, up, now).max(current);
            let (allowed, reason, message) = if max > limit {
                (
                    limit,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if desired > allowed {
                return (allowed, reason, message);
            }
        } else if desired < current {
            let limit = self.down_limit(current, down, now).min(current);
            let (allowed, reason, message) = if min < limit {
                (
                    limit,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if desired < allowed {
                return (allowed, reason, message);
            }
        }
        (
            desired,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        )
    }

    /// Records a rescale for the rate limits, dropping events older than any policy period.
    pub fn record_scale(&mut self, from: i32, to: i32, up: &Rules, down: &Rules, now: Timestamp) {
        let (up_keep, down_keep) = (now - up.longest_period(), now - down.longest_period());
        self.up_events.retain(|(_, at)| *at > up_keep);
        self.down_events.retain(|(_, at)| *at > down_keep);
        if to > from {
            self.up_events.push((to - from, now));
        } else if to < from {
            self.down_events.push((from - to, now));
        }
    }
}

trait IntoTuple {
    fn into_tuple(self, n: i32) -> (i32, &'static str, &'static str);
}

impl IntoTuple for (&'static str, &'static str) {
    fn into_tuple(self, n: i32) -> (i32, &'static str, &'static str) {
        (n, self.0, self.1)
    }
}

// ---------------------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------------------

fn metrics_resource() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

fn parse_quantity_milli(v: &Value) -> Option<i64> {
    let q: Quantity = v.as_str()?.parse().ok()?;
    i64::try_from(q.milli_value()).ok()
}

fn parse_time(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

fn parse_window(v: &Value) -> SignedDuration {
    // metrics-server writes Go durations like "10s" or "1m0s"; seconds are all we need.
    let s = v.as_str().unwrap_or("0s");
    let mut total = 0i64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: i64 = num.parse().unwrap_or(0);
            num.clear();
            total += match c {
                'h' => n * 3600,
                'm' => n * 60,
                's' => n,
                _ => 0,
            };
        }
    }
    SignedDuration::from_secs(total)
}

/// One metric spec in the form the calculator takes.
struct ResourceMetric {
    resource: String,
    container: Option<String>,
    target: Target,
}

fn resource_metric(spec: &MetricSpec) -> Result<ResourceMetric, String> {
    let (name, container, target) = match (
        spec.type_.as_str(),
        &spec.resource,
        &spec.container_resource,
    ) {
        ("Resource", Some(r), _) => (r.name.clone(), None, &r.target),
        ("ContainerResource", _, Some(c)) => (c.name.clone(), Some(c.container.clone()), &c.target),
        (ty, _, _) => {
            return Err(format!(
                "unable to get metric of type {ty}: the custom and external metrics APIs are not served"
            ));
        }
    };
    let target = match (
        target.type_.as_str(),
        target.average_utilization,
        &target.average_value,
    ) {
        ("Utilization", Some(u), _) => Target::Utilization(u),
        ("AverageValue", _, Some(v)) => Target::AverageValue(
            i64::try_from(
                v.0.parse::<Quantity>()
                    .map_err(|e| format!("invalid target {}: {e}", v.0))?
                    .milli_value(),
            )
            .unwrap_or(i64::MAX),
        ),
        (ty, _, _) => {
            return Err(format!(
                "invalid metric target type {ty:?} for resource {name}"
            ));
        }
    };
    Ok(ResourceMetric {
        resource: name,
        container,
        target,
    })
}

fn metric_name(m: &ResourceMetric) -> String {
    match (m.target, &m.container) {
        (Target::Utilization(_), None) => format!(
            "{} resource utilization (percentage of request)",
            m.resource
        ),
        (Target::Utilization(_), Some(c)) => format!(
            "{} container resource utilization (percentage of request) of container {c}",
            m.resource
        ),
        (Target::AverageValue(_), None) => format!("{} resource", m.resource),
        (Target::AverageValue(_), Some(c)) => {
            format!("{} container resource of container {c}", m.resource)
        }
    }
}

fn pod_info(pod: &Pod, resource: &str, container: Option<&str>) -> PodInfo {
    let status = pod.status.as_ref();
    let ready = crate::util::pod_condition(pod, "Ready").map(|c| {
        (
            c.status == "True",
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH),
        )
    });
    let mut request = Some(0i64);
    for c in pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
    {
        if container.is_some_and(|want| want != c.name) {
            continue;
        }
        let q = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| q.0.parse::<Quantity>().ok())
            .and_then(|q| i64::try_from(q.milli_value()).ok());
        request = match (request, q) {
            (Some(sum), Some(q)) => Some(sum + q),
            _ => None,
        };
    }
    PodInfo {
        name: pod.name_any(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
        request_milli: request,
    }
}

/// Per-pod usage of `resource` (only `container`, when given) from PodMetrics objects.
fn pod_metrics(
    items: &[DynamicObject],
    resource: &str,
    container: Option<&str>,
) -> BTreeMap<String, PodMetric> {
    let mut out = BTreeMap::new();
    for item in items {
        let mut sum = 0i64;
        let mut found = false;
        for c in item.data["containers"].as_array().into_iter().flatten() {
            if container.is_some_and(|want| c["name"].as_str() != Some(want)) {
                continue;
            }
            if let Some(v) = parse_quantity_milli(&c["usage"][resource]) {
                sum += v;
                found = true;
            }
        }
        if !found {
            continue;
        }
        let timestamp = parse_time(&item.data["timestamp"]).unwrap_or_else(Timestamp::now);
        out.insert(
            item.name_any(),
            PodMetric {
                milli: sum,
                timestamp,
                window: parse_window(&item.data["window"]),
            },
        );
    }
    out
}

/// Sets a condition in a status JSON, keeping the transition time unless the status flips.
fn set_condition(
    status: &mut Value,
    ty: &str,
    state: bool,
    reason: &str,
    message: &str,
    now: &str,
) {
    let state = if state { "True" } else { "False" };
    let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            if c["status"] != state {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(state);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conds.push(json!({ "type": ty, "status": state, "lastTransitionTime": now, "reason": reason, "message": message })),
    }
    status["conditions"] = Value::Array(conds);
}

struct Hpa {
    ctx: Arc<Context>,
    history: HashMap<String, History>,
    served: Option<crate::util::ServedResources>,
}

pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let mut hpa = Hpa {
        ctx: ctx.clone(),
        history: HashMap::new(),
        served: None,
    };
    let mut tick = tokio::time::interval(ctx.opts.hpa_sync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(e) = hpa.sync_all().await {
            tracing::warn!("horizontal pod autoscaling: {e:#}");
        }
    }
}

impl Hpa {
    async fn sync_all(&mut self) -> anyhow::Result<()> {
        let api: Api<HorizontalPodAutoscaler> = Api::all(self.ctx.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .context("listing HorizontalPodAutoscalers")?;
        let live: Vec<String> = list
            .items
            .iter()
            .map(|h| format!("{}/{}", h.namespace().unwrap_or_default(), h.name_any()))
            .collect();
        self.history.retain(|k, _| live.contains(k));
        for h in list.items {
            let key = format!("{}/{}", h.namespace().unwrap_or_default(), h.name_any());
            if let Err(e) = self.reconcile(&h, &key).await {
                tracing::warn!(hpa = key, "{e:#}");
            }
        }
        Ok(())
    }

    async fn event(&self, h: &HorizontalPodAutoscaler, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&ev, &h.object_ref(&())).await {
            tracing::debug!("recording an HPA event failed: {e}");
        }
    }

    async fn target_api(
        &mut self,
        ns: &str,
        api_version: &str,
        kind: &str,
    ) -> anyhow::Result<Api<DynamicObject>> {
        let mut found = self
            .served
            .as_ref()
            .and_then(|s| s.resolve(api_version, kind).cloned());
        if found.is_none() {
            // New kinds (CRDs) appear later: refresh discovery once on a miss.
            self.served = Some(
                crate::util::discover(&self.ctx.client)
                    .await
                    .context("discovering resources")?,
            );
            found = self
                .served
                .as_ref()
                .and_then(|s| s.resolve(api_version, kind).cloned());
        }
        let r =
            found.with_context(|| format!("the server does not serve {kind} in {api_version}"))?;
        Ok(Api::namespaced_with(
            self.ctx.client.clone(),
            ns,
            &r.resource,
        ))
    }

    async fn write_status(&self, h: &HorizontalPodAutoscaler, status: Value) -> anyhow::Result<()> {
        let old = serde_json::to_value(&h.status).unwrap_or(Value::Null);
        if old == status {
            return Ok(());
        }
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.ctx.client.clone(), &h.namespace().unwrap_or_default());
        // Replace the whole status: a merge patch of `null` clears fields that went away.
        let mut patch = json!({ "status": status });
        if let Some(o) = old.as_object() {
            for k in o.keys() {
                if patch["status"].get(k).is_none() {
                    patch["status"][k] = Value::Null;
                }
            }
        }
        api.patch_status(&h.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .context("updating HPA status")?;
        Ok(())
    }

    async fn reconcile(&mut self, h: &HorizontalPodAutoscaler, key: &str) -> anyhow::Result<()> {
        let now = Timestamp::now();
        let now_str = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let ns = h.namespace().unwrap_or_default();
        let Some(spec) = h.spec.clone() else {
            return Ok(());
        };
        let mut status = serde_json::to_value(&h.status).unwrap_or(Value::Null);
        if !status.is_object() {
            status = json!({ "desiredReplicas": 0 });
        }
        let target = &spec.scale_target_ref;
        let reference = format!("{}/{}", target.kind, target.name);
        let api_version = target.api_version.clone().unwrap_or_default();

        let scale = match self.target_api(&ns, &api_version, &target.kind).await {
            Ok(api) => api
                .get_scale(&target.name)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        let scale = match scale {
            Ok(s) => s,
            Err(e) => {
                self.event(h, true, "FailedGetScale", format!("{e:#}"))
                    .await;
                set_condition(
                    &mut status,
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    &format!(
                        "the HPA controller was unable to get the target's current scale: {e:#}"
                    ),
                    &now_str,
                );
                self.write_status(h, status).await?;
                return Err(e.context(format!("getting the scale of {reference}")));
            }
        };
        set_condition(
            &mut status,
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
            &now_str,
        );

        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let up = Rules::from_spec(
            spec.behavior.as_ref().and_then(|b| b.scale_up.as_ref()),
            Rules::default_up(),
        );
        let down = Rules::from_spec(
            spec.behavior.as_ref().and_then(|b| b.scale_down.as_ref()),
            Rules::default_down(self.ctx.opts.hpa_downscale_stabilization),
        );
        let history = self.history.entry(key.to_string()).or_default();

        let mut current_metrics = Vec::new();
        let mut reason = String::new();
        let desired;
        if current == 0 && min != 0 {
            set_condition(
                &mut status,
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
                &now_str,
            );
            desired = 0;
        } else if current > max {
            reason = "Current number of replicas above Spec.MaxReplicas".into();
            desired = max;
        } else if current < min {
            reason = "Current number of replicas below Spec.MinReplicas".into();
            desired = min;
        } else {
            let selector = scale
                .status
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            let computed = if selector.is_empty() {
                Err((
                    "InvalidSelector",
                    "the HPA target's scale is missing a selector".to_string(),
                ))
            } else {
                compute_metrics(
                    &self.ctx.client,
                    &ns,
                    &selector,
                    &spec.metrics.clone().unwrap_or_default(),
                    current,
                    now,
                )
                .await
            };
            let (proposed, name, statuses) = match computed {
                Ok(v) => v,
                Err((why, msg)) => {
                    self.event(h, true, "FailedComputeMetricsReplicas", msg.clone())
                        .await;
                    set_condition(
                        &mut status,
                        "ScalingActive",
                        false,
                        why,
                        &format!("the HPA was unable to compute the replica count: {msg}"),
                        &now_str,
                    );
                    status["currentReplicas"] = json!(current);
                    self.write_status(h, status).await?;
                    anyhow::bail!(
                        "failed to compute desired number of replicas based on listed metrics for {reference}: {msg}"
                    );
                }
            };
            current_metrics = statuses;
            set_condition(
                &mut status,
                "ScalingActive",
                true,
                "ValidMetricFound",
                &format!("the HPA was able to successfully calculate a replica count from {name}"),
                &now_str,
            );
            if proposed > current {
                reason = format!("{name} above target");
            } else if proposed < current {
                reason = "All metrics below target".into();
            }
            let (stabilized, why, msg) = history.stabilize(current, proposed, &up, &down, now);
            if stabilized != proposed {
                set_condition(&mut status, "AbleToScale", true, why, msg, &now_str);
            } else {
                set_condition(
                    &mut status,
                    "AbleToScale",
                    true,
                    "ReadyForNewScale",
                    "recommended size matches current size",
                    &now_str,
                );
            }
            let (limited, why, msg) =
                history.rate_limit(current, stabilized, min, max, &up, &down, now);
            set_condition(
                &mut status,
                "ScalingLimited",
                limited != stabilized,
                why,
                msg,
                &now_str,
            );
            desired = limited;
        }

        let rescale = desired != current && !(current == 0 && min != 0);
        if rescale {
            let api = self.target_api(&ns, &api_version, &target.kind).await?;
            let patch = Patch::Merge(json!({ "spec": { "replicas": desired } }));
            if let Err(e) = api
                .patch_scale(&target.name, &PatchParams::default(), &patch)
                .await
            {
                self.event(
                    h,
                    true,
                    "FailedRescale",
                    format!("New size: {desired}; reason: {reason}; error: {e}"),
                )
                .await;
                set_condition(
                    &mut status,
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    &format!("the HPA controller was unable to update the target scale: {e}"),
                    &now_str,
                );
                self.write_status(h, status).await?;
                return Err(
                    anyhow::Error::from(e).context(format!("failed to rescale {reference}"))
                );
            }
            set_condition(
                &mut status,
                "AbleToScale",
                true,
                "SucceededRescale",
                &format!("the HPA controller was able to update the target scale to {desired}"),
                &now_str,
            );
            self.event(
                h,
                false,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {reason}"),
            )
            .await;
            if let Some(history) = self.history.get_mut(key) {
                history.record_scale(current, desired, &up, &down, now);
            }
            status["lastScaleTime"] = json!(now_str);
            tracing::info!(
                hpa = key,
                "scaled {reference} from {current} to {desired}: {reason}"
            );
        }
        status["currentReplicas"] = json!(current);
        status["desiredReplicas"] = json!(if rescale {
            desired
        } else if current == 0 && min != 0 {
            0
        } else {
            current
        });
        if current_metrics.is_empty() {
            if let Some(o) = status.as_object_mut() {
                o.remove("currentMetrics");
            }
        } else {
            status["currentMetrics"] = Value::Array(current_metrics);
        }
        status["observedGeneration"] = json!(h.metadata.generation);
        self.write_status(h, status).await
    }
}

/// Desired replicas over all metrics (the largest proposal), the name of the metric that
/// proposed it and every metric's status; on failure a condition reason and message.
async fn compute_metrics(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    specs: &[MetricSpec],
    current: i32,
    now: Timestamp,
) -> Result<(i32, String, Vec<Value>), (&'static str, String)> {
    let default_spec;
    let specs = if specs.is_empty() {
        default_spec = [serde_json::from_value::<MetricSpec>(json!({
            "type": "Resource", "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION } }
        }))
        .map_err(|e| ("FailedGetResourceMetric", e.to_string()))?];
        &default_spec[..]
    } else {
        specs
    };
    let lp = ListParams::default().labels(selector);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = pods
        .list(&lp)
        .await
        .map_err(|e| {
            (
                "FailedGetResourceMetric",
                format!("unable to list pods: {e}"),
            )
        })?
        .items;
    let metrics_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &metrics_resource());
    let metric_items = match metrics_api.list(&lp).await {
        Ok(l) => l.items,
        Err(e) => {
            return Err((
                "FailedGetResourceMetric",
                format!(
                    "unable to get metrics for resource: unable to fetch metrics from resource metrics API: {e}"
                ),
            ));
        }
    };
    let (mut best, mut best_name, mut statuses, mut first_err) =
        (-1, String::new(), Vec::new(), None);
    for spec in specs {
        let m = match resource_metric(spec) {
            Ok(m) => m,
            Err(e) => {
                first_err.get_or_insert(("FailedGetExternalMetric", e));
                continue;
            }
        };
        let infos: Vec<PodInfo> = pods
            .iter()
            .map(|p| pod_info(p, &m.resource, m.container.as_deref()))
            .collect();
        let samples = pod_metrics(&metric_items, &m.resource, m.container.as_deref());
        let cpu = m.resource == "cpu";
        match resource_replicas(current, m.target, &infos, &samples, cpu, &m.resource, now) {
            Ok(p) => {
                let mut cur = json!({ "averageValue": Quantity::from_millis(i128::from(p.raw_average)).to_string() });
                if let Some(u) = p.utilization {
                    cur["averageUtilization"] = json!(u);
                }
                statuses.push(match &m.container {
                    None => json!({ "type": "Resource", "resource": { "name": m.resource, "current": cur } }),
                    Some(c) => json!({ "type": "ContainerResource", "containerResource": { "name": m.resource, "container": c, "current": cur } }),
                });
                if p.replicas > best {
                    best = p.replicas;
                    best_name = metric_name(&m);
                }
            }
            Err(e) => {
                first_err.get_or_insert((
                    "FailedGetResourceMetric",
                    format!("failed to get {} utilization: {e}", m.resource),
                ));
            }
        }
    }
    match (best, first_err) {
        // Some metrics worked: scale on them (upstream does the same when not all failed).
        (b, _) if b >= 0 => Ok((b, best_name, statuses)),
        (_, Some(e)) => Err(e),
        _ => Err(("FailedGetResourceMetric", "no metrics".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs_ago: i64) -> Timestamp {
        Timestamp::now() - SignedDuration::from_secs(secs_ago)
    }

    fn ready_pod(name: &str, request: i64) -> PodInfo {
        PodInfo {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            ready: Some((true, ts(600))),
            start_time: Some(ts(900)),
            request_milli: Some(request),
        }
    }

    fn sample(milli: i64) -> PodMetric {
        PodMetric {
            milli,
            timestamp: ts(0),
            window: SignedDuration::from_secs(10),
        }
    }

    #[test]
    fn desired_replicas_for_utilizations() {
        // (current, target %, per-pod usage (None = no metric) with 1000m requests, want)
        let cases: &[(i32, i32, &[Option<i64>], i32)] = &[
            (2, 50, &[Some(1000), Some(1000)], 4),
            (2, 50, &[Some(520), Some(530)], 2), // within tolerance
            (4, 50, &[Some(100), Some(100), Some(100), Some(100)], 1),
            (3, 80, &[Some(900), Some(900), Some(900)], 4), // 112% -> ceil(3*1.125)
            (1, 10, &[Some(1000)], 10),
            // A missing pod counts as 0 on the way up.
            (3, 50, &[Some(1000), Some(1000), None], 4),
            // ...and as 100% of its request on the way down.
            (3, 50, &[Some(100), Some(100), None], 3),
            (3, 90, &[Some(0), Some(0), None], 2),
        ];
        for (current, target, usage, want) in cases {
            let pods: Vec<PodInfo> = (0..usage.len())
                .map(|i| ready_pod(&format!("p{i}"), 1000))
                .collect();
            let metrics: BTreeMap<String, PodMetric> = usage
                .iter()
                .enumerate()
                .filter_map(|(i, u)| u.map(|u| (format!("p{i}"), sample(u))))
                .collect();
            let got = resource_replicas(
                *current,
                Target::Utilization(*target),
                &pods,
                &metrics,
                true,
                "cpu",
                Timestamp::now(),
            )
            .map(|p| p.replicas);
            assert_eq!(
                got,
                Ok(*want),
                "current {current}, target {target}%, usage {usage:?}"
            );
        }
    }

    #[test]
    fn unready_and_failing_inputs() {
        let now = Timestamp::now();
        let mut pending = ready_pod("p1", 1000);
        pending.phase = "Pending".into();
        let pods = vec![ready_pod("p0", 1000), pending];
        let metrics = BTreeMap::from([("p0".to_string(), sample(1000))]);
        // 200% on one ready pod with one unready pod: the unready one counts as 0 -> 100%.
        let got = resource_replicas(
            2,
            Target::Utilization(50),
            &pods,
            &metrics,
            true,
            "cpu",
            now,
        );
        assert_eq!(got.map(|p| p.replicas), Ok(2));
        // A pod without requests cannot be measured by utilization.
        let mut no_req = ready_pod("p0", 0);
        no_req.request_milli = None;
        let got = resource_replicas(
            1,
            Target::Utilization(50),
            &[no_req],
            &metrics,
            true,
            "cpu",
            now,
        );
        assert_eq!(got, Err("missing request for cpu in pod p0".into()));
        assert!(
            resource_replicas(1, Target::Utilization(50), &[], &metrics, true, "cpu", now).is_err()
        );
        // Average value targets ignore requests.
        let got = resource_replicas(
            1,
            Target::AverageValue(250),
            &[ready_pod("p0", 0)],
            &metrics,
            false,
            "memory",
            now,
        );
        assert_eq!(got.map(|p| (p.replicas, p.raw_average)), Ok((4, 1000)));
        // A CPU sample taken before a recently-ready pod had a full window is not trusted.
        let mut fresh = ready_pod("p0", 1000);
        fresh.start_time = Some(ts(20));
        fresh.ready = Some((true, ts(5)));
        let got = resource_replicas(
            1,
            Target::Utilization(50),
            &[fresh],
            &metrics,
            true,
            "cpu",
            now,
        );
        assert!(got.is_err(), "{got:?}");
    }

    #[test]
    fn stabilization_and_rate_limits() {
        let up = Rules::default_up();
        let down = Rules::default_down(Duration::from_secs(300));
        let now = Timestamp::now();
        let mut h = History::default();
        // Scale-up is limited to max(4 pods, 100%) per 15 s.
        assert_eq!(h.rate_limit(2, 20, 1, 50, &up, &down, now).0, 6);
        assert_eq!(h.rate_limit(10, 30, 1, 50, &up, &down, now).0, 20);
        assert_eq!(
            h.rate_limit(10, 30, 1, 15, &up, &down, now),
            (
                15,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count"
            )
        );
        assert_eq!(h.rate_limit(5, 1, 2, 15, &up, &down, now).0, 2);
        // After scaling 2 -> 6 within the period, the next step starts from 2 again.
        h.record_scale(2, 6, &up, &down, now);
        assert_eq!(h.rate_limit(6, 20, 1, 50, &up, &down, now).0, 6);

        // Scale-down waits for the highest recommendation of the last 5 minutes.
        let mut h = History::default();
        h.recommendations
            .push((8, now - SignedDuration::from_secs(120)));
        assert_eq!(h.stabilize(8, 3, &up, &down, now).0, 8);
        let mut h = History::default();
        h.recommendations
            .push((8, now - SignedDuration::from_secs(400)));
        assert_eq!(h.stabilize(8, 3, &up, &down, now).0, 3);
        // The stale entry was replaced by the new recommendation.
        assert_eq!(h.recommendations.len(), 1);
        // Scale-up is not stabilized by default.
        let mut h = History::default();
        h.recommendations
            .push((2, now - SignedDuration::from_secs(5)));
        assert_eq!(h.stabilize(2, 6, &up, &down, now).0, 6);
        // A scale-up window holds the lowest recent recommendation.
        let slow_up = Rules {
            window: SignedDuration::from_secs(60),
            ..Rules::default_up()
        };
        assert_eq!(
            h.stabilize(2, 6, &slow_up, &down, now),
            (
                2,
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation"
            )
        );
        // Disabled scaling never moves.
        let off = Rules {
            select: Select::Disabled,
            ..Rules::default_up()
        };
        assert_eq!(
            History::default()
                .rate_limit(2, 6, 1, 10, &off, &down, now)
                .0,
            2
        );
    }

    #[test]
    fn windows_parse() {
        for (s, want) in [("10s", 10), ("1m0s", 60), ("1h2m3s", 3723), ("", 0)] {
            assert_eq!(
                parse_window(&json!(s)),
                SignedDuration::from_secs(want),
                "{s}"
            );
        }
    }
}
