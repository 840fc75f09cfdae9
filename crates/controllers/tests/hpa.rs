//! The HorizontalPodAutoscaler controller against the real in-process API server: it reads a
//! Deployment's scale, the pods' simulated usage from metrics.k8s.io, and scales the
//! Deployment up through its scale subresource (no Deployment controller runs).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
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
    let opts = controllers::Options {
        hpa_sync_period: Duration::from_millis(500),
        ..Default::default()
    };
    let ctx = controllers::Context::new(client.clone(), opts, stop.clone());
    tokio::spawn(controllers::hpa::run(ctx));
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running, long-ready pod of the deployment using `cpu` of its 100m request.
async fn busy_pod(pods: &Api<Pod>, name: &str, cpu: &str) -> Res<()> {
    let pod = json!({
        "metadata": { "name": name, "labels": { "app": "web" }, "annotations": { "skiff.dev/simulated-cpu": cpu } },
        "spec": { "nodeName": "n1", "containers": [{ "name": "c", "image": "nginx", "resources": { "requests": { "cpu": "100m" } } }] },
    });
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    let long_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(900))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({ "status": {
        "phase": "Running", "startTime": long_ago,
        "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": long_ago }],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_a_deployment_up_on_cpu_utilization() -> Res<()> {
    let c = cluster().await?;
    let ns = "default";
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
    let deployment = json!({
        "metadata": { "name": "web" },
        "spec": { "replicas": 2, "selector": { "matchLabels": { "app": "web" } }, "template": {
            "metadata": { "labels": { "app": "web" } },
            "spec": { "containers": [{ "name": "c", "image": "nginx" }] },
        }},
    });
    deployments
        .create(&PostParams::default(), &serde_json::from_value(deployment)?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    // 200m of 100m requested: 200% against a 50% target asks for 8 replicas; the default
    // scale-up policy allows max(2 + 4, 2 * 2) = 6 and maxReplicas caps it at 5.
    busy_pod(&pods, "web-1", "200m").await?;
    busy_pod(&pods, "web-2", "200m").await?;

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.client.clone(), ns);
    let hpa = json!({
        "metadata": { "name": "web" },
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "web" },
            "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{ "type": "Resource", "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 50 } } }],
        },
    });
    hpas.create(&PostParams::default(), &serde_json::from_value(hpa)?)
        .await?;

    wait_for("the deployment to be scaled to 5", || {
        let deployments = deployments.clone();
        async move {
            Ok(deployments
                .get("web")
                .await?
                .spec
                .and_then(|s| s.replicas)
                .filter(|r| *r == 5))
        }
    })
    .await?;
    let status = wait_for("the HPA status", || {
        let hpas = hpas.clone();
        async move {
            Ok(hpas
                .get("web")
                .await?
                .status
                .filter(|s| s.desired_replicas == 5))
        }
    })
    .await?;
    assert_eq!(status.current_replicas, Some(2));
    assert!(status.last_scale_time.is_some());
    let metric = status
        .current_metrics
        .as_deref()
        .and_then(|m| m.first())
        .and_then(|m| m.resource.as_ref());
    assert_eq!(
        metric.and_then(|m| m.current.average_utilization),
        Some(200)
    );
    let cond = |ty: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == ty)
            .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
    };
    assert_eq!(
        cond("AbleToScale"),
        Some(("True".into(), "SucceededRescale".into()))
    );
    assert_eq!(
        cond("ScalingActive"),
        Some(("True".into(), "ValidMetricFound".into()))
    );
    assert_eq!(
        cond("ScalingLimited"),
        Some(("True".into(), "TooManyReplicas".into()))
    );

    let events: Api<Event> = Api::namespaced(c.client.clone(), ns);
    let note = wait_for("the SuccessfulRescale event", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("SuccessfulRescale"))
                .and_then(|e| e.message))
        }
    })
    .await?;
    assert_eq!(
        note,
        "New size: 5; reason: cpu resource utilization (percentage of request) above target"
    );
    Ok(())
}
