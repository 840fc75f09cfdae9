//! Measures the enforcer on real namespaces: per-packet cost (TCP connections and request/
//! response round trips between two pods of one node, without the table, with it but no policy,
//! with one policy, with 50 policies on the server) and rule update latency (API write → the
//! kernel's map, and the enforcer's own watch event → transaction applied), on a small cluster
//! and on one with 2,000 pods and 100 more policies. As root:
//! `cargo run --release -p netpol --example bench`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use netpol::Summary;
use serde_json::{Value, json};
use support::{Enforcer, Lab, TestNode, exec_in, wait_isolated};

const ECHO_PORT: u16 = 7000;

/// A one-byte echo server inside `netns`, serving connections one after another.
fn echo_server(netns: &Path, ip: Ipv4Addr) -> Result<()> {
    let addr = SocketAddr::from((ip, ECHO_PORT));
    let listener = network::run_in(netns, move || TcpListener::bind(addr))??;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            let mut byte = [0u8; 1];
            while matches!(conn.read(&mut byte), Ok(1)) {
                if conn.write_all(&byte).is_err() {
                    break;
                }
            }
        }
    });
    Ok(())
}

/// Microseconds per connection (connect, one byte each way, close) and per round trip on one
/// connection, from inside `netns`.
fn traffic(netns: &Path, ip: Ipv4Addr, conns: u32, trips: u32) -> Result<(f64, f64)> {
    let addr = SocketAddr::from((ip, ECHO_PORT));
    network::run_in(netns, move || -> std::io::Result<(f64, f64)> {
        let mut byte = [7u8; 1];
        let start = Instant::now();
        for _ in 0..conns {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.write_all(&byte)?;
            s.read_exact(&mut byte)?;
        }
        let per_conn = start.elapsed().as_secs_f64() * 1e6 / f64::from(conns);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        let start = Instant::now();
        for _ in 0..trips {
            s.write_all(&byte)?;
            s.read_exact(&mut byte)?;
        }
        Ok((
            per_conn,
            start.elapsed().as_secs_f64() * 1e6 / f64::from(trips),
        ))
    })?
    .context("client traffic")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn measure(label: &str, client: &Path, ip: Ipv4Addr) -> Result<(f64, f64)> {
    let (client, label) = (client.to_owned(), label.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut conn = Vec::new();
        let mut rr = Vec::new();
        for _ in 0..5 {
            let (c, r) = traffic(&client, ip, 2000, 10000)?;
            conn.push(c);
            rr.push(r);
        }
        let (c, r) = (median(conn), median(rr));
        println!("  {label:<44} {c:>8.1} µs/connection  {r:>7.2} µs/round trip");
        Ok((c, r))
    })
    .await?
}

async fn create_policy(api: &Api<NetworkPolicy>, name: &str, spec: Value) -> Result<()> {
    let p: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
    api.create(&PostParams::default(), &p).await?;
    Ok(())
}

/// API write → the pod's address in (or out of) the ingress map, polled with `nft`.
async fn toggle_latency(
    api: &Api<NetworkPolicy>,
    node: &TestNode,
    ip: Ipv4Addr,
    rounds: usize,
) -> Result<Summary> {
    let spec = json!({"podSelector": {"matchLabels": {"app": "client"}}});
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        create_policy(api, "toggle", spec.clone()).await?;
        wait_map(node, ip, true).await?;
        samples.push(start.elapsed());
        let start = Instant::now();
        api.delete("toggle", &DeleteParams::default()).await?;
        wait_map(node, ip, false).await?;
        samples.push(start.elapsed());
    }
    Ok(Summary::of(samples))
}

async fn wait_map(node: &TestNode, ip: Ipv4Addr, present: bool) -> Result<()> {
    let netns: PathBuf = node.netns.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = netns.clone();
        let listed = tokio::task::spawn_blocking(move || {
            exec_in(
                &n,
                "nft",
                &["list", "map", "inet", "skiff-netpol", "ingress"],
            )
        })
        .await??;
        if listed.contains(&format!("{ip} :")) == present {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for the map");
    }
}

