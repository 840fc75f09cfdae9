//! The node benchmark: a `skiff server` and a real `skiff agent` (this machine as one node)
//! run busybox pods as real containers. Pod startup latency is measured from create to Running
//! as a watch sees it, next to `runc run` of the same image measured in the same run; agent and
//! shim memory are read from /proc.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apiserver::client::Client;
use serde_json::json;

use super::scheduler::{
    Killed, Timeline, create_pods, current_revision, follow, ready_nodes, wait_until,
};
use super::{BenchArgs, Figure, make_namespace, ms, percentile, rss_mb, start_server};

const NS: &str = "bench-node";
const NODE_NAME: &str = "bench-node";

fn pod(ns: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    }))
    .unwrap_or_default()
}

/// The busybox test image: `scripts/build-test-images` output, built when missing.
pub(super) fn test_image() -> Result<PathBuf> {
    let out = PathBuf::from(
        std::env::var_os("SKIFF_TEST_IMAGES").unwrap_or_else(|| "target/test-images".into()),
    );
    let tar = out.join("busybox.tar");
    if !tar.exists() {
        let status = std::process::Command::new("scripts/build-test-images")
            .arg(&out)
            .status()
            .context("running scripts/build-test-images (run the benchmark from the repository)")?;
        if !status.success() {
            bail!("scripts/build-test-images failed");
        }
    }
    Ok(tar)
}

/// `skiff image import --data-dir dir tar`.
pub(super) fn import_image(dir: &Path, tar: &Path) -> Result<()> {
    let st = std::process::Command::new(std::env::current_exe()?)
        .args(["image", "import", "--data-dir"])
        .arg(dir)
        .arg(tar)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        bail!("importing {} failed", tar.display());
    }
    Ok(())
}

/// Memory of one process in MB: (VmRSS, Pss, RssAnon). Pss divides shared pages among the
/// processes that map them, so it is the per-container cost; VmRSS counts the shared binary
/// and libc pages in full for each shim.
fn mem_mb(pid: u32) -> Option<(f64, f64, f64)> {
    let kb = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((
        kb(&status, "VmRSS:")?,
        kb(&rollup, "Pss:")?,
        kb(&status, "RssAnon:")?,
    ))
}

/// (VmRSS, Pss, RssAnon) of every `skiff shim` process whose command line names `dir`.
fn shim_mem(dir: &Path) -> Vec<(f64, f64, f64)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) == Some("shim")
            && args.iter().any(|a| a.contains(&needle))
            && let Some(m) = mem_mb(pid)
        {
            out.push(m);
        }
    }
    out
}

/// `runc run -d` of the same rootfs: the time from the command to a started container, `n`
/// times; each container is removed before the next.
///
/// With `execs` > 0, also times `runc exec <first container> true` that many times (the peer of
/// `kubectl exec`): returned second, sorted.
fn runc_runs(layer: &Path, n: usize, execs: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("runc is not installed (apt-get install runc)")?;
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let st = std::process::Command::new(runc)
        .arg("spec")
        .current_dir(&bundle)
        .status()?;
    if !st.success() {
        bail!("runc spec failed");
    }
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
    cfg["root"] = json!({ "path": layer, "readonly": true });
    cfg["process"]["args"] = json!(["sleep", "3600"]);
    cfg["process"]["terminal"] = json!(false);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
    let state = dir.path().join("state");
    let mut out = Vec::new();
    let mut exec_times = Vec::new();
    for i in 0..n {
        let id = format!("skiff-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = std::process::Command::new(runc)
            .arg("--root")
            .arg(&state)
            .args(["run", "-d", &id])
            .current_dir(&bundle)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        let took = t.elapsed();
        if i == 0 && st.success() {
            for _ in 0..execs {
                let t = Instant::now();
                let ok = std::process::Command::new(runc)
                    .arg("--root")
                    .arg(&state)
                    .args(["exec", &id, "true"])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .status()?
                    .success();
                if !ok {
                    bail!("runc exec failed");
                }
                exec_times.push(t.elapsed());
            }
        }
        let _ = std::process::Command::new(runc)
            .arg("--root")
            .arg(&state)
            .args(["delete", "-f", &id])
            .status();
        if !st.success() {
            bail!("runc run failed");
        }
        out.push(took);
    }
    out.sort();
    exec_times.sort();
    Ok((out, exec_times))
}

/// `exec` of `true` in `pod` through the API server, as `kubectl exec` does it: a new TLS
/// connection, a WebSocket upgrade (v5.channel.k8s.io), the output channels until the status
/// message and the close. `n` times, sorted.
async fn api_execs(server: &super::ServerProcess, pod: &str, n: usize) -> Result<Vec<Duration>> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let path =
        format!("/api/v1/namespaces/{NS}/pods/{pod}/exec?command=true&stdout=true&stderr=true");
    let mut out = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let tls =
            apiserver::client::tls_connect(&server.kubeconfig, server.port, b"http/1.1").await?;
        let mut req = format!("wss://localhost:{}{path}", server.port).into_client_request()?;
        req.headers_mut()
            .insert("sec-websocket-protocol", "v5.channel.k8s.io".parse()?);
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
            .await
            .context("exec: WebSocket upgrade")?;
        let mut status = None;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .context("exec did not finish")?
            {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&3) => {
                    status = Some(String::from_utf8_lossy(&b[1..]).into_owned());
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("exec: {e}"),
            }
        }
        out.push(t.elapsed());
        match status {
            Some(s) if s.contains("\"Success\"") => {}
            other => bail!("exec of true did not succeed: {other:?}"),
        }
    }
    out.sort();
    Ok(out)
}

