//! The resource metrics API (`metrics.k8s.io/v1beta1`, metrics-server's shapes) served by
//! the API server itself: `PodMetrics` and `NodeMetrics`, get and list, for `kubectl top`
//! and the HPA. Numbers come from a `MetricsSource`: `KubeletMetrics` scrapes every Ready
//! node's kubelet (`/stats/summary`) like metrics-server, deriving CPU rates from two
//! cumulative samples, and falls back to the simulated usage in pod annotations
//! (`AnnotationMetrics`) for simulated nodes, which have no kubelet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

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

/// The default source when no kubelet is scraped: simulated usage only.
pub fn default_source() -> Arc<dyn MetricsSource> {
    Arc::new(AnnotationMetrics)
}

/// How often kubelets are scraped (metrics-server's default resolution is 15 s).
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(10);
/// How soon to scrape again while some container has only one sample (no rate yet).
const SCRAPE_RETRY: Duration = Duration::from_secs(2);

/// One container's (or node's) latest cumulative reading and the rate derived from the one
/// before it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    time_ns: i128,
    cpu_total_ns: i128,
    memory_bytes: i128,
    /// Nanocores; `None` until a second sample exists.
    cpu_rate: Option<i128>,
}

impl Sample {
    fn next(
        prev: Option<&Sample>,
        time_ns: i128,
        cpu_total_ns: i128,
        memory_bytes: i128,
    ) -> Sample {
        let cpu_rate = prev.and_then(|p| {
            let dt = time_ns - p.time_ns;
            let dc = cpu_total_ns - p.cpu_total_ns;
            // A restarted container's counter starts over: no rate from that pair.
            (dt > 0 && dc >= 0).then(|| dc * 1_000_000_000 / dt)
        });
        Sample {
            time_ns,
            cpu_total_ns,
            memory_bytes,
            cpu_rate,
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.cpu_rate.map(|cpu| Usage {
            cpu_nanos: cpu,
            memory_bytes: self.memory_bytes,
        })
    }
}

/// What the last scrapes of one node gave.
#[derive(Debug, Default, Clone)]
struct NodeMetricsCache {
    node: Option<Sample>,
    /// `namespace/name` → (pod uid, container name → sample).
    pods: HashMap<String, (String, HashMap<String, Sample>)>,
}

/// Resource metrics from the kubelets of real nodes (those with a kubelet endpoint), the
/// simulated-usage annotations for pods on any other node.
pub struct KubeletMetrics {
    store: Arc<dyn store::Store>,
    /// Whether a node has a kubelet, looked up in the store and remembered briefly.
    realness: std::sync::Mutex<HashMap<String, (std::time::Instant, bool)>>,
    cache: RwLock<HashMap<String, NodeMetricsCache>>,
}

impl std::fmt::Debug for KubeletMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletMetrics").finish_non_exhaustive()
    }
}

/// How long a node's realness is remembered.
const REALNESS_TTL: Duration = Duration::from_secs(1);
/// How often the node list is checked for kubelets due a scrape.
const SCRAPE_TICK: Duration = Duration::from_secs(1);

fn parse_time_ns(v: &Value) -> Option<i128> {
    v.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_nanosecond())
}

fn reading(v: &Value) -> Option<(i128, i128, i128)> {
    let time = parse_time_ns(&v["cpu"]["time"])?;
    let cpu = i128::from(v["cpu"]["usageCoreNanoSeconds"].as_u64()?);
    let memory = i128::from(v["memory"]["workingSetBytes"].as_u64().unwrap_or(0));
    Some((time, cpu, memory))
}

impl KubeletMetrics {
    pub fn new(store: Arc<dyn store::Store>) -> KubeletMetrics {
        KubeletMetrics {
            store,
            realness: Default::default(),
            cache: Default::default(),
        }
    }

