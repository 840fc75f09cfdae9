//! Endpoints and EndpointSlice controllers against a real in-process API server: both follow
//! the ready pods a Service selects.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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

async fn make_pod(
    pods: &Api<Pod>,
    name: &str,
    ip: Option<&str>,
    ready: bool,
) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let mut status = json!({"phase": "Running", "conditions": [
        {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": Time(jiff::Timestamp::now())}]});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}

async fn set_ready(pods: &Api<Pod>, name: &str, ready: bool) -> anyhow::Result<()> {
    let patch = json!({"status": {"conditions": [
        {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": Time(jiff::Timestamp::now())}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

/// (ready IPs, not-ready IPs) of an Endpoints object.
fn endpoint_ips(ep: &Endpoints) -> (BTreeSet<String>, BTreeSet<String>) {
    let subsets = ep.subsets.clone().unwrap_or_default();
    let collect = |f: fn(
        &k8s_openapi::api::core::v1::EndpointSubset,
    ) -> Option<&Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
        subsets
            .iter()
            .filter_map(f)
            .flatten()
            .map(|a| a.ip.clone())
            .collect::<BTreeSet<_>>()
    };
    (
        collect(|s| s.addresses.as_ref()),
        collect(|s| s.not_ready_addresses.as_ref()),
    )
}

/// (ready IPs, not-ready IPs) over the Service's slices.
async fn slice_ips(
    slices: &Api<EndpointSlice>,
    svc: &str,
) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>, Vec<EndpointSlice>)> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await?;
    let (mut ready, mut not_ready) = (BTreeSet::new(), BTreeSet::new());
    for s in &list.items {
        for e in &s.endpoints {
            let is_ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
            for a in &e.addresses {
                if is_ready {
                    ready.insert(a.clone())
                } else {
                    not_ready.insert(a.clone())
                };
            }
        }
    }
    Ok((ready, not_ready, list.items))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_ready_pods() -> anyhow::Result<()> {
    let c = cluster().await?;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let nodes: Api<Node> = Api::all(c.client.clone());

    nodes.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}}))?).await?;
    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "labels": {"team": "a"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))?;
    let web = services.create(&PostParams::default(), &web).await?;
    // A Service without selector: its Endpoints are managed by hand and left alone.
    let manual: Service = serde_json::from_value(
        json!({"metadata": {"name": "manual", "namespace": "default"}, "spec": {"ports": [{"port": 5432}]}}),
    )?;
    services.create(&PostParams::default(), &manual).await?;
    let manual_ep: Endpoints = serde_json::from_value(
        json!({"metadata": {"name": "manual", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "192.168.0.9"}], "ports": [{"port": 5432}]}]}),
    )?;
    endpoints.create(&PostParams::default(), &manual_ep).await?;

    make_pod(&pods, "a", Some("10.1.0.1"), true).await?;
    make_pod(&pods, "b", Some("10.1.0.2"), false).await?;
    // No IP yet: not an endpoint at all.
    make_pod(&pods, "c", None, true).await?;

    let shutdown = CancellationToken::new();
    let ctx = controllers::Context::new(
        c.client.clone(),
        controllers::Options::default(),
        shutdown.clone(),
    );
    let ep_task = tokio::spawn(controllers::endpoints::run(ctx.clone()));
    let slice_task = tokio::spawn(controllers::endpointslice::run(ctx));

    let ep = eventually("Endpoints web", Duration::from_secs(15), || async {
        let ep = endpoints.get_opt("web").await?;
        Ok(ep.filter(|e| endpoint_ips(e) == (set(&["10.1.0.1"]), set(&["10.1.0.2"]))))
    })
    .await?;
    let subset = &ep.subsets.clone().unwrap_or_default()[0];
    let port = &subset.ports.clone().unwrap_or_default()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), 8080, Some("TCP"))
    );
    let address = &subset.addresses.clone().unwrap_or_default()[0];
    assert_eq!(address.node_name.as_deref(), Some("n1"));
    let target = address.target_ref.clone().unwrap_or_default();
    assert_eq!(
        (
            target.kind.as_deref(),
            target.name.as_deref(),
            target.namespace.as_deref()
        ),
        (Some("Pod"), Some("a"), Some("default"))
    );
    assert!(target.uid.is_some());
    let annotations = ep.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.contains_key("endpoints.kubernetes.io/last-change-trigger-time"),
        "{annotations:?}"
    );
    assert_eq!(
        ep.metadata
            .labels
            .clone()
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("a")
    );

    let (_, _, items) = eventually("EndpointSlice web", Duration::from_secs(15), || async {
        let (ready, not_ready, items) = slice_ips(&slices, "web").await?;
        Ok(
            (ready == set(&["10.1.0.1"]) && not_ready == set(&["10.1.0.2"]))
                .then_some((ready, not_ready, items)),
        )
    })
    .await?;
    assert_eq!(items.len(), 1);
    let slice = &items[0];
    assert_eq!(slice.address_type, "IPv4");
    assert!(
        slice
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("web-"))
    );
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpointslice-controller.k8s.io")
    );
    let owner = slice.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(
        (
            owner[0].kind.as_str(),
            Some(owner[0].uid.clone()),
            owner[0].controller
        ),
        ("Service", web.metadata.uid.clone(), Some(true))
    );
    let a = slice
        .endpoints
        .iter()
        .find(|e| e.addresses == ["10.1.0.1"])
        .cloned()
        .unwrap_or_default();
    let cond = a.conditions.clone().unwrap_or_default();
    assert_eq!(
        (cond.ready, cond.serving, cond.terminating),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(
        (a.node_name.as_deref(), a.zone.as_deref()),
        (Some("n1"), Some("z1"))
    );
    let port = &slice.ports.clone().unwrap_or_default()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), Some(8080), Some("TCP"))
    );

    // b becomes ready.
    set_ready(&pods, "b", true).await?;
    eventually("b ready in Endpoints", Duration::from_secs(15), || async {
        let ep = endpoints.get("web").await?;
        Ok((endpoint_ips(&ep) == (set(&["10.1.0.1", "10.1.0.2"]), set(&[]))).then_some(()))
    })
    .await?;
    eventually("b ready in slices", Duration::from_secs(15), || async {
        let (ready, not_ready, items) = slice_ips(&slices, "web").await?;
        Ok(
            (ready == set(&["10.1.0.1", "10.1.0.2"]) && not_ready.is_empty() && items.len() == 1)
                .then_some(()),
        )
    })
    .await?;

    // a goes away (graceful deletion marks it terminating: out of Endpoints, terminating in slices).
    pods.delete("a", &DeleteParams::default()).await?;
    eventually("a out of Endpoints", Duration::from_secs(15), || async {
        let ep = endpoints.get("web").await?;
        Ok((endpoint_ips(&ep) == (set(&["10.1.0.2"]), set(&[]))).then_some(()))
    })
    .await?;
    eventually("a not ready in slices", Duration::from_secs(15), || async {
        let (ready, _, items) = slice_ips(&slices, "web").await?;
        let a_terminating = items.iter().flat_map(|s| &s.endpoints).any(|e| {
            e.addresses == ["10.1.0.1"]
                && e.conditions.as_ref().and_then(|c| c.terminating) == Some(true)
        });
        let a_gone = !items
            .iter()
            .flat_map(|s| &s.endpoints)
            .any(|e| e.addresses == ["10.1.0.1"]);
        Ok((ready == set(&["10.1.0.2"]) && (a_terminating || a_gone)).then_some(()))
    })
    .await?;

    // The selector-less Service's hand-made Endpoints were never touched, and it got no slices.
    let manual_now = endpoints.get("manual").await?;
    assert_eq!(endpoint_ips(&manual_now), (set(&["192.168.0.9"]), set(&[])));
    assert!(slice_ips(&slices, "manual").await?.2.is_empty());

    // Service deleted: its Endpoints go too.
    services.delete("web", &DeleteParams::default()).await?;
    eventually("Endpoints web deleted", Duration::from_secs(15), || async {
        Ok(endpoints.get_opt("web").await?.is_none().then_some(()))
    })
    .await?;

    shutdown.cancel();
    ep_task.await??;
    slice_task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_pods_gets_empty_endpoints_and_placeholder_slice() -> anyhow::Result<()> {
    let c = cluster().await?;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");

    let shutdown = CancellationToken::new();
    let ctx = controllers::Context::new(
        c.client.clone(),
        controllers::Options::default(),
        shutdown.clone(),
    );
    let ep_task = tokio::spawn(controllers::endpoints::run(ctx.clone()));
    let slice_task = tokio::spawn(controllers::endpointslice::run(ctx));

    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "empty", "namespace": "default"},
        "spec": {"selector": {"app": "none"}, "ports": [{"port": 80}]},
    }))?;
    services.create(&PostParams::default(), &svc).await?;
    let ep = eventually("Endpoints empty", Duration::from_secs(15), || async {
        endpoints.get_opt("empty").await.map_err(Into::into)
    })
    .await?;
    assert!(ep.subsets.unwrap_or_default().is_empty());
    let items = eventually("placeholder slice", Duration::from_secs(15), || async {
        let (_, _, items) = slice_ips(&slices, "empty").await?;
        Ok((!items.is_empty()).then_some(items))
    })
    .await?;
    assert_eq!(items.len(), 1);
    assert!(items[0].endpoints.is_empty());

    // Deleting the Endpoints object brings it back.
    endpoints.delete("empty", &DeleteParams::default()).await?;
    let uid = ep.metadata.uid.clone();
    eventually("Endpoints recreated", Duration::from_secs(15), || async {
        Ok(endpoints
            .get_opt("empty")
            .await?
            .filter(|e| e.metadata.uid != uid)
            .map(|_| ()))
    })
    .await?;

    shutdown.cancel();
    ep_task.await??;
    slice_task.await??;
    Ok(())
}
