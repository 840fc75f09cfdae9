//! The network benchmark. In a real two-node `skiff cluster` (this binary), request rate and
//! latency from a pod on node 1 to a pod on node 2, by pod IP and through a ClusterIP Service;
//! the same traffic between two plain network namespaces joined by a veth pair, with no skiff
//! at all, and through the cluster's topology built by hand (pod and node namespaces, bridges,
//! routes, no netfilter rules), measured in the same run; and how long a Service change takes to reach a node's
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

    let plain = PlainNet::pair()?;
    let plain_rates = measure(&plain.server, &plain.client, plain.server_ip, &load).await?;
    drop(plain);
    let routed = PlainNet::routed()?;
    let routed_rates = measure(&routed.server, &routed.client, routed.server_ip, &load).await?;
    drop(routed);

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
        let (base, same_shape) = (&plain_rates[i], &routed_rates[i]);
        let pattern = match mode {
            "conn" => "a new connection per request",
            _ => "requests over kept-alive connections",
        };
        figures.push(
            Figure::new(format!("net_routed_{mode}_rate"), same_shape.rate, "req/s")
                .about(format!(
                    "the cluster's topology built by hand, no skiff, no rules: {pattern}"
                ))
                .peer("veth", base.rate),
        );
        for (path, r) in [("pod_to_pod", &to_pod[i]), ("pod_to_service", &to_svc[i])] {
            let what = match path {
                "pod_to_pod" => "pod on node 1 to a pod on node 2 by pod IP",
                _ => "pod on node 1 to a ClusterIP whose one endpoint is on node 2",
            };
            figures.push(
                Figure::new(format!("{path}_{mode}_rate"), r.rate, "req/s")
                    .about(format!(
                        "{what}, {pattern}; peer: two plain namespaces on a veth pair"
                    ))
                    .peer("veth", base.rate),
            );
            figures.push(
                Figure::new(format!("{path}_{mode}_p50_ms"), ms(r.p50), "ms")
                    .peer("veth", ms(base.p50)),
            );
            figures.push(
                Figure::new(format!("{path}_{mode}_p99_ms"), ms(r.p99), "ms")
                    .peer("veth", ms(base.p99)),
            );
            figures.push(
                Figure::new(
                    format!("{path}_{mode}_vs_routed"),
                    r.rate / same_shape.rate,
                    "x",
                )
                .about("rate against the same topology built by hand (what skiff's rules cost)"),
            );
        }
    }
    // The figures: the connection-per-request pattern, the one that runs through
    // conntrack and the Service rules on every request.
    figures.push(
        Figure::new(
            "pod_to_pod_rate_ratio",
            to_pod[0].rate / plain_rates[0].rate,
            "x",
        )
        .about("pod-to-pod rate over plain namespaces' rate (new connection per request)")
        .target(">= 0.9")
        .at_least(0.1),
    );
    figures.push(
        Figure::new(
            "pod_to_service_rate_ratio",
            to_svc[0].rate / plain_rates[0].rate,
            "x",
        )
        .about("pod-to-Service rate over plain namespaces' rate (new connection per request)")
        .target(">= 0.9")
        .at_least(0.1),
    );

    let opts = proxy::bench::Options {
        services: if args.quick { 200 } else { 1000 },
        endpoints_per_service: 10,
        changes: if args.quick { 20 } else { 100 },
    };
    let e2e = proxy::bench::end_to_end(cluster.client.clone(), &opts)
        .await
        .context("rule programming through the cluster's API server")?;
    figures.push(
        Figure::new("svc_rule_sync_p99_ms", e2e.write_to_applied.p99_ms, "ms")
            .about(format!(
                "a Service change written to the API until a node's nftables rules hold it ({} services, {} endpoints)",
                e2e.services, e2e.endpoints
            ))
            .target("< 1000")
            .at_most(5_000.0),
    );
    figures.push(Figure::new(
        "svc_rule_sync_p50_ms",
        e2e.write_to_applied.p50_ms,
        "ms",
    ));
    figures.push(
        Figure::new("svc_rules_initial_sync_ms", ms(e2e.initial_sync), "ms")
            .about("a proxy's first full sync of every Service's rules"),
    );
    drop(cluster);
    Ok(figures)
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
    // Until one request gets through (links coming up, neighbours, the Service's rules), the
    // figures would measure SYN retransmissions.
    wait_answered(client_ns, target)?;
    let conn = run_client(client_ns, target, load, false)?;
    let keepalive = run_client(client_ns, target, load, true)?;
    drop(server);
    Ok([conn, keepalive])
}

