//! ReplicaSet and ReplicationController controllers against the real in-process API server:
//! creation with owner references and events, adoption of orphans, scale-down ranking.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, ReplicationController};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Cluster {
    client: Client,
    _server: testkit::TestServer,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn cluster(ns: &str) -> Res<Cluster> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
    )
    .await?;
    let stop = CancellationToken::new();
    let ctx = controllers::Context::new(
        client.clone(),
        controllers::Options::default(),
        stop.clone(),
    );
    tokio::spawn(controllers::replicaset::run(ctx.clone()));
    tokio::spawn(controllers::replicaset::run_rc(ctx));
    Ok(Cluster {
        client,
        _server: server,
        stop,
    })
}

/// Polls `check` until it yields a value or the deadline passes.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Res<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn owned_pods(pods: &Api<Pod>, owner_uid: &str) -> Res<Vec<Pod>> {
    let list = pods.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|r| r.uid == owner_uid && r.controller == Some(true))
        })
        .collect())
}

async fn mark_ready(pods: &Api<Pod>, name: &str) -> Res<()> {
    let now = jiff::Timestamp::now().to_string();
    let patch = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn rs_manifest(name: &str, replicas: i32) -> Res<ReplicaSet> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name, "extra": "x"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
        }
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_creates_adopts_and_scales_down_by_rank() -> Res<()> {
    let ns = "rs-test";
    let c = cluster(ns).await?;
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);

    // An orphan that matches the selector exists before the ReplicaSet: it gets adopted.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))?;
    pods.create(&PostParams::default(), &orphan).await?;

    let rs = rss
        .create(&PostParams::default(), &rs_manifest("web", 3)?)
        .await?;
    let uid = rs.uid().ok_or("no uid")?;
    let created = wait_for("3 owned pods", || {
        let (pods, uid) = (pods.clone(), uid.clone());
        async move {
            let owned = owned_pods(&pods, &uid).await?;
            Ok((owned.len() == 3).then_some(owned))
        }
    })
    .await?;
    assert!(
        created.iter().any(|p| p.name_any() == "orphan"),
        "orphan adopted"
    );
    for p in &created {
        let r = p
            .owner_references()
            .iter()
            .find(|r| r.uid == uid)
            .ok_or("no owner ref")?;
        assert_eq!(
            (r.kind.as_str(), r.controller, r.block_owner_deletion),
            ("ReplicaSet", Some(true), Some(true))
        );
        if p.name_any() != "orphan" {
            assert!(
                p.name_any().starts_with("web-"),
                "generateName: {}",
                p.name_any()
            );
            assert_eq!(p.labels().get("extra").map(String::as_str), Some("x"));
        }
    }

    // Two pods become ready; the orphan (not ready) stays Pending.
    let ready: Vec<String> = created
        .iter()
        .map(|p| p.name_any())
        .filter(|n| n != "orphan")
        .collect();
    for n in &ready {
        mark_ready(&pods, n).await?;
    }
    wait_for("status with 2 ready", || {
        let rss = rss.clone();
        async move {
            let rs = rss.get("web").await?;
            let st = rs.status.unwrap_or_default();
            Ok((st.replicas == 3
                && st.ready_replicas == Some(2)
                && st.available_replicas == Some(2)
                && st.fully_labeled_replicas == Some(2)
                && st.observed_generation == rs.metadata.generation)
                .then_some(()))
        }
    })
    .await?;

    // Scale to 2: the not-ready pod goes first.
    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 2}})),
    )
    .await?;
    let left = wait_for("2 owned pods", || {
        let (pods, uid) = (pods.clone(), uid.clone());
        async move {
            let owned = owned_pods(&pods, &uid).await?;
            Ok((owned.len() == 2).then_some(owned))
        }
    })
    .await?;
    let mut names: Vec<String> = left.iter().map(|p| p.name_any()).collect();
    names.sort();
    let mut want = ready.clone();
    want.sort();
    assert_eq!(names, want, "the unready orphan was deleted");

    // A pod that stops matching the selector is released and replaced.
    let victim = &ready[0];
    pods.patch(
        victim,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await?;
    wait_for("release and replacement", || {
        let (pods, uid, victim) = (pods.clone(), uid.clone(), victim.clone());
        async move {
            let p = pods.get(&victim).await?;
            let released = p.owner_references().iter().all(|r| r.uid != uid);
            let owned = owned_pods(&pods, &uid).await?;
            Ok(
                (released && owned.len() == 2 && owned.iter().all(|p| p.name_any() != victim))
                    .then_some(()),
            )
        }
    })
    .await?;

    // Upstream's events.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), ns);
    let reasons = wait_for("events", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            let reasons: BTreeMap<String, String> = list
                .items
                .into_iter()
                .map(|e| {
                    (
                        e.reason.clone().unwrap_or_default(),
                        e.note.unwrap_or_default(),
                    )
                })
                .collect();
            Ok((reasons.contains_key("SuccessfulCreate")
                && reasons.contains_key("SuccessfulDelete"))
            .then_some(reasons))
        }
    })
    .await?;
    assert!(
        reasons["SuccessfulCreate"].starts_with("Created pod: web-"),
        "{reasons:?}"
    );
    assert!(
        reasons["SuccessfulDelete"].starts_with("Deleted pod: "),
        "{reasons:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controller_keeps_replicas() -> Res<()> {
    let ns = "rc-test";
    let c = cluster(ns).await?;
    let rcs: Api<ReplicationController> = Api::namespaced(c.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    // No selector: it defaults to the template's labels.
    let rc: ReplicationController = serde_json::from_value(json!({
        "metadata": {"name": "legacy"},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))?;
    let rc = rcs.create(&PostParams::default(), &rc).await?;
    let uid = rc.uid().ok_or("no uid")?;
    let owned = wait_for("2 pods", || {
        let (pods, uid) = (pods.clone(), uid.clone());
        async move {
            let owned = owned_pods(&pods, &uid).await?;
            Ok((owned.len() == 2).then_some(owned))
        }
    })
    .await?;
    assert!(owned.iter().all(|p| {
        p.owner_references()
            .iter()
            .any(|r| r.kind == "ReplicationController")
    }));
    // A deleted pod is replaced.
    pods.delete(&owned[0].name_any(), &Default::default())
        .await?;
    let gone = owned[0].name_any();
    wait_for("replacement and status", || {
        let (pods, uid, rcs, gone) = (pods.clone(), uid.clone(), rcs.clone(), gone.clone());
        async move {
            let owned = owned_pods(&pods, &uid).await?;
            let st = rcs.get("legacy").await?.status.unwrap_or_default();
            Ok(
                (owned.len() == 2
                    && owned.iter().all(|p| p.name_any() != gone)
                    && st.replicas == 2)
                    .then_some(()),
            )
        }
    })
    .await?;
    Ok(())
}
