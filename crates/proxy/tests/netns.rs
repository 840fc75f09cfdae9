//! The proxy against a real API server and real traffic: rules programmed by `proxy::run` in
//! a node namespace (nft through `ip netns exec`), requests from busybox `wget` in pod and
//! host namespaces to busybox `httpd` pods behind Services.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::*;
use tokio::task::{JoinHandle, block_in_place};
use tokio_util::sync::CancellationToken;

struct Proxy {
    shutdown: CancellationToken,
    task: JoinHandle<proxy::Result<()>>,
    metrics: Arc<proxy::Metrics>,
}

fn start_proxy(client: &kube::Client, lab: &Lab) -> Result<Proxy> {
    let mut cfg = proxy::Config::new(NODE);
    cfg.nft = lab.nft();
    cfg.cluster_cidr = Some("10.42.0.0/16".parse()?);
    let metrics = cfg.metrics.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(proxy::run(client.clone(), cfg, shutdown.clone()));
    Ok(Proxy {
        shutdown,
        task,
        metrics,
    })
}

impl Proxy {
    /// Stops the proxy, removes its table and checks nothing is left in the node namespace.
    async fn stop(self, lab: &Lab) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        block_in_place(|| proxy::cleanup_with(&lab.nft(), proxy::DEFAULT_TABLE))?;
        let left = block_in_place(|| lab.node_tables())?;
        ensure!(left.trim().is_empty(), "tables left after cleanup: {left}");
        // A second cleanup finds nothing to delete and is fine with that.
        block_in_place(|| proxy::cleanup_with(&lab.nft(), proxy::DEFAULT_TABLE))?;
        Ok(())
    }
}

/// Runs a test body in a lab, then checks the lab is gone and the host's ruleset untouched.
async fn with_lab<F, Fut>(tag: &str, body: F) -> Result<()>
where
    F: FnOnce(testkit::TestServer, Arc<Lab>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let before = root_ruleset()?;
    let lab = Arc::new(block_in_place(|| Lab::new(tag))?);
    let paths = lab.namespace_paths();
    let server = testkit::TestServer::start().await?;
    let outcome = body(server, lab.clone()).await;
    drop(lab);
    for p in &paths {
        ensure!(!p.exists(), "namespace {} left behind", p.display());
    }
    ensure!(
        root_ruleset()? == before,
        "the root namespace's ruleset changed"
    );
    outcome
}

fn web(name: &str, cluster_ip: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut s = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80, "targetPort": 80}]},
    });
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        s["spec"][k] = v;
    }
    s
}

