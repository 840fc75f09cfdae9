//! The scheduler against the real API server in-process: binding within capacity, the
//! unschedulable condition and event, leader election's Lease, preemption, and retrying a
//! pod once a Node update (a taint removed) may let it fit.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn create_node(nodes: &Api<Node>, name: &str, cpu: &str) -> anyhow::Result<()> {
    let status = json!({
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready"}],
    });
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": status,
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating node {name}"))?;
    // Status may be reset on create; the kubelet's way is the status subresource.
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .with_context(|| format!("setting node {name} status"))?;
    Ok(())
}

fn pod(name: &str, cpu: &str, class: Option<&str>) -> anyhow::Result<Pod> {
    assigned_pod(name, cpu, class, None)
}

/// A pod created already assigned (as if bound earlier), so tests that are not about binding
/// can fill nodes.
fn assigned_pod(
    name: &str,
    cpu: &str,
    class: Option<&str>,
    node: Option<&str>,
) -> anyhow::Result<Pod> {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    if let Some(c) = class {
        spec["priorityClassName"] = json!(c);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))?)
}

/// Polls `check` until it yields a value or the deadline passes.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn condition<'a>(p: &'a Pod, type_: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

async fn priority_class(client: &kube::Client, name: &str, value: i32) -> anyhow::Result<()> {
    let pc: PriorityClass = serde_json::from_value(
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value}),
    )?;
    Api::<PriorityClass>::all(client.clone())
        .create(&PostParams::default(), &pc)
        .await
        .with_context(|| format!("creating PriorityClass {name}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_within_capacity_reports_unschedulable_and_preempts() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SKIFF_LOG"))
        .with_test_writer()
        .try_init();
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..5 {
        create_node(&nodes, &format!("node-{i}"), "4").await?;
    }

    let shutdown = CancellationToken::new();
    let sched = tokio::spawn(scheduler::run(
        client.clone(),
        scheduler::Config::default(),
        shutdown.clone(),
    ));

    // 20 pods of 900m: exactly four fit on each 4-cpu node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..20 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p-{i:02}"), "900m", None)?,
        )
        .await?;
    }
    let bound = eventually("20 pods bound", Duration::from_secs(30), || async {
        let list = pods.list(&ListParams::default()).await?;
        let bound: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .collect();
        Ok((bound.len() == 20).then_some(bound))
    })
    .await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &bound {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .context("bound pod without node")?;
        *per_node.entry(node).or_default() += 1;
        let cond = condition(p, "PodScheduled").context("bound pod without PodScheduled")?;
        assert_eq!(cond.status, "True");
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![4; 5],
        "{per_node:?}"
    );

    // The Lease shows who schedules.
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get("kube-scheduler")
        .await?;
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty())
    );

    // A 21st pod fits nowhere and nothing can be preempted for it.
    pods.create(&PostParams::default(), &pod("overflow", "900m", None)?)
        .await?;
    let msg = eventually(
        "PodScheduled=False on overflow",
        Duration::from_secs(30),
        || async {
            let p = pods.get("overflow").await?;
            Ok(condition(&p, "PodScheduled")
                .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
                .and_then(|c| c.message.clone()))
        },
    )
    .await?;
    assert_eq!(
        msg,
        "0/5 nodes are available: 5 Insufficient cpu. preemption: 0/5 nodes are available: 5 No preemption victims found for incoming pod."
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually(
        "FailedScheduling and Scheduled events",
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await?;
            let failed = list.items.iter().any(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("overflow")
            });
            let scheduled = list.items.iter().any(|e| {
                e.reason.as_deref() == Some("Scheduled")
                    && e.note.as_deref().is_some_and(|n| {
                        n.starts_with("Successfully assigned default/p-00 to node-")
                    })
            });
            Ok((failed && scheduled).then_some(()))
        },
    )
    .await?;

    // A higher-priority pod preempts one victim and is nominated to its node.
    priority_class(&client, "vip", 1000).await?;
    pods.create(&PostParams::default(), &pod("vip", "900m", Some("vip"))?)
        .await?;
    let nominated = eventually("vip nominated", Duration::from_secs(30), || async {
        let p = pods.get("vip").await?;
        Ok(p.status.and_then(|s| s.nominated_node_name))
    })
    .await?;
    let victim = eventually(
        "a victim marked and deleting",
        Duration::from_secs(30),
        || async {
            let list = pods.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && condition(p, "DisruptionTarget")
                        .is_some_and(|c| c.reason.as_deref() == Some("PreemptionByScheduler"))
            }))
        },
    )
    .await?;
    assert_eq!(
        victim.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(nominated.as_str())
    );
    // Play the kubelet: finish the graceful deletion.
    let victim_name = victim
        .metadata
        .name
        .clone()
        .context("victim without name")?;
    pods.delete(
        &victim_name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let node = eventually("vip bound", Duration::from_secs(30), || async {
        let p = pods.get("vip").await?;
        Ok(p.spec.and_then(|s| s.node_name))
    })
    .await?;
    assert_eq!(node, nominated);
    // The overflow pod is still pending: vip took the freed room.
    let overflow = pods.get("overflow").await?;
    assert!(overflow.spec.and_then(|s| s.node_name).is_none());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), sched)
        .await
        .context("scheduler did not stop")???;
    Ok(())
}

