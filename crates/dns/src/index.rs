//! The cluster's DNS records as an in-memory index of Services, EndpointSlices and Namespaces,
//! updated one object at a time and answering a question without touching the API.
//!
//! Names follow the Kubernetes DNS specification (schema 1.1.0, as CoreDNS serves it) and
//! CoreDNS's `kubernetes` plugin with `pods insecure` where the two leave room:
//! - `<svc>.<ns>.svc.<zone>`: the ClusterIPs, a headless Service's ready endpoint addresses
//!   (none ready: NXDOMAIN), or an ExternalName's CNAME.
//! - `<endpoint>.<svc>.<ns>.svc.<zone>`: one ready endpoint, named by its `hostname` or, without
//!   one, its address with `.`/`:` turned into `-` (CoreDNS resolves these for any Service with
//!   endpoints, not only headless ones).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV: the Service's port (target: the Service) or,
//!   headless, one record per ready endpoint (target: its endpoint name); the SRV targets'
//!   addresses go in the additional section. SRV at a bare Service or endpoint name lists every
//!   port.
//! - `<a-b-c-d>.<ns>.pod.<zone>`: any well-formed dashed address in an existing namespace.
//! - PTR: a ClusterIP names its Service; otherwise a ready endpoint address names its endpoint
//!   name under each Service it backs.
//! - `dns-version.<zone>` TXT, the apex SOA and NS (`ns.dns.<zone>`, whose addresses are the
//!   server's own).
//! - Intermediate names that exist (`svc.<zone>`, `<ns>.svc.<zone>` for an existing namespace)
//!   and names with records of other types answer NODATA; the rest of the zone is NXDOMAIN.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The schema version `dns-version.<zone>` reports (CoreDNS's).
pub const SCHEMA_VERSION: &str = "1.1.0";
/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// CoreDNS serves `dns-version` with this TTL whatever the zone's.
const VERSION_TTL: u32 = 28800;

/// `(namespace, name)` of a Service or an EndpointSlice.
type Key = (String, String);

/// What a question resolved to.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The name exists; these are its records of the asked type (none: NODATA), and what the
    /// additional section should carry (SRV targets' addresses, the NS's addresses).
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name is an alias (an ExternalName Service): its CNAME, whose target a resolver may
    /// follow for the asked type.
    Alias { cname: Box<Record>, target: Name },
    /// Under the cluster zone, but no such name.
    NxDomain,
    /// Neither under the cluster zone nor a known address's reverse name: another server's
    /// business.
    NotOurs,
}

impl Lookup {
    fn nodata() -> Lookup {
        Lookup::Records {
            answers: Vec::new(),
            additionals: Vec::new(),
        }
    }

    fn answers(answers: Vec<Record>) -> Lookup {
        Lookup::Records {
            answers,
            additionals: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(Name),
    /// No address allocated yet, or an ExternalName that is not a domain name: no records.
    Nothing,
}

#[derive(Debug, Clone, PartialEq)]
struct Port {
    /// Lowercase; empty for an unnamed port.
    name: String,
    /// Lowercase (`tcp`, `udp`, `sctp`).
    protocol: String,
    number: u16,
}

#[derive(Debug)]
struct Svc {
    kind: Kind,
    ports: Vec<Port>,
    publish_not_ready: bool,
}

#[derive(Debug)]
struct Endpoint {
    addresses: Vec<IpAddr>,
    /// Lowercase.
    hostname: Option<String>,
    ready: bool,
}

#[derive(Debug)]
struct Slice {
    service: String,
    ports: Vec<Port>,
    endpoints: Vec<Endpoint>,
}

/// One ready endpoint address of a Service with its DNS label.
struct Backend<'a> {
    label: String,
    address: IpAddr,
    ports: &'a [Port],
}

/// The records of one cluster zone.
#[derive(Debug)]
pub struct Index {
    zone: Name,
    ttl: u32,
    /// The server's own addresses: `ns.dns.<zone>`.
    ns_addrs: Vec<IpAddr>,
    namespaces: HashSet<String>,
    services: HashMap<Key, Svc>,
    slices: HashMap<Key, Slice>,
    /// A Service's key → the names of the EndpointSlices labelled with it.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Reverse maps: a ClusterIP → its Services; an endpoint address → the slices holding it.
    cluster_ips: HashMap<IpAddr, BTreeSet<Key>>,
    endpoint_ips: HashMap<IpAddr, BTreeSet<Key>>,
    /// The SOA serial: bumped by every change.
    serial: u32,
}

impl Index {
    /// An empty index of `zone` (e.g. `cluster.local`), answering with `ttl` seconds and naming
    /// `ns_addrs` as the server's addresses.
    pub fn new(zone: &Name, ttl: u32, ns_addrs: Vec<IpAddr>) -> Index {
        let mut zone = zone.to_lowercase();
        zone.set_fqdn(true);
        Index {
            zone,
            ttl,
            ns_addrs,
            namespaces: HashSet::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            cluster_ips: HashMap::new(),
            endpoint_ips: HashMap::new(),
            serial: 1,
        }
    }

