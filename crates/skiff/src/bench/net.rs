//! The network benchmark. In a real two-node `skiff cluster` (this binary), request rate and
//! latency from a pod on node 1 to a pod on node 2, by pod IP and through a ClusterIP Service;
//! the same traffic between two plain network namespaces joined by a veth pair, with no skiff
//! at all, measured in the same run; and how long a Service change takes to reach a node's
//! rules with 1,000 Services and 10,000 endpoints in the API.
//!
//! The server and the load generator are this module's own (a minimal HTTP/1.1 server and
//! client on tokio, one thread each), run inside the pods' network namespaces: the packets take
//! exactly the pods' path (veth, bridge, the nodes' routes and nftables rules), and the figure
//! is the network's, not busybox's fork per connection. Two patterns: a new connection per
//! request (connection setup, conntrack and the Service's DNAT on every request) and requests
//! over kept-alive connections.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{BenchArgs, Figure, ms, percentile};

const PORT: u16 = 8080;
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

pub async fn bench(args: &BenchArgs) -> Result<Vec<Figure>> {
    let secs = args
        .net_seconds
        .unwrap_or(if args.quick { 1.0 } else { 3.0 });
    if !(0.1..=600.0).contains(&secs) {
        bail!("--net-seconds must be between 0.1 and 600, not {secs}");
    }
    let load = Load {
        duration: Duration::from_secs_f64(secs),
        connections: 16,
    };
    let mut figures = Vec::new();

    let plain = PlainPair::create()?;
    let plain_rates = measure(&plain.server, &plain.client, plain.server_ip, &load).await?;

    let cluster = ClusterRun::up().await?;
    let pods = cluster.pods().await?;
    let to_pod = measure(
        &pods.server_netns,
        &pods.client_netns,
        pods.server_ip,
        &load,
    )
    .await?;
    let to_svc = measure_to(
        &pods.server_netns,
        &pods.client_netns,
        SocketAddr::from((pods.cluster_ip, 80)),
        &load,
    )
    .await?;

    for (mode, i) in [("conn", 0), ("keepalive", 1)] {
        let base = &plain_rates[i];
        figures.push(rate(&format!("net_plain_{mode}_rate"), base.rate));
        figures.push(latency(&format!("net_plain_{mode}_p99_ms"), base.p99));
        for (path, r) in [("pod_to_pod", &to_pod[i]), ("pod_to_service", &to_svc[i])] {
            figures.push(rate(&format!("{path}_{mode}_rate"), r.rate));
            figures.push(latency(&format!("{path}_{mode}_p50_ms"), r.p50));
            figures.push(latency(&format!("{path}_{mode}_p99_ms"), r.p99));
            figures.push(Figure {
                name: format!("{path}_{mode}_rate_ratio"),
                value: r.rate / base.rate,
                unit: "x",
                target: ">= 0.9 of plain namespaces",
            });
        }
    }
    // The figures: the connection-per-request pattern, the one that runs through
    // conntrack and the Service rules on every request.
    figures.push(Figure {
        name: "pod_to_pod_rate_ratio".into(),
        value: to_pod[0].rate / plain_rates[0].rate,
        unit: "x",
        target: ">= 0.9",
    });
    figures.push(Figure {
        name: "pod_to_service_rate_ratio".into(),
        value: to_svc[0].rate / plain_rates[0].rate,
        unit: "x",
        target: ">= 0.9",
    });

    let opts = proxy::bench::Options {
        services: if args.quick { 200 } else { 1000 },
        endpoints_per_service: 10,
        changes: if args.quick { 20 } else { 100 },
    };
    let e2e = proxy::bench::end_to_end(cluster.client.clone(), &opts)
        .await
        .context("rule programming through the cluster's API server")?;
    figures.push(Figure {
        name: format!(
            "svc_rule_sync_p99_ms ({} svc, {} eps)",
            e2e.services, e2e.endpoints
        ),
        value: e2e.write_to_applied.p99_ms,
        unit: "ms",
        target: "p99 < 1000 (API write to rules applied)",
    });
    figures.push(Figure {
        name: "svc_rule_sync_p50_ms".into(),
        value: e2e.write_to_applied.p50_ms,
        unit: "ms",
        target: "",
    });
    figures.push(Figure {
        name: "svc_rules_initial_sync_ms".into(),
        value: ms(e2e.initial_sync),
        unit: "ms",
        target: "",
    });
    drop(cluster);
    drop(plain);
    Ok(figures)
}

fn rate(name: &str, v: f64) -> Figure {
    Figure {
        name: name.into(),
        value: v,
        unit: "req/s",
        target: "",
    }
}

fn latency(name: &str, d: Duration) -> Figure {
    Figure {
        name: name.into(),
        value: ms(d),
        unit: "ms",
        target: "",
    }
}

