//! Subresources other than `status`: `scale` (as autoscaling/v1 Scale), pod `binding`,
//! namespace `finalize`; the node-backed ones (`log`, `exec`, …) go to `node_proxy`.

use http::Response;
use serde_json::{Value, json};

use crate::codec::{self, PatchType};
use crate::error::{ApiError, ApiResult};
use crate::http::Body;
use crate::object::{meta, meta_str};
use crate::rest::{self, Ctx};

/// `spec.selector` as the label-selector string a Scale reports.
fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    let labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .or_else(|| {
            sel.as_object()
                .filter(|_| sel.get("matchExpressions").is_none())
        });
    if let Some(m) = labels {
        for (k, v) in m {
            if let Some(v) = v.as_str() {
                parts.push(format!("{k}={v}"));
            }
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e["operator"].as_str().unwrap_or_default() {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.sort();
    parts.join(",")
}

/// Reads `a.b.c` (a CRD's `.spec.replicas` style path) from an object.
fn at_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(obj, |cur, seg| cur.get(seg))
}

fn set_path(obj: &mut Value, path: &str, v: Value) {
    let segs: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cur = obj;
    for seg in &segs[..segs.len().saturating_sub(1)] {
        if !cur.get(*seg).is_some_and(Value::is_object) {
            cur[*seg] = json!({});
        }
        cur = &mut cur[*seg];
    }
    if let Some(last) = segs.last() {
        cur[*last] = v;
    }
}

fn scale_of(ctx: &Ctx<'_>, obj: &Value) -> Value {
    let m = meta(obj).cloned().unwrap_or_default();
    let (replicas, status_replicas, selector) = match &ctx.res.custom {
        Some(c) => {
            let (spec_path, status_path, sel_path) = c.scale.clone().unwrap_or_default();
            (
                at_path(obj, &spec_path)
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                at_path(obj, &status_path)
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                sel_path
                    .and_then(|p| at_path(obj, &p).and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default(),
            )
        }
        None => (
            obj["spec"]["replicas"].as_i64().unwrap_or(1),
            obj["status"]["replicas"].as_i64().unwrap_or(0),
            selector_string(&obj["spec"]["selector"]),
        ),
    };
    let mut metadata = serde_json::Map::new();
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = m.get(f) {
            metadata.insert(f.into(), v.clone());
        }
    }
    let mut status = json!({ "replicas": status_replicas });
    if !selector.is_empty() {
        status["selector"] = json!(selector);
    }
    json!({ "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": metadata, "spec": { "replicas": replicas }, "status": status })
}

pub async fn scale(ctx: &Ctx<'_>, verb: &str) -> ApiResult<Response<Body>> {
    let name = ctx.name.clone().unwrap_or_default();
    let (current, _) = rest::read(ctx, &name)?;
    let current_scale = scale_of(ctx, &current);
    let wanted = match verb {
        "get" => return Ok(crate::http::json(200, &current_scale)),
        "update" => codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?,
        "patch" => {
            let ty = codec::patch_type(ctx.req.header("content-type"))?;
            let patch = codec::decode_patch(ty, &ctx.req.body)?;
            match ty {
                PatchType::Json => {
                    let mut doc = current_scale.clone();
                    api::patch::json::apply(&mut doc, &patch)
                        .map_err(|e| ApiError::new(e.http_code(), "BadRequest", e.to_string()))?;
                    doc
                }
                PatchType::Merge | PatchType::Apply => {
                    api::patch::merge::apply(&current_scale, &patch)
                }
                PatchType::Strategic => api::patch::strategic::apply(&current_scale, &patch, None)
                    .map_err(|e| ApiError::new(e.http_code(), "BadRequest", e.to_string()))?,
            }
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    let replicas = wanted["spec"]["replicas"].as_i64().ok_or_else(|| {
        ApiError::invalid(
            &ctx.target(&name),
            &[api::validation::FieldError::required("spec.replicas", "")],
        )
    })?;
    if replicas < 0 || replicas > i64::from(i32::MAX) {
        return Err(ApiError::invalid(
            &ctx.target(&name),
            &[api::validation::FieldError::invalid(
                "spec.replicas",
                json!(replicas),
                "must be greater than or equal to 0",
            )],
        ));
    }
    let pinned = meta_str(&wanted, "resourceVersion")
        .filter(|r| !r.is_empty())
        .map(str::to_string);
    let spec_path = ctx
        .res
        .custom
        .as_ref()
        .and_then(|c| c.scale.as_ref())
        .map(|s| s.0.clone())
        .unwrap_or_else(|| ".spec.replicas".into());
    let updated = rest::modify(ctx, &name, |obj| {
        if let Some(rv) = &pinned
            && meta_str(obj, "resourceVersion") != Some(rv.as_str())
        {
            return Err(ApiError::modified(&ctx.target(&name)));
        }
        set_path(obj, &spec_path, json!(replicas));
        Ok(())
    })
    .await?;
    Ok(crate::http::json(200, &scale_of(ctx, &updated)))
}

pub async fn other(ctx: &Ctx<'_>, sub: &str, verb: &str) -> ApiResult<Response<Body>> {
    let name = ctx.name.clone().unwrap_or_default();
    match (ctx.res.kind.as_str(), sub, verb) {
        ("Pod", "binding", "create") => bind(ctx, &name).await,
        ("Pod", "eviction", "create") => crate::eviction::evict(ctx, &name).await,
        ("Namespace", "finalize", "update") => finalize(ctx, &name).await,
        ("Pod", "log" | "exec" | "attach" | "portforward" | "proxy", _) => {
            crate::node_proxy::handle(ctx, sub, &name).await
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the {sub} subresource of {} is not served yet",
            ctx.res.plural
        ))),
    }
}

/// Binds a pod to a node: sets `spec.nodeName` once and marks it scheduled.
pub async fn bind(ctx: &Ctx<'_>, pod_name: &str) -> ApiResult<Response<Body>> {
    let binding = codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?;
    let node = binding["target"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            &ctx.target(pod_name),
            &[api::validation::FieldError::required("target.name", "")],
        ));
    }
    let annotations = binding["metadata"]["annotations"].as_object().cloned();
    let now = crate::object::now_rfc3339();
    rest::modify_with(ctx, pod_name, false, |pod| {
        if crate::object::is_deleting(pod) {
            return Err(ApiError::conflict(&ctx.target(pod_name), "pod is being deleted, cannot be assigned to a host"));
        }
        if let Some(existing) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(&ctx.target(pod_name), &format!("pod {pod_name} is already assigned to node \"{existing}\"")));
        }
        pod["spec"]["nodeName"] = json!(node);
        if let Some(a) = &annotations {
            let m = crate::object::meta_mut(pod);
            let entry = m.entry("annotations").or_insert(json!({}));
            for (k, v) in a {
                entry[k] = v.clone();
            }
        }
        let conds = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
        conds.push(json!({ "type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now }));
        pod["status"]["conditions"] = Value::Array(conds);
        Ok(())
    })
    .await?;
    Ok(crate::http::json(
        201,
        &crate::error::success_status(json!({ "name": pod_name, "kind": "pods" })),
    ))
}

