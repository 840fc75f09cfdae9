//! The nftables side: the model rendered as a `Ruleset` (per-service and per-endpoint chains,
//! affinity sets, elements of six verdict maps), the fixed skeleton of the table, and the
//! differ that turns an old and a new `Ruleset` into one `nft -f -` transaction.
//!
//! Layout (one `ip` table, kube-proxy's nftables design):
//! - `nat-prerouting` / `nat-output` jump to `services`, which first looks up hostPorts
//!   (`host-ip-ports` by address, `host-ports` on any local address; each `hp-*` chain DNATs to
//!   its pod), then `daddr . l4proto . dport` in `service-ips` (cluster, external and LoadBalancer IPs) and, for
//!   traffic to a local address, `l4proto . dport` in `service-nodeports`; each element is a
//!   `goto` into the service's chain.
//! - `svc-*` picks one of all ready endpoints (`numgen random`), `svl-*` one of the local ones;
//!   with ClientIP affinity each endpoint has a timeout set of clients checked first.
//! - `ext-*` is where outside traffic (node ports, external and LoadBalancer IPs) enters: with
//!   `externalTrafficPolicy: Cluster` it is marked for masquerade (the endpoint may be on
//!   another node and must answer through this one); with `Local` it goes to local endpoints
//!   only, except traffic from pods and from the node itself, which is short-circuited to
//!   the cluster-wide chain as upstream does.
//! - `ep-*` marks hairpin traffic (a pod reaching itself) for masquerade and DNATs.
//! - Services without usable endpoints are in `no-endpoint-services`/`no-endpoint-nodeports`,
//!   checked before NAT for new connections: rejected (TCP reset, ICMP port unreachable for
//!   other protocols) when there are no endpoints at all, `drop`
//!   when a Local policy has none on this node (upstream's choice: a load balancer's health
//!   check steers away from such nodes).
//! - `nat-postrouting` masquerades only packets carrying the mark bit, and clears it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::hostport::HostPort;
use crate::model::{Endpoint, Policy, PortKey, ServicePort};

/// An IPv4 prefix such as the cluster's pod CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid IPv4 CIDR {input:?}: expected ADDRESS/LENGTH with a length of 0 to 32")]
pub struct CidrError {
    input: String,
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError {
            input: s.to_string(),
        };
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let len: u8 = len.parse().map_err(|_| err())?;
        if len > 32 {
            return Err(err());
        }
        // Normalised, so nft never sees host bits (it would refuse them).
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ok(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What shapes the rules besides the Services: the table's name, the cluster's pod CIDR
/// (traffic from outside it to a cluster IP is masqueraded, and pods' traffic to external IPs
/// of Local services is short-circuited) and the packet mark bit meaning "masquerade me".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub table: String,
    pub cluster_cidr: Option<Ipv4Cidr>,
    pub mark: u32,
}

/// The verdict maps that route packets into per-service (and per-hostPort) chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Map {
    /// `daddr . l4proto . dport` → the service's chain.
    ServiceIps,
    /// `l4proto . dport` on a local address → the service's external chain.
    NodePorts,
    /// `daddr . l4proto . dport` → reject or drop (no usable endpoints).
    NoEndpointServices,
    /// `l4proto . dport` → reject or drop.
    NoEndpointNodePorts,
    /// `daddr . l4proto . dport` of a hostPort with a hostIP → its chain.
    HostIpPorts,
    /// `l4proto . dport` of a hostPort on every local address → its chain.
    HostPorts,
}

impl Map {
    pub const ALL: [Map; 6] = [
        Map::ServiceIps,
        Map::NodePorts,
        Map::NoEndpointServices,
        Map::NoEndpointNodePorts,
        Map::HostIpPorts,
        Map::HostPorts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Map::ServiceIps => "service-ips",
            Map::NodePorts => "service-nodeports",
            Map::NoEndpointServices => "no-endpoint-services",
            Map::NoEndpointNodePorts => "no-endpoint-nodeports",
            Map::HostIpPorts => "host-ip-ports",
            Map::HostPorts => "host-ports",
        }
    }

    fn key_type(self) -> &'static str {
        match self {
            Map::ServiceIps | Map::NoEndpointServices | Map::HostIpPorts => {
                "ipv4_addr . inet_proto . inet_service"
            }
            Map::NodePorts | Map::NoEndpointNodePorts | Map::HostPorts => {
                "inet_proto . inet_service"
            }
        }
    }
}

