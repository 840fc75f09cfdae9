//! The desired proxy state as plain data: a pure function from Services, EndpointSlices and the
//! node's name to one `ServicePort` per port the node must serve, with the endpoints it may use.
//! Nothing here knows about nftables; `rules` renders this model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServicePort as ApiServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Services carrying this annotation with value "true" are served by the node itself (the
/// node-local DNS cache binds their cluster IP), so the proxy leaves them alone.
pub const ANNOTATION_NODE_LOCAL_DNS: &str = "skiff.dev/node-local-dns";
/// Upstream: a Service with this label belongs to another proxy implementation.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub(crate) fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name nftables uses (`meta l4proto tcp`, `tcp dport`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Which endpoints a kind of traffic may reach (`externalTrafficPolicy`,
/// `internalTrafficPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Cluster,
    Local,
}

/// One port of one Service, like upstream's `ServicePortName`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub namespace: String,
    pub name: String,
    /// The port's name ("" for an unnamed single port).
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port
        )
    }
}

/// A ready, not terminating endpoint of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Runs on this node (its `nodeName` is this node's name).
    pub local: bool,
}

/// Everything the node programs for one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub key: PortKey,
    /// The IPv4 cluster IPs (`spec.clusterIPs`, or `spec.clusterIP`).
    pub cluster_ips: Vec<Ipv4Addr>,
    pub port: u16,
    /// Served on every local address of the node when set.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and the LoadBalancer's ingress IPs, reached on `port`.
    pub external_ips: Vec<Ipv4Addr>,
    /// ClientIP session affinity, in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_policy: Policy,
    pub internal_policy: Policy,
    /// Sorted and without duplicates.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Reached from outside the cluster (so `externalTrafficPolicy` matters).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

/// Why a Service is not programmed at all (kept for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    ExternalName,
    Headless,
    NodeLocalDns,
    OtherProxy,
}

/// Whether the proxy leaves this Service alone, and why.
pub fn skip_reason(svc: &Service) -> Option<Skip> {
    let meta = &svc.metadata;
    if meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_NODE_LOCAL_DNS))
        .is_some_and(|v| v == "true")
    {
        return Some(Skip::NodeLocalDns);
    }
    if meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
    {
        return Some(Skip::OtherProxy);
    }
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some(Skip::ExternalName);
    }
    if cluster_ips(svc).is_empty() {
        return Some(Skip::Headless);
    }
    None
}

/// The IPv4 cluster IPs; empty for headless Services (and ones not allocated an IP yet).
fn cluster_ips(svc: &Service) -> Vec<Ipv4Addr> {
    let Some(spec) = svc.spec.as_ref() else {
        return vec![];
    };
    let listed = spec.cluster_ips.iter().flatten();
    let mut ips: Vec<Ipv4Addr> = spec
        .cluster_ip
        .iter()
        .chain(listed)
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn policy(s: Option<&str>) -> Policy {
    match s {
        Some("Local") => Policy::Local,
        _ => Policy::Cluster,
    }
}

/// The IPv4 addresses outside traffic may use besides node ports: `spec.externalIPs`, and for
/// LoadBalancers the ingress IPs in status (except `ipMode: Proxy`, where the load balancer
/// itself rewrites the destination and the node only sees its node port).
fn external_ips(svc: &Service) -> Vec<Ipv4Addr> {
    let spec = svc.spec.as_ref();
    let mut ips: Vec<Ipv4Addr> = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    if spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        ips.extend(
            ingress
                .into_iter()
                .flatten()
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
        );
    }
    ips.sort();
    ips.dedup();
    ips
}

fn node_port(svc: &Service, port: &ApiServicePort) -> Option<u16> {
    let kind = svc.spec.as_ref()?.type_.as_deref();
    if !matches!(kind, Some("NodePort" | "LoadBalancer")) {
        return None;
    }
    u16::try_from(port.node_port?).ok().filter(|p| *p != 0)
}

fn affinity_timeout(svc: &Service) -> Option<u32> {
    let spec = svc.spec.as_ref()?;
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| *t > 0);
    Some(configured.unwrap_or(DEFAULT_AFFINITY_TIMEOUT))
}

/// The usable endpoints of each (port name, protocol) of one Service's slices.
type SliceEndpoints = BTreeMap<(String, Protocol), BTreeSet<Endpoint>>;

