//! Deployment controller against the real in-process API server, with the ReplicaSet
//! controller running and the test playing kubelet (marking pods Running/Ready): a rolling
//! update never drops below `replicas - maxUnavailable` ready pods, history has two
//! revisions, and an undo (done as kubectl does it) restores the old template.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
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
    tokio::spawn(controllers::deployment::run(ctx));
    Ok(Cluster {
        client,
        _server: server,
        stop,
    })
}

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Res<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
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

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Plays kubelet: every new pod becomes Running and Ready. Also tracks the ready pods seen
/// after every pod event, so the test can check availability never dipped.
fn fake_kubelet(
    client: Client,
    ns: &str,
    stop: CancellationToken,
    min_ready: Arc<Mutex<Option<usize>>>,
) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut seen: BTreeMap<String, Pod> = BTreeMap::new();
        let mut stream = watcher(pods.clone(), watcher::Config::default()).boxed();
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = stream.next() => ev,
            };
            let Some(Ok(ev)) = ev else { continue };
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    if p.metadata.deletion_timestamp.is_none() && !ready(&p) {
                        let now = jiff::Timestamp::now().to_string();
                        let patch = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                        let _ = pods
                            .patch_status(
                                &p.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await;
                    }
                    seen.insert(p.name_any(), p);
                }
                watcher::Event::Delete(p) => {
                    seen.remove(&p.name_any());
                }
                _ => {}
            }
            let n = seen.values().filter(|p| ready(p)).count();
            if let Ok(mut m) = min_ready.lock()
                && let Some(cur) = m.as_mut()
            {
                *cur = (*cur).min(n);
            }
        }
    });
}

fn image_of(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()
}

/// Waits for the rollout to finish the way `kubectl rollout status` judges it.
async fn rollout_complete(deps: &Api<Deployment>, name: &str, replicas: i32) -> Res<Deployment> {
    wait_for("rollout complete", || {
        let deps = deps.clone();
        let name = name.to_string();
        async move {
            let d = deps.get(&name).await?;
            let st = d.status.clone().unwrap_or_default();
            let progressed = st.conditions.iter().flatten().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
            });
            let done = st.observed_generation >= d.metadata.generation
                && st.updated_replicas == Some(replicas)
                && st.replicas == Some(replicas)
                && st.available_replicas == Some(replicas)
                && progressed;
            Ok(done.then_some(d))
        }
    })
    .await
}

