//! Workload defaults: apps/v1 controllers, ReplicationController, batch/v1 Job and CronJob,
//! and autoscaling HorizontalPodAutoscaler (v1 and v2).

use super::resources::pvc;
use super::{child, each, ensure, is_empty, pod, set, set_str};
use serde_json::{Map, Value, json};

fn spec_template(root: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    let spec = child(root, "spec")?;
    if let Some(t) = child(spec, "template") {
        pod::template(t);
    }
    Some(spec)
}

pub fn deployment(root: &mut Map<String, Value>) {
    let Some(spec) = spec_template(root) else {
        return;
    };
    set(spec, "replicas", json!(1));
    let strategy = ensure(spec, "strategy");
    set_str(strategy, "type", "RollingUpdate");
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = ensure(strategy, "rollingUpdate");
        set(ru, "maxUnavailable", json!("25%"));
        set(ru, "maxSurge", json!("25%"));
    }
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
}

pub fn replica_set(root: &mut Map<String, Value>) {
    if let Some(spec) = spec_template(root) {
        set(spec, "replicas", json!(1));
    }
}

pub fn stateful_set(root: &mut Map<String, Value>) {
    let Some(spec) = spec_template(root) else {
        return;
    };
    set_str(spec, "podManagementPolicy", "OrderedReady");
    let strategy = ensure(spec, "updateStrategy");
    // Only a defaulted strategy type brings a defaulted `rollingUpdate`.
    if strategy
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        strategy.insert("type".into(), json!("RollingUpdate"));
        set(strategy, "rollingUpdate", json!({}));
    }
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
        && let Some(ru) = child(strategy, "rollingUpdate")
    {
        set(ru, "partition", json!(0));
    }
    let retention = ensure(spec, "persistentVolumeClaimRetentionPolicy");
    set_str(retention, "whenDeleted", "Retain");
    set_str(retention, "whenScaled", "Retain");
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    for claim in each(spec, "volumeClaimTemplates") {
        pvc(claim);
    }
}

pub fn daemon_set(root: &mut Map<String, Value>) {
    let Some(spec) = spec_template(root) else {
        return;
    };
    let strategy = ensure(spec, "updateStrategy");
    set_str(strategy, "type", "RollingUpdate");
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = ensure(strategy, "rollingUpdate");
        set(ru, "maxUnavailable", json!(1));
        set(ru, "maxSurge", json!(0));
    }
    set(spec, "revisionHistoryLimit", json!(10));
}

pub fn replication_controller(root: &mut Map<String, Value>) {
    let labels = root
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .filter(|l| l.is_object())
        .cloned();
    if let Some(labels) = labels {
        if let Some(spec) = child(root, "spec")
            && is_empty(spec, "selector")
        {
            spec.insert("selector".into(), labels.clone());
        }
        let meta = ensure(root, "metadata");
        if is_empty(meta, "labels") {
            meta.insert("labels".into(), labels);
        }
    }
    if let Some(spec) = spec_template(root) {
        set(spec, "replicas", json!(1));
    }
}

pub fn job(root: &mut Map<String, Value>) {
    let template_labels = root
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .filter(|l| l.is_object())
        .cloned();
    let Some(spec) = spec_template(root) else {
        return;
    };
    job_spec(spec);
    if let Some(labels) = template_labels {
        let meta = ensure(root, "metadata");
        if is_empty(meta, "labels") {
            meta.insert("labels".into(), labels);
        }
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    let unset = |s: &Map<String, Value>, k: &str| s.get(k).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    let backoff = if unset(spec, "backoffLimitPerIndex") {
        6
    } else {
        i64::from(i32::MAX)
    };
    set(spec, "backoffLimit", json!(backoff));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    let has_failure_policy = !unset(spec, "podFailurePolicy");
    if let Some(policy) = child(spec, "podFailurePolicy") {
        for rule in each(policy, "rules") {
            for pattern in each(rule, "onPodConditions") {
                set_str(pattern, "status", "True");
            }
        }
    }
    set(
        spec,
        "podReplacementPolicy",
        json!(if has_failure_policy {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
    set(spec, "manualSelector", json!(false));
}

/// Only the pod template inside `jobTemplate` is defaulted; Job-level defaults apply when the
/// controller creates each Job.
pub fn cron_job(root: &mut Map<String, Value>) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    set_str(spec, "concurrencyPolicy", "Allow");
    set(spec, "suspend", json!(false));
    set(spec, "successfulJobsHistoryLimit", json!(3));
    set(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(t) = child(spec, "jobTemplate")
        .and_then(|jt| child(jt, "spec"))
        .and_then(|s| child(s, "template"))
    {
        pod::template(t);
    }
}

pub fn hpa(root: &mut Map<String, Value>, version: &str) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    set(spec, "minReplicas", json!(1));
    if version == "v1" {
        return;
    }
    if is_empty(spec, "metrics") {
        spec.insert(
            "metrics".into(),
            json!([{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
            }]),
        );
    }
    // Behavior is only completed when given; an absent one means "controller defaults".
    if let Some(behavior) = child(spec, "behavior") {
        scaling_rules(
            ensure(behavior, "scaleUp"),
            Some(0),
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]),
        );
        // The scale-down window stays unset: the controller's flag supplies it.
        scaling_rules(
            ensure(behavior, "scaleDown"),
            None,
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
        );
    }
}

fn scaling_rules(rules: &mut Map<String, Value>, window: Option<i64>, policies: Value) {
    if let Some(w) = window {
        set(rules, "stabilizationWindowSeconds", json!(w));
    }
    set(rules, "selectPolicy", json!("Max"));
    set(rules, "policies", policies);
}
