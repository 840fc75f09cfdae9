//! API semantics against an in-process server over real HTTPS: watches, pagination, status,
//! finalizers, dry runs, namespaces.

use std::time::Duration;

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
    let dir = tempfile::tempdir().unwrap();
    let cfg = apiserver::Config {
        data_dir: dir.path().to_path_buf(),
        bind: "127.0.0.1:0".parse().unwrap(),
        kubeconfig: None,
        tls_sans: vec![],
        store: store::Options {
            fsync: false,
            ..Default::default()
        },
        default_toleration_seconds: 300,
        default_unreachable_toleration_seconds: 300,
        services: Default::default(),
        advertise_address: None,
    };
    let running = apiserver::start(cfg).await.unwrap();
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

    async fn patch(&self, path: &str, ctype: &str, body: Value) -> (StatusCode, Value) {
        let req = http::Request::builder()
            .method(Method::PATCH)
            .uri(format!("https://localhost{path}"))
            .header("content-type", ctype)
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(&body).unwrap(),
            )))
            .unwrap();
        let resp = self.client.send_raw(req).await.unwrap();
        let s = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// Reads watch lines until `n` events arrived or `timeout` passed.
    async fn watch(&self, path: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let resp = self
            .client
            .send(Method::GET, path, None, "application/json")
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while events.len() < n {
            let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
                break;
            };
            let Some(Ok(frame)) = frame else { break };
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
            }
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                events.push(serde_json::from_slice(&line).unwrap());
            }
        }
        events
    }
}

