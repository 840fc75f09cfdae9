//! A real node: the kubelet for this machine. It registers the Node with the machine's
//! capacity, heartbeats through a Lease, runs the pods bound to it as real containers (through
//! the `Cri` seam, backed by the `runtime` crate) in per-pod network namespaces (the `Net`
//! seam, backed by the `network` crate), and serves logs, exec, attach, port-forward and stats
//! to the API server.

pub mod cri;
mod events;
mod heartbeat;
pub mod machine;
mod manager;
pub mod pressure;
pub mod probes;
pub mod real;
pub mod routes;
pub mod spec;
pub mod status;
pub mod storage;
pub mod volumes;
pub mod worker;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

pub use heartbeat::KUBELET_VERSION;

/// How this node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_name: String,
    /// The address the API server and other nodes reach this node at.
    pub node_ip: Ipv4Addr,
    /// Port of the kubelet's HTTPS API.
    pub kubelet_port: u16,
    /// `<data-dir>/agent`: images, containers, pods, logs, network state.
    pub agent_dir: PathBuf,
    pub max_pods: u32,
    pub node_labels: BTreeMap<String, String>,
    /// Taints registered with the node (JSON objects: key, value, effect).
    pub taints: Vec<serde_json::Value>,
    pub lease_duration: Duration,
    pub status_interval: Duration,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
    /// The node's pod CIDR, registered in `spec.podCIDR`; `None`: wait for the cluster (the
    /// node IPAM controller) to assign one.
    pub pod_cidr: Option<String>,
    /// The cluster's pod CIDR, holding every node's: routes to the others' go via their
    /// addresses, and pods may send nowhere else.
    pub cluster_cidr: String,
    /// Masquerade what pods send outside the cluster behind the node's address (otherwise it
    /// is dropped).
    pub masquerade_outside: bool,
    /// How packets reach other nodes' pods: routed (host-gw) or in VXLAN.
    pub pod_network_backend: network::node::Backend,
    /// Name of the node-local bridge pods attach to.
    pub bridge: String,
    /// Hard eviction thresholds: below them the node reports pressure.
    pub eviction_hard: pressure::Thresholds,
    /// Filled from the machine at start: allocatable CPU and memory.
    pub node_cpu_millis: i64,
    pub node_memory_bytes: i64,
}

impl NodeConfig {
    pub fn new(node_name: String, node_ip: Ipv4Addr, agent_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            node_name,
            node_ip,
            kubelet_port: 10250,
            agent_dir,
            max_pods: 110,
            node_labels: BTreeMap::new(),
            taints: Vec::new(),
            lease_duration: Duration::from_secs(40),
            status_interval: Duration::from_secs(10),
            cluster_dns: Ipv4Addr::new(10, 43, 0, 10),
            cluster_domain: "cluster.local".into(),
            pod_cidr: None,
            cluster_cidr: "10.42.0.0/16".into(),
            masquerade_outside: false,
            pod_network_backend: network::node::Backend::HostGw,
            bridge: "skiff0".into(),
            eviction_hard: pressure::Thresholds::default(),
            node_cpu_millis: 0,
            node_memory_bytes: 0,
        }
    }
}

/// What `register` learned.
pub struct Registered {
    /// The node's pod CIDR, as `spec.podCIDR` holds it.
    pub pod_cidr: String,
    pub machine: machine::Machine,
}

/// How long a node without `--pod-cidr` waits for the cluster to assign it one.
const POD_CIDR_WAIT: Duration = Duration::from_secs(60);

/// Registers the node and reports its first status (so the scheduler sees capacity at once).
pub async fn register(client: &kube::Client, cfg: &mut NodeConfig) -> Result<Registered> {
    std::fs::create_dir_all(&cfg.agent_dir)
        .with_context(|| format!("creating {}", cfg.agent_dir.display()))?;
    let machine = machine::Machine::probe(&cfg.agent_dir);
    cfg.node_cpu_millis = machine.cpus as i64 * 1000;
    cfg.node_memory_bytes = machine.memory_bytes as i64;
    let hb = heartbeat::Heartbeat {
        client: client.clone(),
        cfg: Arc::new(cfg.clone()),
        machine: machine.clone(),
        pressure: Arc::new(pressure::Pressure::new(
            cfg.agent_dir.clone(),
            cfg.eviction_hard,
        )),
    };
    let pod_cidr = match hb.register().await? {
        Some(c) => c,
        None => hb.wait_for_pod_cidr(POD_CIDR_WAIT).await?,
    };
    Ok(Registered { pod_cidr, machine })
}

/// Runs the node until `shutdown`: heartbeats and pod workers. Containers keep running after
/// it returns.
pub async fn run(
    client: kube::Client,
    cfg: NodeConfig,
    machine: machine::Machine,
    cri: Arc<dyn cri::Cri>,
    net: Arc<dyn cri::Net>,
    shutdown: CancellationToken,
) -> Result<()> {
    let cfg = Arc::new(cfg);
    let pressure = Arc::new(pressure::Pressure::new(
        cfg.agent_dir.clone(),
        cfg.eviction_hard,
    ));
    let hb = Arc::new(heartbeat::Heartbeat {
        client: client.clone(),
        cfg: cfg.clone(),
        machine,
        pressure: pressure.clone(),
    });
    let node = hb.report_status().await?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    hb.renew_lease(&node_uid).await?;
    let shared = Arc::new(worker::Shared {
        client: client.clone(),
        cri,
        net,
        cfg: cfg.clone(),
        events: events::Events::new(client.clone(), cfg.node_name.clone()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(hb.clone().run(node_uid, shutdown.clone()));
    {
        let pressure = pressure.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move { pressure.run(Duration::from_secs(10), stop).await });
    }
    tasks.spawn(manager::run(shared, shutdown.clone()));
    {
        // The default StorageClass and the reaper of volumes whose claims are gone.
        let (client, node, stop) = (client.clone(), cfg.node_name.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = storage::ensure_class(&client).await {
                tracing::warn!("creating the local-path StorageClass: {e}");
            }
            let mut tick = tokio::time::interval(Duration::from_secs(15));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => storage::reap(&client, &node).await,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
