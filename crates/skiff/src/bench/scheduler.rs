//! The scheduler end to end: a real `skiff server` (scheduler and controllers on) and a
//! `skiff agent --simulated-nodes N` process; pods are created through the API and a watch
//! records when each is bound and when it is Running. Then the server is filled to
//! `--total-pods` and its memory is read while the simulated nodes keep renewing their Leases.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apiserver::client::Client;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::{
    BenchArgs, Figure, ServerProcess, concurrent, make_namespace, ms, percentile, rss_mb,
    start_server,
};

const NS: &str = "bench-sched";
/// How often the simulated nodes renew their Leases (upstream kubelet: a quarter of 40 s).
const LEASE_RENEW: Duration = Duration::from_secs(10);

/// A child process killed when dropped.
pub(super) struct Killed(pub(super) std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Deserialize)]
struct WatchLine {
    #[serde(rename = "type")]
    type_: String,
    object: WatchPod,
}

#[derive(Deserialize)]
struct WatchPod {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

#[derive(Deserialize, Default)]
struct Spec {
    #[serde(default, rename = "nodeName")]
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    phase: Option<String>,
}

/// When each pod was created, bound and seen Running, in µs since the benchmark's start
/// (0: not yet).
pub(super) struct Timeline {
    start: Instant,
    pub(super) created: Vec<AtomicU64>,
    bound: Vec<AtomicU64>,
    pub(super) running: Vec<AtomicU64>,
    bound_count: AtomicUsize,
    pub(super) running_count: AtomicUsize,
}

impl Timeline {
    pub(super) fn new(n: usize) -> Self {
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Timeline {
            start: Instant::now(),
            created: v(),
            bound: v(),
            running: v(),
            bound_count: AtomicUsize::new(0),
            running_count: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        (self.start.elapsed().as_micros() as u64).max(1)
    }

    fn observe(&self, pod: &WatchPod) {
        let Some(i) = pod
            .metadata
            .name
            .strip_prefix("pod-")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.bound.len())
        else {
            return;
        };
        let now = self.now();
        let set = |slot: &AtomicU64, count: &AtomicUsize| {
            if slot
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                count.fetch_add(1, Ordering::Relaxed);
            }
        };
        if pod.spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
            set(&self.bound[i], &self.bound_count);
        }
        if pod.status.phase.as_deref() == Some("Running") {
            set(&self.running[i], &self.running_count);
        }
    }

    /// Per-pod latencies from `from` to `to` over `range`, sorted.
    pub(super) fn latencies(
        &self,
        from: &[AtomicU64],
        to: &[AtomicU64],
        range: std::ops::Range<usize>,
    ) -> Vec<Duration> {
        let mut v: Vec<Duration> = range
            .map(|i| {
                let (a, b) = (
                    from[i].load(Ordering::Relaxed),
                    to[i].load(Ordering::Relaxed),
                );
                Duration::from_micros(b.saturating_sub(a))
            })
            .collect();
        v.sort();
        v
    }

    pub(super) fn last(&self, of: &[AtomicU64], range: std::ops::Range<usize>) -> Duration {
        Duration::from_micros(
            of[range]
                .iter()
                .map(|t| t.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
        )
    }
}

