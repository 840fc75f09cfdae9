//! One scheduling cycle: upstream's default Filter plugins (in upstream order), Score plugins
//! with their default weights and normalisation, node selection and the FitError message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rand::Rng;

use crate::cache::Cache;
use crate::config::{Config, Scoring};
use crate::types::{AffinityTerm, LABEL_HOSTNAME, NodeInfo, PodInfo, tolerated};

pub const MAX_NODE_SCORE: i64 = 100;
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

pub const NODE_UNSCHEDULABLE: &str = "NodeUnschedulable";
pub const NODE_NAME: &str = "NodeName";
pub const TAINT_TOLERATION: &str = "TaintToleration";
pub const NODE_AFFINITY: &str = "NodeAffinity";
pub const NODE_PORTS: &str = "NodePorts";
pub const NODE_RESOURCES_FIT: &str = "NodeResourcesFit";
pub const POD_TOPOLOGY_SPREAD: &str = "PodTopologySpread";
pub const INTER_POD_AFFINITY: &str = "InterPodAffinity";

pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const ERR_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const ERR_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// How final a filter rejection is: preemption only considers `Unschedulable` nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Unschedulable,
    UnschedulableAndUnresolvable,
}

/// A rejection of one node by one plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub plugin: &'static str,
    pub reasons: Vec<String>,
}

fn reject(code: Code, plugin: &'static str, reason: impl Into<String>) -> Status {
    Status {
        code,
        plugin,
        reasons: vec![reason.into()],
    }
}

/// Upstream's "0/N nodes are available: <sorted reason histogram>." text.
pub fn nodes_available_message(num_all_nodes: usize, reasons: &HashMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut msg = format!("0/{num_all_nodes} nodes are available:");
    if !parts.is_empty() {
        msg.push_str(&format!(" {}.", parts.join(", ")));
    }
    msg
}

/// Why no node fits: every node's rejection, plus what PostFilter (preemption) said.
#[derive(Clone, Debug)]
pub struct FitError {
    pub num_all_nodes: usize,
    pub statuses: HashMap<String, Status>,
    pub post_filter_msg: String,
}

impl FitError {
    pub fn message(&self) -> String {
        let mut reasons: HashMap<String, usize> = HashMap::new();
        for s in self.statuses.values() {
            for r in &s.reasons {
                *reasons.entry(r.clone()).or_default() += 1;
            }
        }
        let mut msg = nodes_available_message(self.num_all_nodes, &reasons);
        if !self.post_filter_msg.is_empty() {
            msg.push_str(&format!(" {}.", self.post_filter_msg.trim_end_matches('.')));
        }
        msg
    }

    /// The plugins that rejected some node, for deciding which events may help.
    pub fn plugins(&self) -> std::collections::BTreeSet<&'static str> {
        self.statuses.values().map(|s| s.plugin).collect()
    }
}

#[derive(Debug)]
pub enum ScheduleError {
    /// No node fits.
    Fit(FitError),
    /// Something other than the cluster's state (no nodes, an unparsable pod).
    Error(String),
}

/// A topology domain: (topology key, value).
type Pair = (String, String);

/// PodTopologySpread's PreFilter state for DoNotSchedule constraints.
#[derive(Clone, Debug)]
struct SpreadState {
    /// Indices into `pod.spread` of the hard constraints.
    constraints: Vec<usize>,
    counts: Vec<HashMap<String, i64>>,
    /// Minimum count over domains per constraint (i64::MAX with no domains).
    min: Vec<i64>,
}

/// InterPodAffinity's PreFilter state.
#[derive(Clone, Debug, Default)]
struct AffinityState {
    existing_anti: HashMap<Pair, i64>,
    affinity: HashMap<Pair, i64>,
    anti: HashMap<Pair, i64>,
}

/// The per-pod state of one cycle, computed once (PreFilter) and used for every node.
#[derive(Clone)]
pub struct Cycle<'a> {
    pub pod: &'a PodInfo,
    pub cache: &'a Cache,
    spread: Option<SpreadState>,
    affinity: Option<AffinityState>,
}

fn untolerated_hard_taint(pod: &PodInfo, node: &NodeInfo) -> bool {
    node.taints.iter().any(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(&pod.tolerations, t)
    })
}

