//! A small node in network namespaces for the proxy's tests: a "node" namespace with a pod
//! bridge and an uplink to a "host" namespace, three "pod" namespaces running busybox httpd,
//! and a "client" pod. Everything is named after the test and the PID and removed on drop,
//! also when the test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

pub const NODE: &str = "n1";
pub const GATEWAY: &str = "10.42.7.1";
pub const NODE_IP: &str = "10.88.0.2";
pub const HOST_IP: &str = "10.88.0.1";
/// A LoadBalancer ingress IP, routed from the host namespace to the node.
pub const LB_IP: &str = "10.88.1.100";
pub const PODS: [(&str, &str); 3] = [
    ("p1", "10.42.7.11"),
    ("p2", "10.42.7.12"),
    ("p3", "10.42.7.13"),
];
pub const CLIENT_IP: &str = "10.42.7.20";

pub fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The root namespace's ruleset, to check the tests never touch it.
pub fn root_ruleset() -> Result<String> {
    run(&["nft", "list", "ruleset"])
}

pub struct Lab {
    pub prefix: String,
    namespaces: Vec<String>,
    servers: Vec<Child>,
    _www: tempfile::TempDir,
}

impl Lab {
    /// `tag` tells the tests of one binary apart (they share a PID); at most 4 characters.
    pub fn new(tag: &str) -> Result<Lab> {
        let prefix = format!("sp{}{tag}", std::process::id());
        let www = tempfile::tempdir()?;
        let mut lab = Lab {
            prefix,
            namespaces: Vec::new(),
            servers: Vec::new(),
            _www: www,
        };
        lab.build()?;
        Ok(lab)
    }

    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    fn add_ns(&mut self, short: &str) -> Result<String> {
        let name = self.ns(short);
        run(&["ip", "netns", "add", &name])?;
        self.namespaces.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn add_pod(&mut self, short: &str, ip: &str) -> Result<String> {
        let node = self.ns("node");
        let pod = self.add_ns(short)?;
        let port = format!("v{short}");
        run(&[
            "ip", "-n", &node, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &pod,
        ])?;
        run(&[
            "ip", "-n", &node, "link", "set", &port, "master", "br0", "up",
        ])?;
        // Like kubelet's hairpin-veth: a pod reaching itself through a service gets its own
        // packets back out of the port they came in on.
        run(&[
            "ip",
            "-n",
            &node,
            "link",
            "set",
            &port,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        run(&[
            "ip",
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &pod, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &pod, "route", "add", "default", "via", GATEWAY])?;
        Ok(pod)
    }

    fn build(&mut self) -> Result<()> {
        let node = self.add_ns("node")?;
        run(&["ip", "-n", &node, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "br0",
        ])?;
        run(&["ip", "-n", &node, "link", "set", "br0", "up"])?;
        run(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;

        let host = self.add_ns("host")?;
        run(&[
            "ip", "-n", &node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
            "netns", &host,
        ])?;
        run(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "up0",
        ])?;
        run(&["ip", "-n", &node, "link", "set", "up0", "up"])?;
        run(&[
            "ip",
            "-n",
            &host,
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &host, "link", "set", "eth0", "up"])?;
        run(&[
            "ip",
            "-n",
            &host,
            "route",
            "add",
            &format!("{LB_IP}/32"),
            "via",
            NODE_IP,
        ])?;

        for (name, ip) in PODS {
            let pod = self.add_pod(name, ip)?;
            let dir = self._www.path().join(name);
            std::fs::create_dir_all(dir.join("cgi-bin"))?;
            std::fs::write(dir.join("index.html"), format!("{name}\n"))?;
            // The client address as the pod sees it, to check masquerading.
            let who = dir.join("cgi-bin/who");
            std::fs::write(
                &who,
                format!(
                    "#!/bin/sh\necho 'Content-Type: text/plain'\necho\n\
                 # httpd listens on IPv6: IPv4 clients appear as [::ffff:a.b.c.d].\n\
                 echo \"{name} $REMOTE_ADDR\" | sed 's/\\[::ffff:\\(.*\\)\\]/\\1/'\n"
                ),
            )?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&who, std::fs::Permissions::from_mode(0o755))?;
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &pod,
                    "/bin/busybox",
                    "httpd",
                    "-f",
                    "-p",
                    "80",
                    "-h",
                ])
                .arg(&dir)
                .stdin(Stdio::null())
                .spawn()
                .context("starting httpd")?;
            self.servers.push(child);
        }
        self.add_pod("cl", CLIENT_IP)?;
        // Wait for the servers from the node, where no service rules apply.
        for (name, ip) in PODS {
            wait_until(Duration::from_secs(5), || {
                self.get("node", &format!("http://{ip}/"))
                    .map(|b| b.trim() == name)
                    .unwrap_or(false)
            })
            .with_context(|| format!("httpd in {name} never answered"))?;
        }
        Ok(())
    }

    /// One `wget` from namespace `from` (short name): the body, or the error output.
    pub fn get(&self, from: &str, url: &str) -> Result<String> {
        // busybox 1.35's `wget -T` crashes after a successful connect; `timeout` bounds it.
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns(from),
            "timeout",
            "3",
            "/bin/busybox",
            "wget",
            "-q",
            "-O",
            "-",
            url,
        ])
    }

    /// `n` requests from `from` in one shell loop; each line of the answer (or "ERR").
    pub fn get_many(&self, from: &str, url: &str, n: usize) -> Result<Vec<String>> {
        let script = format!(
            "i=0; while [ $i -lt {n} ]; do timeout 3 /bin/busybox wget -q -O - {url} 2>/dev/null || echo ERR; i=$((i+1)); done"
        );
        let out = run(&["ip", "netns", "exec", &self.ns(from), "sh", "-c", &script])?;
        Ok(out.lines().map(str::to_string).collect())
    }

    pub fn nft(&self) -> proxy::Nft {
        proxy::Nft::in_netns(&self.ns("node"))
    }

    pub fn node_tables(&self) -> Result<String> {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns("node"),
            "nft",
            "list",
            "tables",
        ])
    }

    pub fn namespace_paths(&self) -> Vec<PathBuf> {
        self.namespaces
            .iter()
            .map(|n| PathBuf::from("/run/netns").join(n))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace takes its links (and their peers) and nft tables with it.
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run(&["ip", "netns", "delete", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

pub fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// How many answers named each pod (the first word of each line).
pub fn tally(lines: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        let who = l.split_whitespace().next().unwrap_or("").to_string();
        *m.entry(who).or_insert(0) += 1;
    }
    m
}

pub async fn create_service(client: &kube::Client, v: Value) -> Result<Service> {
    let svc: Service = serde_json::from_value(v)?;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    Ok(api.create(&PostParams::default(), &svc).await?)
}

/// An endpoint of the test pods: `(pod, node)`.
pub fn endpoints(pods: &[(&str, &str)]) -> Value {
    let ip = |p: &str| {
        PODS.iter()
            .find(|(n, _)| *n == p)
            .map(|(_, ip)| *ip)
            .unwrap_or("0.0.0.0")
    };
    pods.iter()
        .map(|(p, node)| json!({"addresses": [ip(p)], "nodeName": node, "conditions": {"ready": true}}))
        .collect()
}

/// Creates or replaces the single slice of Service `svc` (port named "http" → 80).
pub async fn set_slice(client: &kube::Client, svc: &str, eps: Value) -> Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": eps,
    });
    api.patch(
        &format!("{svc}-1"),
        &PatchParams::apply("proxy-test").force(),
        &Patch::Apply(slice),
    )
    .await?;
    Ok(())
}
