//! `skiff agent`: joins a cluster and runs this machine as a node (real containers), or many
//! simulated nodes; and the node flags `skiff server` shares for its embedded agent.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser, Clone)]
pub struct AgentArgs {
    /// The server to join, e.g. https://10.0.0.1:6443.
    #[arg(long, env = "SKIFF_URL")]
    server: String,
    /// The join token: the contents of the server's <data-dir>/server/token.
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: String,
    /// Where the agent keeps its state (the server CA it trusts is written to <data-dir>/agent/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run this many simulated nodes instead of this machine as a node (nothing runs for
    /// real; like KWOK).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=kubelet::simulated::MAX_NODES as i64))]
    simulated_nodes: Option<u32>,
    /// Simulated nodes are named <prefix>-0 .. <prefix>-<N-1>.
    #[arg(long, default_value = "sim", value_parser = node_prefix)]
    node_name_prefix: String,
    /// CPU capacity of each simulated node.
    #[arg(long, default_value = "32", value_parser = quantity)]
    simulated_cpu: String,
    /// Memory capacity of each simulated node.
    #[arg(long, default_value = "256Gi", value_parser = quantity)]
    simulated_memory: String,
    /// Pod capacity of each simulated node.
    #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u32).range(1..))]
    simulated_pods: u32,
    /// Duration of each node's Lease; it is renewed every quarter of it (upstream kubelet's
    /// nodeLeaseDurationSeconds). Keep the controller's node monitor grace period above the
    /// renew interval.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=3600))]
    node_lease_duration_seconds: u32,
    #[command(flatten)]
    node: NodeArgs,
}

fn quantity(s: &str) -> Result<String, String> {
    kubelet::quantity::validate(s).map_err(|e| e.to_string())
}

pub(crate) fn node_prefix(s: &str) -> Result<String, String> {
    let ok = s.len() <= 200
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected lowercase letters, digits, '-' and '.'".into())
    }
}

/// How this machine runs as a node (`skiff agent`, and the agent embedded in `skiff server`).
#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// The node's name (default: this machine's host name).
    #[arg(long, value_parser = node_prefix)]
    pub node_name: Option<String>,
    /// The address the API server and other nodes reach this node at (default: the address
    /// this machine would use to reach the outside; 127.0.0.1 without a default route).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// Port of the kubelet API (logs, exec, attach, port-forward, stats).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Labels to register the node with (`key=value`, repeatable).
    #[arg(long = "node-label")]
    pub node_labels: Vec<String>,
    /// Taints to register the node with (`key=value:Effect`, repeatable).
    #[arg(long = "node-taint")]
    pub node_taints: Vec<String>,
    /// Most pods this node runs.
    #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_pods: u32,
    /// The cluster DNS address written into pods' /etc/resolv.conf.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: Ipv4Addr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node's pod CIDR (default: the one the cluster assigns, from its --cluster-cidr).
    #[arg(long, value_parser = cidr)]
    pub pod_cidr: Option<String>,
    /// The cluster's pod CIDR: holds every node's pod CIDR; the server hands them out of it,
    /// nodes route between them, and pods may send nowhere outside it (but to Services).
    #[arg(long, default_value = "10.42.0.0/16", value_parser = cidr)]
    pub cluster_cidr: String,
    /// Let pods reach addresses outside the cluster, masqueraded behind the node's address.
    /// Off by default: what pods send outside the cluster's pod CIDR (but to Services) is
    /// dropped.
    #[arg(long)]
    pub masquerade_outside: bool,
    /// How packets reach other nodes' pods: `host-gw` (routed via the node's address; nodes
    /// share an L2 segment) or `vxlan` (encapsulated, UDP 8472; nodes only need to reach each
    /// other's addresses).
    #[arg(long, default_value = "host-gw", value_parser = backend)]
    pub pod_network_backend: network::node::Backend,
    /// Run the node inside this network namespace (a path, or a name under /run/netns), as
    /// `skiff cluster` does for each of its nodes.
    #[arg(long)]
    pub node_netns: Option<PathBuf>,
    /// Name of the bridge pods attach to (give each agent on one machine its own).
    #[arg(long, default_value = "skiff0")]
    pub bridge_name: String,
    /// Hard eviction thresholds: below them the node reports memory or disk pressure (and is
    /// tainted against new pods), like the kubelet's flag.
    #[arg(long, default_value = "memory.available<100Mi,nodefs.available<5%", value_parser = eviction_hard)]
    pub eviction_hard: kubelet::node::pressure::Thresholds,
    /// Run containers with this external runc binary instead of the embedded runtime.
    #[arg(long)]
    pub runc: Option<PathBuf>,
}

impl NodeArgs {
    pub fn options(&self, agent_dir: &Path, ca_pem: &str) -> Result<kubelet::node::real::Options> {
        let name = match &self.node_name {
            Some(n) => n.clone(),
            None => host_name()?,
        };
        let ip = self.node_ip.unwrap_or_else(outbound_ip);
        let mut cfg = kubelet::node::NodeConfig::new(name, ip, agent_dir.to_path_buf());
        cfg.kubelet_port = self.kubelet_port;
        cfg.max_pods = self.max_pods;
        cfg.cluster_dns = self.cluster_dns;
        cfg.cluster_domain = self.cluster_domain.clone();
        cfg.pod_cidr = self.pod_cidr.clone();
        cfg.cluster_cidr = self.cluster_cidr.clone();
        cfg.masquerade_outside = self.masquerade_outside;
        cfg.pod_network_backend = self.pod_network_backend;
        cfg.bridge = self.bridge_name.clone();
        cfg.eviction_hard = self.eviction_hard;
        for l in &self.node_labels {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--node-label {l:?}: expected key=value"))?;
            cfg.node_labels.insert(k.to_string(), v.to_string());
        }
        for t in &self.node_taints {
            cfg.taints.push(parse_taint(t)?);
        }
        Ok(kubelet::node::real::Options {
            cfg,
            client_ca_pem: ca_pem.to_string(),
            runc: self.runc.clone(),
        })
    }
}

