//! ResourceQuota controller (upstream pkg/controller/resourcequota): keeps every quota's
//! `status.hard` equal to `spec.hard` and recomputes `status.used` for each constrained
//! resource from the objects in the namespace, whenever quotas or the common quota-counted
//! kinds change, and in a periodic full resync (which also catches `count/<resource>` of
//! every other kind).
//!
//! Usage is counted like upstream's evaluators and like the API server's quota admission:
//! `count/<resource>[.<group>]` for every object, the legacy core names (`pods`, `services`,
//! …), compute requests and limits of pods that are not finished, storage of claims, load
//! balancers and node ports of services. Quota scopes select pods only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use api::validation::quantity::{Format, Quantity};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::Value;
use tokio::sync::Notify;

use crate::Context;
use crate::disruption::trigger_on;

/// Upstream `--resource-quota-sync-period`.
pub const RESYNC: Duration = Duration::from_secs(300);

/// A sum of quantities that keeps the binary format of memory-like values.
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

    /// Canonical quantity text (`1Gi`, `500m`, `3`).
    pub fn render(self) -> String {
        if self.binary && self.milli % 1000 == 0 {
            let v = self.milli / 1000;
            let mut best = (v, "");
            let mut unit: i128 = 1;
            for s in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] {
                unit *= 1024;
                if v % unit == 0 && v.abs() >= unit {
                    best = (v / unit, s);
                }
            }
            if let Ok(q) = Quantity::parse(&format!("{}{}", best.0, best.1)) {
                return q.to_string();
            }
        }
        Quantity::from_millis(self.milli).to_string()
    }
}

fn quantity(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

fn add_to(usage: &mut BTreeMap<String, Amount>, key: String, a: Amount) {
    let e = usage.entry(key).or_default();
    *e = e.add(a);
}

/// Whether a pod counts against quota: not finished, not past its deletion deadline.
fn pod_counts(pod: &Value) -> bool {
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    match pod["metadata"]["deletionTimestamp"]
        .as_str()
        .map(|t| t.parse::<jiff::Timestamp>())
    {
        Some(Ok(t)) => t > jiff::Timestamp::now(),
        _ => true,
    }
}

/// Pod requests or limits: containers add up, an init container counts when larger.
fn pod_totals(pod: &Value, list: &str) -> BTreeMap<String, Amount> {
    let mut sum: BTreeMap<String, Amount> = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, v) in c["resources"][list].as_object().into_iter().flatten() {
            if let Some(q) = quantity(v) {
                add_to(&mut sum, k.clone(), Amount::of(&q));
            }
        }
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (k, v) in c["resources"][list].as_object().into_iter().flatten() {
            if let Some(q) = quantity(v) {
                let e = sum.entry(k.clone()).or_default();
                if q.milli_value() > e.milli {
                    *e = Amount::of(&q);
                }
            }
        }
    }
    sum
}

/// The quota usage of one object (group and plural of its resource).
pub fn usage(group: &str, plural: &str, obj: &Value) -> BTreeMap<String, Amount> {
    let mut out = BTreeMap::new();
    if group.is_empty() && plural == "pods" && !pod_counts(obj) {
        return out;
    }
    let count_key = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    out.insert(count_key, Amount::count(1));
    if !group.is_empty() {
        return out;
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
        out.insert(plural.to_string(), Amount::count(1));
    }
    match plural {
        "pods" => {
            for (k, a) in pod_totals(obj, "requests") {
                let compute = matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage");
                if compute {
                    add_to(&mut out, k.clone(), a);
                }
                add_to(&mut out, format!("requests.{k}"), a);
            }
            for (k, a) in pod_totals(obj, "limits") {
                if matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                    add_to(&mut out, format!("limits.{k}"), a);
                }
            }
        }
        "services" => {
            let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if ty == "LoadBalancer" {
                out.insert("services.loadbalancers".into(), Amount::count(1));
            }
            if matches!(ty, "LoadBalancer" | "NodePort") {
                let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len);
                out.insert("services.nodeports".into(), Amount::count(ports as i128));
            }
        }
        "persistentvolumeclaims" => {
            let class = obj["spec"]["storageClassName"].as_str().unwrap_or_default();
            if let Some(q) = quantity(&obj["spec"]["resources"]["requests"]["storage"]) {
                out.insert("requests.storage".into(), Amount::of(&q));
                if !class.is_empty() {
                    out.insert(
                        format!("{class}.storageclass.storage.k8s.io/requests.storage"),
                        Amount::of(&q),
                    );
                }
            }
            if !class.is_empty() {
                out.insert(
                    format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                    Amount::count(1),
                );
            }
        }
        _ => {}
    }
    out
}