/// Everything except binding itself: nodes filled by pre-assigned pods, the exact
/// unschedulable condition and event, the Lease, and preemption marking and deleting a victim
/// and nominating the preemptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_condition_event_lease_and_preemption() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SKIFF_LOG"))
        .with_test_writer()
        .try_init();
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    priority_class(&client, "vip", 1000).await?;
    for i in 0..5 {
        create_node(&nodes, &format!("node-{i}"), "4").await?;
        priority_class(&client, &format!("low-{i}"), i).await?;
        for j in 0..4 {
            let node = format!("node-{i}");
            let class = format!("low-{i}");
            pods.create(
                &PostParams::default(),
                &assigned_pod(&format!("fill-{i}-{j}"), "900m", Some(&class), Some(&node))?,
            )
            .await?;
        }
    }
    let shutdown = CancellationToken::new();
    let sched = tokio::spawn(scheduler::run(
        client.clone(),
        scheduler::Config::default(),
        shutdown.clone(),
    ));

    pods.create(&PostParams::default(), &pod("overflow", "900m", None)?)
        .await?;
    let msg = eventually(
        "PodScheduled=False on overflow",
        Duration::from_secs(30),
        || async {
            let p = pods.get("overflow").await?;
            Ok(condition(&p, "PodScheduled")
                .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
                .and_then(|c| c.message.clone()))
        },
    )
    .await?;
    // Fill pods have priorities 0..4; the overflow pod's 0 outranks none of them.
    assert_eq!(
        msg,
        "0/5 nodes are available: 5 Insufficient cpu. preemption: 0/5 nodes are available: 5 No preemption victims found for incoming pod."
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually(
        "a FailedScheduling event",
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("FailedScheduling")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note.as_deref() == Some(msg.as_str())
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("overflow")
                })
                .then_some(()))
        },
    )
    .await?;
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get("kube-scheduler")
        .await?;
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty())
    );

    // Priority 1000 preempts on node-0, whose pods have the lowest priority (0).
    pods.create(&PostParams::default(), &pod("vip", "900m", Some("vip"))?)
        .await?;
    let nominated = eventually("vip nominated", Duration::from_secs(30), || async {
        let p = pods.get("vip").await?;
        Ok(p.status.and_then(|s| s.nominated_node_name))
    })
    .await?;
    assert_eq!(nominated, "node-0");
    let victims = eventually(
        "one victim marked and deleting",
        Duration::from_secs(30),
        || async {
            let list = pods.list(&ListParams::default()).await?;
            let v: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_some()
                        && condition(p, "DisruptionTarget")
                            .is_some_and(|c| c.reason.as_deref() == Some("PreemptionByScheduler"))
                })
                .collect();
            Ok((!v.is_empty()).then_some(v))
        },
    )
    .await?;
    assert_eq!(victims.len(), 1);
    assert_eq!(
        victims[0]
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref()),
        Some("node-0")
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), sched)
        .await
        .context("scheduler did not stop")???;
    Ok(())
}

const DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";

/// Sets the node's taints the way the node lifecycle controller does (a merge patch of
/// `spec.taints`).
async fn set_taints(
    nodes: &Api<Node>,
    name: &str,
    taints: serde_json::Value,
) -> anyhow::Result<()> {
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await
        .with_context(|| format!("setting the taints of node {name}"))?;
    Ok(())
}

/// The message of the pod's PodScheduled=False condition, once the scheduler wrote it.
async fn unschedulable_message(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    eventually(
        &format!("PodScheduled=False on {name}"),
        Duration::from_secs(30),
        || async {
            let p = pods.get(name).await?;
            Ok(condition(&p, "PodScheduled")
                .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
                .and_then(|c| c.message.clone()))
        },
    )
    .await
}

async fn bound_node(pods: &Api<Pod>, name: &str, timeout: Duration) -> anyhow::Result<String> {
    eventually(&format!("{name} bound"), timeout, || async {
        let p = pods.get(name).await?;
        Ok(p.spec.and_then(|s| s.node_name))
    })
    .await
}

/// A pod rejected for a node's taint is retried when a Node update removes the taint (after
/// its 1s backoff), as upstream's queue does; it must not wait for a periodic flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_rejected_for_a_taint_binds_once_the_taint_is_removed() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SKIFF_LOG"))
        .with_test_writer()
        .try_init();
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    create_node(&nodes, "n1", "4").await?;
    let tainted = json!([{"key": DISK_PRESSURE, "effect": "NoSchedule"}]);
    set_taints(&nodes, "n1", tainted.clone()).await?;

    let shutdown = CancellationToken::new();
    let sched = tokio::spawn(scheduler::run(
        client.clone(),
        scheduler::Config::default(),
        shutdown.clone(),
    ));

    // Removed well after the first attempt's backoff ran out: the pod is parked.
    pods.create(&PostParams::default(), &pod("web", "100m", None)?)
        .await?;
    let msg = unschedulable_message(&pods, "web").await?;
    assert_eq!(
        msg,
        format!(
            "0/1 nodes are available: 1 node(s) had untolerated taint {{{DISK_PRESSURE}: }}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        )
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    set_taints(&nodes, "n1", json!([])).await?;
    assert_eq!(
        bound_node(&pods, "web", Duration::from_secs(3)).await?,
        "n1"
    );

    // Removed while the pod's 1s backoff still runs (as when the taint goes away just after
    // an attempt that saw it): retried as soon as the backoff ends.
    set_taints(&nodes, "n1", tainted.clone()).await?;
    // Give the scheduler's Node watch (loopback, in-process) ample time to deliver the taint
    // before the pod arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pods.create(&PostParams::default(), &pod("api", "100m", None)?)
        .await?;
    unschedulable_message(&pods, "api").await?;
    set_taints(&nodes, "n1", json!([])).await?;
    assert_eq!(
        bound_node(&pods, "api", Duration::from_secs(3)).await?,
        "n1"
    );

    // The removal races with the first attempt: whichever the scheduler sees first, the pod
    // binds within its backoff.
    for name in ["race-0", "race-1", "race-2"] {
        set_taints(&nodes, "n1", tainted.clone()).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let racer = pod(name, "100m", None)?;
        let pp = PostParams::default();
        let (created, untainted) = tokio::join!(
            pods.create(&pp, &racer),
            set_taints(&nodes, "n1", json!([])),
        );
        created?;
        untainted?;
        assert_eq!(bound_node(&pods, name, Duration::from_secs(3)).await?, "n1");
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), sched)
        .await
        .context("scheduler did not stop")???;
    Ok(())
}
