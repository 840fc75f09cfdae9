//! Garbage collector against the real in-process API server: background, orphan and
//! foreground propagation, dangling owner references, and owners served by a CRD.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NS: &str = "gc-test";

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
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
    )
    .await?;
    let stop = CancellationToken::new();
    let ctx = controllers::Context::new(
        client.clone(),
        controllers::Options::default(),
        stop.clone(),
    );
    tokio::spawn(controllers::gc::run(ctx));
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

async fn create_cm(api: &Api<ConfigMap>, name: &str, owners: &[&ConfigMap]) -> Res<ConfigMap> {
    let refs: Vec<_> = owners
        .iter()
        .map(|o| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(), "uid": o.uid().unwrap_or_default(), "controller": false, "blockOwnerDeletion": true}))
        .collect();
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": name, "ownerReferences": refs}, "data": {"k": "v"}}),
    )?;
    Ok(api.create(&PostParams::default(), &cm).await?)
}

async fn gone(api: &Api<ConfigMap>, name: &str) -> Res<Option<()>> {
    Ok(api.get_opt(name).await?.is_none().then_some(()))
}

/// Records the names of deleted ConfigMaps in the order the API server reports them.
fn record_deletions(client: &Client) -> Arc<Mutex<Vec<String>>> {
    let order = Arc::new(Mutex::new(Vec::new()));
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let out = order.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Delete(cm)) = ev {
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(cm.name_any());
            }
        }
    });
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_deletes_dependents() -> Res<()> {
    let c = cluster().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    let owner = create_cm(&cms, "owner", &[]).await?;
    let other = create_cm(&cms, "other-owner", &[]).await?;
    create_cm(&cms, "dep-1", &[&owner]).await?;
    create_cm(&cms, "dep-2", &[&owner]).await?;
    let shared = create_cm(&cms, "shared", &[&owner, &other]).await?;
    assert_eq!(shared.owner_references().len(), 2);

    cms.delete("owner", &DeleteParams::background()).await?;
    wait_for("dep-1 deleted", || gone(&cms, "dep-1")).await?;
    wait_for("dep-2 deleted", || gone(&cms, "dep-2")).await?;
    // A dependent with a remaining owner only loses the dangling reference.
    let shared = wait_for("shared loses the dangling ref", || async {
        let cm = cms.get("shared").await?;
        Ok((cm.owner_references().len() == 1).then_some(cm))
    })
    .await?;
    assert_eq!(
        shared.owner_references()[0].uid,
        other.uid().unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangling_owner_reference_at_creation_is_collected() -> Res<()> {
    let c = cluster().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "stray", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "never-existed", "uid": "00000000-0000-0000-0000-000000000000"}
        ]}}),
    )?;
    cms.create(&PostParams::default(), &cm).await?;
    wait_for("stray deleted", || gone(&cms, "stray")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_keeps_dependents_without_the_reference() -> Res<()> {
    let c = cluster().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    let owner = create_cm(&cms, "owner", &[]).await?;
    let other = create_cm(&cms, "other-owner", &[]).await?;
    create_cm(&cms, "dep-1", &[&owner]).await?;
    create_cm(&cms, "dep-2", &[&owner, &other]).await?;

    cms.delete("owner", &DeleteParams::orphan()).await?;
    wait_for("owner deleted", || gone(&cms, "owner")).await?;
    let dep1 = cms.get("dep-1").await?;
    assert!(
        dep1.owner_references().is_empty(),
        "dep-1 refs: {:?}",
        dep1.owner_references()
    );
    let dep2 = cms.get("dep-2").await?;
    let uids: Vec<String> = dep2
        .owner_references()
        .iter()
        .map(|r| r.uid.clone())
        .collect();
    assert_eq!(uids, vec![other.uid().unwrap_or_default()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletes_grandchildren_children_then_owner() -> Res<()> {
    let c = cluster().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    let order = record_deletions(&c.client);
    let owner = create_cm(&cms, "owner", &[]).await?;
    let child = create_cm(&cms, "child", &[&owner]).await?;
    create_cm(&cms, "grandchild", &[&child]).await?;
    // Not blocking: may go before or after the owner, but must go.
    let loose: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "loose", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap_or_default(), "blockOwnerDeletion": false}
        ]}}),
    )?;
    cms.create(&PostParams::default(), &loose).await?;

    cms.delete("owner", &DeleteParams::foreground()).await?;
    // While its dependents exist, the owner stays, marked for deletion.
    let marked = cms.get_opt("owner").await?;
    if let Some(o) = marked {
        assert!(o.metadata.deletion_timestamp.is_some());
    }
    wait_for("owner deleted", || gone(&cms, "owner")).await?;
    for name in ["child", "grandchild", "loose"] {
        wait_for(name, || gone(&cms, name)).await?;
    }
    let seen = wait_for("all deletions observed", || async {
        let o = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok((o.len() >= 4).then_some(o))
    })
    .await?;
    let pos = |n: &str| {
        seen.iter()
            .position(|x| x == n)
            .ok_or_else(|| format!("{n} not deleted: {seen:?}"))
    };
    assert!(pos("grandchild")? < pos("child")?, "{seen:?}");
    assert!(pos("child")? < pos("owner")?, "{seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resource_owner_is_followed() -> Res<()> {
    let c = cluster().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    let ar = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), NS, &ar);
    let widget: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
    )?;
    let widget = wait_for("CRD served", || async {
        match widgets.create(&PostParams::default(), &widget).await {
            Ok(w) => Ok(Some(w)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), NS);
    let dep: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "widget-dep", "ownerReferences": [
            {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": widget.uid().unwrap_or_default(), "blockOwnerDeletion": true}
        ]}}),
    )?;
    cms.create(&PostParams::default(), &dep).await?;

    widgets.delete("w", &DeleteParams::foreground()).await?;
    wait_for("widget-dep deleted", || gone(&cms, "widget-dep")).await?;
    wait_for("widget deleted", || async {
        Ok(widgets.get_opt("w").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}
