//! A lab of real network namespaces for the enforcement tests: "node" namespaces whose pod
//! network is built by the `network` crate (bridge `skiff0` holding the gateway, a veth and an
//! address per pod), "pods" registered in the API server with the addresses they really have,
//! busybox httpd servers, and fetches from inside pods. Everything lives under a temporary
//! directory named after the PID; on drop (also when a test fails) the servers are killed by PID
//! and every namespace is unmounted, which takes its links and nftables tables with it.

#![allow(dead_code)] // each test file uses its own subset

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use network::{BridgeConfig, PodNetwork};
use nix::mount::{MntFlags, umount2};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs `program ARGS` in the network namespace `netns` (util-linux `nsenter`).
pub fn exec_in(netns: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} in {}", netns.display()))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} in {} failed ({}): {}",
            netns.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The root namespace's ruleset, to check that nothing reaches it.
pub fn root_ruleset() -> Result<String> {
    let out = Command::new("nft").args(["list", "ruleset"]).output()?;
    if !out.status.success() {
        bail!("nft list ruleset: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `http://ip:port/` fetched from inside `netns` with busybox wget, given up after 2 s. The
/// body, or `None` when the connection is refused, dropped or times out. (Debian's busybox
/// 1.35 `wget -T` segfaults on this machine even on success, so `timeout` bounds it.)
pub async fn fetch(netns: &Path, ip: Ipv4Addr, port: u16) -> Option<String> {
    let netns = netns.to_owned();
    tokio::task::spawn_blocking(move || {
        let url = format!("http://{ip}:{port}/");
        exec_in(
            &netns,
            "timeout",
            &["2", "/bin/busybox", "wget", "-q", "-O", "-", &url],
        )
        .ok()
    })
    .await
    .ok()
    .flatten()
}

/// Whether a TCP connection from `netns` to `ip:port` is accepted within 250 ms.
pub async fn connects(netns: &Path, ip: Ipv4Addr, port: u16) -> bool {
    let addr = SocketAddr::from((ip, port));
    network::connect_in(netns, addr, Duration::from_millis(250))
        .await
        .is_ok()
}

pub struct TestNode {
    pub name: String,
    pub netns: PathBuf,
    pub net: PodNetwork,
    pub subnet: String,
}

impl TestNode {
    /// `nft ARGS` in the node's namespace.
    pub fn nft(&self, args: &[&str]) -> Result<String> {
        exec_in(&self.netns, "nft", args)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.net.gateway()
    }
}

#[derive(Clone, Debug)]
pub struct TestPod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Lab {
    pub fn new(tag: &str) -> Result<Lab> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "skiff-netpol-{}-{}-{tag}-",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir()?;
        Ok(Lab {
            dir,
            children: Vec::new(),
        })
    }

    /// A node namespace with `lo` up and a pod bridge `skiff0` for `subnet` (gateway `.1`).
    pub async fn node(&self, name: &str, subnet: &str) -> Result<TestNode> {
        let netns = self.dir.path().join(format!("{name}.netns"));
        network::netns::create(&netns)?;
        exec_in(&netns, "ip", &["link", "set", "lo", "up"])?;
        let base = self.dir.path().join(name);
        let cfg = BridgeConfig {
            node_netns: Some(netns.clone()),
            ..BridgeConfig::new(
                subnet.parse().context("subnet")?,
                base.join("state"),
                base.join("netns"),
            )
        };
        let net = PodNetwork::new(cfg).await?;
        Ok(TestNode {
            name: name.to_owned(),
            netns,
            net,
            subnet: subnet.to_owned(),
        })
    }

    /// Joins two nodes with a veth pair (`a_ip`/30 and `b_ip`/30), routes each node's pod
    /// subnet via the other, and turns on forwarding in both: the host-gw layout.
    pub fn link_nodes(&self, a: &TestNode, a_ip: &str, b: &TestNode, b_ip: &str) -> Result<()> {
        let tag = std::process::id() % 100_000;
        let (a_if, b_if) = (format!("np{tag}a"), format!("np{tag}b"));
        let b_path = b.netns.display().to_string();
        exec_in(
            &a.netns,
            "ip",
            &[
                "link", "add", &a_if, "type", "veth", "peer", "name", &b_if, "netns", &b_path,
            ],
        )?;
        for (node, ifname, ip, other_ip, other) in
            [(a, &a_if, a_ip, b_ip, b), (b, &b_if, b_ip, a_ip, a)]
        {
            let addr = format!("{ip}/30");
            exec_in(&node.netns, "ip", &["addr", "add", &addr, "dev", ifname])?;
            exec_in(&node.netns, "ip", &["link", "set", ifname, "up"])?;
            exec_in(
                &node.netns,
                "ip",
                &["route", "add", &other.subnet, "via", other_ip],
            )?;
            exec_in(
                &node.netns,
                "/bin/busybox",
                &["sysctl", "-w", "net.ipv4.ip_forward=1"],
            )?;
        }
        Ok(())
    }

    /// A pod `namespace/name` on `node`: its sandbox from the node's pod network, then the Pod
    /// in the API (`spec.nodeName` = the node, one container with `ports`), Running with the
    /// sandbox's address.
    pub async fn pod(
        &self,
        client: &kube::Client,
        node: &TestNode,
        namespace: &str,
        name: &str,
        labels: Value,
        ports: Value,
    ) -> Result<TestPod> {
        let sandbox = node.net.setup(&format!("{namespace}.{name}")).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node.name, "containers": [
                {"name": "main", "image": "busybox", "ports": ports}]}
        }))?;
        pods.create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {namespace}/{name}"))?;
        let ip = sandbox.ip.to_string();
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .with_context(|| format!("setting the status of pod {namespace}/{name}"))?;
        Ok(TestPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip: sandbox.ip,
            netns: sandbox.netns,
        })
    }

    /// busybox httpd on `port` inside `pod`, answering with the pod's name; waits until it
    /// accepts connections.
    pub async fn serve(&mut self, pod: &TestPod, port: u16) -> Result<()> {
        let www = self.dir.path().join(format!("www-{}-{}", pod.name, port));
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), format!("hello from {}\n", pod.name))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", pod.netns.display()))
            .args(["/bin/busybox", "httpd", "-f", "-p", &port.to_string(), "-h"])
            .arg(&www)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting httpd")?;
        self.children.push(child);
        testkit::wait_for("httpd to listen", Duration::from_secs(5), || async {
            connects(&pod.netns, pod.ip, port).await.then_some(())
        })
        .await
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deepest first: pod namespaces, the namespace directories, then the node namespaces.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = info
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|m| m.starts_with(self.dir.path()))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for mount in mounts {
            let _ = umount2(&mount, MntFlags::MNT_DETACH);
        }
    }
}