fn wait_for_answer(lab: &Lab, from: &str, url: &str, ok: impl Fn(&str) -> bool) -> Result<()> {
    wait_until(Duration::from_secs(10), || {
        lab.get(from, url).map(|b| ok(b.trim())).unwrap_or(false)
    })
    .with_context(|| format!("waiting for {url} from {from}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_spreads_follows_endpoints_and_rejects() -> Result<()> {
    with_lab("a", |server, lab| async move {
        let client = server.client.clone();
        let proxy = start_proxy(&client, &lab)?;
        create_service(&client, web("web", "10.43.7.10", json!({}))).await?;
        set_slice(
            &client,
            "web",
            endpoints(&[("p1", NODE), ("p2", "n2"), ("p3", "n2")]),
        )
        .await?;
        let url = "http://10.43.7.10/";
        block_in_place(|| wait_for_answer(&lab, "cl", url, |b| b.starts_with('p')))?;

        // 300 requests spread over all three endpoints, none under 20%.
        let answers = block_in_place(|| lab.get_many("cl", url, 300))?;
        let t = tally(&answers);
        eprintln!("300 requests: {t:?}");
        ensure!(!t.contains_key("ERR"), "failed requests: {t:?}");
        for (pod, _) in PODS {
            let n = t.get(pod).copied().unwrap_or(0);
            ensure!(n >= 60, "{pod} got {n} of 300: {t:?}");
        }

        // Hairpin: p1 reaches itself through the service, masqueraded to the bridge address
        // (otherwise its reply would go straight to itself, bypassing the NAT).
        let who = "http://10.43.7.10/cgi-bin/who";
        let answers = block_in_place(|| lab.get_many("p1", who, 30))?;
        ensure!(
            !answers.iter().any(|a| a == "ERR"),
            "hairpin failures: {answers:?}"
        );
        let own: Vec<&String> = answers.iter().filter(|a| a.starts_with("p1 ")).collect();
        ensure!(!own.is_empty(), "p1 never reached itself: {answers:?}");
        ensure!(
            own.iter().all(|a| a.as_str() == format!("p1 {GATEWAY}")),
            "hairpin not masqueraded: {own:?}"
        );
        // Pod-to-pod service traffic keeps the client's address.
        let from_client = block_in_place(|| lab.get("cl", who))?;
        ensure!(
            from_client.trim().ends_with(CLIENT_IP),
            "client address lost: {from_client}"
        );

        // Removing an endpoint takes it out of rotation within 2 s.
        let changed = Instant::now();
        set_slice(&client, "web", endpoints(&[("p1", NODE), ("p2", "n2")])).await?;
        block_in_place(|| {
            wait_until(Duration::from_secs(2), || {
                lab.get_many("cl", url, 10)
                    .map(|a| !a.iter().any(|l| l == "p3" || l == "ERR"))
                    .unwrap_or(false)
            })
        })
        .context("p3 still in rotation 2 s after its removal")?;
        eprintln!("p3 out of rotation after {:?}", changed.elapsed());
        let answers = block_in_place(|| lab.get_many("cl", url, 60))?;
        let t = tally(&answers);
        ensure!(
            t.keys().all(|k| k == "p1" || k == "p2"),
            "after removing p3: {t:?}"
        );

        // No endpoints: connections are refused at once, not left to time out.
        set_slice(&client, "web", json!([])).await?;
        block_in_place(|| wait_until(Duration::from_secs(2), || lab.get("cl", url).is_err()))?;
        let started = Instant::now();
        let err = block_in_place(|| lab.get("cl", url)).expect_err("no endpoints, yet an answer");
        let took = started.elapsed();
        ensure!(took < Duration::from_secs(1), "refusal took {took:?}");
        ensure!(err.to_string().contains("refused"), "not refused: {err:#}");

        // Headless services and the node-local DNS service get no rules.
        create_service(&client, web("headless", "None", json!({}))).await?;
        set_slice(&client, "headless", endpoints(&[("p1", NODE)])).await?;
        let mut dns = web("local-dns", "10.43.7.53", json!({}));
        dns["metadata"]["annotations"] = json!({"skiff.dev/node-local-dns": "true"});
        create_service(&client, dns).await?;
        set_slice(&client, "local-dns", endpoints(&[("p1", NODE)])).await?;
        // A later change proves the proxy has seen them.
        create_service(&client, web("marker", "10.43.7.99", json!({}))).await?;
        let table = || {
            run(&[
                "ip",
                "netns",
                "exec",
                &lab.ns("node"),
                "nft",
                "list",
                "table",
                "ip",
                proxy::DEFAULT_TABLE,
            ])
        };
        block_in_place(|| {
            wait_until(Duration::from_secs(5), || {
                table().is_ok_and(|m| m.contains("10.43.7.99"))
            })
        })?;
        let table = block_in_place(table)?;
        ensure!(
            !table.contains("10.43.7.53"),
            "node-local DNS service programmed:\n{table}"
        );
        ensure!(
            !table.contains("headless"),
            "headless service programmed:\n{table}"
        );

        let snap = proxy.metrics.snapshot();
        eprintln!("metrics: {snap:?}");
        ensure!(snap.failures == 0 && snap.full_syncs == 1, "{snap:?}");
        proxy.stop(&lab).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_node_ports_load_balancers_and_external_policy() -> Result<()> {
    with_lab("b", |server, lab| async move {
        let client = server.client.clone();
        let proxy = start_proxy(&client, &lab)?;
        let all = endpoints(&[("p1", NODE), ("p2", "n2"), ("p3", "n2")]);

        // sessionAffinity ClientIP: every request of one client lands on one pod.
        create_service(
            &client,
            web(
                "sticky",
                "10.43.7.11",
                json!({"sessionAffinity": "ClientIP"}),
            ),
        )
        .await?;
        set_slice(&client, "sticky", all.clone()).await?;
        let sticky = "http://10.43.7.11/";
        block_in_place(|| wait_for_answer(&lab, "cl", sticky, |b| b.starts_with('p')))?;
        let t = tally(&block_in_place(|| lab.get_many("cl", sticky, 30))?);
        ensure!(
            t.len() == 1 && !t.contains_key("ERR"),
            "affinity did not stick: {t:?}"
        );

        // A LoadBalancer: node port on the node's address and the ingress IP, from the host.
        let lb = web(
            "lb",
            "10.43.7.12",
            json!({"type": "LoadBalancer",
                   "ports": [{"name": "http", "port": 80, "targetPort": 80, "nodePort": 30080}]}),
        );
        create_service(&client, lb).await?;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        services
            .patch_status(
                "lb",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}})),
            )
            .await?;
        set_slice(&client, "lb", all.clone()).await?;
        let node_port = format!("http://{NODE_IP}:30080/cgi-bin/who");
        block_in_place(|| wait_for_answer(&lab, "host", &node_port, |b| b.starts_with('p')))?;
        let answers = block_in_place(|| lab.get_many("host", &node_port, 60))?;
        let t = tally(&answers);
        eprintln!("node port, Cluster policy: {t:?}");
        ensure!(
            t.len() == 3 && !t.contains_key("ERR"),
            "node port spread: {t:?}"
        );
        // Cluster policy: masqueraded to the node (the endpoint might be on another node).
        ensure!(
            answers.iter().all(|a| a.ends_with(&format!(" {GATEWAY}"))),
            "node port traffic not masqueraded: {answers:?}"
        );
        let ingress = format!("http://{LB_IP}/cgi-bin/who");
        block_in_place(|| wait_for_answer(&lab, "host", &ingress, |b| b.ends_with(GATEWAY)))?;

        // externalTrafficPolicy Local: only p1 (on this node), and the client's own address.
        services
            .patch(
                "lb",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Local"}})),
            )
            .await?;
        let local = format!("p1 {HOST_IP}");
        block_in_place(|| wait_for_answer(&lab, "host", &node_port, |b| b == local))?;
        for url in [&node_port, &ingress] {
            let answers = block_in_place(|| lab.get_many("host", url, 20))?;
            ensure!(
                answers.iter().all(|a| *a == local),
                "Local policy via {url}: {answers:?}"
            );
        }
        // Pods reaching the node port are not "external": all endpoints serve them.
        let t = tally(&block_in_place(|| lab.get_many("cl", &node_port, 30))?);
        ensure!(
            t.len() >= 2 && !t.contains_key("ERR"),
            "pods via a Local node port: {t:?}"
        );

        // No endpoint on this node: outside traffic is dropped (not refused) ...
        set_slice(&client, "lb", endpoints(&[("p2", "n2"), ("p3", "n2")])).await?;
        block_in_place(|| {
            wait_until(Duration::from_secs(5), || {
                lab.get("host", &node_port).is_err()
            })
        })?;
        let err = block_in_place(|| lab.get("host", &node_port)).expect_err("dropped");
        ensure!(
            !err.to_string().contains("refused"),
            "expected a drop: {err:#}"
        );
        // ... while the cluster IP still works.
        block_in_place(|| {
            wait_for_answer(&lab, "cl", "http://10.43.7.12/", |b| b == "p2" || b == "p3")
        })?;

        proxy.stop(&lab).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_policy_and_rebuild_after_outside_changes() -> Result<()> {
    with_lab("c", |server, lab| async move {
        let client = server.client.clone();
        let proxy = start_proxy(&client, &lab)?;
        create_service(
            &client,
            web(
                "internal",
                "10.43.7.13",
                json!({"internalTrafficPolicy": "Local"}),
            ),
        )
        .await?;
        set_slice(
            &client,
            "internal",
            endpoints(&[("p1", NODE), ("p2", "n2")]),
        )
        .await?;
        let url = "http://10.43.7.13/";
        block_in_place(|| wait_for_answer(&lab, "cl", url, |b| b == "p1"))?;
        let answers = block_in_place(|| lab.get_many("cl", url, 20))?;
        ensure!(
            answers.iter().all(|a| a == "p1"),
            "Local internal policy: {answers:?}"
        );

        // Someone deletes the table: the next incremental transaction fails, and the proxy
        // rebuilds the table whole.
        block_in_place(|| {
            run(&[
                "ip",
                "netns",
                "exec",
                &lab.ns("node"),
                "nft",
                "delete",
                "table",
                "ip",
                proxy::DEFAULT_TABLE,
            ])
        })?;
        set_slice(
            &client,
            "internal",
            endpoints(&[("p1", NODE), ("p3", NODE)]),
        )
        .await?;
        block_in_place(|| {
            wait_until(Duration::from_secs(5), || {
                lab.get_many("cl", url, 20)
                    .map(|a| tally(&a).keys().eq(["p1", "p3"].iter()))
                    .unwrap_or(false)
            })
        })
        .context("rules not rebuilt after the table was deleted")?;
        let snap = proxy.metrics.snapshot();
        ensure!(snap.failures >= 1 && snap.full_syncs >= 2, "{snap:?}");

        // No endpoint on this node: cluster-IP traffic is dropped.
        set_slice(&client, "internal", endpoints(&[("p2", "n2")])).await?;
        block_in_place(|| wait_until(Duration::from_secs(5), || lab.get("cl", url).is_err()))?;

        proxy.stop(&lab).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_reach_their_pod() -> Result<()> {
    with_lab("d", |server, lab| async move {
        let client = server.client.clone();
        let proxy = start_proxy(&client, &lab)?;
        // p1 (10.42.7.11) declares hostPort 8088 for its httpd on 80; a pod on another node
        // declares one too, which this node must not serve.
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
        for (name, node, ip) in [("p1", NODE, PODS[0].1), ("far", "n2", "10.42.9.9")] {
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                    "ports": [{"containerPort": 80, "hostPort": if name == "p1" { 8088 } else { 8089 }}]}]},
            }))?;
            pods.create(&Default::default(), &pod).await?;
            pods.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
            )
            .await?;
        }
        let url = format!("http://{NODE_IP}:8088/cgi-bin/who");
        // From outside the node, from another pod and from the pod itself (hairpin).
        block_in_place(|| wait_for_answer(&lab, "host", &url, |b| b.starts_with("p1 ")))?;
        let from_host = block_in_place(|| lab.get("host", &url))?.trim().to_owned();
        ensure!(from_host == format!("p1 {HOST_IP}"), "{from_host}");
        let from_pod = block_in_place(|| lab.get("cl", &url))?.trim().to_owned();
        ensure!(from_pod == format!("p1 {CLIENT_IP}"), "{from_pod}");
        let itself = block_in_place(|| lab.get("p1", &url))?;
        ensure!(itself.starts_with("p1 "), "hairpin: {itself}");
        ensure!(
            block_in_place(|| lab.get("host", &format!("http://{NODE_IP}:8089/"))).is_err(),
            "a hostPort of another node's pod is served here"
        );

        // Deleting the pod takes its mapping away.
        pods.delete("p1", &Default::default()).await?;
        pods.delete("p1", &kube::api::DeleteParams::default().grace_period(0))
            .await
            .ok();
        block_in_place(|| {
            wait_until(Duration::from_secs(5), || lab.get("host", &url).is_err())
        })
        .context("the hostPort mapping outlived its pod")?;
        proxy.stop(&lab).await
    })
    .await
}
