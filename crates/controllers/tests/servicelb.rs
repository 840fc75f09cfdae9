//! ServiceLB against a real in-process API server: LoadBalancer Services get the addresses of
//! the Ready, schedulable Nodes as their ingress, following Nodes as they change; Services with
//! a load balancer class are left alone; the ingress goes with the type.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

async fn node(nodes: &Api<Node>, name: &str, ip: &str, ready: bool) -> Result<()> {
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?;
    set_ready(nodes, name, ip, ready).await
}

async fn set_ready(nodes: &Api<Node>, name: &str, ip: &str, ready: bool) -> Result<()> {
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
            "reason": "KubeletReady", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|l| l.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

async fn wait_ingress(services: &Api<Service>, name: &str, want: &[&str]) -> Result<()> {
    testkit::wait_for(&format!("{name} ingress {want:?}"), WAIT, || async {
        let svc = services.get(name).await.ok()?;
        (ingress(&svc) == want).then_some(())
    })
    .await
}

async fn service(services: &Api<Service>, name: &str, spec: Value) -> Result<()> {
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?,
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancers_follow_nodes() -> Result<()> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    node(&nodes, "n1", "10.0.0.1", true).await?;
    node(&nodes, "n2", "10.0.0.2", true).await?;
    node(&nodes, "n3", "10.0.0.3", false).await?;

    let shutdown = CancellationToken::new();
    let ctx = controllers::Context::new(
        client.clone(),
        controllers::Options::default(),
        shutdown.clone(),
    );
    let task = tokio::spawn(controllers::servicelb::run(ctx));

    service(
        &services,
        "web",
        json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
    )
    .await?;
    service(
        &services,
        "other",
        json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb", "ports": [{"port": 80}]}),
    )
    .await?;
    service(&services, "plain", json!({"ports": [{"port": 80}]})).await?;
    wait_ingress(&services, "web", &["10.0.0.1", "10.0.0.2"]).await?;
    let web = serde_json::to_value(services.get("web").await?)?;
    assert_eq!(web["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");

    // Cordoned: out. Ready: in. Deleted: out.
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    wait_ingress(&services, "web", &["10.0.0.1"]).await?;
    set_ready(&nodes, "n3", "10.0.0.3", true).await?;
    wait_ingress(&services, "web", &["10.0.0.1", "10.0.0.3"]).await?;
    nodes.delete("n1", &DeleteParams::default()).await?;
    wait_ingress(&services, "web", &["10.0.0.3"]).await?;

    // A ClusterIP Service that becomes a LoadBalancer gets the ingress, and loses it again.
    services
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "LoadBalancer"}})),
        )
        .await?;
    wait_ingress(&services, "plain", &["10.0.0.3"]).await?;
    services
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await?;
    wait_ingress(&services, "plain", &[]).await?;

    // Another implementation's Service is never touched.
    assert!(ingress(&services.get("other").await?).is_empty());
    services
        .patch_status(
            "other",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}})),
        )
        .await?;
    // A node change requeues every Service this controller owns; "other" must keep its status.
    set_ready(&nodes, "n2", "10.0.0.2", false).await?;
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await?;
    set_ready(&nodes, "n2", "10.0.0.2", true).await?;
    wait_ingress(&services, "web", &["10.0.0.2", "10.0.0.3"]).await?;
    assert_eq!(ingress(&services.get("other").await?), ["192.0.2.9"]);

    shutdown.cancel();
    task.await??;
    server.shutdown().await
}