pub async fn namespace(client: &kube::Client, name: &str, labels: Value) -> Result<()> {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// A running enforcer for `node`.
pub struct Enforcer {
    pub cfg: netpol::Config,
    pub stop: CancellationToken,
    pub task: JoinHandle<netpol::Result<()>>,
}

impl Enforcer {
    /// Starts `netpol::run` for `node` and waits for its first transaction.
    pub async fn start(client: &kube::Client, node: &TestNode) -> Result<Enforcer> {
        let cfg = netpol::Config {
            netns: Some(node.netns.clone()),
            ..netpol::Config::new(&node.name)
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(netpol::run(client.clone(), cfg.clone(), stop.clone()));
        let enforcer = Enforcer { cfg, stop, task };
        enforcer.wait_syncs(1).await?;
        Ok(enforcer)
    }

    pub async fn wait_syncs(&self, n: u64) -> Result<()> {
        let metrics = self.cfg.metrics.clone();
        testkit::wait_for(
            "the enforcer's transactions",
            Duration::from_secs(10),
            || {
                let done = metrics.snapshot().syncs >= n;
                async move { done.then_some(()) }
            },
        )
        .await
    }

    /// Stops the enforcer and checks that it ended cleanly.
    pub async fn stop(self) -> Result<netpol::Config> {
        self.stop.cancel();
        self.task.await??;
        Ok(self.cfg)
    }
}

/// Waits until the node's `ingress` or `egress` map lists `ip` (or no longer does).
pub async fn wait_isolated(node: &TestNode, map: &str, ip: Ipv4Addr, isolated: bool) -> Result<()> {
    let netns = node.netns.clone();
    let map = map.to_owned();
    let what = format!("{ip} {} map {map}", if isolated { "in" } else { "out of" });
    testkit::wait_for(&what, Duration::from_secs(10), || {
        let (netns, map) = (netns.clone(), map.clone());
        async move {
            let listed = tokio::task::spawn_blocking(move || {
                exec_in(
                    &netns,
                    "nft",
                    &["list", "map", "inet", "skiff-netpol", &map],
                )
            })
            .await
            .ok()?
            .ok()?;
            (listed.contains(&format!("{ip} :")) == isolated).then_some(())
        }
    })
    .await
}

/// Waits until the node's table holds the chains of the policies `present` (`namespace/name`)
/// and none of `absent`: the kernel has caught up with the API.
pub async fn wait_policies(node: &TestNode, present: &[&str], absent: &[&str]) -> Result<()> {
    let netns = node.netns.clone();
    let what = format!("policies {present:?} in the table and {absent:?} out of it");
    let (present, absent): (Vec<String>, Vec<String>) = (
        present.iter().map(|p| format!("comment \"{p} ")).collect(),
        absent.iter().map(|p| format!("comment \"{p} ")).collect(),
    );
    testkit::wait_for(&what, Duration::from_secs(10), || {
        let (netns, present, absent) = (netns.clone(), present.clone(), absent.clone());
        async move {
            let listed = tokio::task::spawn_blocking(move || {
                exec_in(&netns, "nft", &["list", "table", "inet", "skiff-netpol"])
            })
            .await
            .ok()?
            .ok()?;
            let ok = present.iter().all(|p| listed.contains(p.as_str()))
                && !absent.iter().any(|p| listed.contains(p.as_str()));
            ok.then_some(())
        }
    })
    .await
}