/// What `kubectl rollout history` lists: ReplicaSets the Deployment controls, by revision.
async fn history(rss: &Api<ReplicaSet>, d: &Deployment) -> Res<BTreeMap<i64, ReplicaSet>> {
    let list = rss.list(&ListParams::default().labels("app=web")).await?;
    let uid = d.uid().ok_or("no uid")?;
    let mut out = BTreeMap::new();
    for rs in list.items {
        if rs
            .owner_references()
            .iter()
            .any(|r| r.uid == uid && r.controller == Some(true))
        {
            let rev: i64 = rs
                .annotations()
                .get("deployment.kubernetes.io/revision")
                .ok_or("no revision")?
                .parse()?;
            out.insert(rev, rs);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_history_and_undo() -> Res<()> {
    let ns = "deploy-test";
    let c = cluster(ns).await?;
    let deps: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), ns);
    let min_ready = Arc::new(Mutex::new(None));
    fake_kubelet(c.client.clone(), ns, c.stop.clone(), min_ready.clone());

    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}
        }
    }))?;
    deps.create(&PostParams::default(), &d).await?;
    let d = rollout_complete(&deps, "web", 4).await?;
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let h = history(&rss, &d).await?;
    let rs1 = h.get(&1).ok_or("revision 1")?;
    let hash = rs1
        .labels()
        .get("pod-template-hash")
        .ok_or("hash label")?
        .clone();
    assert_eq!(rs1.name_any(), format!("web-{hash}"));
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/desired-replicas")
            .map(String::as_str),
        Some("4")
    );
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/max-replicas")
            .map(String::as_str),
        Some("5")
    );
    let available = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"))
        .ok_or("Available")?;
    assert_eq!(
        (available.status.as_str(), available.reason.as_deref()),
        ("True", Some("MinimumReplicasAvailable"))
    );

    // From here on, ready pods must never drop below replicas - maxUnavailable = 3.
    wait_for("kubelet saw all 4 ready", || {
        let min_ready = min_ready.clone();
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
        async move {
            let n = pods
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|p| ready(p))
                .count();
            if n == 4
                && let Ok(mut m) = min_ready.lock()
            {
                *m = Some(4);
            }
            Ok((n == 4).then_some(()))
        }
    })
    .await?;

    deps.patch("web", &PatchParams::default(), &Patch::Strategic(&json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}}))).await?;
    wait_for("new generation observed", || {
        let deps = deps.clone();
        async move {
            let d = deps.get("web").await?;
            Ok((d.metadata.generation == Some(2)).then_some(()))
        }
    })
    .await?;
    let d = rollout_complete(&deps, "web", 4).await?;
    assert_eq!(image_of(&d).as_deref(), Some("nginx:2"));
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("2")
    );
    let lowest = min_ready
        .lock()
        .map_err(|_| "poisoned")?
        .ok_or("tracking")?;
    assert!(
        lowest >= 3,
        "ready pods dropped to {lowest} during the rollout"
    );

    // Old RS scaled to zero; history lists both revisions.
    let h = wait_for("old RS at 0", || {
        let (rss, d) = (rss.clone(), d.clone());
        async move {
            let h = history(&rss, &d).await?;
            let old_zero = h.get(&1).is_some_and(|rs| {
                rs.spec.as_ref().and_then(|s| s.replicas) == Some(0)
                    && rs.status.as_ref().is_some_and(|s| s.replicas == 0)
            });
            Ok(old_zero.then_some(h))
        }
    })
    .await?;
    assert_eq!(
        h.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2])
    );

    // Undo as kubectl does it: the revision-1 template (minus the hash label) goes back in
    // (kubectl sends a JSON patch; kube here lacks the json-patch feature, and a merge patch of
    // the whole template is equivalent for this template).
    let rs1 = &h[&1];
    let mut template = serde_json::to_value(
        rs1.spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .ok_or("template")?,
    )?;
    if let Some(l) = template
        .pointer_mut("/metadata/labels")
        .and_then(|v| v.as_object_mut())
    {
        l.remove("pod-template-hash");
    }
    deps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": template}})),
    )
    .await?;
    wait_for("undo generation", || {
        let deps = deps.clone();
        async move { Ok((deps.get("web").await?.metadata.generation == Some(3)).then_some(())) }
    })
    .await?;
    let d = rollout_complete(&deps, "web", 4).await?;
    assert_eq!(image_of(&d).as_deref(), Some("nginx:1"));
    let h = wait_for("history after undo", || {
        let (rss, d) = (rss.clone(), d.clone());
        async move {
            let h = history(&rss, &d).await?;
            Ok(h.contains_key(&3).then_some(h))
        }
    })
    .await?;
    // The revision-1 ReplicaSet was reused (no new one) and became revision 3.
    assert_eq!(
        h.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([2, 3])
    );
    assert_eq!(h[&3].name_any(), format!("web-{hash}"));
    assert_eq!(
        h[&3]
            .annotations()
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    let lowest = min_ready
        .lock()
        .map_err(|_| "poisoned")?
        .ok_or("tracking")?;
    assert!(
        lowest >= 3,
        "ready pods dropped to {lowest} during the undo"
    );

    // Scaling ReplicaSet events as upstream words them.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), ns);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ScalingReplicaSet"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n == &format!("Scaled up replica set web-{hash} from 0 to 4")),
        "{notes:?}"
    );
    Ok(())
}
