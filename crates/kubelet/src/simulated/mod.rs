//! Simulated nodes: one process plays the kubelet for many fake nodes (like KWOK). Nodes
//! register and heartbeat through Leases; pods bound to them get IPs and run instantly, and can
//! be told by annotations to exit, crash-loop or use resources. Nothing runs for real.
//!
//! Scale: thousands of nodes and tens of thousands of pods share one pod watcher, one node
//! watcher and a bounded number of concurrent API writes; lease renewals are spread evenly over
//! the renew interval.

mod node;
mod pods;
pub(crate) mod status;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use tokio_util::sync::CancellationToken;

pub use status::{container_id, normalize_image};

/// Pod annotation: every container exits with this code after `SIM_DURATION`.
pub const SIM_EXIT_CODE: &str = "skiff.dev/simulated-exit-code";
/// Pod annotation: how long containers run before exiting (`5s`, `1m30s`, `250ms`; default 0s).
pub const SIM_DURATION: &str = "skiff.dev/simulated-duration";
/// Pod annotation: the CPU the pod reports using (a quantity: `250m`).
pub const SIM_CPU: &str = "skiff.dev/simulated-cpu";
/// Pod annotation: the memory the pod reports using (a quantity: `64Mi`).
pub const SIM_MEMORY: &str = "skiff.dev/simulated-memory";
/// Node annotation marking nodes this agent simulates.
pub const SIM_NODE_ANNOTATION: &str = "skiff.dev/simulated";

/// The most nodes one agent can simulate: each node gets a /24 of pod IPs from 10.128.0.0/9.
pub const MAX_NODES: usize = 32_768;

/// What to simulate and how hard to drive the API server.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// How many nodes: `<prefix>-0` .. `<prefix>-<nodes-1>`.
    pub nodes: usize,
    pub prefix: String,
    /// Capacity (= allocatable) of every node, as quantities.
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub ephemeral_storage: String,
    /// Upstream's `nodeLeaseDurationSeconds` (40).
    pub lease_duration_seconds: i32,
    /// How often each Lease is renewed (upstream: a quarter of the duration, 10 s).
    pub lease_renew_interval: Duration,
    /// How often node status is reported when nothing changed (upstream's
    /// `nodeStatusReportFrequency`, 5 min).
    pub status_report_interval: Duration,
    /// Concurrent API writes for nodes and leases, and separately for pods.
    pub max_concurrent_writes: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 1,
            prefix: "sim".into(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: 110,
            ephemeral_storage: "100Gi".into(),
            lease_duration_seconds: 40,
            lease_renew_interval: Duration::from_secs(10),
            status_report_interval: Duration::from_secs(300),
            max_concurrent_writes: 32,
        }
    }
}

impl SimOptions {
    fn check(&self) -> Result<()> {
        if self.nodes == 0 || self.nodes > MAX_NODES {
            bail!("--simulated-nodes must be between 1 and {MAX_NODES}");
        }
        // The prefix plus `-<index>` must stay a DNS subdomain-ish node name.
        let ok = !self.prefix.is_empty()
            && self.prefix.len() <= 200
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && self.prefix.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            bail!(
                "invalid node name prefix {:?}: lowercase letters, digits, '-' and '.', starting with a letter or digit",
                self.prefix
            );
        }
        for (flag, q) in [
            ("cpu", &self.cpu),
            ("memory", &self.memory),
            ("ephemeral-storage", &self.ephemeral_storage),
        ] {
            crate::quantity::validate(q).with_context(|| format!("simulated {flag}"))?;
        }
        if self.lease_renew_interval.is_zero() || self.status_report_interval.is_zero() {
            bail!("heartbeat intervals must be positive");
        }
        Ok(())
    }
}

/// One simulated node's fixed identity.
#[derive(Debug)]
pub(crate) struct SimNode {
    pub index: usize,
    pub name: String,
    pub internal_ip: Ipv4Addr,
    /// First address of the node's /24 pod CIDR.
    pub pod_net: Ipv4Addr,
}

impl SimNode {
    fn new(prefix: &str, index: usize) -> SimNode {
        // Addresses are a pure function of (prefix, index), so a restarted agent reuses them.
        // The prefix picks one of 128 blocks of 256 slots, so agents with different prefixes
        // (and up to 256 nodes each) rarely overlap; within one agent slots never repeat.
        let slots = MAX_NODES as u32;
        let block = (fnv1a(prefix) % 128) as u32;
        let i = u32::try_from(index).unwrap_or(0) % slots;
        let slot = (block * 256 + i) % slots;
        // Node addresses come from 198.18.0.0/15 (RFC 2544 benchmarking: never routed to
        // anything real), skipping .0 and .255 of each /24.
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
        let internal_ip = Ipv4Addr::from(base + (slot / 254) * 256 + (slot % 254) + 1);
        // Pod networks: 10.128.0.0/9 cut into one /24 per slot.
        let pod_base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
        let pod_net = Ipv4Addr::from(pod_base + slot * 256);
        SimNode {
            index,
            name: format!("{prefix}-{index}"),
            internal_ip,
            pod_net,
        }
    }

