//! Measures the enforcer on real namespaces. Per-packet cost: the rate of TCP connections and
//! of request/response round trips that 4 clients in one pod get from a server pod on the same
//! bridge with both cores busy (so that idle wake-ups do not dominate), without the table,
//! with the table but the server not isolated, and with the server isolated by 1 and by 50
//! policies (the allowing one evaluated last), in interleaved rounds. Rule update latency: API write → the kernel's
//! map, and the enforcer's own watch event → transaction applied, on a small cluster and on one
//! with 2,000 more pods and 100 more policies. As root:
//! `cargo run --release -p netpol --example netpol_bench`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use netpol::Summary;
use serde_json::{Value, json};
use support::{Enforcer, Lab, TestNode};

const ECHO_PORT: u16 = 7000;
const ROUNDS: usize = 5;
/// Concurrent clients (and server threads) in the per-packet measurement, and how long each
/// of its phases lasts.
const CLIENTS: usize = 4;
const PHASE: Duration = Duration::from_millis(1500);

/// A one-byte echo server inside `netns` with a few accepting threads. A client sending `c`
/// gets its byte back and the connection closed by the server, so the client side never sits
/// in TIME_WAIT and many connections do not exhaust its ports.
fn echo_server(netns: &Path, ip: Ipv4Addr) -> Result<()> {
    let addr = SocketAddr::from((ip, ECHO_PORT));
    let listener = network::run_in(netns, move || TcpListener::bind(addr))??;
    for _ in 0..CLIENTS {
        let listener = listener.try_clone()?;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                let mut byte = [0u8; 1];
                while matches!(conn.read(&mut byte), Ok(1)) {
                    if conn.write_all(&byte).is_err() || byte[0] == b'c' {
                        break;
                    }
                }
            }
        });
    }
    Ok(())
}

