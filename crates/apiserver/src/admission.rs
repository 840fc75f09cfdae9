//! Built-in admission and per-kind write hooks: what upstream's admission plugins and
//! registry strategies add around a write (service accounts, default tolerations, priority,
//! LimitRanger and ResourceQuota on create, graceful pod deletion, CRD status and the
//! resources a CRD serves, Node pod CIDRs that are set once).
//!
//! Plugins run in upstream's order: mutations (LimitRanger defaults, ServiceAccount,
//! DefaultTolerationSeconds, Priority), then checks (LimitRanger min/max, ResourceQuota).
//!
//! ResourceQuota checks usage computed live from the store plus the new object, not
//! `status.used`: upstream reads `status.used` and CAS-writes it from admission to serialize
//! concurrent creates, but our hooks run synchronously inside the create; counting live is
//! exact except for two creates racing in the same instant (both may pass). The quota
//! controller keeps `status.used` for readers.

use std::collections::BTreeMap;

use api::validation::FieldError;
use api::validation::quantity::{Format, Quantity};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::object::{meta_mut, meta_str};
use crate::rest::Ctx;
use crate::server::ApiServer;

/// Mutations and checks on create, after validation (upstream runs mutating admission
/// before validation; mutated pods are validated again here).
pub fn on_create(ctx: &Ctx<'_>, obj: &mut Value) -> ApiResult<()> {
    match (ctx.res.group.as_str(), ctx.res.kind.as_str()) {
        ("", "Pod") => {
            let before = obj["spec"].clone();
            let ranges = limit_ranges(ctx)?;
            default_pod_resources(&ranges, obj);
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
            add_default_tolerations(
                obj,
                ctx.server.default_toleration_seconds,
                ctx.server.default_unreachable_toleration_seconds,
            );
            resolve_priority(ctx, obj)?;
            if obj["spec"] != before {
                revalidate(ctx, obj)?;
                obj["status"]["qosClass"] = json!(qos_class(obj));
            }
            check_pod_limits(&ranges, obj).map_err(|e| forbidden(ctx, obj, &e))?;
        }
        ("", "PersistentVolumeClaim") => {
            let ranges = limit_ranges(ctx)?;
            check_pvc_limits(&ranges, obj).map_err(|e| forbidden(ctx, obj, &e))?;
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::crd::set_status(obj),
        ("", "Node") => check_pod_cidrs(ctx, None, obj)?,
        _ => {}
    }
    check_quota(ctx, obj)
}

/// Checks on update, after validation.
pub fn on_update(ctx: &Ctx<'_>, old: &Value, new: &mut Value) -> ApiResult<()> {
    if ctx.res.group.is_empty() && ctx.res.kind == "Node" {
        check_pod_cidrs(ctx, Some(old), new)?;
    }
    Ok(())
}

// ---- Node pod CIDRs ----

fn pod_cidrs(node: &Value) -> Vec<String> {
    let list: Vec<String> = node["spec"]["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    if !list.is_empty() {
        return list;
    }
    match node["spec"]["podCIDR"].as_str() {
        Some(c) if !c.is_empty() => vec![c.to_string()],
        _ => Vec::new(),
    }
}

/// A Node's pod CIDRs as upstream validates them: `podCIDR` mirrors `podCIDRs[0]` (v1
/// conversion), each is a CIDR, at most one per IP family, and once set they never change
/// (the node IPAM controller assigns them once; routes and pod addresses depend on them).
fn check_pod_cidrs(ctx: &Ctx<'_>, old: Option<&Value>, node: &mut Value) -> ApiResult<()> {
    let cidrs = pod_cidrs(node);
    if let Some(spec) = node.get_mut("spec").and_then(Value::as_object_mut)
        && let Some(first) = cidrs.first()
    {
        spec.insert("podCIDR".into(), json!(first));
        spec.insert("podCIDRs".into(), json!(cidrs));
    }
    let mut errs = Vec::new();
    let mut families = Vec::new();
    for (i, cidr) in cidrs.iter().enumerate() {
        match cidr.parse::<ipnet::IpNet>() {
            Ok(net) => families.push(matches!(net, ipnet::IpNet::V4(_))),
            Err(_) => errs.push(FieldError::invalid(
                format!("spec.podCIDRs[{i}]"),
                json!(cidr),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            )),
        }
    }
    if cidrs.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        errs.push(FieldError::invalid(
            "spec.podCIDRs",
            json!(cidrs),
            "may specify no more than one CIDR for each IP family",
        ));
    }
    if let Some(old) = old {
        let before = pod_cidrs(old);
        if !before.is_empty() && before != cidrs {
            errs.push(FieldError::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &ctx.target(crate::object::name(node)),
            &errs,
        ))
    }
}

