//! The API server and store alone: durable creates, point reads, LIST, watch latency.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apiserver::client::Client;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::{
    BenchArgs, Figure, ServerProcess, concurrent, cpu_seconds, make_namespace, ms, percentile,
    rss_mb, start_server,
};

pub(super) fn pod(ns: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": "bench", "tier": "web" } },
        "spec": { "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] },
    }))
    .unwrap_or_default()
}

pub async fn bench(args: &BenchArgs) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    // The API server and store alone: the scheduler and controllers would react to the
    // benchmark's pods (scheduling attempts, events) and measure themselves instead.
    let (server, ready) =
        start_server(&["--disable-scheduler", "--disable-controller-manager"]).await?;
    figs.push(
        Figure::new("server_ready_ms", ms(ready), "ms")
            .about("`skiff server` started on a fresh data dir until /readyz answers")
            .target("< 1000")
            .at_most(10_000.0),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    figs.push(
        Figure::new("server_rss_idle_mb", rss_mb(pid)?, "MB")
            .about("server RSS, idle, fresh data dir, no agent")
            .target("< 30")
            .at_most(300.0),
    );

    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(Client::connect(&server.kubeconfig, server.port).await?);
    }
    let c0 = clients[0].clone();

    // Durable creates from concurrent clients.
    make_namespace(&c0, "bench-create").await?;
    let cpu_before = cpu_seconds(pid)?;
    let (lat, wall) = concurrent(&clients, args.creates, |c, i| async move {
        let body = serde_json::to_vec(&json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("cm-{i}") }, "data": { "k": "v" } }))?;
        let (s, b) = c.request(Method::POST, "/api/v1/namespaces/bench-create/configmaps", Some(body)).await?;
        if s != StatusCode::CREATED {
            bail!("create: {s} {}", String::from_utf8_lossy(&b));
        }
        Ok(())
    })
    .await?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    figs.push(
        Figure::new(
            "api_creates_per_s",
            args.creates as f64 / wall.as_secs_f64(),
            "1/s",
        )
        .about(format!(
            "durable ConfigMap creates, {} clients",
            args.clients
        ))
        .target(">= 10000")
        .at_least(1_000.0),
    );
    figs.push(Figure::new(
        "api_create_p50_ms",
        ms(percentile(&lat, 0.5)),
        "ms",
    ));
    figs.push(
        Figure::new("api_create_p99_ms", ms(percentile(&lat, 0.99)), "ms")
            .target("< 50")
            .anchor("upstream SLO: mutating calls p99 <= 1 s")
            .at_most(500.0),
    );
    figs.push(
        Figure::new("api_create_cpu_us", cpu * 1e6 / args.creates as f64, "us")
            .about("server CPU time (user + system) per durable create"),
    );

    // The same with 500 concurrent clients.
    let mut many = Vec::new();
    for _ in 0..500 {
        many.push(Client::connect(&server.kubeconfig, server.port).await?);
    }
    let total = args.creates;
    let (lat, wall) = concurrent(&many, total, |c, i| async move {
        let body = serde_json::to_vec(&json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("many-{i}") }, "data": { "k": "v" } }))?;
        let (s, b) = c.request(Method::POST, "/api/v1/namespaces/bench-create/configmaps", Some(body)).await?;
        if s != StatusCode::CREATED {
            bail!("create: {s} {}", String::from_utf8_lossy(&b));
        }
        Ok(())
    })
    .await?;
    drop(many);
    figs.push(
        Figure::new(
            "api_creates_per_s_500_clients",
            total as f64 / wall.as_secs_f64(),
            "1/s",
        )
        .about("durable ConfigMap creates, 500 clients")
        .at_least(1_000.0),
    );
    figs.push(
        Figure::new(
            "api_create_p99_ms_500_clients",
            ms(percentile(&lat, 0.99)),
            "ms",
        )
        .anchor("upstream SLO: mutating calls p99 <= 1 s")
        .at_most(2_000.0),
    );

    // Point reads.
    let n = args.creates;
    let cpu_before = cpu_seconds(pid)?;
    let (_, wall) = concurrent(&clients, n, move |c, i| async move {
        let (s, _) = c
            .request(
                Method::GET,
                &format!(
                    "/api/v1/namespaces/bench-create/configmaps/cm-{}",
                    (i * 7919) % n
                ),
                None,
            )
            .await?;
        if s != StatusCode::OK {
            bail!("get: {s}");
        }
        Ok(())
    })
    .await?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    figs.push(
        Figure::new("api_gets_per_s", n as f64 / wall.as_secs_f64(), "1/s")
            .about(format!("GET of one ConfigMap, {} clients", args.clients))
            .at_least(2_000.0),
    );
    figs.push(
        Figure::new("api_get_cpu_us", cpu * 1e6 / n as f64, "us")
            .about("server CPU time (user + system) per GET"),
    );

    // LIST of many pods.
    make_namespace(&c0, "bench-list").await?;
    let objects = args.list_objects;
    concurrent(&clients, objects, |c, i| async move {
        let (s, b) = c
            .request(
                Method::POST,
                "/api/v1/namespaces/bench-list/pods",
                Some(pod("bench-list", &format!("pod-{i:05}"))),
            )
            .await?;
        if s != StatusCode::CREATED {
            bail!("create pod: {s} {}", String::from_utf8_lossy(&b));
        }
        Ok(())
    })
    .await?;
    let mut json_lat = Vec::new();
    let mut table_lat = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (s, b) = c0
            .request(Method::GET, "/api/v1/namespaces/bench-list/pods", None)
            .await?;
        json_lat.push(t.elapsed());
        if s != StatusCode::OK || b.len() < objects * 100 {
            bail!("list: {s}, {} bytes", b.len());
        }
        let t = Instant::now();
        let resp = c0
            .send(
                Method::GET,
                "/api/v1/namespaces/bench-list/pods",
                None,
                "application/json;as=Table;v=v1;g=meta.k8s.io",
            )
            .await?;
        let _ = resp.into_body().collect().await?;
        table_lat.push(t.elapsed());
    }
    json_lat.sort();
    table_lat.sort();
    figs.push(
        Figure::new("api_list_10k_ms", ms(percentile(&json_lat, 0.5)), "ms")
            .about(format!("LIST of {objects} pods as JSON, median of 5"))
            .target("< 100")
            .anchor("upstream SLO: namespaced LIST p99 <= 5 s")
            .at_most(2_000.0),
    );
    figs.push(
        Figure::new(
            "api_list_10k_table_ms",
            ms(percentile(&table_lat, 0.5)),
            "ms",
        )
        .about(format!(
            "LIST of {objects} pods as a Table (kubectl get), median of 5"
        ))
        .at_most(5_000.0),
    );

    // Watch delivery: time from sending a create to the watch line arriving.
    let (_, b) = c0
        .request(
            Method::GET,
            "/api/v1/namespaces/bench-create/configmaps?limit=1",
            None,
        )
        .await?;
    let rv: Value = serde_json::from_slice(&b)?;
    let rv = rv["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let resp = c0.send(Method::GET, &format!("/api/v1/namespaces/bench-create/configmaps?watch=true&resourceVersion={rv}&labelSelector=watch%3Dyes"), None, "application/json").await?;
    let mut body = resp.into_body();
    let mut watch_lat = Vec::new();
    for i in 0..200 {
        let bodyj = serde_json::to_vec(
            &json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("w-{i}"), "labels": { "watch": "yes" } } }),
        )?;
        let t = Instant::now();
        let creator = c0.clone();
        let create = tokio::spawn(async move {
            creator
                .request(
                    Method::POST,
                    "/api/v1/namespaces/bench-create/configmaps",
                    Some(bodyj),
                )
                .await
        });
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .context("watch event did not arrive")?;
            match frame {
                Some(Ok(f))
                    if f.data_ref()
                        .is_some_and(|d| d.windows(5).any(|w| w == b"ADDED")) =>
                {
                    break;
                }
                Some(Ok(_)) => continue,
                _ => bail!("watch ended"),
            }
        }
        watch_lat.push(t.elapsed());
        create.await??;
    }
    watch_lat.sort();
    figs.push(
        Figure::new("api_watch_p50_ms", ms(percentile(&watch_lat, 0.5)), "ms")
            .about("create sent to the ADDED event read by one watcher"),
    );
    figs.push(
        Figure::new("api_watch_p99_ms", ms(percentile(&watch_lat, 0.99)), "ms").at_most(100.0),
    );

    let rounds = if args.quick { 5 } else { 20 };
    let fanout = watch_fanout(&server, &c0, 1_000, rounds).await?;
    figs.push(
        Figure::new(
            "api_watch_fanout_p50_ms",
            ms(percentile(&fanout, 0.5)),
            "ms",
        )
        .about(format!(
            "1000 watchers on 10 connections: create sent to each watcher's event, {rounds} creates"
        )),
    );
    figs.push(
        Figure::new(
            "api_watch_fanout_p99_ms",
            ms(percentile(&fanout, 0.99)),
            "ms",
        )
        .anchor("upstream SLO: watch latency p99 <= 5 s (kube-apiserver to client)")
        .at_most(2_000.0),
    );
    drop(clients);
    drop(c0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    figs.push(
        Figure::new("server_rss_loaded_mb", rss_mb(pid)?, "MB").about(format!(
            "server RSS holding {} ConfigMaps and {objects} pods",
            2 * args.creates
        )),
    );
    Ok(figs)
}