fn count_matching(pods: &[Arc<PodInfo>], c: &crate::types::SpreadConstraint, ns: &str) -> i64 {
    pods.iter()
        .filter(|p| !p.terminating && p.namespace == ns && c.selector.matches(&p.labels))
        .count() as i64
}

fn spread_node_included(
    pod: &PodInfo,
    c: &crate::types::SpreadConstraint,
    node: &NodeInfo,
) -> bool {
    (!c.honor_node_affinity || pod.matches_node_affinity(node))
        && (!c.honor_taints || !untolerated_hard_taint(pod, node))
}

fn matches_all(
    terms: &[AffinityTerm],
    p: &PodInfo,
    ns_labels: Option<&BTreeMap<String, String>>,
) -> bool {
    !terms.is_empty() && terms.iter().all(|t| t.matches(p, ns_labels))
}

impl<'a> Cycle<'a> {
    /// PreFilter: the cluster-wide counts the spread and affinity filters need.
    pub fn new(pod: &'a PodInfo, cache: &'a Cache) -> Result<Self, String> {
        if let Some(e) = &pod.parse_error {
            return Err(format!("parsing pod {}: {e}", pod.key));
        }
        let mut cycle = Cycle {
            pod,
            cache,
            spread: None,
            affinity: None,
        };
        let hard: Vec<usize> = pod
            .spread
            .iter()
            .enumerate()
            .filter(|(_, c)| c.hard)
            .map(|(i, _)| i)
            .collect();
        if !hard.is_empty() {
            let mut counts = vec![HashMap::new(); hard.len()];
            for node in &cache.nodes {
                if !hard
                    .iter()
                    .all(|i| node.labels.contains_key(&pod.spread[*i].topology_key))
                {
                    continue;
                }
                for (j, i) in hard.iter().enumerate() {
                    let c = &pod.spread[*i];
                    if !spread_node_included(pod, c, node) {
                        continue;
                    }
                    let value = node
                        .labels
                        .get(&c.topology_key)
                        .cloned()
                        .unwrap_or_default();
                    *counts[j].entry(value).or_insert(0) +=
                        count_matching(&node.pods, c, &pod.namespace);
                }
            }
            let min = counts
                .iter()
                .map(|m| m.values().copied().min().unwrap_or(i64::MAX))
                .collect();
            cycle.spread = Some(SpreadState {
                constraints: hard,
                counts,
                min,
            });
        }
        let own_terms = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        if own_terms || cache.pods_with_required_anti_affinity > 0 {
            let mut st = AffinityState::default();
            let own_ns_labels = cache.namespaces.get(&pod.namespace);
            for node in &cache.nodes {
                if node.pods.is_empty() {
                    continue;
                }
                for existing in &node.pods {
                    if node.pods_with_required_anti_affinity > 0 {
                        for t in &existing.required_anti_affinity {
                            if let Some(v) = node.labels.get(&t.topology_key)
                                && t.matches(pod, own_ns_labels)
                            {
                                *st.existing_anti
                                    .entry((t.topology_key.clone(), v.clone()))
                                    .or_insert(0) += 1;
                            }
                        }
                    }
                    if !own_terms {
                        continue;
                    }
                    let ns_labels = cache.namespaces.get(&existing.namespace);
                    if matches_all(&pod.required_affinity, existing, ns_labels) {
                        for t in &pod.required_affinity {
                            if let Some(v) = node.labels.get(&t.topology_key) {
                                *st.affinity
                                    .entry((t.topology_key.clone(), v.clone()))
                                    .or_insert(0) += 1;
                            }
                        }
                    }
                    for t in &pod.required_anti_affinity {
                        if let Some(v) = node.labels.get(&t.topology_key)
                            && t.matches(existing, ns_labels)
                        {
                            *st.anti
                                .entry((t.topology_key.clone(), v.clone()))
                                .or_insert(0) += 1;
                        }
                    }
                }
            }
            cycle.affinity = Some(st);
        }
        Ok(cycle)
    }

