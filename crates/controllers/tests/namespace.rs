//! Namespace controller against the real in-process API server: deleting a namespace removes
//! its content and then the namespace; content held by a finalizer keeps it Terminating until
//! the finalizer goes. (Status conditions are unit-tested in the crate: see STATUS_WRITES_SAFE.)

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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

async fn cluster() -> Res<Cluster> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let stop = CancellationToken::new();
    let ctx = controllers::Context::new(
        client.clone(),
        controllers::Options::default(),
        stop.clone(),
    );
    tokio::spawn(controllers::namespace::run(ctx));
    Ok(Cluster {
        client,
        _server: server,
        stop,
    })
}

/// Polls `check` until it yields a value or the deadline passes.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Res<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
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

async fn fill(client: &Client, ns: &str) -> Res<()> {
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for i in 0..3 {
        cms.create(
            &pp,
            &serde_json::from_value(
                json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}),
            )?,
        )
        .await?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}))?,
        )
        .await?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deploys
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
                }
            }))?,
        )
        .await?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    svcs.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))?).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_its_content_then_itself() -> Res<()> {
    let c = cluster().await?;
    fill(&c.client, "doomed").await?;
    fill(&c.client, "kept").await?;
    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.delete("doomed", &DeleteParams::default()).await?;
    // `kubectl delete ns` waits for exactly this: the namespace gone.
    wait_for("namespace doomed gone", Duration::from_secs(30), || async {
        Ok(nss.get_opt("doomed").await?.is_none().then_some(()))
    })
    .await?;
    // Its content went with it (a recreated namespace of the same name starts empty).
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "doomed"}}))?,
    )
    .await?;
    let lp = ListParams::default();
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "doomed");
    let user_cms: Vec<String> = cms
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.starts_with("cm-"))
        .collect();
    assert!(user_cms.is_empty(), "{user_cms:?}");
    assert!(
        Api::<Secret>::namespaced(c.client.clone(), "doomed")
            .list(&lp)
            .await?
            .items
            .is_empty()
    );
    assert!(
        Api::<Deployment>::namespaced(c.client.clone(), "doomed")
            .list(&lp)
            .await?
            .items
            .is_empty()
    );
    assert!(
        Api::<Service>::namespaced(c.client.clone(), "doomed")
            .list(&lp)
            .await?
            .items
            .is_empty()
    );
    // The other namespace is untouched.
    assert_eq!(
        Api::<Deployment>::namespaced(c.client.clone(), "kept")
            .list(&lp)
            .await?
            .items
            .len(),
        1
    );
    let kept_cms = Api::<ConfigMap>::namespaced(c.client.clone(), "kept")
        .list(&lp)
        .await?
        .items;
    assert_eq!(
        kept_cms
            .iter()
            .filter(|c| c
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("cm-")))
            .count(),
        3
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizer_on_content_keeps_namespace_terminating() -> Res<()> {
    let c = cluster().await?;
    let pp = PostParams::default();
    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "held"}}))?,
    )
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "held");
    cms.create(
        &pp,
        &serde_json::from_value(
            json!({"metadata": {"name": "pinned", "finalizers": ["example.com/hold"]}}),
        )?,
    )
    .await?;
    cms.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "free"}}))?,
    )
    .await?;
    nss.delete("held", &DeleteParams::default()).await?;

    // The finalizer-free object goes; the pinned one waits, marked for deletion, and so does
    // the namespace.
    wait_for("free deleted", Duration::from_secs(30), || async {
        Ok(cms.get_opt("free").await?.is_none().then_some(()))
    })
    .await?;
    let pinned = cms.get("pinned").await?;
    assert!(pinned.metadata.deletion_timestamp.is_some());
    let ns = nss.get("held").await?;
    assert_eq!(
        ns.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Terminating")
    );
    assert_eq!(
        ns.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_string()])
    );

    // Releasing the finalizer lets the namespace go (on the controller's requeue).
    cms.patch(
        "pinned",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    wait_for("namespace held gone", Duration::from_secs(30), || async {
        Ok(nss.get_opt("held").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}
