//! Service cluster IPs and node ports: what kube-apiserver's Service registry allocates around
//! every Service write (upstream `pkg/registry/core/service/storage/alloc.go` with its IP and
//! port allocators), and the Service-specific update strategy that decides what a write keeps,
//! takes and gives back.
//!
//! The store is the source of truth; nothing but the Services themselves is persisted. At start
//! the allocated sets are rebuilt from the stored Services (`restore`). Afterwards every write
//! that takes or frees an address or a port carries a [`Txn`] in the same code path as its
//! store write: what the write takes is marked before the write and given back if the write
//! fails or conflicts (the `Txn` is dropped), what it frees is given back only once the write
//! is durable (`Txn::commit`). A crash between the two steps leaks nothing and duplicates
//! nothing: the next start sees only what the store holds.
//!
//! Dynamic allocations prefer the upper part of each range (upstream's KEP-3070 and KEP-3668):
//! addresses and ports that are requested by number, such as the `kubernetes` Service's first
//! address and the cluster DNS address, sit in the lower band and stay free for their owners.
//!
//! Single-stack IPv4 only: IPv6 families and dual-stack policies are refused with upstream's
//! messages for a cluster that is not configured for them.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use api::validation::FieldError;
use rand::Rng;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::rest::Ctx;
use crate::server::ApiServer;

pub use ipnet::Ipv4Net;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bad configuration of the ranges.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid service CIDR {input:?}: {reason}")]
    ServiceCidr { input: String, reason: String },
    #[error("invalid node port range {input:?}: {reason}")]
    PortRange { input: String, reason: &'static str },
    #[error("cluster DNS address {dns} is not a usable address of the service CIDR {cidr}")]
    DnsOutsideRange { dns: Ipv4Addr, cidr: Ipv4Net },
    #[error(
        "cluster DNS address {dns} is the first address of the service CIDR {cidr}, which belongs to the kubernetes Service"
    )]
    DnsIsKubernetes { dns: Ipv4Addr, cidr: Ipv4Net },
}

/// Upstream refuses IPv4 service CIDRs larger than a /12.
const MIN_PREFIX: u8 = 12;
/// A /30 holds two usable addresses: the `kubernetes` Service's and the cluster DNS.
const MAX_PREFIX: u8 = 30;

/// Parses a service CIDR such as `10.43.0.0/16` (IPv4, no host bits, /12 to /30).
pub fn parse_service_cidr(s: &str) -> Result<Ipv4Net> {
    let bad = |reason: String| Error::ServiceCidr {
        input: s.to_string(),
        reason,
    };
    let net: ipnet::IpNet = s
        .parse()
        .map_err(|_| bad("expected an IPv4 prefix such as 10.43.0.0/16".into()))?;
    let ipnet::IpNet::V4(net) = net else {
        return Err(bad("only IPv4 service CIDRs are supported".into()));
    };
    check_cidr(net).map_err(bad)?;
    Ok(net)
}

fn check_cidr(net: Ipv4Net) -> std::result::Result<(), String> {
    if net.addr() != net.network() {
        return Err(format!("host bits are set (the prefix is {})", net.trunc()));
    }
    if net.prefix_len() < MIN_PREFIX {
        return Err(format!("larger than /{MIN_PREFIX}, the most allowed"));
    }
    if net.prefix_len() > MAX_PREFIX {
        return Err(format!(
            "smaller than /{MAX_PREFIX}: no room for the kubernetes and DNS Services"
        ));
    }
    Ok(())
}

/// An inclusive range of node ports, written `30000-32767` (or upstream's `30000+2767`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Option<PortRange> {
        (first >= 1 && first <= last).then_some(PortRange { first, last })
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    pub fn contains(&self, port: i64) -> bool {
        (i64::from(self.first)..=i64::from(self.last)).contains(&port)
    }

    fn size(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            first: 30000,
            last: 32767,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::PortRange {
            input: s.to_string(),
            reason,
        };
        let port = |p: &str| -> Result<u16> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("expected <first>-<last>, such as 30000-32767"));
            }
            p.parse()
                .map_err(|_| bad("a port is not a number from 1 to 65535"))
        };
        let (first, last) = if let Some((a, b)) = s.split_once('-') {
            (port(a)?, port(b)?)
        } else if let Some((a, n)) = s.split_once('+') {
            let a = port(a)?;
            let n = port(n)?;
            (
                a,
                a.checked_add(n)
                    .ok_or_else(|| bad("the range ends past 65535"))?,
            )
        } else {
            return Err(bad("expected <first>-<last>, such as 30000-32767"));
        };
        if first == 0 {
            return Err(bad("a port is not a number from 1 to 65535"));
        }
        PortRange::new(first, last).ok_or_else(|| bad("the first port is above the last"))
    }
}

/// Where Services get their addresses and node ports from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    /// Cluster IPs (upstream `--service-cluster-ip-range`). Its first address is the
    /// `kubernetes` Service's.
    pub service_cidr: Ipv4Net,
    /// Node ports (upstream `--service-node-port-range`).
    pub node_ports: PortRange,
    /// The `kube-system/kube-dns` Service's address (the kubelet's `--cluster-dns`).
    pub cluster_dns: Ipv4Addr,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges {
            service_cidr: Ipv4Net::new(Ipv4Addr::new(10, 43, 0, 0), 16)
                .unwrap_or_else(|_| unreachable!("16 is a valid prefix length")),
            node_ports: PortRange::default(),
            cluster_dns: Ipv4Addr::new(10, 43, 0, 10),
        }
    }
}

