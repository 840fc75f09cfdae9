//! The resource metrics API (`metrics.k8s.io/v1beta1`, metrics-server's shapes) served by
//! the API server itself: `PodMetrics` and `NodeMetrics`, get and list, for `kubectl top`
//! and the HPA. Numbers come from a `MetricsSource`; today that reads simulated usage from
//! pod annotations, later the kubelet's measurements replace it.

use std::sync::Arc;

use api::validation::quantity::Quantity;
use http::Response;
use serde_json::{Value, json};

use crate::admission::Amount;
use crate::error::{ApiError, ApiResult, Target};
use crate::http::Body;
use crate::object::{meta, meta_str};
use crate::resources::Resource;
use crate::rest::Ctx;
use crate::selector::LabelSelector;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// The window metrics are averaged over, as metrics-server reports it.
pub const WINDOW: &str = "10s";

/// CPU in nanocores and memory in bytes, what metrics-server measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_nanos: i128,
    pub memory_bytes: i128,
}

impl Usage {
    fn add(self, o: Usage) -> Usage {
        Usage {
            cpu_nanos: self.cpu_nanos + o.cpu_nanos,
            memory_bytes: self.memory_bytes + o.memory_bytes,
        }
    }

    /// `{cpu, memory}` as quantities in canonical form (`250m`, `128Mi`).
    pub fn to_json(self) -> Value {
        let cpu = Quantity::parse(&format!("{}n", self.cpu_nanos))
            .map(|q| q.to_string())
            .unwrap_or_else(|_| "0".into());
        let memory = Amount {
            milli: self.memory_bytes * 1000,
            binary: true,
        }
        .quantity()
        .to_string();
        json!({ "cpu": cpu, "memory": memory })
    }
}

/// Where usage numbers come from.
pub trait MetricsSource: Send + Sync {
    /// Per-container usage of a running pod, or `None` when the pod has no metrics.
    fn pod_usage(&self, pod: &Value) -> Option<Vec<(String, Usage)>>;

    /// A node's usage given its running pods; by default the sum of theirs.
    fn node_usage(&self, _node: &Value, pods: &[Value]) -> Option<Usage> {
        Some(
            pods.iter()
                .filter_map(|p| self.pod_usage(p))
                .flatten()
                .fold(Usage::default(), |acc, (_, u)| acc.add(u)),
        )
    }
}

/// Simulated usage: `skiff.dev/simulated-cpu` (split evenly over the containers) and
/// `skiff.dev/simulated-memory` (likewise; both default to 0) on running, scheduled pods.
#[derive(Debug, Default)]
pub struct AnnotationMetrics;

pub const CPU_ANNOTATION: &str = "skiff.dev/simulated-cpu";
pub const MEMORY_ANNOTATION: &str = "skiff.dev/simulated-memory";

fn is_running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
}

impl MetricsSource for AnnotationMetrics {
    fn pod_usage(&self, pod: &Value) -> Option<Vec<(String, Usage)>> {
        if !is_running(pod) {
            return None;
        }
        let annotation = |k: &str| {
            meta(pod)
                .and_then(|m| m.get("annotations"))
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Quantity>().ok())
        };
        let cpu = annotation(CPU_ANNOTATION).map_or(0, |q| q.scaled_value(-9));
        let memory = annotation(MEMORY_ANNOTATION).map_or(0, |q| q.value());
        let names: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let n = i128::try_from(names.len()).ok().filter(|n| *n > 0)?;
        Some(
            names
                .into_iter()
                .map(|name| {
                    (
                        name,
                        Usage {
                            cpu_nanos: cpu / n,
                            memory_bytes: memory / n,
                        },
                    )
                })
                .collect(),
        )
    }
}

/// The default source.
pub fn default_source() -> Arc<dyn MetricsSource> {
    Arc::new(AnnotationMetrics)
}

/// The served metrics resources (added to the resource table after the built-ins).
pub fn resources() -> Vec<Resource> {
    [
        ("PodMetrics", "pods", true),
        ("NodeMetrics", "nodes", false),
    ]
    .into_iter()
    .map(|(kind, plural, namespaced)| Resource {
        group: GROUP.into(),
        version: VERSION.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: String::new(),
        namespaced,
        verbs: vec!["get".into(), "list".into()],
        short_names: Vec::new(),
        categories: Vec::new(),
        subresources: Vec::new(),
        storage_group: GROUP.into(),
        storage_version: VERSION.into(),
        is_virtual: false,
        builtin: None,
        custom: None,
    })
    .collect()
}

fn now() -> String {
    crate::object::now_rfc3339()
}

fn pod_metrics(pod: &Value, containers: Vec<(String, Usage)>) -> Value {
    let containers: Vec<Value> = containers
        .into_iter()
        .map(|(name, u)| json!({ "name": name, "usage": u.to_json() }))
        .collect();
    let mut metadata = json!({
        "name": crate::object::name(pod),
        "namespace": meta_str(pod, "namespace").unwrap_or_default(),
        "creationTimestamp": now(),
    });
    if let Some(l) = meta(pod).and_then(|m| m.get("labels")) {
        metadata["labels"] = l.clone();
    }
    json!({
        "kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata, "timestamp": now(), "window": WINDOW, "containers": containers,
    })
}