/// Validation again after admission changed the spec (a defaulted limit below a request).
fn revalidate(ctx: &Ctx<'_>, obj: &Value) -> ApiResult<()> {
    let errs = api::validation::validate(
        &ctx.res.group,
        &ctx.res.version,
        &ctx.res.kind,
        ctx.res.namespaced,
        obj,
        None,
    );
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &ctx.target(crate::object::name(obj)),
            &errs,
        ))
    }
}

/// Upstream's `admission.NewForbidden`: `pods "x" is forbidden: <why>`.
fn forbidden(ctx: &Ctx<'_>, obj: &Value, why: &str) -> ApiError {
    let t = ctx.target(crate::object::name(obj));
    let mut details = json!({ "name": t.name, "kind": t.resource });
    if !t.group.is_empty() {
        details["group"] = json!(t.group);
    }
    ApiError::forbidden(format!(
        "{} \"{}\" is forbidden: {why}",
        t.group_resource(),
        t.name
    ))
    .with_details(details)
}

/// Every stored object under a key prefix (unreadable ones are skipped: they were written by
/// this server, so this only guards against corruption).
pub(crate) fn list_prefix(server: &ApiServer, prefix: &str) -> ApiResult<Vec<Value>> {
    let listed = server
        .store
        .list(&store::ListOptions {
            prefix,
            ..Default::default()
        })
        .map_err(crate::rest::store_error)?;
    Ok(listed
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

pub(crate) fn stored_prefix(group: &str, plural: &str, ns: Option<&str>) -> String {
    let g = if group.is_empty() { "core" } else { group };
    match ns {
        Some(ns) => format!("/registry/{g}/{plural}/{ns}/"),
        None => format!("/registry/{g}/{plural}/"),
    }
}

// ---- DefaultTolerationSeconds ----

const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Adds NoExecute tolerations for not-ready and unreachable nodes unless the pod already
/// tolerates them (an empty key or effect tolerates every taint or effect).
pub fn add_default_tolerations(pod: &mut Value, not_ready_seconds: i64, unreachable_seconds: i64) {
    let existing = pod["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tolerates = |taint: &str| {
        existing.iter().any(|t| {
            let key = t["key"].as_str().unwrap_or_default();
            let effect = t["effect"].as_str().unwrap_or_default();
            (key == taint || key.is_empty()) && (effect == "NoExecute" || effect.is_empty())
        })
    };
    let mut out = existing.clone();
    for (taint, seconds) in [
        (NOT_READY_TAINT, not_ready_seconds),
        (UNREACHABLE_TAINT, unreachable_seconds),
    ] {
        if !tolerates(taint) {
            out.push(json!({ "key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds }));
        }
    }
    if out.len() != existing.len() {
        pod["spec"]["tolerations"] = Value::Array(out);
    }
}

// ---- Priority ----

/// The classes every cluster has (upstream creates them at start-up).
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

fn system_priority_class(name: &str, value: i64, description: &str) -> Value {
    json!({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": { "name": name }, "value": value, "description": description,
        "globalDefault": false, "preemptionPolicy": "PreemptLowerPriority",
    })
}

/// Creates the system priority classes when missing, like upstream's
/// `scheduling/bootstrap-system-priority-classes` post-start hook.
pub async fn bootstrap_priority_classes(server: &ApiServer) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let res = server
        .resources
        .get("scheduling.k8s.io", "v1", "priorityclasses")
        .context("priorityclasses are not registered")?;
    for (name, value, description) in SYSTEM_PRIORITY_CLASSES {
        let key = res.key(None, name);
        if server.store.get(&key)?.is_some() {
            continue;
        }
        let mut obj = system_priority_class(name, *value, description);
        crate::rest::prepare_new(&res, &mut obj, name, None);
        api::defaults::apply("scheduling.k8s.io", "v1", "PriorityClass", &mut obj);
        match server.store.create(&key, obj).await {
            Ok(_) | Err(store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e).context("creating a system priority class"),
        }
    }
    Ok(())
}

fn priority_class(server: &ApiServer, name: &str) -> ApiResult<Option<Value>> {
    let key = format!(
        "{}{name}",
        stored_prefix("scheduling.k8s.io", "priorityclasses", None)
    );
    if let Some(kv) = server.store.get(&key).map_err(crate::rest::store_error)? {
        return serde_json::from_slice(&kv.value).map(Some).map_err(|e| {
            ApiError::internal(format!("stored PriorityClass {name} is unreadable: {e}"))
        });
    }
    Ok(SYSTEM_PRIORITY_CLASSES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(n, v, d)| system_priority_class(n, *v, d)))
}

/// Priority admission: `spec.priority` and `spec.preemptionPolicy` from the named class, or
/// from the global default class (lowest value wins among several), or 0.
fn resolve_priority(ctx: &Ctx<'_>, pod: &mut Value) -> ApiResult<()> {
    let named = pod["spec"]["priorityClassName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let class = if named.is_empty() {
        let classes = list_prefix(
            ctx.server,
            &stored_prefix("scheduling.k8s.io", "priorityclasses", None),
        )?;
        let default = classes
            .into_iter()
            .filter(|c| c["globalDefault"].as_bool() == Some(true))
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0));
        if let Some(c) = &default {
            pod["spec"]["priorityClassName"] = json!(crate::object::name(c));
        }
        default
    } else {
        match priority_class(ctx.server, &named)? {
            Some(c) => Some(c),
            None => {
                return Err(forbidden(
                    ctx,
                    pod,
                    &format!("no PriorityClass with name {named} was found"),
                ));
            }
        }
    };
    let priority = class
        .as_ref()
        .and_then(|c| c["value"].as_i64())
        .unwrap_or(0);
    if let Some(given) = pod["spec"]["priority"].as_i64()
        && given != priority
    {
        return Err(forbidden(
            ctx,
            pod,
            &format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
            ),
        ));
    }
    pod["spec"]["priority"] = json!(priority);
    if let Some(policy) = class.as_ref().and_then(|c| c["preemptionPolicy"].as_str()) {
        if let Some(given) = pod["spec"]["preemptionPolicy"].as_str()
            && given != policy
        {
            return Err(forbidden(
                ctx,
                pod,
                &format!(
                    "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
                ),
            ));
        }
        pod["spec"]["preemptionPolicy"] = json!(policy);
    }
    Ok(())
}