    /// Updates the PreFilter state as if `p` left (`sign` -1) or joined (+1) `node`; used by
    /// preemption's what-if evaluation (upstream's AddPod/RemovePod extensions).
    pub fn adjust_for_pod(&mut self, p: &PodInfo, node: &NodeInfo, sign: i64) {
        let pod = self.pod;
        if let Some(st) = &mut self.spread {
            let has_all = st
                .constraints
                .iter()
                .all(|i| node.labels.contains_key(&pod.spread[*i].topology_key));
            if has_all {
                for (j, i) in st.constraints.iter().enumerate() {
                    let c = &pod.spread[*i];
                    if !spread_node_included(pod, c, node)
                        || p.terminating
                        || p.namespace != pod.namespace
                        || !c.selector.matches(&p.labels)
                    {
                        continue;
                    }
                    if let Some(v) = node.labels.get(&c.topology_key) {
                        *st.counts[j].entry(v.clone()).or_insert(0) += sign;
                        st.min[j] = st.counts[j].values().copied().min().unwrap_or(i64::MAX);
                    }
                }
            }
        }
        if let Some(st) = &mut self.affinity {
            let own_ns_labels = self.cache.namespaces.get(&pod.namespace);
            let ns_labels = self.cache.namespaces.get(&p.namespace);
            for t in &p.required_anti_affinity {
                if let Some(v) = node.labels.get(&t.topology_key)
                    && t.matches(pod, own_ns_labels)
                {
                    *st.existing_anti
                        .entry((t.topology_key.clone(), v.clone()))
                        .or_insert(0) += sign;
                }
            }
            if matches_all(&pod.required_affinity, p, ns_labels) {
                for t in &pod.required_affinity {
                    if let Some(v) = node.labels.get(&t.topology_key) {
                        *st.affinity
                            .entry((t.topology_key.clone(), v.clone()))
                            .or_insert(0) += sign;
                    }
                }
            }
            for t in &pod.required_anti_affinity {
                if let Some(v) = node.labels.get(&t.topology_key)
                    && t.matches(p, ns_labels)
                {
                    *st.anti
                        .entry((t.topology_key.clone(), v.clone()))
                        .or_insert(0) += sign;
                }
            }
        }
    }

