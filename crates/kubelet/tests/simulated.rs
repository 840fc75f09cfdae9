//! Simulated nodes against a real in-process API server: registration, Lease heartbeats and
//! the pod lifecycle (running, exiting, crash-looping, graceful deletion).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use kubelet::simulated::{SimOptions, run};
use serde_json::json;
use testkit::wait_for;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn condition<'a>(
    conds: Option<&'a Vec<k8s_openapi::api::core::v1::NodeCondition>>,
    ty: &str,
) -> Option<&'a str> {
    conds?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.as_str())
}

fn pod_condition(pod: &Pod, ty: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

struct Sim {
    server: testkit::TestServer,
    client: Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_sim(nodes: usize, prefix: &str) -> anyhow::Result<Sim> {
    let server = testkit::TestServer::start().await?;
    let joined = kubelet::join(&server.url(), &server.running.token).await?;
    let stop = CancellationToken::new();
    let opts = SimOptions {
        nodes,
        prefix: prefix.into(),
        lease_renew_interval: Duration::from_millis(500),
        ..Default::default()
    };
    let task = tokio::spawn(run(joined.client.clone(), opts, stop.clone()));
    Ok(Sim {
        server,
        client: joined.client,
        stop,
        task,
    })
}

impl Sim {
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        self.server.running.shutdown().await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_ready_and_leases_renew() -> anyhow::Result<()> {
    let sim = start_sim(3, "sim").await?;
    let nodes: Api<Node> = Api::all(sim.client.clone());
    let mut cidrs = std::collections::HashSet::new();
    for i in 0..3 {
        let name = format!("sim-{i}");
        let node = wait_for(&format!("{name} Ready"), WAIT, || {
            let nodes = nodes.clone();
            let name = name.clone();
            async move {
                let n = nodes.get_opt(&name).await.ok()??;
                let conds = n.status.as_ref()?.conditions.as_ref();
                (condition(conds, "Ready") == Some("True")).then_some(n)
            }
        })
        .await?;
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("kubernetes.io/hostname"), Some(&name));
        assert_eq!(
            labels.get("kubernetes.io/os").map(String::as_str),
            Some("linux")
        );
        assert!(labels.contains_key("kubernetes.io/arch"));
        let status = node.status.clone().unwrap_or_default();
        let conds = status.conditions.as_ref();
        for ty in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(condition(conds, ty), Some("False"), "{ty}");
        }
        let ready = conds
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("kubelet is posting ready status")
        );
        let cap = status.capacity.clone().unwrap_or_default();
        assert_eq!(cap.get("cpu").map(|q| q.0.as_str()), Some("32"));
        assert_eq!(cap.get("memory").map(|q| q.0.as_str()), Some("256Gi"));
        assert_eq!(cap.get("pods").map(|q| q.0.as_str()), Some("110"));
        assert_eq!(status.allocatable, status.capacity);
        let addrs = status.addresses.clone().unwrap_or_default();
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address.starts_with("198.18."))
        );
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "Hostname" && a.address == name)
        );
        let info = status.node_info.clone().unwrap_or_default();
        assert_eq!(info.kubelet_version, "v1.33.0-skiff");
        assert_eq!(info.container_runtime_version, "skiff-sim://1");
        assert_eq!(info.operating_system, "linux");
        let cidr = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .unwrap_or_default();
        assert!(cidr.starts_with("10.") && cidr.ends_with(".0/24"), "{cidr}");
        assert!(cidrs.insert(cidr), "pod CIDRs are unique");
    }

    // Each node holds a Lease in kube-node-lease, owned by its Node, and renews it.
    let leases: Api<Lease> = Api::namespaced(sim.client.clone(), "kube-node-lease");
    let first = wait_for("lease sim-1", WAIT, || {
        let leases = leases.clone();
        async move { leases.get_opt("sim-1").await.ok()? }
    })
    .await?;
    let spec = first.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("sim-1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owners = first.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.first().map(|o| o.kind.as_str()), Some("Node"));
    let renewed = spec.renew_time.clone().map(|t| t.0);
    assert!(renewed.is_some());
    wait_for("lease sim-1 renewTime to advance", WAIT, || {
        let leases = leases.clone();
        async move {
            let l = leases.get_opt("sim-1").await.ok()??;
            let now = l.spec?.renew_time.map(|t| t.0);
            (now > renewed).then_some(())
        }
    })
    .await?;

    // Stopping the agent leaves the nodes in place.
    let client = sim.client.clone();
    sim.stop.cancel();
    sim.task.await??;
    assert!(Api::<Node>::all(client).get_opt("sim-2").await?.is_some());
    sim.server.running.shutdown().await?;
    Ok(())
}

async fn create_pod(client: &Client, pod: serde_json::Value) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    Ok(pods
        .create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?)
}

