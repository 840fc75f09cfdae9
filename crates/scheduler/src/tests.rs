//! Table-driven filter and score decisions: each case builds a cache of nodes and assigned
//! pods, schedules one pod and checks the chosen node or the exact unschedulable message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use rand::SeedableRng as _;
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::config::{Config, Scoring};
use crate::framework::{self, ScheduleError};
use crate::preemption;
use crate::types::{PodInfo, pod_requests};

/// `name cpu memory [k=v,...] [key=value:Effect,...]`
fn node(
    name: &str,
    cpu: &str,
    mem: &str,
    labels: &[(&str, &str)],
    taints: &[(&str, &str, &str)],
) -> Node {
    let mut l: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("kubernetes.io/hostname".into(), name.into());
    let taints: Vec<Value> = taints
        .iter()
        .map(|(k, v, e)| json!({"key": k, "value": v, "effect": e}))
        .collect();
    let v = json!({
        "metadata": {"name": name, "labels": l},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}, "capacity": {"cpu": cpu, "memory": mem, "pods": "110"}},
    });
    serde_json::from_value(v).expect("test node literal")
}

/// A pod literal: `spec` is merged over one container requesting `cpu`/`memory`.
fn pod(name: &str, cpu: &str, mem: &str, extra: Value) -> Pod {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {}},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]},
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("test pod literal")
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

fn info(p: Pod) -> PodInfo {
    PodInfo::parse(p, &HashMap::new())
}

struct Case {
    name: &'static str,
    nodes: Vec<Node>,
    /// (node, pod) already running.
    running: Vec<(&'static str, Pod)>,
    pod: Pod,
    scoring: Scoring,
    /// Ok(node) or Err(exact unschedulable message).
    want: Result<&'static str, &'static str>,
}

fn build(nodes: &[Node], running: &[(&str, Pod)]) -> Cache {
    let mut cache = Cache::default();
    cache.namespaces.insert(
        "default".into(),
        BTreeMap::from([("kubernetes.io/metadata.name".into(), "default".into())]),
    );
    for n in nodes {
        cache.set_node(n);
    }
    for (n, p) in running {
        let mut p = p.clone();
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = Some(n.to_string());
        }
        cache.add_pod(Arc::new(info(p)));
    }
    cache
}

/// Schedules like the loop does: filter/score, then preemption on failure.
fn decide(cache: &mut Cache, p: &PodInfo, cfg: &Config) -> Result<String, String> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    match framework::schedule_pod(cache, p, cfg, &mut rng) {
        Ok(n) => Ok(n),
        Err(ScheduleError::Error(e)) => Err(e),
        Err(ScheduleError::Fit(mut fit)) => {
            match preemption::preempt(cache, p, &fit) {
                Ok(c) => fit.post_filter_msg = format!("(would preempt on {})", c.node),
                Err(m) => fit.post_filter_msg = m,
            }
            Err(fit.message())
        }
    }
}

fn web(name: &str) -> Pod {
    pod(
        name,
        "100m",
        "100Mi",
        json!({"metadata": {"labels": {"app": "web"}}}),
    )
}

