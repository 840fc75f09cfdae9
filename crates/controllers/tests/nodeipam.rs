//! Node IPAM against a real in-process API server: Nodes without a pod CIDR get a free subnet
//! of the cluster CIDR once, subnets Nodes registered with are respected, an exhausted range
//! is reported on the Node, deletion frees, and a restarted controller hands nothing out twice.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

fn options() -> controllers::Options {
    controllers::Options {
        // Four /24 subnets.
        cluster_cidr: "10.42.0.0/22".parse().unwrap(),
        node_cidr_mask_size: 24,
        ..Default::default()
    }
}

/// Runs the controller until the returned token is cancelled.
fn start(client: &kube::Client) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let ctx = controllers::Context::new(client.clone(), options(), shutdown.clone());
    let task = tokio::spawn(async move {
        controllers::nodeipam::run(ctx).await.unwrap();
    });
    (shutdown, task)
}

async fn create(nodes: &Api<Node>, name: &str, pod_cidr: Option<&str>) -> Result<()> {
    let mut node = json!({"metadata": {"name": name}});
    if let Some(c) = pod_cidr {
        node["spec"] = json!({"podCIDR": c});
    }
    nodes
        .create(&PostParams::default(), &serde_json::from_value(node)?)
        .await?;
    Ok(())
}

fn cidr_of(node: &Node) -> Option<String> {
    node.spec.as_ref()?.pod_cidr.clone()
}

async fn assigned(nodes: &Api<Node>, name: &str) -> Result<String> {
    testkit::wait_for(&format!("a pod CIDR on {name}"), WAIT, || async {
        nodes.get(name).await.ok().as_ref().and_then(cidr_of)
    })
    .await
}

async fn all_cidrs(nodes: &Api<Node>) -> Result<BTreeMap<String, String>> {
    Ok(nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, cidr_of(n)?)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_pod_cidrs_once() -> Result<()> {
    let server = testkit::TestServer::start().await?;
    let nodes: Api<Node> = Api::all(server.client.clone());
    // A Node that registered with its own subnet before the controller ran.
    create(&nodes, "b", Some("10.42.1.0/24")).await?;
    let (stop, task) = start(&server.client);

    create(&nodes, "a", None).await?;
    assert_eq!(assigned(&nodes, "a").await?, "10.42.0.0/24");
    let a = nodes.get("a").await?;
    assert_eq!(
        a.spec.as_ref().and_then(|s| s.pod_cidrs.clone()),
        Some(vec!["10.42.0.0/24".to_string()])
    );
    create(&nodes, "c", None).await?;
    assert_eq!(
        assigned(&nodes, "c").await?,
        "10.42.2.0/24",
        "b's subnet is skipped"
    );
    create(&nodes, "d", None).await?;
    assert_eq!(assigned(&nodes, "d").await?, "10.42.3.0/24");

    // Exhausted: reported on the Node like upstream.
    create(&nodes, "e", None).await?;
    let events: Api<Event> = Api::namespaced(server.client.clone(), "default");
    let event = testkit::wait_for("a CIDRNotAvailable event", WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("e")
            })
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(
        event.note.as_deref(),
        Some("Node e status is now: CIDRNotAvailable")
    );
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Node")
    );
    assert!(cidr_of(&nodes.get("e").await?).is_none());

    // Deleting a Node frees its subnet for the one waiting.
    nodes.delete("a", &DeleteParams::default()).await?;
    assert_eq!(assigned(&nodes, "e").await?, "10.42.0.0/24");

    // A new controller (a restart, a new leader) rebuilds what is taken from the Nodes.
    stop.cancel();
    task.await?;
    create(&nodes, "f", None).await?;
    let (stop, task) = start(&server.client);
    let f_event = testkit::wait_for("CIDRNotAvailable for f", WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("f")
            })
    })
    .await;
    assert!(
        f_event.is_ok(),
        "the restarted controller handed out a taken subnet"
    );
    nodes.delete("c", &DeleteParams::default()).await?;
    assert_eq!(assigned(&nodes, "f").await?, "10.42.2.0/24");

    let cidrs = all_cidrs(&nodes).await?;
    let mut distinct: Vec<&String> = cidrs.values().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), cidrs.len(), "{cidrs:?}");
    assert_eq!(cidrs.len(), 4);

    stop.cancel();
    task.await?;
    server.shutdown().await
}