// ---- LimitRanger ----

fn limit_ranges(ctx: &Ctx<'_>) -> ApiResult<Vec<Value>> {
    let Some(ns) = ctx.ns.as_deref() else {
        return Ok(Vec::new());
    };
    let mut ranges = list_prefix(ctx.server, &stored_prefix("", "limitranges", Some(ns)))?;
    // Stored ranges are defaulted already; defaulting again is idempotent and covers ranges
    // written before defaulting existed.
    for r in &mut ranges {
        api::defaults::apply("", "v1", "LimitRange", r);
    }
    Ok(ranges)
}

fn limit_items(ranges: &[Value]) -> impl Iterator<Item = &Value> {
    ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().into_iter().flatten())
}

fn resource_list(v: &Value) -> BTreeMap<String, Quantity> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| quantity(v).map(|q| (k.clone(), q)))
                .collect()
        })
        .unwrap_or_default()
}

/// LimitRanger's mutation: default requests and limits of every container from the
/// `Container` limits, noted in the `kubernetes.io/limit-ranger` annotation.
pub fn default_pod_resources(ranges: &[Value], pod: &mut Value) {
    let (mut default_requests, mut default_limits) = (Map::new(), Map::new());
    for item in limit_items(ranges).filter(|i| i["type"] == "Container") {
        if let Some(m) = item["defaultRequest"].as_object() {
            default_requests.extend(m.clone());
        }
        if let Some(m) = item["default"].as_object() {
            default_limits.extend(m.clone());
        }
    }
    if default_requests.is_empty() && default_limits.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    for (field, prefix) in [
        ("initContainers", "init container"),
        ("containers", "container"),
    ] {
        // `get_mut`, not indexing: indexing would insert a null field.
        let Some(containers) = pod
            .get_mut("spec")
            .and_then(|s| s.get_mut(field))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in containers {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
            for (list, defaults, what) in [
                ("requests", &default_requests, "request"),
                ("limits", &default_limits, "limit"),
            ] {
                if !c["resources"][list].is_object() {
                    c["resources"][list] = json!({});
                }
                let mut set = Vec::new();
                if let Some(existing) = c["resources"][list].as_object_mut() {
                    for (k, v) in defaults {
                        if !existing.contains_key(k) {
                            existing.insert(k.clone(), v.clone());
                            set.push(k.clone());
                        }
                    }
                }
                if !set.is_empty() {
                    set.sort();
                    notes.push(format!("{} {what} for {prefix} {name}", set.join(", ")));
                }
            }
        }
    }
    if !notes.is_empty() {
        let m = meta_mut(pod);
        let annotations = m.entry("annotations").or_insert(json!({}));
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

fn min_constraint(
    limit_type: &str,
    resource: &str,
    enforced: &Quantity,
    requests: &BTreeMap<String, Quantity>,
    limits: &BTreeMap<String, Quantity>,
) -> Option<String> {
    let Some(req) = requests.get(resource) else {
        return Some(format!(
            "minimum {resource} usage per {limit_type} is {enforced}.  No request is specified"
        ));
    };
    if req.milli_value() < enforced.milli_value() {
        return Some(format!(
            "minimum {resource} usage per {limit_type} is {enforced}, but request is {req}"
        ));
    }
    match limits.get(resource) {
        Some(lim) if lim.milli_value() < enforced.milli_value() => Some(format!(
            "minimum {resource} usage per {limit_type} is {enforced}, but limit is {lim}"
        )),
        _ => None,
    }
}

fn max_constraint(
    limit_type: &str,
    resource: &str,
    enforced: &Quantity,
    requests: &BTreeMap<String, Quantity>,
    limits: &BTreeMap<String, Quantity>,
) -> Option<String> {
    let Some(lim) = limits.get(resource) else {
        return Some(format!(
            "maximum {resource} usage per {limit_type} is {enforced}.  No limit is specified"
        ));
    };
    if lim.milli_value() > enforced.milli_value() {
        return Some(format!(
            "maximum {resource} usage per {limit_type} is {enforced}, but limit is {lim}"
        ));
    }
    match requests.get(resource) {
        Some(req) if req.milli_value() > enforced.milli_value() => Some(format!(
            "maximum {resource} usage per {limit_type} is {enforced}, but request is {req}"
        )),
        _ => None,
    }
}

fn ratio_constraint(
    limit_type: &str,
    resource: &str,
    enforced: &Quantity,
    requests: &BTreeMap<String, Quantity>,
    limits: &BTreeMap<String, Quantity>,
) -> Option<String> {
    let req = requests.get(resource).map_or(0, Quantity::milli_value);
    let lim = limits.get(resource).map_or(0, Quantity::milli_value);
    if req == 0 {
        return Some(format!(
            "{resource} max limit to request ratio per {limit_type} is {enforced}, but no request is specified or request is 0"
        ));
    }
    if lim == 0 {
        return Some(format!(
            "{resource} max limit to request ratio per {limit_type} is {enforced}, but no limit is specified or limit is 0"
        ));
    }
    // Compared in thousandths like upstream; the ratio itself is shown with six decimals.
    let observed = lim as f64 / req as f64;
    (observed * 1000.0 > enforced.milli_value() as f64).then(|| {
        format!(
            "{resource} max limit to request ratio per {limit_type} is {enforced}, but provided ratio is {observed:.6}"
        )
    })
}

fn check_all(
    limit_type: &str,
    item: &Value,
    requests: &BTreeMap<String, Quantity>,
    limits: &BTreeMap<String, Quantity>,
    errs: &mut Vec<String>,
) {
    for (r, q) in resource_list(&item["min"]) {
        errs.extend(min_constraint(limit_type, &r, &q, requests, limits));
    }
    for (r, q) in resource_list(&item["max"]) {
        errs.extend(max_constraint(limit_type, &r, &q, requests, limits));
    }
    for (r, q) in resource_list(&item["maxLimitRequestRatio"]) {
        errs.extend(ratio_constraint(limit_type, &r, &q, requests, limits));
    }
}

fn aggregate(errs: Vec<String>) -> Result<(), String> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.into_iter().next().unwrap_or_default()),
        _ => Err(format!("[{}]", errs.join(", "))),
    }
}