/// With `CLIENTS` clients inside `netns` keeping both cores busy for `PHASE` each: connections
/// per second (connect, one byte each way, close), then round trips per second on one
/// connection per client.
fn traffic(netns: &Path, ip: Ipv4Addr) -> Result<(f64, f64)> {
    let addr = SocketAddr::from((ip, ECHO_PORT));
    let run = |persistent: bool| -> Result<f64> {
        let counts = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    scope.spawn(move || {
                        network::run_in(netns, move || -> std::io::Result<u64> {
                            let deadline = Instant::now() + PHASE;
                            let mut n = 0;
                            let mut byte = [b'k'; 1];
                            let mut kept = None;
                            while Instant::now() < deadline {
                                if persistent {
                                    let s = match &mut kept {
                                        Some(s) => s,
                                        None => {
                                            let s = TcpStream::connect_timeout(
                                                &addr,
                                                Duration::from_secs(2),
                                            )?;
                                            s.set_nodelay(true)?;
                                            kept.insert(s)
                                        }
                                    };
                                    for _ in 0..100 {
                                        s.write_all(&byte)?;
                                        s.read_exact(&mut byte)?;
                                    }
                                    n += 100;
                                } else {
                                    let mut s =
                                        TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                                    s.set_nodelay(true)?;
                                    let mut c = [b'c'; 1];
                                    s.write_all(&c)?;
                                    s.read_exact(&mut c)?;
                                    // The server closes first; wait for its FIN.
                                    let _ = s.read(&mut c)?;
                                    n += 1;
                                }
                            }
                            Ok(n)
                        })
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().map_err(|_| anyhow::anyhow!("a client panicked")))
                .collect::<Result<Vec<_>>>()
        })?;
        let mut total = 0;
        for count in counts {
            total += count??;
        }
        Ok(total as f64 / PHASE.as_secs_f64())
    };
    Ok((run(false)?, run(true)?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn create_policy(api: &Api<NetworkPolicy>, name: &str, spec: Value) -> Result<()> {
    let p: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
    api.create(&PostParams::default(), &p).await?;
    Ok(())
}

/// The number of policy jumps in the ingress chain of the pod at `ip` (`None`: no chain).
fn jumps(node: &TestNode, ip: Ipv4Addr) -> Result<Option<usize>> {
    let listed = node.nft(&["list", "table", "inet", "skiff-netpol"])?;
    let chain = format!("chain pod-{ip}-in {{");
    Ok(listed.split(&chain).nth(1).map(|rest| {
        let body = rest.split('}').next().unwrap_or_default();
        body.matches("jump").count()
    }))
}

async fn wait_jumps(node: &TestNode, ip: Ipv4Addr, want: Option<usize>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while jumps(node, ip)? != want {
        ensure!(
            Instant::now() < deadline,
            "timed out waiting for {want:?} policies on {ip}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// API write → the pod at `ip` in (or out of) the ingress map, polled with `nft` (each poll
/// is a process start, a few ms).
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = node.nft(&["list", "map", "inet", "skiff-netpol", "ingress"])?;
        if listed.contains(&format!("{ip} :")) == present {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "timed out waiting for the map");
    }
}

fn show(label: &str, s: &Summary) {
    println!(
        "  {label:<42} n={:<3} p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
    );
}

async fn latency_phase(
    enforcer: &Enforcer,
    policies: &Api<NetworkPolicy>,
    node: &TestNode,
    ip: Ipv4Addr,
) -> Result<()> {
    enforcer.cfg.metrics.clear_samples();
    let e2e = toggle_latency(policies, node, ip, 20).await?;
    show("API write → kernel map (nft polled)", &e2e);
    let m = enforcer.cfg.metrics.snapshot();
    show("watch event → transaction applied", &m.latency);
    show("compute + render + diff + nft", &m.sync);
    println!("  table: {} elements, {} rules", m.elements, m.rules);
    Ok(())
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // The server's `role` label picks the configuration: `one` is isolated by one policy that
    // allows the client, `fifty` by that one and 49 others evaluated before it that do not.
    create_policy(
        &policies,
        "allow-client",
        json!({"podSelector": {"matchExpressions": [
                   {"key": "role", "operator": "In", "values": ["one", "fifty"]}]},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                            "ports": [{"port": ECHO_PORT}]}]}),
    )
    .await?;
    for n in 0..49 {
        create_policy(
            &policies,
            &format!("a-{n:03}"),
            json!({"podSelector": {"matchLabels": {"role": "fifty"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("nobody-{n}")}}}],
                                "ports": [{"port": 80}]}]}),
        )
        .await?;
    }
    let configs = [
        ("no table (enforcer stopped, table deleted)", None),
        ("table, server not isolated", Some("none")),
        ("server isolated, 1 policy", Some("one")),
        (
            "server isolated, 50 policies (match in the last)",
            Some("fifty"),
        ),
    ];
    let mut results = vec![(Vec::new(), Vec::new()); configs.len()];
    let mut enforcer: Option<Enforcer> = None;
    // Each round visits the configurations in another order, so that a slow spell of this
    // shared machine does not always land on the same one.
    for round in 0..ROUNDS {
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            let role = configs[i].1;
            match role {
                None => {
                    if let Some(e) = enforcer.take() {
                        netpol::cleanup(&e.stop().await?)?;
                    }
                }
                Some(role) => {
                    let patch = json!({"metadata": {"labels": {"role": role}}});
                    pods.patch("server", &PatchParams::default(), &Patch::Merge(patch))
                        .await?;
                    if enforcer.is_none() {
                        enforcer = Some(Enforcer::start(&client, &node).await?);
                    }
                    let want = match role {
                        "none" => None,
                        "one" => Some(1),
                        _ => Some(50),
                    };
                    wait_jumps(&node, web.ip, want).await?;
                }
            }
            let (from, ip) = (c.netns.clone(), web.ip);
            let (conn, rr) = tokio::task::spawn_blocking(move || traffic(&from, ip)).await??;
            results[i].0.push(conn);
            results[i].1.push(rr);
        }
    }
    println!(
        "per-packet cost: {CLIENTS} clients → server on one bridge, both cores busy, median of {ROUNDS} rounds:"
    );
    let base = (median(results[0].0.clone()), median(results[0].1.clone()));
    for ((label, _), (conn, rr)) in configs.iter().zip(results) {
        let (conn, rr) = (median(conn), median(rr));
        println!(
            "  {label:<50} {conn:>7.0} connections/s ({:>+5.1}%)  {rr:>7.0} round trips/s ({:>+5.1}%)",
            (conn / base.0 - 1.0) * 100.0,
            (rr / base.1 - 1.0) * 100.0
        );
    }
    let enforcer = match enforcer {
        Some(e) => e,
        None => Enforcer::start(&client, &node).await?,
    };
    let patch = json!({"metadata": {"labels": {"role": "fifty"}}});
    pods.patch("server", &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    wait_jumps(&node, web.ip, Some(50)).await?;

    println!("rule update latency, a policy created and deleted 20 times (3 pods, 50 policies):");
    latency_phase(&enforcer, &policies, &node, c.ip).await?;

    println!("with 2,000 pods on 20 other nodes and 100 more policies on the server:");
    let start = Instant::now();
    futures::stream::iter(0..2000u32)
        .map(|n| {
            let pods = pods.clone();
            async move {
                let name = format!("remote-{n}");
                let tier = if n % 2 == 0 { "front" } else { "back" };
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": format!("app-{}", n % 100), "tier": tier}},
                    "spec": {"nodeName": format!("node-{}", 1 + n % 20), "containers": [{"name": "c", "image": "i",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                let ip = format!("10.43.{}.{}", n / 250, 1 + n % 250);
                let st = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
                    .await?;
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
    // Settled: no transaction for half a second.
    loop {
        let before = enforcer.cfg.metrics.snapshot().syncs;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if enforcer.cfg.metrics.snapshot().syncs == before {
            break;
        }
    }
    println!("  loading and settling took {:?}", start.elapsed());
    latency_phase(&enforcer, &policies, &node, c.ip).await?;
    // The pure steps alone, on the same objects.
    let all_policies: Vec<NetworkPolicy> = Api::all(client.clone())
        .list(&Default::default())
        .await?
        .items;
    let all_pods: Vec<Pod> = Api::all(client.clone())
        .list(&Default::default())
        .await?
        .items;
    let all_namespaces: Vec<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone())
        .list(&Default::default())
        .await?
        .items;
    let (mut compute, mut render, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    let mut previous: Option<netpol::Ruleset> = None;
    for _ in 0..10 {
        let start = Instant::now();
        let model = netpol::compute(&all_policies, &all_pods, &all_namespaces, "node-a");
        compute.push(start.elapsed());
        let start = Instant::now();
        let rs = netpol::Ruleset::from_model(&model, "skiff0");
        render.push(start.elapsed());
        if let Some(old) = &previous {
            let start = Instant::now();
            let script = rs.diff_script(old, "skiff-netpol");
            diff.push(start.elapsed());
            ensure!(script.as_deref() == Some(""));
        }
        previous = Some(rs);
    }
    show("model::compute", &Summary::of(compute));
    show("Ruleset::from_model", &Summary::of(render));
    show("Ruleset::diff_script (nothing changed)", &Summary::of(diff));
    // What nft itself costs with this table: a no-op transaction, and one element in and out.
    let sets = node.nft(&["list", "sets", "inet"])?;
    let peers = sets
        .split_whitespace()
        .find(|w| w.starts_with("peers-"))
        .context("a peers set")?
        .to_owned();
    for (what, script) in [
        (
            "nft: a no-op transaction",
            "add table inet skiff-netpol\n".to_owned(),
        ),
        (
            "nft: one element added and removed",
            format!(
                "add element inet skiff-netpol {peers} {{ 10.99.0.1 }}\ndelete element inet skiff-netpol {peers} {{ 10.99.0.1 }}\n"
            ),
        ),
    ] {
        let path = lab.dir.path().join("script.nft");
        std::fs::write(&path, script)?;
        let mut samples = Vec::new();
        for _ in 0..10 {
            let start = Instant::now();
            node.nft(&["-f", &path.display().to_string()])?;
            samples.push(start.elapsed());
        }
        show(what, &Summary::of(samples));
    }

    enforcer.cfg.metrics.clear_samples();
    let syncs = enforcer.cfg.metrics.snapshot().syncs;
    let started = Instant::now();
    pods.patch(
        "remote-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "back"}}})),
    )
    .await?;
    enforcer.wait_syncs(syncs + 1).await?;
    let m = enforcer.cfg.metrics.snapshot();
    println!(
        "  a peer pod relabelled: API write → applied {:?} (watch event → applied {:.1} ms)",
        started.elapsed(),
        m.latency.max_ms
    );
    let (from, ip) = (c.netns.clone(), web.ip);
    let (conn, rr) = tokio::task::spawn_blocking(move || traffic(&from, ip)).await??;
    println!(
        "  traffic to the server under 150 policies (match in the 50th): {conn:.0} connections/s, {rr:.0} round trips/s"
    );

    enforcer.stop().await?;
    drop(lab);
    server.shutdown().await?;
    Ok(())
}
