//! Scheduling views of Pods and Nodes: requests, tolerations, affinity terms and spread
//! constraints, parsed once per object version so that a cycle never re-parses API data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodAffinityTerm, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

use crate::selector::{LabelSelector, NodeTerm};

/// Requests given to containers that leave cpu/memory unset, for scoring only (upstream's
/// `DefaultMilliCPURequest` and `DefaultMemoryRequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Parses a quantity the way the API server validated it; an unparsable value counts as 0,
/// which is what a pod that passed validation never has.
fn parse_quantity(q: &ApiQuantity) -> Option<api::validation::quantity::Quantity> {
    api::validation::quantity::Quantity::parse(&q.0).ok()
}

/// An amount of every resource the scheduler accounts for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Only meaningful for allocatable (`pods`).
    pub pods: i64,
    /// Extended resources, hugepages and any other named resource.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    pub fn from_list(list: Option<&BTreeMap<String, ApiQuantity>>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            r.set(name, q);
        }
        r
    }

    fn set(&mut self, name: &str, q: &ApiQuantity) {
        let Some(q) = parse_quantity(q) else { return };
        match name {
            "cpu" => self.milli_cpu = clamp(q.milli_value()),
            "memory" => self.memory = clamp(q.value()),
            "ephemeral-storage" => self.ephemeral_storage = clamp(q.value()),
            "pods" => self.pods = clamp(q.value()),
            other => {
                self.scalar.insert(other.to_string(), clamp(q.value()));
            }
        }
    }

    /// The amount of one named resource.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.pods,
            other => self.scalar.get(other).copied().unwrap_or(0),
        }
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
        self.pods = self.pods.saturating_add(o.pods);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(o.ephemeral_storage);
        self.pods = self.pods.saturating_sub(o.pods);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_sub(*v);
        }
    }

    fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// A container's requests; a resource with only a limit is requested at its limit, as API
/// defaulting does. With `non_missing`, absent cpu/memory get the scoring defaults.
fn container_requests(res: Option<&ResourceRequirements>, non_missing: bool) -> Resources {
    let mut r = Resources::from_list(res.and_then(|r| r.requests.as_ref()));
    let requests = res.and_then(|r| r.requests.as_ref());
    for (name, q) in res.and_then(|r| r.limits.as_ref()).into_iter().flatten() {
        if requests.is_none_or(|req| !req.contains_key(name)) {
            r.set(name, q);
        }
    }
    if non_missing {
        let has = |k: &str| {
            requests.is_some_and(|req| req.contains_key(k))
                || res
                    .and_then(|r| r.limits.as_ref())
                    .is_some_and(|l| l.contains_key(k))
        };
        if !has("cpu") {
            r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !has("memory") {
            r.memory = DEFAULT_MEMORY_REQUEST;
        }
    }
    r
}

/// Upstream's `PodRequests`: regular containers and sidecars run together, each classic init
/// container runs alone next to the sidecars started before it; the pod needs the larger of
/// the two, plus its overhead.
pub fn pod_requests(pod: &Pod, non_missing: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c.resources.as_ref(), non_missing));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let mut creq = container_requests(c.resources.as_ref(), non_missing);
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&creq);
            sidecars.add(&creq);
            creq = sidecars.clone();
        } else {
            creq.add(&sidecars);
        }
        init_max.max_with(&creq);
    }
    reqs.max_with(&init_max);
    reqs.add(&Resources::from_list(spec.overhead.as_ref()));
    reqs
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    pub key: String,
    pub exists: bool,
    pub value: String,
    /// Empty tolerates every effect.
    pub effect: String,
}

impl Toleration {
    /// Upstream's `Toleration.ToleratesTaint`.
    pub fn tolerates(&self, t: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != t.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != t.key {
            return false;
        }
        if self.exists {
            true
        } else {
            self.value == t.value
        }
    }
}

pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

/// A host port a container claims.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Same port and protocol conflict unless both bind distinct specific addresses.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == "0.0.0.0" || o.ip == "0.0.0.0" || self.ip == o.ip)
    }
}

/// A pod (anti-)affinity term with its namespaces resolved as far as possible without
/// namespace labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityTerm {
    pub namespaces: BTreeSet<String>,
    pub namespace_selector: Option<LabelSelector>,
    pub selector: LabelSelector,
    pub topology_key: String,
}