/// Requests and limits of a pod as LimitRanger sums them: containers add up, an init
/// container counts when it is larger than that sum.
fn pod_totals(pod: &Value, list: &str) -> BTreeMap<String, Quantity> {
    let mut sum: BTreeMap<String, i128> = BTreeMap::new();
    let mut formats: BTreeMap<String, Format> = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, q) in resource_list(&c["resources"][list]) {
            *sum.entry(k.clone()).or_default() += q.milli_value();
            formats.entry(k).or_insert(q.format());
        }
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (k, q) in resource_list(&c["resources"][list]) {
            let e = sum.entry(k.clone()).or_default();
            *e = (*e).max(q.milli_value());
            formats.entry(k).or_insert(q.format());
        }
    }
    sum.into_iter()
        .map(|(k, m)| {
            let binary = formats.get(&k) == Some(&Format::BinarySI);
            let q = Amount { milli: m, binary }.quantity();
            (k, q)
        })
        .collect()
}

/// LimitRanger's check of a pod against `Container` and `Pod` limits.
pub fn check_pod_limits(ranges: &[Value], pod: &Value) -> Result<(), String> {
    let mut errs = Vec::new();
    for item in limit_items(ranges) {
        match item["type"].as_str() {
            Some("Container") => {
                for field in ["containers", "initContainers"] {
                    for c in pod["spec"][field].as_array().into_iter().flatten() {
                        let requests = resource_list(&c["resources"]["requests"]);
                        let limits = resource_list(&c["resources"]["limits"]);
                        check_all("Container", item, &requests, &limits, &mut errs);
                    }
                }
            }
            Some("Pod") => {
                let requests = pod_totals(pod, "requests");
                let limits = pod_totals(pod, "limits");
                check_all("Pod", item, &requests, &limits, &mut errs);
            }
            _ => {}
        }
    }
    aggregate(errs)
}