pub(super) async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(super) async fn ready_nodes(c: &Client) -> Result<usize> {
    #[derive(Deserialize)]
    struct List {
        items: Vec<Node>,
    }
    #[derive(Deserialize)]
    struct Node {
        #[serde(default)]
        status: NodeStatus,
    }
    #[derive(Deserialize, Default)]
    struct NodeStatus {
        #[serde(default)]
        conditions: Vec<Condition>,
    }
    #[derive(Deserialize)]
    struct Condition {
        #[serde(rename = "type")]
        type_: String,
        status: String,
    }
    let (s, b) = c.request(Method::GET, "/api/v1/nodes", None).await?;
    if s != StatusCode::OK {
        bail!("list nodes: {s}");
    }
    let list: List = serde_json::from_slice(&b)?;
    Ok(list
        .items
        .iter()
        .filter(|n| {
            n.status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .count())
}

/// The store's revision now (a namespaced list answers with it).
pub(super) async fn current_revision(c: &Client) -> Result<u64> {
    let (_, b) = c
        .request(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?limit=1",
            None,
        )
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&b)?;
    Ok(list["metadata"]["resourceVersion"]
        .as_str()
        .context("no resourceVersion")?
        .parse()?)
}

/// Follows pod events in the benchmark namespace from `rv` into `tl`. The server ends a watch
/// that falls too far behind (as upstream does); it is resumed from the last event seen.
pub(super) async fn follow(c: Client, ns: &str, mut rv: String, tl: Arc<Timeline>) -> Result<()> {
    loop {
        let resp = c
            .send(
                Method::GET,
                &format!("/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}&timeoutSeconds=3600"),
                None,
                "application/json",
            )
            .await?;
        if resp.status() != StatusCode::OK {
            bail!("watch pods: {}", resp.status());
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            let mut used = 0;
            while let Some(nl) = buf[used..].iter().position(|b| *b == b'\n') {
                let line = &buf[used..used + nl];
                used += nl + 1;
                match serde_json::from_slice::<WatchLine>(line) {
                    Ok(ev) if ev.type_ == "ERROR" => {
                        bail!("the pod watch failed: {}", String::from_utf8_lossy(line))
                    }
                    Ok(ev) => {
                        tl.observe(&ev.object);
                        if !ev.object.metadata.resource_version.is_empty() {
                            rv = ev.object.metadata.resource_version;
                        }
                    }
                    Err(_) => {}
                }
            }
            buf.drain(..used);
        }
    }
}

/// Creates pods `pod-<i>` for `i` in `range` in `ns` over `clients`, each from `body(ns, name)`,
/// noting creation times in `tl`.
pub(super) async fn create_pods(
    clients: &[Client],
    tl: &Arc<Timeline>,
    ns: &'static str,
    body: fn(&str, &str) -> Vec<u8>,
    range: std::ops::Range<usize>,
) -> Result<Duration> {
    let (first, n) = (range.start, range.len());
    let tl = tl.clone();
    let (_, wall) = concurrent(clients, n, move |c, i| {
        let tl = tl.clone();
        async move {
            let i = first + i;
            tl.created[i].store(tl.now(), Ordering::Relaxed);
            let (s, b) = c
                .request(
                    Method::POST,
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    Some(body(ns, &format!("pod-{i}"))),
                )
                .await?;
            if s != StatusCode::CREATED {
                bail!("create pod: {s} {}", String::from_utf8_lossy(&b));
            }
            Ok(())
        }
    })
    .await?;
    Ok(wall)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Simulated nodes: an agent process, killed when dropped.
async fn simulated_nodes(
    server: &ServerProcess,
    c0: &Client,
    nodes: usize,
) -> Result<(Killed, Duration)> {
    let token = std::fs::read_to_string(server.dir.path().join("server/token"))?;
    let started = Instant::now();
    let agent = Killed(
        std::process::Command::new(std::env::current_exe()?)
            .args(["agent", "--simulated-nodes", &nodes.to_string()])
            .args(["--server", &format!("https://127.0.0.1:{}", server.port)])
            .args(["--token", token.trim(), "--data-dir"])
            .arg(server.dir.path().join("sim-agent"))
            .env("SKIFF_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(super::log_file("agent")?)
            .spawn()
            .context("starting skiff agent")?,
    );
    while ready_nodes(c0).await? < nodes {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{nodes} simulated nodes did not become Ready");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok((agent, started.elapsed()))
}

/// What one burst of pod creates measured.
struct Burst {
    create_wall: Duration,
    bound_wall: Duration,
    running_wall: Duration,
    bind_lat: Vec<Duration>,
    run_lat: Vec<Duration>,
    /// Store writes per pod while the burst ran (all kinds).
    writes_per_pod: f64,
}

/// Creates `n` pods from `body` in the new namespace `ns` and waits until all are bound and
/// Running. With `hold` the watch keeps running (and the timeline growing) for later pods.
async fn burst(
    server: &ServerProcess,
    clients: &[Client],
    ns: &'static str,
    body: fn(&str, &str) -> Vec<u8>,
    n: usize,
    capacity: usize,
) -> Result<(Burst, Arc<Timeline>, tokio::task::JoinHandle<Result<()>>)> {
    let c0 = &clients[0];
    make_namespace(c0, ns).await?;
    let rv_before = current_revision(c0).await?;
    let tl = Arc::new(Timeline::new(capacity.max(n)));
    let watcher = tokio::spawn(follow(
        Client::connect(&server.kubeconfig, server.port).await?,
        ns,
        rv_before.to_string(),
        tl.clone(),
    ));
    let t0 = Duration::from_micros(tl.now());
    let create_wall = create_pods(clients, &tl, ns, body, 0..n).await?;
    let timeout = Duration::from_secs(120 + n as u64 / 50);
    wait_until("pods bound", timeout, || {
        watcher.is_finished() || tl.bound_count.load(Ordering::Relaxed) >= n
    })
    .await?;
    wait_until("pods Running", timeout, || {
        watcher.is_finished() || tl.running_count.load(Ordering::Relaxed) >= n
    })
    .await?;
    if watcher.is_finished() {
        watcher.await??;
        bail!("the pod watch ended");
    }
    let rv_after = current_revision(c0).await?;
    let b = Burst {
        create_wall,
        bound_wall: tl.last(&tl.bound, 0..n).saturating_sub(t0),
        running_wall: tl.last(&tl.running, 0..n).saturating_sub(t0),
        bind_lat: tl.latencies(&tl.created, &tl.bound, 0..n),
        run_lat: tl.latencies(&tl.created, &tl.running, 0..n),
        writes_per_pod: rv_after.saturating_sub(rv_before) as f64 / n as f64,
    };
    Ok((b, tl, watcher))
}

/// A pod with required anti-affinity against the pods of its colour (one of 8) per node.
fn anti_affinity_pod(ns: &str, name: &str) -> Vec<u8> {
    let colour = name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
        % 8;
    let selector = serde_json::json!({ "matchLabels": { "colour": format!("c{colour}") } });
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "colour": format!("c{colour}") } },
        "spec": {
            "containers": [{ "name": "c", "image": "busybox:1.36",
                "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }],
            "affinity": { "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [
                { "labelSelector": selector, "topologyKey": "kubernetes.io/hostname" }] } },
        },
    }))
    .unwrap_or_default()
}