    /// Runs the Filter plugins in upstream's order; the first rejection wins.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Status> {
        let pod = self.pod;
        // NodeUnschedulable
        if node.unschedulable {
            let t = crate::types::Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            };
            if !tolerated(&pod.tolerations, &t) {
                return Err(reject(
                    Code::UnschedulableAndUnresolvable,
                    NODE_UNSCHEDULABLE,
                    ERR_UNSCHEDULABLE,
                ));
            }
        }
        // NodeName
        if let Some(n) = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
            && n != node.name
        {
            return Err(reject(
                Code::UnschedulableAndUnresolvable,
                NODE_NAME,
                ERR_NODE_NAME,
            ));
        }
        // TaintToleration
        if let Some(t) = node.taints.iter().find(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(&pod.tolerations, t)
        }) {
            return Err(reject(
                Code::UnschedulableAndUnresolvable,
                TAINT_TOLERATION,
                format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value),
            ));
        }
        // NodeAffinity
        if !pod.matches_node_affinity(node) {
            return Err(reject(
                Code::UnschedulableAndUnresolvable,
                NODE_AFFINITY,
                ERR_NODE_AFFINITY,
            ));
        }
        // NodePorts
        if pod
            .host_ports
            .iter()
            .any(|w| node.used_ports.iter().any(|u| u.conflicts(w)))
        {
            return Err(reject(Code::Unschedulable, NODE_PORTS, ERR_NODE_PORTS));
        }
        // NodeResourcesFit, counting pods nominated here that outrank this one.
        let reasons = self.insufficient_resources(node);
        if !reasons.is_empty() {
            return Err(Status {
                code: Code::Unschedulable,
                plugin: NODE_RESOURCES_FIT,
                reasons,
            });
        }
        self.filter_spread(node)?;
        self.filter_affinity(node)
    }

    fn insufficient_resources(&self, node: &NodeInfo) -> Vec<String> {
        let pod = self.pod;
        let mut requested = std::borrow::Cow::Borrowed(&node.requested);
        let mut pod_count = node.pods.len() as i64;
        if let Some(nominated) = self.cache.nominated.get(&node.name) {
            for p in nominated
                .iter()
                .filter(|p| p.key != pod.key && p.priority >= pod.priority)
            {
                requested.to_mut().add(&p.requests);
                pod_count += 1;
            }
        }
        let alloc = &node.allocatable;
        let mut reasons = Vec::new();
        if pod_count + 1 > alloc.pods {
            reasons.push("Too many pods".to_string());
        }
        let req = &pod.requests;
        if req.is_zero() {
            return reasons;
        }
        if req.milli_cpu > 0 && req.milli_cpu > alloc.milli_cpu - requested.milli_cpu {
            reasons.push("Insufficient cpu".into());
        }
        if req.memory > 0 && req.memory > alloc.memory - requested.memory {
            reasons.push("Insufficient memory".into());
        }
        if req.ephemeral_storage > 0
            && req.ephemeral_storage > alloc.ephemeral_storage - requested.ephemeral_storage
        {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (name, q) in &req.scalar {
            if *q > 0 && *q > alloc.get(name) - requested.get(name) {
                reasons.push(format!("Insufficient {name}"));
            }
        }
        reasons
    }

    fn filter_spread(&self, node: &NodeInfo) -> Result<(), Status> {
        let Some(st) = &self.spread else {
            return Ok(());
        };
        for (j, i) in st.constraints.iter().enumerate() {
            let c = &self.pod.spread[*i];
            let Some(value) = node.labels.get(&c.topology_key) else {
                return Err(reject(
                    Code::UnschedulableAndUnresolvable,
                    POD_TOPOLOGY_SPREAD,
                    ERR_SPREAD_LABEL,
                ));
            };
            let domains = st.counts[j].len() as i64;
            let min = if c.min_domains.is_some_and(|m| domains < m) {
                0
            } else {
                st.min[j]
            };
            let self_match = i64::from(c.selector.matches(&self.pod.labels));
            let matching = st.counts[j].get(value).copied().unwrap_or(0);
            if matching.saturating_add(self_match).saturating_sub(min) > c.max_skew {
                return Err(reject(Code::Unschedulable, POD_TOPOLOGY_SPREAD, ERR_SPREAD));
            }
        }
        Ok(())
    }

    fn filter_affinity(&self, node: &NodeInfo) -> Result<(), Status> {
        let Some(st) = &self.affinity else {
            return Ok(());
        };
        let pod = self.pod;
        // satisfyPodAffinity
        let mut pods_exist = true;
        for t in &pod.required_affinity {
            let Some(v) = node.labels.get(&t.topology_key) else {
                return Err(reject(
                    Code::UnschedulableAndUnresolvable,
                    INTER_POD_AFFINITY,
                    ERR_AFFINITY,
                ));
            };
            if st
                .affinity
                .get(&(t.topology_key.clone(), v.clone()))
                .copied()
                .unwrap_or(0)
                <= 0
            {
                pods_exist = false;
            }
        }
        // The first pod of a group with affinity to itself may go anywhere with the labels.
        let first_of_group = st.affinity.values().all(|c| *c <= 0)
            && matches_all(
                &pod.required_affinity,
                pod,
                self.cache.namespaces.get(&pod.namespace),
            );
        if !pods_exist && !first_of_group {
            return Err(reject(
                Code::UnschedulableAndUnresolvable,
                INTER_POD_AFFINITY,
                ERR_AFFINITY,
            ));
        }
        // satisfyPodAntiAffinity
        for t in &pod.required_anti_affinity {
            if let Some(v) = node.labels.get(&t.topology_key)
                && st
                    .anti
                    .get(&(t.topology_key.clone(), v.clone()))
                    .copied()
                    .unwrap_or(0)
                    > 0
            {
                return Err(reject(
                    Code::Unschedulable,
                    INTER_POD_AFFINITY,
                    ERR_ANTI_AFFINITY,
                ));
            }
        }
        // satisfyExistingPodsAntiAffinity
        for ((k, v), n) in &st.existing_anti {
            if *n > 0 && node.labels.get(k) == Some(v) {
                return Err(reject(
                    Code::Unschedulable,
                    INTER_POD_AFFINITY,
                    ERR_EXISTING_ANTI_AFFINITY,
                ));
            }
        }
        Ok(())
    }

    /// Runs the Score plugins over the feasible nodes; returns weighted totals.
    pub fn score(&self, cfg: &Config, feasible: &[&NodeInfo]) -> Vec<i64> {
        let mut total = vec![0i64; feasible.len()];
        let mut add = |scores: Vec<i64>, weight: i64| {
            for (t, s) in total.iter_mut().zip(scores) {
                *t += s * weight;
            }
        };
        add(self.score_taints(feasible), 3);
        add(self.score_node_affinity(feasible), 2);
        add(self.score_fit(cfg, feasible), 1);
        if let Some(s) = self.score_spread(feasible) {
            add(s, 2);
        }
        if let Some(s) = self.score_inter_pod_affinity(feasible) {
            add(s, 2);
        }
        if let Some(s) = self.score_balanced(cfg, feasible) {
            add(s, 1);
        }
        total
    }

    fn score_taints(&self, feasible: &[&NodeInfo]) -> Vec<i64> {
        let tolerations: Vec<_> = self
            .pod
            .tolerations
            .iter()
            .filter(|t| t.effect.is_empty() || t.effect == "PreferNoSchedule")
            .cloned()
            .collect();
        let raw = feasible
            .iter()
            .map(|n| {
                n.taints
                    .iter()
                    .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&tolerations, t))
                    .count() as i64
            })
            .collect();
        default_normalize(raw, true)
    }

    fn score_node_affinity(&self, feasible: &[&NodeInfo]) -> Vec<i64> {
        if self.pod.preferred_node_terms.is_empty() {
            return vec![0; feasible.len()];
        }
        let raw = feasible
            .iter()
            .map(|n| {
                self.pod
                    .preferred_node_terms
                    .iter()
                    .filter(|(_, t)| t.matches(&n.labels, &n.name))
                    .map(|(w, _)| *w)
                    .sum()
            })
            .collect();
        default_normalize(raw, false)
    }

    fn score_fit(&self, cfg: &Config, feasible: &[&NodeInfo]) -> Vec<i64> {
        feasible
            .iter()
            .map(|n| {
                let (mut score, mut weights) = (0i64, 0i64);
                for (name, weight) in &cfg.resources {
                    let (requested, allocatable) = match name.as_str() {
                        "cpu" => (
                            n.non_zero_cpu + self.pod.non_zero_cpu,
                            n.allocatable.milli_cpu,
                        ),
                        "memory" => (n.non_zero_mem + self.pod.non_zero_mem, n.allocatable.memory),
                        other => {
                            let req = self.pod.requests.get(other);
                            if req == 0 && other != "ephemeral-storage" {
                                continue;
                            }
                            (n.requested.get(other) + req, n.allocatable.get(other))
                        }
                    };
                    if allocatable == 0 {
                        continue;
                    }
                    let s = match cfg.scoring {
                        Scoring::LeastAllocated if requested > allocatable => 0,
                        Scoring::LeastAllocated => {
                            (allocatable - requested) * MAX_NODE_SCORE / allocatable
                        }
                        Scoring::MostAllocated => {
                            requested.min(allocatable) * MAX_NODE_SCORE / allocatable
                        }
                    };
                    score += s * weight;
                    weights += weight;
                }
                if weights == 0 { 0 } else { score / weights }
            })
            .collect()
    }

    fn score_balanced(&self, cfg: &Config, feasible: &[&NodeInfo]) -> Option<Vec<i64>> {
        // Best-effort pods are skipped: their placement does not change balance.
        if cfg
            .resources
            .iter()
            .all(|(name, _)| self.pod.requests.get(name) == 0)
        {
            return None;
        }
        Some(
            feasible
                .iter()
                .map(|n| {
                    let mut fractions = Vec::with_capacity(cfg.resources.len());
                    for (name, _) in &cfg.resources {
                        let alloc = n.allocatable.get(name);
                        if alloc == 0 {
                            continue;
                        }
                        let req = n.requested.get(name) + self.pod.requests.get(name);
                        fractions.push((req as f64 / alloc as f64).min(1.0));
                    }
                    let std = match fractions.len() {
                        2 => ((fractions[0] - fractions[1]) / 2.0).abs(),
                        l if l > 2 => {
                            let mean = fractions.iter().sum::<f64>() / l as f64;
                            (fractions
                                .iter()
                                .map(|f| (f - mean) * (f - mean))
                                .sum::<f64>()
                                / l as f64)
                                .sqrt()
                        }
                        _ => 0.0,
                    };
                    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
                })
                .collect(),
        )
    }

    fn score_spread(&self, feasible: &[&NodeInfo]) -> Option<Vec<i64>> {
        let pod = self.pod;
        let soft: Vec<&crate::types::SpreadConstraint> =
            pod.spread.iter().filter(|c| !c.hard).collect();
        if soft.is_empty() || feasible.is_empty() {
            return None;
        }
        let has_all = |n: &NodeInfo| soft.iter().all(|c| n.labels.contains_key(&c.topology_key));
        let mut ignored = vec![false; feasible.len()];
        let mut value_counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); soft.len()];
        for (k, n) in feasible.iter().enumerate() {
            if !has_all(n) {
                ignored[k] = true;
                continue;
            }
            for (i, c) in soft.iter().enumerate() {
                if c.topology_key != LABEL_HOSTNAME {
                    value_counts[i]
                        .entry(n.labels.get(&c.topology_key).cloned().unwrap_or_default())
                        .or_insert(0);
                }
            }
        }
        let kept = ignored.iter().filter(|i| !**i).count();
        let weights: Vec<f64> = soft
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let size = if c.topology_key == LABEL_HOSTNAME {
                    kept
                } else {
                    value_counts[i].len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        for n in &self.cache.nodes {
            if !has_all(n) {
                continue;
            }
            for (i, c) in soft.iter().enumerate() {
                if c.topology_key == LABEL_HOSTNAME || !spread_node_included(pod, c, n) {
                    continue;
                }
                let Some(v) = n.labels.get(&c.topology_key) else {
                    continue;
                };
                if let Some(slot) = value_counts[i].get_mut(v) {
                    *slot += count_matching(&n.pods, c, &pod.namespace);
                }
            }
        }
        let raw: Vec<i64> = feasible
            .iter()
            .enumerate()
            .map(|(k, n)| {
                if ignored[k] {
                    return -1;
                }
                let mut score = 0f64;
                for (i, c) in soft.iter().enumerate() {
                    let Some(v) = n.labels.get(&c.topology_key) else {
                        continue;
                    };
                    let cnt = if c.topology_key == LABEL_HOSTNAME {
                        count_matching(&n.pods, c, &pod.namespace)
                    } else {
                        value_counts[i].get(v).copied().unwrap_or(0)
                    };
                    score += cnt as f64 * weights[i] + (c.max_skew - 1) as f64;
                }
                score.round() as i64
            })
            .collect();
        let valid = raw.iter().copied().filter(|s| *s >= 0);
        let min = valid.clone().min().unwrap_or(0);
        let max = valid.max().unwrap_or(0);
        Some(
            raw.iter()
                .map(|s| {
                    if *s < 0 {
                        0
                    } else if max == 0 {
                        MAX_NODE_SCORE
                    } else {
                        MAX_NODE_SCORE * (max + min - s) / max
                    }
                })
                .collect(),
        )
    }

    fn score_inter_pod_affinity(&self, feasible: &[&NodeInfo]) -> Option<Vec<i64>> {
        let pod = self.pod;
        let has_constraints =
            !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        if !has_constraints && self.cache.pods_with_affinity == 0 {
            return None;
        }
        let own_ns_labels = self.cache.namespaces.get(&pod.namespace);
        let mut topo: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let mut bump = |t: &AffinityTerm, node: &NodeInfo, w: i64| {
            if let Some(v) = node.labels.get(&t.topology_key) {
                *topo
                    .entry(t.topology_key.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_insert(0) += w;
            }
        };
        for node in &self.cache.nodes {
            if node.labels.is_empty() || (!has_constraints && node.pods_with_affinity == 0) {
                continue;
            }
            for existing in &node.pods {
                if !has_constraints && !existing.has_affinity() {
                    continue;
                }
                let ns_labels = self.cache.namespaces.get(&existing.namespace);
                for (w, t) in &pod.preferred_affinity {
                    if t.matches(existing, ns_labels) {
                        bump(t, node, *w);
                    }
                }
                for (w, t) in &pod.preferred_anti_affinity {
                    if t.matches(existing, ns_labels) {
                        bump(t, node, -*w);
                    }
                }
                // hardPodAffinityWeight 1: existing pods' required affinity attracts.
                for t in &existing.required_affinity {
                    if t.matches(pod, own_ns_labels) {
                        bump(t, node, 1);
                    }
                }
                for (w, t) in &existing.preferred_affinity {
                    if t.matches(pod, own_ns_labels) {
                        bump(t, node, *w);
                    }
                }
                for (w, t) in &existing.preferred_anti_affinity {
                    if t.matches(pod, own_ns_labels) {
                        bump(t, node, -*w);
                    }
                }
            }
        }
        if topo.is_empty() {
            return None;
        }
        let raw: Vec<i64> = feasible
            .iter()
            .map(|n| {
                topo.iter()
                    .filter_map(|(k, vals)| n.labels.get(k).and_then(|v| vals.get(v)))
                    .sum()
            })
            .collect();
        let min = raw.iter().copied().min().unwrap_or(0);
        let max = raw.iter().copied().max().unwrap_or(0);
        let diff = max - min;
        Some(
            raw.iter()
                .map(|s| {
                    if diff > 0 {
                        (MAX_NODE_SCORE as f64 * ((s - min) as f64 / diff as f64)) as i64
                    } else {
                        0
                    }
                })
                .collect(),
        )
    }
}