/// The per-service part of the table: what the differ compares. Rules and elements are kept
/// as the nft text they are written in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Chain name → its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name → its definition (`{ type ...; }`).
    pub sets: BTreeMap<String, String>,
    /// Map → element key → verdict.
    pub maps: BTreeMap<Map, BTreeMap<String, String>>,
}

impl Ruleset {
    fn element(&mut self, map: Map, key: String, verdict: String) {
        self.maps.entry(map).or_default().insert(key, verdict);
    }

    /// How many chains and map elements it holds (for logs).
    pub fn size(&self) -> (usize, usize) {
        (
            self.chains.len(),
            self.maps.values().map(BTreeMap::len).sum(),
        )
    }
}

const REJECT_CHAIN: &str = "reject-chain";
const MARK_CHAIN: &str = "mark-for-masquerade";
/// nftables names are at most 255 bytes; keep the readable part well under that.
const MAX_READABLE: usize = 180;

/// FNV-1a: a stable short hash keeps names unique when the readable part is cut.
fn hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..8)
        .map(|i| char::from(ALPHABET[((h >> (i * 5)) & 31) as usize]))
        .collect()
}

/// `HASH-ns/name/proto/port`, with anything nft would not take as a name replaced.
fn base_name(key: &PortKey) -> String {
    let full = key.to_string();
    let readable: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_READABLE)
        .collect();
    format!("{}-{readable}", hash(&full))
}

fn endpoint_suffix(e: &Endpoint) -> String {
    format!("__{}/{}", e.ip, e.port)
}

/// The chains, sets and map elements the model calls for.
pub fn render(ports: &[ServicePort], settings: &Settings) -> Ruleset {
    let mut rs = Ruleset::default();
    for sp in ports {
        render_port(&mut rs, sp, settings);
    }
    rs
}

/// Adds the hostPort mappings: a chain each that DNATs to the pod (masquerading a pod that
/// reaches its own hostPort, whose reply would otherwise skip the node), and its map element.
pub fn add_host_ports(rs: &mut Ruleset, mappings: &[HostPort]) {
    for h in mappings {
        let proto = h.protocol.nft();
        let at = h
            .host_ip
            .map_or_else(|| "any".to_owned(), |ip| ip.to_string());
        let chain = format!("hp-{proto}-{at}-{}", h.host_port);
        rs.chains.insert(
            chain.clone(),
            vec![
                format!("ip saddr {} jump {MARK_CHAIN}", h.pod_ip),
                format!(
                    "meta l4proto {proto} dnat to {}:{}",
                    h.pod_ip, h.container_port
                ),
            ],
        );
        let verdict = format!("goto {chain}");
        match h.host_ip {
            Some(ip) => rs.element(
                Map::HostIpPorts,
                format!("{ip} . {proto} . {}", h.host_port),
                verdict,
            ),
            None => rs.element(
                Map::HostPorts,
                format!("{proto} . {}", h.host_port),
                verdict,
            ),
        }
    }
}