    pub fn pod_cidr(&self) -> String {
        format!("{}/24", self.pod_net)
    }
}

/// FNV-1a: a stable hash (std's hasher is randomly keyed per process).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What every task of the simulation shares.
pub(crate) struct Ctx {
    pub client: Client,
    pub opts: SimOptions,
    pub nodes: Vec<SimNode>,
    pub by_name: HashMap<String, usize>,
    pub shutdown: CancellationToken,
}

/// Runs the simulation until `shutdown` is cancelled. Nodes are registered (created or
/// updated), then kept alive by Lease renewals; pods bound to them are run. Stopping just stops
/// the heartbeats: nodes stay and go NotReady once the node lifecycle controller notices.
pub async fn run(client: Client, opts: SimOptions, shutdown: CancellationToken) -> Result<()> {
    opts.check()?;
    let nodes: Vec<SimNode> = (0..opts.nodes)
        .map(|i| SimNode::new(&opts.prefix, i))
        .collect();
    let by_name = nodes.iter().map(|n| (n.name.clone(), n.index)).collect();
    let ctx = Arc::new(Ctx {
        client,
        opts,
        nodes,
        by_name,
        shutdown: shutdown.clone(),
    });
    tracing::info!(
        nodes = ctx.nodes.len(),
        prefix = %ctx.opts.prefix,
        "starting simulated nodes"
    );
    let heart = node::Heart::new(ctx.clone());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(node::register_all(heart.clone()));
    tasks.spawn(node::heartbeats(heart.clone()));
    tasks.spawn(node::watch_nodes(heart));
    tasks.spawn(pods::run(ctx.clone()));
    shutdown.cancelled().await;
    // Every task watches the same token; give them a moment to finish their writes.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    Ok(())
}

/// The usage a simulated pod reports, for a metrics API: `(cpu millicores, memory bytes)` from
/// its `skiff.dev/simulated-cpu` and `skiff.dev/simulated-memory` annotations; absent or
/// malformed annotations count as 0.
pub fn pod_usage(pod: &Pod) -> (i64, i64) {
    let ann = pod.metadata.annotations.as_ref();
    let get = |key: &str| ann.and_then(|a| a.get(key)).map(String::as_str);
    let cpu = get(SIM_CPU)
        .and_then(|q| crate::quantity::to_millis(q).ok())
        .unwrap_or(0)
        .max(0);
    let memory = get(SIM_MEMORY)
        .and_then(|q| crate::quantity::to_units(q).ok())
        .unwrap_or(0)
        .max(0);
    (cpu, memory)
}

/// Parses a Go-style duration as the simulation annotations use it: `5s`, `1m30s`, `250ms`,
/// `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&e| e > 0)?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += value * scale;
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_unique_and_in_range() {
        let a = SimNode::new("sim", 0);
        assert_eq!(a.name, "sim-0");
        assert_eq!(a.internal_ip, SimNode::new("sim", 0).internal_ip, "stable");
        let (ip, net) = (a.internal_ip.octets(), a.pod_net.octets());
        assert_eq!((ip[0], ip[1] & 0xfe), (198, 18));
        assert!((1..=254).contains(&ip[3]));
        assert_eq!((net[0], net[1] & 0x80, net[3]), (10, 0x80, 0));
        // Different prefixes land in different blocks (for these two, at least).
        assert_ne!(
            SimNode::new("stable", 0).pod_net,
            SimNode::new("doomed", 0).pod_net
        );
        let mut ips = std::collections::HashSet::new();
        let mut nets = std::collections::HashSet::new();
        for i in 0..MAX_NODES {
            let n = SimNode::new("s", i);
            assert!(ips.insert(n.internal_ip), "{i}");
            assert!(nets.insert(n.pod_net), "{i}");
            let o = n.internal_ip.octets();
            assert!(o[3] != 0 && o[3] != 255);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("-1"), None);
    }

    #[test]
    fn usage_from_annotations() {
        let mut pod = Pod::default();
        assert_eq!(pod_usage(&pod), (0, 0));
        pod.metadata.annotations = Some(
            [
                (SIM_CPU.to_string(), "250m".to_string()),
                (SIM_MEMORY.to_string(), "64Mi".to_string()),
            ]
            .into(),
        );
        assert_eq!(pod_usage(&pod), (250, 64 * 1024 * 1024));
    }

    #[test]
    fn options_are_checked() {
        assert!(SimOptions::default().check().is_ok());
        let bad = SimOptions {
            prefix: "Bad_Prefix".into(),
            ..Default::default()
        };
        assert!(bad.check().is_err());
        let bad = SimOptions {
            memory: "lots".into(),
            ..Default::default()
        };
        assert!(bad.check().is_err());
    }
}