fn cm(name: &str, labels: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name, "labels": labels }, "data": { "k": "v" } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_in_order_and_maps_selector_transitions() {
    let t = server().await;
    let (_, list) = t
        .call(Method::GET, "/api/v1/namespaces/default/configmaps", None)
        .await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    t.call(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(cm("a", json!({"sel": "yes"}))),
    )
    .await;
    t.call(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(cm("b", json!({"sel": "no"}))),
    )
    .await;
    // b moves into the selection, a moves out of it.
    t.patch(
        "/api/v1/namespaces/default/configmaps/b",
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"sel": "yes"}}}),
    )
    .await;
    t.patch(
        "/api/v1/namespaces/default/configmaps/a",
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"sel": "no"}}}),
    )
    .await;
    t.call(
        Method::DELETE,
        "/api/v1/namespaces/default/configmaps/b",
        None,
    )
    .await;
    let events = t.watch(&format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=sel%3Dyes"), 4, Duration::from_secs(5)).await;
    let got: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["object"]["metadata"]["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
        ("DELETED", "b"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let rvs: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]));
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_revision_is_an_in_stream_410() {
    let t = server().await;
    for i in 0..5 {
        t.call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm(&format!("c{i}"), json!({}))),
        )
        .await;
    }
    let current = t.running.server.store.revision();
    t.running.server.store.compact(current - 1).unwrap();
    let events = t
        .watch(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=2",
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_events_end_with_a_bookmark() {
    let t = server().await;
    t.call(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(cm("x", json!({}))),
    )
    .await;
    let events = t
        .watch("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true", 2, Duration::from_secs(5))
        .await;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_a_consistent_snapshot() {
    let t = server().await;
    for i in 0..25 {
        t.call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm(&format!("p{i:02}"), json!({}))),
        )
        .await;
    }
    let (_, first) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?limit=10",
            None,
        )
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 10);
    assert_eq!(first["metadata"]["remainingItemCount"], 15);
    // Changes after the first page must not show up in later pages.
    t.call(
        Method::DELETE,
        "/api/v1/namespaces/default/configmaps/p24",
        None,
    )
    .await;
    t.call(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(cm("p99", json!({}))),
    )
    .await;
    let mut names: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().into())
        .collect();
    let mut cont = first["metadata"]["continue"].as_str().unwrap().to_string();
    loop {
        let (s, page) = t
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/default/configmaps?limit=10&continue={cont}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => cont = c.to_string(),
            _ => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(names, want);
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_and_generation() {
    let t = server().await;
    let dep = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "d" },
        "spec": { "selector": { "matchLabels": { "app": "d" } }, "template": { "metadata": { "labels": { "app": "d" } }, "spec": { "containers": [{ "name": "c", "image": "busybox" }] } } },
        "status": { "replicas": 9 },
    });
    let (s, created) = t
        .call(
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            Some(dep),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(
        created["status"].get("replicas").is_none(),
        "status is reset on create: {created}"
    );
    assert_eq!(created["spec"]["replicas"], 1);
    let (_, after) = t
        .patch(
            "/apis/apps/v1/namespaces/default/deployments/d/status",
            "application/merge-patch+json",
            json!({"status": {"replicas": 3}, "spec": {"replicas": 5}}),
        )
        .await;
    assert_eq!(after["status"]["replicas"], 3);
    assert_eq!(
        after["spec"]["replicas"], 1,
        "status writes do not change spec"
    );
    assert_eq!(after["metadata"]["generation"], 1);
    let (_, after) = t
        .patch(
            "/apis/apps/v1/namespaces/default/deployments/d",
            "application/merge-patch+json",
            json!({"spec": {"replicas": 5}, "status": {"replicas": 0}}),
        )
        .await;
    assert_eq!(after["spec"]["replicas"], 5);
    assert_eq!(
        after["status"]["replicas"], 3,
        "spec writes do not change status"
    );
    assert_eq!(after["metadata"]["generation"], 2);
    let (_, after) = t
        .patch(
            "/apis/apps/v1/namespaces/default/deployments/d",
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .await;
    assert_eq!(
        after["metadata"]["generation"], 2,
        "metadata changes keep the generation"
    );
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_removed() {
    let t = server().await;
    let mut obj = cm("fin", json!({}));
    obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
    t.call(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(obj),
    )
    .await;
    let (s, deleting) = t
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/fin",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    let (s, _) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/fin",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = t.patch(
        "/api/v1/namespaces/default/configmaps/fin",
        "application/json-patch+json",
        json!([{"op": "test", "path": "/metadata/finalizers", "value": ["example.com/hold"]}, {"op": "remove", "path": "/metadata/finalizers/0"}]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/fin",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_missing_namespace() {
    let t = server().await;
    let (s, out) = t
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?dryRun=All",
            Some(cm("dry", json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(out["metadata"]["uid"].is_string());
    let (s, _) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/dry",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, out) = t
        .call(
            Method::POST,
            "/api/v1/namespaces/nowhere/configmaps",
            Some(cm("x", json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(out["message"], "namespaces \"nowhere\" not found");
    let mut generated = cm("", json!({}));
    generated["metadata"] = json!({ "generateName": "gen-" });
    let (s, out) = t
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(generated),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(
        out["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("gen-")
    );
    assert_eq!(out["metadata"]["name"].as_str().unwrap().len(), 9);
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_one_store_seen_through_both_apis() {
    let t = server().await;
    let ev = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": { "name": "e1" },
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "skiff/test", "reportingInstance": "t",
        "action": "Scheduling", "reason": "Scheduled", "type": "Normal", "note": "assigned",
        "regarding": { "kind": "Pod", "namespace": "default", "name": "web-1" },
    });
    let (s, created) = t
        .call(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            Some(ev),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["regarding"]["name"], "web-1");
    let (_, core) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dweb-1",
            None,
        )
        .await;
    let items = core["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{core}");
    assert_eq!(items[0]["apiVersion"], "v1");
    assert_eq!(items[0]["message"], "assigned");
    assert_eq!(items[0]["reportingComponent"], "skiff/test");
    let (_, v1) = t
        .call(
            Method::GET,
            "/apis/events.k8s.io/v1/namespaces/default/events?fieldSelector=regarding.name%3Dweb-1",
            None,
        )
        .await;
    assert_eq!(v1["items"][0]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(v1["items"][0]["note"], "assigned");
    t.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_lists_and_tables() {
    let t = server().await;
    for i in 0..3 {
        t.call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm(&format!("m{i}"), json!({"k": "v"}))),
        )
        .await;
    }
    let resp = t
        .client
        .send(
            Method::GET,
            "/api/v1/namespaces/default/configmaps",
            None,
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
        )
        .await
        .unwrap();
    let list: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["kind"], "PartialObjectMetadata");
    assert_eq!(items[0]["metadata"]["labels"]["k"], "v");
    assert!(items[0].get("data").is_none());
    let resp = t
        .client
        .send(
            Method::GET,
            "/api/v1/namespaces/default/configmaps",
            None,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .await
        .unwrap();
    let table: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(table["rows"].as_array().unwrap().len(), 3);
    assert_eq!(table["rows"][0]["cells"][0], "m0");
    t.running.shutdown().await.unwrap();
}