impl AffinityTerm {
    fn parse(t: &PodAffinityTerm, own_ns: &str) -> Result<Self, String> {
        let mut namespaces: BTreeSet<String> = t.namespaces.iter().flatten().cloned().collect();
        let namespace_selector = match &t.namespace_selector {
            Some(s) => Some(LabelSelector::parse(Some(s))?),
            None => None,
        };
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.insert(own_ns.to_string());
        }
        Ok(AffinityTerm {
            namespaces,
            namespace_selector,
            selector: LabelSelector::parse(t.label_selector.as_ref())?,
            topology_key: t.topology_key.clone(),
        })
    }

    /// Whether `pod` (in a namespace with `ns_labels`) is selected by this term.
    pub fn matches(&self, pod: &PodInfo, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        let ns_ok = self.namespaces.contains(&pod.namespace)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| ns_labels.is_some_and(|l| s.matches(l)));
        ns_ok && self.selector.matches(&pod.labels)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpreadConstraint {
    pub max_skew: i64,
    pub topology_key: String,
    pub hard: bool,
    pub selector: LabelSelector,
    pub min_domains: Option<i64>,
    /// nodeAffinityPolicy Honor (the default): only nodes matching the pod's node
    /// selector/affinity count.
    pub honor_node_affinity: bool,
    /// nodeTaintsPolicy Honor (default Ignore): only nodes whose taints the pod tolerates count.
    pub honor_taints: bool,
}

#[derive(Clone, Debug)]
pub struct PriorityClassInfo {
    pub value: i32,
    pub global_default: bool,
    pub preempt_never: bool,
}

/// Everything the scheduler needs to know about one pod version.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    pub scheduler_name: String,
    pub node_name: Option<String>,
    pub nominated_node: Option<String>,
    pub terminating: bool,
    pub terminal: bool,
    pub gated: bool,
    pub priority: i32,
    pub preempt_never: bool,
    pub created: jiff::Timestamp,
    pub start_time: Option<jiff::Timestamp>,
    pub requests: Resources,
    pub non_zero_cpu: i64,
    pub non_zero_mem: i64,
    pub node_selector: BTreeMap<String, String>,
    /// `None` when the pod has no required node affinity.
    pub required_node_terms: Option<Vec<NodeTerm>>,
    pub preferred_node_terms: Vec<(i64, NodeTerm)>,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<HostPort>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i64, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i64, AffinityTerm)>,
    pub spread: Vec<SpreadConstraint>,
    /// Why the pod's scheduling constraints could not be parsed (a scheduler error).
    pub parse_error: Option<String>,
    pub pod: Arc<Pod>,
}

impl PodInfo {
    pub fn has_affinity(&self) -> bool {
        !self.required_affinity.is_empty()
            || !self.required_anti_affinity.is_empty()
            || !self.preferred_affinity.is_empty()
            || !self.preferred_anti_affinity.is_empty()
    }

