//! DefaultPreemption (PostFilter): find the node where evicting the fewest, least important
//! lower-priority pods lets the pod fit, and say why when there is none.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::Cache;
use crate::framework::{Code, Cycle, FitError, Status};
use crate::types::{NodeInfo, PodInfo};

const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// Upstream's minCandidateNodesPercentage / minCandidateNodesAbsolute.
const MIN_CANDIDATES_PERCENT: usize = 10;
const MIN_CANDIDATES_ABSOLUTE: usize = 100;

/// Where the pod will go once `victims` are gone.
#[derive(Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
}

/// Upstream's MoreImportantPod: higher priority, then earlier start.
fn more_important(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority.cmp(&a.priority).then_with(|| {
        a.start_time
            .unwrap_or(a.created)
            .cmp(&b.start_time.unwrap_or(b.created))
    })
}

/// Runs preemption for a pod that fits nowhere; `Err` carries the PostFilter message.
pub fn preempt(cache: &Cache, pod: &PodInfo, fit: &FitError) -> Result<Candidate, String> {
    if pod.preempt_never {
        return Err("not eligible due to preemptionPolicy=Never.".into());
    }
    if let Some(nominated) = pod.nominated_node.as_deref()
        && fit
            .statuses
            .get(nominated)
            .is_none_or(|s| s.code != Code::UnschedulableAndUnresolvable)
        && let Some(node) = cache.node(nominated)
        && node
            .pods
            .iter()
            .any(|p| p.terminating && p.priority < pod.priority)
    {
        return Err("not eligible due to a terminating pod on the nominated node.".into());
    }
    let all = cache.nodes.len();
    let potential: Vec<&NodeInfo> = cache
        .nodes
        .iter()
        .filter(|n| {
            fit.statuses
                .get(&n.name)
                .is_none_or(|s| s.code == Code::Unschedulable)
        })
        .collect();
    let mut statuses: HashMap<String, Status> = HashMap::new();
    let not_helpful = |statuses: HashMap<String, Status>| -> String {
        let fe = FitError {
            num_all_nodes: all,
            statuses,
            post_filter_msg: String::new(),
        };
        let mut reasons: HashMap<String, usize> = HashMap::new();
        for s in fe.statuses.values() {
            for r in &s.reasons {
                *reasons.entry(r.clone()).or_default() += 1;
            }
        }
        let absent = all.saturating_sub(fe.statuses.len());
        if absent > 0 {
            *reasons.entry(NOT_HELPFUL.to_string()).or_default() += absent;
        }
        format!(
            "preemption: {}",
            crate::framework::nodes_available_message(all, &reasons)
        )
    };
    if potential.is_empty() {
        return Err(not_helpful(statuses));
    }
    let base = Cycle::new(pod, cache).map_err(|e| format!("preemption: {e}"))?;
    let max_candidates =
        (potential.len() * MIN_CANDIDATES_PERCENT / 100).max(MIN_CANDIDATES_ABSOLUTE);
    let mut candidates: Vec<Candidate> = Vec::new();
    for node in potential {
        if candidates.len() >= max_candidates {
            break;
        }
        match select_victims(&base, pod, node) {
            Ok(victims) => candidates.push(Candidate {
                node: node.name.clone(),
                victims,
            }),
            Err(s) => {
                statuses.insert(node.name.clone(), s);
            }
        }
    }
    if candidates.is_empty() {
        return Err(not_helpful(statuses));
    }
    // pickOneNodeForPreemption without PDBs: lowest highest-priority victim, lowest priority
    // sum, fewest victims, then the latest start among the most important victims.
    let key = |c: &Candidate| {
        let highest = c
            .victims
            .iter()
            .map(|v| v.priority)
            .max()
            .unwrap_or(i32::MIN);
        let sum: i64 = c
            .victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        let earliest_top = c
            .victims
            .iter()
            .filter(|v| v.priority == highest)
            .map(|v| v.start_time.unwrap_or(v.created))
            .min()
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        (
            highest,
            sum,
            c.victims.len(),
            std::cmp::Reverse(earliest_top),
        )
    };
    let best = candidates
        .iter()
        .enumerate()
        .min_by_key(|(i, c)| (key(c), *i))
        .map(|(i, _)| i)
        .unwrap_or(0);
    Ok(candidates.swap_remove(best))
}

/// Upstream's SelectVictimsOnNode: remove every lower-priority pod, check the pod fits, then
/// reprieve as many victims (most important first) as still lets it fit.
fn select_victims(
    base: &Cycle<'_>,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Result<Vec<Arc<PodInfo>>, Status> {
    let mut potential: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if potential.is_empty() {
        return Err(Status {
            code: Code::UnschedulableAndUnresolvable,
            plugin: "DefaultPreemption",
            reasons: vec![NO_VICTIMS.into()],
        });
    }
    let mut cycle = base.clone();
    let mut trial = node.clone();
    for v in &potential {
        trial.remove_pod(&v.key);
        cycle.adjust_for_pod(v, &trial, -1);
    }
    cycle.filter(&trial)?;
    potential.sort_by(|a, b| more_important(a, b));
    let mut victims = Vec::new();
    for v in potential {
        trial.add_pod(v.clone());
        cycle.adjust_for_pod(&v, &trial, 1);
        if cycle.filter(&trial).is_err() {
            trial.remove_pod(&v.key);
            cycle.adjust_for_pod(&v, &trial, -1);
            victims.push(v);
        }
    }
    if victims.is_empty() {
        // The pod fits without evicting anyone: the cache changed since Filter ran.
        return Err(Status {
            code: Code::UnschedulableAndUnresolvable,
            plugin: "DefaultPreemption",
            reasons: vec![format!(
                "expected at least one victim pod on node {:?}",
                node.name
            )],
        });
    }
    Ok(victims)
}
