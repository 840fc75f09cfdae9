//! hostPort, the role of upstream's CNI `portmap` plugin: a container port declared with
//! `hostPort: H` is reachable on the node's addresses at port H (or only at `hostIP` when
//! given), DNATed to the pod. A pure function from the node's Pods to the mappings; `rules`
//! renders them into the proxy's table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

use crate::model::Protocol;

/// One hostPort mapping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: Protocol,
    /// `None`: every local address of the node (`hostIP` empty or `0.0.0.0`).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
    /// `namespace/name`, for logs and chain names.
    pub pod: String,
}

/// The mappings of `pods` (the node's): pods with an IPv4 address that have not finished.
/// When two pods claim one (protocol, hostIP, hostPort), the older pod keeps it (the scheduler's
/// NodePorts filter keeps this from happening; a pod bound by name can still collide); the
/// losers are returned second, for the caller to log.
pub fn host_ports<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> (Vec<HostPort>, Vec<HostPort>) {
    let mut pods: Vec<&Pod> = pods.into_iter().collect();
    // Oldest first; the name breaks ties so the outcome does not depend on watch order.
    pods.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.namespace.clone(),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut taken: BTreeMap<(Protocol, Option<Ipv4Addr>, u16), HostPort> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for pod in pods {
        let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else {
            continue;
        };
        // A terminating pod keeps its ports until its sandbox is gone, as with portmap.
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(pod_ip) = status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let ports = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .flat_map(|c| c.ports.iter().flatten());
        for port in ports {
            let Some(host_port) = port.host_port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let (Some(protocol), Ok(container_port)) = (
                Protocol::parse(port.protocol.as_deref()),
                u16::try_from(port.container_port),
            ) else {
                continue;
            };
            if host_port == 0 || container_port == 0 {
                continue;
            }
            let host_ip = match port.host_ip.as_deref() {
                None | Some("") | Some("0.0.0.0") => None,
                // An IPv6 or malformed hostIP cannot be served by this IPv4 table.
                Some(ip) => match ip.parse::<Ipv4Addr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => continue,
                },
            };
            let mapping = HostPort {
                protocol,
                host_ip,
                host_port,
                pod_ip,
                container_port,
                pod: name.clone(),
            };
            // A wildcard mapping and an address-specific one of the same port collide too.
            let clash = taken.iter().any(|((p, ip, hp), _)| {
                *p == protocol
                    && *hp == host_port
                    && (ip.is_none() || host_ip.is_none() || *ip == host_ip)
            });
            if clash {
                conflicts.push(mapping);
            } else {
                taken.insert((protocol, host_ip, host_port), mapping);
            }
        }
    }
    (taken.into_values().collect(), conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        name: &str,
        created: &str,
        ip: Option<&str>,
        phase: &str,
        ports: serde_json::Value,
    ) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"phase": phase, "podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn mappings_from_pods_as_upstream_portmap() {
        type Row = (
            &'static str,
            Vec<Pod>,
            Vec<(&'static str, Option<&'static str>, u16, &'static str, u16)>,
            usize,
        );
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-01T00:00:01Z";
        let rows: Vec<Row> = vec![
            (
                "a hostPort maps to the pod",
                vec![pod(
                    "a",
                    t0,
                    Some("10.42.0.5"),
                    "Running",
                    json!([{"containerPort": 80, "hostPort": 8080}]),
                )],
                vec![("tcp", None, 8080, "10.42.0.5", 80)],
                0,
            ),
            (
                "no hostPort, no mapping",
                vec![pod(
                    "a",
                    t0,
                    Some("10.42.0.5"),
                    "Running",
                    json!([{"containerPort": 80}]),
                )],
                vec![],
                0,
            ),
            (
                "UDP and a host IP",
                vec![pod(
                    "a",
                    t0,
                    Some("10.42.0.5"),
                    "Running",
                    json!([{"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "172.31.0.2"}]),
                )],
                vec![("udp", Some("172.31.0.2"), 5353, "10.42.0.5", 53)],
                0,
            ),
            (
                "hostIP 0.0.0.0 is every address",
                vec![pod(
                    "a",
                    t0,
                    Some("10.42.0.5"),
                    "Running",
                    json!([{"containerPort": 80, "hostPort": 80, "hostIP": "0.0.0.0"}]),
                )],
                vec![("tcp", None, 80, "10.42.0.5", 80)],
                0,
            ),
            (
                "no pod IP yet",
                vec![pod(
                    "a",
                    t0,
                    None,
                    "Pending",
                    json!([{"containerPort": 80, "hostPort": 8080}]),
                )],
                vec![],
                0,
            ),
            (
                "finished pods release their ports",
                vec![pod(
                    "a",
                    t0,
                    Some("10.42.0.5"),
                    "Succeeded",
                    json!([{"containerPort": 80, "hostPort": 8080}]),
                )],
                vec![],
                0,
            ),
            (
                "the older pod keeps a contested port",
                vec![
                    pod(
                        "young",
                        t1,
                        Some("10.42.0.6"),
                        "Running",
                        json!([{"containerPort": 81, "hostPort": 8080}]),
                    ),
                    pod(
                        "old",
                        t0,
                        Some("10.42.0.5"),
                        "Running",
                        json!([{"containerPort": 80, "hostPort": 8080}]),
                    ),
                ],
                vec![("tcp", None, 8080, "10.42.0.5", 80)],
                1,
            ),
            (
                "a wildcard and a specific address of one port collide",
                vec![
                    pod(
                        "a",
                        t0,
                        Some("10.42.0.5"),
                        "Running",
                        json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "172.31.0.2"}]),
                    ),
                    pod(
                        "b",
                        t1,
                        Some("10.42.0.6"),
                        "Running",
                        json!([{"containerPort": 80, "hostPort": 8080}]),
                    ),
                ],
                vec![("tcp", Some("172.31.0.2"), 8080, "10.42.0.5", 80)],
                1,
            ),
            (
                "TCP and UDP of one port do not",
                vec![
                    pod(
                        "a",
                        t0,
                        Some("10.42.0.5"),
                        "Running",
                        json!([{"containerPort": 53, "hostPort": 53}]),
                    ),
                    pod(
                        "b",
                        t1,
                        Some("10.42.0.6"),
                        "Running",
                        json!([{"containerPort": 53, "hostPort": 53, "protocol": "UDP"}]),
                    ),
                ],
                vec![
                    ("tcp", None, 53, "10.42.0.5", 53),
                    ("udp", None, 53, "10.42.0.6", 53),
                ],
                0,
            ),
            (
                "an IPv6 host IP is skipped",
                vec![pod(
                    "a",
                    t0,
                    Some("10.42.0.5"),
                    "Running",
                    json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "fd00::1"}]),
                )],
                vec![],
                0,
            ),
        ];
        for (what, pods, want, conflicts) in rows {
            let (got, lost) = host_ports(&pods);
            let got: Vec<_> = got
                .iter()
                .map(|h| {
                    (
                        h.protocol.nft(),
                        h.host_ip.map(|i| i.to_string()),
                        h.host_port,
                        h.pod_ip.to_string(),
                        h.container_port,
                    )
                })
                .collect();
            let want: Vec<_> = want
                .into_iter()
                .map(|(p, ip, hp, pip, cp)| (p, ip.map(str::to_owned), hp, pip.to_owned(), cp))
                .collect();
            assert_eq!(got, want, "{what}");
            assert_eq!(lost.len(), conflicts, "{what}");
        }
    }
}