fn backend(s: &str) -> Result<network::node::Backend, String> {
    match s {
        "host-gw" => Ok(network::node::Backend::HostGw),
        "vxlan" => Ok(network::node::Backend::Vxlan),
        other => Err(format!("{other:?}: expected host-gw or vxlan")),
    }
}

fn cidr(s: &str) -> Result<String, String> {
    s.parse::<network::Ipv4Cidr>()
        .map(|c| c.to_string())
        .map_err(|e| e.to_string())
}

/// Moves this process into the node's network namespace. Call it before any thread starts:
/// threads made later inherit it, the ones before would not.
pub fn enter_node_netns(netns: &Path) -> Result<()> {
    let path = if netns.components().count() == 1 {
        Path::new("/run/netns").join(netns)
    } else {
        netns.to_path_buf()
    };
    let f = std::fs::File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))
}

fn eviction_hard(s: &str) -> Result<kubelet::node::pressure::Thresholds, String> {
    kubelet::node::pressure::Thresholds::parse(s)
}

/// `key=value:Effect` or `key:Effect`.
fn parse_taint(t: &str) -> Result<serde_json::Value> {
    let (kv, effect) = t
        .rsplit_once(':')
        .with_context(|| format!("--node-taint {t:?}: expected key=value:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        bail!("--node-taint {t:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        bail!("--node-taint {t:?}: the key is empty");
    }
    Ok(serde_json::json!({ "key": key, "value": value, "effect": effect }))
}

/// The host name, lowercased, as upstream's kubelet names its node.
fn host_name() -> Result<String> {
    let raw =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    let name = raw.trim().to_ascii_lowercase();
    node_prefix(&name).map_err(|e| {
        anyhow::anyhow!("host name {name:?} is not a valid node name ({e}); pass --node-name")
    })
}

/// The source address this machine would use towards a public address. Connecting a UDP
/// socket sends nothing; it only asks the kernel for the route.
fn outbound_ip() -> Ipv4Addr {
    let probe = || -> std::io::Result<Ipv4Addr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        match s.local_addr()?.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Ok(ip),
            _ => Err(std::io::ErrorKind::AddrNotAvailable.into()),
        }
    };
    probe().unwrap_or(Ipv4Addr::LOCALHOST)
}

pub fn run(args: AgentArgs) -> Result<()> {
    if let Some(ns) = &args.node.node_netns {
        enter_node_netns(ns)?;
    }
    crate::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let joined = kubelet::join(&args.server, &args.token)
            .await
            .with_context(|| format!("joining {}", args.server))?;
        // Simulated nodes keep no state unless asked to; a real node always does.
        let data_dir = match (&args.data_dir, args.simulated_nodes) {
            (Some(d), _) => Some(d.clone()),
            (None, None) => Some(crate::default_data_dir()),
            (None, Some(_)) => None,
        };
        let agent_dir = data_dir.map(|d| d.join("agent"));
        if let Some(agent_dir) = &agent_dir {
            std::fs::create_dir_all(agent_dir)
                .with_context(|| format!("creating {}", agent_dir.display()))?;
            let ca = agent_dir.join("server-ca.crt");
            std::fs::write(&ca, &joined.ca_pem)
                .with_context(|| format!("writing {}", ca.display()))?;
        }
        eprintln!(
            "skiff: joined {} (CA verified against the token)",
            args.server
        );
        let Some(simulated_nodes) = args.simulated_nodes else {
            let shutdown = kubelet::CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                crate::wait_for_signal().await;
                eprintln!("skiff: stopping the agent (containers keep running)");
                stop.cancel();
            });
            let agent_dir = agent_dir.context("a real node needs a data dir")?;
            let opts = args.node.options(&agent_dir, &joined.ca_pem)?;
            return kubelet::node::real::start(joined.client, opts, shutdown).await;
        };
        let opts = kubelet::simulated::SimOptions {
            nodes: simulated_nodes as usize,
            prefix: args.node_name_prefix.clone(),
            cpu: args.simulated_cpu.clone(),
            memory: args.simulated_memory.clone(),
            pods: args.simulated_pods,
            lease_duration_seconds: args.node_lease_duration_seconds as i32,
            // Upstream renews at a quarter of the duration (renewIntervalFraction 0.25).
            lease_renew_interval: std::time::Duration::from_secs(u64::from(
                args.node_lease_duration_seconds,
            )) / 4,
            ..Default::default()
        };
        let shutdown = kubelet::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            crate::wait_for_signal().await;
            eprintln!("skiff: stopping the agent (nodes stay registered)");
            stop.cancel();
        });
        kubelet::simulated::run(joined.client, opts, shutdown).await
    })
}