fn cases() -> Vec<Case> {
    let zones = |n: &str, z: &str| node(n, "4", "8Gi", &[("topology.kubernetes.io/zone", z)], &[]);
    vec![
        Case {
            name: "untolerated NoSchedule taint excludes a node",
            nodes: vec![
                node("n1", "4", "8Gi", &[], &[("dedicated", "gpu", "NoSchedule")]),
                node("n2", "1", "1Gi", &[], &[]),
            ],
            running: vec![],
            pod: pod("p", "100m", "100Mi", json!({})),
            scoring: Scoring::LeastAllocated,
            want: Ok("n2"),
        },
        Case {
            name: "a toleration admits the tainted node, which is emptier",
            nodes: vec![
                node("n1", "4", "8Gi", &[], &[("dedicated", "gpu", "NoSchedule")]),
                node("n2", "1", "1Gi", &[], &[]),
            ],
            running: vec![],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Ok("n1"),
        },
        Case {
            name: "NoExecute taints filter too; message names the taint",
            nodes: vec![
                node("n1", "4", "8Gi", &[], &[("k", "v", "NoExecute")]),
                node("n2", "4", "8Gi", &[], &[("k", "v", "NoSchedule")]),
            ],
            running: vec![],
            pod: pod("p", "100m", "100Mi", json!({})),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/2 nodes are available: 2 node(s) had untolerated taint {k: v}. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.",
            ),
        },
        Case {
            name: "PreferNoSchedule only lowers the score",
            nodes: vec![
                node("n1", "4", "8Gi", &[], &[("k", "v", "PreferNoSchedule")]),
                node("n2", "4", "8Gi", &[], &[]),
            ],
            running: vec![],
            pod: pod("p", "100m", "100Mi", json!({})),
            scoring: Scoring::LeastAllocated,
            want: Ok("n2"),
        },
        Case {
            name: "nodeSelector",
            nodes: vec![zones("a1", "a"), zones("b1", "b")],
            running: vec![],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"spec": {"nodeSelector": {"topology.kubernetes.io/zone": "b"}}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Ok("b1"),
        },
        Case {
            name: "required node affinity NotIn",
            nodes: vec![zones("a1", "a"), zones("b1", "b")],
            running: vec![],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "NotIn", "values": ["b"]}]}]}}}}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Ok("a1"),
        },
        Case {
            name: "no node matches affinity: unresolvable, preemption cannot help",
            nodes: vec![zones("a1", "a"), zones("b1", "b")],
            running: vec![],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"spec": {"nodeSelector": {"topology.kubernetes.io/zone": "c"}}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.",
            ),
        },
        Case {
            name: "preferred node affinity wins over emptiness",
            nodes: vec![
                zones("a1", "a"),
                node(
                    "b1",
                    "64",
                    "256Gi",
                    &[("topology.kubernetes.io/zone", "b")],
                    &[],
                ),
            ],
            running: vec![],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}}]}}}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Ok("a1"),
        },
        Case {
            name: "required anti-affinity on hostname avoids the node with a match",
            nodes: vec![zones("n1", "a"), zones("n2", "a")],
            running: vec![("n1", web("w1"))],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
            ),
            scoring: Scoring::MostAllocated,
            want: Ok("n2"),
        },
        Case {
            name: "anti-affinity by zone with every zone taken",
            nodes: vec![zones("n1", "a"), zones("n2", "b")],
            running: vec![("n1", web("w1")), ("n2", web("w2"))],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.",
            ),
        },
        Case {
            name: "existing pod's anti-affinity repels the incoming pod",
            nodes: vec![zones("n1", "a"), zones("n2", "b")],
            running: vec![(
                "n1",
                pod(
                    "loner",
                    "100m",
                    "100Mi",
                    json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}}}),
                ),
            )],
            pod: web("p"),
            scoring: Scoring::MostAllocated,
            want: Ok("n2"),
        },
        Case {
            name: "required pod affinity follows the matching pod's zone",
            nodes: vec![zones("n1", "a"), zones("n2", "b"), zones("n3", "b")],
            running: vec![("n2", web("w1"))],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "n3"}, "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Ok("n3"),
        },
        Case {
            name: "first pod of a self-affine group may go anywhere",
            nodes: vec![zones("n1", "a")],
            running: vec![],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"metadata": {"labels": {"app": "db"}}, "spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Ok("n1"),
        },
        Case {
            name: "topology spread DoNotSchedule sends the pod to the emptier zone",
            nodes: vec![zones("a1", "a"), zones("a2", "a"), zones("b1", "b")],
            running: vec![("a1", web("w1")), ("a2", web("w2")), ("b1", web("w3"))],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            ),
            scoring: Scoring::MostAllocated,
            want: Ok("b1"),
        },
        Case {
            name: "topology spread: nodes without the key are unresolvable",
            nodes: vec![node("x", "4", "8Gi", &[], &[]), zones("a1", "a")],
            running: vec![("a1", web("w1")), ("a1", web("w2"))],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Ok("a1"),
        },
        Case {
            name: "topology spread minDomains counts missing domains as 0",
            nodes: vec![zones("a1", "a")],
            running: vec![("a1", web("w1"))],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
                {"maxSkew": 1, "minDomains": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            ),
        },
        Case {
            name: "topology spread ScheduleAnyway prefers the emptier zone",
            nodes: vec![zones("a1", "a"), zones("b1", "b")],
            running: vec![("a1", web("w1")), ("a1", web("w2"))],
            pod: pod(
                "p",
                "100m",
                "100Mi",
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            ),
            scoring: Scoring::MostAllocated,
            want: Ok("b1"),
        },
        Case {
            name: "MostAllocated packs onto the fuller node",
            nodes: vec![
                node("n1", "4", "8Gi", &[], &[]),
                node("n2", "4", "8Gi", &[], &[]),
            ],
            running: vec![("n1", pod("big", "2", "4Gi", json!({})))],
            pod: pod("p", "500m", "1Gi", json!({})),
            scoring: Scoring::MostAllocated,
            want: Ok("n1"),
        },
        Case {
            name: "LeastAllocated spreads onto the emptier node",
            nodes: vec![
                node("n1", "4", "8Gi", &[], &[]),
                node("n2", "4", "8Gi", &[], &[]),
            ],
            running: vec![("n1", pod("big", "2", "4Gi", json!({})))],
            pod: pod("p", "500m", "1Gi", json!({})),
            scoring: Scoring::LeastAllocated,
            want: Ok("n2"),
        },
        Case {
            name: "resource fit: only the node with room",
            nodes: vec![
                node("n1", "2", "8Gi", &[], &[]),
                node("n2", "1", "8Gi", &[], &[]),
            ],
            running: vec![("n1", pod("a", "1500m", "1Gi", json!({})))],
            pod: pod("p", "1", "1Gi", json!({})),
            scoring: Scoring::MostAllocated,
            want: Ok("n2"),
        },
        Case {
            name: "insufficient cpu and memory are separate reasons, sorted",
            nodes: vec![
                node("n1", "1", "1Gi", &[], &[]),
                node("n2", "1", "8Gi", &[], &[]),
                node("n3", "8", "8Gi", &[], &[("gpu", "true", "NoSchedule")]),
            ],
            running: vec![],
            pod: pod("p", "2", "2Gi", json!({})),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/3 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {gpu: true}, 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.",
            ),
        },
        Case {
            name: "extended resources must be allocatable",
            nodes: vec![node("n1", "4", "8Gi", &[], &[])],
            running: vec![],
            pod: pod(
                "p",
                "1",
                "1Gi",
                json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"example.com/gpu": "1"}}}]}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/1 nodes are available: 1 Insufficient example.com/gpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            ),
        },
        Case {
            name: "spec.nodeName naming another node",
            nodes: vec![node("n1", "4", "8Gi", &[], &[])],
            running: vec![],
            pod: pod("p", "1", "1Gi", json!({"spec": {"nodeName": "elsewhere"}})),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/1 nodes are available: 1 node(s) didn't match the requested node name. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
            ),
        },
        Case {
            name: "preemptionPolicy Never",
            nodes: vec![node("n1", "1", "8Gi", &[], &[])],
            running: vec![("n1", pod("low", "1", "1Gi", json!({})))],
            pod: pod(
                "p",
                "1",
                "1Gi",
                json!({"spec": {"priority": 100, "preemptionPolicy": "Never"}}),
            ),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/1 nodes are available: 1 Insufficient cpu. not eligible due to preemptionPolicy=Never.",
            ),
        },
        Case {
            name: "preemption picks the node whose victims matter least",
            nodes: vec![
                node("n1", "1", "8Gi", &[], &[]),
                node("n2", "1", "8Gi", &[], &[]),
            ],
            running: vec![
                (
                    "n1",
                    pod("mid", "1", "1Gi", json!({"spec": {"priority": 50}})),
                ),
                (
                    "n2",
                    pod("low", "1", "1Gi", json!({"spec": {"priority": 10}})),
                ),
            ],
            pod: pod("p", "1", "1Gi", json!({"spec": {"priority": 100}})),
            scoring: Scoring::LeastAllocated,
            want: Err("0/2 nodes are available: 2 Insufficient cpu. (would preempt on n2)."),
        },
        Case {
            name: "equal priority is never preempted",
            nodes: vec![node("n1", "1", "8Gi", &[], &[])],
            running: vec![(
                "n1",
                pod("peer", "1", "1Gi", json!({"spec": {"priority": 100}})),
            )],
            pod: pod("p", "1", "1Gi", json!({"spec": {"priority": 100}})),
            scoring: Scoring::LeastAllocated,
            want: Err(
                "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            ),
        },
    ]
}

