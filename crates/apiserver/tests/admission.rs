//! Admission (default tolerations, priority, LimitRanger, ResourceQuota), the pod eviction
//! subresource with PodDisruptionBudgets, and the metrics.k8s.io API, against an in-process
//! server over real HTTPS.

use apiserver::client::Client;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

struct TestServer {
    running: apiserver::Running,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn server() -> TestServer {
    let testkit::TestServer { running, dir, .. } = testkit::TestServer::start().await.unwrap();
    let client = Client::connect(&running.kubeconfig, running.addr.port())
        .await
        .unwrap();
    TestServer {
        running,
        client,
        _dir: dir,
    }
}

impl TestServer {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, b) = self
            .client
            .request(method, path, body.map(|b| serde_json::to_vec(&b).unwrap()))
            .await
            .unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn create(&self, path: &str, body: Value) -> Value {
        let (s, out) = self.call(Method::POST, path, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{path}: {out}");
        out
    }

    async fn merge_patch(&self, path: &str, body: Value) -> Value {
        let req = http::Request::builder()
            .method(Method::PATCH)
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/merge-patch+json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(&body).unwrap(),
            )))
            .unwrap();
        let resp = self.client.send_raw(req).await.unwrap();
        let s = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        v
    }
}

const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod(name: &str, extra_spec: Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "labels": { "app": "web" } },
        "spec": { "containers": [{ "name": "c", "image": "nginx" }] },
    });
    if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_admission_mutations() {
    let t = server().await;
    t.create(
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "high"}, "value": 1000, "preemptionPolicy": "Never"}),
    )
    .await;
    let not_ready = |s: i64| json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": s});
    let unreachable = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300});
    // (pod, field to check, expected value)
    let cases = [
        (
            pod("plain", json!({})),
            "/spec/tolerations",
            json!([not_ready(300), unreachable.clone()]),
        ),
        (
            pod("tolerates", json!({"tolerations": [not_ready(10)]})),
            "/spec/tolerations",
            json!([not_ready(10), unreachable.clone()]),
        ),
        (
            pod(
                "everything",
                json!({"tolerations": [{"operator": "Exists"}]}),
            ),
            "/spec/tolerations",
            json!([{"operator": "Exists"}]),
        ),
        (pod("noclass", json!({})), "/spec/priority", json!(0)),
        (
            pod("named", json!({"priorityClassName": "high"})),
            "/spec/priority",
            json!(1000),
        ),
        (
            pod("named2", json!({"priorityClassName": "high"})),
            "/spec/preemptionPolicy",
            json!("Never"),
        ),
        (
            pod(
                "critical",
                json!({"priorityClassName": "system-node-critical"}),
            ),
            "/spec/priority",
            json!(2_000_001_000),
        ),
    ];
    for (body, field, want) in cases {
        let out = t.create(PODS, body).await;
        assert_eq!(out.pointer(field), Some(&want), "{field}: {out}");
    }

    // A missing class is refused like upstream's Priority plugin.
    let (s, err) = t
        .call(
            Method::POST,
            PODS,
            Some(pod("bad", json!({"priorityClassName": "nope"}))),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(
        err["message"],
        "pods \"bad\" is forbidden: no PriorityClass with name nope was found"
    );

    // The built-in classes exist as objects; a global default applies to unnamed pods.
    let (s, _) = t
        .call(
            Method::GET,
            "/apis/scheduling.k8s.io/v1/priorityclasses/system-cluster-critical",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    t.create(
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "dflt"}, "value": 7, "globalDefault": true}),
    )
    .await;
    let out = t.create(PODS, pod("defaulted", json!({}))).await;
    assert_eq!(out["spec"]["priorityClassName"], "dflt");
    assert_eq!(out["spec"]["priority"], 7);
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_refuse() {
    let t = server().await;
    t.create(
        "/api/v1/namespaces/default/limitranges",
        json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr"}, "spec": {"limits": [
            {"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"}, "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}
        ]}}),
    )
    .await;
    let out = t.create(PODS, pod("defaults", json!({}))).await;
    let res = &out["spec"]["containers"][0]["resources"];
    assert_eq!(
        res["limits"],
        json!({"cpu": "500m", "memory": "256Mi"}),
        "{out}"
    );
    // The memory request comes from the default limit through LimitRange defaulting.
    assert_eq!(
        res["requests"],
        json!({"cpu": "100m", "memory": "256Mi"}),
        "{out}"
    );
    assert!(out["spec"].get("initContainers").is_none(), "{out}");
    assert_eq!(
        out["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    assert_eq!(out["status"]["qosClass"], "Burstable");

    let container = |resources: Value| json!({"containers": [{"name": "c", "image": "nginx", "resources": resources}]});
    let cases = [
        (
            container(json!({"limits": {"cpu": "2"}})),
            "maximum cpu usage per Container is 1, but limit is 2",
        ),
        (
            container(json!({"requests": {"memory": "10Mi"}, "limits": {"memory": "100Mi"}})),
            "minimum memory usage per Container is 64Mi, but request is 10Mi",
        ),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let name = format!("bad{i}");
        let (s, err) = t.call(Method::POST, PODS, Some(pod(&name, spec))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{err}");
        assert_eq!(
            err["message"],
            format!("pods \"{name}\" is forbidden: {want}")
        );
    }
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refuses_over_limit_creates() {
    let t = server().await;
    t.create(
        "/api/v1/namespaces/default/resourcequotas",
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"}, "spec": {"hard": {"pods": "2", "count/configmaps": "1"}}}),
    )
    .await;
    t.create(PODS, pod("p1", json!({}))).await;
    t.create(PODS, pod("p2", json!({}))).await;
    let (s, err) = t.call(Method::POST, PODS, Some(pod("p3", json!({})))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(
        err["message"],
        "pods \"p3\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
    );
    // Finished pods stop counting.
    t.merge_patch(
        &format!("{PODS}/p1/status"),
        json!({"status": {"phase": "Succeeded"}}),
    )
    .await;
    t.create(PODS, pod("p3", json!({}))).await;

    let cm = |n: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n}});
    t.create("/api/v1/namespaces/default/configmaps", cm("a"))
        .await;
    let (s, err) = t
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm("b")),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(
        err["message"],
        "configmaps \"b\" is forbidden: exceeded quota: q, requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"
    );

    // Compute quotas oblige containers to state their requests.
    t.create(
        "/api/v1/namespaces/default/resourcequotas",
        json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute"}, "spec": {"hard": {"requests.cpu": "1"}}}),
    )
    .await;
    let (s, err) = t.call(Method::POST, PODS, Some(pod("p4", json!({})))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(
        err["message"],
        "pods \"p4\" is forbidden: failed quota: compute: must specify requests.cpu for: c"
    );
    t.running.shutdown().await.unwrap();
}

/// A running, ready pod on node n1 with simulated usage.
async fn running_pod(t: &TestServer, name: &str, cpu: &str, memory: &str) {
    let mut p = pod(name, json!({"nodeName": "n1"}));
    p["metadata"]["annotations"] =
        json!({"skiff.dev/simulated-cpu": cpu, "skiff.dev/simulated-memory": memory});
    t.create(PODS, p).await;
    t.merge_patch(
        &format!("{PODS}/{name}/status"),
        json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_honours_disruption_budgets() {
    let t = server().await;
    running_pod(&t, "w1", "0", "0").await;
    running_pod(&t, "w2", "0", "0").await;
    let pdbs = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
    let pdb = t
        .create(
            pdbs,
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "budget"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        )
        .await;
    // What the disruption controller would write.
    t.merge_patch(
        &format!("{pdbs}/budget/status"),
        json!({"status": {"observedGeneration": pdb["metadata"]["generation"], "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2, "disruptionsAllowed": 1}}),
    )
    .await;
    let eviction = |n: &str| json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": n, "namespace": "default"}});

    let (s, out) = t
        .call(
            Method::POST,
            &format!("{PODS}/w1/eviction"),
            Some(eviction("w1")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{out}");
    assert_eq!(out["status"], "Success");
    let (_, budget) = t.call(Method::GET, &format!("{pdbs}/budget"), None).await;
    assert_eq!(budget["status"]["disruptionsAllowed"], 0, "{budget}");
    assert!(
        budget["status"]["disruptedPods"]["w1"].is_string(),
        "{budget}"
    );
    assert_eq!(
        budget["status"]["conditions"][0]["reason"],
        "InsufficientPods"
    );
    // A scheduled pod terminates gracefully.
    let (_, w1) = t.call(Method::GET, &format!("{PODS}/w1"), None).await;
    assert!(w1["metadata"]["deletionTimestamp"].is_string(), "{w1}");

    let (s, err) = t
        .call(
            Method::POST,
            &format!("{PODS}/w2/eviction"),
            Some(eviction("w2")),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{err}");
    assert_eq!(err["reason"], "TooManyRequests");
    assert_eq!(
        err["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(err["details"]["causes"][0]["reason"], "DisruptionBudget");
    assert_eq!(
        err["details"]["causes"][0]["message"],
        "The disruption budget budget needs 1 healthy pods and has 2 currently"
    );

    // Mismatched names are refused; a pending pod is evicted regardless of budgets.
    let (s, _) = t
        .call(
            Method::POST,
            &format!("{PODS}/w2/eviction"),
            Some(eviction("w1")),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    t.create(PODS, pod("pending", json!({}))).await;
    let (s, out) = t
        .call(
            Method::POST,
            &format!("{PODS}/pending/eviction"),
            Some(eviction("pending")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{out}");
    let (s, _) = t.call(Method::GET, &format!("{PODS}/pending"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_api_reports_simulated_usage() {
    let t = server().await;
    t.create(
        "/api/v1/nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"zone": "a"}}}),
    )
    .await;
    running_pod(&t, "m1", "250m", "128Mi").await;
    running_pod(&t, "m2", "500m", "64Mi").await;
    t.create(PODS, pod("idle", json!({}))).await;

    let (_, groups) = t.call(Method::GET, "/apis", None).await;
    let metrics = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "metrics.k8s.io")
        .cloned();
    assert_eq!(
        metrics.map(|g| g["preferredVersion"]["groupVersion"].clone()),
        Some(json!("metrics.k8s.io/v1beta1"))
    );
    let (s, rl) = t
        .call(Method::GET, "/apis/metrics.k8s.io/v1beta1", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = rl["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["pods", "nodes"]);

    let base = "/apis/metrics.k8s.io/v1beta1";
    let (s, list) = t
        .call(
            Method::GET,
            &format!("{base}/namespaces/default/pods"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["kind"], "PodMetricsList");
    let usage: Vec<(String, Value)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap().to_string(),
                i["containers"][0]["usage"].clone(),
            )
        })
        .collect();
    assert_eq!(
        usage,
        [
            ("m1".to_string(), json!({"cpu": "250m", "memory": "128Mi"})),
            ("m2".to_string(), json!({"cpu": "500m", "memory": "64Mi"})),
        ]
    );
    let (s, one) = t
        .call(
            Method::GET,
            &format!("{base}/namespaces/default/pods/m1"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["window"], "10s");
    assert_eq!(one["metadata"]["labels"]["app"], "web");
    let (s, _) = t
        .call(
            Method::GET,
            &format!("{base}/namespaces/default/pods/idle"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, none) = t
        .call(
            Method::GET,
            &format!("{base}/namespaces/default/pods?labelSelector=app%3Ddb"),
            None,
        )
        .await;
    assert_eq!(none["items"], json!([]));

    let (s, node) = t.call(Method::GET, &format!("{base}/nodes/n1"), None).await;
    assert_eq!(s, StatusCode::OK, "{node}");
    assert_eq!(node["kind"], "NodeMetrics");
    assert_eq!(node["usage"], json!({"cpu": "750m", "memory": "192Mi"}));
    let (_, nodes) = t
        .call(
            Method::GET,
            &format!("{base}/nodes?labelSelector=zone%3Da"),
            None,
        )
        .await;
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(1));
    let (s, _) = t
        .call(Method::DELETE, &format!("{base}/nodes/n1"), None)
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    t.running.shutdown().await.unwrap();
}
