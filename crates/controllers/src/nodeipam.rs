//! Node IPAM controller (upstream `pkg/controller/nodeipam`, the range allocator): gives every
//! Node without a pod CIDR a free subnet of the cluster CIDR, setting `spec.podCIDR` and
//! `spec.podCIDRs` once, and frees the subnet when the Node is deleted.
//!
//! The Nodes are the source of truth: at start (and at every new leadership term) the taken
//! subnets are rebuilt from the pod CIDRs the cached Nodes carry, before any is handed out. A
//! subnet is recorded as the Node's before the write that assigns it and given back if that
//! write fails, so no two Nodes are ever given the same one. The write carries the Node's
//! resourceVersion and the API server refuses to change a pod CIDR once set, so a stale cache
//! cannot assign twice either. Subnets are handed out round-robin like upstream's `cidrset`:
//! one just freed is reused last. When none is free, the Node gets a `CIDRNotAvailable` event
//! and is retried with backoff (and at once when another Node's subnet is freed).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::json;

use crate::Context;
use crate::endpoints::kit;

pub use ipnet::Ipv4Net;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid cluster CIDR {input:?}: {reason}")]
    ClusterCidr { input: String, reason: String },
    #[error("node CIDR mask size {size} does not fit the cluster CIDR {cidr}: {reason}")]
    MaskSize {
        size: u8,
        cidr: Ipv4Net,
        reason: &'static str,
    },
    #[error("pod CIDR {cidr} is not within the cluster CIDR {cluster}")]
    OutOfRange { cidr: Ipv4Net, cluster: Ipv4Net },
}

/// Upstream refuses node subnets more than 16 bits longer than the cluster CIDR (65536 nodes).
const MAX_MASK_DIFF: u8 = 16;

/// Parses a cluster CIDR such as `10.42.0.0/16` (IPv4, no host bits).
pub fn parse_cluster_cidr(s: &str) -> Result<Ipv4Net> {
    let bad = |reason: String| Error::ClusterCidr {
        input: s.to_string(),
        reason,
    };
    let net: ipnet::IpNet = s
        .parse()
        .map_err(|_| bad("expected an IPv4 prefix such as 10.42.0.0/16".into()))?;
    let ipnet::IpNet::V4(net) = net else {
        return Err(bad("only IPv4 cluster CIDRs are supported".into()));
    };
    if net.addr() != net.network() {
        return Err(bad(format!(
            "host bits are set (the prefix is {})",
            net.trunc()
        )));
    }
    Ok(net)
}

/// The node subnets of a cluster CIDR: which are taken (and by how many Nodes: two Nodes may
/// have registered with the same one themselves), and where the next search starts.
#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: Ipv4Net,
    mask: u8,
    holders: Vec<u32>,
    next: u32,
}

impl CidrSet {
    pub fn new(cluster: Ipv4Net, mask: u8) -> Result<CidrSet> {
        let bad = |reason| Error::MaskSize {
            size: mask,
            cidr: cluster,
            reason,
        };
        if mask > 30 {
            return Err(bad("a node subnet must be /30 or larger"));
        }
        if mask <= cluster.prefix_len() {
            return Err(bad("it must be longer than the cluster CIDR's prefix"));
        }
        if mask - cluster.prefix_len() > MAX_MASK_DIFF {
            return Err(bad(
                "it may be at most 16 bits longer than the cluster CIDR's prefix",
            ));
        }
        Ok(CidrSet {
            cluster,
            mask,
            holders: vec![0; 1 << (mask - cluster.prefix_len())],
            next: 0,
        })
    }

    /// How many node subnets there are.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// How many are taken.
    pub fn used(&self) -> usize {
        self.holders.iter().filter(|&&h| h > 0).count()
    }

    fn subnet(&self, index: u32) -> Ipv4Net {
        let shift = 32 - u32::from(self.mask);
        let addr = Ipv4Addr::from(u32::from(self.cluster.network()) + (index << shift));
        Ipv4Net::new(addr, self.mask)
            .unwrap_or_else(|_| unreachable!("the mask was checked in new"))
    }

    /// The indices of the node subnets `cidr` covers (one, or several for a larger CIDR).
    fn indices(&self, cidr: Ipv4Net) -> Result<std::ops::RangeInclusive<u32>> {
        if !self.cluster.contains(&cidr) {
            return Err(Error::OutOfRange {
                cidr,
                cluster: self.cluster,
            });
        }
        let shift = 32 - u32::from(self.mask);
        let base = u32::from(self.cluster.network());
        let first = (u32::from(cidr.network()) - base) >> shift;
        let last = (u32::from(cidr.broadcast()) - base) >> shift;
        Ok(first..=last)
    }