/// Upstream's DefaultNormalizeScore.
fn default_normalize(mut scores: Vec<i64>, reverse: bool) -> Vec<i64> {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return scores;
    }
    for s in &mut scores {
        *s = MAX_NODE_SCORE * *s / max;
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
    scores
}

/// Upstream's numFeasibleNodesToFind.
pub fn num_feasible_nodes_to_find(percentage: u32, num_all: usize) -> usize {
    if num_all < MIN_FEASIBLE_NODES_TO_FIND {
        return num_all;
    }
    let mut pct = percentage as usize;
    if pct == 0 {
        pct = 50usize
            .saturating_sub(num_all / 125)
            .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
    }
    (num_all * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Finds the node for `pod`: filter from the rotating start until enough feasible nodes are
/// found, score them, pick the best (ties at random).
pub fn schedule_pod(
    cache: &mut Cache,
    pod: &PodInfo,
    cfg: &Config,
    rng: &mut impl Rng,
) -> Result<String, ScheduleError> {
    let n = cache.nodes.len();
    if n == 0 {
        return Err(ScheduleError::Error(
            "no nodes available to schedule pods".into(),
        ));
    }
    let (chosen, processed) = {
        let cycle = Cycle::new(pod, cache).map_err(ScheduleError::Error)?;
        // A pod nominated by an earlier preemption tries that node first.
        if let Some(nominated) = pod
            .nominated_node
            .as_deref()
            .and_then(|name| cache.node(name))
            && cycle.filter(nominated).is_ok()
        {
            return Ok(nominated.name.clone());
        }
        let want = num_feasible_nodes_to_find(cfg.percentage_of_nodes_to_score, n);
        let start = cache.next_start % n;
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(n));
        let mut statuses = HashMap::new();
        let mut processed = 0;
        for i in 0..n {
            let node = &cache.nodes[(start + i) % n];
            processed += 1;
            match cycle.filter(node) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(s) => {
                    statuses.insert(node.name.clone(), s);
                }
            }
        }
        if feasible.is_empty() {
            return Err(ScheduleError::Fit(FitError {
                num_all_nodes: n,
                statuses,
                post_filter_msg: String::new(),
            }));
        }
        let chosen = if feasible.len() == 1 {
            feasible[0].name.clone()
        } else {
            let scores = cycle.score(cfg, &feasible);
            select_host(&feasible, &scores, rng)
        };
        (chosen, processed)
    };
    cache.next_start = (cache.next_start % n + processed) % n;
    Ok(chosen)
}

/// The highest score wins; among equals each is equally likely (reservoir sampling).
fn select_host(feasible: &[&NodeInfo], scores: &[i64], rng: &mut impl Rng) -> String {
    let mut best = 0;
    let mut ties = 1u32;
    for i in 1..feasible.len() {
        if scores[i] > scores[best] {
            best = i;
            ties = 1;
        } else if scores[i] == scores[best] {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    feasible[best].name.clone()
}
