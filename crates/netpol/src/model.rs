//! The rule model: which of this node's pods are isolated in which direction, and what each
//! policy selecting one of them allows. A pure function of the cluster's NetworkPolicies, Pods
//! and Namespaces and the node's name, with upstream's semantics:
//!
//! - A pod is isolated for ingress (egress) when a policy in its namespace selects it
//!   (`podSelector`, empty = every pod) and has that policy type. `policyTypes` defaults to
//!   Ingress, plus Egress when the policy has egress rules.
//! - What an isolated pod may receive (send) is the union of the rules of every policy that
//!   isolates it; a rule allows traffic when its peers and its ports both match. Missing or
//!   empty `from`/`to` means every peer, missing or empty `ports` every port and protocol.
//! - Peers: `podSelector` alone selects pods of the policy's namespace, `namespaceSelector`
//!   alone every pod of the selected namespaces (by their labels, which always include
//!   `kubernetes.io/metadata.name`), both together the selected pods of the selected
//!   namespaces; `ipBlock` a CIDR minus its `except` CIDRs.
//! - Ports: a number, a number to `endPort`, no number (the whole protocol), or a name that
//!   is resolved against the destination pod's container ports of that name and protocol: the
//!   selected pod for ingress, the peer pod for egress.
//!
//! Only pods that own an address count: not `hostNetwork` pods (their address is the node's),
//! not pods that have finished (their address may already be someone else's), not pods
//! without an IPv4 `podIP`. The cluster is IPv4-only; IPv6 `ipBlock`s match nothing.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tracing::warn;

use crate::selector;

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A NetworkPolicy by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API's spelling (`TCP`, `UDP`, `SCTP`); `None` (the default) is TCP.
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// Destination ports `first..=last` of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

/// A named port resolved on one pod: traffic to `ip` on `protocol`/`port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

/// Addresses `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

/// Whom a rule allows: the source for ingress, the destination for egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    Any,
    Only {
        /// The rule's selector peers; the pods each picks are in [`Model::peer_sets`].
        selectors: BTreeSet<PeerSelector>,
        /// Its `ipBlock` peers, merged into disjoint ranges; `None` when it has none.
        blocks: Option<Vec<IpRange>>,
    },
}

/// A selector peer in canonical form, so that every rule using the same selector shares one
/// set of addresses (and a pod's change touches each such set once).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerSelector {
    /// Where the pods are looked for.
    pub scope: Scope,
    /// The `podSelector` in selector syntax (`app=web,tier in (a,b)`); empty selects all.
    pub pods: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The policy's own namespace (a peer without `namespaceSelector`).
    Namespace(String),
    /// The namespaces whose labels match this selector (empty: all).
    Namespaces(String),
}

impl fmt::Display for PeerSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Namespace(ns) => write!(f, "pods({}) in {ns}", self.pods),
            Scope::Namespaces(sel) => write!(f, "pods({}) in namespaces({sel})", self.pods),
        }
    }
}

/// Which destination ports a rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    Any,
    Only {
        ranges: Vec<PortRange>,
        /// The rule's named ports resolved on the destination pods; `None` when it names none.
        /// For egress the entries are already limited to the rule's peers.
        named: Option<BTreeSet<NamedPort>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub peers: Peers,
    pub ports: Ports,
}

/// The rules of a policy that isolates at least one local pod, per direction it isolates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRules {
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl PolicyRules {
    pub fn get(&self, dir: Direction) -> Option<&Vec<Rule>> {
        match dir {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }
}

/// What the node must enforce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Local pods isolated for ingress, by address, with the policies that isolate them.
    pub ingress: BTreeMap<Ipv4Addr, BTreeSet<PolicyRef>>,
    /// Local pods isolated for egress.
    pub egress: BTreeMap<Ipv4Addr, BTreeSet<PolicyRef>>,
    pub policies: BTreeMap<PolicyRef, PolicyRules>,
    /// The addresses of the pods each selector peer in `policies` picks.
    pub peer_sets: BTreeMap<PeerSelector, BTreeSet<Ipv4Addr>>,
}