/// LimitRanger's check of a claim's requested storage against `PersistentVolumeClaim` limits.
pub fn check_pvc_limits(ranges: &[Value], pvc: &Value) -> Result<(), String> {
    let mut errs = Vec::new();
    let requests = resource_list(&pvc["spec"]["resources"]["requests"]);
    for item in limit_items(ranges).filter(|i| i["type"] == "PersistentVolumeClaim") {
        for (r, q) in resource_list(&item["min"]) {
            errs.extend(min_constraint(
                "PersistentVolumeClaim",
                &r,
                &q,
                &requests,
                &BTreeMap::new(),
            ));
        }
        for (r, q) in resource_list(&item["max"]) {
            let t = "PersistentVolumeClaim";
            match requests.get(&r) {
                None => errs.push(format!(
                    "maximum {r} usage per {t} is {q}.  No request is specified"
                )),
                Some(req) if req.milli_value() > q.milli_value() => errs.push(format!(
                    "maximum {r} usage per {t} is {q}, but request is {req}"
                )),
                Some(_) => {}
            }
        }
    }
    aggregate(errs)
}

// ---- ResourceQuota ----

/// A sum of quantities that keeps the binary format of memory-like values for messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub milli: i128,
    pub binary: bool,
}

impl Amount {
    fn of(q: &Quantity) -> Self {
        Amount {
            milli: q.milli_value(),
            binary: q.format() == Format::BinarySI,
        }
    }

    fn count(n: i128) -> Self {
        Amount {
            milli: n * 1000,
            binary: false,
        }
    }

    fn add(self, o: Amount) -> Self {
        Amount {
            milli: self.milli + o.milli,
            binary: if self.milli == 0 {
                o.binary
            } else {
                self.binary
            },
        }
    }

    /// As a quantity in canonical form (`1Gi`, `500m`, `3`).
    pub fn quantity(self) -> Quantity {
        if self.binary && self.milli % 1000 == 0 {
            let v = self.milli / 1000;
            const SUFFIXES: &[&str] = &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
            let mut best = (v, "");
            let mut unit: i128 = 1;
            for s in SUFFIXES {
                unit *= 1024;
                if v % unit == 0 && v.abs() >= unit {
                    best = (v / unit, s);
                }
            }
            if let Ok(q) = Quantity::parse(&format!("{}{}", best.0, best.1)) {
                return q;
            }
        }
        Quantity::from_millis(self.milli)
    }
}