fn render_port(rs: &mut Ruleset, sp: &ServicePort, settings: &Settings) {
    let proto = sp.key.protocol.nft();
    let ip_key = |ip: &Ipv4Addr| format!("{ip} . {proto} . {}", sp.port);
    let reject = format!("goto {REJECT_CHAIN}");

    if sp.endpoints.is_empty() {
        for ip in sp.cluster_ips.iter().chain(&sp.external_ips) {
            rs.element(Map::NoEndpointServices, ip_key(ip), reject.clone());
        }
        if let Some(np) = sp.node_port {
            rs.element(Map::NoEndpointNodePorts, format!("{proto} . {np}"), reject);
        }
        return;
    }

    let base = base_name(&sp.key);
    let ep_chain = |e: &Endpoint| format!("ep-{base}{}", endpoint_suffix(e));
    let aff_set = |e: &Endpoint| format!("aff-{base}{}", endpoint_suffix(e));

    for e in &sp.endpoints {
        let mut rules = vec![format!("ip saddr {} jump {MARK_CHAIN}", e.ip)];
        if let Some(timeout) = sp.affinity_timeout {
            let set = aff_set(e);
            rules.push(format!("update @{set} {{ ip saddr }}"));
            rs.sets.insert(
                set,
                format!("{{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"),
            );
        }
        rules.push(format!("meta l4proto {proto} dnat to {}:{}", e.ip, e.port));
        rs.chains.insert(ep_chain(e), rules);
    }

    // Picks one endpoint: a client's affinity first, then at random.
    let balance = |rules: &mut Vec<String>, eps: &[&Endpoint]| {
        if sp.affinity_timeout.is_some() {
            for e in eps {
                rules.push(format!("ip saddr @{} goto {}", aff_set(e), ep_chain(e)));
            }
        }
        let mut vmap = String::new();
        for (i, e) in eps.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(vmap, "{sep}{i} : goto {}", ep_chain(e));
        }
        rules.push(format!("numgen random mod {} vmap {{ {vmap} }}", eps.len()));
    };

    let all: Vec<&Endpoint> = sp.endpoints.iter().collect();
    let local: Vec<&Endpoint> = sp.endpoints.iter().filter(|e| e.local).collect();

    let cluster_chain = format!("svc-{base}");
    let mut rules = Vec::new();
    if let Some(cidr) = settings.cluster_cidr {
        // Off-cluster clients of a cluster IP (a process on the node, a routed-in client):
        // the endpoint may be on another node and must reply through this one.
        for ip in &sp.cluster_ips {
            rules.push(format!(
                "ip daddr {ip} {proto} dport {} ip saddr != {cidr} jump {MARK_CHAIN}",
                sp.port
            ));
        }
    }
    balance(&mut rules, &all);
    rs.chains.insert(cluster_chain.clone(), rules);

    let local_used = sp.internal_policy == Policy::Local
        || (sp.externally_accessible() && sp.external_policy == Policy::Local);
    let local_chain = format!("svl-{base}");
    if local_used && !local.is_empty() {
        let mut rules = Vec::new();
        balance(&mut rules, &local);
        rs.chains.insert(local_chain.clone(), rules);
    }

    let internal = match sp.internal_policy {
        Policy::Cluster => Some(&cluster_chain),
        Policy::Local => (!local.is_empty()).then_some(&local_chain),
    };
    for ip in &sp.cluster_ips {
        match internal {
            Some(chain) => rs.element(Map::ServiceIps, ip_key(ip), format!("goto {chain}")),
            None => rs.element(Map::NoEndpointServices, ip_key(ip), "drop".into()),
        }
    }

    if sp.externally_accessible() {
        let ext_chain = format!("ext-{base}");
        let mut rules = Vec::new();
        match sp.external_policy {
            Policy::Cluster => {
                rules.push(format!("jump {MARK_CHAIN}"));
                rules.push(format!("goto {cluster_chain}"));
            }
            Policy::Local => {
                if let Some(cidr) = settings.cluster_cidr {
                    rules.push(format!("ip saddr {cidr} goto {cluster_chain}"));
                }
                rules.push(format!("fib saddr type local jump {MARK_CHAIN}"));
                rules.push(format!("fib saddr type local goto {cluster_chain}"));
                if local.is_empty() {
                    rules.push("drop".into());
                } else {
                    rules.push(format!("goto {local_chain}"));
                }
            }
        }
        rs.chains.insert(ext_chain.clone(), rules);
        for ip in &sp.external_ips {
            rs.element(Map::ServiceIps, ip_key(ip), format!("goto {ext_chain}"));
        }
        if let Some(np) = sp.node_port {
            rs.element(
                Map::NodePorts,
                format!("{proto} . {np}"),
                format!("goto {ext_chain}"),
            );
        }
    }
}

