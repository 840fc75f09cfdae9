//! Conversions between versions that share storage: autoscaling/v1 and v2
//! HorizontalPodAutoscalers (stored as v2), following upstream's conversion functions.

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
}