/// Merges a Service's IPv4 slices: per port name and protocol, the endpoints that are ready
/// (`conditions.ready` not false) and not terminating, first address only (as upstream).
fn slice_endpoints<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    node_name: &str,
) -> SliceEndpoints {
    let mut out = SliceEndpoints::new();
    for slice in slices.filter(|s| s.address_type == "IPv4") {
        let usable: Vec<(Ipv4Addr, bool)> = slice
            .endpoints
            .iter()
            .filter(|e| {
                let c = e.conditions.as_ref();
                c.and_then(|c| c.ready) != Some(false)
                    && c.and_then(|c| c.terminating) != Some(true)
            })
            .filter_map(|e| {
                let ip = e.addresses.first()?.parse().ok()?;
                Some((ip, e.node_name.as_deref() == Some(node_name)))
            })
            .collect();
        for p in slice.ports.iter().flatten() {
            let (Some(protocol), Some(port)) = (
                Protocol::parse(p.protocol.as_deref()),
                p.port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0),
            ) else {
                continue;
            };
            let name = p.name.clone().unwrap_or_default();
            let set = out.entry((name, protocol)).or_default();
            set.extend(
                usable
                    .iter()
                    .map(|&(ip, local)| Endpoint { ip, port, local }),
            );
        }
    }
    out
}

