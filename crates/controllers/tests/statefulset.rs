//! StatefulSet controller against the real in-process API server; the test plays the
//! kubelet by marking pods Running and Ready.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
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
    tokio::spawn(controllers::statefulset::run(Arc::clone(&ctx)));
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

/// Plays the kubelet: the pod runs and is Ready.
async fn make_ready(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now().to_string();
    let st = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(st))
        .await?;
    Ok(())
}

async fn names(pods: &Api<Pod>) -> anyhow::Result<Vec<String>> {
    let l = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    let mut n: Vec<String> = l
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    n.sort();
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_creation_scale_down_and_rollout() -> anyhow::Result<()> {
    let env = start().await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let sets: Api<StatefulSet> = Api::namespaced(env.client.clone(), "default");
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(env.client.clone(), "default");
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "serviceName": "nginx",
                 "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "www"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))?;
    sets.create(&PostParams::default(), &sts).await?;

    // OrderedReady: each ordinal appears only after the previous one is Running and Ready.
    for i in 0..3 {
        let want: Vec<String> = (0..=i).map(|o| format!("web-{o}")).collect();
        let got = eventually(&format!("web-{i}"), || {
            let pods = pods.clone();
            async move {
                Ok(names(&pods)
                    .await
                    .ok()
                    .filter(|n| n.len() == i as usize + 1))
            }
        })
        .await?;
        assert_eq!(got, want, "only ordinals up to {i} exist");
        let p = pods.get(&format!("web-{i}")).await?;
        let labels = p.labels();
        assert_eq!(
            labels.get("statefulset.kubernetes.io/pod-name"),
            Some(&format!("web-{i}"))
        );
        assert_eq!(
            labels.get("apps.kubernetes.io/pod-index"),
            Some(&i.to_string())
        );
        assert!(
            labels
                .get("controller-revision-hash")
                .is_some_and(|h| h.starts_with("web-"))
        );
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!(spec.hostname, Some(format!("web-{i}")));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let claim = spec
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "www");
        assert_eq!(
            claim
                .and_then(|v| v.persistent_volume_claim)
                .map(|c| c.claim_name),
            Some(format!("www-web-{i}"))
        );
        assert!(
            pvcs.get_opt(&format!("www-web-{i}")).await?.is_some(),
            "claim created"
        );
        // Not ready yet: the next ordinal must not appear.
        assert_eq!(names(&pods).await?.len(), i as usize + 1);
        make_ready(&pods, &format!("web-{i}")).await?;
    }
    let st = eventually("3 ready", || {
        let sets = sets.clone();
        async move {
            let st = sets.get("web").await?.status.unwrap_or_default();
            Ok((st.ready_replicas == Some(3) && st.replicas == 3).then_some(st))
        }
    })
    .await?;
    assert_eq!(st.current_revision, st.update_revision);
    assert_eq!(st.updated_replicas, Some(3));
    assert_eq!(st.available_replicas, Some(3));
    let first_rev = st.update_revision.clone();

    // Rolling update: highest ordinal first; the test readies each replacement.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:2"}]}}}})),
    )
    .await?;
    let order = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let st = eventually("rollout", || {
        let (pods, sets, order, first_rev) =
            (pods.clone(), sets.clone(), order.clone(), first_rev.clone());
        async move {
            for p in pods
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
            {
                let rev = p.labels().get("controller-revision-hash").cloned();
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if rev != first_rev && !running {
                    if let Ok(mut o) = order.lock() {
                        o.push(p.name_any());
                    }
                    make_ready(&pods, &p.name_any()).await?;
                }
            }
            let st = sets.get("web").await?.status.unwrap_or_default();
            let fresh = st.observed_generation == Some(2) && st.update_revision != first_rev;
            Ok((fresh
                && st.updated_replicas == Some(3)
                && st.ready_replicas == Some(3)
                && st.current_revision == st.update_revision)
                .then_some(st))
        }
    })
    .await?;
    assert_ne!(st.update_revision, first_rev);
    let order = order.lock().map(|o| o.clone()).unwrap_or_default();
    assert_eq!(
        order,
        ["web-2", "web-1", "web-0"],
        "replaced from the highest ordinal down"
    );

    // Scale down removes the highest ordinals, keeping claims (Retain).
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    eventually("scaled to 1", || {
        let pods = pods.clone();
        async move { Ok((names(&pods).await? == ["web-0"]).then_some(())) }
    })
    .await?;
    assert!(
        pvcs.get_opt("www-web-2").await?.is_some(),
        "Retain keeps claims"
    );
    Ok(())
}
