//! Built-in admission and per-kind write hooks: what upstream's admission plugins and
//! registry strategies add around a write (service accounts on pods, graceful pod deletion,
//! CRD status and the resources a CRD serves).

use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::rest::Ctx;

/// Mutations on create, after validation (upstream runs mutating admission before; these
/// only fill server-owned fields).
pub fn on_create(ctx: &Ctx<'_>, obj: &mut Value) -> ApiResult<()> {
    match (ctx.res.group.as_str(), ctx.res.kind.as_str()) {
        ("", "Pod") => {
            // ServiceAccount admission: every pod runs as an account, `default` unless named.
            if obj["spec"]["serviceAccountName"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                obj["spec"]["serviceAccountName"] = json!("default");
            }
            if obj["spec"]["serviceAccount"].is_null() {
                obj["spec"]["serviceAccount"] = obj["spec"]["serviceAccountName"].clone();
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::crd::set_status(obj),
        _ => {}
    }
    Ok(())
}

/// After a successful write.
pub fn after_write(ctx: &Ctx<'_>, _obj: &Value) {
    if ctx.res.group == "apiextensions.k8s.io"
        && let Err(e) = crate::crd::reload(ctx.server)
    {
        tracing::warn!("reloading custom resources failed: {e:#}");
    }
}

/// After an object was removed from the store.
pub fn after_delete(ctx: &Ctx<'_>, obj: &Value) {
    if ctx.res.group == "apiextensions.k8s.io" {
        crate::crd::remove_instances(ctx.server, obj);
        after_write(ctx, obj);
    }
}

/// The grace period a delete waits for: pods on a node terminate gracefully (the kubelet
/// finishes the deletion); everything else is deleted at once.
pub fn grace_period(ctx: &Ctx<'_>, obj: &Value, requested: Option<i64>) -> Option<i64> {
    if !(ctx.res.group.is_empty() && ctx.res.kind == "Pod") {
        return None;
    }
    let scheduled = obj["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let terminal = matches!(
        obj["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if !scheduled || terminal {
        return Some(0);
    }
    let g = requested
        .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30);
    // Upstream turns a requested 0 into 1 unless forced; the kubelet then removes the pod.
    Some(if g == 0 && requested == Some(0) {
        0
    } else {
        g.max(1)
    })
}

/// The pod's QoS class, as upstream computes it from requests and limits of all containers.
pub fn qos_class(pod: &Value) -> &'static str {
    let spec = &pod["spec"];
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| spec[*f].as_array().into_iter().flatten())
        .collect();
    let (mut any, mut guaranteed) = (false, true);
    for c in containers {
        let requests = c["resources"]["requests"].as_object();
        let limits = c["resources"]["limits"].as_object();
        let relevant = |m: Option<&serde_json::Map<String, Value>>, k: &str| {
            m.and_then(|m| m.get(k)).filter(|v| !is_zero(v)).cloned()
        };
        for r in ["cpu", "memory"] {
            let (req, lim) = (relevant(requests, r), relevant(limits, r));
            any |= req.is_some() || lim.is_some();
            match (&req, &lim) {
                (_, None) => guaranteed = false,
                (Some(q), Some(l)) if !same_quantity(q, l) => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn quantity(v: &Value) -> Option<api::validation::quantity::Quantity> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

fn is_zero(v: &Value) -> bool {
    quantity(v).is_some_and(|q| q.is_zero())
}

fn same_quantity(a: &Value, b: &Value) -> bool {
    match (quantity(a), quantity(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_classes() {
        let pod = |res: Value| json!({"spec": {"containers": [{"name": "c", "resources": res}]}});
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&pod(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(json!({"limits": {"cpu": "1"}}))),
            "Burstable"
        );
    }
}