/// Waits until a request from `client_ns` to `target` is answered (30 s at most).
fn wait_answered(client_ns: &Path, target: SocketAddr) -> Result<()> {
    let probe = in_netns(client_ns, move || {
        Box::pin(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let once = tokio::time::timeout(Duration::from_millis(300), request(target)).await;
                if matches!(once, Ok(Ok(()))) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("{target} did not answer in 30 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
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

/// Plain network namespaces built with `ip` alone (no skiff, no netfilter rules): the
/// baselines. Removed when dropped.
struct PlainNet {
    names: Vec<String>,
    server: PathBuf,
    client: PathBuf,
    server_ip: Ipv4Addr,
}

impl PlainNet {
    /// Two namespaces joined by one veth pair.
    fn pair() -> Result<PlainNet> {
        let mut net = PlainNet::named(&["s", "c"], Ipv4Addr::new(192, 168, 254, 1))?;
        let [s, c] = [net.names[0].clone(), net.names[1].clone()];
        let steps: &[&[&str]] = &[
            &[
                "-n", &s, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
                &c,
            ],
            &["-n", &s, "addr", "add", "192.168.254.1/30", "dev", "eth0"],
            &["-n", &c, "addr", "add", "192.168.254.2/30", "dev", "eth0"],
        ];
        net.build(steps)?;
        net.up(&[(&s, "eth0"), (&c, "eth0")])?;
        Ok(net)
    }

    /// The shape of the cluster's path, built by hand: client and server "pods" on a bridge in
    /// a "node" namespace each, the nodes routing between their pod subnets over a bridge in a
    /// fifth namespace (the host's side). What skiff adds on top is its netfilter rules.
    fn routed() -> Result<PlainNet> {
        let mut net = PlainNet::named(&["s", "c", "n1", "n2", "h"], Ipv4Addr::new(10, 200, 2, 2))?;
        let n: Vec<String> = net.names.clone();
        let (s, c, n1, n2, h) = (&n[0], &n[1], &n[2], &n[3], &n[4]);
        let veth = |a: &str, an: &str, b: &str, bn: &str| -> Vec<String> {
            [
                "-n", a, "link", "add", an, "type", "veth", "peer", "name", bn, "netns", b,
            ]
            .map(str::to_owned)
            .to_vec()
        };
        let steps: Vec<Vec<String>> = vec![
            veth(c, "eth0", n1, "vc"),
            veth(s, "eth0", n2, "vs"),
            veth(n1, "eth0", h, "v1"),
            veth(n2, "eth0", h, "v2"),
            ["-n", n1, "link", "add", "br0", "type", "bridge"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", n2, "link", "add", "br0", "type", "bridge"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", h, "link", "add", "br0", "type", "bridge"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", n1, "link", "set", "vc", "master", "br0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", n2, "link", "set", "vs", "master", "br0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", h, "link", "set", "v1", "master", "br0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", h, "link", "set", "v2", "master", "br0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", c, "addr", "add", "10.200.1.2/24", "dev", "eth0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", s, "addr", "add", "10.200.2.2/24", "dev", "eth0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", n1, "addr", "add", "10.200.1.1/24", "dev", "br0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", n2, "addr", "add", "10.200.2.1/24", "dev", "br0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", n1, "addr", "add", "192.168.253.2/24", "dev", "eth0"]
                .map(str::to_owned)
                .to_vec(),
            ["-n", n2, "addr", "add", "192.168.253.3/24", "dev", "eth0"]
                .map(str::to_owned)
                .to_vec(),
        ];
        let refs: Vec<Vec<&str>> = steps
            .iter()
            .map(|v| v.iter().map(String::as_str).collect())
            .collect();
        let refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
        net.build(&refs)?;
        net.up(&[
            (c, "eth0"),
            (s, "eth0"),
            (n1, "vc"),
            (n2, "vs"),
            (n1, "eth0"),
            (n2, "eth0"),
            (h, "v1"),
            (h, "v2"),
            (n1, "br0"),
            (n2, "br0"),
            (h, "br0"),
        ])?;
        let routes: &[&[&str]] = &[
            &["-n", c, "route", "add", "default", "via", "10.200.1.1"],
            &["-n", s, "route", "add", "default", "via", "10.200.2.1"],
            &[
                "-n",
                n1,
                "route",
                "add",
                "10.200.2.0/24",
                "via",
                "192.168.253.3",
            ],
            &[
                "-n",
                n2,
                "route",
                "add",
                "10.200.1.0/24",
                "via",
                "192.168.253.2",
            ],
            &[
                "netns",
                "exec",
                n1,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            &[
                "netns",
                "exec",
                n2,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        ];
        net.build(routes)?;
        Ok(net)
    }

    /// Creates the namespaces `skiff-bench-<pid>-<suffix>`; the first is the server's, the
    /// second the client's.
    fn named(suffixes: &[&str], server_ip: Ipv4Addr) -> Result<PlainNet> {
        let id = std::process::id();
        let mut net = PlainNet {
            names: Vec::new(),
            server: Path::new("/run/netns").join(format!("skiff-bench-{id}-{}", suffixes[0])),
            client: Path::new("/run/netns").join(format!("skiff-bench-{id}-{}", suffixes[1])),
            server_ip,
        };
        for suffix in suffixes {
            let name = format!("skiff-bench-{id}-{suffix}");
            ip(&["netns", "add", &name])?;
            net.names.push(name);
            let last = net.names.last().cloned().unwrap_or_default();
            ip(&["-n", &last, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn build(&mut self, steps: &[&[&str]]) -> Result<()> {
        steps.iter().try_for_each(|step| ip(step))
    }

    fn up(&mut self, links: &[(&String, &str)]) -> Result<()> {
        for (ns, link) in links {
            ip(&["-n", ns, "link", "set", link, "up"])?;
        }
        Ok(())
    }
}

impl Drop for PlainNet {
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
        wait_answered(&client_netns, SocketAddr::from((cluster_ip, 80)))?;
        drop(server);
        Ok(BenchPods {
            server_netns,
            client_netns,
            server_ip,
            cluster_ip,
        })
    }
}