impl Model {
    pub fn isolated(&self, dir: Direction) -> &BTreeMap<Ipv4Addr, BTreeSet<PolicyRef>> {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// A pod that owns addresses.
struct PodView<'a> {
    pod: &'a Pod,
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    ips: Vec<Ipv4Addr>,
    local: bool,
}

impl<'a> PodView<'a> {
    fn new(pod: &'a Pod, node: &str) -> Option<PodView<'a>> {
        let namespace = pod.metadata.namespace.as_deref()?;
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let listed = status.pod_ips.iter().flatten().map(|ip| ip.ip.as_str());
        let mut ips: Vec<Ipv4Addr> = status
            .pod_ip
            .as_deref()
            .into_iter()
            .chain(listed)
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return None;
        }
        Some(PodView {
            pod,
            namespace,
            labels: pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
            ips,
            local: spec.node_name.as_deref() == Some(node),
        })
    }

    /// The port named `name` for `protocol` in any of the pod's containers.
    fn named_ports(&self, name: &str, protocol: Protocol) -> impl Iterator<Item = NamedPort> + '_ {
        let ports = self
            .pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(move |p| {
                p.name.as_deref() == Some(name)
                    && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
            })
            .filter_map(|p| u16::try_from(p.container_port).ok().filter(|&n| n > 0));
        let ports: Vec<u16> = ports.collect();
        self.ips.iter().flat_map(move |&ip| {
            ports
                .clone()
                .into_iter()
                .map(move |port| NamedPort { ip, protocol, port })
        })
    }
}

/// Everything the rules are computed from, indexed for the lookups the rules need.
struct Cluster<'a> {
    pods: Vec<PodView<'a>>,
    /// Indexes into `pods`: by namespace, of this node's pods, by address.
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
    local: Vec<usize>,
    by_ip: HashMap<Ipv4Addr, usize>,
    namespace_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
}

impl<'a> Cluster<'a> {
    fn new(
        pods: Vec<PodView<'a>>,
        namespace_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
    ) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut local = Vec::new();
        let mut by_ip = HashMap::new();
        for (i, pod) in pods.iter().enumerate() {
            by_namespace.entry(pod.namespace).or_default().push(i);
            if pod.local {
                local.push(i);
            }
            for ip in &pod.ips {
                by_ip.entry(*ip).or_insert(i);
            }
        }
        Cluster {
            pods,
            by_namespace,
            local,
            by_ip,
            namespace_labels,
        }
    }

    /// A namespace's labels; a namespace not seen yet still has its name label.
    fn namespace_labels(&self, namespace: &str) -> Cow<'_, BTreeMap<String, String>> {
        match self.namespace_labels.get(namespace) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_owned(),
                namespace.to_owned(),
            )])),
        }
    }

    fn in_namespace<'s>(&'s self, namespace: &str) -> impl Iterator<Item = &'s PodView<'a>> + 's {
        let indexes = self.by_namespace.get(namespace).map(Vec::as_slice);
        indexes.unwrap_or_default().iter().map(|&i| &self.pods[i])
    }

    /// The pods a selector peer picks (none for an `ipBlock` peer).
    fn peer_pods(&self, peer: &NetworkPolicyPeer, policy_namespace: &str) -> Vec<&PodView<'a>> {
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return Vec::new();
        }
        let namespaces: Vec<&str> = match &peer.namespace_selector {
            Some(sel) => self
                .by_namespace
                .keys()
                .copied()
                .filter(|ns| selector::matches(sel, &self.namespace_labels(ns)))
                .collect(),
            None => vec![policy_namespace],
        };
        namespaces
            .into_iter()
            .flat_map(|ns| self.in_namespace(ns))
            .filter(|pod| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|sel| selector::matches(sel, pod.labels))
            })
            .collect()
    }
}