/// `watchers` watches over 10 connections; `rounds` creates, one at a time, each awaited by
/// every watcher. Returns, sorted, the time from each create's send to each watcher's event.
async fn watch_fanout(
    server: &ServerProcess,
    c0: &Client,
    watchers: usize,
    rounds: usize,
) -> Result<Vec<Duration>> {
    make_namespace(c0, "bench-fanout").await?;
    let (_, b) = c0
        .request(
            Method::GET,
            "/api/v1/namespaces/bench-fanout/configmaps",
            None,
        )
        .await?;
    let list: Value = serde_json::from_slice(&b)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("no resourceVersion")?
        .to_string();
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(Client::connect(&server.kubeconfig, server.port).await?);
    }
    // Each watcher sends the instant it saw each ADDED event.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let c = conns[w % conns.len()].clone();
        let resp = c
            .send(
                Method::GET,
                &format!(
                    "/api/v1/namespaces/bench-fanout/configmaps?watch=true&resourceVersion={rv}"
                ),
                None,
                "application/json",
            )
            .await?;
        if resp.status() != StatusCode::OK {
            bail!("watch {w}: {}", resp.status());
        }
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                buf.extend_from_slice(data);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    if line.windows(7).any(|w| w == b"\"ADDED\"")
                        && tx.send(Instant::now()).is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut out = Vec::with_capacity(watchers * rounds);
    for i in 0..rounds {
        let body = serde_json::to_vec(
            &json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("f-{i}") } }),
        )?;
        let sent = Instant::now();
        let (s, b) = c0
            .request(
                Method::POST,
                "/api/v1/namespaces/bench-fanout/configmaps",
                Some(body),
            )
            .await?;
        if s != StatusCode::CREATED {
            bail!("create: {s} {}", String::from_utf8_lossy(&b));
        }
        for _ in 0..watchers {
            let seen = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .context("a watcher's event did not arrive")?
                .context("the watchers ended")?;
            out.push(seen.saturating_duration_since(sent));
        }
    }
    for t in tasks {
        t.abort();
    }
    out.sort();
    Ok(out)
}