/// A pod spread over nodes with maxSkew 1 (DoNotSchedule).
fn spread_pod(ns: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": "spread" } },
        "spec": {
            "containers": [{ "name": "c", "image": "busybox:1.36",
                "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }],
            "topologySpreadConstraints": [{ "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": { "matchLabels": { "app": "spread" } } }],
        },
    }))
    .unwrap_or_default()
}

const BIN_PACKING: &str = "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
";

pub async fn bench(args: &BenchArgs) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let extra: Vec<&str> = args.server_args.iter().map(String::as_str).collect();
    let (server, _) = start_server(&extra).await?;
    let c0 = Client::connect(&server.kubeconfig, server.port).await?;
    let nodes = args.nodes;
    let (agent, registered) = simulated_nodes(&server, &c0, nodes).await?;
    figs.push(
        Figure::new("sim_nodes_ready_s", registered.as_secs_f64(), "s")
            .about(format!("{nodes} simulated nodes registered and Ready")),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.child.id();
    figs.push(
        Figure::new("server_rss_nodes_mb", rss_mb(pid)?, "MB")
            .about(format!("server RSS with {nodes} nodes")),
    );
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(Client::connect(&server.kubeconfig, server.port).await?);
    }

    // The measured burst, on a watch that stays to follow the fill-up below.
    let n = args.pods;
    let total = args.total_pods;
    let (b, tl, watcher) = burst(&server, &clients, NS, super::api::pod, n, total).await?;
    figs.push(
        Figure::new(
            "scheduler_pods_created_per_s",
            rate(n, b.create_wall),
            "1/s",
        )
        .about(format!("{n} pod creates, {} clients", args.clients)),
    );
    figs.push(
        Figure::new("scheduler_pods_per_s", rate(n, b.bound_wall), "1/s")
            .about(format!(
                "{n} pods, create to bound, on {nodes} simulated nodes"
            ))
            .target(">= 5000")
            .anchor("kube-scheduler threshold 270-390 pods/s (scheduler_perf)")
            .at_least(100.0),
    );
    figs.push(
        Figure::new(
            "scheduler_pods_running_per_s",
            rate(n, b.running_wall),
            "1/s",
        )
        .about("the same pods, create to Running (simulated kubelet)"),
    );
    figs.push(
        Figure::new("scheduler_writes_per_pod", b.writes_per_pod, "")
            .about("store writes per pod while the burst ran (all kinds)"),
    );
    figs.push(Figure::new(
        "scheduler_bind_p50_ms",
        ms(percentile(&b.bind_lat, 0.5)),
        "ms",
    ));
    figs.push(
        Figure::new(
            "scheduler_bind_p99_ms",
            ms(percentile(&b.bind_lat, 0.99)),
            "ms",
        )
        .about("create to bound, under the burst's queue"),
    );
    figs.push(
        Figure::new(
            "scheduler_running_p99_ms",
            ms(percentile(&b.run_lat, 0.99)),
            "ms",
        )
        .anchor("upstream SLO: pod startup p99 <= 5 s"),
    );

    // Fill the server up and let the Leases turn over before reading its memory.
    if total > n {
        create_pods(&clients, &tl, NS, super::api::pod, n..total).await?;
        wait_until("all pods Running", Duration::from_secs(600), || {
            watcher.is_finished() || tl.running_count.load(Ordering::Relaxed) >= total
        })
        .await?;
    }
    let settle = if args.quick {
        Duration::from_secs(2)
    } else {
        2 * LEASE_RENEW
    };
    tokio::time::sleep(settle).await;
    let ready = ready_nodes(&c0).await?;
    if ready < nodes {
        bail!("only {ready} of {nodes} nodes Ready while holding {total} pods");
    }
    figs.push(
        Figure::new("server_rss_full_mb", rss_mb(pid)?, "MB")
            .about(format!(
                "server RSS, {nodes} nodes + {total} pods, Leases renewed every 10 s"
            ))
            .at_most(8_000.0),
    );
    figs.push(
        Figure::new("sim_agent_rss_mb", rss_mb(agent.0.id())?, "MB")
            .about(format!("agent RSS playing {nodes} simulated nodes")),
    );
    // The same burst with scheduling constraints that cost per node and per pod, on the full
    // server.
    for (ns, body, name, about) in [
        (
            "bench-anti",
            anti_affinity_pod as fn(&str, &str) -> Vec<u8>,
            "scheduler_anti_affinity_pods_per_s",
            "required pod anti-affinity per node (8 label groups)",
        ),
        (
            "bench-spread",
            spread_pod,
            "scheduler_spread_pods_per_s",
            "topology spread over nodes, maxSkew 1, DoNotSchedule",
        ),
    ] {
        let (b, _, w) = burst(&server, &clients, ns, body, n, n).await?;
        w.abort();
        figs.push(
            Figure::new(name, rate(n, b.bound_wall), "1/s")
                .about(format!("{n} pods, create to bound: {about}"))
                .at_least(20.0),
        );
    }

    watcher.abort();
    drop(agent);
    drop(server);

    // Bin-packing: MostAllocated scoring from a scheduler configuration file.
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), BIN_PACKING)?;
    let config_path = config.path().to_string_lossy().into_owned();
    let mut extra = extra;
    extra.extend(["--scheduler-config", &config_path]);
    let (server, _) = start_server(&extra).await?;
    let c0 = Client::connect(&server.kubeconfig, server.port).await?;
    let (agent, _) = simulated_nodes(&server, &c0, nodes).await?;
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(Client::connect(&server.kubeconfig, server.port).await?);
    }
    let (b, _, w) = burst(&server, &clients, NS, super::api::pod, n, n).await?;
    w.abort();
    figs.push(
        Figure::new(
            "scheduler_bin_packing_pods_per_s",
            rate(n, b.bound_wall),
            "1/s",
        )
        .about(format!("{n} pods, create to bound, MostAllocated scoring"))
        .at_least(100.0),
    );
    drop(agent);
    Ok(figs)
}