/// `namespaces/<name>/finalize`: the namespace controller clears `spec.finalizers` here.
async fn finalize(ctx: &Ctx<'_>, name: &str) -> ApiResult<Response<Body>> {
    let body = codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?;
    let finalizers = body["spec"]["finalizers"].clone();
    let updated = rest::modify(ctx, name, |ns| {
        ns["spec"]["finalizers"] = if finalizers.is_null() {
            json!([])
        } else {
            finalizers.clone()
        };
        Ok(())
    })
    .await?;
    // A deleting namespace with nothing left to finalize is removed.
    if crate::object::is_deleting(&updated) && crate::object::fully_finalized(&updated) {
        let opts = rest::DeleteOptions {
            grace: None,
            propagation: None,
            precondition_uid: None,
            precondition_rv: None,
        };
        let (_, obj) = rest::delete_one(ctx, name, &opts).await?;
        return Ok(crate::http::json(200, &obj));
    }
    Ok(crate::http::json(200, &updated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_render_like_upstream() {
        assert_eq!(
            selector_string(&json!({"matchLabels": {"app": "web", "a": "b"}})),
            "a=b,app=web"
        );
        assert_eq!(
            selector_string(
                &json!({"matchExpressions": [{"key": "t", "operator": "In", "values": ["x", "y"]}, {"key": "g", "operator": "DoesNotExist"}]})
            ),
            "!g,t in (x,y)"
        );
        assert_eq!(selector_string(&json!({"app": "rc"})), "app=rc");
    }
}