/// The desired state of the node: one entry per port of every Service the proxy serves,
/// sorted by key. Slices are matched to Services by namespace and `kubernetes.io/service-name`.
pub fn desired<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
) -> Vec<ServicePort> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let (Some(ns), Some(svc)) = (
            slice.metadata.namespace.as_deref(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SERVICE_NAME)),
        ) else {
            continue;
        };
        by_service
            .entry((ns, svc.as_str()))
            .or_default()
            .push(slice);
    }

    let mut out = Vec::new();
    for svc in services {
        if skip_reason(svc).is_some() {
            continue;
        }
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut endpoints = slice_endpoints(slices.iter().copied(), node_name);
        let cluster_ips = cluster_ips(svc);
        let external_ips = external_ips(svc);
        let affinity_timeout = affinity_timeout(svc);
        let internal_policy = policy(spec.internal_traffic_policy.as_deref());
        let external_policy = policy(spec.external_traffic_policy.as_deref());
        for p in spec.ports.iter().flatten() {
            let (Some(protocol), Ok(port)) = (
                Protocol::parse(p.protocol.as_deref()),
                u16::try_from(p.port),
            ) else {
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let eps = endpoints
                .remove(&(port_name.clone(), protocol))
                .unwrap_or_default();
            out.push(ServicePort {
                key: PortKey {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    port: port_name,
                    protocol,
                },
                cluster_ips: cluster_ips.clone(),
                port,
                node_port: node_port(svc, p),
                external_ips: external_ips.clone(),
                affinity_timeout,
                external_policy,
                internal_policy,
                endpoints: dedup_by_address(eps),
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    out
}

/// One endpoint per IP and port: two slices listing the same address (a slice being replaced)
/// must not double its share of the traffic. Local wins if the slices disagree.
fn dedup_by_address(eps: BTreeSet<Endpoint>) -> Vec<Endpoint> {
    let mut by_addr: BTreeMap<(Ipv4Addr, u16), bool> = BTreeMap::new();
    for e in eps {
        *by_addr.entry((e.ip, e.port)).or_default() |= e.local;
    }
    by_addr
        .into_iter()
        .map(|((ip, port), local)| Endpoint { ip, port, local })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("test service")
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("test slice")
    }

    fn web(spec: serde_json::Value) -> Service {
        let mut s = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        });
        let obj = s["spec"].as_object_mut().expect("spec object");
        for (k, v) in spec.as_object().expect("spec patch").clone() {
            obj.insert(k, v);
        }
        svc(s)
    }

    fn ep(ip: &str, node: &str, conditions: serde_json::Value) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node, "conditions": conditions})
    }

    fn web_slice(name: &str, endpoints: Vec<serde_json::Value>) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
    }

    fn e(ip: [u8; 4], port: u16, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.into(),
            port,
            local,
        }
    }

    #[test]
    fn ready_endpoints_of_all_slices_deduplicated() {
        let s = web(json!({}));
        let a = web_slice(
            "web-a",
            vec![
                ep("10.42.0.5", "n1", json!({"ready": true})),
                ep("10.42.1.5", "n2", json!({})),
                ep("10.42.1.6", "n2", json!({"ready": false})),
                ep(
                    "10.42.1.7",
                    "n2",
                    json!({"ready": true, "terminating": true}),
                ),
            ],
        );
        let b = web_slice(
            "web-b",
            vec![
                ep("10.42.0.5", "n1", json!({"ready": true})),
                ep("10.42.2.5", "n3", json!({"ready": true})),
            ],
        );
        let got = desired([&s], [&a, &b], "n1");
        assert_eq!(got.len(), 1);
        let p = &got[0];
        assert_eq!(p.key.to_string(), "default/web/tcp/http");
        assert_eq!(p.cluster_ips, vec![Ipv4Addr::new(10, 43, 0, 20)]);
        assert_eq!(p.port, 80);
        assert_eq!(p.node_port, None);
        assert_eq!(
            p.endpoints,
            vec![
                e([10, 42, 0, 5], 8080, true),
                e([10, 42, 1, 5], 8080, false),
                e([10, 42, 2, 5], 8080, false),
            ]
        );
    }

    #[test]
    fn skipped_services() {
        let cases = [
            (
                web(json!({"type": "ExternalName", "externalName": "x.example"})),
                Some(Skip::ExternalName),
            ),
            (web(json!({"clusterIP": "None"})), Some(Skip::Headless)),
            (web(json!({"clusterIP": ""})), Some(Skip::Headless)),
            (
                svc(json!({
                    "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                 "annotations": {"skiff.dev/node-local-dns": "true"}},
                    "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 53, "protocol": "UDP"}]},
                })),
                Some(Skip::NodeLocalDns),
            ),
            (
                svc(json!({
                    "metadata": {"name": "x", "namespace": "default",
                                 "labels": {"service.kubernetes.io/service-proxy-name": "other"}},
                    "spec": {"clusterIP": "10.43.0.11", "ports": [{"port": 53}]},
                })),
                Some(Skip::OtherProxy),
            ),
            (web(json!({})), None),
        ];
        for (s, want) in cases {
            assert_eq!(skip_reason(&s), want, "{:?}", s.spec);
            let programmed = !desired([&s], [], "n1").is_empty();
            assert_eq!(programmed, want.is_none(), "{:?}", s.spec);
        }
    }

    #[test]
    fn node_ports_external_ips_and_policies() {
        let mut s = web(json!({
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local",
            "externalIPs": ["192.0.2.9", "2001:db8::1"],
            "ports": [
                {"name": "http", "port": 80, "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                {"name": "odd", "port": 9, "protocol": "ICMP"},
            ],
            "sessionAffinity": "ClientIP",
        }));
        s.status = Some(
            serde_json::from_value(json!({"loadBalancer": {"ingress": [
                {"ip": "192.0.2.50"}, {"ip": "192.0.2.51", "ipMode": "Proxy"}, {"hostname": "lb.example"}
            ]}}))
            .expect("status"),
        );
        let got = desired([&s], [], "n1");
        let keys: Vec<String> = got.iter().map(|p| p.key.to_string()).collect();
        assert_eq!(keys, ["default/web/udp/dns", "default/web/tcp/http"]);
        let http = &got[1];
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(
            http.external_ips,
            vec![Ipv4Addr::new(192, 0, 2, 9), Ipv4Addr::new(192, 0, 2, 50)]
        );
        assert_eq!(http.external_policy, Policy::Local);
        assert_eq!(http.internal_policy, Policy::Local);
        assert_eq!(http.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(http.endpoints.is_empty());
        assert_eq!(got[0].node_port, Some(30053));

        // A ClusterIP Service ignores a stray nodePort and LB status.
        let plain = web(json!({"ports": [{"name": "http", "port": 80, "nodePort": 30080}]}));
        assert_eq!(desired([&plain], [], "n1")[0].node_port, None);
    }

    #[test]
    fn slice_ports_match_by_name_and_protocol() {
        let s = web(json!({
            "ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9100}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
        }));
        let sl = slice(json!({
            "metadata": {"name": "web-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.42.0.9"]}],
        }));
        let other_ns = slice(json!({
            "metadata": {"name": "web-y", "namespace": "other",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.42.0.10"]}],
        }));
        let v6 = slice(json!({
            "metadata": {"name": "web-z", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["fd00::1"]}],
        }));
        let got = desired([&s], [&sl, &other_ns, &v6], "n1");
        assert_eq!(got[0].endpoints, vec![e([10, 42, 0, 9], 8080, false)]);
        assert_eq!(got[0].affinity_timeout, Some(60));
        // metrics is TCP in the Service and UDP in the slice: no endpoints.
        assert!(got[1].endpoints.is_empty());
    }
}