/// The fixed part of the table: maps, base chains hooked into netfilter, masquerading.
fn skeleton(settings: &Settings) -> String {
    let t = format!("ip {}", settings.table);
    let mark = format!("{:#x}", settings.mark);
    let mut s = String::new();
    for map in Map::ALL {
        let _ = writeln!(
            s,
            "add map {t} {} {{ type {} : verdict ; }}",
            map.name(),
            map.key_type()
        );
    }
    let chains: &[(&str, Option<&str>, &[String])] = &[
        // A TCP reset rather than an ICMP error for TCP: an ICMP error arriving while the
        // connecting socket is still locked by connect() (same host, veth) is dropped, and
        // the client would only fail a second later on the SYN's retransmission.
        (
            REJECT_CHAIN,
            None,
            &[
                "meta l4proto tcp reject with tcp reset".into(),
                "reject".into(),
            ],
        ),
        (
            MARK_CHAIN,
            None,
            &[format!("meta mark set meta mark | {mark}")],
        ),
        (
            "masquerading",
            None,
            &[
                format!("meta mark & {mark} == 0 return"),
                format!("meta mark set meta mark ^ {mark}"),
                "masquerade fully-random".into(),
            ],
        ),
        (
            "endpoints-check",
            None,
            &[
                format!(
                    "ip daddr . meta l4proto . th dport vmap @{}",
                    Map::NoEndpointServices.name()
                ),
                format!(
                    "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{}",
                    Map::NoEndpointNodePorts.name()
                ),
            ],
        ),
        // hostPorts first: a pod's hostPort wins over a NodePort of the same number, as the
        // portmap plugin's chain runs before kube-proxy's.
        (
            "services",
            None,
            &[
                format!(
                    "ip daddr . meta l4proto . th dport vmap @{}",
                    Map::HostIpPorts.name()
                ),
                format!(
                    "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{}",
                    Map::HostPorts.name()
                ),
                format!(
                    "ip daddr . meta l4proto . th dport vmap @{}",
                    Map::ServiceIps.name()
                ),
                format!(
                    "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{}",
                    Map::NodePorts.name()
                ),
            ],
        ),
        // Rejection happens before NAT (dstnat is -100) so it sees the service address; in
        // prerouting rather than forward, so it does not depend on a route to the service.
        (
            "filter-prerouting",
            Some("type filter hook prerouting priority -110 ; policy accept ;"),
            &["ct state new jump endpoints-check".into()],
        ),
        (
            "filter-output",
            Some("type filter hook output priority -110 ; policy accept ;"),
            &["ct state new jump endpoints-check".into()],
        ),
        (
            "nat-prerouting",
            Some("type nat hook prerouting priority -100 ; policy accept ;"),
            &["jump services".into()],
        ),
        (
            "nat-output",
            Some("type nat hook output priority -100 ; policy accept ;"),
            &["jump services".into()],
        ),
        (
            "nat-postrouting",
            Some("type nat hook postrouting priority 100 ; policy accept ;"),
            &["jump masquerading".into()],
        ),
    ];
    for (name, hook, rules) in chains {
        match hook {
            Some(h) => {
                let _ = writeln!(s, "add chain {t} {name} {{ {h} }}");
            }
            None => {
                let _ = writeln!(s, "add chain {t} {name}");
            }
        }
        for r in *rules {
            let _ = writeln!(s, "add rule {t} {name} {r}");
        }
    }
    s
}

/// Elements per `add element`/`delete element` command: large enough to be cheap, small
/// enough that an error message points near the culprit.
const ELEMENTS_PER_COMMAND: usize = 500;

fn element_commands(out: &mut String, verb: &str, t: &str, map: Map, items: &[String]) {
    for chunk in items.chunks(ELEMENTS_PER_COMMAND) {
        let _ = writeln!(
            out,
            "{verb} element {t} {} {{ {} }}",
            map.name(),
            chunk.join(", ")
        );
    }
}