fn show(label: &str, s: &Summary) {
    println!(
        "  {label:<44} n={:<4} p50 {:>6.1} ms  p90 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
        s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let server = testkit::TestServer::start().await?;
    let client = server.client.clone();
    let lab = Lab::new("bench")?;
    let node = lab.node("node-a", "10.42.0.0/24").await?;
    let web = lab
        .pod(
            &client,
            &node,
            "default",
            "server",
            json!({"app": "server"}),
            json!([]),
        )
        .await?;
    let c = lab
        .pod(
            &client,
            &node,
            "default",
            "client",
            json!({"app": "client"}),
            json!([]),
        )
        .await?;
    echo_server(&web.netns, web.ip)?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");

    println!("per-packet cost, client → server on one bridge (median of 5 runs):");
    measure("no table", &c.netns, web.ip).await?;
    let enforcer = Enforcer::start(&client, &node).await?;
    measure("table, no policy", &c.netns, web.ip).await?;
    create_policy(
        &policies,
        "allow-client",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                            "ports": [{"port": ECHO_PORT}]}]}),
    )
    .await?;
    wait_isolated(&node, "ingress", web.ip, true).await?;
    measure("server isolated, 1 policy", &c.netns, web.ip).await?;
    // 49 policies that do not allow the client, evaluated before the one that does.
    for n in 0..49 {
        create_policy(
            &policies,
            &format!("a-{n:03}"),
            json!({"podSelector": {"matchLabels": {"app": "server"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("nobody-{n}")}}}],
                                "ports": [{"port": 80}]}]}),
        )
        .await?;
    }
    enforcer.wait_syncs(3).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let chain = node.nft(&[
        "list",
        "chain",
        "inet",
        "skiff-netpol",
        &format!("pod-{}-in", web.ip),
    ])?;
    anyhow::ensure!(
        chain.matches("jump").count() == 50,
        "expected 50 policies:\n{chain}"
    );
    measure(
        "server isolated, 50 policies (match in the last)",
        &c.netns,
        web.ip,
    )
    .await?;

    println!("rule update latency, policy create/delete (small cluster, 50 policies):");
    let before = enforcer.cfg.metrics.snapshot();
    let e2e = toggle_latency(&policies, &node, c.ip, 20).await?;
    show("API write → kernel map (nft polled)", &e2e);
    let after = enforcer.cfg.metrics.snapshot();
    println!(
        "  enforcer, all transactions so far: syncs {} (full {}), failures {}",
        after.syncs, after.full_syncs, after.failures
    );
    show("watch event → transaction applied", &after.latency);
    show("compute + transaction", &after.sync);
    let _ = before;

    println!(
        "bigger cluster: 2,000 pods on other nodes, 100 more policies (namespace and pod selectors):"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    futures::stream::iter(0..2000u32)
        .map(|n| {
            let pods = pods.clone();
            async move {
                let name = format!("remote-{n}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": format!("app-{}", n % 100), "tier": if n % 2 == 0 { "front" } else { "back" }}},
                    "spec": {"nodeName": format!("node-{}", 1 + n % 20), "containers": [{"name": "c", "image": "i",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                let ip = format!("10.43.{}.{}", n / 250, 1 + n % 250);
                let st = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(st)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    for n in 0..100 {
        create_policy(
            &policies,
            &format!("big-{n:03}"),
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress", "Egress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app-{n}")}}},
                                         {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}},
                                          "podSelector": {"matchLabels": {"tier": "front"}}}],
                                "ports": [{"port": "http"}, {"port": 80}]}],
                   "egress": [{"to": [{"podSelector": {"matchLabels": {"app": format!("app-{n}")}}}],
                               "ports": [{"port": "http"}]}]}),
        )
        .await?;
    }
    let settled = enforcer.cfg.metrics.snapshot().syncs;
    tokio::time::sleep(Duration::from_secs(2)).await;
    enforcer.wait_syncs(settled).await?;
    println!("  loading took {:?}", start.elapsed());
    let size = enforcer.cfg.metrics.snapshot();
    println!("  table: {} elements, {} rules", size.elements, size.rules);
    let mark = size.syncs;
    let e2e = toggle_latency(&policies, &node, c.ip, 20).await?;
    show("API write → kernel map (nft polled)", &e2e);
    // A peer's label change: one element in 100 sets.
    let relabel_start = Instant::now();
    pods.patch(
        "remote-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "back"}}})),
    )
    .await?;
    enforcer
        .wait_syncs(enforcer.cfg.metrics.snapshot().syncs + 1)
        .await?;
    println!(
        "  one peer relabelled → transaction applied: {:?}",
        relabel_start.elapsed()
    );
    let after = enforcer.cfg.metrics.snapshot();
    println!("  transactions since loading: {}", after.syncs - mark);
    show("watch event → transaction applied (all)", &after.latency);
    show("compute + transaction (all)", &after.sync);
    measure("traffic with 150 policies on the server", &c.netns, web.ip).await?;

    enforcer.stop().await?;
    drop(lab);
    server.shutdown().await?;
    Ok(())
}