    /// Folds one node's `/stats/summary` into the cache. Returns whether every reading has a
    /// rate (false while some container was seen only once).
    fn record(&self, node: &str, summary: &Value) -> bool {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let prev = cache.get(node).cloned().unwrap_or_default();
        let mut next = NodeMetricsCache::default();
        let mut complete = true;
        if let Some((t, c, m)) = reading(&summary["node"]) {
            let s = Sample::next(prev.node.as_ref(), t, c, m);
            complete &= s.cpu_rate.is_some();
            next.node = Some(s);
        }
        for pod in summary["pods"].as_array().into_iter().flatten() {
            let r = &pod["podRef"];
            let (Some(ns), Some(name)) = (r["namespace"].as_str(), r["name"].as_str()) else {
                continue;
            };
            let uid = r["uid"].as_str().unwrap_or_default().to_string();
            let key = format!("{ns}/{name}");
            let before = prev.pods.get(&key).filter(|(u, _)| *u == uid);
            let mut containers = HashMap::new();
            for c in pod["containers"].as_array().into_iter().flatten() {
                let (Some(cname), Some((t, cpu, mem))) = (c["name"].as_str(), reading(c)) else {
                    continue;
                };
                let p = before.and_then(|(_, cs)| cs.get(cname));
                let s = Sample::next(p, t, cpu, mem);
                complete &= s.cpu_rate.is_some();
                containers.insert(cname.to_string(), s);
            }
            next.pods.insert(key, (uid, containers));
        }
        cache.insert(node.to_string(), next);
        complete
    }

    fn is_real(&self, node: &str) -> bool {
        let mut known = self.realness.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, real)) = known.get(node)
            && at.elapsed() < REALNESS_TTL
        {
            return *real;
        }
        let key = crate::admission::stored_prefix("", "nodes", None) + node;
        let real = self
            .store
            .get(&key)
            .ok()
            .flatten()
            .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .is_some_and(|n| crate::node_proxy::kubelet_endpoint(&n).is_some());
        if known.len() > 100_000 {
            known.clear();
        }
        known.insert(node.to_string(), (std::time::Instant::now(), real));
        real
    }

    /// Scrapes every Ready node with a kubelet until `shutdown`: a node right after it
    /// appears, then every `SCRAPE_INTERVAL` (`SCRAPE_RETRY` while some container has no
    /// rate yet).
    pub async fn run(
        self: Arc<Self>,
        server: std::sync::Weak<crate::server::ApiServer>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut due: HashMap<String, tokio::time::Instant> = HashMap::new();
        loop {
            let Some(s) = server.upgrade() else { return };
            self.scrape_due(&s, &mut due).await;
            drop(s);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SCRAPE_TICK) => {}
            }
        }
    }

    /// Scrapes the nodes that are due.
    async fn scrape_due(
        &self,
        server: &crate::server::ApiServer,
        due: &mut HashMap<String, tokio::time::Instant>,
    ) {
        let nodes = match crate::admission::list_prefix(
            server,
            &crate::admission::stored_prefix("", "nodes", None),
        ) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("metrics: listing nodes failed: {}", e.message);
                return;
            }
        };
        let now = tokio::time::Instant::now();
        let mut live: HashMap<String, SocketAddr> = HashMap::new();
        for n in &nodes {
            let Some(addr) = crate::node_proxy::kubelet_endpoint(n) else {
                continue;
            };
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                live.insert(crate::object::name(n).to_string(), addr);
            }
        }
        due.retain(|n, _| live.contains_key(n));
        // Nodes that are gone or not Ready have no current metrics.
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n, _| live.contains_key(n));
        let targets: Vec<(&String, &SocketAddr)> = live
            .iter()
            .filter(|(n, _)| due.get(*n).is_none_or(|t| *t <= now))
            .collect();
        let results =
            futures::future::join_all(targets.into_iter().map(|(name, addr)| async move {
                (name, server.kubelet.stats_summary(*addr).await)
            }))
            .await;
        for (name, r) in results {
            let next = match r {
                Ok(summary) => {
                    if self.record(name, &summary) {
                        SCRAPE_INTERVAL
                    } else {
                        SCRAPE_RETRY
                    }
                }
                Err(e) => {
                    tracing::debug!(node = %name, "metrics: scraping the kubelet failed: {e}");
                    self.cache
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(name);
                    SCRAPE_INTERVAL
                }
            };
            due.insert(name.clone(), tokio::time::Instant::now() + next);
        }
    }
}

