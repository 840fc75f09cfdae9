//! `/stats/summary`: the part of upstream's Summary API that resource metrics read (node,
//! pod and container CPU and memory), with upstream's field names, so metrics-server-style
//! scrapers can read it.

use serde_json::{Value, json};

use super::{NodeStats, Usage};

fn ts(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
}

fn cpu(u: &Usage) -> Value {
    json!({ "time": ts(u.time), "usageCoreNanoSeconds": u.cpu_usage_core_nanoseconds })
}

fn memory(u: &Usage) -> Value {
    json!({ "time": ts(u.time), "workingSetBytes": u.memory_working_set_bytes })
}

/// The Summary document for `stats`.
pub fn summary(stats: &NodeStats) -> Value {
    let pods: Vec<Value> = stats
        .pods
        .iter()
        .map(|p| {
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(
                    |c| json!({ "name": c.name, "cpu": cpu(&c.usage), "memory": memory(&c.usage) }),
                )
                .collect();
            json!({
                "podRef": { "name": p.name, "namespace": p.namespace, "uid": p.uid },
                "cpu": cpu(&p.usage),
                "memory": memory(&p.usage),
                "containers": containers,
            })
        })
        .collect();
    json!({
        "node": {
            "nodeName": stats.node_name,
            "cpu": cpu(&stats.node),
            "memory": memory(&stats.node),
        },
        "pods": pods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{ContainerStats, PodStats};

    #[test]
    fn summary_uses_upstream_field_names() {
        let t: jiff::Timestamp = "2025-01-02T03:04:05.5Z".parse().unwrap();
        let u = |cpu, mem| Usage {
            time: t,
            cpu_usage_core_nanoseconds: cpu,
            memory_working_set_bytes: mem,
        };
        let s = NodeStats {
            node_name: "n1".into(),
            node: u(10, 20),
            pods: vec![PodStats {
                namespace: "default".into(),
                name: "p".into(),
                uid: "u1".into(),
                usage: u(3, 4),
                containers: vec![ContainerStats {
                    name: "c".into(),
                    usage: u(1, 2),
                }],
            }],
        };
        let j = summary(&s);
        assert_eq!(j["node"]["nodeName"], "n1");
        assert_eq!(j["node"]["cpu"]["usageCoreNanoSeconds"], 10);
        assert_eq!(j["node"]["memory"]["workingSetBytes"], 20);
        assert_eq!(j["node"]["cpu"]["time"], "2025-01-02T03:04:05.5Z");
        assert_eq!(j["pods"][0]["podRef"]["uid"], "u1");
        assert_eq!(
            j["pods"][0]["containers"][0]["cpu"]["usageCoreNanoSeconds"],
            1
        );
        assert_eq!(
            j["pods"][0]["containers"][0]["memory"]["workingSetBytes"],
            2
        );
    }
}