fn node_metrics(node: &Value, usage: Usage) -> Value {
    let mut metadata = json!({ "name": crate::object::name(node), "creationTimestamp": now() });
    if let Some(l) = meta(node).and_then(|m| m.get("labels")) {
        metadata["labels"] = l.clone();
    }
    json!({
        "kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata, "timestamp": now(), "window": WINDOW, "usage": usage.to_json(),
    })
}

fn list_of(kind: &str, items: Vec<Value>) -> Value {
    json!({ "kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items })
}

fn not_found(ctx: &Ctx<'_>, name: &str) -> ApiError {
    ApiError::not_found(&Target {
        group: GROUP.into(),
        resource: ctx.res.plural.clone(),
        kind: ctx.res.kind.clone(),
        name: name.into(),
    })
}

/// Running pods per node name.
fn pods_by_node(ctx: &Ctx<'_>) -> ApiResult<std::collections::HashMap<String, Vec<Value>>> {
    let pods = crate::admission::list_prefix(
        ctx.server,
        &crate::admission::stored_prefix("", "pods", None),
    )?;
    let mut by_node: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for p in pods.into_iter().filter(is_running) {
        let node = p["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        by_node.entry(node).or_default().push(p);
    }
    Ok(by_node)
}

/// `get` and `list` of `pods` and `nodes` in metrics.k8s.io.
pub async fn handle(ctx: &Ctx<'_>, verb: &str) -> ApiResult<Response<Body>> {
    let source = ctx.server.metrics.clone();
    let selector = LabelSelector::parse(ctx.req.query.get("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let labels_of = |o: &Value| {
        meta(o)
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .cloned()
    };
    let name = ctx.name.clone();
    match (ctx.res.plural.as_str(), verb) {
        ("pods", "get") => {
            let name = name.unwrap_or_default();
            let key = crate::admission::stored_prefix("", "pods", ctx.ns.as_deref()) + &name;
            let pod: Value = ctx
                .server
                .store
                .get(&key)
                .map_err(crate::rest::store_error)?
                .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                .ok_or_else(|| not_found(ctx, &name))?;
            let usage = source
                .pod_usage(&pod)
                .ok_or_else(|| not_found(ctx, &name))?;
            Ok(crate::http::json(200, &pod_metrics(&pod, usage)))
        }
        ("pods", "list") => {
            let pods = crate::admission::list_prefix(
                ctx.server,
                &crate::admission::stored_prefix("", "pods", ctx.ns.as_deref()),
            )?;
            let items = pods
                .iter()
                .filter(|p| selector.matches(labels_of(p).as_ref()))
                .filter_map(|p| source.pod_usage(p).map(|u| pod_metrics(p, u)))
                .collect();
            Ok(crate::http::json(200, &list_of("PodMetrics", items)))
        }
        ("nodes", "get") => {
            let name = name.unwrap_or_default();
            let key = crate::admission::stored_prefix("", "nodes", None) + &name;
            let node: Value = ctx
                .server
                .store
                .get(&key)
                .map_err(crate::rest::store_error)?
                .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                .ok_or_else(|| not_found(ctx, &name))?;
            let by_node = pods_by_node(ctx)?;
            let pods = by_node.get(&name).map(Vec::as_slice).unwrap_or_default();
            let usage = source
                .node_usage(&node, pods)
                .ok_or_else(|| not_found(ctx, &name))?;
            Ok(crate::http::json(200, &node_metrics(&node, usage)))
        }
        ("nodes", "list") => {
            let nodes = crate::admission::list_prefix(
                ctx.server,
                &crate::admission::stored_prefix("", "nodes", None),
            )?;
            let by_node = pods_by_node(ctx)?;
            let items = nodes
                .iter()
                .filter(|n| selector.matches(labels_of(n).as_ref()))
                .filter_map(|n| {
                    let pods = by_node
                        .get(crate::object::name(n))
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    source.node_usage(n, pods).map(|u| node_metrics(n, u))
                })
                .collect();
            Ok(crate::http::json(200, &list_of("NodeMetrics", items)))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_usage_splits_over_containers() {
        let pod = |phase: &str, cpu: Option<&str>, mem: Option<&str>, n: usize| {
            let mut a = serde_json::Map::new();
            if let Some(c) = cpu {
                a.insert(CPU_ANNOTATION.into(), json!(c));
            }
            if let Some(m) = mem {
                a.insert(MEMORY_ANNOTATION.into(), json!(m));
            }
            let containers: Vec<Value> = (0..n).map(|i| json!({"name": format!("c{i}")})).collect();
            json!({"metadata": {"name": "p", "annotations": a}, "spec": {"nodeName": "n1", "containers": containers}, "status": {"phase": phase}})
        };
        let cases = [
            (
                pod("Running", Some("250m"), Some("128Mi"), 1),
                Some(vec![("250m", "128Mi")]),
            ),
            (
                pod("Running", Some("500m"), Some("256Mi"), 2),
                Some(vec![("250m", "128Mi"), ("250m", "128Mi")]),
            ),
            (pod("Running", None, None, 1), Some(vec![("0", "0")])),
            (pod("Pending", Some("1"), None, 1), None),
        ];
        for (p, want) in cases {
            let got = AnnotationMetrics.pod_usage(&p).map(|v| {
                v.into_iter()
                    .map(|(_, u)| {
                        let j = u.to_json();
                        (
                            j["cpu"].as_str().unwrap_or_default().to_string(),
                            j["memory"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            });
            let want = want.map(|w| {
                w.into_iter()
                    .map(|(c, m)| (c.to_string(), m.to_string()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want, "{p}");
        }
    }
}
