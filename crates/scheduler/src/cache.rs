//! The scheduler's view of the cluster: nodes with per-node aggregates of the pods assigned
//! (or assumed) to them, namespaces' labels and priority classes. Fed by watchers; read by the
//! scheduling cycle under the same lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::types::{NodeInfo, PodInfo, PriorityClassInfo};

/// What a node event changed, for moving unschedulable pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeChange {
    Added,
    /// Labels, taints, allocatable or schedulability changed.
    Updated,
    /// Only fields scheduling ignores (heartbeats, conditions) changed.
    Irrelevant,
}

#[derive(Default)]
pub struct Cache {
    /// Nodes that exist, in a stable order for round-robin filtering.
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Nodes that pods are assigned to but whose Node object we have not seen (or was deleted).
    ghosts: HashMap<String, NodeInfo>,
    /// Assigned or assumed pod key → node name.
    pod_node: HashMap<String, String>,
    assumed: HashSet<String>,
    /// Node name → pods nominated to it by preemption (not yet bound).
    pub nominated: HashMap<String, Vec<Arc<PodInfo>>>,
    nominated_of: HashMap<String, String>,
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    pub priority_classes: HashMap<String, PriorityClassInfo>,
    /// Cluster totals, so that cycles can skip InterPodAffinity work when nobody uses it.
    pub pods_with_affinity: usize,
    pub pods_with_required_anti_affinity: usize,
    /// Where the next cycle starts filtering (upstream's nextStartNodeIndex).
    pub next_start: usize,
}

impl Cache {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeInfo {
        if let Some(i) = self.index.get(name) {
            return &mut self.nodes[*i];
        }
        self.ghosts
            .entry(name.to_string())
            .or_insert_with(|| NodeInfo::new(name))
    }

    pub fn set_node(&mut self, node: &Node) -> NodeChange {
        let Some(name) = node.metadata.name.as_deref() else {
            return NodeChange::Irrelevant;
        };
        if let Some(i) = self.index.get(name) {
            let info = &mut self.nodes[*i];
            let before = (
                info.labels.clone(),
                info.taints.clone(),
                info.unschedulable,
                info.allocatable.clone(),
            );
            info.set_node(node);
            let after = (
                info.labels.clone(),
                info.taints.clone(),
                info.unschedulable,
                info.allocatable.clone(),
            );
            return if before == after {
                NodeChange::Irrelevant
            } else {
                NodeChange::Updated
            };
        }
        let mut info = self
            .ghosts
            .remove(name)
            .unwrap_or_else(|| NodeInfo::new(name));
        info.set_node(node);
        self.index.insert(name.to_string(), self.nodes.len());
        self.nodes.push(info);
        NodeChange::Added
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let info = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        if !info.pods.is_empty() {
            self.ghosts.insert(name.to_string(), info);
        }
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    pub fn pod_node(&self, key: &str) -> Option<&str> {
        self.pod_node.get(key).map(String::as_str)
    }

    fn insert(&mut self, node: &str, p: Arc<PodInfo>) {
        if p.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pod_node.insert(p.key.clone(), node.to_string());
        self.node_mut(node).add_pod(p);
    }

    /// Removes an assigned or assumed pod; returns it if it was there.
    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let node = self.pod_node.remove(key)?;
        self.assumed.remove(key);
        let removed = if let Some(i) = self.index.get(&node) {
            self.nodes[*i].remove_pod(key)
        } else {
            let ghost = self.ghosts.get_mut(&node)?;
            let p = ghost.remove_pod(key);
            if ghost.pods.is_empty() {
                self.ghosts.remove(&node);
            }
            p
        };
        if let Some(p) = &removed {
            if p.has_affinity() {
                self.pods_with_affinity -= 1;
            }
            if !p.required_anti_affinity.is_empty() {
                self.pods_with_required_anti_affinity -= 1;
            }
        }
        removed
    }

    /// Adds or replaces an assigned pod seen by the watch; confirms it if it was assumed.
    /// Returns the previous version, if any.
    pub fn add_pod(&mut self, p: Arc<PodInfo>) -> Option<Arc<PodInfo>> {
        let node = p.node_name.clone()?;
        let old = self.remove_pod(&p.key);
        self.unnominate(&p.key);
        self.insert(&node, p);
        old
    }

    /// Puts a pod on a node before its binding is written, so the next cycles see it.
    pub fn assume(&mut self, p: &PodInfo, node: &str) {
        let mut p = p.clone();
        p.node_name = Some(node.to_string());
        self.remove_pod(&p.key);
        self.unnominate(&p.key);
        self.assumed.insert(p.key.clone());
        self.insert(node, Arc::new(p));
    }

    /// Drops an assumed pod whose binding failed. A pod the watch already confirmed stays.
    pub fn forget(&mut self, key: &str) {
        if self.assumed.contains(key) {
            self.remove_pod(key);
        }
    }

    pub fn nominate(&mut self, p: &PodInfo, node: &str) {
        self.unnominate(&p.key);
        let mut p = p.clone();
        p.nominated_node = Some(node.to_string());
        self.nominated_of.insert(p.key.clone(), node.to_string());
        self.nominated
            .entry(node.to_string())
            .or_default()
            .push(Arc::new(p));
    }

    pub fn unnominate(&mut self, key: &str) {
        let Some(node) = self.nominated_of.remove(key) else {
            return;
        };
        if let Some(list) = self.nominated.get_mut(&node) {
            list.retain(|p| p.key != key);
            if list.is_empty() {
                self.nominated.remove(&node);
            }
        }
    }

    /// Replaces the cache contents after a relist: forgets assigned pods not in `keep`
    /// unless assumed.
    pub fn retain_pods(&mut self, keep: &HashSet<String>) -> bool {
        let gone: Vec<String> = self
            .pod_node
            .keys()
            .filter(|k| !keep.contains(*k) && !self.assumed.contains(*k))
            .cloned()
            .collect();
        for k in &gone {
            self.remove_pod(k);
        }
        !gone.is_empty()
    }
}
