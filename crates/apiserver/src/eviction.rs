//! The pod `eviction` subresource (`kubectl drain`): deletes a pod only when its
//! PodDisruptionBudget allows it, decrementing `status.disruptionsAllowed` and recording the
//! pod in `status.disruptedPods` with a compare-and-swap write, as upstream's eviction REST
//! does; otherwise 429 so the client retries later.

use http::Response;
use serde_json::{Value, json};

use crate::codec;
use crate::error::{ApiError, ApiResult};
use crate::http::Body;
use crate::object::{meta, meta_str};
use crate::rest::{self, Ctx};

/// Upstream refuses evictions when this many approved evictions are unconfirmed.
const MAX_DISRUPTED_PODS: usize = 2000;
/// Attempts at a conflicting write before giving up (upstream's EvictionsRetry steps).
const RETRIES: usize = 20;

const TOO_MANY: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Whether a label selector object (`matchLabels`, `matchExpressions`) selects `labels`. A
/// missing or empty selector selects nothing, as for eviction and the disruption controller.
pub fn selector_matches(sel: &Value, labels: Option<&serde_json::Map<String, Value>>) -> bool {
    let match_labels = sel["matchLabels"].as_object();
    let exprs = sel["matchExpressions"].as_array();
    if match_labels.is_none_or(|m| m.is_empty()) && exprs.is_none_or(|e| e.is_empty()) {
        return false;
    }
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == v.as_str());
    let exprs_ok = exprs.into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e["operator"].as_str().unwrap_or_default() {
            "In" => get(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => get(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => get(key).is_some(),
            "DoesNotExist" => get(key).is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether the pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Pods whose eviction disrupts nothing: finished, not started, or already terminating.
fn can_ignore_pdb(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed" | "Pending")
    ) || crate::object::is_deleting(pod)
}

/// Whether the delete must be pinned to the pod version the decision was made on (so the pod
/// cannot have become ready in between).
fn should_enforce_rv(pod: &Value) -> bool {
    !matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) && !crate::object::is_deleting(pod)
}

fn too_many_requests(message: String, retry_after: i64) -> ApiError {
    let mut details = json!({ "causes": [{ "reason": "DisruptionBudget", "message": message }] });
    if retry_after > 0 {
        details["retryAfterSeconds"] = json!(retry_after);
    }
    ApiError::new(429, "TooManyRequests", TOO_MANY).with_details(details)
}

fn still_processing(pdb: &str) -> ApiError {
    too_many_requests(
        format!("The disruption budget {pdb} is still being processed by the server."),
        10,
    )
}

fn pdb_forbidden(pdb: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!(
        "poddisruptionbudget.policy \"{pdb}\" is forbidden: {why}"
    ))
    .with_details(json!({ "name": pdb, "group": "policy", "kind": "poddisruptionbudget" }))
}

/// The delete options an Eviction carries.
struct EvictOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    rv: Option<String>,
    dry_run: bool,
}

impl EvictOptions {
    fn to_delete(&self, pinned_rv: Option<&str>) -> rest::DeleteOptions {
        rest::DeleteOptions {
            grace: self.grace,
            propagation: self.propagation.clone(),
            precondition_uid: self.uid.clone(),
            precondition_rv: self.rv.clone().or(pinned_rv.map(str::to_string)),
        }
    }
}

fn evict_options(ctx: &Ctx<'_>, body: &Value) -> ApiResult<EvictOptions> {
    let d = &body["deleteOptions"];
    let body_dry: Vec<&str> = d["dryRun"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let query_dry: Vec<&str> = ctx.req.query.all("dryRun").collect();
    if !body_dry.is_empty() && !query_dry.is_empty() && body_dry != query_dry {
        return Err(ApiError::bad_request(format!(
            "Non-matching dry-run options in request and content: {query_dry:?} and {body_dry:?}"
        )));
    }
    let propagation = d["propagationPolicy"].as_str().map(str::to_string);
    if let Some(p) = &propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::bad_request(format!(
            "unsupported propagationPolicy {p:?}: must be Foreground, Background or Orphan"
        )));
    }
    Ok(EvictOptions {
        grace: d["gracePeriodSeconds"].as_i64(),
        propagation,
        uid: d["preconditions"]["uid"].as_str().map(str::to_string),
        rv: d["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        dry_run: body_dry.contains(&"All") || query_dry.contains(&"All"),
    })
}