fn qos_best_effort(pod: &Value) -> bool {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][*f].as_array().into_iter().flatten())
        .all(|c| {
            ["requests", "limits"].iter().all(|l| {
                ["cpu", "memory"].iter().all(|r| {
                    c["resources"][*l]
                        .get(*r)
                        .and_then(quantity)
                        .is_none_or(|q| q.is_zero())
                })
            })
        })
}

/// Whether the quota's scopes select this object (scopes select pods only).
pub fn matches_scopes(quota: &Value, plural: &str, obj: &Value) -> bool {
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
    let terminating = obj["spec"]["activeDeadlineSeconds"].as_i64().is_some();
    let best_effort = qos_best_effort(obj);
    scopes
        .iter()
        .all(|(scope, op, values)| match scope.as_str() {
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
        })
}

/// Which resource (group, plural) a quota resource name counts.
pub fn counted_resource(name: &str) -> Option<(String, String)> {
    if let Some(rest) = name.strip_prefix("count/") {
        return Some(match rest.split_once('.') {
            Some((plural, group)) => (group.to_string(), plural.to_string()),
            None => (String::new(), rest.to_string()),
        });
    }
    let core = |p: &str| Some((String::new(), p.to_string()));
    match name {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        n if n.starts_with("requests.") && n != "requests.storage" => core("pods"),
        n if n.starts_with("limits.") => core("pods"),
        "services" | "services.loadbalancers" | "services.nodeports" => core("services"),
        "configmaps"
        | "secrets"
        | "replicationcontrollers"
        | "resourcequotas"
        | "persistentvolumeclaims" => core(name),
        "requests.storage" => core("persistentvolumeclaims"),
        n if n.contains(".storageclass.storage.k8s.io/") => core("persistentvolumeclaims"),
        _ => None,
    }
}

/// `status.used` for a quota given the namespace's objects by (group, plural).
pub fn used_for(
    quota: &Value,
    objects: &BTreeMap<(String, String), Vec<Value>>,
) -> BTreeMap<String, String> {
    let hard: Vec<String> = quota["spec"]["hard"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut used: BTreeMap<String, Amount> = BTreeMap::new();
    for name in &hard {
        let Some(res) = counted_resource(name) else {
            continue;
        };
        let mut total = Amount::default();
        for obj in objects.get(&res).into_iter().flatten() {
            if !matches_scopes(quota, &res.1, obj) {
                continue;
            }
            if let Some(a) = usage(&res.0, &res.1, obj).get(name) {
                total = total.add(*a);
            }
        }
        used.insert(name.clone(), total);
    }
    used.into_iter().map(|(k, v)| (k, v.render())).collect()
}

pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let notify = Arc::new(Notify::new());
    let (c, s) = (ctx.client.clone(), ctx.shutdown.clone());
    trigger_on::<ResourceQuota>(c.clone(), notify.clone(), s.clone());
    trigger_on::<Pod>(c.clone(), notify.clone(), s.clone());
    trigger_on::<Service>(c.clone(), notify.clone(), s.clone());
    trigger_on::<ConfigMap>(c.clone(), notify.clone(), s.clone());
    trigger_on::<Secret>(c.clone(), notify.clone(), s.clone());
    trigger_on::<PersistentVolumeClaim>(c.clone(), notify.clone(), s.clone());
    trigger_on::<ReplicationController>(c, notify.clone(), s);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match sync_all(&ctx).await {
            Ok(()) => RESYNC,
            Err(e) => {
                tracing::warn!("resourcequota: {e:#}");
                Duration::from_secs(1)
            }
        };
    }
}

async fn list_values(
    client: &kube::Client,
    ns: &str,
    group: &str,
    plural: &str,
    served: &mut Option<crate::util::ServedResources>,
) -> anyhow::Result<Vec<Value>> {
    let ar = if group.is_empty()
        && matches!(
            plural,
            "pods"
                | "services"
                | "configmaps"
                | "secrets"
                | "replicationcontrollers"
                | "resourcequotas"
                | "persistentvolumeclaims"
        ) {
        ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: String::new(),
            plural: plural.into(),
        }
    } else {
        if served.is_none() {
            *served = Some(
                crate::util::discover(client)
                    .await
                    .context("discovering resources")?,
            );
        }
        let found = served.as_ref().and_then(|s| {
            s.preferred.iter().find(|r| {
                r.resource.group == group
                    && r.resource.plural == plural
                    && r.namespaced
                    && r.supports("list")
            })
        });
        match found {
            Some(r) => r.resource.clone(),
            // Quota on something not served counts nothing.
            None => return Ok(Vec::new()),
        }
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let list = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {plural} in {ns}"))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect())
}