    /// The zone's apex.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    fn changed(&mut self) {
        self.serial = self.serial.wrapping_add(1).max(1);
    }

    pub fn apply_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = &ns.metadata.name {
            self.namespaces.insert(name.clone());
            self.changed();
        }
    }

    pub fn delete_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = &ns.metadata.name {
            self.namespaces.remove(name);
            self.changed();
        }
    }

    pub fn apply_service(&mut self, svc: &Service) {
        let Some(key) = key_of(&svc.metadata) else {
            return;
        };
        self.remove_service(&key);
        let parsed = parse_service(svc);
        if let Kind::ClusterIp(ips) = &parsed.kind {
            for ip in ips {
                self.cluster_ips.entry(*ip).or_default().insert(key.clone());
            }
        }
        self.services.insert(key, parsed);
        self.changed();
    }

    pub fn delete_service(&mut self, svc: &Service) {
        if let Some(key) = key_of(&svc.metadata) {
            self.remove_service(&key);
            self.changed();
        }
    }

    fn remove_service(&mut self, key: &Key) {
        if let Some(Svc {
            kind: Kind::ClusterIp(ips),
            ..
        }) = self.services.remove(key)
        {
            for ip in ips {
                remove_from(&mut self.cluster_ips, ip, key);
            }
        }
    }

    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let Some(key) = key_of(&slice.metadata) else {
            return;
        };
        self.remove_slice(&key);
        let Some(parsed) = parse_slice(slice) else {
            self.changed();
            return;
        };
        for ep in &parsed.endpoints {
            for ip in &ep.addresses {
                self.endpoint_ips
                    .entry(*ip)
                    .or_default()
                    .insert(key.clone());
            }
        }
        self.slices_of
            .entry((key.0.clone(), parsed.service.clone()))
            .or_default()
            .insert(key.1.clone());
        self.slices.insert(key, parsed);
        self.changed();
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        if let Some(key) = key_of(&slice.metadata) {
            self.remove_slice(&key);
            self.changed();
        }
    }

    fn remove_slice(&mut self, key: &Key) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        for ep in &old.endpoints {
            for ip in &ep.addresses {
                remove_from(&mut self.endpoint_ips, *ip, key);
            }
        }
        let svc_key = (key.0.clone(), old.service);
        if let Some(names) = self.slices_of.get_mut(&svc_key) {
            names.remove(&key.1);
            if names.is_empty() {
                self.slices_of.remove(&svc_key);
            }
        }
    }

    /// The zone's SOA record (for the authority section of negative answers).
    pub fn soa(&self) -> Record {
        let mname = self.child(&["ns", "dns"]);
        let rname = self.child(&["hostmaster"]);
        let soa = SOA::new(mname, rname, self.serial, 7200, 1800, 86400, self.ttl);
        Record::from_rdata(self.zone.clone(), self.ttl, RData::SOA(soa))
    }

    /// Answers `qtype` for `name` (any case; answers are owned by `name` as asked).
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        if self.zone.zone_of(name) {
            let depth = name.iter().len() - self.zone.iter().len();
            let mut labels = Vec::with_capacity(depth);
            for label in name.iter().take(depth) {
                match std::str::from_utf8(label) {
                    Ok(l) => labels.push(l.to_ascii_lowercase()),
                    // No Kubernetes name has such a label.
                    Err(_) => return Lookup::NxDomain,
                }
            }
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            return self.lookup_zone(name, &labels, qtype);
        }
        match reverse_address(name) {
            Some(ip) => self.lookup_reverse(name, ip, qtype),
            None => Lookup::NotOurs,
        }
    }

    fn lookup_zone(&self, name: &Name, labels: &[&str], qtype: RecordType) -> Lookup {
        match labels {
            [] => self.apex(name, qtype),
            ["dns-version"] => match qtype {
                RecordType::TXT | RecordType::ANY => Lookup::answers(vec![Record::from_rdata(
                    name.clone(),
                    VERSION_TTL,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
                )]),
                _ => Lookup::nodata(),
            },
            ["dns"] | ["svc"] | ["pod"] => Lookup::nodata(),
            ["ns", "dns"] => Lookup::answers(self.addresses(name, &self.ns_addrs, qtype)),
            [.., ns, "svc" | "pod"] if !self.namespaces.contains(*ns) => Lookup::NxDomain,
            [_ns, "svc" | "pod"] => Lookup::nodata(),
            [service, ns, "svc"] => self.service(name, ns, service, qtype),
            [endpoint, service, ns, "svc"] => self.endpoint(name, ns, service, endpoint, qtype),
            [port, proto, service, ns, "svc"] => {
                let (port, proto) = (strip_underscore(port), strip_underscore(proto));
                self.srv(name, ns, service, port, proto, qtype)
            }
            [pod, _ns, "pod"] => self.pod(name, pod, qtype),
            _ => Lookup::NxDomain,
        }
    }

    fn apex(&self, name: &Name, qtype: RecordType) -> Lookup {
        let ns = self.child(&["ns", "dns"]);
        match qtype {
            RecordType::SOA => {
                let mut soa = self.soa();
                soa.name = name.clone();
                Lookup::answers(vec![soa])
            }
            RecordType::NS => Lookup::Records {
                answers: vec![Record::from_rdata(
                    name.clone(),
                    self.ttl,
                    RData::NS(NS(ns.clone())),
                )],
                additionals: self.addresses(&ns, &self.ns_addrs, RecordType::ANY),
            },
            _ => Lookup::nodata(),
        }
    }

    fn service(&self, name: &Name, ns: &str, service: &str, qtype: RecordType) -> Lookup {
        let key = (ns.to_string(), service.to_string());
        let Some(svc) = self.services.get(&key) else {
            return Lookup::NxDomain;
        };
        match &svc.kind {
            Kind::Nothing => Lookup::NxDomain,
            Kind::ExternalName(target) => Lookup::Alias {
                cname: Box::new(Record::from_rdata(
                    name.clone(),
                    self.ttl,
                    RData::CNAME(CNAME(target.clone())),
                )),
                target: target.clone(),
            },
            Kind::ClusterIp(ips) => match qtype {
                RecordType::SRV => {
                    let target = self.service_name(ns, service);
                    let srvs = svc
                        .ports
                        .iter()
                        .map(|p| (p.number, target.clone()))
                        .collect();
                    Lookup::Records {
                        answers: self.srv_records(name, srvs),
                        additionals: self.addresses(&target, ips, RecordType::ANY),
                    }
                }
                _ => Lookup::answers(self.addresses(name, ips, qtype)),
            },
            Kind::Headless => {
                let backends = self.backends(&key, svc);
                if backends.is_empty() {
                    return Lookup::NxDomain;
                }
                match qtype {
                    RecordType::SRV => self.backend_srvs(name, ns, service, &backends, |_| true),
                    _ => {
                        let ips: Vec<IpAddr> = backends.iter().map(|b| b.address).collect();
                        Lookup::answers(self.addresses(name, &ips, qtype))
                    }
                }
            }
        }
    }

    fn endpoint(
        &self,
        name: &Name,
        ns: &str,
        service: &str,
        endpoint: &str,
        qtype: RecordType,
    ) -> Lookup {
        let key = (ns.to_string(), service.to_string());
        let Some(svc) = self.services.get(&key) else {
            return Lookup::NxDomain;
        };
        let mut backends = self.backends(&key, svc);
        backends.retain(|b| b.label == endpoint);
        if backends.is_empty() {
            return Lookup::NxDomain;
        }
        match qtype {
            RecordType::SRV => self.backend_srvs(name, ns, service, &backends, |_| true),
            _ => {
                let ips: Vec<IpAddr> = backends.iter().map(|b| b.address).collect();
                Lookup::answers(self.addresses(name, &ips, qtype))
            }
        }
    }

    fn srv(
        &self,
        name: &Name,
        ns: &str,
        service: &str,
        port: &str,
        proto: &str,
        qtype: RecordType,
    ) -> Lookup {
        let key = (ns.to_string(), service.to_string());
        let Some(svc) = self.services.get(&key) else {
            return Lookup::NxDomain;
        };
        let matches = |p: &Port| !p.name.is_empty() && p.name == port && p.protocol == proto;
        let found = match &svc.kind {
            Kind::ClusterIp(ips) => {
                let target = self.service_name(ns, service);
                let srvs: Vec<(u16, Name)> = svc
                    .ports
                    .iter()
                    .filter(|p| matches(p))
                    .map(|p| (p.number, target.clone()))
                    .collect();
                (!srvs.is_empty()).then(|| Lookup::Records {
                    answers: self.srv_records(name, srvs),
                    additionals: self.addresses(&target, ips, RecordType::ANY),
                })
            }
            Kind::Headless => {
                let backends = self.backends(&key, svc);
                match self.backend_srvs(name, ns, service, &backends, matches) {
                    Lookup::Records { answers, .. } if answers.is_empty() => None,
                    found => Some(found),
                }
            }
            Kind::ExternalName(_) | Kind::Nothing => None,
        };
        match found {
            None => Lookup::NxDomain,
            Some(_) if !matches!(qtype, RecordType::SRV | RecordType::ANY) => Lookup::nodata(),
            Some(found) => found,
        }
    }

    fn pod(&self, name: &Name, label: &str, qtype: RecordType) -> Lookup {
        // CoreDNS's reading: three dashes and no "--" is IPv4, anything else IPv6.
        let ip = if label.matches('-').count() == 3 && !label.contains("--") {
            label.replace('-', ".").parse::<Ipv4Addr>().map(IpAddr::V4)
        } else {
            label.replace('-', ":").parse::<Ipv6Addr>().map(IpAddr::V6)
        };
        match ip {
            Ok(ip) => Lookup::answers(self.addresses(name, &[ip], qtype)),
            Err(_) => Lookup::NxDomain,
        }
    }

    fn lookup_reverse(&self, name: &Name, ip: IpAddr, qtype: RecordType) -> Lookup {
        let mut targets: BTreeSet<Name> = BTreeSet::new();
        // A ClusterIP names its Service (the first, should two claim it); only addresses that
        // are no ClusterIP name endpoints.
        if let Some((ns, svc)) = self.cluster_ips.get(&ip).and_then(|keys| keys.first()) {
            targets.insert(self.service_name(ns, svc));
        } else {
            let services: BTreeSet<Key> = self
                .endpoint_ips
                .get(&ip)
                .into_iter()
                .flatten()
                .filter_map(|slice_key| {
                    let slice = self.slices.get(slice_key)?;
                    Some((slice_key.0.clone(), slice.service.clone()))
                })
                .collect();
            for key in services {
                let Some(svc) = self.services.get(&key) else {
                    continue;
                };
                for b in self.backends(&key, svc) {
                    if b.address == ip
                        && let Some(target) = self.endpoint_name(&b.label, &key.0, &key.1)
                    {
                        targets.insert(target);
                    }
                }
            }
        }
        if targets.is_empty() {
            return Lookup::NotOurs;
        }
        match qtype {
            RecordType::PTR | RecordType::ANY => Lookup::answers(
                targets
                    .into_iter()
                    .map(|t| Record::from_rdata(name.clone(), self.ttl, RData::PTR(PTR(t))))
                    .collect(),
            ),
            _ => Lookup::nodata(),
        }
    }

    /// The ready endpoint addresses of a Service (not an ExternalName), each with its label,
    /// deduplicated, in a stable order.
    fn backends<'a>(&'a self, key: &Key, svc: &Svc) -> Vec<Backend<'a>> {
        if matches!(svc.kind, Kind::ExternalName(_)) {
            return Vec::new();
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for slice_name in self.slices_of.get(key).into_iter().flatten() {
            let Some(slice) = self.slices.get(&(key.0.clone(), slice_name.clone())) else {
                continue;
            };
            for ep in &slice.endpoints {
                if !(ep.ready || svc.publish_not_ready) {
                    continue;
                }
                for ip in &ep.addresses {
                    let label = ep.hostname.clone().unwrap_or_else(|| dashed(*ip));
                    if seen.insert((label.clone(), *ip)) {
                        out.push(Backend {
                            label,
                            address: *ip,
                            ports: &slice.ports,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.label, a.address).cmp(&(&b.label, b.address)));
        out
    }

    /// SRV records for `backends`' ports that `want`, each endpoint as the target, with the
    /// targets' addresses as additionals.
    fn backend_srvs(
        &self,
        name: &Name,
        ns: &str,
        service: &str,
        backends: &[Backend<'_>],
        want: impl Fn(&Port) -> bool,
    ) -> Lookup {
        let mut srvs = Vec::new();
        let mut additionals = Vec::new();
        for b in backends {
            let Some(target) = self.endpoint_name(&b.label, ns, service) else {
                continue;
            };
            let mut any = false;
            for p in b.ports.iter().filter(|p| want(p)) {
                if !srvs.contains(&(p.number, target.clone())) {
                    srvs.push((p.number, target.clone()));
                }
                any = true;
            }
            if any {
                additionals.extend(self.addresses(&target, &[b.address], RecordType::ANY));
            }
        }
        Lookup::Records {
            answers: self.srv_records(name, srvs),
            additionals,
        }
    }

    /// SRV records at `name`, priority 0 and equal weights summing to about 100 (CoreDNS's).
    fn srv_records(&self, name: &Name, srvs: Vec<(u16, Name)>) -> Vec<Record> {
        let weight = u16::try_from(100 / srvs.len().max(1)).unwrap_or(1).max(1);
        srvs.into_iter()
            .map(|(port, target)| {
                Record::from_rdata(
                    name.clone(),
                    self.ttl,
                    RData::SRV(SRV::new(0, weight, port, target)),
                )
            })
            .collect()
    }

    /// A/AAAA records at `name` for the addresses of the family `qtype` asks (ANY: both).
    fn addresses(&self, name: &Name, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
        let mut seen = HashSet::new();
        ips.iter()
            .filter(|ip| seen.insert(**ip))
            .filter_map(|ip| {
                let data = match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
                    _ => return None,
                };
                Some(Record::from_rdata(name.clone(), self.ttl, data))
            })
            .collect()
    }

    /// `<labels...>.<zone>`; names built from the API's objects are valid, so a failure only
    /// drops the record.
    fn child(&self, labels: &[&str]) -> Name {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone())
    }

    fn service_name(&self, ns: &str, service: &str) -> Name {
        self.child(&[service, ns, "svc"])
    }

    fn endpoint_name(&self, label: &str, ns: &str, service: &str) -> Option<Name> {
        Name::from_labels([label, service, ns, "svc"].iter().map(|l| l.as_bytes()))
            .and_then(|n| n.append_domain(&self.zone))
            .ok()
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn remove_from(map: &mut HashMap<IpAddr, BTreeSet<Key>>, ip: IpAddr, key: &Key) {
    if let Some(keys) = map.get_mut(&ip) {
        keys.remove(key);
        if keys.is_empty() {
            map.remove(&ip);
        }
    }
}

fn parse_service(svc: &Service) -> Svc {
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        spec.external_name
            .as_deref()
            .map(|n| n.trim_end_matches('.'))
            // An address is no alias target: CoreDNS serves no record for it either.
            .filter(|n| !n.is_empty() && n.parse::<IpAddr>().is_err())
            .and_then(|n| Name::from_ascii(n).ok())
            .map(|mut n| {
                n.set_fqdn(true);
                Kind::ExternalName(n)
            })
            .unwrap_or(Kind::Nothing)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        Kind::Headless
    } else {
        let listed = spec.cluster_ips.unwrap_or_default();
        let ips: Vec<IpAddr> = if listed.is_empty() {
            spec.cluster_ip.into_iter().collect::<Vec<_>>()
        } else {
            listed
        }
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
        if ips.is_empty() {
            Kind::Nothing
        } else {
            Kind::ClusterIp(ips)
        }
    };
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(Port {
                name: p.name.unwrap_or_default().to_ascii_lowercase(),
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                number: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    Svc {
        kind,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
    }
}

/// The slice's service and endpoints; `None` for a slice of no Service (no label) or of FQDN
/// addresses, which DNS does not serve.
fn parse_slice(slice: &EndpointSlice) -> Option<Slice> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                number: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|ep| Endpoint {
            addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: ep
                .hostname
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase()),
            // Unset means ready (the API's documented reading for consumers).
            ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        })
        .collect();
    Some(Slice {
        service,
        ports,
        endpoints,
    })
}

/// An address as a DNS label: `10-42-0-5`, `fd00--5`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn strip_underscore(label: &str) -> &str {
    label.strip_prefix('_').unwrap_or(label)
}

/// The address a reverse name (`d.c.b.a.in-addr.arpa.`, 32 nibbles `.ip6.arpa.`) stands for.
fn reverse_address(name: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let lower = |l: &[u8]| l.to_ascii_lowercase();
    match labels.as_slice() {
        [d, c, b, a, in_addr, arpa] if lower(in_addr) == b"in-addr" && lower(arpa) == b"arpa" => {
            let octet = |l: &[u8]| -> Option<u8> {
                let s = std::str::from_utf8(l).ok()?;
                // One canonical spelling per address: no leading zeros, no sign.
                if s.is_empty()
                    || (s.len() > 1 && s.starts_with('0'))
                    || !s.bytes().all(|c| c.is_ascii_digit())
                {
                    return None;
                }
                s.parse().ok()
            };
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., ip6, arpa]
            if nibbles.len() == 32 && lower(ip6) == b"ip6" && lower(arpa) == b"arpa" =>
        {
            let mut value: u128 = 0;
            for nibble in nibbles.iter().rev() {
                let [digit] = nibble else { return None };
                let digit = (*digit as char).to_digit(16)?;
                value = (value << 4) | u128::from(digit);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