impl Ranges {
    /// Checks that the ranges fit together.
    pub fn check(&self) -> Result<()> {
        let cidr = self.service_cidr;
        check_cidr(cidr).map_err(|reason| Error::ServiceCidr {
            input: cidr.to_string(),
            reason,
        })?;
        let dns = self.cluster_dns;
        if !cidr.contains(&dns) || dns == cidr.network() || dns == cidr.broadcast() {
            return Err(Error::DnsOutsideRange { dns, cidr });
        }
        if dns == self.kubernetes_ip() {
            return Err(Error::DnsIsKubernetes { dns, cidr });
        }
        Ok(())
    }

    /// The `kubernetes` Service's address: the first usable address of the service CIDR.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + 1)
    }
}

/// Which of `size` consecutive items (addresses or ports) are taken.
#[derive(Debug)]
struct Pool {
    words: Vec<u64>,
    size: u32,
    /// Items below this offset are handed out dynamically only when all others are taken.
    low_band: u32,
    /// Holders beyond the first of items that several stored Services claim (found at start;
    /// they can exist only from before allocation was enforced). The item stays taken until
    /// the last holder gives it back.
    extra: HashMap<u32, u32>,
}

impl Pool {
    fn new(size: u32, low_band: u32) -> Pool {
        Pool {
            words: vec![0; size.div_ceil(64) as usize],
            size,
            low_band: low_band.min(size),
            extra: HashMap::new(),
        }
    }

    fn is_taken(&self, i: u32) -> bool {
        i < self.size && self.words[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    /// Takes item `i`; false when it is out of range or already taken.
    fn take(&mut self, i: u32) -> bool {
        if i >= self.size || self.is_taken(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        true
    }

    /// Records a stored holder of `i`; false when another holder was recorded already.
    fn claim(&mut self, i: u32) -> bool {
        if self.take(i) {
            return true;
        }
        *self.extra.entry(i).or_default() += 1;
        false
    }

    fn give_back(&mut self, i: u32) {
        if !self.is_taken(i) {
            return;
        }
        if let Some(n) = self.extra.get_mut(&i) {
            *n -= 1;
            if *n == 0 {
                self.extra.remove(&i);
            }
            return;
        }
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
    }

    /// Takes a free item: a random one of the upper band, else of the lower band.
    fn take_any(&mut self, rng: &mut impl Rng) -> Option<u32> {
        self.take_in(self.low_band, self.size, rng)
            .or_else(|| self.take_in(0, self.low_band, rng))
    }

    fn take_in(&mut self, lo: u32, hi: u32, rng: &mut impl Rng) -> Option<u32> {
        if lo >= hi {
            return None;
        }
        let n = hi - lo;
        let start = rng.random_range(0..n);
        let free = (0..n)
            .map(|k| lo + (start + k) % n)
            .find(|&i| !self.is_taken(i))?;
        self.take(free);
        Some(free)
    }

    fn taken_count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }
}

/// Upstream's lower band of a service CIDR: `min(max(16, size/16), 256)` addresses.
fn ip_low_band(cidr: Ipv4Net) -> u32 {
    let size = 1u64 << (32 - cidr.prefix_len());
    if size <= 16 {
        0
    } else {
        (size / 16).clamp(16, 256) as u32
    }
}

/// Upstream's lower band of a node port range: `min(max(16, size/32), 128)` ports.
fn port_low_band(range: PortRange) -> u32 {
    let size = range.size();
    if size <= 16 {
        0
    } else {
        (size / 32).clamp(16, 128)
    }
}

/// Why an allocation was refused: a 422 naming the fields, or a 500 (a full range).
#[derive(Debug)]
pub enum AllocError {
    Invalid(Vec<FieldError>),
    Internal(String),
}

impl AllocError {
    fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> AllocError {
        AllocError::Invalid(vec![FieldError::invalid(field, value, detail)])
    }

    pub fn into_api(self, ctx: &Ctx<'_>, name: &str) -> ApiError {
        match self {
            AllocError::Invalid(errs) => ApiError::invalid(&ctx.target(name), &errs),
            AllocError::Internal(msg) => ApiError::internal(msg),
        }
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Invalid(errs) => {
                let list: Vec<String> = errs.iter().map(FieldError::full_message).collect();
                write!(f, "{}", list.join(", "))
            }
            AllocError::Internal(msg) => write!(f, "{msg}"),
        }
    }
}

#[derive(Debug)]
struct Pools {
    ips: Pool,
    ports: Pool,
}

/// The cluster's service address and node port pools.
#[derive(Debug)]
pub struct Allocator {
    ranges: Ranges,
    pools: Mutex<Pools>,
}

/// Offsets into the pools.
#[derive(Debug, Default)]
struct Held {
    ips: Vec<u32>,
    ports: Vec<u32>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.ports.is_empty()
    }

    fn give_back(&self, pools: &mut Pools) {
        for &i in &self.ips {
            pools.ips.give_back(i);
        }
        for &p in &self.ports {
            pools.ports.give_back(p);
        }
    }
}