fn success() -> Response<Body> {
    crate::http::json(
        201,
        &json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success" }),
    )
}

/// Deletes the pod, unless this is a dry run (then the decision alone is the answer).
async fn delete_pod(
    ctx: &Ctx<'_>,
    name: &str,
    opts: &EvictOptions,
    pinned: Option<&str>,
) -> ApiResult<()> {
    if opts.dry_run {
        let (pod, _) = rest::read(ctx, name)?;
        if let Some(rv) = opts.rv.as_deref().or(pinned)
            && meta_str(&pod, "resourceVersion") != Some(rv)
        {
            return Err(ApiError::conflict(
                &ctx.target(name),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        return Ok(());
    }
    rest::delete_one(ctx, name, &opts.to_delete(pinned))
        .await
        .map(|_| ())
}

/// `POST pods/<name>/eviction`.
pub async fn evict(ctx: &Ctx<'_>, name: &str) -> ApiResult<Response<Body>> {
    let body = codec::decode_object(ctx.req.header("content-type"), &ctx.req.body)?;
    if let Some(kind) = body["kind"].as_str()
        && kind != "Eviction"
    {
        return Err(ApiError::bad_request(format!(
            "not a Eviction object: {kind}"
        )));
    }
    if meta_str(&body, "name").unwrap_or_default() != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let opts = evict_options(ctx, &body)?;

    // Pods that disrupt nothing are deleted without consulting budgets.
    let mut pod = Value::Null;
    for _ in 0..RETRIES {
        let (current, _) = rest::read(ctx, name)?;
        if !can_ignore_pdb(&current) {
            pod = current;
            break;
        }
        let pinned = should_enforce_rv(&current)
            .then(|| meta_str(&current, "resourceVersion").map(str::to_string))
            .flatten();
        match delete_pod(ctx, name, &opts, pinned.as_deref()).await {
            Ok(()) => return Ok(success()),
            Err(e) if e.code == 409 && opts.rv.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    if pod.is_null() {
        return Err(ApiError::modified(&ctx.target(name)));
    }

    let ns = ctx.ns.clone().unwrap_or_default();
    let pdb_res = ctx
        .server
        .resources
        .get("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not registered"))?;
    let labels = meta(&pod)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object);
    let pdbs: Vec<Value> =
        crate::admission::list_prefix(ctx.server, &pdb_res.ns_prefix(Some(&ns)))?
            .into_iter()
            .filter(|p| selector_matches(&p["spec"]["selector"], labels))
            .collect();
    if pdbs.len() > 1 {
        return Err(ApiError::new(
            500,
            "",
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        ));
    }
    let pod_rv = meta_str(&pod, "resourceVersion").map(str::to_string);
    let Some(pdb) = pdbs.first() else {
        delete_pod(ctx, name, &opts, None).await?;
        return Ok(success());
    };
    let pdb_name = crate::object::name(pdb).to_string();

    // An unready pod does not count as healthy: evicting it costs the budget nothing when
    // the policy says so or the budget is met anyway.
    let status = &pdb["status"];
    let unhealthy_free = !pod_ready(&pod)
        && (pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
            || (status["currentHealthy"].as_i64().unwrap_or(0)
                >= status["desiredHealthy"].as_i64().unwrap_or(0)
                && status["desiredHealthy"].as_i64().unwrap_or(0) > 0));
    if unhealthy_free {
        return match delete_pod(ctx, name, &opts, pod_rv.as_deref()).await {
            Ok(()) => Ok(success()),
            Err(e) if e.code == 409 && opts.rv.is_none() => Err(still_processing(&pdb_name)),
            Err(e) => Err(e),
        };
    }

    check_and_decrement(
        ctx,
        &pdb_res.key(Some(&ns), &pdb_name),
        &pdb_name,
        name,
        opts.dry_run,
    )
    .await?;
    delete_pod(ctx, name, &opts, None).await?;
    Ok(success())
}

/// Takes one disruption from the budget with a compare-and-swap write, re-reading on
/// conflicts; 429 when none is left.
async fn check_and_decrement(
    ctx: &Ctx<'_>,
    key: &str,
    pdb_name: &str,
    pod_name: &str,
    dry_run: bool,
) -> ApiResult<()> {
    let target = crate::error::Target {
        group: "policy".into(),
        resource: "poddisruptionbudgets".into(),
        kind: "PodDisruptionBudget".into(),
        name: pdb_name.into(),
    };
    for _ in 0..RETRIES {
        let kv = ctx
            .server
            .store
            .get(key)
            .map_err(rest::store_error)?
            .ok_or_else(|| ApiError::not_found(&target))?;
        let mut pdb: Value = serde_json::from_slice(&kv.value).map_err(|e| {
            ApiError::internal(format!(
                "stored PodDisruptionBudget {pdb_name} is unreadable: {e}"
            ))
        })?;
        let status = &pdb["status"];
        let generation = meta(&pdb)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
            return Err(still_processing(pdb_name));
        }
        let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed < 0 {
            return Err(pdb_forbidden(
                pdb_name,
                "pdb disruptions allowed is negative",
            ));
        }
        if status["disruptedPods"]
            .as_object()
            .is_some_and(|m| m.len() > MAX_DISRUPTED_PODS)
        {
            return Err(pdb_forbidden(
                pdb_name,
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            return Err(too_many_requests(
                format!(
                    "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                    status["desiredHealthy"].as_i64().unwrap_or(0),
                    status["currentHealthy"].as_i64().unwrap_or(0)
                ),
                0,
            ));
        }
        if dry_run {
            return Ok(());
        }
        let now = crate::object::now_rfc3339();
        pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if allowed - 1 == 0 {
            set_disruption_condition(&mut pdb, false, &now);
        }
        if !pdb["status"]["disruptedPods"].is_object() {
            pdb["status"]["disruptedPods"] = json!({});
        }
        pdb["status"]["disruptedPods"][pod_name] = json!(now);
        match ctx
            .server
            .store
            .update(key, pdb, Some(kv.mod_revision))
            .await
        {
            Ok(_) => return Ok(()),
            Err(store::Error::Conflict { .. }) => continue,
            Err(store::Error::NotFound { .. }) => return Err(ApiError::not_found(&target)),
            Err(e) => return Err(rest::store_error(e)),
        }
    }
    Err(ApiError::timeout(format!(
        "couldn't update PodDisruptionBudget \"{pdb_name}\" due to conflicts"
    )))
}

/// Sets the `DisruptionAllowed` condition (upstream's `UpdateDisruptionAllowedCondition`),
/// changing `lastTransitionTime` only when the status flips.
pub fn set_disruption_condition(pdb: &mut Value, allowed: bool, now: &str) {
    let (status, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let observed = pdb["status"]["observedGeneration"].as_i64().unwrap_or(0);
    let mut conds: Vec<Value> = pdb["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let existing = conds.iter_mut().find(|c| c["type"] == "DisruptionAllowed");
    match existing {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["observedGeneration"] = json!(observed);
            if c["message"].is_null() {
                c["message"] = json!("");
            }
        }
        None => conds.push(json!({
            "type": "DisruptionAllowed", "status": status, "reason": reason, "message": "",
            "observedGeneration": observed, "lastTransitionTime": now,
        })),
    }
    pdb["status"]["conditions"] = Value::Array(conds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = json!({"app": "web", "tier": "front"});
        let l = labels.as_object();
        let cases = [
            (json!({}), false),
            (Value::Null, false),
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "x"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}),
                false,
            ),
            (
                json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "gone", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "gone", "operator": "Exists"}]}),
                false,
            ),
        ];
        for (sel, want) in cases {
            assert_eq!(selector_matches(&sel, l), want, "{sel}");
        }
    }
}