pub async fn bench(args: &BenchArgs) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let n = args.node_pods;
    let tar = test_image()?;
    let _tables = super::TablesGuard::new();
    let (server, _) = start_server(&[]).await?;
    let agent_dir = server.dir.path().join("node");
    let exe = std::env::current_exe()?;
    import_image(&agent_dir, &tar)?;
    let token = std::fs::read_to_string(server.dir.path().join("server/token"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tag = std::process::id() % 10_000;
    let agent = Killed(
        std::process::Command::new(&exe)
            .args([
                "agent",
                "--server",
                &format!("https://127.0.0.1:{}", server.port),
            ])
            .args(["--token", token.trim(), "--data-dir"])
            .arg(&agent_dir)
            .args(["--node-name", NODE_NAME, "--node-ip", "127.0.0.1"])
            .args(["--kubelet-port", &port.to_string()])
            .args(["--bridge-name", &format!("skb{tag}")])
            .args(["--pod-cidr", &format!("10.251.{}.0/24", tag % 250)])
            .args(["--eviction-hard", "nodefs.available<1%"])
            .env("SKIFF_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(super::log_file("node-agent")?)
            .spawn()
            .context("starting skiff agent")?,
    );
    let c0 = Client::connect(&server.kubeconfig, server.port).await?;
    let started = Instant::now();
    while ready_nodes(&c0).await? < 1 {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the node did not become Ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    figs.push(
        Figure::new("agent_rss_idle_mb", rss_mb(agent.0.id())?, "MB")
            .about("a real node's agent (kubelet, runtime, proxy, DNS), idle, no pods")
            .target("< 20")
            .anchor("k3s agent ~275 MB")
            .at_most(200.0),
    );

    make_namespace(&c0, NS).await?;
    let rv = current_revision(&c0).await?.to_string();
    let tl = Arc::new(Timeline::new(n));
    let watcher = tokio::spawn(follow(
        Client::connect(&server.kubeconfig, server.port).await?,
        NS,
        rv,
        tl.clone(),
    ));
    // Each pod is created once the one before it runs: every figure is one startup on a node
    // that is otherwise idle (with the earlier pods running), not a queue behind a burst.
    let clients = vec![Client::connect(&server.kubeconfig, server.port).await?];
    for i in 0..n {
        create_pods(&clients, &tl, NS, pod, i..i + 1).await?;
        let tl2 = tl.clone();
        wait_until("the pod Running", Duration::from_secs(60), move || {
            tl2.running_count.load(Ordering::Relaxed) > i
        })
        .await?;
    }
    watcher.abort();
    let lat = tl.latencies(&tl.created, &tl.running, 0..n);
    let shims = shim_mem(&agent_dir);
    let avg = |f: fn(&(f64, f64, f64)) -> f64| {
        shims.iter().map(f).sum::<f64>() / shims.len().max(1) as f64
    };
    let count = shims.len();
    figs.push(
        Figure::new("shim_rss_mb", avg(|m| m.0), "MB").about(format!(
            "shim VmRSS per container, average of {count} (shared pages counted in each)"
        )),
    );
    figs.push(
        Figure::new("shim_pss_mb", avg(|m| m.1), "MB")
            .about(format!(
                "shim PSS per container, average of {count}: the per-pod overhead"
            ))
            .target("< 2")
            .at_most(20.0),
    );
    figs.push(
        Figure::new("shim_anon_mb", avg(|m| m.2), "MB").about("shim anonymous RSS per container"),
    );
    figs.push(
        Figure::new("agent_rss_pods_mb", rss_mb(agent.0.id())?, "MB")
            .about(format!("agent RSS with {n} pods running")),
    );

    // runc on the same image layer.
    let layers = agent_dir.join("agent/layers");
    let layer = std::fs::read_dir(&layers)
        .with_context(|| format!("reading {}", layers.display()))?
        .flatten()
        .map(|e| e.path().join("fs"))
        .find(|p| p.join("bin/busybox").exists())
        .context("the busybox layer was not found")?;
    let execs = if args.quick { 10 } else { 50 };
    let (runs, runc_execs) = runc_runs(&layer, n.min(50), execs)?;
    let our_execs = api_execs(&server, "pod-0", execs).await?;
    figs.push(
        Figure::new("exec_p50_ms", ms(percentile(&our_execs, 0.5)), "ms")
            .about(format!("exec of `true` through the API server as kubectl does it (new TLS connection, WebSocket, status), {execs} times; peer: `runc exec` of the same"))
            .peer("runc", ms(percentile(&runc_execs, 0.5)))
            .at_most(1_000.0),
    );
    figs.push(
        Figure::new("exec_p99_ms", ms(percentile(&our_execs, 0.99)), "ms")
            .peer("runc", ms(percentile(&runc_execs, 0.99))),
    );
    figs.push(
        Figure::new("pod_startup_p50_ms", ms(percentile(&lat, 0.5)), "ms")
            .about(format!("{n} pods one after another, create to Running seen by a watch; peer: `runc run -d` of the same rootfs ({} runs)", runs.len()))
            .peer("runc", ms(percentile(&runs, 0.5)))
            .target("< 100")
            .at_most(1_000.0),
    );
    figs.push(
        Figure::new("pod_startup_p99_ms", ms(percentile(&lat, 0.99)), "ms")
            .peer("runc", ms(percentile(&runs, 0.99)))
            .target("< 250")
            .anchor("upstream SLO: p99 <= 5 s")
            .at_most(2_500.0),
    );

    // Delete everything and wait until the node has removed it.
    let (s, b) = c0
        .request(
            http::Method::DELETE,
            &format!("/api/v1/namespaces/{NS}/pods"),
            None,
        )
        .await?;
    if !s.is_success() {
        bail!("deleting pods: {s} {}", String::from_utf8_lossy(&b));
    }
    let t = Instant::now();
    loop {
        let (_, b) = c0
            .request(
                http::Method::GET,
                &format!("/api/v1/namespaces/{NS}/pods"),
                None,
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&b)?;
        if v["items"].as_array().is_none_or(|a| a.is_empty()) {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("pods were not deleted");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figs.push(
        Figure::new("node_delete_pods_s", t.elapsed().as_secs_f64(), "s")
            .about(format!("delete {n} pods until the API has none left")),
    );
    drop(agent);
    // Containers outlive the agent by design; with every pod deleted, what remains of the node
    // on this host is its bridge and its network namespace directory.
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &format!("skb{tag}")])
        .stderr(std::process::Stdio::null())
        .status();
    let netns = Path::new("/run/skiff").join(NODE_NAME).join("netns");
    let _ = std::process::Command::new("umount")
        .arg(&netns)
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(Path::new("/run/skiff").join(NODE_NAME));
    Ok(figs)
}