async fn sync_all(ctx: &Context) -> anyhow::Result<()> {
    let quotas = Api::<ResourceQuota>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .context("listing ResourceQuotas")?;
    let mut by_ns: BTreeMap<String, Vec<ResourceQuota>> = BTreeMap::new();
    for q in quotas.items {
        by_ns
            .entry(q.namespace().unwrap_or_default())
            .or_default()
            .push(q);
    }
    let mut served = None;
    for (ns, quotas) in by_ns {
        let mut objects: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        for q in &quotas {
            for name in q
                .spec
                .as_ref()
                .and_then(|s| s.hard.as_ref())
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                if let Some(res) = counted_resource(name)
                    && !objects.contains_key(&res)
                {
                    let items = list_values(&ctx.client, &ns, &res.0, &res.1, &mut served).await?;
                    objects.insert(res, items);
                }
            }
        }
        for q in quotas {
            if let Err(e) = sync_quota(ctx, &q, &objects).await {
                tracing::warn!(quota = format!("{ns}/{}", q.name_any()), "{e:#}");
            }
        }
    }
    Ok(())
}

async fn sync_quota(
    ctx: &Context,
    q: &ResourceQuota,
    objects: &BTreeMap<(String, String), Vec<Value>>,
) -> anyhow::Result<()> {
    let value = serde_json::to_value(q).context("encoding ResourceQuota")?;
    let hard = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let used: BTreeMap<String, KQuantity> = used_for(&value, objects)
        .into_iter()
        .map(|(k, v)| (k, KQuantity(v)))
        .collect();
    let mut new = q.clone();
    let status = new.status.get_or_insert_with(Default::default);
    status.hard = Some(hard);
    status.used = Some(used);
    if new.status == q.status {
        return Ok(());
    }
    let api: Api<ResourceQuota> =
        Api::namespaced(ctx.client.clone(), &q.namespace().unwrap_or_default());
    match api
        .replace_status(&q.name_any(), &PostParams::default(), &new)
        .await
    {
        Ok(_) => Ok(()),
        // Changed meanwhile: the watch brings us back with the new version.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context("updating ResourceQuota status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_of_namespace_objects() {
        let pod = |name: &str, cpu: &str, mem: &str, phase: &str| json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"memory": mem}}}]}, "status": {"phase": phase}});
        let objects = BTreeMap::from([
            (
                (String::new(), "pods".to_string()),
                vec![
                    pod("a", "250m", "1Gi", "Running"),
                    pod("b", "500m", "512Mi", "Pending"),
                    pod("done", "4", "4Gi", "Succeeded"),
                ],
            ),
            (
                (String::new(), "services".to_string()),
                vec![json!({"spec": {"type": "NodePort", "ports": [{"port": 1}, {"port": 2}]}})],
            ),
            (
                ("apps".to_string(), "deployments".to_string()),
                vec![json!({}), json!({})],
            ),
        ]);
        let quota = json!({"spec": {"hard": {
            "pods": "10", "count/pods": "10", "requests.cpu": "2", "cpu": "2", "requests.memory": "4Gi", "limits.memory": "4Gi",
            "services": "5", "services.nodeports": "5", "count/deployments.apps": "3", "configmaps": "1", "bogus": "1",
        }}});
        let used = used_for(&quota, &objects);
        let want: BTreeMap<String, String> = [
            ("pods", "2"),
            ("count/pods", "2"),
            ("requests.cpu", "750m"),
            ("cpu", "750m"),
            ("requests.memory", "1536Mi"),
            ("limits.memory", "1536Mi"),
            ("services", "1"),
            ("services.nodeports", "2"),
            ("count/deployments.apps", "2"),
            ("configmaps", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(used, want);
    }

    #[test]
    fn scopes_select_pods() {
        let be = json!({"spec": {"containers": [{"name": "c"}]}});
        let burst = json!({"spec": {"priorityClassName": "high", "activeDeadlineSeconds": 5, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}});
        let q = |spec: Value| json!({ "spec": spec });
        let cases = [
            (q(json!({"scopes": ["BestEffort"]})), &be, true),
            (q(json!({"scopes": ["BestEffort"]})), &burst, false),
            (
                q(json!({"scopes": ["NotBestEffort", "Terminating"]})),
                &burst,
                true,
            ),
            (q(json!({"scopes": ["NotTerminating"]})), &burst, false),
            (
                q(
                    json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}),
                ),
                &burst,
                true,
            ),
            (
                q(
                    json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "Exists"}]}}),
                ),
                &be,
                false,
            ),
            (q(json!({})), &be, true),
        ];
        for (quota, pod, want) in cases {
            assert_eq!(matches_scopes(&quota, "pods", pod), want, "{quota}");
        }
        assert!(!matches_scopes(
            &q(json!({"scopes": ["BestEffort"]})),
            "services",
            &json!({})
        ));
    }
}