/// What one Service write took from the pools and what it frees. Dropped without
/// [`Txn::commit`] (the write failed, conflicted or was a dry run), it gives back what it took
/// and frees nothing.
#[must_use = "dropping a Txn gives back what the write took"]
#[derive(Debug)]
pub struct Txn<'a> {
    alloc: Option<&'a Allocator>,
    taken: Held,
    freed: Held,
}

impl Txn<'_> {
    /// A write that takes and frees nothing.
    pub fn none() -> Txn<'static> {
        Txn {
            alloc: None,
            taken: Held::default(),
            freed: Held::default(),
        }
    }

    /// The write is durable: keep what it took, give back what it freed.
    pub fn commit(mut self) {
        if let Some(alloc) = self.alloc {
            let freed = std::mem::take(&mut self.freed);
            if !freed.is_empty() {
                freed.give_back(&mut alloc.lock());
            }
        }
        self.taken = Held::default();
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if let Some(alloc) = self.alloc
            && !self.taken.is_empty()
        {
            self.taken.give_back(&mut alloc.lock());
        }
    }
}

/// One allocation in progress, under the pools' lock. Dropped without `finish`, it gives back
/// what it took.
struct Op<'a> {
    alloc: &'a Allocator,
    pools: MutexGuard<'a, Pools>,
    taken: Held,
    freed: Held,
}

impl<'a> Op<'a> {
    fn take_ip(&mut self, ip: &str) -> std::result::Result<Ipv4Addr, String> {
        let parsed: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("failed to parse service IP {ip:?}"))?;
        let offset = self.alloc.ip_offset(parsed).ok_or_else(|| {
            format!(
                "provided IP is not in the valid range. The range of valid IPs is {}",
                self.alloc.ranges.service_cidr
            )
        })?;
        if !self.pools.ips.take(offset) {
            return Err("provided IP is already allocated".into());
        }
        self.taken.ips.push(offset);
        Ok(parsed)
    }

    fn take_any_ip(&mut self) -> Option<Ipv4Addr> {
        let offset = self.pools.ips.take_any(&mut rand::rng())?;
        self.taken.ips.push(offset);
        Some(self.alloc.ip_at(offset))
    }

    fn take_port(&mut self, port: i64) -> std::result::Result<(), String> {
        let offset = self.alloc.port_offset(port).ok_or_else(|| {
            format!(
                "provided port is not in the valid range. The range of valid ports is {}",
                self.alloc.ranges.node_ports
            )
        })?;
        if !self.pools.ports.take(offset) {
            return Err("provided port is already allocated".into());
        }
        self.taken.ports.push(offset);
        Ok(())
    }

    fn take_any_port(&mut self) -> Option<u16> {
        let offset = self.pools.ports.take_any(&mut rand::rng())?;
        self.taken.ports.push(offset);
        Some(self.alloc.port_at(offset))
    }

    /// Frees `ip` once the write is durable.
    fn free_ip(&mut self, ip: &str) {
        if let Some(offset) = ip.parse().ok().and_then(|ip| self.alloc.ip_offset(ip)) {
            self.freed.ips.push(offset);
        }
    }

    fn free_port(&mut self, port: i64) {
        if let Some(offset) = self.alloc.port_offset(port) {
            self.freed.ports.push(offset);
        }
    }

    fn finish(mut self, dry_run: bool) -> Txn<'a> {
        let taken = std::mem::take(&mut self.taken);
        let freed = std::mem::take(&mut self.freed);
        if dry_run {
            // Taken only to keep one request's picks distinct; a dry run keeps nothing.
            taken.give_back(&mut self.pools);
            return Txn::none();
        }
        Txn {
            alloc: Some(self.alloc),
            taken,
            freed,
        }
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        let taken = std::mem::take(&mut self.taken);
        taken.give_back(&mut self.pools);
    }
}

impl Allocator {
    pub fn new(ranges: Ranges) -> Result<Allocator> {
        ranges.check()?;
        let ip_count = (1u32 << (32 - ranges.service_cidr.prefix_len())) - 2;
        let pools = Pools {
            ips: Pool::new(ip_count, ip_low_band(ranges.service_cidr)),
            ports: Pool::new(ranges.node_ports.size(), port_low_band(ranges.node_ports)),
        };
        Ok(Allocator {
            ranges,
            pools: Mutex::new(pools),
        })
    }

    pub fn ranges(&self) -> &Ranges {
        &self.ranges
    }

