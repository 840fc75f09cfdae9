//! `skiff bench`: starts a real `skiff server` process (this binary) on a fresh data dir and
//! measures it over HTTPS the way clients meet it, then prints a table of figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apiserver::client::Client;
use http::{Method, StatusCode};
use serde_json::json;

mod api;
mod cluster;
mod net;
mod node;
mod scheduler;
mod store;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum Suite {
    /// The embedded store next to etcd, through the same `Store` trait.
    Store,
    /// The API server and store alone.
    Api,
    /// Scheduler and simulated nodes: pods created through the API until bound and Running.
    Scheduler,
    /// A real node: busybox pods as real containers, next to runc.
    Node,
    /// A two-node `skiff cluster`: pod-to-pod and pod-to-Service traffic next to plain
    /// network namespaces, and Service rule programming with 1,000 Services.
    Network,
    /// The whole system: server start to a pod Running on a real node, binary size.
    Cluster,
}

#[derive(clap::Parser, Clone)]
pub struct BenchArgs {
    /// Which benchmarks to run (default: all).
    #[arg(value_enum)]
    suites: Vec<Suite>,
    /// Durable creates in the create benchmark.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Concurrent clients (each with its own connection).
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Objects in the LIST benchmark.
    #[arg(long, default_value_t = 10_000)]
    list_objects: usize,
    /// Simulated nodes in the scheduler benchmark.
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    /// Pods whose create-to-bound and create-to-Running rates are measured.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Pods the server holds at the end of the scheduler benchmark, for the memory figure.
    #[arg(long, default_value_t = 30_000)]
    total_pods: usize,
    /// Pods started on the real node in the node benchmark.
    #[arg(long, default_value_t = 100)]
    node_pods: usize,
    /// Seconds each traffic pattern runs in the network benchmark (default 3; 1 with --quick).
    #[arg(long)]
    net_seconds: Option<f64>,
    /// Smaller runs, for CI smoke use.
    #[arg(long)]
    quick: bool,
    /// How often each suite runs; figures are the median, with min and max (default 3; 1 with
    /// --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Also write the figures as a JSON array to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// An extra flag for the scheduler benchmark's server (repeatable), e.g.
    /// `--server-arg=--disable-controller-manager` to see what the controllers cost.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

/// One measured figure. `name` is stable (the JSON key, what repeated runs are grouped by and
/// floors are checked against); the rest is for the reader of the table.
pub(super) struct Figure {
    name: String,
    about: String,
    value: f64,
    unit: &'static str,
    /// A peer measured on this machine in the same run, and its value for the same figure.
    peer: Option<(&'static str, f64)>,
    /// The target the issues set for skiff.
    target: &'static str,
    /// A published figure to compare with where no peer can run here.
    anchor: &'static str,
    /// The regression guard: the value must stay on the right side of this.
    floor: Option<Floor>,
}

#[derive(Clone, Copy)]
enum Floor {
    /// A rate: fails when the value falls below.
    AtLeast(f64),
    /// A latency or a size: fails when the value rises above.
    AtMost(f64),
}

impl Figure {
    pub(super) fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Figure {
        Figure {
            name: name.into(),
            about: String::new(),
            value,
            unit,
            peer: None,
            target: "",
            anchor: "",
            floor: None,
        }
    }
    pub(super) fn about(mut self, about: impl Into<String>) -> Figure {
        self.about = about.into();
        self
    }
    pub(super) fn target(mut self, target: &'static str) -> Figure {
        self.target = target;
        self
    }
    pub(super) fn anchor(mut self, anchor: &'static str) -> Figure {
        self.anchor = anchor;
        self
    }
    pub(super) fn peer(mut self, peer: &'static str, value: f64) -> Figure {
        self.peer = Some((peer, value));
        self
    }
    pub(super) fn at_least(mut self, floor: f64) -> Figure {
        self.floor = Some(Floor::AtLeast(floor));
        self
    }
    pub(super) fn at_most(mut self, ceiling: f64) -> Figure {
        self.floor = Some(Floor::AtMost(ceiling));
        self
    }
}

/// A figure over repeated runs: the median, with the spread.
struct Summary {
    first: Figure,
    values: Vec<f64>,
    peer_values: Vec<f64>,
}

impl Summary {
    fn value(&self) -> f64 {
        median(&self.values)
    }
    fn peer_value(&self) -> Option<f64> {
        (!self.peer_values.is_empty()).then(|| median(&self.peer_values))
    }
    fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
    /// The floor this figure broke, if any (judged on the median).
    fn broken_floor(&self) -> Option<String> {
        let v = self.value();
        match self.first.floor? {
            Floor::AtLeast(f) if v < f => Some(format!("{} < floor {}", show(v), show(f))),
            Floor::AtMost(f) if v > f => Some(format!("{} > ceiling {}", show(v), show(f))),
            _ => None,
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn show(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Groups the figures of every run by name, in the order they first appeared.
fn summarize(runs: Vec<Vec<Figure>>) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for f in runs.into_iter().flatten() {
        match out.iter_mut().find(|s| s.first.name == f.name) {
            Some(s) => {
                s.values.push(f.value);
                s.peer_values.extend(f.peer.map(|p| p.1));
            }
            None => out.push(Summary {
                values: vec![f.value],
                peer_values: f.peer.map(|p| p.1).into_iter().collect(),
                first: f,
            }),
        }
    }
    out
}

fn print_table(summaries: &[Summary], runs: usize) {
    println!(
        "{:<34} {:>9} {:>19} {:<5} {:<18} {:>7}  target / anchor",
        "figure",
        "value",
        format!("min-max ({runs} runs)"),
        "unit",
        "peer (same run)",
        "ratio"
    );
    for s in summaries {
        let f = &s.first;
        let (peer, ratio) = match (f.peer, s.peer_value()) {
            (Some((who, _)), Some(pv)) => (
                format!("{who} {}", show(pv)),
                if pv != 0.0 {
                    format!("{:.2}", s.value() / pv)
                } else {
                    String::new()
                },
            ),
            _ => (String::new(), String::new()),
        };
        let spread = format!("{}-{}", show(s.min()), show(s.max()));
        let mut goal = match (f.target, f.anchor) {
            ("", a) => a.to_string(),
            (t, "") => t.to_string(),
            (t, a) => format!("{t}; {a}"),
        };
        if let Some(broken) = s.broken_floor() {
            goal = format!("FLOOR BROKEN: {broken}; {goal}");
        }
        println!(
            "{:<34} {:>9} {:>19} {:<5} {:<18} {:>7}  {goal}",
            f.name,
            show(s.value()),
            spread,
            f.unit,
            peer,
            ratio
        );
        if !f.about.is_empty() {
            println!("    {}", f.about);
        }
    }
}

fn to_json(summaries: &[Summary]) -> serde_json::Value {
    let finite = |v: f64| if v.is_finite() { json!(v) } else { json!(null) };
    serde_json::Value::Array(
        summaries
            .iter()
            .map(|s| {
                let f = &s.first;
                json!({
                    "name": f.name,
                    "value": finite(s.value()),
                    "unit": f.unit,
                    "min": finite(s.min()),
                    "max": finite(s.max()),
                    "runs": s.values.len(),
                    "peer": f.peer.map(|p| p.0),
                    "peer_value": s.peer_value().map(finite),
                    "about": f.about,
                    "target": f.target,
                    "anchor": f.anchor,
                })
            })
            .collect(),
    )
}

pub fn run(mut args: BenchArgs) -> Result<()> {
    if args.quick {
        args.creates = args.creates.min(3_000);
        args.list_objects = args.list_objects.min(2_000);
        args.nodes = args.nodes.min(500);
        args.pods = args.pods.min(2_000);
        args.total_pods = args.total_pods.min(3_000);
        args.node_pods = args.node_pods.min(20);
    }
    args.total_pods = args.total_pods.max(args.pods);
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
    if !(1..=20).contains(&runs) {
        bail!("--runs must be between 1 and 20, not {runs}");
    }
    if args.suites.is_empty() {
        args.suites = vec![
            Suite::Store,
            Suite::Api,
            Suite::Scheduler,
            Suite::Node,
            Suite::Network,
            Suite::Cluster,
        ];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut all = Vec::new();
    for run in 0..runs {
        for suite in &args.suites {
            eprintln!(
                "skiff bench: run {}/{runs}, {suite:?} ({:.0} s so far)",
                run + 1,
                started.elapsed().as_secs_f64()
            );
            all.push(match suite {
                Suite::Store => rt.block_on(store::bench(&args))?,
                Suite::Api => rt.block_on(api::bench(&args))?,
                Suite::Scheduler => rt.block_on(scheduler::bench(&args))?,
                Suite::Node => rt.block_on(node::bench(&args))?,
                Suite::Network => rt.block_on(net::bench(&args))?,
                Suite::Cluster => rt.block_on(cluster::bench(&args))?,
            });
        }
    }
    let summaries = summarize(all);
    print_table(&summaries, runs);
    println!("({} s in all)", started.elapsed().as_secs());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&to_json(&summaries))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let broken: Vec<String> = summaries
        .iter()
        .filter_map(|s| Some(format!("{}: {}", s.first.name, s.broken_floor()?)))
        .collect();
    if !broken.is_empty() {
        bail!("figures below their floors: {}", broken.join("; "));
    }
    Ok(())
}

/// A child `skiff server` killed when dropped.
struct ServerProcess {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
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

/// The nftables tables in this network namespace.
fn nft_tables() -> Vec<String> {
    std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("table "))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the skiff tables that a node started by the benchmark left in the host's namespace
/// (a node's rules outlive its agent by design, like kube-proxy's); tables that were there
/// before are kept.
fn remove_new_tables(before: &[String]) {
    for table in nft_tables() {
        if table.contains("skiff") && !before.contains(&table) {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table"])
                .args(table.split_whitespace())
                .status();
        }
    }
}

/// Calls `remove_new_tables` when dropped, so a failed suite cleans up too. Declare it before
/// the agent it cleans up after: it must drop after the agent is gone.
struct TablesGuard(Vec<String>);

impl TablesGuard {
    fn new() -> TablesGuard {
        TablesGuard(nft_tables())
    }
}

impl Drop for TablesGuard {
    fn drop(&mut self) {
        remove_new_tables(&self.0);
    }
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces), counted from field 3.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15: indexes 11 and 12 here. USER_HZ is 100 on Linux.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// Where a child's stderr goes: `$SKIFF_BENCH_LOGS/<name>.log` when that is set, else nowhere.
fn log_file(name: &str) -> Result<std::process::Stdio> {
    match std::env::var_os("SKIFF_BENCH_LOGS") {
        Some(dir) => {
            let path = std::path::Path::new(&dir).join(format!("{name}.log"));
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            Ok(f.into())
        }
        None => Ok(std::process::Stdio::null()),
    }
}

/// Starts `skiff server --disable-agent` with `args` added; returns it once `/readyz` answers,
/// and how long that took.
async fn start_server(args: &[&str]) -> Result<(ServerProcess, Duration)> {
    let mut all = args.to_vec();
    // The API and scheduler suites measure the control plane; nodes come separately.
    all.push("--disable-agent");
    start_server_in(tempfile::tempdir()?, &all).await
}

/// Starts `skiff server` with `args` on the data dir `dir`.
async fn start_server_in(
    dir: tempfile::TempDir,
    args: &[&str],
) -> Result<(ServerProcess, Duration)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    // A profiler can wrap the server: SKIFF_BENCH_SERVER_WRAPPER="heaptrack -o /tmp/h".
    let mut cmd = match std::env::var("SKIFF_BENCH_SERVER_WRAPPER") {
        Ok(w) if !w.trim().is_empty() => {
            let mut words = w.split_whitespace();
            let mut c = std::process::Command::new(words.next().unwrap_or_default());
            c.args(words).arg(&exe);
            c
        }
        _ => std::process::Command::new(&exe),
    };
    let child = cmd
        .args(["server"])
        .args(args)
        .args([
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("SKIFF_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log_file("server")?)
        .spawn()
        .context("starting skiff server")?;
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let mut server = ServerProcess {
        child,
        port,
        dir,
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