#[test]
fn decisions() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut cache = build(&case.nodes, &case.running);
        let cfg = Config {
            scoring: case.scoring,
            ..Config::default()
        };
        let p = info(case.pod.clone());
        let got = decide(&mut cache, &p, &cfg);
        let want = case.want.map(str::to_string).map_err(str::to_string);
        if got != want {
            failures.push(format!("{}:\n   got  {got:?}\n   want {want:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn no_nodes_is_an_error() {
    let mut cache = Cache::default();
    let p = info(pod("p", "1", "1Gi", json!({})));
    assert_eq!(
        decide(&mut cache, &p, &Config::default()),
        Err("no nodes available to schedule pods".to_string())
    );
}

#[test]
fn assumed_pods_count_against_capacity() {
    let mut cache = build(
        &[
            node("n1", "1", "8Gi", &[], &[]),
            node("n2", "1", "8Gi", &[], &[]),
        ],
        &[],
    );
    let cfg = Config::default();
    let first = info(pod("a", "800m", "1Gi", json!({})));
    let n = decide(&mut cache, &first, &cfg).expect("first pod fits");
    cache.assume(&first, &n);
    let second = info(pod("b", "800m", "1Gi", json!({})));
    let m = decide(&mut cache, &second, &cfg).expect("second pod fits");
    assert_ne!(n, m);
    cache.assume(&second, &m);
    let third = info(pod("c", "800m", "1Gi", json!({})));
    assert!(decide(&mut cache, &third, &cfg).is_err());
    cache.forget("default/a");
    assert_eq!(decide(&mut cache, &third, &cfg), Ok(n));
}

#[test]
fn requests_include_init_sidecars_and_overhead() {
    let p = pod(
        "p",
        "100m",
        "100Mi",
        json!({"spec": {
            "initContainers": [
                {"name": "sidecar", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
                {"name": "init", "image": "i", "resources": {"requests": {"cpu": "1", "memory": "50Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        }}),
    );
    let r = pod_requests(&p, false);
    // max(containers 100m + sidecar 200m, init 1000m + sidecar 200m) + overhead 10m
    assert_eq!(r.milli_cpu, 1210);
    assert_eq!(r.memory, 100 * 1024 * 1024);
    let nz = pod_requests(
        &pod(
            "q",
            "0",
            "0",
            json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}),
        ),
        true,
    );
    assert_eq!((nz.milli_cpu, nz.memory), (100, 200 * 1024 * 1024));
}

#[test]
fn nodes_to_score_is_adaptive() {
    assert_eq!(framework::num_feasible_nodes_to_find(0, 50), 50);
    assert_eq!(framework::num_feasible_nodes_to_find(0, 150), 100);
    assert_eq!(framework::num_feasible_nodes_to_find(0, 1000), 420);
    assert_eq!(framework::num_feasible_nodes_to_find(0, 5000), 500);
    assert_eq!(framework::num_feasible_nodes_to_find(0, 10000), 500);
    assert_eq!(framework::num_feasible_nodes_to_find(30, 1000), 300);
}

#[test]
fn priority_class_resolves_when_priority_is_absent() {
    let classes = HashMap::from([
        (
            "high".to_string(),
            crate::types::PriorityClassInfo {
                value: 1000,
                global_default: false,
                preempt_never: true,
            },
        ),
        (
            "std".to_string(),
            crate::types::PriorityClassInfo {
                value: 7,
                global_default: true,
                preempt_never: false,
            },
        ),
    ]);
    let p = PodInfo::parse(
        pod(
            "p",
            "1",
            "1Gi",
            json!({"spec": {"priorityClassName": "high"}}),
        ),
        &classes,
    );
    assert_eq!((p.priority, p.preempt_never), (1000, true));
    let d = PodInfo::parse(pod("d", "1", "1Gi", json!({})), &classes);
    assert_eq!(d.priority, 7);
    let explicit = PodInfo::parse(
        pod(
            "e",
            "1",
            "1Gi",
            json!({"spec": {"priority": 3, "priorityClassName": "high"}}),
        ),
        &classes,
    );
    assert_eq!(explicit.priority, 3);
}