async fn wait_pod<F>(client: &Client, name: &str, what: &str, check: F) -> anyhow::Result<Pod>
where
    F: Fn(&Pod) -> bool,
{
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let check = &check;
    wait_for(&format!("pod {name} {what}"), WAIT, || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt(name).await.ok()??;
            check(&p).then_some(p)
        }
    })
    .await
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_exit_crash_loop_and_get_deleted() -> anyhow::Result<()> {
    let sim = start_sim(2, "node").await?;
    let c = &sim.client;

    // A pod bound to a simulated node runs, with IPs, conditions and container statuses.
    create_pod(
        c,
        json!({
            "metadata": { "name": "web" },
            "spec": {
                "nodeName": "node-1",
                "initContainers": [{ "name": "init", "image": "busybox" }],
                "containers": [{ "name": "app", "image": "nginx:1.27" }],
            },
        }),
    )
    .await?;
    let web = wait_pod(c, "web", "Running and Ready", |p| {
        phase(p) == "Running" && pod_condition(p, "Ready").as_deref() == Some("True")
    })
    .await?;
    let status = web.status.clone().unwrap_or_default();
    let node1: Node = Api::all(c.clone()).get("node-1").await?;
    let cidr = node1.spec.and_then(|s| s.pod_cidr).unwrap_or_default();
    let ip = status.pod_ip.clone().unwrap_or_default();
    assert!(
        ip.starts_with(cidr.trim_end_matches("0/24")),
        "{ip} in {cidr}"
    );
    assert_eq!(status.pod_ips.as_ref().map(Vec::len), Some(1));
    let internal = node1
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address);
    assert_eq!(status.host_ip, internal);
    assert!(status.start_time.is_some());
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    for ty in [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ] {
        assert_eq!(pod_condition(&web, ty).as_deref(), Some("True"), "{ty}");
    }
    let cs = status.container_statuses.clone().unwrap_or_default();
    assert_eq!(cs.len(), 1);
    assert!(cs[0].ready);
    assert_eq!(cs[0].started, Some(true));
    assert_eq!(cs[0].restart_count, 0);
    assert_eq!(cs[0].image, "docker.io/library/nginx:1.27");
    assert!(
        cs[0]
            .image_id
            .starts_with("docker.io/library/nginx@sha256:")
    );
    assert!(
        cs[0]
            .container_id
            .as_deref()
            .unwrap_or_default()
            .starts_with("sim://")
    );
    assert!(
        cs[0]
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_some()
    );
    let init = status.init_container_statuses.clone().unwrap_or_default();
    let term = init[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_default();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (0, Some("Completed"))
    );

    // restartPolicy Never: exit 0 ends Succeeded, a non-zero code ends Failed.
    for (name, code) in [("ok", "0"), ("bad", "3")] {
        create_pod(
            c,
            json!({
                "metadata": { "name": name, "annotations": {
                    "skiff.dev/simulated-exit-code": code,
                    "skiff.dev/simulated-duration": "200ms",
                }},
                "spec": {
                    "nodeName": "node-0",
                    "restartPolicy": "Never",
                    "containers": [{ "name": "job", "image": "busybox" }],
                },
            }),
        )
        .await?;
    }
    let ok = wait_pod(c, "ok", "Succeeded", |p| phase(p) == "Succeeded").await?;
    let t = ok
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default();
    let t = t[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_default();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let bad = wait_pod(c, "bad", "Failed", |p| phase(p) == "Failed").await?;
    assert_eq!(pod_condition(&bad, "Ready").as_deref(), Some("False"));
    let t = bad
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default();
    let t = t[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_default();
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));

    // restartPolicy Always with a failing container: restarts, then CrashLoopBackOff.
    create_pod(
        c,
        json!({
            "metadata": { "name": "crash", "annotations": { "skiff.dev/simulated-exit-code": "1" }},
            "spec": { "nodeName": "node-0", "containers": [{ "name": "c", "image": "busybox" }] },
        }),
    )
    .await?;
    let crash = wait_pod(c, "crash", "in CrashLoopBackOff", |p| {
        let cs = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        cs.and_then(|cs| cs.first()).is_some_and(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
        })
    })
    .await?;
    assert_eq!(phase(&crash), "Running");
    let cs = crash
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default();
    assert_eq!(cs[0].restart_count, 1);
    let last = cs[0]
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_default();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    let msg = cs[0]
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone());
    assert!(
        msg.unwrap_or_default()
            .starts_with("back-off 10s restarting failed container=c pod=crash_default(")
    );

    // Graceful deletion finishes: the kubelet stops the pod and deletes it for good.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.delete("web", &DeleteParams::default()).await?;
    wait_for("pod web to be gone", WAIT, || {
        let pods = pods.clone();
        async move { matches!(pods.get_opt("web").await, Ok(None)).then_some(()) }
    })
    .await?;

    // A pod on a node this agent does not simulate is left alone: once a pod created after it
    // runs (one watcher, events in order), it is still untouched.
    for (name, node) in [("elsewhere", "real-node"), ("after", "node-0")] {
        create_pod(
            c,
            json!({
                "metadata": { "name": name },
                "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "busybox" }] },
            }),
        )
        .await?;
    }
    wait_pod(c, "after", "Running", |p| phase(p) == "Running").await?;
    let other = pods.get("elsewhere").await?;
    assert_eq!(phase(&other), "Pending");
    assert!(other.status.and_then(|s| s.pod_ip).is_none());

    sim.stop().await
}
