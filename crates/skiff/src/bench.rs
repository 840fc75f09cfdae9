//! `skiff bench`: starts a real `skiff server` process (this binary) on a fresh data dir and
//! measures it over HTTPS the way clients meet it, then prints a table of figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apiserver::client::Client;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

#[derive(clap::Parser, Clone)]
pub struct BenchArgs {
    /// Durable creates in the create benchmark.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Concurrent clients (each with its own connection).
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Objects in the LIST benchmark.
    #[arg(long, default_value_t = 10_000)]
    list_objects: usize,
    /// Smaller runs, for CI smoke use.
    #[arg(long)]
    quick: bool,
}

struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    target: &'static str,
}

pub fn run(mut args: BenchArgs) -> Result<()> {
    if args.quick {
        args.creates = args.creates.min(3_000);
        args.list_objects = args.list_objects.min(2_000);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = rt.block_on(bench(args))?;
    println!("{:<34} {:>12}  {:<6} target", "figure", "value", "unit");
    for f in &figures {
        let v = if f.value >= 100.0 {
            format!("{:.0}", f.value)
        } else {
            format!("{:.2}", f.value)
        };
        println!("{:<34} {:>12}  {:<6} {}", f.name, v, f.unit, f.target);
    }
    Ok(())
}

/// A child `skiff server` killed when dropped.
struct ServerProcess {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

async fn start_server() -> Result<(ServerProcess, Duration)> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let child = std::process::Command::new(exe)
        // The API server and store alone: the scheduler and controllers would react to the
        // benchmark's pods (scheduling attempts, events) and measure themselves instead.
        .args([
            "server",
            "--disable-scheduler",
            "--disable-controller-manager",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("SKIFF_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting skiff server")?;
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let mut server = ServerProcess {
        child,
        port,
        _dir: dir,
        kubeconfig,
    };
    let deadline = started + Duration::from_secs(20);
    loop {
        if Instant::now() > deadline {
            bail!("server did not become ready");
        }
        if let Some(status) = server.child.try_wait()? {
            bail!("server exited with {status}");
        }
        if server.kubeconfig.exists()
            && let Ok(c) = Client::connect(&server.kubeconfig, server.port).await
            && c.request(Method::GET, "/readyz", None)
                .await
                .is_ok_and(|r| r.0 == StatusCode::OK)
        {
            return Ok((server, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pod(ns: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": "bench", "tier": "web" } },
        "spec": { "containers": [{ "name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] },
    }))
    .unwrap_or_default()
}

async fn make_namespace(c: &Client, ns: &str) -> Result<()> {
    let body = serde_json::to_vec(
        &json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
    )?;
    let (s, b) = c
        .request(Method::POST, "/api/v1/namespaces", Some(body))
        .await?;
    if s != StatusCode::CREATED {
        bail!(
            "creating namespace {ns}: {s} {}",
            String::from_utf8_lossy(&b)
        );
    }
    Ok(())
}

/// Runs `total` requests over `clients` connections; returns sorted latencies and wall time.
async fn concurrent<F, Fut>(
    clients: &[Client],
    total: usize,
    f: F,
) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let (c, next, f) = (c.clone(), next.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                f(c.clone(), i).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed();
    all.sort();
    Ok((all, wall))
}

async fn bench(args: BenchArgs) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let (server, ready) = start_server().await?;
    figs.push(Figure {
        name: "server start to /readyz (fresh dir)",
        value: ms(ready),
        unit: "ms",
        target: "< 1000",
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    figs.push(Figure {
        name: "server RSS idle",
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
        name: "creates/s (50 clients, durable)",
        value: args.creates as f64 / wall.as_secs_f64(),
        unit: "1/s",
        target: ">= 10000",
    });
    figs.push(Figure {
        name: "create latency p50",
        value: ms(percentile(&lat, 0.5)),
        unit: "ms",
        target: "",
    });
    figs.push(Figure {
        name: "create latency p99",
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
        name: "GET/s (50 clients)",
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
        name: "LIST pods JSON (median of 5)",
        value: ms(percentile(&json_lat, 0.5)),
        unit: "ms",
        target: "< 100 (10k)",
    });
    figs.push(Figure {
        name: "LIST pods Table (median of 5)",
        value: ms(percentile(&table_lat, 0.5)),
        unit: "ms",
        target: "",
    });
    figs.push(Figure {
        name: "list size (pods)",
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
        name: "watch event latency p50",
        value: ms(percentile(&watch_lat, 0.5)),
        unit: "ms",
        target: "",
    });
    figs.push(Figure {
        name: "watch event latency p99",
        value: ms(percentile(&watch_lat, 0.99)),
        unit: "ms",
        target: "",
    });
    drop(clients);
    drop(c0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    figs.push(Figure {
        name: "server RSS with objects loaded",
        value: rss_mb(pid)?,
        unit: "MB",
        target: "",
    });
    Ok(figs)
}