impl MetricsSource for KubeletMetrics {
    fn pod_usage(&self, pod: &Value) -> Option<Vec<(String, Usage)>> {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if !self.is_real(node) {
            return AnnotationMetrics.pod_usage(pod);
        }
        if !is_running(pod) {
            return None;
        }
        let key = format!(
            "{}/{}",
            meta_str(pod, "namespace").unwrap_or_default(),
            crate::object::name(pod)
        );
        let uid = meta_str(pod, "uid").unwrap_or_default();
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let (cached_uid, containers) = cache.get(node)?.pods.get(&key)?;
        if !uid.is_empty() && !cached_uid.is_empty() && cached_uid != uid {
            return None;
        }
        // In the pod's container order; a pod reports metrics once every running container has
        // a rate, as metrics-server does.
        let mut out = Vec::new();
        for name in pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
        {
            if let Some(u) = containers.get(name).and_then(Sample::usage) {
                out.push((name.to_string(), u));
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn node_usage(&self, node: &Value, pods: &[Value]) -> Option<Usage> {
        let name = crate::object::name(node);
        if !self.is_real(name) {
            return AnnotationMetrics.node_usage(node, pods);
        }
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.get(name)?.node.as_ref()?.usage()
    }
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
    fn kubelet_rates_come_from_two_cumulative_samples() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::EmbeddedStore::open(dir.path(), store::Options::default()).unwrap();
        let m = KubeletMetrics::new(store);
        // n1 is known to have a kubelet (what the store would say of a Node with an endpoint).
        m.realness.lock().unwrap().insert(
            "n1".into(),
            (std::time::Instant::now() + Duration::from_secs(3600), true),
        );
        let summary = |t: &str, node_cpu: u64, c_cpu: u64, uid: &str| {
            json!({
                "node": {"nodeName": "n1", "cpu": {"time": t, "usageCoreNanoSeconds": node_cpu}, "memory": {"time": t, "workingSetBytes": 1000}},
                "pods": [{"podRef": {"namespace": "default", "name": "p", "uid": uid},
                          "containers": [{"name": "c", "cpu": {"time": t, "usageCoreNanoSeconds": c_cpu}, "memory": {"time": t, "workingSetBytes": 64 << 20}}]}],
            })
        };
        let pod = json!({"metadata": {"name": "p", "namespace": "default", "uid": "u1"},
                         "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                         "status": {"phase": "Running"}});
        let node = json!({"metadata": {"name": "n1"}});
        assert!(!m.record("n1", &summary("2025-01-01T00:00:00Z", 0, 0, "u1")));
        assert_eq!(m.pod_usage(&pod), None, "one sample gives no rate");
        assert_eq!(m.node_usage(&node, &[]), None);
        // 10 s later: 2.5 s of CPU in the container (250m), 10 s on the node (1 core).
        assert!(m.record(
            "n1",
            &summary("2025-01-01T00:00:10Z", 10_000_000_000, 2_500_000_000, "u1")
        ));
        let u = m.pod_usage(&pod).unwrap();
        assert_eq!(u[0].0, "c");
        assert_eq!(u[0].1.to_json(), json!({"cpu": "250m", "memory": "64Mi"}));
        assert_eq!(m.node_usage(&node, &[]).unwrap().cpu_nanos, 1_000_000_000);
        // A restart (counter went back) or a new pod under the same name: no rate.
        assert!(!m.record(
            "n1",
            &summary("2025-01-01T00:00:20Z", 20_000_000_000, 100, "u1")
        ));
        assert_eq!(m.pod_usage(&pod), None);
        m.record(
            "n1",
            &summary("2025-01-01T00:00:30Z", 30_000_000_000, 200, "u2"),
        );
        assert_eq!(
            m.pod_usage(&pod),
            None,
            "the cached pod is another instance"
        );
        // Pods on simulated nodes still read their annotations.
        let sim = json!({"metadata": {"name": "s", "namespace": "default", "annotations": {CPU_ANNOTATION: "100m"}},
                         "spec": {"nodeName": "sim-1", "containers": [{"name": "c"}]},
                         "status": {"phase": "Running"}});
        assert_eq!(m.pod_usage(&sim).unwrap()[0].1.cpu_nanos, 100_000_000);
    }

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