/// Whether a pod still counts against quota: not finished, not past its deletion deadline.
fn pod_counts(pod: &Value) -> bool {
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    match meta_str(pod, "deletionTimestamp").map(|t| t.parse::<jiff::Timestamp>()) {
        Some(Ok(t)) => t > jiff::Timestamp::now(),
        _ => true,
    }
}

fn add_to(usage: &mut BTreeMap<String, Amount>, key: impl Into<String>, a: Amount) {
    let e = usage.entry(key.into()).or_default();
    *e = e.add(a);
}

/// The quota usage of one object of a resource (upstream's evaluators): `count/<resource>`
/// for everything, the legacy names for core kinds, compute resources for pods, storage for
/// claims, load balancers and node ports for services.
pub fn quota_usage(group: &str, plural: &str, obj: &Value) -> BTreeMap<String, Amount> {
    let mut usage = BTreeMap::new();
    if group.is_empty() && plural == "pods" && !pod_counts(obj) {
        return usage;
    }
    let count_key = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    usage.insert(count_key, Amount::count(1));
    if !group.is_empty() {
        return usage;
    }
    if matches!(
        plural,
        "pods"
            | "services"
            | "configmaps"
            | "secrets"
            | "replicationcontrollers"
            | "resourcequotas"
            | "persistentvolumeclaims"
    ) {
        usage.insert(plural.to_string(), Amount::count(1));
    }
    match plural {
        "pods" => {
            for (list, prefixes) in [
                ("requests", &["requests.", ""][..]),
                ("limits", &["limits."][..]),
            ] {
                for (k, q) in pod_totals(obj, list) {
                    let compute = matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage")
                        || k.starts_with("hugepages-");
                    for p in prefixes {
                        if compute || (list == "requests" && p.starts_with("requests")) {
                            add_to(&mut usage, format!("{p}{k}"), Amount::of(&q));
                        }
                    }
                }
            }
        }
        "services" => {
            let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if ty == "LoadBalancer" {
                usage.insert("services.loadbalancers".into(), Amount::count(1));
            }
            if matches!(ty, "LoadBalancer" | "NodePort") {
                let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len);
                usage.insert("services.nodeports".into(), Amount::count(ports as i128));
            }
        }
        "persistentvolumeclaims" => {
            let storage = obj["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(|s| s.parse::<Quantity>().ok());
            let class = obj["spec"]["storageClassName"].as_str().unwrap_or_default();
            if let Some(q) = storage {
                usage.insert("requests.storage".into(), Amount::of(&q));
                if !class.is_empty() {
                    usage.insert(
                        format!("{class}.storageclass.storage.k8s.io/requests.storage"),
                        Amount::of(&q),
                    );
                }
            }
            if !class.is_empty() {
                usage.insert(
                    format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                    Amount::count(1),
                );
            }
        }
        _ => {}
    }
    usage
}

/// Whether a quota's scopes select this object. Scopes only select pods.
pub fn quota_matches(quota: &Value, plural: &str, obj: &Value) -> bool {
    let mut scopes: Vec<(String, String, Vec<String>)> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in quota["spec"]["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let values = e["values"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        scopes.push((
            e["scopeName"].as_str().unwrap_or_default().to_string(),
            e["operator"].as_str().unwrap_or_default().to_string(),
            values,
        ));
    }
    if scopes.is_empty() {
        return true;
    }
    if plural != "pods" {
        return false;
    }
    scopes.iter().all(|(scope, op, values)| {
        let terminating = obj["spec"]["activeDeadlineSeconds"].as_i64().is_some();
        let best_effort = qos_class(obj) == "BestEffort";
        match scope.as_str() {
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            "BestEffort" => best_effort,
            "NotBestEffort" => !best_effort,
            "PriorityClass" => {
                let class = obj["spec"]["priorityClassName"]
                    .as_str()
                    .unwrap_or_default();
                match op.as_str() {
                    "In" => values.iter().any(|v| v == class),
                    "NotIn" => !values.iter().any(|v| v == class),
                    "Exists" => !class.is_empty(),
                    "DoesNotExist" => class.is_empty(),
                    _ => false,
                }
            }
            _ => false,
        }
    })
}