    /// The next free subnet, round-robin from the last one handed out.
    pub fn allocate_next(&mut self) -> Option<Ipv4Net> {
        let n = self.holders.len() as u32;
        let index = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| self.holders[i as usize] == 0)?;
        self.holders[index as usize] = 1;
        self.next = (index + 1) % n;
        Some(self.subnet(index))
    }

    /// Records a Node holding `cidr`; false when another Node holds (part of) it already.
    pub fn occupy(&mut self, cidr: Ipv4Net) -> Result<bool> {
        let mut alone = true;
        for i in self.indices(cidr)? {
            let h = &mut self.holders[i as usize];
            alone &= *h == 0;
            *h += 1;
        }
        Ok(alone)
    }

    /// A Node stopped holding `cidr`.
    pub fn release(&mut self, cidr: Ipv4Net) {
        if let Ok(range) = self.indices(cidr) {
            for i in range {
                let h = &mut self.holders[i as usize];
                *h = h.saturating_sub(1);
            }
        }
    }
}

/// The pod CIDRs a Node carries (`podCIDRs`, else `podCIDR`), unparsable ones left out.
fn node_cidrs(node: &Node) -> Vec<Ipv4Net> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let list = match spec.pod_cidrs.as_deref() {
        Some(list) if !list.is_empty() => list.to_vec(),
        _ => spec.pod_cidr.iter().cloned().collect(),
    };
    list.iter()
        .filter(|c| !c.is_empty())
        .filter_map(|c| c.parse::<Ipv4Net>().ok().map(|n| n.trunc()))
        .collect()
}

fn has_pod_cidr(node: &Node) -> bool {
    node.spec.as_ref().is_some_and(|s| {
        s.pod_cidr.as_deref().is_some_and(|c| !c.is_empty())
            || s.pod_cidrs.as_deref().is_some_and(|l| !l.is_empty())
    })
}

/// What the controller believes each Node holds, and the set they hold together.
struct State {
    set: CidrSet,
    by_node: HashMap<String, Vec<Ipv4Net>>,
}

impl State {
    /// Makes `name` hold exactly `cidrs`.
    fn record(&mut self, name: &str, cidrs: Vec<Ipv4Net>) {
        if self.by_node.get(name) == Some(&cidrs) {
            return;
        }
        self.forget(name);
        for &cidr in &cidrs {
            match self.set.occupy(cidr) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(node = name, %cidr, "pod CIDR is also held by another node")
                }
                // Assigned from another range (a changed --cluster-cidr, or by hand): not ours.
                Err(e) => tracing::debug!(node = name, "{e}"),
            }
        }
        self.by_node.insert(name.to_string(), cidrs);
    }

    /// `name` holds nothing any more; true when it held something.
    fn forget(&mut self, name: &str) -> bool {
        let Some(old) = self.by_node.remove(name) else {
            return false;
        };
        for cidr in &old {
            self.set.release(*cidr);
        }
        !old.is_empty()
    }
}

struct Controller {
    ctx: Arc<Context>,
    nodes: Store<Node>,
    state: Mutex<State>,
    queue: kit::Queue,
}

pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let set = CidrSet::new(ctx.opts.cluster_cidr, ctx.opts.node_cidr_mask_size)?;
    let shutdown = ctx.shutdown.clone();
    let (queue, rx) = kit::queue();
    let nodes = {
        let queue = queue.clone();
        kit::informer::<Node, _>(&ctx, watcher::Config::default(), move |_, ev| {
            if let Some(node) = kit::object(ev) {
                queue.add(node.metadata.name.clone().unwrap_or_default());
            }
        })
    };
    if !kit::wait_synced(&[&nodes], &shutdown).await {
        return Ok(());
    }
    let mut state = State {
        set,
        by_node: HashMap::new(),
    };
    for node in nodes.state() {
        if let Some(name) = node.metadata.name.as_deref() {
            state.record(name, node_cidrs(&node));
        }
    }
    tracing::debug!(
        used = state.set.used(),
        of = state.set.len(),
        "node pod CIDRs restored"
    );
    let ctl = Arc::new(Controller {
        ctx,
        nodes,
        state: Mutex::new(state),
        queue: queue.clone(),
    });
    kit::work("nodeipam", queue, rx, &shutdown, |name| {
        let ctl = ctl.clone();
        async move { ctl.sync(&name).await }
    })
    .await;
    Ok(())
}

impl Controller {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sync(&self, name: &str) -> anyhow::Result<()> {
        let cached = self.nodes.get(&ObjectRef::new(name));
        let Some(cached) = cached else {
            if self.state().forget(name) {
                self.retry_waiting();
            }
            return Ok(());
        };
        if has_pod_cidr(&cached) {
            self.state().record(name, node_cidrs(&cached));
            return Ok(());
        }
        // The cache may not show our own last write yet: decide on a fresh read.
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        let Some(node) = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading node {name}"))?
        else {
            return Ok(());
        };
        if has_pod_cidr(&node) {
            self.state().record(name, node_cidrs(&node));
            return Ok(());
        }
        if node.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let cidr = {
            let mut state = self.state();
            // Whatever was recorded for this name belonged to an earlier Node of that name,
            // or to a write that did not land.
            state.forget(name);
            let next = state.set.allocate_next();
            if let Some(cidr) = next {
                state.by_node.insert(name.to_string(), vec![cidr]);
            }
            next
        };
        let Some(cidr) = cidr else {
            self.cidr_not_available(&node).await;
            return Err(anyhow!(
                "no free pod CIDR of size /{} left in {}",
                self.ctx.opts.node_cidr_mask_size,
                self.ctx.opts.cluster_cidr
            ));
        };
        let patch = json!({
            "metadata": { "resourceVersion": node.metadata.resource_version },
            "spec": { "podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()] },
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = name, %cidr, "assigned pod CIDR");
                Ok(())
            }
            Err(e) => {
                self.state().forget(name);
                Err(e).with_context(|| format!("assigning pod CIDR {cidr} to node {name}"))
            }
        }
    }