struct Load {
    duration: Duration,
    connections: usize,
}

struct Rate {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Both patterns against `ip:PORT` served in `server_ns`, from `client_ns`.
async fn measure(
    server_ns: &Path,
    client_ns: &Path,
    ip: Ipv4Addr,
    load: &Load,
) -> Result<[Rate; 2]> {
    measure_to(server_ns, client_ns, SocketAddr::from((ip, PORT)), load).await
}

async fn measure_to(
    server_ns: &Path,
    client_ns: &Path,
    target: SocketAddr,
    load: &Load,
) -> Result<[Rate; 2]> {
    let server = Server::start(server_ns)?;
    let conn = run_client(client_ns, target, load, false)?;
    let keepalive = run_client(client_ns, target, load, true)?;
    drop(server);
    Ok([conn, keepalive])
}

/// Runs `f` on a new thread in the network namespace at `netns`, on a current-thread runtime.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>>>> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", netns.display()))?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(f())
    })
}

/// The HTTP server in a namespace, on its own thread until dropped.
struct Server {
    stop: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    fn start(netns: &Path) -> Result<Server> {
        let stop = tokio_util::sync::CancellationToken::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let token = stop.clone();
        let thread = in_netns(netns, move || {
            Box::pin(async move {
                let listener = TcpListener::bind(("0.0.0.0", PORT)).await;
                let listener = match listener {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        bail!("binding the bench server: {e}");
                    }
                };
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        accepted = listener.accept() => {
                            let (stream, _) = accepted?;
                            tokio::spawn(serve(stream));
                        }
                    }
                }
            })
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Server {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("the bench server did not start: {e}"),
            Err(_) => bail!("the bench server did not start in 10 s"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers every request (a header block ending in an empty line) on one connection.
async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    let mut have = 0;
    loop {
        match stream.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        while let Some(end) = find_end(&buf[..have]) {
            if stream.write_all(RESPONSE).await.is_err() {
                return;
            }
            buf.copy_within(end..have, 0);
            have -= end;
        }
        if have == buf.len() {
            return;
        }
    }
}

fn find_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `load.connections` concurrent clients for `load.duration`; each request a new connection,
/// or each client one kept-alive connection.
fn run_client(netns: &Path, target: SocketAddr, load: &Load, keepalive: bool) -> Result<Rate> {
    let (duration, connections) = (load.duration, load.connections);
    let handle = in_netns(netns, move || {
        Box::pin(async move {
            let started = Instant::now();
            let deadline = started + duration;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..connections {
                tasks.spawn(client_loop(target, deadline, keepalive));
            }
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                all.extend(r??);
            }
            let wall = started.elapsed();
            all.sort();
            Ok(Rate {
                rate: all.len() as f64 / wall.as_secs_f64(),
                p50: percentile(&all, 0.5),
                p99: percentile(&all, 0.99),
            })
        })
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the bench client thread panicked"))?
}

/// One request over a new connection.
async fn request(target: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(target).await?;
    stream.write_all(REQUEST).await?;
    read_response(&mut stream, target).await
}

async fn read_response(stream: &mut TcpStream, target: SocketAddr) -> Result<()> {
    let mut buf = [0u8; 256];
    let mut have = 0;
    while have < RESPONSE.len() {
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            bail!("{target} closed the connection mid-response");
        }
        have += n;
    }
    Ok(())
}

async fn client_loop(
    target: SocketAddr,
    deadline: Instant,
    keepalive: bool,
) -> Result<Vec<Duration>> {
    let mut lat = Vec::new();
    let mut conn: Option<TcpStream> = None;
    while Instant::now() < deadline {
        let t = Instant::now();
        let mut stream = match conn.take() {
            Some(s) => s,
            None => {
                // Closed with a reset (linger 0), as load generators do: no TIME_WAIT, so a
                // long run does not run out of local ports and measure that instead.
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.set_zero_linger()?;
                socket.set_nodelay(true)?;
                tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
                    .await
                    .with_context(|| format!("connecting to {target}: timed out"))?
                    .with_context(|| format!("connecting to {target}"))?
            }
        };
        stream.write_all(REQUEST).await?;
        read_response(&mut stream, target).await?;
        lat.push(t.elapsed());
        if keepalive {
            conn = Some(stream);
        }
    }
    Ok(lat)
}

/// Two network namespaces joined by a veth pair: the baseline.
struct PlainPair {
    names: [String; 2],
    server: PathBuf,
    client: PathBuf,
    server_ip: Ipv4Addr,
}

impl PlainPair {
    fn create() -> Result<PlainPair> {
        let id = std::process::id();
        let names = [format!("skiff-bench-{id}-s"), format!("skiff-bench-{id}-c")];
        let pair = PlainPair {
            server: Path::new("/run/netns").join(&names[0]),
            client: Path::new("/run/netns").join(&names[1]),
            names,
            server_ip: Ipv4Addr::new(192, 168, 254, 1),
        };
        let [s, c] = pair.names.clone();
        let steps: [&[&str]; 9] = [
            &["netns", "add", &s],
            &["netns", "add", &c],
            &[
                "-n", &s, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
                &c,
            ],
            &["-n", &s, "addr", "add", "192.168.254.1/30", "dev", "eth0"],
            &["-n", &c, "addr", "add", "192.168.254.2/30", "dev", "eth0"],
            &["-n", &s, "link", "set", "eth0", "up"],
            &["-n", &c, "link", "set", "eth0", "up"],
            &["-n", &s, "link", "set", "lo", "up"],
            &["-n", &c, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                drop(pair);
                return Err(e);
            }
        }
        Ok(pair)
    }
}

impl Drop for PlainPair {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Takes the bench's cluster down when dropped.
struct Down {
    name: String,
    dir: tempfile::TempDir,
}

impl Drop for Down {
    fn drop(&mut self) {
        if let Ok(exe) = std::env::current_exe() {
            let _ = Command::new(exe)
                .args(["cluster", "down", "--name", &self.name, "--data-dir"])
                .arg(self.dir.path())
                .output();
        }
    }
}

/// A two-node `skiff cluster`, taken down when dropped.
struct ClusterRun {
    down: Down,
    client: kube::Client,
}

struct BenchPods {
    server_netns: PathBuf,
    client_netns: PathBuf,
    server_ip: Ipv4Addr,
    cluster_ip: Ipv4Addr,
}

impl ClusterRun {
    async fn up() -> Result<ClusterRun> {
        let image = super::node::test_image()?;
        let down = Down {
            name: format!("bnet{}", std::process::id() % 100_000),
            dir: tempfile::tempdir()?,
        };
        let out = Command::new(std::env::current_exe()?)
            .args([
                "cluster",
                "up",
                "--name",
                &down.name,
                "--nodes",
                "2",
                "--data-dir",
            ])
            .arg(down.dir.path())
            .arg("--image")
            .arg(&image)
            .env("SKIFF_LOG", "warn")
            .output()
            .context("running skiff cluster up")?;
        if !out.status.success() {
            bail!(
                "skiff cluster up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let kubeconfig = down.dir.path().join("kubeconfig.yaml");
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(ClusterRun {
            client: kube::Client::try_from(cfg)?,
            down,
        })
    }

    /// A sleeping busybox pod on each node (their network namespaces host the bench's server
    /// and client) and a ClusterIP Service in front of the server pod.
    async fn pods(&self) -> Result<BenchPods> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        let services: Api<Service> = Api::namespaced(self.client.clone(), "default");
        for (pod, node) in [("bench-server", 2), ("bench-client", 1)] {
            let p: Pod = serde_json::from_value(json!({
                "metadata": {"name": pod, "labels": {"app": pod}},
                "spec": {
                    "nodeName": format!("{}-{node}", self.down.name),
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "Never",
                                    "command": ["sleep", "3600"]}],
                },
            }))?;
            pods.create(&PostParams::default(), &p).await?;
        }
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "bench-server"},
            "spec": {"selector": {"app": "bench-server"},
                     "ports": [{"port": 80, "targetPort": PORT}]},
        }))?;
        let svc = services.create(&PostParams::default(), &svc).await?;
        let cluster_ip: Ipv4Addr = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the Service got no cluster IP")?
            .parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut found = Vec::new();
        for name in ["bench-server", "bench-client"] {
            loop {
                let p = pods.get(name).await?;
                let status = p.status.clone().unwrap_or_default();
                if status.phase.as_deref() == Some("Running")
                    && let (Some(ip), Some(uid), Some(node)) = (
                        status.pod_ip.clone(),
                        p.metadata.uid.clone(),
                        p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    )
                {
                    let netns = Path::new("/run/skiff").join(node).join("netns").join(uid);
                    if netns.exists() {
                        found.push((netns, ip.parse::<Ipv4Addr>()?));
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!("pod {name} did not start in 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // The Service's rules on node 1: wait until a connection through it gets answered.
        let (client_netns, _) = found.pop().context("no client pod")?;
        let (server_netns, server_ip) = found.pop().context("no server pod")?;
        let server = Server::start(&server_netns)?;
        let target = SocketAddr::from((cluster_ip, 80));
        let probe = in_netns(&client_netns, move || {
            Box::pin(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let once = tokio::time::timeout(Duration::from_secs(1), request(target)).await;
                    if matches!(once, Ok(Ok(()))) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        bail!("the Service {target} did not answer in 30 s");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        });
        probe
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
        drop(server);
        Ok(BenchPods {
            server_netns,
            client_netns,
            server_ip,
            cluster_ip,
        })
    }
}