    /// The pod matches its node selector and required node affinity.
    pub fn matches_node_affinity(&self, node: &NodeInfo) -> bool {
        if !self
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            return false;
        }
        match &self.required_node_terms {
            None => true,
            Some(terms) => terms.iter().any(|t| t.matches(&node.labels, &node.name)),
        }
    }

    pub fn parse(pod: Pod, classes: &HashMap<String, PriorityClassInfo>) -> Self {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let mut errors: Vec<String> = Vec::new();

        let class = spec
            .and_then(|s| s.priority_class_name.as_deref())
            .filter(|n| !n.is_empty());
        let class_info = match class {
            Some(c) => classes.get(c),
            None => classes.values().find(|c| c.global_default),
        };
        let priority = spec
            .and_then(|s| s.priority)
            .or(class_info.map(|c| c.value))
            .unwrap_or(0);
        let preempt_never = match spec.and_then(|s| s.preemption_policy.as_deref()) {
            Some(p) => p == "Never",
            None => class_info.is_some_and(|c| c.preempt_never),
        };

        let tolerations = spec
            .and_then(|s| s.tolerations.as_ref())
            .into_iter()
            .flatten()
            .map(|t| Toleration {
                key: t.key.clone().unwrap_or_default(),
                exists: t.operator.as_deref() == Some("Exists"),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.clone().unwrap_or_default(),
            })
            .collect();

        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let node_aff = affinity.and_then(|a| a.node_affinity.as_ref());
        let required_node_terms = node_aff
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|sel| {
                sel.node_selector_terms
                    .iter()
                    .map(NodeTerm::parse)
                    .collect()
            });
        let preferred_node_terms = node_aff
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|p| (i64::from(p.weight), NodeTerm::parse(&p.preference)))
            .collect();

        let mut terms = |list: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            list.into_iter()
                .flatten()
                .filter_map(|t| {
                    AffinityTerm::parse(t, &namespace)
                        .map_err(|e| errors.push(e))
                        .ok()
                })
                .collect()
        };
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required_affinity = terms(pa.and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let required_anti_affinity = terms(paa.and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let mut weighted = |list: Option<
            &Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>,
        >|
         -> Vec<(i64, AffinityTerm)> {
            list.into_iter()
                .flatten()
                .filter_map(|w| {
                    AffinityTerm::parse(&w.pod_affinity_term, &namespace)
                        .map(|t| (i64::from(w.weight), t))
                        .map_err(|e| errors.push(e))
                        .ok()
                })
                .collect()
        };
        let preferred_affinity = weighted(pa.and_then(|p| {
            p.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let preferred_anti_affinity = weighted(paa.and_then(|p| {
            p.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));

        let labels = meta.labels.clone().unwrap_or_default();
        let mut spread = Vec::new();
        for c in spec
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .into_iter()
            .flatten()
        {
            match LabelSelector::parse(c.label_selector.as_ref()) {
                Ok(mut selector) => {
                    // matchLabelKeys: the pod's own values for those keys narrow the selector.
                    if c.label_selector.is_some() {
                        for k in c.match_label_keys.iter().flatten() {
                            if let Some(v) = labels.get(k) {
                                selector.add_equals(k, v);
                            }
                        }
                    }
                    spread.push(SpreadConstraint {
                        max_skew: i64::from(c.max_skew),
                        topology_key: c.topology_key.clone(),
                        hard: c.when_unsatisfiable != "ScheduleAnyway",
                        selector,
                        min_domains: c.min_domains.map(i64::from),
                        honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                        honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                    })
                }
                Err(e) => errors.push(e),
            }
        }

        let mut host_ports = Vec::new();
        let containers: Vec<&Container> = spec
            .map(|s| s.containers.iter().collect())
            .unwrap_or_default();
        for c in containers {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: hp,
                    });
                }
            }
        }

        let requests = pod_requests(&pod, false);
        let non_zero = pod_requests(&pod, true);
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        PodInfo {
            key: format!("{namespace}/{name}"),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            labels,
            scheduler_name: spec
                .and_then(|s| s.scheduler_name.clone())
                .unwrap_or_else(|| "default-scheduler".into()),
            node_name: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            nominated_node: status
                .and_then(|s| s.nominated_node_name.clone())
                .filter(|n| !n.is_empty()),
            terminating: meta.deletion_timestamp.is_some(),
            terminal: matches!(phase, Some("Succeeded" | "Failed")),
            gated: spec
                .and_then(|s| s.scheduling_gates.as_ref())
                .is_some_and(|g| !g.is_empty()),
            priority,
            preempt_never,
            created: meta
                .creation_timestamp
                .as_ref()
                .map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0),
            start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
            requests,
            non_zero_cpu: non_zero.milli_cpu,
            non_zero_mem: non_zero.memory,
            node_selector: spec
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
            required_node_terms,
            preferred_node_terms,
            tolerations,
            host_ports,
            required_affinity,
            required_anti_affinity,
            preferred_affinity,
            preferred_anti_affinity,
            spread,
            parse_error: (!errors.is_empty()).then(|| errors.join("; ")),
            namespace,
            name,
            pod: Arc::new(pod),
        }
    }
}

/// The node-side facts filters and scores need, plus aggregates over the pods on it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_cpu: i64,
    pub non_zero_mem: i64,
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// Pods here with any (anti-)affinity term, and with required anti-affinity.
    pub pods_with_affinity: usize,
    pub pods_with_required_anti_affinity: usize,
}

impl NodeInfo {
    pub fn new(name: &str) -> Self {
        NodeInfo {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Replaces the node-object facts, keeping the pod aggregates.
    pub fn set_node(&mut self, node: &Node) {
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.taints = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .map(|t| Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.clone(),
            })
            .collect();
        self.allocatable =
            Resources::from_list(node.status.as_ref().and_then(|s| s.allocatable.as_ref()));
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_cpu += p.non_zero_cpu;
        self.non_zero_mem += p.non_zero_mem;
        self.used_ports.extend(p.host_ports.iter().cloned());
        if p.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pods.push(p);
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.key == key)?;
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        self.non_zero_cpu -= p.non_zero_cpu;
        self.non_zero_mem -= p.non_zero_mem;
        for hp in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        if p.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        Some(p)
    }
}