/// One transaction taking the table from `old` to `new`, or "" when they are equal. The order
/// matters: references are dropped (elements deleted, chains flushed) before what they point
/// at is deleted, and what is referenced is created before whatever refers to it.
pub fn diff(old: &Ruleset, new: &Ruleset, table: &str) -> String {
    let t = format!("ip {table}");
    let mut out = String::new();
    let empty = BTreeMap::new();

    // Sets whose definition changed are recreated, so every chain using them is rewritten.
    let changed_sets: BTreeSet<&String> = old
        .sets
        .iter()
        .filter(|(name, def)| new.sets.get(*name).is_some_and(|d| d != *def))
        .map(|(name, _)| name)
        .collect();
    let uses_changed_set = |rules: &[String]| {
        changed_sets.iter().any(|set| {
            let r = format!("@{set} ");
            rules.iter().any(|rule| rule.contains(&r))
        })
    };
    let rewritten: BTreeSet<&String> = new
        .chains
        .iter()
        .filter(|(name, rules)| {
            old.chains
                .get(*name)
                .is_some_and(|o| o != *rules || uses_changed_set(o))
        })
        .map(|(name, _)| name)
        .collect();

    for map in Map::ALL {
        let (o, n) = (
            old.maps.get(&map).unwrap_or(&empty),
            new.maps.get(&map).unwrap_or(&empty),
        );
        let gone: Vec<String> = o
            .iter()
            .filter(|(k, v)| n.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        element_commands(&mut out, "delete", &t, map, &gone);
    }
    for name in old.chains.keys() {
        if rewritten.contains(name) || !new.chains.contains_key(name) {
            let _ = writeln!(out, "flush chain {t} {name}");
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            let _ = writeln!(out, "delete chain {t} {name}");
        }
    }
    for (name, def) in &old.sets {
        if new.sets.get(name) != Some(def) {
            let _ = writeln!(out, "delete set {t} {name}");
        }
    }
    for (name, def) in &new.sets {
        if old.sets.get(name) != Some(def) {
            let _ = writeln!(out, "add set {t} {name} {def}");
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            let _ = writeln!(out, "add chain {t} {name}");
        }
    }
    for (name, rules) in &new.chains {
        if !old.chains.contains_key(name) || rewritten.contains(name) {
            for r in rules {
                let _ = writeln!(out, "add rule {t} {name} {r}");
            }
        }
    }
    for map in Map::ALL {
        let (o, n) = (
            old.maps.get(&map).unwrap_or(&empty),
            new.maps.get(&map).unwrap_or(&empty),
        );
        let added: Vec<String> = n
            .iter()
            .filter(|(k, v)| o.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k} : {v}"))
            .collect();
        element_commands(&mut out, "add", &t, map, &added);
    }
    out
}

/// The whole table from scratch in one transaction: the old table (if any) is deleted and
/// the new one created atomically, so traffic never sees a missing table.
pub fn full(new: &Ruleset, settings: &Settings) -> String {
    let t = format!("ip {}", settings.table);
    let mut out = format!("add table {t}\ndelete table {t}\nadd table {t}\n");
    out.push_str(&skeleton(settings));
    out.push_str(&diff(&Ruleset::default(), new, &settings.table));
    out
}

/// Whether `name` is a table name nft accepts unquoted.
pub fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn settings() -> Settings {
        Settings {
            table: "skiff-proxy".into(),
            cluster_cidr: Some("10.42.0.0/16".parse().expect("cidr")),
            mark: 0x4000,
        }
    }

    fn key(name: &str) -> PortKey {
        PortKey {
            namespace: "default".into(),
            name: name.into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        }
    }

    fn ep(last: u8, local: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 42, 0, last),
            port: 8080,
            local,
        }
    }

    fn port(name: &str, endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            key: key(name),
            cluster_ips: vec![Ipv4Addr::new(10, 43, 0, 20)],
            port: 80,
            node_port: None,
            external_ips: vec![],
            affinity_timeout: None,
            external_policy: Policy::Cluster,
            internal_policy: Policy::Cluster,
            endpoints,
        }
    }

    fn names(rs: &Ruleset) -> Vec<String> {
        rs.chains
            .keys()
            .map(|n| {
                n.split_once('-')
                    .map(|(p, rest)| {
                        // Drop the hash: "svc-HASH-default/web/tcp/http" → "svc-default/web/tcp/http".
                        let readable = rest.split_once('-').map_or(rest, |(_, r)| r);
                        format!("{p}-{readable}")
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    fn chain<'a>(rs: &'a Ruleset, prefix: &str) -> &'a Vec<String> {
        rs.chains
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, r)| r)
            .unwrap_or_else(|| panic!("no chain {prefix}* in {:?}", rs.chains.keys()))
    }

    fn elements(rs: &Ruleset, map: Map) -> Vec<(String, String)> {
        rs.maps
            .get(&map)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.split('-').next().unwrap_or(v).to_string()))
            .collect()
    }

    #[test]
    fn cidr_parsing() {
        let c: Ipv4Cidr = "10.42.7.9/16".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().expect("cidr").len, 0);
        for bad in ["10.42.0.0", "10.42.0.0/33", "x/8", "10.42.0.0/"] {
            let err = bad.parse::<Ipv4Cidr>().expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn cluster_ip_balances_over_endpoints() {
        let rs = render(&[port("web", vec![ep(5, true), ep(6, false)])], &settings());
        assert_eq!(
            names(&rs),
            [
                "ep-default/web/tcp/http__10.42.0.5/8080",
                "ep-default/web/tcp/http__10.42.0.6/8080",
                "svc-default/web/tcp/http",
            ]
        );
        let svc = chain(&rs, "svc-");
        assert_eq!(svc.len(), 2);
        assert_eq!(
            svc[0],
            "ip daddr 10.43.0.20 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade"
        );
        assert!(
            svc[1].starts_with("numgen random mod 2 vmap { 0 : goto ep-"),
            "{}",
            svc[1]
        );
        assert!(
            svc[1].contains("__10.42.0.5/8080, 1 : goto ep-"),
            "{}",
            svc[1]
        );
        assert_eq!(
            chain(&rs, "ep-"),
            &vec![
                "ip saddr 10.42.0.5 jump mark-for-masquerade".to_string(),
                "meta l4proto tcp dnat to 10.42.0.5:8080".to_string(),
            ]
        );
        assert_eq!(
            elements(&rs, Map::ServiceIps),
            [("10.43.0.20 . tcp . 80".to_string(), "goto svc".to_string())]
        );
        assert!(rs.sets.is_empty());
    }

    #[test]
    fn no_endpoints_reject_everywhere() {
        let mut p = port("web", vec![]);
        p.node_port = Some(30080);
        p.external_ips = vec![Ipv4Addr::new(192, 0, 2, 1)];
        p.key.protocol = Protocol::Udp;
        let rs = render(&[p], &settings());
        assert!(rs.chains.is_empty());
        assert_eq!(
            elements(&rs, Map::NoEndpointServices),
            [
                (
                    "10.43.0.20 . udp . 80".to_string(),
                    "goto reject".to_string()
                ),
                (
                    "192.0.2.1 . udp . 80".to_string(),
                    "goto reject".to_string()
                ),
            ]
        );
        assert_eq!(
            elements(&rs, Map::NoEndpointNodePorts),
            [("udp . 30080".to_string(), "goto reject".to_string())]
        );
    }

    #[test]
    fn internal_local_without_local_endpoints_drops() {
        let mut p = port("web", vec![ep(6, false)]);
        p.internal_policy = Policy::Local;
        let rs = render(&[p.clone()], &settings());
        assert!(elements(&rs, Map::ServiceIps).is_empty());
        assert_eq!(
            elements(&rs, Map::NoEndpointServices),
            [("10.43.0.20 . tcp . 80".to_string(), "drop".to_string())]
        );
        p.endpoints.push(ep(5, true));
        let rs = render(&[p], &settings());
        assert_eq!(
            elements(&rs, Map::ServiceIps),
            [("10.43.0.20 . tcp . 80".to_string(), "goto svl".to_string())]
        );
        let svl = chain(&rs, "svl-");
        assert_eq!(svl.len(), 1);
        assert!(svl[0].starts_with("numgen random mod 1 vmap { 0 : goto ep-"));
        assert!(svl[0].ends_with("__10.42.0.5/8080 }"), "{}", svl[0]);
    }

    #[test]
    fn external_traffic_policies() {
        let mut p = port("web", vec![ep(5, true), ep(6, false)]);
        p.node_port = Some(30080);
        p.external_ips = vec![Ipv4Addr::new(192, 0, 2, 1)];
        let rs = render(&[p.clone()], &settings());
        let ext = chain(&rs, "ext-");
        assert_eq!(ext[0], "jump mark-for-masquerade");
        assert!(ext[1].starts_with("goto svc-"));
        assert_eq!(
            elements(&rs, Map::NodePorts),
            [("tcp . 30080".to_string(), "goto ext".to_string())]
        );
        assert_eq!(
            elements(&rs, Map::ServiceIps),
            [
                ("10.43.0.20 . tcp . 80".to_string(), "goto svc".to_string()),
                ("192.0.2.1 . tcp . 80".to_string(), "goto ext".to_string()),
            ]
        );

        p.external_policy = Policy::Local;
        let rs = render(&[p.clone()], &settings());
        let ext = chain(&rs, "ext-");
        assert!(
            ext[0].starts_with("ip saddr 10.42.0.0/16 goto svc-"),
            "{}",
            ext[0]
        );
        assert_eq!(ext[1], "fib saddr type local jump mark-for-masquerade");
        assert!(ext[2].starts_with("fib saddr type local goto svc-"));
        assert!(ext[3].starts_with("goto svl-"));
        assert!(rs.chains.keys().any(|n| n.starts_with("svl-")));

        // No local endpoint: outside traffic is dropped, pods and the node still get through.
        p.endpoints = vec![ep(6, false)];
        let rs = render(&[p], &settings());
        assert_eq!(chain(&rs, "ext-").last().map(String::as_str), Some("drop"));
        assert!(!rs.chains.keys().any(|n| n.starts_with("svl-")));
    }

    #[test]
    fn affinity_sets_per_endpoint() {
        let mut p = port("web", vec![ep(5, true), ep(6, false)]);
        p.affinity_timeout = Some(60);
        let rs = render(&[p], &settings());
        assert_eq!(rs.sets.len(), 2);
        let (set, def) = rs.sets.iter().next().expect("a set");
        assert!(
            set.starts_with("aff-") && set.ends_with("__10.42.0.5/8080"),
            "{set}"
        );
        assert_eq!(
            def,
            "{ type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }"
        );
        let svc = chain(&rs, "svc-");
        assert!(
            svc[1].starts_with(&format!("ip saddr @{set} goto ep-")),
            "{}",
            svc[1]
        );
        assert!(svc[3].starts_with("numgen"));
        assert_eq!(
            chain(&rs, "ep-")[1],
            format!("update @{set} {{ ip saddr }}")
        );
    }

    #[test]
    fn no_cluster_cidr_means_no_masquerade_for_off_cluster_clients() {
        let s = Settings {
            cluster_cidr: None,
            ..settings()
        };
        let rs = render(&[port("web", vec![ep(5, true)])], &s);
        assert_eq!(chain(&rs, "svc-").len(), 1);
    }

    #[test]
    fn names_are_valid_and_bounded() {
        let mut p = port("web", vec![ep(5, true)]);
        p.key.name = "x".repeat(300);
        p.key.port = "we!rd port".into();
        let rs = render(&[p], &settings());
        for name in rs.chains.keys() {
            assert!(name.len() <= 255, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)),
                "{name}"
            );
        }
    }

    #[test]
    fn diff_of_equal_rulesets_is_empty() {
        let rs = render(&[port("web", vec![ep(5, true)])], &settings());
        assert_eq!(diff(&rs, &rs, "skiff-proxy"), "");
    }

    fn lines(script: &str) -> Vec<String> {
        // Hashes make names long; tests compare with them cut out.
        script
            .lines()
            .map(|l| {
                l.split(' ')
                    .map(|w| match w.split_once('-') {
                        Some((p @ ("svc" | "svl" | "ext" | "ep" | "aff" | "@aff"), rest))
                            if rest.len() > 9 =>
                        {
                            format!("{p}-{}", &rest[9..])
                        }
                        _ => w.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn adding_an_endpoint_touches_only_its_service() {
        let s = settings();
        let before = render(
            &[
                port("web", vec![ep(5, true)]),
                port("api", vec![ep(9, true)]),
            ],
            &s,
        );
        let after = render(
            &[
                port("web", vec![ep(5, true), ep(6, false)]),
                port("api", vec![ep(9, true)]),
            ],
            &s,
        );
        let script = diff(&before, &after, "skiff-proxy");
        assert_eq!(
            lines(&script),
            [
                "flush chain ip skiff-proxy svc-default/web/tcp/http",
                "add chain ip skiff-proxy ep-default/web/tcp/http__10.42.0.6/8080",
                "add rule ip skiff-proxy ep-default/web/tcp/http__10.42.0.6/8080 ip saddr 10.42.0.6 jump mark-for-masquerade",
                "add rule ip skiff-proxy ep-default/web/tcp/http__10.42.0.6/8080 meta l4proto tcp dnat to 10.42.0.6:8080",
                "add rule ip skiff-proxy svc-default/web/tcp/http ip daddr 10.43.0.20 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade",
                "add rule ip skiff-proxy svc-default/web/tcp/http numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/http__10.42.0.5/8080, 1 : goto ep-default/web/tcp/http__10.42.0.6/8080 }",
            ]
        );
    }

    #[test]
    fn losing_all_endpoints_swaps_map_entries_and_deletes_chains() {
        let s = settings();
        let before = render(&[port("web", vec![ep(5, true)])], &s);
        let after = render(&[port("web", vec![])], &s);
        assert_eq!(
            lines(&diff(&before, &after, "skiff-proxy")),
            [
                "delete element ip skiff-proxy service-ips { 10.43.0.20 . tcp . 80 }",
                "flush chain ip skiff-proxy ep-default/web/tcp/http__10.42.0.5/8080",
                "flush chain ip skiff-proxy svc-default/web/tcp/http",
                "delete chain ip skiff-proxy ep-default/web/tcp/http__10.42.0.5/8080",
                "delete chain ip skiff-proxy svc-default/web/tcp/http",
                "add element ip skiff-proxy no-endpoint-services { 10.43.0.20 . tcp . 80 : goto reject-chain }",
            ]
        );
    }

    #[test]
    fn changed_affinity_timeout_recreates_sets_after_flushing_users() {
        let s = settings();
        let mut p = port("web", vec![ep(5, true)]);
        p.affinity_timeout = Some(60);
        let before = render(std::slice::from_ref(&p), &s);
        p.affinity_timeout = Some(120);
        let after = render(&[p], &s);
        let got = lines(&diff(&before, &after, "skiff-proxy"));
        let pos = |needle: &str| {
            got.iter()
                .position(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {got:#?}"))
        };
        let flush_ep = pos("flush chain ip skiff-proxy ep-");
        let flush_svc = pos("flush chain ip skiff-proxy svc-");
        let delete = pos("delete set ip skiff-proxy aff-");
        let add = pos("add set ip skiff-proxy aff-");
        let rule = pos("add rule ip skiff-proxy ep-");
        assert!(flush_ep < delete && flush_svc < delete && delete < add && add < rule);
        assert!(got[add].ends_with("timeout 120s ; }"));
    }

    #[test]
    fn full_script_recreates_the_table() {
        let s = settings();
        let rs = render(&[port("web", vec![ep(5, true)])], &s);
        let script = full(&rs, &s);
        let l: Vec<&str> = script.lines().collect();
        assert_eq!(
            l[..3],
            [
                "add table ip skiff-proxy",
                "delete table ip skiff-proxy",
                "add table ip skiff-proxy"
            ]
        );
        assert!(
            script.contains("add rule ip skiff-proxy masquerading meta mark & 0x4000 == 0 return")
        );
        assert!(script.contains(
            "add element ip skiff-proxy service-ips { 10.43.0.20 . tcp . 80 : goto svc-"
        ));
        // Elements come last, after the chains they point to.
        let chain_at = script
            .find("add chain ip skiff-proxy svc-")
            .expect("svc chain");
        let elem_at = script
            .find("add element ip skiff-proxy service-ips")
            .expect("element");
        assert!(chain_at < elem_at);
    }

    #[test]
    fn table_names() {
        assert!(valid_table_name("skiff-proxy"));
        assert!(valid_table_name("t_1"));
        for bad in ["", "1t", "a b", "a;b", "x\ny", &"a".repeat(65)] {
            assert!(!valid_table_name(bad), "{bad:?}");
        }
    }
}
