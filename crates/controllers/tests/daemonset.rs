//! DaemonSet controller against the real in-process API server; the test creates Node
//! objects and plays the kubelet by patching pod status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Env {
    _server: testkit::TestServer,
    client: kube::Client,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start() -> anyhow::Result<Env> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let stop = CancellationToken::new();
    let ctx = controllers::Context::new(
        client.clone(),
        controllers::Options::default(),
        stop.clone(),
    );
    tokio::spawn(controllers::daemonset::run(Arc::clone(&ctx)));
    Ok(Env {
        _server: server,
        client,
        stop,
    })
}

/// Polls `f` until it yields Some or the deadline passes.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn add_node(
    nodes: &Api<Node>,
    name: &str,
    taint: Option<&str>,
    unschedulable: bool,
) -> anyhow::Result<()> {
    let taints: Vec<serde_json::Value> = taint
        .map(|t| json!({"key": "dedicated", "value": "x", "effect": t}))
        .into_iter()
        .collect();
    let n: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints, "unschedulable": unschedulable}
    }))?;
    nodes.create(&PostParams::default(), &n).await?;
    Ok(())
}

/// Plays the kubelet: the pod runs and is Ready.
async fn make_ready(pods: &Api<Pod>, pod: &Pod) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now().to_string();
    let st = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(st))
        .await?;
    Ok(())
}

fn pinned_node(p: &Pod) -> Option<String> {
    let terms = &p
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let f = terms.first()?.match_fields.as_ref()?.first()?;
    assert_eq!(
        (f.key.as_str(), f.operator.as_str()),
        ("metadata.name", "In")
    );
    f.values.as_ref()?.first().cloned()
}

async fn live_pods(pods: &Api<Pod>) -> anyhow::Result<Vec<Pod>> {
    let l = pods
        .list(&ListParams::default().labels("app=agent"))
        .await?
        .items;
    Ok(l.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_per_eligible_node() -> anyhow::Result<()> {
    let env = start().await?;
    let nodes: Api<Node> = Api::all(env.client.clone());
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let sets: Api<DaemonSet> = Api::namespaced(env.client.clone(), "default");
    add_node(&nodes, "n1", None, false).await?;
    add_node(&nodes, "n2", None, false).await?;
    add_node(&nodes, "tainted", Some("NoSchedule"), false).await?;
    add_node(&nodes, "cordoned", None, true).await?;
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}
    }))?;
    sets.create(&PostParams::default(), &ds).await?;

    let want = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let placed = |pods: Api<Pod>, n: usize| async move {
        let l = live_pods(&pods).await?;
        let mut on: Vec<String> = l.iter().filter_map(pinned_node).collect();
        on.sort();
        Ok::<_, anyhow::Error>((l.len() == n).then_some(on))
    };
    let on = eventually("3 daemon pods", || placed(pods.clone(), 3)).await?;
    assert_eq!(
        on,
        want(&["cordoned", "n1", "n2"]),
        "unschedulable nodes are eligible, untolerated taints are not"
    );
    let l = live_pods(&pods).await?;
    for p in &l {
        assert!(
            p.spec.as_ref().and_then(|s| s.node_name.clone()).is_none(),
            "the scheduler binds, not the controller"
        );
        let tols = p
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/unschedulable",
        ] {
            assert!(
                tols.iter().any(|t| t.key.as_deref() == Some(key)),
                "toleration {key}"
            );
        }
        assert!(p.labels().contains_key("controller-revision-hash"));
        assert_eq!(
            p.owner_references().first().map(|o| o.kind.as_str()),
            Some("DaemonSet")
        );
    }

    // A node added later gets its pod.
    add_node(&nodes, "n3", None, false).await?;
    let on = eventually("4 daemon pods", || placed(pods.clone(), 4)).await?;
    assert_eq!(on, want(&["cordoned", "n1", "n2", "n3"]));

    // Ready pods show up in status.
    for p in live_pods(&pods).await? {
        make_ready(&pods, &p).await?;
    }
    let st = eventually("status ready", || {
        let sets = sets.clone();
        async move {
            let st = sets.get("agent").await?.status.unwrap_or_default();
            Ok((st.number_ready == 4 && st.number_available == Some(4)).then_some(st))
        }
    })
    .await?;
    assert_eq!(st.desired_number_scheduled, 4);
    assert_eq!(st.current_number_scheduled, 4);
    assert_eq!(st.updated_number_scheduled, Some(4));
    assert_eq!(st.number_misscheduled, 0);
    assert_eq!(st.observed_generation, Some(1));

    // Rolling update: every pod moves to the new revision, one node at a time.
    let old_hash = live_pods(&pods)
        .await?
        .first()
        .and_then(|p| p.labels().get("controller-revision-hash").cloned());
    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "agent:2"}]}}}})),
    )
    .await?;
    let max_down = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    eventually("rollout done", || {
        let (pods, sets, max_down, old_hash) = (
            pods.clone(),
            sets.clone(),
            max_down.clone(),
            old_hash.clone(),
        );
        async move {
            let l = live_pods(&pods).await?;
            let down = 4usize.saturating_sub(
                l.iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count(),
            );
            max_down.fetch_max(down, std::sync::atomic::Ordering::SeqCst);
            for p in &l {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                    make_ready(&pods, p).await?;
                }
            }
            let st = sets.get("agent").await?.status.unwrap_or_default();
            let all_new = l.len() == 4
                && l.iter()
                    .all(|p| p.labels().get("controller-revision-hash") != old_hash.as_ref());
            Ok((all_new
                && st.updated_number_scheduled == Some(4)
                && st.number_available == Some(4))
            .then_some(()))
        }
    })
    .await?;
    assert!(
        max_down.load(std::sync::atomic::Ordering::SeqCst) <= 1,
        "maxUnavailable 1 respected"
    );
    let revs: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        Api::namespaced(env.client.clone(), "default");
    assert_eq!(revs.list(&ListParams::default()).await?.items.len(), 2);
    Ok(())
}
