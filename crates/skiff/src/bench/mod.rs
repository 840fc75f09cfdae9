//! `skiff bench`: starts a real `skiff server` process (this binary) on a fresh data dir and
//! measures it over HTTPS the way clients meet it, then prints a table of figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apiserver::client::Client;
use http::{Method, StatusCode};
use serde_json::json;

mod api;
mod net;
mod node;
mod scheduler;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum Suite {
    /// The API server and store alone.
    Api,
    /// Scheduler and simulated nodes: pods created through the API until bound and Running.
    Scheduler,
    /// A real node: busybox pods as real containers, next to runc.
    Node,
    /// A two-node `skiff cluster`: pod-to-pod and pod-to-Service traffic next to plain
    /// network namespaces, and Service rule programming with 1,000 Services.
    Network,
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
    /// An extra flag for the scheduler benchmark's server (repeatable), e.g.
    /// `--server-arg=--disable-controller-manager` to see what the controllers cost.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    target: &'static str,
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
    if args.suites.is_empty() {
        args.suites = vec![Suite::Api, Suite::Scheduler, Suite::Node, Suite::Network];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut figures = Vec::new();
    for suite in &args.suites {
        figures.extend(match suite {
            Suite::Api => rt.block_on(api::bench(&args))?,
            Suite::Scheduler => rt.block_on(scheduler::bench(&args))?,
            Suite::Node => rt.block_on(node::bench(&args))?,
            Suite::Network => rt.block_on(net::bench(&args))?,
        });
    }
    println!("{:<44} {:>12}  {:<6} target", "figure", "value", "unit");
    for f in &figures {
        let v = if f.value >= 100.0 {
            format!("{:.0}", f.value)
        } else {
            format!("{:.2}", f.value)
        };
        println!("{:<44} {:>12}  {:<6} {}", f.name, v, f.unit, f.target);
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

/// Starts `skiff server` with `args` added; returns it once `/readyz` answers, and how long that took.
async fn start_server(args: &[&str]) -> Result<(ServerProcess, Duration)> {
    let dir = tempfile::tempdir()?;
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
        // The API and scheduler suites measure the control plane; nodes come separately.
        .arg("--disable-agent")
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
