//! The whole system as a user meets it: `skiff server` with its embedded node on a fresh data
//! dir (the busybox image imported first), timed to `/readyz` and to the first pod Running;
//! the server's memory with that pod; the binary's size.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use apiserver::client::Client;
use http::{Method, StatusCode};
use serde_json::json;

use super::{BenchArgs, Figure, TablesGuard, ms, rss_mb, start_server_in};

const NODE_NAME: &str = "bench-cluster";

pub async fn bench(_args: &BenchArgs) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let exe = std::env::current_exe()?;
    let size = std::fs::metadata(&exe)?.len() as f64 / 1e6;
    figs.push(
        Figure::new("binary_size_mb", size, "MB")
            .about("the skiff binary as built (release: line tables kept for backtraces)"),
    );
    if let Some(stripped) = stripped_size(&exe) {
        figs.push(
            Figure::new("binary_size_stripped_mb", stripped, "MB")
                .about("the same binary without debug sections (strip --strip-debug)"),
        );
    }

    let tar = super::node::test_image()?;
    let dir = tempfile::tempdir()?;
    super::node::import_image(dir.path(), &tar)?;
    let kubelet_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let tag = std::process::id() % 10_000;
    let bridge = format!("skc{tag}");
    let _tables = TablesGuard::new();
    let _node = NodeLeftovers {
        bridge: bridge.clone(),
    };
    let (server, ready) = start_server_in(
        dir,
        &[
            "--node-name",
            NODE_NAME,
            "--node-ip",
            "127.0.0.1",
            "--kubelet-port",
            &kubelet_port,
            "--bridge-name",
            &bridge,
            "--cluster-cidr",
            "10.252.0.0/16",
            "--eviction-hard",
            "nodefs.available<1%",
        ],
    )
    .await?;
    let started = Instant::now() - ready;
    figs.push(
        Figure::new("server_with_node_ready_ms", ms(ready), "ms")
            .about("`skiff server` with its embedded node, fresh data dir, to /readyz"),
    );
    let c = Client::connect(&server.kubeconfig, server.port).await?;
    let body = serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "first" },
        "spec": { "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
            "command": ["sleep", "3600"] }] },
    }))?;
    // The pod is created as soon as the API takes it (the namespace's default ServiceAccount
    // may not exist yet in the first milliseconds).
    loop {
        let (s, b) = c
            .request(
                Method::POST,
                "/api/v1/namespaces/default/pods",
                Some(body.clone()),
            )
            .await?;
        if s == StatusCode::CREATED {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "creating the first pod: {s} {}",
                String::from_utf8_lossy(&b)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        let (_, b) = c
            .request(Method::GET, "/api/v1/namespaces/default/pods/first", None)
            .await?;
        let pod: serde_json::Value = serde_json::from_slice(&b)?;
        if pod["status"]["phase"] == "Running" {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the first pod did not run: {}", pod["status"]);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    figs.push(
        Figure::new("first_pod_running_ms", ms(started.elapsed()), "ms")
            .about("`skiff server` started on a fresh data dir until its first pod is Running")
            .at_most(30_000.0),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    figs.push(
        Figure::new("server_with_node_rss_mb", rss_mb(server.child.id())?, "MB")
            .about("server RSS with its embedded node running one pod")
            .anchor("k3s server with a workload: 1596 MB (k3s resource profiling)"),
    );
    let (s, _) = c
        .request(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/first",
            None,
        )
        .await?;
    if !s.is_success() {
        bail!("deleting the first pod: {s}");
    }
    let t = Instant::now();
    loop {
        let (s, _) = c
            .request(Method::GET, "/api/v1/namespaces/default/pods/first", None)
            .await?;
        if s == StatusCode::NOT_FOUND {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the first pod was not deleted");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    Ok(figs)
}

/// The size in MB of `exe` without debug sections, or `None` when `strip` is not there.
fn stripped_size(exe: &std::path::Path) -> Option<f64> {
    let out = tempfile::NamedTempFile::new().ok()?;
    let st = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(out.path())
        .arg(exe)
        .status()
        .ok()?;
    st.success()
        .then(|| std::fs::metadata(out.path()).ok())
        .flatten()
        .map(|m| m.len() as f64 / 1e6)
}

/// The host-side parts of the embedded node that outlive the server: its bridge and its
/// network namespace mount.
struct NodeLeftovers {
    bridge: String,
}

impl Drop for NodeLeftovers {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        let dir = std::path::Path::new("/run/skiff").join(NODE_NAME);
        let _ = std::process::Command::new("umount")
            .arg(dir.join("netns"))
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }
}