    fn lock(&self) -> MutexGuard<'_, Pools> {
        // The pools are consistent between statements; a panic elsewhere cannot tear them.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn op(&self) -> Op<'_> {
        Op {
            alloc: self,
            pools: self.lock(),
            taken: Held::default(),
            freed: Held::default(),
        }
    }

    /// The offset of a usable address of the service CIDR (network and broadcast are not).
    fn ip_offset(&self, ip: Ipv4Addr) -> Option<u32> {
        let cidr = self.ranges.service_cidr;
        (cidr.contains(&ip) && ip != cidr.network() && ip != cidr.broadcast())
            .then(|| u32::from(ip) - u32::from(cidr.network()) - 1)
    }

    fn ip_at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ranges.service_cidr.network()) + 1 + offset)
    }

    fn port_offset(&self, port: i64) -> Option<u32> {
        let range = self.ranges.node_ports;
        range
            .contains(port)
            .then(|| (port - i64::from(range.first)) as u32)
    }

    fn port_at(&self, offset: u32) -> u16 {
        self.ranges.node_ports.first + offset as u16
    }

    /// Whether a stored or in-flight write holds `ip`.
    pub fn ip_taken(&self, ip: Ipv4Addr) -> bool {
        self.ip_offset(ip)
            .is_some_and(|i| self.lock().ips.is_taken(i))
    }

    /// Whether a stored or in-flight write holds node port `port`.
    pub fn port_taken(&self, port: u16) -> bool {
        self.port_offset(i64::from(port))
            .is_some_and(|i| self.lock().ports.is_taken(i))
    }

    /// How many addresses and node ports are taken.
    pub fn usage(&self) -> (u32, u32) {
        let pools = self.lock();
        (pools.ips.taken_count(), pools.ports.taken_count())
    }

    /// Marks what stored Services hold. Returns one line per problem found: a held address
    /// or port outside the ranges (after a range change) or held by two Services.
    pub fn restore<'v>(&self, services: impl IntoIterator<Item = &'v Value>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut pools = self.lock();
        for svc in services {
            let who = format!(
                "{}/{}",
                crate::object::meta_str(svc, "namespace").unwrap_or_default(),
                crate::object::name(svc)
            );
            let (ips, ports) = holdings(svc.get("spec").unwrap_or(&Value::Null));
            for ip in ips {
                match ip.parse().ok().and_then(|ip| self.ip_offset(ip)) {
                    Some(i) => {
                        if !pools.ips.claim(i) {
                            problems.push(format!(
                                "Service {who}: cluster IP {ip} is also held by another Service"
                            ));
                        }
                    }
                    None => problems.push(format!(
                        "Service {who}: cluster IP {ip} is not within the service CIDR {}; recreate the Service to move it",
                        self.ranges.service_cidr
                    )),
                }
            }
            for port in ports {
                match self.port_offset(port) {
                    Some(p) => {
                        if !pools.ports.claim(p) {
                            problems.push(format!(
                                "Service {who}: node port {port} is also held by another Service"
                            ));
                        }
                    }
                    None => problems.push(format!(
                        "Service {who}: node port {port} is not within the node port range {}",
                        self.ranges.node_ports
                    )),
                }
            }
        }
        problems
    }

    /// Gives back what a Service that is gone held.
    pub fn release(&self, svc: &Value) {
        let (ips, ports) = holdings(svc.get("spec").unwrap_or(&Value::Null));
        let mut pools = self.lock();
        for ip in ips {
            if let Some(i) = ip.parse().ok().and_then(|ip| self.ip_offset(ip)) {
                pools.ips.give_back(i);
            }
        }
        for port in ports {
            if let Some(p) = self.port_offset(port) {
                pools.ports.give_back(p);
            }
        }
    }

    /// Fills a new Service's cluster IPs, IP families, node ports and health check node port,
    /// taking requested values when free.
    pub fn allocate_create(
        &self,
        svc: &mut Value,
        dry_run: bool,
    ) -> std::result::Result<Txn<'_>, AllocError> {
        let Some(spec) = spec_mut(svc) else {
            return Ok(Txn::none());
        };
        normalize_cluster_ips(None, spec);
        init_ip_families(None, spec)?;
        check_health_check_field(spec)?;
        let mut op = self.op();
        alloc_cluster_ips(&mut op, spec)?;
        init_node_ports(&mut op, spec)?;
        if needs_health_check(spec) {
            alloc_health_check(&mut op, spec)?;
        }
        Ok(op.finish(dry_run))
    }

    /// Allocates what an update of `old` into `new` needs and notes what it frees (type
    /// changes to and from ExternalName, NodePort and LoadBalancer, external traffic policy).
    pub fn allocate_update(
        &self,
        old: &Value,
        new: &mut Value,
        dry_run: bool,
    ) -> std::result::Result<Txn<'_>, AllocError> {
        let old = old.get("spec").unwrap_or(&Value::Null);
        let Some(spec) = spec_mut(new) else {
            return Ok(Txn::none());
        };
        init_ip_families(Some(old), spec)?;
        check_health_check_field(spec)?;
        let mut op = self.op();
        update_cluster_ips(&mut op, old, spec)?;
        update_node_ports(&mut op, old, spec)?;
        update_health_check(&mut op, old, spec)?;
        Ok(op.finish(dry_run))
    }
}

// ---- reading Service specs ----

fn spec_mut(svc: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = svc.as_object_mut()?;
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    spec.as_object_mut()
}

fn str_of<'a>(spec: &'a impl Field, key: &str) -> &'a str {
    spec.field(key).and_then(Value::as_str).unwrap_or_default()
}

/// Field access shared by `&Value` (old specs) and `&Map` (specs being changed).
trait Field {
    fn field(&self, key: &str) -> Option<&Value>;
}

