//! Conversions between versions that share storage, following upstream's conversion
//! functions: autoscaling/v1 and v2 HorizontalPodAutoscalers (stored as v2), and
//! events.k8s.io/v1 Events (stored as core/v1 Events, so both APIs show every event).

use serde_json::{Value, json};

/// v2 → v1: the CPU utilization metric becomes `targetCPUUtilizationPercentage`.
pub fn hpa_v2_to_v1(mut obj: Value) -> Value {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let cpu_target = spec["metrics"].as_array().and_then(|ms| {
        ms.iter().find(|m| {
            m["type"] == "Resource"
                && m["resource"]["name"] == "cpu"
                && m["resource"]["target"]["type"] == "Utilization"
        })
    });
    let mut v1 =
        json!({ "scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": spec["maxReplicas"] });
    if !spec["minReplicas"].is_null() {
        v1["minReplicas"] = spec["minReplicas"].clone();
    }
    if let Some(m) = cpu_target {
        v1["targetCPUUtilizationPercentage"] =
            m["resource"]["target"]["averageUtilization"].clone();
    }
    obj["spec"] = v1;
    if let Some(status) = obj.get("status").cloned() {
        let mut s = json!({
            "currentReplicas": status["currentReplicas"].as_i64().unwrap_or(0),
            "desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0),
        });
        for f in ["observedGeneration", "lastScaleTime"] {
            if !status[f].is_null() {
                s[f] = status[f].clone();
            }
        }
        let current_cpu = status["currentMetrics"].as_array().and_then(|ms| {
            ms.iter()
                .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
        });
        if let Some(u) = current_cpu
            .map(|m| &m["resource"]["current"]["averageUtilization"])
            .filter(|u| !u.is_null())
        {
            s["currentCPUUtilizationPercentage"] = u.clone();
        }
        obj["status"] = s;
    }
    obj
}

/// v1 → v2: `targetCPUUtilizationPercentage` becomes a Resource metric on cpu.
pub fn hpa_v1_to_v2(mut obj: Value) -> Value {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let mut v2 =
        json!({ "scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": spec["maxReplicas"] });
    if !spec["minReplicas"].is_null() {
        v2["minReplicas"] = spec["minReplicas"].clone();
    }
    if let Some(t) = spec["targetCPUUtilizationPercentage"].as_i64() {
        v2["metrics"] = json!([{ "type": "Resource", "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": t } } }]);
    }
    obj["spec"] = v2;
    if let Some(status) = obj.get("status").cloned() {
        let mut s = json!({
            "currentReplicas": status["currentReplicas"].as_i64().unwrap_or(0),
            "desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0),
        });
        for f in ["observedGeneration", "lastScaleTime"] {
            if !status[f].is_null() {
                s[f] = status[f].clone();
            }
        }
        if let Some(u) = status["currentCPUUtilizationPercentage"].as_i64() {
            s["currentMetrics"] = json!([{ "type": "Resource", "resource": { "name": "cpu", "current": { "averageUtilization": u } } }]);
        }
        obj["status"] = s;
    }
    obj
}

/// Field renames between core/v1 Event (left) and events.k8s.io/v1 Event (right).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(mut obj: Value, from_core: bool) -> Value {
    if let Some(m) = obj.as_object_mut() {
        for (core, v1) in EVENT_FIELDS {
            let (from, to) = if from_core { (core, v1) } else { (v1, core) };
            if let Some(v) = m.remove(*from) {
                m.insert((*to).to_string(), v);
            }
        }
    }
    obj
}

/// core/v1 Event → events.k8s.io/v1 Event.
pub fn core_event_to_events_v1(obj: Value) -> Value {
    rename(obj, true)
}

/// events.k8s.io/v1 Event → core/v1 Event.
pub fn events_v1_to_core_event(obj: Value) -> Value {
    rename(obj, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_round_trips_cpu_target() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"}, "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 80}});
        let v2 = hpa_v1_to_v2(v1.clone());
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(hpa_v2_to_v1(v2)["spec"], v1["spec"]);
    }

    #[test]
    fn events_round_trip() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"},
            "message": "hi", "reason": "Started", "count": 2, "reportingComponent": "kubelet", "type": "Normal"});
        let v1 = core_event_to_events_v1(core.clone());
        assert_eq!(v1["regarding"]["name"], "p");
        assert_eq!(v1["note"], "hi");
        assert_eq!(v1["deprecatedCount"], 2);
        assert_eq!(v1["reportingController"], "kubelet");
        assert_eq!(events_v1_to_core_event(v1), core);
    }
}
