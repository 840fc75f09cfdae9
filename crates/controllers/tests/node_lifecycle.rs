//! Node lifecycle controller against a real in-process API server: a node whose Lease goes
//! stale becomes Unknown and tainted, its pods are evicted per their tolerations, and the
//! taints go away when it recovers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Cluster {
    _server: testkit::TestServer,
    client: kube::Client,
}

async fn cluster() -> anyhow::Result<Cluster> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    Ok(Cluster {
        _server: server,
        client,
    })
}

/// Polls `check` until it yields a value or `timeout` passes.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

async fn post_ready(nodes: &Api<Node>, name: &str) -> anyhow::Result<()> {
    let status = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
         "lastHeartbeatTime": Time(now()), "lastTransitionTime": Time(now())},
        {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
         "lastHeartbeatTime": Time(now()), "lastTransitionTime": Time(now())},
    ]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
        .context("posting node status")?;
    Ok(())
}

async fn renew_lease(leases: &Api<Lease>, name: &str) -> anyhow::Result<()> {
    let patch = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": MicroTime(now())}});
    leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("renewing lease")?;
    Ok(())
}

fn pod(name: &str, tolerations: serde_json::Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": "n1", "tolerations": tolerations, "containers": [{"name": "c", "image": "busybox"}]},
    }))?)
}

fn taint_keys(node: &Node, effect: &str) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == effect)
        .map(|t| t.key.clone())
        .collect()
}