    /// A subnet was freed: Nodes still waiting for one try again now.
    fn retry_waiting(&self) {
        for node in self.nodes.state() {
            if !has_pod_cidr(&node)
                && let Some(name) = node.metadata.name.clone()
            {
                self.queue.add(name);
            }
        }
    }

    /// Upstream `RecordNodeStatusChange(…, "CIDRNotAvailable")`.
    async fn cidr_not_available(&self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(name.clone()),
            uid: node.metadata.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "CIDRNotAvailable".into(),
            note: Some(format!("Node {name} status is now: CIDRNotAvailable")),
            action: "CIDRNotAvailable".into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, &reference).await {
            tracing::debug!("recording CIDRNotAvailable for node {name}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_cidr_flag() {
        assert_eq!(
            parse_cluster_cidr("10.42.0.0/16").unwrap(),
            net("10.42.0.0/16")
        );
        for bad in ["10.42.0.1/16", "fd00::/48", "10.42.0.0", "x"] {
            assert!(parse_cluster_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mask_sizes() {
        assert_eq!(CidrSet::new(net("10.42.0.0/16"), 24).unwrap().len(), 256);
        assert_eq!(CidrSet::new(net("10.0.0.0/8"), 24).unwrap().len(), 65536);
        for (cidr, mask) in [
            ("10.42.0.0/16", 16),
            ("10.42.0.0/16", 8),
            ("10.0.0.0/8", 25),
            ("10.42.0.0/16", 31),
        ] {
            assert!(CidrSet::new(net(cidr), mask).is_err(), "{cidr} /{mask}");
        }
    }

    #[test]
    fn subnets_are_handed_out_round_robin_and_once() {
        let mut set = CidrSet::new(net("10.42.0.0/22"), 24).unwrap();
        let got: Vec<String> = (0..4)
            .map(|_| set.allocate_next().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "10.42.0.0/24",
                "10.42.1.0/24",
                "10.42.2.0/24",
                "10.42.3.0/24"
            ]
        );
        assert_eq!(set.allocate_next(), None);
        set.release(net("10.42.1.0/24"));
        set.release(net("10.42.2.0/24"));
        // Round-robin: the search goes on after the last one handed out.
        assert_eq!(set.allocate_next(), Some(net("10.42.1.0/24")));
        assert_eq!(set.allocate_next(), Some(net("10.42.2.0/24")));
        assert_eq!(set.used(), 4);
    }

    #[test]
    fn occupied_subnets_are_skipped_and_counted() {
        let mut set = CidrSet::new(net("10.42.0.0/16"), 24).unwrap();
        assert!(set.occupy(net("10.42.0.0/24")).unwrap());
        assert!(!set.occupy(net("10.42.0.0/24")).unwrap(), "a second holder");
        assert!(
            set.occupy(net("10.42.4.0/23")).unwrap(),
            "a larger CIDR covers two"
        );
        assert!(matches!(
            set.occupy(net("10.43.0.0/24")),
            Err(Error::OutOfRange { .. })
        ));
        assert_eq!(set.used(), 3);
        assert_eq!(set.allocate_next(), Some(net("10.42.1.0/24")));
        set.release(net("10.42.0.0/24"));
        assert_eq!(set.used(), 4, "the other holder keeps it");
        set.release(net("10.42.0.0/24"));
        assert_eq!(set.used(), 3);
    }

    #[test]
    fn state_follows_nodes() {
        let mut state = State {
            set: CidrSet::new(net("10.42.0.0/16"), 24).unwrap(),
            by_node: HashMap::new(),
        };
        state.record("a", vec![net("10.42.7.0/24")]);
        state.record("a", vec![net("10.42.7.0/24")]);
        assert_eq!(state.set.used(), 1, "recording twice holds once");
        state.record("b", vec![net("10.42.8.0/24")]);
        assert!(state.forget("a"));
        assert!(!state.forget("a"));
        assert_eq!(state.set.used(), 1);
    }

    #[test]
    fn node_cidrs_read_both_fields() {
        let node = |spec: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": spec})).unwrap()
        };
        assert_eq!(
            node_cidrs(&node(json!({"podCIDR": "10.42.1.0/24"}))),
            [net("10.42.1.0/24")]
        );
        assert_eq!(
            node_cidrs(&node(
                json!({"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.2.0/24"]})
            )),
            [net("10.42.2.0/24")]
        );
        assert!(node_cidrs(&node(json!({}))).is_empty());
        assert!(!has_pod_cidr(&node(json!({"podCIDR": ""}))));
    }
}