fn pretty(m: &BTreeMap<String, Amount>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", v.quantity()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Resources whose quota obliges every container to state them (upstream's backward
/// compatibility rule), and which container field satisfies each.
const MUST_SPECIFY: &[(&str, &str, &str)] = &[
    ("cpu", "requests", "cpu"),
    ("memory", "requests", "memory"),
    ("requests.cpu", "requests", "cpu"),
    ("requests.memory", "requests", "memory"),
    ("limits.cpu", "limits", "cpu"),
    ("limits.memory", "limits", "memory"),
];

fn pod_constraints(hard: &Map<String, Value>, pod: &Value) -> Result<(), String> {
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for field in ["containers", "initContainers"] {
        for c in pod["spec"][field].as_array().into_iter().flatten() {
            for (res, list, name) in MUST_SPECIFY {
                if hard.contains_key(*res) && c["resources"][*list].get(*name).is_none() {
                    let who = c["name"].as_str().unwrap_or_default().to_string();
                    let e = missing.entry(res).or_default();
                    if !e.contains(&who) {
                        e.push(who);
                    }
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .into_iter()
        .map(|(r, mut names)| {
            names.sort();
            format!("{r} for: {}", names.join(","))
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// ResourceQuota admission: refuses a create that would take any quota of the namespace over
/// its hard limits.
fn check_quota(ctx: &Ctx<'_>, obj: &Value) -> ApiResult<()> {
    let Some(ns) = ctx.ns.as_deref().filter(|_| ctx.res.namespaced) else {
        return Ok(());
    };
    let quotas = list_prefix(ctx.server, &stored_prefix("", "resourcequotas", Some(ns)))?;
    if quotas.is_empty() {
        return Ok(());
    }
    let (group, plural) = (ctx.res.storage_group.as_str(), ctx.res.plural.as_str());
    let delta = quota_usage(group, plural, obj);
    if delta.is_empty() {
        return Ok(());
    }
    let mut siblings: Option<Vec<Value>> = None;
    for quota in &quotas {
        let Some(hard) = quota["spec"]["hard"].as_object() else {
            continue;
        };
        if !quota_matches(quota, plural, obj) {
            continue;
        }
        let qname = crate::object::name(quota);
        if group.is_empty() && plural == "pods" {
            pod_constraints(hard, obj)
                .map_err(|e| forbidden(ctx, obj, &format!("failed quota: {qname}: {e}")))?;
        }
        let constrained: Vec<&String> = delta.keys().filter(|k| hard.contains_key(*k)).collect();
        if constrained.is_empty() {
            continue;
        }
        let siblings = match &mut siblings {
            Some(s) => s,
            None => siblings.insert(list_prefix(ctx.server, &ctx.res.ns_prefix(Some(ns)))?),
        };
        let mut used: BTreeMap<String, Amount> = BTreeMap::new();
        let this_name = crate::object::name(obj);
        for other in siblings.iter() {
            if crate::object::name(other) == this_name || !quota_matches(quota, plural, other) {
                continue;
            }
            for (k, a) in quota_usage(group, plural, other) {
                if hard.contains_key(&k) {
                    add_to(&mut used, k, a);
                }
            }
        }
        let mut failed = Vec::new();
        for k in constrained {
            let Some(limit) = hard.get(k).and_then(quantity) else {
                continue;
            };
            let have = used.get(k).copied().unwrap_or_default();
            if have.add(delta[k]).milli > limit.milli_value() {
                failed.push(k.clone());
            }
        }
        if failed.is_empty() {
            continue;
        }
        let mask = |m: &BTreeMap<String, Amount>| -> BTreeMap<String, Amount> {
            failed
                .iter()
                .map(|k| (k.clone(), m.get(k).copied().unwrap_or_default()))
                .collect()
        };
        let limited: BTreeMap<String, Amount> = failed
            .iter()
            .filter_map(|k| {
                hard.get(k)
                    .and_then(quantity)
                    .map(|q| (k.clone(), Amount::of(&q)))
            })
            .collect();
        return Err(forbidden(
            ctx,
            obj,
            &format!(
                "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                pretty(&mask(&delta)),
                pretty(&mask(&used)),
                pretty(&limited)
            ),
        ));
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
    crate::service_alloc::after_delete(ctx, obj);
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