fn condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Gone, or marked for deletion (graceful deletion waits for a kubelet that is not there).
async fn deleted(pods: &Api<Pod>, name: &str) -> anyhow::Result<Option<Option<Pod>>> {
    Ok(match pods.get_opt(name).await? {
        None => Some(None),
        Some(p) if p.metadata.deletion_timestamp.is_some() => Some(Some(p)),
        Some(_) => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_node_is_tainted_and_pods_evicted_then_recovers() -> anyhow::Result<()> {
    let c = cluster().await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");

    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1"}}))?,
        )
        .await?;
    post_ready(&nodes, "n1").await?;
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": MicroTime(now())}}))?,
        )
        .await?;

    // Explicit tolerations for both node-failure taints, so a default-tolerations admission
    // plugin leaves them alone. "intolerant" matches neither (wrong value).
    let never = json!([
        {"key": "node.kubernetes.io/unreachable", "operator": "Equal", "value": "nope", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Equal", "value": "nope", "effect": "NoExecute"},
    ]);
    let two_seconds = json!([
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
    ]);
    let forever = json!([
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    ]);
    for (name, tolerations) in [
        ("intolerant", never),
        ("two-seconds", two_seconds),
        ("forever", forever),
    ] {
        pods.create(&PostParams::default(), &pod(name, tolerations)?)
            .await?;
        let status = json!({"status": {"phase": "Running", "podIP": "10.1.0.1", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": Time(now())}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }

    let shutdown = CancellationToken::new();
    let opts = controllers::Options {
        node_monitor_grace_period: Duration::from_secs(2),
        node_monitor_period: Duration::from_millis(300),
        ..Default::default()
    };
    let ctx = controllers::Context::new(c.client.clone(), opts, shutdown.clone());
    let controller = tokio::spawn(controllers::node_lifecycle::run(Arc::clone(&ctx)));

    // The Lease is never renewed: after the grace period the node is Unknown.
    let node = eventually("node Ready=Unknown", Duration::from_secs(20), || async {
        let n = nodes.get("n1").await?;
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .cloned();
        Ok(ready.filter(|r| r.status == "Unknown").map(|r| (n, r)))
    })
    .await?;
    let (_, ready) = node;
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let memory = nodes.get("n1").await?;
    let memory = memory
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "MemoryPressure"))
        .cloned();
    assert_eq!(memory.map(|m| m.status), Some("Unknown".to_string()));

    let tainted = eventually("unreachable taints", Duration::from_secs(10), || async {
        let n = nodes.get("n1").await?;
        let ok = taint_keys(&n, "NoExecute") == ["node.kubernetes.io/unreachable"]
            && taint_keys(&n, "NoSchedule") == ["node.kubernetes.io/unreachable"];
        Ok(ok.then_some(n))
    })
    .await?;
    let added = tainted
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .and_then(|ts| ts.iter().find(|t| t.effect == "NoExecute"))
        .and_then(|t| t.time_added.clone())
        .context("NoExecute taint has timeAdded")?
        .0;

    // The pod tolerating nothing goes at once, with the DisruptionTarget condition first.
    let gone = eventually("intolerant pod deleted", Duration::from_secs(10), || {
        deleted(&pods, "intolerant")
    })
    .await?;
    if let Some(p) = gone {
        let dt = condition(&p, "DisruptionTarget").context("DisruptionTarget condition")?;
        assert_eq!(
            (dt.status.as_str(), dt.reason.as_deref()),
            ("True", Some("DeletionByTaintManager"))
        );
    }
    let two = pods.get("two-seconds").await?;
    let early = now() < added + jiff::SignedDuration::from_secs(2);
    assert!(
        two.metadata.deletion_timestamp.is_none() || !early,
        "two-seconds pod deleted before its toleration ran out"
    );

    // The pod tolerating for 2s goes about 2s after the taint was added.
    eventually("two-seconds pod deleted", Duration::from_secs(10), || {
        deleted(&pods, "two-seconds")
    })
    .await?;
    let elapsed = now().duration_since(added);
    assert!(
        elapsed >= jiff::SignedDuration::from_secs(2),
        "evicted after {elapsed} only"
    );

    // The pod tolerating forever stays, but is marked not ready.
    let forever = eventually("forever pod not ready", Duration::from_secs(10), || async {
        let p = pods.get("forever").await?;
        Ok(condition(&p, "Ready")
            .is_some_and(|c| c.status == "False")
            .then_some(p))
    })
    .await?;
    assert!(forever.metadata.deletion_timestamp.is_none());

    // Events: the eviction is recorded on the pod.
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    eventually(
        "TaintManagerEviction event",
        Duration::from_secs(10),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("TaintManagerEviction")
                        && e.note.as_deref() == Some("Marking for deletion Pod default/intolerant")
                })
                .then_some(()))
        },
    )
    .await?;

    // The kubelet comes back: heartbeats resume and the taints go away.
    renew_lease(&leases, "n1").await?;
    post_ready(&nodes, "n1").await?;
    let healthy = eventually("taints removed", Duration::from_secs(10), || async {
        renew_lease(&leases, "n1").await?;
        let n = nodes.get("n1").await?;
        Ok(
            (taint_keys(&n, "NoExecute").is_empty() && taint_keys(&n, "NoSchedule").is_empty())
                .then_some(n),
        )
    })
    .await?;
    let ready = healthy
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .cloned();
    assert_eq!(ready.map(|r| r.status), Some("True".to_string()));
    assert!(
        pods.get("forever")
            .await?
            .metadata
            .deletion_timestamp
            .is_none()
    );

    shutdown.cancel();
    controller.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_condition_gives_not_ready_taints() -> anyhow::Result<()> {
    let c = cluster().await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n2"}}))?,
        )
        .await?;
    let status = json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "lastHeartbeatTime": Time(now()), "lastTransitionTime": Time(now())},
    ]}});
    nodes
        .patch_status("n2", &PatchParams::default(), &Patch::Strategic(&status))
        .await?;
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n2", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "n2", "leaseDurationSeconds": 40, "renewTime": MicroTime(now())}}))?,
        )
        .await?;

    let shutdown = CancellationToken::new();
    let opts = controllers::Options {
        node_monitor_grace_period: Duration::from_secs(30),
        node_monitor_period: Duration::from_millis(300),
        ..Default::default()
    };
    let ctx = controllers::Context::new(c.client.clone(), opts, shutdown.clone());
    let controller = tokio::spawn(controllers::node_lifecycle::run(ctx));

    // A live kubelet reporting Ready=False: not-ready taints (not unreachable), status untouched.
    let n = eventually("not-ready taints", Duration::from_secs(10), || async {
        let n = nodes.get("n2").await?;
        let ok = taint_keys(&n, "NoExecute") == ["node.kubernetes.io/not-ready"]
            && taint_keys(&n, "NoSchedule") == ["node.kubernetes.io/not-ready"];
        Ok(ok.then_some(n))
    })
    .await?;
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .cloned();
    assert_eq!(
        ready.and_then(|r| r.reason),
        Some("KubeletNotReady".to_string())
    );

    // Cordoning adds the unschedulable taint.
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    eventually("unschedulable taint", Duration::from_secs(10), || async {
        let n = nodes.get("n2").await?;
        Ok(taint_keys(&n, "NoSchedule")
            .contains(&"node.kubernetes.io/unschedulable".to_string())
            .then_some(()))
    })
    .await?;

    shutdown.cancel();
    controller.await??;
    Ok(())
}
