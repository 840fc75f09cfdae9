//! The API server and store alone: durable creates, point reads, LIST, watch latency.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apiserver::client::Client;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::{BenchArgs, Figure, concurrent, make_namespace, ms, percentile, rss_mb, start_server};

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
    figs.push(Figure {
        name: "server start to /readyz (fresh dir)".into(),
        value: ms(ready),
        unit: "ms",
        target: "< 1000",
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    figs.push(Figure {
        name: "server RSS idle".into(),
        value: rss_mb(pid)?,
        unit: "MB",
        target: "< 30",
    });

    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(Client::connect(&server.kubeconfig, server.port).await?);
    }
    let c0 = clients[0].clone();

    // Durable creates from concurrent clients.
    make_namespace(&c0, "bench-create").await?;
    let (lat, wall) = concurrent(&clients, args.creates, |c, i| async move {
        let body = serde_json::to_vec(&json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("cm-{i}") }, "data": { "k": "v" } }))?;
        let (s, b) = c.request(Method::POST, "/api/v1/namespaces/bench-create/configmaps", Some(body)).await?;
        if s != StatusCode::CREATED {
            bail!("create: {s} {}", String::from_utf8_lossy(&b));
        }
        Ok(())
    })
    .await?;
    figs.push(Figure {
        name: "creates/s (50 clients, durable)".into(),
        value: args.creates as f64 / wall.as_secs_f64(),
        unit: "1/s",
        target: ">= 10000",
    });
    figs.push(Figure {
        name: "create latency p50".into(),
        value: ms(percentile(&lat, 0.5)),
        unit: "ms",
        target: "",
    });
    figs.push(Figure {
        name: "create latency p99".into(),
        value: ms(percentile(&lat, 0.99)),
        unit: "ms",
        target: "< 50",
    });

    // Point reads.
    let n = args.creates;
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
    figs.push(Figure {
        name: "GET/s (50 clients)".into(),
        value: n as f64 / wall.as_secs_f64(),
        unit: "1/s",
        target: "",
    });

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
    figs.push(Figure {
        name: "LIST pods JSON (median of 5)".into(),
        value: ms(percentile(&json_lat, 0.5)),
        unit: "ms",
        target: "< 100 (10k)",
    });
    figs.push(Figure {
        name: "LIST pods Table (median of 5)".into(),
        value: ms(percentile(&table_lat, 0.5)),
        unit: "ms",
        target: "",
    });
    figs.push(Figure {
        name: "list size (pods)".into(),
        value: objects as f64,
        unit: "",
        target: "",
    });

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
    figs.push(Figure {
        name: "watch event latency p50".into(),
        value: ms(percentile(&watch_lat, 0.5)),
        unit: "ms",
        target: "",
    });
    figs.push(Figure {
        name: "watch event latency p99".into(),
        value: ms(percentile(&watch_lat, 0.99)),
        unit: "ms",
        target: "",
    });
    drop(clients);
    drop(c0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    figs.push(Figure {
        name: "server RSS with objects loaded".into(),
        value: rss_mb(pid)?,
        unit: "MB",
        target: "",
    });
    Ok(figs)
}