/// The rule model for `node`. Policies are taken in namespace/name order, so the result does
/// not depend on the order of the inputs.
pub fn compute<P, Q, N>(policies: &[P], pods: &[Q], namespaces: &[N], node: &str) -> Model
where
    P: Borrow<NetworkPolicy>,
    Q: Borrow<Pod>,
    N: Borrow<Namespace>,
{
    let cluster = Cluster::new(
        pods.iter()
            .filter_map(|p| PodView::new(p.borrow(), node))
            .collect(),
        namespaces
            .iter()
            .filter_map(|ns| {
                let ns = ns.borrow();
                let name = ns.metadata.name.as_deref()?;
                let mut labels = ns.metadata.labels.clone().unwrap_or_default();
                labels
                    .entry(NAMESPACE_NAME_LABEL.to_owned())
                    .or_insert_with(|| name.to_owned());
                Some((name, labels))
            })
            .collect(),
    );
    let mut sorted: Vec<(PolicyRef, &NetworkPolicy)> = policies
        .iter()
        .filter_map(|p| {
            let p = p.borrow();
            let key = PolicyRef {
                namespace: p.metadata.namespace.clone()?,
                name: p.metadata.name.clone()?,
            };
            Some((key, p))
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut model = Model::default();
    for (key, policy) in sorted {
        let Some(spec) = &policy.spec else { continue };
        let targets: Vec<&PodView> = cluster
            .local
            .iter()
            .map(|&i| &cluster.pods[i])
            .filter(|pod| pod.namespace == key.namespace)
            .filter(|pod| {
                spec.pod_selector
                    .as_ref()
                    .is_none_or(|sel| selector::matches(sel, pod.labels))
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        let (ingress, egress) = policy_types(policy);
        let mut rules = PolicyRules::default();
        if ingress {
            let compiled = spec
                .ingress
                .iter()
                .flatten()
                .map(|r| {
                    let peers = r.from.as_deref().unwrap_or_default();
                    let ports = r.ports.as_deref().unwrap_or_default();
                    compile_rule(
                        &cluster,
                        &mut model.peer_sets,
                        &key,
                        Direction::Ingress,
                        peers,
                        ports,
                        &targets,
                    )
                })
                .collect();
            rules.ingress = Some(compiled);
        }
        if egress {
            let compiled = spec
                .egress
                .iter()
                .flatten()
                .map(|r| {
                    let peers = r.to.as_deref().unwrap_or_default();
                    let ports = r.ports.as_deref().unwrap_or_default();
                    compile_rule(
                        &cluster,
                        &mut model.peer_sets,
                        &key,
                        Direction::Egress,
                        peers,
                        ports,
                        &targets,
                    )
                })
                .collect();
            rules.egress = Some(compiled);
        }
        for (isolates, map) in [(ingress, &mut model.ingress), (egress, &mut model.egress)] {
            if !isolates {
                continue;
            }
            for ip in targets.iter().flat_map(|t| &t.ips) {
                map.entry(*ip).or_default().insert(key.clone());
            }
        }
        model.policies.insert(key, rules);
    }
    model
}

/// Which directions a policy isolates: its `policyTypes`, or when that is empty Ingress plus
/// Egress if it has egress rules (the API server's defaulting, repeated for robustness).
pub fn policy_types(policy: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &policy.spec else {
        return (true, false);
    };
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

fn compile_rule(
    cluster: &Cluster<'_>,
    peer_sets: &mut BTreeMap<PeerSelector, BTreeSet<Ipv4Addr>>,
    policy: &PolicyRef,
    dir: Direction,
    peers: &[NetworkPolicyPeer],
    ports: &[NetworkPolicyPort],
    targets: &[&PodView<'_>],
) -> Rule {
    let compiled_peers = if peers.is_empty() {
        Peers::Any
    } else {
        let mut selectors = BTreeSet::new();
        let mut blocks: Option<Vec<(u32, u32)>> = None;
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                let ranges = blocks.get_or_insert_with(Vec::new);
                ranges.extend(block_ranges(block, policy));
            }
            if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
                continue;
            }
            let key = PeerSelector {
                scope: match &peer.namespace_selector {
                    Some(sel) => Scope::Namespaces(selector::canonical(sel)),
                    None => Scope::Namespace(policy.namespace.clone()),
                },
                pods: peer
                    .pod_selector
                    .as_ref()
                    .map(selector::canonical)
                    .unwrap_or_default(),
            };
            if !peer_sets.contains_key(&key) {
                let ips = cluster
                    .peer_pods(peer, &policy.namespace)
                    .into_iter()
                    .flat_map(|pod| pod.ips.iter().copied())
                    .collect();
                peer_sets.insert(key.clone(), ips);
            }
            selectors.insert(key);
        }
        Peers::Only {
            selectors,
            blocks: blocks.map(|b| merge(b).into_iter().map(to_range).collect()),
        }
    };

    if ports.is_empty() {
        return Rule {
            peers: compiled_peers,
            ports: Ports::Any,
        };
    }
    let mut ranges = Vec::new();
    let mut names = Vec::new();
    for port in ports {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
            warn!(%policy, protocol = ?port.protocol, "skipping a port with an unknown protocol");
            continue;
        };
        match &port.port {
            None => ranges.push(PortRange {
                protocol,
                first: 0,
                last: u16::MAX,
            }),
            Some(IntOrString::Int(first)) => {
                let last = port.end_port.unwrap_or(*first);
                match (u16::try_from(*first), u16::try_from(last)) {
                    (Ok(first), Ok(last)) if first > 0 && first <= last => ranges.push(PortRange {
                        protocol,
                        first,
                        last,
                    }),
                    _ => {
                        warn!(%policy, port = first, end_port = ?port.end_port, "skipping an invalid port range")
                    }
                }
            }
            Some(IntOrString::String(name)) => names.push((protocol, name.as_str())),
        }
    }
    ranges.sort();
    ranges.dedup();
    let named = (!names.is_empty()).then(|| {
        // Ingress: the port of the selected pod receiving the traffic. Egress: of the peer.
        let holders: Vec<&PodView> = match (dir, &compiled_peers) {
            (Direction::Ingress, _) => targets.to_vec(),
            (Direction::Egress, Peers::Any) => cluster.pods.iter().collect(),
            (Direction::Egress, Peers::Only { selectors, blocks }) => {
                let by_selector = selectors
                    .iter()
                    .filter_map(|s| peer_sets.get(s))
                    .flatten()
                    .filter_map(|ip| cluster.by_ip.get(ip).copied());
                let mut holders: BTreeSet<usize> = by_selector.collect();
                let blocks = blocks.as_deref().unwrap_or_default();
                if !blocks.is_empty() {
                    let in_blocks =
                        |ip: &Ipv4Addr| blocks.iter().any(|b| (b.first..=b.last).contains(ip));
                    holders.extend(
                        (0..cluster.pods.len())
                            .filter(|&i| cluster.pods[i].ips.iter().any(in_blocks)),
                    );
                }
                holders.into_iter().map(|i| &cluster.pods[i]).collect()
            }
        };
        let mut resolved = BTreeSet::new();
        for pod in holders {
            for &(protocol, name) in &names {
                resolved.extend(pod.named_ports(name, protocol));
            }
        }
        resolved
    });
    Rule {
        peers: compiled_peers,
        ports: Ports::Only { ranges, named },
    }
}

/// An `ipBlock` as address ranges: its CIDR minus each `except`. IPv6 blocks (the cluster has
/// no IPv6 pods) and unparsable ones (the API server rejects them) give nothing.
fn block_ranges(block: &IPBlock, policy: &PolicyRef) -> Vec<(u32, u32)> {
    if block.cidr.contains(':') {
        return Vec::new();
    }
    let Some(whole) = parse_cidr(&block.cidr) else {
        warn!(%policy, cidr = %block.cidr, "skipping an ipBlock with an invalid CIDR");
        return Vec::new();
    };
    let mut ranges = vec![whole];
    for except in block.except.iter().flatten() {
        if except.contains(':') {
            continue;
        }
        match parse_cidr(except) {
            Some(cut) => ranges = subtract(&ranges, cut),
            None => warn!(%policy, except = %except, "ignoring an invalid ipBlock except"),
        }
    }
    ranges
}

/// `a.b.c.d/len` as the inclusive range of addresses it covers (host bits ignored).
pub fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    let host_mask = u32::MAX.checked_shr(len).unwrap_or(0);
    let first = u32::from(addr) & !host_mask;
    Some((first, first | host_mask))
}

/// `ranges` with `cut` removed.
fn subtract(ranges: &[(u32, u32)], cut: (u32, u32)) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(first, last) in ranges {
        if cut.1 < first || cut.0 > last {
            out.push((first, last));
            continue;
        }
        if cut.0 > first {
            out.push((first, cut.0 - 1));
        }
        if cut.1 < last {
            out.push((cut.1 + 1, last));
        }
    }
    out
}

/// Sorted, disjoint and non-adjacent ranges covering the same addresses (nftables refuses
/// overlapping intervals in a set).
fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if u64::from(first) <= u64::from(prev.1) + 1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

fn to_range((first, last): (u32, u32)) -> IpRange {
    IpRange {
        first: first.into(),
        last: last.into(),
    }
}

#[cfg(test)]
mod tests;