impl Field for Value {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

impl Field for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

fn service_type(spec: &impl Field) -> &str {
    match str_of(spec, "type") {
        "" => "ClusterIP",
        t => t,
    }
}

fn needs_cluster_ip(spec: &impl Field) -> bool {
    service_type(spec) != "ExternalName"
}

fn needs_node_ports(spec: &impl Field) -> bool {
    matches!(service_type(spec), "NodePort" | "LoadBalancer")
}

/// Upstream `NeedsHealthCheck`: a LoadBalancer that keeps client source addresses.
fn needs_health_check(spec: &impl Field) -> bool {
    service_type(spec) == "LoadBalancer" && str_of(spec, "externalTrafficPolicy") == "Local"
}

fn needs_external_traffic_policy(spec: &impl Field) -> bool {
    needs_node_ports(spec)
}

/// Whether ports without a requested node port get one.
fn allocates_node_ports(spec: &impl Field) -> bool {
    match service_type(spec) {
        "NodePort" => true,
        "LoadBalancer" => spec
            .field("allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        _ => false,
    }
}

fn cluster_ips(spec: &impl Field) -> Vec<String> {
    spec.field("clusterIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn is_headless(spec: &impl Field) -> bool {
    str_of(spec, "clusterIP") == "None" || cluster_ips(spec).first().is_some_and(|ip| ip == "None")
}

fn has_selector(spec: &impl Field) -> bool {
    spec.field("selector")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
}

fn ports(spec: &impl Field) -> &[Value] {
    spec.field("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn ports_mut(spec: &mut Map<String, Value>) -> impl Iterator<Item = &mut Map<String, Value>> {
    spec.get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn node_port(port: &Value) -> i64 {
    port.get("nodePort").and_then(Value::as_i64).unwrap_or(0)
}

fn node_ports(spec: &impl Field) -> BTreeSet<i64> {
    ports(spec)
        .iter()
        .map(node_port)
        .filter(|&p| p != 0)
        .collect()
}

fn health_check_port(spec: &impl Field) -> i64 {
    spec.field("healthCheckNodePort")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn strings(spec: &impl Field, key: &str) -> Vec<String> {
    spec.field(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn family_of(ip: &str) -> &'static str {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "IPv4",
        Ok(IpAddr::V6(_)) => "IPv6",
        Err(_) => "unknown",
    }
}

/// What a stored Service holds: its cluster IPs and its node ports (with the health check
/// node port). Restore and release use this one definition, so they always agree.
fn holdings(spec: &Value) -> (BTreeSet<String>, BTreeSet<i64>) {
    let mut ips = BTreeSet::new();
    if needs_cluster_ip(spec) && !is_headless(spec) {
        let mut list = cluster_ips(spec);
        if list.is_empty() {
            list.push(str_of(spec, "clusterIP").to_string());
        }
        ips.extend(list.into_iter().filter(|ip| !ip.is_empty()));
    }
    let mut ports = node_ports(spec);
    if needs_health_check(spec) && health_check_port(spec) != 0 {
        ports.insert(health_check_port(spec));
    }
    (ips, ports)
}

// ---- the update strategy (upstream strategy.go and storage.go) ----

/// Keeps allocated values a client left out, syncs `clusterIP` with `clusterIPs`, and drops
/// fields the new type no longer uses, as upstream's `patchAllocatedValues`,
/// `normalizeClusterIPs` and `dropTypeDependentFields` do before an update is validated. A
/// Service that stops being a LoadBalancer loses its load-balancer status.
pub fn prepare_update(old: &Value, new: &mut Value) {
    let old_spec = old.get("spec").unwrap_or(&Value::Null);
    let Some(spec) = spec_mut(new) else { return };
    patch_allocated_values(old_spec, spec);
    normalize_cluster_ips(Some(old_spec), spec);
    drop_type_dependent_fields(old_spec, spec);
    let load_balancer = service_type(spec) == "LoadBalancer";
    if !load_balancer && let Some(status) = new.get_mut("status").and_then(Value::as_object_mut) {
        status.insert("loadBalancer".into(), json!({}));
    }
}

fn patch_allocated_values(old: &Value, spec: &mut Map<String, Value>) {
    if needs_cluster_ip(old) && needs_cluster_ip(spec) {
        if str_of(spec, "clusterIP").is_empty()
            && let Some(ip) = old.get("clusterIP")
        {
            spec.insert("clusterIP".into(), ip.clone());
        }
        if cluster_ips(spec).is_empty() && !cluster_ips(old).is_empty() {
            spec.insert("clusterIPs".into(), old["clusterIPs"].clone());
        }
    }
    if needs_node_ports(old) && needs_node_ports(spec) {
        let used: BTreeSet<i64> = node_ports(old)
            .intersection(&node_ports(spec))
            .copied()
            .collect();
        let by_name: HashMap<&str, i64> = ports(old)
            .iter()
            .map(|p| {
                (
                    p.get("name").and_then(Value::as_str).unwrap_or(""),
                    node_port(p),
                )
            })
            .collect();
        for port in ports_mut(spec) {
            if port.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                continue;
            }
            let name = port.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(&old_port) = by_name.get(name)
                && old_port != 0
                && !used.contains(&old_port)
            {
                port.insert("nodePort".into(), json!(old_port));
            }
        }
    }
    if needs_health_check(old) && needs_health_check(spec) && health_check_port(spec) == 0 {
        let hc = health_check_port(old);
        if hc != 0 {
            spec.insert("healthCheckNodePort".into(), json!(hc));
        }
    }
}

fn same_cluster_ips(old: &Value, spec: &Map<String, Value>) -> bool {
    cluster_ips(old) == cluster_ips(spec)
}

/// Upstream `normalizeClusterIPs`: old clients set only `clusterIP`.
fn normalize_cluster_ips(old: Option<&Value>, spec: &mut Map<String, Value>) {
    let ip = str_of(spec, "clusterIP").to_string();
    let Some(old) = old else {
        if !ip.is_empty() && cluster_ips(spec).is_empty() {
            spec.insert("clusterIPs".into(), json!([ip]));
        }
        return;
    };
    let old_ip = str_of(old, "clusterIP");
    if !cluster_ips(old).is_empty() && cluster_ips(spec).is_empty() && old_ip == ip {
        spec.insert("clusterIPs".into(), old["clusterIPs"].clone());
    }
    if old_ip != ip {
        if !old_ip.is_empty() && ip.is_empty() {
            if same_cluster_ips(old, spec) {
                spec.remove("clusterIPs");
            }
        } else if same_cluster_ips(old, spec) {
            spec.insert("clusterIPs".into(), json!([ip]));
        }
    }
}

fn drop_type_dependent_fields(old: &Value, spec: &mut Map<String, Value>) {
    let same = |spec: &Map<String, Value>, key: &str| old.get(key) == spec.get(key);
    if needs_cluster_ip(old) && !needs_cluster_ip(spec) {
        if same(spec, "clusterIP") && same_cluster_ips(old, spec) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        for key in ["ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"] {
            if same(spec, key) {
                spec.remove(key);
            }
        }
    }
    if needs_node_ports(old)
        && !needs_node_ports(spec)
        && node_ports(old).is_superset(&node_ports(spec))
    {
        for port in ports_mut(spec) {
            port.remove("nodePort");
        }
    }
    if needs_health_check(old)
        && !needs_health_check(spec)
        && health_check_port(old) == health_check_port(spec)
    {
        spec.remove("healthCheckNodePort");
    }
    if service_type(old) == "LoadBalancer" && service_type(spec) != "LoadBalancer" {
        if old.get("allocateLoadBalancerNodePorts").is_some()
            && same(spec, "allocateLoadBalancerNodePorts")
        {
            spec.remove("allocateLoadBalancerNodePorts");
        }
        if same(spec, "loadBalancerClass") {
            spec.remove("loadBalancerClass");
        }
    }
    if needs_external_traffic_policy(old)
        && !needs_external_traffic_policy(spec)
        && same(spec, "externalTrafficPolicy")
    {
        spec.remove("externalTrafficPolicy");
    }
}

// ---- allocation (upstream alloc.go) ----

/// Upstream `initIPFamilyFields` on a single-stack IPv4 cluster: fills `ipFamilyPolicy` and
/// `ipFamilies` and refuses what needs IPv6.
fn init_ip_families(
    old: Option<&Value>,
    spec: &mut Map<String, Value>,
) -> std::result::Result<(), AllocError> {
    if !needs_cluster_ip(spec) {
        return Ok(());
    }
    let headless_selectorless = is_headless(spec) && !has_selector(spec);
    if str_of(spec, "ipFamilyPolicy").is_empty() {
        let inherited = old
            .map(|o| str_of(o, "ipFamilyPolicy"))
            .filter(|p| !p.is_empty());
        let policy = match inherited {
            Some(p) => p,
            None if headless_selectorless => "RequireDualStack",
            None => "SingleStack",
        };
        spec.insert("ipFamilyPolicy".into(), json!(policy));
    }
    let policy = str_of(spec, "ipFamilyPolicy").to_string();
    let mut ips = cluster_ips(spec);
    let mut families = strings(spec, "ipFamilies");
    let mut errs = Vec::new();
    let policy_path = "spec.ipFamilyPolicy";
    if let Some(old) = old.filter(|o| needs_cluster_ip(*o)) {
        if policy == "SingleStack" {
            if same_cluster_ips(old, spec) && ips.len() > 1 {
                ips.truncate(1);
            }
            if strings(old, "ipFamilies") == families && families.len() > 1 {
                families.truncate(1);
            }
        } else {
            if !ips.is_empty() && ips.len() < cluster_ips(old).len() {
                errs.push(FieldError::invalid(
                    policy_path,
                    json!(policy),
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if !families.is_empty() && families.len() < strings(old, "ipFamilies").len() {
                errs.push(FieldError::invalid(
                    policy_path,
                    json!(policy),
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    if policy == "SingleStack" {
        if ips.len() == 2 {
            errs.push(FieldError::invalid(
                policy_path,
                json!(policy),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families.len() == 2 {
            errs.push(FieldError::invalid(
                policy_path,
                json!(policy),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            break;
        }
        if i >= families.len() {
            let family = family_of(ip);
            if family == "IPv4" {
                families.push(family.into());
            } else {
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    json!(ips),
                    format!("{family} is not configured on this cluster"),
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(AllocError::Invalid(errs));
    }
    if headless_selectorless {
        // Upstream lets headless Services without a selector name families the cluster lacks.
        if families.is_empty() {
            families.push("IPv4".into());
        }
        if families.len() < 2 && policy != "SingleStack" {
            let other = if families[0] == "IPv4" {
                "IPv6"
            } else {
                "IPv4"
            };
            families.push(other.into());
        }
    } else {
        if policy == "RequireDualStack" {
            errs.push(FieldError::invalid(
                policy_path,
                json!(policy),
                "this cluster is not configured for dual-stack services",
            ));
        }
        for (i, family) in families.iter().enumerate() {
            if family != "IPv4" {
                errs.push(FieldError::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    json!(family),
                    "not configured on this cluster",
                ));
            }
        }
        if !errs.is_empty() {
            return Err(AllocError::Invalid(errs));
        }
        if families.is_empty() {
            families.push("IPv4".into());
        }
    }
    if !ips.is_empty() {
        spec.insert("clusterIPs".into(), json!(ips));
    }
    spec.insert("ipFamilies".into(), json!(families));
    Ok(())
}

/// Upstream validation: a health check node port belongs to LoadBalancers with the `Local`
/// external traffic policy.
fn check_health_check_field(spec: &Map<String, Value>) -> std::result::Result<(), AllocError> {
    let hc = health_check_port(spec);
    if hc != 0 && !needs_health_check(spec) {
        return Err(AllocError::invalid(
            "spec.healthCheckNodePort",
            json!(hc),
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ));
    }
    Ok(())
}

fn alloc_cluster_ips(
    op: &mut Op<'_>,
    spec: &mut Map<String, Value>,
) -> std::result::Result<(), AllocError> {
    if !needs_cluster_ip(spec) {
        return Ok(());
    }
    if is_headless(spec) {
        spec.insert("clusterIP".into(), json!("None"));
        spec.insert("clusterIPs".into(), json!(["None"]));
        return Ok(());
    }
    let families = strings(spec, "ipFamilies");
    let requested = cluster_ips(spec);
    let mut ips = requested.clone();
    for (i, _family) in families.iter().enumerate() {
        let ip = requested.get(i).map(String::as_str).unwrap_or_default();
        let got = if ip.is_empty() {
            op.take_any_ip().ok_or_else(|| {
                AllocError::Internal("failed to allocate a serviceIP: range is full".into())
            })?
        } else {
            op.take_ip(ip).map_err(|why| {
                AllocError::invalid(
                    "spec.clusterIPs",
                    json!(requested),
                    format!("failed to allocate IP {ip}: {why}"),
                )
            })?
        };
        match ips.get_mut(i) {
            Some(slot) => *slot = got.to_string(),
            None => ips.push(got.to_string()),
        }
    }
    if let Some(first) = ips.first() {
        spec.insert("clusterIP".into(), json!(first));
    }
    spec.insert("clusterIPs".into(), json!(ips));
    Ok(())
}

fn update_cluster_ips(
    op: &mut Op<'_>,
    old: &Value,
    spec: &mut Map<String, Value>,
) -> std::result::Result<(), AllocError> {
    if !needs_cluster_ip(old) {
        return alloc_cluster_ips(op, spec);
    }
    if is_headless(old) {
        return Ok(());
    }
    let (held, _) = holdings(old);
    if !needs_cluster_ip(spec) {
        for ip in &held {
            op.free_ip(ip);
        }
        return Ok(());
    }
    if held.is_empty() {
        // Stored before addresses were allocated: give it one now.
        return alloc_cluster_ips(op, spec);
    }
    Ok(())
}

fn port_error(i: usize, port: i64, why: String) -> AllocError {
    AllocError::invalid(format!("spec.ports[{i}].nodePort"), json!(port), why)
}

fn node_ports_full() -> AllocError {
    AllocError::Internal("failed to allocate a nodePort: range is full".into())
}

/// Upstream `initNodePorts`: ports with the same number share one node port.
fn init_node_ports(
    op: &mut Op<'_>,
    spec: &mut Map<String, Value>,
) -> std::result::Result<(), AllocError> {
    if !needs_node_ports(spec) {
        return Ok(());
    }
    let allocates = allocates_node_ports(spec);
    // The same objects `ports_mut` walks (the schema makes every port an object).
    let requested: Vec<(i64, i64)> = ports(spec)
        .iter()
        .filter(|p| p.is_object())
        .map(|p| {
            (
                p.get("port").and_then(Value::as_i64).unwrap_or(0),
                node_port(p),
            )
        })
        .collect();
    let mut by_port: HashMap<i64, i64> = HashMap::new();
    for (i, port) in ports_mut(spec).enumerate() {
        let (number, wanted) = requested[i];
        if wanted == 0 && !allocates {
            continue;
        }
        match by_port.get(&number).copied() {
            None => {
                let first_requested = requested
                    .iter()
                    .find(|(n, np)| *n == number && *np != 0)
                    .map_or(0, |(_, np)| *np);
                let got = if first_requested != 0 {
                    op.take_port(first_requested)
                        .map_err(|why| port_error(i, first_requested, why))?;
                    first_requested
                } else {
                    i64::from(op.take_any_port().ok_or_else(node_ports_full)?)
                };
                port.insert("nodePort".into(), json!(got));
                by_port.insert(number, got);
            }
            Some(shared) if wanted != shared => {
                if wanted == 0 {
                    port.insert("nodePort".into(), json!(shared));
                } else {
                    op.take_port(wanted)
                        .map_err(|why| port_error(i, wanted, why))?;
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Upstream `txnUpdateNodePorts` and `updateNodePorts`.
fn update_node_ports(
    op: &mut Op<'_>,
    old: &Value,
    spec: &mut Map<String, Value>,
) -> std::result::Result<(), AllocError> {
    let old_ports = node_ports(old);
    if !needs_node_ports(spec) {
        if needs_node_ports(old) {
            for &p in &old_ports {
                op.free_port(p);
            }
        }
        return Ok(());
    }
    let allocates = allocates_node_ports(spec);
    let mut taken_now = BTreeSet::new();
    for (i, port) in ports_mut(spec).enumerate() {
        let wanted = port.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        if wanted == 0 && !allocates {
            continue;
        }
        if wanted != 0 {
            if !old_ports.contains(&wanted) && !taken_now.contains(&wanted) {
                op.take_port(wanted)
                    .map_err(|why| port_error(i, wanted, why))?;
                taken_now.insert(wanted);
            }
        } else {
            let got = op.take_any_port().ok_or_else(node_ports_full)?;
            port.insert("nodePort".into(), json!(got));
        }
    }
    let new_ports = node_ports(spec);
    for &p in old_ports.difference(&new_ports) {
        op.free_port(p);
    }
    Ok(())
}

fn alloc_health_check(
    op: &mut Op<'_>,
    spec: &mut Map<String, Value>,
) -> std::result::Result<(), AllocError> {
    let hc = health_check_port(spec);
    if hc != 0 {
        op.take_port(hc).map_err(|why| {
            AllocError::Internal(format!(
                "failed to allocate requested HealthCheck NodePort {hc}: {why}"
            ))
        })?;
    } else {
        let got = op.take_any_port().ok_or_else(|| {
            AllocError::Internal("failed to allocate a HealthCheck NodePort: range is full".into())
        })?;
        spec.insert("healthCheckNodePort".into(), json!(got));
    }
    Ok(())
}

fn update_health_check(
    op: &mut Op<'_>,
    old: &Value,
    spec: &mut Map<String, Value>,
) -> std::result::Result<(), AllocError> {
    match (needs_health_check(old), needs_health_check(spec)) {
        (false, true) => alloc_health_check(op, spec),
        (true, false) => {
            op.free_port(health_check_port(old));
            Ok(())
        }
        (true, true) if health_check_port(old) != health_check_port(spec) => {
            Err(AllocError::invalid(
                "spec.healthCheckNodePort",
                json!(health_check_port(spec)),
                "field is immutable",
            ))
        }
        _ => Ok(()),
    }
}

// ---- hooks into the REST handlers ----

fn is_service(ctx: &Ctx<'_>) -> bool {
    ctx.res.group.is_empty() && ctx.res.kind == "Service" && ctx.sub.is_none()
}

/// Before a new object is stored: a Service gets its addresses and ports.
pub fn on_create<'a>(ctx: &Ctx<'a>, obj: &mut Value) -> ApiResult<Txn<'a>> {
    if !is_service(ctx) {
        return Ok(Txn::none());
    }
    let server: &'a ApiServer = ctx.server;
    let name = crate::object::name(obj).to_string();
    server
        .services
        .allocate_create(obj, ctx.dry_run())
        .map_err(|e| e.into_api(ctx, &name))
}

/// While an update is prepared, before defaulting and validation.
pub fn on_prepare_update(ctx: &Ctx<'_>, old: &Value, new: &mut Value) {
    if is_service(ctx) {
        prepare_update(old, new);
    }
}

/// Before an updated object is stored.
pub fn on_update<'a>(ctx: &Ctx<'a>, old: &Value, new: &mut Value) -> ApiResult<Txn<'a>> {
    if !is_service(ctx) {
        return Ok(Txn::none());
    }
    let server: &'a ApiServer = ctx.server;
    let name = crate::object::name(old).to_string();
    server
        .services
        .allocate_update(old, new, ctx.dry_run())
        .map_err(|e| e.into_api(ctx, &name))
}

/// After an object was removed from the store.
pub fn after_delete(ctx: &Ctx<'_>, obj: &Value) {
    if ctx.res.group.is_empty() && ctx.res.kind == "Service" {
        ctx.server.services.release(obj);
    }
}

/// At start, before serving: marks what the stored Services hold, then gives addresses and
/// ports to Services stored before they were allocated.
pub async fn restore(server: &ApiServer) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let res = server
        .resources
        .get("", "v1", "services")
        .context("services are not registered")?;
    let listed = server
        .store
        .list(&store::ListOptions {
            prefix: &res.ns_prefix(None),
            ..Default::default()
        })
        .context("listing Services")?;
    let mut services = Vec::with_capacity(listed.items.len());
    for kv in &listed.items {
        match serde_json::from_slice::<Value>(&kv.value) {
            Ok(v) => services.push((kv, v)),
            Err(e) => tracing::warn!("stored Service {} is unreadable: {e}", kv.key),
        }
    }
    for problem in server.services.restore(services.iter().map(|(_, v)| v)) {
        tracing::warn!("{problem}");
    }
    for (kv, old) in &services {
        let mut new = old.clone();
        let txn = match server.services.allocate_update(old, &mut new, false) {
            Ok(txn) => txn,
            Err(e) => {
                tracing::warn!("Service {}: {e}", kv.key);
                continue;
            }
        };
        if &new == old {
            continue;
        }
        match server
            .store
            .update(&kv.key, new, Some(kv.mod_revision))
            .await
        {
            Ok(_) => txn.commit(),
            Err(e) => tracing::warn!("allocating for Service {}: {e}", kv.key),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
